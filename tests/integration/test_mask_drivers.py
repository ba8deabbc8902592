"""Masked results through every driver and every protocol path.

test_mask.py covers the common paths (psql, psycopg text/binary, prepared,
server-side cursor, asyncpg, views, a bypass corpus, COPY, error scrubbing).
This file covers the rest, each through a Recorder (leakcheck.py) that keeps
every byte pgveil sends the client, so each test checks both the values the
driver decoded and the bytes:

- node-postgres (tests/drivers/node/mask.js): plain, star, parameterized,
  named prepared, array row mode, numeric/date decoding, a refused derived
  use, pg-cursor, COPY TO STDOUT with pg-copy-streams;
- pgjdbc (tests/drivers/java/MaskCheck.java) with driver defaults, with
  prepareThreshold=1 and binaryTransfer=true, and with prepareThreshold=-1
  (binary from the first execution): fetch sizes (PortalSuspended), batches,
  a refused statement, result metadata;
- psycopg: pipeline mode with a refused statement in the middle (compared
  with PostgreSQL failing a statement there), executemany with returning,
  binary COPY refused, cursor.stream();
- asyncpg: 12,000 binary rows, cursors with prefetch, copy_from_query,
  executemany, a refusal;
- the raw protocol, each message sequence run against PostgreSQL directly
  and through pgveil: the message types (and so the DataRow counts) must be
  the same, only masked values differ;
- masks for some callers only (FOR GROUP / UNLESS GROUP) with tokens;
- a table and a partition created after pgveil started, and a reload adding
  a MASK rule under an open session.

Tests that show a bug of pgveil are strict xfails whose reason says what
goes wrong; tests that may bring pgveil down run on a pgveil of their own
(the `solo` fixture).
"""

import asyncio
import datetime
import decimal
import io
import json
import os
import struct
import uuid

import asyncpg
import psycopg
import pytest

import harness
import leakcheck
import pgwire
from harness import write_rules
from masking import admin_exec, agent, agent_target, conninfo, start_masked, stop_masked, wire
from pgwire import (FLUSH, SYNC, bind_msg, close_msg, datarows, describe_msg, errors_of, execute_msg, parse_datarow,
                    parse_msg, types_of)
from test_admin import idp  # noqa: F401 (fixture)
from test_jdbc import java_program
from test_jwt import start_oidc
from test_node import node

D = decimal.Decimal
T = "maskdrv_people"
MANY = "maskdrv_many"
LOG = "maskdrv_log"
MANY_ROWS = 12000

# id, name, email, ssn, salary, born, score, card, note, city (city is not masked)
PEOPLE = [
    (1, "Alice Wonderland-Secret", "alice.wonder@secret-mail.example", "123-45-6789", "123456.78", "1987-06-05",
     734519, "4111-1111-1111-1111", "confidential note alpha", "Paris"),
    (2, "Bob Quincy-Hidden", "bob.quincy@hidden-domain.example", "987-65-4321", "98765.43", "1990-12-31",
     281734, "5500-0000-0000-0004", "confidential note bravo", "Oslo"),
    (3, "Zoë Müller-Private", "zoe.mueller@private-host.example", "555-12-3456", "55555.55", "2001-02-03",
     950001, "3400-0000-0000-009", None, "Zürich"),
]
COLS = "id, name, email, ssn, salary, born, score, card, note, city"

# What the agent sees of each row: email, ssn, salary, born, score, card, note (name: 16 hex digits).
MASKED = {
    1: ("a***@secret-mail.example", "***-**-6789", D("100000"), datetime.date(1987, 1, 1), 700000, "****", None),
    2: ("b***@hidden-domain.example", "***-**-4321", D("100000"), datetime.date(1990, 1, 1), 300000, "****", None),
    3: ("z***@private-host.example", "***-**-3456", D("60000"), datetime.date(2001, 1, 1), 1000000, "****", None),
}
CITY = {r[0]: r[9] for r in PEOPLE}


def many_row(i):
    """Row i of MANY: id, email, salary, born, city."""
    return (i, f"m{i}.leakmark@corp-many.example", D(i) * D("1.37"), datetime.date(1970, 1, 1) +
            datetime.timedelta(days=i), f"city{i % 10}")


def round_sig(x, n):
    """round(n) of doc/masking.md: n significant digits, half away from zero."""
    if x == 0:
        return x
    q = D(1).scaleb(x.adjusted() - n + 1)
    return x.quantize(q, rounding=decimal.ROUND_HALF_UP)


def many_masked(i):
    _, _, salary, born, city = many_row(i)
    return (i, "m***@corp-many.example", round_sig(salary, 2), born.replace(day=1), city)


SAMPLE = [1, 2, 17, 500, 4321, 9001, 11999]
SECRETS = [str(v) for row in PEOPLE for v in row[1:9] if v is not None]
SECRETS += ["alice.wonder", "bob.quincy", "leakmark"]
SECRETS += [many_row(i)[1] for i in SAMPLE] + [str(many_row(i)[2]) for i in (4321, 9001, 11999)]
SECRETS += [many_row(i)[3].isoformat() for i in SAMPLE if many_row(i)[3].day != 1]
LOG_SECRETS = [f"log-secret-{k}-{i:04d}" for k in ("jdbc", "node", "psycopg", "asyncpg") for i in (1, 2, 7)]
SECRETS += LOG_SECRETS

RULES = f"""
MASK public.{T}.email  USING email();
MASK public.{T}.ssn    USING partial(0, '***-**-', 4);
MASK public.{T}.name   USING hash(16);
MASK public.{T}.salary USING round(1);
MASK public.{T}.born   USING truncate('year');
MASK public.{T}.score  USING round(1);
MASK public.{T}.card   USING redact();
MASK public.{T}.note   USING null();
MASK public.{MANY}.email  USING email();
MASK public.{MANY}.salary USING round(2);
MASK public.{MANY}.born   USING truncate('month');
MASK public.{LOG}.secret  USING redact();
ALLOW ALL;
"""


