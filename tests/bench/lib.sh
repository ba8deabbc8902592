# shellcheck shell=bash
# What the benchmarks in tests/bench/ share: the working directories, a
# sandbox PostgreSQL, PgBouncer and pgveil processes reached over TCP on
# 127.0.0.1, pgbench against one of them, cleanup on exit, medians and
# ratios. Sourced by run.sh and stream.sh once they have set SRCDIR; see
# tests/bench/README.md.
#
# The caller reads its options (bench_option takes those both benchmarks
# have), then calls bench_init, which needs BENCH_DIR, BUILD (yes/no), KEEP
# (yes/no), CLIENTS (sizes max_connections and the pools) and
# PGVEIL_WORKERS. BENCH_TAG is the prefix of messages (default "bench").
#
# Targets are named: "direct" (PostgreSQL itself), "pgbouncer", and any name
# given to bench_start_pgveil (its process, port and directory go by it).

# shellcheck source=scripts/pg-sandbox.sh
. "$SRCDIR/scripts/pg-sandbox.sh"

BENCH_TAG=${BENCH_TAG:-bench}

log() { printf '%s: %s\n' "$BENCH_TAG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$BENCH_TAG" "$*" >&2; exit 1; }

# bench_need_numbers VAR...: dies unless every named variable is a whole number.
bench_need_numbers() {
	local v
	for v in "$@"; do
		case ${!v} in '' | *[!0-9]*) die "$v must be a number, not '${!v}'" ;; esac
	done
}

# bench_parse_options OWN ARGS...: reads the command line. "OWN ARGS..."
# takes an option of the caller's own at the head of ARGS, setting
# BENCH_SHIFT to the words it used, or returns 1; bench_option takes those
# both benchmarks have. Anything else calls the caller's usage and exits 2.
bench_parse_options() {
	local own=$1
	shift
	while [ $# -gt 0 ]; do
		if ! "$own" "$@" && ! bench_option "$@"; then
			echo "$BENCH_TAG: unknown option: $1" >&2
			usage >&2
			exit 2
		fi
		[ $# -ge "$BENCH_SHIFT" ] || die "$1 needs a value"
		shift "$BENCH_SHIFT"
	done
}

# bench_option ARGS...: takes the option at the head of ARGS when it is one
# both benchmarks have (--rounds, --targets, --modes, --no-build, --keep,
# -h), setting BENCH_SHIFT to the words it used; returns 1 otherwise. -h
# calls the caller's usage and exits.
# shellcheck disable=SC2034 # the caller reads what it sets
bench_option() {
	BENCH_SHIFT=2
	case $1 in
	--rounds) ROUNDS=${2:-} ;;
	--targets) TARGETS=${2:-} ;;
	--modes) MODES=${2:-} ;;
	--no-build) BUILD=no BENCH_SHIFT=1 ;;
	--keep) KEEP=yes BENCH_SHIFT=1 ;;
	-h | --help) usage; exit 0 ;;
	*) return 1 ;;
	esac
}

