/* SPDX-License-Identifier: MIT */
/*
 * What the two halves of the relay share: relay.c (framing, the statement
 * guard, holds, refusals) and relay_mask.c (results of callers with masks:
 * which statement each server message answers, mask plans, rewriting).
 */
#ifndef PGVEIL_RELAY_INT_H
#define PGVEIL_RELAY_INT_H

#include <event2/buffer.h>

#include "pgveil/pgproto.h"
#include "pgveil/policy.h"
#include "pgveil/relay.h"
#include "pgveil/session.h"
#include "pgveil/sqlinfo.h"

typedef struct RelayMask RelayMask;
typedef struct RelayAudit RelayAudit;

/* A prepared statement the server may hold under one name. */
typedef struct Prepared {
	char *name;              /* "" = the unnamed statement */
	char *sql;               /* text shown to approvers */
	int n_infos;
	StmtInfo **infos;        /* every body the server may hold under this name (see prepared_add) */
	bool decided;            /* `decision` is valid for configuration generation `decided_gen` */
	uint64_t decided_gen;
	bool decided_path_changed; /* the session's search_path could have changed when it was decided */
	Decision decision;       /* cached: the same statement, caller and rules decide the same */
	struct Prepared *next;   /* hash chain */
} Prepared;

/* An ErrorResponse waiting to replace the server's answer to a refusal. */
typedef struct Substitute {
	uint64_t batch;          /* batch (Query or Sync) the refusal belongs to */
	PgBuf msg;               /* the ErrorResponse the client gets */
	struct Substitute *next;
} Substitute;

/*
 * A change to the server's prepared statements that pgveil forwarded and
 * the server has not confirmed yet. It changes pgveil's picture of the
 * server only on its confirmation, in its own batch: ParseComplete for a
 * Parse, CloseComplete for a Close, CommandComplete DEALLOCATE / DISCARD ALL
 * for SQL. One the server skipped (after an earlier error of its batch, or
 * inside a failed transaction) is forgotten at that batch's ReadyForQuery.
 */
typedef enum {
	PEND_PARSE,      /* name, sql, info: install on ParseComplete */
	PEND_CLOSE,      /* name (NULL for a portal): forget on CloseComplete */
	PEND_PREPARE,    /* name, sql, info: install on CommandComplete PREPARE */
	PEND_DEALLOCATE, /* name (NULL = all): forget on CommandComplete DEALLOCATE / DISCARD ALL */
} PendKind;

typedef struct Pending {
	PendKind kind;
	uint64_t batch;              /* batch it was sent in */
	char *name;                  /* statement name, "" = unnamed */
	char *sql;                   /* PEND_PARSE, PEND_PREPARE: the statement's text */
	StmtInfo *info;              /* PEND_PARSE, PEND_PREPARE: its analysis (a reference) */
	struct Pending *next;
} Pending;

/* GUARD_WAIT: the message stays at the front until the catalog is loaded (relay_mask.c resumes it). */
typedef enum { GUARD_FORWARD, GUARD_REFUSE, GUARD_HOLD, GUARD_WAIT } GuardAction;

