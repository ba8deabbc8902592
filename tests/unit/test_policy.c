/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the policy module, data-driven like PgBouncer's hba_test:
 * each tests/unit/data/policy/<x>.eval names a rules file and a
 * default_action, then lists cases, one per line:
 *
 *     subject groups :: part :: part ... => DECISION rule-line|- [part N]
 *
 * A part is its classes (comma list, "-" for none), then optional
 * "on=schema.table,table" and "calls=f,schema.f". Subject "-" means no
 * identity at all, groups "-" none. A line "path changed" decides the cases
 * after it as in a session whose search_path may have changed, "path
 * default" as in one that still has the server's default (the start). The parts are built here directly, not
 * by the statement analysis. Then messages, table matching on its own,
 * policy_rule_matches, and a NULL rule set.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "pgveil/policy.h"

#define DATA_DIR TEST_SRCDIR "/data/policy"

static const char *const class_bit_names[] = {
	"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "COPY", "READ", "WRITE",
	"DDL", "DROP", "DESTRUCTIVE", "PRIVILEGE", "ADMIN", "SESSION", "TRANSACTION", "PROCEDURAL",
};

/* Where we are in an .eval file, for failure messages. */
typedef struct EvalCtx {
	const char *file;
	int line;
	RuleSet *rs;          /* current rules, NULL = none */
	char *rules_name;     /* its file name */
	DefaultAction def;
	bool path_default;    /* the session's search_path is the server's default */
	int cases;            /* cases run */
} EvalCtx;

#define EVAL_FAIL(ctx, ...)                                                                               \
	do {                                                                                              \
		char m_[512];                                                                             \
		snprintf(m_, sizeof(m_), __VA_ARGS__);                                                    \
		fail_msg("%s:%d: %s", (ctx)->file, (ctx)->line, m_);                                      \
	} while (0)

