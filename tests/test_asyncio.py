"""asyncio services: async def main, await stopped(), async callbacks (issue 12)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MARK, REPO, is_gone, python_path, wait_for
from test_hooks import with_hooks
from test_kvserver import free_port

from daemonize_deco import daemon

pytestmark = pytest.mark.timeout(60)

AIO_PRELUDE = "import asyncio\nfrom daemonize_deco import stopped"


def async_service(make_service, body: str, hooks: str = "", **options):
    """A service whose main is ``async def``: the fixture writes a plain def, made async here."""
    svc = make_service(body=body, prelude=AIO_PRELUDE, **options)
    text = svc.script.read_text().replace("def main():", "async def main():")
    if hooks:
        guard = 'if __name__ == "__main__":'
        text = text.replace(guard, hooks + "\n" + guard)
    svc.script.write_text(text)
    return svc


ASYNC_IDLE = """
print('serving', flush=True)
await stopped()
print('stopped', flush=True)
"""


@pytest.mark.scenario(
    "asyncio",
    "async def main: start, await stopped(), stop",
    lost="start reports ready, stop ends main's await gracefully, the pidfile is removed",
)
def test_async_main_starts_and_stops_gracefully(make_service):
    svc = async_service(make_service, ASYNC_IDLE)
    pid = svc.start()  # ready: main reached await stopped()
    wait_for(lambda: "serving" in svc.log_text(), what="main's first line")
    svc.stop_gracefully(pid)
    assert "stopped" in svc.log_text()
    assert "never awaited" not in svc.log_text()
    assert "stopped by SIGTERM and exited with status 0" in svc.cli("status").stdout


def test_stopped_with_a_timeout_is_the_async_sleep(make_service):
    body = """
        ticks = 0
        while not await stopped(timeout=0.05):
            ticks += 1
            if ticks == 3:
                print('three ticks', flush=True)
        print('stopped after', ticks >= 3, flush=True)
    """
    svc = async_service(make_service, body)
    pid = svc.start()
    wait_for(lambda: "three ticks" in svc.log_text(), what="three timeouts")
    svc.stop_gracefully(pid)
    assert "stopped after True" in svc.log_text()


def test_many_tasks_wait_for_the_stop(make_service):
    body = """
        async def waiter(n):
            await stopped()
            print('task', n, 'saw the stop', flush=True)
        tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
        await asyncio.gather(*tasks)
    """
    svc = async_service(make_service, body)
    pid = svc.start()
    svc.stop_gracefully(pid)
    assert all(f"task {n} saw the stop" in svc.log_text() for n in range(3))


def test_async_main_that_fails_before_ready(make_service):
    svc = async_service(make_service, "await asyncio.sleep(0)\nraise ValueError('bad port')")
    result = svc.cli("start")
    assert result.returncode == 1
    assert result.stderr.strip() == "svc: failed to start: ValueError: bad port"


def test_a_plain_function_returning_a_coroutine_runs_under_asyncio(make_service):
    prelude = (
        AIO_PRELUDE + "\nasync def serve():\n    print('served', flush=True)\n    await stopped()"
    )
    svc = make_service(body="return serve()", prelude=prelude)
    pid = svc.start()
    wait_for(lambda: "served" in svc.log_text(), what="the coroutine to run")
    svc.stop_gracefully(pid)


def test_a_generator_function_is_refused():
    def main():
        yield 1

    with pytest.raises(TypeError, match="main is a generator function"):
        daemon(pidfile="/tmp/x.pid")(main)


ASYNC_HOOKS = """
@main.on_reload
async def reread():
    await asyncio.sleep(0.05)
    print('async reload ran', flush=True)
    if os.path.exists(os.path.join(os.path.dirname(__file__), 'fail-reload')):
        raise ValueError('config is broken')

@main.on_stop
async def closing():
    print('async on_stop ran', flush=True)

@main.on_signal(signal.SIGUSR1)
async def usr1():
    print('async usr1 ran', flush=True)
