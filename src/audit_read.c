/* SPDX-License-Identifier: MIT */
/*
 * Auditors' read-only SQL over the audit database. The first half runs one
 * statement in the calling thread (audit_read_run): a fresh read-only
 * connection per statement, locked down before the statement is prepared,
 * the statement checked by SQLite's own authorizer while it is compiled and
 * by sqlite3_stmt_readonly() after, then stepped under a time limit with
 * the rows kept as text within row and byte limits. The second half is the
 * pool of reader threads and the requests they serve, which is what the
 * event loops use: they never call SQLite themselves.
 *
 * Requests and threads share one mutex. A request is queued, running, done
 * or canceled; the reader activates the requester's event under the lock
 * and only for a request not canceled, so audit_read_cancel() can promise
 * that a forgotten event is never activated. A running statement polls its
 * request's interrupt flag from the progress handler.
 */
#include "pgveil/audit_read.h"

#include <event2/event.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pgveil/log.h"

#define PROGRESS_OPS 1000             /* virtual machine steps between two looks at the clock */
#define FIELD_OVERHEAD 4              /* a DataRow field's length word */
#define ROW_OVERHEAD 7                /* a DataRow's type, length and field count */

/* Storage classes seen in a column (bits). */
enum { SEEN_INT = 1, SEEN_FLOAT = 2, SEEN_TEXT = 4, SEEN_BLOB = 8 };

/* ---- results ------------------------------------------------------------------------------ */

/* Kept when nothing else can be allocated; never freed. */
static AuditReadResult oom_result = { .sqlstate = SQLSTATE_OUT_OF_MEMORY,
				      .message = "out of memory",
				      .err_offset = -1 };

const char *audit_read_value(const AuditReadResult *res, int64_t row, int col)
{
	int64_t off;

	if (res == NULL || row < 0 || row >= res->n_rows || col < 0 || col >= res->n_cols)
		return NULL;
	off = res->cells[row * res->n_cols + col];
	return off < 0 ? NULL : res->data + off;
}

/* Drops the result set, keeping the error fields. */
static void result_clear_rows(AuditReadResult *res)
{
	for (int i = 0; res->col_names != NULL && i < res->n_cols; i++)
		free(res->col_names[i]);
	free(res->col_names);
	free(res->col_types);
	free(res->cells);
	free(res->data);
	res->col_names = NULL;
	res->col_types = NULL;
	res->cells = NULL;
	res->data = NULL;
	res->n_cols = 0;
	res->n_rows = 0;
	res->data_len = 0;
}

void audit_read_result_free(AuditReadResult *res)
{
	if (res == NULL || res == &oom_result)
		return;
	result_clear_rows(res);
	free(res->message);
	free(res->hint);
	free(res);
}

static void result_fail(AuditReadResult *res, const char *sqlstate, const char *hint, const char *fmt, ...)
	PGV_PRINTF(4, 5);

