/* SPDX-License-Identifier: MIT */
/*
 * The rules language (INTERFACE §4). A lexer (SQL-like tokens: identifiers
 * folded to lower case unless double-quoted, '' strings, integers, nested
 * comments) and a recursive-descent parser turn *.rules files into an
 * immutable, reference-counted RuleSet. This module owns the grammar, the
 * names of statement classes and mask functions as written in rules, the
 * checks of mask-function arguments, and error reporting: every error is
 * "file:line:col: message" at the offending token, and after an error the
 * parser resynchronises at the next ';' so one run reports all of a file's
 * errors.
 */
#include "pgveil/rules.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "pgveil/sqlinfo.h"

#define RULES_MAX_FILE_SIZE (16u << 20) /* a rules file larger than this is refused */
#define RULES_MAX_NAME 63               /* PostgreSQL's NAMEDATALEN - 1 */
#define RULES_MAX_ARGS 8                /* more mask arguments than any function takes */

/* ---- errors ------------------------------------------------------------------- */

/* Errors stored for one load; more are counted but not stored. */
#define RULES_MAX_ERRORS 1000
/* Names in one list (ON tables, FUNCTION names, GROUP / AGENT names). */
#define RULES_MAX_LIST 1000

/* Accumulated error messages of one load (several files). */
typedef struct ErrSink {
	char *buf;   /* "file:line:col: message\n"... */
	size_t len;  /* bytes in buf */
	int n;       /* errors, counted even when a message could not be stored */
} ErrSink;

static void PGV_PRINTF(5, 0) sink_vadd(ErrSink *e, const char *file, int line, int col, const char *fmt,
				       va_list ap)
{
	char msg[1024];
	int n;
	char *p;

	if (++e->n > RULES_MAX_ERRORS + 1)
		return; /* counted, not stored */
	n = snprintf(msg, sizeof(msg), "%s:%d:%d: ", file, line, col);
	if (n < 0 || (size_t)n >= sizeof(msg))
		n = (int)sizeof(msg) - 1;
	if (e->n > RULES_MAX_ERRORS)
		snprintf(msg + n, sizeof(msg) - (size_t)n, "too many errors; the rest are not shown");
	else
		vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	n = (int)strlen(msg);
	p = realloc(e->buf, e->len + (size_t)n + 2);
	if (p == NULL)
		return;
	e->buf = p;
	memcpy(e->buf + e->len, msg, (size_t)n);
	e->len += (size_t)n;
	e->buf[e->len++] = '\n';
	e->buf[e->len] = '\0';
}

static void PGV_PRINTF(5, 6) sink_add(ErrSink *e, const char *file, int line, int col, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sink_vadd(e, file, line, col, fmt, ap);
	va_end(ap);
}

/* ---- names -------------------------------------------------------------------- */

static const char *const mask_fn_names[] = {
	[MASK_REDACT] = "redact",   [MASK_NULL] = "null",         [MASK_CONSTANT] = "constant",
	[MASK_PARTIAL] = "partial", [MASK_EMAIL] = "email",       [MASK_HASH] = "hash",
	[MASK_TRUNCATE] = "truncate", [MASK_ROUND] = "round",
};

const char *rules_mask_fn_name(MaskFn fn)
{
	if ((size_t)fn >= PGV_ARRAY_LEN(mask_fn_names))
		return "?";
	return mask_fn_names[fn];
}

/* ---- lexer -------------------------------------------------------------------- */

typedef enum {
	T_EOF, T_IDENT, T_STRING, T_INT, T_COMMA, T_DOT, T_SEMI, T_LPAREN, T_RPAREN, T_STAR, T_ERROR,
} TokKind;

typedef struct Token {
	TokKind kind;
	int line, col;      /* 1-based position of its first character */
	int eline, ecol;    /* position just after it */
	size_t start, end;  /* its bytes in the text */
	bool quoted;        /* T_IDENT written as "..." */
	char *val;          /* T_IDENT (folded or unescaped), T_STRING (unescaped); owned */
	long long ival;     /* T_INT */
	bool overflow;      /* T_INT does not fit */
} Token;

typedef struct Lexer {
	const char *name;   /* file name for messages */
	const char *text;
	size_t len;
	size_t pos;         /* next byte */
	int line, col;      /* position of text[pos] */
	ErrSink *errs;
} Lexer;

/* Moves past one byte, keeping line and column (columns count UTF-8 characters). */
static void lex_step(Lexer *L)
{
	unsigned char c = (unsigned char)L->text[L->pos++];

	if (c == '\n') {
		L->line++;
		L->col = 1;
	} else if ((c & 0xC0) != 0x80) {
		L->col++;
	}
}

static int lex_peek(const Lexer *L, size_t ahead)
{
	return (L->pos + ahead < L->len) ? (unsigned char)L->text[L->pos + ahead] : -1;
}

static void PGV_PRINTF(4, 5) lex_error(Lexer *L, int line, int col, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sink_vadd(L->errs, L->name, line, col, fmt, ap);
	va_end(ap);
}

/* Skips a nested comment at "/" "*"; false when it does not end (reported). */
static bool lex_skip_block_comment(Lexer *L)
{
	int line = L->line, col = L->col, depth = 0;

	do {
		if (lex_peek(L, 0) == '/' && lex_peek(L, 1) == '*') {
			depth++;
			lex_step(L);
		} else if (lex_peek(L, 0) == '*' && lex_peek(L, 1) == '/') {
			depth--;
			lex_step(L);
		}
		lex_step(L);
	} while (depth > 0 && L->pos < L->len);
	if (depth > 0) {
		lex_error(L, line, col, "unterminated /* comment");
		return false;
	}
	return true;
}