struct Relay {
	Config *cfg;                 /* snapshot rules come from; follows reloads */
	uint64_t cfg_gen;            /* config_generation() it was taken at */
	Prepared **buckets;          /* prepared statements by name */
	size_t n_buckets, n_prepared;
	uint64_t batches_sent;       /* Query/Sync/FunctionCall forwarded */
	uint64_t batches_done;       /* ReadyForQuery received */
	Substitute *subst_head, *subst_tail;
	Pending *pend_head, *pend_tail; /* changes awaiting the server's confirmation, in order */
	int n_pend_sql;              /* PEND_PREPARE and PEND_DEALLOCATE entries among them */
	char last_starter;           /* 'Q' or 'E': what started the server's latest command */
	int syncs_since_execute;     /* Syncs forwarded since the latest Execute */
	bool copy_in_seen;           /* the server sent CopyInResponse since */
	struct evbuffer *inject;     /* messages for the client, waiting for a message boundary */
	uint8_t *scratch;            /* copy of the message being decided */
	size_t scratch_cap;
	struct evbuffer *cur_in;     /* where the message being decided is: buffer, */
	size_t cur_off;              /* offset of its header, */
	uint32_t cur_blen;           /* body length */
	PgBuf refusal;               /* ErrorResponse for the message being refused */
	/* the held message, if any */
	uint64_t hold_id;            /* approval id, 0 = nothing held */
	uint8_t hold_type;           /* 'Q', 'B' or 'F' */
	size_t hold_len;             /* its length on the wire */
	bool released;               /* the message at the front was approved: forward it unchanged */
	StmtInfo *hold_info;         /* a held Query's analysis when it PREPAREs or DEALLOCATEs, else NULL */
	char *hold_sql;              /* and its text */
	struct event *hold_wake;     /* a decision arrived */
	struct event *hold_timer;    /* hold_timeout */
	struct event *hold_cancel;   /* a CancelRequest matched */
	RelayMask *mask;             /* results of a caller with masks (relay_mask.c); NULL: results pass unread */
	uint64_t mask_gen;           /* configuration generation the need for masks was decided at (0: not yet) */
	bool mask_idle_wait;         /* the caller's masks changed: apply once the server has answered everything */
	uint64_t mask_hash;          /* which mask rules apply to the caller (relay_mask.c), 0: none */
	StmtInfo *cur_info;          /* analysis of the Query or Parse being decided (a reference), for relay_mask.c */
	RelayAudit *audit;           /* statements waiting for their outcome in the audit log (relay_audit.c) */
	const char *audit_rule;      /* the rule that decided the latest statement ("file:line"), NULL: default_action */
	uint64_t released_id;        /* the approval that released the message at the front */
	struct event *audit_durable; /* strict audit: the row of the message at the front is durable */
	struct event *audit_room;    /* the audit queue has room again */
	uint64_t audit_wait_id;      /* strict: the row the message at the front waits for (0: none) */
	int audit_stop;              /* AuditStatus of the latest row started: AUDIT_FULL or AUDIT_FAILED stop the message */
	bool audit_past_bound;       /* an approved message's rows: they go in even when the queue is at its bound */
	size_t audit_wait_len;       /* the waiting message's length */
	uint8_t audit_wait_type;
	bool path_changed;           /* the session may no longer have the server's default search_path (set by a
					startup parameter or a statement let through; never cleared): unqualified
					names match no ALLOW ... ON entry and no grant */
};

