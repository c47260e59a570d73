"""The arbiter: with ``workers=N``, the process that holds the pidfile and keeps N workers.

``start`` detaches it in the service's place, as it detaches a supervisor
for ``restart=`` (what the two share is ``_keeper``'s): it holds the
pidfile, its lock and its claim, and the ``listen=`` sockets ``start`` bound.
It forks N workers, each a whole service (``serve``: its own signals,
dispatcher, ``on_stop``, control socket, heartbeats), each with the same
listening sockets, so the kernel spreads ``accept`` between them, and its
number, :func:`~daemonize_deco.worker_id`.  Then:

- ``start`` is told "ready" once every worker is; a worker that ends
  before that fails the start: the others are stopped, and ``start`` says
  which worker failed and why;
- a worker that ends later is replaced in its slot (same number) as
  ``restart`` says, each slot with its own restart history: delay, backoff
  and limit as for a supervisor.  ``restart="no"`` replaces none: the
  arbiter ends when its last worker has ended.  A slot whose restarts ran
  out gives the service up: the other workers are stopped, and ``status``
  says "failed", as a supervisor's would;
- with ``watchdog=S``, each worker beats into a slot of its own: a hung
  worker is ended (SIGABRT, then SIGKILL) and replaced alone;
- SIGTERM/SIGINT stops every worker (SIGTERM, SIGKILL after the drain and
  ``stop_timeout``; with ``drain=``, a stop asked for again goes to every
  worker too: it ends their drains), then the arbiter removes the pidfile
  and exits; SIGHUP and the ``on_signal`` signals go to every worker
  (``reload`` is answered by the lowest-numbered ready one);
- with ``health=``, each worker answers the endpoint (the kernel picks
  which); while every worker is down, waiting to be replaced, the arbiter
  answers it (``_between_runs``), as a supervisor does while it backs off;
- ``PIDFILE.supervisor`` lists the workers, for ``status``.

The workers die with it (``PR_SET_PDEATHSIG``, or a lifeline), as a
supervisor's service does.  Unlike a supervisor, it also runs in the
foreground (``run``; ``start`` under a process manager): a manager is told
READY=1 once all N are ready, not by each worker.  Its phases (``_phases.ARBITER_PHASES``) are the
service's as a whole; each worker's is a word of its ``WorkerState``.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import time

from . import _lastrun
from ._heartbeat import shared_slot, staleness
from ._keeper import OVER, Keeper, describe_end, status_of
from ._phases import ARBITER_PHASES, Phase, WorkerState
from ._restart_policy import GiveUp, NoRestart, Restart, Restarts, after_run
from ._watchdog import round_length

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable

    from ._config import RestartPolicy, Service
    from ._detach import StartupChannel
    from ._hygiene import Credentials
    from ._keeper import Child
    from ._pidfile import PidFile

__all__ = ["ENDED", "arbitrate"]

ENDED = "ended"  # a worker's word: it ended and is not replaced


def arbitrate(
    service: Service,
    pidfile: PidFile,
    *,
    credentials: Credentials | None,
    startup: StartupChannel | None,
) -> int:
    """Keep N workers instead of ``serve``; return a status.

    In the detached daemon (``startup``: the pipe to ``start``) or in the
    foreground (``run``, and ``start`` under a process manager: none), where
    a manager's ``NOTIFY_SOCKET`` hears READY=1 once all N are ready, and
    ``WATCHDOG=1`` while none of them is hung.
    """
    return _Arbiter(service, pidfile, startup).run(credentials)


class _Slot:
    """One worker's place: its number, its run (None between runs), its restart history."""

    def __init__(self, number: int, policy: RestartPolicy) -> None:
        self.number = number
        self.child: Child | None = None
        self.history = Restarts.fresh(policy)
        self.restart_due: float | None = None  # monotonic, while backing off
        self.heartbeats: mmap.mmap | None = None  # its own slot, with a watchdog
        self.state = WorkerState(number)

    def name(self, child: Child) -> str:
        return f"worker {self.number} (pid {child.pid})"


