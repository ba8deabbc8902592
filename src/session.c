/* SPDX-License-Identifier: MIT */
/*
 * The per-client state machine. session_client_cb() and session_server_cb()
 * receive stream events and dispatch on the session state: the startup phase
 * reads untyped packets (SSLRequest, GSSENCRequest, CancelRequest,
 * StartupMessage), authentication with the agent's token, and logging in to
 * the server. The query phase, with every statement checked, is the relay
 * module's; this file hands it the stream events and ends the session when
 * a shutdown or the token's expiry says so.
 */
#include "pgveil/session.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <sys/time.h>
#include <time.h>

#include "pgveil/admin.h"
#include "pgveil/audit.h"
#include "pgveil/approval.h"
#include "pgveil/backend.h"
#include "pgveil/jwks.h"
#include "pgveil/log.h"
#include "pgveil/relay.h"
#include "pgveil/server.h"
#include "pgveil/stream.h"

#define SESSION_HIGH_WATER (256 * 1024)

static uint64_t next_session_id = 1;

void session_set_first_id(uint64_t id)
{
	__atomic_store_n(&next_session_id, id, __ATOMIC_RELAXED);
}

static void session_client_cb(Stream *st, StreamEvent ev, void *arg);
static void session_server_cb(Stream *st, StreamEvent ev, void *arg);
static void request_token(Session *s);
static void drop_pending_token(Session *s);
static bool wants_console(const Session *s);
static void console_login(Session *s);
static void console_input(Session *s);
static void console_wake_cb(evutil_socket_t fd, short what, void *arg);

/* ---- lifecycle ---------------------------------------------------------------- */

static void session_free_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;

	worker_remove_session(s->worker, s);
	cancel_unregister(&s->cancel);
	stream_free(s->client);
	relay_free(s);
	backend_free(s->backend); /* frees s->server too */
	event_free(s->timer);
	event_free(s->expiry);
	event_free(s->free_ev);
	admin_close(s->console); /* before its wake event goes */
	if (s->admin_wake != NULL)
		event_free(s->admin_wake);
	jwtauth_identity_clear(&s->identity);
	drop_pending_token(s);
	free(s->startup_pkt);
	config_unref(s->cfg);
	server_conn_closed();
	free(s);
}

/*
 * The session's row in the audit log: its start (a login that succeeded).
 * False (the session failed) when the audit log cannot take it.
 */
static bool audit_open(Session *s, const char *backend_user)
{
	char groups[1024], why[300];
	size_t n = 0;
	AuditSession a;
	AuditStatus st;

	if (!audit_enabled())
		return true;
	groups[0] = '\0';
	for (int i = 0; i < s->identity.n_groups && n < sizeof(groups); i++)
		n += (size_t)snprintf(groups + n, sizeof(groups) - n, "%s%s", i > 0 ? "," : "", s->identity.groups[i]);
	memset(&a, 0, sizeof(a));
	a.session_id = s->id;
	a.started_us = pgv_wall_us();
	a.subject = s->identity.subject != NULL ? s->identity.subject : "";
	a.groups = groups;
	a.client_addr = s->addr;
	a.database = s->database != NULL ? s->database : "";
	a.backend_user = backend_user;
	a.tls = s->tls_done;
	st = audit_session_start(&a);
	if (st == AUDIT_OK || st == AUDIT_OFF) {
		s->audited = st == AUDIT_OK;
		return true;
	}
	if (audit_error(why, sizeof(why)) == NULL)
		snprintf(why, sizeof(why), "%s", st == AUDIT_FULL ? "it is too far behind" : "out of memory");
	session_fail(s, SQLSTATE_TOO_MANY_CONNECTIONS, "the audit log cannot record another session now (%s); try again later",
		     why);
	return false;
}

void session_close(Session *s, const char *reason)
{
	if (s->state == SESS_CLOSING)
		return;
	if (s->audited)
		audit_session_end(s->id, pgv_wall_us(), reason);
	log_write(LL_DEBUG, s->ctx, "closing: %s", reason);
	s->state = SESS_CLOSING;
	stream_flush(s->client);
	stream_close(s->client);
	if (s->server != NULL)
		stream_flush(s->server);
	if (s->backend != NULL)
		stream_close(backend_stream(s->backend));
	event_del(s->timer);
	event_del(s->expiry);
	if (s->jwks_wake != NULL)
		jwks_cancel_wait(s->cfg->oidc_verifier, s->jwks_wake);
	relay_stop(s);
	cancel_unregister(&s->cancel);
	event_active(s->free_ev, 0, 0);
}

/* Appends a message built in b to the client's output and writes it. */
static void send_to_client(Session *s, PgBuf *b)
{
	if (pgproto_buf_ok(b))
		evbuffer_add(stream_output(s->client), b->data, b->len);
	stream_flush(s->client);
}

void session_fail(Session *s, const char *sqlstate, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	PgBuf b;

	if (s->state == SESS_CLOSING)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_write(LL_INFO, s->ctx, "FATAL %s: %s", sqlstate, msg);
	pgproto_buf_init(&b);
	pgproto_build_error(&b, false, "FATAL", sqlstate, msg, NULL, NULL);
	send_to_client(s, &b);
	pgproto_buf_free(&b);
	session_close(s, msg);
}

static void startup_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;

	session_fail(s, SQLSTATE_QUERY_CANCELED, "canceling authentication due to timeout");
}

static bool session_idle(const Session *s);
static bool session_quiet(const Session *s);

