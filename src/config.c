/* SPDX-License-Identifier: MIT */
/*
 * Configuration loading. libinih does the INI tokenising; this module owns
 * the key table, value validation with file:line:col errors, libpq-style
 * connection strings of [databases], and the process-wide current snapshot
 * that SIGHUP replaces.
 */
#include "pgveil/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netdb.h>
#include <sys/un.h>
#include <unistd.h>

#include "pgveil/jwtauth.h"
#include "pgveil/log.h"
#include "pgveil/mask.h"
#include "pgveil/rules.h"
#include "pgveil/tls.h"

typedef enum { K_STR, K_INT, K_BOOL, K_MS, K_SECONDS, K_INTERVAL, K_LIST, K_ENUM, K_SIZE } KeyType;

typedef struct KeyDef {
	const char *section;    /* "pgveil" or "oidc" */
	const char *name;       /* key */
	KeyType type;           /* how the value is read */
	size_t offset;          /* field in Config */
	long min, max;          /* K_INT bounds; K_INTERVAL: min is the shortest interval but 0, in ms (whole seconds) */
	const char *const *enum_names; /* K_ENUM: accepted words, index = value */
} KeyDef;

static const char *const action_names[] = { "allow", "block", "hold", NULL };
static const char *const audit_mode_names[] = { "async", "strict", NULL };
static const char *const log_level_names[] = { "error", "warn", "info", "debug", NULL };
static const char *const log_format_names[] = { "text", "json", NULL };
static const char *const mask_pred_names[] = { "block", "allow", NULL };

#define F(field) offsetof(Config, field)
static const KeyDef key_defs[] = {
	{ "pgveil", "listen_addr", K_LIST, F(listen_addr), 0, 0, NULL },
	{ "pgveil", "listen_port", K_INT, F(listen_port), 1, 65535, NULL },
	{ "pgveil", "workers", K_INT, F(workers), 0, 256, NULL },
	{ "pgveil", "max_client_conn", K_INT, F(max_client_conn), 1, 1000000, NULL },
	{ "pgveil", "tls_cert_file", K_STR, F(tls_cert_file), 0, 0, NULL },
	{ "pgveil", "tls_key_file", K_STR, F(tls_key_file), 0, 0, NULL },
	{ "pgveil", "allow_plaintext_auth", K_BOOL, F(allow_plaintext_auth), 0, 0, NULL },
	{ "pgveil", "dev_trust_auth", K_BOOL, F(dev_trust_auth), 0, 0, NULL },
	{ "pgveil", "rules", K_STR, F(rules), 0, 0, NULL },
	{ "pgveil", "default_action", K_ENUM, F(default_action), 0, 0, action_names },
	{ "pgveil", "audit_db", K_STR, F(audit_db), 0, 0, NULL },
	{ "pgveil", "audit_mode", K_ENUM, F(audit_mode), 0, 0, audit_mode_names },
	{ "pgveil", "audit_retention", K_SECONDS, F(audit_retention), 0, 0, NULL },
	{ "pgveil", "hold_timeout", K_MS, F(hold_timeout), 0, 0, NULL },
	{ "pgveil", "admin_db", K_STR, F(admin_db), 0, 0, NULL },
	{ "pgveil", "admin_groups", K_LIST, F(admin_groups), 0, 0, NULL },
	{ "pgveil", "approver_groups", K_LIST, F(approver_groups), 0, 0, NULL },
	{ "pgveil", "auditor_groups", K_LIST, F(auditor_groups), 0, 0, NULL },
	{ "pgveil", "mask_key_file", K_STR, F(mask_key_file), 0, 0, NULL },
	{ "pgveil", "mask_predicates", K_ENUM, F(mask_predicates_allow), 0, 0, mask_pred_names },
	{ "pgveil", "audit_redact_literals", K_BOOL, F(audit_redact_literals), 0, 0, NULL },
	{ "pgveil", "startup_timeout", K_MS, F(startup_timeout), 0, 0, NULL },
	{ "pgveil", "shutdown_timeout", K_MS, F(shutdown_timeout), 0, 0, NULL },
	{ "pgveil", "server_connect_timeout", K_MS, F(server_connect_timeout), 0, 0, NULL },
	{ "pgveil", "catalog_refresh", K_INTERVAL, F(catalog_refresh), 1000, 0, NULL },
	{ "pgveil", "max_packet_size", K_SIZE, F(max_packet_size), 0, 0, NULL },
	{ "pgveil", "log_level", K_ENUM, F(log_level), 0, 0, log_level_names },
	{ "pgveil", "log_format", K_ENUM, F(log_format), 0, 0, log_format_names },
	{ "oidc", "issuer", K_STR, F(oidc_issuer), 0, 0, NULL },
	{ "oidc", "audience", K_STR, F(oidc_audience), 0, 0, NULL },
	{ "oidc", "jwks_file", K_STR, F(oidc_jwks_file), 0, 0, NULL },
	{ "oidc", "jwks_uri", K_STR, F(oidc_jwks_uri), 0, 0, NULL },
	{ "oidc", "jwks_ca_file", K_STR, F(oidc_jwks_ca_file), 0, 0, NULL },
	{ "oidc", "jwks_min_refresh", K_SECONDS, F(oidc_jwks_min_refresh), 0, 0, NULL },
	{ "oidc", "algorithms", K_LIST, F(oidc_algorithms), 0, 0, NULL },
	{ "oidc", "subject_claim", K_STR, F(oidc_subject_claim), 0, 0, NULL },
	{ "oidc", "groups_claim", K_STR, F(oidc_groups_claim), 0, 0, NULL },
	{ "oidc", "clock_skew", K_SECONDS, F(oidc_clock_skew), 0, 0, NULL },
	{ "oidc", "match_user", K_BOOL, F(oidc_match_user), 0, 0, NULL },
};
#undef F
#define N_KEYS PGV_ARRAY_LEN(key_defs)

