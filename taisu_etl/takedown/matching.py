"""Which samples a takedown request covers.

Exact matches come first (sample id, TaiSu id, normalised URL, sha256, or every URL of a host).
Then the picture itself: every sample with the same stored bytes (sha256), every stored image
whose perceptual hash is within the dedup distance of a matched one or of the supplied file's
(found through the `image_band` index, as dedup finds near duplicates), and every sample that
dedup marked a duplicate of a matched one. States do not matter: a sample taken down already is
matched again, so re-processing a request finds the same set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import image_band, sample
from taisu_etl.images.dedup import hamming, phash_bands
from taisu_etl.takedown.guard import host_and_parents, host_of
from taisu_etl.urls import url_id

_CHUNK = 400
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


def _direct(conn: sa.Connection, kind: str, value: str) -> list[int]:
    s = sample.c
    if kind == "sample":
        cond = s.url_id == value
    elif kind == "taisu_id":
        cond = s.taisu_id == value
    elif kind == "url":
        cond = s.url_id == url_id(value)
    elif kind in ("sha256", "image"):
        cond = s.sha256 == value
    elif kind == "domain":
        # No index can answer "ends with this host" for every scheme and port, and a domain request
        # is rare: the LIKE narrows the scan, host_matches decides exactly.
        rows = conn.execute(sa.select(s.id, s.url).where(s.url.like(f"%{value}%"))).all()
        return [sid for sid, url in rows if host_matches(url, value)]
    else:
        raise ValueError(f"unknown selector kind {kind!r}")
    ids = list(conn.execute(sa.select(s.id).where(cond)).scalars())
    if kind == "url":
        # url_id is a hash of the URL: confirm, so a hash collision can never take the wrong image down.
        confirmed = set(conn.execute(sa.select(s.id).where(s.id.in_(ids), s.url == value)).scalars()) if ids else set()
        ids = [i for i in ids if i in confirmed]
    return ids


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _near(conn: sa.Connection, phashes: Iterable[str], max_distance: int) -> list[tuple[int, int]]:
    """(sample id, distance) of every image with a perceptual hash within `max_distance` of one of `phashes`."""
    wanted = sorted(set(p for p in phashes if p))
    if not wanted:
        return []
    pairs = sorted({(i, v) for p in wanted for i, v in enumerate(phash_bands(p, max_distance + 1))})
    found: dict[int, str] = {}
    for chunk in _chunks(pairs):
        cond = sa.or_(*[sa.and_(image_band.c.band == b, image_band.c.value == v) for b, v in chunk])
        rows = conn.execute(
            sa.select(sample.c.id, sample.c.phash).select_from(image_band.join(sample, sample.c.id == image_band.c.sample_id)).where(cond)
        )
        found.update({sid: ph for sid, ph in rows if ph})
    out = []
    for sid, ph in found.items():
        best = min(hamming(ph, p) for p in wanted)
        if best <= max_distance:
            out.append((sid, best))
    return out


def find_matches(ledger: Ledger, request: Mapping[str, Any], *, max_distance: int) -> list[Match]:
    """Every sample request `request` (a takedown_request row) covers, sorted by sample id."""
    kind, value = request["kind"], request["value"]
    details = request.get("details") or {}

    def run(conn: sa.Connection) -> list[Match]:
        best: dict[int, Match] = {}

        def add(sid: int, how: str, distance: int | None = None) -> None:
            old = best.get(sid)
            if old is None or _RANK[how] < _RANK[old.how] or (how == old.how == "phash" and (distance or 0) < (old.distance or 0)):
                best[sid] = Match(sid, how, distance)

        direct_how = "sha256" if kind == "image" else kind
        for sid in _direct(conn, kind, value):
            add(sid, direct_how)
        s = sample.c
        seeds = list(best)
        hashes: set[str] = set()
        phashes: set[str] = {details["phash"]} if kind == "image" and details.get("phash") else set()
        for chunk in _chunks(seeds):
            for sha, ph in conn.execute(sa.select(s.sha256, s.phash).where(s.id.in_(chunk))):
                if sha:
                    hashes.add(sha)
                if ph:
                    phashes.add(ph)
        for chunk in _chunks(sorted(hashes)):
            for sid in conn.execute(sa.select(s.id).where(s.sha256.in_(chunk))).scalars():
                add(sid, "sha256")
        for sid, distance in _near(conn, phashes, max_distance):
            add(sid, "phash", distance)
        # Duplicates follow their original, however many hops dedup chained them.
        frontier = list(best)
        while frontier:
            nxt: list[int] = []
            for chunk in _chunks(frontier):
                for sid in conn.execute(sa.select(s.id).where(s.duplicate_of.in_(chunk))).scalars():
                    if sid not in best:
                        add(sid, "duplicate_of")
                        nxt.append(sid)
            frontier = nxt
        return [best[k] for k in sorted(best)]

    return ledger.read(run)
