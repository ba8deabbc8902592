"""Statement guardrails: statements the rules block never reach the server.

Each pgveil here loads GUARD_RULES with default_action = block. A blocked
statement must (1) give the client SQLSTATE 42501 naming the rule, (2) leave
the database exactly as it was — checked behind the client's back on a
superuser connection, including the server's own statement counters — and
(3) leave the session usable, with the transaction state the client sees
equal to the server's. The disguise corpus covers case, comments, quoting,
Unicode escapes, dollar quoting, nested DML and multi-statement strings,
sent through the simple and the extended protocol.
"""

import asyncio
import time
import uuid

import asyncpg
import psycopg
import pytest

import harness
import pgwire
from pgwire import SYNC, bind_msg, close_msg, execute_msg, function_call_msg, parse_msg
from test_node import scratch_table  # noqa: F401 (fixture)

GUARD_RULES = """
-- rules for the guardrail tests
BLOCK FUNCTION pg_read_file, pg_terminate_backend, lo_export;
BLOCK DESTRUCTIVE MESSAGE 'destructive statements are not allowed';
BLOCK DDL, PRIVILEGE, ADMIN;
HOLD DELETE, UPDATE ON public.guard_orders;
ALLOW READ, TRANSACTION, SESSION;
ALLOW WRITE;
"""

TABLE = "guard_t"


@pytest.fixture
def rules_file(workroot):
    return harness.write_rules(workroot, "guard", GUARD_RULES)


@pytest.fixture
def guard(pgveil_factory, rules_file):
    return pgveil_factory(rules=rules_file, default_action="block", hold_timeout="2s")


@pytest.fixture
def guard_target(guard):
    return harness.pgveil_target(guard)


@pytest.fixture
def table(admin):
    """A table the agent owns (so nothing but the rules stops DDL on it)."""
    name = f"{TABLE}_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, v integer NOT NULL)")
    admin.execute(f"INSERT INTO {name} SELECT i, i * 10 FROM generate_series(1, 20) i")
    admin.execute(f"ALTER TABLE {name} OWNER TO {harness.APP_USER}")
    yield name
    admin.execute(f"DROP TABLE IF EXISTS {name}")
    admin.execute(f"DROP TABLE IF EXISTS {name}_copy")


def snapshot(admin, table):
    """Everything a blocked statement could have changed about the table."""
    rows = admin.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall()
    cols = admin.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                         "AND NOT attisdropped ORDER BY attnum", (table,)).fetchall()
    acl = admin.execute("SELECT relacl::text, relowner::regrole::text FROM pg_class WHERE oid = %s::regclass",
                        (table,)).fetchone()
    copy = admin.execute("SELECT to_regclass(%s)", (table + "_copy",)).fetchone()
    return rows, cols, acl, copy


