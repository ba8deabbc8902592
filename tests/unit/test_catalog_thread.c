/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the catalog thread against servers that are not PostgreSQL:
 * a fake server on a thread of its own (trust login, then canned answers
 * to the catalog query: good rows, an ErrorResponse, a connection dropped
 * mid-answer, garbage), a port nobody listens on, and a server that
 * accepts and never speaks. Checked: every database is read at start,
 * catalog_request() wakes at once when a newer snapshot exists and after
 * the next load otherwise, failures become failed snapshots with their
 * reason and the next request connects again, catalog_forget() means the
 * event is never woken, unknown databases and a stopped thread refuse
 * requests, a reload without MASK rules stops the thread and one with them
 * starts it, and SHOW MASKS over the snapshots. The user-defined functions
 * of the answer land in the snapshot. With catalog_refresh the thread reads
 * the catalog again on its own, never starts a load while one is under way
 * (a slow server), and stops when it is set to 0.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "pgveil/admin.h"
#include "pgveil/catalog.h"
#include "pgveil/config.h"
#include "pgveil/log.h"
#include "pgveil/pgproto.h"

/* ---- the fake server ------------------------------------------------------------------------- */

typedef enum { FAKE_OK, FAKE_ERROR, FAKE_DROP, FAKE_GARBAGE, FAKE_BAD_FUNCTION, FAKE_SLOW } FakeMode;

#define FAKE_SLOW_MS 1300        /* FAKE_SLOW: how long the good answer takes */

static struct {
	int lfd;                 /* listening socket */
	int port;
	pthread_t thread;
	int mode;                /* FakeMode, atomic */
	int accepted;            /* connections accepted, atomic */
	int queries;             /* Query messages answered, atomic */
	int stop;                /* atomic */
	int hold;                /* atomic: while set, queries wait for their answer */
	uint64_t answered_us;    /* when the last answer was sent (fake thread only) */
	int64_t min_gap_us;      /* shortest time from an answer to the next query, atomic; reset by tests */
} fake;

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool read_full(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n > 0) {
		ssize_t r = read(fd, p, n);

		if (r <= 0)
			return false;
		p += r;
		n -= (size_t)r;
	}
	return true;
}

static void send_buf(int fd, PgBuf *b)
{
	assert_true(pgproto_buf_ok(b));
	if (write(fd, b->data, b->len) != (ssize_t)b->len) {
		/* the client went away: its problem */
	}
	pgproto_buf_reset(b);
}

static void put_desc(PgBuf *b, int n)
{
	pgproto_begin(b, 'T');
	pgproto_put_int16(b, (int16_t)n);
	for (int i = 0; i < n; i++) {
		pgproto_put_string(b, "c");
		pgproto_put_int32(b, 0);
		pgproto_put_int16(b, 0);
		pgproto_put_int32(b, 25);
		pgproto_put_int16(b, -1);
		pgproto_put_int32(b, -1);
		pgproto_put_int16(b, 0);
	}
	pgproto_end(b);
}

/* A DataRow of n text values (NULL = SQL NULL). */
static void put_data(PgBuf *b, int n, ...)
{
	va_list ap;

	va_start(ap, n);
	pgproto_begin(b, 'D');
	pgproto_put_int16(b, (int16_t)n);
	for (int i = 0; i < n; i++) {
		const char *v = va_arg(ap, const char *);

		pgproto_put_int32(b, v != NULL ? (int32_t)strlen(v) : -1);
		if (v != NULL)
			pgproto_put_bytes(b, v, strlen(v));
	}
	pgproto_end(b);
	va_end(ap);
}

static void put_complete(PgBuf *b, const char *tag)
{
	pgproto_begin(b, 'C');
	pgproto_put_string(b, tag);
	pgproto_end(b);
}

