#!/bin/sh
# Runs the integration tests (called by "make check"; also runnable by hand).
#
# Environment: PGVEIL_BUILDDIR (where the pgveil binary is; default: the source
# tree), PGVEIL_SRCDIR (the source tree; default: two levels above this script).
# Installs nothing but the node-postgres modules of tests/drivers/node when
# any of them is missing (npm ci). Extra arguments go to pytest. Exits with pytest's
# status; "no tests collected" counts as a failure.
set -u

here=$(cd "$(dirname "$0")" && pwd)
PGVEIL_SRCDIR=${PGVEIL_SRCDIR:-$(cd "$here/../.." && pwd)}
PGVEIL_BUILDDIR=${PGVEIL_BUILDDIR:-$PGVEIL_SRCDIR}
export PGVEIL_SRCDIR PGVEIL_BUILDDIR

nodedir="$PGVEIL_SRCDIR/tests/drivers/node"
# true when every module package.json names is installed in $1/node_modules
node_modules_ok() {
	(cd "$1" && node -e 'for (const d of Object.keys(require("./package.json").dependencies)) require.resolve(d)') \
		2>/dev/null
}
if ! node_modules_ok "$nodedir" && [ ! -w "$nodedir" ]; then
	# A read-only source tree (make distcheck): install into a copy in the build tree.
	copy="$PGVEIL_BUILDDIR/tests/drivers/node"
	mkdir -p "$copy" && cp "$nodedir"/*.js "$nodedir"/package*.json "$copy"/ && chmod -R u+w "$copy" || exit 1
	nodedir=$copy
fi
export PGVEIL_NODE_DIR="$nodedir"
export PYTHONDONTWRITEBYTECODE=1
if ! node_modules_ok "$nodedir"; then
	echo "run.sh: installing the node-postgres modules in $nodedir"
	if [ -f "$nodedir/package-lock.json" ]; then
		(cd "$nodedir" && npm ci --no-audit --no-fund) || exit 1
	else
		(cd "$nodedir" && npm install --no-audit --no-fund) || exit 1
	fi
fi

if [ ! -x "$PGVEIL_BUILDDIR/pgveil" ]; then
	echo "run.sh: warning: no $PGVEIL_BUILDDIR/pgveil: the tests through pgveil will be skipped" >&2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pgveil-itest-run.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

cd "$PGVEIL_SRCDIR" || exit 1
# The whole suite, unless the arguments name test files or directories.
suite="$PGVEIL_SRCDIR/tests/integration"
for arg in "$@"; do
	case $arg in -*) ;; *) [ -e "${arg%%::*}" ] && suite= ;; esac
done
{
	/usr/bin/python3 -m pytest -q -p no:cacheprovider -o console_output_style=classic \
		$suite "$@"
	echo $? >"$tmp/rc"
} 2>&1 | tee "$tmp/log"

rc=$(cat "$tmp/rc" 2>/dev/null || echo 1)
# pytest's own summary, then the same counts as "N passed, N failed, N skipped"
summary=$(grep -E '([0-9]+ (passed|failed|errors?|skipped)|no tests ran)' "$tmp/log" | tail -n 1)
count() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0; }
passed=$(count passed)
failed=$(( $(count failed) + $(count errors?) ))
skipped=$(count skipped)
echo "integration: $passed passed, $failed failed, $skipped skipped"
if [ "$rc" -eq 5 ]; then
	echo "integration: pytest collected no tests" >&2
	exit 1
fi
exit "$rc"
