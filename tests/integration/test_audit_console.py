"""Auditors' read-only SQL and SHOW SESSION n on the admin console.

pgveil's audit_db points at a database this file prepares with Python's
sqlite3 from sql/audit.sql and sample rows (the writer is not wired here).
Driven with real psql (unaligned output and column names, errors with
SQLSTATE and LINE/caret), psycopg 3 (the column type OIDs a BI tool sees, and
the values it decodes from them) and the raw protocol client (pipelined
queries answered in order, a CancelRequest stopping a running read, a client
going away mid-read). Refusals come with their SQLSTATE and leave the file
untouched (bytes and mtime); approvers are refused; several consoles read at
once while an agent's statements through the proxy are not held up; the
console stays usable after every error.
"""

import os
import sqlite3
import threading
import time
import uuid

import psycopg
import pytest

import pgwire
from test_admin import ADMIN_DB, Console, idp, wire  # noqa: F401 (idp is a fixture)
from test_jwt import start_oidc

SCHEMA = os.path.join(os.environ.get("PGVEIL_SRCDIR", os.path.join(os.path.dirname(__file__), "..", "..")),
                      "sql", "audit.sql")

SESSIONS = [
    (1, "2026-01-02T10:00:00.000000Z", "2026-01-02T10:05:00.500000Z", "ci-bot", "agents", "10.0.0.5:5000",
     "app", "app_agent", 1, "client closed"),
    (2, "2026-01-02T11:00:00.000000Z", None, "etl", "agents,etl", "10.0.0.6:5001", "app", "app_agent", 0, None),
]
QUERIES = [
    # id, session, ts, subject, sql, classes, decision, rule, masked, rows, ms, sqlstate, error, approval
    (1, 1, "2026-01-02T10:00:01.000000Z", "ci-bot", "SELECT * FROM users", "SELECT,READ", "allow", None,
     "public.users.email", 100, 1.5, None, None, None),
    (2, 1, "2026-01-02T10:00:02.000000Z", "ci-bot", "DELETE FROM orders", "DELETE,WRITE", "block",
     "rules/10.rules:4", None, None, 0.25, "42501", "blocked by rule", None),
    (3, 2, "2026-01-02T11:00:01.000000Z", "etl", "UPDATE orders SET x = 1", "UPDATE,WRITE", "approve",
     "rules/10.rules:7", None, 3, 2000.0, None, None, 1),
    (4, 1, "2026-01-02T10:00:03.000000Z", "ci-bot", "SELECT 'it''s'; -- a comment", "SELECT,READ", "allow",
     None, None, 1, 0.125, None, None, None),
]

SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c"
FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
SESSION_COLS = ("kind|id|ts|subject|ended_at|end_reason|decision|rule|classes|duration_ms|rows|sqlstate|error|"
                "masked_columns|decided_by|sql")


def make_audit_db(path):
    db = sqlite3.connect(path)
    with open(SCHEMA) as f:
        db.executescript(f.read())
    db.executemany("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?)", SESSIONS)
    db.executemany("INSERT INTO queries (id, session_id, ts, subject, database, sql, classes, decision, rule,"
                   " masked_columns, rows, duration_ms, sqlstate, error, approval_id)"
                   " VALUES (?,?,?,?,'app',?,?,?,?,?,?,?,?,?,?)", QUERIES)
    db.execute("INSERT INTO approvals (id, query_id, session_id, subject, sql, rule, requested_at, decided_at,"
               " decided_by, decision) VALUES (1, 3, 2, 'etl', 'UPDATE orders SET x = 1', 'rules/10.rules:7',"
               " '2026-01-02T11:00:01.000000Z', '2026-01-02T11:00:03.000000Z', 'alice', 'approve')")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    os.chmod(path, 0o644)


def file_state(path):
    st = os.stat(path)
    with open(path, "rb") as f:
        return f.read(), st.st_mtime_ns, sorted(os.listdir(os.path.dirname(path)))