class _Arbiter(Keeper):
    PHASES = ARBITER_PHASES

    def __init__(self, service: Service, pidfile: PidFile, startup: StartupChannel | None) -> None:
        super().__init__(service, pidfile, startup)
        self.slots = [_Slot(number, self.policy) for number in range(self.config.workers)]
        self.state.workers = [slot.state for slot in self.slots]
        self.told_main = self.told_wait = False
        # The first worker that failed and was not replaced: the arbiter's exit status.
        self.outcome: tuple[int, str | None] | None = None
        self.failed_as: str | None = None  # why it gave up, once the others have ended
        self.next_ping: float | None = None  # a manager's watchdog (``WATCHDOG_USEC``)

    def begin(self) -> None:
        if self.notifier.watchdog_interval is not None:
            self.next_ping = time.monotonic()
        for slot in self.slots:
            self.spawn(slot)

    def children(self) -> list[Child]:
        return [slot.child for slot in self.slots if slot.child is not None]

    def slot_of(self, child: Child) -> _Slot:
        return next(slot for slot in self.slots if slot.child is child)

    def phase_deadline(self) -> float | None:
        due: list[float] = []
        for slot in self.slots:
            child = slot.child
            if child is None:
                due += [] if slot.restart_due is None else [slot.restart_due]
            elif child.kill_at is not None:
                due.append(child.kill_at)
            elif not child.ready and self.phase == Phase.RUNNING:  # a replacement, starting
                due.append(child.started_monotonic + self.config.start_timeout)
        if self.phase == Phase.RUNNING and self.config.watchdog is not None:
            due.append(time.monotonic() + round_length(self.config.watchdog))
        if self.next_ping is not None and self.phase in (Phase.STARTING, Phase.RUNNING):
            due.append(self.next_ping)
        return min(due, default=None)

    def on_time(self) -> None:
        """Replace, escalate, or end a hung worker, when its time has come; ping a manager."""
        now = time.monotonic()
        self.ping(now)
        for slot in self.slots:
            child = slot.child
            if child is None:
                if slot.restart_due is not None and now >= slot.restart_due:
                    self.spawn(slot)
                    self.save_state()
            elif child.kill_at is not None:
                self.kill_if_due(child, now)
            elif self.phase != Phase.RUNNING:
                continue
            elif not child.ready and now >= child.started_monotonic + self.config.start_timeout:
                self.end_never_ready(child, now)
                self.mark(slot, Phase.ENDING_HUNG)
            elif child.ready and child.heartbeats is not None and self.watch(child):
                self.mark(slot, Phase.ENDING_HUNG)

    def ping(self, now: float) -> None:
        """Tell a manager's watchdog that all is well, when it is due and no worker is hung."""
        interval = self.notifier.watchdog_interval
        if self.next_ping is None or interval is None or now < self.next_ping:
            return
        self.next_ping = now + interval
        if self.phase in (Phase.STARTING, Phase.RUNNING) and self.stale() is None:
            self.notifier.watchdog()

    def unhealthy(self) -> str | None:
        """Why the service is not healthy (the ``health`` command), or None."""
        if self.phase != Phase.RUNNING:
            return f"the service is {self.phase}, not running"
        return self.stale()

    def stale(self) -> str | None:
        """Which ready worker's heartbeats are not fresh (``watchdog=``), and why; or None."""
        for slot in self.slots:
            child = slot.child
            if child is not None and child.ready and child.heartbeats is not None:
                why = staleness(self.config.watchdog, child.heartbeats)
                if why is not None:
                    return f"worker {slot.number}: {why}"
        return None

    def mark(self, slot: _Slot, phase: str) -> None:
        """Say in the record what worker ``slot`` is doing."""
        slot.state.phase = phase
        self.save_state()

    # -- the workers ------------------------------------------------------------------

    def spawn(self, slot: _Slot) -> None:
        """Fork worker ``slot.number``; in the child, run the service and never return."""
        if self.config.watchdog is not None and slot.heartbeats is None:
            slot.heartbeats = shared_slot()
        child = slot.child = self.fork_child(slot.heartbeats, slot.number)
        slot.restart_due = None
        slot.state.pid = child.pid
        slot.state.started = child.started
        slot.state.restart_at = None
        slot.state.phase = Phase.STARTING if slot.state.restarts == 0 else Phase.RESTARTING

    def heard(self, child: Child, word: str) -> None:
        startup = self.startup
        if word == "main" and startup is not None and not self.told_main:
            if all(c.entered_main for c in self.children()):
                self.told_main = True  # all N have entered main: the start grace begins
                startup.main_entered()
        elif word == "wait" and startup is not None and not self.told_wait:
            self.told_wait = True
            startup.postpone()
        elif word == "ready" and self.phase != Phase.STOPPING:
            self.mark(self.slot_of(child), Phase.RUNNING)
            if self.phase == Phase.STARTING and all(
                slot.child is not None and slot.child.ready for slot in self.slots
            ):
                self.enter(Phase.RUNNING)  # starting -> running: before start hears of it
                self.notifier.ready()
                if startup is not None:
                    startup.ready()
                    self.startup = None  # closed by ready(): the start is reported

    def child_ended(self, child: Child) -> None:
        """A worker exited: fail the start, finish a stop, or replace it."""
        slot = self.slot_of(child)
        wait_status = self.reap(child)
        slot.child = None
        status = status_of(wait_status)
        ended = describe_end(child, wait_status)
        slot.state.pid = slot.state.started = None
        slot.state.last_exit = f"{ended} at {_lastrun.clock(time.time())}"
        failed = status != 0 or child.hung is not None or child.exception is not None
        if self.startup is not None or self.phase == Phase.STARTING:  # the start failed
            self.say(f"{slot.name(child)} {ended} before the service was ready; stopping the rest")
            self.outcome = self.outcome or (status, child.exception)
            if self.startup is not None:
                self.report_failed_start(child, ended, who=f"worker {slot.number}")
            self.end_all()
            return
        if self.phase == Phase.STOPPING:
            self.note_failure(child, status, failed=failed)
            self.mark(slot, ENDED)
            self.end_all()
        else:
            self.after_run(slot, child, ended, status=status, failed=failed)

    def note_failure(self, child: Child, status: int, *, failed: bool) -> None:
        """A worker that failed and is not replaced: the first one's status is the arbiter's."""
        if failed and self.outcome is None:
            self.outcome = (status, child.exception)

    def after_run(
        self, slot: _Slot, child: Child, ended: str, *, status: int, failed: bool
    ) -> None:
        """A worker ended while the service runs: replace it, leave it, or give up."""
        now = time.monotonic()
        if self.policy.mode == "no":
            verdict: Restart | GiveUp | NoRestart = NoRestart()
        else:
            started = child.started_monotonic
            verdict = after_run(self.policy, slot.history, started=started, now=now, failed=failed)
        match verdict:
            case NoRestart():
                self.note_failure(child, status, failed=failed)
                self.say(f"{slot.name(child)} {ended}; not replaced (restart={self.policy.mode})")
                self.mark(slot, ENDED)
                if not self.children() and all(s.restart_due is None for s in self.slots):
                    self.say("its last worker has ended: the service ends")
                    self.end_all()
            case GiveUp(reason=reason):
                self.note_failure(child, status, failed=failed)
                self.failed_as = f"worker {slot.number}: {reason}; last: {ended}"
                self.say(f"giving up: {self.failed_as}; stopping the other workers")
                self.mark(slot, ENDED)
                self.end_all()
            case Restart(delay=wait, history=history):
                slot.history = history
                slot.restart_due = now + wait
                slot.state.restarts += 1
                self.state.restarts += 1
                slot.state.restart_at = time.time() + wait
                self.state.failure = f"worker {slot.number} {slot.state.last_exit}"
                self.mark(slot, Phase.BACKING_OFF)
                self.say(f"{slot.name(child)} {ended}; replacing it in {wait:g}s")
                if not self.children():  # no worker left to answer the endpoint
                    self.answer_probes()

    def between_runs(self) -> str:
        """What ``/readyz`` says while every worker is down: the last end, the next start."""
        from ._between_runs import restarting  # noqa: PLC0415 -- loaded by answer_probes

        due = min((s.restart_due for s in self.slots if s.restart_due is not None), default=None)
        return restarting(f"has no worker running (last: {self.state.failure})", due)

    def end_all(self) -> None:
        """Stop the workers still running; end once none is left."""
        for slot in self.slots:
            slot.restart_due = None
            if slot.state.phase == Phase.BACKING_OFF:
                slot.state.phase = ENDED
        if not self.children():
            self.end_what_it_left("the workers")
            status, exception = self.outcome or (0, None)
            if self.failed_as is not None:
                status = 1
            self.end(status, exception, self.failed_as)  # starting/running/stopping -> done/gave-up
            return
        now = time.monotonic()
        for slot in self.slots:
            child = slot.child
            if child is not None and child.kill_at is None:
                child.process.send(signal.SIGTERM)
                child.kill_at = now + self.config.kill_after
                slot.state.phase = Phase.STOPPING
        if self.phase != Phase.STOPPING:
            self.enter(Phase.STOPPING)  # starting/running -> stopping

    # -- signals and requests ---------------------------------------------------------

    def stop(self, signum: int) -> None:
        if self.phase in (Phase.STOPPING, *OVER):
            return
        self.stop_asked(signum)
        self.notifier.stopping()
        self.end_all()

    def reloadable(self) -> tuple[int, Callable[[], None]] | None:
        """The first ready worker to answer; SIGHUP to every ready one. None if none is ready."""
        ready = [child for child in self.children() if child.ready]
        if not ready:
            return None

        def hup() -> None:
            for child in ready:
                child.process.send(signal.SIGHUP)  # False: it exited; seen at the next round

        return ready[0].pid, hup
