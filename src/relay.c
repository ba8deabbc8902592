/* SPDX-License-Identifier: MIT */
/*
 * The query-phase relay of a session, with the statement guard. Client
 * messages are framed and checked; Query, Parse, Bind, Close and
 * FunctionCall are read whole and decided before anything of them moves.
 *
 * Refusing without desynchronising the client: a refused message is
 * replaced by a statement the server's parser rejects (REFUSAL_SQL). The
 * server then does what PostgreSQL does after any error: it aborts the
 * transaction block or the implicit transaction, skips the rest of an
 * extended-protocol pipeline up to Sync, and sends ReadyForQuery with the
 * true transaction status. The ErrorResponse it sends for that statement
 * (always 42601) is replaced on the way back by pgveil's own message. A
 * replacement waits in a FIFO tagged with the number of the batch (Query
 * or Sync) it belongs to; each ReadyForQuery closes a batch.
 *
 * Holding: the held message stays at the front of the client's input, so
 * the bytes that run on approval are the bytes that were shown to the
 * approver. Later messages queue behind it.
 */
#include "pgveil/relay.h"

#include "relay_int.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pgveil/admin.h"
#include "pgveil/approval.h"
#include "pgveil/audit.h"
#include "pgveil/log.h"
#include "pgveil/pgproto.h"
#include "pgveil/policy.h"
#include "pgveil/rules.h"
#include "pgveil/server.h"
#include "pgveil/session.h"
#include "pgveil/sqlinfo.h"
#include "pgveil/stream.h"

/* The statement sent in place of a refused one: the server's parser rejects it with 42601. */
#define REFUSAL_SQL "pgveil: statement refused by policy"
#define SQLSTATE_SYNTAX_ERROR "42601"
#define MAX_PARTS 64
#define MAX_HOLD_TABLES 64
/* The name FunctionCalls are audited under (no portal can have it: it starts with a control byte). */
#define FASTPATH_PORTAL "\001fastpath"
/* Bytes of a Bind read to find its names; the parameters are read only when it is held. */
#define BIND_PEEK 256
/* A copy buffer larger than this is freed after use. */
#define SCRATCH_KEEP (1024 * 1024)
/* What a session with a held message still reads (and buffers) behind it. */
#define HOLD_READ_AHEAD (256 * 1024)

/* ---- prepared statements -------------------------------------------------------- */

static size_t name_hash(const char *name)
{
	return (size_t)relay_hash(RELAY_HASH_BASIS, name);
}

static Prepared **prepared_slot(Relay *r, const char *name)
{
	Prepared **p = &r->buckets[name_hash(name) & (r->n_buckets - 1)];

	while (*p != NULL && strcmp((*p)->name, name) != 0)
		p = &(*p)->next;
	return p;
}

Prepared *relay_prepared_find(Relay *r, const char *name)
{
	return *prepared_slot(r, name);
}

static void prepared_free(Prepared *p)
{
	for (int i = 0; i < p->n_infos; i++)
		sqlinfo_unref(p->infos[i]);
	free(p->infos);
	free(p->name);
	free(p->sql);
	free(p);
}

static void prepared_remove(Relay *r, const char *name)
{
	Prepared **slot = prepared_slot(r, name), *p = *slot;

	if (p == NULL)
		return;
	*slot = p->next;
	prepared_free(p);
	r->n_prepared--;
}

static void prepared_clear(Relay *r)
{
	for (size_t i = 0; i < r->n_buckets; i++) {
		while (r->buckets[i] != NULL) {
			Prepared *p = r->buckets[i];

			r->buckets[i] = p->next;
			prepared_free(p);
		}
	}
	r->n_prepared = 0;
}

static bool prepared_grow(Relay *r)
{
	size_t n = r->n_buckets * 2;
	Prepared **nb = calloc(n, sizeof(*nb));

	if (nb == NULL)
		return false;
	for (size_t i = 0; i < r->n_buckets; i++) {
		while (r->buckets[i] != NULL) {
			Prepared *p = r->buckets[i];

			r->buckets[i] = p->next;
			p->next = nb[name_hash(p->name) & (n - 1)];
			nb[name_hash(p->name) & (n - 1)] = p;
		}
	}
	free(r->buckets);
	r->buckets = nb;
	r->n_buckets = n;
	return true;
}

/*
 * Records that the server may now hold `info` under `name`. The unnamed
 * statement is replaced (the server drops it before parsing a new one). A
 * named one that exists already keeps its old body too: the server refuses
 * a duplicate name, but if pgveil's picture were ever stale the union still
 * decides on everything the name could run.
 */
static bool prepared_add(Relay *r, const char *name, const char *sql, StmtInfo *info)
{
	Prepared *p;
	StmtInfo **ni;

	if (name[0] == '\0')
		prepared_remove(r, name);
	p = relay_prepared_find(r, name);
	if (p == NULL) {
		if (r->n_prepared >= r->n_buckets && !prepared_grow(r))
			return false;
		p = calloc(1, sizeof(*p));
		if (p == NULL || (p->name = strdup(name)) == NULL || (p->sql = strdup(sql)) == NULL) {
			if (p != NULL)
				free(p->name);
			free(p);
			return false;
		}
		Prepared **slot = prepared_slot(r, name);
		p->next = *slot;
		*slot = p;
		r->n_prepared++;
	}
	ni = realloc(p->infos, (size_t)(p->n_infos + 1) * sizeof(*ni));
	if (ni == NULL)
		return false;
	p->infos = ni;
	p->infos[p->n_infos++] = sqlinfo_ref(info);
	p->decided = false;
	return true;
}

/*
 * Queues a forwarded statement's PREPAREs and DEALLOCATEs; each changes
 * pgveil's picture of the server when the server's CommandComplete confirms
 * it. Until then EXECUTE counts the PREPAREd body as possible too. A change
 * that cannot be queued (out of memory) never happens in the picture: an
 * unconfirmed PREPARE stays unknown (EXECUTE refused), an unconfirmed
 * DEALLOCATE keeps the name known.
 */
static bool pending_push(Relay *r, PendKind kind, const char *name, const char *sql, StmtInfo *info);

static void prepared_track(Relay *r, StmtInfo *info, const char *sql)
{
	for (int i = 0; i < info->n_prep; i++) {
		const SqlPrepRef *ref = &info->prep[i];

		switch (ref->op) {
		case SQL_PREP_PREPARE:
			/* The body parts are found again through the PREPARE ref at EXECUTE. */
			(void)pending_push(r, PEND_PREPARE, ref->name, sql, info);
			break;
		case SQL_PREP_DEALLOCATE:
			(void)pending_push(r, PEND_DEALLOCATE, ref->name, NULL, NULL); /* not pushed: stays known */
			break;
		case SQL_PREP_DEALLOCATE_ALL:
			(void)pending_push(r, PEND_DEALLOCATE, NULL, NULL, NULL);
			break;
		case SQL_PREP_EXECUTE:
			break;
		}
	}
}

static bool pending_push(Relay *r, PendKind kind, const char *name, const char *sql, StmtInfo *info)
{
	Pending *q = calloc(1, sizeof(*q));

	if (q == NULL || (name != NULL && (q->name = strdup(name)) == NULL) ||
	    (sql != NULL && (q->sql = strdup(sql)) == NULL)) {
		if (q != NULL)
			free(q->name);
		free(q);
		return false;
	}
	q->kind = kind;
	q->batch = r->batches_sent;
	q->info = info != NULL ? sqlinfo_ref(info) : NULL;
	if (kind == PEND_PREPARE || kind == PEND_DEALLOCATE)
		r->n_pend_sql++;
	if (r->pend_tail != NULL)
		r->pend_tail->next = q;
	else
		r->pend_head = q;
	r->pend_tail = q;
	return true;
}

/* Unlinks *qp (prev is its predecessor, NULL at the head) and frees it. */
static void pending_unlink(Relay *r, Pending **qp, Pending *prev)
{
	Pending *q = *qp;

	*qp = q->next;
	if (r->pend_tail == q)
		r->pend_tail = prev;
	if (q->kind == PEND_PREPARE || q->kind == PEND_DEALLOCATE)
		r->n_pend_sql--;
	if (q->info != NULL)
		sqlinfo_unref(q->info);
	free(q->name);
	free(q->sql);
	free(q);
}

/* The last Parse of `name` earlier in the batch being sent: it decides what the name holds. NULL: none. */
static const Pending *batch_parse(const Relay *r, const char *name)
{
	const Pending *cur = NULL;

	for (const Pending *q = r->pend_head; q != NULL; q = q->next)
		if (q->kind == PEND_PARSE && q->batch == r->batches_sent && strcmp(q->name, name) == 0)
			cur = q;
	return cur;
}

StmtInfo *relay_bound_info(Relay *r, const char *name)
{
	const Pending *cur = batch_parse(r, name);
	const Prepared *p;

	if (cur != NULL)
		return cur->info;
	p = relay_prepared_find(r, name);
	return p != NULL && p->n_infos == 1 ? p->infos[0] : NULL;
}

/*
 * The one body a Bind of `name` runs, or NULL when pgveil cannot be sure
 * which: relay_bound_info, unless a Parse or PREPARE of the name from an
 * earlier batch is still unconfirmed (the server may hold either body).
 */
static StmtInfo *bind_runs(Relay *r, const char *name)
{
	for (const Pending *q = r->pend_head; q != NULL; q = q->next)
		if ((q->kind == PEND_PARSE || q->kind == PEND_PREPARE) && q->batch != r->batches_sent &&
		    strcmp(q->name, name) == 0)
			return NULL;
	return relay_bound_info(r, name);
}

/* Forgets the changes of finished batches that were never confirmed: the server skipped them. */
static void pending_drop_done(Relay *r)
{
	while (r->pend_head != NULL && r->pend_head->batch < r->batches_done)
		pending_unlink(r, &r->pend_head, NULL);
}

/*
 * The server confirmed the oldest unconfirmed change of `kind`: apply it.
 * Only a change of the batch being answered can be confirmed; otherwise
 * pgveil's count of batches is off, and it keeps its picture as it is (a
 * name stays known or unknown: what it cannot confirm it does not install).
 */
