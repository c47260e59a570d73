"""Listening sockets held by the framework: ``listen=``, and :func:`listeners` in main.

The sockets are opened by the process that starts the service, before it
detaches, so ``start`` says "address already in use" itself (exit 1) instead
of a daemon failing later; the daemon, and a supervisor's every service,
inherit them through ``fork``.  They come from one of three places:

- systemd socket activation: ``LISTEN_PID`` names this process and
  ``LISTEN_FDS`` counts descriptors from 3 on; each is matched to the
  ``listen=`` entry with its address (the order of a ``.socket`` unit's
  lines does not matter), and what systemd did not pass is bound here;
- a running instance, during ``restart`` (``_handover``): the very same
  sockets, so no connection is refused while instances change;
- otherwise bound here, with the system's ``somaxconn`` as the backlog.

All are non-inheritable: a program main runs does not get them.  A Unix
socket's file is removed when the last instance using it stops, and not
when it is handed over; one that systemd made is systemd's to remove.
"""

from __future__ import annotations

import errno
import os
import stat

from ._addresses import Address, parse_address
from ._errors import ListenError
from ._proc import somaxconn, unix_path_bound

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

__all__ = [
    "activated",
    "adopt",
    "close_all",
    "descriptors",
    "listeners",
    "open_health",
    "open_listeners",
    "remove_unused_files",
]

_SD_LISTEN_FDS_START = 3
_DEFAULT_BACKLOG = 4096


class _Held:
    """This process's listening sockets, in the order of ``listen=``."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.health: socket.socket | None = None  # health='s, handed over after them
        # Unix socket files we made: (path, dev, ino), removed at the last stop.
        self.made: list[tuple[str, int, int]] = []


_held = _Held()


def listeners() -> list[socket.socket]:
    """The service's listening sockets, in the order of ``listen=``.

    Bound and listening before ``main`` runs (or passed by systemd or by the
    instance a ``restart`` replaces); empty without ``listen=``.
    """
    return list(_held.sockets)


def descriptors() -> list[int]:
    """Their descriptor numbers (to keep when closing inherited ones, to hand over).

    The ``health=`` socket goes last, with them: the next instance must not
    find its address taken by the one it replaces.
    """
    extra = [] if _held.health is None else [_held.health]
    return [fd for fd in (sock.fileno() for sock in [*_held.sockets, *extra]) if fd >= 0]


def adopt(fds: Sequence[int]) -> None:
    """Use sockets received from the instance being replaced (``_handover``)."""
    import socket  # noqa: PLC0415 -- only services with listen= pay for socket.py

    _held.sockets = [socket.socket(fileno=fd) for fd in fds]
    # Their files go with them: removed when this instance stops without handing over.
    _held.made = []
    for sock in _held.sockets:
        name = sock.getsockname() if sock.family == socket.AF_UNIX else None
        if isinstance(name, str) and name.startswith("/"):
            try:
                found = os.stat(name, follow_symlinks=False)
            except OSError:
                continue
            _held.made.append((name, found.st_dev, found.st_ino))


def open_listeners(entries: Sequence[str]) -> None:
    """Take systemd's sockets, or bind ``entries``; ListenError saying which could not be."""
    if _held.sockets or not entries:
        return  # handed over by the instance we replace, or nothing to listen on

    addresses = [parse_address(entry) for entry in entries]
    passed = activated()
    opened: list[socket.socket] = []
    try:
        _refuse_connections(passed)
        for address in addresses:
            sock = _take_passed(passed, address)
            opened.append(sock if sock is not None else _bind(address))
        _refuse_unnamed(passed)
    except BaseException:
        for sock in [*opened, *passed]:
            sock.close()
        _remove_made()
        raise
    _held.sockets = opened


