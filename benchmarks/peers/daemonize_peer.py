"""daemonize (PyPI): Daemonize(...).start(), and a stop that sends SIGTERM."""

import os
import signal
import sys

from daemonize import Daemonize
from service import PIDFILE, service

if __name__ == "__main__":
    if sys.argv[1] == "start":
        Daemonize(app="bench", pid=PIDFILE, action=service).start()
    else:
        with open(PIDFILE) as f:
            os.kill(int(f.read().strip()), signal.SIGTERM)
