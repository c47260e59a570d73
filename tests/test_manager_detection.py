"""Who runs ``start``, and whether it stays in the foreground: real inits and supervisors.

A container is a PID namespace of our own (``unshare --pid --fork --mount-proc``)
with a real init as its PID 1: tini, dumb-init, or a shell.  The supervisors are
the real programs: supervisord (PyPI's supervisor), runit's runsv, s6-supervise
and daemontools' supervise.  Processes inside a namespace write to files in
tmp_path, which the test polls from outside.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IDLE, children_of, is_gone, marked_pids, proc_stat, wait_for
from test_managers import NotifyListener, Supervisord

from daemonize_deco._managers import runs_one_command
from daemonize_deco._proc import BADGE_LINK, _earliest_child

pytestmark = pytest.mark.timeout(60)

NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
SAYS_PID = "print('in main', os.getpid(), flush=True)\n" + IDLE


def needs(*programs: str) -> pytest.MarkDecorator:
    missing = [p for p in programs if shutil.which(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a PID namespace of our own needs root and unshare (util-linux)",
)


def app(svc, *args: str) -> str:
    """The shell words that run the service script."""
    return shlex.join([sys.executable, str(svc.script), *args])


def in_namespace(svc, *argv: str) -> tuple[subprocess.Popen[str], Path]:
    """Run ``argv`` as PID 1 of a new PID namespace; its output goes to a file."""
    out = svc.dir / "namespace.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [*NAMESPACE, *argv],
            stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT, text=True, env=svc.env,
        )  # fmt: skip
    svc.popens.append(proc)
    return proc, out


def host_pid_of_init(proc: subprocess.Popen[str]) -> int:
    """The namespace's PID 1 as the host sees it: the child unshare forked."""
    return wait_for(lambda: next(iter(children_of(proc.pid)), None), what="the namespace's init")


def service_under(root: int, svc) -> int | None:
    """The process under ``root`` that runs the service script (not a shell naming it)."""
    for child in children_of(root):
        words = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if words[:2] == [sys.executable.encode(), str(svc.script).encode()]:
            return child
        found = service_under(child, svc)
        if found is not None:
            return found
    return None


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def release(proc: subprocess.Popen[str]) -> None:
    """Let the namespace's shell go on past its ``read`` (to stop the service), and end."""
    proc.stdin.write("\n")
    proc.stdin.close()
    proc.wait(timeout=30)


# -- item 15: the foreground rule ----------------------------------------------


@needs_namespaces
@needs("tini", "dumb-init")
@pytest.mark.parametrize("init", ["tini", "dumb-init"])
@pytest.mark.scenario(
    "Managers",
    "start as the service a container's init runs",
    lost="stays in the foreground under the init; says on stderr which stdout= file it leaves",
)
@pytest.mark.linux_only("detecting a manager walks /proc (its parent, cgroup, environment)")
def test_start_run_by_a_containers_init_stays_in_the_foreground(make_service, init):
    svc = make_service(body=SAYS_PID)
    proc, out = in_namespace(svc, init, "--", sys.executable, str(svc.script), "start")
    wait_for(lambda: "in main 2\n" in text(out), what="main, in the foreground as PID 2")
    said = text(out)
    assert f"running in the foreground under {init} (start acts as run)" in said
    assert f"not stdout={svc.log}" in said, "it says which log file it does not use"
    assert not svc.log.exists()
    os.kill(host_pid_of_init(proc), signal.SIGTERM)  # what docker stop does
    assert proc.wait(timeout=15) == 0
    assert "stopping" in text(out)


ORPHANS = {
    "setsid -f": "setsid -f {start} > {out} 2>&1",
    "( ... & )": "( {start} > {out} 2>&1 & )",
    "nohup ... & (its shell exits)": "sh -c {nohup}",
}


@needs_namespaces
@needs("tini", "dumb-init", "setsid", "nohup")
@pytest.mark.parametrize("init", ["tini", "dumb-init", "sh"])
@pytest.mark.parametrize("how", list(ORPHANS))
@pytest.mark.scenario(
    "Managers",
    "start orphaned in a container (its parent is now PID 1)",
    lost="detaches and logs to stdout=; the shell's next line runs",
)
def test_an_orphaned_start_detaches(make_service, init, how):
    svc = make_service(body=SAYS_PID)
    said = svc.dir / "start.out"
    start = app(svc, "start")
    nohup = shlex.quote(f"nohup {start} > {said} 2>&1 &")
    line = ORPHANS[how].format(start=start, out=said, nohup=nohup)
    script = f"{line}; echo next-line-ran; read _; {app(svc, 'stop')}"
    prefix = [] if init == "sh" else [init, "--"]
    proc, out = in_namespace(svc, *prefix, "sh", "-c", script)
    wait_for(lambda: "started (pid" in text(said), timeout=20, what="start to detach and say so")
    pid = svc.pid_from(text(said))
    wait_for(lambda: f"in main {pid}\n" in svc.log_text(), what="main's line in stdout=")
    assert "foreground" not in text(said)
    release(proc)
    assert "next-line-ran" in text(out)
    assert f"svc stopped (pid {pid})" in text(out)


