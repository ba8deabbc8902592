"""The wire protocol byte by byte, directly and through pgveil: startup
parameters, the extended protocol (named statements, portals, Flush, binary
formats), pipelining, cancel keys, large messages."""

import socket
import struct
import time
import uuid

import pytest

import harness
import pgwire
from pgwire import (FLUSH, SYNC, TERMINATE, Wire, bind_msg, close_msg, describe_msg, execute_msg, message,
                    parse_fields, parse_msg)


def wire(target, **startup):
    w = Wire(target.host, target.port)
    try:
        w.startup(user=target.user, database=target.dbname, password=target.password, **startup)
    except BaseException:
        w.close()
        raise
    return w


# --------------------------------------------------------------------------- startup

def test_startup_parameters_reported(target):
    app = "itest-raw-" + uuid.uuid4().hex[:6]
    with wire(target, application_name=app, client_encoding="LATIN1", DateStyle="SQL, DMY",
              options="-c work_mem=5MB") as w:
        p = w.params
        assert p["application_name"] == app
        assert p["client_encoding"] == "LATIN1"
        assert p["DateStyle"] == "SQL, DMY"
        assert p["server_version"].startswith("15")
        for name in ("server_encoding", "integer_datetimes", "standard_conforming_strings", "TimeZone",
                     "IntervalStyle", "is_superuser", "session_authorization"):
            assert name in p, f"ParameterStatus {name} missing"
        assert p["session_authorization"] == harness.APP_USER
        assert w.backend_key is not None
        rows, tags, err = w.simple_query("SHOW work_mem")
        assert rows == [[b"5MB"]] and err is None
        # the server converts to the client's encoding
        rows, _, _ = w.simple_query("SELECT name FROM users WHERE id = 7")
        assert rows == [["Zoë Müller".encode("latin-1")]]
        rows, _, _ = w.simple_query("SELECT date '2024-03-05'")
        assert rows == [[b"05/03/2024"]]
        # a SET reports the new value
        w.send(pgwire.query_message("SET DateStyle = 'ISO, MDY'"))
        msgs = w.read_until_ready()
        assert w.params["DateStyle"] == "ISO, MDY"
        assert [m for m, _ in msgs] == [b"C", b"S", b"Z"]


def test_unknown_database_is_3D000(target):
    with Wire(target.host, target.port) as w:
        with pytest.raises(pgwire.PgError) as ei:
            w.startup(user=target.user, database="no_such_database", password=target.password)
        assert ei.value.sqlstate == "3D000"
        assert ei.value.fields["S"] == "FATAL"
        assert "no_such_database" in ei.value.fields["M"]
        assert w.peer_closed(10)


def test_startup_and_first_query_in_one_write(proxy):
    """A client may send its first query right behind the StartupMessage when
    no authentication is asked for (pgveil only: PostgreSQL asks for SCRAM)."""
    with Wire(proxy.host, proxy.port) as w:
        w.send(pgwire.startup_packet({"user": proxy.user, "database": "app"}) +
               pgwire.query_message("SELECT 42"))
        w.read_until_ready()
        msgs = w.read_until_ready()
        assert [pgwire.parse_datarow(p) for t, p in msgs if t == b"D"] == [[b"42"]]


def test_database_defaults_to_user_name(proxy):
    """StartupMessage without "database": the database is the user name."""
    with Wire(proxy.host, proxy.port) as w:
        w.send(pgwire.startup_packet({"user": "app"}))
        w.read_until_ready()
        rows, _, err = w.simple_query("SELECT current_database(), current_user")
        assert err is None and rows == [[b"app", harness.APP_USER.encode()]]


def test_newer_minor_protocol_version_negotiated(target):
    """Protocol 3.2 and an unknown _pq_ option: the answer is
    NegotiateProtocolVersion (3.0, option listed), then a normal session."""
    with Wire(target.host, target.port) as w:
        msgs = w.startup(user=target.user, database="app", password=target.password,
                         version=(3 << 16) | 2, **{"_pq_.itest_option": "1"})
        negotiate = [p for t, p in msgs if t == b"v"]
        assert len(negotiate) == 1, [t for t, _ in msgs]
        newest, count = struct.unpack_from("!II", negotiate[0])
        assert newest == pgwire.PROTOCOL_3_0
        assert count == 1 and negotiate[0][8:] == b"_pq_.itest_option\0"
        rows, _, err = w.simple_query("SELECT 'negotiated'")
        assert rows == [[b"negotiated"]] and err is None


