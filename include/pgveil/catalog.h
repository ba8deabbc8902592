/* SPDX-License-Identifier: MIT */
/*
 * The server's catalog as masking needs it, per [databases] entry: every
 * relation (table OID -> schema, name, kind, columns by attnum with their
 * types, inheritance parents, view definitions) and, for the current rules,
 * which MASK rules reach each column. A rule names schema.table.column; it
 * reaches that column, the same-named column of every partition and
 * inheritance child (at any depth) and of every ancestor (whose scans return
 * the child's rows), and every view column that reads it:
 * unchanged (a copy: the rule masks the view column too) or computed (the
 * view column is derived from a masked column: reading it is a derived use).
 * Views are followed through their definitions, views of views included.
 * Generated columns count like view columns computed from the columns
 * their expression reads.
 * It also lists the user-defined functions (every schema but pg_catalog and
 * the temporary ones), by schema and name: a call pgveil takes for a
 * built-in may reach one of them instead (CatFnKind).
 *
 * A snapshot (CatSnap) is immutable and reference-counted; a session keeps
 * the one it decided a statement with. Snapshots are built on the catalog
 * thread, which runs the catalog queries on pgveil's own connection to each
 * server database (never in an agent's session), at startup, on reload,
 * every catalog_refresh, and when a session asks because a RowDescription
 * names a table OID the snapshot does not know. The thread exists only
 * while the rules have MASK rules.
 *
 * catalog_snap_new, catalog_snap_add_* and catalog_snap_finish build a
 * snapshot from rows; the catalog thread uses them, and unit tests build
 * snapshots without a server.
 */
#ifndef PGVEIL_CATALOG_H
#define PGVEIL_CATALOG_H

#include "pgveil/common.h"
#include "pgveil/config.h"
#include "pgveil/jwtauth.h"
#include "pgveil/rules.h"

struct event;

/* A MASK rule reaching a column. */
typedef struct CatMask {
	const Rule *rule;      /* a RULE_MASK of the snapshot's ruleset */
	bool derived;          /* the column is computed from the rule's column (a view), not a copy of it */
	bool type_ok;          /* the rule's function can mask the column's type (mask_check_type); false: mask with null() */
} CatMask;

typedef struct CatColumn {
	char *name;            /* NULL: a dropped column */
	uint32_t type_oid;     /* pg_attribute.atttypid with domains resolved to their base type (what RowDescription shows) */
	int32_t typmod;
	bool generated;        /* GENERATED ALWAYS AS (...): computed from the row's other columns; `COPY t TO` leaves it out */
	char *generation;      /* generated: its expression (pg_get_expr()), NULL when unknown */
	int n_masks;
	CatMask *masks;        /* the rules reaching it, in rule order; a rule appears at most once */
} CatColumn;

typedef struct CatRel {
	uint32_t oid;
	char *schema;
	char *name;
	char kind;             /* pg_class.relkind: 'r' table, 'p' partitioned, 'v' view, 'm' materialized view, 'f' foreign */
	int n_columns;         /* the highest attnum */
	CatColumn *columns;    /* columns[attnum - 1] */
	int n_parents;
	uint32_t *parents;     /* direct parents (pg_inherits: partitions and inheritance children) */
	char *viewdef;         /* 'v' and 'm': pg_get_viewdef() with every relation schema-qualified; else NULL */
	bool has_masks;        /* a column has n_masks > 0 */
	int n_broken;
	const Rule **broken;   /* MASK rules naming a column their relation no longer has (renamed, dropped), when this
				  is that relation, one of its partitions, inheritance children or ancestors, or a view
				  reading one of them: reading it is refused to the callers a rule applies to */
} CatRel;

typedef struct CatSnap {
	int refcount;          /* atomic: catalog_snap_ref/unref */
	char *database;        /* the [databases] name */
	uint64_t version;      /* increases with every snapshot of this database */
	uint64_t cfg_gen;      /* config_generation() whose rules the masks come from */
	RuleSet *rules;        /* a reference: the rules masks point into */
	char *error;           /* non-NULL: the catalog could not be read (why); no relations */
	int n_rels;
	CatRel *rels;          /* in no particular order */
	int n_functions;       /* user-defined functions, distinct (schema, name) (kept in the index) */
	int n_problems;
	char **problems;       /* rules that could not be applied as written, for the log: "file:line: reason" */
	void *index;           /* private lookup structures */
} CatSnap;

