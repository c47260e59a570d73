"""examples/kvserver.py through its command line, with clients nobody here wrote.

redis-py (a test dependency) and Debian's redis-tools (redis-cli,
redis-benchmark; .ci/run installs them).  These tests do not skip: a
missing redis-cli is a failure, so CI cannot pass without exercising them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import redis
from conftest import MARK, REPO, is_gone, marked_pids, python_path, wait_for

pytestmark = pytest.mark.timeout(90)

KVSERVER = REPO / "examples" / "kvserver.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KV:
    """One kvserver in tmp_path on a free port."""

    def __init__(self, tmp_path, mark: str) -> None:
        self.dir = tmp_path / "kv"
        self.dir.mkdir()
        self.port = free_port()
        self.env = dict(
            os.environ, PYTHONPATH=python_path(REPO), KV_DIR=str(self.dir), **{MARK: mark}
        )
        self.env["KV_PORT"] = str(self.port)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(KVSERVER), *args],
            capture_output=True, text=True, env=self.env, timeout=60,
        )  # fmt: skip

    def redis_cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def client(self) -> redis.Redis:
        # redis-py 8 asks for RESP3 by default; this server speaks RESP2.
        return redis.Redis(port=self.port, protocol=2, socket_timeout=10)


@pytest.fixture
def kv(tmp_path, mark):
    server = KV(tmp_path, mark)
    yield server
    server.cli("stop")


@pytest.fixture
def running(kv):
    result = kv.cli("start")
    assert result.returncode == 0, result.stderr
    return kv


def test_start_then_ping_needs_no_sleep(kv):
    command = f"{sys.executable} {KVSERVER} start && redis-cli -p {kv.port} ping"
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=kv.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "PONG"


def test_port_in_use_fails_the_start(kv):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", kv.port))
        taken.listen()
        result = kv.cli("start")
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (kv.dir / "kvserver.pid").exists()
    assert marked_pids(kv.env[MARK]) == []


def test_redis_py_commands(running):
    r = running.client()
    assert r.ping() is True
    assert r.echo("hello") == b"hello"
    assert r.set("a", "1") is True
    assert r.get("a") == b"1"
    assert r.get("missing") is None
    assert r.incr("a") == 2
    assert r.incr("counter") == 1
    r.set("text", "x")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incr("text")
    assert r.exists("a", "counter", "missing") == 2
    assert sorted(r.keys("*")) == [b"a", b"counter", b"text"]
    assert r.keys("c*") == [b"counter"]
    assert r.dbsize() == 3
    assert r.delete("a", "missing") == 1
    assert r.set("brief", "x", px=50) is True
    assert r.set("ex", "x", ex=100) is True
    wait_for(lambda: r.get("brief") is None, timeout=5, what="PX expiry")
    assert r.get("ex") == b"x"
    assert r.set("ex", "y", nx=True) is None
    assert r.flushdb() is True
    assert r.dbsize() == 0
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("NOSUCH")


def test_quit_closes_the_connection(running):
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"*1\r\n$4\r\nQUIT\r\n")
        assert sock.recv(100) == b"+OK\r\n"
        assert sock.recv(100) == b""


def test_redis_cli_and_redis_benchmark(running):
    assert running.redis_cli("set", "greeting", "hello") == "OK"
    assert running.redis_cli("get", "greeting") == "hello"
    assert running.redis_cli("incr", "n") == "1"
    assert running.redis_cli("dbsize") == "2"
    assert running.redis_cli("keys", "gr*") == "greeting"
    result = subprocess.run(
        ["redis-benchmark", "-p", str(running.port), "-t", "set,get", "-n", "2000", "-q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = result.stdout.replace("\r", "\n")
    assert "SET:" in output and "GET:" in output and "requests per second" in output


def test_ten_thousand_keys_survive_a_restart(running):
    r = running.client()
    pipe = r.pipeline(transaction=False)
    for i in range(10_000):
        pipe.set(f"key:{i}", f"value:{i}")
    assert all(pipe.execute())
    restarted = running.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    r = running.client()
    pipe = r.pipeline(transaction=False)
    for i in range(10_000):
        pipe.get(f"key:{i}")
    values = pipe.execute()
    assert values == [f"value:{i}".encode() for i in range(10_000)]
    assert r.dbsize() == 10_000


def test_graceful_stop_finishes_the_command_in_flight(running):
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$6\r\nflight\r\n")  # half a command
        assert running.redis_cli("ping") == "PONG"  # the half command is in the server
        stop = subprocess.Popen(
            [sys.executable, str(KVSERVER), "stop"],
            env=running.env,
            stdout=subprocess.PIPE,
            text=True,
        )

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", running.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            except ConnectionResetError:
                return False  # queued as the listener closed: the next try is refused
            return False

        wait_for(refused, what="the server to stop accepting")
        sock.sendall(b"$6\r\nlanded\r\n")  # the rest of it
        assert sock.recv(100) == b"+OK\r\n"
        assert sock.recv(100) == b"", "the connection is closed once its command is done"
        out, _ = stop.communicate(timeout=30)
    assert stop.returncode == 0 and "stopped" in out
    pid = int(out.split("(pid ")[1].split(")")[0])
    assert is_gone(pid)
    assert running.cli("start").returncode == 0
    assert running.client().get("flight") == b"landed", "the command in flight reached the log"


def test_idle_connection_does_not_delay_the_stop(running):
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        started = time.monotonic()
        result = running.cli("stop")
        assert result.returncode == 0 and "stopped" in result.stdout
        # Held, it would be killed at stop_timeout (10 s) instead of "stopped".
        assert time.monotonic() - started < 8, "an idle client must not hold the stop"
        assert sock.recv(100) == b""


def test_kvserver_options_name_the_instance_and_restart_keeps_the_port(tmp_path, mark):
    """The README's commands: --port and --dir instead of the environment."""
    folder = tmp_path / "kv-by-options"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
    env.update(PYTHONPATH=python_path(REPO), **{MARK: mark})
    port = free_port()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(KVSERVER), *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    at = ("--dir", str(folder))
    assert cli("start", "--port", str(port), *at).returncode == 0
    client = redis.Redis(port=port, protocol=2, socket_timeout=10)
    assert client.set("greeting", "hello")
    restarted = cli("restart", *at)  # --dir names the instance; its --port is reused
    assert restarted.returncode == 0, restarted.stderr
    assert client.get("greeting") == b"hello"
    assert f"options: --port {port} --dir {folder}" in cli("status", *at).stdout
    assert (folder / "kvserver.pid").exists() and (folder / "appendonly.resp").exists()
    assert cli("stop", *at).returncode == 0
