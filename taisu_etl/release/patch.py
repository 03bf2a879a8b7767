"""A published release after a takedown: patched to a new version without the samples, or withdrawn.

    patch_release(ledger, store, name, sample_ids)   -> PatchReport     version N -> N+1
    withdraw_release(ledger, store, name)            -> WithdrawReport  every object gone

A patch rewrites only the shards that hold a removed sample, in every format they have, through the
release writer's own writers (a rewritten shard holds the same bytes a build of its remaining
members would write), at the same keys, so download URLs and webdataset brace patterns keep working;
the old bytes are then deleted from a versioned bucket. Unaffected shards are not touched. A
sample's members go together (its `.gen.txt` with its `.txt`), and a TaiSu part drops it by the name
the build gave it there (TaiSu's own id, captions.member_key; the url_id in releases whose recipe
predates `taisu_ids`); the caption files keep the form their release was built with. The files
that list samples (ids.txt, the caption files, sizes.json), removed.txt, the dataset card and
SHA256SUMS are written again; the previous version's manifest and ids.txt are kept under
`history/vN/`. The new manifest is written last (the commit point), then the ledger records the
version in one transaction.

Crash safety: before it rewrites anything, a patch writes the ids it removes to
`history/v{N+1}.pending`; a re-run removes at least those (plus its own), so files a crashed run
already rewrote are never left half-way, even when the re-run comes from another takedown. A
manifest at version N+1 while the ledger says N means only the ledger part is missing: a re-run
records it. Two patches (or a patch and a withdrawal) of one release never run at once
(records.patch_lock).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import sample
from taisu_etl.release import card, layout, records
from taisu_etl.release.captions import CaptionWriters, member_key
from taisu_etl.release.diff import merge_diff
from taisu_etl.release.errors import ReleaseError, ReleaseNotFoundError
from taisu_etl.release.fonts import find_cjk_font
from taisu_etl.release.manifest import (
    FileEntry,
    dumps,
    file_entries,
    hash_file,
    read_manifest,
    read_manifest_bytes,
    sha256sums,
    version_of,
    with_files,
)
from taisu_etl.release.options import recipe_value
from taisu_etl.release.parquet import ParquetShardWriter
from taisu_etl.release.stats import ReleaseStats
from taisu_etl.release.tarwriter import Digest, HashingFile, TarWriter
from taisu_etl.release.webdataset import sizes_json
from taisu_etl.storage import ObjectStore

log = logging.getLogger(__name__)
_STAT_COLUMNS = ("caption", "caption_clean", "gen_caption", "gen_caption_model", "score", "score_model",
                 "width", "height", "bytes", "object_key")


@dataclass
class PatchReport:
    """What patch_release did; `to_version == from_version` when there was nothing to remove."""

    name: str
    release_id: int
    from_version: int
    to_version: int
    removed_ids: list[str] = field(default_factory=list)
    shards_rewritten: list[str] = field(default_factory=list)
    files_rewritten: list[tuple[str, int]] = field(default_factory=list)  # (key, old versions deleted)
    bytes_written: int = 0
    seconds: float = 0.0
    withdrawn: bool = False  # the release was withdrawn: nothing left to patch

    def summary(self) -> str:
        if self.withdrawn:
            return f"release {self.name}: withdrawn, nothing to patch"
        if self.to_version == self.from_version:
            return f"release {self.name}: version {self.from_version} holds none of the samples, nothing to patch"
        return (
            f"release {self.name}: version {self.from_version} -> {self.to_version}: {len(self.removed_ids):,} samples removed, "
            f"{len(self.shards_rewritten)} shards and {len(self.files_rewritten)} files rewritten, "
            f"{self.bytes_written / 1e6:,.1f} MB in {self.seconds:.1f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WithdrawReport:
    """What withdraw_release deleted: every key under the release's prefix, with its versions."""

    name: str
    release_id: int
    version: int
    deleted: list[tuple[str, int]] = field(default_factory=list)  # (key, versions deleted)
    already_withdrawn: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        versions = sum(n for _, n in self.deleted)
        was = "was already withdrawn; " if self.already_withdrawn else ""
        return (f"release {self.name} (version {self.version}): {was}{len(self.deleted)} objects deleted "
                f"({versions} stored versions) in {self.seconds:.1f} s")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ patch


