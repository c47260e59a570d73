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
import os
import select
import sys
import time

from . import _beside, _lastrun, _signals
from ._claim import answer_claimants, listen_for_claimants
from ._control import ControlServer
from ._detach import StartupChannel, exit_daemon
from ._errors import DetachError, exit_status, last_words
from ._heartbeat import reset, shared_slot, silence, staleness, unarmed
from ._hygiene import die_with_parent
from ._phases import STATE_SUFFIX, Phase, SupervisorState, check
from ._platform_process import ProcessHandle
from ._restart_policy import GiveUp, NoRestart, Restart, Restarts, after_run
from ._runtime import (
    claim_answers,
    handed_on,
    let_go_for_successor,
    listen_for_control,
    prepare_process,
    release_listeners,
    serve,
    take_the_pidfile,
)
from ._signal_path import SignalPath, read_recorded, reload_requests, reopen_logs_or_say
from ._watchdog import ABORT_GRACE, hang_message, round_length, unarmed_message

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable

    from ._config import Service
    from ._health import Connections
    from ._hygiene import Credentials
    from ._pidfile import PidFile
    from ._reload_relay import ReloadRelay

__all__ = ["supervise"]

_OVER = (Phase.DONE, Phase.GAVE_UP)
# Not written for status: a supervisor a restart replaces stops after its successor wrote its own.
_UNSAID = (Phase.STOPPING, *_OVER)


class _Child:
    """One run of the service: its pid, a handle on it, the pipe it talks on, what it said."""

    def __init__(self, pid: int, channel_fd: int) -> None:
        self.pid = pid
        self.process = ProcessHandle.of_child(pid)
        self.channel_fd: int | None = channel_fd
        os.set_blocking(channel_fd, False)
        self.buffer = b""
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.ready = False
        self.early_end: str | None = None  # "fail REASON" or "done STATUS" before ready
        self.exception: str | None = None  # from its "exit" line
        self.hung: float | None = None  # the watchdog's limit, once it ended it
        self.said_unarmed = False  # that it had not beaten once, watchdog seconds in
        self.kill_at: float | None = None  # SIGKILL after a stop or SIGABRT

    def close(self) -> None:
        self.process.close()
        if self.channel_fd is not None:
            os.close(self.channel_fd)
            self.channel_fd = None


def supervise(
    service: Service,
    pidfile: PidFile,
    *,
    credentials: Credentials | None,
    startup: StartupChannel,
) -> int:
    """Run in the detached daemon instead of ``serve``: keep the service alive; return a status."""
    return _Supervisor(service, pidfile, startup).run(credentials)


