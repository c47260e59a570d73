"""The signal path in-process: handlers in and out as one context manager, one decoder.

The handlers are process-wide, and so are pytest's: every case that installs
ours runs in a fresh interpreter of its own (a script), which compares what it
finds before and after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import python_path

from daemonize_deco._signal_path import WAKE, SignalPath, read_recorded

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent

# What the process has before: its own handlers, SIGHUP and SIGUSR1 blocked, a
# wakeup fd of its own.  ``snapshot()`` is all of it, and the open descriptors
# (the record pipe among them).
PRELUDE = """
import os, signal, sys, threading
from daemonize_deco import _signals, _takeover

def theirs(signum, frame):
    pass

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(sig, theirs)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGUSR1})
wake_read, wake_write = os.pipe()
os.set_blocking(wake_write, False)
signal.set_wakeup_fd(wake_write)

def snapshot():
    handlers = {int(sig): signal.getsignal(sig) for sig in
                (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)}
    mask = sorted(int(sig) for sig in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    # The stop pipe stays, by design: a thread main left behind may sleep on it.
    stop_pipe = {str(_signals._state.stop_read), str(_signals._state.stop_write)}
    return handlers, mask, wakeup, sorted(set(open_fds()) - stop_pipe)

def open_fds():
    # The open descriptors, not the one listdir used a moment ago.
    listed = os.listdir("/proc/self/fd")
    return [fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}")]

before = snapshot()

def check(what):
    after = snapshot()
    names = ("handlers", "mask", "wakeup fd", "descriptors")
    wrong = [f"{name}: {a!r} != {b!r}" for name, a, b in zip(names, before, after) if a != b]
    if wrong:
        print(what, "not restored:", *wrong, sep="\\n  ")
        sys.exit(1)
    print(what, "restored")
"""


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": python_path(ROOT)},
        check=False,
    )


def assert_restored(body: str, what: str) -> None:
    result = run_script(body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{what} restored" in result.stdout


def test_installed_then_restored_when_the_block_ends() -> None:
    assert_restored(
        """
        with _signals.Handlers() as handlers:
            handlers.install([signal.SIGUSR1])
            assert signal.getsignal(signal.SIGTERM) is not theirs
            assert signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        check("after the block")
        """,
        "after the block",
    )


def test_restored_when_the_block_raises() -> None:
    assert_restored(
        """
        try:
            with _signals.Handlers() as handlers:
                handlers.install([signal.SIGUSR1])
                raise RuntimeError("main failed")
        except RuntimeError:
            pass
        check("after a raise")
        """,
        "after a raise",
    )


def test_restored_after_a_failure_half_way_through_the_handlers() -> None:
    """SIGUSR1's handler is in, SIGKILL's cannot be: the wakeup fd was set, the pipes made."""
    assert_restored(
        """
        try:
            with _signals.Handlers() as handlers:
                handlers.install([signal.SIGUSR1, signal.SIGKILL])
        except OSError:
            pass
        else:
            sys.exit("installing a handler for SIGKILL did not fail")
        check("half-way through the handlers")
        """,
        "half-way through the handlers",
    )


def test_restored_after_a_failure_past_the_mask() -> None:
    """Everything changed (handlers, wakeup fd, the mask unblocked) when the last step fails."""
    assert_restored(
        """
        def fail(*args, **kwargs):
            assert signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            raise RuntimeError("the last step failed")

        _takeover.take_part = fail
        try:
            with _signals.Handlers() as handlers:
                handlers.install([signal.SIGUSR1])
        except RuntimeError:
            pass
        else:
            sys.exit("the last step did not fail")
        check("past the mask")
        """,
        "past the mask",
    )


def test_nothing_changes_when_installed_from_another_thread() -> None:
    assert_restored(
        """
        from daemonize_deco import DaemonError
        errors = []

        def install():
            try:
                with _signals.Handlers() as handlers:
                    handlers.install()
            except DaemonError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=install)
        thread.start()
        thread.join()
        assert errors and "main thread" in errors[0], errors
        check("from another thread")
        """,
        "from another thread",
    )


def test_a_child_forked_in_the_block_leaves_the_parents_alone() -> None:
    """Leaving the block in a forked child restores nothing there, and closes nothing."""
    assert_restored(
        """
        with _signals.Handlers() as handlers:
            record_fd = handlers.install()
            pid = os.fork()
            if pid == 0:
                handlers.__exit__(None, None, None)
                os._exit(0)
            os.waitpid(pid, 0)
            os.fstat(record_fd)  # still open here
        check("after a fork")
        """,
        "after a fork",
    )


class Recorder(SignalPath):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def handle_stop(self, signum: int) -> None:
        self.calls.append(("stop", signum))

    def handle_reload(self) -> None:
        self.calls.append(("reload", 1))

    def handle_signal(self, signum: int) -> None:
        self.calls.append(("signal", signum))

    def handle_wakeup_taken(self) -> None:
        self.calls.append(("wakeup taken", 255))


def test_each_signal_goes_to_its_handler_in_arrival_order() -> None:
    recorder = Recorder()
    recorder.dispatch(bytes([10, WAKE, 15, 1, 255, 2, 12]))
    assert recorder.calls == [
        ("signal", 10),
        ("stop", 15),
        ("reload", 1),
        ("wakeup taken", 255),
        ("stop", 2),
        ("signal", 12),
    ]


def test_the_pipe_is_read_up_to_the_limit_and_what_is_left_stays() -> None:
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(read_end, False)
        os.write(write_end, bytes(range(1, 101)))
        first = b"".join(read_recorded(read_end, limit=60))
        assert first == bytes(range(1, 61))
        assert b"".join(read_recorded(read_end)) == bytes(range(61, 101))
        assert list(read_recorded(read_end)) == []  # empty: no read blocks
    finally:
        os.close(read_end)
        os.close(write_end)
