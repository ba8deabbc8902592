/* SPDX-License-Identifier: MIT */
/*
 * A session's statements in the audit log: one queries row per statement,
 * whatever becomes of it. A row starts when pgveil decides the statement
 * (every statement of a Query string, every Execute of the extended
 * protocol, every refusal) and is finished with what the server answered:
 * the row count of its CommandComplete, its error, or, when the server
 * skipped it after an earlier error, "not run".
 *
 * Rows wait for their answer in the order their messages were sent. The
 * server answers statements in that order: each CommandComplete,
 * EmptyQueryResponse, PortalSuspended or FunctionCallResponse finishes the
 * oldest row; an ErrorResponse finishes it with the error and the server
 * skips the rest of the batch; ReadyForQuery ends the batch. A refusal
 * sent in place of a statement waits as a marker without a row (its row
 * was finished when it was refused), so that the server's error for it
 * lines up.
 *
 * A portal fetched in pieces (Execute with a row limit, answered with
 * PortalSuspended) is one statement: its row stays open, counting the rows
 * of each piece, and the Executes that go on with it add to it. It is
 * finished when the portal completes or fails, or when it goes away
 * unfinished: closed by the client, replaced by another Bind, at the end
 * of its transaction or of the session (then with the rows fetched).
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgveil/audit.h"
#include "pgveil/log.h"
#include "pgveil/mask.h"

#include "relay_int.h"

/* A statement waiting for its answer. */
typedef struct Waiting {
	uint64_t id;             /* audit row; 0: a refusal's marker */
	uint64_t batch;          /* the batch (Query or Sync) it belongs to */
	int64_t started_us;
	uint64_t bound;          /* an Execute's: the serial of its portal's Bound, 0 for none */
	int64_t max_rows;        /* an Execute's row limit: the rows it returned when its portal is suspended */
	struct Waiting *next;
} Waiting;

/* What a portal was bound to, for the rows of its Executes. */
typedef struct Bound {
	char *portal;
	char *sql;
	char classes[160];
	char decision[16];
	char *rule;
	uint64_t approval_id;
	uint64_t batch;          /* the batch the Bind was sent in */
	uint64_t serial;         /* its Executes' Waiting.bound */
	int n_waiting;           /* Executes of it waiting for their answer */
	uint64_t open_id;        /* the row of its statement, from its first Execute until it completes, else 0 */
	int64_t open_rows;       /* the rows its pieces returned */
	int64_t open_started_us;
	char *open_masked;       /* the masked columns of its first piece */
	bool closed;             /* gone (closed, replaced, its transaction over): freed once its Executes are answered */
	struct Bound *next;
} Bound;

struct RelayAudit {
	Waiting *head, *tail;
	Bound *bound;
	uint64_t next_serial;
	char masked[512];        /* the masked columns of the result now answering */
};

static RelayAudit *tracker(Session *s)
{
	Relay *r = s->relay;

	if (!audit_enabled())
		return NULL;
	if (r->audit == NULL && (r->audit = calloc(1, sizeof(*r->audit))) == NULL && audit_strict())
		r->audit_stop = AUDIT_FAILED; /* no row can be followed: strict mode refuses the statement */
	return r->audit;
}

static Waiting *wait_push(Session *s, RelayAudit *a, uint64_t id)
{
	Waiting *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		AuditOutcome o = { .rows = -1, .duration_us = -1, .sqlstate = SQLSTATE_OUT_OF_MEMORY,
				   .error = "pgveil ran out of memory while following the statement" };

		if (id != 0)
			audit_query_finish(id, &o);
		return NULL;
	}
	w->id = id;
	w->batch = s->relay->batches_sent;
	w->started_us = (int64_t)pgv_now_us(); /* durations on the monotonic clock */
	if (a->tail != NULL)
		a->tail->next = w;
	else
		a->head = w;
	a->tail = w;
	return w;
}

static Waiting *wait_pop(RelayAudit *a)
{
	Waiting *w = a->head;

	if (w != NULL) {
		a->head = w->next;
		if (a->head == NULL)
			a->tail = NULL;
	}
	return w;
}

