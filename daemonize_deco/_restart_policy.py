"""The restart policy: after a run of the service ended, restart it after how long, or not.

One pure function of what happened and the configuration (``RestartPolicy``):
the restarts that still count (``Restarts``), when the run began, whether it
failed, and now.  It has no clock of its own and starts nothing, so it is
tested in-process with made-up times; the supervisor gives it
``time.monotonic()``.  It says:

- restart after ``delay``, which doubles at each restart up to ``delay_max``;
- give up, when that would be more than ``burst`` restarts within
  ``interval`` seconds;
- or end, when the run ended cleanly and ``restart="on-failure"``.

A run that lasted longer than ``interval`` starts the count and the delay
afresh.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from ._config import RestartPolicy

__all__ = ["GiveUp", "NoRestart", "Restart", "Restarts", "after_run"]


class Restarts:
    """What the policy remembers from one end to the next (never changed: a new one is made)."""

    __slots__ = ("delay", "times")

    def __init__(self, times: tuple[float, ...], delay: float) -> None:
        self.times: Final = times  # the clock's readings at the restarts within the window
        self.delay: Final = delay  # what the next restart waits

    @classmethod
    def fresh(cls, policy: RestartPolicy) -> Restarts:
        """No restart yet: the first waits ``policy.delay``."""
        return cls((), policy.delay)


class Restart:
    """Start the service again in ``delay`` seconds, and remember ``history`` for the next end."""

    __slots__ = ("delay", "history")

    def __init__(self, delay: float, history: Restarts) -> None:
        self.delay: Final = delay
        self.history: Final = history


class GiveUp:
    """Too many restarts: ``reason`` says how many within how long ("3 failures within 60s")."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason: Final = reason


class NoRestart:
    """The run ended cleanly and ``restart="on-failure"``: the supervisor ends with it."""

    __slots__ = ()


def after_run(
    policy: RestartPolicy, history: Restarts, *, started: float, now: float, failed: bool
) -> Restart | GiveUp | NoRestart:
    """What to do now that a run which began at ``started`` ended (both readings of one clock)."""
    if policy.mode == "on-failure" and not failed:
        return NoRestart()
    if now - started > policy.interval:
        history = Restarts.fresh(policy)  # it ran a long while: a fresh count
    recent = tuple(t for t in history.times if now - t <= policy.interval)
    if len(recent) >= policy.burst:
        return GiveUp(f"{len(recent) + 1} failures within {policy.interval:g}s")
    doubled = min(policy.delay_max, max(history.delay * 2, 0))
    return Restart(history.delay, Restarts((*recent, now), doubled))
