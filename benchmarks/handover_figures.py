"""Restarting without dropping connections: 20 clients while ``restart`` runs 20 times.

    python3 benchmarks/handover_figures.py [--clients 20] [--restarts 20]

examples/kvserver.py on loopback; each client sends SET then GET over raw
RESP in a loop, reconnecting when the server closes its connection.  The
same run is made twice: with ``restart`` (the sockets handed over) and with
``stop`` then ``start`` (what ``restart`` did before: the window in which
the port refuses).  For each: refused connections, failed commands (an
error reply, or a GET not returning the value just acknowledged), commands
sent again after the server closed the connection, acknowledged SETs not
readable after the last restart, the longest time a client could not
connect, and the median time of one restart.

Writes the table as the section "Restarting without dropping connections"
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from asyncio_figures import environment, write_section

REPO = Path(__file__).resolve().parent.parent
KVSERVER = REPO / "examples" / "kvserver.py"
HEADING = "## Restarting without dropping connections"


def _complete(reply: bytes) -> bool:
    if not reply.endswith(b"\r\n"):
        return False
    return not reply.startswith(b"$") or reply == b"$-1\r\n" or reply.count(b"\r\n") >= 2


def call(conn: socket.socket, *args: bytes) -> bytes:
    """Send one RESP command, return the reply's payload (b"" for nil)."""
    conn.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args))
    reply = b""
    while not _complete(reply):
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed by the server")
        reply += chunk
    if reply == b"$-1\r\n":
        return b""
    return reply.split(b"\r\n")[1] if reply.startswith(b"$") else reply.strip()


class Clients:
    """Clients sending SET then GET in a loop over raw RESP, reconnecting when closed."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.refused = 0
        self.errors: list[str] = []
        self.retried = 0  # commands sent again after the server closed the connection
        self.longest_refusal = 0.0  # seconds a client could not connect, at most
        self.acknowledged: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(count)]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(30)

    def connect(self) -> socket.socket:
        first_refusal = None
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except ConnectionRefusedError:
                first_refusal = first_refusal or time.monotonic()
                with self.lock:
                    self.refused += 1
                time.sleep(0.001)
                continue
            if first_refusal is not None:
                with self.lock:
                    waited = time.monotonic() - first_refusal
                    self.longest_refusal = max(self.longest_refusal, waited)
            return conn

    def run(self, client: int) -> None:
        conn = self.connect()
        n = 0
        while not self.done.is_set():
            key, value = b"c%d:%d" % (client, n), b"v%d" % n
            try:
                if call(conn, b"SET", key, value) != b"+OK":
                    self.errors.append(f"SET {key!r}")
                    break
                with self.lock:
                    self.acknowledged[key] = value
                got = call(conn, b"GET", key)
                if got != value:
                    self.errors.append(f"GET {key!r} gave {got!r}")
                    break
                n += 1
            except (ConnectionResetError, BrokenPipeError):
                with self.lock:
                    self.retried += 1
                conn.close()
                conn = self.connect()
        conn.close()

    def lost(self) -> list[bytes]:
        """Acknowledged SETs that a GET now does not return."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            return [k for k, v in self.acknowledged.items() if call(conn, b"GET", k) != v]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_once(handover: bool, clients: int, restarts: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dd-handover-") as scratch:
        port = free_port()
        env = dict(environment(), KV_DIR=scratch, KV_PORT=str(port))

        def command(*words: str) -> None:
            subprocess.run(
                [sys.executable, str(KVSERVER), *words],
                env=env, check=True, capture_output=True, timeout=60,
            )  # fmt: skip

        command("start")
        times = []
        try:
            with Clients(port, clients) as load:
                _wait_for_traffic(load, 200)
                for _ in range(restarts):
                    began = time.perf_counter()
                    if handover:
                        command("restart")
                    else:
                        command("stop")
                        command("start")
                    times.append((time.perf_counter() - began) * 1000)
                    _wait_for_traffic(load, len(load.acknowledged) + 20)
            lost = load.lost()
        finally:
            command("stop")
    return {
        "refused": load.refused,
        "errors": len(load.errors),
        "retried": load.retried,
        "lost": len(lost),
        "acknowledged": len(load.acknowledged),
        "longest_refusal_ms": load.longest_refusal * 1000,
        "restart_ms": statistics.median(times),
    }


def _wait_for_traffic(load: Clients, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(load.acknowledged) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the clients made no progress")
        time.sleep(0.005)


def render(new: dict[str, float], old: dict[str, float], clients: int, restarts: int) -> str:
    rows = [
        ("refused connections", "refused", "{:.0f}"),
        ("failed commands", "errors", "{:.0f}"),
        ("acknowledged SETs lost", "lost", "{:.0f}"),
        ("commands sent again after the server closed the connection", "retried", "{:.0f}"),
        ("longest time a client could not connect (ms)", "longest_refusal_ms", "{:.1f}"),
        ("one restart, median (ms)", "restart_ms", "{:.1f}"),
        ("SETs acknowledged in the run", "acknowledged", "{:.0f}"),
    ]
    lines = [
        HEADING,
        "",
        f"`python3 benchmarks/handover_figures.py --clients {clients} --restarts {restarts}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPython "
        f"{sys.version.split()[0]}; examples/kvserver.py on loopback, both columns in one run.",
        "",
        "| figure | `restart` (sockets handed over) | `stop` then `start` (before) |",
        "|---|---|---|",
    ]
    for label, key, form in rows:
        lines.append(f"| {label} | {form.format(new[key])} | {form.format(old[key])} |")
    lines += [
        "",
        "Goal for `restart`: 0 refused, 0 failed, 0 lost. A command sent again is one a",
        "client wrote after the old instance had decided to close its idle connection; it was",
        "never executed nor acknowledged, and the client sends it on a new connection (as",
        "redis-py's retry does). `restart` takes longer than stop-then-start: it waits until",
        "the new instance is ready and the old one has finished its connections.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=20)
    options = parser.parse_args()
    new = run_once(True, options.clients, options.restarts)
    old = run_once(False, options.clients, options.restarts)
    section = render(new, old, options.clients, options.restarts)
    print(section)
    write_section(HEADING, section)
    return 0 if new["refused"] == new["errors"] == new["lost"] == 0 else 1


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
