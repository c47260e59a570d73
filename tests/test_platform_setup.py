"""Process setup where Linux's mechanisms are missing, with real processes on plain Linux.

A lifeline pipe instead of ``prctl(PR_SET_PDEATHSIG)``, and the inherited
descriptors of a start closed without /proc (a mount namespace whose /proc
is an empty tmpfs: /proc/self/fd and /dev/fd list nothing, and the bounded
probe does the work).  The simulated platforms run the same code through
the whole suite; these tests need no simulation.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, alive, is_gone, wait_for
from test_supervisor import CRASH_ON_REQUEST, supervised

pytestmark = pytest.mark.timeout(60)

# A parent makes a lifeline, forks a child that never holds it (it must not keep
# the pipe open), then a child that dies with it; then waits to be killed.
# "late": the child holds it only once its parent is gone.  The child watches it
# as a service's dispatcher does.
LIFELINE = """
import os, select, signal, sys, time
from daemonize_deco._platform_parent_death import Lifeline

lifeline = Lifeline()
bystander = os.fork()
if bystander == 0:
    time.sleep(60)
    os._exit(0)
parent = os.getpid()
child = os.fork()
if child == 0:
    while sys.argv[1] == "late" and os.getppid() == parent:
        time.sleep(0.001)
    lifeline.hold(signal.SIGKILL)
    poller = select.poll()  # as the dispatcher watches it
    poller.register(lifeline.read_end, select.POLLIN)
    while True:
        poller.poll()
        lifeline.check()
print(bystander, child, flush=True)
time.sleep(60)
"""


def _lifeline(mode: str) -> tuple[subprocess.Popen[str], int, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", LIFELINE, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert parent.stdout is not None
    bystander, child = map(int, parent.stdout.readline().split())
    return parent, bystander, child


def _kill(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.scenario(
    "Faults",
    "SIGKILL of a parent whose child holds a lifeline (no PR_SET_PDEATHSIG: macOS)",
    lost="the child dies with it; a sibling that never held the lifeline does not keep it alive",
)
def test_a_lifeline_ends_the_child_when_its_parent_is_killed():
    parent, bystander, child = _lifeline("hold")
    try:
        assert alive(child)
        parent.kill()
        parent.wait()
        wait_for(lambda: is_gone(child), what="the child to die with its parent")
        assert alive(bystander)  # it has no lifeline: alive, and it held no write end
    finally:
        _kill(bystander, child)
        parent.wait()


def test_a_lifeline_held_after_the_parent_died_ends_the_child_at_once():
    parent, bystander, child = _lifeline("late")
    try:
        parent.kill()
        parent.wait()
        wait_for(lambda: is_gone(child), what="the orphan to end itself")
    finally:
        _kill(bystander, child)
        parent.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
@pytest.mark.scenario(
    "Faults",
    "SIGKILL of the supervisor of a restarted service that dropped to user=nobody",
    lost="the service dies with it: asked again after setuid (prctl), or its lifeline (macOS)",
)
def test_a_restarted_service_as_nobody_dies_with_its_killed_supervisor(make_service):
    svc = supervised(make_service, CRASH_ON_REQUEST, user="nobody", restart_delay=0.1)
    supervisor = svc.start()
    (first,) = wait_for(lambda: _children(supervisor), what="the service")
    os.kill(first, signal.SIGKILL)  # a failure: restarted
    (second,) = wait_for(
        lambda: [pid for pid in _children(supervisor) if pid != first], what="the restarted one"
    )
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: is_gone(second), what="the service to die with its supervisor")


# -- inherited descriptors without /proc ----------------------------------------------

# Opens 1,000 inheritable descriptors, then runs the service's start with them.
INHERIT = """
import os, subprocess, sys
fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1000)]
for fd in fds:
    os.set_inheritable(fd, True)
result = subprocess.run(sys.argv[1:], pass_fds=fds, capture_output=True, text=True)
print(result.stdout, end="")
print(result.stderr, end="", file=sys.stderr)
sys.exit(result.returncode)
"""

WITHOUT_PROC = 'mount -t tmpfs none /proc && exec "$@"'
# FreeBSD without fdescfs: /dev/fd (here /proc/self/fd) holds 0, 1 and 2, whatever is open.
DEVFS_FD = (
    "mount -t tmpfs none /proc && mkdir -p /proc/self/fd && cd /proc/self/fd && touch 0 1 2 "
    '&& cd / && exec "$@"'
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
@pytest.mark.scenario(
    "Promises under pressure",
    "start with 1,000 inherited descriptors where /proc and /dev/fd list none (plain, restart=)",
    lost="the daemon holds none of them: every number below the descriptor limit is probed",
)
@pytest.mark.parametrize(
    ("restart", "setup"),
    [(None, WITHOUT_PROC), ("on-failure", WITHOUT_PROC), (None, DEVFS_FD)],
    ids=["plain", "supervised", "devfs-dev-fd"],
)
def test_a_start_without_proc_closes_a_thousand_inherited_descriptors(make_service, restart, setup):
    body = textwrap.dedent("""
        print('open', sum(1 for fd in range(4096) if _is_open(fd)), flush=True)
        while not should_stop():
            sleep(3600)
    """)
    prelude = textwrap.dedent("""
        def _is_open(fd):
            try:
                os.fstat(fd)
            except OSError:
                return False
            return True
    """)
    options = {} if restart is None else {"restart": restart}
    svc = make_service(body=body, prelude=prelude, **options)
    argv = [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", setup, "sh",
        sys.executable, "-c", INHERIT, *svc.argv("start"),
    ]  # fmt: skip
    result = subprocess.run(argv, env=svc.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    pid = svc.pid_from(result.stdout)
    line = wait_for(lambda: "open " in svc.log_text() and svc.log_text(), what="main's count")
    counted = int(line.split("open ")[1].split()[0])
    assert counted < 50, f"main sees {counted} descriptors: the inherited ones were kept"
    for daemon in [pid, *([] if restart is None else _children(pid))]:
        held = os.listdir(f"/proc/{daemon}/fd")
        assert len(held) < 50, f"pid {daemon} holds {len(held)} descriptors"
    svc.stop_gracefully(pid)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(word) for word in f.read().split()]