# bench_init: the working directories and the cleanup on exit.
bench_init() {
	command -v pgbench >/dev/null || die "pgbench not found (scripts/setup-debian.sh installs it)"
	mkdir -p "$BENCH_DIR"
	BENCH_DIR=$(cd "$BENCH_DIR" && pwd -P)
	# As root, PostgreSQL and PgBouncer run as user postgres: their
	# directories must be reachable by it, or they go to /tmp.
	IS_ROOT=no
	[ "$(id -u)" -ne 0 ] || IS_ROOT=yes
	RUN_DIR=$BENCH_DIR
	if [ "$IS_ROOT" = yes ] && ! runuser -u postgres -- test -x "$BENCH_DIR"; then
		RUN_DIR=$(mktemp -d /tmp/pgveil-bench.XXXXXX)
	fi
	PG_DIR=$RUN_DIR/pg
	BOUNCER_DIR=$RUN_DIR/pgbouncer
	trap cleanup EXIT
	trap 'exit 130' INT TERM
}

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
declare -A PGVEIL_PIDS=() PGVEIL_PORTS=()
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
# The pid of the PgBouncer process itself (as root, BOUNCER_PID is runuser's).
bouncer_pid() {
	local pid=""
	[ ! -f "$BOUNCER_DIR/pgbouncer.pid" ] || pid=$(cat "$BOUNCER_DIR/pgbouncer.pid" 2>/dev/null || true)
	echo "${pid:-$BOUNCER_PID}"
}
cleanup() {
	local rc=$? name
	trap - EXIT INT TERM
	if [ "$KEEP" = yes ]; then
		local left=""
		for name in "${!PGVEIL_PIDS[@]}"; do left+=", $name pid ${PGVEIL_PIDS[$name]}"; done
		log "--keep: left running (PostgreSQL in $PG_DIR, PgBouncer pid ${BOUNCER_PID:-none}${left})"
		exit "$rc"
	fi
	for name in "${!PGVEIL_PIDS[@]}"; do stop_pid "${PGVEIL_PIDS[$name]}"; done
	[ ! -f "$BOUNCER_DIR/pgbouncer.pid" ] || stop_pid "$(bouncer_pid)"
	stop_pid "$BOUNCER_PID"
	PG_SANDBOX_QUIET=1 pg_sandbox_destroy "$PG_DIR" || true
	[ "$RUN_DIR" = "$BENCH_DIR" ] || rm -rf "$RUN_DIR"
	exit "$rc"
}
# --------------------------------------------------------------------------
# pgveil binary: $PGVEIL_BIN, else $PGVEIL_BUILDDIR/pgveil, else a release
# build (no --enable-debug, no --enable-asan, -O2) in tmp/build-release.