def disguises(t):
    """Statements the rules forbid, in many spellings: (sql, expected SQLSTATE)."""
    return [
        (f"DROP TABLE {t}", "42501"),
        (f"drop table {t}", "42501"),
        (f"/* harmless */ DrOp /* really */ TaBlE {t} -- bye", "42501"),
        (f"DROP TABLE \"{t}\"", "42501"),
        (f"DROP TABLE U&\"{t[:-1]}\\00{ord(t[-1]):02x}\"", "42501"),
        (f"SELECT 1; DROP TABLE {t}", "42501"),
        (f"SELECT 1;\nDELETE FROM {t}", "42501"),
        (f"DELETE FROM {t}", "42501"),
        (f"DELETE FROM {t} WHERE 1 = 1", "42501"),
        (f"DELETE FROM {t} WHERE true", "42501"),
        (f"delete from {t} where 'a' = 'a' OR id = 3", "42501"),
        (f"UPDATE {t} SET v = 0", "42501"),
        (f"UPDATE {t} SET v = 0 WHERE NOT false", "42501"),
        # a WHERE reading no column of the rows passes every row unless provably false
        (f"DELETE FROM {t} WHERE random() >= 0", "42501"),
        (f"DELETE FROM {t} WHERE clock_timestamp() IS NOT NULL", "42501"),
        (f"UPDATE {t} SET v = 0 WHERE random() < 2", "42501"),
        (f"DELETE FROM {t} WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = 'pg_class')", "42501"),
        (f"TRUNCATE {t}", "42501"),
        (f"TRUNCATE TABLE ONLY {t} RESTART IDENTITY", "42501"),
        (f"WITH d AS (DELETE FROM {t} RETURNING *) SELECT count(*) FROM d", "42501"),
        (f"WITH a AS (SELECT 1), b AS (WITH c AS (DELETE FROM {t} RETURNING 1) SELECT * FROM c) SELECT * FROM b",
         "42501"),
        (f"EXPLAIN ANALYZE DELETE FROM {t}", "42501"),
        (f"EXPLAIN (ANALYZE, COSTS OFF) UPDATE {t} SET v = 1", "42501"),
        (f"PREPARE p_{t} AS DELETE FROM {t}", "42501"),
        (f"ALTER TABLE {t} DROP COLUMN v", "42501"),
        (f"ALTER TABLE {t} ADD COLUMN w integer", "42501"),
        (f"ALTER TABLE {t} RENAME TO {t}_copy", "42501"),
        (f"CREATE TABLE {t}_copy AS SELECT * FROM {t}", "42501"),
        (f"SELECT * INTO {t}_copy FROM {t}", "42501"),
        (f"CREATE INDEX ON {t} (v)", "42501"),
        (f"GRANT ALL ON {t} TO PUBLIC", "42501"),
        ("SET ROLE postgres", "42501"),
        ("SET SESSION AUTHORIZATION postgres", "42501"),
        ("SELECT set_config('role', 'postgres', false)", "42501"),
        ("SELECT set_config(lower('ROLE'), 'postgres', false)", "42501"),
        (f"COPY {t} TO '/tmp/pgveil-guard-out'", "42501"),
        (f"COPY {t} FROM PROGRAM 'true'", "42501"),
        (f"VACUUM {t}", "42501"),
        (f"LOCK TABLE {t}", "42501"),
        (f"DO $$ BEGIN EXECUTE 'DROP TABLE {t}'; END $$", "42501"),
        (f"DO $body$ BEGIN DELETE FROM {t}; END $body$", "42501"),
        ("SELECT pg_read_file('/etc/passwd')", "42501"),
        ("SELECT PG_CATALOG.pg_read_file('/etc/passwd')", "42501"),
        ("SELECT pg_terminate_backend(pg_backend_pid())", "42501"),
        (f"CALL some_procedure()", "42501"),
        (f"DROP TABLE {t} /* unterminated", "42601"),
        (f"DELET FROM {t}", "42601"),
    ]


def test_disguises_psycopg_simple(guard_target, table, admin):
    before = snapshot(admin, table)
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        for sql, state in disguises(table):
            # without parameters psycopg sends a simple Query
            with pytest.raises(psycopg.Error) as exc:
                conn.execute(sql, prepare=False)
            assert exc.value.sqlstate == state, (sql, exc.value.sqlstate, str(exc.value))
            assert conn.execute("SELECT 7").fetchone() == (7,), sql
    assert snapshot(admin, table) == before


def test_disguises_psycopg_extended(guard_target, table, admin):
    """psycopg sends a query with parameters through Parse/Bind/Execute."""
    before = snapshot(admin, table)
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        for sql, state in disguises(table):
            if ";" in sql.replace("'", ""):
                continue  # the extended protocol takes one statement
            with pytest.raises(psycopg.Error) as exc:
                conn.execute(sql, prepare=True)  # Parse of a named statement, then Bind
            assert exc.value.sqlstate == state, (sql, exc.value.sqlstate, str(exc.value))
            assert conn.execute("SELECT %s::int", (8,)).fetchone() == (8,), sql
    assert snapshot(admin, table) == before


def test_blocked_message_names_rule(guard_target, table, rules_file):
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(f"DELETE FROM {table}")
        assert exc.value.diag.message_primary == "destructive statements are not allowed"
        assert exc.value.diag.message_detail == f"Blocked by rule {rules_file}:4."
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(f"CREATE INDEX ON {table} (v)")
        assert f"{rules_file}:5" in exc.value.diag.message_primary
        assert "BLOCK DDL, PRIVILEGE, ADMIN" in exc.value.diag.message_primary


def test_constant_where_with_volatile_call_is_destructive(guard_target, table, admin):
    """random() or clock_timestamp() in a WHERE that reads no column decides nothing per row."""
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        for sql in (f"DELETE FROM {table} WHERE random() >= 0", f"UPDATE {table} SET v = 1 WHERE random() < 2",
                    f"DELETE FROM {table} WHERE clock_timestamp() IS NOT NULL"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
                conn.execute(sql)
            assert exc.value.diag.message_primary == "destructive statements are not allowed", sql
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)
        # a condition on the rows still decides per row
        conn.execute(f"DELETE FROM {table} WHERE id = 1 AND random() >= 0")
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (19,)


