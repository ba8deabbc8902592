#!/usr/bin/env bash
# Installs every Debian 12 package that building and testing pgveil needs.
#
#   scripts/setup-debian.sh            install what is missing (as root, or through sudo)
#   scripts/setup-debian.sh --list     print the package list and exit
#   scripts/setup-debian.sh --check    exit 0 if everything is installed, 1 otherwise
#
# Idempotent: when every package is already installed it returns at once
# without touching apt. Runs unattended (CI=true, no stdin).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
	# build
	build-essential autoconf automake libtool pkg-config
	libevent-dev libssl-dev libpg-query-dev libjwt-dev libjson-c-dev
	libsqlite3-dev libinih-dev
	# unit tests, formatting, fuzzing
	libcmocka-dev clang clang-format
	# integration tests and benchmark: server, client, pooler
	postgresql-15 postgresql-client-15 pgbouncer
	# driver tests: Python (psycopg 3, asyncpg), Java (pgjdbc)
	python3 python3-pytest python3-psycopg python3-asyncpg
	libpostgresql-jdbc-java default-jdk-headless
	# tools the tests call
	openssl sqlite3 ca-certificates procps iproute2
)
# node-postgres tests need node and npm. They may come from elsewhere than
# Debian (a node distribution bundles its own npm, and Debian's npm would
# conflict with it): ask Debian only for what is missing.
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

log() { printf 'setup-debian: %s\n' "$*" >&2; }

is_installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing_packages() {
	local p
	for p in "${PACKAGES[@]}"; do
		is_installed "$p" || printf '%s\n' "$p"
	done
}

has_candidate() {
	local cand
	cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
	[ -n "$cand" ] && [ "$cand" != "(none)" ]
}

case "${1:-}" in
--list)
	printf '%s\n' "${PACKAGES[@]}"
	exit 0
	;;
--check)
	m=$(missing_packages)
	if [ -n "$m" ]; then
		log "missing: $(echo "$m" | tr '\n' ' ')"
		exit 1
	fi
	exit 0
	;;
-h | --help)
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
"") ;;
*)
	log "unknown argument: $1 (try --help)"
	exit 2
	;;
esac

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
	log "this script is for Debian 12 (bookworm): dpkg/apt not found"
	exit 1
fi

mapfile -t MISSING < <(missing_packages)
if [ "${#MISSING[@]}" -eq 0 ]; then
	log "all ${#PACKAGES[@]} packages already installed"
	exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo -n env DEBIAN_FRONTEND=noninteractive)
	else
		log "need root (or sudo) to install: ${MISSING[*]}"
		exit 1
	fi
fi

APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

# Update the package lists once, and only when they cannot serve the install:
# no lists yet, or a missing package has no candidate.
updated=no
apt_update() {
	[ "$updated" = yes ] && return 0
	log "apt-get update"
	"${SUDO[@]}" apt-get update -q </dev/null
	updated=yes
}

need_update=no
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
	need_update=yes
else
	for p in "${MISSING[@]}"; do
		if ! has_candidate "$p"; then
			need_update=yes
			break
		fi
	done
fi
[ "$need_update" = yes ] && apt_update

log "installing: ${MISSING[*]}"
if ! "${SUDO[@]}" apt-get install "${APT_OPTS[@]}" "${MISSING[@]}" </dev/null; then
	# Stale lists (a security update replaced a version): refresh once and retry.
	if [ "$updated" = no ]; then
		apt_update
		"${SUDO[@]}" apt-get install "${APT_OPTS[@]}" "${MISSING[@]}" </dev/null
	else
		exit 1
	fi
fi

mapfile -t STILL < <(missing_packages)
if [ "${#STILL[@]}" -gt 0 ]; then
	log "still missing after install: ${STILL[*]}"
	exit 1
fi
log "done"
