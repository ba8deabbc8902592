"""The admin console: the virtual database admin_db ("pgveil"), reached with a
token whose groups include an admin, approver or auditor group.

Driven with real psql (aligned and unaligned output, errors with LINE/caret),
psycopg 3 (simple query protocol, autocommit) and the raw protocol client
(SQLSTATEs of refused logins, the extended protocol refused). Agents log in
with their own tokens to the real database "app"; the console lists their
sessions, ends one with KILL SESSION (57P01 reaches the client, a statement
running on the server is canceled), and BLOCK AGENT ends all of an agent's
sessions at once and refuses its logins until UNBLOCK AGENT or the block
expires. RELOAD re-reads the configuration like SIGHUP.

Held statements end to end (APPROVE, DENY, APPROVE ... FOR grants, timeouts,
through psycopg, asyncpg, node-postgres and pgjdbc) are tested in
test_approvals.py; the console's side of them also in the unit tests
(tests/unit/test_admin.c, test_approval.c).
"""

import os
import re
import subprocess
import time
import uuid

import psycopg
import pytest

import harness
import pgwire
from test_jwt import Idp, conninfo, start_oidc
from test_jwt import wire as token_wire

ADMIN_DB = "pgveil"


def wire(pv, certs, token, database="app", **params):
    """Raw protocol login over TLS with the token as cleartext password."""
    return token_wire(pv, certs, token, user="whoever", database=database, **params)


@pytest.fixture(scope="module")
def idp(workroot, pgveil_bin):
    tool = os.path.join(os.path.dirname(pgveil_bin), "pgveil-token")
    i = Idp(os.path.join(workroot, f"idp-admin-{uuid.uuid4().hex[:8]}"), tool)
    i.genkey("rsa", "rsa")
    i.jwks_path = i.write_jwks("jwks.json", ("rsa", "rsa-1"))
    return i


class Console:
    """A pgveil with [oidc] and tokens for each kind of caller."""

    def __init__(self, pv, idp, certs):
        self.pv = pv
        self.idp = idp
        self.certs = certs
        suffix = uuid.uuid4().hex[:6]
        self.admin_sub = f"root-{suffix}"
        self.admin = idp.mint("rsa", "rsa-1", self.admin_sub, groups="pgveil-admins")
        self.approver = idp.mint("rsa", "rsa-1", f"appr-{suffix}", groups="dba")
        self.auditor_sub = f"aud-{suffix}"
        self.auditor = idp.mint("rsa", "rsa-1", self.auditor_sub, groups="audit,readers")
        self.nobody = idp.mint("rsa", "rsa-1", f"nobody-{suffix}", groups="readers")
        self.agent_sub = f"ci-bot-{suffix}"
        self.agent = idp.mint("rsa", "rsa-1", self.agent_sub, groups="agents")
        self.other_sub = f"other-bot-{suffix}"
        self.other = idp.mint("rsa", "rsa-1", self.other_sub, groups="agents")

    def conninfo(self, token, dbname=ADMIN_DB, **kw):
        return conninfo(self.pv, token, user="whoever", dbname=dbname, **kw)

    def connect(self, token, dbname=ADMIN_DB, **kw):
        return psycopg.connect(self.conninfo(token, dbname, **kw), autocommit=True)

    def psql(self, token, *args, dbname=ADMIN_DB, stop_on_error=True):
        cmd = ["psql", "-X", "-w", "-d", self.conninfo(token, dbname)]
        if stop_on_error:
            cmd += ["-v", "ON_ERROR_STOP=1"]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60,
                              env=harness.clean_env())

    def query(self, token, sql):
        with self.connect(token) as conn:
            cur = conn.execute(sql)
            return [d.name for d in cur.description], cur.fetchall()


@pytest.fixture
def console(pgveil_factory, idp, certs):
    pv = start_oidc(pgveil_factory, idp)
    return Console(pv, idp, certs)


def sessions_by_id(c):
    cols, rows = c.query(c.admin, "SHOW SESSIONS")
    assert cols == ["id", "subject", "database", "client_addr", "started_at", "state"]
    return {r[0]: dict(zip(cols, r)) for r in rows}