/* Turns res into an error (the first one wins); the rows are dropped. */
static void result_fail(AuditReadResult *res, const char *sqlstate, const char *hint, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (res->sqlstate[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(res->sqlstate, sizeof(res->sqlstate), "%s", sqlstate);
	res->message = strdup(msg);
	res->hint = hint != NULL ? strdup(hint) : NULL;
	result_clear_rows(res);
}

/* ---- the connection ------------------------------------------------------------------------ */

/* What the authorizer saw while a statement was compiled. */
typedef struct AuthState {
	bool saw_select;      /* a SELECT was compiled (SELECT, VALUES, WITH ... SELECT) */
	char denied[256];     /* the first refusal, "" = none */
	const char *hint;
} AuthState;

/* What the progress handler watches while a statement runs. */
typedef struct RunState {
	uint64_t deadline_us;
	const int *interrupt; /* non-zero: stop (NULL allowed) */
	int why;              /* 0 running, 1 time limit, 2 interrupted */
} RunState;

/* Built-in functions that only compute: everything else (load_extension, fts3_tokenizer, ...) is refused. */
static const char *const safe_functions[] = {
	"->", "->>", "abs", "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "avg", "ceil", "ceiling",
	"changes", "char", "coalesce", "concat", "concat_ws", "cos", "cosh", "count", "cume_dist", "current_date",
	"current_time", "current_timestamp", "date", "datetime", "degrees", "dense_rank", "exp", "first_value",
	"floor", "format", "glob", "group_concat", "hex", "ifnull", "iif", "instr", "json", "json_array",
	"json_array_length", "json_extract", "json_group_array", "json_group_object", "json_insert", "json_object",
	"json_patch", "json_quote", "json_remove", "json_replace", "json_set", "json_type", "json_valid",
	"julianday", "lag", "last_insert_rowid", "last_value", "lead", "length", "like", "likelihood", "likely",
	"ln", "log", "log10", "log2", "lower", "ltrim", "max", "min", "mod", "nth_value", "ntile", "nullif",
	"octet_length", "percent_rank", "pi", "pow", "power", "printf", "quote", "radians", "random",
	"randomblob", "rank", "replace", "round", "row_number", "rtrim", "sign", "sin", "sinh", "soundex",
	"sqlite_source_id", "sqlite_version", "sqrt", "strftime", "string_agg", "substr", "substring", "sum",
	"tan", "tanh", "time", "timediff", "total", "total_changes", "trim", "trunc", "typeof", "unhex",
	"unicode", "unistr", "unixepoch", "unlikely", "upper", "zeroblob",
};

static bool function_allowed(const char *name)
{
	for (size_t i = 0; name != NULL && i < PGV_ARRAY_LEN(safe_functions); i++)
		if (strcasecmp(name, safe_functions[i]) == 0)
			return true;
	return false;
}

/* What a refused action is called in the message. */
static const char *action_name(int action)
{
	switch (action) {
	case SQLITE_INSERT: return "INSERT";
	case SQLITE_UPDATE: return "UPDATE";
	case SQLITE_DELETE: return "DELETE";
	case SQLITE_ATTACH: return "ATTACH";
	case SQLITE_DETACH: return "DETACH";
	case SQLITE_ANALYZE: return "ANALYZE";
	case SQLITE_REINDEX: return "REINDEX";
	case SQLITE_TRANSACTION: return "a transaction statement";
	case SQLITE_SAVEPOINT: return "SAVEPOINT";
	case SQLITE_CREATE_INDEX: case SQLITE_CREATE_TABLE: case SQLITE_CREATE_TRIGGER: case SQLITE_CREATE_VIEW:
	case SQLITE_CREATE_TEMP_INDEX: case SQLITE_CREATE_TEMP_TABLE: case SQLITE_CREATE_TEMP_TRIGGER:
	case SQLITE_CREATE_TEMP_VIEW: case SQLITE_CREATE_VTABLE:
	case SQLITE_DROP_INDEX: case SQLITE_DROP_TABLE: case SQLITE_DROP_TRIGGER: case SQLITE_DROP_VIEW:
	case SQLITE_DROP_TEMP_INDEX: case SQLITE_DROP_TEMP_TABLE: case SQLITE_DROP_TEMP_TRIGGER:
	case SQLITE_DROP_TEMP_VIEW: case SQLITE_DROP_VTABLE: case SQLITE_ALTER_TABLE: return "changing the schema";
	default: return "this statement";
	}
}

/* The schema table (sqlite_master and its other names): CREATE, DROP and ALTER change it first. */
static bool is_schema_table(const char *name)
{
	static const char *const names[] = { "sqlite_master", "sqlite_schema", "sqlite_temp_master",
					     "sqlite_temp_schema" };

	for (size_t i = 0; name != NULL && i < PGV_ARRAY_LEN(names); i++)
		if (strcasecmp(name, names[i]) == 0)
			return true;
	return false;
}

/*
 * The authorizer: reads only. SELECT, reading any column, recursive CTEs and
 * the functions above; everything else (writes, schema changes, ATTACH,
 * every PRAGMA, transactions, other functions) is refused, and the first
 * refusal is remembered for the message.
 */
static int authorize_cb(void *arg, int action, const char *a, const char *b, const char *db, const char *trigger)
{
	AuthState *as = arg;

	(void)db;
	(void)trigger;
	switch (action) {
	case SQLITE_SELECT:
		as->saw_select = true;
		return SQLITE_OK;
	case SQLITE_READ:
	case SQLITE_RECURSIVE:
		return SQLITE_OK;
	case SQLITE_FUNCTION:
		if (function_allowed(b))
			return SQLITE_OK;
		if (as->denied[0] == '\0')
			snprintf(as->denied, sizeof(as->denied), "function %s() is not allowed on the audit log",
				 b != NULL ? b : "?");
		return SQLITE_DENY;
	case SQLITE_PRAGMA:
		if (as->denied[0] == '\0')
			snprintf(as->denied, sizeof(as->denied), "PRAGMA %s is not allowed on the audit log",
				 a != NULL ? a : "?");
		return SQLITE_DENY;
	default:
		break;
	}
	if (as->denied[0] == '\0')
		snprintf(as->denied, sizeof(as->denied), "the audit log is read-only: %s is not allowed",
			 is_schema_table(a) && action != SQLITE_ATTACH && action != SQLITE_DETACH ?
				 "changing the schema" : action_name(action));
	/* Table-valued functions declare their table through an UPDATE of the schema table. */
	if (action == SQLITE_UPDATE && is_schema_table(a) && as->hint == NULL)
		as->hint = "table-valued functions (json_each, pragma_table_info, ...) are not available";
	return SQLITE_DENY;
}

static int progress_cb(void *arg)
{
	RunState *rs = arg;

	if (rs->interrupt != NULL && __atomic_load_n(rs->interrupt, __ATOMIC_RELAXED) != 0)
		rs->why = 2;
	else if (pgv_now_us() >= rs->deadline_us)
		rs->why = 1;
	return rs->why != 0;
}

/*
 * Opens path read-only and locks the connection down before any statement
 * of the auditor's is compiled. NULL (with the error in res) on failure.
 */
static sqlite3 *db_open(const char *path, const AuditReadLimits *lim, AuthState *as, RunState *rs,
			AuditReadResult *res)
{
	sqlite3 *db = NULL;
	char *err = NULL;
	int max_len = lim->max_bytes < 1000000000u ? (int)lim->max_bytes : 1000000000;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_extended_result_codes(db, 1);
	if (sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, (int *)NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, (int *)NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, 0, (int *)NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_DQS_DML, 0, (int *)NULL) != SQLITE_OK)
		goto fail;
	sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 0);
	sqlite3_limit(db, SQLITE_LIMIT_LENGTH, max_len);
	sqlite3_busy_timeout(db, (int)lim->timeout_ms);
	if (sqlite3_exec(db, "PRAGMA query_only = ON", NULL, NULL, &err) != SQLITE_OK)
		goto fail;
	sqlite3_set_authorizer(db, authorize_cb, as);
	sqlite3_progress_handler(db, PROGRESS_OPS, progress_cb, rs);
	return db;
fail:
	result_fail(res, "58030", "audit_db names the database pgveil writes; it must exist and be readable",
		    "the audit log cannot be read: %s",
		    err != NULL ? err : db != NULL ? sqlite3_errmsg(db) : "out of memory");
	sqlite3_free(err);
	sqlite3_close(db);
	return NULL;
}