@pytest.fixture
def audit_db(workroot):
    d = os.path.join(workroot, f"audit-{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    path = os.path.join(d, "audit.db")
    make_audit_db(path)
    return path


@pytest.fixture
def console(pgveil_factory, idp, certs, audit_db):  # noqa: F811
    pv = start_oidc(pgveil_factory, idp, audit_db=audit_db)
    c = Console(pv, idp, certs)
    c.audit_db = audit_db
    return c


def verbose(c, token, sql):
    return c.psql(token, "-v", "VERBOSITY=verbose", "-c", sql)


# --------------------------------------------------------------------------- result sets

def test_psql_tables(console):
    c = console
    res = c.psql(c.auditor, "-A", "-c",
                 "SELECT id, subject, decision, rows, duration_ms FROM queries ORDER BY id")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "id|subject|decision|rows|duration_ms",
        "1|ci-bot|allow|100|1.5",
        "2|ci-bot|block||0.25",
        "3|etl|approve|3|2000",
        "4|ci-bot|allow|1|0.125",
        "(4 rows)",
    ]
    # aligned: numbers right-aligned as psql does for numeric types
    res = c.psql(c.auditor, "-c", "SELECT subject, count(*) AS n FROM queries GROUP BY subject ORDER BY subject")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.rstrip("\n").splitlines()
    assert lines[0].split("|")[0].strip() == "subject" and lines[0].split("|")[1].strip() == "n"
    assert lines[2] == " ci-bot  | 3"
    assert lines[3] == " etl     | 1"
    assert lines[-1] == "(2 rows)"
    # joins across sessions, queries and approvals; WITH RECURSIVE; VALUES; EXPLAIN QUERY PLAN
    res = c.psql(c.auditor, "-A", "-t", "-c",
                 "SELECT s.subject, q.sql, a.decided_by FROM sessions s JOIN queries q ON q.session_id = s.id"
                 " JOIN approvals a ON a.query_id = q.id")
    assert res.stdout.splitlines() == ["etl|UPDATE orders SET x = 1|alice"], res.stderr
    res = c.psql(c.auditor, "-A", "-t", "-c",
                 "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) SELECT x FROM n")
    assert res.stdout.splitlines() == ["1", "2", "3"], res.stderr
    res = c.psql(c.auditor, "-A", "-t", "-c", "VALUES (1, 'a'), (2, NULL)")
    assert res.stdout.splitlines() == ["1|a", "2|"], res.stderr
    res = c.psql(c.auditor, "-A", "-t", "-c", "EXPLAIN QUERY PLAN SELECT * FROM queries WHERE session_id = 1")
    assert res.returncode == 0 and "queries_session" in res.stdout, (res.stdout, res.stderr)
    # a string with quotes and a ';' inside reads back as stored
    res = c.psql(c.admin, "-A", "-t", "-c", "SELECT sql FROM queries WHERE sql LIKE '%;%'")
    assert res.stdout.splitlines() == ["SELECT 'it''s'; -- a comment"], res.stderr


def test_types_for_drivers(console):
    """The type OIDs a BI tool sees, and the values psycopg decodes from them."""
    c = console
    with c.connect(c.auditor) as conn:
        cur = conn.execute("SELECT id, subject, duration_ms, rows, x'00ff' AS raw, NULL AS none_"
                           " FROM queries WHERE id = 1")
        assert [(d.name, d.type_code) for d in cur.description] == [
            ("id", 20), ("subject", 25), ("duration_ms", 701), ("rows", 20), ("raw", 17), ("none_", 25)]
        assert cur.fetchall() == [(1, "ci-bot", 1.5, 100, b"\x00\xff", None)]
        assert cur.statusmessage == "SELECT 1"
        cur = conn.execute("SELECT count(*), avg(duration_ms), group_concat(decision) FROM queries")
        assert cur.fetchone() == (4, (1.5 + 0.25 + 2000 + 0.125) / 4, "allow,block,approve,allow")


def test_show_session(console):
    c = console
    res = c.psql(c.auditor, "-A", "-c", "SHOW SESSION 1")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == SESSION_COLS
    assert lines[1] == ("session|1|2026-01-02T10:00:00.000000Z|ci-bot|2026-01-02T10:05:00.500000Z|client closed"
                        "||||300500||||||")
    assert lines[2] == ("statement|1|2026-01-02T10:00:01.000000Z|ci-bot|||allow||SELECT,READ|1.5|100|||"
                        "public.users.email||SELECT * FROM users")
    assert lines[3] == ("statement|2|2026-01-02T10:00:02.000000Z|ci-bot|||block|rules/10.rules:4|DELETE,WRITE|"
                        "0.25||42501|blocked by rule|||DELETE FROM orders")
    assert lines[4].startswith("statement|4|")
    assert lines[5] == "(4 rows)"
    # an open session, a statement approved by alice
    with c.connect(c.admin) as conn:
        cur = conn.execute("show session 2")
        rows = cur.fetchall()
        assert cur.statusmessage == "SHOW 2"
        assert rows[0][:6] == ("session", 2, "2026-01-02T11:00:00.000000Z", "etl", None, None)
        assert rows[1][0:2] == ("statement", 3) and rows[1][6] == "approve" and rows[1][14] == "alice"
        assert rows[1][9] == 2000.0 and rows[1][10] == 3
    res = verbose(c, c.auditor, "SHOW SESSION 404")
    assert "ERROR:  42704: session 404 is not in the audit log" in res.stderr, res.stderr


