#!/usr/bin/env bash
# pgveil in a few minutes: installs what is needed, builds pgveil, starts a
# throwaway PostgreSQL and pgveil in front of it, sends queries through the
# proxy with psql, and stops everything again.
#
#   scripts/demo.sh            run every step
#   scripts/demo.sh --keep     leave PostgreSQL and pgveil running at the end
#                              (stop them with: scripts/demo.sh --stop)
#   scripts/demo.sh --stop     stop what a --keep run left running
#
# Everything lives under .demo/ in the source tree (git ignores it).
# Environment: DEMO_PG_PORT (default: the first free from 55432), DEMO_PGVEIL_PORT
# (default: the first free from 6432),
# DEMO_SKIP_SETUP=1 (do not run setup-debian.sh), PGVEIL_BIN (use this binary
# instead of building one).
set -euo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DEMO=$SRCDIR/.demo
PG_PORT=${DEMO_PG_PORT:-}
PGVEIL_PORT=${DEMO_PGVEIL_PORT:-}
BUILDDIR=$DEMO/build
PGVEIL_BIN=${PGVEIL_BIN:-}
PGVEIL_PID=""
KEEP=no
AGENT_CONN=""  # how the steps connect as agent-7: set by step_query, then step_jwt

# shellcheck source=scripts/pg-sandbox.sh
. "$SRCDIR/scripts/pg-sandbox.sh"

# --------------------------------------------------------------------------
# presentation

if [ -t 1 ]; then
	BOLD=$'\e[1m' DIM=$'\e[2m' CYAN=$'\e[36m' RED=$'\e[31m' RESET=$'\e[0m'
else
	BOLD="" DIM="" CYAN="" RED="" RESET=""
fi
STEP_NO=0
section() {
	STEP_NO=$((STEP_NO + 1))
	printf '\n%s━━━ %d. %s %s\n' "$BOLD$CYAN" "$STEP_NO" "$*" "$RESET"
}
# Explanatory text for the reader, dimmed so it stands apart from real output.
say() { printf '%s%s%s\n' "$DIM" "$*" "$RESET"; }
die() {
	printf '\n%sdemo: %s%s\n' "$RED$BOLD" "$*" "$RESET" >&2
	exit 1
}

# psql through pgveil: demo_psql CONNINFO [psql args]. The command is shown
# (a password abbreviated), then the queries as they run.
demo_psql() {
	local conninfo=$1 shown
	shift
	shown=$(printf '%s' "$conninfo" | sed -E 's/(password=[^ ]{12})[^ ]*/\1.../')
	printf '%s$ psql "%s"%s\n' "$DIM" "$shown" "$RESET"
	psql -X -e -v ON_ERROR_STOP=1 --pset=footer=off "$conninfo connect_timeout=10" "$@"
}


# --------------------------------------------------------------------------
# plumbing