def _ledger_row(engine: Any, name: str) -> dict[str, Any]:
    """The release's ledger row; a name the ledger does not know is one error saying where to look."""
    row = records.get(engine, name)
    if row is None:
        raise ReleaseNotFoundError(f"release {name} is not in the ledger: check the name with `taisu-etl release list`")
    return row


def patch_release(
    ledger: Ledger, store: ObjectStore, name: str, sample_ids: Iterable[int], *, takedown_id: int | None = None,
    progress: Callable[[str], None] | None = None, workdir: str | Path | None = None, font_path: str | None = None,
) -> PatchReport:
    """Remove the ledger samples `sample_ids` that are current members of published release `name`
    (others are ignored) as version N+1; see the module docstring. Idempotent: with nothing to
    remove it changes nothing; after a crash, a re-run (any ids, even none) finishes the patch.
    """
    layout.check_name(name)
    say = progress or (lambda line: log.info("%s", line))
    started = time.perf_counter()
    engine = ledger.engine
    row = _ledger_row(engine, name)
    wanted = sorted({int(s) for s in sample_ids})
    report = PatchReport(name, int(row["id"]), int(row["version"]), int(row["version"]))
    with records.patch_lock(engine, report.release_id, on_wait=lambda: say(f"release {name}: waiting for another patch of it to finish")):
        row = records.get(engine, name)
        assert row is not None  # rows are never deleted
        report.from_version = report.to_version = version = int(row["version"])
        if row["state"] == records.WITHDRAWN:
            report.withdrawn = True
            say(report.summary())
            return report
        if row["state"] != records.PUBLISHED:
            raise ReleaseError(
                f"release {name} is {row['state']}, not published: nothing to patch (a build re-checks takedowns before it publishes)"
            )
        found = read_manifest_bytes(store, name)
        if found is None:
            raise ReleaseError(
                f"release {name} is published in the ledger but has no manifest in {store.describe()}: "
                f"it is damaged; withdraw it (`taisu-etl release withdraw {name}`)"
            )
        data, manifest = found
        if version_of(manifest) == version + 1:
            say(f"release {name}: version {version + 1} was written but not recorded in the ledger; recording it")
            report.removed_ids += _record_written_version(ledger, store, name, report.release_id, version, data, manifest)
            version += 1
            report.to_version = version
        elif version_of(manifest) != version:
            raise ReleaseError(
                f"release {name}: the ledger says version {version}, its manifest says version {version_of(manifest)}: "
                f"the release is damaged (run `taisu-etl release verify {name}`)"
            )
        _drop_stale_plans(store, name, version)
        plan = _read_plan(store, name, version + 1)
        targets = records.current_members(engine, report.release_id, sample_ids=wanted, url_ids=plan or ())
        if not targets:
            if plan:
                store.delete_all_versions(layout.key(name, layout.pending_patch(version + 1)))
            report.seconds = time.perf_counter() - started
            say(report.summary())
            return report
        font = find_cjk_font(font_path)
        _Patch(ledger, store, name, report, data, manifest, targets, plan, takedown_id, font, say).run(workdir)
    report.seconds = time.perf_counter() - started
    say(report.summary())
    return report


def _read_plan(store: ObjectStore, name: str, version: int) -> list[str] | None:
    try:
        text = store.get(layout.key(name, layout.pending_patch(version))).decode()
    except KeyError:
        return None
    return [line for line in text.splitlines() if line]


def _drop_stale_plans(store: ObjectStore, name: str, version: int) -> None:
    """Plans for versions the ledger has recorded: their patch finished but died before deleting them."""
    for info in store.list(layout.key(name, layout.HISTORY_DIR + "/")):
        path = info.key[len(layout.prefix(name)):]
        if layout.is_pending_patch(path):
            made = path[len(layout.HISTORY_DIR + "/v"):-len(".pending")]
            if made.isdigit() and int(made) <= version:
                store.delete_all_versions(info.key)


