/* SPDX-License-Identifier: MIT */
/*
 * The statement classifier of the sqlinfo module: walks libpg_query's parse
 * tree (as sqlinfo_json.c reads it) to find every command that runs (a
 * "part"), its statement classes (INTERFACE §4), the tables it reads and
 * writes and the functions it calls. It owns the rules of classification,
 * the constant-WHERE evaluator behind DESTRUCTIVE, and the tables of
 * PostgreSQL's built-in functions and operators. It sees no libpg_query
 * header: only the tree.
 *
 * Fail-closed conventions: a statement type this file does not know is
 * DDL|ADMIN; a column-free WHERE it cannot evaluate counts as constant true;
 * a set_config() whose setting name is not a plain literal is PRIVILEGE
 * and may set search_path or a lexical setting to anything.
 */
#include "sqlinfo_int.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- built-in functions and operators ------------------------------------ */

#define BUILTIN_VOLATILE 1u

typedef struct SqlBuiltin {
	const char *name;
	unsigned flags;          /* BUILTIN_* */
} SqlBuiltin;

#include "sqlinfo_builtins.inc"

static int builtin_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const SqlBuiltin *)elem)->name);
}

static const SqlBuiltin *builtin_find(const char *name)
{
	return bsearch(name, sqlinfo_builtin_functions, PGV_ARRAY_LEN(sqlinfo_builtin_functions),
		       sizeof(sqlinfo_builtin_functions[0]), builtin_cmp);
}

/*
 * Built-in functions and aggregates callable with one argument of any row
 * type (record, "any" or a polymorphic type): what attribute notation `t.f`
 * can call on a whole row. Found by asking PostgreSQL 15 to parse
 * `SELECT x.f FROM t x` for every name of pg_catalog's pg_proc (window
 * functions and ordered-set aggregates refuse it). Sorted.
 */
static const char *const whole_row_functions[] = {
	"any_out", "anycompatible_out", "anycompatiblenonarray_out", "anyelement_out", "anynonarray_out",
	"array_agg", "concat", "count", "hash_record", "json_agg", "json_build_array", "json_build_object",
	"jsonb_agg", "jsonb_build_array", "jsonb_build_object", "num_nonnulls", "num_nulls", "pg_collation_for",
	"pg_column_compression", "pg_column_size", "pg_typeof", "quote_literal", "quote_nullable", "record_out",
	"record_send", "row_to_json", "to_json", "to_jsonb",
};

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

bool sqlinfo_takes_whole_row(const char *name)
{
	return bsearch(&name, whole_row_functions, PGV_ARRAY_LEN(whole_row_functions), sizeof(whole_row_functions[0]),
		       str_cmp) != NULL;
}

/*
 * The functions PostgreSQL 15 itself creates in information_schema: its
 * views and drivers' metadata queries (pgjdbc's getPrimaryKeys) call them.
 * Only a superuser can change that schema.
 */
