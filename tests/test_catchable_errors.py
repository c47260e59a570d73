"""Errors a program can catch: ``main.cli(argv, standalone=False)`` raises, and says what.

A larger program drives a real service through ``main.cli`` (a host script
that imports the service's script, as in test_listeners), and sees the
DaemonError subclass with its exit status as ``status`` and what its message
names as ``path`` and ``pid``; nothing is printed.  The command line, and
``main.cli`` by default, keep printing one line and returning the status.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
from conftest import is_gone, wait_for

from daemonize_deco import (
    DaemonError,
    NotRunningError,
    PidFileError,
    ReloadError,
    StartupError,
    StopError,
)

pytestmark = pytest.mark.timeout(90)

HOST = """\
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svc
from daemonize_deco import DaemonError

def failing_reload():
    raise RuntimeError("bad config")

if os.environ.get("FAILING_RELOAD"):
    svc.main.on_reload(failing_reload)

standalone = os.environ.get("STANDALONE") != "no"
for argv in json.loads(sys.argv[1]):
    try:
        outcome = {"returned": svc.main.cli(argv, standalone=standalone)}
    except DaemonError as exc:
        outcome = {
            "raised": type(exc).__name__, "status": exc.status, "message": str(exc),
            "path": exc.path, "pid": exc.pid,
        }
    print(json.dumps(outcome), flush=True)
"""


def drive(svc, *commands: list[str], **env: str) -> tuple[list[dict[str, object]], str]:
    """Run ``commands`` through ``main.cli`` in a host program; what each did, and its stderr."""
    host = svc.dir / "host.py"
    host.write_text(HOST)
    result = subprocess.run(
        [sys.executable, str(host), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**svc.env, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # What went right is still said (``svc started``): only failures raise instead.
    outcomes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return outcomes, result.stderr


def test_a_command_that_fails_raises_its_error_with_status_and_path(make_service, tmp_path):
    svc = make_service()
    (outcome,), said = drive(svc, ["reload"], STANDALONE="no")
    assert outcome == {
        "raised": "NotRunningError",
        "status": 7,
        "message": "is not running",
        "path": str(svc.pidfile),
        "pid": None,
    }
    assert said == "", "standalone=False prints nothing"


def test_the_status_is_the_commands_own(make_service, tmp_path):
    """``status`` maps every error to 4 (unknown): ``.status`` is that, not the class's 1."""
    svc = make_service(pidfile=str(tmp_path / "a-directory"))
    (tmp_path / "a-directory").mkdir()
    (status, stop), said = drive(svc, ["status"], ["stop"], STANDALONE="no")
    path = str(tmp_path / "a-directory")
    assert status["raised"] == "PidFileError" and status["status"] == 4, status
    assert status["path"] == path
    assert stop["raised"] == "PidFileError" and stop["status"] == 1, stop
    assert stop["path"] == path
    assert said == ""


def test_a_failed_start_names_the_pidfile_and_the_daemon(make_service):
    svc = make_service(body="raise RuntimeError('no database')")
    (outcome,), said = drive(svc, ["start"], STANDALONE="no")
    assert outcome["raised"] == "StartupError", outcome
    assert outcome["status"] == 1
    assert "no database" in str(outcome["message"])
    assert outcome["path"] == str(svc.pidfile)
    pid = outcome["pid"]
    assert isinstance(pid, int) and pid > 1 and is_gone(pid), outcome
    assert said == ""
    assert not svc.pidfile.exists()


def test_a_failed_reload_names_the_service_and_success_still_returns(make_service):
    svc = make_service()
    (start, reload, stop), said = drive(
        svc, ["start"], ["reload"], ["stop"], STANDALONE="no", FAILING_RELOAD="1"
    )
    assert start == {"returned": 0} and stop == {"returned": 0}, (start, stop)
    assert reload["raised"] == "ReloadError" and reload["status"] == 1, reload
    assert "bad config" in str(reload["message"])
    pid = reload["pid"]
    assert isinstance(pid, int) and is_gone(pid)
    assert "svc: reload failed" not in said


def test_usage_errors_raise_too(make_service):
    svc = make_service()
    (outcome,), said = drive(svc, ["frobnicate"], STANDALONE="no")
    assert outcome["raised"] == "UsageError" and outcome["status"] == 2, outcome
    assert said == "", "no usage text either"


def test_by_default_cli_prints_one_line_and_returns_the_status(make_service):
    svc = make_service()
    (reload, bad), said = drive(svc, ["reload"], ["frobnicate"])
    assert reload == {"returned": 7} and bad == {"returned": 2}
    assert said.splitlines()[0] == "svc is not running"
    assert "svc: unknown command 'frobnicate'" in said


def test_the_command_line_is_unchanged(make_service):
    svc = make_service()
    result = svc.cli("reload")
    assert result.returncode == 7
    assert result.stderr == "svc is not running\n"
    result = svc.cli("stop")
    assert result.returncode == 0
    wait_for(lambda: not svc.pidfile.exists(), what="no pidfile")


@pytest.mark.parametrize(
    "error",
    [
        PidFileError("cannot use pidfile /run/x.pid: it is a directory", path="/run/x.pid"),
        StartupError("failed to start: boom", path="/run/x.pid", pid=42),
        StopError("cannot stop pid 42: permission denied", pid=42),
        ReloadError("reload failed in pid 42: bad", pid=42),
        NotRunningError("is not running", path="/run/x.pid"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_keep_what_they_name_through_str_repr_and_pickle(error: DaemonError) -> None:
    error.status = 3
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert (str(again), again.path, again.pid, again.status) == (
        str(error),
        error.path,
        error.pid,
        3,
    )
    assert repr(error) == f"{type(error).__name__}({str(error)!r})"
    assert error.exit_status in (1, 7)


def test_an_error_nobody_mapped_has_no_status_yet() -> None:
    error = StopError("cannot stop pid 42: it would not die", pid=42)
    assert error.status is None and error.path is None and error.pid == 42
    assert isinstance(error, OSError)


def test_a_socket_path_that_is_no_socket_is_named(make_service, tmp_path):
    taken = tmp_path / "svc.sock"
    taken.write_text("not a socket")
    svc = make_service(listen=[f"unix:{taken}"])
    (outcome,), said = drive(svc, ["start"], STANDALONE="no")
    assert outcome["raised"] == "ListenError" and outcome["status"] == 1, outcome
    assert outcome["path"] == str(taken)
    assert said == ""
    assert not svc.pidfile.exists()
