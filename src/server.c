/* SPDX-License-Identifier: MIT */
/*
 * Listeners (evconnlistener on the main loop), worker threads with one
 * event base each, the hand-off queue between them, the global connection
 * count behind max_client_conn, the shutdown sequence, and the admin
 * console's cross-worker view: listing every worker's sessions under its
 * lock and asking a worker to end some of them on its own thread.
 */
#include "pgveil/server.h"

#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pgveil/backend.h"
#include "pgveil/log.h"
#include "pgveil/mask.h"
#include "pgveil/session.h"
#include "pgveil/sqlinfo.h"

#define MAX_LISTENERS (CONFIG_MAX_LISTEN * 2)

static struct {
	struct event_base *main_base;             /* the accepting loop */
	struct evconnlistener *listeners[MAX_LISTENERS];
	int n_listeners;
	Worker *workers;                          /* array */
	int n_workers;
	unsigned next_worker;                     /* round robin */
	int conn_count;                           /* atomic: open client connections */
	int workers_running;                      /* atomic */
	struct event *all_done;                   /* activated by the last worker to exit */
	void (*on_done)(void);
} srv;

void server_conn_closed(void)
{
	__atomic_sub_fetch(&srv.conn_count, 1, __ATOMIC_RELAXED);
}

int server_conn_count(void)
{
	return __atomic_load_n(&srv.conn_count, __ATOMIC_RELAXED);
}

/* ---- worker side ------------------------------------------------------------ */

void worker_add_session(Worker *w, Session *s)
{
	pthread_mutex_lock(&w->lock);
	s->wnext = w->sessions;
	s->wprev = NULL;
	if (w->sessions != NULL)
		w->sessions->wprev = s;
	w->sessions = s;
	w->n_sessions++;
	pthread_mutex_unlock(&w->lock);
}

void worker_remove_session(Worker *w, Session *s)
{
	pthread_mutex_lock(&w->lock);
	if (s->wprev != NULL)
		s->wprev->wnext = s->wnext;
	else
		w->sessions = s->wnext;
	if (s->wnext != NULL)
		s->wnext->wprev = s->wprev;
	w->n_sessions--;
	s->listed = false;
	pthread_mutex_unlock(&w->lock);
	if (w->shutting_down && w->n_sessions == 0)
		event_base_loopexit(w->base, NULL);
}

void worker_publish_session(Worker *w, Session *s)
{
	pthread_mutex_lock(&w->lock);
	s->listed = true;
	pthread_mutex_unlock(&w->lock);
}

/* Ends the sessions the admin console asked this worker to end (its own thread). */
static void worker_run_kills(Worker *w)
{
	for (Session *s = w->sessions; s != NULL; s = s->wnext) {
		bool kill;

		pthread_mutex_lock(&w->lock);
		kill = s->kill_requested;
		s->kill_requested = false;
		pthread_mutex_unlock(&w->lock);
		if (kill)
			session_kill(s); /* frees s on a later loop turn: s->wnext stays valid */
	}
}

static void shutdown_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Worker *w = arg;

	for (Session *s = w->sessions; s != NULL; s = s->wnext)
		session_shutdown(s, true);
}

static void worker_begin_shutdown(Worker *w)
{
	Config *cfg = config_current();
	struct timeval tv = { (time_t)(cfg->shutdown_timeout / 1000), (suseconds_t)(cfg->shutdown_timeout % 1000) * 1000 };

	config_unref(cfg);
	w->shutting_down = true;
	if (w->n_sessions == 0) {
		event_base_loopexit(w->base, NULL);
		return;
	}
	for (Session *s = w->sessions, *next; s != NULL; s = next) {
		next = s->wnext;
		session_shutdown(s, false);
	}
	w->shutdown_timer = evtimer_new(w->base, shutdown_timer_cb, w);
	if (w->shutdown_timer != NULL)
		evtimer_add(w->shutdown_timer, &tv);
}

static void worker_wakeup_cb(evutil_socket_t fd, short what, void *arg)
{
	Worker *w = arg;
	PendingConn *list;
	bool stop, kills;

	pthread_mutex_lock(&w->lock);
	list = w->pending;
	w->pending = NULL;
	stop = w->shutdown_requested;
	kills = w->kill_pending;
	w->kill_pending = false;
	pthread_mutex_unlock(&w->lock);
	if (kills)
		worker_run_kills(w);
	while (list != NULL) {
		PendingConn *pc = list;
		Config *cfg = config_current();

		list = pc->next;
		if (stop || session_create(w, cfg, pc->fd, (struct sockaddr *)&pc->addr, pc->addrlen, pc->over_limit) == NULL) {
			close(pc->fd);
			server_conn_closed();
		}
		config_unref(cfg);
		free(pc);
	}
	if (stop && !w->shutting_down)
		worker_begin_shutdown(w);
}