/* Skips white space and comments; false after an unterminated comment. */
static bool lex_skip_space(Lexer *L)
{
	for (;;) {
		int c = lex_peek(L, 0);

		if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
			lex_step(L);
		} else if (c == '-' && lex_peek(L, 1) == '-') {
			while (L->pos < L->len && lex_peek(L, 0) != '\n')
				lex_step(L);
		} else if (c == '/' && lex_peek(L, 1) == '*') {
			if (!lex_skip_block_comment(L))
				return false;
		} else {
			return true;
		}
	}
}

/*
 * Reads a quoted string or identifier at its opening quote `q`; a doubled
 * quote stands for one. Sets t->val; false when unterminated (reported) or
 * out of memory.
 */
static bool lex_quoted(Lexer *L, Token *t, char q)
{
	size_t i = L->pos + 1, n = 0;
	char *out;

	for (;; i++, n++) {
		if (i >= L->len) {
			lex_error(L, t->line, t->col, "unterminated %s",
				  q == '\'' ? "string" : "quoted identifier");
			while (L->pos < L->len)
				lex_step(L);
			return false;
		}
		if (L->text[i] == q && (i + 1 >= L->len || L->text[i + 1] != q))
			break;
		if (L->text[i] == q)
			i++;
	}
	out = malloc(n + 1);
	if (out == NULL) {
		lex_error(L, t->line, t->col, "out of memory");
		return false;
	}
	lex_step(L);
	for (n = 0;; n++) {
		if (lex_peek(L, 0) == q) {
			lex_step(L);
			if (lex_peek(L, 0) != q)
				break;
		}
		out[n] = L->text[L->pos];
		lex_step(L);
	}
	out[n] = '\0';
	t->val = out;
	return true;
}

