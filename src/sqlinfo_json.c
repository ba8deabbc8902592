/* SPDX-License-Identifier: MIT */
/*
 * The JSON reader of the sqlinfo module: turns libpg_query's JSON parse
 * tree into a tree of JNodes, decoding strings where they stand (the text
 * is modified) and taking nodes from an arena of fixed chunks that the
 * thread keeps from one analysis to the next, so that reading a statement
 * allocates nothing once the arena is warm. It reads only what libpg_query
 * writes: standard JSON, with a nesting limit.
 */
#include "sqlinfo_int.h"

#include <stdlib.h>
#include <string.h>

#define JCHUNK_NODES 1024
#define JCHUNKS_KEPT 64          /* chunks kept between analyses (64K nodes) */

struct JChunk {
	struct JChunk *next;
	int used;
	JNode nodes[JCHUNK_NODES];
};

typedef struct JParser {
	SqlBuild *b;
	char *p;
	bool too_deep;
} JParser;

static JNode *jnode_new(JParser *jp, uint8_t type)
{
	SqlBuild *b = jp->b;
	JChunk *c = b->jcur;
	JNode *n;

	if (c == NULL || c->used == JCHUNK_NODES) {
		if (c != NULL && c->next != NULL) {
			c = c->next;
		} else {
			JChunk *nc = malloc(sizeof(*nc));

			if (nc == NULL) {
				b->oom = true;
				return NULL;
			}
			nc->next = NULL;
			if (c != NULL)
				c->next = nc;
			else
				b->jchunks = nc;
			c = nc;
		}
		c->used = 0;
		b->jcur = c;
	}
	n = &c->nodes[c->used++];
	b->n_jnodes++;
	memset(n, 0, sizeof(*n));
	n->type = type;
	return n;
}

static void jp_ws(JParser *jp)
{
	while (*jp->p == ' ' || *jp->p == '\n' || *jp->p == '\t' || *jp->p == '\r')
		jp->p++;
}

static bool hex4(const char *s, unsigned *out)
{
	unsigned v = 0;
	int i;

	for (i = 0; i < 4; i++) {
		char c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return false;
	}
	*out = v;
	return true;
}

static char *utf8_put(char *out, unsigned cp)
{
	if (cp < 0x80) {
		*out++ = (char)cp;
	} else if (cp < 0x800) {
		*out++ = (char)(0xC0 | (cp >> 6));
		*out++ = (char)(0x80 | (cp & 0x3F));
	} else if (cp < 0x10000) {
		*out++ = (char)(0xE0 | (cp >> 12));
		*out++ = (char)(0x80 | ((cp >> 6) & 0x3F));
		*out++ = (char)(0x80 | (cp & 0x3F));
	} else {
		*out++ = (char)(0xF0 | (cp >> 18));
		*out++ = (char)(0x80 | ((cp >> 12) & 0x3F));
		*out++ = (char)(0x80 | ((cp >> 6) & 0x3F));
		*out++ = (char)(0x80 | (cp & 0x3F));
	}
	return out;
}

/* Decodes the \u escape at `in` (pointing at 'u'); returns the input after it, or NULL. */
static char *jp_unicode(char *in, char **outp)
{
	unsigned cp, lo;

	if (!hex4(in + 1, &cp))
		return NULL;
	in += 5;
	if (cp >= 0xD800 && cp <= 0xDBFF && in[0] == '\\' && in[1] == 'u' && hex4(in + 2, &lo) &&
	    lo >= 0xDC00 && lo <= 0xDFFF) {
		cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
		in += 6;
	}
	if (cp == 0)
		return NULL; /* would cut the string short */
	*outp = utf8_put(*outp, cp);
	return in;
}

/*
 * Decodes the string at jp->p (its opening quote) in place; returns it
 * NUL-terminated, or NULL. The decoded text is never longer than the
 * escaped one, so the terminator lands at or before the closing quote.
 */
