/* SPDX-License-Identifier: MIT */
/*
 * Statement analysis: SQL text -> StmtInfo, from libpg_query's parse tree
 * (the real PostgreSQL parser). A StmtInfo lists the top-level statements
 * of the text and their "parts": every command that runs (a top-level
 * statement, a data-modifying CTE, the target of EXPLAIN ANALYZE, the body
 * of PREPARE / DECLARE CURSOR / CREATE TABLE AS / COPY (query)), each with
 * its statement classes, the tables it reads and writes and the functions it
 * calls. Results are cached per thread by the statement's normalized form
 * (literals taken out, computed from the real lexer's tokens). This is the
 * only module that includes pg_query.h.
 */
#ifndef PGVEIL_SQLINFO_H
#define PGVEIL_SQLINFO_H

#include "pgveil/common.h"

/* Statement classes (INTERFACE §4), one bit each. */
typedef enum {
	SC_SELECT = 1u << 0,
	SC_INSERT = 1u << 1,
	SC_UPDATE = 1u << 2,
	SC_DELETE = 1u << 3,
	SC_MERGE = 1u << 4,
	SC_TRUNCATE = 1u << 5,
	SC_COPY = 1u << 6,
	SC_READ = 1u << 7,
	SC_WRITE = 1u << 8,
	SC_DDL = 1u << 9,
	SC_DROP = 1u << 10,
	SC_DESTRUCTIVE = 1u << 11,
	SC_PRIVILEGE = 1u << 12,
	SC_ADMIN = 1u << 13,
	SC_SESSION = 1u << 14,
	SC_TRANSACTION = 1u << 15,
	SC_PROCEDURAL = 1u << 16,
} StmtClass;

#define SC_ALL ((1u << 17) - 1)

/* How a part touches a table. */
#define SQL_ACCESS_READ 1
#define SQL_ACCESS_WRITE 2

typedef struct SqlTable {
	char *schema;    /* as written (already case-folded by the parser), NULL when unqualified */
	char *name;      /* relation name */
	int access;      /* SQL_ACCESS_* bits */
} SqlTable;

/* One command that runs. */
typedef struct SqlPart {
	uint32_t classes;   /* StmtClass bits of this command */
	int stmt;           /* index of the top-level statement it belongs to */
	int n_tables;
	SqlTable *tables;   /* deduplicated (schema, name); access bits merged */
	int n_functions;
	char **functions;   /* functions called anywhere in the part: "name" or "schema.name", lower case as resolved by the parser */
} SqlPart;

/*
 * Column lineage (computed without the catalog; src/sqlinfo_lineage.c has
 * the model). A source column is named as written: `schema` NULL when the
 * table was unqualified, `table` the relation's name (never an alias or a
 * CTE: those are resolved to what they read), `column` a column name or
 * SQL_COLUMN_ALL ("*"): every column of the table (a star, a whole-row
 * reference, or a column the analysis cannot name, like one renamed by a
 * column alias list). A column the analysis cannot tie to one relation is
 * listed against every relation it may come from.
 */
#define SQL_COLUMN_ALL "*"

typedef struct SqlColumn {
	char *schema;       /* NULL when unqualified */
	char *table;        /* relation name, case-folded by the parser */
	char *column;       /* column name, or "*" (SQL_COLUMN_ALL) */
} SqlColumn;

typedef enum {
	SQL_OUT_DIRECT,     /* the output is one of its sources, unchanged (a plain reference, maybe through subqueries and CTEs) */
	SQL_OUT_DERIVED,    /* computed from its sources: any expression, cast, function, aggregate, whole row, set operation */
} SqlOutputKind;

/*
 * One output column of a statement's result, or, when `star` is set, an
 * unknown number (zero or more) of consecutive output columns: a `*` or
 * `t.*` the analysis cannot count. Once a star output is met, positions of
 * the following outputs are no longer known: a consumer must treat every
 * result column from there on as possibly coming from any source of any
 * later output (or block). A DIRECT star stands for columns of its one
 * source table, each unchanged.
 */
typedef struct SqlOutput {
	SqlOutputKind kind;
	bool star;             /* zero or more columns, see above */
	int n_sources;
	SqlColumn **sources;   /* deduplicated; may be empty (a constant) */
	bool no_generated;     /* a star of `COPY t TO`: t's columns less its generated ones (PostgreSQL leaves them out) */
} SqlOutput;

