"""Never again: the blocklist checks the stages make, and the sweep that lets a takedown win a race.

A takedown commits, in this order: its blocklist rows (URL, host, sha256, perceptual hash), the
matched samples' state `taken_down`, and only then deletes their objects and strips their
embedding vectors. A stage that is between its own check and its write when that happens loses
the race this way:

- its ledger move is guarded by the source state, so a sample that became `taken_down` in the
  meantime is not moved and gets no event from the stage;
- after the move the stage calls `sweep_after_move` on the batch: any sample of it that is now
  taken down or blocklisted has the objects the stage wrote for it deleted (every version), unless
  a sample that is still live uses the same content-addressed key;
- `strip_embeddings` does the same for an embeddings file the stage wrote.

Either the takedown's state change committed before the sweep's read (the sweep sees it), or
after it, and then the takedown's own deletion runs after the stage's write and sees its object.

The checks are cheap enough for every batch: URL and host are one indexed query per batch;
sha256 and perceptual hash are matched in memory against a per-process copy of the image
blocklist that one query per batch brings up to date: it reads the rows added since the last
look, and everything again only when the count of rows shows one that committed out of id order
(blocklist rows are never deleted; a deletion is noticed only while the count differs).
"""

from __future__ import annotations

import io
import logging
import re
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import blocklist, sample, sample_state
from taisu_etl.images.dedup import DEFAULT_DISTANCE, NearDuplicateIndex
from taisu_etl.storage import ObjectStore
from taisu_etl.vocab import State

log = logging.getLogger(__name__)

_SQLITE_CHUNK, _PG_CHUNK = 500, 10_000  # values per IN list: SQLite's bound-parameter limit is the tighter one
_IMAGE_KINDS = ("sha256", "phash")
_IMAGE_KEY = re.compile(r"^images/[0-9a-f]{2}/[0-9a-f]{2}/(?P<sha>[0-9a-f]{64})\.[a-z0-9]+$")
_ROW_COLUMNS = (sample.c.id, sample.c.url, sample.c.sha256, sample.c.phash, sample.c.object_key, sample_state.c.state)


def host_of(url: str | None) -> str | None:
    """The host of a URL as a `host` blocklist entry spells it: lower case, no port, no user info,
    no trailing dot; an IPv6 literal keeps its brackets (as in a normalised URL). None if it has none."""
    if not url:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    host = (host or "").lower().rstrip(".")
    if not host:
        return None
    return f"[{host}]" if ":" in host else host


