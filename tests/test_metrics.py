"""Metrics against hand-computed values on small rankings (definitions: docs/task-format.md, "Metrics")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedrl.eval.metrics import (
    METRIC_NAMES,
    f1_at_k,
    hit_at_k,
    judge,
    map_at_k,
    mrr_at_k,
    ndcg_exponential_at_k,
    ndcg_linear_at_k,
    per_query_metrics,
    pessimistic_hit_at_1,
    precision_at_k,
    recall_at_k,
    stable_order,
    task_metrics,
    top1_tied,
    uvrb_recall_at_k,
)

L2 = math.log2


def one(ranked, rel, depth=10):
    return judge([ranked], [rel], depth)


def test_metric_names_match_the_task_format():
    from embedrl.data.taskdir import METRIC_NAMES as TASK_METRIC_NAMES

    assert set(METRIC_NAMES) == set(TASK_METRIC_NAMES)


def test_single_positive_at_rank_3():
    j = one(["a", "b", "p", "c", "d"], {"p": 1})
    assert hit_at_k(j, 1)[0] == 0 and hit_at_k(j, 3)[0] == 1 and hit_at_k(j, 5)[0] == 1
    assert precision_at_k(j, 5)[0] == pytest.approx(1 / 5)
    assert recall_at_k(j, 2)[0] == 0 and recall_at_k(j, 3)[0] == 1
    assert mrr_at_k(j, 2)[0] == 0 and mrr_at_k(j, 5)[0] == pytest.approx(1 / 3)
    assert map_at_k(j, 5)[0] == pytest.approx(1 / 3)  # (1/3) / min(1, 5)
    assert ndcg_linear_at_k(j, 5)[0] == pytest.approx(1 / L2(4))  # DCG 1/log2(4), IDCG 1
    assert f1_at_k(j, 5)[0] == pytest.approx(2 * 0.2 * 1 / 1.2)


def test_two_positives_hand_computed():
    # ranks: 1 = x (no), 2 = p1, 3 = y (no), 4 = p2
    j = one(["x", "p1", "y", "p2", "z"], {"p1": 1, "p2": 1})
    assert precision_at_k(j, 5)[0] == pytest.approx(2 / 5)
    assert recall_at_k(j, 2)[0] == pytest.approx(1 / 2)
    assert recall_at_k(j, 5)[0] == pytest.approx(1.0)
    assert uvrb_recall_at_k(j, 2)[0] == 1.0  # hit, not |P∩top|/|P|
    assert map_at_k(j, 5)[0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert map_at_k(j, 1)[0] == 0.0
    idcg = 1 + 1 / L2(3)
    assert ndcg_linear_at_k(j, 5)[0] == pytest.approx((1 / L2(3) + 1 / L2(5)) / idcg)
    p, r = 2 / 5, 1.0
    assert f1_at_k(j, 5)[0] == pytest.approx(2 * p * r / (p + r))


def test_graded_relevance_linear_and_exponential_ndcg():
    # grades: d3 = 3, d1 = 1, d2 = 2; ranking puts d1 first.
    j = one(["d1", "d3", "n", "d2"], {"d1": 1, "d2": 2, "d3": 3})
    dcg_lin = 1 + 3 / L2(3) + 0 + 2 / L2(5)
    idcg_lin = 3 + 2 / L2(3) + 1 / L2(4)
    assert ndcg_linear_at_k(j, 5)[0] == pytest.approx(dcg_lin / idcg_lin)
    dcg_exp = 1 + 7 / L2(3) + 3 / L2(5)
    idcg_exp = 7 + 3 / L2(3) + 1 / L2(4)
    assert ndcg_exponential_at_k(j, 5)[0] == pytest.approx(dcg_exp / idcg_exp)
    # At k=1 the ideal is cut to the best grade: 1 / 3.
    assert ndcg_linear_at_k(j, 1)[0] == pytest.approx(1 / 3)
    # Hit/precision/recall ignore the grade.
    assert precision_at_k(j, 2)[0] == 1.0 and recall_at_k(j, 2)[0] == pytest.approx(2 / 3)


def test_binary_grades_make_both_ndcg_forms_equal():
    j = one(["a", "p", "b", "q"], {"p": 1, "q": 1})
    assert ndcg_linear_at_k(j, 4)[0] == pytest.approx(ndcg_exponential_at_k(j, 4)[0])


def test_empty_relevant_set_follows_vlm2vec():
    j = one(["a", "b", "c"], {})
    assert recall_at_k(j, 5)[0] == 1.0  # VLM2Vec: all of nothing was found
    for fn in (
        hit_at_k,
        precision_at_k,
        uvrb_recall_at_k,
        ndcg_linear_at_k,
        ndcg_exponential_at_k,
        mrr_at_k,
        map_at_k,
        f1_at_k,
    ):
        assert fn(j, 5)[0] == 0.0, fn.__name__


def test_k_larger_than_the_pool():
    j = one(["p", "a"], {"p": 1}, depth=10)  # two candidates, k = 10
    assert precision_at_k(j, 5)[0] == pytest.approx(0.2)  # divided by k, not by the pool size
    assert precision_at_k(j, 10)[0] == pytest.approx(0.1)
    assert hit_at_k(j, 10)[0] == 1.0 and recall_at_k(j, 10)[0] == 1.0
    assert ndcg_linear_at_k(j, 10)[0] == 1.0 and map_at_k(j, 10)[0] == 1.0


def test_map_normalises_by_min_of_positives_and_k():
    # 3 positives, k = 2, both top ranks relevant: AP@2 = (1 + 1) / min(3, 2) = 1.
    j = one(["p1", "p2", "x", "p3"], {"p1": 1, "p2": 1, "p3": 1})
    assert map_at_k(j, 2)[0] == pytest.approx(1.0)
    assert map_at_k(j, 5)[0] == pytest.approx((1 + 1 + 3 / 4) / 3)


def test_k_outside_depth_is_an_error():
    j = one(["a"], {"a": 1}, depth=3)
    with pytest.raises(ValueError, match="outside"):
        hit_at_k(j, 4)


def test_task_metrics_average_over_queries():
    j = judge([["p", "a"], ["a", "p"], ["a", "b"]], [{"p": 1}, {"p": 1}, {"p": 1}], depth=3)
    out = task_metrics(j, ks=[1, 2])
    assert out["hit@1"] == pytest.approx(1 / 3)
    assert out["hit@2"] == pytest.approx(2 / 3)
    assert out["mrr@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert set(out) == {f"{m}@{k}" for m in METRIC_NAMES for k in (1, 2)}
    per_query = per_query_metrics(j, ks=[1])
    assert per_query["hit@1"].tolist() == [1.0, 0.0, 0.0]


def test_stable_order_keeps_upstream_order_for_ties():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    assert stable_order(scores).tolist() == [1, 3, 0, 2, 4]


def test_tie_rate_and_pessimistic_hit():
    # q0: top tie between a relevant and an irrelevant candidate; q1: no tie; q2: tie of two relevant ones;
    # q3: tie fills the whole (incomplete) row, so the rest of the tie is unseen.
    scores = np.array([[0.9, 0.9, 0.1], [0.9, 0.5, 0.1], [0.8, 0.8, 0.2], [0.7, 0.7, 0.7]])
    valid = np.ones_like(scores, dtype=bool)
    j = judge(
        [["p", "n", "m"], ["p", "n", "m"], ["p", "q", "n"], ["p", "q", "r"]],
        [{"p": 1}, {"p": 1}, {"p": 1, "q": 1}, {"p": 1, "q": 1, "r": 1}],
        depth=3,
    )
    assert top1_tied(scores, valid).tolist() == [True, False, True, True]
    complete = np.array([True, True, True, False])
    assert pessimistic_hit_at_1(j, scores, valid, complete).tolist() == [0.0, 1.0, 1.0, 0.0]
    assert hit_at_k(j, 1).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_padding_is_never_a_tie():
    scores = np.array([[0.3, -np.inf, -np.inf]])
    valid = np.array([[True, False, False]])
    assert not top1_tied(scores, valid)[0]
