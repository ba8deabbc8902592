"""Building blocks of the integration tests: a throwaway PostgreSQL cluster,
a test certificate authority, pgveil processes, and the connection targets the
tests run against ("direct" = PostgreSQL itself, "pgveil" = through the proxy).

Nothing here is a mock: the cluster is a real PostgreSQL 15 started with
initdb/pg_ctl, pgveil is the real binary from $PGVEIL_BUILDDIR.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("PGVEIL_SRCDIR") or os.path.abspath(os.path.join(HERE, "..", ".."))
BUILDDIR = os.environ.get("PGVEIL_BUILDDIR") or SRCDIR
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
PYTHON = "/usr/bin/python3"

APP_USER = "app_agent"
APP_PASSWORD = "secret"
MD5_USER = "md5_agent"
MD5_PASSWORD = "md5-secret"
PLAIN_USER = "plain_agent"
PLAIN_PASSWORD = "plain-secret"
# The name a client uses toward pgveil: it must never reach the server.
PROXY_USER = "agent-7"

BIG_ROWS = 1_000_000  # rows in table "big"

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error:", "ThreadSanitizer")


def is_sanitizer_build(binary):
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def pgveil_binary():
    """Path of the pgveil binary under test, or None when it is not built."""
    path = os.path.join(BUILDDIR, "pgveil")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def clean_env(**extra):
    """The environment for client programs: no PG* variable leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    env.update(extra)
    return env


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Polls pred() until it returns a true value; returns it, or raises."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def retry_stray_cancel(fn, is_cancel):
    """Runs the first statement after a cancel. PostgreSQL's postmaster delivers
    a CancelRequest as two SIGINTs (to the backend and to its process group); on
    a loaded machine the second can arrive after the cancelled statement ended
    and cancel the next one. So if this statement was cancelled too, it is run
    once more (a second stray cancel is impossible)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - re-raised unless it is that cancel
        if not is_cancel(e):
            raise
        return fn()


def run(cmd, check=True, timeout=120, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{cmd!r} exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


# --------------------------------------------------------------------------- certificates

class Certs:
    """A test CA, a server certificate it signed (CN localhost, SAN DNS:localhost
    and IP:127.0.0.1), and an unrelated second CA for negative tests."""

    def __init__(self, directory):
        self.dir = directory
        self.ca_crt = os.path.join(directory, "ca.crt")
        self.ca_key = os.path.join(directory, "ca.key")
        self.server_crt = os.path.join(directory, "server.crt")
        self.server_key = os.path.join(directory, "server.key")
        self.other_ca_crt = os.path.join(directory, "other-ca.crt")
        self.other_ca_key = os.path.join(directory, "other-ca.key")

    def create(self):
        os.makedirs(self.dir, exist_ok=True)
        self._ca(self.ca_key, self.ca_crt, "pgveil test CA")
        self._ca(self.other_ca_key, self.other_ca_crt, "unrelated test CA")
        csr = os.path.join(self.dir, "server.csr")
        ext = os.path.join(self.dir, "server.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                    "basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n")
        run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", self.server_key,
             "-out", csr, "-subj", "/CN=localhost"])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
             "-CAcreateserial", "-out", self.server_crt, "-days", "3650", "-sha256", "-extfile", ext])
        os.chmod(self.server_key, 0o600)
        return self

    @staticmethod
    def _ca(key, crt, cn):
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
             "-days", "3650", "-sha256", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])


# --------------------------------------------------------------------------- PostgreSQL

def _as_postgres():
    """Prefix for commands that must not run as root (initdb, pg_ctl)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"]
    return []