/* FNV-1a: the hash of text `s` continued from h (start with RELAY_HASH_BASIS). */
#define RELAY_HASH_BASIS 1469598103934665603ull
static inline uint64_t relay_hash(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

/* ---- relay.c, for relay_mask.c ---- */

/* Builds the ErrorResponse of the message being refused. */
void relay_refuse(Session *s, const char *sqlstate, const char *msg, const char *detail, const char *hint,
		  int position);
/* Sends b to the client now, or after the server message passing (a boundary). */
void relay_send_to_client(Session *s, PgBuf *b);
/* Copies the body of the message at `off` (whole in `in`) to the relay's scratch buffer; NULL when out of memory. */
const uint8_t *relay_copy_body(Relay *r, struct evbuffer *in, size_t off, uint32_t blen);
/*
 * The statement a Bind of prepared statement `name` sent now runs, when
 * pgveil knows exactly one (a Parse earlier in the batch, else the one the
 * server confirmed); NULL otherwise. Not a reference.
 */
StmtInfo *relay_bound_info(Relay *r, const char *name);
/* The prepared statement the server holds under `name`, as pgveil knows it, or NULL. */
Prepared *relay_prepared_find(Relay *r, const char *name);

/* ---- relay_mask.c ---- */

typedef enum { RM_OK, RM_REFUSE, RM_WAIT } RmResult;

/*
 * Follows the configuration: sets up masking when the caller has masks
 * under the current rules, drops it when no longer; a session that ran
 * statements under other masks (or none) is ended. Called at a message
 * boundary before a client message is decided; returns RM_WAIT when masking
 * must start but the server still answers earlier messages (the client's
 * input waits; relay_mask_idle() says when to go on), RM_REFUSE when the
 * session was ended: out of memory, or masks that start to apply to a
 * session that already ran statements (a reload).
 */
RmResult relay_mask_update(Session *s);
/* True when nothing is outstanding and masking could start. */
bool relay_mask_idle(const Session *s);
/* True while a client message waits for the catalog. */
bool relay_mask_client_waits(const Session *s);
/*
 * The masking check of one analysed statement (policy_mask_check against
 * the current catalog snapshot). RM_WAIT: the catalog is not loaded yet
 * (the session resumes when it is), RM_REFUSE: blocked (refusal built).
 */
RmResult relay_mask_check(Session *s, const StmtInfo *info);
/*
 * A client message is forwarded to the server (after the guard, in order):
 * type, its body (blen bytes; for Bind at least both names), and for Query
 * and Parse the statement's analysis. Refusals are passed as the message
 * that replaces them.
 */
void relay_mask_client_msg(Session *s, uint8_t type, const uint8_t *body, size_t blen, StmtInfo *info);
/*
 * Before an Execute of `portal` is forwarded: when pgveil does not know the
 * portal's result columns, appends a Describe of it to `server_out` (its
 * answer is kept from the client) and records it.
 */
void relay_mask_before_execute(Session *s, const char *portal, struct evbuffer *server_out);
/* The client's copy-in ended: the Syncs it sent during COPY FROM STDIN (n of them) get no answer. */
void relay_mask_copy_in_done(Session *s, int n_syncs);

typedef enum { RMS_PASS, RMS_DONE, RMS_WAIT } RmsResult;
/*
 * A server message (header h at offset *run of `in`, avail bytes there).
 * RMS_PASS: relay.c handles it as usual. RMS_DONE: handled here (the bytes
 * before it moved to the client, the message consumed or replaced; *run is
 * 0). RMS_WAIT: stop reading until more bytes arrive or the catalog is
 * loaded (the session's relay_server_input runs again then).
 */
RmsResult relay_mask_server_msg(Session *s, struct evbuffer *in, size_t *run, size_t avail, const PgHeader *h);
/* Frees the masking state. */
void relay_mask_free(Session *s);
/*
 * True when the client's startup parameters may set search_path: a
 * search_path parameter, or options mentioning it (any case, '-' for '_').
 */
bool relay_startup_sets_search_path(const Session *s);

/* ---- relay_audit.c: one audit row per statement (nothing when the audit log is off) ---- */

/* A Query forwarded: a row per statement of it. */
void relay_audit_query(Session *s, const char *sql, const StmtInfo *info, const char *decision, const char *rule,
		       uint64_t approval_id);
/*
 * A statement refused (blocked, denied, timed out): its row, finished at
 * once. marker: a refusal statement goes to the server in its place, whose
 * error must not finish another row.
 */
void relay_audit_refused(Session *s, const char *sql, const StmtInfo *info, const char *decision, const char *rule,
			 const char *sqlstate, const char *message, uint64_t approval_id, bool marker);
/* A Bind forwarded: what the Executes of `portal` run. */
void relay_audit_bind(Session *s, const char *portal, const char *sql, const StmtInfo *info, const char *decision,
		      const char *rule, uint64_t approval_id);
/*
 * An Execute (or FunctionCall, portal FASTPATH_PORTAL) forwarded: its row, or the
 * next piece of its suspended portal's. max_rows: the Execute's row limit
 * (0: none), the rows a piece answered with PortalSuspended returned.
 */
void relay_audit_execute(Session *s, const char *portal, int64_t max_rows);
/* The client closes `portal`: a row left open by its suspension is finished. */
void relay_audit_close_portal(Session *s, const char *portal);
/* The masked columns of the result now answering ("public.t.a,public.t.b"). */
void relay_audit_masked(Session *s, const char *columns);
/* A server message (whole for C and E): finishes rows. */
void relay_audit_server(Session *s, uint8_t type, const uint8_t *body, size_t len);
void relay_audit_free(Session *s);
/* "the audit log cannot be written, so the statement is refused: REASON" (strict mode). */
void relay_audit_refusal_text(char *buf, size_t len);
/* The row `id` will not run (its message is refused in place): finished with the error, its answer a refusal's. */
void relay_audit_fail_waiting(Session *s, uint64_t id, const char *sqlstate, const char *message);

#endif
