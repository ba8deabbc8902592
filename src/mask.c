/* SPDX-License-Identifier: MIT */
/*
 * Mask functions applied to one field value (INTERFACE §4; the exact
 * behaviour is in doc/masking.md). This module owns the key of hash() (and
 * each thread's HMAC keyed with it), the
 * table of which function applies to which column type, and the reading and
 * writing of the values masks change: UTF-8 text, integers, numeric and
 * floats in decimal (rounded on their decimal digits, half away from zero),
 * dates and timestamps (PostgreSQL's Julian-day calendar), in text and
 * binary wire formats. Whatever it cannot read as the type it expects gives
 * NULL and an error: a value is never passed through unmasked.
 */
#include "pgveil/mask.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define MASK_HASH_HEX 64                /* hex characters of a full HMAC-SHA-256 */
#define MASK_EMAIL_PAD "***"
#define MASK_REDACT_TEXT "****"
#define DEC_MAX 64                      /* significant digits a Dec keeps */
#define DEC_EXP_LIMIT 200000            /* |exponent| accepted in decimal text */
#define NUMERIC_EXP_MAX 131071          /* 10^131071 is numeric's largest digit position */
#define NUMERIC_DSCALE_MAX 16383
#define PG_EPOCH_JDATE 2451545          /* Julian day of 2000-01-01 */
#define USECS_PER_DAY INT64_C(86400000000)
#define USECS_PER_HOUR INT64_C(3600000000)

/* ---- types ---------------------------------------------------------------------- */

typedef enum {
	TC_UNKNOWN,     /* not in the table: only null() */
	TC_OTHER,       /* known, but no function but null()/redact() reads it */
	TC_TEXT,        /* text, varchar, bpchar, name */
	TC_INT,
	TC_NUMERIC,
	TC_FLOAT,
	TC_BOOL,
	TC_DATE,
	TC_TIMESTAMP,   /* timestamp and timestamptz */
} TypeClass;

static const struct {
	uint32_t oid;
	const char *name;
	TypeClass tc;
	int size;       /* TC_INT/TC_FLOAT: bytes in binary; timestamps: 1 with a time zone */
} known_types[] = {
	{ MASK_OID_BOOL, "bool", TC_BOOL, 1 },
	{ MASK_OID_BYTEA, "bytea", TC_OTHER, 0 },
	{ MASK_OID_NAME, "name", TC_TEXT, 0 },
	{ MASK_OID_INT8, "int8", TC_INT, 8 },
	{ MASK_OID_INT2, "int2", TC_INT, 2 },
	{ MASK_OID_INT4, "int4", TC_INT, 4 },
	{ MASK_OID_TEXT, "text", TC_TEXT, 0 },
	{ 26, "oid", TC_OTHER, 0 },
	{ MASK_OID_JSON, "json", TC_OTHER, 0 },
	{ 142, "xml", TC_OTHER, 0 },
	{ 650, "cidr", TC_OTHER, 0 },
	{ MASK_OID_FLOAT4, "float4", TC_FLOAT, 4 },
	{ MASK_OID_FLOAT8, "float8", TC_FLOAT, 8 },
	{ 790, "money", TC_OTHER, 0 },
	{ 829, "macaddr", TC_OTHER, 0 },
	{ MASK_OID_INET, "inet", TC_OTHER, 0 },
	{ MASK_OID_BPCHAR, "bpchar", TC_TEXT, 0 },
	{ MASK_OID_VARCHAR, "varchar", TC_TEXT, 0 },
	{ MASK_OID_DATE, "date", TC_DATE, 0 },
	{ MASK_OID_TIME, "time", TC_OTHER, 0 },
	{ MASK_OID_TIMESTAMP, "timestamp", TC_TIMESTAMP, 0 },
	{ MASK_OID_TIMESTAMPTZ, "timestamptz", TC_TIMESTAMP, 1 },
	{ 1186, "interval", TC_OTHER, 0 },
	{ 1266, "timetz", TC_OTHER, 0 },
	{ MASK_OID_NUMERIC, "numeric", TC_NUMERIC, 0 },
	{ MASK_OID_UUID, "uuid", TC_OTHER, 0 },
	{ MASK_OID_JSONB, "jsonb", TC_OTHER, 0 },
};

static int type_index(uint32_t oid)
{
	for (size_t i = 0; i < PGV_ARRAY_LEN(known_types); i++)
		if (known_types[i].oid == oid)
			return (int)i;
	return -1;
}

static TypeClass type_class(uint32_t oid)
{
	int i = type_index(oid);

	return i < 0 ? TC_UNKNOWN : known_types[i].tc;
}

static int type_size(uint32_t oid)
{
	int i = type_index(oid);

	return i < 0 ? 0 : known_types[i].size;
}

const char *mask_type_name(uint32_t type_oid, char *buf, size_t buflen)
{
	int i = type_index(type_oid);

	if (i >= 0)
		return known_types[i].name;
	snprintf(buf, buflen, "OID %u", type_oid);
	return buf;
}

/* ---- output --------------------------------------------------------------------- */

static void out_start(MaskOut *o)
{
	o->len = 0;
	o->data = NULL;
	o->heap = NULL;
	o->cap = sizeof(o->buf);
	o->failed = false;
}

static uint8_t *out_base(MaskOut *o)
{
	return o->heap != NULL ? o->heap : o->buf;
}

/* Makes room for n more bytes; false (sticky) when it cannot. */
static bool out_reserve(MaskOut *o, size_t n)
{
	size_t need, cap;
	uint8_t *p;

	if (o->failed)
		return false;
	need = (size_t)o->len + n;
	if (n > (size_t)INT32_MAX || need > (size_t)INT32_MAX) {
		o->failed = true;
		return false;
	}
	if (need <= o->cap)
		return true;
	cap = o->cap * 2 > need ? o->cap * 2 : need;
	p = realloc(o->heap, cap);
	if (p == NULL) {
		o->failed = true;
		return false;
	}
	if (o->heap == NULL)
		memcpy(p, o->buf, (size_t)o->len);
	o->heap = p;
	o->cap = cap;
	return true;
}

static void out_put(MaskOut *o, const void *p, size_t n)
{
	if (n == 0 || !out_reserve(o, n))
		return;
	memcpy(out_base(o) + o->len, p, n);
	o->len += (int32_t)n;
}

static void out_putc(MaskOut *o, char c)
{
	out_put(o, &c, 1);
}

static void out_puts(MaskOut *o, const char *s)
{
	out_put(o, s, strlen(s));
}

