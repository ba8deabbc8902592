/* SPDX-License-Identifier: MIT */
/*
 * The audit log's front and its writer thread. The calls the event loops
 * make copy the event into one allocation and append it to the queue under
 * one mutex: they never touch SQLite and never wait on disk. The queue is
 * bounded for statement rows in async mode (AUDIT_FULL, then a `room`
 * wake-up; strict-mode rows each hold their session until written);
 * outcomes, session ends and approvals always go in (the part of the queue
 * past the bound is the overflow), so nothing is dropped while the process
 * lives. The overflow is bounded by what was admitted: an outcome or an end
 * per statement row or session, an approval's rows per held statement,
 * and new sessions are refused once the queue holds AUDIT_EVENTS_PER_ROW
 * times the bound. This file owns the queue, the strict-mode acknowledgements
 * (a Waiter per statement row, woken with event_active() under the mutex,
 * so audit_forget() can promise an event is never woken after it returns),
 * the failure state that strict mode refuses statements with, and the
 * writer thread: it takes everything queued, has audit_db.c write it in one
 * transaction, then acknowledges; on a failure it keeps the rows, says why,
 * and tries again every second. In strict mode that transaction is the
 * durable pass (starts into pending, fsync'd) and the outcomes wait on the
 * lazy list for a lazy pass (audit_int.h, AuditPass). Retention runs on the
 * writer too.
 */
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit_int.h"
#include "pgveil/log.h"

#define AUDIT_QUEUE_MAX 65536u              /* unwritten statement rows before AUDIT_FULL (async) */
#define AUDIT_EVENTS_PER_ROW 4u             /* logins are refused at this times AUDIT_QUEUE_MAX events */
#define AUDIT_ASYNC_BATCH 1024u             /* async: write at once when this many wait */
#define AUDIT_TICK_US 100000u               /* async: at most this long before a queued row is written */
#define AUDIT_STRICT_TICK_US 10000u         /* strict: the same for outcomes (starts are written at once) */
#define AUDIT_LAZY_ROWS 256u                /* strict: a lazy pass when this many outcomes wait (else a tick) */
#define AUDIT_RETRY_US 1000000u             /* after a failure, try again after this */
#define AUDIT_PRUNE_US (3600ull * 1000000u) /* retention runs this often */
#define AUDIT_PRUNE_RETRY_US (60ull * 1000000u)
#define AUDIT_PRUNE_CHUNK 2000u /* rows retention removes in one transaction: writes go between two */
#define AUDIT_STOP_RETRIES 3 /* failed writes at shutdown before the rest is given up */

typedef enum { W_PENDING, W_OK, W_FAILED } WaitState;

/* A strict statement waiting for its row to be committed. */
typedef struct Waiter {
	struct Waiter *prev, *next; /* the waiters list, in id order */
	uint64_t id;
	struct event *ev; /* the caller's `durable`; activated once, when state leaves W_PENDING */
	WaitState state;
} Waiter;

/* A session waiting for room in the queue. */
typedef struct Room {
	struct Room *next;
	struct event *ev;
} Room;

static struct {
	pthread_mutex_t lock;
	pthread_cond_t wake;    /* the writer sleeps on it */
	pthread_cond_t done;    /* audit_test_exec() sleeps on it */
	bool running;           /* started and not stopped (read without the lock: atomic) */
	bool stopping;          /* audit_stop() asked the writer to drain and end */
	int mode;               /* AuditMode (read without the lock: atomic) */
	uint64_t retention;     /* seconds, 0 = off */
	uint64_t next_prune_us; /* monotonic */
	size_t prune_chunk;     /* rows a retention transaction removes */
	bool pruned_last;       /* the last thing done was a retention transaction: a due write goes next */
	AuditDb db;             /* the writer's; opened by audit_start() */
	pthread_t thread;
	AuditItem *head, *tail; /* queued events, oldest first */
	AuditItem *def_head, *def_tail; /* strict: outcomes a durable pass left for the next lazy pass */
	uint64_t n_def;
	uint64_t last_lazy_us;
	uint64_t n_queued;      /* in the list */
	uint64_t n_items;       /* in the list or being written */
	uint64_t n_starts;      /* statement rows in the list or being written */
	size_t queue_max;
	bool urgent;      /* strict: a statement waits for its row */
	bool idle;        /* the writer sleeps with nothing to write: the next event wakes it */
	uint64_t next_id; /* next queries id */
	Waiter *waiters, *waiters_tail;
	Waiter **by_event;      /* the waiters again, by their event: open addressing, linear probing */
	size_t by_event_cap, n_waiters;
	Room *rooms;
	bool failed;     /* the last write failed */
	char error[512]; /* why */
	uint64_t retry_at_us;
	int stop_failures;
	uint64_t last_write_us;
	uint64_t written, commits;
	const char *test_sql; /* audit_test_exec() */
	bool test_done, test_ok;
	char test_err[256];
} au = {.lock = PTHREAD_MUTEX_INITIALIZER, .queue_max = AUDIT_QUEUE_MAX, .prune_chunk = AUDIT_PRUNE_CHUNK};