/* How inih reads a line (its rules, mirrored so the handler knows too). */
typedef enum { LINE_BLANK, LINE_COMMENT, LINE_CONTINUATION, LINE_SECTION, LINE_KEY } LineKind;

/* Where something was set in the file; line 0 = not set (a default). */
typedef struct KeyPos {
	int line; /* 1-based line */
	int col;  /* 1-based column of the value (of the name for databases) */
} KeyPos;

/* State of one load: the file being read, the line being parsed, errors. */
typedef struct LoadState {
	Config *cfg;          /* being filled */
	const char *path;     /* for messages */
	FILE *fp;             /* the file */
	int lineno;           /* line last handed to inih */
	char line[512];       /* raw copy of that line, for columns */
	LineKind line_kind;   /* what inih will make of it */
	bool key_seen;        /* a key since the last section header: indented lines continue it */
	int cont_db;          /* the [databases] entry continuation lines extend, -1 = none */
	KeyPos key_pos[N_KEYS]; /* where each key was set */
	KeyPos *db_pos;       /* where each [databases] entry starts, parallel to cfg->databases */
	char *errs;           /* accumulated messages */
	size_t errs_len;      /* bytes in errs */
	int nerrors;          /* count */
} LoadState;

static void PGV_PRINTF(3, 4) load_error(LoadState *st, int col, const char *fmt, ...)
{
	char msg[600];
	int n;
	va_list ap;
	char *p;

	/* Counted even when the message cannot be stored: the file stays invalid. */
	st->nerrors++;
	n = snprintf(msg, sizeof(msg), "%s:%d:%d: ", st->path, st->lineno, col);
	if (n < 0 || (size_t)n >= sizeof(msg))
		n = (int)sizeof(msg) - 1; /* a path longer than msg: the message is cut */
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	n = (int)strlen(msg);
	p = realloc(st->errs, st->errs_len + (size_t)n + 2);
	if (p == NULL)
		return;
	st->errs = p;
	memcpy(st->errs + st->errs_len, msg, (size_t)n);
	st->errs_len += (size_t)n;
	st->errs[st->errs_len++] = '\n';
	st->errs[st->errs_len] = '\0';
}

/* 1-based column of `needle` in the current raw line, 1 if not found. */
static int col_of(const LoadState *st, const char *needle)
{
	const char *p = (*needle != '\0') ? strstr(st->line, needle) : NULL;

	return p ? (int)(p - st->line) + 1 : 1;
}

/* Column of the value: the first occurrence after the '=' (anywhere on a continuation line). */
static int value_col(const LoadState *st, const char *value)
{
	const char *eq = (st->line_kind == LINE_CONTINUATION) ? st->line : strchr(st->line, '=');
	const char *p = (eq != NULL && *value != '\0') ? strstr(eq, value) : NULL;

	return p ? (int)(p - st->line) + 1 : (eq ? (int)(eq - st->line) + 2 : 1);
}

/* Reads the next raw line into st->line; false at the end of the file. */
static bool read_raw_line(LoadState *st)
{
	size_t n;

	if (fgets(st->line, sizeof(st->line), st->fp) == NULL)
		return false;
	st->lineno++;
	n = strlen(st->line);
	if (n == sizeof(st->line) - 1 && st->line[n - 1] != '\n') {
		int c;

		load_error(st, 1, "line too long (at most %zu characters)", sizeof(st->line) - 2);
		while ((c = fgetc(st->fp)) != EOF && c != '\n')
			;
		st->line[0] = '\0';
	}
	return true;
}

static bool section_known(const char *name, size_t len)
{
	static const char *const known[] = { "pgveil", "oidc", "databases" };

	for (size_t i = 0; i < PGV_ARRAY_LEN(known); i++)
		if (strlen(known[i]) == len && memcmp(known[i], name, len) == 0)
			return true;
	return false;
}

