"""A replaced instance stops accepting, and lets what it accepted be read, before it is stopped.

During a ``restart`` with ``listen=`` both instances hold the same
listening sockets: one accept queue, emptied by whichever calls accept()
first.  A server told to stop closes what it accepted and has not read a
request from yet (uvicorn closes such a connection at once; aiohttp drops
the request and then waits for it until its ``shutdown_timeout``), so every
connection the old instance accepted in its last moments was lost.  Before
the old instance is sent its stop, :func:`quiesce` therefore

- takes its listening sockets out of every ``epoll`` set of the process
  (a closed descriptor stays in an epoll set while another process holds
  the socket: the new instance does) and puts, with ``dup2``, a listening
  Unix socket that nobody connects to in their place, so no loop of the
  process (epoll, poll, select) sees a connection again and the descriptor
  numbers stay valid.  The listening sockets themselves are not closed nor
  shut down: that would reset the connections waiting in the shared queue;
  the new instance accepts them;
- wakes each thread already waiting in accept() on one of them (it waits
  on the socket, not the descriptor, and would take the next connection
  of the shared queue) with a connection of its own: its next accept() is
  on the quiet socket;
- waits, at most ``limit`` seconds, until every connection it accepted has
  received bytes and the server has read them (``FIONREAD`` 0): then the
  server has the request, and a graceful stop answers it;
- once its stop is requested, wakes each thread that waits in accept() on a
  quiet socket, the same way: no connection ever reaches one, and a loop
  that accepts in main's own thread, blocking, would wait there through its
  SIGTERM (before the quiesce, the next connection of the queue woke it).

Loaded only by the instance a restart replaces.  A Linux refinement: it
reads the descriptors, threads and epoll sets of the process off /proc
(``_proc``), and where /proc or epoll is missing it does nothing (the
handover then works as a ``restart`` without it did: the old instance's
last accepted connections may be lost).
"""

from __future__ import annotations

import _socket
import _thread
import os
import sys
import time

from ._platform import HAS_EPOLL, has_proc
from ._proc import own_descriptor_targets, task_syscalls, unwatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Collection, Sequence
    from typing import Any

    _Address = tuple[int, Any]  # a listening socket's family and getsockname()

__all__ = ["quiesce"]

_POLL_INTERVAL = 0.005
_TCP_INFO_SIZE = 136  # up to tcpi_bytes_received (Linux 4.1)
_BYTES_RECEIVED = slice(128, 136)
_TCP_ESTABLISHED = 1
_ACCEPT_CALLS = {"x86_64": (43, 288), "aarch64": (202, 242)}  # accept, accept4
_KNOCK_EVERY = 0.1  # once stopping: how often a thread waiting on a quiet socket is woken


def quiesce(listening: Sequence[socket.socket], limit: float) -> bool:
    """Stop accepting on ``listening``; wait until what was accepted is read. False on timeout.

    True at once where it cannot be done (no /proc or no epoll).
    """
    if not (HAS_EPOLL and has_proc()):
        return True
    ends = [_local_end(sock) for sock in listening]
    deadline = time.monotonic() + limit
    replaced = stop_accepting(listening)
    for fd in _accepting_threads(replaced):
        _wake(replaced[fd], deadline)
    quiet = _quiet_sockets(replaced)
    if quiet:
        _thread.start_new_thread(_wake_once_stopping, (quiet,))
    while _unread_connections(ends):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def stop_accepting(listening: Sequence[socket.socket]) -> dict[int, _Address]:
    """Make every descriptor of this process that names one of ``listening`` name a quiet socket.

    Returns the descriptors replaced, each with the address it listened on.
    """
    named: dict[str, _Address] = {}
    for sock in listening:
        try:
            named[f"socket:[{os.fstat(sock.fileno()).st_ino}]"] = (sock.family, sock.getsockname())
        except OSError:
            continue  # main closed it
    replaced = {fd: named[target] for fd, target in _descriptors() if target in named}
    for epoll_fd in [fd for fd, target in _descriptors() if target == "anon_inode:[eventpoll]"]:
        unwatch(epoll_fd, list(replaced))
    inodes = {int(target[8:-1]) for target in named}
    for fd in replaced:
        _replace_by_quiet_socket(fd, inodes)
    return replaced


def _accepting_threads(replaced: Collection[int]) -> list[int]:
    """The replaced descriptor of each thread waiting in accept() on one right now.

    A thread blocked in accept() holds the listening socket itself, not the
    descriptor: dup2 does not end its wait, and the next connection in the
    shared queue would be its own (and lost when this instance exits).
    /proc/self/task/TID/syscall names the call and its descriptor.
    """
    calls = _ACCEPT_CALLS.get(os.uname().machine, ())
    waiting = []
    for words in task_syscalls():
        try:
            if int(words[0]) in calls and int(words[1], 16) in replaced:
                waiting.append(int(words[1], 16))
        except (ValueError, IndexError):
            continue  # running
    return waiting


def _wake(listening: _Address, deadline: float) -> None:
    """Connect to ``listening`` until one of our accept()s takes such a connection; then close.

    The thread it ends accepts next on the quiet socket.  A connection the
    other instance takes is an empty one to it, closed at once.
    """
    import socket  # noqa: PLC0415

    family, address = listening
    if family in (socket.AF_INET, socket.AF_INET6):
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}
        address = (wildcard.get(address[0], address[0]), *address[1:])
    while time.monotonic() < deadline:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                if family == socket.AF_UNIX:
                    sock.bind("")  # a name of its own, for the accepted end to show
                sock.settimeout(max(deadline - time.monotonic(), _POLL_INTERVAL))
                sock.connect(address)
                if _taken_here(sock.getsockname(), deadline):
                    return
        except OSError:
            return  # not reachable from here: the wait ends at the limit


