"""Fitting the process managers (systemd, supervisord, containers, Debian tools) and hygiene."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    IDLE,
    alive,
    children_of,
    is_gone,
    marked_pids,
    proc_stat,
    proc_status,
    wait_for,
)
from test_hooks import RELOAD_HOOK, with_hooks

from daemonize_deco._errors import DetachError
from daemonize_deco._hygiene import resolve_credentials

pytestmark = pytest.mark.timeout(60)


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(10)
        self.env_value = "@" + address[1:] if address.startswith("\0") else address

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self) -> None:
        """Throw away what was sent already (by a process that has exited)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        self.sock.settimeout(10)

    def until(self, text: str) -> list[str]:
        """Datagrams up to and including the first one containing ``text``."""
        seen = []
        while True:
            seen.append(self.next())
            if text in seen[-1]:
                return seen


@pytest.fixture(params=["abstract", "path"])
def listener(request, tmp_path):
    if request.param == "abstract":
        address = f"\0dd-test-{os.getpid()}-{time.monotonic_ns()}"
    else:
        address = str(tmp_path / "notify")
    sock = NotifyListener(address)
    yield sock
    sock.sock.close()


def test_systemd_notify_protocol(make_service, listener):
    body = "sleep(0.2)\nnotify(status='warming up')\nready()\n" + IDLE
    svc = with_hooks(make_service, RELOAD_HOOK, body=body, wait_ready=True, stdout=None)
    script = svc.script.read_text()
    svc.script.write_text(script.replace("import daemon,", "import daemon, notify,"))
    env = dict(svc.env, NOTIFY_SOCKET=listener.env_value)
    proc = svc.popen("run", env=env)
    assert listener.next() == "STATUS=warming up\n"
    assert listener.next() == "READY=1\n"
    assert svc.cli("reload").returncode == 0
    reloading = listener.next()
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")  # one datagram, as systemd needs
    usec = int(reloading.split("MONOTONIC_USEC=")[1])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 10_000_000
    assert listener.next() == "READY=1\n"
    proc.send_signal(signal.SIGTERM)
    assert listener.next() == "STOPPING=1\n"
    proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_children_do_not_inherit_notify_socket(make_service, listener):
    body = "print(subprocess.run(['env'], capture_output=True, text=True).stdout)\n" + IDLE
    svc = make_service(body=body, stdout=None)
    proc = svc.popen("run", env=dict(svc.env, NOTIFY_SOCKET=listener.env_value))
    assert listener.next() == "READY=1\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert "NOTIFY_SOCKET" not in out and "PATH=" in out


def test_watchdog_pings_only_for_our_pid(make_service, listener):
    svc = make_service(stdout=None)
    env = dict(svc.env, NOTIFY_SOCKET=listener.env_value, WATCHDOG_USEC="100000")
    proc = svc.popen("run", env=env)
    pings = listener.until("WATCHDOG=1") + listener.until("WATCHDOG=1")
    assert "READY=1\n" in pings
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    listener.drain()

    other = svc.popen("run", env=dict(env, WATCHDOG_PID="1"))
    assert listener.next() == "READY=1\n"
    listener.sock.settimeout(0.5)  # five ping periods of silence
    with pytest.raises(TimeoutError):
        listener.next()
    other.send_signal(signal.SIGTERM)
    other.communicate(timeout=10)


