/* SPDX-License-Identifier: MIT */
/*
 * Catalog snapshots: building one from the server's catalog rows, working
 * out where each MASK rule reaches (the named column, the same-named column
 * of every partition and inheritance descendant and ancestor, every view and
 * materialized view column that reads it, views of views included), and the
 * lookups sessions make on a finished snapshot (by OID, by schema and name,
 * by attnum, which mask applies to a caller, which functions are the
 * user's). A snapshot owns its relations, columns and masks, its
 * user-defined functions, its strings (in one arena) and its indexes: an
 * open-addressing hash on OID, relations and functions sorted by (name,
 * schema). Once finished it is immutable and shared between threads by
 * reference count. The catalog thread (src/catalog_thread.c) fills
 * snapshots; nothing here does I/O.
 */
#include "pgveil/catalog.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/mask.h"
#include "pgveil/sqlinfo.h"

#define CAT_MAX_ATTNUM 1664        /* PostgreSQL's MaxTupleAttributeNumber */
#define ARENA_CHUNK (64 * 1024)    /* bytes of strings per arena chunk */

typedef struct ArenaChunk {
	struct ArenaChunk *next;
	size_t used, cap;
	char data[];
} ArenaChunk;

/* A user-defined function (strings in the arena). */
typedef struct CatFunc {
	const char *name;
	const char *schema;
} CatFunc;

/* The private part of a snapshot (CatSnap.index). */
typedef struct CatIndex {
	ArenaChunk *arena;         /* every string of the snapshot */
	CatFunc *funcs;            /* user-defined functions; sorted by (name, schema), distinct, once finished */
	int n_funcs, cap_funcs;
	bool funcs_sorted;         /* funcs is sorted (finish has begun): lookups may use it */
	int cap_rels;              /* allocated CatSnap.rels */
	uint32_t *oid_slots;       /* rel index + 1, open addressing by OID; 0 = empty */
	size_t oid_cap;            /* a power of two, at least twice n_rels */
	const CatRel **by_name;    /* every relation, sorted by (name, schema); built by finish */
	bool finished;
} CatIndex;

static uint64_t snap_versions;

/* ---- storage ------------------------------------------------------------------------ */

static char *arena_strdup(CatIndex *ix, const char *str)
{
	size_t len = strlen(str) + 1, cap;
	ArenaChunk *c = ix->arena;
	char *p;

	if (c == NULL || c->cap - c->used < len) {
		cap = len > ARENA_CHUNK ? len : ARENA_CHUNK;
		if ((c = malloc(sizeof(*c) + cap)) == NULL)
			return NULL;
		c->next = ix->arena;
		c->used = 0;
		c->cap = cap;
		ix->arena = c;
	}
	p = c->data + c->used;
	memcpy(p, str, len);
	c->used += len;
	return p;
}

static uint32_t oid_hash(uint32_t oid)
{
	oid ^= oid >> 16;
	oid *= 0x7feb352dU;
	oid ^= oid >> 15;
	oid *= 0x846ca68bU;
	return oid ^ (oid >> 16);
}

/* The index of relation `oid` in s->rels, or -1. */
static int rel_index(const CatSnap *s, uint32_t oid)
{
	const CatIndex *ix = s->index;
	size_t mask, i;
	uint32_t v;

	if (ix == NULL || ix->oid_cap == 0)
		return -1;
	mask = ix->oid_cap - 1;
	for (i = oid_hash(oid) & mask; (v = ix->oid_slots[i]) != 0; i = (i + 1) & mask)
		if (s->rels[v - 1].oid == oid)
			return (int)v - 1;
	return -1;
}

static void oid_slot_put(CatIndex *ix, const CatRel *rels, int idx)
{
	size_t mask = ix->oid_cap - 1, i = oid_hash(rels[idx].oid) & mask;

	while (ix->oid_slots[i] != 0)
		i = (i + 1) & mask;
	ix->oid_slots[i] = (uint32_t)idx + 1;
}

/* Makes room for one more relation (array and hash). */
static bool rels_reserve(CatSnap *s)
{
	CatIndex *ix = s->index;
	size_t cap;
	uint32_t *slots;
	CatRel *rels;
	int n;

	if (s->n_rels == ix->cap_rels) {
		n = ix->cap_rels == 0 ? 64 : ix->cap_rels * 2;
		if ((rels = realloc(s->rels, (size_t)n * sizeof(*rels))) == NULL)
			return false;
		s->rels = rels;
		ix->cap_rels = n;
	}
	if ((size_t)(s->n_rels + 1) * 2 <= ix->oid_cap)
		return true;
	cap = ix->oid_cap == 0 ? 128 : ix->oid_cap * 2;
	if ((slots = calloc(cap, sizeof(*slots))) == NULL)
		return false;
	free(ix->oid_slots);
	ix->oid_slots = slots;
	ix->oid_cap = cap;
	for (int i = 0; i < s->n_rels; i++)
		oid_slot_put(ix, s->rels, i);
	return true;
}

static bool problem_add(CatSnap *s, const char *fmt, ...) PGV_PRINTF(2, 3);

static bool problem_add(CatSnap *s, const char *fmt, ...)
{
	char buf[1024], **p;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if ((p = realloc(s->problems, (size_t)(s->n_problems + 1) * sizeof(*p))) == NULL)
		return false;
	s->problems = p;
	if ((p[s->n_problems] = strdup(buf)) == NULL)
		return false;
	s->n_problems++;
	return true;
}

/* ---- building ------------------------------------------------------------------------ */

static CatSnap *snap_alloc(const char *database, uint64_t cfg_gen)
{
	CatSnap *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->refcount = 1;
	s->cfg_gen = cfg_gen;
	s->version = __atomic_add_fetch(&snap_versions, 1, __ATOMIC_RELAXED);
	if ((s->index = calloc(1, sizeof(CatIndex))) == NULL ||
	    (s->database = strdup(database != NULL ? database : "")) == NULL) {
		catalog_snap_unref(s);
		return NULL;
	}
	return s;
}

