"""The supervisor's phases, the changes allowed between them, and the record ``status`` reads.

A supervisor (``_supervisor``) is always in one phase; its deadline, what it
does when that comes, and what ``status`` says follow from it.  It changes
phase in one place, which checks the change against ``_NEXT``: a change not
listed there is a bug, and raises ``PhaseError``.

    STARTING -> RUNNING, STOPPING, DONE
    RUNNING -> ENDING_HUNG, STOPPING, BACKING_OFF, GAVE_UP, DONE
    RESTARTING -> RUNNING, ENDING_HUNG, STOPPING, BACKING_OFF, GAVE_UP, DONE
    ENDING_HUNG -> STOPPING, BACKING_OFF, GAVE_UP
    BACKING_OFF -> RESTARTING, DONE
    STOPPING -> DONE

An arbiter (``workers=N``, ``_workers``) goes through fewer: its workers
each restart on their own, so it is STARTING until all N are ready, then
RUNNING until a stop (or until its last worker ended for good), STOPPING
while they end, and DONE, or GAVE_UP when one worker's restarts ran out
(``ARBITER_PHASES``).  Each worker's own state is a word of
:class:`WorkerState`.

The phases are the words ``PIDFILE.supervisor`` holds, named by a class of
constants, not an ``enum.Enum``: the supervisor would import enum for them
(milliseconds, as signal.py would).  This module is read by ``status``, in
the user's command: it imports nothing of the supervisor's.
"""

from __future__ import annotations

from . import _beside

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from typing import Final

__all__ = [
    "ARBITER_PHASES",
    "STATE_SUFFIX",
    "SUPERVISOR_PHASES",
    "Phase",
    "PhaseError",
    "SupervisorState",
    "WorkerState",
    "check",
]

STATE_SUFFIX = ".supervisor"


class Phase:
    """The supervisor's phases."""

    STARTING: Final = "starting"  # the first run, until ready: ``start`` waits for it
    RUNNING: Final = "running"  # the run is ready; the watchdog, if any, watches it
    RESTARTING: Final = "restarting"  # a restarted run, until ready: start_timeout bounds it
    # A run that hung, or was never ready, being ended: SIGABRT or SIGTERM, then SIGKILL.
    ENDING_HUNG: Final = "ending-hung"
    BACKING_OFF: Final = "backing-off"  # no run: the restart delay passes
    STOPPING: Final = "stopping"  # asked to stop: the run ends, stop_timeout bounds it
    GAVE_UP: Final = "gave-up"  # too many failures within the window: the supervisor ends
    DONE: Final = "done"  # stopped, the first run failed, or it ended cleanly (on-failure)


_NEXT: dict[str, frozenset[str]] = {
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.STOPPING, Phase.DONE}),
    Phase.RUNNING: frozenset(
        {Phase.ENDING_HUNG, Phase.STOPPING, Phase.BACKING_OFF, Phase.GAVE_UP, Phase.DONE}
    ),
    Phase.RESTARTING: frozenset(
        {
            Phase.RUNNING,
            Phase.ENDING_HUNG,
            Phase.STOPPING,
            Phase.BACKING_OFF,
            Phase.GAVE_UP,
            Phase.DONE,
        }
    ),
    Phase.ENDING_HUNG: frozenset({Phase.STOPPING, Phase.BACKING_OFF, Phase.GAVE_UP}),
    Phase.BACKING_OFF: frozenset({Phase.RESTARTING, Phase.DONE}),
    Phase.STOPPING: frozenset({Phase.DONE}),
    Phase.GAVE_UP: frozenset(),
    Phase.DONE: frozenset(),
}


SUPERVISOR_PHASES: Mapping[str, frozenset[str]] = _NEXT

ARBITER_PHASES: Mapping[str, frozenset[str]] = {
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.STOPPING, Phase.DONE}),
    Phase.RUNNING: frozenset({Phase.STOPPING, Phase.GAVE_UP, Phase.DONE}),
    Phase.STOPPING: frozenset({Phase.DONE, Phase.GAVE_UP}),
    Phase.GAVE_UP: frozenset(),
    Phase.DONE: frozenset(),
}


class PhaseError(RuntimeError):
    """A change of phase the supervisor must never make: a bug, not a fault to handle."""


def check(current: str, new: str, table: Mapping[str, frozenset[str]] = _NEXT) -> str:
    """``new``, when ``table`` (a supervisor's by default) allows it after ``current``.

    Else raise PhaseError.
    """
    if new not in table.get(current, ()):
        raise PhaseError(f"the supervisor cannot go from phase {current!r} to {new!r}")
    return new


