/* SPDX-License-Identifier: MIT */
/*
 * The query phase of a session: relaying messages between the client and
 * the server, with every statement checked on the way. Queries, Parse and
 * Bind messages are analysed (sqlinfo) and decided (policy); an allowed
 * message moves on unchanged, a refused one is replaced by a statement the
 * server rejects (so the server itself ends the transaction or pipeline the
 * way PostgreSQL does) and the server's answer to it is replaced by pgveil's
 * ErrorResponse. A held message stays in the client's input until an
 * approver decides (approval); what runs is exactly the bytes that were held.
 * Tracks prepared statements (protocol-level and SQL-level) so EXECUTE and
 * Bind are decided on the statement they really run.
 */
#ifndef PGVEIL_RELAY_H
#define PGVEIL_RELAY_H

#include "pgveil/common.h"

typedef struct Relay Relay;

/* Sets up the query phase for a session whose server login finished. False on allocation failure. */
bool relay_start(Session *s) PGV_WARN_UNUSED;
/* Stops waiting for anything (a held statement is withdrawn); called when the session closes. */
void relay_stop(Session *s);
/* Frees the relay state (on the session's final free). */
void relay_free(Session *s);

/* Input arrived from the client / the server. */
void relay_client_input(Session *s);
void relay_server_input(Session *s);
/* The client half-closed its side: answer what it sent, then end. */
void relay_client_eof(Session *s);
/* The client connection failed or sent Terminate: tell the server and close. */
void relay_client_terminate(Session *s);

/* True while a statement of the session waits for an approver. */
bool relay_holding(const Session *s);

#endif
