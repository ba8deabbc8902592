/* SPDX-License-Identifier: MIT */
/*
 * The admin console's command language and its answers. A Query string is
 * split into commands (keywords case-insensitive, ';' between them, SQL
 * comments and quoting understood) and parsed whole before anything runs,
 * as the server does, so a syntax error anywhere runs nothing; then each
 * command runs in turn if the caller's roles allow it, until one fails.
 * Answers are real result sets (RowDescription, DataRow, CommandComplete),
 * errors carry SQLSTATEs and, for syntax errors, the position psql points
 * at. The console owns no state of its own beyond the caller's identity
 * and the string it is running: held statements, grants and blocks live in
 * the approval registry, the sessions in their workers, the audit log in
 * SQLite. SHOW SESSION n and SQL read the audit log on the audit_read
 * threads; the string then waits (admin_query returns ADMIN_WAIT) and goes
 * on in admin_resume() when the session's event fires. Also owns the
 * process-wide SHOW STATS counters.
 */
#include "pgveil/admin.h"

#include <ctype.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "pgveil/approval.h"
#include "pgveil/audit_read.h"
#include "pgveil/catalog.h"
#include "pgveil/log.h"
#include "pgveil/mask.h"
#include "pgveil/rules.h"
#include "pgveil/server.h"

#define OID_BOOL 16
#define OID_INT8 20
#define OID_TEXT 25
#define MAX_DURATION_SECONDS (365ULL * 86400)

#define SQLSTATE_SYNTAX_ERROR "42601"
#define SQLSTATE_UNDEFINED_OBJECT "42704"
#define SQLSTATE_NOT_IN_STATE "55000"
#define SQLSTATE_INVALID_PARAMETER "22023"
#define SQLSTATE_OUT_OF_RANGE "22003"

typedef struct AdminCmd AdminCmd;

struct AdminConsole {
	char *subject;        /* the caller, recorded as approver */
	int roles;            /* ADMIN_ROLE_* bits, as of configuration generation roles_gen */
	uint64_t roles_gen;
	const Identity *id;   /* the caller (the session's; it outlives the console) */
	uint64_t session_id;  /* the console's own session */
	char ctx[96];         /* log context */
	struct event *wake;   /* the session's: activated when a read of the audit log is done */
	/* The Query string being run (between admin_query and its ADMIN_DONE): */
	char *sql;            /* a copy of it; the commands point into it */
	AdminCmd *cmds;
	int n_cmds;
	int next;             /* the command to run next */
	AuditRead *pending;   /* the read of the audit log cmds[next - 1] waits for, or NULL */
};

/* ---- counters ------------------------------------------------------------------------- */

static uint64_t stats[STAT_N];

void admin_stat_add(AdminStat which, uint64_t n)
{
	if ((unsigned)which < STAT_N)
		__atomic_add_fetch(&stats[which], n, __ATOMIC_RELAXED);
}

uint64_t admin_stat_get(AdminStat which)
{
	return (unsigned)which < STAT_N ? __atomic_load_n(&stats[which], __ATOMIC_RELAXED) : 0;
}

/* ---- opening ------------------------------------------------------------------------- */

int admin_roles(const Config *cfg, const Identity *id)
{
	int roles = 0;

	if (cfg == NULL || id == NULL || id->subject == NULL || id->subject[0] == '\0')
		return 0;
	if (jwtauth_in_groups(id, &cfg->admin_groups))
		roles |= ADMIN_ROLE_ADMIN;
	if (jwtauth_in_groups(id, &cfg->approver_groups))
		roles |= ADMIN_ROLE_APPROVER;
	if (jwtauth_in_groups(id, &cfg->auditor_groups))
		roles |= ADMIN_ROLE_AUDITOR;
	return roles;
}

AdminConsole *admin_open(const Identity *id, int roles, uint64_t session_id, struct event *wake)
{
	AdminConsole *ac = calloc(1, sizeof(AdminConsole));

	if (ac == NULL)
		return NULL;
	ac->subject = strdup(id != NULL && id->subject != NULL ? id->subject : "");
	if (ac->subject == NULL) {
		free(ac);
		return NULL;
	}
	ac->roles = roles;
	ac->roles_gen = config_generation();
	ac->id = id;
	ac->session_id = session_id;
	ac->wake = wake;
	snprintf(ac->ctx, sizeof(ac->ctx), "c%llu admin %s", (unsigned long long)session_id, ac->subject);
	return ac;
}

static void end_query(AdminConsole *ac);

void admin_close(AdminConsole *ac)
{
	if (ac == NULL)
		return;
	end_query(ac);
	free(ac->subject);
	free(ac);
}

/* ---- lexer ------------------------------------------------------------------------------ */

typedef enum { TOK_END, TOK_WORD, TOK_QUOTED_IDENT, TOK_INT, TOK_STRING, TOK_SEMI, TOK_OTHER } TokKind;

typedef struct Token {
	TokKind kind;
	size_t off;           /* byte offset of its first character in the query */
	size_t len;           /* bytes */
} Token;

typedef struct Lexer {
	const char *src;      /* the whole Query string */
	size_t pos;           /* next byte to scan */
	Token tok;            /* the current token */
	bool failed;          /* err* below are set */
	const char *err_state;
	char err[256];
	size_t err_off;       /* byte offset the error points at */
} Lexer;

static void lex_fail(Lexer *lx, const char *sqlstate, size_t off, const char *fmt, ...) PGV_PRINTF(4, 5);

static void lex_fail(Lexer *lx, const char *sqlstate, size_t off, const char *fmt, ...)
{
	va_list ap;

	if (lx->failed)
		return;
	lx->failed = true;
	lx->err_state = sqlstate;
	lx->err_off = off;
	va_start(ap, fmt);
	vsnprintf(lx->err, sizeof(lx->err), fmt, ap);
	va_end(ap);
}

/* Skips blanks and comments; false (with an error) for an unterminated block comment. */
static bool skip_space(Lexer *lx)
{
	const char *s = lx->src;

	for (;;) {
		while (isspace((unsigned char)s[lx->pos]))
			lx->pos++;
		if (s[lx->pos] == '-' && s[lx->pos + 1] == '-') {
			while (s[lx->pos] != '\0' && s[lx->pos] != '\n')
				lx->pos++;
		} else if (s[lx->pos] == '/' && s[lx->pos + 1] == '*') {
			size_t start = lx->pos;
			int depth = 0;

			do {
				if (s[lx->pos] == '/' && s[lx->pos + 1] == '*') {
					depth++;
					lx->pos += 2;
				} else if (s[lx->pos] == '*' && s[lx->pos + 1] == '/') {
					depth--;
					lx->pos += 2;
				} else if (s[lx->pos] == '\0') {
					lex_fail(lx, SQLSTATE_SYNTAX_ERROR, start, "unterminated /* comment");
					return false;
				} else {
					lx->pos++;
				}
			} while (depth > 0);
		} else {
			return true;
		}
	}
}

/* Scans past a quoted token (quote doubled inside); false when unterminated. */
static bool scan_quoted(Lexer *lx, char q)
{
	const char *s = lx->src;

	for (lx->pos++;; lx->pos++) {
		if (s[lx->pos] == '\0')
			return false;
		if (s[lx->pos] == q) {
			if (s[lx->pos + 1] != q)
				break;
			lx->pos++;
		}
	}
	lx->pos++;
	return true;
}

/* $tag$ ... $tag$ (only so that a ';' inside does not split a SELECT). */
static bool scan_dollar(Lexer *lx)
{
	const char *s = lx->src, *end;
	size_t tag = 1;

	while (isalnum((unsigned char)s[lx->pos + tag]) || s[lx->pos + tag] == '_')
		tag++;
	if (s[lx->pos + tag] != '$' || isdigit((unsigned char)s[lx->pos + 1]))
		return false;
	tag++;
	end = s + lx->pos + tag;
	while ((end = strchr(end, '$')) != NULL && strncmp(end, s + lx->pos, tag) != 0)
		end++;
	lx->pos = end != NULL ? (size_t)(end - s) + tag : strlen(s);
	return true;
}

static bool is_word_char(char c)
{
	return isalnum((unsigned char)c) || c == '_' || (unsigned char)c >= 0x80;
}