def setup_sql(big_rows=BIG_ROWS):
    return f"""
SET password_encryption = 'scram-sha-256';
CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';
CREATE ROLE {PLAIN_USER} LOGIN PASSWORD '{PLAIN_PASSWORD}';
SET password_encryption = 'md5';
CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';
RESET password_encryption;
CREATE DATABASE app OWNER {APP_USER};
\\connect app
SET ROLE {APP_USER};
CREATE TABLE users (
    id         integer PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL,
    born       date,
    created_at timestamptz NOT NULL,
    balance    numeric(12,2) NOT NULL,
    active     boolean NOT NULL,
    tags       text[],
    profile    jsonb,
    photo      bytea,
    uid        uuid
);
INSERT INTO users
SELECT i,
       'user ' || i,
       'user' || i || '@example.com',
       date '1980-01-01' + i * 37,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour',
       i * 10.25,
       i % 2 = 0,
       ARRAY['t' || i, 'common'],
       jsonb_build_object('n', i, 'tier', CASE WHEN i % 3 = 0 THEN 'gold' ELSE 'basic' END),
       decode(lpad(to_hex(i), 8, '0'), 'hex'),
       md5(i::text)::uuid
FROM generate_series(1, 100) AS i;
-- a row with non-ASCII text for encoding tests
UPDATE users SET name = 'Zoë Müller' WHERE id = 7;
CREATE TABLE orders (
    id        integer PRIMARY KEY,
    user_id   integer NOT NULL REFERENCES users(id),
    amount    numeric(10,2) NOT NULL,
    status    text NOT NULL,
    placed_on date NOT NULL
);
INSERT INTO orders
SELECT i, 1 + (i % 100), (i % 97) * 1.5, (ARRAY['new','paid','shipped'])[1 + i % 3],
       date '2024-01-01' + (i % 365)
FROM generate_series(1, 1000) AS i;
CREATE TABLE big (id integer NOT NULL, payload text NOT NULL);
INSERT INTO big SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text)
FROM generate_series(1, {big_rows}) AS i;
ANALYZE users, orders, big;
RESET ROLE;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {MD5_USER}, {PLAIN_USER};
"""


