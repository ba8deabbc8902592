"""asyncpg (its own protocol implementation, extended protocol, binary
format for everything) directly and through pgveil."""

import asyncio
import datetime
import decimal
import io
import uuid

import asyncpg
import pytest

import harness


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(target, **kw):
    kw.setdefault("ssl", False)
    return await asyncpg.connect(host=target.host, port=target.port, user=target.user,
                                 password=target.password, database=target.dbname, timeout=10, **kw)


@pytest.fixture
def scratch_table(admin):
    name = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, note text, amount numeric)")
    admin.execute(f"ALTER TABLE {name} OWNER TO {harness.APP_USER}")
    yield name
    admin.execute(f"DROP TABLE IF EXISTS {name}")


def test_connect_queries_prepared(target):
    async def main():
        conn = await connect(target)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            assert await conn.fetchval("SELECT current_user") == harness.APP_USER
            row = await conn.fetchrow("SELECT name, email FROM users WHERE id = $1", 7)
            assert tuple(row) == ("Zoë Müller", "user7@example.com")
            stmt = await conn.prepare("SELECT id, balance FROM users WHERE id = ANY($1::int[]) ORDER BY id")
            assert [tuple(r) for r in await stmt.fetch([1, 2, 3])] == \
                [(1, decimal.Decimal("10.25")), (2, decimal.Decimal("20.50")), (3, decimal.Decimal("30.75"))]
            assert [a.name for a in stmt.get_attributes()] == ["id", "balance"]
            assert [p.name for p in stmt.get_parameters()] == ["int4[]"]
            # the same prepared statement, many times
            for i in range(1, 20):
                assert (await stmt.fetch([i]))[0]["id"] == i
            # simple-protocol multi-statement script
            await conn.execute("SELECT 1; SELECT 2; SET search_path = public")
            assert await conn.fetchval("SHOW search_path") == "public"
        finally:
            await conn.close()
    run(main())


def test_binary_types_roundtrip(target):
    async def main():
        conn = await connect(target)
        try:
            r = await conn.fetchrow("SELECT id, name, born, created_at, balance, active, tags, profile, photo, uid "
                                    "FROM users WHERE id = 7")
            assert r["id"] == 7 and r["name"] == "Zoë Müller"
            assert r["born"] == datetime.date(1980, 1, 1) + datetime.timedelta(days=7 * 37)
            assert r["created_at"] == datetime.datetime(2024, 1, 1, 7, tzinfo=datetime.timezone.utc)
            assert r["balance"] == decimal.Decimal("71.75")
            assert r["active"] is False
            assert r["tags"] == ["t7", "common"]
            assert r["profile"] == '{"n": 7, "tier": "basic"}'
            assert r["photo"] == bytes.fromhex("00000007")
            assert r["uid"] == uuid.UUID(harness_md5(7))
            vals = (2 ** 62, 3.5, b"\x00\x01\xff", [1, None, 3], datetime.timedelta(days=2, seconds=5),
                    decimal.Decimal("-1234567890.0123456789"))
            got = await conn.fetchrow("SELECT $1::int8, $2::float8, $3::bytea, $4::int4[], $5::interval, "
                                      "$6::numeric", *vals)
            assert tuple(got) == vals
        finally:
            await conn.close()
    run(main())


def harness_md5(i):
    import hashlib
    return hashlib.md5(str(i).encode()).hexdigest()


def test_transactions(target, scratch_table):
    async def main():
        w = await connect(target)
        r = await connect(target)
        try:
            count = f"SELECT count(*) FROM {scratch_table}"
            tr = w.transaction()
            await tr.start()
            await w.execute(f"INSERT INTO {scratch_table} VALUES (1, 'a', 1)")
            assert await r.fetchval(count) == 0
            await tr.commit()
            assert await r.fetchval(count) == 1
            with pytest.raises(RuntimeError):
                async with w.transaction():
                    await w.execute(f"INSERT INTO {scratch_table} VALUES (2, 'b', 2)")
                    assert await w.fetchval(count) == 2
                    raise RuntimeError("roll back")
            assert await r.fetchval(count) == 1
            assert not w.is_in_transaction()
        finally:
            await w.close()
            await r.close()
    run(main())


