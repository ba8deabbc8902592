/* SPDX-License-Identifier: MIT */
/*
 * The COPY options of the sqlinfo module: for COPY ... TO STDOUT, the form
 * its rows take on the wire (SqlStmt.copy): text, csv or binary, the
 * delimiter, quote, escape and NULL strings, the header line, and whether
 * an option pgveil does not model is in play. It reads the options as
 * PostgreSQL 15's ProcessCopyOptions() does, from the same parse tree, and
 * fails towards `unusual`: an option it does not know, one given twice, a
 * value that is not a plain constant or not one byte where one byte is
 * needed. It does not check what the server itself refuses (a delimiter
 * that is also the quote, QUOTE in text format): such a COPY sends no rows.
 */
#include "sqlinfo_int.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* The options read, one bit each, to find one given twice. */
enum {
	COPT_FORMAT = 1u << 0,
	COPT_DELIMITER = 1u << 1,
	COPT_QUOTE = 1u << 2,
	COPT_ESCAPE = 1u << 3,
	COPT_NULL = 1u << 4,
	COPT_HEADER = 1u << 5,
	COPT_FREEZE = 1u << 6,
};

typedef struct CopyOpts {
	SqlCopyOut *out;
	const char **null_string; /* where the NULL option's string goes (in the JSON buffer) */
	unsigned seen;            /* COPT_* */
	bool quote_set;           /* QUOTE given (ESCAPE defaults to it) */
	bool escape_set;
	char num[32];             /* the text of a numeric value */
} CopyOpts;

/*
 * The value of an option as defGetString() reads it, or NULL when it has
 * none or is not a plain constant (a list, `*`, a type name).
 */
static const char *opt_string(CopyOpts *o, const JNode *def)
{
	const JNode *arg = j_get(def, "arg"), *body;
	const char *type = j_type(arg, &body), *s;

	if (type == NULL)
		return NULL;
	if (strcmp(type, "String") == 0)
		return (s = j_str(body, "sval")) != NULL ? s : "";
	if (strcmp(type, "Integer") == 0) {
		snprintf(o->num, sizeof(o->num), "%lld", j_num(body, "ival"));
		return o->num;
	}
	if (strcmp(type, "Float") == 0)
		return j_str(body, "fval");
	if (strcmp(type, "Boolean") == 0)
		return j_true(body, "boolval") ? "true" : "false";
	return NULL;
}

/* A one-byte option (DELIMITER, QUOTE, ESCAPE) into *c; false when it is not one byte. */
static bool opt_char(CopyOpts *o, const JNode *def, char *c)
{
	const char *s = opt_string(o, def);

	if (s == NULL || s[0] == '\0' || s[1] != '\0')
		return false;
	*c = s[0];
	return true;
}

static bool opt_format(CopyOpts *o, const JNode *def)
{
	const char *s = opt_string(o, def);

	if (s == NULL)
		return false;
	if (strcmp(s, "text") == 0)
		o->out->format = SQL_COPY_TEXT;
	else if (strcmp(s, "csv") == 0)
		o->out->format = SQL_COPY_CSV;
	else if (strcmp(s, "binary") == 0)
		o->out->format = SQL_COPY_BINARY;
	else
		return false;
	return true;
}

/* HEADER as defGetCopyHeaderChoice(): no value, 0/1, true/false/on/off, match. */
static bool opt_header(CopyOpts *o, const JNode *def)
{
	const JNode *arg = j_get(def, "arg"), *body;
	const char *type = j_type(arg, &body), *s;
	long long n;

	if (arg == NULL) {
		o->out->header = true;
		return true;
	}
	if (type != NULL && strcmp(type, "Integer") == 0) {
		n = j_num(body, "ival");
		o->out->header = n == 1;
		return n == 0 || n == 1;
	}
	if ((s = opt_string(o, def)) == NULL)
		return false;
	if (strcasecmp(s, "true") == 0 || strcasecmp(s, "on") == 0 || strcasecmp(s, "match") == 0)
		o->out->header = true;
	else if (strcasecmp(s, "false") == 0 || strcasecmp(s, "off") == 0)
		o->out->header = false;
	else
		return false;
	return true;
}

/* FREEZE changes nothing in what COPY TO sends; its value must still be a boolean constant. */
static bool opt_freeze(CopyOpts *o, const JNode *def)
{
	return j_get(def, "arg") == NULL || opt_string(o, def) != NULL;
}

/* Reads one option; false when pgveil does not model it (the COPY is then unusual). */
static bool opt_read(CopyOpts *o, const JNode *def)
{
	const char *name = j_str(def, "defname");
	const char *s;
	unsigned bit;

	if (name == NULL)
		return false;
	bit = strcmp(name, "format") == 0      ? COPT_FORMAT
	      : strcmp(name, "delimiter") == 0 ? COPT_DELIMITER
	      : strcmp(name, "quote") == 0     ? COPT_QUOTE
	      : strcmp(name, "escape") == 0    ? COPT_ESCAPE
	      : strcmp(name, "null") == 0      ? COPT_NULL
	      : strcmp(name, "header") == 0    ? COPT_HEADER
	      : strcmp(name, "freeze") == 0    ? COPT_FREEZE
					       : 0;
	if (bit == 0 || (o->seen & bit) != 0) /* FORCE_*, ENCODING, unknown, or given twice */
		return false;
	o->seen |= bit;
	switch (bit) {
	case COPT_FORMAT: return opt_format(o, def);
	case COPT_DELIMITER: return opt_char(o, def, &o->out->delimiter);
	case COPT_QUOTE: o->quote_set = true; return opt_char(o, def, &o->out->quote);
	case COPT_ESCAPE: o->escape_set = true; return opt_char(o, def, &o->out->escape);
	case COPT_HEADER: return opt_header(o, def);
	case COPT_FREEZE: return opt_freeze(o, def);
	default: break;
	}
	if ((s = opt_string(o, def)) == NULL) /* NULL */
		return false;
	*o->null_string = s;
	return true;
}

void sqlinfo_copy_stmt(SqlBuild *b, int stmt, const JNode *s)
{
	SqlStmtB *st = &b->stmts[stmt];
	CopyOpts o = { &st->copy, &st->copy_null, 0, false, false, { 0 } };
	const JNode *opt, *def;
	const char *type;

	if (j_true(s, "is_from") || j_get(s, "filename") != NULL)
		return; /* not TO STDOUT: no rows reach the client */
	st->copy.format = SQL_COPY_TEXT;
	st->copy.quote = '"';
	for (opt = j_first(j_get(s, "options")); opt != NULL; opt = j_next(opt)) {
		b->literal_sensitive = true; /* DELIMITER '|' and DELIMITER ',' share a shape */
		type = j_type(opt, &def);
		if (type == NULL || strcmp(type, "DefElem") != 0 || !opt_read(&o, def))
			st->copy.unusual = true;
	}
	if (!(o.seen & COPT_DELIMITER) || st->copy.delimiter == '\0')
		st->copy.delimiter = st->copy.format == SQL_COPY_CSV ? ',' : '\t';
	if (!o.quote_set || st->copy.quote == '\0')
		st->copy.quote = '"';
	if (!o.escape_set || st->copy.escape == '\0')
		st->copy.escape = st->copy.quote;
}
