"""SigV4Signer.put_headers against minio's own signer: the same headers, in the same order.

minio's input is built the way the event-loop uploader built it before this signer, plus the
X-Amz-Security-Token header that minio's client (`Minio._build_headers`) adds before signing
when the credentials carry a session token: minio's signer itself never adds it.
"""

from __future__ import annotations

import hmac
import random
import string
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote, urlsplit

import pytest
from minio.credentials import Credentials
from minio.signer import sign_v4_s3
from minio.time import to_amz_date

from taisu_etl.storage.sigv4 import SigV4Signer

HOSTS = ["127.0.0.1:9000", "s3.amazonaws.com", "minio.example.org", "localhost:4566"]
CONTENT_TYPES = [
    "image/jpeg",
    "image/png",
    "application/octet-stream",
    "text/plain; charset=utf-8",
    "  application/x-tar  ",
    "multipart/form-data;  boundary=a   b",
    "\timage/webp\t",
    "",
]
SIZES = [0, 1, 2_800, 5 * 2**20, 2**40]
REGIONS = ["", "us-east-1", "eu-west-2", "cn-north-1"]
TOKENS = [None, "", "FQoGZXIvYXdzEJr//////////wEaDLLW+token=", "  token  with   spaces "]
KEY_CHARS = "abcxyz019-_.~!'()*+,;=&$@ /中文图片カタカナ한글é"

DATES = [
    datetime(2024, 2, 29, 0, 0, 0, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 30, 5, tzinfo=UTC),
    datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC),  # the day rolls over
    datetime(2024, 3, 1, 0, 0, 1, tzinfo=UTC),
    datetime(2024, 3, 1, 0, 0, 1, 999_999, tzinfo=UTC),  # microseconds: not in the header
    datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC),  # and back to a day already left
    datetime(2023, 12, 31, 23, 59, 59),  # naive: taken as UTC, as minio does
    datetime(2024, 1, 1, 7, 59, 59, tzinfo=timezone(timedelta(hours=8))),  # 2023-12-31 UTC
    datetime(2024, 1, 1, 8, 0, 0, tzinfo=timezone(timedelta(hours=8))),
    datetime(2026, 7, 4, 9, 5, 3, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2000, 1, 1, 0, 0, 0, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),  # a year strftime does not pad to 4 digits here
]


def minio_put_headers(
    ak: str, sk: str, token: str | None, region: str, host: str, path: str,
    ctype: str, size: int, digest: str, now: datetime,
) -> dict[str, str]:
    """What minio sends for this PUT: the uploader's headers, minio's token header, minio's signer."""
    headers = {
        "Host": host,
        "Content-Type": ctype,
        "Content-Length": str(size),
        "x-amz-content-sha256": digest,
    }
    credentials = Credentials(ak, sk, token)
    if credentials.session_token:  # Minio._build_headers, just before x-amz-date
        headers["X-Amz-Security-Token"] = credentials.session_token
    headers["x-amz-date"] = to_amz_date(now)
    return sign_v4_s3(
        method="PUT", url=urlsplit(path), region=region, headers=headers,
        credentials=credentials, content_sha256=digest, date=now,
    )


def random_secret(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(n))


def random_path(rng: random.Random) -> str:
    bucket = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(3, 12)))
    key = "/".join(
        "".join(rng.choice(KEY_CHARS) for _ in range(rng.randint(1, 10))) for _ in range(rng.randint(1, 4))
    )
    return f"/{bucket}/{quote(key, safe='/')}"


@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize("region", REGIONS)
def test_put_headers_equal_minios(region: str, token: str | None) -> None:
    rng = random.Random(f"{region}|{token}")
    for _ in range(3):
        ak, sk = random_secret(rng, 20), random_secret(rng, 40)
        signer = SigV4Signer(ak, sk, region, session_token=token)  # one signer: its caches in play
        for now in DATES:
            for _ in range(4):
                host, path = rng.choice(HOSTS), random_path(rng)
                ctype, size = rng.choice(CONTENT_TYPES), rng.choice(SIZES)
                digest = rng.choice(["UNSIGNED-PAYLOAD", rng.randbytes(32).hex()])
                ours = signer.put_headers(host, path, ctype, size, digest, now=now)
                theirs = minio_put_headers(ak, sk, token, region, host, path, ctype, size, digest, now)
                assert list(ours.items()) == list(theirs.items()), (host, path, ctype, now)


