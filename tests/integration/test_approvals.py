"""Held statements end to end: an agent's statement waits, an approver on the
admin console (a second psql) approves or denies it, or hold_timeout passes.

Every pgveil here has [oidc], rules holding DELETE/UPDATE on one table, and
the default approver group "dba". What runs is checked behind the agent's
back on a superuser connection: exactly once on approval, never on denial or
timeout. The agent is psycopg, and at the end asyncpg, node-postgres and
pgjdbc, each seeing a held statement approved, denied and timed out.
"""

import asyncio
import os
import sqlite3
import ssl
import threading
import uuid

import asyncpg
import psycopg
import pytest

import harness
from test_admin import Console, idp  # noqa: F401 (fixture)
from test_jwt import start_oidc

RULES = """
HOLD DELETE, UPDATE ON public.{table} FOR GROUP agents;
BLOCK DESTRUCTIVE;
ALLOW ALL;
"""


@pytest.fixture
def table(admin):
    name = "held_" + uuid.uuid4().hex[:10]
    admin.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, v integer NOT NULL)")
    admin.execute(f"INSERT INTO {name} SELECT i, i FROM generate_series(1, 10) i")
    admin.execute(f"ALTER TABLE {name} OWNER TO {harness.APP_USER}")
    yield name
    admin.execute(f"DROP TABLE IF EXISTS {name}")


def held_console(pgveil_factory, idp, certs, workroot, table, hold_timeout):
    """A Console whose pgveil holds DELETE and UPDATE of table for agents (RULES); c.rules_path is the file."""
    path = harness.write_rules(workroot, "held", RULES.format(table=table))
    pv = start_oidc(pgveil_factory, idp, rules=path, default_action="block", hold_timeout=hold_timeout)
    c = Console(pv, idp, certs)
    c.rules_path = path
    return c


@pytest.fixture
def hc(pgveil_factory, idp, certs, workroot, table):  # noqa: F811
    return held_console(pgveil_factory, idp, certs, workroot, table, "20s")


class Agent(threading.Thread):
    """Runs one statement as the agent in the background and keeps the outcome."""

    def __init__(self, c, sql, params=None, token=None):
        super().__init__(daemon=True)
        self.c, self.sql, self.params = c, sql, params
        self.token = token or c.agent
        self.notices, self.error, self.rows = [], None, None

    def run(self):
        try:
            with self.c.connect(self.token, dbname="app") as conn:
                conn.add_notice_handler(lambda d: self.notices.append(d.message_primary))
                cur = conn.execute(self.sql, self.params)
                self.rows = cur.rowcount
        except psycopg.Error as e:
            self.error = e


def wait_held(c, sql_part, timeout=15):
    def find():
        _, rows = c.query(c.approver, "SHOW HELD")
        return [r for r in rows if sql_part in r[3]]
    found = harness.wait_until(find, timeout, what="the statement to be held")
    return found[0]


def test_approve_runs_once(hc, table, admin):
    a = Agent(hc, f"DELETE FROM {table} WHERE id = 3")
    a.start()
    held = wait_held(hc, f"DELETE FROM {table}")
    hid, subject, database, sql, rule = held[0], held[1], held[2], held[3], held[4]
    assert subject == hc.agent_sub and database == "app" and sql == f"DELETE FROM {table} WHERE id = 3"
    assert rule == f"{hc.rules_path}:2"
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)  # not yet
    res = hc.psql(hc.approver, "-c", f"APPROVE {hid}")
    assert res.returncode == 0, res.stderr
    a.join(15)
    assert not a.is_alive() and a.error is None, a.error
    assert a.notices == [f"held for approval: id {hid}"]
    assert a.rows == 1
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (9,)
    _, rows = hc.query(hc.approver, "SHOW HELD")
    assert rows == []
    res = hc.psql(hc.approver, "-c", f"APPROVE {hid}")  # a second approval runs nothing
    assert res.returncode != 0 and "already approved" in res.stderr
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (9,)


def test_deny(hc, table, admin):
    # extended protocol: held at Bind; the approver sees the parameters (%t: text format, %b: binary)
    a = Agent(hc, f"UPDATE {table} SET v = %b WHERE id = %t", (0, 4))
    a.start()
    held = wait_held(hc, f"UPDATE {table}")
    assert held[3] == (f"UPDATE {table} SET v = $1 WHERE id = $2\n"
                       "-- $1 = (binary, 2 bytes) '\\x0000'\n-- $2 = '4'"), held[3]
    res = hc.psql(hc.approver, "-c", f"DENY {held[0]} REASON 'not during business hours'")
    assert res.returncode == 0, res.stderr
    a.join(15)
    assert isinstance(a.error, psycopg.errors.InsufficientPrivilege), a.error
    assert "not during business hours" in str(a.error)
    assert admin.execute(f"SELECT v FROM {table} WHERE id = 4").fetchone() == (4,)