@pytest.fixture(scope="module")
def tables(cluster):
    conn = psycopg.connect(cluster.admin_conninfo("app"), autocommit=True)
    conn.execute(f"DROP TABLE IF EXISTS {T}, {MANY}, {LOG} CASCADE")
    conn.execute(f"""CREATE TABLE {T} (id integer PRIMARY KEY, name text, email text NOT NULL UNIQUE,
                     ssn varchar(11), salary numeric(10,2), born date, score integer, card text, note text,
                     city text)""")
    for row in PEOPLE:
        conn.execute(f"INSERT INTO {T} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
    conn.execute(f"CREATE TABLE {MANY} (id integer PRIMARY KEY, email text, salary numeric(12,2), born date, "
                 f"city text)")
    with conn.cursor().copy(f"COPY {MANY} FROM STDIN") as cp:
        for i in range(1, MANY_ROWS + 1):
            cp.write_row(many_row(i))
    conn.execute(f"CREATE TABLE {LOG} (id integer PRIMARY KEY, secret text, city text)")
    conn.execute(f"ALTER TABLE {LOG} OWNER TO {harness.APP_USER}")
    conn.execute(f"GRANT ALL ON {T}, {MANY} TO {harness.APP_USER}")
    conn.execute(f"ANALYZE {T}, {MANY}")
    yield
    conn.execute(f"DROP TABLE IF EXISTS {T}, {MANY}, {LOG} CASCADE")
    conn.close()


def start_maskdrv(workroot, pgveil_bin, cluster, certs):
    """A pgveil with RULES (its one database entry is `app`) and its Recorder."""
    return start_masked(pgveil_bin, cluster, certs, workroot, RULES, "maskdrv",
                        databases={"app": harness.backend_conninfo(cluster)})


@pytest.fixture(scope="module")
def masked(tables, workroot, pgveil_bin, cluster, certs):
    """The pgveil most tests share, with its Recorder."""
    pv, rec = start_maskdrv(workroot, pgveil_bin, cluster, certs)
    yield pv, rec
    stop_masked(pv, rec)


@pytest.fixture
def solo(tables, workroot, pgveil_bin, cluster, certs):
    """A pgveil of the test's own, for tests that may bring pgveil down
    (those marked xfail): the test ends with finish(), which checks the
    recorded bytes and that pgveil is still running without a sanitizer
    report. (pv, rec, finish)."""
    pv, rec = start_maskdrv(workroot, pgveil_bin, cluster, certs)
    finished = []

    def finish():
        assert_no_leak(rec)
        assert pv.alive(), "pgveil died:\n" + pv.log_text()[-6000:]
        assert not pv.sanitizer_report(), pv.sanitizer_report()
        finished.append(True)

    yield pv, rec, finish
    rec.close()
    problems = pv.check_clean_exit()
    if finished:
        assert not problems, "\n".join(problems)


@pytest.fixture
def rec(masked):
    """The Recorder, emptied; after the test nothing it recorded may hold a sensitive value."""
    pv, r = masked
    r.take()
    yield r
    assert_no_leak(r)
    assert pv.alive(), "pgveil died:\n" + pv.log_text()[-6000:]


def assert_no_leak(rec):
    leakcheck.assert_no_leak(rec, SECRETS)


def direct_conninfo(cluster):
    return harness.direct_target(cluster).conninfo(sslmode="disable")


def is_hash16(v):
    return isinstance(v, str) and len(v) == 16 and all(c in "0123456789abcdef" for c in v)


def check_people(rows):
    """rows: (id, name, email, ssn, salary, born, score, card, note, city) as decoded by a driver."""
    assert [r[0] for r in rows] == [1, 2, 3]
    for r in rows:
        check_person(r)


def check_person(r):
    email, ssn, salary, born, score, card, note = MASKED[r[0]]
    assert is_hash16(r[1]), r
    assert (r[2], r[3], r[7], r[8], r[9]) == (email, ssn, card, note, CITY[r[0]]), r
    assert D(r[4]) == salary, r
    assert r[5] == born, r
    assert r[6] == score, r


def check_many(rows, n=MANY_ROWS):
    assert len(rows) == n
    for r in rows:
        i = r[0]
        want = many_masked(i)
        assert (r[1], r[4]) == (want[1], want[4]), r
        assert D(r[2]) == want[2], (r, want)
        assert r[3] == want[3], (r, want)


def reset_log(cluster):
    admin_exec(cluster, f"TRUNCATE {LOG}")


# ---------------------------------------------------------------------------- psycopg

def pipeline_run(conn, stmts, sync_after=()):
    """Runs stmts in one pipeline block (a Sync after the indexes in sync_after
    and at the end). Returns (outcome of each statement, errors raised while
    sending and syncing, by SQLSTATE or class): ("rows", rows), ("error",
    sqlstate) or ("aborted", None)."""
    curs, raised = [], []

    def note(e):
        raised.append(e.sqlstate or type(e).__name__)

    try:
        with conn.pipeline() as p:
            for k, s in enumerate(stmts):
                cur = conn.cursor()
                curs.append(cur)
                try:
                    cur.execute(s)
                except psycopg.Error as e:
                    note(e)
                if k in sync_after:
                    try:
                        p.sync()
                    except psycopg.Error as e:
                        note(e)
            try:
                p.sync()
            except psycopg.Error as e:
                note(e)
    except psycopg.Error as e:
        note(e)
    outcomes = []
    for cur in curs:
        try:
            outcomes.append(("rows", cur.fetchall()))
        except psycopg.errors.PipelineAborted:
            outcomes.append(("aborted", None))
        except psycopg.Error as e:
            outcomes.append(("error", e.sqlstate or type(e).__name__))
    return outcomes, raised


def pipeline_shape(outcomes, raised, bad_state):
    """The outcome with the failing statement's SQLSTATE replaced by "BAD" and rows by their count."""
    shape = [(k, len(v)) if k == "rows" else (k, "BAD" if v == bad_state else v) for k, v in outcomes]
    return shape, ["BAD" if r == bad_state else r for r in raised]


PIPE_GOOD = [f"SELECT {COLS} FROM {T} ORDER BY id", f"SELECT id, email, city FROM {T} WHERE id = 2",
             f"SELECT id, email, salary, born, city FROM {MANY} WHERE id <= 5 ORDER BY id"]


def same_pipeline_shape(a, b):
    """The same outcomes; psycopg's PipelineAborted depends on timing (whether the
    later queries were sent before the error came back), so it is not compared."""
    strip = lambda raised: [r for r in raised if r != "PipelineAborted"]  # noqa: E731
    return a[0] == b[0] and strip(a[1]) == strip(b[1])


@pytest.mark.parametrize("sync_after", [(), (2,)], ids=["one-sync", "sync-after-bad"])
def test_psycopg_pipeline_refusal_in_the_middle(rec, cluster, sync_after):
    """A refused statement in the middle of a pipeline: statements before it
    give masked rows, those after it up to the next Sync are aborted, those
    after the Sync run; PostgreSQL failing a statement at the same place
    (42703 at Parse, as a refusal is) gives the same outcome."""
    stmts = PIPE_GOOD[:2] + [f"SELECT upper(email) FROM {T}"] + PIPE_GOOD[2:] + PIPE_GOOD[:1]
    with agent(rec) as conn:
        outcomes, raised = pipeline_run(conn, stmts, sync_after)
        via = pipeline_shape(outcomes, raised, "42501")
        assert "42501" in raised or ("error", "42501") in outcomes, (outcomes, raised)
        check_people(outcomes[0][1])
        assert outcomes[1][1] == [(2, MASKED[2][0], "Oslo")]
        for k, v in outcomes:
            if k == "rows" and len(v) == 3:
                check_people(v)
        if 2 in sync_after:
            assert outcomes[3][0] == "rows"
            check_many(outcomes[3][1], 5)
        assert conn.execute(f"SELECT id, email FROM {T} WHERE id = 1").fetchone() == (1, MASKED[1][0])
    with psycopg.connect(direct_conninfo(cluster), autocommit=True) as conn:
        stmts[2] = f"SELECT no_such_column FROM {T}"
        outcomes, raised = pipeline_run(conn, stmts, sync_after)
        direct = pipeline_shape(outcomes, raised, "42703")
    assert same_pipeline_shape(via, direct), (via, direct)


def test_psycopg_pipeline_error_compared(rec, cluster):
    """An error of the server (at Execute) in a pipeline of masked SELECTs: the same outcome as directly."""
    stmts = PIPE_GOOD[:2] + ["SELECT 1/0"] + PIPE_GOOD
    with agent(rec) as conn:
        via = pipeline_shape(*pipeline_run(conn, stmts, (2,)), "22012")
        assert conn.execute(f"SELECT {COLS} FROM {T} ORDER BY id").fetchall()[0][2] == MASKED[1][0]
    with psycopg.connect(direct_conninfo(cluster), autocommit=True) as conn:
        direct = pipeline_shape(*pipeline_run(conn, stmts, (2,)), "22012")
    assert same_pipeline_shape(via, direct), (via, direct)
    assert ("error", "BAD") in via[0] or "BAD" in via[1]


def test_psycopg_pipeline_prepared_statements(rec):
    notices = []
    with agent(rec) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        with conn.pipeline():
            a = conn.cursor().execute(f"SELECT id, email, ssn FROM {T} WHERE id = %s", (1,), prepare=True)
            b = conn.cursor().execute(f"SELECT ssn, id, card FROM {T} WHERE id = %s", (2,), prepare=True)
            a2 = conn.cursor().execute(f"SELECT id, email, ssn FROM {T} WHERE id = %s", (3,), prepare=True)
        assert a.fetchall() == [(1, MASKED[1][0], MASKED[1][1])]
        assert a2.fetchall() == [(3, MASKED[3][0], MASKED[3][1])]
        assert b.fetchall() == [(MASKED[2][1], 2, "****")]  # pgveil sends (ssn, NULL, NULL)
    assert notices == []


def test_psycopg_executemany_returning(rec, cluster):
    reset_log(cluster)
    rows = [(i, f"log-secret-psycopg-{i:04d}", f"town{i}") for i in (1, 2, 7)]
    with agent(rec) as conn:
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {LOG} (id, secret, city) VALUES (%s, %s, %s) RETURNING id, secret, city",
                        rows, returning=True)
        got = []
        while True:
            got += cur.fetchall()
            if not cur.nextset():
                break
        assert got == [(i, "****", f"town{i}") for i in (1, 2, 7)]
        # and as plain results
        assert conn.execute(f"SELECT * FROM {LOG} ORDER BY id").fetchall() == got
        cur.executemany(f"SELECT id, email, city FROM {T} WHERE id = %s", [(1,), (3,)], returning=True)
        res = [cur.fetchall()]
        cur.nextset()
        res.append(cur.fetchall())
        assert res == [[(1, MASKED[1][0], "Paris")], [(3, MASKED[3][0], "Zürich")]]
    with psycopg.connect(cluster.admin_conninfo("app")) as c:
        assert c.execute(f"SELECT secret FROM {LOG} WHERE id = 7").fetchone() == ("log-secret-psycopg-0007",)


@pytest.mark.parametrize("sql", [f"COPY (SELECT id, email FROM {T}) TO STDOUT (FORMAT binary)",
                                 f"COPY {T} TO STDOUT WITH (FORMAT binary)",
                                 f"COPY {T} (id, ssn) TO STDOUT WITH BINARY"])
