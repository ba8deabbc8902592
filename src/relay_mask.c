/* SPDX-License-Identifier: MIT */
/*
 * The results of a caller with masks. Only sessions whose caller some MASK
 * rule applies to come here; everyone else's results pass unread.
 *
 * Which answer is which: every message forwarded to the server is recorded
 * in order in a queue of expected answers (Parse, Bind, Describe, Execute,
 * Close, Sync, Query, FunctionCall), and each server message is matched to
 * the front of it, the way PostgreSQL answers: one answer per message, and
 * after an error nothing until Sync.
 *
 * The plan of a result comes from its RowDescription: each field's table
 * OID and attnum name a column of the catalog snapshot, whose masks say
 * what the caller gets. A portal's rows follow the RowDescription of a
 * Describe of that portal; when the client did not describe the portal
 * since its Bind, pgveil sends a Describe itself before the Execute and
 * keeps the answer from the client. The plan is checked against what the
 * statement analysis expects: a field the analysis says copies a masked
 * column must come from that column; when it does not, or when the field's
 * table is unknown even after the catalog was read again, the field is sent
 * as NULL and the client gets a warning naming it.
 *
 * The server's errors and notices are scrubbed for statements that read
 * masked columns (their batch).
 */
#include <ctype.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pgveil/catalog.h"
#include "pgveil/log.h"
#include "pgveil/mask.h"
#include "pgveil/policy.h"
#include "pgveil/server.h"
#include "pgveil/stream.h"

#include "relay_int.h"

#define SQLSTATE_CATALOG_UNAVAILABLE "55000"

typedef enum {
	RESP_PARSE,
	RESP_BIND,
	RESP_DESCRIBE_S,
	RESP_DESCRIBE_P,
	RESP_EXECUTE,
	RESP_CLOSE,
	RESP_SYNC,
	RESP_QUERY,
	RESP_FUNCTION,
} RespKind;

/* The plan of one result, with what it points into. */
typedef struct Plan {
	MaskPlan mp;
	bool valid;              /* described: mp is the result's plan */
	CatSnap *snap;           /* a reference: rules point into it */
	Config *cfg;             /* a reference: the hash() key */
} Plan;

typedef struct Portal {
	char *name;
	Plan plan;
	bool describe_pending;   /* a Describe of it is on its way since its Bind */
	bool current;            /* the latest instance of its name */
	bool sensitive;          /* its statement reads masked columns or touches a table with some */
	int refs;                /* Resp entries pointing here */
	StmtInfo *info;          /* the statement it was bound from, when pgveil knows it (a reference) */
	struct Portal *next;
} Portal;

typedef struct Resp {
	RespKind kind;
	bool injected;           /* pgveil's own Describe: its answer stays here */
	bool close_portal;       /* RESP_CLOSE of a portal */
	bool sensitive;          /* QUERY: reads masked columns or touches a table with some */
	char *name;              /* statement (PARSE, DESCRIBE_S, CLOSE) */
	Portal *portal;          /* BIND, DESCRIBE_P, EXECUTE, CLOSE of a portal */
	StmtInfo *info;          /* QUERY, PARSE: the analysis (a reference), NULL for a refusal */
} Resp;

struct RelayMask {
	CatSnap *cat;            /* the snapshot statements are checked with (a reference) */
	struct event *cat_wake;  /* a snapshot was published */
	bool wait_client;        /* a client message waits for a snapshot */
	bool wait_server;        /* a RowDescription waits for a snapshot */
	bool refreshed;          /* the RowDescription at the front was looked up after a refresh */
	bool check_refreshed;    /* the statement being checked waited for a refresh already */
	Resp *q;                 /* ring of expected answers */
	size_t q_head, q_len, q_cap;
	Portal *portals;
	Plan cur;                /* the current result of a Query */
	int stmt_index;          /* the statement of the front Query being answered */
	bool scrub;              /* errors and notices of batches up to scrub_batch are scrubbed */
	uint64_t scrub_batch;
	bool check_scrub;        /* the statement just checked reads masked columns */
	Plan copy;               /* COPY ... TO STDOUT under way: its plan (valid) */
	MaskCopyFormat copy_fmt;
	bool copy_first;         /* no CopyData of it seen yet */
	struct evbuffer *copy_buf; /* a rewritten CopyData payload */
	bool failed;             /* the answers could not be matched: the session is ending */
};

/* ---- plans ------------------------------------------------------------------------------ */

static void plan_clear(Plan *p)
{
	free(p->mp.fields);
	memset(&p->mp, 0, sizeof(p->mp));
	if (p->snap != NULL)
		catalog_snap_unref(p->snap);
	if (p->cfg != NULL)
		config_unref(p->cfg);
	p->snap = NULL;
	p->cfg = NULL;
	p->valid = false;
}

/* ---- the queue of expected answers -------------------------------------------------------- */

static Resp *q_at(RelayMask *m, size_t i)
{
	return &m->q[(m->q_head + i) % m->q_cap];
}

static Resp *q_front(RelayMask *m)
{
	return m->q_len > 0 ? q_at(m, 0) : NULL;
}

/*
 * Portals are instances: each Bind makes a new one under its name, and the
 * answers already expected from an older one (a pipeline binding the same
 * name twice before Sync) keep pointing at theirs. An instance lives while
 * it is its name's current one or an expected answer points at it.
 */
static Portal *portal_new(RelayMask *m, const char *name)
{
	Portal *p = calloc(1, sizeof(*p));

	if (p == NULL || (p->name = strdup(name)) == NULL) {
		free(p);
		return NULL;
	}
	p->current = true;
	p->next = m->portals;
	m->portals = p;
	return p;
}

/* The current instance of `name` (one is made for a name never bound through pgveil). */
static Portal *portal_get(RelayMask *m, const char *name)
{
	for (Portal *p = m->portals; p != NULL; p = p->next)
		if (p->current && strcmp(p->name, name) == 0)
			return p;
	return portal_new(m, name);
}

static void portal_free(Portal *p)
{
	plan_clear(&p->plan);
	free(p->name);
	if (p->info != NULL)
		sqlinfo_unref(p->info);
	free(p);
}

/* Frees the instances nothing needs any more. */
static void portal_sweep(RelayMask *m)
{
	for (Portal **pp = &m->portals; *pp != NULL;) {
		Portal *p = *pp;

		if (!p->current && p->refs == 0) {
			*pp = p->next;
			portal_free(p);
		} else {
			pp = &p->next;
		}
	}
}

/*
 * A statement is about to run (a Query, or an Execute of `running`): SQL
 * can close and declare cursors, which are portals too, so no other idle
 * portal keeps its description; the next Execute of one describes it again.
 */
static void portals_forget_plans(RelayMask *m, const Portal *running)
{
	for (Portal *p = m->portals; p != NULL; p = p->next)
		if (p != running && p->refs == 0 && p->plan.valid) {
			plan_clear(&p->plan);
			p->describe_pending = false;
		}
}