def open_health(text: str) -> socket.socket:
    """The ``health=`` socket: handed over with the others by the instance we replace, or bound.

    Bound by ``start`` (or ``run``) with the ``listen=`` sockets, before
    detaching: a supervisor holds it across its service's restarts.

    It is the framework's, not main's: :func:`listeners` leaves it out.  A
    Unix socket file it makes is removed with the others at the last stop.
    """
    if _held.health is not None:
        return _held.health  # bound by start, held by our supervisor
    address = parse_address(text, "health")
    for sock in _held.sockets:
        if _is_bound_to(sock, address):
            _held.sockets.remove(sock)
            _held.health = sock
            return sock
    _held.health = _bind(address)
    return _held.health


def _refuse_connections(passed: list[socket.socket]) -> None:
    """A connection passed in place of a listener (``Accept=yes``): main's accept() would fail.

    With ``Accept=yes`` systemd accepts itself and hands each instance one
    connected socket, on the listener's address; ``accept()`` on it gives EINVAL.
    """
    import socket  # noqa: PLC0415

    for sock in passed:
        if sock.type == socket.SOCK_STREAM and not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise ListenError(
                f"systemd passed a connection{_ends(sock)}, not a listening socket: "
                "listen= needs Accept=no in the .socket unit"
            )


def _ends(sock: socket.socket) -> str:
    """`` to HOST:PORT from HOST:PORT``, as far as the socket knows them."""
    text = ""
    for word, name in (("to", sock.getsockname), ("from", sock.getpeername)):
        try:
            where = name()
        except OSError:
            continue  # the peer has gone already
        if isinstance(where, tuple):
            host = f"[{where[0]}]" if ":" in where[0] else where[0]
            where = f"{host}:{where[1]}"
        if where:  # a Unix client is seldom bound to a name
            text += f" {word} {where}"
    return text


def _refuse_unnamed(passed: list[socket.socket]) -> None:
    """Systemd passed more than listen= names: a unit that does not match the service."""
    if passed:
        where = ", ".join(_describe(sock) for sock in passed)
        raise ListenError(f"systemd passed sockets that listen= does not name: {where}")


def activated() -> list[socket.socket]:
    """The sockets systemd passed to this process (``LISTEN_PID``); the variables are unset."""
    environ = os.environ
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = environ.get("LISTEN_FDS", "")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(variable, None)  # sd_listen_fds(unset_environment=1): not for children
    if not count.isdigit():
        return []
    import socket  # noqa: PLC0415 -- only services with listen= pay for socket.py

    passed: list[socket.socket] = []
    for fd in range(_SD_LISTEN_FDS_START, _SD_LISTEN_FDS_START + int(count)):
        try:
            os.set_inheritable(fd, False)
            passed.append(socket.socket(fileno=fd))
        except OSError as exc:
            for sock in passed:
                sock.close()
            raise ListenError(
                f"systemd passed LISTEN_FDS={count}, but fd {fd} is not a socket: {exc.strerror}"
            ) from None
    return passed


def _take_passed(passed: list[socket.socket], address: Address) -> socket.socket | None:
    """The socket in ``passed`` bound to ``address`` (removed from the list), if any."""
    for sock in passed:
        if _is_bound_to(sock, address):
            passed.remove(sock)
            return sock
    return None


def _is_bound_to(sock: socket.socket, address: Address) -> bool:
    import socket  # noqa: PLC0415

    if sock.type != socket.SOCK_STREAM:
        return False  # a datagram socket on the same address is not a listener
    name = sock.getsockname()
    if address.is_unix:
        return sock.family == socket.AF_UNIX and name == address.path
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or name[1] != address.port:
        return False
    wanted = {where[0] for _, where in _resolve(address) if isinstance(where, tuple)}
    return name[0] in wanted


def _resolve(address: Address) -> list[tuple[int, str | tuple[object, ...]]]:
    """(family, socket address) for the host and port, as bind() takes them."""
    import socket  # noqa: PLC0415

    try:
        found = socket.getaddrinfo(
            address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {address.text}: {exc.strerror}", path=address.path or None
        ) from None
    return [(info[0], info[4]) for info in found]


