/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the sqlinfo module. The corpus tests/unit/data/sqlinfo.corpus
 * holds statements beside their expected classes, parts, tables, functions,
 * prepared-statement operations and parse errors (its header describes the
 * format); each record is one test, run with the cache off and then twice
 * with it on. The other tests cover the cache (literals that decide the
 * classes, shapes shared across literals, statement spans of shape hits,
 * eviction), normalization, class names, built-in functions and refusals.
 */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "pgveil/sqlinfo.h"

/* ---- the corpus --------------------------------------------------------------- */

typedef struct Record {
	int line;                /* of its "sql" line */
	bool lineage;            /* from the lineage corpus */
	char *sql;
	char *expect[64];        /* "key: value" lines, in order */
	int n_expect;
} Record;

static Record *records;
static int n_records;

static char *xstrdup(const char *s)
{
	char *r = strdup(s);

	if (r == NULL)
		abort();
	return r;
}

static void chomp(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		s[--n] = '\0';
}

static Record *record_new(int line)
{
	Record *r;

	records = realloc(records, (size_t)(n_records + 1) * sizeof(*records));
	if (records == NULL)
		abort();
	r = &records[n_records++];
	memset(r, 0, sizeof(*r));
	r->line = line;
	return r;
}

/* Reads a "sql<<" block up to ">>"; newlines kept, the last one not. */
static char *read_block(FILE *fp, int *lineno)
{
	char buf[4096], *acc = xstrdup("");
	bool first = true;
	size_t n;

	while (fgets(buf, sizeof(buf), fp) != NULL) {
		(*lineno)++;
		chomp(buf);
		if (strcmp(buf, ">>") == 0)
			break;
		n = strlen(acc);
		acc = realloc(acc, n + strlen(buf) + 2);
		if (acc == NULL)
			abort();
		sprintf(acc + n, "%s%s", first ? "" : "\n", buf);
		first = false;
	}
	return acc;
}

static void corpus_load(const char *path, bool lineage)
{
	FILE *fp = fopen(path, "r");
	char buf[4096];
	int lineno = 0;
	Record *cur = NULL;

	if (fp == NULL) {
		fprintf(stderr, "cannot open %s\n", path);
		abort();
	}
	while (fgets(buf, sizeof(buf), fp) != NULL) {
		lineno++;
		chomp(buf);
		if (buf[0] == '#' || buf[0] == '\0')
			continue;
		if (strncmp(buf, "sql:", 4) == 0) {
			cur = record_new(lineno);
			cur->lineage = lineage;
			cur->sql = xstrdup(buf[4] == ' ' ? buf + 5 : buf + 4);
		} else if (strcmp(buf, "sql<<") == 0) {
			cur = record_new(lineno);
			cur->lineage = lineage;
			cur->sql = read_block(fp, &lineno);
		} else if (cur != NULL && cur->n_expect < 64) {
			cur->expect[cur->n_expect++] = xstrdup(buf);
		} else {
			fprintf(stderr, "%s:%d: expectation outside a record\n", path, lineno);
			abort();
		}
	}
	fclose(fp);
}

/* ---- checking one analysis --------------------------------------------------- */

static uint32_t parse_classes(const char *s, const Record *r)
{
	uint32_t all = 0, c;
	const char *p = s;
	size_t n;

	while (*p == ' ')
		p++;
	if (strcmp(p, "NONE") == 0 || *p == '\0')
		return 0;
	while (*p != '\0') {
		n = strcspn(p, ", ");
		c = sqlinfo_class_from_name(p, n);
		if (c == 0)
			fail_msg("corpus line %d: unknown class '%.*s'", r->line, (int)n, p);
		all |= c;
		p += n;
		while (*p == ',' || *p == ' ')
			p++;
	}
	return all;
}

/* "name:r" / "schema.name:rw" -> schema (or ""), name, access. */
static void parse_table(const char *tok, char *schema, char *name, int *access, const Record *r)
{
	const char *colon = strrchr(tok, ':'), *dot;

	if (colon == NULL)
		fail_msg("corpus line %d: table '%s' needs :r/:w/:rw", r->line, tok);
	*access = (strchr(colon, 'r') ? SQL_ACCESS_READ : 0) | (strchr(colon, 'w') ? SQL_ACCESS_WRITE : 0);
	dot = memchr(tok, '.', (size_t)(colon - tok));
	if (dot != NULL) {
		snprintf(schema, 128, "%.*s", (int)(dot - tok), tok);
		snprintf(name, 128, "%.*s", (int)(colon - dot - 1), dot + 1);
	} else {
		schema[0] = '\0';
		snprintf(name, 128, "%.*s", (int)(colon - tok), tok);
	}
}

static bool table_eq(const SqlTable *t, const char *schema, const char *name)
{
	return strcmp(t->name, name) == 0 && strcmp(t->schema != NULL ? t->schema : "", schema) == 0;
}

/* Checks a space-separated table list against the tables of parts [first, last). */
static void check_tables(const char *spec, const StmtInfo *info, int first, int last, const Record *r,
			 const char *what)
{
	char copy[1024], schema[128], name[128], *tok, *save = NULL;
	int expected = 0, actual = 0, access, got, p, i;

	snprintf(copy, sizeof(copy), "%s", spec);
	for (p = first; p < last; p++)
		actual += info->parts[p].n_tables;
	for (tok = strtok_r(copy, " ,", &save); tok != NULL; tok = strtok_r(NULL, " ,", &save)) {
		parse_table(tok, schema, name, &access, r);
		expected++;
		got = -1;
		for (p = first; p < last; p++)
			for (i = 0; i < info->parts[p].n_tables; i++)
				if (table_eq(&info->parts[p].tables[i], schema, name))
					got = (got < 0 ? 0 : got) | info->parts[p].tables[i].access;
		if (got < 0)
			fail_msg("corpus line %d: %s: table %s missing", r->line, what, tok);
		if (got != access)
			fail_msg("corpus line %d: %s: table %s has access %d, expected %d", r->line, what, tok, got,
				 access);
	}
	if (first + 1 == last && expected != actual)
		fail_msg("corpus line %d: %s: %d tables, expected %d", r->line, what, actual, expected);
}

static void check_functions(const char *spec, const StmtInfo *info, int first, int last, const Record *r,
			    const char *what)
{
	char copy[1024], *tok, *save = NULL;
	int expected = 0, actual = 0, p, i;
	bool found;

	snprintf(copy, sizeof(copy), "%s", spec);
	for (p = first; p < last; p++)
		actual += info->parts[p].n_functions;
	for (tok = strtok_r(copy, " ,", &save); tok != NULL; tok = strtok_r(NULL, " ,", &save)) {
		expected++;
		found = false;
		for (p = first; p < last; p++)
			for (i = 0; i < info->parts[p].n_functions; i++)
				found = found || strcmp(info->parts[p].functions[i], tok) == 0;
		if (!found)
			fail_msg("corpus line %d: %s: function %s missing", r->line, what, tok);
	}
	if (first + 1 == last && expected != actual)
		fail_msg("corpus line %d: %s: %d functions, expected %d", r->line, what, actual, expected);
}

static void check_part(const char *spec, const StmtInfo *info, int idx, const Record *r)
{
	char copy[1024], what[32], buf[256], *bar1, *bar2;
	uint32_t classes;

	snprintf(copy, sizeof(copy), "%s", spec);
	snprintf(what, sizeof(what), "part %d", idx);
	if (idx >= info->n_parts)
		fail_msg("corpus line %d: %s missing (%d parts)", r->line, what, info->n_parts);
	bar1 = strchr(copy, '|');
	bar2 = bar1 != NULL ? strchr(bar1 + 1, '|') : NULL;
	if (bar2 == NULL)
		fail_msg("corpus line %d: part needs CLASSES | TABLES | FUNCTIONS", r->line);
	*bar1 = *bar2 = '\0';
	classes = parse_classes(copy, r);
	if (info->parts[idx].classes != classes)
		fail_msg("corpus line %d: %s: classes %s, expected %s", r->line, what,
			 sqlinfo_class_names(info->parts[idx].classes, buf, sizeof(buf)), copy);
	check_tables(bar1 + 1, info, idx, idx + 1, r, what);
	check_functions(bar2 + 1, info, idx, idx + 1, r, what);
}

