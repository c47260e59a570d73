"""Processes seen from outside: /proc, and what tells the same where there is none.

A process is pinned with a ``_platform_process.ProcessHandle`` (a pidfd on
Linux): it tells the moment the process exits, before anyone reaps it,
which is what "gone" means here (init may reap orphans late); stopping one
through it is ``_terminate``.  Without ``/proc`` (macOS, the BSDs) each
function here says so: None, or an empty answer, never a guess.
"""

from __future__ import annotations

import os
import select

from ._errors import PidFileError
from ._platform import has_proc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "BADGE_LINK",
    "GROUP_BADGE",
    "ProcStat",
    "boot_id",
    "command_line",
    "descriptor_info",
    "environ",
    "ever_started_one",
    "executable",
    "fd_targets",
    "flock_holders",
    "group_members",
    "has_open",
    "holds_file",
    "is_alive",
    "memfd_names",
    "name_task",
    "openers",
    "own_children",
    "own_descriptor_targets",
    "own_descriptors",
    "pids",
    "read_stat",
    "real_uid",
    "somaxconn",
    "task_exists",
    "task_syscalls",
    "unix_path_bound",
    "unix_socket_names",
    "unwatch",
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


def memory_and_threads(pid: int) -> tuple[int | None, int | None] | None:
    """Resident memory in bytes and the thread count of ``pid`` (``/proc/PID/status``).

    None when it is gone or there is no /proc; a field the kernel does not
    show (a kernel thread has no VmRSS) is None.
    """
    rss = threads = None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f.read().decode("ascii", "replace").splitlines():
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    rss = int(value.split()[0]) * 1024
                elif key == "Threads":
                    threads = int(value)
    except OSError:
        return None
    return rss, threads


def cpu_seconds(pid: int) -> float | None:
    """The CPU time ``pid`` has used, user and system; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def may_look_at_fds(pid: int) -> bool:
    """Whether ``/proc/PID/fd`` may be listed (our own user's process, or we are root)."""
    try:
        os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    """Every process whose parent is ``pid`` (a walk of /proc); [] without /proc."""
    return [child for child, stat in _stats() if stat.ppid == pid]


def first_living_child(parent: int) -> int | None:
    """The child ``parent`` has had the longest: the one it started, not one it adopted since.

    The kernel lists a task's children in the order they became its
    children (forked, or re-parented to it).  Without that list
    (CONFIG_PROC_CHILDREN), the earliest started of them; None without /proc.
    """
    try:
        with open(f"/proc/{parent}/task/{parent}/children", "rb") as f:
            listed = f.read().split()
    except OSError:
        return _earliest_child(parent)
    return int(listed[0]) if listed else None


def _earliest_child(parent: int) -> int | None:
    children = [
        (stat.starttime_ticks, child)
        for child, stat in _stats()
        if stat.ppid == parent and stat.state not in "ZX"
    ]
    return min(children)[1] if children else None


def _stats() -> Iterator[tuple[int, ProcStat]]:
    """Every process's pid and stat (those that have not gone meanwhile); none without /proc."""
    try:
        every = pids() or []
    except OSError:
        every = []  # no descriptor left for the listing: nothing found
    for pid in every:
        stat = read_stat(pid)
        if stat is not None:
            yield pid, stat


def working_directory(pid: int) -> str | None:
    """The current directory of ``pid``; None when it is gone or hidden, or there is no /proc."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def cgroup_path(pid: int) -> str:
    """The (unified) cgroup path of ``pid``: ``/system.slice/app.service``; "" when unknown."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n").rpartition(":")[2]
    except OSError:
        return ""


def environment(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with; {} when we may not look, or there is no /proc."""
    pairs = (entry.decode("utf-8", "replace").partition("=") for entry in environ(pid).split(b"\0"))
    return {key: value for key, _, value in pairs if key}


def listening_sockets(inodes: set[str]) -> list[str]:
    """The listening sockets among ``inodes``: ``tcp 127.0.0.1:9000``, ``unix /run/x.sock``.

    The library's own sockets (abstract names under ``@daemonize_deco``) are left out.
    """
    found = []
    for family in ("tcp", "tcp6"):
        for fields in _listening_rows(f"/proc/net/{family}"):
            if len(fields) > 9 and fields[9] in inodes:
                found.append(f"{family} {_address(fields[1])}")
    for fields in _table("/proc/net/unix"):
        # Flags 00010000 is __SO_ACCEPTCON: a listening socket.
        if len(fields) >= 7 and fields[6] in inodes and fields[3] == "00010000":
            path = fields[7] if len(fields) > 7 else "(unnamed)"
            if not path.startswith(("@daemonize_deco/", "@daemonize_deco-claim:")):
                found.append(f"unix {path}")
    return found


def _listening_rows(path: str) -> list[list[str]]:
    """The LISTEN rows (state 0A) of /proc/net/tcp or tcp6.

    The kernel lists its listening hash before the established one, so the
    rows stop at the first in another state: a host with 50,000 connections
    in TIME_WAIT (a load balancer's, a load test's) is not read through, which
    took 150 ms, on the health endpoint's thread too.  Rows in SYN_RECV (03)
    do not end it: kernels before 4.4 list a listener's pending connections
    right after it.
    """
    rows = []
    try:
        with open(path, "rb") as f:
            f.readline()  # the header
            for line in f:
                fields = line.decode("ascii", "replace").split()
                state = fields[3] if len(fields) > 3 else ""
                if state == "03":
                    continue
                if state != "0A":
                    break
                rows.append(fields)
    except OSError:
        return []
    return rows


def _table(path: str) -> list[list[str]]:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("ascii", "replace").splitlines()[1:]
    except OSError:
        return []
    return [line.split() for line in lines]


def _address(hex_address: str) -> str:
    """``0100007F:1F90`` → ``127.0.0.1:8080``; IPv6 as ``[::1]:8080``."""
    host, _, port = hex_address.partition(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return f"{'.'.join(map(str, words))}:{int(port, 16)}"
    groups = [words[i : i + 2].hex() for i in range(0, 16, 2)]
    return f"[{_compress(groups)}]:{int(port, 16)}"


def _compress(groups: list[str]) -> str:
    """IPv6 groups in the short form (the longest run of zeros as ``::``)."""
    short = [g.lstrip("0") or "0" for g in groups]
    best, start = (0, -1), -1
    for i, group in enumerate([*short, "x"]):
        if group == "0" and start < 0:
            start = i
        elif group != "0" and start >= 0:
            best = max(best, (i - start, start))
            start = -1
    length, first = best
    if length < 2:
        return ":".join(short)
    return ":".join(short[:first]) + "::" + ":".join(short[first + length :])


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
    return [pid for pid, stat in _stats() if stat.pgrp == pgid and stat.state not in ("Z", "X")]


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


def has_open(pid: int, pidfile: str) -> bool:
    """Whether ``pid`` has ``pidfile`` open: the file at its path, or one deleted from it.

    The file at the path is compared by (device, inode); a deleted one can
    only be told by the name the kernel shows for it, which is its real
    path (``/run/app.pid`` for a pidfile configured as ``/var/run/app.pid``).
    """
    try:
        there = os.stat(pidfile, follow_symlinks=False)
    except OSError:
        pass  # none there now: only a deleted one can be it
    else:
        if holds_file(pid, (there.st_dev, there.st_ino)):
            return True
    directory, name = os.path.split(pidfile)
    deleted = f"{os.path.join(os.path.realpath(directory), name)} (deleted)"
    return deleted in fd_targets(pid)
