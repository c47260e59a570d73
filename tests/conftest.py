"""Real-process test helpers.

Every process a test starts carries an environment variable with the test's
own mark; teardown finds them all through /proc/PID/environ (daemons,
their children, orphans) and kills them, TERM then KILL, even when the test
failed.  Nothing here sleeps for a fixed time: ``wait_for`` polls a
condition against a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from reliability_report import (  # noqa: F401 -- pytest finds these hooks by name
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)

pytest_plugins = ("platform_simulation",)

# A script's background job (bash's `&` without job control, as .ci/run runs
# the simulated suites) starts with SIGINT ignored, and an ignored signal stays
# ignored across exec: the processes a test Ctrl-Cs would never hear it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
MARK = "DAEMONIZE_DECO_TEST_MARK"
T = TypeVar("T")


def python_path(*folders: str | Path) -> str:
    """``PYTHONPATH`` for a child: ``folders`` first, then what this run has (a simulation's)."""
    return os.pathsep.join(filter(None, [*map(str, folders), os.environ.get("PYTHONPATH")]))


def simulation() -> dict[str, str]:
    """The variables that carry a simulated platform to a child with a minimal environment."""
    names = ("DAEMONIZE_DECO_SIMULATE",)
    return {name: os.environ[name] for name in names if name in os.environ}


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (zombies too)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and int(stat[1]) == pid:
                found.append(int(entry))
    return found


def context_switches(pid: int) -> int:
    """Every time any thread of ``pid`` was switched out, voluntarily or not (its wake-ups)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split(":")[1])
    return total


def assert_wakes_zero_times(pid: int, window: float = 2.0) -> None:
    """``pid`` wakes not once in ``window`` seconds, once nothing moved for 0.5 s.

    On a loaded machine its threads may still be finishing their start: it is
    measured from the first half second in which none of them ran.
    """
    seen = [context_switches(pid), time.monotonic()]

    def settled() -> bool:
        now = context_switches(pid)
        if now != seen[0]:
            seen[:] = [now, time.monotonic()]
        return time.monotonic() - seen[1] >= 0.5

    wait_for(settled, timeout=30, what="the daemon to settle")
    before = context_switches(pid)
    time.sleep(window)  # the measurement window itself, not synchronisation
    assert context_switches(pid) == before, "an idle daemon must not wake up"


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def is_gone(pid: int) -> bool:
    """Exited: absent, or a zombie waiting for a (late) reap by init."""
    stat = proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def alive(pid: int) -> bool:
    return not is_gone(pid)


def marked_pids(mark: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(int(entry)):
            found.append(int(entry))
    return found


def kill_marked(mark: str) -> list[int]:
    """TERM, then KILL, every process with ``mark``; return those found."""
    pids = marked_pids(mark)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in marked_pids(mark):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while marked_pids(mark) and time.monotonic() < deadline:
            time.sleep(0.01)
    return pids


SCRIPT = """\
import os, signal, subprocess, sys, threading, time
from daemonize_deco import daemon, ready, should_stop, sleep

{prelude}

@daemon({options})
def main():
{body}

if __name__ == "__main__":
    main()
"""

IDLE = "while not should_stop():\n    sleep(3600)\nprint('stopping', flush=True)"


@dataclass
class Service:
    """A service script in tmp_path and the means to drive it from outside."""

    dir: Path
    script: Path
    pidfile: Path
    log: Path
    env: dict[str, str]
    mark: str
    name: str = "svc"
    popens: list[subprocess.Popen[str]] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.script), *args]

    def cli(self, *args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command to completion; capture its output."""
        env = kw.pop("env", self.env)
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=env, **kw
        )

    def popen(
        self, *args: str, command_prefix: list[str] | None = None, **kw: Any
    ) -> subprocess.Popen[str]:
        """Start a command without waiting for it."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("env", self.env)
        proc = subprocess.Popen([*(command_prefix or []), *self.argv(*args)], text=True, **kw)
        self.popens.append(proc)
        return proc

    def start(self) -> int:
        """Start the daemon, insist on success, return its pid."""
        result = self.cli("start")
        assert result.returncode == 0, result.stderr
        return self.pid_from(result.stdout)

    def stop_gracefully(self, pid: int) -> None:
        """Stop, insisting that it exited on SIGTERM (not killed) and is gone."""
        result = self.cli("stop")
        assert result.returncode == 0, result.stderr
        assert f"{self.name} stopped (pid {pid})" in result.stdout, result.stdout
        assert is_gone(pid)

    @staticmethod
    def pid_from(output: str) -> int:
        return int(output.split("(pid ")[1].split(")", maxsplit=1)[0].split(",", maxsplit=1)[0])

    def read_pid(self) -> int | None:
        try:
            text = self.pidfile.read_text()
        except FileNotFoundError:
            return None
        return int(text) if text.strip().isdigit() else None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def daemons(self) -> list[int]:
        """Live processes running this script, the commands themselves excluded."""
        return [pid for pid in marked_pids(self.mark) if self._is_daemon(pid)]

    def _is_daemon(self, pid: int) -> bool:
        stat = proc_stat(pid)
        # Detached daemons live in a session of their own; commands in ours.
        return stat is not None and int(stat[3]) != os.getsid(0)


@pytest.fixture
def mark() -> Iterator[str]:
    """A mark for this test's processes; they are all killed at teardown."""
    value = uuid.uuid4().hex
    yield value
    leaked = kill_marked(value)
    assert not marked_pids(value), "processes survived SIGKILL"
    if leaked:
        # Tests stop what they start; a leftover is a bug worth seeing.
        print(f"teardown killed leftover processes: {leaked}")


