"""Processes seen from outside: /proc and pidfds.

A pidfd (``pidfd_open``) pins a process: it becomes readable the moment the
process exits, before anyone reaps it, which is what "gone" means here
(init may reap orphans late); stopping one through it is ``_terminate``.
"""

from __future__ import annotations

import os
import select

from ._errors import PidFileError
from ._platform import has_proc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BADGE_LINK",
    "GROUP_BADGE",
    "ProcStat",
    "boot_id",
    "command_line",
    "environ",
    "ever_started_one",
    "executable",
    "fd_targets",
    "holds_file",
    "is_alive",
    "memfd_names",
    "name_task",
    "open_pidfd",
    "openers",
    "own_children",
    "own_descriptor_targets",
    "own_descriptors",
    "pids",
    "read_stat",
    "task_exists",
    "task_syscalls",
    "unwatch",
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


def own_children() -> list[int] | None:
    """This process's children (every thread's); None without /proc."""
    found: list[int] = []
    try:
        tids = os.listdir("/proc/self/task")
    except FileNotFoundError:
        return None
    for tid in tids:
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
    ran before it in the same process.  Without /proc, True: a child not
    reaped yet has counted nothing.
    """
    children = own_children()
    if children is None or children:
        return True  # (without /proc a live child cannot be ruled out)
    import resource  # noqa: PLC0415 -- loaded already when core dumps are prevented

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_minflt + used.ru_majflt > 0


# -- this process and its run, for the seam's users (None: no /proc to look in) --


def boot_id() -> str:
    """What tells this boot from the others; "" where the kernel does not say (no /proc)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().decode("ascii", "replace").strip()
    except OSError:
        return ""


def pids() -> list[int] | None:
    """Every process's pid; None without /proc."""
    try:
        entries = os.listdir("/proc")
    except FileNotFoundError:
        return None
    return [int(entry) for entry in entries if entry.isdigit()]


def environ(pid: int) -> bytes:
    """``pid``'s environment as its program started (NUL-separated); b"" if gone or hidden."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""  # gone, or another user's


def executable(pid: int) -> str | None:
    """The program file ``pid`` runs; None when gone or hidden."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def memfd_names(pid: int) -> list[str] | None:
    """What ``pid``'s memfds point at (``/memfd:NAME (deleted)``); None if we may not look."""
    try:
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return None
    return [target for target in targets if target.startswith("/memfd:")]


def own_descriptors() -> list[int] | None:
    """This process's descriptors, ascending (the listing's own among them); None without /proc.

    OSError when they cannot be listed (no descriptor left: ``ulimit -n``).
    """
    if not has_proc():
        return None  # not a procfs (an empty mount, a few files): its word is no list
    try:
        entries = os.listdir("/proc/self/fd")
    except FileNotFoundError:
        return None
    return sorted(int(entry) for entry in entries)


def own_descriptor_targets() -> list[tuple[int, str]] | None:
    """This process's descriptors and what each points at (``socket:[123]``); None: no /proc."""
    try:
        entries = os.listdir("/proc/self/fd")
    except FileNotFoundError:
        return None
    found = []
    for name in entries:
        try:
            found.append((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except OSError:
            continue  # closed meanwhile (or the listing's own descriptor)
    return found


def name_task(tid: int, name: bytes) -> bool:
    """Write the kernel's name (comm) of this process's thread ``tid``; False where it cannot.

    What ``prctl(PR_SET_NAME)`` does (proc(5)), without loading ctypes.
    """
    try:
        with open(f"/proc/self/task/{tid}/comm", "wb") as comm:
            comm.write(name)
    except OSError:
        return False
    return True


def task_exists(native_id: int | None) -> bool:
    """Whether this process's thread ``native_id`` is still in the kernel; False without /proc."""
    return os.path.exists(f"/proc/self/task/{native_id}")


def task_syscalls() -> list[list[str]]:
    """For each thread of this process blocked in a call, its ``syscall`` line's words.

    Empty without /proc.
    """
    try:
        tids = os.listdir("/proc/self/task")
    except FileNotFoundError:
        return []
    found = []
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/syscall", encoding="ascii") as info:
                found.append(info.read().split())
        except OSError:
            continue  # gone, or not readable
    return found


def unwatch(epoll_fd: int, fds: Sequence[int]) -> None:
    """EPOLL_CTL_DEL each of ``fds`` that ``epoll_fd`` watches (its fdinfo lists them)."""
    try:
        with open(f"/proc/self/fdinfo/{epoll_fd}", encoding="ascii") as info:
            watched = {int(line.split()[1]) for line in info if line.startswith("tfd:")}
        epoll = select.epoll.fromfd(os.dup(epoll_fd))  # the same epoll set, our own descriptor
    except (OSError, ValueError, IndexError):
        return
    with epoll:
        for fd in watched.intersection(fds):
            try:
                epoll.unregister(fd)
            except OSError:
                pass  # the loop removed it meanwhile


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
