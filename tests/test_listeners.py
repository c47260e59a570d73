"""listen=: sockets bound before detaching, socket activation, and restarts that drop nothing."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MARK, REPO, is_gone, marked_pids, wait_for
from test_kvserver import KV, free_port

sys.path.insert(0, str(REPO / "benchmarks"))
from handover_figures import Clients

pytestmark = pytest.mark.timeout(120)

PRELUDE = "from daemonize_deco import listeners"
IDLE_LOOP = "while not should_stop():\n    sleep(3600)\n"

# Answers each connection with its own pid; a file "fail" makes a start fail.
ANSWER_WITH_PID = """
here = os.path.dirname(__file__)
if os.path.exists(os.path.join(here, "fail")):
    raise RuntimeError("told to fail")
while os.path.exists(os.path.join(here, "slow")) and not should_stop():
    sleep(0.05)
socks = listeners()
print("sockets", [s.getsockname() for s in socks], [s.get_inheritable() for s in socks],
      [os.fstat(s.fileno()).st_ino for s in socks], os.environ.get("LISTEN_FDS"), flush=True)
for s in socks:
    s.settimeout(0.05)
ready()
while not should_stop():
    for s in socks:
        try:
            conn, _ = s.accept()
        except TimeoutError:
            continue
        try:
            conn.sendall(b"%d\\n" % os.getpid())
        except OSError:
            pass  # the asker is gone
        conn.close()
print("stopping", os.getpid(), flush=True)
"""


def ask_pid(address: str | tuple[str, int]) -> int:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        return int(sock.makefile().readline())


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            found.add(int(target[len("socket:[") : -1]))
    return found


def answering(make_service, listen: list[str], **options):
    return make_service(ANSWER_WITH_PID, prelude=PRELUDE, listen=listen, wait_ready=True, **options)


def assert_the_old_one_serves_on(svc, port: int, old: int, stderr: str, why: str) -> None:
    """A restart that replaced nothing: it says why, and ``old`` serves on with its pidfile."""
    assert why in stderr and f"pid {old} is still running and serving" in stderr, stderr
    assert "Traceback" not in stderr
    assert wait_for(lambda: marked_pids(svc.mark) == [old], what="only the old instance left")
    assert svc.read_pid() == old and ask_pid(("127.0.0.1", port)) == old
    assert svc.cli("status").returncode == 0


def test_start_binds_before_detaching_and_main_gets_the_sockets(make_service, tmp_path):
    port = free_port()
    path = str(tmp_path / "svc.sock")
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}", f"unix:{path}"])
    pid = svc.start()
    assert ask_pid(("127.0.0.1", port)) == pid
    assert ask_pid(path) == pid
    line = wait_for(lambda: re.search(r"^sockets .*$", svc.log_text(), re.M), what="main's line")
    assert f"[('127.0.0.1', {port}), '{path}'] [False, False]" in line.group(0)
    backlog = int(Path("/proc/sys/net/core/somaxconn").read_text())
    ss = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
    assert ss.stdout.split()[2] == str(backlog), ss.stdout  # Send-Q of a listener: its backlog
    assert svc.cli("stop").returncode == 0
    assert not os.path.exists(path), "the last instance removes its Unix socket file"


@pytest.mark.scenario(
    "Bad input",
    "listen= address already in use",
    lost="start fails at once, exit 1, one line; no pidfile, no process left",
)
def test_address_in_use_fails_the_start_at_once(make_service):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = answering(make_service, [f"tcp://127.0.0.1:{port}"])
        result = svc.cli("start")
    assert result.returncode == 1
    assert (
        result.stderr == f"svc: cannot listen on tcp://127.0.0.1:{port}: address already in use\n"
    )
    assert not svc.pidfile.exists()
    assert marked_pids(svc.mark) == []


HOST = """\
import os, signal, socket, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svc

if sys.argv[1:] == ["interrupt-while-binding"]:
    def ctrl_c_at_the_bind(event, args):
        if event == "socket.bind":
            os.kill(os.getpid(), signal.SIGINT)
    sys.addaudithook(ctrl_c_at_the_bind)

def sockets():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += [os.readlink(f"/proc/self/fd/{fd}")]
        except OSError:
            pass  # the descriptor listdir used
    return [target for target in found if target.startswith("socket:")]

status = svc.main.cli(["start"])
print("start", status, "host sockets", len(sockets()), flush=True)
if status == 0:
    print("stop", svc.main.cli(["stop"]), flush=True)
