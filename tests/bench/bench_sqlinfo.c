/* SPDX-License-Identifier: MIT */
/*
 * Micro-benchmark of statement analysis: ns per sqlinfo_analyze() for the
 * pgbench select with a varying literal, without the cache (every call a
 * full lex + parse + walk), with it (shape hits), and for one repeated text
 * (exact hits); the same for a larger statement. Not a test: build with
 * `make tests/bench/bench_sqlinfo` in a build without sanitizers, run it,
 * read the numbers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgveil/sqlinfo.h"

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* ns per call over `n` calls; `vary` puts a different number for the "#" of `tmpl` in each text. */
static double run(const char *tmpl, int n, int vary)
{
	const char *hole = strchr(tmpl, '#');
	char sql[4096];
	double t0;
	int i;

	t0 = now_ns();
	for (i = 0; i < n; i++) {
		int len = snprintf(sql, sizeof(sql), "%.*s%d%s", (int)(hole - tmpl), tmpl,
				   vary ? 10000 + i % 90000 : 12345, hole + 1);
		StmtInfo *info = sqlinfo_analyze(sql, (size_t)len);

		if (info == NULL || info->error != NULL) {
			fprintf(stderr, "analysis failed: %s\n", sql);
			exit(1);
		}
		sqlinfo_unref(info);
	}
	return (now_ns() - t0) / n;
}

static void bench(const char *name, const char *tmpl, int n)
{
	double cold, shape, exact;
	unsigned long long hits;

	sqlinfo_set_cache_capacity(0);
	(void)run(tmpl, n / 10, 1);
	cold = run(tmpl, n, 1);
	sqlinfo_set_cache_capacity(4096);
	(void)run(tmpl, 10, 1);
	hits = (unsigned long long)sqlinfo_cache_hits();
	shape = run(tmpl, n, 1);
	hits = (unsigned long long)sqlinfo_cache_hits() - hits;
	exact = run(tmpl, n, 0);
	printf("%-10s cold %7.0f ns   warm, varying literal %6.0f ns (%llu/%d hits)   warm, same text %5.0f ns\n",
	       name, cold, shape, hits, n, exact);
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 200000;

	bench("pgbench", "SELECT abalance FROM pgbench_accounts WHERE aid = #;", n);
	bench("join+cte",
	      "WITH recent AS (SELECT o.id, o.user_id, o.total FROM orders o WHERE o.created_at > now() - "
	      "interval '7 days' AND o.total > #) SELECT u.id, u.email, count(*), sum(r.total) FROM users u "
	      "JOIN recent r ON r.user_id = u.id LEFT JOIN addresses a ON a.user_id = u.id AND a.kind = 'home' "
	      "WHERE u.active AND lower(u.email) LIKE '%@example.com' GROUP BY u.id, u.email "
	      "HAVING count(*) > 2 ORDER BY 4 DESC LIMIT 50",
	      n / 4);
	bench("update",
	      "UPDATE pgbench_accounts SET abalance = abalance + # WHERE aid = 42;", n);
	sqlinfo_thread_cleanup();
	return 0;
}