static void pending_confirm(Relay *r, PendKind kind)
{
	Pending **qp = &r->pend_head, *prev = NULL;

	pending_drop_done(r);
	while (*qp != NULL && (*qp)->kind != kind) {
		prev = *qp;
		qp = &(*qp)->next;
	}
	if (*qp == NULL || (*qp)->batch != r->batches_done)
		return;
	if (kind == PEND_PARSE || kind == PEND_PREPARE)
		(void)prepared_add(r, (*qp)->name, (*qp)->sql, (*qp)->info); /* out of memory: stays unknown */
	else if ((*qp)->name == NULL && kind == PEND_DEALLOCATE)
		prepared_clear(r);
	else if ((*qp)->name != NULL)
		prepared_remove(r, (*qp)->name);
	pending_unlink(r, qp, prev);
}

/* ---- deciding ------------------------------------------------------------------------ */

typedef struct PartList {
	const SqlPart *parts[MAX_PARTS];
	int n;
	bool overflow;
} PartList;

static void parts_add(PartList *pl, const SqlPart *p)
{
	if (pl->n < MAX_PARTS)
		pl->parts[pl->n++] = p;
	else
		pl->overflow = true;
}

/*
 * The parts statement `info`, prepared under `name`, runs. For a name
 * PREPAREd in SQL that is the body of the PREPARE ref; for a protocol-level
 * Parse the whole statement.
 */
static void parts_of_body(PartList *pl, const char *name, const StmtInfo *info)
{
	bool via_sql = false;

	for (int k = 0; k < info->n_prep; k++) {
		const SqlPrepRef *ref = &info->prep[k];

		if (ref->op != SQL_PREP_PREPARE || strcmp(ref->name, name) != 0)
			continue;
		via_sql = true;
		for (int j = 0; j < ref->n_parts; j++)
			parts_add(pl, &info->parts[ref->part_first + j]);
	}
	if (!via_sql)
		for (int j = 0; j < info->n_parts; j++)
			parts_add(pl, &info->parts[j]);
}

void relay_refuse(Session *s, const char *sqlstate, const char *msg, const char *detail, const char *hint,
		  int position)
{
	Relay *r = s->relay;

	pgproto_buf_reset(&r->refusal);
	pgproto_build_error_at(&r->refusal, false, "ERROR", sqlstate, msg, detail, hint, position);
}

/* Follows a reload: the next statement is decided under the new rules. */
static Config *relay_config(Relay *r)
{
	uint64_t gen = config_generation();

	if (gen != r->cfg_gen) {
		Config *cfg = config_current();

		if (cfg != NULL) {
			config_unref(r->cfg);
			r->cfg = cfg;
		}
		r->cfg_gen = gen;
	}
	return r->cfg;
}

/* Prepared statements that EXECUTE prepared statements: how deep pgveil follows. */
#define MAX_EXECUTE_DEPTH 4

typedef enum { NAMED_OK, NAMED_UNKNOWN, NAMED_REFUSED } NamedResult;

static NamedResult add_named(Session *s, const char *name, PartList *pl, int depth, bool *settled,
			     const char **sql);

/*
 * Adds the bodies of the prepared statements `info` EXECUTEs. Returns false
 * (refusal built) for an EXECUTE of a name this session has no record of:
 * pgveil cannot tell what it would run.
 */
static bool add_executed(Session *s, const StmtInfo *info, PartList *pl, int depth, bool *settled)
{
	for (int i = 0; i < info->n_prep; i++) {
		const SqlPrepRef *ref = &info->prep[i];
		const char *sql;
		char msg[256];
		bool sub_settled;

		if (ref->op != SQL_PREP_EXECUTE)
			continue;
		*settled = false; /* depends on another name's state */
		switch (add_named(s, ref->name, pl, depth + 1, &sub_settled, &sql)) {
		case NAMED_OK:
			break;
		case NAMED_REFUSED:
			return false;
		case NAMED_UNKNOWN:
			snprintf(msg, sizeof(msg), "EXECUTE of \"%s\", a prepared statement pgveil has no record of",
				 ref->name);
			relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE, msg, NULL,
			       "PREPARE it in this session through pgveil first", 0);
			return false;
		}
	}
	return true;
}

static bool check_overflow(Session *s, const PartList *pl)
{
	if (!pl->overflow)
		return true;
	relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE, "statement has too many parts to check", NULL, NULL, 0);
	return false;
}

/* The parts of `info` plus the bodies of the prepared statements it EXECUTEs. */
static bool collect_parts(Session *s, const StmtInfo *info, PartList *pl)
{
	bool settled;

	for (int j = 0; j < info->n_parts; j++)
		parts_add(pl, &info->parts[j]);
	return add_executed(s, info, pl, 0, &settled) && check_overflow(s, pl);
}

/* Adds one body of prepared statement `name` and whatever it EXECUTEs. */
static bool add_body(Session *s, const char *name, const StmtInfo *info, PartList *pl, int depth, bool *settled)
{
	parts_of_body(pl, name, info);
	return info->n_prep == 0 || add_executed(s, info, pl, depth, settled);
}

/*
 * Adds what prepared statement `name` can run when the server reaches the
 * message being decided. A Parse of the name earlier in the open batch
 * decides it alone: if that Parse fails, the server skips the rest of the
 * batch. Otherwise every body it may hold: those the server confirmed, and
 * each Parse or PREPARE of the name it has not answered yet. *settled is false
 * when the answer depends on unanswered Parses or other names (not to be
 * cached); *sql is the text to show an approver.
 */
static NamedResult add_named(Session *s, const char *name, PartList *pl, int depth, bool *settled,
			     const char **sql)
{
	Relay *r = s->relay;
	const Pending *current = NULL;
	const Prepared *p = relay_prepared_find(r, name);
	bool found = false;

	*settled = true;
	if (depth > MAX_EXECUTE_DEPTH) {
		relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE, "prepared statements EXECUTE each other too deeply to check",
		       NULL, NULL, 0);
		return NAMED_REFUSED;
	}
	for (const Pending *q = r->pend_head; q != NULL; q = q->next) {
		if ((q->kind != PEND_PARSE && q->kind != PEND_PREPARE) || strcmp(q->name, name) != 0)
			continue;
		*settled = false;
		if (q->kind == PEND_PARSE && q->batch == r->batches_sent)
			current = q;
	}
	if (current != NULL) {
		*sql = current->sql;
		return add_body(s, name, current->info, pl, depth, settled) ? NAMED_OK : NAMED_REFUSED;
	}
	for (int i = 0; p != NULL && i < p->n_infos; i++)
		if (!add_body(s, name, p->infos[i], pl, depth, settled))
			return NAMED_REFUSED;
	if (p != NULL) {
		*sql = p->sql;
		found = true;
	}
	for (const Pending *q = r->pend_head; q != NULL; q = q->next) {
		if ((q->kind != PEND_PARSE && q->kind != PEND_PREPARE) || strcmp(q->name, name) != 0)
			continue;
		if (!add_body(s, name, q->info, pl, depth, settled))
			return NAMED_REFUSED;
		if (!found)
			*sql = q->sql;
		found = true;
	}
	return found ? NAMED_OK : NAMED_UNKNOWN;
}

/*
 * A statement pgveil could not analyse: the parser's message and position
 * (42601, as the server would say), or why it was not analysed at all (too
 * long, too deeply nested, too complex: 54001).
 */
static void refuse_unparsable(Session *s, const StmtInfo *info)
{
	if (info->error_is_syntax)
		relay_refuse(s, SQLSTATE_SYNTAX_ERROR, info->error, "pgveil refuses statements it cannot parse.", NULL,
		       info->error_pos);
	else
		relay_refuse(s, SQLSTATE_STATEMENT_TOO_COMPLEX, info->error, "pgveil refuses statements it cannot analyse.",
		       NULL, 0);
	log_write(LL_INFO, s->ctx, "refused a statement it could not analyse: %s", info->error);
}

/*
 * standard_conforming_strings off, or a client_encoding other than UTF8:
 * the server would then split statements differently from pgveil's parser,
 * and what pgveil checked would not be what runs. Refused whatever the rules.
 */
static void refuse_lexical(Session *s)
{
	relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE,
		     "pgveil does not allow changing standard_conforming_strings or client_encoding",
		     "Statements are checked as PostgreSQL reads them with standard_conforming_strings = on and "
		     "client_encoding = UTF8.", NULL, 0);
	log_write(LL_INFO, s->ctx, "refused a change of standard_conforming_strings or client_encoding");
}

/* Builds the refusal for a blocked decision. */
static void refuse_blocked(Session *s, const Decision *d)
{
	char msg[512], detail[256];

	policy_message(d, msg, sizeof(msg));
	if (d->rule != NULL)
		snprintf(detail, sizeof(detail), "Blocked by rule %s.", d->rule->where);
	else
		snprintf(detail, sizeof(detail), "No rule matched; default_action = block.");
	relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE, msg, detail, NULL, 0);
	log_write(LL_INFO, s->ctx, "blocked: %s", msg);
}

/*
 * True when unqualified names of `info` (NULL: nothing more than the
 * session's history) resolve through the server's default search_path.
 */
static bool path_default(const Relay *r, const StmtInfo *info)
{
	return !r->path_changed && (info == NULL || !info->changes_search_path);
}

/* A statement that may change the search_path is let through (forwarded, held or prepared). */
static void path_note(Relay *r, const StmtInfo *info)
{
	if (info->changes_search_path)
		r->path_changed = true;
}

/* Decides the parts of `info` (NULL for a Bind or FunctionCall: parts only). */
static Decision decide(Session *s, const PartList *pl, const StmtInfo *info)
{
	Config *cfg = relay_config(s->relay);
	Decision d = policy_decide(cfg->ruleset, cfg->default_action, &s->identity, pl->parts, pl->n,
				   path_default(s->relay, info));

	s->relay->audit_rule = d.rule != NULL ? d.rule->where : NULL;
	admin_stat_add(d.action == DECISION_ALLOW ? STAT_ALLOWED : d.action == DECISION_BLOCK ? STAT_BLOCKED : STAT_HELD,
		       1);
	return d;
}