static void out_put_be(MaskOut *o, uint64_t v, int bytes)
{
	uint8_t b[8];

	for (int i = 0; i < bytes; i++)
		b[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
	out_put(o, b, (size_t)bytes);
}

/* Ends a masked value: MASK_OK, or MASK_ENOMEM and NULL. */
static int out_finish(MaskOut *o)
{
	if (o->failed) {
		mask_out_release(o);
		return MASK_ENOMEM;
	}
	o->data = out_base(o);
	return MASK_OK;
}

/* An error: the value becomes NULL. */
static int out_fail(MaskOut *o, int rc)
{
	mask_out_release(o);
	return rc;
}

void mask_out_release(MaskOut *out)
{
	free(out->heap);
	out->heap = NULL;
	out->data = NULL;
	out->len = -1;
	out->cap = sizeof(out->buf);
	out->failed = false;
}

static uint64_t get_be(const uint8_t *p, int bytes)
{
	uint64_t v = 0;

	for (int i = 0; i < bytes; i++)
		v = (v << 8) | p[i];
	return v;
}

/* ---- UTF-8 ---------------------------------------------------------------------- */

/* Bytes of the character at s: an invalid byte counts as a character of its own. */
static size_t utf8_char_len(const uint8_t *s, size_t n)
{
	size_t l = pgv_utf8_seq(s, n);

	return l == 0 ? 1 : l;
}

static bool utf8_valid(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t l = pgv_utf8_seq(s + i, n - i);

		if (l == 0)
			return false;
		i += l;
	}
	return true;
}

/* Characters of s, counting no further than `limit` (SIZE_MAX: all). */
static size_t utf8_count_upto(const uint8_t *s, size_t n, size_t limit)
{
	size_t chars = 0;

	for (size_t i = 0; i < n && chars < limit; chars++)
		i += s[i] < 0x80 ? 1 : utf8_char_len(s + i, n - i);
	return chars;
}

static size_t utf8_count(const uint8_t *s, size_t n)
{
	return utf8_count_upto(s, n, SIZE_MAX);
}

/* Byte offset after `chars` characters of s. */
static size_t utf8_skip(const uint8_t *s, size_t n, size_t chars)
{
	size_t i = 0;

	while (chars-- > 0 && i < n)
		i += s[i] < 0x80 ? 1 : utf8_char_len(s + i, n - i);
	return i;
}

/* Copies s, every byte that is not part of valid UTF-8 as '?'. */
static void out_put_utf8(MaskOut *o, const uint8_t *s, size_t n)
{
	size_t i = 0, run = 0;

	while (i + run < n) {
		size_t l;

		if (s[i + run] < 0x80) { /* ASCII: the common case */
			run++;
			continue;
		}
		l = pgv_utf8_seq(s + i + run, n - i - run);

		if (l > 0) {
			run += l;
			continue;
		}
		out_put(o, s + i, run);
		out_putc(o, '?');
		i += run + 1;
		run = 0;
	}
	out_put(o, s + i, run);
}

/* ---- text functions ----------------------------------------------------------------- */

/* partial(keep_prefix, 'pad', keep_suffix): the pad alone when nothing would be hidden. */
static void mask_partial(const Rule *r, const uint8_t *in, size_t len, MaskOut *o)
{
	long long pre = r->args[0].ival, suf = r->args[2].ival;
	size_t chars = utf8_count(in, len), a, b;

	if ((long long)chars <= pre + suf) {
		out_puts(o, r->args[1].sval);
		return;
	}
	a = utf8_skip(in, len, (size_t)pre);
	b = utf8_skip(in, len, chars - (size_t)suf);
	out_put_utf8(o, in, a);
	out_puts(o, r->args[1].sval);
	out_put_utf8(o, in + b, len - b);
}

/* email(): first character of the local part (when it has two or more), "***", '@' and the domain. */
static void mask_email(const uint8_t *in, size_t len, MaskOut *o)
{
	const uint8_t *at = NULL;
	size_t local;

	for (size_t i = 0; i < len; i++)
		if (in[i] == '@')
			at = in + i;
	if (at == NULL) {
		out_puts(o, MASK_EMAIL_PAD);
		return;
	}
	local = (size_t)(at - in);
	if (utf8_count_upto(in, local, 2) >= 2)
		out_put_utf8(o, in, utf8_char_len(in, local));
	out_puts(o, MASK_EMAIL_PAD);
	out_put_utf8(o, at, len - local);
}

/*
 * This thread's HMAC-SHA-256, keyed once per key: setting HMAC up (fetching
 * the algorithm, a context, the key schedule) costs several times what
 * hashing one value does. Freed when the thread exits.
 */
typedef struct HashCtx {
	EVP_MAC_CTX *mac;
	MaskKey key;                    /* the key mac holds */
} HashCtx;

static pthread_key_t hash_tls;
static pthread_once_t hash_tls_once = PTHREAD_ONCE_INIT;
static bool hash_tls_ok;

static void hash_ctx_free(void *p)
{
	HashCtx *h = p;

	EVP_MAC_CTX_free(h->mac);
	OPENSSL_cleanse(&h->key, sizeof(h->key));
	free(h);
}

static void hash_tls_init(void)
{
	hash_tls_ok = pthread_key_create(&hash_tls, hash_ctx_free) == 0;
}

/* This thread's HMAC, initialised for a new message under key; NULL when out of memory. */
static EVP_MAC_CTX *hash_begin(const MaskKey *key)
{
	OSSL_PARAM params[] = { OSSL_PARAM_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
				OSSL_PARAM_END };
	HashCtx *h;
	EVP_MAC *mac;

	if (pthread_once(&hash_tls_once, hash_tls_init) != 0 || !hash_tls_ok)
		return NULL;
	if ((h = pthread_getspecific(hash_tls)) != NULL && h->key.len == key->len &&
	    CRYPTO_memcmp(h->key.bytes, key->bytes, key->len) == 0)
		return EVP_MAC_init(h->mac, NULL, 0, NULL) == 1 ? h->mac : NULL;
	if (h == NULL) {
		if ((h = calloc(1, sizeof(*h))) == NULL)
			return NULL;
		mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
		h->mac = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
		EVP_MAC_free(mac);
		if (h->mac == NULL || pthread_setspecific(hash_tls, h) != 0) {
			hash_ctx_free(h);
			return NULL;
		}
	}
	h->key.len = 0; /* until the new key is in place */
	if (EVP_MAC_init(h->mac, key->bytes, key->len, params) != 1)
		return NULL;
	memcpy(h->key.bytes, key->bytes, key->len);
	h->key.len = key->len;
	return h->mac;
}

