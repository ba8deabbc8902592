/* SPDX-License-Identifier: MIT */
/*
 * Cancel registry: a chained hash table keyed by the client-visible pid,
 * shared by all workers behind one mutex (touched only at session start,
 * session end and cancel time, never per statement).
 */
#include "pgveil/cancel.h"

#include <event2/event.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <string.h>

#define CANCEL_BUCKETS 4096

static pthread_mutex_t cancel_lock = PTHREAD_MUTEX_INITIALIZER;
static CancelEntry *buckets[CANCEL_BUCKETS];
static uint32_t next_pid;

static CancelEntry **bucket_of(uint32_t pid)
{
	return &buckets[pid % CANCEL_BUCKETS];
}

bool cancel_register(CancelEntry *e)
{
	uint32_t start;

	memset(e, 0, sizeof(*e));
	if (RAND_bytes((unsigned char *)&e->key, sizeof(e->key)) != 1 ||
	    (__atomic_load_n(&next_pid, __ATOMIC_RELAXED) == 0 && RAND_bytes((unsigned char *)&start, sizeof(start)) != 1))
		return false;
	pthread_mutex_lock(&cancel_lock);
	if (next_pid == 0) /* read above without the lock only to draw `start`; decided here */
		__atomic_store_n(&next_pid, (start % 1000000u) + 1000u, __ATOMIC_RELAXED);
	e->pid = next_pid;
	/* Positive int32 values only: some drivers read the pid as signed. */
	__atomic_store_n(&next_pid, (next_pid >= 0x7ffffff0u) ? 1000u : next_pid + 1, __ATOMIC_RELAXED);
	e->next = *bucket_of(e->pid);
	*bucket_of(e->pid) = e;
	pthread_mutex_unlock(&cancel_lock);
	return true;
}

void cancel_set_backend(CancelEntry *e, const BackendAddr *addr, uint32_t be_pid, uint32_t be_key)
{
	pthread_mutex_lock(&cancel_lock);
	e->addr = *addr;
	e->be_pid = be_pid;
	e->be_key = be_key;
	e->has_backend = true;
	pthread_mutex_unlock(&cancel_lock);
}

void cancel_unregister(CancelEntry *e)
{
	CancelEntry **pp;

	if (e->pid == 0)
		return;
	pthread_mutex_lock(&cancel_lock);
	for (pp = bucket_of(e->pid); *pp != NULL; pp = &(*pp)->next)
		if (*pp == e) {
			*pp = e->next;
			break;
		}
	pthread_mutex_unlock(&cancel_lock);
	e->pid = 0;
}

CancelTarget cancel_lookup(uint32_t pid, uint32_t key, BackendAddr *addr, uint32_t *be_pid, uint32_t *be_key)
{
	CancelTarget found = CANCEL_UNKNOWN;

	pthread_mutex_lock(&cancel_lock);
	for (CancelEntry *e = *bucket_of(pid); e != NULL; e = e->next) {
		if (e->pid != pid)
			continue;
		if (CRYPTO_memcmp(&e->key, &key, sizeof(key)) != 0)
			break;
		if (e->watch != NULL) {
			e->canceled = true;
			event_active(e->watch, 0, 0);
			found = CANCEL_HELD;
		} else if (e->has_backend) {
			*addr = e->addr;
			*be_pid = e->be_pid;
			*be_key = e->be_key;
			found = CANCEL_FORWARD;
		}
		break;
	}
	pthread_mutex_unlock(&cancel_lock);
	return found;
}

void cancel_watch(CancelEntry *e, struct event *ev)
{
	pthread_mutex_lock(&cancel_lock);
	e->watch = ev;
	e->canceled = false;
	pthread_mutex_unlock(&cancel_lock);
}

bool cancel_take(CancelEntry *e)
{
	bool hit;

	pthread_mutex_lock(&cancel_lock);
	hit = e->canceled;
	e->canceled = false;
	pthread_mutex_unlock(&cancel_lock);
	return hit;
}