def _record_written_version(ledger: Ledger, store: ObjectStore, name: str, release_id: int, version: int, data: bytes,
                            manifest: dict[str, Any]) -> list[str]:
    """The manifest of version+1 is the commit point and is written: record the version in the ledger.

    The removed ids are exactly those of history/v{version}/ids.txt missing from ids.txt.
    """
    old_key, new_key = layout.key(name, layout.history_ids(version)), layout.key(name, layout.IDS)
    gone: list[str] = []
    try:
        with store.open(old_key) as old, store.open(new_key) as new:
            for sign, sid in merge_diff(old, new, old_name=layout.history_ids(version), new_name=layout.IDS):
                if sign == "+":
                    raise ReleaseError(f"release {name}: {layout.IDS} holds {sid}, which version {version} did not: the release is damaged")
                gone.append(sid)
    except KeyError as exc:
        raise ReleaseError(f"release {name}: version {version + 1} lacks {exc.args[0]}: the release is damaged") from None
    members = records.current_members(ledger.engine, release_id, url_ids=gone)
    made = (manifest.get("history") or [{}])[-1]
    with ledger.engine.begin() as conn:
        records.commit_patch(
            conn, release_id, from_version=version, removed=[m["sample_id"] for m in members], counts=manifest["counts"],
            manifest_key=layout.key(name, layout.MANIFEST), manifest_sha256=hashlib.sha256(data).hexdigest(),
            takedown_id=made.get("takedown_id"),
        )
    store.delete_all_versions(layout.key(name, layout.pending_patch(version + 1)))
    return gone