/* hash([length]): HMAC-SHA-256 of the bytes, lower-case hex, the first `length` characters. */
static int mask_hash(const Rule *r, const MaskKey *key, const uint8_t *in, size_t len, MaskOut *o)
{
	uint8_t md[EVP_MAX_MD_SIZE];
	char txt[MASK_HASH_HEX];
	size_t mdlen = 0;
	size_t keep = r->n_args > 0 ? (size_t)r->args[0].ival : MASK_HASH_HEX;
	EVP_MAC_CTX *mac;

	if (key == NULL || key->len < MASK_KEY_MIN || key->len > MASK_KEY_MAX)
		return MASK_ENOKEY;
	if ((mac = hash_begin(key)) == NULL || EVP_MAC_update(mac, in, len) != 1 ||
	    EVP_MAC_final(mac, md, &mdlen, sizeof(md)) != 1 || mdlen != 32)
		return MASK_ENOMEM;
	pgv_hex(txt, md, 32);
	OPENSSL_cleanse(md, sizeof(md));
	out_put(o, txt, keep > MASK_HASH_HEX ? MASK_HASH_HEX : keep);
	return MASK_OK;
}

/* ---- decimal numbers -------------------------------------------------------------------- */

typedef enum { DEC_FINITE, DEC_NAN, DEC_PINF, DEC_NINF } DecKind;

/* A decimal number: 0.d... no: d[0].d[1]d[2]... x 10^exp, without trailing zeros in d. */
typedef struct Dec {
	DecKind kind;
	bool neg;               /* also for zero ("-0" of floats) */
	int nd;                 /* significant digits in d; 0 = zero */
	bool more;              /* nonzero digits after d were not kept */
	int exp;                /* power of ten of d[0] */
	int dscale;             /* digits after the point as written or declared */
	char d[DEC_MAX];        /* '1'..'9' first, then '0'..'9' */
} Dec;

static void dec_strip(Dec *x)
{
	while (x->nd > 0 && x->d[x->nd - 1] == '0')
		x->nd--;
}

/* Appends a digit at decimal position pos (digits come in order, from the top). */
static void dec_push(Dec *x, char c, int pos)
{
	if (x->nd == 0 && c == '0')
		return;
	if (x->nd == 0)
		x->exp = pos;
	if (x->nd < DEC_MAX)
		x->d[x->nd++] = c;
	else if (c != '0')
		x->more = true;
}

static bool is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

/* Reads "e[+-]digits" at s[*i]; false when malformed or too large. */
static bool dec_parse_exponent(const uint8_t *s, size_t n, size_t *i, long *e)
{
	bool neg = false;
	size_t start;

	*e = 0;
	if (*i >= n || (s[*i] != 'e' && s[*i] != 'E'))
		return true;
	(*i)++;
	if (*i < n && (s[*i] == '+' || s[*i] == '-'))
		neg = s[(*i)++] == '-';
	for (start = *i; *i < n && is_digit(s[*i]); (*i)++) {
		*e = *e * 10 + (s[*i] - '0');
		if (*e > DEC_EXP_LIMIT)
			return false;
	}
	if (*i == start)
		return false;
	if (neg)
		*e = -*e;
	return true;
}

/* Reads [-+]digits[.digits][e[+-]digits], "NaN", "Infinity", "-Infinity"; false when malformed. */
static bool dec_parse(const uint8_t *s, size_t n, Dec *x)
{
	size_t i = 0, intd = 0, fracd = 0;
	long e = 0;
	int pos;

	memset(x, 0, sizeof(*x));
	if (n == 3 && memcmp(s, "NaN", 3) == 0) {
		x->kind = DEC_NAN;
		return true;
	}
	if (i < n && (s[i] == '-' || s[i] == '+'))
		x->neg = s[i++] == '-';
	if (n - i == 8 && memcmp(s + i, "Infinity", 8) == 0) {
		x->kind = x->neg ? DEC_NINF : DEC_PINF;
		return true;
	}
	while (i + intd < n && is_digit(s[i + intd]))
		intd++;
	if (i + intd < n && s[i + intd] == '.')
		while (i + intd + 1 + fracd < n && is_digit(s[i + intd + 1 + fracd]))
			fracd++;
	if (intd + fracd == 0 || intd > DEC_EXP_LIMIT || fracd > DEC_EXP_LIMIT)
		return false;
	pos = (int)intd - 1;
	for (size_t k = 0; k < intd; k++)
		dec_push(x, (char)s[i + k], pos--);
	for (size_t k = 0; k < fracd; k++)
		dec_push(x, (char)s[i + intd + 1 + k], pos--);
	i += intd + (i + intd < n && s[i + intd] == '.' ? 1 + fracd : 0);
	if (!dec_parse_exponent(s, n, &i, &e) || i != n)
		return false;
	x->exp += (int)e;
	x->dscale = (int)fracd - (int)e > 0 ? (int)fracd - (int)e : 0;
	dec_strip(x);
	return true;
}

/* Rounds to n significant digits, half away from zero. */
static void dec_round(Dec *x, int n)
{
	bool up;
	int i;

	if (x->kind != DEC_FINITE || x->nd <= n)
		return;
	up = x->d[n] >= '5';
	x->nd = n;
	x->more = false;
	for (i = n - 1; up && i >= 0 && x->d[i] == '9'; i--)
		x->d[i] = '0';
	if (up && i < 0) {
		x->d[0] = '1';
		x->nd = 1;
		x->exp++;
	} else if (up) {
		x->d[i]++;
	}
	dec_strip(x);
}

/* Cuts to n significant digits (toward zero). */
static void dec_trunc(Dec *x, int n)
{
	if (x->kind == DEC_FINITE && x->nd > n) {
		x->nd = n;
		x->more = false;
		dec_strip(x);
	}
}

/* The digit at decimal position pos. */
static char dec_digit(const Dec *x, int pos)
{
	int k = x->exp - pos;

	return (x->nd > 0 && k >= 0 && k < x->nd) ? x->d[k] : '0';
}

/* Plain notation with `scale` digits after the point ("-12.50"); no sign for zero unless keep_negzero. */
static void dec_put_plain(MaskOut *o, const Dec *x, int scale, bool keep_negzero)
{
	int top = (x->nd > 0 && x->exp > 0) ? x->exp : 0;

	if (x->neg && (x->nd > 0 || keep_negzero))
		out_putc(o, '-');
	for (int p = top; p >= 0; p--)
		out_putc(o, dec_digit(x, p));
	if (scale > 0)
		out_putc(o, '.');
	for (int p = -1; p >= -scale; p--)
		out_putc(o, dec_digit(x, p));
}

/* Scientific notation as PostgreSQL writes floats: "1.5e-05", "1e+20". */
static void dec_put_sci(MaskOut *o, const Dec *x)
{
	char e[16];

	if (x->neg)
		out_putc(o, '-');
	out_putc(o, x->d[0]);
	if (x->nd > 1) {
		out_putc(o, '.');
		out_put(o, x->d + 1, (size_t)x->nd - 1);
	}
	snprintf(e, sizeof(e), "e%c%02d", x->exp < 0 ? '-' : '+', abs(x->exp));
	out_puts(o, e);
}

