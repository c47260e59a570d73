"""The handover of a listen= restart under attack: a killed restart, a squatted claim, a
forged answer, a failed new instance.

Whatever instant the restarting process dies, afterwards exactly one instance runs and
status and stop reach it; the claim and the handover are answered only by the instance
itself.  Each test failed before its fix.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import is_gone, wait_for
from test_kvserver import free_port
from test_listeners import ANSWER_WITH_PID, PRELUDE, ask_pid

from daemonize_deco._claim import claim_address

pytestmark = pytest.mark.timeout(120)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="acting as nobody needs root")

# ANSWER_WITH_PID, but a stop lingers while a file "linger" exists (a slow graceful stop).
LINGERING = (
    ANSWER_WITH_PID
    + """
print("stopping", os.getpid(), flush=True)
while os.path.exists(os.path.join(here, "linger")):
    time.sleep(0.05)
print("stopped", os.getpid(), flush=True)
"""
)


def lingering(make_service, port: int, **options):
    options.setdefault("stop_timeout", 3.0)
    return make_service(
        LINGERING, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"], wait_ready=True, **options
    )


def instances(svc, supervised: bool) -> list[int]:
    """The service's live processes (a supervised one counts its supervisor and service)."""
    found = svc.daemons()
    if not supervised:
        return found
    return [pid for pid in found if not any(_ppid(pid) == other for other in found)]


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def assert_one_instance_reached_by_commands(svc, port: int, supervised: bool) -> int:
    """Exactly one instance is left; status, the pidfile and a client agree; stop ends it."""
    survivor = wait_for(
        lambda: (left := instances(svc, supervised)) and len(left) == 1 and left[0],
        timeout=30,
        what="exactly one instance left",
    )
    assert svc.read_pid() == survivor
    status = svc.cli("status")
    assert status.returncode == 0 and f"pid {survivor}" in status.stdout, status.stdout
    served_by = ask_pid(("127.0.0.1", port))
    assert served_by == survivor or _ppid(served_by) == survivor
    assert svc.cli("stop").returncode == 0
    wait_for(lambda: not svc.daemons(), what="nothing left after stop")
    again = svc.cli("start")
    assert again.returncode == 0, again.stderr  # the port is free: nothing holds it
    assert svc.cli("stop").returncode == 0
    return survivor


@pytest.mark.scenario(
    "Faults",
    "restart (listen=) SIGKILLed while the new instance starts",
    lost="the new instance stands down; the old one serves on, and status and stop reach it",
)
@pytest.mark.parametrize("supervised", [False, True], ids=["plain", "supervised"])
def test_sigkill_of_restart_before_the_new_instance_is_ready(make_service, supervised):
    port = free_port()
    options = {"restart": "on-failure"} if supervised else {}
    svc = lingering(make_service, port, **options)
    old = svc.start()
    (svc.dir / "slow").touch()
    restart = svc.popen("restart")
    wait_for(lambda: len(svc.daemons()) > (2 if supervised else 1), what="the new instance")
    restart.kill()
    restart.communicate()
    (svc.dir / "slow").unlink()
    survivor = assert_one_instance_reached_by_commands(svc, port, supervised)
    assert survivor == old


@pytest.mark.scenario(
    "Faults",
    "restart (listen=) SIGKILLed after the new instance took over, while the old one stops",
    lost="the new instance ends the old one itself (SIGKILL after stop_timeout): one instance",
)
@pytest.mark.parametrize("supervised", [False, True], ids=["plain", "supervised"])
def test_sigkill_of_restart_while_the_old_instance_stops(make_service, supervised):
    port = free_port()
    options = {"restart": "on-failure"} if supervised else {}
    svc = lingering(make_service, port, **options)
    old = svc.start()
    (svc.dir / "linger").touch()  # the old instance's stop takes as long as the file is there
    restart = svc.popen("restart")
    wait_for(lambda: svc.read_pid() not in (None, old), what="the pidfile to name the new one")
    restart.kill()
    restart.communicate()
    wait_for(lambda: is_gone(old), timeout=30, what="the old instance to be ended")
    (svc.dir / "linger").unlink()
    survivor = assert_one_instance_reached_by_commands(svc, port, supervised)
    assert survivor != old