/*
 * Decides what inih will make of st->line, by inih's rules: comments first,
 * then an indented line after a key of the same section continues that key,
 * then "[section]", then key = value. Reports unknown sections at their header.
 */
static void classify_line(LoadState *st)
{
	const char *s = st->line, *close;

	if (st->lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3; /* UTF-8 byte order mark, skipped by inih too */
	s += strspn(s, " \t\r\n\v\f");
	if (*s == '\0')
		st->line_kind = LINE_BLANK;
	else if (*s == ';' || *s == '#')
		st->line_kind = LINE_COMMENT;
	else if (st->key_seen && s > st->line)
		st->line_kind = LINE_CONTINUATION;
	else if (*s == '[' && (close = strchr(s, ']')) != NULL)
		st->line_kind = LINE_SECTION;
	else
		st->line_kind = LINE_KEY;
	if (st->line_kind != LINE_SECTION)
		return;
	st->key_seen = false;
	if (!section_known(s + 1, (size_t)(close - s - 1)))
		load_error(st, (int)(s - st->line) + 1, "unknown section [%.*s]", (int)(close - s - 1), s + 1);
}

/*
 * libinih reader: one line per call. Keeps the raw line for columns and for
 * the handler, and hands inih a placeholder of the same kind when the line is
 * longer than inih's own buffer; the handler then reads st->line directly.
 */
static char *reader_cb(char *str, int num, void *stream)
{
	static const char *const placeholder[] = {
		[LINE_BLANK] = "\n",
		[LINE_COMMENT] = ";\n",
		[LINE_CONTINUATION] = " \x01\n",
		[LINE_SECTION] = "[\x01]\n",
		[LINE_KEY] = "\x01=\x01\n",
	};
	LoadState *st = stream;

	if (!read_raw_line(st))
		return NULL;
	classify_line(st);
	if (strlen(st->line) >= (size_t)num)
		snprintf(str, (size_t)num, "%s", placeholder[st->line_kind]);
	else
		memcpy(str, st->line, strlen(st->line) + 1);
	return str;
}

/*
 * Recovers name and value from the raw line, for long lines inih only saw as
 * a placeholder and for continuation lines (inih leaves their ';' comments).
 * A continuation has no name (*name = NULL).
 */
static bool raw_key_value(LoadState *st, char **name, char **value)
{
	char *s = st->line, *eq, *end;
	bool continuation = (st->line_kind == LINE_CONTINUATION);

	*name = NULL;
	*value = NULL;
	while (isspace((unsigned char)*s))
		s++;
	eq = continuation ? s - 1 : strchr(s, '='); /* continuation: all of it is value */
	if (eq == NULL)
		return false;
	if (eq >= s) {
		for (end = eq; end > s && isspace((unsigned char)end[-1]); end--)
			;
		*name = strndup(s, (size_t)(end - s));
		if (*name == NULL)
			return false;
	}
	s = eq + 1;
	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	for (char *c = s; *c; c++)
		if (*c == ';' && c > s && isspace((unsigned char)c[-1])) {
			end = c;
			break;
		}
	while (end > s && isspace((unsigned char)end[-1]))
		end--;
	*value = strndup(s, (size_t)(end - s));
	return *value != NULL;
}

static bool parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = { "yes", "on", "true", "1" };
	static const char *const no[] = { "no", "off", "false", "0" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	return false;
}

bool config_parse_duration(const char *s, uint64_t *ms_out)
{
	static const struct { const char *unit; uint64_t ms; } units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "min", 60000 },
		{ "h", 3600000 }, { "d", 86400000 },
	};
	char *end;
	unsigned long long v;

	if (!isdigit((unsigned char)*s))
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return false;
	for (size_t i = 0; i < PGV_ARRAY_LEN(units); i++)
		if (strcmp(end, units[i].unit) == 0) {
			if (v > UINT64_MAX / units[i].ms)
				return false;
			*ms_out = v * units[i].ms;
			return true;
		}
	return false;
}

static bool parse_size(const char *s, uint32_t *out)
{
	static const struct { const char *unit; uint64_t mult; } units[] = {
		{ "", 1 }, { "B", 1 }, { "kB", 1024 }, { "KB", 1024 }, { "MB", 1 << 20 }, { "GB", 1 << 30 },
	};
	char *end;
	unsigned long long v;

	if (!isdigit((unsigned char)*s))
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return false;
	for (size_t i = 0; i < PGV_ARRAY_LEN(units); i++)
		if (strcmp(end, units[i].unit) == 0) {
			uint64_t bytes = v * units[i].mult;

			if (v > UINT32_MAX || bytes > (1u << 30) || bytes < 1024)
				return false;
			*out = (uint32_t)bytes;
			return true;
		}
	return false;
}

void config_namelist_free(NameList *l)
{
	for (int i = 0; i < l->n; i++)
		free(l->items[i]);
	free(l->items);
	l->items = NULL;
	l->n = 0;
}

