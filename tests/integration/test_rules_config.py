"""Rules files with the configuration: `pgveil --check` reports every rules
error as file:line:col (and the configuration's own errors first); the
shipped default rules and relative rules paths load; SIGHUP with broken
rules keeps the previous configuration and rules in force, logging every
error, and a fixed file is taken on the next SIGHUP. pgveil only."""

import os
import re
import subprocess

import psycopg

import harness

BROKEN = """\
-- two broken rules between good ones
ALLOW READ;
BLOCK DDL, BOGUS;
MASK public.users.ssn USING partial(0, '***', -4);
HOLD WRITE
  UNLESS GROUP dba;
"""

BROKEN_ERRORS = [
    "{path}:3:12: unknown statement class 'BOGUS'",
    "{path}:4:47: partial(): keep_suffix must be 0 or more",
    "{path}:6:3: UNLESS is only allowed in MASK rules",
]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def check(pgveil_bin, conf, cwd=None):
    return subprocess.run([pgveil_bin, "--check", "-c", conf], capture_output=True, text=True, timeout=30,
                          cwd=cwd)


def test_check_reports_rules_errors(pgveil_factory, pgveil_bin):
    pv = pgveil_factory(start=False)
    rules = os.path.join(pv.dir, "broken.rules")
    write(rules, BROKEN)
    pv.settings["rules"] = rules
    pv.write_config()
    res = check(pgveil_bin, pv.conf_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.splitlines() == [e.format(path=rules) for e in BROKEN_ERRORS]
    assert res.stdout == ""


def test_check_reports_config_and_rules_errors_together(pgveil_factory, pgveil_bin):
    pv = pgveil_factory(start=False)
    rules = os.path.join(pv.dir, "broken.rules")
    write(rules, BROKEN)
    pv.settings["rules"] = rules
    text = pv.config_text().replace("[pgveil]\n", "[pgveil]\nno_such_key = 1\n")
    write(pv.conf_path, text)
    res = check(pgveil_bin, pv.conf_path)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"{pv.conf_path}:2:1: unknown key 'no_such_key'"), res.stderr
    assert lines[1:] == [e.format(path=rules) for e in BROKEN_ERRORS]


def test_check_rules_directory_and_missing_path(pgveil_factory, pgveil_bin):
    pv = pgveil_factory(start=False)
    d = os.path.join(pv.dir, "rules.d")
    os.makedirs(d)
    write(os.path.join(d, "10-ok.rules"), "ALLOW READ;\n")
    write(os.path.join(d, "20-bad.rules"), "ALLOW READ;\n\nHOLD WRITE ON;\n")
    write(os.path.join(d, "notes.txt"), "this is not read\n")
    pv.settings["rules"] = d
    pv.write_config()
    res = check(pgveil_bin, pv.conf_path)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [f"{d}/20-bad.rules:3:14: expected a table name, not ';'"]

    pv.settings["rules"] = os.path.join(pv.dir, "missing.rules")
    pv.write_config()
    res = check(pgveil_bin, pv.conf_path)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [f"{pv.dir}/missing.rules:0:0: cannot read: No such file or directory"]


def test_check_default_and_relative_rules(pgveil_factory, pgveil_bin):
    pv = pgveil_factory(start=False)
    pv.settings["rules"] = os.path.join(harness.SRCDIR, "rules")
    pv.write_config()
    res = check(pgveil_bin, pv.conf_path)
    assert res.returncode == 0, res.stderr
    assert "configuration is valid" in res.stdout

    # a relative path is taken from the working directory, like every path of the file
    write(os.path.join(pv.dir, "mine.rules"), "ALLOW ALL;\n")
    pv.settings["rules"] = "mine.rules"
    pv.write_config()
    assert check(pgveil_bin, pv.conf_path, cwd=pv.dir).returncode == 0
    res = check(pgveil_bin, pv.conf_path, cwd="/")
    assert res.returncode == 1
    assert res.stderr.splitlines() == ["mine.rules:0:0: cannot read: No such file or directory"]


def rules_loaded(text):
    """The (policy, mask) counts of every 'rules loaded' record in a log text."""
    return [(int(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"rules loaded from \S+: (\d+) policy rules, (\d+) mask rules", text)]


def can_query(pv):
    with psycopg.connect(harness.pgveil_target(pv).conninfo(), autocommit=True) as c:
        return c.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_reload_with_broken_rules_keeps_old(pgveil_factory):
    pv = pgveil_factory(start=False)
    rules = os.path.join(pv.dir, "policy.rules")
    write(rules, "ALLOW READ, SESSION, TRANSACTION;\nHOLD WRITE;\n")
    pv.settings["rules"] = rules
    pv.write_config()
    pv.start()
    harness.wait_until(lambda: rules_loaded(pv.log_text()) == [(2, 0)], 15, what="the rules in the startup log")
    session = psycopg.connect(harness.pgveil_target(pv).conninfo(), autocommit=True)

    # broken: every error is logged, the old configuration and rules stay
    mark = pv.log_size()
    write(rules, BROKEN)
    pv.reload()
    harness.wait_until(lambda: "reload failed" in pv.log_text(mark), 15, what="the reload failure in the log")
    log = pv.log_text(mark)
    for e in BROKEN_ERRORS:
        assert e.format(path=rules) in log, log
    assert "keeping the previous configuration and rules" in log
    assert rules_loaded(log) == [], "broken rules must not replace the running ones:\n" + log
    assert pv.alive()
    assert can_query(pv)
    assert session.execute("SELECT 1").fetchone() == (1,)

    # fixed: the next SIGHUP takes the new rules
    mark = pv.log_size()
    write(rules, "ALLOW READ;\nHOLD WRITE;\nBLOCK DDL;\n")
    pv.reload()
    harness.wait_until(lambda: "configuration reloaded" in pv.log_text(mark), 15, what="the reload")
    assert rules_loaded(pv.log_text(mark)) == [(3, 0)]
    assert session.execute("SELECT 2").fetchone() == (2,)
    session.close()


def test_mask_rules_load(pgveil_bin, tmp_path):
    """MASK rules are part of a valid rule set: --check accepts them."""
    rules = tmp_path / "m.rules"
    rules.write_text("ALLOW READ;\n-- comment\n  MASK public.users.email USING email();\n")
    conf = tmp_path / "p.ini"
    conf.write_text(f"[pgveil]\nrules = {rules}\n")
    res = check(pgveil_bin, str(conf))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "configuration is valid" in res.stdout
