#!/usr/bin/env bash
# Throughput of pgveil against direct PostgreSQL and PgBouncer, in one run.
# See tests/bench/README.md. A benchmark, not a test: exits 0 whatever the
# ratios, non-zero only when it could not measure at all.
#
#   tests/bench/run.sh [-c CLIENTS] [-j THREADS] [-T SECONDS] [-s SCALE]
#                      [--rounds N] [--targets "direct pgbouncer pgveil"]
#                      [--modes "simple prepared"] [--no-build] [--keep]
set -euo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck source=scripts/pg-sandbox.sh
. "$SRCDIR/scripts/pg-sandbox.sh"

CLIENTS=${BENCH_CLIENTS:-8}
THREADS=${BENCH_THREADS:-2}
DURATION=${BENCH_DURATION:-15}
SCALE=${BENCH_SCALE:-10}
ROUNDS=${BENCH_ROUNDS:-1}
WARMUP=${BENCH_WARMUP:-5}
TARGETS=${BENCH_TARGETS:-direct pgbouncer pgveil}
MODES=${BENCH_MODES:-simple prepared}
BENCH_DIR=${BENCH_DIR:-$SRCDIR/tmp/bench}
# pgveil checks every statement against these rules (the shipped defaults).
PGVEIL_RULES=${PGVEIL_RULES:-$SRCDIR/rules/default.rules}
PGVEIL_WORKERS=${BENCH_PGVEIL_WORKERS:-0}
BUILD=yes
KEEP=no

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case $1 in
	-c) CLIENTS=$2; shift ;;
	-j) THREADS=$2; shift ;;
	-T) DURATION=$2; shift ;;
	-s) SCALE=$2; shift ;;
	--rounds) ROUNDS=$2; shift ;;
	--targets) TARGETS=$2; shift ;;
	--modes) MODES=$2; shift ;;
	--no-build) BUILD=no ;;
	--keep) KEEP=yes ;;
	-h | --help) usage; exit 0 ;;
	*) echo "bench: unknown option: $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

for v in CLIENTS THREADS DURATION SCALE ROUNDS WARMUP; do
	case ${!v} in '' | *[!0-9]*) die "$v must be a number, not '${!v}'" ;; esac
done
command -v pgbench >/dev/null || die "pgbench not found (scripts/setup-debian.sh installs it)"

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd -P)

# As root, PostgreSQL and PgBouncer run as user postgres: their directories
# must be reachable by it, or they go to /tmp.
IS_ROOT=no
[ "$(id -u)" -ne 0 ] || IS_ROOT=yes
RUN_DIR=$BENCH_DIR
if [ "$IS_ROOT" = yes ] && ! runuser -u postgres -- test -x "$BENCH_DIR"; then
	RUN_DIR=$(mktemp -d /tmp/pgveil-bench.XXXXXX)
fi
PG_DIR=$RUN_DIR/pg
BOUNCER_DIR=$RUN_DIR/pgbouncer
PGVEIL_DIR=$BENCH_DIR/pgveil

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
	local p=$1
	while port_busy "$p"; do p=$((p + 1)); done
	echo "$p"
}
wait_port() { # PORT PID NAME
	for _ in $(seq 100); do
		port_busy "$1" && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}