/* ---- errors ------------------------------------------------------------------------------- */

/* The SQLSTATE of an error SQLite reported while compiling. */
static const char *compile_sqlstate(int rc, const char *msg)
{
	static const struct {
		const char *prefix, *sqlstate;
	} by_msg[] = { { "no such table", "42P01" },	   { "no such column", "42703" },
		       { "no such function", "42883" },    { "wrong number of arguments", "42883" },
		       { "ambiguous column", "42702" },    { "misuse of aggregate", "42803" } };

	switch (rc & 0xff) {
	case SQLITE_AUTH: return SQLSTATE_INSUFFICIENT_PRIVILEGE;
	case SQLITE_NOMEM: return SQLSTATE_OUT_OF_MEMORY;
	case SQLITE_TOOBIG: return "54000";
	case SQLITE_BUSY: case SQLITE_LOCKED: return "55P03";
	case SQLITE_CORRUPT: case SQLITE_NOTADB: return "XX001";
	case SQLITE_CANTOPEN: case SQLITE_IOERR: case SQLITE_PERM: return "58030";
	case SQLITE_ERROR: break;
	default: return SQLSTATE_INTERNAL_ERROR;
	}
	if (strstr(msg, "may not be modified") != NULL)
		return SQLSTATE_INSUFFICIENT_PRIVILEGE;
	for (size_t i = 0; i < PGV_ARRAY_LEN(by_msg); i++)
		if (strncmp(msg, by_msg[i].prefix, strlen(by_msg[i].prefix)) == 0)
			return by_msg[i].sqlstate;
	return "42601";
}

/* A compile error: the authorizer's reason for a refusal, else SQLite's message. */
static void fail_compile(AuditReadResult *res, sqlite3 *db, int rc, const AuthState *as)
{
	const char *msg = sqlite3_errmsg(db);

	if (as->denied[0] != '\0') { /* whatever SQLite made of the refusal */
		result_fail(res, SQLSTATE_INSUFFICIENT_PRIVILEGE, as->hint, "%s", as->denied);
		return;
	}
	result_fail(res, compile_sqlstate(rc, msg), NULL, "%s", msg);
	res->err_offset = sqlite3_error_offset(db);
}

