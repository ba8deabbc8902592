#!/usr/bin/env bash
# Streaming one large result through pgveil, unmasked and with two masked
# columns, against direct PostgreSQL and PgBouncer, in one run: rows/s, MB/s,
# ratios and pgveil's peak memory. See tests/bench/README.md. A benchmark,
# not a test: exits 0 whatever the ratios, non-zero only when it could not
# measure at all.
#
#   tests/bench/stream.sh [--rows N] [-t STREAMS | -T SECONDS] [--rounds N]
#                         [--targets "direct pgbouncer pgveil pgveil-masked"]
#                         [--modes "simple extended prepared"] [--perf]
#                         [--no-build] [--keep]
set -euo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck source=tests/bench/lib.sh
. "$SRCDIR/tests/bench/lib.sh"

ROWS=${BENCH_ROWS:-1000000}
STREAMS=${BENCH_STREAMS:-3}
DURATION=${BENCH_DURATION:-}
ROUNDS=${BENCH_ROUNDS:-3}
TARGETS=${BENCH_TARGETS:-direct pgbouncer pgveil pgveil-masked}
MODES=${BENCH_MODES:-simple extended prepared}
BENCH_DIR=${BENCH_DIR:-$SRCDIR/tmp/bench-stream}
PGVEIL_WORKERS=${BENCH_PGVEIL_WORKERS:-0}
PERF=no
BUILD=yes
KEEP=no
CLIENTS=1
BENCH_TAG=stream

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
own_option() {
	BENCH_SHIFT=2
	case $1 in
	--rows) ROWS=${2:-} ;;
	-t) STREAMS=${2:-} DURATION="" ;;
	-T) DURATION=${2:-} ;;
	--perf) PERF=yes BENCH_SHIFT=1 ;;
	*) return 1 ;;
	esac
}
bench_parse_options own_option "$@"

bench_init
bench_need_numbers ROWS STREAMS ROUNDS
[ -z "$DURATION" ] || bench_need_numbers DURATION
if [ "$ROWS" -eq 0 ] || [ "$STREAMS" -eq 0 ] || [ "$ROUNDS" -eq 0 ]; then
	die "--rows, -t and --rounds must be at least 1"
fi

STREAM_SQL='SELECT * FROM stream_people;'
SAMPLE_SQL='SELECT email, ssn FROM stream_people LIMIT 1'
MASK_RULES="MASK public.stream_people.email USING email();
MASK public.stream_people.ssn USING partial(0, '***-**-', 4);"

# --------------------------------------------------------------------------
# the table