as_server_user() {
	if [ "$IS_ROOT" = yes ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# --------------------------------------------------------------------------
# cleanup

BOUNCER_PID=""
PGVEIL_PID=""
stop_pid() {
	local pid=$1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ "$KEEP" = yes ]; then
		log "--keep: left running (PostgreSQL in $PG_DIR, PgBouncer pid ${BOUNCER_PID:-none}, pgveil pid ${PGVEIL_PID:-none})"
		exit "$rc"
	fi
	stop_pid "$PGVEIL_PID"
	if [ -f "$BOUNCER_DIR/pgbouncer.pid" ]; then
		stop_pid "$(cat "$BOUNCER_DIR/pgbouncer.pid" 2>/dev/null || true)"
	fi
	stop_pid "$BOUNCER_PID"
	PG_SANDBOX_QUIET=1 pg_sandbox_destroy "$PG_DIR" || true
	[ "$RUN_DIR" = "$BENCH_DIR" ] || rm -rf "$RUN_DIR"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------
# pgveil binary: $PGVEIL_BIN, else $PGVEIL_BUILDDIR/pgveil, else a release
# build (no --enable-debug, no --enable-asan, -O2) in tmp/build-release.

PGVEIL_SKIP=""
find_pgveil() {
	if [ -n "${PGVEIL_BIN:-}" ]; then
		[ -x "$PGVEIL_BIN" ] || PGVEIL_SKIP="PGVEIL_BIN=$PGVEIL_BIN is not an executable"
		return
	fi
	if [ -n "${PGVEIL_BUILDDIR:-}" ]; then
		PGVEIL_BIN=$PGVEIL_BUILDDIR/pgveil
		[ -x "$PGVEIL_BIN" ] || PGVEIL_SKIP="no pgveil binary in PGVEIL_BUILDDIR=$PGVEIL_BUILDDIR"
		return
	fi
	local bdir=$SRCDIR/tmp/build-release
	PGVEIL_BIN=$bdir/pgveil
	if [ "$BUILD" = no ]; then
		[ -x "$PGVEIL_BIN" ] || PGVEIL_SKIP="no binary at $PGVEIL_BIN (and --no-build)"
		return
	fi
	if [ -f "$SRCDIR/config.status" ]; then
		PGVEIL_SKIP="the source tree is configured in place; build a release binary and pass PGVEIL_BIN"
		return
	fi
	log "building a release pgveil in tmp/build-release (log: $BENCH_DIR/build.log)"
	mkdir -p "$bdir"
	if ! { (cd "$SRCDIR" && ./autogen.sh) &&
		(cd "$bdir" && { [ -f Makefile ] || "$SRCDIR/configure" CFLAGS="-O2 -g"; } && make -j"$(nproc)" pgveil); } \
		>"$BENCH_DIR/build.log" 2>&1; then
		PGVEIL_SKIP="the release build failed (see $BENCH_DIR/build.log)"
	fi
}

# --------------------------------------------------------------------------
# servers

start_postgres() {
	local maxconn=$((CLIENTS * 3 + 20))
	[ "$maxconn" -ge 100 ] || maxconn=100
	PG_PORT=$(free_port 55500)
	PG_SANDBOX_QUIET=1 pg_sandbox_destroy "$PG_DIR"
	log "starting PostgreSQL on 127.0.0.1:$PG_PORT and loading pgbench tables (scale $SCALE)"
	PG_SANDBOX_QUIET=1 PG_SANDBOX_MAX_CONNECTIONS=$maxconn \
		pg_sandbox_start "$PG_DIR" "$PG_PORT" --pgbench "$SCALE" || die "PostgreSQL sandbox failed"
	pg_sandbox_psql "$PG_DIR" -d bench -c 'VACUUM ANALYZE' || die "VACUUM failed"
}

# PgBouncer and pgveil both reach the server over TCP on 127.0.0.1 with
# SCRAM, as user app_agent, the way pgbench does in the direct runs.
start_pgbouncer() {
	BOUNCER_PORT=$(free_port 6500)
	rm -rf "$BOUNCER_DIR"
	mkdir -p "$BOUNCER_DIR"
	cat >"$BOUNCER_DIR/pgbouncer.ini" <<-EOF
		[databases]
		bench = host=127.0.0.1 port=$PG_PORT dbname=bench user=app_agent password=secret

		[pgbouncer]
		listen_addr = 127.0.0.1
		listen_port = $BOUNCER_PORT
		unix_socket_dir =
		auth_type = trust
		auth_file = $BOUNCER_DIR/userlist.txt
		pool_mode = session
		max_client_conn = $((CLIENTS * 2 + 20))
		default_pool_size = $((CLIENTS + 5))
		server_tls_sslmode = disable
		ignore_startup_parameters = extra_float_digits
		logfile = $BOUNCER_DIR/pgbouncer.log
		pidfile = $BOUNCER_DIR/pgbouncer.pid
		log_connections = 0
		log_disconnections = 0
	EOF
	echo '"app_agent" ""' >"$BOUNCER_DIR/userlist.txt"
	[ "$IS_ROOT" = no ] || chown -R postgres: "$BOUNCER_DIR"
	# PgBouncer refuses to run as root.
	as_server_user pgbouncer "$BOUNCER_DIR/pgbouncer.ini" >"$BOUNCER_DIR/stderr.log" 2>&1 &
	BOUNCER_PID=$!
	if ! wait_port "$BOUNCER_PORT" "$BOUNCER_PID"; then
		cat "$BOUNCER_DIR/stderr.log" "$BOUNCER_DIR/pgbouncer.log" >&2 2>/dev/null || true
		log "PgBouncer did not start: skipping it"
		return 1
	fi
	log "PgBouncer $(pgbouncer --version | head -n 1 | awk '{print $2}') on 127.0.0.1:$BOUNCER_PORT (pool_mode=session)"
}

start_pgveil() {
	PGVEIL_PORT=$(free_port 6510)
	rm -rf "$PGVEIL_DIR"
	mkdir -p "$PGVEIL_DIR"
	cat >"$PGVEIL_DIR/pgveil.ini" <<-EOF
		[pgveil]
		listen_addr = 127.0.0.1
		listen_port = $PGVEIL_PORT
		workers = $PGVEIL_WORKERS
		max_client_conn = 1000
		dev_trust_auth = yes
		log_level = warn
		rules = $PGVEIL_RULES
		default_action = block

		[databases]
		bench = host=127.0.0.1 port=$PG_PORT dbname=bench user=app_agent password=secret sslmode=disable
	EOF
	"$PGVEIL_BIN" -c "$PGVEIL_DIR/pgveil.ini" 2>"$PGVEIL_DIR/pgveil.log" &
	PGVEIL_PID=$!
	if ! wait_port "$PGVEIL_PORT" "$PGVEIL_PID"; then
		tail -n 20 "$PGVEIL_DIR/pgveil.log" >&2 || true
		PGVEIL_SKIP="pgveil did not start (log: $PGVEIL_DIR/pgveil.log)"
		stop_pid "$PGVEIL_PID"
		PGVEIL_PID=""
		return 1
	fi
	log "pgveil $("$PGVEIL_BIN" --version 2>/dev/null | awk '{print $2; exit}') on 127.0.0.1:$PGVEIL_PORT ($PGVEIL_BIN, rules $PGVEIL_RULES)"
}

# --------------------------------------------------------------------------
# measuring

# pgbench against one target; prints "tps latency_ms" or "error error".
run_pgbench() { # TARGET MODE SECONDS
	local target=$1 mode=$2 secs=$3 port user out
	out=$BENCH_DIR/pgbench-$target-$mode.out
	case $target in
	direct) port=$PG_PORT user=app_agent ;;
	pgbouncer) port=$BOUNCER_PORT user=app_agent ;;
	pgveil) port=$PGVEIL_PORT user=agent-bench ;;
	esac
	# -n: no VACUUM before the run (done once, directly, after loading).
	# Only the direct runs know the server password; the proxies hold it themselves.
	local pw=(-u PGPASSWORD)
	[ "$target" != direct ] || pw=(PGPASSWORD=secret)
	if ! env "${pw[@]}" PGCONNECT_TIMEOUT=10 \
		pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$secs" \
		-h 127.0.0.1 -p "$port" -U "$user" bench >"$out" 2>&1; then
		echo "error error"
		return
	fi
	local tps lat
	tps=$(awk '/^tps = / && /(without initial connection time|excluding connections establishing)/ { print $3; exit }' "$out")
	lat=$(awk '/^latency average = / { print $4; exit }' "$out")
	echo "${tps:-error} ${lat:-error}"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "error"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# --------------------------------------------------------------------------