/* Forgets a token kept for a JWKS refresh, and stops waiting for it. */
static void drop_pending_token(Session *s)
{
	if (s->jwks_wake != NULL) {
		jwks_cancel_wait(s->cfg->oidc_verifier, s->jwks_wake);
		event_free(s->jwks_wake);
		s->jwks_wake = NULL;
	}
	if (s->pending_token != NULL) {
		explicit_bzero(s->pending_token, strlen(s->pending_token));
		free(s->pending_token);
		s->pending_token = NULL;
	}
}

/*
 * The session's second timer: during SESS_AUTH it delivers a delayed
 * authentication failure (throttling); afterwards it marks the token expired.
 */
static void expiry_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;

	if (s->state == SESS_AUTH) {
		session_fail(s, s->deferred_state, "%s",
			     strcmp(s->deferred_state, SQLSTATE_INVALID_PASSWORD) == 0 ? "invalid token"
											: "token not allowed");
		return;
	}
	s->token_expired = true;
	log_write(LL_INFO, s->ctx, "token expired");
	/* Even inside a transaction: the server rolls it back when the session ends. */
	if (s->state != SESS_ACTIVE || session_quiet(s))
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION, "the agent's token has expired; reconnect with a new token");
}

static void format_addr(const struct sockaddr *sa, char *out, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(out, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		snprintf(out, len, "unix");
	}
}

Session *session_create(Worker *w, Config *cfg, int fd, const struct sockaddr *addr, socklen_t addrlen,
			bool over_limit)
{
	Session *s = calloc(1, sizeof(Session));
	struct timeval tv;

	if (s == NULL)
		return NULL;
	s->id = __atomic_fetch_add(&next_session_id, 1, __ATOMIC_RELAXED);
	s->worker = w;
	s->over_limit = over_limit;
	s->txn_status = 'I';
	s->started_at = time(NULL);
	format_addr(addr, s->addr, sizeof(s->addr));
	snprintf(s->ctx, sizeof(s->ctx), "c%llu %s", (unsigned long long)s->id, s->addr);
	memcpy(&s->peer, addr, addrlen < sizeof(s->peer) ? addrlen : sizeof(s->peer));
	s->timer = evtimer_new(w->base, startup_timeout_cb, s);
	s->expiry = evtimer_new(w->base, expiry_cb, s);
	s->free_ev = event_new(w->base, -1, 0, session_free_cb, s);
	if (s->timer == NULL || s->expiry == NULL || s->free_ev == NULL ||
	    (s->client = stream_new(w->base, fd, session_client_cb, s)) == NULL) {
		if (s->timer)
			event_free(s->timer);
		if (s->expiry)
			event_free(s->expiry);
		if (s->free_ev)
			event_free(s->free_ev);
		free(s);
		return NULL;
	}
	s->cfg = config_ref(cfg);
	stream_set_high_water(s->client, SESSION_HIGH_WATER);
	tv.tv_sec = (time_t)(cfg->startup_timeout / 1000);
	tv.tv_usec = (suseconds_t)(cfg->startup_timeout % 1000) * 1000;
	if (cfg->startup_timeout > 0)
		evtimer_add(s->timer, &tv);
	worker_add_session(w, s);
	stream_enable_read(s->client, true);
	log_write(LL_DEBUG, s->ctx, "connection accepted");
	return s;
}

/* No statement is running: nothing sent that the server has not answered. */
static bool session_quiet(const Session *s)
{
	return s->state == SESS_ACTIVE && s->pending_ready == 0 && s->client_pass == 0;
}

static bool session_idle(const Session *s)
{
	return s->state == SESS_ACTIVE && s->pending_ready == 0 && s->txn_status == 'I' && s->client_pass == 0;
}

void session_shutdown(Session *s, bool force)
{
	s->shutdown_pending = true;
	if (force || s->state != SESS_ACTIVE || session_idle(s))
		session_fail(s, SQLSTATE_ADMIN_SHUTDOWN, "terminating connection because pgveil is shutting down");
}

void session_kill(Session *s)
{
	if (s->state == SESS_CLOSING)
		return;
	log_write(LL_INFO, s->ctx, "ended by the admin console");
	/* A statement still running on the server would go on after the socket closes: cancel it. */
	if (s->state == SESS_ACTIVE && !session_quiet(s) && s->cancel.has_backend)
		backend_send_cancel(s->worker->base, &s->cancel.addr, s->cancel.be_pid, s->cancel.be_key);
	session_fail(s, SQLSTATE_ADMIN_SHUTDOWN, "terminated by administrator command");
}

const char *session_state_text(const Session *s)
{
	switch (s->state) {
	case SESS_STARTUP:
	case SESS_TLS: return "startup";
	case SESS_AUTH: return "authenticating";
	case SESS_CONNECTING: return "connecting";
	case SESS_ADMIN: return "admin";
	case SESS_CLOSING: return "closing";
	case SESS_ACTIVE: break;
	}
	if (s->pending_ready > 0 || s->client_pass > 0)
		return "active";
	switch (s->txn_status) {
	case 'T': return "idle in transaction";
	case 'E': return "idle in transaction (aborted)";
	default: return "idle";
	}
}

/* ---- startup phase -------------------------------------------------------------- */

static void send_byte(Session *s, char c)
{
	evbuffer_add(stream_output(s->client), &c, 1);
	stream_flush(s->client);
}