static bool information_schema_builtin(const char *name)
{
	static const char *const names[] = {
		"_pg_char_max_length", "_pg_char_octet_length", "_pg_datetime_precision", "_pg_expandarray",
		"_pg_index_position", "_pg_interval_type", "_pg_numeric_precision", "_pg_numeric_precision_radix",
		"_pg_numeric_scale", "_pg_truetypid", "_pg_truetypmod",
	};

	for (size_t i = 0; i < PGV_ARRAY_LEN(names); i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

bool sqlinfo_is_builtin_function(const char *name)
{
	if (name == NULL)
		return false;
	if (strncmp(name, "information_schema.", 19) == 0)
		return information_schema_builtin(name + 19);
	if (strncmp(name, "pg_catalog.", 11) == 0)
		name += 11;
	if (strchr(name, '.') != NULL)
		return false;
	return builtin_find(name) != NULL;
}

static int operator_cmp(const void *key, const void *elem)
{
	return strcmp(key, *(const char *const *)elem);
}

static bool builtin_operator(const char *name)
{
	return bsearch(name, sqlinfo_builtin_operators, PGV_ARRAY_LEN(sqlinfo_builtin_operators),
		       sizeof(sqlinfo_builtin_operators[0]), operator_cmp) != NULL;
}

/*
 * Built-in functions with effects beyond computing a value. FX_SIDE keeps a
 * SELECT from being READ; FX_ADMIN adds ADMIN (server files, other backends,
 * server state); FX_SESSION adds SESSION; FX_SETCONFIG is set_config();
 * FX_RUNS_SQL runs SQL this analysis does not see (a query given as text, or
 * every table of a schema): PROCEDURAL, like a function that is not built in.
 */
#define FX_SIDE 1u
#define FX_ADMIN 2u
#define FX_SESSION 4u
#define FX_SETCONFIG 8u
#define FX_RUNS_SQL 16u
#define FX_WRITE 32u     /* changes stored data: the part is WRITE too */

typedef struct SqlEffect {
	const char *name;
	bool prefix;             /* name is a prefix */
	unsigned fx;
} SqlEffect;

static const SqlEffect sql_effects[] = {
	{ "nextval", false, FX_SIDE | FX_WRITE },
	{ "setval", false, FX_SIDE | FX_WRITE },
	{ "setseed", false, FX_SIDE },
	{ "set_config", false, FX_SIDE | FX_SETCONFIG },
	{ "pg_advisory_", true, FX_SIDE },
	{ "pg_try_advisory_", true, FX_SIDE },
	{ "pg_notify", false, FX_SIDE | FX_SESSION },
	{ "lo_import", false, FX_SIDE | FX_ADMIN },
	{ "lo_export", false, FX_SIDE | FX_ADMIN },
	{ "lo_unlink", false, FX_SIDE | FX_WRITE },
	{ "lo_put", false, FX_SIDE | FX_WRITE },
	{ "lo_from_bytea", false, FX_SIDE | FX_WRITE },
	{ "lo_create", false, FX_SIDE | FX_WRITE },
	{ "lo_creat", false, FX_SIDE | FX_WRITE },
	{ "lo_truncate", true, FX_SIDE | FX_WRITE },
	{ "lo_", true, FX_SIDE },
	{ "lowrite", false, FX_SIDE | FX_WRITE },
	{ "brin_summarize_", true, FX_SIDE | FX_ADMIN },
	{ "brin_desummarize_range", false, FX_SIDE | FX_ADMIN },
	{ "gin_clean_pending_list", false, FX_SIDE | FX_ADMIN },
	{ "pg_read_file", false, FX_ADMIN },
	{ "pg_read_binary_file", false, FX_ADMIN },
	{ "pg_stat_file", false, FX_ADMIN },
	{ "pg_ls_", true, FX_ADMIN },
	{ "pg_terminate_backend", false, FX_SIDE | FX_ADMIN },
	{ "pg_cancel_backend", false, FX_SIDE | FX_ADMIN },
	{ "pg_reload_conf", false, FX_SIDE | FX_ADMIN },
	{ "pg_rotate_logfile", false, FX_SIDE | FX_ADMIN },
	{ "pg_switch_wal", false, FX_SIDE | FX_ADMIN },
	{ "pg_create_restore_point", false, FX_SIDE | FX_ADMIN },
	{ "pg_promote", false, FX_SIDE | FX_ADMIN },
	{ "pg_backup_", true, FX_SIDE | FX_ADMIN },
	{ "pg_wal_replay_", true, FX_SIDE | FX_ADMIN },
	{ "pg_log_backend_memory_contexts", false, FX_SIDE | FX_ADMIN },
	{ "pg_stat_reset", true, FX_SIDE | FX_ADMIN },
	{ "pg_create_physical_replication_slot", false, FX_SIDE | FX_ADMIN },
	{ "pg_create_logical_replication_slot", false, FX_SIDE | FX_ADMIN },
	{ "pg_drop_replication_slot", false, FX_SIDE | FX_ADMIN },
	{ "pg_copy_", true, FX_SIDE | FX_ADMIN },
	{ "pg_replication_slot_advance", false, FX_SIDE | FX_ADMIN },
	{ "pg_replication_origin_", true, FX_SIDE | FX_ADMIN },
	{ "pg_logical_slot_", true, FX_SIDE | FX_ADMIN },
	{ "pg_logical_emit_message", false, FX_SIDE | FX_ADMIN },
	{ "pg_import_system_collations", false, FX_SIDE | FX_ADMIN },
	{ "query_to_xml", true, FX_RUNS_SQL },
	{ "table_to_xml", true, FX_RUNS_SQL },
	{ "schema_to_xml", true, FX_RUNS_SQL },
	{ "database_to_xml", true, FX_RUNS_SQL },
	{ "ts_stat", false, FX_RUNS_SQL },
	{ "ts_rewrite", false, FX_RUNS_SQL }, /* ts_rewrite(query, 'SELECT ...') */
};

static unsigned builtin_effects(const char *name)
{
	size_t i, n;

	for (i = 0; i < PGV_ARRAY_LEN(sql_effects); i++) {
		n = strlen(sql_effects[i].name);
		if (sql_effects[i].prefix ? strncmp(name, sql_effects[i].name, n) == 0
					  : strcmp(name, sql_effects[i].name) == 0)
			return sql_effects[i].fx;
	}
	return 0;
}

/* ---- the walker's context ------------------------------------------------ */

typedef struct Walk {
	SqlBuild *b;
	int part;                /* the part being filled, -1 = none */
	int stmt;                /* top-level statement index */
	int access;              /* SQL_ACCESS_* for tables found by the generic walk */
	bool explain_only;       /* inside EXPLAIN without ANALYZE: nothing runs */
	const JNode *target;     /* the "relation" of the UPDATE, DELETE or MERGE whose condition is evaluated */
} Walk;

/* ---- building parts ------------------------------------------------------ */

#define GROW(b, arr, n, cap)                                                                       \
	((n) < (cap) || grow((void **)&(arr), &(cap), sizeof(*(arr))) || ((b)->oom = true, false))

static bool grow(void **arr, int *cap, size_t elem)
{
	int ncap = *cap ? *cap * 2 : 16;
	void *p;

	if (*cap > INT_MAX / 4)
		return false;
	p = realloc(*arr, (size_t)ncap * elem);
	if (p == NULL)
		return false;
	*arr = p;
	*cap = ncap;
	return true;
}

static SqlPartB *cur_part(Walk *w)
{
	return w->part >= 0 ? &w->b->parts[w->part] : NULL;
}

static void part_add(Walk *w, uint32_t classes)
{
	if (!w->explain_only && w->part >= 0)
		w->b->parts[w->part].classes |= classes;
}

/* Something in the part has effects: a SELECT or EXPLAIN holding it is not READ. */
static void part_side_effect(Walk *w)
{
	if (!w->explain_only && w->part >= 0)
		w->b->parts[w->part].side_effect = true;
}

/* The part is READ when nothing in it has side effects (SELECT, EXPLAIN). */
static void part_want_read(Walk *w)
{
	if (!w->explain_only && w->part >= 0)
		w->b->parts[w->part].want_read = true;
}

/* Opens a new part and makes it current; returns the previous one (to give to part_end). */
static int part_begin(Walk *w)
{
	SqlBuild *b = w->b;
	int prev = w->part;
	SqlPartB *p;

	if (w->explain_only)
		return prev;
	if (!GROW(b, b->parts, b->n_parts, b->cap_parts))
		return prev;
	p = &b->parts[b->n_parts];
	memset(p, 0, sizeof(*p));
	p->stmt = w->stmt;
	w->part = b->n_parts++;
	return prev;
}

static void part_end(Walk *w, int prev)
{
	SqlPartB *p = cur_part(w);

	if (w->explain_only)
		return;
	if (p != NULL && p->want_read && !p->side_effect)
		p->classes |= SC_READ;
	w->part = prev;
}

static uint32_t hash_str(uint32_t h, const char *s)
{
	for (; s != NULL && *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return (h ^ 0xff) * 16777619u;
}

static bool str_eq(const char *a, const char *b)
{
	return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0;
}

static uint32_t set_hash(const SqlBuild *b, uint32_t ent)
{
	uint32_t i = (ent - 1) >> 1;

	if ((ent - 1) & 1)
		return hash_str(((uint32_t)b->funcs[i].part + 1) * 2654435761u, b->pool + b->funcs[i].name);
	return hash_str(hash_str((uint32_t)b->tables[i].part * 2654435761u, b->tables[i].schema),
			b->tables[i].name);
}

static bool set_grow(SqlBuild *b)
{
	size_t ncap = b->set_cap ? b->set_cap * 2 : 64, i, j;
	uint32_t *old = b->set, *ns = calloc(ncap, sizeof(*ns));

	if (ns == NULL)
		return false;
	for (i = 0; i < b->set_cap; i++) {
		if (old[i] == 0)
			continue;
		for (j = set_hash(b, old[i]) & (ncap - 1); ns[j] != 0; j = (j + 1) & (ncap - 1))
			;
		ns[j] = old[i];
	}
	free(old);
	b->set = ns;
	b->set_cap = ncap;
	return true;
}

/* Finds the slot of an entry equal to `ent` (which is not stored yet), or the empty slot for it. */
static size_t set_slot(const SqlBuild *b, uint32_t ent)
{
	size_t j = set_hash(b, ent) & (b->set_cap - 1);
	uint32_t e, i = (ent - 1) >> 1;

	for (; (e = b->set[j]) != 0; j = (j + 1) & (b->set_cap - 1)) {
		uint32_t k = (e - 1) >> 1;

		if (((e ^ ent) & 1) != 0)
			continue;
		if ((ent - 1) & 1) {
			if (b->funcs[k].part == b->funcs[i].part &&
			    strcmp(b->pool + b->funcs[k].name, b->pool + b->funcs[i].name) == 0)
				return j;
		} else if (b->tables[k].part == b->tables[i].part &&
			   str_eq(b->tables[k].schema, b->tables[i].schema) &&
			   strcmp(b->tables[k].name, b->tables[i].name) == 0) {
			return j;
		}
	}
	return j;
}

/* Adds the candidate entry just written past the end of tables/funcs; returns the existing one or -1. */
static long set_add(SqlBuild *b, uint32_t ent)
{
	size_t j;

	if ((b->set_used + 1) * 2 > b->set_cap && !set_grow(b)) {
		b->oom = true;
		return -2;
	}
	j = set_slot(b, ent);
	if (b->set[j] != 0)
		return (long)((b->set[j] - 1) >> 1);
	b->set[j] = ent;
	b->set_used++;
	return -1;
}

static void table_add(Walk *w, const char *schema, const char *name, int access)
{
	SqlBuild *b = w->b;
	SqlTableB *t;
	long dup;

	if (w->part < 0 || name == NULL || !GROW(b, b->tables, b->n_tables, b->cap_tables))
		return;
	if (w->explain_only)
		access = SQL_ACCESS_READ;
	t = &b->tables[b->n_tables];
	t->part = w->part;
	t->schema = schema;
	t->name = name;
	t->access = access;
	dup = set_add(b, ((uint32_t)b->n_tables << 1) + 1);
	if (dup >= 0) {
		b->tables[dup].access |= access;
	} else if (dup == -1) {
		b->n_tables++;
		b->parts[w->part].n_tables++;
	}
}

static bool cte_in_scope(SqlBuild *b, const char *name)
{
	int i;

	if (!sqlinfo_work(b, (size_t)b->n_ctes))
		return false;
	for (i = b->n_ctes - 1; i >= 0; i--)
		if (strcmp(b->ctes[i], name) == 0)
			return true;
	return false;
}

/*
 * A RangeVar (its fields); a name in CTE scope is not a table when `cte_ok`.
 * A temporary relation being created (CREATE TEMP TABLE / VIEW / SEQUENCE,
 * SELECT INTO TEMP) is always made in pg_temp, whatever the search_path:
 * without a schema it is recorded as pg_temp.name.
 */
static void rangevar_add(Walk *w, const JNode *rv, int access, bool cte_ok)
{
	const char *schema = j_str(rv, "schemaname"), *name = j_str(rv, "relname");

	if (name == NULL || (cte_ok && schema == NULL && cte_in_scope(w->b, name)))
		return;
	if (schema == NULL && j_is(j_get(rv, "relpersistence"), "t"))
		schema = "pg_temp";
	table_add(w, schema, name, access);
}

static void cte_push(Walk *w, const char *name)
{
	SqlBuild *b = w->b;

	if (name != NULL && GROW(b, b->ctes, b->n_ctes, b->cap_ctes))
		b->ctes[b->n_ctes++] = name;
}

/*
 * Appends "a.b.c" from String nodes (`first` and those after it in its
 * list) to the pool; returns its offset or UINT32_MAX.
 */
static uint32_t pool_add_name(Walk *w, const JNode *first)
{
	SqlBuild *b = w->b;
	size_t start = b->pool_len, need = 0;
	const JNode *e;
	const char *s;
	char *np;

	for (e = first; e != NULL; e = j_next(e))
		need += strlen((s = j_string_node(e)) != NULL ? s : "") + 1;
	if (need == 0 || need > UINT32_MAX / 2 || b->pool_len + need > UINT32_MAX / 2)
		return UINT32_MAX;
	if (b->pool_len + need > b->pool_cap) {
		size_t ncap = (b->pool_len + need) * 2;

		if ((np = realloc(b->pool, ncap)) == NULL) {
			b->oom = true;
			return UINT32_MAX;
		}
		b->pool = np;
		b->pool_cap = ncap;
	}
	for (e = first; e != NULL; e = j_next(e)) {
		s = j_string_node(e);
		if (b->pool_len > start)
			b->pool[b->pool_len++] = '.';
		memcpy(b->pool + b->pool_len, s != NULL ? s : "", strlen(s != NULL ? s : ""));
		b->pool_len += strlen(s != NULL ? s : "");
	}
	b->pool[b->pool_len++] = '\0';
	return (uint32_t)start;
}

/* Lists the function named by `first` and the names after it (schema, name). */
static void function_add(Walk *w, const JNode *first)
{
	SqlBuild *b = w->b;
	uint32_t off;
	long dup;

	if (w->part < 0 || !GROW(b, b->funcs, b->n_funcs, b->cap_funcs))
		return;
	if ((off = pool_add_name(w, first)) == UINT32_MAX)
		return;
	b->funcs[b->n_funcs].part = w->part;
	b->funcs[b->n_funcs].name = off;
	dup = set_add(b, ((uint32_t)b->n_funcs << 1) + 2);
	if (dup == -1) {
		b->n_funcs++;
		b->parts[w->part].n_functions++;
	} else {
		b->pool_len = off; /* already listed: drop the copy */
	}
}

static void prep_add(Walk *w, SqlPrepOp op, const char *name, int first, int n)
{
	SqlBuild *b = w->b;

	if (w->explain_only || !GROW(b, b->preps, b->n_preps, b->cap_preps))
		return;
	b->preps[b->n_preps].op = op;
	b->preps[b->n_preps].name = name;
	b->preps[b->n_preps].part_first = first;
	b->preps[b->n_preps].n_parts = n;
	b->n_preps++;
}

/* ---- the generic walk ----------------------------------------------------- */

static void walk_value(Walk *w, const JNode *n);
static void walk_typed(Walk *w, const char *type, const JNode *body);
static void walk_select(Walk *w, const JNode *sel, bool skip_into);
static void dispatch_stmt(Walk *w, const char *type, const JNode *body);

/* Walks the members of a struct, skipping the NULL-terminated list of names in `skip`. */
static void walk_fields(Walk *w, const JNode *obj, const char *const *skip)
{
	const JNode *m;
	const char *const *s;

	for (m = j_first(obj); m != NULL; m = j_next(m)) {
		if (m->type != J_OBJ && m->type != J_ARR)
			continue;
		for (s = skip; s != NULL && *s != NULL && strcmp(*s, m->key) != 0; s++)
			;
		if (s == NULL || *s == NULL)
			walk_value(w, m);
	}
}

/* A plain struct: a RangeVar when it has a relname, otherwise its fields. */
static void walk_struct(Walk *w, const JNode *obj)
{
	int saved = w->access;
	const JNode *m;

	if (j_get(obj, "relname") != NULL) {
		rangevar_add(w, obj, w->access, true);
		return;
	}
	for (m = j_first(obj); m != NULL; m = j_next(m)) {
		if (m->type != J_OBJ && m->type != J_ARR)
			continue;
		if (strcmp(m->key, "pktable") == 0) /* REFERENCES t: read, not written */
			w->access = SQL_ACCESS_READ;
		walk_value(w, m);
		w->access = saved;
	}
}

static void walk_value(Walk *w, const JNode *n)
{
	const JNode *e, *body;
	const char *type;

	if (n == NULL)
		return;
	if (n->type == J_ARR) {
		for (e = j_first(n); e != NULL; e = j_next(e))
			walk_value(w, e);
	} else if (n->type == J_OBJ) {
		if ((type = j_type(n, &body)) != NULL)
			walk_typed(w, type, body);
		else
			walk_struct(w, n);
	}
}

/* ---- functions, operators, set_config -------------------------------------- */

/*
 * Settings that decide which schema an unqualified name is found in:
 * search_path, and the role its "$user" stands for.
 */
static bool setting_is_path(const char *name)
{
	return strcasecmp(name, "search_path") == 0 || strcasecmp(name, "role") == 0 ||
	       strcasecmp(name, "session_authorization") == 0;
}

static bool setting_is_privilege(const char *name)
{
	return strcasecmp(name, "role") == 0 || strcasecmp(name, "session_authorization") == 0;
}

/*
 * Settings that change how the server reads statement text: once they
 * differ from what the analysis assumes (UTF-8, standard-conforming
 * strings), the server and pgveil no longer see the same statements.
 */
static bool setting_is_lexical(const char *name)
{
	return strcasecmp(name, "client_encoding") == 0 || strcasecmp(name, "standard_conforming_strings") == 0;
}

/*
 * A setting this analysis cannot name is given a value it does not read
 * (set_config() of a name that is not a literal, UPDATE pg_settings): it may
 * be search_path or one that changes how the server reads statement text.
 */
static void setting_unknown(Walk *w)
{
	if (w->explain_only)
		return;
	w->b->changes_lexical = true;
	w->b->shadows_builtins = true;
	w->b->changes_search_path = true;
}

/* set_config(name, value, is_local): PRIVILEGE for role names or a name that is not a literal. */
static void fn_set_config(Walk *w, const JNode *call)
{
	const JNode *arg = j_first(j_get(call, "args")), *body, *sv;
	const char *type = j_type(arg, &body), *name = NULL;

	if (type != NULL && strcmp(type, "A_Const") == 0 && (sv = j_get(body, "sval")) != NULL)
		name = j_str(sv, "sval") != NULL ? j_str(sv, "sval") : "";
	if (name == NULL) {
		part_add(w, SC_PRIVILEGE);
		setting_unknown(w);
		return;
	}
	w->b->literal_sensitive = true;
	if (setting_is_path(name))
		w->b->changes_search_path = true;
	if (setting_is_privilege(name)) {
		part_add(w, SC_PRIVILEGE);
		return;
	}
	part_add(w, SC_SESSION);
	if (setting_is_lexical(name)) {
		part_add(w, SC_ADMIN);
		w->b->changes_lexical = true; /* the value is not known before it runs */
	}
	if (strcasecmp(name, "search_path") == 0)
		w->b->shadows_builtins = true; /* the value may put a schema before pg_catalog */
}

/*
 * The first name of a function's name list that matters: a leading
 * database name (database.schema.function, accepted by the server when it
 * names the current database) is dropped, as it is for tables.
 */
static const JNode *fn_name_first(const JNode *namelist)
{
	const JNode *a = j_first(namelist), *b = a != NULL ? j_next(a) : NULL;

	return b != NULL && j_next(b) != NULL ? b : a;
}

/* A FuncCall's bare name when it calls pg_catalog (unqualified or qualified so), else NULL. */
static const char *fn_catalog_name(const JNode *namelist)
{
	const JNode *a = fn_name_first(namelist), *c;
	const char *s;

	if (a == NULL)
		return NULL;
	if ((c = j_next(a)) == NULL)
		return j_string_node(a);
	s = j_string_node(a);
	if (c->next != NULL || s == NULL || strcmp(s, "pg_catalog") != 0)
		return NULL;
	return j_string_node(c);
}

/*
 * What calling function `bare` (NULL when it is not a plain or pg_catalog
 * name) does to the part. `call` is the FuncCall, or NULL for attribute
 * notation (`t.f`), which passes no arguments to look at.
 */
static void function_effects(Walk *w, const char *bare, const JNode *call)
{
	unsigned fx = bare != NULL ? builtin_effects(bare) : 0;

	if ((fx & FX_RUNS_SQL) && strcmp(bare, "ts_rewrite") == 0 && call != NULL &&
	    j_len(j_get(call, "args")) == 3)
		fx = 0; /* ts_rewrite(query, target, substitute): no SQL text */
	if (bare == NULL || builtin_find(bare) == NULL || (fx & FX_RUNS_SQL)) {
		/* May run at plan time even under EXPLAIN (constant folding). */
		if (w->part >= 0) {
			w->b->parts[w->part].classes |= SC_PROCEDURAL;
			w->b->parts[w->part].side_effect = true;
		}
	} else if (fx != 0 && !w->explain_only) {
		if (fx & FX_SIDE)
			part_side_effect(w);
		if (fx & FX_ADMIN)
			part_add(w, SC_ADMIN);
		if (fx & FX_WRITE)
			part_add(w, SC_WRITE);
		if (fx & FX_SESSION)
			part_add(w, SC_SESSION);
		if ((fx & FX_SETCONFIG) && call != NULL)
			fn_set_config(w, call);
	}
}

/* True for information_schema.f of PostgreSQL's own (see information_schema_builtin). */
static bool fn_information_schema(const JNode *namelist)
{
	const JNode *a = fn_name_first(namelist), *c = a != NULL ? j_next(a) : NULL;
	const char *schema = a != NULL ? j_string_node(a) : NULL, *name = c != NULL ? j_string_node(c) : NULL;

	return c != NULL && c->next == NULL && schema != NULL && name != NULL &&
	       strcmp(schema, "information_schema") == 0 && information_schema_builtin(name);
}

static void walk_funccall(Walk *w, const JNode *call)
{
	static const char *const skip[] = { "funcname", NULL };
	const JNode *names = j_get(call, "funcname");

	function_add(w, fn_name_first(names));
	if (!fn_information_schema(names)) /* those compute values from their arguments only */
		function_effects(w, fn_catalog_name(names), call);
	walk_fields(w, call, skip);
}

/*
 * `t.f` is also PostgreSQL's attribute notation for the call f(t) when t has
 * no column f. Without the catalog a column cannot be told from a call, so
 * when f is a built-in that takes a whole row it counts as called.
 */
static void walk_columnref(Walk *w, const JNode *ref)
{
	const JNode *e, *last = NULL;
	const char *name;
	int n = 0;

	for (e = j_first(j_get(ref, "fields")); e != NULL; e = j_next(e)) {
		last = e;
		n++;
	}
	if (n < 2 || (name = j_string_node(last)) == NULL || !sqlinfo_takes_whole_row(name))
		return;
	function_add(w, last);
	function_effects(w, name, NULL);
}

/* A_Expr: an operator that is not built in runs a function that is not either. */
static void walk_aexpr(Walk *w, const JNode *e)
{
	static const char *const skip[] = { "name", NULL };
	const char *kind = j_str(e, "kind"), *op;

	if (kind != NULL && strstr(kind, "BETWEEN") == NULL) {
		op = fn_catalog_name(j_get(e, "name"));
		if ((op == NULL || !builtin_operator(op)) && w->part >= 0) {
			w->b->parts[w->part].classes |= SC_PROCEDURAL;
			w->b->parts[w->part].side_effect = true;
		}
	}
	walk_fields(w, e, skip);
}

/* ---- the constant-WHERE evaluator ---------------------------------------- */

/* Truth of a column-free expression: true, false, null, row-dependent, or not evaluated. */
typedef enum { CV_TRUE, CV_FALSE, CV_NULL, CV_ROW, CV_UNKNOWN, CV_INT, CV_STR } CvKind;

typedef struct CVal {
	CvKind kind;
	long long i;             /* CV_INT */
	const char *s;           /* CV_STR */
} CVal;

static CVal cv_make(CvKind k)
{
	CVal v = { k, 0, NULL };

	return v;
}

static CVal cv_bool(bool b)
{
	return cv_make(b ? CV_TRUE : CV_FALSE);
}

/*
 * The names a subquery's FROM gives its rows (tables as named, aliases),
 * with those of the subqueries around it: a column qualified with one of
 * them is the subquery's own, not the target row's. NULL outside every
 * subquery. Past ROW_SCOPE_MAX names the scope is full: every qualified
 * column then counts as the subquery's (fail closed: the WHERE may let every
 * row through).
 */
#define ROW_SCOPE_MAX 32

typedef struct RowScope {
	const char *names[ROW_SCOPE_MAX];
	int n;
	bool full; /* a name did not fit */
} RowScope;

static void row_scope_add(RowScope *sc, const char *name)
{
	if (name == NULL)
		return;
	if (sc->n < ROW_SCOPE_MAX)
		sc->names[sc->n++] = name;
	else
		sc->full = true;
}

/* Adds the names one FROM item (a table, a join, a subquery or function with its alias) gives. */
static void row_scope_add_from(RowScope *sc, const JNode *item)
{
	const JNode *body, *alias;
	const char *type = j_type(item, &body);

	if (type == NULL)
		return;
	alias = j_get(body, "alias");
	if (alias != NULL)
		row_scope_add(sc, j_str(alias, "aliasname"));
	else if (strcmp(type, "RangeVar") == 0)
		row_scope_add(sc, j_str(body, "relname"));
	if (strcmp(type, "JoinExpr") == 0) {
		row_scope_add_from(sc, j_get(body, "larg"));
		row_scope_add_from(sc, j_get(body, "rarg"));
	}
}

/*
 * True when ColumnRef `ref` inside a subquery surely reads that subquery's
 * rows: a bare `*`, or `x.c` (`s.x.c`) with x one of the scope's names.
 */
static bool row_scope_owns(const RowScope *sc, const JNode *ref)
{
	const JNode *f = j_first(j_get(ref, "fields")), *qual = NULL, *body;
	const char *name, *type;
	int n = 0;

	if (sc == NULL || f == NULL)
		return false;
	if ((type = j_type(f, &body)) != NULL && strcmp(type, "A_Star") == 0)
		return true;
	for (; f != NULL; f = j_next(f), n++)
		if (f->next != NULL)
			qual = f; /* the name before the column: the table's */
	if (n < 2 || (name = j_string_node(qual)) == NULL)
		return false;
	if (sc->full)
		return true;
	for (int i = 0; i < sc->n; i++)
		if (strcmp(sc->names[i], name) == 0)
			return true;
	return false;
}

static bool row_dependent_in(const JNode *n, const RowScope *sc);

/* A SelectStmt inside the WHERE: its own FROM's names join the scope. */
static bool row_dependent_select(const JNode *sel, const RowScope *sc)
{
	RowScope inner = { .n = 0 };

	if (sc != NULL)
		inner = *sc;
	for (const JNode *f = j_first(j_get(sel, "fromClause")); f != NULL; f = j_next(f))
		row_scope_add_from(&inner, f);
	for (const JNode *e = j_first(sel); e != NULL; e = j_next(e))
		if (row_dependent_in(e, &inner))
			return true;
	return false;
}

static bool row_dependent_in(const JNode *n, const RowScope *sc)
{
	const JNode *e, *body;
	const char *type;

	if (n == NULL || (n->type != J_OBJ && n->type != J_ARR))
		return false;
	if ((type = j_type(n, &body)) != NULL) {
		if (strcmp(type, "ColumnRef") == 0)
			return !row_scope_owns(sc, body);
		if (strcmp(type, "CurrentOfExpr") == 0)
			return true;
		if (strcmp(type, "SelectStmt") == 0)
			return row_dependent_select(body, sc);
	}
	for (e = j_first(n); e != NULL; e = j_next(e))
		if (row_dependent_in(e, sc))
			return true;
	return false;
}

/*
 * True when the subtree depends on the target row: a column of the
 * statement's tables (also from inside a subquery, which may be
 * correlated), CURRENT OF. A column a subquery qualifies with one of its
 * own FROM items is not the row's. A function call is not row-dependent by
 * itself, volatile or not: `random() < 0.5` has no row to be false for and
 * may pass every one. A subquery reading no outer column (WHERE EXISTS
 * (SELECT 1 FROM u WHERE u.a = 1)) is as constant as the rest: the caller
 * treats what it cannot evaluate as true.
 */
static bool row_dependent(const JNode *n)
{
	return row_dependent_in(n, NULL);
}

static CVal cv_eval(Walk *w, const JNode *n);

static CVal cv_const(const JNode *c)
{
	const JNode *v;
	CVal r = cv_make(CV_UNKNOWN);

	if (j_true(c, "isnull"))
		return cv_make(CV_NULL);
	if ((v = j_get(c, "boolval")) != NULL)
		return cv_bool(j_true(v, "boolval"));
	if ((v = j_get(c, "ival")) != NULL) {
		r.kind = CV_INT;
		r.i = j_num(v, "ival");
	} else if ((v = j_get(c, "sval")) != NULL) {
		r.kind = CV_STR;
		r.s = j_str(v, "sval") != NULL ? j_str(v, "sval") : "";
	}
	return r;
}

static bool cv_is_value(CVal v)
{
	return v.kind == CV_TRUE || v.kind == CV_FALSE || v.kind == CV_INT || v.kind == CV_STR;
}

/* Compares two constants with a comparison operator; CV_UNKNOWN when that needs more than bytes. */
static CVal cv_compare(Walk *w, const char *op, CVal a, CVal b)
{
	int c;

	if (a.kind == CV_NULL || b.kind == CV_NULL)
		return cv_make(CV_NULL);
	if (a.kind == CV_ROW || b.kind == CV_ROW)
		return cv_make(CV_ROW);
	if (!cv_is_value(a) || !cv_is_value(b))
		return cv_make(CV_UNKNOWN);
	if (a.kind == CV_INT && b.kind == CV_INT)
		c = (a.i > b.i) - (a.i < b.i);
	else if (a.kind == CV_STR && b.kind == CV_STR && (strcmp(op, "=") == 0 || strcmp(op, "<>") == 0))
		c = strcmp(a.s, b.s) != 0; /* order depends on the collation: only equality */
	else if ((a.kind == CV_TRUE || a.kind == CV_FALSE) && (b.kind == CV_TRUE || b.kind == CV_FALSE))
		c = (a.kind == CV_TRUE) - (b.kind == CV_TRUE);
	else
		return cv_make(CV_UNKNOWN);
	w->b->literal_sensitive = true;
	if (strcmp(op, "=") == 0)
		return cv_bool(c == 0);
	if (strcmp(op, "<>") == 0)
		return cv_bool(c != 0);
	if (strcmp(op, "<") == 0)
		return cv_bool(c < 0);
	if (strcmp(op, "<=") == 0)
		return cv_bool(c <= 0);
	if (strcmp(op, ">") == 0)
		return cv_bool(c > 0);
	if (strcmp(op, ">=") == 0)
		return cv_bool(c >= 0);
	return cv_make(CV_UNKNOWN);
}

/* Truth kinds only: values that are not booleans count as not evaluated. */
static CvKind cv_truth(CVal v)
{
	return (v.kind == CV_INT || v.kind == CV_STR) ? CV_UNKNOWN : v.kind;
}

static CVal cv_bool_expr(Walk *w, const JNode *e)
{
	const char *op = j_str(e, "boolop");
	const JNode *a;
	bool any[CV_STR + 1] = { false };
	bool is_and = op != NULL && strcmp(op, "AND_EXPR") == 0, is_or = op != NULL && strcmp(op, "OR_EXPR") == 0;
	CvKind k;

	for (a = j_first(j_get(e, "args")); a != NULL; a = j_next(a))
		any[cv_truth(cv_eval(w, a))] = true;
	if (is_and) {
		k = any[CV_FALSE] ? CV_FALSE : any[CV_NULL] ? CV_NULL : any[CV_ROW] ? CV_ROW
			: any[CV_UNKNOWN] ? CV_UNKNOWN : CV_TRUE;
	} else if (is_or) {
		k = any[CV_TRUE] ? CV_TRUE : any[CV_UNKNOWN] ? CV_UNKNOWN : any[CV_ROW] ? CV_ROW
			: any[CV_NULL] ? CV_NULL : CV_FALSE;
	} else { /* NOT: one argument */
		k = any[CV_TRUE] ? CV_FALSE : any[CV_FALSE] ? CV_TRUE : any[CV_NULL] ? CV_NULL
			: any[CV_ROW] ? CV_ROW : CV_UNKNOWN;
	}
	return cv_make(k);
}

/*
 * The names of a ColumnRef, without a leading qualifier that names the
 * statement's target (`t.id`, `public.t.id` and `id` alike); NULL for a `*`.
 */
static const JNode *column_names(const Walk *w, const JNode *colref)
{
	const JNode *f = j_first(j_get(colref, "fields")), *g;
	const char *alias = j_str(j_get(w->target, "alias"), "aliasname");
	const char *name = alias != NULL ? alias : j_str(w->target, "relname");
	int n = j_len(j_get(colref, "fields"));

	for (g = f; g != NULL; g = j_next(g))
		if (j_string_node(g) == NULL)
			return NULL;
	if (name == NULL || n < 2)
		return f;
	if (n == 2 && strcmp(j_string_node(f), name) == 0)
		return j_next(f);
	if (n == 3 && alias == NULL && str_eq(j_string_node(f), j_str(w->target, "schemaname")) &&
	    strcmp(j_string_node(j_next(f)), name) == 0)
		return j_next(j_next(f));
	return f;
}

/*
 * Whether a node of an expression gives the same value each time it is
 * evaluated for the same row: columns, constants, parameters, built-in
 * operators and casts, and what is built of them. A function call, a
 * subquery or an operator that is not built in may not (`random()`).
 */
static bool row_stable_node(const char *type, const JNode *body)
{
	static const char *const stable[] = { "A_ArrayExpr", "A_Const", "A_Indices", "A_Indirection", "BoolExpr",
					      "BooleanTest", "CaseExpr", "CaseWhen", "CoalesceExpr", "CollateClause",
					      "ColumnRef", "NullTest", "ParamRef", "RowExpr", "String", "TypeCast" };
	const char *op;

	if (strcmp(type, "A_Expr") == 0)
		return (op = fn_catalog_name(j_get(body, "name"))) != NULL && builtin_operator(op);
	for (size_t i = 0; i < PGV_ARRAY_LEN(stable); i++)
		if (strcmp(type, stable[i]) == 0)
			return true;
	return false;
}

/*
 * The same expression on both sides: equal trees (positions aside), a
 * column spelled with or without the target's name counting as the same
 * (`t.id = id`, `lower(x) = lower(t.x)`). *stable is cleared when a node
 * may give another value at its second evaluation (row_stable_node), and
 * when the trees are equal deeper than is compared (then they count as
 * the same, of unknown value: fail closed). A literal in them makes the
 * answer depend on literals: the statement cache must not share it by
 * shape.
 */
static bool same_expr(Walk *w, const JNode *a, const JNode *b, int depth, bool *stable)
{
	const JNode *ab = NULL, *bb = NULL, *x, *y;
	const char *ta = j_type(a, &ab), *tb = j_type(b, &bb);

	if (a == NULL || b == NULL || a->type != b->type)
		return false;
	if (depth > 200) {
		*stable = false;
		return true;
	}
	if (ta != NULL && !row_stable_node(ta, ab))
		*stable = false;
	if (ta != NULL && tb != NULL && strcmp(ta, "ColumnRef") == 0 && strcmp(tb, "ColumnRef") == 0) {
		x = column_names(w, ab);
		y = column_names(w, bb);
		if (x == NULL || y == NULL)
			return false;
		for (; x != NULL && y != NULL; x = j_next(x), y = j_next(y))
			if (strcmp(j_string_node(x), j_string_node(y)) != 0)
				return false;
		return x == NULL && y == NULL;
	}
	switch (a->type) {
	case J_STR: return strcmp(a->str, b->str) == 0;
	case J_NUM: return a->num == b->num;
	case J_OBJ:
	case J_ARR:
		if (ta != NULL && strcmp(ta, "A_Const") == 0)
			w->b->literal_sensitive = true;
		for (x = j_first(a), y = j_first(b);; x = j_next(x), y = j_next(y)) {
			while (x != NULL && x->key != NULL && strcmp(x->key, "location") == 0)
				x = j_next(x);
			while (y != NULL && y->key != NULL && strcmp(y->key, "location") == 0)
				y = j_next(y);
			if (x == NULL || y == NULL)
				return x == y;
			if ((x->key == NULL) != (y->key == NULL) || (x->key != NULL && strcmp(x->key, y->key) != 0) ||
			    !same_expr(w, x, y, depth + 1, stable))
				return false;
		}
	default: return true;
	}
}

/*
 * An expression compared with itself, into *out (false when e is not
 * that): `c IS NOT DISTINCT FROM c` is true for every row, `c = c`,
 * `c <= c`, `c >= c` for every row where c is not NULL (all of them, as far
 * as DESTRUCTIVE goes); `c IS DISTINCT FROM c`, `c <> c`, `c < c`, `c > c`
 * for none. When the expression may differ between its two evaluations
 * (`random() = random()`, `f(x) <> f(x)`) neither holds, and NOT may turn
 * either around: its value is unknown, which counts as every row.
 */
static bool cv_self_compare(Walk *w, const char *kind, const char *op, const JNode *e, CVal *out)
{
	bool stable = true, yes;

	if (!same_expr(w, j_get(e, "lexpr"), j_get(e, "rexpr"), 0, &stable))
		return false;
	if (strcmp(kind, "AEXPR_NOT_DISTINCT") == 0 || strcmp(kind, "AEXPR_DISTINCT") == 0)
		yes = strcmp(kind, "AEXPR_NOT_DISTINCT") == 0;
	else if (strcmp(kind, "AEXPR_OP") != 0 || op == NULL)
		return false;
	else if (strcmp(op, "=") == 0 || strcmp(op, "<=") == 0 || strcmp(op, ">=") == 0)
		yes = true;
	else if (strcmp(op, "<>") == 0 || strcmp(op, "!=") == 0 || strcmp(op, "<") == 0 || strcmp(op, ">") == 0)
		yes = false;
	else
		return false;
	*out = stable ? cv_bool(yes) : cv_make(CV_UNKNOWN);
	return true;
}

static CVal cv_aexpr(Walk *w, const JNode *e)
{
	const char *kind = j_str(e, "kind");
	const JNode *name = j_get(e, "name");
	const char *op = j_first(name) != NULL && j_first(name)->next == NULL
				 ? j_string_node(j_first(name)) : NULL;
	CVal l, r;

	if (kind != NULL && cv_self_compare(w, kind, op, e, &l))
		return l;
	if (kind == NULL || strcmp(kind, "AEXPR_OP") != 0 || op == NULL || j_get(e, "lexpr") == NULL)
		return cv_make(row_dependent(e) ? CV_ROW : CV_UNKNOWN);
	l = cv_eval(w, j_get(e, "lexpr"));
	r = cv_eval(w, j_get(e, "rexpr"));
	return cv_compare(w, op, l, r);
}

static CVal cv_nulltest(Walk *w, const JNode *e)
{
	bool is_null = j_is(j_get(e, "nulltesttype"), "IS_NULL");
	CVal a = cv_eval(w, j_get(e, "arg"));

	if (a.kind == CV_NULL)
		return cv_bool(is_null);
	if (cv_is_value(a))
		return cv_bool(!is_null);
	return a;
}

static CVal cv_booltest(Walk *w, const JNode *e)
{
	const char *t = j_str(e, "booltesttype");
	CVal a = cv_eval(w, j_get(e, "arg"));
	bool r;

	if (t == NULL || (a.kind != CV_TRUE && a.kind != CV_FALSE && a.kind != CV_NULL))
		return a.kind == CV_ROW ? a : cv_make(CV_UNKNOWN);
	if (strcmp(t, "IS_TRUE") == 0)
		r = a.kind == CV_TRUE;
	else if (strcmp(t, "IS_NOT_TRUE") == 0)
		r = a.kind != CV_TRUE;
	else if (strcmp(t, "IS_FALSE") == 0)
		r = a.kind == CV_FALSE;
	else if (strcmp(t, "IS_NOT_FALSE") == 0)
		r = a.kind != CV_FALSE;
	else if (strcmp(t, "IS_UNKNOWN") == 0)
		r = a.kind == CV_NULL;
	else
		r = a.kind != CV_NULL;
	return cv_bool(r);
}

static CVal cv_eval(Walk *w, const JNode *n)
{
	const JNode *body;
	const char *type = j_type(n, &body);

	if (type == NULL)
		return cv_make(row_dependent(n) ? CV_ROW : CV_UNKNOWN);
	if (strcmp(type, "A_Const") == 0)
		return cv_const(body);
	if (strcmp(type, "BoolExpr") == 0)
		return cv_bool_expr(w, body);
	if (strcmp(type, "A_Expr") == 0)
		return cv_aexpr(w, body);
	if (strcmp(type, "NullTest") == 0)
		return cv_nulltest(w, body);
	if (strcmp(type, "BooleanTest") == 0)
		return cv_booltest(w, body);
	return cv_make(row_dependent(n) ? CV_ROW : CV_UNKNOWN);
}

/*
 * A condition of statement s (its WHERE, MERGE's join condition) that lets
 * every row through: absent, constant true, or column-free and unknown.
 */
static bool where_all_rows(Walk *w, const JNode *s, const JNode *where)
{
	const JNode *outer = w->target;
	CvKind k;

	if (where == NULL)
		return true;
	w->target = j_get(s, "relation");
	k = cv_truth(cv_eval(w, where));
	w->target = outer;
	return k == CV_TRUE || k == CV_UNKNOWN;
}

/* ---- SELECT, WITH and the data-modifying commands ------------------------- */

/* The CTEs of a WITH clause: data-modifying ones are parts of their own. */
static void walk_with(Walk *w, const JNode *with)
{
	bool recursive = j_true(with, "recursive");
	const JNode *ctes = j_get(with, "ctes"), *c, *body, *qbody;
	const char *type;

	if (recursive)
		for (c = j_first(ctes); c != NULL; c = j_next(c))
			if (j_type(c, &body) != NULL)
				cte_push(w, j_str(body, "ctename"));
	for (c = j_first(ctes); c != NULL; c = j_next(c)) {
		if ((type = j_type(c, &body)) == NULL)
			continue;
		type = j_type(j_get(body, "ctequery"), &qbody);
		if (type != NULL && strcmp(type, "SelectStmt") == 0)
			walk_select(w, qbody, false);
		else if (type != NULL)
			dispatch_stmt(w, type, qbody);
		if (!recursive)
			cte_push(w, j_str(body, "ctename"));
	}
}

/* A SELECT (or VALUES, TABLE) inside the current part. */
static void walk_select(Walk *w, const JNode *sel, bool skip_into)
{
	static const char *const skip[] = { "withClause", "intoClause", "lockingClause", "larg", "rarg", NULL };
	int saved_access = w->access, saved_ctes = w->b->n_ctes;
	const JNode *into = j_get(sel, "intoClause"), *arm;

	w->access = SQL_ACCESS_READ;
	if (j_get(sel, "withClause") != NULL)
		walk_with(w, j_get(sel, "withClause"));
	if (j_len(j_get(sel, "lockingClause")) > 0) {
		part_add(w, SC_WRITE);
		part_side_effect(w);
	}
	if (into != NULL && !skip_into) { /* SELECT INTO below the top: not valid, fail closed */
		part_add(w, SC_DDL);
		part_side_effect(w);
		rangevar_add(w, j_get(into, "rel"), SQL_ACCESS_WRITE, false);
	}
	if ((arm = j_get(sel, "larg")) != NULL)
		walk_select(w, arm, false);
	if ((arm = j_get(sel, "rarg")) != NULL)
		walk_select(w, arm, false);
	walk_fields(w, sel, skip);
	w->b->n_ctes = saved_ctes;
	w->access = saved_access;
}

static void stmt_select(Walk *w, const JNode *sel)
{
	const JNode *into = j_get(sel, "intoClause");
	int prev;

	if (into == NULL) {
		part_add(w, SC_SELECT);
		part_want_read(w);
		walk_select(w, sel, false);
		return;
	}
	/* SELECT INTO: creating the table is DDL, the query is a part of its own. */
	part_add(w, SC_DDL);
	rangevar_add(w, j_get(into, "rel"), SQL_ACCESS_WRITE, false);
	prev = part_begin(w);
	part_add(w, SC_SELECT);
	part_want_read(w);
	walk_select(w, sel, true);
	part_end(w, prev);
}

/* The WITH clause and target of INSERT/UPDATE/DELETE/MERGE; returns the CTE mark to restore. */
static int dml_begin(Walk *w, const JNode *stmt, uint32_t classes)
{
	int mark = w->b->n_ctes;

	part_add(w, classes | SC_WRITE);
	if (j_get(stmt, "withClause") != NULL)
		walk_with(w, j_get(stmt, "withClause"));
	rangevar_add(w, j_get(stmt, "relation"), SQL_ACCESS_WRITE, false);
	w->access = SQL_ACCESS_READ;
	return mark;
}

static const char *const dml_skip[] = { "withClause", "relation", NULL };

static void stmt_insert(Walk *w, const JNode *s)
{
	int mark = dml_begin(w, s, SC_INSERT);

	if (j_is(j_get(j_get(s, "onConflictClause"), "action"), "ONCONFLICT_UPDATE"))
		part_add(w, SC_UPDATE);
	walk_fields(w, s, dml_skip);
	w->b->n_ctes = mark;
}

static void stmt_update(Walk *w, const JNode *s)
{
	int mark = dml_begin(w, s, SC_UPDATE);
	const JNode *rel = j_get(s, "relation");
	const char *schema = j_str(rel, "schemaname");

	/* Updating pg_settings runs set_config(): client_encoding and the like included. */
	if (str_eq(j_str(rel, "relname"), "pg_settings") && (schema == NULL || strcmp(schema, "pg_catalog") == 0)) {
		part_add(w, SC_SESSION | SC_ADMIN);
		setting_unknown(w);
	}
	if (!w->explain_only && where_all_rows(w, s, j_get(s, "whereClause")))
		part_add(w, SC_DESTRUCTIVE);
	walk_fields(w, s, dml_skip);
	w->b->n_ctes = mark;
}

static void stmt_delete(Walk *w, const JNode *s)
{
	int mark = dml_begin(w, s, SC_DELETE);

	if (!w->explain_only && where_all_rows(w, s, j_get(s, "whereClause")))
		part_add(w, SC_DESTRUCTIVE);
	walk_fields(w, s, dml_skip);
	w->b->n_ctes = mark;
}

static void stmt_merge(Walk *w, const JNode *s)
{
	int mark = dml_begin(w, s, SC_MERGE);
	const JNode *c, *body;
	const char *cmd;
	bool all_rows = false;

	for (c = j_first(j_get(s, "mergeWhenClauses")); c != NULL; c = j_next(c)) {
		if (j_type(c, &body) == NULL || (cmd = j_str(body, "commandType")) == NULL)
			continue;
		if (strcmp(cmd, "CMD_INSERT") == 0)
			part_add(w, SC_INSERT);
		else if (strcmp(cmd, "CMD_UPDATE") == 0)
			part_add(w, SC_UPDATE);
		else if (strcmp(cmd, "CMD_DELETE") == 0)
			part_add(w, SC_DELETE);
		if (strcmp(cmd, "CMD_INSERT") != 0 && j_true(body, "matched") &&
		    j_get(body, "condition") == NULL)
			all_rows = true;
	}
	if (all_rows && !w->explain_only && where_all_rows(w, s, j_get(s, "joinCondition")))
		part_add(w, SC_DESTRUCTIVE);
	walk_fields(w, s, dml_skip);
	w->b->n_ctes = mark;
}

/* ---- statements that hold other commands ----------------------------------- */

/* Runs `query` (a typed node) as a part of its own; returns the number of parts it made. */
static int sub_part(Walk *w, const JNode *query)
{
	const JNode *body;
	const char *type = j_type(query, &body);
	int before = w->b->n_parts;

	if (type != NULL)
		dispatch_stmt(w, type, body);
	return w->b->n_parts - before;
}

/* defGetBoolean(): no argument, or anything but false/off/0, is true. */
static bool explain_option_true(Walk *w, const JNode *def)
{
	const JNode *arg = j_get(def, "arg"), *body;
	const char *type = j_type(arg, &body), *s;

	if (arg == NULL)
		return true;
	w->b->literal_sensitive = true; /* EXPLAIN (ANALYZE 'off') */
	if (type == NULL)
		return true;
	if (strcmp(type, "String") == 0) {
		s = j_str(body, "sval");
		return s == NULL || (strcasecmp(s, "false") != 0 && strcasecmp(s, "off") != 0);
	}
	if (strcmp(type, "Integer") == 0)
		return j_num(body, "ival") != 0;
	if (strcmp(type, "Boolean") == 0)
		return j_true(body, "boolval");
	return true;
}

static void stmt_explain(Walk *w, const JNode *s)
{
	const JNode *o, *body;
	bool analyze = false, saved = w->explain_only;
	int saved_access = w->access;

	for (o = j_first(j_get(s, "options")); o != NULL; o = j_next(o))
		if (j_type(o, &body) != NULL && j_is(j_get(body, "defname"), "analyze") &&
		    explain_option_true(w, body))
			analyze = true;
	part_want_read(w);
	if (analyze) {
		(void)sub_part(w, j_get(s, "query"));
		return;
	}
	/* Only planned: its tables are read, nothing in it runs (but plan-time folding of functions). */
	w->explain_only = true;
	w->access = SQL_ACCESS_READ;
	(void)sub_part(w, j_get(s, "query"));
	w->explain_only = saved;
	w->access = saved_access;
}

static void stmt_prepare(Walk *w, const JNode *s)
{
	int first = w->b->n_parts, n;

	part_add(w, SC_SESSION);
	n = sub_part(w, j_get(s, "query"));
	prep_add(w, SQL_PREP_PREPARE, j_str(s, "name"), first, n);
}

static void stmt_execute(Walk *w, const JNode *s)
{
	part_add(w, SC_SESSION);
	prep_add(w, SQL_PREP_EXECUTE, j_str(s, "name"), w->part, 0);
	walk_value(w, j_get(s, "params"));
}

static void stmt_deallocate(Walk *w, const JNode *s)
{
	const char *name = j_str(s, "name");

	part_add(w, SC_SESSION);
	prep_add(w, name != NULL ? SQL_PREP_DEALLOCATE : SQL_PREP_DEALLOCATE_ALL, name, 0, 0);
}

static void stmt_discard(Walk *w, const JNode *s)
{
	part_add(w, SC_SESSION);
	if (j_is(j_get(s, "target"), "DISCARD_ALL"))
		prep_add(w, SQL_PREP_DEALLOCATE_ALL, NULL, 0, 0);
}

static void stmt_declare(Walk *w, const JNode *s)
{
	part_add(w, SC_SESSION);
	(void)sub_part(w, j_get(s, "query"));
}

static void stmt_create_table_as(Walk *w, const JNode *s)
{
	part_add(w, SC_DDL);
	rangevar_add(w, j_get(j_get(s, "into"), "rel"), SQL_ACCESS_WRITE, false);
	(void)sub_part(w, j_get(s, "query"));
}

static void stmt_copy(Walk *w, const JNode *s)
{
	static const char *const skip[] = { "relation", "query", NULL };
	bool from = j_true(s, "is_from");

	part_add(w, SC_COPY);
	if (from)
		part_add(w, SC_WRITE);
	if (j_get(s, "filename") != NULL) /* a server file or PROGRAM */
		part_add(w, SC_ADMIN);
	else if (!from)
		part_add(w, SC_READ);
	rangevar_add(w, j_get(s, "relation"), from ? SQL_ACCESS_WRITE : SQL_ACCESS_READ, false);
	w->access = SQL_ACCESS_READ;
	walk_fields(w, s, skip);
	(void)sub_part(w, j_get(s, "query"));
}

/* The value of SET name = value when it is one literal; NULL otherwise. */
static const char *set_literal(Walk *w, const JNode *s, long long *ival, bool *is_int)
{
	const JNode *args = j_get(s, "args"), *body, *v;
	const char *type;

	if (!j_is(j_get(s, "kind"), "VAR_SET_VALUE") || j_len(args) != 1)
		return NULL;
	type = j_type(j_first(args), &body);
	if (type == NULL || strcmp(type, "A_Const") != 0)
		return NULL;
	w->b->literal_sensitive = true;
	*is_int = false;
	if ((v = j_get(body, "ival")) != NULL) {
		*is_int = true;
		*ival = j_num(v, "ival");
		return "";
	}
	if ((v = j_get(body, "sval")) != NULL)
		return j_str(v, "sval") != NULL ? j_str(v, "sval") : "";
	return NULL;
}

/* SET client_encoding / standard_conforming_strings to what the analysis assumes. */
static bool set_lexical_safe(Walk *w, const JNode *s, const char *name)
{
	static const char *const utf8[] = { "utf8", "utf-8", "unicode", NULL };
	static const char *const on[] = { "on", "true", "yes", "t", "tr", "tru", "y", "ye", NULL };
	long long ival = 0;
	bool is_int = false;
	const char *v = set_literal(w, s, &ival, &is_int);
	const char *const *ok = strcasecmp(name, "client_encoding") == 0 ? utf8 : on;

	if (v == NULL)
		return false;
	if (is_int)
		return ok == on && ival == 1;
	for (; *ok != NULL; ok++)
		if (strcasecmp(v, *ok) == 0)
			return true;
	return false;
}

/* White space around the items of a list setting (PostgreSQL's scanner_isspace, and \v). */
static bool list_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool sqlinfo_search_path_shadows(const char *value)
{
	const char *p = value;
	int entry = 0;

	while (*p != '\0') {
		const char *start, *end;

		while (list_space(*p) || *p == ',' || *p == '"')
			p += *p == ',' ? (entry++, 1) : 1;
		start = p;
		while (*p != '\0' && *p != ',' && *p != '"')
			p++;
		end = p;
		while (end > start && list_space(end[-1]))
			end--;
		if (entry > 0 && (size_t)(end - start) == 10 && strncasecmp(start, "pg_catalog", 10) == 0)
			return true;
	}
	return false;
}

/*
 * SET search_path with a schema before pg_catalog: a function there with a
 * built-in's name is what the server calls. Values the analysis cannot read
 * count as such.
 */
static bool set_search_path_shadows(Walk *w, const JNode *s)
{
	const JNode *a, *body, *sv;
	const char *type, *v;
	int i = 0;

	if (!j_is(j_get(s, "kind"), "VAR_SET_VALUE"))
		return false; /* RESET, SET ... TO DEFAULT */
	w->b->literal_sensitive = true;
	for (a = j_first(j_get(s, "args")); a != NULL; a = j_next(a), i++) {
		type = j_type(a, &body);
		if (type == NULL || strcmp(type, "A_Const") != 0 || (sv = j_get(body, "sval")) == NULL ||
		    (v = j_str(sv, "sval")) == NULL)
			return true;
		if ((i > 0 && strcasecmp(v, "pg_catalog") == 0) || sqlinfo_search_path_shadows(v))
			return true;
	}
	return false;
}

/*
 * What VariableSetStmt `s` does to the flags: search_path with a schema
 * before pg_catalog shadows built-ins; client_encoding or
 * standard_conforming_strings set to a value pgveil does not read under
 * changes the lexical rules (returns true then).
 */
static bool setting_flags(Walk *w, const JNode *s)
{
	const char *name = j_str(s, "name");

	if (name == NULL)
		return false;
	if (strcasecmp(name, "search_path") == 0 && set_search_path_shadows(w, s))
		w->b->shadows_builtins = true;
	if (!setting_is_lexical(name) || set_lexical_safe(w, s, name))
		return false;
	w->b->changes_lexical = true;
	return true;
}

static void stmt_set(Walk *w, const JNode *s)
{
	const char *name = j_str(s, "name");

	if (name != NULL && setting_is_privilege(name))
		part_add(w, SC_PRIVILEGE);
	else if (name != NULL && (strncmp(name, "TRANSACTION", 11) == 0 || strncmp(name, "transaction_", 12) == 0))
		part_add(w, SC_TRANSACTION);
	else
		part_add(w, SC_SESSION);
	if (name != NULL && setting_is_path(name) && !w->explain_only)
		w->b->changes_search_path = true; /* SET, SET LOCAL, RESET: any value, even the default's */
	if (setting_flags(w, s))
		part_add(w, SC_ADMIN);
	walk_value(w, j_get(s, "args"));
}

/*
 * ALTER ROLE / DATABASE / SYSTEM ... SET: the setting of later sessions (of
 * every session, after a reload), which start with it unchecked. Only a
 * value set matters: RESET and DEFAULT take one away, FROM CURRENT keeps
 * this session's.
 */
static void stmt_alter_set(Walk *w, const JNode *s)
{
	const JNode *set = j_get(s, "setstmt");

	if (j_is(j_get(set, "kind"), "VAR_SET_VALUE"))
		(void)setting_flags(w, set);
	walk_fields(w, s, NULL);
}

/*
 * ALTER TABLE: every ... DROP subcommand is DROP, and DESTRUCTIVE when it
 * drops a column (data) or a constraint; OWNER TO changes privileges.
 */
static void stmt_alter_table(Walk *w, const JNode *s)
{
	static const char *const skip[] = { "relation", NULL };
	const JNode *c, *body;
	const char *sub;

	part_add(w, SC_DDL);
	rangevar_add(w, j_get(s, "relation"), SQL_ACCESS_WRITE, false);
	for (c = j_first(j_get(s, "cmds")); c != NULL; c = j_next(c)) {
		if (j_type(c, &body) == NULL || (sub = j_str(body, "subtype")) == NULL)
			continue;
		if (strcmp(sub, "AT_DropColumn") == 0 || strcmp(sub, "AT_DropConstraint") == 0)
			part_add(w, SC_DROP | SC_DESTRUCTIVE);
		else if (strncmp(sub, "AT_Drop", 7) == 0 ||
			 (strcmp(sub, "AT_ColumnDefault") == 0 && j_get(body, "def") == NULL))
			part_add(w, SC_DROP);
		else if (strcmp(sub, "AT_ChangeOwner") == 0)
			part_add(w, SC_PRIVILEGE);
	}
	w->access = SQL_ACCESS_WRITE;
	walk_fields(w, s, skip);
}

static void stmt_drop(Walk *w, const JNode *s)
{
	const char *type = j_str(s, "removeType");
	const JNode *o, *names, *a, *last;

	part_add(w, SC_DDL | SC_DROP | SC_DESTRUCTIVE);
	if (type == NULL || (strcmp(type, "OBJECT_TABLE") != 0 && strcmp(type, "OBJECT_VIEW") != 0 &&
			     strcmp(type, "OBJECT_MATVIEW") != 0 && strcmp(type, "OBJECT_FOREIGN_TABLE") != 0))
		return;
	for (o = j_first(j_get(s, "objects")); o != NULL; o = j_next(o)) {
		if (j_type(o, &names) == NULL)
			continue;
		a = NULL;
		for (last = j_first(j_get(names, "items")); last != NULL && last->next != NULL;
		     last = j_next(last))
			a = last;
		if (last != NULL && j_string_node(last) != NULL)
			table_add(w, a != NULL ? j_string_node(a) : NULL, j_string_node(last),
				  SQL_ACCESS_WRITE);
	}
}

static void stmt_call(Walk *w, const JNode *s)
{
	part_add(w, SC_PROCEDURAL);
	part_side_effect(w);
	if (j_get(s, "funccall") != NULL)
		walk_funccall(w, j_get(s, "funccall"));
}

/* CREATE FUNCTION, CREATE RULE, CREATE TRIGGER: what they hold runs later, not now. */
static void stmt_ddl_opaque(Walk *w, const JNode *s)
{
	part_add(w, SC_DDL);
	rangevar_add(w, j_get(s, "relation"), SQL_ACCESS_WRITE, false);
}

static void stmt_nowalk(Walk *w, const JNode *s)
{
	(void)w;
	(void)s;
}

/* ---- the statement table --------------------------------------------------- */

typedef void (*StmtFn)(Walk *w, const JNode *body);

typedef struct StmtKind {
	const char *name;        /* parse-tree node type */
	uint32_t classes;        /* classes the statement always has */
	StmtFn fn;               /* NULL: walk its fields, tables found are written */
} StmtKind;

#define DDL SC_DDL
#define PRIV SC_PRIVILEGE
#define ADM SC_ADMIN
#define DROPS (SC_DDL | SC_DROP | SC_DESTRUCTIVE)

/* Sorted by name (strcmp) for bsearch. */
static const StmtKind stmt_kinds[] = {
	{ "AlterCollationStmt", DDL, NULL },
	{ "AlterDatabaseRefreshCollStmt", DDL | ADM, NULL },
	{ "AlterDatabaseSetStmt", DDL | ADM, stmt_alter_set },
	{ "AlterDatabaseStmt", DDL | ADM, NULL },
	{ "AlterDefaultPrivilegesStmt", PRIV, NULL },
	{ "AlterDomainStmt", DDL, NULL },
	{ "AlterEnumStmt", DDL, NULL },
	{ "AlterEventTrigStmt", DDL, NULL },
	{ "AlterExtensionContentsStmt", DDL, NULL },
	{ "AlterExtensionStmt", DDL, NULL },
	{ "AlterFdwStmt", DDL, NULL },
	{ "AlterForeignServerStmt", DDL, NULL },
	{ "AlterFunctionStmt", DDL, NULL },
	{ "AlterObjectDependsStmt", DDL, NULL },
	{ "AlterObjectSchemaStmt", DDL, NULL },
	{ "AlterOpFamilyStmt", DDL, NULL },
	{ "AlterOperatorStmt", DDL, NULL },
	{ "AlterOwnerStmt", DDL | PRIV, NULL },
	{ "AlterPolicyStmt", DDL, NULL },
	{ "AlterPublicationStmt", DDL, NULL },
	{ "AlterRoleSetStmt", DDL | PRIV, stmt_alter_set },
	{ "AlterRoleStmt", DDL | PRIV, NULL },
	{ "AlterSeqStmt", DDL, NULL },
	{ "AlterStatsStmt", DDL, NULL },
	{ "AlterSubscriptionStmt", DDL, NULL },
	{ "AlterSystemStmt", ADM, stmt_alter_set },
	{ "AlterTSConfigurationStmt", DDL, NULL },
	{ "AlterTSDictionaryStmt", DDL, NULL },
	{ "AlterTableMoveAllStmt", DDL | ADM, NULL },
	{ "AlterTableSpaceOptionsStmt", DDL | ADM, NULL },
	{ "AlterTableStmt", 0, stmt_alter_table },
	{ "AlterTypeStmt", DDL, NULL },
	{ "AlterUserMappingStmt", DDL, NULL },
	{ "CallStmt", 0, stmt_call },
	{ "CheckPointStmt", ADM, NULL },
	{ "ClosePortalStmt", SC_SESSION, NULL },
	{ "ClusterStmt", ADM, NULL },
	{ "CommentStmt", DDL, NULL },
	{ "CompositeTypeStmt", DDL, NULL },
	{ "ConstraintsSetStmt", SC_TRANSACTION, NULL },
	{ "CopyStmt", 0, stmt_copy },
	{ "CreateAmStmt", DDL, NULL },
	{ "CreateCastStmt", DDL, NULL },
	{ "CreateConversionStmt", DDL, NULL },
	{ "CreateDomainStmt", DDL, NULL },
	{ "CreateEnumStmt", DDL, NULL },
	{ "CreateEventTrigStmt", DDL, stmt_nowalk },
	{ "CreateExtensionStmt", DDL, NULL },
	{ "CreateFdwStmt", DDL, NULL },
	{ "CreateForeignServerStmt", DDL, NULL },
	{ "CreateForeignTableStmt", DDL, NULL },
	{ "CreateFunctionStmt", DDL, stmt_nowalk },
	{ "CreateOpClassStmt", DDL, NULL },
	{ "CreateOpFamilyStmt", DDL, NULL },
	{ "CreatePLangStmt", DDL, NULL },
	{ "CreatePolicyStmt", DDL, NULL },
	{ "CreatePublicationStmt", DDL, NULL },
	{ "CreateRangeStmt", DDL, NULL },
	{ "CreateRoleStmt", DDL | PRIV, NULL },
	{ "CreateSchemaStmt", DDL, NULL },
	{ "CreateSeqStmt", DDL, NULL },
	{ "CreateStatsStmt", DDL, NULL },
	{ "CreateStmt", DDL, NULL },
	{ "CreateSubscriptionStmt", DDL, NULL },
	{ "CreateTableAsStmt", 0, stmt_create_table_as },
	{ "CreateTableSpaceStmt", DDL | ADM, NULL },
	{ "CreateTransformStmt", DDL, NULL },
	{ "CreateTrigStmt", 0, stmt_ddl_opaque },
	{ "CreateUserMappingStmt", DDL, NULL },
	{ "CreatedbStmt", DDL | ADM, NULL },
	{ "DeallocateStmt", 0, stmt_deallocate },
	{ "DeclareCursorStmt", 0, stmt_declare },
	{ "DefineStmt", DDL, NULL },
	{ "DeleteStmt", 0, stmt_delete },
	{ "DiscardStmt", 0, stmt_discard },
	{ "DoStmt", SC_PROCEDURAL, stmt_nowalk },
	{ "DropOwnedStmt", DROPS | PRIV, NULL },
	{ "DropRoleStmt", DROPS | PRIV, NULL },
	{ "DropStmt", 0, stmt_drop },
	{ "DropSubscriptionStmt", DROPS, NULL },
	{ "DropTableSpaceStmt", DROPS | ADM, NULL },
	{ "DropUserMappingStmt", DROPS, NULL },
	{ "DropdbStmt", DROPS | ADM, NULL },
	{ "ExecuteStmt", 0, stmt_execute },
	{ "ExplainStmt", 0, stmt_explain },
	{ "FetchStmt", SC_SESSION | SC_READ, NULL },
	{ "GrantRoleStmt", PRIV, NULL },
	{ "GrantStmt", PRIV, NULL },
	{ "ImportForeignSchemaStmt", DDL, NULL },
	{ "IndexStmt", DDL, NULL },
	{ "InsertStmt", 0, stmt_insert },
	{ "ListenStmt", SC_SESSION, NULL },
	{ "LoadStmt", ADM, NULL },
	{ "LockStmt", ADM, NULL },
	{ "MergeStmt", 0, stmt_merge },
	{ "NotifyStmt", SC_SESSION, NULL },
	{ "PrepareStmt", 0, stmt_prepare },
	{ "ReassignOwnedStmt", DDL | PRIV, NULL },
	{ "RefreshMatViewStmt", DDL | SC_WRITE, NULL },
	{ "ReindexStmt", ADM, NULL },
	{ "RenameStmt", DDL, NULL },
	{ "ReplicaIdentityStmt", DDL, NULL },
	{ "RuleStmt", 0, stmt_ddl_opaque },
	{ "SecLabelStmt", DDL, NULL },
	{ "SelectStmt", 0, stmt_select },
	{ "TransactionStmt", SC_TRANSACTION, NULL },
	{ "TruncateStmt", SC_TRUNCATE | SC_WRITE | SC_DESTRUCTIVE, NULL },
	{ "UnlistenStmt", SC_SESSION, NULL },
	{ "UpdateStmt", 0, stmt_update },
	{ "VacuumStmt", ADM, NULL },
	{ "VariableSetStmt", 0, stmt_set },
	{ "VariableShowStmt", SC_SESSION | SC_READ, NULL },
	{ "ViewStmt", DDL, NULL },
};

/* Anything else that is a statement: unknown here, so it gets classes that rules treat with care. */
static const StmtKind stmt_unknown = { "?", SC_DDL | SC_ADMIN, NULL };

static int stmt_kind_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const StmtKind *)elem)->name);
}

