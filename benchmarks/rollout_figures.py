"""A Kubernetes-style rollout: 2 replicas replaced 20 times under ``ab``/``wrk``, with and without a drain.

    python3 benchmarks/rollout_figures.py [--replacements 20] [--drain 0.5] [--period 0.1]
        [--concurrency 8] [--tools ab,wrk] [--idle-seconds 5] [--probes 200]
        [--health-runs 20] [--no-write]

Each "pod" is ``python pod.py run --port P --health-port H`` (in the
foreground, as a container's PID 1), an asyncio HTTP server on its own port
(as a pod has its own IP) with ``health="tcp://127.0.0.1:{health_port}"``
and ``drain=``.  It answers every request with ``ok`` and closes the
connection; at the stop it closes its listening socket and lets the
connections in flight finish.

This process plays the cluster, in one asyncio loop on a thread of its own:
the kubelet (``GET /readyz`` on each pod every ``--period`` seconds, a
1-second timeout, one failure or one success flips it), the endpoints
controller (a pod is routed to while its last probe said 200) and
kube-proxy (a TCP proxy on one front port sending each new connection to
the next ready pod, round robin; a connection to a pod that refuses is lost,
as iptables' DNAT loses it: no retry).  The rollout replaces one pod at a
time, ``maxSurge: 1, maxUnavailable: 0``: it starts the new pod, waits
until the probes see it ready, then sends the old one SIGTERM (as the
kubelet does, without waiting for the endpoints to change) and waits for it
to exit, checking its exit status is 0.  ``ab -r -c 8`` (a new connection
per request), then ``wrk -c 8`` (which reconnects after each answer: the
pods close), run through the whole rollout.  Each rollout runs with
``drain=--drain`` and with ``drain=0``; besides the load generator's
figures, the proxy counts the connections it lost and why.

Then the endpoint's cost, each beside the same pod without ``health=``:
RssAnon at rest (the median of 3 pods), context switches (every thread)
over ``--idle-seconds``, the latency of ``GET /readyz`` and ``GET /livez``
(a fresh connection each, beside ``GET /`` on the pod's own server) and of
the ``health`` command (which asks over the claim socket either way).

Writes the section "A Kubernetes-style rollout" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from asyncio_figures import context_switches, environment, settled_rss, write_section

REPO = Path(__file__).resolve().parent.parent
HEADING = "## A Kubernetes-style rollout"

POD = """\
import asyncio
from daemonize_deco import daemon, ready, stopped

ANSWER = b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\nok\\n"


async def answer(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(ANSWER)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


@daemon(pidfile={folder!r} + "/pod-{{port}}.pid", stdout={folder!r} + "/pod-{{port}}.log",
        drain={drain!r}{health})
async def main(port: int = 0, health_port: int = 0) -> None:
    in_flight = set()

    async def tracked(reader, writer):
        task = asyncio.current_task()
        in_flight.add(task)
        try:
            await answer(reader, writer)
        finally:
            in_flight.discard(task)

    server = await asyncio.start_server(tracked, "127.0.0.1", port)
    ready()
    await stopped()
    server.close()  # no new connection from here on
    while in_flight:
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    main()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_pod(folder: Path, name: str, drain: float, health: bool) -> Path:
    script = folder / f"{name}.py"
    address = ', health="tcp://127.0.0.1:{health_port}"' if health else ""
    script.write_text(POD.format(folder=str(folder), drain=drain, health=address))
    return script


class Pod:
    """One ``run`` of the pod script, on its own ports."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.port, self.health_port = free_port(), free_port()
        self.options = ["--port", str(self.port), "--health-port", str(self.health_port)]
        self.process = subprocess.Popen(
            [sys.executable, str(script), "run", *self.options],
            env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def command(self, word: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(self.script), word, *self.options],
            env=environment(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Cluster:
    """The kubelet's readiness probes, the endpoints and kube-proxy, on one asyncio loop."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.front = free_port()
        self.probing: dict[int, asyncio.Task[None]] = {}  # by the pod's port
        self.ready: list[int] = []  # the endpoints: ports of the pods last probed ready
        self.turn = itertools.count()
        self.lost = {"no endpoint": 0, "pod refused": 0, "pod closed unanswered": 0}
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.connections: set[asyncio.Task[None]] = set()  # proxied, open: the loop keeps weak refs
        self.open_at_end = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Cluster:
        self.thread.start()
        self.started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            await asyncio.sleep(0.5)  # the last connections' ends
            self.open_at_end = len(self.connections)
            tasks = asyncio.all_tasks() - {asyncio.current_task()}  # probes, proxied connections
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._proxy, "127.0.0.1", self.front))
        self.started.set()
        self.loop.run_forever()

    def add(self, pod: Pod) -> None:
        """Probe ``pod`` from now on (it is routed to once a probe says ready)."""

        def begin() -> None:
            self.probing[pod.port] = self.loop.create_task(self._probe(pod.port, pod.health_port))

        self.loop.call_soon_threadsafe(begin)

    def remove(self, pod: Pod) -> None:
        """Stop probing ``pod`` (the pod object is deleted)."""

        def end() -> None:
            self.probing.pop(pod.port).cancel()
            self._set(pod.port, ready=False)

        self.loop.call_soon_threadsafe(end)

    def is_ready(self, pod: Pod) -> bool:
        return pod.port in self.ready

    def _set(self, port: int, ready: bool) -> None:
        if ready and port not in self.ready:
            self.ready = [*self.ready, port]
        elif not ready and port in self.ready:
            self.ready = [p for p in self.ready if p != port]

    async def _probe(self, port: int, health_port: int) -> None:
        while True:
            self._set(port, await readyz(health_port))
            await asyncio.sleep(self.period)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)
        endpoints = self.ready
        if not endpoints:
            self.lost["no endpoint"] += 1
            writer.close()
            return
        port = endpoints[next(self.turn) % len(endpoints)]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            self.lost["pod refused"] += 1
            writer.transport.abort()
            return
        try:
            asked, answered = await asyncio.gather(
                pipe(reader, upstream_writer), pipe(upstream_reader, writer)
            )
        finally:
            writer.close()
            upstream_writer.close()
        if asked and not answered:  # not a connection the load generator left unused at its end
            self.lost["pod closed unanswered"] += 1


