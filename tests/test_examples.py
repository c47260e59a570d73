"""The examples, driven through their real command lines."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import MARK, REPO, is_gone, wait_for

pytestmark = pytest.mark.timeout(60)

TICKER = REPO / "examples" / "ticker.py"


@pytest.fixture
def ticker_env(tmp_path, mark):
    env = dict(os.environ, PYTHONPATH=str(REPO), **{MARK: mark})
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
