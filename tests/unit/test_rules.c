/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the rules module, data-driven from tests/unit/data/rules/:
 * every good_*.rules is parsed and dumped in a canonical form that must
 * equal good_*.dump (kinds, actions, classes, tables, who, masks with their
 * arguments, where, text); every bad_*.rules must fail with exactly the
 * lines of bad_*.err ("file:line:col: message"). Then directories (name
 * order, what is skipped, errors of several files), unreadable paths, the
 * parsed structure checked field by field, reference counting, versions,
 * who-matching and large inputs.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "allocfail.h"
#include "testfile.h"
#include "pgveil/rules.h"
#include "pgveil/sqlinfo.h"

#define DATA_DIR TEST_SRCDIR "/data/rules"

/* ---- helpers ------------------------------------------------------------------ */

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	assert_true(fputs(text, fp) >= 0);
	assert_int_equal(fclose(fp), 0);
}

/* The data files whose names start with prefix and end with suffix, sorted. */
static int list_data(const char *prefix, const char *suffix, char ***out)
{
	DIR *d = opendir(DATA_DIR);
	struct dirent *de;
	char **names = NULL;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name), sl = strlen(suffix);

		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0 || len < sl ||
		    strcmp(de->d_name + len - sl, suffix) != 0)
			continue;
		names = realloc(names, sizeof(char *) * (size_t)(n + 1));
		assert_non_null(names);
		names[n++] = strdup(de->d_name);
	}
	closedir(d);
	for (int i = 0; i < n; i++) /* insertion sort: a few dozen names */
		for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
			char *t = names[j];

			names[j] = names[j - 1];
			names[j - 1] = t;
		}
	*out = names;
	return n;
}

static void free_names(char **names, int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* Same path with another suffix: "bad_x.rules" -> "bad_x.err". */
static char *swap_suffix(const char *name, const char *from, const char *to)
{
	size_t base = strlen(name) - strlen(from);
	char *out = malloc(base + strlen(to) + 1);

	assert_non_null(out);
	memcpy(out, name, base);
	strcpy(out + base, to);
	return out;
}

/* ---- canonical dump ----------------------------------------------------------- */

/* Class names in bit order, kept here independently of rules.c's table. */
static const char *const class_bit_names[] = {
	"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "COPY", "READ", "WRITE",
	"DDL", "DROP", "DESTRUCTIVE", "PRIVILEGE", "ADMIN", "SESSION", "TRANSACTION", "PROCEDURAL",
};

static void dump_classes(FILE *f, uint32_t classes)
{
	bool first = true;

	if (classes == SC_ALL) {
		fputs("ALL", f);
		return;
	}
	for (size_t i = 0; i < PGV_ARRAY_LEN(class_bit_names); i++)
		if (classes & (1u << i)) {
			fprintf(f, "%s%s", first ? "" : ",", class_bit_names[i]);
			first = false;
		}
	assert_int_equal(classes & ~SC_ALL, 0);
}

static void dump_names(FILE *f, const NameList *l)
{
	for (int i = 0; i < l->n; i++)
		fprintf(f, "%s%s", i ? " | " : "", l->items[i]);
}

static void dump_who(FILE *f, const char *what, const RuleWho *w)
{
	static const char *const kinds[] = { [WHO_ANYONE] = "ANYONE", [WHO_GROUP] = "GROUP", [WHO_AGENT] = "AGENT" };

	fprintf(f, "  %s %s", what, kinds[w->kind]);
	if (w->kind == WHO_ANYONE)
		assert_int_equal(w->names.n, 0);
	else
		assert_true(w->names.n > 0);
	if (w->names.n > 0)
		fputc(' ', f);
	dump_names(f, &w->names);
	fputc('\n', f);
}

static void dump_mask(FILE *f, const Rule *r)
{
	fprintf(f, "MASK %s.%s.%s USING %s(", r->mask_schema, r->mask_table, r->mask_column,
		rules_mask_fn_name(r->mask_fn));
	for (int i = 0; i < r->n_args; i++) {
		if (r->args[i].type == MASK_ARG_INT)
			fprintf(f, "%s%lld", i ? ", " : "", r->args[i].ival);
		else
			fprintf(f, "%s'%s'", i ? ", " : "", r->args[i].sval);
	}
	fputc(')', f);
}

static void dump_rule(FILE *f, const Rule *r)
{
	static const char *const actions[] = { [RULE_ALLOW] = "ALLOW", [RULE_BLOCK] = "BLOCK", [RULE_HOLD] = "HOLD" };
	char where[512];

	/* where = "file:line" of the first keyword */
	snprintf(where, sizeof(where), "%s:%d", r->file, r->line);
	assert_string_equal(r->where, where);
	fprintf(f, "%s col %d: ", r->where, r->col);
	if (r->kind == RULE_MASK)
		dump_mask(f, r);
	else if (r->kind == RULE_FUNCTION)
		fprintf(f, "%s FUNCTION ", actions[r->action]);
	else
		fprintf(f, "%s classes ", actions[r->action]);
	if (r->kind == RULE_FUNCTION)
		dump_names(f, &r->functions);
	if (r->kind == RULE_POLICY)
		dump_classes(f, r->classes);
	fputc('\n', f);
	if (r->n_tables > 0) {
		fputs("  on ", f);
		for (int i = 0; i < r->n_tables; i++)
			fprintf(f, "%s%s.%s", i ? " | " : "", r->tables[i].schema, r->tables[i].name);
		fputc('\n', f);
	}
	if (r->has_for)
		dump_who(f, "for", &r->for_who);
	if (r->has_unless)
		dump_who(f, "unless", &r->unless_who);
	if (r->message != NULL)
		fprintf(f, "  message %s\n", r->message);
	fprintf(f, "  text %s\n", r->text);
}

/* The canonical dump of a set (malloc'd). */
static char *dump_set(const RuleSet *rs)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	for (int i = 0; i < rs->n_rules; i++)
		dump_rule(f, &rs->rules[i]);
	fclose(f);
	return buf;
}

