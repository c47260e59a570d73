"""The control socket: how ``reload`` hears back that the daemon has reloaded.

A signal carries no answer, so ``reload`` connects to a Unix stream socket
that only the daemon listens on.  On Linux it has a random abstract name
(nothing on disk to leave behind, even after SIGKILL), so no other user can
take it first; the command finds it from the pid it verified through the
pidfile, by looking at that process's own descriptors (``/proc``), and
checks with ``SO_PEERCRED`` that the process answering is that pid.
Elsewhere it is the file ``control.PID`` in the service's private socket
directory, where only the service's user can reach or put a socket
(``_platform_sockets``).  Only root and the daemon's own user may ask: the
peer's uid where the system tells it, the directory's mode everywhere.

One request a connection: a line ``reload``; one reply line, ``ok`` or
``error <reason>``.  The request is *triggered* by the SIGHUP the client
sends once it is queued: the daemon accepts the waiting requests when it
handles SIGHUP and answers each with that reload's outcome.  So ``kill -HUP``
and ``reload`` are the same reload, and nothing needs to watch the socket
between reloads.  The C ``_socket`` module is used directly: ``socket.py``
would cost every daemon milliseconds of imports before it is ready.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys
import time

from . import _platform_sockets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

__all__ = [
    "ControlServer",
    "ImpostorError",
    "ask",
    "find_address",
    "peer_credentials",
    "peer_pid",
    "read_line",
    "release_spare",
    "reply",
    "send_request",
    "stream_socket",
]

_CLIENT_TIMEOUT = 1.0
_LINE_LIMIT = 4096
_NO_ROOM = (errno.EMFILE, errno.ENFILE)
_NO_ROOM_PAUSE = 0.05


class _Spare:
    """A descriptor held in reserve, so that at the limit (``ulimit -n``) a request still fits.

    A connection accept() cannot take (EMFILE) stays queued, and its socket
    readable: a loop polling it would wake at once, forever.  The spare is
    let go of to take it, and taken back once it is answered.
    """

    fd = -1

    @classmethod
    def reserve(cls) -> None:
        if cls.fd < 0:
            try:
                cls.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # at the limit already: taken back after a request closes

    @classmethod
    def release(cls) -> bool:
        if cls.fd < 0:
            return False
        os.close(cls.fd)
        cls.fd = -1
        return True


def release_spare() -> None:
    """Let go of the descriptor held in reserve (no request will be taken any more)."""
    _Spare.release()


def find_address(pid: int, pidfile: str, owners: Collection[int]) -> str | None:
    """The address of the control socket ``pid`` listens on; None when it has none.

    Found among the sockets the process itself holds, or as its file in a
    directory one of ``owners`` keeps; never guessed.  None too when we may
    not look at its descriptors (nor, then, signal it).
    """
    return _platform_sockets.find_control(pid, pidfile, owners)


class ImpostorError(PermissionError):
    """Another process than the daemon answers on its control socket."""


def peer_pid(sock: _socket.socket, address: str | bytes | None = None) -> int | None:
    """The pid of the process at the other end of a connected Unix socket; None if unknown."""
    creds = peer_credentials(sock, address)
    return None if creds is None else creds[0]


def peer_credentials(
    sock: _socket.socket, address: str | bytes | None = None
) -> tuple[int | None, int] | None:
    """The pid (None if unknown) and uid at the other end of a Unix socket; None if unknown.

    Unknown where the system does not tell, or (the pid) for a socket file
    (``_platform_sockets``): the socket's private directory then kept
    everyone else out.
    """
    return _platform_sockets.peer_credentials(sock, address)


def stream_socket(fileno: int | None = None) -> _socket.socket:
    """A close-on-exec Unix stream socket (or one for an accepted ``fileno``).

    Python's sockets are never inheritable (PEP 446): atomically where the
    system has SOCK_CLOEXEC.
    """
    if fileno is not None:
        return _socket.socket(fileno=fileno)
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)


def read_line(sock: _socket.socket) -> bytes:
    """Bytes up to the first newline (or end of stream), at most _LINE_LIMIT."""
    data = b""
    while b"\n" not in data and len(data) < _LINE_LIMIT:
        chunk = sock.recv(_LINE_LIMIT)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


class ControlServer:
    """The daemon's listening socket; :meth:`accept_waiting` takes the queued requests.

    Bound to ``address`` (``_platform_sockets``: an abstract name, or a
    socket file removed when it is closed).
    """

    def __init__(self, address: str | bytes) -> None:
        self.sock = stream_socket()
        try:
            _platform_sockets.bind(self.sock, address)
            self.sock.listen(64)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self._file: str | bytes | None = address if _platform_sockets.is_file(address) else None
        self._binder = os.getpid()
        _Spare.reserve()

    @classmethod
    def adopt(cls, fd: int) -> ControlServer:
        """The server listening on ``fd``, passed by the instance a restart replaces."""
        server = object.__new__(cls)
        server.sock = stream_socket(fd)
        server.sock.setblocking(False)
        name = server.sock.getsockname()
        server._file = name if isinstance(name, str) and name.startswith("/") else None
        server._binder = os.getpid()
        _Spare.reserve()
        return server

    def accept_waiting(self) -> list[tuple[_socket.socket, str]]:
        """Accept every queued connection and read its request; refused or mute peers dropped.

        With no descriptor left, one at a time, in the spare's place.
        """
        waiting: list[tuple[_socket.socket, str]] = []
        _Spare.reserve()
        while True:
            try:
                fd, _ = self.sock._accept()  # type: ignore[attr-defined]  # C-level accept
            except BlockingIOError:
                return waiting
            except OSError as exc:
                if exc.errno not in _NO_ROOM:
                    continue  # that peer gave up already
                if not waiting and _Spare.release():
                    continue
                if not waiting:
                    time.sleep(_NO_ROOM_PAUSE)  # nothing to let go of: do not spin
                return waiting  # the rest at the next round, once these are answered
            request = _checked_request(stream_socket(fd))
            if request is not None:
                waiting.append(request)

    def listen_again(self) -> None:
        """Listen anew: connecting clients' ``SO_PEERCRED`` then names this process.

        The kernel takes a listening socket's credentials from the last
        listen() call, so a socket passed on (``_handover``) speaks for its
        new holder at once, without ever giving up its name.
        """
        self.sock.listen(64)

    def fileno(self) -> int:
        """The listening descriptor, to poll."""
        return int(self.sock.fileno())

    def close(self) -> None:
        """Stop listening; remove the socket's file once no process listens on it."""
        self.sock.close()
        if self._binder == os.getpid():  # not in a child forked from the service
            _platform_sockets.remove_unused(self._file)