"""


def run_host(svc, *args: str) -> subprocess.CompletedProcess[str]:
    """A larger program that starts the service with ``main.cli(["start"])`` and goes on."""
    host = svc.dir / "host.py"
    host.write_text(HOST)
    return subprocess.run(
        [sys.executable, str(host), *args], capture_output=True, text=True, timeout=60, env=svc.env
    )


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.scenario(
    "Faults",
    "a program that starts a listen= service with main.cli(['start']) and goes on",
    lost="it keeps no copy of the sockets: once the service stops, its port refuses",
)
def test_a_host_program_keeps_no_copy_of_the_listening_sockets(make_service, tmp_path):
    port = free_port()
    path = str(tmp_path / "svc.sock")
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}", f"unix:{path}"])
    result = run_host(svc)
    assert "start 0 host sockets 0" in result.stdout and "stop 0" in result.stdout, result
    assert refused(port), "nothing listens once the service stopped"
    assert not os.path.exists(path)
    (svc.dir / "fail").touch()
    result = run_host(svc)
    assert "start 1 host sockets 0" in result.stdout, result
    assert "told to fail" in result.stderr and refused(port) and not os.path.exists(path)


@pytest.mark.scenario(
    "Faults",
    "Ctrl-C to start while it binds the listen= sockets",
    lost="no daemon, no pidfile, no socket file; the port is free again",
)
def test_ctrl_c_while_start_binds_leaves_nothing(make_service, tmp_path):
    port = free_port()
    path = str(tmp_path / "svc.sock")
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}", f"unix:{path}"])
    result = run_host(svc, "interrupt-while-binding")
    assert "start 1 host sockets 0" in result.stdout, result
    assert result.stderr == "svc: failed to start: interrupted before it was started\n"
    assert refused(port) and not os.path.exists(path) and not svc.pidfile.exists()
    assert svc.daemons() == []


def test_ipv6_loopback(make_service):
    if not socket.has_ipv6 or not Path("/proc/net/if_inet6").read_text().strip():
        pytest.fail("this machine has no IPv6 loopback to test on")
    port = free_port()
    svc = answering(make_service, [f"tcp://[::1]:{port}"])
    pid = svc.start()
    with socket.create_connection(("::1", port), timeout=10) as sock:
        assert int(sock.makefile().readline()) == pid
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Faults",
    "a Unix socket file left by a SIGKILLed daemon",
    lost="the next start takes the path over; a socket someone listens on is refused",
)
def test_unix_socket_left_by_sigkill_is_reused_but_a_live_one_is_refused(make_service, tmp_path):
    path = str(tmp_path / "svc.sock")
    svc = answering(make_service, [f"unix:{path}"])
    first = svc.start()
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: is_gone(first))
    assert os.path.exists(path)
    second = svc.start()
    assert ask_pid(path) == second
    other = answering(make_service, [f"unix:{path}"], name="other")
    refused = other.cli("start")
    assert refused.returncode == 1
    assert refused.stderr == f"other: cannot listen on unix:{path}: address already in use\n"
    assert ask_pid(path) == second
    assert svc.cli("stop").returncode == 0


def test_restart_hands_the_same_sockets_to_the_new_instance(make_service, tmp_path):
    port = free_port()
    path = str(tmp_path / "svc.sock")
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}", f"unix:{path}"])
    old = svc.start()
    sockets_before = socket_inodes(old)
    result = svc.cli("restart")
    assert result.returncode == 0, result.stderr
    new = svc.read_pid()
    assert new != old and is_gone(old)
    assert f"svc restarted (pid {new}; pid {old} stopped, its sockets kept)" in result.stdout
    line = [ln for ln in svc.log_text().splitlines() if ln.startswith("sockets")][-1]
    inodes = {int(i) for i in re.findall(r"\[(\d+), (\d+)\]", line)[0]}
    assert inodes <= sockets_before, "the very listening sockets of the old instance"
    assert ask_pid(("127.0.0.1", port)) == new
    assert ask_pid(path) == new
    assert f"stopping {old}" in svc.log_text()
    assert svc.cli("status").returncode == 0
    assert svc.cli("stop").returncode == 0
    assert not os.path.exists(path) and not svc.pidfile.exists()


def test_after_a_handover_a_deleted_pidfile_is_still_found(make_service):
    """The claim passed on is bound again in the new instance's name once the old is gone."""
    svc = answering(make_service, [f"tcp://127.0.0.1:{free_port()}"])
    old = svc.start()
    assert svc.cli("restart").returncode == 0
    new = svc.read_pid()
    assert new != old
    svc.pidfile.unlink()
    status = svc.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"pid {new}" in status.stdout
    assert svc.read_pid() == new, "the new instance put its pidfile back"
    assert svc.cli("stop").returncode == 0