static const char *const mode_names[] = {"async", "strict"};

/* ---- items -------------------------------------------------------------------------------- */

static size_t slen(const char *s)
{
	return s != NULL ? strlen(s) + 1 : 0;
}

/* Copies s to *p (the item's string area) and moves *p past it; NULL stays NULL. */
static const char *spack(char **p, const char *s)
{
	size_t n;
	char *r = *p;

	if (s == NULL)
		return NULL;
	n = strlen(s) + 1;
	memcpy(r, s, n);
	*p += n;
	return r;
}

static AuditItem *item_new(AuditItemKind kind, size_t strings, char **area)
{
	AuditItem *it = malloc(sizeof(AuditItem) + strings);

	if (it == NULL)
		return NULL;
	memset(it, 0, sizeof(*it));
	it->kind = kind;
	*area = (char *)(it + 1);
	return it;
}

static AuditItem *item_session(const AuditSession *s)
{
	char *p;
	AuditItem *it = item_new(AI_SESSION_START,
	                         slen(s->subject) + slen(s->groups) + slen(s->client_addr) +
	                             slen(s->database) + slen(s->backend_user),
	                         &p);

	if (it == NULL)
		return NULL;
	it->u.session = *s;
	it->u.session.subject = spack(&p, s->subject);
	it->u.session.groups = spack(&p, s->groups);
	it->u.session.client_addr = spack(&p, s->client_addr);
	it->u.session.database = spack(&p, s->database);
	it->u.session.backend_user = spack(&p, s->backend_user);
	return it;
}

static AuditItem *item_session_end(uint64_t session_id, int64_t ended_us, const char *reason)
{
	char *p;
	AuditItem *it = item_new(AI_SESSION_END, slen(reason), &p);

	if (it == NULL)
		return NULL;
	it->u.end.session_id = session_id;
	it->u.end.ended_us = ended_us;
	it->u.end.reason = spack(&p, reason);
	return it;
}

static AuditItem *item_query(const AuditQuery *q)
{
	char *p;
	AuditItem *it = item_new(AI_QUERY_START,
	                         slen(q->subject) + slen(q->database) + slen(q->sql) + slen(q->fingerprint) +
	                             slen(q->classes) + slen(q->decision) + slen(q->rule),
	                         &p);

	if (it == NULL)
		return NULL;
	it->u.query = *q;
	it->u.query.subject = spack(&p, q->subject);
	it->u.query.database = spack(&p, q->database);
	it->u.query.sql = spack(&p, q->sql);
	it->u.query.fingerprint = spack(&p, q->fingerprint);
	it->u.query.classes = spack(&p, q->classes);
	it->u.query.decision = spack(&p, q->decision);
	it->u.query.rule = spack(&p, q->rule);
	return it;
}

static AuditItem *item_outcome(uint64_t id, const AuditOutcome *o)
{
	char *p;
	AuditItem *it =
	    item_new(AI_QUERY_FINISH, slen(o->sqlstate) + slen(o->error) + slen(o->masked_columns), &p);

	if (it == NULL)
		return NULL;
	it->id = id;
	it->u.outcome = *o;
	it->u.outcome.sqlstate = spack(&p, o->sqlstate);
	it->u.outcome.error = spack(&p, o->error);
	it->u.outcome.masked_columns = spack(&p, o->masked_columns);
	return it;
}

static AuditItem *item_approval(const AuditApproval *a)
{
	char *p;
	AuditItem *it = item_new(AI_APPROVAL,
	                         slen(a->subject) + slen(a->sql) + slen(a->rule) + slen(a->decided_by) +
	                             slen(a->decision) + slen(a->reason),
	                         &p);

	if (it == NULL)
		return NULL;
	it->u.approval = *a;
	it->u.approval.subject = spack(&p, a->subject);
	it->u.approval.sql = spack(&p, a->sql);
	it->u.approval.rule = spack(&p, a->rule);
	it->u.approval.decided_by = spack(&p, a->decided_by);
	it->u.approval.decision = spack(&p, a->decision);
	it->u.approval.reason = spack(&p, a->reason);
	return it;
}

static void items_free(AuditItem *it)
{
	while (it != NULL) {
		AuditItem *next = it->next;

		free(it);
		it = next;
	}
}

/* ---- the queue (under au.lock) -------------------------------------------------------------- */

/* Appends `it` to the list head..tail. */
static void list_append(AuditItem **head, AuditItem **tail, AuditItem *it)
{
	it->next = NULL;
	if (*tail != NULL)
		(*tail)->next = it;
	else
		*head = it;
	*tail = it;
}

