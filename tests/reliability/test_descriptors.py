"""Descriptors: the program's own files across start, and a start under a tiny ``ulimit -n``.

Each test starts real daemons and looks from outside (the files they write,
/proc, the pidfile, stderr); each was seen failing before its fix.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import IDLE, marked_pids, wait_for
from test_kvserver import free_port

pytestmark = pytest.mark.timeout(60)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def fd_targets(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return found


# -- the program's own files stay open in the daemon ---------------------------------


@pytest.mark.scenario(
    "Promises under pressure",
    "A file the script opened at module level (open(path, 'w')) before start",
    lost="nothing: the daemon writes on through it (it was /dev/null, every write vanished)",
)
@pytest.mark.parametrize("restart", ["no", "on-failure"])
def test_a_file_opened_before_start_is_written_by_the_daemon(make_service, tmp_path, restart):
    written = tmp_path / "written.txt"
    prelude = f"OUT = open({str(written)!r}, 'w')"
    body = "print('written by', os.getpid(), file=OUT, flush=True)\nprint('wrote', flush=True)\n"
    svc = make_service(body=body + IDLE, prelude=prelude, restart=restart)
    svc.start()
    wait_for(lambda: "wrote" in svc.log_text(), what="main's write")
    text = written.read_text()
    assert text.startswith("written by "), repr(text)
    writer = int(text.split()[2])  # with restart=, the supervisor's child
    assert str(written) in fd_targets(writer)
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Promises under pressure",
    "A sqlite3 database the script connected to at module level, written by main",
    lost="nothing: each row main commits is in the database",
)
def test_a_database_connected_before_start_is_written_by_the_daemon(make_service, tmp_path):
    database = tmp_path / "app.sqlite"
    prelude = (
        "import sqlite3\n"
        f"DB = sqlite3.connect({str(database)!r})\n"
        "DB.execute('create table if not exists runs (pid integer)')\n"
        "DB.commit()"
    )
    body = (
        "DB.execute('insert into runs values (?)', (os.getpid(),))\n"
        "DB.commit()\n"
        "print('committed', flush=True)\n"
    )
    svc = make_service(body=body + IDLE, prelude=prelude)
    pid = svc.start()
    wait_for(lambda: "committed" in svc.log_text(), what="main's commit")
    with sqlite3.connect(database) as reader:
        assert reader.execute("select pid from runs").fetchall() == [(pid,)]
    assert str(database) in fd_targets(pid)
    svc.stop_gracefully(pid)


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "Privileged action: a root-only 0600 file opened before start, then user='nobody'",
    lost="nothing: main, as nobody, writes through the descriptor it may not reopen",
)
def test_a_root_only_file_opened_before_dropping_privileges(make_service, tmp_path):
    secret = tmp_path / "root-only.log"
    secret.touch(mode=0o600)
    assert secret.stat().st_uid == 0 and secret.stat().st_mode & 0o777 == 0o600
    prelude = f"PRIVILEGED = open({str(secret)!r}, 'a')"
    body = textwrap.dedent(f"""\
        try:
            open({str(secret)!r}, 'a')
        except PermissionError:
            print('may not reopen it', flush=True)
        print('written as uid', os.getuid(), file=PRIVILEGED, flush=True)
        print('wrote', flush=True)
    """)
    svc = make_service(body=body + IDLE, prelude=prelude, user="nobody")
    pid = svc.start()
    wait_for(lambda: "wrote" in svc.log_text(), what="main's write")
    assert "may not reopen it" in svc.log_text()
    assert secret.read_text() == f"written as uid {pwd.getpwnam('nobody').pw_uid}\n"
    svc.stop_gracefully(pid)


# -- a start under a tight ulimit -n -------------------------------------------------

# The venv's interpreter itself needs 5 descriptors to start; from 12 to 16 (with
# listen= and restart=) a service runs.  Each limit runs out at another step.
LIMITS = [*range(5, 17), 20]
TIGHT = """ulimit -n "$0" && exec "$@" """


def under_limit(svc, limit: int, command: str, **kw):
    """``svc.py COMMAND`` with ``ulimit -n LIMIT``."""
    argv = ["bash", "-c", TIGHT, str(limit), *svc.argv(command)]
    return argv, dict(env=svc.env, text=True, **kw)


def assert_one_named_line(stderr: str, limit: int) -> None:
    """The failure is one line naming what could not be opened; never a raw OSError."""
    assert "Traceback" not in stderr, f"ulimit -n {limit}:\n{stderr}"
    assert "[Errno" not in stderr, f"ulimit -n {limit}: {stderr}"
    *warnings, line = stderr.splitlines()
    assert line.startswith("svc: ") and ": Too many open files" in line, (limit, stderr)
    assert all(w.startswith("daemonize_deco: ") for w in warnings), (limit, stderr)


def assert_nothing_left(svc, socket_file: Path | None, limit: int) -> None:
    wait_for(lambda: svc.daemons() == [] and not marked_pids(svc.mark), what=f"{limit}: gone")
    assert not svc.pidfile.exists(), f"ulimit -n {limit}: pidfile left"
    assert socket_file is None or not socket_file.exists(), f"ulimit -n {limit}: socket file"


def with_options(make_service, tmp_path, kind: str, body: str = IDLE):
    listen = {
        "tcp": [f"tcp://127.0.0.1:{free_port()}"],
        "unix": [f"unix:{tmp_path}/svc.sock"],
    }
    options: dict[str, object] = {}
    if "tcp" in kind or "unix" in kind:
        options["listen"] = listen["tcp" if "tcp" in kind else "unix"]
    if "restart" in kind:
        options["restart"] = "on-failure"
    socket_file = tmp_path / "svc.sock" if "unix" in kind else None
    return make_service(body=body, **options), socket_file


@pytest.mark.scenario(
    "Bad input",
    "start under ulimit -n 5 to 16 and 20 (plain, listen= TCP or Unix, restart=)",
    lost="one line naming what could not be opened, exit 1; no pidfile, process or socket file",
)
@pytest.mark.parametrize("kind", ["plain", "tcp", "unix", "restart", "unix+restart"])
def test_start_under_a_tight_descriptor_limit(make_service, tmp_path, kind):
    svc, socket_file = with_options(make_service, tmp_path, kind)
    outcomes = {}
    for limit in LIMITS:
        argv, kw = under_limit(svc, limit, "start")
        result = subprocess.run(argv, capture_output=True, timeout=30, **kw)
        outcomes[limit] = result.returncode
        if result.returncode == 0:
            assert "svc started (pid " in result.stdout and not result.stderr, (limit, result)
            stopped = svc.cli("stop")
            assert stopped.returncode == 0 and "stopped" in stopped.stdout, (limit, stopped)
        else:
            assert result.returncode == 1, (limit, result)
            assert_one_named_line(result.stderr, limit)
        assert_nothing_left(svc, socket_file, limit)
    assert outcomes[LIMITS[0]] == 1 and outcomes[LIMITS[-1]] == 0, outcomes


@pytest.mark.scenario(
    "Bad input",
    "run under ulimit -n 5 to 16 and 20 (plain, listen= Unix)",
    lost="one line naming what could not be opened, exit 1; no pidfile, socket file",
)
@pytest.mark.parametrize("kind", ["plain", "unix"])
def test_run_under_a_tight_descriptor_limit(make_service, tmp_path, kind):
    body = "print('serving', flush=True)\n" + IDLE  # print: main itself has no descriptor to spare
    svc, socket_file = with_options(make_service, tmp_path, kind, body)
    outcomes = {}
    for limit in LIMITS:
        said = tmp_path / f"run-{limit}.out"
        with open(said, "w") as out:
            argv, kw = under_limit(svc, limit, "run", stdout=out, stderr=subprocess.PIPE)
            runner = subprocess.Popen(argv, **kw)
        svc.popens.append(runner)
        wait_for(
            lambda r=runner, s=said: r.poll() is not None or "serving" in s.read_text(), what="run"
        )
        if runner.poll() is None:
            runner.terminate()
        _, stderr = runner.communicate(timeout=30)
        outcomes[limit] = runner.returncode
        if "serving" in said.read_text():
            assert runner.returncode == 0 and "Traceback" not in stderr, (limit, stderr)
        else:
            assert runner.returncode == 1, (limit, stderr)
            assert_one_named_line(stderr, limit)
        assert_nothing_left(svc, socket_file, limit)
    assert outcomes[LIMITS[0]] == 1 and outcomes[LIMITS[-1]] == 0, outcomes


@pytest.mark.scenario(
    "Bad input",
    "restart with listen= under ulimit -n 5 to 16 and 20",
    lost="nothing: a restart that has no room fails in one line and the running instance serves on",
)
def test_restart_with_listen_under_a_tight_descriptor_limit(make_service, tmp_path):
    svc, socket_file = with_options(make_service, tmp_path, "unix")
    running = svc.start()
    for limit in LIMITS:
        argv, kw = under_limit(svc, limit, "restart")
        result = subprocess.run(argv, capture_output=True, timeout=30, **kw)
        if result.returncode == 0:
            assert "svc restarted (pid " in result.stdout, (limit, result)
            running = int(result.stdout.split("(pid ")[1].split(";")[0])
        else:
            assert result.returncode == 1, (limit, result)
            assert_one_named_line(result.stderr, limit)
        wait_for(lambda r=running: svc.daemons() == [r], what=f"{limit}: one instance")
        assert svc.read_pid() == running and svc.cli("status").returncode == 0, limit
        assert socket_file is not None and socket_file.exists()
    assert result.returncode == 0, "restarted at the highest limit"
    svc.stop_gracefully(running)
    assert not socket_file.exists()


EXHAUST = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    print('descriptors used up', flush=True)
"""


