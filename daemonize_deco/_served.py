"""What this process did as a service, for the way the command line ends it.

``_runtime`` writes these facts while it runs ``main``; ``_cli`` reads them
to choose between a quick ``os._exit`` and a normal exit.  They live here,
below both, so that a command that only addresses a service (``status``,
``stop``) never loads the daemon's runtime to learn that it ran nothing.
"""

from __future__ import annotations

__all__ = ["mark_served", "note_threads_left", "served_here", "threads_left_behind"]


class _Facts:
    served = False
    threads_left: tuple[str, ...] = ()


_facts = _Facts()


def served_here() -> bool:
    """Whether this process has run a service (and so may have its threads to wait for)."""
    return _facts.served


def threads_left_behind() -> tuple[str, ...]:
    """Names of main's threads still running ``stop_timeout`` after it returned."""
    return _facts.threads_left


def mark_served() -> None:
    """This process runs a service now (``run``, or ``start`` under a manager, or a daemon)."""
    _facts.served = True


def note_threads_left(names: tuple[str, ...]) -> None:
    """Main's threads still running when the service ended (none: an empty tuple)."""
    _facts.threads_left = names