static void check_prep(const char *spec, const StmtInfo *info, int idx, const Record *r)
{
	static const char *const ops[] = { "PREPARE", "EXECUTE", "DEALLOCATE", "DEALLOCATE_ALL" };
	char op[32] = "", name[128] = "";
	int first = -1, n = -1, k;
	const SqlPrepRef *p;

	k = sscanf(spec, "%31s %127s %d %d", op, name, &first, &n);
	if (idx >= info->n_prep)
		fail_msg("corpus line %d: prep %d missing (%d)", r->line, idx, info->n_prep);
	p = &info->prep[idx];
	if (strcmp(ops[p->op], op) != 0)
		fail_msg("corpus line %d: prep %d is %s, expected %s", r->line, idx, ops[p->op], op);
	if (k >= 2 && (p->name == NULL || strcmp(p->name, name) != 0))
		fail_msg("corpus line %d: prep %d name %s, expected %s", r->line, idx, p->name ? p->name : "(null)",
			 name);
	if (k < 2 && p->name != NULL)
		fail_msg("corpus line %d: prep %d has a name", r->line, idx);
	if (k == 4 && (p->part_first != first || p->n_parts != n))
		fail_msg("corpus line %d: prep %d parts %d+%d, expected %d+%d", r->line, idx, p->part_first,
			 p->n_parts, first, n);
}

static void check_spans(const char *spec, const StmtInfo *info, const Record *r)
{
	const char *p = spec;
	int i = 0, off, len, used;

	while (sscanf(p, " %d/%d%n", &off, &len, &used) == 2) {
		if (i >= info->n_stmts)
			fail_msg("corpus line %d: span %d missing", r->line, i);
		if (info->stmts[i].offset != off || info->stmts[i].len != len)
			fail_msg("corpus line %d: statement %d spans %d/%d, expected %d/%d", r->line, i,
				 info->stmts[i].offset, info->stmts[i].len, off, len);
		i++;
		p += used;
	}
	if (i != info->n_stmts)
		fail_msg("corpus line %d: %d spans, expected %d", r->line, info->n_stmts, i);
}

static void check_error(const char *spec, const StmtInfo *info, const Record *r)
{
	int pos = 0, used = 0;

	if (info->error == NULL)
		fail_msg("corpus line %d: parsed, expected an error", r->line);
	if (sscanf(spec, " %d %n", &pos, &used) >= 1 && info->error_pos != pos)
		fail_msg("corpus line %d: error at %d, expected %d (%s)", r->line, info->error_pos, pos, info->error);
	if (used > 0 && spec[used] != '\0' && strstr(info->error, spec + used) == NULL)
		fail_msg("corpus line %d: error '%s' lacks '%s'", r->line, info->error, spec + used);
	if (info->n_parts != 0 || info->n_stmts != 0 || info->classes != 0)
		fail_msg("corpus line %d: an error has parts", r->line);
}

/* A corpus token's text: "\t" tab, "\s" space, "\xHH" a byte, "\\" backslash. */
static void unescape_token(const char *in, char *out, size_t len)
{
	size_t n = 0;

	for (; *in != '\0' && n + 1 < len; in++) {
		if (in[0] == '\\' && in[1] == 'x' && isxdigit((unsigned char)in[2]) && isxdigit((unsigned char)in[3])) {
			out[n++] = (char)strtol((char[]){ in[2], in[3], '\0' }, NULL, 16);
			in += 3;
		} else if (in[0] == '\\' && in[1] != '\0') {
			in++;
			out[n++] = *in == 't' ? '\t' : *in == 's' ? ' ' : *in;
		} else {
			out[n++] = *in;
		}
	}
	out[n] = '\0';
}

static const char *const copy_formats[] = { "none", "text", "csv", "binary" };

/*
 * "FORMAT [delim=C] [quote=C] [escape=C] [null=S] [header] [unusual]" for
 * statement `idx`: delim, quote and escape default to the format's
 * defaults, null to NULL (not given); "none" expects an all-zero copy.
 */
static void check_copy(const char *spec, const StmtInfo *info, int idx, const Record *r)
{
	char buf[1024], val[256], *tok, *save = NULL;
	const SqlCopyOut *c;
	SqlCopyOut want;
	const char *null_string = NULL;

	if (idx >= info->n_stmts)
		fail_msg("corpus line %d: copy of statement %d, which is missing", r->line, idx);
	c = &info->stmts[idx].copy;
	memset(&want, 0, sizeof(want));
	snprintf(buf, sizeof(buf), "%s", spec);
	tok = strtok_r(buf, " ", &save);
	for (want.format = SQL_COPY_NONE; want.format <= SQL_COPY_BINARY; want.format++)
		if (tok != NULL && strcmp(tok, copy_formats[want.format]) == 0)
			break;
	if (want.format > SQL_COPY_BINARY)
		fail_msg("corpus line %d: unknown copy format '%s'", r->line, tok != NULL ? tok : "");
	if (want.format != SQL_COPY_NONE) {
		want.delimiter = want.format == SQL_COPY_CSV ? ',' : '\t';
		want.quote = '"';
		want.escape = 0;
	}
	while ((tok = strtok_r(NULL, " ", &save)) != NULL) {
		unescape_token(strchr(tok, '=') != NULL ? strchr(tok, '=') + 1 : "", val, sizeof(val));
		if (strncmp(tok, "delim=", 6) == 0)
			want.delimiter = val[0];
		else if (strncmp(tok, "quote=", 6) == 0)
			want.quote = val[0];
		else if (strncmp(tok, "escape=", 7) == 0)
			want.escape = val[0];
		else if (strncmp(tok, "null=", 5) == 0)
			null_string = strdup(val);
		else if (strcmp(tok, "header") == 0)
			want.header = true;
		else if (strcmp(tok, "unusual") == 0)
			want.unusual = true;
		else
			fail_msg("corpus line %d: unknown copy expectation '%s'", r->line, tok);
	}
	if (want.format != SQL_COPY_NONE && want.escape == 0)
		want.escape = want.quote;
	snprintf(val, sizeof(val), "%s", null_string != NULL ? null_string : "(not given)");
	free((char *)null_string);
	if (c->format != want.format || c->delimiter != want.delimiter || c->quote != want.quote ||
	    c->escape != want.escape || c->header != want.header || c->unusual != want.unusual)
		fail_msg("corpus line %d: statement %d copies as %s delim=0x%02x quote=0x%02x escape=0x%02x header=%d "
			 "unusual=%d, expected %s",
			 r->line, idx, copy_formats[c->format], (unsigned char)c->delimiter, (unsigned char)c->quote,
			 (unsigned char)c->escape, c->header, c->unusual, spec);
	if (strcmp(c->null_string != NULL ? c->null_string : "(not given)", val) != 0)
		fail_msg("corpus line %d: statement %d has NULL string '%s', expected '%s'", r->line, idx,
			 c->null_string != NULL ? c->null_string : "(not given)", val);
}

static void check_record(const Record *r, const StmtInfo *info)
{
	char buf[256];
	int i, n_parts = 0, n_prep = 0, n_copy = 0;
	uint32_t u = 0;
	bool expect_error = false;

	for (i = 0; i < r->n_expect; i++) {
		const char *e = r->expect[i], *v = strchr(e, ':');

		v = v != NULL ? v + 1 : "";
		while (*v == ' ')
			v++;
		if (strncmp(e, "error:", 6) == 0) {
			expect_error = true;
			check_error(v, info, r);
		} else if (strncmp(e, "classes:", 8) == 0) {
			if (info->classes != parse_classes(v, r))
				fail_msg("corpus line %d: classes %s, expected %s", r->line,
					 sqlinfo_class_names(info->classes, buf, sizeof(buf)), v);
		} else if (strncmp(e, "stmts:", 6) == 0) {
			if (info->n_stmts != atoi(v))
				fail_msg("corpus line %d: %d statements, expected %s", r->line, info->n_stmts, v);
		} else if (strncmp(e, "spans:", 6) == 0) {
			check_spans(v, info, r);
		} else if (strncmp(e, "part:", 5) == 0) {
			check_part(v, info, n_parts++, r);
		} else if (strncmp(e, "tables:", 7) == 0) {
			check_tables(v, info, 0, info->n_parts, r, "tables");
		} else if (strncmp(e, "functions:", 10) == 0) {
			check_functions(v, info, 0, info->n_parts, r, "functions");
		} else if (strncmp(e, "prep:", 5) == 0) {
			check_prep(v, info, n_prep++, r);
		} else if (strncmp(e, "copy:", 5) == 0) {
			check_copy(v, info, n_copy++, r);
		} else if (strncmp(e, "sensitive:", 10) == 0) {
			if (info->literal_sensitive != (strcmp(v, "yes") == 0))
				fail_msg("corpus line %d: literal_sensitive %d, expected %s", r->line,
					 info->literal_sensitive, v);
		} else {
			fail_msg("corpus line %d: unknown expectation '%s'", r->line, e);
		}
	}
	if (!expect_error && info->error != NULL)
		fail_msg("corpus line %d: unexpected error '%s' at %d", r->line, info->error, info->error_pos);
	if (n_parts > 0 && n_parts != info->n_parts)
		fail_msg("corpus line %d: %d parts, expected %d", r->line, info->n_parts, n_parts);
	if (n_prep != info->n_prep)
		fail_msg("corpus line %d: %d prepared-statement operations, expected %d", r->line, info->n_prep,
			 n_prep);
	for (i = n_copy; i < info->n_stmts; i++)
		if (info->stmts[i].copy.format != SQL_COPY_NONE)
			fail_msg("corpus line %d: statement %d is a COPY TO STDOUT, not expected", r->line, i);
	for (i = 0; i < info->n_parts; i++)
		u |= info->parts[i].classes;
	if (u != info->classes)
		fail_msg("corpus line %d: classes are not the union of the parts", r->line);
	for (i = 0, u = 0; i < info->n_stmts; i++)
		u |= info->stmts[i].classes;
	if (u != info->classes)
		fail_msg("corpus line %d: statement classes do not add up", r->line);
}

