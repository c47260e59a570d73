"""The service's life inside the process that runs ``main``.

The same steps whether that process is a detached daemon or ``run`` in the
foreground: install the stop handlers, write our pid into the (already
locked) pidfile, report readiness, call ``main``, turn its outcome into an
exit status, and remove the pidfile.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from . import _signals
from ._detach import StartupChannel
from ._errors import describe
from ._pidfile import PidFile

__all__ = ["ready", "serve"]

_startup: StartupChannel | None = None
_startup_lock = threading.Lock()


def ready() -> None:
    """Declare the service ready: ``start`` returns now (with ``wait_ready=True``).

    Call it once ``main`` can serve (port bound, data loaded).  Calling it
    again, in the foreground, or outside a daemon does nothing.
    """
    with _startup_lock:
        if _startup is not None:
            _startup.ready()


def _set_startup(channel: StartupChannel | None) -> None:
    global _startup  # noqa: PLW0603 -- the one startup channel of this process
    with _startup_lock:
        _startup = channel


def exit_status(code: object) -> int:
    """The exit status for a ``sys.exit`` argument or ``main``'s return value."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # as the interpreter does for sys.exit("message")
    return 1


def _call_main(main: Callable[[], object]) -> tuple[int, str]:
    """Run ``main``; return its exit status and, for a failure, a one-line reason."""
    try:
        result = main()
    except SystemExit as exc:
        return exit_status(exc.code), f"SystemExit: {exc.code}"
    except BaseException as exc:
        traceback.print_exc()
        return 1, describe(exc)
    return exit_status(result), "main returned before it was ready"


def _die_now(pidfile: PidFile) -> Callable[[int], None]:
    """A second Ctrl-C in the foreground: remove the pidfile and die by that signal."""

    def die(signum: int) -> None:
        pidfile.remove()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # still here: PID 1 of a container ignores default actions

    return die


def serve(
    main: Callable[[], object],
    pidfile: PidFile,
    *,
    wait_ready: bool,
    startup: StartupChannel | None = None,
) -> int:
    """Run ``main`` as the service holding ``pidfile``; return the exit status.

    With a ``startup`` channel (a detached daemon), a failure before ready is
    reported through it and the starting process, which shares the lock,
    removes the pidfile.  Without one (the foreground), a second stop signal
    exits at once.
    """
    try:
        _signals.install(on_repeat=None if startup else _die_now(pidfile))
        pidfile.write_pid(os.getpid())
    except BaseException:
        _signals.restore()
        if startup is None:
            pidfile.remove()  # detached, the starting process reports it and removes it
        raise
    try:
        pidfile.keep_out_of_forks()
        _set_startup(startup)
        if not wait_ready:
            ready()
        status, failure = _call_main(main)
        _set_startup(None)
        if startup is not None and not startup.is_ready and startup.fail(_why_not_ready(failure)):
            pidfile.hand_over()  # the starting process, which shares the lock, removes it
        else:
            pidfile.remove()
        return status
    finally:
        _set_startup(None)
        _signals.restore()


def _why_not_ready(failure: str) -> str:
    signum = _signals.stop_signal()
    if _signals.should_stop() and signum is not None:
        return f"stopped by {signal.Signals(signum).name} before it was ready"
    return failure
