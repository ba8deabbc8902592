/* SPDX-License-Identifier: MIT */
/*
 * The catalog thread: one thread with its own event loop that keeps, per
 * [databases] entry, pgveil's own connection to the server (application_name
 * pgveil:catalog), reads the catalog there with one simple Query in one
 * read-only repeatable-read transaction, builds a snapshot from the rows
 * (catalog_snap_*) and publishes it. It owns the list of databases with
 * their latest snapshots and the requests waiting for a newer one.
 *
 * Threads: the catalog thread alone changes the list of databases and
 * everything about connections and loads; the published snapshot and the
 * waiting requests of each database are read and changed under cat.lock by
 * every thread, and a request is woken by event_active() under that lock,
 * so catalog_forget() can promise that a forgotten event is never woken.
 * catalog_start(), catalog_reconfigure() and catalog_stop() are for the
 * main thread; a configuration is handed to the catalog thread, and the
 * caller waits until the thread has taken it (that takes no I/O), so a
 * database added by a reload can be asked for as soon as the reload is done.
 *
 * Requests are merged: when a load starts it takes every request waiting at
 * that moment and answers them when it publishes; a request arriving during
 * a load waits for the next load, which starts when that one ends.
 *
 * Every catalog_refresh a timer of the thread asks for a load of every
 * database that is not loading already (one under way is not followed by
 * another: loads never pile up), so changes that keep OIDs (a renamed
 * column, a replaced view, a new function) are seen without a reload. Such
 * a load is logged at debug level unless what it found to warn about
 * changed.
 */
#include "pgveil/catalog.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/backend.h"
#include "pgveil/log.h"
#include "pgveil/pgproto.h"
#include "pgveil/sqlinfo.h"
#include "pgveil/stream.h"

#define CATALOG_QUERY_TIMEOUT_MS 30000u      /* one load's query, as the server's statement_timeout too */
#define CATALOG_MAX_MESSAGE (64u << 20)       /* largest message read (a DataRow with a long view definition) */
#define CATALOG_CTX "catalog"                 /* log context */
#define CATALOG_APP_NAME "pgveil:catalog"

/*
 * The whole load. search_path = '' makes pg_get_viewdef() (and
 * pg_get_expr() of generated columns) qualify every relation name and every
 * function outside pg_catalog; SET (not SET LOCAL) keeps it for the
 * connection. The
 * column types follow domains, nested ones included, to their base type and
 * typmod, as RowDescription shows them (getBaseTypeAndTypmod()). The
 * user-defined functions are those of every schema but pg_catalog and the
 * temporary schemas (a temporary function is never found by an unqualified
 * name, and a qualified call is no built-in anyway), one row per (schema,
 * name). information_schema's own functions are listed: none has a
 * built-in's name, and one someone adds there is as much the user's as any.
 */
static const char catalog_sql[] =
	"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;"
	"SET search_path = '';"
	"SET LOCAL statement_timeout = '30s';"
	"SELECT c.oid, n.nspname, c.relname, c.relkind,"
	" CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END"
	" FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
	" WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f');"
	"WITH RECURSIVE dom(oid, base, typmod) AS ("
	" SELECT t.oid, t.typbasetype, t.typtypmod FROM pg_catalog.pg_type t WHERE t.typtype = 'd'"
	" UNION ALL"
	" SELECT d.oid, b.typbasetype, b.typtypmod FROM dom d"
	" JOIN pg_catalog.pg_type b ON b.oid = d.base AND b.typtype = 'd'),"
	" resolved AS (SELECT d.oid, d.base, d.typmod FROM dom d"
	" JOIN pg_catalog.pg_type t ON t.oid = d.base AND t.typtype <> 'd')"
	"SELECT a.attrelid, a.attnum, a.attname, COALESCE(r.base, a.atttypid),"
	" CASE WHEN r.oid IS NULL THEN a.atttypmod ELSE r.typmod END, a.attisdropped, a.attgenerated,"
	" CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END"
	" FROM pg_catalog.pg_attribute a"
	" JOIN pg_catalog.pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
	" LEFT JOIN resolved r ON r.oid = a.atttypid"
	" LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
	" WHERE a.attnum > 0;"
	"SELECT i.inhrelid, i.inhparent FROM pg_catalog.pg_inherits i"
	" JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid AND c.relkind IN ('r', 'p', 'f')"
	" JOIN pg_catalog.pg_class p ON p.oid = i.inhparent AND p.relkind IN ('r', 'p', 'f');"
	"SELECT DISTINCT n.nspname, p.proname FROM pg_catalog.pg_proc p"
	" JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
	" WHERE n.nspname <> 'pg_catalog' AND NOT pg_catalog.starts_with(n.nspname, 'pg_temp_')"
	" ORDER BY 1, 2;"
	"COMMIT";

