"""``drain=S``: a stop is announced at once and reaches ``main`` S seconds later.

Real daemons: main writes, with a timestamp, when it learns of the stop;
the test compares that with when it sent SIGTERM.  Only lower bounds are
asserted on time (a loaded machine makes everything later, never earlier).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest
from conftest import is_gone, wait_for

from daemonize_deco import daemon

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Service

pytestmark = pytest.mark.timeout(60)

# main says when it learned of the stop (wall clock: the test compares it with its own).
NOTES_STOP = """\
should_stop()  # main's loop reached: ready, by the default readiness (a drain needs it)
print("looping", flush=True)
while not should_stop():
    sleep(3600)
print(f"stop heard at {time.time():.6f}", flush=True)
"""


def test_a_stop_before_ready_does_not_drain(make_service: Callable[..., Service]) -> None:
    """No load balancer routes to a service not ready yet: its stop goes to main at once."""
    service = make_service(
        body='print("starting", flush=True)\nwhile not should_stop():\n    sleep(0.05)',
        drain=30.0,
        wait_ready=True,
        stdout=None,
    )
    out = service.dir / "run.out"
    with out.open("w") as sink:
        proc = service.popen("run", stdout=sink, stderr=subprocess.STDOUT)
    wait_for(lambda: "starting" in out.read_text(), what="main to begin")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, out.read_text()
    assert "draining" not in out.read_text()


def _heard_at(service: Service) -> float:
    line = wait_for(
        lambda: next(
            (ln for ln in service.log_text().splitlines() if ln.startswith("stop heard at ")), ""
        ),
        what="main to hear of the stop",
    )
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.scenario("Options", "drain=2 holds the stop back from main", lost="nothing")
def test_drain_delays_the_stop_reaching_main(make_service: Callable[..., Service]) -> None:
    service = make_service(body=NOTES_STOP, drain=2.0)
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    sent = time.time()
    os.kill(pid, signal.SIGTERM)
    heard = _heard_at(service)
    assert heard - sent >= 2.0, f"main heard of the stop {heard - sent:.3f}s after SIGTERM"
    wait_for(lambda: is_gone(pid), what="the daemon to end after the drain")


def test_no_drain_by_default(make_service: Callable[..., Service]) -> None:
    service = make_service(body=NOTES_STOP)
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    sent = time.time()
    os.kill(pid, signal.SIGTERM)
    assert _heard_at(service) - sent < 2.0  # generous: only "not drained"
    wait_for(lambda: is_gone(pid))


def test_stop_waits_for_the_drain_and_stop_timeout(make_service: Callable[..., Service]) -> None:
    """drain=2, stop_timeout=1: the stop takes ~2 s and is graceful, not SIGKILL at 1 s."""
    service = make_service(body=NOTES_STOP, drain=2.0, stop_timeout=1.0)
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    began = time.monotonic()
    service.stop_gracefully(pid)
    assert time.monotonic() - began >= 2.0
    assert "stop heard at" in service.log_text()


def test_a_second_sigterm_ends_the_drain(make_service: Callable[..., Service]) -> None:
    service = make_service(body=NOTES_STOP, drain=30.0, stop_timeout=5.0)
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    os.kill(pid, signal.SIGTERM)
    # A second SIGTERM while the first is pending would merge with it: wait for the drain.
    wait_for(lambda: "draining for 30s" in service.log_text(), what="the drain to begin")
    assert "stop heard" not in service.log_text()
    began = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    _heard_at(service)
    assert time.monotonic() - began < 20
    wait_for(lambda: is_gone(pid), what="the daemon to end")
    assert "Traceback" not in service.log_text()


def test_on_stop_runs_after_the_drain(make_service: Callable[..., Service]) -> None:
    service = make_service(body=NOTES_STOP, drain=1.5)
    text = service.script.read_text().replace(
        'if __name__ == "__main__":',
        '@main.on_stop\ndef told():\n    print(f"on_stop at {time.time():.6f}", flush=True)\n\n'
        'if __name__ == "__main__":',
    )
    service.script.write_text(text)
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    sent = time.time()
    os.kill(pid, signal.SIGTERM)
    line = wait_for(
        lambda: next(
            (ln for ln in service.log_text().splitlines() if ln.startswith("on_stop at")), ""
        ),
        what="on_stop",
    )
    assert float(line.rsplit(" ", 1)[1]) - sent >= 1.5
    wait_for(lambda: is_gone(pid))


@pytest.mark.parametrize(
    ("bad", "error"),
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("2", TypeError),
     (True, TypeError)],
)  # fmt: skip
def test_bad_drain_is_refused_in_one_line(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"^drain must be a (finite )?number of seconds"):
        daemon(pidfile="/tmp/never.pid", drain=bad)(_never_run)  # type: ignore[arg-type]


def _never_run() -> None:
    """A main that is only decorated."""


def test_the_stop_is_announced_at_once(make_service: Callable[..., Service]) -> None:
    """``_signals.stop_announced()`` (what /readyz reads) is True long before should_stop()."""
    service = make_service(
        prelude="from daemonize_deco._signals import stop_announced",
        body="""\
        print("looping", flush=True)
        said = False
        while not should_stop():
            if stop_announced() and not said:
                print(f"announced at {time.time():.6f}", flush=True)
                said = True
            sleep(0.02)
        print(f"stop heard at {time.time():.6f}", flush=True)
        """,
        drain=3.0,
    )
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    os.kill(pid, signal.SIGTERM)
    heard = _heard_at(service)
    announced = [ln for ln in service.log_text().splitlines() if ln.startswith("announced at")]
    assert announced, service.log_text()
    assert heard - float(announced[0].rsplit(" ", 1)[1]) >= 2.0
    wait_for(lambda: is_gone(pid))


@pytest.mark.scenario("Options", "drain under restart=: stop is graceful", lost="nothing")
def test_a_supervised_service_drains_and_stops_gracefully(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(body=NOTES_STOP, drain=2.0, stop_timeout=1.0, restart="always")
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    began = time.time()
    service.stop_gracefully(pid)
    assert _heard_at(service) - began >= 2.0
    assert "SIGKILL" not in service.log_text()


def test_run_ctrl_c_twice_ends_the_drain_without_killing(
    make_service: Callable[..., Service],
) -> None:
    """In the foreground: the first Ctrl-C drains, the second ends the drain (not the process)."""
    service = make_service(body=NOTES_STOP, drain=30.0, stdout=None)
    out = service.dir / "run.out"
    with out.open("w") as sink:
        proc = service.popen("run", stdout=sink, stderr=subprocess.STDOUT)
    wait_for(lambda: "looping" in out.read_text(), what="main's loop")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "draining for 30s" in out.read_text(), what="the drain to begin")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0, out.read_text()
    text = out.read_text()
    assert "stop heard at" in text


@pytest.mark.scenario(
    "Options",
    "status during a drain=S stop",
    lost="nothing: status says the service drains and when main hears of the stop; the record "
    "goes with the drain",
)
@pytest.mark.parametrize("restart", [None, "on-failure"], ids=["alone", "supervised"])
def test_status_says_draining_during_a_drain(
    make_service: Callable[..., Service], restart: str | None
) -> None:
    options = {} if restart is None else {"restart": restart}
    service = make_service(body=NOTES_STOP, drain=3.0, **options)
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    assert "draining" not in service.cli("status").stdout
    os.kill(pid, signal.SIGTERM)

    def draining() -> str:
        out = service.cli("status").stdout
        return out if "draining" in out else ""

    line = wait_for(draining, what="status to say draining").splitlines()[0]
    assert line.startswith(f"svc is running (pid {pid}, up "), line
    assert "; draining: main is told to stop in " in line, line
    document = json.loads(service.cli("status", "--json").stdout)
    assert document["draining_s"] is None or 0 < document["draining_s"] <= 3.0, document
    _heard_at(service)
    wait_for(lambda: is_gone(pid), what="the daemon to end after the drain")
    assert not service.pidfile.with_name(service.pidfile.name + ".draining").exists()


@pytest.mark.scenario(
    "Options", "drain under restart=: a second stop ends the drain", lost="nothing"
)
def test_a_second_stop_ends_a_supervised_drain(make_service: Callable[..., Service]) -> None:
    """The supervisor passes the repeated stop on: the service's drain ends, it exits 0."""
    service = make_service(
        body=f'print(f"service {{os.getpid()}}", flush=True)\n{NOTES_STOP}',
        drain=30.0,
        stop_timeout=5.0,
        restart="on-failure",
    )
    supervisor = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    child = int(service.log_text().split("service ", 1)[1].split()[0])
    first = service.popen("stop")
    wait_for(lambda: "draining for 30s" in service.log_text(), what="the drain to begin")
    assert "stop heard" not in service.log_text()
    began = time.monotonic()
    second = service.cli("stop")
    assert second.returncode == 0, second.stderr
    _heard_at(service)
    out, err = first.communicate(timeout=20)
    assert time.monotonic() - began < 20
    assert first.returncode == 0, err
    assert f"{service.name} stopped (pid {supervisor})" in out
    assert is_gone(supervisor)
    assert wait_for(lambda: is_gone(child), what="the service to end")
    assert "stopped by SIGTERM" in service.cli("status").stdout
    assert "SIGKILL" not in service.log_text()
    assert "Traceback" not in service.log_text()


