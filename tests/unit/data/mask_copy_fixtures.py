#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""
Writes tests/unit/data/mask_copy_fixtures.inc: the exact bytes PostgreSQL 15
sends for COPY ... TO STDOUT of a table with awkward values (tabs, newlines,
carriage returns, backslashes, quotes, delimiters, control characters,
multi-byte UTF-8, NULLs, empty strings, "\\N" and "\\." as values), in text
and CSV with several option sets, one row per CopyData as the server sends
them, and the bytes it sends for the same rows with the masked values put in
by SQL (so the expected encodings are the server's own). Run against a
scratch server (it creates and drops its own tables):

    PGHOST=/tmp/sock PGPORT=5432 PGUSER=postgres PGDATABASE=postgres \\
        /usr/bin/python3 tests/unit/data/mask_copy_fixtures.py > tests/unit/data/mask_copy_fixtures.inc
"""
import subprocess
import sys

KEY = "0123456789abcdef0123456789abcdef"  # test_mask_copy.c's TEST_KEY

# The pad of partial() and the value of constant() in mask set A; the same
# strings are in test_mask_copy.c's rules.
PAD = '\\",|'
NOTE = "tab\there\nnew\\line, \"q\" 's|;$"

SETUP = r"""
SET client_min_messages = warning;
SET TimeZone = 'UTC';
CREATE EXTENSION IF NOT EXISTS pgcrypto;
DROP TABLE IF EXISTS mc_in, mc_a, mc_b;
CREATE TABLE mc_in (id int, name text, email varchar(64), note text, amount numeric, born date,
                    score float8, code char(4));
INSERT INTO mc_in VALUES
 (1, 'Zoë Müller', 'zoe@example.com', E'tab\there', 12345.678, '1984-07-15', 1.5, 'ab'),
 (2, E'line1\nline2', 'j@x.org', E'back\\slash', -0.012345, '2024-02-29', -2.5e-05, NULL),
 (3, E'cr\rlf\n', NULL, E'a,b"c''d;$x|y', NULL, NULL, NULL, 'x'),
 (4, '', E'\\N', '\.', 0, '0044-03-15 BC', 1e+20, ''),
 (5, NULL, 'x|y', E'bell\x07 vt\x0b ff\x0c bs\x08 soh\x01 del\x7f', 99.5, 'infinity', 'NaN', 'abcd'),
 (6, '"quoted"', 'a\b', '日本語,テキスト "x"', 1234567890123456789.5, '2000-01-01', 123456789.125, ' ');
-- mask set A: partial(1, PAD, 1), email(), constant(NOTE), round(2), truncate('month'), redact()
CREATE TABLE mc_a AS SELECT id,
  CASE WHEN name IS NULL THEN NULL WHEN char_length(name) <= 2 THEN :'pad'
       ELSE left(name, 1) || :'pad' || right(name, 1) END AS name,
  CASE id WHEN 1 THEN 'z***@example.com' WHEN 2 THEN '***@x.org' WHEN 3 THEN NULL ELSE '***' END AS email,
  CASE WHEN note IS NULL THEN NULL ELSE :'note' END AS note,
  CASE id WHEN 1 THEN 12000 WHEN 2 THEN -0.012 WHEN 3 THEN NULL WHEN 4 THEN 0 WHEN 5 THEN 100
          WHEN 6 THEN 1200000000000000000 END AS amount,
  date_trunc('month', born)::date AS born, score,
  CASE WHEN code IS NULL THEN NULL ELSE '****' END AS code
  FROM mc_in;
-- mask set B: null(), hash(16), hash(), unmasked, unmasked, to_null, to_null
CREATE TABLE mc_b AS SELECT id, NULL::text AS name,
  left(encode(hmac(email::text, :'key', 'sha256'), 'hex'), 16) AS email,
  encode(hmac(note, :'key', 'sha256'), 'hex') AS note,
  amount, born, NULL::float8 AS score, NULL::text AS code
  FROM mc_in;
"""

# name, mask set, C initializer of MaskCopyFormat, COPY options
SCENARIOS = [
    ("text", "A", "{ false, '\\t', '\"', '\"', NULL, false }", ""),
    ("csv", "A", "{ true, ',', '\"', '\"', NULL, false }", "(FORMAT csv)"),
    ("csv_header", "A", "{ true, ',', '\"', '\"', NULL, true }", "(FORMAT csv, HEADER)"),
    ("text_header", "A", "{ false, '\\t', '\"', '\"', NULL, true }", "(HEADER)"),
    ("text_pipe_nil", "A", "{ false, '|', '\"', '\"', \"NIL\", false }", "(DELIMITER '|', NULL 'NIL')"),
    ("csv_semi_squote_bs", "A", "{ true, ';', '\\'', '\\\\', \"NULL\", false }",
     "(FORMAT csv, DELIMITER ';', NULL 'NULL', QUOTE '''', ESCAPE '\\')"),
    ("csv_dollar", "A", "{ true, ',', '$', '$', NULL, false }", "(FORMAT csv, QUOTE '$')"),
    ("b_text", "B", "{ false, '\\t', '\"', '\"', NULL, false }", ""),
    ("b_csv", "B", "{ true, ',', '\"', '\"', NULL, false }", "(FORMAT csv)"),
    ("b_csv_semi_squote_bs", "B", "{ true, ';', '\\'', '\\\\', \"NULL\", false }",
     "(FORMAT csv, DELIMITER ';', NULL 'NULL', QUOTE '''', ESCAPE '\\')"),
    ("b_text_comma_empty", "B", "{ false, ',', '\"', '\"', \"\", false }", "(DELIMITER ',', NULL '')"),
    ("b_text_soh", "B", "{ false, '\\x01', '\"', '\"', NULL, true }", "(DELIMITER E'\\x01', HEADER)"),
]

def psql(sql, *args):
    cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"] + list(args) + ["-c", sql]
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout

def setup():
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "pad=" + PAD, "-v", "note=" + NOTE,
                    "-v", "key=" + KEY], input=SETUP.encode(), check=True)

def copy(query, options):
    return psql("SET TimeZone = 'UTC'; COPY (%s) TO STDOUT %s" % (query, options))

def c_string(b):
    out = '"'
    after_hex = False
    for c in b:
        ch = chr(c)
        if after_hex and ch in "0123456789abcdefABCDEF":
            out += '" "'  # a hex escape would swallow the digit
        after_hex = False
        if ch == '"' or ch == '\\':
            out += '\\' + ch
        elif 0x20 <= c < 0x7f:
            out += ch
        elif ch == '\n':
            out += '\\n'
        elif ch == '\t':
            out += '\\t'
        elif ch == '\r':
            out += '\\r'
        else:
            out += '\\x%02x' % c
            after_hex = True
    return out + '"'

def main():
    setup()
    w = sys.stdout.write
    w("/* Generated by tests/unit/data/mask_copy_fixtures.py from PostgreSQL 15; do not edit. */\n")
    w("static const CopyFixture copy_fixtures[] = {\n")
    for name, maskset, fmt, options in SCENARIOS:
        header_opts = options if "HEADER" in options else None
        table_in = "SELECT * FROM mc_in"
        table_out = "SELECT * FROM mc_%s" % maskset.lower()
        w("\t{ %s, MASKSET_%s, %s, %s,\n" % (c_string(name.encode()), maskset, fmt, c_string(options.encode())))
        if header_opts:
            w("\t  %s,\n" % c_string(copy(table_in + " LIMIT 0", options)))
        else:
            w("\t  NULL,\n")
        # no HEADER for the rows: one CopyData each, as the server sends them
        row_opts = options.replace(", HEADER", "").replace("(HEADER)", "")
        for table in (table_in, table_out):
            w("\t  {\n")
            for i in range(1, 7):
                w("\t\t  %s,\n" % c_string(copy("%s WHERE id = %d" % (table, i), row_opts)))
            w("\t  },\n")
        w("\t},\n")
    w("};\n")

main()
