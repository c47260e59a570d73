"""Linux made to look like macOS or FreeBSD, for the simulated-platform runs.

Loaded by every Python process a test starts when ``DAEMONIZE_DECO_SIMULATE``
names a platform (``darwin`` or ``freebsd14``; conftest's
``--simulate-platform`` sets it and puts this directory on ``PYTHONPATH``).
It takes away what that platform lacks, before any module is imported:

- both: pidfds, memfds, ``SO_PEERCRED``, ``epoll``, abstract Unix sockets
  (in ``socket`` and in the ``_socket`` the library uses directly),
  ``prctl``, and ``/proc`` as the library sees it (opening, listing or
  following anything under ``/proc`` from a ``daemonize_deco`` module fails
  with ENOENT, as it does where no procfs is mounted);
- macOS also: ``SOCK_CLOEXEC``, ``SOCK_NONBLOCK``, ``MSG_CMSG_CLOEXEC``,
  ``setresuid``/``setresgid``, ``sched_getaffinity``;
- ``sys.platform`` says ``darwin`` or ``freebsd14``.

psutil (``daemonize_deco[status]``), which picks its backend by
``sys.platform``, is imported as on Linux: it runs on this kernel, as on
macOS and FreeBSD it runs on theirs.

``sockets`` takes away only abstract Unix sockets and ``SO_PEERCRED``, on
Linux otherwise whole: tests of the socket files (``_platform_sockets``)
set it for the services they start, in any run.

The tests themselves still look from outside through the real ``/proc``:
only the library is handicapped.
"""

from __future__ import annotations

import _signal
import _socket
import builtins
import errno
import os
import select
import signal
import socket
import sys
from typing import Any

PLATFORM = os.environ.get("DAEMONIZE_DECO_SIMULATE", "")
REAL_PLATFORM = sys.platform
# Third-party libraries with a backend per platform: loaded for the real one.
_NATIVE = frozenset({"psutil", "urllib.request"})

_BOTH = {
    os: ("pidfd_open", "memfd_create", "MFD_CLOEXEC", "MFD_ALLOW_SEALING"),
    signal: ("pidfd_send_signal",),
    socket: ("SO_PEERCRED", "SO_PASSCRED", "SCM_CREDENTIALS"),
    select: ("epoll",),
}
_MACOS = {
    os: ("setresuid", "setresgid", "getresuid", "getresgid", "sched_getaffinity"),
    socket: ("SOCK_CLOEXEC", "SOCK_NONBLOCK", "MSG_CMSG_CLOEXEC"),
}


def _remove(names: dict[Any, tuple[str, ...]]) -> None:
    for module, attributes in names.items():
        for name in attributes:
            if hasattr(module, name):
                delattr(module, name)


def _is_proc(path: Any) -> bool:
    if isinstance(path, int):
        return False
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return False
    return text == "/proc" or text.startswith("/proc/")


def _from_library(depth: int = 2) -> bool:
    """Whether the caller's caller is a module of the library."""
    name = sys._getframe(depth).f_globals.get("__name__", "")
    return name == "daemonize_deco" or name.startswith("daemonize_deco.")


