"""What the masking tests (test_mask.py, test_mask_attack.py,
test_mask_drivers.py) share: a pgveil with MASK rules and a hash() key behind
a Recorder (leakcheck.py), the agent's connections through that Recorder
(plaintext, so that every byte pgveil sends is recorded), and the table of
people with sensitive columns that test_mask.py and test_mask_attack.py mask,
each under a name of its own."""

import os
import uuid

import psycopg
import pytest

import harness
import leakcheck
import pgwire


# id, name, email, ssn, salary, born, card, note
PEOPLE = [
    (1, "Alice Wonderland-Secret", "alice.wonder@secret-mail.example", "123-45-6789", "123456.78", "1987-06-05",
     "4111-1111-1111-1111", "confidential note alpha"),
    (2, "Bob Quincy-Hidden", "bob.quincy@hidden-domain.example", "987-65-4321", "98765.43", "1990-12-31",
     "5500-0000-0000-0004", "confidential note bravo"),
    (3, "Zoë Müller-Private", "zoe.mueller@private-host.example", "555-12-3456", "55555.55", "2001-02-03",
     "3400-0000-0000-009", None),
]

# Every stored value, and parts of them an agent could search for.
PEOPLE_SECRETS = [v for row in PEOPLE for v in row[1:] if v is not None] + ["alice.wonder", "bob.quincy"]

# What the agent must see of each row, as text: email, ssn, salary, born, card, note (name: 16 hex digits).
PEOPLE_MASKED = {
    1: ("a***@secret-mail.example", "***-**-6789", "100000", "1987-01-01", "****", None),
    2: ("b***@hidden-domain.example", "***-**-4321", "100000", "1990-01-01", "****", None),
    3: ("z***@private-host.example", "***-**-3456", "60000", "2001-01-01", "****", None),
}


def people_masks(table):
    """The MASK rules giving PEOPLE_MASKED for the people table of that name."""
    return f"""
MASK public.{table}.email  USING email();
MASK public.{table}.ssn    USING partial(0, '***-**-', 4);
MASK public.{table}.name   USING hash(16);
MASK public.{table}.salary USING round(1);
MASK public.{table}.born   USING truncate('year');
MASK public.{table}.card   USING redact();
MASK public.{table}.note   USING null();
"""


def create_people(conn, table):
    """Creates the people table of that name with PEOPLE in it, and the views
    {table}_plain (copies of masked columns) and {table}_upper (a column
    computed from one), all granted to the agent's login (conn: superuser)."""
    conn.execute(f"""CREATE TABLE {table} (id integer PRIMARY KEY, name text, email text NOT NULL UNIQUE,
                     ssn varchar(11), salary numeric(10,2) CHECK (salary >= 0), born date, card text, note text)""")
    for row in PEOPLE:
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", row)
    conn.execute(f"CREATE VIEW {table}_plain AS SELECT id, email, ssn FROM {table}")
    conn.execute(f"CREATE VIEW {table}_upper AS SELECT id, upper(email) AS shout FROM {table}")
    conn.execute(f"GRANT ALL ON {table}, {table}_plain, {table}_upper TO {harness.APP_USER}")


def start_masked(pgveil_bin, cluster, certs, workroot, rules_text, name, **settings):
    """Starts a pgveil with these rules, a hash() key and default_action = block
    (settings may add or override any), and a Recorder in front of it. Returns
    (pv, rec); pv.rules_path is the rules file."""
    rules = harness.write_rules(workroot, name, rules_text)
    key = os.path.join(workroot, f"{name}-{uuid.uuid4().hex[:8]}.key")
    with open(key, "w") as f:
        f.write("k" * 48 + "\n")
    os.chmod(key, 0o600)
    settings = {"rules": rules, "mask_key_file": key, "default_action": "block", **settings}
    pv = harness.Pgveil(pgveil_bin, os.path.join(workroot, f"pgveil-{name}-{uuid.uuid4().hex[:8]}"), cluster, certs,
                        **settings)
    pv.rules_path = rules
    pv.start()
    return pv, leakcheck.Recorder("127.0.0.1", pv.port)


def stop_masked(pv, rec):
    """Closes the Recorder and stops pgveil, which must exit 0 without a sanitizer report."""
    rec.close()
    problems = pv.check_clean_exit()
    assert not problems, "\n".join(problems)


def agent_target(rec):
    """The agent's connection settings toward pgveil through the Recorder."""
    return harness.Target("pgveil", "127.0.0.1", rec.port, harness.PROXY_USER, "unused",
                          extra={"sslmode": "disable"})


def conninfo(rec, **kw):
    return agent_target(rec).conninfo(**kw)


def agent(rec, **kw):
    """A psycopg connection (autocommit) of the agent through the Recorder."""
    return psycopg.connect(conninfo(rec, **kw), autocommit=True)


def wire(rec):
    """A raw protocol connection of the agent through the Recorder, logged in."""
    return pgwire.connect("127.0.0.1", rec.port, user=harness.PROXY_USER, database="app")


def refused(conn, statement, states=("42501", "0A000")):
    """The statement fails with one of these SQLSTATEs and the session goes on; returns the error."""
    with pytest.raises(psycopg.Error) as exc:
        cur = conn.execute(statement)
        if cur.description:
            cur.fetchall()
    assert exc.value.sqlstate in states, f"{exc.value.sqlstate}: {exc.value}"
    assert conn.execute("SELECT 1").fetchone() == (1,)
    return exc.value


def copy_out(conn, statement):
    """The bytes a COPY ... TO STDOUT gives, through psycopg."""
    data = b""
    with conn.cursor().copy(statement) as cp:
        for chunk in cp:
            data += bytes(chunk)
    return data


def admin_exec(cluster, *stmts):
    """Runs each statement as superuser in database app, autocommit."""
    with psycopg.connect(cluster.admin_conninfo("app"), autocommit=True) as conn:
        for s in stmts:
            conn.execute(s)