/* Advances to the next token; false (with an error) on a lexical error. */
static bool lex_next(Lexer *lx)
{
	const char *s = lx->src;
	Token *t = &lx->tok;

	if (!skip_space(lx))
		return false;
	t->off = lx->pos;
	if (s[lx->pos] == '\0') {
		t->kind = TOK_END;
	} else if (s[lx->pos] == ';') {
		t->kind = TOK_SEMI;
		lx->pos++;
	} else if (s[lx->pos] == '\'' || s[lx->pos] == '"') {
		t->kind = s[lx->pos] == '\'' ? TOK_STRING : TOK_QUOTED_IDENT;
		if (!scan_quoted(lx, s[lx->pos])) {
			lex_fail(lx, SQLSTATE_SYNTAX_ERROR, t->off, "unterminated quoted %s",
				 t->kind == TOK_STRING ? "string" : "identifier");
			return false;
		}
	} else if (isdigit((unsigned char)s[lx->pos])) {
		t->kind = TOK_INT;
		while (isdigit((unsigned char)s[lx->pos]))
			lx->pos++;
		if (is_word_char(s[lx->pos]) || s[lx->pos] == '.') {
			while (is_word_char(s[lx->pos]) || s[lx->pos] == '.')
				lx->pos++;
			t->kind = TOK_OTHER;
		}
	} else if (is_word_char(s[lx->pos])) {
		t->kind = TOK_WORD;
		while (is_word_char(s[lx->pos]) || s[lx->pos] == '$')
			lx->pos++;
	} else {
		t->kind = TOK_OTHER;
		if (!(s[lx->pos] == '$' && scan_dollar(lx)))
			lx->pos++;
	}
	t->len = lx->pos - t->off;
	return true;
}

/* How much of a token an error message quotes: at most 64 bytes, never half a UTF-8 character. */
static int quoted_len(const char *p, size_t len)
{
	if (len <= 64)
		return (int)len;
	len = 64;
	while (len > 0 && ((unsigned char)p[len] & 0xC0) == 0x80)
		len--;
	return (int)len;
}

static bool tok_is(const Lexer *lx, const char *kw)
{
	return lx->tok.kind == TOK_WORD && lx->tok.len == strlen(kw) &&
	       strncasecmp(lx->src + lx->tok.off, kw, lx->tok.len) == 0;
}

/* "syntax error at or near ..." pointing at the current token. */
static void syntax_error(Lexer *lx)
{
	const Token *t = &lx->tok;

	if (t->kind == TOK_END)
		lex_fail(lx, SQLSTATE_SYNTAX_ERROR, t->off, "syntax error at end of input");
	else
		lex_fail(lx, SQLSTATE_SYNTAX_ERROR, t->off, "syntax error at or near \"%.*s\"",
			 quoted_len(lx->src + t->off, t->len), lx->src + t->off);
}

/* Requires keyword kw and moves past it. */
static bool expect(Lexer *lx, const char *kw)
{
	if (!tok_is(lx, kw)) {
		syntax_error(lx);
		return false;
	}
	return lex_next(lx);
}

/* An unsigned integer token (id or count). */
static bool expect_uint(Lexer *lx, uint64_t *out)
{
	uint64_t v = 0;

	if (lx->tok.kind != TOK_INT) {
		syntax_error(lx);
		return false;
	}
	for (size_t i = 0; i < lx->tok.len; i++) {
		unsigned d = (unsigned)(lx->src[lx->tok.off + i] - '0');

		if (v > (UINT64_MAX - d) / 10) {
			lex_fail(lx, SQLSTATE_OUT_OF_RANGE, lx->tok.off, "value \"%.*s\" is out of range",
				 quoted_len(lx->src + lx->tok.off, lx->tok.len), lx->src + lx->tok.off);
			return false;
		}
		v = v * 10 + d;
	}
	*out = v;
	return lex_next(lx);
}

/* A '...' literal, unescaped into a malloc'd string. */
static bool expect_string(Lexer *lx, char **out)
{
	const Token *t = &lx->tok;
	char *d;
	size_t n = 0;

	if (t->kind != TOK_STRING) {
		syntax_error(lx);
		return false;
	}
	d = malloc(t->len);
	if (d == NULL) {
		lex_fail(lx, SQLSTATE_OUT_OF_MEMORY, t->off, "out of memory");
		return false;
	}
	for (size_t i = t->off + 1; i < t->off + t->len - 1; i++) {
		d[n++] = lx->src[i];
		if (lx->src[i] == '\'')
			i++; /* '' stands for one quote */
	}
	d[n] = '\0';
	*out = d;
	return lex_next(lx);
}

/* Character position (1-based) of a byte offset, as the server reports it. */
static int char_position(const char *src, size_t off)
{
	int pos = 1;

	for (size_t i = 0; i < off && src[i] != '\0'; i++)
		if (((unsigned char)src[i] & 0xC0) != 0x80)
			pos++;
	return pos;
}

/* ---- commands ------------------------------------------------------------------------- */

typedef enum {
	CMD_SHOW_HELD, CMD_SHOW_GRANTS, CMD_SHOW_SESSIONS, CMD_SHOW_SESSION, CMD_SHOW_RULES, CMD_SHOW_STATS,
	CMD_SHOW_BLOCKED, CMD_SHOW_MASKS, CMD_SHOW_HELP, CMD_APPROVE, CMD_DENY, CMD_REVOKE_GRANT, CMD_KILL_SESSION,
	CMD_BLOCK_AGENT, CMD_UNBLOCK_AGENT, CMD_RELOAD, CMD_AUDIT_SQL, CMD_TRANSACTION,
} CmdKind;

#define ROLES_ALL (ADMIN_ROLE_ADMIN | ADMIN_ROLE_APPROVER | ADMIN_ROLE_AUDITOR)
#define ROLES_APPROVE (ADMIN_ROLE_ADMIN | ADMIN_ROLE_APPROVER)
#define ROLES_AUDIT (ADMIN_ROLE_ADMIN | ADMIN_ROLE_AUDITOR)

/* What each command is called in messages, who may run it, and what it does (SHOW HELP). */
static const struct {
	const char *name;
	int roles;
	const char *help;
} cmd_info[] = {
	[CMD_SHOW_HELD] = { "SHOW HELD", ROLES_ALL, "statements waiting for approval" },
	[CMD_SHOW_GRANTS] = { "SHOW GRANTS", ROLES_ALL, "active grants made by APPROVE n FOR ..." },
	[CMD_SHOW_SESSIONS] = { "SHOW SESSIONS", ROLES_AUDIT, "every logged-in session" },
	[CMD_SHOW_SESSION] = { "SHOW SESSION", ROLES_AUDIT,
			       "SHOW SESSION n: the transcript of session n (needs the audit log)" },
	[CMD_SHOW_RULES] = { "SHOW RULES", ROLES_ALL, "the rules in force, in order" },
	[CMD_SHOW_STATS] = { "SHOW STATS", ROLES_ALL, "statement counters" },
	[CMD_SHOW_BLOCKED] = { "SHOW BLOCKED", ROLES_ALL, "blocked agents" },
	[CMD_SHOW_MASKS] = { "SHOW MASKS", ROLES_AUDIT,
			     "every column a MASK rule reaches, per database, and the rules that could not apply" },
	[CMD_SHOW_HELP] = { "SHOW HELP", ROLES_ALL, "this list" },
	[CMD_APPROVE] = { "APPROVE", ROLES_APPROVE, "APPROVE n [FOR k MINUTES]: run held statement n" },
	[CMD_DENY] = { "DENY", ROLES_APPROVE, "DENY n [REASON 'text']: refuse held statement n" },
	[CMD_REVOKE_GRANT] = { "REVOKE GRANT", ROLES_APPROVE, "REVOKE GRANT n: end grant n now" },
	[CMD_KILL_SESSION] = { "KILL SESSION", ADMIN_ROLE_ADMIN, "KILL SESSION n: end session n" },
	[CMD_BLOCK_AGENT] = { "BLOCK AGENT", ADMIN_ROLE_ADMIN,
			      "BLOCK AGENT 'subject' [FOR k HOURS]: end its sessions, refuse its logins" },
	[CMD_UNBLOCK_AGENT] = { "UNBLOCK AGENT", ADMIN_ROLE_ADMIN, "UNBLOCK AGENT 'subject'" },
	[CMD_RELOAD] = { "RELOAD", ADMIN_ROLE_ADMIN, "reload the configuration and rules (as SIGHUP)" },
	[CMD_AUDIT_SQL] = { "SELECT", ROLES_AUDIT,
			    "SELECT ...: read-only SQL over the audit log (needs the audit log)" },
	[CMD_TRANSACTION] = { "BEGIN", ROLES_ALL, NULL },
};

