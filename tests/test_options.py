"""Options from main's signature, several instances, logs, and a status worth reading."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest
from conftest import is_gone, wait_for

from daemonize_deco import daemon

pytestmark = pytest.mark.timeout(60)

WEB = '''
import enum, os, pathlib, signal, sys
from typing import Literal
from daemonize_deco import daemon, should_stop, sleep

HERE = os.path.dirname(os.path.abspath(__file__))


class Mode(enum.Enum):
    fast = 1
    slow = 2


@daemon(pidfile=HERE + "/web-{port}.pid", stdout=HERE + "/web-{port}.log", stop_timeout=5)
def main(
    port: int = 8000,
    host: str = "127.0.0.1",
    verbose: bool = False,
    mode: Mode = Mode.fast,
    level: Literal["low", "high"] = "low",
    data: pathlib.Path = pathlib.Path("/tmp"),
    ratio: float = 0.5,
):
    """Serve the thing on a port.

    More words that stay out of the usage.

    Args:
        port: the port to listen on.
        host: the address to bind.
        verbose: say more.
    """
    print("options", port, host, verbose, mode.name, level, data, ratio, flush=True)
    while not should_stop():
        sleep(3600)


@main.command
def greet(name: str, times: int = 1):
    """Say hello."""
    for _ in range(times):
        print("hello", name)


@main.command
def rest(*words):
    """Echo the words as they are."""
    print(repr(words))


if __name__ == "__main__":
    main()
'''


@pytest.fixture
def web(make_service):
    svc = make_service(name="web")
    svc.script.write_text(WEB)
    svc.pidfile = svc.dir / "web-8000.pid"
    svc.log = svc.dir / "web-8000.log"
    return svc


def started_pid(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("(pid ")[1].split(")")[0])


@pytest.mark.scenario(
    "Options",
    "start --port 9001 and --port 9002: two instances side by side",
    lost="each has its own pidfile and log from the {port} placeholder; "
    "status/stop --port address one",
)
def test_two_instances_side_by_side(web):
    first = started_pid(web.cli("start", "--port", "9001", "--verbose", "--mode", "slow"))
    second = started_pid(web.cli("start", "--port", "9002", "--level", "high", "--ratio", "2"))
    assert first != second
    log1, log2 = web.dir / "web-9001.log", web.dir / "web-9002.log"
    wait_for(lambda: log1.exists() and "options" in log1.read_text(), what="the first's line")
    wait_for(lambda: log2.exists() and "options" in log2.read_text(), what="the second's line")
    assert "options 9001 127.0.0.1 True slow low /tmp 0.5" in log1.read_text()
    assert "options 9002 127.0.0.1 False fast high /tmp 2.0" in log2.read_text()
    status = web.cli("status", "--port", "9001")
    assert status.returncode == 0
    assert status.stdout.startswith(f"web is running (pid {first}, up ")
    assert "options: --port 9001 --verbose --mode slow" in status.stdout
    stopped = web.cli("stop", "--port", "9001")
    assert f"web stopped (pid {first})" in stopped.stdout
    assert is_gone(first) and not is_gone(second)
    assert web.cli("status", "--port", "9001").returncode == 3
    assert web.cli("status", "--port", "9002").returncode == 0
    # --port fills the placeholder: it names the instance, whose settings are reused.
    assert web.cli("restart", "--port", "9002").returncode == 0
    assert (
        "options: --port 9002 --level high --ratio 2.0"
        in web.cli("status", "--port", "9002").stdout
    )
    assert web.cli("stop", "--port", "9002").returncode == 0


def test_restart_reuses_the_running_options_unless_given(web):
    started_pid(web.cli("start", "--verbose", "--level", "high"))
    restarted = web.cli("restart")
    pid = started_pid(restarted)
    assert "options: --verbose --level high" in web.cli("status").stdout
    wait_for(lambda: web.log_text().count("options") == 2, what="the second run's line")
    assert web.log_text().splitlines()[-1] == "options 8000 127.0.0.1 True fast high /tmp 0.5"
    replaced = started_pid(web.cli("restart", "--host", "0.0.0.0"))
    assert replaced != pid
    status = web.cli("status").stdout
    assert "options: --host 0.0.0.0" in status and "--verbose" not in status
    assert web.cli("stop").returncode == 0


def test_run_takes_the_options_too(web):
    runner = web.popen("run", "--port", "9005", "--no-verbose", "--data", "/srv")
    wait_for((web.dir / "web-9005.pid").exists, what="the pidfile")
    runner.send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=10)
    assert "options 9005 127.0.0.1 False fast low /srv 0.5" in out


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--port", "abc"], "argument --port: 'abc' is not an integer"),
        (["--mode", "medium"], "argument --mode: 'medium' is not one of fast, slow"),
        (["--level", "mid"], "argument --level: 'mid' is not one of low, high"),
        (["--ratio", "x"], "argument --ratio: 'x' is not a number"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--port"], "argument --port: expected one argument"),
    ],
)
def test_bad_values_and_unknown_options(web, words, message):
    result = web.cli("start", *words)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"web: {message}"
    assert lines[1].startswith("usage: web.py start ")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert web.daemons() == [] and list(web.dir.glob("*.pid")) == []


def test_help_per_command_and_for_the_script(web):
    helped = web.cli("start", "--help")
    assert helped.returncode == 0 and helped.stderr == ""
    text = helped.stdout
    assert text.startswith("usage: web.py start ")
    assert "--port PORT" in text and "the port to listen on (int, default: 8000)" in text
    assert "--verbose, --no-verbose" in text and "say more (flag, default: False)" in text
    assert "--mode {fast,slow}" in text and "choice, default: fast" in text
    assert "--data DATA" in text and "path, default: /tmp" in text
    general = web.cli("--help").stdout
    assert general.splitlines()[2] == "Serve the thing on a port."
    assert "More words" not in general
    assert "  start " in general and "  greet " in general and "  logs " in general
    greet_help = web.cli("greet", "--help").stdout
    assert greet_help.startswith("usage: web.py greet [-h] [--times TIMES] name")


def test_custom_commands_take_typed_arguments(web):
    greeted = web.cli("greet", "bob", "--times", "2")
    assert greeted.returncode == 0 and greeted.stdout == "hello bob\nhello bob\n"
    missing = web.cli("greet")
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == "web: the following arguments are required: name"
    bad = web.cli("greet", "bob", "--times", "many")
    assert bad.returncode == 2 and "'many' is not an integer" in bad.stderr
    raw = web.cli("rest", "-x", "--y", "z")
    assert raw.stdout.strip() == "('-x', '--y', 'z')", "*args commands get the words as they are"


def test_systemd_unit_writes_the_options_into_execstart(web):
    unit = web.cli("systemd-unit", "--port", "9000", "--verbose").stdout
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    assert fields["ExecStart"].endswith(f"{web.script} run --port 9000 --verbose")
    assert fields["ExecReload"].endswith(f"{web.script} reload --port 9000 --verbose")


def test_a_placeholder_value_cannot_name_another_directory(make_service):
    svc = make_service(name="named")
    svc.script.write_text(
        "from daemonize_deco import daemon, should_stop, sleep\n"
        "@daemon(pidfile='/tmp/named-{who}.pid')\n"
        "def main(who: str = 'a'):\n"
        "    while not should_stop(): sleep(1)\n"
        "main()\n"
    )
    result = svc.cli("start", "--who", "../etc/x")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "named: --who '../etc/x' cannot name a file"


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ("x: list = []", "parameter 'x': type 'list' cannot be an option"),
        ("*args", "parameter 'args': **kwargs/*args cannot be options"),
        ("**kw", "parameter 'kw': **kwargs/*args cannot be options"),
        ("flag: bool", "parameter 'flag': a bool parameter needs a default"),
        ("x=None", "parameter 'x' needs a type annotation or a default"),
    ],
)
def test_signatures_the_command_line_cannot_express_are_refused(signature, message):
    namespace: dict[str, object] = {}
    exec(f"def main({signature}): pass", namespace)
    with pytest.raises(TypeError, match=message.replace("*", r"\*").replace("(", r"\(")):
        daemon(pidfile="/tmp/x.pid")(namespace["main"])


def test_a_placeholder_that_names_no_parameter_is_refused():
    with pytest.raises(TypeError, match=r"\{prot\} names no parameter of main"):
        daemon(pidfile="/tmp/web-{prot}.pid")(lambda port=1: None)


def test_stop_timeout_from_the_command_line(make_service):
    body = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    sleep(3600)"
    svc = make_service(body=body, stop_timeout=30)
    pid = svc.start()
    result = svc.cli("stop", "--timeout", "0.3")
    assert result.returncode == 0
    assert f"svc killed (pid {pid}): still running 0.3s after SIGTERM" in result.stdout
    bad = svc.cli("stop", "--timeout", "-1")
    assert bad.returncode == 2 and "'-1' is not a positive number of seconds" in bad.stderr


# A service that holds a listener and a child: what status shows.
BUSY = """
    import socket
    server = socket.create_server(('127.0.0.1', 0))
    worker = subprocess.Popen(['sleep', '60'])
    print('listening', server.getsockname()[1], flush=True)
    while not should_stop():
        sleep(3600)
    worker.terminate()
    worker.wait()