static int count_lines(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += (*s == '\n');
	return n;
}

/* ---- data-driven: good and bad files -------------------------------------------- */

static void test_good_files(void **state)
{
	char **names;
	int n = list_data("good_", ".rules", &names);

	assert_true(n >= 5);
	for (int i = 0; i < n; i++) {
		char *dump_name = swap_suffix(names[i], ".rules", ".dump");
		char *want = test_read_file(dump_name, NULL);
		char *text = test_read_file(names[i], NULL);
		char *errs = NULL, *got;
		int nerrors = -1;
		RuleSet *rs = rules_load(names[i], &errs, &nerrors);

		if (rs == NULL)
			fail_msg("%s: %d errors:\n%s", names[i], nerrors, errs);
		assert_null(errs);
		assert_int_equal(nerrors, 0);
		got = dump_set(rs);
		if (strcmp(got, want) != 0)
			fail_msg("%s: dump differs.\n--- want\n%s--- got\n%s", names[i], want, got);
		free(got);
		rules_unref(rs);
		/* the same text from memory gives the same set */
		rs = rules_parse_string(names[i], text, &errs, &nerrors);
		assert_non_null(rs);
		got = dump_set(rs);
		assert_string_equal(got, want);
		free(got);
		rules_unref(rs);
		free(text);
		free(want);
		free(dump_name);
	}
	free_names(names, n);
}

static void test_bad_files(void **state)
{
	char **names;
	int n = list_data("bad_", ".rules", &names);

	assert_true(n >= 30);
	for (int i = 0; i < n; i++) {
		char *err_name = swap_suffix(names[i], ".rules", ".err");
		char *want = test_read_file(err_name, NULL);
		size_t len;
		char *text = test_read_file(names[i], &len);
		char *errs = NULL;
		int nerrors = -1;
		RuleSet *rs = rules_load(names[i], &errs, &nerrors);

		if (rs != NULL)
			fail_msg("%s: loaded, but should fail with:\n%s", names[i], want);
		assert_non_null(errs);
		if (strcmp(errs, want) != 0)
			fail_msg("%s: errors differ.\n--- want\n%s--- got\n%s", names[i], want, errs);
		assert_int_equal(nerrors, count_lines(want));
		assert_true(nerrors >= 1);
		free(errs);
		/* the same bytes from memory (a NUL byte included) give the same errors */
		rs = rules_parse_buffer(names[i], text, len, &errs, &nerrors);
		assert_null(rs);
		assert_string_equal(errs, want);
		free(errs);
		free(text);
		free(want);
		free(err_name);
	}
	free_names(names, n);
}

