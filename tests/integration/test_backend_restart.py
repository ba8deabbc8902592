"""PostgreSQL goes away under pgveil and comes back: clients get a clean
error (never a hang), pgveil keeps running, and new sessions work once the
server is up again. Uses its own cluster so the shared one stays up."""

import threading

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
