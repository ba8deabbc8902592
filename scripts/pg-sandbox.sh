#!/usr/bin/env bash
# A throwaway PostgreSQL server for the demo, the tests and the benchmark.
#
#   pg-sandbox.sh start DIR PORT [--pgbench SCALE]   create (first time) and start
#   pg-sandbox.sh stop DIR                           stop (fast shutdown); keeps the files
#   pg-sandbox.sh destroy DIR                        stop and delete DIR
#   pg-sandbox.sh status DIR                         exit 0 if running
#   pg-sandbox.sh env DIR                            print PGHOST/PGPORT/... exports (superuser)
#   pg-sandbox.sh psql DIR [psql args]               psql as the superuser over the Unix socket
#
# Or source it and call pg_sandbox_start / pg_sandbox_stop / pg_sandbox_destroy /
# pg_sandbox_psql / pg_sandbox_socket_dir with the same arguments.
#
# What you get:
#   - data in DIR/data, log in DIR/postgres.log, Unix socket in DIR (or in a
#     short /tmp directory named in DIR/socket_dir when DIR is too long for one)
#   - TCP on 127.0.0.1:PORT with scram-sha-256 passwords; trust on the Unix socket
#   - superuser "postgres"; role app_agent (password 'secret') owning database
#     app with sample tables users (1000 rows) and orders (3000 rows)
#   - with --pgbench SCALE (or PG_SANDBOX_PGBENCH_SCALE): database bench, owned
#     by app_agent, holding `pgbench -i -s SCALE` tables
#   - fsync off: fast, and gone with the machine if it crashes
#
# Environment: PG_BINDIR (server programs; default: newest /usr/lib/postgresql/*/bin),
# PG_SANDBOX_MAX_CONNECTIONS (default 100), PG_SANDBOX_PGBENCH_SCALE,
# PG_SANDBOX_QUIET=1 (fewer messages).
#
# As root, the server runs as user postgres (initdb refuses root): DIR and the
# directories above it must then be reachable by that user.

# ---------------------------------------------------------------------------
# helpers

_pgsb_log() { [ "${PG_SANDBOX_QUIET:-0}" = 1 ] || printf 'pg-sandbox: %s\n' "$*" >&2; }
_pgsb_die() {
	printf 'pg-sandbox: error: %s\n' "$*" >&2
	return 1
}

