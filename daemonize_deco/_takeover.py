"""Frameworks that take the signals over: they get them, and so does the service.

uvicorn (``capture_signals``), gunicorn's arbiter and asyncio's
``loop.add_signal_handler`` (aiohttp's ``run_app``) install handlers of
their own for SIGTERM, SIGINT and SIGHUP, all through ``signal.signal``.
Each replaced the registry's (``_signals``): the service never heard of its
stop (``on_stop`` did not run, the run read "exited with status 0") nor of
a reload.

So, while a service runs, ``signal.signal`` for a signal the registry
handles installs a *chain*: the registry's handler first (it records, as
always), then the framework's, which shuts its server down gracefully in
its own way.  Both see every signal, in that order; the framework gets
back what it replaced, as if nothing were in between.  ``_signal.signal``
is the one replaced: the ``signal`` module's function calls it by name at
each call, so both spellings reach it.  A chain rather than putting ours
back later: a handler must be in place before the signal comes.

Setting ``SIG_DFL`` or ``default_int_handler`` for such a signal puts the
registry's handler back alone.  asyncio sets ``SIG_DFL`` when its loop
closes; SIGTERM's default action would then end the service half-way
through recording its end.  ``SIG_IGN`` is the program's own choice and
is set as asked: the signal is ignored, and ``stop`` ends in SIGKILL.

With ``drain=S`` the framework hears the stop when ``main`` would: not at
the signal, which only announces the stop, but when the drain ends.  The
chain holds the framework's handler back meanwhile; at the drain's end the
signal is sent again to main's thread, for the framework's handler alone
(the registry heard it already).  Not to ``loop.add_signal_handler``
(asyncio's, uvloop's): the handler it sets only stands in for the loop,
which got the signal through the wakeup fd, in C, before any handler of
ours ran.

uvicorn raises the stop signal at itself once it has shut down, for the
"expected behaviour" (dying of it).  Under a service, main returning is
that behaviour; read as a second stop, it would end a foreground ``run``
at once.  ``raise_signal`` of a stop signal, once a stop is under way,
does nothing.
"""

from __future__ import annotations

import _signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import FrameType
    from typing import Any

    Handler = Callable[[int, FrameType | None], Any]

__all__ = [
    "chained",
    "framework_handler",
    "hand_on_held",
    "handler_name",
    "is_replay",
    "release",
    "take_part",
]

# Through the module's dict: what is replaced is a C module's attribute.
_c_module = vars(_signal)
_real_signal: Callable[[int, object], object] = _c_module["signal"]
_real_raise: Callable[[int], None] = _c_module["raise_signal"]
_EVENT_LOOPS = ("asyncio", "uvloop")  # the modules whose signal handlers stand in for a loop


class _Chain:
    """The registry's handler, then the framework's."""

    __slots__ = ("ours", "theirs")

    def __init__(self, ours: Handler, theirs: Handler) -> None:
        self.ours, self.theirs = ours, theirs

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if is_replay(signum):
            self.theirs(signum, frame)  # the drain is over: the framework's turn
            return
        _state.heard[signum] = self.theirs
        try:
            self.ours(signum, frame)
        finally:
            if signum in _state.stop_signals and _state.holding() and _holds(self.theirs):
                _state.held[signum] = self.theirs  # until the drain ends
            else:
                if signum in _state.stop_signals:
                    _state.held.clear()  # it hears of the stop now, once
                self.theirs(signum, frame)


class _State:
    def __init__(self) -> None:
        self.ours: Mapping[int, Any] = {}
        self.stop_signals: frozenset[int] = frozenset()
        self.stopping: Callable[[], bool] = lambda: False
        self.heard: dict[int, Handler] = {}
        self.active = False
        # ``drain=``: whether a stop signal is to be held back from the framework now;
        # those held, and those sent again for the framework's handler alone.
        self.holding: Callable[[], bool] = lambda: False
        self.held: dict[int, Handler] = {}
        self.replaying: set[int] = set()


_state = _State()