def test_awkward_paths_and_values_equal_minios() -> None:
    signer = SigV4Signer("AKIA EXAMPLE", "wJalr/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1")
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    cases = [
        ("/bucket/a%20b/c%20%20d.jpg", "image/jpeg"),
        ("/bucket/" + quote("图片/猫 咪.png", safe="/"), "image/png"),
        ("/bucket/" + quote("a  b   c", safe="/"), "  text/plain  "),
        ("/bucket/trailing/", "application/octet-stream"),
        ("/bucket/a//b", "x/y  z"),
        ("/", "image/gif"),
        ("", "image/gif"),  # minio signs "/" for an empty path
    ]
    for path, ctype in cases:
        ours = signer.put_headers(" host:9000 ", path, ctype, 12, "UNSIGNED-PAYLOAD", now=now)
        theirs = minio_put_headers(
            "AKIA EXAMPLE", "wJalr/K7MDENG+bPxRfiCYEXAMPLEKEY", None, "us-east-1",
            " host:9000 ", path, ctype, 12, "UNSIGNED-PAYLOAD", now,
        )
        assert list(ours.items()) == list(theirs.items()), path


def test_service_is_part_of_the_signature() -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    request = ("h", "/b/k", "image/jpeg", 1, "UNSIGNED-PAYLOAD", now)
    s3 = SigV4Signer("ak", "sk", "us-east-1").put_headers(*request)
    other = SigV4Signer("ak", "sk", "us-east-1", service="sts").put_headers(*request)
    assert "/us-east-1/sts/aws4_request" in other["Authorization"]
    assert s3["Authorization"] != other["Authorization"]


def test_now_defaults_to_the_current_second() -> None:
    signer = SigV4Signer("ak", "sk", "us-east-1", session_token="tok")
    before = datetime.now(UTC).replace(microsecond=0)
    ours = signer.put_headers("h:1", "/b/k.jpg", "image/jpeg", 7, "UNSIGNED-PAYLOAD")
    after = datetime.now(UTC)
    sent = datetime.strptime(ours["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= sent <= after
    assert ours == minio_put_headers(
        "ak", "sk", "tok", "us-east-1", "h:1", "/b/k.jpg", "image/jpeg", 7, "UNSIGNED-PAYLOAD", sent
    )


def test_signing_key_derived_once_per_day(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real_digest = hmac.digest

    def counting_digest(key: bytes, msg: bytes, digest: str) -> bytes:
        calls.append(msg)
        return real_digest(key, msg, digest)

    monkeypatch.setattr(hmac, "digest", counting_digest)
    signer = SigV4Signer("ak", "sk", "eu-west-2")

    def put(now: datetime) -> dict[str, str]:
        return signer.put_headers("h", "/b/k", "image/jpeg", 3, "UNSIGNED-PAYLOAD", now=now)

    day1 = datetime(2024, 2, 29, 0, 0, 1, tzinfo=UTC)
    put(day1)
    assert calls == [b"20240229", b"eu-west-2", b"s3", b"aws4_request"]
    put(day1)
    put(day1 + timedelta(hours=23, minutes=59, seconds=58))
    assert len(calls) == 4  # same UTC day: the key is reused
    rolled = put(datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC))
    assert calls[4:] == [b"20240301", b"eu-west-2", b"s3", b"aws4_request"]
    put(datetime(2024, 3, 1, 9, 0, 0, tzinfo=timezone(timedelta(hours=8))))  # 01:00 UTC, same day
    assert len(calls) == 8
    assert rolled == minio_put_headers(
        "ak", "sk", None, "eu-west-2", "h", "/b/k", "image/jpeg", 3, "UNSIGNED-PAYLOAD",
        datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC),
    )
