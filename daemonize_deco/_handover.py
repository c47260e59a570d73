"""Restarting without dropping connections: the running instance hands its sockets on.

``restart`` of a service with ``listen=`` asks the running instance, on its
claim socket (``_claim``: found by the pidfile's path, answered by the
dispatcher thread or the supervisor, only to root and its own user), for a
``handover``.  It first checks who answers: ``SO_PEERCRED`` must name the
very process that holds the pidfile, as one of the service's users, so a
squatter on the name is never asked (where the system names no peer, the
claim is a file in the service's private directory, which no other user
can enter: ``_platform_sockets``).  The answer carries, as SCM_RIGHTS
descriptors:

- the pidfile's locked descriptor: the same open file, so the same
  ``flock``; the lock is never released, and never held by two files;
- the claim's listening socket, for the new instance to answer on;
- the listening sockets, in the order of ``listen=``.

The new instance starts with them (no bind, so no "address already in use"
and not one refused connection) and becomes ready; only then is its pid
written into the pidfile (over the old one: ``status`` sees one running
service throughout), its options remembered, and the old instance first
quiesced, then stopped as ``stop`` would.  The quiesce (``_quiesce``,
asked on a socket the old instance named with its sockets, answered
by a thread of its own) makes the old instance stop accepting without
closing the shared queue, and waits (at most ``_QUIESCE_LIMIT``) until what
it accepted has been read: a server told to stop drops a connection it has
accepted but not read from, and under load there always is one.  Its main
then stops, finishes what is in flight and returns; seeing the pidfile name
its successor, it leaves the file, the records beside it and the Unix
socket files alone.  A supervisor answers the handover for its service, so
a supervised service is stopped without the quiesce.

The new instance keeps its startup pipe open until the restart closes it,
and then settles (:func:`settle`): named by the pidfile, it is the service
(and ends the old one itself if the restart died before it could);
otherwise the restart died before it committed, and it stands down.  So
whatever instant the restarting process dies, one instance is left.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys
import time

from . import _claim, _listeners, _platform_sockets
from ._control import peer_credentials, read_line, stream_socket
from ._errors import DetachError, PidFileError, StartupError
from ._proc import is_alive

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import Service
    from ._control import ControlServer
    from ._pidfile import PidFile
    from ._platform_process import ProcessHandle

__all__ = [
    "REQUEST",
    "Handover",
    "forget_predecessor",
    "offering",
    "one_restart_at_a_time",
    "pending",
    "predecessor_descriptor",
    "remove_unheld_lock",
    "settle",
    "take_over",
]

REQUEST = "handover"
_MAX_FDS = 253  # SCM_MAX_FD
_ANSWER_SIZE = 4096
_QUIESCE_PREFIX = "daemonize_deco/quiesce/"
_QUIESCE_LIMIT = 1.0  # at most this long for what the old instance accepted to be read
_QUIESCE_WAIT = 0.5  # between looks at whether the restart still runs
_LOCK_SUFFIX = ".restarting"
_RETRY_INTERVAL = 0.01
_SETTLE_POLL_LIMIT = 0.2  # the longest pause between looks at whether an instance settled


def one_restart_at_a_time(pidfile: PidFile, timeout: float) -> PidFile:
    """Lock ``PIDFILE.restarting``; ``remove()`` what it returns when done.

    Two restarts handed the same sockets would each start an instance, one
    of them never stopped: the second waits until the first is done, and
    then replaces the instance the first one started.  The lock file is
    taken as the pidfile is (a planted one is never used, and a waiter that
    locked a file its holder unlinked meanwhile locks the new one instead),
    so it is removed when the restart ends.  StartupError on timeout.
    """
    from ._pidfile import PidFile  # noqa: PLC0415

    lock = PidFile(pidfile.path + _LOCK_SUFFIX, pidfile.owners, what="restart lock")
    deadline = time.monotonic() + timeout
    while not lock.acquire():
        if time.monotonic() >= deadline:
            raise StartupError(
                f"another restart is under way ({lock.path} is locked)", path=lock.path
            )
        time.sleep(_RETRY_INTERVAL)
    return lock


def remove_unheld_lock(pidfile: PidFile) -> None:
    """Remove ``PIDFILE.restarting`` when no restart holds it (one killed left it)."""
    from ._pidfile import PidFile  # noqa: PLC0415

    if not os.path.lexists(pidfile.path + _LOCK_SUFFIX):
        return
    lock = PidFile(pidfile.path + _LOCK_SUFFIX, pidfile.owners, what="restart lock")
    try:
        if lock.acquire():
            lock.remove()
    except (PidFileError, OSError):
        pass  # another user's, and not ours to remove: it is never used (see above)


def offering(
    pidfile: PidFile, claim: ControlServer, *, accepts: bool = True
) -> tuple[str, Sequence[int]]:
    """The answer to a ``handover`` request: a line, and the descriptors that go with it.

    ``accepts``: this process accepts on the sockets (not a supervisor,
    whose service does), so the restart may ask it to quiesce.
    """
    from ._signals import stop_requested  # noqa: PLC0415 -- loaded by every service

    if stop_requested():
        # It may be gone before the new one is ready, and take its files with it.
        return "error it is stopping", ()
    # None left open (main closed them, or there were none): health='s alone is no reason.
    if all(sock.fileno() < 0 for sock in _listeners.listeners()):
        return "error it has no listening sockets", ()
    listening = _listeners.descriptors()
    if _Offered.quiesced:
        return "error it has stopped accepting", ()
    _Offered.yes = True
    quiet = _quiet_when_asked(pidfile) if accepts else None
    answer = f"ok {len(listening)}" if quiet is None else f"ok {len(listening)} {quiet}"
    return answer, [pidfile.fileno(), claim.fileno(), *listening]


class _Offered:
    """Whether this instance handed its sockets to a restart; whether it stopped accepting."""

    yes = False
    quiesced = False


def _quiet_when_asked(pidfile: PidFile) -> str | None:
    """Listen on a fresh name for the restart's ``quiesce``; the name, or None.

    The restart asks once the new instance is the service, just before it
    stops this one (:meth:`Handover.quiesce_old`).  A thread of its own
    waits for it, as long as a restart may take to get there, then gives up.
    """
    import _thread  # noqa: PLC0415

    name = f"{_QUIESCE_PREFIX}{os.urandom(8).hex()}"
    try:
        address = _platform_sockets.quiet_address(pidfile.path, name)
        server = stream_socket()
        try:
            _platform_sockets.bind(server, address)
            server.listen(1)
        except OSError:
            server.close()
            raise
    except OSError:
        return None  # no descriptor left: the restart stops this instance without it
    _thread.start_new_thread(_answer_quiesce, (server, pidfile, address))
    return name


def _answer_quiesce(server: _socket.socket, pidfile: PidFile, address: str) -> None:
    """Stop accepting when the restart says so (``_quiesce``), then tell it; once."""
    try:
        server.settimeout(_QUIESCE_WAIT)
        conn = _owners_connection(server, pidfile)
        if conn is None:
            return  # the restart failed or died: this instance serves on
        try:
            conn.settimeout(_QUIESCE_LIMIT + 1)
            if read_line(conn).strip() != b"quiesce":
                return
            from . import _quiesce  # noqa: PLC0415 -- only a replaced instance needs it

            _Offered.quiesced = True
            read = _quiesce.quiesce(_listeners.listeners(), _QUIESCE_LIMIT)
            health = sys.modules.get(f"{__package__}._health")
            if health is not None:  # health=: the new instance answers the probes now
                health.stop_answering()
            conn.sendall(b"ok\n" if read else b"ok unread connections left\n")
        finally:
            conn.close()
    except OSError:
        pass
    finally:
        server.close()
        _platform_sockets.remove_unused(address)


def _owners_connection(server: _socket.socket, pidfile: PidFile) -> _socket.socket | None:
    """The next connection from one of the service's users; None once no restart is pending.

    Any user may connect to an abstract name, and /proc/net/unix shows it:
    a stranger who comes first is hung up on, and the restart still gets through.
    (A socket file is in a directory no stranger can enter.)
    """
    while True:
        try:
            accepted, _ = server._accept()  # type: ignore[attr-defined]  # C-level accept
        except TimeoutError:
            if not pending(pidfile):
                return None
            continue
        conn = stream_socket(accepted)
        try:
            creds = peer_credentials(conn)
            if creds is None or creds[1] in pidfile.owners:
                return conn
        except OSError:
            pass  # gone already
        conn.close()


def pending(pidfile: PidFile) -> bool:
    """Whether a restart this instance handed its sockets to may still commit.

    Until it has (the pidfile names the new instance), an instance that
    ends for another reason (a stop, main returning) must leave the pidfile
    and the socket files to the new one: the restart holds ``.restarting``.
    """
    if not _Offered.yes:
        return False
    import fcntl  # noqa: PLC0415 -- loaded by the pidfile already

    from ._beside import is_trusted  # noqa: PLC0415 -- loaded by the pidfile already

    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # (a FIFO: no wait)
    try:
        fd = os.open(pidfile.path + _LOCK_SUFFIX, flags)
    except OSError:
        return False  # none: no restart under way
    try:
        if not is_trusted(os.fstat(fd), pidfile.owners):
            return False  # another user's, or no lock file at all: not a restart of ours
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (and with it the probing lock, if we took it)
    return False


class _Predecessor:
    """The instance a handover replaces, as the new one knows it: its pid and a handle on it."""

    pid: int | None = None
    process: ProcessHandle | None = None


def predecessor_descriptor() -> int | None:
    """The descriptor of the handle on the instance being replaced (for the new one to keep)."""
    return None if _Predecessor.process is None else _Predecessor.process.fileno()


def forget_predecessor() -> None:
    """In the restarting process, once the new instance is forked: the handle is not ours."""
    _Predecessor.pid = _Predecessor.process = None


class Handover:
    """What the running instance passed: its pidfile, claim and listening sockets."""

    __slots__ = ("claim", "listening", "pid", "pidfile", "quiet")

    def __init__(self, pid: int, fds: Sequence[int], count: int, quiet: str | None) -> None:
        self.pid = pid
        self.pidfile, self.claim, *self.listening = fds
        self.quiet = quiet  # the quiesce socket's name; its address once :func:`take_over` has it
        if len(self.listening) != count:
            raise ValueError(f"expected {count} listening sockets, got {len(self.listening)}")

    def quiesce_old(self) -> None:
        """Have the replaced instance stop accepting, and read what it accepted; then stop it.

        Asked only once the new instance is the service.  Anything that goes
        wrong (an instance that does not know how, one gone meanwhile) only
        means it is stopped without it.
        """
        if self.quiet is None:
            return
        try:
            sock = stream_socket()
        except OSError:
            return  # no descriptor left: stopped without it
        try:
            sock.settimeout(_QUIESCE_LIMIT + 1)
            sock.connect(self.quiet)
            creds = peer_credentials(sock, self.quiet)  # a file: in the service's own directory
            if creds is not None and creds[0] not in (None, self.pid):
                return  # not the instance we replace: tell it nothing
            sock.sendall(b"quiesce\n")
            read_line(sock)
        except OSError:
            pass
        finally:
            sock.close()

    def use(self, pidfile: PidFile, process: ProcessHandle) -> PidFile:
        """Make this process start the next instance with them; return the shared pidfile.

        ``process`` pins the running instance: the new one keeps it, to end
        that instance itself should the restart die before it could.
        """
        from ._pidfile import PidFile  # noqa: PLC0415

        _listeners.adopt(self.listening)
        _claim.inherit(self.claim)
        _Predecessor.pid, _Predecessor.process = self.pid, process
        return PidFile.adopt(pidfile.path, self.pidfile, pidfile.owners)

    def close(self) -> None:
        """Close every descriptor received (before :meth:`use`)."""
        for fd in (self.pidfile, self.claim, *self.listening):
            os.close(fd)


def take_over(pidfile: PidFile, pid: int, timeout: float) -> Handover:
    """Ask ``pid``, the verified holder of ``pidfile``, for its sockets.

    StartupError with the reason when it cannot or will not (a version that
    knows no handover, one with no listening sockets), or when another
    process answers on its claim (a squatter on the name is never asked).
    DetachError when this process has no room for them (``ulimit -n``): the
    running instance is then left alone, not stopped and started afresh.
    """
    sock = _connect_to_holder(pidfile, pid, timeout)
    try:
        sock.sendall(REQUEST.encode("ascii") + b"\n")
        handover = _receive(sock, pid)
    except DetachError:
        raise
    except OSError as exc:
        raise StartupError(f"no handover from pid {pid}: {exc}", pid=pid) from None
    finally:
        sock.close()
    if not _same_file(handover.pidfile, pidfile.path):
        handover.close()
        raise StartupError(f"what answers for {pidfile.path} passed another file")
    if handover.quiet is not None:
        handover.quiet = _platform_sockets.find_quiet(pidfile.path, handover.quiet, pidfile.owners)
    return handover


def _connect_to_holder(pidfile: PidFile, pid: int, timeout: float) -> _socket.socket:
    """A connection to the claim that ``pid`` itself, as one of the service's users, answers.

    The kernel reports the process that last called listen() on the socket;
    each instance does, in its own name, once it is the service (:func:`settle`).
    Until the instance a restart just made the service has settled, its
    predecessor's name is reported: one of the service's users gets until
    ``timeout`` to settle; another user's process is never asked.
    """
    deadline = time.monotonic() + timeout
    pause = _RETRY_INTERVAL
    while True:
        try:
            addresses = _platform_sockets.claim_addresses(pidfile.path, pidfile.owners)
            sock = stream_socket()
        except OSError as exc:
            raise DetachError(f"cannot ask pid {pid} for its sockets: {exc.strerror}") from exc
        try:
            sock.settimeout(timeout)
            address = _connect_to_claim(sock, addresses)
            creds = peer_credentials(sock, address)
        except BlockingIOError as exc:  # its backlog is full: not accepting (yet)
            sock.close()
            doubt = f"pid {pid} does not answer on its claim socket: {exc}"
        except OSError as exc:
            sock.close()
            raise StartupError(
                f"pid {pid} does not answer on its claim socket: {exc}", pid=pid
            ) from None
        else:
            if creds is None:
                return sock  # a file in the service's own directory: no stranger's
            answering, uid = creds[0] or pid, creds[1]  # no pid told: the uid is the check
            if answering == pid and uid in pidfile.owners:
                return sock
            sock.close()
            from ._pidfile import user_name  # noqa: PLC0415

            doubt = (
                f"pid {answering} (user {user_name(uid)}) answers on the claim of "
                f"{pidfile.path}, not pid {pid}: not trusting it"
            )
            if uid not in pidfile.owners:
                raise StartupError(doubt, path=pidfile.path, pid=answering)
        if time.monotonic() >= deadline or not is_alive(pid):
            raise StartupError(doubt, path=pidfile.path, pid=pid)
        # A restart's new instance about to listen in its own name; each try
        # waits in the backlog until it does: space them out.
        time.sleep(pause)
        pause = min(pause * 2, _SETTLE_POLL_LIMIT)


def _connect_to_claim(sock: _socket.socket, addresses: Sequence[str | bytes]) -> str | bytes:
    """Connect to the first of the claim's ``addresses`` that answers; which.

    OSError (connect's) when none does.
    """
    if not addresses:
        raise FileNotFoundError(errno.ENOENT, "no socket directory of the service's")
    for address in addresses[:-1]:
        try:
            sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            continue
        return address
    sock.connect(addresses[-1])
    return addresses[-1]


def _same_file(fd: int, path: str) -> bool:
    try:
        there, passed = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (passed.st_dev, passed.st_ino)


def settle(pidfile: PidFile, claim: ControlServer | None, service: Service) -> bool:
    """The restart that started this instance is over (it closed the pipe, or died).

    True when the pidfile names this instance: it is the service now.  It
    listens on the claim again, which makes the kernel name it to whoever
    connects (``SO_PEERCRED`` reports the last process that called listen(),
    and the name is never free meanwhile), remembers its options, and ends
    the instance it replaced if that one still runs (the restart died while
    stopping it).  False: the restart ended before it named this instance
    (killed, or it gave up): the caller stands down.
    """
    pid, process = _Predecessor.pid, _Predecessor.process
    if not pidfile.names_us():
        if process is None or not process.has_exited():
            return False
        # The replaced instance is gone as well (it failed meanwhile): serve.
        try:
            pidfile.put_back(os.getpid())
        except PidFileError as exc:
            print(f"daemonize_deco: {exc}", file=sys.stderr)  # still the lock's holder
    if claim is not None:
        claim.listen_again()
    service.remember_options()
    _Predecessor.pid = _Predecessor.process = None
    if pid is not None and process is not None:
        import _thread  # noqa: PLC0415

        timeout = service.config.kill_after
        _thread.start_new_thread(_end_predecessor, (pidfile.path, process, timeout))
    return True


def _end_predecessor(pidfile: str, process: ProcessHandle, stop_timeout: float) -> None:
    """Stop the replaced instance as ``stop`` would, if it still runs; close its handle."""
    pid = process.pid
    try:
        if not process.has_exited():
            from ._terminate import terminate  # noqa: PLC0415 -- only after a restart died

            print(
                f"daemonize_deco: the restart that started this instance ended before pid "
                f"{pid} was gone; stopping it",
                file=sys.stderr,
            )
            if terminate(process, stop_timeout).how == "killed":
                from ._descendants import end_left_by  # noqa: PLC0415

                end_left_by(pidfile, pid, stop_timeout)  # it could not end them itself
    except (PermissionError, TimeoutError) as exc:
        print(f"daemonize_deco: cannot stop pid {pid}: {exc}", file=sys.stderr)
    finally:
        process.close()


def _receive(sock: _socket.socket, pid: int) -> Handover:
    data, fds, truncated = _platform_sockets.receive_descriptors(sock, _ANSWER_SIZE, _MAX_FDS)
    if truncated:  # the kernel had no room for them all (ulimit -n)
        for fd in fds:
            os.close(fd)
        raise DetachError(f"cannot receive the sockets of pid {pid}: {os.strerror(errno.EMFILE)}")
    if b"\n" not in data:
        data += read_line(sock)
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    try:
        count, quiet = _offered(line, pid)
        return Handover(pid, fds, count, quiet)
    except (StartupError, ValueError) as exc:
        for fd in fds:
            os.close(fd)
        if isinstance(exc, ValueError):
            raise StartupError(f"pid {pid} handed over something else: {exc}", pid=pid) from None
        raise


def _offered(line: str, pid: int) -> tuple[int, str | None]:
    """The count and quiesce name in an ``ok N [NAME]`` answer; StartupError for any other."""
    word, _, rest = line.partition(" ")
    count, _, quiet = rest.partition(" ")
    if word == "ok" and count.isdigit() and (not quiet or quiet.startswith(_QUIESCE_PREFIX)):
        return int(count), quiet or None
    reason = rest if word == "error" else f"unexpected answer {line!r}"
    raise StartupError(f"pid {pid} did not hand over its sockets: {reason}", pid=pid)
