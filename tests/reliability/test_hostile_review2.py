"""Breaks a second hostile review of Reliability III (and of the first review's fixes) found.

Each is a real-process test that fails on the code under review (84b2847).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import MARK, SYSTEM_PYTHON, alive, is_gone, wait_for
from test_kvserver import free_port
from test_listeners import ANSWER_WITH_PID, PRELUDE
from test_shared_dir import EVIL, RESTART_LOCK, options_seen, options_service

pytestmark = pytest.mark.timeout(120)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="acting as nobody needs root")


# As nobody: lock the (world-readable) pidfile, then exec a set-user-ID program that
# waits for input on a terminal of its own (su asking for a password), keeping the
# locked descriptor.  The process that holds the lock is nobody's (its real uid),
# but /proc/PID belongs to its effective uid: root.
SETUID_LOCKER = """
import fcntl, os, sys, termios, time
master, slave = os.openpty()
child = os.fork()
if child == 0:
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for std in (0, 1, 2):
        os.dup2(slave, std)
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.set_inheritable(fd, True)
    os.execv("/usr/bin/su", ["su", "root"])
print(child, flush=True)
os.read(master, 100)  # "Password: "
print("waiting", flush=True)
time.sleep(3600)
"""


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user locks a stale pidfile and execs a set-user-ID program (su) that keeps the lock",
    lost="nothing: the holder's real uid counts; root's start replaces the file",
)
@pytest.mark.linux_only("who holds the lock is read from /proc/locks")
def test_a_lock_kept_by_a_setuid_program_does_not_pass_for_the_service(
    make_service, open_dir, as_nobody
):
    pidfile = open_dir / "svc.pid"
    pidfile.write_text("4194000\n")  # left by a SIGKILLed run
    pidfile.chmod(0o644)
    locker = as_nobody(SETUID_LOCKER, str(pidfile))
    su = int(locker.stdout.readline())
    try:
        assert locker.stdout.readline() == "waiting\n"
        svc = make_service(pidfile=str(pidfile), start_timeout=3.0)
        status = svc.cli("status")
        assert "is not running" in status.stdout, status.stdout
        started = svc.cli("start")
        assert started.returncode == 0, started.stderr
        pid = svc.pid_from(started.stdout)
        svc.stop_gracefully(pid)
    finally:
        os.kill(su, signal.SIGKILL)


def _take_pid(wanted: int, mark: str) -> subprocess.Popen[bytes] | None:
    """Start a process of nobody's as pid ``wanted`` (what a user cycling pids gets)."""
    for _ in range(50):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(wanted - 1))
        proc = subprocess.Popen(
            ["sleep", "600"], user="nobody", group="nogroup", extra_groups=[],
            env={"PATH": "/usr/bin:/bin", MARK: mark},
        )  # fmt: skip
        if proc.pid == wanted:
            return proc
        proc.kill()
        proc.wait()
    return None


def _flock_holders(path: Path) -> list[int]:
    st = path.stat()
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return [int(line.split()[4]) for line in Path("/proc/locks").read_text().splitlines()
            if line.split()[1] == "FLOCK" and line.split()[5] == wanted]  # fmt: skip


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user takes the pid of the exited start command that /proc/locks names as the "
    "holder of a running service's lock (pids are reused; pid_max may be 32768)",
    lost="nothing: a /proc/locks pid counts only while it has the file open; the service "
    "keeps its pidfile",
)
def test_a_reused_pid_of_the_start_command_is_not_a_squatter(make_service, open_dir, mark):
    svc = make_service(pidfile=str(open_dir / "svc.pid"))
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    (starter,) = _flock_holders(svc.pidfile)  # the start command, gone now
    assert starter != pid and is_gone(starter)
    inode = svc.pidfile.stat().st_ino
    reuser = _take_pid(starter, mark)
    if reuser is None:
        pytest.skip(f"pid {starter} could not be taken (the machine forks too much)")
    try:
        again = svc.cli("start")
        assert again.returncode == 0, again.stderr
        assert again.stdout == f"svc is already running (pid {pid})\n", again.stdout
        assert svc.pidfile.stat().st_ino == inode, "the running service's pidfile was replaced"
    finally:
        reuser.kill()
        reuser.wait()
    svc.stop_gracefully(pid)