/* The text of statement i of a Query (its span), in buf or a malloc'd copy. */
static char *stmt_text(const char *sql, const StmtInfo *info, int i)
{
	const SqlStmt *st = &info->stmts[i];
	const char *from = sql + st->offset;
	size_t len = st->len > 0 ? (size_t)st->len : strlen(from);
	char *t;

	while (len > 0 && (*from == ' ' || *from == '\t' || *from == '\n' || *from == '\r')) {
		from++;
		len--;
	}
	if ((t = malloc(len + 1)) != NULL) {
		memcpy(t, from, len);
		t[len] = '\0';
	}
	return t;
}

/*
 * Starts a row. gate: the statement is forwarded once the row is durable
 * (strict mode); a refusal's row is not waited for (nothing runs). first:
 * the message's first row, which may find the async queue full (then
 * nothing is queued, audit_stop says AUDIT_FULL and the message waits for
 * room); the message's other rows, refusals' rows and those of a message a
 * person approved go in even past the bound, so a message is recorded
 * whole or not yet, never twice.
 */
static uint64_t start_row(Session *s, const char *sql, const char *classes, const char *decision, const char *rule,
			  uint64_t approval_id, const char *fingerprint, bool gate, bool first)
{
	struct event *room = first && !s->relay->audit_past_bound ? s->relay->audit_room : NULL;
	AuditQuery q;
	uint64_t id = 0;

	memset(&q, 0, sizeof(q));
	q.session_id = s->id;
	q.ts_us = pgv_wall_us();
	q.subject = s->identity.subject != NULL ? s->identity.subject : "";
	q.database = s->database != NULL ? s->database : "";
	q.sql = sql != NULL ? sql : "";
	q.fingerprint = fingerprint;
	q.classes = classes != NULL ? classes : "";
	q.decision = decision;
	q.rule = rule;
	q.approval_id = approval_id;
	gate = gate && audit_strict();
	switch (audit_query_start(&q, gate ? s->relay->audit_durable : NULL, room, &id)) {
	case AUDIT_OK:
		if (gate)
			s->relay->audit_wait_id = id; /* the message goes on once its row is durable */
		return id;
	case AUDIT_FULL:
		s->relay->audit_stop = AUDIT_FULL; /* the message waits for room */
		return 0;
	case AUDIT_FAILED:
		s->relay->audit_stop = AUDIT_FAILED;
		if (gate && id != 0) { /* refused: the row (kept in memory by the log) says why, now */
			char msg[400];
			AuditOutcome o = { .rows = -1, .duration_us = 0, .sqlstate = SQLSTATE_IO_ERROR, .error = msg };

			relay_audit_refusal_text(msg, sizeof(msg));
			audit_query_finish(id, &o);
			return 0;
		}
		return id; /* a refusal's row: its caller finishes it */
	default:
		return 0;
	}
}

/* The message's first row found the queue full: it waits for room, with nothing of it queued. */
static bool waits_for_room(const Session *s)
{
	return s->relay->audit_stop == AUDIT_FULL;
}

void relay_audit_refusal_text(char *buf, size_t len)
{
	char why[256];

	snprintf(buf, len, "the audit log cannot be written, so the statement is refused: %s",
		 audit_error(why, sizeof(why)) != NULL ? why
						       : "the audit database refused its row (pgveil's log says why)");
}

void relay_audit_fail_waiting(Session *s, uint64_t id, const char *sqlstate, const char *message)
{
	RelayAudit *a = s->relay->audit;
	AuditOutcome o = { .rows = -1, .duration_us = 0, .sqlstate = sqlstate, .error = message };

	for (Waiting *w = a != NULL ? a->head : NULL; w != NULL; w = w->next)
		if (w->id == id) {
			audit_query_finish(id, &o);
			w->id = 0; /* now the refusal's marker */
			return;
		}
}

/*
 * The text a row records for `sql`: as sent, or with audit_redact_literals
 * its literals replaced by $n (*owned gets that copy, for the caller to
 * free); a text the lexer cannot normalize (or no memory) is withheld,
 * never stored as sent.
 */
static const char *recorded_text(Session *s, const char *sql, char **owned)
{
	*owned = NULL;
	if (sql == NULL)
		sql = "";
	if (!s->relay->cfg->audit_redact_literals)
		return sql;
	if ((*owned = sqlinfo_normalize(sql, strlen(sql))) != NULL)
		return *owned;
	return "(not recorded: audit_redact_literals is on and the text could not be normalized)";
}

/*
 * The error message a row records (malloc'd; NULL for none or without
 * memory): with audit_redact_literals cut where a value may start, as the
 * masks cut messages (syntax errors and conversion errors quote the text).
 */
