/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the approval registry: held statements are submitted with a
 * real libevent event that must fire exactly when a decision arrives;
 * decisions, refusals (unknown id, decided twice, self-approval) and
 * withdrawals; a decision racing a withdrawal from two threads; grants that
 * cover exactly the same subject and rule and a subset of the tables, expire
 * and can be revoked; blocked agents with and without expiry; and the
 * bounded memory of decided entries.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "pgveil/approval.h"
#include "pgveil/log.h"

static struct event_base *base;

typedef struct Waiter {
	struct event *ev;
	int fired;
} Waiter;

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	((Waiter *)arg)->fired++;
}

static void waiter_init(Waiter *w)
{
	w->fired = 0;
	w->ev = event_new(base, -1, 0, wake_cb, w);
	assert_non_null(w->ev);
}

/* Runs the loop once without blocking: delivers activated events. */
static void deliver(void)
{
	event_base_loop(base, EVLOOP_NONBLOCK);
}

/* The fingerprint of the statements submit() holds. */
#define SHAPE 0x5eedf00dULL

static uint64_t submit(const char *subject, const char *rule, int n_tables, const char *const *tables, Waiter *w)
{
	HoldSpec spec = { .session_id = 7,
			  .subject = subject,
			  .database = "app",
			  .sql = "DELETE FROM orders WHERE id = 1",
			  .rule = rule,
			  .rule_text = rule ? "HOLD DELETE" : NULL,
			  .n_tables = n_tables,
			  .tables = tables,
			  .shape = SHAPE };
	uint64_t id;

	waiter_init(w);
	id = approval_submit(&spec, w->ev);
	assert_true(id > 0);
	return id;
}

static int teardown(void **state)
{
	approval_shutdown();
	return 0;
}

/* ---- decisions ---------------------------------------------------------------------- */

static void approve_wakes_the_session(void **state)
{
	static const char *const tables[] = { "public.orders" };
	Waiter w;
	uint64_t id = submit("bot", "a.rules:3", 1, tables, &w);
	char err[256] = "", *reason = (char *)1;
	HeldInfo *h;

	assert_int_equal(approval_state(id, NULL), HOLD_WAITING);
	deliver();
	assert_int_equal(w.fired, 0);
	assert_true(approval_decide(id, true, "alice", NULL, 0, err, sizeof(err)));
	deliver();
	assert_int_equal(w.fired, 1);
	assert_int_equal(approval_state(id, &reason), HOLD_APPROVED);
	assert_null(reason);
	assert_int_equal(approval_get(id, &h), 1);
	assert_string_equal(h->decided_by, "alice");
	assert_string_equal(h->subject, "bot");
	assert_string_equal(h->rule, "a.rules:3");
	assert_string_equal(h->tables, "public.orders");
	assert_int_equal(h->session_id, 7);
	assert_true(h->decided_at >= h->held_at && h->decided_at > 0);
	assert_int_equal(h->grant_until, 0);
	approval_free_held(h, 1);
	/* a second decision is refused and does not wake anyone again */
	assert_false(approval_decide(id, false, "carol", NULL, 0, err, sizeof(err)));
	assert_non_null(strstr(err, " was already approved"));
	deliver();
	assert_int_equal(w.fired, 1);
	event_free(w.ev);
}

static void deny_keeps_the_reason(void **state)
{
	Waiter w;
	uint64_t id = submit("bot", NULL, 0, NULL, &w);
	char err[256], *reason = NULL;

	assert_true(approval_decide(id, false, "alice", "not during business hours", 0, err, sizeof(err)));
	deliver();
	assert_int_equal(w.fired, 1);
	assert_int_equal(approval_state(id, &reason), HOLD_DENIED);
	assert_string_equal(reason, "not during business hours");
	free(reason);
	/* a grant is never made by a denial */
	assert_false(approval_grant_covers("bot", NULL, NULL, 0, NULL, SHAPE, NULL));
	event_free(w.ev);
}