/* The answer to the catalog query: two tables, one a child of the other, a view, and functions. */
static void answer_ok(PgBuf *b, bool bad_function)
{
	put_complete(b, "BEGIN");
	put_complete(b, "SET");
	put_complete(b, "SET");
	put_desc(b, 5);
	put_data(b, 5, "16384", "public", "users", "r", NULL);
	put_data(b, 5, "16390", "public", "users_old", "r", NULL);
	put_data(b, 5, "16400", "public", "v", "v", " SELECT users.email FROM public.users;");
	put_complete(b, "SELECT 3");
	put_desc(b, 8);
	put_data(b, 8, "16384", "1", "id", "23", "-1", "f", "", NULL);
	put_data(b, 8, "16384", "2", "email", "25", "-1", "f", "", NULL);
	put_data(b, 8, "16384", "3", "........pg.dropped.3........", "0", "-1", "t", "", NULL);
	put_data(b, 8, "16390", "1", "id", "23", "-1", "f", "", NULL);
	put_data(b, 8, "16390", "2", "email", "25", "-1", "f", "", NULL);
	put_data(b, 8, "16390", "3", "email_lc", "25", "-1", "f", "s", "lower(email)"); /* generated */
	put_data(b, 8, "16400", "1", "email", "25", "-1", "f", "", NULL);
	put_complete(b, "SELECT 7");
	put_desc(b, 2);
	put_data(b, 2, "16390", "16384");
	put_complete(b, "SELECT 1");
	put_desc(b, 2);
	put_data(b, 2, "public", "lower");
	put_data(b, 2, "public", "lower");                  /* the snapshot keeps one */
	put_data(b, 2, "public", "my_fmt");
	put_data(b, 2, "util", "version");
	put_data(b, 2, "util", bad_function ? NULL : "Mixed Case");
	put_complete(b, "SELECT 5");
	put_complete(b, "COMMIT");
	pgproto_build_ready(b, 'I');
}

static void answer(int fd, PgBuf *b)
{
	while (__atomic_load_n(&fake.hold, __ATOMIC_SEQ_CST) && !__atomic_load_n(&fake.stop, __ATOMIC_SEQ_CST))
		usleep(1000);
	switch (__atomic_load_n(&fake.mode, __ATOMIC_SEQ_CST)) {
	case FAKE_OK:
		answer_ok(b, false);
		break;
	case FAKE_SLOW:
		usleep(FAKE_SLOW_MS * 1000);
		answer_ok(b, false);
		break;
	case FAKE_BAD_FUNCTION:
		answer_ok(b, true);
		break;
	case FAKE_ERROR:
		put_complete(b, "BEGIN");
		pgproto_build_error(b, false, "ERROR", "42P01", "relation \"x\" does not exist", NULL, NULL);
		pgproto_build_ready(b, 'E');
		break;
	case FAKE_DROP:
		put_desc(b, 5);
		put_data(b, 5, "16384", "public", "users", "r", NULL);
		break;
	case FAKE_GARBAGE:
		put_desc(b, 5);
		put_data(b, 5, "not a number", "public", "users", "r", NULL);
		break;
	}
	__atomic_add_fetch(&fake.queries, 1, __ATOMIC_SEQ_CST);
	send_buf(fd, b);
	fake.answered_us = now_us();
}

/* A query arrived: how long after the last answer. */
static void note_query_gap(void)
{
	int64_t gap = fake.answered_us > 0 ? (int64_t)(now_us() - fake.answered_us) : INT64_MAX;

	if (gap < __atomic_load_n(&fake.min_gap_us, __ATOMIC_SEQ_CST))
		__atomic_store_n(&fake.min_gap_us, gap, __ATOMIC_SEQ_CST);
}

