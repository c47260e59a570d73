"""The supervisor: a small process that holds the pidfile and keeps the service running.

With ``restart="on-failure"`` or ``"always"``, the detached daemon ``start``
makes is not the service but its supervisor: the pid in the pidfile, the
holder of its lock and claim.  It forks the service as its child and:

- restarts it when it ends as ``restart`` says: after ``restart_delay``,
  doubling up to ``restart_delay_max``; more than ``burst`` restarts within
  ``interval`` seconds gives up (status then says "failed"), and a run
  longer than ``interval`` starts the count afresh;
- passes SIGTERM/SIGINT on as a graceful stop (SIGKILL to the service after
  the drain and ``stop_timeout``; with ``drain=``, a stop asked for again is
  passed on too: it ends the service's drain), SIGHUP as an acknowledged
  reload (answering the ``reload`` commands that sent it with the service's
  own answer, without waiting for it: ``_reload_relay``), and the
  ``on_signal`` signals as they are;
- with ``watchdog=S``, reads the service's heartbeats from a shared slot
  and ends a service that made none for S seconds: SIGABRT (faulthandler
  writes its threads' stacks to the log), SIGKILL a second later; once a
  stop was asked for (of it, or of the service directly) or main returned,
  it no longer does: ``stop_timeout`` bounds the rest; a service that has
  not beaten once, S seconds in, gets a line in the log instead (the
  watchdog is armed by the first beat);
- writes ``PIDFILE.supervisor`` whenever that changes, for ``status``;
- with ``health=``, answers the endpoint itself while backing off, when no
  service does (``_between_runs``): in this loop, and not at all once the
  next service is forked.

What it does next follows from its phase (``_phases``: named, and changed
only through ``enter``, which checks the change); when to restart, from the
restart policy (``_restart_policy``).

The service dies with it: the child asks the kernel for SIGKILL when its
parent dies (``PR_SET_PDEATHSIG``), so even a SIGKILLed supervisor leaves
no service behind.  It is one thread blocked in ``poll``: an idle
supervisor never wakes up (the watchdog, when enabled, gives it a period).
The first start is reported as without a supervisor: ``start`` says
"started" once the first service is ready, and a service that fails before
that is not restarted: the start failed.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import time

from . import _lastrun
from ._heartbeat import shared_slot, staleness
from ._keeper import OVER, Keeper, describe_end, status_of
from ._phases import SUPERVISOR_PHASES, Phase
from ._restart_policy import GiveUp, NoRestart, Restart, Restarts, after_run
from ._watchdog import round_length

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable

    from ._config import Service
    from ._detach import StartupChannel
    from ._hygiene import Credentials
    from ._keeper import Child
    from ._pidfile import PidFile
    from ._platform_process import ProcessHandle

__all__ = ["supervise"]


def supervise(
    service: Service,
    pidfile: PidFile,
    *,
    credentials: Credentials | None,
    startup: StartupChannel,
) -> int:
    """Run in the detached daemon instead of ``serve``: keep the service alive; return a status."""
    return _Supervisor(service, pidfile, startup).run(credentials)


class _Supervisor(Keeper):
    PHASES = SUPERVISOR_PHASES

    def __init__(self, service: Service, pidfile: PidFile, startup: StartupChannel) -> None:
        super().__init__(service, pidfile, startup)
        self.child: Child | None = None
        self.history = Restarts.fresh(self.policy)  # what the restart policy remembers
        self.restart_due: float | None = None  # monotonic, while backing off
        self.heartbeats: mmap.mmap | None = None
        self.last_end = ""  # how the last run ended, for the endpoint

    def begin(self) -> None:
        if self.config.watchdog is not None:
            self.heartbeats = shared_slot()
        self.spawn()

    def children(self) -> list[Child]:
        return [] if self.child is None else [self.child]

    def phase_deadline(self) -> float | None:
        child = self.child
        match self.phase:
            case Phase.BACKING_OFF:
                return self.restart_due
            case Phase.RESTARTING if child is not None:
                return child.started_monotonic + self.config.start_timeout
            case Phase.RUNNING if self.config.watchdog is not None:
                return time.monotonic() + round_length(self.config.watchdog)
            case Phase.ENDING_HUNG | Phase.STOPPING if child is not None:
                return child.kill_at
        # STARTING: ``start`` bounds the first run; RUNNING unwatched: nothing is due.
        return None

    def on_time(self) -> None:
        """Restart, escalate, or end a hung service, when its time has come."""
        now = time.monotonic()
        child = self.child
        match self.phase:
            case Phase.BACKING_OFF if self.restart_due is not None and now >= self.restart_due:
                self.restart_due = None
                self.spawn()
                self.enter(Phase.RESTARTING)  # backing-off -> restarting
            case Phase.RUNNING if child is not None and self.heartbeats is not None:
                if self.watch(child):
                    self.enter(Phase.ENDING_HUNG)  # running -> ending-hung
            case Phase.RESTARTING if child is not None and now >= (
                child.started_monotonic + self.config.start_timeout
            ):
                self.end_never_ready(child, now)
                self.enter(Phase.ENDING_HUNG)  # restarting -> ending-hung
            case Phase.ENDING_HUNG | Phase.STOPPING if child is not None:
                self.kill_if_due(child, now)

    def unhealthy(self) -> str | None:
        """Why the service is not healthy (the ``health`` command), or None."""
        if self.phase != Phase.RUNNING:
            return f"the service is {self.phase}, not running"
        if self.heartbeats is None:
            return None
        return staleness(self.config.watchdog, self.heartbeats)

    # -- the service ------------------------------------------------------------------

    def spawn(self) -> None:
        """Fork the service; in the child, run it and never return."""
        self.child = self.fork_child(self.heartbeats)
        self.state.service = self.child.pid
        self.state.service_started = self.child.started
        self.state.restart_at = None

    def heard(self, child: Child, word: str) -> None:
        if word == "main" and self.startup is not None:
            self.startup.main_entered()
        elif word == "wait" and self.startup is not None:
            self.startup.postpone()
        elif word == "ready":
            if self.phase in (Phase.STARTING, Phase.RESTARTING):
                # Before ``start`` hears of it: a status after "started" says running.
                self.enter(Phase.RUNNING)  # starting -> running; restarting -> running
            if self.startup is not None:
                self.startup.ready()
                self.startup = None  # closed by ready(): the start is reported

    def child_ended(self, child: Child) -> None:
        """The service exited: report a failed first start, stop, or restart it."""
        wait_status = self.reap(child)
        self.child = None
        self.state.service = self.state.service_started = None
        status = status_of(wait_status)
        ended = describe_end(child, wait_status)
        self.end_what_it_left(f"the service (pid {child.pid})")
        if self.startup is not None:  # the first run never got ready: the start failed
            self.report_failed_start(child, ended)
            self.end(status, child.exception)  # starting -> done; stopping -> done
            return
        if self.phase == Phase.STOPPING:
            self.end(status, child.exception)  # stopping -> done
            return
        failed = status != 0 or child.hung is not None or child.exception is not None
        now = time.monotonic()
        started = child.started_monotonic
        match after_run(self.policy, self.history, started=started, now=now, failed=failed):
            case NoRestart():
                self.say(
                    f"the service (pid {child.pid}) {ended}; not restarting (restart=on-failure)"
                )
                self.end(status, None)  # running -> done; restarting -> done
            case GiveUp(reason=reason):
                failed_as = f"{reason}; last: {ended}"
                self.say(f"giving up: {failed_as}")
                self.end(1, child.exception, failed_as)  # running/restarting/ending-hung -> gave-up
            case Restart(delay=wait, history=history):
                self.history = history
                self.restart_due = now + wait
                self.state.restarts += 1
                self.state.restart_at = time.time() + wait
                self.state.failure = f"{ended} at {_lastrun.clock(time.time())}"
                self.last_end = ended
                self.enter(Phase.BACKING_OFF)  # running/restarting/ending-hung -> backing-off
                self.say(f"the service (pid {child.pid}) {ended}; restarting in {wait:g}s")
                self.answer_probes()

    def between_runs(self) -> str:
        """What ``/readyz`` says while backing off: how the last run ended, when the next starts."""
        from ._between_runs import restarting  # noqa: PLC0415 -- loaded by answer_probes

        return restarting(self.last_end, self.restart_due)

    # -- signals and requests ---------------------------------------------------------

    def stop(self, signum: int) -> None:
        if self.phase in (Phase.STOPPING, *OVER):
            return
        self.stop_asked(signum)
        child = self.child
        if child is None:  # waiting to restart: nothing to stop but ourselves
            self.end(0, None)  # backing-off -> done
            return
        child.process.send(signal.SIGTERM)
        child.kill_at = time.monotonic() + self.config.kill_after
        self.enter(Phase.STOPPING)  # starting/running/restarting/ending-hung -> stopping

    def reloadable(self) -> tuple[int, Callable[[], None]] | None:
        """The service to ask for a reload, and how to signal it; None while it is not ready."""
        child = self.child
        if child is None or not child.ready:
            return None
        return child.pid, lambda: _send(child.process, signal.SIGHUP)


def _send(process: ProcessHandle, signum: int) -> None:
    process.send(signum)  # False: it has exited; its handle says so at the next round