/* How a statement reads a column (SqlColumnUse.contexts bits). */
#define SQL_USE_OUTPUT 1u       /* flows into an output column the statement returns */
#define SQL_USE_PREDICATE 2u    /* decides which rows or in what order: WHERE, JOIN ON/USING, HAVING, CASE WHEN, ORDER BY, GROUP BY, DISTINCT, window PARTITION/ORDER BY, FILTER, UNION/INTERSECT/EXCEPT, IN/ANY, LIMIT; also any use the analysis does not model */
#define SQL_USE_WRITE_SOURCE 4u /* flows into stored data: INSERT ... SELECT/VALUES, UPDATE SET, MERGE, CREATE TABLE AS, SELECT INTO, COPY TO a file or program */
#define SQL_USE_FUNCTION_ARG 8u /* passed to a function call (aggregates and window functions included; operators are not function calls here) */
#define SQL_USE_WHOLE_ROW 16u   /* read as part of a whole-row reference: `t` as a value, `t.*` inside an expression, row_to_json(t) */
#define SQL_USE_EXPRESSION 32u  /* an operand of an expression the server may evaluate, wherever its value goes (even nowhere: EXPLAIN ANALYZE, a CTE no one reads): a cast, an operator, a function, a constructor (ARRAY, ROW, COALESCE, ...), a field or a subscript; not a plain reference, nor a plain column compared in a condition (`email = $1`, `ssn LIKE 'x%'`, IN, BETWEEN, IS NULL: the comparison itself) */

/* A column a statement reads, anywhere in it. */
typedef struct SqlColumnUse {
	SqlColumn *column;
	unsigned contexts;     /* SQL_USE_* bits; 0 = read where it flows nowhere (a subquery column no one uses) */
	bool bound;            /* some reference names this relation for sure: `t.c` (t a table or its alias), or an unqualified `c` no other relation in scope may hold. The relation then has column c, or the server fails, or (`t.c`) c is a function called on t's whole row */
} SqlColumnUse;

/*
 * COPY ... TO STDOUT: the form its rows take (SqlStmt.copy). `unusual` is
 * set when an option pgveil does not model is given: FORCE_QUOTE,
 * FORCE_NOT_NULL, FORCE_NULL, ENCODING, a delimiter, quote or escape that is
 * not one byte, a value that is not a constant, an unknown or repeated
 * option. The other fields may then not describe the rows.
 */
typedef enum { SQL_COPY_NONE, SQL_COPY_TEXT, SQL_COPY_CSV, SQL_COPY_BINARY } SqlCopyFormat;

typedef struct SqlCopyOut {
	SqlCopyFormat format;    /* SQL_COPY_NONE: the statement is not a COPY ... TO STDOUT */
	char delimiter;          /* DELIMITER, or the format's default ('\t' text, ',' csv) */
	char quote;              /* csv: QUOTE, default '"' */
	char escape;             /* csv: ESCAPE, default the quote */
	char *null_string;       /* the NULL option's string; NULL when not given: the format's default ("\\N" text, "" csv) */
	bool header;             /* HEADER (true, on, 1, match) */
	bool unusual;            /* options pgveil does not model (see above) */
} SqlCopyOut;

/* One top-level statement of the text. */
typedef struct SqlStmt {
	int offset;         /* byte offset of the statement in the text */
	int len;            /* its length in bytes (0 = to the end) */
	uint32_t classes;   /* union of its parts' classes */
	int n_outputs;      /* output columns described (see SqlOutput); 0 when the statement reads no column or returns no rows */
	SqlOutput *outputs; /* SELECT / VALUES / TABLE, RETURNING, COPY (query) TO STDOUT, COPY t TO STDOUT, DECLARE CURSOR's query, PREPARE's body; in order */
	int n_columns;
	SqlColumnUse *columns; /* every column the statement reads (data-modifying CTEs, EXPLAIN's and PREPARE's bodies included), deduplicated */
	SqlCopyOut copy;       /* COPY ... TO STDOUT (its outputs are the copied columns) */
} SqlStmt;

/* SQL-level prepared-statement operations the session must track. */
typedef enum {
	SQL_PREP_PREPARE,        /* PREPARE name AS body: parts [first, first+n) are the body */
	SQL_PREP_EXECUTE,        /* EXECUTE name: the session adds the body's parts */
	SQL_PREP_DEALLOCATE,     /* DEALLOCATE name */
	SQL_PREP_DEALLOCATE_ALL, /* DEALLOCATE ALL (and DISCARD ALL) */
} SqlPrepOp;

