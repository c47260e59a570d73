"""``app.py health``: exit 0 healthy, 1 not (one line why on stderr), for probes.

Real daemons: running and answering; not running; a main hung under
``watchdog=``; a daemon stopped with SIGSTOP (its dispatcher cannot answer);
a supervised service; bad usage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from conftest import assert_wakes_zero_times, is_gone, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import Service

pytestmark = pytest.mark.timeout(60)

# Beats once (the watchdog is armed), then hangs without beating.
HANGS = """\
should_stop()
print("hanging", flush=True)
while True:
    time.sleep(0.05)
"""


def _health(service: Service) -> subprocess.CompletedProcess[str]:
    return service.cli("health", timeout=10)


def test_healthy_when_running_and_answering(make_service: Callable[..., Service]) -> None:
    service = make_service()
    pid = service.start()
    result = _health(service)
    assert result.returncode == 0, result.stderr
    assert f"svc is healthy (pid {pid})" in result.stdout
    assert result.stderr == ""
    service.stop_gracefully(pid)


def test_not_healthy_when_not_running(make_service: Callable[..., Service]) -> None:
    service = make_service()
    result = _health(service)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["svc: not healthy: not running"]
    assert result.stdout == ""


def test_not_healthy_once_stopped(make_service: Callable[..., Service]) -> None:
    service = make_service()
    pid = service.start()
    service.stop_gracefully(pid)
    result = _health(service)
    assert result.returncode == 1
    assert "not running" in result.stderr


@pytest.mark.scenario(
    "Faults", "health says a hung main is not healthy", lost="nothing: the probe fails"
)
def test_hung_main_under_watchdog_is_not_healthy(make_service: Callable[..., Service]) -> None:
    service = make_service(body=HANGS, watchdog=6.0)
    pid = service.start()
    wait_for(lambda: "hanging" in service.log_text(), what="main to hang")

    def unhealthy() -> subprocess.CompletedProcess[str] | None:
        result = _health(service)
        return result if result.returncode == 1 else None

    result = wait_for(unhealthy, timeout=20, what="health to fail")
    # Seen before the watchdog ends it (at 6 s; stale from 3 s): the reason is the heartbeat.
    assert "no heartbeat for" in result.stderr, result.stderr
    assert "watchdog=6" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    wait_for(lambda: is_gone(pid), timeout=20, what="the watchdog to end it")


@pytest.fixture
def stopped_daemon() -> Iterator[list[int]]:
    """Pids to SIGCONT and SIGKILL at teardown (a stopped process ignores SIGTERM)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@pytest.mark.scenario(
    "Faults", "health on a stopped (SIGSTOP) daemon", lost="nothing: the probe fails in time"
)
def test_a_daemon_that_does_not_answer_is_not_healthy(
    make_service: Callable[..., Service], stopped_daemon: list[int]
) -> None:
    service = make_service()
    pid = service.start()
    stopped_daemon.append(pid)
    os.kill(pid, signal.SIGSTOP)
    result = _health(service)
    assert result.returncode == 1
    assert f"pid {pid} did not answer" in result.stderr
    os.kill(pid, signal.SIGCONT)
    assert _health(service).returncode == 0
    service.stop_gracefully(pid)


def test_supervised_service_is_healthy(make_service: Callable[..., Service]) -> None:
    service = make_service(restart="always", watchdog=5.0)
    pid = service.start()
    result = _health(service)
    assert result.returncode == 0, result.stderr
    assert f"(pid {pid})" in result.stdout
    service.stop_gracefully(pid)


def test_health_takes_no_argument(make_service: Callable[..., Service]) -> None:
    service = make_service()
    result = service.cli("health", "--now")
    assert result.returncode == 2
    assert "unrecognized arguments: --now" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_loads_neither_argparse_nor_status(make_service: Callable[..., Service]) -> None:
    """A probe runs every second: it imports only what it needs."""
    service = make_service()
    pid = service.start()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(service.script), "health"],
        capture_output=True, text=True, env=service.env, timeout=10, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "daemonize_deco._probe" in imported
    unwanted = {"argparse", "daemonize_deco._status", "daemonize_deco._descendants", "json"}
    assert not unwanted & imported, unwanted & imported
    service.stop_gracefully(pid)


def test_probed_idle_service_with_drain_wakes_zero_times(
    make_service: Callable[..., Service],
) -> None:
    """A drain and the health answer add no timer: between probes an idle service sleeps."""
    service = make_service(drain=5.0, watchdog=None)
    pid = service.start()
    assert _health(service).returncode == 0
    assert_wakes_zero_times(pid, window=1.5)
    service.stop_gracefully(pid)


READY_ON_GO = """
while not os.path.exists(os.path.join(os.path.dirname(__file__), "go")):
    sleep(0.05)
ready()
while not should_stop():
    sleep(3600)
"""


def test_health_ready_answers_readiness(make_service: Callable[..., Service]) -> None:
    """``health --ready``: 1 before ready and from the instant a stop is announced (a drain)."""
    service = make_service(body=READY_ON_GO, wait_ready=True, drain=30.0)
    starting = service.popen("start")
    ready = ["health", "--ready"]
    not_yet = wait_for(
        lambda: (r := service.cli(*ready, timeout=10)).returncode == 1 and "starting" in r.stderr
        and r, what="a running service not ready yet",
    )  # fmt: skip
    assert not_yet.stderr.startswith("svc: not ready (pid "), not_yet.stderr
    assert _health(service).returncode == 0  # alive all the same
    (service.dir / "go").touch()
    out, err = starting.communicate(timeout=30)
    assert starting.returncode == 0, err
    pid = service.pid_from(out)
    answered = service.cli(*ready, timeout=10)
    assert answered.returncode == 0 and f"svc is ready (pid {pid})" in answered.stdout
    os.kill(pid, signal.SIGTERM)  # the drain: main is told in 30 s
    draining = wait_for(
        lambda: (r := service.cli(*ready, timeout=10)).returncode == 1 and r,
        what="readiness to end at the announcement",
    )
    assert "stopping" in draining.stderr, draining.stderr
    assert _health(service).returncode == 0  # draining is no hang
    os.kill(pid, signal.SIGTERM)  # a second signal ends the drain
    wait_for(lambda: is_gone(pid), what="the stop")
