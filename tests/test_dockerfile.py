"""``examples/Dockerfile``, as far as a machine without Docker can check it.

The file is read as Docker reads it: CMD, ENTRYPOINT and HEALTHCHECK in
exec form (a JSON list of words, no shell), every file COPY names present,
a USER that is not root.  Then its CMD runs as a container would run it:
PID 1 of a PID namespace of its own (``unshare --pid --fork --mount-proc``;
a network namespace too, so the port is its own), as the image's uid, and
gets ``docker stop``'s SIGTERM: a graceful stop, exit status 0, and an
orphan re-parented to it meanwhile is reaped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    MARK,
    REPO,
    SYSTEM_PYTHON,
    children_of,
    is_gone,
    proc_stat,
    python_path,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

DOCKERFILE = REPO / "examples" / "Dockerfile"
EXEC_FORM = ("CMD", "ENTRYPOINT")


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continued lines joined."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continued line runs off the end"
    found = []
    for line in filter(str.strip, logical):
        word, _, rest = line.strip().partition(" ")
        found.append((word.upper(), rest.strip()))
    return found


def exec_form(text: str) -> list[str]:
    """The words of an exec-form argument; fails on the shell form."""
    assert text.startswith("["), f"shell form (a shell would stand between): {text}"
    words = json.loads(text)
    assert isinstance(words, list) and words and all(isinstance(w, str) for w in words)
    return words


def the(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


def copied() -> dict[str, Path]:
    """Where each COPY puts its source in the image, and the source in the repository."""
    placed = {}
    for rest in the("COPY"):
        assert not rest.startswith("--from"), "a stage's files cannot be checked here"
        source, destination = rest.split()
        placed[destination.rstrip("/")] = REPO / source
    return placed


def command() -> list[str]:
    [cmd] = the("CMD")
    return exec_form(cmd)


def test_cmd_and_entrypoint_are_in_exec_form():
    assert the("FROM"), "no base image"
    for name in EXEC_FORM:
        for text in the(name):
            exec_form(text)
    assert not the("ENTRYPOINT"), "the CMD is the whole command: no entrypoint in between"
    words = command()
    assert words[0] == "python"
    assert words[2] == "run", "a container's PID 1 runs the service in the foreground: run"
    assert not {"sh", "bash", "-c"} & set(words)


def test_the_script_and_the_package_it_needs_are_copied():
    placed = copied()
    script = command()[1]
    assert script in placed, f"CMD runs {script}, which no COPY puts there"
    assert placed[script].is_file()
    assert placed["/app/daemonize_deco"] == REPO / "daemonize_deco"
    for source in placed.values():
        assert source.exists(), source


def test_the_healthcheck_runs_the_health_command_without_a_shell():
    [healthcheck] = the("HEALTHCHECK")
    _, _, words = healthcheck.partition(" CMD ")
    assert exec_form(words)[:3] == ["python", command()[1], "health"]


def test_the_service_does_not_run_as_root():
    users = the("USER")
    assert users, "no USER: the service would run as root"
    user = users[-1].partition(":")[0]
    assert user not in ("root", "0")
    # The last USER comes before the CMD (and after the RUNs that need root).
    order = [word for word, _ in instructions()]
    assert order.index("CMD") > len(order) - 1 - order[::-1].index("USER")


# -- the CMD as PID 1 ------------------------------------------------------------


def uid_of_image() -> int:
    return int(the("USER")[-1].partition(":")[0])


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """The image's /tmp: a directory the image's uid may write."""
    folder = Path(tempfile.mkdtemp(prefix="dd-docker-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(map(shutil.which, ("unshare", "nsenter", "setpriv"))),
    reason="a PID namespace and another uid need root and util-linux (unshare, nsenter, setpriv)",
)
@pytest.mark.linux_only("PID and network namespaces (unshare, nsenter) are Linux's")
@pytest.mark.scenario(
    "Managers",
    "the Dockerfile's CMD as PID 1 of a namespace, stopped by docker stop's SIGTERM",
    lost="nothing: a graceful stop, exit status 0, an orphan re-parented to it reaped",
)
def test_the_cmd_as_pid_1_stops_gracefully_and_reaps(mark, app_dir):
    words = command()
    script = copied()[words[1]]
    uid = uid_of_image()
    # The image's command, with this machine's interpreter and the script's place here.
    argv = [SYSTEM_PYTHON, str(script), *words[2:]]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": python_path(REPO),
        "AIOWEB_DIR": str(app_dir),
        MARK: mark,
    }
    out = app_dir / "container.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--kill-child",
             "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
            stdout=sink, stderr=subprocess.STDOUT, env=env, text=True,
        )  # fmt: skip
    try:
        init = wait_for(
            lambda: next(iter(children_of(proc.pid)), None), what="the namespace's init"
        )
        wait_for(lambda: "listening on 0.0.0.0:8080" in out.read_text(), what="the service")
        status = dict(
            line.split(":\t", 1) for line in Path(f"/proc/{init}/status").read_text().splitlines()
        )
        assert status["NSpid"].split()[-1] == "1", "the service is the namespace's PID 1"
        assert set(status["Uid"].split()) == {str(uid)}, "it runs as the image's user"
        # An orphan in the container: its shell exits, so the kernel gives it to PID 1.
        subprocess.run(
            ["nsenter", f"--target={init}", "--pid", "--mount", "--",
             "sh", "-c", "sleep 1 >/dev/null 2>&1 & exit 0"],
            check=True, env=env, timeout=10,
        )  # fmt: skip
        orphan = wait_for(lambda: next(iter(children_of(init)), None), what="the orphan")
        wait_for(lambda: proc_stat(orphan) is None, timeout=10, what="the orphan to be reaped")
        os.kill(init, signal.SIGTERM)  # what docker stop sends
        assert proc.wait(timeout=15) == 0, out.read_text()
        assert is_gone(init)
        said = out.read_text()
        assert "Traceback" not in said, said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_readme_quotes_the_dockerfile():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running in containers\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```dockerfile\n", 1)[1].split("```", 1)[0]
    lines = DOCKERFILE.read_text().splitlines()
    for line in filter(None, map(str.strip, block.splitlines())):
        assert line in lines, f"the README shows {line!r}, which examples/Dockerfile does not say"
