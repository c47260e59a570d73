"""Heartbeats: the evidence that ``main`` makes progress, for the watchdog.

``main``'s thread beats each time it calls ``should_stop()`` or ``sleep()``
(and a coroutine awaiting ``stopped()`` beats from the loop it waits in);
:func:`heartbeat` beats from any thread.  While main waits inside ``sleep()``
it cannot be hung, so the slot says "waiting" instead of a time.

A beat is one write of ``time.monotonic_ns()`` (a clock the whole machine
shares) into an 8-byte slot: no system call, no lock, no thread woken.  A
supervised service's slot is a shared anonymous mapping its supervisor made
before the fork, so the supervisor reads the beats from outside, where a
deadlocked (or GIL-holding) main cannot stop it from acting.  Otherwise the
slot is local, read by the in-process watchdog (``_watchdog``).
"""

from __future__ import annotations

import time

from . import _signals

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import mmap

__all__ = [
    "WAITING",
    "attach",
    "beat",
    "beat_while_waiting",
    "counting",
    "heartbeat",
    "last_beat",
    "shared_slot",
    "waiting",
]

WAITING = 2**63 - 1  # "inside sleep(): alive, whatever the time"
_SIZE = 8


class _Slot:
    memory: mmap.mmap | bytearray | None = None
    period = 0.25  # how often a waiting event loop beats


_slot = _Slot()


def shared_slot() -> mmap.mmap:
    """A slot a child forked after this call shares with us (a supervisor's)."""
    import mmap  # noqa: PLC0415 -- only a supervisor with a watchdog needs it

    memory = mmap.mmap(-1, _SIZE)  # MAP_SHARED | MAP_ANONYMOUS: survives the fork, shared
    memory[:] = time.monotonic_ns().to_bytes(_SIZE, "little")
    return memory


def attach(memory: mmap.mmap | bytearray | None, period: float) -> None:
    """Start counting beats, into ``memory`` (a supervisor's shared slot) or a local one.

    Counts from now: the time main was entered is its first beat.  An event
    loop waiting in ``stopped()`` beats every ``period`` seconds.
    """
    _slot.memory = bytearray(_SIZE) if memory is None else memory
    _slot.period = period
    beat()
    _signals.count_heartbeats(beat, waiting)


def beat() -> None:
    """Record that the service made progress just now."""
    memory = _slot.memory
    if memory is not None:
        memory[:] = time.monotonic_ns().to_bytes(_SIZE, "little")


def waiting() -> None:
    """Main waits in the framework (``sleep()``): alive until it beats again."""
    memory = _slot.memory
    if memory is not None:
        memory[:] = WAITING.to_bytes(_SIZE, "little")


def last_beat(memory: mmap.mmap | bytearray | None = None) -> int | None:
    """The last beat in ``monotonic_ns`` (or :data:`WAITING`); None when not counting."""
    memory = _slot.memory if memory is None else memory
    return None if memory is None else int.from_bytes(memory[:_SIZE], "little")


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
    a queue) at least every ``watchdog`` seconds.  Does nothing without a
    watchdog.
    """
    beat()
