/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for rewriting whole server messages under a mask plan:
 * DataRow bodies (mask_datarow), COPY payloads in text and CSV
 * (mask_copy_data) and ErrorResponse/NoticeResponse bodies
 * (mask_scrub_message). The first bytes choose the plan (which of up to 8
 * columns are masked, and how) and the COPY format; the rest is the message.
 * Every input must be rewritten or refused, never crash or read past the
 * message, and a refused one appends nothing.
 */
#include <event2/buffer.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgveil/mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static RuleSet *rules;

static const Rule *rule(int i)
{
	if (rules == NULL) {
		char *errs = NULL;
		int n = 0;

		rules = rules_parse_string("fuzz", "MASK t.a USING email(); MASK t.b USING partial(1, '*', 1);"
						   "MASK t.c USING hash(6); MASK t.d USING redact();",
					   &errs, &n);
		if (rules == NULL)
			abort();
	}
	return &rules->rules[i % rules->n_rules];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	MaskField fields[8];
	MaskPlan plan = { .fields = fields };
	MaskCopyFormat fmt;
	MaskKey key = { .len = 32 };
	struct evbuffer *out;
	uint8_t *body;
	int rc;

	if (size < 4)
		return 0;
	memset(key.bytes, 'k', key.len);
	plan.key = &key;
	plan.n_fields = data[0] % 9;
	for (int i = 0; i < plan.n_fields; i++) {
		memset(&fields[i], 0, sizeof(fields[i]));
		fields[i].type_oid = MASK_OID_TEXT;
		fields[i].format = (int16_t)((data[1] >> i) & 1);
		if ((data[2] >> i) & 1) {
			fields[i].rule = rule(i);
			plan.n_masked++;
		}
	}
	memset(&fmt, 0, sizeof(fmt));
	fmt.csv = data[3] & 1;
	fmt.header = (data[3] & 2) != 0;
	if (data[3] & 4)
		fmt.delimiter = fmt.csv ? ';' : '|';
	if (data[3] & 8)
		fmt.null_string = "nil";
	body = malloc(size - 4 + 1); /* exact size: ASan sees any read past the end */
	out = evbuffer_new();
	if (body == NULL || out == NULL)
		abort();
	memcpy(body, data + 4, size - 4);
	switch ((data[3] >> 4) % 3) {
	case 0:
		rc = mask_datarow(&plan, body, size - 4, out);
		break;
	case 1:
		rc = mask_copy_data(&plan, &fmt, (data[3] & 64) != 0, body, size - 4, out);
		break;
	default:
		rc = mask_scrub_message((data[3] & 64) ? 'E' : 'N', body, size - 4, out);
		break;
	}
	if (rc == MASK_EVALUE && evbuffer_get_length(out) != 0)
		abort();
	evbuffer_free(out);
	free(body);
	return 0;
}
