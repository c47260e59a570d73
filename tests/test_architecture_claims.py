"""ARCHITECTURE.md: claims checked against the code and real processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, is_gone, wait_for
from test_supervisor import CRASH_ON_REQUEST, service_pid, supervised

from daemonize_deco import _claim, _signal_path, _signals

pytestmark = pytest.mark.timeout(60)

TEXT = (REPO / "ARCHITECTURE.md").read_text()


def test_the_context_manager_lives_where_the_page_says():
    entry = re.search(r"^- `_signal_path`:(.*?)(?=^- `)", TEXT, re.M | re.S)
    assert entry is not None
    if "context manager" in entry[1]:
        # The page gives _signal_path the handlers' context manager ...
        assert any(hasattr(value, "__enter__") for value in vars(_signal_path).values()), (
            "ARCHITECTURE.md: _signal_path holds no context manager; _signals.Handlers is it"
        )
    assert hasattr(_signals.Handlers, "__enter__")


def fd_targets(pid: int) -> set[str]:
    folder = f"/proc/{pid}/fd"
    found = set()
    for fd in os.listdir(folder):
        try:
            found.add(os.readlink(f"{folder}/{fd}"))
        except OSError:
            pass
    return found


def abstract_listeners(pid: int) -> set[str]:
    """Names of the abstract Unix sockets ``pid`` holds."""
    inodes = {t[len("socket:[") : -1] for t in fd_targets(pid) if t.startswith("socket:[")}
    names = set()
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("@"):
                names.add(fields[7][1:])
    return names


@pytest.mark.linux_only("the claim as an abstract name, seen in /proc/net/unix")
def test_a_restarted_service_runs_without_the_pidfile_and_claim(make_service):
    """The page: the supervisor forks the service again, "which runs `_runtime.serve`
    with the same pidfile, claim and sockets"."""
    claim = "the same pidfile, claim and sockets" in TEXT
    svc = supervised(make_service, CRASH_ON_REQUEST, restart="always", restart_delay=1.0)
    supervisor = svc.start()
    try:
        first = service_pid(svc)
        (svc.dir / "crash").touch()
        wait_for(lambda: is_gone(first), what="the first run to crash")
        (svc.dir / "crash").unlink()  # within restart_delay: the next run stays
        second = service_pid(svc, other_than=first)
        name = _claim.claim_address(str(svc.pidfile))[1:].decode()
        assert str(svc.pidfile) in fd_targets(supervisor)
        assert name in abstract_listeners(supervisor)
        if claim:
            assert str(svc.pidfile) in fd_targets(second), "the restarted service has no pidfile"
            assert name in abstract_listeners(second), "the restarted service holds no claim"
    finally:
        assert svc.cli("stop").returncode == 0


PROBE = """\
import atexit, os, runpy, sys

def loaded():
    names = sorted(m.split('.')[1] for m in sys.modules if m.startswith('daemonize_deco.'))
    os.write(2, ("LOADED " + " ".join(names) + "\\n").encode())

atexit.register(loaded)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize("command", ["status", "stop"])
def test_what_status_and_stop_load_runs_in_the_command(make_service, command):
    """test_architecture's table says which modules never run in the command;
    ``status`` and ``stop`` (which leave through the atexit handlers) must load none."""
    from test_architecture import COMMAND, MODULES  # noqa: PLC0415

    svc = make_service()
    probe = svc.dir / "probe.py"
    probe.write_text(PROBE)
    result = subprocess.run(
        [sys.executable, str(probe), str(svc.script), command],
        capture_output=True, text=True, timeout=30, env=svc.env, check=False,
    )  # fmt: skip
    line = next(x for x in result.stderr.splitlines() if x.startswith("LOADED "))
    loaded = set(line.split()[1:])
    daemon_only = sorted(m for m in loaded if COMMAND not in MODULES[m][1])
    assert not daemon_only, f"{command} loads modules the table says never run in the command"
