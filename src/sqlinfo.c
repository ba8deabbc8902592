/* SPDX-License-Identifier: MIT */
/*
 * Statement analysis, the libpg_query side: SQL text -> StmtInfo. This file
 * owns the calls into libpg_query (the only place that includes pg_query.h),
 * the per-thread cache of analyses, the cache keys built from the real
 * lexer's tokens, and the layout of a StmtInfo: one allocation holding the
 * struct, its arrays and its strings. The classification itself lives in
 * sqlinfo_tree.c.
 *
 * Lookup order: the exact text (no lexing at all), then the statement's
 * shape (its tokens with literals taken out), then a full parse. An
 * analysis that looked at a literal's value is cached by exact text only.
 */
#include "pgveil/sqlinfo.h"

#include <pg_query.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sqlinfo_int.h"

#define SQLINFO_MAX_TEXT (256u << 20)   /* longer texts are refused (fail closed) */
#define CACHE_MAX_TEXT 65536            /* longer texts are analysed but not cached */
#define CACHE_DEFAULT_ENTRIES 4096
#define CACHE_MAX_ENTRIES (1 << 20)
#define CACHE_MAX_BYTES (16u << 20)     /* per thread, counted per entry */
#define SCRATCH_KEEP (1u << 20)         /* scratch buffers larger than this are freed after use */

/* Token numbers of libpg_query's scanner (pg_query.proto, enum Token). */
#define TOK_FCONST 260
#define TOK_SCONST 261
#define TOK_USCONST 262
#define TOK_BCONST 263
#define TOK_XCONST 264
#define TOK_ICONST 266
#define TOK_PARAM 267
#define TOK_FIXED_FIRST 268             /* TYPECAST .. NOT_EQUALS: fixed spellings */
#define TOK_FIXED_LAST 274
#define TOK_SQL_COMMENT 275
#define TOK_C_COMMENT 276
#define TOK_UESCAPE 685

enum { SPACE_EXACT = 1, SPACE_SHAPE = 2 };

/* A token of the statement text (comments left out). */
typedef struct ScanTok {
	int start;               /* byte offset */
	int end;                 /* end of its text: up to the next token, trailing space trimmed */
	int token;               /* TOK_* / keyword token number */
	int keyword;             /* keyword kind, 0 = not a keyword */
} ScanTok;

/* Hidden header in front of every StmtInfo; callers see only `info`. */
typedef struct InfoBlock {
	size_t size;             /* bytes of the whole block */
	int *anchors;            /* per statement: token index of the ';' before and after it, -1 = none */
	const uint8_t *shape;    /* shape key, NULL when not cached by shape */
	size_t shape_len;
	const char *text;        /* exact text, NULL when not cached by it */
	size_t text_len;
	SqlColumn *cols;         /* the lineage's source columns (what outputs and uses point to) */
	int n_cols;
	StmtInfo info;
} InfoBlock;

typedef struct CacheEnt {
	uint64_t hash;
	const void *key;         /* points into the entry's block */
	size_t key_len;
	int space;               /* SPACE_* */
	StmtInfo *info;          /* one reference */
	int next;                /* hash chain, -1 = end */
	uint64_t last_text;      /* shape entries: hash of the last text that hit it */
} CacheEnt;

typedef struct Cache {
	CacheEnt *ents;          /* ring in insertion order: the oldest is evicted first */
	int *buckets;            /* chain heads, -1 = empty */
	int cap, nbuckets, head, count;
	size_t bytes;
} Cache;

typedef struct SqlThread {
	SqlBuild build;
	Cache cache;
	int capacity;            /* entries; 0 = no cache */
	char *text;              /* NUL-terminated copy of the statement */
	size_t text_cap;
	ScanTok *toks;
	int n_toks;
	size_t cap_toks;
	uint8_t *key;            /* shape key */
	size_t key_len, key_cap;
	uint64_t hits, misses;
} SqlThread;

static __thread SqlThread *sql_thread;

/* ---- small helpers --------------------------------------------------------- */

static InfoBlock *block_of(StmtInfo *info)
{
	return (InfoBlock *)(void *)((char *)info - offsetof(InfoBlock, info));
}

static uint64_t mix64(uint64_t a, uint64_t b)
{
	__uint128_t r = (__uint128_t)a * b;

	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* 64-bit hash of bytes; stable across runs (fingerprints are stored in the audit log). */
static uint64_t hash_bytes(uint64_t seed, const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t h = seed ^ (len * 0x9E3779B97F4A7C15ull), w;

	for (; len >= 8; p += 8, len -= 8) {
		memcpy(&w, p, 8);
		h = mix64(h ^ w, 0xA0761D6478BD642Full);
	}
	w = 0;
	if (len > 0)
		memcpy(&w, p, len);
	h = mix64(h ^ w ^ ((uint64_t)len << 56), 0xE7037ED1A0B428DBull);
	return mix64(h, 0x8EBC6AF09C88C6E3ull);
}

static bool ensure(void **buf, size_t *cap, size_t need, size_t elem)
{
	size_t ncap;
	void *p;

	if (need <= *cap)
		return true;
	ncap = need < 64 ? 64 : need + need / 2;
	if ((p = realloc(*buf, ncap * elem)) == NULL)
		return false;
	*buf = p;
	*cap = ncap;
	return true;
}

static SqlThread *thread_get(void)
{
	if (sql_thread == NULL) {
		sql_thread = calloc(1, sizeof(*sql_thread));
		if (sql_thread != NULL)
			sql_thread->capacity = CACHE_DEFAULT_ENTRIES;
	}
	return sql_thread;
}

/* ---- the scanner's tokens ------------------------------------------------ */

static bool pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
	uint64_t v = 0;
	int shift;

	for (shift = 0; *p < end && shift < 64; shift += 7) {
		uint8_t c = *(*p)++;

		v |= (uint64_t)(c & 0x7F) << shift;
		if (!(c & 0x80)) {
			*out = v;
			return true;
		}
	}
	return false;
}