CatSnap *catalog_snap_new(const char *database, RuleSet *rules, uint64_t cfg_gen)
{
	CatSnap *s = snap_alloc(database, cfg_gen);

	if (s != NULL)
		s->rules = rules_ref(rules);
	return s;
}

CatSnap *catalog_snap_failed(const char *database, uint64_t cfg_gen, const char *why)
{
	CatSnap *s = snap_alloc(database, cfg_gen);

	if (s == NULL)
		return NULL;
	((CatIndex *)s->index)->finished = true;
	if ((s->error = strdup(why != NULL && why[0] != '\0' ? why : "unknown error")) == NULL) {
		catalog_snap_unref(s);
		return NULL;
	}
	return s;
}

bool catalog_snap_add_rel(CatSnap *s, uint32_t oid, const char *schema, const char *name, char kind,
			  const char *viewdef)
{
	CatIndex *ix = s->index;
	CatRel *r;

	if (ix->finished || schema == NULL || name == NULL)
		return false;
	if (rel_index(s, oid) >= 0) /* listed twice: the first stays */
		return true;
	if (!rels_reserve(s))
		return false;
	r = &s->rels[s->n_rels];
	memset(r, 0, sizeof(*r));
	r->oid = oid;
	r->kind = kind;
	if ((r->schema = arena_strdup(ix, schema)) == NULL || (r->name = arena_strdup(ix, name)) == NULL ||
	    (viewdef != NULL && (r->viewdef = arena_strdup(ix, viewdef)) == NULL))
		return false;
	oid_slot_put(ix, s->rels, s->n_rels);
	s->n_rels++;
	return true;
}

bool catalog_snap_add_column(CatSnap *s, uint32_t oid, int attnum, const char *name, uint32_t type_oid,
			     int32_t typmod)
{
	CatIndex *ix = s->index;
	int i = rel_index(s, oid);
	CatColumn *cols, *c;
	CatRel *r;

	if (ix->finished)
		return false;
	if (i < 0 || attnum < 1 || attnum > CAT_MAX_ATTNUM) /* nothing to attach it to */
		return true;
	r = &s->rels[i];
	if (attnum > r->n_columns) {
		if ((cols = realloc(r->columns, (size_t)attnum * sizeof(*cols))) == NULL)
			return false;
		memset(cols + r->n_columns, 0, (size_t)(attnum - r->n_columns) * sizeof(*cols));
		r->columns = cols;
		r->n_columns = attnum;
	}
	c = &r->columns[attnum - 1];
	c->name = NULL;
	if (name != NULL && (c->name = arena_strdup(ix, name)) == NULL)
		return false;
	c->type_oid = type_oid;
	c->typmod = typmod;
	return true;
}

bool catalog_snap_set_generated(CatSnap *s, uint32_t oid, int attnum, const char *expr)
{
	CatIndex *ix = s->index;
	int i = rel_index(s, oid);
	CatColumn *c;

	if (ix->finished)
		return false;
	if (i < 0 || attnum < 1 || attnum > s->rels[i].n_columns)
		return true;
	c = &s->rels[i].columns[attnum - 1];
	c->generated = true;
	c->generation = NULL;
	return expr == NULL || (c->generation = arena_strdup(ix, expr)) != NULL;
}

bool catalog_snap_add_parent(CatSnap *s, uint32_t child, uint32_t parent)
{
	int i = rel_index(s, child);
	uint32_t *p;
	CatRel *r;

	if (((CatIndex *)s->index)->finished)
		return false;
	if (i < 0)
		return true;
	r = &s->rels[i];
	for (int k = 0; k < r->n_parents; k++)
		if (r->parents[k] == parent)
			return true;
	if ((p = realloc(r->parents, (size_t)(r->n_parents + 1) * sizeof(*p))) == NULL)
		return false;
	p[r->n_parents++] = parent;
	r->parents = p;
	return true;
}

bool catalog_snap_add_function(CatSnap *s, const char *schema, const char *name)
{
	CatIndex *ix = s->index;
	CatFunc *f;

	if (ix->finished || ix->funcs_sorted || schema == NULL || name == NULL)
		return false;
	if (ix->n_funcs == ix->cap_funcs) {
		int cap = ix->cap_funcs == 0 ? 64 : ix->cap_funcs * 2;

		if ((f = realloc(ix->funcs, (size_t)cap * sizeof(*f))) == NULL)
			return false;
		ix->funcs = f;
		ix->cap_funcs = cap;
	}
	f = &ix->funcs[ix->n_funcs];
	/* Rows come by schema: the previous function's schema string serves again. */
	if (ix->n_funcs > 0 && strcmp(f[-1].schema, schema) == 0)
		f->schema = f[-1].schema;
	else if ((f->schema = arena_strdup(ix, schema)) == NULL)
		return false;
	if ((f->name = arena_strdup(ix, name)) == NULL)
		return false;
	ix->n_funcs++;
	return true;
}

CatSnap *catalog_snap_ref(CatSnap *s)
{
	if (s != NULL)
		__atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
	return s;
}