/* `name` no longer has a current instance (a new Bind, a Close, the end of the transaction). */
static void portal_retire(RelayMask *m, const char *name)
{
	for (Portal *p = m->portals; p != NULL; p = p->next)
		if (p->current && strcmp(p->name, name) == 0)
			p->current = false;
	portal_sweep(m);
}

static bool q_push(RelayMask *m, const Resp *e)
{
	if (m->q_len == m->q_cap) {
		size_t ncap = m->q_cap ? m->q_cap * 2 : 16;
		Resp *nq = malloc(ncap * sizeof(*nq));

		if (nq == NULL)
			return false;
		for (size_t i = 0; i < m->q_len; i++)
			nq[i] = *q_at(m, i);
		free(m->q);
		m->q = nq;
		m->q_cap = ncap;
		m->q_head = 0;
	}
	*q_at(m, m->q_len) = *e;
	m->q_len++;
	if (e->portal != NULL)
		e->portal->refs++;
	return true;
}

static void resp_release(RelayMask *m, Resp *e)
{
	if (e->info != NULL)
		sqlinfo_unref(e->info);
	free(e->name);
	if (e->portal != NULL && --e->portal->refs == 0 && !e->portal->current)
		portal_sweep(m);
	memset(e, 0, sizeof(*e));
}

static void q_pop(RelayMask *m)
{
	if (m->q_len == 0)
		return;
	resp_release(m, q_at(m, 0));
	m->q_head = (m->q_head + 1) % m->q_cap;
	m->q_len--;
}

/* Removes the last `n` Sync entries (Syncs the server ignored during COPY FROM STDIN). */
static void q_drop_last_syncs(RelayMask *m, int n)
{
	for (size_t i = m->q_len; i-- > 0 && n > 0;) {
		Resp *e = q_at(m, i);

		if (e->kind != RESP_SYNC)
			continue;
		resp_release(m, e);
		for (size_t j = i; j + 1 < m->q_len; j++)
			*q_at(m, j) = *q_at(m, j + 1);
		m->q_len--;
		n--;
	}
}

/* ---- setup -------------------------------------------------------------------------------- */

static void cat_wake_cb(evutil_socket_t fd, short what, void *arg);

/* A hash of the mask rules that apply to the caller, as written; 0 when none does. */
static uint64_t caller_masks_hash(Session *s)
{
	const RuleSet *rs = s->relay->cfg->ruleset;
	uint64_t h = RELAY_HASH_BASIS;
	bool any = false;

	for (int i = 0; rs != NULL && i < rs->n_rules; i++) {
		const Rule *rule = &rs->rules[i];

		if (rule->kind != RULE_MASK || !catalog_mask_applies(rule, &s->identity))
			continue;
		any = true;
		h = relay_hash(relay_hash(h, rule->text), "\xff"); /* a separator byte between rules */
	}
	return any ? (h != 0 ? h : 1) : 0;
}

static void mask_free(RelayMask *m)
{
	while (m->q_len > 0)
		q_pop(m);
	free(m->q);
	while (m->portals != NULL) {
		Portal *p = m->portals;

		m->portals = p->next;
		portal_free(p);
	}
	plan_clear(&m->cur);
	plan_clear(&m->copy);
	if (m->copy_buf != NULL)
		evbuffer_free(m->copy_buf);
	if (m->cat_wake != NULL) {
		catalog_forget(m->cat_wake);
		event_free(m->cat_wake);
	}
	if (m->cat != NULL)
		catalog_snap_unref(m->cat);
	free(m);
}

void relay_mask_free(Session *s)
{
	if (s->relay != NULL && s->relay->mask != NULL) {
		mask_free(s->relay->mask);
		s->relay->mask = NULL;
	}
}

bool relay_mask_idle(const Session *s)
{
	return s->pending_ready == 0 && s->client_pass == 0 && s->relay->hold_id == 0;
}

bool relay_mask_client_waits(const Session *s)
{
	return s->relay->mask != NULL && s->relay->mask->wait_client;
}

/*
 * True when `text`, read as PostgreSQL reads setting names (any case, '-'
 * for '_'), mentions search_path.
 */
static bool mentions_search_path(const char *text)
{
	static const char want[] = "search_path";

	for (; *text != '\0'; text++) {
		size_t i = 0;

		while (want[i] != '\0' && text[i] != '\0' &&
		       (tolower((unsigned char)text[i]) == want[i] || (text[i] == '-' && want[i] == '_')))
			i++;
		if (want[i] == '\0')
			return true;
	}
	return false;
}

bool relay_startup_sets_search_path(const Session *s)
{
	for (int i = 0; i < s->startup.n_params; i++) {
		const PgStartupParam *p = &s->startup.params[i];

		if (strcasecmp(p->name, "search_path") == 0 ||
		    (strcasecmp(p->name, "options") == 0 && mentions_search_path(p->value)))
			return true;
	}
	return false;
}

/*
 * A search_path startup parameter that puts a schema before pg_catalog, or
 * one in options (not parsed here: any mention is refused).
 */
static bool startup_shadows_builtins(const Session *s)
{
	for (int i = 0; i < s->startup.n_params; i++) {
		const PgStartupParam *p = &s->startup.params[i];

		if (strcasecmp(p->name, "search_path") == 0 && sqlinfo_search_path_shadows(p->value))
			return true;
		if (strcasecmp(p->name, "options") == 0 && mentions_search_path(p->value))
			return true;
	}
	return false;
}

RmResult relay_mask_update(Session *s)
{
	Relay *r = s->relay;
	RelayMask *m;
	uint64_t masks;
	bool need, changed;

	if (r->mask_gen == r->cfg_gen && !r->mask_idle_wait)
		return RM_OK;
	masks = caller_masks_hash(s);
	need = masks != 0;
	changed = masks != r->mask_hash;
	r->mask_gen = r->cfg_gen;
	r->mask_idle_wait = false;
	if (!changed)
		return RM_OK;
	/* Answers already on their way were not recorded (or are recorded): switch between batches only. */
	if (!relay_mask_idle(s)) {
		r->mask_idle_wait = true;
		return need ? RM_WAIT : RM_OK;
	}
	r->mask_hash = masks;
	if (!need) {
		relay_mask_free(s);
		return RM_OK;
	}
	if (r->batches_sent > 0) {
		/* Cursors and prepared statements opened before were checked against other masks, or none. */
		log_write(LL_INFO, s->ctx, "the masks of this caller changed with a reload: ending the session");
		session_fail(s, SQLSTATE_ADMIN_SHUTDOWN,
			     "the masking rules for this caller changed; reconnect (cursors and prepared statements "
			     "opened before cannot be checked against them)");
		return RM_REFUSE;
	}
	if (r->mask != NULL)
		return RM_OK;
	if (startup_shadows_builtins(s)) {
		session_fail(s, SQLSTATE_INSUFFICIENT_PRIVILEGE,
			     "a caller with masked columns may not put a schema before pg_catalog in search_path");
		return RM_REFUSE;
	}
	m = calloc(1, sizeof(*m));
	if (m == NULL || (m->cat_wake = event_new(s->worker->base, -1, 0, cat_wake_cb, s)) == NULL ||
	    (m->copy_buf = evbuffer_new()) == NULL) {
		if (m != NULL && m->cat_wake != NULL)
			event_free(m->cat_wake);
		free(m);
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return RM_REFUSE;
	}
	r->mask = m;
	log_write(LL_DEBUG, s->ctx, "masks apply to this caller: results are rewritten");
	return RM_OK;
}

