"""What a release holds, as its users train on it: enough shards for open_clip_train's defaults, the
caption choice of the webdataset `.txt`, sources without the builder's folders, TaiSu parts named by
TaiSu's own ids, and older releases (recipes without these keys) that still verify and patch."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from taisu_etl.db.engine import make_engine
from taisu_etl.db.ledger import Ledger
from taisu_etl.db.migrate import upgrade
from taisu_etl.db.schema import release, release_version, sample
from taisu_etl.release import ReleaseOptions, create_release, verify_release
from taisu_etl.release.build import published_source
from taisu_etl.release.captions import CaptionWriters, member_key
from taisu_etl.release.errors import ReleaseError
from taisu_etl.release.manifest import FileEntry, dumps, file_entries, sha256sums, with_files
from taisu_etl.release.patch import patch_release
from taisu_etl.sources.taisu import iter_caption_file
from taisu_etl.stages.ingest import ingest_taisu
from taisu_etl.storage import LocalObjectStore, ObjectStore
from taisu_etl.urls import taisu_identity, taisu_slice_id, url_id
from taisu_etl.vocab import Stage, State
from tests.sources.builders import jpeg as source_jpeg
from tests.sources.builders import write_tar

from .support import download_release, read_files, seed, take_down

DATA = ("taisu/", "webdataset/", "parquet/", "ids.txt")


def _manifest(store: ObjectStore, name: str) -> dict[str, Any]:
    return json.loads(store.get(f"releases/{name}/manifest.json"))


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _wds_samples(root: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes}, grouped at the first dot as webdataset and open_clip do."""
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted((root / "webdataset").glob("*.tar")):
        for name, data in _members(shard).items():
            key, _, ext = name.partition(".")
            out.setdefault(key, {})[ext] = data
    return out


def _fresh_ledger(path: Path) -> Ledger:
    url = f"sqlite:///{path}"
    upgrade(make_engine(url))
    return Ledger.open(url, shards=4, recipe_version="test")


# ------------------------------------------------------------------ TaiSu's ids


def test_taisu_slice_id_follows_taisus_tool_for_http_and_https() -> None:
    # TaiSu's download tool: name = pic_url[8:48] without '/', '=', '.', ',' (index 8 whatever the scheme).
    tail = "img1.baidu.com/it/u=1848496827,1042591513&fm=253&fmt=auto&app=138"
    assert taisu_slice_id("https://" + tail) == "img1baiducomitu1848496827104259151"
    assert taisu_slice_id("http://" + tail) == "mg1baiducomitu18484968271042591513"
    # The raw string as given: no normalisation (case, default port) before slicing.
    assert taisu_slice_id("HTTPS://" + tail) == taisu_slice_id("https://" + tail)
    assert taisu_slice_id("https://a.cn/x.jpg") == "acnxjpg"


def test_member_key_is_taisus_id_only_for_samples_ingested_from_taisu() -> None:
    taisu = "img1baiducomitu1848496827&fm253"
    assert member_key(url_id(taisu_identity(taisu)), taisu) == taisu
    # A URL sample's taisu_id is only its URL's slice: it is named by its url_id.
    uid = url_id("https://img1.baidu.com/it/u=1.jpg")
    assert member_key(uid, taisu_slice_id("https://img1.baidu.com/it/u=1.jpg")) == uid
    assert member_key(uid, None) == uid
    # Ids that cannot be a safe, unique member name fall back to the url_id.
    for bad in ("a.b", "a/b", "a b", "a*****b", "x" * 65, "0123456789abcdef0123456789abcdef"):
        assert member_key(url_id(taisu_identity(bad)), bad) == url_id(taisu_identity(bad))


