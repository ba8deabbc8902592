"""psycopg 3 (libpq underneath) directly and through pgveil: the common paths
of a Python application must behave the same either way."""

import datetime
import decimal
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import errors, sql

import harness


def connect(target, **kw):
    kw.setdefault("autocommit", True)
    return psycopg.connect(target.conninfo(), **kw)


@pytest.fixture
def scratch_table(admin):
    """A fresh table owned by app_agent, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, note text)")
    admin.execute(f"ALTER TABLE {name} OWNER TO {harness.APP_USER}")
    yield name
    admin.execute(f"DROP TABLE IF EXISTS {name}")


def test_connect_and_simple_query(target):
    with connect(target) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_user, session_user").fetchone() == \
            (harness.APP_USER, harness.APP_USER)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (100,)
        assert conn.execute("SELECT count(*), sum(amount) FROM orders").fetchone()[0] == 1000
        # several statements in one simple query: one result each
        cur = conn.execute("SELECT 1; SELECT 2, 'two'")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        assert cur.fetchall() == [(2, "two")]
        assert not cur.nextset()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_parameterized_and_prepared(target):
    with connect(target) as conn:
        cur = conn.cursor()
        cur.execute("SELECT name, email FROM users WHERE id = %s", (7,))
        assert cur.fetchone() == ("Zoë Müller", "user7@example.com")
        cur.execute("SELECT %s::int + %s::int, %s::text, %s::numeric", (20, 22, "x'y", decimal.Decimal("1.5")))
        assert cur.fetchone() == (42, "x'y", decimal.Decimal("1.5"))
        # force a named server-side prepared statement, used several times
        for i in (1, 2, 3):
            cur.execute("SELECT id, active FROM users WHERE id = %s", (i,), prepare=True)
            assert cur.fetchone() == (i, i % 2 == 0)
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements "
                                "WHERE statement LIKE 'SELECT id, active FROM users%'").fetchone()[0]
        assert prepared == 1
        # NULL parameters and results
        cur.execute("SELECT %s::text IS NULL, NULL::int", (None,))
        assert cur.fetchone() == (True, None)


def test_executemany_and_rowcount(target, scratch_table):
    with connect(target) as conn:
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {scratch_table} VALUES (%s, %s)", [(i, f"n{i}") for i in range(50)])
        cur.execute(f"UPDATE {scratch_table} SET note = note || '!' WHERE id < 10")
        assert cur.rowcount == 10
        assert conn.execute(f"SELECT count(*) FROM {scratch_table}").fetchone() == (50,)


def test_transactions_commit_and_rollback_visible(target, scratch_table):
    with connect(target, autocommit=False) as writer, connect(target) as reader:
        count = f"SELECT count(*) FROM {scratch_table}"
        writer.execute(f"INSERT INTO {scratch_table} VALUES (1, 'committed')")
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert reader.execute(count).fetchone() == (0,)
        writer.commit()
        assert reader.execute(count).fetchone() == (1,)

        writer.execute(f"INSERT INTO {scratch_table} VALUES (2, 'rolled back')")
        assert writer.execute(count).fetchone() == (2,)
        writer.rollback()
        assert reader.execute(count).fetchone() == (1,)
        assert writer.execute(count).fetchone() == (1,)
        writer.rollback()

        # savepoints inside a transaction
        with writer.transaction():
            writer.execute(f"INSERT INTO {scratch_table} VALUES (3, 'kept')")
            with pytest.raises(errors.UniqueViolation):
                with writer.transaction():
                    writer.execute(f"INSERT INTO {scratch_table} VALUES (3, 'duplicate')")
        assert reader.execute(f"SELECT note FROM {scratch_table} ORDER BY id").fetchall() == \
            [("committed",), ("kept",)]


def test_errors_keep_session_usable(target, scratch_table):
    with connect(target) as conn:
        with pytest.raises(errors.DivisionByZero) as ei:
            conn.execute("SELECT 1/0")
        assert ei.value.sqlstate == "22012"
        assert ei.value.diag.severity == "ERROR"
        assert conn.execute("SELECT 2").fetchone() == (2,)

        with pytest.raises(errors.UndefinedTable) as ei:
            conn.execute("SELECT * FROM no_such_table")
        assert ei.value.sqlstate == "42P01"
        assert ei.value.diag.statement_position == "15"

        conn.execute(f"INSERT INTO {scratch_table} VALUES (1, 'a')")
        with pytest.raises(errors.UniqueViolation) as ei:
            conn.execute(f"INSERT INTO {scratch_table} VALUES (%s, %s)", (1, "b"))
        assert ei.value.diag.constraint_name == f"{scratch_table}_pkey"
        assert ei.value.diag.table_name == scratch_table

        # inside a transaction: aborted until rolled back, then usable
        conn.autocommit = False
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)
        conn.rollback()

        # a notice arrives as a notice, not an error
        notices = []
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        assert ("NOTICE", "hello 42") in notices


def test_copy_in_and_out(target, scratch_table):
    rows = [(i, f"line {i}\twith tab" if i % 5 == 0 else f"line {i}") for i in range(1, 2001)]
    with connect(target) as conn:
        cur = conn.cursor()
        with cur.copy(f"COPY {scratch_table} (id, note) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        assert cur.rowcount == 2000
        with cur.copy(f"COPY (SELECT id, note FROM {scratch_table} ORDER BY id) TO STDOUT") as copy:
            got = [(int(i), n) for i, n in copy.rows()]
        assert got == rows
        # raw CSV out
        with cur.copy(f"COPY (SELECT id FROM {scratch_table} WHERE id <= 3 ORDER BY id) TO STDOUT "
                      "WITH (FORMAT csv, HEADER)") as copy:
            data = b"".join(bytes(b) for b in copy)
        assert data == b"id\n1\n2\n3\n"
        # binary COPY both ways
        conn.execute(f"TRUNCATE {scratch_table}")
        with cur.copy(f"COPY {scratch_table} FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(["int4", "text"])
            for r in rows[:100]:
                copy.write_row(r)
        with cur.copy(f"COPY {scratch_table} TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text"])
            got = sorted(copy.rows())
        assert got == rows[:100]
        # an error inside COPY FROM fails the command and leaves the session usable
        with pytest.raises(errors.InvalidTextRepresentation):
            with cur.copy(f"COPY {scratch_table} FROM STDIN") as copy:
                copy.write(b"1\tok\nnot-a-number\tbad\n")
        assert conn.execute(f"SELECT count(*) FROM {scratch_table}").fetchone() == (100,)


def test_listen_notify_between_connections(target):
    channel = "ch_" + uuid.uuid4().hex[:8]
    with connect(target) as listener, connect(target) as notifier:
        got = []
        listener.add_notify_handler(lambda n: got.append((n.channel, n.payload)))
        listener.execute(f"LISTEN {channel}")
        notifier.execute(f"NOTIFY {channel}, 'first'")
        notifier.execute("SELECT pg_notify(%s, %s)", (channel, "second é"))

        def both_arrived():
            listener.execute("SELECT 1")  # notifications are read along with results
            return len(got) >= 2

        harness.wait_until(both_arrived, 10, interval=0.1, what="notifications")
        assert got == [(channel, "first"), (channel, "second é")]

        # the generator API, blocking on the socket while idle
        def send_later():
            time.sleep(0.3)
            notifier.execute(f"NOTIFY {channel}, 'third'")

        t = threading.Thread(target=send_later)
        t.start()
        for n in listener.notifies():
            assert (n.channel, n.payload) == (channel, "third")
            break
        t.join()


def _wait_for_running(admin, app_name, query_fragment):
    def running():
        return admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
            "AND query LIKE %s", (app_name, f"%{query_fragment}%")).fetchone()
    return harness.wait_until(running, 15, what="query to run on the server")[0]


def test_cancel_running_query(target, admin):
    app = "itest-cancel-" + uuid.uuid4().hex[:8]
    with connect(target, application_name=app) as conn:
        result = {}

        def run():
            t0 = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(30)")
                result["outcome"] = "finished"
            except psycopg.Error as e:
                result["outcome"] = e
            result["elapsed"] = time.monotonic() - t0

        th = threading.Thread(target=run)
        th.start()
        _wait_for_running(admin, app, "pg_sleep(30)")
        conn.cancel()
        th.join(timeout=25)
        assert not th.is_alive(), "the cancelled query did not return"
        assert isinstance(result["outcome"], errors.QueryCanceled), result
        assert result["outcome"].sqlstate == "57014"
        assert result["elapsed"] < 25
        assert harness.retry_stray_cancel(lambda: conn.execute("SELECT 'still usable'").fetchone(),
                                          lambda e: isinstance(e, errors.QueryCanceled)) == ("still usable",)


def test_binary_results(target):
    cols = "id, name, born, created_at, balance, active, tags, profile, photo, uid"
    with connect(target) as conn:
        text_rows = conn.cursor().execute(f"SELECT {cols} FROM users ORDER BY id").fetchall()
        bcur = conn.cursor(binary=True)
        bin_rows = bcur.execute(f"SELECT {cols} FROM users ORDER BY id").fetchall()
        assert all(bcur.pgresult.fformat(i) == 1 for i in range(bcur.pgresult.nfields))
        assert bin_rows == text_rows
        r = bin_rows[6]
        assert r[0] == 7 and r[1] == "Zoë Müller"
        assert r[2] == datetime.date(1980, 1, 1) + datetime.timedelta(days=7 * 37)
        assert r[3] == datetime.datetime(2024, 1, 1, 7, tzinfo=datetime.timezone.utc)
        assert r[4] == decimal.Decimal("71.75")
        assert r[6] == ["t7", "common"]
        assert r[7] == {"n": 7, "tier": "basic"}
        assert r[8] == bytes.fromhex("00000007")
        # binary parameters too
        bcur.execute("SELECT %b::bytea, %b::int8", (b"\x00\xff", 2 ** 40))
        assert bcur.fetchone() == (b"\x00\xff", 2 ** 40)


def test_large_result_streamed(target):
    """100 MB: 100k rows of 1000 bytes, streamed row by row and counted."""
    n, width = 100_000, 1000
    with connect(target) as conn:
        count = total = 0
        for (i, s) in conn.cursor().stream(
                "SELECT i, repeat(chr(65 + i %% 26), %s) FROM generate_series(1, %s) AS i", (width, n)):
            count += 1
            total += len(s)
            if i == n:
                assert s == chr(65 + n % 26) * width
        assert (count, total) == (n, n * width)
        # a server-side cursor over the 1M-row table, in batches
        with conn.transaction():
            cur = conn.cursor(name="bigcur")
            cur.itersize = 20000
            cur.execute("SELECT id, payload FROM big")
            seen = ids = 0
            for (i, p) in cur:
                seen += 1
                ids += i
                assert len(p) == 96
            cur.close()
        assert seen == harness.BIG_ROWS
        assert ids == harness.BIG_ROWS * (harness.BIG_ROWS + 1) // 2


def test_pipeline(target, scratch_table):
    with connect(target) as conn:
        with conn.pipeline() as p:
            cur = conn.cursor()
            conn.execute(f"INSERT INTO {scratch_table} VALUES (%s, %s)", (1, "one"))
            conn.execute(f"INSERT INTO {scratch_table} VALUES (%s, %s)", (2, "two"))
            c1 = conn.execute("SELECT %s::int * 2", (21,))
            c2 = conn.execute(f"SELECT note FROM {scratch_table} ORDER BY id")
            cur.executemany(f"INSERT INTO {scratch_table} VALUES (%s, %s)", [(i, "m") for i in range(3, 100)])
            p.sync()
            assert c1.fetchone() == (42,)
            assert c2.fetchall() == [("one",), ("two",)]
        assert conn.execute(f"SELECT count(*) FROM {scratch_table}").fetchone() == (99,)
        # an error inside a pipeline aborts the rest of that batch only
        with pytest.raises(errors.UniqueViolation):
            with conn.pipeline():
                conn.execute(f"INSERT INTO {scratch_table} VALUES (1, 'dup')")
                conn.execute(f"INSERT INTO {scratch_table} VALUES (500, 'after error')")
        assert conn.execute(f"SELECT count(*) FROM {scratch_table} WHERE id = 500").fetchone() == (0,)
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)


def test_parameter_status(target):
    with connect(target) as conn:
        info = conn.info
        assert info.parameter_status("server_version").startswith("15")
        assert info.server_version // 10000 == 15
        assert info.parameter_status("integer_datetimes") == "on"
        assert info.parameter_status("standard_conforming_strings") == "on"
        assert info.parameter_status("server_encoding") == "UTF8"
        assert info.parameter_status("client_encoding") == "UTF8"
        assert info.parameter_status("is_superuser") == "off"
        assert info.parameter_status("session_authorization") == harness.APP_USER
        conn.execute("SET application_name = 'renamed-by-set'")
        assert info.parameter_status("application_name") == "renamed-by-set"
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert conn.execute("SELECT timestamptz '2024-01-01 00:00+00'").fetchone()[0].utcoffset() == \
            datetime.timedelta(hours=9)


def test_startup_settings_passed_through(target, admin):
    app = "itest-psycopg-" + uuid.uuid4().hex[:8]
    with psycopg.connect(target.conninfo(application_name=app, client_encoding="LATIN1",
                                         options="-c DateStyle=SQL,DMY -c search_path=pg_catalog,public"),
                         autocommit=True) as conn:
        assert conn.info.parameter_status("client_encoding") == "LATIN1"
        assert conn.info.encoding == "iso8859-1"
        assert conn.info.parameter_status("DateStyle") == "SQL, DMY"
        assert conn.info.parameter_status("application_name") == app
        assert conn.execute("SHOW DateStyle").fetchone() == ("SQL, DMY",)
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,public",)
        assert conn.execute("SELECT to_char(date '2024-03-05', 'DD/MM')").fetchone() == ("05/03",)
        assert conn.execute("SELECT date '2024-03-05'::text").fetchone() == ("05/03/2024",)
        # the server converts to LATIN1: the non-ASCII name survives the round trip
        assert conn.execute("SELECT name FROM users WHERE id = 7").fetchone() == ("Zoë Müller",)
        assert conn.execute("SELECT octet_length(convert_to(%s, 'UTF8'))", ("é",)).fetchone() == (2,)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        row = admin.execute("SELECT application_name, usename, datname FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone()
        assert row is not None
        assert app in row[0]
        assert row[1:] == (harness.APP_USER, "app")


def test_client_user_never_reaches_server(proxy, admin):
    app = "itest-user-" + uuid.uuid4().hex[:8]
    with connect(proxy, application_name=app) as conn:
        assert conn.info.user == harness.PROXY_USER  # what the client asked for
        assert conn.execute("SELECT current_user, session_user").fetchone() == \
            (harness.APP_USER, harness.APP_USER)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert admin.execute("SELECT usename FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() == \
            (harness.APP_USER,)
        assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                             (harness.PROXY_USER,)).fetchone() == (0,)
        assert admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s",
                             (harness.PROXY_USER,)).fetchone() == (0,)


def test_unknown_database(target):
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(target.conninfo(dbname="no_such_db"))
    assert "no_such_db" in str(ei.value)
    # libpq does not surface the SQLSTATE of a failed connection; the raw
    # protocol test checks 3D000 (test_protocol.py).


def test_many_sequential_connections(target):
    for i in range(30):
        with connect(target) as conn:
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)


def test_concurrent_sessions(target):
    errors_seen = []

    def worker(k):
        try:
            with connect(target) as conn:
                for j in range(20):
                    v = conn.execute("SELECT %s::int * %s::int, pg_sleep(0.005)", (k, j)).fetchone()[0]
                    assert v == k * j
        except Exception as e:  # noqa: BLE001 - reported below
            errors_seen.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors_seen


def test_identifier_quoting_and_unicode(target, scratch_table):
    with connect(target) as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(sql.Identifier(scratch_table)),
                     ("emoji 🐘 and NUL-free \u00a0 text",))
        assert conn.execute(f"SELECT note FROM {scratch_table}").fetchone() == ("emoji 🐘 and NUL-free \u00a0 text",)
