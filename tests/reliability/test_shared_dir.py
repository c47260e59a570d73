"""Another local user in a shared directory: files planted beside (or as) the pidfile.

A sticky, world-writable directory (/tmp) lets any user create the names a
service will use before it does, and keep what they created open.  The
attacker here is the real user ``nobody``, running Debian's /usr/bin/python3
(the test interpreter may live under /root, which nobody cannot enter).
Each test failed before its fix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import (
    MARK,
    REPO,
    SCRIPT,
    SYSTEM_PYTHON,
    alive,
    is_gone,
    python_path,
    simulation,
    wait_for,
)
from test_kvserver import free_port

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="acting as nobody needs root"),
]

# Creates the path as nobody and keeps it open; on each line read from stdin,
# writes its own pid into the file it holds (as a forger would).
PLANTER = """
import fcntl, os, sys
path, lock = sys.argv[1], sys.argv[2] == "lock"
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
if lock:
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\\n".encode())
print("planted", flush=True)
for line in sys.stdin:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
    print("written", flush=True)
"""


def nobody_writes(path: Path, data: bytes) -> None:
    """Create ``path`` as nobody (in the sticky directory it stays nobody's)."""
    code = "import sys; open(sys.argv[1], 'wb').write(bytes.fromhex(sys.argv[2]))"
    subprocess.run(
        [SYSTEM_PYTHON, "-c", code, str(path), data.hex()],
        user="nobody", group="nogroup", extra_groups=[], check=True,
    )  # fmt: skip


@pytest.mark.scenario(
    "Security",
    "another user plants the pidfile in a shared directory, then writes their pid in it",
    lost="nothing: start replaces the planted file; status and stop name the service, never "
    "the planter, whose process is not signalled",
)
def test_a_planted_pidfile_is_replaced_and_never_trusted(make_service, sticky_dir, as_nobody):
    planted = sticky_dir / "svc.pid"
    planter = as_nobody(PLANTER, str(planted), "open")
    assert planter.stdout.readline() == "planted\n"
    svc = make_service(pidfile=str(planted))
    pid = svc.start()
    assert planted.stat().st_uid == 0, "the service's pidfile is its own"
    planter.stdin.write("forge\n")
    planter.stdin.flush()
    assert planter.stdout.readline() == "written\n"
    status = svc.cli("status")
    assert status.returncode == 0
    assert f"svc is running (pid {pid}" in status.stdout, status.stdout
    svc.stop_gracefully(pid)
    assert planter.poll() is None, "stop signalled the planter"


@pytest.mark.scenario(
    "Security",
    "another user plants the pidfile, locks it and writes their pid in it",
    lost="nothing: start does not say 'already running' for the planter; it starts the service",
)
def test_a_planted_locked_pidfile_does_not_pass_for_the_service(
    make_service, sticky_dir, as_nobody
):
    planted = sticky_dir / "svc.pid"
    planter = as_nobody(PLANTER, str(planted), "lock")
    assert planter.stdout.readline() == "planted\n"
    svc = make_service(pidfile=str(planted))
    status = svc.cli("status")
    assert str(planter.pid) not in status.stdout
    assert status.returncode == 3, status.stdout
    assert "belongs to user nobody" in status.stdout
    assert svc.cli("stop").returncode == 0
    assert planter.poll() is None, "stop signalled the planter"
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    assert "svc started (pid" in started.stdout, started.stdout
    pid = svc.pid_from(started.stdout)
    assert svc.read_pid() == pid
    svc.stop_gracefully(pid)
    assert planter.poll() is None


@pytest.fixture
def readable_copy(mark):
    """A world-readable copy of the package and a service script, for another user to run."""
    folder = Path(tempfile.mkdtemp(prefix="dd-copy-", dir="/tmp"))
    folder.chmod(0o755)
    shutil.copytree(REPO / "daemonize_deco", folder / "daemonize_deco",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)

    def write(pidfile: Path) -> list[str]:
        script = folder / "svc.py"
        options = f"pidfile={str(pidfile)!r}, stdout={str(folder / 'svc.log')!r}"
        body = "    while not should_stop():\n        sleep(3600)"
        script.write_text(SCRIPT.format(prelude="", options=options, body=body))
        return [SYSTEM_PYTHON, str(script)]

    yield write
    shutil.rmtree(folder)


@pytest.mark.scenario(
    "Security",
    "a service of a non-root user finds its pidfile planted by another user",
    lost="nothing starts on the planted file: one line naming the owner, exit 1, the file left",
)
def test_a_non_root_service_refuses_a_planted_pidfile(sticky_dir, as_nobody, readable_copy, mark):
    planted = sticky_dir / "svc.pid"
    planter = as_nobody(PLANTER, str(planted), "open")
    assert planter.stdout.readline() == "planted\n"
    command = readable_copy(planted)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": python_path(Path(command[1]).parent),
        MARK: mark,
        **simulation(),
    }
    start = subprocess.run(
        [*command, "start"], user="daemon", group="daemon", extra_groups=[],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert start.returncode == 1, start.stdout
    assert "Traceback" not in start.stderr
    assert start.stderr.count("\n") == 1, start.stderr
    assert "belongs to user nobody" in start.stderr, start.stderr
    assert planted.stat().st_uid == 65534, "the planted file is left alone"


OPTIONS_PRELUDE = "import json"
PRINT_OPTIONS = """
print('options', json.dumps([host, data_dir]), flush=True)
while not should_stop():
    sleep(3600)
"""


def options_service(make_service, pidfile: Path):
    svc = make_service(body=PRINT_OPTIONS, prelude=OPTIONS_PRELUDE, pidfile=str(pidfile))
    script = svc.script.read_text()
    svc.script.write_text(
        script.replace("def main():", "def main(host: str = '127.0.0.1', data_dir: str = '/srv'):")
    )
    return svc


def options_seen(svc) -> list[list[str]]:
    return [json.loads(line.split(" ", 1)[1]) for line in svc.log_text().splitlines()
            if line.startswith("options ")]  # fmt: skip


EVIL = b"--host\x000.0.0.0\x00--data-dir\x00/tmp/evil"


@pytest.mark.scenario(
    "Security",
    "another user plants PIDFILE.options for a restart to reuse",
    lost="nothing: restart and status never read options the service did not write",
)
def test_planted_options_are_never_used(make_service, sticky_dir):
    pidfile = sticky_dir / "svc.pid"
    svc = options_service(make_service, pidfile)
    nobody_writes(Path(f"{pidfile}.options"), EVIL)
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    pid = svc.pid_from(restarted.stdout)
    wait_for(lambda: options_seen(svc), what="main's options in the log")
    assert options_seen(svc) == [["127.0.0.1", "/srv"]]
    status = svc.cli("status")
    assert "0.0.0.0" not in status.stdout and "evil" not in status.stdout, status.stdout
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Security",
    "another user squats the temporary names of PIDFILE.options, then plants the file",
    lost="nothing: the service's options are written all the same; status and restart use them",
)
def test_squatted_temporary_names_do_not_stop_the_options_being_written(make_service, sticky_dir):
    pidfile = sticky_dir / "svc.pid"
    svc = options_service(make_service, pidfile)
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    squat = (
        "import os, sys\n"
        "for pid in range(int(sys.argv[1]), int(sys.argv[1]) + 3000):\n"
        "    open(os.path.join(sys.argv[2], f'.svc.pid.options.{pid}'), 'w').close()\n"
    )
    subprocess.run(
        [SYSTEM_PYTHON, "-c", squat, str(last), str(sticky_dir)],
        user="nobody", group="nogroup", extra_groups=[], check=True,
    )  # fmt: skip
    started = svc.cli("start", "--host", "127.0.0.2")
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    if not Path(f"{pidfile}.options").exists():
        nobody_writes(Path(f"{pidfile}.options"), EVIL)
    status = svc.cli("status")
    assert "options: --host 127.0.0.2" in status.stdout, status.stdout
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    new = svc.read_pid()
    assert options_seen(svc)[-1] == ["127.0.0.2", "/srv"]
    svc.stop_gracefully(new)
    assert pid != new