# --------------------------------------------------------------------------- refusals

REFUSED = [
    # through SQLite's authorizer and read-only checks
    ("WITH x AS (SELECT 1) DELETE FROM queries", "42501", "the audit log is read-only: DELETE is not allowed"),
    ("WITH x AS (SELECT 1) INSERT INTO sessions (id) SELECT * FROM x", "42501",
     "the audit log is read-only: INSERT is not allowed"),
    ("WITH x AS (SELECT 1) UPDATE queries SET decision = 'allow'", "42501",
     "the audit log is read-only: UPDATE is not allowed"),
    ("SELECT load_extension('/tmp/x.so')", "42501", "function load_extension() is not allowed"),
    ("EXPLAIN DELETE FROM queries", "42501", "the audit log is read-only: DELETE is not allowed"),
    ("EXPLAIN PRAGMA writable_schema = 1", "42501", "PRAGMA writable_schema is not allowed"),
    ("SELECT * FROM pragma_table_info('queries')", "42501",
     "the audit log is read-only: changing the schema is not allowed"),
    # the console's own parser: not a command at all, nothing runs
    ("DELETE FROM queries", "42601", 'syntax error at or near "DELETE"'),
    ("ATTACH 'x' AS y", "42601", 'syntax error at or near "ATTACH"'),
    ("PRAGMA query_only = 0", "42601", 'syntax error at or near "PRAGMA"'),
    ("VACUUM INTO '/tmp/pgveil-audit-vacuum.db'", "42601", 'syntax error at or near "VACUUM"'),
    ("SELECT 1; DELETE FROM queries", "42601", 'syntax error at or near "DELETE"'),
    # errors of the statement itself
    ("SELECT * FROM nowhere", "42P01", "no such table: nowhere"),
    ("SELECT nope FROM queries", "42703", "no such column: nope"),
    ("SELECT * FROM queries WHERE id = ?", "42P02", "the console takes no parameters"),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c", "54000",
     "the result has more than 100000 rows"),
]


def test_refusals_leave_the_file_alone(console):
    c = console
    before = file_state(c.audit_db)
    for sql, code, words in REFUSED:
        res = verbose(c, c.auditor, sql)
        assert res.returncode != 0, sql
        assert f"ERROR:  {code}: {words}" in res.stderr, (sql, res.stderr)
    assert not os.path.exists("/tmp/pgveil-audit-vacuum.db")
    # a syntax error SQLite finds points where psql shows it, counted in the whole string
    res = c.psql(c.auditor, "-c", "SHOW HELD; SELECT * FRM queries")
    assert 'ERROR:  near "FRM": syntax error' in res.stderr, res.stderr
    assert "LINE 1: SHOW HELD; SELECT * FRM queries\n" + " " * 28 + "^\n" in res.stderr, res.stderr
    assert file_state(c.audit_db) == before


def test_approver_refused(console):
    c = console
    for sql, name in (("SELECT * FROM queries", "SELECT"), ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
                      ("SHOW SESSION 1", "SHOW SESSION")):
        res = verbose(c, c.approver, sql)
        assert f"ERROR:  42501: {name} needs the auditor or admin group" in res.stderr, res.stderr
    # the admin group may (the consoles' own sessions are in the log too, written a tick after they start)
    res = c.psql(c.admin, "-A", "-t", "-c", "SELECT count(*) FROM sessions WHERE subject IN ('ci-bot', 'etl')")
    assert res.stdout.splitlines() == ["2"], res.stderr