def session_ids_of(c, subject):
    return sorted(i for i, s in sessions_by_id(c).items() if s["subject"] == subject)


# --------------------------------------------------------------------------- psql

def test_psql_shows_tables(console):
    """Every SHOW is a proper table in psql, aligned and unaligned."""
    c = console
    res = c.psql(c.admin, "-A", "-c", "SHOW HELD")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["id|subject|database|sql|rule|held_at|waiting_s|session", "(0 rows)"]

    res = c.psql(c.approver, "-c", "SHOW STATS")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.rstrip("\n").splitlines()
    assert re.match(r"^\s+name\s+\|\s+value\s*$", lines[0]), lines
    assert re.match(r"^-+\+-+$", lines[1]), lines
    stats = dict(re.match(r"^\s*(\S+)\s+\|\s+(\d+)\s*$", line).groups() for line in lines[2:-1])
    assert lines[-1] == f"({len(stats)} rows)"
    for name in ("statements", "allowed", "blocked", "held", "approved", "denied", "timed_out", "granted",
                 "cache_hits", "connections", "sessions", "held_waiting", "grants_active", "agents_blocked"):
        assert name in stats, (name, stats)
    assert int(stats["sessions"]) >= 1  # this console itself
    assert int(stats["connections"]) >= 1

    # several commands in one string, psql -c sends them as one Query
    res = c.psql(c.auditor, "-A", "-t", "-c", "SHOW GRANTS; SHOW RULES; SHOW BLOCKED")
    assert res.returncode == 0, res.stderr
    # the harness runs with default_action = allow
    assert res.stdout.splitlines() == ["default_action|allow|default_action = allow"], res.stdout
    assert "no rules are loaded" in res.stderr  # the NOTICE

    res = c.psql(c.auditor, "-A", "-c", "SHOW SESSIONS")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header == "id|subject|database|client_addr|started_at|state"
    mine = [r.split("|") for r in rows if r.split("|")[1:2] == [c.auditor_sub]]
    assert len(mine) == 1 and mine[0][2] == ADMIN_DB and mine[0][5] == "admin", rows
    assert mine[0][3].startswith("127.0.0.1:")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00", mine[0][4])


def test_psql_errors(console):
    """Errors reach psql with SQLSTATE and, for syntax errors, the position psql points at."""
    c = console
    res = c.psql(c.admin, "-c", "SHOW HELDX")
    assert res.returncode != 0
    assert 'ERROR:  syntax error at or near "HELDX"' in res.stderr, res.stderr
    assert "LINE 1: SHOW HELDX\n             ^" in res.stderr, res.stderr

    res = c.psql(c.approver, "-v", "VERBOSITY=verbose", "-c", "KILL SESSION 1")
    assert res.returncode != 0
    assert "ERROR:  42501: KILL SESSION needs the admin group" in res.stderr, res.stderr

    res = c.psql(c.auditor, "-v", "VERBOSITY=verbose", "-c", "APPROVE 1")
    assert "ERROR:  42501: APPROVE needs the approver or admin group" in res.stderr, res.stderr

    res = c.psql(c.approver, "-v", "VERBOSITY=verbose", "-c", "APPROVE 4242")
    assert "ERROR:  42704: no held statement 4242" in res.stderr, res.stderr

    res = c.psql(c.auditor, "-v", "VERBOSITY=verbose", "-c", "SELECT * FROM queries")
    assert "ERROR:  0A000: the audit log is not available" in res.stderr, res.stderr

    # a script goes on after an error unless ON_ERROR_STOP: the console stays usable
    res = c.psql(c.admin, "-A", "-t", "-c", "SHOW NOTHING", "-c", "SHOW BLOCKED", "-c", "SHOW HELD",
                 stop_on_error=False)
    assert 'syntax error at or near "NOTHING"' in res.stderr
    assert res.stdout == ""
    assert res.returncode == 0