/* ---- building a snapshot ---------------------------------------------------------- */

/* An empty snapshot for `database` whose masks will come from `rules` (may be NULL: no masks). */
CatSnap *catalog_snap_new(const char *database, RuleSet *rules, uint64_t cfg_gen) PGV_WARN_UNUSED;
/* Adds relation `oid`; viewdef may be NULL. False when out of memory. */
bool catalog_snap_add_rel(CatSnap *s, uint32_t oid, const char *schema, const char *name, char kind,
			  const char *viewdef) PGV_WARN_UNUSED;
/*
 * Adds column `attnum` (>= 1) of relation `oid`, added before; name NULL for
 * a dropped column. A column of an unknown relation is ignored; attnums
 * never added count as dropped.
 */
bool catalog_snap_add_column(CatSnap *s, uint32_t oid, int attnum, const char *name, uint32_t type_oid,
			     int32_t typmod) PGV_WARN_UNUSED;
/*
 * Marks column `attnum` of relation `oid` (both added before; an unknown
 * one is ignored) as generated (pg_attribute.attgenerated), computed by
 * `expr`: pg_get_expr() of its default, with names qualified as in view
 * definitions; NULL when unknown (it then counts as computed from every
 * column of its relation). catalog_snap_finish treats it like a view
 * column: a plain copy of a masked column (`GENERATED ALWAYS AS (email)`)
 * is masked by the same rule, anything else computed from one is derived.
 * False when out of memory.
 */
bool catalog_snap_set_generated(CatSnap *s, uint32_t oid, int attnum, const char *expr) PGV_WARN_UNUSED;
/*
 * Records that `child` (added before) inherits from `parent` (a partition or
 * an inheritance child); the parent may be added later.
 */
bool catalog_snap_add_parent(CatSnap *s, uint32_t child, uint32_t parent) PGV_WARN_UNUSED;
/*
 * Records a user-defined function: `name` (pg_proc.proname, as stored) in
 * `schema`; overloads and repeats are one entry. False when out of memory
 * (or the snapshot is finished, or a name is NULL).
 */
bool catalog_snap_add_function(CatSnap *s, const char *schema, const char *name) PGV_WARN_UNUSED;
/*
 * Computes where the rules' masks reach and builds the indexes. A rule
 * naming a column its (existing) relation does not have fails closed: the
 * relation, its partitions, inheritance children and ancestors, and every
 * view reading one of them list it in `broken`. A rule
 * naming a relation or column that does not exist, a view definition that
 * cannot be analysed (its columns then count as derived from every masked
 * column it reads, or, when it cannot be parsed or runs code that is not
 * built in, catalog_resolve_function saying so of a call in it, from every
 * masked column of the database), a mask function
 * that cannot apply to the column's type (type_ok false; reported once per
 * rule and type): each adds a line to `problems`. False only when out of
 * memory (the snapshot is then only fit for catalog_snap_unref).
 */
bool catalog_snap_finish(CatSnap *s) PGV_WARN_UNUSED;
/* A snapshot that records a failure to read the catalog. */
CatSnap *catalog_snap_failed(const char *database, uint64_t cfg_gen, const char *why) PGV_WARN_UNUSED;

CatSnap *catalog_snap_ref(CatSnap *s);
void catalog_snap_unref(CatSnap *s);

/* ---- lookups (finished snapshots) --------------------------------------------------- */

/* The relation with `oid`, or NULL. */
const CatRel *catalog_rel(const CatSnap *s, uint32_t oid);
/*
 * The relations named `name` in `schema`, or in any schema when schema is
 * NULL (an unqualified name may be any of them: the session's search_path
 * is not known). Up to `max` are stored in out; returns how many there are.
 */
int catalog_find_rels(const CatSnap *s, const char *schema, const char *name, const CatRel **out, int max);
/*
 * Every relation named `name`, in any schema, sorted by schema: *n of them
 * from the returned pointer, which points into the snapshot (no copy, no
 * limit). NULL with *n 0 when there is none.
 */