/* One client: startup, trust login, then answers until it leaves or the answer ends the connection. */
static void serve(int fd)
{
	uint8_t hdr[5], *body;
	uint32_t len;
	PgBuf b;

	pgproto_buf_init(&b);
	if (!read_full(fd, hdr, 4) || (len = get_be32(hdr)) < 8 || len > 10000 ||
	    (body = malloc(len)) == NULL)
		goto out;
	if (!read_full(fd, body, len - 4)) {
		free(body);
		goto out;
	}
	free(body);
	pgproto_build_auth(&b, PG_AUTH_OK, NULL, 0);
	pgproto_build_parameter_status(&b, "server_version", "15.0");
	pgproto_build_backend_key(&b, 1, 2);
	pgproto_build_ready(&b, 'I');
	send_buf(fd, &b);
	while (read_full(fd, hdr, 5)) {
		len = get_be32(hdr + 1);
		if (len < 4 || len > (1u << 20) || (body = malloc(len)) == NULL || !read_full(fd, body, len - 4))
			break;
		free(body);
		if (hdr[0] != 'Q')
			break;
		note_query_gap();
		answer(fd, &b);
		if (__atomic_load_n(&fake.mode, __ATOMIC_SEQ_CST) != FAKE_OK &&
		    __atomic_load_n(&fake.mode, __ATOMIC_SEQ_CST) != FAKE_SLOW)
			break; /* after a failure the client closes; close too */
	}
out:
	pgproto_buf_free(&b);
	close(fd);
}

static void *fake_main(void *arg)
{
	while (!__atomic_load_n(&fake.stop, __ATOMIC_SEQ_CST)) {
		struct pollfd p = { .fd = fake.lfd, .events = POLLIN };
		int fd;

		if (poll(&p, 1, 50) <= 0)
			continue;
		fd = accept(fake.lfd, NULL, NULL);
		if (fd < 0)
			continue;
		__atomic_add_fetch(&fake.accepted, 1, __ATOMIC_SEQ_CST);
		serve(fd);
	}
	return NULL;
}

