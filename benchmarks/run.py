"""daemonize_deco beside the libraries people would pick instead, in one run.

    python3 benchmarks/run.py [--runs 20]

Creates benchmarks/.venv with the peers from PyPI (python-daemon,
daemonocle, daemonize) and this package, runs the same trivial service under
each, prints a Markdown table and writes it to BENCHMARKS.md.  Every figure
is also given as a ratio to daemonize_deco measured in the same run: the
machine is noisy and absolute times alone mean little.  A benchmark, not a
test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv"
PEERS_DIR = HERE / "peers"
PEER_PACKAGES = ["python-daemon", "daemonocle", "daemonize"]
TAG = "DAEMONIZE_DECO_BENCH_TAG"
COMPARE_HEADING = "## Change against a base revision"


# -- set-up --------------------------------------------------------------------------


def ensure_venv() -> None:
    """Re-run this script inside benchmarks/.venv, creating it on first use."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([*pip, *PEER_PACKAGES], check=True)
    # Not editable: an editable install's import hook would slow every interpreter's
    # start-up in the venv.  Reinstalled each run, so it measures the code as it is;
    # pip byte-compiles it, so import times are not compile times.
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(REPO)], check=True)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    env["PYTHONPATH"] = str(PEERS_DIR)
    return env


# -- processes seen from outside -------------------------------------------------------