def test_psycopg_binary_copy_refused(rec, sql):
    with agent(rec) as conn:
        with conn.cursor() as cur:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
                with cur.copy(sql) as cp:
                    for _ in cp:
                        pass
            # a clear message: what cannot be done, and which column
            msg = exc.value.diag.message_primary
            assert "COPY" in msg and "binary" in msg and "cannot be masked" in msg, msg
            assert f"public.{T}." in msg, msg
        assert conn.execute(f"SELECT id, ssn FROM {T} WHERE id = 1").fetchone() == (1, MASKED[1][1])


def test_psycopg_binary_copy_of_unmasked_columns(rec):
    """doc/masking.md refuses COPY TO STDOUT of masked columns; binary rows of other columns pass as they are."""
    with agent(rec) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT id, city FROM {T} ORDER BY id) TO STDOUT (FORMAT binary)") as cp:
                cp.set_types(["int4", "text"])
                assert list(cp.rows()) == [(1, "Paris"), (2, "Oslo"), (3, "Zürich")]


@pytest.mark.parametrize("binary", [False, True])
def test_psycopg_stream(rec, binary):
    with agent(rec) as conn:
        cur = conn.cursor(binary=binary)
        rows = list(cur.stream(f"SELECT id, email, salary, born, city FROM {MANY} ORDER BY id"))
        check_many(rows)
        rows = list(cur.stream(f"SELECT {COLS} FROM {T} WHERE id >= %s ORDER BY id", (1,)))
        check_people(rows)
        # stopping a stream in the middle leaves the connection usable
        for k, row in enumerate(cur.stream(f"SELECT id, email FROM {MANY} ORDER BY id")):
            assert row[1] == "m***@corp-many.example"
            if k == 100:
                break
        assert conn.execute(f"SELECT email FROM {T} WHERE id = 3").fetchone() == (MASKED[3][0],)


# ---------------------------------------------------------------------------- asyncpg (binary)

def run_asyncpg(rec, body):
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=rec.port, user=harness.PROXY_USER, password="unused",
                                     database="app", ssl=False, timeout=15)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def test_asyncpg_fetch_many_rows(rec):
    async def body(conn):
        rows = await conn.fetch(f"SELECT id, email, salary, born, city FROM {MANY} ORDER BY id")
        check_many([tuple(r) for r in rows])
        stmt = await conn.prepare(f"SELECT id, email, salary, born, city FROM {MANY} WHERE id > $1 ORDER BY id")
        for _ in range(2):
            check_many([tuple(r) for r in await stmt.fetch(MANY_ROWS - 1000)], 1000)
        check_people([tuple(r) for r in await conn.fetch(f"SELECT {COLS} FROM {T} ORDER BY id")])

    run_asyncpg(rec, body)


def test_asyncpg_cursor_prefetch(rec):
    async def body(conn):
        async with conn.transaction():
            got = [tuple(r) async for r in conn.cursor(
                f"SELECT id, email, salary, born, city FROM {MANY} ORDER BY id", prefetch=333)]
            check_many(got)
            # a cursor moved by hand: fetch, forward
            cur = await conn.cursor(f"SELECT {COLS} FROM {T} WHERE id >= $1 ORDER BY id", 1)
            first = await cur.fetch(2)
            rest = await cur.fetch(5)
            check_people([tuple(r) for r in first + rest])
            cur = await conn.cursor(f"SELECT {COLS} FROM {T} ORDER BY id")
            one = tuple(await cur.fetchrow())
            assert await cur.forward(1) == 1
            three = [tuple(r) for r in await cur.fetch(5)]
            assert [one[0]] + [r[0] for r in three] == [1, 3]
            for r in [one] + three:
                check_person(r)
            got = [tuple(r) async for r in conn.cursor(f"SELECT {COLS} FROM {T} ORDER BY id", prefetch=1)]
            check_people(got)

    run_asyncpg(rec, body)


@pytest.mark.parametrize("fmt", ["text", "csv"])
def test_asyncpg_copy_from_query(rec, fmt):
    async def body(conn):
        out = io.BytesIO()
        await conn.copy_from_query(f"SELECT id, email, ssn, card, note, city FROM {T} WHERE id > $1 ORDER BY id", 0,
                                   output=out, format=fmt)
        many = io.BytesIO()
        await conn.copy_from_query(f"SELECT id, email, city FROM {MANY} ORDER BY id", output=many, format=fmt)
        return out.getvalue().decode(), many.getvalue().decode()

    text, many = run_asyncpg(rec, body)
    sep, null = ("\t", "\\N") if fmt == "text" else (",", "")
    want = "".join(sep.join([str(i), MASKED[i][0], MASKED[i][1], MASKED[i][5], null, CITY[i]]) + "\n"
                   for i in (1, 2, 3))
    assert text == want
    lines = many.splitlines()
    assert len(lines) == MANY_ROWS
    assert all(ln == sep.join([str(i), "m***@corp-many.example", f"city{i % 10}"])
               for i, ln in enumerate(lines, 1))


def test_asyncpg_executemany_and_refusal(rec, cluster):
    reset_log(cluster)

    async def body(conn):
        rows = [(i, f"log-secret-asyncpg-{i:04d}", f"town{i}") for i in (1, 2, 7)]
        await conn.executemany(f"INSERT INTO {LOG} (id, secret, city) VALUES ($1, $2, $3)", rows)
        got = [tuple(r) for r in await conn.fetch(f"SELECT id, secret, city FROM {LOG} ORDER BY id")]
        assert got == [(i, "****", f"town{i}") for i in (1, 2, 7)]
        # refused, as a simple query and as a prepared statement; the session goes on
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as exc:
            await conn.fetch(f"SELECT upper(email) FROM {T}")
        assert "email" in str(exc.value)
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.prepare(f"SELECT id FROM {T} WHERE ssn = $1")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.fetchval(f"SELECT secret || '' FROM {LOG} WHERE id = $1", 1)
        assert await conn.fetchval("SELECT 41 + 1") == 42
        check_people([tuple(r) for r in await conn.fetch(f"SELECT {COLS} FROM {T} ORDER BY id")])
        # inside a transaction a refusal fails the transaction, as an error of the server would
        tr = conn.transaction()
        await tr.start()
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.fetch(f"SELECT md5(card) FROM {T}")
        with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
            await conn.fetch("SELECT 1")
        await tr.rollback()
        assert await conn.fetchval(f"SELECT ssn FROM {T} WHERE id = $1", 2) == MASKED[2][1]

    run_asyncpg(rec, body)


# ---------------------------------------------------------------------------- the raw protocol
#
# Each sequence runs on a raw connection to PostgreSQL itself and on one to
# pgveil (through the Recorder). The message types received must be the same
# (so are the numbers of DataRows); pgveil's rows carry masked values.

def raw_direct(cluster):
    return pgwire.connect("127.0.0.1", cluster.port, user=harness.APP_USER, database="app",
                          password=harness.APP_PASSWORD)


def exchange(w, steps, who):
    """Sends each step's bytes and reads its answers: `until` is a number of
    ReadyForQuery messages or a message type to stop after. A step's bytes may
    be {"direct": ..., "veil": ...}."""
    msgs = []
    for data, until in steps:
        w.send(data[who] if isinstance(data, dict) else data)
        msgs += w.read_until(b"Z", until) if isinstance(until, int) else w.read_until(until)
    # nothing more may follow: the next query's answer comes next, and only it
    w.send(pgwire.query_message("SELECT 'end of sequence'"))
    tail = [w.read_message() for _ in range(4)]
    assert [t for t, _ in tail] == [b"T", b"D", b"C", b"Z"], tail
    assert parse_datarow(tail[1][1]) == [b"end of sequence"]
    return msgs


def compare(cluster, rec, steps):
    """Runs steps directly and through pgveil; returns (direct, veil) messages after checking their types agree."""
    with raw_direct(cluster) as w:
        direct = exchange(w, steps, "direct")
    with wire(rec) as w:
        veil = exchange(w, steps, "veil")
    assert types_of(veil) == types_of(direct), f"\nthrough pgveil: {types_of(veil)}\ndirectly: {types_of(direct)}"
    return direct, veil


def sqlstates(msgs):
    return [e["C"] for e in errors_of(msgs)]


def text(v):
    return None if v is None else v.decode()


def check_text_person(vals, cols=COLS):
    """A row of text values of the columns named in `cols` (comma-separated)."""
    names = [c.strip() for c in cols.split(",")]
    row = dict(zip(names, [text(v) for v in vals]))
    i = int(row["id"])
    email, ssn, salary, born, score, card, note = MASKED[i]
    want = {"email": email, "ssn": ssn, "salary": str(salary), "born": born.isoformat(), "score": str(score),
            "card": card, "note": note, "city": CITY[i]}
    for name, v in row.items():
        if name == "name":
            assert is_hash16(v), row
        elif name in want:
            assert v == want[name], (name, row)
    return i


