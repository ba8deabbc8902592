"""Column masking: what agents receive of masked columns, through every driver.

A table of people with sensitive columns is masked by MASK_RULES. Clients
connect through a Recorder (leakcheck.py) that keeps every byte pgveil sends
them; each test checks the values the driver decoded *and* searches the
recorded bytes for every sensitive value in any form (raw, hex, base64,
digests). A statement that would reveal a masked value must be refused or
masked; which one is checked too, but the bytes decide.
"""

import asyncio
import subprocess

import asyncpg
import psycopg
import pytest

import harness
import leakcheck
from masking import (PEOPLE_MASKED as MASKED, PEOPLE_SECRETS, agent, conninfo, copy_out, create_people,
                     people_masks, refused, start_masked, stop_masked)

TABLE = "mask_people"

MASK_RULES = people_masks(TABLE) + f"""MASK public.{TABLE}_typed.code USING email();
ALLOW ALL;
"""


@pytest.fixture(scope="module")
def people(cluster):
    conn = psycopg.connect(cluster.admin_conninfo("app"), autocommit=True)
    conn.execute(f"DROP TABLE IF EXISTS {TABLE} CASCADE")
    create_people(conn, TABLE)
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}_typed")
    conn.execute(f"CREATE TABLE {TABLE}_typed (id integer, code integer)")
    conn.execute(f"INSERT INTO {TABLE}_typed VALUES (1, 424242)")
    conn.execute(f"GRANT ALL ON {TABLE}_typed TO {harness.APP_USER}")
    yield TABLE
    conn.execute(f"DROP TABLE IF EXISTS {TABLE} CASCADE")
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}_typed")
    conn.close()


@pytest.fixture(scope="module")
def masked(people, workroot, pgveil_bin, cluster, certs):
    """A pgveil with MASK_RULES and a hash() key, and a Recorder in front of it."""
    pv, rec = start_masked(pgveil_bin, cluster, certs, workroot, MASK_RULES, "mask")
    yield pv, rec
    stop_masked(pv, rec)


def assert_no_leak(rec):
    leakcheck.assert_no_leak(rec, PEOPLE_SECRETS)


# ---------------------------------------------------------------------------- psql


def test_psql_select_star(masked):
    pv, rec = masked
    rec.take()
    res = subprocess.run(["psql", "-X", "-At", "-F", "|", "-d", conninfo(rec), "-c",
                          f"SELECT id, email, ssn, salary, born, card, note, length(name) FROM {TABLE} "
                          f"WHERE id IN (1, 2, 3) ORDER BY id"],
                         capture_output=True, text=True, timeout=60, env=harness.clean_env())
    # length(name) is a derived use: refused, naming the column
    assert res.returncode != 0
    assert "name" in res.stderr and "masked" in res.stderr
    assert_no_leak(rec)
    res = subprocess.run(["psql", "-X", "-At", "-F", "|", "-d", conninfo(rec), "-c",
                          f"SELECT * FROM {TABLE} ORDER BY id"],
                         capture_output=True, text=True, timeout=60, env=harness.clean_env())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().split("\n")
    assert len(lines) == 3
    for line in lines:
        f = line.split("|")
        i = int(f[0])
        email, ssn, salary, born, card, note = MASKED[i]
        assert f[2] == email and f[3] == ssn and f[5] == born and f[6] == card and f[7] == ""
        assert float(f[4]) == float(salary)
        assert len(f[1]) == 16 and all(c in "0123456789abcdef" for c in f[1])
    assert_no_leak(rec)


# ---------------------------------------------------------------------------- psycopg


def check_rows(rows):
    assert [r[0] for r in rows] == [1, 2, 3]
    for r in rows:
        email, ssn, salary, born, card, note = MASKED[r[0]]
        assert r[2] == email
        assert r[3] == ssn
        assert float(r[4]) == float(salary)
        assert str(r[5]) == born
        assert r[6] == card
        assert r[7] is None
        assert len(r[1]) == 16


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("prepare", [False, True])
def test_psycopg_select(masked, binary, prepare):
    pv, rec = masked
    rec.take()
    with agent(rec) as conn:
        for _ in range(3):  # prepared: Parse once, then Bind/Execute without Describe
            cur = conn.cursor(binary=binary)
            rows = cur.execute(f"SELECT id, name, email, ssn, salary, born, card, note FROM {TABLE} "
                               f"WHERE id > %s ORDER BY id", (0,), prepare=prepare).fetchall()
            check_rows(rows)
    assert_no_leak(rec)


def test_psycopg_server_cursor(masked):
    pv, rec = masked
    rec.take()
    with psycopg.connect(conninfo(rec)) as conn:
        with conn.cursor(name="c1") as cur:
            cur.itersize = 1
            cur.execute(f"SELECT id, name, email, ssn, salary, born, card, note FROM {TABLE} ORDER BY id")
            rows = [cur.fetchone() for _ in range(3)]
        check_rows(rows)
        conn.rollback()
    assert_no_leak(rec)


