/* SPDX-License-Identifier: MIT */
/*
 * The approval registry: held statements waiting for an approver, the
 * decisions made on them (the last APPROVAL_KEEP_DECIDED are kept so a
 * session can read its outcome and the console can explain a late
 * decision), time-boxed grants made by APPROVE ... FOR (never from a
 * statement submitted with no_grant), and blocked agents.
 * One mutex guards everything; every function may be called from any
 * thread. A decision wakes the waiting session by activating the event it
 * submitted (libevent runs with pthread support, so that is safe from the
 * approver's worker). Everything lives in memory; the audit log gets a row
 * per held statement and its outcome (audit_entry()).
 */
#include "pgveil/approval.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/audit.h"
#include "pgveil/log.h"

#define APPROVAL_MAX_GRANT_SECONDS (100ULL * 366 * 86400) /* keeps time_t arithmetic sane */

/* One held statement, waiting or decided. */
typedef struct HeldEntry {
	uint64_t id;
	uint64_t session_id;
	char *subject, *database, *sql, *rule, *rule_text;
	int n_tables;
	char **tables;            /* owned strings */
	char *no_grant;           /* why no grant may be made from it, NULL: one may */
	uint64_t shape;           /* HoldSpec.shape */
	time_t held_at;
	HoldState state;
	struct event *wake;       /* NULL once decided or withdrawn: never touched again */
	char *decided_by;         /* NULL while waiting and after a withdrawal */
	char *reason;
	time_t decided_at;
	time_t grant_until;       /* 0 = no grant */
	struct HeldEntry *next;   /* waiting list (id order) or decided list (decision order) */
} HeldEntry;

typedef struct Grant {
	uint64_t id;
	uint64_t approval_id;
	char *subject, *rule, *granted_by;
	char *rule_text;          /* the rule as written: a reload may put another rule at the same file:line */
	int n_tables;
	char **tables;
	uint64_t shape;           /* made from a statement touching no table: its fingerprint (the only one covered) */
	time_t until;
	struct Grant *next;
} Grant;

typedef struct Block {
	char *subject;
	time_t until;             /* 0 = indefinitely */
	struct Block *next;
} Block;

static struct {
	pthread_mutex_t lock;
	uint64_t next_id;         /* next approval id */
	uint64_t next_grant_id;
	HeldEntry *waiting;       /* waiting entries, oldest first */
	HeldEntry *waiting_tail;
	HeldEntry *decided;       /* entries no longer waiting, in the order they were decided */
	HeldEntry *decided_tail;
	int n_decided;            /* length of that list */
	Grant *grants;
	Block *blocks;
} reg = { PTHREAD_MUTEX_INITIALIZER, 1, 1, NULL, NULL, NULL, NULL, 0, NULL, NULL };

/* ---- small helpers ---------------------------------------------------------------- */

static char *dup_or_null(const char *s, bool *ok)
{
	char *d;

	if (s == NULL)
		return NULL;
	d = strdup(s);
	if (d == NULL)
		*ok = false;
	return d;
}