static void queue_append_locked(AuditItem *it)
{
	list_append(&au.head, &au.tail, it);
	au.n_queued++;
	au.n_items++;
	if (it->kind == AI_QUERY_START)
		au.n_starts++;
	if (au.n_queued == AUDIT_ASYNC_BATCH || au.idle) { /* idle: it slept for up to a second, not a tick */
		au.idle = false;
		pthread_cond_signal(&au.wake);
	}
}

/* Queues an event that is never refused; `what` names it when there is no memory for it. */
static void enqueue(AuditItem *it, const char *what)
{
	if (it == NULL) {
		log_error("audit: out of memory: %s is not recorded", what);
		return;
	}
	pthread_mutex_lock(&au.lock);
	if (!au.running) {
		pthread_mutex_unlock(&au.lock);
		free(it);
		return;
	}
	queue_append_locked(it);
	pthread_mutex_unlock(&au.lock);
}

/* ---- strict-mode waiters --------------------------------------------------------------- */

static size_t event_slot(const struct event *ev, size_t cap)
{
	uint64_t x = (uint64_t)(uintptr_t)ev;

	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return (size_t)x & (cap - 1);
}

/* The waiter of `ev`, or NULL: one per event (query_queue_locked drops an older one). */
static Waiter *waiter_of_locked(const struct event *ev)
{
	if (au.by_event_cap == 0 || ev == NULL)
		return NULL;
	for (size_t i = event_slot(ev, au.by_event_cap);; i = (i + 1) & (au.by_event_cap - 1)) {
		if (au.by_event[i] == NULL)
			return NULL;
		if (au.by_event[i]->ev == ev)
			return au.by_event[i];
	}
}

static void by_event_put(Waiter **slots, size_t cap, Waiter *w)
{
	size_t i = event_slot(w->ev, cap);

	while (slots[i] != NULL)
		i = (i + 1) & (cap - 1);
	slots[i] = w;
}

/* Room in the event index for one more waiter (it stays at most half full); false without memory. */
static bool waiter_reserve_locked(void)
{
	size_t cap = au.by_event_cap != 0 ? au.by_event_cap * 2 : 64;
	Waiter **slots;

	if ((au.n_waiters + 1) * 2 <= au.by_event_cap)
		return true;
	if ((slots = calloc(cap, sizeof(*slots))) == NULL)
		return false;
	for (size_t i = 0; i < au.by_event_cap; i++)
		if (au.by_event[i] != NULL)
			by_event_put(slots, cap, au.by_event[i]);
	free(au.by_event);
	au.by_event = slots;
	au.by_event_cap = cap;
	return true;
}

/* Takes w out of the event index, moving back the entries after it that probed past its slot. */
static void by_event_remove(Waiter *w)
{
	size_t cap = au.by_event_cap, i = event_slot(w->ev, cap), j;

	while (au.by_event[i] != w)
		i = (i + 1) & (cap - 1);
	au.by_event[i] = NULL;
	for (j = (i + 1) & (cap - 1); au.by_event[j] != NULL; j = (j + 1) & (cap - 1)) {
		Waiter *m = au.by_event[j];
		size_t home = event_slot(m->ev, cap);

		/* m stays unless its home slot lies cyclically in (i, j] */
		if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
			au.by_event[i] = m;
			au.by_event[j] = NULL;
			i = j;
		}
	}
}

/* Appends w (its id the largest so far) after waiter_reserve_locked() made room for it. */
static void waiter_append_locked(Waiter *w)
{
	by_event_put(au.by_event, au.by_event_cap, w);
	au.n_waiters++;
	w->next = NULL;
	w->prev = au.waiters_tail;
	if (au.waiters_tail != NULL)
		au.waiters_tail->next = w;
	else
		au.waiters = w;
	au.waiters_tail = w;
}

static void waiter_remove_locked(Waiter *w)
{
	by_event_remove(w);
	au.n_waiters--;
	if (w->prev != NULL)
		w->prev->next = w->next;
	else
		au.waiters = w->next;
	if (w->next != NULL)
		w->next->prev = w->prev;
	else
		au.waiters_tail = w->prev;
	free(w);
}

/* Acknowledges the pending waiters of rows up to max_id (ids in order: they are at the front). */
static void waiters_resolve_locked(uint64_t max_id, bool ok)
{
	for (Waiter *w = au.waiters; w != NULL && w->id <= max_id; w = w->next) {
		if (w->state != W_PENDING)
			continue;
		w->state = ok ? W_OK : W_FAILED;
		if (w->ev != NULL)
			event_active(w->ev, 0, 0);
	}
}

/* The waiter of statement row `id` (if any) is told its row was not written. */
static void waiter_refuse_locked(uint64_t id)
{
	for (Waiter *w = au.waiters; w != NULL && w->id <= id; w = w->next)
		if (w->id == id && w->state == W_PENDING) {
			w->state = W_FAILED;
			if (w->ev != NULL)
				event_active(w->ev, 0, 0);
		}
}