def test_timeout(pgveil_factory, idp, certs, workroot, table, admin):  # noqa: F811
    c = held_console(pgveil_factory, idp, certs, workroot, table, "1s")
    a = Agent(c, f"DELETE FROM {table} WHERE id = 5")
    a.start()
    a.join(15)
    assert isinstance(a.error, psycopg.errors.QueryCanceled), a.error
    _, rows = c.query(c.approver, "SHOW HELD")
    assert rows == []
    res = c.psql(c.approver, "-c", "APPROVE 1")
    assert res.returncode != 0 and "timed out" in res.stderr
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_audit_log_joins_statement_and_approval(pgveil_factory, idp, certs, workroot, table, admin):  # noqa: F811
    """The audit log links a held statement's row and its approval both ways, so
    the auditors' join of doc/admin-console.md finds the denied statement."""
    path = os.path.join(workroot, f"held-{uuid.uuid4().hex[:8]}.rules")
    with open(path, "w") as f:
        f.write(RULES.format(table=table))
    db = os.path.join(workroot, f"held-{uuid.uuid4().hex[:8]}.db")
    pv = start_oidc(pgveil_factory, idp, rules=path, default_action="block", hold_timeout="20s", audit_db=db)
    c = Console(pv, idp, certs)
    a = Agent(c, f"DELETE FROM {table} WHERE id = 6")
    a.start()
    held = wait_held(c, f"DELETE FROM {table}")
    res = c.psql(c.approver, "-c", f"DENY {held[0]} REASON 'not now'")
    assert res.returncode == 0, res.stderr
    a.join(15)
    assert isinstance(a.error, psycopg.errors.InsufficientPrivilege), a.error
    assert pv.stop() == 0  # every queued row is written
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT q.sql, q.decision, q.approval_id, a.id, a.decided_by, a.reason"
                            " FROM approvals a JOIN queries q ON q.id = a.query_id"
                            " WHERE a.decision = 'deny'").fetchall()
    finally:
        conn.close()
    assert len(rows) == 1, rows
    assert rows[0][:4] == (f"DELETE FROM {table} WHERE id = 6", "deny", held[0], held[0])
    assert rows[0][4].startswith("appr-") and rows[0][5] == "not now", rows


def test_agent_cannot_approve_itself(hc, table, admin, idp):  # noqa: F811
    """An agent that is also an approver still cannot release its own statement."""
    both = idp.mint("rsa", "rsa-1", "dual-" + uuid.uuid4().hex[:6], groups="agents,dba")
    a = Agent(hc, f"DELETE FROM {table} WHERE id = 6", token=both)
    a.start()
    held = wait_held(hc, f"DELETE FROM {table} WHERE id = 6")
    res = hc.psql(both, "-c", f"APPROVE {held[0]}")
    assert res.returncode != 0 and "own statements" in res.stderr
    hc.psql(hc.approver, "-c", f"DENY {held[0]}")
    a.join(15)
    assert isinstance(a.error, psycopg.errors.InsufficientPrivilege)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_grant_covers_same_rule_and_tables(hc, table, admin):
    a = Agent(hc, f"DELETE FROM {table} WHERE id = 7")
    a.start()
    held = wait_held(hc, f"DELETE FROM {table}")
    assert hc.psql(hc.approver, "-c", f"APPROVE {held[0]} FOR 10 MINUTES").returncode == 0
    a.join(15)
    assert a.error is None
    cols, rows = hc.query(hc.approver, "SHOW GRANTS")
    assert len(rows) == 1 and rows[0][cols.index("subject")] == hc.agent_sub
    # the same agent, the same rule, the same table: runs at once
    with hc.connect(hc.agent, dbname="app") as conn:
        conn.execute(f"UPDATE {table} SET v = 100 WHERE id = 8")
    assert admin.execute(f"SELECT v FROM {table} WHERE id = 8").fetchone() == (100,)
    # another agent is not covered
    b = Agent(hc, f"DELETE FROM {table} WHERE id = 9", token=hc.other)
    b.start()
    held = wait_held(hc, f"DELETE FROM {table} WHERE id = 9")
    assert held[1] == hc.other_sub
    assert hc.psql(hc.approver, "-c", f"REVOKE GRANT {rows[0][0]}; DENY {held[0]}").returncode == 0
    b.join(15)
    assert isinstance(b.error, psycopg.errors.InsufficientPrivilege)
    # after REVOKE GRANT the first agent waits again
    c2 = Agent(hc, f"DELETE FROM {table} WHERE id = 10")
    c2.start()
    held = wait_held(hc, f"DELETE FROM {table} WHERE id = 10")
    hc.psql(hc.approver, "-c", f"DENY {held[0]}")
    c2.join(15)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (9,)


