/* SPDX-License-Identifier: MIT */
/*
 * Server connections. A Backend walks connect → (SSLRequest → TLS) →
 * StartupMessage → authentication → ReadyForQuery, then hands its stream
 * to the session. It owns the credentials exchange: the agent never sees a
 * password, and failures reach the client as short messages while the
 * precise reason goes to the log.
 */
#include "pgveil/backend.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pgveil/log.h"
#include "pgveil/pgauth.h"
#include "pgveil/stream.h"

/* ParameterStatus and Notice bytes a server may send while pgveil logs in (replayed to the client). */
#define BACKEND_MAX_STARTUP_BYTES (64 * 1024)

typedef enum {
	BE_CONNECTING,   /* TCP/Unix connect in progress */
	BE_SSL_ANSWER,   /* SSLRequest sent, waiting for 'S' or 'N' */
	BE_TLS,          /* TLS handshake */
	BE_LOGIN,        /* StartupMessage sent: authentication and parameters */
	BE_READY,        /* first ReadyForQuery seen; stream belongs to the session */
	BE_FAILED,       /* fail callback delivered */
} BackendState;

struct Backend {
	Stream *stream;             /* the server socket */
	struct event_base *base;    /* worker loop */
	struct event *timer;        /* connect/login timeout */
	const DbEntry *db;          /* entry (owned by the session's Config) */
	BackendAddr addr;           /* resolved address */
	struct evdns_getaddrinfo_request *dns_req; /* pending name lookup */
	BackendState state;         /* see above */
	ScramClient *scram;         /* during SCRAM */
	bool scram_done;            /* the server proved it knows the password (SASL final verified) */
	size_t startup_bytes;       /* ParameterStatus/Notice bytes kept during login */
	uint32_t pid, key;          /* server BackendKeyData */
	PgBuf startup_msgs;         /* ParameterStatus/Notice messages from login */
	PgBuf params;               /* the StartupMessage to send */
	BackendReadyCb ready;       /* success callback */
	BackendFailCb fail;         /* failure callback */
	void *arg;                  /* their argument */
	char ctx[128];              /* log context */
};

static void backend_stream_cb(Stream *s, StreamEvent ev, void *arg);

static void be_fail(Backend *be, const char *sqlstate, const char *client_msg, const char *log_detail)
{
	if (be->state == BE_FAILED || be->state == BE_READY)
		return;
	be->state = BE_FAILED;
	log_write(LL_WARN, be->ctx, "server %s (%s): %s", be->db->name, be->addr.display, log_detail);
	event_del(be->timer);
	if (be->dns_req != NULL) {
		evdns_getaddrinfo_cancel(be->dns_req);
		be->dns_req = NULL;
	}
	if (be->stream != NULL)
		stream_close(be->stream);
	be->fail(be, sqlstate, client_msg, be->arg);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	Backend *be = arg;

	be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not connect to the server: timeout",
		"timed out connecting or logging in");
}

static bool build_startup(Backend *be, const PgStartupParam *params, int n)
{
	PgBuf *b = &be->params;

	pgproto_buf_init(b);
	pgproto_begin(b, 0);
	pgproto_put_int32(b, (int32_t)PG_PROTOCOL_3_0);
	pgproto_put_string(b, "user");
	pgproto_put_string(b, be->db->user);
	pgproto_put_string(b, "database");
	pgproto_put_string(b, be->db->dbname);
	for (int i = 0; i < n; i++) {
		pgproto_put_string(b, params[i].name);
		pgproto_put_string(b, params[i].value);
	}
	pgproto_put_byte(b, 0);
	pgproto_end(b);
	return pgproto_buf_ok(b);
}

