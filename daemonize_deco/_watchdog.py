"""The in-process watchdog: systemd's pings while main makes progress, and the end of a hung one.

A service nobody supervises from outside (``run``, systemd, supervisord, or
``start`` without ``restart=``) is watched by a thread of its own, which
does nothing else: a slow ``on_reload`` on the dispatcher thread cannot
delay a ping, and a deadlocked main stops them.  Each round it reads main's
last heartbeat (``_heartbeat``):

- under systemd's ``WatchdogSec``, ``WATCHDOG=1`` goes out only while the
  beats are fresh, so systemd itself sees a hung main;
- with ``watchdog=S``, a main that has not beaten for S seconds (once it is
  ready) is hung: the thread says so in the log and sends the process
  SIGABRT, on which faulthandler writes every thread's stack, and SIGKILL a
  second later if that did not end it.  Waiting in ``sleep()`` is not
  silence, nor is anything after a stop request or main's return: from
  then on ``stop_timeout`` alone bounds the run.  Nor is the time before
  the first beat: a main that has not beaten S seconds after it began (a
  sync main blocked in a server's loop) gets one line in the log instead.

A supervised service is watched by its supervisor instead (``_supervisor``).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import _thread
import os
import time

from . import _heartbeat, _signals
from ._hygiene import set_thread_name
from ._ready import is_ready

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._notify import Notifier

__all__ = ["ABORT_GRACE", "Watchdog", "hang_message", "round_length", "unarmed_message"]

ABORT_GRACE = 1.0  # seconds from SIGABRT (and the stacks) to SIGKILL


def round_length(limit: float) -> float:
    """How often to look: a hang is seen at most this long after ``limit``."""
    return min(0.25, limit / 4)


def hang_message(limit: float, pid: int) -> str:
    """The log line before a hung service's stacks (after ``NAME: ``)."""
    return (
        f"main made no progress for {limit:g}s (pid {pid}): hung; "
        "ending it with SIGABRT, its threads' stacks follow"
    )


def unarmed_message(limit: float, pid: int) -> str:
    """The log line (after ``NAME: ``) for a main that never beat within ``limit``."""
    return (
        f"watchdog={limit:g} not armed: nothing beat in the {limit:g}s since main began "
        f"(pid {pid}); a sync main blocked in a server's loop must call heartbeat() "
        "(README: Watchdog), an asyncio one beats from its loop if main is async def"
    )


class Watchdog:
    """A thread that pings systemd while main beats and ends a hung service."""

    def __init__(self, name: str, limit: float | None, notifier: Notifier) -> None:
        self._name = name
        self._notifier = notifier
        self._ping_every = notifier.watchdog_interval  # half of WatchdogSec
        self._abort_after = limit
        # Fresh enough to ping: our own limit, or systemd's (twice the interval).
        self._fresh_for = limit if limit is not None else 2 * (self._ping_every or 0)
        rounds = [self._ping_every or float("inf"), round_length(self._fresh_for)]
        self._round = min(rounds)

    def start(self) -> None:
        """Start the thread (it runs until the process ends)."""
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        _signals.keep_away_from_this_thread()
        set_thread_name("dd-watchdog")
        next_ping = time.monotonic()
        said_unarmed = False
        while True:
            age = self._age()
            if self._ping_every is not None and time.monotonic() >= next_ping:
                if age <= self._fresh_for:
                    self._notifier.watchdog()
                next_ping = time.monotonic() + self._ping_every
            if self._abort_after is not None and age > self._abort_after and is_ready():
                self._abort()
                return
            if not said_unarmed and self._unarmed_too_long():
                said_unarmed = True
                self._say(unarmed_message(self._abort_after or 0, os.getpid()))
            time.sleep(self._round)

    @staticmethod
    def _age() -> float:
        """Seconds of main's silence (0 while it waits in sleep() or the run ends)."""
        return _heartbeat.silence()

    def _unarmed_too_long(self) -> bool:
        """Main has not beaten once in ``watchdog`` seconds, and is ready: say so."""
        limit = self._abort_after
        return limit is not None and _heartbeat.unarmed() > limit and is_ready()

    def _say(self, text: str) -> None:
        # Straight to the descriptor: the hung main may hold sys.stderr's lock.
        os.write(2, f"{self._name}: {text}\n".encode("utf-8", "replace"))

    def _abort(self) -> None:
        assert self._abort_after is not None
        self._say(hang_message(self._abort_after, os.getpid()))
        os.kill(os.getpid(), signal.SIGABRT)  # faulthandler writes the stacks, then it dies
        time.sleep(ABORT_GRACE)
        os.kill(os.getpid(), signal.SIGKILL)
