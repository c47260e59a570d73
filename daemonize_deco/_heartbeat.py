"""Heartbeats: the evidence that ``main`` makes progress, for the watchdog.

``main``'s thread beats each time it calls ``should_stop()`` or ``sleep()``
(and a coroutine awaiting ``stopped()`` beats from the loop it waits in);
:func:`heartbeat` beats from any thread.  While main waits inside ``sleep()``
it cannot be hung; once the run is ending (a stop was requested, or main
returned) only ``stop_timeout`` bounds it: either way the watchdog does not
count the silence.

The slot holds three separate facts, each in 8 bytes of its own, so no
writer erases another's: the time of the last beat (``time.monotonic_ns()``,
a clock the whole machine shares), how deep main is inside ``sleep()``
(written by main's thread only), and whether the run is ending.  A write is
a store into memory: no system call, no lock, no thread woken (the stop mark
is written from a signal handler too).  A supervised service's slot is a
shared anonymous mapping its supervisor made before the fork, so the
supervisor reads the beats from outside, where a deadlocked (or
GIL-holding) main cannot stop it from acting.  Otherwise the slot is local,
read by the in-process watchdog (``_watchdog``).
"""

from __future__ import annotations

import os
import time

from . import _signals

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import mmap

__all__ = [
    "attach",
    "beat",
    "beat_while_waiting",
    "counting",
    "ending",
    "heartbeat",
    "reset",
    "shared_slot",
    "silence",
]

_FIELD = 8
_BEAT = slice(0, _FIELD)  # monotonic_ns of the last beat
_WAITS = slice(_FIELD, 2 * _FIELD)  # main's depth inside sleep() (0: not waiting)
_ENDING = slice(2 * _FIELD, 3 * _FIELD)  # non-zero once a stop was requested or main returned
_SIZE = 3 * _FIELD
_NONE = bytes(_FIELD)
_YES = (1).to_bytes(_FIELD, "little")


class _Slot:
    memory: mmap.mmap | bytearray | None = None
    period = 0.25  # how often a waiting event loop beats
    fork_hook = False


_slot = _Slot()


def shared_slot() -> mmap.mmap:
    """A slot a child forked after this call shares with us (a supervisor's)."""
    import mmap  # noqa: PLC0415 -- only a supervisor with a watchdog needs it

    memory = mmap.mmap(-1, _SIZE)  # MAP_SHARED | MAP_ANONYMOUS: survives the fork, shared
    reset(memory)
    return memory


def reset(memory: mmap.mmap | bytearray) -> None:
    """A new run's slot: beaten just now, not waiting, not ending."""
    memory[:] = time.monotonic_ns().to_bytes(_FIELD, "little") + _NONE + _NONE


def attach(memory: mmap.mmap | bytearray | None, period: float) -> None:
    """Start counting beats, into ``memory`` (a supervisor's shared slot) or a local one.

    Counts from now: the time main was entered is its first beat.  An event
    loop waiting in ``stopped()`` beats every ``period`` seconds.
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

    Reads ``memory`` (a supervisor's shared slot) or our own; 0 when not counting.
    """
    memory = _slot.memory if memory is None else memory
    if memory is None:
        return 0.0
    # In this order: main leaving sleep() beats before it clears its mark, so
    # a mark read as cleared comes with that beat.
    if memory[_ENDING] != _NONE or memory[_WAITS] != _NONE:
        return 0.0
    last = int.from_bytes(memory[_BEAT], "little")
    return max(0.0, (time.monotonic_ns() - last) / 1e9)


def counting() -> bool:
    """Whether a watchdog reads the beats (so a waiting event loop must beat too)."""
    return _slot.memory is not None


def beat_while_waiting(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[bool]) -> None:
    """Beat from ``loop`` until ``waiter`` is done: a loop that stalls stops beating."""

    def tick() -> None:
        if not waiter.done():
            beat()
            loop.call_later(_slot.period, tick)

    tick()


def heartbeat() -> None:
    """Tell the watchdog that the service is making progress (from any thread).

    ``should_stop()``, ``sleep()`` and ``await stopped()`` in main beat
    already; call this from a main that blocks elsewhere (``serve_forever()``,
    a queue) at least every ``watchdog`` seconds.  A beat never ends main's
    waiting in ``sleep()``.  Does nothing without a watchdog, or in a child
    process the service forked.
    """
    beat()
