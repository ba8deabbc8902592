"""The audit log as sessions write it: one queries row per statement, with
its decision and outcome, in async and strict mode; every statement that
changed the database has its row even after kill -9 in strict mode."""

import os
import signal
import sqlite3
import threading
import uuid

import psycopg
import pytest

import harness

RULES = """
BLOCK DROP MESSAGE 'no drops';
ALLOW ALL;
"""


@pytest.fixture
def audited(pgveil_factory, workroot, request):
    def make(mode):
        rules = harness.write_rules(workroot, "audit", RULES)
        db = os.path.join(workroot, f"audit-{uuid.uuid4().hex[:8]}.db")
        pv = pgveil_factory(rules=rules, audit_db=db, audit_mode=mode, default_action="block")
        return pv, db
    return make


@pytest.fixture
def marks_table(admin):
    name = "audit_t_" + uuid.uuid4().hex[:8]
    admin.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, mark text NOT NULL)")
    admin.execute(f"GRANT ALL ON {name}, {name}_id_seq TO {harness.APP_USER}")
    yield name
    admin.execute(f"DROP TABLE IF EXISTS {name}")


def rows(db, sql, args=()):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["async", "strict"])
def test_one_row_per_statement(audited, marks_table, mode):
    pv, db = audited(mode)
    t = harness.pgveil_target(pv)
    n_clients, n_each = 6, 25

    def client(k):
        with psycopg.connect(t.conninfo(application_name=f"c{k}"), autocommit=True) as conn:
            for i in range(n_each):
                conn.execute(f"INSERT INTO {marks_table} (mark) VALUES (%s)", (f"m-{k}-{i}",))
                conn.execute(f"SELECT count(*) FROM {marks_table} WHERE mark = 'x-{k}-{i}'").fetchone()
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"DROP TABLE {marks_table}")
            conn.execute(f"SELECT 1; SELECT 'multi-{k}'")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert pv.stop() == 0  # SIGTERM writes every queued row
    got = rows(db, "SELECT decision, count(*) FROM queries WHERE sql LIKE ? OR sql LIKE 'SELECT %' "
                   "OR sql LIKE 'DROP TABLE%' GROUP BY decision ORDER BY decision", (f"INSERT INTO {marks_table}%",))
    total = n_clients * n_each
    assert dict(got)["block"] == total
    inserts = rows(db, "SELECT count(*), count(DISTINCT id), sum(rows) FROM queries WHERE sql LIKE ? "
                       "AND decision = 'allow' AND sqlstate IS NULL", (f"INSERT INTO {marks_table}%",))
    assert inserts == [(total, total, total)]
    drops = rows(db, "SELECT sqlstate, rule IS NOT NULL, error FROM queries WHERE decision = 'block' LIMIT 1")
    assert drops[0][0] == "42501" and drops[0][1] and "no drops" in drops[0][2]
    multi = rows(db, "SELECT count(*) FROM queries WHERE sql LIKE 'SELECT ''multi-%'")
    assert multi == [(n_clients,)], rows(db, "SELECT sql, decision, rows, error FROM queries WHERE sql LIKE '%multi%' "
                                             "OR sql LIKE 'SELECT 1%' LIMIT 5")
    sessions = rows(db, "SELECT count(*), count(ended_at) FROM sessions")
    assert sessions[0][0] >= n_clients and sessions[0][0] == sessions[0][1]
    res = harness.run([pv.binary, "--verify-audit", db], check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_strict_kill9_loses_no_row_of_a_change(audited, marks_table, admin, pgveil_factory):
    pv, db = audited("strict")
    t = harness.pgveil_target(pv)
    stop = threading.Event()

    def client(k):
        i = 0
        try:
            with psycopg.connect(t.conninfo(), autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute(f"INSERT INTO {marks_table} (mark) VALUES ('k9-{k}-{i}')")
                    i += 1
        except psycopg.Error:
            pass

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    harness.wait_until(lambda: admin.execute(f"SELECT count(*) FROM {marks_table}").fetchone()[0] > 200, 30,
                       what="some inserts")
    os.kill(pv.pid, signal.SIGKILL)
    stop.set()
    for th in threads:
        th.join()
    pv.proc.wait()
    pv.proc = None  # killed on purpose: no clean exit to check
    if pv.logf:
        pv.logf.close()
        pv.logf = None
    marks = {m for (m,) in admin.execute(f"SELECT mark FROM {marks_table}").fetchall()}
    # a statement whose outcome was not written yet is in pending (its start was committed before it ran)
    logged = "\n".join(s for (s,) in rows(db, "SELECT sql FROM queries WHERE sql LIKE 'INSERT INTO %' "
                                                "UNION ALL SELECT sql FROM pending"))
    missing = [m for m in marks if f"'{m}'" not in logged]
    assert not missing, f"{len(missing)} inserts ran without an audit row: {missing[:5]}"
    # the next pgveil on the file moves them into queries, unfinished, and the chain verifies
    again = pgveil_factory(rules=pv.settings["rules"], audit_db=db, audit_mode="strict", default_action="block")
    assert again.stop() == 0
    assert rows(db, "SELECT count(*) FROM pending") == [(0,)]
    logged = "\n".join(s for (s,) in rows(db, "SELECT sql FROM queries WHERE sql LIKE 'INSERT INTO %'"))
    missing = [m for m in marks if f"'{m}'" not in logged]
    assert not missing, f"{len(missing)} inserts have no queries row after a restart: {missing[:5]}"
    res = harness.run([pv.binary, "--verify-audit", db], check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_many_named_portals_keep_memory_bounded(pgveil_factory, pgveil_bin, workroot):
    """What pgveil keeps for the audit rows of a portal's Executes is dropped when its transaction ends."""
    import pgwire
    from pgwire import SYNC, bind_msg, execute_msg, parse_msg
    from test_memory import ASAN_ENV

    db = os.path.join(workroot, f"audit-{uuid.uuid4().hex[:8]}.db")
    pv = pgveil_factory(env=ASAN_ENV if harness.is_sanitizer_build(pgveil_bin) else None, audit_db=db,
                        audit_mode="async")
    w = pgwire.connect("127.0.0.1", pv.port)
    sent = 0
    try:
        w.send(parse_msg("s", "SELECT 1") + SYNC)
        w.read_until_ready()

        def burst(start, n):
            nonlocal sent
            w.send(b"".join(bind_msg(f"portal_{i}", "s") + execute_msg(f"portal_{i}") + SYNC
                            for i in range(start, start + n)))
            for _ in range(n):
                w.read_until_ready(timeout=60)
            sent += n
            # the audit queue is not what is measured: let the writer catch up
            harness.wait_until(lambda: rows(db, "SELECT count(*) FROM queries WHERE hash IS NOT NULL")[0][0] >= sent,
                               60, what="the audit writer")

        burst(0, 2000)  # warm up allocators
        before = pv.rss_kb()
        for k in range(20):
            burst(10000 + k * 2000, 2000)
        grown = pv.rss_kb() - before
    finally:
        w.close()
    # 40,000 portal names: kept, they would take about 10 MB
    assert grown < 4 * 1024, f"RSS grew by {grown} kB over 40,000 named portals"


def test_strict_pipeline_runs_each_statement_once_recorded(audited, marks_table, admin):
    """A pipeline in strict mode: each Execute waits for its row, the messages around it go with it."""
    pv, db = audited("strict")
    t = harness.pgveil_target(pv)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        with conn.pipeline():
            curs = []
            for i in range(20):
                conn.execute(f"INSERT INTO {marks_table} (mark) VALUES (%s)", (f"p-{i}",))
                curs.append(conn.execute(f"SELECT count(*) FROM {marks_table}"))
        counts = [c.fetchone()[0] for c in curs]
    assert counts == list(range(1, 21))
    assert pv.stop() == 0
    got = rows(db, "SELECT count(*), sum(rows) FROM queries WHERE sql LIKE ? AND sqlstate IS NULL",
               (f"INSERT INTO {marks_table}%",))
    assert got == [(20, 20)]


def test_redacted_literals_never_recorded(pgveil_factory, workroot, marks_table):
    """audit_redact_literals = yes: no literal reaches the file, whichever protocol sent it,
    and a text that cannot be normalized is withheld rather than stored as sent."""
    rules = harness.write_rules(workroot, "audit", RULES)
    db = os.path.join(workroot, f"audit-{uuid.uuid4().hex[:8]}.db")
    pv = pgveil_factory(rules=rules, audit_db=db, audit_mode="async", default_action="block",
                        audit_redact_literals="yes")
    t = harness.pgveil_target(pv)
    res = harness.run(["psql", "-X", "-d", t.conninfo(), "-c",
                       f"INSERT INTO {marks_table} (mark) VALUES ('secret-simple')"], check=False)
    assert res.returncode == 0, res.stderr
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        # extended protocol, the literal inside the prepared text
        conn.execute(f"INSERT INTO {marks_table} (mark) VALUES ('secret-extended')", prepare=True)
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELECT 'secret-unterminated")
    assert pv.stop() == 0
    texts = [s for (s,) in rows(db, "SELECT sql FROM queries")]
    assert any("VALUES ($1)" in s for s in texts), texts
    assert any(s.startswith("(not recorded: audit_redact_literals is on") for s in texts), texts
    with open(db, "rb") as f:
        raw = f.read()
    at = raw.find(b"secret-")
    assert at < 0, raw[max(0, at - 200):at + 60]


def test_execute_of_a_long_portal_name_has_its_text(audited, marks_table):
    """The portal a row's Execute names is matched whole, however long its name."""
    import pgwire
    pv, db = audited("strict")
    portal = "p" * 400
    with pgwire.connect("127.0.0.1", pv.port, user=harness.PROXY_USER, database="app") as w:
        w.send(pgwire.parse_msg("", f"INSERT INTO {marks_table} (mark) VALUES ('long-portal')")
               + pgwire.bind_msg(portal, "") + pgwire.execute_msg(portal) + pgwire.SYNC)
        msgs = w.read_until(b"Z")
        assert not pgwire.errors_of(msgs), pgwire.errors_of(msgs)
    assert pv.stop() == 0
    got = rows(db, "SELECT sql, rows FROM queries WHERE sql LIKE 'INSERT INTO %'")
    assert got == [(f"INSERT INTO {marks_table} (mark) VALUES ('long-portal')", 1)], got


def test_portal_fetched_in_pieces_is_one_row(audited, marks_table):
    """A portal fetched with row limits (PortalSuspended, as pgjdbc's fetch size does) is one
    statement: one row with every piece's rows; a portal closed, replaced or ended with its
    transaction before it completed has the rows it returned."""
    import pgwire
    pv, db = audited("strict")

    def run(w, data):
        w.send(data)
        msgs = w.read_until(b"Z")
        assert not pgwire.errors_of(msgs), pgwire.errors_of(msgs)
        return msgs

    with pgwire.connect("127.0.0.1", pv.port, user=harness.PROXY_USER, database="app") as w:
        run(w, pgwire.query_message("BEGIN"))
        # 10 rows in pieces of 3: three suspended, the last gets 1 row and completes
        run(w, pgwire.parse_msg("s10", "SELECT g AS whole10 FROM generate_series(1, 10) g")
            + pgwire.bind_msg("c10", "s10") + pgwire.execute_msg("c10", 3) + pgwire.SYNC)
        msgs = run(w, pgwire.execute_msg("c10", 3) + pgwire.execute_msg("c10", 3) + pgwire.SYNC)
        assert pgwire.types_of(msgs).count("s") == 2, pgwire.types_of(msgs)
        msgs = run(w, pgwire.execute_msg("c10", 3) + pgwire.SYNC)
        assert "C" in pgwire.types_of(msgs) and len(pgwire.datarows(msgs)) == 1
        # closed by the client after two pieces of 2
        run(w, pgwire.parse_msg("s20", "SELECT g AS closed20 FROM generate_series(1, 20) g")
            + pgwire.bind_msg("c20", "s20") + pgwire.execute_msg("c20", 2) + pgwire.execute_msg("c20", 2)
            + pgwire.close_msg(b"P", "c20") + pgwire.SYNC)
        # INSERT ... RETURNING in pieces: its tag counts the whole statement
        run(w, pgwire.parse_msg("ins", f"INSERT INTO {marks_table} (mark) SELECT 'piece-' || g FROM "
                                       "generate_series(1, 5) g RETURNING id")
            + pgwire.bind_msg("ci", "ins") + pgwire.execute_msg("ci", 2) + pgwire.execute_msg("ci", 2)
            + pgwire.execute_msg("ci", 2) + pgwire.SYNC)
        # the unnamed portal replaced by the next Bind after one piece of 4
        run(w, pgwire.parse_msg("", "SELECT g AS replaced30 FROM generate_series(1, 30) g")
            + pgwire.bind_msg("", "") + pgwire.execute_msg("", 4)
            + pgwire.bind_msg("", "") + pgwire.execute_msg("", 0) + pgwire.SYNC)
        # suspended when its transaction ends
        run(w, pgwire.parse_msg("s40", "SELECT g AS ended40 FROM generate_series(1, 40) g")
            + pgwire.bind_msg("c40", "s40") + pgwire.execute_msg("c40", 5) + pgwire.SYNC)
        # a cursor declared in SQL, run through the protocol: rows of its own, named
        run(w, pgwire.query_message("DECLARE sqlcur CURSOR FOR SELECT g FROM generate_series(1, 5) g"))
        run(w, pgwire.execute_msg("sqlcur", 2) + pgwire.execute_msg("sqlcur", 0) + pgwire.SYNC)
        run(w, pgwire.query_message("COMMIT"))
    assert pv.stop() == 0
    assert rows(db, "SELECT sql, rows FROM queries WHERE sql LIKE '-- Execute of portal%' ORDER BY id") == [
        ('-- Execute of portal "sqlcur", not bound through pgveil (a cursor declared in SQL)', 2),
        ('-- Execute of portal "sqlcur", not bound through pgveil (a cursor declared in SQL)', 3)]

    def got(word):
        return rows(db, "SELECT rows, sqlstate, error, duration_ms IS NOT NULL FROM queries WHERE sql LIKE ? "
                        "ORDER BY id", (f"%{word}%",))
    assert got("whole10") == [(10, None, None, 1)]
    assert got("closed20") == [(4, None, None, 1)]
    assert got("RETURNING id") == [(5, None, None, 1)]
    assert got("replaced30") == [(4, None, None, 1), (30, None, None, 1)]
    assert got("ended40") == [(5, None, None, 1)]
    assert rows(db, "SELECT count(*) FROM queries WHERE sql = ''") == [(0,)]
    assert rows(db, "SELECT count(*) FROM queries WHERE chain_seq IS NULL") == [(0,)]


@pytest.mark.parametrize("mode", ["async", "strict"])
def test_jdbc_fetch_size_is_one_row(audited, java_driver, mode):
    """pgjdbc with a fetch size reads a million rows in 50 pieces of one portal: one statement,
    one row, with every row counted."""
    from test_jdbc import run_java
    pv, db = audited(mode)
    results = run_java(java_driver, harness.pgveil_target(pv), ["large"])
    assert results["large"][0] == "PASS", results["large"][1]
    assert pv.stop() == 0
    got = rows(db, "SELECT rows, sqlstate, error FROM queries WHERE sql = 'SELECT id, payload FROM big'")
    assert got == [(harness.BIG_ROWS, None, None)], got



def test_full_queue_slows_sessions_and_loses_nothing(audited):
    """async: while the audit file cannot be written, rows wait in memory up to the queue's bound
    (65,536 unwritten statements); then sessions wait for room instead of rows being dropped. A
    Query string that meets the bound waits as a whole: once there is room every statement has
    exactly one row with its own outcome."""
    pv, db = audited("async")
    per, n_msgs = 60, 1_100  # 66,000 statements: past the bound
    sent = [0]
    errors = []
    lock = sqlite3.connect(db, timeout=10)
    lock.execute("BEGIN EXCLUSIVE")  # the writer cannot write until this ends

    def client():
        try:
            with psycopg.connect(harness.pgveil_target(pv).conninfo(), autocommit=True) as conn:
                for m in range(n_msgs):
                    conn.execute("".join(f"SELECT {m * per + i} AS bound_{i};" for i in range(per)))
                    sent[0] = m + 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    th = threading.Thread(target=client)
    th.start()
    last, still = -1, 0
    while still < 3 and th.is_alive():  # until the client has made no progress for 3 s
        threading.Event().wait(1)
        still = still + 1 if sent[0] == last else 0
        last = sent[0]
    waiting = th.is_alive()
    lock.rollback()
    lock.close()
    th.join(120)
    assert not errors, errors
    assert waiting and 65_536 // per - 1 <= last < n_msgs, (waiting, last)
    assert sent[0] == n_msgs
    assert pv.stop() == 0
    got = rows(db, "SELECT count(*), count(DISTINCT sql), sum(rows), count(sqlstate), count(error) "
                   "FROM queries WHERE sql LIKE 'SELECT % AS bound_%'")
    assert got == [(per * n_msgs, per * n_msgs, per * n_msgs, 0, 0)], got


def test_function_call_row_has_its_outcome(audited):
    """A FunctionCall of the fast-path protocol (large objects use it) is answered with
    FunctionCallResponse: its row is finished as run, not as 'not run'."""
    import pgwire
    pv, db = audited("async")
    with pgwire.connect("127.0.0.1", pv.port, user=harness.PROXY_USER, database="app") as w:
        w.send(pgwire.function_call_msg(2026))  # pg_backend_pid()
        msgs = w.read_until(b"Z")
        assert not pgwire.errors_of(msgs), pgwire.errors_of(msgs)
        assert "V" in pgwire.types_of(msgs)
    assert pv.stop() == 0
    got = rows(db, "SELECT decision, rows, sqlstate, error FROM queries WHERE sql LIKE '-- FunctionCall%'")
    assert got == [("allow", 1, None, None)], got
