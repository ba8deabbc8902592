"""The audit database from outside (pgveil only): pgveil creates it at start
(schema, WAL, user_version), continues it after a restart, follows a SIGHUP
that changes audit_mode, and refuses to start on a database from a newer
pgveil; `pgveil --verify-audit FILE` checks chains written here by a small
writer that follows doc/audit.md's encoding (so the document is checked
too): intact -> exit 0 and "ok"; an edited, deleted or inserted row ->
exit 1 naming the row; a file that is not an audit database -> exit 2."""

import hashlib
import sqlite3
import struct
import subprocess

import pytest

import harness

CHAIN_COLUMNS = ["prev_hash", "id", "session_id", "ts", "subject", "database", "sql", "fingerprint",
                 "classes", "decision", "rule", "masked_columns", "rows", "duration_ms", "sqlstate",
                 "error", "approval_id", "chain_seq"]


def encode(v):
    """One value as doc/audit.md defines it: a type tag, then 8 bytes or an 8-byte length and the bytes."""
    if v is None:
        return b"\x00"
    if isinstance(v, int):
        return b"\x01" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\x02" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return b"\x03" + struct.pack(">Q", len(b)) + b
    return b"\x04" + struct.pack(">Q", len(v)) + bytes(v)


def row_hash(row):
    return hashlib.sha256(b"".join(encode(row[c]) for c in CHAIN_COLUMNS)).hexdigest()


