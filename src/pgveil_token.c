/* SPDX-License-Identifier: MIT */
/*
 * pgveil-token: mints a signed JWT for development and tests, or prints
 * the JWKS document that verifies tokens signed with a key.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "pgveil/jwtauth.h"

static void usage(FILE *out)
{
	fprintf(out,
		"pgveil-token %s - mint a signed JWT for development and tests\n"
		"\n"
		"Usage:\n"
		"  pgveil-token --key PEM [--kid ID] --sub NAME [--groups a,b] --aud X --iss Y [--ttl SECONDS]\n"
		"               [--alg RS256|ES256|...] [--groups-claim NAME] [--nbf SECONDS_FROM_NOW]\n"
		"  pgveil-token --key PEM [--kid ID] --jwks     print the JWKS for the key's public part\n"
		"\n"
		"The token is printed on stdout. --ttl may be negative (an expired token, for tests).\n",
		PACKAGE_VERSION);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "key", required_argument, NULL, 'k' },  { "kid", required_argument, NULL, 'i' },
		{ "sub", required_argument, NULL, 's' },  { "groups", required_argument, NULL, 'g' },
		{ "aud", required_argument, NULL, 'a' },  { "iss", required_argument, NULL, 'I' },
		{ "ttl", required_argument, NULL, 't' },  { "alg", required_argument, NULL, 'A' },
		{ "groups-claim", required_argument, NULL, 'G' }, { "nbf", required_argument, NULL, 'n' },
		{ "jwks", no_argument, NULL, 'j' },       { "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },    { NULL, 0, NULL, 0 },
	};
	MintParams p = { .ttl = 3600 };
	bool jwks = false;
	char err[512], *out;
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'k': p.key_pem_file = optarg; break;
		case 'i': p.kid = optarg; break;
		case 's': p.sub = optarg; break;
		case 'g': p.groups = optarg; break;
		case 'a': p.aud = optarg; break;
		case 'I': p.iss = optarg; break;
		case 't': p.ttl = strtol(optarg, NULL, 10); break;
		case 'A': p.alg = optarg; break;
		case 'G': p.groups_claim = optarg; break;
		case 'n': p.has_nbf = true; p.nbf_offset = strtol(optarg, NULL, 10); break;
		case 'j': jwks = true; break;
		case 'V': printf("pgveil-token %s\n", PACKAGE_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (p.key_pem_file == NULL || optind != argc || (!jwks && (p.sub == NULL || p.aud == NULL || p.iss == NULL))) {
		usage(stderr);
		return 2;
	}
	out = jwks ? jwtauth_jwks_for_key(p.key_pem_file, p.kid, err, sizeof(err)) : jwtauth_mint(&p, err, sizeof(err));
	if (out == NULL) {
		fprintf(stderr, "pgveil-token: %s\n", err);
		return 1;
	}
	printf("%s\n", out);
	free(out);
	return 0;
}