def _taken_here(peer: object, deadline: float) -> bool:
    """Whether a socket of this process is connected to ``peer`` (it accepted it) soon."""
    wait_until = min(deadline, time.monotonic() + _POLL_INTERVAL * 20)
    while True:
        for fd, target in _descriptors():
            if target.startswith("socket:") and _peer_of(fd) == peer:
                return True
        if time.monotonic() >= wait_until:
            return False
        time.sleep(_POLL_INTERVAL)


def _peer_of(fd: int) -> object:
    try:
        sock = _socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        return sock.getpeername()
    except OSError:
        return None
    finally:
        sock.close()


def _quiet_sockets(replaced: dict[int, _Address]) -> dict[int, tuple[int, bytes]]:
    """Each replaced descriptor that names a quiet socket now: its inode and abstract name."""
    quiet = {}
    for fd in replaced:
        try:
            inode = os.fstat(fd).st_ino
            sock = _socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            name = sock.getsockname()
            if sock.family == _socket.AF_UNIX and isinstance(name, bytes):
                quiet[fd] = (inode, name)
        except OSError:
            continue
        finally:
            sock.close()
    return quiet


def _wake_once_stopping(quiet: dict[int, tuple[int, bytes]]) -> None:
    """From the stop request on, wake every thread waiting in accept() on a quiet socket.

    Its connection sends nothing and is half-closed: a recv() on it ends, a
    send() succeeds.  Kept open until the process ends; again and again, as
    a loop (a thread of its own, say) may accept once more before it ends.
    """
    import select  # noqa: PLC0415

    from ._signals import stop_fd  # noqa: PLC0415 -- loaded by every service

    poller = select.poll()
    try:
        poller.register(stop_fd(), select.POLLIN)  # (its pipe, made on first use)
    except OSError:
        return  # no descriptor left: stopped as before the quiesce
    poller.poll()
    kept: list[_socket.socket] = []
    while True:
        for fd in _accepting_threads(quiet):
            knock = _knock(fd, *quiet[fd])
            if knock is not None:
                kept.append(knock)
        time.sleep(_KNOCK_EVERY)


def _knock(fd: int, inode: int, name: bytes) -> _socket.socket | None:
    """A connection to the quiet socket ``fd`` still names, half-closed; None if it cannot."""
    try:
        if os.fstat(fd).st_ino != inode:
            return None  # closed by main, the number used again: not ours to wake
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.settimeout(_KNOCK_EVERY)  # a backlog full of earlier knocks: next round
        sock.connect(name)
        sock.shutdown(_socket.SHUT_WR)
    except OSError:
        sock.close()
        return None
    return sock


def _descriptors() -> list[tuple[int, str]]:
    return own_descriptor_targets() or []


def _replace_by_quiet_socket(fd: int, inodes: set[int]) -> None:
    import fcntl  # noqa: PLC0415
    import socket  # noqa: PLC0415

    quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with quiet:
        quiet.bind("")  # an abstract name of the kernel's choosing, on no network
        quiet.listen(1)
        try:
            if os.fstat(fd).st_ino not in inodes:
                return  # closed meanwhile, the number used again
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(quiet.fileno(), fcntl.F_SETFL, flags)  # O_NONBLOCK as the loop set it
            os.dup2(quiet.fileno(), fd, inheritable=False)
        except OSError:
            return


def _local_end(sock: socket.socket) -> tuple[int, object]:
    """(family, port) of a TCP listener, (family, path) of a Unix one: what accepted ones share."""
    import socket  # noqa: PLC0415

    try:
        name = sock.getsockname()
    except OSError:
        return (-1, None)
    return (sock.family, name[1] if sock.family != socket.AF_UNIX else name)


def _unread_connections(ends: Sequence[tuple[int, object]]) -> int:
    """Accepted connections with nothing received yet, or with bytes the server has not read."""
    count = 0
    for fd, target in _descriptors():
        if not target.startswith("socket:"):
            continue
        try:
            sock = _socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if _is_accepted(sock, ends) and _unread(sock):
                count += 1
        except OSError:
            pass  # gone meanwhile
        finally:
            sock.close()
    return count


def _is_accepted(sock: _socket.socket, ends: Sequence[tuple[int, object]]) -> bool:
    if sock.type != _socket.SOCK_STREAM or sock.getsockopt(
        _socket.SOL_SOCKET, _socket.SO_ACCEPTCONN
    ):
        return False
    name = sock.getsockname()
    end = (sock.family, name if sock.family == _socket.AF_UNIX else name[1])
    return end in ends


def _unread(sock: _socket.socket) -> bool:
    import fcntl  # noqa: PLC0415
    import termios  # noqa: PLC0415

    waiting = int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4)), sys.byteorder)
    if waiting:
        return True
    if sock.family == _socket.AF_UNIX:
        return False
    info = sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, _TCP_INFO_SIZE)
    if len(info) < _TCP_INFO_SIZE or info[0] != _TCP_ESTABLISHED:
        return False  # an older kernel, or the client has gone: nothing to wait for
    return int.from_bytes(info[_BYTES_RECEIVED], sys.byteorder) == 0