_pgsb_bindir() {
	if [ -n "${PG_BINDIR:-}" ]; then
		printf '%s\n' "$PG_BINDIR"
		return
	fi
	local d best=""
	for d in /usr/lib/postgresql/*/bin; do
		[ -x "$d/initdb" ] || continue
		if [ -z "$best" ] || [ "$(basename "$(dirname "$d")")" -gt "$(basename "$(dirname "$best")")" ] 2>/dev/null; then
			best=$d
		fi
	done
	if [ -z "$best" ] && command -v pg_config >/dev/null 2>&1; then
		best=$(pg_config --bindir)
	fi
	[ -n "$best" ] || {
		_pgsb_die "no PostgreSQL server programs found (install postgresql-15, or set PG_BINDIR)"
		return 1
	}
	printf '%s\n' "$best"
}

# Runs a command as the user who owns the server: postgres when we are root.
_pgsb_as() {
	if [ "$(id -u)" -eq 0 ]; then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

_pgsb_abs() { (cd "$1" && pwd -P); }

# Where the Unix socket lives: DIR itself, or the short directory recorded at creation.
pg_sandbox_socket_dir() {
	local dir
	dir=$(_pgsb_abs "$1") || return 1
	if [ -f "$dir/socket_dir" ]; then
		cat "$dir/socket_dir"
	else
		printf '%s\n' "$dir"
	fi
}

_pgsb_port() { cat "$1/port"; }

_pgsb_running() {
	local dir=$1 bindir
	bindir=$(_pgsb_bindir) || return 1
	[ -f "$dir/data/PG_VERSION" ] || return 1
	_pgsb_as "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

# psql as the superuser over the Unix socket: pg_sandbox_psql DIR [args]
pg_sandbox_psql() {
	local dir sock
	dir=$(_pgsb_abs "$1") || return 1
	shift
	sock=$(pg_sandbox_socket_dir "$dir")
	_pgsb_as psql -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$(_pgsb_port "$dir")" -U postgres "$@"
}

# ---------------------------------------------------------------------------
# start

_pgsb_init() {
	local dir=$1 port=$2 bindir=$3 sock maxconn
	maxconn=${PG_SANDBOX_MAX_CONNECTIONS:-100}

	# The socket path (DIR/.s.PGSQL.PORT) must fit in sun_path (108 bytes).
	sock=$dir
	if [ $((${#dir} + 20)) -gt 100 ]; then
		sock=$(mktemp -d /tmp/pgsb.XXXXXX)
		printf '%s\n' "$sock" >"$dir/socket_dir"
	fi
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$dir" "$sock"
		runuser -u postgres -- test -w "$dir" ||
			{ _pgsb_die "user postgres cannot write $dir (is a parent directory closed to it?)"; return 1; }
	fi
	printf '%s\n' "$port" >"$dir/port"

	_pgsb_log "initdb in $dir/data"
	_pgsb_as "$bindir/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host=scram-sha-256 --no-sync >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; _pgsb_die "initdb failed"; return 1; }

	cat >"$dir/pg_hba.conf.new" <<-EOF
		# pg-sandbox: trust on the Unix socket, passwords (SCRAM) over TCP
		local all all                trust
		host  all all 127.0.0.1/32   scram-sha-256
		host  all all ::1/128        scram-sha-256
	EOF
	cat >"$dir/postgresql.conf.new" <<-EOF
		# pg-sandbox settings
		listen_addresses = '127.0.0.1'
		port = $port
		unix_socket_directories = '$sock'
		max_connections = $maxconn
		password_encryption = 'scram-sha-256'
		fsync = off
		synchronous_commit = off
		full_page_writes = off
		shared_buffers = 128MB
		log_min_messages = warning
		log_line_prefix = '%m [%p] %u@%d '
	EOF
	_pgsb_as cp "$dir/pg_hba.conf.new" "$dir/data/pg_hba.conf" || return 1
	_pgsb_as sh -c "cat '$dir/postgresql.conf.new' >>'$dir/data/postgresql.conf'" || return 1
	rm -f "$dir/pg_hba.conf.new" "$dir/postgresql.conf.new"
}

_pgsb_provision() {
	local dir=$1
	_pgsb_log "provisioning role app_agent and database app"
	pg_sandbox_psql "$dir" -d postgres <<-'EOF' || return 1
		DO $$ BEGIN
		  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_agent') THEN
		    CREATE ROLE app_agent LOGIN PASSWORD 'secret';
		  END IF;
		END $$;
		SELECT 'CREATE DATABASE app OWNER app_agent'
		  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'app') \gexec
	EOF
	pg_sandbox_psql "$dir" -d app -U app_agent <<-'EOF'
		SET client_min_messages = warning;
		CREATE TABLE IF NOT EXISTS users (
		  id     integer PRIMARY KEY,
		  name   text NOT NULL,
		  email  text NOT NULL,
		  ssn    text,
		  salary numeric(10,2),
		  born   date
		);
		CREATE TABLE IF NOT EXISTS orders (
		  id         integer PRIMARY KEY,
		  user_id    integer NOT NULL REFERENCES users(id),
		  amount     numeric(10,2) NOT NULL,
		  status     text NOT NULL,
		  created_at timestamptz NOT NULL
		);
		INSERT INTO users (id, name, email, ssn, salary, born)
		SELECT i,
		       (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken','Margaret','Dennis'])[1 + i % 10]
		         || ' ' ||
		       (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson','Hamilton','Ritchie'])[1 + (i / 10) % 10],
		       'user' || i || '@example.com',
		       lpad((100 + i % 800)::text, 3, '0') || '-' || lpad((10 + i % 89)::text, 2, '0') || '-' || lpad((i * 7919 % 10000)::text, 4, '0'),
		       (30000 + (i * 7919) % 120000)::numeric(10,2),
		       date '1950-01-01' + ((i * 104729) % 18000)
		FROM generate_series(1, 1000) AS i
		ON CONFLICT (id) DO NOTHING;
		INSERT INTO orders (id, user_id, amount, status, created_at)
		SELECT i,
		       1 + (i * 31) % 1000,
		       ((i * 7907) % 50000) / 100.0 + 1,
		       (ARRAY['new','paid','shipped','cancelled'])[1 + i % 4],
		       timestamptz '2024-01-01 00:00:00+00' + (i * interval '47 minutes')
		FROM generate_series(1, 3000) AS i
		ON CONFLICT (id) DO NOTHING;
		ANALYZE users;
		ANALYZE orders;
	EOF
}

_pgsb_pgbench_init() {
	local dir=$1 scale=$2 have sock
	have=$(pg_sandbox_psql "$dir" -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = 'bench'") || return 1
	if [ "$have" = 1 ]; then
		have=$(pg_sandbox_psql "$dir" -d bench -tA -c \
			"SELECT count(*) FROM pg_tables WHERE tablename = 'pgbench_branches'")
		if [ "$have" = 1 ] &&
			[ "$(pg_sandbox_psql "$dir" -d bench -tA -c 'SELECT count(*) FROM pgbench_branches')" = "$scale" ]; then
			_pgsb_log "database bench already holds pgbench tables at scale $scale"
			return 0
		fi
	else
		pg_sandbox_psql "$dir" -d postgres -c 'CREATE DATABASE bench OWNER app_agent' || return 1
	fi
	_pgsb_log "pgbench -i -s $scale in database bench"
	sock=$(pg_sandbox_socket_dir "$dir")
	_pgsb_as pgbench -i -q -s "$scale" -h "$sock" -p "$(_pgsb_port "$dir")" -U app_agent bench \
		>"$dir/pgbench-init.log" 2>&1 ||
		{ cat "$dir/pgbench-init.log" >&2; _pgsb_die "pgbench -i failed"; return 1; }
}

# pg_sandbox_start DIR PORT [--pgbench SCALE]
pg_sandbox_start() {
	local dir=${1:-} port=${2:-} scale=${PG_SANDBOX_PGBENCH_SCALE:-} bindir created=no
	if [ -z "$dir" ] || [ -z "$port" ]; then
		_pgsb_die "usage: start DIR PORT [--pgbench SCALE]"
		return 2
	fi
	shift 2
	while [ $# -gt 0 ]; do
		case $1 in
		--pgbench) scale=${2:?--pgbench needs a scale}; shift 2 ;;
		*) _pgsb_die "unknown option: $1"; return 2 ;;
		esac
	done
	case $port in '' | *[!0-9]*) _pgsb_die "bad port: $port"; return 2 ;; esac
	bindir=$(_pgsb_bindir) || return 1

	mkdir -p "$dir"
	dir=$(_pgsb_abs "$dir")
	if [ -f "$dir/port" ] && [ "$(_pgsb_port "$dir")" != "$port" ]; then
		_pgsb_die "$dir was created for port $(_pgsb_port "$dir"), not $port (destroy it first)"
		return 1
	fi

	if _pgsb_running "$dir"; then
		_pgsb_log "already running on port $port ($dir)"
	else
		if command -v ss >/dev/null 2>&1 && ss -Hltn "sport = :$port" | grep -q .; then
			_pgsb_die "port $port is already in use"
			return 1
		fi
		if [ ! -f "$dir/data/PG_VERSION" ]; then
			# Half-made by an earlier failed attempt: start over.
			[ -d "$dir/data" ] && _pgsb_as rm -rf "$dir/data"
			created=yes
			if ! _pgsb_init "$dir" "$port" "$bindir"; then
				_pgsb_as rm -rf "$dir/data"
				rm -f "$dir/port"
				return 1
			fi
		fi
		_pgsb_log "starting PostgreSQL on 127.0.0.1:$port"
		if ! _pgsb_as "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null; then
			tail -n 20 "$dir/postgres.log" >&2 || true
			_pgsb_die "server did not start (log: $dir/postgres.log)"
			return 1
		fi
	fi

	# From here on a failure stops the server again, so nothing is left running.
	if ! _pgsb_provision "$dir" || { [ -n "$scale" ] && ! _pgsb_pgbench_init "$dir" "$scale"; }; then
		_pgsb_log "provisioning failed: stopping the server"
		pg_sandbox_stop "$dir" || true
		if [ "$created" = yes ]; then _pgsb_as rm -rf "$dir/data"; rm -f "$dir/port"; fi
		return 1
	fi
	_pgsb_log "ready: host=127.0.0.1 port=$port dbname=app user=app_agent password=secret"
}

# pg_sandbox_stop DIR
pg_sandbox_stop() {
	local dir=${1:-} bindir
	[ -n "$dir" ] || { _pgsb_die "usage: stop DIR"; return 2; }
	[ -d "$dir" ] || return 0
	dir=$(_pgsb_abs "$dir")
	bindir=$(_pgsb_bindir) || return 1
	if _pgsb_running "$dir"; then
		_pgsb_log "stopping PostgreSQL in $dir"
		_pgsb_as "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null ||
			_pgsb_as "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
	fi
}

# pg_sandbox_destroy DIR
pg_sandbox_destroy() {
	local dir=${1:-} sock
	[ -n "$dir" ] || { _pgsb_die "usage: destroy DIR"; return 2; }
	[ -d "$dir" ] || return 0
	pg_sandbox_stop "$dir" || return 1
	dir=$(_pgsb_abs "$dir")
	if [ -f "$dir/socket_dir" ]; then
		sock=$(cat "$dir/socket_dir")
		case $sock in /tmp/pgsb.*) rm -rf "$sock" ;; esac
	fi
	_pgsb_log "removing $dir"
	rm -rf "$dir"
}

pg_sandbox_env() {
	local dir
	dir=$(_pgsb_abs "$1") || return 1
	printf 'export PGHOST=%q PGPORT=%q PGUSER=postgres PGDATABASE=app\n' \
		"$(pg_sandbox_socket_dir "$dir")" "$(_pgsb_port "$dir")"
}

# ---------------------------------------------------------------------------
# command line (when executed, not sourced)

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -euo pipefail
	cmd=${1:-}
	[ $# -gt 0 ] && shift
	case $cmd in
	start)
		# Interrupted half-way: leave nothing running.
		trap 'trap - INT TERM; _pgsb_log "interrupted: stopping"; pg_sandbox_stop "${1:-}" || true; exit 130' INT TERM
		pg_sandbox_start "$@"
		trap - INT TERM
		;;
	stop) pg_sandbox_stop "$@" ;;
	destroy) pg_sandbox_destroy "$@" ;;
	status)
		if _pgsb_running "$(_pgsb_abs "${1:?usage: status DIR}")"; then
			echo "running on port $(_pgsb_port "$(_pgsb_abs "$1")")"
		else
			echo "not running"
			exit 1
		fi
		;;
	env) pg_sandbox_env "${1:?usage: env DIR}" ;;
	psql) pg_sandbox_psql "$@" ;;
	*)
		sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
		[ "$cmd" = -h ] || [ "$cmd" = --help ] || exit 2
		;;
	esac
fi
