/*
 * allocfail.h: the allocation functions, wrapped for unit tests that count
 * allocations or make one fail.
 *
 * A test that includes this is linked with allocfail.c and
 * $(ALLOCFAIL_WRAP) (Makefile.am), which route malloc, calloc, realloc,
 * strdup and strndup through the wrappers.
 */
#ifndef PGVEIL_TESTS_ALLOCFAIL_H
#define PGVEIL_TESTS_ALLOCFAIL_H

#include <stdbool.h>

/* The allocation that fails: 0 = the next one, k = the one after k more; -1 = none. */
extern int allocfail_countdown;
/* Set when an allocation was made to fail; the test clears it. */
extern bool allocfail_happened;
/* Allocations asked for (failed ones included); the test resets it. */
extern long allocfail_calls;

#endif
