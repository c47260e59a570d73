"""Promises under pressure: the wrong process, two daemons, a forged reload, a dead dispatcher.

Each test here reproduces one failure an adversarial review found, from outside,
with real processes; each was seen failing before its fix.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import IDLE, alive, is_gone, proc_stat, proc_status, wait_for
from test_hooks import with_hooks

from daemonize_deco._startup import StartupWatcher

pytestmark = pytest.mark.timeout(90)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")

ON_STOP_MARKER = """
@main.on_stop
def say_stopping():
    print('on_stop ran', flush=True)
"""

RELOAD_MARKER = """
@main.on_reload
def say_reloaded():
    print('on_reload ran', flush=True)
"""


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def sigblk(pid: int) -> int:
    return int(proc_status(pid)["SigBlk"], 16)


def run_into_log(svc, **kw):
    """``run`` with its output appended to the service's log, as a detached daemon's is."""
    with open(svc.log, "a") as log:  # the child has its own copy once started
        return svc.popen("run", stdout=log, **kw)


def host_program(svc, code: str) -> subprocess.CompletedProcess[str]:
    """Run a program that imports the service script and drives it with main.cli()."""
    program = svc.dir / "host.py"
    program.write_text(
        f"import sys\nsys.path.insert(0, {str(svc.dir)!r})\nfrom {svc.name} import main\n"
        + textwrap.dedent(code)
    )
    return subprocess.run(
        [sys.executable, str(program)], capture_output=True, text=True, env=svc.env, timeout=60
    )


# -- wrong process, or two daemons ---------------------------------------------


@pytest.mark.scenario(
    "Faults",
    "Ctrl-C to the starter's process group just after the fork",
    lost="never an invisible daemon or a second one: either started and visible, or nothing left",
)
def test_ctrl_c_during_start_never_leaves_an_invisible_daemon(make_service):
    body = "sleep(0.3)\nready()\n" + IDLE
    svc = make_service(body=body, wait_ready=True, stop_timeout=5.0)
    for attempt in range(12):
        starter = svc.popen("start", start_new_session=True)
        wait_for(lambda s=starter: children_of(s.pid) or s.poll() is not None, what="the fork")
        # Spread the interrupt over the window: the intermediate's waitpid, the pid line, the wait.
        deadline = time.perf_counter() + attempt * 0.0004
        while time.perf_counter() < deadline:
            pass
        try:
            os.killpg(starter.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        out, err = starter.communicate(timeout=30)
        assert "Traceback" not in err, err
        daemons = wait_for(
            lambda: ((d := svc.daemons()) == [] or svc.read_pid() in d) and (d,),
            what="no daemon, or one the pidfile names",
        )[0]
        status = svc.cli("status")
        if daemons:
            assert len(daemons) == 1, f"attempt {attempt}: two daemons {daemons}"
            assert status.returncode == 0, f"attempt {attempt}: invisible daemon: {status.stdout}"
            assert "started" in out, f"attempt {attempt}: {out} {err}"
            svc.stop_gracefully(daemons[0])
        else:
            assert starter.returncode == 1, f"attempt {attempt}: {out} {err}"
            assert "interrupted" in err, err
            assert status.returncode == 3, status.stdout
        assert svc.daemons() == []


@pytest.mark.scenario(
    "Security",
    "stop of a run service started by a session leader (setsid, sshd, cron)",
    lost="the caller and its unrelated processes survive; only the service is stopped",
)
@pytest.mark.parametrize("ignores_term", [False, True], ids=["graceful", "SIGKILL escalation"])
def test_stop_of_run_never_kills_the_callers_group(make_service, ignores_term):
    body = (
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\n"
        "while True:\n    time.sleep(0.05)"
        if ignores_term
        else "print('up', flush=True)\n" + IDLE
    )
    svc = make_service(body=body, stop_timeout=1.0)
    # `setsid bash -c "python svc.py run & sleep 1000 & wait"`: bash leads the session.
    pids = svc.dir / "pids"
    script = f'echo $BASHPID > {pids}; "$@" & sleep 1000 & echo $! >> {pids}; wait'
    wrapper = svc.popen(
        "run",
        command_prefix=["setsid", "bash", "-c", script, "x"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lines = wait_for(
        lambda: pids.exists() and len(pids.read_text().split()) == 2 and pids.read_text(),
        what="the wrapper's pids",
    ).split()
    assert int(lines[0]) == wrapper.pid, "bash leads its session"
    sleeper = int(lines[1])
    svc_pid = wait_for(svc.read_pid, what="the service's pid")
    result = svc.cli("stop")
    assert result.returncode == 0, result.stderr
    assert "left running" not in result.stdout
    wait_for(lambda: is_gone(svc_pid), what="the service to end")
    assert alive(wrapper.pid), "stop killed the bash that started the service"
    assert alive(sleeper), "stop killed an unrelated process in the caller's group"


@pytest.mark.scenario(
    "Faults",
    "A child forked in main that ends with sys.exit()",
    lost="the child's exit is its own: start succeeds at once, the daemon keeps running",
)
def test_forked_child_exiting_is_not_the_service(make_service):
    body = (
        textwrap.dedent("""
        child = os.fork()
        if child == 0:
            sys.exit(0)
        _, status = os.waitpid(child, 0)
        print('helper exited', os.waitstatus_to_exitcode(status), flush=True)
        ready()
    """)
        + IDLE
    )
    svc = make_service(body=body, wait_ready=True, stop_timeout=20.0)
    result = svc.cli("start")
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    assert "helper exited 0" in svc.log_text()
    assert alive(pid)
    svc.stop_gracefully(pid)


# -- security ---------------------------------------------------------------------

# nobody may not enter /root, where pyenv's interpreters live: Debian's python3 then.
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
SQUATTER = """
import socket, sys, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1].replace('@', '\\0', 1))
s.listen(8)
print('bound', flush=True)
while True:
    c, _ = s.accept()
    c.recv(100)
    c.sendall(b'ok\\n')
    c.close()
