"""TLS toward the client: pgveil with tls_cert_file (and PostgreSQL itself,
which has ssl = on with a certificate from the same test CA) must accept
sslmode=require and verify-full with the test CA, and fail verification
against a wrong CA. Without tls_cert_file, pgveil refuses TLS: require fails,
prefer falls back to plaintext."""

import asyncio
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import uuid

import asyncpg
import psycopg
import pytest
from psycopg import errors

import harness
import pgwire
from test_jdbc import run_java


@pytest.fixture(params=["direct", "pgveil"])
def tls_target(request, cluster):
    if request.param == "direct":
        return harness.direct_target(cluster)
    pv = request.getfixturevalue("pgveil_factory")(tls=True)
    return harness.pgveil_target(pv)


def psql(target, conninfo, *args, check=True):
    res = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo] + list(args),
                         capture_output=True, text=True, timeout=60, env=target.env())
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_psql_sslmode_require(tls_target):
    res = psql(tls_target, tls_target.conninfo(sslmode="require"), "-c", "\\conninfo", "-c", "SELECT 6 * 7")
    assert "SSL connection (protocol: TLSv1." in res.stdout
    assert res.stdout.rstrip().endswith("42")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_psql_verify_full(tls_target, certs, host):
    conninfo = tls_target.conninfo(host=host, sslmode="verify-full", sslrootcert=certs.ca_crt)
    res = psql(tls_target, conninfo, "-c", "\\conninfo", "-c", "SELECT current_user")
    assert "SSL connection" in res.stdout
    assert res.stdout.rstrip().endswith(harness.APP_USER)


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_verify_with_wrong_ca_fails(tls_target, certs, sslmode):
    res = psql(tls_target, tls_target.conninfo(host="localhost", sslmode=sslmode,
                                               sslrootcert=certs.other_ca_crt),
               "-c", "SELECT 1", check=False)
    assert res.returncode == 2
    assert "certificate verify failed" in res.stderr
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(tls_target.conninfo(host="localhost", sslmode=sslmode, sslrootcert=certs.other_ca_crt))
    if tls_target.via_pgveil:
        assert tls_target.pgveil.alive()


