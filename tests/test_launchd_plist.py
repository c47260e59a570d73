"""``launchd-plist``: a LaunchDaemon/LaunchAgent plist for macOS, read back with plistlib.

The plist is checked field by field, by ``plutil -lint`` where it is on PATH
(macOS), and by running its ``ProgramArguments`` as launchd would: the
service runs in the foreground, ``status`` sees it, ``stop`` ends it.
"""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys

import pytest
from conftest import is_gone, wait_for

pytestmark = pytest.mark.timeout(60)

SCRIPT = """\
from daemonize_deco import daemon, should_stop, sleep

@daemon(pidfile="{dir}/web-{{port}}.pid", stdout="{dir}/web-{{port}}.log",
        stderr="{dir}/web-{{port}}.err", workdir="{dir}", restart={restart!r}, stop_timeout=7)
def main(port: int = 8000, host: str = "127.0.0.1", verbose: bool = False):
    print("serving", port, host, verbose, flush=True)
    while not should_stop():
        sleep(3600)

if __name__ == "__main__":
    main()
"""


def plist_of(svc, *args: str) -> dict:
    result = svc.cli("launchd-plist", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return plistlib.loads(result.stdout.encode())


def web(make_service, restart: str = "no"):
    svc = make_service(name="web")
    svc.script.write_text(SCRIPT.format(dir=svc.dir, restart=restart))
    return svc


@pytest.mark.scenario(
    "Managers",
    "launchd-plist prints a LaunchDaemon plist running run",
    lost="nothing: launchd runs the service in the foreground, with the log files as "
    "StandardOutPath/StandardErrorPath",
)
def test_the_plist_runs_the_service_in_the_foreground(make_service):
    svc = make_service(stop_timeout=42.0)
    job = plist_of(svc)
    assert job["Label"] == "daemonize_deco.svc"
    assert job["ProgramArguments"] == [sys.executable, str(svc.script), "run"]
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] is False  # restart= decides; the default is one run
    assert "ThrottleInterval" not in job
    # Only stdout= given: stderr goes to the same file, as a daemon's does.
    assert job["StandardOutPath"] == job["StandardErrorPath"] == str(svc.log)
    assert job["WorkingDirectory"] == "/"
    assert job["Umask"] == 0o022
    assert job["ExitTimeOut"] > 42
    assert "UserName" not in job


@pytest.mark.parametrize(
    ("restart", "keep_alive"),
    [("no", False), ("always", True), ("on-failure", {"SuccessfulExit": False})],
)
def test_keep_alive_follows_restart(make_service, restart, keep_alive):
    svc = web(make_service, restart)
    job = plist_of(svc)
    assert job["KeepAlive"] == keep_alive
    assert ("ThrottleInterval" in job) is (restart != "no")
    if restart != "no":
        assert job["ThrottleInterval"] >= 1


def test_options_and_the_instance(make_service):
    svc = web(make_service)
    job = plist_of(svc, "--port", "9001", "--host", "-weird value", "--verbose")
    # Each instance its own label: launchd knows a job by its label alone.
    assert job["Label"] == "daemonize_deco.web.9001"
    assert job["ProgramArguments"][2:] == ["run", "--port", "9001", "--host=-weird value",
                                           "--verbose"]  # fmt: skip
    assert job["StandardOutPath"] == str(svc.dir / "web-9001.log")
    assert job["StandardErrorPath"] == str(svc.dir / "web-9001.err")
    assert job["WorkingDirectory"] == str(svc.dir)
    assert plist_of(svc)["Label"] == "daemonize_deco.web.8000"


def test_a_service_with_user_gets_no_username(make_service):
    # run refuses user= unless started as root: launchd starts it as root, it drops itself.
    svc = make_service(user="nobody")
    job = plist_of(svc)
    assert "UserName" not in job and "GroupName" not in job


def test_what_launchd_would_run_runs(make_service):
    svc = web(make_service)
    job = plist_of(svc, "--port", "9003")
    # launchd opens the output files, then runs the program.
    with open(job["StandardOutPath"], "ab") as out, open(job["StandardErrorPath"], "ab") as err:
        launched = subprocess.Popen(
            job["ProgramArguments"], cwd=job["WorkingDirectory"], stdout=out, stderr=err,
            stdin=subprocess.DEVNULL, env=svc.env,
        )  # fmt: skip
    try:
        log = svc.dir / "web-9003.log"
        wait_for(lambda: log.exists() and "serving 9003" in log.read_text(), what="the service")
        status = svc.cli("status", "--port", "9003")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"web is running (pid {launched.pid}" in status.stdout
        stopped = svc.cli("stop", "--port", "9003")
        assert stopped.returncode == 0, stopped.stderr
        assert launched.wait(timeout=30) == 0
        assert is_gone(launched.pid)
    finally:
        if launched.poll() is None:
            launched.kill()
            launched.wait()


def test_the_bad_option_is_a_usage_error(make_service):
    svc = web(make_service)
    result = svc.cli("launchd-plist", "--port", "abc")
    assert result.returncode == 2
    assert "'abc' is not an integer" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("plutil") is None, reason="plutil (macOS) is not on PATH")
def test_plutil_lints_it(make_service, tmp_path):
    svc = web(make_service, "on-failure")
    path = tmp_path / "daemonize_deco.web.plist"
    path.write_text(svc.cli("launchd-plist", "--verbose").stdout)
    lint = subprocess.run(["plutil", "-lint", str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
