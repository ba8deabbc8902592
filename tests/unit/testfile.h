/*
 * testfile.h: reading a whole file in unit tests (linked with testfile.c).
 */
#ifndef PGVEIL_TESTS_TESTFILE_H
#define PGVEIL_TESTS_TESTFILE_H

#include <stddef.h>

/* The file's bytes with a NUL after them (malloc'd); *len (if given) gets its size. Fails the test when unreadable. */
char *test_read_file(const char *path, size_t *len);

#endif