# main starts a worker the way a program with worker commands does: its own script,
# in a session of its own (as README says any worker may be),
# with a custom command that works until it is ended.
COMMAND_WORKER = """
worker = subprocess.Popen([sys.executable, __file__, "work"], start_new_session=True)
print("worker", worker.pid, flush=True)
ready()
while not should_stop():
    sleep(3600)
"""

WORK_COMMAND = """

@main.command
def work():
    '''A worker process (main starts it).'''
    while True:
        time.sleep(1000)
"""


@pytest.mark.scenario(
    "Promises under pressure",
    "main starts a worker that runs a custom command of its own script (app.py work)",
    lost="nothing: only built-in commands wear the command badge; the worker ends with the run",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_a_worker_running_a_custom_command_ends_with_the_run(make_service):
    svc = make_service(COMMAND_WORKER, wait_ready=True, stop_timeout=3.0)
    svc.script.write_text(
        svc.script.read_text().replace(
            '\nif __name__ == "__main__":', WORK_COMMAND + '\nif __name__ == "__main__":'
        )
    )
    pid = svc.start()
    line = wait_for(lambda: [x for x in svc.log_text().splitlines() if x.startswith("worker ")])
    worker = int(line[0].split()[1])
    assert alive(worker)
    try:
        svc.stop_gracefully(pid)
        wait_for(lambda: is_gone(worker), timeout=5, what="the worker to end with the run")
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


# The worker in a session of its own is a shell whose own child does the work: a
# SIGTERM ends the shell, not its child.
SHELL_WORKER = """
here = os.path.dirname(__file__)
worker = subprocess.Popen(
    ["sh", "-c", f"sleep 1000 & echo $! > {here}/grandchild; wait"], start_new_session=True,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print("worker", worker.pid, flush=True)
while not should_stop():
    time.sleep(0.01)
print("asked", flush=True)
while True:
    time.sleep(0.05)     # a slow stop: only a second Ctrl-C ends it
"""


@pytest.mark.scenario(
    "Faults",
    "a second Ctrl-C in run while a worker (a shell in a session of its own) has a child",
    lost="nothing: every process of the run (marked) gets SIGTERM as it exits",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_a_second_ctrl_c_leaves_nothing_no_command_can_find(make_service):
    svc = make_service(body=SHELL_WORKER)
    proc = svc.popen("run")
    int(proc.stdout.readline().split()[1])
    grandchild_file = svc.dir / "grandchild"
    grandchild = int(wait_for(lambda: grandchild_file.exists() and grandchild_file.read_text()))
    os.kill(proc.pid, signal.SIGINT)
    assert proc.stdout.readline() == "asked\n"
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGINT
    try:
        # SIGTERM went to every process of the run as it exited (no wait): it ends.
        wait_for(lambda: is_gone(grandchild), timeout=10, what="the run's worker to end")
    finally:
        if alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def _as_nobody(code: str, *args: str) -> None:
    subprocess.run(
        [SYSTEM_PYTHON, "-c", code, *args], user="nobody", group="nogroup", extra_groups=[],
        check=True,
    )  # fmt: skip


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user made the pidfile's directory first (mkdir -p /tmp/app in a deploy script "
    "succeeds on theirs), then plants PIDFILE.options there",
    lost="nothing: options are read only from root, the asking user and user=; start warns "
    "about the directory",
)
def test_options_planted_in_another_users_directory_are_never_used(make_service, sticky_dir):
    directory = sticky_dir / "app"
    _as_nobody("import os, sys; os.mkdir(sys.argv[1], 0o755)", str(directory))
    pidfile = directory / "svc.pid"
    svc = options_service(make_service, pidfile)
    pid = svc.start()
    wait_for(lambda: options_seen(svc), what="main's options in the log")
    # Root's own .options is in nobody's directory: nobody may remove it, and write hers.
    code = (
        "import os, sys; os.unlink(sys.argv[1]); "
        "open(sys.argv[1], 'wb').write(bytes.fromhex(sys.argv[2]))"
    )
    _as_nobody(code, f"{pidfile}.options", EVIL.hex())
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    new = svc.pid_from(restarted.stdout.splitlines()[-1])
    wait_for(lambda: len(options_seen(svc)) == 2, what="the new instance's options")
    try:
        assert options_seen(svc)[-1] == ["127.0.0.1", "/srv"], "main ran with nobody's options"
    finally:
        svc.cli("stop")
    assert is_gone(pid) and is_gone(new)


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "after a failed restart (the old instance serves on), another user plants and locks "
    "PIDFILE.restarting; the service is then stopped",
    lost="nothing: another user's lock file is no restart of ours; the stop cleans up as always",
)
def test_a_planted_restart_lock_is_not_a_handover_under_way(make_service, sticky_dir, as_nobody):
    pidfile = sticky_dir / "svc.pid"
    path = sticky_dir / "svc.sock"
    svc = make_service(
        ANSWER_WITH_PID, prelude=PRELUDE, pidfile=str(pidfile), listen=[f"unix:{path}"],
        wait_ready=True,
    )  # fmt: skip
    pid = svc.start()
    (svc.dir / "fail").touch()
    failed = svc.cli("restart")
    assert failed.returncode == 1 and "is still running and serving" in failed.stderr, failed
    (svc.dir / "fail").unlink()
    locker = as_nobody(RESTART_LOCK, f"{pidfile}.restarting")
    assert locker.stdout.readline() == "locked\n"
    svc.stop_gracefully(pid)
    status = svc.cli("status")
    assert "last run: pid" in status.stdout, status.stdout
    assert not path.exists(), "the socket file of a stopped service is left behind"


