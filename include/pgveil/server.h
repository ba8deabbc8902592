/* SPDX-License-Identifier: MIT */
/*
 * Listeners and worker threads. The main thread accepts connections and
 * hands each socket to a worker (round robin); a worker runs one libevent
 * base and owns every session it was given for that session's whole life,
 * so session state needs no locks. Also coordinates graceful shutdown.
 */
#ifndef PGVEIL_SERVER_H
#define PGVEIL_SERVER_H

#include <pthread.h>
#include <sys/socket.h>
#include <time.h>

#include "pgveil/common.h"
#include "pgveil/config.h"

struct event_base;
struct event;
struct evdns_base;

/* An accepted socket waiting to be picked up by its worker. */
typedef struct PendingConn {
	int fd;                          /* the client socket */
	struct sockaddr_storage addr;    /* peer address */
	socklen_t addrlen;               /* its length */
	bool over_limit;                 /* accepted beyond max_client_conn */
	struct PendingConn *next;        /* queue link */
} PendingConn;

struct Worker {
	int id;                          /* 0..workers-1 */
	pthread_t thread;                /* the thread running base */
	struct event_base *base;         /* this worker's loop */
	struct evdns_base *dns;          /* resolver for server host names */
	struct event *wakeup;            /* activated by other threads: new sockets, shutdown, kills */
	pthread_mutex_t lock;            /* guards `pending`, `shutdown_requested`, `kill_pending`, the
					    session list's links and the sessions' published fields */
	PendingConn *pending;            /* sockets handed over, not yet picked up */
	bool shutdown_requested;         /* set by the main thread */
	bool kill_pending;               /* a session here has kill_requested set (admin console) */
	bool shutting_down;              /* seen by the worker */
	struct event *shutdown_timer;    /* forces remaining sessions out */
	Session *sessions;               /* every session of this worker */
	int n_sessions;                  /* length of that list */
};

/* Binds the listeners and starts cfg->workers threads. Returns false with err set. */
bool server_start(struct event_base *main_base, Config *cfg, char *err, size_t errlen) PGV_WARN_UNUSED;
/*
 * Stops accepting and asks every worker to finish its sessions: idle ones
 * now, busy ones when their statement or transaction ends, the rest after
 * shutdown_timeout. `on_done` runs on the main loop when all workers exited.
 */
void server_shutdown(void (*on_done)(void));
/* Joins the worker threads and frees everything (after on_done). */
void server_free(void);

/* Counts a session out of the connection limit (called when a session ends). */
void server_conn_closed(void);
/* Current number of client connections. */
int server_conn_count(void);

/*
 * Worker-side session bookkeeping (called on the worker thread). The list
 * is changed under the worker's lock, so other threads may walk it under
 * that lock. worker_publish_session() marks a session as logged in: from
 * then on it is listed and may be killed from the admin console; its
 * identity and database must not change any more.
 */
void worker_add_session(Worker *w, Session *s);
void worker_remove_session(Worker *w, Session *s);
void worker_publish_session(Worker *w, Session *s);

/* ---- the admin console's view of every worker's sessions --------------------------- */

/* One logged-in session as SHOW SESSIONS lists it. */
typedef struct SessionSummary {
	uint64_t id;                     /* session id */
	char *subject;                   /* agent subject, "" under dev_trust_auth */
	char *database;                  /* the database the client asked for */
	char addr[64];                   /* client address */
	time_t started_at;               /* wall clock at accept */
	const char *state;               /* static text: "active", "idle", "idle in transaction", "admin", ... */
	int worker;                      /* owning worker id */
} SessionSummary;

/*
 * Copies a summary of every logged-in session of every worker, ordered by
 * id, into *out (free with server_free_sessions). Returns the count, or -1
 * on allocation failure. Any thread.
 */
int server_list_sessions(SessionSummary **out);
void server_free_sessions(SessionSummary *list, int n);

/*
 * Asks the worker owning session `id` to end it with FATAL 57P01
 * "terminated by administrator command" on its own thread, soon after this
 * returns. False when no logged-in session has that id. Any thread.
 */
bool server_kill_session(uint64_t id);
/* The same for every logged-in session of `subject`; returns how many. */
int server_kill_sessions_of(const char *subject);

#endif