/* An error while the statement ran. */
static void fail_step(AuditReadResult *res, sqlite3 *db, int rc, const RunState *rs, uint32_t timeout_ms)
{
	const char *msg = sqlite3_errmsg(db);

	if ((rc & 0xff) == SQLITE_INTERRUPT && rs->why == 1) {
		result_fail(res, SQLSTATE_QUERY_CANCELED, "add a WHERE clause or a LIMIT, or use the indexes",
			    "canceling statement due to statement timeout (%u ms)", timeout_ms);
	} else if ((rc & 0xff) == SQLITE_INTERRUPT) {
		result_fail(res, SQLSTATE_QUERY_CANCELED, NULL, "canceling statement due to user request");
	} else if ((rc & 0xff) == SQLITE_ERROR) {
		result_fail(res, strstr(msg, "overflow") != NULL ? "22003" : "22000", NULL, "%s", msg);
	} else {
		result_fail(res, compile_sqlstate(rc, msg), NULL, "%s", msg);
	}
}

/* ---- compiling ------------------------------------------------------------------------------ */

/* True when nothing but blanks, comments and ';' follows: compiling the rest yields no statement. */
static bool tail_is_empty(sqlite3 *db, const char *tail)
{
	while (*tail != '\0') {
		sqlite3_stmt *more = NULL;
		const char *next = tail;
		int rc = sqlite3_prepare_v2(db, tail, -1, &more, &next);

		if (more != NULL || rc != SQLITE_OK) {
			sqlite3_finalize(more);
			return false;
		}
		if (next == tail)
			break;
		tail = next;
	}
	return true;
}

/*
 * Compiles the one statement of sql and checks it can only read. NULL (with
 * the error in res) when it cannot be compiled, is refused, or is not alone.
 */
static sqlite3_stmt *compile(sqlite3 *db, const char *sql, AuthState *as, AuditReadResult *res)
{
	static const char *const only = "only SELECT, WITH, EXPLAIN and VALUES run on the audit log";
	sqlite3_stmt *st = NULL;
	const char *tail = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, &tail);

	if (rc != SQLITE_OK) {
		fail_compile(res, db, rc, as);
		return NULL;
	}
	if (st == NULL) {
		result_fail(res, "42601", NULL, "empty statement");
		return NULL;
	}
	if (!sqlite3_stmt_readonly(st) || (!as->saw_select && sqlite3_stmt_isexplain(st) == 0) ||
	    sqlite3_column_count(st) == 0)
		result_fail(res, SQLSTATE_INSUFFICIENT_PRIVILEGE, only, "the audit log is read-only");
	else if (sqlite3_bind_parameter_count(st) > 0)
		result_fail(res, "42P02", "write the values into the statement",
			    "the console takes no parameters");
	else if (!tail_is_empty(db, tail))
		result_fail(res, "42601", "send them as separate commands",
			    "cannot run several statements in one command on the audit log");
	if (res->sqlstate[0] != '\0') {
		sqlite3_finalize(st);
		return NULL;
	}
	return st;
}

/* ---- the rows ----------------------------------------------------------------------------- */

/* A result under construction. */
typedef struct Builder {
	AuditReadResult *res;
	const AuditReadLimits *lim;
	size_t data_cap;
	int64_t rows_cap;     /* rows the cells array has room for */
	size_t bytes;         /* counted against lim->max_bytes */
	int n_cols;           /* of seen and decltypes (res's are dropped when it fails) */
	int *seen;            /* per column: SEEN_* bits */
	char **decltypes;     /* per column: declared type or NULL */
} Builder;

/* Room for n more bytes of values; false without memory. */
static bool data_reserve(Builder *b, size_t n)
{
	AuditReadResult *res = b->res;
	size_t cap = b->data_cap != 0 ? b->data_cap : 4096;
	char *grown;

	if (res->data_len + n <= b->data_cap)
		return true;
	while (cap < res->data_len + n)
		cap *= 2;
	grown = realloc(res->data, cap);
	if (grown == NULL)
		return false;
	res->data = grown;
	b->data_cap = cap;
	return true;
}

