"""The dispatcher: one thread that runs a service's callbacks, in arrival order.

Signal handlers only record (see ``_signals``); this thread reads the
recorded signal numbers (a SIGHUP also takes up the ``reload`` requests
waiting on the control socket) and
does the work: reopen logs, run ``on_reload`` / ``on_stop`` / ``on_signal``
callbacks, tell systemd.  Being an ordinary thread, a callback may print,
log, take locks, or call ``server.shutdown()`` while ``main`` is blocked in
``serve_forever()``.  A callback that raises is logged with its traceback
and the service carries on.

It blocks in ``poll`` with no timeout, so an idle daemon never wakes up;
only the start gives it deadlines: the service is ready once ``main`` has
run its grace, or listens (``_listening``, looked at until it is ready).
systemd's watchdog pings come from ``_watchdog``, where a slow callback
cannot hold them back.

With ``drain=S`` the first stop signal is only announced
(``_signals.stop_announced()``: readiness probes fail from that instant);
the stop itself (the flag, ``on_stop``, the delivery to main) comes S
seconds later, when this thread's poll times out, or at once on a second
stop signal, or on the first when a restart handed the sockets on (the new
instance serves them already).  The drain is its only other deadline.

It also answers the claim socket (``_claim``: a restart's handover, a
deleted pidfile put back, the ``health`` command's question).  While it
runs callbacks, a thread of its own does, for as long as they run: a
restart does not wait for a slow ``on_reload``, and an idle daemon has no
more threads than before.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import _thread
import os
import select
import sys
import time

from . import _delivery, _signals
from ._aio import is_awaitable, run_callback_result
from ._claim import answer_claimants
from ._control import reply
from ._fork_pause import left_the_kernel, step_aside, stop_stepping_aside
from ._hygiene import held_lifeline, set_thread_name
from ._ready import is_ready
from ._signal_path import SignalPath, read_recorded, reload_requests, reopen_logs_or_say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._claim import Answer
    from ._control import ControlServer
    from ._hooks import Callback, Hooks
    from ._listening import StartWatch
    from ._notify import Notifier

__all__ = ["Dispatcher", "wait_in_slices"]

_FORK_PAUSE_WAIT = 1.0
_BUSY_WAIT = 0.05
_SLICE = 0.05
_PIPE_CAPACITY = 65536  # Linux's default: what can be pending when a quit is asked for


class _ClaimsMeanwhile:
    """A thread answering the claim socket while the dispatcher runs callbacks.

    Started before the callbacks, told to end and waited for after them, so
    the two never answer at once and no thread is left while the service is
    idle.  It runs none of the service's code and takes none of its locks,
    so a fork in ``main`` meanwhile leaves the child nothing held (and the
    child closes the claim socket).
    """

    def __init__(self, claim: tuple[ControlServer, Mapping[str, Answer]]) -> None:
        self._claim = claim
        self.native_id: int | None = None
        self._end = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ended = _thread.allocate_lock()
        self._ended.acquire()
        try:
            _thread.start_new_thread(self._run, ())
        except BaseException:
            self.close()
            raise

    def _run(self) -> None:
        try:
            self.native_id = _thread.get_native_id()
            _signals.keep_away_from_this_thread()
            set_thread_name("daemonize_claim")
            poller = select.poll()
            poller.register(self._claim[0].fileno(), select.POLLIN)
            poller.register(self._end, select.POLLIN)
            while all(fd != self._end for fd, _ in poller.poll()):
                answer_claimants(*self._claim)
        finally:
            self._ended.release()

    def ask_to_end(self) -> None:
        """Have the thread leave at its next wakeup (it is not answering, or done soon)."""
        os.eventfd_write(self._end, 1)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end; True if it has."""
        if not self._ended.acquire(timeout=timeout):
            return False
        self._ended.release()
        return True

    def close(self) -> None:
        """Close its descriptor, once the thread has ended."""
        os.close(self._end)


