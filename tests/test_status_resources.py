"""Where status's figures come from: /proc on Linux, psutil without /proc, else "unknown".

The figures are read from a real running service by a separate process in
which the library cannot see /proc (the simulated FreeBSD of
``tests/simulated_platform``), with psutil installed (this interpreter) and
without it (a fresh venv of the same Python, without psutil).  On Linux
/proc wins, and psutil is never imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, wait_for
from platform_simulation import SIMULATION, VARIABLE, simulated
from test_options import BUSY, listening_port

from daemonize_deco._platform_resources import PROC, Resources, _parse_etime
from daemonize_deco._status import _figures

pytestmark = pytest.mark.timeout(120)

PROBE = """
import json, sys
from daemonize_deco import _platform_resources as r
pid = int(sys.argv[1])
used = r.resources(pid)
print(json.dumps({
    "source": used.source, "rss_bytes": used.rss_bytes, "cpu_percent": used.cpu_percent,
    "threads": used.threads, "open_fds": used.open_fds, "children": used.children,
    "listening": used.listening, "uptime": r.uptime(pid), "psutil": "psutil" in sys.modules,
}))
"""


@pytest.fixture(scope="module")
def without_psutil(tmp_path_factory) -> str:
    """A Python of the same version whose environment has no psutil."""
    venv = tmp_path_factory.mktemp("no-psutil") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    command = [base, "-m", "venv", "--without-pip", str(venv)]
    subprocess.run(command, check=True, timeout=60, env=on_linux(dict(os.environ)))
    python = str(venv / "bin" / "python")
    found = subprocess.run([python, "-c", "import psutil"], capture_output=True, env={})
    if found.returncode == 0:
        pytest.skip(f"{base} has psutil installed system-wide: no interpreter without it")
    return python


def on_linux(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the simulation: the service looked at runs as on Linux."""
    plain = {k: v for k, v in env.items() if k != VARIABLE}
    paths = plain.get("PYTHONPATH", "").split(os.pathsep)
    plain["PYTHONPATH"] = os.pathsep.join(p for p in paths if p and p != str(SIMULATION))
    return plain


@pytest.fixture
def busy(make_service):
    """A running service with a thread, a child and a listening socket (started as on Linux)."""
    svc = make_service(body=BUSY)
    linux = on_linux(svc.env)
    started = svc.cli("start", env=linux)
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    port = listening_port(svc)
    yield svc, pid, port
    assert svc.cli("stop", env=linux).returncode == 0