def test_errors(target, scratch_table):
    async def main():
        conn = await connect(target)
        try:
            with pytest.raises(asyncpg.DivisionByZeroError) as ei:
                await conn.fetchval("SELECT 1/0")
            assert ei.value.sqlstate == "22012"
            assert await conn.fetchval("SELECT 2") == 2
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("SELECT $1::int / 0", 5)  # extended protocol
            assert await conn.fetchval("SELECT $1::int", 3) == 3
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.prepare("SELECT * FROM missing_table")
            await conn.execute(f"INSERT INTO {scratch_table} VALUES (1, 'x', 0)")
            with pytest.raises(asyncpg.UniqueViolationError) as ei:
                await conn.execute(f"INSERT INTO {scratch_table} VALUES (1, 'x', 0)")
            assert ei.value.constraint_name == f"{scratch_table}_pkey"
            async with conn.transaction():
                with pytest.raises(asyncpg.DivisionByZeroError):
                    async with conn.transaction():  # savepoint
                        await conn.execute("SELECT 1/0")
                assert await conn.fetchval("SELECT 4") == 4
        finally:
            await conn.close()
    run(main())


def test_copy(target, scratch_table):
    async def main():
        conn = await connect(target)
        try:
            records = [(i, f"note {i}", decimal.Decimal(i) / 4) for i in range(1, 5001)]
            res = await conn.copy_records_to_table(scratch_table, records=records)
            assert res == "COPY 5000"
            buf = io.BytesIO()
            res = await conn.copy_from_query(f"SELECT id, note FROM {scratch_table} WHERE id <= 3 ORDER BY id",
                                             output=buf, format="csv")
            assert res == "COPY 3"
            assert buf.getvalue() == b"1,note 1\n2,note 2\n3,note 3\n"
            out = io.BytesIO()
            await conn.copy_from_table(scratch_table, output=out, columns=["id"], format="text")
            assert sorted(int(x) for x in out.getvalue().split()) == list(range(1, 5001))
            await conn.execute(f"TRUNCATE {scratch_table}")
            src = io.BytesIO(b"".join(f"{i}\tfrom file {i}\t{i}.5\n".encode() for i in range(10)))
            assert await conn.copy_to_table(scratch_table, source=src) == "COPY 10"
            assert await conn.fetchval(f"SELECT sum(amount) FROM {scratch_table}") == decimal.Decimal("50.0")
        finally:
            await conn.close()
    run(main())


def test_listen_notify(target):
    channel = "ch_" + uuid.uuid4().hex[:8]

    async def main():
        listener = await connect(target)
        notifier = await connect(target)
        try:
            got = asyncio.Queue()
            await listener.add_listener(channel, lambda c, pid, ch, payload: got.put_nowait((ch, payload)))
            await notifier.execute(f"NOTIFY {channel}, 'hello'")
            await notifier.execute("SELECT pg_notify($1, $2)", channel, "wörld")
            assert await asyncio.wait_for(got.get(), 10) == (channel, "hello")
            assert await asyncio.wait_for(got.get(), 10) == (channel, "wörld")
        finally:
            await listener.close()
            await notifier.close()
    run(main())


async def _after_cancel(conn, sql):
    """The first statement after a cancel (see harness.retry_stray_cancel)."""
    try:
        return await asyncio.wait_for(conn.fetchval(sql), 10)
    except asyncpg.QueryCanceledError:
        return await asyncio.wait_for(conn.fetchval(sql), 10)