/* Opens the socket and starts connecting to be->addr. */
static bool start_connect(Backend *be, const char **why)
{
	int fd = socket(be->addr.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		*why = "could not create a socket";
		return false;
	}
	be->stream = stream_new(be->base, fd, backend_stream_cb, be);
	if (be->stream == NULL) {
		close(fd);
		*why = "out of memory";
		return false;
	}
	if (!stream_connect(be->stream, (const struct sockaddr *)&be->addr.sa, be->addr.len)) {
		log_write(LL_WARN, be->ctx, "server %s (%s): connect: %s", be->db->name, be->addr.display,
			  stream_error(be->stream));
		*why = "could not connect to the server";
		return false;
	}
	return true;
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
	Backend *be = arg;
	struct evutil_addrinfo *pick;
	const char *why;
	char detail[256];

	be->dns_req = NULL;
	if (result == EVUTIL_EAI_CANCEL)
		return;
	if (result != 0 || res == NULL) {
		snprintf(detail, sizeof(detail), "cannot resolve host \"%s\": %s", be->db->host,
			 evutil_gai_strerror(result));
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not connect to the server", detail);
		return;
	}
	/* Prefer IPv4: "localhost" often lists ::1 first while servers listen on 127.0.0.1. */
	for (pick = res; pick->ai_next != NULL && pick->ai_family != AF_INET; pick = pick->ai_next)
		;
	if (pick->ai_family != AF_INET)
		pick = res;
	memcpy(&be->addr.sa, pick->ai_addr, pick->ai_addrlen);
	be->addr.len = (socklen_t)pick->ai_addrlen;
	evutil_freeaddrinfo(res);
	if (!start_connect(be, &why))
		be_fail(be, SQLSTATE_CANNOT_CONNECT, why, "connect failed");
}

Backend *backend_connect(struct event_base *base, struct evdns_base *dns, const DbEntry *db, uint64_t timeout_ms,
			 const PgStartupParam *params, int n_params, const char *ctx,
			 BackendReadyCb ready, BackendFailCb fail, void *arg, const char **why)
{
	Backend *be = calloc(1, sizeof(Backend));
	struct timeval tv;

	*why = "out of memory";
	if (be == NULL)
		return NULL;
	be->base = base;
	be->db = db;
	be->addr = db->addr;
	be->ready = ready;
	be->fail = fail;
	be->arg = arg;
	snprintf(be->ctx, sizeof(be->ctx), "%s", ctx);
	pgproto_buf_init(&be->startup_msgs);
	be->timer = evtimer_new(base, timeout_cb, be);
	if (!build_startup(be, params, n_params) || be->timer == NULL)
		goto fail;
	if (be->addr.len == 0) {
		struct evutil_addrinfo hints = { 0 };
		char port[16];

		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		snprintf(port, sizeof(port), "%d", db->port);
		be->dns_req = evdns_getaddrinfo(dns, db->host, port, &hints, dns_cb, be);
		/* A lookup answered at once (hosts file, cache) has already run dns_cb. */
	} else if (!start_connect(be, why)) {
		goto fail;
	}
	tv.tv_sec = (time_t)(timeout_ms / 1000);
	tv.tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000;
	evtimer_add(be->timer, &tv);
	return be;
fail:
	backend_free(be);
	return NULL;
}

void backend_free(Backend *be)
{
	if (be == NULL)
		return;
	if (be->dns_req != NULL)
		evdns_getaddrinfo_cancel(be->dns_req);
	if (be->timer)
		event_free(be->timer);
	stream_free(be->stream);
	pgauth_scram_free(be->scram);
	pgproto_buf_free(&be->startup_msgs);
	pgproto_buf_free(&be->params);
	free(be);
}

Stream *backend_stream(Backend *be) { return be->stream; }

const uint8_t *backend_startup_messages(Backend *be, size_t *len)
{
	*len = be->startup_msgs.len;
	return be->startup_msgs.data;
}

const BackendAddr *backend_get_addr(const Backend *be)
{
	return &be->addr;
}

void backend_get_key(const Backend *be, uint32_t *pid, uint32_t *key)
{
	*pid = be->pid;
	*key = be->key;
}

/* Queues bytes toward the server and writes them. */
static void be_send(Backend *be, const PgBuf *b)
{
	evbuffer_add(stream_output(be->stream), b->data, b->len);
	stream_flush(be->stream);
}

static void send_startup(Backend *be)
{
	be->state = BE_LOGIN;
	be_send(be, &be->params);
}

static void on_connected(Backend *be)
{
	PgBuf b;

	stream_enable_read(be->stream, true);
	if (be->db->tls_ctx == NULL) {
		send_startup(be);
		return;
	}
	pgproto_buf_init(&b);
	pgproto_build_ssl_request(&b);
	be->state = BE_SSL_ANSWER;
	be_send(be, &b);
	pgproto_buf_free(&b);
}

