"""The dispatcher: one thread that runs a service's callbacks, in arrival order.

Signal handlers only record (see ``_signals``); this thread reads the
recorded signal numbers and ``reload`` requests from the control socket and
does the work: reopen logs, run ``on_reload`` / ``on_stop`` / ``on_signal``
callbacks, tell systemd.  Being an ordinary thread, a callback may print,
log, take locks, or call ``server.shutdown()`` while ``main`` is blocked in
``serve_forever()``.  A callback that raises is logged with its traceback
and the service carries on.

It blocks in ``select`` with no timeout, so an idle daemon never wakes up;
only systemd's watchdog, when enabled, gives it a period.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import _thread
import os
import select
import sys
import time

from . import _signals
from ._control import reply
from ._detach import reopen_logs
from ._hygiene import set_thread_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._control import ControlServer
    from ._hooks import Callback, Hooks
    from ._notify import Notifier

__all__ = ["Dispatcher"]

_QUIT = 0


class Dispatcher:
    """Runs on its own thread from :meth:`start` until :meth:`stop`."""

    def __init__(
        self,
        *,
        record_fd: int,
        hooks: Hooks,
        notifier: Notifier,
        control: ControlServer | None,
        logs: tuple[str | None, str | None] | None,
        on_repeat: Callable[[int], None] | None,
        reap_children: bool,
    ) -> None:
        self._record_fd = record_fd
        self._hooks = hooks
        self._notifier = notifier
        self._control = control
        self._logs = logs
        self._on_repeat = on_repeat
        self._reap_children = reap_children
        self._stop_requests = 0
        self._finished = _thread.allocate_lock()

    def start(self) -> None:
        """Start the thread.

        A bare ``_thread`` thread: importing ``threading`` (and through it
        functools and collections) would cost every daemon milliseconds and
        memory before it is ready.  ``threading.current_thread()`` in a
        callback gives a dummy thread object; the kernel knows the thread as
        ``daemonize_deco`` (``top -H``, ``ps -L``).
        """
        self._finished.acquire()
        _thread.start_new_thread(self._run, ())

    def stop(self, timeout: float) -> None:
        """Ask the thread to quit and wait for it, up to ``timeout`` seconds."""
        _signals.wake_dispatcher()
        if self._finished.acquire(timeout=timeout):
            self._finished.release()

    def _run(self) -> None:
        set_thread_name("daemonize_deco")
        try:
            self._loop()
        finally:
            self._finished.release()

    def _loop(self) -> None:
        sources: list[int] = [self._record_fd]
        if self._control is not None:
            sources.append(self._control.fileno())
        interval = self._notifier.watchdog_interval
        next_ping = time.monotonic() if interval is not None else None
        while True:
            if next_ping is not None and interval is not None and time.monotonic() >= next_ping:
                self._notifier.watchdog()
                next_ping = time.monotonic() + interval
            timeout = None if next_ping is None else max(0.0, next_ping - time.monotonic())
            readable, _, _ = select.select(sources, [], [], timeout)
            if self._record_fd in readable and not self._handle_signals():
                return
            if self._control is not None and self._control.fileno() in readable:
                self._handle_request()

    def _handle_signals(self) -> bool:
        """Dispatch each recorded signal; False when told to quit."""
        try:
            recorded = os.read(self._record_fd, 4096)
        except BlockingIOError:
            return True
        for signum in recorded:
            if signum == _QUIT:
                return False
            self._dispatch(signum)
        return True

    def _dispatch(self, signum: int) -> None:
        if signum in _signals.STOP_SIGNALS:
            self._stop_requested(signum)
        elif signum == _signals.RELOAD_SIGNAL:
            self.reload()
        elif signum == signal.SIGCHLD and self._reap_children:
            _reap_exited_children()
        for callback in self._hooks.on_signal.get(signum, ()):
            _run(callback, f"on_signal({_signals.signal_name(signum)})")

    def _stop_requested(self, signum: int) -> None:
        self._stop_requests += 1
        if self._stop_requests > 1:
            if self._on_repeat is not None:
                self._on_repeat(signum)
            return
        _signals.request_stop(signum)  # the main thread may be blocked in C code
        self._notifier.stopping()
        for callback in self._hooks.on_stop:
            _run(callback, "on_stop")

    def reload(self) -> str:
        """Reopen the log files, run the reload callbacks; return "ok" or "error ..."."""
        self._notifier.reloading()
        failures = []
        if self._logs is not None:
            try:
                reopen_logs(*self._logs)
            except OSError as exc:
                print(f"daemonize_deco: cannot reopen logs: {exc}", file=sys.stderr)
                failures.append(str(exc))
        failures += [
            failure
            for callback in self._hooks.on_reload
            if (failure := _run(callback, "on_reload")) is not None
        ]
        self._notifier.ready()
        return "error " + "; ".join(failures) if failures else "ok"

    def _handle_request(self) -> None:
        assert self._control is not None
        accepted = self._control.accept()
        if accepted is None:
            return
        conn, request = accepted
        reply(conn, self.reload() if request == "reload" else f"error unknown request {request!r}")


def _run(callback: Callback, role: str) -> str | None:
    """Run one callback; log and return a one-line reason if it raised."""
    try:
        callback()
    except Exception as exc:  # noqa: BLE001 -- a failing callback must not end the service
        name = getattr(callback, "__qualname__", repr(callback))
        print(f"daemonize_deco: {role} callback {name} raised:", file=sys.stderr)
        import traceback  # noqa: PLC0415 -- only a failing callback pays for it

        traceback.print_exc()
        return f"{name}: {type(exc).__name__}: {exc}"
    return None


def _reap_exited_children() -> None:
    """As PID 1 (a container's init), orphans become our children: collect them."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