static void handle_ssl_request(Session *s)
{
	if (s->tls_done) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "SSL request on an already encrypted connection");
		return;
	}
	if (evbuffer_get_length(stream_input(s->client)) > 0) {
		/* Bytes sent before our answer could be injected by a man in the middle. */
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "received unencrypted data after SSL request");
		return;
	}
	if (s->cfg->tls_server_ctx == NULL) {
		send_byte(s, 'N');
		return;
	}
	send_byte(s, 'S');
	/* Before starting: a quick client can complete the handshake inside stream_start_tls(). */
	s->state = SESS_TLS;
	if (stream_output_len(s->client) > 0 || !stream_start_tls(s->client, s->cfg->tls_server_ctx, true, NULL))
		session_close(s, "could not start TLS");
}

static void handle_cancel_request(Session *s, const PgStartup *p)
{
	BackendAddr addr;
	uint32_t pid, key;

	switch (cancel_lookup(p->cancel_pid, p->cancel_key, &addr, &pid, &key)) {
	case CANCEL_FORWARD:
		log_write(LL_INFO, s->ctx, "forwarding cancel request for key %u", p->cancel_pid);
		backend_send_cancel(s->worker->base, &addr, pid, key);
		break;
	case CANCEL_HELD:
		log_write(LL_INFO, s->ctx, "cancel request for key %u cancels its held statement", p->cancel_pid);
		break;
	case CANCEL_UNKNOWN:
		log_write(LL_INFO, s->ctx, "cancel request with an unknown key ignored");
		break;
	}
	session_close(s, "cancel request served");
}

/* Startup parameters that must never reach the server from a client. */
static const char *forbidden_param(const PgStartup *p)
{
	static const char *const names[] = { "role", "session_authorization", "replication" };

	for (int i = 0; i < p->n_params; i++)
		for (size_t j = 0; j < PGV_ARRAY_LEN(names); j++)
			if (strcasecmp(p->params[i].name, names[j]) == 0)
				return names[j];
	return NULL;
}

/* True when a setting ("name=value" of "-c name=value") changes who the session is. */
static bool identity_setting(const char *setting)
{
	static const char *const names[] = { "role", "session_authorization" };
	size_t len = strcspn(setting, "=");
	char norm[32];

	if (len == 0 || len >= sizeof(norm))
		return false;
	for (size_t i = 0; i < len; i++)
		norm[i] = (setting[i] == '-') ? '_' : setting[i];
	norm[len] = '\0';
	for (size_t i = 0; i < PGV_ARRAY_LEN(names); i++)
		if (strcasecmp(norm, names[i]) == 0)
			return true;
	return false;
}

/*
 * Copies the next word of "options" to out as the server splits them: at
 * white space, a backslash taking the next character as it is. Returns
 * where the word ends; out is "" when there is none.
 */
static const char *options_word(const char *p, char *out)
{
	bool escaped = false;

	while (isspace((unsigned char)*p))
		p++;
	for (; *p != '\0' && (escaped || !isspace((unsigned char)*p)); p++) {
		if (!escaped && *p == '\\')
			escaped = true;
		else {
			escaped = false;
			*out++ = *p;
		}
	}
	*out = '\0';
	return p;
}

/*
 * One switch word after its '-', read as the server's getopt does (flags may
 * be clustered): true when it sets an identity setting ("-cname=value",
 * "--name=value"); *value_next when the setting is the next word ("-c").
 */
static bool switch_sets_identity(const char *f, bool *value_next)
{
	for (; *f != '\0'; f++) {
		if (*f == '-' || (*f == 'c' && f[1] != '\0'))
			return identity_setting(f + 1);
		if (*f == 'c') {
			*value_next = true;
			return false;
		}
		if (strchr("BCDdfhkNprStvW", *f) != NULL)
			return false; /* the rest of the word is this switch's value */
	}
	return false;
}

/*
 * "options" holds server command-line switches ("-c name=value",
 * "-cname=value", "--name=value", other flags, possibly clustered).
 * True when one would change the session's role, or when they cannot be
 * read for want of memory.
 */
static bool options_change_identity(const char *opts)
{
	bool found = false, value_next = false;
	char *word;

	if (opts == NULL)
		return false;
	if ((word = malloc(strlen(opts) + 1)) == NULL)
		return true;
	for (const char *p = opts; !found;) {
		bool setting = value_next;

		p = options_word(p, word);
		if (word[0] == '\0')
			break;
		value_next = false;
		found = (setting && identity_setting(word)) ||
			(word[0] == '-' && switch_sets_identity(word + 1, &value_next));
	}
	free(word);
	return found;
}

/* Sends NegotiateProtocolVersion when the client asked for more than 3.0. */
static void negotiate_protocol(Session *s)
{
	const char *unrec[PG_STARTUP_MAX_PARAMS];
	int n = 0;
	PgBuf b;

	for (int i = 0; i < s->startup.n_params; i++)
		if (strncmp(s->startup.params[i].name, "_pq_.", 5) == 0)
			unrec[n++] = s->startup.params[i].name;
	if ((s->startup.code & 0xffff) == 0 && n == 0)
		return;
	pgproto_buf_init(&b);
	/* Like the server, answer with the whole newest version code (3.0), not just its minor part. */
	pgproto_build_negotiate(&b, (int32_t)PG_PROTOCOL_3_0, unrec, n);
	send_to_client(s, &b);
	pgproto_buf_free(&b);
}

static void backend_ready_cb(Backend *be, void *arg);
static void backend_fail_cb(Backend *be, const char *sqlstate, const char *message, void *arg);

