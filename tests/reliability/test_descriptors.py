"""Descriptors: the program's own files across start, and a start under a tiny ``ulimit -n``.

Each test starts real daemons and looks from outside (the files they write,
/proc, the pidfile, stderr); each was seen failing before its fix.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import textwrap

import pytest
from conftest import IDLE, wait_for

pytestmark = pytest.mark.timeout(60)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def fd_targets(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return found


# -- the program's own files stay open in the daemon ---------------------------------


@pytest.mark.scenario(
    "Promises under pressure",
    "A file the script opened at module level (open(path, 'w')) before start",
    lost="nothing: the daemon writes on through it (it was /dev/null, every write vanished)",
)
@pytest.mark.parametrize("restart", ["no", "on-failure"])
def test_a_file_opened_before_start_is_written_by_the_daemon(make_service, tmp_path, restart):
    written = tmp_path / "written.txt"
    prelude = f"OUT = open({str(written)!r}, 'w')"
    body = "print('written by', os.getpid(), file=OUT, flush=True)\nprint('wrote', flush=True)\n"
    svc = make_service(body=body + IDLE, prelude=prelude, restart=restart)
    svc.start()
    wait_for(lambda: "wrote" in svc.log_text(), what="main's write")
    text = written.read_text()
    assert text.startswith("written by "), repr(text)
    writer = int(text.split()[2])  # with restart=, the supervisor's child
    assert str(written) in fd_targets(writer)
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Promises under pressure",
    "A sqlite3 database the script connected to at module level, written by main",
    lost="nothing: each row main commits is in the database",
)
def test_a_database_connected_before_start_is_written_by_the_daemon(make_service, tmp_path):
    database = tmp_path / "app.sqlite"
    prelude = (
        "import sqlite3\n"
        f"DB = sqlite3.connect({str(database)!r})\n"
        "DB.execute('create table if not exists runs (pid integer)')\n"
        "DB.commit()"
    )
    body = (
        "DB.execute('insert into runs values (?)', (os.getpid(),))\n"
        "DB.commit()\n"
        "print('committed', flush=True)\n"
    )
    svc = make_service(body=body + IDLE, prelude=prelude)
    pid = svc.start()
    wait_for(lambda: "committed" in svc.log_text(), what="main's commit")
    with sqlite3.connect(database) as reader:
        assert reader.execute("select pid from runs").fetchall() == [(pid,)]
    assert str(database) in fd_targets(pid)
    svc.stop_gracefully(pid)


@ROOT_ONLY
@pytest.mark.scenario(
    "Security",
    "Privileged action: a root-only 0600 file opened before start, then user='nobody'",
    lost="nothing: main, as nobody, writes through the descriptor it may not reopen",
)
def test_a_root_only_file_opened_before_dropping_privileges(make_service, tmp_path):
    secret = tmp_path / "root-only.log"
    secret.touch(mode=0o600)
    assert secret.stat().st_uid == 0 and secret.stat().st_mode & 0o777 == 0o600
    prelude = f"PRIVILEGED = open({str(secret)!r}, 'a')"
    body = textwrap.dedent(f"""\
        try:
            open({str(secret)!r}, 'a')
        except PermissionError:
            print('may not reopen it', flush=True)
        print('written as uid', os.getuid(), file=PRIVILEGED, flush=True)
        print('wrote', flush=True)
    """)
    svc = make_service(body=body + IDLE, prelude=prelude, user="nobody")
    pid = svc.start()
    wait_for(lambda: "wrote" in svc.log_text(), what="main's write")
    assert "may not reopen it" in svc.log_text()
    assert secret.read_text() == f"written as uid {pwd.getpwnam('nobody').pw_uid}\n"
    svc.stop_gracefully(pid)