def test_unparsable_gives_position(guard_target):
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as exc:
            conn.execute("SELECT 1 FROM WHERE x")
        assert exc.value.diag.statement_position == "15"
        assert "syntax error" in exc.value.diag.message_primary


def test_allowed_statements_run(guard_target, table, admin):
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (100, 1)")
        conn.execute(f"UPDATE {table} SET v = 2 WHERE id = %s", (100,))
        conn.execute(f"DELETE FROM {table} WHERE id = 100")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)
        conn.execute("SET application_name = 'x'")
        assert conn.execute("SHOW application_name").fetchone() == ("x",)


def test_default_action_blocks_unmatched(guard_target):
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute("CALL no_such_procedure()")
        assert "default_action" in str(exc.value)


def test_transaction_state_matches_server(guard_target, table, admin):
    """An error inside a transaction block aborts it, as PostgreSQL does: the
    client sees the failed state, and the earlier write is rolled back."""
    with psycopg.connect(guard_target.conninfo()) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (200, 1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {table}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE id = 200").fetchone() == (0,)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)


def test_savepoint_recovers_after_block(guard_target, table, admin):
    with psycopg.connect(guard_target.conninfo()) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (201, 1)")
        conn.execute("SAVEPOINT s")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"TRUNCATE {table}")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute(f"INSERT INTO {table} VALUES (202, 1)")
        conn.commit()
    assert admin.execute(f"SELECT count(*) FROM {table} WHERE id > 200").fetchone() == (2,)


def test_pipeline(guard_target, table, admin):
    """In a pipeline the blocked statement fails and the rest up to Sync is
    skipped, exactly as after a server error; the next Sync starts clean."""
    before = snapshot(admin, table)
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        with conn.pipeline() as p:
            c1 = conn.execute("SELECT 1")
            c2 = conn.execute(f"DELETE FROM {table} WHERE v > %s OR true", (0,))
            c3 = conn.execute(f"INSERT INTO {table} VALUES (300, 3)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                p.sync()
            assert c1.fetchone() == (1,)
            del c2, c3
        assert conn.execute("SELECT 5").fetchone() == (5,)
    assert snapshot(admin, table) == before


def test_raw_pipeline_messages(guard_target, table, admin):
    """Parse/Bind/Execute of a blocked statement followed by an allowed batch:
    one ErrorResponse, ReadyForQuery, then the allowed batch runs normally."""
    with pgwire.connect("127.0.0.1", guard_target.port, user="agent", database="app") as c:
        c.send(parse_msg("", f"DROP TABLE {table}") + bind_msg("", "") + execute_msg("") + SYNC
               + parse_msg("", "SELECT 42") + bind_msg("", "") + execute_msg("") + SYNC)
        types = []
        errors = []
        rows = []
        while types.count(b"Z") < 2:
            t, payload = c.read_message()
            types.append(t)
            if t == b"E":
                errors.append(pgwire.parse_fields(payload))
            if t == b"D":
                rows.append(pgwire.parse_datarow(payload))
        assert types == [b"E", b"Z", b"1", b"2", b"D", b"C", b"Z"], types
        assert errors[0]["C"] == "42501"
        assert rows == [[b"42"]]
    assert admin.execute(f"SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None


def test_function_call_protocol_is_procedural(guard_target):
    """A FunctionCall names its function by OID: it is decided as PROCEDURAL,
    which these rules do not allow (default_action = block)."""
    with pgwire.connect("127.0.0.1", guard_target.port, user="agent", database="app") as c:
        # FunctionCall of pg_backend_pid (oid 2026), no arguments, text result
        c.send(function_call_msg(2026))
        t, payload = c.read_message()
        assert t == b"E"
        assert pgwire.parse_fields(payload)["C"] == "42501"
        assert "default_action" in pgwire.parse_fields(payload)["M"]
        assert c.read_message()[0] == b"Z"
        rows, _, err = c.simple_query("SELECT 3")
        assert err is None and rows == [[b"3"]]


def test_sql_prepare_execute(guard_target, table, admin):
    """EXECUTE is decided on the body this session PREPAREd."""
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        conn.execute(f"PREPARE ok_{table} AS SELECT count(*) FROM {table}", prepare=False)
        assert conn.execute(f"EXECUTE ok_{table}", prepare=False).fetchone() == (20,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"PREPARE bad_{table} AS DELETE FROM {table}", prepare=False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(f"EXECUTE bad_{table}", prepare=False)
        assert "no record" in str(exc.value)
        conn.execute(f"DEALLOCATE ok_{table}", prepare=False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"EXECUTE ok_{table}", prepare=False)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)


def test_named_statement_reused(guard_target, table):
    """A server-side prepared statement is decided at every Bind."""
    with psycopg.connect(guard_target.conninfo(), autocommit=True, prepare_threshold=0) as conn:
        for i in range(5):
            assert conn.execute(f"SELECT v FROM {table} WHERE id = %s", (i + 1,)).fetchone() == ((i + 1) * 10,)


def test_asyncpg(guard_target, table, admin):
    before = snapshot(admin, table)

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=guard_target.port, user="agent", password="x",
                                     database="app")
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.execute(f"DROP TABLE {table}")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.fetch(f"DELETE FROM {table} WHERE $1::bool RETURNING id", True)
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.prepare(f"TRUNCATE {table}")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (400, 4)")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (401, 4)")
                    await conn.execute(f"ALTER TABLE {table} DROP COLUMN v")
            await conn.execute(f"DELETE FROM {table} WHERE id = 400")
            return await conn.fetchval(f"SELECT count(*) FROM {table}")
        finally:
            await conn.close()

    assert asyncio.run(main()) == 20
    assert snapshot(admin, table) == before