def host_and_parents(host: str) -> list[str]:
    """`host` and every domain it is under ("a.b.cn" -> a.b.cn, b.cn, cn): a `host` entry blocks
    its subdomains too, as a domain takedown matches them."""
    if host.startswith("["):
        return [host]
    parts = host.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def _chunks(ledger: Ledger, values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    size = _PG_CHUNK if ledger.is_postgres else _SQLITE_CHUNK
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _hits(ledger: Ledger, kinds: Sequence[str], values: Iterable[str]) -> set[tuple[str, str]]:
    """(kind, value) of the blocklist rows of `kinds` holding any of `values`: the unique (kind, value) index."""
    wanted = sorted({v for v in values if v})
    if not wanted:
        return set()
    b = blocklist.c

    def run(conn: sa.Connection) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for chunk in _chunks(ledger, wanted):
            found.update((k, v) for k, v in conn.execute(sa.select(b.kind, b.value).where(b.kind.in_(kinds), b.value.in_(chunk))))
        return found

    return ledger.read(run)


def blocked_urls(ledger: Ledger, urls: Iterable[str]) -> set[str]:
    """The normalised URLs among `urls` that are on the blocklist (kind `url`)."""
    return {v for _, v in _hits(ledger, ("url",), urls)}


def blocked_hosts(ledger: Ledger, hosts: Iterable[str]) -> set[str]:
    """The hosts among `hosts` (spelled as `host_of` does) that are on the blocklist (kind `host`)."""
    return {v for _, v in _hits(ledger, ("host",), hosts)}


def blocked_by_url(ledger: Ledger, rows: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """{sample id: "url" | "host"} for the rows (with `id` and a normalised `url`) whose URL is
    blocklisted, or whose host or a domain above it is; one query."""
    listed = [(r["id"], r.get("url"), host_and_parents(h) if (h := host_of(r.get("url"))) else []) for r in rows]
    hits = _hits(ledger, ("url", "host"), [v for _, url, hosts in listed for v in (url, *hosts) if v])
    out: dict[int, str] = {}
    for sid, url, hosts in listed:
        if url and ("url", url) in hits:
            out[sid] = "url"
        elif any(("host", h) in hits for h in hosts):
            out[sid] = "host"
    return out


class _position(FunctionElement):  # type: ignore[type-arg]
    """1-based position of a substring, 0 when absent: instr() on SQLite, strpos() on Postgres."""

    type = sa.Integer()
    inherit_cache = True
    name = "instr"


@compiles(_position)
def _position_default(element: _position, compiler: Any, **kw: Any) -> str:
    return f"instr({compiler.process(element.clauses, **kw)})"


@compiles(_position, "postgresql")
def _position_postgres(element: _position, compiler: Any, **kw: Any) -> str:
    return f"strpos({compiler.process(element.clauses, **kw)})"


def sql_host(url: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """`host_of` in SQL for a normalised URL (scheme://[user@]host[:port]/...), on SQLite and Postgres."""

    def substr(*args: Any) -> sa.ColumnElement[str]:
        return sa.func.substr(*args, type_=sa.Text)

    def cat(a: Any, b: Any) -> sa.ColumnElement[str]:
        return sa.type_coerce(a, sa.Text).op("||")(b)

    after = substr(url, _position(url, "://") + 3)
    authority = substr(after, 1, _position(cat(after, "/"), "/") - 1)  # the appended "/" keeps the length >= 0
    host_port = substr(authority, _position(authority, "@") + 1)
    host = sa.case(
        (host_port.like("[%"), substr(host_port, 1, _position(host_port, "]"))),
        else_=substr(host_port, 1, _position(cat(host_port, ":"), ":") - 1),
    )
    return sa.func.rtrim(sa.func.lower(host, type_=sa.Text), ".", type_=sa.Text)


def host_blocked_sql(url: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """True when the URL's host, or a domain it is under, is a `host` blocklist entry.

    Evaluated per blocklist host entry (an index range on kind = 'host'), so it costs nothing
    while there are none and a few string operations per sample and entry otherwise; domain
    takedowns are few. ".host" ends with ".entry" exactly when the host is the entry or under it.
    """
    b = blocklist.alias("blocked_host")
    escaped = b.c.value
    for char in ("\\", "%", "_"):
        escaped = sa.func.replace(escaped, char, "\\" + char, type_=sa.Text)
    dotted = sa.literal(".", sa.Text).op("||")(sql_host(url))
    pattern = sa.literal("%.", sa.Text).op("||")(escaped)
    return sa.exists().where(b.c.kind == "host", dotted.like(pattern, escape="\\"))


class ImageBlocklist:
    """This process's copy of the blocklisted sha256 values and perceptual hashes, kept current by `refresh`."""

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self.sha256: set[str] = set()
        self._phashes: set[str] = set()
        self._index: NearDuplicateIndex[str] = NearDuplicateIndex(max_distance)
        self._top = 0  # the largest blocklist id seen
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.sha256) + len(self._phashes)

    def match(self, sha256: str | None, phash: str | None) -> str | None:
        """"sha256" or "phash" when the image is blocklisted (the hash within the distance), else None."""
        if sha256 and sha256 in self.sha256:
            return "sha256"
        if phash and (phash in self._phashes or self._index.query(phash)):
            return "phash"
        return None

    def refresh(self, ledger: Ledger) -> "ImageBlocklist":
        """Bring the copy up to date with one query; returns self."""
        with self._lock:
            count, rows = self._read(ledger, after=self._top)
            self._add(rows)
            if len(self) != count:
                # A row committed out of id order (or one was removed): read everything again,
                # into new sets swapped in whole, so that a concurrent `match` never sees a
                # half-loaded copy.
                _, rows = self._read(ledger, after=0)
                sha256: set[str] = set()
                phashes: set[str] = set()
                index: NearDuplicateIndex[str] = NearDuplicateIndex(self.max_distance)
                _add_into(rows, sha256, phashes, index)
                self.sha256, self._phashes, self._index = sha256, phashes, index
        return self

    def _read(self, ledger: Ledger, *, after: int) -> tuple[int, list[tuple[str, str, int]]]:
        # One statement, so the count and the rows come from one snapshot: the count says
        # whether the rows read so far are all there are.
        b = blocklist.c
        head = sa.select(
            sa.literal("#"), sa.literal(""),
            sa.select(sa.func.coalesce(sa.func.max(b.id), 0)).scalar_subquery(),
            sa.select(sa.func.count()).select_from(blocklist).where(b.kind.in_(_IMAGE_KINDS)).scalar_subquery(),
        )
        new = sa.select(b.kind, b.value, b.id, sa.literal(0)).where(b.kind.in_(_IMAGE_KINDS), b.id > after)
        rows = ledger.read(lambda conn: conn.execute(sa.union_all(head, new)).all())
        header = next(r for r in rows if r[0] == "#")
        self._top = int(header[2])
        return int(header[3]), [(k, v, i) for k, v, i, _ in rows if k != "#"]

    def _add(self, rows: Iterable[tuple[str, str, int]]) -> None:
        _add_into(rows, self.sha256, self._phashes, self._index)


def _add_into(rows: Iterable[tuple[str, str, int]], sha256: set[str], phashes: set[str], index: NearDuplicateIndex[str]) -> None:
    for kind, value, _ in rows:
        if kind == "sha256":
            sha256.add(value)
        elif value not in phashes:
            try:
                index.add(value, value)
            except ValueError:
                log.warning("blocklist phash %r is not a 16-hex-digit perceptual hash; only an exact match counts", value)
            phashes.add(value)


_CACHE: "weakref.WeakKeyDictionary[Ledger, dict[int, ImageBlocklist]]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def image_blocklist(ledger: Ledger, max_distance: int = DEFAULT_DISTANCE) -> ImageBlocklist:
    """The current image blocklist for `ledger` (kept per process, refreshed by one query per call)."""
    with _CACHE_LOCK:
        per = _CACHE.setdefault(ledger, {})
        copy = per.get(max_distance)
        if copy is None:
            copy = per[max_distance] = ImageBlocklist(max_distance)
    return copy.refresh(ledger)


def blocked_images(ledger: Ledger, rows: Iterable[Mapping[str, Any]], *, max_distance: int = DEFAULT_DISTANCE) -> dict[int, str]:
    """{sample id: "sha256" | "phash"} for the rows (with `id`, `sha256`, `phash`) whose image is blocklisted."""
    listed = list(rows)
    if not any(r.get("sha256") or r.get("phash") for r in listed):
        return {}
    images = image_blocklist(ledger, max_distance)
    out: dict[int, str] = {}
    for r in listed:
        why = images.match(r.get("sha256"), r.get("phash"))
        if why:
            out[r["id"]] = why
    return out


def blocked_samples(ledger: Ledger, rows: Iterable[Mapping[str, Any]], *, max_distance: int = DEFAULT_DISTANCE) -> dict[int, str]:
    """{sample id: "url" | "host" | "sha256" | "phash"}: rows blocklisted by URL, host or image."""
    listed = list(rows)
    out = blocked_images(ledger, listed, max_distance=max_distance)
    out.update(blocked_by_url(ledger, listed))  # the URL is the more specific answer
    return out


def _rows(ledger: Ledger, sample_ids: Iterable[int]) -> list[dict[str, Any]]:
    ids = sorted(set(sample_ids))

    def run(conn: sa.Connection) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in _chunks(ledger, ids):
            query = sa.select(*_ROW_COLUMNS).join(sample_state, sample_state.c.sample_id == sample.c.id).where(sample.c.id.in_(chunk))
            out.extend(dict(r) for r in conn.execute(query).mappings())
        return out

    return ledger.read(run) if ids else []


def _doomed(ledger: Ledger, rows: Sequence[Mapping[str, Any]], max_distance: int) -> dict[int, str]:
    out = blocked_samples(ledger, rows, max_distance=max_distance)
    out.update({r["id"]: "taken_down" for r in rows if r["state"] == State.TAKEN_DOWN.value})
    return out


def taken_down_or_blocked(ledger: Ledger, sample_ids: Iterable[int], *, max_distance: int = DEFAULT_DISTANCE) -> dict[int, str]:
    """{sample id: "taken_down" | "url" | "host" | "sha256" | "phash"} for the samples that must not be kept."""
    return _doomed(ledger, _rows(ledger, sample_ids), max_distance)


def _sha_of_key(key: str) -> str | None:
    m = _IMAGE_KEY.match(key)
    return m.group("sha") if m else None


def _live_keys(ledger: Ledger, keys: set[str], doomed: Mapping[int, str], max_distance: int) -> set[str]:
    """Keys among `keys` that a sample outside `doomed`, neither taken down nor blocklisted, still uses."""
    shas = sorted({s for k in keys if (s := _sha_of_key(k))})
    others = [k for k in keys if _sha_of_key(k) is None]
    base = sa.select(*_ROW_COLUMNS).join(sample_state, sample_state.c.sample_id == sample.c.id)

    def run(conn: sa.Connection) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        # Image keys are content addressed (the key names the sha256), so the sha256 index finds
        # their users; any other key is looked up by object_key itself (not indexed, and rare).
        for chunk in _chunks(ledger, shas):
            found.extend(dict(r) for r in conn.execute(base.where(sample.c.sha256.in_(chunk))).mappings())
        for chunk in _chunks(ledger, others):
            found.extend(dict(r) for r in conn.execute(base.where(sample.c.object_key.in_(chunk))).mappings())
        return found

    users = [r for r in ledger.read(run) if r["object_key"] in keys and r["id"] not in doomed]
    if not users:
        return set()
    gone = _doomed(ledger, users, max_distance)
    return {r["object_key"] for r in users if r["id"] not in gone}


def sweep_after_move(
    ledger: Ledger, store: ObjectStore, sample_ids: Iterable[int], *, stored: Mapping[int, Iterable[str]] | None = None,
    max_distance: int = DEFAULT_DISTANCE,
) -> list[str]:
    """After a stage's move: delete every version of the objects of the batch's samples that are
    now taken down or blocklisted; returns the keys deleted.

    Looked at per sample: its row's `object_key` and the keys in `stored[sample id]` (what the
    stage wrote for it, which its row lacks when the move was refused). A stored image key whose
    sha256 is blocklisted is deleted whoever it was stored for. A key that a live sample (not in
    the batch's doomed set, not taken down, not blocklisted) still uses is kept.
    """
    extra = {sid: set(keys) for sid, keys in (stored or {}).items()}
    rows = _rows(ledger, set(sample_ids) | set(extra))
    if not rows:
        return []
    doomed = _doomed(ledger, rows, max_distance)
    keys: set[str] = set()
    for r in rows:
        if r["id"] in doomed:
            keys.update(k for k in ({r["object_key"]} | extra.get(r["id"], set())) if k)
    written = {k for ks in extra.values() for k in ks if k}
    if written - keys:
        images = image_blocklist(ledger, max_distance)
        keys.update(k for k in written - keys if (sha := _sha_of_key(k)) and sha in images.sha256)
    if not keys:
        return []
    doomed_keys = sorted(keys - _live_keys(ledger, keys, doomed, max_distance))
    for key in doomed_keys:
        versions = store.delete_all_versions(key)
        log.info("deleted %s (%d versions): its sample was taken down or is blocklisted", key, versions)
    return doomed_keys


def strip_embeddings(
    ledger: Ledger, store: ObjectStore, key: str, sample_ids: Iterable[int], *, max_distance: int = DEFAULT_DISTANCE,
) -> list[int]:
    """Remove from the embeddings file `key` (npz: ids, image, text) the vectors of samples that are
    taken down or blocklisted; returns their ids. `sample_ids`: the ids the caller wrote into it.

    A rewritten file's older versions are deleted, and a file left empty is deleted whole. After
    each rewrite the file's ids are checked again, so a takedown that committed while it was being
    rewritten (and whose own strip may have read the file before this write) is still honoured.
    """
    import numpy as np

    if not taken_down_or_blocked(ledger, sample_ids, max_distance=max_distance):
        return []
    removed: list[int] = []
    while True:
        try:
            data = store.get(key)
        except KeyError:
            return removed
        with np.load(io.BytesIO(data)) as npz:
            arrays = {name: npz[name] for name in npz.files}
        ids = arrays["ids"]
        gone = taken_down_or_blocked(ledger, (int(i) for i in ids), max_distance=max_distance)
        if not gone:
            return removed
        keep = ~np.isin(ids, np.fromiter(gone, dtype=ids.dtype, count=len(gone)))
        removed.extend(int(i) for i in ids[~keep])
        if not keep.any():
            store.delete_all_versions(key)
            log.info("deleted %s: every sample in it was taken down or is blocklisted", key)
            return removed
        buf = io.BytesIO()
        np.savez(buf, **{name: a[keep] if a.shape[:1] == ids.shape else a for name, a in arrays.items()})
        store.put(key, buf.getvalue(), content_type="application/octet-stream")
        store.delete_noncurrent_versions(key)  # the old bytes still hold the vectors
        log.info("removed %d vectors from %s: taken down or blocklisted", int((~keep).sum()), key)