/* Splits "a, b ,c" into trimmed, non-empty names. */
static bool parse_list(const char *v, NameList *out)
{
	const char *p = v;

	config_namelist_free(out);
	while (*p) {
		const char *start, *end;
		char **items;

		while (isspace((unsigned char)*p) || *p == ',')
			p++;
		if (*p == '\0')
			break;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && isspace((unsigned char)end[-1]))
			end--;
		items = realloc(out->items, sizeof(char *) * (size_t)(out->n + 1));
		if (items == NULL)
			return false;
		out->items = items;
		out->items[out->n] = strndup(start, (size_t)(end - start));
		if (out->items[out->n] == NULL)
			return false;
		out->n++;
	}
	return true;
}

/* A K_INTERVAL key: `0` or `off` turns it off, else a duration of at least k->min ms. */
static bool set_interval(LoadState *st, const KeyDef *k, const char *value, uint64_t *field)
{
	uint64_t ms;

	if (strcmp(value, "0") == 0 || strcasecmp(value, "off") == 0) {
		*field = 0;
		return true;
	}
	if (!config_parse_duration(value, &ms) || (ms != 0 && ms < (uint64_t)k->min)) {
		load_error(st, value_col(st, value),
			   "%s must be 0 (off) or a duration of at least %lds with a unit (ms, s, m, h, d), e.g. 60s, "
			   "not '%s'", k->name, k->min / 1000, value);
		return false;
	}
	*field = ms;
	return true;
}

static bool set_value(LoadState *st, const KeyDef *k, const char *value)
{
	char *field = (char *)st->cfg + k->offset;
	uint64_t ms;

	switch (k->type) {
	case K_STR:
		free(*(char **)field);
		*(char **)field = (*value != '\0') ? strdup(value) : NULL;
		return true;
	case K_INT: {
		char *end;
		long v;

		errno = 0;
		v = strtol(value, &end, 10);
		if (errno != 0 || end == value || *end != '\0' || v < k->min || v > k->max) {
			load_error(st, value_col(st, value), "%s must be an integer from %ld to %ld, not '%s'",
				   k->name, k->min, k->max, value);
			return false;
		}
		*(int *)field = (int)v;
		return true;
	}
	case K_BOOL:
		if (!parse_bool(value, (bool *)field)) {
			load_error(st, value_col(st, value), "%s must be yes or no, not '%s'", k->name, value);
			return false;
		}
		return true;
	case K_MS:
	case K_SECONDS:
		if (strcasecmp(value, "off") == 0 && k->type == K_SECONDS) {
			*(uint64_t *)field = 0;
			return true;
		}
		if (!config_parse_duration(value, &ms)) {
			load_error(st, value_col(st, value),
				   "%s must be a duration with a unit (ms, s, m, h, d), e.g. 30s, not '%s'", k->name, value);
			return false;
		}
		*(uint64_t *)field = (k->type == K_MS) ? ms : ms / 1000;
		return true;
	case K_INTERVAL:
		return set_interval(st, k, value, (uint64_t *)field);
	case K_LIST:
		if (!parse_list(value, (NameList *)field)) {
			load_error(st, value_col(st, value), "out of memory");
			return false;
		}
		return true;
	case K_SIZE:
		if (!parse_size(value, (uint32_t *)field)) {
			load_error(st, value_col(st, value),
				   "%s must be a size from 1kB to 1GB (units B, kB, MB, GB), not '%s'", k->name, value);
			return false;
		}
		return true;
	case K_ENUM:
		for (int i = 0; k->enum_names[i] != NULL; i++)
			if (strcasecmp(value, k->enum_names[i]) == 0) {
				if (k->offset == offsetof(Config, mask_predicates_allow))
					*(bool *)field = (i == 1);
				else
					*(int *)field = i;
				return true;
			}
		load_error(st, value_col(st, value), "%s: invalid value '%s'", k->name, value);
		return false;
	}
	return false;
}

/* Appends db (moved into cfg) and where its entry starts. */
static bool db_append(LoadState *st, const DbEntry *db, KeyPos pos)
{
	Config *cfg = st->cfg;
	size_t n = (size_t)cfg->n_databases + 1;
	DbEntry *arr = realloc(cfg->databases, sizeof(DbEntry) * n);
	KeyPos *pos_arr;

	if (arr == NULL)
		return false;
	cfg->databases = arr;
	pos_arr = realloc(st->db_pos, sizeof(KeyPos) * n);
	if (pos_arr == NULL)
		return false;
	st->db_pos = pos_arr;
	cfg->databases[cfg->n_databases] = *db;
	st->db_pos[cfg->n_databases] = pos;
	cfg->n_databases++;
	return true;
}

