/* SPDX-License-Identifier: MIT */
/*
 * TLS contexts. Toward clients: TLS 1.2 or newer with the configured
 * certificate and key. Toward servers: sslmode decides whether the
 * certificate chain (verify-ca) and also the host name (verify-full, checked
 * per connection in stream_start_tls) are verified against sslrootcert.
 */
#include "pgveil/tls.h"

#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>

void tls_init(void)
{
	OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
}

static void tls_errmsg(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char reason[160] = "unknown error";

	if (e != 0)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	snprintf(err, errlen, "%s %s: %s", what, file ? file : "", reason);
}

static SSL_CTX *server_ctx_new(const char *cert, const char *key, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL) {
		tls_errmsg(err, errlen, "cannot create TLS context", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle sessions keep no record buffers */
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		tls_errmsg(err, errlen, "cannot load tls_cert_file", cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		tls_errmsg(err, errlen, "cannot load tls_key_file", key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_errmsg(err, errlen, "tls_key_file does not match tls_cert_file", key);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static SSL_CTX *client_ctx_new(const DbEntry *db, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		tls_errmsg(err, errlen, "cannot create TLS context", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (db->sslmode >= SSLMODE_VERIFY_CA) {
		if (SSL_CTX_load_verify_locations(ctx, db->sslrootcert, NULL) != 1) {
			tls_errmsg(err, errlen, "cannot load sslrootcert", db->sslrootcert);
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
}

bool tls_config_build(Config *cfg, char *err, size_t errlen)
{
	if (cfg->tls_cert_file != NULL) {
		cfg->tls_server_ctx = server_ctx_new(cfg->tls_cert_file, cfg->tls_key_file, err, errlen);
		if (cfg->tls_server_ctx == NULL)
			return false;
	}
	for (int i = 0; i < cfg->n_databases; i++) {
		DbEntry *db = &cfg->databases[i];

		if (db->sslmode == SSLMODE_DISABLE || db->host[0] == '/')
			continue;
		db->tls_ctx = client_ctx_new(db, err, errlen);
		if (db->tls_ctx == NULL)
			return false;
	}
	return true;
}

void tls_ctx_free(void *ctx)
{
	SSL_CTX_free(ctx);
}

bool tls_set_peer_name(SSL *ssl, const char *host)
{
	unsigned char ip[16];

	if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
		return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
	return SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
}
