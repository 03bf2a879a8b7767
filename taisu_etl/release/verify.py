"""verify_release: is a published release whole, and (with the ledger) still clean?

Every file the manifest lists is read once: hashed and sized while it streams to a temporary file,
then its members or lines are counted against the manifest (a patched version's `history/` files
are listed there too). With a ledger, four records must agree:

- the files: ids.txt has as many lines as the manifest has samples, every shard file as many
  samples as its shard;
- the ledger's `release` row: published, at the manifest's version, with the manifest's sha256 and
  sample count (`release.counts`, `release_version.samples`);
- the ledger's current members (`release_member` rows no patch removed): as many as the manifest's
  samples (a published release with none is a problem), as many per shard as the manifest's
  shards, and exactly the ids of ids.txt;
- takedowns: no id of ids.txt, and no current member even where ids.txt does not list it, may be
  taken down or blocklisted now.

A withdrawn release reports withdrawn. Each problem names the file (or ledger table), what was
expected and what was found.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import release_member, sample, sample_state
from taisu_etl.release import layout, records
from taisu_etl.release.diff import merge_diff
from taisu_etl.release.errors import ReleaseError
from taisu_etl.release.manifest import read_manifest_bytes, version_of
from taisu_etl.release.options import recipe_value
from taisu_etl.release.selection import blocked
from taisu_etl.storage import ObjectStore
from taisu_etl.vocab import State

_LEDGER_BATCH = 500
_EXAMPLES = 20


@dataclass(frozen=True)
class Problem:
    file: str
    what: str
    expected: Any = None
    got: Any = None

    def __str__(self) -> str:
        detail = f": expected {self.expected}, got {self.got}" if self.expected is not None or self.got is not None else ""
        return f"{self.file}: {self.what}{detail}"


@dataclass
class VerifyReport:
    name: str
    exists: bool = True
    files_checked: int = 0
    samples: int = 0
    ledger_checked: bool = False
    problems: list[Problem] = field(default_factory=list)
    version: int | None = None
    withdrawn: bool = False
    staging_holder: str | None = None  # no manifest yet, and the ledger says who is creating it

    @property
    def ok(self) -> bool:
        return self.exists and not self.withdrawn and not self.problems

    def summary(self) -> str:
        if self.withdrawn:
            head = f"release {self.name} was withdrawn (at version {self.version}): its files are deleted"
            if not self.problems:
                return head
            return head + f", but {len(self.problems)} object(s) are left\n" + "\n".join(f"  {p}" for p in self.problems)
        if not self.exists:
            return f"release {self.name} does not exist (no manifest)"
        version = f" version {self.version}" if self.version is not None else ""
        head = (f"release {self.name}{version}: {self.files_checked} files, {self.samples:,} samples checked"
                f"{' against the ledger' if self.ledger_checked else ''}: ")
        if self.ok:
            return head + "ok"
        return head + f"{len(self.problems)} problem(s)\n" + "\n".join(f"  {p}" for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "exists": self.exists, "ok": self.ok, "version": self.version, "withdrawn": self.withdrawn,
                "files_checked": self.files_checked,
                "samples": self.samples, "problems": [str(p) for p in self.problems]}


def _download(store: ObjectStore, key: str, dst: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with store.open(key) as src, open(dst, "wb") as out:
        while block := src.read(1 << 20):
            h.update(block)
            out.write(block)
            size += len(block)
    return h.hexdigest(), size


def _tar_keys(path: Path) -> Iterator[str]:
    """Member names of a tar (gzip or not), streamed."""
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            yield member.name


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _json_object_entries(path: Path) -> int:
    import ijson

    with open(path, "rb") as f:
        return sum(1 for _ in ijson.kvitems(f, ""))


def _count(path: str, local: Path) -> int | None:
    """How many samples the file holds, by its kind; None for files that hold no samples."""
    if path.startswith(layout.TAISU_IMAGES + "/"):
        return sum(1 for n in _tar_keys(local) if n.endswith(".jpg"))
    if path.startswith(layout.WDS_DIR + "/") and path.endswith(".tar"):
        return len({n.split(".", 1)[0] for n in _tar_keys(local) if n.endswith(".jpg")})
    if path.startswith(layout.PARQUET_DIR + "/"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(local).metadata.num_rows
    if path in (layout.TAISU_CAPTIONS_JSONL, layout.TAISU_CAPTIONS_TXT, layout.IDS, layout.REMOVED):
        return _lines(local)
    if path == layout.TAISU_CAPTIONS_JSON:
        return _json_object_entries(local)
    return None


def _wds_members(path: str, local: Path, choice: str, report: VerifyReport) -> int:
    """Check that every sample of a webdataset shard has its `.jpg`, `.json` and `.txt` (what a trainer
    needs) and a `.gen.txt` only where the recipe's `wds_captions` is `both`; returns the `.gen.txt` count."""
    exts: dict[str, set[str]] = {}
    for member in _tar_keys(local):
        key, _, ext = member.partition(".")
        exts.setdefault(key, set()).add(ext)
    incomplete = sorted(k for k, e in exts.items() if not {"jpg", "json", "txt"} <= e)
    if incomplete:
        report.problems.append(Problem(path, f"{len(incomplete):,} samples lack a .jpg, .json or .txt member (e.g. {incomplete[0]})"))
    extra = sorted({x for e in exts.values() for x in e} - {"jpg", "json", "txt", "gen.txt"})
    if extra:
        report.problems.append(Problem(path, f"holds members of unknown kinds: {', '.join(extra)}"))
    generated = sum(1 for e in exts.values() if "gen.txt" in e)
    if generated and choice != "both":
        report.problems.append(Problem(path, f"holds {generated:,} .gen.txt members, but the recipe's wds_captions is {choice!r}", 0, generated))
    return generated