def append_rows(path, n, sql_prefix="SELECT"):
    """Appends n finished, chained statements the way pgveil's writer does."""
    con = sqlite3.connect(path)
    try:
        cur = con.execute("SELECT coalesce(max(id), 0) FROM queries")
        next_id = cur.fetchone()[0] + 1
        cur = con.execute("SELECT chain_seq, hash FROM queries WHERE chain_seq IS NOT NULL"
                          " ORDER BY chain_seq DESC LIMIT 1")
        last = cur.fetchone() or (0, "")
        seq, prev = last[0] + 1, last[1]
        for i in range(n):
            row = {
                "prev_hash": prev, "id": next_id + i, "session_id": 1 + i % 3,
                "ts": "2026-11-24T00:41:07.%06dZ" % i, "subject": "agent-7", "database": "app",
                "sql": f"{sql_prefix} {i} -- é", "fingerprint": None if i % 2 else "0123abcd",
                "classes": "SELECT,READ", "decision": "allow", "rule": "rules/x.rules:3" if i % 2 else None,
                "masked_columns": "public.users.email" if i % 3 == 0 else None,
                "rows": i if i % 4 else None, "duration_ms": 1.25 * i if i % 5 else None,
                "sqlstate": "42P01" if i % 7 == 6 else None, "error": None, "approval_id": None,
                "chain_seq": seq + i,
            }
            row["hash"] = row_hash(row)
            cols = list(row)
            con.execute(f"INSERT INTO queries ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [row[c] for c in cols])
            prev = row["hash"]
        con.commit()
    finally:
        con.close()


def verify(pgveil_bin, path):
    res = subprocess.run([pgveil_bin, "--verify-audit", path], capture_output=True, text=True, timeout=60)
    return res.returncode, res.stdout + res.stderr


def sql(path, statement, *args):
    con = sqlite3.connect(path)
    try:
        rows = con.execute(statement, args).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


@pytest.fixture
def created_db(pgveil_factory, tmp_path):
    """An audit database created by pgveil itself (started, then stopped with SIGTERM)."""
    path = str(tmp_path / "audit.db")
    pv = pgveil_factory(audit_db=path, audit_mode="strict")
    assert pv.stop() == 0
    assert "audit: writing to " + path + " (strict mode" in pv.log_text()
    return path


def test_pgveil_creates_the_database(created_db, pgveil_bin):
    assert sql(created_db, "PRAGMA user_version") == [(2,)]
    assert sql(created_db, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in sql(created_db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sessions", "queries", "approvals", "checkpoints", "pending"} <= tables
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 0 and out.startswith("ok: 0 rows"), out


def test_intact_chain(created_db, pgveil_bin, pgveil_factory):
    append_rows(created_db, 25)
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 0, out
    assert out.startswith("ok: 25 rows, chain intact (chain_seq 1..25)"), out
    head = sql(created_db, "SELECT hash FROM queries WHERE chain_seq = 25")[0][0]
    assert f"head hash {head}" in out
    # pgveil continues the same database: it reads where the chain stands, and a reload changes the mode
    pv = pgveil_factory(audit_db=created_db, audit_mode="async")
    assert "the chain continues at chain_seq 26" in pv.log_text()
    pv.settings["audit_mode"] = "strict"
    pv.write_config()
    pv.reload()
    harness.wait_until(lambda: "audit: strict mode" in pv.log_text(), 10, what="the reload")
    assert pv.stop() == 0
    assert f"chain head at chain_seq 25: {head}" in pv.log_text()
    append_rows(created_db, 5)
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 0 and out.startswith("ok: 30 rows"), out


def test_edited_row(created_db, pgveil_bin):
    append_rows(created_db, 10)
    sql(created_db, "UPDATE queries SET decision = 'block' WHERE chain_seq = 7")
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 1, out
    assert "row id 7 (chain_seq 7): hash does not match its contents (altered)" in out


def test_edited_row_with_its_hash_recomputed(created_db, pgveil_bin):
    append_rows(created_db, 10)
    sql(created_db, "UPDATE queries SET sql = 'SELECT nothing' WHERE chain_seq = 4")
    row = dict(zip(CHAIN_COLUMNS, sql(created_db, f"SELECT {', '.join(CHAIN_COLUMNS)} FROM queries"
                                                  " WHERE chain_seq = 4")[0]))
    sql(created_db, "UPDATE queries SET hash = ? WHERE chain_seq = 4", row_hash(row))
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 1, out
    assert "row id 5 (chain_seq 5): prev_hash is not the hash of chain_seq 4" in out


def test_deleted_row(created_db, pgveil_bin):
    append_rows(created_db, 10)
    sql(created_db, "DELETE FROM queries WHERE chain_seq = 6")
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 1, out
    assert "rows deleted after chain_seq 5 (the next is chain_seq 7, row id 7)" in out
    sql(created_db, "DELETE FROM queries WHERE chain_seq <= 5")
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 1 and "rows deleted before chain_seq 7" in out, out


def test_inserted_row(created_db, pgveil_bin):
    append_rows(created_db, 10)
    # a row added at the end by someone who does not know the last hash
    con = sqlite3.connect(created_db)
    row = {c: None for c in CHAIN_COLUMNS}
    row.update(prev_hash="f" * 64, id=1000, session_id=1, ts="2026-11-24T01:00:00.000000Z", subject="agent-7",
               database="app", sql="DROP TABLE users", classes="DROP,DDL", decision="allow", chain_seq=11)
    row["hash"] = row_hash(row)
    con.execute(f"INSERT INTO queries ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    con.commit()
    con.close()
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 1, out
    assert "row id 1000 (chain_seq 11): prev_hash is not the hash of chain_seq 10 (row inserted or rows reordered)" \
        in out


def test_not_an_audit_database(pgveil_bin, tmp_path):
    rc, out = verify(pgveil_bin, str(tmp_path / "missing.db"))
    assert rc == 2 and "cannot read the audit database" in out, out
    other = str(tmp_path / "other.db")
    sql(other, "CREATE TABLE t (x)")
    rc, out = verify(pgveil_bin, other)
    assert rc == 2 and "not a pgveil audit database" in out, out


def test_newer_schema_refused_at_start(created_db, pgveil_bin, pgveil_factory):
    sql(created_db, "PRAGMA user_version = 9")
    pv = pgveil_factory(start=False, audit_db=created_db)
    res = subprocess.run([pgveil_bin, "-c", pv.conf_path], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert f"audit_db {created_db}: its schema version 9 is newer than this pgveil knows (2)" in res.stderr
    rc, out = verify(pgveil_bin, created_db)
    assert rc == 2 and "newer pgveil" in out, out


def test_help_mentions_verify(pgveil_bin):
    res = subprocess.run([pgveil_bin, "--help"], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0 and "--verify-audit FILE" in res.stdout