static void refusals(void **state)
{
	Waiter w;
	uint64_t id = submit("alice", NULL, 0, NULL, &w);
	char err[256], want[64];
	HeldInfo *h = (HeldInfo *)1;

	assert_false(approval_decide(id + 1000, true, "bob", NULL, 0, err, sizeof(err)));
	snprintf(want, sizeof(want), "no held statement %llu", (unsigned long long)(id + 1000));
	assert_string_equal(err, want);
	assert_int_equal(approval_state(id + 1000, NULL), HOLD_CANCELED); /* unknown: never runs */
	assert_int_equal(approval_get(id + 1000, &h), 0);
	assert_null(h);
	/* approvers cannot approve their own statements... */
	assert_false(approval_decide(id, true, "alice", NULL, 0, err, sizeof(err)));
	assert_string_equal(err, "approvers cannot approve their own statements");
	assert_int_equal(approval_state(id, NULL), HOLD_WAITING);
	deliver();
	assert_int_equal(w.fired, 0);
	/* ... but may deny them */
	assert_true(approval_decide(id, false, "alice", NULL, 0, err, sizeof(err)));
	deliver();
	assert_int_equal(w.fired, 1);
	assert_int_equal(approval_state(id, NULL), HOLD_DENIED);
	event_free(w.ev);
}

static void withdraw(void **state)
{
	Waiter w1, w2;
	uint64_t a = submit("bot", NULL, 0, NULL, &w1), b = submit("bot", NULL, 0, NULL, &w2);
	char err[256];

	assert_int_equal(approval_withdraw(a, HOLD_TIMEOUT), HOLD_TIMEOUT);
	assert_int_equal(approval_state(a, NULL), HOLD_TIMEOUT);
	assert_false(approval_decide(a, true, "alice", NULL, 0, err, sizeof(err)));
	assert_non_null(strstr(err, " already timed out"));
	/* withdrawing twice keeps the first outcome */
	assert_int_equal(approval_withdraw(a, HOLD_CANCELED), HOLD_TIMEOUT);
	/* a decision that arrived first wins */
	assert_true(approval_decide(b, true, "alice", NULL, 0, err, sizeof(err)));
	assert_int_equal(approval_withdraw(b, HOLD_CANCELED), HOLD_APPROVED);
	deliver();
	assert_int_equal(w1.fired, 0);
	assert_int_equal(w2.fired, 1);
	/* withdrawn with anything else counts as canceled */
	event_free(w1.ev);
	event_free(w2.ev);
	{
		Waiter w3;
		uint64_t c = submit("bot", NULL, 0, NULL, &w3);

		assert_int_equal(approval_withdraw(c, HOLD_APPROVED), HOLD_CANCELED);
		assert_false(approval_decide(c, false, "alice", NULL, 0, err, sizeof(err)));
		assert_non_null(strstr(err, " was already canceled"));
		event_free(w3.ev);
	}
}

static void list_held(void **state)
{
	Waiter w[3];
	uint64_t ids[3];
	HeldInfo *list;
	char err[256];
	int n;

	for (int i = 0; i < 3; i++)
		ids[i] = submit(i == 1 ? "other" : "bot", NULL, 0, NULL, &w[i]);
	assert_true(approval_decide(ids[1], false, "alice", NULL, 0, err, sizeof(err)));
	n = approval_list_held(&list);
	assert_int_equal(n, 2);
	assert_int_equal(list[0].id, ids[0]);
	assert_int_equal(list[1].id, ids[2]);
	assert_int_equal(list[0].state, HOLD_WAITING);
	assert_string_equal(list[0].sql, "DELETE FROM orders WHERE id = 1");
	assert_string_equal(list[0].database, "app");
	assert_null(list[0].rule);
	assert_null(list[0].decided_by);
	approval_free_held(list, n);
	for (int i = 0; i < 3; i++) {
		(void)approval_withdraw(ids[i], HOLD_CANCELED);
		event_free(w[i].ev);
	}
	assert_int_equal(approval_list_held(&list), 0);
	assert_null(list);
}

/* ---- a decision racing a withdrawal ---------------------------------------------------- */

typedef struct Race {
	pthread_barrier_t go;
	uint64_t id;
	bool decided;
	HoldState withdrawn;
} Race;

static void *race_decider(void *arg)
{
	Race *r = arg;
	char err[256];

	pthread_barrier_wait(&r->go);
	r->decided = approval_decide(r->id, true, "alice", NULL, 0, err, sizeof(err));
	return NULL;
}

