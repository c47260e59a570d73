"""Bad pidfiles, hostile pids, odd environments: one clear line, the right status, no victim."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import alive, marked_pids, wait_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

TRAP = """
import signal, sys, time
log = sys.argv[1]
def record(signum, frame):
    with open(log, 'a') as f:
        f.write(f'{signum}\\n')
for sig in signal.valid_signals():
    try:
        signal.signal(sig, record)
    except (OSError, ValueError):
        pass
print('ready', flush=True)
while True:
    time.sleep(3600)
"""


class Victim:
    """A live, unrelated process that writes down every signal it receives."""

    def __init__(self, tmp_path) -> None:
        self.log = tmp_path / "victim-signals"
        self.log.touch()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAP, str(self.log)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout.readline() == "ready\n"
        self.pid = self.proc.pid

    def assert_untouched(self) -> None:
        assert self.log.read_text() == "", "an unrelated process was signalled"
        assert self.proc.poll() is None and alive(self.pid), "an unrelated process was killed"


@pytest.fixture
def victim(tmp_path):
    trap = Victim(tmp_path)
    yield trap
    trap.proc.kill()
    trap.proc.wait()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 1, result.stderr
    return lines[0] if lines else ""


# -- pidfile paths that cannot be used ------------------------------------------------


def _unwritable_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    return folder / "svc.pid"


def _directory(tmp_path):
    (tmp_path / "svc.pid").mkdir()
    return tmp_path / "svc.pid"


def _symlink(tmp_path, target_exists: bool):
    target = tmp_path / "victim-file"
    if target_exists:
        target.write_text("precious\n")
    (tmp_path / "svc.pid").symlink_to(target)
    return tmp_path / "svc.pid"


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "svc.pid")
    return tmp_path / "svc.pid"


PATHS = {
    # name: (make the path, status's status, stop's status, start's message)
    "missing directory": (lambda t: t / "nowhere" / "svc.pid", 3, 0, "does not exist"),
    "directory not writable": (_unwritable_dir, 3, 0, "permission denied"),
    "path is a directory": (_directory, 4, 1, "it is a directory"),
    "symlink to an existing file": (lambda t: _symlink(t, True), 4, 1, "symbolic link"),
    "dangling symlink": (lambda t: _symlink(t, False), 4, 1, "symbolic link"),
    "FIFO": (_fifo, 4, 1, "it is a FIFO"),
}


def as_unprivileged(argv: list[str]) -> list[str]:
    """root writes anywhere: take away the capability that lets it."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]


@pytest.mark.scenario(
    "Bad input",
    "Pidfile path",
    lost="no traceback, one clear line, LSB status; nothing created, followed or truncated",
)
@pytest.mark.parametrize("case", list(PATHS))
def test_unusable_pidfile_paths(make_service, tmp_path, case):
    make_path, status_code, stop_code, start_message = PATHS[case]
    pidfile = make_path(tmp_path)
    svc = make_service(pidfile=str(pidfile))
    before = sorted(p.name for p in tmp_path.iterdir())

    def run(command: str) -> subprocess.CompletedProcess[str]:
        argv = as_unprivileged(svc.argv(command))
        return subprocess.run(argv, capture_output=True, text=True, env=svc.env, timeout=30)

    status = run("status")
    assert status.returncode == status_code, status
    one_line(status)
    stop = run("stop")
    assert stop.returncode == stop_code, stop
    one_line(stop)
    start = run("start")
    assert start.returncode == 1, start
    assert start_message in one_line(start)
    assert marked_pids(svc.mark) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was created"
    if (tmp_path / "victim-file").exists():
        assert (tmp_path / "victim-file").read_text() == "precious\n"


# -- pidfile contents that name no daemon --------------------------------------------

CONTENTS = {
    "empty": lambda v: b"",
    "text": lambda v: b"hello world\n",
    "negative": lambda v: b"-1\n",
    "zero": lambda v: b"0\n",
    "2**64": lambda v: b"18446744073709551616\n",
    "the test process's pid": lambda v: b"%d\n" % os.getpid(),
    "an unrelated live pid": lambda v: b"%d\n" % v.pid,
    "pid 1": lambda v: b"1\n",
}


