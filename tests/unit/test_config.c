/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the config module: the sample file of the documentation and
 * a file setting every key load with the right values; each kind of error is
 * reported as "file:line:col: message" at the right place; continuation and
 * long lines; and the duration and connection-string parsers on their own.
 * Files are written into a fresh temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "pgveil/config.h"
#include "pgveil/mask.h"
#include "pgveil/rules.h"

static char tmpdir[] = "/tmp/pgveil-test-config-XXXXXX";

static int group_setup(void **state)
{
	return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* Writes `content` to <tmpdir>/<name>; returns the path (static buffer). */
static const char *write_file(const char *name, const char *content)
{
	static char path[256];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(fputs(content, fp) >= 0, 1);
	assert_int_equal(fclose(fp), 0);
	return path;
}

static Config *load_ok(const char *path)
{
	char *errs = NULL;
	int nerrors = -1;
	Config *cfg = config_load(path, &errs, &nerrors);

	if (cfg == NULL)
		fail_msg("%s did not load (%d errors):\n%s", path, nerrors, errs ? errs : "");
	assert_null(errs);
	assert_int_equal(nerrors, 0);
	return cfg;
}

/* Loads path with the source tree as working directory (where rules/ is). */
static Config *load_ok_in_srcdir(const char *path)
{
	char cwd[4096];
	Config *cfg;

	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(TEST_SRCDIR "/../.."), 0);
	cfg = load_ok(path);
	assert_int_equal(chdir(cwd), 0);
	return cfg;
}

static Config *load_text_ok(const char *text)
{
	return load_ok(write_file("ok.ini", text));
}

/* An expected error: where, and a piece of its message. */
typedef struct ErrAt {
	int line, col;
	const char *text;
} ErrAt;

/* Asserts that errs has a line "<path>:<line>:<col>: ...<text>...". */
static void assert_error_at(const char *errs, const char *path, const ErrAt *e)
{
	char prefix[300];
	size_t plen;

	plen = (size_t)snprintf(prefix, sizeof(prefix), "%s:%d:%d: ", path, e->line, e->col);
	for (const char *l = errs; l != NULL && *l != '\0'; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		const char *eol = strchr(l, '\n');
		size_t llen = eol ? (size_t)(eol - l) : strlen(l);
		char line[1024];

		snprintf(line, sizeof(line), "%.*s", (int)llen, l);
		if (strncmp(line, prefix, plen) == 0 && strstr(line + plen, e->text) != NULL)
			return;
	}
	fail_msg("no error \"%s%s\" in:\n%s", prefix, e->text, errs);
}

/* Loads `text`, which must fail with exactly n errors, each of `want` among them. */
static void expect_errors(const char *text, int n, const ErrAt *want)
{
	const char *path = write_file("bad.ini", text);
	char *errs = NULL;
	int nerrors = -1;
	Config *cfg = config_load(path, &errs, &nerrors);

	assert_null(cfg);
	assert_non_null(errs);
	if (nerrors != n)
		fail_msg("want %d errors, got %d:\n%s", n, nerrors, errs);
	/* One message per line. */
	{
		int lines = 0;

		for (const char *p = errs; *p; p++)
			lines += (*p == '\n');
		assert_int_equal(lines, n);
	}
	for (int i = 0; i < n; i++)
		assert_error_at(errs, path, &want[i]);
	free(errs);
}

static void expect_error(const char *text, int line, int col, const char *msg)
{
	ErrAt e = { line, col, msg };

	expect_errors(text, 1, &e);
}

/* ---- valid files ------------------------------------------------------------ */

