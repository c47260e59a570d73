"""A hostile review of the platform seam (issue 25), with real processes.

Each test is a break found by attacking the seam: on plain Linux (nothing
may change there) or with what macOS and FreeBSD lack taken away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import is_gone, wait_for
from platform_simulation import SIMULATION, VARIABLE, simulated
from test_platform_sockets import (
    AS_ROOT,
    PLANT_DIRECTORY,
    assert_private,
    atexit_rmdir,
    service,
    socket_dir,
)

from daemonize_deco._platform_sockets import directories

pytestmark = pytest.mark.timeout(120)

# Not conftest's script, which imports signal and subprocess itself.
WRITE_MODULES = """\
import json, os, sys
from daemonize_deco import daemon, should_stop, sleep

@daemon(pidfile={pidfile!r}, stdout={log!r})
def main():
    with open({path!r} + ".tmp", "w") as f:
        json.dump(sorted(sys.modules), f)
    os.rename({path!r} + ".tmp", {path!r})
    while not should_stop():
        sleep(3600)

if __name__ == "__main__":
    main()
"""


@pytest.mark.linux_only("the simulation itself imports socket, signal and ctypes")
def test_a_plain_daemon_carries_no_module_the_seam_could_add(make_service, tmp_path):
    # _platform probed pidfd_send_signal in signal.py, which the daemon did not
    # load before: every daemon carried it (and its enums) from then on.
    found = tmp_path / "modules.json"
    svc = make_service()
    svc.script.write_text(
        WRITE_MODULES.format(pidfile=str(svc.pidfile), log=str(svc.log), path=str(found))
    )
    pid = svc.start()
    modules = set(json.loads(wait_for(lambda: found.exists() and found.read_text())))
    svc.stop_gracefully(pid)
    assert "daemonize_deco._platform" in modules  # the seam is there, and cheap
    heavy = {"signal", "socket", "ctypes", "subprocess", "psutil", "selectors", "hashlib"}
    assert not modules & heavy, modules & heavy


def deep_pidfile_service(make_service, tmp_path):
    """A service whose pidfile is too deep for PIDFILE.sockets, and its short socket directory."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    deep = private / ("d" * 80)
    deep.mkdir()
    svc = service(make_service, pidfile=str(deep / "svc.pid"))
    return svc, socket_dir(svc.pidfile)


@AS_ROOT
@pytest.mark.scenario(
    "Security",
    "another user makes the short socket directory of a deep pidfile first",
    lost="nothing: the service makes one of its own that nobody can name in advance; "
    "no socket of it is put in the planted one, which is left alone",
)
def test_another_user_cannot_keep_a_deep_pidfile_from_starting(make_service, tmp_path, as_nobody):
    svc, planted = deep_pidfile_service(make_service, tmp_path)
    assert str(planted).startswith("/tmp/daemonize_deco-")
    decoy = Path(f"{planted}.0000000000000000")  # and one of the names it may fall back to
    for folder in (planted, decoy):
        planter = as_nobody(PLANT_DIRECTORY, str(folder))
        assert planter.stdout is not None and planter.stdout.readline() == "planted\n"
        atexit_rmdir(folder)
    result = svc.cli("start")
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    ours = [Path(f) for f in directories(str(svc.pidfile)) if Path(f).exists()]
    ours = [folder for folder in ours if folder.lstat().st_uid == 0]
    assert len(ours) == 1 and ours[0].name.startswith(planted.name + "."), ours
    assert_private(ours[0])
    assert (ours[0] / f"control.{pid}").is_socket()
    assert os.listdir(planted) == os.listdir(decoy) == []
    assert svc.cli("status").returncode == 0
    assert svc.cli("reload").returncode == 0
    assert svc.cli("stop").returncode == 0
    wait_for(lambda: is_gone(pid), what="the stop")
    assert not ours[0].exists(), "the service's own directory goes with it"
    assert planted.lstat().st_uid != 0  # the planted one is left alone


