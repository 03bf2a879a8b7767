"""Hamming distance, pigeonhole bands and the in-memory duplicate indexes."""

from __future__ import annotations

import random

import pytest

from taisu_etl.images import DuplicateIndex, NearDuplicateIndex, hamming, phash_bands


def _hex(value: int) -> str:
    return f"{value:016x}"


def _flip(value: int, bits: int, rng: random.Random) -> int:
    for pos in rng.sample(range(64), bits):
        value ^= 1 << pos
    return value


def test_hamming() -> None:
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2
    assert hamming("ABCDEF0123456789", "abcdef0123456789") == 0


@pytest.mark.parametrize("bad", ["", "123", "0" * 17, "g" * 16])
def test_hamming_refuses_what_is_not_a_phash(bad: str) -> None:
    with pytest.raises(ValueError):
        hamming(bad, "0" * 16)


def test_band_layout() -> None:
    assert phash_bands("ffffffffffffffff", 5) == ["1fff", "1fff", "1fff", "1fff", "fff"]  # 13*4 + 12
    assert phash_bands("0123456789abcdef", 1) == ["0123456789abcdef"]
    assert phash_bands("0123456789abcdef", 4) == ["0123", "4567", "89ab", "cdef"]
    assert phash_bands("8000000000000000", 5) == ["1000", "0000", "0000", "0000", "000"]
    assert len(phash_bands("0" * 16, 64)) == 64
    assert max(len(v) for b in range(1, 65) for v in phash_bands("f" * 16, b)) == 16
    with pytest.raises(ValueError):
        phash_bands("0" * 16, 0)


@pytest.mark.parametrize("distance", [0, 1, 2, 4, 6, 8])
def test_pigeonhole_any_hash_within_distance_shares_a_band(distance: int) -> None:
    rng = random.Random(distance)
    for _ in range(3000):
        a = rng.getrandbits(64)
        b = _flip(a, rng.randint(0, distance), rng)
        pairs_a = set(enumerate(phash_bands(_hex(a), distance + 1)))
        pairs_b = set(enumerate(phash_bands(_hex(b), distance + 1)))
        assert pairs_a & pairs_b, (_hex(a), _hex(b))


def test_index_query_equals_brute_force() -> None:
    rng = random.Random(42)
    index: NearDuplicateIndex[int] = NearDuplicateIndex(max_distance=6)
    stored: list[int] = []
    seeds = [rng.getrandbits(64) for _ in range(40)]
    for i in range(3000):
        # Clusters of near hashes plus uniform noise, so every distance 0..6 occurs.
        value = _flip(rng.choice(seeds), rng.randint(0, 8), rng) if i % 2 else rng.getrandbits(64)
        stored.append(value)
        index.add(i, _hex(value))
    assert len(index) == 3000
    for q in range(300):
        probe = _flip(rng.choice(seeds), rng.randint(0, 5), rng) if q % 2 else rng.getrandbits(64)
        for d in (0, 3, 6):
            expected = sorted(
                ((i, (v ^ probe).bit_count()) for i, v in enumerate(stored) if (v ^ probe).bit_count() <= d),
                key=lambda x: (x[1], x[0]),
            )
            assert index.query(_hex(probe), d) == expected


def test_index_refuses_a_distance_it_was_not_built_for() -> None:
    index: NearDuplicateIndex[str] = NearDuplicateIndex(max_distance=2)
    with pytest.raises(ValueError):
        index.query("0" * 16, 3)


def test_duplicate_index_links_to_the_first_sample() -> None:
    index: DuplicateIndex[str] = DuplicateIndex(max_distance=4)
    a_hash = "00000000ffffffff"
    assert index.check_and_add("a", "sha-a", a_hash) is None
    exact = index.check_and_add("b", "sha-a", "ffffffffffffffff")  # same bytes, whatever the pHash
    assert exact is not None and (exact.reason, exact.first, exact.distance) == ("duplicate", "a", 0)
    near = index.check_and_add("c", "sha-c", _hex(int(a_hash, 16) ^ 0b111))
    assert near is not None and (near.reason, near.first, near.distance) == ("near_duplicate", "a", 3)
    # "c" was not kept, so something 3 bits from "c" but 6 from "a" is new: no drift along chains.
    d_hash = _hex(int(a_hash, 16) ^ 0b111111)
    assert index.check_and_add("d", "sha-d", d_hash) is None
    assert len(index) == 2
    # With two kept candidates, the nearer one wins.
    e = index.check("sha-e", _hex(int(a_hash, 16) ^ 0b001111))  # 4 from "a", 2 from "d"
    assert e is not None and (e.first, e.distance) == ("d", 2)


def test_band_table_lookup_as_a_database_does_it() -> None:
    # (band, value) -> ids, the shape of the ledger's image_band table: candidates by equality
    # on any of the query's pairs, then the real distance. Must equal a brute-force scan.
    rng = random.Random(9)
    d = 4
    table: dict[tuple[int, str], list[int]] = {}
    stored = []
    seeds = [rng.getrandbits(64) for _ in range(30)]
    for i in range(2000):
        value = _flip(rng.choice(seeds), rng.randint(0, 7), rng) if i % 2 else rng.getrandbits(64)
        stored.append(_hex(value))
        for pair in enumerate(phash_bands(stored[-1], d + 1)):
            table.setdefault(pair, []).append(i)
    for _ in range(200):
        probe = _hex(_flip(rng.choice(seeds), rng.randint(0, 6), rng))
        candidates = {i for pair in enumerate(phash_bands(probe, d + 1)) for i in table.get(pair, [])}
        found = {i for i in candidates if hamming(stored[i], probe) <= d}
        assert found == {i for i, h in enumerate(stored) if hamming(h, probe) <= d}


def test_bands_give_back_the_whole_hash_and_its_signed_integer() -> None:
    from taisu_etl.images.dedup import phash_from_bands, phash_int64

    for ph in ("0000000000000000", "ffffffffffffffff", "8000000000000001", "0123456789abcdef"):
        for bands in (1, 3, 5, 9):
            assert phash_from_bands(phash_bands(ph, bands)) == ph
        # XOR and popcount of the signed form is the Hamming distance, as in Postgres' bit_count.
        assert ((phash_int64(ph) ^ phash_int64("0000000000000000")) & (2**64 - 1)).bit_count() == hamming(ph, "0000000000000000")
    assert phash_int64("ffffffffffffffff") == -1 and phash_int64("7fffffffffffffff") == 2**63 - 1