static void test_load_sample(void **state)
{
	Config *cfg = load_ok_in_srcdir(TEST_SRCDIR "/data/sample.ini");
	const DbEntry *db;

	assert_int_equal(cfg->refcount, 1);
	assert_int_equal(cfg->listen_addr.n, 1);
	assert_string_equal(cfg->listen_addr.items[0], "127.0.0.1");
	assert_int_equal(cfg->listen_port, 6432);
	assert_true(cfg->workers >= 1); /* 0 = one per CPU, resolved at load */
	assert_int_equal(cfg->max_client_conn, 1000);
	assert_null(cfg->tls_cert_file);
	assert_null(cfg->tls_key_file);
	assert_false(cfg->allow_plaintext_auth);
	assert_false(cfg->dev_trust_auth);
	assert_string_equal(cfg->rules, "rules/");
	assert_non_null(cfg->ruleset); /* the shipped default rules, relative to the working directory */
	assert_true(cfg->ruleset->n_rules > 0);
	assert_int_equal(cfg->default_action, ACTION_BLOCK);
	assert_string_equal(cfg->audit_db, "audit.db");
	assert_int_equal(cfg->audit_mode, AUDIT_ASYNC);
	assert_int_equal(cfg->audit_retention, 0);
	assert_int_equal(cfg->hold_timeout, 5 * 60 * 1000);
	assert_string_equal(cfg->admin_db, "pgveil");
	assert_int_equal(cfg->admin_groups.n, 1);
	assert_string_equal(cfg->admin_groups.items[0], "pgveil-admins");
	assert_int_equal(cfg->approver_groups.n, 1);
	assert_string_equal(cfg->approver_groups.items[0], "dba");
	assert_int_equal(cfg->auditor_groups.n, 1);
	assert_string_equal(cfg->auditor_groups.items[0], "audit");
	assert_string_equal(cfg->mask_key_file, "mask.key");
	assert_false(cfg->mask_predicates_allow);
	assert_false(cfg->audit_redact_literals);
	assert_int_equal(cfg->startup_timeout, 10000);
	assert_int_equal(cfg->shutdown_timeout, 30000);
	assert_int_equal(cfg->log_level, 2);
	assert_int_equal(cfg->log_format, LOGFMT_TEXT);

	assert_string_equal(cfg->oidc_issuer, "https://idp.example.com/");
	assert_string_equal(cfg->oidc_audience, "pgveil");
	assert_string_equal(cfg->oidc_jwks_file, "jwks.json");
	assert_null(cfg->oidc_jwks_uri);
	assert_int_equal(cfg->oidc_algorithms.n, 2);
	assert_string_equal(cfg->oidc_algorithms.items[0], "RS256");
	assert_string_equal(cfg->oidc_algorithms.items[1], "ES256");
	assert_string_equal(cfg->oidc_subject_claim, "sub");
	assert_string_equal(cfg->oidc_groups_claim, "groups");
	assert_int_equal(cfg->oidc_clock_skew, 60);
	assert_false(cfg->oidc_match_user);

	assert_int_equal(cfg->n_databases, 1);
	db = config_find_db(cfg, "app");
	assert_non_null(db);
	assert_string_equal(db->name, "app");
	assert_string_equal(db->host, "127.0.0.1");
	assert_int_equal(db->port, 5432);
	assert_string_equal(db->dbname, "app");
	assert_string_equal(db->user, "app_agent");
	assert_string_equal(db->password, "secret");
	assert_int_equal(db->sslmode, SSLMODE_PREFER);
	assert_null(db->sslrootcert);
	assert_int_equal(db->connect_timeout, 0);
	assert_null(config_find_db(cfg, "App"));
	assert_null(config_find_db(cfg, "other"));
	assert_true(config_listeners_loopback(cfg));
	assert_ptr_equal(config_ref(cfg), cfg);
	assert_int_equal(cfg->refcount, 2);
	config_unref(cfg);
	config_unref(cfg);
}

