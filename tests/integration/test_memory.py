"""pgveil's memory stays bounded: a multi-gigabyte result read by a slow
client must not pile up inside the proxy (backpressure toward the server),
and idle sessions are cheap. Sizes can be changed with ITEST_BIG_RESULT_ROWS."""

import os
import socket
import struct
import threading
import time

import pytest

import harness
import pgwire

ROW_WIDTH = 1000
ROWS = int(os.environ.get("ITEST_BIG_RESULT_ROWS", "3000000"))  # ~3 GB on the wire
RSS_HEADROOM_KB = 64 * 1024
IDLE_SESSIONS = 200
IDLE_BYTES_PER_SESSION = 50 * 1024


# Under AddressSanitizer freed memory sits in a quarantine (256 MB by default)
# before reuse, which alone would break any RSS bound: it is turned off for
# these processes, and the same bounds then hold for sanitizer builds too.
ASAN_ENV = {"ASAN_OPTIONS": "quarantine_size_mb=0:thread_local_quarantine_size_kb=0:"
                            "malloc_context_size=2:detect_leaks=1"}


@pytest.fixture
def memory_pgveil(pgveil_factory, pgveil_bin):
    """Starts pgveil for a memory test: info logging, no ASan quarantine."""
    asan = harness.is_sanitizer_build(pgveil_bin)

    def make(**settings):
        settings.setdefault("log_level", "info")
        return pgveil_factory(env=ASAN_ENV if asan else None, **settings)
    return make


class RssSampler(threading.Thread):
    def __init__(self, pv, interval=0.05):
        super().__init__(daemon=True)
        self.pv = pv
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.pv.rss_kb())
                self.samples += 1
            except (OSError, RuntimeError):
                return
            time.sleep(self.interval)


def read_result_slowly(sock, pause_every, pause_s, deadline):
    """Reads one query's response from sock, pausing pause_s seconds after each
    pause_every bytes. Returns (DataRow count, bytes of row data)."""
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    start = end = 0
    rows = 0
    total = 0
    since_pause = 0
    while True:
        if start > 0 and (len(buf) - end) < (1 << 20):
            view[:end - start] = view[start:end]
            end -= start
            start = 0
        n = sock.recv_into(view[end:], len(buf) - end)
        if n == 0:
            raise AssertionError("connection closed mid-result")
        end += n
        total += n
        since_pause += n
        while end - start >= 5:
            mtype = buf[start]
            ln = struct.unpack_from("!I", buf, start + 1)[0]
            if end - start < 1 + ln:
                if 1 + ln > len(buf):
                    raise AssertionError(f"message of {ln} bytes")
                break
            if mtype == 0x44:  # 'D'
                rows += 1
            elif mtype == 0x45:  # 'E'
                raise AssertionError(pgwire.parse_fields(bytes(buf[start + 5:start + 1 + ln])))
            elif mtype == 0x5A:  # 'Z'
                return rows, total
            start += 1 + ln
        if since_pause >= pause_every:
            since_pause = 0
            time.sleep(pause_s)
        if time.monotonic() > deadline:
            raise AssertionError(f"result not read in time ({rows} rows so far)")


@pytest.mark.slow
def test_slow_reader_of_huge_result_keeps_rss_bounded(memory_pgveil):
    pv = memory_pgveil()
    w = pgwire.connect("127.0.0.1", pv.port, database="app_notls")
    with w:
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        w.simple_query("SELECT repeat('w', 1000) FROM generate_series(1, 10000)")  # warm up buffers
        baseline = pv.rss_kb()
        sampler = RssSampler(pv)
        sampler.start()
        w.send(pgwire.query_message(f"SELECT repeat('x', {ROW_WIDTH}) FROM generate_series(1, {ROWS})"))
        w.sock.settimeout(30)
        # Pause 1s after every 256 MB: without backpressure pgveil would buffer
        # what the server produces meanwhile (hundreds of MB per pause).
        rows, nbytes = read_result_slowly(w.sock, 256 << 20, 1.0, time.monotonic() + 240)
        sampler.stop.set()
        sampler.join()
        assert rows == ROWS
        assert nbytes > ROWS * ROW_WIDTH
        assert sampler.samples > 10
        growth = sampler.peak - baseline
        assert growth < RSS_HEADROOM_KB, \
            f"pgveil RSS grew by {growth // 1024} MB while streaming {nbytes >> 20} MB to a slow reader " \
            f"(baseline {baseline // 1024} MB, peak {sampler.peak // 1024} MB)"
        rows_after, _, err = w.simple_query("SELECT 'still fine'")
        assert rows_after == [[b"still fine"]] and err is None


