-- SPDX-License-Identifier: MIT
-- pgveil audit database, schema version 2 (PRAGMA user_version = 2).
-- INTERFACE §6; doc/audit.md. pgveil applies this file at start (it is
-- compiled in) and sets user_version itself. Times are ISO-8601 UTC with microseconds
-- ('2026-11-24T00:41:07.123456Z'). Tokens and passwords are never stored.

CREATE TABLE IF NOT EXISTS sessions (
    id           INTEGER PRIMARY KEY,   -- pgveil's session id; ids continue across restarts (doc/audit.md)
    started_at   TEXT NOT NULL,
    ended_at     TEXT,                  -- NULL while open (or when pgveil was killed)
    subject      TEXT NOT NULL,
    groups       TEXT NOT NULL,         -- comma-separated
    client_addr  TEXT NOT NULL,
    database     TEXT NOT NULL,
    backend_user TEXT,                  -- NULL for the admin console
    tls          INTEGER NOT NULL,      -- 0 or 1
    end_reason   TEXT
);

CREATE TABLE IF NOT EXISTS queries (
    id             INTEGER PRIMARY KEY, -- assigned by pgveil in the order statements arrive
    session_id     INTEGER NOT NULL,    -- sessions.id
    ts             TEXT NOT NULL,       -- when pgveil received the statement
    subject        TEXT NOT NULL,
    database       TEXT NOT NULL,
    sql            TEXT NOT NULL,       -- as sent, or normalized (audit_redact_literals)
    fingerprint    TEXT,                -- hex hash of the statement's shape
    classes        TEXT NOT NULL,       -- 'SELECT,READ'
    decision       TEXT NOT NULL,       -- allow | block | approve | deny | timeout | cancel
    rule           TEXT,                -- file:line of the deciding rule, NULL for default_action
    masked_columns TEXT,                -- 'public.users.email,public.users.ssn'
    rows           INTEGER,             -- returned or affected; NULL when unknown
    duration_ms    REAL,                -- from receipt to completion
    sqlstate       TEXT,                -- NULL on success
    error          TEXT,
    approval_id    INTEGER,             -- approvals.id
    chain_seq      INTEGER UNIQUE,      -- position in the hash chain (rows are chained when finished); NULL: unfinished
    prev_hash      TEXT,                -- hex SHA-256 of the previous chained row ('' before the first)
    hash           TEXT                 -- hex SHA-256(prev_hash || this row), NULL: unfinished
);

CREATE TABLE IF NOT EXISTS approvals (
    id           INTEGER PRIMARY KEY,   -- the approval id shown to agents and approvers; continues across restarts
    query_id     INTEGER,
    session_id   INTEGER NOT NULL,
    subject      TEXT NOT NULL,
    sql          TEXT NOT NULL,
    rule         TEXT,
    requested_at TEXT NOT NULL,
    decided_at   TEXT,
    decided_by   TEXT,
    decision     TEXT,                  -- approve | deny | timeout | cancel; NULL while waiting
    reason       TEXT,
    grant_until  TEXT
);

-- Strict mode: a statement's start (the columns of queries up to rule, and
-- approval_id), committed durably before the statement is forwarded. It
-- moves into queries when its outcome is written (a fraction of a second
-- later) and, if pgveil was killed first, when pgveil next opens the file.
-- Auditors who read the file after a crash, before pgveil ran again, find
-- those statements here.
CREATE TABLE IF NOT EXISTS pending (
    id          INTEGER PRIMARY KEY,    -- the queries id the row will have
    session_id  INTEGER NOT NULL,
    ts          TEXT NOT NULL,
    subject     TEXT NOT NULL,
    database    TEXT NOT NULL,
    sql         TEXT NOT NULL,
    fingerprint TEXT,
    classes     TEXT NOT NULL,
    decision    TEXT NOT NULL,
    rule        TEXT,
    approval_id INTEGER
);

-- Where the chain continues after retention removed older rows: the last
-- removed row's chain position and hash. The verifier starts the chain at
-- chain_seq + 1 only when no older chained row is left.
CREATE TABLE IF NOT EXISTS checkpoints (
    id            INTEGER PRIMARY KEY,
    created_at    TEXT NOT NULL,
    chain_seq     INTEGER NOT NULL,
    hash          TEXT NOT NULL,
    rows_pruned   INTEGER NOT NULL,     -- queries rows removed by this pass
    last_query_id INTEGER NOT NULL      -- largest queries id handed out so far: ids continue above it
);

CREATE INDEX IF NOT EXISTS queries_subject_ts ON queries (subject, ts);
CREATE INDEX IF NOT EXISTS queries_ts ON queries (ts);
CREATE INDEX IF NOT EXISTS queries_decision_ts ON queries (decision, ts);
CREATE INDEX IF NOT EXISTS queries_session ON queries (session_id, id);
CREATE INDEX IF NOT EXISTS sessions_subject ON sessions (subject, started_at);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_at);
CREATE INDEX IF NOT EXISTS approvals_subject ON approvals (subject, requested_at);
CREATE INDEX IF NOT EXISTS approvals_query ON approvals (query_id);