static void test_load_every_key(void **state)
{
	Config *cfg = load_ok_in_srcdir(TEST_SRCDIR "/data/full.ini");
	const DbEntry *app, *local;

	assert_int_equal(cfg->listen_addr.n, 3);
	assert_string_equal(cfg->listen_addr.items[0], "127.0.0.1");
	assert_string_equal(cfg->listen_addr.items[1], "::1");
	assert_string_equal(cfg->listen_addr.items[2], "localhost");
	assert_int_equal(cfg->listen_port, 7000);
	assert_int_equal(cfg->workers, 3);
	assert_int_equal(cfg->max_client_conn, 50);
	assert_string_equal(cfg->tls_cert_file, "server.crt");
	assert_string_equal(cfg->tls_key_file, "server.key");
	assert_null(cfg->tls_server_ctx); /* built later by the tls module */
	assert_true(cfg->allow_plaintext_auth);
	assert_true(cfg->dev_trust_auth);
	assert_string_equal(cfg->rules, "rules/default.rules");
	assert_non_null(cfg->ruleset);
	assert_string_equal(cfg->ruleset->rules[0].file, "rules/default.rules");
	assert_int_equal(cfg->default_action, ACTION_HOLD);
	assert_string_equal(cfg->audit_db, "/var/lib/pgveil/audit.db");
	assert_int_equal(cfg->audit_mode, AUDIT_STRICT);
	assert_int_equal(cfg->audit_retention, 90 * 86400);
	assert_int_equal(cfg->hold_timeout, 250);
	assert_string_equal(cfg->admin_db, "console");
	assert_int_equal(cfg->admin_groups.n, 2);
	assert_string_equal(cfg->admin_groups.items[1], "sre");
	assert_int_equal(cfg->approver_groups.n, 2);
	assert_string_equal(cfg->approver_groups.items[0], "dba");
	assert_string_equal(cfg->approver_groups.items[1], "leads");
	assert_string_equal(cfg->auditor_groups.items[0], "compliance");
	assert_string_equal(cfg->mask_key_file, "/etc/pgveil/mask.key");
	assert_true(cfg->mask_predicates_allow);
	assert_true(cfg->audit_redact_literals);
	assert_int_equal(cfg->startup_timeout, 2000);
	assert_int_equal(cfg->shutdown_timeout, 60000);
	assert_int_equal(cfg->server_connect_timeout, 3000);
	assert_int_equal(cfg->max_packet_size, 64u << 20);
	assert_int_equal(cfg->log_level, 3);
	assert_int_equal(cfg->log_format, LOGFMT_JSON);

	assert_string_equal(cfg->oidc_issuer, "https://login.example.org/realms/x");
	assert_string_equal(cfg->oidc_audience, "proxy");
	assert_null(cfg->oidc_jwks_file);
	assert_string_equal(cfg->oidc_jwks_uri, "https://login.example.org/certs");
	assert_int_equal(cfg->oidc_algorithms.n, 1);
	assert_string_equal(cfg->oidc_algorithms.items[0], "EdDSA");
	assert_string_equal(cfg->oidc_subject_claim, "preferred_username");
	assert_string_equal(cfg->oidc_groups_claim, "realm_access.roles");
	assert_int_equal(cfg->oidc_clock_skew, 120);
	assert_true(cfg->oidc_match_user);

	assert_int_equal(cfg->n_databases, 2);
	app = config_find_db(cfg, "app");
	assert_non_null(app);
	assert_string_equal(app->host, "db.internal");
	assert_int_equal(app->port, 5433);
	assert_string_equal(app->dbname, "appdb");
	assert_string_equal(app->user, "app_agent");
	assert_string_equal(app->password, "it's a secret");
	assert_int_equal(app->sslmode, SSLMODE_VERIFY_FULL);
	assert_string_equal(app->sslrootcert, "/etc/ssl/ca.pem");
	assert_int_equal(app->connect_timeout, 7);
	/* Defaults: Unix socket, port 5432, dbname = the entry's name. */
	local = config_find_db(cfg, "local");
	assert_non_null(local);
	assert_string_equal(local->host, "/var/run/postgresql");
	assert_int_equal(local->port, 5432);
	assert_string_equal(local->dbname, "local");
	assert_null(local->password);
	assert_int_equal(local->sslmode, SSLMODE_PREFER);
	assert_true(config_listeners_loopback(cfg));
	config_unref(cfg);
}

/* Values of the same key in different spellings. */
static void test_load_value_spellings(void **state)
{
	Config *cfg = load_text_ok("[pgveil]\n"
				   "listen_addr = *\n"
				   "allow_plaintext_auth = ON\n"
				   "audit_redact_literals = 1\n"
				   "default_action = Allow\n"
				   "audit_retention = 36h\n"
				   "hold_timeout = 1min\n"
				   "max_packet_size = 1GB\n"
				   "[oidc]\n"
				   "match_user = False\n"
				   "clock_skew = 1500ms\n");

	assert_string_equal(cfg->listen_addr.items[0], "*");
	assert_false(config_listeners_loopback(cfg));
	assert_true(cfg->allow_plaintext_auth);
	assert_true(cfg->audit_redact_literals);
	assert_int_equal(cfg->default_action, ACTION_ALLOW);
	assert_int_equal(cfg->audit_retention, 36 * 3600);
	assert_int_equal(cfg->hold_timeout, 60000);
	assert_int_equal(cfg->max_packet_size, 1u << 30);
	assert_false(cfg->oidc_match_user);
	assert_int_equal(cfg->oidc_clock_skew, 1); /* seconds, rounded down */
	assert_int_equal(cfg->n_databases, 0);
	config_unref(cfg);
}

/* A conninfo may go on over indented lines; a long line (beyond inih's 200) is read whole. */
static void test_load_continuation_and_long_lines(void **state)
{
	char text[2048], password[321];
	Config *cfg;
	const DbEntry *db;

	memset(password, 'p', sizeof(password) - 1);
	password[sizeof(password) - 1] = '\0';
	snprintf(text, sizeof(text),
		 "[databases]\n"
		 "; %s\n"
		 "app = host=10.0.0.5\n"
		 "\tport=6000 dbname=real\n"
		 "    user=agent password='two words'   ; a comment\n"
		 "long = host=10.0.0.6 user=u password=%s sslmode=require\n"
		 "\tport=5555\n",
		 password, password);
	assert_true(strlen(strchr(text, '\n') + 1) > 300);
	cfg = load_text_ok(text);
	assert_int_equal(cfg->n_databases, 2);
	db = config_find_db(cfg, "app");
	assert_non_null(db);
	assert_string_equal(db->host, "10.0.0.5");
	assert_int_equal(db->port, 6000);
	assert_string_equal(db->dbname, "real");
	assert_string_equal(db->user, "agent");
	assert_string_equal(db->password, "two words");
	db = config_find_db(cfg, "long");
	assert_non_null(db);
	assert_string_equal(db->password, password);
	assert_int_equal(db->sslmode, SSLMODE_REQUIRE);
	assert_int_equal(db->port, 5555);
	config_unref(cfg);
}