class _Supervisor(SignalPath):
    def __init__(self, service: Service, pidfile: PidFile, startup: StartupChannel) -> None:
        self.service = service
        self.config = service.config
        self.policy = service.config.restart
        self.pidfile = pidfile
        self.startup: StartupChannel | None = startup
        # A handover's new supervisor: the restart's pipe, watched until it closes
        # (``_handover.settle``); until then it is not the service, and keeps quiet.
        self.settling: StartupChannel | None = startup if pidfile.adopted else None
        if self.settling is not None:
            self.settling.hold()
        self.pid = os.getpid()
        self.started = time.time()
        self.phase = Phase.STARTING  # changed by ``enter`` only
        self.state = SupervisorState(self.pid)
        self.child: _Child | None = None
        self.history = Restarts.fresh(self.policy)  # what the restart policy remembers
        self.restart_due: float | None = None  # monotonic, while backing off
        self.stopping: int | None = None  # the stop signal, once one came
        self.heartbeats: mmap.mmap | None = None
        self.control: ControlServer | None = None
        self.claim: ControlServer | None = None
        self.record_fd = -1
        self.ending: tuple[int, str | None, str | None] | None = None  # status, exception, failed
        self.starter_removes_pidfile = False  # it heard of a failed start, and shares the lock
        self.relay: ReloadRelay | None = None  # made at the first reload
        self.endpoint: Connections | None = None  # health='s, answered by us while backing off
        self.last_end = ""  # how the last run ended, for the endpoint

    # -- the life of the supervisor ------------------------------------------------

    def run(self, credentials: Credentials | None) -> int:
        with _signals.Handlers() as handlers:
            self.record_fd = handlers.install(self.service.hooks.on_signal)
            try:
                take_the_pidfile(self.service, self.pidfile, self.pid)
                # The service dies with the supervisor: its lifeline, where the kernel
                # may lack the signal, and (privileges dropped next) ctypes, imported
                # while we still may read every directory.
                from ._hygiene import prepare_to_be_died_with  # noqa: PLC0415

                prepare_to_be_died_with(dropping_privileges=credentials is not None)
                prepare_process(self.service, credentials)  # the children inherit it all
                self.control = listen_for_control(self.config.pidfile)
                self.claim = listen_for_claimants(self.pidfile.path)
                if self.config.watchdog is not None:
                    self.heartbeats = shared_slot()
                self.spawn()
                self.save_state()
                while self.phase not in _OVER:
                    self.round()
            finally:
                if self.relay is not None:
                    self.relay.close()
                self.stop_answering()
                self.close_sockets()
            assert self.ending is not None
            status, exception, failed = self.ending
            self.finish(status, exception, failed)
        return status

    def round(self) -> None:
        """Wait for the next event, and handle what came."""
        if self.settling is not None and self.settling.fileno() < 0:
            self.settle(self.settling)  # closed already: the restart was gone before we held it
        poller = select.poll()
        poller.register(self.record_fd, select.POLLIN)
        # Not the control socket: its requests are taken up at the SIGHUP that
        # follows them, and one queued without it would keep poll() from sleeping;
        # nor, while settling, the claim, which is answered only once settled.
        claim = None if self.claim is None or self.settling is not None else self.claim.fileno()
        relay = None if self.relay is None else self.relay.fileno()
        for fd in (claim, relay):
            if fd is not None:
                poller.register(fd, select.POLLIN)
        child = self.child
        exit_fd = None if child is None else _watch(poller, child)
        settling = self.settling
        if settling is not None and settling.fileno() >= 0:
            poller.register(settling.fileno(), 0)  # POLLERR alone: the restart closed it
        endpoint = self.endpoint
        if endpoint is not None:
            endpoint.watch(poller)
        # Only polling tells when a child without an exit descriptor exits.
        polled = child is not None and exit_fd is None
        ready = {fd for fd, _ in poller.poll(self.poll_timeout(polled=polled, endpoint=endpoint))}
        if child is not None and child.channel_fd in ready:
            self.read_child(child)
        self.handle_signals()
        if settling is not None and settling.fileno() in ready:
            self.settle(settling)
        elif self.claim is not None and self.claim.fileno() in ready and self.settling is None:
            answers = claim_answers(
                self.pidfile, self.claim, accepts=False, unhealthy=self.unhealthy,
                unready=self.unready,
            )  # fmt: skip
            answer_claimants(self.claim, answers)
        if self.relay is not None:
            self.relay.carry_on(ready)  # before child_ended: a service answers, then may exit
        if child is not None and child is self.child and _exited(child.process, exit_fd, ready):
            self.child_ended(child)
        if endpoint is not None and endpoint is self.endpoint:
            # Non-blocking and bounded: no client delays the restart below.
            endpoint.handle(poller, ready)
        self.on_time()

    def poll_timeout(self, *, polled: bool, endpoint: Connections | None) -> float | None:
        """Milliseconds poll may sleep (None: for ever): to a deadline, an exit poll, a client's."""
        deadline = self.next_deadline()
        waits = [] if deadline is None else [max(0.0, deadline - time.monotonic()) * 1000]
        if polled:
            waits.append(ProcessHandle.POLL_INTERVAL * 1000)
        if endpoint is not None and (answer_by := endpoint.timeout()) is not None:
            waits.append(answer_by)
        return min(waits, default=None)

    def settle(self, channel: StartupChannel) -> None:
        """The restart that started us is over: be the service, or stand down."""
        from ._handover import settle  # noqa: PLC0415 -- loaded by the restart that forked us

        self.settling = None
        channel.close()
        if settle(self.pidfile, self.claim, self.service):
            self.save_state()
            return
        self.say(
            "the restart that started this supervisor ended before it took over (killed?); "
            "standing down, the running instance serves on"
        )
        self.stop(signal.SIGTERM)

    def next_deadline(self) -> float | None:
        """When poll must return: the phase's deadline, or the reload relay's."""
        relay = None if self.relay is None else self.relay.deadline()
        return min((d for d in (self.phase_deadline(), relay) if d is not None), default=None)

    def phase_deadline(self) -> float | None:
        """When the phase has something to do: ``on_time`` does it."""
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
            case Phase.BACKING_OFF if _come(self.restart_due, now):
                self.restart_due = None
                self.spawn()
                self.enter(Phase.RESTARTING)  # backing-off -> restarting
            case Phase.RUNNING if child is not None and self.heartbeats is not None:
                self.watch(child)
            case Phase.RESTARTING if child is not None and _come(self.phase_deadline(), now):
                self.end_never_ready(child, now)
            case Phase.ENDING_HUNG | Phase.STOPPING if child is not None and _come(
                child.kill_at, now
            ):
                child.kill_at = None
                child.process.send(signal.SIGKILL)

    def unhealthy(self) -> str | None:
        """Why the service is not healthy (the ``health`` command), or None."""
        if self.phase != Phase.RUNNING:
            return f"the service is {self.phase}, not running"
        if self.heartbeats is None:
            return None
        return staleness(self.config.watchdog, self.heartbeats)

    def unready(self) -> str | None:
        """Why the service takes no traffic (``health --ready``), once it is healthy."""
        if self.stopping is not None:
            return "stopping"
        return None

    def enter(self, phase: str) -> None:
        """Change phase (the one place that does, checked: ``_phases``); tell status."""
        self.phase = self.state.phase = check(self.phase, phase)
        if phase not in _UNSAID:
            self.save_state()

    def end(self, status: int, exception: str | None, failed: str | None = None) -> None:
        """The supervisor is done (or gave up, ``failed`` says why): it exits after this round."""
        self.ending = (status, exception, failed)
        self.enter(Phase.DONE if failed is None else Phase.GAVE_UP)

    # -- the service ------------------------------------------------------------------

    def spawn(self) -> None:
        """Fork the service; in the child, run it and never return."""
        self.stop_answering()  # the service answers the endpoint now
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:  # no descriptor left (ulimit -n)
            raise DetachError(f"cannot create the pipe to the service: {exc.strerror}") from exc
        if self.heartbeats is not None:
            reset(self.heartbeats)
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            self.become_service(write_end)
        os.close(write_end)
        self.child = _Child(pid, read_end)
        self.state.service = pid
        self.state.service_started = self.child.started
        self.state.restart_at = None

    def become_service(self, channel_fd: int) -> None:
        status = 1
        try:
            die_with_parent(signal.SIGKILL, self.pid)  # never outlive the supervisor
            # The supervisor's sockets: the service makes its own (its signal
            # pipes the registry's fork hook closed already).
            self.close_sockets()
            channel = StartupChannel(channel_fd, supervised=True)
            status = serve(
                self.service,
                None,
                startup=channel,
                heartbeats=self.heartbeats,
                replaced=lambda: self.pidfile.handed_on_seen_by(self.pid),
            )
        except SystemExit as exc:
            status = exit_status(exc.code)
        except BaseException:  # noqa: BLE001 -- everything must end here, in the child
            import traceback  # noqa: PLC0415

            last_words(traceback.print_exc)
        finally:
            exit_daemon(status)

    def read_child(self, child: _Child) -> None:
        """Read the lines the service wrote: relay the first one's start to ``start``."""
        assert child.channel_fd is not None
        while True:
            try:
                chunk = os.read(child.channel_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                os.close(child.channel_fd)
                child.channel_fd = None
                break
            child.buffer += chunk
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            self.heard(child, line.decode("utf-8", "replace"))

    def heard(self, child: _Child, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "main" and self.startup is not None:
            self.startup.main_entered()
        elif word == "wait" and self.startup is not None:
            self.startup.postpone()
        elif word == "ready":
            child.ready = True
            if self.phase in (Phase.STARTING, Phase.RESTARTING):
                # Before ``start`` hears of it: a status after "started" says running.
                self.enter(Phase.RUNNING)  # starting -> running; restarting -> running
            if self.startup is not None:
                self.startup.ready()
                self.startup = None  # closed by ready(): the start is reported
        elif word in ("fail", "done") and not child.ready:
            child.early_end = line
        elif word == "exit":
            _, _, exception = rest.partition(" ")
            child.exception = exception or None

    def child_ended(self, child: _Child) -> None:
        """The service exited: report a failed first start, stop, or restart it."""
        if child.channel_fd is not None:
            self.read_child(child)  # its last lines
        wait_status = child.process.reap()
        child.close()
        self.child = None
        self.state.service = self.state.service_started = None
        status = _status_of(wait_status)
        ended = self.describe_end(child, wait_status)
        self.end_what_it_left(child)
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

    def end_what_it_left(self, child: _Child) -> None:
        """End what the run started and left running, before anything else runs."""
        from ._descendants import describe, end_run, killed, this_run  # noqa: PLC0415 -- a run ended

        try:
            left = end_run(this_run(group=os.getpgrp()), _signals.time_left(self.config.kill_after))
        except OSError as exc:
            self.say(f"cannot end what the service (pid {child.pid}) left running: {exc}")
            return
        if left:
            self.say(
                f"ended {describe(left)} the service (pid {child.pid}) left running{killed(left)}"
            )

    def report_failed_start(self, child: _Child, ended: str) -> None:
        assert self.startup is not None
        early = child.early_end or ""
        word, _, rest = early.partition(" ")
        if word == "done":
            self.pidfile.remove()  # before "done": start then leaves it to us
            self.startup.finished(int(rest) if rest.isdigit() else 0)
        else:
            reason = rest if word == "fail" and rest else f"the service {ended}"
            self.starter_removes_pidfile = self.startup.fail(reason)
        self.startup = None

    def describe_end(self, child: _Child, wait_status: int) -> str:
        if child.hung is not None and child.early_end is not None:
            return child.early_end.partition(" ")[2]
        if child.hung is not None:
            return f"hung: no heartbeat for {child.hung:g}s"
        if os.WIFSIGNALED(wait_status):
            return f"was killed by {_signals.signal_name(os.WTERMSIG(wait_status))}"
        status = os.WEXITSTATUS(wait_status)
        if child.exception:
            return f"raised {child.exception}"
        return f"exited with status {status}"

    def watch(self, child: _Child) -> None:
        """The watchdog's round: end a hung service; say once that one never beat."""
        assert self.config.watchdog is not None
        if self.is_hung():
            self.end_hung(child)
        elif not child.said_unarmed and self.is_unarmed():
            child.said_unarmed = True
            self.say(unarmed_message(self.config.watchdog, child.pid))

    def is_hung(self) -> bool:
        """No heartbeat for ``watchdog`` seconds (the slot says so, not while it ends)."""
        assert self.heartbeats is not None
        assert self.config.watchdog is not None
        return silence(self.heartbeats) > self.config.watchdog

    def is_unarmed(self) -> bool:
        """Nothing beat once in ``watchdog`` seconds since the service began (not hung: unarmed)."""
        assert self.heartbeats is not None
        assert self.config.watchdog is not None
        return unarmed(self.heartbeats) > self.config.watchdog

    def end_hung(self, child: _Child) -> None:
        assert self.config.watchdog is not None
        child.hung = self.config.watchdog
        self.say(hang_message(self.config.watchdog, child.pid))
        child.process.send(signal.SIGABRT)  # faulthandler writes its stacks, then it dies
        child.kill_at = time.monotonic() + ABORT_GRACE
        self.enter(Phase.ENDING_HUNG)  # running -> ending-hung

    def end_never_ready(self, child: _Child, now: float) -> None:
        """A restarted service that never gets ready: start_timeout, as for a start."""
        child.early_end = f"fail not ready within {self.config.start_timeout:g}s"
        child.hung = self.config.start_timeout
        child.process.send(signal.SIGTERM)
        child.kill_at = now + self.config.kill_after
        self.enter(Phase.ENDING_HUNG)  # restarting -> ending-hung

    # -- the health endpoint, while no service answers it ------------------------------

    def answer_probes(self) -> None:
        """With ``health=``, answer its probes until the next start (``_between_runs``)."""
        if self.config.health is None or self.endpoint is not None:
            return
        from ._between_runs import SupervisorAnswers, restarting  # noqa: PLC0415 -- health=
        from ._health import Connections  # noqa: PLC0415 -- health= only
        from ._listeners import open_health  # noqa: PLC0415 -- loaded with the service already

        try:
            listener = open_health(self.config.health)  # the one bound by start, held since
        except OSError as exc:
            self.say(f"cannot answer the health endpoint while restarting: {exc}")
            return
        answers = SupervisorAnswers(
            self.config,
            self.started,
            lambda: restarting(self.last_end, self.restart_due),
            self.state.to_json,
        )
        self.endpoint = Connections(listener, answers)

    def stop_answering(self) -> None:
        """Accept no more; answer what was accepted (the listener stays: the service's next)."""
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.finish()

    # -- signals and requests ---------------------------------------------------------

    def handle_signals(self) -> None:
        for recorded in read_recorded(self.record_fd, limit=sys.maxsize):
            self.dispatch(recorded)

    def handle_stop(self, signum: int) -> None:
        """SIGTERM, SIGINT: stop the service, then end."""
        self.stop(signum)

    def handle_reload(self) -> None:
        """SIGHUP: reopen our logs; have the service reload; the relay answers the requests."""
        requests = reload_requests(self.control)
        reopen_logs_or_say(self.config.stdout, self.config.stderr)
        if self.relay is None:
            from ._reload_relay import ReloadRelay  # noqa: PLC0415 -- a supervisor that reloads

            where = (self.config.pidfile, self.pidfile.owners)
            self.relay = ReloadRelay(self.reloadable, self.config.start_timeout, where)
        self.relay.reload(requests)

    def handle_signal(self, signum: int) -> None:
        """An ``on_signal`` signal: passed on to the service as it is."""
        if self.child is not None:
            self.child.process.send(signum)

    def stop(self, signum: int) -> None:
        if self.phase == Phase.STOPPING:
            self.stop_again()
            return
        if self.phase in _OVER:
            return
        self.stopping = signum
        child = self.child
        if child is None:  # waiting to restart: nothing to stop but ourselves
            self.end(0, None)  # backing-off -> done
            return
        child.process.send(signal.SIGTERM)
        child.kill_at = time.monotonic() + self.config.kill_after
        self.enter(Phase.STOPPING)  # starting/running/restarting/ending-hung -> stopping

    def stop_again(self) -> None:
        """A stop asked for again: with ``drain=``, the service hears it too (it ends the drain).

        Its SIGKILL stays where the first stop put it.  Without a drain the
        service has nothing to end early, and is left to its stop.
        """
        if self.config.drain > 0 and self.child is not None:
            self.child.process.send(signal.SIGTERM)

    def reloadable(self) -> tuple[int, Callable[[], None]] | None:
        """The service to ask for a reload, and how to signal it; None while it is not ready."""
        child = self.child
        if child is None or not child.ready:
            return None
        return child.pid, lambda: _send(child.process, signal.SIGHUP)

    # -- the end ------------------------------------------------------------------------

    def finish(self, status: int, exception: str | None, failed: str | None) -> None:
        """Record the supervisor's run; remove the pidfile, or leave it when it gave up."""
        if handed_on(self.pidfile):
            let_go_for_successor(self.pidfile)
        else:
            self.record_the_end(status, exception, failed)

    def record_the_end(self, status: int, exception: str | None, failed: str | None) -> None:
        _beside.remove(self.config.pidfile + STATE_SUFFIX)
        _lastrun.write_end(
            self.config.pidfile,
            self.pid,
            status=status,
            started=self.started,
            exception=exception,
            stop_signal=self.stopping,
            failed=failed,
        )
        if self.service.signature:
            from ._remembered_options import forget  # noqa: PLC0415 -- a small record

            forget(self.config.pidfile)
        if failed is not None or self.starter_removes_pidfile:
            # Given up: left behind on purpose, so status says "failed".
            self.pidfile.close()
        else:
            release_listeners()
            if self.config.listen:
                from ._handover import remove_unheld_lock  # noqa: PLC0415 -- loaded with listen=

                remove_unheld_lock(self.pidfile)  # a restart killed left it
            self.pidfile.remove()

    def close_sockets(self) -> None:
        for server in (self.control, self.claim):
            if server is not None:
                server.close()
        self.control = self.claim = None

    def save_state(self) -> None:
        if self.settling is not None:
            return  # not the service yet: the running one's state stands
        _beside.write(self.config.pidfile + STATE_SUFFIX, self.state.to_text().encode())

    def say(self, text: str) -> None:
        last_words(lambda: print(f"{self.config.name}: {text}", file=sys.stderr))


def _come(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline


def _send(process: ProcessHandle, signum: int) -> None:
    process.send(signum)  # False: it has exited; its handle says so at the next round


def _watch(poller: select.poll, child: _Child) -> int | None:
    """Have ``poller`` watch the service's pipe and exit; its exit descriptor (None: polling)."""
    exit_fd = child.process.fileno()
    if exit_fd is not None:
        poller.register(exit_fd, select.POLLIN)
    if child.channel_fd is not None:
        poller.register(child.channel_fd, select.POLLIN)
    return exit_fd


def _exited(process: ProcessHandle, exit_fd: int | None, ready: set[int]) -> bool:
    """Whether the service has exited: its exit descriptor is ready, or (polling) it says so."""
    return exit_fd in ready if exit_fd is not None else process.has_exited()


def _status_of(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)
