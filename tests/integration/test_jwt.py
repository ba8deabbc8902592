"""Token authentication ([oidc]): the agent's password is an OIDC JWT.

Tokens are minted with the real `pgveil-token` (keys from `openssl genpkey`),
or, for shapes it cannot produce (tampered payloads, alg none, nested claims),
signed here with the `openssl` CLI. Keys reach pgveil as a JWKS file written
from `pgveil-token --jwks`, or over HTTPS from a local test server that
presents the test CA's server certificate.

psycopg 3 cannot show the SQLSTATE of an error during connection (libpq keeps
no result for it), so every refusal is also checked with the raw protocol
client of pgwire.py, which sees the ErrorResponse fields themselves.

Every pgveil here keeps the harness's dev_trust_auth = yes: with [oidc] set
it must be ignored, which the refusals below also show. pgveil only: there is
no "direct" variant.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import ssl
import struct
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

import harness
import pgwire

ISSUER = "https://idp.itest.example/realms/agents"
AUDIENCE = "pgveil-itest"
EXPIRY_MESSAGE = "the agent's token has expired; reconnect with a new token"
PLAINTEXT_MESSAGE = "pgveil accepts tokens only over TLS: connect with sslmode=require"


# --------------------------------------------------------------------------- keys and tokens

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Idp:
    """Signing keys (PEM files from openssl genpkey) and the pgveil-token tool."""

    def __init__(self, directory, tool):
        self.dir = directory
        self.tool = tool
        os.makedirs(directory, exist_ok=True)
        self.pem = {}

    def genkey(self, name, kind):
        path = os.path.join(self.dir, f"{name}.pem")
        if kind == "rsa":
            opts = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
        else:
            opts = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
        harness.run(["openssl", "genpkey"] + opts + ["-out", path])
        self.pem[name] = path

    def jwks(self, *pairs):
        """The JWKS document for (key name, kid) pairs, built from pgveil-token --jwks."""
        keys = []
        for name, kid in pairs:
            out = harness.run([self.tool, "--key", self.pem[name], "--kid", kid, "--jwks"]).stdout
            keys += json.loads(out)["keys"]
        return {"keys": keys}

    def write_jwks(self, filename, *pairs):
        path = os.path.join(self.dir, filename)
        with open(path, "w") as f:
            json.dump(self.jwks(*pairs), f)
        return path

    def mint(self, key, kid, sub, aud=AUDIENCE, iss=ISSUER, ttl=None, groups=None, alg=None,
             groups_claim=None, nbf=None):
        cmd = [self.tool, "--key", self.pem[key], "--kid", kid, "--sub", sub, "--aud", aud, "--iss", iss]
        for flag, value in (("--ttl", ttl), ("--groups", groups), ("--alg", alg),
                            ("--groups-claim", groups_claim), ("--nbf", nbf)):
            if value is not None:
                cmd += [flag, str(value)]
        token = harness.run(cmd).stdout.strip()
        assert token.count(".") == 2, token
        return token

    def claims(self, sub, ttl=3600, **extra):
        now = int(time.time())
        c = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + ttl}
        c.update(extra)
        return c

    def sign_rs256(self, key, header, claims):
        """A token signed here (RS256 through openssl dgst) for shapes pgveil-token cannot make."""
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.pem[key]],
                             input=signing_input.encode(), capture_output=True, check=True).stdout
        return signing_input + "." + b64url(sig)


@pytest.fixture(scope="module")
def idp(workroot, pgveil_bin):
    tool = os.path.join(os.path.dirname(pgveil_bin), "pgveil-token")
    assert os.access(tool, os.X_OK), f"pgveil-token is not built next to {pgveil_bin}"
    i = Idp(os.path.join(workroot, f"idp-{uuid.uuid4().hex[:8]}"), tool)
    i.genkey("rsa", "rsa")      # kid rsa-1
    i.genkey("ec", "ec")        # kid ec-1
    i.genkey("intruder", "rsa")  # not in any JWKS; signs with kid rsa-1 to impersonate it
    i.genkey("next", "rsa")     # kid rsa-2: published later (key rotation)
    i.jwks_path = i.write_jwks("jwks.json", ("rsa", "rsa-1"), ("ec", "ec-1"))
    return i


def test_token_tool_jwks_output(idp):
    """pgveil-token --jwks prints a JWKS document for the public part of the key."""
    rsa = idp.jwks(("rsa", "rsa-1"))["keys"]
    ec = idp.jwks(("ec", "ec-1"))["keys"]
    assert len(rsa) == 1 and len(ec) == 1
    assert rsa[0]["kty"] == "RSA" and rsa[0]["kid"] == "rsa-1" and rsa[0]["alg"] == "RS256"
    assert rsa[0]["e"] == "AQAB" and len(b64url_decode(rsa[0]["n"])) == 256
    assert "d" not in rsa[0] and "p" not in rsa[0], "private parts in the JWKS"
    assert ec[0]["kty"] == "EC" and ec[0]["crv"] == "P-256" and ec[0]["kid"] == "ec-1"
    assert ec[0]["alg"] == "ES256" and "d" not in ec[0]
    assert len(b64url_decode(ec[0]["x"])) == 32 and len(b64url_decode(ec[0]["y"])) == 32
    # the public key in the JWKS is the key's own
    modulus = harness.run(["openssl", "pkey", "-in", idp.pem["rsa"], "-noout", "-text"]).stdout
    hexdigits = re.search(r"modulus:\s*((?:[0-9a-f]{2}:?\s*)+)", modulus).group(1)
    n_from_openssl = bytes.fromhex(re.sub(r"[^0-9a-f]", "", hexdigits)).lstrip(b"\0")
    assert b64url_decode(rsa[0]["n"]) == n_from_openssl


# --------------------------------------------------------------------------- pgveil with [oidc]

def write_oidc_config(pv, idp, oidc=None):
    """Writes pv's configuration with an [oidc] section for idp after the harness's own sections
    (oidc: settings to change; None removes one)."""
    section = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": idp.jwks_path}
    section.update(oidc or {})
    section = {k: v for k, v in section.items() if v is not None}
    pv.write_config(pv.config_text() + "\n[oidc]\n" + "".join(f"{k} = {v}\n" for k, v in section.items()))


def start_oidc(factory, idp, oidc=None, tls=True, start=True, **settings):
    """A pgveil with an [oidc] section (written after the harness's own sections)."""
    pv = factory(start=False, tls=tls, **settings)
    write_oidc_config(pv, idp, oidc)
    return pv.start() if start else pv


def conninfo(pv, token, sslmode="require", user=harness.PROXY_USER, **kw):
    params = {"host": "127.0.0.1", "port": pv.port, "dbname": "app", "user": user, "password": token,
              "sslmode": sslmode, "connect_timeout": 10}
    params.update(kw)
    return " ".join(f"{k}={harness._quote(v)}" for k, v in params.items() if v is not None)


def connect(pv, token, **kw):
    return psycopg.connect(conninfo(pv, token, **kw), autocommit=True)


def psql(pv, token, *args, env=None, timeout=60, **kw):
    """psql with the token as password; -w: never prompt."""
    cmd = ["psql", "-X", "-At", "-w", "-v", "ON_ERROR_STOP=1", "-d", conninfo(pv, token, **kw)] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or harness.clean_env())


