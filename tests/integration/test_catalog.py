"""The catalog thread, seen through the admin console's SHOW MASKS: pgveil
reads each [databases] entry's catalog on its own connection
(application_name pgveil:catalog) and works out which columns the MASK rules
reach: the named column, the same column of partitions and inheritance
children at any depth, view columns that copy it (derived = false) or are
computed from it (derived = true), views of views included; a domain-typed
column counts as its base type. Rules that cannot apply as written (a
missing column, a function that cannot mask the column's type) are shown
and logged. A reload re-reads every catalog under the new rules; a server
that is down is reported per database while pgveil keeps serving, and a
later load after the server is back works. With catalog_refresh the
catalog is read again on its own: a column renamed into a masked name is
masked within seconds, without a reload. User-defined functions are read
too: a call of a built-in's name that a user function has (version() with
public.version() defined) is refused for callers with masks, and a view
calling one counts as computed from every masked column. pgveil only.
"""

import os
import re
import uuid

import psycopg
import pytest

import harness
from test_admin import idp  # noqa: F401 (fixture)
from test_jwt import conninfo, connect, write_oidc_config

ADMIN_DB = "pgveil"
COLUMNS = ["database", "relation", "column", "rule", "function", "derived", "problem"]

SCHEMA = """
SET ROLE app_agent;
CREATE SCHEMA crm;
CREATE DOMAIN crm.email_base AS text CHECK (VALUE LIKE '%@%');
CREATE DOMAIN crm.email_addr AS crm.email_base;
CREATE TABLE crm.customers (
    id    integer PRIMARY KEY,
    email crm.email_addr NOT NULL,
    ssn   varchar(11),
    score integer,
    gone  text
);
ALTER TABLE crm.customers DROP COLUMN gone;
INSERT INTO crm.customers VALUES (1, 'ann@example.com', '123-45-6789', 7);
CREATE TABLE crm.events (id integer, at date NOT NULL, secret text) PARTITION BY RANGE (at);
CREATE TABLE crm.events_2024 PARTITION OF crm.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY RANGE (at);
CREATE TABLE crm.events_2024_h1 PARTITION OF crm.events_2024
    FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');
CREATE TABLE crm.notes (id integer, note text);
CREATE TABLE crm.notes_child (extra integer) INHERITS (crm.notes);
CREATE TABLE crm.notes_grandchild (more integer) INHERITS (crm.notes_child);
CREATE VIEW crm.contacts AS SELECT id, email, upper(email) AS shout FROM crm.customers;
CREATE VIEW crm.contacts_2 AS SELECT email AS mail, shout FROM crm.contacts;
RESET ROLE;
"""

RULES = """\
MASK crm.customers.email USING email();
MASK crm.customers.score USING hash(8);
MASK crm.customers.nope USING null();
MASK crm.events.secret USING redact();
MASK crm.notes.note USING partial(1, 'it''s', 1) UNLESS GROUP billing;
"""


class Veil:
    """A pgveil with [oidc], MASK rules in a file of its own, and console tokens."""

    def __init__(self, pgveil_factory, idp, pg, rules_text, databases=None, **settings):
        self.idp = idp
        self.pg = pg
        dbs = databases or {"app": harness.backend_conninfo(pg),
                            "app_badpw": harness.backend_conninfo(pg, password="wrong-password")}
        self.pv = pgveil_factory(start=False, tls=True, cluster_=pg, databases=dbs, **settings)
        self.rules = os.path.join(self.pv.dir, "masks.rules")
        self.write_rules(rules_text)
        self.pv.settings["rules"] = self.rules
        key = os.path.join(self.pv.dir, "mask.key")  # the rules use hash()
        with open(key, "w") as f:
            f.write("0123456789abcdef" * 4 + "\n")
        os.chmod(key, 0o600)
        self.pv.settings["mask_key_file"] = key
        self.write_config()
        suffix = uuid.uuid4().hex[:6]
        self.admin = idp.mint("rsa", "rsa-1", f"root-{suffix}", groups="pgveil-admins")
        self.auditor = idp.mint("rsa", "rsa-1", f"aud-{suffix}", groups="audit")
        self.approver = idp.mint("rsa", "rsa-1", f"appr-{suffix}", groups="dba")
        self.pv.start()

    def write_config(self):
        write_oidc_config(self.pv, self.idp)

    def write_rules(self, text):
        with open(self.rules + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.rules + ".tmp", self.rules)

    def where(self, line):
        return f"{self.rules}:{line}"

    def connect(self, token):
        return connect(self.pv, token, user="whoever", dbname=ADMIN_DB)

    def agent(self, groups="agents"):
        """A connection of an agent (every rule of RULES applies to it) to database app."""
        token = self.idp.mint("rsa", "rsa-1", f"agent-{uuid.uuid4().hex[:6]}", groups=groups)
        return connect(self.pv, token, user="a")

    def show_masks(self, token=None):
        with self.connect(token or self.admin) as conn:
            cur = conn.execute("SHOW MASKS")
            assert [d.name for d in cur.description] == COLUMNS
            return [dict(zip(COLUMNS, r)) for r in cur.fetchall()]

    def rows_of(self, database="app"):
        return [r for r in self.show_masks() if r["database"] == database]

    def reached(self, database="app"):
        """{(relation, column): (rule, function, derived, problem)} of the columns masks reach."""
        return {(r["relation"], r["column"]): (r["rule"], r["function"], r["derived"], r["problem"])
                for r in self.rows_of(database) if r["derived"] is not None}

    def wait_loaded(self, database="app", timeout=30):
        """Waits until the database's catalog is read (or its failure reported); returns its rows."""
        out = {}

        def loaded():
            rows = self.rows_of(database)
            out["rows"] = rows
            return rows and not any(r["problem"] == "the catalog has not been read yet" for r in rows)

        harness.wait_until(loaded, timeout, what=f"the catalog of {database}")
        return out["rows"]

    def reload_and_wait(self, pred, timeout=30, what="the reload"):
        mark = self.pv.log_size()
        self.pv.reload()
        harness.wait_until(lambda: "configuration reloaded" in self.pv.log_text(mark), 15, what="the reload")
        harness.wait_until(pred, timeout, what=what)
        return mark