# conftest's script imports threading in main: the dispatcher's import of it went unseen.
PLAIN = """\
from daemonize_deco import daemon, should_stop, sleep

@daemon(pidfile={pidfile!r}, stdout={log!r}, stop_timeout=5)
def main():
    while not should_stop():
        sleep(3600)
    print("stopping", flush=True)

if __name__ == "__main__":
    main()
"""


def without_proc(env: dict[str, str]) -> None:
    """Run with no /proc, pidfds nor abstract sockets (or all the run's platform lacks)."""
    env[VARIABLE] = simulated() or "freebsd14"
    path = env.get("PYTHONPATH", "")
    if str(SIMULATION) not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SIMULATION), path]))


@pytest.mark.scenario(
    "Faults",
    "without /proc, the pidfile overwritten to name an older, unrelated process",
    lost="nothing: status names the service and puts its pidfile back; stop stops the "
    "service, never the process the file was made to name",
)
def test_an_overwritten_pidfile_never_gets_another_process_stopped(make_service, tmp_path):
    # The pid a locked pidfile named was believed where /proc is missing if that
    # process had started before the file's last write: stop sent SIGTERM to it
    # and left the service running.  And once the service's dispatcher had asked
    # ps or psutil (importing threading), the service took stop_timeout to end.
    svc = make_service()
    svc.script.write_text(PLAIN.format(pidfile=str(svc.pidfile), log=str(svc.log)))
    without_proc(svc.env)
    other = subprocess.Popen(["sleep", "600"])
    try:
        pid = svc.start()
        svc.pidfile.write_text(f"{other.pid}\n")
        status = svc.cli("status")
        assert status.returncode == 0, status.stderr
        assert f"is running (pid {pid}," in status.stdout, status.stdout
        assert "put back" in status.stdout, status.stdout
        svc.stop_gracefully(pid)
        assert other.poll() is None  # never signalled
        assert "still running" not in svc.log_text()
    finally:
        other.kill()
        other.wait()


MUTE_CLAIM = """
import os, socket, sys
os.makedirs(sys.argv[1], mode=0o700, exist_ok=True)
claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
claim.bind(os.path.join(sys.argv[1], "claim"))
claim.listen(8)
print("listening", flush=True)
while True:
    claim.accept()[0].close()
"""


@pytest.mark.scenario(
    "Faults",
    "where sockets are files, the claim answers but never says its pid (a stopped service)",
    lost="the start: refused in one line, instead of recursing into a RecursionError",
)
def test_a_claimant_that_never_says_its_pid_fails_a_start_in_one_line(make_service):
    svc = make_service()
    without_proc(svc.env)
    mute = subprocess.Popen(
        [sys.executable, "-c", MUTE_CLAIM, directories(str(svc.pidfile))[0]],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert mute.stdout is not None and mute.stdout.readline() == "listening\n"
        result = svc.cli("start")
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.returncode == 1, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "does not say its pid" in result.stderr
        assert svc.daemons() == []
    finally:
        mute.kill()
        mute.wait()


# No threading imported by main: the reload callback, on the dispatcher thread, is first.
LOGGING_RELOAD = """\
from daemonize_deco import daemon, should_stop, sleep

@daemon(pidfile={pidfile!r}, stdout={log!r}, stop_timeout=5)
def main():
    while not should_stop():
        sleep(3600)

@main.on_reload
def reloaded():
    import logging
    logging.getLogger("svc").warning("reloaded")

if __name__ == "__main__":
    main()
"""


@pytest.mark.scenario(
    "Promises under pressure",
    "a plain on_reload callback imports logging (and so threading) first",
    lost="nothing: the service still stops on SIGTERM, instead of waiting stop_timeout for "
    "the dispatcher thread (taken for main's) and being killed",
)
def test_a_reload_callback_that_imports_threading_first_does_not_hold_up_the_stop(make_service):
    svc = make_service()
    svc.script.write_text(LOGGING_RELOAD.format(pidfile=str(svc.pidfile), log=str(svc.log)))
    pid = svc.start()
    assert svc.cli("reload").returncode == 0
    svc.stop_gracefully(pid)
    assert "still running" not in svc.log_text()
