"""What ``status`` reports: a few lines for people, or one JSON object (``--json``).

For a running service: pid, uptime, the options it was started with, and
what it uses (``_platform_resources``: /proc on Linux, else psutil when it
is installed, else "unknown"): resident memory, CPU % since it started,
threads, open descriptors, child processes, listening sockets.
For one that is not running: how its last run ended (``_lastrun``).  The
exit status is LSB's either way: 0 running, 1 dead with its pidfile left,
3 not running.
"""

from __future__ import annotations

import time

from . import _draining, _lastrun
from ._descendants import describe, left_by
from ._phases import Phase, SupervisorState
from ._platform_resources import PROC, Resources, resources, uptime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

    from ._looking import PidFileState
    from ._phases import WorkerState
    from ._pidfile import PidFile

__all__ = ["StatusReport"]

_MIB = 1024 * 1024


class StatusReport:
    """Everything status says about one service, gathered once."""

    def __init__(
        self,
        name: str,
        pidfile: PidFile,
        state: PidFileState,
        note: str = "",
        *,
        option_owners: Collection[int] = (),
        drain: float = 0.0,
    ) -> None:
        self.name = name
        self.pidfile = pidfile.path
        self.state = state
        self.note = note
        owners = pidfile.owners
        pid = state.pid if state.running else None
        self.uptime = uptime(pid) if pid is not None else None
        # Shown as what a restart would reuse: only a file it would read.
        self.options = _remembered(self.pidfile, option_owners) if state.running else None
        self.supervision = _supervision(self.pidfile, owners, pid)
        # Supervised, what counts is the service's use, not the supervisor's; with
        # workers, each worker's is shown on its line, and the arbiter's here.
        supervision = self.supervision
        watched = pid if supervision is None or supervision.workers else supervision.service
        self.resources = resources(watched) if watched is not None else Resources()
        self.workers = [] if supervision is None else supervision.workers
        self.worker_resources = {
            worker.worker_id: resources(worker.pid) for worker in self.workers if worker.pid
        }
        # drain=: seconds until main hears of the stop under way, or None; with
        # workers, each drains: the record names the last to begin.
        drainers = [worker.pid for worker in self.workers] if self.workers else [watched]
        self.draining = _drain_left(self.pidfile, owners, drainers, drain)
        self.last = None if state.running else _lastrun.read(self.pidfile, owners)
        self.leftovers: list[int] | None = []
        if self.left_behind:
            self.leftovers = _left_by(self.pidfile, state)
        if state.last_words:  # the service could not remove its pidfile: its record is in it
            self.last = _lastrun.LastRun.from_text(state.last_words.decode("utf-8", "replace"))

    @property
    def failed(self) -> str | None:
        """Why the supervisor gave up restarting the service, when it did."""
        last = self.last
        if self.state.running or last is None or last.pid != self.state.pid:
            return None
        return last.failed

    @property
    def left_behind(self) -> bool:
        """The service's own pidfile is there, though nothing runs (it died, or gave up)."""
        state = self.state
        return state.exists and not state.running and not state.last_words and not self.foreign

    @property
    def foreign(self) -> bool:
        """The file at the pidfile's path is another user's: it says nothing of the service."""
        return self.state.foreign_owner is not None

    @property
    def exit_status(self) -> int:
        """0 running, 1 dead but its pidfile left behind (or given up on), 3 not running."""
        if self.state.running:
            return 0
        return 1 if self.left_behind else 3

    def text(self) -> str:
        """The sentence, and for a running service the lines of detail below it."""
        if self.state.running:
            return "\n".join([self._running_line(), *self._details()])
        if self.failed is not None and self.last is not None:
            return (
                f"{self.name} failed: {self.failed} "
                f"(supervisor pid {self.last.pid} gave up at {_lastrun.clock(self.last.ended)})"
            )
        if self.left_behind:
            pid = self.state.pid
            stale = f" (pid {pid})" if pid is not None else ""
            if self.last is not None and self.last.pid == pid:
                how = f"last run: {self.last.describe()}"
            else:
                how = "it died without cleaning up (killed?)"
            if self.leftovers:
                how += f"; {describe(self.leftovers)} it started still run: stop ends them"
            return (
                f"{self.name} is not running, but its pidfile {self.pidfile} is left behind"
                f"{stale}: {how}"
            )
        notes = [] if self.last is None else [f"last run: {self.last.describe()}"]
        if self.state.foreign_owner is not None:
            notes.append(f"what is at {self.pidfile} is not trusted: {self.state.distrust}")
        after = f" ({'; '.join(notes)})" if notes else ""
        return f"{self.name} is not running{after}"

    def _running_line(self) -> str:
        pid = self.state.pid
        detail = "pid unknown" if pid is None else f"pid {pid}"
        if self.uptime is not None:
            detail += f", up {_lastrun.format_duration(self.uptime)}"
        if self.note:
            detail += f"; {self.note}"
        if self.draining is not None:
            detail += f"; draining: main is told to stop in {self.draining:.1f}s"
        return f"{self.name} is running ({detail})"

    def _details(self) -> list[str]:
        used = self.resources
        lines = [] if self.supervision is None else [self._supervision_line(self.supervision)]
        lines.append("  " + ", ".join(_figures(used)))
        lines += [self._worker_line(worker) for worker in self.workers]
        if used.listening:
            lines.append("  listening: " + ", ".join(used.listening))
        elif used.listening is None:
            lines.append("  listening: unknown")
        if self.options:
            lines.append("  options: " + " ".join(_quoted(word) for word in self.options))
        return lines

    def _worker_line(self, worker: WorkerState) -> str:
        """``  worker 0: pid 12, up 3m, memory 9.1 MiB, CPU 0.2% since start; 1 restart``."""
        if worker.pid is None:
            words = [worker.phase.replace("-", " ")]
        else:
            words = [f"pid {worker.pid}"]
            if worker.started is not None:
                words.append(f"up {_lastrun.format_duration(time.time() - worker.started)}")
            if worker.phase not in (Phase.RUNNING, Phase.STARTING):
                words.append(worker.phase.replace("-", " "))
            used = self.worker_resources.get(worker.worker_id)
            if used is not None:
                words += _figures(used)[:2]  # memory and CPU
        line = f"  worker {worker.worker_id}: {', '.join(words)}"
        line += f"; {worker.restarts} restart{'s' * (worker.restarts != 1)}"
        if worker.last_exit:
            line += f"; last exit: {worker.last_exit}"
        return line

    @staticmethod
    def _supervision_line(state: SupervisorState) -> str:
        if state.workers:
            line = f"  arbiter pid {state.supervisor}; {len(state.workers)} workers, {state.phase}"
        else:
            line = f"  supervisor pid {state.supervisor}; {_phase_words(state)}"
        line += f"; {state.restarts} restart{'s' * (state.restarts != 1)}"
        if state.failure:
            line += f"; last failure: {state.failure}"
        return line

    def _worker_json(self, worker: WorkerState) -> dict[str, object]:
        up = None if worker.started is None else round(time.time() - worker.started, 3)
        return {
            "worker_id": worker.worker_id,
            "pid": worker.pid,
            "phase": worker.phase,
            "started": worker.started,
            "uptime_s": up,
            "restarts": worker.restarts,
            "restart_at": worker.restart_at,
            "last_exit": worker.last_exit,
            **_worker_json_figures(self.worker_resources.get(worker.worker_id)),
        }

    def as_json(self) -> str:
        """One JSON object: the same facts, for scripts."""
        import json  # noqa: PLC0415 -- only --json pays for it

        used = self.resources
        last = self.last
        document = {
            "name": self.name,
            "pidfile": self.pidfile,
            "running": self.state.running,
            "pid": self.state.pid if self.state.running else None,
            "uptime_s": None if self.uptime is None else round(self.uptime, 3),
            "options": self.options,
            "rss_bytes": used.rss_bytes,
            "cpu_percent": used.cpu_percent,
            "threads": used.threads,
            "open_fds": used.open_fds,
            "children": used.children,
            "listening": used.listening,
            "pidfile_left_behind": self.left_behind,
            "leftovers": self.leftovers,
            "pidfile_foreign_owner": self.state.foreign_owner,
            "note": self.note or None,
            "failed": self.failed,
            "draining_s": None if self.draining is None else round(self.draining, 3),
            "supervision": None
            if self.supervision is None
            else {
                **self.supervision.to_json(),
                "workers": [self._worker_json(worker) for worker in self.workers],
            },
            "last_run": None
            if last is None
            else {
                "pid": last.pid,
                "status": last.status,
                "exception": last.exception,
                "signal": last.signal,
                "killed": last.killed,
                "started": last.started,
                "ended": last.ended,
                "summary": last.describe(),
            },
        }
        return json.dumps(document)


