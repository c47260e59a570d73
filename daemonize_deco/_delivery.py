"""How a stop reaches a ``main`` that never asks.

A ``main`` that polls (``should_stop()``, ``sleep()``, ``await stopped()``)
sees the stop flag.  One that has not called any of them by the time the
stop comes is blocked in someone else's loop: ``waitress.serve``,
``serve_forever()``, APScheduler's ``start()``.  Those loops never look at
our flag, but every one of them ends gracefully on Ctrl-C.  So, once the
``on_stop`` callbacks ran, the stop is delivered to such a main the way
Ctrl-C is, once:

- a plain ``main`` gets KeyboardInterrupt in its thread: a SIGINT sent to
  that thread (``pthread_kill``, so a wait in the kernel ends with EINTR)
  which the registry's handler turns into KeyboardInterrupt;
- an ``async def main`` has its task cancelled, as ``asyncio.run`` does.

Not when a framework's own handler got the stop signal (``_takeover``): it
is shutting down already, and a second Ctrl-C makes uvicorn quit at once.
Nor when ``on_stop`` made main move on (main left the call it was blocked
in): it is ending by itself, and a KeyboardInterrupt would cut its cleanup.

A KeyboardInterrupt interrupts only the loop, never the service's own
code: it comes while main's thread runs library code only (the stdlib,
site-packages) above main's frame.  A single-threaded server (``wsgiref``)
runs each request in main's thread: a request in flight finishes first.
The dispatcher looks at main's stack (``sys._current_frames``) until then;
the handler checks again on the very frame it would interrupt.

``stop_main=`` says which: "auto" (the rule above), "flag" (never
delivered), "interrupt" (delivered even to a main that polls).

After main returned, what it left in flight is finished, as an interpreter
exit would but before the pidfile goes: ``concurrent.futures`` executors
(APScheduler's jobs) end once their work is done, and socketserver's
request threads (daemon threads: cut at exit) finish the request they run.
"""

from __future__ import annotations

import _signal as signal
import os
import sys
import time

from . import _signals, _takeover

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, FrameType

__all__ = ["STOP_MAIN_MODES", "arm", "deliver", "finish_in_flight", "main_ended", "stop_arrived"]

STOP_MAIN_MODES = ("auto", "flag", "interrupt")
_LOOK_EVERY = 0.02  # how often the dispatcher looks at main's stack
_STILL_LOOKS = 3  # looks that must find main's thread in the same place: it waits
_LIBRARY_CODE = ("<",)  # frozen modules, code compiled from strings
_HANDLER_MODULES = frozenset({_signals.__name__, __name__})  # the signal handler's code


class _State:
    def __init__(self) -> None:
        self.mode = "flag"
        self.stop_timeout = 10.0
        self.entry: CodeType | None = None  # the code that calls main
        self.main_frame: FrameType | None = None  # where main was when the stop came
        self.callee: FrameType | None = None
        self.lasti = -1
        self.waiting = False  # main was seen blocked where it is anchored
        self.ended = False  # main returned (or raised): nothing to deliver to
        self.sent = 0
        self.seen = 0
        self.library: tuple[str, ...] | None = None
        self.target: FrameType | None = None


_state = _State()


def arm(mode: str, stop_timeout: float, entry: CodeType) -> None:
    """Before main is called: how to deliver its stop; ``entry`` is the code that calls main."""
    _state.mode, _state.stop_timeout, _state.entry = mode, stop_timeout, entry
    _state.main_frame = _state.callee = None
    _state.ended = False


def main_ended() -> None:
    """Main has returned or raised: a delivery under way gives up."""
    _state.ended = True


def stop_arrived() -> None:
    """On the dispatcher, as the stop comes (before ``on_stop``): note where main is."""
    if _state.mode == "flag" or _state.entry is None:
        return
    if _state.mode == "auto" and _signals.main_asked():
        return  # it polls: nothing will be delivered
    top = sys._current_frames().get(_signals.main_thread())
    _anchor(top)
    _state.waiting = _state.main_frame is not None and _where(top) == "waits"


def _anchor(top: FrameType | None) -> None:
    """Take where main is now as the call it waits in, not yet seen waiting there."""
    _state.main_frame = _state.callee = None
    _state.waiting = False
    stack = _main_stack(top)
    if stack:
        _state.main_frame = stack[-1]
        _state.callee = stack[-2] if len(stack) > 1 else None
        _state.lasti = _state.main_frame.f_lasti


def deliver(signum: int) -> None:
    """On the dispatcher, after ``on_stop``: deliver the stop to main, if it needs it; say how."""
    mode = _state.mode
    if mode == "flag" or _state.entry is None:
        return
    framework = _takeover.framework_handler(signum)
    if framework is not None:
        _say(f"the service's own handler ({_takeover.handler_name(framework)}) got it")
        return
    if mode == "auto" and _signals.main_asked():
        return  # it polls: the flag is how it hears
    from . import _aio  # noqa: PLC0415 -- loaded already by an async main

    if _aio.running_main() is not None:
        if _aio.cancel_main():
            _say("main's task cancelled, as asyncio.run does on Ctrl-C")
        return
    _interrupt_main()


def _say(how: str) -> None:
    why = "stop_main='interrupt'" if _state.mode == "interrupt" else "main never asked"
    print(f"daemonize_deco: stop delivered to main: {how} ({why})", file=sys.stderr, flush=True)