def test_psycopg_over_verified_tls(tls_target, certs, admin):
    app = "itest-tls-" + uuid.uuid4().hex[:8]
    with psycopg.connect(tls_target.conninfo(host="localhost", sslmode="verify-full", sslrootcert=certs.ca_crt,
                                             application_name=app), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (harness.APP_USER,)
        # 20 MB through TLS
        n = 0
        for (s,) in conn.cursor().stream("SELECT repeat('t', 1000) FROM generate_series(1, 20000)"):
            n += len(s)
        assert n == 20_000_000
        # COPY out through TLS
        with conn.cursor().copy("COPY (SELECT id FROM users ORDER BY id) TO STDOUT") as cp:
            data = b"".join(bytes(c) for c in cp)
        assert data == b"".join(f"{i}\n".encode() for i in range(1, 101))
        # 50 MB of COPY FROM STDIN through TLS
        conn.execute("CREATE TEMP TABLE tls_copy (id int, v text)")
        line = "x" * 1000
        with conn.cursor().copy("COPY tls_copy FROM STDIN") as cp:
            for i in range(50_000):
                cp.write(f"{i}\t{line}\n")
        assert conn.execute("SELECT count(*), sum(length(v)) FROM tls_copy").fetchone() == (50_000, 50_000_000)
        # cancel: libpq sends the CancelRequest over a new plaintext connection
        result = {}

        def sleeper():
            try:
                conn.execute("SELECT pg_sleep(30)")
                result["e"] = None
            except psycopg.Error as e:
                result["e"] = e

        th = threading.Thread(target=sleeper)
        th.start()
        harness.wait_until(lambda: admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep%%'", (app,)).fetchone(), 15, what="pg_sleep to start")
        conn.cancel()
        th.join(25)
        assert not th.is_alive()
        assert isinstance(result["e"], errors.QueryCanceled)
        assert harness.retry_stray_cancel(lambda: conn.execute("SELECT 'after'").fetchone(),
                                          lambda e: isinstance(e, errors.QueryCanceled)) == ("after",)


def test_asyncpg_over_verified_tls(tls_target, certs):
    async def main():
        # verification on: asyncpg fails if the server declines TLS or the certificate is wrong
        ctx = ssl.create_default_context(cafile=certs.ca_crt)
        conn = await asyncpg.connect(host="127.0.0.1", port=tls_target.port, user=tls_target.user,
                                     password=tls_target.password, database="app", ssl=ctx, timeout=10)
        try:
            assert conn.get_settings().server_version.startswith("15")
            assert await conn.fetchval("SELECT count(*) FROM big WHERE id % 1000 = 0") == 1000
            rows = await conn.fetch("SELECT i, repeat('a', 500) FROM generate_series(1, 20000) i")
            assert len(rows) == 20000
        finally:
            await conn.close()
    asyncio.run(asyncio.wait_for(main(), 60))


def test_node_over_verified_tls(tls_target, certs, node_driver):
    res = subprocess.run(["node", os.path.join(node_driver, "tls.js")], capture_output=True, text=True,
                         timeout=60, cwd=node_driver, env=tls_target.env(ITEST_CA=certs.ca_crt))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["protocol"].startswith("TLSv1.")


def test_jdbc_over_verified_tls(tls_target, certs, java_driver):
    res = run_java(java_driver, tls_target, ["tls"], ITEST_SSL_ROOTCERT=certs.ca_crt)
    assert res["tls"][0] == "PASS", res["tls"][1]


def test_raw_ssl_request_then_startup_inside_tls(tls_target, certs):
    with pgwire.Wire(tls_target.host, tls_target.port) as w:
        w.send(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
        assert w.read_bytes(1) == b"S"
        w.wrap_tls(certs.ca_crt)
        w.startup(user=tls_target.user, database="app", password=tls_target.password)
        rows, _, err = w.simple_query("SELECT 'inside tls'")
        assert rows == [[b"inside tls"]] and err is None


def test_many_tls_sessions_in_a_row(tls_target, certs):
    """200 TLS sessions, each sending its StartupMessage right after the
    handshake, with a bare TCP connect-and-close (a load balancer's health
    check) before each: every one must open. (pgveil once lost, now and then,
    a StartupMessage that arrived right after the handshake.)"""
    failures = []
    for i in range(200):
        socket.create_connection((tls_target.host, tls_target.port), timeout=5).close()
        try:
            with pgwire.Wire(tls_target.host, tls_target.port, timeout=10) as w:
                w.send(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
                assert w.read_bytes(1) == b"S"
                w.wrap_tls(certs.ca_crt)
                w.startup(user=tls_target.user, database="app", password=tls_target.password)
                assert w.simple_query(f"SELECT {i}")[0] == [[str(i).encode()]]
        except (TimeoutError, pgwire.Closed, pgwire.PgError, OSError) as e:
            failures.append(f"session {i}: {e!r}")
            if len(failures) == 3:
                break
    assert not failures, failures


def test_garbage_instead_of_client_hello(tls_target):
    with pgwire.Wire(tls_target.host, tls_target.port) as w:
        w.send(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
        assert w.read_bytes(1) == b"S"
        try:
            w.send(b"this is not a TLS ClientHello" * 10)
        except OSError:
            pass
        assert w.peer_closed(15)
    if tls_target.via_pgveil:
        assert tls_target.pgveil.alive()
        with psycopg.connect(tls_target.conninfo(sslmode="require")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stalled_tls_handshake_closed(pgveil_factory):
    pv = pgveil_factory(tls=True, startup_timeout="2s")
    with pgwire.Wire("127.0.0.1", pv.port) as w:
        w.send(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
        assert w.read_bytes(1) == b"S"
        # no ClientHello follows: startup_timeout (2s) must close it
        assert w.peer_closed(15)


# --------------------------------------------------------------------------- pgveil without TLS

def test_without_tls_require_fails_prefer_is_plain(proxy):
    res = subprocess.run(["psql", "-X", "-At", "-d", proxy.conninfo(sslmode="require"), "-c", "SELECT 1"],
                         capture_output=True, text=True, timeout=30, env=proxy.env())
    assert res.returncode == 2
    assert "server does not support SSL, but SSL was required" in res.stderr
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(proxy.conninfo(sslmode="require"))
    with psycopg.connect(proxy.conninfo(sslmode="prefer")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(proxy.conninfo(sslmode="disable")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
