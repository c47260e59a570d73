"""Commands run by another user than the service's (issue 10, part 6), and a service that
dropped privileges and cannot put its deleted pidfile back.

The other user is ``nobody``, running Debian's /usr/bin/python3 through setpriv on a
world-readable copy of the package (the test's own interpreter may live under /root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import IDLE, MARK, REPO, SCRIPT, SYSTEM_PYTHON, is_gone, python_path, wait_for

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="acting as nobody needs root"),
]


class Shared:
    """A service in a root-owned, world-readable directory, driven as root or as nobody."""

    def __init__(self, folder: Path, mark: str, body: str = IDLE, **options: object) -> None:
        self.dir = folder
        self.pidfile = folder / "run" / "svc.pid"
        self.pidfile.parent.mkdir(mode=0o755)
        self.log = folder / "svc.log"
        options = {"pidfile": str(self.pidfile), "stdout": str(self.log), **options}
        rendered = ", ".join(f"{k}={v!r}" for k, v in options.items())
        self.script = folder / "svc.py"
        body = "    " + body.replace("\n", "\n    ")
        self.script.write_text(SCRIPT.format(prelude="", options=rendered, body=body))
        self.env = dict(os.environ, PYTHONPATH=python_path(folder), **{MARK: mark})

    def as_root(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([str(Path(os.sys.executable)), str(self.script), *args])

    def as_nobody(self, *args: str) -> subprocess.CompletedProcess[str]:
        setpriv = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
        return self._run([*setpriv, SYSTEM_PYTHON, str(self.script), *args])

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=30)


@pytest.fixture
def shared(mark):
    if not os.access(SYSTEM_PYTHON, os.X_OK) or shutil.which("setpriv") is None:
        pytest.fail(f"{SYSTEM_PYTHON} and setpriv (util-linux) are needed: see .ci/run")
    folder = Path(tempfile.mkdtemp(prefix="dd-shared-", dir="/tmp"))
    folder.chmod(0o755)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "daemonize_deco", folder / "daemonize_deco", ignore=ignore)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield lambda body=IDLE, **options: Shared(folder, mark, body, **options)
    shutil.rmtree(folder)


def test_another_users_start_says_it_is_already_running(shared):
    svc = shared()
    started = svc.as_root("start")
    assert started.returncode == 0, started.stderr
    pid = int(svc.pidfile.read_text())
    result = svc.as_nobody("start")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == f"svc is already running (pid {pid}; owned by user root)"
    run = svc.as_nobody("run")
    assert run.returncode == 1
    assert f"already running (pid {pid}; owned by user root)" in run.stderr
    assert svc.as_nobody("status").returncode == 0
    assert svc.as_root("stop").returncode == 0
    assert is_gone(pid)


def test_another_users_stop_of_a_stale_pidfile_says_one_line(shared):
    svc = shared()
    svc.pidfile.write_text("4194304\n")  # root's, left behind, in root's directory
    result = svc.as_nobody("stop")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stderr == ""
    assert result.stdout.strip() == (
        f"svc is not running (cannot remove its stale pidfile {svc.pidfile}: permission denied)"
    )
    assert svc.pidfile.exists()
    assert svc.as_nobody("status").returncode == 1


def test_a_service_that_dropped_privileges_and_lost_its_pidfile_is_still_stoppable(shared):
    svc = shared(user="nobody")
    started = svc.as_root("start")
    assert started.returncode == 0, started.stderr
    pid = int(svc.pidfile.read_text())
    svc.pidfile.unlink()
    status = svc.as_root("status")
    assert status.returncode == 0
    assert f"svc is running (pid {pid}" in status.stdout
    assert "is missing and could not be put back" in status.stdout
    assert "permission denied" in status.stdout, status.stdout
    again = svc.as_root("start")
    assert again.returncode == 0 and f"already running (pid {pid}" in again.stdout
    stopped = svc.as_root("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"svc stopped (pid {pid})" in stopped.stdout
    wait_for(lambda: is_gone(pid), what="the stop")


# Says "put back" to whoever asks, forever: a claim socket answering for a service.
ANSWER_PUT_BACK = """
while True:
    conn, _ = claim.accept()
    try:
        conn.sendall(b"ok put back\\n")
    except OSError:
        pass  # the asker did not trust us and hung up
    conn.close()
