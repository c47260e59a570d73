"""Security: a pidfile trap set by another user in a world-writable directory."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from conftest import marked_pids

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="setting the trap as nobody needs root"),
]


@pytest.mark.scenario(
    "Security",
    "Pidfile pre-created by another user as a symlink to a victim file",
    lost="the victim is never written, truncated or chmod-ed; start, status and stop refuse",
)
@pytest.mark.parametrize("target", ["existing victim", "dangling"])
def test_symlink_trap_by_nobody(make_service, tmp_path, sticky_dir, target):
    victim = tmp_path / "victim"
    if target == "existing victim":
        victim.write_text("root's precious data\n")
        victim.chmod(0o600)
    trap = sticky_dir / "svc.pid"
    subprocess.run(["ln", "-s", str(victim), str(trap)], user="nobody", check=True)
    before = victim.stat() if victim.exists() else None
    svc = make_service(pidfile=str(trap))

    start = svc.cli("start")
    assert start.returncode == 1 and "symbolic link" in start.stderr
    assert svc.cli("status").returncode == 4
    assert svc.cli("stop").returncode == 1
    assert marked_pids(svc.mark) == []
    assert trap.is_symlink(), "the trap is left as it was"
    if before is None:
        assert not victim.exists(), "a dangling trap must not create its target"
    else:
        after = victim.stat()
        assert victim.read_text() == "root's precious data\n"
        assert (after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
            before.st_mtime_ns,
            0o600,
        )