class Dispatcher(SignalPath):
    """Runs on its own thread from :meth:`start` until :meth:`stop`.

    Across an ``os.fork()`` in the service the idle thread steps aside (see
    :meth:`pause`): a process that forks with a second thread alive risks a
    child deadlocked on a lock that thread held, which Python 3.12 warns about.
    Nothing is lost meanwhile: signals wait in the record pipe and ``reload``
    requests in the control socket's backlog.
    """

    def __init__(
        self,
        *,
        record_fd: int,
        hooks: Hooks,
        notifier: Notifier,
        control: ControlServer | None,
        claim: tuple[ControlServer, Mapping[str, Answer]] | None = None,
        logs: tuple[str | None, str | None] | None,
        on_repeat: Callable[[int], None] | None,
        reap_children: bool,
        start_watch: StartWatch | None = None,
        settle: tuple[int, Callable[[], None]] | None = None,
        drain: float = 0.0,
        drain_record: str | None = None,
        replaced: Callable[[], bool] | None = None,
    ) -> None:
        self._record_fd = record_fd
        # A handover's new instance: the restart's pipe, and what to do once it
        # closes; until then the claim is not answered (it is not the service yet).
        self._settle = settle
        self._start_watch = start_watch
        self._hooks = hooks
        self._notifier = notifier
        self._control = control
        self._claim = claim
        self._logs = logs
        self._on_repeat = on_repeat
        self._reap_children = reap_children
        self._stop_requests = 0
        self._drain = drain
        # Whether a restart handed the sockets on (``_handover``): its stop needs no drain.
        self._replaced = replaced
        # During a drain: when it ends (monotonic) and the signal that began it.
        self._draining: tuple[float, int] | None = None
        self._drain_record = drain_record  # the pidfile, beside which a drain is told (status)
        self._drain_recorded = False
        self._finished = _thread.allocate_lock()
        # Guards the flags below between the thread and the fork hooks.
        self._lock = _thread.allocate_lock()
        self._running = False
        self._busy = False
        self._pausing = False
        self._quitting = False
        self._native_id: int | None = None
        self._meanwhile: _ClaimsMeanwhile | None = None

    def start(self) -> None:
        """Start the thread.

        A bare ``_thread`` thread: importing ``threading`` (and through it
        functools and collections) would cost every daemon milliseconds and
        memory before it is ready.  ``threading.current_thread()`` in a
        callback gives a dummy thread object; the kernel knows the thread as
        ``daemonize_deco`` (``top -H``, ``ps -L``).
        """
        step_aside(self)
        with self._lock:
            self._launch()

    def _launch(self) -> None:
        self._finished.acquire()
        self._running = True
        _thread.start_new_thread(self._run, ())

    def stop(self, timeout: float) -> None:
        """Ask the thread to quit and wait for it, up to ``timeout`` seconds; never raises."""
        stop_stepping_aside(self)
        with self._lock:
            self._quitting = True
            meanwhile = self._meanwhile
            if meanwhile is not None:
                # Under the lock: the dispatcher closes its descriptor only
                # after taking it from self._meanwhile.
                meanwhile.ask_to_end()
        _signals.wake_dispatcher()
        deadline = time.monotonic() + timeout
        if self._drain_recorded:
            self._record_drain(begun=False)  # the run ends within its drain
        # The claim must be answered no more once this returns (the sockets
        # it hands over are closed next), even if a callback runs on.
        if meanwhile is not None:
            wait_in_slices(meanwhile.wait, timeout)
        left = max(0.0, deadline - time.monotonic())
        if wait_in_slices(lambda left: self._finished.acquire(timeout=left), left):
            self._finished.release()

    def answering(self) -> bool:
        """Whether the thread runs, or stepped aside for a fork and will be back (``_health``)."""
        with self._lock:
            return self._running or self._pausing

    def pause(self) -> bool:
        """Before a fork: let the idle thread quit and leave the kernel; False if it is busy.

        Busy for a moment (reading its pipe, as on its first round) is waited
        out, up to 50 ms; busy in a callback is not.
        """
        deadline = time.monotonic() + _BUSY_WAIT
        while True:
            with self._lock:
                if not self._running or self._native_id == _thread.get_native_id():
                    return False
                if not self._busy:
                    self._pausing = True
                    break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0002)
        _signals.wake_dispatcher()
        if not self._finished.acquire(timeout=_FORK_PAUSE_WAIT):
            return False  # it took up a callback meanwhile; resume() sorts it out
        self._finished.release()
        left_the_kernel(self._native_id)
        return True

    def resume(self) -> None:
        """After a fork, in the parent: carry on where the thread left off."""
        # May run in a signal handler on the main thread, which may be inside
        # stop() or pause() holding the lock: never wait for it, try again later.
        if not self._lock.acquire(blocking=False):
            _signals.call_soon(self.resume)
            return
        try:
            self._pausing = False
            if not self._running and not self._quitting:
                self._launch()
        finally:
            self._lock.release()

    def resume_after_fork(self) -> None:
        """After a fork, in the parent: resume now, or on 3.13 at the next chance (``resume``)."""
        if _COUNTS_THREADS_AFTER_HOOKS:
            # A thread started now would be counted by the very fork that paused
            # it: resume at the first moment the service runs our code again.
            _signals.call_soon(self.resume)
        else:
            self.resume()

    def _run(self) -> None:
        self._native_id = _thread.get_native_id()
        _signals.keep_away_from_this_thread()
        set_thread_name("daemonize_deco")
        try:
            self._loop()
        finally:
            with self._lock:
                self._running = False
            self._finished.release()

    def _loop(self) -> None:
        poller = select.poll()  # not select(): descriptors above 1023 are fine
        poller.register(self._record_fd, select.POLLIN)
        if self._settle is not None:
            if self._settle[0] >= 0:  # else closed already: the restart was gone
                poller.register(self._settle[0], 0)  # POLLERR alone: the reader closed it
        elif self._claim is not None:
            poller.register(self._claim[0].fileno(), select.POLLIN)
        lifeline = held_lifeline()  # (where the kernel cannot end us with our supervisor)
        if lifeline is not None:
            poller.register(lifeline.read_end, select.POLLIN)
        while True:
            with self._lock:
                if self._pausing:
                    return  # what is unread waits in the pipe and the backlog
                quitting = self._quitting
                self._busy = True
            try:
                if lifeline is not None:
                    lifeline.check()
                # When quitting, signals that came before the quit still get
                # their callbacks (a SIGTERM's on_stop); what a storm adds
                # meanwhile does not.
                self._handle_signals(limit=_PIPE_CAPACITY if quitting else 4096)
                self._end_drain_when_due()
                if self._settle is not None and not quitting:
                    self._settle_when_told(poller)
                elif self._claim is not None and not quitting:
                    answer_claimants(*self._claim)
            finally:
                self._busy = False
            if quitting:
                return
            with self._lock:
                # Looked at after reading: the wake byte that goes with a flag
                # may have been read just now, and poll() would then not return.
                if self._pausing or self._quitting:
                    continue
            poller.poll(self._poll_timeout())

    def _poll_timeout(self) -> float | None:
        """Milliseconds until there is something to do but read; None: nothing (idle)."""
        readiness = self._readiness_timeout()
        if self._draining is None:
            return readiness
        drain_left = max(0.0, self._draining[0] - time.monotonic()) * 1000
        return drain_left if readiness is None else min(readiness, drain_left)

    def _end_drain_when_due(self) -> None:
        """The drain is over: the stop it held back reaches main now."""
        if self._draining is not None and time.monotonic() >= self._draining[0]:
            self._end_drain(hand_on=True)

    def _end_drain(self, *, hand_on: bool = False) -> None:
        """The stop goes on; ``hand_on``: a framework's handler held back hears it now.

        Not when a second stop signal ended the drain: the chain gives that
        one to the framework's handler itself (``_takeover``), and a second
        would be its Ctrl-C twice.
        """
        assert self._draining is not None
        _, signum = self._draining
        self._draining = None
        self._record_drain(begun=False)
        if hand_on:
            _signals.hand_on_to_frameworks()
        self._stop(signum)

    def _record_drain(self, *, begun: bool) -> None:
        """Tell ``status`` that the drain began, or is over (``_draining``)."""
        if self._drain_record is None:
            return
        from . import _draining  # noqa: PLC0415 -- only a service that drains pays for it

        if begun:
            _draining.began(self._drain_record, os.getpid(), self._drain)
            self._drain_recorded = True
        else:
            _draining.ended(self._drain_record)

    def _settle_when_told(self, poller: select.poll) -> None:
        """Once the restart's pipe has closed: settle, then answer the claim from now on."""
        assert self._settle is not None
        fd, settle = self._settle
        if fd >= 0:
            if not _single(fd).poll(0):
                return
            poller.unregister(fd)
        self._settle = None
        settle()
        if self._claim is not None:
            poller.register(self._claim[0].fileno(), select.POLLIN)

    def _readiness_timeout(self) -> float | None:
        """Milliseconds until the start wants looking at again; None once the service is ready."""
        if self._start_watch is None:
            return None
        seconds = self._start_watch.check()
        if seconds is None:
            self._start_watch = None  # ready: an idle daemon never wakes again
            return None
        return seconds * 1000

    def _handle_signals(self, limit: int = 4096) -> None:
        """Dispatch each recorded signal, reading up to ``limit`` bytes of them."""
        for recorded in read_recorded(self._record_fd, limit):
            # One thread for the claim per read, not per callback: a storm of
            # signals would otherwise start thousands.
            calls_back = any(self._calls_back(signum) for signum in set(recorded))
            if calls_back:
                self._answer_claims_meanwhile()
            try:
                self.dispatch(recorded)
            finally:
                if calls_back:
                    self._answer_claims_here()

    def _calls_back(self, signum: int) -> bool:
        """Whether handling ``signum`` runs callbacks of the service."""
        if signum in _signals.STOP_SIGNALS:
            return bool(self._hooks.on_stop)
        if signum == _signals.RELOAD_SIGNAL:
            return bool(self._hooks.on_reload)
        return bool(self._hooks.on_signal.get(signum))

    def handle_stop(self, signum: int) -> None:
        """SIGTERM, SIGINT: the stop request, the ``on_stop`` callbacks (not for our own Ctrl-C)."""
        if not _signals.is_delivery_echo(signum):
            self._stop_requested(signum)

    def handle_reload(self) -> None:
        """SIGHUP: reload once, and answer the ``reload`` requests that sent it."""
        requests = reload_requests(self._control)
        outcome = self.reload()
        for conn in requests:
            reply(conn, outcome)

    def handle_signal(self, signum: int) -> None:
        """An ``on_signal`` signal: its callbacks (as PID 1, SIGCHLD reaps orphans first)."""
        if signum == signal.SIGCHLD and self._reap_children:
            _reap_exited_children()
        for callback in self._hooks.on_signal.get(signum, ()):
            _run(callback, f"on_signal({_signals.signal_name(signum)})")

    def _answer_claims_meanwhile(self) -> None:
        """Have a thread of its own answer the claim while this one runs callbacks."""
        with self._lock:
            busy = self._quitting or self._meanwhile is not None
            if self._claim is None or self._settle is not None or busy:
                return  # (a handover's new instance answers only once it settled)
            try:
                self._meanwhile = _ClaimsMeanwhile(self._claim)
            except (OSError, RuntimeError):  # out of descriptors or threads
                pass  # then the claim is answered once the callbacks are done

    def _answer_claims_here(self) -> None:
        """End the thread that answered the claim meanwhile: this one answers again."""
        with self._lock:
            meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            meanwhile.ask_to_end()
            meanwhile.wait(-1)
            meanwhile.close()
            left_the_kernel(meanwhile.native_id)  # a fork in main right after must not count it

    def _stop_requested(self, signum: int) -> None:
        self._stop_requests += 1
        if self._draining is not None:
            self._end_drain()  # asked again during the drain: no more waiting
            return
        if self._stop_requests > (2 if self._drain > 0 else 1):
            # The signal handler acts on a repeat itself; this covers a main
            # thread stuck in C code, where Python-level handlers cannot run.
            if self._on_repeat is not None:
                self._on_repeat(signum)
            return
        if self._stop_requests > 1:
            return  # the drain's second signal, after the drain: the stop is on its way
        # Nothing to drain before ready: no load balancer routes to it yet.
        if self._drain > 0 and not _signals.stop_requested() and is_ready():
            if not self._was_replaced():
                self._begin_drain(signum)
                return
            _say(f"{_signals.signal_name(signum)}: no drain, a restart handed the sockets on")
            _signals.hand_on_to_frameworks()  # the chain held it back for a drain
        self._stop(signum)

    def _begin_drain(self, signum: int) -> None:
        """``drain=``: the stop is announced now (readiness probes fail), main hears of it later."""
        self._draining = (_signals.announce_stop() + self._drain, signum)
        self._record_drain(begun=True)
        _say(
            f"{_signals.signal_name(signum)}: draining for {self._drain:g}s "
            "before main is told to stop"
        )

    def _was_replaced(self) -> bool:
        """Whether the stop comes from a restart that handed everything on: nothing to drain.

        The sockets are the new instance's too, and it accepts on them (an
        old one unsupervised was told to stop accepting first: ``_quiesce``).
        """
        try:
            return self._replaced is not None and self._replaced()
        except OSError:
            return False

    def _stop(self, signum: int) -> None:
        """The stop reaches main: the flag, the ``on_stop`` callbacks, the delivery."""
        _signals.request_stop(signum)  # the main thread may be blocked in C code
        self._notifier.stopping()
        _delivery.stop_arrived()
        for callback in self._hooks.on_stop:
            _run(callback, "on_stop")
        _delivery.deliver(signum)  # to a main that never asks (``_delivery``)

    def reload(self) -> str:
        """Reopen the log files, run the reload callbacks; return "ok" or "error ..."."""
        self._notifier.reloading()
        failures = []
        if self._logs is not None and (failure := reopen_logs_or_say(*self._logs)) is not None:
            failures.append(failure)
        failures += [
            failure
            for callback in self._hooks.on_reload
            if (failure := _run(callback, "on_reload")) is not None
        ]
        self._notifier.ready()
        return "error " + "; ".join(failures) if failures else "ok"


