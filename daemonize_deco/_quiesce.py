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
- waits, at most ``limit`` seconds, until every connection it accepted has
  received bytes and the server has read them (``FIONREAD`` 0): then the
  server has the request, and a graceful stop answers it.

Loaded only by the instance a restart replaces.
"""

from __future__ import annotations

import _socket
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

__all__ = ["quiesce"]

_POLL_INTERVAL = 0.005
_TCP_INFO_SIZE = 136  # up to tcpi_bytes_received (Linux 4.1)
_BYTES_RECEIVED = slice(128, 136)
_TCP_ESTABLISHED = 1


def quiesce(listening: Sequence[socket.socket], limit: float) -> bool:
    """Stop accepting on ``listening``; wait until what was accepted is read. False on timeout."""
    ends = [_local_end(sock) for sock in listening]
    stop_accepting(listening)
    deadline = time.monotonic() + limit
    while _unread_connections(ends):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def stop_accepting(listening: Sequence[socket.socket]) -> None:
    """Make every descriptor of this process that names one of ``listening`` name a quiet socket."""
    inodes = set()
    for sock in listening:
        try:
            inodes.add(os.fstat(sock.fileno()).st_ino)
        except OSError:
            continue  # main closed it
    fds = [fd for fd, target in _descriptors() if target in {f"socket:[{i}]" for i in inodes}]
    for epoll_fd in [fd for fd, target in _descriptors() if target == "anon_inode:[eventpoll]"]:
        _unwatch(epoll_fd, fds)
    for fd in fds:
        _replace_by_quiet_socket(fd, inodes)


def _descriptors() -> list[tuple[int, str]]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            found.append((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except OSError:
            continue  # closed meanwhile (or the listing's own descriptor)
    return found


def _unwatch(epoll_fd: int, fds: Sequence[int]) -> None:
    """EPOLL_CTL_DEL each of ``fds`` that ``epoll_fd`` watches (its fdinfo lists them)."""
    import select  # noqa: PLC0415

    try:
        with open(f"/proc/self/fdinfo/{epoll_fd}", encoding="ascii") as info:
            watched = {int(line.split()[1]) for line in info if line.startswith("tfd:")}
        epoll = select.epoll.fromfd(os.dup(epoll_fd))  # the same epoll set, our own descriptor
    except (OSError, ValueError, IndexError):
        return
    with epoll:
        for fd in watched.intersection(fds):
            try:
                epoll.unregister(fd)
            except OSError:
                pass  # the loop removed it meanwhile


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
