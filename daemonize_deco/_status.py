"""What ``status`` reports: a few lines for people, or one JSON object (``--json``).

For a running service: pid, uptime, the options it was started with, and
what it uses, read from /proc (no psutil): resident memory, CPU % since it
started, threads, open descriptors, child processes, listening sockets.
For one that is not running: how its last run ended (``_lastrun``).  The
exit status is LSB's either way: 0 running, 1 dead with its pidfile left,
3 not running.
"""

from __future__ import annotations

from . import _lastrun
from ._options import remembered
from ._proc import Resources, resources, uptime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._pidfile import PidFileState

__all__ = ["StatusReport"]

_MIB = 1024 * 1024


class StatusReport:
    """Everything status says about one service, gathered once."""

    def __init__(self, name: str, pidfile: str, state: PidFileState, note: str = "") -> None:
        self.name = name
        self.pidfile = pidfile
        self.state = state
        self.note = note
        pid = state.pid if state.running else None
        self.uptime = uptime(pid) if pid is not None else None
        self.options = remembered(pidfile) if state.running else None
        self.resources = resources(pid) if pid is not None else Resources()
        self.last = None if state.running else _lastrun.read(pidfile)

    @property
    def exit_status(self) -> int:
        """0 running, 1 dead but its pidfile left behind, 3 not running."""
        if self.state.running:
            return 0
        return 1 if self.state.exists else 3

    def text(self) -> str:
        """The sentence, and for a running service the lines of detail below it."""
        if self.state.running:
            return "\n".join([self._running_line(), *self._details()])
        if self.state.exists:
            pid = self.state.pid
            stale = f" (pid {pid})" if pid is not None else ""
            if self.last is not None and self.last.pid == pid:
                how = f"last run: {self.last.describe()}"
            else:
                how = "it died without cleaning up (killed?)"
            return (
                f"{self.name} is not running, but its pidfile {self.pidfile} is left behind"
                f"{stale}: {how}"
            )
        after = "" if self.last is None else f" (last run: {self.last.describe()})"
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
        lines = []
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
            "pidfile_left_behind": self.state.exists and not self.state.running,
            "note": self.note or None,
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


def _quoted(word: str) -> str:
    if word and all(c.isalnum() or c in "-_./:=@,+" for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"