static void *worker_main(void *arg)
{
	Worker *w = arg;
	char name[16];

	snprintf(name, sizeof(name), "pgveil-loop%d", w->id);
	pthread_setname_np(pthread_self(), name); /* as top -H and ps -L show it */
	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	backend_free_cancel_jobs();
	sqlinfo_thread_cleanup();
	mask_thread_cleanup();
	if (__atomic_sub_fetch(&srv.workers_running, 1, __ATOMIC_ACQ_REL) == 0)
		event_active(srv.all_done, 0, 0);
	return NULL;
}

/* ---- the admin console's view (any thread) ------------------------------------------------ */

void server_free_sessions(SessionSummary *list, int n)
{
	if (list == NULL)
		return;
	for (int i = 0; i < n; i++) {
		free(list[i].subject);
		free(list[i].database);
	}
	free(list);
}

/* Appends a summary of s to *list; false without memory. Under the worker's lock. */
static bool summarize(const Worker *w, const Session *s, SessionSummary **list, int *n, int *cap)
{
	SessionSummary *sum;

	if (*n == *cap) {
		int ncap = *cap ? *cap * 2 : 16;
		SessionSummary *grown = realloc(*list, (size_t)ncap * sizeof(SessionSummary));

		if (grown == NULL)
			return false;
		*list = grown;
		*cap = ncap;
	}
	sum = &(*list)[*n];
	memset(sum, 0, sizeof(*sum));
	sum->id = s->id;
	sum->worker = w->id;
	sum->started_at = s->started_at;
	sum->state = session_state_text(s);
	snprintf(sum->addr, sizeof(sum->addr), "%s", s->addr);
	sum->subject = strdup(s->identity.subject != NULL ? s->identity.subject : "");
	sum->database = strdup(s->database != NULL ? s->database : "");
	(*n)++;
	return sum->subject != NULL && sum->database != NULL;
}

static int summary_cmp(const void *a, const void *b)
{
	const SessionSummary *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

int server_list_sessions(SessionSummary **out)
{
	SessionSummary *list = NULL;
	int n = 0, cap = 0;
	bool ok = true;

	*out = NULL;
	for (int i = 0; i < srv.n_workers && ok; i++) {
		Worker *w = &srv.workers[i];

		pthread_mutex_lock(&w->lock);
		for (Session *s = w->sessions; s != NULL && ok; s = s->wnext)
			if (s->listed)
				ok = summarize(w, s, &list, &n, &cap);
		pthread_mutex_unlock(&w->lock);
	}
	if (!ok) {
		server_free_sessions(list, n);
		return -1;
	}
	if (n > 1)
		qsort(list, (size_t)n, sizeof(SessionSummary), summary_cmp);
	*out = list;
	return n;
}

/*
 * Marks for killing the logged-in sessions of every worker that `match`
 * accepts, wakes the workers concerned, and returns how many were marked.
 */
static int kill_matching(bool (*match)(const Session *s, const void *arg), const void *arg)
{
	int total = 0;

	for (int i = 0; i < srv.n_workers; i++) {
		Worker *w = &srv.workers[i];
		int here = 0;

		pthread_mutex_lock(&w->lock);
		for (Session *s = w->sessions; s != NULL; s = s->wnext) {
			if (!s->listed || !match(s, arg))
				continue;
			s->kill_requested = true;
			here++;
		}
		if (here > 0)
			w->kill_pending = true;
		pthread_mutex_unlock(&w->lock);
		if (here > 0)
			event_active(w->wakeup, EV_READ, 0);
		total += here;
	}
	return total;
}

static bool match_id(const Session *s, const void *arg)
{
	return s->id == *(const uint64_t *)arg;
}

static bool match_subject(const Session *s, const void *arg)
{
	return s->identity.subject != NULL && strcmp(s->identity.subject, arg) == 0;
}

bool server_kill_session(uint64_t id)
{
	return kill_matching(match_id, &id) > 0;
}

int server_kill_sessions_of(const char *subject)
{
	if (subject == NULL || subject[0] == '\0')
		return 0;
	return kill_matching(match_subject, subject);
}

/* ---- main side ----------------------------------------------------------------- */

static void hand_off(int fd, struct sockaddr *addr, int addrlen, bool over_limit)
{
	Worker *w = &srv.workers[srv.next_worker++ % (unsigned)srv.n_workers];
	PendingConn *pc = calloc(1, sizeof(PendingConn));

	if (pc == NULL) {
		close(fd);
		server_conn_closed();
		return;
	}
	pc->fd = fd;
	memcpy(&pc->addr, addr, (size_t)addrlen);
	pc->addrlen = (socklen_t)addrlen;
	pc->over_limit = over_limit;
	pthread_mutex_lock(&w->lock);
	pc->next = w->pending;
	w->pending = pc;
	pthread_mutex_unlock(&w->lock);
	event_active(w->wakeup, EV_READ, 0);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr, int addrlen, void *arg)
{
	Config *cfg = config_current();
	int n = __atomic_add_fetch(&srv.conn_count, 1, __ATOMIC_RELAXED);
	int one = 1;

	/* Far past the limit, do not even read the startup packet: protect file descriptors. */
	if (n > cfg->max_client_conn * 2 + 64) {
		close(fd);
		server_conn_closed();
		config_unref(cfg);
		return;
	}
	if (addr->sa_family != AF_UNIX)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	hand_off(fd, addr, addrlen, n > cfg->max_client_conn);
	config_unref(cfg);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();

	/* EMFILE and friends: keep the listener, log, and let the loop retry. */
	log_error("accept failed: %s", evutil_socket_error_to_string(err));
}

static bool listen_on(const char *host, int port, int backlog, char *err, size_t errlen)
{
	struct addrinfo hints = { 0 }, *res = NULL;
	char portstr[16];
	int rc;

	snprintf(portstr, sizeof(portstr), "%d", port);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(strcmp(host, "*") == 0 ? NULL : host, portstr, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "listen_addr %s: %s", host, gai_strerror(rc));
		return false;
	}
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		struct evconnlistener *l;

		if (srv.n_listeners >= MAX_LISTENERS)
			break;
		l = evconnlistener_new_bind(srv.main_base, accept_cb, NULL,
					    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC |
						    (ai->ai_family == AF_INET6 ? LEV_OPT_BIND_IPV6ONLY : 0),
					    backlog, ai->ai_addr, (int)ai->ai_addrlen);
		if (l == NULL) {
			snprintf(err, errlen, "cannot listen on %s port %d: %s", host, port, strerror(errno));
			freeaddrinfo(res);
			return false;
		}
		evconnlistener_set_error_cb(l, accept_error_cb);
		srv.listeners[srv.n_listeners++] = l;
	}
	freeaddrinfo(res);
	return true;
}