/* ---- the lineage corpus ---------------------------------------------------------- */

static const char *const use_names[] = { "OUTPUT", "PREDICATE", "WRITE_SOURCE", "FUNCTION_ARG", "WHOLE_ROW", "EXPRESSION" };

static void column_text(const SqlColumn *c, char *buf, size_t len)
{
	if (c->schema != NULL)
		snprintf(buf, len, "%s.%s.%s", c->schema, c->table, c->column);
	else
		snprintf(buf, len, "%s.%s", c->table, c->column);
}

static unsigned parse_contexts(const char *s, const Record *r)
{
	unsigned all = 0, i;
	size_t n;

	while (*s == ' ')
		s++;
	if (strcmp(s, "NONE") == 0)
		return 0;
	while (*s != '\0') {
		n = strcspn(s, ", ");
		for (i = 0; i < PGV_ARRAY_LEN(use_names); i++)
			if (strlen(use_names[i]) == n && strncmp(s, use_names[i], n) == 0)
				break;
		if (i == PGV_ARRAY_LEN(use_names))
			fail_msg("lineage corpus line %d: unknown context '%.*s'", r->line, (int)n, s);
		all |= 1u << i;
		s += n;
		while (*s == ',' || *s == ' ')
			s++;
	}
	return all;
}

static const char *contexts_text(unsigned ctx, char *buf, size_t len)
{
	unsigned i;

	buf[0] = '\0';
	for (i = 0; i < PGV_ARRAY_LEN(use_names); i++)
		if (ctx & (1u << i))
			snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", buf[0] ? "," : "", use_names[i]);
	if (buf[0] == '\0')
		snprintf(buf, len, "NONE");
	return buf;
}