/* A loopback listening socket on a free port. */
static int listen_any(int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

/* ---- configurations ---------------------------------------------------------------------------- */

static char dir[] = "/tmp/pgveil-test-catalog-XXXXXX";
static int refused_port;         /* nobody listens there */
static int silent_fd, silent_port; /* accepts (backlog), never speaks */
static struct event_base *base;

static void write_file(const char *name, const char *text)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/*
 * Loads a configuration whose rules file holds `rules`, with the three
 * servers (or only `only`); `extra` lines go to [pgveil].
 */
static Config *make_config_with(const char *rules, const char *only, const char *extra)
{
	char ini[2048], path[256], *errs = NULL;
	int n = 0, at;
	Config *cfg;

	write_file("masks.rules", rules);
	at = snprintf(ini, sizeof(ini),
		      "[pgveil]\nrules = %s/masks.rules\nauditor_groups = audit\nserver_connect_timeout = 1s\n%s"
		      "[databases]\n", dir, extra);
	if (only == NULL || strcmp(only, "fake") == 0)
		at += snprintf(ini + at, sizeof(ini) - (size_t)at,
			       "fake = host=127.0.0.1 port=%d dbname=x user=u sslmode=disable\n", fake.port);
	if (only == NULL || strcmp(only, "refused") == 0)
		at += snprintf(ini + at, sizeof(ini) - (size_t)at,
			       "refused = host=127.0.0.1 port=%d dbname=x user=u sslmode=disable\n", refused_port);
	if (only == NULL)
		snprintf(ini + at, sizeof(ini) - (size_t)at,
			 "silent = host=127.0.0.1 port=%d dbname=x user=u sslmode=disable connect_timeout=1\n",
			 silent_port);
	write_file("p.ini", ini);
	snprintf(path, sizeof(path), "%s/p.ini", dir);
	cfg = config_load(path, &errs, &n);
	if (cfg == NULL)
		fail_msg("config: %s", errs ? errs : "?");
	free(errs);
	return cfg;
}

static Config *make_config(const char *rules, const char *only)
{
	return make_config_with(rules, only, "catalog_refresh = 0\n"); /* loads only when asked */
}

static const char MASKS[] = "MASK public.users.email USING email();\nMASK public.users.nope USING null();\n";

static int group_setup(void **state)
{
	int fd;

	assert_non_null(mkdtemp(dir));
	fake.lfd = listen_any(&fake.port);
	fd = listen_any(&refused_port);
	close(fd);
	silent_fd = listen_any(&silent_port);
	assert_int_equal(pthread_create(&fake.thread, NULL, fake_main, NULL), 0);
	config_set_current(make_config(MASKS, NULL));
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[300];

	catalog_stop();
	config_set_current(NULL);
	__atomic_store_n(&fake.stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(fake.thread, NULL);
	close(fake.lfd);
	close(silent_fd);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return -1;
	return 0;
}

/* ---- helpers ------------------------------------------------------------------------------------ */

static void count_cb(evutil_socket_t fd, short what, void *arg)
{
	(*(int *)arg)++;
}

/* Runs the test's loop until *count reaches want, for at most `ms`. */
static bool wait_count(int *count, int want, int ms)
{
	for (int i = 0; i < ms / 10 && *count < want; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		usleep(10000);
	}
	event_base_loop(base, EVLOOP_NONBLOCK);
	return *count >= want;
}

/* The snapshot of db once there is one (a reference). */
static CatSnap *wait_snap(const char *db, uint64_t newer_than)
{
	for (int i = 0; i < 500; i++) {
		CatSnap *s = catalog_get(db);

		if (s != NULL && s->version > newer_than)
			return s;
		catalog_snap_unref(s);
		usleep(10000);
	}
	fail_msg("no snapshot of %s", db);
	return NULL;
}

static uint64_t version_of(const char *db)
{
	CatSnap *s = catalog_get(db);
	uint64_t v = s != NULL ? s->version : 0;

	catalog_snap_unref(s);
	return v;
}

/* Asks for a snapshot newer than the current one and waits for the wake; returns the new snapshot. */
static CatSnap *reload_db(const char *db)
{
	uint64_t have = version_of(db);
	int fired = 0;
	struct event *ev = event_new(base, -1, 0, count_cb, &fired);
	CatSnap *s;

	assert_true(catalog_request(db, have, ev));
	assert_true(wait_count(&fired, 1, 5000));
	event_free(ev);
	s = catalog_get(db);
	assert_non_null(s);
	assert_true(s->version > have);
	return s;
}

/* ---- tests ---------------------------------------------------------------------------------------- */

static void starts_and_reads_every_database(void **state)
{
	Config *cfg = config_current();
	CatSnap *s;
	const CatRel *rel;
	char want[160];

	assert_null(catalog_get("fake"));
	assert_false(catalog_request("fake", 0, NULL));     /* not running yet */
	assert_true(catalog_start(cfg));
	config_unref(cfg);
	s = wait_snap("fake", 0);
	assert_null(s->error);
	assert_int_equal(s->n_rels, 3);
	rel = catalog_rel(s, 16384);
	assert_non_null(rel);
	assert_string_equal(rel->schema, "public");
	assert_string_equal(rel->name, "users");
	assert_int_equal(rel->kind, 'r');
	assert_int_equal(rel->n_columns, 3);
	assert_null(rel->columns[2].name);                  /* dropped */
	assert_int_equal(rel->columns[1].type_oid, 25);
	assert_int_equal(rel->columns[1].n_masks, 1);
	assert_true(rel->columns[1].masks[0].type_ok);
	rel = catalog_rel(s, 16390);
	assert_int_equal(rel->n_parents, 1);
	assert_int_equal(rel->parents[0], 16384);
	assert_int_equal(rel->columns[1].n_masks, 1);       /* the child's column too */
	assert_false(rel->columns[1].generated);
	assert_true(rel->columns[2].generated);             /* lower(email): computed from a masked column */
	assert_string_equal(rel->columns[2].generation, "lower(email)");
	assert_int_equal(rel->columns[2].n_masks, 1);
	assert_true(rel->columns[2].masks[0].derived);
	assert_string_equal(catalog_rel(s, 16400)->viewdef, " SELECT users.email FROM public.users;");
	assert_true(s->n_problems >= 1);                    /* the missing column */
	/* the user-defined functions, overloads as one */
	assert_int_equal(s->n_functions, 4);
	assert_true(catalog_user_function(s, "public", "lower"));
	assert_true(catalog_user_function(s, NULL, "lower"));
	assert_true(catalog_user_function(s, NULL, "version"));
	assert_false(catalog_user_function(s, "public", "version"));
	assert_true(catalog_user_function(s, "util", "Mixed Case"));
	assert_false(catalog_user_function(s, NULL, "mixed case"));
	assert_false(catalog_user_function(s, NULL, "upper"));
	assert_int_equal(catalog_resolve_function(s, "lower", NULL, NULL), CAT_FN_SHADOWED);
	assert_int_equal(catalog_resolve_function(s, "pg_catalog.lower", NULL, NULL), CAT_FN_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "upper", NULL, NULL), CAT_FN_BUILTIN);
	assert_int_equal(catalog_resolve_function(s, "my_fmt", NULL, NULL), CAT_FN_NOT_BUILTIN);
	catalog_snap_unref(s);

	s = wait_snap("refused", 0);
	snprintf(want, sizeof(want),
		 "cannot read the catalog of database refused: could not connect to the server (127.0.0.1:%d): ",
		 refused_port);
	assert_non_null(s->error);
	assert_memory_equal(s->error, want, strlen(want));
	assert_int_equal(s->n_rels, 0);
	catalog_snap_unref(s);

	s = wait_snap("silent", 0);                         /* connect_timeout = 1s: never blocks */
	assert_non_null(strstr(s->error, "timeout"));
	catalog_snap_unref(s);
	assert_int_equal(__atomic_load_n(&fake.accepted, __ATOMIC_SEQ_CST), 1);
}

static void requests_wake_at_once_or_after_the_next_load(void **state)
{
	int fired = 0, queries = __atomic_load_n(&fake.queries, __ATOMIC_SEQ_CST);
	struct event *ev = event_new(base, -1, 0, count_cb, &fired);
	uint64_t v = version_of("fake");
	CatSnap *s;

	assert_true(v > 0);
	/* a newer snapshot than `have` exists: woken at once, nothing loaded */
	assert_true(catalog_request("fake", 0, ev));
	assert_true(catalog_request("fake", v - 1, ev));
	assert_true(wait_count(&fired, 1, 0));
	assert_int_equal(__atomic_load_n(&fake.queries, __ATOMIC_SEQ_CST), queries);
	/* none newer: the next load wakes it, on the same connection */
	fired = 0;
	assert_true(catalog_request("fake", v, ev));
	assert_true(wait_count(&fired, 1, 5000));
	s = catalog_get("fake");
	assert_true(s->version > v);
	assert_null(s->error);
	catalog_snap_unref(s);
	assert_int_equal(__atomic_load_n(&fake.queries, __ATOMIC_SEQ_CST), queries + 1);
	assert_int_equal(__atomic_load_n(&fake.accepted, __ATOMIC_SEQ_CST), 1);
	/* unknown databases cannot be asked for */
	assert_false(catalog_request("nosuch", 0, ev));
	assert_null(catalog_get("nosuch"));
	assert_null(catalog_get(NULL));
	event_free(ev);
}

static void requests_are_merged(void **state)
{
	int fired[4] = { 0 };
	struct event *ev[4];
	uint64_t v = version_of("fake");

	for (int i = 0; i < 4; i++) {
		ev[i] = event_new(base, -1, 0, count_cb, &fired[i]);
		assert_true(catalog_request("fake", v, ev[i]));
		assert_true(catalog_request("fake", v, ev[i])); /* the same event twice: one wake */
	}
	for (int i = 0; i < 4; i++)
		assert_true(wait_count(&fired[i], 1, 5000));
	usleep(100000);
	event_base_loop(base, EVLOOP_NONBLOCK);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(fired[i], 1);
		event_free(ev[i]);
	}
	/* at most two loads served four requests */
	assert_true(version_of("fake") - v <= 2);
}

