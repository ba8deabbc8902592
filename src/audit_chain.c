/* SPDX-License-Identifier: MIT */
/*
 * The audit log's hash chain: the canonical encoding of a queries row's
 * values (AuditValue: a storage class and bytes) and its SHA-256 (OpenSSL
 * EVP), shared by the writer, which hashes the values it binds (each with
 * the storage class its column keeps, so they are what SQLite stores), and
 * by the verifier behind `pgveil --verify-audit`, which reads them back and
 * walks the chained rows in chain_seq order from the beginning or from the
 * retention checkpoint that precedes the oldest one. The encoding is
 * documented in doc/audit.md.
 */
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit_int.h"

/* ---- the encoding --------------------------------------------------------------------- */

enum { TAG_NULL = 0, TAG_INTEGER = 1, TAG_REAL = 2, TAG_TEXT = 3, TAG_BLOB = 4 };

/* SHA-256, fetched from the provider once (an implicit fetch at every row costs more than the hash). */
static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
	sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

AuditValue audit_value_text(const char *s)
{
	AuditValue v = {
	    .type = s != NULL ? SQLITE_TEXT : SQLITE_NULL, .p = s, .n = s != NULL ? strlen(s) : 0};

	return v;
}

AuditValue audit_value_int(int64_t i)
{
	AuditValue v = {.type = SQLITE_INTEGER, .i = i};

	return v;
}

AuditValue audit_value_real(double r)
{
	AuditValue v = {.type = SQLITE_FLOAT, .r = r};

	return v;
}

AuditValue audit_value_column(sqlite3_stmt *st, int col)
{
	AuditValue v = {.type = sqlite3_column_type(st, col)};

	switch (v.type) {
	case SQLITE_INTEGER: v.i = sqlite3_column_int64(st, col); break;
	case SQLITE_FLOAT: v.r = sqlite3_column_double(st, col); break;
	case SQLITE_TEXT:
		v.p = sqlite3_column_text(st, col);
		v.n = (size_t)sqlite3_column_bytes(st, col);
		if (v.p == NULL) /* no memory for the text: nothing to hash it from */
			v.type = -1;
		break;
	case SQLITE_BLOB:
		v.p = sqlite3_column_blob(st, col);
		v.n = (size_t)sqlite3_column_bytes(st, col);
		break;
	default: v.type = SQLITE_NULL; break;
	}
	return v;
}

/*
 * The encoding is gathered in a buffer and hashed in a few large updates:
 * a row is some twenty small values, and an update per value costs more
 * than the hashing.
 */
typedef struct Enc {
	EVP_MD_CTX *ctx;
	size_t n;
	bool ok;
	unsigned char buf[1024];
} Enc;

static void enc_flush(Enc *e)
{
	if (e->n > 0 && e->ok)
		e->ok = EVP_DigestUpdate(e->ctx, e->buf, e->n) == 1;
	e->n = 0;
}

static void enc_bytes(Enc *e, const void *p, size_t n)
{
	if (n > sizeof(e->buf) - e->n) {
		enc_flush(e);
		if (n > sizeof(e->buf)) { /* a large value goes straight in */
			e->ok = e->ok && EVP_DigestUpdate(e->ctx, p, n) == 1;
			return;
		}
	}
	memcpy(e->buf + e->n, p, n);
	e->n += n;
}

/* A value's header: its tag, then 8 bytes big-endian (the integer, the real's bits, or the length). */
static void enc_header(Enc *e, unsigned char tag, uint64_t v, bool with_v)
{
	unsigned char b[9];

	b[0] = tag;
	for (int i = 8; i >= 1; i--, v >>= 8)
		b[i] = (unsigned char)(v & 0xff);
	enc_bytes(e, b, with_v ? sizeof(b) : 1);
}

