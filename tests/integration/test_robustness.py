"""Malformed and hostile input toward pgveil over raw sockets. After each test
a normal session opened before it must still answer, and pgveil must still run.
Where PostgreSQL behaves the same the test also runs directly against it."""

import contextlib
import socket
import struct
import threading
import time
import uuid

import psycopg
import pytest

import harness
import pgwire
from pgwire import Wire, message, parse_fields


@contextlib.contextmanager
def witnessed(target):
    """A normal session through pgveil that must survive whatever happens
    inside the block; pgveil must still run and accept a new session after."""
    conn = psycopg.connect(target.conninfo(), autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    yield conn
    try:
        assert conn.execute("SELECT 'still alive'").fetchone() == ("still alive",), \
            "the normal session stopped working"
    finally:
        conn.close()
    assert target.pgveil.alive(), "pgveil is no longer running"
    with psycopg.connect(target.conninfo(), autocommit=True) as fresh:
        assert fresh.execute("SELECT 2").fetchone() == (2,)


@pytest.fixture
def witness(proxy):
    with witnessed(proxy) as conn:
        yield conn


@pytest.fixture
def quick(pgveil_factory):
    """A pgveil of its own with startup_timeout = 2s (the shared one has 10s),
    for clients that stall during startup; a normal session must survive."""
    target = harness.pgveil_target(pgveil_factory(startup_timeout="2s"))
    with witnessed(target):
        yield target


def raw(target):
    return Wire(target.host, target.port, timeout=15)


def expect_protocol_error_and_close(w, timeout=15, codes=("08P01",)):
    """Reads until the server closes. Returns the ErrorResponse fields; fails
    if the connection stays open or no ErrorResponse with one of codes came."""
    try:
        msgs = w.read_until_closed(timeout=timeout)
    except TimeoutError:
        pytest.fail(f"connection still open after {timeout}s")
    errors = [parse_fields(p) for t, p in msgs if t == b"E"]
    assert errors, f"closed without an ErrorResponse (got {[t for t, _ in msgs]})"
    assert errors[-1].get("C") in codes, errors[-1]
    assert errors[-1].get("M"), "ErrorResponse without a message"
    assert errors[-1].get("S") in ("FATAL", "ERROR")
    return errors[-1]


def send_quietly(w, data):
    """Sends, ignoring a peer that already closed (it may answer early)."""
    try:
        w.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def backend_count(admin):
    return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                         (harness.APP_USER,)).fetchone()[0]


# --------------------------------------------------------------------------- before startup

@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\xff\xff\xff\xff" + bytes(range(256)),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
])
def test_garbage_before_startup(proxy, witness, garbage):
    with raw(proxy) as w:
        send_quietly(w, garbage)
        expect_protocol_error_and_close(w)


@pytest.mark.parametrize("length", [0, 4, 7, 10001, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF])
def test_startup_length_out_of_range(proxy, witness, length):
    with raw(proxy) as w:
        send_quietly(w, struct.pack("!II", length, pgwire.PROTOCOL_3_0) + b"user\0x\0\0")
        expect_protocol_error_and_close(w)


def test_protocol_version_2_refused(proxy, witness):
    with raw(proxy) as w:
        send_quietly(w, pgwire.startup_packet({"user": "x", "database": "app"}, version=0x00020000))
        err = expect_protocol_error_and_close(w, codes=("0A000", "08P01"))
        assert "protocol" in err["M"].lower()


def test_unsupported_request_code_refused(proxy, witness):
    with raw(proxy) as w:
        send_quietly(w, struct.pack("!II", 8, 0x04D21234))
        expect_protocol_error_and_close(w, codes=("0A000", "08P01"))


def test_startup_without_terminator(proxy, witness):
    """A startup body whose parameters are not NUL-terminated."""
    with raw(proxy) as w:
        body = struct.pack("!I", pgwire.PROTOCOL_3_0) + b"user\0agent\0database\0ap"
        send_quietly(w, struct.pack("!I", len(body) + 4) + body)
        expect_protocol_error_and_close(w)


def test_truncated_startup_then_close(proxy, witness):
    with raw(proxy) as w:
        w.send(struct.pack("!II", 100, pgwire.PROTOCOL_3_0) + b"user\0ag")
        w.sock.shutdown(socket.SHUT_WR)
        assert w.peer_closed(10), "pgveil kept a half-closed connection open"