def _ingest_taisu_samples(ledger: Ledger, store: ObjectStore, tmp: Path) -> dict[str, str]:
    """Three images ingested from TaiSu-format archives, made eligible; returns TaiSu id -> url_id."""
    ids = {"img1baiducomitu1848496827&fm253": ("北京故宫的红墙", "一座红色的宫殿"),
           "mg1baiducomitu2": ("西湖的断桥", None),
           "x3": ("长城的烽火台", "山上的城墙")}
    write_tar(tmp / "baidu_image0.tar", [(f"{k}.jpg", source_jpeg(i + 200, 32)) for i, k in enumerate(ids)], mode="w")
    (tmp / "captions.txt").write_text("".join(f"{k}*****{w}*****{g or 'None'}\n" for k, (w, g) in ids.items()), encoding="utf-8")
    ingest_taisu(ledger, store, [tmp / "baidu_image0.tar"], [tmp / "captions.txt"])
    uids = {k: url_id(taisu_identity(k)) for k in ids}
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(sample.c.id, sample.c.url_id).where(sample.c.url_id.in_(list(uids.values())))).all()
    sids = [r.id for r in rows]
    assert len(sids) == 3
    ledger.move(sids, from_state=State.INGESTED, to_state=State.IMAGE_OK, stage=Stage.IMAGE, reason="ok",
                updates={"width": [32] * 3, "height": [32] * 3, "phash": [f"{900 + i:016x}" for i in range(3)]})
    ledger.move(sids, from_state=State.IMAGE_OK, to_state=State.ACCEPTED, stage=Stage.SCORE, reason="ok",
                updates={"score": [0.4] * 3, "score_model": ["tiny-clip@0a1b2c3d"] * 3})
    return uids


def test_taisu_parts_are_named_by_taisus_ids_with_the_url_id_beside(sqlite_ledger: Ledger, local_store: LocalObjectStore,
                                                                     tmp_path: Path) -> None:
    seeded = seed(sqlite_ledger, local_store)
    taisu = _ingest_taisu_samples(sqlite_ledger, local_store, tmp_path)
    create_release(sqlite_ledger, local_store, "t", ReleaseOptions(shard_size=8, parent=None))
    root = download_release(local_store, "t", tmp_path / "t")
    assert _manifest(local_store, "t")["recipe"]["taisu_ids"] is True

    names = [n[:-4] for part in sorted((root / "taisu" / "images").glob("*.tar")) for n in _members(part)]
    by_key = {v: k for k, v in taisu.items()}
    ids = (root / "ids.txt").read_text().split()
    assert ids == sorted(seeded.eligible | set(taisu.values()))
    # Same order as ids.txt (url_id order); TaiSu's own id where the sample came from TaiSu, else the url_id.
    assert names == [by_key.get(uid, uid) for uid in ids]
    captions = json.loads((root / "taisu" / "captions.json").read_text(encoding="utf-8"))
    assert list(captions) == names
    assert {k: v["url_id"] for k, v in captions.items()} == {by_key.get(uid, uid): uid for uid in ids}
    assert captions["x3"]["w"] == "长城的烽火台" and captions["x3"]["g"] == "山上的城墙" and captions["mg1baiducomitu2"]["g"] is None
    for form in ("captions.json", "captions.jsonl", "captions.txt"):
        assert [r.id for r in iter_caption_file(root / "taisu" / form)] == names
    # The webdataset and Parquet stay keyed by url_id, TaiSu's id in their metadata.
    wds = _wds_samples(root)
    assert sorted(wds) == ids and json.loads(wds[taisu["x3"]]["json"])["taisu_id"] == "x3"
    assert verify_release(local_store, "t", ledger=sqlite_ledger).ok

    # Ingested again from the release, a TaiSu sample gets the same url_id: its id is stable.
    again = _fresh_ledger(tmp_path / "again.db")
    try:
        store = LocalObjectStore(tmp_path / "again-objects")
        ingest_taisu(again, store, sorted((root / "taisu" / "images").glob("*.tar")), [root / "taisu" / "captions.jsonl"])
        with again.engine.connect() as conn:
            back = dict(conn.execute(sa.select(sample.c.taisu_id, sample.c.url_id)).all())
    finally:
        again.dispose()
    assert {k: back[k] for k in taisu} == taisu

    # A takedown of a TaiSu sample patches its TaiSu part, by TaiSu's id, and the caption files.
    victim = taisu["x3"]
    patch_release(sqlite_ledger, local_store, "t", [take_down(sqlite_ledger, victim)])
    after = download_release(local_store, "t", tmp_path / "t2")
    names2 = [n[:-4] for part in sorted((after / "taisu" / "images").glob("*.tar")) for n in _members(part)]
    assert names2 == [n for n in names if n != "x3"]
    captions2 = json.loads((after / "taisu" / "captions.json").read_text(encoding="utf-8"))
    assert list(captions2) == names2 and "x3" not in (after / "taisu" / "captions.txt").read_text(encoding="utf-8")
    assert victim not in _wds_samples(after)
    assert verify_release(local_store, "t", ledger=sqlite_ledger).ok