/* "direct[*] src src ..." / "derived[*] ...": kind, star and the exact set of sources of output `idx`. */
static void check_output(const char *spec, const SqlStmt *st, int idx, const Record *r)
{
	char copy[1024], name[256], *tok, *save = NULL;
	const SqlOutput *o;
	int expected = 0, k;
	bool found;

	snprintf(copy, sizeof(copy), "%s", spec);
	if (idx >= st->n_outputs)
		fail_msg("lineage corpus line %d: output %d missing (%d outputs)", r->line, idx, st->n_outputs);
	o = &st->outputs[idx];
	tok = strtok_r(copy, " ", &save);
	if (tok == NULL)
		fail_msg("lineage corpus line %d: empty output", r->line);
	if ((strncmp(tok, "direct", 6) == 0) != (o->kind == SQL_OUT_DIRECT) ||
	    (strncmp(tok, "derived", 7) != 0 && strncmp(tok, "direct", 6) != 0))
		fail_msg("lineage corpus line %d: output %d is %s, expected %s", r->line, idx,
			 o->kind == SQL_OUT_DIRECT ? "direct" : "derived", tok);
	if ((strchr(tok, '*') != NULL) != o->star)
		fail_msg("lineage corpus line %d: output %d star %d, expected %s", r->line, idx, o->star, tok);
	for (tok = strtok_r(NULL, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
		expected++;
		found = false;
		for (k = 0; k < o->n_sources && !found; k++) {
			column_text(o->sources[k], name, sizeof(name));
			found = strcmp(name, tok) == 0;
		}
		if (!found)
			fail_msg("lineage corpus line %d: output %d lacks source %s", r->line, idx, tok);
	}
	if (expected != o->n_sources) {
		snprintf(name, sizeof(name), "none");
		if (o->n_sources > 0)
			column_text(o->sources[0], name, sizeof(name));
		fail_msg("lineage corpus line %d: output %d has %d sources (first %s), expected %d", r->line, idx,
			 o->n_sources, name, expected);
	}
}

/* "table.col CONTEXTS" / "schema.table.col CONTEXTS". */
static void check_use(const char *spec, const SqlStmt *st, const Record *r)
{
	char col[256], name[256], buf[128];
	int used = 0, k;
	unsigned want;

	if (sscanf(spec, "%255s %n", col, &used) < 1)
		fail_msg("lineage corpus line %d: use needs COLUMN CONTEXTS", r->line);
	want = parse_contexts(spec + used, r);
	for (k = 0; k < st->n_columns; k++) {
		column_text(st->columns[k].column, name, sizeof(name));
		if (strcmp(name, col) != 0)
			continue;
		if (st->columns[k].contexts != want)
			fail_msg("lineage corpus line %d: %s has contexts %s, expected %s", r->line, col,
				 contexts_text(st->columns[k].contexts, buf, sizeof(buf)), spec + used);
		return;
	}
	fail_msg("lineage corpus line %d: no use of %s (%d uses)", r->line, col, st->n_columns);
}

/* "table.col yes|no": whether the use of that column is bound. */
static void check_bound(const char *spec, const SqlStmt *st, const Record *r)
{
	char col[256], want[8], name[256];
	int k;

	if (sscanf(spec, "%255s %7s", col, want) != 2 || (strcmp(want, "yes") != 0 && strcmp(want, "no") != 0))
		fail_msg("lineage corpus line %d: bound needs COLUMN yes|no", r->line);
	for (k = 0; k < st->n_columns; k++) {
		column_text(st->columns[k].column, name, sizeof(name));
		if (strcmp(name, col) != 0)
			continue;
		if (st->columns[k].bound != (strcmp(want, "yes") == 0))
			fail_msg("lineage corpus line %d: %s is %sbound", r->line, col, st->columns[k].bound ? "" : "not ");
		return;
	}
	fail_msg("lineage corpus line %d: no use of %s (%d uses)", r->line, col, st->n_columns);
}

static void check_lineage(const Record *r, const StmtInfo *info)
{
	char name[256], buf[128];
	int i, stmt = 0, n_out = 0, n_use = 0, want_outs = -1;

	if (info->error != NULL)
		fail_msg("lineage corpus line %d: does not parse: %s", r->line, info->error);
	for (i = 0; i <= r->n_expect; i++) {
		const char *e = i < r->n_expect ? r->expect[i] : "stmt: -1", *v = strchr(e, ':');

		v = v != NULL ? v + 1 : "";
		while (*v == ' ')
			v++;
		if (strncmp(e, "stmt:", 5) == 0) {
			if ((n_out > 0 || want_outs >= 0) && info->stmts[stmt].n_outputs != (want_outs >= 0 ? want_outs : n_out))
				fail_msg("lineage corpus line %d: statement %d has %d outputs, expected %d", r->line, stmt,
					 info->stmts[stmt].n_outputs, want_outs >= 0 ? want_outs : n_out);
			if (n_use > 0 && info->stmts[stmt].n_columns != n_use) {
				for (n_use = 0; n_use < info->stmts[stmt].n_columns; n_use++) {
					column_text(info->stmts[stmt].columns[n_use].column, name, sizeof(name));
					print_message("  use: %s %s\n", name,
						      contexts_text(info->stmts[stmt].columns[n_use].contexts, buf, sizeof(buf)));
				}
				fail_msg("lineage corpus line %d: statement %d has %d uses, expected %d", r->line, stmt,
					 info->stmts[stmt].n_columns, n_use);
			}
			stmt = atoi(v);
			n_out = n_use = 0;
			want_outs = -1;
			if (stmt >= info->n_stmts)
				fail_msg("lineage corpus line %d: no statement %d", r->line, stmt);
		} else if (strncmp(e, "out:", 4) == 0) {
			check_output(v, &info->stmts[stmt], n_out++, r);
		} else if (strncmp(e, "outs:", 5) == 0) {
			want_outs = atoi(v);
		} else if (strncmp(e, "use:", 4) == 0) {
			check_use(v, &info->stmts[stmt], r);
			n_use++;
		} else if (strncmp(e, "bound:", 6) == 0) {
			check_bound(v, &info->stmts[stmt], r);
		} else if (strcmp(e, "uses: 0") == 0) {
			if (info->stmts[stmt].n_columns != 0)
				fail_msg("lineage corpus line %d: statement %d has %d uses, expected none", r->line, stmt,
					 info->stmts[stmt].n_columns);
		} else {
			fail_msg("lineage corpus line %d: unknown expectation '%s'", r->line, e);
		}
	}
}

static void corpus_case(void **state)
{
	const Record *r = *state;
	StmtInfo *info;
	int round;

	for (round = 0; round < 3; round++) {
		sqlinfo_set_cache_capacity(round == 0 ? 0 : 4096);
		info = sqlinfo_analyze(r->sql, strlen(r->sql));
		assert_non_null(info);
		if (r->lineage)
			check_lineage(r, info);
		else
			check_record(r, info);
		sqlinfo_unref(info);
	}
}

/* ---- the cache --------------------------------------------------------------- */

static StmtInfo *analyze(const char *sql)
{
	StmtInfo *info = sqlinfo_analyze(sql, strlen(sql));

	assert_non_null(info);
	return info;
}

static uint32_t classes_of(const char *sql)
{
	StmtInfo *info = analyze(sql);
	uint32_t c = info->classes;

	sqlinfo_unref(info);
	return c;
}

static void cache_on(void **state)
{
	(void)state;
	sqlinfo_thread_cleanup();
	sqlinfo_set_cache_capacity(4096);
}

/* Literals that decide the classes never share a cached answer. */
static void test_cache_literal_sensitive(void **state)
{
	int i;

	cache_on(state);
	for (i = 0; i < 3; i++) {
		assert_true(classes_of("DELETE FROM t WHERE 1=1") & SC_DESTRUCTIVE);
		assert_false(classes_of("DELETE FROM t WHERE 1=2") & SC_DESTRUCTIVE);
		assert_true(classes_of("DELETE FROM t WHERE 1=1") & SC_DESTRUCTIVE);
		assert_true(classes_of("DELETE FROM t WHERE 2=2") & SC_DESTRUCTIVE);
		assert_false(classes_of("DELETE FROM t WHERE 2=1") & SC_DESTRUCTIVE);
	}
	for (i = 0; i < 3; i++) {
		assert_int_equal(classes_of("SELECT set_config('role','x',false)"), SC_SELECT | SC_PRIVILEGE);
		assert_int_equal(classes_of("SELECT set_config('application_name','x',false)"), SC_SELECT | SC_SESSION);
		assert_int_equal(classes_of("SELECT set_config('role','y',false)"), SC_SELECT | SC_PRIVILEGE);
		assert_int_equal(classes_of("SELECT set_config('search_path','y',false)"), SC_SELECT | SC_SESSION);
	}
	/* The other order: the harmless literal first. */
	cache_on(state);
	assert_false(classes_of("DELETE FROM t WHERE 'a'='b'") & SC_DESTRUCTIVE);
	assert_true(classes_of("DELETE FROM t WHERE 'a'='a'") & SC_DESTRUCTIVE);
	assert_int_equal(classes_of("SELECT set_config('application_name','x',false)"), SC_SELECT | SC_SESSION);
	assert_int_equal(classes_of("SELECT set_config('role','x',false)"), SC_SELECT | SC_PRIVILEGE);
	assert_int_equal(classes_of("EXPLAIN (ANALYZE 'off') DELETE FROM t"), SC_READ);
	assert_int_equal(classes_of("EXPLAIN (ANALYZE 'on') DELETE FROM t"),
			 SC_READ | SC_DELETE | SC_WRITE | SC_DESTRUCTIVE);
	assert_int_equal(classes_of("SET client_encoding = 'UTF8'"), SC_SESSION);
	assert_int_equal(classes_of("SET client_encoding = 'SJIS'"), SC_SESSION | SC_ADMIN);
}

/* Statement `idx`'s COPY form as "format delim null header": "csv | x 1". */
static void copy_of(const char *sql, int idx, char *buf, size_t len)
{
	StmtInfo *info = analyze(sql);
	const SqlCopyOut *c;

	assert_true(idx < info->n_stmts);
	c = &info->stmts[idx].copy;
	snprintf(buf, len, "%s %c %s %d", copy_formats[c->format], c->delimiter != '\0' ? c->delimiter : '0',
		 c->null_string != NULL ? c->null_string : "-", c->header);
	sqlinfo_unref(info);
}

/* COPY options are literals: COPY statements differing in them never share a cached analysis. */
static void test_cache_copy_options(void **state)
{
	static const char *const cases[][2] = {
		{ "COPY t TO STDOUT (DELIMITER '|')", "text | - 0" },
		{ "COPY t TO STDOUT (DELIMITER ',')", "text , - 0" },
		{ "COPY t TO STDOUT (FORMAT 'csv', NULL 'a')", "csv , a 0" },
		{ "COPY t TO STDOUT (FORMAT 'text', NULL 'b')", "text \t b 0" },
		{ "COPY t TO STDOUT (FORMAT 'binary', NULL 'b')", "binary \t b 0" },
		{ "COPY t TO STDOUT (HEADER 1)", "text \t - 1" },
		{ "COPY t TO STDOUT (HEADER 0)", "text \t - 0" },
		{ "COPY t TO STDOUT (HEADER 'on')", "text \t - 1" },
		{ "COPY t TO STDOUT (HEADER 'off')", "text \t - 0" },
		{ "COPY t TO STDOUT", "text \t - 0" },
		{ "COPY t TO STDOUT  ", "text \t - 0" },
		{ "SELECT 1; COPY t TO STDOUT DELIMITER '|' NULL 'x'", "text | x 0" },
		{ "SELECT 2; COPY t TO STDOUT DELIMITER ';' NULL 'y'", "text ; y 0" },
		{ "SELECT  2 ; COPY t TO STDOUT DELIMITER ';' NULL 'y'", "text ; y 0" },
		{ "COPY t TO '/tmp/x' (DELIMITER '|')", "none 0 - 0" },
	};
	char buf[64];
	size_t i;
	int round;

	cache_on(state);
	for (round = 0; round < 3; round++) {
		for (i = 0; i < PGV_ARRAY_LEN(cases); i++) {
			int idx = strncmp(cases[i][0], "SELECT", 6) == 0;

			copy_of(cases[i][0], idx, buf, sizeof(buf));
			if (strcmp(buf, cases[i][1]) != 0)
				fail_msg("round %d: %s copies as '%s', expected '%s'", round, cases[i][0], buf, cases[i][1]);
		}
	}
	assert_true(sqlinfo_cache_hits() > 0);
}

/* The contexts statement 0 reads `column` in, or -1 when it does not. */
static int use_of(const char *sql, const char *column)
{
	StmtInfo *info = analyze(sql);
	int ctx = -1;

	for (int k = 0; k < info->stmts[0].n_columns; k++)
		if (strcmp(info->stmts[0].columns[k].column->column, column) == 0)
			ctx = (int)info->stmts[0].columns[k].contexts;
	sqlinfo_unref(info);
	return ctx;
}

/* ORDER BY / GROUP BY by position: the literal says which column is sorted on. */
static void test_cache_sort_position(void **state)
{
	cache_on(state);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(use_of("SELECT email, id FROM users ORDER BY 2", "email"), SQL_USE_OUTPUT);
		assert_int_equal(use_of("SELECT email, id FROM users ORDER BY 1", "email"),
				 SQL_USE_OUTPUT | SQL_USE_PREDICATE);
		assert_int_equal(use_of("SELECT email, count(*) FROM users GROUP BY 1", "email"),
				 SQL_USE_OUTPUT | SQL_USE_PREDICATE);
	}
}

/* The number of sources of output 0 of statement 0. */
static int output_sources(const char *sql)
{
	StmtInfo *info = analyze(sql);
	int n;

	if (info->error != NULL || info->n_stmts != 1 || info->stmts[0].n_outputs < 1)
		fail_msg("%s: %s", sql, info->error != NULL ? info->error : "no output");
	n = info->stmts[0].outputs[0].n_sources;
	sqlinfo_unref(info);
	return n;
}

/* `COPY t TO` leaves generated columns out: its star says so; a query's star does not. */
static void test_copy_no_generated(void **state)
{
	static const struct {
		const char *sql;
		bool no_generated;
	} cases[] = {
		{ "COPY users TO STDOUT", true },
		{ "COPY public.users TO STDOUT (FORMAT csv)", true },
		{ "COPY (SELECT * FROM users) TO STDOUT", false },
		{ "COPY (TABLE users) TO STDOUT", false },
		{ "COPY users (email) TO STDOUT", false },
		{ "SELECT * FROM users", false },
	};

	(void)state;
	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++) {
		StmtInfo *info = analyze(cases[i].sql);

		if (info->n_stmts != 1 || info->stmts[0].n_outputs != 1)
			fail_msg("%s: %d outputs", cases[i].sql, info->n_stmts == 1 ? info->stmts[0].n_outputs : -1);
		if (info->stmts[0].outputs[0].no_generated != cases[i].no_generated)
			fail_msg("%s: no_generated %d", cases[i].sql, info->stmts[0].outputs[0].no_generated);
		sqlinfo_unref(info);
	}
}

