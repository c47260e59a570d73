"""examples/kvserver.py beside a real redis-server, measured in the same run.

    python benchmarks/kvserver_vs_redis.py [--requests 100000] [--rounds 3]

Runs ``redis-benchmark -t set,get -n N -q`` against both servers, alternating
between them round by round so that both see the same machine, and prints
requests per second (the median of the rounds) and our ratio to Redis.
Needs Debian's redis-server and redis-tools (apt-get install redis-server
redis-tools).  A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KVSERVER = REPO / "examples" / "kvserver.py"
RATE = re.compile(r"(SET|GET): ([\d.]+) requests per second")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
        else:
            return


def run_benchmark(port: int, requests: int) -> dict[str, float]:
    command = ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(requests), "-q"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {name: float(rate) for name, rate in RATE.findall(output.replace("\r", "\n"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    missing = [tool for tool in ("redis-server", "redis-benchmark") if not shutil.which(tool)]
    if missing:
        print(
            f"missing {', '.join(missing)}: apt-get install redis-server redis-tools",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory() as scratch:
        ours_port, redis_port = free_port(), free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO), KV_DIR=scratch, KV_PORT=str(ours_port))
        started = subprocess.run(
            [sys.executable, str(KVSERVER), "start"], env=env, capture_output=True, text=True
        )
        if started.returncode != 0:
            print(started.stderr, file=sys.stderr)
            return 1
        redis_server = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no",
             "--dir", scratch],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(redis_port)
            results: dict[str, dict[str, list[float]]] = {"kvserver": {}, "redis-server": {}}
            for _ in range(options.rounds):
                for label, port in (("kvserver", ours_port), ("redis-server", redis_port)):
                    for name, rate in run_benchmark(port, options.requests).items():
                        results[label].setdefault(name, []).append(rate)
        finally:
            redis_server.terminate()
            redis_server.wait()
            subprocess.run([sys.executable, str(KVSERVER), "stop"], env=env, capture_output=True)

    print(f"redis-benchmark -t set,get -n {options.requests} -q, median of {options.rounds} rounds")
    print()
    print("| command | kvserver (req/s) | redis-server (req/s) | kvserver / redis |")
    print("|---|---|---|---|")
    for name in ("SET", "GET"):
        ours = statistics.median(results["kvserver"][name])
        theirs = statistics.median(results["redis-server"][name])
        print(f"| {name} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