class Cluster:
    """A throwaway PostgreSQL cluster in its own temp directory."""

    def __init__(self, basedir, certs, max_connections=300):
        self.base = basedir
        self.data = os.path.join(basedir, "data")
        self.sockdir = os.path.join(basedir, "sock")
        self.logfile = os.path.join(basedir, "postgresql.log")
        self.certs = certs
        self.port = free_port()
        self.max_connections = max_connections

    # -- lifecycle
    def init(self, populate=True, big_rows=BIG_ROWS):
        os.makedirs(self.sockdir, exist_ok=True)
        # Server TLS files: PostgreSQL wants its key owned by itself, mode 0600.
        tlsdir = os.path.join(self.base, "tls")
        os.makedirs(tlsdir, exist_ok=True)
        shutil.copy(self.certs.server_crt, os.path.join(tlsdir, "server.crt"))
        shutil.copy(self.certs.server_key, os.path.join(tlsdir, "server.key"))
        if os.geteuid() == 0:
            os.chmod(self.base, 0o755)
            pw = pwd.getpwnam("postgres")
            for root, dirs, files in os.walk(self.base):
                os.chown(root, pw.pw_uid, pw.pw_gid)
                for name in files:
                    os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
        os.chmod(os.path.join(tlsdir, "server.key"), 0o600)
        run(_as_postgres() + [os.path.join(PGBIN, "initdb"), "-D", self.data, "-U", "postgres",
                              "-A", "trust", "-E", "UTF8", "--locale=C", "-N"], timeout=180)
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            f.write(textwrap.dedent(f"""
                listen_addresses = '127.0.0.1'
                port = {self.port}
                unix_socket_directories = '{self.sockdir}'
                max_connections = {self.max_connections}
                password_encryption = 'scram-sha-256'
                ssl = on
                ssl_cert_file = '{tlsdir}/server.crt'
                ssl_key_file = '{tlsdir}/server.key'
                fsync = off
                synchronous_commit = off
                full_page_writes = off
                shared_buffers = 128MB
                log_min_messages = warning
                log_connections = on
                log_disconnections = on
                log_line_prefix = '%m [%p] %u@%d/%a '
                """))
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write(textwrap.dedent(f"""
                # TYPE  DATABASE  USER          ADDRESS       METHOD
                local   all       all                         trust
                host    all       {MD5_USER}     127.0.0.1/32  md5
                host    all       {PLAIN_USER}   127.0.0.1/32  password
                host    all       all           127.0.0.1/32  scram-sha-256
                """))
        self.start()
        if populate:
            self.psql_admin(setup_sql(big_rows), dbname="postgres", timeout=300)
        return self

    def start(self):
        run(_as_postgres() + [os.path.join(PGBIN, "pg_ctl"), "-D", self.data, "-l", self.logfile,
                              "-w", "-t", "60", "start"], timeout=90)

    def stop(self, mode="fast"):
        run(_as_postgres() + [os.path.join(PGBIN, "pg_ctl"), "-D", self.data, "-m", mode,
                              "-w", "-t", "60", "stop"], timeout=90, check=False)

    def is_running(self):
        res = run(_as_postgres() + [os.path.join(PGBIN, "pg_ctl"), "-D", self.data, "status"],
                  check=False)
        return res.returncode == 0

    def destroy(self):
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- access for the tests' own checks (superuser over the Unix socket)
    def admin_conninfo(self, dbname="app"):
        return f"host={self.sockdir} port={self.port} user=postgres dbname={dbname}"

    def psql_admin(self, sql, dbname="app", timeout=60):
        res = run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", self.admin_conninfo(dbname)],
                  input=sql, timeout=timeout, env=clean_env())
        return res.stdout

    def log_tail(self, nbytes=6000):
        try:
            with open(self.logfile, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""


# --------------------------------------------------------------------------- pgveil

def backend_conninfo(cluster, user=APP_USER, password=APP_PASSWORD, sslmode="prefer", **extra):
    parts = [f"host=127.0.0.1 port={cluster.port} dbname=app user={user} password={password}",
             f"sslmode={sslmode}"]
    parts += [f"{k}={v}" for k, v in extra.items()]
    return " ".join(parts)


def default_databases(cluster, certs):
    """[databases] entries every test pgveil gets."""
    return {
        # SCRAM-SHA-256, TLS if the server offers it
        "app": backend_conninfo(cluster),
        # SCRAM over plaintext
        "app_notls": backend_conninfo(cluster, sslmode="disable"),
        # SCRAM over verified TLS
        "app_tls": backend_conninfo(cluster, sslmode="verify-full", sslrootcert=certs.ca_crt),
        # TLS toward a server whose certificate the given CA did not sign
        "app_badca": backend_conninfo(cluster, sslmode="verify-full", sslrootcert=certs.other_ca_crt),
        # MD5 and cleartext password authentication to the server
        "app_md5": backend_conninfo(cluster, user=MD5_USER, password=MD5_PASSWORD, sslmode="disable"),
        "app_plain": backend_conninfo(cluster, user=PLAIN_USER, password=PLAIN_PASSWORD,
                                      sslmode="disable"),
        # a wrong password in the configuration
        "app_badpw": backend_conninfo(cluster, password="wrong-password"),
    }


class Pgveil:
    """One pgveil process with its own config file and stderr log."""

    instances = []  # every instance started in this test run (for failure reports)

    def __init__(self, binary, workdir, cluster, certs, tls=False, databases=None, env=None, **settings):
        self.binary = binary
        self.env = dict(os.environ, **(env or {}))
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.cluster = cluster
        self.certs = certs
        self.port = free_port()
        self.conf_path = os.path.join(workdir, "pgveil.ini")
        self.log_path = os.path.join(workdir, "pgveil.log")
        self.settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "workers": "2",
            "max_client_conn": "50",
            "dev_trust_auth": "yes",
            "default_action": "allow",
            # generous: under load a TLS handshake plus the server login can take
            # seconds; tests of stalled clients start a pgveil with 2s
            "startup_timeout": "10s",
            "shutdown_timeout": "5s",
            "log_level": "debug",
        }
        if tls:
            self.settings["tls_cert_file"] = certs.server_crt
            self.settings["tls_key_file"] = certs.server_key
        self.settings.update({k: str(v) for k, v in settings.items()})
        self.databases = dict(default_databases(cluster, certs) if databases is None else databases)
        self.proc = None
        self.logf = None
        self.exit_code = None
        self.write_config()

    @property
    def shutdown_timeout_s(self):
        m = re.fullmatch(r"(\d+)(ms|s|m)", self.settings["shutdown_timeout"])
        n, unit = int(m.group(1)), m.group(2)
        return {"ms": n / 1000, "s": n, "m": n * 60}[unit]

    def config_text(self):
        lines = ["[pgveil]"]
        lines += [f"{k} = {v}" for k, v in self.settings.items()]
        lines += ["", "[databases]"]
        lines += [f"{k} = {v}" for k, v in self.databases.items()]
        return "\n".join(lines) + "\n"

    def write_config(self, text=None):
        tmp = self.conf_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.config_text() if text is None else text)
        os.replace(tmp, self.conf_path)

    def start(self, timeout=15):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", self.conf_path], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf, cwd=self.dir, env=self.env)
        Pgveil.instances.append(self)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgveil exited with {self.proc.returncode} during startup:\n"
                                   + self.log_text())
            return port_open("127.0.0.1", self.port)

        wait_until(ready, timeout, what=f"pgveil to listen on port {self.port}")
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Stops the process; returns its exit code (kills it if it will not stop)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout or self.shutdown_timeout_s + 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = "did not exit after SIGTERM (killed)"
                return self.exit_code
        self.exit_code = self.proc.returncode
        if self.logf:
            self.logf.close()
            self.logf = None
        return self.exit_code

    def log_text(self, start=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def sanitizer_report(self):
        text = self.log_text()
        for marker in SANITIZER_MARKERS:
            i = text.find(marker)
            if i >= 0:
                return text[max(0, i - 200):i + 4000]
        return None

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def check_clean_exit(self):
        """Stops the process (if still running) and returns a list of problems:
        an exit code other than 0, or a sanitizer report."""
        problems = []
        if self.proc is None:  # never started
            return problems
        was_alive = self.alive()
        code = self.stop()
        if code != 0:
            when = "after SIGTERM" if was_alive else "(it had exited before teardown)"
            problems.append(f"pgveil exit code {code!r} {when}, expected 0; log tail:\n"
                            + self.log_text()[-4000:])
        report = self.sanitizer_report()
        if report:
            problems.append("sanitizer report in pgveil's stderr:\n" + report)
        return problems


# --------------------------------------------------------------------------- targets

@dataclass
class Target:
    """Where a client connects: PostgreSQL directly, or pgveil."""
    name: str
    host: str
    port: int
    user: str
    password: str
    dbname: str = "app"
    cluster: Cluster = None
    pgveil: Pgveil = None
    extra: dict = field(default_factory=dict)

    @property
    def via_pgveil(self):
        return self.pgveil is not None

    def conninfo(self, dbname=None, **kw):
        params = {"host": self.host, "port": self.port, "dbname": dbname or self.dbname,
                  "user": self.user, "password": self.password, "connect_timeout": 10}
        params.update(self.extra)
        params.update(kw)
        return " ".join(f"{k}={_quote(v)}" for k, v in params.items() if v is not None)

    def env(self, **extra):
        """PG* variables understood by libpq, node-postgres, and our Java program."""
        return clean_env(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                         PGPASSWORD=self.password, PGDATABASE=self.dbname, **extra)


def _quote(v):
    s = str(v)
    if s == "" or re.search(r"[\s'\\]", s):
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return s


def direct_target(cluster):
    return Target("direct", "127.0.0.1", cluster.port, APP_USER, APP_PASSWORD, cluster=cluster)


def pgveil_target(pv):
    # The password is whatever: with dev_trust_auth pgveil does not check it, and it is
    # never passed on to the server.
    return Target("pgveil", "127.0.0.1", pv.port, PROXY_USER, "client-password-not-used",
                  cluster=pv.cluster, pgveil=pv)


def write_rules(workroot, name, text):
    """Writes a rules file of its own under workroot; returns its path."""
    path = os.path.join(workroot, f"{name}-{uuid.uuid4().hex[:8]}.rules")
    with open(path, "w") as f:
        f.write(text)
    return path


def make_tempdir(prefix):
    return tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PGVEIL_TEST_TMPDIR"))
