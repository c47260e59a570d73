"""Without ``listen=``, a service's first listening socket makes it ready (``_listening``)."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from conftest import is_gone, wait_for

pytestmark = pytest.mark.timeout(60)

# main opens its socket at once, and listens only after a slow startup.
LATE_LISTENER = """
sock = socket.socket({family}, socket.SOCK_STREAM)
sock.bind({address!r})
time.sleep(3)  # loading what it serves
sock.listen()
while True:
    conn, _ = sock.accept()
    conn.sendall(b"hello")
    conn.close()
"""


@pytest.mark.scenario(
    "Defaults",
    "a main that listens late: start waits for the listening socket",
    lost="nothing: a client connecting right after start is served",
)
@pytest.mark.parametrize("family", ["AF_UNIX", "AF_INET6"])
def test_start_waits_for_the_first_listening_socket(make_service, tmp_path, family: str) -> None:
    if family == "AF_UNIX":
        address: object = str(tmp_path / "svc.sock")
    else:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            address = ("::1", probe.getsockname()[1])
    svc = make_service(
        prelude="import socket",
        body=LATE_LISTENER.format(family=f"socket.{family}", address=address),
    )
    began = time.monotonic()
    result = svc.cli("start")
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert took >= 3, f"start returned after {took:.1f}s, before main listened"
    with socket.socket(getattr(socket, family)) as client:
        client.settimeout(5)
        client.connect(address)
        assert client.recv(16) == b"hello"
    pid = svc.pid_from(result.stdout)
    svc.cli("stop")
    assert is_gone(pid)


def test_a_main_with_a_socket_that_never_listens_is_ready_before_start_timeout(
    make_service,
) -> None:
    # A client, say: start waits (it cannot tell) up to start_grace before start_timeout.
    svc = make_service(
        prelude="import socket",
        body="a, b = socket.socketpair()\nthreading.Event().wait()",
        start_timeout=4.0,
    )
    began = time.monotonic()
    result = svc.cli("start")
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert 2.5 <= took < 4, f"start returned after {took:.1f}s"
    assert "taken as ready" in svc.log_text()
    pid = svc.pid_from(result.stdout)
    svc.cli("stop")
    assert is_gone(pid)


@pytest.mark.scenario(
    "Defaults",
    "a sync main that only connects somewhere (a consumer blocked in recv, or in a connect "
    "still on its way) and never listens",
    lost="nothing but time: start takes start_grace, as before, not start_timeout",
)
@pytest.mark.parametrize("connect", ["answered", "on its way"])
def test_a_sync_client_that_never_listens_is_ready_after_the_grace(make_service, connect) -> None:
    with socket.socket() as broker:
        broker.bind(("127.0.0.1", 0))
        broker.listen(0)
        address = broker.getsockname()
        # A backlog of 0 full with one connection: the next connect's SYN gets no answer.
        queued = socket.create_connection(address) if connect == "on its way" else None
        svc = make_service(
            prelude="import socket",
            body=f"conn = socket.socket()\nconn.connect({address!r})\nconn.recv(1)",
        )
        began = time.monotonic()
        result = svc.cli("start")
        took = time.monotonic() - began
        assert result.returncode == 0, result.stderr
        pid = svc.pid_from(result.stdout)
        os.kill(pid, signal.SIGKILL)  # how it stops is not what this test is about
        wait_for(lambda: is_gone(pid), what="the killed service to go")
        if queued is not None:
            queued.close()
    # Ready at the grace's end, not postponed to start_timeout - start_grace (9 s).
    assert "not listening yet" not in svc.log_text(), svc.log_text()
    assert took < 9, f"start took {took:.1f}s for a main that never listens"
