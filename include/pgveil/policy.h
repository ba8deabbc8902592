/* SPDX-License-Identifier: MIT */
/*
 * Statement policy: the parts of a statement (sqlinfo) x the RuleSet x the
 * caller's identity -> allow, block or hold, with the deciding rule. Policy
 * and function rules are tried top to bottom for each part and the first
 * that matches decides that part; a part no rule matches gets
 * default_action. The statement's decision is the most severe of its parts'
 * (block > hold > allow). Pure functions: no I/O, no state.
 */
#ifndef PGVEIL_POLICY_H
#define PGVEIL_POLICY_H

#include "pgveil/common.h"
#include "pgveil/config.h"
#include "pgveil/jwtauth.h"
#include "pgveil/rules.h"
#include "pgveil/sqlinfo.h"

typedef enum { DECISION_ALLOW = ACTION_ALLOW, DECISION_BLOCK = ACTION_BLOCK, DECISION_HOLD = ACTION_HOLD } DecisionKind;

typedef struct Decision {
	DecisionKind action;
	const Rule *rule;      /* the deciding rule (points into the RuleSet), NULL = default_action */
	int part;              /* index of the part that decided */
	bool several_holds;    /* parts are held by more than one rule (or rule and default_action):
				  a grant for one rule cannot cover the statement */
} Decision;

/*
 * Decides `n_parts` parts (a statement's parts, plus the bodies of the
 * prepared statements it EXECUTEs). rs may be NULL (no rules: every part
 * gets def). A statement with no parts at all (empty query) is allowed
 * (rule NULL, part -1). path_default: the session's search_path is still
 * the server's default (see policy_table_matches). No allocation.
 */
Decision policy_decide(const RuleSet *rs, DefaultAction def, const Identity *id,
		       const SqlPart *const *parts, int n_parts, bool path_default);

/*
 * The message a blocked or held statement is reported with, written to buf:
 * the rule's MESSAGE, or a default naming the rule ("statement blocked by
 * rule rules/default.rules:12: BLOCK DDL, PRIVILEGE") or default_action
 * ("statement blocked by default_action = block"). Returns buf.
 */
const char *policy_message(const Decision *d, char *buf, size_t buflen);

/*
 * True when the policy or function rule `r` applies to part `p` of a
 * statement of caller `id` (FOR, classes and ON; or one of its functions).
 * Mask rules never match. This is the test policy_decide makes for each rule.
 */
bool policy_rule_matches(const Rule *r, const Identity *id, const SqlPart *p, bool path_default);

/*
 * True when table t of a statement is named by the ON entry rt of a rule
 * with `action`. Names compare exactly; "*" names every table of its schema.
 * A table written without schema may be in any schema of the search_path:
 * for BLOCK and HOLD it matches an entry of any schema (fail closed). For
 * ALLOW it matches only entries of schema "public" (not pg_* names, which
 * pg_catalog holds), and only while path_default: the session has done
 * nothing that may change its search_path from the server's default,
 * "$user", public (sqlinfo's StmtInfo.changes_search_path, startup
 * parameters). Otherwise it matches no ALLOW entry.
 */
bool policy_table_matches(const RuleTable *rt, const SqlTable *t, RuleAction action, bool path_default);

/* ---- masking (src/policy_mask.c) ------------------------------------------------------ */

struct CatSnap;

/* What the masks say of one statement for one caller. */
typedef struct MaskVerdict {
	bool blocked;          /* the statement must not run */
	char why[512];         /* blocked: the message, naming the column (or function, table) and the use */
	bool reads_masked;     /* reads a column masked for the caller anywhere, or touches a relation that has one
				  (errors echo rows): scrub the server's errors and notices */
} MaskVerdict;

/*
 * Checks statement `info` against the masks reaching the caller `id` in
 * catalog snapshot `cat` (ARCHITECTURE "Masking: the security model", doc/masking.md):
 *  - a derived use of a masked column (any output that is not a plain copy
 *    of it: expressions, casts, functions, aggregates, whole-row
 *    references, set operations; a function argument; an operand of any
 *    expression, wherever its result goes (SQL_USE_EXPRESSION); a view or
 *    generated column computed from it, read anywhere) blocks;
 *  - a bound reference to a column a relation with masks does not have
 *    (`t.f` calling f on the whole row, or a column newer than the
 *    snapshot) blocks; so does reading a relation a mask rule applying to
 *    the caller names a column of that it no longer has (CatRel.broken);
 *  - a predicate on a masked column blocks unless predicates_allow (then a
 *    condition may compare the plain column, nothing more);
 *  - moving masked data into stored data (INSERT ... SELECT, UPDATE ... SET,
 *    MERGE, CREATE TABLE AS, SELECT INTO, COPY to a file) blocks;
 *  - for a caller with masks (catalog_caller_has_masks): DO, functions that
 *    are not built in or may not be (catalog_resolve_function: a call of a
 *    built-in's name, not qualified with pg_catalog, when a user-defined
 *    function of that name exists in any schema, or when the catalog could
 *    not be read), pg_notify, set_config, large-object functions,
 *    built-ins that run SQL given as text (query_to_xml, ...), catalog
 *    statistics (pg_stats, pg_statistic, ...), other sessions' statement
 *    texts (pg_stat_activity.query, ...), CREATE TABLE AS EXECUTE, DDL on
 *    a relation with masked columns and DDL that names no table (ALTER
 *    SCHEMA ... RENAME: what it changes is not known) block;
 *  - COPY ... TO STDOUT in binary of masked columns blocks.
 * A column is matched by name as the statement writes it: an unqualified
 * table may be one of any schema. cat NULL means there are no masks: the
 * statement passes. A snapshot that records a failure to read the catalog
 * blocks every statement that touches a table (the masks cannot be known),
 * and counts every caller as one with masks. Does not allocate.
 */
void policy_mask_check(const StmtInfo *info, const struct CatSnap *cat, const Identity *id, bool predicates_allow,
		       MaskVerdict *out);

#endif