def probe(pid: int, *, python: str = sys.executable, simulate: str | None = None) -> dict:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    if simulate is not None:
        env[VARIABLE] = simulate
        env["PYTHONPATH"] = os.pathsep.join([str(SIMULATION), str(REPO)])
    result = subprocess.run(
        [python, "-c", PROBE, str(pid)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


simulated_only = pytest.mark.skipif(
    simulated() is None, reason="runs under --simulate-platform (status without /proc)"
)


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return sorted(int(word) for word in path.read_text().split())


@pytest.mark.linux_only("the status command reads /proc there")
def test_on_linux_proc_wins_and_psutil_is_never_imported(busy):
    svc, pid, port = busy
    found = probe(pid)
    assert found["source"] == PROC and found["psutil"] is False
    assert found["threads"] == 2 and found["children"] == children_of(pid)
    assert found["listening"] == [f"tcp 127.0.0.1:{port}"]
    # The status command itself loads no psutil either.
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", str(svc.script), "status"],
        capture_output=True, text=True, env=svc.env, timeout=30,
    )  # fmt: skip
    assert traced.returncode == 0, traced.stderr
    assert "psutil" not in traced.stderr


@pytest.mark.parametrize("platform", ["darwin", "freebsd14"])
def test_without_proc_the_figures_come_from_psutil(busy, platform):
    _, pid, port = busy
    truth = probe(pid)
    found = probe(pid, simulate=platform)
    assert found["source"] == "psutil" and found["psutil"] is True
    assert found["threads"] == truth["threads"] == 2
    assert found["children"] == truth["children"] and len(found["children"]) == 1
    assert found["listening"] == [f"tcp 127.0.0.1:{port}"]
    assert found["open_fds"] > 3
    assert found["rss_bytes"] > 1_000_000
    assert 0 <= found["cpu_percent"] <= 100 * os.cpu_count()
    assert 0 <= found["uptime"] <= truth["uptime"] + 5


@pytest.mark.parametrize("platform", ["darwin", "freebsd14"])
def test_without_proc_nor_psutil_every_figure_is_unknown(busy, without_psutil, platform):
    _, pid, _ = busy
    before = time.monotonic()
    found = probe(pid, python=without_psutil, simulate=platform)
    assert found["psutil"] is False and found["source"] is None
    for figure in ("rss_bytes", "cpu_percent", "threads", "open_fds", "children", "listening"):
        assert found[figure] is None, f"{figure}: {found[figure]!r}, not unknown"
    # Uptime is still known: POSIX ps tells it (etime), in whole seconds.
    truth = probe(pid)["uptime"]
    assert found["uptime"] is not None
    assert truth - 2 - (time.monotonic() - before) <= found["uptime"] <= truth + 2


def test_unknown_figures_say_so_and_proc_keeps_its_lines():
    assert _figures(Resources.unknown()) == [
        "memory unknown", "CPU unknown", "threads unknown", "open descriptors unknown",
        "child processes unknown",
    ]  # fmt: skip
    psutil = Resources("psutil")
    psutil.threads, psutil.children = 3, [12]
    assert _figures(psutil) == [
        "memory unknown", "CPU unknown", "3 threads", "open descriptors unknown",
        "1 child process",
    ]  # fmt: skip
    proc = Resources(PROC)  # another user's descriptors: left out, as always on Linux
    proc.rss_bytes, proc.cpu_percent, proc.threads = 13 * 1024 * 1024, 0.1, 2
    assert _figures(proc) == ["memory 13.0 MiB", "CPU 0.1% since start", "2 threads",
                              "0 child processes"]  # fmt: skip


def test_a_service_that_does_not_run_has_no_figures_not_unknown_ones(make_service):
    svc = make_service()
    document = json.loads(svc.cli("status", "--json").stdout)
    assert document["running"] is False and document["threads"] is None
    assert document["children"] == [] and document["listening"] == []


@simulated_only
@pytest.mark.parametrize("with_psutil", [True, False], ids=["psutil", "no-psutil"])
def test_status_of_a_running_service_without_proc(busy, without_psutil, with_psutil):
    svc, pid, port = busy
    python = sys.executable if with_psutil else without_psutil
    text = subprocess.run([python, str(svc.script), "status"], capture_output=True, text=True,
                          env=svc.env, timeout=30)  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "Traceback" not in text.stderr
    first, figures, listening = text.stdout.splitlines()[:3]
    assert first.startswith(f"svc is running (pid {pid}, up "), first
    document = json.loads(
        subprocess.run([python, str(svc.script), "status", "--json"], capture_output=True,
                       text=True, env=svc.env, timeout=30, check=True).stdout
    )  # fmt: skip
    assert document["pid"] == pid and document["uptime_s"] >= 0
    if with_psutil:
        assert "2 threads" in figures and "1 child process" in figures
        assert listening == f"  listening: tcp 127.0.0.1:{port}"
        assert document["threads"] == 2 and len(document["children"]) == 1
    else:
        assert figures == "  memory unknown, CPU unknown, threads unknown, " + (
            "open descriptors unknown, child processes unknown"
        )
        assert listening == "  listening: unknown"
        for figure in ("rss_bytes", "cpu_percent", "threads", "open_fds", "children"):
            assert document[figure] is None, figure


@simulated_only
def test_status_of_a_killed_service_without_proc(make_service):
    svc = make_service()
    started = svc.cli("start", env=on_linux(svc.env))
    assert started.returncode == 0, started.stderr
    pid = svc.pid_from(started.stdout)
    os.kill(pid, 9)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the killed service reaped")
    text = svc.cli("status")
    assert text.returncode == 1 and "Traceback" not in text.stderr, text.stderr
    assert "is left behind (pid" in text.stdout
    document = json.loads(svc.cli("status", "--json").stdout)
    assert document["pidfile_left_behind"] is True
    assert document["leftovers"] in (None, [])  # unknown where nothing may look


@pytest.mark.parametrize(
    ("shown", "seconds"),
    [("00:07", 7), ("01:02:03", 3723), ("2-00:00:01", 172801), ("", None), ("1:2:3:4", None)],
)
def test_ps_elapsed_time(shown, seconds):
    assert _parse_etime(shown) == seconds