/* A [databases] entry: name = connection string. */
static void handle_database(LoadState *st, const char *name, const char *value)
{
	DbEntry db = { 0 };
	const char *why = NULL;
	size_t off = 0;
	KeyPos pos = { st->lineno, col_of(st, name) };

	st->cont_db = -1;
	if (!config_parse_conninfo(value, &db, &why, &off)) {
		load_error(st, value_col(st, value) + (int)off, "database \"%s\": %s", name, why);
		goto fail;
	}
	if (config_find_db(st->cfg, name) != NULL) {
		load_error(st, pos.col, "database \"%s\" is defined twice", name);
		goto fail;
	}
	db.name = strdup(name);
	if (db.dbname == NULL)
		db.dbname = strdup(name);
	if (db.name == NULL || db.dbname == NULL || !db_append(st, &db, pos)) {
		load_error(st, 1, "out of memory");
		goto fail;
	}
	st->cont_db = st->cfg->n_databases - 1;
	return;
fail:
	config_free_db(&db);
}

/* A continuation line in [databases]: more key=value pairs for the entry above. */
static void continue_database(LoadState *st, const char *value)
{
	const char *why = NULL;
	size_t off = 0;
	DbEntry *db;

	if (st->cont_db < 0)
		return; /* the entry's first line had an error, reported there */
	db = &st->cfg->databases[st->cont_db];
	if (!config_parse_conninfo(value, db, &why, &off))
		load_error(st, value_col(st, value) + (int)off, "database \"%s\": %s", db->name, why);
}

/* A key of [pgveil] or [oidc]. */
static void handle_key(LoadState *st, const char *section, const char *name, const char *value)
{
	for (size_t i = 0; i < N_KEYS; i++) {
		const KeyDef *k = &key_defs[i];

		if (strcmp(k->section, section) != 0 || strcmp(k->name, name) != 0)
			continue;
		if (st->key_pos[i].line != 0)
			load_error(st, col_of(st, name), "%s is set twice", name);
		st->key_pos[i] = (KeyPos){ st->lineno, value_col(st, value) };
		set_value(st, k, value);
		return;
	}
	load_error(st, col_of(st, name), "unknown key '%s' in [%s]", name, section);
}

static int ini_handler_cb(void *user, const char *section, const char *name, const char *value)
{
	LoadState *st = user;
	char *raw_name = NULL, *raw_value = NULL;
	bool continuation = (st->line_kind == LINE_CONTINUATION);

	st->key_seen = true;
	if (continuation || strcmp(name, "\x01") == 0 || strcmp(value, "\x01") == 0) {
		if (!raw_key_value(st, &raw_name, &raw_value)) {
			load_error(st, 1, "syntax error: expected key = value");
			goto out;
		}
		name = raw_name ? raw_name : name;
		value = raw_value;
	}
	if (section[0] == '\0')
		load_error(st, 1, "key outside of any section: [pgveil], [oidc] or [databases] must come first");
	else if (strcmp(section, "databases") == 0 && continuation)
		continue_database(st, value);
	else if (strcmp(section, "databases") == 0)
		handle_database(st, name, value);
	else if (continuation)
		load_error(st, 1, "continuation lines are only allowed in [databases]");
	else if (section_known(section, strlen(section)))
		handle_key(st, section, name, value);
	/* else: a key of an unknown section, reported once at the section header */
out:
	free(raw_name);
	free(raw_value);
	return 1;
}

static Config *config_new_defaults(const char *path)
{
	Config *cfg = calloc(1, sizeof(Config));

	if (cfg == NULL)
		return NULL;
	cfg->refcount = 1;
	cfg->path = strdup(path);
	parse_list("127.0.0.1", &cfg->listen_addr);
	cfg->listen_port = 6432;
	cfg->max_client_conn = 1000;
	cfg->default_action = ACTION_BLOCK;
	cfg->audit_mode = AUDIT_ASYNC;
	cfg->hold_timeout = 300000;
	cfg->admin_db = strdup("pgveil");
	parse_list("pgveil-admins", &cfg->admin_groups);
	parse_list("dba", &cfg->approver_groups);
	parse_list("audit", &cfg->auditor_groups);
	cfg->startup_timeout = 10000;
	cfg->shutdown_timeout = 30000;
	cfg->server_connect_timeout = 10000;
	cfg->catalog_refresh = 60000;
	cfg->max_packet_size = 1u << 30;
	cfg->log_level = 2; /* info */
	cfg->log_format = LOGFMT_TEXT;
	parse_list("RS256, ES256", &cfg->oidc_algorithms);
	cfg->oidc_subject_claim = strdup("sub");
	cfg->oidc_groups_claim = strdup("groups");
	cfg->oidc_clock_skew = 60;
	cfg->oidc_jwks_min_refresh = 60;
	return cfg;
}

static void config_free(Config *cfg)
{
	for (size_t i = 0; i < N_KEYS; i++) {
		char *field = (char *)cfg + key_defs[i].offset;

		if (key_defs[i].type == K_STR)
			free(*(char **)field);
		else if (key_defs[i].type == K_LIST)
			config_namelist_free((NameList *)field);
	}
	for (int i = 0; i < cfg->n_databases; i++)
		config_free_db(&cfg->databases[i]);
	free(cfg->databases);
	tls_ctx_free(cfg->tls_server_ctx);
	jwtauth_free(cfg->oidc_verifier);
	rules_unref(cfg->ruleset);
	if (cfg->mask_key != NULL) {
		mask_key_clear(cfg->mask_key);
		free(cfg->mask_key);
	}
	free(cfg->path);
	free(cfg);
}

