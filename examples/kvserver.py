"""A small Redis-protocol (RESP2) key-value server that redis-cli and redis-py can talk to.

Its port is ``listen=``: the framework binds it before detaching, so
``start`` fails with "address already in use" when the port is taken, and
``start && redis-cli -p PORT ping`` works with no sleep in between.
``restart`` drops no connection: the new instance gets the very listening
socket and is ready before the old one is asked to stop; the old one stops
accepting, lets connected clients finish the command in flight, and exits.

Every write is appended to a log (``appendonly.resp``) before it is
acknowledged, under an ``flock``, and every command first reads what other
instances appended: while a restart has two instances serving for a moment,
both see one database, and nothing acknowledged is lost.  The log is replayed
at start; it is compacted at a start that finds no other instance running.

One thread and a selectors loop, like Redis itself: each command runs to
completion before the next, so no locks are needed between clients.

Try it::

    mkdir -p /tmp/kvserver
    python examples/kvserver.py start --port 6399 --dir /tmp/kvserver
    redis-cli -p 6399 set greeting hello
    python examples/kvserver.py restart --dir /tmp/kvserver   # the same --port
    redis-cli -p 6399 get greeting          # "hello": kept across the restart
    python examples/kvserver.py stop --dir /tmp/kvserver

Options: --port (6399), --host (127.0.0.1), --dir (/tmp/kvserver: pidfile,
log and data; each directory is an instance). KV_PORT, KV_HOST and
KV_DIR set the defaults.
"""

from __future__ import annotations

import fcntl
import fnmatch
import os
import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path

from daemonize_deco import daemon, listeners, ready, should_stop

HOST = os.environ.get("KV_HOST", "127.0.0.1")
PORT = int(os.environ.get("KV_PORT", "6399"))
DATA = Path(os.environ.get("KV_DIR", "/tmp/kvserver")).resolve()
LOG_NAME = "appendonly.resp"
DRAIN_SECONDS = 3.0  # how long a stop waits for a client's half-received command
MAX_BULK = 512 * 1024 * 1024
MAX_ARGS = 1024 * 1024

Reply = bytes


class ProtocolError(Exception):
    """The client sent something that is not RESP."""


# -- RESP ------------------------------------------------------------------------


def parse_command(buf: bytearray, start: int) -> tuple[list[bytes], int] | None:
    """One command from ``buf`` at ``start``: (arguments, end), or None if incomplete."""
    if buf[start : start + 1] != b"*":
        end = buf.find(b"\n", start)  # an inline command, as typed into telnet
        return None if end < 0 else (bytes(buf[start:end]).split(), end + 1)
    header = _line(buf, start + 1, MAX_ARGS)
    if header is None:
        return None
    count, pos = header
    args = []
    for _ in range(count):
        if pos < len(buf) and buf[pos] != ord("$"):
            raise ProtocolError("expected '$'")
        item = _line(buf, pos + 1, MAX_BULK)
        if item is None or len(buf) < item[1] + item[0] + 2:
            return None
        size, pos = item
        args.append(bytes(buf[pos : pos + size]))
        pos += size + 2
    return args, pos


def _line(buf: bytearray, start: int, limit: int) -> tuple[int, int] | None:
    """The length written from ``start`` up to CRLF, and where the data begins."""
    end = buf.find(b"\r\n", start)
    if end < 0:
        return None
    try:
        value = int(buf[start:end])
    except ValueError:
        raise ProtocolError("invalid length") from None
    if not 0 <= value <= limit:
        raise ProtocolError("invalid length")
    return value, end + 2


def bulk(value: bytes | None) -> Reply:
    """A bulk string, or the nil bulk string."""
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%b\r\n" % (len(value), value)


def array(items: list[bytes]) -> Reply:
    """An array of bulk strings."""
    return b"*%d\r\n" % len(items) + b"".join(bulk(item) for item in items)


def integer(value: int) -> Reply:
    """An integer reply."""
    return b":%d\r\n" % value


def error(text: str) -> Reply:
    """An error reply."""
    return b"-ERR " + text.encode() + b"\r\n"


OK = b"+OK\r\n"


# -- the data ---------------------------------------------------------------------


