"""The exceptions daemonize_deco raises.

Every error derives from :class:`DaemonError`.  Each class carries the exit
status the command line gives it; ``_cli`` turns an error into one line on
stderr and that status, in one place (and puts the status on the error as
``status``, for a program that calls ``main.cli(argv, standalone=False)``).
An error carries what its message names: the file (``path``: the pidfile,
a log, a socket) and the process (``pid``).  Errors about files also derive
from :class:`OSError`, so callers may catch either.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "AlreadyRunningError",
    "DaemonError",
    "DetachError",
    "ListenError",
    "ManagedError",
    "NoLogError",
    "NotRunningError",
    "PidFileError",
    "ReloadError",
    "StartupError",
    "StopError",
    "UsageError",
    "describe",
    "exit_status",
    "last_words",
]


class DaemonError(Exception):
    """Base class of every error raised by daemonize_deco.

    ``exit_status`` is the LSB exit status a command ends with on this error;
    ``status``, once a command raised it, the status that command ends with
    (``status`` makes every error 4, "unknown"), else None.  ``path`` is the
    file the message names (pidfile, log, socket) and ``pid`` the process,
    where it names one; else None.
    """

    exit_status: int = 1

    def __init__(self, *args: object, path: str | None = None, pid: int | None = None) -> None:
        super().__init__(*args)  # any arguments, as an Exception takes: a user's subclass may
        self.path = path
        self.pid = pid
        self.status: int | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # The keyword-only fields come back through the instance's __dict__.
        return (type(self), self.args, self.__dict__)

    def __str__(self) -> str:
        # OSError subclasses would otherwise format as "[Errno ...]" tuples.
        return str(self.args[0]) if self.args else self.__class__.__name__

    def line_for(self, name: str) -> str:
        """The line a command prints for this error in service ``name``."""
        return f"{name}: {self}"


class UsageError(DaemonError):
    """The command line is wrong: unknown command or option, a bad value.

    ``usage`` is the usage of the command concerned, when there is one.
    """

    exit_status = 2

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class PidFileError(DaemonError, OSError):
    """The pidfile cannot be used: missing directory, symlink, not a regular file."""


class DetachError(DaemonError, OSError):
    """A step of detaching failed: working directory, log file, standard streams."""


class StartupError(DaemonError):
    """The daemon failed, died or timed out before it was ready."""


class ListenError(DaemonError, OSError):
    """A ``listen=`` address cannot be listened on: in use, not allowed, not a socket."""


class StopError(DaemonError, OSError):
    """The daemon could not be signalled or did not die even after SIGKILL."""


class AlreadyRunningError(DaemonError):
    """``run`` found another process holding the pidfile."""


class ManagedError(DaemonError):
    """``restart`` of a service a process manager runs in the foreground: the manager's to do."""


class NotRunningError(DaemonError):
    """``reload`` found no running service (LSB status 7, "program is not running")."""

    exit_status = 7

    def line_for(self, name: str) -> str:
        """``NAME is not running``, as every other command says it."""
        return f"{name} {self}"


class NoLogError(DaemonError):
    """``logs`` for a service that has no log file."""

    def line_for(self, name: str) -> str:
        """``NAME has no log file: ...``."""
        return f"{name} {self}"


class ReloadError(DaemonError):
    """A reload callback raised, or the daemon did not answer."""


def describe(exc: BaseException) -> str:
    """One line for an exception: our own errors by message, others as ``Type: text``."""
    if isinstance(exc, DaemonError):
        text = str(exc)
    else:
        detail = str(exc)
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return " ".join(text.split())


def exit_status(code: object) -> int:
    """The exit status for a ``sys.exit`` argument or ``main``'s return value."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    last_words(lambda: print(code, file=sys.stderr))  # as the interpreter does for sys.exit("x")
    return 1


def last_words(write: Callable[[], object]) -> None:
    """Write to stderr (the log) when it can take it.

    With a full disk the write itself fails; the exit status and the removed
    pidfile still tell what happened, so the failure must not skip them.
    """
    try:
        write()
    except (OSError, ValueError):
        pass
