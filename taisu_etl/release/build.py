"""create_release: select, package, describe and publish one release.

Crash safety: every file goes to its final key under `releases/NAME/`, and `manifest.json` is
written last; a release exists exactly when its manifest does, so a crash at any moment leaves no
release (a re-run clears the leftovers and starts again) or a complete one. Files are built in a
local build folder (workspace.py), hashed as they are written, and uploaded while the next shard
is built.

One run at a time: the run claims the name first (claim.py) and only the claim's holder clears,
uploads, records members and publishes; a second run is refused with ReleaseBusyError, and a run
whose claim was taken over (it was thought dead) stops without publishing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import Ledger
from taisu_etl.release import card, layout, records
from taisu_etl.release.captions import CaptionWriters, member_key
from taisu_etl.release.card_config import card_record
from taisu_etl.release.claim import DEFAULT_STALE_SECONDS, ReleaseClaim
from taisu_etl.release.diff import merge_diff
from taisu_etl.release.errors import ReleaseError, ReleaseExistsError
from taisu_etl.release.fonts import find_cjk_font
from taisu_etl.release.manifest import FORMAT, FileEntry, dumps, hash_file, read_manifest, read_manifest_bytes, sha256sums, with_files
from taisu_etl.release.options import LATEST, ReleaseOptions
from taisu_etl.release.parquet import ParquetShardWriter
from taisu_etl.release.selection import SelectionStats, count_members, iter_members
from taisu_etl.release.stats import ReleaseStats
from taisu_etl.release.tarwriter import Digest, HashingFile, TarWriter
from taisu_etl.release.webdataset import add_sample, captions_for, sizes_json
from taisu_etl.release.workspace import build_folder
from taisu_etl.storage import ObjectStore

log = logging.getLogger(__name__)
MEMBER_BATCH = 5000
FETCH_WINDOW = 64


@dataclass
class ReleaseReport:
    """What create_release published."""

    name: str
    release_id: int
    samples: int
    shards: int
    added: int
    removed: int
    parent: str | None
    skipped: dict[str, int]
    files: int
    bytes: int
    manifest_key: str
    card_key: str
    store: str
    seconds: float = 0.0

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v:,}" for k, v in self.skipped.items() if v) or "none"
        parent = f"against {self.parent}: +{self.added:,} -{self.removed:,}" if self.parent else "no parent release"
        return (
            f"release {self.name}: {self.samples:,} samples in {self.shards:,} shards, {self.files} files, "
            f"{self.bytes / 1e6:,.1f} MB ({parent}; skipped: {skipped}) in {self.seconds:.1f} s\n"
            f"  manifest:     {self.manifest_key}  ({self.store})\n"
            f"  dataset card: {self.card_key}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Skipped:
    missing_image: int = 0
    bad_image: int = 0
    duplicate_id: int = 0
    source_filtered: int = 0


class _Uploader:
    """Uploads finished files in the background and deletes the local copies; keeps their entries."""

    def __init__(self, store: ObjectStore, name: str, guard: Callable[[], None], workers: int = 2) -> None:
        self._store = store
        self._name = name
        self._guard = guard  # raises once this run may no longer write the release's keys
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="release-upload")
        self._pending: deque[Future[FileEntry]] = deque()
        self.entries: list[FileEntry] = []

    def submit(self, path: str, local: Path, digest: Digest) -> None:
        self._pending.append(self._pool.submit(self._put, path, local, digest))
        # Bounded: a slow store must not let finished shards pile up on the local disk.
        while len(self._pending) > 4:
            self.entries.append(self._pending.popleft().result())

    def _put(self, path: str, local: Path, digest: Digest) -> FileEntry:
        self._guard()
        self._store.put_file(layout.key(self._name, path), local)
        local.unlink(missing_ok=True)
        return FileEntry(path, digest.sha256, digest.size)

    def drain(self) -> list[FileEntry]:
        while self._pending:
            self.entries.append(self._pending.popleft().result())
        return self.entries

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _fetch(store: ObjectStore, row: dict[str, Any]) -> bytes | None:
    if not row["object_key"]:
        return None
    try:
        return store.get(row["object_key"])
    except KeyError:
        return None


def _with_images(store: ObjectStore, rows: Iterable[dict[str, Any]], workers: int) -> Iterator[tuple[dict[str, Any], bytes | None]]:
    """Rows with their image bytes, in order; up to FETCH_WINDOW reads in flight hide store latency."""
    if workers <= 1:
        for row in rows:
            yield row, _fetch(store, row)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="release-fetch") as pool:
        window: deque[tuple[dict[str, Any], Future[bytes | None]]] = deque()
        for row in rows:
            window.append((row, pool.submit(_fetch, store, row)))
            if len(window) >= FETCH_WINDOW:
                head, fut = window.popleft()
                yield head, fut.result()
        while window:
            head, fut = window.popleft()
            yield head, fut.result()


class _ShardPlan:
    """How many samples each shard takes: `shard_size`, except in a small release.

    A release with fewer than `shard_size * (min_shards - 1) + 1` members would have fewer than
    `min_shards` shards (open_clip_train refuses fewer shards than dataloader workers): it is split
    into `min(min_shards, members)` shards of near-equal size instead. The members are counted first
    from the ledger (stopping at that bound, so a large release costs a few pages); each shard's size
    is set when it opens, from the rows not yet read, so images missing at build time shrink the
    shards that would have held them and the last shard takes whatever is left. The same ledger and
    store give the same shards.
    """

    def __init__(self, shard_size: int, shards: int | None, expected: int) -> None:
        self.shard_size = shard_size
        self.shards = shards  # None: every shard takes shard_size
        self.expected = expected

    @classmethod
    def for_release(cls, engine: Any, options: ReleaseOptions) -> "_ShardPlan":
        if options.min_shards <= 1:
            return cls(options.shard_size, None, 0)
        bound = options.shard_size * (options.min_shards - 1) + 1
        expected = count_members(engine, options, limit=bound)
        if expected >= bound:
            return cls(options.shard_size, None, expected)
        return cls(options.shard_size, min(options.min_shards, expected), expected)

    def target(self, index: int, consumed: int) -> int:
        """Samples shard `index` takes when it opens after `consumed` rows were read."""
        if self.shards is None:
            return self.shard_size
        left = self.shards - index
        if left <= 1:
            return 1 << 62  # the last shard: everything left, however the ledger changed since the count
        return max(1, -(-max(self.expected - consumed, 0) // left))


class _Shard:
    """The files of one shard being written: TaiSu part, webdataset shard, Parquet part."""

    def __init__(self, index: int, tmp: Path, options: ReleaseOptions) -> None:
        self.name = layout.shard_name(index)
        self.count = 0
        self.paths: dict[str, Path] = {}
        self.taisu = self.wds = None
        self.parquet = None
        if "taisu" in options.formats:
            self.taisu_path = layout.taisu_part(self.name, options.tgz)
            self.paths[self.taisu_path] = tmp / f"taisu-{self.name}"
            self.taisu = TarWriter(self.paths[self.taisu_path], compress=options.tgz)
        if "webdataset" in options.formats:
            self.wds_path = layout.wds_shard(self.name)
            self.paths[self.wds_path] = tmp / f"wds-{self.name}"
            self.wds = TarWriter(self.paths[self.wds_path])
        if "parquet" in options.formats:
            self.parquet_path = layout.parquet_part(self.name)
            self.paths[self.parquet_path] = tmp / f"parquet-{self.name}"
            self.parquet = ParquetShardWriter(self.paths[self.parquet_path])
        # The image-holding files a sample of this shard is in (the Parquet `shards` column).
        self.image_files = [p for p in self.paths if not p.endswith(".parquet")]

    def close(self) -> list[tuple[str, Path, Digest]]:
        out = []
        if self.taisu is not None:
            out.append((self.taisu_path, self.paths[self.taisu_path], self.taisu.close()))
        if self.wds is not None:
            out.append((self.wds_path, self.paths[self.wds_path], self.wds.close()))
        if self.parquet is not None:
            self.parquet.close()
            out.append((self.parquet_path, self.paths[self.parquet_path], hash_file(self.paths[self.parquet_path])))
        return out


def _clear(store: ObjectStore, name: str, claim: ReleaseClaim) -> int:
    """Delete what a crashed run left under the release's prefix (there is no manifest: checked).

    Only the claim's holder gets here, so the files are not a live run's.
    """
    stale = [info.key for info in store.list(layout.prefix(name))]
    for k in stale:
        claim.check()
        store.delete_all_versions(k)
    return len(stale)


def _resolve_parent(ledger: Ledger, store: ObjectStore, name: str, options: ReleaseOptions) -> tuple[str | None, int | None]:
    if options.parent is None:
        return None, None
    if options.parent == LATEST:
        row = records.latest_published(ledger.engine, exclude=name)
        if row is None:
            return None, None
        parent = row["name"]
    else:
        if options.parent == name:
            raise ReleaseError(f"release {name} cannot be its own parent")
        parent = options.parent
        row = records.get(ledger.engine, parent)
    if read_manifest(store, parent) is None:
        raise ReleaseError(
            f"parent release {parent} has no manifest in {store.describe()}: name another with --parent, or use --no-parent"
        )
    return parent, (row["id"] if row else None)


def create_release(
    ledger: Ledger, store: ObjectStore, name: str, options: ReleaseOptions | None = None, *,
    ctx: RunContext | None = None, progress: Callable[[str], None] | None = None,
    font_path: str | None = None, workdir: str | Path | None = None, fetch_workers: int = 8,
    stale_after: float = DEFAULT_STALE_SECONDS, card_info: dict[str, Any] | None = None,
) -> ReleaseReport:
    """Build and publish release `name` from the ledger's eligible samples; see the package docstring.

    `card_info`: what the dataset card says about licence, citation, takedown contact and score rule
    (`card_config.card_record(settings.release, settings.score)`); None: TaiSu's licence, no contact.

    Refuses a name that is already published (ReleaseExistsError) or being created by another live
    run (ReleaseBusyError); a run of another node counts as gone once its claim has not been renewed
    for `stale_after` seconds. Files are built in a folder under `workdir` (the CLI passes
    `<TAISU home>/tmp`; default the system's temporary directory). `ctx` is accepted for symmetry
    with the stages: a release writes no sample events (membership is recorded in `release_member`).
    """
    del ctx  # no per-sample events: release_member is the record of membership
    options = options or ReleaseOptions()
    layout.check_name(name)
    say = progress or (lambda line: log.info("%s", line))
    started = time.perf_counter()
    engine = ledger.engine
    manifest_key = layout.key(name, layout.MANIFEST)
    existing = records.get(engine, name)
    if existing is not None and existing["state"] == records.WITHDRAWN:
        raise ReleaseExistsError(f"release {name} was withdrawn: its name stays retired, choose a new one")
    found = read_manifest_bytes(store, name)
    if found is not None:
        if existing is not None and existing["state"] != records.PUBLISHED:
            records.mark_published(engine, existing["id"], manifest_key, found[1], hashlib.sha256(found[0]).hexdigest())
        raise ReleaseExistsError(f"release {name} is already published ({manifest_key} in {store.describe()}): releases are immutable, choose a new name")
    if existing is not None and existing["state"] == records.PUBLISHED:
        raise ReleaseExistsError(
            f"release {name} is already published in the ledger (manifest {existing['manifest_key']}): releases are immutable, choose a new name"
        )
    font = find_cjk_font(font_path)  # before any work: a missing font must not cost a whole build
    parent, parent_id = _resolve_parent(ledger, store, name, options)
    recipe = options.recipe(parent)
    claim = ReleaseClaim.acquire(engine, name, parent_id, recipe, stale_after=stale_after)
    try:
        cleared = _clear(store, name, claim)
        if cleared:
            say(f"removed {cleared} files an earlier, unfinished run of {name} left behind")
        report = _build(ledger, store, name, options, parent, claim, recipe, font, say, workdir, fetch_workers, card_info)
    except BaseException:
        try:
            claim.fail()
        except Exception:  # the original error matters more than the bookkeeping
            log.exception("could not mark release %s failed", name)
        raise
    finally:
        claim.close()
    report.seconds = time.perf_counter() - started
    say(report.summary())
    return report


def _build(
    ledger: Ledger, store: ObjectStore, name: str, options: ReleaseOptions, parent: str | None, claim: ReleaseClaim,
    recipe: dict[str, Any], font: str, say: Callable[[str], None], workdir: str | Path | None, fetch_workers: int,
    card_info: dict[str, Any] | None = None,
) -> ReleaseReport:
    engine = ledger.engine
    release_id = claim.release_id
    selection = SelectionStats()
    skipped = _Skipped()
    stats = ReleaseStats()
    shard_sizes: dict[str, int] = {}
    say(f"release {name}: selecting samples from {engine.url.render_as_string(hide_password=True)}"
        f"{f' (parent {parent})' if parent else ''}")
    with build_folder(workdir, name, claim.owner, say) as tmp:
        uploader = _Uploader(store, name, claim.check)
        try:
            captions = CaptionWriters(tmp, with_url_id=True) if "taisu" in options.formats else None
            ids_file = HashingFile(tmp / "ids.txt")
            members: list[tuple[int, str]] = []
            shard: _Shard | None = None
            index = 0
            plan = _ShardPlan.for_release(engine, options)
            target = options.shard_size
            consumed = 0  # rows read so far, skipped ones included
            rows = iter_members(engine, options, selection)
            for row, image in _with_images(store, rows, fetch_workers):
                consumed += 1
                if image is None:
                    skipped.missing_image += 1
                    continue
                if row["sha256"] and hashlib.sha256(image).hexdigest() != row["sha256"]:
                    skipped.bad_image += 1
                    continue
                if shard is not None and shard.count >= target:
                    claim.check()
                    _finish_shard(shard, shard_sizes, uploader, stats, say)
                    index += 1
                    shard = None
                if shard is None:
                    shard = _Shard(index, tmp, options)
                    target = plan.target(index, consumed - 1)
                _write_member(shard, row, image, options, captions, stats)
                ids_file.write(f"{row['url_id']}\n".encode())
                members.append((row["id"], shard.name))
                if len(members) >= MEMBER_BATCH:
                    claim.add_members(members)
                    members = []
            if shard is not None:
                _finish_shard(shard, shard_sizes, uploader, stats, say)
            claim.add_members(members)
            skipped.duplicate_id, skipped.source_filtered = selection.duplicate_id, selection.source_filtered
            if stats.samples == 0:
                raise ReleaseError(f"no sample is eligible for release {name} with these options: nothing to publish")

            ids_digest = ids_file.close()
            added, removed = _removed_list(store, parent, tmp / "ids.txt", tmp / "removed.txt", stats.samples)
            uploader.submit(layout.IDS, tmp / "ids.txt", ids_digest)
            uploader.submit(layout.REMOVED, tmp / "removed.txt", hash_file(tmp / "removed.txt"))
            if captions is not None:
                for path, (local, digest) in captions.close().items():
                    uploader.submit(path, local, digest)
            if "webdataset" in options.formats:
                (tmp / "sizes.json").write_bytes(sizes_json({f"{s}.tar": n for s, n in shard_sizes.items()}))
                uploader.submit(layout.WDS_SIZES, tmp / "sizes.json", hash_file(tmp / "sizes.json"))
            counts = {
                "samples": stats.samples, "shards": len(shard_sizes), "with_generated_caption": stats.with_generated,
                "added": added, "removed": removed, "taken_down": 0, "skipped": asdict(skipped),
            }
            body = {
                "format": FORMAT, "name": name, "version": 1, "recipe": recipe, "recipe_version": ledger.recipe_version,
                "counts": counts, "models": stats.models(),
                "shards": [{"name": s, "samples": n, "files": _shard_files(s, options)} for s, n in shard_sizes.items()],
                "card": card_info if card_info is not None else card_record(),  # a takedown patch re-renders the card from it
            }
            say(f"release {name}: writing the dataset card")
            for path, local in card.render(tmp, body, ledger.funnel(), ledger.reason_counts(), stats, font).items():
                uploader.submit(path, local, hash_file(local))
            files = uploader.drain()
            sums = sha256sums(files)
            claim.check()
            store.put(layout.key(name, layout.SHA256SUMS), sums)
            files.append(FileEntry(layout.SHA256SUMS, hashlib.sha256(sums).hexdigest(), len(sums)))
            manifest_key = _commit(ledger, store, name, claim, with_files(body, files), counts)
        finally:
            uploader.close()
    return ReleaseReport(
        name=name, release_id=release_id, samples=stats.samples, shards=len(shard_sizes), added=added, removed=removed,
        parent=parent, skipped=asdict(skipped), files=len(files), bytes=sum(f.size for f in files),
        manifest_key=manifest_key, card_key=layout.key(name, layout.README), store=store.describe(),
    )


def _commit(ledger: Ledger, store: ObjectStore, name: str, claim: ReleaseClaim, manifest: dict[str, Any], counts: dict[str, Any]) -> str:
    """The last ownership and takedown checks, the manifest and the publish, atomic against a takedown
    and a takeover.

    One transaction holds the release row lock (records.lock_for_patch) from the checks to the
    publish; a takedown takes the same lock to decide whether the release needs a patch, and a
    takeover's conditional UPDATE waits for it. So a takedown either lands before the check (this
    build refuses to publish) or finds the release published and patches it, and a run whose claim
    was taken over finds another owner here and publishes nothing. A crash between the manifest and
    the commit is recovered by the next `create` (mark_published).
    """
    data = dumps(manifest)
    manifest_key = layout.key(name, layout.MANIFEST)
    release_id = claim.release_id
    with ledger.engine.begin() as conn:
        row = records.lock_for_patch(conn, release_id)
        records.check_owner(conn, row, name, release_id, claim.token)
        withdrawn = records.withdrawn_members(conn, release_id)
        if withdrawn:
            raise ReleaseError(
                f"{withdrawn} samples of release {name} were taken down or blocklisted while it was being built: run it again"
            )
        store.put(manifest_key, data)  # the commit point
        records.publish(conn, release_id, counts, manifest_key, hashlib.sha256(data).hexdigest())
    return manifest_key


def _shard_files(shard: str, options: ReleaseOptions) -> list[str]:
    files = []
    if "taisu" in options.formats:
        files.append(layout.taisu_part(shard, options.tgz))
    if "webdataset" in options.formats:
        files.append(layout.wds_shard(shard))
    if "parquet" in options.formats:
        files.append(layout.parquet_part(shard))
    return files


def published_source(source: str, root: str | None) -> str:
    """The `source` a release publishes: the ledger's path relative to `root` when it lies under it,
    else the file name, never the builder's folders (the ledger keeps the full path as provenance).

    Lexical, as recorded at ingest: a relative source is compared with the root as given.
    """
    path = PurePosixPath(source)
    if root:
        try:
            rel = path.relative_to(PurePosixPath(root))
        except ValueError:
            rel = None
        if rel is not None and rel.parts and ".." not in rel.parts:
            return rel.as_posix()
    return path.name or source


def _write_member(shard: _Shard, row: dict[str, Any], image: bytes, options: ReleaseOptions,
                  captions: CaptionWriters | None, stats: ReleaseStats) -> None:
    sid = row["url_id"]
    w = row["caption_clean"] if row["caption_clean"] is not None else row["caption"]
    g = row["gen_caption"] if options.generated_captions else None
    g_model = row["gen_caption_model"] if g is not None else None
    source = published_source(row["source"], options.source_root)
    key = member_key(sid, row["taisu_id"])  # the TaiSu forms' name of the sample
    if shard.taisu is not None:
        shard.taisu.add(f"{key}.jpg", image)
    if shard.wds is not None:
        txt, gen_txt = captions_for(options.wds_captions, w, g)
        add_sample(shard.wds, sid, image, txt, {
            "id": sid, "url": row["url"], "taisu_id": row["taisu_id"], "caption": w, "gen_caption": g,
            "gen_caption_model": g_model, "score": row["score"], "score_model": row["score_model"],
            "sha256": row["sha256"], "width": row["width"], "height": row["height"], "source": source,
        }, gen_txt)
    if shard.parquet is not None:
        shard.parquet.add({
            "url_id": sid, "taisu_id": row["taisu_id"], "source": source, "source_pos": row["source_pos"],
            "url": row["url"], "sha256": row["sha256"], "phash": row["phash"], "width": row["width"],
            "height": row["height"], "bytes": len(image), "score": row["score"], "score_model": row["score_model"],
            "caption": w, "gen_caption": g, "gen_caption_model": g_model, "shards": shard.image_files,
        })
    if captions is not None:
        captions.add(key, w, g, sid)
    stats.add(w, g, row["score"], row["score_model"], g_model, sample_id=sid, image=image, width=row["width"], height=row["height"])
    shard.count += 1


def _finish_shard(shard: _Shard, sizes: dict[str, int], uploader: _Uploader, stats: ReleaseStats, say: Callable[[str], None]) -> None:
    for path, local, digest in shard.close():
        uploader.submit(path, local, digest)
    sizes[shard.name] = shard.count
    say(f"shard {shard.name}: {shard.count:,} samples ({stats.samples:,} so far)")


def _removed_list(store: ObjectStore, parent: str | None, ids: Path, out: Path, samples: int) -> tuple[int, int]:
    """Write removed.txt (ids of the parent not in this release); returns (added, removed)."""
    if parent is None:
        out.write_bytes(b"")
        return samples, 0
    added = removed = 0
    try:
        parent_ids = store.open(layout.key(parent, layout.IDS))
    except KeyError:
        raise ReleaseError(f"parent release {parent} has no {layout.IDS}: it is damaged (run `verify {parent}`)") from None
    with parent_ids as old, open(ids, "rb") as new, open(out, "wb") as dst:
        for sign, sid in merge_diff(old, new, old_name=f"{parent}/{layout.IDS}", new_name=f"new {layout.IDS}"):
            if sign == "+":
                added += 1
            else:
                removed += 1
                dst.write(f"{sid}\n".encode())
    return added, removed
