"""The server side failing under pgveil: PostgreSQL stopped and started again,
a server session terminated, a server that is slow or hangs while pgveil logs
in. Clients get a clean error (never a hang), pgveil keeps running, and new
sessions work once the server is back. Tests that stop or slow the server use
a cluster of their own."""

import threading
import time

import psycopg
import pytest

import harness


def call_with_timeout(fn, timeout, what):
    """Runs fn in a thread; returns its result or exception. Fails the test if
    it has not returned after timeout seconds (a hang)."""
    out = {}

    def runner():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            out["error"] = e

    th = threading.Thread(target=runner, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        pytest.fail(f"{what}: no answer after {timeout}s (hang)")
    return out.get("error", out.get("value"))


def connect(t):
    return psycopg.connect(t.conninfo(connect_timeout=30), autocommit=True)


def new_session_works(t):
    try:
        with connect(t) as c:
            return c.execute("SELECT 'back'").fetchone() == ("back",)
    except psycopg.OperationalError:
        return False


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_stops_and_restarts(cluster_factory, pgveil_factory, mode):
    pg = cluster_factory()
    pv = pgveil_factory(cluster_=pg)
    t = harness.pgveil_target(pv)

    idle = connect(t)
    busy = connect(t)
    assert idle.execute("SELECT 1").fetchone() == (1,)
    app_pid = busy.execute("SELECT pg_backend_pid()").fetchone()[0]
    sleeping = {}

    def run_sleep():
        try:
            busy.execute("SELECT pg_sleep(30)")
            sleeping["result"] = "finished"
        except psycopg.Error as e:
            sleeping["result"] = e

    th = threading.Thread(target=run_sleep, daemon=True)
    th.start()
    with psycopg.connect(pg.admin_conninfo(), autocommit=True) as admin:
        harness.wait_until(lambda: admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (app_pid,)).fetchone(),
            15, what="pg_sleep to run")

    pg.stop(mode)
    try:
        # the running query fails with an error instead of hanging
        th.join(20)
        assert not th.is_alive(), "a query running while the server stopped never returned"
        assert isinstance(sleeping["result"], psycopg.OperationalError), sleeping["result"]
        # the idle session's next statement fails cleanly too
        res = call_with_timeout(lambda: idle.execute("SELECT 1").fetchone(), 20, "query on an idle session")
        assert isinstance(res, psycopg.Error), f"query after server stop returned {res!r}"
        # a new session while the server is down is refused, not left hanging
        res = call_with_timeout(lambda: connect(t), 40, "new session while the server is down")
        assert isinstance(res, psycopg.OperationalError), f"connect while server down gave {res!r}"
        assert pv.alive(), "pgveil exited when its server went away"
    finally:
        pg.start()
    harness.wait_until(lambda: new_session_works(t), 30, interval=0.5, what="a session after the restart")
    # many sessions again, concurrently
    results = []
    threads = [threading.Thread(target=lambda: results.append(new_session_works(t))) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert results == [True] * 8
    for c in (idle, busy):
        c.close()


@pytest.mark.parametrize("how", ["pg_terminate_backend", "idle_in_transaction_timeout"])
def test_server_ends_session(target, admin, how):
    """The server ends one session: its client gets the server's FATAL error."""
    conn = psycopg.connect(target.conninfo(), autocommit=True)
    try:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        if how == "pg_terminate_backend":
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            expected = "terminating connection due to administrator command"  # 57P01
        else:
            conn.execute("SET idle_in_transaction_session_timeout = '300ms'")
            conn.autocommit = False
            conn.execute("SELECT 1")  # now idle in a transaction
            expected = "terminating connection due to idle-in-transaction timeout"  # 25P03
        harness.wait_until(lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                                     (pid,)).fetchone(), 15, what="the server session to end")
        res = call_with_timeout(lambda: conn.execute("SELECT 1").fetchone(), 20, "query on the ended session")
        # libpq reports a FATAL that arrives between queries without its SQLSTATE
        assert isinstance(res, psycopg.OperationalError), res
        assert expected in str(res)
    finally:
        conn.close()
    if target.via_pgveil:
        assert target.pgveil.alive()
    with psycopg.connect(target.conninfo()) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def _set_pre_auth_delay(pg, seconds):
    with psycopg.connect(pg.admin_conninfo(), autocommit=True) as a:
        a.execute(f"ALTER SYSTEM SET pre_auth_delay = {int(seconds)}")
        a.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)  # the postmaster rereads its configuration


def test_slow_server_login_is_not_cut_by_startup_timeout(cluster_factory, pgveil_factory):
    """startup_timeout is for clients that never finish their startup. A client
    that has sent its whole StartupMessage waits while pgveil logs in to a slow
    server (here every server login takes 3s; startup_timeout is 2s and
    server_connect_timeout 20s): the session must open."""
    pg = cluster_factory()
    pv = pgveil_factory(cluster_=pg, startup_timeout="2s", server_connect_timeout="20s")
    _set_pre_auth_delay(pg, 3)
    t = harness.pgveil_target(pv)
    res = call_with_timeout(lambda: connect(t), 40, "session to a slow server")
    assert not isinstance(res, Exception), f"session to a slow server failed: {res}"
    with res:
        assert res.execute("SELECT 'slow but fine'").fetchone() == ("slow but fine",)


def test_hung_server_login_gives_client_an_error(cluster_factory, pgveil_factory):
    """A server that does not finish the login for 30s: the client gets an
    error from pgveil well before that, not a hang."""
    pg = cluster_factory()
    pv = pgveil_factory(cluster_=pg, startup_timeout="5s", server_connect_timeout="3s")
    _set_pre_auth_delay(pg, 30)
    t = harness.pgveil_target(pv)
    t0 = time.monotonic()
    res = call_with_timeout(lambda: connect(t), 25, "session to a hung server")
    assert isinstance(res, psycopg.OperationalError), res
    assert time.monotonic() - t0 < 25
    assert pv.alive()
    # (the cluster is thrown away: no new connection would get in for 30s)


def test_server_fatal_error_passed_through_raw(target, admin):
    """The server's FATAL ErrorResponse reaches the client with its SQLSTATE."""
    import pgwire
    with pgwire.Wire(target.host, target.port) as w:
        w.startup(user=target.user, database="app", password=target.password)
        rows, _, _ = w.simple_query("SELECT pg_backend_pid()")
        admin.execute("SELECT pg_terminate_backend(%s)", (int(rows[0][0]),))
        msgs = w.read_until_closed(timeout=15)
        errors = [pgwire.parse_fields(p) for t, p in msgs if t == b"E"]
        assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "57P01")]