/* The value as a C string for strtod/strtoll ("-1.25e3"), into buf of DEC_MAX + 16. */
static void dec_to_cstr(const Dec *x, char *buf, size_t len)
{
	if (x->nd == 0) {
		snprintf(buf, len, "%s0", x->neg ? "-" : "");
		return;
	}
	snprintf(buf, len, "%s%c.%.*se%d", x->neg ? "-" : "", x->d[0], x->nd - 1, x->d + 1, x->exp);
}

/* ---- integers ---------------------------------------------------------------------- */

static bool int_range(int size, long long v)
{
	if (size == 2)
		return v >= INT16_MIN && v <= INT16_MAX;
	if (size == 4)
		return v >= INT32_MIN && v <= INT32_MAX;
	return true;
}

/* x as an integer of `size` bytes; false when it has a fraction or does not fit. */
static bool dec_to_int(const Dec *x, int size, long long *v)
{
	char buf[DEC_MAX + 16];
	char *end;

	if (x->kind != DEC_FINITE || x->more || (x->nd > 0 && x->exp < x->nd - 1) || x->exp > 19)
		return false;
	/* written out in full: strtoll takes no exponent */
	if (x->nd == 0) {
		snprintf(buf, sizeof(buf), "0");
	} else {
		int k = snprintf(buf, sizeof(buf), "%s%.*s", x->neg ? "-" : "", x->nd, x->d);

		for (int z = x->exp - x->nd + 1; z > 0 && k < (int)sizeof(buf) - 1; z--) {
			buf[k++] = '0';
			buf[k] = '\0';
		}
	}
	errno = 0;
	*v = strtoll(buf, &end, 10);
	return errno == 0 && *end == '\0' && int_range(size, *v);
}

/* Reads an integer of type `size` bytes in either format into x. */
static bool int_read(int size, int16_t format, const uint8_t *in, size_t len, Dec *x)
{
	char buf[32];
	long long v;

	if (format == 0)
		return dec_parse(in, len, x) && x->dscale == 0 && dec_to_int(x, size, &v);
	if ((int)len != size)
		return false;
	v = size == 2 ? (int16_t)get_be(in, 2) : size == 4 ? (int32_t)get_be(in, 4) : (int64_t)get_be(in, 8);
	snprintf(buf, sizeof(buf), "%lld", v);
	return dec_parse((const uint8_t *)buf, strlen(buf), x);
}

static void int_write(MaskOut *o, int size, int16_t format, long long v)
{
	char buf[32];

	if (format == 0) {
		snprintf(buf, sizeof(buf), "%lld", v);
		out_puts(o, buf);
	} else {
		out_put_be(o, (uint64_t)v, size);
	}
}

/* ---- floats ------------------------------------------------------------------------ */

/* x as a float of `size` bytes (inf when out of range). */
static double dec_to_double(const Dec *x, int size)
{
	char buf[DEC_MAX + 16];

	if (x->kind == DEC_NAN)
		return NAN;
	if (x->kind != DEC_FINITE)
		return x->kind == DEC_PINF ? INFINITY : -INFINITY;
	dec_to_cstr(x, buf, sizeof(buf));
	return size == 4 ? (double)strtof(buf, NULL) : strtod(buf, NULL);
}

/* The shortest decimal digits that read back as v. */
static void float_to_dec(double v, int size, Dec *x)
{
	char buf[64];

	memset(x, 0, sizeof(*x));
	if (isnan(v)) {
		x->kind = DEC_NAN;
		return;
	}
	if (isinf(v)) {
		x->kind = v > 0 ? DEC_PINF : DEC_NINF;
		return;
	}
	for (int p = 1; p <= 17; p++) {
		snprintf(buf, sizeof(buf), "%.*e", p - 1, v);
		if ((size == 4 && strtof(buf, NULL) == (float)v) || (size == 8 && strtod(buf, NULL) == v))
			break;
	}
	(void)dec_parse((const uint8_t *)buf, strlen(buf), x);
	x->neg = signbit(v) != 0;
}

static bool float_read(int size, int16_t format, const uint8_t *in, size_t len, Dec *x)
{
	uint64_t bits;
	double v;

	if (format == 0)
		return dec_parse(in, len, x) && (x->kind != DEC_FINITE || !isinf(dec_to_double(x, size)));
	if ((int)len != size)
		return false;
	bits = get_be(in, size);
	if (size == 4) {
		uint32_t b32 = (uint32_t)bits;
		float f;

		memcpy(&f, &b32, 4);
		v = f;
	} else {
		memcpy(&v, &bits, 8);
	}
	float_to_dec(v, size, x);
	return true;
}

/* Writes x as PostgreSQL does: shortest digits, plain for 1e-4 <= |v| < 1e6 (float4) / 1e15 (float8). */
static void float_write(MaskOut *o, int size, int16_t format, const Dec *x)
{
	double v = dec_to_double(x, size);

	if (format != 0) {
		if (size == 4) {
			float f = (float)v;
			uint32_t b;

			memcpy(&b, &f, 4);
			out_put_be(o, b, 4);
		} else {
			uint64_t b;

			memcpy(&b, &v, 8);
			out_put_be(o, b, 8);
		}
		return;
	}
	if (x->kind != DEC_FINITE)
		out_puts(o, x->kind == DEC_NAN ? "NaN" : x->kind == DEC_PINF ? "Infinity" : "-Infinity");
	else if (x->nd == 0)
		out_puts(o, x->neg ? "-0" : "0");
	else if (x->exp < -4 || x->exp >= (size == 4 ? 6 : 15))
		dec_put_sci(o, x);
	else
		dec_put_plain(o, x, x->nd - 1 - x->exp > 0 ? x->nd - 1 - x->exp : 0, true);
}

/* ---- numeric ------------------------------------------------------------------------- */

#define NUMERIC_POS 0x0000
#define NUMERIC_NEG 0x4000
#define NUMERIC_NAN 0xC000
#define NUMERIC_PINF 0xD000
#define NUMERIC_NINF 0xF000

