/* SPDX-License-Identifier: MIT */
/*
 * The configuration file (INI, read with libinih) turned into an immutable,
 * reference-counted Config snapshot. Every error is reported as
 * "file:line:col: message"; a reload builds a new snapshot and swaps it in
 * only when the whole file is valid.
 */
#ifndef PGVEIL_CONFIG_H
#define PGVEIL_CONFIG_H

#include <sys/socket.h>

#include "pgveil/common.h"

#define CONFIG_MAX_LISTEN 16

typedef enum { SSLMODE_DISABLE, SSLMODE_PREFER, SSLMODE_REQUIRE, SSLMODE_VERIFY_CA, SSLMODE_VERIFY_FULL } SslMode;
typedef enum { ACTION_ALLOW, ACTION_BLOCK, ACTION_HOLD } DefaultAction;
typedef enum { AUDIT_ASYNC, AUDIT_STRICT } AuditMode;
typedef enum { LOGFMT_TEXT, LOGFMT_JSON } LogFormat;

/* Where a server is reached: resolved once when the Config loads. */
typedef struct BackendAddr {
	struct sockaddr_storage sa; /* address */
	socklen_t len;              /* its length; 0 = a host name, resolved per connection */
	char display[160];          /* "127.0.0.1:5432" or "/run/postgresql/.s.PGSQL.5432" */
} BackendAddr;

/* One [databases] entry: the real server behind a database name. */
struct DbEntry {
	char *name;          /* the name clients ask for */
	char *host;          /* host name, IP address, or a Unix-socket directory (starts with '/') */
	int port;            /* server port */
	char *dbname;        /* database on the server */
	char *user;          /* role on the server */
	char *password;      /* password, or NULL */
	SslMode sslmode;     /* TLS toward the server */
	char *sslrootcert;   /* CA bundle for verify-ca / verify-full, or NULL */
	int connect_timeout; /* seconds; 0 = server_connect_timeout */
	BackendAddr addr;    /* resolved address */
	void *tls_ctx;       /* SSL_CTX toward this server (tls module), NULL when not TLS */
};

/* A list of names, as given by a comma-separated value. */
typedef struct NameList {
	int n;        /* entries */
	char **items; /* owned strings */
} NameList;

/* Frees the names of a list and empties it. */
void config_namelist_free(NameList *l);

struct Config {
	int refcount;                /* atomic; see config_ref()/config_unref() */
	char *path;                  /* file it was read from */

	/* [pgveil] */
	NameList listen_addr;        /* "*" = every address */
	int listen_port;
	int workers;                 /* resolved: never 0 */
	int max_client_conn;
	char *tls_cert_file;         /* NULL = no TLS toward clients */
	char *tls_key_file;
	void *tls_server_ctx;        /* SSL_CTX toward clients (tls module), NULL without a certificate */
	bool allow_plaintext_auth;
	bool dev_trust_auth;         /* development only: no authentication, loopback listeners only */
	char *rules;                 /* rules file or directory, NULL = no rules */
	RuleSet *ruleset;            /* loaded from `rules` by config_load; NULL without rules */
	DefaultAction default_action;
	char *audit_db;
	AuditMode audit_mode;
	uint64_t audit_retention;    /* seconds, 0 = off */
	uint64_t hold_timeout;       /* milliseconds */
	char *admin_db;
	NameList admin_groups;
	NameList approver_groups;
	NameList auditor_groups;
	char *mask_key_file;
	struct MaskKey *mask_key;    /* read from mask_key_file by config_load; NULL without one */
	bool mask_predicates_allow;  /* mask_predicates = allow */
	bool audit_redact_literals;
	uint64_t startup_timeout;    /* milliseconds */
	uint64_t shutdown_timeout;   /* milliseconds */
	uint64_t server_connect_timeout; /* milliseconds, for [databases] without connect_timeout */
	uint64_t catalog_refresh;    /* milliseconds between re-reads of each database's catalog, 0 = off */
	uint32_t max_packet_size;    /* bytes, largest client message accepted */
	int log_level;               /* LogLevel */
	LogFormat log_format;

	/* [oidc] */
	char *oidc_issuer;
	char *oidc_audience;
	char *oidc_jwks_file;
	char *oidc_jwks_uri;
	char *oidc_jwks_ca_file;     /* CA bundle for jwks_uri, NULL = system CAs */
	uint64_t oidc_jwks_min_refresh; /* seconds between refreshes caused by unknown kids */
	NameList oidc_algorithms;
	char *oidc_subject_claim;
	char *oidc_groups_claim;
	uint64_t oidc_clock_skew;    /* seconds */
	bool oidc_match_user;
	JwtVerifier *oidc_verifier;  /* built from the above by jwtauth, NULL when [oidc] is not set */

	/* [databases] */
	int n_databases;
	DbEntry *databases;
};

/*
 * Reads and validates `path`, and loads the rules `rules` names (relative
 * paths are taken from the working directory, like every path in the file).
 * Returns a new Config (refcount 1), or NULL when the file or the rules have
 * errors; then every error has been written to `errout` (one
 * "file:line:col: message" per line, the rules' after the file's) and
 * *nerrors counts them.
 */
Config *config_load(const char *path, char **errout, int *nerrors) PGV_WARN_UNUSED;

/* Reference counting of a snapshot; safe from any thread. */
Config *config_ref(Config *cfg);
void config_unref(Config *cfg);

/* The [databases] entry for a client-requested name, or NULL. */
const DbEntry *config_find_db(const Config *cfg, const char *name);

/* True when every listen address is a loopback address. */
bool config_listeners_loopback(const Config *cfg);

/*
 * Parses a libpq-style connection string ("key=value ...", values may be
 * single-quoted with \' and \\ escapes) into `out`. On error returns false
 * and sets *why (static text) and *err_off (byte offset in `s`).
 */
bool config_parse_conninfo(const char *s, DbEntry *out, const char **why, size_t *err_off) PGV_WARN_UNUSED;
void config_free_db(DbEntry *db);

/* Parses "300s", "5m", "1h", "90d", "250ms" into milliseconds. */
bool config_parse_duration(const char *s, uint64_t *ms_out) PGV_WARN_UNUSED;

/* The process-wide current snapshot: set by main, read by everyone. */
Config *config_current(void);          /* returns a new reference */
void config_set_current(Config *cfg);  /* takes the caller's reference */
/* Increases every time config_set_current() installs a snapshot: a cheap "did it change?" check. */
uint64_t config_generation(void);

#endif
