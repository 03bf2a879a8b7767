"""A local web of synthetic images and hostile cases, on 127.0.0.1 only.

`SyntheticWeb` serves pre-rendered JPEGs from memory (keep-alive, many connections) next to the
routes a safe fetcher must survive: error statuses, slow drips, endless and huge bodies, lying
lengths, bombs, wrong types, redirect loops and redirects to private addresses, 429 with
Retry-After, robots.txt rules and `X-Robots-Tag: noai`. It counts every request per path, so a
test can prove that a disallowed path was never asked for.

Two backends:
- in-process (default): an aiohttp server on its own event loop in a daemon thread; cheap to
  start, all state (hit counts, flaky counters) exact. Right for tests.
- `processes=N`: N spawned processes accept on one shared listening socket, so the server does
  not share a GIL with the client being measured. Right for benchmarks. Per-path state (flaky
  counters) then lives in each process: a retry may land on a process that has not seen the
  first attempt, so use one process (or the thread) when a test depends on it.

Spawned processes (processes=N, render_workers=N) re-import the caller's main module, so a
script that uses them needs the usual `if __name__ == "__main__":` guard.

The server only ever answers: the redirect routes name private and foreign addresses in a
Location header, and nothing here connects to them. Tests must read with redirects off.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import io
import json
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from aiohttp import web

from taisu_etl.synthweb import assets
from taisu_etl.synthweb.scenes import DEFAULT_QUALITY, DEFAULT_SIZE, Pair, render_jpegs

HOST = "127.0.0.1"

DEFAULT_ROBOTS = "User-agent: *\nDisallow: /private/\n"

# Location headers of /hostile/redirect-private/<variant>. "{port}" is this server's port: those
# variants point back at this very server under a name an allowlist of "127.0.0.1:PORT" must not
# accept (localhost, [::1], 0.0.0.0), so a fetcher that follows them anyway would succeed silently.
PRIVATE_TARGETS: dict[str, str] = {
    "10": "http://10.0.0.1/x.jpg",
    "172": "http://172.16.0.1/x.jpg",
    "192": "http://192.168.1.1/x.jpg",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "mapped-v6": "http://[::ffff:10.0.0.1]/x.jpg",
    "ula-v6": "http://[fd00::1]/x.jpg",
    "decimal": "http://167772161/x.jpg",  # 10.0.0.1 written as one number
    "octal": "http://012.0.0.1/x.jpg",  # 10.0.0.1 in inet_aton's octal
    "localhost": "http://localhost:{port}/hostile/sample.jpg",
    "loopback-v6": "http://[::1]:{port}/hostile/sample.jpg",
    "zero": "http://0.0.0.0:{port}/hostile/sample.jpg",
    "loopback-other-port": "http://127.0.0.1:9/x.jpg",
    "file": "file:///etc/passwd",
    "ftp": "ftp://127.0.0.1/x.jpg",
}
_DEFAULT_PRIVATE = "10"
MAX_REDIRECT_CHAIN = 100

_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_FILLER = assets.random_bytes(64 * 1024, seed=1)  # incompressible, so no layer can shrink it


@dataclass(frozen=True)
class HostileCase:
    """One hostile route: its path on the server, what it does, and the outcome a careful fetcher
    should reach: a reason code of taisu_etl.vocab.REASONS, or "ok" where it must succeed. The
    expectation is a suggestion for the fetch tests; the fetcher's policy has the last word (a
    fetcher that does not decode gzip sees not_image for gzip-bomb, one that retries 429/503 ends
    in retries_exhausted)."""

    name: str
    path: str
    what: str
    expect: str


HOSTILE_CASES: tuple[HostileCase, ...] = (
    HostileCase("404", "/hostile/404", "404 Not Found", "http_404"),
    HostileCase("410", "/hostile/410", "410 Gone", "http_410"),
    HostileCase("403", "/hostile/403", "403 Forbidden", "http_403"),
    HostileCase("500", "/hostile/500", "500 Internal Server Error", "http_5xx"),
    HostileCase("503", "/hostile/503", "503 with Retry-After, forever", "http_5xx"),
    HostileCase("429", "/hostile/429", "429 with Retry-After, forever", "http_429"),
    HostileCase("slow", "/hostile/slow", "a JPEG with an honest length, dripped a few bytes at a time", "timeout"),
    HostileCase("slow-headers", "/hostile/slow-headers", "nothing at all for stall_seconds, then the image", "timeout"),
    HostileCase("endless", "/hostile/endless", "chunked image/jpeg that never ends", "too_large"),
    HostileCase("huge", "/hostile/huge", "huge_bytes of chunked image/jpeg, no length", "too_large"),
    HostileCase("huge-declared", "/hostile/huge-declared", "Content-Length: huge_bytes, then the bytes", "too_large"),
    HostileCase("gzip-bomb", "/hostile/gzip-bomb", "Content-Encoding: gzip of 64 MiB of zeros, unasked", "too_large"),
    HostileCase("bomb.png", "/hostile/bomb.png", "a 20000x20000 PNG in ~50 KB", "too_many_pixels"),
    HostileCase("lying-length", "/hostile/lying-length", "Content-Length: 1000, then a whole JPEG; closes", "decode_error"),
    HostileCase("short-body", "/hostile/short-body", "Content-Length of a JPEG, half of it, then close", "connect"),
    HostileCase("reset", "/hostile/reset", "the connection is reset before any response", "connect"),
    HostileCase("empty", "/hostile/empty", "200 image/jpeg with an empty body", "not_image"),
    HostileCase("wrong-type", "/hostile/wrong-type", "a valid JPEG served as text/html", "ok"),
    HostileCase("html", "/hostile/html", "an HTML page served as image/jpeg", "not_image"),
    HostileCase("page.html", "/hostile/page.html", "an HTML page served as text/html", "not_image"),
    HostileCase("not-image", "/hostile/not-image", "random bytes served as image/jpeg", "not_image"),
    HostileCase("truncated.jpg", "/hostile/truncated.jpg", "the first half of a JPEG", "decode_error"),
    HostileCase("bmp", "/hostile/bmp", "a real BMP (outside the format allowlist)", "not_image"),
    HostileCase("svg", "/hostile/svg", "an SVG drawing as image/svg+xml", "not_image"),
    HostileCase("tiny.jpg", "/hostile/tiny.jpg", "a 32x32 JPEG", "too_small"),
    HostileCase("wide.jpg", "/hostile/wide.jpg", "a 2400x240 JPEG", "bad_aspect"),
    HostileCase("redirect-loop", "/hostile/redirect-loop", "302 A -> B -> A ...", "too_many_redirects"),
    HostileCase("redirect-chain-3", "/hostile/redirect-chain/3", "3 redirects, then the image", "ok"),
    HostileCase("redirect-chain-6", "/hostile/redirect-chain/6", "6 redirects (one over a limit of 5)", "too_many_redirects"),
    *(
        HostileCase(
            f"redirect-private-{v}",
            f"/hostile/redirect-private/{v}",
            f"302 to {t}",
            "bad_url" if not t.startswith("http:") else "blocked_address",
        )
        for v, t in PRIVATE_TARGETS.items()
    ),
    HostileCase("noai", "/hostile/noai", "a good image with X-Robots-Tag: noai", "noai_header"),
    HostileCase("noimageai", "/hostile/noimageai", "a good image with X-Robots-Tag: noimageai", "noai_header"),
    HostileCase("noai-list", "/hostile/noai-list", "X-Robots-Tag: noindex, nofollow, noimageai", "noai_header"),
    HostileCase("private", "/private/hostile-sample.jpg", "a good image under a robots.txt Disallow", "robots_disallow"),
    HostileCase("sample.jpg", "/hostile/sample.jpg", "a good 256x256 JPEG (the control)", "ok"),
    HostileCase("png", "/hostile/png", "a good PNG", "ok"),
    HostileCase("rgba.png", "/hostile/rgba.png", "a PNG with alpha", "ok"),
    HostileCase("webp", "/hostile/webp", "a good WebP", "ok"),
    HostileCase("cmyk.jpg", "/hostile/cmyk.jpg", "a CMYK JPEG", "ok"),
    HostileCase("gif-animated.gif", "/hostile/gif-animated.gif", "an animated GIF (3 frames)", "ok"),
    HostileCase("exif-rotated.jpg", "/hostile/exif-rotated.jpg", "EXIF orientation 6 and a GPS tag", "ok"),
    HostileCase("appended-payload.jpg", "/hostile/appended-payload.jpg", "a JPEG with a ZIP appended", "ok"),
)
_CASES_BY_NAME = {c.name: c for c in HOSTILE_CASES}


class UrlList(NamedTuple):
    urls: Path
    manifest: Path


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (for asserting headers such as Accept-Encoding)."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


@dataclass(frozen=True)
class _Options:
    """Everything a serving process needs besides the pairs; picklable for spawned processes."""

    robots_txt: str | None
    robots_status: int
    retry_after: int
    image_size: tuple[int, int]
    quality: int
    drip_interval: float
    drip_bytes: int
    stall_seconds: float
    huge_bytes: int
    bomb_side: int
    gzip_bomb_bytes: int
    log_size: int


# --------------------------------------------------------------------------- the request handler


@dataclass
class _Core:
    """Routes and state of one serving process (or thread)."""

    pairs: dict[str, Pair]
    images: dict[str, bytes]
    opts: _Options
    port: int
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    log: collections.deque[RequestRecord] = field(init=False)
    static: dict[str, tuple[bytes, str, dict[str, str]]] = field(init=False)
    sample: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.log = collections.deque(maxlen=self.opts.log_size)
        size = self.opts.image_size
        self.sample = assets.sample_jpeg(size, self.opts.quality)
        jpeg, png = "image/jpeg", "image/png"
        self.static = {
            "sample.jpg": (self.sample, jpeg, {}),
            "png": (assets.png_bytes(size), png, {}),
            "rgba.png": (assets.rgba_png_bytes(size), png, {}),
            "webp": (assets.webp_bytes(size), "image/webp", {}),
            "cmyk.jpg": (assets.cmyk_jpeg_bytes(size), jpeg, {}),
            "bmp": (assets.bmp_bytes(size), "image/bmp", {}),
            "svg": (assets.svg_bytes(), "image/svg+xml", {}),
            "gif-animated.gif": (assets.animated_gif_bytes(size), "image/gif", {}),
            "exif-rotated.jpg": (assets.exif_rotated_jpeg_bytes(), jpeg, {}),
            "appended-payload.jpg": (assets.appended_payload_jpeg_bytes(size), jpeg, {}),
            "truncated.jpg": (assets.truncated_jpeg_bytes(size), jpeg, {}),
            "tiny.jpg": (assets.sample_jpeg(assets.TINY_SIZE), jpeg, {}),
            "wide.jpg": (assets.sample_jpeg(assets.WIDE_SIZE), jpeg, {}),
            "empty": (b"", jpeg, {}),
            "wrong-type": (self.sample, "text/html", {}),
            "html": (assets.html_page(), jpeg, {}),
            "page.html": (assets.html_page(), "text/html", {}),
            "not-image": (assets.random_bytes(4096), jpeg, {}),
            "noai": (self.sample, jpeg, {"X-Robots-Tag": "noai"}),
            "noimageai": (self.sample, jpeg, {"X-Robots-Tag": "noimageai"}),
            "noai-list": (self.sample, jpeg, {"X-Robots-Tag": "noindex, nofollow, noimageai"}),
        }

    # ------------------------------------------------------------------ dispatch

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        self.log.append(RequestRecord(request.method, path, request.query_string, tuple(request.headers.items())))
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        if path.startswith("/img/"):
            return self._pair_image(path[5:])
        if path.startswith("/hostile/"):
            return await self._hostile(request, path[9:])
        if path.startswith("/private/"):
            return self._pair_image(path[9:])
        if path.startswith("/flaky/"):
            return self._flaky(request, path[7:])
        if path == "/robots.txt":
            if self.opts.robots_txt is None:
                return web.Response(status=404, text="no robots.txt here")
            return web.Response(status=self.opts.robots_status, text=self.opts.robots_txt)
        return web.Response(status=404, text="not found")

    def _image_bytes(self, pair_id: str) -> bytes | None:
        data = self.images.get(pair_id)
        if data is None:
            if pair_id == "hostile-sample":  # the robots_disallow case of HOSTILE_CASES
                return self.sample
            pair = self.pairs.get(pair_id)
            if pair is None:
                return None
            # Lazy mode renders on first request (about a millisecond) and keeps the bytes.
            data = self.images[pair_id] = pair.jpeg(self.opts.image_size, self.opts.quality)
        return data

    def _pair_image(self, name: str) -> web.Response:
        data = self._image_bytes(name[:-4]) if name.endswith(".jpg") else None
        if data is None:
            return web.Response(status=404, text="no such image")
        return web.Response(body=data, content_type="image/jpeg")

    def _flaky(self, request: web.BaseRequest, name: str) -> web.Response:
        """/flaky/<id>.jpg?fail=K&status=S&retry_after=N: S (with Retry-After) K times, then the image.

        Counted per path and query, so differently parametrised URLs do not share a budget."""
        query = request.query
        try:
            fail = int(query.get("fail", "1"))
            status = int(query.get("status", "503"))
            retry_after = int(query.get("retry_after", str(self.opts.retry_after)))
        except ValueError:
            return web.Response(status=400, text="fail, status and retry_after are integers")
        key = request.path_qs
        self.attempts[key] += 1
        if self.attempts[key] <= fail:
            return web.Response(status=status, headers={"Retry-After": str(retry_after)}, text="try again later")
        return self._pair_image(name)

    async def _hostile(self, request: web.BaseRequest, case: str) -> web.StreamResponse:
        static = self.static.get(case)
        if static is not None:
            body, content_type, headers = static
            return web.Response(body=body, headers={"Content-Type": content_type, **headers})
        if case in ("404", "410", "403", "500"):
            return web.Response(status=int(case), text=f"status {case}")
        if case in ("429", "503"):
            after = request.query.get("retry_after", str(self.opts.retry_after))
            return web.Response(status=int(case), headers={"Retry-After": after}, text="slow down")
        if case.startswith("status/") and case[7:].isdigit() and 200 <= int(case[7:]) <= 599:
            return web.Response(status=int(case[7:]), text=f"status {case[7:]}")
        if case == "redirect-loop":
            return _redirect("/hostile/redirect-loop-b")
        if case == "redirect-loop-b":
            return _redirect("/hostile/redirect-loop")
        if case.startswith("redirect-chain/") and case[15:].isdigit():
            hops = int(case[15:])
            if hops > MAX_REDIRECT_CHAIN:
                return web.Response(status=400, text=f"at most {MAX_REDIRECT_CHAIN} hops")
            if hops == 0:
                return web.Response(body=self.sample, content_type="image/jpeg")
            return _redirect(f"/hostile/redirect-chain/{hops - 1}", request.query.get("status"))
        if case == "redirect-private" or case.startswith("redirect-private/"):
            variant = case[17:] or _DEFAULT_PRIVATE
            target = PRIVATE_TARGETS.get(variant)
            if target is None:
                return web.Response(status=404, text=f"variants: {', '.join(PRIVATE_TARGETS)}")
            return _redirect(target.format(port=self.port), request.query.get("status"))
        if case == "redirect":
            # An open redirect, e.g. to a second SyntheticWeb; the client decides whether to follow.
            to = request.query.get("to")
            return _redirect(to, request.query.get("status")) if to else web.Response(status=400, text="?to=URL")
        if case == "slow":
            return await self._slow(request)
        if case == "slow-headers":
            await asyncio.sleep(self.opts.stall_seconds)
            return web.Response(body=self.sample, content_type="image/jpeg")
        if case == "endless":
            return await self._stream(request, None, declare=False)
        if case == "huge":
            return await self._stream(request, self.opts.huge_bytes, declare=False)
        if case == "huge-declared":
            return await self._stream(request, self.opts.huge_bytes, declare=True)
        if case == "lying-length":
            return await self._lying_length(request)
        if case == "short-body":
            return await self._short_body(request)
        if case == "reset":
            return _reset(request)
        if case == "bomb.png":
            body = await asyncio.get_running_loop().run_in_executor(None, assets.bomb_png, self.opts.bomb_side)
            return web.Response(body=body, content_type="image/png")
        if case == "gzip-bomb":
            body = await asyncio.get_running_loop().run_in_executor(None, assets.gzip_bomb, self.opts.gzip_bomb_bytes)
            # Set by hand and served as bytes: aiohttp must not compress (or decompress) anything here.
            return web.Response(body=body, headers={"Content-Type": "image/jpeg", "Content-Encoding": "gzip"})
        return web.Response(status=404, text=f"no hostile case {case!r}")

    # ------------------------------------------------------------------ streaming cases

    async def _slow(self, request: web.BaseRequest) -> web.StreamResponse:
        data = self.sample
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = len(data)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        step = max(1, self.opts.drip_bytes)
        try:
            for i in range(0, len(data), step):
                await resp.write(data[i : i + step])
                await asyncio.sleep(self.opts.drip_interval)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client gave up, as it should
        return resp

    async def _stream(self, request: web.BaseRequest, total: int | None, declare: bool) -> web.StreamResponse:
        """A JPEG signature followed by filler: `total` bytes in all, or forever when None."""
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        if declare and total is not None:
            resp.content_length = total
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        sent = 0
        try:
            while total is None or sent < total:
                chunk = _JPEG_HEAD if sent == 0 else _FILLER
                if total is not None:
                    chunk = chunk[: total - sent]
                # write() waits while the socket buffer is full: a client that stops reading
                # costs no CPU here, and one that disconnects ends the loop with ConnectionError.
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    async def _lying_length(self, request: web.BaseRequest) -> web.StreamResponse:
        data = self.sample
        declared = 1000
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = declared
        resp.force_close()  # the extra bytes would poison the next response on a kept-alive connection
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            await resp.write(data[:declared])  # sends the headers too, so the raw write lands after them
            transport = request.transport
            if transport is not None and not transport.is_closing():
                # Raw, because aiohttp's writer cuts everything beyond the declared length.
                transport.write(data[declared:])
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    async def _short_body(self, request: web.BaseRequest) -> web.StreamResponse:
        data = self.sample
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = len(data)
        resp.force_close()
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            await resp.write(data[: len(data) // 2])
            await resp.drain()
        except ConnectionError:
            return resp
        if request.transport is not None:
            request.transport.close()  # flushes what was written, then FIN: the body ends early
        return resp


def _redirect(location: str, status: str | None = None) -> web.Response:
    code = int(status) if status and status.isdigit() and int(status) in (301, 302, 303, 307, 308) else 302
    return web.Response(status=code, headers={"Location": location})


def _reset(request: web.BaseRequest) -> web.Response:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST instead of FIN, the way a crashed or hostile server does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # aiohttp fails to write this to the dead transport and treats it as a client disconnect.
    return web.Response(status=500)


async def _serve(core: _Core, sock: socket.socket, started: threading.Event | None, stop: asyncio.Event) -> None:
    # No access log (it costs more than serving a small image); handlers are cancelled when their
    # client disconnects, so a dropped drip does not sleep on.
    server = web.Server(core.handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=0.5)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- spawned processes


def _child_main(
    pairs: list[Pair], images: dict[str, bytes], opts: _Options, port: int, sock: socket.socket, conn: Connection
) -> None:
    """Entry point of a serving process: serve on the inherited socket, answer the control pipe."""
    # Ctrl-C reaches the whole process group; the parent decides when its children stop, so a
    # terminal interrupt does not print one traceback per child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        core = _Core({p.id: p for p in pairs}, images, opts, port)

        def control() -> None:
            try:
                while True:
                    msg = conn.recv()
                    if msg[0] == "stop":
                        break
                    conn.send(_answer(core, msg))
            except (EOFError, OSError):
                pass  # the parent is gone: stop serving
            loop.call_soon_threadsafe(stop.set)

        started = threading.Event()
        task = asyncio.ensure_future(_serve(core, sock, started, stop))
        while not started.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # raises why it could not start
        conn.send(("ready", os.getpid()))
        threading.Thread(target=control, daemon=True).start()
        await task

    try:
        asyncio.run(main())
    finally:
        try:
            conn.send(("stopped",))
        except OSError:
            pass


def _answer(core: _Core, msg: tuple[Any, ...]) -> Any:
    kind = msg[0]
    if kind == "hits":
        return dict(core.hits)
    if kind == "requests":
        return list(core.log)
    if kind == "reset":
        core.hits.clear()
        core.attempts.clear()
        core.log.clear()
        return None
    raise ValueError(f"unknown control message {kind!r}")


# --------------------------------------------------------------------------- the public server


class SyntheticWeb:
    """A web server on 127.0.0.1 serving `pairs` and the hostile cases; a context manager.

    Start two instances to get two "hosts" (different ports of 127.0.0.1).
    """

    def __init__(
        self,
        pairs: Iterable[Pair] = (),
        *,
        port: int = 0,
        robots_txt: str | None = DEFAULT_ROBOTS,
        robots_status: int = 200,
        retry_after: int = 1,
        image_size: tuple[int, int] = DEFAULT_SIZE,
        quality: int = DEFAULT_QUALITY,
        prerender: bool = True,
        render_workers: int = 1,
        drip_interval: float = 0.5,
        drip_bytes: int = 4,
        stall_seconds: float = 30.0,
        huge_bytes: int = 64 << 20,
        bomb_side: int = 20000,
        gzip_bomb_bytes: int = 64 << 20,
        log_size: int = 10000,
        processes: int = 0,
    ) -> None:
        self.pairs: dict[str, Pair] = {}
        for pair in pairs:
            if pair.id in self.pairs:
                raise ValueError(f"duplicate pair id {pair.id!r}")
            self.pairs[pair.id] = pair
        if processes < 0:
            raise ValueError(f"processes must be >= 0, not {processes}")
        self._requested_port = port
        self._prerender = prerender
        self._render_workers = render_workers
        self._processes = processes
        self._opts = _Options(
            robots_txt=robots_txt,
            robots_status=robots_status,
            retry_after=retry_after,
            image_size=tuple(image_size),  # type: ignore[arg-type]
            quality=quality,
            drip_interval=drip_interval,
            drip_bytes=drip_bytes,
            stall_seconds=stall_seconds,
            huge_bytes=huge_bytes,
            bomb_side=bomb_side,
            gzip_bomb_bytes=gzip_bomb_bytes,
            log_size=log_size,
        )
        self._port: int | None = None
        self._core: _Core | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._children: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        self._lock = threading.Lock()  # the control pipes are request/answer: one caller at a time
        self.render_seconds: float = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SyntheticWeb:
        """Render (unless lazy), bind 127.0.0.1 and serve; returns once requests are accepted."""
        if self._port is not None:
            raise RuntimeError("this SyntheticWeb is already running")
        t0 = time.perf_counter()
        images = render_jpegs(self.pairs.values(), self._opts.image_size, self._opts.quality, self._render_workers) if self._prerender else {}
        self.render_seconds = time.perf_counter() - t0

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, self._requested_port))
            sock.listen(1024)
            sock.setblocking(False)
            port = sock.getsockname()[1]
            if self._processes == 0:
                self._start_thread(images, port, sock)
            else:
                self._start_processes(images, port, sock)
        except BaseException:
            sock.close()
            self._shutdown_children()
            raise
        self._port = port
        return self

    def _start_thread(self, images: dict[str, bytes], port: int, sock: socket.socket) -> None:
        core = _Core(dict(self.pairs), images, self._opts, port)
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop_event = asyncio.Event()
                await _serve(core, sock, started, self._stop_event)

            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by start(), which is waiting for `started`
                failure.append(exc)
                started.set()

        thread = threading.Thread(target=run, name=f"synthweb-{port}", daemon=True)
        thread.start()
        started.wait(60)
        if failure:
            raise RuntimeError(f"SyntheticWeb could not start: {failure[0]!r}") from failure[0]
        if not started.is_set():
            raise RuntimeError("SyntheticWeb did not start within 60 s")
        self._core, self._thread = core, thread

    def _start_processes(self, images: dict[str, bytes], port: int, sock: socket.socket) -> None:
        # spawn, not fork: the parent may be running threads (pytest, another SyntheticWeb).
        ctx = multiprocessing.get_context("spawn")
        pairs = list(self.pairs.values())
        for _ in range(self._processes):
            parent_conn, child_conn = ctx.Pipe()
            proc = ctx.Process(
                target=_child_main,
                args=(pairs, images, self._opts, port, sock, child_conn),
                name=f"synthweb-{port}",
                daemon=True,
            )
            proc.start()
            child_conn.close()
            self._children.append((proc, parent_conn))
        for proc, conn in self._children:
            if not conn.poll(120):
                raise RuntimeError(f"serving process {proc.pid} did not start within 120 s")
            msg = conn.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"serving process {proc.pid} failed to start (exit code {proc.exitcode})")
        sock.close()  # the children hold their own copies; the parent never accepts

    def stop(self) -> None:
        """Stop serving and close every connection (open drips and endless bodies included)."""
        if self._port is None:
            return
        if self._thread is not None and self._loop is not None and self._stop_event is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass  # the loop already ended
            self._thread.join(30)
        self._shutdown_children()
        self._thread = self._loop = self._stop_event = None
        self._port = None

    def _shutdown_children(self) -> None:
        for proc, conn in self._children:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for proc, conn in self._children:
            proc.join(15)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()
        self._children = []

    def __enter__(self) -> SyntheticWeb:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("SyntheticWeb is not running; call start() or use it as a context manager")
        return self._port

    @property
    def netloc(self) -> str:
        """"127.0.0.1:PORT", the form a fetcher's loopback allowlist takes."""
        return f"{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.netloc}"

    def url(self, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        return self.base_url + path

    def url_for(self, pair_id: str) -> str:
        if pair_id not in self.pairs:
            raise KeyError(f"no pair {pair_id!r} on this server")
        return self.url(f"/img/{pair_id}.jpg")

    def private_url(self, pair_id: str) -> str:
        """The same image under /private/, which the default robots.txt disallows."""
        if pair_id not in self.pairs:
            raise KeyError(f"no pair {pair_id!r} on this server")
        return self.url(f"/private/{pair_id}.jpg")

    def flaky_url(self, pair_id: str, fail: int = 2, status: int = 503, retry_after: int | None = None) -> str:
        """An image that answers `status` (with Retry-After) `fail` times before it succeeds."""
        if pair_id not in self.pairs:
            raise KeyError(f"no pair {pair_id!r} on this server")
        query = f"fail={fail}&status={status}" + (f"&retry_after={retry_after}" if retry_after is not None else "")
        return self.url(f"/flaky/{pair_id}.jpg?{query}")

    def hostile_url(self, case: str) -> str:
        """URL of the HostileCase named `case` (see HOSTILE_CASES)."""
        found = _CASES_BY_NAME.get(case)
        if found is None:
            raise KeyError(f"no hostile case {case!r}; known: {', '.join(_CASES_BY_NAME)}")
        return self.url(found.path)

    # ------------------------------------------------------------------ what was asked

    def _ask(self, kind: str) -> list[Any]:
        with self._lock:
            for _, conn in self._children:
                conn.send((kind,))
            return [conn.recv() for _, conn in self._children]

    def hits_by_path(self) -> dict[str, int]:
        self.port  # noqa: B018 - raises when not running
        if self._core is not None:
            return dict(self._core.hits)
        total: collections.Counter[str] = collections.Counter()
        for counts in self._ask("hits"):
            total.update(counts)
        return dict(total)

    def hits(self, path: str) -> int:
        """Requests received for `path` (a path such as "/private/x.jpg", or a full URL; the query is
        ignored) since start or the last reset_hits()."""
        if "://" in path:
            path = urlsplit(path).path
        else:
            path = path.split("?", 1)[0]
        if self._core is not None:
            return self._core.hits.get(path, 0)
        return self.hits_by_path().get(path, 0)

    def total_hits(self) -> int:
        return sum(self.hits_by_path().values())

    def requests(self) -> list[RequestRecord]:
        """The last `log_size` requests (per serving process), oldest first within a process."""
        self.port  # noqa: B018
        if self._core is not None:
            return list(self._core.log)
        return [r for records in self._ask("requests") for r in records]

    def reset_hits(self) -> None:
        """Forget hit counts, flaky attempt counters and the request log."""
        self.port  # noqa: B018
        if self._core is not None:
            self._core.hits.clear()
            self._core.attempts.clear()
            self._core.log.clear()
        else:
            self._ask("reset")

    # ------------------------------------------------------------------ URL lists

    def write_url_list(
        self,
        path: str | os.PathLike[str],
        pairs: Iterable[Pair] | None = None,
        fmt: str = "csv",
        hostile: Iterable[str] = (),
    ) -> UrlList:
        """Write `url,caption` rows for `pairs` (default: all served) and the named hostile cases,
        plus the manifest `<stem>.manifest.json` next to it; returns both paths.

        fmt: "csv" (Wukong's layout), "tsv" or "jsonl" ({"url": ..., "caption": ...} per line).
        The manifest has one item per row, in row order, with the matched flag and the scene
        attributes (or, for hostile rows, the case name and the expected outcome).
        """
        if fmt not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"fmt must be csv, tsv or jsonl, not {fmt!r}")
        items: list[dict[str, Any]] = []
        for pair in self.pairs.values() if pairs is None else pairs:
            items.append({"url": self.url_for(pair.id), "kind": "image", **pair.manifest_entry()})
        for name in hostile:
            case = _CASES_BY_NAME.get(name)
            if case is None:
                raise KeyError(f"no hostile case {name!r}; known: {', '.join(_CASES_BY_NAME)}")
            items.append(
                {
                    "url": self.url(case.path),
                    "kind": "hostile",
                    "case": case.name,
                    "expect": case.expect,
                    "caption": assets.SAMPLE_CAPTION,
                }
            )

        out = Path(path)
        buf = io.StringIO()
        if fmt == "jsonl":
            for item in items:
                buf.write(json.dumps({"url": item["url"], "caption": item["caption"]}, ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
            writer.writerow(["url", "caption"])
            writer.writerows([item["url"], item["caption"]] for item in items)
        manifest = {
            "base_url": self.base_url,
            "url_list": out.name,
            "format": fmt,
            "image_size": list(self._opts.image_size),
            "quality": self._opts.quality,
            "robots_txt": self._opts.robots_txt,
            "count": len(items),
            "matched": sum(1 for i in items if i.get("matched") is True),
            "mismatched": sum(1 for i in items if i.get("matched") is False),
            "items": items,
        }
        manifest_path = out.with_name(out.stem + ".manifest.json")
        _write_atomically(out, buf.getvalue())
        _write_atomically(manifest_path, json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
        return UrlList(out, manifest_path)


def _write_atomically(path: Path, text: str) -> None:
    # A reader (or a crash) never sees half a list: write aside, then rename over.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest written by write_url_list, with an `by_url` index added."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data["by_url"] = {item["url"]: item for item in data["items"]}
    return data


__all__ = [
    "DEFAULT_ROBOTS",
    "HOSTILE_CASES",
    "HOST",
    "HostileCase",
    "PRIVATE_TARGETS",
    "RequestRecord",
    "SyntheticWeb",
    "UrlList",
    "read_manifest",
]