/* Appends s (n bytes) and a NUL; false without memory. */
static bool data_add(Builder *b, const char *s, size_t n)
{
	if (!data_reserve(b, n + 1))
		return false;
	memcpy(b->res->data + b->res->data_len, s, n);
	b->res->data[b->res->data_len + n] = '\0';
	b->res->data_len += n + 1;
	return true;
}

/* Text as valid UTF-8 without NUL: every bad byte becomes U+FFFD. */
static bool add_text(Builder *b, const unsigned char *p, size_t n)
{
	size_t start = b->res->data_len;

	if (!data_reserve(b, n * 3 + 1))
		return false;
	for (size_t i = 0; i < n;) {
		size_t len = p[i] != 0 ? pgv_utf8_seq(p + i, n - i) : 0; /* NUL cannot stand in text */

		if (len == 0) {
			memcpy(b->res->data + b->res->data_len, "\xEF\xBF\xBD", 3);
			b->res->data_len += 3;
			i++;
			continue;
		}
		memcpy(b->res->data + b->res->data_len, p + i, len);
		b->res->data_len += len;
		i += len;
	}
	b->res->data[b->res->data_len++] = '\0';
	b->bytes += b->res->data_len - start - 1;
	return true;
}

/* bytea's hex output: \x0a1b... */
static bool add_blob(Builder *b, const unsigned char *p, size_t n)
{
	char *d;

	if (!data_reserve(b, 2 * n + 3))
		return false;
	d = b->res->data + b->res->data_len;
	*d++ = '\\';
	*d++ = 'x';
	pgv_hex(d, p, n);
	d[2 * n] = '\0';
	b->res->data_len += 2 * n + 3;
	b->bytes += 2 * n + 2;
	return true;
}

/* float8's output: the shortest text that reads back as the same number. */
static void format_double(double v, char *buf, size_t len)
{
	if (isnan(v)) {
		snprintf(buf, len, "NaN");
		return;
	}
	if (isinf(v)) {
		snprintf(buf, len, v > 0 ? "Infinity" : "-Infinity");
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, len, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			return;
	}
}

/* Appends the value of column i of the current row; false without memory. */
static bool add_value(Builder *b, sqlite3_stmt *st, int i, int64_t *cell)
{
	char num[64];
	size_t before = b->res->data_len;
	bool ok = true;

	*cell = (int64_t)before;
	switch (sqlite3_column_type(st, i)) {
	case SQLITE_NULL:
		*cell = -1;
		return true;
	case SQLITE_INTEGER:
		b->seen[i] |= SEEN_INT;
		snprintf(num, sizeof(num), "%lld", (long long)sqlite3_column_int64(st, i));
		ok = data_add(b, num, strlen(num));
		b->bytes += strlen(num);
		break;
	case SQLITE_FLOAT:
		b->seen[i] |= SEEN_FLOAT;
		format_double(sqlite3_column_double(st, i), num, sizeof(num));
		ok = data_add(b, num, strlen(num));
		b->bytes += strlen(num);
		break;
	case SQLITE_BLOB:
		b->seen[i] |= SEEN_BLOB;
		ok = add_blob(b, sqlite3_column_blob(st, i), (size_t)sqlite3_column_bytes(st, i));
		break;
	default:
		b->seen[i] |= SEEN_TEXT;
		ok = add_text(b, sqlite3_column_text(st, i), (size_t)sqlite3_column_bytes(st, i));
		break;
	}
	return ok;
}

/* Room for one more row of cells; false without memory. */
static bool cells_reserve(Builder *b)
{
	AuditReadResult *res = b->res;
	int64_t cap = b->rows_cap != 0 ? b->rows_cap * 2 : 64;
	int64_t *grown;

	if (res->n_rows < b->rows_cap)
		return true;
	grown = realloc(res->cells, (size_t)cap * (size_t)res->n_cols * sizeof(int64_t));
	if (grown == NULL)
		return false;
	res->cells = grown;
	b->rows_cap = cap;
	return true;
}