@pytest.mark.scenario(
    "Bad input",
    "Pidfile content",
    lost="status says stale (1), stop says not running (0) and removes it, start works; "
    "no process but the daemon is ever signalled",
)
@pytest.mark.parametrize("case", list(CONTENTS))
def test_pidfile_contents(make_service, victim, case):
    svc = make_service()
    svc.pidfile.write_bytes(CONTENTS[case](victim))
    status = svc.cli("status")
    assert status.returncode == 1 and "left behind" in status.stdout
    one_line(status)
    stop = svc.cli("stop")
    assert stop.returncode == 0 and "not running" in stop.stdout
    one_line(stop)
    assert not svc.pidfile.exists()
    svc.pidfile.write_bytes(CONTENTS[case](victim))
    pid = svc.start()
    svc.stop_gracefully(pid)
    victim.assert_untouched()


@pytest.mark.scenario(
    "Bad input",
    "Pidfile names the stop command's own parent",
    lost="the parent (a shell running stop) is not signalled and carries on",
)
def test_pidfile_names_the_stop_commands_parent(make_service, victim):
    svc = make_service()
    script = (
        f'echo $$ > {svc.pidfile}; {sys.executable} {svc.script} stop; echo "shell survived $?"'
    )
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=svc.env)
    assert result.returncode == 0
    assert "not running" in result.stdout and "shell survived 0" in result.stdout
    victim.assert_untouched()


@pytest.mark.scenario(
    "Bad input",
    "Pidfile content fuzzed (hypothesis)",
    lost="whatever bytes the file holds: no traceback, status 1, stop 0, nobody signalled",
)
def test_fuzzed_pidfile_contents(make_service, victim):
    svc = make_service()
    pids = st.sampled_from([victim.pid, os.getpid(), os.getppid(), 1]).map(lambda p: b"%d" % p)
    padding = st.sampled_from([b"", b"\n", b" ", b"\n\n", b"\x00", b"\r\n"])
    numbers = st.tuples(
        padding, pids | st.integers(-(2**70), 2**70).map(str).map(str.encode), padding
    )
    contents = st.binary(max_size=40) | numbers.map(b"".join)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(content=contents)
    @example(content=b"pid=")  # starts like a last-run record, is not one
    @example(content=b"pid=7\nstatus=0\n")
    def check(content: bytes) -> None:
        svc.pidfile.write_bytes(content)
        status = svc.cli("status")
        assert status.returncode == 1, (content, status)
        one_line(status)
        stop = svc.cli("stop")
        assert stop.returncode == 0, (content, stop)
        one_line(stop)
        assert not svc.pidfile.exists()

    check()
    victim.assert_untouched()


# -- the environment it is started from ----------------------------------------------

MANY_FDS = """
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
for _ in range(min(int(sys.argv[1]), hard - 64)):
    os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@pytest.mark.scenario(
    "Bad input",
    "Started with up to 20,000 inherited open descriptors (the hard limit less 64)",
    lost="start works; the daemon keeps none of them",
)
def test_started_with_many_open_descriptors(make_service):
    svc = make_service()
    launcher = [sys.executable, "-c", MANY_FDS, "20000", str(svc.script), "start"]
    result = subprocess.run(launcher, capture_output=True, text=True, env=svc.env, timeout=60)
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    assert len(os.listdir(f"/proc/{pid}/fd")) < 30
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Bad input",
    "Started from a deleted working directory",
    lost="start works with absolute paths; the daemon runs in workdir",
)
def test_started_from_a_deleted_directory(make_service, tmp_path):
    svc = make_service()
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    script = f"cd {doomed} && rmdir {doomed} && exec {sys.executable} {svc.script} start"
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=svc.env)
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Bad input",
    "Relative pidfile from a deleted working directory",
    lost="a one-line ValueError naming the keyword, at import; nothing started",
)
def test_relative_path_from_a_deleted_directory(make_service, tmp_path):
    svc = make_service(pidfile="svc.pid")
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    script = f"cd {doomed} && rmdir {doomed} && exec {sys.executable} {svc.script} start"
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=svc.env)
    assert result.returncode == 1
    assert "ValueError: pidfile 'svc.pid' is relative" in result.stderr.strip().splitlines()[-1]
    wait_for(lambda: marked_pids(svc.mark) == [], what="nothing running")