static bool is_loopback(const char *addr)
{
	return strcmp(addr, "localhost") == 0 || strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0;
}

bool config_listeners_loopback(const Config *cfg)
{
	for (int i = 0; i < cfg->listen_addr.n; i++)
		if (!is_loopback(cfg->listen_addr.items[i]))
			return false;
	return true;
}

/*
 * Fills db->addr for Unix sockets and numeric addresses. Host names are left
 * with addr.len == 0 and resolved (asynchronously) for each connection, so a
 * DNS change or outage never needs a reload.
 */
static bool resolve_db(DbEntry *db, const char **why)
{
	static __thread char msg[256];
	struct addrinfo hints = { 0 }, *res = NULL;
	char port[16];
	int rc;

	if (db->host[0] == '/') {
		struct sockaddr_un *un = (struct sockaddr_un *)&db->addr.sa;

		un->sun_family = AF_UNIX;
		if ((size_t)snprintf(un->sun_path, sizeof(un->sun_path), "%s/.s.PGSQL.%d", db->host, db->port) >=
		    sizeof(un->sun_path)) {
			*why = "Unix-socket path too long";
			return false;
		}
		db->addr.len = sizeof(*un);
		snprintf(db->addr.display, sizeof(db->addr.display), "%s", un->sun_path);
		return true;
	}
	snprintf(port, sizeof(port), "%d", db->port);
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_family = AF_UNSPEC;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	rc = getaddrinfo(db->host, port, &hints, &res);
	if (rc == EAI_NONAME) {
		db->addr.len = 0;
		snprintf(db->addr.display, sizeof(db->addr.display), "%s:%d", db->host, db->port);
		return true;
	}
	if (rc != 0 || res == NULL) {
		snprintf(msg, sizeof(msg), "cannot resolve host \"%s\": %s", db->host, gai_strerror(rc));
		*why = msg;
		return false;
	}
	memcpy(&db->addr.sa, res->ai_addr, res->ai_addrlen);
	db->addr.len = res->ai_addrlen;
	snprintf(db->addr.display, sizeof(db->addr.display), "%s%s%s:%d", strchr(db->host, ':') ? "[" : "",
		 db->host, strchr(db->host, ':') ? "]" : "", db->port);
	freeaddrinfo(res);
	return true;
}

/* Points the next error at the line where key `name` was set; returns the column of its value. */
static int at_key(LoadState *st, const char *name)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (strcmp(key_defs[i].name, name) == 0 && st->key_pos[i].line != 0) {
			st->lineno = st->key_pos[i].line;
			return st->key_pos[i].col;
		}
	st->lineno = 0;
	return 1;
}

static void validate_databases(LoadState *st)
{
	Config *cfg = st->cfg;
	const char *errmsg;

	for (int i = 0; i < cfg->n_databases; i++) {
		const DbEntry *db = &cfg->databases[i];

		st->lineno = st->db_pos[i].line;
		if (db->user == NULL)
			load_error(st, st->db_pos[i].col, "database \"%s\": user is required", db->name);
		else if (!resolve_db(&cfg->databases[i], &errmsg))
			load_error(st, st->db_pos[i].col, "database \"%s\": %s", db->name, errmsg);
		else if (db->sslmode >= SSLMODE_VERIFY_CA && db->sslrootcert == NULL)
			load_error(st, st->db_pos[i].col,
				   "database \"%s\": sslmode verify-ca and verify-full need sslrootcert", db->name);
		else if (cfg->admin_db != NULL && strcmp(db->name, cfg->admin_db) == 0)
			load_error(st, st->db_pos[i].col,
				   "database \"%s\" is the admin console's name (admin_db): choose another", db->name);
	}
}

/*
 * Reads mask_key_file when a rule masks with hash(): a key that cannot be
 * read is an error of the configuration, not values that turn NULL later.
 */
static void load_mask_key(LoadState *st)
{
	Config *cfg = st->cfg;
	const RuleSet *rs = cfg->ruleset;
	const Rule *hash_rule = NULL;
	char err[512];

	for (int i = 0; rs != NULL && i < rs->n_rules && hash_rule == NULL; i++)
		if (rs->rules[i].kind == RULE_MASK && rs->rules[i].mask_fn == MASK_HASH)
			hash_rule = &rs->rules[i];
	if (hash_rule == NULL)
		return;
	if (cfg->mask_key_file == NULL) {
		st->lineno = 0;
		load_error(st, 0, "mask_key_file is not set, but rule %s masks with hash(), which needs its key",
			   hash_rule->where);
		return;
	}
	cfg->mask_key = malloc(sizeof(*cfg->mask_key));
	if (cfg->mask_key == NULL) {
		load_error(st, at_key(st, "mask_key_file"), "out of memory");
		return;
	}
	if (!mask_key_load(cfg->mask_key_file, cfg->mask_key, err, sizeof(err))) {
		load_error(st, at_key(st, "mask_key_file"), "%s", err);
		free(cfg->mask_key);
		cfg->mask_key = NULL;
	}
}