# Loads ROWS rows of about 100 bytes into bench.stream_people and sets
# RESULT_BYTES (what the server sends for SELECT *: every DataRow message,
# text format) and TABLE_BYTES (its size on disk).
load_table() {
	pg_sandbox_psql "$PG_DIR" -d postgres -c 'CREATE DATABASE bench OWNER app_agent' || die "CREATE DATABASE failed"
	pg_sandbox_psql "$PG_DIR" -d bench -U app_agent -v rows="$ROWS" <<-'EOF' || die "loading stream_people failed"
		CREATE TABLE stream_people (
		  id      integer NOT NULL,
		  name    text NOT NULL,
		  email   text NOT NULL,
		  ssn     text NOT NULL,
		  city    text NOT NULL,
		  amount  numeric(10,2) NOT NULL,
		  created timestamptz NOT NULL
		);
		INSERT INTO stream_people
		SELECT i, f || ' ' || l, lower(f) || '.' || lower(l) || i || '@example.com',
		       lpad((100 + i * 7 % 800)::text, 3, '0') || '-' || lpad((10 + i % 89)::text, 2, '0')
		         || '-' || lpad((i::bigint * 7919 % 10000)::text, 4, '0'),
		       c, (i::bigint * 7907 % 5000000) / 100.0,
		       timestamptz '2024-01-01 00:00:00+00' + i * interval '17 seconds'
		FROM (SELECT i,
		             (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken','Margaret','Dennis'])[1 + i % 10] AS f,
		             (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson','Hamilton','Ritchie'])[1 + i / 10 % 10] AS l,
		             (ARRAY['Lisbon','Oslo','Kraków','Zürich','Lyon','Turin','Ghent','Bergen','Porto','Graz'])[1 + i / 100 % 10] AS c
		      FROM generate_series(1, :rows) AS i) AS s;
	EOF
	pg_sandbox_psql "$PG_DIR" -d bench -c 'VACUUM ANALYZE stream_people' || die "VACUUM failed"
	# A DataRow: type byte, length, field count, and a length before every field.
	read -r RESULT_BYTES TABLE_BYTES < <(pg_sandbox_psql "$PG_DIR" -d bench -tA -F ' ' -c "
		SELECT sum(1 + 4 + 2 + 7 * 4 + octet_length(id::text) + octet_length(name) + octet_length(email)
		           + octet_length(ssn) + octet_length(city) + octet_length(amount::text)
		           + octet_length(created::text)),
		       pg_table_size('stream_people')
		FROM stream_people") || die "measuring stream_people failed"
}

# --------------------------------------------------------------------------
# checks before measuring

# The masked pgveil must mask: its rows are meaningless otherwise. Sets
# MASK_CHECK (a line for the report); a pgveil-masked that does not mask is
# taken out of ACTIVE.
check_masking() {
	local out email ssn
	if [ -z "${ACTIVE[pgveil-masked]:-}" ]; then
		MASK_CHECK="not made: ${SKIPPED[pgveil-masked]:-pgveil-masked is not among the targets}"
		return
	fi
	out=$(bench_client pgveil-masked psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 -c "$SAMPLE_SQL" 2>&1) || true
	email=${out%%|*} ssn=${out#*|}
	if [[ $out == *'|'* && $email == *'***@'* && $ssn == '***-**-'* ]]; then
		MASK_CHECK="pgveil-masked masks: $SAMPLE_SQL gives email '$email', ssn '$ssn'"
		log "$MASK_CHECK"
		return
	fi
	out=$(printf '%s' "$out" | tr '\n' ' ' | cut -c 1-300)
	unset 'ACTIVE[pgveil-masked]'
	SKIPPED[pgveil-masked]="it does not mask: $SAMPLE_SQL gave '$out'"
	MASK_CHECK="pgveil-masked DOES NOT MASK ($SAMPLE_SQL gave '$out'): not measured"
	log "$MASK_CHECK"
}

# The unmasked pgveil shows the values as stored. Sets PLAIN_CHECK.
check_plain() {
	local out
	PLAIN_CHECK=""
	[ -n "${ACTIVE[pgveil]:-}" ] || return 0
	out=$(bench_client pgveil psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 -c "$SAMPLE_SQL" 2>&1 | tr '\n' ' ' | cut -c 1-300) || true
	out=${out% }
	if [[ $out == *'@example.com|'* && $out != *'***'* ]]; then
		PLAIN_CHECK="pgveil (no masks) gives email '${out%%|*}', ssn '${out#*|}'"
	else
		PLAIN_CHECK="pgveil (no masks) gave '$out' for $SAMPLE_SQL: expected the stored values"
	fi
	log "$PLAIN_CHECK"
}

# --------------------------------------------------------------------------
# measuring

# One run: STREAMS streams of the whole table (or DURATION seconds of them)
# by one pgbench client; prints "tps latency_ms" or "error error".
run_stream() { # TARGET MODE
	local out=$BENCH_DIR/pgbench-$1-$2.out len=(-t "$STREAMS")
	[ -z "$DURATION" ] || len=(-T "$DURATION")
	# -n: no VACUUM before the run (done once, after loading).
	if ! bench_client "$1" pgbench -n -f "$BENCH_DIR/stream.sql" -M "$2" -c 1 -j 1 "${len[@]}" >"$out" 2>&1; then
		echo "error error"
		return
	fi
	pgbench_tps_latency "$out"
}

# The processes whose memory and CPU time the report shows: PgBouncer and
# each pgveil.
declare -A PROC_PIDS=()
proc_pids() {
	local t
	for t in $TARGETS; do
		[ -n "${ACTIVE[$t]:-}" ] || continue
		case $t in
		direct) ;;
		pgbouncer) PROC_PIDS[$t]=$(bouncer_pid) ;;
		*) PROC_PIDS[$t]=${PGVEIL_PIDS[$t]} ;;
		esac
	done
}
proc_kb() { awk -v k="$2:" '$1 == k { print $2; exit }' "/proc/$1/status" 2>/dev/null || echo error; } # PID FIELD

# CPU time (user and system, all threads) in clock ticks. The fields after
# "pid (comm) ": state is the first, utime the 12th, stime the 13th.
proc_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }' || echo error; } # PID

# proc_snapshot WHEN: records VmRSS, VmHWM and the CPU time of every process
# in PROC_PIDS.
declare -A PROC=()
proc_snapshot() {
	local t
	for t in "${!PROC_PIDS[@]}"; do
		PROC[$1,rss,$t]=$(proc_kb "${PROC_PIDS[$t]}" VmRSS)
		PROC[$1,hwm,$t]=$(proc_kb "${PROC_PIDS[$t]}" VmHWM)
		PROC[$1,cpu,$t]=$(proc_ticks "${PROC_PIDS[$t]}")
	done
}

