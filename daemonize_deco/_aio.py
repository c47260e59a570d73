"""asyncio services: ``async def main``, ``await stopped()``, and ``async def`` callbacks.

An awaitable returned by ``main`` runs under ``asyncio.run`` in the service
process; while it runs, its event loop is the *service loop*.  The stop flag
of ``_signals`` has a pipe that becomes readable, and stays readable, once a
stop is requested: :func:`stopped` watches it with ``loop.add_reader``, so a
waiting service does not wake until then (an idle asyncio daemon has no
timer at all).  Only with a watchdog does the service loop get one: it beats
from inside (``_heartbeat.LoopBeat``), from main's start to its end, so the
loop's responsiveness is main's progress.

Callbacks (``on_stop``, ``on_reload``, ``on_signal``) that are coroutine
functions still come from the dispatcher thread, one at a time, in arrival
order: each is handed to the service loop as a task
(``run_coroutine_threadsafe``) and waited for, so a reload is acknowledged
only once its ``async`` callbacks are done, and one that raises is logged
and makes the reload fail, as a plain callback does.  Without a service
loop (a plain ``main``), an ``async`` callback runs in a loop of its own on
the dispatcher thread.

``asyncio`` is imported only by a service that uses it.
"""

from __future__ import annotations

import _thread

from . import _heartbeat, _signals

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import concurrent.futures
    from collections.abc import Awaitable, Coroutine
    from typing import Any

__all__ = [
    "cancel_main",
    "is_awaitable",
    "run_awaitable",
    "run_callback_result",
    "running_main",
    "stopped",
]


class _ServiceLoop:
    """The loop ``main``'s awaitable runs in, its stopped() future, the callbacks in it.

    ``lock`` orders the dispatcher handing a callback to the loop against
    main's end: a callback handed over before is awaited before the loop
    closes (never cancelled half-way); one that comes after runs in a loop
    of its own.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        # One future per loop that waits (stopped() from a thread's own loop too).
        self.waiters: dict[asyncio.AbstractEventLoop, asyncio.Future[bool]] = {}
        self.lock = _thread.allocate_lock()
        self.in_flight: list[concurrent.futures.Future[object]] = []
        self.task: asyncio.Task[object] | None = None  # main's, to cancel on a stop
        self.cancelled_by_stop = False


_service = _ServiceLoop()


def is_awaitable(value: object) -> bool:
    """Whether ``main`` (or a callback) gave back something to await (a coroutine, a task)."""
    return hasattr(value, "__await__")


def run_awaitable(awaitable: Awaitable[object]) -> object:
    """Run main's awaitable to completion under ``asyncio.run``; return its result."""
    import asyncio  # noqa: PLC0415 -- only an asyncio service pays for it

    async def as_the_service() -> object:
        _service.loop = asyncio.get_running_loop()
        # Only a watched service pays for it: one timer in its loop.
        beating = _heartbeat.LoopBeat(_service.loop) if _heartbeat.counting() else None
        _service.task = asyncio.current_task()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not _service.cancelled_by_stop:
                raise
            return None  # the stop, delivered as asyncio.run's Ctrl-C (``_delivery``)
        finally:
            with _service.lock:
                _service.loop = None
                _service.task = None
                in_flight, _service.in_flight = _service.in_flight, []
            _forget_waiter(asyncio.get_running_loop())
            for future in in_flight:  # callbacks handed over before main ended finish first
                try:
                    await asyncio.wrap_future(future)
                except BaseException:  # noqa: BLE001 -- the dispatcher logs it
                    pass
            if beating is not None:
                beating.cancel()

    return asyncio.run(as_the_service())


def running_main() -> asyncio.Task[object] | None:
    """The task running an ``async def main`` right now, if any."""
    return _service.task


def cancel_main() -> bool:
    """Cancel main's task, as ``asyncio.run`` does on Ctrl-C; False when it has ended already."""
    with _service.lock:
        loop, task = _service.loop, _service.task
        if loop is None or task is None or loop.is_closed():
            return False

        def cancel() -> None:
            if not task.done():
                _service.cancelled_by_stop = True
                task.cancel()

        loop.call_soon_threadsafe(cancel)
    return True


async def stopped(timeout: float | None = None) -> bool:
    """Wait until a stop is requested (SIGTERM, SIGINT, ``stop``); return True then.

    With ``timeout`` (seconds), return False if no stop came within it: the
    async twin of :func:`sleep`.  Any number of tasks may wait at once.
    Counts as ``main`` reaching its loop (ready, by default).
    """
    import asyncio  # noqa: PLC0415 -- loaded already in a coroutine

    if _signals.should_stop():  # also: main reached its loop
        return True
    waiter = _shared_waiter(asyncio.get_running_loop())
    if timeout is None:
        return await asyncio.shield(waiter)
    try:
        return await asyncio.wait_for(asyncio.shield(waiter), timeout)
    except TimeoutError:
        return _signals.should_stop()


def _shared_waiter(loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
    """One future per loop, resolved when the stop pipe becomes readable."""
    waiter = _service.waiters.get(loop)
    if waiter is not None:
        return waiter
    waiter = loop.create_future()
    fd = _signals.stop_fd()

    def on_stop_requested() -> None:
        loop.remove_reader(fd)  # the pipe stays readable: one call is all we want
        if not waiter.done():
            waiter.set_result(True)

    loop.add_reader(fd, on_stop_requested)
    _service.waiters[loop] = waiter
    # A watchdog reads the beats: a stalled loop must stop them (the service
    # loop beats already, from main's start).
    if _heartbeat.counting() and loop is not _service.loop:
        _heartbeat.beat_while_waiting(loop, waiter)
    return waiter


def _forget_waiter(loop: asyncio.AbstractEventLoop) -> None:
    """The loop ends: stop watching the pipe for it."""
    if _service.waiters.pop(loop, None) is not None and not loop.is_closed():
        loop.remove_reader(_signals.stop_fd())


def run_callback_result(result: object) -> None:
    """Await what an ``async`` callback returned, in the service loop if there is one.

    Called on the dispatcher thread; returns once it is done, raising what it raised.
    """
    import asyncio  # noqa: PLC0415 -- only an async callback pays for it

    coroutine = _as_coroutine(result)
    with _service.lock:
        loop = _service.loop
        future = None
        if loop is not None and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
            _service.in_flight.append(future)
    if future is None:
        asyncio.run(coroutine)  # no service loop (a plain main, or main has ended)
        return
    try:
        future.result()
    finally:
        with _service.lock:
            if future in _service.in_flight:
                _service.in_flight.remove(future)


def _as_coroutine(awaitable: object) -> Coroutine[Any, Any, object]:
    async def wrapper() -> object:
        return await awaitable  # type: ignore[misc]

    return wrapper()