/* Splits s at each occurrence of sep (modifies s); returns the count. */
static int split(char *s, const char *sep, char **out, int max)
{
	int n = 0;
	size_t sl = strlen(sep);

	while (n < max) {
		char *p = strstr(s, sep);

		out[n++] = s;
		if (p == NULL)
			break;
		*p = '\0';
		s = p + sl;
	}
	return n;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static uint32_t parse_classes(EvalCtx *ctx, char *list)
{
	uint32_t bits = 0;
	char *save = NULL;

	if (strcmp(list, "-") == 0)
		return 0;
	for (char *c = strtok_r(list, ",", &save); c != NULL; c = strtok_r(NULL, ",", &save)) {
		size_t i;

		for (i = 0; i < PGV_ARRAY_LEN(class_bit_names); i++)
			if (strcmp(c, class_bit_names[i]) == 0)
				break;
		if (i == PGV_ARRAY_LEN(class_bit_names))
			EVAL_FAIL(ctx, "unknown class %s", c);
		bits |= 1u << i;
	}
	return bits;
}

/* Comma list -> array of strings (pointing into list). */
static int parse_list(char *list, char ***out)
{
	char *save = NULL;
	int n = 0;

	*out = calloc(32, sizeof(char *));
	assert_non_null(*out);
	for (char *c = strtok_r(list, ",", &save); c != NULL && n < 32; c = strtok_r(NULL, ",", &save))
		(*out)[n++] = c;
	return n;
}

/* "READ,SELECT on=public.t,u calls=f" -> a part (strings point into spec). */
static void parse_part(EvalCtx *ctx, char *spec, SqlPart *p)
{
	char *words[8], *save = NULL;
	int n = 0;

	memset(p, 0, sizeof(*p));
	for (char *w = strtok_r(spec, " ", &save); w != NULL && n < 8; w = strtok_r(NULL, " ", &save))
		words[n++] = w;
	if (n == 0)
		EVAL_FAIL(ctx, "empty part");
	for (int i = 1; i < n; i++) {
		if (strncmp(words[i], "on=", 3) == 0) {
			char **names;
			int k = parse_list(words[i] + 3, &names);

			p->tables = calloc((size_t)k, sizeof(SqlTable));
			assert_non_null(p->tables);
			for (int j = 0; j < k; j++) {
				char *dot = strchr(names[j], '.');

				p->tables[j].access = SQL_ACCESS_READ;
				if (dot != NULL) {
					*dot = '\0';
					p->tables[j].schema = names[j];
					p->tables[j].name = dot + 1;
				} else {
					p->tables[j].name = names[j];
				}
			}
			p->n_tables = k;
			free(names);
		} else if (strncmp(words[i], "calls=", 6) == 0) {
			p->n_functions = parse_list(words[i] + 6, &p->functions);
		} else {
			EVAL_FAIL(ctx, "unknown part word %s", words[i]);
		}
	}
	p->classes = parse_classes(ctx, words[0]);
}

/* "subject groups" -> identity (NULL for "-"). */
static Identity *parse_identity(EvalCtx *ctx, char *spec, Identity *id)
{
	char *save = NULL, *subject = strtok_r(spec, " ", &save), *groups = strtok_r(NULL, " ", &save);

	if (subject == NULL || groups == NULL)
		EVAL_FAIL(ctx, "expected: subject groups");
	if (strcmp(subject, "-") == 0)
		return NULL;
	memset(id, 0, sizeof(*id));
	id->subject = subject;
	if (strcmp(groups, "-") != 0)
		id->n_groups = parse_list(groups, &id->groups);
	return id;
}

static void check_decision(EvalCtx *ctx, const Decision *d, char *expect)
{
	static const char *const names[] = { [DECISION_ALLOW] = "ALLOW", [DECISION_BLOCK] = "BLOCK",
					     [DECISION_HOLD] = "HOLD" };
	char *save = NULL, *action = strtok_r(expect, " ", &save), *rule = strtok_r(NULL, " ", &save);
	char *kw = strtok_r(NULL, " ", &save), *part = strtok_r(NULL, " ", &save);
	int want_part = (kw != NULL && strcmp(kw, "part") == 0 && part != NULL) ? atoi(part) : 0;

	if (action == NULL || rule == NULL)
		EVAL_FAIL(ctx, "expected: DECISION rule-line|- [part N]");
	if (strcmp(names[d->action], action) != 0)
		EVAL_FAIL(ctx, "decision %s, want %s (rule %s)", names[d->action], action,
			  d->rule ? d->rule->where : "default_action");
	if (strcmp(rule, "-") == 0) {
		if (d->rule != NULL)
			EVAL_FAIL(ctx, "decided by rule %s, want default_action", d->rule->where);
	} else {
		if (d->rule == NULL)
			EVAL_FAIL(ctx, "decided by default_action, want rule on line %s", rule);
		if (d->rule->line != atoi(rule) || strcmp(d->rule->file, ctx->rules_name) != 0)
			EVAL_FAIL(ctx, "decided by rule %s, want %s:%s", d->rule->where, ctx->rules_name, rule);
	}
	if (d->part != want_part)
		EVAL_FAIL(ctx, "deciding part %d, want %d", d->part, want_part);
}

static void run_case(EvalCtx *ctx, char *line)
{
	char *sides[2] = { NULL, NULL }, *chunks[16];
	int n_sides = split(line, " => ", sides, 2), n_chunks;
	SqlPart parts[16];
	const SqlPart *ptrs[16];
	Identity idbuf, *id;
	Decision d;

	if (n_sides != 2)
		EVAL_FAIL(ctx, "no ' => '");
	n_chunks = split(sides[0], " :: ", chunks, 16);
	id = parse_identity(ctx, trim(chunks[0]), &idbuf);
	for (int i = 1; i < n_chunks; i++) {
		parse_part(ctx, trim(chunks[i]), &parts[i - 1]);
		ptrs[i - 1] = &parts[i - 1];
	}
	d = policy_decide(ctx->rs, ctx->def, id, ptrs, n_chunks - 1, ctx->path_default);
	check_decision(ctx, &d, trim(sides[1]));
	for (int i = 0; i < n_chunks - 1; i++) {
		free(parts[i].tables);
		free(parts[i].functions);
	}
	if (id != NULL)
		free(id->groups);
	ctx->cases++;
}

static void set_rules(EvalCtx *ctx, const char *name)
{
	char *errs = NULL;
	int nerrors;

	rules_unref(ctx->rs);
	ctx->rs = NULL;
	free(ctx->rules_name);
	ctx->rules_name = strdup(name);
	if (strcmp(name, "-") == 0)
		return;
	ctx->rs = rules_load(name, &errs, &nerrors);
	if (ctx->rs == NULL)
		EVAL_FAIL(ctx, "rules %s: %s", name, errs);
}

static void set_default(EvalCtx *ctx, const char *word)
{
	if (strcmp(word, "allow") == 0)
		ctx->def = ACTION_ALLOW;
	else if (strcmp(word, "block") == 0)
		ctx->def = ACTION_BLOCK;
	else if (strcmp(word, "hold") == 0)
		ctx->def = ACTION_HOLD;
	else
		EVAL_FAIL(ctx, "default allow|block|hold");
}

/* Runs one .eval file; returns the number of cases. */
static int run_eval(const char *file)
{
	EvalCtx ctx = { .file = file, .def = ACTION_BLOCK, .path_default = true };
	FILE *fp = fopen(file, "r");
	char buf[1024];

	assert_non_null(fp);
	while (fgets(buf, sizeof(buf), fp) != NULL) {
		char *line = trim(buf);

		ctx.line++;
		if (*line == '\0' || *line == '#')
			continue;
		if (strncmp(line, "rules ", 6) == 0)
			set_rules(&ctx, trim(line + 6));
		else if (strncmp(line, "default ", 8) == 0)
			set_default(&ctx, trim(line + 8));
		else if (strcmp(line, "path changed") == 0 || strcmp(line, "path default") == 0)
			ctx.path_default = strcmp(line, "path default") == 0;
		else
			run_case(&ctx, line);
	}
	fclose(fp);
	rules_unref(ctx.rs);
	free(ctx.rules_name);
	return ctx.cases;
}

static void test_eval_files(void **state)
{
	DIR *d = opendir(".");
	struct dirent *de;
	int files = 0, cases = 0;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);

		if (len > 5 && strcmp(de->d_name + len - 5, ".eval") == 0) {
			int n = run_eval(de->d_name);

			print_message("%s: %d cases\n", de->d_name, n);
			assert_true(n > 0);
			cases += n;
			files++;
		}
	}
	closedir(d);
	assert_true(files >= 4);
	assert_true(cases >= 60);
}