# --perf: a profile of each pgveil process over one run in the first mode.
profile_pgveil() { # NAME
	local name=$1 mode=${MODES%% *} data=$BENCH_DIR/perf-$1.data ppid
	command -v perf >/dev/null || { log "--perf: perf not found"; return; }
	perf record -F 999 -p "${PGVEIL_PIDS[$name]}" -o "$data" >"$BENCH_DIR/perf-$name.log" 2>&1 &
	ppid=$!
	sleep 1
	run_stream "$name" "$mode" >/dev/null
	kill -INT "$ppid" 2>/dev/null || true
	wait "$ppid" || true
	if ! { perf report -i "$data" --stdio --no-children --sort dso -F overhead,dso --percent-limit 1 &&
		perf report -i "$data" --stdio --no-children --sort dso,sym --percent-limit 0.5; } \
		>"$BENCH_DIR/perf-$name.txt" 2>>"$BENCH_DIR/perf-$name.log"; then
		log "--perf: no profile of $name (see $BENCH_DIR/perf-$name.log)"
		return
	fi
	log "--perf: profile of $name over one $mode run in ${BENCH_DIR#"$SRCDIR"/}/perf-$name.txt"
}

# --------------------------------------------------------------------------

[[ " $TARGETS " != *" pgveil"* ]] || find_pgveil

rm -f "$BENCH_DIR"/pgbench-*.out "$BENCH_DIR"/perf-* # an earlier run's
printf '%s\n' "$STREAM_SQL" >"$BENCH_DIR/stream.sql"
printf 'ALLOW ALL;\n' >"$BENCH_DIR/unmasked.rules"
printf 'ALLOW ALL;\n%s\n' "$MASK_RULES" >"$BENCH_DIR/masked.rules"
PGVEIL_RULES_OF[pgveil]=$BENCH_DIR/unmasked.rules
PGVEIL_RULES_OF[pgveil-masked]=$BENCH_DIR/masked.rules
bench_check_modes

start_postgres ""
log "loading $ROWS rows into stream_people"
load_table
log "stream_people: $ROWS rows, $((TABLE_BYTES / 1000000)) MB on disk, $((RESULT_BYTES / 1000000)) MB as DataRows"
bench_start_targets
check_masking
check_plain
proc_pids
proc_snapshot start

log "warming up (one direct stream)"
run_stream direct simple >/dev/null

total=$(bench_runs)
if [ -n "$DURATION" ]; then
	log "measuring: pgbench -f stream.sql -c 1 -j 1 -T $DURATION, $ROUNDS round(s), $total runs"
else
	log "measuring: pgbench -f stream.sql -c 1 -j 1 -t $STREAMS, $ROUNDS round(s), $total runs of $STREAMS streams"
fi
bench_measure run_stream
proc_snapshot end

if [ "$PERF" = yes ]; then
	for t in pgveil pgveil-masked; do
		[ -z "${ACTIVE[$t]:-}" ] || profile_pgveil "$t"
	done
fi

# --------------------------------------------------------------------------
# report

per_s() { # TPS FACTOR DECIMALS -> TPS × FACTOR
	awk -v x="$1" -v f="$2" -v d="$3" 'BEGIN { if (x == "" || x == "error") print "error"; else printf "%.*f\n", d, x * f }'
}
mb() { awk -v x="$1" 'BEGIN { if (x == "" || x == "error") print "-"; else printf "%.1f\n", x / 1024 }'; } # kB -> MiB

report_table() {
	local m t vs
	printf '%-9s %-14s %11s %8s %9s %10s\n' mode target rows/s MB/s s/stream "vs direct"
	printf '%-9s %-14s %11s %8s %9s %10s\n' --------- -------------- ----------- -------- --------- ----------
	for m in $MODES; do
		for t in $TARGETS; do
			if [ -z "${ACTIVE[$t]:-}" ]; then
				printf '%-9s %-14s %11s %8s %9s %10s\n' "$m" "$t" skipped - - -
				continue
			fi
			vs=$(round_ratio "$m" "$t" direct)
			printf '%-9s %-14s %11s %8s %9s %10s\n' "$m" "$t" "$(per_s "${TPS[$m,$t]}" "$ROWS" 0)" \
				"$(per_s "${TPS[$m,$t]}" "$((RESULT_BYTES))e-6" 1)" "$(per_s "${LAT[$m,$t]}" 0.001 3)" "$vs"
		done
	done
}

report_ratios() {
	local m a b label pair
	printf '%-48s' "ratio of rows/s (median of per-round ratios)"
	for m in $MODES; do printf ' %9s' "$m"; done
	echo
	for pair in "pgveil direct" "pgveil pgbouncer" "pgveil-masked pgveil" "pgveil-masked direct"; do
		read -r a b <<<"$pair"
		label="$a / $b"
		[ "$pair" != "pgveil-masked pgveil" ] || label="$label (issue's goal: >= 0.8)"
		printf '%-48s' "$label"
		for m in $MODES; do printf ' %9s' "$(round_ratio "$m" "$a" "$b")"; done
		echo
	done
}