def stat_of(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def is_live(pid: int) -> bool:
    stat = stat_of(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def tagged(tag: str) -> list[int]:
    """Live processes carrying ``tag``, other than this one."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
            except OSError:
                continue
    return [pid for pid in found if is_live(pid)]


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def live_pid(path: Path) -> int | None:
    pid = read_pid(path)
    return pid if pid is not None and is_live(pid) else None


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


# -- one peer ---------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    script: str
    workdir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def pidfile(self) -> Path:
        return self.workdir / f"{self.script}.pid"

    def env(self, mode: str = "loop") -> dict[str, str]:
        env = bench_env()
        env.update({
            "BENCH_PIDFILE": str(self.pidfile), "BENCH_LOG": str(self.workdir / "log"),
            "BENCH_MODE": mode, TAG: self.tag,
        })  # fmt: skip
        return env

    def argv(self, command: str) -> list[str]:
        return [sys.executable, str(PEERS_DIR / f"{self.script}.py"), command]

    def launch(self, command: str, mode: str = "loop") -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv(command), env=self.env(mode), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def run(self, command: str, mode: str = "loop") -> int:
        return self.launch(command, mode).wait(timeout=60)

    def clean(self) -> None:
        """Kill whatever this peer left and remove its pidfile."""
        for pid in tagged(self.tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not tagged(self.tag), 5)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    # -- figures --

    def time_start(self, mode: str = "loop") -> tuple[float, float, int | None]:
        """Seconds until the command returned, and until the pidfile named a live process."""
        started = time.perf_counter()
        proc = self.launch("start", mode)
        returned = live = None
        deadline = started + 15
        while (returned is None or live is None) and time.perf_counter() < deadline:
            if returned is None and proc.poll() is not None:
                returned = time.perf_counter() - started
            if live is None and live_pid(self.pidfile) is not None:
                live = time.perf_counter() - started
            time.sleep(0.0005)
        proc.wait()
        return returned or float("nan"), live or float("nan"), live_pid(self.pidfile)

    def time_stop(self, pid: int) -> float:
        """Seconds until the stop command returned and the process had exited."""
        pidfd = os.pidfd_open(pid)
        started = time.perf_counter()
        proc = self.launch("stop")
        returned = gone = None
        deadline = started + 30
        while (returned is None or gone is None) and time.perf_counter() < deadline:
            if returned is None and proc.poll() is not None:
                returned = time.perf_counter() - started
            if gone is None and select_readable(pidfd):
                gone = time.perf_counter() - started
            time.sleep(0.0005)
        os.close(pidfd)
        proc.wait()
        return max(returned or float("nan"), gone or float("nan"))


def select_readable(fd: int) -> bool:
    import select  # noqa: PLC0415

    return bool(select.select([fd], [], [], 0)[0])


# -- the measurements ------------------------------------------------------------------


@dataclass
class Results:
    start_return: list[float] = field(default_factory=list)
    start_live: list[float] = field(default_factory=list)
    stop: list[float] = field(default_factory=list)
    restart_total: float = float("nan")
    restart_failures: int = 0
    idle_switches: int | None = None
    rss_anon_kib: int | None = None
    import_ms: list[float] = field(default_factory=list)
    reports_crash: bool = False
    spares_unrelated: bool = False
    one_of_twenty: bool = False


def measure_start_stop(peer: Peer, runs: int, results: Results) -> None:
    peer.clean()
    for _ in range(runs):
        returned, live, pid = peer.time_start()
        results.start_return.append(returned)
        results.start_live.append(live)
        if pid is None:
            peer.clean()
            continue
        results.stop.append(peer.time_stop(pid))
        wait_until(lambda: not peer.pidfile.exists(), 2)
        peer.clean()


def measure_restarts(peer: Peer, count: int, results: Results) -> None:
    """``count`` restarts back to back, as a deploy script does them: stop, then start."""
    peer.clean()
    _, _, pid = peer.time_start()
    started = time.perf_counter()
    failures = 0
    for _ in range(count):
        old = pid
        if peer.name == "daemonize_deco":
            code = peer.run("restart")
        else:
            peer.run("stop")
            code = peer.run("start")
        ok = wait_until(lambda o=old: (p := live_pid(peer.pidfile)) is not None and p != o, 3)
        pid = live_pid(peer.pidfile)
        if code != 0 or not ok or len(daemons(peer)) != 1:
            failures += 1
    results.restart_total = time.perf_counter() - started
    results.restart_failures = failures
    peer.clean()


def daemons(peer: Peer) -> list[int]:
    """The peer's processes in a session of their own (detached daemons)."""
    own_session = os.getsid(0)
    return [
        p for p in tagged(peer.tag) if (s := stat_of(p)) is not None and int(s[3]) != own_session
    ]


def context_switches(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        total += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", status))
    return total


def rss_anon_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1))


def measure_idle(peer: Peer, results: Results) -> None:
    peer.clean()
    _, _, pid = peer.time_start("idle")
    if pid is None:
        peer.clean()
        return
    time.sleep(1.0)  # let start-up settle before the window opens
    before = context_switches(pid)
    time.sleep(5.0)  # the measurement window
    results.idle_switches = context_switches(pid) - before
    results.rss_anon_kib = rss_anon_kib(pid)
    peer.clean()


def bare_interpreter_rss() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"], env=bench_env())
    try:
        time.sleep(1.0)
        return rss_anon_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


IMPORTS = {
    "daemonize_deco": "daemonize_deco",
    "python-daemon": "daemon.pidfile",
    "daemonocle": "daemonocle",
    "daemonize": "daemonize",
    "classic recipe": "atexit, signal",
}


def measure_import(name: str, runs: int, results: Results) -> None:
    modules = [m.strip() for m in IMPORTS[name].split(",")]
    for _ in range(runs):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {', '.join(modules)}"],
            env=bench_env(), capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
        total = 0
        for line in err.splitlines():
            fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
            if len(fields) == 3 and fields[2] in modules:
                total += int(fields[1])
        results.import_ms.append(total / 1000)


def check_correctness(peer: Peer, results: Results) -> None:
    peer.clean()
    results.reports_crash = peer.run("start", "crash") != 0
    peer.clean()

    bystander = subprocess.Popen(["sleep", "300"])
    try:
        peer.pidfile.write_text(f"{bystander.pid}\n")
        peer.run("stop")
        results.spares_unrelated = bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    peer.clean()

    starts = [peer.launch("start") for _ in range(20)]
    for proc in starts:
        proc.wait(timeout=60)
    wait_until(lambda: live_pid(peer.pidfile) is not None, 5)
    time.sleep(1.0)  # let late daemons of peers whose start returns early appear
    results.one_of_twenty = len(daemons(peer)) == 1
    peer.clean()


# -- the table ---------------------------------------------------------------------------


def median_range(values: list[float], scale: float = 1000) -> str:
    clean = [v * scale for v in values if not math.isnan(v)]
    if not clean:
        return "n/a"
    return f"{statistics.median(clean):.1f} ({min(clean):.1f}–{max(clean):.1f})"


def ratio(value: float, ours: float) -> str:
    if math.isnan(value) or math.isnan(ours) or ours == 0:
        return "n/a"
    return f"{value / ours:.2f}×"


def med(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def render(results: dict[str, Results], floor: list[float], bare_kib: int, runs: int) -> str:
    ours = results["daemonize_deco"]
    lines = [
        "# Benchmarks",
        "",
        f"`python3 benchmarks/run.py --runs {runs}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"CPython {platform.python_version()}, Linux {platform.release()}, {os.cpu_count()} CPUs. "
        "Times in ms: median (min–max) of the runs; ratios are to daemonize_deco in the same run.",
        "",
        "## Speed",
        "",
        "| | start returns | start: pidfile names a live pid | stop: command returned and process gone | 20 restarts: total s (failures) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {median_range(r.start_return)} = {ratio(med(r.start_return), med(ours.start_return))} "
            f"| {median_range(r.start_live)} = {ratio(med(r.start_live), med(ours.start_return))} "
            f"| {median_range(r.stop)} = {ratio(med(r.stop), med(ours.stop))} "
            f"| {r.restart_total:.2f} ({r.restart_failures}) = {ratio(r.restart_total, ours.restart_total)} |"
        )
    lines.append(
        f"| `python -c pass` (floor) | {median_range(floor)} = {ratio(med(floor), med(ours.start_return))} | | | |"
    )
    lines += [
        "",
        "Live-pid ratios are to daemonize_deco's *start returns*, which comes after its daemon is ready.",
        "",
        "## Cost at rest and correctness",
        "",
        "| | idle context switches in 5 s | RssAnon MiB (vs bare interpreter) | import ms | start reports a startup crash | stop never signals an unrelated pid | 20 concurrent starts → one daemon |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rss = (
            "n/a"
            if r.rss_anon_kib is None
            else f"{r.rss_anon_kib / 1024:.2f} ({(r.rss_anon_kib - bare_kib) / 1024:+.2f})"
        )
        lines.append(
            f"| {name} | {r.idle_switches if r.idle_switches is not None else 'n/a'} | {rss} "
            f"| {median_range(r.import_ms, 1)} = {ratio(med(r.import_ms), med(ours.import_ms))} "
            f"| {yes(r.reports_crash)} | {yes(r.spares_unrelated)} | {yes(r.one_of_twenty)} |"
        )
    lines.append(
        f"| bare `python -c 'import time; time.sleep(100)'` | | {bare_kib / 1024:.2f} | | | | |"
    )
    recipe = results["classic recipe"]
    targets = [
        ("start ≤ the recipe's launch-to-live-pid", med(ours.start_return) <= med(recipe.start_live),
         f"{med(ours.start_return) * 1000:.1f} vs {med(recipe.start_live) * 1000:.1f} ms"),
        ("start ≤ 2.5 × `python -c pass`", med(ours.start_return) <= 2.5 * med(floor),
         f"{med(ours.start_return) / med(floor):.2f}×"),
        ("stop ≤ the recipe's time until its daemon is gone", med(ours.stop) <= med(recipe.stop),
         f"{med(ours.stop) * 1000:.1f} vs {med(recipe.stop) * 1000:.1f} ms"),
        ("zero idle wake-ups", ours.idle_switches == 0, str(ours.idle_switches)),
        ("RssAnon within 0.7 MiB of a bare interpreter",
         ours.rss_anon_kib is not None and ours.rss_anon_kib - bare_kib <= 0.7 * 1024,
         "n/a" if ours.rss_anon_kib is None else f"{(ours.rss_anon_kib - bare_kib) / 1024:+.2f} MiB"),
        ("import under 4 ms", med(ours.import_ms) < 4, f"{med(ours.import_ms):.2f} ms"),
        ("every correctness column yes", ours.reports_crash and ours.spares_unrelated and ours.one_of_twenty, ""),
    ]  # fmt: skip
    lines += ["", "## Targets (daemonize_deco)", "", "| target | met | figure |", "|---|---|---|"]
    lines += [
        f"| {what} | {'yes' if ok else '**no**'} | {figure} |" for what, ok, figure in targets
    ]
    return "\n".join(lines) + "\n"


NOTES = """
## How to read it

- **start returns** is when the `start` command exited; **live pid** is when the pidfile first
  named a live process. daemonize_deco's start returns only once the daemon is *ready* (here:
  `ready()` after the service's set-up, `wait_ready=True`), which is why it can report a startup
  crash; python-daemon's, daemonize's and the recipe's return at their first fork, before the
  daemon runs any service code. daemonocle's start waits about a second to see the child alive,
  and its stop polls once a second, hence its 1–2 s figures.
- **stop** ends when the command has returned *and* the process has exited (a zombie counts as
  exited: this machine's PID 1 reaps orphans late). The peers' stop wrappers send SIGTERM and
  return, so their figure is the daemon's own exit time.
- **restarts** are stop-then-start as a deploy script runs them (daemonize_deco: `restart`); a
  failure is a start that failed or did not leave exactly one live daemon named by the pidfile
  within 3 s. The recipe fails when its start finds the pidfile of a daemon still exiting.
- **Correctness**: "startup crash" runs a service that raises before its loop; "unrelated pid"
  writes the pid of a live `sleep` into the pidfile and runs stop; "20 concurrent starts"
  counts the detached daemons left running.
- The machine is noisy (2 shared cores): compare the ratios within one run, not the absolute
  times across runs. `python -c pass` is the floor every command pays.
"""


PEERS = {
    "daemonize_deco": "ours",
    "python-daemon": "python_daemon_peer",
    "daemonocle": "daemonocle_peer",
    "daemonize": "daemonize_peer",
    "classic recipe": "recipe",
}


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dd-bench-") as folder:
        yield Path(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    options = parser.parse_args()
    ensure_venv()
    results: dict[str, Results] = {}
    with scratch() as root:
        for name, script in PEERS.items():
            workdir = root / script
            workdir.mkdir()
            peer = Peer(name, script, workdir)
            r = results[name] = Results()
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            try:
                measure_start_stop(peer, options.runs, r)
                measure_restarts(peer, 20, r)
                measure_idle(peer, r)
                measure_import(name, options.runs, r)
                check_correctness(peer, r)
            finally:
                peer.clean()
        floor = []
        for _ in range(options.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=bench_env(), check=True)
            floor.append(time.perf_counter() - started)
        bare = bare_interpreter_rss()
    table = render(results, floor, bare, options.runs) + NOTES
    print(table)
    output = Path(options.output)
    # benchmarks/compare.py's section (a change against a base revision) is kept.
    kept = output.read_text().partition(COMPARE_HEADING)[2] if output.exists() else ""
    output.write_text(table + (f"\n{COMPARE_HEADING}{kept}" if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