[[ " $TARGETS " != *" pgveil "* ]] || find_pgveil
if [ -z "$PGVEIL_SKIP" ] && ldd "$PGVEIL_BIN" 2>/dev/null | grep -qE 'libasan|libubsan'; then
	log "warning: $PGVEIL_BIN is built with sanitizers: its numbers say little"
fi

start_postgres
declare -A ACTIVE=()
for t in $TARGETS; do
	case $t in
	direct) ACTIVE[direct]=1 ;;
	pgbouncer) if start_pgbouncer; then ACTIVE[pgbouncer]=1; fi ;;
	pgveil)
		if [ -z "$PGVEIL_SKIP" ] && start_pgveil; then ACTIVE[pgveil]=1; fi
		[ -n "${ACTIVE[pgveil]:-}" ] || log "pgveil: SKIPPED: $PGVEIL_SKIP"
		;;
	*) die "unknown target: $t (direct, pgbouncer, pgveil)" ;;
	esac
done
for m in $MODES; do
	case $m in simple | prepared | extended) ;; *) die "unknown mode: $m" ;; esac
done

if [ "$WARMUP" -gt 0 ]; then
	log "warming up (${WARMUP}s direct)"
	run_pgbench direct simple "$WARMUP" >/dev/null
fi

total=0
for _ in $MODES; do for t in $TARGETS; do [ -z "${ACTIVE[$t]:-}" ] || total=$((total + 1)); done; done
log "measuring: pgbench -S -c $CLIENTS -j $THREADS -T $DURATION, $ROUNDS round(s), $total runs (about $((total * ROUNDS * DURATION))s)"