def test_views(masked):
    pv, rec = masked
    rec.take()
    with agent(rec) as conn:
        rows = conn.execute(f"SELECT id, email, ssn FROM {TABLE}_plain ORDER BY id").fetchall()
        assert [(r[1], r[2]) for r in rows] == [(MASKED[i][0], MASKED[i][1]) for i in (1, 2, 3)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(f"SELECT shout FROM {TABLE}_upper")
        assert "email" in str(exc.value)
    assert_no_leak(rec)


# ---------------------------------------------------------------------------- asyncpg (binary)


def test_asyncpg(masked):
    pv, rec = masked
    rec.take()

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=rec.port, user=harness.PROXY_USER, password="unused",
                                     database="app", ssl=False)
        try:
            stmt = await conn.prepare(f"SELECT id, name, email, ssn, salary, born, card, note FROM {TABLE} "
                                      f"WHERE id > $1 ORDER BY id")
            for _ in range(3):
                check_rows([tuple(r) for r in await stmt.fetch(0)])
            async with conn.transaction():
                got = [tuple(r) async for r in conn.cursor(
                    f"SELECT id, name, email, ssn, salary, born, card, note FROM {TABLE} ORDER BY id", prefetch=1)]
            check_rows(got)
        finally:
            await conn.close()

    asyncio.run(main())
    assert_no_leak(rec)


# ---------------------------------------------------------------------------- bypass corpus

