"""A job worker: one file per job in a spool directory, each moved to done/ when processed.

A stop or restart never cuts a job in half: the job in flight is finished
and moved, no new job starts after the stop request, and no job is lost or
done twice.  Jobs are claimed by an atomic rename into work/, so a worker
killed outright (SIGKILL, power loss) finds its unfinished job there on the
next start and does it again.

Try it::

    mkdir -p /tmp/spool/incoming
    python examples/worker.py start
    for i in 1 2 3; do echo "job $i" > /tmp/spool/incoming/job-$i; done
    python examples/worker.py pending      # a custom command: jobs not done yet
    python examples/worker.py restart      # finishes the job in flight first
    ls /tmp/spool/done
    python examples/worker.py stop
"""

import os
import time
from pathlib import Path

from daemonize_deco import daemon, should_stop, sleep

SPOOL = Path(os.environ.get("WORKER_SPOOL", "/tmp/spool")).resolve()
JOB_SECONDS = float(os.environ.get("WORKER_JOB_SECONDS", "1.0"))
POLL_SECONDS = float(os.environ.get("WORKER_POLL_SECONDS", "0.2"))
INCOMING, WORK, DONE = SPOOL / "incoming", SPOOL / "work", SPOOL / "done"


@daemon(pidfile=SPOOL / "worker.pid", stdout=SPOOL / "worker.log")
def main() -> None:
    for folder in (INCOMING, WORK, DONE):
        folder.mkdir(parents=True, exist_ok=True)
    requeue_unfinished()
    print("worker: ready", flush=True)
    while not should_stop():
        job = claim_next_job()
        if job is None:
            sleep(POLL_SECONDS)  # wakes at once on stop
            continue
        process(job)  # never interrupted: a stop waits for it
    print("worker: stopped, no job in flight", flush=True)


def requeue_unfinished() -> None:
    """Jobs left in work/ by a worker that was killed outright are done again.

    A job whose result already reached done/ was finished: only the
    bookkeeping was cut short, so it is not done a second time.
    """
    for leftover in sorted(WORK.iterdir()):
        if leftover.suffix == ".result" or (DONE / leftover.name).exists():
            leftover.unlink()
        else:
            leftover.rename(INCOMING / leftover.name)
            print("worker: requeued", leftover.name)


def claim_next_job() -> Path | None:
    """Move the oldest incoming job into work/; the rename is the claim."""
    for job in sorted(INCOMING.iterdir()):
        claimed = WORK / job.name
        try:
            job.rename(claimed)
        except FileNotFoundError:
            continue  # someone else took it
        return claimed
    return None


def process(job: Path) -> None:
    """Do the job (here: wait, then upper-case it) and move the result to done/."""
    started = time.monotonic()
    text = job.read_text()
    time.sleep(JOB_SECONDS)  # the work itself; deliberately not interruptible
    partial = WORK / (job.name + ".result")
    partial.write_text(text.upper())
    partial.rename(DONE / job.name)  # the commit point: from here on the job is done
    job.unlink()
    print(f"worker: done {job.name} in {time.monotonic() - started:.2f}s", flush=True)


@main.command
def pending() -> int:
    """List the jobs not done yet (incoming and in flight)."""
    names = sorted(
        p.name for folder in (INCOMING, WORK) if folder.exists() for p in folder.iterdir()
    )
    print("\n".join(names) if names else "no pending jobs")
    return 0


if __name__ == "__main__":
    main()