/* ---- the catalog ------------------------------------------------------------------------------ */

static void cat_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;
	RelayMask *m;

	(void)fd;
	(void)what;
	if (s->state != SESS_ACTIVE || s->relay->mask == NULL)
		return;
	m = s->relay->mask;
	if (m->wait_server) {
		m->wait_server = false;
		m->refreshed = true;
		stream_enable_read(s->server, true);
		relay_server_input(s);
	}
	if (s->state == SESS_ACTIVE && m->wait_client) {
		m->wait_client = false;
		stream_enable_read(s->client, true);
		relay_client_input(s);
	}
}

/* Takes the newest snapshot when it is newer than the one in use. */
static void cat_update(Session *s)
{
	RelayMask *m = s->relay->mask;
	CatSnap *c = catalog_get(s->database);

	if (c == NULL)
		return;
	if (m->cat != NULL && m->cat->version >= c->version && m->cat->cfg_gen >= c->cfg_gen) {
		catalog_snap_unref(c);
		return;
	}
	if (m->cat != NULL)
		catalog_snap_unref(m->cat);
	m->cat = c;
}

/*
 * The relations a name the statement writes may be: the one of its schema,
 * or, unqualified, every relation of that name (the session's search_path
 * is not known). Points into the snapshot, or at *one.
 */
static const CatRel *const *rels_named(const CatSnap *cat, const char *schema, const char *name, const CatRel **one,
				       int *n)
{
	if (schema == NULL)
		return catalog_rels_named(cat, name, n);
	*n = catalog_find_rels(cat, schema, name, one, 1) > 0 ? 1 : 0;
	return one;
}

/*
 * True when the statement names a relation with masked columns: its errors
 * can echo stored rows ("Failing row contains (...)") even when it reads no
 * masked column itself.
 */
static bool touches_masked_table(const CatSnap *cat, const StmtInfo *info)
{
	for (int i = 0; i < info->n_parts; i++)
		for (int j = 0; j < info->parts[i].n_tables; j++) {
			const SqlTable *t = &info->parts[i].tables[j];
			const CatRel *one, *const *rels;
			int n;

			rels = rels_named(cat, t->schema, t->name, &one, &n);
			for (int k = 0; k < n; k++)
				if (rels[k]->has_masks)
					return true;
		}
	return false;
}

/*
 * True when the statement names what the snapshot does not have (created
 * since it was read): a relation, or a column of a relation with masked
 * columns (added or renamed, the masks may reach it).
 */
static bool names_unknown(const CatSnap *cat, const StmtInfo *info)
{
	const CatRel *one, *const *rels;
	int n;

	for (int i = 0; i < info->n_parts; i++)
		for (int j = 0; j < info->parts[i].n_tables; j++) {
			const SqlTable *t = &info->parts[i].tables[j];

			(void)rels_named(cat, t->schema, t->name, &one, &n);
			if (n == 0)
				return true;
		}
	for (int i = 0; i < info->n_stmts; i++)
		for (int j = 0; j < info->stmts[i].n_columns; j++) {
			const SqlColumn *c = info->stmts[i].columns[j].column;
			bool masked = false, found = false;

			if (strcmp(c->column, SQL_COLUMN_ALL) == 0)
				continue;
			rels = rels_named(cat, c->schema, c->table, &one, &n);
			for (int k = 0; k < n && !found; k++) {
				masked = masked || rels[k]->has_masks;
				found = catalog_attnum(rels[k], c->column) > 0;
			}
			if (masked && !found)
				return true;
		}
	return false;
}

RmResult relay_mask_check(Session *s, const StmtInfo *info)
{
	Relay *r = s->relay;
	RelayMask *m = r->mask;
	MaskVerdict v;
	char msg[768];

	if (m == NULL)
		return RM_OK;
	cat_update(s);
	if (m->cat == NULL || m->cat->cfg_gen < r->cfg_gen) {
		/* Not loaded yet, or loaded under older rules: wait for the catalog thread. */
		if (!catalog_request(s->database, m->cat != NULL ? m->cat->version : 0, m->cat_wake)) {
			relay_refuse(s, SQLSTATE_CATALOG_UNAVAILABLE,
				     "pgveil cannot read the server's catalog, so it cannot mask results", NULL, NULL, 0);
			return RM_REFUSE;
		}
		m->wait_client = true;
		stream_enable_read(s->client, false);
		return RM_WAIT;
	}
	if (m->cat->error != NULL) {
		snprintf(msg, sizeof(msg), "pgveil cannot mask results: %s", m->cat->error);
		relay_refuse(s, SQLSTATE_CATALOG_UNAVAILABLE, msg, "Statements are refused until the catalog can be read.",
			     NULL, 0);
		if (!catalog_request(s->database, m->cat->version, m->cat_wake)) /* a later statement tries again */
			log_write(LL_WARN, s->ctx, "cannot ask for the catalog again");
		log_write(LL_WARN, s->ctx, "statement refused: %s", m->cat->error);
		return RM_REFUSE;
	}
	if (info->shadows_builtins) {
		relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE,
			     "a caller with masked columns may not put a schema before pg_catalog in search_path",
			     "A function there with a built-in's name would be called in its place.", NULL, 0);
		return RM_REFUSE;
	}
	if (!m->check_refreshed && names_unknown(m->cat, info) &&
	    catalog_request(s->database, m->cat->version, m->cat_wake)) {
		/* Created since the catalog was read (a new partition, a column added): its masks must be known. */
		m->check_refreshed = true;
		m->wait_client = true;
		stream_enable_read(s->client, false);
		return RM_WAIT;
	}
	m->check_refreshed = false;
	policy_mask_check(info, m->cat, &s->identity, r->cfg->mask_predicates_allow, &v);
	if (v.blocked) {
		relay_refuse(s, SQLSTATE_INSUFFICIENT_PRIVILEGE, v.why, "Blocked to protect masked columns.", NULL, 0);
		log_write(LL_INFO, s->ctx, "blocked: %s", v.why);
		return RM_REFUSE;
	}
	if (v.reads_masked || touches_masked_table(m->cat, info))
		m->check_scrub = true;
	return RM_OK;
}

/* ---- client messages ------------------------------------------------------------------------ */

static bool get_string(const uint8_t *body, size_t blen, size_t *off, const char **out)
{
	const uint8_t *nul;

	if (*off >= blen || (nul = memchr(body + *off, 0, blen - *off)) == NULL)
		return false;
	*out = (const char *)body + *off;
	*off = (size_t)(nul - body) + 1;
	return true;
}