/* ---- directories and paths ------------------------------------------------------ */

static void test_directory(void **state)
{
	static const char *const paths[] = { "dir", "dir/" };
	static const struct {
		const char *where, *text;
	} want[] = {
		{ "dir/10-first.rules:2", "BLOCK DDL" },
		{ "dir/10-first.rules:4", "HOLD WRITE" },
		{ "dir/20-second.rules:1", "ALLOW SESSION" },
		{ "dir/30-third.rules:1", "ALLOW READ" },
	};

	for (size_t p = 0; p < PGV_ARRAY_LEN(paths); p++) {
		char *errs = NULL;
		int nerrors = -1;
		RuleSet *rs = rules_load(paths[p], &errs, &nerrors);

		if (rs == NULL)
			fail_msg("%s: %s", paths[p], errs);
		/* README, .hidden.rules, sub.rules/ and x.rules.orig are not read */
		assert_int_equal(rs->n_rules, (int)PGV_ARRAY_LEN(want));
		for (size_t i = 0; i < PGV_ARRAY_LEN(want); i++) {
			assert_string_equal(rs->rules[i].where, want[i].where);
			assert_string_equal(rs->rules[i].text, want[i].text);
		}
		assert_string_equal(rs->rules[0].file, "dir/10-first.rules");
		rules_unref(rs);
	}
}

static void test_directory_errors(void **state)
{
	char *errs = NULL;
	int nerrors = -1;
	RuleSet *rs = rules_load("dir_bad", &errs, &nerrors);

	assert_null(rs);
	assert_int_equal(nerrors, 2);
	assert_string_equal(errs, "dir_bad/a.rules:2:7: unknown statement class 'NOPE'\n"
				  "dir_bad/b.rules:1:14: expected a table name, not ';'\n");
	free(errs);
}

static void test_empty_directory_and_unreadable(void **state)
{
	char tmp[] = "/tmp/pgveil-test-rules-XXXXXX", path[256], want[512];
	char *errs = NULL;
	int nerrors = -1;
	RuleSet *rs;

	assert_non_null(mkdtemp(tmp));
	/* an empty directory, and one with nothing named *.rules, give an empty set */
	rs = rules_load(tmp, &errs, &nerrors);
	assert_non_null(rs);
	assert_int_equal(rs->n_rules, 0);
	assert_int_equal(nerrors, 0);
	rules_unref(rs);
	snprintf(path, sizeof(path), "%s/notes.txt", tmp);
	write_file(path, "BLOCK ALL;\n");
	rs = rules_load(tmp, &errs, &nerrors);
	assert_non_null(rs);
	assert_int_equal(rs->n_rules, 0);
	rules_unref(rs);

	/* a path that does not exist */
	snprintf(path, sizeof(path), "%s/missing", tmp);
	rs = rules_load(path, &errs, &nerrors);
	assert_null(rs);
	assert_int_equal(nerrors, 1);
	snprintf(want, sizeof(want), "%s:0:0: cannot read: No such file or directory\n", path);
	assert_string_equal(errs, want);
	free(errs);

	/* a *.rules entry that cannot be read: a dangling symbolic link */
	snprintf(path, sizeof(path), "%s/a.rules", tmp);
	assert_int_equal(symlink("/nonexistent/pgveil.rules", path), 0);
	rs = rules_load(tmp, &errs, &nerrors);
	assert_null(rs);
	assert_int_equal(nerrors, 1);
	snprintf(want, sizeof(want), "%s:0:0: cannot read: No such file or directory\n", path);
	assert_string_equal(errs, want);
	free(errs);
	unlink(path);

	/* a file named anything is read when named directly */
	snprintf(path, sizeof(path), "%s/notes.txt", tmp);
	rs = rules_load(path, &errs, &nerrors);
	assert_non_null(rs);
	assert_int_equal(rs->n_rules, 1);
	rules_unref(rs);
	unlink(path);
	assert_int_equal(rmdir(tmp), 0);
}