def test_psql(guard_target, table, admin):
    before = snapshot(admin, table)
    res = harness.run(["psql", "-X", "-v", "ON_ERROR_STOP=0", "-c", f"DROP TABLE {table}", "-c", "SELECT 'still here'"],
                      check=False, env=guard_target.env())
    assert "ERROR:  destructive statements are not allowed" in res.stderr
    assert "DETAIL:  Blocked by rule " in res.stderr
    assert "still here" in res.stdout
    assert snapshot(admin, table) == before


# --------------------------------------------------------------------------- holds

HOLD_RULES = """
HOLD DELETE, UPDATE ON public.{table};
ALLOW ALL;
"""


@pytest.fixture
def hold_pgveil(pgveil_factory, workroot, table):
    path = harness.write_rules(workroot, "hold", HOLD_RULES.format(table=table))
    return pgveil_factory(rules=path, default_action="block", hold_timeout="1500ms")


def test_hold_times_out(hold_pgveil, table, admin):
    t = harness.pgveil_target(hold_pgveil)
    notices = []
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as exc:
            conn.execute(f"DELETE FROM {table} WHERE id = 1")
        assert time.monotonic() - start >= 1.4
        assert "hold_timeout" in str(exc.value)
        assert len(notices) == 1 and notices[0].startswith("held for approval: id ")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)


def test_hold_canceled_by_client(hold_pgveil, table, admin):
    t = harness.pgveil_target(hold_pgveil)
    start = hold_pgveil.log_size()
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        import threading
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled) as exc:
            conn.execute(f"UPDATE {table} SET v = 0 WHERE id = %s", (2,))
        timer.join()
        assert "user request" in str(exc.value)
        # The cancel ends the hold and is not forwarded: the server is idle,
        # and a late cancel would hit the next statement instead.
        for _ in range(5):
            time.sleep(0.05)
            assert conn.execute("SELECT 1").fetchone() == (1,)
    log = hold_pgveil.log_text(start)
    assert "cancels its held statement" in log
    assert "forwarding cancel request" not in log
    assert admin.execute(f"SELECT v FROM {table} WHERE id = 2").fetchone() == (20,)


def test_hold_does_not_block_others(hold_pgveil, table):
    t = harness.pgveil_target(hold_pgveil)
    import threading
    done = []

    def held():
        with psycopg.connect(t.conninfo(), autocommit=True) as conn:
            try:
                conn.execute(f"DELETE FROM {table} WHERE id = 3")
            except psycopg.errors.QueryCanceled:
                done.append("timeout")

    th = threading.Thread(target=held)
    th.start()
    time.sleep(0.3)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        for _ in range(20):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)
    th.join()
    assert done == ["timeout"]


# --------------------------------------------------------------------------- search_path

PATH_RULES = """
ALLOW READ, WRITE ON public.*;
ALLOW SESSION, TRANSACTION, PROCEDURAL;
BLOCK READ, WRITE;
"""


