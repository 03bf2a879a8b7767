"""URL lists and manifests, the command line, and the load generator."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from taisu_etl.sources import SourceRow, read_source
from taisu_etl.synthweb import HOSTILE_CASES, SyntheticWeb, make_pairs, read_manifest
from taisu_etl.synthweb.assets import SAMPLE_CAPTION
from taisu_etl.synthweb.loadtest import fetch_all
from tests.synthweb.support import get

REPO = Path(__file__).resolve().parents[2]


def test_csv_list_and_manifest(web: SyntheticWeb, pairs: list, tmp_path: Path) -> None:
    written = web.write_url_list(tmp_path / "wukong_synth.csv", hostile=["404", "noai", "bomb.png"])
    assert written.urls == tmp_path / "wukong_synth.csv"
    assert written.manifest == tmp_path / "wukong_synth.manifest.json"
    with written.urls.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["url", "caption"]
    assert len(rows) == 1 + len(pairs) + 3
    assert rows[1] == [web.url_for(pairs[0].id), pairs[0].caption]
    assert rows[-3:] == [[web.hostile_url(n), SAMPLE_CAPTION] for n in ("404", "noai", "bomb.png")]

    manifest = read_manifest(written.manifest)
    assert manifest["base_url"] == web.base_url and manifest["count"] == len(pairs) + 3
    assert manifest["mismatched"] == sum(not p.matched for p in pairs) == 6
    assert manifest["matched"] == len(pairs) - 6
    assert [item["url"] for item in manifest["items"]] == [r[0] for r in rows[1:]]
    for pair in pairs:
        item = manifest["by_url"][web.url_for(pair.id)]
        assert item["kind"] == "image" and item["id"] == pair.id and item["matched"] is pair.matched
        assert item["scene"] == pair.scene.attributes()
        assert item["caption_scene"] == pair.caption_scene.attributes()
    noai = manifest["by_url"][web.hostile_url("noai")]
    assert (noai["kind"], noai["case"], noai["expect"]) == ("hostile", "noai", "noai_header")

    # and every listed URL answers as the manifest says
    for item in manifest["items"][:3]:
        assert get(web.port, item["url"][len(web.base_url):]).status == 200
    assert get(web.port, manifest["items"][-3]["url"][len(web.base_url):]).status == 404


def test_the_ingest_reader_takes_the_list_as_wukong_csv(web: SyntheticWeb, pairs: list, tmp_path: Path) -> None:
    written = web.write_url_list(tmp_path / "urls.csv", pairs[:5])
    records = list(read_source(written.urls))
    assert all(isinstance(r, SourceRow) for r in records)
    assert [(r.url, r.caption) for r in records] == [(web.url_for(p.id), p.caption) for p in pairs[:5]]


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_other_list_formats(web: SyntheticWeb, pairs: list, tmp_path: Path, fmt: str) -> None:
    written = web.write_url_list(tmp_path / f"urls.{fmt}", pairs[:4], fmt=fmt)
    records = list(read_source(written.urls))
    assert [(r.url, r.caption) for r in records] == [(web.url_for(p.id), p.caption) for p in pairs[:4]]
    assert json.loads(written.manifest.read_text(encoding="utf-8"))["format"] == fmt


def test_list_arguments_are_checked(web: SyntheticWeb, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        web.write_url_list(tmp_path / "x.parquet", fmt="parquet")
    with pytest.raises(KeyError):
        web.write_url_list(tmp_path / "x.csv", hostile=["nope"])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_load_generator_fetches_everything(web: SyntheticWeb, pairs: list) -> None:
    web.reset_hits()
    urls = [web.url_for(p.id) for p in pairs] * 3
    result = asyncio.run(fetch_all(urls, concurrency=8))
    assert (result.requests, result.failures) == (90, 0)
    assert result.bytes == 3 * sum(len(p.jpeg()) for p in pairs)
    assert web.total_hits() == 90


def test_command_line_writes_the_list_and_serves_until_terminated(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "taisu_etl.synthweb", "--pairs", "6", "--seed", "2", "--out", str(tmp_path), "--hostile"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        lines = []
        while not (lines and lines[-1].startswith("Ctrl-C")):
            line = proc.stdout.readline()  # the server prints four lines, then waits
            assert line, f"exited early: {proc.wait(10)} {proc.stderr.read()}"
            lines.append(line.strip())
        base_url = lines[0].split(" at ")[1].split(" ")[0]
        assert base_url.startswith("http://127.0.0.1:")
        port = int(base_url.rsplit(":", 1)[1])
        manifest = read_manifest(tmp_path / "urls.manifest.json")
        assert manifest["count"] == 6 + len(HOSTILE_CASES)
        first = make_pairs(6, seed=2)[0]
        assert get(port, f"/img/{first.id}.jpg").body == first.jpeg()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