/* The shipped default rules load. */
static void test_default_rules(void **state)
{
	char *errs = NULL;
	int nerrors = -1;
	RuleSet *rs = rules_load(TEST_SRCDIR "/../../rules", &errs, &nerrors);
	int masks = 0, functions = 0;

	if (rs == NULL)
		fail_msg("rules/: %s", errs);
	for (int i = 0; i < rs->n_rules; i++) {
		masks += rs->rules[i].kind == RULE_MASK;
		functions += rs->rules[i].kind == RULE_FUNCTION;
	}
	assert_int_equal(masks, 0);
	assert_true(functions >= 3);
	/* the last rule allows reading; function rules all come before it */
	assert_int_equal(rs->rules[rs->n_rules - 1].action, RULE_ALLOW);
	assert_true(rs->rules[rs->n_rules - 1].classes & SC_READ);
	rules_unref(rs);
}

/* ---- structure, field by field ---------------------------------------------------- */

static void test_structure(void **state)
{
	char *errs = NULL;
	int nerrors = -1;
	RuleSet *rs = rules_load("good_interface.rules", &errs, &nerrors);
	const Rule *r;

	assert_non_null(rs);
	assert_int_equal(rs->n_rules, 12);
	assert_int_equal(rs->refcount, 1);

	r = &rs->rules[2]; /* MASK public.cards.number USING partial(0, 'XXXX-XXXX-XXXX-', 4) UNLESS GROUP billing */
	assert_int_equal(r->kind, RULE_MASK);
	assert_string_equal(r->file, "good_interface.rules");
	assert_int_equal(r->line, 4);
	assert_int_equal(r->col, 1);
	assert_string_equal(r->where, "good_interface.rules:4");
	assert_string_equal(r->mask_schema, "public");
	assert_string_equal(r->mask_table, "cards");
	assert_string_equal(r->mask_column, "number");
	assert_int_equal(r->mask_fn, MASK_PARTIAL);
	assert_int_equal(r->n_args, 3);
	assert_int_equal(r->args[0].type, MASK_ARG_INT);
	assert_int_equal(r->args[0].ival, 0);
	assert_int_equal(r->args[1].type, MASK_ARG_STRING);
	assert_string_equal(r->args[1].sval, "XXXX-XXXX-XXXX-");
	assert_int_equal(r->args[2].ival, 4);
	assert_false(r->has_for);
	assert_true(r->has_unless);
	assert_int_equal(r->unless_who.kind, WHO_GROUP);
	assert_int_equal(r->unless_who.names.n, 1);
	assert_string_equal(r->unless_who.names.items[0], "billing");
	assert_null(r->message);

	r = &rs->rules[6]; /* BLOCK FUNCTION pg_read_file, pg_terminate_backend, lo_export */
	assert_int_equal(r->kind, RULE_FUNCTION);
	assert_int_equal(r->action, RULE_BLOCK);
	assert_int_equal(r->functions.n, 3);
	assert_string_equal(r->functions.items[2], "lo_export");
	assert_int_equal(r->classes, 0);

	r = &rs->rules[9]; /* HOLD DELETE, UPDATE ON public.orders FOR GROUP agents */
	assert_int_equal(r->kind, RULE_POLICY);
	assert_int_equal(r->action, RULE_HOLD);
	assert_int_equal(r->classes, SC_DELETE | SC_UPDATE);
	assert_int_equal(r->n_tables, 1);
	assert_string_equal(r->tables[0].schema, "public");
	assert_string_equal(r->tables[0].name, "orders");
	assert_true(r->has_for);
	assert_int_equal(r->for_who.kind, WHO_GROUP);
	assert_string_equal(r->for_who.names.items[0], "agents");
	assert_string_equal(r->text, "HOLD DELETE, UPDATE ON public.orders FOR GROUP agents");

	r = &rs->rules[11]; /* ALLOW READ, TRANSACTION, SESSION */
	assert_int_equal(r->action, RULE_ALLOW);
	assert_int_equal(r->classes, SC_READ | SC_TRANSACTION | SC_SESSION);
	assert_int_equal(r->n_tables, 0);
	assert_false(r->has_for);
	rules_unref(rs);
}