# Python 3.13 counts the threads for its fork warning after the after-fork hooks.
_COUNTS_THREADS_AFTER_HOOKS = sys.version_info >= (3, 13)


def _single(fd: int) -> select.poll:
    """A poller watching ``fd`` for errors and hangups only."""
    poller = select.poll()
    poller.register(fd, 0)
    return poller


def wait_in_slices(wait: Callable[[float], bool], timeout: float) -> bool:
    """Call ``wait(seconds)`` in slices of at most 50 ms until it is True or ``timeout`` passed.

    For waits on the main thread while the service ends: between slices the
    interpreter runs the Python-level handlers of signals that landed on
    another thread (a second Ctrl-C), which a single long wait would defer.
    """
    deadline = time.monotonic() + timeout
    while not wait(max(0.0, min(_SLICE, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return False
    return True


def _say(text: str) -> None:
    print(f"daemonize_deco: {text}", file=sys.stderr, flush=True)


def _run(callback: Callback, role: str) -> str | None:
    """Run one callback (an ``async`` one to completion); log and return why, if it raised."""
    try:
        result = callback()
        if is_awaitable(result):
            run_callback_result(result)
    # BaseException: sys.exit() in a callback must not end the dispatcher either.
    except BaseException as exc:  # noqa: BLE001
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
