"""Every route of the SyntheticWeb does what it claims, read with a client that follows no
redirect and caps every body."""

from __future__ import annotations

import http.client
import io
import socket
import struct
import zlib

import pytest
from PIL import Image, ImageOps

from taisu_etl.synthweb import HOSTILE_CASES, PRIVATE_TARGETS, SyntheticWeb, make_pairs
from taisu_etl.synthweb.assets import EXIF_UPRIGHT_SIZE, GPS, SAMPLE_SCENE, sample_jpeg
from taisu_etl.synthweb.scenes import COLOURS
from taisu_etl.vocab import REASONS
from tests.synthweb.conftest import GZIP_BOMB, HUGE
from tests.synthweb.support import get, raw_get

SAMPLE = sample_jpeg()


def _image(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


# --------------------------------------------------------------------------- good images


def test_serves_every_pair_as_its_own_jpeg(web: SyntheticWeb, pairs: list) -> None:
    for pair in pairs[:5]:
        reply = get(web.port, f"/img/{pair.id}.jpg")
        assert reply.status == 200
        assert reply.header("Content-Type") == "image/jpeg"
        assert reply.body == pair.jpeg()
        assert _image(reply.body).size == (256, 256)
    assert web.url_for(pairs[0].id) == f"http://127.0.0.1:{web.port}/img/{pairs[0].id}.jpg"


def test_keep_alive_serves_many_requests_on_one_connection(web: SyntheticWeb, pairs: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    try:
        for pair in pairs:
            conn.request("GET", f"/img/{pair.id}.jpg")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read(1 << 20) == pair.jpeg()
            assert not resp.will_close
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/img/nope.jpg", "/img/train-3-000000.png", "/elsewhere", "/hostile/nope", "/private/nope.jpg"])
def test_unknown_paths_are_404(web: SyntheticWeb, path: str) -> None:
    assert get(web.port, path).status == 404


def test_only_get_and_head(web: SyntheticWeb, pairs: list) -> None:
    assert get(web.port, f"/img/{pairs[0].id}.jpg", method="POST").status == 405
    head = get(web.port, f"/img/{pairs[0].id}.jpg", method="HEAD")
    assert head.status == 200 and head.header("Content-Length") == str(len(pairs[0].jpeg()))


def test_lazy_rendering_serves_the_same_bytes(pairs: list) -> None:
    with SyntheticWeb(pairs[:3], prerender=False) as lazy:
        for pair in pairs[:3]:
            assert get(lazy.port, f"/img/{pair.id}.jpg").body == pair.jpeg()


def test_the_server_binds_loopback_only(web: SyntheticWeb) -> None:
    assert web.base_url.startswith("http://127.0.0.1:")
    assert web.netloc == f"127.0.0.1:{web.port}"


# --------------------------------------------------------------------------- statuses and back-off


@pytest.mark.parametrize("code", [404, 410, 403, 500])
def test_error_statuses(web: SyntheticWeb, code: int) -> None:
    reply = get(web.port, f"/hostile/{code}")
    assert reply.status == code
    assert reply.header("Content-Type").startswith("text/plain")


@pytest.mark.parametrize("code", [429, 503])
def test_retry_after(web: SyntheticWeb, code: int) -> None:
    assert get(web.port, f"/hostile/{code}").header("Retry-After") == "7"  # the server's setting
    reply = get(web.port, f"/hostile/{code}?retry_after=2")
    assert reply.status == code and reply.header("Retry-After") == "2"


def test_any_status(web: SyntheticWeb) -> None:
    assert get(web.port, "/hostile/status/451").status == 451
    assert get(web.port, "/hostile/status/999").status == 404


def test_flaky_fails_k_times_then_serves(web: SyntheticWeb, pairs: list) -> None:
    pair = pairs[1]
    url = web.flaky_url(pair.id, fail=2, status=503, retry_after=3)
    path = url[len(web.base_url):]
    first, second, third = (get(web.port, path) for _ in range(3))
    assert (first.status, second.status) == (503, 503)
    assert first.header("Retry-After") == "3"
    assert third.status == 200 and third.body == pair.jpeg()
    # another parametrisation of the same image has its own budget
    other = web.flaky_url(pair.id, fail=1, status=429)[len(web.base_url):]
    assert get(web.port, other).status == 429
    assert get(web.port, other).status == 200


# --------------------------------------------------------------------------- bodies that misbehave


def test_slow_drip_declares_the_whole_image_and_drips_it(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/slow", cap=8)  # hang up after 8 bytes, as a deadline would
    assert reply.status == 200 and reply.body == SAMPLE[:8]
    assert reply.header("Content-Length") == str(len(SAMPLE))
    # This instance drips fast (256 bytes per 20 ms), so the whole image arrives and is intact.
    assert get(web.port, "/hostile/slow").body == SAMPLE


def test_slow_headers_stall(web: SyntheticWeb) -> None:
    with pytest.raises(TimeoutError):
        get(web.port, "/hostile/slow-headers", timeout=0.5)


def test_endless_body_never_ends(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/endless", cap=5 << 20)
    assert reply.status == 200
    assert reply.header("Transfer-Encoding") == "chunked" and reply.header("Content-Length") is None
    assert len(reply.body) == 5 << 20  # still going when we stopped reading
    assert reply.body[:3] == b"\xff\xd8\xff"


def test_head_of_an_endless_body_has_no_body(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/endless", method="HEAD")
    assert reply.status == 200 and reply.header("Content-Type") == "image/jpeg"


def test_huge_bodies(web: SyntheticWeb) -> None:
    chunked = get(web.port, "/hostile/huge", cap=HUGE + 1)
    assert chunked.header("Content-Length") is None and len(chunked.body) == HUGE
    declared = get(web.port, "/hostile/huge-declared", cap=1 << 16)
    assert declared.header("Content-Length") == str(HUGE) and len(declared.body) == 1 << 16
    assert declared.body[:3] == b"\xff\xd8\xff"


def test_lying_length_sends_more_than_it_declares(web: SyntheticWeb) -> None:
    raw = raw_get(web.port, "/hostile/lying-length")
    assert raw.header("Content-Length") == "1000"
    assert raw.closed and raw.body == SAMPLE  # the whole image went out after the 1000 declared
    # a client that trusts the header gets a cut JPEG
    assert get(web.port, "/hostile/lying-length").body == SAMPLE[:1000]


def test_short_body_ends_before_its_length(web: SyntheticWeb) -> None:
    raw = raw_get(web.port, "/hostile/short-body")
    assert raw.header("Content-Length") == str(len(SAMPLE))
    assert raw.closed and raw.body == SAMPLE[: len(SAMPLE) // 2]
    reply = get(web.port, "/hostile/short-body")  # http.client's read(amt) returns what came
    assert reply.body == SAMPLE[: len(SAMPLE) // 2]


def test_reset_before_any_response(web: SyntheticWeb) -> None:
    with pytest.raises(ConnectionResetError):  # RemoteDisconnected is one too
        get(web.port, "/hostile/reset")


def test_empty_image(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/empty")
    assert reply.status == 200 and reply.body == b"" and reply.header("Content-Type") == "image/jpeg"


def test_bomb_png_declares_huge_dimensions_in_a_small_file(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/bomb.png")
    body = reply.body
    assert reply.header("Content-Type") == "image/png"
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and body[12:16] == b"IHDR"
    width, height = struct.unpack(">II", body[16:24])
    assert (width, height) == (20000, 20000)
    assert len(body) < 200_000
    with pytest.raises(Image.DecompressionBombError):  # PIL's own guard trips before any pixel
        Image.open(io.BytesIO(body))


def test_gzip_bomb_inflates_a_thousandfold(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/gzip-bomb", headers={"Accept-Encoding": "identity"})
    assert reply.header("Content-Encoding") == "gzip" and reply.header("Content-Type") == "image/jpeg"
    assert len(reply.body) < GZIP_BOMB // 100
    inflater = zlib.decompressobj(31)
    total, data = 0, reply.body
    while data:  # bounded steps of 1 MiB, never the whole bomb at once
        out = inflater.decompress(data, 1 << 20)
        assert out.count(0) == len(out)
        total += len(out)
        data = inflater.unconsumed_tail
    assert total == GZIP_BOMB


# --------------------------------------------------------------------------- wrong things


def test_wrong_type_is_a_real_jpeg_labelled_html(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/wrong-type")
    assert reply.header("Content-Type").startswith("text/html")
    assert _image(reply.body).format == "JPEG"


@pytest.mark.parametrize("case, content_type", [("html", "image/jpeg"), ("page.html", "text/html")])
def test_html_pages(web: SyntheticWeb, case: str, content_type: str) -> None:
    reply = get(web.port, f"/hostile/{case}")
    assert reply.header("Content-Type") == content_type
    assert reply.body.startswith(b"<!doctype html>")


def test_not_image_is_noise_labelled_jpeg(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/not-image")
    assert reply.header("Content-Type") == "image/jpeg" and len(reply.body) == 4096
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(reply.body))


def test_truncated_jpeg(web: SyntheticWeb) -> None:
    body = get(web.port, "/hostile/truncated.jpg").body
    assert body == SAMPLE[: len(SAMPLE) // 2] and not body.endswith(b"\xff\xd9")
    with pytest.raises(OSError):
        _image(body)


@pytest.mark.parametrize(
    "case, content_type, fmt, mode, size",
    [
        ("png", "image/png", "PNG", "RGB", (256, 256)),
        ("rgba.png", "image/png", "PNG", "RGBA", (256, 256)),
        ("webp", "image/webp", "WEBP", "RGB", (256, 256)),
        ("cmyk.jpg", "image/jpeg", "JPEG", "CMYK", (256, 256)),
        ("bmp", "image/bmp", "BMP", "RGB", (256, 256)),
        ("tiny.jpg", "image/jpeg", "JPEG", "RGB", (32, 32)),
        ("wide.jpg", "image/jpeg", "JPEG", "RGB", (2400, 240)),
        ("sample.jpg", "image/jpeg", "JPEG", "RGB", (256, 256)),
    ],
)
def test_image_formats(web: SyntheticWeb, case: str, content_type: str, fmt: str, mode: str, size: tuple) -> None:
    reply = get(web.port, f"/hostile/{case}")
    assert reply.status == 200 and reply.header("Content-Type") == content_type
    img = _image(reply.body)
    assert (img.format, img.mode, img.size) == (fmt, mode, size)


def test_svg(web: SyntheticWeb) -> None:
    reply = get(web.port, "/hostile/svg")
    assert reply.header("Content-Type") == "image/svg+xml" and b"<svg" in reply.body


def test_animated_gif_has_three_different_frames(web: SyntheticWeb) -> None:
    img = _image(get(web.port, "/hostile/gif-animated.gif").body)
    assert img.format == "GIF" and img.n_frames == 3 and img.is_animated
    firsts = []
    for frame in range(3):
        img.seek(frame)
        firsts.append(img.convert("RGB").getpixel((128, 128)))
    assert len(set(firsts)) == 3


def test_exif_rotated_jpeg_turns_upright_and_carries_gps(web: SyntheticWeb) -> None:
    img = _image(get(web.port, "/hostile/exif-rotated.jpg").body)
    exif = img.getexif()
    assert exif[0x0112] == 6
    assert dict(exif.get_ifd(0x8825)) == GPS
    assert img.size == EXIF_UPRIGHT_SIZE[::-1]  # stored on its side
    upright = ImageOps.exif_transpose(img)
    assert upright.size == EXIF_UPRIGHT_SIZE
    # the sample shape sits on the left once upright: left third red, right third blue
    w, h = upright.size
    red, blue = COLOURS[SAMPLE_SCENE.colour], COLOURS[SAMPLE_SCENE.background]
    assert max(abs(a - b) for a, b in zip(upright.getpixel((int(w * 0.27), h // 2)), red)) < 40
    assert max(abs(a - b) for a, b in zip(upright.getpixel((int(w * 0.9), h // 2)), blue)) < 40


def test_appended_payload_hides_a_zip_after_the_image(web: SyntheticWeb) -> None:
    body = get(web.port, "/hostile/appended-payload.jpg").body
    assert body.startswith(SAMPLE)
    assert body[len(SAMPLE):].startswith(b"PK\x03\x04")
    assert _image(body).size == (256, 256)  # decoders stop at the image's end


@pytest.mark.parametrize("case, tag", [("noai", "noai"), ("noimageai", "noimageai"),
                                       ("noai-list", "noindex, nofollow, noimageai")])
def test_x_robots_tag(web: SyntheticWeb, case: str, tag: str) -> None:
    reply = get(web.port, f"/hostile/{case}")
    assert reply.status == 200 and reply.header("X-Robots-Tag") == tag
    assert reply.body == SAMPLE


# --------------------------------------------------------------------------- redirects


def test_redirect_loop(web: SyntheticWeb) -> None:
    a = get(web.port, "/hostile/redirect-loop")
    assert a.status == 302 and a.header("Location") == "/hostile/redirect-loop-b"
    b = get(web.port, a.header("Location"))
    assert b.status == 302 and b.header("Location") == "/hostile/redirect-loop"


def test_redirect_chain_ends_in_the_image(web: SyntheticWeb) -> None:
    web.reset_hits()
    path, hops = "/hostile/redirect-chain/3", 0
    reply = get(web.port, path)
    while reply.status == 302:
        hops += 1
        path = reply.header("Location")
        reply = get(web.port, path)
        assert hops <= 3
    assert hops == 3 and reply.status == 200 and reply.body == SAMPLE
    assert [web.hits(f"/hostile/redirect-chain/{n}") for n in range(4)] == [1, 1, 1, 1]
    assert get(web.port, "/hostile/redirect-chain/1?status=308").status == 308
    assert get(web.port, "/hostile/redirect-chain/1000").status == 400


@pytest.mark.parametrize("variant", list(PRIVATE_TARGETS))
def test_redirects_to_private_addresses(web: SyntheticWeb, variant: str) -> None:
    reply = get(web.port, f"/hostile/redirect-private/{variant}")
    assert reply.status == 302
    assert reply.header("Location") == PRIVATE_TARGETS[variant].format(port=web.port)


def test_redirect_private_defaults_and_localhost_uses_this_port(web: SyntheticWeb) -> None:
    assert get(web.port, "/hostile/redirect-private").header("Location") == "http://10.0.0.1/x.jpg"
    local = get(web.port, "/hostile/redirect-private/localhost").header("Location")
    assert local == f"http://localhost:{web.port}/hostile/sample.jpg"
    assert get(web.port, "/hostile/redirect-private/nowhere").status == 404


# --------------------------------------------------------------------------- robots and counters


def test_robots_txt_disallows_private(web: SyntheticWeb) -> None:
    reply = get(web.port, "/robots.txt")
    assert reply.status == 200 and reply.header("Content-Type").startswith("text/plain")
    assert reply.body == b"User-agent: *\nDisallow: /private/\n"


@pytest.mark.parametrize(
    "robots, status, expect_status, expect_body",
    [
        ("User-agent: *\nDisallow: /\n", 200, 200, b"User-agent: *\nDisallow: /\n"),
        (None, 200, 404, None),
        ("down", 503, 503, b"down"),
    ],
)
def test_robots_txt_is_configurable(robots: str | None, status: int, expect_status: int, expect_body: bytes | None) -> None:
    with SyntheticWeb(robots_txt=robots, robots_status=status) as server:
        reply = get(server.port, "/robots.txt")
        assert reply.status == expect_status
        if expect_body is not None:
            assert reply.body == expect_body


def test_private_paths_serve_the_image_and_count_hits(web: SyntheticWeb, pairs: list) -> None:
    web.reset_hits()
    pair = pairs[2]
    assert web.hits(web.private_url(pair.id)) == 0
    assert get(web.port, f"/private/{pair.id}.jpg").body == pair.jpeg()
    get(web.port, f"/img/{pair.id}.jpg?x=1")
    get(web.port, f"/img/{pair.id}.jpg")
    assert web.hits(web.private_url(pair.id)) == 1
    assert web.hits(f"/img/{pair.id}.jpg") == 2  # the query does not split the count
    assert web.hits(web.url_for(pair.id) + "?y=2") == 2
    assert web.total_hits() == 3
    web.reset_hits()
    assert web.hits(f"/img/{pair.id}.jpg") == 0 and web.hits_by_path() == {}


def test_request_log_keeps_the_headers(web: SyntheticWeb) -> None:
    web.reset_hits()
    get(web.port, "/hostile/sample.jpg", headers={"User-Agent": "taisu-test/1", "Accept-Encoding": "identity"})
    [record] = web.requests()
    assert record.method == "GET" and record.path == "/hostile/sample.jpg"
    assert record.header("user-agent") == "taisu-test/1" and record.header("Accept-Encoding") == "identity"


def test_two_instances_are_two_hosts(pairs: list) -> None:
    with SyntheticWeb(pairs[:2]) as one, SyntheticWeb(pairs[2:4], robots_txt="User-agent: *\nDisallow: /\n") as two:
        assert one.port != two.port and one.netloc != two.netloc
        assert get(one.port, f"/img/{pairs[0].id}.jpg").status == 200
        assert get(two.port, f"/img/{pairs[0].id}.jpg").status == 404  # not served there
        assert get(two.port, "/robots.txt").body == b"User-agent: *\nDisallow: /\n"
        hop = get(one.port, "/hostile/redirect?to=" + two.url_for(pairs[2].id) + "&status=307")
        assert hop.status == 307 and hop.header("Location") == two.url_for(pairs[2].id)
        assert one.hits(f"/img/{pairs[0].id}.jpg") == 1 and two.hits(f"/img/{pairs[0].id}.jpg") == 1
        assert two.hits(f"/img/{pairs[2].id}.jpg") == 0  # the redirect was not followed


# --------------------------------------------------------------------------- the case table


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=lambda c: c.name)
def test_every_listed_case_is_routed(web: SyntheticWeb, case) -> None:
    assert case.expect == "ok" or case.expect in REASONS, case
    assert web.hostile_url(case.name) == web.base_url + case.path
    if case.name == "slow-headers":
        return  # stalls by design; see test_slow_headers_stall
    try:
        reply = get(web.port, case.path, cap=1 << 16)
    except (ConnectionResetError, http.client.IncompleteRead):
        assert case.name in ("reset", "short-body")
        return
    if case.name == "404":
        assert reply.status == 404
    else:
        assert reply.status != 404, case


def test_unknown_case_names_are_refused(web: SyntheticWeb) -> None:
    with pytest.raises(KeyError):
        web.hostile_url("no-such-case")
    with pytest.raises(KeyError):
        web.url_for("no-such-pair")


# --------------------------------------------------------------------------- lifecycle


def test_stop_ends_open_streams_and_closes_the_port(pairs: list) -> None:
    server = SyntheticWeb(pairs[:1], drip_interval=0.5).start()
    port = server.port
    hanging = []
    for path in ("/hostile/endless", "/hostile/slow", "/hostile/slow-headers"):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        hanging.append(sock)
    hanging[0].recv(1024)  # the endless body is flowing
    server.stop()
    for sock in hanging:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with pytest.raises(RuntimeError):
        server.base_url
    server.stop()  # a second stop is harmless


def test_start_twice_is_an_error(pairs: list) -> None:
    with SyntheticWeb(pairs[:1]) as server:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()


def test_duplicate_ids_are_refused(pairs: list) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        SyntheticWeb([pairs[0], pairs[0]])


def test_serving_processes_share_one_port_and_add_up_hits() -> None:
    pairs = make_pairs(8, seed=4)
    with SyntheticWeb(pairs, processes=2) as server:
        for pair in pairs:
            reply = get(server.port, f"/img/{pair.id}.jpg")
            assert reply.body == pair.jpeg()
        assert get(server.port, "/hostile/noai").header("X-Robots-Tag") == "noai"
        assert sum(server.hits(f"/img/{p.id}.jpg") for p in pairs) == 8
        assert server.total_hits() == 9
        assert len(server.requests()) == 9
        server.reset_hits()
        assert server.total_hits() == 0
        port = server.port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

