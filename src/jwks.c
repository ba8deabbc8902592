/* SPDX-License-Identifier: MIT */
/*
 * JWKS over HTTPS. All HTTP work runs on the main loop; other threads only
 * schedule a fetch (event_base_once is thread-safe) and register wake-up
 * events. An in-flight fetch holds a reference on its Config, so the
 * verifier it feeds cannot disappear under it. Keys are replaced only by a
 * document with at least one usable key; any failure keeps the old ones.
 */
#include "pgveil/jwks.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgveil/jwtauth.h"
#include "pgveil/log.h"
#include "pgveil/tls.h"

#define JWKS_TIMEOUT_S 10
#define JWKS_MAX_BODY (1 << 20)
#define JWKS_MAX_WAITERS 1024

struct JwksFetcher {
	Config *cfg;                  /* not a reference: the owner (fetches take one) */
	struct event_base *main_base; /* where HTTP runs */
	SSL_CTX *ssl_ctx;             /* verifies the IdP certificate */
	char *host;                   /* from the URI */
	int port;
	char *path;                   /* path and query */
	pthread_mutex_t lock;         /* guards the fields below */
	bool in_flight;               /* a fetch is running */
	uint64_t last_attempt_us;     /* start of the last fetch (monotonic): whole seconds let two fetches straddle one */
	struct event *waiters[JWKS_MAX_WAITERS]; /* events to activate when it ends */
	int n_waiters;
	struct evhttp_connection *conn; /* current fetch (main thread only) */
};

static void fetch_start_cb(evutil_socket_t fd, short what, void *arg);

static bool parse_uri(JwksFetcher *f, const char *uri, char *err, size_t errlen)
{
	struct evhttp_uri *u = evhttp_uri_parse(uri);
	const char *scheme, *host, *path, *query;
	bool ok = false;

	if (u == NULL || (scheme = evhttp_uri_get_scheme(u)) == NULL || strcmp(scheme, "https") != 0 ||
	    (host = evhttp_uri_get_host(u)) == NULL) {
		snprintf(err, errlen, "jwks_uri must be an https:// URL");
		goto out;
	}
	path = evhttp_uri_get_path(u);
	query = evhttp_uri_get_query(u);
	f->host = strdup(host);
	f->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 443;
	if (asprintf(&f->path, "%s%s%s", (path && *path) ? path : "/", query ? "?" : "", query ? query : "") < 0)
		f->path = NULL;
	ok = f->host != NULL && f->path != NULL;
out:
	if (u != NULL)
		evhttp_uri_free(u);
	return ok;
}

