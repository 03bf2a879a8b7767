"""Filing takedown requests: selectors checked and normalised, bulk CSV all-or-nothing with bad rows by line."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import takedown_request
from taisu_etl.takedown.errors import TakedownError
from taisu_etl.takedown.requests import file_request, import_requests, normalise_host, parse_selector

from .support import photo


def _requests(ledger: Ledger) -> list[dict]:
    with ledger.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(takedown_request).order_by(takedown_request.c.id)).mappings()]


@pytest.mark.parametrize(("kind", "value", "want"), [
    ("url", " HTTP://Example.COM:80/a.jpg ", "http://example.com/a.jpg"),
    ("sha256", "AB" * 32, "ab" * 32),
    ("sample", "0123456789ABCDEF0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("domain", "https://Images.Example.com:8443/x", "images.example.com"),
    ("domain", "*.example.com.", "example.com"),
    ("taisu_id", " t000123 ", "t000123"),
])
def test_selectors_are_normalised(kind: str, value: str, want: str) -> None:
    assert parse_selector(kind, value).value == want


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("url", "ftp://example.com/a.jpg", "http"), ("url", "not a url", "not an image URL"), ("sha256", "abc", "64 hex"),
    ("sample", "xyz", "32 hex"), ("domain", "exa mple.com", "domain"), ("colour", "red", "unknown selector"), ("url", "  ", "empty"),
])
def test_bad_selectors_say_what_to_give(kind: str, value: str, message: str) -> None:
    with pytest.raises(TakedownError, match=message):
        parse_selector(kind, value)


def test_image_selector_is_the_stored_form_and_a_non_image_is_refused() -> None:
    sel = parse_selector("image", "mine.jpg", image=photo(3))
    assert len(sel.value) == 64 and len(sel.details["phash"]) == 16 and sel.details["file"] == "mine.jpg"
    with pytest.raises(TakedownError, match="not_image"):
        parse_selector("image", "notes.txt", image=b"hello")


def test_file_request_needs_a_requester(ledger: Ledger) -> None:
    with pytest.raises(TakedownError, match="requester"):
        file_request(ledger, "url", "http://example.com/a.jpg", requester=" ")
    rid = file_request(ledger, "url", "http://example.com/a.jpg", requester="Rights Co", contact="legal@rights.example",
                       reason="copyright", reference="ticket-9")
    row = _requests(ledger)[0]
    assert row["id"] == rid and row["status"] == "received" and row["channel"] == "cli" and row["contact"] == "legal@rights.example"


def test_bulk_import_is_all_or_nothing_and_idempotent(ledger: Ledger, tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "p.jpg").write_bytes(photo(5))
    good = tmp_path / "requests.csv"
    good.write_text(
        "kind,value,requester,contact,reason,reference\n"
        "url,http://a.example.com/1.jpg,Rights Co,legal@r.example,copyright,m-1\n"
        "domain,b.example.com,Shop,,,\n"
        "image,pics/p.jpg,Photographer,,,\n"
        "sha256," + "c" * 64 + ",Rights Co,,,\n",
        encoding="utf-8",
    )
    report = import_requests(ledger, good)
    assert len(report.filed) == 4 and not report.bad
    assert [r["kind"] for r in _requests(ledger)] == ["url", "domain", "image", "sha256"]
    assert _requests(ledger)[0]["channel"] == "import:requests.csv:2"
    again = import_requests(ledger, good)
    assert again.filed == [] and again.already == 4 and len(_requests(ledger)) == 4

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "kind,value,requester\n"
        "url,http://c.example.com/1.jpg,R\n"
        "sha256,xyz,R\n"
        "url,http://c.example.com/2.jpg,\n"
        "image,missing.jpg,R\n"
        "url,http://c.example.com/3.jpg,R,extra\n",
        encoding="utf-8",
    )
    report = import_requests(ledger, bad)
    assert [line for line, _ in report.bad] == [3, 4, 5, 6] and report.filed == []
    assert "bad.csv:3:" in report.summary() and "64 hex" in report.summary()
    assert len(_requests(ledger)) == 4  # nothing from the bad file


def test_import_header_and_encoding_errors_name_the_file(ledger: Ledger, tmp_path: Path) -> None:
    f = tmp_path / "h.csv"
    f.write_text("url,requester\nhttp://a/1.jpg,R\n", encoding="utf-8")
    with pytest.raises(TakedownError, match=r"h\.csv:1: .*missing: kind, value"):
        import_requests(ledger, f)
    g = tmp_path / "enc.csv"
    g.write_bytes(b"kind,value,requester\nurl,http://a.example.com/\xff.jpg,R\n")
    with pytest.raises(TakedownError, match=r"enc\.csv:2: not UTF-8"):
        import_requests(ledger, g)


def test_normalise_host_rejects_garbage() -> None:
    assert normalise_host("EXAMPLE.com") == "example.com"
    with pytest.raises(TakedownError):
        normalise_host("http://")
