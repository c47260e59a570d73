"""Socket files where there are no abstract names (macOS, FreeBSD): ``_platform_sockets``.

The services here run with abstract Unix sockets and ``SO_PEERCRED`` taken
away (``tests/simulated_platform``, "sockets"; or all the run's simulated
platform lacks), on any run: the claim, the control socket and the
quiesce socket are files in a private directory beside the pidfile, and
that directory is all that keeps other users out.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
from pathlib import Path

import pytest
from conftest import is_gone, wait_for
from platform_simulation import SIMULATION, VARIABLE, simulated
from test_kvserver import free_port
from test_other_users import ANSWER_PUT_BACK, Shared, shared  # noqa: F401 -- a fixture

from daemonize_deco._platform_sockets import SUN_PATH_LIMIT, directories

pytestmark = pytest.mark.timeout(120)

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="acting as nobody needs root")
PRELUDE = "from daemonize_deco import listeners"
ANSWER = """
ready()
socks = listeners()
for s in socks:
    s.settimeout(0.05)
while not should_stop():
    for s in socks:
        try:
            conn, _ = s.accept()
        except (TimeoutError, BlockingIOError):
            continue
        conn.sendall(f"{os.getpid()}\\n".encode())
        conn.close()
"""


def with_socket_files(env: dict[str, str]) -> None:
    """Run with no abstract sockets nor SO_PEERCRED (or all the run's platform lacks)."""
    env[VARIABLE] = simulated() or "sockets"
    path = env.get("PYTHONPATH", "")
    if str(SIMULATION) not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SIMULATION), path]))


def service(make_service, **options):
    svc = make_service(**options)
    with_socket_files(svc.env)
    return svc


def listening(make_service, **options):
    return service(make_service, body=ANSWER, prelude=PRELUDE, **options)


def socket_dir(pidfile: Path) -> Path:
    """The directory of the service's socket files: the first there is (or could be)."""
    candidates = [Path(folder) for folder in directories(str(pidfile))]
    return next((folder for folder in candidates if os.path.lexists(folder)), candidates[0])


def ask_pid(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return int(conn.makefile().readline())


def assert_private(folder: Path, uid: int = 0) -> None:
    found = folder.lstat()
    assert stat.S_ISDIR(found.st_mode) and found.st_uid == uid
    assert stat.S_IMODE(found.st_mode) == 0o700


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:
        return False


@pytest.mark.scenario(
    "Options",
    "reload and a restart's handover through socket files (no abstract sockets)",
    lost="nothing: the claim, control and quiesce sockets are files in a private directory, "
    "removed at the stop",
)
def test_reload_and_the_handover_go_through_socket_files(make_service):
    port = free_port()
    svc = listening(make_service, listen=[f"tcp://127.0.0.1:{port}"])
    old = svc.start()
    folder = socket_dir(svc.pidfile)
    assert_private(folder)
    assert is_socket(folder / "claim") and is_socket(folder / f"control.{old}")
    reloaded = svc.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert f"svc reloaded (pid {old})" in reloaded.stdout
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    new = svc.read_pid()
    assert new != old
    assert f"svc restarted (pid {new}; pid {old} stopped, its sockets kept)" in restarted.stdout
    wait_for(lambda: is_gone(old), what="the old instance")
    assert ask_pid(port) == new
    assert is_socket(folder / "claim") and is_socket(folder / f"control.{new}")
    wait_for(lambda: not (folder / f"control.{old}").exists(), what="the old control socket")
    assert svc.cli("reload").returncode == 0
    assert "holds the claim" not in svc.log_text()
    assert svc.cli("stop").returncode == 0
    wait_for(lambda: is_gone(new), what="the stop")
    assert not folder.exists(), sorted(os.listdir(folder))


def test_a_killed_services_socket_files_are_replaced(make_service):
    svc = service(make_service)
    pid = svc.start()
    folder = socket_dir(svc.pidfile)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), what="the kill")
    assert is_socket(folder / "claim"), "left by SIGKILL"
    again = svc.start()
    assert "holds the claim" not in svc.log_text()
    assert is_socket(folder / f"control.{again}")
    assert svc.cli("reload").returncode == 0
    assert svc.cli("stop").returncode == 0
    wait_for(lambda: is_gone(again), what="the stop")
    assert not folder.exists(), sorted(os.listdir(folder))


def test_a_deep_pidfile_puts_its_sockets_in_a_short_directory(make_service, tmp_path):
    deep = tmp_path / ("d" * 80)
    deep.mkdir()
    svc = service(make_service, pidfile=str(deep / "svc.pid"))
    pid = svc.start()
    folder = socket_dir(svc.pidfile)
    assert str(folder).startswith("/tmp/daemonize_deco-")
    assert len(os.fsencode(folder / f"control.{pid}")) <= SUN_PATH_LIMIT
    assert_private(folder)
    assert svc.cli("reload").returncode == 0
    assert svc.cli("stop").returncode == 0
    wait_for(lambda: is_gone(pid), what="the stop")
    assert not folder.exists()


