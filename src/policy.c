/* SPDX-License-Identifier: MIT */
/*
 * Statement policy: what happens to a statement, from its parts (sqlinfo),
 * the RuleSet and the caller's identity. For each part the policy and
 * function rules are tried in file order and the first that matches decides
 * it; the statement gets the most severe decision of its parts. This module
 * owns the matching semantics (FOR, classes, ON tables with schemas and
 * wildcards, function names with and without schema) and the messages that
 * name the deciding rule. Pure functions over immutable data: no I/O, no
 * allocation, callable from any thread.
 */
#include "pgveil/policy.h"

#include <stdio.h>
#include <string.h>

/* Block is worse than hold, which is worse than allow. */
static int severity(DecisionKind k)
{
	switch (k) {
	case DECISION_BLOCK: return 2;
	case DECISION_HOLD: return 1;
	default: return 0;
	}
}

bool policy_table_matches(const RuleTable *rt, const SqlTable *t, RuleAction action, bool path_default)
{
	if (strcmp(rt->name, "*") != 0 && strcmp(rt->name, t->name) != 0)
		return false;
	if (t->schema != NULL)
		return strcmp(rt->schema, t->schema) == 0;
	if (action != RULE_ALLOW)
		return true;
	/*
	 * ALLOW takes an unqualified name as public's, which is where the default
	 * search_path finds a table, except that pg_catalog is searched first:
	 * every relation there is named pg_*. Once the session may have changed
	 * its search_path, an unqualified name may be any schema's: no ALLOW
	 * entry lists it.
	 */
	return path_default && strcmp(rt->schema, "public") == 0 && strncmp(t->name, "pg_", 3) != 0;
}

static bool table_listed(const Rule *r, const SqlTable *t, bool path_default)
{
	for (int i = 0; i < r->n_tables; i++)
		if (policy_table_matches(&r->tables[i], t, r->action, path_default))
			return true;
	return false;
}

/*
 * The ON list: any rule matches when it has none. BLOCK and HOLD need one of
 * the part's tables listed; ALLOW needs all of them listed, and at least one
 * (a part that touches no table, DO or ALTER SYSTEM, is not "on" a table).
 */
static bool on_matches(const Rule *r, const SqlPart *p, bool path_default)
{
	if (r->n_tables == 0)
		return true;
	for (int i = 0; i < p->n_tables; i++) {
		bool listed = table_listed(r, &p->tables[i], path_default);

		if (r->action != RULE_ALLOW && listed)
			return true;
		if (r->action == RULE_ALLOW && !listed)
			return false;
	}
	return r->action == RULE_ALLOW && p->n_tables > 0;
}

/*
 * Does a call (as the statement wrote it: "name" or "schema.name") name the
 * rule's function? An unqualified rule name matches the name in any schema.
 * A qualified one matches that exact name, and an unqualified call when the
 * schema is pg_catalog (searched first) or, for BLOCK and HOLD, always: the
 * call could resolve to that schema through the search_path (fail closed).
 */
static bool function_matches(const char *rule_fn, const char *call, RuleAction action)
{
	const char *rdot = strchr(rule_fn, '.');
	const char *cdot = strchr(call, '.');

	if (rdot == NULL)
		return strcmp(rule_fn, cdot ? cdot + 1 : call) == 0;
	if (cdot != NULL)
		return strcmp(rule_fn, call) == 0;
	if (strcmp(rdot + 1, call) != 0)
		return false;
	return action != RULE_ALLOW ||
	       ((size_t)(rdot - rule_fn) == strlen("pg_catalog") && strncmp(rule_fn, "pg_catalog", 10) == 0);
}

static bool functions_match(const Rule *r, const SqlPart *p)
{
	for (int i = 0; i < p->n_functions; i++)
		for (int j = 0; j < r->functions.n; j++)
			if (function_matches(r->functions.items[j], p->functions[i], r->action))
				return true;
	return false;
}

bool policy_rule_matches(const Rule *r, const Identity *id, const SqlPart *p, bool path_default)
{
	if (r->kind == RULE_MASK)
		return false;
	if (r->has_for && !rules_who_matches(&r->for_who, id))
		return false;
	if (r->kind == RULE_FUNCTION)
		return functions_match(r, p);
	return (p->classes & r->classes) != 0 && on_matches(r, p, path_default);
}

/* The first rule that matches one part, or default_action. */
static Decision decide_part(const RuleSet *rs, DefaultAction def, const Identity *id, const SqlPart *p,
			    int index, bool path_default)
{
	if (rs != NULL)
		for (int i = 0; i < rs->n_rules; i++)
			if (policy_rule_matches(&rs->rules[i], id, p, path_default))
				return (Decision){ (DecisionKind)rs->rules[i].action, &rs->rules[i], index, false };
	return (Decision){ (DecisionKind)def, NULL, index, false };
}

Decision policy_decide(const RuleSet *rs, DefaultAction def, const Identity *id, const SqlPart *const *parts,
		       int n_parts, bool path_default)
{
	Decision best = { DECISION_ALLOW, NULL, -1, false };
	const Rule *first_hold = NULL;
	bool any_hold = false, several = false;

	for (int i = 0; i < n_parts; i++) {
		Decision d = decide_part(rs, def, id, parts[i], i, path_default);

		if (d.action == DECISION_HOLD) {
			several = several || (any_hold && d.rule != first_hold);
			if (!any_hold)
				first_hold = d.rule;
			any_hold = true;
		}
		if (i == 0 || severity(d.action) > severity(best.action))
			best = d;
		if (best.action == DECISION_BLOCK)
			break; /* nothing is more severe */
	}
	best.several_holds = several;
	return best;
}

const char *policy_message(const Decision *d, char *buf, size_t buflen)
{
	static const char *const what[] = {
		[DECISION_ALLOW] = "allowed",
		[DECISION_BLOCK] = "blocked",
		[DECISION_HOLD] = "held for approval",
	};
	static const char *const action[] = {
		[DECISION_ALLOW] = "allow",
		[DECISION_BLOCK] = "block",
		[DECISION_HOLD] = "hold",
	};
	int k = ((unsigned)d->action <= DECISION_HOLD) ? (int)d->action : DECISION_BLOCK;

	if (buflen == 0)
		return buf;
	if (d->rule != NULL && d->rule->message != NULL)
		snprintf(buf, buflen, "%s", d->rule->message);
	else if (d->rule != NULL)
		snprintf(buf, buflen, "statement %s by rule %s: %s", what[k], d->rule->where, d->rule->text);
	else
		snprintf(buf, buflen, "statement %s by default_action = %s", what[k], action[k]);
	return buf;
}
