/* SPDX-License-Identifier: MIT */
/*
 * Core types and helpers shared by every pgveil module: attribute macros,
 * forward declarations of the main objects, and a few tiny inline helpers.
 * Nothing here pulls in a foreign library.
 */
#ifndef PGVEIL_COMMON_H
#define PGVEIL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PGV_WARN_UNUSED __attribute__((warn_unused_result))
#define PGV_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define PGV_UNUSED __attribute__((unused))
#define PGV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

typedef struct Config Config;
typedef struct DbEntry DbEntry;
typedef struct Session Session;
typedef struct Worker Worker;
typedef struct Stream Stream;
typedef struct Backend Backend;
typedef struct JwtVerifier JwtVerifier;
typedef struct RuleSet RuleSet;

/* SQLSTATE codes pgveil raises itself. */
#define SQLSTATE_PROTOCOL_VIOLATION "08P01"
#define SQLSTATE_CONNECTION_FAILURE "08006"
#define SQLSTATE_CANNOT_CONNECT "08001"
#define SQLSTATE_TOO_MANY_CONNECTIONS "53300"
#define SQLSTATE_INVALID_CATALOG_NAME "3D000"
#define SQLSTATE_INVALID_AUTHORIZATION "28000"
#define SQLSTATE_INVALID_PASSWORD "28P01"
#define SQLSTATE_FEATURE_NOT_SUPPORTED "0A000"
#define SQLSTATE_ADMIN_SHUTDOWN "57P01"
#define SQLSTATE_QUERY_CANCELED "57014"
#define SQLSTATE_OUT_OF_MEMORY "53200"
#define SQLSTATE_INTERNAL_ERROR "XX000"
#define SQLSTATE_IO_ERROR "58030"
#define SQLSTATE_INSUFFICIENT_PRIVILEGE "42501"
#define SQLSTATE_INVALID_STATEMENT_NAME "26000"
#define SQLSTATE_STATEMENT_TOO_COMPLEX "54001"
#define SQLSTATE_CONFIG_FILE_ERROR "F0000"

/* Writes the n bytes at in as 2n lower-case hex digits at out (no NUL). */
static inline void pgv_hex(char *out, const uint8_t *in, size_t n)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
}

/* Length of the valid UTF-8 sequence at s (n > 0 bytes left), 0 when invalid (overlong, surrogate, past U+10FFFF). */
static inline size_t pgv_utf8_seq(const uint8_t *s, size_t n)
{
	uint8_t c = s[0];
	size_t len;
	uint32_t min, cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2, min = 0x80, cp = c & 0x1F;
	else if (c >= 0xE0 && c <= 0xEF)
		len = 3, min = 0x800, cp = c & 0x0F;
	else if (c >= 0xF0 && c <= 0xF4)
		len = 4, min = 0x10000, cp = c & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

/* Monotonic clock in microseconds. */
uint64_t pgv_now_us(void);
/* Wall-clock time in microseconds since the epoch (for records that carry a date). */
int64_t pgv_wall_us(void);

#endif
