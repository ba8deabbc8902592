"""Checking what a client received for masked values: every byte of it.

A Recorder sits between a client and pgveil on loopback (the client connects
to it without TLS) and keeps every byte pgveil sent. `leaks()` searches those
bytes for each sensitive value in every form a bypass could give it: as is,
in other case, hex (either case, with and without separators), base64,
URL-safe base64, and the MD5/SHA-1/SHA-256/SHA-512 digests an agent could
compute server-side. The proxy's own account of what it masked is never
trusted: only the bytes count.
"""

import base64
import binascii
import hashlib
import socket
import threading


class Recorder:
    """A loopback TCP relay to (host, port) that records what flows back to clients."""

    def __init__(self, host, port):
        self.target = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with self.lock:
                        self.received += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self):
        """The bytes received since the last take()."""
        with self.lock:
            data = bytes(self.received)
            self.received.clear()
        return data

    def close(self):
        self.closed = True
        self.sock.close()


def forms(value):
    """Every form of one sensitive value a client could be shown."""
    raw = value.encode() if isinstance(value, str) else value
    out = {"raw": raw, "lower": raw.lower(), "upper": raw.upper()}
    h = binascii.hexlify(raw)
    out["hex"] = h
    out["HEX"] = h.upper()
    out["hex:"] = binascii.hexlify(raw, ":").lower() if len(raw) > 1 else h
    out["base64"] = base64.b64encode(raw).rstrip(b"=")
    out["base64url"] = base64.urlsafe_b64encode(raw).rstrip(b"=")
    for name in ("md5", "sha1", "sha256", "sha512"):
        out[name] = hashlib.new(name, raw).hexdigest().encode()
    # Short values give short encodings that could match by chance: only long enough forms count.
    return {k: v for k, v in out.items() if len(v) >= 6}


def leaks(data, secrets):
    """[(secret, form)] for every form of every secret found in data."""
    found = []
    for s in secrets:
        for name, f in forms(s).items():
            if f in data:
                found.append((s, name))
    return found


def assert_no_leak(rec, secrets):
    """Takes the bytes rec received since the last take(); fails if any form of
    any secret is among them. Returns the bytes."""
    data = rec.take()
    found = leaks(data, secrets)
    assert not found, f"sensitive values reached the client: {found}"
    return data