@pytest.mark.scenario(
    "Faults",
    "restart (listen=) with a new instance that fails keeps the running options",
    lost="PIDFILE.options still names the running instance's settings; a plain restart reuses them",
)
def test_a_failed_handover_keeps_the_remembered_options(make_service):
    port = free_port()
    body = "if tag == 'broken':\n    raise RuntimeError('bad tag')\n" + ANSWER_WITH_PID
    svc = make_service(body, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"], wait_ready=True)
    svc.script.write_text(svc.script.read_text().replace("def main():", "def main(tag: str = ''):"))
    started = svc.cli("start", "--tag", "good")
    assert started.returncode == 0, started.stderr
    old = svc.pid_from(started.stdout)
    failed = svc.cli("restart", "--tag", "broken")
    assert failed.returncode == 1 and "bad tag" in failed.stderr, failed.stderr
    assert "options: --tag good" in svc.cli("status").stdout
    plain = svc.cli("restart")
    assert plain.returncode == 0, plain.stderr
    new = svc.read_pid()
    assert new != old and "options: --tag good" in svc.cli("status").stdout
    assert svc.cli("stop").returncode == 0


# Binds the claim name first and answers a handover request with its own descriptors:
# the real pidfile (world-readable), and a listening socket of its own.
SQUATTER = """
import array, os, socket, sys
claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
claim.bind(bytes.fromhex(sys.argv[1]))
claim.listen(8)
print("squatting", flush=True)
mine = socket.socket()
mine.bind(("127.0.0.1", 0))
mine.listen(8)
while True:
    conn, _ = claim.accept()
    try:
        conn.recv(100)
        pidfile = os.open(sys.argv[2], os.O_RDONLY)
        fds = array.array("i", [pidfile, claim.fileno(), mine.fileno()])
        conn.sendmsg([b"ok 1\\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        os.close(pidfile)
    except OSError:
        pass
    conn.close()
"""


@pytest.mark.linux_only(
    "squats the abstract claim name; a socket file is in the service's own directory"
)
@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user squats the claim name and answers restart's handover with their sockets",
    lost="nothing of theirs is used: one line says so, restart stops and starts; one instance",
)
def test_a_handover_from_a_squatter_is_refused(make_service, open_dir, as_nobody):
    port = free_port()
    pidfile = open_dir / "svc.pid"
    squatter = as_nobody(SQUATTER, claim_address(str(pidfile)).hex(), str(pidfile))
    try:
        assert squatter.stdout.readline() == "squatting\n"
        svc = make_service(
            ANSWER_WITH_PID, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"],
            wait_ready=True, pidfile=str(pidfile),
        )  # fmt: skip
        old = svc.start()
        restarted = svc.cli("restart")
        assert restarted.returncode == 0, restarted.stderr
        assert "Traceback" not in restarted.stderr
        assert len(restarted.stderr.splitlines()) == 1, restarted.stderr
        assert "restarting by stop and start" in restarted.stderr
        assert "(user nobody)" in restarted.stderr, restarted.stderr
        new = svc.read_pid()
        assert new != old and is_gone(old)
        assert wait_for(lambda: svc.daemons() == [new], what="one instance")
        assert ask_pid(("127.0.0.1", port)) == new
        assert svc.cli("stop").returncode == 0
        assert squatter.poll() is None
    finally:
        squatter.kill()
        squatter.communicate()


# Tries to bind the claim name in a tight loop; says so if it ever gets it.
GRABBER = """
import socket, sys
name = bytes.fromhex(sys.argv[1])
while True:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
    except OSError:
        sock.close()
        continue
    print("got it", flush=True)
    sock.listen(1)
    sys.stdin.read() if False else __import__("time").sleep(3600)
"""


@pytest.mark.linux_only(
    "grabs the abstract claim name; a socket file is in the service's own directory"
)
@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "another user tries to take the claim name in a tight loop through 20 restarts",
    lost="the claim passes from instance to instance without a gap: never taken",
)
def test_the_claim_is_never_free_during_restarts(make_service, open_dir, as_nobody):
    port = free_port()
    pidfile = open_dir / "svc.pid"
    svc = make_service(
        ANSWER_WITH_PID, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"],
        wait_ready=True, pidfile=str(pidfile),
    )  # fmt: skip
    svc.start()
    grabber = as_nobody(GRABBER, claim_address(str(pidfile)).hex())
    try:
        for _ in range(20):
            restarted = svc.cli("restart")
            assert restarted.returncode == 0, restarted.stderr
            assert "its sockets kept" in restarted.stdout, restarted.stdout
        current = svc.read_pid()
        pidfile.unlink()
        status = svc.cli("status")
        assert status.returncode == 0 and f"pid {current}" in status.stdout, status.stdout
    finally:
        grabber.kill()
        out, _ = grabber.communicate()
    assert "got it" not in out
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Faults",
    "restart (listen=) while the running instance is already stopping",
    lost="it hands nothing over (it may be gone before the new one is ready): stop and start; "
    "one instance, with its pidfile and socket file",
)
def test_an_instance_that_is_stopping_hands_nothing_over(make_service, tmp_path):
    path = str(tmp_path / "svc.sock")
    svc = make_service(
        LINGERING, prelude=PRELUDE, listen=[f"unix:{path}"], wait_ready=True, stop_timeout=20.0
    )
    old = svc.start()
    (svc.dir / "linger").touch()
    stopping = svc.popen("stop")
    wait_for(lambda: "stopping" in svc.log_text(), what="the old instance to begin its stop")
    (svc.dir / "slow").touch()
    said = svc.dir / "restart.err"
    with said.open("w") as stderr:
        restart = svc.popen("restart", stderr=stderr)
    decided = lambda: "by stop and start" in said.read_text() or len(svc.daemons()) > 1  # noqa: E731
    wait_for(decided, what="the restart to decide")
    (svc.dir / "linger").unlink()
    (svc.dir / "slow").unlink()
    restart.communicate(timeout=60)
    stopping.communicate(timeout=60)
    err = said.read_text()
    assert restart.returncode == 0, err
    assert "it is stopping; restarting by stop and start" in err, err
    new = svc.read_pid()
    assert new not in (None, old) and is_gone(old)
    assert wait_for(lambda: svc.daemons() == [new], what="one instance")
    assert ask_pid(path) == new
    assert svc.cli("stop").returncode == 0
    assert not os.path.exists(path)