/* ---- holding ---------------------------------------------------------------------- */

static void table_name(const SqlTable *t, char *buf, size_t len)
{
	if (t->schema != NULL)
		snprintf(buf, len, "%s.%s", t->schema, t->name);
	else
		snprintf(buf, len, "%s", t->name);
}

/*
 * "schema.name" of every table the parts touch (deduplicated), for grants;
 * *all is false when there were more than MAX_HOLD_TABLES.
 */
static int hold_tables(const PartList *pl, char names[][128], const char **ptrs, bool *all)
{
	int n = 0;

	*all = true;
	for (int i = 0; i < pl->n; i++) {
		for (int j = 0; j < pl->parts[i]->n_tables; j++) {
			char buf[128];
			bool dup = false;

			table_name(&pl->parts[i]->tables[j], buf, sizeof(buf));
			for (int k = 0; k < n && !dup; k++)
				dup = strcmp(names[k], buf) == 0;
			if (!dup && n == MAX_HOLD_TABLES) {
				*all = false; /* more than the approver's list holds */
				return n;
			}
			if (!dup) {
				memcpy(names[n], buf, sizeof(buf));
				ptrs[n] = names[n];
				n++;
			}
		}
	}
	return n;
}

/* Whether the statement runs a prepared statement by name (SQL EXECUTE). */
static bool executes(const StmtInfo *info)
{
	for (int i = 0; i < info->n_prep; i++)
		if (info->prep[i].op == SQL_PREP_EXECUTE)
			return true;
	return false;
}

/*
 * Why no time-boxed grant may cover the statement of `pl` (`info`: its
 * analysis, the prepared body for a Bind, NULL when unknown) nor be made
 * from it, or NULL when one may: what it touches must be known by name,
 * and a statement touching no table must be known by its fingerprint.
 */
static const char *no_grant_reason(const Relay *r, const PartList *pl, const StmtInfo *info)
{
	bool path = path_default(r, info);
	int n_tables = 0;

	for (int i = 0; i < pl->n; i++) {
		if (pl->parts[i]->classes & SC_PROCEDURAL)
			return "it runs code whose tables pgveil cannot know (DO, CALL, a function that is not built in)";
		for (int j = 0; !path && j < pl->parts[i]->n_tables; j++)
			if (pl->parts[i]->tables[j].schema == NULL)
				return "it names a table without schema after the session's search_path may have changed";
		n_tables += pl->parts[i]->n_tables;
	}
	/*
	 * A grant from a statement touching no table covers that statement again
	 * (its fingerprint): it must be known, its literals must not matter
	 * (set_config('work_mem', …) is not set_config('role', …)), and it must
	 * not EXECUTE a name whose body can change.
	 */
	if (n_tables == 0 && (info == NULL || info->fingerprint == 0))
		return "it touches no table and pgveil cannot tell which statement it is (a FunctionCall, or a name "
		       "prepared with several bodies)";
	if (n_tables == 0 && (info->literal_sensitive || executes(info)))
		return "it touches no table and what it does depends on its literals or on a prepared statement's "
		       "body, which its fingerprint does not show";
	return NULL;
}

/*
 * Starts holding the message at the front of the client's input (`info` as
 * for no_grant_reason). Returns GUARD_FORWARD when a grant covers it,
 * GUARD_HOLD when it waits, or GUARD_REFUSE when the hold cannot be
 * registered.
 */
static GuardAction hold_start(Session *s, uint8_t type, size_t msglen, const char *sql, const Decision *d,
			      const PartList *pl, const StmtInfo *info)
{
	Relay *r = s->relay;
	Config *cfg = r->cfg;
	static __thread char names[MAX_HOLD_TABLES][128];
	const char *ptrs[MAX_HOLD_TABLES];
	const char *rule = d->rule != NULL ? d->rule->where : NULL;
	const char *subject = s->identity.subject != NULL ? s->identity.subject : "";
	bool all_tables;
	int n_tables = hold_tables(pl, names, ptrs, &all_tables);
	const char *no_grant = no_grant_reason(r, pl, info);
	uint64_t shape = info != NULL ? info->fingerprint : 0, grant;
	HoldSpec spec;
	char msg[128], detail[512];
	PgBuf b;

	/*
	 * A grant covers a statement only when every table it touches is known,
	 * listed in the grant, and one rule holds it.
	 */
	if (all_tables && no_grant == NULL && !d->several_holds &&
	    approval_grant_covers(subject, rule, d->rule != NULL ? d->rule->text : NULL, n_tables, ptrs, shape,
				  &grant)) {
		log_write(LL_INFO, s->ctx, "allowed by grant %llu", (unsigned long long)grant);
		admin_stat_add(STAT_GRANTED, 1);
		return GUARD_FORWARD;
	}
	memset(&spec, 0, sizeof(spec));
	spec.session_id = s->id;
	spec.subject = subject;
	spec.database = s->database;
	spec.sql = sql;
	spec.rule = rule;
	spec.rule_text = d->rule != NULL ? d->rule->text : NULL;
	spec.n_tables = n_tables;
	spec.tables = ptrs;
	spec.no_grant = no_grant;
	spec.shape = shape;
	r->hold_id = approval_submit(&spec, r->hold_wake);
	if (r->hold_id == 0) {
		relay_refuse(s, SQLSTATE_OUT_OF_MEMORY, "out of memory while holding the statement", NULL, NULL, 0);
		return GUARD_REFUSE;
	}
	r->hold_type = type;
	r->hold_len = msglen;
	if (cfg->hold_timeout > 0) {
		struct timeval tv = { .tv_sec = (time_t)(cfg->hold_timeout / 1000),
				      .tv_usec = (suseconds_t)(cfg->hold_timeout % 1000) * 1000 };

		evtimer_add(r->hold_timer, &tv);
	}
	cancel_watch(&s->cancel, r->hold_cancel);
	snprintf(msg, sizeof(msg), "held for approval: id %llu", (unsigned long long)r->hold_id);
	policy_message(d, detail, sizeof(detail));
	pgproto_buf_init(&b);
	pgproto_build_error(&b, true, "NOTICE", "01000", msg, detail,
			    "An approver decides with APPROVE or DENY on the pgveil admin console.");
	relay_send_to_client(s, &b);
	pgproto_buf_free(&b);
	log_write(LL_INFO, s->ctx, "statement held as %llu (%s)", (unsigned long long)r->hold_id,
		  rule != NULL ? rule : "default_action");
	return GUARD_HOLD;
}

/* ---- the guard, per message ---------------------------------------------------------- */

/* sqlinfo_analyze, counted for SHOW STATS. */
static StmtInfo *analyze(const char *sql)
{
	uint64_t hits = sqlinfo_cache_hits();
	StmtInfo *info = sqlinfo_analyze(sql, strlen(sql));

	admin_stat_add(STAT_STATEMENTS, 1);
	if (sqlinfo_cache_hits() != hits)
		admin_stat_add(STAT_CACHE_HITS, 1);
	return info;
}

/*
 * A held Query keeps its analysis, so that once approved its PREPAREs and
 * DEALLOCATEs reach pgveil's picture of the server like any forwarded one.
 */
static bool hold_keep_query(Relay *r, StmtInfo *info, const char *sql)
{
	if (info->n_prep == 0)
		return true;
	if ((r->hold_sql = strdup(sql)) == NULL)
		return false;
	r->hold_info = sqlinfo_ref(info);
	return true;
}

static void hold_forget_query(Relay *r)
{
	if (r->hold_info != NULL)
		sqlinfo_unref(r->hold_info);
	free(r->hold_sql);
	r->hold_info = NULL;
	r->hold_sql = NULL;
}

/* The masks' check of an analysed statement, as a guard action. */
static GuardAction mask_check(Session *s, const StmtInfo *info)
{
	switch (relay_mask_check(s, info)) {
	case RM_OK:
		return GUARD_FORWARD;
	case RM_WAIT:
		return GUARD_WAIT;
	default:
		s->relay->audit_rule = NULL; /* refused by the masks, not by the rule that allowed it */
		return GUARD_REFUSE;
	}
}

/*
 * The masks' check of the prepared statements a Query EXECUTEs: their
 * bodies were checked when prepared, perhaps against another catalog.
 */
static GuardAction mask_check_executed(Session *s, const StmtInfo *info)
{
	Relay *r = s->relay;
	GuardAction act = GUARD_FORWARD;

	for (int i = 0; r->mask != NULL && i < info->n_prep && act == GUARD_FORWARD; i++) {
		const Prepared *p;

		if (info->prep[i].op != SQL_PREP_EXECUTE)
			continue;
		p = relay_prepared_find(r, info->prep[i].name);
		for (int k = 0; p != NULL && k < p->n_infos && act == GUARD_FORWARD; k++)
			act = mask_check(s, p->infos[k]);
		for (const Pending *q = r->pend_head; q != NULL && act == GUARD_FORWARD; q = q->next)
			if (q->kind == PEND_PREPARE && strcmp(q->name, info->prep[i].name) == 0)
				act = mask_check(s, q->info);
	}
	return act;
}

/* The audit row of a statement refused with the ErrorResponse in r->refusal. */
static void audit_refusal(Session *s, const char *sql, const StmtInfo *info, const char *decision,
			  uint64_t approval_id)
{
	Relay *r = s->relay;
	PgErrorFields f;

	if (!audit_enabled())
		return;
	if (r->refusal.len <= PG_HEADER_LEN ||
	    !pgproto_parse_error(r->refusal.data + PG_HEADER_LEN, r->refusal.len - PG_HEADER_LEN, &f))
		memset(&f, 0, sizeof(f));
	relay_audit_refused(s, sql, info, decision, r->audit_rule, f.sqlstate, f.message, approval_id, true);
}