struct AdminCmd {
	CmdKind kind;
	const char *name;     /* SQL and transaction commands: the word written ("WITH"); else NULL */
	size_t name_len;
	size_t end;           /* SQL: byte offset just past its last token (name starts it) */
	uint64_t n;           /* the id */
	uint64_t seconds;     /* FOR ...; 0 = none */
	char *text;           /* REASON or subject */
};

/* FOR k SECOND(S) | MINUTE(S) | HOUR(S) | DAY(S) after the FOR keyword. */
static bool parse_duration(Lexer *lx, uint64_t *seconds)
{
	static const struct {
		const char *one, *many;
		uint64_t mult;
	} units[] = { { "SECOND", "SECONDS", 1 }, { "MINUTE", "MINUTES", 60 }, { "HOUR", "HOURS", 3600 },
		      { "DAY", "DAYS", 86400 } };
	size_t at = lx->tok.off;
	uint64_t k;

	if (!expect_uint(lx, &k))
		return false;
	for (size_t i = 0; i < PGV_ARRAY_LEN(units); i++) {
		if (!tok_is(lx, units[i].one) && !tok_is(lx, units[i].many))
			continue;
		if (k == 0 || k > MAX_DURATION_SECONDS / units[i].mult) {
			lex_fail(lx, SQLSTATE_INVALID_PARAMETER, at,
				 "a duration must be between 1 second and 365 days");
			return false;
		}
		*seconds = k * units[i].mult;
		return lex_next(lx);
	}
	syntax_error(lx);
	return false;
}

static bool parse_show(Lexer *lx, AdminCmd *c)
{
	static const struct {
		const char *word;
		CmdKind kind;
	} targets[] = { { "HELD", CMD_SHOW_HELD },   { "GRANTS", CMD_SHOW_GRANTS },   { "SESSIONS", CMD_SHOW_SESSIONS },
			{ "RULES", CMD_SHOW_RULES }, { "STATS", CMD_SHOW_STATS },     { "BLOCKED", CMD_SHOW_BLOCKED },
			{ "MASKS", CMD_SHOW_MASKS }, { "HELP", CMD_SHOW_HELP } };

	if (tok_is(lx, "SESSION")) {
		c->kind = CMD_SHOW_SESSION;
		return lex_next(lx) && expect_uint(lx, &c->n);
	}
	for (size_t i = 0; i < PGV_ARRAY_LEN(targets); i++)
		if (tok_is(lx, targets[i].word)) {
			c->kind = targets[i].kind;
			return lex_next(lx);
		}
	syntax_error(lx);
	return false;
}

/* SELECT/WITH/...: kept whole up to the next ';' (the audit log answers it). */
static bool parse_passthrough(Lexer *lx, AdminCmd *c, CmdKind kind)
{
	c->kind = kind;
	c->name = lx->src + lx->tok.off;
	c->name_len = lx->tok.len;
	while (lx->tok.kind != TOK_END && lx->tok.kind != TOK_SEMI) {
		c->end = lx->tok.off + lx->tok.len;
		if (!lex_next(lx))
			return false;
	}
	return true;
}

static bool parse_agent(Lexer *lx, AdminCmd *c, CmdKind kind)
{
	c->kind = kind;
	if (!expect(lx, "AGENT") || !expect_string(lx, &c->text))
		return false;
	if (kind == CMD_BLOCK_AGENT && tok_is(lx, "FOR"))
		return lex_next(lx) && parse_duration(lx, &c->seconds);
	return true;
}

static bool word_in(const Lexer *lx, const char *const *words, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (tok_is(lx, words[i]))
			return true;
	return false;
}

/* Parses one command starting at the current (non-';', non-end) token. */
static bool parse_command(Lexer *lx, AdminCmd *c)
{
	static const char *const sql[] = { "SELECT", "WITH", "EXPLAIN", "VALUES", "TABLE" };
	static const char *const txn[] = { "BEGIN", "START", "COMMIT", "ROLLBACK", "END", "ABORT" };

	if (word_in(lx, sql, PGV_ARRAY_LEN(sql)))
		return parse_passthrough(lx, c, CMD_AUDIT_SQL);
	if (word_in(lx, txn, PGV_ARRAY_LEN(txn)))
		return parse_passthrough(lx, c, CMD_TRANSACTION);
	if (tok_is(lx, "SHOW"))
		return lex_next(lx) && parse_show(lx, c);
	if (tok_is(lx, "HELP")) {
		c->kind = CMD_SHOW_HELP;
		return lex_next(lx);
	}
	if (tok_is(lx, "APPROVE")) {
		c->kind = CMD_APPROVE;
		if (!lex_next(lx) || !expect_uint(lx, &c->n))
			return false;
		return !tok_is(lx, "FOR") || (lex_next(lx) && parse_duration(lx, &c->seconds));
	}
	if (tok_is(lx, "DENY")) {
		c->kind = CMD_DENY;
		if (!lex_next(lx) || !expect_uint(lx, &c->n))
			return false;
		return !tok_is(lx, "REASON") || (lex_next(lx) && expect_string(lx, &c->text));
	}
	if (tok_is(lx, "REVOKE")) {
		c->kind = CMD_REVOKE_GRANT;
		return lex_next(lx) && expect(lx, "GRANT") && expect_uint(lx, &c->n);
	}
	if (tok_is(lx, "KILL")) {
		c->kind = CMD_KILL_SESSION;
		return lex_next(lx) && expect(lx, "SESSION") && expect_uint(lx, &c->n);
	}
	if (tok_is(lx, "BLOCK"))
		return lex_next(lx) && parse_agent(lx, c, CMD_BLOCK_AGENT);
	if (tok_is(lx, "UNBLOCK"))
		return lex_next(lx) && parse_agent(lx, c, CMD_UNBLOCK_AGENT);
	if (tok_is(lx, "RELOAD")) {
		c->kind = CMD_RELOAD;
		return lex_next(lx);
	}
	syntax_error(lx);
	return false;
}

static void free_cmds(AdminCmd *cmds, int n)
{
	for (int i = 0; i < n; i++)
		free(cmds[i].text);
	free(cmds);
}

/*
 * Splits and parses the whole string. Returns the number of commands (0 for
 * an empty string) with *out malloc'd, or -1 with the error in lx.
 */
static int parse_all(Lexer *lx, AdminCmd **out)
{
	AdminCmd *cmds = NULL;
	int n = 0, cap = 0;

	*out = NULL;
	if (!lex_next(lx))
		return -1;
	while (lx->tok.kind != TOK_END) {
		if (lx->tok.kind == TOK_SEMI) {
			if (!lex_next(lx))
				goto fail;
			continue;
		}
		if (n == cap) {
			AdminCmd *grown = realloc(cmds, (size_t)(cap = cap ? cap * 2 : 4) * sizeof(AdminCmd));

			if (grown == NULL) {
				lex_fail(lx, SQLSTATE_OUT_OF_MEMORY, lx->tok.off, "out of memory");
				goto fail;
			}
			cmds = grown;
		}
		memset(&cmds[n], 0, sizeof(AdminCmd));
		if (!parse_command(lx, &cmds[n++]))
			goto fail;
		if (lx->tok.kind != TOK_SEMI && lx->tok.kind != TOK_END) {
			syntax_error(lx);
			goto fail;
		}
	}
	*out = cmds;
	return n;
fail:
	free_cmds(cmds, n);
	return -1;
}

/* ---- answers ---------------------------------------------------------------------------- */

static void put_error(PgBuf *out, const char *sqlstate, const char *msg, const char *hint, int position)
{
	pgproto_build_error_at(out, false, "ERROR", sqlstate, msg, NULL, hint, position);
}

static void put_notice(PgBuf *out, const char *fmt, ...) PGV_PRINTF(2, 3);