# --------------------------------------------------------------------------- simple protocol

def test_simple_query_shapes(target):
    with wire(target) as w:
        # empty query
        w.send(pgwire.query_message(""))
        assert [t for t, _ in w.read_until_ready()] == [b"I", b"Z"]
        # several statements, one with an error: the rest of the string is skipped
        rows, tags, err = w.simple_query("SELECT 1; SELECT 1/0; SELECT 3")
        assert rows == [[b"1"]] and tags == ["SELECT 1"] and err["C"] == "22012"
        # the transaction status byte of ReadyForQuery
        w.send(pgwire.query_message("BEGIN"))
        assert w.read_until_ready()[-1] == (b"Z", b"T")
        w.send(pgwire.query_message("SELECT 1/0"))
        assert w.read_until_ready()[-1] == (b"Z", b"E")
        w.send(pgwire.query_message("ROLLBACK"))
        assert w.read_until_ready()[-1] == (b"Z", b"I")
        # a notice from the server comes through as 'N'
        w.send(pgwire.query_message("DO $$ BEGIN RAISE WARNING 'careful'; END $$"))
        msgs = w.read_until_ready()
        notices = [parse_fields(p) for t, p in msgs if t == b"N"]
        assert notices and notices[0]["M"] == "careful" and notices[0]["S"] == "WARNING"


def test_pipelined_simple_queries_in_one_write(target):
    with wire(target) as w:
        n = 200
        w.send(b"".join(pgwire.query_message(f"SELECT {i}") for i in range(n)))
        for i in range(n):
            rows = [pgwire.parse_datarow(p) for t, p in w.read_until_ready() if t == b"D"]
            assert rows == [[str(i).encode()]]


def test_terminate_closes(target):
    with wire(target) as w:
        w.send(TERMINATE)
        assert w.peer_closed(10)


def test_half_close_after_query_still_answers(target):
    """Queries sent before the client shuts down its sending side are answered
    (PostgreSQL reads them, answers, then sees end of file)."""
    with wire(target) as w:
        w.send(pgwire.query_message("SELECT 'answered'") + pgwire.query_message("SELECT pg_sleep(0.5), 2"))
        w.sock.shutdown(socket.SHUT_WR)
        msgs = w.read_until_closed(timeout=15)
        rows = [pgwire.parse_datarow(p) for t, p in msgs if t == b"D"]
        assert rows == [[b"answered"], [b"", b"2"]], [t for t, _ in msgs]


def test_messages_split_into_single_bytes(target):
    """Startup and extended-protocol messages arriving one byte per segment."""
    with Wire(target.host, target.port) as w:
        w.startup(user=target.user, database="app", password=target.password, dribble=0.005,
                  application_name="dribble")
        assert w.params["application_name"] == "dribble"
        w.send_slowly(parse_msg("", "SELECT $1::int * 2") + bind_msg("", "", [b"21"]) + execute_msg("") + SYNC,
                      0.005)
        msgs = w.read_until()
        assert [pgwire.parse_datarow(p) for t, p in msgs if t == b"D"] == [[b"42"]]


def test_large_client_message(target):
    """A 32 MB query string and a 16 MB bind parameter pass through whole."""
    big = "x" * (32 << 20)
    with wire(target) as w:
        rows, _, err = w.simple_query(f"SELECT length('{big}'), md5('{big}')", timeout=60)
        import hashlib
        assert err is None
        assert rows == [[str(len(big)).encode(), hashlib.md5(big.encode()).hexdigest().encode()]]
        param = bytes(range(256)) * (1 << 16)
        w.send(parse_msg("", "SELECT length($1::bytea), md5($1::bytea)") +
               bind_msg("", "", [param], param_formats=[1]) + execute_msg("") + SYNC)
        msgs = w.read_until(timeout=60)
        rows = [pgwire.parse_datarow(p) for t, p in msgs if t == b"D"]
        assert rows == [[str(len(param)).encode(), hashlib.md5(param).hexdigest().encode()]]


# --------------------------------------------------------------------------- extended protocol