# Connects once to the abstract name it is given (found in /proc/net/unix, as anyone can).
KNOCKER = """
import socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect("\\0" + sys.argv[1])
print("knocked", flush=True)
"""


def _quiesce_name(pid: int) -> str | None:
    """The abstract name on which ``pid`` awaits a restart's quiesce, once it listens on it."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").rstrip("]"))
        except OSError:
            continue
    with open("/proc/net/unix") as table:
        for line in table:
            fields = line.split()
            if fields[6] in inodes and fields[-1].startswith("@daemonize_deco/quiesce/"):
                return fields[-1][1:]
    return None


# Ready once GO exists; once stopped, says whether its listener was quiesced.
QUIESCE_SEEN = """
(sock,) = listeners()
while not os.path.exists(GO):
    time.sleep(0.01)
ready()
while not should_stop():
    sleep(3600)
with socket.socket(fileno=os.dup(sock.fileno())) as now:
    print(os.getpid(), "quiesced" if now.family == socket.AF_UNIX else "accepting", flush=True)
"""


@pytest.mark.linux_only(
    "connects to the abstract quiesce name; a socket file is in the service's own directory"
)
@ROOT_ONLY
@pytest.mark.linux_only("the quiesce reads the process's descriptors and epoll sets off /proc")
@pytest.mark.scenario(
    "Security",
    "another user connects first to the name on which the old instance awaits the quiesce",
    lost="nothing: the stranger is hung up on, and the restart's own quiesce still comes through",
)
def test_another_user_cannot_call_off_the_quiesce(make_service, tmp_path, as_nobody):
    go = tmp_path / "go"
    go.touch()
    prelude = f"import socket\nfrom daemonize_deco import listeners\nGO = {str(go)!r}"
    svc = make_service(
        QUIESCE_SEEN, prelude=prelude, listen=[f"tcp://127.0.0.1:{free_port()}"], wait_ready=True
    )
    old = svc.start()
    go.unlink()  # the new instance waits: the knock comes first
    restart = svc.popen("restart")
    name = wait_for(lambda: _quiesce_name(old), what="the old instance's quiesce name")
    knocker = as_nobody(KNOCKER, name)
    assert knocker.stdout.readline() == "knocked\n"
    go.touch()
    _, err = restart.communicate(timeout=60)
    assert restart.returncode == 0, err
    assert is_gone(old)
    assert f"{old} quiesced" in svc.log_text(), svc.log_text()
    svc.stop_gracefully(svc.read_pid())


def _waiting_on_claim(pidfile: Path) -> int:
    """How many connections wait in the claim's backlog (``ss``: a listener's Recv-Q)."""
    name = "@" + claim_address(str(pidfile))[1:].decode()
    listing = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[4] == name:
            return int(fields[2])
    return 0


@pytest.mark.scenario(
    "Load",
    "a restart (listen=) right after another, before the instance it made the service "
    "listens on the claim in its own name (held up by the scheduler: SIGSTOP)",
    lost="nothing: the second restart waits for it to settle and hands over its sockets, "
    "instead of distrusting it and falling back to stop and start",
)
@pytest.mark.linux_only(
    "the race it pins is SO_PEERCRED's on the abstract claim (socket files ask no pid)"
)
def test_a_restart_right_after_a_restart_waits_for_the_new_instance_to_settle(make_service):
    port = free_port()
    svc = lingering(make_service, port)
    old = svc.start()
    (svc.dir / "linger").touch()
    first = svc.popen("restart")
    new = wait_for(lambda: svc.read_pid() not in (None, old) and svc.read_pid(), what="commit")
    os.kill(new, signal.SIGSTOP)  # it cannot settle once the first restart is over
    try:
        (svc.dir / "linger").unlink()
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0 and f"pid {old} stopped" in out, (out, err)
        second = svc.popen("restart")
        wait_for(lambda: _waiting_on_claim(svc.pidfile) or second.poll() is not None,
                 what="the second restart to ask")  # fmt: skip
    finally:
        os.kill(new, signal.SIGCONT)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, (out, err)
    assert "not trusting" not in err and f"pid {new} stopped, its sockets kept" in out, (out, err)
    newest = svc.read_pid()
    assert newest not in (old, new) and ask_pid(("127.0.0.1", port)) == newest
    assert svc.cli("stop").returncode == 0