/*
 * After rows were started for a message: GUARD_FORWARD, or GUARD_WAIT when
 * the audit queue is full (the room event resumes), or GUARD_REFUSE (refusal
 * built) when the audit log cannot be written in strict mode.
 */
static GuardAction audit_stopped(Session *s)
{
	Relay *r = s->relay;
	int stop = r->audit_stop;
	char msg[400];

	r->audit_stop = AUDIT_OK;
	if (stop == AUDIT_FULL) {
		r->audit_wait_id = 0;
		return GUARD_WAIT;
	}
	if (stop != AUDIT_FAILED)
		return GUARD_FORWARD;
	r->audit_wait_id = 0;
	relay_audit_refusal_text(msg, sizeof(msg));
	relay_refuse(s, SQLSTATE_IO_ERROR, msg, "audit_mode = strict: nothing runs without its audit record.", NULL, 0);
	log_write(LL_WARN, s->ctx, "%s", msg);
	return GUARD_REFUSE;
}

static GuardAction audit_start_query(Session *s, const char *sql, const StmtInfo *info)
{
	relay_audit_query(s, sql, info, "allow", s->relay->audit_rule, 0);
	return audit_stopped(s);
}

/*
 * What every statement text passes before it is decided: it parses, it does
 * not change how later statements are read, and its parts are known. False
 * when it was refused (the client has been told why).
 */
static bool screened(Session *s, const StmtInfo *info, PartList *pl)
{
	if (info->error != NULL)
		refuse_unparsable(s, info);
	else if (info->changes_lexical)
		refuse_lexical(s);
	else
		return collect_parts(s, info, pl);
	return false;
}

/* Query: the whole string is decided; its parts are every statement in it. */
static GuardAction guard_query(Session *s, const char *sql, size_t msglen)
{
	StmtInfo *info = analyze(sql);
	PartList pl = { .n = 0 };
	GuardAction act = GUARD_REFUSE;
	Decision d;

	s->relay->audit_rule = NULL;
	if (info == NULL) {
		relay_refuse(s, SQLSTATE_OUT_OF_MEMORY, "out of memory while analysing the statement", NULL, NULL, 0);
		audit_refusal(s, sql, NULL, "block", 0); /* the refusal has its row like any other */
		return GUARD_REFUSE;
	}
	if (!screened(s, info, &pl))
		goto done;
	d = decide(s, &pl, info);
	if (d.action != DECISION_BLOCK &&
	    ((act = mask_check(s, info)) != GUARD_FORWARD || (act = mask_check_executed(s, info)) != GUARD_FORWARD))
		goto done;
	act = GUARD_REFUSE;
	if (d.action == DECISION_BLOCK)
		refuse_blocked(s, &d);
	else if (d.action == DECISION_HOLD && !hold_keep_query(s->relay, info, sql))
		relay_refuse(s, SQLSTATE_OUT_OF_MEMORY, "out of memory while holding the statement", NULL, NULL, 0);
	else if (d.action == DECISION_HOLD && (act = hold_start(s, 'Q', msglen, sql, &d, &pl, info)) != GUARD_HOLD)
		hold_forget_query(s->relay);
	else if (d.action == DECISION_ALLOW)
		act = GUARD_FORWARD;
	if (act == GUARD_FORWARD || act == GUARD_HOLD)
		path_note(s->relay, info);
	if (act == GUARD_FORWARD && (act = audit_start_query(s, sql, info)) == GUARD_FORWARD) {
		prepared_track(s->relay, info, sql);
		s->relay->cur_info = sqlinfo_ref(info);
	}
done:
	if (act == GUARD_REFUSE)
		audit_refusal(s, sql, info, "block", 0);
	sqlinfo_unref(info);
	return act;
}

/*
 * Parse: refused when the statement is blocked; otherwise forwarded (a
 * Parse runs nothing) and recorded as pending, so its Bind is decided later.
 */
static GuardAction guard_parse(Session *s, PgReader *rd)
{
	const char *name, *sql;
	StmtInfo *info;
	PartList pl = { .n = 0 };
	GuardAction act = GUARD_REFUSE;
	Decision d;

	if (!pgproto_get_string(rd, &name) || !pgproto_get_string(rd, &sql)) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "invalid Parse message");
		return GUARD_HOLD;
	}
	info = analyze(sql);
	s->relay->audit_rule = NULL;
	if (info == NULL) {
		relay_refuse(s, SQLSTATE_OUT_OF_MEMORY, "out of memory while analysing the statement", NULL, NULL, 0);
		audit_refusal(s, sql, NULL, "block", 0);
		return GUARD_REFUSE;
	}
	if (screened(s, info, &pl)) {
		d = decide(s, &pl, info);
		if (d.action == DECISION_BLOCK)
			refuse_blocked(s, &d);
		else if ((act = mask_check(s, info)) != GUARD_FORWARD)
			;
		else if (!pending_push(s->relay, PEND_PARSE, name, sql, info))
			act = GUARD_REFUSE, relay_refuse(s, SQLSTATE_OUT_OF_MEMORY, "out of memory", NULL, NULL, 0);
		else {
			s->relay->cur_info = sqlinfo_ref(info);
			path_note(s->relay, info);
		}
	}
	if (act == GUARD_WAIT) {
		sqlinfo_unref(info);
		return act;
	}
	if (act == GUARD_REFUSE)
		audit_refusal(s, sql, info, "block", 0);
	if (act == GUARD_REFUSE && name[0] == '\0')
		prepared_remove(s->relay, name); /* the server drops its unnamed statement first */
	sqlinfo_unref(info);
	return act;
}

/* What of one parameter value the approver is shown; the rest is counted, not shown. */
#define PARAM_SHOWN_BYTES 4096

/* Appends a readable rendering of one Bind parameter to the approver's text. */
static void describe_param(struct evbuffer *out, int i, bool binary, const uint8_t *v, int32_t vlen)
{
	int32_t shown = vlen < PARAM_SHOWN_BYTES ? vlen : PARAM_SHOWN_BYTES;

	if (vlen < 0) {
		evbuffer_add_printf(out, "\n-- $%d = NULL", i + 1);
		return;
	}
	if (binary) {
		evbuffer_add_printf(out, "\n-- $%d = (binary, %d bytes) '\\x", i + 1, vlen);
		for (int32_t k = 0; k < shown; k++)
			evbuffer_add_printf(out, "%02x", v[k]);
	} else {
		evbuffer_add_printf(out, "\n-- $%d = '", i + 1);
		for (int32_t k = 0; k < shown; k++)
			evbuffer_add(out, v[k] == '\'' ? "''" : (const char *)&v[k], v[k] == '\'' ? 2 : 1);
	}
	evbuffer_add(out, "'", 1);
	if (shown < vlen)
		evbuffer_add_printf(out, " (first %d of %d bytes shown)", shown, vlen);
}

/* The statement text with the Bind's parameter values, as the approver sees it (malloc'd). */
static char *bind_display(const char *sql, PgReader rd)
{
	struct evbuffer *out = evbuffer_new();
	int16_t nfmt, nparams, fmt1 = 0;
	const uint8_t *fmts = NULL;
	char *text = NULL;
	size_t len;

	if (out == NULL)
		return NULL;
	evbuffer_add(out, sql, strlen(sql));
	if (pgproto_get_int16(&rd, &nfmt) && nfmt >= 0 && pgproto_get_bytes(&rd, (size_t)nfmt * 2, &fmts) &&
	    pgproto_get_int16(&rd, &nparams)) {
		if (nfmt == 1)
			fmt1 = (int16_t)((fmts[0] << 8) | fmts[1]);
		for (int i = 0; i < nparams; i++) {
			int32_t vlen;
			const uint8_t *v = NULL;
			bool binary = nfmt == 1 ? fmt1 == 1 : (i < nfmt && ((fmts[2 * i] << 8) | fmts[2 * i + 1]) == 1);

			if (!pgproto_get_int32(&rd, &vlen) || (vlen > 0 && !pgproto_get_bytes(&rd, (size_t)vlen, &v)))
				break;
			describe_param(out, i, binary, v, vlen);
		}
	}
	len = evbuffer_get_length(out);
	if ((text = malloc(len + 1)) != NULL) {
		evbuffer_remove(out, text, len);
		text[len] = '\0';
	}
	evbuffer_free(out);
	return text;
}


/*
 * bind_display over the whole Bind being decided (the guard may have read
 * only its names).
 */
static char *bind_display_whole(Session *s, const char *sql)
{
	Relay *r = s->relay;
	const uint8_t *body = relay_copy_body(r, r->cur_in, r->cur_off, r->cur_blen);
	const char *name;
	PgReader rd;

	if (body == NULL)
		return NULL;
	pgproto_reader_init(&rd, body, r->cur_blen);
	if (!pgproto_get_string(&rd, &name) || !pgproto_get_string(&rd, &name))
		return NULL;
	return bind_display(sql, rd);
}