def _checked_request(conn: _socket.socket) -> tuple[_socket.socket, str] | None:
    conn.settimeout(_CLIENT_TIMEOUT)  # a peer that never writes must not block the dispatcher
    try:
        creds = peer_credentials(conn)  # None: the socket's directory kept others out
        if creds is not None and creds[1] not in (0, os.geteuid()):
            conn.sendall(b"error permission denied\n")
            conn.close()
            return None
        request = read_line(conn).decode("ascii", "replace").strip()
    except OSError:
        conn.close()
        return None
    return conn, request


def reply(conn: _socket.socket, text: str, fds: Sequence[int] = ()) -> None:
    """Send the one reply line (with descriptors ``fds``, SCM_RIGHTS) and close the connection."""
    line = (" ".join(text.split()) + "\n").encode("utf-8", "replace")
    try:
        if fds:
            numbers = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
            sent = conn.sendmsg([line], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, numbers)])
            line = line[sent:]  # the descriptors went with the first byte
        conn.sendall(line)
    except OSError:
        pass  # the asker gave up waiting; the daemon carries on
    finally:
        conn.close()


def ask(
    pid: int,
    request: str,
    timeout: float,
    trigger: Callable[[], object],
    where: tuple[str, Collection[int]],
) -> str | None:
    """Queue ``request`` for the daemon ``pid``, call ``trigger()``; return the reply line.

    ``where``: the service's pidfile and the users trusted with it.

    ``trigger`` sends the signal that makes the daemon take up its requests.
    Returns None, triggering nothing, when the daemon has no control socket.
    Raises TimeoutError when it does not answer within ``timeout``, and
    :class:`ImpostorError` when another process answers in its name.
    """
    sock = send_request(pid, request, timeout, trigger, where)
    if sock is None:
        return None
    try:
        try:
            answer = read_line(sock)
        except TimeoutError:
            raise  # an OSError too, but one the caller must hear about
        except OSError:
            return None
        return answer.decode("utf-8", "replace").strip() or None
    finally:
        sock.close()


def send_request(
    pid: int,
    request: str,
    timeout: float,
    trigger: Callable[[], object],
    where: tuple[str, Collection[int]],
) -> _socket.socket | None:
    """Queue ``request`` for the daemon ``pid``, call ``trigger()``; the socket its reply comes on.

    The first half of :func:`ask`, for a caller that waits for the reply in
    its own poll loop (the supervisor): with ``timeout`` 0 the socket does
    not block, and a full backlog is a BlockingIOError.  None, triggering
    nothing, when the daemon has no control socket.
    """
    address = find_address(pid, *where)
    if address is None:
        return None
    sock = stream_socket()
    try:
        if not _queue(sock, address, pid, request, timeout):
            sock.close()
            return None
        trigger()
    except BaseException:
        sock.close()
        raise
    return sock


def _queue(sock: _socket.socket, address: str, pid: int, request: str, timeout: float) -> bool:
    """Connect to ``pid``'s control socket and write ``request``; False when nobody listens."""
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except (ConnectionRefusedError, FileNotFoundError, PermissionError):
        return False  # gone, or in a directory that is not ours to enter
    answering = peer_pid(sock, address)  # None: the file's name says the pid
    if answering is not None and answering != pid:
        raise ImpostorError(f"pid {answering} answers on the control socket of pid {pid}")
    sock.sendall(request.encode("ascii") + b"\n")
    return True
