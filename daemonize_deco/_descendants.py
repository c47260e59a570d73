"""A run's descendants: what a service started ends with the run.

A service's processes (``subprocess``, ``multiprocessing``, ``os.fork``) can
outlive it: in its process group, or in a session of their own
(``start_new_session=True``), re-parented to init once the service is gone.
So every run marks its descendants, and whoever ends the run ends them:

- the mark (``_mark``): an environment variable and a memfd that what the
  run starts inherits, derived from what a command can know of the run
  from its pidfile; a process of another service (which wears a mark of
  its own) is never taken for one of ours;
- a service ends its children and the marked processes when it ends (and,
  detached, what is left in the process group made for it); a supervisor
  ends what each run of its service left before the next run; ``stop``
  ends what a killed run left, and ``status`` says so when some still run.

A descendant in a session of its own that clears its environment and execs
carries no mark: that is the limit of a mark without cgroups.  (A child
subreaper would catch it too, but only through ``prctl``, whose ctypes
binding would cost every supervisor some 150 KiB.)

Without /proc (macOS, FreeBSD) no process can be looked at, and nothing is
looked for: what main leaves running shares the fate of its process group
(a terminal's hangup, a ``kill`` of the group), no more; ``stop`` and the
supervisor end the service alone, and ``status`` cannot say what is left.
Signalling the group instead would reach whoever signals it (the service
and its supervisor are in it): that is why nothing is done.
"""

from __future__ import annotations

import os
import time

from ._mark import BADGE, COMMAND_BADGE, VARIABLE, mark_for, worn
from ._proc import (
    GROUP_BADGE,
    command_line,
    environ,
    ever_started_one,
    executable,
    memfd_names,
    pids,
    read_stat,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._platform_process import ProcessHandle
    from ._proc import ProcStat

__all__ = [
    "Ended",
    "Run",
    "carries",
    "describe",
    "end_left_by",
    "end_run",
    "killed",
    "left_by",
    "signal_run",
    "this_run",
]

_BADGE_LINK = f"/memfd:{BADGE}"
_COMMAND_LINK = f"/memfd:{COMMAND_BADGE}"
_GROUP_LINK = f"/memfd:{GROUP_BADGE}"
_ROUNDS = 3  # ending a process orphans its own children: look again, a few times
_ROUNDS_AT_MOST = 100  # ... and more, while there is time, when few can be pinned at once
_KTHREADD = 2  # the parent of kernel threads, which have no environment to read
_COMMAND_CHARS = 60  # of a command named in a log line


class Run:
    """What identifies a run's processes: its mark, its process group, when it began.

    ``parent``: this process, whose children are the run's too (a command
    looking for a dead run's processes has none of them).  ``since``: the
    run's start in clock ticks since boot; a process older than that cannot
    be one it started, so most are passed over after reading their stat.
    """

    __slots__ = ("group", "mark", "parent", "since")

    def __init__(
        self,
        mark: str | None,
        *,
        group: int | None = None,
        parent: int | None = None,
        since: int | None = None,
    ) -> None:
        self.mark = mark
        self.group = group
        self.parent = parent
        self.since = since

    def holds(self, pid: int, stat: ProcStat | None) -> bool:
        """Whether the live process ``pid`` (whose stat is given) is one of the run's."""
        if stat is None or stat.state in ("Z", "X") or pid in (os.getpid(), self.parent):
            return False
        if self.since is not None and stat.starttime_ticks < self.since:
            return False
        if stat.ppid == self.parent or (self.group is not None and stat.pgrp == self.group):
            return not _runs_a_command(pid)
        return self.mark is not None and stat.ppid != _KTHREADD and carries(pid, self.mark)

    def processes(self) -> list[int]:
        """The run's live processes, in one pass over /proc; none without it (see above)."""
        return [pid for pid in pids() or () if self.holds(pid, read_stat(pid))]


def carries(pid: int, mark: str) -> bool:
    """Whether process ``pid`` carries ``mark`` (and no daemon badge of its own).

    Without the variable, only a Python process's descriptors are looked at
    (forked and not exec'd, its environ is its program's): reading every
    process's would cost a stop milliseconds.
    """
    if f"{VARIABLE}={mark}".encode() in environ(pid).split(b"\0"):
        return _badges_allow(pid, mark, badge_needed=False)
    exe = os.path.basename(executable(pid) or "")
    return exe.startswith("python") and _badges_allow(pid, mark, badge_needed=True)


def _runs_a_command(pid: int) -> bool:
    """Whether ``pid`` runs a command (``restart`` that main ran): never a run's to end."""
    return any(target.startswith(_COMMAND_LINK) for target in memfd_names(pid) or ())


def _badges_allow(pid: int, mark: str, *, badge_needed: bool) -> bool:
    """Whether ``pid``'s memfds say it is ours: not a daemon, a command, another run's.

    Without memfds none wears a badge: one found by its variable is ours;
    one that would need a badge is not (``_mark``).
    """
    targets = memfd_names(pid)
    if targets is None:
        return False
    runs = {t[len(_BADGE_LINK) :].split(" ", 1)[0] for t in targets if t.startswith(_BADGE_LINK)}
    if any(t.startswith((_GROUP_LINK, _COMMAND_LINK)) for t in targets):
        return False  # a daemon of its own, or a command: not ours to end
    if runs - {mark}:
        return False  # it belongs to another run
    return mark in runs or not badge_needed


def this_run(*, group: int | None = None) -> Run:
    """The run this process serves: its mark, its children, and ``group`` if it made one."""
    me = read_stat(os.getpid())
    return Run(
        worn(),
        group=group,
        parent=os.getpid(),
        since=None if me is None else me.starttime_ticks,
    )


class Ended(list[int]):
    """The pids :func:`end_run` ended; ``killed``: those that needed SIGKILL, and their commands."""

    __slots__ = ("killed",)

    def __init__(self) -> None:
        super().__init__()
        self.killed: dict[int, str] = {}

    def naming(self, pinned: dict[int, ProcessHandle]) -> Callable[[Sequence[ProcessHandle]], None]:
        """What names, in ``killed``, those of ``pinned`` (pid: handle) about to get SIGKILL."""

        def name(handles: Sequence[ProcessHandle]) -> None:
            # Read while they are still alive: a killed process's command line is empty.
            self.killed.update((h.pid, _command(h.pid)) for h in handles)

        return name


def end_run(run: Run, timeout: float, interrupt: int | None = None) -> Ended:
    """End the run's processes; return their pids.

    SIGTERM, then SIGKILL to those still alive ``timeout`` seconds later.
    Ending one orphans its own children, found at the next look; with few
    descriptors left (``ulimit -n``), they are ended a few at a time.
    """
    ended = Ended()
    if run.parent == os.getpid() and not ever_started_one():
        return ended  # nothing it started can be left: no need to look at every process
    # Imported first: an import takes a descriptor, which a pidfd may take later.
    from ._terminate import end_pinned  # noqa: PLC0415 -- only when some may be left

    deadline = time.monotonic() + timeout  # for every round together
    for round_ in range(_ROUNDS_AT_MOST):
        if round_ >= _ROUNDS and time.monotonic() >= deadline:
            break
        pinned = _pin([pid for pid in run.processes() if pid not in ended], run)
        if not pinned:
            break
        try:
            left = max(0.0, deadline - time.monotonic())
            end_pinned(list(pinned.values()), left, interrupt, ended.naming(pinned))
        finally:
            for handle in pinned.values():
                handle.close()
        ended.extend(pinned)
    return ended


def _command(pid: int) -> str:
    """``pid``'s command line, shortened for a log line ("?" when it hides it)."""
    text = " ".join(command_line(pid)) or "?"
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 3] + "..."