@pytest.mark.scenario(
    "Security",
    "another user plants PIDFILE.last-run and PIDFILE.supervisor",
    lost="nothing: status tells only what the service itself recorded",
)
def test_planted_records_are_not_believed(make_service, sticky_dir):
    pidfile = sticky_dir / "svc.pid"
    svc = make_service(pidfile=str(pidfile))
    fake = b"pid=1\nstatus=0\nstarted=1\nended=2\nexception=Forged: by nobody\n"
    nobody_writes(Path(f"{pidfile}.last-run"), fake)
    status = svc.cli("status")
    assert status.returncode == 3
    assert "Forged" not in status.stdout, status.stdout
    pid = svc.start()
    nobody_writes(Path(f"{pidfile}.supervisor"), f"supervisor={pid}\nservice=1\n".encode())
    document = json.loads(svc.cli("status", "--json").stdout)
    assert document["supervision"] is None, document
    svc.stop_gracefully(pid)


RESTART_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.mark.scenario(
    "Security",
    "another user plants and locks PIDFILE.restarting",
    lost="nothing: restart is not blocked by another user's lock file",
)
def test_a_planted_restart_lock_does_not_block_restarts(make_service, sticky_dir, as_nobody):
    pidfile = sticky_dir / "svc.pid"
    port = free_port()
    svc = make_service(pidfile=str(pidfile), listen=[f"tcp://127.0.0.1:{port}"], start_timeout=3.0)
    pid = svc.start()
    locker = as_nobody(RESTART_LOCK, f"{pidfile}.restarting")
    assert locker.stdout.readline() == "locked\n"
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    assert "its sockets kept" in restarted.stdout, restarted.stdout
    new = svc.read_pid()
    assert new != pid and is_gone(pid) and alive(new)
    svc.stop_gracefully(new)


