/* SPDX-License-Identifier: MIT */
/*
 * Internal to the sqlinfo module: the builder that the parse-tree walker
 * (sqlinfo_tree.c) fills and that sqlinfo.c turns into one StmtInfo block.
 * The walker reads libpg_query's JSON parse tree as text; it never sees
 * pg_query.h. All strings the builder points to live in the JSON buffer
 * (decoded in place) or in the builder's own pool, until the next reset.
 */
#ifndef PGVEIL_SQLINFO_INT_H
#define PGVEIL_SQLINFO_INT_H

#include "pgveil/sqlinfo.h"

/* A part being built. */
typedef struct SqlPartB {
	uint32_t classes;        /* StmtClass bits */
	int stmt;                /* top-level statement index */
	bool side_effect;        /* something in it keeps it from being READ */
	bool want_read;          /* READ unless side_effect (SELECT, EXPLAIN) */
	int n_tables;            /* deduplicated counts */
	int n_functions;
} SqlPartB;

typedef struct SqlTableB {
	int part;
	const char *schema;      /* NULL when unqualified */
	const char *name;
	int access;              /* SQL_ACCESS_* */
} SqlTableB;

typedef struct SqlFuncB {
	int part;
	uint32_t name;           /* offset of the NUL-terminated name in the pool */
} SqlFuncB;

typedef struct SqlStmtB {
	int offset;              /* RawStmt stmt_location */
	int len;                 /* RawStmt stmt_len, 0 = to the end */
} SqlStmtB;

typedef struct SqlPrepB {
	SqlPrepOp op;
	const char *name;        /* NULL for DEALLOCATE ALL */
	int part_first;
	int n_parts;
} SqlPrepB;

/*
 * Growable arrays, kept across analyses by the thread (reset, not freed).
 * `oom` is sticky: once an append failed, the result is discarded.
 */
struct JNode;

typedef struct SqlBuild {
	struct JNode *nodes;     /* the JSON tree */
	int n_nodes, cap_nodes;
	SqlPartB *parts;
	int n_parts, cap_parts;
	SqlTableB *tables;
	int n_tables, cap_tables;
	SqlFuncB *funcs;
	int n_funcs, cap_funcs;
	SqlStmtB *stmts;
	int n_stmts, cap_stmts;
	SqlPrepB *preps;
	int n_preps, cap_preps;
	char *pool;              /* function names ("schema.name") */
	size_t pool_len, pool_cap;
	uint32_t *set;           /* open-addressing dedup set: index+1 of a table (even) or function (odd) */
	size_t set_cap, set_used;
	const char **ctes;       /* CTE names in scope while walking */
	int n_ctes, cap_ctes;
	bool literal_sensitive;  /* the result depends on a literal's value */
	bool oom;
	const char *error;       /* static message when the tree could not be walked (too deep, malformed) */
} SqlBuild;

/* Empties the builder for a new analysis (keeps its memory, trims what grew very large). */
void sqlinfo_build_reset(SqlBuild *b);

/* Frees the builder's memory. */
void sqlinfo_build_free(SqlBuild *b);

/*
 * Reads libpg_query's JSON parse tree `json` (modified in place: strings are
 * decoded where they stand and must stay alive while `b` is used) and fills
 * `b` with statements, parts, tables, functions and prepared-statement
 * operations. Returns false when out of memory (b->oom) or when the tree
 * could not be walked (b->error, a static string).
 */
bool sqlinfo_tree_analyze(SqlBuild *b, char *json);

#endif
