"""What ``status`` reports: a few lines for people, or one JSON object (``--json``).

For a running service: pid, uptime, the options it was started with, and
what it uses, read from /proc (no psutil): resident memory, CPU % since it
started, threads, open descriptors, child processes, listening sockets.
For one that is not running: how its last run ended (``_lastrun``).  The
exit status is LSB's either way: 0 running, 1 dead with its pidfile left,
3 not running.
"""

from __future__ import annotations

import os
import time

from . import _lastrun
from ._descendants import describe, left_by
from ._phases import Phase, SupervisorState
from ._proc import fd_targets, read_stat, uptime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

    from ._looking import PidFileState
    from ._pidfile import PidFile

__all__ = ["StatusReport"]

_MIB = 1024 * 1024


class StatusReport:
    """Everything status says about one service, gathered once."""

    def __init__(
        self,
        name: str,
        pidfile: PidFile,
        state: PidFileState,
        note: str = "",
        *,
        option_owners: Collection[int] = (),
    ) -> None:
        self.name = name
        self.pidfile = pidfile.path
        self.state = state
        self.note = note
        owners = pidfile.owners
        pid = state.pid if state.running else None
        self.uptime = uptime(pid) if pid is not None else None
        # Shown as what a restart would reuse: only a file it would read.
        self.options = _remembered(self.pidfile, option_owners) if state.running else None
        self.supervision = _supervision(self.pidfile, owners, pid)
        # Supervised, what counts is the service's use, not the supervisor's.
        watched = pid if self.supervision is None else self.supervision.service
        self.resources = resources(watched) if watched is not None else Resources()
        self.last = None if state.running else _lastrun.read(self.pidfile, owners)
        self.leftovers = _left_by(self.pidfile, state) if self.left_behind else []
        if state.last_words:  # the service could not remove its pidfile: its record is in it
            self.last = _lastrun.LastRun.from_text(state.last_words.decode("utf-8", "replace"))

    @property
    def failed(self) -> str | None:
        """Why the supervisor gave up restarting the service, when it did."""
        last = self.last
        if self.state.running or last is None or last.pid != self.state.pid:
            return None
        return last.failed

    @property
    def left_behind(self) -> bool:
        """The service's own pidfile is there, though nothing runs (it died, or gave up)."""
        state = self.state
        return state.exists and not state.running and not state.last_words and not self.foreign

    @property
    def foreign(self) -> bool:
        """The file at the pidfile's path is another user's: it says nothing of the service."""
        return self.state.foreign_owner is not None

    @property
    def exit_status(self) -> int:
        """0 running, 1 dead but its pidfile left behind (or given up on), 3 not running."""
        if self.state.running:
            return 0
        return 1 if self.left_behind else 3

    def text(self) -> str:
        """The sentence, and for a running service the lines of detail below it."""
        if self.state.running:
            return "\n".join([self._running_line(), *self._details()])
        if self.failed is not None and self.last is not None:
            return (
                f"{self.name} failed: {self.failed} "
                f"(supervisor pid {self.last.pid} gave up at {_lastrun.clock(self.last.ended)})"
            )
        if self.left_behind:
            pid = self.state.pid
            stale = f" (pid {pid})" if pid is not None else ""
            if self.last is not None and self.last.pid == pid:
                how = f"last run: {self.last.describe()}"
            else:
                how = "it died without cleaning up (killed?)"
            if self.leftovers:
                how += f"; {describe(self.leftovers)} it started still run: stop ends them"
            return (
                f"{self.name} is not running, but its pidfile {self.pidfile} is left behind"
                f"{stale}: {how}"
            )
        notes = [] if self.last is None else [f"last run: {self.last.describe()}"]
        if self.state.foreign_owner is not None:
            notes.append(f"what is at {self.pidfile} is not trusted: {self.state.distrust}")
        after = f" ({'; '.join(notes)})" if notes else ""
        return f"{self.name} is not running{after}"

    def _running_line(self) -> str:
        pid = self.state.pid
        detail = "pid unknown" if pid is None else f"pid {pid}"
        if self.uptime is not None:
            detail += f", up {_lastrun.format_duration(self.uptime)}"
        if self.note:
            detail += f"; {self.note}"
        return f"{self.name} is running ({detail})"

    def _details(self) -> list[str]:
        used = self.resources
        lines = [] if self.supervision is None else [self._supervision_line(self.supervision)]
        parts = []
        if used.rss_bytes is not None:
            parts.append(f"memory {used.rss_bytes / _MIB:.1f} MiB")
        if used.cpu_percent is not None:
            parts.append(f"CPU {used.cpu_percent:g}% since start")
        if used.threads is not None:
            parts.append(f"{used.threads} thread{'s' * (used.threads != 1)}")
        if used.open_fds is not None:
            parts.append(f"{used.open_fds} open descriptors")
        count = len(used.children)
        parts.append(f"{count} child process{'es' * (count != 1)}")
        lines.append("  " + ", ".join(parts))
        if used.listening:
            lines.append("  listening: " + ", ".join(used.listening))
        if self.options:
            lines.append("  options: " + " ".join(_quoted(word) for word in self.options))
        return lines

    @staticmethod
    def _supervision_line(state: SupervisorState) -> str:
        line = f"  supervisor pid {state.supervisor}; {_phase_words(state)}"
        line += f"; {state.restarts} restart{'s' * (state.restarts != 1)}"
        if state.failure:
            line += f"; last failure: {state.failure}"
        return line

    def as_json(self) -> str:
        """One JSON object: the same facts, for scripts."""
        import json  # noqa: PLC0415 -- only --json pays for it

        used = self.resources
        last = self.last
        document = {
            "name": self.name,
            "pidfile": self.pidfile,
            "running": self.state.running,
            "pid": self.state.pid if self.state.running else None,
            "uptime_s": None if self.uptime is None else round(self.uptime, 3),
            "options": self.options,
            "rss_bytes": used.rss_bytes,
            "cpu_percent": used.cpu_percent,
            "threads": used.threads,
            "open_fds": used.open_fds,
            "children": used.children,
            "listening": used.listening,
            "pidfile_left_behind": self.left_behind,
            "leftovers": self.leftovers,
            "pidfile_foreign_owner": self.state.foreign_owner,
            "note": self.note or None,
            "failed": self.failed,
            "supervision": None
            if self.supervision is None
            else {
                "supervisor_pid": self.supervision.supervisor,
                "phase": self.supervision.phase,
                "service_pid": self.supervision.service,
                "service_started": self.supervision.service_started,
                "restarts": self.supervision.restarts,
                "last_failure": self.supervision.failure,
                "restart_at": self.supervision.restart_at,
            },
            "last_run": None
            if last is None
            else {
                "pid": last.pid,
                "status": last.status,
                "exception": last.exception,
                "signal": last.signal,
                "killed": last.killed,
                "started": last.started,
                "ended": last.ended,
                "summary": last.describe(),
            },
        }
        return json.dumps(document)