/* Bind: decided on everything the named statement can run; held here, not at Parse. */
static GuardAction guard_bind_decide(Session *s, PgReader *rd, size_t msglen)
{
	Relay *r = s->relay;
	const char *portal, *stmt, *sql = NULL;
	Prepared *p;
	StmtInfo *runs;
	PartList pl = { .n = 0 };
	Decision d;
	char msg[256];
	char *text;
	GuardAction act;
	bool settled;

	if (!pgproto_get_string(rd, &portal) || !pgproto_get_string(rd, &stmt)) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "invalid Bind message");
		return GUARD_HOLD;
	}
	(void)relay_config(r);
	p = relay_prepared_find(r, stmt);
	runs = bind_runs(r, stmt); /* now: `stmt` points into the scratch copy, which bind_display_whole reuses */
	if (r->mask != NULL) { /* the catalog or masks may have changed since Parse; what it runs may read masked columns */
		StmtInfo *bound = relay_bound_info(r, stmt);

		if (bound != NULL && (act = mask_check(s, bound)) != GUARD_FORWARD)
			return act;
		for (int i = 0; bound == NULL && p != NULL && i < p->n_infos; i++)
			if ((act = mask_check(s, p->infos[i])) != GUARD_FORWARD)
				return act;
	}
	if (p != NULL && p->decided && p->decided_gen == r->cfg_gen && p->decision.action == DECISION_ALLOW &&
	    p->decided_path_changed == r->path_changed && r->pend_head == NULL) {
		admin_stat_add(STAT_ALLOWED, 1);
		r->audit_rule = p->decision.rule != NULL ? p->decision.rule->where : NULL;
		return GUARD_FORWARD; /* the common case: a prepared statement run again */
	}
	switch (add_named(s, stmt, &pl, 0, &settled, &sql)) {
	case NAMED_OK:
		break;
	case NAMED_REFUSED:
		return GUARD_REFUSE;
	case NAMED_UNKNOWN:
		/* Never prepared, refused at Parse, or closed: the server has nothing pgveil could check. */
		snprintf(msg, sizeof(msg), "prepared statement \"%s\" does not exist", stmt);
		relay_refuse(s, SQLSTATE_INVALID_STATEMENT_NAME, msg, "pgveil has no record of it in this session.", NULL, 0);
		return GUARD_REFUSE;
	}
	if (!check_overflow(s, &pl))
		return GUARD_REFUSE;
	d = decide(s, &pl, NULL);
	if (p != NULL && settled) {
		p->decision = d;
		p->decided_gen = r->cfg_gen;
		p->decided_path_changed = r->path_changed;
		p->decided = true;
	}
	if (d.action == DECISION_ALLOW)
		return GUARD_FORWARD;
	if (d.action == DECISION_BLOCK) {
		refuse_blocked(s, &d);
		return GUARD_REFUSE;
	}
	text = bind_display_whole(s, sql);
	/* the statement it runs, when that is known: a grant from it knows which it is */
	act = hold_start(s, 'B', msglen, text != NULL ? text : sql, &d, &pl, runs);
	free(text);
	return act;
}

/* The text a Bind of prepared statement `name` runs, for the audit log. */
static const char *bound_sql(Relay *r, const char *name)
{
	const Pending *cur = batch_parse(r, name);
	const char *sql = cur != NULL ? cur->sql : NULL;
	const Prepared *p;

	if (sql == NULL && (p = relay_prepared_find(r, name)) != NULL)
		sql = p->sql;
	return sql != NULL ? sql : "";
}

static GuardAction guard_bind(Session *s, PgReader *rd, size_t msglen)
{
	PgReader names = *rd;
	const char *portal = NULL, *stmt = NULL;
	GuardAction act;

	s->relay->audit_rule = NULL;
	act = guard_bind_decide(s, rd, msglen);
	if (!audit_enabled() || s->state != SESS_ACTIVE || !pgproto_get_string(&names, &portal) ||
	    !pgproto_get_string(&names, &stmt))
		return act;
	if (act == GUARD_FORWARD)
		relay_audit_bind(s, portal, bound_sql(s->relay, stmt), relay_bound_info(s->relay, stmt), "allow",
				 s->relay->audit_rule, 0);
	else if (act == GUARD_REFUSE)
		audit_refusal(s, bound_sql(s->relay, stmt), NULL, "block", 0);
	return act;
}

/* Close of a prepared statement or portal. */
static GuardAction guard_close(Session *s, PgReader *rd)
{
	uint8_t kind;
	const char *name;

	if (!pgproto_get_byte(rd, &kind) || !pgproto_get_string(rd, &name)) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "invalid Close message");
		return GUARD_HOLD;
	}
	/* Forgotten once the server confirms; a portal's Close is queued too, to keep CloseCompletes in order. */
	if (!pending_push(s->relay, PEND_CLOSE, kind == 'S' ? name : NULL, NULL, NULL)) {
		relay_refuse(s, SQLSTATE_OUT_OF_MEMORY, "out of memory", NULL, NULL, 0);
		return GUARD_REFUSE;
	}
	if (kind == 'P')
		relay_audit_close_portal(s, name);
	return GUARD_FORWARD;
}

/*
 * FunctionCall (the fast-path protocol, used for large objects) names a
 * function by OID, which pgveil cannot resolve: it is decided as a
 * PROCEDURAL statement calling an unknown function.
 */
static GuardAction guard_function_call(Session *s, PgReader *rd, size_t msglen)
{
	static char unknown[] = "function called by oid";
	char *functions[1] = { unknown };
	SqlPart part = { .classes = SC_PROCEDURAL, .n_functions = 1, .functions = functions };
	PartList pl = { .n = 0 };
	uint32_t oid;
	char text[96];
	Decision d;

	if (!pgproto_get_uint32(rd, &oid)) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "invalid FunctionCall message");
		return GUARD_HOLD;
	}
	admin_stat_add(STAT_STATEMENTS, 1);
	snprintf(text, sizeof(text), "-- FunctionCall (fast-path protocol) of the function with oid %u", oid);
	if (s->relay->mask != NULL) {
		/* It runs a function pgveil cannot name, whose result it cannot place. */
		relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE,
			     "fast-path function calls are not allowed for a caller with masked columns", NULL, NULL, 0);
		audit_refusal(s, text, NULL, "block", 0);
		return GUARD_REFUSE;
	}
	parts_add(&pl, &part);
	d = decide(s, &pl, NULL);
	if (d.action != DECISION_BLOCK)
		s->relay->path_changed = true; /* the function may be set_config() */
	if (d.action == DECISION_ALLOW) {
		relay_audit_bind(s, FASTPATH_PORTAL, text, NULL, "allow", s->relay->audit_rule, 0);
		relay_audit_execute(s, FASTPATH_PORTAL, 0);
		return audit_stopped(s);
	}
	if (d.action == DECISION_BLOCK) {
		refuse_blocked(s, &d);
		audit_refusal(s, text, NULL, "block", 0);
		return GUARD_REFUSE;
	}
	return hold_start(s, 'F', msglen, text, &d, &pl, NULL);
}

/*
 * Decides the whole message of `type` whose body is in `body`. GUARD_HOLD
 * is also returned when the session failed (check s->state).
 */
static GuardAction guard_message(Session *s, uint8_t type, const uint8_t *body, size_t blen, size_t msglen)
{
	PgReader rd;
	const char *sql;

	pgproto_reader_init(&rd, body, blen);
	switch (type) {
	case 'Q':
		if (!pgproto_get_string(&rd, &sql) || pgproto_remaining(&rd) != 0) {
			session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "invalid Query message");
			return GUARD_HOLD;
		}
		return guard_query(s, sql, msglen);
	case 'P':
		return guard_parse(s, &rd);
	case 'B':
		return guard_bind(s, &rd, msglen);
	case 'C':
		return guard_close(s, &rd);
	case 'F':
		return guard_function_call(s, &rd, msglen);
	default:
		return GUARD_FORWARD;
	}
}

/* ---- client to server ------------------------------------------------------------------ */

void relay_send_to_client(Session *s, PgBuf *b)
{
	Relay *r = s->relay;

	if (!pgproto_buf_ok(b))
		return;
	if (s->server_pass == 0) {
		evbuffer_add(stream_output(s->client), b->data, b->len);
		stream_flush(s->client);
	} else {
		evbuffer_add(r->inject, b->data, b->len); /* after the message now passing */
	}
}

/*
 * Sends the refusal statement for a message of `type` to the server and
 * queues r->refusal to replace its error in batch `batch`. False when the
 * session failed (out of memory).
 */
static bool queue_refusal(Session *s, uint8_t type, uint64_t batch)
{
	Relay *r = s->relay;
	Substitute *sub = calloc(1, sizeof(*sub));
	PgBuf b;

	pgproto_buf_init(&b);
	if (type == 'Q' || type == 'F')
		pgproto_build_query(&b, REFUSAL_SQL);
	else
		pgproto_build_parse(&b, "", REFUSAL_SQL);
	if (sub == NULL || !pgproto_buf_ok(&b)) {
		free(sub);
		pgproto_buf_free(&b);
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return false;
	}
	evbuffer_add(stream_output(s->server), b.data, b.len);
	pgproto_buf_free(&b);
	sub->batch = batch;
	pgproto_buf_init(&sub->msg);
	pgproto_put_bytes(&sub->msg, r->refusal.data, r->refusal.len);
	if (r->subst_tail != NULL)
		r->subst_tail->next = sub;
	else
		r->subst_head = sub;
	r->subst_tail = sub;
	return true;
}

/*
 * Puts the refusal statement in the server's output in place of a message
 * of `type`, and queues the refusal in r->refusal to replace its error.
 */
static void send_refusal(Session *s, uint8_t type)
{
	Relay *r = s->relay;

	if (!queue_refusal(s, type, r->batches_sent))
		return;
	relay_mask_client_msg(s, type == 'Q' || type == 'F' ? 'Q' : 'P', (const uint8_t *)"", 1, NULL);
	if (type == 'Q' || type == 'F') {
		r->batches_sent++;
		s->pending_ready++;
	}
}

/*
 * The refusal statement in place of a message whose bookkeeping was done
 * when it was forwarded (a strict-mode message whose audit row failed):
 * only the server's error is replaced. A Query was counted as the latest
 * batch; anything else belongs to the open one.
 */
static void send_refusal_in_place(Session *s, uint8_t type)
{
	Relay *r = s->relay;

	(void)queue_refusal(s, type, type == 'Q' || type == 'F' ? r->batches_sent - 1 : r->batches_sent);
}

/* Copies the body of the message at `off` (whole in the buffer) to scratch. */
const uint8_t *relay_copy_body(Relay *r, struct evbuffer *in, size_t off, uint32_t blen)
{
	static const uint8_t empty[1];
	struct evbuffer_ptr pos;

	if (blen == 0)
		return empty; /* an empty body: the reader finds nothing in it */
	if (blen > r->scratch_cap) {
		uint8_t *n = realloc(r->scratch, blen);

		if (n == NULL)
			return NULL;
		r->scratch = n;
		r->scratch_cap = blen;
	}
	evbuffer_ptr_set(in, &pos, off + PG_HEADER_LEN, EVBUFFER_PTR_SET);
	evbuffer_copyout_from(in, &pos, r->scratch, blen);
	return r->scratch;
}