def _worker_json_figures(used: Resources | None) -> dict[str, object]:
    return {
        "rss_bytes": None if used is None else used.rss_bytes,
        "cpu_percent": None if used is None else used.cpu_percent,
    }


def _figures(used: Resources) -> list[str]:
    """The figures: "memory 13.0 MiB", "2 threads"...; one nothing could tell is "unknown".

    From /proc, a figure we may not read (another user's descriptors) is
    left out, as it always was.
    """
    rss, cpu, threads, fds = used.rss_bytes, used.cpu_percent, used.threads, used.open_fds
    kids = None if used.children is None else len(used.children)
    figures = (
        ("memory", None if rss is None else f"memory {rss / _MIB:.1f} MiB"),
        ("CPU", None if cpu is None else f"CPU {cpu:g}% since start"),
        ("threads", None if threads is None else f"{threads} thread{'s' * (threads != 1)}"),
        ("open descriptors", None if fds is None else f"{fds} open descriptors"),
        ("child processes", None if kids is None else f"{kids} child process{'es' * (kids != 1)}"),
    )
    quiet = used.source == PROC
    return [
        f"{name} unknown" if shown is None else shown
        for name, shown in figures
        if shown is not None or not quiet
    ]


def _left_by(pidfile: str, state: PidFileState) -> list[int] | None:
    """What a run that died without cleaning up started and is still running.

    None when this system does not let us look (no /proc): unknown, not "none".
    """
    if state.pid is None:
        return []
    try:
        return left_by(pidfile, state.pid)
    except FileNotFoundError:
        return None


