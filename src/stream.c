/* SPDX-License-Identifier: MIT */
/*
 * Socket streams: one read event, one write event and two evbuffers per
 * connection, with OpenSSL layered directly on the fd when TLS is on. Reads
 * go through a per-thread scratch buffer (no FIONREAD round trip); writes
 * are attempted immediately and only the remainder waits for EV_WRITE.
 * Errors are delivered through a deferred event so that a caller that is
 * itself inside a callback never sees its peer freed under it.
 */
#include "pgveil/stream.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pgveil/tls.h"

#define STREAM_SCRATCH (64 * 1024)
#define STREAM_MAX_READS_PER_WAKE 8
#define TLS_WRITE_CHUNK 16384

typedef enum { ST_OPEN, ST_CONNECTING, ST_HANDSHAKE, ST_CLOSED } StreamState;

struct Stream {
	int fd;                       /* owned socket */
	struct event_base *base;      /* the worker's loop */
	struct event *rev;            /* EV_READ | EV_PERSIST */
	struct event *wev;            /* EV_WRITE | EV_PERSIST */
	struct event *deferred;       /* delivers EOF/ERROR on the next loop turn */
	struct evbuffer *in;          /* bytes received, not yet consumed */
	struct evbuffer *out;         /* bytes queued, not yet written */
	SSL *ssl;                     /* NULL for plain streams */
	StreamCb cb;                  /* event receiver */
	void *arg;                    /* its argument */
	StreamState state;            /* what the socket is doing */
	StreamEvent pending_ev;       /* for `deferred` */
	bool read_on;                 /* the owner wants input */
	bool read_armed;              /* rev is added */
	bool write_armed;             /* wev is added */
	bool hs_wants_write;          /* handshake blocked on writability */
	bool tls_read_wants_write;    /* SSL_read returned WANT_WRITE */
	bool tls_write_wants_read;    /* SSL_write returned WANT_READ */
	bool above_hwm;               /* output passed the high-water mark */
	bool eof;                     /* the peer closed its sending side */
	size_t hwm;                   /* high-water mark, 0 = none */
	char err[192];                /* last error text */
};

static __thread uint8_t scratch[STREAM_SCRATCH];

static void read_cb(evutil_socket_t fd, short what, void *arg);
static void write_cb(evutil_socket_t fd, short what, void *arg);
static void deferred_cb(evutil_socket_t fd, short what, void *arg);

Stream *stream_new(struct event_base *base, int fd, StreamCb cb, void *arg)
{
	Stream *s = calloc(1, sizeof(Stream));

	if (s == NULL)
		return NULL;
	s->fd = fd;
	s->base = base;
	s->cb = cb;
	s->arg = arg;
	s->in = evbuffer_new();
	s->out = evbuffer_new();
	s->rev = event_new(base, fd, EV_READ | EV_PERSIST, read_cb, s);
	s->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, write_cb, s);
	s->deferred = event_new(base, -1, 0, deferred_cb, s);
	if (s->in == NULL || s->out == NULL || s->rev == NULL || s->wev == NULL || s->deferred == NULL) {
		s->fd = -1;
		stream_free(s);
		return NULL;
	}
	evutil_make_socket_nonblocking(fd);
	return s;
}