@pytest.fixture
def path_target(pgveil_factory, workroot):
    path = harness.write_rules(workroot, "path", PATH_RULES)
    return harness.pgveil_target(pgveil_factory(rules=path, default_action="block"))


@pytest.fixture
def twins(admin, table):
    """public.<table> (the guard table) and secret.<table>, which ALLOW ... ON public.* does not list."""
    admin.execute("CREATE SCHEMA IF NOT EXISTS secret")
    admin.execute(f"GRANT USAGE ON SCHEMA secret TO {harness.APP_USER}")
    admin.execute(f"CREATE TABLE secret.{table} (id integer PRIMARY KEY, v integer NOT NULL)")
    admin.execute(f"INSERT INTO secret.{table} VALUES (1, -1)")
    admin.execute(f"ALTER TABLE secret.{table} OWNER TO {harness.APP_USER}")
    yield table
    admin.execute(f"DROP TABLE IF EXISTS secret.{table}")


def secret_rows(admin, table):
    return admin.execute(f"SELECT id, v FROM secret.{table} ORDER BY id").fetchall()


@pytest.mark.parametrize("change", [
    "SET search_path = secret, public",
    "SET search_path TO 'secret'",
    "SELECT set_config('search_path', 'secret, public', false)",
    "BEGIN; SET LOCAL search_path = secret; COMMIT",
    "DO $$ BEGIN PERFORM set_config('search_path', 'secret', false); END $$",
])
def test_search_path_change_ends_unqualified_allow(path_target, twins, admin, change):
    """ALLOW ... ON public.* takes an unqualified name as public's only while the
    session keeps the server's default search_path."""
    t = twins
    with psycopg.connect(path_target.conninfo(), autocommit=True) as conn:
        assert conn.execute(f"SELECT v FROM {t} WHERE id = 1").fetchone() == (10,)  # public's
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT v FROM secret.{t}")
        conn.execute(change)
        for sql in (f"SELECT v FROM {t}", f"UPDATE {t} SET v = 0 WHERE id = 1", f"DELETE FROM {t} WHERE id = 1"):
            for prepare in (False, True):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql, prepare=prepare)
        # named with their schema, public's tables still pass
        assert conn.execute(f"SELECT v FROM public.{t} WHERE id = 1").fetchone() == (10,)
    assert secret_rows(admin, t) == [(1, -1)]


def test_search_path_change_after_prepare(path_target, twins, admin):
    """A statement prepared under the default search_path and decided then is
    decided again after a change: the server plans it again under the new path."""
    t = twins
    with psycopg.connect(path_target.conninfo(), autocommit=True, prepare_threshold=0) as conn:
        for _ in range(2):
            assert conn.execute(f"SELECT v FROM {t} WHERE id = %s", (1,)).fetchone() == (10,)
        conn.execute("SET search_path = secret, public")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT v FROM {t} WHERE id = %s", (1,))
    assert secret_rows(admin, t) == [(1, -1)]


@pytest.mark.parametrize("options", ["-c search_path=secret,public", "-csearch-path=secret"])
def test_search_path_startup_options_end_unqualified_allow(path_target, twins, options):
    t = twins
    with psycopg.connect(path_target.conninfo(options=options), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT v FROM {t}")
        assert conn.execute(f"SELECT v FROM public.{t} WHERE id = 1").fetchone() == (10,)


def test_blocked_search_path_change_keeps_the_default(pgveil_factory, workroot, twins):
    """Only a change that reaches the server counts."""
    path = harness.write_rules(workroot, "path-blocked", "ALLOW READ ON public.*;\nBLOCK ALL;\n")
    target = harness.pgveil_target(pgveil_factory(rules=path, default_action="block"))
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET search_path = secret, public")
        assert conn.execute(f"SELECT v FROM {twins} WHERE id = 1").fetchone() == (10,)


# --------------------------------------------------------------------------- other drivers

def test_node(node_driver, guard_target, scratch_table, admin):
    import test_node
    out = test_node.node(node_driver, "guard.js", guard_target, ITEST_TABLE=scratch_table)
    assert out == {"rows": 0, "ok": "usable"}
    assert admin.execute("SELECT to_regclass(%s)", (scratch_table,)).fetchone()[0] is not None


def test_jdbc(java_driver, guard_target, scratch_table, admin):
    import test_jdbc
    res = test_jdbc.run_java(java_driver, guard_target, ["guard"], ITEST_TABLE=scratch_table)
    status, detail = res["guard"]
    assert status == "PASS", detail
    assert admin.execute("SELECT to_regclass(%s)", (scratch_table,)).fetchone()[0] is not None


def test_protocol_statement_that_executes(guard_target, table, admin):
    """A protocol-level prepared statement whose text is EXECUTE is decided, at
    every Bind, on the SQL-level statement it runs now."""
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        conn.execute(f"PREPARE body_{table} AS SELECT count(*) FROM {table}", prepare=False)
        for _ in range(3):  # Parse once, then Bind of the same server-side statement
            assert conn.execute(f"EXECUTE body_{table}", prepare=True).fetchone() == (20,)
        conn.execute(f"DEALLOCATE body_{table}", prepare=False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"EXECUTE body_{table}", prepare=True)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)


