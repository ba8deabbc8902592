/* SPDX-License-Identifier: MIT */
/*
 * The rules language (INTERFACE §4): a lexer and recursive-descent parser
 * for *.rules files -> an immutable, reference-counted RuleSet. Mask rules
 * are parsed and their functions' arguments checked here; policy and
 * function rules keep their file order (first match wins, see policy).
 * Every error is reported as "file:line:col: message".
 */
#ifndef PGVEIL_RULES_H
#define PGVEIL_RULES_H

#include "pgveil/common.h"
#include "pgveil/config.h"
#include "pgveil/jwtauth.h"

typedef enum { RULE_MASK, RULE_POLICY, RULE_FUNCTION } RuleKind;

/* What a policy or function rule does (same values as DefaultAction). */
typedef enum { RULE_ALLOW = ACTION_ALLOW, RULE_BLOCK = ACTION_BLOCK, RULE_HOLD = ACTION_HOLD } RuleAction;

typedef enum { WHO_ANYONE, WHO_GROUP, WHO_AGENT } WhoKind;

/* FOR / UNLESS: who a rule applies to. */
typedef struct RuleWho {
	WhoKind kind;
	NameList names;        /* group names or agent subjects; empty for ANYONE */
} RuleWho;

/* A table of an ON list: [schema .] (name | *). */
typedef struct RuleTable {
	char *schema;          /* "public" when not written */
	char *name;            /* "*" = every table of the schema */
} RuleTable;

typedef enum {
	MASK_REDACT, MASK_NULL, MASK_CONSTANT, MASK_PARTIAL, MASK_EMAIL, MASK_HASH, MASK_TRUNCATE, MASK_ROUND,
} MaskFn;

typedef enum { MASK_ARG_INT, MASK_ARG_STRING } MaskArgType;

typedef struct MaskArg {
	MaskArgType type;
	long long ival;        /* MASK_ARG_INT */
	char *sval;            /* MASK_ARG_STRING (unescaped) */
} MaskArg;

typedef struct Rule {
	RuleKind kind;
	RuleAction action;     /* policy and function rules */
	char *file;            /* file it came from */
	int line, col;         /* where its first keyword is (1-based) */
	char *where;           /* "file:line", how the rule is named to users and in the audit log */
	char *text;            /* the rule as written without its ';', comments out, whitespace collapsed, for SHOW RULES */
	uint32_t classes;      /* RULE_POLICY: StmtClass bits */
	int n_tables;          /* RULE_POLICY: ON list, 0 = any table */
	RuleTable *tables;
	NameList functions;    /* RULE_FUNCTION: "name" or "schema.name", lower case unless quoted */
	bool has_for;          /* FOR who given */
	RuleWho for_who;
	bool has_unless;       /* UNLESS who given (mask rules) */
	RuleWho unless_who;
	char *message;         /* MESSAGE 'text', or NULL */
	/* RULE_MASK */
	char *mask_schema;     /* "public" when not written */
	char *mask_table;
	char *mask_column;
	MaskFn mask_fn;
	int n_args;
	MaskArg *args;
} Rule;

typedef struct RuleSet {
	int refcount;          /* atomic; rules_ref/rules_unref */
	uint64_t version;      /* increases with every load in this process */
	int n_rules;
	Rule *rules;           /* in file order (files in name order), masks included */
} RuleSet;

/*
 * Loads `path`: a *.rules file, or a directory whose *.rules files are read
 * in name order (byte order; names starting with '.' and entries that are
 * not regular files are skipped; a directory without any gives an empty
 * set). An unreadable path is the error "path:0:0: cannot read: reason". Returns a new RuleSet (refcount 1), or NULL when there are
 * errors; then every error has been appended to *errout (malloc'd, one
 * "file:line:col: message\n" each) and *nerrors counts them.
 */
RuleSet *rules_load(const char *path, char **errout, int *nerrors) PGV_WARN_UNUSED;

/* The same for text in memory; `name` is used as the file name in errors. */
RuleSet *rules_parse_string(const char *name, const char *text, char **errout, int *nerrors) PGV_WARN_UNUSED;

/* The same for `len` bytes that need not be NUL-terminated (a NUL byte is an error). */
RuleSet *rules_parse_buffer(const char *name, const char *text, size_t len, char **errout,
			    int *nerrors) PGV_WARN_UNUSED;

/* Reference counting of a set; safe from any thread; NULL is ignored. */
RuleSet *rules_ref(RuleSet *rs);
void rules_unref(RuleSet *rs);

/*
 * True when the caller is among `who`: ANYONE matches everyone, GROUP any of
 * the caller's groups, AGENT the caller's subject (exact comparisons). A NULL
 * identity matches only ANYONE.
 */
bool rules_who_matches(const RuleWho *who, const Identity *id);

/* The mask function's name as written in rules ("partial"). */
const char *rules_mask_fn_name(MaskFn fn);

#endif
