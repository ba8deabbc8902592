"""psql (libpq, simple query protocol, COPY, \\commands) directly and through pgveil."""

import signal
import subprocess
import time
import uuid

import pytest

import harness


def psql(target, *args, input=None, check=True, timeout=120, env=None, conninfo=None, **kw):
    cmd = ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo or target.conninfo(**kw)] + list(args)
    res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                         env=env or target.env())
    if check:
        assert res.returncode == 0, f"psql exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


@pytest.fixture
def scratch_table(admin):
    name = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, note text)")
    admin.execute(f"ALTER TABLE {name} OWNER TO {harness.APP_USER}")
    yield name
    admin.execute(f"DROP TABLE IF EXISTS {name}")


def test_simple_queries(target):
    out = psql(target, "-c", "SELECT 1", "-c", "SELECT current_user, session_user",
               "-c", "SELECT count(*) FROM users").stdout
    assert out.split("\n")[:3] == ["1", f"{harness.APP_USER}|{harness.APP_USER}", "100"]
    # a multi-statement string and a script on stdin
    out = psql(target, input="SELECT 'a' AS x; SELECT 'b' AS y\\gset\n\\echo :y\n"
                              "SELECT name FROM users WHERE id = 7;\n").stdout
    assert out.split("\n")[:3] == ["a", "b", "Zoë Müller"]


def test_prepared_statements_and_variables(target):
    script = """
\\set uid 42
PREPARE q(int) AS SELECT id, email FROM users WHERE id = $1;
EXECUTE q(:uid);
EXECUTE q(7);
DEALLOCATE q;
SELECT :'uid'::int + 1;
"""
    out = psql(target, "-q", input=script).stdout.split("\n")
    assert out[:3] == ["42|user42@example.com", "7|user7@example.com", "43"]


def test_describe_commands(target):
    out = psql(target, "-c", "\\d users").stdout
    assert "email|text||not null|" in out
    assert "users_pkey" in psql(target, "-c", "\\di").stdout
    out = psql(target, "-c", "\\dt").stdout
    assert "users" in out and "orders" in out and "big" in out
    out = psql(target, "-c", "\\l").stdout
    assert "app|app_agent" in out


def test_transactions(target, scratch_table):
    psql(target, input=f"BEGIN; INSERT INTO {scratch_table} VALUES (1, 'kept'); COMMIT;\n"
                       f"BEGIN; INSERT INTO {scratch_table} VALUES (2, 'gone'); ROLLBACK;\n")
    assert psql(target, "-c", f"SELECT id FROM {scratch_table}").stdout == "1\n"
    # --single-transaction: a failure rolls everything back
    res = psql(target, "-1", check=False,
               input=f"INSERT INTO {scratch_table} VALUES (3, 'x');\nSELECT 1/0;\n")
    assert res.returncode == 3
    assert psql(target, "-c", f"SELECT count(*) FROM {scratch_table}").stdout == "1\n"


def test_error_then_session_continues(target):
    res = subprocess.run(["psql", "-X", "-At", "-d", target.conninfo()], capture_output=True, text=True,
                         timeout=60, env=target.env(),
                         input="\\set VERBOSITY verbose\nSELECT 1/0;\nSELECT 'after error';\n"
                               "SELECT * FROM nope;\nSELECT 'still here';\n")
    assert "ERROR:  22012: division by zero" in res.stderr
    assert "ERROR:  42P01: relation \"nope\" does not exist" in res.stderr
    assert res.stdout.split("\n")[:2] == ["after error", "still here"]
    # ON_ERROR_STOP: psql stops at the error and exits 3
    res = psql(target, check=False, input="SELECT 1/0;\nSELECT 'not reached';\n")
    assert res.returncode == 3 and "not reached" not in res.stdout
    assert "division by zero" in res.stderr


def test_copy_in_and_out(target, scratch_table, tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text("".join(f"{i}\trow {i}\n" for i in range(1, 10001)))
    out = psql(target, "-c", f"\\copy {scratch_table} FROM '{src}'").stdout
    assert out.strip() == "COPY 10000"
    dst = tmp_path / "out.tsv"
    psql(target, "-c", f"\\copy (SELECT * FROM {scratch_table} ORDER BY id) TO '{dst}'")
    assert dst.read_text() == src.read_text()
    # CSV with header through COPY ... TO STDOUT
    out = psql(target, "-c", f"COPY (SELECT id, note FROM {scratch_table} WHERE id < 3 ORDER BY id) "
                             "TO STDOUT WITH (FORMAT csv, HEADER)").stdout
    assert out == "id,note\n1,row 1\n2,row 2\n"
    # COPY FROM STDIN inline in a script, with a bad row: error, nothing inserted
    res = psql(target, check=False, input=f"COPY {scratch_table} FROM STDIN;\n20001\tok\nbad\trow\n\\.\n")
    assert res.returncode == 3 and "invalid input syntax for type integer" in res.stderr
    assert psql(target, "-c", f"SELECT count(*) FROM {scratch_table}").stdout == "10000\n"


def test_large_objects_fastpath(target, tmp_path, admin):
    """\\lo_import/\\lo_export go through libpq's fast-path function calls ('F')."""
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 400 + b"tail")
    out = psql(target, "-c", f"\\lo_import {src}").stdout
    assert out.startswith("lo_import ")
    oid = int(out.split()[1])
    try:
        dst = tmp_path / "back.bin"
        psql(target, "-c", f"\\lo_export {oid} {dst}")
        assert dst.read_bytes() == src.read_bytes()
    finally:
        admin.execute("SELECT lo_unlink(%s)", (oid,))


