"""Breaks an independent hostile review of Reliability III found, each a real-process test.

Every test here failed on the code under review before its fix.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import (
    MARK,
    REPO,
    SCRIPT,
    SYSTEM_PYTHON,
    Service,
    alive,
    is_gone,
    python_path,
    simulation,
    wait_for,
)
from test_handover_faults import LINGERING
from test_kvserver import free_port
from test_listeners import ANSWER_WITH_PID, PRELUDE, ask_pid
from test_shared_dir import options_seen, options_service

from daemonize_deco._claim import claim_address

pytestmark = pytest.mark.timeout(120)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="acting as nobody needs root")


# Opens the (world-readable) pidfile read-only, locks it, and leaves the lock to a
# child in a session of its own: the process /proc/locks names is gone at once.
HANDED_DOWN_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
child = os.fork()
if child == 0:
    os.setsid()
    for std in (0, 1, 2):
        os.close(std)  # the test waits for the end of the output
    time.sleep(3600)
    os._exit(0)
print(child, flush=True)
"""


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user locks a stale pidfile and leaves the lock to a child (the locker exits)",
    lost="nothing: the lock's holders are found through their descriptors; status says not "
    "running, start replaces the file",
)
@pytest.mark.linux_only("who holds the lock is read from /proc/locks")
def test_a_lock_handed_down_to_a_child_does_not_pass_for_the_service(make_service, open_dir, mark):
    pidfile = open_dir / "svc.pid"
    pidfile.write_text("4194000\n")  # left by a SIGKILLed run
    pidfile.chmod(0o644)
    locker = subprocess.run(
        [SYSTEM_PYTHON, "-c", HANDED_DOWN_LOCK, str(pidfile)], user="nobody", group="nogroup",
        extra_groups=[], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", MARK: mark},
        timeout=30, check=True,
    )  # fmt: skip
    holder = int(locker.stdout)
    assert alive(holder)
    svc = make_service(pidfile=str(pidfile), start_timeout=3.0)
    status = svc.cli("status")
    assert "is not running" in status.stdout, status.stdout
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    assert svc.read_pid() == pid
    svc.stop_gracefully(pid)
    assert alive(holder), "the other user's process is not ours to signal"


@pytest.mark.scenario(
    "Faults",
    "stop of the running instance while a restart (listen=unix:) starts the new one",
    lost="the old instance leaves the pidfile and socket file to the new one; one "
    "instance, reachable",
)
def test_stop_during_a_handover_leaves_the_new_instance_its_socket_file(make_service, tmp_path):
    path = str(tmp_path / "svc.sock")
    svc = make_service(
        ANSWER_WITH_PID, prelude=PRELUDE, listen=[f"unix:{path}"], wait_ready=True,
        stop_timeout=5.0,
    )  # fmt: skip
    old = svc.start()
    (svc.dir / "slow").touch()  # the new instance waits before it is ready
    restart = svc.popen("restart")
    wait_for(lambda: len(svc.daemons()) == 2, what="the new instance")
    stop = svc.cli("stop")
    assert stop.returncode == 0, stop.stderr
    assert is_gone(old)
    (svc.dir / "slow").unlink()
    out, err = restart.communicate(timeout=60)
    left = wait_for(lambda: len(svc.daemons()) < 2 and [svc.daemons()], what="one instance")[0]
    if left:  # the restart won: what runs must be reachable, as after any restart
        (new,) = left
        assert os.path.exists(path), f"pid {new} serves on a socket file that is gone ({out}{err})"
        assert ask_pid(path) == new
        assert svc.read_pid() == new
    assert svc.cli("stop").returncode == 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.scenario(
    "Load",
    "a connection waits on the claim while a supervised restart's new supervisor settles "
    "(the restart suspended with Ctrl-Z after the old instance is gone)",
    lost="nothing: the claim is not polled until it settles; it sleeps",
)
@pytest.mark.linux_only("connects to the abstract claim name")
def test_a_settling_supervisor_does_not_spin_on_a_waiting_claim(make_service):
    port = free_port()
    svc = make_service(
        LINGERING, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"], wait_ready=True,
        restart="on-failure", stop_timeout=30.0,
    )  # fmt: skip
    old = svc.start()
    (svc.dir / "linger").touch()  # the old instance's stop lasts until the file goes
    restart = svc.popen("restart")
    new = wait_for(lambda: svc.read_pid() not in (None, old) and svc.read_pid(), what="commit")
    # Once the restart has told the old instance to stop (after the commit, it
    # first has it stop accepting and reads what it accepted):
    wait_for(lambda: "stopping" in svc.log_text(), what="the old one to stop")
    os.kill(restart.pid, signal.SIGSTOP)  # Ctrl-Z: its pipe to the new supervisor stays open
    try:
        (svc.dir / "linger").unlink()
        wait_for(lambda: is_gone(old), timeout=30, what="the old supervisor to end")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting:
            waiting.connect(claim_address(str(svc.pidfile)))
            before, since = cpu_seconds(new), time.monotonic()
            wait_for(lambda: time.monotonic() - since > 2, what="two seconds to pass")
            spent = cpu_seconds(new) - before
    finally:
        os.kill(restart.pid, signal.SIGCONT)
    restart.communicate(timeout=60)
    assert spent < 0.3, f"the settling supervisor used {spent:.2f}s of CPU in 2s"
    assert svc.cli("stop").returncode == 0