class Database:
    """Keys to values, with optional expiry (wall-clock seconds), expired lazily.

    The truth is the append-only log: :meth:`write` appends a record and
    applies it; :meth:`catch_up` applies what others appended meanwhile.
    """

    def __init__(self, log: Path) -> None:
        self.values: dict[bytes, bytes] = {}
        self.expires: dict[bytes, float] = {}
        self.fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.offset = 0  # how much of the log is applied
        self.catch_up()

    def catch_up(self) -> None:
        """Apply the records appended since we last looked (by any instance)."""
        size = os.fstat(self.fd).st_size
        if size <= self.offset:
            return
        data = bytearray()
        while self.offset + len(data) < size:
            chunk = os.pread(self.fd, size - self.offset - len(data), self.offset + len(data))
            if not chunk:
                break
            data += chunk
        pos = 0
        while pos < len(data):
            parsed = parse_command(data, pos)
            if parsed is None:
                break  # a record still being written: the rest next time
            record, pos = parsed
            self.apply(record)
        self.offset += pos

    def writing(self) -> _Locked:
        """Hold the log's lock, caught up: read, decide and append as one step."""
        return _Locked(self)

    def write(self, *record: bytes) -> None:
        """Append ``record`` (under :meth:`writing`) and apply it."""
        data = array(list(record))
        os.write(self.fd, data)
        self.offset += len(data)
        self.apply(list(record))

    def apply(self, record: list[bytes]) -> None:
        kind, args = record[0], record[1:]
        if kind == b"SET":
            key, value, expiry = args
            self.values[key] = value
            self.expires.pop(key, None)
            if expiry:
                self.expires[key] = int(expiry) / 1000
        elif kind == b"DEL":
            for key in args:
                self.delete(key)
        elif kind == b"FLUSHDB":
            self.values.clear()
            self.expires.clear()

    def alive(self, key: bytes) -> bool:
        """Whether ``key`` exists, dropping it if it has expired."""
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= time.time():
            self.delete(key)
            return False
        return key in self.values

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; True if it existed."""
        self.expires.pop(key, None)
        return self.values.pop(key, None) is not None

    def live_keys(self) -> list[bytes]:
        """Every key that has not expired."""
        return [key for key in list(self.values) if self.alive(key)]

    def compact(self, log: Path) -> None:
        """Rewrite the log as one SET per live key (only when no other instance runs)."""
        tmp = log.with_name(log.name + ".tmp")
        with open(tmp, "wb") as f:
            for key in self.live_keys():
                f.write(array([b"SET", key, self.values[key], self.expiry(key)]))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(log)
        os.close(self.fd)
        self.fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self.offset = os.fstat(self.fd).st_size

    def expiry(self, key: bytes) -> bytes:
        """The key's expiry as a record writes it: milliseconds, or empty for none."""
        deadline = self.expires.get(key)
        return b"%d" % int(deadline * 1000) if deadline is not None else b""


class _Locked:
    def __init__(self, db: Database) -> None:
        self.db = db

    def __enter__(self) -> Database:
        fcntl.flock(self.db.fd, fcntl.LOCK_EX)
        self.db.catch_up()
        return self.db

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.db.fd, fcntl.LOCK_UN)


# -- the commands -----------------------------------------------------------------


def cmd_ping(db: Database, args: list[bytes]) -> Reply:
    return bulk(args[0]) if args else b"+PONG\r\n"


def cmd_echo(db: Database, args: list[bytes]) -> Reply:
    return bulk(args[0]) if len(args) == 1 else wrong_args("echo")


def cmd_set(db: Database, args: list[bytes]) -> Reply:
    if len(args) < 2:
        return wrong_args("set")
    key, value, options = args[0], args[1], [a.upper() for a in args[2:]]
    ttl: float | None = None
    only_if: bytes | None = None
    i = 0
    while i < len(options):
        option = options[i]
        if option in (b"EX", b"PX") and i + 1 < len(options):
            try:
                amount = int(options[i + 1])
            except ValueError:
                return error("value is not an integer or out of range")
            if amount <= 0:
                return error("invalid expire time in 'set' command")
            ttl = amount if option == b"EX" else amount / 1000
            i += 2
        elif option in (b"NX", b"XX"):
            only_if = option
            i += 1
        else:
            return error("syntax error")
    with db.writing():
        exists = db.alive(key)
        if (only_if == b"NX" and exists) or (only_if == b"XX" and not exists):
            return bulk(None)
        expiry = b"%d" % int((time.time() + ttl) * 1000) if ttl is not None else b""
        db.write(b"SET", key, value, expiry)
    return OK


def cmd_get(db: Database, args: list[bytes]) -> Reply:
    if len(args) != 1:
        return wrong_args("get")
    return bulk(db.values[args[0]] if db.alive(args[0]) else None)


def cmd_del(db: Database, args: list[bytes]) -> Reply:
    if not args:
        return wrong_args("del")
    with db.writing():
        present = [key for key in dict.fromkeys(args) if db.alive(key)]
        if present:
            db.write(b"DEL", *present)
    return integer(sum(key in present for key in args))


def cmd_exists(db: Database, args: list[bytes]) -> Reply:
    return integer(sum(db.alive(key) for key in args)) if args else wrong_args("exists")


