/* SPDX-License-Identifier: MIT */
/*
 * Held statements, approvers' decisions, time-boxed grants and blocked
 * agents. One registry shared by every worker behind one lock. A session
 * that holds a statement submits it with an event of its own base; a
 * decision (from the admin console, on any thread) records the outcome and
 * activates that event, so the session resumes on its own thread. The
 * registry keeps the exact text the approver is shown; the session keeps
 * the exact bytes, so what runs is what was approved.
 */
#ifndef PGVEIL_APPROVAL_H
#define PGVEIL_APPROVAL_H

#include <time.h>

#include "pgveil/common.h"

struct event;

typedef enum {
	HOLD_WAITING,    /* no decision yet */
	HOLD_APPROVED,   /* run it once */
	HOLD_DENIED,     /* 42501 with the approver's reason */
	HOLD_TIMEOUT,    /* hold_timeout passed: 57014 */
	HOLD_CANCELED,   /* the client canceled or went away: 57014 */
} HoldState;

/* What a session submits. Strings are copied. */
typedef struct HoldSpec {
	uint64_t session_id;
	const char *subject;      /* agent subject ("" under dev_trust_auth) */
	const char *database;     /* client-side database name */
	const char *sql;          /* what the approver sees (statement text, with parameters) */
	const char *rule;         /* deciding rule's "file:line", NULL = default_action */
	const char *rule_text;    /* the rule as written, or NULL */
	int n_tables;             /* tables the statement touches, "schema.name" ("name" when unqualified) */
	const char *const *tables;
	const char *no_grant;     /* why APPROVE ... FOR makes no grant from it ("it runs code ..."), NULL: it may */
	uint64_t shape;           /* the statement's fingerprint (its text, literals aside); 0: unknown */
} HoldSpec;

/* A copy of one held statement, for SHOW HELD and the session itself. */
typedef struct HeldInfo {
	uint64_t id;
	uint64_t session_id;
	char *subject, *database, *sql, *rule;
	time_t held_at;           /* wall clock */
	HoldState state;
	char *decided_by;         /* approver subject, NULL while waiting */
	char *reason;             /* DENY ... REASON, or NULL */
	time_t decided_at;
	char *rule_text;          /* the rule as written, or NULL */
	char *tables;             /* comma-separated "schema.name" list, "" when none */
	time_t grant_until;       /* APPROVE ... FOR: when the grant it made expires; 0 = none */
	char *no_grant;           /* HoldSpec.no_grant, or NULL */
} HeldInfo;

/* A time-boxed grant from APPROVE n FOR ... . */
typedef struct GrantInfo {
	uint64_t id;
	uint64_t approval_id;     /* the approval that created it */
	char *subject;            /* whose statements it covers */
	char *rule;               /* the rule ("file:line", NULL = default_action) */
	char *tables;             /* comma-separated "schema.name" list covered */
	char *granted_by;
	time_t until;             /* expires then */
} GrantInfo;

/* Numbers held statements from `id` on (the audit log's ids continue across restarts). */
void approval_set_first_id(uint64_t id);
/* Frees the registry (statically initialised) at exit. */
void approval_shutdown(void);

/*
 * Registers a held statement. `wake` (an event of the caller's base) is
 * activated when a decision arrives. Returns the approval id (> 0), or 0 on
 * allocation failure.
 */
uint64_t approval_submit(const HoldSpec *spec, struct event *wake) PGV_WARN_UNUSED;

/*
 * The current state of `id`; *reason (malloc'd or NULL; reason itself may be
 * NULL) gets a denial reason. An id the registry no longer knows (never
 * submitted, or forgotten long after its decision) reads HOLD_CANCELED, so
 * what cannot be proven approved never runs.
 */
HoldState approval_state(uint64_t id, char **reason);

/*
 * A copy of one entry, waiting or decided (decided ones are kept for the
 * last APPROVAL_KEEP_DECIDED decisions). Returns 1 and sets *out (free with
 * approval_free_held(*out, 1)), 0 for an unknown id, -1 on allocation failure.
 */
#define APPROVAL_KEEP_DECIDED 1000
int approval_get(uint64_t id, HeldInfo **out) PGV_WARN_UNUSED;

/* The name of a state as the console shows it: "waiting", "approved", "denied", "timed out", "canceled". */
const char *approval_state_name(HoldState st);

/*
 * The session gives up waiting (HOLD_TIMEOUT or HOLD_CANCELED). Returns the
 * state that stands: a decision that arrived first wins. The entry is
 * forgotten by the registry's waiting list either way; the wake event is
 * never touched again after this returns.
 */
HoldState approval_withdraw(uint64_t id, HoldState why);

/*
 * An approver's decision. approve = false denies (reason may be NULL).
 * grant_seconds > 0 (approve only) also creates a grant, unless the
 * statement was submitted with no_grant (then it is approved once). Returns true, or
 * false with a message in err: unknown id, not waiting any more, the
 * approver is the subject who sent it (approving only; denying one's own
 * statement is allowed), or no memory for the grant (then nothing is
 * decided). Every decision is logged at info level.
 */
bool approval_decide(uint64_t id, bool approve, const char *approver, const char *reason,
		     uint64_t grant_seconds, char *err, size_t errlen) PGV_WARN_UNUSED;

/*
 * True when an active grant covers a statement of `subject` decided HOLD by
 * `rule` (NULL = default_action), whose text is `rule_text` (the same rule
 * after a reload), touching exactly a subset of the grant's tables. A
 * statement touching no table is covered only by a grant made from the
 * same statement: no table, and the same nonzero `shape` (the fingerprint:
 * `VACUUM` again, not `ALTER SYSTEM`). Sets *grant_id. Names compare as
 * written: the caller asks only for statements whose tables are all known
 * by those names (never one it would submit with no_grant).
 */
bool approval_grant_covers(const char *subject, const char *rule, const char *rule_text, int n_tables,
			   const char *const *tables, uint64_t shape, uint64_t *grant_id);

/*
 * Snapshots for the admin console; free with the matching free function.
 * The list functions return the count, or -1 on allocation failure.
 */
int approval_list_held(HeldInfo **out);          /* waiting ones, oldest first */
void approval_free_held(HeldInfo *list, int n);
int approval_list_grants(GrantInfo **out);       /* unexpired ones */
void approval_free_grants(GrantInfo *list, int n);
bool approval_revoke_grant(uint64_t grant_id);   /* false: no such unexpired grant */

/* A blocked subject, for SHOW BLOCKED. */
typedef struct BlockedInfo {
	char *subject;
	time_t until;             /* 0 = until UNBLOCK AGENT */
} BlockedInfo;

/*
 * Blocked agents: `until` = 0 means until UNBLOCK AGENT; blocking again
 * replaces the end. Blocking does not end sessions by itself; the caller
 * does (server_kill_sessions_of). approval_block_agent returns false only
 * when there was no memory to record the block. Expired blocks vanish.
 */
bool approval_block_agent(const char *subject, time_t until);
bool approval_unblock_agent(const char *subject);  /* false: it was not blocked */
bool approval_agent_blocked(const char *subject);  /* NULL or "" is never blocked */
int approval_list_blocked(BlockedInfo **out);      /* unexpired ones; -1 on allocation failure */
void approval_free_blocked(BlockedInfo *list, int n);

#endif
