"""The command line's words and statuses, the decorator's checks, pure logic in-process."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
from conftest import REPO, wait_for

import daemonize_deco
from daemonize_deco import Daemon, DaemonError, daemon
from daemonize_deco._cli import error_status, parse
from daemonize_deco._errors import PidFileError, StartupError, StopError, UsageError
from daemonize_deco._lastrun import format_duration
from daemonize_deco._pidfile import parse_pid

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["start"], "start"), (["stop"], "stop"), (["status"], "status"), (["run"], "run"),
     (["restart"], "restart"), (["--help"], None), (["-h"], None), (["stop", "--help"], "stop"),
     (["help"], None), (["start", "--port", "1"], "start"), (["bogus", "--help"], None)],
)  # fmt: skip
def test_parse_accepts(argv, expected):
    assert parse(argv) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "no command"), (["STOP"], "'STOP'"), ([""], "''"), (["frobnicate"], "'frobnicate'")],
)  # fmt: skip
def test_parse_rejects(argv, message):
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_status_errors_are_status_unknown():
    assert error_status("status", PidFileError("x")) == 4
    assert error_status("start", PidFileError("x")) == 1
    assert error_status("stop", StopError("x")) == 1
    assert error_status("start", StartupError("x")) == 1
    assert error_status("status", UsageError("x")) == 2
    assert error_status(None, UsageError("x")) == 2


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (3.9, "3s"), (303, "5m 3s"), (7500, "2h 5m"), (266400, "3d 2h")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("content", "pid"),
    [(b"42\n", 42), (b" 42 ", 42), (b"", None), (b"abc", None), (b"-1", None), (b"0", None),
     (b"4194305", None), (b"18446744073709551616", None), (b"1.5", None), (b"\xff\xfe", None),
     (b"\xd9\xa3", None)],
)  # fmt: skip
def test_parse_pid(content, pid):
    assert parse_pid(content) == pid


def test_errors_share_one_base_and_pickle():
    for cls in (UsageError, PidFileError, StartupError, StopError):
        err = cls("cannot use pidfile /x: it is a directory")
        assert isinstance(err, DaemonError)
        assert str(err) == "cannot use pidfile /x: it is a directory"
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is cls and str(copy) == str(err)
    assert isinstance(PidFileError("x"), OSError)


# -- the decorator -------------------------------------------------------------


def test_decorated_object_keeps_the_function(tmp_path):
    @daemon(pidfile=tmp_path / "x.pid", name="x")
    def main():
        """Main's doc."""
        return 7

    assert isinstance(main, Daemon)
    assert main.__name__ == "main" and main.__doc__ == "Main's doc."
    assert main.__wrapped__() == 7
    assert main.config.pidfile == str(tmp_path / "x.pid")
    assert main.config.stderr is None and main.config.workdir == "/"
    assert main.config.umask == 0o022 and main.config.stop_timeout == 10.0


@pytest.mark.scenario(
    "Bad input",
    "Relative paths in the decorator",
    lost="resolved against the launch directory at decoration time",
)
def test_relative_paths_resolve_against_the_launch_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @daemon(pidfile="run/x.pid", stdout="x.log", workdir=".")
    def main():
        pass

    assert main.config.pidfile == str(tmp_path / "run" / "x.pid")
    assert main.config.stdout == str(tmp_path / "x.log")
    assert main.config.workdir == str(tmp_path)


def test_default_name_is_the_script_stem():
    @daemon(pidfile="/tmp/x.pid")
    def main():
        pass

    assert main.config.name == "test_cli"


@pytest.mark.parametrize(
    ("keywords", "error", "message"),
    [({"pidfile": 5}, TypeError, "pidfile must be a path"),
     ({"pidfile": ""}, ValueError, "pidfile must be a non-empty"),
     ({"pidfile": "/x", "stdout": 1.5}, TypeError, "stdout must be a path"),
     ({"pidfile": "/x", "umask": "022"}, TypeError, "umask must be an int"),
     ({"pidfile": "/x", "umask": 0o1000}, ValueError, "umask must be between"),
     ({"pidfile": "/x", "umask": True}, TypeError, "umask"),
     ({"pidfile": "/x", "stop_timeout": -1}, ValueError, "stop_timeout must be a positive"),
     ({"pidfile": "/x", "start_timeout": float("nan")}, ValueError, "start_timeout"),
     ({"pidfile": "/x", "start_timeout": "10"}, TypeError, "start_timeout must be a number"),
     ({"pidfile": "/x", "wait_ready": 1}, TypeError, "wait_ready must be True or False"),
     ({"pidfile": "/x", "name": ""}, ValueError, "name must be a non-empty"),
     ({"pidfile": "/x", "name": 3}, TypeError, "name must be a str"),
     ({"pidfile": "/x", "pid_file": "/y"}, TypeError, "pid_file"),
     ({}, TypeError, "pidfile")],
)  # fmt: skip
@pytest.mark.scenario(
    "Bad input",
    "Decorator arguments",
    lost="TypeError/ValueError at decoration time naming the keyword",
)
def test_bad_decorator_arguments_fail_at_decoration(keywords, error, message):
    with pytest.raises(error, match=message):
        daemon(**keywords)(lambda: None)