/* Keeps the current row; false (res failed) at a limit or without memory. */
static bool add_row(Builder *b, sqlite3_stmt *st)
{
	AuditReadResult *res = b->res;

	if (res->n_rows >= b->lim->max_rows) {
		result_fail(res, "54000", "add a LIMIT, or narrow the WHERE clause",
			    "the result has more than %lld rows", (long long)b->lim->max_rows);
		return false;
	}
	if (!cells_reserve(b))
		goto oom;
	for (int i = 0; i < res->n_cols; i++) {
		/* checked before each value takes memory: one row of many large values must not get far past it */
		if (b->bytes + (size_t)sqlite3_column_bytes(st, i) > b->lim->max_bytes)
			goto too_big;
		if (!add_value(b, st, i, &res->cells[res->n_rows * res->n_cols + i]))
			goto oom;
	}
	b->bytes += ROW_OVERHEAD + (size_t)res->n_cols * FIELD_OVERHEAD;
	res->n_rows++;
	if (b->bytes > b->lim->max_bytes)
		goto too_big;
	return true;
too_big:
	result_fail(res, "54000", "select fewer columns or rows, or shorten them with substr()",
		    "the result is larger than %zu bytes", b->lim->max_bytes);
	return false;
oom:
	result_fail(res, SQLSTATE_OUT_OF_MEMORY, NULL, "out of memory");
	return false;
}

/* A type from a declared type, by SQLite's affinity rules. */
static uint32_t decl_oid(const char *decl)
{
	char up[64];
	size_t n = 0;

	if (decl == NULL)
		return AUDIT_READ_OID_TEXT;
	for (; decl[n] != '\0' && n < sizeof(up) - 1; n++)
		up[n] = (char)(decl[n] >= 'a' && decl[n] <= 'z' ? decl[n] - 32 : decl[n]);
	up[n] = '\0';
	if (strstr(up, "INT") != NULL)
		return AUDIT_READ_OID_INT8;
	if (strstr(up, "CHAR") != NULL || strstr(up, "CLOB") != NULL || strstr(up, "TEXT") != NULL)
		return AUDIT_READ_OID_TEXT;
	if (strstr(up, "BLOB") != NULL)
		return AUDIT_READ_OID_BYTEA;
	if (strstr(up, "REAL") != NULL || strstr(up, "FLOA") != NULL || strstr(up, "DOUB") != NULL)
		return AUDIT_READ_OID_FLOAT8;
	return AUDIT_READ_OID_TEXT;
}

/* A column's type from the values it holds, or its declared type when all are NULL. */
static uint32_t column_oid(int seen, const char *decl)
{
	switch (seen) {
	case 0: return decl_oid(decl);
	case SEEN_INT: return AUDIT_READ_OID_INT8;
	case SEEN_FLOAT: case SEEN_INT | SEEN_FLOAT: return AUDIT_READ_OID_FLOAT8;
	case SEEN_BLOB: return AUDIT_READ_OID_BYTEA;
	default: return AUDIT_READ_OID_TEXT;
	}
}

/* Column names and declared types, before the first step; false without memory. */
static bool builder_init(Builder *b, sqlite3_stmt *st)
{
	AuditReadResult *res = b->res;
	int n = sqlite3_column_count(st);

	res->col_names = calloc((size_t)n, sizeof(char *));
	res->col_types = calloc((size_t)n, sizeof(uint32_t));
	b->seen = calloc((size_t)n, sizeof(int));
	b->decltypes = calloc((size_t)n, sizeof(char *));
	if (res->col_names == NULL || res->col_types == NULL || b->seen == NULL || b->decltypes == NULL)
		return false;
	res->n_cols = b->n_cols = n;
	for (int i = 0; i < n; i++) {
		const char *name = sqlite3_column_name(st, i), *decl = sqlite3_column_decltype(st, i);

		res->col_names[i] = strdup(name != NULL ? name : "?column?");
		if (res->col_names[i] == NULL || (decl != NULL && (b->decltypes[i] = strdup(decl)) == NULL))
			return false;
	}
	return true;
}

static void builder_finish(Builder *b)
{
	for (int i = 0; b->decltypes != NULL && i < b->n_cols; i++) {
		if (b->res->col_types != NULL)
			b->res->col_types[i] = column_oid(b->seen[i], b->decltypes[i]);
		free(b->decltypes[i]);
	}
	free(b->decltypes);
	free(b->seen);
}