@pytest.mark.slow
def test_stalled_reader_does_not_grow_memory(memory_pgveil):
    """A client that stops reading altogether: pgveil must stop reading the server."""
    pv = memory_pgveil()
    with pgwire.connect("127.0.0.1", pv.port, database="app_notls") as w:
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        baseline = pv.rss_kb()
        w.send(pgwire.query_message("SELECT repeat('s', 1000) FROM generate_series(1, 5000000)"))
        peak = baseline
        for _ in range(40):  # 4 seconds of not reading at all
            time.sleep(0.1)
            peak = max(peak, pv.rss_kb())
        growth = peak - baseline
        assert growth < RSS_HEADROOM_KB, f"pgveil RSS grew by {growth // 1024} MB with a stalled client"
    # closing mid-result: pgveil stays healthy
    with pgwire.connect("127.0.0.1", pv.port, database="app_notls") as w:
        assert w.simple_query("SELECT 1")[0] == [[b"1"]]


@pytest.mark.slow
def test_client_flood_while_server_busy_keeps_rss_bounded(memory_pgveil):
    """The other direction: while the server sleeps in one query, the client
    pushes 512 MB of further queries. pgveil must stop reading the client
    instead of queueing them in memory; afterwards every query is answered."""
    pv = memory_pgveil()
    with pgwire.connect("127.0.0.1", pv.port, database="app_notls") as w:
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        baseline = pv.rss_kb()
        literal = "y" * (1 << 20)
        count = 512
        errors = []

        def flood():
            try:
                w.sock.sendall(pgwire.query_message("SELECT pg_sleep(4)"))
                for _ in range(count):
                    w.sock.sendall(pgwire.query_message(f"SELECT length('{literal}')"))
            except OSError as e:
                errors.append(e)

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        peak = baseline
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.5:
            peak = max(peak, pv.rss_kb())
            time.sleep(0.05)
        answered = 0
        for i in range(count + 1):
            rows = [pgwire.parse_datarow(p) for t, p in w.read_until_ready(timeout=60) if t == b"D"]
            if i > 0:
                assert rows == [[str(1 << 20).encode()]]
            answered += 1
        sender.join(30)
        assert not errors, errors
        assert answered == count + 1
        growth = peak - baseline
        assert growth < RSS_HEADROOM_KB, \
            f"pgveil RSS grew by {growth // 1024} MB while the client flooded a busy server"


@pytest.mark.slow
@pytest.mark.parametrize("dbname", ["app", "app_notls"], ids=["server-tls", "server-plain"])
def test_idle_sessions_are_cheap(memory_pgveil, dbname):
    pv = memory_pgveil(max_client_conn=IDLE_SESSIONS + 50)
    sessions = []
    try:
        for _ in range(10):
            sessions.append(pgwire.connect("127.0.0.1", pv.port, database=dbname))
        for s in sessions:
            assert s.simple_query("SELECT 1")[0] == [[b"1"]]
        time.sleep(0.2)
        before = pv.rss_kb()
        for _ in range(IDLE_SESSIONS):
            s = pgwire.connect("127.0.0.1", pv.port, database=dbname)
            sessions.append(s)
            assert s.simple_query("SELECT 1")[0] == [[b"1"]]
        time.sleep(0.2)
        after = pv.rss_kb()
        per_session = (after - before) * 1024 / IDLE_SESSIONS
        assert per_session < IDLE_BYTES_PER_SESSION, \
            f"{per_session / 1024:.1f} KB of RSS per idle session ({IDLE_SESSIONS} sessions: " \
            f"{before // 1024} MB -> {after // 1024} MB)"
        # they are all still usable
        for s in sessions[::20]:
            assert s.simple_query("SELECT 2")[0] == [[b"2"]]
    finally:
        for s in sessions:
            s.close()