class SupervisorState:
    """What ``status`` reads beside the pidfile: ``key=value`` lines."""

    __slots__ = (
        "failure",
        "phase",
        "restart_at",
        "restarts",
        "service",
        "service_started",
        "supervisor",
        "workers",
    )

    def __init__(self, supervisor: int) -> None:
        self.supervisor = supervisor
        self.phase: str = Phase.STARTING
        self.service: int | None = None
        self.service_started: float | None = None
        self.restarts = 0
        self.failure: str | None = None  # how the last run ended, when it failed
        self.restart_at: float | None = None  # wall clock, while waiting to restart
        self.workers: list[WorkerState] = []  # an arbiter's (``workers=N``), by worker_id

    def to_json(self) -> dict[str, object]:
        """The ``supervision`` object of ``status --json`` (and of the endpoint's ``/status``)."""
        return {
            "supervisor_pid": self.supervisor,
            "phase": self.phase,
            "service_pid": self.service,
            "service_started": self.service_started,
            "restarts": self.restarts,
            "last_failure": self.failure,
            "restart_at": self.restart_at,
        }

    def to_text(self) -> str:
        """The file's content."""
        fields = [(key, getattr(self, key)) for key in self.__slots__ if key != "workers"]
        fields += [(f"worker{w.worker_id}", w.to_field()) for w in self.workers]
        return _beside.fields_to_text(fields)

    @classmethod
    def read(cls, pidfile: str, owners: Collection[int]) -> SupervisorState | None:
        """The state beside ``pidfile``; None when there is none, or not one of ``owners``."""
        data = _beside.read(pidfile + STATE_SUFFIX, 65536, owners)
        if data is None:
            return None
        fields = _beside.fields_from_text(data.decode("utf-8", "replace"))
        try:
            state = cls(int(fields["supervisor"]))
            state.restarts = int(fields.get("restarts", "0"))
            if "service" in fields:
                state.service = int(fields["service"])
            if "service_started" in fields:
                state.service_started = float(fields["service_started"])
            if "restart_at" in fields:
                state.restart_at = float(fields["restart_at"])
        except (KeyError, ValueError):
            return None
        state.failure = fields.get("failure")
        state.workers = WorkerState.all_from(fields)
        state.phase = fields.get("phase", "")
        if state.phase not in _NEXT:
            # A supervisor older than the phases, still running after an upgrade:
            # its file says only whether a service runs, or when it restarts.
            state.phase = Phase.BACKING_OFF if state.service is None else Phase.RUNNING
        return state


class WorkerState:
    """One worker of an arbiter, as ``status`` shows it: one ``workerN=...`` line."""

    __slots__ = ("last_exit", "phase", "pid", "restart_at", "restarts", "started", "worker_id")

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self.phase: str = Phase.STARTING  # a Phase word, or "ended" (not replaced)
        self.pid: int | None = None
        self.started: float | None = None  # wall clock
        self.restarts = 0
        self.restart_at: float | None = None  # wall clock, while waiting to be replaced
        self.last_exit: str | None = None  # how its last run ended

    def to_field(self) -> str:
        """The value of its line: pid, started, restarts, restart_at, phase, then the last exit."""
        words = (self.pid, self.started, self.restarts, self.restart_at, self.phase)
        fixed = " ".join("-" if word is None else str(word) for word in words)
        return fixed if self.last_exit is None else f"{fixed} {self.last_exit}"

    @classmethod
    def all_from(cls, fields: Mapping[str, str]) -> list[WorkerState]:
        """The workers in ``fields``, by worker_id (those that do not parse left out)."""
        found = []
        for key, value in fields.items():
            number = key.removeprefix("worker")
            if key.startswith("worker") and number.isdigit():
                worker = cls._parsed(int(number), value)
                if worker is not None:
                    found.append(worker)
        return sorted(found, key=lambda w: w.worker_id)

    @classmethod
    def _parsed(cls, worker_id: int, value: str) -> WorkerState | None:
        words = value.split(maxsplit=5)
        if len(words) < 5:
            return None
        pid, started, restarts, restart_at, phase = words[:5]
        worker = cls(worker_id)
        try:
            worker.pid = None if pid == "-" else int(pid)
            worker.started = None if started == "-" else float(started)
            worker.restarts = int(restarts)
            worker.restart_at = None if restart_at == "-" else float(restart_at)
        except ValueError:
            return None
        worker.phase = phase
        worker.last_exit = words[5] if len(words) > 5 else None
        return worker