/* One value: a type tag, then 8 bytes (integer, real) or an 8-byte length and the bytes. */
static void enc_value(Enc *e, const AuditValue *v)
{
	uint64_t bits;

	switch (v->type) {
	case SQLITE_NULL: enc_header(e, TAG_NULL, 0, false); break;
	case SQLITE_INTEGER: enc_header(e, TAG_INTEGER, (uint64_t)v->i, true); break;
	case SQLITE_FLOAT:
		memcpy(&bits, &v->r, sizeof(bits));
		enc_header(e, TAG_REAL, bits, true);
		break;
	case SQLITE_TEXT:
	case SQLITE_BLOB:
		enc_header(e, v->type == SQLITE_TEXT ? TAG_TEXT : TAG_BLOB, (uint64_t)v->n, true);
		if (v->n > 0)
			enc_bytes(e, v->p, v->n);
		break;
	default: e->ok = false; break;
	}
}

bool audit_chain_hash(const AuditValue v[AUDIT_CHAIN_NCOLS], char out[AUDIT_HASH_HEX])
{
	Enc e = {.ctx = EVP_MD_CTX_new(), .ok = true};
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	pthread_once(&sha256_once, sha256_fetch);
	if (e.ctx == NULL || sha256 == NULL) {
		EVP_MD_CTX_free(e.ctx);
		return false;
	}
	e.ok = EVP_DigestInit_ex2(e.ctx, sha256, NULL) == 1;
	for (int i = 0; e.ok && i < AUDIT_CHAIN_NCOLS; i++)
		enc_value(&e, &v[i]);
	enc_flush(&e);
	e.ok = e.ok && EVP_DigestFinal_ex(e.ctx, md, &mdlen) == 1 && mdlen == 32;
	EVP_MD_CTX_free(e.ctx);
	if (!e.ok)
		return false;
	pgv_hex(out, md, mdlen);
	out[64] = '\0';
	return true;
}

bool audit_chain_hash_row(sqlite3_stmt *st, char out[AUDIT_HASH_HEX])
{
	AuditValue v[AUDIT_CHAIN_NCOLS];

	for (int i = 0; i < AUDIT_CHAIN_NCOLS; i++)
		v[i] = audit_value_column(st, i);
	return audit_chain_hash(v, out);
}