"""


def control_sockets(pid: int) -> list[str]:
    """Abstract names of the listening unix sockets ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    names = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("@"):
            names.append(fields[7])
    return names


@pytest.mark.linux_only(
    "squats an abstract control name; a socket file is in the service's own directory"
)
@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "Another user squats or spoofs the reload control socket",
    lost="reload never claims a reload that did not happen; on_reload runs; children keep no name",
)
def test_control_socket_cannot_be_squatted_or_spoofed(make_service):
    body = (
        textwrap.dedent("""
        child = os.fork()
        if child == 0:
            time.sleep(300)
            os._exit(0)
        print('child', child, flush=True)
    """)
        + IDLE
    )
    svc = with_hooks(make_service, RELOAD_MARKER, body=body)
    svc.dir.chmod(0o755)
    # Squat the name the daemon would use for this pidfile (its device and inode).
    svc.pidfile.touch()
    st = svc.pidfile.stat()
    predictable = f"@daemonize_deco/{st.st_dev:x}:{st.st_ino:x}"
    squatter = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         SYSTEM_PYTHON, "-c", SQUATTER, predictable],
        stdout=subprocess.PIPE, text=True, env=svc.env,
    )  # fmt: skip
    svc.popens.append(squatter)
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "bound"
    pid = svc.start()
    child = int(wait_for(lambda: re.search(r"child (\d+)", svc.log_text()), what="child")[1])
    result = svc.cli("reload")
    assert result.returncode == 0, result.stderr
    if "reloaded" in result.stdout:
        assert "on_reload ran" in svc.log_text(), "reload claimed a reload that did not happen"
    else:
        assert "SIGHUP" in result.stdout + result.stderr, result
    wait_for(lambda: "on_reload ran" in svc.log_text(), what="on_reload to run")
    names = control_sockets(pid)
    assert names, "the daemon runs without its control channel"
    assert predictable not in names
    assert control_sockets(child) == [], "a forked child keeps the control socket's name"
    svc.stop_gracefully(pid)