/* ---- errors, one per file --------------------------------------------------------- */

typedef struct ErrCase {
	const char *name; /* for failure messages */
	const char *text; /* the file */
	ErrAt err;        /* its only error */
} ErrCase;

static void run_error_cases(const ErrCase *cases, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		print_message("  %s\n", cases[i].name);
		expect_error(cases[i].text, cases[i].err.line, cases[i].err.col, cases[i].err.text);
	}
}

static void test_errors_keys_and_values(void **state)
{
	static const ErrCase cases[] = {
		{ "unknown key", "[pgveil]\nlisten_port = 6432\nbogus = 1\n",
		  { 3, 1, "unknown key 'bogus' in [pgveil]" } },
		{ "pgveil key in [oidc]", "[oidc]\n\n  ; indented comment\nlisten_port = 1\n",
		  { 4, 1, "unknown key 'listen_port' in [oidc]" } },
		{ "bad integer", "[pgveil]\nlisten_port = 64x32\n",
		  { 2, 15, "listen_port must be an integer from 1 to 65535, not '64x32'" } },
		{ "integer out of range", "[pgveil]\nworkers  =  257\n", { 2, 13, "workers must be an integer" } },
		{ "empty integer", "[pgveil]\nmax_client_conn =\n", { 2, 18, "max_client_conn must be an integer" } },
		{ "bad bool", "[pgveil]\nallow_plaintext_auth = maybe\n",
		  { 2, 24, "allow_plaintext_auth must be yes or no, not 'maybe'" } },
		{ "duration without unit", "[pgveil]\nhold_timeout = 30\n",
		  { 2, 16, "hold_timeout must be a duration with a unit" } },
		{ "off for a millisecond duration", "[pgveil]\nstartup_timeout = off\n",
		  { 2, 19, "startup_timeout must be a duration" } },
		{ "duration with a space", "[oidc]\nclock_skew = 5 m\n", { 2, 14, "clock_skew must be a duration" } },
		{ "bad enum", "[pgveil]\ndefault_action = deny\n", { 2, 18, "default_action: invalid value 'deny'" } },
		{ "bad log level", "[pgveil]\nlog_level = verbose\n", { 2, 13, "log_level: invalid value" } },
		{ "bad size", "[pgveil]\nmax_packet_size = 2GB\n", { 2, 19, "max_packet_size must be a size" } },
		{ "size too small", "[pgveil]\nmax_packet_size = 1023\n", { 2, 19, "max_packet_size must be a size" } },
		{ "duplicate key", "[pgveil]\nlisten_port = 1\n\nlisten_port = 2\n",
		  { 4, 1, "listen_port is set twice" } },
		{ "duplicate key across sections", "[oidc]\nissuer = a\n[pgveil]\n[oidc]\n  issuer = b\n",
		  { 5, 3, "issuer is set twice" } },
		{ "continuation outside [databases]", "[pgveil]\nlisten_port = 1\n   2\n",
		  { 3, 1, "continuation lines are only allowed in [databases]" } },
		{ "syntax error", "[pgveil]\nlisten_port 6432\n", { 2, 1, "syntax error" } },
		{ "unclosed section", "[pgveil\n", { 1, 1, "syntax error" } },
	};

	run_error_cases(cases, PGV_ARRAY_LEN(cases));
}

static void test_errors_sections(void **state)
{
	static const ErrCase cases[] = {
		{ "unknown section", "[pgveil]\nlisten_port = 1\n\n[proxy]\nport = 1\nhost = h\n",
		  { 4, 1, "unknown section [proxy]" } },
		{ "empty unknown section", "[pgveil]\n  [Databases]\n", { 2, 3, "unknown section [Databases]" } },
		{ "key before any section", "listen_port = 1\n[pgveil]\n", { 1, 1, "outside of any section" } },
	};

	run_error_cases(cases, PGV_ARRAY_LEN(cases));
}

