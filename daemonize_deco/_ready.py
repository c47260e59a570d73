"""Readiness: the moment a service tells whoever waits for it that it can serve.

``start`` waits for it on the startup pipe, systemd on its notify socket.
:func:`ready` is armed by the runtime while a service runs and does nothing
otherwise, so calling it from a script that is not a daemon is harmless.
"""

from __future__ import annotations

import _thread

from . import _notify

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._detach import StartupChannel

__all__ = ["arm", "disarm", "forget_in_child", "is_ready", "postpone", "ready", "when_ready"]


class _Readiness:
    """Who hears about readiness in this process: the starting process and systemd."""

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.startup: StartupChannel | None = None
        self.armed = False
        self.done = False
        self.then: Callable[[], object] | None = None  # told once ready (``_health``)


_readiness = _Readiness()


def ready() -> None:
    """Declare the service ready: ``start`` returns now (with ``wait_ready=True``).

    Call it once ``main`` can serve (port bound, data loaded).  Also sends
    systemd ``READY=1`` under ``Type=notify``.  Calling it again, or outside
    a running service, does nothing.
    """
    # Not waiting for the lock: whoever holds it is declaring readiness already
    # (the dispatcher at the end of the start grace), or is this very thread,
    # interrupted by a signal handler that calls should_stop() (a deadlock).
    if not _readiness.lock.acquire(blocking=False):
        return
    try:
        if not _readiness.armed or _readiness.done:
            return
        _readiness.done = True
        if _readiness.startup is not None:
            _readiness.startup.ready()
        _notify.current().ready()
        then, _readiness.then = _readiness.then, None
        if then is not None:
            then()
    finally:
        _readiness.lock.release()


def postpone() -> None:
    """Tell the starting process that the start grace does not end this start (``_listening``)."""
    if not _readiness.lock.acquire(blocking=False):
        return  # someone is declaring it ready: nothing to postpone
    try:
        if _readiness.armed and not _readiness.done and _readiness.startup is not None:
            _readiness.startup.postpone()
    finally:
        _readiness.lock.release()


def is_ready() -> bool:
    """Whether the running service has declared itself ready."""
    return _readiness.done


def unready() -> str | None:
    """Why the service takes no traffic now (``/readyz``, ``health --ready``); None: it does.

    Ready from the readiness ``start`` waits for until a stop is announced
    (the first instant of a stop, through a ``drain=``).
    """
    from ._signals import stop_announced  # noqa: PLC0415 -- loaded with the service

    if stop_announced():
        return "stopping"
    if not _readiness.done:
        return "starting: not ready yet"
    return None


def when_ready(callback: Callable[[], object]) -> None:
    """Call ``callback`` once, when the service declares itself ready (it must not block)."""
    _readiness.then = callback


def arm(startup: StartupChannel | None) -> None:
    """From now on, ready() tells ``startup`` (if any) and systemd, once."""
    with _readiness.lock:
        _readiness.startup = startup
        _readiness.armed = True
        _readiness.done = False


def disarm() -> bool:
    """Stop reporting readiness; return whether the service had become ready."""
    with _readiness.lock:
        was_ready = _readiness.done
        _readiness.startup = None
        _readiness.armed = False
        _readiness.then = None
        return was_ready


def forget_in_child() -> None:
    """In a child forked by the service: it is not the service, so ready() does nothing.

    The startup pipe's copy is closed without a word (the starting process
    listens to the daemon, not to its children).  The lock is new: another
    thread may have held it at the fork.
    """
    _readiness.lock = _thread.allocate_lock()
    if _readiness.startup is not None:
        _readiness.startup.close()
    _readiness.startup = None
    _readiness.armed = False
    _readiness.then = None
