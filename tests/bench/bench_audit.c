/* SPDX-License-Identifier: MIT */
/*
 * Micro-benchmark of the audit writer: CPU per statement row for the
 * calling thread (building and queueing the events) and for the writer
 * thread (SQLite, the hash chain), with rows arriving at a steady rate as
 * from busy sessions: the pgbench select, a start and an outcome per row.
 * Not a test: build with `make tests/bench/bench_audit` in a build without
 * sanitizers, run it (`bench_audit [ROWS [RATE]]`, async mode), read the
 * numbers. The file is written in a fresh directory under /tmp (or
 * $TMPDIR) and removed after.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pgveil/audit.h"

static double clock_s(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
	long rows = argc > 1 ? atol(argv[1]) : 300000;
	long rate = argc > 2 ? atol(argv[2]) : 30000;
	const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
	char dir[512], path[600], sql[128], err[256], cmd[700];
	const long tick = 100; /* rows per burst: rate / tick bursts a second */
	double wall0, proc0, main0, wall, proc, mainc;
	Config cfg;

	if (rows <= 0 || rate <= 0) {
		fprintf(stderr, "usage: bench_audit [ROWS [RATE]]\n");
		return 2;
	}
	snprintf(dir, sizeof(dir), "%s/pgveil-bench-audit-XXXXXX", tmp);
	if (mkdtemp(dir) == NULL) {
		perror(dir);
		return 1;
	}
	snprintf(path, sizeof(path), "%s/audit.db", dir);
	memset(&cfg, 0, sizeof(cfg));
	cfg.audit_db = path;
	cfg.audit_mode = AUDIT_ASYNC;
	if (!audit_start(&cfg, err, sizeof(err))) {
		fprintf(stderr, "audit_start: %s\n", err);
		return 1;
	}
	{
		AuditSession s = {.session_id = 1, .started_us = now_us(), .subject = "agent-7@example.com",
		                  .groups = "agents", .client_addr = "127.0.0.1:50000", .database = "bench",
		                  .backend_user = "app_agent"};

		if (audit_session_start(&s) != AUDIT_OK)
			return 1;
	}
	wall0 = clock_s(CLOCK_MONOTONIC);
	proc0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
	main0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
	for (long i = 0; i < rows; i++) {
		AuditQuery q = {.session_id = 1, .ts_us = now_us(), .subject = "agent-7@example.com",
		                .database = "bench", .sql = sql, .fingerprint = "5c1a3f0e2b7d9a41",
		                .classes = "SELECT,READ", .decision = "allow"};
		AuditOutcome o = {.rows = 1, .duration_us = 180};
		uint64_t id = 0;

		snprintf(sql, sizeof(sql), "SELECT abalance FROM pgbench_accounts WHERE aid = %ld;",
		         1 + i * 7919 % 1000000);
		if (audit_query_start(&q, NULL, NULL, &id) != AUDIT_OK) {
			fprintf(stderr, "queue full at row %ld\n", i);
			return 1;
		}
		audit_query_finish(id, &o);
		if ((i + 1) % tick == 0) {
			double due = wall0 + (double)(i + 1) / (double)rate;
			double left = due - clock_s(CLOCK_MONOTONIC);

			if (left > 0)
				usleep((useconds_t)(left * 1e6));
		}
	}
	mainc = clock_s(CLOCK_THREAD_CPUTIME_ID) - main0;
	audit_stop(); /* writes what is left */
	wall = clock_s(CLOCK_MONOTONIC) - wall0;
	proc = clock_s(CLOCK_PROCESS_CPUTIME_ID) - proc0;
	printf("%ld rows at %ld/s in %.2f s: queueing %.2f us/row, writer %.2f us/row (CPU)\n", rows, rate,
	       wall, mainc * 1e6 / (double)rows, (proc - mainc) * 1e6 / (double)rows);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : 1;
}