T = TABLE
# Statements that must be refused for this caller (each would otherwise reveal a masked value).
REFUSED = [
    f"SELECT upper(email) FROM {T}",
    f"SELECT email || '' FROM {T}",
    f"SELECT email::bytea FROM {T}",
    f"SELECT CAST(email AS bytea) FROM {T}",
    f"SELECT md5(email) FROM {T}",
    f"SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM {T}",
    f"SELECT encode(convert_to(email, 'UTF8'), 'hex') FROM {T}",
    f"SELECT left(email, 40) FROM {T}",
    f"SELECT substr(ssn, 1, 3) FROM {T}",
    f"SELECT length(name) FROM {T}",
    f"SELECT format('%s', email) FROM {T}",
    f"SELECT concat(email) FROM {T}",
    f"SELECT string_agg(email, ',') FROM {T}",
    f"SELECT array_agg(ssn) FROM {T}",
    f"SELECT json_agg(p) FROM {T} p",
    f"SELECT row_to_json(p) FROM {T} p",
    f"SELECT to_jsonb(p) FROM {T} p",
    f"SELECT p::text FROM {T} p",
    f"SELECT ROW(p.*)::text FROM {T} p",
    f"SELECT jsonb_build_object('e', email) FROM {T}",
    f"SELECT (SELECT upper(email) FROM {T} LIMIT 1)",
    f"WITH c AS (SELECT lower(email) AS e FROM {T}) SELECT e FROM c",
    f"SELECT email FROM {T} UNION SELECT 'x'",
    f"SELECT x FROM {T} p, LATERAL (SELECT p.email || '!' AS x) l",
    f"SELECT unnest(ARRAY[email]) FROM {T}",
    f"SELECT regexp_split_to_table(email, '@') FROM {T}",
    f"SELECT id FROM {T} WHERE email LIKE 'a%'",
    f"SELECT id FROM {T} ORDER BY ssn",
    f"SELECT count(*) FROM {T} GROUP BY email",
    f"SELECT id, CASE WHEN salary > 100000 THEN 1 END FROM {T}",
    f"SELECT salary + 0 FROM {T}",
    f"SELECT born + 1 FROM {T}",
    f"SELECT date_part('day', born) FROM {T}",
    f"SELECT query_to_xml('SELECT email FROM {T}', true, true, '')",
    f"SELECT table_to_xml('{T}', true, true, '')",
    f"SELECT * FROM pg_stats WHERE tablename = '{T}'",
    f"SELECT set_config('pgveil.x', (SELECT email FROM {T} LIMIT 1), false)",
    f"SELECT pg_notify('ch', email) FROM {T}",
    f"DO $$BEGIN RAISE NOTICE '%', (SELECT email FROM {T} LIMIT 1); END$$",
    f"CREATE TEMP TABLE leak AS SELECT email FROM {T}",
    f"SELECT email INTO TEMP leak2 FROM {T}",
    f"SELECT shout FROM {T}_upper",
    f"SELECT lo_from_bytea(0, convert_to((SELECT email FROM {T} LIMIT 1), 'UTF8'))",
    f"ALTER TABLE {T} RENAME COLUMN email TO mail",
    f"COPY (SELECT email FROM {T}) TO STDOUT WITH (FORMAT binary)",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_bypass_refused(masked, sql):
    pv, rec = masked
    rec.take()
    with agent(rec) as conn:
        refused(conn, sql)
    assert_no_leak(rec)


def test_errors_scrubbed(masked):
    """A server error about a row of a masked table must not echo its values."""
    pv, rec = masked
    rec.take()
    with agent(rec) as conn:
        with pytest.raises(psycopg.errors.CheckViolation) as exc:
            conn.execute(f"UPDATE {TABLE} SET salary = -1 WHERE id = 1")
        assert "Failing row" not in str(exc.value.diag.message_detail or "")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # moves a masked value: refused
            conn.execute(f"UPDATE {TABLE} SET email = (SELECT email FROM {TABLE} WHERE id = 2) WHERE id = 1")
    assert_no_leak(rec)


@pytest.mark.parametrize("options", ["", "WITH (FORMAT csv, HEADER)", "WITH (FORMAT csv, DELIMITER '|', NULL 'nil')",
                                     "WITH (DELIMITER ';')"])
def test_copy_out(masked, options):
    pv, rec = masked
    rec.take()
    with agent(rec) as conn:
        text = copy_out(conn, f"COPY (SELECT id, email, ssn, card, note FROM {TABLE} ORDER BY id) TO STDOUT {options}"
                        ).decode()
        for i in (1, 2, 3):
            email, ssn, salary, born, card, note = MASKED[i]
            assert email in text and ssn in text
        assert MASKED[1][0] in copy_out(conn, f"COPY {TABLE} TO STDOUT {options}").decode()
    assert_no_leak(rec)


def test_leakcheck_sees_unmasked_values(masked, cluster):
    """The checker itself: straight from PostgreSQL, the same query leaks every value."""
    rec = leakcheck.Recorder("127.0.0.1", cluster.port)
    try:
        direct = harness.Target("direct", "127.0.0.1", rec.port, harness.APP_USER, harness.APP_PASSWORD)
        with psycopg.connect(direct.conninfo(sslmode="disable"), autocommit=True) as conn:
            conn.execute(f"SELECT md5(email), encode(convert_to(ssn, 'UTF8'), 'base64'), * FROM {TABLE}").fetchall()
        found = {s for s, _ in leakcheck.leaks(rec.take(), PEOPLE_SECRETS)}
        assert found == set(PEOPLE_SECRETS)
    finally:
        rec.close()


def test_pipeline_rebinds_the_unnamed_portal(masked):
    """Several Bind/Execute of the unnamed portal before one Sync: each Execute's rows follow its own Bind."""
    pv, rec = masked
    rec.take()
    with agent(rec) as conn:
        with conn.pipeline():
            curs = []
            for i in (1, 2, 3, 1, 2):
                cur = conn.cursor(binary=i == 2)
                cur.execute(f"SELECT id, email, ssn FROM {TABLE} WHERE id = %s", (i,))
                curs.append((i, cur))
        for i, cur in curs:
            assert cur.fetchall() == [(i, MASKED[i][0], MASKED[i][1])]
    assert_no_leak(rec)


def test_mask_that_cannot_apply_sends_null_and_says_why(masked):
    """email() cannot mask an integer: the column comes back NULL, with a warning naming the rule."""
    pv, rec = masked
    rec.take()
    notices = []
    with agent(rec) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        for binary in (False, True):
            assert conn.cursor(binary=binary).execute(f"SELECT id, code FROM {TABLE}_typed").fetchall() == [(1, None)]
    assert any("column 2 (\"code\")" in n and "email() cannot mask" in n for n in notices), notices
    data = rec.take()
    assert b"424242" not in data


def test_column_added_after_the_catalog_was_read(masked, cluster):
    """A column the DBA adds later is looked up in a fresh catalog: its values pass, masked ones stay masked."""
    pv, rec = masked
    conn = psycopg.connect(cluster.admin_conninfo("app"), autocommit=True)
    try:
        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN nickname text")
        conn.execute(f"UPDATE {TABLE} SET nickname = 'nick-' || id")
        rec.take()
        notices = []
        with psycopg.connect(conninfo(rec), autocommit=True) as agent:
            agent.add_notice_handler(lambda d: notices.append(d.message_primary))
            rows = agent.execute(f"SELECT id, nickname, email FROM {TABLE} ORDER BY id").fetchall()
        assert rows == [(i, f"nick-{i}", MASKED[i][0]) for i in (1, 2, 3)]
        assert not notices, notices
        assert_no_leak(rec)
    finally:
        conn.execute(f"ALTER TABLE {TABLE} DROP COLUMN IF EXISTS nickname")
        conn.close()