static int floor_div(int a, int b)
{
	return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* Numeric's binary form: ndigits, weight, sign, dscale (int16 each), base-10000 digits. */
static bool numeric_read_binary(const uint8_t *in, size_t len, Dec *x)
{
	int nd, weight, sign;

	memset(x, 0, sizeof(*x));
	if (len < 8)
		return false;
	nd = (int16_t)get_be(in, 2);
	weight = (int16_t)get_be(in + 2, 2);
	sign = (int)get_be(in + 4, 2);
	x->dscale = (int)get_be(in + 6, 2);
	if (nd < 0 || len != 8 + 2 * (size_t)nd || x->dscale > NUMERIC_DSCALE_MAX)
		return false;
	if (sign == NUMERIC_NAN || sign == NUMERIC_PINF || sign == NUMERIC_NINF) {
		x->kind = sign == NUMERIC_NAN ? DEC_NAN : sign == NUMERIC_PINF ? DEC_PINF : DEC_NINF;
		return nd == 0;
	}
	if (sign != NUMERIC_POS && sign != NUMERIC_NEG)
		return false;
	x->neg = sign == NUMERIC_NEG;
	for (int i = 0; i < nd; i++) {
		int g = (int)get_be(in + 8 + 2 * i, 2);

		if (g > 9999)
			return false;
		for (int k = 3, div = 1000; k >= 0; k--, div /= 10)
			dec_push(x, (char)('0' + g / div % 10), 4 * (weight - i) + k);
	}
	dec_strip(x);
	return true;
}

static void numeric_write_binary(MaskOut *o, const Dec *x)
{
	int hi, lo;

	if (x->kind != DEC_FINITE || x->nd == 0) {
		uint16_t sign = x->kind == DEC_NAN	  ? NUMERIC_NAN
				: x->kind == DEC_PINF ? NUMERIC_PINF
				: x->kind == DEC_NINF ? NUMERIC_NINF
						      : NUMERIC_POS;

		out_put_be(o, 0, 2);
		out_put_be(o, 0, 2);
		out_put_be(o, sign, 2);
		out_put_be(o, x->kind == DEC_FINITE ? (uint64_t)x->dscale : 0, 2);
		return;
	}
	hi = floor_div(x->exp, 4);
	lo = floor_div(x->exp - x->nd + 1, 4);
	out_put_be(o, (uint64_t)(hi - lo + 1), 2);
	out_put_be(o, (uint64_t)(uint16_t)(int16_t)hi, 2);
	out_put_be(o, x->neg ? NUMERIC_NEG : NUMERIC_POS, 2);
	out_put_be(o, (uint64_t)x->dscale, 2);
	for (int g = hi; g >= lo; g--) {
		int v = 0;

		for (int k = 3; k >= 0; k--)
			v = v * 10 + (dec_digit(x, 4 * g + k) - '0');
		out_put_be(o, (uint64_t)v, 2);
	}
}

static bool numeric_read(int16_t format, const uint8_t *in, size_t len, Dec *x)
{
	if (format != 0)
		return numeric_read_binary(in, len, x);
	if (!dec_parse(in, len, x))
		return false;
	return x->kind != DEC_FINITE || (x->nd == 0 || x->exp <= NUMERIC_EXP_MAX);
}

static void numeric_write(MaskOut *o, int16_t format, const Dec *x)
{
	if (format != 0)
		numeric_write_binary(o, x);
	else if (x->kind != DEC_FINITE)
		out_puts(o, x->kind == DEC_NAN ? "NaN" : x->kind == DEC_PINF ? "Infinity" : "-Infinity");
	else
		dec_put_plain(o, x, x->dscale, false);
}

/* ---- round() ------------------------------------------------------------------------ */

/* True when x fits the type (ints: range; floats: finite; numeric: digit positions). */
static bool dec_fits(const Dec *x, TypeClass tc, int size)
{
	long long v;

	if (tc == TC_INT)
		return dec_to_int(x, size, &v);
	if (tc == TC_FLOAT)
		return x->kind != DEC_FINITE || !isinf(dec_to_double(x, size));
	/* binary weights are int16 */
	return x->nd == 0 || (x->exp <= NUMERIC_EXP_MAX && x->exp - x->nd + 1 >= 4 * INT16_MIN);
}

/* round(n): n significant digits, half away from zero; toward zero where away would not fit. */
static int mask_round(const Rule *r, uint32_t oid, int16_t format, const uint8_t *in, size_t len, MaskOut *o)
{
	TypeClass tc = type_class(oid);
	int size = type_size(oid), n = (int)r->args[0].ival;
	Dec x, y;
	long long v;
	bool ok;

	ok = tc == TC_INT ? int_read(size, format, in, len, &x)
	     : tc == TC_FLOAT ? float_read(size, format, in, len, &x)
			      : numeric_read(format, in, len, &x);
	if (!ok)
		return MASK_EVALUE;
	if (tc == TC_NUMERIC && x.kind == DEC_FINITE && x.nd > 0)
		x.dscale = x.dscale < n - 1 - x.exp ? x.dscale : (n - 1 - x.exp > 0 ? n - 1 - x.exp : 0);
	y = x;
	dec_round(&y, n);
	if (!dec_fits(&y, tc, size)) {
		y = x;
		dec_trunc(&y, n);
	}
	if (!dec_fits(&y, tc, size))
		return MASK_EVALUE;
	if (tc == TC_INT) {
		if (!dec_to_int(&y, size, &v))
			return MASK_EVALUE;
		int_write(o, size, format, v);
	} else if (tc == TC_FLOAT) {
		float_write(o, size, format, &y);
	} else {
		numeric_write(o, format, &y);
	}
	return MASK_OK;
}

/* ---- dates and timestamps ------------------------------------------------------------ */

/* PostgreSQL's Julian day of a (proleptic Gregorian, astronomical) year, month, day. */
static int date2j(int y, int m, int d)
{
	int julian, century;

	if (m > 2) {
		m += 1;
		y += 4800;
	} else {
		m += 13;
		y += 4799;
	}
	century = y / 100;
	julian = y * 365 - 32167;
	julian += y / 4 - century + century / 4;
	julian += 7834 * m / 256 + d;
	return julian;
}

static void j2date(int jd, int *year, int *month, int *day)
{
	unsigned julian = (unsigned)jd, quad, extra;
	int y;

	julian += 32044;
	quad = julian / 146097;
	extra = (julian - quad * 146097) * 4 + 3;
	julian += 60 + quad * 3 + extra / 146097;
	quad = julian / 1461;
	julian -= quad * 1461;
	y = (int)(julian * 4 / 1461);
	julian = ((y != 0) ? ((julian + 305) % 365) : ((julian + 306) % 366)) + 123;
	y += (int)quad * 4;
	*year = y - 4800;
	quad = julian * 2141 / 65536;
	*day = (int)(julian - 7834 * quad / 256);
	*month = (int)((quad + 10) % 12 + 1);
}

typedef enum { TRUNC_YEAR, TRUNC_MONTH, TRUNC_DAY, TRUNC_HOUR } TruncUnit;

static TruncUnit trunc_unit(const Rule *r)
{
	const char *u = r->args[0].sval;

	return strcmp(u, "year") == 0 ? TRUNC_YEAR : strcmp(u, "month") == 0 ? TRUNC_MONTH
						   : strcmp(u, "day") == 0 ? TRUNC_DAY : TRUNC_HOUR;
}

/* Truncates a Julian day; false when the result is before Julian day 0 (4714-11-24 BC). */
static bool trunc_jd(int jd, TruncUnit u, int *out)
{
	int y, m, d;

	if (jd < 0)
		return false;
	j2date(jd, &y, &m, &d);
	if (u == TRUNC_YEAR)
		m = 1;
	if (u <= TRUNC_MONTH)
		d = 1;
	*out = date2j(y, m, d);
	return *out >= 0;
}

static bool days_in_month_ok(int y, int m, int d)
{
	static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m >= 1 && m <= 12 && d >= 1 && d <= mdays[m - 1] + (m == 2 && leap);
}

/* An ISO date or timestamp as the server writes it, split into its fields (offsets into the text). */
typedef struct IsoTime {
	int year, month, day, hour, min, sec, usec;
	size_t year_len;        /* digits of the year */
	bool has_time;
	size_t tz_at, tz_len;   /* "+01", "-05:30", "+00:53:28"; tz_len 0 when none */
	int tz_secs;            /* the offset east of UTC */
	bool bc;
} IsoTime;

/* Reads exactly n digits at s[*i]. */
static bool read_digits(const uint8_t *s, size_t len, size_t *i, size_t n, int *v)
{
	*v = 0;
	for (size_t k = 0; k < n; k++, (*i)++) {
		if (*i >= len || !is_digit(s[*i]))
			return false;
		*v = *v * 10 + (s[*i] - '0');
	}
	return true;
}

static bool read_char(const uint8_t *s, size_t len, size_t *i, char c)
{
	if (*i >= len || s[*i] != c)
		return false;
	(*i)++;
	return true;
}

/* "+HH[:MM[:SS]]" at s[*i]. */
static bool iso_parse_tz(const uint8_t *s, size_t len, size_t *i, IsoTime *t)
{
	int sign, hh, mm = 0, ss = 0;

	if (*i >= len || (s[*i] != '+' && s[*i] != '-'))
		return false;
	t->tz_at = *i;
	sign = s[(*i)++] == '-' ? -1 : 1;
	if (!read_digits(s, len, i, 2, &hh))
		return false;
	if (*i < len && s[*i] == ':' && (!read_char(s, len, i, ':') || !read_digits(s, len, i, 2, &mm)))
		return false;
	if (*i < len && s[*i] == ':' && (!read_char(s, len, i, ':') || !read_digits(s, len, i, 2, &ss)))
		return false;
	if (hh > 15 || mm > 59 || ss > 59)
		return false;
	t->tz_len = *i - t->tz_at;
	t->tz_secs = sign * (hh * 3600 + mm * 60 + ss);
	return true;
}

/* " HH:MM:SS[.ffffff]" at s[*i]. */
static bool iso_parse_time(const uint8_t *s, size_t len, size_t *i, IsoTime *t)
{
	size_t f;

	if (!read_char(s, len, i, ' ') || !read_digits(s, len, i, 2, &t->hour) || !read_char(s, len, i, ':') ||
	    !read_digits(s, len, i, 2, &t->min) || !read_char(s, len, i, ':') ||
	    !read_digits(s, len, i, 2, &t->sec))
		return false;
	if (*i < len && s[*i] == '.') {
		(*i)++;
		for (f = 0; f < 6 && *i < len && is_digit(s[*i]); f++, (*i)++)
			t->usec = t->usec * 10 + (s[*i] - '0');
		if (f == 0)
			return false;
		for (; f < 6; f++)
			t->usec *= 10;
	}
	t->has_time = true;
	return t->hour <= 23 && t->min <= 59 && t->sec <= 59;
}

/* Parses "YYYY-MM-DD[ HH:MM:SS[.f]][tz][ BC]"; time and tz as `with_time`/`with_tz` say. */
static bool iso_parse(const uint8_t *s, size_t len, bool with_time, bool with_tz, IsoTime *t)
{
	size_t i = 0;
	int y;

	memset(t, 0, sizeof(*t));
	while (i < len && is_digit(s[i]) && i < 8)
		i++;
	t->year_len = i;
	if (i < 4 || i > 7)
		return false;
	i = 0;
	if (!read_digits(s, len, &i, t->year_len, &t->year) || !read_char(s, len, &i, '-') ||
	    !read_digits(s, len, &i, 2, &t->month) || !read_char(s, len, &i, '-') ||
	    !read_digits(s, len, &i, 2, &t->day))
		return false;
	if (with_time && !iso_parse_time(s, len, &i, t))
		return false;
	if (with_tz && !iso_parse_tz(s, len, &i, t))
		return false;
	if (len - i == 3 && memcmp(s + i, " BC", 3) == 0) {
		t->bc = true;
		i += 3;
	}
	y = t->bc ? 1 - t->year : t->year;
	return i == len && t->year >= 1 && t->year <= 5874897 && days_in_month_ok(y, t->month, t->day);
}

static bool is_word(const uint8_t *s, size_t len, const char *w)
{
	return len == strlen(w) && memcmp(s, w, len) == 0;
}

/* Text truncate: the fields rewritten in place, the year, offset and era kept as written. */
static int trunc_text(const uint8_t *s, size_t len, bool ts, bool tz, TruncUnit u, MaskOut *o)
{
	IsoTime t;
	char buf[32];

	if (is_word(s, len, "infinity") || is_word(s, len, "-infinity")) {
		out_put(o, s, len);
		return MASK_OK;
	}
	if (!iso_parse(s, len, ts, tz, &t))
		return MASK_EVALUE;
	if (u == TRUNC_YEAR)
		t.month = 1;
	if (u <= TRUNC_MONTH)
		t.day = 1;
	if (date2j(t.bc ? 1 - t.year : t.year, t.month, t.day) < 0)
		return MASK_EVALUE; /* before 4714-11-24 BC */
	out_put(o, s, t.year_len);
	snprintf(buf, sizeof(buf), "-%02d-%02d", t.month, t.day);
	out_puts(o, buf);
	if (ts) {
		snprintf(buf, sizeof(buf), " %02d:00:00", u == TRUNC_HOUR ? t.hour : 0);
		out_puts(o, buf);
	}
	out_put(o, s + t.tz_at, t.tz_len);
	if (t.bc)
		out_puts(o, " BC");
	return MASK_OK;
}

/* Binary truncate of a date (days since 2000-01-01) or timestamp (microseconds, in UTC). */
static int trunc_binary(const uint8_t *in, size_t len, bool ts, TruncUnit u, MaskOut *o)
{
	int64_t us, days, tod;
	int jd;

	if (len != (ts ? 8u : 4u))
		return MASK_EVALUE;
	if (!ts) {
		int32_t dv = (int32_t)get_be(in, 4);

		if (dv == INT32_MIN || dv == INT32_MAX || u >= TRUNC_DAY) {
			out_put(o, in, 4);
			return MASK_OK;
		}
		if ((int64_t)dv + PG_EPOCH_JDATE > INT32_MAX || !trunc_jd(dv + PG_EPOCH_JDATE, u, &jd))
			return MASK_EVALUE;
		out_put_be(o, (uint32_t)(jd - PG_EPOCH_JDATE), 4);
		return MASK_OK;
	}
	us = (int64_t)get_be(in, 8);
	if (us == INT64_MIN || us == INT64_MAX) {
		out_put(o, in, 8);
		return MASK_OK;
	}
	days = us / USECS_PER_DAY - (us % USECS_PER_DAY < 0);
	tod = us - days * USECS_PER_DAY;
	if (days + PG_EPOCH_JDATE < 0 || days + PG_EPOCH_JDATE > INT32_MAX ||
	    !trunc_jd((int)(days + PG_EPOCH_JDATE), u, &jd))
		return MASK_EVALUE;
	tod = u == TRUNC_HOUR ? tod - tod % USECS_PER_HOUR : 0;
	out_put_be(o, (uint64_t)((jd - PG_EPOCH_JDATE) * USECS_PER_DAY + tod), 8);
	return MASK_OK;
}

static int mask_truncate(const Rule *r, uint32_t oid, int16_t format, const uint8_t *in, size_t len,
			 MaskOut *o)
{
	bool ts = type_class(oid) == TC_TIMESTAMP;

	if (format != 0)
		return trunc_binary(in, len, ts, trunc_unit(r), o);
	return trunc_text(in, len, ts, ts && type_size(oid) == 1, trunc_unit(r), o);
}

/* ---- constant() ----------------------------------------------------------------------- */

static bool bool_parse(const char *v, bool *b)
{
	static const char *const yes[] = { "t", "true", "y", "yes", "on", "1" };
	static const char *const no[] = { "f", "false", "n", "no", "off", "0" };

	for (size_t i = 0; i < PGV_ARRAY_LEN(yes); i++) {
		if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
			*b = strcasecmp(v, yes[i]) == 0;
			return true;
		}
	}
	return false;
}

