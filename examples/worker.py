"""A job worker: one file per job in a spool directory, each moved to done/ when processed.

A stop or restart never cuts a job in half: the job in flight is finished
and moved, no new job starts after the stop request, and no job is lost or
done twice.  Jobs are claimed by an atomic rename into work/, so a worker
killed outright (SIGKILL, power loss) finds its unfinished job there on the
next start and does it again.

Try it::

    mkdir -p /tmp/spool/incoming
    python examples/worker.py start --spool /tmp/spool
    for i in 1 2 3; do echo "job $i" > /tmp/spool/incoming/job-$i; done
    python examples/worker.py pending --spool /tmp/spool   # a custom command
    python examples/worker.py restart --spool /tmp/spool   # finishes the job in flight
    ls /tmp/spool/done
    python examples/worker.py stop --spool /tmp/spool

Each spool directory is an instance of its own (its pidfile and log live in
it). WORKER_SPOOL, WORKER_JOB_SECONDS and WORKER_POLL_SECONDS set the defaults.
"""

import os
import time
from pathlib import Path

from daemonize_deco import daemon, should_stop, sleep

SPOOL = Path(os.environ.get("WORKER_SPOOL", "/tmp/spool")).resolve()
JOB_SECONDS = float(os.environ.get("WORKER_JOB_SECONDS", "1.0"))
POLL_SECONDS = float(os.environ.get("WORKER_POLL_SECONDS", "0.2"))


class Spool:
    """The spool's folders: incoming/ (queued), work/ (claimed), done/ (finished)."""

    def __init__(self, root: Path) -> None:
        self.incoming, self.work, self.done = root / "incoming", root / "work", root / "done"


@daemon(pidfile="{spool}/worker.pid", stdout="{spool}/worker.log")
def main(spool: Path = SPOOL, job_seconds: float = JOB_SECONDS) -> None:
    """Do the jobs dropped into a spool directory, one at a time.

    Args:
        spool: the spool directory (incoming/, work/, done/; pidfile and log).
        job_seconds: how long one job takes (a stand-in for real work).
    """
    folders = Spool(spool.resolve())
    for folder in (folders.incoming, folders.work, folders.done):
        folder.mkdir(parents=True, exist_ok=True)
    requeue_unfinished(folders)
    print("worker: ready", flush=True)
    while not should_stop():
        job = claim_next_job(folders)
        if job is None:
            sleep(POLL_SECONDS)  # wakes at once on stop
            continue
        process(folders, job, job_seconds)  # never interrupted: a stop waits for it
    print("worker: stopped, no job in flight", flush=True)


def requeue_unfinished(spool: Spool) -> None:
    """Jobs left in work/ by a worker that was killed outright are done again.

    A job whose result already reached done/ was finished: only the
    bookkeeping was cut short, so it is not done a second time.
    """
    for leftover in sorted(spool.work.iterdir()):
        if leftover.suffix == ".result" or (spool.done / leftover.name).exists():
            leftover.unlink()
        else:
            leftover.rename(spool.incoming / leftover.name)
            print("worker: requeued", leftover.name)


def claim_next_job(spool: Spool) -> Path | None:
    """Move the oldest incoming job into work/; the rename is the claim."""
    for job in sorted(spool.incoming.iterdir()):
        claimed = spool.work / job.name
        try:
            job.rename(claimed)
        except FileNotFoundError:
            continue  # someone else took it
        return claimed
    return None


def process(spool: Spool, job: Path, seconds: float) -> None:
    """Do the job (here: wait, then upper-case it) and move the result to done/."""
    started = time.monotonic()
    text = job.read_text()
    time.sleep(seconds)  # the work itself; deliberately not interruptible
    partial = spool.work / (job.name + ".result")
    partial.write_text(text.upper())
    partial.rename(spool.done / job.name)  # the commit point: from here on the job is done
    job.unlink()
    print(f"worker: done {job.name} in {time.monotonic() - started:.2f}s", flush=True)


@main.command
def pending(spool: Path = SPOOL) -> int:
    """List the jobs not done yet (incoming and in flight)."""
    folders = Spool(spool.resolve())
    names = sorted(
        p.name
        for folder in (folders.incoming, folders.work)
        if folder.exists()
        for p in folder.iterdir()
    )
    print("\n".join(names) if names else "no pending jobs")
    return 0


if __name__ == "__main__":
    main()