@pytest.mark.parametrize("params", [{"client_encoding": "SJIS"}, {"client_encoding": "big5"},
                                    {"standard_conforming_strings": "off"},
                                    {"options": "-c client_encoding=GBK"},
                                    # the server's own spellings: aliases, punctuation it ignores
                                    {"client_encoding": "S_J_I_S"}, {"client_encoding": "WINDOWS932"},
                                    {"client_encoding": "SHIFT_JIS_2004"}, {"client_encoding": "Big5."},
                                    # switches as the server splits and reads them
                                    {"options": "-c client\\_encoding=GBK"},
                                    {"options": "-ec client_encoding=GBK"},
                                    {"options": "-capplication_name=x\n-cclient_encoding=GBK"},
                                    {"options": "-c standard\\_conforming_strings=off"}])
def test_encodings_pgveil_cannot_read_refused(guard_target, params):
    """pgveil parses statements as the server will only when both read the text
    the same way: multibyte encodings that hide quotes are refused at login,
    however the client spells them."""
    with pytest.raises(pgwire.PgError) as exc:
        pgwire.connect("127.0.0.1", guard_target.port, user="agent", database="app", **params)
    assert exc.value.sqlstate == "0A000", exc.value.fields
    assert "not allowed through pgveil" in exc.value.fields["M"], exc.value.fields


@pytest.mark.parametrize("options", ["-c role=x", "-crole=x", "--role=x", "-c ro\\le=x", "-ec role=x", "-ecrole=x",
                                     "-e-role=x", "-capplication_name=a\n-crole=x", "--session-authorization=x",
                                     "-c Session_Authorization=x"])
def test_options_cannot_change_role(guard_target, options):
    """Startup options may not switch the role, however the server would read
    the switches: escapes, any white space, clustered flags."""
    with pytest.raises(pgwire.PgError) as exc:
        pgwire.connect("127.0.0.1", guard_target.port, user="agent", database="app", options=options)
    assert exc.value.sqlstate == "42501", exc.value.fields
    assert "may not set role or session_authorization" in exc.value.fields["M"], exc.value.fields


def test_harmless_options_pass(guard_target):
    with pgwire.connect("127.0.0.1", guard_target.port, user="agent", database="app",
                        options="-c statement_timeout=5s -capplication_name=a\\ role=b") as c:
        rows, _, err = c.simple_query("SHOW statement_timeout")
        assert err is None and rows == [[b"5s"]]
        rows, _, err = c.simple_query("SHOW application_name")
        assert err is None and rows == [[b"a role=b"]], rows


def test_safe_client_encoding_accepted(guard_target):
    with pgwire.connect("127.0.0.1", guard_target.port, user="agent", database="app",
                        client_encoding="LATIN1") as c:
        rows, _, err = c.simple_query("SELECT 'ok'")
        assert err is None and rows == [[b"ok"]]