static void on_ssl_answer(Backend *be)
{
	struct evbuffer *in = stream_input(be->stream);
	uint8_t c;

	if (evbuffer_remove(in, &c, 1) != 1)
		return;
	if (c == 'S') {
		const char *host = be->db->sslmode == SSLMODE_VERIFY_FULL ? be->db->host : NULL;

		if (evbuffer_get_length(in) > 0) {
			be_fail(be, SQLSTATE_CONNECTION_FAILURE, "could not connect to the server",
				"received unencrypted data after SSL response");
			return;
		}
		be->state = BE_TLS;
		if (!stream_start_tls(be->stream, be->db->tls_ctx, false, host))
			be_fail(be, SQLSTATE_CONNECTION_FAILURE, "could not connect to the server",
				stream_error(be->stream));
		return;
	}
	if (c == 'N' && be->db->sslmode <= SSLMODE_PREFER) {
		send_startup(be);
		return;
	}
	be_fail(be, SQLSTATE_CONNECTION_FAILURE, "could not connect to the server",
		c == 'N' ? "server does not support TLS but sslmode requires it" : "invalid answer to SSLRequest");
}

/* ---- authentication ----------------------------------------------------------- */

static void send_password_msg(Backend *be, const char *password)
{
	PgBuf b;

	pgproto_buf_init(&b);
	pgproto_build_password(&b, password);
	be_send(be, &b);
	pgproto_buf_free(&b);
}

static bool sasl_offers_scram(PgReader *r)
{
	const char *mech;

	while (pgproto_get_string(r, &mech) && mech[0] != '\0')
		if (strcmp(mech, "SCRAM-SHA-256") == 0)
			return true;
	return false;
}

static void auth_sasl_start(Backend *be, PgReader *r)
{
	const char *first;
	PgBuf b;

	if (be->scram != NULL) {
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server", "unexpected second SASL request");
		return;
	}
	if (!sasl_offers_scram(r)) {
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server",
			"server offers no SASL mechanism pgveil supports (SCRAM-SHA-256)");
		return;
	}
	be->scram = pgauth_scram_new(be->db->password);
	if (be->scram == NULL) {
		be_fail(be, SQLSTATE_OUT_OF_MEMORY, "out of memory", "out of memory");
		return;
	}
	first = pgauth_scram_client_first(be->scram);
	pgproto_buf_init(&b);
	pgproto_build_sasl_initial(&b, "SCRAM-SHA-256", first, strlen(first));
	be_send(be, &b);
	pgproto_buf_free(&b);
}

static void auth_sasl_continue(Backend *be, PgReader *r)
{
	const char *final, *why = "unexpected SASL message";
	size_t n = pgproto_remaining(r);
	const uint8_t *data;
	PgBuf b;

	if (be->scram == NULL || !pgproto_get_bytes(r, n, &data) ||
	    (final = pgauth_scram_client_final(be->scram, data, n, &why)) == NULL) {
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server", why);
		return;
	}
	pgproto_buf_init(&b);
	pgproto_build_sasl_response(&b, final, strlen(final));
	be_send(be, &b);
	pgproto_buf_free(&b);
}

static void auth_sasl_final(Backend *be, PgReader *r)
{
	const char *why = "unexpected SASL message";
	size_t n = pgproto_remaining(r);
	const uint8_t *data;

	if (be->scram == NULL || !pgproto_get_bytes(r, n, &data) ||
	    !pgauth_scram_verify_server(be->scram, data, n, &why))
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server", why);
	else
		be->scram_done = true;
}