HOLDER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1].replace('@', '\\0', 1))
print('connected', flush=True)
sys.stdin.read()
"""


def cpu_ticks(pid: int) -> int:
    stat = proc_stat(pid)
    assert stat is not None
    return int(stat[11]) + int(stat[12])  # utime + stime


@pytest.mark.linux_only("finds the abstract control name in /proc/net/unix")
@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "Another user holds a connection to a supervisor's control socket, sending nothing",
    lost="nothing: the supervisor sleeps on (it spun at 100% CPU); reload is acknowledged",
)
def test_a_connection_to_the_supervisors_control_socket_keeps_it_asleep(make_service):
    svc = with_hooks(make_service, RELOAD_MARKER, restart="on-failure")
    supervisor = svc.start()
    # The name is random, but /proc/net/unix shows it to every user.
    (name,) = [n for n in control_sockets(supervisor) if n.startswith("@daemonize_deco/")]
    holder = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         SYSTEM_PYTHON, "-c", HOLDER, name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=svc.env,
    )  # fmt: skip
    svc.popens.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "connected"
    before = cpu_ticks(supervisor)
    time.sleep(1.0)  # a window to measure, not a wait for something
    assert cpu_ticks(supervisor) - before < 10, "a supervisor spinning in poll() (100 ticks/s)"
    result = svc.cli("reload")
    assert result.returncode == 0, result.stderr
    assert "on_reload ran" in svc.log_text()
    holder.communicate(timeout=10)  # its stdin closed: it leaves
    svc.stop_gracefully(supervisor)


# -- the dispatcher and the exit status ------------------------------------------------

RAISING_RELOAD = """
@main.on_reload
def leave():
    print('on_reload ran', flush=True)
    sys.exit(3)
"""


@pytest.mark.scenario(
    "Faults",
    "A callback raises SystemExit",
    lost="logged; the dispatcher carries on: later reloads answer, on_stop runs, stop is graceful",
)
def test_callback_raising_systemexit_keeps_the_dispatcher(make_service):
    svc = with_hooks(make_service, RAISING_RELOAD + ON_STOP_MARKER)
    pid = svc.start()
    for _ in range(2):
        result = svc.cli("reload", timeout=20)
        assert result.returncode == 1, result
        assert "SystemExit: 3" in result.stderr
    assert "SystemExit" in svc.log_text()
    svc.stop_gracefully(pid)
    assert "on_stop ran" in svc.log_text()


MANY_FILES = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
HELD = [open(os.devnull) for _ in range(1100)]
"""


@pytest.mark.scenario(
    "Load",
    "1,100 descriptors open before the service starts (numbers above 1023)",
    lost="the dispatcher runs: reload is acknowledged, on_stop runs, stop is graceful",
)
@pytest.mark.parametrize("command", ["start", "run"])
def test_dispatcher_works_with_descriptors_above_1023(make_service, command):
    svc = with_hooks(make_service, RELOAD_MARKER + ON_STOP_MARKER, prelude=MANY_FILES)
    if command == "start":
        pid = svc.start()
    else:
        runner = run_into_log(svc)
        pid = runner.pid
        wait_for(lambda: svc.read_pid() == pid, what="run to write its pid")
    result = svc.cli("reload", timeout=20)
    assert result.returncode == 0, result
    assert "reloaded" in result.stdout
    assert "on_reload ran" in svc.log_text()
    svc.stop_gracefully(pid)
    assert "on_stop ran" in svc.log_text()


STORM = """
@main.on_stop
def slow_stop():
    print('on_stop begins', flush=True)
    while not os.path.exists(os.path.join(os.path.dirname(__file__), 'go')):
        time.sleep(0.01)
    time.sleep(2)  # still busy when main returns and asks the dispatcher to quit

@main.on_signal(signal.SIGRTMIN + 1)
def counted():
    pass
"""


@pytest.mark.scenario(
    "Load",
    "80,000 queued signals fill the record pipe while on_stop is slow",
    lost="main's exit status and the pidfile's removal do not depend on a write to that pipe",
)
def test_signal_storm_does_not_break_the_cleanup(make_service):
    go = "os.path.exists(os.path.join(os.path.dirname(__file__), 'go'))"
    body = IDLE + f"\nwhile not {go}:\n    time.sleep(0.01)\nprint('main returns 0', flush=True)"
    svc = with_hooks(make_service, STORM, body=body, stop_timeout=10.0)
    pid = svc.start()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: "on_stop begins" in svc.log_text(), what="on_stop")
    rt = signal.SIGRTMIN + 1
    sent = 0
    while sent < 80_000 and alive(pid):
        try:
            os.kill(pid, rt)
            sent += 1
        except BlockingIOError:
            time.sleep(0.001)  # the queue of pending real-time signals is full
    (svc.dir / "go").touch()
    wait_for(lambda: is_gone(pid), timeout=30, what="the daemon to exit")
    log = svc.log_text()
    assert "main returns 0" in log
    assert "Traceback" not in log, log[-2000:]
    assert not svc.pidfile.exists(), "the pidfile was left behind"
    assert svc.cli("status").returncode == 3