def test_held_transaction_state(hc, table, admin):
    """Denied inside a transaction block: the block is aborted, like any error."""
    done = {}

    def run():
        with psycopg.connect(hc.conninfo(hc.agent, dbname="app")) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (50, 50)")
            try:
                conn.execute(f"DELETE FROM {table} WHERE id = 1")
            except psycopg.Error as e:
                done["error"] = e
            done["status"] = conn.info.transaction_status
            conn.rollback()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    held = wait_held(hc, f"DELETE FROM {table} WHERE id = 1")
    hc.psql(hc.approver, "-c", f"DENY {held[0]}")
    th.join(15)
    assert isinstance(done["error"], psycopg.errors.InsufficientPrivilege)
    assert done["status"] == psycopg.pq.TransactionStatus.INERROR
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_approved_query_prepares(hc, table, admin):
    """An approved Query that re-PREPAREs a name counts like any forwarded one:
    a later EXECUTE of the new body is held again, in the same session."""
    out = {}

    def run():
        with hc.connect(hc.agent, dbname="app") as conn:
            conn.execute("PREPARE s AS SELECT 1", prepare=False)
            conn.execute(f"DEALLOCATE s; PREPARE s AS DELETE FROM {table} WHERE id = $1", prepare=False)
            try:
                conn.execute("EXECUTE s(2)", prepare=False)
            except psycopg.Error as e:
                out["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    held = wait_held(hc, "PREPARE s AS DELETE")
    assert hc.psql(hc.approver, "-c", f"APPROVE {held[0]}").returncode == 0
    held = wait_held(hc, "EXECUTE s(2)")
    assert hc.psql(hc.approver, "-c", f"DENY {held[0]}").returncode == 0
    th.join(15)
    assert isinstance(out.get("error"), psycopg.errors.InsufficientPrivilege), out
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_approved_copy_is_masked(pgveil_factory, idp, certs, workroot, table):  # noqa: F811
    """An approved COPY ... TO STDOUT gets its masks from its statement like any other: v masked, id as it is."""
    path = harness.write_rules(workroot, "held", f"MASK public.{table}.v USING constant('7');\nHOLD COPY;\nALLOW ALL;\n")
    pv = start_oidc(pgveil_factory, idp, rules=path, default_action="block", hold_timeout="20s")
    c = Console(pv, idp, certs)
    out = {}

    def agent():
        out["res"] = c.psql(c.agent, "-At", "-c", f"COPY (SELECT id, v FROM {table} ORDER BY id) TO STDOUT",
                            dbname="app")

    t = threading.Thread(target=agent, daemon=True)
    t.start()
    held = wait_held(c, "COPY")
    res = c.psql(c.approver, "-c", f"APPROVE {held[0]}")
    assert res.returncode == 0, res.stderr
    t.join(15)
    assert out["res"].returncode == 0, out["res"].stderr
    assert out["res"].stdout.split("\n")[:10] == [f"{i}\t7" for i in range(1, 11)]


# ------------------------------------------------------------------ grants and tables pgveil cannot know

def approved_once_without_grant(pgveil_factory, idp, certs, workroot, rules, sql, needle):  # noqa: F811
    """Holds `sql` under `rules`, approves it FOR 10 MINUTES, and checks that it ran once and
    no grant was made from it (saying so to the approver). Returns the console."""
    path = harness.write_rules(workroot, "held-once", rules)
    pv = start_oidc(pgveil_factory, idp, rules=path, default_action="block", hold_timeout="20s")
    c = Console(pv, idp, certs)
    a = Agent(c, sql)
    a.start()
    held = wait_held(c, needle)
    res = c.psql(c.approver, "-c", f"APPROVE {held[0]} FOR 10 MINUTES")
    assert res.returncode == 0, res.stderr
    assert f"no grant made from statement {held[0]}, approved once" in res.stderr, res.stderr
    a.join(15)
    assert a.error is None, a.error
    assert c.query(c.approver, "SHOW GRANTS")[1] == []
    return c


def test_grant_never_made_from_a_do_block(pgveil_factory, idp, certs, workroot, table, admin):  # noqa: F811
    """APPROVE ... FOR of a DO block approves it once: a DO block's tables cannot be
    known, so a grant from one would let any other DO block through."""
    c = approved_once_without_grant(pgveil_factory, idp, certs, workroot,
                                    "HOLD WRITE, PROCEDURAL FOR GROUP agents;\nALLOW ALL;\n",
                                    "DO $$ BEGIN PERFORM 1; END $$", "PERFORM 1")
    # the next DO block waits for its own approval
    b = Agent(c, f"DO $$ BEGIN DELETE FROM public.{table}; END $$")
    b.start()
    held = wait_held(c, f"DELETE FROM public.{table}")
    assert c.psql(c.approver, "-c", f"DENY {held[0]}").returncode == 0
    b.join(15)
    assert isinstance(b.error, psycopg.errors.InsufficientPrivilege), b.error
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_grant_from_a_tableless_statement_covers_only_that_statement(pgveil_factory, idp, certs, workroot):  # noqa: F811
    """APPROVE ... FOR of a statement touching no table (ANALYZE) covers ANALYZE
    again, not another statement of the same rule that touches no table."""
    path = harness.write_rules(workroot, "held-admin", "HOLD ADMIN FOR GROUP agents;\nALLOW ALL;\n")
    pv = start_oidc(pgveil_factory, idp, rules=path, default_action="block", hold_timeout="20s")
    c = Console(pv, idp, certs)
    a = Agent(c, "ANALYZE")
    a.start()
    held = wait_held(c, "ANALYZE")
    res = c.psql(c.approver, "-c", f"APPROVE {held[0]} FOR 10 MINUTES")
    assert res.returncode == 0, res.stderr
    a.join(30)
    assert a.error is None, a.error
    assert len(c.query(c.approver, "SHOW GRANTS")[1]) == 1
    # the same statement again runs under the grant, without a hold
    again = Agent(c, "analyze")
    again.start()
    again.join(30)
    assert again.error is None and not any("held" in n for n in again.notices), (again.error, again.notices)
    # another statement of the same rule touching no table waits for its own approval
    b = Agent(c, "VACUUM")
    b.start()
    held = wait_held(c, "VACUUM")
    assert c.psql(c.approver, "-c", f"DENY {held[0]}").returncode == 0
    b.join(15)
    assert isinstance(b.error, psycopg.errors.InsufficientPrivilege), b.error


def test_grant_never_made_when_literals_decide(pgveil_factory, idp, certs, workroot):  # noqa: F811
    """set_config('work_mem', ...) and set_config('role', ...) share a fingerprint: a grant
    from the first would cover the second, so none is made."""
    approved_once_without_grant(pgveil_factory, idp, certs, workroot, "HOLD ALL FOR GROUP agents;\n",
                                "SELECT set_config('work_mem', '8MB', false)", "work_mem")


@pytest.fixture
def secret_twin(admin, table):
    """secret.<table>: the same name as the held table, in another schema."""
    admin.execute("CREATE SCHEMA IF NOT EXISTS secret")
    admin.execute(f"GRANT USAGE ON SCHEMA secret TO {harness.APP_USER}")
    admin.execute(f"CREATE TABLE secret.{table} (id integer PRIMARY KEY, v integer NOT NULL)")
    admin.execute(f"INSERT INTO secret.{table} SELECT i, i FROM generate_series(1, 10) i")
    admin.execute(f"ALTER TABLE secret.{table} OWNER TO {harness.APP_USER}")
    yield f"secret.{table}"
    admin.execute(f"DROP TABLE IF EXISTS secret.{table}")


def test_grant_not_used_after_search_path_changes(hc, table, secret_twin, admin):
    """A grant names tables as the statement wrote them; once the session changes
    its search_path, an unqualified name may be another schema's table."""
    a = Agent(hc, f"UPDATE {table} SET v = 0 WHERE id = 1")
    a.start()
    held = wait_held(hc, f"UPDATE {table} SET v = 0 WHERE id = 1")
    assert hc.psql(hc.approver, "-c", f"APPROVE {held[0]} FOR 10 MINUTES").returncode == 0
    a.join(15)
    assert a.error is None, a.error
    out = {}

    def run():
        with hc.connect(hc.agent, dbname="app") as conn:
            conn.execute(f"UPDATE {table} SET v = 0 WHERE id = 2")  # covered by the grant
            conn.execute("SET search_path = secret, public")
            try:
                conn.execute(f"UPDATE {table} SET v = 0 WHERE id = 3")
            except psycopg.Error as e:
                out["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    held = wait_held(hc, f"UPDATE {table} SET v = 0 WHERE id = 3")
    res = hc.psql(hc.approver, "-c", f"DENY {held[0]}")
    assert res.returncode == 0, res.stderr
    th.join(15)
    assert isinstance(out.get("error"), psycopg.errors.InsufficientPrivilege), out
    assert admin.execute(f"SELECT v FROM {secret_twin} ORDER BY id").fetchall() == [(i,) for i in range(1, 11)]
    assert admin.execute(f"SELECT id FROM {table} WHERE v = 0 ORDER BY id").fetchall() == [(1,), (2,)]


# ------------------------------------------------------------------ other drivers

def decide_in_turn(c, steps):
    """Starts a thread deciding the agent's held statements in order: steps of (text
    the statement contains, console command with {id}). Returns the thread and the ids."""
    ids = []

    def run():
        for part, command in steps:
            hid = wait_held(c, part)[0]
            ids.append(hid)
            res = c.psql(c.approver, "-c", command.format(id=hid))
            assert res.returncode == 0, res.stderr

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, ids


DRIVER_STEPS = [("WHERE id = 1", "APPROVE {id}"), ("WHERE id = $1", "DENY {id} REASON 'not this one'")]


@pytest.fixture
def quick(pgveil_factory, idp, certs, workroot, table):  # noqa: F811
    """hold_timeout is short: the third statement of each driver times out."""
    return held_console(pgveil_factory, idp, certs, workroot, table, "3s")


def agent_target(c):
    return harness.Target("pgveil-oidc", "127.0.0.1", c.pv.port, "whoever", c.agent)


def check_driver_outcome(admin, table, ids, notices):
    assert len(ids) == 2
    assert notices[:2] == [f"held for approval: id {i}" for i in ids], notices
    assert len(notices) == 3 and notices[2].startswith("held for approval: id "), notices
    assert admin.execute(f"SELECT id, v FROM {table} WHERE id <= 3 ORDER BY id").fetchall() == [(2, 2), (3, 3)]


def test_asyncpg_hold(quick, table, admin):
    c = quick
    th, ids = decide_in_turn(c, DRIVER_STEPS)
    notices = []

    async def main():
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = await asyncpg.connect(host="127.0.0.1", port=c.pv.port, user="whoever", password=c.agent,
                                     database="app", ssl=ctx)
        conn.add_log_listener(lambda _conn, msg: notices.append(msg.message))
        try:
            assert await conn.execute(f"DELETE FROM {table} WHERE id = 1") == "DELETE 1"
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as exc:
                await conn.execute(f"DELETE FROM {table} WHERE id = $1", 2)  # held at Bind
            assert "not this one" in str(exc.value)
            with pytest.raises(asyncpg.exceptions.QueryCanceledError):
                await conn.execute(f"UPDATE {table} SET v = 0 WHERE id = 3")
            assert await conn.fetchval("SELECT 'usable'") == "usable"
        finally:
            await conn.close()

    asyncio.run(main())
    th.join(15)
    check_driver_outcome(admin, table, ids, notices)


def test_node_hold(node_driver, quick, table, admin):
    import test_node
    c = quick
    th, ids = decide_in_turn(c, DRIVER_STEPS)
    out = test_node.node(node_driver, "hold.js", agent_target(c), ITEST_TABLE=table)
    th.join(15)
    assert "not this one" in out["denied"] and out["ok"] == "usable", out
    check_driver_outcome(admin, table, ids, out["notices"])


def test_jdbc_hold(java_driver, quick, table, admin):
    import test_jdbc
    c = quick
    th, ids = decide_in_turn(c, DRIVER_STEPS)
    status, detail = test_jdbc.run_java(java_driver, agent_target(c), ["hold"], ITEST_TABLE=table)["hold"]
    th.join(15)
    assert status == "PASS", detail
    # pgjdbc hands notices to the statement as warnings: the approved one's is kept
    assert ids and detail.splitlines() == [f"held for approval: id {ids[0]}"], detail
    assert admin.execute(f"SELECT id, v FROM {table} WHERE id <= 3 ORDER BY id").fetchall() == [(2, 2), (3, 3)]