static void on_auth_request(Backend *be, PgReader *r)
{
	int32_t code;
	const uint8_t *salt;
	char md5[36];

	if (!pgproto_get_int32(r, &code)) {
		be_fail(be, SQLSTATE_PROTOCOL_VIOLATION, "invalid message from the server", "short auth request");
		return;
	}
	if (code != PG_AUTH_OK && code != PG_AUTH_SASL_CONTINUE && code != PG_AUTH_SASL_FINAL &&
	    be->db->password == NULL) {
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server",
			"server asks for a password but the [databases] entry has none");
		return;
	}
	switch (code) {
	case PG_AUTH_OK:
		/* Once SCRAM started, only a server that proved it knows the password may let us in. */
		if (be->scram != NULL && !be->scram_done)
			be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server",
				"server ended SCRAM authentication without proving it knows the password");
		return;
	case PG_AUTH_CLEARTEXT:
		send_password_msg(be, be->db->password);
		return;
	case PG_AUTH_MD5:
		if (!pgproto_get_bytes(r, 4, &salt))
			break;
		pgauth_md5_response(be->db->user, be->db->password, salt, md5);
		send_password_msg(be, md5);
		return;
	case PG_AUTH_SASL:
		auth_sasl_start(be, r);
		return;
	case PG_AUTH_SASL_CONTINUE:
		auth_sasl_continue(be, r);
		return;
	case PG_AUTH_SASL_FINAL:
		auth_sasl_final(be, r);
		return;
	default:
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server",
			"server asks for an authentication method pgveil does not support");
		return;
	}
	be_fail(be, SQLSTATE_PROTOCOL_VIOLATION, "invalid message from the server", "malformed auth request");
}

/* A server ErrorResponse during login: pass safe states through, hide login failures. */
static void on_login_error(Backend *be, const uint8_t *body, size_t len)
{
	PgErrorFields f;
	char detail[512];

	if (!pgproto_parse_error(body, len, &f)) {
		be_fail(be, SQLSTATE_PROTOCOL_VIOLATION, "invalid message from the server", "malformed ErrorResponse");
		return;
	}
	snprintf(detail, sizeof(detail), "server refused login: %s (SQLSTATE %s)", f.message, f.sqlstate);
	if (strncmp(f.sqlstate, "28", 2) == 0 || strcmp(f.sqlstate, "3D000") == 0)
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server", detail);
	else
		be_fail(be, f.sqlstate, f.message, detail);
}

/* Handles one whole message during login. */
static void on_login_message(Backend *be, uint8_t type, const uint8_t *body, size_t len)
{
	PgReader r;
	pgproto_reader_init(&r, body, len);
	switch (type) {
	case 'R':
		on_auth_request(be, &r);
		return;
	case 'E':
		on_login_error(be, body, len);
		return;
	case 'S':
	case 'N':
		be->startup_bytes += len;
		if (be->startup_bytes > BACKEND_MAX_STARTUP_BYTES) {
			be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not log in to the server",
				"server sent more than 64 KB of settings and notices while logging in");
			return;
		}
		pgproto_begin(&be->startup_msgs, type);
		pgproto_put_bytes(&be->startup_msgs, body, len);
		pgproto_end(&be->startup_msgs);
		return;
	case 'K':
		if (pgproto_get_uint32(&r, &be->pid) && pgproto_get_uint32(&r, &be->key))
			return;
		break;
	case 'v':
		return; /* NegotiateProtocolVersion: we asked for plain 3.0 */
	case 'Z':
		if (len == 1) {
			be->state = BE_READY;
			event_del(be->timer);
			pgauth_scram_free(be->scram);
			be->scram = NULL;
			pgproto_buf_free(&be->params);
			be->ready(be, be->arg);
			pgproto_buf_free(&be->startup_msgs); /* the session has copied them */
			return;
		}
		break;
	default:
		break;
	}
	be_fail(be, SQLSTATE_PROTOCOL_VIOLATION, "invalid message from the server", "unexpected message during login");
}

static void on_login_input(Backend *be)
{
	struct evbuffer *in = stream_input(be->stream);

	while (be->state == BE_LOGIN) {
		uint8_t hdr[PG_HEADER_LEN];
		PgHeader h;
		const char *why;
		uint8_t *msg;

		if (evbuffer_copyout(in, hdr, sizeof(hdr)) < (ssize_t)sizeof(hdr))
			return;
		if (pgproto_check_backend_header(hdr, 1u << 20, &h, &why) != PGP_FRAME_OK) {
			be_fail(be, SQLSTATE_PROTOCOL_VIOLATION, "invalid message from the server", why);
			return;
		}
		if (evbuffer_get_length(in) < (size_t)h.len + 1)
			return;
		msg = evbuffer_pullup(in, (ssize_t)h.len + 1);
		if (msg == NULL) {
			be_fail(be, SQLSTATE_OUT_OF_MEMORY, "out of memory", "out of memory");
			return;
		}
		on_login_message(be, h.type, msg + PG_HEADER_LEN, h.len - 4);
		evbuffer_drain(in, (size_t)h.len + 1);
	}
}