@pytest.fixture
def pg(cluster_factory):
    c = cluster_factory(big_rows=10)
    c.psql_admin(SCHEMA)
    return c


def catalog_backends(pg):
    rows = pg.psql_admin("SELECT datname || ' ' || usename FROM pg_stat_activity "
                         "WHERE application_name = 'pgveil:catalog' ORDER BY 1")
    return [line for line in rows.splitlines() if line]


def test_masks_reach_partitions_children_views(pgveil_factory, idp, pg):
    v = Veil(pgveil_factory, idp, pg, RULES)
    v.wait_loaded()
    got = v.reached()
    email, score, secret, note = v.where(1), v.where(2), v.where(4), v.where(5)
    # the column itself: its type is a domain over a domain over text, so email() applies
    assert got[("crm.customers", "email")] == (email, "email()", False, "")
    # partitions at every depth
    for rel in ("crm.events", "crm.events_2024", "crm.events_2024_h1"):
        assert got[(rel, "secret")] == (secret, "redact()", False, ""), rel
    # inheritance children at every depth; the arguments as written
    for rel in ("crm.notes", "crm.notes_child", "crm.notes_grandchild"):
        assert got[(rel, "note")] == (note, "partial(1, 'it''s', 1)", False, ""), rel
    # views, and views of views: copies are masked, computed columns are derived uses
    assert got[("crm.contacts", "email")] == (email, "email()", False, "")
    assert got[("crm.contacts", "shout")] == (email, "email()", True, "")
    assert got[("crm.contacts_2", "mail")] == (email, "email()", False, "")
    assert got[("crm.contacts_2", "shout")] == (email, "email()", True, "")
    # a function that cannot mask the column's type: shown on its row
    rule, fn, derived, problem = got[("crm.customers", "score")]
    assert (rule, fn, derived) == (score, "hash(8)", False)
    assert "hash() cannot mask a column of type int4" in problem
    # nothing else is reached (id, ssn, at, ... are not)
    assert not [k for k in got if k[1] in ("id", "ssn", "at", "extra", "more")]
    # a rule naming a missing column: a row with the rule's own table and column
    missing = [r for r in v.rows_of() if r["rule"] == v.where(3)]
    assert missing and missing[0]["relation"] == "crm.customers" and missing[0]["column"] == "nope"
    assert missing[0]["derived"] is None and "nope" in missing[0]["problem"]
    # the other database's login is refused: one row with the reason
    bad = v.wait_loaded("app_badpw")
    assert len(bad) == 1 and bad[0]["relation"] is None
    assert bad[0]["problem"].startswith("cannot read the catalog of database app_badpw: could not log in")
    # the log: the load at INFO, each problem as a warning
    log = v.pv.log_text()
    assert "catalog of database app loaded: " in log and " masked columns, " in log
    assert any(" WARN catalog: catalog of database app: " in line and "nope" in line for line in log.splitlines())
    # one connection of pgveil's own per readable database
    assert catalog_backends(pg) == ["app app_agent"]


def test_show_masks_groups_and_help(pgveil_factory, idp, pg):
    v = Veil(pgveil_factory, idp, pg, RULES)
    v.wait_loaded()
    assert v.show_masks(v.auditor) == v.show_masks(v.admin)
    with v.connect(v.approver) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="SHOW MASKS needs the auditor or admin group"):
            conn.execute("SHOW MASKS")
        helps = {r[0]: r for r in conn.execute("SHOW HELP").fetchall()}
    assert helps["SHOW MASKS"][2:] == ("auditor or admin", "no")


