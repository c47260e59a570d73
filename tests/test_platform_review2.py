"""Hostile review of the short socket directory's fallback (issue 25), real processes."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import is_gone, wait_for
from test_platform_review import deep_pidfile_service
from test_platform_sockets import AS_ROOT, PLANT_DIRECTORY, atexit_rmdir

pytestmark = pytest.mark.timeout(120)


@AS_ROOT
@pytest.mark.scenario(
    "Security",
    "a service killed in the fallback socket directory, then started in the short one",
    lost="nothing: the killed instance's directory and stale sockets go at the next run",
)
def test_a_killed_instances_fallback_directory_does_not_stay(make_service, tmp_path, as_nobody):
    svc, planted = deep_pidfile_service(make_service, tmp_path)
    planter = as_nobody(PLANT_DIRECTORY, str(planted))
    assert planter.stdout is not None and planter.stdout.readline() == "planted\n"
    atexit_rmdir(planted)
    result = svc.cli("start")
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    fallback = [p for p in Path("/tmp").glob(planted.name + ".*") if p.lstat().st_uid == 0]
    assert len(fallback) == 1, fallback
    atexit.register(shutil.rmtree, fallback[0], True)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), what="the kill")
    planter.kill()
    planter.wait()
    subprocess.run(["rmdir", str(planted)], user="nobody", check=True)  # the squatter leaves
    result = svc.cli("start")
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    assert svc.cli("stop").returncode == 0
    wait_for(lambda: is_gone(pid), what="the stop")
    assert not fallback[0].exists(), sorted(os.listdir(fallback[0]))