async def readyz(health_port: int) -> bool:
    """One readiness probe: 200 within a second (the kubelet's default timeoutSeconds)."""
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", health_port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: pod\r\n\r\n")
            line = await reader.readline()
            writer.close()
            return line.startswith(b"HTTP/1.1 200")
    except (OSError, TimeoutError):
        return False


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy until the end (passed on as a half close) or an error (a reset); the bytes copied."""
    copied = 0
    try:
        while data := await reader.read(65536):
            writer.write(data)
            copied += len(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()
    return copied


def load(tool: str, port: int, concurrency: int) -> subprocess.Popen[str]:
    """``ab -r -c N`` or ``wrk -c N`` until SIGINT."""
    if tool == "ab":  # a new connection per request
        argv = ["ab", "-q", "-r", "-c", str(concurrency), "-t", "3600", "-n", "100000000"]
    else:  # keep-alive asked; the pods close each connection after the answer, so wrk reconnects
        argv = ["wrk", "-t", "2", "-c", str(concurrency), "-d", "3600s", "--latency"]
    return subprocess.Popen(
        [*argv, f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def load_figures(tool: str, report: str) -> dict[str, float | str]:
    """requests, failed (ab's failed requests; wrk's socket errors), non-2xx, p50 and p99 (ms)."""
    return ab_figures(report) if tool == "ab" else wrk_figures(report)


def ab_figures(report: str) -> dict[str, float | str]:
    def number(label: str) -> float:
        found = re.search(rf"^\s*{label}:?\s+([\d.]+)", report, re.MULTILINE)
        return float(found.group(1)) if found else 0.0  # ab leaves out lines that would say 0

    causes = re.search(
        r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", report
    )
    names = ("connect", "receive", "length", "exceptions")
    return {
        "requests": number("Complete requests"),
        "failed": number("Failed requests"),
        "causes": ", ".join(f"{n} {c}" for n, c in zip(names, causes.groups(), strict=True))
        if causes
        else "—",
        "non_2xx": number("Non-2xx responses"),
        "p50": number("50%"),
        "p99": number("99%"),
    }


def wrk_figures(report: str) -> dict[str, float | str]:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def latency(label: str) -> float:
        found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)$", report, re.MULTILINE)
        return float(found.group(1)) * units[found.group(2)] if found else float("nan")

    requests = re.search(r"(\d+) requests in", report)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    if requests is None:
        raise RuntimeError(f"no figures in wrk's report: {report}")
    names = ("connect", "read", "write", "timeout")
    return {
        "requests": float(requests.group(1)),
        "failed": float(sum(int(n) for n in errors.groups())) if errors else 0.0,
        "causes": ", ".join(f"{n} {c}" for n, c in zip(names, errors.groups(), strict=True))
        if errors
        else "—",
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "p50": latency("50%"),
        "p99": latency("99%"),
    }


def wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def rollout(
    folder: Path, tool: str, drain: float, *, replacements: int, period: float, concurrency: int
) -> dict:
    """Replace the 2 pods ``replacements`` times under ``tool``; the figures."""
    script = write_pod(folder, f"pod_drain_{str(drain).replace('.', '_')}", drain, health=True)
    pods: list[Pod] = []
    statuses: list[int | None] = []
    took: list[float] = []
    traffic = None
    with Cluster(period) as cluster:
        try:
            for _ in range(2):
                pods.append(Pod(script))
                cluster.add(pods[-1])
            for pod in pods:
                wait(lambda pod=pod: cluster.is_ready(pod), 30, "the first pods")
            traffic = load(tool, cluster.front, concurrency)
            time.sleep(1)  # the load under way before the first replacement
            began = time.monotonic()
            for n in range(replacements):
                step = time.monotonic()
                old, new = pods[n % 2], Pod(script)
                pods.append(new)
                cluster.add(new)
                wait(lambda new=new: cluster.is_ready(new), 30, "the new pod's readiness")
                old.process.send_signal(signal.SIGTERM)  # the kubelet's, not waiting for endpoints
                try:
                    statuses.append(old.process.wait(timeout=drain + 15))
                except subprocess.TimeoutExpired:
                    statuses.append(None)  # terminationGracePeriodSeconds over: SIGKILL
                    old.kill()
                cluster.remove(old)
                pods.remove(old)
                pods.insert(n % 2, pods.pop())
                took.append(time.monotonic() - step)
            length = time.monotonic() - began
            time.sleep(1)
            traffic.send_signal(signal.SIGINT)
            report = traffic.communicate(timeout=30)[0]
        finally:
            if traffic is not None and traffic.poll() is None:
                traffic.kill()
                traffic.wait()
            for pod in pods:
                pod.kill()
    figures = load_figures(tool, report)
    figures.update(
        tool=tool,
        drain=drain,
        replacements=replacements,
        bad_exits=sum(status != 0 for status in statuses),
        rollout_s=length,
        replacement_s=statistics.median(took),
        no_endpoint=cluster.lost["no endpoint"],
        refused=cluster.lost["pod refused"],
        unanswered=cluster.lost["pod closed unanswered"],
        open_at_end=cluster.open_at_end,
    )
    return figures


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def http_latencies(port: int, path: str, count: int) -> list[float]:
    """Milliseconds of ``GET path`` on a fresh connection each."""
    times = []
    for _ in range(count):
        began = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        times.append((time.perf_counter() - began) * 1000)
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
    return times


def command_latency(pod: Pod, count: int) -> list[float]:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        done = pod.command("health")
        times.append((time.perf_counter() - began) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"health said {done.returncode}: {done.stderr}")
    return times


def endpoint_cost(folder: Path, idle_seconds: float, probes: int, health_runs: int) -> dict:
    """The pod with ``health=`` and without, at rest and probed."""
    cost: dict[str, dict[str, float]] = {}
    for health in (True, False):
        script = write_pod(folder, "pod_health" if health else "pod_plain", 0.0, health)
        rss = []
        for _ in range(4):  # the first one is not counted: it may write bytecode caches
            pod = Pod(script)
            try:
                wait(lambda pod=pod: pod.command("health").returncode == 0, 30, "the pod")
                rss.append(settled_rss(pod.process.pid))
                if len(rss) == 4:
                    figures = probed(pod, health, idle_seconds, probes, health_runs)
                pod.process.send_signal(signal.SIGTERM)
                pod.process.wait(timeout=15)
            finally:
                pod.kill()
        figures["rss_kib"] = statistics.median(rss[1:])
        cost["health" if health else "plain"] = figures
    return cost


def probed(pod: Pod, health: bool, idle_seconds: float, probes: int, health_runs: int) -> dict:
    """Idle wake-ups, then the latencies of HTTP requests and of the ``health`` command."""
    before = context_switches(pod.process.pid)
    time.sleep(idle_seconds)
    figures = {"wakeups": context_switches(pod.process.pid) - before}
    paths = [(pod.port, "/")] + [(pod.health_port, p) for p in ("/readyz", "/livez") if health]
    for port, path in paths:
        times = http_latencies(port, path, probes)
        figures[f"{path}_p50"] = statistics.median(times)
        figures[f"{path}_p99"] = percentile(times, 0.99)
    figures["command_p50"] = statistics.median(command_latency(pod, health_runs))
    return figures


def render(runs: list[dict], cost: dict, options: argparse.Namespace, note: str) -> str:
    lines = [
        HEADING,
        "",
        f"`python3 benchmarks/rollout_figures.py --replacements {options.replacements} "
        f"--drain {options.drain:g} --period {options.period:g} --concurrency {options.concurrency}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPython "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores, loopback. 2 pods (`run`, asyncio, "
        f"`health=`), readiness probed every {options.period * 1000:.0f} ms, a TCP proxy routing each "
        "new connection to a pod last probed ready; each replacement starts the new pod, waits "
        "for its readiness, sends the old one SIGTERM and waits for its exit. The load runs "
        f"throughout: `ab -r -c {options.concurrency}` (a new connection per request) and "
        f"`wrk -c {options.concurrency}` (the pods close each connection after the answer, so "
        "it reconnects too).",
        "",
        "| figure | " + " | ".join(f"{r['tool']}, `drain={r['drain']:g}`" for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    rows = [
        ("replacements", "replacements", "{:.0f}"),
        ("requests", "requests", "{:.0f}"),
        ("failed requests (ab: failed; wrk: socket errors)", "failed", "{:.0f}"),
        ("their causes, as the load generator counts them", "causes", "{}"),
        ("non-2xx answers", "non_2xx", "{:.0f}"),
        ("proxy: connections sent to a pod that refused", "refused", "{:.0f}"),
        ("proxy: connections a pod closed unanswered", "unanswered", "{:.0f}"),
        ("proxy: connections with no pod ready", "no_endpoint", "{:.0f}"),
        ("proxy: connections still open after the load ended", "open_at_end", "{:.0f}"),
        ("old pods not exiting with status 0", "bad_exits", "{:.0f}"),
        ("p50 latency (ms)", "p50", "{:.1f}"),
        ("p99 latency (ms)", "p99", "{:.1f}"),
        ("one replacement, median (s)", "replacement_s", "{:.2f}"),
        ("the rollout (s)", "rollout_s", "{:.1f}"),
    ]
    for label, key, form in rows:
        lines.append(f"| {label} | " + " | ".join(form.format(r[key]) for r in runs) + " |")
    with_health, plain = cost["health"], cost["plain"]
    lines += [
        "",
        "The endpoint's cost: the same pod (`drain=0`) with `health=` and without, measured in "
        f"the same run; RssAnon the median of 3 pods at rest, context switches of every thread "
        f"over {options.idle_seconds:g} s, latencies over {options.probes} requests on a fresh "
        f"connection each (http.client), the `health` command over {options.health_runs} runs.",
        "",
        "| figure | with `health=` | without | ratio |",
        "|---|---|---|---|",
        f"| RssAnon at rest (KiB) | {with_health['rss_kib']:.0f} | {plain['rss_kib']:.0f} | "
        f"{with_health['rss_kib'] / plain['rss_kib']:.3f}× (+{with_health['rss_kib'] - plain['rss_kib']:.0f} KiB) |",
        f"| idle wake-ups in {options.idle_seconds:g} s | {with_health['wakeups']:.0f} | "
        f"{plain['wakeups']:.0f} | — |",
    ]
    for path in ("/readyz", "/livez"):
        lines.append(
            f"| `GET {path}` p50 / p99 (ms) | {with_health[f'{path}_p50']:.2f} / "
            f"{with_health[f'{path}_p99']:.2f} | `GET /` on the pod's server: "
            f"{plain['/_p50']:.2f} / {plain['/_p99']:.2f} | "
            f"{with_health[f'{path}_p50'] / plain['/_p50']:.2f}× |"
        )
    lines += [
        f"| `health` command, median (ms) | {with_health['command_p50']:.1f} | "
        f"{plain['command_p50']:.1f} | "
        f"{with_health['command_p50'] / plain['command_p50']:.2f}× |",
        "",
        "Goal: 0 failed requests and every old pod exiting with status 0 with a drain longer "
        "than the probe period. With it, `/readyz` answers 503 from the SIGTERM on, the next "
        "probe takes the pod out of rotation, and the pod closes its port only after the "
        "drain, when no new connection comes any more. Without a drain the old pod closes its "
        "port at SIGTERM while the proxy still routes to it until its next probe: those "
        "connections are refused (or, caught in the accept queue as the port closed, reset "
        "unanswered), as they are behind kube-proxy, which does not retry either.",
        "",
    ]
    if note:
        lines[-1:-1] = [note, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replacements", type=int, default=20)
    parser.add_argument("--drain", type=float, default=0.5)
    parser.add_argument("--period", type=float, default=0.1, help="seconds between probes")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tools", default="ab,wrk", help="the load generators, in turn")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--health-runs", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--note", default="", help="a paragraph after the tables (the machine)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dd-rollout-") as scratch:
        folder = Path(scratch)
        runs = [
            rollout(
                folder,
                tool,
                drain,
                replacements=options.replacements,
                period=options.period,
                concurrency=options.concurrency,
            )
            for tool in options.tools.split(",")
            for drain in (options.drain, 0.0)
        ]
        cost = endpoint_cost(folder, options.idle_seconds, options.probes, options.health_runs)
    section = render(runs, cost, options, options.note)
    print(section)
    if not options.no_write:
        write_section(HEADING, section)
    drained = [run for run in runs if run["drain"] == options.drain]
    lost = sum(run["failed"] + run["non_2xx"] + run["bad_exits"] for run in drained)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
