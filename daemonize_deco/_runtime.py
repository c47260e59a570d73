"""The service's life inside the process that runs ``main``.

The same steps whether that process is a detached daemon or ``run`` in the
foreground: install the signal registry, write our pid into the (already
locked) pidfile, name the process, drop privileges, start the dispatcher,
report readiness, call ``main``, wait for the threads it left running, turn
its outcome into an exit status, and remove the pidfile.

A child that ``main`` forks (without exec) is not the service: at the fork
it forgets the startup pipe, the control socket and the manager link, and
if it unwinds through here (``sys.exit()`` in the child) its exit is its
own business, as in any Python program.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import _thread
import os
import sys
import time

# What a start and a service load lazily elsewhere (a command such as stop
# never needs it), loaded with them: a lazy import opens a file, which a tight
# ulimit -n, or privileges dropped from the package's owner, forbids later.
import daemonize_deco._platform_descriptors
import daemonize_deco._platform_identity
import daemonize_deco._platform_parent_death

from . import _beside, _delivery, _draining, _heartbeat, _lastrun, _mark, _notify, _signals
from ._claim import HEALTH, PUT_BACK, READY, WHO, listen_for_claimants
from ._config import Service
from ._control import ControlServer, release_spare
from ._detach import flush_standard_streams
from ._errors import DetachError, PidFileError, describe, exit_status, last_words
from ._hygiene import drop_privileges, prevent_core_dumps, set_process_name
from ._platform import HAS_PIDFD, has_proc
from ._platform_sockets import control_address, prepare_directory
from ._proc import ever_started_one
from ._ready import arm as _arm_readiness
from ._ready import disarm as _disarm_readiness
from ._ready import forget_in_child as _forget_readiness
from ._ready import ready, unready
from ._served import mark_served, note_threads_left, threads_left_behind

if not HAS_PIDFD:
    import daemonize_deco._platform_polled  # noqa: F401

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Sequence
    from threading import Thread

    from ._claim import Answer
    from ._config import ServiceConfig
    from ._detach import StartupChannel
    from ._dispatch import Dispatcher
    from ._health import HealthServer
    from ._hygiene import Credentials
    from ._listening import StartWatch
    from ._pidfile import PidFile

__all__ = [
    "claim_answers",
    "handed_on",
    "let_go_for_successor",
    "link_manager",
    "listen_for_control",
    "prepare_process",
    "ready",
    "release_listeners",
    "serve",
    "take_the_pidfile",
]

# Variables through which a manager talks to its main process only; children
# we spawn must not inherit them (sd_notify's unset_environment), nor take
# supervisord's mark for "stay in the foreground" to a start of their own.
_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SUPERVISOR_ENABLED")


class _Facts:
    """What this process holds as a service: its sockets and its fork hook."""

    control: ControlServer | None = None
    claim: ControlServer | None = None
    health: HealthServer | None = None
    fork_hook = False


_facts = _Facts()
_CALLS_MAIN = Service.call_main.__code__  # where main's frames begin, for ``_delivery``


class Outcome:
    """How ``main`` ended: its exit status and, when it raised, ``Type: message``."""

    __slots__ = ("cause", "exception", "returned", "status")

    def __init__(
        self,
        status: int,
        *,
        exception: str | None = None,
        returned: bool = True,
        cause: str | None = None,
    ):
        self.status = status
        self.exception = exception
        self.returned = returned  # False: sys.exit() or an exception
        self.cause = cause  # the exception sys.exit() was called while handling

    def reason(self) -> str:
        """Why a start failed, had this happened before the service was ready."""
        if self.exception is not None:
            return self.exception
        if self.status != 0:
            exited = f"main exited with status {self.status}"
            return exited if self.cause is None else f"{self.cause} ({exited})"
        return "main returned before it called ready()"


def _call_main(main: Callable[[], object], service_pid: int, name: str) -> Outcome:
    """Run ``main``; return how it ended, saying a non-zero status in the log."""
    try:
        result = main()
    except BaseException as exc:
        if os.getpid() != service_pid:
            raise  # a child main forked, leaving: not the service's outcome
        if isinstance(exc, SystemExit):
            outcome = Outcome(exit_status(exc.code), returned=False, cause=_why_it_exited(exc))
        elif isinstance(exc, KeyboardInterrupt) and _signals.main_interrupted():
            return Outcome(0)  # the stop, delivered as Ctrl-C (``_delivery``): no failure
        else:
            import traceback  # noqa: PLC0415 -- only a failing main pays for it

            last_words(traceback.print_exc)
            return Outcome(1, exception=describe(exc), returned=False)
    else:
        if os.getpid() != service_pid:
            # A forked child returned from main: end it as main's return would end a script.
            raise SystemExit(result)
        outcome = Outcome(exit_status(result))
    if outcome.status != 0:
        # Python says nothing for a non-zero status: the log would be empty after a failure.
        said = "returned" if outcome.returned else "exited with status"
        last_words(lambda: print(f"{name}: main {said} {outcome.status}", file=sys.stderr))
    return outcome


def _why_it_exited(exc: SystemExit) -> str | None:
    """The error a ``sys.exit()`` was called for: raised from, or while handling, it.

    A framework that logs a failure and exits with a status of its own
    (uvicorn's ``sys.exit(3)`` for a port in use) leaves the reason there.
    """
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        if not isinstance(cause, (SystemExit, KeyboardInterrupt, GeneratorExit)) and (
            type(cause).__name__ != "CancelledError"
        ):
            return describe(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _wait_for_threads(timeout: float) -> tuple[str, ...]:
    """Join main's non-daemon threads, up to ``timeout``; return those still running.

    The interpreter would wait for them at exit; waiting here, before the
    pidfile is released, keeps "running" true while they still write.
    """
    threading = sys.modules.get("threading")
    if threading is None:
        return ()
    from ._dispatch import wait_in_slices  # noqa: PLC0415 -- loaded with the dispatcher

    # threading first imported by the dispatcher (a _thread: subprocess, psutil) takes
    # it for the main thread, which never ends: it is none of main's threads.
    ours = (threading.current_thread(), threading.main_thread())

    def left() -> list[Thread]:
        return [t for t in threading.enumerate() if t not in ours and not t.daemon]

    def all_ended(seconds: float) -> bool:
        running = left()
        if running:
            running[0].join(seconds)
        return not any(t.is_alive() for t in running)

    wait_in_slices(all_ended, timeout)
    return tuple(t.name for t in left())


def _die_now(pidfile: PidFile, options: str | None) -> Callable[[int], None]:
    """A second Ctrl-C in the foreground: remove the pidfile and exit at once (128+signal).

    ``options`` is the file of the options it runs with: removed too.

    It runs in the signal handler (or, when the main thread is stuck in C
    code, on the dispatcher thread), hence ``_exit``: nothing interrupted
    will ever resume, so nothing can see it half-done.  Both may get there
    for the same signal: the first one ends the process.
    """
    dying = _thread.allocate_lock()

    def die(signum: int) -> None:
        if not dying.acquire(blocking=False):
            return  # the other thread is ending the process already
        ours = not pidfile.handed_on()  # (handed on: the successor's options now)
        pidfile.remove()
        if ours and options is not None:
            _beside.remove(options)
        _signal_what_it_started(signal.SIGTERM)  # no wait: what they do on it is theirs
        try:
            flush_standard_streams()
        except RuntimeError:
            pass  # the interrupted code was writing to that stream: its line is lost
        os._exit(128 + signum)

    return die


def _options_file(service: Service) -> str | None:
    """Where the options it runs with are kept (``_options``), if it takes any."""
    if not service.signature:
        return None
    from ._remembered_options import OPTIONS_SUFFIX  # noqa: PLC0415 -- a small record

    return service.config.pidfile + OPTIONS_SUFFIX


def _signal_what_it_started(signum: int) -> None:
    """Send ``signum`` to the run's processes (``_descendants``): a run ending at once.

    Nothing here may keep the process from ending: the user asked twice.
    """
    try:
        if not ever_started_one():
            return
        from ._descendants import signal_run, this_run  # noqa: PLC0415 -- rare: a second Ctrl-C

        signal_run(this_run(), signum)
    except Exception:  # noqa: BLE001 -- whatever it was, exiting comes first
        return


def link_manager() -> _notify.Notifier:
    """The link to a manager (systemd's ``NOTIFY_SOCKET``), taken from the environment.

    Children started later do not inherit it: they are not the manager's main process.
    """
    notifier = _notify.Notifier()
    for variable in _MANAGER_VARIABLES:
        os.environ.pop(variable, None)
    _notify.attach(notifier)
    return notifier


def listen_for_control(pidfile: str) -> ControlServer | None:
    """The control socket (for acknowledged reloads); None, said in the log, when it cannot be.

    ``pidfile``: where the service's socket files are, where there are no abstract names.
    Where no ``/proc`` shows another process's descriptors, the socket's file
    is how commands tell this service from a process that only has its pid
    (``_platform_sockets.vouches_for``): without it the start fails.
    """
    try:
        return ControlServer(control_address(pidfile))
    except OSError as exc:
        if not has_proc():
            reason = exc.strerror or str(exc)
            raise DetachError(f"cannot create its control socket: {reason}") from exc
        print(
            f"daemonize_deco: no control socket, reload is unacknowledged: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return None


def _claim_identity(pidfile: PidFile) -> ControlServer | None:
    claim = listen_for_claimants(pidfile.path)
    if claim is None:
        print(
            f"daemonize_deco: another process holds the claim on {pidfile.path}; "
            "should the pidfile be deleted, commands will not find this service",
            file=sys.stderr,
        )
    return claim


def claim_answers(
    pidfile: PidFile,
    claim: ControlServer,
    *,
    accepts: bool = True,
    unhealthy: Callable[[], str | None] = lambda: None,
    unready: Callable[[], str | None] = lambda: None,
) -> dict[str, Answer]:
    """What the claim socket answers: put the pidfile back; hand the sockets over; health.

    ``accepts`` is False in a supervisor: its service accepts on the sockets.
    ``unhealthy()`` says why the service is not healthy, or None (the
    ``health`` command: that it is answered at all is half the answer).
    """

    def put_back() -> tuple[str, Sequence[int]]:
        if pidfile.handed_on():
            return "error it has handed its pidfile on to a new instance", ()
        try:
            return ("ok put back" if pidfile.put_back(os.getpid()) else "ok"), ()
        except PidFileError as exc:
            return f"error {exc}", ()

    def health() -> tuple[str, Sequence[int]]:
        why = unhealthy()
        return ("ok" if why is None else f"error {why}"), ()

    def ready() -> tuple[str, Sequence[int]]:
        why = unhealthy() or unready()
        return ("ok" if why is None else f"error {why}"), ()

    answers: dict[str, Answer] = {
        PUT_BACK: put_back, WHO: lambda: (f"ok {os.getpid()}", ()), HEALTH: health,
        READY: ready,
    }  # fmt: skip
    if "daemonize_deco._listeners" in sys.modules:  # loaded by listen=: sockets to hand over
        from ._handover import REQUEST, offering  # noqa: PLC0415

        answers[REQUEST] = lambda: offering(pidfile, claim, accepts=accepts)
    return answers


def prepare_process(service: Service, credentials: Credentials | None) -> None:
    """Name the process, forbid core dumps, drop privileges: as the service's config says."""
    set_process_name(service.config.name)
    if service.config.prevent_core:
        prevent_core_dumps()
    if credentials is not None:
        # Its socket directory, where there are no abstract names: one it may not make as itself.
        prepare_directory(service.config.pidfile, credentials.uid)
        # After the pidfile is locked and the logs are open: the service can
        # still write them, and can never regain root.
        drop_privileges(credentials)


def _not_the_service_in_child() -> None:
    """At a fork in the service, in the child: let go of what only the service may use."""
    _forget_readiness()
    _notify.attach(_notify.Notifier({}))
    for server in (_facts.control, _facts.claim):
        if server is not None:
            server.close()  # a leftover child must not keep the socket's name
    _facts.control = _facts.claim = None
    if _facts.health is not None:
        _facts.health.forget_in_child()
        _facts.health = None


def serve(
    service: Service,
    pidfile: PidFile | None,
    *,
    credentials: Credentials | None = None,
    startup: StartupChannel | None = None,
    heartbeats: mmap.mmap | None = None,
    replaced: Callable[[], bool] | None = None,
) -> int:
    """Run ``service.main`` as the service holding ``pidfile``; return the exit status.

    With a ``startup`` channel (a detached daemon), a failure before ready is
    reported through it and the starting process, which shares the lock,
    removes the pidfile.  Without one (the foreground), a second stop signal
    exits at once.  Either way the run's end is recorded beside the pidfile.
    With no ``pidfile``, the service is a supervisor's child (``_supervisor``):
    the supervisor holds the pidfile, the claim and the record, and hears how
    the run ended on the (supervised) ``startup`` channel; ``heartbeats`` is
    the slot it reads them from, and ``replaced()`` tells whether a restart
    handed the supervisor's sockets on (then a stop needs no ``drain=``).
    """
    mark_served()
    _mark.drop_command_badge()  # ``run``, ``start`` under a manager: a service now
    if not _facts.fork_hook:
        os.register_at_fork(after_in_child=_not_the_service_in_child)
        _facts.fork_hook = True
    service_pid = os.getpid()
    started = time.time()
    config, hooks = service.config, service.hooks
    is_init = service_pid == 1
    extra = [*hooks.on_signal, *([signal.SIGCHLD] if is_init else [])]
    on_repeat = None
    if startup is None and pidfile is not None:
        on_repeat = _die_now(pidfile, _options_file(service))
    # Imported here: the dispatcher needs threading, which only a service needs.
    from ._dispatch import Dispatcher  # noqa: PLC0415
    from ._listening import StartWatch  # noqa: PLC0415 -- its start watch, loaded with it

    def unhealthy() -> str | None:
        return _heartbeat.staleness(_heartbeat.silence_limit(config.watchdog))

    # The handlers stay until the run is accounted for: a SIGTERM from a second
    # ``stop`` must not kill the process while it writes its record.
    with _signals.Handlers() as handlers:
        dispatcher: Dispatcher | None = None
        try:
            record_fd = handlers.install(extra, on_repeat=on_repeat, drain=config.drain)
            if pidfile is not None:
                take_the_pidfile(service, pidfile, service_pid)
            _facts.health = _open_health(service)
            prepare_process(service, credentials)
            notifier = link_manager()
            # The claim first: a socket directory another user planted is its to refuse.
            _facts.claim = None if pidfile is None else _claim_identity(pidfile)
            _facts.control = listen_for_control(config.pidfile)
            _watch_progress(config, notifier, heartbeats, supervised=pidfile is None)
            settle = _settling(service, pidfile, startup)
            dispatcher = Dispatcher(
                record_fd=record_fd,
                hooks=hooks,
                notifier=notifier,
                control=_facts.control,
                claim=None
                if _facts.claim is None or pidfile is None
                else (
                    _facts.claim,
                    claim_answers(pidfile, _facts.claim, unhealthy=unhealthy, unready=unready),
                ),
                logs=None if startup is None else (config.stdout, config.stderr),
                on_repeat=on_repeat,
                reap_children=is_init,
                start_watch=_start_watch(config, StartWatch),
                settle=settle,
                drain=config.drain,
                drain_record=config.pidfile if config.drain else None,
                replaced=_replaced_by_restart(config, pidfile, replaced),
            )
            _arm(config, startup, dispatcher, adopted=pidfile is not None and pidfile.adopted)
            dispatcher.start()
            _default_readiness(config, startup)
            outcome = _call_main(service.call_main, service_pid, config.name)
            _main_ended()
            _delivery.finish_in_flight(_signals.time_left(config.stop_timeout))
            _heartbeat.ending()  # what is left is bounded by stop_timeout, not the watchdog
            note_threads_left(_wait_for_threads(config.stop_timeout))
        except BaseException as exc:
            if os.getpid() != service_pid:
                raise  # a forked child unwinding: nothing here is its to clean up
            run = (service_pid, started)
            _account_for_a_failure(service, pidfile, startup, dispatcher, run=run, exc=exc)
            raise
        was_ready = _end_service(dispatcher, config.stop_timeout)
        if threads_left_behind():
            _say_threads_left(config.stop_timeout)
        _end_what_it_started(pidfile, startup, config.stop_timeout)
        _account_for_the_run(
            service, pidfile, startup, (service_pid, started), outcome, was_ready=was_ready
        )
    return outcome.status


def _settling(
    service: Service, pidfile: PidFile | None, startup: StartupChannel | None
) -> tuple[int, Callable[[], None]] | None:
    """For a handover's new instance: the restart's pipe, and what to do once it closes."""
    if pidfile is None or startup is None or not pidfile.adopted:
        return None
    # Held from now on; closed already (-1) if the restart died before this.
    startup.hold()

    def settle() -> None:
        from ._handover import settle  # noqa: PLC0415 -- loaded by the restart that forked us

        startup.close()
        if not settle(pidfile, _facts.claim, service):
            last_words(lambda: print(
                "daemonize_deco: the restart that started this instance ended before it took "
                "over (killed?); standing down, the running instance serves on",
                file=sys.stderr,
            ))  # fmt: skip
            os.kill(os.getpid(), signal.SIGTERM)

    return startup.fileno(), settle


def _account_for_a_failure(
    service: Service,
    pidfile: PidFile | None,
    startup: StartupChannel | None,
    dispatcher: Dispatcher | None,
    *,
    run: tuple[int, float],
    exc: BaseException,
) -> None:
    """The service failed before main returned (or main raised out of serve): clean up."""
    config = service.config
    _end_service(dispatcher, config.stop_timeout)
    _end_what_it_started(pidfile, startup, config.stop_timeout)
    failed = Outcome(1, exception=describe(exc))
    if pidfile is None:
        _tell_supervisor(startup, failed, was_ready=False)
    else:
        if not pidfile.adopted:  # a restart's new instance leaves them to the old one
            release_listeners()
        _record(config, *run, failed, pidfile)
        if startup is None:
            pidfile.remove()  # detached, the starting process reports it and removes it


def _end_what_it_started(
    pidfile: PidFile | None, startup: StartupChannel | None, timeout: float
) -> None:
    """End the processes the run started (``_descendants``) before it lets go of its pidfile.

    Detached, the process group made for it goes too; in the foreground the
    group is the caller's.  A supervisor's service (no pidfile) leaves all
    that to its supervisor.
    """
    if pidfile is None:
        return
    group = os.getpgrp() if startup is not None else None
    try:
        if not ever_started_one():
            return  # nothing it started can be left: no need to look at every process
        from ._descendants import end_run, this_run  # noqa: PLC0415 -- only then

        ended = end_run(this_run(group=group), _signals.time_left(timeout))
    except OSError as exc:
        why = f"daemonize_deco: cannot end what main started: {exc.strerror or exc}"
        last_words(lambda: print(why, file=sys.stderr))
        return
    if ended:
        from ._descendants import describe, killed  # noqa: PLC0415 -- loaded by end_run already

        said = f"daemonize_deco: ended {describe(ended)} main had left running{killed(ended)}"
        last_words(lambda: print(said, file=sys.stderr))


def _account_for_the_run(
    service: Service,
    pidfile: PidFile | None,
    startup: StartupChannel | None,
    run: tuple[int, float],
    outcome: Outcome,
    *,
    was_ready: bool,
) -> None:
    """Record how main ended and let go of the pidfile (or tell the supervisor)."""
    if pidfile is None:
        _tell_supervisor(startup, outcome, was_ready=was_ready)
        return
    finished = _ran_to_completion(service.config, outcome)
    if pidfile.adopted and not was_ready:
        # A restart's new instance that failed: the one it was to replace runs on,
        # with its pidfile, its records and its sockets; the restart reports it.
        _let_go_of_pidfile(pidfile, startup, was_ready=False, outcome=outcome, finished=finished)
        return
    if handed_on(pidfile):
        let_go_for_successor(pidfile)
        return
    release_listeners()
    config = service.config
    _record(config, *run, outcome, pidfile)
    if config.listen:
        _remove_unheld_restart_lock(pidfile)
    if service.signature:
        from ._remembered_options import forget  # noqa: PLC0415 -- a small record

        forget(config.pidfile)  # the options of a running service: it no longer runs
    _let_go_of_pidfile(pidfile, startup, was_ready=was_ready, outcome=outcome, finished=finished)


def _remove_unheld_restart_lock(pidfile: PidFile) -> None:
    """A restart killed left its lock file; none under way now (we would have handed on)."""
    from ._handover import remove_unheld_lock  # noqa: PLC0415 -- loaded with listen=

    remove_unheld_lock(pidfile)


def _replaced_by_restart(
    config: ServiceConfig, pidfile: PidFile | None, replaced: Callable[[], bool] | None
) -> Callable[[], bool] | None:
    """For the dispatcher: whether a restart handed the sockets on (``listen=`` and ``drain=``)."""
    if not (config.listen and config.drain):
        return None
    return pidfile.handed_on if pidfile is not None else replaced


def handed_on(pidfile: PidFile) -> bool:
    """Whether the pidfile is, or may yet be, a successor's (``_handover``): not ours to remove."""
    if pidfile.handed_on():
        return True
    handover = sys.modules.get(f"{__package__}._handover")  # loaded with listen= only
    return handover is not None and bool(handover.pending(pidfile))


def let_go_for_successor(pidfile: PidFile) -> None:
    """A restart handed everything on (``_handover``): close our copies, touch nothing else."""
    release_listeners(remove_files=False)
    pidfile.close()


def release_listeners(*, remove_files: bool = True) -> None:
    """Close this process's listening sockets and, unless told not to, remove its socket files."""
    if "daemonize_deco._listeners" in sys.modules:  # loaded by listen=: there are some
        from ._listeners import close_all  # noqa: PLC0415

        close_all(remove_files=remove_files)


def take_the_pidfile(service: Service, pidfile: PidFile, pid: int) -> None:
    """Write our pid into the locked pidfile; start a new run, its records and its mark.

    A pidfile a restart passed on (``_handover``) still names the running
    instance: the restart writes our pid once we are ready.
    """
    pidfile.keep_out_of_forks()
    # Everything the run starts carries its mark, to be ended with it.
    _mark.wear(_mark.mark_for(pidfile.path, pid))
    _lastrun.forget(service.config.pidfile)
    # A drain a SIGKILL cut short left its record; a new run (pid 1 again, in
    # a container) is not draining.
    _draining.ended(service.config.pidfile)
    if not pidfile.adopted:  # else the restart writes both once we are ready (``_handover``)
        pidfile.write_pid(pid)
        service.remember_options()


def _watch_progress(
    config: ServiceConfig,
    notifier: _notify.Notifier,
    heartbeats: mmap.mmap | None,
    *,
    supervised: bool,
) -> None:
    """With a watchdog (ours, or systemd's ``WatchdogSec``), count main's heartbeats.

    faulthandler writes every thread's stack to the log when the hung
    service gets SIGABRT.  A supervised service is watched from outside; any
    other by a thread of its own, which also sends systemd its pings.
    """
    if config.watchdog is None and notifier.watchdog_interval is None:
        return
    import faulthandler  # noqa: PLC0415 -- only a watched service pays for it

    from ._watchdog import Watchdog, round_length  # noqa: PLC0415

    faulthandler.enable(all_threads=True)
    limit = _heartbeat.silence_limit(config.watchdog) or 0.0
    _heartbeat.attach(heartbeats, round_length(limit))
    if not supervised:
        Watchdog(config.name, config.watchdog, notifier).start()


def _tell_supervisor(startup: StartupChannel | None, outcome: Outcome, *, was_ready: bool) -> None:
    """A supervised service's last words: before ready as a start's, then how it ended."""
    if startup is None:
        return
    if not was_ready:
        if outcome.status == 0 and outcome.exception is None and not _signals.should_stop():
            startup.finished(0)
        else:
            startup.fail(_why_not_ready(outcome))
    startup.ended(outcome.status, outcome.exception)


def _say_threads_left(stop_timeout: float) -> None:
    names = ", ".join(threads_left_behind())
    last_words(
        lambda: print(
            f"daemonize_deco: main returned, but its threads {names} were still running "
            f"{stop_timeout:g}s later; exiting without them",
            file=sys.stderr,
        )
    )


def _let_go_of_pidfile(
    pidfile: PidFile,
    startup: StartupChannel | None,
    *,
    was_ready: bool,
    outcome: Outcome,
    finished: bool,
) -> None:
    """Remove the pidfile, or leave it to the starting process that reports a failed start."""
    if startup is None or was_ready:
        pidfile.remove()
    elif finished:
        pidfile.remove()  # before "done": start reports success and leaves it to us
        startup.finished(outcome.status)
    elif startup.fail(_why_not_ready(outcome)):
        pidfile.close()  # the starting process, which shares the lock, removes it
    else:
        pidfile.remove()


def _start_watch(config: ServiceConfig, start_watch: type[StartWatch]) -> StartWatch | None:
    """What makes the service ready while main starts, told by the dispatcher.

    Its grace and, without ``listen=``, its first listening socket (``_listening``).
    """
    if config.wait_ready or config.start_grace == 0:
        return None
    return start_watch(
        grace=config.start_grace, start_timeout=config.start_timeout, sockets=not config.listen
    )


def _default_readiness(config: ServiceConfig, startup: StartupChannel | None) -> None:
    """Unless ``wait_ready``, the moments that count as ready besides main's ready().

    main's thread reaching its loop counts, and so does main running
    ``start_grace`` seconds: timed by the starting process (told here that
    main begins) and by the dispatcher (for systemd); a grace of 0 is ready
    at once.
    """
    if config.wait_ready:
        return
    if config.start_grace == 0:
        ready()
        return
    _signals.when_main_loops(_ready_and_tell_dispatcher)
    if startup is not None:
        startup.main_entered()


def _ready_and_tell_dispatcher() -> None:
    ready()
    _signals.wake_dispatcher()  # it forgets the grace deadline, so an idle daemon never wakes


def _ran_to_completion(config: ServiceConfig, outcome: Outcome) -> bool:
    """A one-shot job: main returned 0 before the grace ran out, without being stopped."""
    return (
        not config.wait_ready
        and outcome.status == 0
        and outcome.exception is None
        and not _signals.should_stop()
    )


def _record(
    config: ServiceConfig, pid: int, started: float, outcome: Outcome, pidfile: PidFile
) -> None:
    """Write the run's last words beside the pidfile, and give them to the pidfile.

    A service that dropped privileges may not unlink its pidfile (a
    root-owned directory, or a root-owned file in a sticky one): the pidfile
    then keeps the record instead of a pid, and says "not running".
    """
    run = _lastrun.write_end(
        config.pidfile,
        pid,
        status=outcome.status,
        started=started,
        exception=outcome.exception,
        stop_signal=_signals.stop_signal() if _signals.should_stop() else None,
    )
    # Also kept for the pidfile itself: a service that may not unlink it (a
    # root-owned file in /tmp, a root-owned directory) leaves them in it.
    pidfile.last_words = run.to_text().encode("utf-8", "backslashreplace")


def _end_service(dispatcher: Dispatcher | None, stop_timeout: float) -> bool:
    """Stop the dispatcher and close the sockets; return whether the service was ready.

    The signal handlers stay: a SIGTERM from a second ``stop`` must not kill
    the process with the default action while it writes its record and
    removes its pidfile (``serve`` restores them last).
    """
    _heartbeat.ending()  # what is left is bounded by stop_timeout, not by the watchdog
    if _facts.health is not None:
        _facts.health.close()
        _facts.health = None
    was_ready = _disarm_readiness()
    if dispatcher is not None:
        dispatcher.stop(stop_timeout)
    for server in (_facts.control, _facts.claim):
        if server is not None:
            server.close()
    _facts.control = _facts.claim = None
    release_spare()  # the service answers no more requests: the run's end may need it
    return was_ready


def _open_health(service: Service) -> HealthServer | None:
    """With ``health=``, its endpoint bound (not answering yet)."""
    if service.config.health is None:
        return None
    from ._health import open_endpoint  # noqa: PLC0415 -- only services with health=

    return open_endpoint(service)


def _arm(
    config: ServiceConfig, startup: StartupChannel | None, dispatcher: Dispatcher, *, adopted: bool
) -> None:
    """Before the dispatcher starts: the endpoint answers, readiness and stops are armed.

    A restart's new instance (``adopted``) answers the endpoint once ready.
    """
    if _facts.health is not None:
        _facts.health.start(dispatcher.answering, once_ready=adopted)
    _arm_readiness(startup)  # before the dispatcher may declare it
    _delivery.arm(config.stop_main, config.stop_timeout, _CALLS_MAIN)  # before a stop may come


def _main_ended() -> None:
    """Main has returned: no stop is delivered to it now, and it takes no more traffic."""
    if _facts.health is not None:
        from ._health import main_ended  # noqa: PLC0415 -- loaded with the endpoint

        main_ended()
    _delivery.main_ended()


def _why_not_ready(outcome: Outcome) -> str:
    signum = _signals.stop_signal()
    if _signals.should_stop() and signum is not None:
        return f"stopped by {_signals.signal_name(signum)} before it was ready"
    return outcome.reason()