static void failures_are_published_and_the_next_load_reconnects(void **state)
{
	int accepted = __atomic_load_n(&fake.accepted, __ATOMIC_SEQ_CST);
	CatSnap *s;

	__atomic_store_n(&fake.mode, FAKE_ERROR, __ATOMIC_SEQ_CST);
	s = reload_db("fake");
	assert_string_equal(s->error, "cannot read the catalog of database fake: the catalog query failed: "
				      "relation \"x\" does not exist (SQLSTATE 42P01)");
	catalog_snap_unref(s);

	__atomic_store_n(&fake.mode, FAKE_DROP, __ATOMIC_SEQ_CST);
	s = reload_db("fake");
	assert_non_null(strstr(s->error, "cannot read the catalog of database fake: connection lost"));
	catalog_snap_unref(s);

	__atomic_store_n(&fake.mode, FAKE_GARBAGE, __ATOMIC_SEQ_CST);
	s = reload_db("fake");
	assert_string_equal(s->error, "cannot read the catalog of database fake: unexpected value in a catalog row");
	catalog_snap_unref(s);

	__atomic_store_n(&fake.mode, FAKE_BAD_FUNCTION, __ATOMIC_SEQ_CST);
	s = reload_db("fake");
	assert_string_equal(s->error, "cannot read the catalog of database fake: unexpected value in a catalog row");
	catalog_snap_unref(s);

	__atomic_store_n(&fake.mode, FAKE_OK, __ATOMIC_SEQ_CST);
	s = reload_db("fake");
	assert_null(s->error);
	assert_int_equal(s->n_rels, 3);
	catalog_snap_unref(s);
	/* the first load ran on the idle connection; each failure closed it: four new ones */
	assert_int_equal(__atomic_load_n(&fake.accepted, __ATOMIC_SEQ_CST), accepted + 4);
}