def test_logins_by_role(console):
    """Only members of an admin, approver or auditor group get in; each sees its commands."""
    c = console
    fields = pytest.raises(pgwire.PgError, wire, c.pv, c.certs, c.nobody, database=ADMIN_DB)
    assert fields.value.fields["C"] == "28000"
    assert fields.value.fields["M"] == "not a member of an admin, approver or auditor group"
    res = c.psql(c.nobody, "-c", "SHOW HELD")
    assert res.returncode != 0 and "not a member of an admin, approver or auditor group" in res.stderr

    # an agent token gets no console either, but its database still works
    with pytest.raises(pgwire.PgError) as ei:
        wire(c.pv, c.certs, c.agent, database=ADMIN_DB)
    assert ei.value.fields["C"] == "28000"
    with c.connect(c.agent, dbname="app") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    for token, allowed, refused in (
            (c.admin, ["SHOW HELD", "SHOW SESSIONS", "SHOW GRANTS", "SHOW BLOCKED"], []),
            (c.approver, ["SHOW HELD", "SHOW GRANTS", "SHOW RULES", "SHOW STATS"],
             ["SHOW SESSIONS", "KILL SESSION 1", "BLOCK AGENT 'x'", "UNBLOCK AGENT 'x'", "RELOAD"]),
            (c.auditor, ["SHOW HELD", "SHOW GRANTS", "SHOW SESSIONS", "SHOW RULES", "SHOW STATS"],
             ["APPROVE 1", "DENY 1", "REVOKE GRANT 1", "KILL SESSION 1", "BLOCK AGENT 'x'", "RELOAD"])):
        with c.connect(token) as conn:
            assert conn.info.parameter_status("server_version").startswith("15.0")
            assert conn.info.parameter_status("client_encoding") == "UTF8"
            for sql in allowed:
                conn.execute(sql).fetchall()
            for sql in refused:
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="needs the"):
                    conn.execute(sql)
            # the connection stays usable after each refusal
            assert conn.execute("SHOW HELD").fetchall() == []


def test_console_protocol_details(console):
    """Extended protocol refused (then usable again), empty query, no transactions, Terminate."""
    c = console
    with c.connect(c.admin) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="simple query protocol"):
            conn.execute("SHOW HELD", prepare=True)
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="simple query protocol"):
            conn.execute("APPROVE %s", [1])
        assert conn.execute("SHOW HELD").fetchall() == []
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="no transactions"):
            conn.execute("BEGIN")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # raw: Parse/Bind/Execute/Sync gets one error and one ReadyForQuery
    with wire(c.pv, c.certs, c.admin, database=ADMIN_DB) as w:
        assert w.params["server_encoding"] == "UTF8"
        assert w.backend_key is not None
        w.send(pgwire.parse_msg("", "SHOW HELD") + pgwire.bind_msg("", "") + pgwire.execute_msg("") + pgwire.SYNC)
        msgs = w.read_until_ready()
        assert [m[0] for m in msgs] == [b"E", b"Z"]
        assert pgwire.parse_fields(msgs[0][1])["C"] == "0A000"
        rows, tags, err = w.simple_query("")
        assert (rows, tags, err) == ([], [], None)
        rows, tags, err = w.simple_query("SHOW BLOCKED; SHOW GRANTS")
        assert err is None and tags == ["SHOW 0", "SHOW 0"]
        # a CancelRequest with the console's key does nothing harmful
        pgwire.send_cancel("127.0.0.1", c.pv.port, *w.backend_key)
        rows, tags, err = w.simple_query("SHOW HELD")
        assert err is None and tags == ["SHOW 0"]
        w.send(pgwire.TERMINATE)
        assert w.peer_closed(5)


def test_console_needs_tokens(pgveil):
    """Under dev_trust_auth nobody can be told apart: the console is refused."""
    with pytest.raises(pgwire.PgError) as ei:
        pgwire.connect("127.0.0.1", pgveil.port, user="agent-7", database=ADMIN_DB)
    assert ei.value.fields["C"] == "28000"
    assert "the admin console needs token authentication" in ei.value.fields["M"]
    # the proxied database still works
    with pgwire.connect("127.0.0.1", pgveil.port, user="agent-7", database="app") as w:
        assert w.simple_query("SELECT 1")[0] == [[b"1"]]


