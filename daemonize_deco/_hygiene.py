"""Process hygiene for a service: its name, core dumps, privileges, inherited descriptors.

Each step is a small function that raises :class:`DetachError` with the
reason, so a failure before ready reaches ``start``'s caller.
"""

from __future__ import annotations

import _thread
import os
import stat
import sys

from ._errors import DetachError
from ._proc import name_task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Any

    from ._platform_parent_death import Lifeline

__all__ = [
    "Credentials",
    "close_inherited_fds",
    "die_with_parent",
    "drop_privileges",
    "held_lifeline",
    "log_handlers",
    "prepare_to_be_died_with",
    "prevent_core_dumps",
    "remember_program_descriptors",
    "resolve_credentials",
    "set_process_name",
    "set_thread_name",
]

COMM_LENGTH = 15  # TASK_COMM_LEN less the terminating NUL


def set_process_name(name: str) -> None:
    """Set the kernel's name for this process (comm), as ``ps``, ``top`` and ``pgrep`` show.

    Written through /proc (``_proc.name_task``), without loading ctypes into
    every daemon; without /proc the process keeps its program's name.
    Longer names are cut to 15 bytes.  Call it from the main thread: its
    name is the process's.
    """
    _set_comm(os.getpid(), name)


def set_thread_name(name: str) -> None:
    """Set the kernel's name for the calling thread (``top -H``, ``ps -L``)."""
    _set_comm(_thread.get_native_id(), name)


def _set_comm(tid: int, name: str) -> None:
    # Cosmetic: a service without a name still runs.
    name_task(tid, name.encode("utf-8", "replace")[:COMM_LENGTH])


def prevent_core_dumps() -> None:
    """RLIMIT_CORE to 0: a core dump would spill the service's secrets to disk."""
    try:
        import resource  # noqa: PLC0415 -- only services that ask for it carry the module
    except (ImportError, OSError) as exc:  # an extension module: no descriptor left to load it
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise DetachError(f"cannot prevent core dumps: cannot load resource: {reason}") from exc
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        raise DetachError(f"cannot prevent core dumps: {exc}") from exc


class Credentials:
    """The user and groups a service drops to, resolved before forking."""

    def __init__(self, user: str | None, uid: int, gid: int, groups: list[int]) -> None:
        self.user = user
        self.uid = uid
        self.gid = gid
        self.groups = groups

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, uid={self.uid}, gid={self.gid})"


def resolve_credentials(user: str | int | None, group: str | int | None) -> Credentials | None:
    """Look up ``user``/``group``; None when neither is set.

    Raises DetachError when not running as root or when either does not exist.
    """
    if user is None and group is None:
        return None
    import grp  # noqa: PLC0415 -- only services that drop privileges pay for these
    import pwd  # noqa: PLC0415

    if os.geteuid() != 0:
        raise DetachError("user= and group= need root: start the service as root")
    try:
        entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user or 0)
    except KeyError:
        raise DetachError(f"no such user: {user}") from None
    uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if user is None:
        uid, name = 0, "root"
    if group is not None:
        try:
            gid = (grp.getgrnam(group) if isinstance(group, str) else grp.getgrgid(group)).gr_gid
        except KeyError:
            raise DetachError(f"no such group: {group}") from None
    groups = os.getgrouplist(name, gid) if user is not None else [gid]
    return Credentials(name, uid, gid, groups)


def prepare_to_be_died_with(*, dropping_privileges: bool) -> None:
    """In a parent whose children will :func:`die_with_parent`: before it forks them.

    Where the kernel may lack the signal, their lifeline is made (once).
    ``dropping_privileges``: what the children load to ask is loaded now,
    while every directory is readable (the interpreter may live in /root).
    """
    from ._platform_parent_death import Lifeline, kernel_may_lack_it  # noqa: PLC0415 -- a daemon's

    if dropping_privileges:
        import ctypes  # noqa: F401, PLC0415
    if _Lifeline.made is None and kernel_may_lack_it():
        try:
            _Lifeline.made = Lifeline()
        except OSError as exc:
            raise DetachError(f"cannot create the children's lifeline: {exc.strerror}") from exc
        _Lifeline.parent = os.getpid()


class _Lifeline:
    made: Lifeline | None = None
    parent = 0  # the process that made it


def held_lifeline() -> Lifeline | None:
    """The lifeline this process holds (:func:`die_with_parent`), for its dispatcher to watch."""
    made = _Lifeline.made
    return made if made is not None and made.held() else None


