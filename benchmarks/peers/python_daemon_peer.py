"""python-daemon: DaemonContext with its PID lock file, and a small start/stop wrapper."""

import sys

import daemon
import daemon.pidfile
from service import LOG, PIDFILE, service, stop_by_pidfile


def start():
    log = open(LOG, "a")  # noqa: SIM115
    lock = daemon.pidfile.TimeoutPIDLockFile(PIDFILE, acquire_timeout=0)
    with daemon.DaemonContext(pidfile=lock, stdout=log, stderr=log):
        service()


if __name__ == "__main__":
    {"start": start, "stop": stop_by_pidfile}[sys.argv[1]]()