def _expected_counts(manifest: dict[str, Any]) -> dict[str, int]:
    counts = manifest["counts"]
    expected = {layout.IDS: counts["samples"], layout.REMOVED: counts["removed"]}
    for form in (layout.TAISU_CAPTIONS_JSON, layout.TAISU_CAPTIONS_JSONL, layout.TAISU_CAPTIONS_TXT):
        expected[form] = counts["samples"]
    for shard in manifest["shards"]:
        for path in shard["files"]:
            expected[path] = shard["samples"]
    return expected


def verify_release(store: ObjectStore, name: str, *, ledger: Ledger | None = None) -> VerifyReport:
    """Check release `name` file by file against its manifest (and, with `ledger`, against takedowns)."""
    report = VerifyReport(name)
    row = records.get(ledger.engine, name) if ledger is not None else None
    if row is not None and row["state"] == records.WITHDRAWN:
        return _check_withdrawn(store, name, row, report)
    try:
        found = read_manifest_bytes(store, name)
    except Exception as exc:  # a damaged manifest is a finding, not a crash
        report.problems.append(Problem(layout.MANIFEST, f"unreadable ({exc})"))
        return report
    if found is None:
        report.exists = False
        if row is not None and row["state"] == records.STAGING:
            report.staging_holder = records.holder(row)
        report.problems.append(Problem(layout.MANIFEST, "missing: the release does not exist (never published, or its build did not finish)"))
        return report
    data, manifest = found
    report.samples = manifest["counts"]["samples"]
    report.version = version_of(manifest)
    flagged: dict[str, tuple[int, str]] = {}  # current members taken down or blocklisted: url_id -> (sample id, why)
    if ledger is not None:
        flagged = _check_record(ledger, name, row, data, manifest, report)
    expected = _expected_counts(manifest)
    listed = {f["path"]: f for f in manifest["files"]}
    shards_total = sum(s["samples"] for s in manifest["shards"])
    if shards_total != report.samples:
        report.problems.append(Problem(layout.MANIFEST, "shard sizes do not add up to the sample count", report.samples, shards_total))
    for required in (layout.IDS, layout.SHA256SUMS):
        if required not in listed:
            report.problems.append(Problem(layout.MANIFEST, f"does not list {required}, which every release has"))
    seen_flagged: set[str] = set()
    wds_choice = recipe_value(manifest.get("recipe") or {}, "wds_captions")
    wds_generated = 0
    wds_read_whole = True
    with tempfile.TemporaryDirectory(prefix=f"taisu-verify-{name}-") as tmpdir:
        tmp = Path(tmpdir)
        for path, entry in sorted(listed.items()):
            local = tmp / "file"
            try:
                digest, size = _download(store, layout.key(name, path), local)
            except KeyError:
                report.problems.append(Problem(path, "missing from the store"))
                wds_read_whole = wds_read_whole and not path.startswith(layout.WDS_DIR + "/")
                continue
            report.files_checked += 1
            if size != entry["bytes"]:
                report.problems.append(Problem(path, "size differs from the manifest", entry["bytes"], size))
            if digest != entry["sha256"]:
                report.problems.append(Problem(path, "sha256 differs from the manifest", entry["sha256"], digest))
            if path == layout.SHA256SUMS:
                _check_sums(local, listed, report)
            try:
                got = _count(path, local)
            except Exception as exc:  # unreadable content is a finding
                report.problems.append(Problem(path, f"cannot be read ({type(exc).__name__}: {exc})"))
                wds_read_whole = wds_read_whole and not path.startswith(layout.WDS_DIR + "/")
                continue
            if got is not None and path in expected and got != expected[path]:
                report.problems.append(Problem(path, "sample count differs from the manifest", expected[path], got))
            if path.startswith(layout.WDS_DIR + "/") and path.endswith(".tar"):
                try:
                    wds_generated += _wds_members(path, local, wds_choice, report)
                except Exception as exc:
                    report.problems.append(Problem(path, f"cannot be read ({type(exc).__name__}: {exc})"))
                    wds_read_whole = False
            if path == layout.IDS and ledger is not None:
                seen_flagged = _check_ledger(ledger, row, local, report, flagged)
                if row is not None:
                    _check_members(ledger, row, local, report)
            local.unlink()
    with_generated = manifest["counts"].get("with_generated_caption")
    has_wds = any(p.startswith(layout.WDS_DIR + "/") and p.endswith(".tar") for p in listed)
    if has_wds and wds_read_whole and wds_choice == "both" and with_generated is not None and wds_generated != int(with_generated):
        report.problems.append(Problem(layout.WDS_DIR, "the .gen.txt members differ in number from the manifest's samples with a "
                                       "generated caption", with_generated, wds_generated))
    unseen = sorted(set(flagged) - seen_flagged)
    if unseen:
        named = ", ".join(f"{uid} (ledger id {flagged[uid][0]}, {flagged[uid][1]})" for uid in unseen[:_EXAMPLES])
        more = f" and {len(unseen) - _EXAMPLES:,} more" if len(unseen) > _EXAMPLES else ""
        report.problems.append(Problem(
            "release_member", f"{len(unseen):,} current members in the ledger are taken down or blocklisted (and not in {layout.IDS}): "
            f"{named}{more}: process their takedowns again, which patches the release"))
    for info in store.list(layout.prefix(name)):
        rel = info.key[len(layout.prefix(name)):]
        if layout.is_pending_patch(rel):
            report.problems.append(Problem(rel, "left by an unfinished takedown patch: process the takedown again to finish it"))
        elif rel not in listed and rel != layout.MANIFEST:
            report.problems.append(Problem(rel, "in the release's folder but not in the manifest"))
    return report


