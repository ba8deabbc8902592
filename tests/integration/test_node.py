"""node-postgres ("pg" from npm) directly and through pgveil. Each scenario is
a script under tests/drivers/node/ that checks itself and prints a JSON summary."""

import json
import os
import subprocess
import uuid

import pytest

import harness


def node(node_driver, script, target, timeout=120, **env):
    res = subprocess.run(["node", os.path.join(node_driver, script)], capture_output=True, text=True,
                         timeout=timeout, cwd=node_driver, env=target.env(**env))
    assert res.returncode == 0, f"{script} failed ({res.returncode}):\n{res.stderr}\n{res.stdout}"
    return json.loads(res.stdout.strip().split("\n")[-1])


@pytest.fixture
def scratch_table(admin):
    name = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, note text)")
    admin.execute(f"ALTER TABLE {name} OWNER TO {harness.APP_USER}")
    yield name
    admin.execute(f"DROP TABLE IF EXISTS {name}")


def test_basic_and_prepared(node_driver, target):
    out = node(node_driver, "basic.js", target)
    assert out == {"current_user": harness.APP_USER, "session_user": harness.APP_USER, "paid": 334}


def test_pool(node_driver, target):
    assert node(node_driver, "pool.js", target) == {"queries": 40, "sessions": True}


def test_transactions(node_driver, target, scratch_table, admin):
    out = node(node_driver, "transaction.js", target, ITEST_TABLE=scratch_table)
    assert out == {"ids": [1, 4]}
    assert admin.execute(f"SELECT note FROM {scratch_table} ORDER BY id").fetchall() == [("committed",), ("kept",)]


def test_errors(node_driver, target, scratch_table):
    assert node(node_driver, "error.js", target, ITEST_TABLE=scratch_table) == {"ok": "usable"}


def test_copy(node_driver, target, scratch_table, admin):
    out = node(node_driver, "copy.js", target, ITEST_TABLE=scratch_table)
    assert out["count"] == 20000
    assert admin.execute(f"SELECT max(id), min(note) FROM {scratch_table}").fetchone() == (20000, "node row 1")


def test_listen_notify(node_driver, target):
    ch = "ch_" + uuid.uuid4().hex[:8]
    assert node(node_driver, "notify.js", target, ITEST_CHANNEL=ch) == {"got": [[ch, "one"], [ch, "twö"]]}


def test_cancel(node_driver, target):
    out = node(node_driver, "cancel.js", target, ITEST_APP="itest-node-cancel-" + uuid.uuid4().hex[:8])
    assert out["code"] == "57014"
    assert out["message"] == "canceling statement due to user request"


def test_binary_results(node_driver, target):
    assert node(node_driver, "binary.js", target) == {"rows": 100, "formats": ["binary"]}


def test_large_result(node_driver, target):
    out = node(node_driver, "large.js", target, timeout=180)
    assert out == {"count": harness.BIG_ROWS, "sum": harness.BIG_ROWS * (harness.BIG_ROWS + 1) // 2,
                   "inMemory": 100000}


def test_pipeline_mode(node_driver, target, scratch_table):
    assert node(node_driver, "pipeline.js", target, ITEST_TABLE=scratch_table) == {"rows": 500}


def test_parameter_status_and_application_name(node_driver, target, admin):
    app = "itest-node-" + uuid.uuid4().hex[:8]
    proc = subprocess.Popen(["node", os.path.join(node_driver, "params.js")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=node_driver,
                            env=target.env(ITEST_APP=app))
    try:
        first = proc.stdout.readline()
        assert first, "params.js failed: " + proc.stderr.read()
        pid = json.loads(first)["pid"]
        row = admin.execute("SELECT application_name, usename FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone()
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert row is not None and app in row[0] and row[1] == harness.APP_USER
    status = json.loads(out.strip().split("\n")[-1])["status"]
    assert status["application_name"] == app
    assert status["DateStyle"] == "Postgres, DMY"
