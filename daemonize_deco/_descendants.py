"""A run's descendants: what a service started ends with the run.

A service's processes (``subprocess``, ``multiprocessing``, ``os.fork``) can
outlive it: in its process group, or in a session of their own
(``start_new_session=True``), re-parented to init once the service is gone.
So every run marks its descendants, and whoever ends the run ends them:

- the mark: an environment variable, which the programs a descendant execs
  inherit, and a memfd, which the processes it forks inherit (a forked
  child's ``/proc/PID/environ`` still shows the environment its program
  was started with, not the variable set since).  Its value is derived
  from the boot, the pidfile's real path and the pid of the process
  holding it, so a command that finds a stale pidfile knows what to look
  for, and a process of another service (which wears a mark of its own)
  is never taken for one of ours;
- a service ends its children and the marked processes when it ends (and,
  detached, what is left in the process group made for it); a supervisor
  ends what each run of its service left before the next run; ``stop``
  ends what a killed run left, and ``status`` says so when some still run.

A descendant in a session of its own that clears its environment and execs
carries no mark: that is the limit of a mark without cgroups.  (A child
subreaper would catch it too, but only through ``prctl``, whose ctypes
binding would cost every supervisor some 150 KiB.)
"""

from __future__ import annotations

import os

from ._claim import fnv1a
from ._errors import DetachError
from ._proc import GROUP_BADGE, read_stat

__all__ = [
    "VARIABLE",
    "children",
    "describe",
    "end_descendants",
    "end_left_by",
    "find_marked",
    "left_by",
    "mark_for",
    "wear",
    "worn_mark",
]

VARIABLE = "DAEMONIZE_DECO_RUN"
_BADGE = "daemonize_deco-run-"
_BADGE_LINK = f"/memfd:{_BADGE}"
_GROUP_LINK = f"/memfd:{GROUP_BADGE}"
_ROUNDS = 3  # ending a process orphans its own children: look again, a few times


def mark_for(pidfile: str, holder: int) -> str:
    """The mark of the run whose pidfile (at ``pidfile``) names ``holder``."""
    directory, name = os.path.split(pidfile)
    real = os.path.join(os.path.realpath(directory), name)
    return f"{fnv1a(f'{_boot_id()}:{holder}:{real}'.encode('utf-8', 'surrogateescape')):016x}"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().decode("ascii", "replace").strip()
    except OSError:
        return ""


class _Worn:
    mark: str | None = None
    fd: int | None = None


def wear(mark: str) -> None:
    """Mark this process and everything it will start as this run's.

    Raises DetachError when it has no descriptor left for the mark.
    """
    os.environ[VARIABLE] = mark
    if _Worn.fd is not None:
        os.close(_Worn.fd)
        _Worn.fd = None
    try:
        # Close-on-exec: a program exec'd is found by the variable; a fork keeps the memfd.
        _Worn.fd = os.memfd_create(f"{_BADGE}{mark}", os.MFD_CLOEXEC)
    except OSError as exc:
        raise DetachError(f"cannot mark the processes of the run: {exc.strerror}") from exc
    _Worn.mark = mark


def worn_mark() -> str | None:
    """The mark this process wears, if any."""
    return _Worn.mark


def children(pid: int) -> list[int]:
    """The children of ``pid`` (every thread's)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found += [int(word) for word in f.read().split()]
        except OSError:
            continue  # the thread ended meanwhile
    return found


def find_marked(mark: str) -> list[int]:
    """Live processes carrying ``mark``, but this one and other services' daemons."""
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and int(entry) != os.getpid() and carries(int(entry), mark)
    ]


def carries(pid: int, mark: str) -> bool:
    """Whether the live process ``pid`` carries ``mark`` (and no daemon badge of its own).

    Without the variable, only a Python process's descriptors are looked at
    (forked and not exec'd, its environ is its program's): reading every
    process's would cost a stop milliseconds.
    """
    if not _alive(pid):
        return False
    if f"{VARIABLE}={mark}".encode() in _environ(pid).split(b"\0"):
        return _badges_allow(pid, mark, badge_needed=False)
    exe = os.path.basename(_exe(pid) or "")
    return exe.startswith("python") and _badges_allow(pid, mark, badge_needed=True)


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""  # gone, or another user's


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _badges_allow(pid: int, mark: str, *, badge_needed: bool) -> bool:
    """Whether ``pid``'s memfds say it is ours: not a daemon, nor another run's process."""
    try:
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    runs = {t[len(_BADGE_LINK) :].split(" ", 1)[0] for t in targets if t.startswith(_BADGE_LINK)}
    if any(t.startswith(_GROUP_LINK) for t in targets):
        return False  # a daemon of its own (a service this one started): not ours to end
    if runs - {mark}:
        return False  # it belongs to another run
    return mark in runs or not badge_needed


def end_descendants(
    mark: str | None, timeout: float, *, group: int | None = None, children_too: bool = True
) -> list[int]:
    """End what this run started; return the pids ended.

    Its children (unless not ``children_too``: a command ending what a dead
    run left), the processes carrying ``mark``, and the other members of
    ``group`` (the process group made for a detached daemon): SIGTERM, then
    SIGKILL to those still alive ``timeout`` seconds later.
    """
    ended: list[int] = []
    for _ in range(_ROUNDS):
        candidates = set(children(os.getpid())) if children_too else set()
        candidates.update([] if mark is None else find_marked(mark))
        if group is not None:
            candidates.update(_group_members(group))
        pinned = _pin(sorted(candidates - set(ended)), mark, group, children_too=children_too)
        if not pinned:
            break
        try:
            from ._terminate import end_pinned  # noqa: PLC0415 -- only when some are left

            end_pinned(list(pinned.values()), timeout)
        finally:
            for fd in pinned.values():
                os.close(fd)
        ended += pinned
    return ended


def _group_members(group: int) -> list[int]:
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None and stat.pgrp == group
    ]


def _pin(
    pids: list[int], mark: str | None, group: int | None, *, children_too: bool
) -> dict[int, int]:
    """Pidfds for those of ``pids`` that, once pinned, are still ours (pids are reused)."""
    mine = set(children(os.getpid())) if children_too else set()
    pinned: dict[int, int] = {}
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        stat = read_stat(pid)
        ours = stat is not None and (
            pid in mine
            or (group is not None and stat.pgrp == group)
            or (mark is not None and carries(pid, mark))
        )
        if ours and _alive(pid):
            pinned[pid] = fd
        else:
            os.close(fd)
    return pinned


def _alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.state not in ("Z", "X")


def left_by(pidfile: str, pid: int) -> list[int]:
    """What the run whose pidfile names ``pid`` started and is still running."""
    return find_marked(mark_for(pidfile, pid))


def end_left_by(pidfile: str, pid: int, timeout: float) -> list[int]:
    """End what the (dead) run whose pidfile names ``pid`` left running; return the pids."""
    return end_descendants(mark_for(pidfile, pid), timeout, children_too=False)


def describe(pids: list[int]) -> str:
    """``3 processes (pids 12, 13, 14)``."""
    count = len(pids)
    listed = ", ".join(map(str, pids[:10])) + (", ..." if count > 10 else "")
    return f"{count} process{'es' * (count != 1)} (pid{'s' * (count != 1)} {listed})"
