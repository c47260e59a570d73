"""The graceful-stop flag: SIGTERM and SIGINT ask ``main`` to finish, they do not kill it.

Design.  A signal handler runs between two bytecodes of the main thread,
whatever that thread was doing: in the middle of a print, holding a lock,
half-way through writing a file.  So the handler here only records that a
stop was requested and wakes sleepers; it takes no lock, prints nothing and
raises nothing into the interrupted code.  ``main`` sees the request through
:func:`should_stop` and decides itself when to return.

Waking uses a self-pipe rather than ``threading.Event``: ``Event.set()``
takes a lock the interrupted code may hold, and ``time.sleep()`` is resumed
after a handler returns (PEP 475).  The handler writes one byte and the pipe
is never drained, so once a stop is requested the pipe stays readable and
every :func:`sleep`, in every thread, now or later, returns at once.  An idle
sleeper blocks in ``select`` without a timeout tick: it wakes zero times.
"""

from __future__ import annotations

import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from ._errors import DaemonError

__all__ = ["install", "request_stop", "restore", "should_stop", "sleep", "stop_signal"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A stray SIGHUP (a closing terminal, logrotate) must never kill a daemon.
IGNORED_SIGNALS = (signal.SIGHUP,)

_LONGEST_POLL_MS = 86_400_000  # poll() takes an int of milliseconds: wait a day at a time

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _State:
    """Per-process state: the flag, the wake-up pipe and the handlers we replaced."""

    def __init__(self) -> None:
        self.stop_signal: int | None = None
        self.stop_requested = False
        self.wake_read: int | None = None
        self.wake_write: int | None = None
        self.on_repeat: Callable[[int], None] | None = None
        self.previous: dict[int, Handler] = {}
        self.pipe_lock = threading.Lock()


_state = _State()


def _wake_pipe() -> tuple[int, int]:
    """Create the wake-up pipe on first use (never from a signal handler)."""
    with _state.pipe_lock:
        if _state.wake_read is None or _state.wake_write is None:
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            _state.wake_read, _state.wake_write = read_end, write_end
        return _state.wake_read, _state.wake_write


def should_stop() -> bool:
    """Return True once a graceful stop was requested (SIGTERM, SIGINT, ``stop``)."""
    return _state.stop_requested


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
    read_end, _ = _wake_pipe()
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    deadline = time.monotonic() + seconds if math.isfinite(seconds) else math.inf
    # The flag is checked after the pipe exists: a request made before had nowhere to write.
    while not _state.stop_requested:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if poller.poll(math.ceil(min(remaining * 1000, _LONGEST_POLL_MS))):
            return True
    return True


def request_stop(signum: int | None = None) -> None:
    """Set the stop flag and wake every sleeper.  Safe inside a signal handler."""
    if _state.stop_requested:
        return
    _state.stop_signal = signum
    _state.stop_requested = True
    write_end = _state.wake_write
    if write_end is not None:
        try:
            os.write(write_end, b"\0")
        except OSError:
            pass  # the pipe is full or closed: it is readable already or nobody waits


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _state.stop_requested and _state.on_repeat is not None:
        _state.on_repeat(signum)
        return
    request_stop(signum)


def _on_ignored_signal(signum: int, frame: FrameType | None) -> None:
    """Swallow the signal.  A Python handler, not SIG_IGN, so exec'd children get the default."""


def install(on_repeat: Callable[[int], None] | None = None) -> None:
    """Install the stop handlers, starting from a clear flag and a fresh wake-up pipe.

    ``on_repeat(signum)`` runs when a stop signal arrives while already
    stopping (a second Ctrl-C in the foreground).  Must be called from the
    main thread; :func:`restore` puts the previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        raise DaemonError("run must be called from the main thread: signal handlers live there")
    _close_wake_pipe()  # a pipe inherited across fork is shared with the parent
    _state.stop_signal = None
    _state.stop_requested = False
    _state.on_repeat = on_repeat
    _wake_pipe()
    handlers = dict.fromkeys(STOP_SIGNALS, _on_stop_signal)
    handlers.update(dict.fromkeys(IGNORED_SIGNALS, _on_ignored_signal))
    try:
        for sig, handler in handlers.items():
            _state.previous.setdefault(sig, signal.signal(sig, handler))
    except BaseException:
        restore()
        raise


def restore() -> None:
    """Put back the handlers :func:`install` replaced."""
    while _state.previous:
        sig, handler = _state.previous.popitem()
        signal.signal(sig, handler)
    _state.on_repeat = None


def _close_wake_pipe() -> None:
    with _state.pipe_lock:
        for fd in (_state.wake_read, _state.wake_write):
            if fd is not None:
                os.close(fd)
        _state.wake_read = _state.wake_write = None