/* Writes v as exactly `width` decimal digits at p (v < 10^width). */
static char *put_digits(char *p, unsigned v, int width)
{
	for (int i = width - 1; i >= 0; i--) {
		p[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return p + width;
}

/*
 * The writer formats one time per row: the civil date comes from the day
 * number (the days-from-civil algorithm run backwards), without gmtime_r's
 * lock or printf.
 */
void audit_format_time(int64_t us, char buf[32])
{
	int64_t sec = us / 1000000, frac = us % 1000000, days, sod, z, era, doe, yoe, y, doy, mp;
	unsigned month, day;
	char *p = buf;

	if (frac < 0) {
		frac += 1000000;
		sec--;
	}
	days = sec / 86400;
	sod = sec % 86400;
	if (sod < 0) {
		sod += 86400;
		days--;
	}
	z = days + 719468; /* days since 0000-03-01 */
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	y = yoe + era * 400;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	day = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
	month = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
	y += month <= 2;
	if (y < 0 || y > 9999) {
		memcpy(buf, "0000-00-00T00:00:00.000000Z", 28);
		return;
	}
	p = put_digits(p, (unsigned)y, 4);
	*p++ = '-';
	p = put_digits(p, month, 2);
	*p++ = '-';
	p = put_digits(p, day, 2);
	*p++ = 'T';
	p = put_digits(p, (unsigned)(sod / 3600), 2);
	*p++ = ':';
	p = put_digits(p, (unsigned)(sod / 60 % 60), 2);
	*p++ = ':';
	p = put_digits(p, (unsigned)(sod % 60), 2);
	*p++ = '.';
	p = put_digits(p, (unsigned)frac, 6);
	*p++ = 'Z';
	*p = '\0';
}

/* ---- the verifier ---------------------------------------------------------------------- */

/* Where the walk is. */
typedef struct Walk {
	sqlite3 *db;
	FILE *out;
	int64_t n_rows;    /* chained rows checked */
	int64_t first_seq; /* chain_seq of the first chained row */
	int64_t prev_seq;  /* chain_seq of the previous row, 0 before the first */
	char prev_hash[AUDIT_HASH_HEX];
	bool from_checkpoint; /* the chain starts after a retention checkpoint */
} Walk;

static const char *col_text(sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	return t != NULL ? (const char *)t : NULL;
}

/* 2 (with a message) unless `path` is a pgveil audit database this pgveil can read. */
static int verify_open(const char *path, Walk *w)
{
	sqlite3_stmt *st = NULL;
	int version = -1;

	if (sqlite3_open_v2(path, &w->db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(w->db, 5000);
	if (sqlite3_prepare_v2(w->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW)
		goto fail;
	version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	if (version == 0 || version > AUDIT_SCHEMA_VERSION) {
		fprintf(w->out, "%s: %s\n", path,
		        version == 0 ? "not a pgveil audit database (no schema version)"
		                     : "the schema is from a newer pgveil");
		return 2;
	}
	if (sqlite3_prepare_v2(w->db, "SELECT 1 FROM queries, checkpoints LIMIT 0", -1, &st, NULL) !=
	    SQLITE_OK)
		goto fail;
	sqlite3_finalize(st);
	return 0;
fail:
	fprintf(w->out, "%s: cannot read the audit database: %s\n", path,
	        w->db != NULL ? sqlite3_errmsg(w->db) : "out of memory");
	sqlite3_finalize(st);
	return 2;
}

/* 0 when the first chained row (chain_seq `seq`, prev_hash `prev`) starts the chain rightly. */
static int verify_start(Walk *w, sqlite3_stmt *row, int64_t seq, const char *prev)
{
	sqlite3_stmt *st = NULL;
	int rc = 1;

	w->first_seq = seq;
	if (seq == 1) {
		if (prev != NULL && prev[0] == '\0')
			return 0;
		fprintf(w->out,
		        "broken: row id %lld (chain_seq 1): prev_hash is not '' as the first row's must be\n",
		        (long long)sqlite3_column_int64(row, 1));
		return 1;
	}
	if (sqlite3_prepare_v2(w->db,
	                       "SELECT hash FROM checkpoints WHERE chain_seq = ?1 ORDER BY id DESC LIMIT 1",
	                       -1, &st, NULL) != SQLITE_OK) {
		fprintf(w->out, "cannot read the checkpoints: %s\n", sqlite3_errmsg(w->db));
		return 2;
	}
	sqlite3_bind_int64(st, 1, seq - 1);
	if (sqlite3_step(st) != SQLITE_ROW) {
		fprintf(w->out,
		        "broken: rows deleted before chain_seq %lld (no retention checkpoint covers them)\n",
		        (long long)seq);
	} else if (prev == NULL || col_text(st, 0) == NULL || strcmp(prev, col_text(st, 0)) != 0) {
		fprintf(w->out,
		        "broken: row id %lld (chain_seq %lld): prev_hash does not match the checkpoint at "
		        "chain_seq %lld "
		        "(row inserted or checkpoint altered)\n",
		        (long long)sqlite3_column_int64(row, 1), (long long)seq, (long long)(seq - 1));
	} else {
		w->from_checkpoint = true;
		rc = 0;
	}
	sqlite3_finalize(st);
	return rc;
}

/* 0 when the current row of `st` (AUDIT_CHAIN_COLUMNS, then hash) is intact and follows the previous one. */
static int verify_row(Walk *w, sqlite3_stmt *st)
{
	long long id = sqlite3_column_int64(st, CH_ID);
	int64_t seq = sqlite3_column_int64(st, CH_CHAIN_SEQ);
	const char *prev = col_text(st, 0), *hash = col_text(st, AUDIT_CHAIN_NCOLS);
	char calc[AUDIT_HASH_HEX];

	if (!audit_chain_hash_row(st, calc)) {
		fprintf(w->out, "cannot compute a hash (out of memory)\n");
		return 2;
	}
	if (hash == NULL || strcmp(calc, hash) != 0) {
		fprintf(w->out,
		        "broken: row id %lld (chain_seq %lld): hash does not match its contents (altered)\n",
		        id, (long long)seq);
		return 1;
	}
	if (w->n_rows == 0) {
		int rc = verify_start(w, st, seq, prev);

		if (rc != 0)
			return rc;
	} else if (seq != w->prev_seq + 1) {
		fprintf(
		    w->out,
		    "broken: rows deleted after chain_seq %lld (the next is chain_seq %lld, row id %lld)\n",
		    (long long)w->prev_seq, (long long)seq, id);
		return 1;
	} else if (prev == NULL || strcmp(prev, w->prev_hash) != 0) {
		fprintf(w->out,
		        "broken: row id %lld (chain_seq %lld): prev_hash is not the hash of chain_seq %lld "
		        "(row inserted or rows reordered)\n",
		        id, (long long)seq, (long long)w->prev_seq);
		return 1;
	}
	w->n_rows++;
	w->prev_seq = seq;
	snprintf(w->prev_hash, sizeof(w->prev_hash), "%s", hash);
	return 0;
}

/* The single count `sql` answers, or -1 (a file of schema version 1 has no pending table). */
static int64_t count_rows(Walk *w, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int64_t n = -1;

	if (sqlite3_prepare_v2(w->db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

static void verify_report_ok(Walk *w)
{
	/* rows without a chain position: statements that never finished (pgveil stopped while they ran) */
	int64_t unfinished = count_rows(w, "SELECT count(*) FROM queries WHERE chain_seq IS NULL");
	int64_t pending = count_rows(w, "SELECT count(*) FROM pending");

	if (w->n_rows == 0)
		fprintf(w->out, "ok: 0 rows, chain intact (nothing chained yet)");
	else
		fprintf(w->out, "ok: %lld rows, chain intact (chain_seq %lld..%lld%s); head hash %s",
		        (long long)w->n_rows, (long long)w->first_seq, (long long)w->prev_seq,
		        w->from_checkpoint ? ", after a retention checkpoint" : "", w->prev_hash);
	if (unfinished > 0)
		fprintf(w->out, "; %lld unfinished rows (not chained)", (long long)unfinished);
	if (pending > 0)
		fprintf(w->out, "; %lld statements in pending (recorded before they ran, outcome not written: "
		                "pgveil moves them into queries when it opens the file)",
		        (long long)pending);
	fputc('\n', w->out);
}

int audit_verify(const char *path, void *out)
{
	Walk w = {.out = out != NULL ? out : stdout};
	sqlite3_stmt *st = NULL;
	int rc, step = SQLITE_DONE;

	rc = verify_open(path, &w);
	if (rc != 0)
		goto done;
	if (sqlite3_prepare_v2(w.db,
	                       "SELECT " AUDIT_CHAIN_COLUMNS ", hash FROM queries WHERE chain_seq IS NOT NULL"
	                       " ORDER BY chain_seq",
	                       -1, &st, NULL) != SQLITE_OK) {
		fprintf(w.out, "%s: cannot read the queries: %s\n", path, sqlite3_errmsg(w.db));
		rc = 2;
		goto done;
	}
	while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW)
		rc = verify_row(&w, st);
	if (rc == 0 && step != SQLITE_DONE) {
		fprintf(w.out, "%s: cannot read the queries: %s\n", path, sqlite3_errmsg(w.db));
		rc = 2;
	}
	if (rc == 0)
		verify_report_ok(&w);
done:
	sqlite3_finalize(st);
	sqlite3_close(w.db);
	return rc;
}