static char *recorded_error(Session *s, const char *msg)
{
	if (msg == NULL)
		return NULL;
	return s->relay->cfg->audit_redact_literals ? mask_scrub_text(msg) : strdup(msg);
}

static void fingerprint_hex(const StmtInfo *info, char *buf, size_t len)
{
	snprintf(buf, len, "%016llx", (unsigned long long)info->fingerprint);
}

void relay_audit_query(Session *s, const char *sql, const StmtInfo *info, const char *decision, const char *rule,
		       uint64_t approval_id)
{
	RelayAudit *a = tracker(s);
	char classes[160], fp[24];

	if (a == NULL || info == NULL)
		return;
	fingerprint_hex(info, fp, sizeof(fp));
	for (int i = 0; i < info->n_stmts; i++) {
		char *text = stmt_text(sql, info, i), *owned;
		const char *rec = recorded_text(s, text != NULL ? text : sql, &owned);
		uint64_t id;

		sqlinfo_class_names(info->stmts[i].classes, classes, sizeof(classes));
		id = start_row(s, rec, classes, decision, rule, approval_id, fp, true, i == 0);
		free(owned);
		free(text);
		if (waits_for_room(s))
			return;
		wait_push(s, a, id);
	}
}

void relay_audit_refused(Session *s, const char *sql, const StmtInfo *info, const char *decision, const char *rule,
			 const char *sqlstate, const char *message, uint64_t approval_id, bool marker)
{
	RelayAudit *a = tracker(s);
	AuditOutcome o = { .rows = -1, .duration_us = 0, .sqlstate = sqlstate };
	char classes[160] = "", fp[24];
	char *owned, *err;
	uint64_t id;

	if (a == NULL)
		return;
	if (info != NULL) {
		sqlinfo_class_names(info->classes, classes, sizeof(classes));
		fingerprint_hex(info, fp, sizeof(fp));
	}
	id = start_row(s, recorded_text(s, sql, &owned), classes, decision, rule, approval_id, info != NULL ? fp : NULL,
		       false, false);
	s->relay->audit_stop = AUDIT_OK; /* a refusal goes out whatever the log says */
	free(owned);
	if (id != 0) {
		o.error = err = recorded_error(s, message);
		audit_query_finish(id, &o);
		free(err);
	}
	if (marker)
		wait_push(s, a, 0); /* the server's error for the refusal statement */
}

/* The portal has no statement row open (after it was finished). */
static void open_reset(Bound *b)
{
	b->open_id = 0;
	b->open_rows = 0;
	free(b->open_masked);
	b->open_masked = NULL;
}

/*
 * The row of a portal's statement that goes away unfinished (closed,
 * replaced, its transaction or session over): finished with the rows its
 * pieces returned.
 */
static void close_open(Bound *b)
{
	AuditOutcome o = { .rows = b->open_rows, .masked_columns = b->open_masked };

	if (b->open_id != 0) {
		o.duration_us = (int64_t)pgv_now_us() - b->open_started_us;
		audit_query_finish(b->open_id, &o);
	}
	open_reset(b);
}

static void bound_free(Bound *b)
{
	close_open(b);
	free(b->portal);
	free(b->sql);
	free(b->rule);
	free(b);
}

static Bound *bound_by_serial(RelayAudit *a, uint64_t serial)
{
	for (Bound *b = a->bound; serial != 0 && b != NULL; b = b->next)
		if (b->serial == serial)
			return b;
	return NULL;
}

/* The live Bound of `portal` (one that is gone may wait for its Executes' answers). */
static Bound *bound_by_name(RelayAudit *a, const char *portal)
{
	for (Bound *b = a->bound; b != NULL; b = b->next)
		if (!b->closed && strcmp(b->portal, portal) == 0)
			return b;
	return NULL;
}

/*
 * The portal is gone: freed now, or once its waiting Executes are answered
 * (they share its row).
 */
static void bound_gone(RelayAudit *a, Bound *b)
{
	b->closed = true;
	if (b->n_waiting > 0)
		return;
	for (Bound **bp = &a->bound; *bp != NULL; bp = &(*bp)->next)
		if (*bp == b) {
			*bp = b->next;
			bound_free(b);
			return;
		}
}

/* The transaction ended: portals bound in batches before `done` are gone from the server. */
static void forget_bound(RelayAudit *a, uint64_t done)
{
	Bound *b = a->bound, *next;

	for (; b != NULL; b = next) {
		next = b->next;
		if (b->batch < done)
			bound_gone(a, b);
	}
}