static const StmtKind *stmt_kind_find(const char *type)
{
	return bsearch(type, stmt_kinds, PGV_ARRAY_LEN(stmt_kinds), sizeof(stmt_kinds[0]), stmt_kind_cmp);
}

static bool is_stmt_type(const char *type)
{
	size_t n = strlen(type);

	return n > 4 && strcmp(type + n - 4, "Stmt") == 0 && strcmp(type, "SetOperationStmt") != 0;
}

/* Runs a statement node as a part of its own (inside EXPLAIN: in the EXPLAIN's part). */
static void dispatch_stmt(Walk *w, const char *type, const JNode *body)
{
	const StmtKind *k = stmt_kind_find(type);
	int prev = part_begin(w), saved_access = w->access;

	if (k == NULL)
		k = &stmt_unknown;
	part_add(w, k->classes);
	w->access = SQL_ACCESS_WRITE;
	if (k->fn != NULL)
		k->fn(w, body);
	else
		walk_fields(w, body, NULL);
	w->access = saved_access;
	part_end(w, prev);
}

/* Node types with nothing inside that matters: skipped without a look. */
static bool is_leaf_type(const char *t)
{
	switch (t[0]) {
	case 'S': return strcmp(t, "String") == 0;
	case 'I': return strcmp(t, "Integer") == 0;
	case 'A': return strcmp(t, "A_Const") == 0 || strcmp(t, "A_Star") == 0;
	case 'P': return strcmp(t, "ParamRef") == 0;
	case 'F': return strcmp(t, "Float") == 0;
	case 'B': return strcmp(t, "Boolean") == 0 || strcmp(t, "BitString") == 0;
	default: return false;
	}
}