/* Wakes the sessions waiting for room, once the queue is at most half full (or unbounded: strict). */
static void rooms_wake_locked(void)
{
	if (au.mode != AUDIT_STRICT && au.n_starts > au.queue_max / 2)
		return;
	while (au.rooms != NULL) {
		Room *r = au.rooms;

		au.rooms = r->next;
		event_active(r->ev, 0, 0);
		free(r);
	}
}

/*
 * Whether a statement row may be queued now; registers `room` for
 * AUDIT_FULL. Without `room` the row goes in past the bound (the rest of a
 * message whose first row went in).
 */
static AuditStatus admit_locked(struct event *room)
{
	Room *r;

	if (!au.running)
		return AUDIT_OFF;
	if (au.mode == AUDIT_STRICT)
		return au.failed ? AUDIT_FAILED : AUDIT_OK;
	if (au.n_starts < au.queue_max || room == NULL)
		return AUDIT_OK;
	for (r = au.rooms; r != NULL && r->ev != room; r = r->next)
		;
	if (r == NULL) {
		r = malloc(sizeof(*r));
		if (r == NULL) {
			log_error("audit: out of memory: a statement is refused for want of room in the "
			          "audit queue");
			return AUDIT_FAILED;
		}
		r->ev = room;
		r->next = au.rooms;
		au.rooms = r;
	}
	return AUDIT_FULL;
}

/* ---- the writer thread -------------------------------------------------------------------- */

/*
 * How long queued rows may wait for a write. Strict mode's outcomes wait
 * less: the durable pass that runs for them is cheap (they go to the lazy
 * list), and a finished statement shows in queries a few ms after it ends.
 */
static uint64_t tick_us(void)
{
	return au.mode == AUDIT_STRICT ? AUDIT_STRICT_TICK_US : AUDIT_TICK_US;
}

/* Whether a lazy pass has work: outcomes left by durable passes, or pending rows to move. */
static bool lazy_work(void)
{
	return au.def_head != NULL || auditdb_pending_left(&au.db);
}

static bool write_due(uint64_t now)
{
	if (au.head == NULL)
		return false;
	if (au.failed)
		return now >= au.retry_at_us;
	if (au.mode != AUDIT_STRICT && lazy_work())
		return false; /* what strict mode left goes first */
	if (au.stopping || au.urgent || au.n_queued >= AUDIT_ASYNC_BATCH)
		return true;
	return now >= au.last_write_us + tick_us();
}

/*
 * Strict mode writes outcomes (and moves pending rows) in lazy passes, a
 * tick or AUDIT_LAZY_ROWS outcomes apart; after a switch to async, or at
 * the end, at once.
 */
static bool lazy_due(uint64_t now)
{
	if (!lazy_work())
		return false;
	if (au.failed)
		return now >= au.retry_at_us;
	if (au.stopping || au.mode != AUDIT_STRICT)
		return au.head == NULL || au.mode != AUDIT_STRICT;
	return au.n_def >= AUDIT_LAZY_ROWS || now >= au.last_lazy_us + tick_us();
}

static bool prune_due(uint64_t now)
{
	return au.retention > 0 && !au.failed && !au.stopping && now >= au.next_prune_us;
}

/* Sleeps until the next thing that can become due, or a signal. */
static void wait_locked(uint64_t now)
{
	uint64_t until = now + 1000000u;
	struct timespec ts;

	if (au.head != NULL)
		until = au.failed ? au.retry_at_us : au.last_write_us + tick_us();
	if (lazy_work() && !au.failed && au.last_lazy_us + tick_us() < until)
		until = au.last_lazy_us + tick_us();
	if (au.retention > 0 && au.next_prune_us < until)
		until = au.next_prune_us;
	if (until <= now)
		until = now + 1000;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)((until - now) / 1000000u);
	ts.tv_nsec += (long)((until - now) % 1000000u) * 1000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	au.idle = au.head == NULL && !lazy_work();
	pthread_cond_timedwait(&au.wake, &au.lock, &ts);
	au.idle = false;
}

static void batch_written_locked(uint64_t n, uint64_t starts, uint64_t max_id)
{
	au.n_items -= n;
	au.n_starts -= starts;
	au.written += n;
	au.commits++;
	if (au.failed)
		log_info("audit: audit_db %s is written again", au.db.path);
	au.failed = false;
	au.stop_failures = 0;
	waiters_resolve_locked(max_id, true);
	rooms_wake_locked();
}

/* Puts the batch back at the front of the queue (or of the lazy list) and says why it failed. */
static void batch_failed_locked(AuditItem *batch, AuditItem *last, uint64_t n, bool lazy, const char *err)
{
	if (!au.failed || strcmp(au.error, err) != 0)
		log_error(
		    "audit: %s; %s", err,
		    au.mode == AUDIT_STRICT
		        ? "statements are refused until the audit log can be written (tried every second)"
		        : "rows are kept in memory and written when the audit log can be written again");
	au.failed = true;
	snprintf(au.error, sizeof(au.error), "%s", err);
	au.retry_at_us = pgv_now_us() + AUDIT_RETRY_US;
	if (au.stopping)
		au.stop_failures++;
	waiters_resolve_locked(UINT64_MAX, false);
	if (batch == NULL)
		return;
	if (lazy) {
		last->next = au.def_head;
		au.def_head = batch;
		if (au.def_tail == NULL)
			au.def_tail = last;
		au.n_def += n;
		return;
	}
	last->next = au.head;
	au.head = batch;
	if (au.tail == NULL)
		au.tail = last;
	au.n_queued += n;
}