# ------------------------------------------------------------------ webdataset captions


@pytest.mark.parametrize("choice", ["w", "g", "both"])
def test_webdataset_caption_choice(sqlite_ledger: Ledger, local_store: LocalObjectStore, tmp_path: Path, choice: str) -> None:
    seeded = seed(sqlite_ledger, local_store)
    create_release(sqlite_ledger, local_store, "c", ReleaseOptions(shard_size=8, formats=("webdataset",), wds_captions=choice))
    assert _manifest(local_store, "c")["recipe"]["wds_captions"] == choice
    samples = _wds_samples(download_release(local_store, "c", tmp_path / "c"))
    assert set(samples) == seeded.eligible
    generated = 0
    for key, parts in samples.items():
        meta = json.loads(parts["json"])
        w, g = meta["caption"], meta["gen_caption"]
        assert (g is not None) == (key in seeded.captioned_with_g)
        txt = parts["txt"].decode()
        if choice == "w":
            assert txt == w and set(parts) == {"jpg", "json", "txt"}
        elif choice == "g":
            assert txt == (g if g is not None else w) and set(parts) == {"jpg", "json", "txt"}
        else:
            assert txt == w and ("gen.txt" in parts) == (g is not None)
            assert g is None or parts["gen.txt"].decode() == g
            generated += "gen.txt" in parts
    assert generated == (len(seeded.captioned_with_g) if choice == "both" else 0)
    assert verify_release(local_store, "c", ledger=sqlite_ledger).ok


def test_webdataset_gen_txt_read_by_webdataset(sqlite_ledger: Ledger, local_store: LocalObjectStore, tmp_path: Path) -> None:
    import webdataset as wds

    seeded = seed(sqlite_ledger, local_store)
    create_release(sqlite_ledger, local_store, "r", ReleaseOptions(shard_size=8, formats=("webdataset",)))
    root = download_release(local_store, "r", tmp_path / "r")
    seen = {}
    for s in wds.WebDataset(sorted(str(p) for p in (root / "webdataset").glob("*.tar")), shardshuffle=False).decode():
        assert s["txt"] == s["json"]["caption"]
        seen[s["__key__"]] = s.get("gen.txt")
        assert seen[s["__key__"]] == s["json"]["gen_caption"]
    assert set(seen) == seeded.eligible and {k for k, g in seen.items() if g is not None} == seeded.captioned_with_g


def test_verify_flags_a_gen_txt_the_recipe_does_not_have(sqlite_ledger: Ledger, local_store: LocalObjectStore, tmp_path: Path) -> None:
    seed(sqlite_ledger, local_store)
    create_release(sqlite_ledger, local_store, "v", ReleaseOptions(shard_size=8, formats=("webdataset",), wds_captions="w"))
    key = "releases/v/webdataset/00000.tar"
    members = _members_bytes(local_store.get(key))
    first = next(iter(members)).split(".", 1)[0]
    members[f"{first}.gen.txt"] = "多出来的说明".encode()
    del members[f"{first}.txt"]
    local_store.put(key, _tar_bytes(members))
    problems = [str(p) for p in verify_release(local_store, "v").problems]
    assert any("lack a .jpg, .json or .txt" in p for p in problems), problems
    assert any(".gen.txt members, but the recipe's wds_captions is 'w'" in p for p in problems), problems