SLOW_STOP = """
@main.on_stop
def slow_stop():
    print('on_stop begins', flush=True)
    time.sleep(30)
"""


@pytest.mark.scenario(
    "Faults",
    "A second Ctrl-C in run while on_stop is slow",
    lost="it acts at once: exit 130 with the pidfile removed, not after the callback",
)
def test_second_ctrl_c_in_run_acts_at_once(make_service):
    svc = with_hooks(make_service, SLOW_STOP, stdout=None)
    runner = svc.popen("run")
    wait_for(lambda: svc.read_pid() == runner.pid, what="run to write its pid")
    runner.send_signal(signal.SIGINT)
    assert runner.stdout is not None
    # Both lines: main's says the first Ctrl-C was handled on the main thread (two
    # interrupts before Python runs its handler once are one, as in any program).
    seen = ""
    for line in runner.stdout:
        seen += line
        if "on_stop begins" in seen and "stopping" in seen:
            break
    else:
        pytest.fail(f"run ended before on_stop began: {seen!r}")
    runner.send_signal(signal.SIGINT)
    assert runner.wait(timeout=5) == 130
    assert not svc.pidfile.exists()


@pytest.mark.scenario(
    "Faults",
    "main returns while a non-daemon thread still writes",
    lost="the pidfile stays locked until the thread is done; its last line reaches the log",
)
@pytest.mark.parametrize("command", ["start", "run"])
def test_lock_is_held_until_non_daemon_threads_end(make_service, command):
    body = """
        def finish():
            while not os.path.exists(os.path.join(os.path.dirname(__file__), 'go')):
                time.sleep(0.01)
            print('thread done', flush=True)
        threading.Thread(target=finish).start()
        print('main returned', flush=True)
    """
    svc = make_service(body=body, stop_timeout=20.0)
    if command == "start":
        pid = svc.start()
    else:
        runner = run_into_log(svc)
        pid = runner.pid
    wait_for(lambda: "main returned" in svc.log_text(), what="main to return")
    status = svc.cli("status")
    assert status.returncode == 0, f"the thread still writes, yet: {status.stdout}"
    second = svc.cli("start")
    assert second.returncode == 0 and f"already running (pid {pid})" in second.stdout
    (svc.dir / "go").touch()
    wait_for(lambda: is_gone(pid), what="the process to end")
    assert "thread done" in svc.log_text()
    assert not svc.pidfile.exists()


@pytest.mark.scenario(
    "Bad input",
    "Launched with SIGTERM and SIGHUP blocked",
    lost="the service unblocks what it handles: stop is graceful, reload is acknowledged",
)
def test_inherited_blocked_signals_are_unblocked(make_service):
    svc = with_hooks(make_service, RELOAD_MARKER)
    launcher = (
        "import os, signal, sys\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", launcher, str(svc.script), "start"],
        capture_output=True, text=True, env=svc.env, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    handled = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1)) | (1 << (signal.SIGINT - 1))
    assert sigblk(pid) & handled == 0, hex(sigblk(pid))
    assert svc.cli("reload", timeout=20).returncode == 0
    assert "on_reload ran" in svc.log_text()
    svc.stop_gracefully(pid)


ASYNCIO_BODY = """
import asyncio

async def serve():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: print('usr1 handled', flush=True))
    print('asyncio up', flush=True)
    while not should_stop():
        await asyncio.sleep(0.05)

asyncio.run(serve())
"""


@pytest.mark.scenario(
    "Faults",
    "asyncio's loop.add_signal_handler takes the process-wide wakeup fd",
    lost="SIGHUP still reloads and on_stop still runs; the conflict is said in the log",
)
def test_asyncio_signal_handler_does_not_silently_break_hooks(make_service):
    svc = with_hooks(make_service, RELOAD_MARKER + ON_STOP_MARKER, body=ASYNCIO_BODY)
    pid = svc.start()
    wait_for(lambda: "asyncio up" in svc.log_text(), what="the loop")
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: "usr1 handled" in svc.log_text(), what="the service's own handler")
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "on_reload ran" in svc.log_text(), what="kill -HUP to reload")
    assert "wakeup fd" in svc.log_text()
    svc.stop_gracefully(pid)
    assert "on_stop ran" in svc.log_text()