const CatRel *const *catalog_rels_named(const CatSnap *s, const char *name, int *n);
/* The attnum of column `name` of rel (dropped columns never match), 0 when none. */
int catalog_attnum(const CatRel *rel, const char *name);
/* The column of (oid, attnum), or NULL when either is unknown or the column was dropped. */
const CatColumn *catalog_column(const CatSnap *s, uint32_t oid, int attnum);

/*
 * True when the snapshot has a user-defined function `name` in `schema`
 * (NULL: in any schema). Names compare exactly (as stored: case kept).
 */
bool catalog_user_function(const CatSnap *s, const char *schema, const char *name);

/* What a function call may run (catalog_resolve_function). */
typedef enum {
	CAT_FN_BUILTIN,        /* PostgreSQL's own function of that name (sqlinfo_is_builtin_function), and nothing else can answer the call */
	CAT_FN_SHADOWED,       /* a built-in's name, but a user-defined function of that name may answer the call instead */
	CAT_FN_NOT_BUILTIN,    /* not a built-in: a user-defined function, or no function pgveil knows */
} CatFnKind;

/*
 * How the server may resolve a call of `call`, a function name as
 * SqlPart.functions lists it ("name" or "schema.name"), without knowing the
 * session's search_path or the arguments' types:
 *  - "pg_catalog.name": the built-in when PostgreSQL has one of that name;
 *  - "schema.name": never a built-in;
 *  - "name": the built-in when PostgreSQL has one, unless a user-defined
 *    function of that name exists in any schema (search_path may put its
 *    schema first, or its argument types may match better): SHADOWED.
 * sqlinfo writes a quoted name's dots as they are, so "pg_catalog.upper"
 * may also be the call "pg_catalog.upper"() of a user function named so:
 * that too is SHADOWED. For SHADOWED, *schema and *name (when not NULL) are
 * set to one such user function (pointing into s); otherwise they are left
 * alone. s may be NULL or a failed snapshot: no user functions are known.
 */
CatFnKind catalog_resolve_function(const CatSnap *s, const char *call, const char **schema, const char **name);

/* True when mask rule r applies to the caller: FOR (when given) matches and UNLESS (when given) does not. */
bool catalog_mask_applies(const Rule *r, const Identity *id);
/*
 * What the masks reaching column c mean for the caller: the first
 * non-derived mask that applies (NULL: the values pass), and in *derived
 * whether a derived mask applies (reading the column is a derived use).
 * The returned mask's type_ok says whether its function suits the column.
 */
const CatMask *catalog_mask_for(const CatColumn *c, const Identity *id, bool *derived);
/* True when some mask rule of `rules` applies to the caller: the caller "has masks". */
bool catalog_caller_has_masks(const RuleSet *rules, const Identity *id);

/* ---- the catalog thread ---------------------------------------------------------------- */

/*
 * Starts the thread when cfg's rules have MASK rules and loads every
 * database's catalog in the background, then again every
 * cfg->catalog_refresh (0: never; a database whose load is under way then
 * is skipped). Without MASK rules it does nothing (and catalog_get returns
 * NULL). False when the thread cannot start.
 */
bool catalog_start(Config *cfg) PGV_WARN_UNUSED;
/*
 * A new configuration (reload): every database is loaded again under the
 * new rules, and the refresh timer restarts with its catalog_refresh;
 * starts the thread if needed.
 */
void catalog_reconfigure(Config *cfg);
/* Stops the thread and drops every snapshot. */
void catalog_stop(void);
/* The latest snapshot of `database` (a reference), or NULL when there is none yet. */
CatSnap *catalog_get(const char *database);
/*
 * Asks for a snapshot of `database` newer than version `have` (0: any) and
 * activates `wake` (an event of the caller's base) once one is published,
 * failed ones included. A load already under way that started after the
 * request counts; requests are merged. Returns false when no load can be
 * asked for (thread not running, out of memory): the caller fails closed.
 */
bool catalog_request(const char *database, uint64_t have, struct event *wake) PGV_WARN_UNUSED;
/* Forgets every request waking `wake` (its session ends). After it returns, wake is never activated. */
void catalog_forget(struct event *wake);

#endif