/* The client's settings that pass through to the server. */
static int passthrough_params(const Session *s, PgStartupParam *out)
{
	int n = 0;

	for (int i = 0; i < s->startup.n_params; i++) {
		const char *name = s->startup.params[i].name;

		if (strcmp(name, "user") == 0 || strcmp(name, "database") == 0 || strncmp(name, "_pq_.", 5) == 0)
			continue;
		if (s->app_name[0] != '\0' && strcmp(name, "application_name") == 0)
			continue;
		out[n++] = s->startup.params[i];
	}
	if (s->app_name[0] != '\0') {
		out[n].name = "application_name";
		out[n++].value = s->app_name;
	}
	return n;
}

static void connect_backend(Session *s)
{
	PgStartupParam params[PG_STARTUP_MAX_PARAMS + 1];
	int n = passthrough_params(s, params);
	uint64_t timeout = s->db->connect_timeout > 0 ? (uint64_t)s->db->connect_timeout * 1000
						      : s->cfg->server_connect_timeout;
	const char *why;

	s->state = SESS_CONNECTING;
	/* The client has done its part; server_connect_timeout bounds the rest. */
	event_del(s->timer);
	stream_enable_read(s->client, false);
	s->backend = backend_connect(s->worker->base, s->worker->dns, s->db, timeout, params, n, s->ctx, backend_ready_cb,
				     backend_fail_cb, s, &why);
	if (s->backend == NULL)
		session_fail(s, SQLSTATE_CANNOT_CONNECT, "%s", why);
}

static bool check_startup(Session *s)
{
	const char *bad;

	if (s->over_limit) {
		session_fail(s, SQLSTATE_TOO_MANY_CONNECTIONS, "sorry, too many clients already");
		return false;
	}
	if (s->user == NULL || s->user[0] == '\0') {
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION, "no PostgreSQL user name specified in startup packet");
		return false;
	}
	if ((bad = forbidden_param(&s->startup)) != NULL) {
		session_fail(s, SQLSTATE_FEATURE_NOT_SUPPORTED,
			     "startup parameter \"%s\" is not allowed through pgveil", bad);
		return false;
	}
	if (options_change_identity(pgproto_startup_get(&s->startup, "options"))) {
		session_fail(s, SQLSTATE_INSUFFICIENT_PRIVILEGE,
			     "startup options may not set role or session_authorization through pgveil");
		return false;
	}
	if (wants_console(s))
		return true; /* the admin console has no [databases] entry */
	s->db = config_find_db(s->cfg, s->database);
	if (s->db == NULL) {
		session_fail(s, SQLSTATE_INVALID_CATALOG_NAME, "database \"%s\" does not exist", s->database);
		return false;
	}
	return true;
}

static void handle_startup_message(Session *s, uint8_t *pkt)
{
	s->startup_pkt = pkt;
	s->user = pgproto_startup_get(&s->startup, "user");
	s->database = pgproto_startup_get(&s->startup, "database");
	if (s->database == NULL || s->database[0] == '\0')
		s->database = s->user;
	snprintf(s->ctx, sizeof(s->ctx), "c%llu %s@%s %s", (unsigned long long)s->id, s->user ? s->user : "?",
		 s->database ? s->database : "?", s->addr);
	if (!check_startup(s))
		return;
	negotiate_protocol(s);
	if (s->cfg->oidc_verifier != NULL) {
		request_token(s);
		return;
	}
	if (!s->cfg->dev_trust_auth) {
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION, "no client authentication method is configured");
		return;
	}
	if (wants_console(s)) {
		/* Without a token nobody can be told apart: no admin, approver or auditor. */
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION,
			     "the admin console needs token authentication ([oidc]); dev_trust_auth cannot reach it");
		return;
	}
	connect_backend(s);
}

/* ---- authentication: the password is an OIDC JWT ------------------------------------ */

static void request_token(Session *s)
{
	PgBuf b;

	if (!s->tls_done && !s->cfg->allow_plaintext_auth) {
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION,
			     "pgveil accepts tokens only over TLS: connect with sslmode=require");
		return;
	}
	pgproto_buf_init(&b);
	pgproto_build_auth(&b, PG_AUTH_CLEARTEXT, NULL, 0);
	send_to_client(s, &b);
	pgproto_buf_free(&b);
	s->state = SESS_AUTH;
}

/* Refuses the token, later when this address keeps failing. */
static void auth_refuse(Session *s, JwtResult rc, const char *why)
{
	uint32_t delay;
	struct timeval tv;

	log_write(LL_WARN, s->ctx, "token refused: %s", why);
	jwtauth_throttle_record((struct sockaddr *)&s->peer, false);
	delay = jwtauth_throttle_delay((struct sockaddr *)&s->peer);
	tv.tv_sec = (time_t)(delay / 1000);
	tv.tv_usec = (suseconds_t)(delay % 1000) * 1000;
	s->deferred_state = rc == JWT_FORBIDDEN ? SQLSTATE_INVALID_AUTHORIZATION : SQLSTATE_INVALID_PASSWORD;
	if (delay == 0) {
		expiry_cb(-1, 0, s);
		return;
	}
	stream_enable_read(s->client, false);
	evtimer_add(s->expiry, &tv);
}