/*
 * Output names of computed columns, as PostgreSQL 15.18 names them
 * (FigureColname; asked of the server). Subquery s has the computed column
 * (no sources) and zz (users.email): s."name" reads no source when the name
 * is right, and the whole row of s (users.email) when no column has it. A
 * name the analysis gives as NULL (PostgreSQL's "?column?") matches every
 * name.
 */
static void test_output_names(void **state)
{
	static const char *const cases[][2] = {
		{ "(CASE WHEN true THEN 1 END)::text", "text" },
		{ "current_user::text", "current_user" },
		{ "CASE WHEN true THEN 1 ELSE 2 END", "case" },
		{ "CASE WHEN true THEN 'a' ELSE 'x'::text END", "case" },
		{ "CASE WHEN true THEN 1 ELSE 'x'::text::int END", "case" },
		{ "CASE WHEN true THEN 2 ELSE b.y END", "y" },
		{ "NULLIF(1, 2)", "nullif" },
		{ "greatest(1, 2)", "greatest" },
		{ "least(1, 2)", "least" },
		{ "1::int", "int4" },
		{ "'x'::varchar(3)", "varchar" },
		{ "ARRAY[1]", "array" },
		{ "ROW(1, 2)", "row" },
		{ "(SELECT 1 AS q)", "q" },
		{ "(SELECT 1)", NULL },
		{ "EXISTS (SELECT 1)", "exists" },
		{ "ARRAY(SELECT 1)", "array" },
		{ "xmlelement(name e, 1)", "xmlelement" },
		{ "xmlconcat('<a/>'::xml)", "xmlconcat" },
		{ "xmlforest(1 AS a)", "xmlforest" },
		{ "xmlparse(content '<a/>')", "xmlparse" },
		{ "xmlpi(name x)", "xmlpi" },
		{ "xmlroot('<a/>'::xml, version '1.0')", "xmlroot" },
		{ "xmlserialize(content '<a/>'::xml AS text)", "xmlserialize" },
		{ "'<a/>'::xml IS DOCUMENT", NULL },
		{ "current_date", "current_date" },
		{ "current_time", "current_time" },
		{ "current_timestamp", "current_timestamp" },
		{ "localtime", "localtime" },
		{ "localtimestamp", "localtimestamp" },
		{ "current_role", "current_role" },
		{ "user", "user" },
		{ "session_user", "session_user" },
		{ "current_catalog", "current_catalog" },
		{ "current_schema", "current_schema" },
		{ "(ROW(1, 2)).f1", "f1" },
		{ "b.y::text COLLATE \"C\"", "y" },
		{ "coalesce(1, 2)", "coalesce" },
		{ "1 + 1", NULL },
		{ "-1", NULL },
		{ "1 IN (1)", NULL },
		{ "(ARRAY[1, 2])[1]", "array" },
		{ "(SELECT y FROM (SELECT 1 AS y) z)::int", "y" },
		{ "(CASE WHEN true THEN current_user END)::text", "text" },
		{ "COALESCE(1, 2)::text", "coalesce" },
		{ "current_time(2)", "current_time" },
		{ "localtime(1)", "localtime" },
		{ "CAST(b.y AS text)", "y" },
		{ "'x'::\"char\"", "char" },
		{ "1::double precision", "float8" },
		{ "ARRAY[1]::bigint[]", "array" },
		{ "grouping(b.y)", "grouping" },
		{ "upper('x')", "upper" },
		{ "pg_catalog.lower('x')", "lower" },
	};
	char sql[512];

	(void)state;
	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++) {
		const char *name = cases[i][1] != NULL ? cases[i][1] : "anything";

		snprintf(sql, sizeof(sql), "SELECT s.\"%s\" FROM (SELECT %s, u.email AS zz FROM (SELECT 1 AS y) b, "
			 "users u GROUP BY b.y, u.email) s", name, cases[i][0]);
		if (output_sources(sql) != 0)
			fail_msg("%s: not named %s", cases[i][0], name);
		snprintf(sql, sizeof(sql), "SELECT s.bogus FROM (SELECT %s, u.email AS zz FROM (SELECT 1 AS y) b, "
			 "users u GROUP BY b.y, u.email) s", cases[i][0]);
		if ((output_sources(sql) == 0) != (cases[i][1] == NULL))
			fail_msg("%s: named %s", cases[i][0], cases[i][1] != NULL ? "nothing" : "something");
	}
}

/*
 * Unqualified columns count against every table in scope: columns x tables
 * past the lineage budget is refused as too complex, not a syntax error.
 */
static void test_too_complex(void **state)
{
	size_t cap = 64 * 1024, len = 0;
	char *sql = malloc(cap);
	StmtInfo *info;

	(void)state;
	assert_non_null(sql);
	len += (size_t)snprintf(sql + len, cap - len, "SELECT c0");
	for (int i = 1; i < 700; i++)
		len += (size_t)snprintf(sql + len, cap - len, ", c%d", i);
	len += (size_t)snprintf(sql + len, cap - len, " FROM t0");
	for (int i = 1; i < 700; i++)
		len += (size_t)snprintf(sql + len, cap - len, ", t%d", i);
	info = sqlinfo_analyze(sql, len);
	assert_non_null(info);
	assert_non_null(info->error);
	assert_false(info->error_is_syntax);
	assert_string_equal(info->error, "statement too complex to analyse");
	assert_int_equal(info->n_parts, 0);
	sqlinfo_unref(info);
	free(sql);
}

/* `n` items "<prefix><i>" joined by `sep`, appended to sql (cap bytes) at *len. */
static void append_items(char *sql, size_t cap, size_t *len, const char *prefix, int n, const char *sep)
{
	for (int i = 0; i < n; i++)
		*len += (size_t)snprintf(sql + *len, cap - *len, "%s%s%d", i > 0 ? sep : "", prefix, i);
}

/*
 * Statements whose analysis would grow faster than their text (every
 * reference looked up in every scope entry) are refused as too complex, not
 * analysed for minutes: a few times their size in steps is the budget.
 */
static void test_too_slow(void **state)
{
	size_t cap = 1 << 20, len;
	char *sql = malloc(cap);
	StmtInfo *info;
	int i;

	(void)state;
	assert_non_null(sql);
	for (i = 0; i < 3; i++) {
		len = 0;
		if (i == 0) { /* a named window re-read for every call that names it */
			len += (size_t)snprintf(sql + len, cap - len, "SELECT ");
			append_items(sql, cap, &len, "row_number() OVER w AS r", 4000, ", ");
			len += (size_t)snprintf(sql + len, cap - len, " FROM t WINDOW w AS (PARTITION BY c");
			for (int k = 1; k < 4000; k++)
				len += (size_t)snprintf(sql + len, cap - len, ", c");
			len += (size_t)snprintf(sql + len, cap - len, ")");
		} else if (i == 1) { /* CTE names, each looked up among all those before it */
			len += (size_t)snprintf(sql + len, cap - len, "WITH ");
			for (int k = 0; k < 6000; k++)
				len += (size_t)snprintf(sql + len, cap - len, "%sa%d AS (SELECT 1 FROM t)", k > 0 ? ", " : "",
							k);
			len += (size_t)snprintf(sql + len, cap - len, " SELECT 1");
		} else { /* unqualified columns against many relations of one name */
			len += (size_t)snprintf(sql + len, cap - len, "SELECT ");
			append_items(sql, cap, &len, "c", 4000, ", ");
			len += (size_t)snprintf(sql + len, cap - len, " FROM t");
			for (int k = 1; k < 4000; k++)
				len += (size_t)snprintf(sql + len, cap - len, ", t");
		}
		info = sqlinfo_analyze(sql, len);
		assert_non_null(info);
		if (info->error == NULL || strcmp(info->error, "statement too complex to analyse") != 0)
			fail_msg("case %d (%zu bytes): %s", i, len, info->error != NULL ? info->error : "analysed");
		assert_false(info->error_is_syntax);
		sqlinfo_unref(info);
	}
	/* Large statements that cost steps in proportion to their size are analysed. */
	len = 0;
	len += (size_t)snprintf(sql + len, cap - len, "SELECT ");
	append_items(sql, cap, &len, "t.c", 20000, ", ");
	len += (size_t)snprintf(sql + len, cap - len, " FROM t, u, v WHERE ");
	append_items(sql, cap, &len, "t.d = ", 20000, " OR ");
	info = sqlinfo_analyze(sql, len);
	assert_non_null(info);
	assert_null(info->error);
	sqlinfo_unref(info);
	len = (size_t)snprintf(sql, cap, "INSERT INTO t VALUES ");
	for (i = 0; i < 20000; i++)
		len += (size_t)snprintf(sql + len, cap - len, "%s(%d, 'x', 2.5, now(), $1)", i > 0 ? ", " : "", i);
	info = sqlinfo_analyze(sql, len);
	assert_non_null(info);
	assert_null(info->error);
	sqlinfo_unref(info);
	free(sql);
}