# A worker in a session of its own that ignores SIGTERM and says when it got one.
STUBBORN_WORKER = """
here = os.path.dirname(__file__)
if not os.path.exists(os.path.join(here, "second")):
    subprocess.Popen(
        ["sh", "-c", f"trap 'echo > {here}/termed' TERM; while :; do sleep 0.1; done"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
ready()
while not should_stop():
    sleep(3600)
"""


@pytest.mark.scenario(
    "Promises under pressure",
    "Ctrl-C to start while it ends what a SIGKILLed run left (a worker that ignores SIGTERM, "
    "stop_timeout=30)",
    lost="nothing: Ctrl-C ends the wait at once (SIGKILL) and the start",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_ctrl_c_to_a_start_ending_what_a_killed_run_left_is_not_deferred(make_service):
    svc = make_service(STUBBORN_WORKER, wait_ready=True, stop_timeout=30.0)
    pid = svc.start()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), what="the killed run")
    (svc.dir / "second").touch()
    start = svc.popen("start")
    wait_for((svc.dir / "termed").exists, timeout=20, what="start to end the worker")
    start.send_signal(signal.SIGINT)
    try:
        out, _ = start.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("start went on for stop_timeout after Ctrl-C")
    assert start.returncode != 0, out


# main takes 1.5 s to finish after a stop; its worker 0.5 s to finish after SIGTERM.
SLOW_STOP_WITH_WORKER = """
here = os.path.dirname(__file__)
subprocess.Popen(
    ["sh", "-c", f"trap 'sleep 0.5; echo > {here}/done; exit 0' TERM; "
     f"echo > {here}/up; while :; do sleep 0.1; done"],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
ready()
while not should_stop():
    sleep(3600)
time.sleep(1.5)
"""


@pytest.mark.scenario(
    "Options",
    "stop --timeout 30 of a service with stop_timeout=1 whose main takes 1.5 s to finish, "
    "with a worker that takes 0.5 s to end on SIGTERM",
    lost="nothing: a run past most of its stop_timeout gives its workers a whole one; the "
    "worker finishes",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_stop_timeout_given_to_stop_is_the_workers_time_too(make_service):
    svc = make_service(SLOW_STOP_WITH_WORKER, wait_ready=True, stop_timeout=1.0)
    pid = svc.start()
    wait_for((svc.dir / "up").exists, what="the worker")
    stopped = svc.cli("stop", "--timeout", "30")
    assert stopped.stdout == f"svc stopped (pid {pid})\n", stopped
    assert (svc.dir / "done").exists(), "the worker was killed before it could finish"


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "after a failed restart (the old instance serves on), another user makes a FIFO at "
    "PIDFILE.restarting; the service is then stopped",
    lost="nothing: it is opened without waiting, and is no restart of ours; the stop is graceful",
)
def test_a_fifo_at_the_restart_lock_does_not_hang_the_end_of_a_run(make_service, sticky_dir):
    pidfile = sticky_dir / "svc.pid"
    path = sticky_dir / "svc.sock"
    svc = make_service(
        ANSWER_WITH_PID, prelude=PRELUDE, pidfile=str(pidfile), listen=[f"unix:{path}"],
        wait_ready=True, stop_timeout=3.0,
    )  # fmt: skip
    pid = svc.start()
    (svc.dir / "fail").touch()
    failed = svc.cli("restart")
    assert failed.returncode == 1 and "is still running and serving" in failed.stderr, failed
    (svc.dir / "fail").unlink()
    _as_nobody("import os, sys; os.mkfifo(sys.argv[1], 0o644)", f"{pidfile}.restarting")
    svc.stop_gracefully(pid)