WORKER = """
worker = subprocess.Popen(["sleep", "1001"], start_new_session=True)
print("worker", worker.pid, flush=True)
while not should_stop():
    sleep(3600)
"""


@pytest.mark.scenario(
    "Faults",
    "kill -9 of a service with a worker, then start (not stop) again",
    lost="nothing: start ends what the killed run left, before the new run begins",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_start_after_a_killed_run_does_not_lose_its_workers(make_service):
    svc = make_service(WORKER, stop_timeout=3.0)
    first = svc.start()
    worker = int(wait_for(lambda: "worker " in svc.log_text() and svc.log_text(), what="worker")
                 .split("worker ")[1].split()[0])  # fmt: skip
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: is_gone(first), what="the killed run")
    assert alive(worker)
    second = svc.start()
    stop = svc.cli("stop")
    assert stop.returncode == 0 and f"svc stopped (pid {second})" in stop.stdout, stop.stdout
    assert is_gone(worker), "the first run's worker outlived start and stop"


STUBBORN = """
worker = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 1000"], start_new_session=True)
print("worker", worker.pid, flush=True)
while not should_stop():
    sleep(3600)
print("main returned", flush=True)
"""


@pytest.mark.scenario(
    "Promises under pressure",
    "stop of a service whose worker ignores SIGTERM (main returns at once)",
    lost="the worker gets SIGKILL in time for the service to exit within stop_timeout: 'stopped'",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_a_worker_ignoring_sigterm_does_not_get_its_service_killed(make_service):
    svc = make_service(STUBBORN, stop_timeout=2.0)
    pid = svc.start()
    worker = int(wait_for(lambda: "worker " in svc.log_text() and svc.log_text(), what="worker")
                 .split("worker ")[1].split()[0])  # fmt: skip
    stop = svc.cli("stop")
    assert stop.returncode == 0, stop.stderr
    assert "main returned" in svc.log_text()
    assert is_gone(worker)
    assert f"svc stopped (pid {pid})" in stop.stdout, stop.stdout


FULL = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
workers = [subprocess.Popen(["sleep", "1000"], start_new_session=True) for _ in range(3)]
print("workers", *[w.pid for w in workers], flush=True)
held = []
while True:
    try:
        held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        break
main.held = held  # kept open until the process exits, as a busy server's connections
while not should_stop():
    sleep(3600)
"""


@pytest.mark.scenario(
    "Promises under pressure",
    "stop of a service that uses all its descriptors and has workers in sessions of their own",
    lost="nothing: the service lets go of its spare descriptor and ends them a few at a time",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_a_service_out_of_descriptors_still_ends_its_workers(make_service):
    svc = make_service(FULL, stop_timeout=3.0)
    pid = svc.start()
    line = wait_for(lambda: "workers " in svc.log_text() and svc.log_text(), what="workers")
    workers = [int(word) for word in line.split("workers ")[1].split("\n")[0].split()]
    stop = svc.cli("stop")
    assert stop.returncode == 0, stop.stderr
    assert wait_for(lambda: is_gone(pid), what="the service to end")
    left = [worker for worker in workers if alive(worker)]
    assert not left, f"workers {left} outlived the stop; the log says: {svc.log_text()}"


SELF_RESTART = """
here = os.path.dirname(__file__)
while not should_stop():
    if os.path.exists(os.path.join(here, "restart-me")):
        os.remove(os.path.join(here, "restart-me"))
        with open(os.path.join(here, "restart.out"), "w") as out:
            # In a session of its own, so that its service's stop does not end it.
            subprocess.Popen([sys.executable, __file__, "restart"], start_new_session=True,
                             stdout=out, stderr=out)
    sleep(0.05)
"""


@pytest.mark.scenario(
    "Promises under pressure",
    "main restarts its own service (restart in a session of its own, as an admin endpoint does)",
    lost="nothing: the restart wears a command badge, never ended with the run; the new "
    "instance serves",
)
def test_a_service_can_restart_itself(make_service):
    svc = make_service(SELF_RESTART, stop_timeout=3.0)
    old = svc.start()
    (svc.dir / "restart-me").touch()
    new = wait_for(
        lambda: (pid := svc.read_pid()) not in (None, old) and alive(pid) and pid,
        timeout=30, what=f"a new instance (restart said: {(svc.dir / 'restart.out')})",
    )  # fmt: skip
    assert is_gone(old)
    out = svc.dir / "restart.out"
    wait_for(lambda: f"svc started (pid {new})" in out.read_text(), what="the restart's report")
    svc.stop_gracefully(new)


@pytest.fixture
def sticky_dir():
    """A /tmp-like directory: world-writable and sticky."""
    folder = Path(tempfile.mkdtemp(prefix="dd-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


def nobody_links(target: str, path: Path) -> None:
    subprocess.run(["ln", "-s", target, str(path)], user="nobody", group="nogroup",
                   extra_groups=[], check=True)  # fmt: skip


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user plants a symlink at PIDFILE.restarting in a shared directory",
    lost="nothing: root replaces the other user's symlink (unlink follows nothing); the "
    "restart hands over",
)
def test_a_symlink_planted_as_the_restart_lock_does_not_block_restarts(make_service, sticky_dir):
    pidfile = sticky_dir / "svc.pid"
    port = free_port()
    svc = make_service(
        ANSWER_WITH_PID, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"], wait_ready=True,
        pidfile=str(pidfile),
    )  # fmt: skip
    old = svc.start()
    nobody_links("/nonexistent", sticky_dir / "svc.pid.restarting")
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    new = svc.read_pid()
    assert new != old and is_gone(old)
    svc.stop_gracefully(new)


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user plants a symlink (or a FIFO) as the pidfile in a shared directory",
    lost="nothing: root's start replaces the other user's symlink or FIFO and starts",
)
def test_root_starts_over_a_symlink_planted_as_its_pidfile(make_service, sticky_dir):
    pidfile = sticky_dir / "svc.pid"
    nobody_links("/nonexistent", pidfile)
    svc = make_service(pidfile=str(pidfile))
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    svc.stop_gracefully(pid)


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user plants a directory at PIDFILE.options in a shared directory",
    lost="nothing: the empty directory is removed, the options written; a plain restart "
    "reuses them",
)
def test_a_directory_planted_as_the_options_file_does_not_lose_the_options(
    make_service, sticky_dir
):
    pidfile = sticky_dir / "svc.pid"
    svc = options_service(make_service, pidfile)
    subprocess.run(["mkdir", f"{pidfile}.options"], user="nobody", group="nogroup",
                   extra_groups=[], check=True)  # fmt: skip
    started = svc.cli("start", "--host", "127.0.0.2")
    assert started.returncode == 0, started.stderr
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    new = svc.read_pid()
    wait_for(lambda: len(options_seen(svc)) == 2, what="the second run's options in the log")
    assert options_seen(svc)[-1] == ["127.0.0.2", "/srv"], "restart dropped the options"
    svc.stop_gracefully(new)


@pytest.mark.scenario(
    "Faults",
    "a second Ctrl-C in run, while main (with a worker in a session of its own) stops",
    lost="nothing: the run's processes get SIGTERM as it exits",
)
@pytest.mark.linux_only("finding what a run started reads /proc")
def test_a_second_ctrl_c_in_run_leaves_no_worker_running(make_service):
    body = """
worker = subprocess.Popen(["sleep", "1000"], start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("worker", worker.pid, flush=True)
while not should_stop():
    time.sleep(0.01)
print("asked", flush=True)
while True:
    time.sleep(0.05)     # a slow stop: only a second Ctrl-C ends it
"""
    svc = make_service(body=body)
    proc = svc.popen("run")
    worker = int(proc.stdout.readline().split()[1])
    os.kill(proc.pid, signal.SIGINT)
    assert proc.stdout.readline() == "asked\n"
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGINT
    assert wait_for(lambda: is_gone(worker), timeout=10, what="the worker to end with the run")


@pytest.mark.scenario(
    "Bad input",
    "start under ulimit -n 5 to 12 (issue 22, item 13)",
    lost="one line naming what could not be opened, exit 1, no pidfile left",
)
def test_start_with_very_few_descriptors_fails_in_one_line(make_service):
    svc = make_service()
    for limit in range(5, 13):
        script = f"ulimit -n {limit} && exec {sys.executable} {svc.script} start"
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                env=svc.env, timeout=30)  # fmt: skip
        if result.returncode == 0:  # enough for this start: stop it, try the next limit
            svc.stop_gracefully(svc.pid_from(result.stdout))
            continue
        assert "Traceback" not in result.stderr, (limit, result.stderr)
        assert len(result.stderr.splitlines()) == 1, (limit, result.stderr)
        assert not svc.pidfile.exists(), (limit, svc.cli("status").stdout)
        assert not svc.daemons()


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="needs systemd")
@pytest.mark.scenario(
    "Bad input",
    "socket activation with Accept=yes hands a connected socket in (issue 22, item 19)",
    lost="one line, exit 1, main never runs",
)
def test_a_connected_socket_passed_as_a_listener_is_a_one_line_error(make_service):
    port = free_port()
    body = "(sock,) = listeners()\nready()\nsock.accept()\n"
    svc = make_service(body, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"], wait_ready=True)
    activator = svc.popen(
        "run", command_prefix=["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--accept",
                               "-E", "PYTHONPATH", "-E", MARK],
    )  # fmt: skip
    with socket.socket() as client:
        client.settimeout(10)
        wait_for(lambda: client.connect_ex(("127.0.0.1", port)) == 0, what="the activator")
        client.recv(1)  # the end of the connection, when the service exits
    activator.kill()
    _, err = activator.communicate(timeout=10)
    assert "Traceback" not in err, err
    assert "Errno 22" not in err, err


@pytest.fixture
def nobodys_service(mark):
    """A service script nobody may run, its pidfile in a directory of nobody's own."""
    folder = Path(tempfile.mkdtemp(prefix="dd-nobody-", dir="/tmp"))
    folder.chmod(0o755)
    shutil.copytree(REPO / "daemonize_deco", folder / "daemonize_deco",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    run_dir = folder / "run"
    run_dir.mkdir()
    shutil.chown(run_dir, "nobody", "nogroup")
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    script = folder / "svc.py"
    options = f"pidfile={str(run_dir / 'svc.pid')!r}, stdout={str(run_dir / 'svc.log')!r}"
    body = "    while not should_stop():\n        sleep(3600)"
    script.write_text(SCRIPT.format(prelude="", options=options, body=body))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": python_path(folder), MARK: mark, **simulation()}

    def cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        who = {} if user is None else {"user": user, "group": "nogroup", "extra_groups": []}
        return subprocess.run([SYSTEM_PYTHON, str(script), *args], capture_output=True,
                              text=True, env=env, timeout=30, **who)  # fmt: skip

    yield cli
    shutil.rmtree(folder)


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "root addresses a service a user started (no user=), its pidfile in that user's own directory",
    lost="nothing: root sees it running, start says already running, stop stops it",
)
def test_root_sees_a_users_running_service_in_the_users_own_directory(nobodys_service):
    started = nobodys_service("start", user="nobody")
    assert started.returncode == 0, started.stderr
    pid = Service.pid_from(started.stdout)
    status = nobodys_service("status")
    assert status.returncode == 0 and f"running (pid {pid}" in status.stdout, status.stdout
    again = nobodys_service("start")
    assert "already running" in again.stdout, again.stdout
    stop = nobodys_service("stop")
    assert f"stopped (pid {pid})" in stop.stdout, stop.stdout
    assert is_gone(pid)