static void walk_typed(Walk *w, const char *type, const JNode *body)
{
	int saved;

	if (is_leaf_type(type))
		return;
	if (strcmp(type, "ColumnRef") == 0) {
		walk_columnref(w, body);
		return;
	}
	if (strcmp(type, "FuncCall") == 0) {
		walk_funccall(w, body);
	} else if (strcmp(type, "A_Expr") == 0) {
		walk_aexpr(w, body);
	} else if (strcmp(type, "RangeVar") == 0) {
		rangevar_add(w, body, w->access, true);
	} else if (strcmp(type, "SelectStmt") == 0) {
		walk_select(w, body, false);
	} else if (strcmp(type, "TableLikeClause") == 0) {
		saved = w->access;
		w->access = SQL_ACCESS_READ;
		walk_fields(w, body, NULL);
		w->access = saved;
	} else if (is_stmt_type(type)) {
		dispatch_stmt(w, type, body);
	} else {
		walk_struct(w, body);
	}
}

/* ---- entry points ------------------------------------------------------------ */

void sqlinfo_build_reset(SqlBuild *b)
{
	sqlinfo_json_reset(b);
	if (b->set_cap > 4096) {
		free(b->set);
		b->set = NULL;
		b->set_cap = 0;
	} else if (b->set != NULL) {
		memset(b->set, 0, b->set_cap * sizeof(*b->set));
	}
	b->n_parts = b->n_tables = b->n_funcs = b->n_stmts = b->n_preps = b->n_ctes = 0;
	b->pool_len = 0;
	b->set_used = 0;
	sqlinfo_lineage_reset(b);
	b->literal_sensitive = false;
	b->changes_lexical = false;
	b->shadows_builtins = false;
	b->changes_search_path = false;
	b->oom = false;
	b->error = NULL;
}