/*
 * Batch accounting for the messages that pass unread. Each Sync ends a
 * batch, except the Syncs a client sends after an Execute that turned into
 * COPY FROM STDIN and before its CopyDone/CopyFail: the server ignores
 * those (libpq sends one right after the Execute), so they are taken back
 * once the copy ends.
 */
static void count_client_message(Session *s, uint8_t type)
{
	Relay *r = s->relay;

	switch (type) {
	case 'S':
		r->batches_sent++;
		s->pending_ready++;
		r->syncs_since_execute++;
		return;
	case 'E':
		r->last_starter = 'E';
		r->syncs_since_execute = 0;
		r->copy_in_seen = false;
		return;
	case 'c':
	case 'f':
		if (r->copy_in_seen && r->last_starter == 'E') {
			relay_mask_copy_in_done(s, r->syncs_since_execute);
			r->batches_sent -= (uint64_t)r->syncs_since_execute;
			s->pending_ready -= r->syncs_since_execute;
			r->syncs_since_execute = 0;
		}
		r->copy_in_seen = false;
		return;
	default:
		return;
	}
}

/*
 * How much of a guarded message's body must be read to decide it: all of
 * it, except for a Bind, whose portal and statement names at its start are
 * enough until it is held (its parameter values can be large).
 */
static uint32_t guarded_length(struct evbuffer *in, size_t off, const PgHeader *h)
{
	uint32_t blen = h->len - 4, peek = blen < BIND_PEEK ? blen : BIND_PEEK;
	struct evbuffer_ptr pos;
	uint8_t head[BIND_PEEK];
	int nuls = 0;

	if (h->type != 'B' || peek == blen)
		return blen;
	evbuffer_ptr_set(in, &pos, off + PG_HEADER_LEN, EVBUFFER_PTR_SET);
	evbuffer_copyout_from(in, &pos, head, peek);
	for (uint32_t i = 0; i < peek && nuls < 2; i++)
		nuls += head[i] == 0;
	return nuls == 2 ? peek : blen;
}

static bool needs_guard(uint8_t type)
{
	return type == 'Q' || type == 'P' || type == 'B' || type == 'C' || type == 'F';
}

/* Messages read one by one: guarded ones, and for a caller with masks those that get an answer. */
static bool read_whole(const Relay *r, uint8_t type)
{
	return needs_guard(type) || (r->mask != NULL && (type == 'D' || type == 'E' || type == 'S')) ||
	       (type == 'E' && audit_enabled());
}

/*
 * Handles the whole message of `type` at offset `run` of the client input.
 * Returns how far the forwarded run extends afterwards, or (size_t)-1 when
 * relaying must stop (held, waiting, or the session failed).
 */
/* Bytes of a forwarded message read for its names when masks apply. */
#define MASK_PEEK 1024

/*
 * A message of a caller with masks is forwarded: relay_mask.c records the
 * answer it expects; an Execute may need pgveil's Describe in front of it
 * (the run before it is moved first). Returns where the run now starts.
 */
static size_t mask_forward(Session *s, struct evbuffer *in, size_t run, const PgHeader *h)
{
	uint8_t head[MASK_PEEK];
	uint32_t blen = h->len - 4, n = blen < MASK_PEEK ? blen : MASK_PEEK;
	struct evbuffer_ptr pos;

	evbuffer_ptr_set(in, &pos, run + PG_HEADER_LEN, EVBUFFER_PTR_SET);
	if (n > 0)
		evbuffer_copyout_from(in, &pos, head, n);
	if (h->type == 'E' && n > 0 && memchr(head, 0, n) != NULL) {
		if (run > 0)
			evbuffer_remove_buffer(in, stream_output(s->server), run);
		run = 0;
		relay_mask_before_execute(s, (const char *)head, stream_output(s->server));
	}
	relay_mask_client_msg(s, h->type, head, n, s->relay->cur_info);
	return run;
}

/*
 * An Execute's row: its portal's name is read whole (names have no length
 * limit in the protocol), then its row limit.
 */
static void audit_execute(Session *s, struct evbuffer *in, size_t run, const PgHeader *h)
{
	struct evbuffer_ptr pos;
	size_t n = h->len - 4;
	char stack[256], *buf = n < sizeof(stack) ? stack : malloc(n + 1);
	const char *name = buf;
	int32_t max_rows = 0;
	PgReader rd;

	if (buf == NULL) {
		if (audit_strict())
			s->relay->audit_stop = AUDIT_FAILED; /* no row: strict mode does not run it */
		return;
	}
	evbuffer_ptr_set(in, &pos, run + PG_HEADER_LEN, EVBUFFER_PTR_SET);
	evbuffer_copyout_from(in, &pos, buf, n);
	buf[n] = '\0'; /* a malformed Execute's name ends here (the server refuses it) */
	pgproto_reader_init(&rd, (const uint8_t *)buf, n);
	if (!pgproto_get_string(&rd, &name) || !pgproto_get_int32(&rd, &max_rows))
		max_rows = 0;
	relay_audit_execute(s, name, max_rows > 0 ? max_rows : 0);
	if (buf != stack)
		free(buf);
}

/*
 * An approved message goes on. A Query's analysis is taken again (from the
 * thread's cache), for the masks' record of its results and its audit rows.
 * False when memory for that ran out: the message must not go on unchecked.
 */
static bool released(Session *s, struct evbuffer *in, size_t run, const PgHeader *h)
{
	Relay *r = s->relay;
	const uint8_t *body;
	const char *a, *b;
	PgReader rd;

	if (r->mask == NULL && !audit_enabled())
		return true;
	if ((body = relay_copy_body(r, in, run, h->len - 4)) == NULL)
		return false;
	pgproto_reader_init(&rd, body, h->len - 4);
	r->audit_past_bound = true; /* it was held for a person: it does not wait for room now */
	if (h->type == 'Q' && pgproto_get_string(&rd, &a)) {
		if ((r->cur_info = sqlinfo_analyze(a, strlen(a))) == NULL) {
			r->audit_past_bound = false;
			return false;
		}
		relay_audit_query(s, a, r->cur_info, "approve", r->audit_rule, r->released_id);
	} else if (h->type == 'B' && pgproto_get_string(&rd, &a) && pgproto_get_string(&rd, &b)) {
		relay_audit_bind(s, a, bound_sql(r, b), relay_bound_info(r, b), "approve", r->audit_rule,
				 r->released_id);
	} else if (h->type == 'F') {
		relay_audit_bind(s, FASTPATH_PORTAL, "-- FunctionCall (fast-path protocol)", NULL, "approve",
				 r->audit_rule, r->released_id);
		relay_audit_execute(s, FASTPATH_PORTAL, 0);
	}
	r->audit_past_bound = false;
	return true;
}

static size_t guard_at(Session *s, struct evbuffer *in, size_t run, const PgHeader *h)
{
	Relay *r = s->relay;
	size_t msglen = (size_t)h->len + 1;
	const uint8_t *body;
	GuardAction act;

	if (r->released) {
		r->released = false;
		if (r->hold_info != NULL)
			prepared_track(r, r->hold_info, r->hold_sql);
		hold_forget_query(r);
		if (!released(s, in, run, h)) { /* neither masked nor recorded: it does not run */
			relay_refuse(s, SQLSTATE_OUT_OF_MEMORY, "out of memory while releasing the approved statement",
				     NULL, NULL, 0);
			act = GUARD_REFUSE;
		} else {
			act = audit_stopped(s); /* its rows went in past the queue's bound: never GUARD_WAIT */
		}
	} else {
		uint32_t blen = guarded_length(in, run, h);

		r->cur_in = in;
		r->cur_off = run;
		r->cur_blen = h->len - 4;
		body = relay_copy_body(r, in, run, blen);
		if (body == NULL) {
			session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			return (size_t)-1;
		}
		act = guard_message(s, h->type, body, blen, msglen);
		if (r->scratch_cap > SCRATCH_KEEP) { /* a huge message passed: do not keep its copy's memory */
			free(r->scratch);
			r->scratch = NULL;
			r->scratch_cap = 0;
		}
		if (s->state != SESS_ACTIVE)
			return (size_t)-1;
	}
	if (act == GUARD_FORWARD && h->type == 'E' && audit_enabled()) {
		audit_execute(s, in, run, h); /* its row, before anything of it is counted */
		act = audit_stopped(s);
	}
	if (act == GUARD_FORWARD) {
		if (r->mask != NULL)
			run = mask_forward(s, in, run, h);
		if (r->cur_info != NULL) {
			sqlinfo_unref(r->cur_info);
			r->cur_info = NULL;
		}
		if (h->type == 'Q' || h->type == 'F') {
			r->batches_sent++;
			s->pending_ready++;
			r->last_starter = 'Q';
		} else if (!needs_guard(h->type)) {
			count_client_message(s, h->type);
		}
		if (r->audit_wait_id != 0) { /* strict: it goes once its row is durable */
			if (run > 0)
				evbuffer_remove_buffer(in, stream_output(s->server), run);
			r->audit_wait_len = msglen;
			r->audit_wait_type = h->type;
			return (size_t)-1;
		}
		return run + msglen;
	}
	if (r->cur_info != NULL) { /* kept for a message that does not go on now */
		sqlinfo_unref(r->cur_info);
		r->cur_info = NULL;
	}
	if (run > 0)
		evbuffer_remove_buffer(in, stream_output(s->server), run);
	if (act == GUARD_HOLD || act == GUARD_WAIT)
		return (size_t)-1;
	evbuffer_drain(in, msglen);
	send_refusal(s, h->type);
	return 0;
}

static void client_forward(Session *s, size_t run)
{
	if (run > 0)
		evbuffer_remove_buffer(stream_input(s->client), stream_output(s->server), run);
	stream_flush(s->server);
}

