"""The exceptions daemonize_deco raises.

Every error derives from :class:`DaemonError`.  Each class carries the exit
status the command line gives it; ``_cli`` turns an error into one line on
stderr and that status, in one place.  Errors about files also derive from
:class:`OSError`, so callers may catch either.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunningError",
    "DaemonError",
    "DetachError",
    "NotRunningError",
    "PidFileError",
    "ReloadError",
    "StartupError",
    "StopError",
    "UsageError",
    "describe",
]


class DaemonError(Exception):
    """Base class of every error raised by daemonize_deco.

    ``exit_status`` is the LSB exit status a command ends with on this error.
    """

    exit_status: int = 1

    def __str__(self) -> str:
        # OSError subclasses would otherwise format as "[Errno ...]" tuples.
        return str(self.args[0]) if self.args else self.__class__.__name__


class UsageError(DaemonError):
    """The command line is wrong: unknown command, extra argument, empty word."""

    exit_status = 2


class PidFileError(DaemonError, OSError):
    """The pidfile cannot be used: missing directory, symlink, not a regular file."""


class DetachError(DaemonError, OSError):
    """A step of detaching failed: working directory, log file, standard streams."""


class StartupError(DaemonError):
    """The daemon failed, died or timed out before it was ready."""


class StopError(DaemonError, OSError):
    """The daemon could not be signalled or did not die even after SIGKILL."""


class AlreadyRunningError(DaemonError):
    """``run`` found another process holding the pidfile."""


class NotRunningError(DaemonError):
    """``reload`` found no running service (LSB status 7, "program is not running")."""

    exit_status = 7


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