static void test_every_class_name(void **state)
{
	for (size_t i = 0; i < PGV_ARRAY_LEN(class_bit_names); i++) {
		char text[64], *errs = NULL;
		int nerrors;
		RuleSet *rs;

		snprintf(text, sizeof(text), "BLOCK %s;", class_bit_names[i]);
		rs = rules_parse_string("t", text, &errs, &nerrors);
		assert_non_null(rs);
		assert_int_equal(rs->rules[0].classes, 1u << i);
		rules_unref(rs);
	}
}

static void test_mask_fn_names(void **state)
{
	static const char *const names[] = { "redact", "null", "constant", "partial", "email", "hash", "truncate",
					     "round" };

	for (int fn = MASK_REDACT; fn <= MASK_ROUND; fn++)
		assert_string_equal(rules_mask_fn_name((MaskFn)fn), names[fn]);
}

/* ---- reference counting, versions ------------------------------------------------- */

static void test_refcount_and_version(void **state)
{
	char *errs = NULL;
	int nerrors;
	RuleSet *a = rules_parse_string("a", "ALLOW READ;", &errs, &nerrors);
	RuleSet *b = rules_parse_string("b", "", &errs, &nerrors);

	assert_non_null(a);
	assert_non_null(b);
	assert_true(b->version > a->version);
	assert_int_equal(b->n_rules, 0);
	assert_ptr_equal(rules_ref(a), a);
	assert_int_equal(a->refcount, 2);
	rules_unref(a);
	assert_int_equal(a->refcount, 1);
	rules_unref(a);
	rules_unref(b);
	rules_unref(NULL);
	assert_null(rules_ref(NULL));
}

/* ---- who ------------------------------------------------------------------------- */

static void test_who_matches(void **state)
{
	char *errs = NULL;
	int nerrors;
	RuleSet *rs = rules_parse_string("w",
					 "ALLOW READ FOR GROUP dba, \"Data Team\";\n"
					 "ALLOW READ FOR AGENT 'ci-bot', 'Agent-7';\n"
					 "ALLOW READ FOR ANYONE;\n",
					 &errs, &nerrors);
	char *g1[] = { "dev", "Data Team" }, *g2[] = { "DBA", "data team" }, *g3[] = { "ci-bot" };
	Identity in_group = { "x", g1, 2, 0 }, wrong_case = { "agent-7", g2, 2, 0 }, agent = { "Agent-7", NULL, 0, 0 },
		 group_named_like_agent = { "someone", g3, 1, 0 }, no_subject = { NULL, NULL, 0, 0 };
	const RuleWho *group, *ag, *anyone;

	assert_non_null(rs);
	group = &rs->rules[0].for_who;
	ag = &rs->rules[1].for_who;
	anyone = &rs->rules[2].for_who;
	assert_true(rules_who_matches(group, &in_group));
	assert_false(rules_who_matches(group, &wrong_case)); /* exact comparison */
	assert_false(rules_who_matches(group, &agent));
	assert_false(rules_who_matches(group, NULL));
	assert_true(rules_who_matches(ag, &agent));
	assert_false(rules_who_matches(ag, &wrong_case));
	assert_false(rules_who_matches(ag, &group_named_like_agent)); /* AGENT is the subject, not a group */
	assert_false(rules_who_matches(ag, &no_subject));
	assert_false(rules_who_matches(ag, NULL));
	assert_true(rules_who_matches(anyone, &in_group));
	assert_true(rules_who_matches(anyone, &no_subject));
	assert_true(rules_who_matches(anyone, NULL));
	rules_unref(rs);
}

/* ---- sizes -------------------------------------------------------------------------- */

