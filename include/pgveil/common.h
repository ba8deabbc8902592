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

/* Monotonic clock in microseconds. */
uint64_t pgv_now_us(void);
/* Wall-clock time in microseconds since the epoch (for records that carry a date). */
int64_t pgv_wall_us(void);

#endif