static void test_errors_conninfo(void **state)
{
	static const ErrCase cases[] = {
		{ "unknown option", "[databases]\napp = host=h user=u colour=blue\n",
		  { 2, 21, "database \"app\": unknown connection option" } },
		{ "unterminated quote", "[databases]\napp = user=u password='abc\n",
		  { 2, 14, "database \"app\": unterminated quoted string" } },
		{ "bad port", "[databases]\napp = user=u port=99999\n", { 2, 14, "port must be from 1 to 65535" } },
		{ "port not a number", "[databases]\napp   =   user=u port=54x\n", { 2, 18, "port must be" } },
		{ "empty port", "[databases]\napp = user=u port=\n", { 2, 14, "port must be" } },
		{ "bad sslmode", "[databases]\napp = user=u sslmode=allow\n", { 2, 14, "sslmode must be disable, prefer" } },
		{ "bad connect_timeout", "[databases]\napp = user=u connect_timeout=-1\n",
		  { 2, 14, "connect_timeout must be" } },
		{ "no '='", "[databases]\napp = user=u dbname\n", { 2, 14, "expected key=value" } },
		{ "bad option on a continuation line", "[databases]\napp = user=u\n    port=abc\n",
		  { 3, 5, "database \"app\": port must be" } },
		/* After a section header nothing is continued: an indented line is a key of its own. */
		{ "indented key after a header", "[databases]\napp = user=u\n[databases]\n  port=1\n",
		  { 4, 8, "database \"port\": expected key=value" } },
		{ "database twice", "[databases]\napp = user=u\napp = user=v\n", { 3, 1, "database \"app\" is defined twice" } },
		{ "verify-full without sslrootcert", "[databases]\n\napp = user=u sslmode=verify-full\n",
		  { 3, 1, "database \"app\": sslmode verify-ca and verify-full need sslrootcert" } },
		{ "verify-ca without sslrootcert", "[databases]\nx = user=u\n  sslmode=verify-ca\n",
		  { 2, 1, "database \"x\": sslmode verify-ca and verify-full need sslrootcert" } },
		{ "missing user", "[databases]\napp = host=h\nother = user=u\n", { 2, 1, "database \"app\": user is required" } },
	};

	run_error_cases(cases, PGV_ARRAY_LEN(cases));
}

static void test_errors_whole_file(void **state)
{
	static const ErrCase cases[] = {
		{ "dev_trust_auth on all addresses", "[pgveil]\nlisten_addr = *\ndev_trust_auth = yes\n",
		  { 3, 18, "dev_trust_auth = yes is for development only" } },
		{ "dev_trust_auth with one public address",
		  "[pgveil]\ndev_trust_auth = yes\nlisten_addr = 127.0.0.1, 10.1.2.3\n",
		  { 2, 18, "needs loopback listen_addr" } },
		{ "none among the algorithms", "[pgveil]\n[oidc]\nalgorithms = RS256, none\n",
		  { 3, 14, "[oidc] algorithms: \"none\" is never accepted" } },
		{ "None alone", "[oidc]\nalgorithms = None\n", { 2, 14, "\"none\" is never accepted" } },
		{ "certificate without key", "[pgveil]\ntls_cert_file = a.crt\n",
		  { 2, 17, "tls_cert_file and tls_key_file must be set together" } },
		{ "key without certificate", "[pgveil]\n\ntls_key_file = a.key\n",
		  { 3, 16, "tls_cert_file and tls_key_file must be set together" } },
		{ "empty listen_addr", "[pgveil]\nlisten_addr = , ,\n", { 2, 15, "listen_addr is empty" } },
		{ "too many listen addresses",
		  "[pgveil]\nlisten_addr = a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q\n", { 2, 15, "more than 16 addresses" } },
		{ "a database named like the admin console",
		  "[pgveil]\nadmin_db = app\n[databases]\napp = host=/tmp user=u\n",
		  { 4, 1, "database \"app\" is the admin console's name (admin_db): choose another" } },
	};

	run_error_cases(cases, PGV_ARRAY_LEN(cases));
}

/* Every error of a file is reported, each at its place, in one pass. */
static void test_errors_several(void **state)
{
	static const ErrAt want[] = {
		{ 2, 1, "unknown key 'listen'" },
		{ 3, 15, "listen_port must be an integer" },
		{ 4, 24, "allow_plaintext_auth must be yes or no" },
		{ 5, 16, "hold_timeout must be a duration" },
		{ 6, 18, "default_action: invalid value" },
		{ 7, 1, "listen_port is set twice" },
		{ 9, 1, "unknown section [other]" },
		{ 12, 14, "[oidc] algorithms" },
		{ 15, 1, "database \"a\": user is required" },
		{ 16, 19, "database \"b\": unknown connection option" },
		{ 17, 12, "database \"c\": sslmode must be" },
		{ 18, 1, "database \"d\": sslmode verify-ca and verify-full need sslrootcert" },
	};

	expect_errors("[pgveil]\n"
		      "listen = 1\n"
		      "listen_port = x\n"
		      "allow_plaintext_auth = 2\n"
		      "hold_timeout = 10\n"
		      "default_action = drop\n"
		      "listen_port = 5\n"
		      "\n"
		      "[other]\n"
		      "x = 1\n"
		      "[oidc]\n"
		      "algorithms = none\n"
		      "\n"
		      "[databases]\n"
		      "a = host=h\n"
		      "b = host=h user=u foo=bar\n"
		      "c = user=u sslmode=on\n"
		      "d = user=u sslmode=verify-full\n",
		      PGV_ARRAY_LEN(want), want);
}

