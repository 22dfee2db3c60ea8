"""EG-RL rewards against hand-computed values: outcome (ties, G=1, B=1), symmetry, judge candidates, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedrl.rewards import (
    REWARD_PRESETS,
    judge_candidates,
    outcome_rewards,
    process_reward_from_answer,
    softmax_weighted_mean,
    total_reward,
)

# Two pairs (k = 0, 1), G = 2 rollouts per side. Rows: query rollouts, columns: positive rollouts.
S = np.array(
    [
        [0.9, 0.7, 0.2, 0.1],
        [0.5, 0.6, 0.8, 0.1],
        [0.3, 0.2, 0.9, 0.8],
        [0.4, 0.4, 0.4, 0.4],  # all tied
    ]
)
GROUPS = [0, 0, 1, 1]


def _soft(values, tau):
    w = [math.exp(v / tau) for v in values]
    return sum(wi * v for wi, v in zip(w, values)) / sum(w)


def test_softmax_weighted_mean() -> None:
    assert softmax_weighted_mean(np.array([0.2, 0.1]), 0.5) == pytest.approx(_soft([0.2, 0.1], 0.5))
    assert softmax_weighted_mean(np.array([1.0, 0.0]), 1e-3) == pytest.approx(1.0)  # tau -> 0: the max
    assert softmax_weighted_mean(np.array([]), 0.5) == 0.0


def test_outcome_hand_computed_all_mode() -> None:
    rewards, acc, margin = outcome_rewards(S, GROUPS, GROUPS, tau=0.5, acc_mode="all")
    expected_margin = [
        0.8 - _soft([0.2, 0.1], 0.5),
        0.55 - _soft([0.8, 0.1], 0.5),
        0.85 - _soft([0.3, 0.2], 0.5),
        0.4 - 0.4,
    ]
    assert margin == pytest.approx(expected_margin)
    # row 1's top-2 is (col 2, col 1): one positive only -> 0 under "all"
    # row 3 is a full tie: the stable order (column index) puts the two negatives first -> 0
    assert acc.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert rewards == pytest.approx([expected_margin[0], 0.0, expected_margin[2], 0.0])


def test_outcome_fraction_mode_and_plain_negatives() -> None:
    rewards, acc, margin = outcome_rewards(
        S, GROUPS, GROUPS, tau=0.5, acc_mode="fraction", weighted_negatives=False
    )
    assert acc.tolist() == [1.0, 0.5, 1.0, 0.0]
    assert margin == pytest.approx([0.8 - 0.15, 0.55 - 0.45, 0.85 - 0.25, 0.0])
    assert rewards[1] == pytest.approx(0.5 * (0.55 - 0.45))


def test_symmetric_side_is_the_transpose_computation() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 8))
    p = q + rng.normal(scale=0.8, size=(6, 8))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    groups = [0, 0, 1, 1, 2, 2]
    from_transpose = outcome_rewards((q @ p.T).T, groups, groups)
    direct = outcome_rewards(p @ q.T, groups, groups)  # positives as rows, scored against query rollouts
    for a, b in zip(from_transpose, direct):
        assert np.allclose(a, b)
    # and it differs from the query side in general
    assert not np.allclose(outcome_rewards(q @ p.T, groups, groups)[0], direct[0])


def test_degenerate_batches_are_defined() -> None:
    one_pair = np.array([[0.3, 0.9], [0.1, 0.2]])
    rewards, acc, margin = outcome_rewards(one_pair, [0, 0], [0, 0])  # B = 1: nothing to retrieve against
    assert rewards.tolist() == [0.0, 0.0] and acc.tolist() == [1.0, 1.0] and np.isfinite(margin).all()
    g1 = np.array([[0.9, 0.1, 0.3], [0.2, 0.5, 0.6], [0.0, 0.0, 0.7]])
    rewards, acc, _ = outcome_rewards(g1, [0, 1, 2], [0, 1, 2], tau=0.5)  # G = 1
    assert acc.tolist() == [1.0, 0.0, 1.0]
    assert rewards[0] == pytest.approx(0.9 - _soft([0.1, 0.3], 0.5))
    assert np.isfinite(rewards).all()
    with pytest.raises(ValueError, match="NaN"):
        outcome_rewards(np.array([[np.nan]]), [0], [0])


def test_judge_candidates_shuffle_and_map_back() -> None:
    row = np.array([0.9, 0.8, 0.5, 0.7, 0.95, 0.1, 0.2, 0.3, 0.6, 0.4])
    groups = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    columns, positives = judge_candidates(row, groups, 0, top_k=2, shuffle=False)
    # positives first (official order), then the best column of the 2 hardest other pairs: pair 2 (0.95), pair 1
    assert columns == [0, 1, 4, 3] and positives == {0, 1}

    orders = set()
    for seed in range(20):
        cols, pos = judge_candidates(row, groups, 0, top_k=2, rng=np.random.default_rng(seed))
        assert sorted(cols) == [0, 1, 3, 4]
        assert pos == {i for i, c in enumerate(cols) if groups[c] == 0}
        orders.add(tuple(cols))
        # an oracle judge that names a positive (1-based) is rewarded; one that names a negative is not
        first_pos = min(pos) + 1
        first_neg = min(set(range(len(cols))) - pos) + 1
        assert process_reward_from_answer(first_pos, pos) == 1.0
        assert process_reward_from_answer(first_neg, pos) == 0.0
    assert len(orders) > 5  # shuffling really changes the order
    assert any(min(p) > 0 for p in [{i for i, c in enumerate(o) if groups[c] == 0} for o in orders])
    assert process_reward_from_answer(None, {0}) == 0.0


def test_weights_presets_and_total() -> None:
    paper = REWARD_PRESETS["paper"]
    assert (paper["format"], paper["process"], paper["outcome"]) == (0.05, 0.8, 0.2)
    official = REWARD_PRESETS["official-code"]
    assert (official["process"], official["outcome"], official["outcome_scale"]) == (0.2, 0.8, 0.5)
    total = total_reward([1, 0], [1, 1], [0.5, -0.2], paper)
    assert total == pytest.approx([0.05 + 0.8 + 0.1, 0.8 - 0.04])
    assert total_reward([1], [0], [1.0], official) == pytest.approx([0.05 + 0.4])


def test_group_ids_of_any_hashable_kind() -> None:
    """Pair ids may be tuples (dataset, index): they must not be read as rows of a 2-D array."""
    tuple_groups = [("coco", 0), ("coco", 0), ("coco", 1), ("coco", 1)]
    assert all(
        np.array_equal(a, b)
        for a, b in zip(outcome_rewards(S, tuple_groups, tuple_groups), outcome_rewards(S, GROUPS, GROUPS))
    )
    columns, positives = judge_candidates(S[0], tuple_groups, ("coco", 0), top_k=1, shuffle=False)
    assert (columns, positives) == judge_candidates(S[0], GROUPS, 0, top_k=1, shuffle=False)


def test_format_reward_takes_numpy_frame_counts() -> None:
    from embedrl.rewards import format_reward

    text = '<thinking>{"key_frames": [2]}</thinking><rethink>r</rethink><answer>a</answer>'
    assert format_reward([text], ["video"], num_frames=np.int64(8)) == format_reward(
        [text], ["video"], num_frames=8
    )