static void put_notice(PgBuf *out, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pgproto_build_error(out, true, "NOTICE", "00000", msg, NULL, NULL);
}

static void put_complete(PgBuf *out, const char *tag)
{
	pgproto_begin(out, 'C');
	pgproto_put_string(out, tag);
	pgproto_end(out);
}

/* A result column's type; false and true stand for COL_TEXT and COL_INT8. */
enum { COL_TEXT = 0, COL_INT8 = 1, COL_BOOL = 2 };

/* A result column: text, int8 or bool (sent in text format). */
typedef struct Column {
	const char *name;
	int type;             /* COL_* */
} Column;

static void put_columns(PgBuf *out, const Column *cols, int n)
{
	pgproto_begin(out, 'T');
	pgproto_put_int16(out, (int16_t)n);
	for (int i = 0; i < n; i++) {
		pgproto_put_string(out, cols[i].name);
		pgproto_put_int32(out, 0);  /* table oid */
		pgproto_put_int16(out, 0);  /* column number */
		pgproto_put_int32(out, cols[i].type == COL_INT8 ? OID_INT8 : cols[i].type == COL_BOOL ? OID_BOOL : OID_TEXT);
		pgproto_put_int16(out, cols[i].type == COL_INT8 ? 8 : cols[i].type == COL_BOOL ? 1 : -1);
		pgproto_put_int32(out, -1); /* typmod */
		pgproto_put_int16(out, 0);  /* text format */
	}
	pgproto_end(out);
}

/* One DataRow; a NULL value is SQL NULL. */
static void put_row(PgBuf *out, const char *const *vals, int n)
{
	pgproto_begin(out, 'D');
	pgproto_put_int16(out, (int16_t)n);
	for (int i = 0; i < n; i++) {
		if (vals[i] == NULL) {
			pgproto_put_int32(out, -1);
			continue;
		}
		pgproto_put_int32(out, (int32_t)strlen(vals[i]));
		pgproto_put_bytes(out, vals[i], strlen(vals[i]));
	}
	pgproto_end(out);
}

static void put_show_complete(PgBuf *out, int rows)
{
	char tag[32];

	snprintf(tag, sizeof(tag), "SHOW %d", rows);
	put_complete(out, tag);
}

/* "2024-05-01 12:34:56+00" (UTC), or NULL for 0. */
static const char *fmt_time(time_t t, char *buf, size_t len)
{
	struct tm tm;

	if (t == 0 || gmtime_r(&t, &tm) == NULL)
		return NULL;
	strftime(buf, len, "%Y-%m-%d %H:%M:%S+00", &tm);
	return buf;
}

static const char *fmt_u64(uint64_t v, char *buf, size_t len)
{
	snprintf(buf, len, "%llu", (unsigned long long)v);
	return buf;
}

static const char *rule_name(const char *rule)
{
	return rule != NULL ? rule : "default_action";
}

/* ---- the commands themselves ------------------------------------------------------------- */

/* Each runner appends its answer; false after an ErrorResponse (ends the string). */
typedef bool (*CmdRunner)(AdminConsole *ac, const AdminCmd *c, PgBuf *out);

static bool out_of_memory(PgBuf *out)
{
	put_error(out, SQLSTATE_OUT_OF_MEMORY, "out of memory", NULL, 0);
	return false;
}

static bool run_show_held(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	static const Column cols[] = { { "id", true },	   { "subject", false }, { "database", false },
				       { "sql", false },   { "rule", false },	 { "held_at", false },
				       { "waiting_s", true }, { "session", true } };
	HeldInfo *held;
	int n = approval_list_held(&held);
	time_t now = time(NULL);

	if (n < 0)
		return out_of_memory(out);
	put_columns(out, cols, (int)PGV_ARRAY_LEN(cols));
	for (int i = 0; i < n; i++) {
		char id[24], at[32], wait[24], sid[24];
		const char *v[] = { fmt_u64(held[i].id, id, sizeof(id)),
				    held[i].subject,
				    held[i].database,
				    held[i].sql,
				    rule_name(held[i].rule),
				    fmt_time(held[i].held_at, at, sizeof(at)),
				    fmt_u64(now > held[i].held_at ? (uint64_t)(now - held[i].held_at) : 0, wait,
					    sizeof(wait)),
				    fmt_u64(held[i].session_id, sid, sizeof(sid)) };

		put_row(out, v, (int)PGV_ARRAY_LEN(v));
	}
	approval_free_held(held, n);
	put_show_complete(out, n);
	return true;
}

static bool run_show_grants(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	static const Column cols[] = { { "id", true },	       { "subject", false }, { "rule", false },
				       { "tables", false },    { "granted_by", false }, { "until", false },
				       { "approval", true } };
	GrantInfo *g;
	int n = approval_list_grants(&g);

	if (n < 0)
		return out_of_memory(out);
	put_columns(out, cols, (int)PGV_ARRAY_LEN(cols));
	for (int i = 0; i < n; i++) {
		char id[24], until[32], aid[24];
		const char *v[] = { fmt_u64(g[i].id, id, sizeof(id)), g[i].subject, rule_name(g[i].rule),
				    g[i].tables, g[i].granted_by, fmt_time(g[i].until, until, sizeof(until)),
				    fmt_u64(g[i].approval_id, aid, sizeof(aid)) };

		put_row(out, v, (int)PGV_ARRAY_LEN(v));
	}
	approval_free_grants(g, n);
	put_show_complete(out, n);
	return true;
}

/* A session waiting for an approver is "held", whatever its relay state says. */
static const char *session_state(const SessionSummary *s, const HeldInfo *held, int n_held)
{
	for (int i = 0; i < n_held; i++)
		if (held[i].session_id == s->id)
			return "held";
	return s->state;
}

static bool run_show_sessions(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	static const Column cols[] = { { "id", true },	       { "subject", false },    { "database", false },
				       { "client_addr", false }, { "started_at", false }, { "state", false } };
	SessionSummary *ss;
	HeldInfo *held = NULL;
	int n = server_list_sessions(&ss), n_held = n >= 0 ? approval_list_held(&held) : 0;

	if (n < 0 || n_held < 0) {
		server_free_sessions(ss, n);
		return out_of_memory(out);
	}
	put_columns(out, cols, (int)PGV_ARRAY_LEN(cols));
	for (int i = 0; i < n; i++) {
		char id[24], at[32];
		const char *v[] = { fmt_u64(ss[i].id, id, sizeof(id)), ss[i].subject, ss[i].database, ss[i].addr,
				    fmt_time(ss[i].started_at, at, sizeof(at)), session_state(&ss[i], held, n_held) };

		put_row(out, v, (int)PGV_ARRAY_LEN(v));
	}
	server_free_sessions(ss, n);
	approval_free_held(held, n_held);
	put_show_complete(out, n);
	return true;
}

static const char *rule_kind(const Rule *r)
{
	static const char *const policy[] = { [RULE_ALLOW] = "allow", [RULE_BLOCK] = "block", [RULE_HOLD] = "hold" };
	static const char *const function[] = { [RULE_ALLOW] = "allow function", [RULE_BLOCK] = "block function",
						[RULE_HOLD] = "hold function" };

	if (r->kind == RULE_MASK)
		return "mask";
	if ((unsigned)r->action > RULE_HOLD)
		return "?";
	return r->kind == RULE_FUNCTION ? function[r->action] : policy[r->action];
}

static const char *action_name(DefaultAction a)
{
	return a == ACTION_ALLOW ? "allow" : a == ACTION_HOLD ? "hold" : "block";
}

static bool run_show_rules(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	static const Column cols[] = { { "rule", false }, { "kind", false }, { "text", false } };
	Config *cfg = config_current();
	const RuleSet *rs = cfg != NULL ? cfg->ruleset : NULL;
	int n = 0;

	if (cfg == NULL) {
		put_error(out, SQLSTATE_INTERNAL_ERROR, "no configuration is loaded", NULL, 0);
		return false;
	}
	if (rs == NULL)
		put_notice(out, "no rules are loaded (rules is not set): every statement gets default_action = %s",
			   action_name(cfg->default_action));
	put_columns(out, cols, (int)PGV_ARRAY_LEN(cols));
	for (int i = 0; rs != NULL && i < rs->n_rules; i++, n++) {
		const Rule *r = &rs->rules[i];
		char where[300];
		const char *v[3];

		if (r->where == NULL)
			snprintf(where, sizeof(where), "%s:%d", r->file ? r->file : "?", r->line);
		v[0] = r->where != NULL ? r->where : where;
		v[1] = rule_kind(r);
		v[2] = r->text;
		put_row(out, v, 3);
	}
	{
		char text[64];
		const char *v[3] = { "default_action", action_name(cfg->default_action), text };

		snprintf(text, sizeof(text), "default_action = %s", action_name(cfg->default_action));
		put_row(out, v, 3);
		n++;
	}
	config_unref(cfg);
	put_show_complete(out, n);
	return true;
}

