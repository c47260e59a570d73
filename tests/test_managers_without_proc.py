"""Process-manager detection where there is no /proc (the simulated macOS and FreeBSD).

Only what the command's own process has tells there: its environment and
its pid.  Each question is asked by a real process the library cannot see
/proc from, started under a real parent (a shell, or this test).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
from conftest import REPO
from platform_simulation import SIMULATION, VARIABLE

pytestmark = pytest.mark.timeout(60)

PROBE = """
import json, os, sys
from daemonize_deco import _managers, _proc
found = _managers.running_under()
outside = _managers.manager_of(os.getppid())
print(json.dumps({
    "name": None if found is None else found.name,
    "restart": None if found is None else found.restart,
    "outside": None if outside is None else outside.name,
    "first_child": _proc.first_living_child(os.getppid()),
}))
"""

PLATFORMS = ["darwin", "freebsd14", None]


def ask(platform: str | None, **environ: str) -> dict:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **environ}
    if platform is not None:
        env[VARIABLE] = platform
        env["PYTHONPATH"] = os.pathsep.join([str(SIMULATION), str(REPO)])
    # Under a shell that waits (it does not exec the probe): a parent of our own.
    shell = f"{shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}; exit $?"
    result = subprocess.run(
        ["sh", "-c", shell], capture_output=True, text=True, env=env, timeout=30,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_nothing_said_nothing_found(platform):
    found = ask(platform)
    assert found["name"] is None and found["outside"] is None
    if platform is not None:
        assert found["first_child"] is None  # unknown, not a wrong pid


@pytest.mark.parametrize("platform", PLATFORMS)
def test_notify_socket_is_systemd_everywhere(platform):
    found = ask(platform, NOTIFY_SOCKET="/run/systemd/notify")
    assert found["name"] == "systemd Type=notify"


@pytest.mark.parametrize("platform", ["darwin", "freebsd14"])
def test_without_proc_supervisor_enabled_counts_alone(platform):
    found = ask(platform, SUPERVISOR_ENABLED="1", SUPERVISOR_PROCESS_NAME="web")
    assert found["name"] == "supervisord"
    assert found["restart"] == "use supervisorctl restart web"


def test_on_linux_supervisor_enabled_needs_supervisord_as_the_parent():
    # The parent here is a shell: the variable alone is inherited by every descendant.
    assert ask(None, SUPERVISOR_ENABLED="1")["name"] is None