def test_cli_help_in_process(capsys, tmp_path):
    @daemon(pidfile=tmp_path / "x.pid", name="x")
    def main():
        pass

    assert main.cli(["--help"]) == 0
    out, err = capsys.readouterr()
    assert "usage:" in out and "start" in out and err == ""
    assert main.cli(["bogus"]) == 2
    out, err = capsys.readouterr()
    assert "x: unknown command 'bogus'" in err and "usage:" in err and out == ""


def test_public_names():
    assert set(daemonize_deco.__all__) == {
        "Daemon", "DaemonError", "daemon", "heartbeat", "listeners", "notify", "ready",
        "should_stop", "sleep", "stopped", "worker_id",
        # the errors, for a program that calls main.cli(argv, standalone=False)
        "AlreadyRunningError", "DetachError", "ListenError", "ManagedError", "NoLogError",
        "NotRunningError", "PidFileError", "ReloadError", "StartupError", "StopError",
        "UsageError",
    }  # fmt: skip
    for name in daemonize_deco.__all__:
        assert getattr(daemonize_deco, name).__doc__


def test_import_loads_only_the_standard_library_it_needs():
    code = (
        "import sys; before = set(sys.modules); import daemonize_deco; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    loaded = set(out.split())
    for heavy in ("argparse", "logging", "subprocess", "asyncio", "multiprocessing"):
        assert heavy not in loaded


# Printed when the command's process leaves: what a command loaded, from the package.
_PRINT_LOADED = (
    "import atexit\n"
    "atexit.register(lambda: print('LOADED', *sorted(m.rpartition('.')[2] for m in sys.modules\n"
    "    if m.startswith('daemonize_deco.')), file=sys.stderr))\n"
)


@pytest.mark.parametrize("command", ["status", "stop"])
def test_commands_that_address_a_service_do_not_load_the_daemon(make_service, command):
    # Every command used to import _runtime (and with it the dispatcher's and
    # the watchdog's neighbours) for two flags about how its process exits.
    svc = make_service(prelude=_PRINT_LOADED)
    result = svc.cli(command)
    assert result.returncode in (0, 3), result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("LOADED"))
    loaded = set(line.split()[1:])
    assert "_commands" in loaded, loaded
    assert not loaded & {"_runtime", "_launch", "_dispatch", "_supervisor"}, loaded


# -- the real command line -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "stream", "fragment"),
    [([], 2, "stderr", "usage"), (["STOP"], 2, "stderr", "unknown command 'STOP'"),
     ([""], 2, "stderr", "unknown command ''"),
     (["status", "extra"], 2, "stderr", "unrecognized arguments: extra"),
     (["nope"], 2, "stderr", "'nope'"), (["--help"], 0, "stdout", "usage"),
     (["start", "--help"], 0, "stdout", "usage")],
)  # fmt: skip
@pytest.mark.scenario(
    "Bad input",
    "Command line",
    lost="usage errors exit 2 naming the word; --help anywhere exits 0; no traceback",
)
def test_command_line_usage(make_service, args, status, stream, fragment):
    svc = make_service()
    result = svc.cli(*args)
    assert result.returncode == status
    assert fragment in getattr(result, stream)
    assert "Traceback" not in result.stderr
    assert not svc.pidfile.exists()


@pytest.mark.scenario(
    "Bad input",
    "Started with stdin, stdout and stderr closed",
    lost="the pidfile lock never lands on fd 0-2; the daemon runs and stops",
)
def test_closed_standard_streams(make_service):
    svc = make_service()
    command = f"exec {sys.executable} {svc.script} start <&- >&- 2>&-"
    subprocess.run(["sh", "-c", command], env=svc.env, timeout=30, check=True)
    pid = svc.read_pid()
    assert pid is not None and svc.daemons() == [pid]
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(svc.log)
    lock_fd = [
        fd
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}") == str(svc.pidfile)
    ]
    assert lock_fd and int(lock_fd[0]) > 2
    assert svc.cli("status").returncode == 0
    assert svc.cli("stop").returncode == 0


STARTER_ONLY = ("_commands", "_command_line", "_options", "_startup", "_status", "_terminate")


def test_the_daemon_carries_none_of_the_starters_code(make_service):
    # A daemon keeps every module its start loaded: the code that only
    # commands (stop, status, options) or the waiting starter use stays out.
    svc = make_service(
        "print(' '.join(m for m in sys.modules if m.startswith('daemonize_deco')), flush=True)\n"
        "while not should_stop():\n    sleep(3600)"
    )
    pid = svc.start()
    try:
        line = wait_for(lambda: svc.log_text().strip(), what="the module list in the log")
        loaded = {name.rpartition(".")[2] for name in line.split()}
        assert "_launch" in loaded and "_runtime" in loaded, loaded
        assert not loaded & set(STARTER_ONLY), loaded & set(STARTER_ONLY)
    finally:
        svc.stop_gracefully(pid)
