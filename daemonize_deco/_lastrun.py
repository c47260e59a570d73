"""The last run's record: how the service ended, kept beside its pidfile for ``status``.

When the service ends in any way it can see (main returned, raised, called
``sys.exit``, or stopped on a signal it handled) it writes ``PIDFILE.last-run``
(``app.pid`` → ``app.pid.last-run``): a few ``key=value`` lines, so reading it
needs no import.  A service that starts removes the previous one, so a record
always describes the run after the latest start, and a run that left no record
(SIGKILL, a power cut) is told apart from one that did.

The file is written whole or not at all (``_beside``); a service that cannot
write there (a full disk, a directory its user may not write) still exits as
it would have, without a record.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import time

from . import _beside

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = [
    "SUFFIX",
    "LastRun",
    "clock",
    "forget",
    "format_duration",
    "read",
    "record_path",
    "write",
    "write_end",
]

SUFFIX = ".last-run"
_FIELDS = ("pid", "status", "exception", "signal", "killed", "failed", "started", "ended")
_LIMIT = 4096  # the record is a few lines; anything longer is not ours


def format_duration(seconds: float) -> str:
    """``3s``, ``5m 3s``, ``2h 5m``, ``3d 2h``."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def clock(epoch: float) -> str:
    """``12:03:04`` today, ``2026-11-21 12:03:04`` on another day (local time)."""
    moment = time.localtime(epoch)
    same_day = time.localtime()[:3] == moment[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", moment)


class LastRun:
    """How one run of the service ended.

    ``exception`` is ``Type: message`` when main raised; ``signal`` names the
    stop signal the service handled (``SIGTERM``); ``killed`` says who ended
    it with SIGKILL when ``stop`` had to; ``failed`` why a supervisor gave up
    restarting it.
    """

    __slots__ = _FIELDS

    def __init__(
        self,
        pid: int,
        *,
        status: int | None,
        started: float,
        ended: float,
        exception: str | None = None,
        signal: str | None = None,
        killed: str | None = None,
        failed: str | None = None,
    ) -> None:
        self.pid = pid
        self.status = status
        self.started = started
        self.ended = ended
        self.exception = exception
        self.signal = signal
        self.killed = killed
        self.failed = failed

    def describe(self) -> str:
        """``pid 123 exited with status 2 at 12:03:04 after 3s`` and the like."""
        if self.failed:
            how = f"gave up restarting the service: {self.failed}"
        elif self.killed:
            how = f"was killed ({self.killed})"
        elif self.exception:
            how = f"raised {self.exception}"
        else:
            how = f"exited with status {self.status}"
        if self.signal and not self.killed:
            how = f"stopped by {self.signal} and {how}"
        lasted = format_duration(max(0.0, self.ended - self.started))
        return f"pid {self.pid} {how} at {clock(self.ended)} after {lasted}"

    def to_text(self) -> str:
        """The file's content: one ``key=value`` line per known field."""
        return _beside.fields_to_text((key, getattr(self, key)) for key in _FIELDS)

    @classmethod
    def from_text(cls, text: str) -> LastRun | None:
        """Parse a record; None for anything that is not one."""
        fields = _beside.fields_from_text(text)
        try:
            status = fields.get("status")
            return cls(
                int(fields["pid"]),
                status=None if status is None else int(status),
                started=float(fields["started"]),
                ended=float(fields["ended"]),
                exception=fields.get("exception"),
                signal=fields.get("signal"),
                killed=fields.get("killed"),
                failed=fields.get("failed"),
            )
        except (KeyError, ValueError):
            return None


def record_path(pidfile: str) -> str:
    """Where the record of the service with ``pidfile`` lives."""
    return pidfile + SUFFIX


def write(pidfile: str, run: LastRun) -> bool:
    """Write the record atomically; False when it could not be written."""
    return _beside.write(record_path(pidfile), run.to_text().encode("utf-8", "backslashreplace"))


def write_end(
    pidfile: str,
    pid: int,
    *,
    status: int,
    started: float,
    exception: str | None,
    stop_signal: int | None,
    failed: str | None = None,
) -> LastRun:
    """Write the record of a run ending now; ``stop_signal`` is the stop it handled, if any."""
    # Only SIGTERM and SIGINT stop a service; naming them needs no enum import at exit.
    names: dict[int, str] = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
    run = LastRun(
        pid,
        status=status,
        started=started,
        ended=time.time(),
        exception=exception,
        signal=None if stop_signal is None else names.get(stop_signal, str(stop_signal)),
        failed=failed,
    )
    write(pidfile, run)
    return run


def read(pidfile: str, owners: Collection[int]) -> LastRun | None:
    """The record beside ``pidfile``; None when there is none (or not one of ``owners``)."""
    data = _beside.read(record_path(pidfile), _LIMIT, owners)
    return None if data is None else LastRun.from_text(data.decode("utf-8", "replace"))


def forget(pidfile: str) -> None:
    """Remove the previous run's record, if any (a new run is starting)."""
    _beside.remove(record_path(pidfile))