# --------------------------------------------------------------------------- sessions

def test_show_sessions_and_kill(console, admin):
    c = console
    idle = c.connect(c.agent, dbname="app")
    in_txn = c.connect(c.agent, dbname="app")
    in_txn.execute("BEGIN")
    in_txn.execute("SELECT 1")
    other = c.connect(c.other, dbname="app")
    try:
        sessions = sessions_by_id(c)
        mine = {i: s for i, s in sessions.items() if s["subject"] == c.agent_sub}
        assert len(mine) == 2
        assert sorted(s["state"] for s in mine.values()) == ["idle", "idle in transaction"]
        assert all(s["database"] == "app" for s in mine.values())
        idle_id = [i for i, s in mine.items() if s["state"] == "idle"][0]
        txn_id = [i for i, s in mine.items() if s["state"] == "idle in transaction"][0]

        # KILL SESSION ends exactly that session with 57P01
        with c.connect(c.admin) as conn:
            cur = conn.execute(f"KILL SESSION {idle_id}")
            assert cur.statusmessage == "KILL SESSION"
        with pytest.raises(psycopg.OperationalError, match="terminated by administrator command") as ei:
            idle.execute("SELECT 1")
        assert ei.value.sqlstate in ("57P01", None)  # libpq may report the closed socket instead
        harness.wait_until(lambda: idle_id not in sessions_by_id(c), 10, what="the killed session to go")

        # inside a transaction too; the server rolls back
        with c.connect(c.admin) as conn:
            conn.execute(f"KILL SESSION {txn_id}")
        with pytest.raises(psycopg.OperationalError):
            in_txn.execute("SELECT 1")
        assert other.execute("SELECT 2").fetchone() == (2,)

        # unknown ids are an error, not a silent success
        with c.connect(c.admin) as conn:
            with pytest.raises(psycopg.errors.UndefinedObject, match=f"no session {idle_id}"):
                conn.execute(f"KILL SESSION {idle_id}")
    finally:
        for conn in (idle, in_txn, other):
            conn.close()


def test_kill_cancels_a_running_statement(console, admin, certs):
    """A session killed while its statement runs: the client gets 57P01 at once
    and the server stops the statement (pgveil cancels it)."""
    c = console
    with wire(c.pv, certs, c.agent) as w:
        w.send(pgwire.query_message("SELECT pg_sleep(60)"))
        harness.wait_until(lambda: admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'"
        ).fetchone()[0] == 1, 15, what="the statement to run")
        [sid] = session_ids_of(c, c.agent_sub)
        assert sessions_by_id(c)[sid]["state"] == "active"
        t0 = time.monotonic()
        with c.connect(c.admin) as conn:
            conn.execute(f"KILL SESSION {sid}")
        msgs = w.read_until_closed(timeout=10)
        assert time.monotonic() - t0 < 5
        errors = [pgwire.parse_fields(p) for t, p in msgs if t == b"E"]
        assert errors and errors[-1]["S"] == "FATAL" and errors[-1]["C"] == "57P01"
        assert errors[-1]["M"] == "terminated by administrator command"
    harness.wait_until(lambda: admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'").fetchone()[0] == 0,
        15, what="the server to stop the statement")


# --------------------------------------------------------------------------- blocked agents

