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
the BSDs and procps all have it).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import os
import select
import time

from ._platform import HAS_KQUEUE, HAS_PIDFD

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self

__all__ = ["ProcessHandle", "start_time", "started_by"]

_POLL_FIRST = 0.001  # polling's first interval, doubled up to _POLL_MOST
_POLL_MOST = 0.05
# How often a polled wait looks at the state and start time (``ps`` may tell them):
# soon after a signal, then less and less often.
_RECHECK_FIRST = 0.05
_RECHECK = 1.0


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
        if HAS_KQUEUE:
            return _KqueueHandle.pin(pid)
        return _PollingHandle.pin(pid)

    @staticmethod
    def of_child(pid: int) -> ProcessHandle:
        """Pin this process's own child, not yet reaped; reap it with :meth:`reap`."""
        pinned = None
        if HAS_PIDFD:
            pinned = _PidfdHandle.pin(pid)  # a zombie has a pidfd too
        elif HAS_KQUEUE:
            pinned = _KqueueHandle.pin(pid)  # the exit status stays for waitpid
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


class _KqueueHandle(ProcessHandle):
    """macOS, the BSDs: a kqueue told of the process's exit (``EVFILT_PROC``, ``NOTE_EXIT``)."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self._queue: Any = None  # a select.kqueue (which Linux's stubs do not know)
        self._owner = 0  # the process the queue belongs to: a forked child opens its own
        self._exited = False

    @classmethod
    def pin(cls, pid: int) -> ProcessHandle | None:
        handle = cls(pid)
        return None if handle._watch() is None else handle

    def _watch(self) -> Any:
        if self._queue is not None and self._owner == os.getpid():
            return self._queue
        kq: Any = select
        queue = kq.kqueue()
        event = kq.kevent(self.pid, kq.KQ_FILTER_PROC, kq.KQ_EV_ADD, kq.KQ_NOTE_EXIT)
        try:
            queue.control([event], 0, 0)
        except ProcessLookupError:
            queue.close()
            self._exited = True
            return None
        self._queue, self._owner = queue, os.getpid()
        return queue

    def fileno(self) -> int | None:
        queue = None if self._exited else self._watch()  # its event read: no longer readable
        return None if queue is None else queue.fileno()

    def has_exited(self) -> bool:
        queue = self._watch()
        if queue is not None and not self._exited:
            self._exited = bool(queue.control(None, 1, 0))
        return self._exited

    def wait(self, timeout: float | None) -> bool:
        queue = self._watch()
        if queue is not None and not self._exited:
            self._exited = bool(queue.control(None, 1, timeout))
        return self._exited

    def send(self, signum: int) -> bool:
        # Not exited, so not reaped: the pid is still this process's.
        if self.has_exited():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if self._queue is not None:
            if self._owner == os.getpid():
                self._queue.close()
            self._queue = None


class _PollingHandle(ProcessHandle):
    """Anywhere: ``kill(pid, 0)``, and the start time checked again before every signal.

    A zombie still exists for ``kill``: the process's state, looked at with
    its start time, tells it has exited.
    """

    def __init__(self, pid: int, started: object) -> None:
        super().__init__(pid)
        self._started = started
        self._exited = False
        self._checked = time.monotonic()  # when the state and start time were last looked at
        self._recheck = _RECHECK_FIRST  # and how long until the next look (doubling)

    @classmethod
    def pin(cls, pid: int) -> ProcessHandle | None:
        if not _exists(pid):
            return None
        look = _look(pid)
        if look is None and not _exists(pid):
            return None
        handle = cls(pid, None if look is None else look[1])
        handle._exited = look is not None and look[0] == "Z"
        return handle

    def has_exited(self) -> bool:
        if not self._exited and not _exists(self.pid):
            self._exited = True
        elif not self._exited and time.monotonic() - self._checked >= self._recheck:
            self._recheck = min(self._recheck * 2, _RECHECK)
            self._is_still_it()  # a zombie (its parent reaps it late), or the pid another's
        return self._exited

    def _is_still_it(self) -> bool:
        """Whether the pid still names the process pinned, alive (not a later one, not a zombie)."""
        self._checked = time.monotonic()
        look = None if self._exited else _look(self.pid)
        if self._exited or not _exists(self.pid):
            self._exited = True
        elif look is not None and (look[0] == "Z" or self._started not in (None, look[1])):
            self._exited = True  # a zombie, or it exited and another process has its pid now
        return not self._exited

    def send(self, signum: int) -> bool:
        if not self._is_still_it():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            self._exited = True
            return False
        self._recheck = _RECHECK_FIRST  # it may exit now: look soon
        return True


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


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: it exists
    return True


def _look(pid: int) -> tuple[str, object] | None:
    """``pid``'s state ("Z": a zombie) and a mark of when it started; None: gone, or unknown.

    Two processes that had the same pid have different marks.
    """
    from ._platform import has_proc  # noqa: PLC0415

    if has_proc():
        from ._proc import read_stat  # noqa: PLC0415

        stat = read_stat(pid)
        return None if stat is None else (stat.state, stat.starttime_ticks)
    try:
        import psutil  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return _ps(pid)
    try:
        process = psutil.Process(pid)
        zombie = process.status() == psutil.STATUS_ZOMBIE
        return ("Z" if zombie else "R", float(process.create_time()))
    except (psutil.Error, OSError):
        return None


def start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch; None when it is gone or unknown."""
    from ._platform import has_proc  # noqa: PLC0415

    if has_proc():
        from ._proc import uptime  # noqa: PLC0415

        seconds = uptime(pid)
        return None if seconds is None else time.time() - seconds
    look = _look(pid)
    return None if look is None or not isinstance(look[1], float) else look[1]


def _ps(pid: int) -> tuple[str, float] | None:
    """``ps -o stat= -o lstart=``: "Ss  Mon Dec  7 17:56:02 2026" on macOS, the BSDs, procps."""
    import subprocess  # noqa: PLC0415 -- only where nothing else tells

    try:
        done = subprocess.run(
            ["ps", "-o", "stat=", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    state, _, started = done.stdout.strip().partition(" ")
    if done.returncode != 0 or not state:
        return None
    import calendar  # noqa: PLC0415

    try:
        when = time.strptime(" ".join(started.split()), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None
    return state[0], float(calendar.timegm(when))


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