/*
 * After a durable pass: the waiters of starts whose row SQLite refused are
 * told so (before the others are acknowledged: such a statement must not
 * run); its outcomes move to the lazy list, in order; the rest of the batch
 * is returned (to be freed). *kept gets how many moved.
 */
static AuditItem *keep_outcomes_locked(AuditItem *batch, uint64_t *kept)
{
	AuditItem *done = NULL, **dp = &done, *next;

	*kept = 0;
	for (AuditItem *it = batch; it != NULL; it = next) {
		next = it->next;
		it->next = NULL;
		if (it->kind == AI_QUERY_START && it->refused)
			waiter_refuse_locked(it->id);
		if (it->kind != AI_QUERY_FINISH) {
			*dp = it;
			dp = &it->next;
			continue;
		}
		list_append(&au.def_head, &au.def_tail, it);
		au.n_def++;
		(*kept)++;
	}
	return done;
}

/*
 * Takes up to AUDIT_BATCH_MAX queued events, writes them in one transaction
 * (strict: a durable pass, whose outcomes wait for a lazy pass), acknowledges.
 */
static void write_batch_locked(void)
{
	AuditItem *batch = au.head, *last = NULL, *it = au.head;
	uint64_t n = 0, starts = 0, max_id = 0, kept = 0;
	bool strict = au.mode == AUDIT_STRICT;
	char err[512];
	bool ok;

	if (au.n_queued <= AUDIT_BATCH_MAX) { /* all of it, without walking it under the lock */
		last = au.tail;
		n = au.n_queued;
		it = NULL;
	} else {
		while (it != NULL && n < AUDIT_BATCH_MAX) {
			last = it;
			it = it->next;
			n++;
		}
	}
	au.head = it;
	if (it == NULL) {
		au.tail = NULL;
		au.urgent = false;
	}
	last->next = NULL;
	au.n_queued -= n;
	pthread_mutex_unlock(&au.lock);
	for (it = batch; it != NULL; it = it->next)
		if (it->kind == AI_QUERY_START) {
			starts++;
			max_id = it->id;
		}
	ok = auditdb_write(&au.db, batch, strict ? AUDITDB_DURABLE : AUDITDB_LAZY, err, sizeof(err));
	pthread_mutex_lock(&au.lock);
	au.last_write_us = pgv_now_us();
	if (!ok) {
		batch_failed_locked(batch, last, n, false, err);
		return;
	}
	if (strict)
		batch = keep_outcomes_locked(batch, &kept);
	batch_written_locked(n - kept, starts, max_id);
	pthread_mutex_unlock(&au.lock);
	items_free(batch);
	pthread_mutex_lock(&au.lock);
}

/* Writes up to AUDIT_BATCH_MAX outcomes of the lazy list, and moves pending rows (doc/audit.md). */
static void write_lazy_locked(void)
{
	AuditItem *batch = au.def_head, *last = NULL, *it = au.def_head;
	AuditPass pass = au.stopping && au.head == NULL ? AUDITDB_LAST : AUDITDB_LAZY;
	uint64_t n = 0;
	char err[512];
	bool ok;

	while (it != NULL && n < AUDIT_BATCH_MAX) {
		last = it;
		it = it->next;
		n++;
	}
	if (it != NULL)
		pass = AUDITDB_LAZY;
	au.def_head = it;
	if (it == NULL)
		au.def_tail = NULL;
	if (last != NULL)
		last->next = NULL;
	au.n_def -= n;
	pthread_mutex_unlock(&au.lock);
	ok = auditdb_write(&au.db, batch, pass, err, sizeof(err));
	pthread_mutex_lock(&au.lock);
	au.last_lazy_us = pgv_now_us();
	if (!ok) {
		batch_failed_locked(batch, last, n, true, err);
		return;
	}
	batch_written_locked(n, 0, 0);
	pthread_mutex_unlock(&au.lock);
	items_free(batch);
	pthread_mutex_lock(&au.lock);
}

static void prune_locked(uint64_t now)
{
	uint64_t retention = au.retention, max_id = au.next_id - 1;
	size_t chunk = au.prune_chunk;
	char err[512];
	bool ok, more = false;

	au.next_prune_us = now + AUDIT_PRUNE_US;
	pthread_mutex_unlock(&au.lock);
	ok = auditdb_prune(&au.db, retention, pgv_wall_us(), max_id, chunk, &more, err, sizeof(err));
	if (!ok)
		log_error("audit: retention: %s (tried again in a minute)", err);
	pthread_mutex_lock(&au.lock);
	au.pruned_last = true;
	if (!ok)
		au.next_prune_us = pgv_now_us() + AUDIT_PRUNE_RETRY_US;
	else if (more)
		au.next_prune_us = 0; /* the next chunk, once what is due meanwhile is written */
}