PGVEIL_SKIP=""
find_pgveil() {
	if [ -n "${PGVEIL_BIN:-}" ]; then
		[ -x "$PGVEIL_BIN" ] || PGVEIL_SKIP="PGVEIL_BIN=$PGVEIL_BIN is not an executable"
	elif [ -n "${PGVEIL_BUILDDIR:-}" ]; then
		PGVEIL_BIN=$PGVEIL_BUILDDIR/pgveil
		[ -x "$PGVEIL_BIN" ] || PGVEIL_SKIP="no pgveil binary in PGVEIL_BUILDDIR=$PGVEIL_BUILDDIR"
	else
		build_pgveil
	fi
	if [ -z "$PGVEIL_SKIP" ] && ldd "$PGVEIL_BIN" 2>/dev/null | grep -qE 'libasan|libubsan'; then
		log "warning: $PGVEIL_BIN is built with sanitizers: its numbers say little"
	fi
}
build_pgveil() {
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

# start_postgres WHAT [pg_sandbox_start options]: a fresh sandbox on a free
# port (PG_PORT); WHAT says in the log what the options load.
start_postgres() {
	local what=$1 maxconn=$((CLIENTS * 3 + 20))
	shift
	[ "$maxconn" -ge 100 ] || maxconn=100
	PG_PORT=$(free_port 55500)
	PG_SANDBOX_QUIET=1 pg_sandbox_destroy "$PG_DIR"
	log "starting PostgreSQL on 127.0.0.1:$PG_PORT${what:+ and $what}"
	PG_SANDBOX_QUIET=1 PG_SANDBOX_MAX_CONNECTIONS=$maxconn \
		pg_sandbox_start "$PG_DIR" "$PG_PORT" "$@" || die "PostgreSQL sandbox failed"
}
postgres_version() { as_server_user "$(_pgsb_bindir)/postgres" --version | awk '{print $3}'; }

# PgBouncer and pgveil both reach the server over TCP on 127.0.0.1 with
# SCRAM, as user app_agent, the way pgbench does in the direct runs. Both
# serve database bench.
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

# bench_start_pgveil NAME RULES: a pgveil process named NAME (directory
# $BENCH_DIR/NAME, port PGVEIL_PORTS[NAME], pid PGVEIL_PIDS[NAME]) checking
# statements against the rules file RULES, with the audit log
# PGVEIL_AUDIT_OF[NAME] (off, async or strict; off by default) in its
# directory. Returns 1, with the reason in PGVEIL_START_ERROR, when it does
# not start.
declare -A PGVEIL_AUDIT_OF=()
bench_start_pgveil() {
	local name=$1 rules=$2 dir=$BENCH_DIR/$1 port pid audit=${PGVEIL_AUDIT_OF[$1]:-off} audit_lines
	port=$(free_port 6510)
	rm -rf "$dir"
	mkdir -p "$dir"
	audit_lines="audit_db ="
	[ "$audit" = off ] || audit_lines="audit_db = $dir/audit.db
audit_mode = $audit"
	cat >"$dir/pgveil.ini" <<-EOF
		[pgveil]
		listen_addr = 127.0.0.1
		listen_port = $port
		workers = $PGVEIL_WORKERS
		max_client_conn = 1000
		dev_trust_auth = yes
		log_level = warn
		rules = $rules
		default_action = block
		$audit_lines

		[databases]
		bench = host=127.0.0.1 port=$PG_PORT dbname=bench user=app_agent password=secret sslmode=disable
	EOF
	"$PGVEIL_BIN" -c "$dir/pgveil.ini" 2>"$dir/pgveil.log" &
	pid=$!
	if ! wait_port "$port" "$pid"; then
		tail -n 20 "$dir/pgveil.log" >&2 || true
		PGVEIL_START_ERROR="$name did not start: $(grep -v '^$' "$dir/pgveil.log" | tail -n 1) (log: $dir/pgveil.log)"
		stop_pid "$pid"
		return 1
	fi
	PGVEIL_PIDS[$name]=$pid
	PGVEIL_PORTS[$name]=$port
	log "$name $("$PGVEIL_BIN" --version 2>/dev/null | awk '{print $2; exit}') on 127.0.0.1:$port ($PGVEIL_BIN, rules $rules, audit $audit)"
}

# bench_start_targets: starts every target of TARGETS and marks those that
# run in ACTIVE[TARGET]. Targets: direct, pgbouncer, and the pgveil processes
# named in PGVEIL_RULES_OF (name -> rules file). One that does not start is
# skipped, with its reason in SKIPPED[TARGET].
declare -A ACTIVE=() SKIPPED=() PGVEIL_RULES_OF=()
bench_start_targets() {
	local t
	for t in $TARGETS; do
		case $t in
		direct) ACTIVE[direct]=1 ;;
		pgbouncer)
			if start_pgbouncer; then ACTIVE[pgbouncer]=1; else SKIPPED[pgbouncer]="PgBouncer did not start"; fi
			;;
		*)
			[ -n "${PGVEIL_RULES_OF[$t]:-}" ] || die "unknown target: $t (direct, pgbouncer, ${!PGVEIL_RULES_OF[*]})"
			PGVEIL_START_ERROR=""
			if [ -n "$PGVEIL_SKIP" ]; then
				SKIPPED[$t]=$PGVEIL_SKIP
			elif bench_start_pgveil "$t" "${PGVEIL_RULES_OF[$t]}"; then
				ACTIVE[$t]=1
			else
				SKIPPED[$t]=$PGVEIL_START_ERROR
			fi
			[ -z "${SKIPPED[$t]:-}" ] || log "$t: SKIPPED: ${SKIPPED[$t]}"
			;;
		esac
	done
}

# --------------------------------------------------------------------------
# measuring

