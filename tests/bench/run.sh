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
# shellcheck source=tests/bench/lib.sh
. "$SRCDIR/tests/bench/lib.sh"

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
own_option() {
	BENCH_SHIFT=2
	case $1 in
	-c) CLIENTS=${2:-} ;;
	-j) THREADS=${2:-} ;;
	-T) DURATION=${2:-} ;;
	-s) SCALE=${2:-} ;;
	*) return 1 ;;
	esac
}
bench_parse_options own_option "$@"

bench_init
bench_need_numbers CLIENTS THREADS DURATION SCALE ROUNDS WARMUP

# --------------------------------------------------------------------------
# measuring

# pgbench against one target; prints "tps latency_ms" or "error error",
# and for pgveil targets the CPU time pgveil and its audit writer used per
# transaction (bench_measure).
run_pgbench() { # TARGET MODE SECONDS
	local target=$1 mode=$2 secs=$3 out pid=${PGVEIL_PIDS[$1]:-} c0="" a0="" c1="" a1="" n audit
	out=$BENCH_DIR/pgbench-$target-$mode.out
	if [ -n "$pid" ]; then
		c0=$(proc_cpu_ticks "$pid")
		a0=$(proc_cpu_ticks "$pid" pgveil-audit)
	fi
	# -n: no VACUUM before the run (done once, directly, after loading).
	if ! bench_client "$target" pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$secs" >"$out" 2>&1; then
		echo "error error"
		return
	fi
	if [ -z "$pid" ]; then
		pgbench_tps_latency "$out"
		return
	fi
	c1=$(proc_cpu_ticks "$pid")
	a1=$(proc_cpu_ticks "$pid" pgveil-audit)
	n=$(awk '/^number of transactions actually processed: / { split($NF, a, "/"); print a[1]; exit }' "$out")
	audit=-
	if [ "${PGVEIL_AUDIT_OF[$target]:-off}" != off ]; then
		audit=$(cpu_per_tx "$a0" "$a1" "$n")
	fi
	echo "$(pgbench_tps_latency "$out") $(cpu_per_tx "$c0" "$c1" "$n") $audit"
}

# --------------------------------------------------------------------------

# any pgveil target (pgveil, pgveil-async, pgveil-strict) needs the binary
[[ " $TARGETS " != *" pgveil"* ]] || find_pgveil

start_postgres "loading pgbench tables (scale $SCALE)" --pgbench "$SCALE"
pg_sandbox_psql "$PG_DIR" -d bench -c 'VACUUM ANALYZE' || die "VACUUM failed"
PGVEIL_RULES_OF[pgveil]=$PGVEIL_RULES
# The same with the audit log on (--targets "... pgveil-async pgveil-strict").
PGVEIL_RULES_OF[pgveil-async]=$PGVEIL_RULES
PGVEIL_AUDIT_OF[pgveil-async]=async
PGVEIL_RULES_OF[pgveil-strict]=$PGVEIL_RULES
PGVEIL_AUDIT_OF[pgveil-strict]=strict
bench_check_modes
bench_start_targets

if [ "$WARMUP" -gt 0 ]; then
	log "warming up (${WARMUP}s direct)"
	run_pgbench direct simple "$WARMUP" >/dev/null
fi

total=$(bench_runs)
log "measuring: pgbench -S -c $CLIENTS -j $THREADS -T $DURATION, $ROUNDS round(s), $total runs (about $((total * ROUNDS * DURATION))s)"

run_round() { run_pgbench "$1" "$2" "$DURATION"; }
bench_measure run_round

# --------------------------------------------------------------------------
# report

# One line of the table.
row() { printf '%-9s %-13s %12s %14s %10s %17s %14s %9s %11s\n' "$@"; }
report_text() {
	echo
	echo "pgbench -S (select only), -c $CLIENTS -j $THREADS -T $DURATION, scale $SCALE, rounds $ROUNDS (median)"
	echo "PostgreSQL $(postgres_version), $(nproc) CPUs;" \
		"every target reached over TCP 127.0.0.1; proxies connect to the server over TCP 127.0.0.1 (SCRAM)"
	echo
	row mode target tps "latency avg ms" "vs direct" "pgveil/pgbouncer" "vs pgveil" "CPU us/tx" \
		"audit us/tx"
	row --------- ------------- ------------ -------------- ---------- ----------------- -------------- \
		--------- -----------
	for m in $MODES; do
		for t in $TARGETS; do
			if [ -z "${ACTIVE[$t]:-}" ]; then
				row "$m" "$t" skipped - - - - - -
				continue
			fi
			vs=$(ratio "${TPS[$m,$t]}" "${TPS[$m,direct]:-}")
			pb=""
			[ "$t" != pgveil ] || pb=$(ratio "${TPS[$m,pgveil]}" "${TPS[$m,pgbouncer]:-}")
			vp="" # the audit log's cost: against pgveil without it, strict also against async
			case $t in
			pgveil-async) vp=$(ratio "${TPS[$m,$t]}" "${TPS[$m,pgveil]:-}") ;;
			pgveil-strict) vp="$(ratio "${TPS[$m,$t]}" "${TPS[$m,pgveil]:-}")/$(ratio "${TPS[$m,$t]}" "${TPS[$m,pgveil-async]:-}")" ;;
			esac
			tps_fmt=$(awk -v x="${TPS[$m,$t]}" 'BEGIN { if (x == "error") print x; else printf "%.1f\n", x }')
			lat_fmt=$(awk -v x="${LAT[$m,$t]}" 'BEGIN { if (x == "error") print x; else printf "%.3f\n", x }')
			row "$m" "$t" "$tps_fmt" "$lat_fmt" "$vs" "$pb" "$vp" "${CPU[$m,$t]:--}" "${AUDIT_CPU[$m,$t]:--}"
		done
	done
	echo
}
csv_row() {
	echo "$1,$2,${TPS[$1,$2]},${LAT[$1,$2]},${CPU[$1,$2]:--},${AUDIT_CPU[$1,$2]:--},$CLIENTS,$THREADS,$DURATION,$SCALE"
}
bench_write_results report_text \
	"mode,target,tps,latency_ms,cpu_us_per_tx,audit_cpu_us_per_tx,clients,threads,duration_s,scale" csv_row