@pytest.mark.scenario(
    "Defaults",
    "a service that dropped privileges ends cleanly with a root-owned pidfile in /tmp",
    lost="it may not unlink the pidfile (sticky directory): it leaves its record in it, so "
    "status says not running (3), not 'left behind'",
)
def test_a_clean_exit_after_dropping_privileges_in_a_sticky_directory(make_service, sticky_dir):
    svc = make_service(
        body="should_stop()\nprint('done', flush=True)",
        pidfile=str(sticky_dir / "svc.pid"),
        user="nobody",
    )
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    wait_for(lambda: is_gone(pid), what="main to return")
    status = svc.cli("status")
    assert status.returncode == 3, status.stdout
    assert status.stdout.startswith(f"svc is not running (last run: pid {pid} exited with status 0")
    again = svc.cli("start")
    assert again.returncode == 0, again.stderr
    second = svc.pid_from(again.stdout)
    wait_for(lambda: is_gone(second), what="the second run to end (before the directory goes)")


@pytest.fixture
def linked_dir(tmp_path):
    """``link/`` → ``real/``, as /var/run → /run on Debian and Ubuntu."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    return tmp_path / "link"


@pytest.mark.scenario(
    "Faults",
    "the pidfile's directory is a symlink (/var/run → /run), and the pidfile is deleted",
    lost="nothing: the claim still finds the service; start does not run a second copy",
)
def test_a_deleted_pidfile_under_a_symlinked_directory_is_found(make_service, linked_dir):
    svc = make_service(pidfile=str(linked_dir / "svc.pid"))
    pid = svc.start()
    svc.pidfile.unlink()
    status = svc.cli("status")
    assert status.returncode == 0, status.stdout
    assert f"svc is running (pid {pid}" in status.stdout
    again = svc.cli("start")
    assert again.returncode == 0 and f"already running (pid {pid}" in again.stdout, again.stdout
    assert len(svc.daemons()) == 1
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Faults",
    "the pidfile's directory is a symlink, and the pidfile is overwritten",
    lost="nothing: stop finds the service through its claim and stops it",
)
def test_an_overwritten_pidfile_under_a_symlinked_directory_is_stoppable(make_service, linked_dir):
    svc = make_service(pidfile=str(linked_dir / "svc.pid"))
    pid = svc.start()
    svc.pidfile.write_text("banana\n")
    svc.stop_gracefully(pid)


LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)   # a pidfile is world-readable
fcntl.flock(fd, fcntl.LOCK_SH)            # a read-only descriptor locks as well
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.mark.scenario(
    "Security",
    "another user opens a stale pidfile read-only and holds an flock on it",
    lost="nothing: status says not running, start replaces the file and starts",
)
@pytest.mark.linux_only("who holds the lock is read from /proc/locks")
def test_another_users_lock_on_a_stale_pidfile_blocks_nothing(make_service, open_dir, as_nobody):
    pidfile = open_dir / "svc.pid"
    pidfile.write_text("4194000\n")  # left by a SIGKILLed run
    pidfile.chmod(0o644)
    locker = as_nobody(LOCKER, str(pidfile))
    assert locker.stdout.readline() == "locked\n"
    svc = make_service(pidfile=str(pidfile), start_timeout=3.0)
    status = svc.cli("status")
    assert status.returncode == 1 and "is not running" in status.stdout, status.stdout
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    assert svc.read_pid() == pid
    svc.stop_gracefully(pid)
    assert locker.poll() is None


@pytest.mark.scenario(
    "Security",
    "the pidfile's directory was made first by another user (mkdir before the deploy's mkdir -p)",
    lost="start and run say, in one line, that that user can replace the service's files",
)
def test_a_pidfile_directory_of_another_user_is_warned_about(make_service, sticky_dir):
    theirs = sticky_dir / "app"
    subprocess.run(["mkdir", str(theirs)], user="nobody", group="nogroup", extra_groups=[],
                   check=True)  # fmt: skip
    svc = make_service(pidfile=str(theirs / "svc.pid"))
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    assert started.stderr == (
        f"svc: warning: {theirs} belongs to user nobody, who can replace the pidfile and every "
        "file beside it; keep them in a directory of the service's own\n"
    )
    svc.stop_gracefully(svc.pid_from(started.stdout))
