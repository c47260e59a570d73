"""The signal registry: a graceful-stop flag, and signals recorded for a dispatcher.

Design.  A Python signal handler runs between two bytecodes of the main
thread, whatever that thread was doing: in the middle of a print, holding a
lock, half-way through writing a file.  So nothing here does work inside a
handler.  Each handled signal is *recorded*, and the work (user callbacks,
reopening logs) happens on the dispatcher thread (``_dispatch``).

Recording uses ``signal.set_wakeup_fd``: CPython's C-level handler writes the
signal number to a pipe the moment the signal arrives, in whichever thread
the kernel picked, even while the main thread is blocked in C code.  The
dispatcher reads those bytes in arrival order.

The stop flag has a pipe of its own that is never drained: once a stop is
requested it stays readable, so every :func:`sleep`, in every thread, now or
later, returns at once.  ``threading.Event`` is not used because ``set()``
takes a lock the interrupted code may hold, and ``time.sleep()`` would be
resumed after a handler returns (PEP 475).  An idle sleeper blocks in
``poll`` without a timeout tick: it wakes zero times.

The wakeup fd is process-wide, and asyncio's ``loop.add_signal_handler``
(for any signal) takes it over.  Our own Python-level handlers still run,
so each one checks, cheaply, that the fd is still ours; once it is not, the
handlers record the signal themselves and the dispatcher says so in the log.

Three exceptions to "only record", each deliberate: a repeated stop signal
in the foreground ends the process from the handler (the user asked twice;
the dispatcher may be busy in a slow ``on_stop``); the handlers set the
wakeup fd back when probing it; and a handler may restart the dispatcher
thread that stepped aside for an ``os.fork()`` (:func:`call_soon`), so that
the signal it records is read.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import _thread
import os
import select
import time

from . import _takeover
from ._errors import DaemonError, DetachError
from ._signal_names import RELOAD_SIGNAL as RELOAD_SIGNAL  # noqa: PLC0414 -- _dispatch, _supervisor
from ._signal_names import STOP_SIGNALS
from ._signal_names import signal_name as signal_name  # noqa: PLC0414 -- _dispatch, _supervisor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import FrameType
    from typing import Any

    Handler = Callable[[int, FrameType | None], Any] | int | None

__all__ = [
    "RELOAD_SIGNAL",
    "STOP_SIGNALS",
    "WAKEUP_TAKEN",
    "Handlers",
    "announce_stop",
    "call_soon",
    "count_heartbeats",
    "delivery_pending",
    "expect_delivery",
    "hand_on_to_frameworks",
    "is_delivery_echo",
    "keep_away_from_this_thread",
    "main_asked",
    "main_interrupted",
    "main_thread",
    "request_stop",
    "should_stop",
    "sleep",
    "stop_announced",
    "stop_fd",
    "stop_requested",
    "stop_signal",
    "time_left",
    "wake_dispatcher",
    "when_main_loops",
]

# A byte no signal number can be: "the wakeup fd was taken over", for the log.
WAKEUP_TAKEN = 255
_LONGEST_POLL_MS = 86_400_000  # poll() takes an int of milliseconds: wait a day at a time


class _State:
    """Per-process state: the flag, the pipes, and what we replaced."""

    def __init__(self) -> None:
        self.stop_signal: int | None = None
        self.stop_requested = False
        self.stop_requested_at: float | None = None  # monotonic
        # ``drain=``: a stop signal is announced at once, requested drain seconds later.
        self.drain = 0.0
        self.announced = False
        self.announced_at: float | None = None  # monotonic
        self.stop_read: int | None = None
        self.stop_write: int | None = None
        self.previous: dict[int, Handler] = {}
        self.previous_wakeup_fd: int | None = None
        self.record_read: int | None = None
        self.record_write: int | None = None
        self.pipe_lock = _thread.allocate_lock()
        self.fork_hook = False
        self.wakeup_taken = False
        self.stop_signals_handled = 0
        self.on_repeat: Callable[[int], object] | None = None
        self.unblocked: set[int] = set()
        self.handled: frozenset[int] = frozenset()
        self.soon: Callable[[], object] | None = None
        self.main_loops: Callable[[], object] | None = None
        self.beat: Callable[[], None] | None = None
        self.begin_wait: Callable[[], None] | None = None
        self.end_wait: Callable[[], None] | None = None
        self.ending: Callable[[], None] | None = None
        self.main_thread = _thread.get_ident()
        self.main_asked = False  # main's thread called should_stop() or sleep()
        # A stop delivered to main as Ctrl-C (``_delivery``): the SIGINT it
        # sends, the bytes of it the dispatcher is to skip, whether it landed.
        self.delivery: Callable[[FrameType | None], bool] | None = None
        # The bytes the C handler writes to our record pipe for the signals
        # we send ourselves (those deliveries, a drain's ``hand_on_to_frameworks``).
        self.echoes: dict[int, int] = {}
        self.main_interrupted = False


_state = _State()


def _stop_pipe() -> tuple[int, int]:
    """Create the stop pipe on first use (never from a signal handler)."""
    with _state.pipe_lock:
        if _state.stop_read is None or _state.stop_write is None:
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            _state.stop_read, _state.stop_write = read_end, write_end
        return _state.stop_read, _state.stop_write


def stop_fd() -> int:
    """A descriptor that becomes readable, and stays so, once a stop is requested."""
    return _stop_pipe()[0]


def should_stop() -> bool:
    """Return True once a graceful stop was requested (SIGTERM, SIGINT, ``stop``)."""
    if not _state.main_asked and _thread.get_ident() == _state.main_thread:
        _state.main_asked = True
    if _state.soon is not None:
        _run_soon()
    if _state.main_loops is not None:
        _reached_main_loop()
    if _state.beat is not None and _thread.get_ident() == _state.main_thread:
        _state.beat()
    return _state.stop_requested


def count_heartbeats(
    beat: Callable[[], None] | None,
    *,
    begin_wait: Callable[[], None] | None = None,
    end_wait: Callable[[], None] | None = None,
    ending: Callable[[], None] | None = None,
) -> None:
    """Have main's thread beat in should_stop() and sleep(), and say when it waits in sleep().

    ``beat`` runs in main's should_stop(); ``begin_wait`` and ``end_wait``
    around main's waits in sleep(); ``ending`` at the first stop request
    (from a signal handler, maybe).
    """
    _state.beat, _state.begin_wait, _state.end_wait = beat, begin_wait, end_wait
    _state.ending = ending


def stop_requested() -> bool:
    """Whether a stop was requested: should_stop() without its side effects, for other threads."""
    return _state.stop_requested


def call_soon(callback: Callable[[], object]) -> None:
    """Run ``callback`` once, at the next handled signal or should_stop()/sleep() call."""
    _state.soon = callback


def _run_soon() -> None:
    callback, _state.soon = _state.soon, None
    if callback is not None:
        callback()


def when_main_loops(callback: Callable[[], object] | None) -> None:
    """Run ``callback`` once, when the main thread first calls should_stop() or sleep().

    That call means ``main`` reached its loop: the service's default moment
    of readiness.  Other threads' calls do not count.
    """
    _state.main_loops = callback


def _reached_main_loop() -> None:
    if _thread.get_ident() != _state.main_thread:
        return
    callback, _state.main_loops = _state.main_loops, None
    if callback is not None:
        callback()


def time_left(stop_timeout: float) -> float:
    """What is left of ``stop_timeout`` since the stop request, less a margin to exit in.

    ``stop`` SIGKILLs the service ``stop_timeout`` after its SIGTERM: the
    last steps of a stop (ending a worker that ignores SIGTERM) must fit in
    before, not take the service down with them.  All of it without a stop;
    all of it again when most of it is spent already: a service still alive
    then was given longer (``stop --timeout``), which it cannot know.
    """
    asked = _state.stop_requested_at if _state.stop_requested else None
    if asked is None:
        return stop_timeout
    left = stop_timeout - (time.monotonic() - asked) - min(0.5, stop_timeout / 4)
    return left if left >= stop_timeout / 4 else stop_timeout


def announce_stop() -> float:
    """Record that a stop was announced (``drain=``); return when it first was (monotonic).

    Safe inside a signal handler and from any thread; later calls keep the first time.
    """
    if _state.announced_at is None:
        _state.announced_at = time.monotonic()
    _state.announced = True
    return _state.announced_at


def stop_announced() -> bool:
    """Whether a stop was announced: True from the first SIGTERM/SIGINT/``stop``, drain or not.

    For what must turn away new work before ``main`` hears of the stop (a
    readiness probe): during ``drain=`` seconds this is True while
    :func:`should_stop` is still False.  Cheap, lock-free, any thread.
    """
    return _state.announced or _state.stop_requested


def stop_signal() -> int | None:
    """The signal that requested the stop, or None."""
    return _state.stop_signal


def sleep(seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once when a stop is requested.

    Returns False when the whole time passed without a stop request.  Works
    in any thread; ``math.inf`` sleeps until a stop.  Raises ValueError for a
    negative or NaN duration.
    """
    if not seconds >= 0:
        raise ValueError(f"sleep length must be a non-negative number, not {seconds!r}")
    if not _state.main_asked and _thread.get_ident() == _state.main_thread:
        _state.main_asked = True
    if _state.soon is not None:
        _run_soon()
    if _state.main_loops is not None:
        _reached_main_loop()
    read_end, _ = _stop_pipe()
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    begin_wait, end_wait = _state.begin_wait, _state.end_wait
    if begin_wait is None or end_wait is None or _thread.get_ident() != _state.main_thread:
        return _sleep_on(poller, seconds)
    begin_wait()
    try:
        return _sleep_on(poller, seconds)
    finally:
        end_wait()  # a beat, then the end of the wait