def test_an_instance_that_hands_nothing_over_is_stopped_then_started(make_service):
    """One whose main closed its sockets (or from a version before listen=)."""
    port = free_port()
    body = "for s in listeners():\n    s.close()\nready()\n" + IDLE_LOOP
    svc = make_service(body, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"], wait_ready=True)
    old = svc.start()
    result = svc.cli("restart")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"svc: pid {old} did not hand over its sockets: it has no listening sockets; "
        "restarting by stop and start\n"
    )
    assert f"svc stopped (pid {old})" in result.stdout
    assert is_gone(old) and svc.read_pid() not in (None, old)
    assert svc.cli("stop").returncode == 0


def test_restart_of_a_supervised_service_keeps_its_sockets(make_service):
    port = free_port()
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}"], restart="on-failure")
    old = svc.start()
    served_by = ask_pid(("127.0.0.1", port))
    result = svc.cli("restart")
    assert result.returncode == 0, result.stderr
    new = svc.read_pid()
    assert new != old and wait_for(lambda: is_gone(old)) and wait_for(lambda: is_gone(served_by))
    assert ask_pid(("127.0.0.1", port)) not in (served_by, new)  # the new supervisor's service
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Options",
    "restart with listen= and drain=20: the old instance, replaced, stops without the drain",
    lost="nothing: the new instance serves the sockets; its own later stop drains",
)
@pytest.mark.parametrize("supervised", [False, True], ids=["plain", "supervised"])
def test_a_handover_skips_the_old_instances_drain(make_service, supervised: bool) -> None:
    port = free_port()
    options = {"restart": "on-failure"} if supervised else {}
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}"], drain=20.0, **options)
    old = svc.start()
    served_by = ask_pid(("127.0.0.1", port))
    began = time.monotonic()
    result = svc.cli("restart")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began < 10, "the restart waited out the old instance's drain"
    assert f"pid {old} stopped, its sockets kept" in result.stdout, result.stdout
    assert wait_for(lambda: is_gone(old)) and wait_for(lambda: is_gone(served_by))
    assert ask_pid(("127.0.0.1", port)) not in (old, served_by)
    log = svc.log_text()
    assert "SIGTERM: no drain, a restart handed the sockets on" in log, log
    assert "draining for" not in log, log
    first = svc.popen("stop")  # the new instance is not replaced: it drains
    wait_for(lambda: "draining for 20s" in svc.log_text(), what="the new instance to drain")
    assert svc.cli("stop").returncode == 0  # the second stop ends the drain
    assert first.wait(timeout=15) == 0
    assert not svc.pidfile.exists()


@pytest.mark.scenario(
    "Faults",
    "restart with listen= whose new instance fails",
    lost="the old instance keeps serving and keeps the pidfile; restart exits 1 with the reason",
)
def test_a_failing_new_instance_leaves_the_old_one_serving(make_service, tmp_path):
    port = free_port()
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}"])
    old = svc.start()
    (svc.dir / "fail").touch()
    result = svc.cli("restart")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    why = "svc: failed to start: RuntimeError: told to fail"
    assert_the_old_one_serves_on(svc, port, old, result.stderr, why)
    (svc.dir / "fail").unlink()
    assert svc.cli("stop").returncode == 0 and not svc.pidfile.exists()


def test_a_new_instance_that_just_finishes_does_not_replace_the_old(make_service):
    """A main that returns 0 at once counts as "ran and finished": not a replacement."""
    port = free_port()
    body = (
        "if os.path.exists(os.path.join(os.path.dirname(__file__), 'once')):\n"
        "    sys.exit(0)\n" + ANSWER_WITH_PID
    )
    svc = make_service(body, prelude=PRELUDE, listen=[f"tcp://127.0.0.1:{port}"])
    old = svc.start()
    (svc.dir / "once").touch()
    result = svc.cli("restart")
    assert result.returncode == 1
    assert_the_old_one_serves_on(svc, port, old, result.stderr, "ran and finished")
    (svc.dir / "once").unlink()
    assert svc.cli("stop").returncode == 0 and not svc.pidfile.exists()