void sqlinfo_build_free(SqlBuild *b)
{
	sqlinfo_json_free(b);
	free(b->parts);
	free(b->tables);
	free(b->funcs);
	free(b->stmts);
	free(b->preps);
	free(b->pool);
	free(b->set);
	free(b->ctes);
	sqlinfo_lineage_free(b);
	memset(b, 0, sizeof(*b));
}

static bool walk_stmts(SqlBuild *b, const JNode *root)
{
	Walk w = { b, -1, 0, SQL_ACCESS_READ, false, NULL };
	const JNode *raw, *body;
	const char *type;

	for (raw = j_first(j_get(root, "stmts")); raw != NULL && !b->oom; raw = j_next(raw)) {
		if (!GROW(b, b->stmts, b->n_stmts, b->cap_stmts))
			break;
		memset(&b->stmts[b->n_stmts], 0, sizeof(b->stmts[0]));
		b->stmts[b->n_stmts].offset = (int)j_num(raw, "stmt_location");
		b->stmts[b->n_stmts].len = (int)j_num(raw, "stmt_len");
		w.stmt = b->n_stmts++;
		w.part = -1;
		b->n_ctes = 0;
		if ((type = j_type(j_get(raw, "stmt"), &body)) != NULL) {
			dispatch_stmt(&w, type, body);
			sqlinfo_lineage_stmt(b, w.stmt, type, body);
			if (strcmp(type, "CopyStmt") == 0)
				sqlinfo_copy_stmt(b, w.stmt, body);
		}
	}
	return !b->oom;
}

bool sqlinfo_tree_analyze(SqlBuild *b, char *json)
{
	const JNode *root = sqlinfo_json_parse(b, json);

	if (root == NULL)
		return false;
	b->work = 0;
	b->work_max = SQLINFO_WORK_BASE + SQLINFO_WORK_PER_NODE * b->n_jnodes;
	if (root->type != J_OBJ) {
		b->error = "statement could not be analysed";
		return false;
	}
	return walk_stmts(b, root);
}