static void auth_accept(Session *s)
{
	struct timeval now, tv = { 0, 0 };
	int64_t left_us;

	gettimeofday(&now, NULL);
	left_us = (s->identity.expires_at + (int64_t)s->cfg->oidc_clock_skew - (int64_t)now.tv_sec) * 1000000 -
		  (int64_t)now.tv_usec;
	if (left_us > 0) {
		tv.tv_sec = (time_t)(left_us / 1000000);
		tv.tv_usec = (suseconds_t)(left_us % 1000000);
	}
	jwtauth_throttle_record((struct sockaddr *)&s->peer, true);
	snprintf(s->app_name, sizeof(s->app_name), "pgveil:%s", s->identity.subject);
	snprintf(s->ctx, sizeof(s->ctx), "c%llu %s@%s %s", (unsigned long long)s->id, s->identity.subject,
		 s->database, s->addr);
	log_write(LL_INFO, s->ctx, "token accepted (%d group%s, expires in %llds)", s->identity.n_groups,
		  s->identity.n_groups == 1 ? "" : "s", (long long)(tv.tv_sec));
	if (approval_agent_blocked(s->identity.subject)) {
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION, "agent %s is blocked by an administrator",
			     s->identity.subject);
		return;
	}
	evtimer_add(s->expiry, &tv);
	if (wants_console(s))
		console_login(s);
	else
		connect_backend(s);
}

static void verify_token(Session *s, const char *token, bool may_refresh);

/* The JWKS refresh this session waited for has ended: try the kept token again. */
static void jwks_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;
	char *token = s->pending_token;

	s->pending_token = NULL;
	event_free(s->jwks_wake);
	s->jwks_wake = NULL;
	if (s->state == SESS_AUTH && token != NULL)
		verify_token(s, token, false);
	if (s->state == SESS_ADMIN)
		console_input(s); /* what the client sent after its token */
	if (token != NULL) {
		explicit_bzero(token, strlen(token));
		free(token);
	}
}

/* Unknown kid: wait for a JWKS refresh when one may run now. */
static bool wait_for_keys(Session *s, const char *token)
{
	s->pending_token = strdup(token);
	s->jwks_wake = event_new(s->worker->base, -1, 0, jwks_wake_cb, s);
	if (s->pending_token != NULL && s->jwks_wake != NULL &&
	    jwks_wait_refresh(s->cfg->oidc_verifier, s->jwks_wake)) {
		log_write(LL_INFO, s->ctx, "token names an unknown key: refreshing the JWKS");
		stream_enable_read(s->client, false);
		return true;
	}
	if (s->jwks_wake != NULL)
		event_free(s->jwks_wake);
	s->jwks_wake = NULL;
	drop_pending_token(s);
	return false;
}

static void verify_token(Session *s, const char *token, bool may_refresh)
{
	char why[256] = "";
	JwtResult rc = jwtauth_verify(s->cfg->oidc_verifier, token, time(NULL), s->user, &s->identity, why,
				      sizeof(why));

	if (rc == JWT_OK)
		auth_accept(s);
	else if (rc != JWT_UNKNOWN_KID || !may_refresh || !wait_for_keys(s, token))
		auth_refuse(s, rc, why);
}

static void handle_auth_input(Session *s)
{
	struct evbuffer *in = stream_input(s->client);
	uint8_t hdr[PG_HEADER_LEN];
	const char *err;
	PgHeader h;
	char *token;

	if (evbuffer_copyout(in, hdr, sizeof(hdr)) < (ssize_t)sizeof(hdr))
		return;
	if (pgproto_check_frontend_header(hdr, JWT_MAX_TOKEN_LEN + 5, &h, &err) != PGP_FRAME_OK || h.type != 'p') {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "expected a password message with the token%s%s",
			     h.type == 'p' ? ": " : "", h.type == 'p' ? err : "");
		return;
	}
	if (evbuffer_get_length(in) < (size_t)h.len + 1)
		return;
	token = (char *)evbuffer_pullup(in, (ssize_t)h.len + 1);
	if (token == NULL) {
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return;
	}
	token += PG_HEADER_LEN;
	if (h.len < 5 || memchr(token, '\0', h.len - 4) != token + h.len - 5) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "invalid password message");
		return;
	}
	verify_token(s, token, true);
	explicit_bzero(token, h.len - 4);
	evbuffer_drain(in, (size_t)h.len + 1);
	if (s->state == SESS_ADMIN)
		console_input(s); /* what the client sent after its token */
}

/* Reads one whole startup-phase packet; returns it (malloc'd) or NULL if incomplete or bad. */
static uint8_t *read_startup_packet(Session *s, uint32_t *len_out)
{
	struct evbuffer *in = stream_input(s->client);
	uint8_t lenbuf[4], *pkt;
	const char *why;
	uint32_t len;

	if (evbuffer_copyout(in, lenbuf, 4) < 4)
		return NULL;
	if (!pgproto_check_startup_length(lenbuf, &len, &why)) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "%s", why);
		return NULL;
	}
	if (evbuffer_get_length(in) < len)
		return NULL;
	pkt = malloc(len);
	if (pkt == NULL) {
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return NULL;
	}
	evbuffer_remove(in, pkt, len);
	*len_out = len;
	return pkt;
}

static void handle_startup_input(Session *s)
{
	while (s->state == SESS_STARTUP) {
		const char *why;
		uint32_t len;
		uint8_t *pkt = read_startup_packet(s, &len);

		if (pkt == NULL)
			return;
		if (!pgproto_parse_startup(pkt, len, &s->startup, &why)) {
			free(pkt);
			session_fail(s, (strncmp(why, "unsupported", 11) == 0) ? SQLSTATE_FEATURE_NOT_SUPPORTED
										: SQLSTATE_PROTOCOL_VIOLATION,
				     "%s", why);
			return;
		}
		switch (s->startup.code) {
		case PG_SSL_REQUEST_CODE:
			free(pkt);
			handle_ssl_request(s);
			break;
		case PG_GSSENC_REQUEST_CODE:
			free(pkt);
			send_byte(s, 'N');
			break;
		case PG_CANCEL_REQUEST_CODE:
			handle_cancel_request(s, &s->startup);
			free(pkt);
			return;
		default:
			handle_startup_message(s, pkt);
			return;
		}
	}
}