static void mask_desync(Session *s, const char *what)
{
	RelayMask *m = s->relay->mask;

	if (m->failed)
		return;
	m->failed = true;
	log_write(LL_ERROR, s->ctx, "lost track of the server's answers (%s): ending the session", what);
	session_fail(s, SQLSTATE_INTERNAL_ERROR, "pgveil lost track of the server's answers and cannot mask them");
}

void relay_mask_client_msg(Session *s, uint8_t type, const uint8_t *body, size_t blen, StmtInfo *info)
{
	Relay *r = s->relay;
	RelayMask *m = r->mask;
	Resp e;
	const char *a = NULL, *b = NULL;
	size_t off = 0;
	uint8_t kind = 0;

	if (m == NULL)
		return;
	memset(&e, 0, sizeof(e));
	switch (type) {
	case 'Q':
		e.kind = RESP_QUERY;
		e.info = info != NULL ? sqlinfo_ref(info) : NULL;
		break;
	case 'F':
		e.kind = RESP_FUNCTION;
		break;
	case 'S':
		e.kind = RESP_SYNC;
		break;
	case 'P':
		if (!get_string(body, blen, &off, &a))
			goto bad;
		e.kind = RESP_PARSE;
		e.info = info != NULL ? sqlinfo_ref(info) : NULL;
		break;
	case 'B':
		if (!get_string(body, blen, &off, &a) || !get_string(body, blen, &off, &b))
			goto bad;
		e.kind = RESP_BIND;
		portal_retire(m, a);
		if ((e.portal = portal_new(m, a)) == NULL)
			goto oom;
		if ((info = relay_bound_info(r, b)) != NULL)
			e.portal->info = sqlinfo_ref(info);
		break;
	case 'D':
	case 'C':
		if (blen < 1)
			goto bad;
		kind = body[0];
		off = 1;
		if (!get_string(body, blen, &off, &a) || (kind != 'S' && kind != 'P'))
			goto bad;
		if (kind == 'P' && (e.portal = portal_get(m, a)) == NULL)
			goto oom;
		if (type == 'D') {
			e.kind = kind == 'S' ? RESP_DESCRIBE_S : RESP_DESCRIBE_P;
			if (kind == 'P')
				e.portal->describe_pending = true;
		} else {
			e.kind = RESP_CLOSE;
			e.close_portal = kind == 'P';
		}
		break;
	case 'E':
		if (!get_string(body, blen, &off, &a))
			goto bad;
		e.kind = RESP_EXECUTE;
		if ((e.portal = portal_get(m, a)) == NULL)
			goto oom;
		break;
	default:
		return;
	}
	if (type == 'Q' || type == 'E')
		portals_forget_plans(m, e.portal);
	if (type == 'E' && e.portal != NULL && e.portal->sensitive) { /* a portal bound in an earlier batch */
		m->scrub = true;
		m->scrub_batch = r->batches_sent;
	}
	e.sensitive = m->check_scrub;
	if (type == 'B' && e.portal != NULL)
		e.portal->sensitive = m->check_scrub;
	if (m->check_scrub && (type == 'Q' || type == 'P' || type == 'B' || type == 'F')) {
		m->scrub = true;
		m->scrub_batch = r->batches_sent;
		m->check_scrub = false;
	}
	if (q_push(m, &e))
		return;
oom:
	if (e.info != NULL)
		sqlinfo_unref(e.info);
	session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
	return;
bad:
	/* The server refuses it too; recorded so that its error matches. */
	e.kind = type == 'E' ? RESP_EXECUTE : type == 'B' ? RESP_BIND : type == 'P' ? RESP_PARSE : RESP_CLOSE;
	e.portal = NULL;
	if (!q_push(m, &e))
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
}

void relay_mask_before_execute(Session *s, const char *portal, struct evbuffer *server_out)
{
	RelayMask *m = s->relay->mask;
	Portal *p;
	PgBuf b;
	Resp e;

	if (m == NULL || (p = portal_get(m, portal)) == NULL)
		return; /* out of memory: the Execute's rows find no plan and go NULL */
	if (p->plan.valid || p->describe_pending)
		return;
	pgproto_buf_init(&b);
	pgproto_begin(&b, 'D');
	pgproto_put_byte(&b, 'P');
	pgproto_put_string(&b, portal);
	pgproto_end(&b);
	memset(&e, 0, sizeof(e));
	e.kind = RESP_DESCRIBE_P;
	e.injected = true;
	e.portal = p;
	if (pgproto_buf_ok(&b) && q_push(m, &e)) {
		evbuffer_add(server_out, b.data, b.len);
		p->describe_pending = true;
	}
	pgproto_buf_free(&b);
}

void relay_mask_copy_in_done(Session *s, int n_syncs)
{
	if (s->relay->mask != NULL && n_syncs > 0)
		q_drop_last_syncs(s->relay->mask, n_syncs);
}

/* ---- building a plan from a RowDescription -------------------------------------------------- */

typedef struct Field {
	uint32_t table;
	int16_t attnum;
	uint32_t type;
	int16_t format;
	const char *name;
} Field;

static bool read_field(PgReader *rd, Field *f)
{
	int16_t typlen;
	int32_t typmod;

	return pgproto_get_string(rd, &f->name) && pgproto_get_uint32(rd, &f->table) &&
	       pgproto_get_int16(rd, &f->attnum) && pgproto_get_uint32(rd, &f->type) &&
	       pgproto_get_int16(rd, &typlen) && pgproto_get_int32(rd, &typmod) && pgproto_get_int16(rd, &f->format);
}

/*
 * The mask an output of the statement analysis expects for the caller: a
 * plain copy of one column that is masked for it. Returns the column's
 * CatColumn of the first matching relation, or NULL.
 */
static const CatMask *expected_mask(const CatSnap *cat, const Identity *id, const SqlOutput *o,
				    const CatColumn **col)
{
	const CatRel *one, *const *rels;
	const SqlColumn *c;
	int n;

	*col = NULL;
	if (o->kind != SQL_OUT_DIRECT || o->star || o->n_sources != 1)
		return NULL;
	c = o->sources[0];
	if (strcmp(c->column, SQL_COLUMN_ALL) == 0)
		return NULL;
	rels = rels_named(cat, c->schema, c->table, &one, &n);
	for (int i = 0; i < n; i++) {
		int att = catalog_attnum(rels[i], c->column);
		bool derived;
		const CatMask *cm;

		if (att > 0 && *col == NULL)
			*col = &rels[i]->columns[att - 1];
		if (att > 0 && (cm = catalog_mask_for(&rels[i]->columns[att - 1], id, &derived)) != NULL) {
			*col = &rels[i]->columns[att - 1];
			return cm;
		}
	}
	return NULL;
}