def test_set_client_encoding_blocked(guard_target):
    with psycopg.connect(guard_target.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET client_encoding = 'SJIS'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET standard_conforming_strings = off")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_reload_applies_to_open_sessions(pgveil_factory, workroot, table, admin):
    """After SIGHUP with valid rules the next statement of an open session is
    decided under them; a broken file keeps the rules in force."""
    path = harness.write_rules(workroot, "reload", "ALLOW ALL;\n")
    pv = pgveil_factory(rules=path, default_action="block")
    with psycopg.connect(harness.pgveil_target(pv).conninfo(), autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)
        with open(path, "w") as f:
            f.write("BLOCK READ MESSAGE 'reads are off';\nALLOW ALL;\n")
        mark = pv.log_size()
        pv.reload()
        harness.wait_until(lambda: "rules loaded" in pv.log_text(mark), 10, what="the reload")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(f"SELECT count(*) FROM {table}")
        assert "reads are off" in str(exc.value)
        with open(path, "w") as f:
            f.write("ALLOW ALL\n")  # no ';': an error, the old rules stay
        mark = pv.log_size()
        pv.reload()
        harness.wait_until(lambda: "reload failed" in pv.log_text(mark), 10, what="the failed reload")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT count(*) FROM {table}")


def test_skipped_parse_does_not_replace_the_statement(hold_pgveil, table, admin):
    """A Parse the server skips (after an error earlier in its batch) leaves
    the old unnamed statement in place; a later Bind of it is decided on that
    old statement, not on the skipped text."""
    t = harness.pgveil_target(hold_pgveil)
    with pgwire.connect("127.0.0.1", t.port, user="agent", database="app") as w:
        # batch 1: the server's unnamed statement becomes a DELETE (a Parse runs nothing)
        w.send(parse_msg("", f"DELETE FROM {table} WHERE id = 1") + SYNC)
        assert [m for m, _ in w.read_until()] == [b"1", b"Z"]
        # batch 2: an error first, so the server skips the Parse of a harmless SELECT
        w.send(execute_msg("no_such_portal") + parse_msg("", "SELECT 1") + SYNC)
        msgs = w.read_until()
        assert [m for m, _ in msgs] == [b"E", b"Z"]
        assert pgwire.parse_fields(msgs[0][1])["C"] == "34000"
        # batch 3: Bind of the unnamed statement runs the DELETE: it must be held, then time out
        w.send(bind_msg("", "") + execute_msg("") + SYNC)
        msgs = w.read_until(timeout=10)
        kinds = [m for m, _ in msgs]
        assert kinds[0] == b"N" and kinds[-2:] == [b"E", b"Z"], kinds
        assert pgwire.parse_fields(msgs[-2][1])["C"] == "57014"
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)


def _held_then_timed_out(w, msgs_to_send):
    """Sends a batch whose Bind must be held: a notice, then 57014 at hold_timeout."""
    w.send(msgs_to_send)
    msgs = w.read_until(timeout=10)
    kinds = [m for m, _ in msgs]
    assert b"N" in kinds and kinds[-2:] == [b"E", b"Z"], kinds
    assert pgwire.parse_fields(msgs[-2][1])["C"] == "57014"


def test_skipped_close_keeps_the_statement(hold_pgveil, table, admin):
    """A Close the server skips does not make pgveil forget the statement, so a
    failed PREPARE of the same name cannot stand in for it."""
    t = harness.pgveil_target(hold_pgveil)
    with pgwire.connect("127.0.0.1", t.port, user="agent", database="app") as w:
        w.send(parse_msg("s3", f"DELETE FROM {table} WHERE id = 1") + SYNC)
        assert [m for m, _ in w.read_until()] == [b"1", b"Z"]
        w.send(execute_msg("no_such_portal") + close_msg(b"S", "s3") + SYNC)  # the Close is skipped
        assert [m for m, _ in w.read_until()] == [b"E", b"Z"]
        rows, _, err = w.simple_query("PREPARE s3 AS SELECT 1")
        assert err is not None and err["C"] == "42P05"  # the server still has s3
        _held_then_timed_out(w, bind_msg("", "s3") + execute_msg("") + SYNC)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)


@pytest.mark.parametrize("forget", ["DEALLOCATE s2", "DISCARD ALL"])
def test_failed_deallocate_keeps_the_statement(hold_pgveil, table, admin, forget):
    """DEALLOCATE or DISCARD ALL that fails on the server (inside a failed
    transaction, or DISCARD ALL in a transaction block) changes nothing."""
    t = harness.pgveil_target(hold_pgveil)
    with pgwire.connect("127.0.0.1", t.port, user="agent", database="app") as w:
        w.send(parse_msg("s2", f"DELETE FROM {table} WHERE id = 2") + SYNC)
        assert [m for m, _ in w.read_until()] == [b"1", b"Z"]
        for sql in ("BEGIN", "SELECT 1/0", forget, "ROLLBACK", "PREPARE s2 AS SELECT 1"):
            w.simple_query(sql)
        w.send(pgwire.query_message("EXECUTE s2"))
        msgs = w.read_until(timeout=10)
        kinds = [m for m, _ in msgs]
        assert kinds[0] == b"N" and kinds[-2:] == [b"E", b"Z"], kinds
        assert pgwire.parse_fields(msgs[-2][1])["C"] == "57014"
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)


