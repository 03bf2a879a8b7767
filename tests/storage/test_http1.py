"""Http1Pool, the S3 uploader's connections, against raw scripted servers on 127.0.0.1.

Each server reads whole requests (head and Content-Length body) and writes back exactly the bytes
a test gives it, so the answers can be what real servers send and a general client must cope
with: chunked bodies, interim 1xx answers, bodies that run to the close, `Connection: close`,
idle connections closed by the server, silence, garbage. The TLS test makes its own self-signed
certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from taisu_etl.errors import StorageError
from taisu_etl.storage import S3ObjectStore
from taisu_etl.storage.http1 import (
    MAX_ANSWER_BYTES,
    AnswerTimeout,
    ConnectionBroken,
    Http1Pool,
)

from .support import read_http_request

OK = b'HTTP/1.1 200 OK\r\nETag: "e1"\r\nContent-Length: 0\r\n\r\n'
Script = Callable[[int, int], bytes | None]  # (connection number, request number on it) -> answer, None: hang up


class ScriptedServer:
    """Answers each request with `script(conn, n)`; counts connections and requests."""

    def __init__(self, script: Script, *, close_after_answer: bool = False, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.close_after_answer = close_after_answer
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, n = self.connections, 0
        try:
            while True:
                self.requests.append(await read_http_request(reader))
                n += 1
                answer = self.script(conn, n)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def _pool(port: int, *, limit: int = 4, read_timeout_s: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> Http1Pool:
    return Http1Pool("127.0.0.1", port, ssl_context=ssl_context, limit=limit, connect_timeout_s=2.0,
                     read_timeout_s=read_timeout_s)


def _head(body: bytes) -> bytes:
    return f"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()


async def _send(pool: Http1Pool, body: bytes = b"data", **kw: bool):  # type: ignore[no-untyped-def]
    return await pool.request(_head(body), body, **kw)


def test_sequential_requests_share_one_kept_alive_connection() -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        async with ScriptedServer(lambda c, n: OK) as server, _pool(server.port) as pool:
            statuses = [(await _send(pool, b"%d" % i)).status for i in range(5)]
        return server.connections, len(server.requests), statuses

    assert asyncio.run(scenario()) == (1, 5, [200] * 5)


def test_the_request_reaches_the_server_byte_for_byte() -> None:
    body = bytes(range(256)) * 300  # 76,800 bytes: more than one socket write

    async def scenario() -> list[bytes]:
        async with ScriptedServer(lambda c, n: OK) as server, _pool(server.port) as pool:
            await _send(pool, body)
        return server.requests

    assert asyncio.run(scenario()) == [_head(body) + body]


def test_concurrent_requests_open_no_more_connections_than_the_limit() -> None:
    async def scenario() -> tuple[int, int]:
        async with ScriptedServer(lambda c, n: OK) as server, _pool(server.port, limit=3) as pool:
            await asyncio.gather(*(_send(pool) for _ in range(30)))
        return server.connections, len(server.requests)

    connections, requests = asyncio.run(scenario())
    assert requests == 30 and 1 <= connections <= 3


def test_headers_chunked_bodies_and_interim_answers_are_read_as_http() -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nX-Amz-Id: a\r\nX-Amz-Id: b\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n5\r\n<Erro\r\n3\r\nr/>\r\n0\r\n\r\n")

    async def scenario():  # type: ignore[no-untyped-def]
        async with ScriptedServer(lambda c, n: answer) as server, _pool(server.port) as pool:
            first = await _send(pool)
            second = await _send(pool)  # the chunked answer ended cleanly: same connection
        return first, second, server.connections

    first, second, connections = asyncio.run(scenario())
    assert first.status == 403 and first.body == b"<Error/>"
    assert first.headers["content-type"] == "application/xml" and first.headers["x-amz-id"] == "a, b"
    assert second == first and connections == 1


def test_a_body_that_runs_to_the_close_is_read_whole_and_the_connection_not_reused() -> None:
    answer = b"HTTP/1.1 500 Internal Server Error\r\n\r\nsomething broke"

    async def scenario():  # type: ignore[no-untyped-def]
        async with ScriptedServer(lambda c, n: answer, close_after_answer=True) as server, _pool(server.port) as pool:
            first = await _send(pool)
            second = await _send(pool)
        return first, second, server.connections

    first, second, connections = asyncio.run(scenario())
    assert (first.status, first.body) == (500, b"something broke") and second == first
    assert connections == 2


def test_connection_close_is_honoured() -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    async def scenario() -> tuple[list[bytes], int]:
        async with ScriptedServer(lambda c, n: answer) as server, _pool(server.port) as pool:
            bodies = [(await _send(pool)).body for _ in range(3)]
        return bodies, server.connections

    assert asyncio.run(scenario()) == ([b"ok"] * 3, 3)


def test_an_idle_connection_the_server_closed_is_not_used_again() -> None:
    async def scenario() -> tuple[int, int]:
        # Keep-alive answers, but the server hangs up after each one, as an idle timeout would.
        async with ScriptedServer(lambda c, n: OK, close_after_answer=True) as server, _pool(server.port) as pool:
            for _ in range(3):
                assert (await _send(pool)).status == 200
                await asyncio.sleep(0.05)  # the close reaches the pool
        return server.connections, len(server.requests)

    assert asyncio.run(scenario()) == (3, 3)


def test_a_hang_up_before_the_answer_is_a_broken_connection() -> None:
    async def scenario() -> ConnectionBroken:
        async with ScriptedServer(lambda c, n: None) as server, _pool(server.port) as pool:
            with pytest.raises(ConnectionBroken) as caught:
                await _send(pool)
        return caught.value

    broken = asyncio.run(scenario())
    assert "closed" in str(broken) and broken.reused is False


def test_something_that_is_not_http_is_a_broken_connection() -> None:
    async def scenario() -> str:
        async with ScriptedServer(lambda c, n: b"SSH-2.0-OpenSSH_9.2\r\n") as server, _pool(server.port) as pool:
            with pytest.raises(ConnectionBroken) as caught:
                await _send(pool)
        return str(caught.value)

    assert "not an HTTP answer" in asyncio.run(scenario())


def test_an_endless_answer_is_cut_off_at_the_cap() -> None:
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * MAX_ANSWER_BYTES) + b"x" * (2 * MAX_ANSWER_BYTES)

    async def scenario() -> str:
        async with ScriptedServer(lambda c, n: huge) as server, _pool(server.port) as pool:
            with pytest.raises(ConnectionBroken) as caught:
                await _send(pool)
        return str(caught.value)

    assert f"more than {MAX_ANSWER_BYTES} bytes" in asyncio.run(scenario())


def test_a_silent_server_times_out_and_the_pool_stays_usable() -> None:
    answers = {1: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"}  # then nothing more on connection 1

    async def scenario() -> tuple[float, int, int]:
        async with ScriptedServer(lambda c, n: answers.get(c, OK)) as server, _pool(server.port, read_timeout_s=0.3) as pool:
            started = asyncio.get_running_loop().time()
            with pytest.raises(AnswerTimeout):
                await _send(pool)
            elapsed = asyncio.get_running_loop().time() - started
            status = (await _send(pool)).status  # a new connection: the half-answered one was dropped
        return elapsed, status, server.connections

    elapsed, status, connections = asyncio.run(scenario())
    assert 0.25 <= elapsed < 2 and status == 200 and connections == 2


def test_a_server_that_answers_slowly_through_the_uploader_says_it_timed_out() -> None:
    async def scenario() -> tuple[str, str]:
        async with ScriptedServer(lambda c, n: b"") as server:  # reads the PUT, never answers
            endpoint = f"http://127.0.0.1:{server.port}"
            store = S3ObjectStore(endpoint, "AK", "SK", "bucket", region="us-east-1", read_timeout_s=0.3)
            async with store.uploader(2) as up:
                with pytest.raises(StorageError) as caught:
                    await up.put("a/b.txt", b"x")
        return endpoint, str(caught.value)

    endpoint, message = asyncio.run(scenario())
    assert message.startswith(f"the object store at {endpoint} did not answer within 0.3 s when asked to write a/b.txt")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_puts_over_tls_verify_the_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)

    async def put(trusted: bool) -> tuple[str, int]:
        async with ScriptedServer(lambda c, n: OK, ssl_context=server_tls) as server:
            endpoint = f"https://127.0.0.1:{server.port}"
            store = S3ObjectStore(endpoint, "AK", "SK", "bucket", region="us-east-1")
            if trusted:
                monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
            else:
                monkeypatch.delenv("SSL_CERT_FILE", raising=False)
            async with store.uploader(2) as up:
                try:
                    info = await up.put("a/b.txt", b"over tls")
                    return info.etag, len(server.requests)
                except StorageError as exc:
                    return str(exc), len(server.requests)

    assert asyncio.run(put(trusted=True)) == ("e1", 1)
    message, requests = asyncio.run(put(trusted=False))
    assert "TLS handshake failed" in message and requests == 0
