/* SPDX-License-Identifier: MIT */
/*
 * A non-blocking byte stream over one socket, plain or TLS, on a libevent
 * base: input and output evbuffers, immediate writes (a write is attempted
 * as soon as data is queued; the write event is armed only for what the
 * socket did not take), read pausing for backpressure, outgoing connects and
 * TLS handshakes in either role. bufferevents defer every write to the next
 * loop turn and ask the kernel for FIONREAD before each read; the proxy's
 * hot path cannot afford either.
 */
#ifndef PGVEIL_STREAM_H
#define PGVEIL_STREAM_H

#include <sys/socket.h>

#include "pgveil/common.h"

struct event_base;
struct evbuffer;
typedef struct ssl_ctx_st SSL_CTX;

typedef enum {
	STREAM_EV_READ,      /* new bytes in stream_input() */
	STREAM_EV_EOF,       /* the peer closed its side */
	STREAM_EV_ERROR,     /* I/O or TLS failure; see stream_error() */
	STREAM_EV_CONNECTED, /* outgoing connect completed */
	STREAM_EV_TLS_DONE,  /* TLS handshake completed */
	STREAM_EV_DRAINED,   /* output fell below the low-water mark after being above the high one */
} StreamEvent;

typedef void (*StreamCb)(Stream *s, StreamEvent ev, void *arg);

/*
 * Wraps a connected (or connecting) non-blocking socket. The stream owns
 * the fd and closes it on stream_free(). Returns NULL on allocation failure
 * (the fd is then left open for the caller).
 */
Stream *stream_new(struct event_base *base, int fd, StreamCb cb, void *arg) PGV_WARN_UNUSED;
/* Closes the socket and frees everything. Never call it from inside cb; defer. */
void stream_free(Stream *s);
/* Changes who receives events. */
void stream_set_cb(Stream *s, StreamCb cb, void *arg);

/*
 * Starts a non-blocking connect to addr. Returns false with the errno text in
 * stream_error() when it fails at once; otherwise STREAM_EV_CONNECTED or
 * STREAM_EV_ERROR follows.
 */
bool stream_connect(Stream *s, const struct sockaddr *addr, socklen_t addrlen) PGV_WARN_UNUSED;

/*
 * Starts a TLS handshake over the stream, as server (accept) or as client.
 * For a client, `verify_host` (may be NULL) is checked against the server
 * certificate when the context verifies peers. STREAM_EV_TLS_DONE or
 * STREAM_EV_ERROR follows. Returns false when TLS could not be set up.
 */
bool stream_start_tls(Stream *s, SSL_CTX *ctx, bool server, const char *verify_host) PGV_WARN_UNUSED;
bool stream_is_tls(const Stream *s);

/* Buffers owned by the stream. Read from input; append to output then call stream_flush(). */
struct evbuffer *stream_input(Stream *s);
struct evbuffer *stream_output(Stream *s);

/*
 * Writes as much of the output as the socket takes now and arms the write
 * event for the rest. Returns false on a write error (an error event is
 * also delivered on the next loop turn).
 */
bool stream_flush(Stream *s);

/* Starts or stops reading from the socket (backpressure, held statements). */
void stream_enable_read(Stream *s, bool on);
/* Output size above which stream_output_full() says true; DRAINED fires below half of it. */
void stream_set_high_water(Stream *s, size_t bytes);
bool stream_output_full(Stream *s);
size_t stream_output_len(Stream *s);

/* Stops all I/O and event delivery; the stream stays allocated until stream_free(). */
void stream_close(Stream *s);

/* The last error as text ("connection reset by peer", an OpenSSL reason). */
const char *stream_error(const Stream *s);
int stream_fd(const Stream *s);

#endif