def _sleep_on(poller: select.poll, seconds: float) -> bool:
    deadline = time.monotonic() + seconds  # inf for an endless sleep
    # The flag is checked after the pipe exists: a request made before had nowhere to write.
    while not _state.stop_requested:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # Rounded up, so a sleep never ends a fraction of a millisecond early.
        if poller.poll(int(min(remaining * 1000, _LONGEST_POLL_MS)) + 1):
            return True
    return True


def request_stop(signum: int | None = None) -> bool:
    """Set the stop flag and wake every sleeper; True if this was the first request.

    Safe inside a signal handler and from any thread.
    """
    if _state.stop_requested:
        return False
    _state.stop_signal = signum
    _state.stop_requested_at = time.monotonic()
    announce_stop()
    _state.stop_requested = True
    if _state.ending is not None:
        _state.ending()  # the watchdog stands down: stop_timeout bounds the run now
    write_end = _state.stop_write
    if write_end is not None:
        try:
            os.write(write_end, b"\0")
        except OSError:
            pass  # full or closed: then it is readable already, or nobody waits
    return True


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT and _state.delivery is not None:
        _deliver_here(frame)  # our own Ctrl-C for main: not a stop signal of its own
        return
    if _takeover.is_replay(signum):
        return  # sent for a framework's handler, no longer chained: not a stop of its own
    _record_if_wakeup_taken(signum)
    # Counted here, not read from the flag: the dispatcher may have set the
    # flag for this very signal before the main thread got to run its handler.
    _state.stop_signals_handled += 1
    handled = _state.stop_signals_handled
    if _state.drain > 0:
        if handled == 1:
            announce_stop()  # the dispatcher requests the stop once the drain is over
            return
        handled -= 1  # the second ends the drain: it is the stop's first
    # The flag is set here too, not only by the dispatcher, so should_stop()
    # is True by the time the main thread runs its next line.
    request_stop(signum)
    if handled > 1 and _state.on_repeat is not None:
        _state.on_repeat(signum)  # a second Ctrl-C in the foreground: act now