static void *race_withdrawer(void *arg)
{
	Race *r = arg;

	pthread_barrier_wait(&r->go);
	r->withdrawn = approval_withdraw(r->id, HOLD_TIMEOUT);
	return NULL;
}

static void decide_races_withdraw(void **state)
{
	int decisions = 0, timeouts = 0;

	for (int i = 0; i < 300; i++) {
		Race r = { 0 };
		pthread_t a, b;
		Waiter w;

		r.id = submit("bot", NULL, 0, NULL, &w);
		pthread_barrier_init(&r.go, NULL, 2);
		pthread_create(&a, NULL, race_decider, &r);
		pthread_create(&b, NULL, race_withdrawer, &r);
		pthread_join(a, NULL);
		pthread_join(b, NULL);
		pthread_barrier_destroy(&r.go);
		deliver();
		/* exactly one side won, and both agree on which */
		if (r.decided) {
			assert_int_equal(r.withdrawn, HOLD_APPROVED);
			assert_int_equal(w.fired, 1);
			decisions++;
		} else {
			assert_int_equal(r.withdrawn, HOLD_TIMEOUT);
			assert_int_equal(w.fired, 0);
			timeouts++;
		}
		assert_int_equal(approval_state(r.id, NULL), r.withdrawn);
		event_free(w.ev);
	}
	assert_int_equal(decisions + timeouts, 300);
	printf("race: %d decisions first, %d withdrawals first\n", decisions, timeouts);
}

/* ---- grants ------------------------------------------------------------------------------ */

static uint64_t approve_for(const char *subject, const char *rule, int n, const char *const *tables,
			    uint64_t seconds)
{
	Waiter w;
	uint64_t id = submit(subject, rule, n, tables, &w);
	char err[256];

	assert_true(approval_decide(id, true, "alice", NULL, seconds, err, sizeof(err)));
	deliver();
	assert_int_equal(w.fired, 1);
	event_free(w.ev);
	return id;
}

static void grants_cover_exactly(void **state)
{
	static const char *const ab[] = { "public.a", "public.b" };
	static const char *const a[] = { "public.a" };
	static const char *const ba[] = { "public.b", "public.a" };
	static const char *const c[] = { "public.c" };
	static const char *const ac[] = { "public.a", "public.c" };
	static const char *const unqualified[] = { "a" };
	uint64_t approval = approve_for("bot", "r.rules:3", 2, ab, 600), gid = 0;
	GrantInfo *g;
	HeldInfo *h;
	int n;

	assert_true(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 1, a, SHAPE, &gid));
	assert_true(gid > 0);
	assert_true(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 2, ab, SHAPE, NULL));
	assert_true(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 2, ba, SHAPE, NULL));
	assert_false(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 1, c, SHAPE, NULL));
	assert_false(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 2, ac, SHAPE, NULL));
	assert_false(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 1, unqualified, SHAPE, NULL));
	assert_false(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 0, NULL, SHAPE, NULL)); /* no tables: not a subset here */
	assert_false(approval_grant_covers("bot2", "r.rules:3", "HOLD DELETE", 1, a, SHAPE, NULL));
	assert_false(approval_grant_covers("bo", "r.rules:3", "HOLD DELETE", 1, a, SHAPE, NULL));
	assert_false(approval_grant_covers("bot", "r.rules:4", "HOLD DELETE", 1, a, SHAPE, NULL));
	/* a reload that puts another rule on the same line does not inherit the grant */
	assert_false(approval_grant_covers("bot", "r.rules:3", "HOLD DDL", 1, a, SHAPE, NULL));
	assert_false(approval_grant_covers("bot", NULL, NULL, 1, a, SHAPE, NULL));
	assert_false(approval_grant_covers("", "r.rules:3", "HOLD DELETE", 1, a, SHAPE, NULL));

	n = approval_list_grants(&g);
	assert_int_equal(n, 1);
	assert_int_equal(g[0].id, gid);
	assert_int_equal(g[0].approval_id, approval);
	assert_string_equal(g[0].subject, "bot");
	assert_string_equal(g[0].rule, "r.rules:3");
	assert_string_equal(g[0].tables, "public.a,public.b");
	assert_string_equal(g[0].granted_by, "alice");
	assert_true(g[0].until >= time(NULL) + 598 && g[0].until <= time(NULL) + 600);
	approval_free_grants(g, n);
	assert_int_equal(approval_get(approval, &h), 1);
	assert_true(h->grant_until > 0);
	approval_free_held(h, 1);

	assert_true(approval_revoke_grant(gid));
	assert_false(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 1, a, SHAPE, NULL));
	assert_false(approval_revoke_grant(gid));
	assert_int_equal(approval_list_grants(&g), 0);
}