static void warn_null(Session *s, int i, const char *name, const char *why)
{
	char msg[512];
	PgBuf b;

	snprintf(msg, sizeof(msg), "pgveil sends column %d (\"%s\") of this result as NULL: %s", i + 1, name, why);
	pgproto_buf_init(&b);
	pgproto_build_error(&b, true, "WARNING", "01000", msg, NULL, NULL);
	if (pgproto_buf_ok(&b))
		evbuffer_add(stream_output(s->client), b.data, b.len);
	pgproto_buf_free(&b);
	log_write(LL_WARN, s->ctx, "%s", msg);
}

typedef enum { PLAN_OK, PLAN_REFRESH, PLAN_FAIL } PlanResult;

/*
 * Builds `plan` from the RowDescription body. `st` is the statement the
 * analysis expects (NULL when unknown); `sensitive`: it reads masked columns
 * or touches a table with some. PLAN_REFRESH: a table OID or one of its
 * columns is not in the snapshot (ask the catalog again first).
 */
static PlanResult plan_build(Session *s, Plan *plan, const uint8_t *body, size_t blen, const SqlStmt *st,
			     bool sensitive, bool may_refresh)
{
	RelayMask *m = s->relay->mask;
	const CatSnap *cat = m->cat;
	PgReader rd;
	int16_t n;
	bool positions = st != NULL, count_differs = false;

	char names[512];
	size_t nlen = 0;

	plan_clear(plan);
	pgproto_reader_init(&rd, body, blen);
	if (!pgproto_get_int16(&rd, &n) || n < 0)
		return PLAN_FAIL;
	for (int i = 0; may_refresh && i < n; i++) { /* first: tables the snapshot does not know */
		Field f;

		if (!read_field(&rd, &f))
			return PLAN_FAIL;
		if (f.table != 0 && (catalog_rel(cat, f.table) == NULL ||
				     (f.attnum > 0 && catalog_column(cat, f.table, f.attnum) == NULL)))
			return PLAN_REFRESH;
	}
	pgproto_reader_init(&rd, body, blen);
	if (!pgproto_get_int16(&rd, &n))
		return PLAN_FAIL;
	names[0] = '\0';
	if (n > 0 && (plan->mp.fields = calloc((size_t)n, sizeof(MaskField))) == NULL)
		return PLAN_FAIL;
	/* Without a star, the statement's outputs are the result's columns, one to one. */
	if (st != NULL && st->n_outputs > 0 && sensitive && st->n_outputs != n) {
		bool star = false;

		for (int i = 0; i < st->n_outputs; i++)
			star = star || st->outputs[i].star;
		count_differs = !star;
		positions = false;
	}
	plan->mp.n_fields = n;
	for (int i = 0; i < n; i++) {
		MaskField *mf = &plan->mp.fields[i];
		const CatMask *have = NULL, *want = NULL;
		bool derived = false;
		Field f;

		if (!read_field(&rd, &f)) {
			plan_clear(plan);
			return PLAN_FAIL;
		}
		mf->type_oid = f.type;
		mf->format = f.format;
		if (positions && st->n_outputs > 0) {
			const CatColumn *ignored;

			if (i < st->n_outputs && !st->outputs[i].star)
				want = expected_mask(cat, &s->identity, &st->outputs[i], &ignored);
			else
				positions = false; /* past a star, output i is not known */
		}
		if (f.table != 0) {
			const CatRel *rel = catalog_rel(cat, f.table);
			const CatColumn *col;

			if (rel == NULL) {
				mf->to_null = true;
				warn_null(s, i, f.name, "its table is not in the server's catalog");
			} else if ((col = catalog_column(cat, f.table, f.attnum)) != NULL) {
				have = catalog_mask_for(col, &s->identity, &derived);
				if (have != NULL && nlen < sizeof(names))
					nlen += (size_t)snprintf(names + nlen, sizeof(names) - nlen, "%s%s.%s.%s",
								 nlen > 0 ? "," : "", rel->schema, rel->name, col->name);
			} else if (f.attnum > 0) { /* not even after the catalog was read again */
				mf->to_null = true;
				warn_null(s, i, f.name, "its column is not in the server's catalog");
			}
		}
		if (derived) {
			mf->to_null = true;
			warn_null(s, i, f.name, "it is computed from a masked column");
		} else if (want != NULL && (have == NULL || have->rule != want->rule)) {
			mf->to_null = true;
			warn_null(s, i, f.name, "the server describes it differently from the statement, which reads a masked column");
		} else if (have != NULL) {
			char why[256];
			bool fits;

			mf->rule = have->rule;
			fits = mask_check_type(have->rule, f.type, why, sizeof(why));

			if (!have->type_ok || !fits) {
				char msg[400];

				if (!fits)
					snprintf(msg, sizeof(msg), "rule %s: %s", have->rule->where, why);
				else
					snprintf(msg, sizeof(msg), "rule %s cannot mask the column's type", have->rule->where);
				mf->rule = NULL;
				mf->to_null = true;
				warn_null(s, i, f.name, msg);
			}
		} else if (f.table == 0 && count_differs) {
			mf->to_null = true;
			warn_null(s, i, f.name, "the statement reads masked columns and the server's description of its "
						"result does not match the statement");
		}
		if (mf->rule != NULL || mf->to_null)
			plan->mp.n_masked++;
	}
	plan->snap = catalog_snap_ref(m->cat);
	plan->cfg = config_ref(s->relay->cfg);
	plan->mp.key = plan->cfg->mask_key;
	plan->valid = true;
	if (plan->mp.n_masked > 0) {
		log_write(LL_INFO, s->ctx, "result masked: %d of %d columns (%s)", plan->mp.n_masked, n,
			  names[0] != '\0' ? names : "sent as NULL");
		relay_audit_masked(s, names);
	}
	return PLAN_OK;
}

/* The statement a Query's current result answers, when the analysis has it. */
static const SqlStmt *query_stmt(const Resp *e, int index)
{
	if (e->info == NULL || index < 0 || index >= e->info->n_stmts)
		return NULL;
	return &e->info->stmts[index];
}

/* The statement a portal runs, when pgveil knows exactly one. */
static const SqlStmt *portal_stmt(const Portal *p)
{
	if (p == NULL || p->info == NULL || p->info->n_stmts != 1 || p->info->n_prep != 0)
		return NULL;
	return &p->info->stmts[0];
}

/* Moves the bytes before the message at *run to the client. */
static void pass_before(Session *s, struct evbuffer *in, size_t *run)
{
	if (*run > 0)
		evbuffer_remove_buffer(in, stream_output(s->client), *run);
	*run = 0;
}

/* ---- COPY ... TO STDOUT -------------------------------------------------------------------------- */

/* Sets field f from a column (type) and the caller's mask of it. */
static void field_from_column(MaskField *f, const CatColumn *c, const CatMask *cm)
{
	char why[256];

	f->type_oid = c != NULL ? c->type_oid : 0;
	if (cm == NULL)
		return;
	if (c == NULL || !cm->type_ok || !mask_check_type(cm->rule, c->type_oid, why, sizeof(why)))
		f->to_null = true;
	else
		f->rule = cm->rule;
}

