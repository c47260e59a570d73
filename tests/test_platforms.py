"""The examples on each platform: Linux for real, macOS and FreeBSD simulated.

Each example goes through start, status, reload, restart, stop and status
with the README's exit statuses, no traceback, and nothing left running.
The simulated platforms run the commands and the daemons with what macOS or
FreeBSD lacks taken away (tests/simulated_platform/sitecustomize.py), in
every run of the suite, whatever ``--simulate-platform`` says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import MARK, REPO, marked_pids, wait_for
from platform_simulation import SIMULATION, VARIABLE
from test_kvserver import free_port

pytestmark = pytest.mark.timeout(120)

PLATFORMS = ("linux", "darwin", "freebsd14")


@dataclass
class Example:
    """One example's command line, in its own folder, on one (simulated) platform."""

    script: str
    args: list[str]
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    def cli(self, *words: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(REPO / "examples" / self.script), *words, *self.args]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)
        self.outputs.append(result.stdout + result.stderr)
        return result


def _env(platform: str, mark: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (VARIABLE, "PYTHONPATH")}
    env.update(extra, PYTHONPATH=str(REPO), **{MARK: mark})
    if platform != "linux":
        env.update(PYTHONPATH=f"{SIMULATION}{os.pathsep}{REPO}", **{VARIABLE: platform})
    return env


def _http_get(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def _kv(port: int, *args: str) -> str:
    result = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip()


def ticker(tmp_path: Path, platform: str, mark: str) -> tuple[Example, Callable[[], object]]:
    env = _env(
        platform, mark,
        TICKER_PIDFILE=str(tmp_path / "ticker.pid"), TICKER_LOG=str(tmp_path / "ticker.log"),
        TICKER_INTERVAL="0.05",
    )  # fmt: skip
    log = tmp_path / "ticker.log"
    return Example("ticker.py", [], env), lambda: log.exists() and "tick" in log.read_text()


def worker(tmp_path: Path, platform: str, mark: str) -> tuple[Example, Callable[[], object]]:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    (spool / "incoming" / "job-1").write_text("payload\n")
    env = _env(platform, mark, WORKER_POLL_SECONDS="0.05", WORKER_JOB_SECONDS="0.05")
    done = spool / "done" / "job-1"
    return Example("worker.py", ["--spool", str(spool)], env), done.exists


def kvserver(tmp_path: Path, platform: str, mark: str) -> tuple[Example, Callable[[], object]]:
    port = free_port()
    env = _env(platform, mark, KV_DIR=str(tmp_path), KV_PORT=str(port))
    return Example("kvserver.py", [], env), lambda: _kv(port, "ping") == "PONG"


def aioweb(tmp_path: Path, platform: str, mark: str) -> tuple[Example, Callable[[], object]]:
    port = free_port()
    env = _env(platform, mark, AIOWEB_DIR=str(tmp_path))
    return Example("aioweb.py", ["--port", str(port)], env), lambda: _http_get(port)


EXAMPLES = {"ticker": ticker, "worker": worker, "kvserver": kvserver, "aioweb": aioweb}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_an_example_goes_through_every_command(name, platform, tmp_path, mark):
    example, serving = EXAMPLES[name](tmp_path, platform, mark)
    started = example.cli("start")
    assert started.returncode == 0, started.stderr
    wait_for(serving, what=f"{name} at work")
    status = example.cli("status")
    assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr
    reloaded = example.cli("reload")
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    restarted = example.cli("restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    wait_for(serving, what=f"{name} at work after the restart")
    stopped = example.cli("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    after = example.cli("status")
    assert after.returncode == 3, after.stdout + after.stderr
    wait_for(lambda: not marked_pids(mark), what="nothing left running")
    logs = [path.read_text(errors="replace") for path in tmp_path.rglob("*.log")]
    tracebacks = [text for text in example.outputs + logs if "Traceback" in text]
    assert not tracebacks, tracebacks[0]
