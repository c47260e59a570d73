"""The trivial service every peer runs: print a line, sleep a second; or idle, or crash."""

import os
import signal
import time

MODE = os.environ.get("BENCH_MODE", "loop")
PIDFILE = os.environ["BENCH_PIDFILE"]
LOG = os.environ["BENCH_LOG"]


def service(sleep=time.sleep, running=lambda: True, ready=lambda: None):
    if MODE == "crash":
        raise RuntimeError("startup crash")
    ready()  # set-up done: a library that can wait for this reports crashes before it
    while running():
        print("tick", flush=True)
        sleep(3600 if MODE == "idle" else 1)


def stop_by_pidfile():
    """The stop most wrappers have: SIGTERM to the pid in the file, and return."""
    with open(PIDFILE) as f:
        os.kill(int(f.read().strip()), signal.SIGTERM)