@pytest.fixture
def make_service(tmp_path: Path, mark: str) -> Iterator[Callable[..., Service]]:
    """Write a service script; ``body`` is main's body, keywords go to @daemon."""
    services: list[Service] = []

    def make(body: str = IDLE, prelude: str = "", name: str = "svc", **options: Any) -> Service:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        options.setdefault("pidfile", str(folder / f"{name}.pid"))
        options.setdefault("stdout", str(folder / f"{name}.log"))
        options.setdefault("stop_timeout", 5.0)
        options.setdefault("start_timeout", 10.0)
        rendered = ", ".join(f"{k}={v!r}" for k, v in options.items())
        script = folder / f"{name}.py"
        script.write_text(
            SCRIPT.format(
                prelude=prelude,
                options=rendered,
                body=textwrap.indent(textwrap.dedent(body), "    "),
            )
        )
        env = dict(os.environ)
        env[MARK] = mark
        env["PYTHONPATH"] = python_path(REPO)
        service = Service(
            dir=folder,
            script=script,
            pidfile=Path(options["pidfile"]),
            log=Path(options["stdout"]) if options["stdout"] else folder / "none.log",
            env=env,
            mark=mark,
            name=name,
        )
        services.append(service)
        return service

    yield make
    for service in services:
        for proc in service.popens:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


# -- another user ------------------------------------------------------------------

# Debian's interpreter: the test's own may live under /root, which nobody cannot enter.
SYSTEM_PYTHON = "/usr/bin/python3"


def _scratch_dir(mode: int) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="dd-shared-", dir="/tmp"))
    folder.chmod(mode)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def sticky_dir() -> Iterator[Path]:
    """A /tmp-like directory: world-writable and sticky, reachable by nobody."""
    yield from _scratch_dir(0o1777)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root-owned directory every user may enter but not write, as /run is."""
    yield from _scratch_dir(0o755)


@pytest.fixture
def as_nobody(mark: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -c CODE ARGS...`` as the real user nobody; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def spawn(code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", code, *args], user="nobody", group="nogroup", extra_groups=[],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={"PATH": "/usr/bin:/bin", MARK: mark},
        )  # fmt: skip
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.kill()
        proc.communicate()