static void put_stat(PgBuf *out, const char *name, uint64_t value)
{
	char buf[24];
	const char *v[2] = { name, fmt_u64(value, buf, sizeof(buf)) };

	put_row(out, v, 2);
}

static bool run_show_stats(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	static const Column cols[] = { { "name", false }, { "value", true } };
	static const char *const names[STAT_N] = {
		[STAT_STATEMENTS] = "statements", [STAT_ALLOWED] = "allowed",	  [STAT_BLOCKED] = "blocked",
		[STAT_HELD] = "held",		  [STAT_APPROVED] = "approved",	  [STAT_DENIED] = "denied",
		[STAT_TIMED_OUT] = "timed_out",	  [STAT_GRANTED] = "granted",	  [STAT_CACHE_HITS] = "cache_hits",
	};
	SessionSummary *ss;
	HeldInfo *held;
	GrantInfo *grants;
	BlockedInfo *blocked;
	int n_sessions = server_list_sessions(&ss), n_held = approval_list_held(&held),
	    n_grants = approval_list_grants(&grants), n_blocked = approval_list_blocked(&blocked);

	server_free_sessions(ss, n_sessions);
	approval_free_held(held, n_held);
	approval_free_grants(grants, n_grants);
	approval_free_blocked(blocked, n_blocked);
	if (n_sessions < 0 || n_held < 0 || n_grants < 0 || n_blocked < 0)
		return out_of_memory(out);
	put_columns(out, cols, 2);
	for (int i = 0; i < STAT_N; i++)
		put_stat(out, names[i], admin_stat_get((AdminStat)i));
	put_stat(out, "connections", (uint64_t)server_conn_count());
	put_stat(out, "sessions", (uint64_t)n_sessions);
	put_stat(out, "held_waiting", (uint64_t)n_held);
	put_stat(out, "grants_active", (uint64_t)n_grants);
	put_stat(out, "agents_blocked", (uint64_t)n_blocked);
	put_show_complete(out, STAT_N + 5);
	return true;
}

static bool run_show_blocked(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	static const Column cols[] = { { "subject", false }, { "until", false } };
	BlockedInfo *b;
	int n = approval_list_blocked(&b);

	if (n < 0)
		return out_of_memory(out);
	put_columns(out, cols, 2);
	for (int i = 0; i < n; i++) {
		char until[32];
		const char *v[2] = { b[i].subject, fmt_time(b[i].until, until, sizeof(until)) };

		put_row(out, v, 2);
	}
	approval_free_blocked(b, n);
	put_show_complete(out, n);
	return true;
}

/* ---- SHOW MASKS ---------------------------------------------------------------------------- */

/* Rows of SHOW MASKS for one database. */
typedef struct MaskRows {
	PgBuf *out;
	const char *database;
	const CatSnap *snap;
	int n;                  /* rows written */
	char **shown;           /* problems already shown on a column's row (mask_check_type's words) */
	int n_shown;
} MaskRows;

/* Appends to buf (of len bytes, at *at): as much as fits, always NUL-terminated. */
static void buf_add(char *buf, size_t len, size_t *at, const char *s, size_t n)
{
	if (*at + n >= len)
		n = *at + 1 < len ? len - *at - 1 : 0;
	memcpy(buf + *at, s, n);
	*at += n;
	buf[*at] = '\0';
}

/* The mask function with its arguments as written in rules: "partial(0, '***', 4)". */
static const char *fmt_mask_fn(const Rule *r, char *buf, size_t len)
{
	const char *name = rules_mask_fn_name(r->mask_fn);
	size_t at = 0;

	buf[0] = '\0';
	buf_add(buf, len, &at, name, strlen(name));
	buf_add(buf, len, &at, "(", 1);
	for (int i = 0; i < r->n_args; i++) {
		const MaskArg *a = &r->args[i];
		char num[32];

		if (i > 0)
			buf_add(buf, len, &at, ", ", 2);
		if (a->type == MASK_ARG_INT) {
			snprintf(num, sizeof(num), "%lld", a->ival);
			buf_add(buf, len, &at, num, strlen(num));
			continue;
		}
		buf_add(buf, len, &at, "'", 1);
		for (const char *p = a->sval; p != NULL && *p != '\0'; p++) {
			if (*p == '\'')
				buf_add(buf, len, &at, "''", 2); /* as written: a quote doubled */
			else
				buf_add(buf, len, &at, p, 1);
		}
		buf_add(buf, len, &at, "'", 1);
	}
	buf_add(buf, len, &at, ")", 1);
	return buf;
}

/* One row: relation/column/rule may be NULL (a database without a snapshot). */
static void mask_row(MaskRows *mr, const char *relation, const char *column, const Rule *r, const char *derived,
		     const char *problem)
{
	char fn[256];
	const char *v[7] = { mr->database, relation, column, r != NULL ? r->where : NULL,
			     r != NULL ? fmt_mask_fn(r, fn, sizeof(fn)) : NULL, derived, problem };

	put_row(mr->out, v, 7);
	mr->n++;
}

static int rel_cmp(const void *a, const void *b)
{
	const CatRel *x = *(const CatRel *const *)a, *y = *(const CatRel *const *)b;
	int c = strcmp(x->schema, y->schema);

	return c != 0 ? c : strcmp(x->name, y->name);
}

/* The rows of one column of rel; false without memory. */
static bool mask_column_rows(MaskRows *mr, const CatRel *rel, const CatColumn *c)
{
	char relname[300], why[256];

	snprintf(relname, sizeof(relname), "%s.%s", rel->schema, rel->name);
	for (int k = 0; k < c->n_masks; k++) {
		const CatMask *m = &c->masks[k];
		const char *problem = "";

		if (!m->derived && !m->type_ok) {
			char **grown = realloc(mr->shown, (size_t)(mr->n_shown + 1) * sizeof(char *));

			if (grown == NULL)
				return false;
			mr->shown = grown;
			if (mask_check_type(m->rule, c->type_oid, why, sizeof(why)))
				snprintf(why, sizeof(why), "the function cannot mask this column's type");
			if ((mr->shown[mr->n_shown] = strdup(why)) == NULL)
				return false;
			mr->n_shown++;
			problem = why;
		}
		mask_row(mr, relname, c->name, m->rule, m->derived ? "t" : "f", problem);
	}
	return true;
}

/* The rows of every masked column, relations by name; false without memory. */
static bool mask_reached_rows(MaskRows *mr)
{
	const CatSnap *s = mr->snap;
	const CatRel **rels = s->n_rels > 0 ? malloc((size_t)s->n_rels * sizeof(CatRel *)) : NULL;
	int n = 0;
	bool ok = true;

	if (s->n_rels > 0 && rels == NULL)
		return false;
	for (int i = 0; i < s->n_rels; i++)
		if (s->rels[i].has_masks)
			rels[n++] = &s->rels[i];
	if (n > 1)
		qsort(rels, (size_t)n, sizeof(CatRel *), rel_cmp);
	for (int i = 0; i < n && ok; i++)
		for (int j = 0; j < rels[i]->n_columns && ok; j++)
			if (rels[i]->columns[j].name != NULL)
				ok = mask_column_rows(mr, rels[i], &rels[i]->columns[j]);
	free(rels);
	return ok;
}

static bool rule_reaches_any(const CatSnap *s, const Rule *r)
{
	for (int i = 0; i < s->n_rels; i++)
		for (int j = 0; j < s->rels[i].n_columns; j++)
			for (int k = 0; k < s->rels[i].columns[j].n_masks; k++)
				if (s->rels[i].columns[j].masks[k].rule == r)
					return true;
	return false;
}

