"""A minimal PostgreSQL v3 frontend over a raw socket, for tests that need to
send exactly chosen bytes (malformed input, cancel requests, slow readers)."""

import base64
import hashlib
import hmac
import os
import select
import socket
import ssl
import struct
import time

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class Closed(Exception):
    """The peer closed the connection."""


def startup_packet(params, version=PROTOCOL_3_0):
    """params: a dict, or (name, value) pairs (a name may then repeat)."""
    body = struct.pack("!I", version)
    for k, v in (params.items() if isinstance(params, dict) else params):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(mtype, payload=b""):
    return mtype + struct.pack("!I", len(payload) + 4) + payload


def query_message(sql):
    return message(b"Q", sql.encode() + b"\0")


def cstr(s):
    return s.encode() + b"\0"


# -- extended protocol and other frontend messages

def parse_msg(name, sql, oids=()):
    return message(b"P", cstr(name) + cstr(sql) + struct.pack("!h", len(oids)) +
                   b"".join(struct.pack("!I", o) for o in oids))


def _values(values):
    """A count, then each value as length and bytes (None: length -1)."""
    out = struct.pack("!h", len(values))
    for v in values:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return out


def _formats(formats):
    return struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)


def bind_msg(portal, stmt, params=(), result_formats=(), param_formats=()):
    return message(b"B", cstr(portal) + cstr(stmt) + _formats(param_formats) + _values(params) +
                   _formats(result_formats))


def execute_msg(portal, max_rows=0):
    return message(b"E", cstr(portal) + struct.pack("!i", max_rows))


def describe_msg(kind, name):
    return message(b"D", kind + cstr(name))


def close_msg(kind, name):
    return message(b"C", kind + cstr(name))


def function_call_msg(oid, args=(), arg_formats=(), result_format=0):
    return message(b"F", struct.pack("!I", oid) + _formats(arg_formats) + _values(args) +
                   struct.pack("!h", result_format))


SYNC = message(b"S")
FLUSH = message(b"H")
TERMINATE = message(b"X")


def cancel_packet(pid, key):
    return struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, pid & 0xFFFFFFFF, key & 0xFFFFFFFF)


def parse_fields(payload):
    """ErrorResponse / NoticeResponse body -> {code letter: value}."""
    fields = {}
    i = 0
    while i < len(payload) and payload[i] != 0:
        code = chr(payload[i])
        end = payload.index(b"\0", i + 1)
        fields[code] = payload[i + 1:end].decode(errors="replace")
        i = end + 1
    return fields


def parse_datarow(payload):
    n = struct.unpack_from("!h", payload, 0)[0]
    off = 2
    values = []
    for _ in range(n):
        ln = struct.unpack_from("!i", payload, off)[0]
        off += 4
        if ln < 0:
            values.append(None)
        else:
            values.append(bytes(payload[off:off + ln]))
            off += ln
    return values


def types_of(msgs):
    """The type bytes of [(type, payload)] messages as one string, e.g. "12DCZ"."""
    return "".join(t.decode() for t, _ in msgs)


def datarows(msgs):
    """The values of every DataRow among [(type, payload)] messages."""
    return [parse_datarow(p) for t, p in msgs if t == b"D"]


def errors_of(msgs):
    """The fields of every ErrorResponse among [(type, payload)] messages."""
    return [parse_fields(p) for t, p in msgs if t == b"E"]


class PgError(Exception):
    def __init__(self, fields):
        self.fields = fields
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")

    @property
    def sqlstate(self):
        return self.fields.get("C")