def test_listen_notify(target):
    channel = "ch_" + uuid.uuid4().hex[:8]
    # The listener runs a second psql (through the same target) from inside its own session.
    other = f"psql -X -q -d \"{target.conninfo()}\" -c \"NOTIFY {channel}, 'from another session'\""
    out = psql(target, input=f"LISTEN {channel};\n\\! {other}\nSELECT 'poll';\n"
                             f"NOTIFY {channel}, 'self';\n").stdout
    assert f'Asynchronous notification "{channel}" with payload "from another session" received' in out
    assert f'Asynchronous notification "{channel}" with payload "self" received' in out


def test_cancel_with_sigint(target, admin):
    app = "itest-psql-cancel-" + uuid.uuid4().hex[:8]
    proc = subprocess.Popen(["psql", "-X", "-At", "-d", target.conninfo(application_name=app),
                             "-c", "SELECT pg_sleep(30)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=target.env())
    try:
        harness.wait_until(lambda: admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep%%'", (app,)).fetchone(), 15, what="pg_sleep to start")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=25)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "canceling statement due to user request" in err
    assert proc.returncode == 1
    assert elapsed < 25


def test_large_result(target):
    # all rows buffered by libpq, then printed
    proc = subprocess.Popen(["psql", "-X", "-At", "-d", target.conninfo(), "-c", "SELECT * FROM big"],
                            stdout=subprocess.PIPE, env=target.env())
    lines = nbytes = 0
    while True:
        chunk = proc.stdout.read(1 << 20)
        if not chunk:
            break
        lines += chunk.count(b"\n")
        nbytes += len(chunk)
    assert proc.wait(timeout=120) == 0
    assert lines == harness.BIG_ROWS
    assert nbytes > 100 * harness.BIG_ROWS
    # streamed through a cursor in batches (FETCH_COUNT)
    out = psql(target, "-v", "FETCH_COUNT=25000", "-c",
               "SELECT i, repeat('z', 500) FROM generate_series(1, 200000) i").stdout
    assert out.count("\n") == 200000 and out.endswith("200000|" + "z" * 500 + "\n")


def test_startup_settings_from_environment(target, admin):
    app = "itest-psql-" + uuid.uuid4().hex[:8]
    env = target.env(PGAPPNAME=app, PGCLIENTENCODING="LATIN1", PGDATESTYLE="Postgres, MDY",
                     PGOPTIONS="-c geqo=off -c statement_timeout=12345")
    script = ("\\encoding\nSHOW client_encoding;\nSHOW DateStyle;\nSHOW geqo;\nSHOW statement_timeout;\n"
              "SHOW application_name;\nSELECT date '2024-03-05';\nSELECT pg_backend_pid();\n"
              "\\echo :SERVER_VERSION_NAME\n")
    res = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", target.host, "-p",
                          str(target.port), "-U", target.user, "app"], input=script.encode(), capture_output=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode("latin-1").split("\n")
    assert out[:7] == ["LATIN1", "LATIN1", "Postgres, MDY", "off", "12345ms", app, "03-05-2024"]
    assert out[8].startswith("15")


def test_application_name_reaches_server(target, admin):
    app = "itest-psql-app-" + uuid.uuid4().hex[:8]
    proc = subprocess.Popen(["psql", "-X", "-At", "-d", target.conninfo(application_name=app),
                             "-c", "SELECT pg_sleep(2)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=target.env())
    try:
        row = harness.wait_until(lambda: admin.execute(
            "SELECT application_name, usename, datname FROM pg_stat_activity "
            "WHERE application_name LIKE %s", (f"%{app}%",)).fetchone(), 15, what="session on the server")
    finally:
        proc.communicate(timeout=30)
    assert row[1:] == (harness.APP_USER, "app")
    assert proc.returncode == 0


def test_unknown_database(target):
    res = psql(target, "-c", "SELECT 1", check=False, dbname="does_not_exist")
    assert res.returncode == 2
    assert "FATAL" in res.stderr and "does_not_exist" in res.stderr