# -- low -------------------------------------------------------------------------


@pytest.mark.scenario(
    "Faults",
    "The daemon is already gone when its pid line is read",
    lost="the reason it sent is reported, not 'it exited before it was ready'",
)
def test_failure_reason_survives_an_early_reap():
    gone = subprocess.Popen(["true"])
    gone.wait()
    read_end, write_end = os.pipe()
    os.write(write_end, f"pid {gone.pid}\nfail ValueError: bad port 99999\n".encode())
    os.close(write_end)
    with StartupWatcher(read_end) as watcher:
        report = watcher.wait(5)
    assert report.outcome == "failed"
    assert report.reason == "ValueError: bad port 99999"


@pytest.mark.scenario(
    "Load",
    "50 start/stop cycles from one host program",
    lost="no descriptor leaks into the host",
)
def test_start_from_a_host_leaks_no_descriptor(make_service):
    svc = make_service()
    result = host_program(
        svc,
        """
        import os
        before = len(os.listdir('/proc/self/fd'))
        for _ in range(50):
            assert main.cli(['start']) == 0
            assert main.cli(['stop']) == 0
        print('descriptors', before, len(os.listdir('/proc/self/fd')))
        """,
    )
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split("descriptors")[1].split()
    assert before == after


@pytest.mark.scenario(
    "Security",
    "A host program listening on a port starts the daemon and exits",
    lost="the daemon keeps none of the host's descriptors: the host can listen again at once",
)
def test_daemon_keeps_none_of_the_hosts_descriptors(make_service):
    svc = make_service()
    result = host_program(
        svc,
        """
        import socket
        listener = socket.create_server(('127.0.0.1', 0))
        print('port', listener.getsockname()[1])
        assert main.cli(['start']) == 0
        """,
    )
    assert result.returncode == 0, result.stderr
    port = int(result.stdout.split("port")[1].split()[0])
    pid = svc.pid_from(result.stdout)
    again = socket.create_server(("127.0.0.1", port))  # EADDRINUSE if the daemon kept it
    again.close()
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Faults",
    "A host program's buffered logging output at the moment it starts the daemon",
    lost="each line appears once in the host's log",
)
def test_hosts_buffered_log_lines_appear_once(make_service):
    svc = make_service()
    log = svc.dir / "host.log"
    result = host_program(
        svc,
        f"""
        import logging, logging.handlers
        target = logging.FileHandler({str(log)!r})
        logging.getLogger().addHandler(logging.handlers.MemoryHandler(100, target=target))
        logging.getLogger().warning('host line before start')
        assert main.cli(['start']) == 0
        assert main.cli(['stop']) == 0
        """,
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text().count("host line before start") == 1, log.read_text()


@pytest.mark.scenario(
    "Bad input",
    "run with standard input closed (<&-)",
    lost="the /dev/null put on descriptor 0 is inherited: children see an open stdin",
)
def test_replacement_stdin_is_inherited_by_children(make_service):
    body = """
        probe = subprocess.run(['sh', '-c', 'test -e /proc/self/fd/0 && echo open || echo closed'],
                               capture_output=True, text=True)
        print('child stdin', probe.stdout.strip(), flush=True)
    """
    svc = make_service(body=body, stdout=None)
    result = subprocess.run(
        ["sh", "-c", '"$@" <&-', "x", *svc.argv("run")],
        capture_output=True, text=True, env=svc.env, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "child stdin open" in result.stdout


# main forks three children that exit at once, and says so.
FORK_THREE_TIMES = """
for _ in range(3):
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
print('forked', flush=True)
"""


@pytest.mark.scenario(
    "Faults",
    "os.fork() in main on Python 3.12+ (the multi-threaded fork warning)",
    lost="no DeprecationWarning: the dispatcher thread is not running across the fork",
)
def test_fork_in_main_has_no_threads_to_warn_about(make_service):
    svc = with_hooks(make_service, RELOAD_MARKER, body=FORK_THREE_TIMES + IDLE)
    svc.env["PYTHONWARNINGS"] = "default"
    pid = svc.start()
    wait_for(lambda: "forked" in svc.log_text(), what="the forks")
    assert "multi-threaded" not in svc.log_text(), svc.log_text()
    assert svc.cli("reload", timeout=20).returncode == 0, "the dispatcher came back after the fork"
    assert "on_reload ran" in svc.log_text()
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Faults",
    "os.fork() in main with health= (its endpoint's thread)",
    lost="no DeprecationWarning on 3.12 (the endpoint's thread steps aside too); the endpoint "
    "answers after the fork (on 3.13 at once, and then 3.13 warns: a probe outranks a warning)",
)
def test_fork_in_main_with_a_health_endpoint(make_service):
    from test_health import get  # noqa: PLC0415
    from test_kvserver import free_port  # noqa: PLC0415

    port = free_port()
    body = FORK_THREE_TIMES + "while not should_stop():\n    time.sleep(0.05)\n"
    svc = make_service(body=body, health=f"tcp://127.0.0.1:{port}")
    svc.env["PYTHONWARNINGS"] = "default"
    pid = svc.start()
    wait_for(lambda: "forked" in svc.log_text(), what="the forks")
    assert get(port, "/livez") == (200, "alive\n")
    if sys.version_info < (3, 13):
        assert "multi-threaded" not in svc.log_text(), svc.log_text()
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Faults",
    "main returns while a non-daemon thread never ends",
    lost="bounded: after stop_timeout the process ends, says which threads it left, and unlocks",
)
@pytest.mark.parametrize("command", ["start", "run"])
def test_threads_that_never_end_are_left_after_stop_timeout(make_service, command):
    body = """
        def forever():
            while True:
                time.sleep(0.05)
        threading.Thread(target=forever, name='forever').start()
        print('main returned', flush=True)
    """
    svc = make_service(body=body, stop_timeout=1.0)
    if command == "start":
        pid = svc.start()
    else:
        runner = run_into_log(svc, stderr=subprocess.STDOUT)
        pid = runner.pid
    wait_for(lambda: is_gone(pid), timeout=15, what="the process to end after stop_timeout")
    assert "threads forever were still running 1s later" in svc.log_text()
    assert not svc.pidfile.exists()
    if command == "run":
        assert runner.wait(timeout=5) == 0


