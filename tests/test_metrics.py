"""Each metric against hand-computed values: ties, graded relevance, empty P, k beyond the pool."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedrl.eval.metrics import mean_metrics, pessimistic_hit1, query_metrics, stable_ranking, top1_tied


def test_binary_ranking_hand_computed() -> None:
    ranked = ["a", "x", "b", "y", "z"]
    m = query_metrics(ranked, {"a": 1, "b": 1, "c": 1}, ks=(1, 3, 5))
    assert m["hit@1"] == 1.0 and m["hit@3"] == 1.0
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["recall@3"] == pytest.approx(2 / 3) and m["uvrb_recall@3"] == 1.0
    p, r = 2 / 3, 2 / 3
    assert m["f1@3"] == pytest.approx(2 * p * r / (p + r))
    assert m["mrr@5"] == 1.0
    assert m["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["map@1"] == pytest.approx(1.0)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_linear@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg3)
    assert m["ndcg_exponential@3"] == pytest.approx(m["ndcg_linear@3"])  # binary grades: same


def test_graded_ndcg() -> None:
    ranked = ["p1", "p2", "n", "p3"]
    rel = {"p1": 1, "p2": 1, "p3": 3}
    m = query_metrics(ranked, rel, ks=(5,))
    dcg = 1 / math.log2(2) + 1 / math.log2(3) + 3 / math.log2(5)
    idcg = 3 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_linear@5"] == pytest.approx(dcg / idcg)
    dcg_e = 1 + 1 / math.log2(3) + 7 / math.log2(5)
    idcg_e = 7 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_exponential@5"] == pytest.approx(dcg_e / idcg_e)


def test_first_hit_late_and_miss() -> None:
    m = query_metrics(["n1", "n2", "p"], {"p": 1}, ks=(1, 2, 3))
    assert (m["hit@1"], m["hit@2"], m["hit@3"]) == (0.0, 0.0, 1.0)
    assert m["mrr@2"] == 0.0 and m["mrr@3"] == pytest.approx(1 / 3)
    assert m["map@3"] == pytest.approx(1 / 3)


def test_empty_positive_set_conventions() -> None:
    m = query_metrics(["a", "b"], {}, ks=(1, 5))
    assert m["hit@1"] == 0.0 and m["precision@5"] == 0.0
    assert m["recall@1"] == 1.0  # VLM2Vec's convention for an empty P
    assert m["ndcg_linear@5"] == 0.0 and m["map@5"] == 0.0 and m["mrr@5"] == 0.0
    assert m["f1@1"] == 0.0


def test_k_larger_than_pool() -> None:
    m = query_metrics(["a", "b"], {"a": 1}, ks=(10,))
    assert m["precision@10"] == pytest.approx(0.1)  # divided by k, not by the pool size
    assert m["recall@10"] == 1.0 and m["ndcg_linear@10"] == 1.0 and m["map@10"] == 1.0


def test_stable_ranking_and_ties() -> None:
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.9])
    assert stable_ranking(scores).tolist() == [1, 2, 4, 0, 3]  # ties keep upstream order
    assert top1_tied([0.9, 0.9, 0.5]) and not top1_tied([0.9, 0.8]) and not top1_tied([0.9])
    assert pessimistic_hit1(["b", "c"], [0.9, 0.9], {"b": 1}) == 0.0  # tied with a wrong candidate
    assert pessimistic_hit1(["b", "c"], [0.9, 0.9], {"b": 1, "c": 1}) == 1.0
    assert pessimistic_hit1(["b", "c"], [0.9, 0.5], {"b": 1}) == 1.0


def test_mean_over_queries() -> None:
    a = query_metrics(["p"], {"p": 1}, ks=(1,))
    b = query_metrics(["n", "p"], {"p": 1}, ks=(1,))
    assert mean_metrics([a, b])["hit@1"] == 0.5
    assert mean_metrics([]) == {}