def _deliver_here(frame: FrameType | None) -> None:
    """The SIGINT ``_delivery`` sent main's thread: raise KeyboardInterrupt, if now is the time.

    The one handler that raises into the interrupted code, deliberately: a
    main that never asks is blocked in a loop built to end on Ctrl-C.  The
    check that it is blocked there (not running the service's own code) is
    the delivery's, made here on the very frame that would be interrupted.
    """
    deliver, _state.delivery = _state.delivery, None  # one SIGINT, one decision
    if deliver is None or not deliver(frame):
        return  # not now: the delivery sends another when main waits
    _state.main_interrupted = True
    raise KeyboardInterrupt


def expect_delivery(decide: Callable[[FrameType | None], bool] | None) -> None:
    """The next SIGINT on main's thread is ours: ``decide(frame)`` whether it interrupts main.

    ``decide`` returns True for a KeyboardInterrupt now; it may hand the
    Ctrl-C to a framework's handler instead and return False.  None: no
    delivery is pending any more.
    """
    if decide is not None:
        _expect_echo(signal.SIGINT)
    _state.delivery = decide


def _expect_echo(signum: int) -> None:
    """We send ``signum`` ourselves: the dispatcher is to skip its byte in the record pipe."""
    if not _state.wakeup_taken:  # else the byte goes to the service's wakeup fd
        _state.echoes[signum] = _state.echoes.get(signum, 0) + 1


