"""Process handles and looks where there is no pidfd: the process seam's other half.

Loaded only there (``_platform_process`` asks it), so that Linux commands do
not carry it:

- :class:`KqueueHandle` (macOS, the BSDs): a kqueue told of the process's
  exit (``EVFILT_PROC``/``NOTE_EXIT``);
- :class:`PollingHandle` (anywhere else): ``kill(pid, 0)``, and the start
  time checked again before every signal;
- a process's state and start time, from ``/proc`` where it is mounted,
  else psutil when it is installed, else ``ps`` (macOS, the BSDs and procps
  all have ``ps -o stat= -o lstart=`` and ``ps -A -o pgid= -o stat=``).
"""

from __future__ import annotations

import os
import select
import time

from ._platform import HAS_KQUEUE
from ._platform_process import ProcessHandle

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "KqueueHandle",
    "PollingHandle",
    "group_states",
    "look",
    "pin",
    "start_time_elsewhere",
]

# How often a polled wait looks at the state and start time (``ps`` may tell them):
# soon after a signal, then less and less often.
_RECHECK_FIRST = 0.05
_RECHECK = 1.0


def pin(pid: int) -> ProcessHandle | None:
    """A handle on ``pid`` without a pidfd: kqueue where there is one, else polling."""
    if HAS_KQUEUE:
        return KqueueHandle.pin(pid)
    return PollingHandle.pin(pid)


class KqueueHandle(ProcessHandle):
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


class PollingHandle(ProcessHandle):
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
        found = look(pid)
        if found is None and not _exists(pid):
            return None
        handle = cls(pid, None if found is None else found[1])
        handle._exited = found is not None and found[0] == "Z"
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
        found = None if self._exited else look(self.pid)
        if self._exited or not _exists(self.pid):
            self._exited = True
        elif found is not None and (found[0] == "Z" or self._started not in (None, found[1])):
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


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: it exists
    return True


def look(pid: int) -> tuple[str, object] | None:
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


def start_time_elsewhere(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch) without /proc; None when gone or unknown."""
    found = look(pid)
    return None if found is None or not isinstance(found[1], float) else found[1]


def _ps(pid: int) -> tuple[str, float] | None:
    """``ps -o stat= -o lstart=``: "Ss  Mon Dec  7 17:56:02 2026" on macOS, the BSDs, procps."""
    done = _run_ps(["-o", "stat=", "-o", "lstart=", "-p", str(pid)])
    state, _, started = (done or "").strip().partition(" ")
    if not state:
        return None
    import calendar  # noqa: PLC0415

    try:
        when = time.strptime(" ".join(started.split()), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None
    return state[0], float(calendar.timegm(when))


def group_states(pgid: int) -> list[str] | None:
    """The states of ``pgid``'s members (``Z``: a zombie); None when nothing tells."""
    try:
        import psutil  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return _ps_group_states(pgid)
    states = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                zombie = process.status() == psutil.STATUS_ZOMBIE
                states.append("Z" if zombie else "R")
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue  # gone meanwhile
        except (psutil.Error, OSError):
            return None  # one we may not look at may be a member: unknown, so alive
    return states


def _ps_group_states(pgid: int) -> list[str] | None:
    """``ps -A -o pgid= -o stat=``, the members of ``pgid`` kept."""
    done = _run_ps(["-A", "-o", "pgid=", "-o", "stat="])
    if done is None:
        return None
    states = []
    for line in done.splitlines():
        group, _, state = line.strip().partition(" ")
        if group == str(pgid) and state.strip():
            states.append(state.strip()[0])
    return states


def _run_ps(arguments: list[str]) -> str | None:
    """What ``ps`` prints in the C locale and UTC, or None when it fails."""
    import subprocess  # noqa: PLC0415 -- only where nothing else tells

    try:
        done = subprocess.run(
            ["ps", *arguments],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