PLANT_DIRECTORY = """
import os, sys
os.mkdir(sys.argv[1], 0o700)
print("planted", flush=True)
"""

PLANT_LINK = """
import os, sys
os.mkdir(sys.argv[2], 0o777)
os.symlink(sys.argv[2], sys.argv[1])
print("planted", flush=True)
"""


@AS_ROOT
@pytest.mark.scenario(
    "Security",
    "another user plants the socket directory in a shared /tmp",
    lost="the start: refused with the reason, nothing runs; no socket of the service is "
    "ever put in another user's directory",
)
@pytest.mark.parametrize("plant", ["directory", "symlink"])
def test_a_socket_directory_another_user_planted_is_refused(
    make_service, sticky_dir, as_nobody, plant
):
    svc = service(make_service, pidfile=str(sticky_dir / "svc.pid"))
    folder = socket_dir(svc.pidfile)
    code = PLANT_LINK if plant == "symlink" else PLANT_DIRECTORY
    planter = as_nobody(code, str(folder), str(sticky_dir / "elsewhere"))
    assert planter.stdout.readline() == "planted\n"
    result = svc.cli("start")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    why = f"svc: failed to start: cannot claim {svc.pidfile}: {folder} "
    assert result.stderr.startswith(why), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert svc.daemons() == []
    assert not any(is_socket(Path(folder, name)) for name in os.listdir(folder))


def atexit_rmdir(folder: Path) -> None:
    """Remove another user's empty directory planted outside the test's own (root may)."""
    import atexit  # noqa: PLC0415

    atexit.register(lambda: folder.rmdir() if folder.is_dir() else None)


SQUATTER = (
    """
import os, socket, sys
os.mkdir(sys.argv[1], 0o700)
claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
claim.bind(os.path.join(sys.argv[1], "claim"))
claim.listen(8)
print("squatting", flush=True)
"""
    + ANSWER_PUT_BACK
)


@AS_ROOT
@pytest.mark.scenario(
    "Security",
    "another user's claim socket in a socket directory of their own",
    lost="nothing: status and stop never ask another user's directory",
)
def test_another_users_claim_socket_is_not_asked(make_service, sticky_dir, as_nobody):
    svc = service(make_service, pidfile=str(sticky_dir / "svc.pid"))
    pid = svc.start()
    assert svc.cli("stop").returncode == 0
    wait_for(lambda: is_gone(pid), what="the stop")
    Path(svc.pidfile).write_text(f"{pid}\n")  # a stale pidfile: the claim is asked
    squatter = as_nobody(SQUATTER, str(socket_dir(svc.pidfile)))
    assert squatter.stdout.readline() == "squatting\n"
    status = svc.cli("status")
    assert status.returncode in (1, 3), status.stdout
    assert "put back" not in status.stdout and "Traceback" not in status.stderr
    assert squatter.poll() is None


@AS_ROOT
def test_a_service_that_dropped_privileges_has_its_own_socket_directory(shared):  # noqa: F811
    svc = running_as_nobody(shared)
    started = svc.as_root("start")
    assert started.returncode == 0, started.stderr
    pid = int(svc.pidfile.read_text())
    folder = socket_dir(svc.pidfile)
    assert_private(folder, uid=_nobody())
    reloaded = svc.as_root("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert f"svc reloaded (pid {pid})" in reloaded.stdout
    assert svc.as_root("stop").returncode == 0
    wait_for(lambda: is_gone(pid), what="the stop")
    assert not any(is_socket(Path(folder, name)) for name in os.listdir(folder))


@AS_ROOT
def test_a_user_that_cannot_reach_the_pidfiles_directory_has_a_short_one(shared):  # noqa: F811
    svc = running_as_nobody(shared)
    svc.pidfile.parent.chmod(0o700)  # root's: nobody may not enter it
    started = svc.as_root("start")
    assert started.returncode == 0, started.stderr
    pid = int(svc.pidfile.read_text())
    short = Path(directories(str(svc.pidfile))[1])  # after PIDFILE.sockets
    assert_private(short, uid=_nobody())
    assert (short / f"control.{pid}").exists()
    reloaded = svc.as_root("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert svc.as_root("stop").returncode == 0
    wait_for(lambda: is_gone(pid), what="the stop")
    assert not short.exists()


def running_as_nobody(make_shared) -> Shared:
    """Root's service with ``user="nobody"`` and socket files, the simulation shared with nobody."""
    svc: Shared = make_shared(user="nobody", stdout=None)
    with_socket_files(svc.env)
    svc.env["PYTHONPATH"] = os.pathsep.join([str(svc.dir), str(svc.dir / "simulated")])
    _share_simulation(svc.dir / "simulated")
    return svc


def _share_simulation(folder: Path) -> None:
    """The simulation where nobody can read it (the repository may be root's alone)."""
    folder.mkdir(mode=0o755)
    copy = folder / "sitecustomize.py"
    copy.write_text((SIMULATION / "sitecustomize.py").read_text())
    copy.chmod(0o644)


def _nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid
