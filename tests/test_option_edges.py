"""Options at their edges: values that look like options, names that built-in flags take,
and ``--help`` for every kind of custom command."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import REPO, is_gone, wait_for

from daemonize_deco._cli import COMMANDS
from daemonize_deco._command_line import FLAGS
from daemonize_deco._options import COMMAND_FLAGS, HELP_FLAGS, make_parser

pytestmark = pytest.mark.timeout(60)

ROUND = """
import os
from daemonize_deco import daemon, should_stop, sleep

HERE = os.path.dirname(os.path.abspath(__file__))


@daemon(pidfile=HERE + "/round.pid", stdout=HERE + "/round.log", stop_timeout=5)
def main(
    host: str = "localhost",
    tag: str | None = None,
    ratio: float = 0.5,
    n: int = 1,  # --n, --f and --h beside logs' -n and -f, and every command's -h
    f: bool = False,
    h: str = "y",
):
    print("main", repr(host), repr(tag), ratio, n, f, repr(h), flush=True)
    while not should_stop():
        sleep(3600)


if __name__ == "__main__":
    main()
"""

# Each value starts with "-" or is empty; start takes every one of them.
EDGY = ["--host=-dash", "--tag=", "--ratio=-1e-05", "--n", "-3", "--f", "--h", ""]
REMEMBERED = ["--host=-dash", "--tag=", "--ratio=-1e-05", "--n=-3", "--f", "--h="]
MAIN_LINE = "main '-dash' '' -1e-05 -3 True ''"


@pytest.fixture
def round_trip(make_service):
    svc = make_service(name="round")
    svc.script.write_text(ROUND)
    return svc


@pytest.mark.scenario(
    "Options",
    "start with values that are empty or start with '-', then a plain restart",
    lost="nothing: restart reuses them as given; status and systemd-unit write --flag=value",
)
def test_values_like_options_or_empty_round_trip(round_trip):
    svc = round_trip
    started = svc.cli("start", *EDGY)
    assert started.returncode == 0, started.stderr
    first = svc.pid_from(started.stdout)
    wait_for(lambda: MAIN_LINE in svc.log_text(), what="main's line")
    status = svc.cli("status")
    assert status.returncode == 0
    assert f"  options: {' '.join(REMEMBERED)}" in status.stdout.splitlines()
    assert json.loads(svc.cli("status", "--json").stdout)["options"] == REMEMBERED
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    second = svc.pid_from(restarted.stdout.splitlines()[-1])
    assert second != first and is_gone(first)
    wait_for(lambda: svc.log_text().count("main ") == 2, what="the second run's line")
    assert svc.log_text().splitlines()[-1] == MAIN_LINE, "the same values, once more"
    assert f"  options: {' '.join(REMEMBERED)}" in svc.cli("status").stdout.splitlines()
    assert svc.cli("logs", "-n", "1").stdout == MAIN_LINE + "\n"
    helped = svc.cli("start", "-h").stdout
    assert "--n N" in helped and "--f, --no-f" in helped and "--h H" in helped
    stopped = svc.cli("stop", "--timeout", "5")
    assert f"round stopped (pid {second})" in stopped.stdout
    assert is_gone(second)


def test_systemd_unit_runs_values_like_options_as_given(round_trip, tmp_path):
    svc = round_trip
    unit = svc.cli("systemd-unit", *EDGY)
    assert unit.returncode == 0, unit.stderr
    fields = dict(line.split("=", 1) for line in unit.stdout.splitlines() if "=" in line)
    assert fields["ExecStart"].endswith(f"{svc.script} run {' '.join(REMEMBERED)}")
    assert fields["ExecReload"].endswith(f"{svc.script} reload {' '.join(REMEMBERED)}")
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed (.ci/run installs systemd)")
    (tmp_path / "round.service").write_text(unit.stdout)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "round.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert "round.service" not in verify.stderr, verify.stderr
    # What systemd would run: main gets the values as start got them.
    command = shlex.split(fields["ExecStart"].replace("$$", "$").replace("%%", "%"))
    runner = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=svc.env
    )
    svc.popens.append(runner)  # killed at teardown if the test fails
    assert runner.stdout.readline() == MAIN_LINE + "\n"
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=10)
    assert runner.returncode == 0


CLASH = '''
from daemonize_deco import daemon, should_stop, sleep


@daemon(pidfile={pidfile!r})
def main({main}):
    while not should_stop():
        sleep(3600)


@main.command
def job({job}):
    """A job."""


main()
'''

BUILT_IN = "take{} already; give the parameter another name"
HELP = "which every command takes for its help; give the parameter another name"


@pytest.mark.parametrize(
    ("main", "job", "argv", "message"),
    [("timeout: float = 1.0", "", ["stop", "--timeout", "3"],
      "main: parameter 'timeout' gives --timeout, which stop and restart " + BUILT_IN.format("")),
     ("timeout: float = 1.0", "", ["restart"],
      "main: parameter 'timeout' gives --timeout, which stop and restart " + BUILT_IN.format("")),
     ("json: bool = False", "", ["status", "--json"],
      "main: parameter 'json' gives --json, which status " + BUILT_IN.format("s")),
     ("lines: int = 5", "", ["logs", "-n", "3"],
      "main: parameter 'lines' gives --lines, which logs " + BUILT_IN.format("s")),
     ("follow: bool = False", "", ["logs", "-f"],
      "main: parameter 'follow' gives --follow, which logs " + BUILT_IN.format("s")),
     ("socket: str = 's'", "", ["systemd-unit", "--socket"],
      "main: parameter 'socket' gives --socket, which systemd-unit " + BUILT_IN.format("s")),
     ("help: str = 'x'", "", ["start", "--help"], "main: parameter 'help' gives --help, " + HELP),
     ("verbose: bool = False, no_verbose: bool = False", "", ["start", "--no-verbose"],
      "main: parameters 'verbose' and 'no_verbose' both give --no-verbose; "
      "give one of them another name"),
     ("", "help: str = 'x'", ["job", "--help"],
      "command 'job': parameter 'help' gives --help, " + HELP),
     ("", "quiet: bool = False, no_quiet: str = ''", ["job"],
      "command 'job': parameters 'quiet' and 'no_quiet' both give --no-quiet; "
      "give one of them another name")],
    ids=["stop-timeout", "restart-timeout", "status-json", "logs-lines", "logs-follow",
         "unit-socket", "start-help", "no-verbose", "command-help", "command-no-quiet"],
)  # fmt: skip
@pytest.mark.scenario(
    "Bad input",
    "A parameter whose flag a built-in command or another parameter gives",
    lost="nothing starts: a TypeError naming both when the script is imported, "
    "not an argparse traceback at the command that meets the clash",
)
def test_a_flag_given_twice_is_refused_at_decoration(make_service, main, job, argv, message):
    svc = make_service(name="clash")
    svc.script.write_text(CLASH.format(pidfile=str(svc.pidfile), main=main, job=job))
    result = svc.cli(*argv)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"TypeError: {message}"
    assert result.stdout == ""
    assert svc.daemons() == [] and not svc.pidfile.exists()


def test_the_flags_decoration_refuses_are_those_the_commands_add():
    taken: dict[str, set[str]] = {}
    for word, command in COMMANDS.items():
        parser = make_parser(f"x {word}")
        if command.flags is not None:
            FLAGS[command.flags](parser)
        for action in parser._actions:
            for flag in action.option_strings:
                taken.setdefault(flag, set()).add(word)
    for flag in HELP_FLAGS:
        assert taken.pop(flag) == set(COMMANDS)
    assert taken == {flag: set(words) for flag, words in COMMAND_FLAGS.items()}
    # A script with options decorates without argparse (a bare command word never loads it).
    code = (
        "import sys\nfrom daemonize_deco import daemon\n"
        "@daemon(pidfile='/tmp/x.pid')\ndef main(port: int = 1, verbose: bool = False): pass\n"
        "@main.command\ndef job(name: str, quiet: bool = False): pass\n"
        "print('argparse' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out == "False\n"


HELPED = '''
from daemonize_deco import daemon, should_stop, sleep


@daemon(pidfile={pidfile!r})
def main():
    while not should_stop():
        sleep(3600)


@main.command
def peel():
    """Peel the banana.

    More words that stay out of the help.
    """
    print("peeled")


@main.command
def echo(*words):
    """Echo the words as they are."""
    print(repr(words))


@main.command
def greet(name: str, times: int = 1):
    """Say hello."""
    print("hello", name)


main()
'''


HELPS = {
    "peel": ("usage: helped.py peel [-h]", "Peel the banana."),
    "echo": ("usage: helped.py echo [-h] [words ...]", "Echo the words as they are."),
    "greet": ("usage: helped.py greet [-h] [--times TIMES] name", "Say hello."),
}


def test_every_custom_command_prints_its_help(make_service):
    svc = make_service(name="helped")
    svc.script.write_text(HELPED.format(pidfile=str(svc.pidfile)))
    for word, (usage, doc) in HELPS.items():
        for flag in HELP_FLAGS:
            helped = svc.cli(word, flag)
            assert helped.returncode == 0, (word, flag, helped.stderr)
            assert helped.stderr == ""
            lines = helped.stdout.splitlines()
            assert lines[0] == usage and lines[2] == doc, (word, flag)
            assert "-h, --help" in helped.stdout and "More words" not in helped.stdout
    # Only a lone -h/--help is help: the commands take their words as before.
    assert svc.cli("peel").stdout == "peeled\n"
    refused = svc.cli("peel", "x")
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[0] == "helped: peel takes no arguments, got 'x'"
    assert svc.cli("echo", "-h", "x").stdout == "('-h', 'x')\n"
    assert svc.cli("echo", "x", "--help").stdout == "('x', '--help')\n"
    assert svc.cli("greet", "bob").stdout == "hello bob\n"
    assert svc.daemons() == [] and not svc.pidfile.exists()