"""

SQUATTER = (
    """
import socket, sys, time
from daemonize_deco._claim import claim_address
held = open(sys.argv[1])          # a pidfile is world-readable
input()                           # the service stops: the file is now "(deleted)"
claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
claim.bind(claim_address(sys.argv[1]))
claim.listen(8)
print("squatting", flush=True)
"""
    + ANSWER_PUT_BACK
)


@pytest.mark.linux_only(
    "any user may bind an abstract name; a socket file is in the service's own directory"
)
def test_another_user_holding_the_pidfile_and_the_claim_is_not_trusted(shared):
    svc = shared()
    assert svc.as_root("start").returncode == 0
    setpriv = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    squatter = subprocess.Popen(
        [*setpriv, SYSTEM_PYTHON, "-c", SQUATTER, str(svc.pidfile)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=svc.env,
    )  # fmt: skip
    try:
        wait_for(lambda: str(svc.pidfile) in _open_files(squatter.pid), what="the squatter")
        assert svc.as_root("stop").returncode == 0
        squatter.stdin.write("\n")
        squatter.stdin.flush()
        assert squatter.stdout.readline() == "squatting\n"
        status = svc.as_root("status")
        assert status.returncode == 3, status.stdout
        assert str(squatter.pid) not in status.stdout
        assert svc.as_root("stop").returncode == 0
        assert squatter.poll() is None, "stop signalled another user's process"
    finally:
        squatter.kill()
        squatter.communicate()


def _open_files(pid: int) -> list[str]:
    try:
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return []


@pytest.mark.scenario(
    "Defaults",
    "a service that dropped privileges ends cleanly in a root-owned directory",
    lost="it may not unlink its pidfile, so it leaves its last-run record in it: status says "
    "not running (3) and how it ended, not 'pidfile left behind'; the next start reuses it",
)
def test_a_clean_exit_after_dropping_privileges_leaves_no_stale_state(shared):
    svc = shared(body="should_stop()\nprint('done', flush=True)", user="nobody")
    started = svc.as_root("start")
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("(pid ")[1].split(")")[0])
    wait_for(lambda: is_gone(pid), what="main to return")
    for look in (svc.as_root, svc.as_nobody):
        status = look("status")
        assert status.returncode == 3, status.stdout
        assert f"svc is not running (last run: pid {pid} exited with status 0 at" in status.stdout
    assert svc.as_root("stop").stdout.strip() == "svc is not running"
    again = svc.as_root("start")
    assert again.returncode == 0, again.stderr
    second = int(again.stdout.split("(pid ")[1].split(")")[0])
    wait_for(lambda: is_gone(second), what="the second run to end (before the directory goes)")


@pytest.mark.scenario(
    "Security",
    "a stale socket file of another user where health= (or listen=) binds, in a sticky directory",
    lost="nothing: start fails in one line (it may not remove that user's file), leaving nothing",
)
@pytest.mark.parametrize("keyword", ["health", "listen"])
def test_a_stale_socket_file_of_another_user_fails_the_start_in_one_line(shared, keyword):
    sticky = Path(tempfile.mkdtemp(prefix="dd-sticky-", dir="/tmp"))
    try:
        sticky.chmod(0o1777)
        path = sticky / "app.sock"
        socket.socket(socket.AF_UNIX).bind(str(path))  # root's, and nothing listens on it
        path.chmod(0o777)  # connectable by anyone: a probe finds nothing listening
        address = f"unix:{path}"
        svc = shared(
            pidfile=str(sticky / "svc.pid"),
            stdout=str(sticky / "svc.log"),
            **{keyword: address if keyword == "health" else [address]},
        )
        started = svc.as_nobody("start")
        assert started.returncode == 1, started.stdout
        assert started.stderr == (
            f"svc: cannot listen on {address}: a stale socket file is there and cannot be "
            "removed (Operation not permitted)\n"
        ), started.stderr
        assert not (sticky / "svc.pid").exists()
        assert path.stat().st_uid == 0  # left as it was
    finally:
        shutil.rmtree(sticky)