/* The result sets of catalog_sql, in order, and how many columns each has. */
enum { SET_RELS = 1, SET_COLUMNS = 2, SET_PARENTS = 3, SET_FUNCTIONS = 4, N_SETS = 4 };
static const int set_width[N_SETS + 1] = { 0, 5, 8, 2, 2 };

typedef enum {
	CONN_NONE,       /* no connection */
	CONN_CONNECTING, /* backend_connect() under way */
	CONN_IDLE,       /* logged in, nothing running */
	CONN_QUERY,      /* catalog_sql running */
	CONN_DEAD,       /* closed; freed by the next step */
} ConnState;

/* A request waiting for a snapshot. */
typedef struct Waiter {
	struct event *wake;       /* the requester's event */
	struct Waiter *next;
} Waiter;

/* One [databases] entry. */
typedef struct CatDb {
	char *name;               /* the [databases] name */
	/* under cat.lock */
	CatSnap *snap;            /* the latest published snapshot, or NULL */
	Waiter *waiting;          /* requests no load serves yet */
	Waiter *served;           /* requests the load under way answers */
	bool want_load;           /* a load must start (requests waiting, or a new configuration) */
	/* the catalog thread only */
	ConnState state;
	Backend *be;              /* the connection (NULL in CONN_NONE) */
	bool loading;             /* a load is under way (connecting or querying) */
	bool refresh_due;         /* the refresh timer asked for the next load */
	bool quiet;               /* the load under way is the timer's alone: log at debug what did not change */
	CatSnap *building;        /* the snapshot the load fills */
	int result_set;           /* SET_* being read, 0 before the first */
	uint64_t started_us;      /* when the load started */
	struct event *timer;      /* the query's time limit */
	char *scratch;            /* one row's values, NUL-terminated */
	size_t scratch_cap;
	struct CatDb *next;
} CatDb;

static struct {
	pthread_mutex_t lock;     /* guards what is marked so, and the list's links for readers */
	pthread_cond_t taken;     /* the thread took a posted configuration (post_seq == taken_seq) */
	bool running;             /* the thread runs (changed by the main thread only) */
	pthread_t thread;
	struct event_base *base;  /* the thread's loop */
	struct evdns_base *dns;
	struct event *kick;       /* activated by any thread: something to do */
	struct event *refresh;    /* every catalog_refresh: load every database again */
	CatDb *dbs;               /* every database: changed by the thread under lock */
	uint64_t last_version;    /* under lock: the last version given to a snapshot */
	/* under lock: hand-over to the thread */
	bool stop;
	Config *posted;           /* a configuration the thread has not taken yet (a reference) */
	uint64_t posted_gen;      /* its config_generation() */
	uint64_t post_seq, taken_seq;
	/* the catalog thread only */
	Config *cfg;              /* the configuration loads use (a reference) */
	uint64_t cfg_gen;
} cat = { .lock = PTHREAD_MUTEX_INITIALIZER, .taken = PTHREAD_COND_INITIALIZER };

static void conn_stream_cb(Stream *s, StreamEvent ev, void *arg);

/* ---- small helpers ---------------------------------------------------------------------- */

static bool has_mask_rules(const Config *cfg)
{
	const RuleSet *rs = cfg != NULL ? cfg->ruleset : NULL;

	for (int i = 0; rs != NULL && i < rs->n_rules; i++)
		if (rs->rules[i].kind == RULE_MASK)
			return true;
	return false;
}

static CatDb *db_find(const char *name)
{
	for (CatDb *db = cat.dbs; db != NULL; db = db->next)
		if (strcmp(db->name, name) == 0)
			return db;
	return NULL;
}

static void kick(void)
{
	event_active(cat.kick, EV_READ, 0);
}

/* Wakes and frees a list of waiters. Under lock. */
static void wake_all(Waiter *w)
{
	while (w != NULL) {
		Waiter *next = w->next;

		event_active(w->wake, 0, 0);
		free(w);
		w = next;
	}
}