def _left_by(pidfile: str, state: PidFileState) -> list[int]:
    """What a run that died without cleaning up started and is still running."""
    return [] if state.pid is None else left_by(pidfile, state.pid)


def _supervision(pidfile: str, owners: Collection[int], pid: int | None) -> SupervisorState | None:
    """The supervisor's state, when the running pid is a supervisor's (``restart=``)."""
    if pid is None:
        return None
    state = SupervisorState.read(pidfile, owners)
    return state if state is not None and state.supervisor == pid else None


def _phase_words(state: SupervisorState) -> str:
    """What the supervisor is doing: "service pid 12, up 3m", "backing off, restarting in 4.2s"."""
    if state.phase == Phase.BACKING_OFF or state.service is None:
        wait = max(0.0, (state.restart_at or time.time()) - time.time())
        return f"backing off, restarting in {wait:.1f}s"
    up = "" if state.service_started is None else (
        f", up {_lastrun.format_duration(time.time() - state.service_started)}"
    )  # fmt: skip
    run = f"service pid {state.service}{up}"
    match state.phase:
        case Phase.STARTING:
            return f"{run}, not ready yet"
        case Phase.RESTARTING:
            return f"{run}, restarted, not ready yet"
        case Phase.ENDING_HUNG:
            return f"{run}, hung: being ended"
    return run


def _quoted(word: str) -> str:
    if word and all(c.isalnum() or c in "-_./:=@,+" for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _remembered(pidfile: str, owners: Collection[int]) -> list[str] | None:
    from ._remembered_options import remembered  # noqa: PLC0415 -- a small read; no option parsing

    return remembered(pidfile, owners)


class Resources:
    """What a running process uses, read from /proc (None where we may not look)."""

    __slots__ = ("children", "cpu_percent", "listening", "open_fds", "rss_bytes", "threads")

    def __init__(self) -> None:
        self.rss_bytes: int | None = None
        self.cpu_percent: float | None = None
        self.threads: int | None = None
        self.open_fds: int | None = None
        self.children: list[int] = []
        self.listening: list[str] = []


def resources(pid: int) -> Resources:
    """Memory (RSS), CPU % since start, threads, descriptors, children, listening sockets."""
    found = Resources()
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f.read().decode("ascii", "replace").splitlines():
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    found.rss_bytes = int(value.split()[0]) * 1024
                elif key == "Threads":
                    found.threads = int(value)
    except OSError:
        return found
    found.cpu_percent = _cpu_percent(pid)
    targets = fd_targets(pid)
    found.open_fds = len(targets) if targets or _may_look(pid) else None
    found.children = [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None and stat.ppid == pid
    ]
    inodes = {t[len("socket:[") : -1] for t in targets if t.startswith("socket:[")}
    found.listening = _listening(inodes) if inodes else []
    return found


def _may_look(pid: int) -> bool:
    try:
        os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    return True


def _cpu_percent(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (int(fields[11]) + int(fields[12])) / ticks
    up = uptime(pid)
    return round(100 * busy / up, 1) if up else 0.0


def _listening(inodes: set[str]) -> list[str]:
    """The listening sockets among ``inodes``: ``tcp 127.0.0.1:9000``, ``unix /run/x.sock``."""
    found = []
    for table, family in (("tcp", "tcp"), ("tcp6", "tcp6")):
        for fields in _table(f"/proc/net/{table}"):
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(f"{family} {_address(fields[1])}")
    for fields in _table("/proc/net/unix"):
        # Flags 00010000 is __SO_ACCEPTCON: a listening socket.
        if len(fields) >= 7 and fields[6] in inodes and fields[3] == "00010000":
            path = fields[7] if len(fields) > 7 else "(unnamed)"
            if not path.startswith(("@daemonize_deco/", "@daemonize_deco-claim:")):
                found.append(f"unix {path}")
    return found


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