def signal_run(run: Run, signum: int) -> list[int]:
    """Send ``signum`` to the run's processes without waiting; return their pids."""
    pinned = _pin(run.processes(), run)
    for handle in pinned.values():
        with handle:
            handle.send(signum)  # False: exited already
    return list(pinned)


def _pin(pids: list[int], run: Run) -> dict[int, ProcessHandle]:
    """Handles on those of ``pids`` that, once pinned, are still the run's (pids are reused)."""
    from ._platform_process import ProcessHandle  # noqa: PLC0415 -- only when some may be left

    pinned: dict[int, ProcessHandle] = {}
    for pid in pids:
        try:
            handle = ProcessHandle.open(pid)
        except OSError:
            break  # no descriptor left: these first, the others at the next round
        if handle is None:
            continue  # gone already
        try:
            ours = run.holds(pid, read_stat(pid))
        except OSError:
            ours = False  # no descriptor left to look with: at the next round
        if ours:
            pinned[pid] = handle
        else:
            handle.close()
    return pinned


def killed(ended: Ended) -> str:
    """``; SIGKILL to 1 of them (still running after SIGTERM): pid 12 (sleep 60)``, or ""."""
    named = ended.killed
    if not named:
        return ""
    listed = ", ".join(f"pid {pid} ({command})" for pid, command in list(named.items())[:10])
    more = ", ..." if len(named) > 10 else ""
    return f"; SIGKILL to {len(named)} of them (still running after SIGTERM): {listed}{more}"


def left_by(pidfile: str, pid: int) -> list[int]:
    """What the dead run whose pidfile names ``pid`` started and is still running."""
    return Run(mark_for(pidfile, pid)).processes()


def end_left_by(pidfile: str, pid: int, timeout: float, interrupt: int | None = None) -> Ended:
    """End what the dead run whose pidfile names ``pid`` left running; return the pids."""
    return end_run(Run(mark_for(pidfile, pid)), timeout, interrupt)


def describe(pids: list[int]) -> str:
    """``3 processes (pids 12, 13, 14)``."""
    count = len(pids)
    listed = ", ".join(map(str, pids[:10])) + (", ..." if count > 10 else "")
    return f"{count} process{'es' * (count != 1)} (pid{'s' * (count != 1)} {listed})"