/* Lines up to inih's limit and beyond: long values, long comments, and a line too long for pgveil. */
static void test_errors_long_lines(void **state)
{
	char text[4096], fill[600];
	ErrAt want[2];

	/* A bad option at column 250 of a long line. */
	memset(fill, 'x', 233);
	fill[233] = '\0';
	snprintf(text, sizeof(text), "[databases]\napp = user=u password=%s bogus=1\n", fill);
	expect_error(text, 2, 6 + 7 + 9 + 233 + 2, "unknown connection option");

	/* A long comment is a comment, a long key is an unknown key. */
	snprintf(text, sizeof(text), "[pgveil]\n; %s\n# %s\n%s = 1\n", fill, fill, fill);
	want[0] = (ErrAt){ 4, 1, "unknown key 'xxxxxxxx" };
	expect_errors(text, 1, want);

	/* Beyond 510 characters the line is refused, and the next lines are still read. */
	memset(fill, 'y', 599);
	fill[599] = '\0';
	snprintf(text, sizeof(text), "[pgveil]\nrules = %s\nlisten_port = 0\n", fill);
	want[0] = (ErrAt){ 2, 1, "line too long" };
	want[1] = (ErrAt){ 3, 15, "listen_port must be an integer" };
	expect_errors(text, 2, want);
}

static void test_error_unreadable_file(void **state)
{
	char path[300], *errs = NULL;
	int nerrors = 0;

	snprintf(path, sizeof(path), "%s/does-not-exist.ini", tmpdir);
	assert_null(config_load(path, &errs, &nerrors));
	assert_int_equal(nerrors, 1);
	assert_non_null(errs);
	assert_int_equal(strncmp(errs, path, strlen(path)), 0);
	assert_non_null(strstr(errs, "cannot open"));
	free(errs);
}

/* A path longer than the message buffer is cut, not overflowed. */
static void test_error_long_path(void **state)
{
	char path[1024], comp[201], *errs = NULL;
	int nerrors = 0;
	FILE *fp;

	memset(comp, 'd', 200);
	comp[200] = '\0';
	snprintf(path, sizeof(path), "%s/%s", tmpdir, comp);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path + strlen(path), sizeof(path) - strlen(path), "/%s", comp);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path + strlen(path), sizeof(path) - strlen(path), "/%s", comp);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path + strlen(path), sizeof(path) - strlen(path), "/bad.ini");
	assert_true(strlen(path) > 600);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("[pgveil]\nnope = 1\n", fp);
	assert_int_equal(fclose(fp), 0);

	assert_null(config_load(path, &errs, &nerrors));
	assert_int_equal(nerrors, 1);
	assert_non_null(errs);
	assert_int_equal(strncmp(errs, path, 500), 0);
	assert_true(strlen(errs) < 700);
	free(errs);
}

/* The rules key: no rules, good rules, and rules errors joining the file's. */
static void test_rules_key(void **state)
{
	char rules_path[300], text[1024], want[1200], *errs = NULL;
	const char *path;
	int nerrors = -1;
	Config *cfg;
	FILE *fp;

	cfg = load_text_ok("[pgveil]\nlisten_port = 7000\n");
	assert_null(cfg->rules);
	assert_null(cfg->ruleset);
	config_unref(cfg);

	snprintf(rules_path, sizeof(rules_path), "%s/good.rules", tmpdir);
	fp = fopen(rules_path, "w");
	assert_non_null(fp);
	fputs("BLOCK DDL;\nALLOW READ;\n", fp);
	assert_int_equal(fclose(fp), 0);
	snprintf(text, sizeof(text), "[pgveil]\nrules = %s\n", rules_path);
	cfg = load_text_ok(text);
	assert_non_null(cfg->ruleset);
	assert_int_equal(cfg->ruleset->n_rules, 2);
	assert_int_equal(cfg->ruleset->refcount, 1);
	config_unref(cfg); /* releases the rules too (ASan would see a leak) */

	/* INI errors first, then every rules error, all counted */
	snprintf(rules_path, sizeof(rules_path), "%s/bad.rules", tmpdir);
	fp = fopen(rules_path, "w");
	assert_non_null(fp);
	fputs("BLOCK DDL\n-- comment\n  ON x.;\nHOLD NOPE;\n", fp);
	assert_int_equal(fclose(fp), 0);
	snprintf(text, sizeof(text), "[pgveil]\nrules = %s\nbogus = 1\n", rules_path);
	path = write_file("rules-bad.ini", text);
	assert_null(config_load(path, &errs, &nerrors));
	assert_int_equal(nerrors, 3);
	snprintf(want, sizeof(want),
		 "%s:3:1: unknown key 'bogus' in [pgveil]\n"
		 "%s:3:8: expected a table name or * after '.', not ';'\n"
		 "%s:4:6: unknown statement class 'NOPE'\n",
		 path, rules_path, rules_path);
	assert_string_equal(errs, want);
	free(errs);

	/* rules that cannot be read */
	snprintf(text, sizeof(text), "[pgveil]\nrules = %s/none\n", tmpdir);
	path = write_file("rules-missing.ini", text);
	assert_null(config_load(path, &errs, &nerrors));
	assert_int_equal(nerrors, 1);
	snprintf(want, sizeof(want), "%s/none:0:0: cannot read: No such file or directory\n", tmpdir);
	assert_string_equal(errs, want);
	free(errs);
}