def _hide_proc(function: Any) -> Any:
    def hidden(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
        if _is_proc(path) and _from_library():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory (simulated)", path)
        return function(path, *args, **kwargs)

    hidden.__name__ = function.__name__
    hidden.__doc__ = function.__doc__
    return hidden


def _refuse_abstract(function: Any, error: int) -> Any:
    def refused(self: socket.socket, address: Any, *args: Any, **kwargs: Any) -> Any:
        if (
            self.family == socket.AF_UNIX
            and isinstance(address, (str, bytes))
            and address[:1] in ("\0", b"\0")
        ):
            raise OSError(error, os.strerror(error) + " (simulated: no abstract sockets)")
        return function(self, address, *args, **kwargs)

    refused.__name__ = function.__name__
    return refused


def _hide_prctl() -> None:
    import ctypes  # noqa: PLC0415 -- only simulated runs pay for it

    lookup = ctypes.CDLL.__getattr__
    item = ctypes.CDLL.__getitem__

    def getattr_(self: Any, name: str) -> Any:
        if name in ("prctl", "procctl"):
            raise AttributeError(f"{name}: undefined symbol (simulated)")
        return lookup(self, name)

    def getitem(self: Any, name: Any) -> Any:
        if name in ("prctl", "procctl"):
            raise AttributeError(f"{name}: undefined symbol (simulated)")
        return item(self, name)

    ctypes.CDLL.__getattr__ = getattr_  # type: ignore[method-assign]
    ctypes.CDLL.__getitem__ = getitem  # type: ignore[method-assign]


class _NativeBackends:
    """A meta path finder: the modules of ``_NATIVE`` run their top level on the real platform."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _NATIVE:
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _NativeBackends) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module = _natively(spec.loader.exec_module)
                return spec
        return None


def _natively(execute: Any) -> Any:
    def exec_module(module: Any) -> None:
        simulated, sys.platform = sys.platform, REAL_PLATFORM
        try:
            execute(module)
        finally:
            sys.platform = simulated

    return exec_module


def _through_socket_py(names: dict[Any, tuple[str, ...]]) -> dict[Any, tuple[str, ...]]:
    """The same names taken from ``_socket`` too: the library uses the C module directly."""
    return {_socket: names[socket]} if socket in names else {}


def _through_signal_py(names: dict[Any, tuple[str, ...]]) -> dict[Any, tuple[str, ...]]:
    """The same names taken from ``_signal`` too: the library probes the C module."""
    return {_signal: names[signal]} if signal in names else {}


def _refusing_c_socket() -> type:
    """A subclass of the C socket type that refuses abstract names (the type cannot be patched).

    socket.py calls ``_socket.socket.__init__`` at run time: the subclass keeps it.
    """

    class Socket(_socket.socket):  # type: ignore[misc]
        __slots__ = ()
        bind = _refuse_abstract(_socket.socket.bind, errno.EINVAL)
        connect = _refuse_abstract(_socket.socket.connect, errno.ENOENT)
        connect_ex = _refuse_abstract(_socket.socket.connect_ex, errno.ENOENT)

    Socket.__name__ = Socket.__qualname__ = "socket"
    return Socket


def _no_abstract_sockets() -> None:
    """Refuse abstract names, in sockets made through socket.py and through _socket."""
    socket.socket.bind = _refuse_abstract(socket.socket.bind, errno.EINVAL)  # type: ignore[method-assign]
    socket.socket.connect = _refuse_abstract(socket.socket.connect, errno.ENOENT)  # type: ignore[method-assign]
    socket.socket.connect_ex = _refuse_abstract(socket.socket.connect_ex, errno.ENOENT)  # type: ignore[method-assign]
    _socket.socket = _refusing_c_socket()  # type: ignore[misc]


def simulate_sockets() -> None:
    """Take away only abstract Unix sockets and peer credentials."""
    peercred = {socket: _BOTH[socket]}
    _remove(peercred)
    _remove(_through_socket_py(peercred))
    _no_abstract_sockets()


def simulate(platform: str) -> None:
    """Take away what ``platform`` lacks."""
    _remove(_BOTH)
    _remove(_through_socket_py(_BOTH))
    _remove(_through_signal_py(_BOTH))
    import selectors  # noqa: PLC0415 -- socket imported it, and chose epoll

    selectors.DefaultSelector = selectors.PollSelector  # type: ignore[misc]
    if platform == "darwin":
        _remove(_MACOS)
        _remove(_through_socket_py(_MACOS))
    builtins.open = _hide_proc(builtins.open)
    for name in ("open", "listdir", "scandir", "readlink", "stat", "lstat", "access"):
        setattr(os, name, _hide_proc(getattr(os, name)))
    _no_abstract_sockets()
    _hide_prctl()
    sys.meta_path.insert(0, _NativeBackends())  # type: ignore[arg-type]
    sys.platform = platform


if PLATFORM in ("darwin", "freebsd14"):
    simulate(PLATFORM)
elif PLATFORM == "sockets":
    simulate_sockets()