static void backend_stream_cb(Stream *s, StreamEvent ev, void *arg)
{
	Backend *be = arg;

	switch (ev) {
	case STREAM_EV_CONNECTED:
		on_connected(be);
		return;
	case STREAM_EV_TLS_DONE:
		send_startup(be);
		return;
	case STREAM_EV_READ:
		if (be->state == BE_SSL_ANSWER)
			on_ssl_answer(be);
		if (be->state == BE_LOGIN)
			on_login_input(be);
		return;
	case STREAM_EV_DRAINED:
		return;
	case STREAM_EV_EOF:
	case STREAM_EV_ERROR:
		be_fail(be, SQLSTATE_CANNOT_CONNECT, "could not connect to the server", stream_error(s));
		return;
	}
}

/* ---- cancel ------------------------------------------------------------------------ */

/* One outgoing CancelRequest connection. */
typedef struct CancelJob {
	Stream *stream;         /* to the server */
	struct event *timer;    /* gives up after a few seconds */
	struct event *free_ev;  /* deferred free */
	PgBuf pkt;              /* the 16-byte request */
	struct CancelJob *next, *prev; /* this thread's jobs */
} CancelJob;

/* Jobs of this worker thread, so that a worker that stops frees what is still in flight. */
static __thread CancelJob *cancel_jobs;

static void cancel_job_free_cb(evutil_socket_t fd, short what, void *arg)
{
	CancelJob *job = arg;

	if (job->prev != NULL)
		job->prev->next = job->next;
	else
		cancel_jobs = job->next;
	if (job->next != NULL)
		job->next->prev = job->prev;
	stream_free(job->stream);
	if (job->timer != NULL)
		event_free(job->timer);
	if (job->free_ev != NULL)
		event_free(job->free_ev);
	pgproto_buf_free(&job->pkt);
	free(job);
}

static void cancel_job_done(CancelJob *job)
{
	stream_close(job->stream);
	event_del(job->timer);
	event_active(job->free_ev, 0, 0);
}

static void cancel_stream_cb(Stream *s, StreamEvent ev, void *arg)
{
	CancelJob *job = arg;

	switch (ev) {
	case STREAM_EV_CONNECTED:
		evbuffer_add(stream_output(s), job->pkt.data, job->pkt.len);
		stream_flush(s);
		stream_enable_read(s, true); /* the server closes the socket when done */
		return;
	case STREAM_EV_READ:
		evbuffer_drain(stream_input(s), evbuffer_get_length(stream_input(s)));
		return;
	case STREAM_EV_EOF:
	case STREAM_EV_ERROR:
		cancel_job_done(job);
		return;
	default:
		return;
	}
}

static void cancel_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	cancel_job_done(arg);
}

void backend_send_cancel(struct event_base *base, const BackendAddr *addr, uint32_t pid, uint32_t key)
{
	CancelJob *job = calloc(1, sizeof(CancelJob));
	struct timeval tv = { 5, 0 };
	int fd;

	if (job == NULL)
		return;
	job->next = cancel_jobs;
	if (cancel_jobs != NULL)
		cancel_jobs->prev = job;
	cancel_jobs = job;
	pgproto_buf_init(&job->pkt);
	pgproto_build_cancel(&job->pkt, pid, key);
	fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	job->timer = evtimer_new(base, cancel_timeout_cb, job);
	job->free_ev = event_new(base, -1, 0, cancel_job_free_cb, job);
	job->stream = fd >= 0 ? stream_new(base, fd, cancel_stream_cb, job) : NULL;
	if (job->stream == NULL || job->timer == NULL || job->free_ev == NULL ||
	    !stream_connect(job->stream, (const struct sockaddr *)&addr->sa, addr->len)) {
		log_warn("cancel request to %s failed: %s", addr->display,
			 job->stream ? stream_error(job->stream) : "cannot create socket");
		if (job->stream == NULL && fd >= 0)
			close(fd);
		cancel_job_free_cb(-1, 0, job);
		return;
	}
	evtimer_add(job->timer, &tv);
}

void backend_free_cancel_jobs(void)
{
	while (cancel_jobs != NULL)
		cancel_job_free_cb(-1, 0, cancel_jobs);
}
