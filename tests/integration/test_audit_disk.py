"""The audit file cannot be written while pgveil runs in strict mode: its
disk fills up, or the file becomes unwritable. Statements are refused with
SQLSTATE 58030 and the reason, nothing reaches the server, and once the file can be written again the statements run
and the refused ones have their rows. A read-only audit file is refused at
start with a clear message. These tests mount small file systems and set
file attributes, so they need root (they are skipped otherwise)."""

import errno
import os
import subprocess
import uuid

import psycopg
import pytest

import harness
from test_audit_log import marks_table, rows  # noqa: F401 (marks_table: a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting file systems needs root")

RULES = "ALLOW ALL;\n"


def mount(args, what):
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount {what}: {res.stderr.strip()}")


@pytest.fixture
def small_fs(workroot):
    """A 16 MiB tmpfs for the audit file, unmounted afterwards."""
    path = os.path.join(workroot, "fs-" + uuid.uuid4().hex[:8])
    os.makedirs(path)
    mount(["-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", path], "a tmpfs")
    yield path
    subprocess.run(["umount", "-l", path], check=False)


def fill(path):
    """Writes a file into the directory until its file system is full."""
    chunk = b"\0" * 65536
    with open(os.path.join(path, "filler"), "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def insert(conn, table, mark):
    conn.execute(f"INSERT INTO {table} (mark) VALUES (%s)", (mark,))


def refused_until(conn, table, prefix, limit=3000):
    """Inserts until one is refused (the writer needs new space only now and then); returns its mark and error."""
    for i in range(limit):
        mark = f"{prefix}-{i}"
        try:
            insert(conn, table, mark)
        except psycopg.Error as e:
            return mark, e
    pytest.fail(f"{limit} inserts ran although the audit file could not grow")


def marks(admin, table):
    return {m for (m,) in admin.execute(f"SELECT mark FROM {table}").fetchall()}


def check_refusal(err, reason):
    assert isinstance(err, psycopg.errors.IoError), repr(err)
    assert err.sqlstate == "58030"
    msg = err.diag.message_primary
    assert msg.startswith("the audit log cannot be written, so the statement is refused: audit_db "), msg
    assert reason in msg, msg
    assert "nothing runs without its audit record" in (err.diag.message_detail or ""), err.diag.message_detail


def test_strict_full_disk_refuses_then_recovers(pgveil_factory, workroot, small_fs, marks_table, admin):  # noqa: F811
    db = os.path.join(small_fs, "audit.db")
    rules = harness.write_rules(workroot, "disk", RULES)
    pv = pgveil_factory(rules=rules, audit_db=db, audit_mode="strict", default_action="block")
    t = harness.pgveil_target(pv)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        insert(conn, marks_table, "before")
        fill(small_fs)
        refused, err = refused_until(conn, marks_table, "full")
        check_refusal(err, "database or disk is full")
        # every statement is refused while the file cannot be written (fail closed) ...
        with pytest.raises(psycopg.errors.IoError):
            insert(conn, marks_table, "still-full")
        # ... in other sessions too (a new session still logs in: its row waits in memory)
        with psycopg.connect(t.conninfo(), autocommit=True) as other:
            with pytest.raises(psycopg.errors.IoError):
                other.execute("SELECT 1")
        assert refused not in marks(admin, marks_table) and "still-full" not in marks(admin, marks_table)
        os.unlink(os.path.join(small_fs, "filler"))
        # the writer tries again every second
        harness.wait_until(lambda: try_insert(conn, marks_table, "after"), 15, interval=0.2,
                           what="statements run again once the disk has room")
    assert pv.stop() == 0
    log = pv.log_text()
    assert "database or disk is full; statements are refused until the audit log can be written" in log
    assert f"audit: audit_db {db} is written again" in log
    refused_rows = rows(db, "SELECT count(*) FROM queries WHERE sqlstate = '58030' AND error LIKE ?",
                              ("%database or disk is full%",))
    assert refused_rows[0][0] >= 3, refused_rows
    assert "after" in marks(admin, marks_table)
    res = harness.run([pv.binary, "--verify-audit", db], check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def try_insert(conn, table, mark):
    try:
        insert(conn, table, mark)
        return True
    except psycopg.errors.IoError:
        return False


def test_strict_unwritable_file_refuses_with_the_reason(pgveil_factory, workroot, marks_table, admin):  # noqa: F811
    """The file becomes immutable (chattr +i: even root cannot write it) while pgveil runs."""
    d = os.path.join(workroot, "immutable-" + uuid.uuid4().hex[:8])
    os.makedirs(d)
    db = os.path.join(d, "audit.db")
    rules = harness.write_rules(workroot, "disk", RULES)
    pv = pgveil_factory(rules=rules, audit_db=db, audit_mode="strict", default_action="block")
    t = harness.pgveil_target(pv)
    files = [db, db + "-wal"]
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        insert(conn, marks_table, "before")
        res = subprocess.run(["chattr", "+i", *files], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {res.stderr.strip()}")
        try:
            with pytest.raises(psycopg.Error) as info:
                insert(conn, marks_table, "immutable")
            check_refusal(info.value, "disk I/O error (audit.db")
            assert ": Operation not permitted)" in info.value.diag.message_primary
            assert "immutable" not in marks(admin, marks_table)
        finally:
            subprocess.run(["chattr", "-i", *files], check=False)
        harness.wait_until(lambda: try_insert(conn, marks_table, "after"), 15, interval=0.2,
                           what="statements run again once the file can be written")
    assert pv.stop() == 0
    refused = rows(db, "SELECT count(*) FROM queries WHERE sqlstate = '58030'")
    assert refused[0][0] >= 1


def test_read_only_audit_file_refused_at_start(pgveil_factory, workroot):
    d = os.path.join(workroot, "ro-" + uuid.uuid4().hex[:8])
    os.makedirs(d)
    db = os.path.join(d, "audit.db")
    pv = pgveil_factory(audit_db=db, audit_mode="strict")
    assert pv.stop() == 0
    ro = d + "-ro"
    os.makedirs(ro)
    mount(["--bind", d, ro], "a bind mount")
    try:
        mount(["-o", "remount,bind,ro", ro], "a read-only bind mount")
        pv = pgveil_factory(start=False, audit_db=os.path.join(ro, "audit.db"), audit_mode="strict")
        res = subprocess.run([pv.binary, "-c", pv.conf_path], capture_output=True, text=True, timeout=30)
        assert res.returncode == 1, res.stderr
        assert f"audit_db {ro}/audit.db: " in res.stderr, res.stderr
        assert "read-only" in res.stderr, res.stderr
    finally:
        subprocess.run(["umount", "-l", ro], check=False)