def _members_bytes(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_patch_rewrites_gen_txt_as_a_fresh_build_would(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    seeded = seed(sqlite_ledger, local_store)
    options = ReleaseOptions(shard_size=8, parent=None)  # 31 samples: 8, 8, 8, 7
    create_release(sqlite_ledger, local_store, "p", options)
    ids = local_store.get("releases/p/ids.txt").decode().split()
    # In the last shard, so that a fresh build without it shards everything the same way.
    victim = [u for u in ids[24:] if u in seeded.captioned_with_g][-1]
    assert f"{victim}.gen.txt" in _members_bytes(local_store.get("releases/p/webdataset/00003.tar"))
    patch_release(sqlite_ledger, local_store, "p", [take_down(sqlite_ledger, victim)])
    assert not any(n.startswith(victim) for n in _members_bytes(local_store.get("releases/p/webdataset/00003.tar")))
    assert verify_release(local_store, "p", ledger=sqlite_ledger).ok
    create_release(sqlite_ledger, local_store, "fresh", options)
    for path in sorted(file_entries(_manifest(local_store, "fresh"))):
        if path.startswith(DATA) or path.startswith("taisu/captions"):
            assert local_store.get(f"releases/p/{path}") == local_store.get(f"releases/fresh/{path}"), path


# ------------------------------------------------------------------ published source


def test_published_source_never_shows_the_builders_folders() -> None:
    assert published_source("/home/alice/inputs/wukong/part-0.csv", "/home/alice/inputs") == "wukong/part-0.csv"
    assert published_source("/home/alice/inputs/wukong/part-0.csv", "/home/alice/inputs/") == "wukong/part-0.csv"
    assert published_source("/home/alice/inputs/wukong/part-0.csv", None) == "part-0.csv"
    assert published_source("/mnt/other/part-0.csv", "/home/alice/inputs") == "part-0.csv"
    assert published_source("inputs/wukong/part-0.csv", "inputs") == "wukong/part-0.csv"
    assert published_source("/in/../etc/part-0.csv", "/in") == "part-0.csv"  # never a path that climbs out
    assert published_source("wukong", None) == "wukong"


@pytest.mark.parametrize("root", [None, "/home/builder/data"])
def test_source_in_json_and_parquet_is_relative(sqlite_ledger: Ledger, local_store: LocalObjectStore, tmp_path: Path,
                                                root: str | None) -> None:
    seeded = seed(sqlite_ledger, local_store)
    with sqlite_ledger.engine.begin() as conn:
        conn.execute(sa.update(sample).values(source="/home/builder/data/" + sample.c.source))
    create_release(sqlite_ledger, local_store, "s", ReleaseOptions(shard_size=8, source_root=root))
    out = download_release(local_store, "s", tmp_path / "s")
    recipe = _manifest(local_store, "s")["recipe"]
    assert recipe["published_source"] == ("relative" if root else "name") and "/home/builder" not in json.dumps(recipe)
    for key, parts in _wds_samples(out).items():
        truth = seeded.by_id[key]["source"]  # e.g. wukong/wukong_100m_0.csv
        assert json.loads(parts["json"])["source"] == (truth if root else Path(truth).name)
    rows = pq.read_table(out / "parquet").to_pylist()
    assert {r["source"] for r in rows} == ({"wukong/wukong_100m_0.csv", "laion/laion2b_zh.parquet"} if root
                                           else {"wukong_100m_0.csv", "laion2b_zh.parquet"})
    assert not any(b"/home/builder" in data for data in read_files(out).values())
    with sqlite_ledger.engine.connect() as conn:  # the ledger keeps the full path (provenance)
        assert all(s.startswith("/home/builder/data/") for s in conn.execute(sa.select(sample.c.source)).scalars())


# ------------------------------------------------------------------ shards for the trainer


def _open_clip_default_workers() -> int:
    import open_clip_train.params

    return int(open_clip_train.params.parse_args(["--train-data", "x"]).workers)


def test_a_small_release_has_enough_shards_for_open_clip_defaults(sqlite_ledger: Ledger, local_store: LocalObjectStore,
                                                                  tmp_path: Path) -> None:
    seeded = seed(sqlite_ledger, local_store)  # 31 eligible samples
    create_release(sqlite_ledger, local_store, "small", ReleaseOptions(parent=None))  # shard_size 10,000
    manifest = _manifest(local_store, "small")
    assert manifest["recipe"]["min_shards"] == 4
    assert [s["samples"] for s in manifest["shards"]] == [8, 8, 8, 7]
    sizes = json.loads(local_store.get("releases/small/webdataset/sizes.json"))
    assert sizes == {"00000.tar": 8, "00001.tar": 8, "00002.tar": 8, "00003.tar": 7}
    # open_clip_train's assertion for a webdataset it does not resample, world size 1.
    assert len(sizes) >= _open_clip_default_workers() * 1
    out = download_release(local_store, "small", tmp_path / "small")
    assert set(_wds_samples(out)) == seeded.eligible
    assert verify_release(local_store, "small", ledger=sqlite_ledger).ok

    def shards(name: str, **options: Any) -> list[int]:
        create_release(sqlite_ledger, local_store, name, ReleaseOptions(parent=None, formats=("webdataset",), **options))
        return [s["samples"] for s in _manifest(local_store, name)["shards"]]

    assert shards("one", min_shards=1) == [31]  # the old rule
    assert shards("big", shard_size=7) == [7, 7, 7, 7, 3]  # enough shards already: full shards as before
    assert shards("edge", shard_size=10) == [10, 10, 10, 1]
    assert shards("few", min_shards=40) == [1] * 31  # fewer samples than shards asked for: one each
    assert shards("six", min_shards=6) == [6, 5, 5, 5, 5, 5]


def test_min_shards_with_a_missing_image_and_reproducible_bytes(sqlite_ledger: Ledger, tmp_path: Path) -> None:
    store_a, store_b = LocalObjectStore(tmp_path / "a"), LocalObjectStore(tmp_path / "b")
    seeded = seed(sqlite_ledger, store_a)
    other = _fresh_ledger(tmp_path / "other.db")
    try:
        seed(other, store_b)
        # One image lost from both stores: the shards still number min_shards, the same on both.
        lost = sorted(seeded.eligible)[3]
        with sqlite_ledger.engine.connect() as conn:
            key = conn.execute(sa.select(sample.c.object_key).where(sample.c.url_id == lost)).scalar_one()
        os.remove(tmp_path / "a" / key)
        os.remove(tmp_path / "b" / key)
        options = ReleaseOptions(parent=None, tgz=True)
        create_release(sqlite_ledger, store_a, "m", options)
        create_release(other, store_b, "m", options)
    finally:
        other.dispose()
    a = read_files(download_release(store_a, "m", tmp_path / "out-a"))
    b = read_files(download_release(store_b, "m", tmp_path / "out-b"))
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []
    manifest = json.loads(a["manifest.json"])
    assert [s["samples"] for s in manifest["shards"]] == [8, 8, 7, 7] and manifest["counts"]["skipped"]["missing_image"] == 1


def test_options_refuse_bad_values() -> None:
    with pytest.raises(ReleaseError, match="minimum shard count"):
        ReleaseOptions(min_shards=0)
    with pytest.raises(ReleaseError, match="webdataset caption choice"):
        ReleaseOptions(wds_captions="gen")


# ------------------------------------------------------------------ older releases


def _age(ledger: Ledger, store: ObjectStore, name: str) -> None:
    """Turn a release into what the code before recipe keys min_shards/wds_captions/taisu_ids wrote:
    caption files without url_id, a recipe without the keys; files, SHA256SUMS, manifest and the
    ledger's record of the manifest made consistent again."""
    manifest = _manifest(store, name)
    for key in ("min_shards", "wds_captions", "taisu_ids", "published_source"):
        del manifest["recipe"][key]
    entries = file_entries(manifest)
    tmp = Path(tempfile.mkdtemp(prefix="taisu-age-"))
    writers = CaptionWriters(tmp, with_url_id=False)
    for line in store.get(f"releases/{name}/taisu/captions.jsonl").decode().splitlines():
        item = json.loads(line)
        writers.add(item["id"], item["w"], item["g"])
    for path, (local, digest) in writers.close().items():
        store.put(f"releases/{name}/{path}", local.read_bytes())
        entries[path] = FileEntry(path, digest.sha256, digest.size)
    files = [e for p, e in entries.items() if p != "SHA256SUMS"]
    sums = sha256sums(files)
    store.put(f"releases/{name}/SHA256SUMS", sums)
    files.append(FileEntry("SHA256SUMS", hashlib.sha256(sums).hexdigest(), len(sums)))
    body = {k: v for k, v in manifest.items() if k != "files"}
    data = dumps(with_files(body, files))
    store.put(f"releases/{name}/manifest.json", data)
    with ledger.engine.begin() as conn:
        rid = conn.execute(sa.select(release.c.id).where(release.c.name == name)).scalar_one()
        conn.execute(sa.update(release_version).where(release_version.c.release_id == rid)
                     .values(manifest_sha256=hashlib.sha256(data).hexdigest()))


def test_an_older_release_still_verifies_and_patches(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    seeded = seed(sqlite_ledger, local_store)
    create_release(sqlite_ledger, local_store, "old", ReleaseOptions(shard_size=8, parent=None, min_shards=1, wds_captions="w"))
    _age(sqlite_ledger, local_store, "old")
    assert "url_id" not in local_store.get("releases/old/taisu/captions.jsonl").decode()
    assert verify_release(local_store, "old", ledger=sqlite_ledger).ok
    victim = sorted(seeded.eligible)[5]
    patch_release(sqlite_ledger, local_store, "old", [take_down(sqlite_ledger, victim)])
    report = verify_release(local_store, "old", ledger=sqlite_ledger)
    assert report.ok and report.version == 2, report.summary()
    jsonl = local_store.get("releases/old/taisu/captions.jsonl").decode()
    assert victim not in jsonl and "url_id" not in jsonl  # patched in the release's own form
    assert "min_shards" not in _manifest(local_store, "old")["recipe"]


# ------------------------------------------------------------------ CLI


def test_cli_create_takes_the_new_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from taisu_etl.config import load_settings
    from taisu_etl.errors import TaisuError
    from taisu_etl.release.cli import release_app
    from taisu_etl.services import open_ledger, open_store

    for k in [k for k in os.environ if k.startswith("TAISU_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("TAISU_HOME", str(tmp_path / "home"))
    settings = load_settings()
    upgrade(make_engine(settings.ledger_url))
    led = open_ledger(settings)
    try:
        store = open_store(settings)
        seed(led, store, 30)
        with led.engine.begin() as conn:
            conn.execute(sa.update(sample).values(source="/srv/taisu/in/" + sample.c.source))
        runner = CliRunner()
        res = runner.invoke(release_app, ["create", "c1", "--wds-captions", "g", "--min-shards", "3", "--source-root", "/srv/taisu/in",
                                          "--formats", "webdataset,parquet"])
        assert res.exit_code == 0, res.output
        manifest = _manifest(store, "c1")
        assert manifest["recipe"]["wds_captions"] == "g" and manifest["recipe"]["min_shards"] == 3 and manifest["counts"]["shards"] == 3
        assert {r["source"] for r in pq.read_table(io.BytesIO(store.get("releases/c1/parquet/00000.parquet"))).to_pylist()} <= {
            "wukong/wukong_100m_0.csv", "laion/laion2b_zh.parquet"}
        res = runner.invoke(release_app, ["create", "c2", "--wds-captions", "gen"])
        assert isinstance(res.exception, TaisuError) and "webdataset caption choice" in str(res.exception)
    finally:
        led.dispose()