typedef struct SqlPrepRef {
	SqlPrepOp op;
	char *name;          /* prepared statement name (NULL for DEALLOCATE ALL) */
	int part_first;      /* PREPARE: first part of the body; EXECUTE: the part of the EXECUTE itself (its statement may be a CREATE TABLE AS EXECUTE) */
	int n_parts;         /* PREPARE: number of body parts */
} SqlPrepRef;

typedef struct StmtInfo {
	int refcount;            /* owned by the thread's cache and by each holder; see sqlinfo_ref/unref (not atomic: one thread) */
	char *error;             /* non-NULL: the text does not parse; the parser's message */
	int error_pos;           /* 1-based character position of the error, 0 when unknown */
	bool error_is_syntax;    /* `error` is the parser's (42601); false: refused for size, depth or complexity (54001) */
	uint32_t classes;        /* union over all parts */
	int n_stmts;
	SqlStmt *stmts;
	int n_parts;
	SqlPart *parts;
	int n_prep;
	SqlPrepRef *prep;
	bool literal_sensitive;  /* the analysis looked at a literal's value: cached by exact text only */
	bool shadows_builtins;   /* sets search_path with a schema before pg_catalog (or to a value not known): functions there take the place of built-ins of the same name (SET, set_config, UPDATE pg_settings; ALTER ROLE / DATABASE / SYSTEM ... SET for later sessions) */
	bool changes_search_path; /* may change which schema an unqualified name is found in for the rest of the session: SET / RESET search_path, role or session_authorization (SET LOCAL included), set_config() of those or of a name not known, UPDATE pg_settings; a part that runs code pgveil cannot see (PROCEDURAL: DO, CALL, a function not built in); a part that creates a temporary relation (DDL on pg_temp), which is searched first */
	bool changes_lexical;    /* sets standard_conforming_strings off, or client_encoding to an encoding pgveil does not read (or a setting not known to a value not known; the same statements as above): afterwards the server would split statements differently from pgveil */
	uint64_t fingerprint;    /* hash of the normalized form: equal for statements differing only in literals */
} StmtInfo;

/*
 * Analyses `len` bytes of SQL text (need not be NUL-terminated; trailing
 * zero bytes are ignored). Returns a StmtInfo with a reference for the
 * caller (release with sqlinfo_unref), or NULL when out of memory. A text
 * that does not parse gives a StmtInfo with `error` set and no parts; so
 * does one that is not analysed at all (error_pos 0): a zero byte inside
 * it, more than 256 MiB, or nesting deeper than the analysis follows. The
 * result may come from this thread's cache; its statement spans are always
 * those of this text.
 */
StmtInfo *sqlinfo_analyze(const char *sql, size_t len) PGV_WARN_UNUSED;

StmtInfo *sqlinfo_ref(StmtInfo *info);
void sqlinfo_unref(StmtInfo *info);

/*
 * Writes the normalized text (every literal replaced by $n, numbered after
 * the highest $n the text already uses) of `sql` to a new string the caller
 * frees with free(), or NULL when the lexer rejects the text (an unclosed
 * quote, a zero byte) / out of memory. Literals come from the real lexer, so
 * the result carries no literal (but the escape character after UESCAPE),
 * also for text that does not parse. For audit.
 */
char *sqlinfo_normalize(const char *sql, size_t len);

/*
 * Comma-separated class names in the order of the enum ("SELECT,READ"), no
 * spaces, into buf (NUL-terminated; names that do not fit are left out);
 * returns buf.
 */
const char *sqlinfo_class_names(uint32_t classes, char *buf, size_t buflen);

/* Parses a class name (case-insensitive, "ALL" included); returns 0 when unknown. */
uint32_t sqlinfo_class_from_name(const char *name, size_t len);

/* True when a search_path value ("a, pg_catalog") puts a schema before pg_catalog. */
bool sqlinfo_search_path_shadows(const char *value);

/* True when `name` ("name" or "pg_catalog.name") is a function built into PostgreSQL 15. */
bool sqlinfo_is_builtin_function(const char *name);

/* Drops this thread's cache (called when a worker exits). */
void sqlinfo_thread_cleanup(void);

/* Analyses of this thread answered from its cache / computed (for SHOW STATS and tests). */
uint64_t sqlinfo_cache_hits(void);
uint64_t sqlinfo_cache_misses(void);

/*
 * Sets how many entries this thread's cache holds (default 4096; 0 turns it
 * off). Takes effect at the next analysis, which starts from an empty cache
 * when the size changed.
 */
void sqlinfo_set_cache_capacity(int entries);

#endif