void stream_free(Stream *s)
{
	if (s == NULL)
		return;
	if (s->rev)
		event_free(s->rev);
	if (s->wev)
		event_free(s->wev);
	if (s->deferred)
		event_free(s->deferred);
	if (s->ssl)
		SSL_free(s->ssl);
	if (s->in)
		evbuffer_free(s->in);
	if (s->out)
		evbuffer_free(s->out);
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

void stream_set_cb(Stream *s, StreamCb cb, void *arg)
{
	s->cb = cb;
	s->arg = arg;
}

struct evbuffer *stream_input(Stream *s) { return s->in; }
struct evbuffer *stream_output(Stream *s) { return s->out; }
const char *stream_error(const Stream *s) { return s->err; }
int stream_fd(const Stream *s) { return s->fd; }
bool stream_is_tls(const Stream *s) { return s->ssl != NULL; }
size_t stream_output_len(Stream *s) { return evbuffer_get_length(s->out); }

void stream_set_high_water(Stream *s, size_t bytes)
{
	s->hwm = bytes;
}

bool stream_output_full(Stream *s)
{
	if (s->hwm == 0 || evbuffer_get_length(s->out) < s->hwm)
		return false;
	s->above_hwm = true;
	return true;
}

/* Adds or removes the two events so they match what the stream waits for. */
static void update_events(Stream *s)
{
	bool want_read = false, want_write = false;

	switch (s->state) {
	case ST_OPEN:
		want_read = s->read_on || s->tls_write_wants_read;
		want_write = evbuffer_get_length(s->out) > 0 || s->tls_read_wants_write;
		break;
	case ST_CONNECTING:
		want_write = true;
		break;
	case ST_HANDSHAKE:
		want_read = !s->hs_wants_write;
		want_write = s->hs_wants_write;
		break;
	case ST_CLOSED:
		break;
	}
	if (want_read != s->read_armed) {
		if (want_read)
			event_add(s->rev, NULL);
		else
			event_del(s->rev);
		s->read_armed = want_read;
	}
	if (want_write != s->write_armed) {
		if (want_write)
			event_add(s->wev, NULL);
		else
			event_del(s->wev);
		s->write_armed = want_write;
	}
}

/* Records an error (or EOF) and delivers it on the next loop turn. */
static void fail_later(Stream *s, StreamEvent ev, const char *what)
{
	if (s->state == ST_CLOSED)
		return;
	if (what != NULL)
		snprintf(s->err, sizeof(s->err), "%s", what);
	s->state = ST_CLOSED;
	s->pending_ev = ev;
	update_events(s);
	event_active(s->deferred, 0, 0);
}

/* End of input: reading stops, writing goes on (the peer may have half-closed). */
static void eof_later(Stream *s)
{
	snprintf(s->err, sizeof(s->err), "connection closed by peer");
	s->eof = true;
	s->read_on = false;
	s->tls_write_wants_read = false;
	update_events(s);
	s->pending_ev = STREAM_EV_EOF;
	event_active(s->deferred, 0, 0);
}

static void deferred_cb(evutil_socket_t fd, short what, void *arg)
{
	Stream *s = arg;

	s->cb(s, s->pending_ev, s->arg);
}

static void set_tls_error(Stream *s, const char *prefix)
{
	unsigned long e = ERR_get_error();
	char buf[160];

	if (e != 0)
		ERR_error_string_n(e, buf, sizeof(buf));
	else
		snprintf(buf, sizeof(buf), "%s", errno ? strerror(errno) : "unexpected end of stream");
	ERR_clear_error();
	snprintf(s->err, sizeof(s->err), "%s: %s", prefix, buf);
}

void stream_close(Stream *s)
{
	s->state = ST_CLOSED;
	update_events(s);
	event_del(s->deferred);
}

void stream_enable_read(Stream *s, bool on)
{
	if (s->read_on == on || (on && s->eof))
		return;
	s->read_on = on;
	update_events(s);
	/* TLS may hold decrypted bytes the socket will not signal again. */
	if (on && s->ssl != NULL && s->state == ST_OPEN && SSL_has_pending(s->ssl))
		event_active(s->rev, EV_READ, 0);
}

bool stream_connect(Stream *s, const struct sockaddr *addr, socklen_t addrlen)
{
	if (connect(s->fd, addr, addrlen) == 0) {
		s->state = ST_OPEN;
		s->pending_ev = STREAM_EV_CONNECTED;
		event_active(s->deferred, 0, 0);
		return true;
	}
	if (errno != EINPROGRESS) {
		snprintf(s->err, sizeof(s->err), "%s", strerror(errno));
		return false;
	}
	s->state = ST_CONNECTING;
	update_events(s);
	return true;
}

static void connect_done(Stream *s)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0) {
		fail_later(s, STREAM_EV_ERROR, strerror(err));
		return;
	}
	if (s->fd >= 0) {
		int one = 1;

		setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	s->state = ST_OPEN;
	update_events(s);
	s->cb(s, STREAM_EV_CONNECTED, s->arg);
}