static void index_free(CatIndex *ix)
{
	ArenaChunk *c, *next;

	if (ix == NULL)
		return;
	for (c = ix->arena; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	free(ix->oid_slots);
	free(ix->by_name);
	free(ix->funcs);
	free(ix);
}

void catalog_snap_unref(CatSnap *s)
{
	if (s == NULL || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	for (int i = 0; i < s->n_rels; i++) {
		for (int k = 0; k < s->rels[i].n_columns; k++)
			free(s->rels[i].columns[k].masks);
		free(s->rels[i].columns);
		free(s->rels[i].parents);
		free(s->rels[i].broken);
	}
	for (int i = 0; i < s->n_problems; i++)
		free(s->problems[i]);
	free(s->problems);
	free(s->rels);
	free(s->error);
	free(s->database);
	rules_unref(s->rules);
	index_free(s->index);
	free(s);
}

/* ---- lookups ----------------------------------------------------------------------- */

const CatRel *catalog_rel(const CatSnap *s, uint32_t oid)
{
	int i = s != NULL ? rel_index(s, oid) : -1;

	return i >= 0 ? &s->rels[i] : NULL;
}

static int name_cmp(const char *name, const char *schema, const CatRel *r)
{
	int c = strcmp(name, r->name);

	return c != 0 || schema == NULL ? c : strcmp(schema, r->schema);
}

static int by_name_cmp(const void *a, const void *b)
{
	const CatRel *ra = *(const CatRel *const *)a;

	return name_cmp(ra->name, ra->schema, *(const CatRel *const *)b);
}

/* The first entry of by_name not before (name, schema); schema NULL: the first named `name`. */
static size_t by_name_lower(const CatSnap *s, const char *schema, const char *name)
{
	const CatIndex *ix = s->index;
	size_t lo = 0, hi = (size_t)s->n_rels, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (name_cmp(name, schema, ix->by_name[mid]) > 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * The relations named `name` in `schema` (NULL: in any schema): *n of them
 * from the returned pointer into by_name. A schema is found by the binary
 * search, not by walking every relation of that name.
 */
static const CatRel *const *by_name_run(const CatSnap *s, const char *schema, const char *name, int *n)
{
	const CatIndex *ix = s != NULL ? s->index : NULL;
	size_t first, end;

	*n = 0;
	if (ix == NULL || ix->by_name == NULL || name == NULL)
		return NULL;
	first = by_name_lower(s, schema, name);
	for (end = first; end < (size_t)s->n_rels && name_cmp(name, schema, ix->by_name[end]) == 0; end++)
		;
	*n = (int)(end - first);
	return *n > 0 ? ix->by_name + first : NULL;
}

const CatRel *const *catalog_rels_named(const CatSnap *s, const char *name, int *n)
{
	return by_name_run(s, NULL, name, n);
}

int catalog_find_rels(const CatSnap *s, const char *schema, const char *name, const CatRel **out, int max)
{
	int n;
	const CatRel *const *run = by_name_run(s, schema, name, &n);

	for (int i = 0; i < n && i < max; i++)
		out[i] = run[i];
	return n;
}

int catalog_attnum(const CatRel *rel, const char *name)
{
	if (rel == NULL || name == NULL)
		return 0;
	for (int i = 0; i < rel->n_columns; i++)
		if (rel->columns[i].name != NULL && strcmp(rel->columns[i].name, name) == 0)
			return i + 1;
	return 0;
}

const CatColumn *catalog_column(const CatSnap *s, uint32_t oid, int attnum)
{
	const CatRel *r = catalog_rel(s, oid);

	if (r == NULL || attnum < 1 || attnum > r->n_columns || r->columns[attnum - 1].name == NULL)
		return NULL;
	return &r->columns[attnum - 1];
}

/* The first user function named `name` (funcs sorted by name), or n_funcs. */
static int func_lower(const CatIndex *ix, const char *name)
{
	int lo = 0, hi = ix->n_funcs, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (strcmp(ix->funcs[mid].name, name) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* A user function named `name` in `schema` (NULL: any), or NULL. */
static const CatFunc *func_find(const CatSnap *s, const char *schema, const char *name)
{
	const CatIndex *ix = s != NULL ? s->index : NULL;

	if (ix == NULL || !ix->funcs_sorted || name == NULL)
		return NULL;
	for (int i = func_lower(ix, name); i < ix->n_funcs && strcmp(ix->funcs[i].name, name) == 0; i++)
		if (schema == NULL || strcmp(ix->funcs[i].schema, schema) == 0)
			return &ix->funcs[i];
	return NULL;
}

bool catalog_user_function(const CatSnap *s, const char *schema, const char *name)
{
	return func_find(s, schema, name) != NULL;
}

CatFnKind catalog_resolve_function(const CatSnap *s, const char *call, const char **schema, const char **name)
{
	const CatFunc *f;

	if (strncmp(call, "information_schema.", 19) == 0 && sqlinfo_is_builtin_function(call))
		return CAT_FN_BUILTIN; /* PostgreSQL's own there */
	if (!sqlinfo_is_builtin_function(call))
		return CAT_FN_NOT_BUILTIN;
	/* "name", or "pg_catalog.name" read as one quoted name: a user function of it may answer */
	if ((f = func_find(s, NULL, call)) == NULL)
		return CAT_FN_BUILTIN;
	if (schema != NULL)
		*schema = f->schema;
	if (name != NULL)
		*name = f->name;
	return CAT_FN_SHADOWED;
}

bool catalog_mask_applies(const Rule *r, const Identity *id)
{
	if (r == NULL || r->kind != RULE_MASK)
		return false;
	if (r->has_for && !rules_who_matches(&r->for_who, id))
		return false;
	return !(r->has_unless && rules_who_matches(&r->unless_who, id));
}

const CatMask *catalog_mask_for(const CatColumn *c, const Identity *id, bool *derived)
{
	const CatMask *first = NULL;

	*derived = false;
	if (c == NULL)
		return NULL;
	for (int i = 0; i < c->n_masks; i++) {
		const CatMask *m = &c->masks[i];

		if ((m->derived ? *derived : first != NULL) || !catalog_mask_applies(m->rule, id))
			continue;
		if (m->derived)
			*derived = true;
		else
			first = m;
	}
	return first;
}

bool catalog_caller_has_masks(const RuleSet *rules, const Identity *id)
{
	if (rules == NULL)
		return false;
	for (int i = 0; i < rules->n_rules; i++)
		if (rules->rules[i].kind == RULE_MASK && catalog_mask_applies(&rules->rules[i], id))
			return true;
	return false;
}

/* ---- where masks reach --------------------------------------------------------------- */

/* One source of a view column: a column of a relation, or every column (attnum 0). */
typedef struct VSrc {
	int rel;
	int attnum;
} VSrc;

/* View column(s) and their sources: column `col` (0: every column of the view). */
typedef struct VOut {
	int col;
	bool derived;            /* computed (or cannot be shown to be a copy of its one source) */
	int first, n;            /* Prop.srcs[first .. first+n) */
} VOut;

typedef struct VLin {
	int rel;
	int first, n;            /* Prop.outs[first .. first+n) */
	bool broken;             /* the definition cannot be analysed: every mask of the database */
	bool queued;
} VLin;

/* A rule found unfit for a type. */
typedef struct TypeSeen {
	const Rule *rule;
	uint32_t type_oid;
} TypeSeen;

/* Scratch of catalog_snap_finish. */
typedef struct Prop {
	CatSnap *s;
	bool oom;
	int *mark;               /* per relation: last epoch it was visited */
	int epoch;
	int *stack;              /* per relation at most once */
	int *child_first;        /* children of rel i: child_list[child_first[i] .. child_first[i+1]) */
	int *child_list;
	const Rule **seeded;     /* mask rules that reached their column, in rule order */
	int n_seeded;
	const Rule **broken;     /* mask rules whose relation no longer has their column, in rule order */
	int n_broken;
	VLin *views;
	int n_views;
	VOut *outs;
	int n_outs, cap_outs;
	VSrc *srcs;
	int n_srcs, cap_srcs;
	int *reader_first;       /* views reading rel i: reader_list[reader_first[i] .. reader_first[i+1]) */
	int *reader_list;
	int *queue;              /* ring of view indexes */
	int q_head, q_len;
	TypeSeen *type_seen;     /* (rule, type) pairs reported unfit */
	int n_type_seen;
} Prop;

/*
 * Adds rule r's mask to column c (once per rule, in rule order; a derived
 * reach makes the entry derived). Returns true when c changed.
 */
static bool column_add_mask(Prop *p, CatColumn *c, const Rule *r, bool derived)
{
	CatMask *m;
	int at;

	for (at = 0; at < c->n_masks && c->masks[at].rule <= r; at++) {
		if (c->masks[at].rule != r)
			continue;
		if (!derived || c->masks[at].derived)
			return false;
		c->masks[at].derived = true;
		return true;
	}
	if ((m = realloc(c->masks, (size_t)(c->n_masks + 1) * sizeof(*m))) == NULL) {
		p->oom = true;
		return false;
	}
	memmove(m + at + 1, m + at, (size_t)(c->n_masks - at) * sizeof(*m));
	m[at].rule = r;
	m[at].derived = derived;
	m[at].type_ok = true;
	c->masks = m;
	c->n_masks++;
	return true;
}

/* Children lists from every relation's parents (unknown parents are ignored). */
static bool build_children(Prop *p)
{
	CatSnap *s = p->s;
	int n = s->n_rels, total = 0, i, k, j;

	if ((p->child_first = calloc((size_t)n + 1, sizeof(int))) == NULL)
		return false;
	for (i = 0; i < n; i++)
		for (k = 0; k < s->rels[i].n_parents; k++)
			if ((j = rel_index(s, s->rels[i].parents[k])) >= 0) {
				p->child_first[j + 1]++;
				total++;
			}
	for (i = 0; i < n; i++)
		p->child_first[i + 1] += p->child_first[i];
	if ((p->child_list = malloc((size_t)(total > 0 ? total : 1) * sizeof(int))) == NULL)
		return false;
	for (i = 0; i < n; i++) /* stack[j]: next free slot of j's list */
		p->stack[i] = p->child_first[i];
	for (i = 0; i < n; i++)
		for (k = 0; k < s->rels[i].n_parents; k++)
			if ((j = rel_index(s, s->rels[i].parents[k])) >= 0)
				p->child_list[p->stack[j]++] = i;
	return true;
}

/* What a walk over a relation's family does at each relation it reaches. */
typedef struct Reach {
	const Rule *r;
	const char *column; /* the rule's column (masks), NULL: the rule is broken */
} Reach;

/* Adds broken rule r to rel (once); true when rel changed. */
static bool rel_add_broken(Prop *p, CatRel *rel, const Rule *r)
{
	const Rule **b;

	for (int i = 0; i < rel->n_broken; i++)
		if (rel->broken[i] == r)
			return false;
	if ((b = realloc(rel->broken, (size_t)(rel->n_broken + 1) * sizeof(*b))) == NULL) {
		p->oom = true;
		return false;
	}
	b[rel->n_broken++] = r;
	rel->broken = b;
	return true;
}

static void reach_visit(Prop *p, int rel, const Reach *x)
{
	CatRel *c = &p->s->rels[rel];
	int a;

	if (x->column == NULL)
		(void)rel_add_broken(p, c, x->r);
	else if ((a = catalog_attnum(c, x->column)) > 0)
		column_add_mask(p, &c->columns[a - 1], x->r, false);
}

/*
 * Visits every descendant (partitions, inheritance children) of relation
 * `root`, or every ancestor when `up`, once each (cycles are cut); not root
 * itself.
 */
static void reach_family(Prop *p, int root, bool up, const Reach *x)
{
	CatRel *rels = p->s->rels;
	int sp = 0, i, k, j;

	p->epoch++;
	p->mark[root] = p->epoch;
	p->stack[sp++] = root;
	while (sp > 0 && !p->oom) {
		i = p->stack[--sp];
		for (k = up ? 0 : p->child_first[i]; k < (up ? rels[i].n_parents : p->child_first[i + 1]); k++) {
			j = up ? rel_index(p->s, rels[i].parents[k]) : p->child_list[k];
			if (j < 0 || p->mark[j] == p->epoch)
				continue;
			p->mark[j] = p->epoch;
			p->stack[sp++] = j;
			reach_visit(p, j, x);
		}
	}
}

/*
 * Rule r's column of every descendant and every ancestor of relation
 * `root`: reading a parent reads its children's rows too (without ONLY), so
 * a mask on a partition or child masks the parent's column as well (fail
 * closed). Two walks, down then up: a sibling partition is not touched.
 */
static void reach_family_masks(Prop *p, int root, const Rule *r)
{
	Reach x = { r, r->mask_column };

	reach_family(p, root, false, &x);
	reach_family(p, root, true, &x);
}

/*
 * Rule r names a column relation `root` no longer has: root, its
 * descendants and its ancestors (whose scans return its rows) are refused
 * to the callers r applies to.
 */
static void spread_broken(Prop *p, int root, const Rule *r)
{
	Reach x = { r, NULL };

	(void)rel_add_broken(p, &p->s->rels[root], r);
	reach_family(p, root, false, &x);
	reach_family(p, root, true, &x);
}

/* The rules' own columns, their descendants' and ancestors'; rules naming nothing become problems. */
static void seed_rules(Prop *p)
{
	CatSnap *s = p->s;
	const Rule *r;
	const CatRel *found = NULL;
	int idx, a;

	for (int i = 0; s->rules != NULL && i < s->rules->n_rules && !p->oom; i++) {
		r = &s->rules->rules[i];
		if (r->kind != RULE_MASK)
			continue;
		if (catalog_find_rels(s, r->mask_schema, r->mask_table, &found, 1) == 0) {
			p->oom |= !problem_add(s, "%s: MASK %s.%s.%s: no such relation", r->where, r->mask_schema,
					       r->mask_table, r->mask_column);
			continue;
		}
		if ((a = catalog_attnum(found, r->mask_column)) == 0) {
			/* renamed or dropped since the rule was written: fail closed on the relation */
			p->oom |= !problem_add(s, "%s: MASK %s.%s.%s: no such column (reading %s.%s is refused to the "
					       "callers the rule applies to until the rule is fixed)", r->where,
					       r->mask_schema, r->mask_table, r->mask_column, r->mask_schema,
					       r->mask_table);
			spread_broken(p, (int)(found - s->rels), r);
			p->broken[p->n_broken++] = r;
			continue;
		}
		idx = (int)(found - s->rels);
		column_add_mask(p, &s->rels[idx].columns[a - 1], r, false);
		reach_family_masks(p, idx, r);
		p->seeded[p->n_seeded++] = r;
	}
}

static bool vsrc_push(Prop *p, int rel, int attnum)
{
	VSrc *v;

	if (p->n_srcs == p->cap_srcs) {
		int cap = p->cap_srcs == 0 ? 256 : p->cap_srcs * 2;

		if ((v = realloc(p->srcs, (size_t)cap * sizeof(*v))) == NULL) {
			p->oom = true;
			return false;
		}
		p->srcs = v;
		p->cap_srcs = cap;
	}
	p->srcs[p->n_srcs].rel = rel;
	p->srcs[p->n_srcs].attnum = attnum;
	p->n_srcs++;
	return true;
}

/* Appends the catalog columns a source names (an unqualified table: any schema); returns how many. */
static int vsrc_resolve(Prop *p, const SqlColumn *c)
{
	const CatRel *const *run;
	int n, added = 0, a;

	run = by_name_run(p->s, c->schema, c->table, &n);
	for (int i = 0; i < n; i++) {
		a = strcmp(c->column, SQL_COLUMN_ALL) == 0 ? 0 : catalog_attnum(run[i], c->column);
		if (a == 0 && strcmp(c->column, SQL_COLUMN_ALL) != 0)
			continue; /* a system column, or not this relation's */
		if (!vsrc_push(p, (int)(run[i] - p->s->rels), a))
			return added;
		added++;
	}
	return added;
}

static VOut *vout_push(Prop *p, int col, bool derived)
{
	VOut *o;

	if (p->n_outs == p->cap_outs) {
		int cap = p->cap_outs == 0 ? 256 : p->cap_outs * 2;

		if ((o = realloc(p->outs, (size_t)cap * sizeof(*o))) == NULL) {
			p->oom = true;
			return NULL;
		}
		p->outs = o;
		p->cap_outs = cap;
	}
	o = &p->outs[p->n_outs++];
	o->col = col;
	o->derived = derived;
	o->first = p->n_srcs;
	o->n = 0;
	return o;
}

/*
 * The view's columns one by one from its outputs. A DIRECT output is a copy
 * of its source column; when it has several (a name the analysis could not
 * tie to one relation), of one of them: each of their masks masks it. A
 * source that is a whole relation ("*": a column renamed by an alias list)
 * cannot be told: the column counts as computed from all of its columns.
 */
static void view_outputs(Prop *p, const SqlStmt *st)
{
	const SqlOutput *out;
	VOut *o;
	int i, k, start;

	for (i = 0; i < st->n_outputs && !p->oom; i++) {
		out = &st->outputs[i];
		if ((o = vout_push(p, i + 1, out->kind != SQL_OUT_DIRECT)) == NULL)
			return;
		start = p->n_srcs;
		for (k = 0; k < out->n_sources; k++)
			(void)vsrc_resolve(p, out->sources[k]);
		o = &p->outs[p->n_outs - 1];
		o->first = start;
		o->n = p->n_srcs - start;
		for (k = start; k < p->n_srcs; k++) /* several: a copy of one of them, as far as masks go */
			if (p->srcs[k].attnum == 0)
				o->derived = true;
	}
}

/* Fail closed: every column of the view is computed from every column its definition reads. */
static void view_reads_all(Prop *p, const SqlStmt *st)
{
	VOut *o;
	int start = p->n_srcs;

	if ((o = vout_push(p, 0, true)) == NULL)
		return;
	for (int i = 0; i < st->n_columns; i++)
		(void)vsrc_resolve(p, st->columns[i].column);
	o = &p->outs[p->n_outs - 1];
	o->first = start;
	o->n = p->n_srcs - start;
}

static bool view_outputs_fit(const SqlStmt *st, const CatRel *rel)
{
	if (st->n_outputs != rel->n_columns)
		return false;
	for (int i = 0; i < st->n_outputs; i++)
		if (st->outputs[i].star)
			return false;
	return true;
}

/*
 * The first call of info that may run user code (catalog_resolve_function:
 * not a built-in, or a built-in's name a user function may answer), written
 * to why; false when there is none.
 */
static bool view_user_call(const CatSnap *s, const StmtInfo *info, char *why, size_t len)
{
	const char *schema = NULL, *name = NULL, *fn;

	for (int i = 0; i < info->n_parts; i++)
		for (int k = 0; k < info->parts[i].n_functions; k++) {
			fn = info->parts[i].functions[k];
			switch (catalog_resolve_function(s, fn, &schema, &name)) {
			case CAT_FN_BUILTIN:
				continue;
			case CAT_FN_SHADOWED:
				snprintf(why, len, "it calls %s, which may not be the built-in: user-defined function "
					 "%s.%s has the same name", fn, schema, name);
				return true;
			case CAT_FN_NOT_BUILTIN:
				snprintf(why, len, "it calls %s, which is not built in", fn);
				return true;
			}
		}
	return false;
}

/*
 * Why a view's definition says nothing about where its columns come from,
 * into why; false when it can be followed. Code that is not built in (a
 * function, one that has a built-in's name included, an operator, a
 * built-in that runs SQL given as text) may read any table, masked columns
 * included. Calls resolve as in statements (catalog_resolve_function);
 * pg_get_viewdef() under search_path '' also schema-qualifies every
 * function outside pg_catalog.
 */
static bool view_unseen(const CatSnap *s, const StmtInfo *info, char *why, size_t len)
{
	if (info == NULL)
		snprintf(why, len, "no definition");
	else if (info->error != NULL)
		snprintf(why, len, "its definition cannot be analysed (%s)", info->error);
	else if (info->n_stmts != 1)
		snprintf(why, len, "its definition is not one statement");
	else if (view_user_call(s, info, why, len))
		return true;
	else if (info->classes & SC_PROCEDURAL)
		snprintf(why, len, "it runs code the analysis cannot see into (an operator that is not built in, "
			 "or SQL given as text)");
	else
		return false;
	return true;
}

/* Analyses view v's definition into its outputs' sources. */
static void view_analyse(Prop *p, VLin *v)
{
	CatSnap *s = p->s;
	const CatRel *rel = &s->rels[v->rel];
	StmtInfo *info = NULL;
	const SqlStmt *st;
	char why[512];

	v->first = p->n_outs;
	if (rel->viewdef != NULL && (info = sqlinfo_analyze(rel->viewdef, strlen(rel->viewdef))) == NULL) {
		p->oom = true;
		return;
	}
	if (view_unseen(s, info, why, sizeof(why))) {
		v->broken = true;
		p->oom |= !problem_add(s, "view %s.%s: %s: every column counts as computed from every masked column",
				       rel->schema, rel->name, why);
		sqlinfo_unref(info);
		return;
	}
	st = &info->stmts[0];
	if (view_outputs_fit(st, rel)) {
		view_outputs(p, st);
	} else if (st->n_outputs > 0 || st->n_columns > 0) {
		view_reads_all(p, st);
		p->oom |= !problem_add(s,
				       "view %s.%s: its %d columns cannot be matched to its definition: every column "
				       "counts as computed from every masked column it reads",
				       rel->schema, rel->name, rel->n_columns);
	}
	v->n = p->n_outs - v->first;
	sqlinfo_unref(info);
}

/* Which views read which relations (each reader once per relation). */
static bool build_readers(Prop *p)
{
	int n = p->s->n_rels, total = 0, v, k, r;

	if ((p->reader_first = calloc((size_t)n + 1, sizeof(int))) == NULL)
		return false;
	for (int pass = 0; pass < 2; pass++) {
		for (v = 0; v < p->n_views; v++) {
			p->epoch++;
			for (k = p->views[v].first; k < p->views[v].first + p->views[v].n; k++) {
				const VOut *o = &p->outs[k];

				for (int j = o->first; j < o->first + o->n; j++) {
					if (p->mark[r = p->srcs[j].rel] == p->epoch)
						continue;
					p->mark[r] = p->epoch;
					if (pass == 0)
						p->reader_first[r + 1]++;
					else
						p->reader_list[p->stack[r]++] = v;
				}
			}
		}
		if (pass == 1)
			break;
		for (k = 0; k < n; k++) {
			p->reader_first[k + 1] += p->reader_first[k];
			p->stack[k] = p->reader_first[k];
		}
		total = p->reader_first[n];
		if ((p->reader_list = malloc((size_t)(total > 0 ? total : 1) * sizeof(int))) == NULL)
			return false;
	}
	return true;
}

/* Adds the masks of source sv to view column c; true when c changed. */
static bool view_column_from(Prop *p, CatColumn *c, const VSrc *sv, bool derived)
{
	const CatRel *src = &p->s->rels[sv->rel];
	int a0 = sv->attnum > 0 ? sv->attnum : 1, a1 = sv->attnum > 0 ? sv->attnum : src->n_columns;
	bool changed = false;

	for (int a = a0; a <= a1 && a <= src->n_columns; a++) {
		const CatColumn *sc = &src->columns[a - 1];

		for (int m = 0; m < sc->n_masks; m++)
			changed |= column_add_mask(p, c, sc->masks[m].rule, derived || sc->masks[m].derived);
	}
	return changed;
}

/* Recomputes the masks of view v's columns from its sources; true when any changed. */
static bool view_eval(Prop *p, const VLin *v)
{
	CatRel *rel = &p->s->rels[v->rel];
	bool changed = false;

	for (int k = v->first; k < v->first + v->n && !p->oom; k++) {
		const VOut *o = &p->outs[k];
		int c0 = o->col > 0 ? o->col : 1, c1 = o->col > 0 ? o->col : rel->n_columns;

		for (int col = c0; col <= c1 && col <= rel->n_columns; col++)
			for (int j = o->first; j < o->first + o->n; j++)
				changed |= view_column_from(p, &rel->columns[col - 1], &p->srcs[j], o->derived);
		for (int j = o->first; j < o->first + o->n; j++) { /* a view reading a relation refused */
			const CatRel *src = &p->s->rels[p->srcs[j].rel];

			for (int b = 0; b < src->n_broken; b++)
				changed |= rel_add_broken(p, rel, src->broken[b]);
		}
	}
	return changed;
}

static void queue_push(Prop *p, int v)
{
	if (p->views[v].queued || p->views[v].broken)
		return;
	p->views[v].queued = true;
	p->queue[(p->q_head + p->q_len++) % p->n_views] = v;
}

/* Masks flow from relations to the views reading them until nothing changes. */
static void views_fixpoint(Prop *p)
{
	int v, r;

	for (v = 0; v < p->n_views; v++)
		queue_push(p, v);
	while (p->q_len > 0 && !p->oom) {
		v = p->queue[p->q_head];
		p->q_head = (p->q_head + 1) % p->n_views;
		p->q_len--;
		p->views[v].queued = false;
		if (!view_eval(p, &p->views[v]))
			continue;
		r = p->views[v].rel;
		for (int k = p->reader_first[r]; k < p->reader_first[r + 1]; k++)
			queue_push(p, p->reader_list[k]);
	}
}

/* A view that cannot be analysed: every column carries every mask of the database, derived. */
static void view_broken(Prop *p, const VLin *v)
{
	CatRel *rel = &p->s->rels[v->rel];

	for (int c = 0; c < rel->n_columns; c++)
		for (int k = 0; k < p->n_seeded; k++)
			column_add_mask(p, &rel->columns[c], p->seeded[k], true);
	for (int k = 0; k < p->n_broken; k++)
		rel_add_broken(p, rel, p->broken[k]);
}

/* ---- generated columns ---- */

/* Appends `"name"` (quotes doubled) to buf at *len; false when it does not fit. */
static bool put_ident(char *buf, size_t cap, size_t *len, const char *name)
{
	if (*len + 1 >= cap)
		return false;
	buf[(*len)++] = '"';
	for (; *name != '\0'; name++) {
		if (*len + 3 >= cap)
			return false;
		if (*name == '"')
			buf[(*len)++] = '"';
		buf[(*len)++] = *name;
	}
	buf[(*len)++] = '"';
	buf[*len] = '\0';
	return true;
}

/* "SELECT (expr) FROM "schema"."name"": the generation expression as a query on its relation; NULL without memory. */
static char *generated_query(const CatRel *rel, const char *expr)
{
	size_t cap = strlen(expr) + 2 * (strlen(rel->schema) + strlen(rel->name)) + 32, len;
	char *sql = malloc(cap);

	if (sql == NULL)
		return NULL;
	len = (size_t)snprintf(sql, cap, "SELECT (%s) FROM ", expr);
	if (len >= cap || !put_ident(sql, cap, &len, rel->schema) || len + 1 >= cap)
		goto fail;
	sql[len++] = '.';
	if (!put_ident(sql, cap, &len, rel->name))
		goto fail;
	return sql;
fail:
	free(sql);
	return NULL;
}

/* Column c gets the masks of column `from` of its relation: copies when `copy`, else derived. */
static void generated_from(Prop *p, CatColumn *c, const CatColumn *from, bool copy)
{
	for (int m = 0; m < from->n_masks && from != c; m++)
		column_add_mask(p, c, from->masks[m].rule, !copy || from->masks[m].derived);
}

/* Fail closed: c is computed from every column of rel (but generated ones: PostgreSQL forbids reading them). */
static void generated_from_all(Prop *p, CatRel *rel, CatColumn *c)
{
	for (int a = 0; a < rel->n_columns; a++)
		if (!rel->columns[a].generated)
			generated_from(p, c, &rel->columns[a], false);
}

/* The masks of generated column c of rel, from the lineage of its expression. */
static void generated_column(Prop *p, CatRel *rel, CatColumn *c)
{
	char *sql = c->generation != NULL ? generated_query(rel, c->generation) : NULL;
	StmtInfo *info = NULL;
	const SqlOutput *o;
	char why[512];
	int a;

	if (c->generation != NULL && (sql == NULL || (info = sqlinfo_analyze(sql, strlen(sql))) == NULL))
		p->oom = true;
	free(sql);
	if (p->oom) {
		sqlinfo_unref(info);
		return;
	}
	if (info == NULL) {
		p->oom |= !problem_add(p->s, "generated column %s.%s.%s: its expression is not known: it counts as "
				       "computed from every column of its table", rel->schema, rel->name, c->name);
		generated_from_all(p, rel, c);
	} else if (view_unseen(p->s, info, why, sizeof(why))) {
		p->oom |= !problem_add(p->s, "generated column %s.%s.%s: %s: it counts as computed from every masked "
				       "column", rel->schema, rel->name, c->name, why);
		for (int k = 0; k < p->n_seeded; k++) /* user code: it may read anything */
			column_add_mask(p, c, p->seeded[k], true);
	} else if (info->stmts[0].n_outputs != 1 || info->stmts[0].outputs[0].star) {
		generated_from_all(p, rel, c);
	} else {
		o = &info->stmts[0].outputs[0];
		for (int k = 0; k < o->n_sources; k++) {
			if (strcmp(o->sources[k]->column, SQL_COLUMN_ALL) == 0 ||
			    (a = catalog_attnum(rel, o->sources[k]->column)) == 0)
				generated_from_all(p, rel, c);
			else
				generated_from(p, c, &rel->columns[a - 1],
					       o->kind == SQL_OUT_DIRECT && o->n_sources == 1);
		}
	}
	sqlinfo_unref(info);
}

/* Every generated column, from the masks of the columns its expression reads (before views read it). */
static void reach_generated(Prop *p)
{
	CatSnap *s = p->s;

	for (int i = 0; i < s->n_rels && !p->oom; i++)
		for (int a = 0; a < s->rels[i].n_columns && !p->oom; a++)
			if (s->rels[i].columns[a].generated && s->rels[i].columns[a].name != NULL)
				generated_column(p, &s->rels[i], &s->rels[i].columns[a]);
}

static bool is_view(const CatRel *r)
{
	return r->kind == 'v' || r->kind == 'm';
}

static void reach_views(Prop *p)
{
	CatSnap *s = p->s;
	int i;

	if ((p->views = calloc((size_t)s->n_rels, sizeof(*p->views))) == NULL ||
	    (p->queue = malloc((size_t)s->n_rels * sizeof(int))) == NULL) {
		p->oom = true;
		return;
	}
	for (i = 0; i < s->n_rels && !p->oom; i++) {
		if (!is_view(&s->rels[i]))
			continue;
		p->views[p->n_views].rel = i;
		view_analyse(p, &p->views[p->n_views++]);
	}
	if (p->oom || !build_readers(p)) {
		p->oom = true;
		return;
	}
	for (i = 0; i < p->n_views; i++)
		if (p->views[i].broken)
			view_broken(p, &p->views[i]);
	views_fixpoint(p);
}

/* True the first time rule r is found unfit for type `type_oid` (one problem line each). */
static bool type_problem_new(Prop *p, const Rule *r, uint32_t type_oid)
{
	TypeSeen *seen = p->type_seen;

	for (int i = 0; i < p->n_type_seen; i++)
		if (seen[i].rule == r && seen[i].type_oid == type_oid)
			return false;
	if ((seen = realloc(seen, (size_t)(p->n_type_seen + 1) * sizeof(*seen))) == NULL) {
		p->oom = true;
		return false;
	}
	seen[p->n_type_seen].rule = r;
	seen[p->n_type_seen++].type_oid = type_oid;
	p->type_seen = seen;
	return true;
}

/* Whether each copied mask suits its column's type; one problem per rule and type. */
static void check_types(Prop *p)
{
	CatSnap *s = p->s;
	char why[512];

	for (int i = 0; i < s->n_rels && !p->oom; i++) {
		CatRel *r = &s->rels[i];

		for (int c = 0; c < r->n_columns; c++) {
			CatColumn *col = &r->columns[c];

			for (int k = 0; k < col->n_masks; k++) {
				CatMask *m = &col->masks[k];

				if (m->derived || mask_check_type(m->rule, col->type_oid, why, sizeof(why)))
					continue;
				m->type_ok = false;
				if (type_problem_new(p, m->rule, col->type_oid))
					p->oom |= !problem_add(s, "%s: %s.%s.%s: %s", m->rule->where, r->schema,
							       r->name, col->name, why);
			}
			r->has_masks |= col->n_masks > 0;
		}
	}
}

static void prop_free(Prop *p)
{
	free(p->mark);
	free(p->stack);
	free(p->child_first);
	free(p->child_list);
	free(p->seeded);
	free(p->broken);
	free(p->views);
	free(p->outs);
	free(p->srcs);
	free(p->reader_first);
	free(p->reader_list);
	free(p->queue);
	free(p->type_seen);
}

static bool build_name_index(CatSnap *s)
{
	CatIndex *ix = s->index;

	free(ix->by_name);
	if ((ix->by_name = malloc((size_t)(s->n_rels > 0 ? s->n_rels : 1) * sizeof(*ix->by_name))) == NULL)
		return false;
	for (int i = 0; i < s->n_rels; i++)
		ix->by_name[i] = &s->rels[i];
	qsort(ix->by_name, (size_t)s->n_rels, sizeof(*ix->by_name), by_name_cmp);
	return true;
}

static int func_cmp(const void *a, const void *b)
{
	const CatFunc *fa = a, *fb = b;
	int c = strcmp(fa->name, fb->name);

	return c != 0 ? c : strcmp(fa->schema, fb->schema);
}

/* Sorts the user functions by (name, schema) and drops repeats (overloads). */
static void sort_functions(CatSnap *s)
{
	CatIndex *ix = s->index;
	int n = 0;

	if (ix->n_funcs > 1)
		qsort(ix->funcs, (size_t)ix->n_funcs, sizeof(*ix->funcs), func_cmp);
	for (int i = 0; i < ix->n_funcs; i++)
		if (n == 0 || func_cmp(&ix->funcs[n - 1], &ix->funcs[i]) != 0)
			ix->funcs[n++] = ix->funcs[i];
	ix->n_funcs = n;
	ix->funcs_sorted = true;
	s->n_functions = n;
}

bool catalog_snap_finish(CatSnap *s)
{
	CatIndex *ix = s->index;
	Prop p = { .s = s };
	size_t n = (size_t)(s->n_rels > 0 ? s->n_rels : 1);

	if (ix->finished)
		return s->error != NULL || ix->by_name != NULL;
	if (!build_name_index(s))
		return false;
	sort_functions(s);
	if ((p.mark = calloc(n, sizeof(int))) == NULL || (p.stack = malloc(n * sizeof(int))) == NULL ||
	    (p.seeded = malloc((size_t)(s->rules != NULL ? s->rules->n_rules + 1 : 1) * sizeof(Rule *))) == NULL ||
	    (p.broken = malloc((size_t)(s->rules != NULL ? s->rules->n_rules + 1 : 1) * sizeof(Rule *))) == NULL ||
	    !build_children(&p)) {
		prop_free(&p);
		return false;
	}
	seed_rules(&p);
	if (p.n_seeded > 0 && !p.oom)
		reach_generated(&p);
	if ((p.n_seeded > 0 || p.n_broken > 0) && !p.oom)
		reach_views(&p);
	check_types(&p);
	prop_free(&p);
	ix->finished = !p.oom;
	return !p.oom;
}