/* Removes every waiter of `wake` from *list. Under lock. */
static void forget_in(Waiter **list, const struct event *wake)
{
	while (*list != NULL) {
		Waiter *w = *list;

		if (w->wake == wake) {
			*list = w->next;
			free(w);
		} else {
			list = &w->next;
		}
	}
}

static bool waiting_for(const Waiter *w, const struct event *wake)
{
	for (; w != NULL; w = w->next)
		if (w->wake == wake)
			return true;
	return false;
}

/* ---- publishing ---------------------------------------------------------------------------- */

/* True when the snapshots have the same problems (in the same order). */
static bool same_problems(const CatSnap *a, const CatSnap *b)
{
	if (a == NULL || b == NULL || a->error != NULL || a->n_problems != b->n_problems)
		return false;
	for (int i = 0; i < a->n_problems; i++)
		if (strcmp(a->problems[i], b->problems[i]) != 0)
			return false;
	return true;
}

/*
 * Logs a loaded snapshot and its problems; a quiet load (the refresh timer's)
 * logs at debug level unless its problems differ from the published
 * snapshot's (db->snap: only this thread changes it).
 */
static void log_loaded(const CatDb *db, const CatSnap *s)
{
	LogLevel problems = db->quiet && same_problems(db->snap, s) ? LL_DEBUG : LL_WARN;
	int masked = 0;

	for (int i = 0; i < s->n_rels; i++)
		for (int j = 0; j < s->rels[i].n_columns; j++)
			masked += s->rels[i].columns[j].n_masks > 0;
	log_write(db->quiet ? LL_DEBUG : LL_INFO, CATALOG_CTX,
		  "catalog of database %s loaded: %d relations, %d masked columns, %d user functions, %llu ms",
		  db->name, s->n_rels, masked, s->n_functions,
		  (unsigned long long)((pgv_now_us() - db->started_us) / 1000));
	for (int i = 0; i < s->n_problems; i++)
		log_write(problems, CATALOG_CTX, "catalog of database %s: %s", db->name, s->problems[i]);
}

/*
 * Ends the load of db: publishes s (NULL: keeps the previous snapshot, out
 * of memory) and wakes the requests the load served. Another load follows
 * when requests arrived meanwhile.
 */
static void publish(CatDb *db, CatSnap *s)
{
	CatSnap *old = NULL;
	bool again;

	pthread_mutex_lock(&cat.lock);
	if (s != NULL) {
		/* Numbered when published, under the lock: versions follow the order readers see. */
		s->version = ++cat.last_version;
		old = db->snap;
		db->snap = s;
	}
	wake_all(db->served);
	db->served = NULL;
	again = db->want_load;
	pthread_mutex_unlock(&cat.lock);
	if (old != NULL)
		catalog_snap_unref(old);
	db->loading = false;
	if (again)
		kick();
}

/* ---- connections --------------------------------------------------------------------------- */

/* Closes db's connection (it is freed by the next step, never inside its own callbacks). */
static void conn_close(CatDb *db)
{
	if (db->timer != NULL)
		event_del(db->timer);
	if (db->be == NULL) {
		db->state = CONN_NONE;
		return;
	}
	if (backend_stream(db->be) != NULL)
		stream_close(backend_stream(db->be));
	db->state = CONN_DEAD;
	kick();
}

/* Frees db's connection now (outside its callbacks). */
static void conn_free(CatDb *db)
{
	if (db->timer != NULL)
		event_del(db->timer);
	backend_free(db->be);
	db->be = NULL;
	db->state = CONN_NONE;
}

static void load_fail(CatDb *db, const char *fmt, ...) PGV_PRINTF(2, 3);

/*
 * The load of db failed: the connection is closed (the next load opens a
 * new one), the failure is logged and published.
 */
static void load_fail(CatDb *db, const char *fmt, ...)
{
	char why[512], msg[640];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(msg, sizeof(msg), "cannot read the catalog of database %s: %s", db->name, why);
	/* The timer's loads fail again and again while the server is away: said once at warning level. */
	log_write(db->quiet && db->snap != NULL && db->snap->error != NULL && strcmp(db->snap->error, msg) == 0
			  ? LL_DEBUG : LL_WARN, CATALOG_CTX, "%s", msg);
	conn_close(db);
	catalog_snap_unref(db->building);
	db->building = NULL;
	publish(db, catalog_snap_failed(db->name, cat.cfg_gen, msg));
}

static void query_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	load_fail(arg, "no answer to the catalog query within %u s", CATALOG_QUERY_TIMEOUT_MS / 1000);
}

