/* SPDX-License-Identifier: MIT */
/*
 * Logging: formats a record into one buffer (timestamp, level, context,
 * message; or the same as a JSON object) and writes it to stderr at once so
 * records from different threads never interleave.
 */
#include "pgveil/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static LogLevel log_level = LL_INFO;
static bool log_json;

static const char *const level_names[] = { "ERROR", "WARN", "INFO", "DEBUG" };

/* A reload changes these while other threads log: atomic, and read once per record. */
void log_setup(LogLevel level, bool json)
{
	__atomic_store_n(&log_level, level, __ATOMIC_RELAXED);
	__atomic_store_n(&log_json, json, __ATOMIC_RELAXED);
}

bool log_enabled(LogLevel level)
{
	return level <= __atomic_load_n(&log_level, __ATOMIC_RELAXED);
}

int64_t pgv_wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint64_t pgv_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/*
 * Copies s to out so that it stays on one line and cannot pass for another
 * record: as JSON string contents, or for text with control bytes written
 * as \xNN. Client-supplied names and token fields reach log lines.
 */
static size_t log_escape(char *out, size_t cap, const char *s, bool json)
{
	size_t n = 0;

	for (; *s && n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;

		if (json && (c == '"' || c == '\\')) {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20 || (!json && c == 0x7f)) {
			n += (size_t)snprintf(out + n, cap - n, json ? "\\u%04x" : "\\x%02x", c);
		} else {
			out[n++] = (char)c;
		}
	}
	out[n] = '\0';
	return n;
}

void log_write(LogLevel level, const char *ctx, const char *fmt, ...)
{
	char msg[2048], line[4608], stamp[40];
	struct timeval tv;
	struct tm tm;
	va_list ap;
	int n;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = (int)strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(stamp + n, sizeof(stamp) - (size_t)n, ".%03ldZ", (long)tv.tv_usec / 1000);
	char emsg[sizeof(msg) * 2], ectx[512] = "";
	bool json = __atomic_load_n(&log_json, __ATOMIC_RELAXED); /* one format for the whole record */

	log_escape(emsg, sizeof(emsg), msg, json);
	if (ctx != NULL)
		log_escape(ectx, sizeof(ectx), ctx, json);
	if (json)
		n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",%s%s%s\"msg\":\"%s\"}\n", stamp,
			     level_names[level], ctx ? "\"session\":\"" : "", ectx, ctx ? "\"," : "", emsg);
	else
		n = snprintf(line, sizeof(line), "%s %s %s%s%s\n", stamp, level_names[level], ectx, ctx ? ": " : "",
			     emsg);
	if (n > (int)sizeof(line) - 1) {
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (write(STDERR_FILENO, line, (size_t)n) < 0) {
		/* nowhere left to report it */
	}
}
