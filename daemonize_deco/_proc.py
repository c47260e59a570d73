"""Processes seen from outside: /proc, and what tells the same where there is none.

A process is pinned with a ``_platform_process.ProcessHandle`` (a pidfd on
Linux): it tells the moment the process exits, before anyone reaps it,
which is what "gone" means here (init may reap orphans late); stopping one
through it is ``_terminate``.  Without ``/proc`` (macOS, the BSDs) each
function here says so: None, or an empty answer, never a guess.
"""

from __future__ import annotations

import os

from ._errors import PidFileError
from ._platform import has_proc

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass

__all__ = [
    "BADGE_LINK",
    "GROUP_BADGE",
    "ProcStat",
    "command_line",
    "descriptor_info",
    "ever_started_one",
    "fd_targets",
    "flock_holders",
    "group_members",
    "holds_file",
    "is_alive",
    "openers",
    "own_children",
    "read_stat",
    "real_uid",
    "uptime",
]

# The name of the memfd a detached daemon holds to say "this group is mine".
GROUP_BADGE = "daemonize_deco-group-"
BADGE_LINK = f"/memfd:{GROUP_BADGE}"


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
    """Seconds since ``pid`` started, or None when it is gone (or, without /proc, unknown)."""
    if not has_proc():
        import time  # noqa: PLC0415

        from ._platform_process import start_time  # noqa: PLC0415

        started = start_time(pid)
        return None if started is None else max(0.0, time.time() - started)
    stat = read_stat(pid)
    if stat is None:
        return None
    with open("/proc/uptime", "rb") as f:
        system_uptime = float(f.read().split()[0])
    return max(0.0, system_uptime - stat.starttime_ticks / os.sysconf("SC_CLK_TCK"))


def holds_file(pid: int, identity: tuple[int, int], written: float | None = None) -> bool | None:
    """Whether ``pid`` has a descriptor open on the file ``(st_dev, st_ino)``.

    None when we may not look (another user's process, and we are not root):
    then we could not signal it either.  PidFileError when we cannot look
    (no descriptor left: ``ulimit -n``): no answer is better than a guess.

    Without ``/proc`` nothing shows another process's descriptors: the
    answer is then whether ``pid`` runs and had started by ``written`` (when
    the file, which names it, was last written): a later process only
    reused the pid of the one that wrote it.  None when that is unknown.
    """
    if not has_proc():
        from ._platform_process import started_by  # noqa: PLC0415

        if not is_alive(pid):
            return False
        return None if written is None else started_by(pid, written)
    fd_dir = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(fd_dir)
    except PermissionError:
        return None
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError as exc:
        raise PidFileError(f"cannot look at {fd_dir}: {exc.strerror}") from exc
    for entry in entries:
        try:
            st = os.stat(f"{fd_dir}/{entry}")
        except OSError:
            continue  # closed meanwhile, or a descriptor that is not a file
        if (st.st_dev, st.st_ino) == identity:
            return True
    return False


def openers(identity: tuple[int, int]) -> list[int]:
    """Every other process we may look at that has the file ``(st_dev, st_ino)`` open.

    A slow look (every descriptor of every process), for rare questions;
    none found without ``/proc``.
    """
    found: list[int] = []
    if not has_proc():
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if holds_file(int(entry), identity):
                    found.append(int(entry))
            except PidFileError:
                continue  # no descriptor left to look with: not one of them, as far as we know
    return found


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


def own_children() -> list[int]:
    """This process's children (every thread's)."""
    found: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                found += [int(word) for word in f.read().split()]
        except OSError:
            continue  # the thread ended meanwhile
    return found


def ever_started_one() -> bool:
    """Whether this process has started any process (every descendant comes from one).

    A child lives on as one until it is reaped, and a reaped one has counted
    its page faults into RUSAGE_CHILDREN (a process cannot run without one).
    Both start from nothing at fork; an exec'd program's count includes what
    ran before it in the same process.
    """
    if own_children():
        return True
    import resource  # noqa: PLC0415 -- loaded already when core dumps are prevented

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_minflt + used.ru_majflt > 0


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie has, where the system tells)."""
    from ._platform_process import ProcessHandle  # noqa: PLC0415

    handle = ProcessHandle.open(pid)
    if handle is None:
        return False
    with handle:
        return not handle.has_exited()


def group_members(pgid: int) -> list[int] | None:
    """Live (not yet exited) processes in process group ``pgid``; None without ``/proc``."""
    if not has_proc():
        return None
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
                members.append(int(entry))
    return members


def flock_holders(identity: tuple[int, int]) -> list[int]:
    """The pids holding an ``flock`` on the file ``(st_dev, st_ino)`` (``/proc/locks``).

    The pid is the process that took the lock; the lock may live on in a
    child it shared the descriptor with.  None found without ``/proc``.
    """
    dev, ino = identity
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    try:
        with open("/proc/locks", "rb") as f:
            lines = f.read().decode("ascii", "replace").splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; "1: -> FLOCK ..." waits.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            holders.append(int(fields[4]))
    return holders


def real_uid(pid: int) -> int | None:
    """The real uid of ``pid`` (a set-user-ID program's too); None when it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])  # real, effective, saved, filesystem
    except (OSError, ValueError, IndexError):
        pass
    return None


def descriptor_info(pid: int, identity: tuple[int, int]) -> list[list[bytes]]:
    """The ``/proc/PID/fdinfo`` lines of each of ``pid``'s descriptors on the file.

    Empty when it has none, is gone, or we may not (or cannot) look.
    """
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    found = []
    for entry in entries:
        try:
            target = os.stat(f"/proc/{pid}/fd/{entry}")
            if (target.st_dev, target.st_ino) != identity:
                continue
            with open(f"/proc/{pid}/fdinfo/{entry}", "rb") as info:
                found.append(info.readlines())
        except OSError:
            continue  # closed meanwhile
    return found
