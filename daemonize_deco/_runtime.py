"""The service's life inside the process that runs ``main``.

The same steps whether that process is a detached daemon or ``run`` in the
foreground: install the signal registry, write our pid into the (already
locked) pidfile, name the process, drop privileges, start the dispatcher,
report readiness, call ``main``, turn its outcome into an exit status, and
remove the pidfile.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import os
import sys

from . import _notify, _signals
from ._control import ControlServer
from ._detach import flush_standard_streams
from ._errors import describe
from ._hygiene import drop_privileges, prevent_core_dumps, set_process_name
from ._ready import arm as _arm_readiness
from ._ready import disarm as _disarm_readiness
from ._ready import ready

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import Service
    from ._detach import StartupChannel
    from ._dispatch import Dispatcher
    from ._hygiene import Credentials
    from ._pidfile import PidFile

__all__ = ["ready", "serve"]

# Variables through which a manager talks to its main process only; children
# we spawn must not inherit them (sd_notify's unset_environment).
_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


_served_here = False


def served_here() -> bool:
    """Whether this process has run a service (and so may have its threads to wait for)."""
    return _served_here


def exit_status(code: object) -> int:
    """The exit status for a ``sys.exit`` argument or ``main``'s return value."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _last_words(lambda: print(code, file=sys.stderr))  # as the interpreter does for sys.exit("x")
    return 1


def _last_words(write: Callable[[], object]) -> None:
    """Write to stderr (the log) when it can take it.

    With a full disk the write itself fails; the exit status and the removed
    pidfile still tell what happened, so the failure must not skip them.
    """
    try:
        write()
    except (OSError, ValueError):
        pass


def _call_main(main: Callable[[], object]) -> tuple[int, str]:
    """Run ``main``; return its exit status and, for a failure, a one-line reason."""
    try:
        result = main()
    except SystemExit as exc:
        return exit_status(exc.code), f"SystemExit: {exc.code}"
    except BaseException as exc:  # noqa: BLE001 -- a daemon's last words go to its log
        import traceback  # noqa: PLC0415 -- only a failing main pays for it

        _last_words(traceback.print_exc)
        return 1, describe(exc)
    return exit_status(result), "main returned before it was ready"


def _die_now(pidfile: PidFile) -> Callable[[int], None]:
    """A second Ctrl-C in the foreground: remove the pidfile and exit at once (128+signal).

    It runs on the dispatcher thread, where a signal's default action cannot
    be restored (only the main thread may set handlers), hence ``_exit``.
    """

    def die(signum: int) -> None:
        pidfile.remove()
        flush_standard_streams()
        os._exit(128 + signum)

    return die


def _link_manager() -> _notify.Notifier:
    notifier = _notify.Notifier()
    for variable in _MANAGER_VARIABLES:
        os.environ.pop(variable, None)
    _notify.attach(notifier)
    return notifier


def _listen(pidfile: PidFile) -> ControlServer | None:
    try:
        return ControlServer(pidfile.identity())
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
    global _served_here  # noqa: PLW0603 -- a fact about this process
    _served_here = True
    config, hooks = service.config, service.hooks
    is_init = os.getpid() == 1
    extra = [*hooks.on_signal, *([signal.SIGCHLD] if is_init else [])]
    # Imported here: the dispatcher needs threading, which only a service needs.
    from ._dispatch import Dispatcher  # noqa: PLC0415

    dispatcher: Dispatcher | None = None
    control: ControlServer | None = None
    try:
        record_fd = _signals.install(extra)
        pidfile.write_pid(os.getpid())
        pidfile.keep_out_of_forks()
        _prepare_process(service, credentials)
        notifier = _link_manager()
        control = _listen(pidfile)
        dispatcher = Dispatcher(
            record_fd=record_fd,
            hooks=hooks,
            notifier=notifier,
            control=control,
            logs=None if startup is None else (config.stdout, config.stderr),
            on_repeat=_die_now(pidfile) if startup is None else None,
            reap_children=is_init,
        )
        dispatcher.start()
        _arm_readiness(startup)
        if not config.wait_ready:
            ready()
        status, failure = _call_main(service.main)
    except BaseException:
        if startup is None:
            pidfile.remove()  # detached, the starting process reports it and removes it
        raise
    finally:
        was_ready = _disarm_readiness()
        if dispatcher is not None:
            dispatcher.stop(config.stop_timeout)
        if control is not None:
            control.close()
        _signals.restore()
        _signals.close_record_pipe()
    if startup is not None and not was_ready and startup.fail(_why_not_ready(failure)):
        pidfile.hand_over()  # the starting process, which shares the lock, removes it
    else:
        pidfile.remove()
    return status


def _why_not_ready(failure: str) -> str:
    signum = _signals.stop_signal()
    if _signals.should_stop() and signum is not None:
        return f"stopped by {_signals.signal_name(signum)} before it was ready"
    return failure