@pytest.mark.scenario(
    "Faults",
    "A service whose main used up its descriptors (ulimit -n reached)",
    lost="nothing: reload answers with the reason, restart hands over, stop is graceful",
)
def test_a_service_at_its_descriptor_limit_still_answers(make_service, tmp_path):
    svc, socket_file = with_options(make_service, tmp_path, "unix", EXHAUST + IDLE)
    old = svc.start()
    wait_for(lambda: "descriptors used up" in svc.log_text(), what="main to use them up")
    for pid in (old, None):
        reload = svc.cli("reload", timeout=20)  # its request is taken in the spare's place
        failed = (
            f"svc: reload failed in pid {pid or svc.read_pid()}: "
            f"cannot open log file {svc.log}: Too many open files\n"
        )
        if pid is None:
            # The new instance let go of its startup pipe once the restart was over:
            # that one descriptor may be free for the log now. Either way, it answers.
            assert (reload.returncode, reload.stderr) in ((0, ""), (1, failed)), reload
            break
        assert (reload.returncode, reload.stderr) == (1, failed), reload
        restart = svc.cli("restart", timeout=40)  # the old one accepts the handover request
        assert restart.returncode == 0, restart
        assert f"pid {old} stopped, its sockets kept" in restart.stdout, restart.stdout
        wait_for(lambda: svc.log_text().count("descriptors used up") == 2, what="the new main")
    svc.stop_gracefully(svc.read_pid())
    assert socket_file is not None and not socket_file.exists()