/* Statements differing only in literals share one analysis; their spans are their own. */
static void test_cache_shape_hits(void **state)
{
	char sql[128];
	StmtInfo *a, *b;
	uint64_t hits;
	int aid;

	cache_on(state);
	a = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
	hits = sqlinfo_cache_hits();
	for (aid = 10; aid < 100000; aid *= 10) {
		snprintf(sql, sizeof(sql), "SELECT abalance FROM pgbench_accounts WHERE aid = %d;", aid);
		b = analyze(sql);
		assert_int_equal(b->classes, SC_SELECT | SC_READ);
		assert_int_equal(b->fingerprint, a->fingerprint);
		assert_int_equal(b->n_stmts, 1);
		assert_int_equal(b->stmts[0].offset, 0);
		assert_int_equal(b->stmts[0].len, (int)strlen(sql) - 1);
		assert_string_equal(b->parts[0].tables[0].name, "pgbench_accounts");
		sqlinfo_unref(b);
	}
	assert_int_equal(sqlinfo_cache_hits(), hits + 4);
	/* Case of keywords, spaces and comments do not change the shape. */
	snprintf(sql, sizeof(sql), "select abalance\n FROM pgbench_accounts /* x */ where aid=7 ;");
	b = analyze(sql);
	assert_int_equal(sqlinfo_cache_hits(), hits + 5);
	assert_int_equal(b->fingerprint, a->fingerprint);
	assert_int_equal(b->stmts[0].len, (int)strlen(sql) - 1);
	sqlinfo_unref(b);
	/* Another identifier is another shape. */
	b = analyze("SELECT abalance FROM pgbench_tellers WHERE aid = 1;");
	assert_int_not_equal(b->fingerprint, a->fingerprint);
	assert_string_equal(b->parts[0].tables[0].name, "pgbench_tellers");
	sqlinfo_unref(b);
	/* The same text again: an exact hit. */
	b = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
	assert_ptr_equal(a, b);
	sqlinfo_unref(b);
	sqlinfo_unref(a);
	/* A text seen twice through its shape gets an exact entry: the third answer is the second. */
	a = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 777;");
	sqlinfo_unref(a);
	a = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 777;");
	b = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 777;");
	assert_ptr_equal(a, b);
	assert_int_equal(b->stmts[0].len, 53);
	sqlinfo_unref(a);
	sqlinfo_unref(b);
}

/* Shape hits of multi-statement text get the spans of the text at hand. */
static void test_cache_shape_spans(void **state)
{
	StmtInfo *a, *b;
	uint64_t hits;

	cache_on(state);
	a = analyze("SELECT 1; UPDATE t SET a = 2 WHERE b = 3; SELECT 4");
	hits = sqlinfo_cache_hits();
	b = analyze("SELECT 1000;   UPDATE t SET a = 222 WHERE b = 33333; SELECT 4444");
	assert_int_equal(sqlinfo_cache_hits(), hits + 1);
	assert_ptr_not_equal(a, b);
	assert_int_equal(b->n_stmts, 3);
	assert_int_equal(b->stmts[0].offset, 0);
	assert_int_equal(b->stmts[0].len, 11);
	assert_int_equal(b->stmts[1].offset, 12);
	assert_int_equal(b->stmts[1].len, 39);
	assert_int_equal(b->stmts[2].offset, 52);
	assert_int_equal(b->stmts[2].len, 0);
	assert_int_equal(a->stmts[1].offset, 9);
	assert_int_equal(b->parts[1].classes, SC_UPDATE | SC_WRITE);
	assert_string_equal(b->parts[1].tables[0].name, "t");
	assert_int_equal(b->stmts[1].classes, SC_UPDATE | SC_WRITE);
	sqlinfo_unref(a);
	sqlinfo_unref(b);
}

/* UESCAPE's literal changes an identifier: it stays in the shape. */
static void test_cache_uescape(void **state)
{
	StmtInfo *a, *b;

	cache_on(state);
	a = analyze("DELETE FROM U&\"x!0041\" UESCAPE '!' WHERE id = 1");
	b = analyze("DELETE FROM U&\"x!0041\" UESCAPE '#' WHERE id = 1");
	assert_string_equal(a->parts[0].tables[0].name, "xA");
	assert_string_equal(b->parts[0].tables[0].name, "x!0041");
	sqlinfo_unref(a);
	sqlinfo_unref(b);
	a = analyze("DELETE FROM U&\"\\0074\" WHERE id = 1");
	b = analyze("DELETE FROM U&\"\\0075\" WHERE id = 1");
	assert_string_equal(a->parts[0].tables[0].name, "t");
	assert_string_equal(b->parts[0].tables[0].name, "u");
	sqlinfo_unref(a);
	sqlinfo_unref(b);
}

/* A small cache evicts; answers stay right and nothing leaks (ASan). */
static void test_cache_eviction(void **state)
{
	char sql[128];
	StmtInfo *held, *info;
	int i, round;

	(void)state;
	sqlinfo_thread_cleanup();
	sqlinfo_set_cache_capacity(8);
	held = analyze("SELECT * FROM kept WHERE id = 1");
	for (round = 0; round < 3; round++) {
		for (i = 0; i < 50; i++) {
			snprintf(sql, sizeof(sql), "%s FROM t%d WHERE id = %d", i % 2 ? "DELETE" : "SELECT * ", i,
				 round);
			info = analyze(sql);
			assert_int_equal(info->parts[0].classes & (SC_SELECT | SC_DELETE), i % 2 ? SC_DELETE : SC_SELECT);
			snprintf(sql, sizeof(sql), "t%d", i);
			assert_string_equal(info->parts[0].tables[0].name, sql);
			sqlinfo_unref(info);
		}
	}
	/* The held analysis outlives its cache entries and the cache itself. */
	sqlinfo_thread_cleanup();
	assert_string_equal(held->parts[0].tables[0].name, "kept");
	sqlinfo_unref(held);
	sqlinfo_set_cache_capacity(4096);
}

/* Texts too long to cache are still analysed, every time. */
static void test_cache_long_text(void **state)
{
	size_t n = 70000, i;
	char *sql = malloc(n + 64);
	StmtInfo *info;
	uint64_t misses;

	cache_on(state);
	assert_non_null(sql);
	strcpy(sql, "DELETE FROM t WHERE id IN (1");
	for (i = strlen(sql); i < n; i += 2)
		memcpy(sql + i, ",1", 2);
	strcpy(sql + i, ")");
	misses = sqlinfo_cache_misses();
	info = analyze(sql);
	assert_int_equal(info->classes, SC_DELETE | SC_WRITE);
	sqlinfo_unref(info);
	info = analyze(sql);
	assert_int_equal(info->classes, SC_DELETE | SC_WRITE);
	sqlinfo_unref(info);
	assert_int_equal(sqlinfo_cache_misses(), misses + 2);
	free(sql);
}

/* ---- the rest of the API --------------------------------------------------------- */

static void test_per_part_lists(void **state)
{
	StmtInfo *info;

	(void)state;
	info = analyze("WITH moved AS (DELETE FROM queue q WHERE q.id < 10 RETURNING q.*) "
		       "INSERT INTO archive SELECT m.*, now() FROM moved m JOIN s.meta USING (id) "
		       "WHERE lower(m.kind) = 'x'; SELECT count(*) FROM archive");
	assert_int_equal(info->n_stmts, 2);
	assert_int_equal(info->n_parts, 3);
	assert_int_equal(info->parts[0].classes, SC_INSERT | SC_WRITE);
	assert_int_equal(info->parts[0].stmt, 0);
	assert_int_equal(info->parts[0].n_tables, 2);
	assert_string_equal(info->parts[0].tables[0].name, "archive");
	assert_null(info->parts[0].tables[0].schema);
	assert_int_equal(info->parts[0].tables[0].access, SQL_ACCESS_WRITE);
	assert_string_equal(info->parts[0].tables[1].schema, "s");
	assert_string_equal(info->parts[0].tables[1].name, "meta");
	assert_int_equal(info->parts[0].tables[1].access, SQL_ACCESS_READ);
	assert_int_equal(info->parts[0].n_functions, 2);
	assert_string_equal(info->parts[0].functions[0], "now");
	assert_string_equal(info->parts[0].functions[1], "lower");
	assert_int_equal(info->parts[1].classes, SC_DELETE | SC_WRITE);
	assert_int_equal(info->parts[1].stmt, 0);
	assert_int_equal(info->parts[1].n_tables, 1);
	assert_string_equal(info->parts[1].tables[0].name, "queue");
	assert_int_equal(info->parts[1].n_functions, 0);
	assert_int_equal(info->parts[2].classes, SC_SELECT | SC_READ);
	assert_int_equal(info->parts[2].stmt, 1);
	assert_string_equal(info->parts[2].functions[0], "count");
	assert_int_equal(info->stmts[0].classes, SC_INSERT | SC_DELETE | SC_WRITE);
	assert_int_equal(info->stmts[1].classes, SC_SELECT | SC_READ);
	sqlinfo_unref(info);
}