static void send_query(CatDb *db)
{
	Stream *st = backend_stream(db->be);
	struct timeval tv = { CATALOG_QUERY_TIMEOUT_MS / 1000, 0 };
	PgBuf b;

	pgproto_buf_init(&b);
	pgproto_build_query(&b, catalog_sql);
	if (!pgproto_buf_ok(&b) || evbuffer_add(stream_output(st), b.data, b.len) != 0) {
		pgproto_buf_free(&b);
		load_fail(db, "out of memory");
		return;
	}
	pgproto_buf_free(&b);
	db->state = CONN_QUERY;
	db->result_set = 0;
	evtimer_add(db->timer, &tv);
	if (!stream_flush(st))
		load_fail(db, "connection lost: %s", stream_error(st));
}

static void ready_cb(Backend *be, void *arg)
{
	CatDb *db = arg;
	Stream *st = backend_stream(be);

	db->state = CONN_IDLE;
	stream_set_cb(st, conn_stream_cb, db);
	stream_enable_read(st, true);
	log_write(LL_DEBUG, CATALOG_CTX, "connected to server %s (%s)", db->name, backend_get_addr(be)->display);
	if (db->loading)
		send_query(db);
}

/* The backend logged the server's own words; the address and the stream's error say the rest. */
static void fail_cb(Backend *be, const char *sqlstate, const char *message, void *arg)
{
	CatDb *db = arg;
	Stream *st = backend_stream(be);
	const char *detail = st != NULL ? stream_error(st) : "";

	db->be = be; /* a failure reported inside backend_connect() comes before it returns */
	if (detail[0] != '\0' && strstr(message, detail) == NULL)
		load_fail(db, "%s (%s): %s", message, backend_get_addr(be)->display, detail);
	else
		load_fail(db, "%s (%s)", message, backend_get_addr(be)->display);
}

/* Opens db's connection; the load goes on in ready_cb. */
static void conn_open(CatDb *db)
{
	const DbEntry *e = config_find_db(cat.cfg, db->name);
	PgStartupParam params[] = { { "application_name", CATALOG_APP_NAME } };
	const char *why = "out of memory";
	uint64_t timeout;
	Backend *be;

	if (e == NULL) {
		load_fail(db, "not in the configuration");
		return;
	}
	timeout = e->connect_timeout > 0 ? (uint64_t)e->connect_timeout * 1000 : cat.cfg->server_connect_timeout;
	db->state = CONN_CONNECTING;
	be = backend_connect(cat.base, cat.dns, e, timeout, params, 1, CATALOG_CTX, ready_cb, fail_cb, db, &why);
	if (be == NULL) {
		load_fail(db, "%s", why);
		return;
	}
	db->be = be;
}

/* ---- reading the answer -------------------------------------------------------------------- */

/*
 * Splits a DataRow of `want` columns into NUL-terminated values (NULL for
 * SQL NULL) in db->scratch. False when it is malformed; *oom when memory ran out.
 */
static bool row_values(CatDb *db, const uint8_t *body, size_t len, const char **vals, int want, bool *oom)
{
	PgReader r;
	int16_t n;
	size_t at = 0;

	if (len > db->scratch_cap) {
		char *grown = realloc(db->scratch, len);

		if (grown == NULL)
			return !(*oom = true);
		db->scratch = grown;
		db->scratch_cap = len;
	}
	pgproto_reader_init(&r, body, len);
	if (!pgproto_get_int16(&r, &n) || n != want)
		return false;
	for (int i = 0; i < n; i++) {
		const uint8_t *p;
		int32_t flen;

		if (!pgproto_get_int32(&r, &flen) || flen < -1)
			return false;
		vals[i] = NULL;
		if (flen == -1)
			continue;
		/* A value and its NUL take no more room than its length word and bytes did. */
		if (!pgproto_get_bytes(&r, (size_t)flen, &p) || memchr(p, '\0', (size_t)flen) != NULL)
			return false;
		memcpy(db->scratch + at, p, (size_t)flen);
		db->scratch[at + (size_t)flen] = '\0';
		vals[i] = db->scratch + at;
		at += (size_t)flen + 1;
	}
	return pgproto_remaining(&r) == 0;
}