def _check_withdrawn(store: ObjectStore, name: str, row: dict[str, Any], report: VerifyReport) -> VerifyReport:
    report.withdrawn, report.exists, report.ledger_checked, report.version = True, False, True, int(row["version"])
    for info in store.list(layout.prefix(name)):
        rel = info.key[len(layout.prefix(name)):]
        report.problems.append(Problem(rel, f"left behind by the withdrawal: run `taisu-etl release withdraw {name}` again"))
    return report


def _check_version(ledger: Ledger, row: dict[str, Any], data: bytes, report: VerifyReport) -> None:
    """The manifest must be the version the ledger recorded last, byte for byte."""
    if int(row["version"]) != report.version:
        report.problems.append(Problem(layout.MANIFEST, "version differs from the ledger's", row["version"], report.version))
        return
    recorded = {v["version"]: v for v in records.versions(ledger.engine, row["id"])}.get(report.version)
    digest = hashlib.sha256(data).hexdigest()
    if recorded is None:
        report.problems.append(Problem(layout.MANIFEST, f"version {report.version} is not recorded in the ledger (release_version)"))
    else:
        if recorded["manifest_sha256"] and recorded["manifest_sha256"] != digest:  # '' = published before versions were recorded
            report.problems.append(Problem(layout.MANIFEST, f"sha256 differs from the ledger's record of version {report.version}",
                                           recorded["manifest_sha256"], digest))
        if int(recorded["samples"]) != report.samples:
            report.problems.append(Problem(layout.MANIFEST, f"sample count differs from the ledger's record of version {report.version} "
                                           "(release_version)", recorded["samples"], report.samples))
    counted = (row.get("counts") or {}).get("samples")
    if counted is not None and int(counted) != report.samples:
        report.problems.append(Problem(layout.MANIFEST, "sample count differs from the ledger's release row (release.counts)",
                                       counted, report.samples))