static void test_many_rules_and_errors(void **state)
{
	size_t cap = 5000 * 64;
	char *text = malloc(cap), *errs = NULL;
	size_t len = 0;
	int nerrors = -1;
	RuleSet *rs;

	assert_non_null(text);
	for (int i = 0; i < 5000; i++)
		len += (size_t)snprintf(text + len, cap - len, "HOLD WRITE ON s%d.t%d FOR GROUP g%d;\n", i, i, i);
	rs = rules_parse_string("many", text, &errs, &nerrors);
	assert_non_null(rs);
	assert_int_equal(rs->n_rules, 5000);
	assert_string_equal(rs->rules[4999].where, "many:5000");
	assert_string_equal(rs->rules[4999].tables[0].schema, "s4999");
	rules_unref(rs);

	/* every error of a long file is reported */
	len = 0;
	for (int i = 0; i < 300; i++)
		len += (size_t)snprintf(text + len, cap - len, "ALLOW READ;\nBLOCK NOPE%d;\n", i);
	rs = rules_parse_string("errs", text, &errs, &nerrors);
	assert_null(rs);
	assert_int_equal(nerrors, 300);
	assert_int_equal(count_lines(errs), 300);
	assert_non_null(strstr(errs, "errs:600:7: unknown statement class 'NOPE299'\n"));
	free(errs);

	/* past 1000, errors are counted but not stored: a hostile file cannot flood memory */
	memset(text, '@', 1500);
	text[1500] = '\0';
	rs = rules_parse_string("flood", text, &errs, &nerrors);
	assert_null(rs);
	assert_int_equal(nerrors, 1500);
	assert_int_equal(count_lines(errs), 1001);
	assert_non_null(strstr(errs, "flood:1:1000: unexpected character '@'\n"));
	assert_non_null(strstr(errs, "flood:1:1001: too many errors; the rest are not shown\n"));
	free(errs);
	free(text);
}

/* ---- allocation failures -------------------------------------------------------------- */

/*
 * Fails each allocation of a load in turn: the load fails with at least one
 * error counted (the message itself may be lost), never crashes, never leaks
 * (ASan), and succeeds once every allocation is served.
 */
static void load_under_failures(const char *what, RuleSet *(*load)(const char *arg, char **errs, int *n),
				const char *arg, bool valid)
{
	int k;

	for (k = 0; k < 100000; k++) {
		char *errs = NULL;
		int nerrors = -1;
		RuleSet *rs;

		allocfail_happened = false;
		allocfail_countdown = k;
		rs = load(arg, &errs, &nerrors);
		allocfail_countdown = -1;
		if (!allocfail_happened) {
			/* every allocation was served: the normal outcome */
			assert_true(valid ? rs != NULL : rs == NULL);
			rules_unref(rs);
			free(errs);
			break;
		}
		if (rs != NULL)
			fail_msg("%s: allocation %d failed, yet the load succeeded", what, k);
		assert_true(nerrors >= 1);
		free(errs);
	}
	print_message("%s: %d allocations failed in turn\n", what, k);
	assert_true(k > 10);
}

static RuleSet *parse_text_cb(const char *text, char **errs, int *n)
{
	return rules_parse_string("oom.rules", text, errs, n);
}

static void test_allocation_failures(void **state)
{
	load_under_failures("good_interface.rules", rules_load, "good_interface.rules", true);
	load_under_failures("good_syntax.rules", rules_load, "good_syntax.rules", true);
	load_under_failures("good_masks.rules", rules_load, "good_masks.rules", true);
	load_under_failures("bad_several.rules", rules_load, "bad_several.rules", false);
	load_under_failures("dir", rules_load, "dir", true);
	load_under_failures("dir_bad", rules_load, "dir_bad", false);
	load_under_failures("text", parse_text_cb,
			    "MASK s.t.c USING partial(1, 'x', 2) FOR GROUP a, 'b' UNLESS AGENT 'c';\n"
			    "HOLD WRITE ON a.*, b, c.d FOR ANYONE MESSAGE 'm';\n"
			    "BLOCK FUNCTION f, s.g;\n",
			    true);
}

static int group_setup(void **state)
{
	return chdir(DATA_DIR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_files),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_directory),
		cmocka_unit_test(test_directory_errors),
		cmocka_unit_test(test_empty_directory_and_unreadable),
		cmocka_unit_test(test_default_rules),
		cmocka_unit_test(test_structure),
		cmocka_unit_test(test_every_class_name),
		cmocka_unit_test(test_mask_fn_names),
		cmocka_unit_test(test_refcount_and_version),
		cmocka_unit_test(test_who_matches),
		cmocka_unit_test(test_many_rules_and_errors),
		cmocka_unit_test(test_allocation_failures),
	};
	return cmocka_run_group_tests(tests, group_setup, NULL);
}
