/* SPDX-License-Identifier: MIT */
/*
 * OpenSSL contexts for both sides: the server context that terminates
 * clients' TLS (tls_cert_file/tls_key_file) and one client context per
 * [databases] entry that follows its sslmode and sslrootcert. Contexts are
 * built when a Config is loaded and live as long as it does.
 */
#ifndef PGVEIL_TLS_H
#define PGVEIL_TLS_H

#include "pgveil/common.h"
#include "pgveil/config.h"

typedef struct ssl_ctx_st SSL_CTX;

/* Process-wide OpenSSL setup; call once before threads start. */
void tls_init(void);

/*
 * Builds every context `cfg` needs and stores it in cfg (tls_server_ctx,
 * each DbEntry's tls_ctx). Returns false with a message in err (size errlen)
 * naming the file and the OpenSSL reason.
 */
bool tls_config_build(Config *cfg, char *err, size_t errlen) PGV_WARN_UNUSED;
/* Frees a context built here (NULL is fine). */
void tls_ctx_free(void *ctx);

struct ssl_st;
/*
 * Sets the name a client connection checks the server's certificate
 * against: an IP address as such, a host name also sent as SNI. False when
 * OpenSSL refuses it.
 */
bool tls_set_peer_name(struct ssl_st *ssl, const char *host);

#endif
