"""TaiSu's ranking rule and the score cut-offs, on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from taisu_etl.models.retrieval import pair_scores, quantile_rule, taisu_rule, threshold_rule


def _unit(*rows: list[float]) -> np.ndarray:
    a = np.array(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_pair_scores_are_rowwise_cosines() -> None:
    img = np.array([[1, 0], [0, 2], [3, 4]], dtype=np.float32)
    txt = np.array([[1, 0], [1, 0], [3, 4]], dtype=np.float32)
    np.testing.assert_allclose(pair_scores(img, txt), [1.0, 0.0, 1.0], atol=1e-6)
    assert pair_scores(img, txt).dtype == np.float32
    with pytest.raises(ValueError, match="same shape"):
        pair_scores(img, txt[:2])


def test_ranks_in_one_group() -> None:
    # Pair 0 matches; pair 1's image prefers caption 0; pair 2's caption is closest to image 0.
    img = _unit([1, 0, 0], [0.9, 0.1, 0], [0, 0, 1])
    txt = _unit([1, 0, 0], [0, 1, 0], [0.95, 0, 0.3])
    r = taisu_rule(img, txt, group_size=10)
    assert r.image_rank.tolist() == [1, 3, 1]
    assert r.text_rank.tolist() == [1, 1, 3]
    assert r.keep.tolist() == [True, True, True]
    assert taisu_rule(img, txt, group_size=10, mode="and").keep.tolist() == [True, False, False]
    assert r.group.tolist() == [0, 0, 0]


def test_ties_do_not_count_against_the_pair() -> None:
    # Two identical captions: each image ties between them, so both still rank first.
    img = _unit([1, 0], [1, 0])
    txt = _unit([1, 0], [1, 0])
    r = taisu_rule(img, txt, group_size=2)
    assert r.image_rank.tolist() == [1, 1] and r.text_rank.tolist() == [1, 1] and r.keep.all()


def test_mismatched_pair_is_dropped_in_both_modes() -> None:
    img = _unit([1, 0, 0], [0, 1, 0], [0, 0.3, 1])
    txt = _unit([1, 0, 0], [0, 1, 0], [1, 0.1, 0])  # caption 2 describes image 0
    for mode in ("or", "and"):
        assert taisu_rule(img, txt, group_size=3, mode=mode).keep.tolist() == [True, True, False]


def test_groups_follow_the_seed_and_results_stay_in_input_order() -> None:
    rng = np.random.default_rng(7)
    img = rng.normal(size=(250, 16))
    txt = img + rng.normal(scale=0.8, size=img.shape)
    a = taisu_rule(img, txt, group_size=100, seed=3)
    b = taisu_rule(img, txt, group_size=100, seed=3)
    c = taisu_rule(img, txt, group_size=100, seed=4)
    assert np.array_equal(a.group, b.group) and np.array_equal(a.keep, b.keep)
    assert not np.array_equal(a.group, c.group)
    assert sorted(np.bincount(a.group).tolist()) == [50, 100, 100]  # the last group is smaller
    expected = np.empty(250, dtype=np.int64)
    expected[np.random.default_rng(3).permutation(250)] = np.arange(250) // 100
    assert np.array_equal(a.group, expected)
    # Input order: reversing the input reverses per-pair results when the groups are the same.
    perm = np.random.default_rng(3).permutation(250)
    for g in range(3):
        rows = np.sort(perm[g * 100 : (g + 1) * 100])
        sub = taisu_rule(img[rows], txt[rows], group_size=len(rows))
        assert np.array_equal(sub.image_rank, a.image_rank[rows])
        assert np.array_equal(sub.text_rank, a.text_rank[rows])


def test_group_of_one_keeps_its_pair() -> None:
    img = _unit([1, 0], [0, 1], [1, 1])
    txt = _unit([0, 1], [1, 0], [1, -1])  # all wrong, but alone in their groups
    r = taisu_rule(img, txt, group_size=1)
    assert r.keep.all() and sorted(r.group.tolist()) == [0, 1, 2]


def test_bad_arguments() -> None:
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="mode"):
        taisu_rule(x, x, mode="xor")
    with pytest.raises(ValueError, match="group_size"):
        taisu_rule(x, x, group_size=0)
    with pytest.raises(ValueError, match="2-d"):
        taisu_rule(np.ones(3), np.ones(3))
    assert taisu_rule(np.zeros((0, 3)), np.zeros((0, 3))).keep.shape == (0,)


def test_threshold_and_quantile() -> None:
    scores = np.array([0.1, 0.5, 0.3, 0.9], dtype=np.float32)
    assert threshold_rule(scores, 0.3).tolist() == [False, True, True, True]
    keep, cutoff = quantile_rule(scores, 0.5)
    assert cutoff == pytest.approx(0.4)
    assert keep.tolist() == [False, True, False, True]
    keep, cutoff = quantile_rule(scores, 0.0)
    assert keep.all() and cutoff == pytest.approx(0.1)
    keep, cutoff = quantile_rule(np.array([]), 0.5)
    assert keep.shape == (0,) and np.isnan(cutoff)
    with pytest.raises(ValueError, match="quantile"):
        quantile_rule(scores, 1.5)
