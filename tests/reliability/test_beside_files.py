"""Nothing is left beside the pidfile once the service is stopped, however it ended.

What may stay in the pidfile's directory once a service ended: its log and its
last-run record (``PIDFILE.last-run``, which ``status`` reads); the pidfile is
its own lock, so no lock file stays.  Never its options (``.options``), its
supervisor's state (``.supervisor``), a restart's lock (``.restarting``) or the
temporary name of a write cut short.  Each test failed before its fix.
"""

from __future__ import annotations

import os
import signal

import pytest
from conftest import is_gone, marked_pids, wait_for
from test_kvserver import free_port

pytestmark = pytest.mark.timeout(120)

# A listen= service taking an option; a file "stubborn" makes its stop hang (stop's
# SIGKILL ends it); a file "slow" keeps a new instance from becoming ready; a file
# "return" makes main return.
SERVICE = """
here = os.path.dirname(__file__)
while os.path.exists(os.path.join(here, "slow")) and not should_stop():
    sleep(0.05)
ready()
while not should_stop() and not os.path.exists(os.path.join(here, "return")):
    sleep(0.05)
print("asked", flush=True)
while os.path.exists(os.path.join(here, "stubborn")):
    time.sleep(0.05)
"""

LAST_RUN = {"svc.pid.last-run"}


def service(make_service, **options):
    svc = make_service(
        SERVICE, stop_timeout=1.0, wait_ready=True, listen=[f"tcp://127.0.0.1:{free_port()}"],
        **options,
    )  # fmt: skip
    # main takes an option, so its options are kept beside the pidfile while it runs.
    svc.script.write_text(svc.script.read_text().replace("def main():", "def main(tag='x'):"))
    return svc


def beside(svc) -> set[str]:
    """The pidfile's directory, but the script and the log."""
    return set(os.listdir(svc.dir)) - {"svc.py", "svc.log", "stubborn", "slow", "return"}


def assert_nothing_stale_shown(svc) -> None:
    status = svc.cli("status")
    assert "is not running" in status.stdout and "options" not in status.stdout, status.stdout
    logs = svc.cli("logs")
    assert logs.returncode == 0 and "Traceback" not in logs.stderr, logs.stderr


@pytest.mark.scenario(
    "Faults",
    "stop that escalates to SIGKILL (main ignores the stop), supervised or not",
    lost="nothing left beside the pidfile but the log and the last-run record",
)
@pytest.mark.parametrize("supervised", [False, True])
def test_a_killed_stop_leaves_only_the_record(make_service, supervised):
    svc = service(make_service, **({"restart": "always"} if supervised else {}))
    assert svc.cli("start", "--tag", "a").returncode == 0
    assert "svc.pid.options" in beside(svc)
    # A write of its options cut short by SIGKILL, before the rename: its temporary name.
    (svc.dir / ".svc.pid.options.0123456789abcdef").write_text("--tag\0a")
    (svc.dir / "stubborn").touch()
    stop = svc.cli("stop")
    assert stop.returncode == 0 and "killed" in stop.stdout, (stop.stdout, stop.stderr)
    assert beside(svc) == LAST_RUN
    assert_nothing_stale_shown(svc)


@pytest.mark.scenario(
    "Faults",
    "a second Ctrl-C in run (a service with options)",
    lost="nothing left beside the pidfile but the log",
)
def test_a_second_ctrl_c_in_run_leaves_no_options(make_service):
    svc = service(make_service)
    (svc.dir / "stubborn").touch()
    proc = svc.popen("run", "--tag", "c")
    wait_for(lambda: "svc.pid.options" in beside(svc), timeout=20, what="run's options")
    os.kill(proc.pid, signal.SIGINT)
    assert proc.stdout.readline() == "asked\n"  # stopping, and stuck: only a second one ends it
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGINT
    assert beside(svc) <= LAST_RUN, beside(svc)
    assert_nothing_stale_shown(svc)


@pytest.mark.scenario(
    "Faults",
    "restart (listen=) killed by SIGKILL while the new instance starts, then the service ends",
    lost="nothing left beside the pidfile but the log and the last-run record",
)
@pytest.mark.parametrize(
    ("supervised", "ending"), [(False, "stop"), (False, "return"), (True, "stop")]
)
def test_a_killed_restart_leaves_no_restart_lock(make_service, supervised, ending):
    svc = service(make_service, **({"restart": "always"} if supervised else {}))
    old = svc.start()
    (svc.dir / "slow").touch()
    before = set(marked_pids(svc.mark))
    restart = svc.popen("restart")
    wait_for(lambda: len(set(marked_pids(svc.mark)) - before) >= 2, what="the new instance")
    assert "svc.pid.restarting" in beside(svc)
    restart.kill()
    restart.communicate(timeout=20)
    new = set(marked_pids(svc.mark)) - before - {restart.pid}
    wait_for(lambda: all(is_gone(pid) for pid in new), timeout=20, what="the new one to stand down")
    assert svc.read_pid() == old
    (svc.dir / "slow").unlink()
    if ending == "stop":
        svc.stop_gracefully(old)
    else:
        (svc.dir / "return").touch()
        wait_for(lambda: is_gone(old), timeout=20, what="main to return")
    assert beside(svc) == LAST_RUN
    assert_nothing_stale_shown(svc)


@pytest.mark.scenario(
    "Faults",
    "a service killed by kill -9 (not by stop), then stop",
    lost="nothing left beside the pidfile but the log (stop removes the stale pidfile)",
)
def test_stop_after_a_kill_9_leaves_nothing_beside(make_service):
    svc = service(make_service)
    pid = svc.start()
    assert "svc.pid.options" in beside(svc)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), what="the service to die")
    stop = svc.cli("stop")
    assert "removed stale pidfile" in stop.stdout, (stop.stdout, stop.stderr)
    assert beside(svc) <= LAST_RUN, beside(svc)
    assert_nothing_stale_shown(svc)