static bool parse_u32(const char *s, uint32_t *out)
{
	unsigned long v;
	char *end;

	if (s == NULL || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool parse_i32(const char *s, int32_t *out)
{
	long v;
	char *end;

	if (s == NULL || *s == '\0')
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < INT32_MIN || v > INT32_MAX)
		return false;
	*out = (int32_t)v;
	return true;
}

/* Adds one row of result set `set` to the snapshot. -1 malformed, 0 out of memory, 1 done. */
static int add_row(CatSnap *s, int set, const char *const *v)
{
	uint32_t a, b;
	int32_t attnum, typmod;

	switch (set) {
	case SET_RELS:
		if (!parse_u32(v[0], &a) || v[1] == NULL || v[2] == NULL || v[3] == NULL || strlen(v[3]) != 1)
			return -1;
		return catalog_snap_add_rel(s, a, v[1], v[2], v[3][0], v[4]);
	case SET_COLUMNS:
		if (!parse_u32(v[0], &a) || !parse_i32(v[1], &attnum) || attnum < 1 || v[2] == NULL ||
		    !parse_u32(v[3], &b) || !parse_i32(v[4], &typmod) || v[5] == NULL || v[6] == NULL)
			return -1;
		if (v[5][0] == 't')
			return catalog_snap_add_column(s, a, attnum, NULL, b, typmod);
		if (!catalog_snap_add_column(s, a, attnum, v[2], b, typmod))
			return 0;
		/* attgenerated: '' for an ordinary column, 's' stored (any other kind counts as generated) */
		return v[6][0] == '\0' || catalog_snap_set_generated(s, a, attnum, v[7]);
	case SET_PARENTS:
		if (!parse_u32(v[0], &a) || !parse_u32(v[1], &b))
			return -1;
		return catalog_snap_add_parent(s, a, b);
	case SET_FUNCTIONS:
		if (v[0] == NULL || v[1] == NULL)
			return -1;
		return catalog_snap_add_function(s, v[0], v[1]);
	default:
		return -1;
	}
}

static void on_data_row(CatDb *db, const uint8_t *body, size_t len)
{
	const char *vals[8];
	bool oom = false;
	int rc;

	if (db->result_set < SET_RELS || db->result_set > N_SETS) {
		load_fail(db, "the server sent a row outside any result");
		return;
	}
	if (!row_values(db, body, len, vals, set_width[db->result_set], &oom)) {
		load_fail(db, "%s", oom ? "out of memory" : "malformed row from the server");
		return;
	}
	rc = add_row(db->building, db->result_set, vals);
	if (rc <= 0)
		load_fail(db, "%s", rc < 0 ? "unexpected value in a catalog row" : "out of memory");
}

static void on_row_description(CatDb *db, const uint8_t *body, size_t len)
{
	PgReader r;
	int16_t n;

	pgproto_reader_init(&r, body, len);
	if (++db->result_set > N_SETS || !pgproto_get_int16(&r, &n) || n != set_width[db->result_set])
		load_fail(db, "unexpected result from the server");
}

/* ReadyForQuery after the whole answer: the snapshot is complete. */
static void on_ready(CatDb *db, const uint8_t *body, size_t len)
{
	CatSnap *s = db->building;

	event_del(db->timer);
	if (len != 1 || body[0] != 'I' || db->result_set != N_SETS) {
		load_fail(db, "the server's answer ended early");
		return;
	}
	if (!catalog_snap_finish(s)) {
		load_fail(db, "out of memory");
		return;
	}
	db->building = NULL;
	db->state = CONN_IDLE;
	log_loaded(db, s);
	publish(db, s);
}

static void on_server_error(CatDb *db, const uint8_t *body, size_t len)
{
	PgErrorFields f;

	if (!pgproto_parse_error(body, len, &f))
		load_fail(db, "malformed error from the server");
	else
		load_fail(db, "the catalog query failed: %s (SQLSTATE %s)", f.message, f.sqlstate);
}

/* One message while catalog_sql runs. */
static void on_query_message(CatDb *db, uint8_t type, const uint8_t *body, size_t len)
{
	switch (type) {
	case 'T': on_row_description(db, body, len); return;
	case 'D': on_data_row(db, body, len); return;
	case 'Z': on_ready(db, body, len); return;
	case 'E': on_server_error(db, body, len); return;
	case 'C': case 'N': case 'S': case 'A': return;
	default: load_fail(db, "unexpected message '%c' from the server", type); return;
	}
}

/* One message while idle: notices and settings pass; an error (the server ends the session) closes. */
static void on_idle_message(CatDb *db, uint8_t type, const uint8_t *body, size_t len)
{
	PgErrorFields f;

	if (type == 'N' || type == 'S' || type == 'A')
		return;
	if (type == 'E' && pgproto_parse_error(body, len, &f))
		log_write(LL_INFO, CATALOG_CTX, "server %s closed the catalog connection: %s", db->name, f.message);
	else
		log_write(LL_INFO, CATALOG_CTX, "server %s sent '%c' to the idle catalog connection: closing it",
			  db->name, type);
	conn_close(db);
}

static void conn_read(CatDb *db, Stream *st)
{
	struct evbuffer *in = stream_input(st);

	while (db->state == CONN_QUERY || db->state == CONN_IDLE) {
		uint8_t hdr[PG_HEADER_LEN], *msg;
		const char *why;
		PgHeader h;

		if (evbuffer_copyout(in, hdr, sizeof(hdr)) < (ssize_t)sizeof(hdr))
			return;
		if (pgproto_check_backend_header(hdr, CATALOG_MAX_MESSAGE, &h, &why) != PGP_FRAME_OK) {
			if (db->state == CONN_QUERY)
				load_fail(db, "invalid message from the server: %s", why);
			else
				conn_close(db);
			return;
		}
		if (evbuffer_get_length(in) < (size_t)h.len + 1)
			return;
		msg = evbuffer_pullup(in, (ssize_t)h.len + 1);
		if (msg == NULL) {
			load_fail(db, "out of memory");
			return;
		}
		if (db->state == CONN_QUERY)
			on_query_message(db, h.type, msg + PG_HEADER_LEN, h.len - 4);
		else
			on_idle_message(db, h.type, msg + PG_HEADER_LEN, h.len - 4);
		evbuffer_drain(in, (size_t)h.len + 1);
	}
}

static void conn_stream_cb(Stream *s, StreamEvent ev, void *arg)
{
	CatDb *db = arg;

	switch (ev) {
	case STREAM_EV_READ:
		conn_read(db, s);
		return;
	case STREAM_EV_EOF:
	case STREAM_EV_ERROR:
		if (db->state == CONN_QUERY) {
			load_fail(db, "connection lost: %s", stream_error(s));
			return;
		}
		log_write(LL_DEBUG, CATALOG_CTX, "server %s closed the idle catalog connection: %s", db->name,
			  stream_error(s));
		conn_close(db);
		return;
	default:
		return;
	}
}

/* ---- loads ----------------------------------------------------------------------------------- */

/* Starts a load of db: it serves every request waiting now. */
static void load_start(CatDb *db)
{
	pthread_mutex_lock(&cat.lock);
	db->served = db->waiting;
	db->waiting = NULL;
	db->want_load = false;
	pthread_mutex_unlock(&cat.lock);
	db->loading = true;
	db->quiet = db->refresh_due && db->served == NULL;
	db->refresh_due = false;
	db->started_us = pgv_now_us();
	db->building = catalog_snap_new(db->name, cat.cfg->ruleset, cat.cfg_gen);
	if (db->timer == NULL)
		db->timer = evtimer_new(cat.base, query_timeout_cb, db);
	if (db->building == NULL || db->timer == NULL) {
		load_fail(db, "out of memory");
		return;
	}
	if (db->state == CONN_IDLE)
		send_query(db);
	else
		conn_open(db);
}

/* Stops db's load without publishing: the requests it served wait for the next one. */
static void load_abort(CatDb *db)
{
	Waiter **tail;

	if (db->loading) {
		pthread_mutex_lock(&cat.lock);
		for (tail = &db->served; *tail != NULL; tail = &(*tail)->next)
			;
		*tail = db->waiting;
		db->waiting = db->served;
		db->served = NULL;
		pthread_mutex_unlock(&cat.lock);
	}
	db->loading = false;
	catalog_snap_unref(db->building);
	db->building = NULL;
	if (db->be != NULL)
		conn_free(db);
}

/* Frees a database the configuration no longer has; its requests are woken (they find no snapshot). */
static void db_free(CatDb *db)
{
	load_abort(db);
	pthread_mutex_lock(&cat.lock);
	wake_all(db->waiting);
	db->waiting = NULL;
	pthread_mutex_unlock(&cat.lock);
	catalog_snap_unref(db->snap);
	if (db->timer != NULL)
		event_free(db->timer);
	free(db->scratch);
	free(db->name);
	free(db);
}

/* (Re)starts the refresh timer for the configuration in use: a full interval from now; 0 stops it. */
static void refresh_arm(void)
{
	uint64_t ms = cat.cfg != NULL ? cat.cfg->catalog_refresh : 0;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

	event_del(cat.refresh);
	if (ms > 0 && event_add(cat.refresh, &tv) != 0)
		log_warn("cannot start the catalog refresh timer: catalogs are read again only on reload and on demand");
}

/* The refresh timer: every database not loading now is loaded again (one that is loading is skipped). */
static void refresh_cb(evutil_socket_t fd, short what, void *arg)
{
	bool any = false;

	for (CatDb *db = cat.dbs; db != NULL; db = db->next) {
		if (db->loading)
			continue;
		pthread_mutex_lock(&cat.lock);
		db->want_load = true;
		pthread_mutex_unlock(&cat.lock);
		db->refresh_due = true;
		any = true;
	}
	if (any)
		kick();
}

/* Takes a new configuration (on the thread): databases follow it, every one is read again. */
static void take_config(Config *cfg, uint64_t gen)
{
	CatDb **link = &cat.dbs;

	while (*link != NULL) {
		CatDb *db = *link;

		load_abort(db);
		if (config_find_db(cfg, db->name) != NULL) {
			link = &db->next;
			continue;
		}
		pthread_mutex_lock(&cat.lock);
		*link = db->next;
		pthread_mutex_unlock(&cat.lock);
		db_free(db);
	}
	for (int i = 0; i < cfg->n_databases; i++) {
		const char *name = cfg->databases[i].name;
		CatDb *db = db_find(name);
		bool fresh = db == NULL;

		if (fresh && ((db = calloc(1, sizeof(CatDb))) == NULL || (db->name = strdup(name)) == NULL)) {
			free(db);
			log_error("catalog of database %s: out of memory: its masks cannot be computed", name);
			continue;
		}
		pthread_mutex_lock(&cat.lock);
		if (fresh) {
			db->next = cat.dbs;
			cat.dbs = db;
		}
		db->want_load = true;
		pthread_mutex_unlock(&cat.lock);
		db->refresh_due = false;
	}
	config_unref(cat.cfg);
	cat.cfg = cfg;
	cat.cfg_gen = gen;
	refresh_arm();
}

/* Everything the thread does when kicked: stop, a new configuration, dead connections, loads to start. */
static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	Config *cfg;
	uint64_t gen, seq;
	bool stop;

	pthread_mutex_lock(&cat.lock);
	stop = cat.stop;
	cfg = cat.posted;
	gen = cat.posted_gen;
	seq = cat.post_seq;
	cat.posted = NULL;
	pthread_mutex_unlock(&cat.lock);
	if (stop) {
		config_unref(cfg);
		event_base_loopbreak(cat.base);
		return;
	}
	if (cfg != NULL) {
		take_config(cfg, gen);
		pthread_mutex_lock(&cat.lock);
		cat.taken_seq = seq;
		pthread_cond_broadcast(&cat.taken);
		pthread_mutex_unlock(&cat.lock);
	}
	for (CatDb *db = cat.dbs; db != NULL; db = db->next) {
		bool want;

		if (db->state == CONN_DEAD)
			conn_free(db);
		pthread_mutex_lock(&cat.lock);
		want = db->want_load;
		pthread_mutex_unlock(&cat.lock);
		if (want && !db->loading && cat.cfg != NULL)
			load_start(db);
	}
}