/* ---- TLS handshake ---------------------------------------------------------- */

static void handshake_step(Stream *s)
{
	int rc;

	ERR_clear_error();
	rc = SSL_do_handshake(s->ssl);
	if (rc == 1) {
		s->state = ST_OPEN;
		s->hs_wants_write = false;
		update_events(s);
		/* Records that came with the handshake's last flight sit inside OpenSSL: no socket event will tell. */
		if (SSL_has_pending(s->ssl))
			event_active(s->rev, EV_READ, 0);
		s->cb(s, STREAM_EV_TLS_DONE, s->arg);
		return;
	}
	switch (SSL_get_error(s->ssl, rc)) {
	case SSL_ERROR_WANT_READ:
		s->hs_wants_write = false;
		update_events(s);
		return;
	case SSL_ERROR_WANT_WRITE:
		s->hs_wants_write = true;
		update_events(s);
		return;
	default: {
		long vr = SSL_get_verify_result(s->ssl);

		if (vr != X509_V_OK) {
			snprintf(s->err, sizeof(s->err), "TLS handshake failed: certificate verify failed: %s",
				 X509_verify_cert_error_string(vr));
			ERR_clear_error();
		} else {
			set_tls_error(s, "TLS handshake failed");
		}
		fail_later(s, STREAM_EV_ERROR, NULL);
	}
	}
}

/* Client side: SNI for names, and the name or IP address the certificate must carry. */
static bool set_verify_host(Stream *s, const char *host)
{
	if (!tls_set_peer_name(s->ssl, host)) {
		set_tls_error(s, "TLS setup failed");
		return false;
	}
	return true;
}