def delivery_pending() -> bool:
    """Whether a Ctrl-C sent to main is still waiting to interrupt it."""
    return _state.delivery is not None


def is_delivery_echo(signum: int) -> bool:
    """For the dispatcher: whether this recorded stop signal was our own, sent to main (skip it)."""
    if not _state.echoes.get(signum):
        return False
    _state.echoes[signum] -= 1
    return True


def hand_on_to_frameworks() -> None:
    """The drain is over: a framework's handler hears the stop signal held back from it.

    Sent to main's thread, where a handler expects to run; see ``_takeover``.
    """

    def send(signum: int) -> None:
        _expect_echo(signum)
        signal.pthread_kill(_state.main_thread, signum)

    _takeover.hand_on_held(send)


def _held_by_drain() -> bool:
    """After our handler ran: whether the stop signal only began a drain (``_takeover`` holds)."""
    return _state.drain > 0 and _state.announced and not _state.stop_requested


def main_asked() -> bool:
    """Whether main's thread has called should_stop() or sleep() (``await stopped()`` too)."""
    return _state.main_asked


def main_interrupted() -> bool:
    """Whether a stop was delivered to main as KeyboardInterrupt (it is then no failure)."""
    return _state.main_interrupted


def main_thread() -> int:
    """The ident of the thread that installed the handlers and runs main."""
    return _state.main_thread


def _on_recorded_signal(signum: int, frame: FrameType | None) -> None:
    """The wakeup fd recorded the signal for the dispatcher, unless it was taken over."""
    _record_if_wakeup_taken(signum)


def _record_if_wakeup_taken(signum: int) -> None:
    """Record ``signum`` ourselves when the wakeup fd is no longer our record pipe."""
    if _state.soon is not None:
        _run_soon()  # the dispatcher, paused for a fork, comes back to read it
    ours = _state.record_write
    if ours is None:
        return
    if not _state.wakeup_taken:
        current = signal.set_wakeup_fd(ours, warn_on_full_buffer=False)
        if current == ours:
            return  # the C handler has written this signal's byte already
        signal.set_wakeup_fd(current)  # the service's (asyncio's): leave it to it
        _state.wakeup_taken = True
        _write_record(WAKEUP_TAKEN)
    _write_record(signum)


def _write_record(byte: int) -> None:
    try:
        if _state.record_write is not None:
            os.write(_state.record_write, bytes((byte,)))
    except OSError:
        pass  # full: the dispatcher is awake already and reads what is there


class Handlers:
    """Our handlers, in place for a ``with`` block: the one way to install and restore them.

    ``with Handlers() as handlers: record_fd = handlers.install(...)``.
    Leaving the block, however (an exception, a failure half-way through
    :meth:`install`), puts back what was there before: the handlers, the
    signal mask, the wakeup fd, and closes the record pipe.  Installing is a step
    inside the block, not its entry, so that a failure to install is the
    block's to account for (the run's record) before everything is restored.
    In a child forked inside the block, leaving it does nothing: the fork
    hook gave the child a clean slate already, and the parent's are not its own.
    """

    def __init__(self) -> None:
        self._pid: int | None = None

    def __enter__(self) -> Handlers:
        return self

    def install(
        self,
        extra_signals: Iterable[int] = (),
        on_repeat: Callable[[int], object] | None = None,
        drain: float = 0.0,
    ) -> int:
        """Install the handlers; return the pipe from which the dispatcher reads signal numbers.

        Starts from a clear flag and fresh pipes (pipes inherited across fork
        are shared with the parent), and unblocks the handled signals (a
        launcher may have blocked them, and a blocked SIGTERM could only be
        answered with SIGKILL).  ``on_repeat(signum)`` runs, from the
        handler, when a stop signal comes again.  Must be called from the
        main thread.  Raises DetachError when the pipes cannot be made
        (``ulimit -n``), DaemonError from another thread.
        """
        self._pid = os.getpid()
        return _install(extra_signals, on_repeat, drain)

    def __exit__(self, *exc_info: object) -> None:
        if self._pid is None or self._pid != os.getpid():
            return
        self._pid = None
        _restore()
        _close_record_pipe()  # not the stop pipe: a thread main left behind may sleep on it