/* Work that is not a batch: a test's SQL. */
static void chores_locked(void)
{
	char err[256] = "";
	bool ok;

	if (au.test_sql != NULL) {
		const char *sql = au.test_sql;

		pthread_mutex_unlock(&au.lock);
		ok = auditdb_exec(&au.db, sql, err, sizeof(err));
		pthread_mutex_lock(&au.lock);
		au.test_ok = ok;
		snprintf(au.test_err, sizeof(au.test_err), "%s", err);
		au.test_sql = NULL;
		au.test_done = true;
		pthread_cond_broadcast(&au.done);
	}
}

static void *writer_main(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "pgveil-audit");
	pthread_mutex_lock(&au.lock);
	for (;;) {
		uint64_t now = pgv_now_us();

		chores_locked();
		/*
		 * Retention goes in chunks; a write that is due goes between two,
		 * so strict statements wait for one chunk at most.
		 */
		if (prune_due(now) && !(au.pruned_last && (write_due(now) || lazy_due(now)))) {
			prune_locked(now);
			continue;
		}
		au.pruned_last = false;
		if (write_due(now))
			write_batch_locked();
		else if (lazy_due(now))
			write_lazy_locked();
		else if (au.stopping && ((au.head == NULL && !lazy_work()) || au.stop_failures >= AUDIT_STOP_RETRIES))
			break;
		else
			wait_locked(now);
	}
	pthread_mutex_unlock(&au.lock);
	return NULL;
}

/* ---- starting and stopping ------------------------------------------------------------------ */

static void reset_state(const Config *cfg)
{
	au.stopping = au.failed = au.urgent = au.idle = false;
	__atomic_store_n(&au.mode, (int)cfg->audit_mode, __ATOMIC_RELEASE);
	au.retention = cfg->audit_retention;
	au.next_prune_us = 0;
	au.head = au.tail = NULL;
	au.def_head = au.def_tail = NULL;
	au.n_def = 0;
	au.last_lazy_us = 0;
	au.n_queued = au.n_items = au.n_starts = 0;
	au.next_id = au.db.first_query_id;
	au.waiters = au.waiters_tail = NULL;
	au.rooms = NULL;
	au.error[0] = '\0';
	au.stop_failures = 0;
	au.last_write_us = 0;
	au.written = au.commits = 0;
	au.test_sql = NULL;
}

bool audit_start(const Config *cfg, char *err, size_t errlen)
{
	pthread_condattr_t ca;

	if (errlen > 0)
		err[0] = '\0';
	if (cfg->audit_db == NULL || cfg->audit_db[0] == '\0')
		return true;
	if (au.running) {
		snprintf(err, errlen, "audit_db %s: the audit log is already started", cfg->audit_db);
		return false;
	}
	if (!auditdb_open(&au.db, cfg->audit_db, err, errlen))
		return false;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&au.wake, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&au.done, NULL);
	reset_state(cfg);
	__atomic_store_n(&au.running, true, __ATOMIC_RELEASE);
	if (pthread_create(&au.thread, NULL, writer_main, NULL) != 0) {
		__atomic_store_n(&au.running, false, __ATOMIC_RELEASE);
		snprintf(err, errlen, "audit_db %s: cannot start the writer thread", cfg->audit_db);
		pthread_cond_destroy(&au.wake);
		pthread_cond_destroy(&au.done);
		auditdb_close(&au.db);
		return false;
	}
	log_info("audit: writing to %s (%s mode, retention %s); statement ids from %llu, session ids after "
	         "%llu, approval ids after %llu; the chain continues at chain_seq %lld",
	         au.db.path, mode_names[cfg->audit_mode], cfg->audit_retention > 0 ? "on" : "off",
	         (unsigned long long)au.db.first_query_id, (unsigned long long)au.db.session_base,
	         (unsigned long long)au.db.approval_base, (long long)au.db.next_seq);
	return true;
}

void audit_reconfigure(const Config *cfg)
{
	if (!audit_enabled()) {
		if (cfg->audit_db != NULL && cfg->audit_db[0] != '\0')
			log_warn("audit_db takes effect after a restart: the audit log stays off");
		return;
	}
	if (cfg->audit_db == NULL || strcmp(cfg->audit_db, au.db.path) != 0)
		log_warn("audit_db changes take effect after a restart: still writing to %s", au.db.path);
	pthread_mutex_lock(&au.lock);
	if ((int)cfg->audit_mode != au.mode) {
		__atomic_store_n(&au.mode, (int)cfg->audit_mode, __ATOMIC_RELEASE);
		rooms_wake_locked();
		log_info("audit: %s mode", mode_names[cfg->audit_mode]);
	}
	if (cfg->audit_retention != au.retention) {
		au.retention = cfg->audit_retention;
		au.next_prune_us = 0;
	}
	pthread_cond_signal(&au.wake);
	pthread_mutex_unlock(&au.lock);
}

