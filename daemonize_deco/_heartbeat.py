"""Heartbeats: the evidence that ``main`` makes progress, for the watchdog.

``main``'s thread beats each time it calls ``should_stop()`` or ``sleep()``;
an ``async def main``'s event loop beats from inside, every ``period``
seconds, from main's start to its end (a loop blocked by a synchronous call
stops beating); :func:`heartbeat` beats from any thread.  While main waits
inside ``sleep()`` it cannot be hung; once the run is ending (a stop was
requested, or main returned) only ``stop_timeout`` bounds it: either way
the watchdog does not count the silence.  Nor does it count silence before
the first beat: a main blocked in a server's loop from the start never beats
at all, and killing it every S seconds would take a healthy server for a
hung one.  The watchdog is armed by the first beat (:func:`unarmed` tells
the watchers how long it has waited for one, so they can say so once).

The slot holds four separate facts, each in 8 bytes of its own, so no
writer erases another's: the time of the last beat (``time.monotonic_ns()``,
a clock the whole machine shares; 0 before the first), how deep main is
inside ``sleep()`` (written by main's thread only), whether the run is
ending, and when main began.  A write is a store into memory: no system
call, no lock, no thread woken (the stop mark is written from a signal
handler too).  A supervised service's slot is a shared anonymous mapping
its supervisor made before the fork, so the supervisor reads the beats from
outside, where a deadlocked (or GIL-holding) main cannot stop it from
acting.  Otherwise the slot is local, read by the in-process watchdog
(``_watchdog``).
"""

from __future__ import annotations

import os
import time

from . import _notify, _signals

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import mmap

__all__ = [
    "LoopBeat",
    "attach",
    "beat",
    "beat_while_waiting",
    "counting",
    "ending",
    "heartbeat",
    "reset",
    "shared_slot",
    "silence",
    "silence_limit",
    "staleness",
    "unarmed",
]

_FIELD = 8
_BEAT = slice(0, _FIELD)  # monotonic_ns of the last beat (0: none yet)
_WAITS = slice(_FIELD, 2 * _FIELD)  # main's depth inside sleep() (0: not waiting)
_ENDING = slice(2 * _FIELD, 3 * _FIELD)  # non-zero once a stop was requested or main returned
_BEGAN = slice(3 * _FIELD, 4 * _FIELD)  # monotonic_ns of main's start
_SIZE = 4 * _FIELD
_NONE = bytes(_FIELD)
_YES = (1).to_bytes(_FIELD, "little")


class _Slot:
    memory: mmap.mmap | bytearray | None = None
    period = 0.25  # how often an event loop beats
    fork_hook = False


_slot = _Slot()


def shared_slot() -> mmap.mmap:
    """A slot a child forked after this call shares with us (a supervisor's)."""
    import mmap  # noqa: PLC0415 -- only a supervisor with a watchdog needs it

    memory = mmap.mmap(-1, _SIZE)  # MAP_SHARED | MAP_ANONYMOUS: survives the fork, shared
    reset(memory)
    return memory


def reset(memory: mmap.mmap | bytearray) -> None:
    """A new run's slot: begun just now, not beaten yet, not waiting, not ending."""
    memory[:] = _NONE + _NONE + _NONE + time.monotonic_ns().to_bytes(_FIELD, "little")


def attach(memory: mmap.mmap | bytearray | None, period: float) -> None:
    """Start counting beats, into ``memory`` (a supervisor's shared slot) or a local one.

    Main begins now; the watchdog is armed by its first beat.  An event loop
    (main's, or one waiting in ``stopped()``) beats every ``period`` seconds.
    """
    if not _slot.fork_hook:
        os.register_at_fork(after_in_child=_forget_in_child)
        _slot.fork_hook = True
    _slot.memory = bytearray(_SIZE) if memory is None else memory
    _slot.period = period
    reset(_slot.memory)
    _signals.count_heartbeats(beat, begin_wait=_begin_wait, end_wait=_end_wait, ending=ending)
    if _signals.stop_requested():  # before the hook was there to mark it
        ending()


def _forget_in_child() -> None:
    """A child main forks is not the service: its beats must not reach a shared slot."""
    _slot.memory = None


def beat() -> None:
    """Record that the service made progress just now."""
    memory = _slot.memory
    if memory is not None:
        memory[_BEAT] = time.monotonic_ns().to_bytes(_FIELD, "little")


def _begin_wait() -> None:
    """Main enters ``sleep()``: alive until it leaves (main's thread only)."""
    memory = _slot.memory
    if memory is not None:
        depth = int.from_bytes(memory[_WAITS], "little")
        memory[_WAITS] = (depth + 1).to_bytes(_FIELD, "little")