/* Queues Terminate toward the server. */
static void send_terminate(Session *s)
{
	PgBuf b;

	pgproto_buf_init(&b);
	pgproto_build_terminate(&b);
	evbuffer_add(stream_output(s->server), b.data, b.len);
	pgproto_buf_free(&b);
}

void relay_client_terminate(Session *s)
{
	send_terminate(s);
	session_close(s, "client sent Terminate");
}

void relay_client_input(Session *s)
{
	Relay *r = s->relay;
	struct evbuffer *in = stream_input(s->client);
	size_t avail = evbuffer_get_length(in), run;
	uint8_t hdr[PG_HEADER_LEN];
	PgHeader h;
	const char *why;
	bool terminate = false;

	if (r->hold_id != 0) {
		if (avail > r->hold_len + HOLD_READ_AHEAD)
			stream_enable_read(s->client, false); /* the rest waits in the kernel behind the held message */
		return;
	}
	if (relay_mask_client_waits(s) || r->audit_wait_id != 0)
		return; /* resumed once the catalog is loaded, or the audit row is durable */
	if (s->token_expired && s->client_pass == 0) {
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION, "the agent's token has expired; reconnect with a new token");
		return;
	}
	run = s->client_pass < avail ? s->client_pass : avail;
	s->client_pass -= (uint32_t)run;
	while (s->client_pass == 0 && avail - run >= PG_HEADER_LEN) {
		struct evbuffer_ptr pos;

		evbuffer_ptr_set(in, &pos, run, EVBUFFER_PTR_SET);
		evbuffer_copyout_from(in, &pos, hdr, sizeof(hdr));
		if (pgproto_check_frontend_header(hdr, s->cfg->max_packet_size, &h, &why) != PGP_FRAME_OK) {
			session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "%s (type 0x%02x, length %u)", why, h.type, h.len);
			return;
		}
		if (h.type == 'X') {
			terminate = true;
			break;
		}
		if (h.type == 'p') {
			session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "unexpected password message in the query phase");
			return;
		}
		(void)relay_config(r); /* masks follow a reload before the next message is decided */
		if (r->mask_gen != r->cfg_gen || r->mask_idle_wait) {
			RmResult mr;

			if ((mr = relay_mask_update(s)) == RM_WAIT) {
				break; /* the rest waits for the server's answers (relay_server_input resumes) */
			} else if (mr == RM_REFUSE) {
				return; /* the session was ended */
			}
		}
		if (read_whole(r, h.type)) {
			if (avail - run < (size_t)h.len + 1)
				break; /* decided once it is whole */
			run = guard_at(s, in, run, &h);
			if (run == (size_t)-1) {
				/* what came before a message waiting for its audit row goes with it, in one write */
				if (s->state == SESS_ACTIVE && r->audit_wait_id == 0)
					stream_flush(s->server);
				return;
			}
			avail = evbuffer_get_length(in);
			continue;
		}
		count_client_message(s, h.type);
		if (avail - run < (size_t)h.len + 1) {
			s->client_pass = (uint32_t)((size_t)h.len + 1 - (avail - run));
			run = avail;
			break;
		}
		run += (size_t)h.len + 1;
	}
	client_forward(s, run);
	if (terminate) {
		relay_client_terminate(s);
		return;
	}
	if (stream_output_full(s->server))
		stream_enable_read(s->client, false);
}

/*
 * The client shut down its sending side. What it sent before is answered, as
 * the server would: Terminate follows its last message and the session ends
 * when the server closes.
 */
void relay_client_eof(Session *s)
{
	if (s->client_eof)
		return;
	if (s->relay->hold_id != 0 || s->client_pass > 0 || evbuffer_get_length(stream_input(s->client)) > 0) {
		relay_client_terminate(s); /* cut off or waiting for approval: nothing sensible to answer */
		return;
	}
	s->client_eof = true;
	send_terminate(s);
	stream_flush(s->server);
}

/* ---- server to client ------------------------------------------------------------------- */

static void subst_pop(Relay *r)
{
	Substitute *sub = r->subst_head;

	r->subst_head = sub->next;
	if (r->subst_head == NULL)
		r->subst_tail = NULL;
	pgproto_buf_free(&sub->msg);
	free(sub);
}

/*
 * An ErrorResponse (header h at offset run) arrived while a refusal of the
 * current batch waits. If it is the server's answer to the refusal
 * statement, the forwarded run before it moves on, the error is dropped and
 * the refusal takes its place: returns SUBST_REPLACED. SUBST_KEEP: an error
 * of the client's own statement. SUBST_WAIT: the message is not whole yet.
 */
typedef enum { SUBST_KEEP, SUBST_REPLACED, SUBST_WAIT } SubstResult;

static SubstResult maybe_substitute(Session *s, struct evbuffer *in, size_t run, size_t avail, const PgHeader *h)
{
	Relay *r = s->relay;
	const uint8_t *body;
	PgErrorFields f;

	if (avail - run < (size_t)h->len + 1)
		return SUBST_WAIT;
	body = relay_copy_body(r, in, run, h->len - 4);
	if (body == NULL || !pgproto_parse_error(body, h->len - 4, &f) || f.sqlstate == NULL ||
	    strcmp(f.sqlstate, SQLSTATE_SYNTAX_ERROR) != 0)
		return SUBST_KEEP;
	if (run > 0)
		evbuffer_remove_buffer(in, stream_output(s->client), run);
	evbuffer_drain(in, (size_t)h->len + 1);
	evbuffer_add(stream_output(s->client), r->subst_head->msg.data, r->subst_head->msg.len);
	subst_pop(r);
	return SUBST_REPLACED;
}

/* CommandComplete while a PREPARE or DEALLOCATE waits: its tag confirms it. */
static void command_complete(Session *s, struct evbuffer *in, size_t run, const PgHeader *h)
{
	Relay *r = s->relay;
	const uint8_t *body = relay_copy_body(r, in, run, h->len - 4);
	const char *tag = (const char *)body;

	if (body == NULL || h->len - 4 == 0 || body[h->len - 5] != '\0')
		return;
	if (strcmp(tag, "PREPARE") == 0)
		pending_confirm(r, PEND_PREPARE);
	else if (strncmp(tag, "DEALLOCATE", 10) == 0 || strcmp(tag, "DISCARD ALL") == 0)
		pending_confirm(r, PEND_DEALLOCATE);
}

/*
 * ParameterStatus: a setting that would make the server read statements
 * differently from pgveil (changed by code pgveil cannot see into, such as
 * a function) ends the session. False when it did.
 */
static bool parameter_status_safe(Session *s, struct evbuffer *in, size_t run, const PgHeader *h)
{
	const uint8_t *body = relay_copy_body(s->relay, in, run, h->len - 4);
	const char *name, *value;
	PgReader rd;

	if (body == NULL)
		return true;
	pgproto_reader_init(&rd, body, h->len - 4);
	if (!pgproto_get_string(&rd, &name) || !pgproto_get_string(&rd, &value))
		return true;
	if (!session_setting_readable(name, value)) {
		log_write(LL_WARN, s->ctx, "the server reports %s = %s: ending the session", name, value);
		session_fail(s, SQLSTATE_INSUFFICIENT_PRIVILEGE,
			     "the session's %s became %s, under which pgveil cannot check statements", name, value);
		return false;
	}
	return true;
}

void relay_server_input(Session *s)
{
	Relay *r = s->relay;
	struct evbuffer *in = stream_input(s->server);
	size_t avail = evbuffer_get_length(in), run;
	uint8_t buf[PG_HEADER_LEN + 8];
	PgHeader h;
	const char *why;

	run = s->server_pass < avail ? s->server_pass : avail;
	s->server_pass -= (uint32_t)run;
	while (s->server_pass == 0 && avail - run >= PG_HEADER_LEN) {
		struct evbuffer_ptr pos;

		evbuffer_ptr_set(in, &pos, run, EVBUFFER_PTR_SET);
		evbuffer_copyout_from(in, &pos, buf, PG_HEADER_LEN);
		if (pgproto_check_backend_header(buf, 0x7fffffff, &h, &why) != PGP_FRAME_OK) {
			log_write(LL_ERROR, s->ctx, "server sent an invalid message: %s (type 0x%02x)", why, h.type);
			session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "invalid message from the server");
			return;
		}
		if (r->audit != NULL && strchr("CEIsV", h.type) != NULL) {
			const uint8_t *body;

			if (avail - run < (size_t)h.len + 1)
				break; /* its outcome is read whole */
			if ((body = relay_copy_body(r, in, run, h.len - 4)) != NULL)
				relay_audit_server(s, h.type, body, h.len - 4);
		}
		if (r->mask != NULL) {
			RmsResult rr = relay_mask_server_msg(s, in, &run, avail, &h);

			if (s->state != SESS_ACTIVE)
				return;
			/* The hook may have moved the bytes before the message on. */
			avail = evbuffer_get_length(in);
			if (rr == RMS_WAIT)
				break;
			if (rr == RMS_DONE)
				continue;
			evbuffer_ptr_set(in, &pos, run, EVBUFFER_PTR_SET);
		}
		if (h.type == 'Z') {
			if (avail - run < PG_HEADER_LEN + 1)
				break; /* wait for the status byte */
			evbuffer_copyout_from(in, &pos, buf, PG_HEADER_LEN + 1);
			s->txn_status = (char)buf[PG_HEADER_LEN];
			if (s->pending_ready > 0)
				s->pending_ready--;
			r->batches_done++;
			pending_drop_done(r);
			relay_audit_server(s, 'Z', NULL, 0);
			while (r->subst_head != NULL && r->subst_head->batch < r->batches_done)
				subst_pop(r); /* an earlier error of that batch skipped the refusal */
		} else if (h.type == '1') {
			pending_confirm(r, PEND_PARSE);
		} else if (h.type == '3') {
			pending_confirm(r, PEND_CLOSE);
		} else if (h.type == 'C' && r->n_pend_sql > 0) {
			if (avail - run < (size_t)h.len + 1)
				break; /* read the tag whole */
			command_complete(s, in, run, &h);
		} else if (h.type == 'S') {
			if (avail - run < (size_t)h.len + 1)
				break; /* read it whole */
			if (!parameter_status_safe(s, in, run, &h))
				return;
		} else if (h.type == 'G') {
			r->copy_in_seen = true;
		} else if (h.type == 'E') {
			if (r->subst_head != NULL && r->subst_head->batch == r->batches_done) {
				SubstResult sr = maybe_substitute(s, in, run, avail, &h);

				if (sr == SUBST_WAIT)
					break;
				if (sr == SUBST_REPLACED) {
					run = 0;
					avail = evbuffer_get_length(in);
					continue;
				}
			}
			if (avail - run >= PG_HEADER_LEN + 7) {
				evbuffer_copyout_from(in, &pos, buf, PG_HEADER_LEN + 7);
				if (memcmp(buf + PG_HEADER_LEN, "SFATAL", 6) == 0 ||
				    memcmp(buf + PG_HEADER_LEN, "SPANIC", 6) == 0)
					s->server_sent_fatal = true;
			}
		}
		if (avail - run < (size_t)h.len + 1) {
			s->server_pass = (uint32_t)((size_t)h.len + 1 - (avail - run));
			run = avail;
			break;
		}
		run += (size_t)h.len + 1;
	}
	if (run > 0)
		evbuffer_remove_buffer(in, stream_output(s->client), run);
	if (s->server_pass == 0 && evbuffer_get_length(r->inject) > 0)
		evbuffer_add_buffer(stream_output(s->client), r->inject);
	stream_flush(s->client);
	if (stream_output_full(s->client))
		stream_enable_read(s->server, false);
	if (r->mask_idle_wait && relay_mask_idle(s))
		relay_client_input(s); /* masks can start now */
}

