/* SPDX-License-Identifier: MIT */
/*
 * pgveil's entry point: command-line arguments, loading and checking the
 * configuration, the main event loop with its signal handlers (SIGHUP
 * reload, SIGTERM graceful shutdown, SIGINT immediate exit), and starting
 * the audit writer, the listeners, the workers and the catalog thread;
 * `--verify-audit FILE` checks an audit log's hash chain and starts nothing.
 */
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "pgveil/approval.h"
#include "pgveil/audit.h"
#include "pgveil/audit_read.h"
#include "pgveil/catalog.h"
#include "pgveil/config.h"
#include "pgveil/jwks.h"
#include "pgveil/jwtauth.h"
#include "pgveil/log.h"
#include "pgveil/rules.h"
#include "pgveil/server.h"
#include "pgveil/session.h"
#include "pgveil/tls.h"

static struct event_base *main_base;

/* Starts what a loaded Config needs on the main loop (jwks_uri fetching). */
static bool start_config(Config *cfg)
{
	char err[256];

	if (!jwks_start(cfg, main_base, err, sizeof(err))) {
		log_error("%s: [oidc] %s", cfg->path, err);
		return false;
	}
	return true;
}
static bool shutting_down;

static void usage(FILE *out)
{
	fprintf(out,
		"pgveil %s - PostgreSQL proxy that lets AI agents reach databases safely\n"
		"\n"
		"Usage:\n"
		"  pgveil -c FILE            run the proxy in the foreground, logging to stderr\n"
		"  pgveil --check -c FILE    check the configuration and rules, start nothing\n"
		"  pgveil --verify-audit FILE\n"
		"                            check the hash chain of an audit database; exit 0 when\n"
		"                            intact, 1 when a row was altered, inserted or deleted,\n"
		"                            2 when FILE is not a readable audit database\n"
		"  pgveil --version          print the version\n"
		"  pgveil --help             print this help\n"
		"\n"
		"Signals: SIGHUP reloads the configuration, SIGTERM shuts down gracefully,\n"
		"SIGINT exits at once.\n",
		PACKAGE_VERSION);
}

/*
 * Reports errors ("file:line:col: message" lines): on stderr at startup and
 * for --check, through the log on reload (one record per error).
 */
static void report_errors(const char *errs, bool to_log)
{
	const char *line = errs ? errs : "out of memory\n";

	if (!to_log) {
		fputs(line, stderr);
		return;
	}
	while (*line != '\0') {
		const char *eol = strchr(line, '\n');
		int n = eol ? (int)(eol - line) : (int)strlen(line);

		log_error("%.*s", n, line);
		line += n + (eol != NULL);
	}
}

/*
 * Loads a configuration, its rules and everything derived from it (TLS
 * contexts, the token verifier). Reports every error (see report_errors).
 * Returns NULL when anything is invalid.
 */
static Config *load_all(const char *path, bool to_log)
{
	char *errs = NULL, tlserr[512], msg[700];
	int nerrors = 0;
	Config *cfg = config_load(path, &errs, &nerrors);

	if (cfg == NULL) {
		report_errors(errs, to_log);
		free(errs);
		return NULL;
	}
	if (!tls_config_build(cfg, tlserr, sizeof(tlserr))) {
		snprintf(msg, sizeof(msg), "%s:0:0: %s\n", path, tlserr);
		report_errors(msg, to_log);
		config_unref(cfg);
		return NULL;
	}
	cfg->oidc_verifier = jwtauth_new(cfg, tlserr, sizeof(tlserr));
	if (cfg->oidc_verifier == NULL && tlserr[0] != '\0') {
		snprintf(msg, sizeof(msg), "%s:0:0: [oidc] %s\n", path, tlserr);
		report_errors(msg, to_log);
		config_unref(cfg);
		return NULL;
	}
	return cfg;
}

/* Says which rules are in force. */
static void log_rules(const Config *cfg)
{
	static const char *const actions[] = { "allow", "block", "hold" };
	const RuleSet *rs = cfg->ruleset;
	int masks = 0;

	if (rs == NULL) {
		log_info("no rules: every statement gets default_action = %s", actions[cfg->default_action]);
		return;
	}
	for (int i = 0; i < rs->n_rules; i++)
		masks += (rs->rules[i].kind == RULE_MASK);
	log_info("rules loaded from %s: %d policy rules, %d mask rules (version %llu), default_action = %s",
		 cfg->rules, rs->n_rules - masks, masks, (unsigned long long)rs->version,
		 actions[cfg->default_action]);
}

static void apply_logging(const Config *cfg)
{
	log_setup((LogLevel)cfg->log_level, cfg->log_format == LOGFMT_JSON);
}

static void warn_risky(const Config *cfg)
{
	if (cfg->dev_trust_auth && cfg->oidc_verifier == NULL)
		log_warn("dev_trust_auth = yes: clients are let in WITHOUT authentication (development only)");
	if (cfg->allow_plaintext_auth)
		log_warn("allow_plaintext_auth = yes: tokens may travel without TLS");
	if (cfg->oidc_verifier != NULL && cfg->tls_server_ctx == NULL && !cfg->allow_plaintext_auth)
		log_warn("[oidc] is set but tls_cert_file is not: no client can send a token (TLS is required)");
	if (cfg->oidc_verifier == NULL && !cfg->dev_trust_auth)
		log_warn("no [oidc] section: every client will be refused");
}

