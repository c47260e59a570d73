"""A handle on another process: wait for its exit, signal it without pid-reuse risk.

Pids are reused once a process is reaped, so a bare pid is never signalled
after a look.  :meth:`ProcessHandle.open` pins the process with what this
system has (``_platform`` probes it, never ``sys.platform``):

- a pidfd (Linux): readable once the process exits, and signals through it
  can only reach that process;
- a kqueue with ``EVFILT_PROC``/``NOTE_EXIT`` (macOS, the BSDs): readable
  once it exits; a process that has not exited keeps its pid, so a signal
  sent while the kqueue says "not yet" reaches it.  (Not testable on Linux:
  kept small.  A kqueue is not inherited by a forked child, which opens its
  own when it first asks.)
- otherwise polling: ``kill(pid, 0)`` says whether the pid exists, and the
  process's start time, taken when the handle opens, is checked again before
  every signal, so a later process that reused the pid is never signalled
  (the start time has a second's resolution from ``ps``: a pid reused within
  the same second as the exit would pass);
- one's own child, not reaped, where there is neither (:meth:`ProcessHandle.of_child`):
  its pid cannot be reused before its parent reaps it, so ``waitpid`` is the
  check, and the handle keeps the exit status it reaped
  (:meth:`ProcessHandle.reap`), so none is lost to a race.

Its start time and state (a zombie?), where ``/proc`` is missing, come from
psutil when it is installed, else from ``ps -o stat= -o lstart=`` (macOS,
the BSDs and procps all have it).  The kqueue and polling handles and those
looks are ``_platform_polled``'s, loaded only where there is no pidfd.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import os
import select
import time

from ._platform import HAS_KQUEUE, HAS_PIDFD

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Self

__all__ = ["ProcessHandle", "group_lives", "start_time", "started_by"]

_POLL_FIRST = 0.001  # polling's first interval, doubled up to _POLL_MOST
_POLL_MOST = 0.05


class ProcessHandle:
    """One process, pinned: its exit can be waited for, and it alone can be signalled.

    ``fileno()`` is a descriptor ``poll()`` sees readable once the process
    has exited, or None where only polling can tell (then wait with
    :meth:`wait`, or poll at most :data:`POLL_INTERVAL` apart).
    """

    POLL_INTERVAL = _POLL_MOST

    def __init__(self, pid: int) -> None:
        self.pid = pid

    @staticmethod
    def open(pid: int) -> ProcessHandle | None:
        """Pin ``pid``; None when it no longer exists.  OSError when no descriptor is left."""
        if HAS_PIDFD:
            return _PidfdHandle.pin(pid)
        from ._platform_polled import pin  # noqa: PLC0415 -- where there is no pidfd

        return pin(pid)

    @staticmethod
    def of_child(pid: int) -> ProcessHandle:
        """Pin this process's own child, not yet reaped; reap it with :meth:`reap`."""
        pinned = None
        if HAS_PIDFD:
            pinned = _PidfdHandle.pin(pid)  # a zombie has a pidfd too
        elif HAS_KQUEUE:
            from ._platform_polled import KqueueHandle  # noqa: PLC0415

            pinned = KqueueHandle.pin(pid)  # the exit status stays for waitpid
        return _ChildHandle(pid) if pinned is None else pinned

    def fileno(self) -> int | None:
        """A descriptor readable once the process has exited; None when only polling tells."""
        return None

    def has_exited(self) -> bool:
        """Whether the process has exited (a zombie has, where the kernel says so)."""
        raise NotImplementedError

    def wait(self, timeout: float | None) -> bool:
        """Wait until the process has exited; False when ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = _POLL_FIRST
        while not self.has_exited():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(interval if left is None else min(interval, left))
            interval = min(interval * 2, _POLL_MOST)
        return True

    def send(self, signum: int) -> bool:
        """Send ``signum``; False when the process had exited.  PermissionError if we may not."""
        raise NotImplementedError

    def reap(self) -> int:
        """Wait for one's own child and return its wait status (0 when another reaped it)."""
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return 0

    def close(self) -> None:
        """Release what pins the process (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _readable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))


class _PidfdHandle(ProcessHandle):
    """Linux: a pidfd (``pidfd_open``, ``pidfd_send_signal``)."""

    def __init__(self, pid: int, fd: int) -> None:
        super().__init__(pid)
        self._fd = fd

    @classmethod
    def pin(cls, pid: int) -> ProcessHandle | None:
        try:
            return cls(pid, os.pidfd_open(pid))
        except ProcessLookupError:
            return None

    def fileno(self) -> int | None:
        return self._fd if self._fd >= 0 else None

    def has_exited(self) -> bool:
        return _readable(self._fd, 0)

    def wait(self, timeout: float | None) -> bool:
        return _readable(self._fd, timeout)

    def send(self, signum: int) -> bool:
        try:
            signal.pidfd_send_signal(self._fd, signum)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _ChildHandle(ProcessHandle):
    """One's own child, not reaped: ``waitpid`` tells, and its pid cannot be reused meanwhile."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self._status: int | None = None

    def has_exited(self) -> bool:
        if self._status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return True  # reaped by another (it can never be signalled again)
            if pid == self.pid:
                self._status = status
        return self._status is not None

    def send(self, signum: int) -> bool:
        if self.has_exited():
            return False
        os.kill(self.pid, signum)  # a zombie at worst: ours, not reaped, not reused
        return True

    def reap(self) -> int:
        """The exit status ``has_exited`` reaped, or reaped now."""
        if self._status is None:
            self._status = super().reap()
        return self._status


def start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch; None when it is gone or unknown."""
    from ._platform import has_proc  # noqa: PLC0415

    if has_proc():
        from ._proc import uptime  # noqa: PLC0415

        seconds = uptime(pid)
        return None if seconds is None else time.time() - seconds
    from ._platform_polled import start_time_elsewhere  # noqa: PLC0415

    return start_time_elsewhere(pid)


def group_lives(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that has not exited.

    ``killpg(pgid, 0)`` answers for zombies too, and an orphan stays one
    until init reaps it (in a container, a PID 1 that reaps once a second
    holds a group "alive" that long): where the signal finds someone and no
    ``/proc`` lists them, psutil or ``ps`` says whether any is more than a
    zombie.  Unknown counts as alive.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone, as another user
    from ._platform import has_proc  # noqa: PLC0415

    if has_proc():
        return True  # /proc lists the group where there is one: this is not asked there
    from ._platform_polled import group_states  # noqa: PLC0415

    states = group_states(pgid)
    return states is None or any(state != "Z" for state in states)


def started_by(pid: int, when: float) -> bool | None:
    """Whether ``pid`` had started by ``when`` (seconds since the epoch); None when unknown.

    A process that started later cannot be the one that wrote a file at
    ``when``: it reused the pid of the one that did.  (A second's slack:
    ``ps`` tells start times to the second.)
    """
    started = start_time(pid)
    if started is None:
        return None
    return started <= when + 1.0