@pytest.mark.scenario(
    "Faults",
    "two restarts with listen= at once",
    lost="they run one after the other: one instance is left, every replaced one is gone",
)
def test_two_restarts_at_once_leave_one_instance(make_service):
    port = free_port()
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}"])
    first = svc.start()
    restarts = [svc.popen("restart") for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in restarts]
    assert [proc.returncode for proc in restarts] == [0, 0], outputs
    final = svc.read_pid()
    replaced = {int(m) for out, _ in outputs for m in re.findall(r"; pid (\d+) stopped", out)}
    assert first in replaced and len(replaced) == 2 and final not in replaced
    assert wait_for(lambda: marked_pids(svc.mark) == [final], what="one instance left")
    assert ask_pid(("127.0.0.1", port)) == final
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Faults",
    "Ctrl-C to restart (listen=) while the new instance starts",
    lost="the new instance is ended; the old one serves on and keeps its pidfile",
)
def test_ctrl_c_during_a_handover_leaves_the_old_instance(make_service):
    port = free_port()
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}"])
    old = svc.start()
    (svc.dir / "slow").touch()
    restart = svc.popen("restart")
    wait_for(lambda: len(marked_pids(svc.mark)) >= 3, what="the new instance")  # +restart
    restart.send_signal(signal.SIGINT)
    out, err = restart.communicate(timeout=30)
    assert restart.returncode == 1, (out, err)
    assert_the_old_one_serves_on(svc, port, old, err, "interrupted before it was ready")
    (svc.dir / "slow").unlink()
    assert svc.cli("stop").returncode == 0 and not svc.pidfile.exists()


