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

/* A value's header: its tag, then 8 bytes big-endian (the integer, the real's bits, or the length). */
static bool put_header(EVP_MD_CTX *ctx, unsigned char tag, uint64_t v, bool with_v)
{
	unsigned char b[9];

	b[0] = tag;
	for (int i = 8; i >= 1; i--, v >>= 8)
		b[i] = (unsigned char)(v & 0xff);
	return EVP_DigestUpdate(ctx, b, with_v ? sizeof(b) : 1) == 1;
}

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

/* One value: a type tag, then 8 bytes (integer, real) or an 8-byte length and the bytes. */
static bool put_value(EVP_MD_CTX *ctx, const AuditValue *v)
{
	uint64_t bits;

	switch (v->type) {
	case SQLITE_NULL: return put_header(ctx, TAG_NULL, 0, false);
	case SQLITE_INTEGER: return put_header(ctx, TAG_INTEGER, (uint64_t)v->i, true);
	case SQLITE_FLOAT:
		memcpy(&bits, &v->r, sizeof(bits));
		return put_header(ctx, TAG_REAL, bits, true);
	case SQLITE_TEXT:
	case SQLITE_BLOB:
		return put_header(ctx, v->type == SQLITE_TEXT ? TAG_TEXT : TAG_BLOB, (uint64_t)v->n, true) &&
		       (v->n == 0 || EVP_DigestUpdate(ctx, v->p, v->n) == 1);
	default: return false;
	}
}

bool audit_chain_hash(const AuditValue v[AUDIT_CHAIN_NCOLS], char out[AUDIT_HASH_HEX])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	bool ok;

	pthread_once(&sha256_once, sha256_fetch);
	if (ctx == NULL || sha256 == NULL) {
		EVP_MD_CTX_free(ctx);
		return false;
	}
	ok = EVP_DigestInit_ex2(ctx, sha256, NULL) == 1;
	for (int i = 0; ok && i < AUDIT_CHAIN_NCOLS; i++)
		ok = put_value(ctx, &v[i]);
	ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
	EVP_MD_CTX_free(ctx);
	if (!ok)
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

void audit_format_time(int64_t us, char buf[32])
{
	int64_t sec = us / 1000000, frac = us % 1000000;
	time_t t;
	struct tm tm;
	char tmp[96];

	if (frac < 0) {
		frac += 1000000;
		sec--;
	}
	t = (time_t)sec;
	if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) {
		snprintf(buf, 32, "%s", "0000-00-00T00:00:00.000000Z");
		return;
	}
	snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)frac);
	snprintf(buf, 32, "%.31s", tmp); /* 27 characters for every year 0-9999 */
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