def check_direct_person(vals, cols=COLS):
    """Directly, the same row has the stored values (the sequences really read them)."""
    names = [c.strip() for c in cols.split(",")]
    row = dict(zip(names, [text(v) for v in vals]))
    stored = dict(zip(COLS.split(", "), next(r for r in PEOPLE if r[0] == int(row["id"]))))
    for name in ("email", "ssn", "card"):
        if name in row:
            assert row[name] == stored[name], (name, row)


PEOPLE_SQL = f"SELECT {COLS} FROM {T} WHERE id > $1 ORDER BY id"
BEGIN = pgwire.query_message("BEGIN")
COMMIT = pgwire.query_message("COMMIT")


def test_raw_execute_without_describe(solo, cluster):
    """Parse, Bind, Execute and no Describe: pgveil describes the portal
    itself; the client sees no RowDescription PostgreSQL would not send."""
    pv, rec, finish = solo
    steps = [
        (parse_msg("", PEOPLE_SQL) + bind_msg("", "", [b"0"]) + execute_msg("") + SYNC, 1),
        (parse_msg("s1", PEOPLE_SQL) + SYNC, 1),
        (bind_msg("", "s1", [b"1"]) + execute_msg("") + SYNC, 1),
        (bind_msg("", "s1", [b"0"]) + execute_msg("") + bind_msg("", "s1", [b"2"]) + execute_msg("") + SYNC, 1),
        # a statement returning no rows, and a DML statement, undescribed too
        (parse_msg("", "SET application_name = 'raw'") + bind_msg("", "") + execute_msg("") + SYNC, 1),
        (parse_msg("", f"UPDATE {T} SET city = city WHERE id = $1") + bind_msg("", "", [b"1"]) + execute_msg("")
         + SYNC, 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == ("12DDDCZ" "1Z" "2DDCZ" "2DDDC2DCZ" "12CSZ" "12CZ")
    assert [check_text_person(r) for r in datarows(veil)] == [1, 2, 3, 2, 3, 1, 2, 3, 3]
    for r in datarows(direct):
        check_direct_person(r)
    finish()


def test_raw_row_limit_named_portal(solo, cluster):
    """Execute with a row limit on a named portal (PortalSuspended), again,
    across Syncs inside a transaction, until CommandComplete."""
    pv, rec, finish = solo
    steps = [
        (BEGIN, 1),
        (parse_msg("s", PEOPLE_SQL) + bind_msg("p1", "s", [b"0"]) + execute_msg("p1", 1) + execute_msg("p1", 1)
         + SYNC, 1),
        (execute_msg("p1", 1) + SYNC, 1),
        (execute_msg("p1", 1) + SYNC, 1),
        # described portal this time, row limit 2
        (bind_msg("p2", "s", [b"0"]) + describe_msg(b"P", "p2") + execute_msg("p2", 2) + execute_msg("p2", 2)
         + SYNC, 1),
        (COMMIT, 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "CZ" "12DsDsZ" "DsZ" "CZ" "2TDDsDCZ" "CZ"
    assert [check_text_person(r) for r in datarows(veil)] == [1, 2, 3, 1, 2, 3]
    finish()


def decode_numeric(b):
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", b)
    digits = struct.unpack_from(f"!{ndigits}h", b, 8)
    v = sum(D(d) * D(10000) ** (weight - k) for k, d in enumerate(digits))
    return -v if sign == 0x4000 else v


def decode_date(b):
    return datetime.date(2000, 1, 1) + datetime.timedelta(days=struct.unpack("!i", b)[0])


def test_raw_mixed_result_formats(solo, cluster):
    """Bind with a result format per column: text for some masked columns, binary for others."""
    pv, rec, finish = solo
    sql = f"SELECT id, email, salary, born, score, name, ssn, city FROM {T} WHERE id = $1"
    steps = [
        (parse_msg("mix", sql) + SYNC, 1),
        (bind_msg("", "mix", [b"1"], result_formats=[1, 0, 1, 1, 1, 1, 0, 1]) + execute_msg("") + SYNC, 1),
        (bind_msg("", "mix", [b"1"], result_formats=[0, 1, 0, 0, 0, 0, 1, 0]) + describe_msg(b"P", "")
         + execute_msg("") + SYNC, 1),
        (bind_msg("", "mix", [struct.pack("!i", 2)], param_formats=[1], result_formats=[1])
         + execute_msg("") + SYNC, 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    a, b, c = datarows(veil)
    email, ssn, salary, born, score, card, note = MASKED[1]
    # binary id, salary, born, score, name, city; text email, ssn
    assert struct.unpack("!i", a[0])[0] == 1 and text(a[1]) == email and text(a[6]) == ssn
    assert decode_numeric(a[2]) == salary and decode_date(a[3]) == born
    assert struct.unpack("!i", a[4])[0] == score and is_hash16(text(a[5])) and text(a[7]) == "Paris"
    # the other way round
    assert text(b[0]) == "1" and text(b[1]) == email and text(b[6]) == ssn
    assert D(text(b[2])) == salary and text(b[3]) == born.isoformat() and text(b[4]) == str(score)
    assert text(b[5]) == text(a[5]), "hash() differs between text and binary format"
    # all binary, row 2
    email, ssn, salary, born, score, card, note = MASKED[2]
    assert struct.unpack("!i", c[0])[0] == 2 and text(c[1]) == email and text(c[6]) == ssn
    assert decode_numeric(c[2]) == salary and decode_date(c[3]) == born and struct.unpack("!i", c[4])[0] == score
    d = datarows(direct)
    assert text(d[1][1]) == PEOPLE[0][2] and decode_numeric(d[0][2]) == D(PEOPLE[0][4])
    finish()


def test_raw_describe_statement_only(solo, cluster):
    """Describe of the statement (ParameterDescription, RowDescription), then
    Bind and Execute of an undescribed portal."""
    pv, rec, finish = solo
    steps = [
        (parse_msg("ds", PEOPLE_SQL) + describe_msg(b"S", "ds") + SYNC, 1),
        (bind_msg("", "ds", [b"0"]) + execute_msg("") + SYNC, 1),
        (describe_msg(b"S", "ds") + bind_msg("", "ds", [b"1"], result_formats=[1]) + execute_msg("") + SYNC, 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "1tTZ" "2DDDCZ" "tT2DDCZ"
    rows = datarows(veil)
    assert [check_text_person(r) for r in rows[:3]] == [1, 2, 3]
    assert [text(r[2]) for r in rows[3:]] == [MASKED[2][0], MASKED[3][0]]
    finish()


def test_raw_error_in_the_middle_of_a_pipeline(solo, cluster):
    """An error before Sync: the server skips to the Sync, then goes on."""
    pv, rec, finish = solo
    ok = parse_msg("", PEOPLE_SQL) + bind_msg("", "", [b"0"]) + execute_msg("")
    many = parse_msg("", f"SELECT id, email FROM {MANY} WHERE id <= $1 ORDER BY id") + bind_msg("", "", [b"4"]) \
        + execute_msg("")
    bad = parse_msg("", "SELECT 1/0") + bind_msg("", "") + execute_msg("")
    steps = [(ok + bad + many + SYNC, 1), (many + ok + SYNC, 1)]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "12DDDC" "1EZ" "12DDDDC12DDDCZ"  # 1/0 fails when planned, at Bind
    assert sqlstates(veil) == ["22012"]
    rows = datarows(veil)
    assert [check_text_person(r) for r in rows[:3] + rows[7:]] == [1, 2, 3, 1, 2, 3]
    assert [text(r[1]) for r in rows[3:7]] == ["m***@corp-many.example"] * 4
    finish()


def test_raw_refusal_in_the_middle_of_a_pipeline(solo, cluster):
    """A refused statement before Sync behaves as a statement PostgreSQL fails at Parse."""
    pv, rec, finish = solo
    ok = parse_msg("", PEOPLE_SQL) + bind_msg("", "", [b"0"]) + execute_msg("")
    bad = {"direct": parse_msg("", f"SELECT no_such_column FROM {T}") + bind_msg("", "") + execute_msg(""),
           "veil": parse_msg("", f"SELECT upper(email) FROM {T}") + bind_msg("", "") + execute_msg("")}
    steps = [(ok + SYNC, 1), ({k: ok + v + ok + SYNC for k, v in bad.items()}, 1), (ok + SYNC, 1)]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "12DDDCZ" "12DDDCEZ" "12DDDCZ"
    assert sqlstates(veil) == ["42501"] and sqlstates(direct) == ["42703"]
    assert [check_text_person(r) for r in datarows(veil)] == [1, 2, 3] * 3
    finish()


def test_raw_flush_without_sync(solo, cluster):
    pv, rec, finish = solo
    steps = [
        (parse_msg("", PEOPLE_SQL) + bind_msg("", "", [b"0"]) + describe_msg(b"P", "") + execute_msg("") + FLUSH,
         b"C"),
        (parse_msg("", PEOPLE_SQL) + bind_msg("", "", [b"1"]) + execute_msg("") + FLUSH, b"C"),
        (bind_msg("", "", [b"0"]) + execute_msg("", 1) + FLUSH, b"s"),
        (execute_msg("", 5) + FLUSH, b"C"),
        (SYNC, 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "12TDDDC" "12DDC" "2Ds" "DDC" "Z"
    assert [check_text_person(r) for r in datarows(veil)] == [1, 2, 3, 2, 3, 1, 2, 3]
    finish()


def test_raw_interleaved_named_portals(solo, cluster):
    pv, rec, finish = solo
    a_cols, b_cols = "id, email, ssn", "city, card, id, born, name"
    steps = [
        (BEGIN, 1),
        (parse_msg("sa", f"SELECT {a_cols} FROM {T} ORDER BY id") +
         parse_msg("sb", f"SELECT {b_cols} FROM {T} ORDER BY id DESC") +
         bind_msg("pa", "sa") + bind_msg("pb", "sb", result_formats=[0, 0, 1, 1, 0]) +
         execute_msg("pa", 1) + execute_msg("pb", 1) + execute_msg("pa", 1) + execute_msg("pb", 1) + SYNC, 1),
        (execute_msg("pb", 1) + execute_msg("pa", 0) + execute_msg("pb", 0) + SYNC, 1),
        (COMMIT, 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "CZ" "1122DsDsDsDsZ" "DsDCCZ" "CZ"
    rows = datarows(veil)
    order = ["a", "b", "a", "b", "b", "a", "b"]
    ids = {"a": [], "b": []}
    for who, r in zip(order, rows):
        if who == "a":
            ids["a"].append(check_text_person(r, a_cols))
        else:
            i = struct.unpack("!i", r[2])[0]
            ids["b"].append(i)
            assert text(r[0]) == CITY[i] and text(r[1]) == "****" and decode_date(r[3]) == MASKED[i][3]
            assert is_hash16(text(r[4]))
    assert ids == {"a": [1, 2, 3], "b": [3, 2, 1]}
    finish()


A_SQL = f"SELECT id, email, ssn FROM {T} ORDER BY id"
B_SQL = f"SELECT ssn, id, card, salary FROM {T} ORDER BY id"
B_WANT = [(MASKED[i][1], "****", str(MASKED[i][2])) for i in (1, 2, 3)]


def b_rows(rows):
    return [(text(r[0]), text(r[2]), text(r[3])) for r in rows]


def test_raw_close_portal_then_reuse_name(solo, cluster):
    """Close of a portal, then a portal of that name for another statement
    (and a statement name reused), each step answered before the next."""
    pv, rec, finish = solo
    steps = [
        (BEGIN, 1),
        (parse_msg("a", A_SQL) + parse_msg("b", B_SQL) + SYNC, 1),
        (bind_msg("p1", "a") + execute_msg("p1", 1) + SYNC, 1),
        (close_msg(b"P", "p1") + SYNC, 1),
        (bind_msg("p1", "b") + execute_msg("p1", 0) + SYNC, 1),
        (bind_msg("p2", "b") + execute_msg("p2", 1) + SYNC, 1),
        (close_msg(b"P", "p2") + SYNC, 1),
        (close_msg(b"S", "a") + parse_msg("a", B_SQL) + bind_msg("p2", "a") + describe_msg(b"P", "p2")
         + execute_msg("p2", 0) + SYNC, 1),
        (close_msg(b"P", "p2") + SYNC, 1),
        (bind_msg("p2", "b") + execute_msg("p2", 0) + SYNC, 1),
        (COMMIT, 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "CZ" "11Z" "2DsZ" "3Z" "2DDDCZ" "2DsZ" "3Z" "312TDDDCZ" "3Z" "2DDDCZ" "CZ"
    rows = datarows(veil)
    check_text_person(rows[0], "id, email, ssn")
    assert b_rows(rows[1:4]) == B_WANT and b_rows(rows[4:5]) == B_WANT[:1]
    assert b_rows(rows[5:8]) == B_WANT and b_rows(rows[8:11]) == B_WANT
    finish()


@pytest.mark.parametrize("portal", ["p1", ""])
def test_raw_portal_rebound_in_one_batch(solo, cluster, portal):
    """In one batch: a portal of statement a executed, closed (the unnamed one
    simply rebound), then bound to statement b and executed."""
    pv, rec, finish = solo
    close = close_msg(b"P", portal) if portal else b""
    steps = [
        (BEGIN, 1),
        (parse_msg("a", A_SQL) + parse_msg("b", B_SQL) + bind_msg(portal, "a") + execute_msg(portal, 1) +
         close + bind_msg(portal, "b") + execute_msg(portal, 0) + SYNC, 1),
        (COMMIT, 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == types_of(direct)
    assert types_of(veil) == "CZ" + ("112Ds32DDDCZ" if portal else "112Ds2DDDCZ") + "CZ"
    rows = datarows(veil)
    check_text_person(rows[0], "id, email, ssn")
    assert b_rows(rows[1:4]) == B_WANT
    finish()


def test_raw_simple_query_several_statements(solo, cluster):
    pv, rec, finish = solo
    sql = (f"SELECT id, email FROM {T} ORDER BY id; SET application_name = 'multi'; "
           f"SELECT city FROM {T} ORDER BY id; SELECT ssn, name, salary, id FROM {T} ORDER BY id; "
           f"SELECT id, city FROM {MANY} WHERE id < 3 ORDER BY id; SELECT {COLS} FROM {T} ORDER BY id")
    steps = [(pgwire.query_message(sql), 1), (BEGIN + pgwire.query_message(f"SELECT email FROM {T} WHERE id = 1; "
                                                                          f"COMMIT; SELECT 2"), 2)]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == types_of(direct)  # ParameterStatus comes just before ReadyForQuery
    assert types_of(veil) == "TDDDC" "C" "TDDDC" "TDDDC" "TDDC" "TDDDC" "SZ" "CZ" "TDCCTDCZ"
    rows = datarows(veil)
    assert [check_text_person(r, "id, email") for r in rows[0:3]] == [1, 2, 3]
    assert [text(r[0]) for r in rows[3:6]] == ["Paris", "Oslo", "Zürich"]
    assert [check_text_person(r, "ssn, name, salary, id") for r in rows[6:9]] == [1, 2, 3]
    assert [[text(v) for v in r] for r in rows[9:11]] == [["1", "city1"], ["2", "city2"]]
    assert [check_text_person(r) for r in rows[11:14]] == [1, 2, 3]
    assert text(rows[14][0]) == MASKED[1][0] and text(rows[15][0]) == "2"
    finish()


def test_raw_empty_query(solo, cluster):
    pv, rec, finish = solo
    steps = [
        (pgwire.query_message(""), 1),
        (pgwire.query_message(";"), 1),
        (parse_msg("", "") + bind_msg("", "") + execute_msg("") + SYNC, 1),
        (parse_msg("", "") + bind_msg("", "") + describe_msg(b"P", "") + execute_msg("") + SYNC, 1),
        (pgwire.query_message(f"SELECT email FROM {T} WHERE id = 2"), 1),
    ]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "IZ" "IZ" "12IZ" "12nIZ" "TDCZ"
    assert [text(r[0]) for r in datarows(veil)] == [MASKED[2][0]]
    finish()


def test_raw_multi_statement_query_second_fails(solo, cluster):
    pv, rec, finish = solo
    sql = f"SELECT id, email FROM {T} ORDER BY id; SELECT 1/0; SELECT ssn FROM {T}"
    steps = [(pgwire.query_message(sql), 1), (pgwire.query_message(f"SELECT id, ssn FROM {T} ORDER BY id"), 1)]
    direct, veil = compare(cluster, rec, steps)
    assert types_of(veil) == "TDDDCEZ" "TDDDCZ"
    assert sqlstates(veil) == ["22012"]
    rows = datarows(veil)
    assert [check_text_person(r, "id, email") for r in rows[:3]] == [1, 2, 3]
    assert [check_text_person(r, "id, ssn") for r in rows[3:]] == [1, 2, 3]
    finish()


def test_raw_multi_statement_query_with_a_refused_statement(solo):
    """A string whose second statement is refused: refused as a whole, nothing of it runs."""
    pv, rec, finish = solo
    with wire(rec) as w:
        rows, tags, err = w.simple_query(f"SELECT id, email FROM {T} ORDER BY id; SELECT upper(email) FROM {T}; "
                                         f"SELECT 3")
        assert err["C"] == "42501" and "email" in err["M"]
        assert rows == [] and tags == []
        rows, tags, err = w.simple_query(f"SELECT id, email FROM {T} WHERE id = 3")
        assert err is None and [[text(v) for v in r] for r in rows] == [["3", MASKED[3][0]]]
    finish()


def error_after_an_unmasked_result(w, protocol, sql):
    """What node-postgres and pgjdbc send for any parameterized query (Parse,
    Bind, Describe, Execute, Sync), once, for a result with no masked column;
    then sql, which must fail, by that protocol: its error's fields."""
    w.send(parse_msg("", "SELECT $1::int + 1") + bind_msg("", "", [b"41"]) + describe_msg(b"P", "") +
           execute_msg("") + SYNC)
    assert datarows(w.read_until_ready()) == [[b"42"]]
    if protocol == "simple":
        w.send(pgwire.query_message(sql))
    else:
        w.send(parse_msg("", sql) + bind_msg("", "") + describe_msg(b"P", "") + execute_msg("") + SYNC)
    return errors_of(w.read_until_ready())[0]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_raw_errors_scrubbed_after_an_unmasked_result(solo, cluster, protocol):
    """After error_after_an_unmasked_result()'s prelude, a statement failing on
    a row of the masked table: its error must still be scrubbed."""
    pv, rec, finish = solo
    admin_exec(cluster, f"ALTER TABLE {T} DROP CONSTRAINT IF EXISTS maskdrv_salary_positive, "
                        f"ADD CONSTRAINT maskdrv_salary_positive CHECK (salary >= 0)")
    try:
        with wire(rec) as w:
            err = error_after_an_unmasked_result(w, protocol, f"UPDATE {T} SET salary = -1 WHERE id = 1")
            assert err["C"] == "23514"
            assert "Failing row" not in err.get("D", ""), err
        finish()
    finally:
        admin_exec(cluster, f"ALTER TABLE {T} DROP CONSTRAINT maskdrv_salary_positive")


# ---------------------------------------------------------------------------- node-postgres

@pytest.fixture(scope="module")
def node_mask(masked, node_driver, cluster, workroot):
    """Runs tests/drivers/node/mask.js once through the Recorder: (what it decoded, leaks found)."""
    pv, rec = masked
    reset_log(cluster)
    rec.take()
    result = os.path.join(workroot, f"node-mask-{uuid.uuid4().hex[:8]}.json")
    node(node_driver, "mask.js", agent_target(rec), timeout=180, PGSSLMODE="disable", ITEST_TABLE=T, ITEST_MANY=MANY,
         ITEST_LOG=LOG, ITEST_OUT=result)
    found = leakcheck.leaks(rec.take(), SECRETS)
    with open(result) as f:
        return json.load(f), found


def check_json_person(r):
    """A row of COLS as a driver program wrote it in JSON (salary a string, born YYYY-MM-DD)."""
    i, name, email, ssn, salary, born, score, card, note, city = r
    check_person((i, name, email, ssn, D(salary), datetime.date.fromisoformat(born), score, card, note, city))
    return i


def check_node_many(rows, n):
    assert [r[0] for r in rows] == list(range(1, n + 1))
    for i, email, salary, born, city in rows:
        want = many_masked(i)
        assert (email, D(salary), datetime.date.fromisoformat(born), city) == want[1:], (i, email, salary, born)


def test_node_no_leak(node_mask):
    assert node_mask[1] == [], f"sensitive values reached node-postgres: {node_mask[1]}"


def test_node_select_star_params_named(node_mask):
    out = node_mask[0]
    assert [check_json_person(r) for r in out["plain"]] == [1, 2, 3]
    assert [check_json_person(r) for r in out["star"]] == [1, 2, 3]
    assert out["starFields"] == COLS.split(", ")
    assert [check_json_person(r) for r in out["params"]] == [1, 2, 3]
    assert [check_json_person(r) for r in out["named"]] == [1, 2, 3, 2, 1]
    assert out["named"][0] == out["named"][4] and out["named"][1] == out["named"][3]  # hash() is stable
    assert [check_json_person(r) for r in out["namedAfterRefusal"]] == [3]


def test_node_array_mode_and_types(node_mask):
    out = node_mask[0]
    for i, email, salary, born, score in out["array"]:
        m = MASKED[i]
        assert (email, D(salary), born, score) == (m[0], m[2], m[3].isoformat(), m[4])
    assert [r[0] for r in out["array"]] == [1, 2, 3]
    assert out["manyTypes"] == [23, 25, 1700, 1082, 25]  # int4, text, numeric, date, text: types unchanged
    check_node_many(out["many"], 400)


def test_node_binary_results(node_mask):
    rows = node_mask[0]["binary"]
    assert [r[:3] + r[4:] for r in rows] == [[i, MASKED[i][0], MASKED[i][1], "****", CITY[i]] for i in (1, 2, 3)]
    # hash() gives the same in binary as in text
    assert [r[3] for r in rows] == [r[1] for r in node_mask[0]["plain"]]


def test_node_refused_and_usable(node_mask):
    out = node_mask[0]
    assert len(out["refused"]) == 3
    for msg, col in zip(out["refused"], ("email", "ssn", "card")):
        assert f"public.{T}.{col}" in msg and "masked" in msg, msg
    assert out["afterRefusal"] == [{"id": 2, "email": MASKED[2][0]}]
    assert out["afterRollback"] == MASKED[1][1]
    assert out["log"] == [{"id": i, "secret": "****", "city": f"town{i}"} for i in (1, 2, 7)]
    assert out["last"] == 42


def test_node_cursor(node_mask):
    check_node_many(node_mask[0]["cursor"], MANY_ROWS)


def test_node_copy_out(node_mask):
    copy = node_mask[0]["copy"]
    assert copy["text"] == "".join(f"{i}\t{MASKED[i][0]}\t{MASKED[i][1]}\t****\t\\N\t{CITY[i]}\n" for i in (1, 2, 3))
    header, *lines = copy["csv"].splitlines()  # a table's COPY has the rows in the table's order
    assert header == "id,email,ssn,city"
    assert sorted(lines) == [f"{i},{MASKED[i][0]},{MASKED[i][1]},{CITY[i]}" for i in (1, 2, 3)]
    assert copy["many"] == "".join(f"{i}\tm***@corp-many.example\n" for i in range(1, MANY_ROWS + 1))
    assert "binary" in node_mask[0]["copyBinary"]


# ---------------------------------------------------------------------------- pgjdbc

JDBC_MODES = ["default", "prep1", "binary"]
JDBC_SCENARIOS = ["select", "fetchsize", "batch", "refused", "metadata", "primarykeys"]
_jdbc_runs = {}


@pytest.fixture
def jdbc_mask(request, masked, java_driver, cluster):
    """MaskCheck run once per mode through the Recorder: {"results", "data", "leaks"}."""
    mode = request.param
    if mode not in _jdbc_runs:
        pv, rec = masked
        reset_log(cluster)
        rec.take()
        results, data = java_program(java_driver, agent_target(rec), ["MaskCheck", mode], JDBC_SCENARIOS,
                                     ITEST_TABLE=T, ITEST_MANY=MANY, ITEST_LOG=LOG)
        _jdbc_runs[mode] = {"results": results, "data": data, "leaks": leakcheck.leaks(rec.take(), SECRETS)}
    return _jdbc_runs[mode]


def check_jdbc_people(rows, ids=(1, 2, 3)):
    assert [r[0] for r in rows] == list(ids)
    for r in rows:
        check_json_person(r)



def jdbc_params(scenarios=JDBC_SCENARIOS):
    return [pytest.param(m, s, id=f"{m}-{s}", marks=())
            for m in JDBC_MODES for s in scenarios]


@pytest.mark.parametrize("jdbc_mask", JDBC_MODES, indirect=True)
def test_jdbc_no_leak(jdbc_mask):
    assert jdbc_mask["leaks"] == [], f"sensitive values reached pgjdbc: {jdbc_mask['leaks']}"


@pytest.mark.parametrize("jdbc_mask,scenario", jdbc_params(), indirect=["jdbc_mask"])
def test_jdbc(jdbc_mask, scenario):
    status, detail = jdbc_mask["results"][scenario]
    assert status == "PASS", f"MaskCheck {scenario} failed:\n{detail}"
    data = jdbc_mask["data"]
    if scenario == "select":
        check_jdbc_people(data["select"])
        check_jdbc_people(data["select_star"])
        check_jdbc_people(data["select_by_id"], (3, 1, 2, 3, 1, 2))
        assert data["select_by_id"][:3] == data["select_by_id"][3:]
        assert sorted(data["select_by_id"][:3]) == data["select"]
    elif scenario == "fetchsize":
        check_jdbc_people(data["fetch1"])
        assert data["turns"] == [[1, MASKED[1][0]], [3, MASKED[3][1]], [2, MASKED[2][0]], [2, MASKED[2][1]],
                                 [3, MASKED[3][0]], [1, MASKED[1][1]]]
    elif scenario == "batch":
        assert data["batch_returning"] == [[i, "****", f"town{i}"] for i in (1, 2, 7)]
        assert data["batch_rows"] == [[1, "****", "town1!"], [2, "****", "TOWN2"], [7, "****", "town7"]]
    elif scenario == "refused":
        msgs = data["refused_messages"]
        assert len(msgs) == 4 and all("masked" in m for m in msgs), msgs
        assert all(f"public.{T}.email" in m for m in msgs[:3]) and f"public.{T}.ssn" in msgs[3], msgs
        check_jdbc_people(data["after_refusal"])
        assert data["after_rollback"] == MASKED[2][1]
    elif scenario == "metadata":
        md = data["metadata"]
        assert [c[:2] for c in md["columns"]] == [
            ["id", "int4"], ["name", "text"], ["email", "text"], ["ssn", "varchar"], ["salary", "numeric"],
            ["born", "date"], ["score", "int4"], ["card", "text"], ["note", "text"], ["city", "text"]]
        assert [c[3] for c in md["columns"]][4:6] == ["java.math.BigDecimal", "java.sql.Date"]
        assert md["base"] == [T, "email"]
        check_jdbc_people([md["row"]], (1,))
        assert md["getColumns"] == [c[:2] for c in md["columns"]]
    elif scenario == "primarykeys":
        assert data["primarykeys"] == "id"


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_raw_refusal_after_an_unmasked_result(solo, protocol):
    pv, rec, finish = solo
    with wire(rec) as w:
        err = error_after_an_unmasked_result(w, protocol, f"SELECT upper(email) FROM {T}")
        assert (err["C"], "email" in err["M"]) == ("42501", True), err
    finish()


# ---------------------------------------------------------------------------- masks for some callers
#
# Tokens need [oidc]; the Recorder cannot read TLS, so this pgveil has
# allow_plaintext_auth = yes and clients connect through the Recorder in
# plaintext: both the decoded values and the recorded bytes are checked.

GROUP_RULES = f"""
MASK public.{T}.ssn  USING partial(0, '***-**-', 4) FOR GROUP agents;
MASK public.{T}.card USING redact() UNLESS GROUP billing;
ALLOW ALL;
"""
SSNS = [r[3] for r in PEOPLE]
CARDS = [r[7] for r in PEOPLE]


@pytest.fixture
def grouped(tables, pgveil_factory, idp, workroot, cluster):
    rules = write_rules(workroot, "maskdrv-groups", GROUP_RULES)
    pv = start_oidc(pgveil_factory, idp, tls=False, allow_plaintext_auth="yes", rules=rules,
                    default_action="block", databases={"app": harness.backend_conninfo(cluster)})
    rec = leakcheck.Recorder("127.0.0.1", pv.port)
    yield pv, rec
    rec.close()


@pytest.mark.parametrize("groups,ssn_masked,card_masked", [
    ("agents", True, True),
    ("billing", False, False),
    ("others", False, True),
    (None, False, True),
    ("agents,billing", True, False),
], ids=["agents", "billing", "neither", "no-groups", "agents+billing"])
def test_masks_by_group(grouped, idp, groups, ssn_masked, card_masked):
    pv, rec = grouped
    token = idp.mint("rsa", "rsa-1", f"agent-{groups or 'none'}", groups=groups)
    rec.take()
    info = conninfo(rec, password=token, user="whoever")
    with psycopg.connect(info, autocommit=True) as conn:
        for binary in (False, True):
            rows = conn.cursor(binary=binary).execute(f"SELECT id, ssn, card, email FROM {T} WHERE id > %s "
                                                      f"ORDER BY id", (0,)).fetchall()
            for (i, ssn, card, email), stored in zip(rows, PEOPLE):
                assert ssn == (MASKED[i][1] if ssn_masked else stored[3])
                assert card == ("****" if card_masked else stored[7])
                assert email == stored[2]  # nobody masks it here
        # a derived use is refused only where the column is masked for this caller
        for col, masked_here in (("ssn", ssn_masked), ("card", card_masked)):
            if masked_here:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT upper({col}) FROM {T}")
            else:
                got = [r[0] for r in conn.execute(f"SELECT upper({col}) FROM {T} ORDER BY id").fetchall()]
                assert got == [v.upper() for v in (SSNS if col == "ssn" else CARDS)]
        assert conn.execute("SELECT 1").fetchone() == (1,)
    hidden = (SSNS if ssn_masked else []) + (CARDS if card_masked else [])
    found = leakcheck.leaks(rec.take(), hidden)
    assert not found, f"values masked for this caller reached it: {found}"
    assert pv.alive()


# ---------------------------------------------------------------------------- the catalog moving under pgveil

LATE = "maskdrv_late"
PARTED = "maskdrv_parted"
LATE_RULES = f"""
MASK public.{LATE}.secret   USING redact();
MASK public.{LATE}2.secret  USING redact();
MASK public.{PARTED}.secret USING partial(1, '###', 1);
MASK public.{T}.email USING email();
ALLOW ALL;
"""
LATE_SECRETS = [f"late-secret-{i:04d}" for i in (1, 2, 3)] + [f"part-secret-{y}-{i}" for y in (2024, 2025, 2026)
                                                              for i in (1, 2)]


@pytest.fixture
def moving(tables, pgveil_factory, cluster, workroot):
    """A pgveil started before the tables it masks exist (and with one partition of PARTED), with its Recorder."""
    admin_exec(cluster, f"DROP TABLE IF EXISTS {LATE}, {LATE}2, {PARTED} CASCADE",
               f"CREATE TABLE {PARTED} (id integer, at date NOT NULL, secret text) PARTITION BY RANGE (at)",
               f"CREATE TABLE {PARTED}_2024 PARTITION OF {PARTED} FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
               f"INSERT INTO {PARTED} VALUES (1, '2024-03-01', 'part-secret-2024-1'), (2, '2024-04-01', "
               f"'part-secret-2024-2')",
               f"ALTER TABLE {PARTED} OWNER TO {harness.APP_USER}",
               f"ALTER TABLE {PARTED}_2024 OWNER TO {harness.APP_USER}")
    pv = start_plain(pgveil_factory, cluster, workroot, "maskdrv-late", LATE_RULES)
    rec = leakcheck.Recorder("127.0.0.1", pv.port)
    yield pv, rec
    rec.close()
    admin_exec(cluster, f"DROP TABLE IF EXISTS {LATE}, {LATE}2, {PARTED} CASCADE")


def start_plain(pgveil_factory, cluster, workroot, name, rules_text):
    """A pgveil of pgveil_factory (no hash() key) with these rules, default_action = block and one database, app."""
    return pgveil_factory(rules=write_rules(workroot, name, rules_text), default_action="block",
                          databases={"app": harness.backend_conninfo(cluster)})


def create_late(cluster, name=LATE):
    admin_exec(cluster, f"CREATE TABLE {name} (id integer PRIMARY KEY, secret text, note text)",
               f"INSERT INTO {name} SELECT i, 'late-secret-' || lpad(i::text, 4, '0'), 'n' || i "
               f"FROM generate_series(1, 3) AS i",
               f"ALTER TABLE {name} OWNER TO {harness.APP_USER}")


def test_table_created_after_start(moving, cluster):
    pv, rec = moving
    with agent(rec) as conn:
        # the catalog is read (and the session has masks) before the table exists
        assert conn.execute(f"SELECT email FROM {T} WHERE id = 1").fetchone() == (MASKED[1][0],)
        create_late(cluster)
        # the next statement names a table pgveil does not know: it reads the catalog again, then masks
        assert conn.execute(f"SELECT id, secret, note FROM {LATE} ORDER BY id").fetchall() == \
            [(i, "****", f"n{i}") for i in (1, 2, 3)]
        assert conn.cursor(binary=True).execute(f"SELECT * FROM {LATE} WHERE id = %s", (2,)).fetchall() == \
            [(2, "****", "n2")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT upper(secret) FROM {LATE}")
    with agent(rec) as conn:
        assert conn.execute(f"SELECT secret FROM {LATE} WHERE id = 3").fetchone() == ("****",)
    leakcheck.assert_no_leak(rec, LATE_SECRETS + SECRETS)
    assert pv.alive()


def test_partition_attached_after_start(moving, cluster):
    pv, rec = moving
    with agent(rec) as conn:
        assert conn.execute(f"SELECT id, secret FROM {PARTED} ORDER BY id").fetchall() == [(1, "p###1"), (2, "p###2")]
        admin_exec(cluster,
                   f"CREATE TABLE {PARTED}_2025 (id integer, at date NOT NULL, secret text)",
                   f"ALTER TABLE {PARTED} ATTACH PARTITION {PARTED}_2025 "
                   f"FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
                   f"CREATE TABLE {PARTED}_2026 PARTITION OF {PARTED} FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
                   f"INSERT INTO {PARTED} VALUES (3, '2025-05-01', 'part-secret-2025-1'), "
                   f"(4, '2025-06-01', 'part-secret-2025-2'), (5, '2026-01-02', 'part-secret-2026-1'), "
                   f"(6, '2026-02-02', 'part-secret-2026-2')",
                   f"ALTER TABLE {PARTED}_2025 OWNER TO {harness.APP_USER}",
                   f"ALTER TABLE {PARTED}_2026 OWNER TO {harness.APP_USER}")
        # through the parent, and each new partition by its own name
        assert conn.execute(f"SELECT id, secret FROM {PARTED} ORDER BY id").fetchall() == \
            [(1, "p###1"), (2, "p###2"), (3, "p###1"), (4, "p###2"), (5, "p###1"), (6, "p###2")]
        assert conn.execute(f"SELECT id, secret FROM {PARTED}_2025 ORDER BY id").fetchall() == \
            [(3, "p###1"), (4, "p###2")]
        assert conn.execute(f"SELECT * FROM {PARTED}_2026 WHERE id > %s ORDER BY id", (0,)).fetchall() == \
            [(5, datetime.date(2026, 1, 2), "p###1"), (6, datetime.date(2026, 2, 2), "p###2")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT upper(secret) FROM {PARTED}_2026")
    leakcheck.assert_no_leak(rec, LATE_SECRETS + SECRETS)
    assert pv.alive()


@pytest.mark.parametrize("what", ["table", "partition"])
def test_derived_use_of_a_relation_created_after_the_catalog_was_read(moving, cluster, what):
    pv, rec = moving
    with agent(rec) as conn:
        assert conn.execute(f"SELECT email FROM {T} WHERE id = 2").fetchone() == (MASKED[2][0],)
        if what == "table":
            create_late(cluster, f"{LATE}2")
            sql = f"SELECT upper(secret) FROM {LATE}2"
        else:
            admin_exec(cluster,
                       f"CREATE TABLE {PARTED}_2025 PARTITION OF {PARTED} FOR VALUES FROM ('2025-01-01') TO "
                       f"('2026-01-01')",
                       f"INSERT INTO {PARTED} VALUES (3, '2025-05-01', 'part-secret-2025-1')",
                       f"ALTER TABLE {PARTED}_2025 OWNER TO {harness.APP_USER}")
            sql = f"SELECT upper(secret) FROM {PARTED}_2025"
        try:
            rows = conn.execute(sql).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            rows = None
        found = leakcheck.leaks(rec.take(), LATE_SECRETS)
        assert not found, f"{sql} gave {rows}: {found}"
        assert rows is None
    assert pv.alive()


# ---------------------------------------------------------------------------- a reload adding a mask

SSN_RULE = f"MASK public.{T}.ssn USING partial(0, '***-**-', 4);\n"


@pytest.fixture(params=["no-masks", "other-masks"])
def reloadable(request, tables, pgveil_factory, cluster, workroot):
    """A pgveil whose rules do not mask T.ssn yet: none at all, or masks on another table only."""
    before = "ALLOW ALL;\n" if request.param == "no-masks" else f"MASK public.{MANY}.email USING email();\nALLOW ALL;\n"
    pv = start_plain(pgveil_factory, cluster, workroot, "maskdrv-reload", before)
    rules = pv.settings["rules"]
    rec = leakcheck.Recorder("127.0.0.1", pv.port)

    def add_rule():
        with open(rules + ".tmp", "w") as f:
            f.write(SSN_RULE + before)
        os.replace(rules + ".tmp", rules)
        mark = pv.log_size()
        pv.reload()
        harness.wait_until(lambda: "configuration reloaded" in pv.log_text(mark), 15, what="the reload")

    yield pv, rec, add_rule
    rec.close()


def ended_by_reload(statement):
    """A session that ran statements before its caller's masks changed ends at its next one (57P01)."""
    with pytest.raises(psycopg.OperationalError) as exc:
        statement()
    assert "masking rules for this caller changed" in str(exc.value)


def test_reload_adds_a_mask_under_an_open_session(reloadable):
    """The open session ends; a new one gets the new mask at once."""
    pv, rec, add_rule = reloadable
    ssn_of = {r[0]: r[3] for r in PEOPLE}
    sql = f"SELECT id, ssn FROM {T} WHERE id > %s ORDER BY id"
    with agent(rec) as conn:
        assert conn.execute(sql, (0,), prepare=True).fetchall() == [(i, ssn_of[i]) for i in (1, 2, 3)]
        assert conn.execute(f"SELECT ssn FROM {T} WHERE id = 1").fetchone() == (ssn_of[1],)
        add_rule()
        rec.take()
        ended_by_reload(lambda: conn.execute(f"SELECT ssn FROM {T} WHERE id = 1").fetchone())
    with agent(rec) as conn:
        assert conn.execute(f"SELECT ssn FROM {T} WHERE id = 1").fetchone() == (MASKED[1][1],)
        for binary in (False, True):
            assert conn.cursor(binary=binary).execute(sql, (0,), prepare=True).fetchall() == \
                [(i, MASKED[i][1]) for i in (1, 2, 3)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT upper(ssn) FROM {T}")
    leakcheck.assert_no_leak(rec, SSNS)
    assert pv.alive()


@pytest.mark.parametrize("how", ["protocol", "sql"])
def test_reload_statement_prepared_before(reloadable, how):
    """A derived use prepared before the caller's masks changed never runs after: the session ends."""
    pv, rec, add_rule = reloadable
    derived = f"SELECT id, upper(ssn) FROM {T} WHERE id = %s"
    with agent(rec) as conn:
        if how == "protocol":
            run = lambda: conn.execute(derived, (1,), prepare=True).fetchall()  # noqa: E731
        else:
            conn.execute(f"PREPARE before_reload (int) AS {derived.replace('%s', '$1')}")
            run = lambda: conn.execute("EXECUTE before_reload (1)").fetchall()  # noqa: E731
        assert run() == [(1, PEOPLE[0][3].upper())]
        add_rule()
        rec.take()
        ended_by_reload(run)
    leakcheck.assert_no_leak(rec, SSNS)
    assert pv.alive()


@pytest.mark.parametrize("query", ["SELECT id, ssn", "SELECT id, upper(ssn)"])
def test_reload_cursor_declared_before(reloadable, query):
    """A cursor declared before the caller's masks changed is never fetched after: the session ends."""
    pv, rec, add_rule = reloadable
    with psycopg.connect(conninfo(rec)) as conn:
        conn.execute(f"DECLARE c CURSOR FOR {query} FROM {T} ORDER BY id")
        assert conn.execute("FETCH 1 FROM c").fetchone()[0] == 1
        add_rule()
        rec.take()
        ended_by_reload(lambda: conn.execute("FETCH 2 FROM c").fetchall())
    leakcheck.assert_no_leak(rec, SSNS)
    assert pv.alive()


def test_sql_prepared_statement_checked_again_at_execute(tables, pgveil_factory, cluster, workroot):
    """EXECUTE checks the body again: a view it reads may have changed since PREPARE."""
    pv = start_plain(pgveil_factory, cluster, workroot, "maskdrv-exec", SSN_RULE + "ALLOW ALL;\n")
    view = f"maskdrv_exec_{uuid.uuid4().hex[:6]}"
    admin = psycopg.connect(cluster.admin_conninfo("app"), autocommit=True)
    try:
        admin.execute(f"CREATE VIEW {view} AS SELECT id, city::varchar(11) AS label FROM {T}")
        admin.execute(f"GRANT SELECT ON {view} TO {harness.APP_USER}")
        with psycopg.connect(harness.pgveil_target(pv).conninfo(), autocommit=True) as conn:
            conn.execute(f"PREPARE pv AS SELECT id, upper(label) FROM {view} ORDER BY id")
            assert len(conn.execute("EXECUTE pv").fetchall()) == 3
            admin.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT id, ssn AS label FROM {T}")
            mark = pv.log_size()
            pv.reload()  # the catalog is read again; the caller's masks are the same
            harness.wait_until(lambda: "configuration reloaded" in pv.log_text(mark), 15, what="the reload")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("EXECUTE pv").fetchall()
    finally:
        admin.execute(f"DROP VIEW IF EXISTS {view}")
        admin.close()