def test_silent_client_closed_after_startup_timeout(quick):
    with raw(quick) as silent, raw(quick) as partial:
        partial.send(struct.pack("!I", 64))  # four bytes of a startup packet, then nothing
        t0 = time.monotonic()
        # startup_timeout is 2s here; allow a lot more
        assert silent.peer_closed(15), "a client that sent nothing was not closed"
        assert partial.peer_closed(15), "a client stuck in its startup packet was not closed"
        assert time.monotonic() - t0 < 15


def test_silent_client_after_ssl_request(quick):
    with raw(quick) as w:
        w.send(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
        assert w.read_bytes(1) == b"N"
        assert w.peer_closed(15), "a client that stopped after SSLRequest was not closed"


def test_ssl_and_gssenc_requests_answered_n(proxy, witness):
    with raw(proxy) as w:
        w.send(struct.pack("!II", 8, pgwire.GSSENC_REQUEST_CODE))
        assert w.read_bytes(1) == b"N"
        w.send(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
        assert w.read_bytes(1) == b"N"
        w.startup(user="after-negotiation", database="app")
        rows, _, err = w.simple_query("SELECT current_user")
        assert rows == [[harness.APP_USER.encode()]] and err is None


def test_repeated_ssl_requests_do_not_extend_startup(quick):
    """A client that keeps sending SSLRequest is refused or answered 'N' each
    time, but it cannot hold the connection past startup_timeout (2s)."""
    with raw(quick) as w:
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 20:
            try:
                w.send(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
                answer = w.read_bytes(1, timeout=5)
            except (pgwire.Closed, BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if answer == b"E":  # refused with an ErrorResponse
                w.buf[:0] = b"E"
                expect_protocol_error_and_close(w, codes=("08P01", "0A000", "57014"))
                closed = True
                break
            assert answer == b"N"
            time.sleep(0.1)
        assert closed, "repeated SSLRequests kept the connection open for 20s"


def test_malformed_cancel_requests(proxy, witness):
    for pkt in (struct.pack("!II", 12, pgwire.CANCEL_REQUEST_CODE) + b"\0\0\0\1",
                struct.pack("!II", 20, pgwire.CANCEL_REQUEST_CODE) + b"\0" * 12,
                struct.pack("!IIII", 16, pgwire.CANCEL_REQUEST_CODE, 0, 0)):
        with raw(proxy) as w:
            send_quietly(w, pkt)
            assert w.peer_closed(10), f"connection kept open after {pkt!r}"


def test_many_bad_clients_at_once(proxy, witness):
    def bad(i):
        try:
            with raw(proxy) as w:
                send_quietly(w, (b"\xde\xad\xbe\xef" * 8) if i % 2 else b"\x00\x00\x00\x09\x00\x03\x00\x00\x00")
                w.peer_closed(15)
        except OSError:
            pass

    threads = [threading.Thread(target=bad, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


# --------------------------------------------------------------------------- after startup

def test_unknown_message_type(target, request):
    if target.via_pgveil:
        request.getfixturevalue("witness")
    with raw(target) as w:
        w.startup(user=target.user, database="app", password=target.password)
        send_quietly(w, message(b"!", b"what is this"))
        expect_protocol_error_and_close(w)


@pytest.mark.parametrize("header", [
    b"Q" + struct.pack("!I", 3),            # shorter than its own length field
    b"Q" + struct.pack("!I", 0),
    b"Q" + struct.pack("!I", 0x7FFFFFFF),   # 2 GB: over any maximum
    b"P" + struct.pack("!I", 0xFFFFFFF0),
], ids=["len3", "len0", "len2G", "len4G"])
def test_message_length_out_of_range(proxy, witness, admin, header):
    before = backend_count(admin)
    with raw(proxy) as w:
        w.startup(database="app")
        send_quietly(w, header + b"SELECT 1")
        expect_protocol_error_and_close(w)
    harness.wait_until(lambda: backend_count(admin) <= before, 10, what="the server session to end")


def test_truncated_message_then_close(proxy, witness, admin):
    before = backend_count(admin)
    with raw(proxy) as w:
        w.startup(database="app")
        assert backend_count(admin) >= before  # (lazy backends are fine)
        w.send(b"Q" + struct.pack("!I", 100) + b"SELECT 'trunc")
        w.sock.shutdown(socket.SHUT_WR)
        assert w.peer_closed(10)
    harness.wait_until(lambda: backend_count(admin) <= before, 10, what="the server session to end")


def test_client_vanishes_mid_result(target, admin, request):
    """A client that disconnects while a large result streams: the server
    session goes away (nothing keeps producing rows for nobody)."""
    if target.via_pgveil:
        request.getfixturevalue("witness")
    app = "itest-vanish-" + uuid.uuid4().hex[:8]
    w = raw(target)
    w.startup(user=target.user, database="app", password=target.password, application_name=app)
    w.send(pgwire.query_message("SELECT i, repeat('v', 1000) FROM generate_series(1, 5000000) i"))
    got = 0
    while got < (4 << 20):
        w._fill(time.monotonic() + 10)
        got += len(w.buf)
        w.buf.clear()
    w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    w.close()
    harness.wait_until(lambda: admin.execute(
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name LIKE %s", (f"%{app}%",)).fetchone()[0],
        30, what="the server session to end after the client vanished")


def test_client_vanishes_mid_transaction_releases_locks(target, admin, request):
    if target.via_pgveil:
        request.getfixturevalue("witness")
    table = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f"CREATE TABLE {table} (id int)")
    admin.execute(f"ALTER TABLE {table} OWNER TO {harness.APP_USER}")
    try:
        with raw(target) as w:
            w.startup(user=target.user, database="app", password=target.password)
            for sql in ("BEGIN", f"INSERT INTO {table} VALUES (1)", f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"):
                _, _, err = w.simple_query(sql)
                assert err is None
        # the connection is gone: the transaction must be rolled back and the lock freed
        admin.execute("SET lock_timeout = '20s'")
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    finally:
        admin.execute("RESET lock_timeout")
        admin.execute(f"DROP TABLE {table}")


def test_client_vanishes_mid_copy_in(target, admin, request):
    if target.via_pgveil:
        request.getfixturevalue("witness")
    table = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f"CREATE TABLE {table} (id int)")
    admin.execute(f"ALTER TABLE {table} OWNER TO {harness.APP_USER}")
    try:
        with raw(target) as w:
            w.startup(user=target.user, database="app", password=target.password)
            w.send(pgwire.query_message(f"COPY {table} FROM STDIN"))
            assert w.read_message()[0] == b"G"
            w.send(message(b"d", b"".join(b"%d\n" % i for i in range(1000))))
        # gone without CopyDone: nothing may be committed, and the table is free again
        admin.execute("SET lock_timeout = '20s'")
        with admin.transaction():
            admin.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    finally:
        admin.execute("RESET lock_timeout")
        admin.execute(f"DROP TABLE {table}")


# --------------------------------------------------------------------------- limits

def test_max_client_conn(pgveil_factory):
    pv = pgveil_factory(max_client_conn=3)
    t = harness.pgveil_target(pv)
    sessions = [pgwire.connect(t.host, t.port, database="app") for _ in range(3)]
    try:
        with raw(t) as extra:
            try:
                extra.startup(database="app")
                pytest.fail("a fourth session was accepted with max_client_conn = 3")
            except pgwire.PgError as e:
                assert e.sqlstate == "53300"
            except pgwire.Closed:
                pytest.fail("the extra connection was closed without ErrorResponse 53300")
        for s in sessions:
            rows, _, _ = s.simple_query("SELECT 1")
            assert rows == [[b"1"]]
        sessions.pop().close()

        def slot_free():
            try:
                with pgwire.connect(t.host, t.port, database="app") as w:
                    return w.simple_query("SELECT 'room again'")[0] == [[b"room again"]]
            except pgwire.PgError:
                return False
        harness.wait_until(slot_free, 10, interval=0.2, what="a freed slot")
    finally:
        for s in sessions:
            s.close()


def test_unknown_database_via_pgveil_keeps_running(proxy, witness):
    for _ in range(5):
        with raw(proxy) as w:
            with pytest.raises(pgwire.PgError) as ei:
                w.startup(database="nope_" + uuid.uuid4().hex[:6])
            assert ei.value.sqlstate == "3D000"