def _supervision(pidfile: str, owners: Collection[int], pid: int | None) -> SupervisorState | None:
    """The supervisor's state, when the running pid is a supervisor's (``restart=``)."""
    if pid is None:
        return None
    state = SupervisorState.read(pidfile, owners)
    return state if state is not None and state.supervisor == pid else None


def _drain_left(
    pidfile: str, owners: Collection[int], pids: list[int | None], drain: float
) -> float | None:
    """Seconds left of the drain of the first of ``pids`` the record names, or None."""
    for pid in pids:
        if pid is not None and (left := _draining.left(pidfile, owners, pid, drain)) is not None:
            return left
    return None


def _phase_words(state: SupervisorState) -> str:
    """What the supervisor is doing: "service pid 12, up 3m", "backing off, restarting in 4.2s"."""
    if state.phase == Phase.BACKING_OFF or state.service is None:
        wait = max(0.0, (state.restart_at or time.time()) - time.time())
        return f"backing off, restarting in {wait:.1f}s"
    up = "" if state.service_started is None else (
        f", up {_lastrun.format_duration(time.time() - state.service_started)}"
    )  # fmt: skip
    run = f"service pid {state.service}{up}"
    match state.phase:
        case Phase.STARTING:
            return f"{run}, not ready yet"
        case Phase.RESTARTING:
            return f"{run}, restarted, not ready yet"
        case Phase.ENDING_HUNG:
            return f"{run}, hung: being ended"
    return run


def _quoted(word: str) -> str:
    if word and all(c.isalnum() or c in "-_./:=@,+" for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _remembered(pidfile: str, owners: Collection[int]) -> list[str] | None:
    from ._remembered_options import remembered  # noqa: PLC0415 -- a small read; no option parsing

    return remembered(pidfile, owners)
