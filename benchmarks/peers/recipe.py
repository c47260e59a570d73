"""The classic double-fork recipe everybody copies, in its minimal form.

start: refuse if the pidfile exists, fork, setsid, fork, chdir, umask,
redirect, write the pidfile, remove it at exit, SIGTERM -> sys.exit.
stop: send SIGTERM to the pid in the file and return.
"""

import atexit
import os
import signal
import sys

from service import LOG, PIDFILE, service, stop_by_pidfile


def start():
    if os.path.exists(PIDFILE):
        print("pidfile exists: already running?", file=sys.stderr)
        sys.exit(1)
    if os.fork():
        sys.exit(0)
    os.setsid()
    if os.fork():
        sys.exit(0)
    os.chdir("/")
    os.umask(0)
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    atexit.register(os.remove, PIDFILE)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(PIDFILE, "w") as f:
        f.write(f"{os.getpid()}\n")
    service()


if __name__ == "__main__":
    {"start": start, "stop": stop_by_pidfile}[sys.argv[1]]()
