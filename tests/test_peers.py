"""What the peers' own test suites check (issue 15): the parts done so far."""

from __future__ import annotations

import os
import pwd
import signal
import socket

import pytest
from conftest import IDLE

from daemonize_deco import daemon

pytestmark = pytest.mark.timeout(60)


def test_help_starts_with_what_the_service_is(make_service):
    svc = make_service(name="described")
    text = svc.script.read_text().replace(
        "def main():\n", 'def main():\n    """Keep the tickets moving.\n\n    Details.\n    """\n'
    )
    svc.script.write_text(text)
    helped = svc.cli("--help")
    assert helped.returncode == 0
    assert helped.stdout.splitlines()[2] == "Keep the tickets moving."
    assert "Details." not in helped.stdout


@pytest.mark.parametrize(
    ("register", "shown"),
    [
        (lambda m: m.on_stop(1), "@main.on_stop takes a function, not 1"),
        (lambda m: m.on_reload("x"), "@main.on_reload takes a function, not 'x'"),
        (lambda m: m.command(None), "@main.command takes a function, not None"),
        (lambda m: m.on_signal(signal.SIGUSR1)(3.5), "@main.on_signal takes a function, not 3.5"),
    ],
)
def test_a_hook_that_cannot_be_called_is_refused_at_registration(register, shown):
    service = daemon(pidfile="/tmp/x.pid")(lambda: None)
    with pytest.raises(TypeError, match=shown.replace("(", r"\(").replace(".", r"\.")):
        register(service)
    assert not service.hooks.on_stop and not service.hooks.on_reload
    assert not service.hooks.commands and not service.hooks.on_signal


def test_tilde_is_expanded_in_every_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    service = daemon(pidfile="~/app.pid", stdout="~/app.log", stderr="~/err.log", workdir="~")(
        lambda: None
    )
    config = service.config
    assert (config.pidfile, config.stdout, config.stderr, config.workdir) == (
        f"{tmp_path}/app.pid",
        f"{tmp_path}/app.log",
        f"{tmp_path}/err.log",
        str(tmp_path),
    )
    other = pwd.getpwnam("nobody").pw_dir
    assert daemon(pidfile="~nobody/x.pid")(lambda: None).config.pidfile == f"{other}/x.pid"


def test_a_service_with_a_tilde_pidfile_runs_there(make_service, tmp_path):
    svc = make_service(pidfile="~/svc.pid")
    svc.env["HOME"] = str(tmp_path)
    svc.pidfile = tmp_path / "svc.pid"
    pid = svc.start()
    assert svc.read_pid() == pid
    assert not (svc.dir / "~").exists() and not os.path.exists(os.path.join(os.getcwd(), "~"))
    svc.stop_gracefully(pid)


@pytest.mark.parametrize("command", ["status", "stop", "start", "restart"])
def test_a_pidfile_whose_content_was_overwritten(make_service, command):
    svc = make_service()
    pid = svc.start()
    svc.pidfile.write_text("banana\n")  # the same file, still locked by the daemon
    result = svc.cli(command, timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"pid {pid}" in result.stdout and "was missing or wrong: put back" in result.stdout
    if command in ("stop", "restart"):
        assert "stopped" in result.stdout
    else:
        assert svc.read_pid() == pid, "the content is repaired"
    svc.cli("stop")


def test_start_with_a_network_socket_on_stdin_stays_in_the_foreground(make_service):
    """inetd (nowait) or systemd Accept=yes: the connection is stdin."""
    svc = make_service(body="print('in main', os.getpid(), flush=True)\n" + IDLE, stdout=None)
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        connection, _ = server.accept()
        with client, connection:
            proc = svc.popen("start", stdin=connection.fileno())
            assert proc.stdout.readline() == f"in main {proc.pid}\n", "start detached"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "running in the foreground under a super-server" in err


def test_a_unix_socketpair_on_stdin_still_detaches(make_service):
    """sshd and job runners give commands socketpairs: not a super-server."""
    svc = make_service()
    left, right = socket.socketpair()
    with left, right:
        result = svc.cli("start", stdin=left.fileno())
    assert result.returncode == 0, result.stderr
    svc.stop_gracefully(svc.pid_from(result.stdout))


def test_under_a_systemd_unit_start_still_forks(make_service):
    """Type=forking: PID 1 is systemd (INVOCATION_ID set) and expects the fork."""
    svc = make_service()
    result = svc.cli("start", env=dict(svc.env, INVOCATION_ID="0123456789abcdef"))
    assert result.returncode == 0 and "foreground" not in result.stderr
    svc.stop_gracefully(svc.pid_from(result.stdout))
