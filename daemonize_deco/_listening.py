"""Readiness for servers: a service that listens is ready once it listens.

A ``main`` blocked in someone else's server (uvicorn, aiohttp, waitress)
never calls should_stop() or sleep(), and the start grace would call it
ready while its framework still loads the app: connections refused.  So,
without ``wait_ready`` and without ``listen=``, the dispatcher looks at this
process's descriptors while the start is under way, every 50 ms, and no
longer once the service is ready (an idle daemon never wakes for it):

- a socket that accepts connections (``SO_ACCEPTCONN``: TCP over IPv4 or
  IPv6, Unix, any family) is ready;
- a stream socket of main's own (one that was not open before main: not
  ours, not systemd's journal on stdout; not a client's connection to a
  named peer either, but one being set up, or asyncio's own socketpair)
  seen before the grace ends means main is
  on its way to a server (asyncio's event loop opens one at once): the
  grace's end then moves back to ``start_grace`` before ``start_timeout``,
  so a server that takes its time is waited for, and a ``main`` with such a
  socket that never listens is still ready in the end.

The starting process times the grace too (nothing in the daemon can hold
its answer back): it is told "wait" the first time main has a stream
socket.  With ``listen=`` the sockets listen before main runs, so
connections wait in their backlog from the start: the grace applies as is.
"""

from __future__ import annotations

import _socket  # the C module, loaded with the package: socket.py would import enum
import os
import stat
import sys
import time

from ._platform_descriptors import listed_descriptors
from ._ready import is_ready, postpone, ready

__all__ = ["StartWatch", "look"]

_LOOK_EVERY = 0.05
_STREAM_TYPES = (_socket.SOCK_STREAM, _socket.SOCK_SEQPACKET)
_TCP_FAMILIES = (_socket.AF_INET, _socket.AF_INET6)
_TCP_SYN_SENT = 2  # tcp_info's tcpi_state (linux/tcp_states.h)


class StartWatch:
    """What makes the service ready while it starts, besides main's own calls.

    :meth:`check` declares it ready when its time has come and returns the
    seconds until it wants to be asked again, or None: done, never again.
    """

    def __init__(self, *, grace: float, start_timeout: float, sockets: bool) -> None:
        now = time.monotonic()
        self._grace_ends = now + grace
        self._postponed_ends = now + max(grace, start_timeout - grace)
        self._known = _sockets_open_now() if sockets else None
        self._postponed = False

    def check(self) -> float | None:
        """Declare the service ready if it is time; return when to look again (None: never)."""
        if is_ready():
            return None
        if self._known is not None:
            own, listening = look(self._known)
            if listening:
                ready()
                return None
            if own and not self._postponed:
                self._postponed = True
                postpone()
        ends = self._postponed_ends if self._postponed else self._grace_ends
        left = ends - time.monotonic()
        if left <= 0:
            if self._postponed:
                _say_not_listening()
            ready()
            return None
        return left if self._known is None else min(left, _LOOK_EVERY)


def _say_not_listening() -> None:
    print(
        "daemonize_deco: main has sockets of its own but is not listening yet; taken as "
        "ready now (call ready() to say when it is)",
        file=sys.stderr,
    )


def _socket_descriptors() -> list[tuple[int, int]]:
    """This process's socket descriptors with their inodes; OSError if it cannot list them.

    Only where a directory lists them (``_platform_descriptors``): probing
    every number 20 times a second would cost more than it tells.
    """
    listed = listed_descriptors()  # EMFILE: the listing needs a descriptor
    if listed is None:
        raise FileNotFoundError("no directory lists this process's descriptors")
    found = []
    for fd in listed:
        try:
            status = os.fstat(fd)
        except OSError:
            continue  # the listing's own descriptor, or closed by main meanwhile
        if stat.S_ISSOCK(status.st_mode):
            found.append((fd, status.st_ino))
    return found


def _sockets_open_now() -> frozenset[int] | None:
    """The sockets open before main runs (ours, inherited ones, a journal on stdout).

    None when they cannot be listed (no descriptor left, nothing lists them): then
    nothing is looked at, and the grace alone decides, as without this module.
    """
    try:
        return frozenset(inode for _, inode in _socket_descriptors())
    except OSError:
        return None


def look(known: frozenset[int]) -> tuple[bool, bool]:
    """Whether main has a stream socket not in ``known``, and whether one of them listens."""
    own = False
    try:
        descriptors = _socket_descriptors()
    except OSError:
        return False, False  # out of descriptors for a moment: looked at again in 50 ms
    for fd, inode in descriptors:
        if inode in known:
            continue
        kind, listening, client = _kind_of(fd)
        if kind in _STREAM_TYPES and not client:
            own = True
            if listening:
                return True, True
    return own, False


def _kind_of(fd: int) -> tuple[int, bool, bool]:
    """The socket type of ``fd``, whether it accepts connections, whether it is a client's.

    A client's: connected to a peer with a name (a broker, a database), which
    a server on its way does not need; asyncio's own socketpair has none.
    (-1, False, False) if gone.
    """
    try:
        blocking = os.get_blocking(fd)
        # Wraps main's descriptor without owning it: detached below, never closed.
        sock = _socket.socket(fileno=fd)
    except OSError:
        return -1, False, False  # closed by main meanwhile, or no longer a socket
    try:
        kind = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_TYPE)
        listening = bool(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN))
        client = not listening and bool(_peer(sock))
    except OSError:
        return -1, False, False
    finally:
        sock.detach()
        _keep_blocking(fd, blocking=blocking)
    return kind, listening, client


def _peer(sock: _socket.socket) -> object:
    """The peer's address ('' for an unnamed one), or None when it is not connected.

    A TCP connection still on its way (SYN sent) is a client's too: a broker
    far away takes a while to answer, and the look may come meanwhile.
    """
    try:
        return sock.getpeername()
    except OSError:
        pass  # ENOTCONN: being set up, to bind and listen, or to connect
    if sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_DOMAIN) in _TCP_FAMILIES:
        state = sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, 1)[0]
        if state == _TCP_SYN_SENT:
            return "connecting"
    return None


def _keep_blocking(fd: int, *, blocking: bool) -> None:
    """Undo the O_NONBLOCK that wrapping sets under ``socket.setdefaulttimeout()``."""
    if blocking and _socket.getdefaulttimeout() is not None:
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass  # closed by main meanwhile
