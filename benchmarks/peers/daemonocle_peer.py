"""daemonocle: its own start/stop actions."""

import sys

import daemonocle
from service import PIDFILE, service

if __name__ == "__main__":
    daemonocle.Daemon(worker=service, pidfile=PIDFILE, name="bench").do_action(sys.argv[1])