static void all_done_cb(evutil_socket_t fd, short what, void *arg)
{
	if (srv.on_done != NULL)
		srv.on_done();
}

static bool start_workers(int n, char *err, size_t errlen)
{
	srv.workers = calloc((size_t)n, sizeof(Worker));
	if (srv.workers == NULL)
		return false;
	for (int i = 0; i < n; i++) {
		Worker *w = &srv.workers[i];

		w->id = i;
		pthread_mutex_init(&w->lock, NULL);
		w->base = event_base_new();
		w->wakeup = w->base ? event_new(w->base, -1, EV_PERSIST | EV_READ, worker_wakeup_cb, w) : NULL;
		w->dns = w->base ? evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
								   EVDNS_BASE_DISABLE_WHEN_INACTIVE)
				 : NULL;
		if (w->wakeup == NULL || w->dns == NULL) {
			snprintf(err, errlen, "cannot create event loop for worker %d", i);
			return false;
		}
		event_add(w->wakeup, NULL);
		srv.n_workers++;
		__atomic_add_fetch(&srv.workers_running, 1, __ATOMIC_RELAXED);
		if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			snprintf(err, errlen, "cannot start worker thread %d", i);
			return false;
		}
	}
	return true;
}

bool server_start(struct event_base *main_base, Config *cfg, char *err, size_t errlen)
{
	srv.main_base = main_base;
	srv.all_done = event_new(main_base, -1, 0, all_done_cb, NULL);
	if (srv.all_done == NULL)
		return false;
	for (int i = 0; i < cfg->listen_addr.n; i++)
		if (!listen_on(cfg->listen_addr.items[i], cfg->listen_port, 1024, err, errlen))
			return false;
	if (!start_workers(cfg->workers, err, errlen))
		return false;
	log_info("listening on %s port %d with %d worker%s", cfg->listen_addr.items[0], cfg->listen_port,
		 cfg->workers, cfg->workers == 1 ? "" : "s");
	return true;
}

void server_shutdown(void (*on_done)(void))
{
	srv.on_done = on_done;
	for (int i = 0; i < srv.n_listeners; i++)
		evconnlistener_free(srv.listeners[i]);
	srv.n_listeners = 0;
	for (int i = 0; i < srv.n_workers; i++) {
		Worker *w = &srv.workers[i];

		pthread_mutex_lock(&w->lock);
		w->shutdown_requested = true;
		pthread_mutex_unlock(&w->lock);
		event_active(w->wakeup, EV_READ, 0);
	}
	if (__atomic_load_n(&srv.workers_running, __ATOMIC_ACQUIRE) == 0)
		event_active(srv.all_done, 0, 0);
}

void server_free(void)
{
	for (int i = 0; i < srv.n_listeners; i++)
		evconnlistener_free(srv.listeners[i]);
	srv.n_listeners = 0;
	for (int i = 0; i < srv.n_workers; i++) {
		Worker *w = &srv.workers[i];

		pthread_join(w->thread, NULL);
		if (w->shutdown_timer)
			event_free(w->shutdown_timer);
		event_free(w->wakeup);
		evdns_base_free(w->dns, 0);
		event_base_free(w->base);
		pthread_mutex_destroy(&w->lock);
	}
	free(srv.workers);
	srv.workers = NULL;
	srv.n_workers = 0;
	if (srv.all_done)
		event_free(srv.all_done);
	srv.all_done = NULL;
}
