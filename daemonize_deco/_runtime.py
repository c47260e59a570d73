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

from . import _notify, _signals
from ._control import ControlServer
from ._detach import flush_standard_streams
from ._errors import describe, exit_status, last_words
from ._hygiene import drop_privileges, prevent_core_dumps, set_process_name
from ._ready import arm as _arm_readiness
from ._ready import disarm as _disarm_readiness
from ._ready import forget_in_child as _forget_readiness
from ._ready import ready

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import Service
    from ._detach import StartupChannel
    from ._dispatch import Dispatcher
    from ._hygiene import Credentials
    from ._pidfile import PidFile

__all__ = ["ready", "serve", "served_here", "threads_left_behind"]

# Variables through which a manager talks to its main process only; children
# we spawn must not inherit them (sd_notify's unset_environment).
_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class _Facts:
    """What this process has done as a service, for the way it exits."""

    served = False
    threads_left: tuple[str, ...] = ()
    control: ControlServer | None = None
    fork_hook = False


_facts = _Facts()


def served_here() -> bool:
    """Whether this process has run a service (and so may have its threads to wait for)."""
    return _facts.served


def threads_left_behind() -> tuple[str, ...]:
    """Names of main's threads still running ``stop_timeout`` after it returned."""
    return _facts.threads_left


def _call_main(main: Callable[[], object], service_pid: int) -> tuple[int, str]:
    """Run ``main``; return its exit status and, for a failure, a one-line reason."""
    try:
        result = main()
    except BaseException as exc:
        if os.getpid() != service_pid:
            raise  # a child main forked, leaving: not the service's outcome
        if isinstance(exc, SystemExit):
            return exit_status(exc.code), f"SystemExit: {exc.code}"
        import traceback  # noqa: PLC0415 -- only a failing main pays for it

        last_words(traceback.print_exc)
        return 1, describe(exc)
    if os.getpid() != service_pid:
        # A forked child returned from main: end it as main's return would end a script.
        raise SystemExit(result)
    return exit_status(result), "main returned before it was ready"


def _wait_for_threads(timeout: float) -> tuple[str, ...]:
    """Join main's non-daemon threads, up to ``timeout``; return those still running.

    The interpreter would wait for them at exit; waiting here, before the
    pidfile is released, keeps "running" true while they still write.
    """
    threading = sys.modules.get("threading")
    if threading is None:
        return ()
    from ._dispatch import wait_in_slices  # noqa: PLC0415 -- loaded with the dispatcher

    me = threading.current_thread()

    def all_ended(seconds: float) -> bool:
        running = [t for t in threading.enumerate() if t is not me and not t.daemon]
        if running:
            running[0].join(seconds)
        return not any(t.is_alive() for t in running)

    wait_in_slices(all_ended, timeout)
    return tuple(t.name for t in threading.enumerate() if t is not me and not t.daemon)


def _die_now(pidfile: PidFile) -> Callable[[int], None]:
    """A second Ctrl-C in the foreground: remove the pidfile and exit at once (128+signal).

    It runs in the signal handler (or, when the main thread is stuck in C
    code, on the dispatcher thread), hence ``_exit``: nothing interrupted
    will ever resume, so nothing can see it half-done.  Both may get there
    for the same signal: the first one ends the process.
    """
    dying = _thread.allocate_lock()

    def die(signum: int) -> None:
        if not dying.acquire(blocking=False):
            return  # the other thread is ending the process already
        pidfile.remove()
        try:
            flush_standard_streams()
        except RuntimeError:
            pass  # the interrupted code was writing to that stream: its line is lost
        os._exit(128 + signum)

    return die


def _link_manager() -> _notify.Notifier:
    notifier = _notify.Notifier()
    for variable in _MANAGER_VARIABLES:
        os.environ.pop(variable, None)
    _notify.attach(notifier)
    return notifier


def _listen() -> ControlServer | None:
    try:
        return ControlServer()
    except OSError as exc:
        print(
            f"daemonize_deco: no control socket, reload is unacknowledged: {exc}", file=sys.stderr
        )
        return None


