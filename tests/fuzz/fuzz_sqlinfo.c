/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for statement analysis: any bytes as SQL text, analysed
 * twice (the second answer comes from the cache and must equal the first),
 * normalized, and with the classes printed by name. Every input must give a
 * result or a clean refusal, without reading out of bounds or leaking.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/sqlinfo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_same(const StmtInfo *a, const StmtInfo *b)
{
	int i, j;

	if ((a->error == NULL) != (b->error == NULL) || a->classes != b->classes || a->n_parts != b->n_parts ||
	    a->n_stmts != b->n_stmts || a->n_prep != b->n_prep || a->fingerprint != b->fingerprint)
		abort();
	for (i = 0; i < a->n_stmts; i++)
		if (a->stmts[i].offset != b->stmts[i].offset || a->stmts[i].len != b->stmts[i].len ||
		    a->stmts[i].classes != b->stmts[i].classes)
			abort();
	for (i = 0; i < a->n_parts; i++) {
		const SqlPart *p = &a->parts[i], *q = &b->parts[i];

		if (p->classes != q->classes || p->n_tables != q->n_tables || p->n_functions != q->n_functions)
			abort();
		for (j = 0; j < p->n_tables; j++)
			if (strcmp(p->tables[j].name, q->tables[j].name) != 0 || p->tables[j].access != q->tables[j].access)
				abort();
		for (j = 0; j < p->n_functions; j++)
			if (strcmp(p->functions[j], q->functions[j]) != 0)
				abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size ? size : 1); /* exact size: ASan sees any overread */
	StmtInfo *a, *b;
	char names[256], *norm;
	int i;

	if (copy == NULL)
		return 0;
	memcpy(copy, data, size);
	a = sqlinfo_analyze(copy, size);
	b = sqlinfo_analyze(copy, size);
	if (a != NULL && b != NULL) {
		check_same(a, b);
		for (i = 0; i < a->n_stmts; i++)
			if (a->stmts[i].offset < 0 || (size_t)a->stmts[i].offset > size || a->stmts[i].len < 0 ||
			    (size_t)a->stmts[i].offset + (size_t)a->stmts[i].len > size)
				abort();
		(void)sqlinfo_class_names(a->classes, names, sizeof(names));
	}
	sqlinfo_unref(a);
	sqlinfo_unref(b);
	norm = sqlinfo_normalize(copy, size);
	free(norm);
	free(copy);
	return 0;
}