/* ---- server login done ---------------------------------------------------------- */

/*
 * Makes a logged-in session visible to the admin console. An agent blocked
 * while this session was logging in is refused here: BLOCK AGENT records
 * the block before it looks for sessions to end, so one of the two sees it.
 */
static bool session_publish(Session *s)
{
	worker_publish_session(s->worker, s);
	if (approval_agent_blocked(s->identity.subject)) {
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION, "agent %s is blocked by an administrator",
			     s->identity.subject);
		return false;
	}
	return true;
}

/*
 * Whether pgveil reads statement text as the server will under a setting
 * the server reported: standard_conforming_strings on, and a client
 * encoding whose multibyte characters cannot contain the bytes of a quote
 * or a backslash (the server's own names for those that can).
 */
bool session_setting_readable(const char *name, const char *value)
{
	static const char *const encodings[] = { "SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB" };

	if (strcmp(name, "standard_conforming_strings") == 0)
		return strcmp(value, "on") == 0;
	for (size_t i = 0; strcmp(name, "client_encoding") == 0 && i < PGV_ARRAY_LEN(encodings); i++)
		if (strcmp(value, encodings[i]) == 0)
			return false;
	return true;
}

/*
 * The settings the server reported at login (ParameterStatus messages in
 * msgs) must be ones under which pgveil reads statements as the server
 * does, however the client asked for them: startup parameters, options,
 * encoding aliases. False (the session failed) when one is not, or when
 * the server did not report both.
 */
static bool server_settings_readable(Session *s, const uint8_t *msgs, size_t len)
{
	bool encoding = false, strings = false;
	PgReader rd;

	pgproto_reader_init(&rd, msgs, len);
	while (pgproto_remaining(&rd) > 0) {
		const char *name = NULL, *value = NULL;
		const uint8_t *body;
		uint32_t mlen;
		uint8_t type;
		PgReader m;

		if (!pgproto_get_byte(&rd, &type) || !pgproto_get_uint32(&rd, &mlen) || mlen < 4 ||
		    !pgproto_get_bytes(&rd, mlen - 4, &body))
			break;
		pgproto_reader_init(&m, body, mlen - 4);
		if (type != 'S' || !pgproto_get_string(&m, &name) || !pgproto_get_string(&m, &value))
			continue;
		encoding = encoding || strcmp(name, "client_encoding") == 0;
		strings = strings || strcmp(name, "standard_conforming_strings") == 0;
		if (!session_setting_readable(name, value)) {
			session_fail(s, SQLSTATE_FEATURE_NOT_SUPPORTED,
				     "%s %s is not allowed through pgveil: it could not read statements as the "
				     "server does", name, value);
			return false;
		}
	}
	if (!encoding || !strings) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION,
			     "the server did not report client_encoding and standard_conforming_strings at login");
		return false;
	}
	return true;
}

static void backend_ready_cb(Backend *be, void *arg)
{
	Session *s = arg;
	const uint8_t *msgs;
	size_t len;
	uint32_t pid, key;
	PgBuf b;

	msgs = backend_startup_messages(be, &len);
	if (!server_settings_readable(s, msgs, len) || !session_publish(s) || !audit_open(s, s->db->user))
		return;
	if (!cancel_register(&s->cancel)) {
		session_fail(s, SQLSTATE_INTERNAL_ERROR, "could not generate a cancel key");
		return;
	}
	backend_get_key(be, &pid, &key);
	cancel_set_backend(&s->cancel, backend_get_addr(be), pid, key);
	pgproto_buf_init(&b);
	pgproto_build_auth(&b, PG_AUTH_OK, NULL, 0);
	pgproto_put_bytes(&b, msgs, len);
	pgproto_build_backend_key(&b, s->cancel.pid, s->cancel.key);
	pgproto_build_ready(&b, 'I');
	send_to_client(s, &b);
	pgproto_buf_free(&b);

	if (!relay_start(s)) {
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return;
	}
	s->state = SESS_ACTIVE;
	event_del(s->timer);
	s->server = backend_stream(be);
	stream_set_cb(s->server, session_server_cb, s);
	stream_set_high_water(s->server, SESSION_HIGH_WATER);
	stream_enable_read(s->server, true);
	stream_enable_read(s->client, true);
	log_write(LL_INFO, s->ctx, "session started on server %s (%s)", s->db->name, backend_get_addr(be)->display);
	if (evbuffer_get_length(stream_input(s->client)) > 0)
		relay_client_input(s);
}

static void backend_fail_cb(Backend *be, const char *sqlstate, const char *message, void *arg)
{
	session_fail(arg, sqlstate, "%s", message);
}

/* ---- stream events ------------------------------------------------------------------ */