static void forgotten_events_are_never_woken(void **state)
{
	int gone = 0, kept = 0;
	struct event *ev_gone = event_new(base, -1, 0, count_cb, &gone), *ev_kept = event_new(base, -1, 0, count_cb, &kept);

	for (int round = 0; round < 20; round++) {
		uint64_t v = version_of("fake");

		/* no answer before the forget: a load that ends first would rightly wake ev_gone */
		__atomic_store_n(&fake.hold, 1, __ATOMIC_SEQ_CST);
		assert_true(catalog_request("fake", v, ev_gone));
		assert_true(catalog_request("fake", v, ev_kept));
		catalog_forget(ev_gone);
		__atomic_store_n(&fake.hold, 0, __ATOMIC_SEQ_CST);
		assert_true(wait_count(&kept, round + 1, 5000));
	}
	usleep(50000);
	event_base_loop(base, EVLOOP_NONBLOCK);
	assert_int_equal(gone, 0);
	catalog_forget(ev_gone); /* nothing queued: harmless */
	event_free(ev_gone);
	event_free(ev_kept);
}

/* ---- SHOW MASKS ---------------------------------------------------------------------------------------- */

typedef struct Rows {
	int n;
	char *v[16][7];
	bool error;
} Rows;

static Rows *show_masks(const char *group)
{
	char *groups[] = { (char *)group };
	Identity id = { .subject = "someone", .groups = groups, .n_groups = 1 };
	Config *cfg = config_current();
	AdminConsole *ac = admin_open(&id, admin_roles(cfg, &id), 1, NULL);
	Rows *rows = calloc(1, sizeof(Rows));
	PgBuf out;
	PgReader r;

	config_unref(cfg);
	assert_non_null(ac);
	pgproto_buf_init(&out);
	admin_query(ac, "SHOW MASKS", &out);
	assert_true(pgproto_buf_ok(&out));
	for (size_t at = 0; at < out.len;) {
		uint8_t type = out.data[at];
		uint32_t len = get_be32(out.data + at + 1);
		int16_t n;

		pgproto_reader_init(&r, out.data + at + 5, len - 4);
		rows->error |= type == 'E';
		if (type == 'D' && rows->n < 16) {
			assert_true(pgproto_get_int16(&r, &n) && n == 7);
			for (int i = 0; i < 7; i++) {
				int32_t flen;
				const uint8_t *p;

				assert_true(pgproto_get_int32(&r, &flen));
				if (flen < 0)
					continue;
				assert_true(pgproto_get_bytes(&r, (size_t)flen, &p));
				rows->v[rows->n][i] = strndup((const char *)p, (size_t)flen);
			}
			rows->n++;
		}
		at += 1 + len;
	}
	pgproto_buf_free(&out);
	admin_close(ac);
	return rows;
}

static void rows_free(Rows *rows)
{
	for (int i = 0; i < rows->n; i++)
		for (int j = 0; j < 7; j++)
			free(rows->v[i][j]);
	free(rows);
}