def _check_record(ledger: Ledger, name: str, row: dict[str, Any] | None, data: bytes, manifest: dict[str, Any],
                  report: VerifyReport) -> dict[str, tuple[int, str]]:
    """The ledger's release row and current members against the manifest; returns the current members
    that are taken down or blocklisted (url_id -> (sample id, why)), which the ids.txt pass then looks for."""
    report.ledger_checked = True
    if row is None:
        report.problems.append(Problem(layout.MANIFEST, f"the ledger has no record of release {name} (no `release` row): it was made "
                                       "with another ledger, or its record was lost; its members cannot be checked"))
        return {}
    if row["state"] == records.PUBLISHED:
        _check_version(ledger, row, data, report)
    else:
        hint = (f"another run is creating it ({records.holder(row)})" if row["state"] == records.STAGING
                else f"run `taisu-etl release create {name}` to record it")
        report.problems.append(Problem(layout.MANIFEST, f"is in the store, but the ledger records the release as {row['state']}: {hint}",
                                       records.PUBLISHED, row["state"]))
    members = records.member_count(ledger.engine, row["id"])
    if members == 0:
        report.problems.append(Problem("release_member", "the ledger records no current member of the release", report.samples, 0))
    elif members != report.samples:
        report.problems.append(Problem("release_member", "the ledger's current members differ in number from the manifest", report.samples, members))
    if members:
        _check_shards(ledger, row, manifest, report)
    return _flagged_members(ledger, row)


def _check_shards(ledger: Ledger, row: dict[str, Any], manifest: dict[str, Any], report: VerifyReport) -> None:
    """Each shard of the manifest holds as many samples as the ledger has current members in it."""
    m = release_member.c
    with ledger.engine.connect() as conn:
        in_ledger = dict(conn.execute(
            sa.select(m.shard, sa.func.count()).where(m.release_id == row["id"], m.removed_in_version.is_(None)).group_by(m.shard)
        ).all())
    in_manifest = {s["name"]: int(s["samples"]) for s in manifest["shards"]}
    unknown = sorted(set(in_ledger) - set(in_manifest))
    if unknown:
        report.problems.append(Problem("release_member", f"the ledger puts current members in shard(s) the manifest does not list: "
                                       f"{', '.join(unknown[:_EXAMPLES])}"))
    for shard, samples in sorted(in_manifest.items()):
        if in_ledger.get(shard, 0) != samples:
            report.problems.append(Problem("release_member", f"the ledger's current members of shard {shard} differ in number from the manifest",
                                           samples, in_ledger.get(shard, 0)))


def _flagged_members(ledger: Ledger, row: dict[str, Any]) -> dict[str, tuple[int, str]]:
    m = release_member.c
    query = (
        sa.select(sample.c.url_id, sample.c.id, sample_state.c.state, blocked().label("blocked"))
        .join(release_member, m.sample_id == sample.c.id).join(sample_state, sample_state.c.sample_id == sample.c.id)
        .where(m.release_id == row["id"], m.removed_in_version.is_(None), sa.or_(sample_state.c.state == State.TAKEN_DOWN.value, blocked()))
    )
    with ledger.engine.connect() as conn:
        return {uid: (sid, "taken down" if state == State.TAKEN_DOWN.value else "blocklisted")
                for uid, sid, state, _ in conn.execute(query)}


