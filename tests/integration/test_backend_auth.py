"""pgveil's side toward the server: SCRAM-SHA-256, MD5 and cleartext
password authentication, with and without TLS (sslmode prefer, disable,
verify-full), and what the client sees when the server refuses pgveil."""

import psycopg
import pytest

import harness

# [databases] entry -> (server role, TLS on pgveil's server connection)
ENTRIES = {
    "app": (harness.APP_USER, True),          # SCRAM, sslmode=prefer (the server offers TLS)
    "app_notls": (harness.APP_USER, False),   # SCRAM over plaintext
    "app_tls": (harness.APP_USER, True),      # SCRAM, sslmode=verify-full against the test CA
    "app_md5": (harness.MD5_USER, False),     # MD5
    "app_plain": (harness.PLAIN_USER, False), # cleartext password
}


@pytest.mark.parametrize("dbname", sorted(ENTRIES))
def test_server_authentication_methods(proxy, admin, dbname):
    role, tls = ENTRIES[dbname]
    with psycopg.connect(proxy.conninfo(dbname=dbname), autocommit=True) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (role, "app")
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (100,)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        row = admin.execute("SELECT s.ssl, a.usename FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                            "WHERE pid = %s", (pid,)).fetchone()
        assert row == (tls, role)


def test_server_methods_as_configured(admin):
    """The cluster really asks each role for the method the test claims."""
    rules = admin.execute("SELECT user_name, auth_method FROM pg_hba_file_rules WHERE type = 'host'").fetchall()
    assert (["md5_agent"], "md5") in rules
    assert (["plain_agent"], "password") in rules
    assert (["all"], "scram-sha-256") in rules
    assert admin.execute("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'md5_agent'").fetchone() == \
        ("md5",)
    assert admin.execute("SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'app_agent'").fetchone() == \
        ("SCRAM-SHA-256",)


@pytest.mark.parametrize("dbname", ["app_badpw", "app_badca"])
def test_server_refusal_reaches_client_as_error(proxy, dbname):
    """A wrong password in [databases], or a server certificate the configured CA
    did not sign: the client gets an error (not a hang), pgveil keeps serving."""
    with pytest.raises(psycopg.OperationalError) as ei:
        with psycopg.connect(proxy.conninfo(dbname=dbname, connect_timeout=20)) as conn:
            conn.execute("SELECT 1")
    assert "timeout" not in str(ei.value).lower()
    assert proxy.pgveil.alive()
    with psycopg.connect(proxy.conninfo()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_direct_logins_with_each_method(cluster):
    """The same credentials work directly (the cluster setup is sound)."""
    for user, pw in ((harness.APP_USER, harness.APP_PASSWORD), (harness.MD5_USER, harness.MD5_PASSWORD),
                     (harness.PLAIN_USER, harness.PLAIN_PASSWORD)):
        with psycopg.connect(f"host=127.0.0.1 port={cluster.port} dbname=app user={user} password={pw} "
                             "sslmode=disable") as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user,)


# --------------------------------------------------------------------------- a server that misbehaves
#
# A real PostgreSQL never does these things, so a few lines of Python play a
# hostile server: pgveil must refuse to treat the session as logged in.

def hostile_server(script):
    """Listens on a loopback port; for each connection reads the startup packet
    and runs script(conn). Returns the port."""
    import socket
    import struct
    import threading

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)

    def serve():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with conn:
                try:
                    n = struct.unpack("!I", conn.recv(4))[0]
                    conn.recv(n - 4)
                    script(conn)
                    conn.recv(65536)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return lsock.getsockname()[1]


def _auth(code, extra=b""):
    import struct
    return b"R" + struct.pack("!Ii", 8 + len(extra), code) + extra


def _ok_after_scram_start(conn):
    conn.sendall(_auth(10, b"SCRAM-SHA-256\0\0"))
    conn.recv(4096)  # SASLInitialResponse
    conn.sendall(_auth(0) + b"Z\0\0\0\x05I")


def _sasl_twice(conn):
    conn.sendall(_auth(10, b"SCRAM-SHA-256\0\0"))
    conn.recv(4096)
    conn.sendall(_auth(10, b"SCRAM-SHA-256\0\0"))


def _flood(conn):
    import struct
    conn.sendall(_auth(0))
    param = b"x\0" + b"y" * 8000 + b"\0"
    for _ in range(20):
        conn.sendall(b"S" + struct.pack("!I", len(param) + 4) + param)
    conn.sendall(b"Z\0\0\0\x05I")


@pytest.mark.parametrize("script, why", [
    (_ok_after_scram_start, "without proving it knows the password"),
    (_sasl_twice, "unexpected second SASL request"),
    (_flood, "more than 64 KB of settings"),
])
def test_hostile_server_login_refused(pgveil_factory, script, why):
    port = hostile_server(script)
    pv = pgveil_factory(databases={"evil": f"host=127.0.0.1 port={port} dbname=x user=u password=p sslmode=disable"})
    t = harness.pgveil_target(pv)
    with pytest.raises(psycopg.OperationalError, match="could not log in to the server"):
        psycopg.connect(t.conninfo(dbname="evil"), connect_timeout=10)
    harness.wait_until(lambda: why in pv.log_text(), 10, what="the reason in pgveil's log")