/* Steps st to the end, keeping the rows in res within the limits. */
static void run_rows(sqlite3 *db, sqlite3_stmt *st, const AuditReadLimits *lim, RunState *rs, AuditReadResult *res)
{
	Builder b = { .res = res, .lim = lim };
	int rc;

	if (!builder_init(&b, st)) {
		builder_finish(&b);
		result_fail(res, SQLSTATE_OUT_OF_MEMORY, NULL, "out of memory");
		return;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		if (!add_row(&b, st))
			break;
	builder_finish(&b);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		fail_step(res, db, rc, rs, lim->timeout_ms);
}

AuditReadResult *audit_read_run(const char *db_path, const char *sql, const AuditReadLimits *lim,
				const int *interrupt)
{
	AuditReadLimits l = { AUDIT_READ_MAX_ROWS, AUDIT_READ_MAX_BYTES, AUDIT_READ_TIMEOUT_MS };
	AuditReadResult *res = calloc(1, sizeof(AuditReadResult));
	AuthState as = { 0 };
	RunState rs = { .interrupt = interrupt };
	sqlite3_stmt *st = NULL;
	sqlite3 *db;

	if (res == NULL)
		return NULL;
	res->err_offset = -1;
	if (lim != NULL) {
		l.max_rows = lim->max_rows > 0 ? lim->max_rows : l.max_rows;
		l.max_bytes = lim->max_bytes > 0 ? lim->max_bytes : l.max_bytes;
		l.timeout_ms = lim->timeout_ms > 0 ? lim->timeout_ms : l.timeout_ms;
	}
	rs.deadline_us = pgv_now_us() + (uint64_t)l.timeout_ms * 1000;
	db = db_open(db_path, &l, &as, &rs, res);
	if (db != NULL && (st = compile(db, sql, &as, res)) != NULL)
		run_rows(db, st, &l, &rs, res);
	sqlite3_finalize(st);
	sqlite3_close(db);
	if (res->sqlstate[0] != '\0' && res->message == NULL) {
		audit_read_result_free(res); /* the error could not be kept */
		return NULL;
	}
	return res;
}

/* ---- the reader threads ------------------------------------------------------------------- */

typedef enum { REQ_QUEUED, REQ_RUNNING, REQ_DONE, REQ_CANCELED } ReqState;

struct AuditRead {
	char *path, *sql;
	AuditReadLimits lim;
	struct event *done;       /* activated once, under pool.lock, unless canceled */
	int interrupt;            /* atomic: the statement stops when set */
	ReqState state;           /* under pool.lock */
	AuditReadResult *result;  /* REQ_DONE */
	struct AuditRead *next;   /* queue */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work;      /* a request was queued, or the pool stops */
	AuditRead *head, *tail;   /* queued requests, oldest first: at most one per console session (a
				     console waits for its answer), so max_client_conn bounds them */
	int n_queued;
	int n_threads;            /* started */
	int n_idle;               /* waiting for work */
	bool stopping;
	pthread_t threads[AUDIT_READ_THREADS];
	AuditRead *running[AUDIT_READ_THREADS];
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, 0, false, { 0 }, { NULL } };

static void req_free(AuditRead *r)
{
	if (r == NULL)
		return;
	audit_read_result_free(r->result);
	free(r->path);
	free(r->sql);
	free(r);
}

/* Takes the oldest queued request, or NULL once the pool stops. Called with the lock held. */
static AuditRead *next_request(void)
{
	AuditRead *r;

	while (!pool.stopping && pool.head == NULL) {
		pool.n_idle++;
		pthread_cond_wait(&pool.work, &pool.lock);
		pool.n_idle--;
	}
	if (pool.stopping)
		return NULL;
	r = pool.head;
	pool.head = r->next;
	if (pool.head == NULL)
		pool.tail = NULL;
	pool.n_queued--;
	r->next = NULL;
	r->state = REQ_RUNNING;
	return r;
}

/* Hands a finished statement's result to its requester, or drops it when the requester went away. */
static void deliver(AuditRead *r, AuditReadResult *res)
{
	if (r->state == REQ_CANCELED) {
		audit_read_result_free(res);
		req_free(r);
		return;
	}
	r->result = res != NULL ? res : &oom_result;
	r->state = REQ_DONE;
	event_active(r->done, 0, 0);
}

static void *reader_main(void *arg)
{
	int slot = (int)(intptr_t)arg;
	AuditRead *r;
	char name[16];

	snprintf(name, sizeof(name), "pgveil-read%d", slot);
	pthread_setname_np(pthread_self(), name);

	pthread_mutex_lock(&pool.lock);
	while ((r = next_request()) != NULL) {
		AuditReadResult *res;

		pool.running[slot] = r;
		pthread_mutex_unlock(&pool.lock);
		res = audit_read_run(r->path, r->sql, &r->lim, &r->interrupt);
		pthread_mutex_lock(&pool.lock);
		pool.running[slot] = NULL;
		deliver(r, res);
	}
	pthread_mutex_unlock(&pool.lock);
	return NULL;
}

/* Starts one more reader with every signal blocked (they are the main thread's). Lock held. */
static bool start_reader(void)
{
	sigset_t all, old;
	int rc;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&pool.threads[pool.n_threads], NULL, reader_main, (void *)(intptr_t)pool.n_threads);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		log_write(LL_WARN, "audit", "cannot start an audit reader thread: %s", strerror(rc));
		return false;
	}
	pool.n_threads++;
	return true;
}