def cmd_incr(db: Database, args: list[bytes]) -> Reply:
    return add(db, args[0], 1) if len(args) == 1 else wrong_args("incr")


def cmd_incrby(db: Database, args: list[bytes]) -> Reply:
    # redis-py's incr() sends INCRBY key 1.
    if len(args) != 2:
        return wrong_args("incrby")
    try:
        amount = int(args[1])
    except ValueError:
        return error("value is not an integer or out of range")
    return add(db, args[0], amount)


def add(db: Database, key: bytes, amount: int) -> Reply:
    """INCR and INCRBY: a 64-bit signed integer stored as text."""
    with db.writing():
        try:
            value = int(db.values[key]) + amount if db.alive(key) else amount
        except ValueError:
            return error("value is not an integer or out of range")
        if not -(2**63) <= value < 2**63:
            return error("increment or decrement would overflow")
        db.write(b"SET", key, b"%d" % value, db.expiry(key))
    return integer(value)


def cmd_keys(db: Database, args: list[bytes]) -> Reply:
    if len(args) != 1:
        return wrong_args("keys")
    pattern = args[0].decode("latin-1")
    return array([k for k in db.live_keys() if fnmatch.fnmatchcase(k.decode("latin-1"), pattern)])


def cmd_dbsize(db: Database, args: list[bytes]) -> Reply:
    return integer(len(db.live_keys()))


def cmd_flushdb(db: Database, args: list[bytes]) -> Reply:
    with db.writing():
        db.write(b"FLUSHDB")
    return OK


def cmd_command(db: Database, args: list[bytes]) -> Reply:
    # redis-cli asks for COMMAND DOCS to offer hints; an empty answer is enough.
    return integer(len(COMMANDS)) if args[:1] == [b"COUNT"] else b"*0\r\n"


def cmd_config(db: Database, args: list[bytes]) -> Reply:
    # redis-benchmark reads "save" and "appendonly" before it starts.
    settings = {b"save": b"", b"appendonly": b"no"}
    if len(args) == 2 and args[0].upper() == b"GET":
        name = args[1].lower()
        return array([name, settings[name]]) if name in settings else b"*0\r\n"
    return error("only CONFIG GET is supported")


def cmd_info(db: Database, args: list[bytes]) -> Reply:
    lines = [
        "# Server",
        "redis_version:7.0.0-kvserver",
        f"process_id:{os.getpid()}",
        f"tcp_port:{_port}",
        "# Keyspace",
        f"db0:keys={len(db.live_keys())},expires={len(db.expires)}",
    ]
    return bulk("\r\n".join(lines).encode() + b"\r\n")


def cmd_client(db: Database, args: list[bytes]) -> Reply:
    # redis-py announces itself with CLIENT SETINFO; accept and ignore.
    return OK


def cmd_hello(db: Database, args: list[bytes]) -> Reply:
    # RESP2 only: HELLO 3 gets the refusal clients expect from a RESP2 server
    # (redis-py 8 defaults to RESP3: connect with protocol=2).
    if args[:1] not in ([], [b"2"]):
        return b"-NOPROTO this server speaks RESP2 only\r\n"
    fields = [b"server", b"kvserver", b"version", b"7.0.0", b"proto"]
    return (
        b"*8\r\n"
        + b"".join(bulk(f) for f in fields)
        + integer(2)
        + bulk(b"mode")
        + bulk(b"standalone")
    )


def cmd_select(db: Database, args: list[bytes]) -> Reply:
    return OK if args == [b"0"] else error("only database 0 exists")


def wrong_args(name: str) -> Reply:
    return error(f"wrong number of arguments for '{name}' command")


COMMANDS: dict[bytes, Callable[[Database, list[bytes]], Reply]] = {
    b"PING": cmd_ping, b"ECHO": cmd_echo, b"SET": cmd_set, b"GET": cmd_get,
    b"DEL": cmd_del, b"EXISTS": cmd_exists, b"INCR": cmd_incr, b"INCRBY": cmd_incrby,
    b"KEYS": cmd_keys,
    b"DBSIZE": cmd_dbsize, b"FLUSHDB": cmd_flushdb, b"COMMAND": cmd_command,
    b"CONFIG": cmd_config, b"INFO": cmd_info, b"CLIENT": cmd_client, b"SELECT": cmd_select,
    b"HELLO": cmd_hello,
}  # fmt: skip


# -- the network ------------------------------------------------------------------