def test_long_parameter_held(hold_pgveil, table, admin):
    """A held Bind with a long parameter: shown in part, the session survives."""
    t = harness.pgveil_target(hold_pgveil)
    with pgwire.connect("127.0.0.1", t.port, user="agent", database="app") as w:
        w.send(parse_msg("h", f"UPDATE {table} SET v = 0 WHERE id::text = $1 AND $2 = $3") + SYNC)
        assert [m for m, _ in w.read_until()] == [b"1", b"Z"]
        _held_then_timed_out(w, bind_msg("", "h", [b"x" * 9000, b"1", b"2"]) + execute_msg("") + SYNC)
        rows, _, err = w.simple_query("SELECT 1")
        assert err is None and rows == [[b"1"]]
    assert hold_pgveil.alive()


def test_extended_copy_keeps_batches_in_step(guard_target, table, admin):
    """COPY FROM STDIN through the extended protocol: the Sync libpq sends right
    after Execute is ignored by the server; refusals afterwards still carry
    pgveil's message, not the server's syntax error."""
    with pgwire.connect("127.0.0.1", guard_target.port, user="agent", database="app") as w:
        w.send(parse_msg("", f"COPY {table} FROM STDIN") + bind_msg("", "") + execute_msg("") + SYNC)
        msgs = w.read_until(b"G")
        assert [m for m, _ in msgs] == [b"1", b"2", b"G"]
        w.send(pgwire.message(b"d", b"500\t5\n") + pgwire.message(b"c") + SYNC)
        assert [m for m, _ in w.read_until()] == [b"C", b"Z"]
        for _ in range(2):
            rows, _, err = w.simple_query(f"DROP TABLE {table}")
            assert err is not None and err["C"] == "42501", err
            rows, _, err = w.simple_query("SELECT 1 FROM WHERE")
            assert err is not None and err["C"] == "42601" and "pgveil" not in err["M"], err
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (21,)


def test_repeated_startup_parameter_refused(guard_target):
    """The server keeps the last of a repeated startup parameter: a second
    `options` could otherwise carry a setting the first one was checked for."""
    with pgwire.Wire("127.0.0.1", guard_target.port) as w:
        w.send(pgwire.startup_packet([("user", "agent"), ("database", "app"), ("options", "-c work_mem=4MB"),
                                      ("options", "-c standard_conforming_strings=off")]))
        t, payload = w.read_message()
        assert t == b"E"
        fields = pgwire.parse_fields(payload)
        assert fields["S"] == "FATAL" and fields["C"] == "08P01" and "duplicate startup parameter" in fields["M"]


def test_client_names_cannot_forge_log_lines(guard_target):
    """A user name with a newline stays on its own log line, escaped."""
    pv = guard_target.pgveil
    mark = pv.log_size()
    with pgwire.connect("127.0.0.1", guard_target.port, user="evil\n2099-01-01T00:00:00.000Z INFO forged",
                        database="app") as w:
        w.simple_query("SELECT 1")
    harness.wait_until(lambda: "evil\\x0a2099" in pv.log_text(mark), 10, what="the escaped name in the log")
    assert not any(line.startswith("2099-01-01") for line in pv.log_text(mark).splitlines())


@pytest.mark.parametrize("setting", ["standard_conforming_strings = off", "client_encoding = 'SJIS'"])
def test_server_session_defaults_pgveil_cannot_read_under(guard, admin, setting):
    """A role default under which the server would read statements differently from pgveil refuses the session."""
    admin.execute(f"ALTER ROLE {harness.PLAIN_USER} SET {setting}")
    try:
        t = harness.pgveil_target(guard)
        with pytest.raises(psycopg.OperationalError) as exc:
            with psycopg.connect(t.conninfo(dbname="app_plain"), autocommit=True) as conn:
                conn.execute("SELECT 1")
        assert "is not allowed through pgveil: it could not read statements as the server does" in str(exc.value)
        with psycopg.connect(t.conninfo(), autocommit=True) as conn:  # other roles are not affected
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        admin.execute(f"ALTER ROLE {harness.PLAIN_USER} RESET ALL")