/* ---- messages ------------------------------------------------------------------- */

static RuleSet *parse(const char *text)
{
	char *errs = NULL;
	int nerrors;
	RuleSet *rs = rules_parse_string("rules/test.rules", text, &errs, &nerrors);

	if (rs == NULL)
		fail_msg("%s", errs);
	return rs;
}

static void test_messages(void **state)
{
	RuleSet *rs = parse("BLOCK DDL MESSAGE 'no schema changes, ask the DBA';\n"
			    "\n"
			    "BLOCK   DROP,\n  TRUNCATE -- comment\n  ON public.* ;\n"
			    "HOLD WRITE;\n");
	char buf[256], small[16];
	Decision d = { DECISION_BLOCK, &rs->rules[0], 0, false };

	assert_string_equal(policy_message(&d, buf, sizeof(buf)), "no schema changes, ask the DBA");
	d.rule = &rs->rules[1];
	assert_string_equal(policy_message(&d, buf, sizeof(buf)),
			    "statement blocked by rule rules/test.rules:3: BLOCK DROP, TRUNCATE ON public.*");
	d = (Decision){ DECISION_HOLD, &rs->rules[2], 0, false };
	assert_string_equal(policy_message(&d, buf, sizeof(buf)),
			    "statement held for approval by rule rules/test.rules:6: HOLD WRITE");
	d = (Decision){ DECISION_BLOCK, NULL, 0, false };
	assert_string_equal(policy_message(&d, buf, sizeof(buf)), "statement blocked by default_action = block");
	d.action = DECISION_HOLD;
	assert_string_equal(policy_message(&d, buf, sizeof(buf)),
			    "statement held for approval by default_action = hold");
	d.action = DECISION_ALLOW;
	assert_string_equal(policy_message(&d, buf, sizeof(buf)), "statement allowed by default_action = allow");
	/* a small buffer is cut, still terminated */
	d.action = DECISION_BLOCK;
	assert_ptr_equal(policy_message(&d, small, sizeof(small)), small);
	assert_string_equal(small, "statement block");
	rules_unref(rs);
}