def test_console_usable_after_errors(console):
    c = console
    # psycopg prepares a statement run five times unless told not to: the console has no prepared statements
    with psycopg.connect(c.conninfo(c.auditor), autocommit=True, prepare_threshold=None) as conn:
        for sql, code, _ in REFUSED:
            with pytest.raises(psycopg.Error) as ei:
                conn.execute(sql)
            assert ei.value.sqlstate == code, sql
            assert conn.execute("SELECT count(*) FROM queries").fetchone() == (4,)
        assert conn.execute("SHOW SESSION 2").fetchall()[0][0] == "session"
    # a BI tool's extended-protocol attempt gets the clear error it gets today, and the console goes on
    with c.connect(c.auditor) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="simple query protocol"):
            conn.execute("SELECT * FROM queries WHERE id = %s", [1])
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="simple query protocol"):
            conn.execute("SELECT 1", prepare=True)
        assert conn.execute("SELECT max(id) FROM queries").fetchone() == (4,)


# --------------------------------------------------------------------------- concurrency

def test_concurrent_consoles_and_agents(console):
    """Several consoles read at once; an agent's statements through the proxy are not held up."""
    c = console
    results, errors = {}, []

    def auditor(i):
        try:
            with c.connect(c.auditor) as conn:
                t0 = time.monotonic()
                got = conn.execute(SLOW).fetchone()[0]
                results[i] = (got, time.monotonic() - t0,
                              conn.execute(f"SELECT count(*) + {i} FROM queries WHERE id <= 4").fetchone()[0])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    agent = c.connect(c.agent, dbname="app")
    other_console = psycopg.connect(c.conninfo(c.admin), autocommit=True, prepare_threshold=None)
    try:
        threads = [threading.Thread(target=auditor, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        worst = 0.0
        n = 0
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            assert agent.execute("SELECT 1").fetchone() == (1,)
            # so does a console that is not reading the audit log
            assert other_console.execute("SHOW BLOCKED").fetchall() == []
            worst = max(worst, time.monotonic() - t0)
            n += 1
        for t in threads:
            t.join()
    finally:
        agent.close()
        other_console.close()
    assert not errors, errors
    assert sorted(results) == list(range(6))
    for i, (got, took, count) in results.items():
        assert got == 3000000 and count == 4 + i
    assert worst < 1.0, f"an agent's statement waited {worst:.2f}s behind auditors' reads"
    assert n >= 3, "the auditors' statements were too quick to overlap the agent's"


def test_pipelined_queries_and_cancel(console, certs):
    """Queries sent together are answered in order; a CancelRequest stops a running read."""
    c = console
    with wire(c.pv, certs, c.auditor, database=ADMIN_DB) as w:
        w.send(pgwire.query_message("SELECT count(*) FROM queries; SHOW BLOCKED")
               + pgwire.query_message("SHOW SESSION 1") + pgwire.query_message("SELECT 'third'"))
        first = w.read_until_ready()
        assert [m[0] for m in first] == [b"T", b"D", b"C", b"T", b"C", b"Z"]
        assert pgwire.parse_datarow(first[1][1]) == [b"4"]
        second = w.read_until_ready()
        assert [m[0] for m in second] == [b"T"] + [b"D"] * 4 + [b"C", b"Z"]
        assert second[-2][1] == b"SHOW 4\0"
        third = w.read_until_ready()
        assert pgwire.parse_datarow(third[1][1]) == [b"third"]

        t0 = time.monotonic()
        w.send(pgwire.query_message(FOREVER))
        time.sleep(0.3)
        pgwire.send_cancel("127.0.0.1", c.pv.port, *w.backend_key)
        msgs = w.read_until_ready(timeout=10)
        assert time.monotonic() - t0 < 5
        err = pgwire.parse_fields([p for t, p in msgs if t == b"E"][0])
        assert (err["C"], err["M"]) == ("57014", "canceling statement due to user request")
        rows, tags, err = w.simple_query("SELECT 1")
        assert (rows, tags, err) == ([[b"1"]], ["SELECT 1"], None)


def test_client_gone_mid_read(console, certs):
    """Consoles that go away while their reads run: the reads stop at once, pgveil carries on."""
    c = console
    gone = []
    for _ in range(4):  # as many as there are reader threads
        w = wire(c.pv, certs, c.auditor, database=ADMIN_DB)
        w.send(pgwire.query_message(FOREVER))
        gone.append(w)
    time.sleep(0.3)
    for w in gone:
        w.close()
    # were the reads still running, every reader thread would be busy for 30 s
    t0 = time.monotonic()
    for _ in range(3):
        assert c.query(c.auditor, "SELECT 1") == (["1"], [(1,)])
    assert time.monotonic() - t0 < 5
    with c.connect(c.admin) as conn:
        assert conn.execute("SHOW SESSION 1").fetchall()[0][0] == "session"
