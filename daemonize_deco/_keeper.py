"""What a supervisor and an arbiter share: the daemon that holds the pidfile, the service its child.

``start`` detaches one of them in the service's place: a supervisor with
``restart=`` (``_supervisor``: one child, restarted), an arbiter with
``workers=N`` (``_workers``: N children, each replaced alone).  Either is the
pid in the pidfile, the holder of its lock, its claim and its control socket,
and forks the service as children (:class:`Child`) that run ``serve``
without the pidfile and say on a pipe when they are ready and how they ended.

:class:`Keeper` is their common life: set up, then one thread blocked in
``poll`` (:meth:`Keeper.round`) that reads the children's lines, the
recorded signals, the claim and the reload relay, and reaps the children
that exited; a restart's handover (settling); with ``health=``, the
endpoint answered in the service's place while no child runs
(:meth:`Keeper.answer_probes`, ``_between_runs``: in this loop, and not at
all once a child is forked); a stop asked for again, passed on to the
children with ``drain=`` (it ends their drain); the record of the end and the
pidfile.  A subclass says which children it has, what is due when
(``phase_deadline``, ``on_time``), what a child's line means to it, and what
to do when one ends.  Its phase (``_phases``) changes only through
:meth:`Keeper.enter`, checked against the subclass's table.
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
from ._heartbeat import reset, silence, unarmed
from ._hygiene import die_with_parent
from ._notify import Notifier
from ._phases import STATE_SUFFIX, Phase, SupervisorState, check
from ._platform_process import ProcessHandle
from ._runtime import (
    claim_answers,
    handed_on,
    let_go_for_successor,
    link_manager,
    listen_for_control,
    prepare_process,
    release_listeners,
    serve,
    take_the_pidfile,
)
from ._signal_path import SignalPath, read_recorded, reload_requests, reopen_logs_or_say
from ._watchdog import ABORT_GRACE, hang_message, unarmed_message
from ._worker import become_worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Mapping

    from ._config import Service
    from ._health import Connections
    from ._hygiene import Credentials
    from ._pidfile import PidFile
    from ._reload_relay import ReloadRelay

__all__ = ["Child", "Keeper", "describe_end", "status_of"]

OVER = (Phase.DONE, Phase.GAVE_UP)
# Not written for status: a keeper a restart replaces stops after its successor wrote its own.
_UNSAID = (Phase.STOPPING, *OVER)
# After a stop, what a run left gets at least this long between SIGTERM and SIGKILL.
_LEAST_FOR_LEFTOVERS = 0.2


class Child:
    """One run of the service: its pid, a handle on it, the pipe it talks on, what it said."""

    def __init__(self, pid: int, channel_fd: int, heartbeats: mmap.mmap | None) -> None:
        self.pid = pid
        self.process = ProcessHandle.of_child(pid)
        self.channel_fd: int | None = channel_fd
        os.set_blocking(channel_fd, False)
        self.heartbeats = heartbeats  # the slot it beats into, with a watchdog
        self.buffer = b""
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.ready = False
        self.entered_main = False
        self.early_end: str | None = None  # "fail REASON" or "done STATUS" before ready
        self.exception: str | None = None  # from its "exit" line
        self.hung: float | None = None  # the watchdog's limit, once it ended it
        self.said_unarmed = False  # that it had not beaten once, watchdog seconds in
        self.kill_at: float | None = None  # SIGKILL after a stop or SIGABRT

    def read_lines(self) -> list[str]:
        """The whole lines it wrote since the last call (its pipe is closed at its end)."""
        assert self.channel_fd is not None
        while True:
            try:
                chunk = os.read(self.channel_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                os.close(self.channel_fd)
                self.channel_fd = None
                break
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]

    def hear(self, line: str) -> str:
        """Note what ``line`` says of this run; return its first word for the keeper."""
        word, _, rest = line.partition(" ")
        if word == "main":
            self.entered_main = True
        elif word == "ready":
            self.ready = True
        elif word in ("fail", "done") and not self.ready:
            self.early_end = line
        elif word == "exit":
            _, _, exception = rest.partition(" ")
            self.exception = exception or None
        return word

    def watch(self, poller: select.poll) -> int | None:
        """Have ``poller`` watch its pipe and its exit; its exit descriptor (None: polling)."""
        exit_fd = self.process.fileno()
        if exit_fd is not None:
            poller.register(exit_fd, select.POLLIN)
        if self.channel_fd is not None:
            poller.register(self.channel_fd, select.POLLIN)
        return exit_fd

    def is_hung(self, limit: float) -> bool:
        """No heartbeat for ``limit`` seconds (its slot says so, not while it ends)."""
        return self.heartbeats is not None and silence(self.heartbeats) > limit

    def is_unarmed(self, limit: float) -> bool:
        """Nothing beat once in ``limit`` seconds since it began (not hung: unarmed)."""
        return self.heartbeats is not None and unarmed(self.heartbeats) > limit

    def close(self) -> None:
        """Let go of its handle and its pipe."""
        self.process.close()
        if self.channel_fd is not None:
            os.close(self.channel_fd)
            self.channel_fd = None


class Keeper(SignalPath):
    """The daemon that holds the pidfile and keeps the service's children; see the module."""

    PHASES: Mapping[str, frozenset[str]]  # the changes of phase this keeper may make

    def __init__(self, service: Service, pidfile: PidFile, startup: StartupChannel | None) -> None:
        self.service = service
        self.config = service.config
        self.policy = service.config.restart
        self.pidfile = pidfile
        self.startup = startup
        # Detached, the logs are ours to reopen; in the foreground (``run``) the
        # streams are the caller's, and a manager may be told of us instead.
        self.detached = startup is not None
        self.notifier = Notifier({})
        # A handover's new keeper: the restart's pipe, watched until it closes
        # (``_handover.settle``); until then it is not the service, and keeps quiet.
        self.settling = startup if pidfile.adopted else None
        if self.settling is not None:
            self.settling.hold()
        self.pid = os.getpid()
        self.started = time.time()
        self.phase = Phase.STARTING  # changed by ``enter`` only
        self.state = SupervisorState(self.pid)
        self.stopping: int | None = None  # the stop signal, once one came
        self.stop_asked_at: float | None = None  # when (monotonic)
        self.control: ControlServer | None = None
        self.claim: ControlServer | None = None
        self.record_fd = -1
        self.ending: tuple[int, str | None, str | None] | None = None  # status, exception, failed
        self.starter_removes_pidfile = False  # it heard of a failed start, and shares the lock
        self.relay: ReloadRelay | None = None  # made at the first reload
        self.endpoint: Connections | None = None  # health='s, answered by us while no child runs

    # -- what a subclass says ---------------------------------------------------------

    def begin(self) -> None:
        """Fork the first children."""
        raise NotImplementedError

    def children(self) -> list[Child]:
        """The children running now."""
        raise NotImplementedError

    def heard(self, child: Child, word: str) -> None:
        """``child`` wrote a line whose first word is ``word`` (noted in it already)."""
        raise NotImplementedError

    def child_ended(self, child: Child) -> None:
        """``child`` exited: reap it (:meth:`reap`) and act on it."""
        raise NotImplementedError

    def phase_deadline(self) -> float | None:
        """When the phase has something to do (``time.monotonic()``): ``on_time`` does it."""
        raise NotImplementedError

    def on_time(self) -> None:
        """Do what has come due."""
        raise NotImplementedError

    def stop(self, signum: int) -> None:
        """Stop the children, then end."""
        raise NotImplementedError

    def unhealthy(self) -> str | None:
        """Why the service is not healthy (the ``health`` command), or None."""
        raise NotImplementedError

    def reloadable(self) -> tuple[int, Callable[[], None]] | None:
        """The child to ask for a reload, and how to signal; None while none is ready."""
        raise NotImplementedError

    def between_runs(self) -> str:
        """What the endpoint's ``/readyz`` says while no child runs (``answer_probes``)."""
        raise NotImplementedError

    # -- the life of the keeper ----------------------------------------------------------

    def run(self, credentials: Credentials | None) -> int:
        """Set up, keep the children until the end, record it; return the exit status."""
        with _signals.Handlers() as handlers:
            self.record_fd = handlers.install(self.service.hooks.on_signal)
            try:
                take_the_pidfile(self.service, self.pidfile, self.pid)
                # The children die with the keeper: its lifeline, where the kernel
                # may lack the signal, and (privileges dropped next) ctypes, imported
                # while we still may read every directory.
                from ._hygiene import prepare_to_be_died_with  # noqa: PLC0415

                prepare_to_be_died_with(dropping_privileges=credentials is not None)
                prepare_process(self.service, credentials)  # the children inherit it all
                if not self.detached:
                    self.notifier = link_manager()  # the children do not inherit it
                self.control = listen_for_control(self.config.pidfile)
                self.claim = listen_for_claimants(self.pidfile.path)
                self.begin()
                self.save_state()
                while self.phase not in OVER:
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
        settling, endpoint = self.settling, self.endpoint
        watched = self.watch_all(poller)
        # Only polling tells when a child without an exit descriptor exits.
        polled = any(exit_fd is None for _, exit_fd in watched)
        ready = {fd for fd, _ in poller.poll(self.poll_timeout(polled=polled, endpoint=endpoint))}
        for child, _ in watched:
            if child.channel_fd in ready:
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
        for child, exit_fd in watched:
            if child in self.children() and _exited(child.process, exit_fd, ready):
                self.child_ended(child)
        if endpoint is not None and endpoint is self.endpoint:
            # Non-blocking and bounded: no client delays the restart below.
            endpoint.handle(poller, ready)
        self.on_time()

    def watch_all(self, poller: select.poll) -> list[tuple[Child, int | None]]:
        """Have ``poller`` watch what a round waits for; the children, each with its exit fd."""
        poller.register(self.record_fd, select.POLLIN)
        # Not the control socket: its requests are taken up at the SIGHUP that
        # follows them, and one queued without it would keep poll() from sleeping;
        # nor, while settling, the claim, which is answered only once settled.
        claim = None if self.claim is None or self.settling is not None else self.claim.fileno()
        relay = None if self.relay is None else self.relay.fileno()
        for fd in (claim, relay):
            if fd is not None:
                poller.register(fd, select.POLLIN)
        watched = [(child, child.watch(poller)) for child in self.children()]
        settling = self.settling
        if settling is not None and settling.fileno() >= 0:
            poller.register(settling.fileno(), 0)  # POLLERR alone: the restart closed it
        if self.endpoint is not None:
            self.endpoint.watch(poller)
        return watched

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

    def unready(self) -> str | None:
        """Why the service takes no traffic (``health --ready``), once it is healthy."""
        if self.stopping is not None:
            return "stopping"
        return None

    def enter(self, phase: str) -> None:
        """Change phase (the one place that does, checked: ``_phases``); tell status."""
        self.phase = self.state.phase = check(self.phase, phase, self.PHASES)
        if phase not in _UNSAID:
            self.save_state()

    def end(self, status: int, exception: str | None, failed: str | None = None) -> None:
        """The keeper is done (or gave up, ``failed`` says why): it exits after this round."""
        self.ending = (status, exception, failed)
        self.enter(Phase.DONE if failed is None else Phase.GAVE_UP)

    # -- the children ------------------------------------------------------------------

    def fork_child(self, heartbeats: mmap.mmap | None, worker: int | None = None) -> Child:
        """Fork a run of the service (worker ``worker``, if one); in the child, never return."""
        self.stop_answering()  # the child answers the endpoint now
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:  # no descriptor left (ulimit -n)
            raise DetachError(f"cannot create the pipe to the service: {exc.strerror}") from exc
        if heartbeats is not None:
            reset(heartbeats)
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            self.become_service(write_end, heartbeats, worker)
        os.close(write_end)
        return Child(pid, read_end, heartbeats)

    def become_service(
        self, channel_fd: int, heartbeats: mmap.mmap | None, worker: int | None
    ) -> None:
        status = 1
        try:
            die_with_parent(signal.SIGKILL, self.pid)  # never outlive the keeper
            # The keeper's sockets and its other children's handles and pipes:
            # the service makes its own (its signal pipes the registry's fork
            # hook closed already).
            self.close_sockets()
            for sibling in self.children():
                sibling.close()
            if worker is not None:
                become_worker(worker)
            channel = StartupChannel(channel_fd, supervised=True)
            status = serve(
                self.service,
                None,
                startup=channel,
                heartbeats=heartbeats,
                replaced=lambda: self.pidfile.handed_on_seen_by(self.pid),
            )
        except SystemExit as exc:
            status = exit_status(exc.code)
        except BaseException:  # noqa: BLE001 -- everything must end here, in the child
            import traceback  # noqa: PLC0415

            last_words(traceback.print_exc)
        finally:
            exit_daemon(status)

    def read_child(self, child: Child) -> None:
        """Read the lines the child wrote, and act on each."""
        for line in child.read_lines():
            self.heard(child, child.hear(line))

    def reap(self, child: Child) -> int:
        """The exited child's last lines read, its wait status; its handle and pipe closed."""
        if child.channel_fd is not None:
            self.read_child(child)  # its last lines
        wait_status = child.process.reap()
        child.close()
        return wait_status

    def end_what_it_left(self, whose: str) -> None:
        """End what the runs started and left running, before anything else runs.

        Only when no child runs: what it looks for is everything this
        process started, its running children too.
        """
        from ._descendants import describe, end_run, killed, this_run  # noqa: PLC0415 -- a run ended

        try:
            left = end_run(this_run(group=os.getpgrp()), self.time_for_leftovers())
        except OSError as exc:
            self.say(f"cannot end what {whose} left running: {exc}")
            return
        if left:
            self.say(f"ended {describe(left)} {whose} left running{killed(left)}")

    def time_for_leftovers(self) -> float:
        """Seconds what a run left may take to end after SIGTERM, before SIGKILL.

        After a crash, ``stop_timeout``: nothing drains there, and the next
        run waits for it.  After a stop, what is left of ``kill_after`` since
        it, less a margin to exit in: the whole stop fits in what ``stop``,
        systemd or a pod's grace period allow, which count from the same
        signal, and which SIGKILL this process at its end.
        """
        config = self.config
        if self.stop_asked_at is None:
            return config.stop_timeout
        margin = min(0.5, config.kill_after / 4)
        left = self.stop_asked_at + config.kill_after - margin - time.monotonic()
        return max(left, min(_LEAST_FOR_LEFTOVERS, config.stop_timeout))

    def stop_asked(self, signum: int) -> None:
        """A stop signal came: remember which, and when."""
        self.stopping = signum
        self.stop_asked_at = time.monotonic()

    def report_failed_start(self, child: Child, ended: str, who: str = "the service") -> None:
        """Tell ``start`` that ``who`` (``child``) failed before it was ready, and why."""
        assert self.startup is not None
        early = child.early_end or ""
        word, _, rest = early.partition(" ")
        if word == "done":
            self.pidfile.remove()  # before "done": start then leaves it to us
            self.startup.finished(int(rest) if rest.isdigit() else 0)
        else:
            prefix = "" if who == "the service" else f"{who}: "
            reason = f"{prefix}{rest}" if word == "fail" and rest else f"{who} {ended}"
            self.starter_removes_pidfile = self.startup.fail(reason)
        self.startup = None

    def watch(self, child: Child) -> bool:
        """The watchdog's round for ``child``: end it if hung (True); say once it never beat."""
        limit = self.config.watchdog
        assert limit is not None
        if child.hung is None and child.is_hung(limit):
            child.hung = limit
            self.say(hang_message(limit, child.pid))
            child.process.send(signal.SIGABRT)  # faulthandler writes its stacks, then it dies
            child.kill_at = time.monotonic() + ABORT_GRACE
            return True
        if not child.said_unarmed and child.is_unarmed(limit):
            child.said_unarmed = True
            self.say(unarmed_message(limit, child.pid))
        return False

    def end_never_ready(self, child: Child, now: float) -> None:
        """A restarted child that never gets ready: start_timeout, as for a start."""
        child.early_end = f"fail not ready within {self.config.start_timeout:g}s"
        child.hung = self.config.start_timeout
        child.process.send(signal.SIGTERM)
        child.kill_at = now + self.config.kill_after

    @staticmethod
    def kill_if_due(child: Child, now: float) -> None:
        """SIGKILL ``child`` once its ``kill_at`` has come."""
        if child.kill_at is not None and now >= child.kill_at:
            child.kill_at = None
            child.process.send(signal.SIGKILL)

    # -- the health endpoint, while no child answers it --------------------------------

    def answer_probes(self) -> None:
        """With ``health=``, answer its probes until the next fork (``_between_runs``)."""
        if self.config.health is None or self.endpoint is not None:
            return
        from ._between_runs import SupervisorAnswers  # noqa: PLC0415 -- health=
        from ._health import Connections  # noqa: PLC0415 -- health= only
        from ._listeners import open_health  # noqa: PLC0415 -- loaded with the service already

        try:
            listener = open_health(self.config.health)  # the one bound by start, held since
        except OSError as exc:
            self.say(f"cannot answer the health endpoint while restarting: {exc}")
            return
        answers = SupervisorAnswers(
            self.config, self.started, self.between_runs, self.state.to_json
        )
        self.endpoint = Connections(listener, answers)

    def stop_answering(self) -> None:
        """Accept no more; answer what was accepted (the listener stays: the children's next)."""
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.finish()

    # -- signals and requests ---------------------------------------------------------

    def handle_signals(self) -> None:
        for recorded in read_recorded(self.record_fd, limit=sys.maxsize):
            self.dispatch(recorded)

    def handle_stop(self, signum: int) -> None:
        """SIGTERM, SIGINT: stop the service, then end; asked again while stopping, pass it on."""
        if self.phase == Phase.STOPPING:
            if self.stopping is None:  # ending of its own (the arbiter gave up): now asked to
                self.stop_asked(signum)
            self.stop_again()
        else:
            self.stop(signum)

    def stop_again(self) -> None:
        """A stop asked for again: with ``drain=``, the children hear it too (it ends the drain).

        Their SIGKILL stays where the first stop put it.  Without a drain a
        child has nothing to end early, and is left to its stop.
        """
        if self.config.drain > 0:
            for child in self.children():
                child.process.send(signal.SIGTERM)

    def handle_reload(self) -> None:
        """SIGHUP: reopen our logs; have the service reload; the relay answers the requests."""
        requests = reload_requests(self.control)
        if self.detached:
            reopen_logs_or_say(self.config.stdout, self.config.stderr)
        if self.relay is None:
            from ._reload_relay import ReloadRelay  # noqa: PLC0415 -- a keeper that reloads

            where = (self.config.pidfile, self.pidfile.owners)
            self.relay = ReloadRelay(self.reloadable, self.config.start_timeout, where)
        self.relay.reload(requests)

    def handle_signal(self, signum: int) -> None:
        """An ``on_signal`` signal: passed on to the children as it is."""
        for child in self.children():
            child.process.send(signum)

    # -- the end ------------------------------------------------------------------------

    def finish(self, status: int, exception: str | None, failed: str | None) -> None:
        """Record the keeper's run; remove the pidfile, or leave it when it gave up."""
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


def _exited(process: ProcessHandle, exit_fd: int | None, ready: set[int]) -> bool:
    """Whether a child has exited: its exit descriptor is ready, or (polling) it says so."""
    return exit_fd in ready if exit_fd is not None else process.has_exited()


def describe_end(child: Child, wait_status: int) -> str:
    """How a run ended, in words: "was killed by SIGKILL", "raised ValueError: boom"..."""
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


def status_of(wait_status: int) -> int:
    """A wait status as an exit status (128 + the signal for a killed run)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)
