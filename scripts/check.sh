#!/usr/bin/env bash
# Builds pgveil and runs its test suite, the way CI does.
#
#   scripts/check.sh [options]
#
#   --debug         configure --enable-debug (the default: -Werror -O0 -g3)
#   --no-debug      configure without --enable-debug
#   --asan          configure --enable-asan (AddressSanitizer + UBSan)
#   --distcheck     also run `make distcheck` (a tarball build and check)
#   --format        also run `make check-format`
#   --tests "LIST"  run only these tests (make check TESTS="LIST")
#   --builddir DIR  build here (default: tmp/build-<flavour> in the source tree)
#   --no-setup      do not run scripts/setup-debian.sh first
#   -- ARGS         pass the remaining arguments to configure
#
# Prints the test-suite.log of failing tests, and ends with one line
# "N passed, N failed" (automake's PASS against FAIL + ERROR + XPASS).
# Exits non-zero on any failure.
set -euo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$SRCDIR"

debug=yes
asan=no
distcheck=no
format=no
setup=yes
tests=""
tests_set=no
builddir=""
extra_configure=()

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
	case $1 in
	--debug) debug=yes ;;
	--no-debug) debug=no ;;
	--asan) asan=yes ;;
	--distcheck) distcheck=yes ;;
	--format) format=yes ;;
	--tests) tests=${2?--tests needs a list}; tests_set=yes; shift ;;
	--builddir) builddir=${2:?--builddir needs a directory}; shift ;;
	--no-setup) setup=no ;;
	-h | --help) usage; exit 0 ;;
	--) shift; extra_configure=("$@"); break ;;
	*) echo "check.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

section() { printf '\n==> %s\n' "$*"; }
JOBS=$(nproc 2>/dev/null || echo 2)
[ "$JOBS" -gt 2 ] || JOBS=2

configure_args=()
flavour=""
if [ "$debug" = yes ]; then
	configure_args+=(--enable-debug)
	flavour=debug
fi
if [ "$asan" = yes ]; then
	configure_args+=(--enable-asan)
	flavour=${flavour:+$flavour-}asan
fi
flavour=${flavour:-plain}
configure_args+=("${extra_configure[@]}")

# The closing line is printed whatever happens, so a reader (or CI) always finds it.
passed=0
failed=0
summary_printed=no
print_summary() {
	[ "$summary_printed" = no ] || return 0
	summary_printed=yes
	echo "$passed passed, $failed failed"
}
fail() {
	echo "check.sh: $*" >&2
	[ "$failed" -gt 0 ] || failed=1
	print_summary
	exit 1
}

if [ "$setup" = yes ]; then
	section "Installing build and test dependencies (scripts/setup-debian.sh)"
	bash "$SRCDIR/scripts/setup-debian.sh" </dev/null || fail "dependency installation failed"
fi

section "Generating the build system (./autogen.sh)"
autogen_err=$(mktemp)
if ! ./autogen.sh >/dev/null 2>"$autogen_err"; then
	cat "$autogen_err" >&2
	rm -f "$autogen_err"
	fail "autogen.sh failed"
fi
rm -f "$autogen_err"

if [ -z "$builddir" ]; then
	if [ -f "$SRCDIR/config.status" ]; then
		# A tree configured in place cannot also host a separate build directory.
		echo "check.sh: the source tree is configured in place: building there" \
			"(run 'make distclean' for separate build directories)" >&2
		builddir=$SRCDIR
	else
		builddir=$SRCDIR/tmp/build-$flavour
	fi
fi
mkdir -p "$builddir"
builddir=$(cd "$builddir" && pwd -P)
cd "$builddir"

section "Configuring in ${builddir#"$SRCDIR"/} (${configure_args[*]:-no options})"
"$SRCDIR/configure" "${configure_args[@]}" >configure.out 2>&1 || {
	tail -n 30 configure.out >&2
	fail "configure failed (see $builddir/config.log)"
}
grep -E '^configure: WARNING' configure.out >&2 || true

section "Building (make -j$JOBS)"
make -j"$JOBS" || fail "build failed"

section "Running the tests (make -j1 check)"
make_check=(make -j1 check)
[ "$tests_set" = no ] || make_check+=("TESTS=$tests")
check_rc=0
"${make_check[@]}" 2>&1 | tee check.out || check_rc=$?

# Testsuite summary lines: "# PASS:  3", possibly coloured.
sum_of() {
	sed 's/\x1b\[[0-9;]*m//g' check.out | awk -v k="$1" '$1 == "#" && $2 == k ":" { n += $3 } END { print n + 0 }'
}
# Without a summary (the harness itself failed), count the per-test result lines.
count_of() {
	sed 's/\x1b\[[0-9;]*m//g' check.out | grep -c "^$1: " || true
}
if sed 's/\x1b\[[0-9;]*m//g' check.out | grep -q '^# TOTAL:'; then
	passed=$(sum_of PASS)
	failed=$(($(sum_of FAIL) + $(sum_of ERROR) + $(sum_of XPASS)))
	skipped=$(sum_of SKIP)
else
	passed=$(count_of PASS)
	failed=$(($(count_of FAIL) + $(count_of ERROR) + $(count_of XPASS)))
	skipped=$(count_of SKIP)
fi

# The closing line counts test cases, not programs: cmocka's "[  PASSED  ] N test(s)."
# and the integration runner's "integration: N passed, M failed, K skipped".
programs_failed=$failed
case_counts() {
	local p=0 f=0 n log
	for log in tests/unit/*.log; do
		[ -f "$log" ] || continue
		n=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -n 1)
		p=$((p + ${n:-0}))
		n=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -n 1)
		f=$((f + ${n:-0}))
	done
	if [ -f tests/integration/run.sh.log ]; then
		n=$(sed -n 's/^integration: \([0-9]*\) passed, \([0-9]*\) failed.*/\1 \2/p' tests/integration/run.sh.log | tail -n 1)
		if [ -n "$n" ]; then
			p=$((p + ${n%% *}))
			f=$((f + ${n##* }))
		fi
	fi
	echo "$p $f"
}
read -r case_passed case_failed < <(case_counts)
if [ "$case_passed" -gt 0 ]; then
	echo "test programs: $passed passed, $programs_failed failed"
	passed=$case_passed
	# A program that died before reporting counts as one failure.
	failed=$((case_failed > 0 ? case_failed : programs_failed))
fi

if [ "$check_rc" -ne 0 ] || [ "$failed" -gt 0 ]; then
	if [ -f test-suite.log ]; then
		section "test-suite.log (failing tests)"
		cat test-suite.log
	fi
	[ "$failed" -gt 0 ] || failed=1
	[ "$skipped" -eq 0 ] || echo "($skipped skipped)"
	print_summary
	exit 1
fi
[ "$skipped" -eq 0 ] || echo "($skipped skipped)"

if [ "$format" = yes ]; then
	section "Checking the code format (make check-format)"
	make check-format || fail "code is not formatted: run 'make format'"
fi

if [ "$distcheck" = yes ]; then
	section "Building and checking the distribution tarball (make distcheck)"
	# In a build directory of its own: the tarball takes whole test directories,
	# and those of the build above now hold test logs.
	dc_dir=$SRCDIR/tmp/build-distcheck
	rm -rf "$dc_dir"
	mkdir -p "$dc_dir"
	(cd "$dc_dir" && "$SRCDIR/configure" "${configure_args[@]}" >configure.out 2>&1 &&
		make distcheck DISTCHECK_CONFIGURE_FLAGS="${configure_args[*]}") || fail "make distcheck failed"
fi

print_summary