def test_reload_follows_rules_and_catalog(pgveil_factory, idp, pg):
    v = Veil(pgveil_factory, idp, pg, RULES)
    v.wait_loaded()
    first = {k: r for k, r in v.reached().items()}
    assert ("crm.customers", "email") in first and ("crm.customers", "ssn") not in first
    # a table created since and new rules: both show after SIGHUP
    pg.psql_admin("SET ROLE app_agent; CREATE TABLE crm.cards (id integer, number text); RESET ROLE;")
    v.write_rules("MASK crm.customers.ssn USING partial(0, '***-**-', 4);\n"
                  "MASK crm.cards.number USING null() FOR GROUP agents;\n")

    def follows():
        got = v.reached()
        return (("crm.customers", "ssn") in got and ("crm.cards", "number") in got
                and ("crm.customers", "email") not in got)

    v.reload_and_wait(follows, what="SHOW MASKS to follow the new rules")
    got = v.reached()
    assert got[("crm.customers", "ssn")] == (v.where(1), "partial(0, '***-**-', 4)", False, "")
    assert got[("crm.cards", "number")] == (v.where(2), "null()", False, "")
    assert not any(r["rule"] == v.where(3) for r in v.rows_of())
    # no MASK rules: nothing to show, and pgveil's catalog connection goes away
    v.write_rules("ALLOW ALL;\n")
    v.reload_and_wait(lambda: v.show_masks() == [] and catalog_backends(pg) == [],
                      what="the catalog thread to stop")
    # MASK rules again: it starts again
    v.write_rules("MASK crm.cards.number USING redact();\n")
    v.reload_and_wait(lambda: ("crm.cards", "number") in v.reached(), what="the catalog thread to start again")


def test_reload_adds_and_removes_databases(pgveil_factory, idp, pg):
    v = Veil(pgveil_factory, idp, pg, RULES, databases={"app": harness.backend_conninfo(pg)})
    v.wait_loaded()
    assert {r["database"] for r in v.show_masks()} == {"app"}
    v.pv.databases = {"app2": harness.backend_conninfo(pg, sslmode="disable")}
    v.write_config()
    v.reload_and_wait(lambda: {r["database"] for r in v.show_masks()} == {"app2"}
                      and ("crm.customers", "email") in v.reached("app2"), what="app2 to be read")
    harness.wait_until(lambda: len(catalog_backends(pg)) == 1, 15, what="app's catalog connection to close")


def test_dead_server_is_reported_and_a_later_load_works(pgveil_factory, idp, pg):
    v = Veil(pgveil_factory, idp, pg, RULES, databases={"app": harness.backend_conninfo(pg)})
    v.wait_loaded()
    pg.stop("fast")
    try:
        def failed():
            rows = v.rows_of()
            return len(rows) == 1 and rows[0]["problem"].startswith("cannot read the catalog of database app: ")

        v.reload_and_wait(failed, what="the failure to be reported")
        row = v.rows_of()[0]
        assert row["relation"] is None and row["rule"] is None and row["derived"] is None
        assert "could not connect" in row["problem"] and "refused" in row["problem"].lower()
        assert "cannot read the catalog of database app: " in v.pv.log_text()
        # pgveil keeps serving: the console answers, an agent gets a clean error
        assert v.pv.alive()
        with pytest.raises(psycopg.OperationalError):
            agent = v.idp.mint("rsa", "rsa-1", "agent-x", groups="agents")
            psycopg.connect(conninfo(v.pv, agent, user="a")).close()
    finally:
        pg.start()
    v.reload_and_wait(lambda: ("crm.customers", "email") in v.reached(), what="a load after the restart")
    assert catalog_backends(pg) == ["app app_agent"]


def test_server_restart_under_an_idle_catalog_connection(pgveil_factory, idp, pg):
    """The idle catalog connection dies with the server; the next load opens a new one."""
    v = Veil(pgveil_factory, idp, pg, RULES, databases={"app": harness.backend_conninfo(pg)})
    v.wait_loaded()
    pg.stop("fast")
    pg.start()
    harness.wait_until(lambda: catalog_backends(pg) == [], 10, what="the old connection to be gone")
    v.reload_and_wait(lambda: catalog_backends(pg) == ["app app_agent"] and
                      ("crm.customers", "email") in v.reached(), what="a load on a new connection")