def test_extended_protocol_named_statement_and_portal(target):
    with wire(target) as w:
        w.send(parse_msg("s1", "SELECT id, name FROM users WHERE id <= $1 ORDER BY id", [23]) +
               describe_msg(b"S", "s1") + SYNC)
        msgs = w.read_until()
        assert [t for t, _ in msgs] == [b"1", b"t", b"T", b"Z"]
        # ParameterDescription names int4
        assert struct.unpack_from("!hI", msgs[1][1]) == (1, 23)
        # a portal read 3 rows at a time, inside a transaction
        w.send(pgwire.query_message("BEGIN"))
        w.read_until_ready()
        w.send(bind_msg("p1", "s1", [b"8"]) + execute_msg("p1", 3) + FLUSH)
        got = []
        types = []
        while True:
            t, p = w.read_message()
            types.append(t)
            if t == b"D":
                got.append(pgwire.parse_datarow(p)[0])
            if t == b"s":  # PortalSuspended arrives without Sync thanks to Flush
                break
        assert types == [b"2", b"D", b"D", b"D", b"s"]
        w.send(execute_msg("p1", 3) + execute_msg("p1", 0) + close_msg(b"P", "p1") + SYNC)
        msgs = w.read_until()
        got += [pgwire.parse_datarow(p)[0] for t, p in msgs if t == b"D"]
        assert got == [str(i).encode() for i in range(1, 9)]
        assert [t for t, _ in msgs if t != b"D"] == [b"s", b"C", b"3", b"Z"]
        w.send(pgwire.query_message("COMMIT"))
        w.read_until_ready()
        # the named statement lives on; binary results
        w.send(bind_msg("", "s1", [b"7"], result_formats=[1, 0]) + describe_msg(b"P", "") +
               execute_msg("") + close_msg(b"S", "s1") + SYNC)
        msgs = w.read_until()
        assert [t for t, _ in msgs] == [b"2", b"T", b"D", b"D", b"D", b"D", b"D", b"D", b"D", b"C", b"3", b"Z"]
        rows = [pgwire.parse_datarow(p) for t, p in msgs if t == b"D"]
        assert rows[6] == [struct.pack("!i", 7), "Zoë Müller".encode()]
        # after Close, the statement is gone
        w.send(bind_msg("", "s1", [b"1"]) + execute_msg("") + SYNC)
        msgs = w.read_until()
        assert parse_fields([p for t, p in msgs if t == b"E"][0])["C"] == "26000"


def test_extended_protocol_error_skips_to_sync(target):
    with wire(target) as w:
        w.send(parse_msg("", "SELECT 1/$1::int") + bind_msg("", "", [b"0"]) + execute_msg("") +
               parse_msg("", "SELECT 'skipped'") + bind_msg("", "") + execute_msg("") + SYNC +
               parse_msg("", "SELECT 'after sync'") + bind_msg("", "") + execute_msg("") + SYNC)
        first = w.read_until()
        # (the planner folds 1/0 while binding: the error answers Bind)
        assert [t for t, _ in first] == [b"1", b"E", b"Z"]
        assert parse_fields(first[1][1])["C"] == "22012"
        second = w.read_until()
        assert [pgwire.parse_datarow(p) for t, p in second if t == b"D"] == [[b"after sync"]]


def test_flush_without_sync(target):
    """Flush must make the server's answers arrive before any Sync."""
    with wire(target) as w:
        w.send(parse_msg("f1", "SELECT $1::text") + FLUSH)
        assert w.read_message(timeout=10) == (b"1", b"")
        w.send(bind_msg("", "f1", [b"hi"]) + execute_msg("") + FLUSH)
        got = [w.read_message(timeout=10) for _ in range(3)]
        assert [t for t, _ in got] == [b"2", b"D", b"C"]
        w.send(SYNC)
        assert w.read_message(timeout=10)[0] == b"Z"


def test_copy_protocol_raw(target, admin):
    table = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f"CREATE TABLE {table} (id int, v text)")
    admin.execute(f"ALTER TABLE {table} OWNER TO {harness.APP_USER}")
    try:
        with wire(target) as w:
            w.send(pgwire.query_message(f"COPY {table} FROM STDIN"))
            t, p = w.read_message()
            assert t == b"G"
            data = b"".join(f"{i}\tv{i}\n".encode() for i in range(1000))
            # many small CopyData messages, then CopyDone
            w.send(b"".join(message(b"d", data[i:i + 100]) for i in range(0, len(data), 100)) + message(b"c"))
            msgs = w.read_until_ready()
            assert (b"C", b"COPY 1000\0") in msgs
            w.send(pgwire.query_message(f"COPY {table} TO STDOUT"))
            msgs = w.read_until_ready()
            assert msgs[0][0] == b"H"
            assert b"".join(p for t, p in msgs if t == b"d") == data
            assert (b"C", b"COPY 1000\0") in msgs
            # CopyFail aborts
            w.send(pgwire.query_message(f"COPY {table} FROM STDIN"))
            assert w.read_message()[0] == b"G"
            w.send(message(b"d", b"5000\tx\n") + message(b"f", b"client gave up\0"))
            msgs = w.read_until_ready()
            err = [parse_fields(p) for t, p in msgs if t == b"E"][0]
            assert err["C"] == "57014" and "client gave up" in err["M"]
            rows, _, _ = w.simple_query(f"SELECT count(*) FROM {table}")
            assert rows == [[b"1000"]]
    finally:
        admin.execute(f"DROP TABLE {table}")