/* ---- decisions arriving ------------------------------------------------------------------ */

/* A held statement that will not run: its row, with the text the approver saw. */
static void audit_hold_refused(Session *s, uint64_t id, HoldState st)
{
	HeldInfo *held = NULL;

	if (!audit_enabled())
		return;
	if (approval_get(id, &held) != 1)
		held = NULL;
	relay_audit_refused(s, held != NULL ? held->sql : "", NULL,
			    st == HOLD_DENIED ? "deny" : st == HOLD_TIMEOUT ? "timeout" : "cancel",
			    held != NULL ? held->rule : NULL, st == HOLD_DENIED ? SQLSTATE_INSUFFICIENT_PRIVILEGE : SQLSTATE_QUERY_CANCELED,
			    NULL, id, true);
	if (held != NULL)
		approval_free_held(held, 1);
}

static void hold_end(Session *s, HoldState st, const char *reason)
{
	Relay *r = s->relay;
	uint64_t id = r->hold_id;
	char msg[512];
	uint8_t type = r->hold_type;

	evtimer_del(r->hold_timer);
	cancel_watch(&s->cancel, NULL);
	r->hold_id = 0;
	admin_stat_add(st == HOLD_APPROVED ? STAT_APPROVED : st == HOLD_DENIED ? STAT_DENIED : STAT_TIMED_OUT, 1);
	if (st == HOLD_APPROVED) {
		log_write(LL_INFO, s->ctx, "held statement %llu approved", (unsigned long long)id);
		r->released = true;
		r->released_id = id;
		stream_enable_read(s->client, true);
		relay_client_input(s);
		return;
	}
	if (st == HOLD_DENIED) {
		snprintf(msg, sizeof(msg), "statement %llu was denied by an approver%s%s", (unsigned long long)id,
			 reason != NULL ? ": " : "", reason != NULL ? reason : "");
		relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE, msg, NULL, NULL, 0);
	} else if (st == HOLD_TIMEOUT) {
		snprintf(msg, sizeof(msg), "canceling statement %llu: no approval within hold_timeout",
			 (unsigned long long)id);
		relay_refuse(s, SQLSTATE_QUERY_CANCELED, msg, NULL, NULL, 0);
	} else {
		snprintf(msg, sizeof(msg), "canceling statement due to user request");
		relay_refuse(s, SQLSTATE_QUERY_CANCELED, msg, NULL, NULL, 0);
	}
	log_write(LL_INFO, s->ctx, "held statement %llu: %s", (unsigned long long)id, msg);
	audit_hold_refused(s, id, st);
	hold_forget_query(r);
	evbuffer_drain(stream_input(s->client), r->hold_len);
	send_refusal(s, type);
	stream_flush(s->server);
	stream_enable_read(s->client, true);
	relay_client_input(s);
}

static void hold_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;
	char *reason = NULL;
	HoldState st;

	if (s->state != SESS_ACTIVE || s->relay->hold_id == 0)
		return;
	st = approval_state(s->relay->hold_id, &reason);
	if (st != HOLD_WAITING)
		hold_end(s, st, reason);
	free(reason);
}

static void hold_give_up(Session *s, HoldState why)
{
	char *reason = NULL;
	HoldState st;

	if (s->state != SESS_ACTIVE || s->relay->hold_id == 0)
		return;
	st = approval_withdraw(s->relay->hold_id, why);
	if (st == HOLD_DENIED)
		(void)approval_state(s->relay->hold_id, &reason);
	hold_end(s, st, reason);
	free(reason);
}

static void hold_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	hold_give_up(arg, HOLD_TIMEOUT);
}

static void hold_cancel_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;

	if (cancel_take(&s->cancel))
		hold_give_up(s, HOLD_CANCELED);
}

/* ---- the audit log's answers ------------------------------------------------------------------ */

/*
 * Strict mode: the row of the message waiting at the front of the client's
 * input is durable (it goes to the server now), or could not be written
 * (the message is refused in its place: nothing runs without its record).
 */
static void audit_durable_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;
	Relay *r = s->relay;
	uint64_t id = r->audit_wait_id;
	struct evbuffer *in = stream_input(s->client);
	char msg[400];

	(void)fd;
	(void)what;
	if (s->state != SESS_ACTIVE || id == 0)
		return;
	r->audit_wait_id = 0;
	if (audit_query_durable(r->audit_durable, id) == AUDIT_OK) {
		evbuffer_remove_buffer(in, stream_output(s->server), r->audit_wait_len);
	} else {
		relay_audit_refusal_text(msg, sizeof(msg));
		log_write(LL_WARN, s->ctx, "%s", msg);
		relay_refuse(s, SQLSTATE_IO_ERROR, msg, "audit_mode = strict: nothing runs without its audit record.",
			     NULL, 0);
		relay_audit_fail_waiting(s, id, SQLSTATE_IO_ERROR, msg);
		evbuffer_drain(in, r->audit_wait_len);
		send_refusal_in_place(s, r->audit_wait_type);
	}
	/* the messages after it (a pipeline's Sync) join it in one write to the server */
	relay_client_input(s);
	if (s->state == SESS_ACTIVE)
		stream_flush(s->server);
}

/* The audit queue has room again: the message that found it full is decided again. */
static void audit_room_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;

	(void)fd;
	(void)what;
	if (s->state == SESS_ACTIVE && s->relay->audit_wait_id == 0)
		relay_client_input(s);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

bool relay_start(Session *s)
{
	Relay *r = calloc(1, sizeof(*r));
	struct event_base *base = s->worker->base;

	if (r == NULL)
		return false;
	s->relay = r;
	r->n_buckets = 16;
	r->buckets = calloc(r->n_buckets, sizeof(*r->buckets));
	r->inject = evbuffer_new();
	r->hold_wake = event_new(base, -1, 0, hold_wake_cb, s);
	r->hold_timer = evtimer_new(base, hold_timer_cb, s);
	r->hold_cancel = event_new(base, -1, 0, hold_cancel_cb, s);
	r->audit_durable = event_new(base, -1, 0, audit_durable_cb, s);
	r->audit_room = event_new(base, -1, 0, audit_room_cb, s);
	pgproto_buf_init(&r->refusal);
	r->cfg = config_ref(s->cfg);
	r->cfg_gen = config_generation();
	r->path_changed = relay_startup_sets_search_path(s);
	return r->buckets != NULL && r->inject != NULL && r->hold_wake != NULL && r->hold_timer != NULL &&
	       r->hold_cancel != NULL && r->audit_durable != NULL && r->audit_room != NULL;
}

void relay_stop(Session *s)
{
	Relay *r = s->relay;

	if (r == NULL || r->hold_id == 0)
		return;
	(void)approval_withdraw(r->hold_id, HOLD_CANCELED);
	cancel_watch(&s->cancel, NULL);
	evtimer_del(r->hold_timer);
	log_write(LL_INFO, s->ctx, "held statement %llu abandoned: the session ended", (unsigned long long)r->hold_id);
	r->hold_id = 0;
}

void relay_free(Session *s)
{
	Relay *r = s->relay;

	if (r == NULL)
		return;
	relay_stop(s);
	if (r->buckets != NULL)
		prepared_clear(r);
	free(r->buckets);
	while (r->subst_head != NULL)
		subst_pop(r);
	while (r->pend_head != NULL)
		pending_unlink(r, &r->pend_head, NULL);
	hold_forget_query(r);
	relay_mask_free(s);
	relay_audit_free(s);
	if (r->cur_info != NULL)
		sqlinfo_unref(r->cur_info);
	if (r->inject != NULL)
		evbuffer_free(r->inject);
	if (r->hold_wake != NULL)
		event_free(r->hold_wake);
	if (r->hold_timer != NULL)
		event_free(r->hold_timer);
	if (r->hold_cancel != NULL)
		event_free(r->hold_cancel);
	if (r->audit_durable != NULL || r->audit_room != NULL)
		audit_forget(r->audit_durable, r->audit_room);
	if (r->audit_durable != NULL)
		event_free(r->audit_durable);
	if (r->audit_room != NULL)
		event_free(r->audit_room);
	pgproto_buf_free(&r->refusal);
	free(r->scratch);
	config_unref(r->cfg);
	free(r);
	s->relay = NULL;
}

bool relay_holding(const Session *s)
{
	return s->relay != NULL && s->relay->hold_id != 0;
}