static void session_client_cb(Stream *st, StreamEvent ev, void *arg)
{
	Session *s = arg;

	switch (ev) {
	case STREAM_EV_READ:
		if (s->state == SESS_STARTUP)
			handle_startup_input(s);
		else if (s->state == SESS_AUTH)
			handle_auth_input(s);
		else if (s->state == SESS_ACTIVE)
			relay_client_input(s);
		else if (s->state == SESS_ADMIN)
			console_input(s);
		return;
	case STREAM_EV_TLS_DONE:
		s->tls_done = true;
		s->state = SESS_STARTUP;
		return;
	case STREAM_EV_DRAINED:
		if (s->state == SESS_ACTIVE && s->server != NULL)
			stream_enable_read(s->server, true);
		else if (s->state == SESS_ADMIN)
			console_input(s);
		return;
	case STREAM_EV_EOF:
		if (s->state == SESS_ACTIVE)
			relay_client_eof(s);
		else
			session_close(s, s->state == SESS_STARTUP ? "incomplete startup packet" : "client closed");
		return;
	case STREAM_EV_ERROR:
		log_write(LL_INFO, s->ctx, "client connection: %s", stream_error(st));
		if (s->state == SESS_ACTIVE)
			relay_client_terminate(s);
		else
			session_close(s, stream_error(st));
		return;
	case STREAM_EV_CONNECTED:
		return;
	}
}

static void session_server_cb(Stream *st, StreamEvent ev, void *arg)
{
	Session *s = arg;

	switch (ev) {
	case STREAM_EV_READ:
		if (s->state != SESS_ACTIVE)
			return;
		relay_server_input(s);
		if (s->state != SESS_ACTIVE)
			return;
		if (s->shutdown_pending && session_idle(s))
			session_shutdown(s, false);
		else if (s->token_expired && session_quiet(s))
			session_fail(s, SQLSTATE_INVALID_AUTHORIZATION,
				     "the agent's token has expired; reconnect with a new token");
		return;
	case STREAM_EV_DRAINED:
		if (s->state == SESS_ACTIVE)
			stream_enable_read(s->client, true);
		return;
	case STREAM_EV_EOF:
	case STREAM_EV_ERROR:
		if (s->state != SESS_ACTIVE)
			return;
		if (s->client_eof) {
			session_close(s, "client half-closed and the server finished");
			return;
		}
		log_write(LL_WARN, s->ctx, "server connection lost: %s", stream_error(st));
		if (s->server_sent_fatal)
			session_close(s, "server ended the session");
		else
			session_fail(s, SQLSTATE_CONNECTION_FAILURE, "server closed the connection unexpectedly");
		return;
	default:
		return;
	}
}

/* ---- the admin console ------------------------------------------------------------------ */

#define CONSOLE_MAX_MESSAGE (1u << 20) /* no console command is anywhere near this */
#define CONSOLE_READ_AHEAD (64u << 10)  /* read while a command waits: enough to notice the client leave */

/* The client asked for the admin console's virtual database. */
static bool wants_console(const Session *s)
{
	return s->cfg->admin_db != NULL && s->database != NULL && strcmp(s->database, s->cfg->admin_db) == 0;
}

/* What a console tells the client at login, so that psql and drivers are content. */
static void console_greeting(Session *s, PgBuf *b)
{
	const char *app = pgproto_startup_get(&s->startup, "application_name");

	pgproto_build_auth(b, PG_AUTH_OK, NULL, 0);
	pgproto_build_parameter_status(b, "server_version", "15.0 (pgveil admin console)");
	pgproto_build_parameter_status(b, "server_encoding", "UTF8");
	pgproto_build_parameter_status(b, "client_encoding", "UTF8");
	pgproto_build_parameter_status(b, "DateStyle", "ISO, MDY");
	pgproto_build_parameter_status(b, "IntervalStyle", "postgres");
	pgproto_build_parameter_status(b, "TimeZone", "UTC");
	pgproto_build_parameter_status(b, "integer_datetimes", "on");
	pgproto_build_parameter_status(b, "standard_conforming_strings", "on");
	pgproto_build_parameter_status(b, "is_superuser", "off");
	pgproto_build_parameter_status(b, "session_authorization", s->identity.subject);
	pgproto_build_parameter_status(b, "application_name", app != NULL ? app : "");
	pgproto_build_backend_key(b, s->cancel.pid, s->cancel.key);
	pgproto_build_ready(b, 'I');
}

/* The token is verified and not blocked: open the console instead of a server connection. */
static void console_login(Session *s)
{
	int roles = admin_roles(s->cfg, &s->identity);
	PgBuf b;

	if (roles == 0) {
		session_fail(s, SQLSTATE_INVALID_AUTHORIZATION, "not a member of an admin, approver or auditor group");
		return;
	}
	if (!session_publish(s) || !audit_open(s, NULL))
		return;
	s->admin_wake = event_new(s->worker->base, -1, 0, console_wake_cb, s);
	if (s->admin_wake != NULL)
		s->console = admin_open(&s->identity, roles, s->id, s->admin_wake);
	if (s->console == NULL || !cancel_register(&s->cancel)) {
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "could not open the admin console");
		return;
	}
	pgproto_buf_init(&b);
	console_greeting(s, &b);
	if (!pgproto_buf_ok(&b)) {
		pgproto_buf_free(&b);
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return;
	}
	send_to_client(s, &b);
	pgproto_buf_free(&b);
	s->state = SESS_ADMIN;
	event_del(s->timer);
	log_write(LL_INFO, s->ctx, "admin console opened (roles:%s%s%s)", (roles & ADMIN_ROLE_ADMIN) ? " admin" : "",
		  (roles & ADMIN_ROLE_APPROVER) ? " approver" : "", (roles & ADMIN_ROLE_AUDITOR) ? " auditor" : "");
	stream_enable_read(s->client, true);
}