/* Forgets every pending wake-up: at shutdown the event loops they belong to are gone. */
static void forget_all_locked(void)
{
	while (au.waiters != NULL)
		waiter_remove_locked(au.waiters);
	free(au.by_event);
	au.by_event = NULL;
	au.by_event_cap = 0;
	while (au.rooms != NULL) {
		Room *r = au.rooms;

		au.rooms = r->next;
		free(r);
	}
}

void audit_stop(void)
{
	uint64_t lost;

	if (!audit_enabled())
		return;
	pthread_mutex_lock(&au.lock);
	forget_all_locked();
	au.stopping = true;
	pthread_cond_signal(&au.wake);
	pthread_mutex_unlock(&au.lock);
	pthread_join(au.thread, NULL);
	pthread_mutex_lock(&au.lock);
	__atomic_store_n(&au.running, false, __ATOMIC_RELEASE);
	forget_all_locked();
	lost = au.n_queued + au.n_def;
	items_free(au.head);
	items_free(au.def_head);
	au.head = au.tail = au.def_head = au.def_tail = NULL;
	au.n_def = 0;
	au.n_queued = au.n_items = au.n_starts = 0;
	pthread_mutex_unlock(&au.lock);
	if (lost > 0)
		log_error("audit: %llu events could not be written before exit: %s", (unsigned long long)lost,
		          au.error);
	log_info("audit: %llu events written in %llu transactions; chain head at chain_seq %lld: %s",
	         (unsigned long long)au.written, (unsigned long long)au.commits,
	         (long long)au.db.next_seq - 1, au.db.last_hash[0] != '\0' ? au.db.last_hash : "(none)");
	auditdb_close(&au.db);
	pthread_cond_destroy(&au.wake);
	pthread_cond_destroy(&au.done);
}

bool audit_enabled(void)
{
	return __atomic_load_n(&au.running, __ATOMIC_ACQUIRE);
}

bool audit_strict(void)
{
	return audit_enabled() && __atomic_load_n(&au.mode, __ATOMIC_ACQUIRE) == AUDIT_STRICT;
}

/* ---- events ------------------------------------------------------------------------------- */

AuditStatus audit_session_start(const AuditSession *s)
{
	AuditItem *it;
	AuditStatus st = AUDIT_OK;

	if (s == NULL || !audit_enabled())
		return AUDIT_OFF;
	if ((it = item_session(s)) == NULL) {
		log_error("audit: out of memory: a login is refused for want of its audit row");
		return AUDIT_FAILED;
	}
	pthread_mutex_lock(&au.lock);
	if (!au.running)
		st = AUDIT_OFF;
	else if (au.n_items >= AUDIT_EVENTS_PER_ROW * au.queue_max)
		st = AUDIT_FULL;
	else
		queue_append_locked(it);
	pthread_mutex_unlock(&au.lock);
	if (st != AUDIT_OK)
		free(it);
	return st;
}

void audit_session_end(uint64_t session_id, int64_t ended_us, const char *end_reason)
{
	if (audit_enabled())
		enqueue(item_session_end(session_id, ended_us, end_reason), "the end of a session");
}

void audit_approval(const AuditApproval *a)
{
	if (a != NULL && audit_enabled())
		enqueue(item_approval(a), "an approval");
}

void audit_query_finish(uint64_t id, const AuditOutcome *o)
{
	static const AuditOutcome unknown = {.rows = -1, .duration_us = -1};

	if (id != 0 && audit_enabled())
		enqueue(item_outcome(id, o != NULL ? o : &unknown), "the outcome of a statement");
}

/* Queues a statement row (admitted) and the waiter for its `durable` event, if any. */
static void query_queue_locked(AuditItem *it, Waiter *w, struct event *durable)
{
	it->id = au.next_id++;
	queue_append_locked(it);
	if (w != NULL) {
		Waiter *o = waiter_of_locked(durable);

		if (o != NULL) /* one waiter per event: an answer the session did not collect is no longer wanted */
			waiter_remove_locked(o);
		w->id = it->id;
		w->ev = durable;
		waiter_append_locked(w);
	}
	if (w != NULL || au.mode == AUDIT_STRICT) {
		au.urgent = true;
		pthread_cond_signal(&au.wake);
	}
}

