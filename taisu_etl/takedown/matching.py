"""Which samples a takedown request covers.

Exact matches come first (sample id, TaiSu id, normalised URL, sha256, or every URL of a host).
Then the picture itself: every sample with the same stored bytes (sha256), every stored image
whose perceptual hash is within the dedup distance of a matched one or of the supplied file's
(found through the `image_band` index, as dedup finds near duplicates), and every sample that
dedup marked a duplicate of a matched one. States do not matter: a sample taken down already is
matched again, so re-processing a request finds the same set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import image_band, sample
from taisu_etl.images.dedup import phash_bands, phash_int64
from taisu_etl.takedown.guard import host_and_parents, host_of
from taisu_etl.urls import url_id

_CHUNK = 500  # values per IN list: well within SQLite's bound-parameter limit
# Order of preference when one sample is reached several ways: the most direct reason is kept.
_RANK = {"sample": 0, "taisu_id": 0, "url": 0, "domain": 0, "sha256": 1, "phash": 2, "duplicate_of": 3}


@dataclass(frozen=True)
class Match:
    """One sample a request covers, and how it was reached."""

    sample_id: int
    how: str
    distance: int | None = None


def host_matches(url: str | None, host: str) -> bool:
    """True when `url` is on `host` or one of its subdomains (as the blocklist's `host` entries match)."""
    name = host_of(url)
    return name is not None and host in host_and_parents(name)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Which sample column each exact selector is looked up by (url: its url_id, a hash of the URL).
_COLUMN = {"sample": sample.c.url_id, "taisu_id": sample.c.taisu_id, "url": sample.c.url_id, "sha256": sample.c.sha256,
           "image": sample.c.sha256}


def _direct(conn: sa.Connection, requests: Sequence[Mapping[str, Any]]) -> dict[int, list[int]]:
    """{request id: sample ids} of the exact selectors; one indexed query per kind and chunk."""
    s = sample.c
    out: dict[int, list[int]] = {r["id"]: [] for r in requests}
    value_of = {r["id"]: r["value"] for r in requests}
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in requests:
        if r["kind"] == "domain":
            # No index answers "on this host or below" for every scheme and port, and a domain
            # request is rare: the LIKE narrows the scan, host_matches decides exactly.
            rows = conn.execute(sa.select(s.id, s.url).where(s.url.like(f"%{r['value']}%"))).all()
            out[r["id"]] = [sid for sid, url in rows if host_matches(url, r["value"])]
        elif r["kind"] in _COLUMN:
            key = url_id(r["value"]) if r["kind"] == "url" else r["value"]
            by_key[(r["kind"], key)].append(r["id"])
        else:
            raise ValueError(f"unknown selector kind {r['kind']!r}")
    for kind in sorted({k for k, _ in by_key}):
        keys = sorted(v for k, v in by_key if k == kind)
        column = _COLUMN[kind]
        for chunk in _chunks(keys):
            for sid, value, url in conn.execute(sa.select(s.id, column, s.url).where(column.in_(chunk))):
                for rid in by_key[(kind, value)]:
                    # url_id is a hash of the URL: confirm, so a collision can never take the wrong image down.
                    if kind != "url" or url == value_of[rid]:
                        out[rid].append(sid)
    return out


def _near(conn: sa.Connection, wanted: Mapping[str, set[int]], max_distance: int) -> dict[int, list[tuple[int, int]]]:
    """{request id: [(sample id, distance)]} of every stored image whose perceptual hash is within
    `max_distance` of a hash in `wanted` (hash -> the requests that look for it).

    Candidates share a band with a wanted hash (pigeonhole: within distance d, one of d+1 bands is
    equal); the covering index holds each candidate's whole hash, and Postgres keeps only those
    within the distance (bit_count of the XOR), so neither the sample rows nor the near misses
    (about a hundred per band value at 1M images) leave the index.
    """
    by_band: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for ph in wanted:
        for band, value in enumerate(phash_bands(ph, max_distance + 1)):
            by_band[band].append((value, phash_int64(ph)))
    b = image_band.c
    pg = conn.dialect.name == "postgresql"
    best: dict[tuple[int, str], int] = {}
    for band, probes in sorted(by_band.items()):
        for chunk in _chunks(sorted(set(probes))):
            if pg:
                probe = sa.values(sa.column("value", sa.String), sa.column("want", sa.BigInteger), name="probe").data(list(chunk))
                query = (sa.select(b.sample_id, b.phash, probe.c.want).join(probe, sa.and_(b.band == band, b.value == probe.c.value))
                         .where(sa.func.bit_count(sa.cast(b.phash.op("#")(probe.c.want), postgresql.BIT(64))) <= max_distance))
                rows = conn.execute(query).all()
            else:  # SQLite cannot name a VALUES list's columns: fetch by value, pair up here
                wants: dict[str, list[int]] = defaultdict(list)
                for value, want in chunk:
                    wants[value].append(want)
                found = conn.execute(sa.select(b.sample_id, b.phash, b.value).where(b.band == band, b.value.in_(sorted(wants))))
                rows = [(sid, phash, want) for sid, phash, value in found for want in wants[value]]
            for sid, phash, want in rows:
                if phash is None:
                    continue
                distance = ((phash ^ want) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()
                if distance <= max_distance:
                    best[(sid, f"{want & 0xFFFF_FFFF_FFFF_FFFF:016x}")] = distance
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (sid, want_hex), distance in best.items():
        for rid in wanted[want_hex]:
            out[rid].append((sid, distance))
    return out


def find_matches_many(ledger: Ledger, requests: Sequence[Mapping[str, Any]], *, max_distance: int) -> dict[int, list[Match]]:
    """Every sample each request (a takedown_request row) covers, sorted by sample id; the requests
    are matched together, so a batch of thousands costs a few queries per kind, not per request."""

    def run(conn: sa.Connection) -> dict[int, list[Match]]:
        best: dict[int, dict[int, Match]] = {r["id"]: {} for r in requests}

        def add(rid: int, sid: int, how: str, distance: int | None = None) -> None:
            old = best[rid].get(sid)
            if old is None or _RANK[how] < _RANK[old.how] or (how == old.how == "phash" and (distance or 0) < (old.distance or 0)):
                best[rid][sid] = Match(sid, how, distance)

        direct = _direct(conn, requests)
        for r in requests:
            for sid in direct[r["id"]]:
                add(r["id"], sid, "sha256" if r["kind"] == "image" else r["kind"])
        s = sample.c
        # The picture itself: the same bytes (sha256) and near duplicates (pHash) of every seed.
        seeds = sorted({sid for ms in best.values() for sid in ms})
        hashes: dict[int, tuple[str | None, str | None]] = {}
        for chunk in _chunks(seeds):
            hashes.update({sid: (sha, ph) for sid, sha, ph in conn.execute(sa.select(s.id, s.sha256, s.phash).where(s.id.in_(chunk)))})
        want_sha: dict[str, set[int]] = defaultdict(set)
        want_ph: dict[str, set[int]] = defaultdict(set)
        for r in requests:
            if r["kind"] == "image" and (r.get("details") or {}).get("phash"):
                want_ph[r["details"]["phash"]].add(r["id"])
            for sid in list(best[r["id"]]):
                sha, ph = hashes.get(sid, (None, None))
                if sha:
                    want_sha[sha].add(r["id"])
                if ph:
                    want_ph[ph].add(r["id"])
        for chunk in _chunks(sorted(want_sha)):
            for sid, sha in conn.execute(sa.select(s.id, s.sha256).where(s.sha256.in_(chunk))):
                for rid in want_sha[sha]:
                    add(rid, sid, "sha256")
        for rid, near in _near(conn, want_ph, max_distance).items():
            for sid, distance in near:
                add(rid, sid, "phash", distance)
        # Duplicates follow their original, however many hops dedup chained them.
        frontier: dict[int, set[int]] = defaultdict(set)
        for rid, ms in best.items():
            for sid in ms:
                frontier[sid].add(rid)
        while frontier:
            nxt: dict[int, set[int]] = defaultdict(set)
            for chunk in _chunks(sorted(frontier)):
                for sid, original in conn.execute(sa.select(s.id, s.duplicate_of).where(s.duplicate_of.in_(chunk))):
                    for rid in frontier[original]:
                        if sid not in best[rid]:
                            add(rid, sid, "duplicate_of")
                            nxt[sid].add(rid)
            frontier = nxt
        return {rid: [ms[k] for k in sorted(ms)] for rid, ms in best.items()}

    return ledger.read(run)


def find_matches(ledger: Ledger, request: Mapping[str, Any], *, max_distance: int) -> list[Match]:
    """Every sample one request covers; see `find_matches_many`."""
    return find_matches_many(ledger, [request], max_distance=max_distance)[request["id"]]