bool stream_start_tls(Stream *s, SSL_CTX *ctx, bool server, const char *verify_host)
{
	s->ssl = SSL_new(ctx);
	if (s->ssl == NULL || SSL_set_fd(s->ssl, s->fd) != 1) {
		set_tls_error(s, "TLS setup failed");
		return false;
	}
	SSL_set_mode(s->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (server) {
		SSL_set_accept_state(s->ssl);
	} else {
		SSL_set_connect_state(s->ssl);
		if (verify_host != NULL && !set_verify_host(s, verify_host))
			return false;
	}
	s->state = ST_HANDSHAKE;
	s->hs_wants_write = !server;
	handshake_step(s);
	return true;
}

/* ---- reading ------------------------------------------------------------------ */

/* One read into scratch: >0 bytes, 0 would block, -1 EOF, -2 error. */
static ssize_t read_once(Stream *s)
{
	ssize_t n;

	if (s->ssl == NULL) {
		do
			n = recv(s->fd, scratch, sizeof(scratch), 0);
		while (n < 0 && errno == EINTR);
		if (n > 0)
			return n;
		if (n == 0)
			return -1;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0;
		snprintf(s->err, sizeof(s->err), "%s", strerror(errno));
		return -2;
	}
	ERR_clear_error();
	s->tls_read_wants_write = false;
	n = SSL_read(s->ssl, scratch, sizeof(scratch));
	if (n > 0)
		return n;
	switch (SSL_get_error(s->ssl, (int)n)) {
	case SSL_ERROR_WANT_READ:
		return 0;
	case SSL_ERROR_WANT_WRITE:
		s->tls_read_wants_write = true;
		return 0;
	case SSL_ERROR_ZERO_RETURN:
		return -1;
	case SSL_ERROR_SYSCALL:
		if (ERR_peek_error() == 0 && (errno == 0 || errno == ECONNRESET))
			return -1;
		/* fall through */
	default:
		set_tls_error(s, "TLS read failed");
		return -2;
	}
}

static void do_read(Stream *s)
{
	bool got = false;
	ssize_t n = 0;

	for (int i = 0; i < STREAM_MAX_READS_PER_WAKE && s->read_on && s->state == ST_OPEN; i++) {
		n = read_once(s);
		if (n <= 0)
			break;
		if (evbuffer_add(s->in, scratch, (size_t)n) != 0) {
			n = -2;
			snprintf(s->err, sizeof(s->err), "out of memory");
			break;
		}
		got = true;
		if (s->ssl == NULL && (size_t)n < sizeof(scratch))
			break;
	}
	if (n > 0 && s->ssl != NULL && SSL_has_pending(s->ssl))
		event_active(s->rev, EV_READ, 0);
	update_events(s);
	if (got)
		s->cb(s, STREAM_EV_READ, s->arg);
	if (n == -1)
		eof_later(s);
	else if (n == -2)
		fail_later(s, STREAM_EV_ERROR, NULL);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	Stream *s = arg;

	switch (s->state) {
	case ST_HANDSHAKE:
		handshake_step(s);
		return;
	case ST_OPEN:
		if (s->tls_write_wants_read) {
			s->tls_write_wants_read = false;
			stream_flush(s);
		}
		if (s->read_on)
			do_read(s);
		else
			update_events(s);
		return;
	default:
		return;
	}
}

/* ---- writing ------------------------------------------------------------------- */

/* Writes once: >=0 bytes written (0 = would block), -1 error. */
static ssize_t write_once(Stream *s)
{
	size_t len = evbuffer_get_length(s->out);
	ssize_t n;
	unsigned char *p;

	if (s->ssl == NULL) {
		n = evbuffer_write(s->out, s->fd);
		if (n >= 0)
			return n;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return 0;
		snprintf(s->err, sizeof(s->err), "%s", strerror(errno));
		return -1;
	}
	if (len > TLS_WRITE_CHUNK)
		len = TLS_WRITE_CHUNK;
	p = evbuffer_pullup(s->out, (ssize_t)len);
	if (p == NULL) {
		snprintf(s->err, sizeof(s->err), "out of memory");
		return -1;
	}
	ERR_clear_error();
	n = SSL_write(s->ssl, p, (int)len);
	if (n > 0) {
		evbuffer_drain(s->out, (size_t)n);
		return n;
	}
	switch (SSL_get_error(s->ssl, (int)n)) {
	case SSL_ERROR_WANT_WRITE:
		return 0;
	case SSL_ERROR_WANT_READ:
		s->tls_write_wants_read = true;
		return 0;
	default:
		set_tls_error(s, "TLS write failed");
		return -1;
	}
}

bool stream_flush(Stream *s)
{
	if (s->state != ST_OPEN)
		return s->state != ST_CLOSED;
	while (evbuffer_get_length(s->out) > 0) {
		ssize_t n = write_once(s);

		if (n < 0) {
			fail_later(s, STREAM_EV_ERROR, NULL);
			return false;
		}
		if (n == 0)
			break;
	}
	update_events(s);
	if (s->above_hwm && evbuffer_get_length(s->out) <= s->hwm / 2) {
		s->above_hwm = false;
		s->cb(s, STREAM_EV_DRAINED, s->arg);
	}
	return true;
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
	Stream *s = arg;

	switch (s->state) {
	case ST_CONNECTING:
		connect_done(s);
		return;
	case ST_HANDSHAKE:
		handshake_step(s);
		return;
	case ST_OPEN:
		if (s->tls_read_wants_write) {
			s->tls_read_wants_write = false;
			do_read(s);
		}
		stream_flush(s);
		return;
	default:
		return;
	}
}