def die_with_parent(signum: int, parent: int) -> bool:
    """Have ``signum`` sent to this process when ``parent``, our parent now, exits.

    The kernel sends it where it can (``_platform_parent_death``), else the
    lifeline ``parent`` made before forking (:func:`prepare_to_be_died_with`).
    False when neither can: then this process outlives its parent.  When the
    parent has exited already (we were re-parented), ``signum`` is sent at
    once.  The kernel forgets the request in children, and when the
    process's user or group changes: :func:`drop_privileges` asks again.
    """
    from ._platform_parent_death import ask_kernel  # noqa: PLC0415 -- a daemon's

    lifeline = _Lifeline.made if _Lifeline.parent == parent else None
    if not ask_kernel(signum):
        if lifeline is None:
            return False
        lifeline.hold(signum)  # watched by the dispatcher, which starts soon
        return True
    if lifeline is not None:
        lifeline.let_go()
    _parent_death[:] = [signum, parent]
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signum)
    return True


_parent_death: list[int] = []  # the signal and the parent asked for, to ask again after setuid


def drop_privileges(credentials: Credentials) -> None:
    """setgroups, setgid, setuid, in that order; then check root cannot be regained."""
    from ._platform_identity import become  # noqa: PLC0415 -- a daemon's

    try:
        os.setgroups(credentials.groups)
        become(credentials.uid, credentials.gid)
    except OSError as exc:
        raise DetachError(f"cannot drop privileges to {credentials.user}: {exc.strerror}") from exc
    if _parent_death:
        # Changing the effective ids cleared the parent-death signal (prctl(2)).
        # (A lifeline holds through it: it is not asked again.)
        die_with_parent(*_parent_death)
    if credentials.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise DetachError("privileges were not dropped: setuid(0) still succeeds")


class _Program:
    """The descriptors the program held before a start opened any of its own."""

    own: frozenset[int] = frozenset()


def remember_program_descriptors() -> None:
    """Note the program's own descriptors, before a start opens any (see close_inherited_fds).

    Raises DetachError when they cannot be listed (no descriptor left: ``ulimit -n``).
    """
    from ._platform_descriptors import open_descriptors  # noqa: PLC0415 -- a daemon's

    try:
        listed = open_descriptors()
    except OSError as exc:
        raise DetachError(f"cannot list this process's descriptors: {exc.strerror}") from exc
    _Program.own = frozenset(fd for fd in listed if _is_own(fd))


def close_inherited_fds(keep: Collection[int]) -> None:
    """Let go of every descriptor above 2 the daemon got from its starter, but the program's own.

    Inheritable ones came from whoever launched us (a harness's pipe, a
    shell's redirection): closed.  Non-inheritable ones (PEP 446) the
    program opened itself before ``start`` (a file, a database, a root-only
    file opened before ``user=`` drops privileges) stay, as across any fork:
    the daemon writes on through them.  Only a listening socket among those
    is let go of (a host program's server, that it can listen again at
    once): /dev/null takes its place rather than closing it, because a
    Python object of the host still owns the number and may close it when
    collected, which would close whatever the daemon opened since under that
    number.  The start's own (noted after :func:`remember_program_descriptors`)
    are closed: their objects live on a stack the daemon never returns to.
    ``keep``: the daemon's (pidfile, listen= sockets, ``files_preserve``).
    """
    from ._platform_descriptors import open_descriptors  # noqa: PLC0415 -- a daemon's

    keep = {*keep, *_logging_descriptors()}
    null = -1
    try:
        for fd in open_descriptors():
            if fd <= 2 or fd in keep or fd == null:
                continue
            try:
                if os.get_inheritable(fd) or fd not in _Program.own:
                    os.close(fd)
                elif _is_listening(fd):
                    if null < 0:
                        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    os.dup2(null, fd, inheritable=False)
            except OSError:
                continue  # the listing's own descriptor, closed by now
    finally:
        if null >= 0:
            os.close(null)


def _is_own(fd: int) -> bool:
    try:
        return not os.get_inheritable(fd)
    except OSError:
        return False  # the listing's own descriptor, closed by now


def _is_listening(fd: int) -> bool:
    """Whether ``fd`` is a socket that accepts connections (``SO_ACCEPTCONN``)."""
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        return False
    # The C module (socket.py would import enum), loaded only where a socket is found.
    import _socket  # noqa: PLC0415

    sock = _socket.socket(fileno=fd)
    try:
        return bool(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN))
    finally:
        sock.detach()  # the number stays open: it was only looked at


def log_handlers() -> list[Any]:
    """The program's logging handlers, a MemoryHandler's target too; [] without logging."""
    logging = sys.modules.get("logging")
    if logging is None:
        return []  # nothing logs: not worth importing it to find out
    handlers = [
        handler
        for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values())
        for handler in getattr(logger, "handlers", ())  # placeholders have none
    ]
    return handlers + [h.target for h in handlers if getattr(h, "target", None) is not None]


def _logging_descriptors() -> set[int]:
    """Descriptors of the program's logging handlers (files, sockets)."""
    found = set()
    for handler in log_handlers():
        for attribute in ("stream", "socket", "sock"):
            holder = getattr(handler, attribute, None)
            try:
                found.add(int(holder.fileno()))  # type: ignore[union-attr]
            except (AttributeError, OSError, ValueError, TypeError):
                continue
    return found