class Client:
    """One connection: bytes in, complete commands executed, replies out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.closing = False

    def on_readable(self, db: Database) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.closing = True
            self.inbox.clear()
            return
        self.inbox += chunk
        self.execute(db)

    def execute(self, db: Database) -> None:
        pos = 0
        try:
            while pos < len(self.inbox) and not self.closing:
                parsed = parse_command(self.inbox, pos)
                if parsed is None:
                    break
                args, pos = parsed
                if args:
                    self.outbox += self.run(db, args)
        except ProtocolError as exc:
            self.outbox += error(f"Protocol error: {exc}")
            self.closing = True
            pos = len(self.inbox)
        del self.inbox[:pos]
        self.flush()

    def run(self, db: Database, args: list[bytes]) -> Reply:
        name = args[0].upper()
        if name == b"QUIT":
            self.closing = True
            return OK
        command = COMMANDS.get(name)
        if command is None:
            return error(f"unknown command '{args[0].decode('latin-1')}'")
        db.catch_up()  # what another instance wrote (during a restart) is seen here too
        return command(db, args[1:])

    def flush(self) -> None:
        """Send what we can now; the rest when the socket is writable."""
        if self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.outbox.clear()
                self.closing = True
                return
            del self.outbox[:sent]

    @property
    def has_partial_command(self) -> bool:
        return bool(self.inbox)


class Server:
    """The listening socket, its clients, and a pipe that on_stop writes to."""

    def __init__(self, listener: socket.socket, db: Database) -> None:
        self.db = db
        self.listener = listener
        self.listener.setblocking(False)
        self.wake_read, self.wake_write = os.pipe()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        self.clients: dict[int, Client] = {}
        self.stopping = False

    def wake(self) -> None:
        """Called from on_stop, on the dispatcher thread: end serve()."""
        os.write(self.wake_write, b"x")

    def serve(self) -> None:
        """Serve until woken: no timeouts, so an idle server never wakes up."""
        while not self.stopping:
            self.step(None)

    def step(self, timeout: float | None) -> None:
        for key, mask in self.selector.select(timeout):
            if key.data == "accept":
                self.accept()
            elif key.data == "wake":
                self.stopping = True
            else:
                self.on_event(key.data, mask)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = Client(sock)
            self.clients[sock.fileno()] = client
            self.selector.register(sock, selectors.EVENT_READ, client)

    def on_event(self, client: Client, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            client.on_readable(self.db)
        if mask & selectors.EVENT_WRITE:
            client.flush()
        self.update(client)

    def update(self, client: Client) -> None:
        if client.closing and not client.outbox:
            self.drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        self.selector.modify(client.sock, events, client)

    def drop(self, client: Client) -> None:
        self.selector.unregister(client.sock)
        del self.clients[client.sock.fileno()]
        client.sock.close()

    def drain(self, seconds: float) -> None:
        """Stop accepting; finish half-received commands and pending replies; close all."""
        self.selector.unregister(self.listener)
        self.listener.close()
        deadline = time.monotonic() + seconds
        for client in list(self.clients.values()):
            client.closing = client.closing or not client.has_partial_command
            client.flush()
            self.update(client)
        while self.clients and time.monotonic() < deadline:
            self.step(deadline - time.monotonic())
            for client in list(self.clients.values()):
                if not client.has_partial_command and not client.closing:
                    client.closing = True  # its command in flight is done
                    self.update(client)
        for client in list(self.clients.values()):
            self.drop(client)


_server: Server | None = None
_port = PORT


@daemon(
    pidfile="{dir}/kvserver.pid",
    stdout="{dir}/kvserver.log",
    listen=["tcp://{host}:{port}"],
    wait_ready=True,
    start_timeout=30.0,  # a start replays the append-only log, long after a busy day
)
def main(port: int = PORT, host: str = HOST, dir: Path = DATA) -> None:
    """A Redis-protocol key-value server.

    Args:
        port: the TCP port to listen on.
        host: the address to bind.
        dir: the directory of the pidfile, the log and the data.
    """
    global _server, _port  # noqa: PLW0603 -- on_stop and INFO need to reach them
    _port = port
    log = dir.resolve() / LOG_NAME
    db = Database(log)
    if _alone(dir.resolve()):
        db.compact(log)
    (listener,) = listeners()  # bound by the framework, or kept from the instance replaced
    _server = Server(listener, db)
    if should_stop():
        _server.wake()  # the stop came before on_stop could see the server
    print(f"kvserver: listening on {host}:{port} with {len(db.values)} keys", flush=True)
    ready()
    _server.serve()
    _server.drain(DRAIN_SECONDS)
    print(f"kvserver: stopped with {len(db.live_keys())} keys in {log}", flush=True)


def _alone(folder: Path) -> bool:
    """No other instance uses the data (a restart's old one is still running otherwise)."""
    try:
        named = int((folder / "kvserver.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return True
    return named in (os.getpid(), os.getppid())  # itself, or its supervisor


@main.on_stop
def stop_serving() -> None:
    if _server is not None:
        _server.wake()


if __name__ == "__main__":
    main()
