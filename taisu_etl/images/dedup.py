"""Exact and near-duplicate detection on the hashes `normalise_image` produces.

Exact duplicates share the sha256 of the normalised JPEG (same pixels, whatever metadata or
trailing bytes the sources had). Near duplicates have 64-bit pHashes within a Hamming distance.

Finding near duplicates without comparing against every stored hash uses the pigeonhole
principle: cut the 64 bits into d+1 bands; two hashes that differ in at most d bits cannot have
a differing bit in every band, so they agree exactly on at least one band. An index keyed by
(band number, band value) therefore returns every hash within distance d as a candidate (no
false negatives); the candidates are then checked with the real distance (no false
positives). A database does the same with a (band, value) table from `phash_bands` and an
ordinary index. With d=4 the bands are 13 bits wide: a uniformly random stored hash shares a
given band with probability 1/8192, so a query reads about 5/8192 of the table as candidates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

HASH_BITS: Final = 64
DEFAULT_DISTANCE: Final = 4

SampleId = TypeVar("SampleId", bound=Hashable)


def _parse(phash_hex: str) -> int:
    if len(phash_hex) != HASH_BITS // 4:
        raise ValueError(f"a pHash is {HASH_BITS // 4} hex digits, not {phash_hex!r}")
    try:
        return int(phash_hex, 16)
    except ValueError:
        raise ValueError(f"not a hex pHash: {phash_hex!r}") from None


def hamming(a_hex: str, b_hex: str) -> int:
    """Number of differing bits between two 16-hex-digit pHashes."""
    return (_parse(a_hex) ^ _parse(b_hex)).bit_count()


def _band_layout(bands: int) -> list[tuple[int, int]]:
    """(shift, width) of each band, high bits first; widths differ by at most one bit."""
    if not 1 <= bands <= HASH_BITS:
        raise ValueError(f"bands must be between 1 and {HASH_BITS}, not {bands}")
    base, extra = divmod(HASH_BITS, bands)
    layout = []
    top = HASH_BITS
    for i in range(bands):
        width = base + (1 if i < extra else 0)
        top -= width
        layout.append((top, width))
    return layout


def phash_bands(phash_hex: str, bands: int = DEFAULT_DISTANCE + 1) -> list[str]:
    """The pHash cut into `bands` contiguous bit ranges, high bits first, each as zero-padded hex.

    Element i is band i's value: a database stores (i, value) pairs and looks up all of a query
    hash's pairs to get every stored hash within distance `bands - 1` (and some further ones,
    to be checked with `hamming`). All rows of one table must use the same band count: another
    count is another layout, so changing the recipe's phash_distance means rebuilding the bands.
    Values are at most 16 characters (one band is the whole hash).
    """
    value = _parse(phash_hex)
    return [
        f"{(value >> shift) & ((1 << width) - 1):0{(width + 3) // 4}x}"
        for shift, width in _band_layout(bands)
    ]


def phash_int64(phash_hex: str) -> int:
    """The pHash as a signed 64-bit integer (a database BIGINT): XOR and popcount give the distance."""
    value = _parse(phash_hex)
    return value - (1 << HASH_BITS) if value >= 1 << (HASH_BITS - 1) else value


def phash_from_bands(bands: Sequence[str]) -> str:
    """The pHash whose `phash_bands(_, len(bands))` are `bands` (the bands cover every bit)."""
    value = 0
    for (shift, _width), part in zip(_band_layout(len(bands)), bands):
        value |= int(part, 16) << shift
    return f"{value:016x}"


class NearDuplicateIndex(Generic[SampleId]):
    """In-memory pHash index for a shard-level pass: add hashes, query by Hamming distance.

    Built for `max_distance`; queries may ask for any distance up to it (a smaller distance
    needs fewer bands, so the index's bands still find everything).
    """

    def __init__(self, max_distance: int = DEFAULT_DISTANCE) -> None:
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"max_distance must be between 0 and {HASH_BITS - 1}")
        self.max_distance = max_distance
        self._bands = max_distance + 1
        self._layout = _band_layout(self._bands)
        self._entries: list[tuple[SampleId, int]] = []
        self._buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._layout]

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, sample_id: SampleId, phash: str) -> None:
        value = _parse(phash)
        pos = len(self._entries)
        self._entries.append((sample_id, value))
        for bucket, (shift, width) in zip(self._buckets, self._layout):
            bucket[(value >> shift) & ((1 << width) - 1)].append(pos)

    def query(self, phash: str, max_distance: int | None = None) -> list[tuple[SampleId, int]]:
        """(sample_id, distance) of every added hash within `max_distance`, nearest first and,
        at equal distance, earliest added first."""
        d = self.max_distance if max_distance is None else max_distance
        if not 0 <= d <= self.max_distance:
            raise ValueError(f"max_distance {d} is outside this index's 0..{self.max_distance}")
        value = _parse(phash)
        found: dict[int, int] = {}
        for pos in self._candidates(value):
            if pos not in found:
                distance = (self._entries[pos][1] ^ value).bit_count()
                if distance <= d:
                    found[pos] = distance
        return [(self._entries[pos][0], dist) for pos, dist in sorted(found.items(), key=lambda x: (x[1], x[0]))]

    def _candidates(self, value: int) -> Iterator[int]:
        for bucket, (shift, width) in zip(self._buckets, self._layout):
            yield from bucket.get((value >> shift) & ((1 << width) - 1), ())


@dataclass(frozen=True, slots=True)
class DuplicateMatch(Generic[SampleId]):
    """A sample found to repeat an earlier one: the reason code and the sample it links to."""

    reason: Literal["duplicate", "near_duplicate"]
    first: SampleId
    distance: int  # 0 for exact duplicates


class DuplicateIndex(Generic[SampleId]):
    """Exact (sha256) and near (pHash) duplicates of the samples kept so far, in arrival order.

    `check_and_add` links a repeat to the sample it repeats and keeps only originals in the
    index, so kept samples are pairwise further apart than the threshold and a chain of small
    edits cannot walk an index entry away from its first sample.
    """

    def __init__(self, max_distance: int = DEFAULT_DISTANCE) -> None:
        self._by_sha: dict[str, SampleId] = {}
        self._near: NearDuplicateIndex[SampleId] = NearDuplicateIndex(max_distance)

    def __len__(self) -> int:
        return len(self._by_sha)

    def check(self, sha256: str, phash: str | None) -> DuplicateMatch[SampleId] | None:
        """The kept sample this one repeats (exact match first, then the nearest), or None."""
        first = self._by_sha.get(sha256)
        if first is not None:
            return DuplicateMatch("duplicate", first, 0)
        if phash is not None:
            hits = self._near.query(phash)
            if hits:
                return DuplicateMatch("near_duplicate", hits[0][0], hits[0][1])
        return None

    def add(self, sample_id: SampleId, sha256: str, phash: str | None) -> None:
        self._by_sha.setdefault(sha256, sample_id)
        if phash is not None:
            self._near.add(sample_id, phash)

    def check_and_add(
        self, sample_id: SampleId, sha256: str, phash: str | None
    ) -> DuplicateMatch[SampleId] | None:
        """`check`, and `add` the sample when it is not a repeat."""
        match = self.check(sha256, phash)
        if match is None:
            self.add(sample_id, sha256, phash)
        return match
