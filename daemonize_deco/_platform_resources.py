"""What a running process uses, for ``status``: from /proc, from psutil, or unknown.

The source is chosen by what this system has, in this order:

- ``/proc`` where a procfs is mounted (Linux): the figures ``status`` has
  always shown, read without a third-party import;
- psutil where it is installed (``pip install daemonize_deco[status]``): the
  well-kept library for exactly this on macOS and the BSDs;
- otherwise nothing: each figure is None ("unknown"), never a guessed 0.

psutil is imported here only, and only when a ``status`` needs it: the
runtime stays stdlib-only, and a daemon never loads it.  Uptime without
either comes from ``ps -o etime=`` (POSIX: macOS and FreeBSD have it).
"""

from __future__ import annotations

import os
import time

from . import _platform, _proc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["PROC", "PSUTIL", "Resources", "resources", "uptime"]

PROC = "/proc"
PSUTIL = "psutil"


class Resources:
    """What a running process uses; None where it is unknown.

    ``source`` says where the figures came from: ``PROC``, ``PSUTIL``, or
    None: nothing to tell (a service that does not run: no figures, no
    children) or, from :meth:`unknown`, nothing could tell (every figure None).
    """

    __slots__ = (
        "children", "cpu_percent", "listening", "open_fds", "rss_bytes", "source", "threads",
    )  # fmt: skip

    def __init__(self, source: str | None = None) -> None:
        self.source = source
        self.rss_bytes: int | None = None
        self.cpu_percent: float | None = None
        self.threads: int | None = None
        self.open_fds: int | None = None
        self.children: list[int] | None = []
        self.listening: list[str] | None = []

    @classmethod
    def unknown(cls) -> Resources:
        """Nothing on this system tells what a process uses."""
        found = cls()
        found.children = found.listening = None
        return found


def resources(pid: int) -> Resources:
    """Memory (RSS), CPU % since start, threads, descriptors, children, listening sockets."""
    if _platform.has_proc():
        return _from_proc(pid)
    psutil = _psutil()
    if psutil is not None:
        return _from_psutil(psutil, pid)
    return Resources.unknown()


def uptime(pid: int) -> float | None:
    """Seconds since ``pid`` started; None when it is gone or nothing can tell."""
    if _platform.has_proc():
        return _proc.uptime(pid)
    psutil = _psutil()
    if psutil is not None:
        try:
            return max(0.0, time.time() - float(psutil.Process(pid).create_time()))
        except (psutil.Error, OSError):
            return None
    return _elapsed_by_ps(pid)


def _from_proc(pid: int) -> Resources:
    found = Resources(PROC)
    memory = _proc.memory_and_threads(pid)
    if memory is None:
        return found
    found.rss_bytes, found.threads = memory
    found.cpu_percent = _cpu_percent(_proc.cpu_seconds(pid), _proc.uptime(pid))
    targets = _proc.fd_targets(pid)
    found.open_fds = len(targets) if targets or _proc.may_look_at_fds(pid) else None
    found.children = _proc.children_of(pid)
    inodes = {t[len("socket:[") : -1] for t in targets if t.startswith("socket:[")}
    found.listening = _proc.listening_sockets(inodes) if inodes else []
    return found


def _cpu_percent(busy: float | None, up: float | None) -> float | None:
    if busy is None:
        return None
    return round(100 * busy / up, 1) if up else 0.0


def _psutil() -> ModuleType | None:
    """psutil, when it is installed (and works here); None otherwise."""
    import importlib  # noqa: PLC0415 -- only a status without /proc pays for it

    try:
        return importlib.import_module("psutil")
    except (ImportError, OSError):  # not installed, or no backend for this system
        return None


def _from_psutil(psutil: ModuleType, pid: int) -> Resources:
    """Each figure psutil can give; one it may not (another user's process) stays None."""
    try:
        process = psutil.Process(pid)
    except (psutil.Error, OSError):
        return Resources.unknown()
    found = Resources(PSUTIL)
    errors = (psutil.Error, OSError, NotImplementedError)

    def ask(question: str) -> object:
        try:
            return getattr(process, question)()
        except errors:
            return None

    memory = ask("memory_info")
    found.rss_bytes = None if memory is None else int(memory.rss)  # type: ignore[attr-defined]
    times = ask("cpu_times")
    busy = None if times is None else float(times.user + times.system)  # type: ignore[attr-defined]
    started = ask("create_time")
    up = None if started is None else max(0.0, time.time() - float(started))  # type: ignore[arg-type]
    found.cpu_percent = _cpu_percent(busy, up)
    threads = ask("num_threads")
    found.threads = None if threads is None else int(threads)  # type: ignore[call-overload]
    fds = ask("num_fds")
    found.open_fds = None if fds is None else int(fds)  # type: ignore[call-overload]
    children = ask("children")
    found.children = None if children is None else [child.pid for child in children]  # type: ignore[attr-defined]
    found.listening = _listening_by_psutil(process, psutil, errors)
    return found


def _listening_by_psutil(
    process: object, psutil: ModuleType, errors: tuple[type[BaseException], ...]
) -> list[str] | None:
    """The TCP sockets ``process`` listens on, written as /proc's are (``tcp 127.0.0.1:80``).

    psutil tells no listening state for Unix sockets: they are not listed.
    """
    import socket  # noqa: PLC0415 -- loaded by then

    try:
        connections = process.net_connections(kind="tcp")  # type: ignore[attr-defined]
    except errors:
        return None
    found = []
    for connection in connections:
        if connection.status != psutil.CONN_LISTEN or not connection.laddr:
            continue
        host, port = connection.laddr[0], connection.laddr[1]
        if connection.family == socket.AF_INET6:
            found.append(f"tcp6 [{host}]:{port}")
        else:
            found.append(f"tcp {host}:{port}")
    return found


def _elapsed_by_ps(pid: int) -> float | None:
    """``ps -o etime=``: ``[[DD-]HH:]MM:SS`` since ``pid`` started (POSIX ps)."""
    import subprocess  # noqa: PLC0415 -- only a status without /proc nor psutil pays for it

    try:
        shown = subprocess.run(
            ["ps", "-o", "etime=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return _parse_etime(shown)


def _parse_etime(text: str) -> float | None:
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    if days and not days.isdigit():
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(seconds + int(days or 0) * 86400)