static bool str_eq(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

static void show_masks_lists_reached_columns_and_failures(void **state)
{
	Rows *rows = show_masks("audit");
	char rule1[300], rule2[300];
	int users = -1, old = -1, nope = -1, refused = -1;

	snprintf(rule1, sizeof(rule1), "%s/masks.rules:1", dir);
	snprintf(rule2, sizeof(rule2), "%s/masks.rules:2", dir);
	assert_false(rows->error);
	for (int i = 0; i < rows->n; i++) {
		char **v = rows->v[i];

		if (str_eq(v[0], "fake") && str_eq(v[1], "public.users") && str_eq(v[2], "email"))
			users = i;
		else if (str_eq(v[0], "fake") && str_eq(v[1], "public.users_old") && str_eq(v[2], "email"))
			old = i;
		else if (str_eq(v[0], "fake") && str_eq(v[3], rule2))
			nope = i;
		else if (str_eq(v[0], "refused"))
			refused = i;
	}
	assert_true(users >= 0 && old >= 0 && nope >= 0 && refused >= 0);
	assert_string_equal(rows->v[users][3], rule1);
	assert_string_equal(rows->v[users][4], "email()");
	assert_string_equal(rows->v[users][5], "f");
	assert_string_equal(rows->v[users][6], "");
	assert_true(users < old);                            /* relations by name */
	assert_string_equal(rows->v[nope][1], "public.users");
	assert_string_equal(rows->v[nope][2], "nope");
	assert_null(rows->v[nope][5]);
	assert_non_null(strstr(rows->v[nope][6], "nope"));
	assert_null(rows->v[refused][1]);
	assert_null(rows->v[refused][3]);
	assert_non_null(strstr(rows->v[refused][6], "cannot read the catalog of database refused: "));
	rows_free(rows);
	/* approvers may not */
	rows = show_masks("dba");
	assert_true(rows->error);
	assert_int_equal(rows->n, 0);
	rows_free(rows);
}

/* ---- periodic refresh ----------------------------------------------------------------------------------- */

/* Waits up to `ms` for a snapshot of db newer than `v`, asking for none; returns its version or 0. */
static uint64_t wait_newer(const char *db, uint64_t v, int ms)
{
	for (int i = 0; i < ms / 10; i++) {
		uint64_t now = version_of(db);

		if (now > v)
			return now;
		usleep(10000);
	}
	return 0;
}

static void refresh_reads_again_without_piling_up(void **state)
{
	Config *cfg = make_config_with(MASKS, "fake", "catalog_refresh = 1s\n");
	uint64_t v;
	int queries;
	CatSnap *s;

	__atomic_store_n(&fake.mode, FAKE_OK, __ATOMIC_SEQ_CST);
	v = version_of("fake");
	config_set_current(config_ref(cfg));
	catalog_reconfigure(cfg);                              /* a load now, then one every second */
	config_unref(cfg);
	assert_true((v = wait_newer("fake", v, 5000)) > 0);
	/* nobody asks: the timer loads it again, twice within a few seconds */
	assert_true((v = wait_newer("fake", v, 3000)) > 0);
	assert_true((v = wait_newer("fake", v, 3000)) > 0);
	s = catalog_get("fake");
	assert_null(s->error);
	assert_int_equal(s->n_rels, 3);
	assert_int_equal(s->n_functions, 4);
	catalog_snap_unref(s);

	/*
	 * A load takes 1.3 s, longer than the interval: a tick during a load
	 * starts nothing, so the next query comes at the next tick after the
	 * answer (0.7 s later), never right after it.
	 */
	__atomic_store_n(&fake.mode, FAKE_SLOW, __ATOMIC_SEQ_CST);
	v = wait_newer("fake", version_of("fake"), 5000);     /* the first slow load (or the one before) */
	assert_true(v > 0);
	__atomic_store_n(&fake.min_gap_us, INT64_MAX, __ATOMIC_SEQ_CST);
	queries = __atomic_load_n(&fake.queries, __ATOMIC_SEQ_CST);
	assert_true((v = wait_newer("fake", v, 5000)) > 0);
	assert_true((v = wait_newer("fake", v, 5000)) > 0);
	assert_true(__atomic_load_n(&fake.queries, __ATOMIC_SEQ_CST) >= queries + 2);
	if (__atomic_load_n(&fake.min_gap_us, __ATOMIC_SEQ_CST) < 250000)
		fail_msg("a load started %lld ms after the previous answer: loads pile up",
			 (long long)__atomic_load_n(&fake.min_gap_us, __ATOMIC_SEQ_CST) / 1000);
	__atomic_store_n(&fake.mode, FAKE_OK, __ATOMIC_SEQ_CST);

	/* catalog_refresh = 0: no more loads unless asked */
	cfg = make_config_with(MASKS, "fake", "catalog_refresh = 0\n");
	config_set_current(config_ref(cfg));
	catalog_reconfigure(cfg);
	config_unref(cfg);
	assert_true((v = wait_newer("fake", v, 5000)) > 0);    /* the reload's own load (after a slow one, maybe) */
	v = version_of("fake");
	queries = __atomic_load_n(&fake.queries, __ATOMIC_SEQ_CST);
	usleep(2500000);
	assert_int_equal(version_of("fake"), v);
	assert_int_equal(__atomic_load_n(&fake.queries, __ATOMIC_SEQ_CST), queries);
}

/* ---- reconfiguration ---------------------------------------------------------------------------------- */

static void reload_follows_rules_and_databases(void **state)
{
	Config *cfg = make_config("ALLOW ALL;\n", NULL);
	int fired = 0;
	struct event *ev = event_new(base, -1, 0, count_cb, &fired);
	uint64_t v = version_of("fake");
	CatSnap *s;

	/* a waiting request is woken when the thread stops */
	assert_true(catalog_request("fake", v, ev));
	config_set_current(config_ref(cfg));
	catalog_reconfigure(cfg);                              /* no MASK rules: the thread stops */
	config_unref(cfg);
	assert_true(wait_count(&fired, 1, 5000));
	assert_null(catalog_get("fake"));
	assert_false(catalog_request("fake", 0, ev));
	catalog_stop();                                        /* stopped already: harmless */

	cfg = make_config("MASK public.users_old.id USING null();\n", "fake");
	config_set_current(config_ref(cfg));
	catalog_reconfigure(cfg);                              /* MASK rules again: it starts */
	config_unref(cfg);
	s = wait_snap("fake", 0);
	assert_null(s->error);
	assert_int_equal(catalog_rel(s, 16384)->columns[1].n_masks, 0);
	assert_int_equal(catalog_rel(s, 16390)->columns[0].n_masks, 1);
	catalog_snap_unref(s);
	assert_null(catalog_get("refused"));                 /* not configured any more */
	assert_false(catalog_request("refused", 0, ev));

	/* the same rules, another database: the old one goes, the new one is read */
	cfg = make_config("MASK public.users_old.id USING null();\n", "refused");
	config_set_current(config_ref(cfg));
	v = version_of("fake");
	catalog_reconfigure(cfg);
	config_unref(cfg);
	assert_null(catalog_get("fake"));
	s = wait_snap("refused", v);
	assert_non_null(s->error);
	catalog_snap_unref(s);
	event_free(ev);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(starts_and_reads_every_database),
		cmocka_unit_test(requests_wake_at_once_or_after_the_next_load),
		cmocka_unit_test(requests_are_merged),
		cmocka_unit_test(failures_are_published_and_the_next_load_reconnects),
		cmocka_unit_test(forgotten_events_are_never_woken),
		cmocka_unit_test(show_masks_lists_reached_columns_and_failures),
		cmocka_unit_test(refresh_reads_again_without_piling_up),
		cmocka_unit_test(reload_follows_rules_and_databases),
	};
	int rc;

	log_setup(LL_ERROR, false);
	if (evthread_use_pthreads() != 0 || (base = event_base_new()) == NULL)
		return 1;
	rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
	event_base_free(base);
	libevent_global_shutdown();
	return rc;
}