def _bind(address: Address) -> socket.socket:
    import socket  # noqa: PLC0415

    family: int
    where: str | tuple[object, ...]
    if address.is_unix:
        family, where = socket.AF_UNIX, address.path
        _clear_stale_socket_file(address)
    else:
        family, where = _resolve(address)[0]
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)  # non-inheritable (PEP 446)
    except OSError as exc:  # no descriptor left (ulimit -n)
        raise ListenError(
            f"cannot listen on {address.text}: {_reason(exc)}", path=address.path or None
        ) from None
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(where)
        if address.is_unix:
            made = os.stat(address.path)
            _held.made.append((address.path, made.st_dev, made.st_ino))
        sock.listen(_backlog())
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"cannot listen on {address.text}: {_reason(exc)}", path=address.path or None
        ) from None
    return sock


def _clear_stale_socket_file(address: Address) -> None:
    """Remove a socket file no socket is bound to (left by a SIGKILL); refuse anything else.

    Looked up in ``/proc/net/unix``, not by connecting: a probe would be one
    more connection for the server that listens there to accept and serve.
    Without ``/proc``, the probe it is (refused: nothing listens).
    """
    try:
        mode = os.stat(address.path, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {address.text}: {_reason(exc)}", path=address.path or None
        ) from None
    if not stat.S_ISSOCK(mode):
        raise ListenError(
            f"cannot listen on {address.text}: the path exists and is not a socket",
            path=address.path or None,
        )
    bound = unix_path_bound(address.path)
    if bound is None:
        bound = _answers(address.path)
    if bound:
        raise ListenError(
            f"cannot listen on {address.text}: address already in use",
            path=address.path or None,
        )
    try:
        os.unlink(address.path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # another user's, in a sticky directory (/tmp)
        raise ListenError(
            f"cannot listen on {address.text}: a stale socket file is there and cannot be "
            f"removed ({_reason(exc)})",
            path=address.path or None,
        ) from None


def _answers(path: str) -> bool:
    """Whether a socket listens on the file ``path``: a connect probe, where /proc cannot say."""
    import socket  # noqa: PLC0415

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full backlog is EAGAIN, not a wait
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # busy, or not ours to reach: not ours to remove either
    finally:
        probe.close()
    return True


def remove_unused_files(entries: Sequence[str]) -> None:
    """Remove the Unix socket files of ``entries`` that no socket is bound to any more."""
    for entry in entries:
        address = parse_address(entry)
        if address.is_unix:
            try:
                _clear_stale_socket_file(address)
            except (ListenError, OSError):
                continue  # in use, or not a socket: not ours to remove


def _reason(exc: OSError) -> str:
    reasons = {
        errno.EADDRINUSE: "address already in use",
        errno.EACCES: "permission denied",
        errno.EADDRNOTAVAIL: "address not available on this machine",
        errno.ENOENT: "directory does not exist",
    }
    return reasons.get(exc.errno or 0, exc.strerror or str(exc))


def _backlog() -> int:
    """The system's somaxconn: the longest accept queue it allows (the kernel caps larger)."""
    return somaxconn() or _DEFAULT_BACKLOG


def _describe(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname())
    except OSError:
        return f"fd {sock.fileno()}"


def close_all(*, remove_files: bool) -> None:
    """Close this process's listening sockets; remove the Unix socket files we made."""
    for sock in [*_held.sockets, *([] if _held.health is None else [_held.health])]:
        sock.close()
    _held.sockets = []
    _held.health = None
    if remove_files:
        _remove_made()
    _held.made = []


def _remove_made() -> None:
    for path, dev, ino in _held.made:
        try:
            now = os.stat(path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (dev, ino):  # not one a later start made
                os.unlink(path)
        except OSError:
            pass