# An event loop's own SIGTERM handler: it hears the signal at once (asyncio
# reads it from the wakeup fd), and must hear it once, not again at the drain's end.
LOOP_HANDLER = """\
import asyncio

async def serve():
    loop = asyncio.get_running_loop()
    heard = []
    loop.add_signal_handler(signal.SIGTERM, lambda: heard.append(time.time()))
    ready()
    print("looping", flush=True)
    while not heard:
        await asyncio.sleep(0.02)
    await asyncio.sleep(2.5)  # on past the drain's end
    print(f"loop handler ran {len(heard)} time(s)", flush=True)

return serve()
"""


def test_a_loops_own_handler_hears_the_stop_once(make_service: Callable[..., Service]) -> None:
    service = make_service(body=LOOP_HANDLER, drain=1.0)
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: is_gone(pid), what="the daemon to end")
    assert "loop handler ran 1 time(s)" in service.log_text(), service.log_text()


@pytest.mark.scenario(
    "Faults",
    "SIGKILL during a drain, then a new run (pid 1 again in a container)",
    lost="nothing: the new run removes the drain's record; status never says a ready run drains",
)
def test_a_drain_record_left_by_a_sigkill_goes_with_the_next_run(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(body=NOTES_STOP, drain=3.0)
    record = service.pidfile.with_name(service.pidfile.name + ".draining")
    pid = service.start()
    wait_for(lambda: "looping" in service.log_text(), what="main's loop")
    os.kill(pid, signal.SIGTERM)
    wait_for(record.exists, what="the drain's record")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), what="the killed service to go")
    assert record.exists()
    pid = service.start()
    assert not record.exists()
    # A record that names the running pid (as pid 1 in a container would) is
    # believed for the drain's length at most, however far its end.
    record.write_text(f"pid={pid}\nuntil={time.time() + 1e9:.3f}\n")
    line = service.cli("status").stdout.splitlines()[0]
    seconds = float(line.split("told to stop in ")[1].split("s)")[0])
    assert 0 < seconds <= 3.0, line
    record.unlink()
    assert "draining" not in service.cli("status").stdout
    service.stop_gracefully(pid)