def _prepare_process(service: Service, credentials: Credentials | None) -> None:
    set_process_name(service.config.name)
    if service.config.prevent_core:
        prevent_core_dumps()
    if credentials is not None:
        # After the pidfile is locked and the logs are open: the service can
        # still write them, and can never regain root.
        drop_privileges(credentials)


def _not_the_service_in_child() -> None:
    """At a fork in the service, in the child: let go of what only the service may use."""
    _forget_readiness()
    _notify.attach(_notify.Notifier({}))
    if _facts.control is not None:
        _facts.control.close()  # a leftover child must not keep the socket's name
        _facts.control = None


def serve(
    service: Service,
    pidfile: PidFile,
    *,
    credentials: Credentials | None = None,
    startup: StartupChannel | None = None,
) -> int:
    """Run ``service.main`` as the service holding ``pidfile``; return the exit status.

    With a ``startup`` channel (a detached daemon), a failure before ready is
    reported through it and the starting process, which shares the lock,
    removes the pidfile.  Without one (the foreground), a second stop signal
    exits at once.
    """
    _facts.served = True
    if not _facts.fork_hook:
        os.register_at_fork(after_in_child=_not_the_service_in_child)
        _facts.fork_hook = True
    service_pid = os.getpid()
    config, hooks = service.config, service.hooks
    is_init = service_pid == 1
    extra = [*hooks.on_signal, *([signal.SIGCHLD] if is_init else [])]
    on_repeat = _die_now(pidfile) if startup is None else None
    # Imported here: the dispatcher needs threading, which only a service needs.
    from ._dispatch import Dispatcher  # noqa: PLC0415

    dispatcher: Dispatcher | None = None
    try:
        record_fd = _signals.install(extra, on_repeat=on_repeat)
        pidfile.write_pid(service_pid)
        pidfile.keep_out_of_forks()
        _prepare_process(service, credentials)
        notifier = _link_manager()
        _facts.control = _listen()
        dispatcher = Dispatcher(
            record_fd=record_fd,
            hooks=hooks,
            notifier=notifier,
            control=_facts.control,
            logs=None if startup is None else (config.stdout, config.stderr),
            on_repeat=on_repeat,
            reap_children=is_init,
        )
        dispatcher.start()
        _arm_readiness(startup)
        if not config.wait_ready:
            ready()
        status, failure = _call_main(service.main, service_pid)
        _facts.threads_left = _wait_for_threads(config.stop_timeout)
    except BaseException:
        if os.getpid() != service_pid:
            raise  # a forked child unwinding: nothing here is its to clean up
        _end_service(dispatcher, config.stop_timeout)
        if startup is None:
            pidfile.remove()  # detached, the starting process reports it and removes it
        raise
    was_ready = _end_service(dispatcher, config.stop_timeout)
    if _facts.threads_left:
        names = ", ".join(_facts.threads_left)
        last_words(
            lambda: print(
                f"daemonize_deco: main returned, but its threads {names} were still running "
                f"{config.stop_timeout:g}s later; exiting without them",
                file=sys.stderr,
            )
        )
    if startup is not None and not was_ready and startup.fail(_why_not_ready(failure)):
        pidfile.hand_over()  # the starting process, which shares the lock, removes it
    else:
        pidfile.remove()
    return status


def _end_service(dispatcher: Dispatcher | None, stop_timeout: float) -> bool:
    """Stop the dispatcher, the control socket and the handlers; return whether it was ready."""
    was_ready = _disarm_readiness()
    if dispatcher is not None:
        dispatcher.stop(stop_timeout)
    if _facts.control is not None:
        _facts.control.close()
        _facts.control = None
    _signals.restore()
    _signals.close_record_pipe()
    return was_ready


def _why_not_ready(failure: str) -> str:
    signum = _signals.stop_signal()
    if _signals.should_stop() and signum is not None:
        return f"stopped by {_signals.signal_name(signum)} before it was ready"
    return failure