/* Checks that need the whole file: pairs of keys, files that must exist. */
static void validate_whole(LoadState *st)
{
	Config *cfg = st->cfg;

	if ((cfg->tls_cert_file == NULL) != (cfg->tls_key_file == NULL))
		load_error(st, at_key(st, cfg->tls_cert_file ? "tls_cert_file" : "tls_key_file"),
			   "tls_cert_file and tls_key_file must be set together");
	if (cfg->dev_trust_auth && !config_listeners_loopback(cfg))
		load_error(st, at_key(st, "dev_trust_auth"),
			   "dev_trust_auth = yes is for development only and needs loopback listen_addr");
	if (cfg->listen_addr.n == 0)
		load_error(st, at_key(st, "listen_addr"), "listen_addr is empty");
	if (cfg->listen_addr.n > CONFIG_MAX_LISTEN)
		load_error(st, at_key(st, "listen_addr"), "listen_addr has more than %d addresses", CONFIG_MAX_LISTEN);
	for (int i = 0; i < cfg->oidc_algorithms.n; i++)
		if (strcasecmp(cfg->oidc_algorithms.items[i], "none") == 0)
			load_error(st, at_key(st, "algorithms"), "[oidc] algorithms: \"none\" is never accepted");
	validate_databases(st);
	if (cfg->workers == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		cfg->workers = (n > 0 && n < 256) ? (int)n : 1;
	}
}

/*
 * Loads the rules `rules` names, as given (a relative path is relative to
 * the working directory, like every other path of the file). Their errors
 * ("rulesfile:line:col: message") join the file's.
 */
static void load_rules(LoadState *st)
{
	Config *cfg = st->cfg;
	char *errs = NULL, *p;
	int n = 0;
	size_t len;

	if (cfg->rules == NULL)
		return;
	cfg->ruleset = rules_load(cfg->rules, &errs, &n);
	if (cfg->ruleset != NULL)
		return;
	if (errs == NULL || n == 0) {
		st->lineno = 0;
		load_error(st, 0, "rules %s: out of memory", cfg->rules);
		st->nerrors += (n > 1) ? n - 1 : 0;
		free(errs);
		return;
	}
	st->nerrors += n;
	len = strlen(errs);
	p = realloc(st->errs, st->errs_len + len + 1);
	if (p != NULL) {
		st->errs = p;
		memcpy(st->errs + st->errs_len, errs, len + 1);
		st->errs_len += len;
	}
	free(errs);
}

Config *config_load(const char *path, char **errout, int *nerrors)
{
	LoadState st = { 0 };
	int rc;

	*errout = NULL;
	*nerrors = 0;
	st.path = path;
	st.cont_db = -1;
	st.cfg = config_new_defaults(path);
	if (st.cfg == NULL)
		return NULL;
	st.fp = fopen(path, "r");
	if (st.fp == NULL) {
		load_error(&st, 0, "cannot open: %s", strerror(errno));
		goto fail;
	}
	rc = ini_parse_stream(reader_cb, &st, ini_handler_cb, &st);
	fclose(st.fp);
	if (rc > 0) {
		/* inih reports the first line it could not parse at all. */
		int saved = st.lineno;

		st.lineno = rc;
		load_error(&st, 1, "syntax error: expected [section] or key = value");
		st.lineno = saved;
	}
	validate_whole(&st);
	load_rules(&st);
	load_mask_key(&st);
	if (st.nerrors > 0)
		goto fail;
	free(st.db_pos);
	return st.cfg;
fail:
	free(st.db_pos);
	*errout = st.errs;
	*nerrors = st.nerrors;
	config_free(st.cfg);
	return NULL;
}

Config *config_ref(Config *cfg)
{
	__atomic_add_fetch(&cfg->refcount, 1, __ATOMIC_RELAXED);
	return cfg;
}

void config_unref(Config *cfg)
{
	if (cfg != NULL && __atomic_sub_fetch(&cfg->refcount, 1, __ATOMIC_ACQ_REL) == 0)
		config_free(cfg);
}

const DbEntry *config_find_db(const Config *cfg, const char *name)
{
	for (int i = 0; i < cfg->n_databases; i++)
		if (strcmp(cfg->databases[i].name, name) == 0)
			return &cfg->databases[i];
	return NULL;
}

/* ---- process-wide snapshot ---------------------------------------------- */

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static Config *current_cfg;
static uint64_t current_generation;

