"""python-daemon: DaemonContext with its PID lock file, and a small start/stop wrapper."""

import os
import signal
import sys

import daemon
import daemon.pidfile
from service import LOG, PIDFILE, service


def start():
    log = open(LOG, "a")  # noqa: SIM115
    lock = daemon.pidfile.TimeoutPIDLockFile(PIDFILE, acquire_timeout=0)
    with daemon.DaemonContext(pidfile=lock, stdout=log, stderr=log):
        service()


def stop():
    with open(PIDFILE) as f:
        os.kill(int(f.read().strip()), signal.SIGTERM)


if __name__ == "__main__":
    {"start": start, "stop": stop}[sys.argv[1]]()