def test_start_under_systemd_notify_stays_in_the_foreground(make_service, tmp_path):
    # supervisord: see test_under_a_real_supervisord
    svc = make_service(body="print('in main', os.getpid(), flush=True)\n" + IDLE, stdout=None)
    value = str(tmp_path / "nobody-listens")
    proc = svc.popen("start", env=dict(svc.env, NOTIFY_SOCKET=value))
    assert proc.stdout.readline() == f"in main {proc.pid}\n", "start forked away"
    assert svc.read_pid() == proc.pid
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "running in the foreground" in err


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_run_as_pid_1_of_a_container(make_service):
    body = """
        print('pid', os.getpid(), flush=True)
        # an orphan: its parent exits at once, so it is re-parented to us, PID 1
        subprocess.Popen(['sh', '-c', 'sleep 1 & exit 0']).wait()
        print('orphaned', flush=True)
        while not should_stop():
            sleep(3600)
        print('graceful', flush=True)
    """
    svc = make_service(body=body, stdout=None)
    proc = svc.popen("run", command_prefix=["unshare", "--pid", "--fork", "--kill-child"])
    assert proc.stdout.readline() == "pid 1\n"
    init = wait_for(lambda: _child_of(proc.pid), what="the namespace's init")
    assert proc.stdout.readline() == "orphaned\n"
    assert children_of(init), "the orphaned sleep is now a child of our PID 1"
    wait_for(lambda: not children_of(init), timeout=10, what="the orphan to exit and be reaped")
    os.kill(init, signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert "graceful" in out


def _child_of(pid: int) -> int | None:
    children = children_of(pid)
    return children[0] if children else None


def test_systemd_unit(make_service, tmp_path):
    svc = make_service(stop_timeout=42.0)
    result = svc.cli("systemd-unit")
    assert result.returncode == 0
    unit = result.stdout
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    assert fields["Type"] == "notify"
    assert fields["ExecStart"] == f"{sys.executable} {svc.script} run"
    # The acknowledged reload, not an asynchronous kill -HUP (systemd.service(5)).
    assert fields["ExecReload"] == f"{sys.executable} {svc.script} reload"
    assert fields["Restart"] == "no"  # restart= decides; the default is one process
    assert int(fields["TimeoutStopSec"]) >= 42
    if shutil.which("systemd-analyze"):
        unit_file = tmp_path / "svc.service"
        unit_file.write_text(unit)
        command = ["systemd-analyze", "verify", str(unit_file)]
        verify = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr
        assert "svc.service" not in verify.stderr, verify.stderr


@pytest.mark.linux_only("the process name is written through /proc")
def test_process_is_named_after_the_service(make_service):
    svc = make_service(name="a-long-service-name-indeed")
    pid = svc.start()
    name = "a-long-service-"  # the kernel keeps 15 bytes
    assert Path(f"/proc/{pid}/comm").read_text().strip() == name

    def threads() -> set[str]:
        return {p.read_text().strip() for p in Path(f"/proc/{pid}/task").glob("*/comm")}

    # The dispatcher names itself once it runs, which may be after start returned.
    wait_for(lambda: threads() == {name, "daemonize_deco"}, what="the dispatcher thread named")
    ps = subprocess.run(["ps", "-o", "comm=", "-p", str(pid)], capture_output=True, text=True)
    assert ps.stdout.strip() == name
    pgrep = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    # Only this test's processes: another run of the suite may name one alike meanwhile.
    ours = set(map(str, marked_pids(svc.mark)))
    assert [found for found in pgrep.stdout.split() if found in ours] == [str(pid)]
    if shutil.which("start-stop-daemon"):
        found = subprocess.run(["start-stop-daemon", "--status", "--name", name])
        assert found.returncode == 0
    assert svc.cli("stop").returncode == 0


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="procps is not installed")
def test_pgrep_sees_the_lock(make_service):
    svc = make_service()
    pid = svc.start()
    found = subprocess.run(["pgrep", "-F", str(svc.pidfile), "-L"], capture_output=True, text=True)
    assert found.stdout.split() == [str(pid)]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), what="the kill")

    def pgrep_fails() -> subprocess.CompletedProcess[str] | None:
        argv = ["pgrep", "-F", str(svc.pidfile), "-L"]
        found = subprocess.run(argv, capture_output=True, text=True)
        return found if found.returncode != 0 else None

    # The start's intermediate process holds the lock too until it has exited,
    # which a loaded machine may schedule after the daemon was killed.
    found = wait_for(pgrep_fails, what="pgrep to see the lock released")
    assert found.stdout == ""