/* The rule a problem line ("file:line: reason") is about, or NULL; *reason points past its name. */
static const Rule *problem_rule(const CatSnap *s, const char *line, const char **reason)
{
	*reason = line;
	for (int i = 0; s->rules != NULL && i < s->rules->n_rules; i++) {
		const Rule *r = &s->rules->rules[i];
		size_t n = r->where != NULL ? strlen(r->where) : 0;

		if (r->kind != RULE_MASK || n == 0 || strncmp(line, r->where, n) != 0 || line[n] != ':')
			continue;
		*reason = line + n + 1 + (line[n + 1] == ' ');
		return r;
	}
	return NULL;
}

/* True when a column's row already says what the problem line says. */
static bool shown_on_column(const MaskRows *mr, const char *reason)
{
	for (int i = 0; i < mr->n_shown; i++)
		if (strstr(reason, mr->shown[i]) != NULL)
			return true;
	return false;
}

/*
 * A row per problem of the snapshot not already shown on a column's row
 * (a type problem), and one for each mask rule that reaches nothing
 * without saying why.
 */
static void mask_problem_rows(MaskRows *mr)
{
	const CatSnap *s = mr->snap;

	for (int i = 0; i < s->n_problems; i++) {
		const char *reason;
		const Rule *r = problem_rule(s, s->problems[i], &reason);
		char relname[300];

		if (shown_on_column(mr, reason))
			continue;
		if (r != NULL)
			snprintf(relname, sizeof(relname), "%s.%s", r->mask_schema, r->mask_table);
		mask_row(mr, r != NULL ? relname : NULL, r != NULL ? r->mask_column : NULL, r, NULL, reason);
	}
	for (int i = 0; s->rules != NULL && i < s->rules->n_rules; i++) {
		const Rule *r = &s->rules->rules[i];
		char relname[300];
		bool explained = false;

		for (int j = 0; j < s->n_problems && !explained; j++) {
			const char *reason;

			explained = problem_rule(s, s->problems[j], &reason) == r;
		}
		if (r->kind != RULE_MASK || explained || rule_reaches_any(s, r))
			continue;
		snprintf(relname, sizeof(relname), "%s.%s", r->mask_schema, r->mask_table);
		mask_row(mr, relname, r->mask_column, r, NULL, "reaches no column");
	}
}

/* The rows of one database; false without memory. */
static bool show_masks_db(PgBuf *out, const char *database, int *rows)
{
	MaskRows mr = { .out = out, .database = database };
	CatSnap *s = catalog_get(database);
	bool ok = true;

	if (s == NULL) {
		mask_row(&mr, NULL, NULL, NULL, NULL, "the catalog has not been read yet");
	} else if (s->error != NULL) {
		mask_row(&mr, NULL, NULL, NULL, NULL, s->error);
	} else {
		mr.snap = s;
		ok = mask_reached_rows(&mr);
		if (ok)
			mask_problem_rows(&mr);
	}
	for (int i = 0; i < mr.n_shown; i++)
		free(mr.shown[i]);
	free(mr.shown);
	catalog_snap_unref(s);
	*rows += mr.n;
	return ok;
}

static bool has_mask_rules(const RuleSet *rs)
{
	for (int i = 0; rs != NULL && i < rs->n_rules; i++)
		if (rs->rules[i].kind == RULE_MASK)
			return true;
	return false;
}

static bool run_show_masks(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	static const Column cols[] = { { "database", COL_TEXT }, { "relation", COL_TEXT }, { "column", COL_TEXT },
				       { "rule", COL_TEXT },	 { "function", COL_TEXT }, { "derived", COL_BOOL },
				       { "problem", COL_TEXT } };
	Config *cfg = config_current();
	int n = 0;
	bool ok = true;

	if (cfg == NULL) {
		put_error(out, SQLSTATE_INTERNAL_ERROR, "no configuration is loaded", NULL, 0);
		return false;
	}
	if (!has_mask_rules(cfg->ruleset))
		put_notice(out, "no MASK rules are loaded");
	put_columns(out, cols, (int)PGV_ARRAY_LEN(cols));
	for (int i = 0; has_mask_rules(cfg->ruleset) && i < cfg->n_databases && ok; i++)
		ok = show_masks_db(out, cfg->databases[i].name, &n);
	config_unref(cfg);
	if (!ok)
		return out_of_memory(out);
	put_show_complete(out, n);
	return true;
}

/* "admin", "approver or admin", ... : the groups that may run a command. */
static const char *roles_text(int roles)
{
	switch (roles) {
	case ADMIN_ROLE_ADMIN: return "admin";
	case ROLES_APPROVE: return "approver or admin";
	case ROLES_AUDIT: return "auditor or admin";
	default: return "admin, approver or auditor";
	}
}

static bool run_show_help(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	static const Column cols[] = { { "command", false }, { "description", false }, { "groups", false },
				       { "allowed", false } };
	int n = 0;

	put_columns(out, cols, 4);
	for (size_t i = 0; i < PGV_ARRAY_LEN(cmd_info); i++) {
		const char *v[4] = { cmd_info[i].name, cmd_info[i].help, roles_text(cmd_info[i].roles),
				     (ac->roles & cmd_info[i].roles) ? "yes" : "no" };

		if (cmd_info[i].help == NULL)
			continue;
		put_row(out, v, 4);
		n++;
	}
	put_show_complete(out, n);
	return true;
}

/* Looks up held statement c->n for a decision; false after an error. */
static bool decision_allowed(AdminConsole *ac, const AdminCmd *c, PgBuf *out, HeldInfo **h)
{
	char msg[256];
	int rc = approval_get(c->n, h);

	if (rc < 0)
		return out_of_memory(out);
	if (rc == 0) {
		snprintf(msg, sizeof(msg), "no held statement %llu", (unsigned long long)c->n);
		put_error(out, SQLSTATE_UNDEFINED_OBJECT, msg, "SHOW HELD lists the statements waiting", 0);
		return false;
	}
	if ((*h)->state != HOLD_WAITING) {
		snprintf(msg, sizeof(msg), "statement %llu %s %s%s%s", (unsigned long long)c->n,
			 (*h)->state == HOLD_TIMEOUT ? "already" : "was already", approval_state_name((*h)->state),
			 (*h)->decided_by ? " by " : "", (*h)->decided_by ? (*h)->decided_by : "");
		put_error(out, SQLSTATE_NOT_IN_STATE, msg, NULL, 0);
		return false;
	}
	if (c->kind == CMD_APPROVE && strcmp((*h)->subject, ac->subject) == 0) {
		put_error(out, SQLSTATE_INSUFFICIENT_PRIVILEGE, "approvers cannot approve their own statements",
			  "another approver must approve it", 0);
		return false;
	}
	return true;
}

/* The notice telling the approver what an APPROVE ... FOR grant covers, or why none was made. */
static void grant_notice(PgBuf *out, const HeldInfo *h)
{
	GrantInfo *g;
	int n;
	char until[32];

	if (h->no_grant != NULL) {
		put_notice(out, "no grant made from statement %llu, approved once: %s; each such statement needs its own approval",
			   (unsigned long long)h->id, h->no_grant);
		return;
	}
	n = approval_list_grants(&g);
	for (int i = 0; i < n; i++) {
		if (g[i].approval_id != h->id)
			continue;
		put_notice(out,
			   "grant %llu: agent %s may run statements held by rule %s on %s%s without approval until %s",
			   (unsigned long long)g[i].id, g[i].subject, rule_name(g[i].rule),
			   g[i].tables[0] ? "tables " : "no tables", g[i].tables,
			   fmt_time(g[i].until, until, sizeof(until)));
		break;
	}
	approval_free_grants(g, n);
}

static bool run_decide(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	bool approve = c->kind == CMD_APPROVE;
	HeldInfo *h = NULL;
	char err[256];
	bool ok = decision_allowed(ac, c, out, &h);

	if (ok && !approval_decide(c->n, approve, ac->subject, c->text, c->seconds, err, sizeof(err))) {
		put_error(out, strcmp(err, "out of memory") == 0 ? SQLSTATE_OUT_OF_MEMORY : SQLSTATE_NOT_IN_STATE, err,
			  NULL, 0);
		ok = false;
	}
	if (ok) {
		log_write(LL_INFO, ac->ctx, "%s %llu (agent %s)", approve ? "APPROVE" : "DENY",
			  (unsigned long long)c->n, h->subject);
		if (approve && c->seconds > 0)
			grant_notice(out, h);
		put_complete(out, approve ? "APPROVE" : "DENY");
	}
	approval_free_held(h, h != NULL ? 1 : 0);
	return ok;
}