static char *jp_string(JParser *jp)
{
	static const char simple[] = "\"\"\\\\//b\bf\fn\nr\rt\t";
	char *start = jp->p + 1, *in = start, *out = start;
	const char *m;

	for (;;) {
		if (*in == '"')
			break;
		if (*in == '\0')
			return NULL;
		if (*in != '\\') {
			*out++ = *in++;
			continue;
		}
		in++;
		if (*in == 'u') {
			if ((in = jp_unicode(in, &out)) == NULL)
				return NULL;
			continue;
		}
		for (m = simple; *m != '\0' && *m != *in; m += 2)
			;
		if (*m == '\0')
			return NULL;
		*out++ = m[1];
		in++;
	}
	jp->p = in + 1;
	*out = '\0';
	return start;
}

static JNode *jp_value(JParser *jp, int depth);

/* Parses the members ('{') or elements ('[') of a container. */
static JNode *jp_container(JParser *jp, int depth, bool object)
{
	char close = object ? '}' : ']';
	JNode *self = jnode_new(jp, object ? J_OBJ : J_ARR), *last = NULL, *kid;
	char *key = NULL;

	if (self == NULL)
		return NULL;
	jp->p++;
	jp_ws(jp);
	if (*jp->p == close) {
		jp->p++;
		return self;
	}
	for (;;) {
		jp_ws(jp);
		if (object) {
			if (*jp->p != '"' || (key = jp_string(jp)) == NULL)
				return NULL;
			jp_ws(jp);
			if (*jp->p++ != ':')
				return NULL;
		}
		if ((kid = jp_value(jp, depth + 1)) == NULL)
			return NULL;
		kid->key = key;
		if (last == NULL)
			self->child = kid;
		else
			last->next = kid;
		last = kid;
		jp_ws(jp);
		if (*jp->p == ',') {
			jp->p++;
			continue;
		}
		return *jp->p++ == close ? self : NULL;
	}
}

static JNode *jp_literal(JParser *jp, const char *word, uint8_t type)
{
	size_t n = strlen(word);

	if (strncmp(jp->p, word, n) != 0)
		return NULL;
	jp->p += n;
	return jnode_new(jp, type);
}

static JNode *jp_number(JParser *jp)
{
	char *end;
	long long v = strtoll(jp->p, &end, 10);
	JNode *n;

	if (end == jp->p)
		return NULL;
	while (*end == '.' || *end == 'e' || *end == 'E' || *end == '+' || *end == '-' ||
	       (*end >= '0' && *end <= '9'))
		end++; /* a fraction or exponent: the integer part is enough here */
	jp->p = end;
	if ((n = jnode_new(jp, J_NUM)) != NULL)
		n->num = v;
	return n;
}

static JNode *jp_value(JParser *jp, int depth)
{
	JNode *n;
	char *s;

	if (depth > SQLINFO_MAX_DEPTH) {
		jp->too_deep = true;
		return NULL;
	}
	jp_ws(jp);
	switch (*jp->p) {
	case '{': return jp_container(jp, depth, true);
	case '[': return jp_container(jp, depth, false);
	case 't': return jp_literal(jp, "true", J_TRUE);
	case 'f': return jp_literal(jp, "false", J_FALSE);
	case 'n': return jp_literal(jp, "null", J_NULL);
	case '"':
		if ((n = jnode_new(jp, J_STR)) == NULL || (s = jp_string(jp)) == NULL)
			return NULL;
		n->str = s;
		return n;
	default: return jp_number(jp);
	}
}

JNode *sqlinfo_json_parse(SqlBuild *b, char *text)
{
	JParser jp = { b, text, false };
	JNode *root = jp_value(&jp, 0);

	if (root == NULL && !b->oom)
		b->error = jp.too_deep ? "statement too deeply nested to analyse" : "statement could not be analysed";
	return root;
}

void sqlinfo_json_reset(SqlBuild *b)
{
	JChunk *c = b->jchunks, *next;
	int kept = 0;

	for (; c != NULL && ++kept < JCHUNKS_KEPT; c = c->next)
		c->used = 0;
	if (c != NULL) {
		c->used = 0;
		next = c->next;
		c->next = NULL;
		while (next != NULL) {
			c = next->next;
			free(next);
			next = c;
		}
	}
	b->jcur = b->jchunks;
	b->n_jnodes = 0;
}

void sqlinfo_json_free(SqlBuild *b)
{
	JChunk *c = b->jchunks, *next;

	for (; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	b->jchunks = b->jcur = NULL;
}
