/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the rules language: any bytes are either a RuleSet
 * or a list of "name:line:col: message" errors, one line per counted error,
 * never a crash, a leak or an out-of-bounds read. A parsed set is then run
 * through policy decisions and messages.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/policy.h"
#include "pgveil/rules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every error line starts with "fuzz:" and the counts agree. */
static void check_errors(const RuleSet *rs, char *errs, int nerrors)
{
	int lines = 0;

	if (rs != NULL) {
		if (errs != NULL || nerrors != 0)
			abort();
		return;
	}
	if (errs == NULL || nerrors < 1)
		abort();
	for (char *l = errs; *l != '\0'; l = strchr(l, '\n') + 1) {
		if (strncmp(l, "fuzz:", 5) != 0 || strchr(l, '\n') == NULL)
			abort();
		lines++;
	}
	if (lines != nerrors)
		abort();
	free(errs);
}

static void exercise(const RuleSet *rs)
{
	static char *groups[] = { "agents", "dba" };
	static char *calls[] = { "pg_read_file", "pg_catalog.now" };
	Identity id = { "agent-7", groups, 2, 0 };
	SqlTable tables[] = { { "public", "orders", SQL_ACCESS_READ }, { NULL, "users", SQL_ACCESS_WRITE } };
	SqlPart a = { SC_READ | SC_SELECT, 0, 2, tables, 2, calls };
	SqlPart b = { SC_ALL, 0, 1, tables + 1, 0, NULL };
	const SqlPart *parts[] = { &a, &b };
	char buf[256];
	Decision d;

	for (int i = 0; i < rs->n_rules; i++) {
		const Rule *r = &rs->rules[i];

		if (r->has_for)
			(void)rules_who_matches(&r->for_who, &id);
		if (r->has_unless)
			(void)rules_who_matches(&r->unless_who, NULL);
		if (r->kind == RULE_MASK)
			(void)rules_mask_fn_name(r->mask_fn);
	}
	d = policy_decide(rs, ACTION_BLOCK, &id, parts, 2, true);
	(void)policy_message(&d, buf, sizeof(buf));
	d = policy_decide(rs, ACTION_HOLD, NULL, parts + 1, 1, false);
	(void)policy_message(&d, buf, sizeof(buf));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size + 1), *errs = NULL;
	int nerrors = -1;
	RuleSet *rs;

	if (copy == NULL)
		return 0;
	/* exact size: ASan sees any read past the end */
	memcpy(copy, data, size);
	rs = rules_parse_buffer("fuzz", copy, size, &errs, &nerrors);
	check_errors(rs, errs, nerrors);
	if (rs != NULL) {
		exercise(rs);
		rules_unref(rs);
	}
	/* as a C string (up to the first NUL byte) */
	copy[size] = '\0';
	rs = rules_parse_string("fuzz", copy, &errs, &nerrors);
	check_errors(rs, errs, nerrors);
	rules_unref(rs);
	free(copy);
	return 0;
}