void relay_audit_bind(Session *s, const char *portal, const char *sql, const StmtInfo *info, const char *decision,
		      const char *rule, uint64_t approval_id)
{
	RelayAudit *a = tracker(s);
	Bound *b;

	if (a == NULL)
		return;
	if ((b = bound_by_name(a, portal)) != NULL)
		bound_gone(a, b); /* a Bind replaces the portal of the same name */
	b = calloc(1, sizeof(*b));
	if (b != NULL) {
		char *owned;
		const char *rec = recorded_text(s, sql, &owned);

		b->sql = owned != NULL ? owned : strdup(rec);
	}
	if (b == NULL || (b->portal = strdup(portal)) == NULL || b->sql == NULL ||
	    (rule != NULL && (b->rule = strdup(rule)) == NULL)) {
		if (b != NULL)
			bound_free(b);
		return;
	}
	if (info != NULL)
		sqlinfo_class_names(info->classes, b->classes, sizeof(b->classes));
	snprintf(b->decision, sizeof(b->decision), "%s", decision);
	b->approval_id = approval_id;
	b->serial = ++a->next_serial;
	b->batch = s->relay->batches_sent;
	b->next = a->bound;
	a->bound = b;
}

void relay_audit_execute(Session *s, const char *portal, int64_t max_rows)
{
	RelayAudit *a = tracker(s);
	Bound *b;
	Waiting *w;
	uint64_t id;

	if (a == NULL)
		return;
	if ((b = bound_by_name(a, portal)) == NULL) { /* not bound through pgveil: a cursor declared in SQL */
		char *text = NULL;

		if (asprintf(&text, "-- Execute of portal \"%s\", not bound through pgveil (a cursor declared in SQL)",
			     portal) < 0)
			text = NULL;
		id = start_row(s, text != NULL ? text : "-- Execute of a portal not bound through pgveil", "", "allow",
			       NULL, 0, NULL, true, true);
		free(text);
		if (!waits_for_room(s) && (w = wait_push(s, a, id)) != NULL)
			w->max_rows = max_rows;
		return;
	}
	if (b->open_id != 0) { /* the next piece of the portal's statement: its row is started (and durable) */
		if ((w = wait_push(s, a, b->open_id)) != NULL)
			w->started_us = b->open_started_us;
	} else {
		id = start_row(s, b->sql, b->classes, b->decision, b->rule, b->approval_id, NULL, true, true);
		if (waits_for_room(s))
			return;
		if ((w = wait_push(s, a, id)) != NULL && id != 0) {
			b->open_id = id;
			b->open_started_us = w->started_us;
		}
	}
	if (w != NULL) {
		w->bound = b->serial;
		w->max_rows = max_rows;
		b->n_waiting++;
	}
}

void relay_audit_close_portal(Session *s, const char *portal)
{
	RelayAudit *a = s->relay->audit;
	Bound *b;

	if (a != NULL && (b = bound_by_name(a, portal)) != NULL)
		bound_gone(a, b);
}

void relay_audit_masked(Session *s, const char *columns)
{
	RelayAudit *a = s->relay->audit;

	if (a != NULL)
		snprintf(a->masked, sizeof(a->masked), "%s", columns != NULL ? columns : "");
}

/* The row count of a CommandComplete tag ("SELECT 3", "INSERT 0 5"), -1 for none. */
static int64_t tag_rows(const char *tag)
{
	const char *sp = strrchr(tag, ' ');

	if (sp == NULL || sp[1] < '0' || sp[1] > '9')
		return -1;
	return strtoll(sp + 1, NULL, 10);
}

static void finish(RelayAudit *a, Waiting *w, int64_t rows, const char *sqlstate, const char *error)
{
	AuditOutcome o;

	if (w->id != 0) {
		o.rows = rows;
		o.duration_us = (int64_t)pgv_now_us() - w->started_us;
		o.sqlstate = sqlstate;
		o.error = error;
		o.masked_columns = a->masked[0] != '\0' ? a->masked : NULL;
		audit_query_finish(w->id, &o);
	}
	a->masked[0] = '\0';
	free(w);
}