def test_cancel_by_timeout_and_task_cancel(target, admin):
    # each case on its own connection, so a cancel cannot leak into the next case
    async def by_timeout():
        conn = await connect(target)
        try:
            # asyncpg cancels the server query when its timeout expires
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=1)
            # the server query is gone and the connection answers at once
            assert await _after_cancel(conn, "SELECT 'after timeout'") == "after timeout"
            return await conn.fetchval("SELECT pg_backend_pid()")
        finally:
            await conn.close()

    async def by_task_cancel():
        conn = await connect(target)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            # cancelling the task sends a CancelRequest too
            task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
            while not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                                    (pid,)).fetchone():
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await _after_cancel(conn, "SELECT 'after cancel'") == "after cancel"
            return pid
        finally:
            await conn.close()

    async def by_statement_timeout():
        conn = await connect(target)
        try:
            # a statement_timeout on the server gives 57014 as an error
            await conn.execute("SET statement_timeout = '300ms'")
            with pytest.raises(asyncpg.QueryCanceledError) as ei:
                await conn.fetchval("SELECT pg_sleep(30)")
            assert ei.value.sqlstate == "57014"
            await conn.execute("RESET statement_timeout")
        finally:
            await conn.close()

    pids = [run(by_timeout()), run(by_task_cancel())]
    run(by_statement_timeout())
    for pid in pids:
        assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND query LIKE %s "
                             "AND state = 'active'", (pid, "%pg_sleep(30)%")).fetchone() == (0,)


def test_executemany_pipelined(target, scratch_table):
    async def main():
        conn = await connect(target)
        try:
            await conn.executemany(f"INSERT INTO {scratch_table} (id, note, amount) VALUES ($1, $2, $3)",
                                   [(i, f"row {i}", i) for i in range(2000)])
            assert await conn.fetchval(f"SELECT count(*) FROM {scratch_table}") == 2000
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.executemany(f"INSERT INTO {scratch_table} (id, note) VALUES ($1, $2)",
                                       [(5000, "new"), (1, "dup"), (5001, "new")])
            # executemany is atomic: nothing of the failed batch remains
            assert await conn.fetchval(f"SELECT count(*) FROM {scratch_table} WHERE id >= 5000") == 0
            # many concurrent queries over a pool
            pool = await asyncpg.create_pool(host=target.host, port=target.port, user=target.user,
                                             password=target.password, database=target.dbname,
                                             min_size=4, max_size=4, ssl=False)
            try:
                vals = await asyncio.gather(*(pool.fetchval("SELECT $1::int * 2", i) for i in range(200)))
                assert vals == [i * 2 for i in range(200)]
            finally:
                await pool.close()
        finally:
            await conn.close()
    run(main())


def test_large_result_cursor(target):
    async def main():
        conn = await connect(target)
        try:
            count = total = 0
            async with conn.transaction():
                async for rec in conn.cursor("SELECT id, payload FROM big", prefetch=10000):
                    count += 1
                    total += rec["id"]
            assert count == harness.BIG_ROWS
            assert total == harness.BIG_ROWS * (harness.BIG_ROWS + 1) // 2
            # 50 MB in one fetch
            rows = await conn.fetch("SELECT i, repeat('y', 1000) AS s FROM generate_series(1, 50000) i")
            assert len(rows) == 50000 and all(len(r["s"]) == 1000 for r in rows)
        finally:
            await conn.close()
    run(main(), timeout=180)


def test_parameter_status_and_settings(target, admin):
    app = "itest-asyncpg-" + uuid.uuid4().hex[:8]

    async def main():
        conn = await connect(target, server_settings={"application_name": app, "DateStyle": "German",
                                                      "work_mem": "7MB"})
        try:
            assert conn.get_server_version().major == 15
            s = conn.get_settings()
            assert s.application_name == app
            assert s.DateStyle == "German, DMY"
            assert s.client_encoding == "UTF8"
            assert await conn.fetchval("SHOW work_mem") == "7MB"
            await conn.execute("SET application_name = 'changed'")
            assert conn.get_settings().application_name == "changed"
            await conn.execute(f"SET application_name = '{app}'")
            return await conn.fetchval("SELECT pg_backend_pid()")
        finally:
            await conn.close()
    # check it on the server while the session is alive
    async def check():
        conn = await connect(target, server_settings={"application_name": app})
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            row = admin.execute("SELECT application_name, usename FROM pg_stat_activity WHERE pid = %s",
                                (pid,)).fetchone()
            assert row is not None and app in row[0] and row[1] == harness.APP_USER
        finally:
            await conn.close()
    run(main())
    run(check())
