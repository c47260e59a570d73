"""The library's threads step aside around an ``os.fork()`` in main.

A process that forks with a second thread alive risks a child deadlocked
on a lock that thread held, and Python 3.12 warns about it.  The library's
idle threads (the dispatcher's, the health endpoint's) quit before the fork
and come back after it in the parent; in the child they are not there, and
their owners forget them (each by its own fork hook).  Nothing is lost
meanwhile: what they serve waits in its pipe or socket.
"""

from __future__ import annotations

import os
import time

from ._proc import task_exists

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class SteppingAside(Protocol):
        """A thread's owner: :meth:`pause` before a fork, :meth:`resume` after it."""

        def pause(self) -> bool:
            """Let the thread quit and leave the kernel; False if it could not."""

        def resume_after_fork(self) -> None:
            """In the parent, after the fork: bring the thread back (now, or soon)."""


__all__ = ["left_the_kernel", "step_aside", "stop_stepping_aside"]

_LEAVE_WAIT = 1.0  # seconds a thread that said it ended may take to leave the kernel

_owners: list[SteppingAside] = []
_hooks_registered = False


def step_aside(owner: SteppingAside) -> None:
    """Pause ``owner``'s thread around every fork of this process from now on."""
    global _hooks_registered  # noqa: PLW0603 -- one set of fork hooks per process
    if owner not in _owners:
        _owners.append(owner)
    if not _hooks_registered:
        os.register_at_fork(
            before=_before_fork, after_in_parent=_after_in_parent, after_in_child=_in_child
        )
        _hooks_registered = True


def stop_stepping_aside(owner: SteppingAside) -> None:
    """Forks no longer pause ``owner``'s thread (it is ending)."""
    if owner in _owners:
        _owners.remove(owner)


def left_the_kernel(native_id: int | None) -> None:
    """Wait (up to a second) until the thread whose lock said it ended has left the kernel.

    The lock is released a moment before the kernel lets the thread go, and
    the fork warning counts the kernel's threads.  Without /proc, not waited for.
    """
    deadline = time.monotonic() + _LEAVE_WAIT
    while task_exists(native_id) and time.monotonic() < deadline:
        time.sleep(0.00005)


def _before_fork() -> None:
    for owner in list(_owners):
        owner.pause()


def _after_in_parent() -> None:
    for owner in list(_owners):
        owner.resume_after_fork()


def _in_child() -> None:
    _owners.clear()  # the threads are the parent's