# Rounds are interleaved (round 1 of every target, then round 2, ...) so
# that a change in the machine's background load spreads over all targets.
declare -A TPS=() LAT=() TPS_LIST=() LAT_LIST=()
for r in $(seq "$ROUNDS"); do
	for m in $MODES; do
		for t in $TARGETS; do
			[ -n "${ACTIVE[$t]:-}" ] || continue
			read -r tps lat < <(run_pgbench "$t" "$m" "$DURATION")
			[ "$ROUNDS" -eq 1 ] || cp "$BENCH_DIR/pgbench-$t-$m.out" "$BENCH_DIR/pgbench-$t-$m.round$r.out"
			if [ "$tps" = error ]; then
				log "$m/$t: pgbench failed: $(tail -n 3 "$BENCH_DIR/pgbench-$t-$m.out" | tr '\n' ' ')"
				continue
			fi
			TPS_LIST[$m,$t]+=" $tps"
			LAT_LIST[$m,$t]+=" $lat"
			log "round $r/$ROUNDS $m/$t: tps $tps, latency $lat ms"
		done
	done
done
for m in $MODES; do
	for t in $TARGETS; do
		[ -n "${ACTIVE[$t]:-}" ] || continue
		TPS[$m,$t]=$(echo "${TPS_LIST[$m,$t]:-}" | median)
		LAT[$m,$t]=$(echo "${LAT_LIST[$m,$t]:-}" | median)
	done
done

# --------------------------------------------------------------------------
# report

ratio() { # A B -> A/B or "-"
	awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "error" || b == "error" || b == 0) print "-"; else printf "%.3f\n", a / b }'
}

{
	echo
	echo "pgbench -S (select only), -c $CLIENTS -j $THREADS -T $DURATION, scale $SCALE, rounds $ROUNDS (median)"
	echo "PostgreSQL $(as_server_user "$(_pgsb_bindir)/postgres" --version | awk '{print $3}'), $(nproc) CPUs;" \
		"every target reached over TCP 127.0.0.1; proxies connect to the server over TCP 127.0.0.1 (SCRAM)"
	echo
	printf '%-9s %-10s %12s %14s %10s %17s\n' mode target tps "latency avg ms" "vs direct" "pgveil/pgbouncer"
	printf '%-9s %-10s %12s %14s %10s %17s\n' --------- ---------- ------------ -------------- ---------- -----------------
	for m in $MODES; do
		for t in $TARGETS; do
			if [ -z "${ACTIVE[$t]:-}" ]; then
				printf '%-9s %-10s %12s %14s %10s %17s\n' "$m" "$t" skipped - - -
				continue
			fi
			vs=$(ratio "${TPS[$m,$t]}" "${TPS[$m,direct]:-}")
			pb=""
			[ "$t" != pgveil ] || pb=$(ratio "${TPS[$m,pgveil]}" "${TPS[$m,pgbouncer]:-}")
			tps_fmt=$(awk -v x="${TPS[$m,$t]}" 'BEGIN { if (x == "error") print x; else printf "%.1f\n", x }')
			lat_fmt=$(awk -v x="${LAT[$m,$t]}" 'BEGIN { if (x == "error") print x; else printf "%.3f\n", x }')
			printf '%-9s %-10s %12s %14s %10s %17s\n' "$m" "$t" "$tps_fmt" "$lat_fmt" "$vs" "$pb"
		done
	done
	echo
} | sed 's/ *$//' | tee "$BENCH_DIR/results.txt"

{
	echo "mode,target,tps,latency_ms,clients,threads,duration_s,scale"
	for m in $MODES; do
		for t in $TARGETS; do
			[ -n "${ACTIVE[$t]:-}" ] || continue
			echo "$m,$t,${TPS[$m,$t]},${LAT[$m,$t]},$CLIENTS,$THREADS,$DURATION,$SCALE"
		done
	done
} >"$BENCH_DIR/results.csv"
log "results in ${BENCH_DIR#"$SRCDIR"/}/results.txt and results.csv; pgbench output in pgbench-*.out"
