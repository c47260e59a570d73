"""README's "Wrapping an existing server": each recipe, as printed, is a working service.

The recipes are taken from README.md itself (the block after each
``<!-- recipe: NAME -->`` line), so the text a user copies is the text
tested.  Only the pidfile's and log's paths, the port and the schedule's
interval are changed, to fit the test.  Each runs through the real command
line: start, an answer right after it (or the job running), restart, stop,
status 3.  How a stop treats the request or job in flight is tested, per
framework, in test_stop_delivery.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MARK, REPO, is_gone, python_path, wait_for
from frameworks_helpers import free_port, http_get

pytestmark = [pytest.mark.frameworks, pytest.mark.timeout(90)]

RECIPE = re.compile(r"<!-- recipe: (\S+) -->\n+```python\n(.*?)```", re.DOTALL)
RECIPES = dict(RECIPE.findall((REPO / "README.md").read_text()))
SERVERS = ("uvicorn", "aiohttp", "waitress", "http.server", "wsgiref", "gunicorn")
SCHEDULERS = ("apscheduler", "schedule")


def test_the_readme_has_every_recipe() -> None:
    assert set(RECIPES) == {*SERVERS, *SCHEDULERS}


class Recipe:
    """A README recipe written out for one test, and the means to drive it."""

    def __init__(self, name: str, folder: Path, mark: str) -> None:
        self.port = free_port()
        self.folder = folder
        # The recipe's own numbers first: a path or a port may hold "10" too.
        text = RECIPES[name].replace("10", "1").replace("8000", str(self.port))
        text = re.sub(r'"/tmp/(\w+)\.(pid|log)"', lambda m: repr(str(folder / m[0][6:-1])), text)
        self.pidfile = folder / re.findall(r"/tmp/(\w+\.pid)", RECIPES[name])[0]
        self.log = folder / re.findall(r"/tmp/(\w+\.log)", RECIPES[name])[0]
        self.script = folder / "service.py"
        self.script.write_text(text)
        self.env = {**os.environ, MARK: mark, "PYTHONPATH": python_path(REPO)}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(self.script), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def recipe(tmp_path: Path, mark: str):
    made: list[Recipe] = []

    def make(name: str) -> Recipe:
        made.append(Recipe(name, tmp_path, mark))
        return made[-1]

    yield make
    for each in made:
        each.cli("stop")


def _pid(output: str) -> int:
    return int(output.split("(pid ")[1].split(")", maxsplit=1)[0].split(",", maxsplit=1)[0])


def _stops_cleanly(service: Recipe, pid: int) -> None:
    stopped = service.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped (pid {pid})" in stopped.stdout, stopped.stdout + stopped.stderr
    assert is_gone(pid)
    status = service.cli("status")
    assert status.returncode == 3, status.stdout
    assert "stopped by SIGTERM" in status.stdout, status.stdout
    assert not service.pidfile.exists()


@pytest.mark.parametrize("name", SERVERS)
def test_a_server_recipe_starts_answers_restarts_and_stops(recipe, name: str) -> None:
    service = recipe(name)
    started = service.cli("start")
    assert started.returncode == 0, started.stderr
    status, body = http_get(service.port)  # at once: start returns when it accepts
    assert status == 200 and "hello" in body, (status, body)
    restarted = service.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    pid = _pid(restarted.stdout.splitlines()[-1])
    assert http_get(service.port)[0] == 200
    _stops_cleanly(service, pid)
    assert "Traceback" not in service.log_text(), service.log_text()


@pytest.mark.parametrize("name", SCHEDULERS)
def test_a_scheduler_recipe_runs_its_job_and_stops(recipe, name: str) -> None:
    service = recipe(name)
    started = service.cli("start")
    assert started.returncode == 0, started.stderr
    pid = _pid(started.stdout)
    wait_for(lambda: "report written" in service.log_text(), timeout=20, what="the job's line")
    _stops_cleanly(service, pid)
    assert "Traceback" not in service.log_text(), service.log_text()