def test_refresh_sees_a_renamed_column_without_reload(pgveil_factory, idp, pg):
    """catalog_refresh = 1s: the DBA renames ssn to nope, which rule 3 masks; no SIGHUP."""
    v = Veil(pgveil_factory, idp, pg, RULES, databases={"app": harness.backend_conninfo(pg)},
             catalog_refresh="1s")
    v.wait_loaded()
    assert ("crm.customers", "nope") not in v.reached()
    with v.agent() as conn:
        # rule 3 names a column crm.customers does not have: the table is refused until it does
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match=re.escape(f"rule {v.where(3)} names crm.customers.nope, which crm.customers "
                                           "no longer has")):
            conn.execute("SELECT ssn FROM crm.customers")
    mark = v.pv.log_size()
    pg.psql_admin("SET ROLE app_agent; ALTER TABLE crm.customers RENAME COLUMN ssn TO nope; RESET ROLE;")
    harness.wait_until(lambda: ("crm.customers", "nope") in v.reached(), 8, what="the renamed column in SHOW MASKS")
    assert v.reached()[("crm.customers", "nope")] == (v.where(3), "null()", False, "")
    assert not [r for r in v.rows_of() if r["rule"] == v.where(3) and r["derived"] is None]  # no "no such column"
    # the agent's results follow: the renamed column is masked (null())
    with v.agent() as conn:
        assert conn.execute("SELECT nope FROM crm.customers").fetchone() == (None,)
        assert conn.execute("SELECT id FROM crm.customers").fetchone() == (1,)
    log = v.pv.log_text(mark)
    assert "configuration reloaded" not in log
    # the timer's loads are logged at debug level; what changed is still a warning or info
    assert " DEBUG catalog: catalog of database app loaded: " in log
    harness.wait_until(lambda: v.pv.log_text(mark).count(" DEBUG catalog: catalog of database app loaded: ") >= 3,
                       10, what="more periodic loads")
    assert " INFO catalog: catalog of database app loaded: " not in v.pv.log_text(mark)
    # one connection still: loads reuse it
    assert catalog_backends(pg) == ["app app_agent"]


FUNCTIONS = """
SET ROLE app_agent;
CREATE FUNCTION public.version() RETURNS text LANGUAGE sql
    AS $$ SELECT string_agg(email::text, ',') FROM crm.customers $$;
CREATE FUNCTION public.length(text) RETURNS integer LANGUAGE sql
    AS $$ SELECT count(*)::integer FROM crm.customers WHERE email::text LIKE $1 || '%' $$;
SET search_path = public, pg_catalog;
CREATE VIEW crm.v_len AS SELECT id, length(ssn) AS n FROM crm.customers;
CREATE VIEW crm.v_upper AS SELECT id, upper(ssn) AS u FROM crm.customers;
RESET search_path;
RESET ROLE;
"""


def test_user_functions_with_builtin_names(pgveil_factory, idp, pg):
    """public.version() returns masked emails; with public first on search_path it answers version()."""
    pg.psql_admin(FUNCTIONS)
    direct = pg.psql_admin("SET search_path = public, pg_catalog; SELECT version();")
    assert "ann@example.com" in direct  # the threat is real
    # without rule 3 (a missing column: it would refuse crm.customers and the views reading it)
    v = Veil(pgveil_factory, idp, pg, RULES.replace("MASK crm.customers.nope USING null();", "-- (none)"),
             databases={"app": harness.backend_conninfo(pg)})
    v.wait_loaded()
    rows = v.rows_of()
    # pg_get_viewdef() names public.length: the view runs user code, every column counts as computed
    # from every masked column
    for col in ("id", "n"):
        reaching = {(r["rule"], r["function"], r["derived"]) for r in rows
                    if r["relation"] == "crm.v_len" and r["column"] == col}
        assert (v.where(1), "email()", True) in reaching, col
        assert (v.where(4), "redact()", True) in reaching, col
    # a built-in nobody shadows: only what it reads (nothing masked)
    assert not [r for r in rows if r["relation"] == "crm.v_upper"]
    log = v.pv.log_text()
    assert "view crm.v_len: it calls public.length, which is not built in" in log
    with v.agent() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not put a schema before pg_catalog"):
            conn.execute("SET search_path = public, pg_catalog")
        for sql in ("SELECT version()", "SELECT length('ann')", "SELECT id FROM crm.customers WHERE length('a') > 0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match=r"may not be the built-in: user-defined function public\.(version|length) "
                                     r"has the same name"):
                conn.execute(sql)
        assert conn.execute("SELECT pg_catalog.version()").fetchone()[0].startswith("PostgreSQL 15")
        assert conn.execute("SELECT pg_catalog.length('abc')").fetchone() == (3,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="function public.version is not built in"):
            conn.execute("SELECT public.version()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="computed from masked column"):
            conn.execute("SELECT id FROM crm.v_len")
        assert conn.execute("SELECT id FROM crm.v_upper").fetchone() == (1,)
        assert conn.execute("SELECT upper('x')").fetchone() == ("X",)