/* hash() masks need mask_key_file, read at load: errors are the configuration's. */
static void test_mask_key(void **state)
{
	char rules_path[300], key_path[300], text[1024], *errs = NULL;
	const char *path;
	int nerrors = -1;
	Config *cfg;
	FILE *fp;

	(void)state;
	snprintf(rules_path, sizeof(rules_path), "%s/hash.rules", tmpdir);
	fp = fopen(rules_path, "w");
	assert_non_null(fp);
	fputs("MASK public.users.name USING hash(8);\n", fp);
	assert_int_equal(fclose(fp), 0);

	/* no key file */
	snprintf(text, sizeof(text), "[pgveil]\nrules = %s\n", rules_path);
	path = write_file("hash-nokey.ini", text);
	assert_null(config_load(path, &errs, &nerrors));
	assert_int_equal(nerrors, 1);
	assert_non_null(strstr(errs, "mask_key_file is not set, but rule "));
	assert_non_null(strstr(errs, "hash.rules:1 masks with hash()"));
	free(errs);

	/* a key others can read */
	snprintf(key_path, sizeof(key_path), "%s/mask.key", tmpdir);
	fp = fopen(key_path, "w");
	assert_non_null(fp);
	fputs("0123456789abcdef0123456789abcdef0123456789abcdef\n", fp);
	assert_int_equal(fclose(fp), 0);
	assert_int_equal(chmod(key_path, 0644), 0);
	snprintf(text, sizeof(text), "[pgveil]\nrules = %s\nmask_key_file = %s\n", rules_path, key_path);
	path = write_file("hash-badkey.ini", text);
	errs = NULL;
	assert_null(config_load(path, &errs, &nerrors));
	assert_int_equal(nerrors, 1);
	assert_non_null(strstr(errs, ":3:"));
	assert_non_null(strstr(errs, "mask_key_file"));
	free(errs);

	/* a good key is loaded with the configuration */
	assert_int_equal(chmod(key_path, 0600), 0);
	cfg = load_ok(path);
	assert_non_null(cfg->mask_key);
	assert_int_equal(cfg->mask_key->len, 48);
	config_unref(cfg);

	/* without hash() rules no key is read */
	snprintf(text, sizeof(text), "[pgveil]\nmask_key_file = %s/missing.key\n", tmpdir);
	cfg = load_text_ok(text);
	assert_null(cfg->mask_key);
	config_unref(cfg);
}

/* ---- parsers on their own ------------------------------------------------------- */

static void test_parse_duration(void **state)
{
	static const struct {
		const char *s;
		bool ok;
		uint64_t ms;
	} cases[] = {
		{ "250ms", true, 250 },
		{ "0s", true, 0 },
		{ "300s", true, 300000 },
		{ "5m", true, 300000 },
		{ "5min", true, 300000 },
		{ "1h", true, 3600000 },
		{ "90d", true, 90ull * 86400000 },
		{ "007s", true, 7000 },
		{ "213503982334d", true, 213503982334ull * 86400000 },
		{ "213503982335d", false, 0 }, /* overflows 64 bits of milliseconds */
		{ "99999999999999999999s", false, 0 },
		{ "", false, 0 },
		{ "30", false, 0 },
		{ "s", false, 0 },
		{ "-5s", false, 0 },
		{ "+5s", false, 0 },
		{ " 5s", false, 0 },
		{ "5 s", false, 0 },
		{ "5s ", false, 0 },
		{ "5sec", false, 0 },
		{ "5S", false, 0 },
		{ "1.5h", false, 0 },
		{ "5ms5", false, 0 },
		{ "off", false, 0 },
	};

	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++) {
		uint64_t ms = 424242;
		bool ok = config_parse_duration(cases[i].s, &ms);

		if (ok != cases[i].ok)
			fail_msg("duration \"%s\": want %s", cases[i].s, cases[i].ok ? "ok" : "error");
		assert_int_equal(ms, cases[i].ok ? cases[i].ms : 424242);
	}
}