class Wire:
    """A raw connection. read_message() returns (type byte, payload bytes)."""

    def __init__(self, host, port, timeout=15):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()
        self.params = {}
        self.backend_key = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def send_slowly(self, data, delay):
        """Sends one byte at a time, with TCP_NODELAY, so each is its own segment."""
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])
            time.sleep(delay)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 16)
        except socket.timeout:
            raise TimeoutError("no data from server in time") from None
        except ConnectionResetError:
            raise Closed("connection reset") from None
        if not chunk:
            raise Closed("connection closed")
        self.buf += chunk

    def read_bytes(self, n, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_message(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < 5:
            self._fill(deadline)
        mtype = bytes(self.buf[:1])
        ln = struct.unpack_from("!I", self.buf, 1)[0]
        if ln < 4 or ln > (1 << 30):
            raise AssertionError(f"server sent a message of type {mtype!r} with length {ln}")
        while len(self.buf) < 1 + ln:
            self._fill(deadline)
        payload = bytes(self.buf[5:1 + ln])
        del self.buf[:1 + ln]
        return mtype, payload

    def read_until(self, until=b"Z", count=1, timeout=None):
        """Reads messages up to the count-th one of type `until`; returns them."""
        msgs = []
        while True:
            mtype, payload = self.read_message(timeout)
            msgs.append((mtype, payload))
            if mtype == until:
                count -= 1
                if count == 0:
                    return msgs

    def read_until_closed(self, timeout=None):
        """Reads messages until the server closes; returns them. Raises TimeoutError
        if the server keeps the connection open longer than timeout."""
        msgs = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                msgs.append(self.read_message(timeout=max(0.01, deadline - time.monotonic())))
            except Closed:
                return msgs

    # -- conversations
    def startup(self, user="agent-7", database="app", password=None, version=PROTOCOL_3_0, dribble=None,
                **params):
        """Sends a StartupMessage (one byte every `dribble` seconds if given),
        answers the authentication the server asks for (none, cleartext, MD5,
        SCRAM-SHA-256), and reads up to ReadyForQuery."""
        p = {"user": user, "database": database}
        p.update(params)
        if dribble:
            self.send_slowly(startup_packet(p, version), dribble)
        else:
            self.send(startup_packet(p, version))
        self.password = password
        self.user = user
        return self.read_until_ready()

    def read_until_ready(self, timeout=None):
        """Reads up to ReadyForQuery. Returns the messages; raises PgError on an
        ErrorResponse during startup (FATAL), keeping messages in .msgs."""
        msgs = []
        while True:
            mtype, payload = self.read_message(timeout)
            msgs.append((mtype, payload))
            if mtype == b"S":
                k, v, _ = payload.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif mtype == b"K":
                self.backend_key = struct.unpack("!II", payload)
            elif mtype == b"R":
                self._authenticate(payload)
            elif mtype == b"E":
                fields = parse_fields(payload)
                if fields.get("S") in ("FATAL", "PANIC"):
                    err = PgError(fields)
                    err.msgs = msgs
                    raise err
            elif mtype == b"Z":
                return msgs

    def _authenticate(self, payload):
        code = struct.unpack_from("!I", payload)[0]
        if code == 0:
            return
        password = getattr(self, "password", None)
        if password is None:
            raise AssertionError(f"server asked for authentication (code {code}) and no password is set")
        if code == 3:
            self.send(message(b"p", password.encode() + b"\0"))
        elif code == 5:
            salt = payload[4:8]
            inner = hashlib.md5(password.encode() + self.user.encode()).hexdigest().encode()
            outer = hashlib.md5(inner + salt).hexdigest()
            self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
        elif code == 10:
            self._scram(payload)
        else:
            raise AssertionError(f"unsupported authentication request {code}")

    def _scram(self, payload):
        """Client side of SCRAM-SHA-256 (RFC 7677) as PostgreSQL speaks it."""
        assert b"SCRAM-SHA-256\0" in payload[4:]
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
        mtype, payload = self.read_message()
        if mtype == b"E":
            raise PgError(parse_fields(payload))
        assert mtype == b"R" and struct.unpack_from("!I", payload)[0] == 11, (mtype, payload)
        server_first = payload[4:].decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        assert attrs["r"].startswith(nonce)
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_msg = f"{first_bare},{server_first},{without_proof}".encode()
        sig = hmac.new(stored_key, auth_msg, hashlib.sha256).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
        self.send(message(b"p", f"{without_proof},p={proof}".encode()))
        mtype, payload = self.read_message()
        if mtype == b"E":
            raise PgError(parse_fields(payload))
        assert mtype == b"R" and struct.unpack_from("!I", payload)[0] == 12, (mtype, payload)
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        expected = base64.b64encode(hmac.new(server_key, auth_msg, hashlib.sha256).digest()).decode()
        assert payload[4:].decode() == f"v={expected}", "bad server signature"

    def simple_query(self, sql, timeout=None):
        """Runs one simple query; returns (rows as lists of bytes, command tags, error fields or None)."""
        self.send(query_message(sql))
        rows, tags, error = [], [], None
        for mtype, payload in self.read_until_ready(timeout):
            if mtype == b"D":
                rows.append(parse_datarow(payload))
            elif mtype == b"C":
                tags.append(payload.rstrip(b"\0").decode())
            elif mtype == b"E":
                error = parse_fields(payload)
        return rows, tags, error

    def wrap_tls(self, cafile, server_hostname="localhost"):
        ctx = ssl.create_default_context(cafile=cafile)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def peer_closed(self, timeout):
        """True if the server closes the connection within timeout (data before
        the close is consumed into the buffer)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(deadline)
            except Closed:
                return True
            except TimeoutError:
                return False


def connect(host, port, timeout=15, **startup):
    w = Wire(host, port, timeout)
    w.startup(**startup)
    return w


def send_cancel(host, port, pid, key):
    """Sends a CancelRequest on its own connection and waits for the server to close it."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(cancel_packet(pid, key))
        s.settimeout(10)
        try:
            while s.recv(1024):
                pass
        except (ConnectionResetError, socket.timeout):
            pass


def wait_readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)