/*
 * A grant from a statement touching no table (whose tables are known: one
 * running code pgveil cannot see is submitted with no_grant, below) covers
 * statements touching none.
 */
static void grants_without_tables_or_rule(void **state)
{
	static const char *const a[] = { "public.a" };

	approve_for("bot", NULL, 0, NULL, 600); /* default_action, no tables (e.g. VACUUM) */
	assert_true(approval_grant_covers("bot", NULL, NULL, 0, NULL, SHAPE, NULL));
	/* only the same statement: another that touches no table (ALTER SYSTEM) is not covered */
	assert_false(approval_grant_covers("bot", NULL, NULL, 0, NULL, SHAPE + 1, NULL));
	assert_false(approval_grant_covers("bot", NULL, NULL, 0, NULL, 0, NULL));
	assert_false(approval_grant_covers("bot", NULL, NULL, 1, a, SHAPE, NULL));
	assert_false(approval_grant_covers("bot", "r.rules:1", "HOLD DELETE", 0, NULL, SHAPE, NULL));
	/* an approval without FOR makes no grant */
	approve_for("other", NULL, 0, NULL, 0);
	assert_false(approval_grant_covers("other", NULL, NULL, 0, NULL, SHAPE, NULL));
}

/*
 * A statement whose tables cannot be known (DO, CALL, a function not built
 * in; an unqualified name after the search_path may have changed) is
 * approved once by APPROVE ... FOR: no grant, so the next needs its own approval.
 */
static void grants_never_from_unknown_tables(void **state)
{
	static const char *const why = "it runs code whose tables pgveil cannot know";
	HoldSpec spec = { .session_id = 7, .subject = "bot", .database = "app", .sql = "DO $$ BEGIN PERFORM 1; END $$",
			  .rule = "r.rules:5", .rule_text = "HOLD WRITE, PROCEDURAL", .no_grant = why };
	GrantInfo *g;
	HeldInfo *h;
	Waiter w;
	char err[256];
	uint64_t id;

	waiter_init(&w);
	id = approval_submit(&spec, w.ev);
	assert_true(id > 0);
	assert_true(approval_decide(id, true, "alice", NULL, 600, err, sizeof(err)));
	deliver();
	assert_int_equal(w.fired, 1);
	event_free(w.ev);
	assert_int_equal(approval_state(id, NULL), HOLD_APPROVED);
	assert_int_equal(approval_list_grants(&g), 0);
	assert_false(approval_grant_covers("bot", "r.rules:5", "HOLD WRITE, PROCEDURAL", 0, NULL, SHAPE, NULL));
	assert_int_equal(approval_get(id, &h), 1);
	assert_string_equal(h->no_grant, why);
	assert_int_equal(h->grant_until, 0);
	approval_free_held(h, 1);
}

static void grants_expire(void **state)
{
	static const char *const a[] = { "public.a" };
	GrantInfo *g;
	time_t start = time(NULL);

	approve_for("bot", "r.rules:3", 1, a, 1);
	if (time(NULL) == start) /* still inside the second it was made */
		assert_true(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 1, a, SHAPE, NULL));
	while (time(NULL) <= start + 1)
		usleep(50 * 1000);
	assert_false(approval_grant_covers("bot", "r.rules:3", "HOLD DELETE", 1, a, SHAPE, NULL));
	assert_int_equal(approval_list_grants(&g), 0);
}

/* ---- blocked agents ----------------------------------------------------------------------- */