def test_notification_message_raw(target):
    ch = "ch_" + uuid.uuid4().hex[:8]
    with wire(target) as listener, wire(target) as notifier:
        listener.simple_query(f"LISTEN {ch}")
        notifier.simple_query(f"NOTIFY {ch}, 'payload'")
        # delivered while the listener is idle, without a query
        t, p = listener.read_message(timeout=10)
        assert t == b"A"
        pid = struct.unpack_from("!i", p)[0]
        channel, payload, _ = p[4:].split(b"\0")
        assert (channel, payload) == (ch.encode(), b"payload")
        rows, _, _ = notifier.simple_query("SELECT pg_backend_pid()")
        assert pid == int(rows[0][0])  # the notifying server process's own pid


# --------------------------------------------------------------------------- cancel

def _run_sleep(w, seconds):
    w.send(pgwire.query_message(f"SELECT pg_sleep({seconds})"))


def _wait_active(admin, pid):
    harness.wait_until(lambda: admin.execute(
        "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
        (pid,)).fetchone(), 15, what="pg_sleep to run")


def _server_pid(w):
    rows, _, _ = w.simple_query("SELECT pg_backend_pid()")
    return int(rows[0][0])


def test_cancel_with_key_hits_only_its_session(target, admin):
    with wire(target) as a, wire(target) as b:
        pid_a, pid_b = _server_pid(a), _server_pid(b)
        _run_sleep(a, 30)
        _run_sleep(b, 3)
        _wait_active(admin, pid_a)
        _wait_active(admin, pid_b)
        t0 = time.monotonic()
        pgwire.send_cancel(target.host, target.port, *a.backend_key)
        msgs = a.read_until_ready(timeout=20)
        err = [parse_fields(p) for t, p in msgs if t == b"E"]
        assert err and err[0]["C"] == "57014", msgs
        assert time.monotonic() - t0 < 20
        # b was not touched: its query completes normally
        msgs = b.read_until_ready(timeout=20)
        assert not [p for t, p in msgs if t == b"E"]
        assert (b"C", b"SELECT 1\0") in msgs
        rows, _, err = a.simple_query("SELECT 'a lives'")
        if err and err["C"] == "57014":  # see harness.retry_stray_cancel
            rows, _, err = a.simple_query("SELECT 'a lives'")
        assert rows == [[b"a lives"]] and err is None


def test_cancel_with_wrong_key_does_nothing(target, admin):
    with wire(target) as w:
        pid = _server_pid(w)
        key_pid, key = w.backend_key
        _run_sleep(w, 2)
        _wait_active(admin, pid)
        pgwire.send_cancel(target.host, target.port, key_pid, key ^ 0x5A5A5A5A)
        pgwire.send_cancel(target.host, target.port, key_pid ^ 0x1234, key)
        msgs = w.read_until_ready(timeout=20)
        assert not [parse_fields(p) for t, p in msgs if t == b"E"], "a wrong cancel key cancelled the query"
        assert [pgwire.parse_datarow(p) for t, p in msgs if t == b"D"] == [[b""]]


def test_cancel_during_extended_protocol(target, admin):
    with wire(target) as w:
        pid = _server_pid(w)
        w.send(parse_msg("", "SELECT pg_sleep($1::float8)") + bind_msg("", "", [b"30"]) + execute_msg("") + SYNC)
        _wait_active(admin, pid)
        pgwire.send_cancel(target.host, target.port, *w.backend_key)
        msgs = w.read_until(timeout=20)
        assert [parse_fields(p)["C"] for t, p in msgs if t == b"E"] == ["57014"]
        rows, _, err = w.simple_query("SELECT 1")
        if err and err["C"] == "57014":  # see harness.retry_stray_cancel
            rows, _, err = w.simple_query("SELECT 1")
        assert rows == [[b"1"]] and err is None
