"""Session fixtures of the integration suite: a real PostgreSQL 15 cluster,
test certificates, pgveil processes, and the "direct"/"pgveil" targets that
most tests are parametrized over."""

import atexit
import itertools
import os
import shutil
import signal
import subprocess

import psycopg
import pytest

import harness
from harness import Certs, Cluster, Pgveil

NODE_DIR = os.environ.get("PGVEIL_NODE_DIR") or os.path.join(harness.SRCDIR, "tests", "drivers", "node")
JAVA_DIR = os.path.join(harness.SRCDIR, "tests", "drivers", "java")
JDBC_JAR = os.environ.get("PGJDBC_JAR", "/usr/share/java/postgresql.jar")

_counter = itertools.count(1)


# --------------------------------------------------------------------------- directories, cluster

@pytest.fixture(scope="session")
def workroot():
    root = harness.make_tempdir("pgveil-itest-")
    os.chmod(root, 0o755)  # the postgres user must reach the cluster below it
    yield root
    if not os.environ.get("PGVEIL_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def certs(workroot):
    return Certs(os.path.join(workroot, "certs")).create()


@pytest.fixture(scope="session")
def cluster(workroot, certs):
    c = Cluster(os.path.join(workroot, "pg"), certs)
    os.makedirs(c.base)
    _clusters.append(c)
    c.init()
    yield c
    c.destroy()


@pytest.fixture
def cluster_factory(workroot, certs):
    """Extra clusters for tests that stop and start PostgreSQL."""
    made = []

    def make(populate=True, max_connections=50, big_rows=1000):
        c = Cluster(os.path.join(workroot, f"pg-{next(_counter)}"), certs, max_connections)
        os.makedirs(c.base)
        made.append(c)
        _clusters.append(c)
        return c.init(populate=populate, big_rows=big_rows)

    yield make
    for c in made:
        c.destroy()
        _clusters.remove(c)


@pytest.fixture
def admin(cluster):
    """Superuser connection over the Unix socket, for checks behind the client's back."""
    with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
        yield conn


# --------------------------------------------------------------------------- pgveil

@pytest.fixture(scope="session")
def pgveil_bin():
    path = harness.pgveil_binary()
    if path is None:
        pytest.skip(f"pgveil binary not found at {os.path.join(harness.BUILDDIR, 'pgveil')} "
                    "(set PGVEIL_BUILDDIR to the build directory): pgveil-target tests skipped")
    return path


class _Shared:
    """The pgveil instance most tests share; restarted if a test killed it."""

    def __init__(self, make):
        self.make = make
        self.instance = None
        self.problems = []

    def get(self):
        if self.instance is not None and not self.instance.alive():
            self.problems += self.instance.check_clean_exit()
            self.instance = None
        if self.instance is None:
            self.instance = self.make()
        return self.instance


@pytest.fixture(scope="session")
def _shared_pgveil(pgveil_bin, cluster, certs, workroot):
    shared = _Shared(lambda: Pgveil(pgveil_bin, os.path.join(workroot, f"pgveil-{next(_counter)}"),
                                    cluster, certs).start())
    yield shared
    problems = list(shared.problems)
    if shared.instance is not None:
        problems += shared.instance.check_clean_exit()
    assert not problems, "\n".join(problems)


@pytest.fixture
def pgveil(_shared_pgveil):
    """The shared pgveil (plain TCP, default settings). A test after which it
    is no longer running fails in teardown."""
    pv = _shared_pgveil.get()
    yield pv
    if not pv.alive():
        pytest.fail(f"pgveil died during this test (exit code {pv.proc.returncode}); log:\n"
                    + pv.log_text()[-8000:])


@pytest.fixture
def pgveil_factory(pgveil_bin, cluster, certs, workroot):
    """Starts pgveil processes with chosen settings; each must exit 0 on SIGTERM
    at the end of the test, without a sanitizer report."""
    made = []

    def make(start=True, cluster_=None, env=None, **settings):
        pv = Pgveil(pgveil_bin, os.path.join(workroot, f"pgveil-{next(_counter)}"),
                    cluster_ or cluster, certs, env=env, **settings)
        made.append(pv)
        return pv.start() if start else pv

    yield make
    problems = []
    for pv in made:
        problems += pv.check_clean_exit()
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- targets

@pytest.fixture(params=["direct", "pgveil"])
def target(request, cluster):
    """Parametrizes a test over PostgreSQL itself and pgveil in front of it."""
    if request.param == "direct":
        return harness.direct_target(cluster)
    return harness.pgveil_target(request.getfixturevalue("pgveil"))


@pytest.fixture
def proxy(pgveil):
    """The pgveil target only."""
    return harness.pgveil_target(pgveil)


# --------------------------------------------------------------------------- driver programs

@pytest.fixture(scope="session")
def node_driver():
    """The node-postgres scenario directory, with its dependencies installed."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "pg")):
        cmd = ["npm", "ci"] if os.path.exists(os.path.join(NODE_DIR, "package-lock.json")) \
            else ["npm", "install"]
        res = subprocess.run(cmd + ["--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return NODE_DIR


@pytest.fixture(scope="session")
def java_driver(workroot):
    """Compiles the JDBC scenario program; returns the class path to run it."""
    if not os.path.exists(JDBC_JAR):
        pytest.fail(f"pgjdbc not found at {JDBC_JAR} (Debian package libpostgresql-jdbc-java)")
    out = os.path.join(workroot, "java-classes")
    os.makedirs(out, exist_ok=True)
    sources = [os.path.join(JAVA_DIR, f) for f in sorted(os.listdir(JAVA_DIR)) if f.endswith(".java")]
    res = subprocess.run(["javac", "-encoding", "UTF-8", "-cp", JDBC_JAR, "-d", out] + sources,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"javac failed:\n{res.stdout}\n{res.stderr}"
    return f"{out}:{JDBC_JAR}"


# --------------------------------------------------------------------------- hangs and leftovers

TEST_TIMEOUT = int(os.environ.get("ITEST_TEST_TIMEOUT", "300"))


class TestTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Interrupts a test that hangs (e.g. a client waiting forever for pgveil):
    SIGALRM raises in the main thread, where the blocking call is."""
    def on_alarm(signum, frame):
        raise TestTimeout(f"test still running after {TEST_TIMEOUT}s: it hangs")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def pytest_configure(config):
    """SIGTERM (a CI time limit, kill) ends the run like Ctrl-C: fixtures tear
    down, so no cluster or pgveil is left running."""
    def on_term(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_term)


@atexit.register
def _kill_leftovers():
    """If the run is interrupted, do not leave pgveil or PostgreSQL running."""
    for pv in Pgveil.instances:
        if pv.alive():
            pv.proc.kill()
            pv.proc.wait()
    for c in list(_clusters):
        try:
            if c.is_running():
                c.stop("immediate")
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# --------------------------------------------------------------------------- failure reports

_clusters = []


def pytest_runtest_setup(item):
    item._pgveil_log_marks = {id(pv): pv.log_size() for pv in Pgveil.instances}
    item._pg_log_marks = {id(c): _size(c.logfile) for c in _clusters}


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    marks = getattr(item, "_pgveil_log_marks", {})
    for pv in Pgveil.instances:
        text = pv.log_text(marks.get(id(pv), 0))
        if text:
            report.sections.append((f"pgveil log ({pv.log_path}, this test)", text[-20000:]))
    pg_marks = getattr(item, "_pg_log_marks", {})
    for c in _clusters:
        try:
            with open(c.logfile, "rb") as f:
                f.seek(pg_marks.get(id(c), 0))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        if text:
            report.sections.append((f"PostgreSQL log ({c.logfile}, this test)", text[-8000:]))