/* What the columns one output may come from say for the caller. */
typedef struct OutMasks {
	const CatMask *rule;     /* the one mask found (copies of masked columns), NULL: none */
	const CatColumn *col;    /* a column with that mask (its type), or any column found */
	bool conflict;           /* several masks, columns of several types, a derived use, or more than pgveil looks at */
} OutMasks;

static void out_masks_column(OutMasks *om, const CatColumn *c, const Identity *id)
{
	bool derived;
	const CatMask *cm = catalog_mask_for(c, id, &derived);

	if (derived)
		om->conflict = true;
	if (cm == NULL) {
		if (om->col == NULL)
			om->col = c;
		return;
	}
	if (om->rule != NULL && (om->rule->rule != cm->rule || om->col->type_oid != c->type_oid))
		om->conflict = true;
	om->rule = cm;
	om->col = c;
}

/* Every relation `src` may name (unqualified: in any schema) and its column(s), into om. */
static void out_masks_source(OutMasks *om, const CatSnap *cat, const Identity *id, const SqlColumn *src)
{
	const CatRel *one, *const *rels;
	int n;

	rels = rels_named(cat, src->schema, src->table, &one, &n);
	for (int r = 0; r < n; r++) {
		const CatRel *rel = rels[r];
		int att = strcmp(src->column, SQL_COLUMN_ALL) == 0 ? 0 : catalog_attnum(rel, src->column);

		if (att > 0) {
			out_masks_column(om, &rel->columns[att - 1], id);
			continue;
		}
		for (int a = 0; a < rel->n_columns; a++) /* "*", or a name the relation does not have */
			if (rel->columns[a].name != NULL && rel->has_masks)
				out_masks_column(om, &rel->columns[a], id);
	}
}

/*
 * The field of a COPY output that is not a star: a plain copy of a column
 * with one mask gets it; one whose possible sources disagree, or that is
 * computed from a masked column, is sent as NULL.
 */
static void copy_output_field(Session *s, const SqlOutput *o, MaskField *f)
{
	OutMasks om = { NULL, NULL, false };

	for (int j = 0; j < o->n_sources; j++)
		out_masks_source(&om, s->relay->mask->cat, &s->identity, o->sources[j]);
	if (om.rule != NULL && (o->kind == SQL_OUT_DERIVED || o->n_sources != 1))
		om.conflict = true;
	if (om.conflict) {
		f->to_null = true;
		f->type_oid = om.col != NULL ? om.col->type_oid : 0;
		return;
	}
	field_from_column(f, o->kind == SQL_OUT_DIRECT && o->n_sources == 1 ? om.col : NULL, om.rule);
}

/*
 * Fields for a star output (every live column of its table, in order; for
 * `COPY t TO`, o->no_generated, without the generated ones, which
 * PostgreSQL leaves out) from field *k on. False when the table is unknown,
 * or when the relations an unqualified name may be do not agree on their
 * columns.
 */
static bool copy_expand_star(Session *s, const SqlOutput *o, MaskField *fields, int ncols, int *k)
{
	const CatRel *one, *const *rels, *rel;
	const SqlColumn *src;
	int n;

	if (o->kind != SQL_OUT_DIRECT || o->n_sources != 1)
		return false;
	src = o->sources[0];
	rels = rels_named(s->relay->mask->cat, src->schema, src->table, &one, &n);
	if (n < 1)
		return false;
	rel = rels[0];
	for (int a = 0; a < rel->n_columns; a++) {
		const CatColumn *c = &rel->columns[a];
		const CatMask *cm;
		bool derived;

		if (c->name == NULL || (o->no_generated && c->generated))
			continue;
		for (int j = 1; j < n; j++) { /* an unqualified name: every candidate must have the same column */
			int att = catalog_attnum(rels[j], c->name);

			if (att < 1 || rels[j]->columns[att - 1].generated != c->generated ||
			    catalog_mask_for(&rels[j]->columns[att - 1], &s->identity, &derived) !=
				    catalog_mask_for(c, &s->identity, &derived))
				return false;
		}
		if (*k >= ncols)
			return false;
		cm = catalog_mask_for(c, &s->identity, &derived);
		if (derived)
			fields[*k].to_null = true;
		field_from_column(&fields[*k], c, cm);
		(*k)++;
	}
	return true;
}

/*
 * The plan of a COPY ... TO STDOUT with ncols columns: no RowDescription
 * comes with it, so the columns are those the statement analysis names,
 * looked up in the catalog. When they cannot be told, every column is sent
 * as NULL.
 */
static bool copy_plan_build(Session *s, const SqlStmt *st, int ncols)
{
	RelayMask *m = s->relay->mask;
	MaskField *fields = ncols > 0 ? calloc((size_t)ncols, sizeof(*fields)) : NULL;
	bool known = st != NULL && (st->copy.format == SQL_COPY_TEXT || st->copy.format == SQL_COPY_CSV) &&
		     !st->copy.unusual;
	int k = 0;

	plan_clear(&m->copy);
	if (ncols > 0 && fields == NULL)
		return false;
	for (int i = 0; known && i < st->n_outputs; i++) {
		const SqlOutput *o = &st->outputs[i];

		if (o->star) {
			known = copy_expand_star(s, o, fields, ncols, &k);
			continue;
		}
		if (k >= ncols) {
			known = false;
			break;
		}
		copy_output_field(s, o, &fields[k]);
		k++;
	}
	if (!known || k != ncols) {
		for (int i = 0; i < ncols; i++) {
			fields[i].rule = NULL;
			fields[i].to_null = true;
		}
		if (ncols > 0)
			warn_null(s, 0, "*", "pgveil cannot tell which columns this COPY writes; every column is sent as NULL");
	}
	m->copy.mp.fields = fields;
	m->copy.mp.n_fields = ncols;
	for (int i = 0; i < ncols; i++)
		m->copy.mp.n_masked += fields[i].rule != NULL || fields[i].to_null;
	m->copy.snap = catalog_snap_ref(m->cat);
	m->copy.cfg = config_ref(s->relay->cfg);
	m->copy.mp.key = m->copy.cfg->mask_key;
	m->copy.valid = true;
	memset(&m->copy_fmt, 0, sizeof(m->copy_fmt));
	if (known) {
		m->copy_fmt.csv = st->copy.format == SQL_COPY_CSV;
		m->copy_fmt.delimiter = st->copy.delimiter;
		m->copy_fmt.quote = st->copy.quote;
		m->copy_fmt.escape = st->copy.escape;
		m->copy_fmt.null_string = st->copy.null_string;
		m->copy_fmt.header = st->copy.header;
	}
	m->copy_first = true;
	return true;
}

static bool copy_has_star(const SqlStmt *st)
{
	for (int i = 0; st != NULL && i < st->n_outputs; i++)
		if (st->outputs[i].star)
			return true;
	return false;
}

