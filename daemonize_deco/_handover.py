"""Restarting without dropping connections: the running instance hands its sockets on.

``restart`` of a service with ``listen=`` asks the running instance, on its
claim socket (``_claim``: found by the pidfile's path, answered by the
dispatcher thread or the supervisor, only to root and its own user), for a
``handover``.  The answer carries, as SCM_RIGHTS descriptors:

- the pidfile's locked descriptor: the same open file, so the same
  ``flock``; the lock is never released, and never held by two files;
- the claim's listening socket, for the new instance to answer on;
- the listening sockets, in the order of ``listen=``.

The new instance starts with them (no bind, so no "address already in use"
and not one refused connection) and becomes ready; only then is its pid
written into the pidfile (over the old one: ``status`` sees one running
service throughout) and the old instance stopped as ``stop`` would.  Its
main stops accepting, finishes what is in flight and returns; seeing the
pidfile name its successor, it leaves the file, the records beside it and
the Unix socket files alone.  A new instance that fails to become ready is
ended, its copies closed, and the old one has not noticed a thing.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys
import time

from . import _claim, _listeners
from ._control import read_line, stream_socket
from ._errors import DetachError, StartupError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._control import ControlServer
    from ._pidfile import PidFile

__all__ = ["REQUEST", "Handover", "offering", "one_restart_at_a_time", "rebind_claim", "take_over"]

REQUEST = "handover"
_MAX_FDS = 253  # SCM_MAX_FD
_LOCK_SUFFIX = ".restarting"
_RETRY_INTERVAL = 0.01


def one_restart_at_a_time(pidfile: str, timeout: float) -> int:
    """Lock ``PIDFILE.restarting`` (a descriptor to close when done); StartupError on timeout.

    Two restarts handed the same sockets would each start an instance, one
    of them never stopped: the second waits until the first is done, and
    then replaces the instance the first one started.  The file stays (a
    lock file removed while another waits for it locks nothing); opened for
    reading, so one another user left there locks as well.
    """
    import fcntl  # noqa: PLC0415 -- loaded by the pidfile already

    path = pidfile + _LOCK_SUFFIX
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot use {path}: {exc.strerror}") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StartupError(f"another restart is under way ({path} is locked)") from None
            time.sleep(_RETRY_INTERVAL)
            continue
        return fd


def offering(pidfile: PidFile, claim: ControlServer) -> tuple[str, Sequence[int]]:
    """The answer to a ``handover`` request: a line, and the descriptors that go with it."""
    listening = _listeners.descriptors()
    if not listening:
        return "error it has no listening sockets", ()
    return f"ok {len(listening)}", [pidfile.fileno(), claim.fileno(), *listening]


class Handover:
    """What the running instance passed: its pidfile, claim and listening sockets."""

    __slots__ = ("claim", "listening", "pid", "pidfile")

    def __init__(self, pid: int, fds: Sequence[int], count: int) -> None:
        self.pid = pid
        self.pidfile, self.claim, *self.listening = fds
        if len(self.listening) != count:
            raise ValueError(f"expected {count} listening sockets, got {len(self.listening)}")

    def use(self, pidfile_path: str) -> PidFile:
        """Make this process start the next instance with them; return the shared pidfile."""
        from ._pidfile import PidFile  # noqa: PLC0415

        _listeners.adopt(self.listening)
        _claim.inherit(self.claim)
        return PidFile.adopt(pidfile_path, self.pidfile)

    def close(self) -> None:
        """Close every descriptor received (before :meth:`use`)."""
        for fd in (self.pidfile, self.claim, *self.listening):
            os.close(fd)


def take_over(pidfile: str, pid: int, timeout: float) -> Handover:
    """Ask ``pid``, the verified holder of ``pidfile``, for its sockets.

    StartupError with the reason when it cannot or will not (a version that
    knows no handover, or one with no listening sockets).  DetachError when
    this process has no room for them (``ulimit -n``): the running instance
    is then left alone, not stopped and started afresh.
    """
    try:
        sock = stream_socket()
    except OSError as exc:
        raise DetachError(f"cannot ask pid {pid} for its sockets: {exc.strerror}") from exc
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(_claim.claim_address(pidfile))
        except OSError as exc:
            raise StartupError(f"pid {pid} does not answer on its claim socket: {exc}") from None
        sock.sendall(REQUEST.encode("ascii") + b"\n")
        handover = _receive(sock, pid)
    except DetachError:
        raise
    except OSError as exc:
        raise StartupError(f"no handover from pid {pid}: {exc}") from None
    finally:
        sock.close()
    # Not SO_PEERCRED: a claim passed on names its first listener until rebound.
    # Whoever answered had the very pidfile open, which only our instances have.
    if not _same_file(handover.pidfile, pidfile):
        handover.close()
        raise StartupError(f"what answers for {pidfile} passed another file")
    return handover


def _same_file(fd: int, path: str) -> bool:
    try:
        there, passed = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (passed.st_dev, passed.st_ino)


def rebind_claim(pidfile: str, timeout: float) -> None:
    """Once the old instance is gone: have the new one bind the claim in its own name."""
    try:
        sock = stream_socket()
    except OSError:
        return  # no descriptor left (ulimit -n): as below
    try:
        sock.settimeout(timeout)
        sock.connect(_claim.claim_address(pidfile))
        sock.sendall(_claim.REBIND.encode("ascii") + b"\n")
        read_line(sock)
    except OSError:
        pass  # the claim only helps find a service whose pidfile was deleted
    finally:
        sock.close()


def _receive(sock: _socket.socket, pid: int) -> Handover:
    space = _socket.CMSG_SPACE(_MAX_FDS * 4)
    data, ancillary, flags, _ = sock.recvmsg(4096, space, _socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    if flags & _socket.MSG_CTRUNC:  # the kernel had no room for them all (ulimit -n)
        for fd in fds:
            os.close(fd)
        raise DetachError(f"cannot receive the sockets of pid {pid}: {os.strerror(errno.EMFILE)}")
    if b"\n" not in data:
        data += read_line(sock)
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    try:
        return Handover(pid, fds, _listening_count(line, pid))
    except (StartupError, ValueError) as exc:
        for fd in fds:
            os.close(fd)
        if isinstance(exc, ValueError):
            raise StartupError(f"pid {pid} handed over something else: {exc}") from None
        raise


def _listening_count(line: str, pid: int) -> int:
    """The count in an ``ok N`` answer; StartupError with the reason for any other."""
    word, _, rest = line.partition(" ")
    if word == "ok" and rest.isdigit():
        return int(rest)
    reason = rest if word == "error" else f"unexpected answer {line!r}"
    raise StartupError(f"pid {pid} did not hand over its sockets: {reason}")
