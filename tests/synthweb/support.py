"""Bounded HTTP reads for the synthweb tests: redirects are never followed, every read has a
cap and every socket a timeout, so an endless or stalled route cannot hang the suite."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass
from email.message import Message

TIMEOUT = 10.0


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def get(port: int, path: str, *, cap: int = 4 << 20, method: str = "GET", timeout: float = TIMEOUT,
        headers: dict[str, str] | None = None) -> Reply:
    """One request on a fresh connection; reads at most `cap` bytes of the body, then hangs up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = b"" if method == "HEAD" else resp.read(cap)
        return Reply(resp.status, resp.headers, body)
    finally:
        conn.close()


@dataclass
class Raw:
    head: bytes
    body: bytes
    closed: bool  # the server closed the connection (as opposed to: we stopped at the cap)

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def raw_get(port: int, path: str, *, cap: int = 1 << 20, timeout: float = TIMEOUT) -> Raw:
    """The bytes on the wire, undecoded: for responses http.client would hide (lying lengths)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        closed = False
        while len(data) < cap:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return Raw(head, body, closed)