/* CopyOutResponse: the plan of the rows that follow. */
static RmsResult on_copy_out(Session *s, struct evbuffer *in, size_t *run, const PgHeader *h)
{
	RelayMask *m = s->relay->mask;
	Resp *e = q_front(m);
	const SqlStmt *st = NULL;
	const uint8_t *body;
	PgReader rd;
	uint8_t overall;
	int16_t ncols;

	if (e == NULL || (e->kind != RESP_QUERY && e->kind != RESP_EXECUTE)) {
		mask_desync(s, "CopyOutResponse");
		return RMS_WAIT;
	}
	st = e->kind == RESP_QUERY ? query_stmt(e, m->stmt_index) : portal_stmt(e->portal);
	body = relay_copy_body(s->relay, in, *run, h->len - 4);
	pgproto_reader_init(&rd, body, body != NULL ? h->len - 4 : 0);
	if (body == NULL || !pgproto_get_byte(&rd, &overall) || !pgproto_get_int16(&rd, &ncols) || ncols < 0) {
		mask_desync(s, "an unreadable CopyOutResponse");
		return RMS_WAIT;
	}
	cat_update(s);
	pass_before(s, in, run);
	if (overall == 0 && !m->refreshed && copy_has_star(st) &&
	    catalog_request(s->database, m->cat->version, m->cat_wake)) {
		/* A whole table: its columns as they are now (a migration may have moved them). */
		m->wait_server = true;
		stream_enable_read(s->server, false);
		return RMS_WAIT;
	}
	m->refreshed = false;
	if (overall != 0) {
		/* Binary COPY of masked columns was refused; of others its rows pass as they are. */
		plan_clear(&m->copy);
		m->copy.valid = true;
		if (st == NULL || st->copy.format != SQL_COPY_BINARY) {
			mask_desync(s, "a binary COPY pgveil did not expect");
			return RMS_WAIT;
		}
		return RMS_PASS;
	}
	if (!copy_plan_build(s, st, ncols)) {
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return RMS_WAIT;
	}
	return RMS_PASS;
}

static RmsResult on_copy_data(Session *s, struct evbuffer *in, size_t *run, size_t avail, const PgHeader *h)
{
	RelayMask *m = s->relay->mask;
	const uint8_t *body;
	uint8_t hdr[PG_HEADER_LEN];
	size_t n;
	bool first = m->copy_first;

	if (!m->copy.valid) {
		mask_desync(s, "CopyData without CopyOutResponse");
		return RMS_WAIT;
	}
	m->copy_first = false;
	if (m->copy.mp.n_masked == 0)
		return RMS_PASS;
	if (avail - *run < (size_t)h->len + 1) {
		m->copy_first = first;
		return RMS_WAIT;
	}
	pass_before(s, in, run);
	body = evbuffer_pullup(in, (ssize_t)h->len + 1); /* the message at the front, in one piece */
	if (body == NULL) {
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return RMS_WAIT;
	}
	evbuffer_drain(m->copy_buf, evbuffer_get_length(m->copy_buf));
	if (mask_copy_data(&m->copy.mp, &m->copy_fmt, first, body + PG_HEADER_LEN, h->len - 4, m->copy_buf) !=
	    MASK_OK) {
		evbuffer_drain(m->copy_buf, evbuffer_get_length(m->copy_buf));
		mask_desync(s, "COPY data that does not match its columns");
		return RMS_WAIT;
	}
	n = evbuffer_get_length(m->copy_buf);
	hdr[0] = 'd';
	hdr[1] = (uint8_t)((n + 4) >> 24);
	hdr[2] = (uint8_t)((n + 4) >> 16);
	hdr[3] = (uint8_t)((n + 4) >> 8);
	hdr[4] = (uint8_t)(n + 4);
	evbuffer_add(stream_output(s->client), hdr, sizeof(hdr));
	evbuffer_add_buffer(stream_output(s->client), m->copy_buf);
	evbuffer_drain(in, (size_t)h->len + 1);
	return RMS_DONE;
}

/* ---- server messages ------------------------------------------------------------------------- */

static RmsResult on_row_description(Session *s, struct evbuffer *in, size_t *run, size_t avail, const PgHeader *h)
{
	RelayMask *m = s->relay->mask;
	Resp *e = q_front(m);
	Plan *plan;
	const SqlStmt *st = NULL;
	const uint8_t *body;
	PlanResult pr;
	bool injected = false, sensitive;

	if (e == NULL || (e->kind != RESP_DESCRIBE_S && e->kind != RESP_DESCRIBE_P && e->kind != RESP_QUERY)) {
		mask_desync(s, "RowDescription");
		return RMS_WAIT;
	}
	if (e->kind == RESP_DESCRIBE_S) {
		q_pop(m);
		return RMS_PASS;
	}
	if (avail - *run < (size_t)h->len + 1)
		return RMS_WAIT;
	if (e->kind == RESP_QUERY) {
		plan = &m->cur;
		st = query_stmt(e, m->stmt_index);
		sensitive = e->sensitive;
	} else {
		plan = e->portal != NULL ? &e->portal->plan : NULL;
		st = portal_stmt(e->portal);
		sensitive = e->portal != NULL && e->portal->sensitive;
		injected = e->injected;
	}
	cat_update(s);
	body = relay_copy_body(s->relay, in, *run, h->len - 4);
	if (body == NULL) {
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return RMS_WAIT;
	}
	pass_before(s, in, run); /* warnings about the plan go before the RowDescription */
	pr = plan != NULL ? plan_build(s, plan, body, h->len - 4, st, sensitive, !m->refreshed) : PLAN_FAIL;
	if (pr == PLAN_REFRESH) {
		if (catalog_request(s->database, m->cat->version, m->cat_wake)) {
			m->wait_server = true;
			stream_enable_read(s->server, false);
			return RMS_WAIT;
		}
		m->refreshed = true;
		pr = plan_build(s, plan, body, h->len - 4, st, sensitive, false);
	}
	m->refreshed = false;
	if (pr != PLAN_OK) {
		mask_desync(s, "an unreadable RowDescription");
		return RMS_WAIT;
	}
	if (e->kind == RESP_DESCRIBE_P) {
		e->portal->describe_pending = false;
		q_pop(m);
	}
	if (!injected)
		return RMS_PASS;
	evbuffer_drain(in, (size_t)h->len + 1);
	return RMS_DONE;
}

static RmsResult on_no_data(Session *s, struct evbuffer *in, size_t *run)
{
	RelayMask *m = s->relay->mask;
	Resp *e = q_front(m);
	bool injected;

	if (e == NULL || (e->kind != RESP_DESCRIBE_S && e->kind != RESP_DESCRIBE_P)) {
		mask_desync(s, "NoData");
		return RMS_WAIT;
	}
	injected = e->injected;
	if (e->kind == RESP_DESCRIBE_P && e->portal != NULL) {
		plan_clear(&e->portal->plan);
		e->portal->plan.valid = true; /* no rows */
		e->portal->describe_pending = false;
	}
	q_pop(m);
	if (!injected)
		return RMS_PASS;
	pass_before(s, in, run);
	evbuffer_drain(in, PG_HEADER_LEN);
	return RMS_DONE;
}