static bool ident_start(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

static bool ident_char(int c)
{
	return ident_start(c) || (c >= '0' && c <= '9') || c == '$';
}

/* An unquoted identifier, folded to lower case (ASCII only, as PostgreSQL does). */
static bool lex_ident(Lexer *L, Token *t)
{
	size_t start = L->pos;

	while (L->pos < L->len && ident_char(lex_peek(L, 0)))
		lex_step(L);
	t->val = strndup(L->text + start, L->pos - start);
	if (t->val == NULL) {
		lex_error(L, t->line, t->col, "out of memory");
		return false;
	}
	for (char *p = t->val; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	return true;
}

/* An integer, with an optional '-' directly before its digits. */
static void lex_int(Lexer *L, Token *t)
{
	bool neg = (lex_peek(L, 0) == '-');
	unsigned long long v = 0;

	if (neg)
		lex_step(L);
	while (L->pos < L->len && lex_peek(L, 0) >= '0' && lex_peek(L, 0) <= '9') {
		unsigned d = (unsigned)(lex_peek(L, 0) - '0');

		if (v > (unsigned long long)(INT64_MAX - d) / 10)
			t->overflow = true;
		else
			v = v * 10 + d;
		lex_step(L);
	}
	t->ival = neg ? -(long long)v : (long long)v;
}

static TokKind punct_kind(int c)
{
	switch (c) {
	case ',': return T_COMMA;
	case '.': return T_DOT;
	case ';': return T_SEMI;
	case '(': return T_LPAREN;
	case ')': return T_RPAREN;
	case '*': return T_STAR;
	default: return T_ERROR;
	}
}

/* Reads the next token into t (whose previous value the caller has released). */
static void lex_next(Lexer *L, Token *t)
{
	int c;

	memset(t, 0, sizeof(*t));
	if (!lex_skip_space(L)) {
		t->kind = T_ERROR;
		t->line = L->line;
		t->col = L->col;
		t->start = t->end = L->pos;
		return;
	}
	t->line = L->line;
	t->col = L->col;
	t->start = L->pos;
	c = lex_peek(L, 0);
	if (c < 0) {
		t->kind = T_EOF;
	} else if (c == '\'' || c == '"') {
		t->kind = lex_quoted(L, t, (char)c) ? (c == '"' ? T_IDENT : T_STRING) : T_ERROR;
		t->quoted = true;
		if (t->kind == T_IDENT && t->val[0] == '\0') {
			lex_error(L, t->line, t->col, "zero-length quoted identifier");
			t->kind = T_ERROR;
		}
	} else if (ident_start(c)) {
		t->kind = lex_ident(L, t) ? T_IDENT : T_ERROR;
	} else if ((c >= '0' && c <= '9') || (c == '-' && lex_peek(L, 1) >= '0' && lex_peek(L, 1) <= '9')) {
		t->kind = T_INT;
		lex_int(L, t);
	} else if ((t->kind = punct_kind(c)) != T_ERROR) {
		lex_step(L);
	} else {
		if (c >= 0x20 && c < 0x7f)
			lex_error(L, t->line, t->col, "unexpected character '%c'", c);
		else
			lex_error(L, t->line, t->col, "unexpected byte 0x%02x", (unsigned)c);
		lex_step(L);
	}
	t->end = L->pos;
	t->eline = L->line;
	t->ecol = L->col;
}

/* ---- parser ------------------------------------------------------------------- */

/* How a rule's parse went. */
typedef enum {
	PR_OK,         /* rule complete, ';' consumed */
	PR_ERROR,      /* error reported: skip to the next ';' */
	PR_NO_SEMI,    /* missing ';' reported at a token that starts the next rule: go on from there */
} ParseResult;

typedef struct Parser {
	Lexer lex;
	Token tok;          /* current token */
	size_t prev_end;    /* end of the token consumed last */
	int prev_line, prev_col; /* position just after it */
	char *text;         /* the current rule's source, whitespace collapsed */
	size_t text_len, text_cap;
	bool text_oom;      /* text could not be grown */
	bool in_rule;       /* consumed tokens go to text */
	Rule *rules;        /* rules parsed so far (all files) */
	int n_rules, cap;
} Parser;

static void text_append(Parser *p, const char *s, size_t n, bool space)
{
	size_t need = p->text_len + n + 2;

	if (p->text_oom)
		return;
	if (need > p->text_cap) {
		size_t cap = need * 2;
		char *nt = realloc(p->text, cap);

		if (nt == NULL) {
			p->text_oom = true;
			return;
		}
		p->text = nt;
		p->text_cap = cap;
	}
	if (space && p->text_len > 0)
		p->text[p->text_len++] = ' ';
	memcpy(p->text + p->text_len, s, n);
	p->text_len += n;
	p->text[p->text_len] = '\0';
}

/* Consumes the current token and reads the next. */
static void advance(Parser *p)
{
	if (p->in_rule)
		text_append(p, p->lex.text + p->tok.start, p->tok.end - p->tok.start,
			    p->tok.start > p->prev_end);
	p->prev_end = p->tok.end;
	p->prev_line = p->tok.eline;
	p->prev_col = p->tok.ecol;
	free(p->tok.val);
	lex_next(&p->lex, &p->tok);
}

/* Takes the current token's value (the caller owns it), then advances. */
static char *take(Parser *p)
{
	char *v = p->tok.val;

	p->tok.val = NULL;
	advance(p);
	return v;
}

/* True when the current token is the unquoted keyword kw (lower case). */
static bool is_kw(const Parser *p, const char *kw)
{
	return p->tok.kind == T_IDENT && !p->tok.quoted && strcmp(p->tok.val, kw) == 0;
}

static bool at_rule_start(const Parser *p)
{
	return is_kw(p, "mask") || is_kw(p, "allow") || is_kw(p, "block") || is_kw(p, "hold");
}

/* The current token as quoted in messages; a long one is cut at a character boundary. */
static const char *tok_desc(const Parser *p, char *buf, size_t buflen)
{
	const char *raw = p->lex.text + p->tok.start;
	size_t n = p->tok.end - p->tok.start, cut = 37;

	if (p->tok.kind == T_EOF)
		return "end of file";
	if (p->tok.quoted) { /* already in quotes */
		if (n > 40 || memchr(raw, '\n', n) != NULL)
			return p->tok.kind == T_STRING ? "a string" : "a quoted identifier";
		snprintf(buf, buflen, "%.*s", (int)n, raw);
	} else if (n > 40) {
		while (cut > 0 && ((unsigned char)raw[cut] & 0xC0) == 0x80)
			cut--;
		snprintf(buf, buflen, "'%.*s...'", (int)cut, raw);
	} else {
		snprintf(buf, buflen, "'%.*s'", (int)n, raw);
	}
	return buf;
}

/*
 * Reports an error at the current token and returns PR_ERROR. A T_ERROR
 * token was reported by the lexer already, so nothing is added for it.
 */
static ParseResult PGV_PRINTF(2, 3) perr(Parser *p, const char *fmt, ...)
{
	va_list ap;

	if (p->tok.kind == T_ERROR)
		return PR_ERROR;
	va_start(ap, fmt);
	sink_vadd(p->lex.errs, p->lex.name, p->tok.line, p->tok.col, fmt, ap);
	va_end(ap);
	return PR_ERROR;
}

static ParseResult PGV_PRINTF(4, 5) perr_at(Parser *p, int line, int col, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sink_vadd(p->lex.errs, p->lex.name, line, col, fmt, ap);
	va_end(ap);
	return PR_ERROR;
}

/* "expected X, not Y" at the current token. */
static ParseResult expected(Parser *p, const char *what)
{
	char buf[64];

	return perr(p, "expected %s, not %s", what, tok_desc(p, buf, sizeof(buf)));
}

static ParseResult oom(Parser *p)
{
	return perr_at(p, p->tok.line, p->tok.col, "out of memory");
}

/* ---- small containers --------------------------------------------------------- */

static bool namelist_has(const NameList *l, const char *s)
{
	for (int i = 0; i < l->n; i++)
		if (strcmp(l->items[i], s) == 0)
			return true;
	return false;
}

/* Appends s (taken: freed on failure). */
static bool namelist_push(NameList *l, char *s)
{
	char **items = realloc(l->items, sizeof(char *) * (size_t)(l->n + 1));

	if (items == NULL) {
		free(s);
		return false;
	}
	l->items = items;
	l->items[l->n++] = s;
	return true;
}

static void rule_clear(Rule *r)
{
	free(r->file);
	free(r->where);
	free(r->text);
	for (int i = 0; i < r->n_tables; i++) {
		free(r->tables[i].schema);
		free(r->tables[i].name);
	}
	free(r->tables);
	config_namelist_free(&r->functions);
	config_namelist_free(&r->for_who.names);
	config_namelist_free(&r->unless_who.names);
	free(r->message);
	free(r->mask_schema);
	free(r->mask_table);
	free(r->mask_column);
	for (int i = 0; i < r->n_args; i++)
		free(r->args[i].sval);
	free(r->args);
	memset(r, 0, sizeof(*r));
}

/* ---- names, tables, columns --------------------------------------------------- */

/* A database object name: an identifier of at most 63 bytes. Sets *out (owned). */
static ParseResult parse_name(Parser *p, const char *what, char **out)
{
	if (p->tok.kind != T_IDENT)
		return expected(p, what);
	if (strlen(p->tok.val) > RULES_MAX_NAME)
		return perr(p, "name longer than %d bytes (PostgreSQL would truncate it)", RULES_MAX_NAME);
	*out = take(p);
	return *out ? PR_OK : oom(p);
}

/* A table written "*" would read as the wildcard: refused (reported). */
static bool quoted_star(Parser *p)
{
	if (p->tok.kind != T_IDENT || !p->tok.quoted || strcmp(p->tok.val, "*") != 0)
		return false;
	perr(p, "\"*\" is not a table name: write * without quotes for every table of the schema");
	return true;
}

/* table := [schema .] (name | *), appended to r's ON list. */
static ParseResult parse_table(Parser *p, Rule *r)
{
	char *a = NULL, *b = NULL;
	int line = p->tok.line, col = p->tok.col;
	RuleTable *arr;

	if (p->tok.kind == T_STAR) {
		advance(p);
		a = strdup("*");
	} else if (quoted_star(p)) {
		return PR_ERROR;
	} else {
		if (parse_name(p, "a table name", &a) != PR_OK)
			return PR_ERROR;
		if (p->tok.kind == T_DOT) {
			advance(p);
			if (p->tok.kind == T_STAR) {
				advance(p);
				b = strdup("*");
			} else if (quoted_star(p)) {
				goto fail;
			} else if (parse_name(p, "a table name or * after '.'", &b) != PR_OK) {
				goto fail;
			}
			if (b == NULL)
				goto nomem;
			if (p->tok.kind == T_DOT) {
				perr(p, "a table is written [schema.]name: too many '.'");
				goto fail;
			}
		}
	}
	if (a == NULL)
		goto nomem;
	if (b == NULL) { /* no schema written */
		b = a;
		a = strdup("public");
		if (a == NULL)
			goto nomem;
	}
	for (int i = 0; i < r->n_tables; i++)
		if (strcmp(r->tables[i].schema, a) == 0 && strcmp(r->tables[i].name, b) == 0) {
			perr_at(p, line, col, "table %s.%s is listed twice", a, b);
			goto fail;
		}
	if (r->n_tables >= RULES_MAX_LIST) {
		perr_at(p, line, col, "more than %d tables in one ON list", RULES_MAX_LIST);
		goto fail;
	}
	arr = realloc(r->tables, sizeof(RuleTable) * (size_t)(r->n_tables + 1));
	if (arr == NULL)
		goto nomem;
	r->tables = arr;
	r->tables[r->n_tables++] = (RuleTable){ a, b };
	return PR_OK;
nomem:
	oom(p);
fail:
	free(a);
	free(b);
	return PR_ERROR;
}

/* column := [schema .] table . column */
static ParseResult parse_column(Parser *p, Rule *r)
{
	char *parts[3] = { NULL, NULL, NULL };
	int n = 0, line = p->tok.line, col = p->tok.col;

	for (;;) {
		if (parse_name(p, n == 0 ? "a column (table.column or schema.table.column) after MASK"
					 : "a name after '.'", &parts[n]) != PR_OK)
			goto fail;
		n++;
		if (p->tok.kind != T_DOT)
			break;
		if (n == 3) {
			perr(p, "a column is written [schema.]table.column: too many '.'");
			goto fail;
		}
		advance(p);
	}
	if (n == 1) {
		perr_at(p, line, col, "a column is written table.column or schema.table.column");
		goto fail;
	}
	if (n == 2) {
		parts[2] = parts[1];
		parts[1] = parts[0];
		parts[0] = strdup("public");
		if (parts[0] == NULL) {
			oom(p);
			goto fail;
		}
	}
	r->mask_schema = parts[0];
	r->mask_table = parts[1];
	r->mask_column = parts[2];
	return PR_OK;
fail:
	for (int i = 0; i < 3; i++)
		free(parts[i]);
	return PR_ERROR;
}

/* A function name of a FUNCTION rule: [schema .] name, kept as "name" or "schema.name". */
static ParseResult parse_function_name(Parser *p, Rule *r)
{
	char *a = NULL, *b = NULL, *full;
	int line = p->tok.line, col = p->tok.col;

	if (parse_name(p, "a function name", &a) != PR_OK)
		return PR_ERROR;
	if (p->tok.kind == T_DOT) {
		advance(p);
		if (parse_name(p, "a function name after '.'", &b) != PR_OK) {
			free(a);
			return PR_ERROR;
		}
		if (p->tok.kind == T_DOT) {
			free(a);
			free(b);
			return perr(p, "a function is written [schema.]name: too many '.'");
		}
	}
	if (b != NULL) {
		full = malloc(strlen(a) + strlen(b) + 2);
		if (full != NULL)
			sprintf(full, "%s.%s", a, b);
		free(a);
		free(b);
	} else {
		full = a;
	}
	if (full == NULL)
		return oom(p);
	if (r->functions.n >= RULES_MAX_LIST || namelist_has(&r->functions, full)) {
		if (r->functions.n >= RULES_MAX_LIST)
			perr_at(p, line, col, "more than %d functions in one rule", RULES_MAX_LIST);
		else
			perr_at(p, line, col, "function %s is listed twice", full);
		free(full);
		return PR_ERROR;
	}
	return namelist_push(&r->functions, full) ? PR_OK : oom(p);
}

/* class {, class} */
static ParseResult parse_classes(Parser *p, Rule *r)
{
	uint32_t seen = 0;
	bool seen_all = false;

	for (;;) {
		char buf[64];
		uint32_t c;

		if (p->tok.kind != T_IDENT)
			return expected(p, "a statement class (e.g. READ, WRITE, DDL) or FUNCTION");
		c = sqlinfo_class_from_name(p->tok.val, strlen(p->tok.val));
		if (c == 0)
			return perr(p, "unknown statement class %s", tok_desc(p, buf, sizeof(buf)));
		if (c == SC_ALL ? seen_all : (seen & c) != 0)
			return perr(p, "class %s is listed twice",
				    c == SC_ALL ? "ALL" : sqlinfo_class_names(c, buf, sizeof(buf)));
		if (c == SC_ALL)
			seen_all = true;
		else
			seen |= c;
		r->classes |= c;
		advance(p);
		if (p->tok.kind != T_COMMA)
			return PR_OK;
		advance(p);
	}
}

/* who := GROUP name {, name} | AGENT 'subject' {, 'subject'} | ANYONE */
static ParseResult parse_who(Parser *p, RuleWho *who, const char *clause)
{
	bool group;
	char buf[64];

	if (is_kw(p, "anyone")) {
		who->kind = WHO_ANYONE;
		advance(p);
		return PR_OK;
	}
	if (!is_kw(p, "group") && !is_kw(p, "agent")) {
		snprintf(buf, sizeof(buf), "GROUP, AGENT or ANYONE after %s", clause);
		return expected(p, buf);
	}
	group = is_kw(p, "group");
	who->kind = group ? WHO_GROUP : WHO_AGENT;
	advance(p);
	for (;;) {
		int line = p->tok.line, col = p->tok.col;
		char *name;

		if (group ? (p->tok.kind != T_IDENT && p->tok.kind != T_STRING) : p->tok.kind != T_STRING)
			return expected(p, group ? "a group name" : "a quoted subject ('name') after AGENT");
		if (p->tok.val[0] == '\0')
			return perr(p, "empty %s", group ? "group name" : "subject");
		name = take(p);
		if (name == NULL)
			return oom(p);
		if (who->names.n >= RULES_MAX_LIST) {
			perr_at(p, line, col, "more than %d names in one %s list", RULES_MAX_LIST,
				group ? "GROUP" : "AGENT");
			free(name);
			return PR_ERROR;
		}
		if (namelist_has(&who->names, name)) {
			perr_at(p, line, col, "%s '%s' is listed twice", group ? "group" : "agent", name);
			free(name);
			return PR_ERROR;
		}
		if (!namelist_push(&who->names, name))
			return oom(p);
		if (p->tok.kind != T_COMMA)
			return PR_OK;
		advance(p);
	}
}

/* ---- mask functions ----------------------------------------------------------- */

typedef struct ArgPos {
	int line, col;
} ArgPos;

/* Reports an error about a mask function's argument at its position. */
static ParseResult PGV_PRINTF(4, 5) arg_error(Parser *p, const Rule *r, ArgPos at, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return perr_at(p, at.line, at.col, "%s()%s", rules_mask_fn_name(r->mask_fn), msg);
}

static ParseResult arg_int(Parser *p, const Rule *r, int i, const ArgPos *pos, const char *what, long long min,
			   long long max)
{
	long long v = r->args[i].ival;

	if (r->args[i].type != MASK_ARG_INT)
		return arg_error(p, r, pos[i], ": %s must be an integer", what);
	if (max == INT32_MAX && v < min)
		return arg_error(p, r, pos[i], ": %s must be %lld or more", what, min);
	if (max == INT32_MAX && v > max)
		return arg_error(p, r, pos[i], ": %s is too large", what);
	if (v < min || v > max)
		return arg_error(p, r, pos[i], ": %s must be from %lld to %lld", what, min, max);
	return PR_OK;
}

static ParseResult arg_string(Parser *p, const Rule *r, int i, const ArgPos *pos, const char *what)
{
	if (r->args[i].type != MASK_ARG_STRING)
		return arg_error(p, r, pos[i], ": %s must be a quoted string", what);
	return PR_OK;
}

/* Checks arity: min..max arguments. pos[n_args] is the closing parenthesis. */
static ParseResult arg_count(Parser *p, const Rule *r, const ArgPos *pos, int min, int max, const char *sig)
{
	const char *fn = rules_mask_fn_name(r->mask_fn);
	ArgPos at = pos[(r->n_args > max) ? max : r->n_args];

	if (r->n_args >= min && r->n_args <= max)
		return PR_OK;
	if (max == 0)
		return arg_error(p, r, at, " takes no arguments");
	if (min == max)
		return arg_error(p, r, at, " takes %d argument%s: %s(%s)", min, min == 1 ? "" : "s", fn, sig);
	if (min == 0)
		return arg_error(p, r, at, " takes at most %d argument%s: %s(%s)", max, max == 1 ? "" : "s", fn,
				 sig);
	return arg_error(p, r, at, " takes %d to %d arguments: %s(%s)", min, max, fn, sig);
}

static ParseResult check_truncate_unit(Parser *p, Rule *r, const ArgPos *pos)
{
	static const char *const units[] = { "year", "month", "day", "hour" };
	char *s = r->args[0].sval;

	for (size_t i = 0; i < PGV_ARRAY_LEN(units); i++)
		if (strcasecmp(s, units[i]) == 0) {
			for (char *c = s; *c; c++)
				*c = (char)((*c >= 'A' && *c <= 'Z') ? *c - 'A' + 'a' : *c);
			return PR_OK;
		}
	return arg_error(p, r, pos[0], ": unit must be 'year', 'month', 'day' or 'hour'");
}

/* Checks the arguments of r's mask function against what it takes. */
static ParseResult check_mask_args(Parser *p, Rule *r, const ArgPos *pos)
{
	switch (r->mask_fn) {
	case MASK_REDACT:
	case MASK_NULL:
	case MASK_EMAIL:
		return arg_count(p, r, pos, 0, 0, "");
	case MASK_CONSTANT:
		if (arg_count(p, r, pos, 1, 1, "'value'") != PR_OK)
			return PR_ERROR;
		return arg_string(p, r, 0, pos, "the value");
	case MASK_PARTIAL:
		if (arg_count(p, r, pos, 3, 3, "keep_prefix, 'pad', keep_suffix") != PR_OK ||
		    arg_int(p, r, 0, pos, "keep_prefix", 0, INT32_MAX) != PR_OK ||
		    arg_string(p, r, 1, pos, "the padding") != PR_OK ||
		    arg_int(p, r, 2, pos, "keep_suffix", 0, INT32_MAX) != PR_OK)
			return PR_ERROR;
		return PR_OK;
	case MASK_HASH:
		if (arg_count(p, r, pos, 0, 1, "[length]") != PR_OK)
			return PR_ERROR;
		return r->n_args == 0 ? PR_OK : arg_int(p, r, 0, pos, "length", 1, 64);
	case MASK_TRUNCATE:
		if (arg_count(p, r, pos, 1, 1, "'year' | 'month' | 'day' | 'hour'") != PR_OK ||
		    arg_string(p, r, 0, pos, "the unit") != PR_OK)
			return PR_ERROR;
		return check_truncate_unit(p, r, pos);
	case MASK_ROUND:
		if (arg_count(p, r, pos, 1, 1, "digits") != PR_OK)
			return PR_ERROR;
		return arg_int(p, r, 0, pos, "digits", 1, 38);
	}
	return PR_ERROR;
}

/* One argument: an integer or a string. */
static ParseResult parse_mask_arg(Parser *p, Rule *r)
{
	MaskArg *a = &r->args[r->n_args];

	if (p->tok.kind == T_INT) {
		if (p->tok.overflow)
			return perr(p, "integer out of range");
		a->type = MASK_ARG_INT;
		a->ival = p->tok.ival;
		r->n_args++;
		advance(p);
		return PR_OK;
	}
	if (p->tok.kind == T_STRING) {
		a->type = MASK_ARG_STRING;
		a->sval = take(p);
		if (a->sval == NULL)
			return oom(p);
		r->n_args++;
		return PR_OK;
	}
	return expected(p, "an argument (an integer or a 'string')");
}

/* USING fn ( [arg {, arg}] ) */
static ParseResult parse_mask_fn(Parser *p, Rule *r)
{
	ArgPos pos[RULES_MAX_ARGS + 1];
	char buf[64];
	size_t i;

	if (!is_kw(p, "using"))
		return expected(p, "USING after the column");
	advance(p);
	if (p->tok.kind != T_IDENT)
		return expected(p, "a mask function after USING");
	for (i = 0; i < PGV_ARRAY_LEN(mask_fn_names); i++)
		if (strcmp(p->tok.val, mask_fn_names[i]) == 0)
			break;
	if (i == PGV_ARRAY_LEN(mask_fn_names))
		return perr(p, "unknown mask function %s (%s)", tok_desc(p, buf, sizeof(buf)),
			    "redact, null, constant, partial, email, hash, truncate, round");
	r->mask_fn = (MaskFn)i;
	advance(p);
	if (p->tok.kind != T_LPAREN)
		return expected(p, "'(' after the mask function");
	advance(p);
	r->args = calloc(RULES_MAX_ARGS, sizeof(MaskArg));
	if (r->args == NULL)
		return oom(p);
	while (p->tok.kind != T_RPAREN) {
		if (r->n_args > 0) {
			if (p->tok.kind != T_COMMA)
				return expected(p, "',' or ')'");
			advance(p);
		}
		if (r->n_args == RULES_MAX_ARGS)
			return perr(p, "too many arguments");
		pos[r->n_args] = (ArgPos){ p->tok.line, p->tok.col };
		if (parse_mask_arg(p, r) != PR_OK)
			return PR_ERROR;
	}
	pos[r->n_args] = (ArgPos){ p->tok.line, p->tok.col };
	advance(p);
	return check_mask_args(p, r, pos);
}

/* ---- rules -------------------------------------------------------------------- */

/* A rule ends here; missing ';' is reported at the token that should have been one. */
static ParseResult missing_semi(Parser *p)
{
	char buf[64];

	if (p->tok.kind == T_EOF)
		return perr_at(p, p->prev_line, p->prev_col, "missing ';' at the end of the rule");
	if (at_rule_start(p)) {
		perr(p, "missing ';' before %s", tok_desc(p, buf, sizeof(buf)));
		return PR_NO_SEMI;
	}
	return PR_ERROR;
}

/* FOR who / UNLESS who, each at most once. */
static ParseResult parse_who_clause(Parser *p, bool *has, RuleWho *who, const char *clause)
{
	if (*has)
		return perr(p, "%s is given twice", clause);
	*has = true;
	advance(p);
	return parse_who(p, who, clause);
}

/* The clauses after MASK ... USING fn(...): FOR, UNLESS, then ';'. */
static ParseResult parse_mask_clauses(Parser *p, Rule *r)
{
	while (p->tok.kind != T_SEMI) {
		ParseResult pr;

		if (is_kw(p, "for"))
			pr = parse_who_clause(p, &r->has_for, &r->for_who, "FOR");
		else if (is_kw(p, "unless"))
			pr = parse_who_clause(p, &r->has_unless, &r->unless_who, "UNLESS");
		else if (is_kw(p, "message") || is_kw(p, "on"))
			pr = perr(p, "%s is not allowed in a MASK rule", is_kw(p, "on") ? "ON" : "MESSAGE");
		else if (p->tok.kind == T_EOF || at_rule_start(p))
			pr = missing_semi(p);
		else
			pr = expected(p, "FOR, UNLESS or ';'");
		if (pr != PR_OK)
			return pr;
	}
	return PR_OK;
}

static ParseResult parse_message(Parser *p, Rule *r)
{
	if (r->message != NULL)
		return perr(p, "MESSAGE is given twice");
	advance(p);
	if (p->tok.kind != T_STRING)
		return expected(p, "a quoted text after MESSAGE");
	if (p->tok.val[0] == '\0')
		return perr(p, "empty MESSAGE");
	r->message = take(p);
	return r->message ? PR_OK : oom(p);
}

static ParseResult parse_on(Parser *p, Rule *r, bool *has_on)
{
	if (r->kind == RULE_FUNCTION)
		return perr(p, "ON is not allowed in a FUNCTION rule");
	if (*has_on)
		return perr(p, "ON is given twice");
	*has_on = true;
	advance(p);
	for (;;) {
		if (parse_table(p, r) != PR_OK)
			return PR_ERROR;
		if (p->tok.kind != T_COMMA)
			return PR_OK;
		advance(p);
	}
}

/* The clauses of a policy or function rule: ON, FOR, MESSAGE, then ';'. */
static ParseResult parse_policy_clauses(Parser *p, Rule *r)
{
	bool has_on = false;

	while (p->tok.kind != T_SEMI) {
		ParseResult pr;

		if (is_kw(p, "on"))
			pr = parse_on(p, r, &has_on);
		else if (is_kw(p, "for"))
			pr = parse_who_clause(p, &r->has_for, &r->for_who, "FOR");
		else if (is_kw(p, "message"))
			pr = parse_message(p, r);
		else if (is_kw(p, "unless"))
			pr = perr(p, "UNLESS is only allowed in MASK rules");
		else if (p->tok.kind == T_EOF || at_rule_start(p))
			pr = missing_semi(p);
		else
			pr = expected(p, r->kind == RULE_FUNCTION ? "FOR, MESSAGE or ';'"
								  : "ON, FOR, MESSAGE or ';'");
		if (pr != PR_OK)
			return pr;
	}
	return PR_OK;
}

static ParseResult parse_mask(Parser *p, Rule *r)
{
	r->kind = RULE_MASK;
	advance(p);
	if (parse_column(p, r) != PR_OK || parse_mask_fn(p, r) != PR_OK)
		return PR_ERROR;
	return parse_mask_clauses(p, r);
}

static ParseResult parse_policy(Parser *p, Rule *r)
{
	r->action = is_kw(p, "allow") ? RULE_ALLOW : is_kw(p, "block") ? RULE_BLOCK : RULE_HOLD;
	advance(p);
	if (is_kw(p, "function")) {
		r->kind = RULE_FUNCTION;
		advance(p);
		for (;;) {
			if (parse_function_name(p, r) != PR_OK)
				return PR_ERROR;
			if (p->tok.kind != T_COMMA)
				break;
			advance(p);
		}
	} else {
		r->kind = RULE_POLICY;
		if (parse_classes(p, r) != PR_OK)
			return PR_ERROR;
	}
	return parse_policy_clauses(p, r);
}

/* Gives the parsed rule its name and text and appends it (moved) to the parser's list. */
static bool rule_finish(Parser *p, Rule *r)
{
	Rule *arr;
	int n;

	if (p->text_oom)
		return false;
	r->file = strdup(p->lex.name);
	n = snprintf(NULL, 0, "%s:%d", p->lex.name, r->line);
	r->where = malloc((size_t)n + 1);
	r->text = strdup(p->text ? p->text : "");
	if (r->file == NULL || r->where == NULL || r->text == NULL)
		return false;
	snprintf(r->where, (size_t)n + 1, "%s:%d", p->lex.name, r->line);
	if (p->n_rules == p->cap) {
		int cap = p->cap ? p->cap * 2 : 16;

		arr = realloc(p->rules, sizeof(Rule) * (size_t)cap);
		if (arr == NULL)
			return false;
		p->rules = arr;
		p->cap = cap;
	}
	p->rules[p->n_rules++] = *r;
	memset(r, 0, sizeof(*r));
	return true;
}

/* Parses one rule at the current token; on error skips past the next ';'. */
static void parse_rule(Parser *p)
{
	Rule r = { 0 };
	ParseResult pr;

	r.line = p->tok.line;
	r.col = p->tok.col;
	p->text_len = 0;
	p->text_oom = false;
	if (p->text)
		p->text[0] = '\0';
	p->in_rule = true;
	if (is_kw(p, "mask"))
		pr = parse_mask(p, &r);
	else if (is_kw(p, "allow") || is_kw(p, "block") || is_kw(p, "hold"))
		pr = parse_policy(p, &r);
	else
		pr = expected(p, "MASK, ALLOW, BLOCK or HOLD at the start of a rule");
	p->in_rule = false;
	if (pr == PR_OK && !rule_finish(p, &r))
		pr = oom(p);
	rule_clear(&r);
	if (pr == PR_NO_SEMI)
		return;
	if (pr == PR_ERROR)
		while (p->tok.kind != T_SEMI && p->tok.kind != T_EOF)
			advance(p);
	if (p->tok.kind == T_SEMI)
		advance(p);
}

/* The first NUL byte of a text, reported at its place; true when there is none. */
static bool text_has_no_nul(const char *name, const char *text, size_t len, ErrSink *errs)
{
	const char *nul = memchr(text, '\0', len);
	int line = 1, col = 1;

	if (nul == NULL)
		return true;
	for (const char *c = text; c < nul; c++) {
		if (*c == '\n') {
			line++;
			col = 1;
		} else if ((*c & 0xc0) != 0x80) {
			col++; /* columns count characters, as the lexer does */
		}
	}
	sink_add(errs, name, line, col, "unexpected byte 0x00");
	return false;
}

/* Parses len bytes of text named `name`, appending rules to p->rules and errors to errs. */
static void parse_text(Parser *p, const char *name, const char *text, size_t len, ErrSink *errs)
{
	if (!text_has_no_nul(name, text, len, errs))
		return; /* a string or comment would end there for some readers and not others */
	p->lex = (Lexer){ .name = name, .text = text, .len = len, .line = 1, .col = 1, .errs = errs };
	p->prev_end = 0;
	p->prev_line = p->prev_col = 1;
	lex_next(&p->lex, &p->tok);
	while (p->tok.kind != T_EOF) {
		if (p->tok.kind == T_ERROR) {
			advance(p); /* reported by the lexer */
			continue;
		}
		if (p->tok.kind == T_SEMI) {
			advance(p); /* an empty rule: harmless */
			continue;
		}
		parse_rule(p);
	}
	free(p->tok.val);
	p->tok.val = NULL;
}

/* ---- rule sets ---------------------------------------------------------------- */

static void parser_free(Parser *p)
{
	for (int i = 0; i < p->n_rules; i++)
		rule_clear(&p->rules[i]);
	free(p->rules);
	free(p->text);
	memset(p, 0, sizeof(*p));
}

/* Turns a parse into a RuleSet, or NULL (with *errout, *nerrors) when there were errors. */
static RuleSet *ruleset_build(Parser *p, ErrSink *errs, char **errout, int *nerrors)
{
	static uint64_t version_counter;
	RuleSet *rs = NULL;

	if (errs->n == 0) {
		rs = calloc(1, sizeof(RuleSet));
		if (rs == NULL)
			sink_add(errs, "rules", 0, 0, "out of memory");
	}
	if (errs->n > 0) {
		parser_free(p);
		*errout = errs->buf;
		*nerrors = errs->n;
		return NULL;
	}
	free(errs->buf);
	free(p->text);
	rs->refcount = 1;
	rs->version = __atomic_add_fetch(&version_counter, 1, __ATOMIC_RELAXED);
	rs->n_rules = p->n_rules;
	rs->rules = p->rules;
	return rs;
}

RuleSet *rules_parse_buffer(const char *name, const char *text, size_t len, char **errout, int *nerrors)
{
	Parser p = { 0 };
	ErrSink errs = { 0 };

	*errout = NULL;
	*nerrors = 0;
	parse_text(&p, name, text, len, &errs);
	return ruleset_build(&p, &errs, errout, nerrors);
}

RuleSet *rules_parse_string(const char *name, const char *text, char **errout, int *nerrors)
{
	return rules_parse_buffer(name, text, strlen(text), errout, nerrors);
}

/* Reads and parses one file into p. */
static void parse_file(Parser *p, const char *path, ErrSink *errs)
{
	FILE *fp = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0;

	if (fp == NULL) {
		sink_add(errs, path, 0, 0, "cannot read: %s", strerror(errno));
		return;
	}
	for (;;) {
		size_t got;

		if (len == cap) {
			char *nb;

			if (cap >= RULES_MAX_FILE_SIZE) {
				sink_add(errs, path, 0, 0, "cannot read: file larger than %u MB",
					 RULES_MAX_FILE_SIZE >> 20);
				goto out;
			}
			cap = cap ? cap * 2 : 8192;
			nb = realloc(buf, cap);
			if (nb == NULL) {
				sink_add(errs, path, 0, 0, "cannot read: out of memory");
				goto out;
			}
			buf = nb;
		}
		got = fread(buf + len, 1, cap - len, fp);
		len += got;
		if (got == 0)
			break;
	}
	if (ferror(fp))
		sink_add(errs, path, 0, 0, "cannot read: %s", strerror(errno ? errno : EIO));
	else
		parse_text(p, path, buf ? buf : "", len, errs);
out:
	free(buf);
	fclose(fp);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_rules_name(const char *n)
{
	size_t len = strlen(n);

	return n[0] != '.' && len > 6 && strcmp(n + len - 6, ".rules") == 0;
}

/* The *.rules file names of a directory, sorted; false when it cannot be read (reported). */
static bool list_rules_files(const char *dir, NameList *out, ErrSink *errs)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int rerr;

	if (d == NULL) {
		sink_add(errs, dir, 0, 0, "cannot read: %s", strerror(errno));
		return false;
	}
	while ((errno = 0, de = readdir(d)) != NULL) {
		char *n;

		if (!is_rules_name(de->d_name))
			continue;
		n = strdup(de->d_name);
		if (n == NULL || !namelist_push(out, n)) {
			sink_add(errs, dir, 0, 0, "cannot read: out of memory");
			closedir(d);
			return false;
		}
	}
	rerr = errno;
	closedir(d);
	if (rerr != 0) {
		sink_add(errs, dir, 0, 0, "cannot read: %s", strerror(rerr));
		return false;
	}
	if (out->n > 1)
		qsort(out->items, (size_t)out->n, sizeof(char *), name_cmp);
	return true;
}

/* Parses every regular *.rules file of dir, in name order. */
static void parse_dir(Parser *p, const char *dir, ErrSink *errs)
{
	NameList names = { 0 };
	size_t dlen = strlen(dir);
	bool slash = dlen > 0 && dir[dlen - 1] == '/';

	if (!list_rules_files(dir, &names, errs))
		goto out;
	for (int i = 0; i < names.n; i++) {
		struct stat sb;
		char *path = malloc(dlen + strlen(names.items[i]) + 2);

		if (path == NULL) {
			sink_add(errs, dir, 0, 0, "cannot read: out of memory");
			break;
		}
		sprintf(path, "%s%s%s", dir, slash ? "" : "/", names.items[i]);
		if (stat(path, &sb) != 0)
			sink_add(errs, path, 0, 0, "cannot read: %s", strerror(errno));
		else if (S_ISREG(sb.st_mode))
			parse_file(p, path, errs);
		free(path);
	}
out:
	config_namelist_free(&names);
}

RuleSet *rules_load(const char *path, char **errout, int *nerrors)
{
	Parser p = { 0 };
	ErrSink errs = { 0 };
	struct stat sb;

	*errout = NULL;
	*nerrors = 0;
	if (stat(path, &sb) != 0)
		sink_add(&errs, path, 0, 0, "cannot read: %s", strerror(errno));
	else if (S_ISDIR(sb.st_mode))
		parse_dir(&p, path, &errs);
	else if (!S_ISREG(sb.st_mode))
		sink_add(&errs, path, 0, 0, "cannot read: not a regular file or directory");
	else
		parse_file(&p, path, &errs);
	return ruleset_build(&p, &errs, errout, nerrors);
}

RuleSet *rules_ref(RuleSet *rs)
{
	if (rs != NULL)
		__atomic_add_fetch(&rs->refcount, 1, __ATOMIC_RELAXED);
	return rs;
}

void rules_unref(RuleSet *rs)
{
	if (rs == NULL || __atomic_sub_fetch(&rs->refcount, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	for (int i = 0; i < rs->n_rules; i++)
		rule_clear(&rs->rules[i]);
	free(rs->rules);
	free(rs);
}

bool rules_who_matches(const RuleWho *who, const Identity *id)
{
	if (who->kind == WHO_ANYONE)
		return true;
	if (id == NULL)
		return false;
	if (who->kind == WHO_AGENT)
		return id->subject != NULL && namelist_has(&who->names, id->subject);
	return jwtauth_in_groups(id, &who->names);
}