@pytest.mark.scenario(
    "Managers",
    "systemd socket activation (LISTEN_FDS, hand-made)",
    lost="the passed socket is used, not a new bind; LISTEN_* are not passed on",
)
def test_socket_activation_uses_the_passed_descriptor(make_service):
    port = free_port()
    svc = answering(make_service, [f"tcp://127.0.0.1:{port}"])
    passed = socket.socket()
    passed.bind(("127.0.0.1", port))
    passed.listen()
    inode = os.fstat(passed.fileno()).st_ino
    env = dict(svc.env, LISTEN_FDS="1", LISTEN_FDNAMES="svc.socket")

    def as_fd_3() -> None:
        os.dup2(passed.fileno(), 3)

    # LISTEN_PID is the pid systemd execs: the shell's, which exec keeps.
    command = f'LISTEN_PID=$$ exec "{sys.executable}" "{svc.script}" run'
    proc = subprocess.Popen(
        ["sh", "-c", command], env=env, preexec_fn=as_fd_3, close_fds=False, text=True,  # noqa: PLW1509
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        passed.close()  # the service holds the only copy now
        assert ask_pid(("127.0.0.1", port)) == proc.pid
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"sockets [('127.0.0.1', {port})] [False] [{inode}] None" in out


def test_socket_activation_refuses_sockets_listen_does_not_name(make_service):
    svc = answering(make_service, [f"tcp://127.0.0.1:{free_port()}"])
    stray = socket.socket()
    stray.bind(("127.0.0.1", 0))
    stray.listen()
    command = f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{sys.executable}" "{svc.script}" run'
    result = subprocess.run(
        ["sh", "-c", command], env=svc.env, preexec_fn=lambda: os.dup2(stray.fileno(), 3),
        close_fds=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    stray.close()
    assert result.returncode == 1
    assert result.stderr.startswith("svc: systemd passed sockets that listen= does not name:")
    assert len(result.stderr.splitlines()) == 1


def test_socket_activation_with_a_count_past_the_passed_descriptors(make_service):
    svc = answering(make_service, [f"tcp://127.0.0.1:{free_port()}"])
    command = f'LISTEN_PID=$$ LISTEN_FDS=3 exec "{sys.executable}" "{svc.script}" run 3<&-'
    result = subprocess.run(
        ["sh", "-c", command], env=svc.env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.startswith("svc: systemd passed LISTEN_FDS=3, but fd 3 is not a socket")
    assert len(result.stderr.splitlines()) == 1
    assert not svc.pidfile.exists()


@pytest.mark.scenario(
    "Bad input",
    "systemd-socket-activate --accept (Accept=yes) hands in a connection for listen=",
    lost="one line, exit 1, before main runs: no EINVAL from accept() in main, no pidfile",
)
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_socket_activation_refuses_a_connection_for_a_listener(make_service, tmp_path, kind):
    if shutil.which("systemd-socket-activate") is None:
        pytest.fail("systemd-socket-activate is needed (.ci/run installs systemd)")
    port, path = free_port(), str(tmp_path / "activate.sock")
    family, where, to = (
        (socket.AF_INET, ("127.0.0.1", port), f"127.0.0.1:{port}")
        if kind == "tcp"
        else (socket.AF_UNIX, path, path)
    )
    svc = answering(make_service, [f"tcp://{to}" if kind == "tcp" else f"unix:{path}"])
    said = tmp_path / "activate.err"
    with open(said, "w") as err:  # the service's stderr is the activator's
        activator = ["systemd-socket-activate", "--accept", f"--listen={to}"]
        passed_on = ["-E", "PYTHONPATH", "-E", MARK]
        command = [*activator, *passed_on, *svc.argv("run")]
        started = subprocess.Popen(command, env=svc.env, stdout=subprocess.DEVNULL, stderr=err)
        svc.popens.append(started)  # killed at teardown

    def connected() -> socket.socket | None:
        sock = socket.socket(family)
        try:
            sock.connect(where)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            return None
        return sock

    with wait_for(connected, what="systemd-socket-activate listening") as client:
        peer = f" from 127.0.0.1:{client.getsockname()[1]}" if kind == "tcp" else ""
        client.settimeout(20)
        try:
            answer = client.recv(100)
        except ConnectionResetError:
            answer = b""
    assert answer == b"", "main answered on a socket systemd accepted"
    text = wait_for(lambda: "died with code" in (t := said.read_text()) and t, what="its exit")
    assert "died with code 1" in text, text
    assert [line for line in text.splitlines() if line.startswith("svc")] == [
        f"svc: systemd passed a connection to {to}{peer}, not a listening socket: "
        "listen= needs Accept=no in the .socket unit"
    ], text
    assert "Traceback" not in text and "Errno" not in text, text
    assert not svc.pidfile.exists()


def test_systemd_socket_unit(make_service, tmp_path):
    svc = make_service(
        prelude=PRELUDE,
        listen=["tcp://127.0.0.1:6399", "tcp://[::1]:6399", f"unix:{tmp_path}/svc.sock"],
    )
    result = svc.cli("systemd-unit", "--socket")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "ListenStream=127.0.0.1:6399" in lines
    assert "ListenStream=[::1]:6399" in lines
    assert f"ListenStream={tmp_path}/svc.sock" in lines
    assert "Service=svc.service" in lines
    service = svc.cli("systemd-unit").stdout
    assert "Requires=svc.socket" in service.splitlines()
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed (.ci/run installs systemd)")
    (tmp_path / "svc.socket").write_text(result.stdout)
    (tmp_path / "svc.service").write_text(service)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "svc.socket"), str(tmp_path / "svc.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert "svc." not in verify.stderr, verify.stderr
    plain = make_service(name="plain")
    refused = plain.cli("systemd-unit", "--socket")
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[0] == (
        "plain: has no listen= sockets: there is no .socket unit to print"
    )


# -- twenty clients through twenty restarts ------------------------------------------------


@pytest.mark.scenario(
    "Load",
    "restart x20 of the key-value server under 20 clients",
    lost="0 refused connections, 0 failed commands, every acknowledged SET readable; "
    "the pidfile is locked throughout",
)
@pytest.mark.timeout(240)
def test_twenty_restarts_under_twenty_clients_drop_nothing(tmp_path, mark):
    kv = KV(tmp_path, mark)
    assert kv.cli("start").returncode == 0
    pidfile = kv.dir / "kvserver.pid"
    gaps: list[str] = []
    watching = threading.Event()

    def watch_the_lock() -> None:
        while not watching.is_set():
            try:
                fd = os.open(pidfile, os.O_RDONLY)
            except FileNotFoundError:
                gaps.append("no pidfile")
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                gaps.append("the lock was free")
            except BlockingIOError:
                pass
            finally:
                os.close(fd)

    watcher = threading.Thread(target=watch_the_lock)
    watcher.start()
    pids = [int(pidfile.read_text())]
    try:
        with Clients(kv.port, 20) as clients:
            wait_for(lambda: len(clients.acknowledged) > 200, what="traffic")
            for _ in range(20):
                result = kv.cli("restart")
                assert result.returncode == 0, result.stderr
                pids.append(int(pidfile.read_text()))
                count = len(clients.acknowledged)
                wait_for(lambda n=count: len(clients.acknowledged) > n + 20, what="more traffic")
    finally:
        watching.set()
        watcher.join(10)
    assert len(set(pids)) == 21, pids
    assert clients.refused == 0
    assert clients.errors == []
    assert gaps == []
    lost = clients.lost()
    assert lost == [], f"{len(lost)} acknowledged SETs are gone"
    assert kv.cli("stop").returncode == 0
    assert all(is_gone(pid) for pid in pids)