static void reload(const char *path)
{
	Config *old = config_current();
	Config *cfg;

	log_info("SIGHUP: reloading %s", path);
	cfg = load_all(path, true);
	if (cfg == NULL) {
		log_error("reload failed: keeping the previous configuration and rules (errors above)");
		config_unref(old);
		return;
	}
	if (cfg->listen_port != old->listen_port || cfg->workers != old->workers ||
	    cfg->listen_addr.n != old->listen_addr.n)
		log_warn("listen_addr, listen_port and workers changes take effect after a restart");
	if (cfg->oidc_verifier != NULL && old->oidc_verifier != NULL && cfg->oidc_jwks_uri != NULL &&
	    old->oidc_jwks_uri != NULL && strcmp(cfg->oidc_jwks_uri, old->oidc_jwks_uri) == 0)
		jwtauth_adopt_keys(cfg->oidc_verifier, old->oidc_verifier);
	if (!start_config(cfg)) {
		log_error("reload failed: keeping the previous configuration");
		config_unref(cfg);
		config_unref(old);
		return;
	}
	apply_logging(cfg);
	warn_risky(cfg);
	log_rules(cfg);
	config_set_current(cfg);
	catalog_reconfigure(cfg);
	audit_reconfigure(cfg);
	config_unref(old);
	log_info("configuration reloaded");
}

static void shutdown_done(void)
{
	log_info("all sessions finished; exiting");
	event_base_loopexit(main_base, NULL);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	const char *path = arg;

	switch (sig) {
	case SIGHUP:
		reload(path);
		break;
	case SIGTERM:
		if (shutting_down)
			break;
		shutting_down = true;
		log_info("SIGTERM: no new connections; waiting for sessions to finish");
		server_shutdown(shutdown_done);
		break;
	case SIGINT:
		log_info("SIGINT: exiting now");
		_exit(0);
	default:
		break;
	}
}

static int run(const char *path)
{
	static const int sigs[] = { SIGHUP, SIGTERM, SIGINT };
	struct event *sigev[3] = { 0 };
	char err[512] = "";
	Config *cfg = load_all(path, false);
	int rc = 1;

	if (cfg == NULL)
		return 1;
	apply_logging(cfg);
	warn_risky(cfg);
	log_rules(cfg);
	config_set_current(cfg);
	if (!audit_start(cfg, err, sizeof(err))) {
		log_error("%s", err);
		config_set_current(NULL);
		return 1;
	}
	main_base = event_base_new();
	if (main_base == NULL) {
		log_error("cannot create the event loop");
		audit_stop();
		config_set_current(NULL);
		return 1;
	}
	for (int i = 0; i < 3; i++) {
		sigev[i] = evsignal_new(main_base, sigs[i], signal_cb, (void *)path);
		evsignal_add(sigev[i], NULL);
	}
	{
		uint64_t session_base, approval_base;

		audit_id_bases(&session_base, &approval_base);
		session_set_first_id(session_base + 1);
		approval_set_first_id(approval_base + 1);
	}
	if (!start_config(cfg) || !catalog_start(cfg) || !server_start(main_base, cfg, err, sizeof(err))) {
		if (err[0] != '\0')
			log_error("%s", err);
		server_shutdown(shutdown_done);
	} else {
		rc = 0;
	}
	event_base_dispatch(main_base);
	catalog_stop(); /* before server_free(): requests wake events of the workers' bases */
	audit_read_stop(); /* the same for auditors' reads */
	server_free();
	audit_stop(); /* after the workers: every row they queued is written */
	approval_shutdown();
	for (int i = 0; i < 3; i++)
		event_free(sigev[i]);
	event_base_free(main_base);
	config_set_current(NULL);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 'k' },
		{ "verify-audit", required_argument, NULL, 'A' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = NULL, *verify = NULL;
	bool check = false;
	int c;

	while ((c = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'k': check = true; break;
		case 'A': verify = optarg; break;
		case 'V': printf("pgveil %s\n", PACKAGE_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (verify != NULL && path == NULL && !check && optind == argc)
		return audit_verify(verify, stdout);
	if (path == NULL || optind != argc || verify != NULL) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	tls_init();
	if (check) {
		Config *cfg = load_all(path, false);

		if (cfg == NULL)
			return 1;
		if (cfg->oidc_jwks_uri != NULL && strncmp(cfg->oidc_jwks_uri, "https://", 8) != 0) {
			fprintf(stderr, "%s:0:0: [oidc] jwks_uri must be an https:// URL\n", path);
			config_unref(cfg);
			return 1;
		}
		config_unref(cfg);
		printf("%s: configuration is valid\n", path);
		return 0;
	}
	if (evthread_use_pthreads() != 0) {
		fprintf(stderr, "pgveil: libevent has no thread support\n");
		return 1;
	}
	return run(path);
}