/* ---- matching on its own --------------------------------------------------------- */

/* Parts held by different rules: no single grant may cover the statement. */
static void test_several_holds(void **state)
{
	RuleSet *rs = parse("HOLD DELETE ON public.orders;\nHOLD WRITE;\nALLOW READ;\n");
	SqlTable orders = { "public", "orders", SQL_ACCESS_WRITE }, other = { "public", "x", SQL_ACCESS_WRITE };
	SqlPart del = { .classes = SC_DELETE | SC_WRITE, .n_tables = 1, .tables = &orders };
	SqlPart del2 = del;
	SqlPart ins = { .classes = SC_INSERT | SC_WRITE, .n_tables = 1, .tables = &other };
	SqlPart sel = { .classes = SC_SELECT | SC_READ };
	const SqlPart *same[] = { &del, &sel, &del2 }, *mixed[] = { &del, &ins };
	Identity id = { 0 };
	Decision d;

	(void)state;
	d = policy_decide(rs, ACTION_BLOCK, &id, same, 3, true);
	assert_int_equal(d.action, DECISION_HOLD);
	assert_ptr_equal(d.rule, &rs->rules[0]);
	assert_false(d.several_holds);
	d = policy_decide(rs, ACTION_BLOCK, &id, mixed, 2, true);
	assert_int_equal(d.action, DECISION_HOLD);
	assert_ptr_equal(d.rule, &rs->rules[0]);
	assert_true(d.several_holds);
	rules_unref(rs);
}

static void test_table_matches(void **state)
{
	RuleTable pub_orders = { "public", "orders" }, app_all = { "app", "*" }, pub_all = { "public", "*" };
	SqlTable q_orders = { "public", "orders", SQL_ACCESS_READ }, u_orders = { NULL, "orders", SQL_ACCESS_READ },
		 app_orders = { "app", "orders", SQL_ACCESS_WRITE }, q_Orders = { "public", "Orders", 0 };

	assert_true(policy_table_matches(&pub_orders, &q_orders, RULE_ALLOW, true));
	assert_true(policy_table_matches(&pub_orders, &q_orders, RULE_BLOCK, true));
	assert_false(policy_table_matches(&pub_orders, &app_orders, RULE_BLOCK, true));
	assert_false(policy_table_matches(&pub_orders, &q_Orders, RULE_BLOCK, true)); /* exact: names are folded already */
	assert_true(policy_table_matches(&pub_orders, &u_orders, RULE_ALLOW, true));
	assert_true(policy_table_matches(&pub_orders, &u_orders, RULE_HOLD, true));
	assert_true(policy_table_matches(&app_all, &app_orders, RULE_ALLOW, true));
	assert_false(policy_table_matches(&app_all, &q_orders, RULE_BLOCK, true));
	/* unqualified: any schema for BLOCK and HOLD, only public for ALLOW */
	assert_true(policy_table_matches(&app_all, &u_orders, RULE_BLOCK, true));
	assert_true(policy_table_matches(&app_all, &u_orders, RULE_HOLD, true));
	assert_false(policy_table_matches(&app_all, &u_orders, RULE_ALLOW, true));
	assert_true(policy_table_matches(&pub_all, &u_orders, RULE_ALLOW, true));
	/* once the search_path may have changed, an unqualified name is no ALLOW entry's; BLOCK and HOLD still match */
	assert_false(policy_table_matches(&pub_all, &u_orders, RULE_ALLOW, false));
	assert_false(policy_table_matches(&pub_orders, &u_orders, RULE_ALLOW, false));
	assert_true(policy_table_matches(&pub_orders, &q_orders, RULE_ALLOW, false));
	assert_true(policy_table_matches(&app_all, &u_orders, RULE_BLOCK, false));
	assert_true(policy_table_matches(&pub_orders, &u_orders, RULE_HOLD, false));
}