class _Patch:
    """One patch from version N (the manifest `data`) to N+1, removing `targets`."""

    def __init__(self, ledger: Ledger, store: ObjectStore, name: str, report: PatchReport, data: bytes, manifest: dict[str, Any],
                 targets: list[dict[str, Any]], plan: list[str] | None, takedown_id: int | None, font: str,
                 say: Callable[[str], None]) -> None:
        self.ledger, self.store, self.name, self.report = ledger, store, name, report
        self.data, self.manifest, self.targets, self.plan = data, manifest, targets, plan
        self.takedown_id, self.font, self.say = takedown_id, font, say
        self.version = version_of(manifest)
        self.removed = {t["url_id"] for t in targets}
        recipe = manifest.get("recipe") or {}
        self.taisu_ids = bool(recipe_value(recipe, "taisu_ids"))
        # The TaiSu parts name a sample by member_key (TaiSu's id where it came from TaiSu); older
        # releases (no recipe key `taisu_ids`) by its url_id, like every other file.
        self.removed_taisu = self._taisu_keys(targets) if self.taisu_ids else self.removed
        self.entries = file_entries(manifest)
        self.shards = {s["name"]: s for s in manifest["shards"]}
        # A resumed patch may find files a crashed run already rewrote: write everything again.
        self.resumed = plan is not None
        self.removed_listed = 0  # lines of the new removed.txt

    def key(self, path: str) -> str:
        return layout.key(self.name, path)

    def _taisu_keys(self, targets: list[dict[str, Any]]) -> set[str]:
        ids = sorted({int(t["sample_id"]) for t in targets})
        keys: set[str] = set()
        with self.ledger.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                query = sa.select(sample.c.url_id, sample.c.taisu_id).where(sample.c.id.in_(ids[i:i + 500]))
                keys.update(member_key(uid, tid) for uid, tid in conn.execute(query))
        return keys

    def run(self, workdir: str | Path | None) -> None:
        name, n = self.name, self.version
        affected = sorted({t["shard"] for t in self.targets})
        unknown = [s for s in affected if s not in self.shards]
        if unknown:
            raise ReleaseError(f"release {name}: the ledger puts members in shard(s) {', '.join(unknown)}, which its manifest does not list: "
                               f"the release is damaged (run `taisu-etl release verify {name}`)")
        expected = int(self.manifest["counts"]["samples"]) - len(self.removed)
        # The card's numbers come from the ledger: check it agrees before any file changes.
        stats = self._stats()
        if stats.samples != expected:
            raise ReleaseError(
                f"release {name}: the ledger records {stats.samples + len(self.removed):,} current members, its manifest "
                f"{self.manifest['counts']['samples']:,} samples: the release is damaged (run `taisu-etl release verify {name}`)"
            )
        self.say(f"release {name}: version {n} -> {n + 1}: removing {len(self.removed):,} samples from "
                 f"{len(affected)} of {len(self.shards)} shards")
        self._write_plan()
        with tempfile.TemporaryDirectory(prefix=f"taisu-patch-{name}-", dir=workdir) as tmpdir:
            tmp = Path(tmpdir)
            self._keep_history(tmp)
            sizes = {s: int(meta["samples"]) for s, meta in self.shards.items()}
            for shard in affected:
                sizes[shard] = self._rewrite_shard(shard, tmp)
                self.report.shards_rewritten.append(shard)
            samples = sum(sizes.values())
            listed = self._rewrite_lists(tmp, sizes)
            if samples != expected or listed != expected:
                raise ReleaseError(f"release {name}: after removing {len(self.removed):,} samples the shards hold {samples:,} and "
                                   f"{layout.IDS} lists {listed:,}, expected {expected:,}: the release is damaged")
            body = self._body(sizes, stats)
            self.say(f"release {name}: writing the dataset card")
            card_dir = tmp / "card-files"
            for path, local in card.render(card_dir, body, self.ledger.funnel(), self.ledger.reason_counts(), stats, self.font).items():
                self._upload(path, local, hash_file(local), skip_unchanged=True)
        files = [e for p, e in self.entries.items() if p != layout.SHA256SUMS]
        sums = sha256sums(files)
        self._put(layout.SHA256SUMS, sums)
        files.append(FileEntry(layout.SHA256SUMS, hashlib.sha256(sums).hexdigest(), len(sums)))
        manifest = dumps(with_files(body, files))
        self._put(layout.MANIFEST, manifest)  # the commit point
        with self.ledger.engine.begin() as conn:
            records.commit_patch(
                conn, self.report.release_id, from_version=n, removed=[t["sample_id"] for t in self.targets], counts=body["counts"],
                manifest_key=self.key(layout.MANIFEST), manifest_sha256=hashlib.sha256(manifest).hexdigest(), takedown_id=self.takedown_id,
            )
        self.store.delete_all_versions(self.key(layout.pending_patch(n + 1)))
        self.report.to_version = n + 1
        self.report.removed_ids += sorted(self.removed)

    # -------------------------------------------------------------- steps

    def _stats(self) -> ReleaseStats:
        """ReleaseStats of the members that stay, from their ledger rows, in id order as a build adds them."""
        generated = bool(self.manifest["recipe"].get("generated_captions", True))
        stats = ReleaseStats()
        for row in records.iter_current(self.ledger.engine, self.report.release_id, _STAT_COLUMNS):
            if row["url_id"] in self.removed:
                continue
            w = row["caption_clean"] if row["caption_clean"] is not None else row["caption"]
            g = row["gen_caption"] if generated else None
            stats.add(w, g, row["score"], row["score_model"], row["gen_caption_model"] if g is not None else None,
                      sample_id=row["url_id"], width=row["width"], height=row["height"], nbytes=row["bytes"], image_key=row["object_key"])
        stats.load_thumbnails(self.store.get)  # only the card's few examples: their images, not every member's
        return stats

    def _write_plan(self) -> None:
        if self.plan is None or set(self.plan) != self.removed:
            # It only grows: a resumed run removes the crashed run's ids and its own.
            self.store.put(self.key(layout.pending_patch(self.version + 1)), "".join(f"{i}\n" for i in sorted(self.removed)).encode())

    def _keep_history(self, tmp: Path) -> None:
        """history/vN/manifest.json and ids.txt: copies of version N, made before anything is rewritten."""
        n = self.version
        manifest_path, ids_path = layout.history_manifest(n), layout.history_ids(n)
        try:
            kept = self.store.get(self.key(manifest_path)) == self.data
        except KeyError:
            kept = False
        if not kept:
            self.store.put(self.key(manifest_path), self.data)
        self.entries[manifest_path] = FileEntry(manifest_path, hashlib.sha256(self.data).hexdigest(), len(self.data))
        want = self.entries[layout.IDS]
        want_digest = Digest(want.sha256, want.size)
        local = tmp / "history-ids.txt"
        if self._download(ids_path, local) != want_digest:
            if self._download(layout.IDS, local) != want_digest:
                raise ReleaseError(
                    f"release {self.name}: {layout.IDS} does not match the manifest of version {n} and no copy of it is kept "
                    f"under {layout.HISTORY_DIR}/: the release is damaged (run `taisu-etl release verify {self.name}`)"
                )
            self.store.put_file(self.key(ids_path), local)
        local.unlink()
        self.entries[ids_path] = FileEntry(ids_path, want.sha256, want.size)

    def _download(self, path: str, local: Path) -> Digest | None:
        try:
            with self.store.open(self.key(path)) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except KeyError:
            return None
        return hash_file(local)

    def _rewrite_shard(self, shard: str, tmp: Path) -> int:
        """Every file of the shard without the removed members; returns the samples left."""
        counts = {}
        for path in self.shards[shard]["files"]:
            local = tmp / "shard-file"
            if path.endswith(".parquet"):
                digest, kept = self._rewrite_parquet(path, local, tmp)
            else:
                digest, kept = self._rewrite_tar(path, local)
            counts[path] = kept
            self._upload(path, local, digest)
        if len(set(counts.values())) > 1:
            raise ReleaseError(f"release {self.name}: the files of shard {shard} hold different numbers of samples "
                               f"({', '.join(f'{p}: {c}' for p, c in counts.items())}): the release is damaged")
        kept = next(iter(counts.values()), 0)
        self.say(f"shard {shard}: {self.shards[shard]['samples']:,} -> {kept:,} samples ({', '.join(counts)})")
        return kept

    def _rewrite_tar(self, path: str, local: Path) -> tuple[Digest, int]:
        writer = TarWriter(local, compress=path.endswith(".tgz"))
        removed = self.removed_taisu if path.startswith(layout.TAISU_IMAGES + "/") else self.removed
        images = 0
        try:
            with self._open(path) as src, tarfile.open(fileobj=src, mode="r|*") as tar:
                for member in tar:
                    if member.name.split(".", 1)[0] in removed:
                        continue
                    blob = tar.extractfile(member) if member.isfile() else None
                    if blob is None:
                        raise ReleaseError(f"release {self.name}: {path} holds {member.name!r}, which is not a regular file: the release is damaged")
                    writer.add(member.name, blob.read())
                    images += member.name.endswith(".jpg")
        except tarfile.TarError as exc:
            raise ReleaseError(f"release {self.name}: {path} is not a readable tar ({exc}): the release is damaged") from None
        return writer.close(), images

    def _rewrite_parquet(self, path: str, local: Path, tmp: Path) -> tuple[Digest, int]:
        import pyarrow.parquet as pq

        from taisu_etl.release.parquet import BATCH

        source = tmp / "old.parquet"
        with self._open(path) as src, open(source, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        writer = ParquetShardWriter(local)
        try:
            # Row by row through the build's own writer: same row groups, same bytes as a build.
            for batch in pq.ParquetFile(source).iter_batches(batch_size=BATCH):
                for row in batch.to_pylist():
                    if row["url_id"] not in self.removed:
                        writer.add(row)
        finally:
            writer.close()
            source.unlink()
        return hash_file(local), writer.rows

    def _rewrite_lists(self, tmp: Path, sizes: dict[str, int]) -> int:
        """ids.txt, removed.txt, the caption files and sizes.json; returns the ids listed."""
        local = tmp / "ids.txt"
        out = HashingFile(local)
        listed = 0
        with self._open(layout.IDS) as src:
            for line in src:
                if line.rstrip(b"\n").decode() not in self.removed:
                    out.write(line)
                    listed += 1
        self._upload(layout.IDS, local, out.close())

        local = tmp / "removed.txt"
        out = HashingFile(local)
        removed = 0
        with self._open(layout.REMOVED) as src:
            for sid in _unique(heapq.merge((line.rstrip(b"\n").decode() for line in src if line.strip()), sorted(self.removed))):
                out.write(f"{sid}\n".encode())
                removed += 1
        self.removed_listed = removed
        self._upload(layout.REMOVED, local, out.close())

        if layout.TAISU_CAPTIONS_JSONL in self.entries:
            # All three caption forms from the JSON lines, through the build's writer: the same bytes a build writes.
            writers = CaptionWriters(tmp, with_url_id=self.taisu_ids)
            with self._open(layout.TAISU_CAPTIONS_JSONL) as src:
                for line in src:
                    item = json.loads(line)
                    if item.get("url_id", item["id"]) not in self.removed:
                        writers.add(item["id"], item["w"], item["g"], item.get("url_id"))
            for path, (cap_local, digest) in writers.close().items():
                self._upload(path, cap_local, digest)
        if layout.WDS_SIZES in self.entries:
            local = tmp / "sizes.json"
            local.write_bytes(sizes_json({f"{s}.tar": n for s, n in sizes.items()}))
            self._upload(layout.WDS_SIZES, local, hash_file(local))
        return listed

    def _body(self, sizes: dict[str, int], stats: ReleaseStats) -> dict[str, Any]:
        n, old = self.version, self.manifest
        counts = {
            **old["counts"], "samples": sum(sizes.values()), "with_generated_caption": stats.with_generated,
            "removed": self.removed_listed, "taken_down": int(old["counts"].get("taken_down", 0)) + len(self.removed),
        }
        made = {
            "version": n + 1, "previous_manifest": layout.history_manifest(n), "previous_manifest_sha256": hashlib.sha256(self.data).hexdigest(),
            "previous_ids": layout.history_ids(n), "previous_samples": int(old["counts"]["samples"]), "removed": len(self.removed),
            "takedown_id": self.takedown_id,
        }
        body = {k: v for k, v in old.items() if k != "files"}
        body.update(
            version=n + 1, counts=counts, models=stats.models(), history=[*(old.get("history") or []), made],
            shards=[{**s, "samples": sizes[s["name"]]} for s in old["shards"]],
        )
        return body

    # -------------------------------------------------------------- store

    def _open(self, path: str) -> IO[bytes]:
        try:
            return self.store.open(self.key(path))  # type: ignore[return-value]
        except KeyError:
            raise ReleaseError(f"release {self.name} has no {path}, which its manifest lists: the release is damaged "
                               f"(run `taisu-etl release verify {self.name}`)") from None

    def _upload(self, path: str, local: Path, digest: Digest, *, skip_unchanged: bool = False) -> None:
        old = self.entries.get(path)
        if skip_unchanged and not self.resumed and old is not None and (old.sha256, old.size) == (digest.sha256, digest.size):
            local.unlink()
            return
        key = self.key(path)
        self.store.put_file(key, local)
        local.unlink()
        self._rewritten(key, digest.size)
        self.entries[path] = FileEntry(path, digest.sha256, digest.size)

    def _put(self, path: str, data: bytes) -> None:
        key = self.key(path)
        self.store.put(key, data)
        self._rewritten(key, len(data))
        self.entries[path] = FileEntry(path, hashlib.sha256(data).hexdigest(), len(data))

    def _rewritten(self, key: str, size: int) -> None:
        # The old bytes may hold the removed samples (images, captions, URLs): not even a versioned bucket may keep them.
        self.report.files_rewritten.append((key, self.store.delete_noncurrent_versions(key)))
        self.report.bytes_written += size


def _unique(ids: Iterator[str]) -> Iterator[str]:
    last = None
    for sid in ids:
        if sid != last:
            yield sid
            last = sid


# ------------------------------------------------------------------ withdraw


def withdraw_release(
    ledger: Ledger, store: ObjectStore, name: str, *, takedown_id: int | None = None, progress: Callable[[str], None] | None = None,
) -> WithdrawReport:
    """Delete every object of release `name` (every version of each), manifest first, and mark it withdrawn.

    The manifest goes first, so the release stops existing at once; a crash part-way is finished by
    a re-run (idempotent). A release being built cannot be withdrawn: its build would write again.
    """
    layout.check_name(name)
    say = progress or (lambda line: log.info("%s", line))
    started = time.perf_counter()
    engine = ledger.engine
    row = _ledger_row(engine, name)
    release_id = int(row["id"])
    with records.patch_lock(engine, release_id, on_wait=lambda: say(f"release {name}: waiting for a patch of it to finish")):
        row = records.get(engine, name)
        assert row is not None
        if row["state"] == records.STAGING:
            raise ReleaseError(f"release {name} is being built: wait for its build to finish (or fail), then withdraw it")
        report = WithdrawReport(name, release_id, int(row["version"]), already_withdrawn=row["state"] == records.WITHDRAWN)
        why = f" for takedown request {takedown_id}" if takedown_id is not None else ""
        say(f"release {name}: withdrawing version {report.version}{why}: deleting every object under {layout.prefix(name)}")
        manifest_key = layout.key(name, layout.MANIFEST)
        keys = {info.key for info in store.list(layout.prefix(name))}
        try:
            manifest = read_manifest(store, name)
        except ReleaseError:
            manifest = None
        if manifest is not None:
            keys |= {layout.key(name, f["path"]) for f in manifest.get("files") or []}
        for key in [manifest_key, *sorted(keys - {manifest_key})]:
            deleted = store.delete_all_versions(key)
            if deleted:
                report.deleted.append((key, deleted))
        records.mark_withdrawn(engine, release_id)
    report.seconds = time.perf_counter() - started
    say(report.summary())
    return report
