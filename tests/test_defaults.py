"""The default path as a new user meets it (issue 10, first part)."""

from __future__ import annotations

import selectors
import signal
from types import SimpleNamespace

import pytest
import reliability_report
from conftest import IDLE, REPO

pytestmark = pytest.mark.timeout(60)


def read_line_within(stream, seconds: float) -> str:
    """One line from a pipe, or '' if none came within ``seconds`` (never blocks longer)."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(seconds):
            return ""
    return stream.readline()


def test_run_prints_reach_a_pipe_at_once(make_service):
    """Under supervisord, svlogd or the journal stdout is a pipe: lines must not wait for 8 KiB."""
    svc = make_service(body="print('first line')\n" + IDLE, stdout=None)
    svc.env.pop("PYTHONUNBUFFERED", None)
    runner = svc.popen("run")
    assert runner.stdout is not None
    assert read_line_within(runner.stdout, 10).strip() == "first line"
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("where", "expected"),
    [("missing directory", 3), ("through a regular file", 4)],
)
def test_status_of_an_unusable_pidfile_path(make_service, tmp_path, where, expected):
    """A missing directory means not running (systemd removes RuntimeDirectory on stop)."""
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    parent = tmp_path / "gone" if where == "missing directory" else blocker
    svc = make_service(pidfile=str(parent / "svc.pid"))
    result = svc.cli("status")
    assert result.returncode == expected, result
    assert "Traceback" not in result.stderr


def test_pidfile_on_a_file_system_that_refuses_files(make_service):
    svc = make_service(pidfile="/proc/daemonize-deco-test.pid")
    result = svc.cli("start")
    assert result.returncode == 1
    assert "does not let files be created" in result.stderr, result.stderr
    assert "does not exist" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_reload_when_not_running_says_it_as_the_others_do(make_service):
    svc = make_service()
    result = svc.cli("reload")
    assert result.returncode == 7
    assert result.stderr.strip() == "svc is not running"
    assert svc.cli("stop").stdout.strip() == "svc is not running"


def test_help_lists_every_status_exit_status(make_service):
    result = make_service().cli("--help")
    assert result.returncode == 0
    status_line = next(line for line in result.stdout.splitlines() if "  status" in line)
    assert all(word in status_line for word in ("0 running", "1 dead", "3 not running", "4"))


def test_ticker_docstring_names_what_the_code_reads():
    source = (REPO / "examples" / "ticker.py").read_text()
    docstring = source.split('"""')[1]
    assert "ticker.interval" in docstring and "ticker.interval" in source.split('"""', 2)[2]
    assert "TICKER_INTERVAL" not in docstring.split("reload")[1].splitlines()[0]


@pytest.mark.parametrize("asked", [False, True])
def test_reliability_report_is_written_only_when_asked(monkeypatch, asked):
    written = []
    monkeypatch.setattr(reliability_report._collector, "write", lambda: written.append(1))
    monkeypatch.setattr(reliability_report._collector, "rows", {"a scenario": object()})
    option = SimpleNamespace(keyword="", markexpr="", lf=False, deselect=None, collectonly=False)
    config = SimpleNamespace(
        option=option,
        args=[str(REPO / "tests")],
        getoption=lambda name: asked if name == "--reliability-report" else None,
    )
    reliability_report.pytest_sessionfinish(SimpleNamespace(config=config), 0)
    assert written == ([1] if asked else [])