static void test_rule_matches_and_null_rules(void **state)
{
	RuleSet *rs = parse("MASK public.t.c USING null();\n"
			    "BLOCK FUNCTION pg_read_file FOR GROUP agents;\n"
			    "HOLD WRITE ON public.orders;\n");
	char *groups[] = { "agents" };
	Identity agent = { "a", groups, 1, 0 }, other = { "b", NULL, 0, 0 };
	char *calls[] = { "pg_catalog.pg_read_file" };
	SqlTable orders = { NULL, "orders", SQL_ACCESS_WRITE };
	SqlPart reads = { SC_READ | SC_SELECT, 0, 0, NULL, 1, calls }, writes = { SC_WRITE | SC_UPDATE, 0, 1, &orders, 0, NULL };
	const SqlPart *both[] = { &writes, &reads };
	Decision d;

	assert_false(policy_rule_matches(&rs->rules[0], &agent, &reads, true)); /* masks never decide */
	assert_true(policy_rule_matches(&rs->rules[1], &agent, &reads, true));
	assert_false(policy_rule_matches(&rs->rules[1], &other, &reads, true));
	assert_false(policy_rule_matches(&rs->rules[1], NULL, &reads, true));
	assert_false(policy_rule_matches(&rs->rules[1], &agent, &writes, true));
	assert_true(policy_rule_matches(&rs->rules[2], &other, &writes, true));
	assert_false(policy_rule_matches(&rs->rules[2], &other, &reads, true));

	d = policy_decide(rs, ACTION_ALLOW, &agent, both, 2, true);
	assert_int_equal(d.action, DECISION_BLOCK);
	assert_ptr_equal(d.rule, &rs->rules[1]);
	assert_int_equal(d.part, 1);
	d = policy_decide(rs, ACTION_ALLOW, &other, both, 2, true);
	assert_int_equal(d.action, DECISION_HOLD);
	assert_ptr_equal(d.rule, &rs->rules[2]);
	assert_int_equal(d.part, 0);
	rules_unref(rs);

	/* no rule set: default_action for every part; no parts: allowed */
	d = policy_decide(NULL, ACTION_HOLD, &agent, both, 2, true);
	assert_int_equal(d.action, DECISION_HOLD);
	assert_null(d.rule);
	assert_int_equal(d.part, 0);
	d = policy_decide(NULL, ACTION_BLOCK, NULL, NULL, 0, true);
	assert_int_equal(d.action, DECISION_ALLOW);
	assert_null(d.rule);
	assert_int_equal(d.part, -1);
}

static int group_setup(void **state)
{
	return chdir(DATA_DIR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_eval_files),
		cmocka_unit_test(test_messages),
		cmocka_unit_test(test_several_holds),
		cmocka_unit_test(test_table_matches),
		cmocka_unit_test(test_rule_matches_and_null_rules),
	};
	return cmocka_run_group_tests(tests, group_setup, NULL);
}