static bool run_revoke(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	char msg[96];

	if (!approval_revoke_grant(c->n)) {
		snprintf(msg, sizeof(msg), "no active grant %llu", (unsigned long long)c->n);
		put_error(out, SQLSTATE_UNDEFINED_OBJECT, msg, "SHOW GRANTS lists the active grants", 0);
		return false;
	}
	log_write(LL_INFO, ac->ctx, "REVOKE GRANT %llu", (unsigned long long)c->n);
	put_complete(out, "REVOKE GRANT");
	return true;
}

static bool run_kill(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	char msg[96];

	if (!server_kill_session(c->n)) {
		snprintf(msg, sizeof(msg), "no session %llu", (unsigned long long)c->n);
		put_error(out, SQLSTATE_UNDEFINED_OBJECT, msg, "SHOW SESSIONS lists the sessions", 0);
		return false;
	}
	log_write(LL_INFO, ac->ctx, "KILL SESSION %llu", (unsigned long long)c->n);
	put_complete(out, "KILL SESSION");
	return true;
}

static bool run_block(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	time_t until = c->seconds > 0 ? time(NULL) + (time_t)c->seconds : 0;
	char when[32];
	int ended;

	if (c->text[0] == '\0') {
		put_error(out, SQLSTATE_INVALID_PARAMETER, "the agent's subject must not be empty", NULL, 0);
		return false;
	}
	if (strcmp(c->text, ac->subject) == 0) {
		put_error(out, SQLSTATE_INVALID_PARAMETER, "you cannot block your own subject", NULL, 0);
		return false;
	}
	if (!approval_block_agent(c->text, until))
		return out_of_memory(out);
	ended = server_kill_sessions_of(c->text);
	log_write(LL_INFO, ac->ctx, "BLOCK AGENT %s until %s: ending %d session%s", c->text,
		  until ? fmt_time(until, when, sizeof(when)) : "UNBLOCK AGENT", ended, ended == 1 ? "" : "s");
	put_notice(out, "agent %s is blocked until %s; %d session%s ended", c->text,
		   until ? fmt_time(until, when, sizeof(when)) : "UNBLOCK AGENT", ended,
		   ended == 1 ? " is being" : "s are being");
	put_complete(out, "BLOCK AGENT");
	return true;
}

static bool run_unblock(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	char msg[300];

	if (!approval_unblock_agent(c->text)) {
		snprintf(msg, sizeof(msg), "agent %s is not blocked", c->text);
		put_error(out, SQLSTATE_UNDEFINED_OBJECT, msg, NULL, 0);
		return false;
	}
	log_write(LL_INFO, ac->ctx, "UNBLOCK AGENT %s", c->text);
	put_complete(out, "UNBLOCK AGENT");
	return true;
}

static bool run_reload(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	log_write(LL_INFO, ac->ctx, "RELOAD");
	if (kill(getpid(), SIGHUP) != 0) {
		put_error(out, SQLSTATE_INTERNAL_ERROR, "could not signal the reload", NULL, 0);
		return false;
	}
	put_notice(out, "reload requested: the configuration and rules are read again now; "
			"errors keep the previous ones and go to pgveil's log");
	put_complete(out, "RELOAD");
	return true;
}

/* ---- the audit log ---------------------------------------------------------------------- */

/*
 * SHOW SESSION n: the session's row, then its statements in the order they
 * arrived, as one result set. The session row has kind 'session', its
 * start in ts and its length in duration_ms; statement rows have kind
 * 'statement' and the queries row, with the approver of a held statement.
 */
static const char show_session_sql[] =
	"SELECT kind, id, ts, subject, ended_at, end_reason, decision, rule, classes, duration_ms, rows,"
	" sqlstate, error, masked_columns, decided_by, sql FROM ("
	"SELECT 0 AS k, 'session' AS kind, id, started_at AS ts, subject, ended_at, end_reason,"
	" NULL AS decision, NULL AS rule, NULL AS classes,"
	" round((julianday(ended_at) - julianday(started_at)) * 86400000.0, 3) AS duration_ms,"
	" NULL AS rows, NULL AS sqlstate, NULL AS error, NULL AS masked_columns, NULL AS decided_by, NULL AS sql"
	" FROM sessions WHERE id = %llu"
	" UNION ALL "
	"SELECT 1, 'statement', q.id, q.ts, q.subject, NULL, NULL, q.decision, q.rule, q.classes,"
	" CAST(q.duration_ms AS REAL), CAST(q.rows AS INTEGER), q.sqlstate, q.error, q.masked_columns,"
	" a.decided_by, q.sql"
	" FROM queries q LEFT JOIN approvals a ON a.id = q.approval_id WHERE q.session_id = %llu"
	" UNION ALL " /* strict mode: recorded, outcome not written yet (doc/audit.md "Modes") */
	"SELECT 1, 'statement', p.id, p.ts, p.subject, NULL, NULL, p.decision, p.rule, p.classes,"
	" NULL, NULL, NULL, NULL, NULL, a.decided_by, p.sql"
	" FROM pending p LEFT JOIN approvals a ON a.id = p.approval_id WHERE p.session_id = %llu"
	") ORDER BY k, id";

/* SHOW SESSION's column types, whatever the rows hold (a session without statements too). */
static const uint32_t show_session_types[] = {
	AUDIT_READ_OID_TEXT, AUDIT_READ_OID_INT8, AUDIT_READ_OID_TEXT, AUDIT_READ_OID_TEXT, AUDIT_READ_OID_TEXT,
	AUDIT_READ_OID_TEXT, AUDIT_READ_OID_TEXT, AUDIT_READ_OID_TEXT, AUDIT_READ_OID_TEXT, AUDIT_READ_OID_FLOAT8,
	AUDIT_READ_OID_INT8, AUDIT_READ_OID_TEXT, AUDIT_READ_OID_TEXT, AUDIT_READ_OID_TEXT, AUDIT_READ_OID_TEXT,
	AUDIT_READ_OID_TEXT,
};

/* Hands sql to a reader thread; the string waits for it. False after an error. */
static bool submit_read(AdminConsole *ac, const char *sql, PgBuf *out)
{
	Config *cfg = config_current();
	const char *path = cfg != NULL ? cfg->audit_db : NULL;

	if (path == NULL || path[0] == '\0') {
		config_unref(cfg);
		put_error(out, SQLSTATE_FEATURE_NOT_SUPPORTED, "the audit log is not available",
			  "SHOW SESSION and SQL queries read the audit log, and audit_db is not set", 0);
		return false;
	}
	if (ac->wake != NULL)
		ac->pending = audit_read_submit(path, sql, NULL, ac->wake);
	config_unref(cfg);
	if (ac->pending == NULL) {
		put_error(out, SQLSTATE_INTERNAL_ERROR, "could not start reading the audit log", NULL, 0);
		return false;
	}
	return true;
}

static bool run_show_session(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	char sql[sizeof(show_session_sql) + 64];

	snprintf(sql, sizeof(sql), show_session_sql, (unsigned long long)c->n, (unsigned long long)c->n,
		 (unsigned long long)c->n);
	log_write(LL_INFO, ac->ctx, "SHOW SESSION %llu", (unsigned long long)c->n);
	return submit_read(ac, sql, out);
}

static bool run_audit_sql(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	size_t off = (size_t)(c->name - ac->sql);
	char *sql = strndup(c->name, c->end - off);
	bool ok;

	if (sql == NULL)
		return out_of_memory(out);
	log_write(LL_INFO, ac->ctx, "audit log query: %.300s", sql);
	ok = submit_read(ac, sql, out);
	free(sql);
	return ok;
}

static int16_t type_len(uint32_t oid)
{
	return oid == AUDIT_READ_OID_INT8 || oid == AUDIT_READ_OID_FLOAT8 ? 8 : -1;
}