# How many streams went through TARGET during the measured runs.
streams_of() { # TARGET
	local m files=()
	for m in $MODES; do
		if [ "$ROUNDS" -eq 1 ]; then
			files+=("$BENCH_DIR/pgbench-$1-$m.out")
		else
			files+=("$BENCH_DIR/pgbench-$1-$m".round*.out)
		fi
	done
	awk -F'[:/ ]+' '/^number of transactions actually processed:/ { n += $6 } END { print n + 0 }' "${files[@]}" 2>/dev/null ||
		echo 0
}

# CPU seconds per stream of TARGET's process, from its snapshots.
cpu_per_stream() { # TARGET
	awk -v a="${PROC[start,cpu,$1]}" -v b="${PROC[end,cpu,$1]}" -v n="$(streams_of "$1")" -v hz="$(getconf CLK_TCK)" \
		'BEGIN { if (a == "error" || b == "error" || n == 0) print "-"; else printf "%.3f s\n", (b - a) / hz / n }'
}

report_processes() {
	local t f='%-14s %13s %17s %16s %15s %15s\n'
	# shellcheck disable=SC2059 # the format is the same for every line
	printf "$f" process "RSS at start" "peak before runs" "peak after runs" "RSS after runs" "CPU per stream"
	# shellcheck disable=SC2059
	printf "$f" -------------- ------------- ----------------- ---------------- --------------- ---------------
	for t in $TARGETS; do
		[ -n "${PROC_PIDS[$t]:-}" ] || continue
		# shellcheck disable=SC2059
		printf "$f" "$t" "$(mb "${PROC[start,rss,$t]}") MiB" "$(mb "${PROC[start,hwm,$t]}") MiB" \
			"$(mb "${PROC[end,hwm,$t]}") MiB" "$(mb "${PROC[end,rss,$t]}") MiB" "$(cpu_per_stream "$t")"
	done
}

report_text() {
	echo
	echo "SELECT * FROM stream_people: $ROWS rows, $(per_s "$RESULT_BYTES" 1e-6 1) MB as the server sends them" \
		"($((RESULT_BYTES / ROWS)) bytes of DataRow per row, text format); table $(per_s "$TABLE_BYTES" 1e-6 1) MB on disk"
	if [ -n "$DURATION" ]; then
		echo "pgbench -n -f stream.sql -c 1 -j 1 -T $DURATION, rounds $ROUNDS (median)"
	else
		echo "pgbench -n -f stream.sql -c 1 -j 1 -t $STREAMS (streams per run), rounds $ROUNDS (median)"
	fi
	echo "PostgreSQL $(postgres_version), $(nproc) CPUs; every target reached over TCP 127.0.0.1;" \
		"proxies connect to the server over TCP 127.0.0.1 (SCRAM)"
	echo "pgveil: rules 'ALLOW ALL;'; pgveil-masked: 'ALLOW ALL;' and"
	printf '%s\n' "$MASK_RULES" | sed 's/^/  /'
	echo "masking check: $MASK_CHECK"
	[ -z "$PLAIN_CHECK" ] || echo "unmasked check: $PLAIN_CHECK"
	echo
	report_table
	echo
	report_ratios
	echo
	if [ ${#PROC_PIDS[@]} -gt 0 ]; then
		echo "processes (VmRSS, VmHWM from /proc/PID/status, CPU time from /proc/PID/stat over the measured runs;" \
			"each stream is $(per_s "$RESULT_BYTES" 1e-6 1) MB)"
		report_processes
		echo
	fi
	for t in pgveil pgveil-masked; do
		[ -s "$BENCH_DIR/perf-$t.txt" ] || continue
		echo "perf, $t over one ${MODES%% *} run: self time by object, then the top symbols"
		grep -E '^ +[0-9.]+%' "$BENCH_DIR/perf-$t.txt" | awk '!/\[[.k]\]/' | sort -rn | head -n 6
		grep -E '^ +[0-9.]+%' "$BENCH_DIR/perf-$t.txt" | awk '/\[[.k]\]/' | sed 's/ *- *- *$//' | head -n 20
		echo
	done
}
csv_row() {
	printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$1" "$2" "$(per_s "${TPS[$1,$2]}" "$ROWS" 0)" \
		"$(per_s "${TPS[$1,$2]}" "$((RESULT_BYTES))e-6" 3)" "$(per_s "${LAT[$1,$2]}" 0.001 4)" \
		"$ROWS" "$RESULT_BYTES" "$STREAMS" "$DURATION" "$ROUNDS"
}
bench_write_results report_text \
	"mode,target,rows_per_s,mb_per_s,s_per_stream,rows,result_bytes,streams,duration_s,rounds" csv_row