/* Removes a queued request from the queue. Lock held. */
static void unqueue(AuditRead *r)
{
	AuditRead **p = &pool.head, *prev = NULL;

	while (*p != NULL && *p != r) {
		prev = *p;
		p = &(*p)->next;
	}
	if (*p == NULL)
		return;
	*p = r->next;
	if (pool.tail == r)
		pool.tail = prev;
	pool.n_queued--;
}

AuditRead *audit_read_submit(const char *db_path, const char *sql, const AuditReadLimits *lim, struct event *done)
{
	AuditRead *r = calloc(1, sizeof(AuditRead));

	if (r == NULL || done == NULL || (r->path = strdup(db_path)) == NULL || (r->sql = strdup(sql)) == NULL)
		goto fail;
	if (lim != NULL)
		r->lim = *lim;
	r->done = done;
	pthread_mutex_lock(&pool.lock);
	if (pool.stopping) {
		pthread_mutex_unlock(&pool.lock);
		goto fail;
	}
	if (pool.tail != NULL)
		pool.tail->next = r;
	else
		pool.head = r;
	pool.tail = r;
	pool.n_queued++;
	if (pool.n_queued > pool.n_idle && pool.n_threads < AUDIT_READ_THREADS && !start_reader() &&
	    pool.n_threads == 0) {
		unqueue(r);
		pthread_mutex_unlock(&pool.lock);
		goto fail;
	}
	pthread_cond_signal(&pool.work);
	pthread_mutex_unlock(&pool.lock);
	return r;
fail:
	req_free(r);
	return NULL;
}

AuditReadResult *audit_read_take(AuditRead *r)
{
	AuditReadResult *res = NULL;

	if (r == NULL)
		return NULL;
	pthread_mutex_lock(&pool.lock);
	if (r->state == REQ_DONE) {
		res = r->result;
		r->result = NULL;
	}
	pthread_mutex_unlock(&pool.lock);
	if (res != NULL)
		req_free(r);
	return res;
}

void audit_read_interrupt(AuditRead *r)
{
	if (r != NULL)
		__atomic_store_n(&r->interrupt, 1, __ATOMIC_RELAXED);
}

void audit_read_cancel(AuditRead *r)
{
	bool mine = true;

	if (r == NULL)
		return;
	__atomic_store_n(&r->interrupt, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&pool.lock);
	if (r->state == REQ_QUEUED)
		unqueue(r);
	else if (r->state == REQ_RUNNING)
		mine = false; /* its reader frees it */
	r->state = REQ_CANCELED;
	pthread_mutex_unlock(&pool.lock);
	if (mine)
		req_free(r);
}

/* Answers every queued request with 57P01: nobody will run them. Lock held. */
static void fail_queued(void)
{
	while (pool.head != NULL) {
		AuditRead *r = pool.head;
		AuditReadResult *res = calloc(1, sizeof(AuditReadResult));

		pool.head = r->next;
		r->next = NULL;
		if (res != NULL) {
			res->err_offset = -1;
			result_fail(res, SQLSTATE_ADMIN_SHUTDOWN, NULL, "pgveil is shutting down");
		}
		r->state = REQ_RUNNING;
		deliver(r, res);
	}
	pool.tail = NULL;
	pool.n_queued = 0;
}

void audit_read_stop(void)
{
	int n;

	pthread_mutex_lock(&pool.lock);
	pool.stopping = true;
	for (int i = 0; i < pool.n_threads; i++)
		if (pool.running[i] != NULL)
			__atomic_store_n(&pool.running[i]->interrupt, 1, __ATOMIC_RELAXED);
	fail_queued();
	pthread_cond_broadcast(&pool.work);
	n = pool.n_threads;
	pthread_mutex_unlock(&pool.lock);
	for (int i = 0; i < n; i++)
		pthread_join(pool.threads[i], NULL);
	pthread_mutex_lock(&pool.lock);
	pool.n_threads = 0;
	pool.stopping = false;
	pthread_mutex_unlock(&pool.lock);
}
