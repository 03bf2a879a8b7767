"""`taisu-etl takedown ...` as an operator uses it, on embedded defaults: file, process, show, list,
import, and one clear `error:` line for each mistake."""

from __future__ import annotations

from pathlib import Path

from taisu_etl.db.ledger import Ledger
from taisu_etl.storage import LocalObjectStore

from tests.test_cli import assert_one_error_line, run_cli

from .support import add_stored, photo, state_of


def _ledger(home: Path) -> Ledger:
    assert run_cli("db", "upgrade", home=home).returncode == 0
    return Ledger.open(f"sqlite:///{home / 'ledger.db'}")


def test_request_now_show_and_list(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    store = LocalObjectStore(tmp_path / "objects")
    s = add_stored(ledger, store, "http://img.example.com/cat.jpg", photo(3))
    dry = run_cli("takedown", "request", "--url", s.url, "--requester", "Rights Co", "--dry-run", home=tmp_path)
    assert dry.returncode == 0 and "would remove: 1 sample(s), 1 image object(s)" in dry.stdout and s.key in dry.stdout
    assert store.exists(s.key)
    res = run_cli("takedown", "request", "--url", s.url, "--requester", "Rights Co", "--reason", "copyright",
                  "--reference", "mail-77", "--now", home=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "status: verified" in res.stdout and "takedown request 1 filed" in res.stdout
    assert not store.exists(s.key) and state_of(ledger, s.sample_id) == "taken_down"
    show = run_cli("takedown", "show", "1", home=tmp_path)
    assert show.returncode == 0 and "status:     verified" in show.stdout and "mail-77" in show.stdout
    assert "0 version(s) left" in show.stdout and s.url_id in show.stdout
    listed = run_cli("takedown", "list", home=tmp_path)
    assert listed.returncode == 0 and "verified" in listed.stdout and "Rights Co" in listed.stdout
    ledger.dispose()


def test_queued_requests_then_process_all(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    store = LocalObjectStore(tmp_path / "objects")
    a = add_stored(ledger, store, "http://a.example.com/1.jpg", photo(4))
    b = add_stored(ledger, store, "http://b.example.com/2.jpg", photo(5), caption="第二张")
    csv_file = tmp_path / "requests.csv"
    csv_file.write_text(f"kind,value,requester\nurl,{a.url},R1\nsha256,{b.sha256},R2\n", encoding="utf-8")
    res = run_cli("takedown", "import", str(csv_file), home=tmp_path)
    assert res.returncode == 0 and "2 requests filed" in res.stdout
    assert store.exists(a.key) and store.exists(b.key)  # filed, not processed yet
    res = run_cli("takedown", "process", home=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("status: verified") == 2 and not store.exists(a.key) and not store.exists(b.key)
    assert run_cli("takedown", "process", home=tmp_path).stdout.strip() == "no open takedown requests"
    ledger.dispose()


def test_mistakes_are_one_error_line(tmp_path: Path) -> None:
    _ledger(tmp_path).dispose()
    assert_one_error_line(run_cli("takedown", "request", "--requester", "R", home=tmp_path), "exactly one of")
    assert_one_error_line(run_cli("takedown", "request", "--sha256", "xyz", "--requester", "R", home=tmp_path), "64 hex")
    assert_one_error_line(run_cli("takedown", "request", "--image", str(tmp_path / "nope.jpg"), "--requester", "R", home=tmp_path),
                          "cannot read the image file")
    assert_one_error_line(run_cli("takedown", "show", "42", home=tmp_path), "no takedown request 42")
    bad = tmp_path / "bad.csv"
    bad.write_text("kind,value,requester\nurl,ftp://x/1.jpg,R\n", encoding="utf-8")
    res = run_cli("takedown", "import", str(bad), home=tmp_path)
    assert res.returncode == 2 and "bad.csv:2:" in res.stdout and res.stderr.startswith("error: ")