static void test_parse_conninfo(void **state)
{
	DbEntry db = { 0 };
	const char *why = NULL;
	size_t off = 99;

	assert_true(config_parse_conninfo("host = db.example port=6543 dbname='my db' user=u "
					  "password='it\\'s a \\\\ test' sslmode=verify-ca sslrootcert=/ca.pem "
					  "connect_timeout=0",
					  &db, &why, &off));
	assert_string_equal(db.host, "db.example");
	assert_int_equal(db.port, 6543);
	assert_string_equal(db.dbname, "my db");
	assert_string_equal(db.user, "u");
	assert_string_equal(db.password, "it's a \\ test");
	assert_int_equal(db.sslmode, SSLMODE_VERIFY_CA);
	assert_string_equal(db.sslrootcert, "/ca.pem");
	assert_int_equal(db.connect_timeout, 0);
	config_free_db(&db);
	assert_null(db.host);

	/* Defaults, hostaddr, escapes in bare words, an empty quoted value, a later value wins. */
	assert_true(config_parse_conninfo("  hostaddr=10.1.1.1 password=a\\ b user='' user=v  ", &db, &why, &off));
	assert_string_equal(db.host, "10.1.1.1");
	assert_int_equal(db.port, 5432);
	assert_int_equal(db.sslmode, SSLMODE_PREFER);
	assert_string_equal(db.password, "a b");
	assert_string_equal(db.user, "v");
	assert_null(db.dbname);
	config_free_db(&db);

	assert_true(config_parse_conninfo("", &db, &why, &off));
	assert_string_equal(db.host, "/var/run/postgresql");
	assert_int_equal(db.port, 5432);
	config_free_db(&db);

	for (size_t i = 0; i < 5; i++) {
		static const char *const modes[] = { "disable", "prefer", "require", "verify-ca", "verify-full" };
		char s[64];

		snprintf(s, sizeof(s), "sslmode=%s", modes[i]);
		assert_true(config_parse_conninfo(s, &db, &why, &off));
		assert_int_equal(db.sslmode, (SslMode)i);
		config_free_db(&db);
	}
}

static void test_parse_conninfo_errors(void **state)
{
	static const struct {
		const char *s;
		size_t off;
		const char *why;
	} cases[] = {
		{ "host=h colour=blue", 7, "unknown connection option" },
		{ "user=u password='abc", 7, "unterminated quoted string" },
		{ "password='abc\\'", 0, "unterminated quoted string" },
		{ "port=0", 0, "port must be from 1 to 65535" },
		{ "port=65536", 0, "port must be" },
		{ "user=u  port=", 8, "port must be" },
		{ "port=5432x", 0, "port must be" },
		{ "connect_timeout=86401", 0, "connect_timeout must be" },
		{ "sslmode=VERIFY-FULL", 0, "sslmode must be" },
		{ "sslmode=", 0, "sslmode must be" },
		{ "host", 0, "expected key=value" },
		{ "host=h port", 7, "expected key=value" },
		{ "=h", 0, "expected key=value" },
		{ "user=u =h", 7, "expected key=value" },
		{ "a_key_that_is_much_too_long_to_be_real=1", 0, "expected key=value" },
	};

	for (size_t i = 0; i < PGV_ARRAY_LEN(cases); i++) {
		DbEntry db = { 0 };
		const char *why = NULL;
		size_t off = 999;

		if (config_parse_conninfo(cases[i].s, &db, &why, &off))
			fail_msg("conninfo \"%s\" was accepted", cases[i].s);
		assert_non_null(why);
		if (strstr(why, cases[i].why) == NULL || off != cases[i].off)
			fail_msg("conninfo \"%s\": got \"%s\" at %zu, want \"%s\" at %zu", cases[i].s, why, off,
				 cases[i].why, cases[i].off);
		config_free_db(&db);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_load_sample),
		cmocka_unit_test(test_load_every_key),
		cmocka_unit_test(test_load_value_spellings),
		cmocka_unit_test(test_load_continuation_and_long_lines),
		cmocka_unit_test(test_errors_keys_and_values),
		cmocka_unit_test(test_errors_sections),
		cmocka_unit_test(test_errors_conninfo),
		cmocka_unit_test(test_errors_whole_file),
		cmocka_unit_test(test_errors_several),
		cmocka_unit_test(test_errors_long_lines),
		cmocka_unit_test(test_error_unreadable_file),
		cmocka_unit_test(test_error_long_path),
		cmocka_unit_test(test_rules_key),
		cmocka_unit_test(test_mask_key),
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_parse_conninfo),
		cmocka_unit_test(test_parse_conninfo_errors),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