/* RowDescription, DataRows and CommandComplete of a result; types NULL: the result's own. */
static void put_read_result(PgBuf *out, const AuditReadResult *res, const uint32_t *types, const char *verb)
{
	char tag[48];

	pgproto_begin(out, 'T');
	pgproto_put_int16(out, (int16_t)res->n_cols);
	for (int i = 0; i < res->n_cols; i++) {
		uint32_t oid = types != NULL ? types[i] : res->col_types[i];

		pgproto_put_string(out, res->col_names[i]);
		pgproto_put_int32(out, 0);
		pgproto_put_int16(out, 0);
		pgproto_put_int32(out, (int32_t)oid);
		pgproto_put_int16(out, type_len(oid));
		pgproto_put_int32(out, -1);
		pgproto_put_int16(out, 0);
	}
	pgproto_end(out);
	for (int64_t r = 0; r < res->n_rows; r++) {
		pgproto_begin(out, 'D');
		pgproto_put_int16(out, (int16_t)res->n_cols);
		for (int i = 0; i < res->n_cols; i++) {
			const char *val = audit_read_value(res, r, i);

			pgproto_put_int32(out, val != NULL ? (int32_t)strlen(val) : -1);
			if (val != NULL)
				pgproto_put_bytes(out, val, strlen(val));
		}
		pgproto_end(out);
	}
	snprintf(tag, sizeof(tag), "%s %lld", verb, (long long)res->n_rows);
	put_complete(out, tag);
}

/* The answer of the command that waited for res; false after an error. */
static bool put_read_answer(AdminConsole *ac, const AdminCmd *c, const AuditReadResult *res, PgBuf *out)
{
	bool session = c->kind == CMD_SHOW_SESSION;
	char msg[96];

	if (res->sqlstate[0] != '\0') {
		int pos = !session && res->err_offset >= 0 ?
				  char_position(ac->sql, (size_t)(c->name - ac->sql) + (size_t)res->err_offset) : 0;

		log_write(LL_INFO, ac->ctx, "audit log: %s %s", res->sqlstate, res->message);
		put_error(out, res->sqlstate, res->message, res->hint, pos);
		return false;
	}
	if (session && res->n_rows == 0) {
		snprintf(msg, sizeof(msg), "session %llu is not in the audit log", (unsigned long long)c->n);
		put_error(out, SQLSTATE_UNDEFINED_OBJECT, msg, "SELECT id, subject, started_at FROM sessions lists them",
			  0);
		return false;
	}
	if (session && res->n_cols != (int)PGV_ARRAY_LEN(show_session_types)) {
		put_error(out, SQLSTATE_INTERNAL_ERROR, "unexpected shape of the audit log", NULL, 0);
		return false;
	}
	put_read_result(out, res, session ? show_session_types : NULL, session ? "SHOW" : "SELECT");
	return true;
}

static bool run_transaction(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	put_error(out, SQLSTATE_FEATURE_NOT_SUPPORTED, "the admin console has no transactions",
		  "every command takes effect at once; with psycopg, connect with autocommit=True", 0);
	return false;
}

static const CmdRunner runners[] = {
	[CMD_SHOW_HELD] = run_show_held,	 [CMD_SHOW_GRANTS] = run_show_grants,
	[CMD_SHOW_SESSIONS] = run_show_sessions, [CMD_SHOW_SESSION] = run_show_session,
	[CMD_SHOW_RULES] = run_show_rules,	 [CMD_SHOW_STATS] = run_show_stats,
	[CMD_SHOW_BLOCKED] = run_show_blocked,	 [CMD_SHOW_MASKS] = run_show_masks,
	[CMD_SHOW_HELP] = run_show_help,
	[CMD_APPROVE] = run_decide,		 [CMD_DENY] = run_decide,
	[CMD_REVOKE_GRANT] = run_revoke,	 [CMD_KILL_SESSION] = run_kill,
	[CMD_BLOCK_AGENT] = run_block,		 [CMD_UNBLOCK_AGENT] = run_unblock,
	[CMD_RELOAD] = run_reload,		 [CMD_AUDIT_SQL] = run_audit_sql,
	[CMD_TRANSACTION] = run_transaction,
};

/* Runs one parsed command if the caller may; false after an error. */
static bool run_command(AdminConsole *ac, const AdminCmd *c, PgBuf *out)
{
	int need = cmd_info[c->kind].roles;

	if ((ac->roles & need) == 0) {
		char msg[160];

		if (c->name != NULL)
			snprintf(msg, sizeof(msg), "%.*s needs the %s group",
				 (int)(c->name_len > 32 ? 32 : c->name_len), c->name, roles_text(need));
		else
			snprintf(msg, sizeof(msg), "%s needs the %s group", cmd_info[c->kind].name, roles_text(need));
		log_write(LL_INFO, ac->ctx, "refused: %s", msg);
		put_error(out, SQLSTATE_INSUFFICIENT_PRIVILEGE, msg, NULL, 0);
		return false;
	}
	return runners[c->kind](ac, c, out);
}

/* After a reload the caller's groups are checked again: a group taken out of approver_groups stops approving. */
static void refresh_roles(AdminConsole *ac)
{
	uint64_t gen = config_generation();
	Config *cfg;

	if (gen == ac->roles_gen || ac->id == NULL || (cfg = config_current()) == NULL)
		return;
	ac->roles = admin_roles(cfg, ac->id);
	ac->roles_gen = gen;
	config_unref(cfg);
}

/* Forgets the string being run (and a read it waits for). */
static void end_query(AdminConsole *ac)
{
	audit_read_cancel(ac->pending);
	ac->pending = NULL;
	free_cmds(ac->cmds, ac->n_cmds);
	ac->cmds = NULL;
	ac->n_cmds = ac->next = 0;
	free(ac->sql);
	ac->sql = NULL;
}

/* Runs the commands from ac->next on, until one fails or waits for the audit log. */
static AdminStatus run_rest(AdminConsole *ac, PgBuf *out)
{
	while (ac->next < ac->n_cmds) {
		if (!run_command(ac, &ac->cmds[ac->next++], out))
			break;
		if (ac->pending != NULL)
			return ADMIN_WAIT;
	}
	end_query(ac);
	return ADMIN_DONE;
}

AdminStatus admin_query(AdminConsole *ac, const char *sql, PgBuf *out)
{
	Lexer lx = { 0 };
	int n;

	if (ac->sql != NULL) {
		put_error(out, SQLSTATE_INTERNAL_ERROR, "the previous command is still running", NULL, 0);
		return ADMIN_DONE;
	}
	refresh_roles(ac);
	if ((ac->sql = strdup(sql)) == NULL) {
		out_of_memory(out);
		return ADMIN_DONE;
	}
	lx.src = ac->sql;
	n = parse_all(&lx, &ac->cmds);
	if (n < 0) {
		bool syntax = strcmp(lx.err_state, SQLSTATE_SYNTAX_ERROR) == 0;
		bool oom = strcmp(lx.err_state, SQLSTATE_OUT_OF_MEMORY) == 0;

		log_write(LL_DEBUG, ac->ctx, "%s", lx.err);
		put_error(out, lx.err_state, lx.err, syntax ? "SHOW HELP lists the commands" : NULL,
			  oom ? 0 : char_position(sql, lx.err_off));
		end_query(ac);
		return ADMIN_DONE;
	}
	if (n == 0) {
		pgproto_begin(out, 'I'); /* EmptyQueryResponse */
		pgproto_end(out);
	}
	ac->n_cmds = n;
	return run_rest(ac, out);
}

AdminStatus admin_resume(AdminConsole *ac, PgBuf *out)
{
	AuditReadResult *res;

	if (ac->pending == NULL)
		return ac->sql != NULL ? run_rest(ac, out) : ADMIN_DONE;
	if ((res = audit_read_take(ac->pending)) == NULL)
		return ADMIN_WAIT;
	ac->pending = NULL;
	if (!put_read_answer(ac, &ac->cmds[ac->next - 1], res, out))
		ac->next = ac->n_cmds; /* an error ends the string */
	audit_read_result_free(res);
	return run_rest(ac, out);
}

void admin_cancel(AdminConsole *ac)
{
	if (ac != NULL && ac->pending != NULL) {
		log_write(LL_INFO, ac->ctx, "cancel request: stopping the audit log query");
		audit_read_interrupt(ac->pending);
	}
}