/* A constant date or timestamp: its Julian day and microseconds since midnight UTC. */
static bool time_const(const char *v, TypeClass tc, bool tz, int64_t *us)
{
	IsoTime t;
	int jd;

	if (!iso_parse((const uint8_t *)v, strlen(v), tc == TC_TIMESTAMP, tz, &t))
		return false;
	jd = date2j(t.bc ? 1 - t.year : t.year, t.month, t.day);
	if (jd < 0 || (tc == TC_TIMESTAMP && jd >= 109203528)) /* timestamps end with 294276 AD */
		return false;
	*us = (int64_t)(jd - PG_EPOCH_JDATE) * (tc == TC_DATE ? 1 : USECS_PER_DAY);
	if (tc == TC_TIMESTAMP)
		*us += ((t.hour * INT64_C(60) + t.min) * 60 + t.sec - t.tz_secs) * INT64_C(1000000) + t.usec;
	return true;
}

/* Checks (o NULL) or writes constant('v') for a column of type oid; false when v does not fit it. */
static bool const_value(const char *v, uint32_t oid, int16_t format, MaskOut *o)
{
	TypeClass tc = type_class(oid);
	int size = type_size(oid);
	size_t n = strlen(v);
	int64_t us;
	long long iv;
	bool b;
	Dec x;

	switch (tc) {
	case TC_TEXT:
		if (!utf8_valid((const uint8_t *)v, n))
			return false;
		if (o != NULL)
			out_put(o, v, n);
		return true;
	case TC_INT:
		if (!int_read(size, 0, (const uint8_t *)v, n, &x) || !dec_to_int(&x, size, &iv))
			return false;
		if (o != NULL)
			int_write(o, size, format, iv);
		return true;
	case TC_FLOAT:
		if (!float_read(size, 0, (const uint8_t *)v, n, &x))
			return false;
		float_to_dec(dec_to_double(&x, size), size, &x); /* as the server would write it */
		if (o != NULL)
			float_write(o, size, format, &x);
		return true;
	case TC_NUMERIC:
		if (!numeric_read(0, (const uint8_t *)v, n, &x) || x.more || x.dscale > NUMERIC_DSCALE_MAX)
			return false;
		if (o != NULL)
			numeric_write(o, format, &x);
		return true;
	case TC_BOOL:
		if (!bool_parse(v, &b))
			return false;
		if (o != NULL)
			out_putc(o, format != 0 ? (char)b : b ? 't' : 'f');
		return true;
	case TC_DATE:
	case TC_TIMESTAMP:
		if (!time_const(v, tc, size == 1, &us))
			return false;
		if (o != NULL && format != 0)
			out_put_be(o, (uint64_t)us, tc == TC_DATE ? 4 : 8);
		else if (o != NULL)
			out_put(o, v, n);
		return true;
	default:
		return false;
	}
}