# Creates the name again whenever it is gone, as fast as it can.
RECREATOR = """
import os, sys
print("looping", flush=True)
while True:
    try:
        os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        pass
"""


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user re-creates the pidfile's name in a loop in a shared directory",
    lost="nothing: after a few tries, root renames a locked file of its own over the name",
)
def test_a_looping_planter_does_not_keep_root_from_starting(make_service, sticky_dir, as_nobody):
    pidfile = sticky_dir / "svc.pid"
    svc = make_service(pidfile=str(pidfile))
    looper = as_nobody(RECREATOR, str(pidfile))
    assert looper.stdout.readline() == "looping\n"
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    assert svc.read_pid() == pid
    looper.kill()
    svc.stop_gracefully(pid)


# main drops privileges itself (no user=), as a program that opens what only root may
# open first does.
DROPS_ITS_OWN_PRIVILEGES = """
os.setgid(65534)
os.setgroups([])
os.setuid(65534)
ready()
while not should_stop():
    sleep(3600)
"""


@ROOT_ONLY
@pytest.mark.scenario(
    "Promises under pressure",
    "start (again) as root of a running service whose main dropped privileges itself",
    lost="nothing: the process the pidfile names holds it: the service, whatever user it became",
)
def test_a_service_that_dropped_privileges_itself_is_no_squatter(make_service, open_dir):
    svc = make_service(DROPS_ITS_OWN_PRIVILEGES, pidfile=str(open_dir / "svc.pid"), wait_ready=True)
    pid = svc.start()
    inode = svc.pidfile.stat().st_ino
    again = svc.cli("start")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"svc is already running (pid {pid})\n", again.stdout
    assert svc.pidfile.exists() and svc.pidfile.stat().st_ino == inode
    svc.stop_gracefully(pid)


# Serves (listen=), with a worker in a session of its own; its stop outlasts stop_timeout.
SLOW_TO_STOP_SERVER = """
here = os.path.dirname(__file__)
if not os.path.exists(os.path.join(here, "second")):
    worker = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    print("worker", worker.pid, flush=True)
listeners()
ready()
while not should_stop():
    sleep(3600)
time.sleep(1000)     # never finishes its stop: SIGKILL after stop_timeout
"""


@pytest.mark.scenario(
    "Faults",
    "restart (listen=) of an instance that does not stop within stop_timeout and has a "
    "worker in a session of its own",
    lost="nothing: the restart ends what the killed instance left",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_a_handover_that_kills_the_old_instance_ends_what_it_left(make_service):
    port = free_port()
    svc = make_service(
        SLOW_TO_STOP_SERVER, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"],
        wait_ready=True, stop_timeout=1.0,
    )  # fmt: skip
    old = svc.start()
    line = wait_for(lambda: [x for x in svc.log_text().splitlines() if x.startswith("worker ")])
    worker = int(line[0].split()[1])
    (svc.dir / "second").touch()
    try:
        restarted = svc.cli("restart")
        assert restarted.returncode == 0, restarted.stderr
        assert f"pid {old} killed after 1s" in restarted.stdout, restarted.stdout
        new = svc.read_pid()
        wait_for(lambda: is_gone(worker), timeout=5, what="the old instance's worker to end")
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
    svc.cli("stop", "--timeout", "0.5")
    assert new is not None and is_gone(new)
