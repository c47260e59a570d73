"""The examples, driven through their real command lines."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import MARK, REPO, is_gone, python_path, wait_for

pytestmark = pytest.mark.timeout(60)

TICKER = REPO / "examples" / "ticker.py"


@pytest.fixture
def ticker_env(tmp_path, mark):
    env = dict(os.environ, PYTHONPATH=python_path(REPO), **{MARK: mark})
    env.update(
        TICKER_PIDFILE=str(tmp_path / "ticker.pid"),
        TICKER_LOG=str(tmp_path / "ticker.log"),
        TICKER_INTERVAL="0.05",
    )
    return env


def ticker(env, *args):
    return subprocess.run(
        [sys.executable, str(TICKER), *args], capture_output=True, text=True, env=env, timeout=30
    )


def test_ticker_help_lists_its_custom_command(ticker_env):
    result = ticker(ticker_env, "--help")
    assert result.returncode == 0
    assert "last" in result.stdout and "Print the last line of the log." in result.stdout


def test_ticker_round_trip(ticker_env, tmp_path):
    started = ticker(ticker_env, "start")
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("(pid ")[1].rstrip(")\n"))
    log = tmp_path / "ticker.log"
    wait_for(lambda: log.exists() and log.read_text().count("tick") >= 2, what="ticks")
    assert "tick" in ticker(ticker_env, "last").stdout
    (tmp_path / "ticker.interval").write_text("3600")
    reloaded = ticker(ticker_env, "reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "ticker: interval is 3600.0" in log.read_text()
    stopped = ticker(ticker_env, "stop")
    assert stopped.returncode == 0
    assert is_gone(pid)
    assert log.read_text().rstrip().endswith("ticker: stopping")


# -- worker ------------------------------------------------------------------

WORKER = REPO / "examples" / "worker.py"


def worker(env, *args):
    return subprocess.run(
        [sys.executable, str(WORKER), *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.timeout(120)
def test_worker_does_every_job_exactly_once_across_restarts(tmp_path, mark):
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=python_path(REPO), **{MARK: mark})
    env.update(WORKER_POLL_SECONDS="0.05")
    jobs = {f"job-{i:02d}": f"payload {i}\n" for i in range(30)}
    for name, text in jobs.items():
        (spool / "incoming" / name).write_text(text)
    at = ("--spool", str(spool))
    assert worker(env, "start", *at, "--job-seconds", "0.3").returncode == 0
    done = spool / "done"

    def done_count() -> int:
        return len(list(done.iterdir())) if done.exists() else 0

    for restart in range(5):
        wait_for(lambda n=restart: done_count() >= 4 * (n + 1), timeout=30, what="progress")
        # --spool names the instance; its other options (--job-seconds 0.3) are reused.
        result = worker(env, "restart", *at)
        assert result.returncode == 0, result.stderr
    wait_for(lambda: done_count() == 30, timeout=60, what="all 30 jobs")
    assert worker(env, "pending", *at).stdout.strip() == "no pending jobs"
    assert f"options: --spool {spool} --job-seconds 0.3" in worker(env, "status", *at).stdout
    assert worker(env, "stop", *at).returncode == 0

    assert sorted(p.name for p in done.iterdir()) == sorted(jobs)
    for name, text in jobs.items():
        assert (done / name).read_text() == text.upper()
    assert list((spool / "incoming").iterdir()) == [] and list((spool / "work").iterdir()) == []
    log = (spool / "worker.log").read_text()
    for name in jobs:
        assert log.count(f"worker: done {name} ") == 1, f"{name} not done exactly once"
    assert log.count("worker: ready") == 6
    assert log.count("worker: stopped, no job in flight") == 6
    assert "requeued" not in log, "a graceful stop leaves no job half done"