def _interrupt_main() -> None:
    """Send main's thread Ctrl-C once it waits in the loop; give up if main left it.

    Main left the call it was seen waiting in: it is on its way out (``on_stop``
    ended its loop).  Main not seen waiting yet (the stop came before main was
    entered, or while its own code set the server up): it is followed into
    the call it comes to wait in.
    """
    main = _signals.main_thread()
    deadline = time.monotonic() + _signals.time_left(_state.stop_timeout)
    said = False
    still: list[tuple[int, int]] = []
    while time.monotonic() < deadline and not _signals.main_interrupted():
        if _state.seen < _state.sent:
            time.sleep(0.005)  # the handler has not run yet: it will
            continue
        if _state.ended or (_state.mode == "auto" and _signals.main_asked()):
            return  # main returned, or now polls: the flag is how it hears
        top = sys._current_frames().get(main)
        place = _where(top)
        if place == "moved on" and not _state.waiting:
            _anchor(top)  # on its way to the loop: follow it there
            still = []
            time.sleep(_LOOK_EVERY)
            continue
        if place == "moved on":
            if _signals.delivery_pending():
                _signals.expect_delivery(None)
            return
        # Waiting means blocked there: the same frame at the same instruction
        # over a few looks, not on its way out of the call (server.shutdown()
        # in on_stop returns while serve_forever() runs its last lines).
        still = [*still, (id(top), -1 if top is None else top.f_lasti)][-_STILL_LOOKS:]
        if place == "waits" and len(still) == _STILL_LOOKS and len(set(still)) == 1:
            _state.waiting = True
            if not said:
                _say_interrupt()
                said = True
            _state.target = top
            _signals.expect_delivery(_now_is_the_time)
            _state.sent += 1
            signal.pthread_kill(main, signal.SIGINT)
            still = []
            continue
        time.sleep(_LOOK_EVERY)  # busy (a request of its own), or just got there


def _say_interrupt() -> None:
    framework = _takeover.chained(signal.SIGINT)
    _say(
        "KeyboardInterrupt in main's thread, as on Ctrl-C"
        if framework is None
        else f"Ctrl-C to the service's own handler ({_takeover.handler_name(framework)})"
    )


def _now_is_the_time(frame: FrameType | None) -> bool:
    """In main's thread, in the SIGINT handler: interrupt this frame now?"""
    _state.seen += 1
    if _takeover.chained(signal.SIGINT):
        _signals.expect_delivery(None)  # the framework's own Ctrl-C handler runs next
        return False
    # The frame it was seen waiting in, interrupted in that wait.
    return frame is _state.target and _where(frame) == "waits"


def _where(top: FrameType | None) -> str:
    """Where main is: "waits", "busy" or "moved on".

    "waits": in the call it was in at the stop, in library code only;
    "busy": running the service's own code above it (a request).
    """
    stack = _main_stack(top)
    if not stack or stack[-1] is not _state.main_frame:
        return "moved on"
    if _state.callee is None:
        if len(stack) > 1 or stack[-1].f_lasti != _state.lasti:
            return "moved on"
        return "waits"
    if len(stack) < 2 or stack[-2] is not _state.callee:
        return "moved on"
    if any(not _is_library(frame.f_code.co_filename) for frame in stack[:-1]):
        return "busy"
    return "waits"


def _main_stack(top: FrameType | None) -> list[FrameType]:
    """Main's frame and those above it, topmost first; [] when main is not running.

    Without the registry's signal handler on top: Python runs it in main's
    thread, above the call main waits in (the stop's own SIGTERM, for one),
    and main is back in that call once it returned.
    """
    stack: list[FrameType] = []
    frame = top
    while frame is not None and frame.f_globals.get("__name__") in _HANDLER_MODULES:
        frame = frame.f_back
    while frame is not None:
        if frame.f_code is _state.entry:
            return stack
        stack.append(frame)
        frame = frame.f_back
    return []


def _is_library(filename: str) -> bool:
    """Whether code in ``filename`` is the stdlib's, an installed package's, or ours."""
    if _state.library is None:
        _state.library = _library_dirs()
    return filename.startswith(_state.library)


def _library_dirs() -> tuple[str, ...]:
    """The stdlib's directories, site-packages, and ours.

    Not from ``sysconfig``: since 3.12 it imports threading, and threading
    imported first in a thread other than main's (this is the dispatcher's)
    takes that thread for the main thread; the exit would then wait for it.
    """
    import site  # noqa: PLC0415 -- only a delivery pays for it

    dirs = {os.path.dirname(os.__file__), os.path.dirname(os.path.abspath(__file__))}
    dynload = getattr(sys.modules.get("_socket"), "__file__", None)  # lib-dynload
    if dynload:
        dirs.add(os.path.dirname(dynload))
    dirs.update(site.getsitepackages())
    return (*_LIBRARY_CODE, *(os.path.join(d, "") for d in dirs if d))


def finish_in_flight(timeout: float) -> None:
    """After main returned: let executors and request threads finish what they run.

    ``concurrent.futures`` registers its executors' shutdown with threading,
    to run at interpreter exit before the non-daemon threads are joined; it
    runs now, for the same reason, before the pidfile goes.  socketserver's
    request threads are daemon threads, which an exit cuts: each one in the
    middle of a request (running the service's code) is waited for, up to
    ``timeout``.
    """
    threading = sys.modules.get("threading")
    if threading is None:
        return
    exits = getattr(threading, "_threading_atexits", None)
    while exits:
        exits.pop()()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _requests_in_flight(threading):
        time.sleep(_LOOK_EVERY)


def _requests_in_flight(threading: object) -> bool:
    socketserver = sys.modules.get("socketserver")
    if socketserver is None:
        return False
    serving = socketserver.ThreadingMixIn.process_request_thread.__code__
    for top in sys._current_frames().values():
        in_service_code = False
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code is serving:
                if in_service_code:
                    return True
                break
            in_service_code = in_service_code or not _is_library(frame.f_code.co_filename)
            frame = frame.f_back
    return False
