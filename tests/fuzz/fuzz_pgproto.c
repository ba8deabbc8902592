/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the wire-protocol codec: startup packets, message
 * headers in both directions, and ErrorResponse bodies. Every input must be
 * either accepted or rejected without reading out of bounds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/pgproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	PgStartup st;
	PgHeader h;
	PgErrorFields f;
	const char *why;
	uint32_t len;
	uint8_t *copy;

	if (size >= 4 && pgproto_check_startup_length(data, &len, &why) && len <= size) {
		copy = malloc(len); /* exact size: ASan sees any overread */
		if (copy != NULL) {
			memcpy(copy, data, len);
			if (pgproto_parse_startup(copy, len, &st, &why))
				(void)pgproto_startup_get(&st, "user");
			free(copy);
		}
	}
	if (size >= PG_HEADER_LEN) {
		(void)pgproto_check_frontend_header(data, 1u << 30, &h, &why);
		(void)pgproto_check_backend_header(data, 1u << 30, &h, &why);
	}
	copy = malloc(size ? size : 1);
	if (copy != NULL) {
		memcpy(copy, data, size);
		(void)pgproto_parse_error(copy, size, &f);
		free(copy);
	}
	return 0;
}