static void *catalog_main(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "pgveil-catalog");
	event_base_loop(cat.base, EVLOOP_NO_EXIT_ON_EMPTY);
	sqlinfo_thread_cleanup();
	return NULL;
}

/* ---- the interface --------------------------------------------------------------------------- */

/* Frees what catalog_start() made, once the thread no longer runs. */
static void teardown(void)
{
	while (cat.dbs != NULL) {
		CatDb *db = cat.dbs;

		pthread_mutex_lock(&cat.lock);
		cat.dbs = db->next;
		pthread_mutex_unlock(&cat.lock);
		db_free(db);
	}
	config_unref(cat.cfg);
	cat.cfg = NULL;
	config_unref(cat.posted);
	cat.posted = NULL;
	if (cat.kick != NULL)
		event_free(cat.kick);
	if (cat.refresh != NULL)
		event_free(cat.refresh);
	if (cat.dns != NULL)
		evdns_base_free(cat.dns, 0);
	if (cat.base != NULL)
		event_base_free(cat.base);
	cat.kick = NULL;
	cat.refresh = NULL;
	cat.dns = NULL;
	cat.base = NULL;
}

/* Hands cfg to the thread and waits until it took it (it does no I/O to take it). */
static void post_config(Config *cfg)
{
	uint64_t seq;

	pthread_mutex_lock(&cat.lock);
	config_unref(cat.posted);
	cat.posted = config_ref(cfg);
	cat.posted_gen = config_generation();
	seq = ++cat.post_seq;
	pthread_mutex_unlock(&cat.lock);
	kick();
	pthread_mutex_lock(&cat.lock);
	while (cat.taken_seq < seq)
		pthread_cond_wait(&cat.taken, &cat.lock);
	pthread_mutex_unlock(&cat.lock);
}