def _check_sums(local: Path, listed: dict[str, dict[str, Any]], report: VerifyReport) -> None:
    seen = {}
    for line in local.read_text(encoding="utf-8").splitlines():
        digest, _, path = line.partition("  ")
        seen[path] = digest
    for path, entry in listed.items():
        if path == layout.SHA256SUMS:
            continue
        if seen.get(path) != entry["sha256"]:
            report.problems.append(Problem(layout.SHA256SUMS, f"entry for {path} differs from the manifest", entry["sha256"], seen.get(path)))


def _check_members(ledger: Ledger, row: dict[str, Any], ids_file: Path, report: VerifyReport) -> None:
    """The ledger's current members and ids.txt must be the same ids (their numbers: _check_record)."""

    def current() -> Iterator[str]:
        for member in records.iter_current(ledger.engine, row["id"]):
            yield member["url_id"]

    missing: list[str] = []
    extra: list[str] = []
    counts = {"-": 0, "+": 0}
    try:
        with open(ids_file, "rb") as ids:
            for sign, sid in merge_diff(current(), ids, old_name="the ledger's members", new_name=layout.IDS):
                counts[sign] += 1
                examples = missing if sign == "-" else extra
                if len(examples) < _EXAMPLES:
                    examples.append(sid)
    except ReleaseError as exc:
        report.problems.append(Problem(layout.IDS, f"cannot be compared with the ledger's members ({exc})"))
        return

    def named(n: int, ids: list[str]) -> str:
        return ", ".join(ids) + (f" and {n - len(ids):,} more" if n > len(ids) else "")

    if counts["-"]:
        report.problems.append(Problem(layout.IDS, f"{counts['-']:,} current members in the ledger are missing from it: {named(counts['-'], missing)}"))
    if counts["+"]:
        report.problems.append(Problem(layout.IDS, f"{counts['+']:,} ids in it are not current members in the ledger: {named(counts['+'], extra)}"))


def _check_ledger(ledger: Ledger, row: dict[str, Any] | None, ids_file: Path, report: VerifyReport,
                  flagged: dict[str, tuple[int, str]]) -> set[str]:
    """No id of ids.txt may be taken down or blocklisted now: names each one that is. Returns the ids
    of `flagged` (current members taken down or blocklisted) that ids.txt lists."""
    report.ledger_checked = True
    cols = [sample.c.id, sample.c.url_id, sample_state.c.state, blocked().label("blocked")]
    every = sa.select(*cols).join(sample_state, sample_state.c.sample_id == sample.c.id)
    # The exact members, where the ledger recorded them; else every sample of each id (one URL can
    # carry several captions, each its own sample), so that lost members still get checked.
    members = None
    if row is not None:
        members = every.join(release_member, sa.and_(release_member.c.sample_id == sample.c.id, release_member.c.release_id == row["id"]))
    seen: set[str] = set()

    def check(batch: list[str]) -> None:
        with ledger.engine.connect() as conn:
            found: list[Any] = []
            rest = batch
            if members is not None:
                found = list(conn.execute(members.where(sample.c.url_id.in_(batch))))
                recorded = {r[1] for r in found}
                rest = [uid for uid in batch if uid not in recorded]
            if rest:
                found += list(conn.execute(every.where(sample.c.url_id.in_(rest))))
        for sid, uid, state, is_blocked in found:
            if uid in flagged:
                seen.add(uid)
            if state == State.TAKEN_DOWN.value:
                report.problems.append(Problem(layout.IDS, f"sample {uid} (ledger id {sid}) is taken down but in the release", "not taken down", state))
            elif is_blocked:
                report.problems.append(Problem(layout.IDS, f"sample {uid} (ledger id {sid}) is on the blocklist but in the release", "not blocklisted", "blocklisted"))

    batch: list[str] = []
    with open(ids_file, encoding="utf-8") as f:
        for line in f:
            batch.append(line.rstrip("\n"))
            if len(batch) >= _LEDGER_BATCH:
                check(batch)
                batch = []
    if batch:
        check(batch)
    return seen
