"""Processes seen from outside: /proc, pidfds, and stopping a process.

Pids are reused, so nothing here signals a bare pid.  A process is first
pinned with a pidfd (``pidfd_open``), checked, and then signalled through the
pidfd, so the signal can only reach the process that was checked.  A pidfd
also becomes readable the moment its process exits, before anyone reaps it,
which is what "gone" means here: init may reap orphans late.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import os
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

__all__ = [
    "GROUP_BADGE",
    "Ending",
    "ProcStat",
    "command_line",
    "fd_targets",
    "holds_file",
    "open_pidfd",
    "read_stat",
    "terminate",
    "uptime",
    "wait_exit",
]

_KILL_WAIT = 5.0
# The name of the memfd a detached daemon holds to say "this group is mine".
GROUP_BADGE = "daemonize_deco-group-"
_BADGE_LINK = f"/memfd:{GROUP_BADGE}"


class ProcStat:
    """The fields of ``/proc/PID/stat`` this library looks at."""

    __slots__ = ("pgrp", "ppid", "session", "starttime_ticks", "state", "tty_nr")

    def __init__(
        self, *, state: str, ppid: int, pgrp: int, session: int, tty_nr: int, starttime_ticks: int
    ) -> None:
        self.state = state
        self.ppid = ppid
        self.pgrp = pgrp
        self.session = session
        self.tty_nr = tty_nr
        self.starttime_ticks = starttime_ticks


def read_stat(pid: int) -> ProcStat | None:
    """Return the stat fields of ``pid``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        tty_nr=int(fields[4]),
        starttime_ticks=int(fields[19]),
    )


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` was started with; [] when it is gone or hides them."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return raw.decode("utf-8", "replace").split("\0")[:-1] if raw else []


def uptime(pid: int) -> float | None:
    """Seconds since ``pid`` started, or None when it is gone."""
    stat = read_stat(pid)
    if stat is None:
        return None
    with open("/proc/uptime", "rb") as f:
        system_uptime = float(f.read().split()[0])
    return max(0.0, system_uptime - stat.starttime_ticks / os.sysconf("SC_CLK_TCK"))


def holds_file(pid: int, identity: tuple[int, int]) -> bool | None:
    """Whether ``pid`` has a descriptor open on the file ``(st_dev, st_ino)``.

    None when we may not look (another user's process, and we are not root):
    then we could not signal it either.
    """
    fd_dir = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(fd_dir)
    except PermissionError:
        return None
    except (FileNotFoundError, ProcessLookupError):
        return False
    for entry in entries:
        try:
            st = os.stat(f"{fd_dir}/{entry}")
        except OSError:
            continue  # closed meanwhile, or a descriptor that is not a file
        if (st.st_dev, st.st_ino) == identity:
            return True
    return False


def fd_targets(pid: int) -> list[str]:
    """What ``pid``'s descriptors point at (``socket:[123]``, paths, ``/memfd:...``).

    Empty when it is gone or we may not look (another user's, and we are
    not root): then we could not signal it either.
    """
    fd_dir = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(fd_dir)
    except OSError:
        return []
    targets = []
    for entry in entries:
        try:
            targets.append(os.readlink(f"{fd_dir}/{entry}"))
        except OSError:
            continue  # closed meanwhile
    return targets


def open_pidfd(pid: int) -> int | None:
    """Pin ``pid`` with a pidfd; None when it no longer exists."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def wait_exit(pidfd: int, timeout: float | None) -> bool:
    """Wait until the pidfd's process has exited; False when ``timeout`` passed first."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))


def _own_process_group(pid: int) -> int | None:
    """The process group to kill with ``pid``: only one daemonize_deco made for it.

    A detached daemon wears a badge (a memfd named after its group, see
    ``_detach.wear_group_badge``).  Without one (``run`` shares its caller's
    group: a shell, sshd, cron) only the process itself is signalled, even
    when the caller leads its own session.
    """
    stat = read_stat(pid)
    if stat is None:
        return None
    for target in fd_targets(pid):
        if target.startswith(_BADGE_LINK):
            badge = target[len(_BADGE_LINK) :].split(" ", 1)[0]
            mine = badge.isdigit() and int(badge) == stat.pgrp
            return stat.pgrp if mine and stat.pgrp not in (os.getpgrp(), 0, 1) else None
    return None


class Ending:
    """How a process ended under :func:`terminate`.

    ``leftovers`` counts the processes still in its group afterwards, ended too.
    """

    __slots__ = ("how", "leftovers")

    def __init__(self, how: Literal["stopped", "killed"], leftovers: int = 0) -> None:
        self.how = how
        self.leftovers = leftovers


def terminate(pidfd: int, pid: int, timeout: float) -> Ending:
    """Send SIGTERM and wait up to ``timeout`` seconds; then SIGKILL its group.

    After a graceful exit, what the daemon left running in its own process
    group (workers it forked or spawned and never stopped) gets SIGTERM and,
    after ``timeout`` more seconds, SIGKILL, so a stop leaves no orphan.
    Raises PermissionError when the process may not be signalled and
    TimeoutError when even SIGKILL did not end it.
    """
    group = _own_process_group(pid)  # read while the process is surely alive
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    except ProcessLookupError:
        return Ending("stopped")
    if wait_exit(pidfd, timeout):
        return Ending("stopped", _end_group(group, timeout) if group is not None else 0)
    try:
        # The daemon is still alive here, so its group id cannot have been reused.
        if group is not None:
            os.killpg(group, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        return Ending("stopped")
    if not wait_exit(pidfd, _KILL_WAIT):
        raise TimeoutError(f"pid {pid} is still alive {_KILL_WAIT:g}s after SIGKILL")
    return Ending("killed")


def _group_members(pgid: int) -> list[int]:
    """Live (not yet exited) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
                members.append(int(entry))
    return members


def _end_group(pgid: int, timeout: float) -> int:
    """SIGTERM what is left in ``pgid``, SIGKILL it after ``timeout``; return how many."""
    pidfds = [fd for fd in map(open_pidfd, _group_members(pgid)) if fd is not None]
    if not pidfds:
        return 0
    try:
        # Members are alive and hold the group id, so it names no one else.
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        remaining = list(pidfds)
        while remaining and (left := deadline - time.monotonic()) > 0:
            remaining = [fd for fd in remaining if not wait_exit(fd, 0)]
            if remaining:
                wait_exit(remaining[0], left)
        if remaining:
            os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # all gone meanwhile
    finally:
        for fd in pidfds:
            os.close(fd)
    return len(pidfds)
