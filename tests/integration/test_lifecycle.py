"""The pgveil process: --check/--version, SIGHUP reload (good and broken
configuration), SIGTERM graceful shutdown with sessions open."""

import signal
import subprocess
import threading
import time

import psycopg
import pytest

import harness


def connect(pv, dbname="app"):
    return psycopg.connect(harness.pgveil_target(pv).conninfo(dbname=dbname), autocommit=True)


def can_use(pv, dbname):
    try:
        with connect(pv, dbname) as c:
            return c.execute("SELECT current_database()").fetchone() == ("app",)
    except psycopg.OperationalError:
        return False


def test_version_and_help(pgveil_bin):
    res = subprocess.run([pgveil_bin, "--version"], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0 and "pgveil" in (res.stdout + res.stderr)
    res = subprocess.run([pgveil_bin, "--help"], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0 and "-c" in (res.stdout + res.stderr)


def test_check_config(pgveil_factory, pgveil_bin):
    pv = pgveil_factory(start=False)
    res = subprocess.run([pgveil_bin, "--check", "-c", pv.conf_path], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    bad = pv.conf_path.replace(".ini", "-bad.ini")
    with open(bad, "w") as f:
        f.write(pv.config_text().replace("[pgveil]\n", "[pgveil]\nno_such_key = 1\n"))
    res = subprocess.run([pgveil_bin, "--check", "-c", bad], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert f"{bad}:2:" in res.stdout + res.stderr
    assert "no_such_key" in res.stdout + res.stderr


def test_sighup_adds_database_and_keeps_sessions(pgveil_factory):
    pv = pgveil_factory()
    before = connect(pv)
    assert not can_use(pv, "app_added")
    pv.databases["app_added"] = harness.backend_conninfo(pv.cluster, sslmode="disable")
    pv.write_config()
    pv.reload()
    harness.wait_until(lambda: can_use(pv, "app_added"), 15, interval=0.2, what="the reloaded database")
    assert before.execute("SELECT 'session from before the reload'").fetchone() == \
        ("session from before the reload",)
    # removing it again
    del pv.databases["app_added"]
    pv.write_config()
    pv.reload()
    harness.wait_until(lambda: not can_use(pv, "app_added"), 15, interval=0.2, what="the database to go")
    assert before.execute("SELECT 1").fetchone() == (1,)
    before.close()


def test_sighup_with_broken_config_keeps_old(pgveil_factory):
    pv = pgveil_factory()
    session = connect(pv)
    mark = pv.log_size()
    good = pv.config_text()
    pv.write_config(good.replace("[pgveil]\n", "[pgveil]\nbogus_reload_key = yes\n") +
                    "app_new = host=127.0.0.1 port=1 dbname=x user=y\n")
    pv.reload()
    harness.wait_until(lambda: "bogus_reload_key" in pv.log_text(mark), 15, what="the reload error in the log")
    assert pv.alive()
    assert not can_use(pv, "app_new")
    assert can_use(pv, "app")
    assert session.execute("SELECT 'unaffected'").fetchone() == ("unaffected",)
    pv.write_config(good)
    session.close()


def test_sigterm_refuses_new_and_lets_running_query_finish(pgveil_factory, admin):
    pv = pgveil_factory(shutdown_timeout="10s")
    busy = connect(pv)
    outcome = {}

    def run():
        try:
            outcome["rows"] = busy.execute("SELECT 'finished', pg_sleep(2)").fetchone()
        except psycopg.Error as e:
            outcome["rows"] = e

    th = threading.Thread(target=run)
    th.start()
    harness.wait_until(lambda: admin.execute(
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = %s",
        ("SELECT 'finished', pg_sleep(2)",)).fetchone(), 15, what="the query to run on the server")
    pv.proc.send_signal(signal.SIGTERM)
    harness.wait_until(lambda: not harness.port_open("127.0.0.1", pv.port), 10, what="the listener to close")
    th.join(30)
    assert outcome["rows"] == ("finished", ""), f"in-flight query after SIGTERM: {outcome['rows']!r}"
    busy.close()
    assert pv.proc.wait(timeout=25) == 0


def test_sigterm_with_idle_session_exits_by_shutdown_timeout(pgveil_factory):
    pv = pgveil_factory(shutdown_timeout="3s")
    idle = connect(pv)
    assert idle.execute("SELECT 1").fetchone() == (1,)
    t0 = time.monotonic()
    pv.proc.send_signal(signal.SIGTERM)
    code = pv.proc.wait(timeout=30)
    assert code == 0
    assert time.monotonic() - t0 < 30
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")
    idle.close()
