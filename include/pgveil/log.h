/* SPDX-License-Identifier: MIT */
/*
 * Leveled logging to stderr, as text or one JSON object per line, with an
 * optional session context. Safe from every thread: each record is written
 * with a single write(2).
 */
#ifndef PGVEIL_LOG_H
#define PGVEIL_LOG_H

#include "pgveil/common.h"

typedef enum { LL_ERROR = 0, LL_WARN = 1, LL_INFO = 2, LL_DEBUG = 3 } LogLevel;

/* Sets the threshold and the format (json = true for JSON lines). */
void log_setup(LogLevel level, bool json);
bool log_enabled(LogLevel level);

/*
 * Writes one record. `ctx` names the session ("c17 agent@app from 127.0.0.1:5132")
 * or is NULL.
 */
void log_write(LogLevel level, const char *ctx, const char *fmt, ...) PGV_PRINTF(3, 4);

#define log_error(...) log_write(LL_ERROR, NULL, __VA_ARGS__)
#define log_warn(...) log_write(LL_WARN, NULL, __VA_ARGS__)
#define log_info(...) do { if (log_enabled(LL_INFO)) log_write(LL_INFO, NULL, __VA_ARGS__); } while (0)
#define log_debug(...) do { if (log_enabled(LL_DEBUG)) log_write(LL_DEBUG, NULL, __VA_ARGS__); } while (0)

#endif