static void block_and_unblock(void **state)
{
	BlockedInfo *b;
	int n;

	assert_false(approval_agent_blocked("ci-bot"));
	assert_true(approval_block_agent("ci-bot", 0));
	assert_true(approval_agent_blocked("ci-bot"));
	assert_false(approval_agent_blocked("ci-bot2"));
	assert_false(approval_agent_blocked(""));
	assert_false(approval_agent_blocked(NULL));
	assert_true(approval_block_agent("other", time(NULL) + 3600));
	n = approval_list_blocked(&b);
	assert_int_equal(n, 2);
	for (int i = 0; i < n; i++) {
		if (strcmp(b[i].subject, "ci-bot") == 0)
			assert_int_equal(b[i].until, 0);
		else
			assert_true(b[i].until > time(NULL));
	}
	approval_free_blocked(b, n);
	/* blocking again replaces the end */
	assert_true(approval_block_agent("ci-bot", time(NULL) + 60));
	n = approval_list_blocked(&b);
	for (int i = 0; i < n; i++)
		if (strcmp(b[i].subject, "ci-bot") == 0)
			assert_true(b[i].until > 0);
	approval_free_blocked(b, n);
	assert_true(approval_unblock_agent("ci-bot"));
	assert_false(approval_agent_blocked("ci-bot"));
	assert_false(approval_unblock_agent("ci-bot"));
	assert_true(approval_agent_blocked("other"));
}

static void blocks_expire(void **state)
{
	time_t start = time(NULL);
	BlockedInfo *b;

	assert_true(approval_block_agent("past", start - 1));
	assert_false(approval_agent_blocked("past"));
	assert_true(approval_block_agent("brief", start + 1));
	if (time(NULL) <= start)
		assert_true(approval_agent_blocked("brief"));
	while (time(NULL) <= start + 1)
		usleep(50 * 1000);
	assert_false(approval_agent_blocked("brief"));
	assert_false(approval_unblock_agent("brief"));
	assert_int_equal(approval_list_blocked(&b), 0);
}

/* ---- bounded memory ------------------------------------------------------------------------ */

static void decided_entries_are_bounded(void **state)
{
	Waiter old;
	uint64_t waiting = submit("bot", NULL, 0, NULL, &old), first = 0, last = 0;
	char err[256];

	for (int i = 0; i < APPROVAL_KEEP_DECIDED + 10; i++) {
		Waiter w;
		uint64_t id = submit("bot", NULL, 0, NULL, &w);

		if (i == 0)
			first = id;
		last = id;
		assert_true(approval_decide(id, true, "alice", NULL, 0, err, sizeof(err)));
		event_free(w.ev); /* activated but never run: freeing it is allowed */
	}
	/* the oldest decisions are forgotten (and read as canceled), the newest kept */
	assert_int_equal(approval_state(first, NULL), HOLD_CANCELED);
	assert_int_equal(approval_state(last, NULL), HOLD_APPROVED);
	assert_int_equal(approval_state(last - APPROVAL_KEEP_DECIDED + 1, NULL), HOLD_APPROVED);
	/* a statement still waiting is never forgotten */
	assert_int_equal(approval_state(waiting, NULL), HOLD_WAITING);
	/* a decision on an old id that arrives late is kept too */
	assert_true(approval_decide(waiting, false, "alice", "late", 0, err, sizeof(err)));
	assert_int_equal(approval_state(waiting, NULL), HOLD_DENIED);
	deliver();
	assert_int_equal(old.fired, 1);
	event_free(old.ev);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(approve_wakes_the_session, teardown),
		cmocka_unit_test_teardown(deny_keeps_the_reason, teardown),
		cmocka_unit_test_teardown(refusals, teardown),
		cmocka_unit_test_teardown(withdraw, teardown),
		cmocka_unit_test_teardown(list_held, teardown),
		cmocka_unit_test_teardown(decide_races_withdraw, teardown),
		cmocka_unit_test_teardown(grants_cover_exactly, teardown),
		cmocka_unit_test_teardown(grants_without_tables_or_rule, teardown),
		cmocka_unit_test_teardown(grants_never_from_unknown_tables, teardown),
		cmocka_unit_test_teardown(grants_expire, teardown),
		cmocka_unit_test_teardown(block_and_unblock, teardown),
		cmocka_unit_test_teardown(blocks_expire, teardown),
		cmocka_unit_test_teardown(decided_entries_are_bounded, teardown),
	};
	int rc;

	log_setup(LL_ERROR, false);
	if (evthread_use_pthreads() != 0)
		return 1;
	base = event_base_new();
	if (base == NULL)
		return 1;
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	approval_shutdown();
	event_base_free(base);
	libevent_global_shutdown();
	return rc;
}