static RmsResult on_data_row(Session *s, struct evbuffer *in, size_t *run, size_t avail, const PgHeader *h)
{
	RelayMask *m = s->relay->mask;
	Resp *e = q_front(m);
	const Plan *plan = NULL;
	const uint8_t *body;

	if (e != NULL && e->kind == RESP_QUERY)
		plan = &m->cur;
	else if (e != NULL && e->kind == RESP_EXECUTE && e->portal != NULL)
		plan = &e->portal->plan;
	if (plan == NULL || !plan->valid) {
		mask_desync(s, "a DataRow without a description");
		return RMS_WAIT;
	}
	if (plan->mp.n_masked == 0)
		return RMS_PASS;
	if (avail - *run < (size_t)h->len + 1)
		return RMS_WAIT;
	pass_before(s, in, run);
	/* The row at the front, in one piece: no copy when it is already (the usual case). */
	body = evbuffer_pullup(in, (ssize_t)h->len + 1);
	if (body == NULL) {
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return RMS_WAIT;
	}
	if (mask_datarow(&plan->mp, body + PG_HEADER_LEN, h->len - 4, stream_output(s->client)) != MASK_OK) {
		mask_desync(s, "a DataRow that does not match its description");
		return RMS_WAIT;
	}
	evbuffer_drain(in, (size_t)h->len + 1);
	return RMS_DONE;
}

/* A statement of the front Query, or the front Execute, ended. */
static void result_done(RelayMask *m, bool error)
{
	Resp *e = q_front(m);

	if (e == NULL)
		return;
	if (e->kind == RESP_QUERY) {
		plan_clear(&m->cur);
		m->stmt_index++;
		return;
	}
	if (e->kind == RESP_SYNC || e->kind == RESP_FUNCTION)
		return; /* an error of the commit at Sync, or of the call: ReadyForQuery follows */
	q_pop(m);
	if (error) /* the server skips the rest up to Sync */
		while ((e = q_front(m)) != NULL && e->kind != RESP_SYNC && e->kind != RESP_QUERY &&
		       e->kind != RESP_FUNCTION)
			q_pop(m);
}

static RmsResult on_error_or_notice(Session *s, struct evbuffer *in, size_t *run, size_t avail, const PgHeader *h)
{
	Relay *r = s->relay;
	RelayMask *m = r->mask;
	const uint8_t *body;
	PgErrorFields f;
	bool scrub = m->scrub && r->batches_done <= m->scrub_batch;

	if (avail - *run < (size_t)h->len + 1)
		return scrub || h->type == 'E' ? RMS_WAIT : RMS_PASS;
	body = relay_copy_body(r, in, *run, h->len - 4);
	if (body == NULL || !pgproto_parse_error(body, h->len - 4, &f)) {
		if (!scrub)
			return RMS_PASS; /* relay.c treats it as it is */
		session_fail(s, SQLSTATE_INTERNAL_ERROR, "pgveil could not read a message of the server");
		return RMS_WAIT;
	}
	if (h->type == 'E') {
		bool fatal = f.severity != NULL && (strcmp(f.severity, "FATAL") == 0 || strcmp(f.severity, "PANIC") == 0);

		if (!fatal)
			result_done(m, true);
		/* The answer to a refusal is replaced by relay.c; it never carries row contents. */
		if (f.sqlstate != NULL && strcmp(f.sqlstate, "42601") == 0)
			scrub = false;
		if (scrub && fatal)
			s->server_sent_fatal = true;
	}
	if (!scrub)
		return RMS_PASS;
	pass_before(s, in, run);
	if (mask_scrub_message(h->type, body, h->len - 4, stream_output(s->client)) != MASK_OK) {
		session_fail(s, SQLSTATE_INTERNAL_ERROR, "pgveil could not read a message of the server");
		return RMS_WAIT;
	}
	evbuffer_drain(in, (size_t)h->len + 1);
	return RMS_DONE;
}

static void on_ready(RelayMask *m, char status)
{
	Resp *e;

	while ((e = q_front(m)) != NULL) {
		RespKind k = e->kind;

		q_pop(m);
		if (k == RESP_SYNC || k == RESP_QUERY || k == RESP_FUNCTION)
			break;
	}
	plan_clear(&m->cur);
	m->stmt_index = 0;
	if (status == 'I') { /* the transaction ended: the server dropped its portals */
		for (Portal *p = m->portals; p != NULL; p = p->next)
			if (p->refs == 0)
				p->current = false;
		portal_sweep(m);
	}
}

static void pop_expected(Session *s, RespKind kind, const char *what)
{
	RelayMask *m = s->relay->mask;
	Resp *e = q_front(m);

	if (e == NULL || e->kind != kind) {
		mask_desync(s, what);
		return;
	}
	if (kind == RESP_CLOSE && e->close_portal && e->portal != NULL && e->portal->current)
		portal_retire(m, e->portal->name);
	q_pop(m);
}

RmsResult relay_mask_server_msg(Session *s, struct evbuffer *in, size_t *run, size_t avail, const PgHeader *h)
{
	RelayMask *m = s->relay->mask;
	Resp *e;

	if (m == NULL)
		return RMS_PASS;
	if (m->failed || m->wait_server)
		return RMS_WAIT;
	/* Whole messages only (relay.c must not wait on one it was already shown), except rows. */
	if (h->type != 'D' && h->type != 'd' && avail - *run < (size_t)h->len + 1)
		return RMS_WAIT;
	switch (h->type) {
	case 'T':
		return on_row_description(s, in, run, avail, h);
	case 'n':
		return on_no_data(s, in, run);
	case 'D':
		return on_data_row(s, in, run, avail, h);
	case 'E':
	case 'N':
		return on_error_or_notice(s, in, run, avail, h);
	case 'H':
		return on_copy_out(s, in, run, h);
	case 'd':
		return on_copy_data(s, in, run, avail, h);
	case 'c':
		plan_clear(&m->copy);
		break;
	case '1':
		pop_expected(s, RESP_PARSE, "ParseComplete");
		break;
	case '2':
		pop_expected(s, RESP_BIND, "BindComplete");
		break;
	case '3':
		pop_expected(s, RESP_CLOSE, "CloseComplete");
		break;
	case 'C':
	case 'I':
	case 's':
		e = q_front(m);
		if (e == NULL || (e->kind != RESP_QUERY && e->kind != RESP_EXECUTE)) {
			mask_desync(s, "CommandComplete");
			return RMS_WAIT;
		}
		result_done(m, false);
		break;
	case 'Z': {
		uint8_t zb[PG_HEADER_LEN + 1];
		struct evbuffer_ptr pos;

		evbuffer_ptr_set(in, &pos, *run, EVBUFFER_PTR_SET);
		evbuffer_copyout_from(in, &pos, zb, sizeof(zb));
		on_ready(m, (char)zb[PG_HEADER_LEN]);
		break;
	}
	default:
		break;
	}
	return m->failed ? RMS_WAIT : RMS_PASS;
}