@pytest.mark.scenario(
    "Faults",
    "Ctrl-C while start waits for a lock that names no process",
    lost="start ends at once with status 1 and says so; the other holder's file is untouched",
)
def test_ctrl_c_while_start_waits_for_the_lock(make_service):
    svc = make_service(start_timeout=30.0)
    with open(svc.pidfile, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        starter = svc.popen("start")

        def retrying() -> bool:
            # The pidfile is open only for a moment each retry; between them
            # start sleeps, the one sleep on its way to the lock.
            try:
                if "nanosleep" in Path(f"/proc/{starter.pid}/wchan").read_text():
                    return True
                links = [
                    os.readlink(f"/proc/{starter.pid}/fd/{fd}")
                    for fd in os.listdir(f"/proc/{starter.pid}/fd")
                ]
            except OSError:
                return False
            return str(svc.pidfile) in links

        wait_for(retrying, what="start to retry the lock")
        started = time.monotonic()
        starter.send_signal(signal.SIGINT)
        out, err = starter.communicate(timeout=10)
        assert time.monotonic() - started < 5, "the interrupt waited for start_timeout"
    assert starter.returncode == 1, (out, err)
    assert "interrupted before it was started" in err and "Traceback" not in err
    assert svc.pidfile.exists(), "the holder's file was removed"


@pytest.mark.scenario(
    "Faults",
    "A host program that ignores SIGCHLD starts the daemon",
    lost="start reports started and the pidfile stays with the daemon (the kernel reaps for us)",
)
def test_start_from_a_host_that_ignores_sigchld(make_service):
    svc = make_service()
    result = host_program(
        svc,
        """
        import signal
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        assert main.cli(['start']) == 0
        """,
    )
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    assert svc.cli("status").returncode == 0
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Promises under pressure",
    "SIGTERM after SIGTERM while the service ends (several stop commands at once)",
    lost="the pidfile is removed and the last run recorded: the handlers stay until then, "
    "so the default action never kills the service half-way through its exit",
)
def test_repeated_sigterm_while_ending_leaves_no_pidfile(make_service):
    svc = make_service()
    for _ in range(5):
        pid = svc.start()
        pidfd = os.pidfd_open(pid)
        try:
            while not is_gone(pid):  # a storm for as long as the service lives
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                except ProcessLookupError:
                    break
        finally:
            os.close(pidfd)
        status = svc.cli("status")
        assert status.returncode == 3, status.stdout
        assert f"last run: pid {pid} stopped by SIGTERM" in status.stdout
        assert [p.name for p in svc.dir.glob(".*")] == [], "no temporary record left"