@needs_namespaces
@pytest.mark.scenario(
    "Managers",
    "start in a container's entrypoint script (sh as PID 1)",
    lost="start returns once ready and the script's next line runs; output in stdout=",
)
def test_start_in_an_entrypoint_script_returns(make_service):
    svc = make_service(body=SAYS_PID)
    then = f"{app(svc, 'restart')}; {app(svc, 'stop')}"
    script = f"{app(svc, 'start')}; echo next-line-ran; read _; {then}"
    proc, out = in_namespace(svc, "sh", "-c", script)
    wait_for(lambda: "next-line-ran" in text(out), timeout=20, what="the script's next line")
    pid = svc.pid_from(text(out))
    assert f"in main {pid}\n" in svc.log_text()
    release(proc)
    said = text(out)
    assert f"svc stopped (pid {pid})\nsvc started (pid " in said, "a detached daemon restarts"
    assert said.count("svc stopped (pid") == 2 and "not restarted" not in said


@needs_namespaces
@needs("tini")
@pytest.mark.parametrize("init", ["sh", "tini"])
@pytest.mark.scenario(
    "Managers",
    "start as a container's one command, through sh -c (Docker's shell form)",
    lost="stays in the foreground (detached, the container would end with the shell); warns",
)
@pytest.mark.linux_only("detecting a manager walks /proc (its parent, cgroup, environment)")
def test_a_shell_running_only_start_keeps_it_in_the_foreground(make_service, init):
    svc = make_service(body=SAYS_PID)
    prefix = [] if init == "sh" else [init, "--"]
    proc, out = in_namespace(svc, *prefix, "sh", "-c", app(svc, "start"))
    wait_for(lambda: "in main" in text(out), timeout=20, what="main, in the foreground")
    assert "start acts as run" in text(out)
    assert "warning:" in text(out) and "exec" in text(out)
    assert not svc.log.exists()
    service = wait_for(lambda: service_under(proc.pid, svc), what="the service")
    os.kill(service, signal.SIGTERM)
    proc.wait(timeout=15)
    assert "stopping" in text(out)


# -- item 16: supervisord and a shell that does not exec ------------------------