"""


@pytest.mark.scenario(
    "asyncio",
    "async def callbacks (on_reload, on_stop, on_signal)",
    lost="they run as tasks in the service's loop; reload is acknowledged once they are done, "
    "and fails with the reason when one raises",
)
def test_async_callbacks_run_in_the_service_loop(make_service):
    svc = async_service(make_service, ASYNC_IDLE, hooks=ASYNC_HOOKS)
    pid = svc.start()
    reloaded = svc.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "async reload ran" in svc.log_text(), "reload answered before its callback finished"
    (svc.dir / "fail-reload").write_text("")
    failed = svc.cli("reload")
    assert failed.returncode == 1
    assert "reread: ValueError: config is broken" in failed.stderr
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: "async usr1 ran" in svc.log_text(), what="the async on_signal")
    svc.stop_gracefully(pid)
    assert "async on_stop ran" in svc.log_text()


def test_async_callbacks_of_a_plain_main(make_service):
    svc = with_hooks(make_service, ASYNC_HOOKS.replace("@main", "import asyncio\n@main", 1))
    pid = svc.start()
    assert svc.cli("reload").returncode == 0
    assert "async reload ran" in svc.log_text()
    svc.stop_gracefully(pid)
    assert "async on_stop ran" in svc.log_text()


@pytest.mark.scenario(
    "asyncio",
    "the service calls loop.add_signal_handler",
    lost="stop and reload keep working (the registry notices the wakeup fd was taken over "
    "and says so in the log)",
)
def test_loop_add_signal_handler_does_not_break_stop_or_reload(make_service):
    body = """
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, lambda: print('usr2'))
        print('serving', flush=True)
        await stopped()
        print('stopped', flush=True)
    """
    svc = async_service(make_service, body, hooks=ASYNC_HOOKS)
    pid = svc.start()
    wait_for(lambda: "serving" in svc.log_text(), what="the handler to be added")
    assert svc.cli("reload").returncode == 0
    assert "async reload ran" in svc.log_text()
    assert "replaced the signal wakeup fd" in svc.log_text()
    svc.stop_gracefully(pid)
    assert "stopped" in svc.log_text()


def test_async_main_under_run_with_options(make_service):
    svc = async_service(make_service, "print('port', port, flush=True)\nawait stopped()")
    svc.script.write_text(
        svc.script.read_text().replace("async def main():", "async def main(port: int = 1):")
    )
    runner = svc.popen("run", "--port", "8123")
    wait_for(svc.pidfile.exists, what="the pidfile")
    runner.send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=10)
    assert runner.returncode == 0 and "port 8123" in out


def test_an_async_main_that_ignores_the_stop_is_killed(make_service):
    # It asks once, so the stop is the flag only (one that never asks has its
    # task cancelled: README, "How a stop reaches main").
    body = "should_stop()\nwhile True:\n    await asyncio.sleep(3600)"
    svc = async_service(make_service, body, stop_timeout=0.3, start_grace=0.1)
    pid = svc.start()
    result = svc.cli("stop")
    assert result.returncode == 0 and f"killed (pid {pid})" in result.stdout
    assert is_gone(pid)


def test_importing_the_package_does_not_load_asyncio():
    code = "import sys, daemonize_deco; print('asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "False"


# -- examples/aioweb.py ----------------------------------------------------------

AIOWEB = REPO / "examples" / "aioweb.py"


class AioWeb:
    """examples/aioweb.py on a free port, its files in tmp_path."""

    def __init__(self, folder: Path, mark: str) -> None:
        self.port = str(free_port())
        self.env = dict(
            os.environ, PYTHONPATH=python_path(REPO), AIOWEB_DIR=str(folder), **{MARK: mark}
        )
        self.log = folder / f"aioweb-{self.port}.log"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(AIOWEB), *args, "--port", self.port]
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def aioweb(tmp_path, mark):
    service = AioWeb(tmp_path, mark)
    yield service
    service.cli("stop")


@pytest.mark.scenario(
    "asyncio",
    "stop during a slow request of the asyncio example (curl)",
    lost="the request in flight is answered (200, Connection: close) before the service exits",
)
def test_aioweb_finishes_a_slow_request_across_a_stop(aioweb):
    pid = started_pid(aioweb.cli("start"))
    first = subprocess.run(["curl", "-s", aioweb.url("/")], capture_output=True, text=True)
    assert json.loads(first.stdout) == {"service": "aioweb", "pid": pid, "requests": 1}
    slow = subprocess.Popen(
        ["curl", "-s", "-i", aioweb.url("/slow?s=1.5")], stdout=subprocess.PIPE, text=True
    )
    wait_for(lambda: "a slow request" in aioweb.log.read_text(), what="the slow request")
    stopped_cmd = aioweb.cli("stop")
    assert stopped_cmd.returncode == 0 and f"aioweb stopped (pid {pid})" in stopped_cmd.stdout
    out, _ = slow.communicate(timeout=30)
    assert slow.returncode == 0
    assert out.startswith("HTTP/1.1 200 OK") and "Connection: close" in out
    assert out.rstrip().endswith('{"slept": 1.5}')
    assert "stopped after 2 requests" in aioweb.log.read_text()
    assert is_gone(pid)


@pytest.mark.timeout(90)
def test_aioweb_under_a_load_tool(aioweb):
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is needed (apt-get install wrk; .ci/run installs it)")
    pid = started_pid(aioweb.cli("start"))
    load = subprocess.run(
        [wrk, "-t1", "-c10", "-d2s", aioweb.url("/")], capture_output=True, text=True, timeout=60
    )
    assert load.returncode == 0, load.stderr
    requests = int(re.search(r"(\d+) requests in", load.stdout).group(1))
    assert requests > 100, load.stdout
    assert "Socket errors" not in load.stdout and "Non-2xx" not in load.stdout, load.stdout
    assert aioweb.cli("stop").returncode == 0
    assert is_gone(pid)


def started_pid(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("(pid ")[1].split(")")[0])


def test_the_taskgroup_pattern_from_the_readme_ends_in_time(make_service):
    body = """
        async def worker(n):
            try:
                while True:
                    await asyncio.sleep(3600)
            except asyncio.CancelledError:
                print('worker', n, 'cancelled', flush=True)
                raise
        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(worker(n)) for n in range(4)]
            await stopped()
            for task in workers:
                task.cancel()
        print('group ended', flush=True)
    """
    svc = async_service(make_service, body)
    pid = svc.start()
    svc.stop_gracefully(pid)  # "stopped", not "killed": it ended within stop_timeout
    log = svc.log_text()
    assert all(f"worker {n} cancelled" in log for n in range(4)) and "group ended" in log


def test_stopped_in_a_threads_own_loop_too(make_service):
    body = """
        async def early():
            await stopped()
            print('early task saw the stop', flush=True)
        first = asyncio.create_task(early())
        await asyncio.sleep(0.05)  # it waits in this loop already
        def in_thread():
            asyncio.run(stopped())
            print('thread loop saw the stop', flush=True)
        helper = threading.Thread(target=in_thread)
        helper.start()
        await asyncio.sleep(0.1)  # both loops now wait on the same pipe
        await stopped()
        print('main loop saw the stop', flush=True)
        await first
        helper.join()
    """
    svc = async_service(make_service, body)
    pid = svc.start()
    svc.stop_gracefully(pid)
    for who in ("early task", "thread loop", "main loop"):
        assert f"{who} saw the stop" in svc.log_text()


def test_should_stop_and_ready_inside_coroutines(make_service):
    body = """
        await asyncio.sleep(0.05)
        ready()  # wait_ready=True: only this counts
        while not should_stop():
            await asyncio.sleep(0.02)
        print('saw should_stop', flush=True)
    """
    svc = async_service(make_service, body, wait_ready=True)
    pid = svc.start()
    svc.stop_gracefully(pid)
    assert "saw should_stop" in svc.log_text()
