/* SPDX-License-Identifier: MIT */
/*
 * The cancel-key registry. Every client session gets a BackendKeyData of
 * pgveil's own (process id, secret key); a CancelRequest arriving on any
 * worker is matched here (secret compared in constant time) and mapped to
 * the server connection it must be forwarded to. Unknown keys match nothing.
 */
#ifndef PGVEIL_CANCEL_H
#define PGVEIL_CANCEL_H

#include "pgveil/common.h"
#include "pgveil/config.h"

struct event;

/* One registered session; embedded in the Session, linked while registered. */
typedef struct CancelEntry {
	uint32_t pid;              /* key id handed to the client */
	uint32_t key;              /* secret handed to the client */
	bool has_backend;          /* the fields below are valid */
	BackendAddr addr;          /* where the server connection goes */
	uint32_t be_pid;           /* server's BackendKeyData */
	uint32_t be_key;
	struct event *watch;       /* activated by a matching CancelRequest (see cancel_watch) */
	bool canceled;             /* a CancelRequest matched while watched */
	struct CancelEntry *next;  /* hash chain */
} CancelEntry;

/* Assigns a fresh pid/secret and registers e. Returns false if no random bytes could be had. */
bool cancel_register(CancelEntry *e) PGV_WARN_UNUSED;
/* Records the server connection a registered entry forwards to. */
void cancel_set_backend(CancelEntry *e, const BackendAddr *addr, uint32_t be_pid, uint32_t be_key);
/* Removes e (no-op if not registered). */
void cancel_unregister(CancelEntry *e);
typedef enum { CANCEL_UNKNOWN, CANCEL_HELD, CANCEL_FORWARD } CancelTarget;
/*
 * Looks up (pid, key). A session waiting on a held statement takes the
 * cancel itself (CANCEL_HELD): its server is idle, and a forwarded cancel
 * could land on whatever the session sends next. Otherwise, on a match with
 * a server connection, copies its address and key to the out parameters
 * and returns CANCEL_FORWARD.
 */
CancelTarget cancel_lookup(uint32_t pid, uint32_t key, BackendAddr *addr, uint32_t *be_pid, uint32_t *be_key);

/*
 * While a statement is held inside pgveil, a CancelRequest for e must reach
 * the session: ev (an event of the session's base) is activated when one
 * matches. ev = NULL stops watching. Safe from any thread.
 */
void cancel_watch(CancelEntry *e, struct event *ev);
/* True (once) when a CancelRequest matched e since the last call. */
bool cancel_take(CancelEntry *e);

#endif