/* ---- which function for which type ----------------------------------------------------- */

static bool fn_applies(MaskFn fn, TypeClass tc)
{
	switch (fn) {
	case MASK_NULL: return true;
	case MASK_REDACT: return tc != TC_UNKNOWN;
	case MASK_CONSTANT: return tc != TC_UNKNOWN && tc != TC_OTHER;
	case MASK_PARTIAL:
	case MASK_EMAIL:
	case MASK_HASH: return tc == TC_TEXT;
	case MASK_TRUNCATE: return tc == TC_DATE || tc == TC_TIMESTAMP;
	case MASK_ROUND: return tc == TC_INT || tc == TC_NUMERIC || tc == TC_FLOAT;
	}
	return false;
}

/* The arguments rules_load() guarantees, checked again for rules built otherwise. */
static bool args_ok(const Rule *r)
{
	static const char want[][4] = {
		[MASK_REDACT] = "", [MASK_NULL] = "", [MASK_CONSTANT] = "s", [MASK_PARTIAL] = "isi",
		[MASK_EMAIL] = "", [MASK_HASH] = "", [MASK_TRUNCATE] = "s", [MASK_ROUND] = "i",
	};
	const char *w;
	int n;

	if (r->kind != RULE_MASK || (size_t)r->mask_fn >= PGV_ARRAY_LEN(want))
		return false;
	w = want[r->mask_fn];
	n = (int)strlen(w);
	if (r->mask_fn == MASK_HASH && r->n_args == 1)
		return r->args[0].type == MASK_ARG_INT && r->args[0].ival >= 1 && r->args[0].ival <= MASK_HASH_HEX;
	if (r->n_args != n)
		return false;
	for (int i = 0; i < n; i++) {
		const MaskArg *a = &r->args[i];

		if (w[i] == 's' ? a->type != MASK_ARG_STRING || a->sval == NULL
				: a->type != MASK_ARG_INT || a->ival < 0 || a->ival > INT32_MAX)
			return false;
	}
	if (r->mask_fn == MASK_ROUND && (r->args[0].ival < 1 || r->args[0].ival > 38))
		return false;
	return r->mask_fn != MASK_TRUNCATE || strcmp(r->args[0].sval, "year") == 0 ||
	       strcmp(r->args[0].sval, "month") == 0 || strcmp(r->args[0].sval, "day") == 0 ||
	       strcmp(r->args[0].sval, "hour") == 0;
}