bool catalog_start(Config *cfg)
{
	if (cat.running) {
		catalog_reconfigure(cfg);
		return true;
	}
	if (!has_mask_rules(cfg))
		return true;
	cat.stop = false;
	cat.base = event_base_new();
	cat.dns = cat.base != NULL ? evdns_base_new(cat.base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
								    EVDNS_BASE_DISABLE_WHEN_INACTIVE)
				   : NULL;
	cat.kick = cat.base != NULL ? event_new(cat.base, -1, EV_PERSIST | EV_READ, kick_cb, NULL) : NULL;
	cat.refresh = cat.base != NULL ? event_new(cat.base, -1, EV_PERSIST, refresh_cb, NULL) : NULL;
	if (cat.dns == NULL || cat.kick == NULL || cat.refresh == NULL || event_add(cat.kick, NULL) != 0 ||
	    pthread_create(&cat.thread, NULL, catalog_main, NULL) != 0) {
		log_error("cannot start the catalog thread");
		teardown();
		return false;
	}
	pthread_mutex_lock(&cat.lock);
	cat.running = true;
	pthread_mutex_unlock(&cat.lock);
	post_config(cfg);
	return true;
}

void catalog_reconfigure(Config *cfg)
{
	if (!has_mask_rules(cfg)) {
		if (cat.running)
			log_info("no MASK rules any more: the catalog thread stops");
		catalog_stop();
		return;
	}
	if (!cat.running) {
		if (!catalog_start(cfg))
			log_error("masked columns cannot be resolved: every statement that needs them fails");
		return;
	}
	post_config(cfg);
}