pg_dir() {
	# As root the server runs as postgres, which must reach the directory.
	if [ "$(id -u)" -ne 0 ] || runuser -u postgres -- test -x "$DEMO"; then
		echo "$DEMO/pg"
	else
		[ -f "$DEMO/pg-dir" ] || mktemp -d /tmp/pgveil-demo-pg.XXXXXX >"$DEMO/pg-dir"
		cat "$DEMO/pg-dir"
	fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The first free port from $1 upwards.
free_port() {
	local p=$1
	while port_busy "$p"; do
		p=$((p + 1))
	done
	echo "$p"
}

stop_pgveil() {
	local pid=${PGVEIL_PID:-}
	[ -n "$pid" ] || { [ -f "$DEMO/pgveil.pid" ] && pid=$(cat "$DEMO/pgveil.pid"); } || true
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$DEMO/pgveil.pid"
	PGVEIL_PID=""
}

# Starts pgveil in the background with a configuration; its log goes to .demo/pgveil.log.
start_pgveil() {
	"$PGVEIL_BIN" -c "$1" 2>>"$DEMO/pgveil.log" &
	PGVEIL_PID=$!
	echo "$PGVEIL_PID" >"$DEMO/pgveil.pid"
	for _ in $(seq 100); do
		kill -0 "$PGVEIL_PID" 2>/dev/null || die "pgveil exited at startup (log: .demo/pgveil.log)"
		port_busy "$PGVEIL_PORT" && return 0
		sleep 0.1
	done
	die "pgveil is not listening on port $PGVEIL_PORT after 10 s"
}

stop_all() {
	stop_pgveil
	if [ -f "$DEMO/pg-dir" ] || [ -d "$DEMO/pg" ]; then
		PG_SANDBOX_QUIET=1 pg_sandbox_destroy "$(pg_dir)" || true
		rm -f "$DEMO/pg-dir"
	fi
}

on_exit() {
	local rc=$?
	if [ "$KEEP" = yes ] && [ "$rc" -eq 0 ]; then
		return
	fi
	if [ "$rc" -ne 0 ]; then
		printf '\n%sdemo: stopped early (exit %d); cleaning up%s\n' "$RED" "$rc" "$RESET" >&2
		if [ -s "$DEMO/pgveil.log" ]; then
			printf '%s--- last lines of .demo/pgveil.log ---%s\n' "$DIM" "$RESET" >&2
			tail -n 20 "$DEMO/pgveil.log" >&2
		fi
	fi
	stop_all
}

# --------------------------------------------------------------------------
# the steps, in order: add new ones to STEPS below

step_setup() {
	section "Installing dependencies"
	if [ "${DEMO_SKIP_SETUP:-0}" = 1 ]; then
		say "DEMO_SKIP_SETUP=1: skipped."
		return
	fi
	say "scripts/setup-debian.sh installs the Debian packages pgveil needs (a no-op when all are there)."
	bash "$SRCDIR/scripts/setup-debian.sh" </dev/null
}

step_build() {
	section "Building pgveil"
	if [ -n "$PGVEIL_BIN" ]; then
		[ -x "$PGVEIL_BIN" ] || die "PGVEIL_BIN=$PGVEIL_BIN is not an executable"
		say "Using PGVEIL_BIN=$PGVEIL_BIN."
		return
	fi
	say "./autogen.sh && ./configure && make, in .demo/build (output in .demo/build.log)."
	(cd "$SRCDIR" && ./autogen.sh) >"$DEMO/build.log" 2>&1 || { tail -n 30 "$DEMO/build.log"; die "autogen.sh failed"; }
	if [ -f "$SRCDIR/config.status" ]; then
		# Configured in place: automake allows no second build directory then.
		BUILDDIR=$SRCDIR
		say "(the source tree is configured in place: building there)"
	fi
	mkdir -p "$BUILDDIR"
	(
		cd "$BUILDDIR"
		[ -f Makefile ] || "$SRCDIR/configure"
		make -j"$(nproc 2>/dev/null || echo 2)"
	) >>"$DEMO/build.log" 2>&1 || { tail -n 30 "$DEMO/build.log"; die "build failed (see .demo/build.log)"; }
	PGVEIL_BIN=$BUILDDIR/pgveil
	say "Built $PGVEIL_BIN${DIM}: $("$PGVEIL_BIN" --version 2>/dev/null | head -n 1 || true)"
}

step_postgres() {
	section "Starting a throwaway PostgreSQL"
	PG_PORT=${PG_PORT:-$(free_port 55432)}
	say "A fresh server on 127.0.0.1:$PG_PORT (scripts/pg-sandbox.sh). The database 'app' belongs to role"
	say "app_agent (password 'secret'), with sample tables users and orders. Only pgveil knows that password."
	pg_sandbox_start "$(pg_dir)" "$PG_PORT"
}

step_identity() {
	section "An identity provider, for the demo"
	TOKEN_BIN=${PGVEIL_TOKEN_BIN:-$(dirname "$PGVEIL_BIN")/pgveil-token}
	[ -x "$TOKEN_BIN" ] || die "no pgveil-token next to $PGVEIL_BIN"
	ISS=https://idp.demo.invalid/
	JWT_DIR=$DEMO/jwt
	mkdir -p "$JWT_DIR"
	say "An agent's password is a JWT from the identity provider, sent over TLS. Here openssl makes a"
	say "signing key and a self-signed server certificate, and pgveil-token plays the provider:"
	say "it prints the JWKS that pgveil verifies tokens with, and mints a token for agent-7."
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$JWT_DIR/signing.pem" 2>/dev/null
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$JWT_DIR/server.key" -out "$JWT_DIR/server.crt" \
		-subj /CN=localhost -days 1 2>/dev/null
	"$TOKEN_BIN" --key "$JWT_DIR/signing.pem" --kid demo-1 --jwks >"$JWT_DIR/jwks.json"
	JWT=$("$TOKEN_BIN" --key "$JWT_DIR/signing.pem" --kid demo-1 --sub agent-7 --groups agents \
		--aud pgveil --iss "$ISS" --ttl 600)
	echo "$JWT" >"$JWT_DIR/token"
	printf '%s$ pgveil-token --key signing.pem --kid demo-1 --sub agent-7 --groups agents --aud pgveil --iss %s --ttl 600%s\n' \
		"$DIM" "$ISS" "$RESET"
	printf '    %s...\n' "${JWT:0:60}"
}

step_pgveil() {
	section "Starting pgveil"
	if [ -z "$PGVEIL_PORT" ]; then
		PGVEIL_PORT=$(free_port 6432)
		[ "$PGVEIL_PORT" = 6432 ] || say "(port 6432 is taken: using $PGVEIL_PORT)"
	fi
	port_busy "$PGVEIL_PORT" && die "port $PGVEIL_PORT is in use (set DEMO_PGVEIL_PORT)"
	: >"$DEMO/pgveil.log"
	rm -rf "$DEMO/rules" "$DEMO"/audit.db*
	mkdir -p "$DEMO/rules"
	cp "$SRCDIR/rules/default.rules" "$DEMO/rules/10-default.rules"
	cat >"$DEMO/rules/20-masks.rules" <<-EOF
		-- what agents may not see of the users table
		MASK public.users.email  USING email();
		MASK public.users.ssn    USING partial(0, '***-**-', 4);
		MASK public.users.salary USING round(1) FOR GROUP agents;
		MASK public.users.born   USING truncate('year');
		MASK public.users.name   USING hash(12) UNLESS GROUP hr;
	EOF
	(umask 077 && openssl rand -hex 32 >"$DEMO/mask.key")
	cat >"$DEMO/pgveil.ini" <<-EOF
		; written by scripts/demo.sh
		[pgveil]
		listen_addr = 127.0.0.1
		listen_port = $PGVEIL_PORT
		workers = 0
		tls_cert_file = $JWT_DIR/server.crt
		tls_key_file = $JWT_DIR/server.key
		log_level = info
		rules = $DEMO/rules
		mask_key_file = $DEMO/mask.key
		audit_db = $DEMO/audit.db
		audit_mode = strict
		default_action = block
		hold_timeout = 5m

		[oidc]
		issuer = $ISS
		audience = pgveil
		jwks_file = $JWT_DIR/jwks.json
		algorithms = RS256, ES256

		[databases]
		app = host=127.0.0.1 port=$PG_PORT dbname=app user=app_agent password=secret sslmode=disable
	EOF
	say "Configuration (.demo/pgveil.ini):"
	sed 's/^/    /' "$DEMO/pgveil.ini"
	say "Rules: the shipped defaults (rules/default.rules) and column masks (.demo/rules/20-masks.rules):"
	sed 's/^/    /' "$DEMO/rules/20-masks.rules"
	say "The agent asks for database 'app'; pgveil logs in to the real server with the credentials above."
	start_pgveil "$DEMO/pgveil.ini"
	say "pgveil (pid $PGVEIL_PID) listens on 127.0.0.1:$PGVEIL_PORT; its log goes to .demo/pgveil.log."
}

step_query() {
	section "An agent queries through pgveil"
	say "The agent connects with its token as the password. On the server the session runs as"
	say "app_agent, whose password only pgveil knows, and carries application_name pgveil:agent-7."
	AGENT_CONN="host=127.0.0.1 port=$PGVEIL_PORT dbname=app user=agent-7 password=$JWT sslmode=require"
	demo_psql "$AGENT_CONN" \
		-c '\conninfo' \
		-c 'SELECT current_user, session_user' \
		-c 'SHOW application_name'
}

step_mask() {
	section "Masked columns come back masked, whatever the query"
	say "Straight from the server (not through pgveil), the first rows of users are:"
	demo_psql "host=127.0.0.1 port=$PG_PORT dbname=app user=app_agent password=secret" \
		-c 'SELECT id, name, email, ssn, salary, born FROM users ORDER BY id LIMIT 3'
	say "The agent, through pgveil, gets every masked column rewritten in each row:"
	demo_psql "$AGENT_CONN" -c 'SELECT * FROM users ORDER BY id LIMIT 3'
	say "Computing on a masked column would get around the mask, so it is refused, naming the column:"
	demo_psql "$AGENT_CONN" -c 'SELECT upper(email) FROM users LIMIT 3' 2>&1 || true
	demo_psql "$AGENT_CONN" -c 'SELECT row_to_json(u) FROM users u LIMIT 1' 2>&1 || true
	demo_psql "$AGENT_CONN" -c "SELECT id FROM users WHERE ssn LIKE '123%'" 2>&1 || true
}

step_guard() {
	section "Statements the rules forbid never reach the server"
	say "pgveil parses every statement with PostgreSQL's own parser and checks it against"
	say "rules/default.rules. The agent tries to drop a table, also in disguise:"
	demo_psql "$AGENT_CONN" -c 'DROP TABLE users' 2>&1 || true
	demo_psql "$AGENT_CONN" -c 'SELECT 1; /* harmless? */ DrOp TaBlE "users"' 2>&1 || true
	demo_psql "$AGENT_CONN" -c 'WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone' 2>&1 || true
	say "The table is still there, with all its rows (asked directly, not through pgveil):"
	demo_psql "host=127.0.0.1 port=$PG_PORT dbname=app user=app_agent password=secret" \
		-c 'SELECT count(*) AS users FROM users'
}

step_approval() {
	section "Writes wait for a human approver"
	local approver console held_id agent_pid
	say "The default rules hold every write. The agent updates one row; psql waits, with a notice:"
	demo_psql "$AGENT_CONN" -c "UPDATE users SET email = 'new@example.com' WHERE id = 3" \
		>"$DEMO/held.out" 2>&1 &
	agent_pid=$!
	approver=$("$TOKEN_BIN" --key "$JWT_DIR/signing.pem" --kid demo-1 --sub alice --groups dba \
		--aud pgveil --iss "$ISS" --ttl 600)
	console="host=127.0.0.1 port=$PGVEIL_PORT dbname=pgveil user=alice password=$approver sslmode=require"
	for _ in $(seq 50); do
		held_id=$(psql -X -A -t "$console connect_timeout=10" -c 'SHOW HELD' 2>/dev/null | cut -d'|' -f1 | head -n 1)
		[ -n "$held_id" ] && break
		sleep 0.2
	done
	[ -n "$held_id" ] || die "the update was not held"
	say "alice (group dba) sees it on the admin console, the virtual database 'pgveil', and approves it:"
	demo_psql "$console" -c 'SHOW HELD' -c "APPROVE $held_id"
	wait "$agent_pid" || die "the approved update failed: $(cat "$DEMO/held.out")"
	say "The agent's psql got its answer:"
	sed 's/^/    /' "$DEMO/held.out"
}

step_refused() {
	section "Tokens that prove nothing are refused"
	local forged
	say "A token signed with another key (same kid), and one that expired a minute ago:"
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$JWT_DIR/other.pem" 2>/dev/null
	forged=$("$TOKEN_BIN" --key "$JWT_DIR/other.pem" --kid demo-1 --sub agent-7 --aud pgveil --iss "$ISS")
	if demo_psql "host=127.0.0.1 port=$PGVEIL_PORT dbname=app user=agent-7 password=$forged sslmode=require" \
		-c 'SELECT 1' 2>&1; then
		die "a forged token was accepted"
	fi
	forged=$("$TOKEN_BIN" --key "$JWT_DIR/signing.pem" --kid demo-1 --sub agent-7 --aud pgveil --iss "$ISS" \
		--ttl -120)
	if demo_psql "host=127.0.0.1 port=$PGVEIL_PORT dbname=app user=agent-7 password=$forged sslmode=require" \
		-c 'SELECT 1' 2>&1; then
		die "an expired token was accepted"
	fi
	say "The client only learns 'invalid token'; pgveil's log says why (never the token itself):"
	grep 'token refused' "$DEMO/pgveil.log" | sed 's/^/    /'
}

step_server_view() {
	section "What the server sees"
	say "pg_stat_activity on the real server, read directly (not through pgveil) while agent-7 runs a query:"
	demo_psql "$AGENT_CONN" -c "SELECT pg_sleep(1.5)" >/dev/null &
	local client=$!
	sleep 0.7
	pg_sandbox_psql "$(pg_dir)" -d app -e --pset=footer=off -c \
		"SELECT usename, application_name, client_addr, state FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid()"
	wait "$client" || die "the background query through pgveil failed"
	say "The role is pgveil's; application_name tells the DBA which agent is behind the session."
}

step_audit() {
	section "Every statement is in the audit log"
	local auditor console
	say "audit_mode = strict: no statement ran before its record was on disk. An auditor (group audit)"
	say "reads the log with SQL on the admin console; the last statements of this demo:"
	auditor=$("$TOKEN_BIN" --key "$JWT_DIR/signing.pem" --kid demo-1 --sub carol --groups audit \
		--aud pgveil --iss "$ISS" --ttl 600)
	console="host=127.0.0.1 port=$PGVEIL_PORT dbname=pgveil user=carol password=$auditor sslmode=require"
	demo_psql "$console" -c "SELECT id, subject, decision, rule, rows, sqlstate, masked_columns, substr(sql, 1, 48) AS sql
		FROM queries ORDER BY id DESC LIMIT 12"
	say "Each row is chained to the one before by SHA-256; pgveil --verify-audit checks the whole file:"
	printf '%s$ pgveil --verify-audit .demo/audit.db%s\n' "$DIM" "$RESET"
	"$PGVEIL_BIN" --verify-audit "$DEMO/audit.db" | sed 's/^/    /'
}

step_stop() {
	section "Stopping"
	if [ "$KEEP" = yes ]; then
		say "--keep: leaving PostgreSQL (port $PG_PORT) and pgveil (port $PGVEIL_PORT) running."
		say "Try: psql \"host=127.0.0.1 port=$PGVEIL_PORT dbname=app user=agent-7 sslmode=require password=\$(cat .demo/jwt/token)\""
		say "Stop them with: scripts/demo.sh --stop"
		return
	fi
	say "pgveil gets SIGTERM (finish sessions, exit); the PostgreSQL sandbox is stopped and removed."
	stop_pgveil
	if [ -s "$DEMO/pgveil.log" ]; then
		say "pgveil's log:"
		sed 's/^/    /' "$DEMO/pgveil.log" | tail -n 15
	fi
	stop_all
	say "Done."
}

# New steps (masking, a blocked DROP, the audit rows) slot in before step_stop.
STEPS=(
	step_setup
	step_build
	step_postgres
	step_identity
	step_pgveil
	step_query
	step_mask
	step_guard
	step_approval
	step_refused
	step_server_view
	step_audit
	step_stop
)

# --------------------------------------------------------------------------

case ${1:-} in
--keep) KEEP=yes ;;
--stop)
	mkdir -p "$DEMO"
	stop_all
	exit 0
	;;
-h | --help)
	sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
"") ;;
*) die "unknown argument: $1 (try --help)" ;;
esac

mkdir -p "$DEMO"
cd "$SRCDIR"
# A previous run that was killed hard may have left something running.
stop_all
trap on_exit EXIT
trap 'exit 130' INT TERM

printf '%spgveil demo%s: a PostgreSQL proxy between AI agents and the database\n' "$BOLD" "$RESET"
for step in "${STEPS[@]}"; do
	"$step"
done