/* How a waiting statement was answered. */
typedef enum {
	ANS_DONE,      /* CommandComplete, EmptyQueryResponse or its error */
	ANS_SUSPENDED, /* PortalSuspended: more of its portal may be fetched */
	ANS_SKIPPED,   /* not run (an earlier error of its batch, the session's end) */
} Answer;

/*
 * The answer of waiting statement w. An Execute's row is its portal's
 * statement's: kept open while the portal is suspended (with the rows of
 * the piece), finished when it completes or fails; the Executes that were
 * sent after that have nothing to add. rows: the CommandComplete's count
 * (-1 for none), which for a portal fetched in pieces counts the last
 * piece only, whatever the command (SELECT, INSERT ... RETURNING).
 */
static void answer(RelayAudit *a, Waiting *w, Answer how, int64_t rows, const char *sqlstate,
		   const char *error)
{
	Bound *b = bound_by_serial(a, w->bound);

	if (b != NULL)
		b->n_waiting--;
	if (b == NULL || w->id == 0) { /* not an Execute of a portal pgveil follows, or a marker */
		finish(a, w, how == ANS_SUSPENDED ? w->max_rows : rows, sqlstate, error);
	} else if (b->open_id != w->id) { /* its statement's row is finished already */
		a->masked[0] = '\0';
		free(w);
	} else if (how == ANS_SUSPENDED) {
		b->open_rows += w->max_rows;
		if (b->open_masked == NULL && a->masked[0] != '\0')
			b->open_masked = strdup(a->masked);
		a->masked[0] = '\0';
		free(w);
	} else if (how == ANS_SKIPPED && b->open_rows > 0) { /* the portal went with its batch after some pieces */
		close_open(b);
		a->masked[0] = '\0';
		free(w);
	} else {
		if (rows >= 0)
			rows += b->open_rows;
		if (a->masked[0] == '\0' && b->open_masked != NULL)
			snprintf(a->masked, sizeof(a->masked), "%s", b->open_masked);
		open_reset(b);
		finish(a, w, rows, sqlstate, error);
	}
	if (b != NULL && b->closed && b->n_waiting == 0)
		bound_gone(a, b);
}

void relay_audit_server(Session *s, uint8_t type, const uint8_t *body, size_t len)
{
	Relay *r = s->relay;
	RelayAudit *a = r->audit;
	Waiting *w;
	PgErrorFields f;

	if (a == NULL)
		return;
	switch (type) {
	case 'C':
		if ((w = wait_pop(a)) != NULL) {
			answer(a, w, ANS_DONE, len > 0 && body[len - 1] == '\0' ? tag_rows((const char *)body) : -1, NULL,
			       NULL);
		}
		break;
	case 'I':
	case 's':
		if ((w = wait_pop(a)) != NULL)
			answer(a, w, type == 's' ? ANS_SUSPENDED : ANS_DONE, type == 'I' ? 0 : -1, NULL, NULL);
		break;
	case 'V': /* FunctionCallResponse: the call ran and returned its one value */
		if ((w = wait_pop(a)) != NULL)
			answer(a, w, ANS_DONE, 1, NULL, NULL);
		break;
	case 'E':
		if (!pgproto_parse_error(body, len, &f) || (f.severity != NULL && strcmp(f.severity, "ERROR") != 0))
			break;
		if ((w = wait_pop(a)) != NULL) {
			uint64_t batch = w->batch;
			char *err = recorded_error(s, f.message);

			answer(a, w, ANS_DONE, -1, f.sqlstate, err);
			free(err);
			while (a->head != NULL && a->head->batch == batch) /* the server skips the rest of the batch */
				answer(a, wait_pop(a), ANS_SKIPPED, -1, NULL,
				       "not run: an earlier statement of its batch failed");
		}
		break;
	case 'Z':
		while (a->head != NULL && a->head->batch < r->batches_done)
			answer(a, wait_pop(a), ANS_SKIPPED, -1, NULL, "not run");
		if (s->txn_status == 'I')
			forget_bound(a, r->batches_done);
		break;
	default:
		break;
	}
}

void relay_audit_free(Session *s)
{
	RelayAudit *a = s->relay->audit;

	if (a == NULL)
		return;
	while (a->head != NULL)
		answer(a, wait_pop(a), ANS_SKIPPED, -1, NULL, "the session ended before the server answered");
	while (a->bound != NULL) {
		Bound *b = a->bound;

		a->bound = b->next;
		bound_free(b);
	}
	free(a);
	s->relay->audit = NULL;
}