static void expect_normalized(const char *sql, const char *want)
{
	char *got = sqlinfo_normalize(sql, strlen(sql));

	assert_non_null(got);
	assert_string_equal(got, want);
	free(got);
}

static void test_normalize(void **state)
{
	(void)state;
	expect_normalized("SELECT * FROM t WHERE a = 'x' AND b = 5 AND c = $1",
			  "SELECT * FROM t WHERE a = $2 AND b = $3 AND c = $1");
	expect_normalized("ALTER USER bob PASSWORD 'secret' /* keep */", "ALTER USER bob PASSWORD $1 /* keep */");
	expect_normalized("SELECT E'a\\'b', $tag$ x $tag$, 1.5e3, x'ff', B'01', U&'\\0061'",
			  "SELECT $1, $2, $3, $4, $5, $6");
	expect_normalized("SELECT 'a'\n'b' -- c", "SELECT $1 -- c"); /* one literal, continued */
	expect_normalized("SELECT 'a' /* c */ 'b'", "SELECT $1 /* c */ $2");
	expect_normalized("SELECT * FROM U&\"x!0041\" UESCAPE '!' WHERE a = 'v'",
			  "SELECT * FROM U&\"x!0041\" UESCAPE '!' WHERE a = $1");
	expect_normalized("", "");
	expect_normalized("SELECT 1 FROM", "SELECT $1 FROM"); /* lexes, does not parse */
	assert_null(sqlinfo_normalize("SELECT 'open", 12));
	assert_null(sqlinfo_normalize("SELECT 1\0x", 10));
}

static void test_class_names(void **state)
{
	static const char *const names[] = { "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE",
					     "COPY", "READ", "WRITE", "DDL", "DROP", "DESTRUCTIVE", "PRIVILEGE",
					     "ADMIN", "SESSION", "TRANSACTION", "PROCEDURAL" };
	char buf[512];
	unsigned i;

	(void)state;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		assert_int_equal(sqlinfo_class_from_name(names[i], strlen(names[i])), 1u << i);
		assert_string_equal(sqlinfo_class_names(1u << i, buf, sizeof(buf)), names[i]);
	}
	assert_string_equal(sqlinfo_class_names(SC_READ | SC_SELECT, buf, sizeof(buf)), "SELECT,READ");
	assert_string_equal(sqlinfo_class_names(0, buf, sizeof(buf)), "");
	assert_string_equal(sqlinfo_class_names(SC_ALL, buf, sizeof(buf)),
			    "SELECT,INSERT,UPDATE,DELETE,MERGE,TRUNCATE,COPY,READ,WRITE,DDL,DROP,DESTRUCTIVE,"
			    "PRIVILEGE,ADMIN,SESSION,TRANSACTION,PROCEDURAL");
	assert_string_equal(sqlinfo_class_names(SC_SELECT | SC_READ | SC_WRITE, buf, 12), "SELECT,READ");
	assert_string_equal(sqlinfo_class_names(SC_SELECT, buf, 6), "");
	assert_int_equal(sqlinfo_class_from_name("all", 3), SC_ALL);
	assert_int_equal(sqlinfo_class_from_name("Destructive", 11), SC_DESTRUCTIVE);
	assert_int_equal(sqlinfo_class_from_name("READX", 5), 0);
	assert_int_equal(sqlinfo_class_from_name("READX", 4), SC_READ);
	assert_int_equal(sqlinfo_class_from_name("", 0), 0);
}

static void test_builtin_functions(void **state)
{
	(void)state;
	assert_true(sqlinfo_is_builtin_function("now"));
	assert_true(sqlinfo_is_builtin_function("pg_catalog.now"));
	assert_true(sqlinfo_is_builtin_function("set_config"));
	assert_true(sqlinfo_is_builtin_function("pg_read_file"));
	assert_true(sqlinfo_is_builtin_function("RI_FKey_check_ins"));
	assert_true(sqlinfo_is_builtin_function("abbrev"));
	assert_true(sqlinfo_is_builtin_function("xpath_exists"));
	assert_false(sqlinfo_is_builtin_function("NOW"));
	assert_false(sqlinfo_is_builtin_function("public.now"));
	assert_false(sqlinfo_is_builtin_function("x.pg_catalog.now"));
	assert_false(sqlinfo_is_builtin_function("dblink"));
	assert_false(sqlinfo_is_builtin_function(""));
	assert_false(sqlinfo_is_builtin_function(NULL));
}

static void test_refusals(void **state)
{
	StmtInfo *info;
	char *deep;
	size_t i, n = 30000;

	(void)state;
	info = sqlinfo_analyze("SELECT 1\0; DROP TABLE t", 23);
	assert_non_null(info);
	assert_non_null(info->error);
	assert_int_equal(info->n_parts, 0);
	sqlinfo_unref(info);
	info = sqlinfo_analyze("SELECT 1\0\0", 10); /* a trailing terminator is no part of the text */
	assert_non_null(info);
	assert_null(info->error);
	assert_int_equal(info->classes, SC_SELECT | SC_READ);
	sqlinfo_unref(info);
	info = sqlinfo_analyze(NULL, 0);
	assert_non_null(info);
	assert_int_equal(info->n_stmts, 0);
	sqlinfo_unref(info);
	/* Nesting deeper than the walker takes is refused, not crashed on. */
	deep = malloc(n * 2 + 16);
	assert_non_null(deep);
	strcpy(deep, "SELECT 1");
	for (i = 0; i < n; i++)
		memcpy(deep + 8 + 2 * i, "+1", 2);
	deep[8 + 2 * n] = '\0';
	info = analyze(deep);
	assert_non_null(info->error);
	assert_int_equal(info->n_parts, 0);
	sqlinfo_unref(info);
	free(deep);
	assert_null(sqlinfo_ref(NULL));
	sqlinfo_unref(NULL);
}

static void test_ref_unref(void **state)
{
	StmtInfo *a, *b;

	cache_on(state);
	a = analyze("SELECT 1");
	assert_int_equal(a->refcount, 3); /* the caller, the exact entry, the shape entry */
	b = sqlinfo_ref(a);
	assert_int_equal(a->refcount, 4);
	sqlinfo_unref(b);
	sqlinfo_thread_cleanup();
	assert_int_equal(a->refcount, 1);
	sqlinfo_unref(a);
	a = analyze("SELECT 1"); /* works again after a cleanup */
	assert_int_equal(a->classes, SC_SELECT | SC_READ);
	sqlinfo_unref(a);
}

/* A statement and the value a flag of its StmtInfo must have. */
typedef struct FlagCase {
	const char *sql;
	bool want;
} FlagCase;

/*
 * Checks flag `name` (read by `get`) of each case, with the cache off, then
 * twice with it on: cases differing only in a literal must not share an
 * answer that depends on it.
 */
static void check_flag(void **state, const FlagCase *cases, size_t n, const char *name,
		       bool (*get)(const StmtInfo *))
{
	for (int pass = 0; pass < 3; pass++) {
		if (pass == 0)
			sqlinfo_set_cache_capacity(0);
		else if (pass == 1)
			cache_on(state);
		for (size_t i = 0; i < n; i++) {
			StmtInfo *info = sqlinfo_analyze(cases[i].sql, strlen(cases[i].sql));

			assert_non_null(info);
			if (get(info) != cases[i].want)
				fail_msg("%s: %s %d (pass %d)", cases[i].sql, name, get(info), pass);
			sqlinfo_unref(info);
		}
	}
}

static bool get_shadows(const StmtInfo *info)
{
	return info->shadows_builtins;
}

static bool get_lexical(const StmtInfo *info)
{
	return info->changes_lexical;
}