"""


def listening_port(svc) -> int:
    """The port BUSY's server printed, once its whole line is in the log.

    The log is unbuffered, so ``print`` reaches it word by word: waiting for
    "listening" alone may see the line before its port.
    """
    line = re.compile(r"^listening (\d+)$", re.MULTILINE)
    wait_for(lambda: line.search(svc.log_text()), what="the server's port in the log")
    return int(line.search(svc.log_text()).group(1))


def test_status_shows_what_the_daemon_uses(make_service):
    svc = make_service(body=BUSY)
    pid = svc.start()
    port = listening_port(svc)
    status = svc.cli("status")
    assert status.returncode == 0
    first, details, listening = status.stdout.splitlines()[:3]
    assert first.startswith(f"svc is running (pid {pid}, up ")
    assert "memory " in details and " MiB" in details and "% since start" in details
    assert "2 threads" in details and "1 child process" in details
    assert listening == f"  listening: tcp 127.0.0.1:{port}"
    document = json.loads(svc.cli("status", "--json").stdout)
    assert document["running"] is True and document["pid"] == pid
    assert document["rss_bytes"] > 1_000_000 and document["threads"] == 2
    assert len(document["children"]) == 1 and document["open_fds"] > 3
    assert document["listening"] == [f"tcp 127.0.0.1:{port}"]
    assert document["last_run"] is None and document["uptime_s"] >= 0
    svc.stop_gracefully(pid)
    after = svc.cli("status", "--json")
    assert after.returncode == 3
    document = json.loads(after.stdout)
    assert document["running"] is False and document["pid"] is None
    assert document["last_run"]["pid"] == pid and document["last_run"]["signal"] == "SIGTERM"


def test_logs_prints_the_last_lines(make_service):
    body = "for n in range(50):\n    print('line', n)\nwhile not should_stop():\n    sleep(3600)"
    svc = make_service(body=body)
    pid = svc.start()
    wait_for(lambda: "line 49" in svc.log_text(), what="the lines")
    assert svc.cli("logs").stdout.splitlines() == [f"line {n}" for n in range(30, 50)]
    assert svc.cli("logs", "-n", "3").stdout.splitlines() == ["line 47", "line 48", "line 49"]
    assert svc.cli("logs", "-n", "x").returncode == 2
    svc.stop_gracefully(pid)


def test_logs_without_a_log_file(make_service):
    svc = make_service(stdout=None)
    result = svc.cli("logs")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("svc has no log file")


@pytest.mark.scenario(
    "Options",
    "logs -f while logrotate renames the log and the service reloads",
    lost="a line written after the rotation reaches the follower; Ctrl-C ends it with 0",
)
def test_logs_follow_sees_a_line_written_after_rotation(make_service):
    body = """
        flag = os.path.join(os.path.dirname(__file__), 'say')
        said = 0
        while not should_stop():
            sleep(0.05)
            if os.path.exists(flag):
                os.unlink(flag)
                said += 1
                print('said', said, flush=True)
    """
    svc = make_service(body=body)
    pid = svc.start()
    say = svc.dir / "say"
    say.write_text("")
    wait_for(lambda: "said 1" in svc.log_text(), what="the first line")
    follower = svc.popen("logs", "-f", "-n", "5")
    assert follower.stdout.readline() == "said 1\n"
    svc.log.rename(svc.log.with_suffix(".log.1"))  # logrotate's "create"
    assert svc.cli("reload").returncode == 0
    say.write_text("")
    assert follower.stdout.readline() == "said 2\n", "the line after the rotation"
    follower.send_signal(signal.SIGINT)
    assert follower.wait(timeout=10) == 0
    svc.stop_gracefully(pid)
    assert os.path.exists(svc.log)


def test_a_bare_command_word_never_loads_argparse(make_service):
    svc = make_service()
    probe = svc.script.read_text().replace(
        "    main()", "    main.cli(['status'])\n    print('argparse' in sys.modules)"
    )
    svc.script.write_text(probe)
    result = subprocess.run(svc.argv(), capture_output=True, text=True, env=svc.env, timeout=30)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_restart_when_the_signature_changed_since_the_start(web):
    pid = started_pid(web.cli("start", "--port", "9007"))
    (web.dir / "web-9007.pid.options").write_bytes(b"--port\x009007\x00--old-thing")
    result = web.cli("restart", "--port", "9007")
    assert result.returncode == 2
    assert (
        "the running instance's options (--port 9007 --old-thing) no longer fit"
        in (result.stderr.splitlines()[0])
    )
    assert not is_gone(pid), "nothing was stopped"
    assert web.cli("stop", "--port", "9007").returncode == 0


def test_logs_into_a_reader_that_goes_away(make_service):
    body = "for n in range(5000):\n    print('line', n)\nwhile not should_stop():\n    sleep(3600)"
    svc = make_service(body=body)
    pid = svc.start()
    wait_for(lambda: "line 4999" in svc.log_text(), what="the lines")
    for follow in ([], ["-f"]):
        command = f"{' '.join(svc.argv('logs', '-n', '5000', *follow))} | head -n 1"
        piped = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, env=svc.env, timeout=30
        )
        assert piped.stdout == "line 0\n" and "Traceback" not in piped.stderr, piped.stderr
    svc.stop_gracefully(pid)


def test_logs_f_notices_its_reader_is_gone_with_nothing_new_to_write(make_service):
    """What it had fits in the pipe: no write fails, yet it must not follow forever."""
    svc = make_service(
        body="print('one', flush=True)\n" + "while not should_stop():\n    sleep(3600)"
    )
    pid = svc.start()
    wait_for(lambda: "one" in svc.log_text(), what="the line")
    command = f"{' '.join(svc.argv('logs', '-n', '5', '-f'))} | head -n 1"
    piped = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=svc.env,
                           timeout=30)  # fmt: skip
    assert piped.stdout == "one\n" and piped.returncode == 0, piped
    svc.stop_gracefully(pid)


def test_a_parameter_without_default_is_a_required_option(make_service):
    svc = make_service(name="req")
    svc.script.write_text(
        "import os\n"
        "from daemonize_deco import daemon, should_stop, sleep\n"
        "HERE = os.path.dirname(os.path.abspath(__file__))\n"
        "@daemon(pidfile=HERE + '/req-{port}.pid', stdout=HERE + '/req.log')\n"
        "def main(port: int, name: str | None = None):\n"
        "    print('port', port, 'name', name, flush=True)\n"
        "    while not should_stop():\n"
        "        sleep(3600)\n"
        "main()\n"
    )
    missing = svc.cli("start")
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == "req: the following arguments are required: --port"
    status = svc.cli("status")
    assert status.returncode == 2 and "status needs --port: it names the pidfile" in status.stderr
    assert svc.cli("start", "--port", "7").returncode == 0
    wait_for(lambda: "port 7 name None" in svc.log_text(), what="main's line")
    restarted = svc.cli("restart", "--port", "7", "--name", "x", "--timeout", "5")
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: "port 7 name x" in svc.log_text(), what="the new settings")
    assert svc.cli("stop", "--port", "7").returncode == 0