def wrapper_script(svc) -> str:
    """A program's wrapper script that runs start without exec."""
    script = svc.dir / "wrapper.sh"
    script.write_text(f"#!/bin/sh\ncd {shlex.quote(str(svc.dir))}\n{app(svc, 'start')}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("user", [None, "nobody"])
@pytest.mark.parametrize("wrapper", ["sh -c", "wrapper script"])
@pytest.mark.scenario(
    "Managers",
    "supervisord runs start through a shell that does not exec it",
    lost="a warning in its log; supervisorctl stop stops the service too, nothing left unmanaged",
)
@pytest.mark.linux_only("detecting a manager walks /proc (its parent, cgroup, environment)")
def test_supervisord_through_a_shell(make_service, wrapper, user):
    if user is not None and os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    svc = make_service(body=SAYS_PID, stdout=None, user=user)
    command = f"sh -c {shlex.quote(app(svc, 'start'))}" if wrapper == "sh -c" else None
    manager = Supervisord(svc.dir, command or wrapper_script(svc), dict(svc.env))
    try:
        wait_for(lambda: "in main" in manager.output(), timeout=30, what="main's line")
        service = svc.read_pid()
        shell = int(manager.ctl("pid", "svc").strip())
        assert service != shell and int(proc_stat(service)[1]) == shell
        manager.ctl("stop", "svc")
        wait_for(lambda: is_gone(service), what="the service to stop with its shell")
        assert "STOPPED" in manager.ctl("status", "svc")
        assert "running in the foreground under supervisord" in manager.output()
        assert "warning: supervisord runs this command through a shell" in manager.output()
    finally:
        manager.close()


# -- item 17: restart of a manager's child ---------------------------------------


def assert_refused(svc, result, pid: int, advice: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not restarted" in result.stderr and advice in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert svc.read_pid() == pid and not is_gone(pid)
    detached = [p for p in marked_pids(svc.mark) if wears_badge(p)]
    assert detached == [], "no detached instance was started"


def wears_badge(pid: int) -> bool:
    """A detached daemon's mark (``_detach.wear_group_badge``)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    return any(os.readlink(fd).startswith(BADGE_LINK) for fd in fds if fd.exists())


@pytest.mark.timeout(90)
@pytest.mark.parametrize("listen", [False, True], ids=["stop and start", "listen= handover"])
@pytest.mark.scenario(
    "Managers",
    "restart of the instance supervisord runs",
    lost="refused in one line naming supervisorctl restart; supervisord's child runs on",
)
@pytest.mark.linux_only("detecting a manager walks /proc (its parent, cgroup, environment)")
def test_restart_under_supervisord_is_refused(make_service, tmp_path, listen):
    sockets = {"listen": [f"unix:{tmp_path / 'svc.sock'}"]} if listen else {}
    svc = make_service(body=SAYS_PID, stdout=None, **sockets)
    manager = Supervisord(svc.dir, app(svc, "start"), dict(svc.env))
    try:
        wait_for(lambda: "RUNNING" in manager.ctl("status", "svc"), timeout=30, what="RUNNING")
        pid = int(manager.ctl("pid", "svc").strip())
        wait_for(lambda: svc.read_pid() == pid, what="its pid in the pidfile")
        result = svc.cli("restart")
        assert_refused(svc, result, pid, "use supervisorctl restart svc")
        assert manager.ctl("pid", "svc").strip() == str(pid)
        manager.ctl("restart", "svc")  # the way it does work
        wait_for(lambda: is_gone(pid), what="supervisorctl restart to stop the old one")
        wait_for(lambda: "RUNNING" in manager.ctl("status", "svc"), timeout=30, what="RUNNING")
        assert manager.ctl("pid", "svc").strip() != str(pid)
    finally:
        manager.close()


@pytest.mark.scenario(
    "Managers",
    "restart of a run instance systemd runs (Type=notify)",
    lost="refused in one line naming systemctl restart; the instance runs on",
)
@pytest.mark.linux_only("detecting a manager walks /proc (its parent, cgroup, environment)")
def test_restart_of_a_notify_service_is_refused(make_service, tmp_path):
    listener = NotifyListener(str(tmp_path / "notify"))
    svc = make_service(body=SAYS_PID, stdout=None)
    proc = svc.popen("run", env=dict(svc.env, NOTIFY_SOCKET=listener.env_value))
    try:
        listener.until("READY=1")
        assert_refused(svc, svc.cli("restart"), proc.pid, "use systemctl restart ")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        listener.sock.close()


@needs_namespaces
@needs("tini", "nsenter")
@pytest.mark.scenario(
    "Managers",
    "restart, inside a container, of the service its init runs",
    lost="refused (the container would end); the service runs on",
)
@pytest.mark.linux_only("detecting a manager walks /proc (its parent, cgroup, environment)")
def test_restart_of_a_containers_service_is_refused(make_service):
    svc = make_service(body=SAYS_PID)
    proc, out = in_namespace(svc, "tini", "--", sys.executable, str(svc.script), "start")
    wait_for(lambda: "in main 2\n" in text(out), what="main as PID 2")
    init = host_pid_of_init(proc)
    enter = ["nsenter", "-t", str(init), "-p", "-m", *shlex.split(app(svc, "restart"))]
    result = subprocess.run(enter, capture_output=True, text=True, timeout=30, env=svc.env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not restarted: pid 2 runs in the foreground under tini" in result.stderr
    assert "restart the container" in result.stderr
    assert proc.poll() is None and svc.read_pid() == 2
    os.kill(init, signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


# -- item 18: other supervisors ---------------------------------------------------


# Each program: its stop, its exit, and its restart as the refusal names it.
SUPERVISE_COMMANDS = {
    "runsv": (("sv", "down"), ("sv", "exit"), "sv restart"),
    "s6-supervise": (("s6-svc", "-d"), ("s6-svc", "-x"), "s6-svc -r"),
    "supervise": (("svc", "-d"), ("svc", "-x"), "svc -t"),
}


class Supervise:
    """A real one-service supervisor (runsv, s6-supervise, supervise) on a service directory."""

    def __init__(self, program: str, folder: Path, run: str, env: dict[str, str]) -> None:
        self.program = program
        self.dir = folder / "service"
        self.dir.mkdir()
        script = self.dir / "run"
        script.write_text(f"#!/bin/sh\nexec 2>&1\n{run}\n")
        script.chmod(0o755)
        self.out = folder / "supervise.out"
        with self.out.open("w") as sink:
            self.proc = subprocess.Popen(
                [program, str(self.dir)], stdout=sink, stderr=subprocess.STDOUT, env=env
            )

    def child(self) -> int:
        """The process the supervisor runs (the run script's, or what it exec'd)."""
        return wait_for(lambda: next(iter(children_of(self.proc.pid)), None), what="its child")

    def stop(self) -> None:
        stop = SUPERVISE_COMMANDS[self.program][0]
        subprocess.run([*stop, str(self.dir)], check=True, timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            subprocess.run([*SUPERVISE_COMMANDS[self.program][1], str(self.dir)], timeout=30)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


SUPERVISORS = [
    pytest.param(name, marks=needs(name, SUPERVISE_COMMANDS[name][0][0]))
    for name in ("runsv", "s6-supervise", "supervise")
]


@pytest.mark.parametrize("program", SUPERVISORS)
@pytest.mark.parametrize("exec_", [True, False], ids=["exec", "no exec"])
@pytest.mark.scenario(
    "Managers",
    "start in a runit, s6 or daemontools run script",
    lost="stays in the foreground (no restart loop on 'already running'); its stop stops it",
)
@pytest.mark.linux_only("detecting a manager walks /proc (its parent, cgroup, environment)")
def test_start_under_a_one_service_supervisor(make_service, program, exec_):
    svc = make_service(body=SAYS_PID)
    run = ("exec " if exec_ else "") + app(svc, "start")
    supervise = Supervise(program, svc.dir, run, dict(svc.env))
    try:
        child = supervise.child()
        wait_for(lambda: "in main" in text(supervise.out), what="main, in the foreground")
        service = svc.read_pid()
        if exec_:
            assert service == child
        else:
            assert int(proc_stat(service)[1]) == child, "the run script's shell is its parent"
            assert f"warning: {program} runs this command through a shell" in text(supervise.out)
        assert f"running in the foreground under {program}" in text(supervise.out)
        assert not svc.log.exists()
        result = svc.cli("restart")
        assert_refused(
            svc, result, service, f"use {SUPERVISE_COMMANDS[program][2]} {supervise.dir}"
        )
        supervise.stop()
        wait_for(lambda: is_gone(service), what=f"the service to stop with {program}'s stop")
        wait_for(lambda: "stopping" in text(supervise.out), what="a graceful stop")
        # s6-supervise forks for a finish script (there is none): wait for that to pass.
        only = [supervise.proc.pid]
        wait_for(lambda: marked_pids(svc.mark) == only, what="nothing left but the supervisor")
    finally:
        supervise.close()


@pytest.mark.timeout(90)
@pytest.mark.scenario(
    "Managers",
    "start under python -m supervisor.supervisord",
    lost="recognised as supervisord: stays in the foreground; supervisorctl stop stops it",
)
def test_supervisord_run_as_a_module(make_service):
    svc = make_service(body=SAYS_PID, stdout=None)
    manager = Supervisord(svc.dir, app(svc, "start"), dict(svc.env), as_module=True)
    try:
        wait_for(lambda: "in main" in manager.output(), timeout=30, what="main's line")
        pid = int(manager.ctl("pid", "svc").strip())
        assert svc.read_pid() == pid, "start did not fork away from supervisord"
        assert "running in the foreground under supervisord" in manager.output()
        manager.ctl("stop", "svc")
        wait_for(lambda: is_gone(pid), what="the stop")
        assert "stopping" in manager.output()
    finally:
        manager.close()


# -- the pure parts, in-process ------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "one"),
    [(["sh", "-c", "python app.py start"], True),
     (["/bin/sh", "-ec", "exec python app.py start 2>&1 >/dev/null"], True),
     (["bash", "-l", "-c", "--", "python app.py start"], True),
     (["sh", "-c", "python app.py start; echo next"], False),
     (["sh", "-c", "python app.py start && sleep 1"], False),
     (["sh", "-c", "python app.py start &"], False),
     (["sh", "-c", "python app.py start | tee x"], False),
     (["sh", "-c", "python app.py start\nnext"], False),
     (["sh", "-c", "(python app.py start)"], False),
     (["sh", "/entrypoint.sh"], False), (["sh"], False), (["sh", "-e"], False)],
)  # fmt: skip
def test_a_shell_that_runs_one_command(words, one):
    assert runs_one_command(words) is one


def test_without_the_kernels_children_list_the_earliest_child_counts():
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    listing = Path(f"/proc/{shell.pid}/task/{shell.pid}/children")
    try:
        children = wait_for(lambda: listing.read_text().split()[1:] and listing.read_text().split())
        assert _earliest_child(shell.pid) == int(children[0])
    finally:
        for child in children_of(shell.pid):
            os.kill(child, signal.SIGKILL)
        shell.wait()