AuditStatus audit_query_start(const AuditQuery *q, struct event *durable, struct event *room, uint64_t *id)
{
	AuditItem *it;
	Waiter *w = NULL;
	AuditStatus st;

	if (id != NULL)
		*id = 0;
	if (!audit_enabled())
		return AUDIT_OFF;
	it = item_query(q);
	if (durable != NULL)
		w = calloc(1, sizeof(*w));
	if (it == NULL || (durable != NULL && w == NULL)) {
		free(it);
		free(w);
		log_error("audit: out of memory: a statement is refused for want of its audit row");
		return AUDIT_FAILED;
	}
	pthread_mutex_lock(&au.lock);
	st = admit_locked(room);
	if (st == AUDIT_OK && w != NULL && !waiter_reserve_locked()) {
		log_error("audit: out of memory: a statement is refused for want of its wait for durability");
		st = AUDIT_FAILED;
	}
	/*
	 * Strict mode refuses statements while the file cannot be written, but
	 * the refusal is recorded: its row waits in memory (within the bound)
	 * with the others until the file can be written again.
	 */
	if (st == AUDIT_FAILED && au.running && au.mode == AUDIT_STRICT && au.n_starts < au.queue_max) {
		free(w);
		w = NULL;
		query_queue_locked(it, NULL, NULL);
		if (id != NULL)
			*id = it->id;
		it = NULL;
	} else if (st == AUDIT_OK) {
		query_queue_locked(it, w, durable);
		if (id != NULL)
			*id = it->id;
		it = NULL;
		w = NULL;
	}
	pthread_mutex_unlock(&au.lock);
	free(it);
	free(w);
	return st;
}

AuditStatus audit_query_durable(struct event *durable, uint64_t id)
{
	AuditStatus st;
	Waiter *w;

	if (!audit_enabled())
		return AUDIT_OFF;
	pthread_mutex_lock(&au.lock);
	if ((w = waiter_of_locked(durable)) != NULL && w->id != id)
		w = NULL; /* the event waits for a later row now */
	if (w == NULL) {
		st = au.mode == AUDIT_STRICT ? AUDIT_FAILED : AUDIT_OK;
	} else if (w->state == W_PENDING) {
		st = AUDIT_FAILED; /* asked before `durable` fired */
	} else {
		st = w->state == W_OK ? AUDIT_OK : AUDIT_FAILED;
		waiter_remove_locked(w);
	}
	pthread_mutex_unlock(&au.lock);
	return st;
}

void audit_forget(struct event *durable, struct event *room)
{
	if (!audit_enabled() || (durable == NULL && room == NULL))
		return;
	pthread_mutex_lock(&au.lock);
	if (durable != NULL) {
		Waiter *w = waiter_of_locked(durable);

		if (w != NULL)
			waiter_remove_locked(w);
	}
	for (Room **rp = &au.rooms; room != NULL && *rp != NULL;) {
		Room *r = *rp;

		if (r->ev == room) {
			*rp = r->next;
			free(r);
		} else {
			rp = &r->next;
		}
	}
	pthread_mutex_unlock(&au.lock);
}

/* ---- state -------------------------------------------------------------------------------- */

const char *audit_error(char *buf, size_t buflen)
{
	const char *r = NULL;

	if (!audit_enabled() || buflen == 0)
		return NULL;
	pthread_mutex_lock(&au.lock);
	if (au.failed) {
		snprintf(buf, buflen, "%s", au.error);
		r = buf;
	}
	pthread_mutex_unlock(&au.lock);
	return r;
}

void audit_stats(uint64_t *written, uint64_t *queued, uint64_t *commits)
{
	pthread_mutex_lock(&au.lock);
	if (written != NULL)
		*written = au.written;
	if (queued != NULL)
		*queued = au.n_items;
	if (commits != NULL)
		*commits = au.commits;
	pthread_mutex_unlock(&au.lock);
}

void audit_id_bases(uint64_t *session_base, uint64_t *approval_base)
{
	bool on = audit_enabled();

	if (session_base != NULL)
		*session_base = on ? au.db.session_base : 0;
	if (approval_base != NULL)
		*approval_base = on ? au.db.approval_base : 0;
}

/* ---- test hooks --------------------------------------------------------------------------- */

void audit_test_set_prune_chunk(size_t n)
{
	pthread_mutex_lock(&au.lock);
	au.prune_chunk = n > 0 ? n : AUDIT_PRUNE_CHUNK;
	pthread_mutex_unlock(&au.lock);
}

void audit_test_set_queue_max(size_t n)
{
	pthread_mutex_lock(&au.lock);
	au.queue_max = n > 0 ? n : AUDIT_QUEUE_MAX;
	pthread_mutex_unlock(&au.lock);
}

bool audit_test_exec(const char *sql, char *err, size_t errlen)
{
	bool ok;

	pthread_mutex_lock(&au.lock);
	if (!au.running) {
		pthread_mutex_unlock(&au.lock);
		snprintf(err, errlen, "the audit log is not started");
		return false;
	}
	au.test_sql = sql;
	au.test_done = false;
	pthread_cond_signal(&au.wake);
	while (!au.test_done)
		pthread_cond_wait(&au.done, &au.lock);
	ok = au.test_ok;
	snprintf(err, errlen, "%s", au.test_err);
	pthread_mutex_unlock(&au.lock);
	return ok;
}
