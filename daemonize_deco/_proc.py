"""Processes seen from outside: /proc and pidfds.

A pidfd (``pidfd_open``) pins a process: it becomes readable the moment the
process exits, before anyone reaps it, which is what "gone" means here
(init may reap orphans late); stopping one through it is ``_terminate``.
"""

from __future__ import annotations

import os
import select

from ._errors import PidFileError

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass

__all__ = [
    "BADGE_LINK",
    "GROUP_BADGE",
    "ProcStat",
    "command_line",
    "ever_started_one",
    "fd_targets",
    "holds_file",
    "is_alive",
    "open_pidfd",
    "openers",
    "own_children",
    "read_stat",
    "somaxconn",
    "unix_path_bound",
    "unix_socket_names",
    "uptime",
    "wait_exit",
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
    then we could not signal it either.  PidFileError when we cannot look
    (no descriptor left: ``ulimit -n``): no answer is better than a guess.
    """
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

    A slow look (every descriptor of every process), for rare questions.
    """
    found = []
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


def open_pidfd(pid: int) -> int | None:
    """Pin ``pid`` with a pidfd; None when it no longer exists."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie has)."""
    pidfd = open_pidfd(pid)
    if pidfd is None:
        return False
    try:
        return not wait_exit(pidfd, 0)
    finally:
        os.close(pidfd)


def wait_exit(pidfd: int, timeout: float | None) -> bool:
    """Wait until the pidfd's process has exited; False when ``timeout`` passed first."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))


def unix_socket_names(pid: int) -> list[str] | None:
    """The names of the Unix sockets ``pid`` holds (``@name`` when abstract); None without /proc.

    Empty when it is gone or we may not look at its descriptors (nor, then,
    signal it).
    """
    inodes = {t[len("socket:[") : -1] for t in fd_targets(pid) if t.startswith("socket:[")}
    if not inodes:
        return []
    names = []
    try:
        with open("/proc/net/unix", encoding="ascii", errors="replace") as table:
            next(table)  # Num RefCount Protocol Flags Type St Inode Path
            for line in table:
                fields = line.split()
                if len(fields) >= 8 and fields[6] in inodes:
                    names.append(fields[7])
    except OSError:
        return None
    return names


def unix_path_bound(path: str) -> bool | None:
    """Whether a socket is bound to the file ``path``; None when /proc cannot tell."""
    try:
        table = open("/proc/net/unix", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except OSError:
        return None
    with table:
        next(table)  # Num RefCount Protocol Flags Type St Inode Path
        return any(line.split(None, 7)[7:] == [path + "\n"] for line in table)


def somaxconn() -> int | None:
    """The system's longest accept queue (``net.core.somaxconn``); None when /proc cannot tell."""
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