@pytest.mark.scenario(
    "Promises under pressure",
    "SIGTERM to run the moment its pidfile appears (before its handlers are in)",
    lost="the stop waits for the handlers: main starts already stopping, exits 0, "
    "and the pidfile is removed",
)
def test_sigterm_to_run_right_after_the_lock_is_graceful(make_service):
    svc = make_service(body="print('main ran', should_stop(), flush=True)\n" + IDLE, stdout=None)
    for _ in range(5):
        runner = svc.popen("run")
        deadline = time.monotonic() + 10
        while not svc.pidfile.exists() and time.monotonic() < deadline:
            pass  # as soon as possible: this is the race under test
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=10)
        assert runner.returncode == 0, (runner.returncode, err)
        assert "main ran" in out
        assert not svc.pidfile.exists()


@pytest.mark.linux_only("connects to the abstract claim name")
@pytest.mark.scenario(
    "Promises under pressure",
    "a service out of descriptors is asked for its deleted pidfile",
    lost="it does not spin: the connection it cannot accept is dropped; status still finds it",
)
def test_a_service_out_of_descriptors_does_not_spin_on_its_claim(make_service):
    body = """
held = []
while True:
    try:
        held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        break  # EMFILE: every descriptor is taken now
print('full', len(held), flush=True)
while not should_stop():
    sleep(3600)
"""
    svc = make_service(body=body)
    pid = svc.start()
    wait_for(lambda: "full" in svc.log_text(), what="the service to run out of descriptors")
    svc.pidfile.unlink()
    status = svc.cli("status")
    assert f"svc is running (pid {pid}" in status.stdout, status.stdout
    before = cpu_ticks(pid)
    time.sleep(1.0)  # the measurement window itself, not synchronisation
    assert cpu_ticks(pid) - before <= 5, "the service spins on a connection it cannot accept"
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: is_gone(pid), what="the service to stop")


# The endpoint's thread stalled 2 s in one round (as a frozen or starved thread
# would be) while main forks: the fork stops waiting for it after 1.5 s.
STALL_THEN_FORK = """
import daemonize_deco._health as health
handle = health.Connections.handle
stalled = []

def stalling(self, poller, ready):
    if not stalled and self.open:
        stalled.append(1)
        open(os.path.join(here, "stalling"), "w").close()
        time.sleep(2)
    return handle(self, poller, ready)

health.Connections.handle = stalling
while not os.path.exists(os.path.join(here, "fork")):
    sleep(0.02)
child = os.fork()
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
print("forked", flush=True)
while not should_stop():
    sleep(0.05)
"""


@pytest.mark.scenario(
    "Faults",
    "os.fork() in main while the health endpoint's thread is stalled past the fork's wait",
    lost="nothing: the thread forks alive and answers on (it took the pause it was no longer "
    "asked for, and quit for good)",
)
def test_a_fork_that_gives_up_waiting_leaves_the_endpoint_answering(make_service):
    from test_health import get  # noqa: PLC0415
    from test_kvserver import free_port  # noqa: PLC0415

    port = free_port()
    svc = make_service(
        body=STALL_THEN_FORK, prelude="here = os.path.dirname(__file__)",
        health=f"tcp://127.0.0.1:{port}",
    )  # fmt: skip
    pid = svc.start()
    stalling = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalling.sendall(b"GET /livez")  # the round that reads it stalls
    wait_for((svc.dir / "stalling").exists, what="the endpoint's thread to stall")
    (svc.dir / "fork").touch()
    wait_for(lambda: "forked" in svc.log_text(), what="the fork")
    stalling.close()
    for _ in range(3):
        assert get(port, "/livez", timeout=5) == (200, "alive\n")
    svc.stop_gracefully(pid)