/*
 * Sends what the console answered. When it waits for the audit log, the
 * client's next messages wait until console_wake_cb() finishes the answer
 * (a CancelRequest for the console wakes it too); meanwhile the client is
 * read only up to CONSOLE_READ_AHEAD, so that its going away is noticed
 * and ends the read.
 */
static void console_answer(Session *s, AdminStatus st, PgBuf *b)
{
	if (st == ADMIN_DONE)
		pgproto_build_ready(b, 'I');
	if (!pgproto_buf_ok(b)) {
		pgproto_buf_free(b);
		session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return;
	}
	evbuffer_add(stream_output(s->client), b->data, b->len);
	pgproto_buf_free(b);
	if (st == ADMIN_WAIT && !s->admin_busy) {
		s->admin_busy = true;
		cancel_watch(&s->cancel, s->admin_wake);
	} else if (st == ADMIN_DONE && s->admin_busy) {
		s->admin_busy = false;
		cancel_watch(&s->cancel, NULL);
	}
}

/* Runs one Query message and answers it, ReadyForQuery included (now or once the audit log answered). */
static void console_query(Session *s, const uint8_t *body, uint32_t len)
{
	PgBuf b;

	if (len == 0 || memchr(body, '\0', len) != body + len - 1) {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "invalid Query message");
		return;
	}
	pgproto_buf_init(&b);
	console_answer(s, admin_query(s->console, (const char *)body, &b), &b);
}

/* The audit log answered, or a CancelRequest came: the console goes on, then reads its client again. */
static void console_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	Session *s = arg;
	PgBuf b;

	if (s->state != SESS_ADMIN || !s->admin_busy)
		return;
	if (cancel_take(&s->cancel))
		admin_cancel(s->console);
	pgproto_buf_init(&b);
	console_answer(s, admin_resume(s->console, &b), &b);
	if (s->state != SESS_ADMIN)
		return;
	if (s->admin_busy)
		stream_flush(s->client);
	else
		console_input(s); /* what the client sent meanwhile */
}

/* Appends an ErrorResponse (and ReadyForQuery when `ready`) to the client's output. */
static void console_error(Session *s, const char *sqlstate, const char *msg, bool ready)
{
	PgBuf b;

	pgproto_buf_init(&b);
	pgproto_build_error(&b, false, "ERROR", sqlstate, msg, NULL, NULL);
	if (ready)
		pgproto_build_ready(&b, 'I');
	if (pgproto_buf_ok(&b))
		evbuffer_add(stream_output(s->client), b.data, b.len);
	pgproto_buf_free(&b);
}

static void console_ready(Session *s)
{
	static const uint8_t ready[] = { 'Z', 0, 0, 0, 5, 'I' };

	evbuffer_add(stream_output(s->client), ready, sizeof(ready));
}

/*
 * One whole client message on the console. The extended protocol is
 * refused the way the server refuses a failed Parse: one error, then
 * everything up to Sync is skipped.
 */
static void console_message(Session *s, uint8_t type, const uint8_t *body, uint32_t len)
{
	static const char extended[] = "the admin console speaks the simple query protocol";

	if (type == 'X') {
		session_close(s, "client sent Terminate");
	} else if (type == 'S') {
		s->admin_skip = false;
		console_ready(s);
	} else if (type == 'p') {
		session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "unexpected password message in the query phase");
	} else if (s->admin_skip) {
		return;
	} else if (type == 'Q') {
		console_query(s, body, len);
	} else if (type == 'F') {
		console_error(s, SQLSTATE_FEATURE_NOT_SUPPORTED, extended, true);
	} else if (type == 'P' || type == 'B' || type == 'D' || type == 'E' || type == 'C') {
		console_error(s, SQLSTATE_FEATURE_NOT_SUPPORTED, extended, false);
		s->admin_skip = true;
	}
	/* Flush ('H') has nothing to flush; stray CopyData/CopyDone/CopyFail are ignored as by the server. */
}

/* Reads whole messages while the client's output has room. */
static void console_input(Session *s)
{
	struct evbuffer *in = stream_input(s->client);
	uint32_t max = s->cfg->max_packet_size < CONSOLE_MAX_MESSAGE ? s->cfg->max_packet_size : CONSOLE_MAX_MESSAGE;

	while (s->state == SESS_ADMIN && !s->admin_busy && !stream_output_full(s->client)) {
		uint8_t hdr[PG_HEADER_LEN], *msg;
		const char *why;
		PgHeader h;

		if (evbuffer_copyout(in, hdr, sizeof(hdr)) < (ssize_t)sizeof(hdr))
			break;
		if (pgproto_check_frontend_header(hdr, max, &h, &why) != PGP_FRAME_OK) {
			session_fail(s, SQLSTATE_PROTOCOL_VIOLATION, "%s (type 0x%02x, length %u)", why, h.type, h.len);
			return;
		}
		if (evbuffer_get_length(in) < (size_t)h.len + 1)
			break;
		msg = evbuffer_pullup(in, (ssize_t)h.len + 1);
		if (msg == NULL) {
			session_fail(s, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			return;
		}
		console_message(s, h.type, msg + PG_HEADER_LEN, h.len - 4);
		evbuffer_drain(in, (size_t)h.len + 1);
	}
	if (s->state != SESS_ADMIN)
		return;
	stream_flush(s->client);
	if (s->admin_busy)
		stream_enable_read(s->client, evbuffer_get_length(in) < CONSOLE_READ_AHEAD);
	else
		stream_enable_read(s->client, !stream_output_full(s->client));
}
