"""Security: a pidfile trap set by another user in a world-writable directory, and root's own
symlink at the pidfile's path."""

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
    lost="the victim is never written, truncated or chmod-ed: status and stop leave the trap "
    "alone (not trusted); root's start removes it (unlink follows nothing) and makes its own",
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

    status = svc.cli("status")
    assert status.returncode == 3 and "a symbolic link of user nobody's" in status.stdout
    assert svc.cli("stop").returncode == 0
    assert trap.is_symlink(), "status and stop leave the trap as it was"
    start = svc.cli("start")
    assert start.returncode == 0, start.stderr
    pid = svc.pid_from(start.stdout)
    assert not trap.is_symlink() and svc.read_pid() == pid, "replaced by a file of root's own"
    svc.stop_gracefully(pid)
    assert marked_pids(svc.mark) == []
    if before is None:
        assert not victim.exists(), "a dangling trap must not create its target"
    else:
        after = victim.stat()
        assert victim.read_text() == "root's precious data\n"
        assert (after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
            before.st_mtime_ns,
            0o600,
        )


@pytest.mark.scenario(
    "Bad input",
    "the pidfile's path is a symlink root made itself",
    lost="nothing: root's own symlink is refused as it is, never followed nor removed",
)
def test_roots_own_symlink_is_refused(make_service, tmp_path):
    target = tmp_path / "elsewhere.pid"
    link = tmp_path / "svc.pid"
    link.symlink_to(target)
    svc = make_service(pidfile=str(link))
    start = svc.cli("start")
    assert start.returncode == 1 and "symbolic link" in start.stderr, start.stderr
    assert svc.cli("status").returncode == 4
    assert link.is_symlink() and not target.exists()
    assert marked_pids(svc.mark) == []