void catalog_stop(void)
{
	if (!cat.running)
		return;
	pthread_mutex_lock(&cat.lock);
	cat.stop = true;
	pthread_mutex_unlock(&cat.lock);
	kick();
	pthread_join(cat.thread, NULL);
	pthread_mutex_lock(&cat.lock);
	cat.running = false;
	pthread_mutex_unlock(&cat.lock);
	teardown();
}

CatSnap *catalog_get(const char *database)
{
	CatSnap *s = NULL;
	CatDb *db;

	pthread_mutex_lock(&cat.lock);
	db = cat.running && database != NULL ? db_find(database) : NULL;
	if (db != NULL && db->snap != NULL)
		s = catalog_snap_ref(db->snap);
	pthread_mutex_unlock(&cat.lock);
	return s;
}

bool catalog_request(const char *database, uint64_t have, struct event *wake)
{
	bool ok = false;
	Waiter *w;
	CatDb *db;

	pthread_mutex_lock(&cat.lock);
	db = cat.running && !cat.stop && database != NULL ? db_find(database) : NULL;
	if (db == NULL)
		goto out;
	ok = true;
	if (db->snap != NULL && db->snap->version > have) {
		event_active(wake, 0, 0);
		goto out;
	}
	if (waiting_for(db->waiting, wake))
		goto out;
	if ((w = malloc(sizeof(Waiter))) == NULL) {
		ok = false;
		goto out;
	}
	w->wake = wake;
	w->next = db->waiting;
	db->waiting = w;
	if (!db->want_load)
		kick(); /* under the lock: catalog_stop() cannot free the event meanwhile */
	db->want_load = true;
out:
	pthread_mutex_unlock(&cat.lock);
	return ok;
}

void catalog_forget(struct event *wake)
{
	pthread_mutex_lock(&cat.lock);
	for (CatDb *db = cat.dbs; db != NULL; db = db->next) {
		forget_in(&db->waiting, wake);
		forget_in(&db->served, wake);
	}
	pthread_mutex_unlock(&cat.lock);
}