static SSL_CTX *client_ctx(const char *ca_file, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if ((ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
			     : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
		snprintf(err, errlen, "cannot load CA certificates %s", ca_file ? ca_file : "(system)");
		ERR_clear_error();
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

bool jwks_start(Config *cfg, struct event_base *main_base, char *err, size_t errlen)
{
	JwksFetcher *f;

	if (cfg->oidc_verifier == NULL || cfg->oidc_jwks_uri == NULL)
		return true;
	f = calloc(1, sizeof(JwksFetcher));
	if (f == NULL)
		return false;
	f->cfg = cfg;
	f->main_base = main_base;
	pthread_mutex_init(&f->lock, NULL);
	if (!parse_uri(f, cfg->oidc_jwks_uri, err, errlen) ||
	    (f->ssl_ctx = client_ctx(cfg->oidc_jwks_ca_file, err, errlen)) == NULL) {
		jwks_free(f);
		return false;
	}
	jwtauth_set_fetcher(cfg->oidc_verifier, f);
	pthread_mutex_lock(&f->lock);
	f->in_flight = true;
	f->last_attempt_us = pgv_now_us();
	pthread_mutex_unlock(&f->lock);
	event_base_once(main_base, -1, EV_TIMEOUT, fetch_start_cb, config_ref(cfg), NULL);
	return true;
}

void jwks_free(JwksFetcher *f)
{
	if (f == NULL)
		return;
	SSL_CTX_free(f->ssl_ctx);
	free(f->host);
	free(f->path);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

bool jwks_wait_refresh(JwtVerifier *v, struct event *wake)
{
	JwksFetcher *f = jwtauth_get_fetcher(v);
	uint64_t now = pgv_now_us();
	bool start = false, ok = true;
	Config *cfg;

	if (f == NULL)
		return false;
	pthread_mutex_lock(&f->lock);
	if (!f->in_flight && (now - f->last_attempt_us) / 1000000u < f->cfg->oidc_jwks_min_refresh)
		ok = false;
	else if (f->n_waiters >= JWKS_MAX_WAITERS)
		ok = false;
	if (ok) {
		f->waiters[f->n_waiters++] = wake;
		if (!f->in_flight) {
			f->in_flight = true;
			f->last_attempt_us = now;
			start = true;
		}
	}
	cfg = f->cfg;
	pthread_mutex_unlock(&f->lock);
	if (start)
		event_base_once(f->main_base, -1, EV_TIMEOUT, fetch_start_cb, config_ref(cfg), NULL);
	return ok;
}

void jwks_cancel_wait(JwtVerifier *v, struct event *wake)
{
	JwksFetcher *f = jwtauth_get_fetcher(v);

	if (f == NULL)
		return;
	pthread_mutex_lock(&f->lock);
	for (int i = 0; i < f->n_waiters; i++)
		if (f->waiters[i] == wake) {
			f->waiters[i] = f->waiters[--f->n_waiters];
			break;
		}
	pthread_mutex_unlock(&f->lock);
}

/* Ends a fetch: wakes every waiter, drops the Config reference. */
static void fetch_finish(Config *cfg, bool ok, const char *what)
{
	JwksFetcher *f = jwtauth_get_fetcher(cfg->oidc_verifier);

	if (ok)
		log_info("jwks_uri: loaded %d key(s) from %s", jwtauth_key_count(cfg->oidc_verifier), cfg->oidc_jwks_uri);
	else
		log_warn("jwks_uri: fetching %s failed (%s); keeping %d key(s)", cfg->oidc_jwks_uri, what,
			 jwtauth_key_count(cfg->oidc_verifier));
	pthread_mutex_lock(&f->lock);
	f->in_flight = false;
	for (int i = 0; i < f->n_waiters; i++)
		event_active(f->waiters[i], EV_TIMEOUT, 0);
	f->n_waiters = 0;
	pthread_mutex_unlock(&f->lock);
}

static void conn_free_cb(evutil_socket_t fd, short what, void *arg)
{
	Config *cfg = arg;
	JwksFetcher *f = jwtauth_get_fetcher(cfg->oidc_verifier);

	if (f->conn != NULL)
		evhttp_connection_free(f->conn);
	f->conn = NULL;
	config_unref(cfg);
}

static void request_done_cb(struct evhttp_request *req, void *arg)
{
	Config *cfg = arg;
	JwksFetcher *f = jwtauth_get_fetcher(cfg->oidc_verifier);
	char err[256] = "", what[300];
	struct evbuffer *body;
	size_t len;
	bool ok = false;

	if (req == NULL || evhttp_request_get_response_code(req) == 0) {
		snprintf(what, sizeof(what), "no response (connection or TLS verification failed)");
	} else if (evhttp_request_get_response_code(req) != 200) {
		snprintf(what, sizeof(what), "HTTP %d", evhttp_request_get_response_code(req));
	} else {
		body = evhttp_request_get_input_buffer(req);
		len = evbuffer_get_length(body);
		if (len == 0) {
			snprintf(what, sizeof(what), "empty response body");
		} else {
			ok = jwtauth_set_jwks(cfg->oidc_verifier, (const char *)evbuffer_pullup(body, (ssize_t)len),
					      len, err, sizeof(err));
			snprintf(what, sizeof(what), "%s", err);
		}
	}
	fetch_finish(cfg, ok, what);
	/* The connection may not be freed inside its own callback. */
	event_base_once(f->main_base, -1, EV_TIMEOUT, conn_free_cb, cfg, NULL);
}

static void fetch_start_cb(evutil_socket_t fd, short what, void *arg)
{
	Config *cfg = arg;
	JwksFetcher *f = jwtauth_get_fetcher(cfg->oidc_verifier);
	struct evhttp_request *req = NULL;
	struct bufferevent *bev = NULL;
	SSL *ssl = SSL_new(f->ssl_ctx);

	if (ssl == NULL || !tls_set_peer_name(ssl, f->host) ||
	    (bev = bufferevent_openssl_socket_new(f->main_base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
						  BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)) == NULL) {
		if (bev == NULL && ssl != NULL)
			SSL_free(ssl);
		goto fail;
	}
	f->conn = evhttp_connection_base_bufferevent_new(f->main_base, NULL, bev, f->host, (unsigned short)f->port);
	if (f->conn == NULL) {
		bufferevent_free(bev);
		goto fail;
	}
	evhttp_connection_set_timeout(f->conn, JWKS_TIMEOUT_S);
	evhttp_connection_set_max_body_size(f->conn, JWKS_MAX_BODY);
	req = evhttp_request_new(request_done_cb, cfg);
	if (req == NULL)
		goto fail;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Host", f->host);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Accept", "application/json");
	if (evhttp_make_request(f->conn, req, EVHTTP_REQ_GET, f->path) != 0)
		goto fail_noreq; /* libevent freed req */
	return;
fail:
	if (req != NULL)
		evhttp_request_free(req);
fail_noreq:
	fetch_finish(cfg, false, "could not start the request");
	conn_free_cb(-1, 0, cfg);
}