def wire(pv, certs, token, tls=True, user=harness.PROXY_USER, database="app", **params):
    """Raw protocol login (SSLRequest, startup, the token as cleartext password)."""
    w = pgwire.Wire("127.0.0.1", pv.port, timeout=20)
    try:
        if tls:
            w.send(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
            assert w.read_bytes(1) == b"S"
            w.wrap_tls(certs.ca_crt)
        w.startup(user=user, database=database, password=token, **params)
    except BaseException:
        w.close()
        raise
    return w


def wire_refusal(pv, certs, token, **kw):
    """Logs in with the raw client expecting a FATAL; returns its fields."""
    with pytest.raises(pgwire.PgError) as ei:
        wire(pv, certs, token, **kw).close()
    return ei.value.fields


def assert_works(conn):
    assert conn.execute("SELECT 40 + 2").fetchone() == (42,)


def server_view(admin, backend_pid):
    return admin.execute("SELECT application_name, usename FROM pg_stat_activity WHERE pid = %s",
                         (backend_pid,)).fetchone()


# --------------------------------------------------------------------------- good tokens

@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_good_token_psycopg(pgveil_factory, idp, certs, admin, alg):
    pv = start_oidc(pgveil_factory, idp)
    sub = f"agent-{alg.lower()}-{uuid.uuid4().hex[:6]}"
    key, kid = ("rsa", "rsa-1") if alg == "RS256" else ("ec", "ec-1")
    token = idp.mint(key, kid, sub, groups="dev,readers")
    assert json.loads(b64url_decode(token.split(".")[0]))["alg"] == alg
    mark = pv.log_size()
    with connect(pv, token, application_name="my-own-app") as conn:
        user, pid = conn.execute("SELECT current_user, pg_backend_pid()").fetchone()
        assert user == harness.APP_USER
        assert conn.pgconn.ssl_in_use
        assert server_view(admin, pid) == (f"pgveil:{sub}", harness.APP_USER)
        assert_works(conn)
    log = pv.log_text(mark)
    assert re.search(rf"{re.escape(sub)}@app .*token accepted \(2 groups, expires in \d+s\)", log), log
    assert token not in log and token.split(".")[2] not in log
    # the raw client gets in the same way
    with wire(pv, certs, token, application_name="raw-client") as w:
        rows, _, err = w.simple_query("SELECT current_user")
        assert err is None and rows == [[harness.APP_USER.encode()]]


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_good_token_psql(pgveil_factory, idp, admin, alg):
    pv = start_oidc(pgveil_factory, idp)
    sub = f"psql-{alg.lower()}-{uuid.uuid4().hex[:6]}"
    key, kid = ("rsa", "rsa-1") if alg == "RS256" else ("ec", "ec-1")
    token = idp.mint(key, kid, sub)
    proc = subprocess.Popen(
        ["psql", "-X", "-At", "-w", "-v", "ON_ERROR_STOP=1", "-d", conninfo(pv, token),
         "-c", "SELECT current_user", "-c", "SELECT pg_sleep(1.5)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=harness.clean_env(PGAPPNAME="psql-chose-this"))
    try:
        # while psql sleeps, the server shows the session under the subject's name
        row = harness.wait_until(
            lambda: admin.execute("SELECT application_name, usename FROM pg_stat_activity "
                                  "WHERE application_name LIKE %s", (f"%{sub}%",)).fetchone(),
            15, what="the psql session in pg_stat_activity")
        assert row == (f"pgveil:{sub}", harness.APP_USER)
        assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                             "'psql-chose-this'").fetchone() == (0,)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.split("\n")[0] == harness.APP_USER


def test_first_tls_logins_do_not_stall(pgveil_factory, idp, certs):
    """The first logins over TLS of fresh pgveil processes (when a worker's first
    handshake is slow, the client's next TLS flight is often already waiting):
    none may be left hanging until startup_timeout."""
    token = idp.mint("ec", "ec-1", "early-agent")
    failures = []
    for i in range(12):
        pv = start_oidc(pgveil_factory, idp)
        for j in range(3):
            t0 = time.monotonic()
            try:
                with wire(pv, certs, token) as w:
                    assert w.simple_query("SELECT 1")[0] == [[b"1"]]
            except (pgwire.PgError, TimeoutError) as e:
                failures.append(f"pgveil {i}, login {j}: {e!r} after {time.monotonic() - t0:.1f}s")
        pv.stop()
    assert failures == [], failures


# --------------------------------------------------------------------------- bad tokens

def _tampered(idp):
    token = idp.mint("rsa", "rsa-1", "harmless-agent")
    header, payload, sig = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["sub"] = "admin"
    return header + "." + b64url(json.dumps(claims).encode()) + "." + sig


def _alg_none(idp):
    header = {"alg": "none", "typ": "JWT", "kid": "rsa-1"}
    return (b64url(json.dumps(header).encode()) + "." +
            b64url(json.dumps(idp.claims("none-agent")).encode()) + ".")


def _hs256_with_public_key(idp):
    """The algorithm-confusion attack: HS256 keyed with the RSA public key."""
    public_pem = harness.run(["openssl", "pkey", "-in", idp.pem["rsa"], "-pubout"]).stdout.encode()
    signing_input = (b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()) + "." +
                     b64url(json.dumps(idp.claims("confused-agent")).encode()))
    return signing_input + "." + b64url(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())


GARBAGE = "this-is-no-token-" + uuid.uuid4().hex

# kind: (token maker, [oidc] overrides, regex of the reason in the log)
BAD_TOKENS = {
    "expired": (lambda i: i.mint("rsa", "rsa-1", "late-agent", ttl=-3600), {},
                r"token expired \d+ seconds ago"),
    "not_yet_valid": (lambda i: i.mint("rsa", "rsa-1", "early-agent", nbf=3600), {},
                      r"token not valid before"),
    "wrong_issuer": (lambda i: i.mint("rsa", "rsa-1", "lost-agent", iss="https://evil.example/"), {},
                     r"issuer .*is not the configured issuer"),
    "wrong_audience": (lambda i: i.mint("rsa", "rsa-1", "lost-agent", aud="some-other-service"), {},
                       r"audience does not include"),
    "other_key_same_kid": (lambda i: i.mint("intruder", "rsa-1", "intruder"), {},
                           r"signature verification failed"),
    "tampered_payload": (_tampered, {}, r"signature verification failed"),
    "unknown_kid": (lambda i: i.mint("rsa", "no-such-kid", "agent"), {}, r'unknown key id "no-such-kid"'),
    "alg_not_allowed": (lambda i: i.mint("rsa", "rsa-1", "agent", alg="RS384"), {},
                        r"algorithm RS384 is not allowed"),
    "alg_none": (_alg_none, {}, r"algorithm none is not allowed"),
    "hs256_with_rsa_public_key": (_hs256_with_public_key, {"algorithms": "RS256, ES256, HS256"},
                                  r'key "rsa-1" cannot verify algorithm HS256'),
    "garbage": (lambda i: GARBAGE, {}, r"token is not three dot-separated parts"),
    "empty": (lambda i: "", {}, r"token is not three dot-separated parts"),
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_bad_token(pgveil_factory, idp, certs, kind):
    make, oidc, reason = BAD_TOKENS[kind]
    pv = start_oidc(pgveil_factory, idp, oidc=oidc)
    good = idp.mint("rsa", "rsa-1", "steady-agent")
    bystander = connect(pv, good)
    token = make(idp)
    mark = pv.log_size()
    try:
        # psql
        res = psql(pv, token, "-c", "SELECT 1")
        assert res.returncode == 2, res.stdout + res.stderr
        if token == "":
            # libpq never sends an empty password; the raw client below does
            assert "no password supplied" in res.stderr or "FATAL:  invalid token" in res.stderr, res.stderr
        else:
            assert "FATAL:  invalid token" in res.stderr, res.stderr
        assert_works(bystander)
        # psycopg
        with pytest.raises(psycopg.OperationalError) as ei:
            connect(pv, token).close()
        if token != "":
            assert "FATAL:  invalid token" in str(ei.value)
        # (psycopg 3.1 has no SQLSTATE for errors during connection; newer ones may)
        assert ei.value.sqlstate in (None, "28P01")
        assert_works(bystander)
        # the raw client: the exact ErrorResponse
        fields = wire_refusal(pv, certs, token)
        assert (fields.get("S"), fields.get("C"), fields.get("M")) == ("FATAL", "28P01", "invalid token"), fields
        assert_works(bystander)
        # a new good session gets in
        with connect(pv, good) as conn:
            assert_works(conn)
    finally:
        bystander.close()
    log = pv.log_text(mark)
    refusals = re.findall(r"token refused: (.*)", log)
    want = 1 if token == "" else 3  # libpq sends no empty password: only the raw client's counts
    assert len(refusals) >= want, log
    assert all(re.search(reason, r) for r in refusals), refusals
    # nothing of the token reaches the log
    for part in [token] + [p for p in token.split(".") if len(p) >= 16]:
        if part:
            assert part not in log, f"token text in the log: {part[:40]}..."
    assert pv.alive()


# --------------------------------------------------------------------------- match_user, plaintext

def test_match_user(pgveil_factory, idp, certs):
    pv = start_oidc(pgveil_factory, idp, oidc={"match_user": "yes"})
    token = idp.mint("rsa", "rsa-1", "agent-7")
    with connect(pv, token, user="agent-7") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (harness.APP_USER,)
    mark = pv.log_size()
    fields = wire_refusal(pv, certs, token, user="agent-8")
    assert (fields.get("S"), fields.get("C"), fields.get("M")) == ("FATAL", "28000", "token not allowed"), fields
    with pytest.raises(psycopg.OperationalError, match="FATAL:  token not allowed"):
        connect(pv, token, user="agent-8").close()
    res = psql(pv, token, "-c", "SELECT 1", user="agent-8")
    assert res.returncode == 2 and "FATAL:  token not allowed" in res.stderr, res.stderr
    log = pv.log_text(mark)
    assert 'startup user "agent-8" is not the token subject "agent-7"' in log, log
    assert token not in log
    # without match_user the same token serves any startup user name
    pv2 = start_oidc(pgveil_factory, idp)
    with connect(pv2, token, user="agent-8") as conn:
        assert_works(conn)


def test_plaintext_refused(pgveil_factory, idp, certs):
    pv = start_oidc(pgveil_factory, idp)  # TLS available, allow_plaintext_auth = no
    token = idp.mint("rsa", "rsa-1", "careless-agent")
    res = psql(pv, token, "-c", "SELECT 1", sslmode="disable")
    assert res.returncode == 2 and f"FATAL:  {PLAINTEXT_MESSAGE}" in res.stderr, res.stderr
    with pytest.raises(psycopg.OperationalError, match=re.escape(PLAINTEXT_MESSAGE)):
        connect(pv, token, sslmode="disable").close()
    # the raw client: refused before any password request, so the token is never sent
    with pytest.raises(pgwire.PgError) as ei:
        wire(pv, certs, token, tls=False).close()
    assert (ei.value.fields.get("S"), ei.value.fields.get("C"), ei.value.fields.get("M")) == \
        ("FATAL", "28000", PLAINTEXT_MESSAGE)
    assert [m for m, _ in ei.value.msgs if m == b"R"] == []
    # over TLS the same token works
    with connect(pv, token) as conn:
        assert_works(conn)
    assert token not in pv.log_text()


def test_plaintext_allowed(pgveil_factory, idp, certs):
    pv = start_oidc(pgveil_factory, idp, tls=False, allow_plaintext_auth="yes")
    token = idp.mint("ec", "ec-1", "loopback-agent")
    with connect(pv, token, sslmode="disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (harness.APP_USER,)
    res = psql(pv, token, "-c", "SELECT current_user", sslmode="disable")
    assert res.returncode == 0 and res.stdout.strip() == harness.APP_USER, res.stderr
    with wire(pv, certs, token, tls=False) as w:
        assert w.simple_query("SELECT 1")[2] is None
    # bad tokens are still refused
    res = psql(pv, idp.mint("ec", "ec-1", "x", ttl=-3600), "-c", "SELECT 1", sslmode="disable")
    assert res.returncode == 2 and "FATAL:  invalid token" in res.stderr, res.stderr


# --------------------------------------------------------------------------- groups

def test_groups_from_dotted_path(pgveil_factory, idp, certs):
    pv = start_oidc(pgveil_factory, idp, oidc={"groups_claim": "realm_access.roles",
                                                "subject_claim": "preferred_username"})
    # Keycloak-style: {"realm_access": {"roles": [...]}}, the subject in preferred_username
    nested = idp.sign_rs256("rsa", {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"},
                            idp.claims("f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
                                       preferred_username="kc-agent",
                                       realm_access={"roles": ["offline_access", "dba", "readers"]},
                                       groups=["not", "these"]))
    mark = pv.log_size()
    with connect(pv, nested) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (harness.APP_USER,)
    log = pv.log_text(mark)
    assert re.search(r"kc-agent@app .*token accepted \(3 groups,", log), log
    # a space-separated string at the same path
    spaced = idp.sign_rs256("rsa", {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"},
                            idp.claims("x", preferred_username="kc-agent-2",
                                       realm_access={"roles": "a b"}))
    mark = pv.log_size()
    with connect(pv, spaced) as conn:
        assert_works(conn)
    assert re.search(r"kc-agent-2@app .*token accepted \(2 groups,", pv.log_text(mark))
    # pgveil-token's flat claim name is read as a one-level path too
    pv2 = start_oidc(pgveil_factory, idp, oidc={"groups_claim": "roles"})
    token = idp.mint("ec", "ec-1", "flat-agent", groups="a,b,c,d", groups_claim="roles")
    mark = pv2.log_size()
    with wire(pv2, certs, token) as w:
        assert w.simple_query("SELECT 1")[2] is None
    assert re.search(r"flat-agent@app .*token accepted \(4 groups,", pv2.log_text(mark))


# --------------------------------------------------------------------------- expiry

def test_token_expiry(pgveil_factory, idp, certs, admin):
    pv = start_oidc(pgveil_factory, idp, oidc={"clock_skew": "0s"})
    sub = f"short-lived-{uuid.uuid4().hex[:6]}"
    token = idp.mint("rsa", "rsa-1", sub, ttl=3)
    idle = wire(pv, certs, token)
    busy = wire(pv, certs, token)
    in_txn = wire(pv, certs, token)
    driver = connect(pv, token)
    try:
        # a session idle inside a transaction, holding a row lock
        for sql in ("BEGIN", "SELECT id FROM users WHERE id = 1 FOR UPDATE"):
            assert in_txn.simple_query(sql)[2] is None
        # the busy session starts a statement that outlasts the token
        busy.send(pgwire.query_message("SELECT pg_sleep(5)"))
        started = time.monotonic()
        assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                             (f"pgveil:{sub}",)).fetchone() == (4,)

        # the idle session is ended soon after expiry
        mtype, payload = idle.read_message(timeout=15)
        assert mtype == b"E", (mtype, payload)
        fields = pgwire.parse_fields(payload)
        assert (fields.get("S"), fields.get("C"), fields.get("M")) == ("FATAL", "28000", EXPIRY_MESSAGE)
        assert idle.peer_closed(10)

        # the running statement finishes, then the session ends
        msgs = busy.read_until_closed(timeout=20)
        types = [m for m, _ in msgs]
        assert b"C" in types and b"E" in types, msgs
        complete = types.index(b"C")
        assert msgs[complete][1].rstrip(b"\0") == b"SELECT 1"
        assert b"D" in types[:complete]
        errors = [pgwire.parse_fields(p) for m, p in msgs if m == b"E"]
        assert types.index(b"E") > complete, msgs
        assert [(e.get("S"), e.get("C"), e.get("M")) for e in errors] == [("FATAL", "28000", EXPIRY_MESSAGE)]
        assert time.monotonic() - started >= 4.5  # pg_sleep(5) was not cut short

        # no new statement starts: the psycopg session, idle since before expiry, fails
        with pytest.raises(psycopg.OperationalError) as ei:
            driver.execute("SELECT 1")
        assert EXPIRY_MESSAGE in str(ei.value), str(ei.value)

        # so is the session that was idle inside its transaction, long since expired by now:
        # it is ended, its transaction rolled back and its lock freed
        try:
            mtype, payload = in_txn.read_message(timeout=5)
        except TimeoutError:
            pytest.fail("a session idle in a transaction was not ended when its token expired")
        assert mtype == b"E", (mtype, payload)
        fields = pgwire.parse_fields(payload)
        assert (fields.get("S"), fields.get("C"), fields.get("M")) == ("FATAL", "28000", EXPIRY_MESSAGE)
        assert in_txn.peer_closed(10)
        with psycopg.connect(pv.cluster.admin_conninfo(), autocommit=True) as other:
            other.execute("SET lock_timeout = '10s'")
            other.execute("SELECT id FROM users WHERE id = 1 FOR UPDATE")
    finally:
        idle.close()
        busy.close()
        in_txn.close()
        driver.close()
    # the server sessions are gone
    harness.wait_until(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                             (f"pgveil:{sub}",)).fetchone() == (0,),
                       15, what="the expired sessions to end on the server")
    assert "token expired" in pv.log_text()
    # an expired token cannot open a new session
    fields = wire_refusal(pv, certs, token)
    assert fields.get("C") == "28P01"


# --------------------------------------------------------------------------- throttling

def test_repeated_failures_are_delayed(pgveil_factory, idp, certs):
    pv = start_oidc(pgveil_factory, idp)
    bad = idp.mint("rsa", "rsa-1", "guesser", aud="wrong-audience")
    elapsed = []
    for _ in range(6):
        t0 = time.monotonic()
        fields = wire_refusal(pv, certs, bad)
        elapsed.append(time.monotonic() - t0)
        assert fields.get("C") == "28P01" and fields.get("M") == "invalid token"
    first = min(elapsed[:3])
    assert elapsed[-1] > 0.15 and elapsed[-1] > first + 0.1, elapsed
    # libpq clients get the same (delayed) answer
    t0 = time.monotonic()
    res = psql(pv, bad, "-c", "SELECT 1")
    assert res.returncode == 2 and "FATAL:  invalid token" in res.stderr, res.stderr
    assert time.monotonic() - t0 > 0.15
    # a good token still gets in
    with connect(pv, idp.mint("rsa", "rsa-1", "honest-agent")) as conn:
        assert_works(conn)
    assert pv.alive()


# --------------------------------------------------------------------------- jwks_uri

class JwksServer:
    """An HTTPS server (the test CA's localhost/127.0.0.1 certificate) serving a JWKS."""

    def __init__(self, certs, port=None):
        self.certs = certs
        self.port = port or harness.free_port()
        self.document = {"keys": []}
        self.requests = 0
        self.httpd = None
        self.thread = None

    @property
    def uri(self):
        return f"https://127.0.0.1:{self.port}/realms/agents/protocol/openid-connect/certs"

    def start(self):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.certs.server_crt, self.certs.server_key)
        self.httpd = Server(("127.0.0.1", self.port), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(10)
            self.httpd = None


@pytest.fixture
def jwks_server(certs):
    servers = []

    def make(port=None):
        s = JwksServer(certs, port)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def wait_log(pv, pattern, start=0, timeout=15):
    return harness.wait_until(lambda: re.search(pattern, pv.log_text(start)), timeout, interval=0.05,
                              what=f"{pattern!r} in pgveil's log")


def test_jwks_uri_rotation_and_outage(pgveil_factory, idp, certs, jwks_server):
    server = jwks_server()
    server.document = idp.jwks(("rsa", "rsa-1"))
    server.start()
    pv = start_oidc(pgveil_factory, idp, oidc={"jwks_file": None, "jwks_uri": server.uri,
                                                "jwks_ca_file": certs.ca_crt, "jwks_min_refresh": "1s"})
    wait_log(pv, r"jwks_uri: loaded 1 key\(s\)")
    token_a = idp.mint("rsa", "rsa-1", "agent-a")
    token_b = idp.mint("next", "rsa-2", "agent-b")
    with connect(pv, token_a) as conn:
        assert_works(conn)

    # kid rsa-2 is not published yet: refused (a refresh may run, and finds only rsa-1)
    time.sleep(1.1)
    fields = wire_refusal(pv, certs, token_b)
    assert fields.get("C") == "28P01"
    assert 'unknown key id "rsa-2"' in pv.log_text()

    # rotation: rsa-2 published; after jwks_min_refresh, the unknown kid triggers a refresh
    server.document = idp.jwks(("rsa", "rsa-1"), ("next", "rsa-2"))
    time.sleep(1.2)
    mark = pv.log_size()
    requests = server.requests
    with connect(pv, token_b) as conn:
        assert_works(conn)
    log = pv.log_text(mark)
    assert "refreshing the JWKS" in log and re.search(r"jwks_uri: loaded 2 key\(s\)", log), log
    assert server.requests == requests + 1

    # a burst of unknown kids within jwks_min_refresh costs at most one fetch
    unknown = idp.mint("next", "rsa-9", "agent-x")
    time.sleep(1.1)
    requests = server.requests
    t0 = time.monotonic()
    for _ in range(3):
        assert wire_refusal(pv, certs, unknown).get("C") == "28P01"
    # one fetch per jwks_min_refresh (1s) at most, however slow the machine makes the burst
    assert server.requests - requests <= 1 + int(time.monotonic() - t0)
    with connect(pv, token_a) as conn:  # (resets the failure count of this address)
        assert_works(conn)

    # the IdP goes away: known kids keep working, a failed fetch keeps the keys
    server.stop()
    with connect(pv, token_a) as c1, connect(pv, token_b) as c2:
        assert_works(c1)
        assert_works(c2)
    time.sleep(1.1)
    mark = pv.log_size()
    assert wire_refusal(pv, certs, unknown).get("C") == "28P01"
    assert re.search(r"jwks_uri: fetching .* failed .*keeping 2 key\(s\)", pv.log_text(mark)), pv.log_text(mark)
    with connect(pv, token_a) as c1, connect(pv, token_b) as c2:
        assert_works(c1)
        assert_works(c2)
    assert pv.alive()


def test_jwks_uri_down_at_start(pgveil_factory, idp, certs, jwks_server):
    port = harness.free_port()
    pv = start_oidc(pgveil_factory, idp, oidc={"jwks_file": None,
                                                "jwks_uri": f"https://127.0.0.1:{port}/jwks",
                                                "jwks_ca_file": certs.ca_crt, "jwks_min_refresh": "1s"})
    wait_log(pv, r"jwks_uri: fetching .* failed .*keeping 0 key\(s\)")
    token = idp.mint("rsa", "rsa-1", "early-bird")
    for _ in range(2):
        fields = wire_refusal(pv, certs, token)
        assert (fields.get("C"), fields.get("M")) == ("28P01", "invalid token")
    res = psql(pv, token, "-c", "SELECT 1")
    assert res.returncode == 2 and "FATAL:  invalid token" in res.stderr, res.stderr
    assert pv.alive()
    # once the IdP answers, the next unknown kid fetches the keys
    server = jwks_server(port)
    server.document = idp.jwks(("rsa", "rsa-1"))
    server.start()
    time.sleep(1.1)
    with connect(pv, token) as conn:
        assert_works(conn)


def test_jwks_uri_untrusted_certificate(pgveil_factory, idp, certs, jwks_server):
    """The JWKS server's certificate must verify against jwks_ca_file."""
    server = jwks_server()
    server.document = idp.jwks(("rsa", "rsa-1"))
    server.start()
    pv = start_oidc(pgveil_factory, idp, oidc={"jwks_file": None, "jwks_uri": server.uri,
                                                "jwks_ca_file": certs.other_ca_crt})
    wait_log(pv, r"jwks_uri: fetching .* failed .*keeping 0 key\(s\)")
    fields = wire_refusal(pv, certs, idp.mint("rsa", "rsa-1", "agent"))
    assert fields.get("C") == "28P01"
    assert pv.alive()


# --------------------------------------------------------------------------- --check

def test_check_oidc_config(pgveil_factory, pgveil_bin, idp):
    pv = start_oidc(pgveil_factory, idp, start=False)

    def check(name, replace_with):
        path = pv.conf_path.replace(".ini", f"-{name}.ini")
        with open(path, "w") as f:
            f.write(original.replace(f"jwks_file = {idp.jwks_path}", replace_with))
        res = subprocess.run([pgveil_bin, "--check", "-c", path], capture_output=True, text=True, timeout=30)
        return path, res.returncode, res.stdout + res.stderr

    with open(pv.conf_path) as f:
        original = f.read()
    assert f"jwks_file = {idp.jwks_path}\n" in original
    _, rc, out = check("valid", f"jwks_file = {idp.jwks_path}")
    assert rc == 0, out

    missing = os.path.join(pv.dir, "no-such-jwks.json")
    path, rc, out = check("missing-jwks", f"jwks_file = {missing}")
    assert rc == 1, out
    assert re.search(rf"^{re.escape(path)}:\d+:\d+: .*jwks_file.*{re.escape(missing)}", out, re.M), out

    notjwks = os.path.join(pv.dir, "not-a-jwks.json")
    with open(notjwks, "w") as f:
        f.write('{"issuer": "https://idp.itest.example/"}\n')
    path, rc, out = check("not-jwks", f"jwks_file = {notjwks}")
    assert rc == 1 and re.search(rf"^{re.escape(path)}:\d+:\d+: .*not a JWKS document", out, re.M), out

    path, rc, out = check("http-uri", "jwks_uri = http://127.0.0.1:9/jwks")
    assert rc == 1 and re.search(rf"^{re.escape(path)}:\d+:\d+: .*https://", out, re.M), out

    # the file with the missing JWKS given to pgveil itself: it refuses to start
    res = subprocess.run([pgveil_bin, "-c", pv.conf_path.replace(".ini", "-missing-jwks.ini")],
                         capture_output=True, text=True, timeout=15)
    assert res.returncode == 1 and missing in res.stderr