def _end_wait() -> None:
    """Main leaves ``sleep()``: a beat first, then the mark (a reader never sees neither)."""
    memory = _slot.memory
    if memory is not None:
        beat()
        depth = int.from_bytes(memory[_WAITS], "little")
        memory[_WAITS] = max(0, depth - 1).to_bytes(_FIELD, "little")


def ending() -> None:
    """The run is ending (a stop was requested, or main returned): silence is no hang now.

    Safe in a signal handler and from any thread.
    """
    memory = _slot.memory
    if memory is not None:
        memory[_ENDING] = _YES


def silence(memory: mmap.mmap | bytearray | None = None) -> float:
    """Seconds main has gone without a beat that count: 0 while it waits or the run ends.

    Reads ``memory`` (a supervisor's shared slot) or our own; 0 when not
    counting, and before the first beat (the watchdog is not armed yet).
    """
    return _seconds_since(_BEAT, memory)


def silence_limit(watchdog: float | None) -> float | None:
    """How long main may be silent: ``watchdog=``, else systemd's ``WatchdogSec``, else None.

    ``WatchdogSec`` counts only when systemd watches this process (its pings
    go out while main beats: ``_watchdog``); ``/livez`` and the ``health``
    command judge by the same limit, so they agree with what systemd will do.
    """
    if watchdog is not None:
        return watchdog
    interval = _notify.current().watchdog_interval
    return None if interval is None else 2 * interval


def staleness(limit: float | None, memory: mmap.mmap | bytearray | None = None) -> str | None:
    """Why main's heartbeats are not fresh under ``watchdog=limit``; None when they are.

    Fresh means a beat within half of ``limit`` (systemd pings at half of
    ``WatchdogSec`` for the same reason): a probe sees a hang before the
    watchdog ends the service for it.  Silence that is no hang (a wait in
    ``sleep()``, a run that is ending, no first beat yet) is fresh.
    """
    if limit is None:
        return None
    quiet = silence(memory)
    if quiet <= limit / 2:
        return None
    return f"no heartbeat for {quiet:.1f}s (watchdog={limit:g})"


def unarmed(memory: mmap.mmap | bytearray | None = None) -> float:
    """Seconds since main began, while nothing has beaten yet (else 0): the watchdog waits.

    0 too while main waits in ``sleep()`` or the run ends, as for :func:`silence`.
    """
    memory = _slot.memory if memory is None else memory
    if memory is None or memory[_BEAT] != _NONE:
        return 0.0
    return _seconds_since(_BEGAN, memory)


def _seconds_since(field: slice, memory: mmap.mmap | bytearray | None) -> float:
    memory = _slot.memory if memory is None else memory
    if memory is None:
        return 0.0
    # In this order: main leaving sleep() beats before it clears its mark, so
    # a mark read as cleared comes with that beat.
    if memory[_ENDING] != _NONE or memory[_WAITS] != _NONE:
        return 0.0
    then = int.from_bytes(memory[field], "little")
    if then == 0:
        return 0.0
    return max(0.0, (time.monotonic_ns() - then) / 1e9)


def counting() -> bool:
    """Whether a watchdog reads the beats (so an event loop must beat too)."""
    return _slot.memory is not None


class LoopBeat:
    """Main's event loop beating from inside, from main's start until :meth:`cancel`.

    A callback the loop runs every ``period`` seconds: an idle server's loop
    runs it on time, a loop blocked by a synchronous call does not.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._tick()

    def _tick(self) -> None:
        beat()
        self._handle = self._loop.call_later(_slot.period, self._tick)

    def cancel(self) -> None:
        """Beat no more (main has ended)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def beat_while_waiting(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[bool]) -> None:
    """Beat from ``loop`` until ``waiter`` is done: a loop that stalls stops beating."""

    def tick() -> None:
        if not waiter.done():
            beat()
            loop.call_later(_slot.period, tick)

    tick()


def heartbeat() -> None:
    """Tell the watchdog that the service is making progress (from any thread).

    ``should_stop()`` and ``sleep()`` in main beat already, and so does an
    ``async def main``'s event loop; call this for a sync main that blocks
    elsewhere (``serve_forever()``, a queue) at least every ``watchdog``
    seconds.  The watchdog is armed by the first beat.  A beat never ends main's
    waiting in ``sleep()``.  Does nothing without a watchdog, or in a child
    process the service forked.
    """
    beat()