def _install(
    extra_signals: Iterable[int] = (),
    on_repeat: Callable[[int], object] | None = None,
    drain: float = 0.0,
) -> int:
    if not _state.fork_hook:
        os.register_at_fork(after_in_child=_clean_slate_in_child)
        _state.fork_hook = True
    _close_pipes()
    _state.stop_signal = None
    _state.stop_requested = False
    _state.wakeup_taken = False
    _state.stop_signals_handled = 0
    _state.on_repeat = on_repeat
    _state.drain, _state.announced, _state.announced_at = drain, False, None
    _state.main_thread = _thread.get_ident()
    _state.main_asked = _state.main_interrupted = False
    _state.delivery, _state.echoes = None, {}
    try:
        _stop_pipe()
        record_read, record_write = os.pipe()
    except OSError as exc:  # no descriptor left (ulimit -n)
        _close_pipes()
        raise DetachError(f"cannot create the signal pipes: {exc.strerror}") from exc
    for end in (record_read, record_write):
        os.set_blocking(end, False)  # the dispatcher drains it; handlers never wait on it
    _state.record_read, _state.record_write = record_read, record_write
    handlers: dict[int, Handler] = dict.fromkeys(extra_signals, _on_recorded_signal)
    handlers[RELOAD_SIGNAL] = _on_recorded_signal
    handlers.update(dict.fromkeys(STOP_SIGNALS, _on_stop_signal))
    try:
        _state.previous_wakeup_fd = signal.set_wakeup_fd(record_write, warn_on_full_buffer=False)
        for sig, handler in handlers.items():
            _state.previous.setdefault(sig, signal.signal(sig, handler))
        blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, handlers)
        _state.unblocked = set(blocked) & set(handlers)
        _state.handled = frozenset(handlers)
        _takeover.take_part(handlers, STOP_SIGNALS, stop_requested, _held_by_drain)
    except ValueError as exc:  # not the main thread: only it may set handlers
        _restore()
        _close_pipes()
        raise DaemonError(
            "run must be called from the main thread: signal handlers live there"
        ) from exc
    except BaseException:
        _restore()
        _close_pipes()
        raise
    return record_read


def keep_away_from_this_thread() -> None:
    """Block the handled signals in the calling (non-main) thread.

    The kernel gives a process-directed signal to any thread that does not
    block it.  Landing on a helper thread, it interrupts nothing on the main
    thread, which then runs the Python handler only when it next executes
    bytecode: a main thread blocked in a lock wait would not see it for long.
    """
    if _state.handled:
        signal.pthread_sigmask(signal.SIG_BLOCK, _state.handled)


def wake_dispatcher() -> None:
    """Write a 0 byte to the record pipe, to wake the dispatcher; never fails.

    A full pipe (a signal storm) wakes it just as well.
    """
    _write_record(0)


def _restore() -> None:
    """Put back the handlers, wakeup fd and signal mask :func:`_install` replaced."""
    _takeover.release()  # first: a previous SIG_DFL must go in as it is
    _state.on_repeat = None
    _state.delivery = None
    _state.soon = None
    _state.main_loops = None
    _state.handled = frozenset()
    if _state.unblocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, _state.unblocked)
        _state.unblocked = set()
    while _state.previous:
        sig, handler = _state.previous.popitem()
        signal.signal(sig, handler)
    if _state.previous_wakeup_fd is not None:
        if not _state.wakeup_taken:  # else it is the service's now, not ours to change
            signal.set_wakeup_fd(_state.previous_wakeup_fd)
        _state.previous_wakeup_fd = None


def _close_record_pipe() -> None:
    """Close the record pipe, once the dispatcher has quit and the handlers are restored."""
    for fd in (_state.record_read, _state.record_write):
        if fd is not None:
            os.close(fd)
    _state.record_read = _state.record_write = None


def _clean_slate_in_child() -> None:
    """In a child forked by the service (a multiprocessing worker): default handlers.

    Otherwise SIGTERM would not end the worker, and its signals would reach
    the parent's dispatcher through the inherited wakeup pipe.
    """
    _state.pipe_lock = _thread.allocate_lock()  # another thread may have held it at fork
    _state.unblocked = set()  # the launcher's mask was an accident; keep them unblocked
    _restore()
    _close_pipes()
    _state.stop_signal = None
    _state.stop_requested = False
    _state.drain, _state.announced, _state.announced_at = 0.0, False, None
    count_heartbeats(None)  # a worker's loop is not main's progress, nor its stop main's


def _close_pipes() -> None:
    _close_record_pipe()
    with _state.pipe_lock:
        for fd in (_state.stop_read, _state.stop_write):
            if fd is not None:
                os.close(fd)
        _state.stop_read = _state.stop_write = None