static void free_strv(char **v, int n)
{
	for (int i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static char **dup_strv(const char *const *v, int n, bool *ok)
{
	char **d;

	if (n <= 0)
		return NULL;
	d = calloc((size_t)n, sizeof(char *));
	if (d == NULL) {
		*ok = false;
		return NULL;
	}
	for (int i = 0; i < n; i++)
		d[i] = dup_or_null(v[i] != NULL ? v[i] : "", ok);
	return d;
}

/* "a,b,c" from a string vector (malloc'd, "" for none), or NULL without memory. */
static char *join_strv(char *const *v, int n)
{
	size_t len = 1, at = 0;
	char *out;

	for (int i = 0; i < n; i++)
		len += strlen(v[i]) + 1;
	out = malloc(len);
	if (out == NULL)
		return NULL;
	for (int i = 0; i < n; i++) {
		size_t l = strlen(v[i]);

		if (i > 0)
			out[at++] = ',';
		memcpy(out + at, v[i], l);
		at += l;
	}
	out[at] = '\0';
	return out;
}

static bool str_eq_null(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

const char *approval_state_name(HoldState st)
{
	switch (st) {
	case HOLD_WAITING: return "waiting";
	case HOLD_APPROVED: return "approved";
	case HOLD_DENIED: return "denied";
	case HOLD_TIMEOUT: return "timed out";
	case HOLD_CANCELED: return "canceled";
	}
	return "?";
}

/* ---- entries ----------------------------------------------------------------------- */

static void entry_free(HeldEntry *e)
{
	free(e->subject);
	free(e->database);
	free(e->sql);
	free(e->rule);
	free(e->rule_text);
	free_strv(e->tables, e->n_tables);
	free(e->no_grant);
	free(e->decided_by);
	free(e->reason);
	free(e);
}

static HeldEntry *entry_new(const HoldSpec *spec)
{
	HeldEntry *e = calloc(1, sizeof(HeldEntry));
	bool ok = true;

	if (e == NULL)
		return NULL;
	e->session_id = spec->session_id;
	e->subject = dup_or_null(spec->subject != NULL ? spec->subject : "", &ok);
	e->database = dup_or_null(spec->database != NULL ? spec->database : "", &ok);
	e->sql = dup_or_null(spec->sql != NULL ? spec->sql : "", &ok);
	e->rule = dup_or_null(spec->rule, &ok);
	e->rule_text = dup_or_null(spec->rule_text, &ok);
	e->tables = dup_strv(spec->tables, spec->n_tables, &ok);
	e->n_tables = e->tables != NULL ? spec->n_tables : 0;
	e->no_grant = dup_or_null(spec->no_grant, &ok);
	e->shape = spec->shape;
	if (!ok) {
		entry_free(e);
		return NULL;
	}
	e->held_at = time(NULL);
	e->state = HOLD_WAITING;
	return e;
}

static HeldEntry *entry_find(uint64_t id)
{
	for (HeldEntry *e = reg.waiting; e != NULL; e = e->next)
		if (e->id == id)
			return e;
	for (HeldEntry *e = reg.decided; e != NULL; e = e->next)
		if (e->id == id)
			return e;
	return NULL;
}

static void append(HeldEntry **head, HeldEntry **tail, HeldEntry *e)
{
	e->next = NULL;
	if (*tail != NULL)
		(*tail)->next = e;
	else
		*head = e;
	*tail = e;
}

/* Moves a waiting entry that was just decided to the end of the decided list. */
static void move_to_decided(HeldEntry *e)
{
	HeldEntry *prev = NULL;

	for (HeldEntry *p = reg.waiting; p != e; p = p->next)
		prev = p;
	if (prev != NULL)
		prev->next = e->next;
	else
		reg.waiting = e->next;
	if (reg.waiting_tail == e)
		reg.waiting_tail = prev;
	append(&reg.decided, &reg.decided_tail, e);
	reg.n_decided++;
}

/* Forgets the entries decided longest ago, beyond the number kept. */
static void prune_decided(void)
{
	while (reg.n_decided > APPROVAL_KEEP_DECIDED) {
		HeldEntry *e = reg.decided;

		reg.decided = e->next;
		if (reg.decided == NULL)
			reg.decided_tail = NULL;
		reg.n_decided--;
		entry_free(e);
	}
}

/* The entry's row in the audit log's approvals table (queued; written by the audit writer). */
static void audit_entry(const HeldEntry *e)
{
	static const char *const decisions[] = {
		[HOLD_WAITING] = NULL, [HOLD_APPROVED] = "approve", [HOLD_DENIED] = "deny",
		[HOLD_TIMEOUT] = "timeout", [HOLD_CANCELED] = "cancel",
	};
	AuditApproval a;

	if (!audit_enabled())
		return;
	memset(&a, 0, sizeof(a));
	a.approval_id = e->id;
	a.session_id = e->session_id;
	a.subject = e->subject;
	a.sql = e->sql;
	a.rule = e->rule;
	a.requested_us = (int64_t)e->held_at * 1000000;
	if (e->state != HOLD_WAITING) {
		a.decided_us = (int64_t)(e->decided_at != 0 ? e->decided_at : time(NULL)) * 1000000;
		a.decided_by = e->decided_by;
		a.decision = decisions[e->state];
		a.reason = e->reason;
		a.grant_until_us = (int64_t)e->grant_until * 1000000;
	}
	audit_approval(&a);
}

/*
 * Every outcome of a held statement passes here, under the lock, once: a
 * decision, a timeout or a cancellation; it goes to the audit log as the
 * held statement did. The entry stays valid (it is the newest decided one,
 * never pruned here).
 */
static void record_outcome(HeldEntry *e)
{
	move_to_decided(e);
	audit_entry(e);
	if (e->state == HOLD_APPROVED || e->state == HOLD_DENIED)
		log_write(LL_INFO, NULL, "held statement %llu of agent '%s' (session %llu) %s by '%s'%s%s%s",
			  (unsigned long long)e->id, e->subject, (unsigned long long)e->session_id,
			  approval_state_name(e->state), e->decided_by, e->reason ? ": " : "",
			  e->reason ? e->reason : "", e->grant_until ? " with a grant" : "");
	else
		log_write(LL_INFO, NULL, "held statement %llu of agent '%s' (session %llu) %s",
			  (unsigned long long)e->id, e->subject, (unsigned long long)e->session_id,
			  approval_state_name(e->state));
	prune_decided();
}

void approval_set_first_id(uint64_t id)
{
	pthread_mutex_lock(&reg.lock);
	if (id > reg.next_id)
		reg.next_id = id;
	pthread_mutex_unlock(&reg.lock);
}

static void grant_free(Grant *g)
{
	free(g->subject);
	free(g->rule);
	free(g->rule_text);
	free(g->granted_by);
	free_strv(g->tables, g->n_tables);
	free(g);
}

void approval_shutdown(void)
{
	pthread_mutex_lock(&reg.lock);
	for (HeldEntry *e = reg.waiting, *next; e != NULL; e = next) {
		next = e->next;
		entry_free(e);
	}
	for (HeldEntry *e = reg.decided, *next; e != NULL; e = next) {
		next = e->next;
		entry_free(e);
	}
	reg.waiting = reg.waiting_tail = reg.decided = reg.decided_tail = NULL;
	reg.n_decided = 0;
	while (reg.grants != NULL) {
		Grant *g = reg.grants;

		reg.grants = g->next;
		grant_free(g);
	}
	while (reg.blocks != NULL) {
		Block *b = reg.blocks;

		reg.blocks = b->next;
		free(b->subject);
		free(b);
	}
	pthread_mutex_unlock(&reg.lock);
}

uint64_t approval_submit(const HoldSpec *spec, struct event *wake)
{
	HeldEntry *e = entry_new(spec);
	uint64_t id;

	if (e == NULL)
		return 0;
	e->wake = wake;
	pthread_mutex_lock(&reg.lock);
	id = e->id = reg.next_id++;
	append(&reg.waiting, &reg.waiting_tail, e);
	audit_entry(e);
	pthread_mutex_unlock(&reg.lock);
	log_write(LL_INFO, NULL, "statement of agent '%s' (session %llu) held for approval: id %llu",
		  spec->subject != NULL ? spec->subject : "", (unsigned long long)spec->session_id,
		  (unsigned long long)id);
	return id;
}

HoldState approval_state(uint64_t id, char **reason)
{
	HoldState st = HOLD_CANCELED;
	HeldEntry *e;

	if (reason != NULL)
		*reason = NULL;
	pthread_mutex_lock(&reg.lock);
	e = entry_find(id);
	if (e != NULL) {
		st = e->state;
		if (reason != NULL && e->reason != NULL)
			*reason = strdup(e->reason);
	}
	pthread_mutex_unlock(&reg.lock);
	return st;
}

HoldState approval_withdraw(uint64_t id, HoldState why)
{
	HoldState st = HOLD_CANCELED;
	HeldEntry *e;

	if (why != HOLD_TIMEOUT)
		why = HOLD_CANCELED;
	pthread_mutex_lock(&reg.lock);
	e = entry_find(id);
	if (e != NULL) {
		e->wake = NULL;
		if (e->state == HOLD_WAITING) {
			e->state = why;
			e->decided_at = time(NULL);
			record_outcome(e);
		}
		st = e->state;
	}
	pthread_mutex_unlock(&reg.lock);
	return st;
}

/* ---- decisions --------------------------------------------------------------------- */

/* A grant for the statement of `e` (not linked yet), or NULL without memory. */
static Grant *grant_new(const HeldEntry *e, const char *approver, time_t until)
{
	Grant *g = calloc(1, sizeof(Grant));
	bool ok = true;

	if (g == NULL)
		return NULL;
	g->subject = dup_or_null(e->subject, &ok);
	g->rule = dup_or_null(e->rule, &ok);
	g->rule_text = dup_or_null(e->rule_text, &ok);
	g->granted_by = dup_or_null(approver, &ok);
	g->tables = dup_strv((const char *const *)e->tables, e->n_tables, &ok);
	g->n_tables = g->tables != NULL ? e->n_tables : 0;
	if (!ok) {
		grant_free(g);
		return NULL;
	}
	g->approval_id = e->id;
	g->shape = e->n_tables == 0 ? e->shape : 0;
	g->until = until;
	return g;
}

/* True (with the reason in err) when `approver` may not decide `e` now. */
static bool decide_refused(const HeldEntry *e, uint64_t id, bool approve, const char *approver, char *err,
			   size_t errlen)
{
	if (e == NULL) {
		snprintf(err, errlen, "no held statement %llu", (unsigned long long)id);
		return true;
	}
	if (e->state != HOLD_WAITING) {
		snprintf(err, errlen, "statement %llu %s %s", (unsigned long long)id,
			 e->state == HOLD_TIMEOUT ? "already" : "was already", approval_state_name(e->state));
		return true;
	}
	if (approve && approver != NULL && strcmp(approver, e->subject) == 0) {
		snprintf(err, errlen, "approvers cannot approve their own statements");
		return true;
	}
	return false;
}

bool approval_decide(uint64_t id, bool approve, const char *approver, const char *reason,
		     uint64_t grant_seconds, char *err, size_t errlen)
{
	char *by = strdup(approver != NULL ? approver : ""), *why = NULL;
	Grant *g = NULL;
	HeldEntry *e;
	time_t now = time(NULL);

	if (reason != NULL && !approve)
		why = strdup(reason);
	if (grant_seconds > APPROVAL_MAX_GRANT_SECONDS)
		grant_seconds = APPROVAL_MAX_GRANT_SECONDS;
	pthread_mutex_lock(&reg.lock);
	e = entry_find(id);
	if (decide_refused(e, id, approve, approver, err, errlen))
		goto fail;
	if (approve && grant_seconds > 0 && e->no_grant == NULL &&
	    (g = grant_new(e, by, now + (time_t)grant_seconds)) == NULL)
		goto oom;
	if (by == NULL || (reason != NULL && !approve && why == NULL))
		goto oom;
	e->state = approve ? HOLD_APPROVED : HOLD_DENIED;
	e->decided_by = by;
	e->reason = why;
	e->decided_at = now;
	if (g != NULL) {
		g->id = reg.next_grant_id++;
		g->next = reg.grants;
		reg.grants = g;
		e->grant_until = g->until;
	}
	if (e->wake != NULL)
		event_active(e->wake, 0, 0);
	e->wake = NULL;
	record_outcome(e);
	pthread_mutex_unlock(&reg.lock);
	return true;
oom:
	snprintf(err, errlen, "out of memory");
fail:
	pthread_mutex_unlock(&reg.lock);
	if (g != NULL)
		grant_free(g);
	free(by);
	free(why);
	return false;
}

/* ---- copies for the console --------------------------------------------------------- */

static bool held_copy(const HeldEntry *e, HeldInfo *h)
{
	bool ok = true;

	memset(h, 0, sizeof(*h));
	h->id = e->id;
	h->session_id = e->session_id;
	h->subject = dup_or_null(e->subject, &ok);
	h->database = dup_or_null(e->database, &ok);
	h->sql = dup_or_null(e->sql, &ok);
	h->rule = dup_or_null(e->rule, &ok);
	h->rule_text = dup_or_null(e->rule_text, &ok);
	h->decided_by = dup_or_null(e->decided_by, &ok);
	h->reason = dup_or_null(e->reason, &ok);
	h->tables = join_strv(e->tables, e->n_tables);
	h->no_grant = dup_or_null(e->no_grant, &ok);
	h->held_at = e->held_at;
	h->state = e->state;
	h->decided_at = e->decided_at;
	h->grant_until = e->grant_until;
	return ok && h->tables != NULL;
}

static void held_clear(HeldInfo *h)
{
	free(h->subject);
	free(h->database);
	free(h->sql);
	free(h->rule);
	free(h->rule_text);
	free(h->decided_by);
	free(h->reason);
	free(h->tables);
	free(h->no_grant);
}

void approval_free_held(HeldInfo *list, int n)
{
	if (list == NULL)
		return;
	for (int i = 0; i < n; i++)
		held_clear(&list[i]);
	free(list);
}

int approval_get(uint64_t id, HeldInfo **out)
{
	HeldInfo *h = calloc(1, sizeof(HeldInfo));
	HeldEntry *e;
	int rc = 0;

	*out = NULL;
	if (h == NULL)
		return -1;
	pthread_mutex_lock(&reg.lock);
	e = entry_find(id);
	if (e != NULL)
		rc = held_copy(e, h) ? 1 : -1;
	pthread_mutex_unlock(&reg.lock);
	if (rc != 1) {
		approval_free_held(h, e != NULL ? 1 : 0);
		return rc;
	}
	*out = h;
	return 1;
}

int approval_list_held(HeldInfo **out)
{
	HeldInfo *list = NULL;
	int n = 0, cap = 0;
	bool ok = true;

	*out = NULL;
	pthread_mutex_lock(&reg.lock);
	for (HeldEntry *e = reg.waiting; e != NULL; e = e->next)
		cap++;
	if (cap > 0)
		list = calloc((size_t)cap, sizeof(HeldInfo));
	if (cap > 0 && list == NULL)
		ok = false;
	for (HeldEntry *e = reg.waiting; ok && e != NULL; e = e->next)
		ok = held_copy(e, &list[n++]);
	pthread_mutex_unlock(&reg.lock);
	if (!ok) {
		approval_free_held(list, n);
		return -1;
	}
	*out = list;
	return n;
}

/* ---- grants ------------------------------------------------------------------------- */

/* Drops expired grants. */
static void prune_grants(time_t now)
{
	Grant **pp = &reg.grants;

	while (*pp != NULL) {
		Grant *g = *pp;

		if (g->until <= now) {
			*pp = g->next;
			grant_free(g);
		} else {
			pp = &g->next;
		}
	}
}

static bool grant_has_table(const Grant *g, const char *t)
{
	for (int i = 0; i < g->n_tables; i++)
		if (strcmp(g->tables[i], t) == 0)
			return true;
	return false;
}

static bool grant_matches(const Grant *g, const char *subject, const char *rule, const char *rule_text,
			  int n_tables, const char *const *tables, uint64_t shape)
{
	if (strcmp(g->subject, subject) != 0 || !str_eq_null(g->rule, rule) || !str_eq_null(g->rule_text, rule_text))
		return false;
	if (n_tables == 0) /* the same statement again, nothing else that touches no table */
		return g->n_tables == 0 && shape != 0 && g->shape == shape;
	for (int i = 0; i < n_tables; i++)
		if (tables[i] == NULL || !grant_has_table(g, tables[i]))
			return false;
	return true;
}

bool approval_grant_covers(const char *subject, const char *rule, const char *rule_text, int n_tables,
			   const char *const *tables, uint64_t shape, uint64_t *grant_id)
{
	bool found = false;

	if (subject == NULL)
		subject = "";
	pthread_mutex_lock(&reg.lock);
	prune_grants(time(NULL));
	for (Grant *g = reg.grants; g != NULL && !found; g = g->next) {
		if (!grant_matches(g, subject, rule, rule_text, n_tables, tables, shape))
			continue;
		found = true;
		if (grant_id != NULL)
			*grant_id = g->id;
	}
	pthread_mutex_unlock(&reg.lock);
	return found;
}

static bool grant_copy(const Grant *g, GrantInfo *gi)
{
	bool ok = true;

	memset(gi, 0, sizeof(*gi));
	gi->id = g->id;
	gi->approval_id = g->approval_id;
	gi->subject = dup_or_null(g->subject, &ok);
	gi->rule = dup_or_null(g->rule, &ok);
	gi->granted_by = dup_or_null(g->granted_by, &ok);
	gi->tables = join_strv(g->tables, g->n_tables);
	gi->until = g->until;
	return ok && gi->tables != NULL;
}

void approval_free_grants(GrantInfo *list, int n)
{
	if (list == NULL)
		return;
	for (int i = 0; i < n; i++) {
		free(list[i].subject);
		free(list[i].rule);
		free(list[i].tables);
		free(list[i].granted_by);
	}
	free(list);
}

/* Oldest first: grants are linked newest first, so fill the array from its end. */
int approval_list_grants(GrantInfo **out)
{
	GrantInfo *list = NULL;
	int n = 0, filled = 0;
	bool ok = true;

	*out = NULL;
	pthread_mutex_lock(&reg.lock);
	prune_grants(time(NULL));
	for (Grant *g = reg.grants; g != NULL; g = g->next)
		n++;
	if (n > 0 && (list = calloc((size_t)n, sizeof(GrantInfo))) == NULL)
		ok = false;
	for (Grant *g = reg.grants; ok && g != NULL; g = g->next, filled++)
		ok = grant_copy(g, &list[n - 1 - filled]);
	pthread_mutex_unlock(&reg.lock);
	if (!ok) {
		approval_free_grants(list, n); /* calloc'd: unfilled entries are all NULL */
		return -1;
	}
	*out = list;
	return n;
}

bool approval_revoke_grant(uint64_t grant_id)
{
	bool found = false;

	pthread_mutex_lock(&reg.lock);
	prune_grants(time(NULL));
	for (Grant **pp = &reg.grants; *pp != NULL; pp = &(*pp)->next) {
		Grant *g = *pp;

		if (g->id != grant_id)
			continue;
		*pp = g->next;
		log_write(LL_INFO, NULL, "grant %llu for agent '%s' revoked", (unsigned long long)g->id, g->subject);
		grant_free(g);
		found = true;
		break;
	}
	pthread_mutex_unlock(&reg.lock);
	return found;
}

/* ---- blocked agents ------------------------------------------------------------------ */

static void prune_blocks(time_t now)
{
	Block **pp = &reg.blocks;

	while (*pp != NULL) {
		Block *b = *pp;

		if (b->until != 0 && b->until <= now) {
			*pp = b->next;
			free(b->subject);
			free(b);
		} else {
			pp = &b->next;
		}
	}
}

static Block *block_find(const char *subject)
{
	for (Block *b = reg.blocks; b != NULL; b = b->next)
		if (strcmp(b->subject, subject) == 0)
			return b;
	return NULL;
}

bool approval_block_agent(const char *subject, time_t until)
{
	Block *b, *fresh = calloc(1, sizeof(Block));

	if (fresh != NULL && (fresh->subject = strdup(subject)) == NULL) {
		free(fresh);
		fresh = NULL;
	}
	pthread_mutex_lock(&reg.lock);
	prune_blocks(time(NULL));
	b = block_find(subject);
	if (b == NULL && fresh != NULL) {
		b = fresh;
		b->next = reg.blocks;
		reg.blocks = b;
		fresh = NULL;
	}
	if (b != NULL)
		b->until = until;
	pthread_mutex_unlock(&reg.lock);
	if (fresh != NULL) {
		free(fresh->subject);
		free(fresh);
	}
	return b != NULL;
}

bool approval_unblock_agent(const char *subject)
{
	bool found = false;

	pthread_mutex_lock(&reg.lock);
	prune_blocks(time(NULL));
	for (Block **pp = &reg.blocks; *pp != NULL; pp = &(*pp)->next) {
		Block *b = *pp;

		if (strcmp(b->subject, subject) != 0)
			continue;
		*pp = b->next;
		free(b->subject);
		free(b);
		found = true;
		break;
	}
	pthread_mutex_unlock(&reg.lock);
	return found;
}

bool approval_agent_blocked(const char *subject)
{
	bool blocked;

	if (subject == NULL || subject[0] == '\0')
		return false;
	pthread_mutex_lock(&reg.lock);
	prune_blocks(time(NULL));
	blocked = block_find(subject) != NULL;
	pthread_mutex_unlock(&reg.lock);
	return blocked;
}

void approval_free_blocked(BlockedInfo *list, int n)
{
	if (list == NULL)
		return;
	for (int i = 0; i < n; i++)
		free(list[i].subject);
	free(list);
}

int approval_list_blocked(BlockedInfo **out)
{
	BlockedInfo *list = NULL;
	int n = 0, i = 0;
	bool ok = true;

	*out = NULL;
	pthread_mutex_lock(&reg.lock);
	prune_blocks(time(NULL));
	for (Block *b = reg.blocks; b != NULL; b = b->next)
		n++;
	if (n > 0 && (list = calloc((size_t)n, sizeof(BlockedInfo))) == NULL)
		ok = false;
	for (Block *b = reg.blocks; ok && b != NULL; b = b->next, i++) {
		list[i].until = b->until;
		ok = (list[i].subject = strdup(b->subject)) != NULL;
	}
	pthread_mutex_unlock(&reg.lock);
	if (!ok) {
		approval_free_blocked(list, n);
		return -1;
	}
	*out = list;
	return n;
}
