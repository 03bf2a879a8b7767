"""Selection options, parents and removal lists, diff, crash safety, verify, the dataset card, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from typer.testing import CliRunner

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import blocklist, release, sample
from taisu_etl.release import (
    ReleaseError,
    ReleaseExistsError,
    ReleaseNotFoundError,
    ReleaseOptions,
    create_release,
    diff_releases,
    verify_release,
)
from taisu_etl.release.tarwriter import TarWriter
from taisu_etl.storage import LocalObjectStore, ObjectStore
from taisu_etl.vocab import Stage, State

from .support import Seeded, download_release, read_files, seed


def _ids(store: ObjectStore, name: str) -> list[str]:
    return store.get(f"releases/{name}/ids.txt").decode().split()


def _sample_id(ledger: Ledger, url_id: str) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sample.c.id).where(sample.c.url_id == url_id)).scalar_one()


def _take_down(ledger: Ledger, url_id: str) -> None:
    sid = _sample_id(ledger, url_id)
    for state in (State.ACCEPTED, State.CAPTIONED):
        ledger.move([sid], from_state=state, to_state=State.TAKEN_DOWN, stage=Stage.TAKEDOWN, reason="takedown")


# ------------------------------------------------------------------ selection options

@pytest.fixture
def seeded_sqlite(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> Seeded:
    return seed(sqlite_ledger, local_store)


def test_selection_options(sqlite_ledger: Ledger, local_store: LocalObjectStore, seeded_sqlite: Seeded) -> None:
    led, store = sqlite_ledger, local_store
    create_release(led, store, "hi", ReleaseOptions(min_score=0.35, parent=None))
    hi = set(_ids(store, "hi"))
    with led.engine.connect() as conn:
        scores = dict(conn.execute(sa.select(sample.c.url_id, sample.c.score)).all())
    assert hi and hi == {u for u in seeded_sqlite.eligible if scores[u] >= 0.35}

    create_release(led, store, "laion", ReleaseOptions(sources=("laion/*.parquet",), parent=None))
    laion = set(_ids(store, "laion"))
    assert laion == {u for u in seeded_sqlite.eligible if seeded_sqlite.by_id[u]["source"].startswith("laion/")}
    # Globs are exact and case-sensitive on every database (SQLite's LIKE is not).
    create_release(led, store, "wk", ReleaseOptions(sources=("wukong/wukong_100m_[0-9].csv", "LAION/*"), parent=None))
    assert set(_ids(store, "wk")) == seeded_sqlite.eligible - laion

    create_release(led, store, "nog", ReleaseOptions(generated_captions=False, parent=None, formats=("taisu", "parquet")))
    captions = json.loads(store.get("releases/nog/taisu/captions.json"))
    assert set(captions) == seeded_sqlite.eligible and all(v["g"] is None for v in captions.values())
    assert all(line.endswith("*****None") for line in store.get("releases/nog/taisu/captions.txt").decode().splitlines())
    manifest = json.loads(store.get("releases/nog/manifest.json"))
    assert manifest["counts"]["with_generated_caption"] == 0 and manifest["models"]["caption"] == {}
    assert manifest["recipe"]["generated_captions"] is False

    with pytest.raises(ReleaseError, match="no sample is eligible"):
        create_release(led, store, "none", ReleaseOptions(min_score=0.99, parent=None))
    with pytest.raises(ReleaseError, match="unknown release format"):
        ReleaseOptions(formats=("zip",))
    with pytest.raises(ReleaseError, match="bad release name"):
        create_release(led, store, "../evil", ReleaseOptions())


# ------------------------------------------------------------------ parents, removal list, diff, overwrite

def test_parent_removal_list_and_diff(ledger: Ledger, local_store: LocalObjectStore) -> None:
    first = seed(ledger, local_store, 30)
    r1 = create_release(ledger, local_store, "r1", ReleaseOptions(shard_size=5))
    assert r1.parent is None and r1.added == r1.samples
    gone = sorted(first.eligible)[:2]
    for uid in gone:
        _take_down(ledger, uid)
    blocked = sorted(first.eligible)[2]
    with ledger.engine.begin() as conn:
        sha = conn.execute(sa.select(sample.c.sha256).where(sample.c.url_id == blocked)).scalar_one()
        conn.execute(sa.insert(blocklist).values(kind="sha256", value=sha))
    second = seed(ledger, local_store, 20, start=1000)
    r2 = create_release(ledger, local_store, "r2", ReleaseOptions(shard_size=5))  # parent: the latest published, r1
    assert r2.parent == "r1"
    removed = local_store.get("releases/r2/removed.txt").decode().split()
    assert removed == sorted([*gone, blocked])
    assert r2.removed == 3 and r2.added == len(second.eligible)
    assert set(_ids(local_store, "r2")) == (first.eligible - set(removed)) | second.eligible
    d = diff_releases(local_store, "r1", "r2")
    assert (d.added, d.removed) == (r2.added, r2.removed) and d.removed_examples == removed
    assert set(d.added_examples) <= second.eligible
    assert diff_releases(local_store, "r2", "r1").added == 3
    with ledger.engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(sa.select(release))}
    assert rows["r2"].parent_id == rows["r1"].id and rows["r2"].recipe["parent"] == "r1"
    manifest = json.loads(local_store.get("releases/r2/manifest.json"))
    assert manifest["counts"]["removed"] == 3 and manifest["recipe"]["parent"] == "r1"
    with pytest.raises(ReleaseNotFoundError):
        diff_releases(local_store, "r1", "nope")
    # Published releases are immutable.
    with pytest.raises(ReleaseExistsError, match="already published"):
        create_release(ledger, local_store, "r2", ReleaseOptions())
    # And r1 still verifies, though two of its samples are taken down now: verify says which.
    report = verify_release(local_store, "r1", ledger=ledger)
    assert not report.ok and {p.what.split()[1] for p in report.problems} == {*gone, blocked}
    assert verify_release(local_store, "r1").ok  # the files themselves are whole


def test_takedown_during_the_build_fails_the_release(sqlite_ledger: Ledger, local_store: LocalObjectStore, seeded_sqlite: Seeded,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import taisu_etl.release.build as build

    victim = sorted(seeded_sqlite.eligible)[0]
    real = build._finish_shard

    def finish_and_take_down(*args, **kwargs):  # type: ignore[no-untyped-def]
        real(*args, **kwargs)
        _take_down(sqlite_ledger, victim)

    monkeypatch.setattr(build, "_finish_shard", finish_and_take_down)
    with pytest.raises(ReleaseError, match="taken down or blocklisted while it was being built"):
        create_release(sqlite_ledger, local_store, "race", ReleaseOptions(shard_size=100))
    assert not local_store.exists("releases/race/manifest.json")
    monkeypatch.setattr(build, "_finish_shard", real)
    create_release(sqlite_ledger, local_store, "race", ReleaseOptions(shard_size=100))
    assert victim not in _ids(local_store, "race")


# ------------------------------------------------------------------ crash safety

@pytest.mark.parametrize("store_kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_crash_mid_write_leaves_no_release_and_a_rerun_completes(store_kind: str, sqlite_ledger: Ledger, tmp_path: Path,
                                                                  request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    store: ObjectStore = LocalObjectStore(tmp_path / "o") if store_kind == "local" else request.getfixturevalue("make_s3_store")()
    seed(sqlite_ledger, store, 30)
    create_release(sqlite_ledger, store, "base", ReleaseOptions(shard_size=5))
    before = read_files(download_release(store, "base", tmp_path / "before"))
    seed(sqlite_ledger, store, 10, start=500)

    real_put_file = type(store).put_file
    calls = {"n": 0}

    def flaky(self, key, path, content_type=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError("disk on fire")
        return real_put_file(self, key, path, content_type)

    monkeypatch.setattr(type(store), "put_file", flaky)
    with pytest.raises(OSError, match="disk on fire"):
        create_release(sqlite_ledger, store, "next", ReleaseOptions(shard_size=5))
    monkeypatch.setattr(type(store), "put_file", real_put_file)

    assert calls["n"] > 4
    assert any(True for _ in store.list("releases/next/"))  # partial files are there...
    assert not store.exists("releases/next/manifest.json")  # ...but no release
    report = verify_release(store, "next", ledger=sqlite_ledger)
    assert not report.exists and not report.ok and "does not exist" in report.summary()
    with pytest.raises(ReleaseNotFoundError):
        diff_releases(store, "base", "next")
    with sqlite_ledger.engine.connect() as conn:
        assert conn.execute(sa.select(release.c.state).where(release.c.name == "next")).scalar_one() == "failed"
    # A stray file from the crashed run, which a re-run must not publish.
    store.put("releases/next/webdataset/99999.tar", b"junk")

    report2 = create_release(sqlite_ledger, store, "next", ReleaseOptions(shard_size=5))
    assert report2.parent == "base" and verify_release(store, "next", ledger=sqlite_ledger).ok
    assert not store.exists("releases/next/webdataset/99999.tar")
    assert read_files(download_release(store, "base", tmp_path / "after")) == before


def test_crash_after_the_manifest_is_recovered_not_rebuilt(sqlite_ledger: Ledger, local_store: LocalObjectStore, seeded_sqlite: Seeded,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import taisu_etl.release.records as records

    def die(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(records, "publish", die)
    with pytest.raises(KeyboardInterrupt):
        create_release(sqlite_ledger, local_store, "late", ReleaseOptions())
    monkeypatch.undo()
    assert verify_release(local_store, "late").ok  # the manifest committed the release
    with pytest.raises(ReleaseExistsError):
        create_release(sqlite_ledger, local_store, "late", ReleaseOptions())
    with sqlite_ledger.engine.connect() as conn:
        assert conn.execute(sa.select(release.c.state).where(release.c.name == "late")).scalar_one() == "published"


# ------------------------------------------------------------------ verify

def test_verify_names_a_corrupted_file_and_a_wrong_count(sqlite_ledger: Ledger, local_store: LocalObjectStore, seeded_sqlite: Seeded,
                                                         tmp_path: Path) -> None:
    create_release(sqlite_ledger, local_store, "v", ReleaseOptions(shard_size=10))
    assert verify_release(local_store, "v", ledger=sqlite_ledger).ok
    # Flip one byte of a TaiSu part.
    key = "releases/v/taisu/images/00001.tar"
    data = bytearray(local_store.get(key))
    data[700] ^= 0xFF
    local_store.put(key, bytes(data))
    report = verify_release(local_store, "v")
    assert [(p.file, p.what) for p in report.problems] == [("taisu/images/00001.tar", "sha256 differs from the manifest")]
    manifest = json.loads(local_store.get("releases/v/manifest.json"))
    entry = next(f for f in manifest["files"] if f["path"] == "taisu/images/00001.tar")
    assert report.problems[0].expected == entry["sha256"]

    # A shard missing a sample, re-hashed into the manifest so only the count can tell.
    wds_key = "releases/v/webdataset/00000.tar"
    short = tmp_path / "short.tar"
    w = TarWriter(short)
    import tarfile

    with tarfile.open(fileobj=__import__("io").BytesIO(local_store.get(wds_key))) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar][3:]  # type: ignore[union-attr]
    for name, blob in members:
        w.add(name, blob)
    digest = w.close()
    local_store.put_file(wds_key, short)
    local_store.put(key, bytes(data[:700]) + bytes([data[700] ^ 0xFF]) + bytes(data[701:]))  # repair the first
    for f in manifest["files"]:
        if f["path"] == "webdataset/00000.tar":
            f.update(sha256=digest.sha256, bytes=digest.size)
    local_store.put("releases/v/manifest.json", json.dumps(manifest).encode())
    report = verify_release(local_store, "v")
    problems = {(p.file, p.what): (p.expected, p.got) for p in report.problems}
    assert problems[("webdataset/00000.tar", "sample count differs from the manifest")] == (10, 9)
    assert ("SHA256SUMS", "entry for webdataset/00000.tar differs from the manifest") in problems
    assert "webdataset/00000.tar: sample count differs from the manifest: expected 10, got 9" in report.summary()

    local_store.delete_all_versions("releases/v/parquet/00002.parquet")
    assert any(p.file == "parquet/00002.parquet" and p.what == "missing from the store" for p in verify_release(local_store, "v").problems)


# ------------------------------------------------------------------ dataset card

def _table(text: str, heading: str) -> list[list[str]]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip().strip("`") for c in r] for r in rows[1:]]


def test_dataset_card_numbers_match_the_ledger(ledger: Ledger, local_store: LocalObjectStore, tmp_path: Path) -> None:
    seeded = seed(ledger, local_store)
    report = create_release(ledger, local_store, "card", ReleaseOptions(shard_size=10))
    text = local_store.get("releases/card/README.md").decode()
    funnel = {state: int(n) for state, n in _table(text, "Funnel") if state != "total"}
    assert funnel == ledger.funnel()
    assert int(dict(_table(text, "Funnel"))["total"]) == sum(ledger.funnel().values())
    reasons = [(s, None if r == "-" else r, int(n)) for s, r, n, _ in _table(text, "Rejection reasons")]
    assert reasons == ledger.reason_counts()
    facts = dict(_table(text, "This release"))
    assert int(facts["samples"]) == report.samples == len(seeded.eligible)
    assert int(facts["with a generated caption"]) == len(seeded.captioned_with_g)
    for png in ("caption_length", "score", "wordcloud"):
        data = local_store.get(f"releases/card/card/{png}.png")
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        path = tmp_path / f"{png}.png"
        path.write_bytes(data)
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] >= 600
            assert len(set(im.convert("L").getdata())) > 10  # something was drawn
        assert f"](card/{png}.png)" in text


def test_missing_cjk_font_is_a_clear_error(sqlite_ledger: Ledger, local_store: LocalObjectStore, seeded_sqlite: Seeded, tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="does not exist"):
        create_release(sqlite_ledger, local_store, "f", ReleaseOptions(), font_path=str(tmp_path / "none.ttf"))
    with pytest.raises(ReleaseError, match="no Chinese glyphs"):
        create_release(sqlite_ledger, local_store, "f", ReleaseOptions(), font_path="/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    assert not any(True for _ in local_store.list("releases/"))


# ------------------------------------------------------------------ command line

def test_cli_create_verify_diff_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from taisu_etl.config import load_settings
    from taisu_etl.db.engine import make_engine
    from taisu_etl.db.migrate import upgrade
    from taisu_etl.errors import TaisuError
    from taisu_etl.release.cli import release_app
    from taisu_etl.services import open_ledger, open_store

    for k in [k for k in __import__("os").environ if k.startswith("TAISU_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("TAISU_HOME", str(tmp_path / "home"))
    settings = load_settings()
    upgrade(make_engine(settings.ledger_url))
    led = open_ledger(settings)
    seeded = seed(led, open_store(settings), 30)
    runner = CliRunner()
    res = runner.invoke(release_app, ["create", "c1", "--shard-size", "4", "--tgz", "--formats", "taisu,parquet"])
    assert res.exit_code == 0, res.output
    assert "shard 00000: 4 samples" in res.output and f"release c1: {len(seeded.eligible)} samples" in res.output
    assert f"dataset card:    {tmp_path / 'home' / 'objects' / 'releases' / 'c1' / 'README.md'}" in res.output
    _take_down(led, sorted(seeded.eligible)[0])
    res = runner.invoke(release_app, ["create", "c2", "--source", "wukong/*", "--no-generated-captions", "--min-score", "0.25"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(release_app, ["verify", "c2"])
    assert res.exit_code == 0 and ": ok" in res.output, res.output
    res = runner.invoke(release_app, ["diff", "c1", "c2"])
    assert res.exit_code == 0 and re.search(r"c2 against c1: [\d,]+ added, [\d,]+ removed", res.output), res.output
    res = runner.invoke(release_app, ["diff", "c1", "c2", "--ids"])
    assert res.exit_code == 0 and f"-{sorted(seeded.eligible)[0]}" in res.output.split()
    res = runner.invoke(release_app, ["list"])
    assert res.exit_code == 0 and re.search(r"c1\s+published\s+1\s", res.output) and re.search(r"c2\s+published\s+1\s+\d+\s+c1", res.output)
    # User errors are TaisuErrors, which `taisu-etl` prints as one `error:` line with exit status 2.
    for args, needle in ((["create", "c1"], "already published"), (["verify", "c9"], "does not exist"),
                         (["verify", "c1"], "failed verification"), (["create", "c3", "--formats", "zip"], "unknown release format")):
        res = runner.invoke(release_app, args)
        assert isinstance(res.exception, TaisuError) and needle in str(res.exception), (args, res.output, res.exception)
    led.dispose()
