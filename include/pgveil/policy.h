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
} Decision;

/*
 * Decides `n_parts` parts (a statement's parts, plus the bodies of the
 * prepared statements it EXECUTEs). rs may be NULL (no rules: every part
 * gets def). A statement with no parts at all (empty query) is allowed.
 */
Decision policy_decide(const RuleSet *rs, DefaultAction def, const Identity *id,
		       const SqlPart *const *parts, int n_parts);

/*
 * The message a blocked or held statement is reported with, written to buf:
 * the rule's MESSAGE, or a default naming the rule ("statement blocked by
 * rule rules/default.rules:12 (BLOCK DDL, PRIVILEGE)") or default_action.
 */
const char *policy_message(const Decision *d, char *buf, size_t buflen);

/* True when a table of the part is named by the rule's ON list (for grants: same tables). */
bool policy_table_matches(const RuleTable *rt, const SqlTable *t);

#endif