static const char *fn_types(MaskFn fn)
{
	switch (fn) {
	case MASK_PARTIAL:
	case MASK_EMAIL:
	case MASK_HASH: return "it applies to text, varchar, bpchar and name";
	case MASK_TRUNCATE: return "it applies to date, timestamp and timestamptz";
	case MASK_ROUND: return "it applies to int2, int4, int8, numeric, float4 and float8";
	case MASK_CONSTANT:
		return "pgveil checks constants only for text, varchar, bpchar, name, integers, numeric, "
		       "floats, bool, date, timestamp and timestamptz; use null() or redact()";
	default: return "pgveil does not know this type; only null() applies";
	}
}

bool mask_check_type(const Rule *r, uint32_t type_oid, char *why, size_t whylen)
{
	TypeClass tc = type_class(type_oid);
	const char *fn = rules_mask_fn_name(r->mask_fn);
	char tbuf[32];
	const char *tname = mask_type_name(type_oid, tbuf, sizeof(tbuf));

	if (!args_ok(r)) {
		snprintf(why, whylen, "%s(): the arguments are not valid", fn);
		return false;
	}
	if (!fn_applies(r->mask_fn, tc)) {
		snprintf(why, whylen, "%s() cannot mask a column of type %s: %s", fn, tname,
			 tc == TC_UNKNOWN ? fn_types(MASK_NULL) : fn_types(r->mask_fn));
		return false;
	}
	if (r->mask_fn == MASK_CONSTANT && !const_value(r->args[0].sval, type_oid, 0, NULL)) {
		snprintf(why, whylen, "constant(): '%s' is not a valid %s value", r->args[0].sval, tname);
		return false;
	}
	if (r->mask_fn == MASK_PARTIAL &&
	    !utf8_valid((const uint8_t *)r->args[1].sval, strlen(r->args[1].sval))) {
		snprintf(why, whylen, "partial(): the padding is not valid UTF-8");
		return false;
	}
	return true;
}

/* ---- applying --------------------------------------------------------------------------- */

static int apply_fn(const Rule *r, const MaskKey *key, uint32_t oid, int16_t format, const uint8_t *in,
		    size_t len, MaskOut *o)
{
	TypeClass tc = type_class(oid);

	switch (r->mask_fn) {
	case MASK_REDACT:
		if (tc != TC_TEXT)
			return out_fail(o, MASK_OK);
		out_puts(o, MASK_REDACT_TEXT);
		return MASK_OK;
	case MASK_CONSTANT: return const_value(r->args[0].sval, oid, format, o) ? MASK_OK : MASK_EVALUE;
	case MASK_PARTIAL: mask_partial(r, in, len, o); return MASK_OK;
	case MASK_EMAIL: mask_email(in, len, o); return MASK_OK;
	case MASK_HASH: return mask_hash(r, key, in, len, o);
	case MASK_TRUNCATE: return mask_truncate(r, oid, format, in, len, o);
	case MASK_ROUND: return mask_round(r, oid, format, in, len, o);
	case MASK_NULL: break;
	}
	return out_fail(o, MASK_OK);
}

int mask_apply(const Rule *r, const MaskKey *key, uint32_t type_oid, int16_t format, const uint8_t *in,
	       int32_t len, MaskOut *out)
{
	int rc;

	out_start(out);
	if (!args_ok(r))
		return out_fail(out, MASK_EARGS);
	if (!fn_applies(r->mask_fn, type_class(type_oid)))
		return out_fail(out, MASK_ETYPE);
	if (format != 0 && format != 1)
		return out_fail(out, MASK_EVALUE);
	if (len >= 0 && in == NULL && len > 0)
		return out_fail(out, MASK_EVALUE);
	if (len < 0)
		return out_fail(out, MASK_OK);
	rc = apply_fn(r, key, type_oid, format, in != NULL ? in : (const uint8_t *)"", (size_t)len, out);
	if (rc != MASK_OK)
		return out_fail(out, rc);
	if (out->len < 0) /* NULL by design */
		return MASK_OK;
	return out_finish(out);
}

/* ---- the key --------------------------------------------------------------------------- */

static bool PGV_PRINTF(4, 5) key_error(MaskKey *out, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	mask_key_clear(out);
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return false;
}

bool mask_key_load(const char *path, MaskKey *out, char *err, size_t errlen)
{
	uint8_t buf[MASK_KEY_MAX + 3];
	struct stat sb;
	ssize_t n;
	size_t len = 0;
	int fd;

	mask_key_clear(out);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return key_error(out, err, errlen, "mask_key_file %s: %s", path, strerror(errno));
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		return key_error(out, err, errlen, "mask_key_file %s: not a regular file", path);
	}
	if ((sb.st_mode & (S_IROTH | S_IWOTH)) != 0) {
		close(fd);
		return key_error(out, err, errlen,
				 "mask_key_file %s: others may read or write it (mode %04o); chmod 600 or 640",
				 path, (unsigned)(sb.st_mode & 07777));
	}
	while (len < sizeof(buf) && (n = read(fd, buf + len, sizeof(buf) - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;

			close(fd);
			OPENSSL_cleanse(buf, sizeof(buf));
			return key_error(out, err, errlen, "mask_key_file %s: %s", path, strerror(e));
		}
		len += (size_t)n;
	}
	close(fd);
	if (len > 0 && buf[len - 1] == '\n')
		len -= (len > 1 && buf[len - 2] == '\r') ? 2 : 1;
	if (len < MASK_KEY_MIN || len > MASK_KEY_MAX) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return key_error(out, err, errlen, "mask_key_file %s: the key must have %d to %d bytes%s", path,
				 MASK_KEY_MIN, MASK_KEY_MAX, len == 0 ? " (the file is empty)" : "");
	}
	memcpy(out->bytes, buf, len);
	out->len = len;
	OPENSSL_cleanse(buf, sizeof(buf));
	return true;
}

void mask_key_clear(MaskKey *key)
{
	OPENSSL_cleanse(key, sizeof(*key));
}