# bench_client TARGET COMMAND [ARGS...]: runs a libpq client (pgbench, psql)
# with its connection to TARGET in the environment (PGHOST, PGPORT, PGUSER,
# PGDATABASE=bench). Only the direct runs know the server password; the
# proxies hold it themselves. pgveil callers are user agent-bench
# (dev_trust_auth).
bench_client() {
	local target=$1 port user=app_agent
	shift
	case $target in
	direct) port=$PG_PORT ;;
	pgbouncer) port=$BOUNCER_PORT ;;
	*) port=${PGVEIL_PORTS[$target]} user=agent-bench ;;
	esac
	local pw=(-u PGPASSWORD)
	[ "$target" != direct ] || pw=(PGPASSWORD=secret)
	env "${pw[@]}" PGCONNECT_TIMEOUT=10 PGHOST=127.0.0.1 PGPORT="$port" PGUSER="$user" \
		PGDATABASE=bench "$@"
}

# From a pgbench output file: tps (without the initial connection time) and
# the average latency in ms, or "error" for each.
pgbench_tps_latency() { # FILE
	local tps lat
	tps=$(awk '/^tps = / && /(without initial connection time|excluding connections establishing)/ { print $3; exit }' "$1")
	lat=$(awk '/^latency average = / { print $4; exit }' "$1")
	echo "${tps:-error} ${lat:-error}"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "error"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# CPU time (user and system, in clock ticks) a pgveil process has used:
# all of it, or only that of its threads named NAME (pgveil-audit: the
# audit writer). Empty when the process is gone.
proc_cpu_ticks() { # PID [NAME]
	local pid=$1 name=${2:-} f total=0 comm fields
	if [ -z "$name" ]; then
		fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || return 0
		awk '{ print $12 + $13 }' <<<"$fields"
		return 0
	fi
	for f in /proc/"$pid"/task/*; do
		comm=$(cat "$f/comm" 2>/dev/null) || continue
		[ "$comm" = "$name" ] || continue
		fields=$(sed 's/^.*) //' "$f/stat" 2>/dev/null) || continue
		total=$((total + $(awk '{ print $12 + $13 }' <<<"$fields")))
	done
	echo "$total"
}

# cpu_per_tx BEFORE AFTER TRANSACTIONS: microseconds of CPU per transaction
# between two proc_cpu_ticks readings, or "-" (a reading missing: the
# process is gone).
cpu_per_tx() {
	awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" \
		'BEGIN { if (a == "" || b == "" || n == "" || n == 0) print "-"; else printf "%.1f\n", (b - a) * 1e6 / hz / n }'
}

# bench_measure RUN: ROUNDS rounds of "RUN TARGET MODE" for every mode of
# MODES and every active target. RUN writes pgbench's output to
# $BENCH_DIR/pgbench-TARGET-MODE.out and prints "tps latency_ms [cpu
# audit_cpu]" (or "error error"; cpu and audit_cpu: pgveil's CPU time and
# its audit writer's per transaction, in microseconds, or "-"). Rounds are
# interleaved (round 1 of every target, then round 2, ...) so that a change
# in the machine's background load spreads over all targets. Fills
# TPS[MODE,TARGET], LAT[MODE,TARGET], CPU[MODE,TARGET] and
# AUDIT_CPU[MODE,TARGET] with the medians, and TPS_ROUND[MODE,TARGET,ROUND]
# with each round's tps.
declare -A TPS=() LAT=() CPU=() AUDIT_CPU=() TPS_ROUND=()
# shellcheck disable=SC2034 # TPS, LAT, CPU and AUDIT_CPU are read by the caller
bench_measure() {
	local run=$1 r m t tps lat cpu acpu out
	local -A tps_list=() lat_list=() cpu_list=() acpu_list=()
	for r in $(seq "$ROUNDS"); do
		for m in $MODES; do
			for t in $TARGETS; do
				[ -n "${ACTIVE[$t]:-}" ] || continue
				read -r tps lat cpu acpu < <("$run" "$t" "$m")
				out=$BENCH_DIR/pgbench-$t-$m.out
				[ "$ROUNDS" -eq 1 ] || cp "$out" "$BENCH_DIR/pgbench-$t-$m.round$r.out"
				if [ "$tps" = error ]; then
					log "$m/$t: pgbench failed: $(tail -n 3 "$out" | tr '\n' ' ')"
					continue
				fi
				TPS_ROUND[$m,$t,$r]=$tps
				tps_list[$m,$t]+=" $tps"
				lat_list[$m,$t]+=" $lat"
				[ "${cpu:--}" = - ] || cpu_list[$m,$t]+=" $cpu"
				[ "${acpu:--}" = - ] || acpu_list[$m,$t]+=" $acpu"
				log "round $r/$ROUNDS $m/$t: tps $tps, latency $lat ms${cpu:+, pgveil CPU $cpu us/tx}${acpu:+ (audit writer $acpu)}"
			done
		done
	done
	for m in $MODES; do
		for t in $TARGETS; do
			[ -n "${ACTIVE[$t]:-}" ] || continue
			TPS[$m,$t]=$(echo "${tps_list[$m,$t]:-}" | median)
			LAT[$m,$t]=$(echo "${lat_list[$m,$t]:-}" | median)
			CPU[$m,$t]=-
			AUDIT_CPU[$m,$t]=-
			[ -z "${cpu_list[$m,$t]:-}" ] || CPU[$m,$t]=$(echo "${cpu_list[$m,$t]}" | median)
			[ -z "${acpu_list[$m,$t]:-}" ] || AUDIT_CPU[$m,$t]=$(echo "${acpu_list[$m,$t]}" | median)
		done
	done
}

# bench_runs: how many runs one round makes (active targets × modes).
bench_runs() {
	local n=0 m t
	for m in $MODES; do for t in $TARGETS; do [ -z "${ACTIVE[$t]:-}" ] || n=$((n + 1)); done; done
	echo "$n"
}

# bench_write_results TEXT_FUNCTION HEADER ROW_FUNCTION: the report. Prints
# TEXT_FUNCTION's output (trailing blanks removed) and keeps it in
# results.txt; results.csv gets the line HEADER, then "ROW_FUNCTION MODE
# TARGET" for every mode and active target.
bench_write_results() {
	local text=$1 header=$2 row=$3 m t
	"$text" | sed 's/ *$//' | tee "$BENCH_DIR/results.txt"
	{
		echo "$header"
		for m in $MODES; do
			for t in $TARGETS; do
				[ -z "${ACTIVE[$t]:-}" ] || "$row" "$m" "$t"
			done
		done
	} >"$BENCH_DIR/results.csv"
	log "results in ${BENCH_DIR#"$SRCDIR"/}/results.txt and results.csv; pgbench output in pgbench-*.out"
}

# bench_check_modes: dies on a mode of MODES pgbench does not have.
bench_check_modes() {
	local m
	for m in $MODES; do
		case $m in simple | prepared | extended) ;; *) die "unknown mode: $m (simple, extended, prepared)" ;; esac
	done
}

# round_ratio MODE A B: the median over the rounds of (A's tps / B's tps in
# the same round), or "-". Runs of one round are close in time, so this
# cancels much of a change in the machine's load between rounds.
round_ratio() {
	local r list=""
	for r in $(seq "$ROUNDS"); do
		[ -z "${TPS_ROUND[$1,$2,$r]:-}" ] || [ -z "${TPS_ROUND[$1,$3,$r]:-}" ] ||
			list+=" $(ratio "${TPS_ROUND[$1,$2,$r]}" "${TPS_ROUND[$1,$3,$r]}")"
	done
	list=$(echo "$list" | tr ' ' '\n' | grep -v '^-$' | tr '\n' ' ')
	[ -n "${list// /}" ] || { echo -; return; }
	echo "$list" | median | awk '{ printf "%.3f\n", $1 }'
}

ratio() { # A B -> A/B or "-"
	awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "error" || b == "error" || b == 0) print "-"; else printf "%.3f\n", a / b }'
}