@pytest.mark.skipif(shutil.which("start-stop-daemon") is None, reason="dpkg tools not installed")
def test_start_stop_daemon_stops_gracefully(make_service):
    svc = make_service()
    pid = svc.start()
    result = subprocess.run(
        ["start-stop-daemon", "--stop", "--pidfile", str(svc.pidfile), "--retry", "TERM/5/KILL/5"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert is_gone(pid)
    assert "stopping" in svc.log_text(), "stopped gracefully, not killed"
    assert not svc.pidfile.exists()


# -- privileges and hygiene --------------------------------------------------------


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@needs_root
@pytest.mark.scenario(
    "Security",
    "user= drop cannot be undone",
    lost="setuid(0) fails in the daemon; it still writes its log and pidfile",
)
def test_drop_to_nobody(make_service):
    body = (
        "try:\n"
        "    os.setuid(0)\n"
        "    print('regained root', flush=True)\n"
        "except PermissionError:\n"
        "    print('cannot regain root', flush=True)\n"
    ) + IDLE
    svc = make_service(body=body, user="nobody")
    pid = svc.start()
    nobody = pwd.getpwnam("nobody")
    status = proc_status(pid)
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    wait_for(lambda: "cannot regain root" in svc.log_text(), what="the setuid attempt")
    assert svc.read_pid() == pid
    assert svc.cli("stop").returncode == 0
    assert not svc.pidfile.exists(), "stop tidies a pidfile the daemon could not unlink"


@needs_root
@pytest.mark.parametrize(
    ("keywords", "message"),
    [({"user": "no-such-user-x"}, "no such user: no-such-user-x"),
     ({"user": "nobody", "group": "no-such-group-x"}, "no such group: no-such-group-x")],
)  # fmt: skip
def test_unknown_user_or_group_is_refused_before_forking(make_service, keywords, message):
    svc = make_service(**keywords)
    result = svc.cli("start")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not svc.pidfile.exists()
    assert svc.daemons() == []


def test_inherited_descriptors_are_closed_but_our_own_kept(make_service, tmp_path):
    prelude = (
        "import logging\n"
        f"logging.basicConfig(filename={str(tmp_path / 'app.log')!r}, level=logging.INFO)\n"
        "KEEP = int(os.environ['KEEP_FD'])\n"
    )
    body = "logging.info('logged after detaching')\n" + IDLE
    svc = make_service(body=body, prelude=prelude, files_preserve=["KEEP"])
    script = svc.script.read_text()
    svc.script.write_text(script.replace("files_preserve=['KEEP']", "files_preserve=[KEEP]"))
    leaked_r, leaked_w = os.pipe()
    kept_r, kept_w = os.pipe()
    svc.env["KEEP_FD"] = str(kept_w)
    result = subprocess.run(
        svc.argv("start"),
        pass_fds=(leaked_w, kept_w),
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    os.close(leaked_w)
    os.close(kept_w)
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    os.set_blocking(leaked_r, False)
    assert os.read(leaked_r, 1) == b"", "the daemon still holds the launcher's pipe"
    os.set_blocking(kept_r, False)
    with pytest.raises(BlockingIOError):
        os.read(kept_r, 1)  # files_preserve: the daemon still holds this one
    wait_for(lambda: "logged after detaching" in (tmp_path / "app.log").read_text(), what="logging")
    assert alive(pid)
    assert svc.cli("stop").returncode == 0
    os.close(leaked_r)
    os.close(kept_r)


@pytest.mark.parametrize("prevent_core", [True, False])
def test_core_dumps(make_service, prevent_core):
    svc = make_service(prevent_core=prevent_core)
    pid = svc.start()

    def core_limit(who: str) -> str:
        limits = Path(f"/proc/{who}/limits").read_text().splitlines()
        return next(x for x in limits if x.startswith("Max core file size"))

    line, mine = core_limit(str(pid)), core_limit("self")
    if prevent_core:
        assert line.split()[4:6] == ["0", "0"]
    else:
        assert line == mine
    assert svc.cli("stop").returncode == 0


@needs_root
def test_group_alone_keeps_the_user(make_service):
    svc = make_service(group="nogroup")
    pid = svc.start()
    status = proc_status(pid)
    assert status["Uid"].split()[0] == "0"
    assert status["Gid"].split() == [str(grp.getgrnam("nogroup").gr_gid)] * 4
    assert status["Groups"].split() == [str(grp.getgrnam("nogroup").gr_gid)]
    assert svc.cli("stop").returncode == 0


def test_user_without_root_is_refused(monkeypatch):
    """In-process: the check itself (this machine runs the suite as root)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DetachError, match="need root"):
        resolve_credentials("nobody", None)


# -- managers and containers (issue 10, part 5) --------------------------------


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_start_as_pid_1_acts_as_run(make_service):
    """A container whose command is `app.py start`: forking away would end the service."""
    svc = make_service(body="print('in main', os.getpid(), flush=True)\n" + IDLE, stdout=None)
    proc = svc.popen("start", command_prefix=["unshare", "--pid", "--fork", "--kill-child"])
    assert proc.stdout.readline() == "in main 1\n", "start detached as PID 1"
    init = wait_for(lambda: _child_of(proc.pid), what="the namespace's init")
    assert svc.read_pid() == 1  # as the namespace sees it
    os.kill(init, signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "running in the foreground under PID 1 of a container" in err
    assert "stopping" in out


@pytest.mark.linux_only("without /proc SUPERVISOR_ENABLED counts alone: the parent cannot be seen")
def test_supervisor_enabled_alone_does_not_keep_start_in_the_foreground(make_service):
    """A child of a supervised program inherits the variable; it is not supervisord's command."""
    svc = make_service()
    result = svc.cli("start", env=dict(svc.env, SUPERVISOR_ENABLED="1"))
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    assert "foreground" not in result.stderr
    svc.stop_gracefully(pid)


def test_service_children_do_not_inherit_supervisor_enabled(make_service):
    body = "print('child sees', os.environ.get('SUPERVISOR_ENABLED'), flush=True)\n" + IDLE
    svc = make_service(body=body, stdout=None)
    proc = svc.popen("run", env=dict(svc.env, SUPERVISOR_ENABLED="1"))
    assert proc.stdout.readline() == "child sees None\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


SUPERVISORD_CONF = """\
[supervisord]
nodaemon=true
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}

[unix_http_server]
file={dir}/supervisor.sock

[supervisorctl]
serverurl=unix://{dir}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:svc]
command={command}
stdout_logfile={dir}/svc.out
redirect_stderr=true
autostart=true
startsecs=0
stopsignal=TERM
stopwaitsecs=10
"""


class Supervisord:
    """A real supervisord (PyPI's supervisor) running one program, driven by supervisorctl."""

    def __init__(
        self, folder: Path, command: str, env: dict[str, str], *, as_module: bool = False
    ) -> None:
        self.dir = folder
        self.conf = folder / "supervisord.conf"
        self.conf.write_text(SUPERVISORD_CONF.format(dir=folder, command=command))
        self.env = env
        launcher = (
            [sys.executable, "-m", "supervisor.supervisord"]
            if as_module
            else [self._bin("supervisord")]
        )
        self.proc = subprocess.Popen(
            [*launcher, "-c", str(self.conf)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    @staticmethod
    def _bin(name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def ctl(self, *args: str) -> str:
        command = [self._bin("supervisorctl"), "-c", str(self.conf), *args]
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=30)
        return done.stdout

    def output(self) -> str:
        out = self.dir / "svc.out"
        return out.read_text() if out.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.timeout(90)
def test_under_a_real_supervisord(make_service):
    """start under supervisord: foreground, output at once, HUP reloads, stop is graceful."""
    body = "print('first line', os.getpid(), os.environ.get('SUPERVISOR_ENABLED'))\n" + IDLE
    svc = with_hooks(make_service, RELOAD_HOOK, body=body, stdout=None)
    env = dict(svc.env)
    env.pop("PYTHONUNBUFFERED", None)
    manager = Supervisord(svc.dir, f"{sys.executable} {svc.script} start", env)
    try:
        wait_for(lambda: "RUNNING" in manager.ctl("status", "svc"), timeout=30, what="RUNNING")
        pid = int(manager.ctl("pid", "svc").strip())
        wait_for(lambda: f"first line {pid} None" in manager.output(), what="the first line")
        assert "running in the foreground under supervisord" in manager.output()
        assert svc.read_pid() == pid, "start did not fork away from supervisord"
        assert int(proc_stat(pid)[1]) == manager.proc.pid

        manager.ctl("signal", "HUP", "svc")
        wait_for(lambda: "reloaded" in manager.output(), what="the reload callback")
        assert manager.ctl("pid", "svc").strip() == str(pid), "HUP did not restart it"

        manager.ctl("stop", "svc")
        wait_for(lambda: is_gone(pid), what="the stop")
        assert "stopping" in manager.output(), "stopped gracefully, on_stop and all"
        assert not svc.pidfile.exists()
        assert "STOPPED" in manager.ctl("status", "svc")
    finally:
        manager.close()