def test_block_agent_ends_sessions_and_refuses_logins(console, certs):
    c = console
    conns = [c.connect(c.agent, dbname="app") for _ in range(2)]
    raw = wire(c.pv, certs, c.agent)
    other = c.connect(c.other, dbname="app")
    try:
        assert len(session_ids_of(c, c.agent_sub)) == 3
        with c.connect(c.admin) as conn:
            notices = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary))
            cur = conn.execute(f"BLOCK AGENT '{c.agent_sub}'")
            assert cur.statusmessage == "BLOCK AGENT"
            assert notices == [f"agent {c.agent_sub} is blocked until UNBLOCK AGENT; 3 sessions are being ended"]
            assert conn.execute("SHOW BLOCKED").fetchall() == [(c.agent_sub, None)]
        # every session of the agent ends at once, without the client sending anything
        msgs = raw.read_until_closed(timeout=10)
        fatal = [pgwire.parse_fields(p) for t, p in msgs if t == b"E"][-1]
        assert (fatal["C"], fatal["M"]) == ("57P01", "terminated by administrator command")
        for conn in conns:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        harness.wait_until(lambda: session_ids_of(c, c.agent_sub) == [], 10, what="sessions to end")
        # new logins are refused, to the database and the console alike
        fields = pytest.raises(pgwire.PgError, wire, c.pv, certs, c.agent).value.fields
        assert (fields["S"], fields["C"]) == ("FATAL", "28000")
        assert fields["M"] == f"agent {c.agent_sub} is blocked by an administrator"
        # other agents are untouched
        assert other.execute("SELECT 3").fetchone() == (3,)

        with c.connect(c.admin) as conn:
            conn.execute(f"UNBLOCK AGENT '{c.agent_sub}'")
            with pytest.raises(psycopg.errors.UndefinedObject, match="is not blocked"):
                conn.execute(f"UNBLOCK AGENT '{c.agent_sub}'")
        with c.connect(c.agent, dbname="app") as conn:
            assert conn.execute("SELECT 4").fetchone() == (4,)
    finally:
        raw.close()
        other.close()
        for conn in conns:
            conn.close()


def test_block_agent_for_a_while(console, certs):
    c = console
    with c.connect(c.admin) as conn:
        conn.execute(f"BLOCK AGENT '{c.agent_sub}' FOR 2 SECONDS")
        [(sub, until)] = conn.execute("SHOW BLOCKED").fetchall()
        assert sub == c.agent_sub and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00", until)
    t0 = time.monotonic()
    assert pytest.raises(pgwire.PgError, wire, c.pv, certs, c.agent).value.fields["C"] == "28000"

    def gets_in():
        try:
            with wire(c.pv, certs, c.agent) as w:
                return w.simple_query("SELECT 5")[0] == [[b"5"]]
        except pgwire.PgError as e:
            assert e.fields["C"] == "28000"
            return False

    harness.wait_until(gets_in, 10, interval=0.2, what="the block to expire")
    assert time.monotonic() - t0 >= 0.9
    with c.connect(c.admin) as conn:
        assert conn.execute("SHOW BLOCKED").fetchall() == []


# --------------------------------------------------------------------------- reload

def test_reload(console):
    c = console
    pv = c.pv
    # a database added to the file exists after RELOAD
    text = open(pv.conf_path).read().replace(
        "[databases]\n", "[databases]\napp_reloaded = " + harness.backend_conninfo(pv.cluster) + "\n")
    pv.write_config(text)
    mark = pv.log_size()
    with c.connect(c.admin) as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        assert conn.execute("RELOAD").statusmessage == "RELOAD"
        assert notices and notices[0].startswith("reload requested")
    harness.wait_until(lambda: "configuration reloaded" in pv.log_text(mark), 10, what="the reload")
    with c.connect(c.agent, dbname="app_reloaded") as conn:
        assert conn.execute("SELECT 6").fetchone() == (6,)
    # the approver may not reload
    with c.connect(c.approver) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="RELOAD needs the admin group"):
            conn.execute("RELOAD")


def test_reload_rechecks_open_consoles(console):
    """An open console loses a command as soon as a reload takes its group away."""
    c = console
    pv = c.pv
    with c.connect(c.approver) as conn:
        assert conn.execute("SHOW GRANTS").fetchall() == []
        text = open(pv.conf_path).read().replace("[pgveil]\n", "[pgveil]\napprover_groups = nobody-here\n", 1)
        pv.write_config(text)
        mark = pv.log_size()
        pv.reload()
        harness.wait_until(lambda: "configuration reloaded" in pv.log_text(mark), 10, what="the reload")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="needs the"):
            conn.execute("SHOW GRANTS")