def _signal_wrapper(signalnum: int, handler: object) -> object:
    """``signal.signal`` while a service runs: a framework's handler is chained to ours."""
    signum = int(signalnum)
    ours = _state.ours.get(signum)
    if ours is None or handler is ours or isinstance(handler, _Chain):
        return _shown(_real_signal(signum, handler))
    if handler in (_signal.SIG_DFL, _signal.default_int_handler):
        installed: object = ours
    elif callable(handler):
        installed = _Chain(ours, handler)
    else:
        return _shown(_real_signal(signum, handler))  # its TypeError
    return _shown(_real_signal(signum, installed))


def _shown(previous: object) -> object:
    """What a framework replaced: its own handler, never our chain around it."""
    return previous.theirs if isinstance(previous, _Chain) else previous


def _raise_wrapper(signalnum: int) -> None:
    """``signal.raise_signal``: a stop signal raised again after the stop began is not a new one."""
    if int(signalnum) in _state.stop_signals and _state.stopping():
        return
    _real_raise(signalnum)


def take_part(
    ours: Mapping[int, Any],
    stop_signals: frozenset[int],
    stopping: Callable[[], bool],
    holding: Callable[[], bool] = lambda: False,
) -> None:
    """Chain, from now on, any handler set for the signals in ``ours`` to ours.

    ``holding()``, asked after our handler ran for a stop signal: whether the
    framework's handler is to wait for :func:`hand_on_held` (a drain began).
    """
    _state.ours, _state.stop_signals, _state.stopping = dict(ours), stop_signals, stopping
    _state.holding = holding
    _state.heard, _state.held, _state.replaying = {}, {}, set()
    _state.active = True
    _c_module["signal"] = _signal_wrapper
    _c_module["raise_signal"] = _raise_wrapper
    _put_in_signal_module(_real_raise, _raise_wrapper)


def release() -> None:
    """Stop chaining: ``signal.signal`` is the plain one again."""
    if not _state.active:
        return
    _state.active = False
    _state.ours = {}
    _state.holding = lambda: False
    _state.held, _state.replaying = {}, set()
    _c_module["signal"] = _real_signal
    _c_module["raise_signal"] = _real_raise
    _put_in_signal_module(_raise_wrapper, _real_raise)


def _put_in_signal_module(old: object, new: object) -> None:
    """The ``signal`` module's raise_signal is _signal's own, copied at its import."""
    module = sys.modules.get("signal")
    if module is not None and vars(module).get("raise_signal") is old:
        vars(module)["raise_signal"] = new


def _holds(handler: Handler) -> bool:
    """Whether holding ``handler`` back holds the framework back.

    Not an event loop's (``loop.add_signal_handler``, asyncio's or uvloop's):
    the loop hears the signal through the wakeup fd, in C, whatever its
    handler does, and a signal sent again would reach the loop twice.
    """
    function = getattr(handler, "__func__", handler)
    module = getattr(function, "__module__", None) or ""
    return not module.startswith(_EVENT_LOOPS)


def hand_on_held(send: Callable[[int], None]) -> None:
    """The drain is over: ``send(signum)`` each stop signal held back from a framework.

    Only to a framework still chained with the handler that was held back;
    the handler then hears the signal as its own, on main's thread.
    """
    held, _state.held = _state.held, {}
    for signum, theirs in held.items():
        if chained(signum) is theirs:
            _state.replaying.add(signum)
            send(signum)


def is_replay(signum: int) -> bool:
    """Whether ``signum`` is one :func:`hand_on_held` sent (true once for each)."""
    if signum not in _state.replaying:
        return False
    _state.replaying.discard(signum)
    return True


def framework_handler(signum: int) -> Handler | None:
    """The framework's handler that got ``signum`` or is chained for it now, if any."""
    return _state.heard.get(signum) or chained(signum)


def chained(signum: int) -> Handler | None:
    """The framework's handler chained to ours for ``signum`` right now, if any."""
    current: object = _signal.getsignal(signum)
    return current.theirs if isinstance(current, _Chain) else None


def handler_name(handler: object) -> str:
    """``uvicorn.server.Server.handle_exit``: a handler as the log names it."""
    function = getattr(handler, "__func__", handler)
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(handler).__qualname__
    if module.startswith("asyncio"):
        return "asyncio's loop.add_signal_handler"
    return f"{module}.{name}"
