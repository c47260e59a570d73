"""The mark a run puts on what it starts, for ``_descendants`` to find it by.

Two marks, for two ways a process comes to be: an environment variable,
which the programs a descendant execs inherit, and a memfd, which the
processes it forks inherit (a forked child's ``/proc/PID/environ`` still
shows the environment its program was started with, not the variable set
since; a memfd shows in ``/proc/PID/fd`` as ``/memfd:NAME``).  The value is
derived from the boot, the pidfile's real path and the pid of the process
holding it: a command that finds a stale pidfile knows what to look for.
Worn by every service; looking for what carries it loads ``_descendants``.

Without memfds (macOS, FreeBSD) the badges are not worn
(``_platform_identity``): the variable is the mark, and the badges' other
words go unsaid (a command, a daemon leading its group).  Nothing is lost
there that could be read: without /proc, no process's descriptors or
environment can be looked at, and ``_descendants`` looks for nothing.
Without /proc the boot is unknown too, and the mark is derived from the
rest.
"""

from __future__ import annotations

import os

from ._errors import DetachError
from ._proc import boot_id

__all__ = [
    "BADGE",
    "COMMAND_BADGE",
    "VARIABLE",
    "drop_command_badge",
    "mark_for",
    "wear",
    "wear_command_badge",
    "worn",
]

VARIABLE = "DAEMONIZE_DECO_RUN"
BADGE = "daemonize_deco-run-"
# Worn by a command (stop, restart...) that a service's main may run on itself:
# it carries the run's mark, but it is not the run's to end.
COMMAND_BADGE = "daemonize_deco-command"


def mark_for(pidfile: str, holder: int) -> str:
    """The mark of the run whose pidfile (at ``pidfile``) names ``holder``."""
    from ._platform_sockets import fnv1a  # noqa: PLC0415 -- a run's, not every command's

    directory, name = os.path.split(pidfile)
    real = os.path.join(os.path.realpath(directory), name)
    return f"{fnv1a(f'{boot_id()}:{holder}:{real}'.encode('utf-8', 'surrogateescape')):016x}"


class _Worn:
    mark: str | None = None
    fd: int | None = None


def wear(mark: str) -> None:
    """Mark this process and everything it will start as this run's.

    Raises DetachError when it has no descriptor left for the mark.
    """
    os.environ[VARIABLE] = mark
    if _Worn.fd is not None:
        os.close(_Worn.fd)
        _Worn.fd = None
    from ._platform_identity import wear_badge  # noqa: PLC0415 -- a run's, not a command's

    try:
        # Close-on-exec: a program exec'd is found by the variable; a fork keeps the memfd.
        _Worn.fd = wear_badge(f"{BADGE}{mark}")
    except OSError as exc:
        raise DetachError(f"cannot mark the processes of the run: {exc.strerror}") from exc
    _Worn.mark = mark


def worn() -> str | None:
    """The mark this process wears, if any."""
    return _Worn.mark


class _Command:
    fd: int | None = None
    fork_hook = False


def wear_command_badge() -> None:
    """Say, in ``/proc/PID/fd``, that this process runs a command, not a service.

    A ``restart`` that main runs on its own service must not be ended with
    that service's run.  The badge is closed in every child (the daemon a
    start forks is a service); it is best effort: without a descriptor to
    spare, or without memfds, the command goes unmarked.
    """
    if _Command.fd is not None:
        return
    from ._platform_identity import wear_badge  # noqa: PLC0415 -- only when one is worn

    try:
        _Command.fd = wear_badge(COMMAND_BADGE)
    except OSError:
        return
    if _Command.fd is None:
        return
    if not _Command.fork_hook:
        os.register_at_fork(after_in_child=drop_command_badge)
        _Command.fork_hook = True


def drop_command_badge() -> None:
    """This process is (or runs) a service from now on: not a command."""
    if _Command.fd is not None:
        os.close(_Command.fd)
        _Command.fd = None