uint64_t config_generation(void)
{
	return __atomic_load_n(&current_generation, __ATOMIC_ACQUIRE);
}

Config *config_current(void)
{
	Config *cfg;

	pthread_mutex_lock(&current_lock);
	cfg = current_cfg ? config_ref(current_cfg) : NULL;
	pthread_mutex_unlock(&current_lock);
	return cfg;
}

void config_set_current(Config *cfg)
{
	Config *old;

	pthread_mutex_lock(&current_lock);
	old = current_cfg;
	current_cfg = cfg;
	__atomic_add_fetch(&current_generation, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&current_lock);
	config_unref(old);
}

/* ---- connection strings --------------------------------------------------- */

void config_free_db(DbEntry *db)
{
	free(db->name);
	free(db->host);
	free(db->dbname);
	free(db->user);
	if (db->password != NULL)
		explicit_bzero(db->password, strlen(db->password));
	free(db->password);
	free(db->sslrootcert);
	tls_ctx_free(db->tls_ctx);
	memset(db, 0, sizeof(*db));
}

/* Reads one value (bare word or single-quoted) at *pp into a new string. */
static char *conninfo_value(const char **pp, const char **why)
{
	const char *p = *pp;
	size_t cap = strlen(p) + 1, n = 0;
	char *out = malloc(cap);

	if (out == NULL) {
		*why = "out of memory";
		return NULL;
	}
	if (*p == '\'') {
		for (p++; *p != '\''; p++) {
			if (*p == '\0') {
				*why = "unterminated quoted string";
				free(out);
				return NULL;
			}
			if (*p == '\\' && p[1] != '\0')
				p++;
			out[n++] = *p;
		}
		p++;
	} else {
		for (; *p && !isspace((unsigned char)*p); p++) {
			if (*p == '\\' && p[1] != '\0')
				p++;
			out[n++] = *p;
		}
	}
	out[n] = '\0';
	*pp = p;
	return out;
}

static bool conninfo_set(DbEntry *out, const char *key, char *val, const char **why)
{
	static const char *const modes[] = { "disable", "prefer", "require", "verify-ca", "verify-full" };
	char **strfield = NULL;

	if (strcmp(key, "host") == 0 || strcmp(key, "hostaddr") == 0)
		strfield = &out->host;
	else if (strcmp(key, "dbname") == 0)
		strfield = &out->dbname;
	else if (strcmp(key, "user") == 0)
		strfield = &out->user;
	else if (strcmp(key, "password") == 0)
		strfield = &out->password;
	else if (strcmp(key, "sslrootcert") == 0)
		strfield = &out->sslrootcert;
	if (strfield != NULL) {
		free(*strfield);
		*strfield = val;
		return true;
	}
	if (strcmp(key, "port") == 0 || strcmp(key, "connect_timeout") == 0) {
		char *end;
		long v = strtol(val, &end, 10);
		bool is_port = (key[0] == 'p');

		if (*val == '\0' || *end != '\0' || v < (is_port ? 1 : 0) || v > (is_port ? 65535 : 86400)) {
			*why = is_port ? "port must be from 1 to 65535" : "connect_timeout must be seconds from 0 to 86400";
			free(val);
			return false;
		}
		*(is_port ? &out->port : &out->connect_timeout) = (int)v;
		free(val);
		return true;
	}
	if (strcmp(key, "sslmode") == 0) {
		for (size_t i = 0; i < PGV_ARRAY_LEN(modes); i++)
			if (strcmp(val, modes[i]) == 0) {
				out->sslmode = (SslMode)i;
				free(val);
				return true;
			}
		*why = "sslmode must be disable, prefer, require, verify-ca or verify-full";
		free(val);
		return false;
	}
	*why = "unknown connection option";
	free(val);
	return false;
}

bool config_parse_conninfo(const char *s, DbEntry *out, const char **why, size_t *err_off)
{
	const char *p = s;

	if (out->port == 0 && out->host == NULL && out->user == NULL) {
		out->port = 5432;
		out->sslmode = SSLMODE_PREFER;
	}
	for (;;) {
		const char *kstart;
		char key[32], *val;
		size_t klen;

		while (isspace((unsigned char)*p))
			p++;
		if (*p == '\0')
			break;
		kstart = p;
		while (*p && *p != '=' && !isspace((unsigned char)*p))
			p++;
		klen = (size_t)(p - kstart);
		while (isspace((unsigned char)*p))
			p++;
		*err_off = (size_t)(kstart - s);
		if (*p != '=' || klen == 0 || klen >= sizeof(key)) {
			*why = "expected key=value";
			return false;
		}
		memcpy(key, kstart, klen);
		key[klen] = '\0';
		for (p++; isspace((unsigned char)*p);)
			p++;
		val = conninfo_value(&p, why);
		if (val == NULL || !conninfo_set(out, key, val, why))
			return false;
	}
	if (out->host == NULL)
		out->host = strdup("/var/run/postgresql");
	return true;
}