/* search_path values and statements that put a schema before pg_catalog. */
static void test_search_path_shadows(void **state)
{
	static const FlagCase cases[] = {
		{ "SET search_path = public", false },
		{ "SET search_path = pg_catalog, public", false },
		{ "SET search_path = public, pg_catalog", true },
		{ "SET search_path TO 'public, pg_catalog'", true },
		{ "SET search_path = '$user', PG_CATALOG", true },
		{ "SET LOCAL search_path = app, \"pg_catalog\"", true },
		{ "RESET search_path", false },
		{ "SELECT set_config('search_path', 'public', false)", true }, /* set_config: not read */
		{ "SELECT set_config(lower('SEARCH_PATH'), 'public, pg_catalog', false)", true }, /* name not known */
		{ "SET work_mem = '64MB'", false },
		{ "SET SESSION search_path = public, pg_catalog", true },
		{ "SET search_path = DEFAULT", false },
		{ "SET search_path FROM CURRENT", false },
		{ "RESET ALL", false },
		/* pg_settings' update rule calls set_config() */
		{ "UPDATE pg_settings SET setting = 'public, pg_catalog' WHERE name = 'search_path'", true },
		{ "UPDATE pg_catalog.pg_settings SET setting = 'on' WHERE name = 'jit'", true },
		{ "EXPLAIN UPDATE pg_settings SET setting = 'public, pg_catalog' WHERE name = 'search_path'", false },
		/* the settings of later sessions */
		{ "ALTER ROLE CURRENT_USER SET search_path = public, pg_catalog", true },
		{ "ALTER ROLE bob IN DATABASE app SET search_path TO 'public', 'pg_catalog'", true },
		{ "ALTER DATABASE app SET search_path = public, pg_catalog", true },
		{ "ALTER SYSTEM SET search_path = public, pg_catalog", true },
		{ "ALTER ROLE bob SET search_path = public", false },
		{ "ALTER ROLE bob RESET search_path", false },
		{ "ALTER ROLE bob SET search_path FROM CURRENT", false },
	};

	check_flag(state, cases, PGV_ARRAY_LEN(cases), "shadows_builtins", get_shadows);
	assert_true(sqlinfo_search_path_shadows("a,pg_catalog"));
	assert_true(sqlinfo_search_path_shadows(" \"$user\" , pg_catalog , x"));
	assert_false(sqlinfo_search_path_shadows("pg_catalog,a"));
	assert_false(sqlinfo_search_path_shadows(" pg_catalog"));
	assert_false(sqlinfo_search_path_shadows("a, pg_catalogue"));
	assert_false(sqlinfo_search_path_shadows(""));
	/* PostgreSQL skips \n, \r and \f around list items as it does spaces and tabs */
	assert_true(sqlinfo_search_path_shadows("a,\npg_catalog"));
	assert_true(sqlinfo_search_path_shadows("a, pg_catalog\n"));
	assert_true(sqlinfo_search_path_shadows("a,\r\n\tpg_catalog\r\n"));
	assert_true(sqlinfo_search_path_shadows("a\f,\fpg_catalog"));
	assert_false(sqlinfo_search_path_shadows("\npg_catalog,\na"));
}

static bool get_path(const StmtInfo *info)
{
	return info->changes_search_path;
}

/* Statements after which an unqualified name may be found in another schema than under the default path. */
static void test_changes_search_path(void **state)
{
	static const FlagCase cases[] = {
		{ "SELECT * FROM t", false },
		{ "SET search_path = secret, public", true },
		{ "SET search_path = public", true }, /* "$user" is gone: any value counts */
		{ "SET LOCAL search_path TO secret", true },
		{ "SET search_path = DEFAULT", true },
		{ "RESET search_path", true },
		{ "set SEARCH_PATH = x", true },
		{ "SET ROLE other", true }, /* what "$user" stands for */
		{ "RESET ROLE", true },
		{ "SET SESSION AUTHORIZATION other", true },
		{ "SELECT set_config('search_path', 'secret', false)", true },
		{ "SELECT pg_catalog.set_config('role', 'x', false)", true },
		{ "SELECT set_config(lower('SEARCH_PATH'), 'secret', false)", true }, /* name not known */
		{ "SELECT set_config('application_name', 'x', false)", false },
		{ "UPDATE pg_settings SET setting = 'secret' WHERE name = 'search_path'", true },
		{ "SET work_mem = '64MB'", false },
		{ "RESET ALL", false },
		{ "SELECT 1; SET search_path = secret", true },
		/* code pgveil cannot see may set it */
		{ "DO $$ BEGIN PERFORM set_config('search_path', 'secret', false); END $$", true },
		{ "CALL p()", true },
		{ "SELECT my_function()", true },
		{ "SELECT query_to_xml('SELECT 1', true, true, '')", true },
		/* pg_temp is searched first */
		{ "CREATE TEMP TABLE t (a int)", true },
		{ "CREATE TABLE pg_temp.t (a int)", true },
		{ "SELECT * INTO TEMP t FROM u", true },
		{ "SELECT * FROM pg_temp.t", false },
		{ "CREATE TABLE public.t (a int)", false },
		/* later sessions' defaults: not this session's path */
		{ "ALTER ROLE CURRENT_USER SET search_path = secret", false },
	};

	check_flag(state, cases, PGV_ARRAY_LEN(cases), "changes_search_path", get_path);
}

/* Statements after which the server would read statement text differently from pgveil. */
static void test_changes_lexical(void **state)
{
	static const FlagCase cases[] = {
		{ "SET client_encoding = 'UTF8'", false },
		{ "SET client_encoding = 'SJIS'", true },
		{ "SET standard_conforming_strings = 'on'", false },
		{ "SET standard_conforming_strings = 'off'", true },
		{ "SET application_name = 'x'", false },
		{ "SELECT set_config('client_encoding', 'UTF8', false)", true }, /* the value is not read */
		{ "SELECT set_config('application_name', 'x', false)", false },
		{ "SELECT set_config(lower('CLIENT_ENCODING'), 'SJIS', false)", true }, /* name not known */
		{ "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'", true },
		{ "EXPLAIN UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'", false },
		/* the settings of later sessions */
		{ "ALTER ROLE CURRENT_USER SET standard_conforming_strings = 'on'", false },
		{ "ALTER ROLE CURRENT_USER SET standard_conforming_strings = 'off'", true },
		{ "ALTER DATABASE app SET client_encoding = 'UTF8'", false },
		{ "ALTER DATABASE app SET client_encoding = 'SJIS'", true },
		{ "ALTER SYSTEM SET standard_conforming_strings = off", true },
		{ "ALTER ROLE bob RESET client_encoding", false },
		{ "ALTER ROLE bob SET work_mem = '1GB'", false },
	};

	check_flag(state, cases, PGV_ARRAY_LEN(cases), "changes_lexical", get_lexical);
}

int main(void)
{
	static const struct CMUnitTest unit[] = {
		cmocka_unit_test(test_cache_literal_sensitive),
		cmocka_unit_test(test_cache_sort_position),
		cmocka_unit_test(test_cache_copy_options),
		cmocka_unit_test(test_output_names),
		cmocka_unit_test(test_copy_no_generated),
		cmocka_unit_test(test_too_complex),
		cmocka_unit_test(test_too_slow),
		cmocka_unit_test(test_cache_shape_hits),
		cmocka_unit_test(test_cache_shape_spans),
		cmocka_unit_test(test_cache_uescape),
		cmocka_unit_test(test_cache_eviction),
		cmocka_unit_test(test_cache_long_text),
		cmocka_unit_test(test_per_part_lists),
		cmocka_unit_test(test_normalize),
		cmocka_unit_test(test_class_names),
		cmocka_unit_test(test_builtin_functions),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_ref_unref),
		cmocka_unit_test(test_search_path_shadows),
		cmocka_unit_test(test_changes_search_path),
		cmocka_unit_test(test_changes_lexical),
	};
	struct CMUnitTest *tests;
	int i, rc;

	corpus_load(TEST_SRCDIR "/data/sqlinfo.corpus", false);
	corpus_load(TEST_SRCDIR "/data/sqlinfo_lineage.corpus", true);
	tests = calloc((size_t)n_records, sizeof(*tests));
	if (tests == NULL)
		return 1;
	for (i = 0; i < n_records; i++) {
		char *name = malloc(32);

		if (name == NULL)
			return 1;
		snprintf(name, 32, "%s line %d", records[i].lineage ? "lineage" : "corpus", records[i].line);
		tests[i].name = name;
		tests[i].test_func = corpus_case;
		tests[i].initial_state = &records[i];
	}
	rc = _cmocka_run_group_tests("sqlinfo_corpus", tests, (size_t)n_records, NULL, NULL);
	rc |= cmocka_run_group_tests_name("sqlinfo", unit, NULL, NULL);
	sqlinfo_thread_cleanup();
	for (i = 0; i < n_records; i++) {
		int k;

		free((char *)tests[i].name);
		free(records[i].sql);
		for (k = 0; k < records[i].n_expect; k++)
			free(records[i].expect[k]);
	}
	free(tests);
	free(records);
	return rc;
}