/* Skips a field of wire type `wt`; false when malformed. */
static bool pb_skip(const uint8_t **p, const uint8_t *end, unsigned wt)
{
	uint64_t v;

	switch (wt) {
	case 0: return pb_varint(p, end, &v);
	case 1: v = 8; break;
	case 2:
		if (!pb_varint(p, end, &v))
			return false;
		break;
	case 5: v = 4; break;
	default: return false;
	}
	if (v > (uint64_t)(end - *p))
		return false;
	*p += v;
	return true;
}

/* One ScanToken message {start=1, end=2, token=4, keyword_kind=5}. */
static bool pb_token(const uint8_t *p, const uint8_t *end, ScanTok *t)
{
	uint64_t key, v;

	memset(t, 0, sizeof(*t));
	while (p < end) {
		if (!pb_varint(&p, end, &key))
			return false;
		if ((key & 7) != 0) {
			if (!pb_skip(&p, end, key & 7))
				return false;
			continue;
		}
		if (!pb_varint(&p, end, &v) || v > INT32_MAX)
			return false;
		switch (key >> 3) {
		case 1: t->start = (int)v; break;
		case 2: t->end = (int)v; break;
		case 4: t->token = (int)v; break;
		case 5: t->keyword = (int)v; break;
		default: break;
		}
	}
	return true;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/*
 * A token's text runs to the next token (comments included) with trailing
 * space trimmed: libpg_query's own end offsets are wrong for some tokens
 * (U&"..." identifiers and strings).
 */
static void tok_close(SqlThread *t, int next_start)
{
	ScanTok *last;

	if (t->n_toks == 0)
		return;
	last = &t->toks[t->n_toks - 1];
	if (last->end >= 0)
		return; /* closed already (a comment came between) */
	while (next_start > last->start && is_space(t->text[next_start - 1]))
		next_start--;
	last->end = next_start;
}

/* Adds one decoded token; comments only close the token before them. */
static int tok_push(SqlThread *t, const ScanTok *tok, size_t len)
{
	int prev_start = t->n_toks ? t->toks[t->n_toks - 1].start : -1;

	if (tok->start < 0 || (size_t)tok->start > len || tok->start <= prev_start)
		return 0;
	tok_close(t, tok->start);
	if (tok->token == TOK_SQL_COMMENT || tok->token == TOK_C_COMMENT)
		return 1;
	if (!ensure((void **)&t->toks, &t->cap_toks, (size_t)t->n_toks + 1, sizeof(ScanTok)))
		return -1;
	t->toks[t->n_toks] = *tok;
	t->toks[t->n_toks].end = -1; /* open until the next token */
	t->n_toks++;
	return 1;
}

/* Decodes a ScanResult {version=1, tokens=2}; 1 ok, 0 malformed, -1 out of memory. */
static int scan_decode(SqlThread *t, const uint8_t *p, const uint8_t *end, size_t len)
{
	uint64_t key, n;
	ScanTok tok;
	int r;

	t->n_toks = 0;
	while (p < end) {
		if (!pb_varint(&p, end, &key))
			return 0;
		if (key >> 3 != 2 || (key & 7) != 2) {
			if (!pb_skip(&p, end, key & 7))
				return 0;
			continue;
		}
		if (!pb_varint(&p, end, &n) || n > (uint64_t)(end - p) || !pb_token(p, p + n, &tok))
			return 0;
		p += n;
		if ((r = tok_push(t, &tok, len)) <= 0)
			return r;
	}
	tok_close(t, (int)len);
	return 1;
}

/* Lexes t->text (len bytes); 1 ok, 0 the lexer refused it, -1 out of memory. */
static int scan_text(SqlThread *t, size_t len)
{
	PgQueryScanResult r = pg_query_scan(t->text);
	int rc = 0;

	if (r.error == NULL)
		rc = scan_decode(t, (const uint8_t *)r.pbuf.data, (const uint8_t *)r.pbuf.data + r.pbuf.len, len);
	pg_query_free_scan_result(r);
	return rc;
}

static bool tok_is_literal(int token)
{
	return token == TOK_SCONST || token == TOK_USCONST || token == TOK_BCONST || token == TOK_XCONST ||
	       token == TOK_FCONST || token == TOK_ICONST;
}

/* A literal whose value the analysis never needs: after UESCAPE it changes an identifier. */
static bool tok_is_placeholder(const SqlThread *t, int i)
{
	return tok_is_literal(t->toks[i].token) && (i == 0 || t->toks[i - 1].token != TOK_UESCAPE);
}

/* True when the token's spelling matters beyond its number (identifiers, operators, $n). */
static bool tok_has_text(const SqlThread *t, int i)
{
	int tok = t->toks[i].token;

	if (tok_is_literal(tok))
		return !tok_is_placeholder(t, i);
	return t->toks[i].keyword == 0 && tok >= 256 && (tok < TOK_FIXED_FIRST || tok > TOK_FIXED_LAST);
}

static size_t put_varint(uint8_t *out, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		out[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (uint8_t)v;
	return n;
}

/* The shape key: each token's number, and its text when that matters. */
static bool key_build(SqlThread *t)
{
	int i;
	size_t n;

	t->key_len = 0;
	if (!ensure((void **)&t->key, &t->key_cap, 20, 1)) /* never NULL, also without tokens */
		return false;
	for (i = 0; i < t->n_toks; i++) {
		const ScanTok *k = &t->toks[i];
		size_t tl = tok_has_text(t, i) ? (size_t)(k->end - k->start) : 0;

		if (!ensure((void **)&t->key, &t->key_cap, t->key_len + tl + 20, 1))
			return false;
		n = put_varint(t->key + t->key_len, (uint64_t)k->token);
		if (tok_has_text(t, i)) {
			n += put_varint(t->key + t->key_len + n, tl);
			memcpy(t->key + t->key_len + n, t->text + k->start, tl);
			n += tl;
		}
		t->key_len += n;
	}
	return true;
}

/* ---- StmtInfo blocks --------------------------------------------------------- */

#define ALIGN8(n) (((n) + 7) & ~(size_t)7)

static size_t strsize(const char *s)
{
	return s != NULL ? strlen(s) + 1 : 0;
}

static char *strput(char **cursor, const char *s)
{
	char *r;
	size_t n;

	if (s == NULL)
		return NULL;
	n = strlen(s) + 1;
	r = memcpy(*cursor, s, n);
	*cursor += n;
	return r;
}

/* Bytes for the strings of a built analysis. */
static size_t build_strings(const SqlBuild *b)
{
	size_t n = 0;
	int i;

	for (i = 0; i < b->n_tables; i++)
		n += strsize(b->tables[i].schema) + strsize(b->tables[i].name);
	for (i = 0; i < b->n_funcs; i++)
		n += strsize(b->pool + b->funcs[i].name);
	for (i = 0; i < b->n_preps; i++)
		n += strsize(b->preps[i].name);
	for (i = 0; i < b->n_stmts; i++)
		n += strsize(b->stmts[i].copy_null);
	for (i = 0; i < b->n_lcols; i++)
		if (b->lcols[i].table != NULL)
			n += strsize(b->lcols[i].schema) + strsize(b->lcols[i].table) + strsize(b->lcols[i].column);
	return n;
}

/* Sizes of the lineage arrays of a block. */
typedef struct LinCounts {
	int cols, outs, srcs, uses;
} LinCounts;

static LinCounts lin_counts(const SqlBuild *b)
{
	LinCounts c = { 0, 0, 0, 0 };
	int i;

	if (b == NULL || b->n_luses == 0)
		return c;
	c.cols = b->n_lcols;
	c.outs = b->n_louts;
	for (i = 0; i < b->n_louts; i++)
		c.srcs += b->louts[i].n;
	for (i = 0; i < b->n_luses; i++)
		c.uses += b->lcols[b->luses[i].col].table != NULL;
	return c;
}

typedef struct Layout {
	size_t stmts, parts, tables, funcs, preps, anchors, cols, outs, srcs, uses, strings, size;
} Layout;

static void layout_compute(Layout *l, int n_stmts, int n_parts, int n_tables, int n_funcs, int n_preps,
			   const LinCounts *lc, size_t strings)
{
	size_t o = ALIGN8(sizeof(InfoBlock));

	l->stmts = o;
	o = ALIGN8(o + (size_t)n_stmts * sizeof(SqlStmt));
	l->parts = o;
	o = ALIGN8(o + (size_t)n_parts * sizeof(SqlPart));
	l->tables = o;
	o = ALIGN8(o + (size_t)n_tables * sizeof(SqlTable));
	l->funcs = o;
	o = ALIGN8(o + (size_t)n_funcs * sizeof(char *));
	l->preps = o;
	o = ALIGN8(o + (size_t)n_preps * sizeof(SqlPrepRef));
	l->anchors = o;
	o = ALIGN8(o + (size_t)n_stmts * 2 * sizeof(int));
	l->cols = o;
	o = ALIGN8(o + (size_t)lc->cols * sizeof(SqlColumn));
	l->outs = o;
	o = ALIGN8(o + (size_t)lc->outs * sizeof(SqlOutput));
	l->srcs = o;
	o = ALIGN8(o + (size_t)lc->srcs * sizeof(SqlColumn *));
	l->uses = o;
	o = ALIGN8(o + (size_t)lc->uses * sizeof(SqlColumnUse));
	l->strings = o;
	l->size = o + strings;
}

static InfoBlock *block_new(const Layout *l)
{
	InfoBlock *blk = malloc(l->size);

	if (blk == NULL)
		return NULL;
	memset(blk, 0, sizeof(*blk));
	blk->size = l->size;
	blk->info.refcount = 1;
	return blk;
}

/* A StmtInfo for text that does not parse; `text` (len bytes) is kept as its cache key when given. */
static StmtInfo *info_error(const char *message, bool syntax, int pos, uint64_t fingerprint, const char *text,
			    size_t len)
{
	Layout l;
	InfoBlock *blk;
	char *sp;

	LinCounts none = { 0, 0, 0, 0 };

	layout_compute(&l, 0, 0, 0, 0, 0, &none, strlen(message) + 1 + (text != NULL ? len + 1 : 0));
	if ((blk = block_new(&l)) == NULL)
		return NULL;
	sp = (char *)blk + l.strings;
	blk->info.error = strput(&sp, message);
	blk->info.error_pos = pos;
	blk->info.error_is_syntax = syntax;
	blk->info.fingerprint = fingerprint;
	if (text != NULL) {
		blk->text = memcpy(sp, text, len);
		sp[len] = '\0';
		blk->text_len = len;
	}
	return &blk->info;
}

/* Fills the parts, their tables and functions, grouped by part in first-seen order. */
static void block_fill_parts(InfoBlock *blk, const Layout *l, const SqlBuild *b, char **sp)
{
	StmtInfo *info = &blk->info;
	SqlTable *tables = (SqlTable *)(void *)((char *)blk + l->tables);
	char **funcs = (char **)(void *)((char *)blk + l->funcs);
	int i, nt = 0, nf = 0;

	for (i = 0; i < b->n_parts; i++) {
		SqlPart *p = &info->parts[i];

		p->classes = b->parts[i].classes;
		p->stmt = b->parts[i].stmt;
		p->tables = tables + nt;
		p->functions = funcs + nf;
		nt += b->parts[i].n_tables;
		nf += b->parts[i].n_functions;
		info->classes |= p->classes;
		if (p->stmt >= 0 && p->stmt < info->n_stmts)
			info->stmts[p->stmt].classes |= p->classes;
	}
	for (i = 0; i < b->n_tables; i++) {
		SqlPart *p = &info->parts[b->tables[i].part];
		SqlTable *t = &p->tables[p->n_tables++];

		t->schema = strput(sp, b->tables[i].schema);
		t->name = strput(sp, b->tables[i].name);
		t->access = b->tables[i].access;
	}
	for (i = 0; i < b->n_funcs; i++) {
		SqlPart *p = &info->parts[b->funcs[i].part];

		p->functions[p->n_functions++] = strput(sp, b->pool + b->funcs[i].name);
	}
}

/* Fills the lineage: source columns, then each statement's outputs and column uses. */
static void block_fill_lineage(InfoBlock *blk, const Layout *l, const LinCounts *lc, const SqlBuild *b, char **sp)
{
	StmtInfo *info = &blk->info;
	SqlOutput *outs = (SqlOutput *)(void *)((char *)blk + l->outs);
	SqlColumn **srcs = (SqlColumn **)(void *)((char *)blk + l->srcs);
	SqlColumnUse *uses = (SqlColumnUse *)(void *)((char *)blk + l->uses);
	SqlStmt *st;
	int i, k, nu = 0;

	if (lc->uses == 0)
		return;
	blk->cols = (SqlColumn *)(void *)((char *)blk + l->cols);
	blk->n_cols = lc->cols;
	for (i = 0; i < b->n_lcols; i++) {
		const SqlColB *c = &b->lcols[i];

		blk->cols[i].schema = c->table != NULL ? strput(sp, c->schema) : NULL;
		blk->cols[i].table = c->table != NULL ? strput(sp, c->table) : NULL;
		blk->cols[i].column = c->table != NULL ? strput(sp, c->column) : NULL;
	}
	for (i = 0; i < b->n_louts; i++) {
		st = &info->stmts[b->louts[i].stmt];
		if (st->n_outputs++ == 0)
			st->outputs = &outs[i];
		outs[i].kind = b->louts[i].derived ? SQL_OUT_DERIVED : SQL_OUT_DIRECT;
		outs[i].star = b->louts[i].star;
		outs[i].no_generated = b->louts[i].no_generated;
		outs[i].n_sources = b->louts[i].n;
		outs[i].sources = srcs;
		for (k = 0; k < b->louts[i].n; k++)
			*srcs++ = &blk->cols[b->lsrc[b->louts[i].first + k]];
	}
	for (i = 0; i < b->n_luses; i++) {
		if (b->lcols[b->luses[i].col].table == NULL)
			continue; /* a placeholder */
		st = &info->stmts[b->luses[i].stmt];
		if (st->n_columns++ == 0)
			st->columns = &uses[nu];
		uses[nu].column = &blk->cols[b->luses[i].col];
		uses[nu].bound = b->luses[i].bound;
		uses[nu++].contexts = b->luses[i].contexts;
	}
}

/* Finds the ';' token that starts at byte `pos`; -1 when there is none. */
static int anchor_find(const SqlThread *t, int pos)
{
	int lo = 0, hi = t->n_toks - 1, mid;

	while (lo <= hi) {
		mid = lo + (hi - lo) / 2;
		if (t->toks[mid].start == pos)
			return t->toks[mid].token == ';' ? mid : -1;
		if (t->toks[mid].start < pos)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/* Ties each statement's span to the ';' tokens around it; false when one cannot be found. */
static bool block_anchor(InfoBlock *blk, const SqlThread *t)
{
	const StmtInfo *info = &blk->info;
	int i;

	for (i = 0; i < info->n_stmts; i++) {
		const SqlStmt *s = &info->stmts[i];

		blk->anchors[2 * i] = s->offset > 0 ? anchor_find(t, s->offset - 1) : -1;
		blk->anchors[2 * i + 1] = s->len > 0 ? anchor_find(t, s->offset + s->len) : -1;
		if ((s->offset > 0 && blk->anchors[2 * i] < 0) || (s->len > 0 && blk->anchors[2 * i + 1] < 0))
			return false;
	}
	return true;
}

/*
 * True when a part of `info` may change the session's name resolution
 * behind the analysis: it runs code pgveil cannot see (PROCEDURAL), or
 * creates a temporary relation (pg_temp is searched before every schema).
 */
static bool path_opaque(const StmtInfo *info)
{
	for (int i = 0; i < info->n_parts; i++) {
		const SqlPart *p = &info->parts[i];

		if (p->classes & SC_PROCEDURAL)
			return true;
		for (int j = 0; (p->classes & SC_DDL) && j < p->n_tables; j++)
			if (p->tables[j].schema != NULL && strncmp(p->tables[j].schema, "pg_temp", 7) == 0)
				return true;
	}
	return false;
}

/* Turns a finished build into one block; keys are added when `cache_text` / `shape_ok`. */
static StmtInfo *block_build(SqlThread *t, size_t len, bool cache_text, bool shape_ok)
{
	const SqlBuild *b = &t->build;
	size_t extra = (cache_text ? len + 1 : 0) + (shape_ok ? t->key_len : 0);
	LinCounts lc = lin_counts(b);
	Layout l;
	InfoBlock *blk;
	StmtInfo *info;
	char *sp;
	int i;

	layout_compute(&l, b->n_stmts, b->n_parts, b->n_tables, b->n_funcs, b->n_preps, &lc, build_strings(b) + extra);
	if ((blk = block_new(&l)) == NULL)
		return NULL;
	info = &blk->info;
	sp = (char *)blk + l.strings;
	info->n_stmts = b->n_stmts;
	info->stmts = (SqlStmt *)(void *)((char *)blk + l.stmts);
	memset(info->stmts, 0, (size_t)b->n_stmts * sizeof(SqlStmt));
	for (i = 0; i < b->n_stmts; i++) {
		info->stmts[i].offset = b->stmts[i].offset;
		info->stmts[i].len = b->stmts[i].len;
		info->stmts[i].copy = b->stmts[i].copy;
		info->stmts[i].copy.null_string = strput(&sp, b->stmts[i].copy_null);
	}
	info->n_parts = b->n_parts;
	info->parts = (SqlPart *)(void *)((char *)blk + l.parts);
	memset(info->parts, 0, (size_t)b->n_parts * sizeof(SqlPart));
	block_fill_parts(blk, &l, b, &sp);
	block_fill_lineage(blk, &l, &lc, b, &sp);
	info->n_prep = b->n_preps;
	info->prep = (SqlPrepRef *)(void *)((char *)blk + l.preps);
	for (i = 0; i < b->n_preps; i++) {
		info->prep[i].op = b->preps[i].op;
		info->prep[i].name = strput(&sp, b->preps[i].name);
		info->prep[i].part_first = b->preps[i].part_first;
		info->prep[i].n_parts = b->preps[i].n_parts;
	}
	info->literal_sensitive = b->literal_sensitive;
	info->changes_lexical = b->changes_lexical;
	info->shadows_builtins = b->shadows_builtins;
	info->changes_search_path = b->changes_search_path || path_opaque(info);
	blk->anchors = (int *)(void *)((char *)blk + l.anchors);
	if (shape_ok && block_anchor(blk, t)) {
		blk->shape = memcpy(sp, t->key, t->key_len);
		blk->shape_len = t->key_len;
		sp += t->key_len;
	}
	if (cache_text) {
		blk->text = memcpy(sp, t->text, len + 1);
		blk->text_len = len;
	}
	return info;
}

static char *reloc(const void *p, const char *from, char *to)
{
	return p != NULL ? to + ((const char *)p - from) : NULL;
}

/* Moves the lineage's inner pointers of a copied block from `from` to `to`. */
static void block_reloc_lineage(InfoBlock *blk, const char *from, char *to)
{
	StmtInfo *info = &blk->info;
	int i, j, k;

	blk->cols = (SqlColumn *)(void *)reloc(blk->cols, from, to);
	for (i = 0; i < blk->n_cols; i++) {
		blk->cols[i].schema = reloc(blk->cols[i].schema, from, to);
		blk->cols[i].table = reloc(blk->cols[i].table, from, to);
		blk->cols[i].column = reloc(blk->cols[i].column, from, to);
	}
	for (i = 0; i < info->n_stmts; i++) {
		SqlStmt *s = &info->stmts[i];

		s->outputs = (SqlOutput *)(void *)reloc(s->outputs, from, to);
		s->columns = (SqlColumnUse *)(void *)reloc(s->columns, from, to);
		for (j = 0; j < s->n_outputs; j++) {
			SqlOutput *o = &s->outputs[j];

			o->sources = (SqlColumn **)(void *)reloc(o->sources, from, to);
			for (k = 0; k < o->n_sources; k++)
				o->sources[k] = (SqlColumn *)(void *)reloc(o->sources[k], from, to);
		}
		for (j = 0; j < s->n_columns; j++)
			s->columns[j].column = (SqlColumn *)(void *)reloc(s->columns[j].column, from, to);
	}
}

/*
 * A private copy of a block (all its inner pointers moved along), with
 * `text` (len bytes) appended as its exact-text key when given.
 */
static StmtInfo *block_clone(const InfoBlock *src, const char *text, size_t len)
{
	size_t size = src->size + (text != NULL ? len + 1 : 0);
	InfoBlock *blk = malloc(size);
	const char *from = (const char *)src;
	char *to = (char *)blk;
	StmtInfo *info;
	int i, j;

	if (blk == NULL)
		return NULL;
	memcpy(blk, src, src->size);
	blk->size = size;
	info = &blk->info;
	info->refcount = 1;
	blk->anchors = (int *)(void *)reloc(src->anchors, from, to);
	blk->shape = NULL;
	blk->text = NULL;
	if (text != NULL) {
		blk->text = memcpy(to + src->size, text, len);
		to[src->size + len] = '\0';
		blk->text_len = len;
	}
	info->error = reloc(info->error, from, to);
	info->stmts = (SqlStmt *)(void *)reloc(info->stmts, from, to);
	info->parts = (SqlPart *)(void *)reloc(info->parts, from, to);
	info->prep = (SqlPrepRef *)(void *)reloc(info->prep, from, to);
	for (i = 0; i < info->n_prep; i++)
		info->prep[i].name = reloc(info->prep[i].name, from, to);
	for (i = 0; i < info->n_stmts; i++)
		info->stmts[i].copy.null_string = reloc(info->stmts[i].copy.null_string, from, to);
	for (i = 0; i < info->n_parts; i++) {
		SqlPart *p = &info->parts[i];

		p->tables = (SqlTable *)(void *)reloc(p->tables, from, to);
		p->functions = (char **)(void *)reloc(p->functions, from, to);
		for (j = 0; j < p->n_tables; j++) {
			p->tables[j].schema = reloc(p->tables[j].schema, from, to);
			p->tables[j].name = reloc(p->tables[j].name, from, to);
		}
		for (j = 0; j < p->n_functions; j++)
			p->functions[j] = reloc(p->functions[j], from, to);
	}
	block_reloc_lineage(blk, from, to);
	return info;
}

/*
 * A shape hit for another text: the statements' spans are this text's.
 * Shares the cached block when they agree, else returns a copy with them.
 */
static StmtInfo *respan(StmtInfo *cached, const SqlThread *t)
{
	InfoBlock *blk = block_of(cached);
	StmtInfo *info;
	bool same = true;
	int i, a, z, off, len;

	for (i = 0; i < cached->n_stmts && same; i++) {
		a = blk->anchors[2 * i];
		z = blk->anchors[2 * i + 1];
		off = a >= 0 ? t->toks[a].start + 1 : 0;
		len = z >= 0 ? t->toks[z].start - off : 0;
		same = cached->stmts[i].offset == off && cached->stmts[i].len == len;
	}
	if (same)
		return sqlinfo_ref(cached);
	if ((info = block_clone(blk, NULL, 0)) == NULL)
		return NULL;
	for (i = 0; i < info->n_stmts; i++) {
		a = blk->anchors[2 * i];
		z = blk->anchors[2 * i + 1];
		info->stmts[i].offset = a >= 0 ? t->toks[a].start + 1 : 0;
		info->stmts[i].len = z >= 0 ? t->toks[z].start - info->stmts[i].offset : 0;
	}
	return info;
}

/* ---- the cache ----------------------------------------------------------- */

static bool cache_init(Cache *c, int cap)
{
	int i;

	c->nbuckets = 16;
	while (c->nbuckets < cap * 2)
		c->nbuckets *= 2;
	c->ents = calloc((size_t)cap, sizeof(*c->ents));
	c->buckets = malloc((size_t)c->nbuckets * sizeof(*c->buckets));
	if (c->ents == NULL || c->buckets == NULL) {
		free(c->ents);
		free(c->buckets);
		memset(c, 0, sizeof(*c));
		return false;
	}
	for (i = 0; i < c->nbuckets; i++)
		c->buckets[i] = -1;
	c->cap = cap;
	c->head = c->count = 0;
	c->bytes = 0;
	return true;
}

static CacheEnt *cache_find(Cache *c, int space, uint64_t hash, const void *key, size_t len)
{
	int i;

	if (c->cap == 0)
		return NULL;
	for (i = c->buckets[hash & (uint64_t)(c->nbuckets - 1)]; i >= 0; i = c->ents[i].next) {
		CacheEnt *e = &c->ents[i];

		if (e->hash == hash && e->space == space && e->key_len == len && memcmp(e->key, key, len) == 0)
			return e;
	}
	return NULL;
}

static void cache_evict_oldest(Cache *c)
{
	CacheEnt *e = &c->ents[c->head];
	int *link = &c->buckets[e->hash & (uint64_t)(c->nbuckets - 1)];

	while (*link >= 0 && *link != c->head)
		link = &c->ents[*link].next;
	if (*link == c->head)
		*link = e->next;
	c->bytes -= block_of(e->info)->size;
	sqlinfo_unref(e->info);
	e->info = NULL;
	c->head = (c->head + 1) % c->cap;
	c->count--;
}

static void cache_insert(Cache *c, int space, uint64_t hash, const void *key, size_t len, StmtInfo *info)
{
	size_t size = block_of(info)->size;
	int slot;
	CacheEnt *e;

	if (c->cap == 0)
		return;
	while (c->count > 0 && (c->count == c->cap || c->bytes + size > CACHE_MAX_BYTES))
		cache_evict_oldest(c);
	slot = (c->head + c->count) % c->cap;
	e = &c->ents[slot];
	e->hash = hash;
	e->key = key;
	e->key_len = len;
	e->space = space;
	e->info = sqlinfo_ref(info);
	e->last_text = 0;
	e->next = c->buckets[hash & (uint64_t)(c->nbuckets - 1)];
	c->buckets[hash & (uint64_t)(c->nbuckets - 1)] = slot;
	c->bytes += size;
	c->count++;
}

static void cache_free(Cache *c)
{
	while (c->count > 0)
		cache_evict_oldest(c);
	free(c->ents);
	free(c->buckets);
	memset(c, 0, sizeof(*c));
}

/* Makes sure the cache exists with the configured capacity (0: none). */
static void cache_ready(SqlThread *t)
{
	if (t->cache.cap == t->capacity)
		return;
	cache_free(&t->cache);
	if (t->capacity > 0 && !cache_init(&t->cache, t->capacity))
		return; /* runs uncached */
}

/* ---- analysis ------------------------------------------------------------------ */

#define SEED_EXACT 0x5851F42D4C957F2Dull
#define SEED_SHAPE 0x14057B7EF767814Full
#define SEED_FINGERPRINT 0x2545F4914F6CDD1Dull

/* Parses t->text and builds its StmtInfo (not cached yet). */
static StmtInfo *analyze_text(SqlThread *t, size_t len, bool cache_text, bool shape_ok, uint64_t fp)
{
	PgQueryParseResult r = pg_query_parse(t->text);
	StmtInfo *info = NULL;

	const char *keep = cache_text ? t->text : NULL;

	if (r.error != NULL) {
		info = info_error(r.error->message != NULL ? r.error->message : "syntax error", true, r.error->cursorpos,
				  fp, keep, len);
	} else {
		sqlinfo_build_reset(&t->build);
		if (sqlinfo_tree_analyze(&t->build, r.parse_tree))
			info = block_build(t, len, cache_text, shape_ok);
		else if (!t->build.oom || t->build.error != NULL)
			info = info_error(t->build.error, false, 0, fp, keep, len);
		if (info != NULL)
			info->fingerprint = fp;
	}
	pg_query_free_parse_result(r);
	return info;
}

/* Copies the text NUL-terminated into the thread's buffer. */
static bool text_copy(SqlThread *t, const char *sql, size_t len)
{
	if (!ensure((void **)&t->text, &t->text_cap, len + 1, 1))
		return false;
	memcpy(t->text, sql, len);
	t->text[len] = '\0';
	return true;
}

/* Checks that the text can be handed to the parser; returns the error or NULL. */
static const char *text_refusal(const char *sql, size_t *len)
{
	while (*len > 0 && sql[*len - 1] == '\0')
		(*len)--;
	if (*len > SQLINFO_MAX_TEXT)
		return "statement too long to analyse";
	if (*len > 0 && memchr(sql, '\0', *len) != NULL)
		return "statement text contains a zero byte";
	return NULL;
}

/*
 * A shape hit: this text's analysis from the shape's. A text that hits the
 * same shape twice in a row gets an exact-text entry of its own, so that
 * repeated texts skip the lexer; texts that keep changing do not fill the
 * cache.
 */
static StmtInfo *shape_hit(SqlThread *t, CacheEnt *e, const char *sql, size_t len, uint64_t hx)
{
	StmtInfo *info = respan(e->info, t), *copy;

	if (info == NULL || e->last_text != hx) {
		e->last_text = hx;
		return info;
	}
	if ((copy = block_clone(block_of(info), sql, len)) == NULL)
		return info;
	sqlinfo_unref(info);
	cache_insert(&t->cache, SPACE_EXACT, hx, block_of(copy)->text, len, copy);
	return copy;
}

/* Caches a fresh analysis by its exact text, and by its shape when no literal decided it. */
static void cache_fresh(SqlThread *t, StmtInfo *info, size_t len, uint64_t hx, uint64_t hs)
{
	InfoBlock *blk = block_of(info);

	if (blk->text != NULL)
		cache_insert(&t->cache, SPACE_EXACT, hx, blk->text, len, info);
	if (blk->shape != NULL && !info->literal_sensitive && info->error == NULL)
		cache_insert(&t->cache, SPACE_SHAPE, hs, blk->shape, blk->shape_len, info);
}

/* Gives back scratch memory that one very large statement made grow. */
static void scratch_trim(SqlThread *t)
{
	if (t->text_cap > SCRATCH_KEEP) {
		free(t->text);
		t->text = NULL;
		t->text_cap = 0;
	}
	if (t->key_cap > SCRATCH_KEEP) {
		free(t->key);
		t->key = NULL;
		t->key_cap = 0;
	}
	if (t->cap_toks * sizeof(ScanTok) > SCRATCH_KEEP) {
		free(t->toks);
		t->toks = NULL;
		t->cap_toks = 0;
	}
}

StmtInfo *sqlinfo_analyze(const char *sql, size_t len)
{
	SqlThread *t = thread_get();
	const char *refusal = text_refusal(sql != NULL ? sql : "", &len);
	bool cacheable = len <= CACHE_MAX_TEXT, shape_ok = false;
	uint64_t hx, hs = 0, fp;
	StmtInfo *info;
	CacheEnt *e;
	int scanned;

	if (t == NULL)
		return NULL;
	if (sql == NULL)
		sql = "";
	hx = hash_bytes(SEED_EXACT, sql, len);
	if (refusal != NULL)
		return info_error(refusal, false, 0, hx, NULL, 0);
	cache_ready(t);
	if (cacheable && (e = cache_find(&t->cache, SPACE_EXACT, hx, sql, len)) != NULL) {
		t->hits++;
		return sqlinfo_ref(e->info);
	}
	if (!text_copy(t, sql, len) || (scanned = scan_text(t, len)) < 0) {
		scratch_trim(t);
		return NULL;
	}
	fp = hx;
	if (scanned > 0 && key_build(t)) {
		fp = hash_bytes(SEED_FINGERPRINT, t->key, t->key_len);
		hs = hash_bytes(SEED_SHAPE, t->key, t->key_len);
		shape_ok = cacheable && t->cache.cap > 0;
		if (shape_ok && (e = cache_find(&t->cache, SPACE_SHAPE, hs, t->key, t->key_len)) != NULL) {
			t->hits++;
			return shape_hit(t, e, sql, len, hx);
		}
	}
	t->misses++;
	info = analyze_text(t, len, cacheable && t->cache.cap > 0, shape_ok, fp);
	if (info != NULL && cacheable && t->cache.cap > 0)
		cache_fresh(t, info, len, hx, hs);
	scratch_trim(t);
	return info;
}

StmtInfo *sqlinfo_ref(StmtInfo *info)
{
	if (info != NULL)
		info->refcount++;
	return info;
}

void sqlinfo_unref(StmtInfo *info)
{
	if (info != NULL && --info->refcount == 0)
		free(block_of(info));
}

/* ---- normalization --------------------------------------------------------- */

/* The highest $n the text already uses. */
static int max_param(const SqlThread *t)
{
	long n, max = 0;
	int i;

	for (i = 0; i < t->n_toks; i++) {
		if (t->toks[i].token != TOK_PARAM)
			continue;
		n = strtol(t->text + t->toks[i].start + 1, NULL, 10);
		if (n > max)
			max = n;
	}
	return max < 1000000000L ? (int)max : 1000000000; /* $n above that does not parse anyway */
}

char *sqlinfo_normalize(const char *sql, size_t len)
{
	SqlThread *t = thread_get();
	size_t out_len = 0, cap, pos = 0;
	char *out;
	int i, n;

	if (t == NULL || sql == NULL || text_refusal(sql, &len) != NULL)
		return NULL;
	if (!text_copy(t, sql, len) || scan_text(t, len) <= 0) {
		scratch_trim(t);
		return NULL;
	}
	n = max_param(t);
	cap = len + 1;
	for (i = 0; i < t->n_toks; i++)
		cap += tok_is_placeholder(t, i) ? 12 : 0;
	if ((out = malloc(cap)) == NULL)
		return NULL;
	for (i = 0; i < t->n_toks; i++) {
		const ScanTok *k = &t->toks[i];

		if (!tok_is_placeholder(t, i))
			continue;
		memcpy(out + out_len, sql + pos, (size_t)k->start - pos);
		out_len += (size_t)k->start - pos;
		out_len += (size_t)snprintf(out + out_len, 12, "$%d", ++n);
		pos = (size_t)k->end;
	}
	memcpy(out + out_len, sql + pos, len - pos);
	out[out_len + len - pos] = '\0';
	scratch_trim(t);
	return out;
}

/* ---- class names ----------------------------------------------------------------- */

static const char *const class_names[] = {
	"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "COPY", "READ", "WRITE",
	"DDL", "DROP", "DESTRUCTIVE", "PRIVILEGE", "ADMIN", "SESSION", "TRANSACTION", "PROCEDURAL",
};

const char *sqlinfo_class_names(uint32_t classes, char *buf, size_t buflen)
{
	size_t used = 0, n;
	unsigned i;

	if (buflen == 0)
		return buf;
	buf[0] = '\0';
	for (i = 0; i < PGV_ARRAY_LEN(class_names); i++) {
		if (!(classes & (1u << i)))
			continue;
		n = strlen(class_names[i]) + (used > 0);
		if (used + n >= buflen)
			break; /* whole names only */
		if (used > 0)
			buf[used++] = ',';
		memcpy(buf + used, class_names[i], strlen(class_names[i]) + 1);
		used += strlen(class_names[i]);
	}
	return buf;
}

uint32_t sqlinfo_class_from_name(const char *name, size_t len)
{
	unsigned i;

	if (name == NULL)
		return 0;
	if (len == 3 && strncasecmp(name, "ALL", 3) == 0)
		return SC_ALL;
	for (i = 0; i < PGV_ARRAY_LEN(class_names); i++)
		if (strlen(class_names[i]) == len && strncasecmp(name, class_names[i], len) == 0)
			return 1u << i;
	return 0;
}

/* ---- per-thread state ------------------------------------------------------- */

uint64_t sqlinfo_cache_hits(void)
{
	return sql_thread != NULL ? sql_thread->hits : 0;
}

uint64_t sqlinfo_cache_misses(void)
{
	return sql_thread != NULL ? sql_thread->misses : 0;
}

void sqlinfo_set_cache_capacity(int entries)
{
	SqlThread *t = thread_get();

	if (t != NULL)
		t->capacity = entries <= 0 ? 0 : entries > CACHE_MAX_ENTRIES ? CACHE_MAX_ENTRIES : entries;
}

void sqlinfo_thread_cleanup(void)
{
	SqlThread *t = sql_thread;

	if (t == NULL)
		return;
	cache_free(&t->cache);
	sqlinfo_build_free(&t->build);
	free(t->text);
	free(t->toks);
	free(t->key);
	free(t);
	sql_thread = NULL;
	/* Not pg_query_exit(): libpg_query cannot start again in this thread after it;
	 * its memory goes when the thread exits. */
}
