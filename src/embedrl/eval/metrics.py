"""Retrieval metrics for one query, and their mean over a task (benchmarks.md §3.3).

A query's ranking is a list of candidate ids, best first, obtained by sorting on (−score, candidate position)
with a stable sort: ties keep the upstream candidate order. `P` is the set of relevant ids with grades g ≥ 1.

| metric              | definition (top_k = the first k ranked ids)                                  | empty P |
|---------------------|-------------------------------------------------------------------------------|---------|
| hit@k               | 1 if |P ∩ top_k| ≥ 1                                                         | 0       |
| precision@k         | |P ∩ top_k| / k — divided by k even when the pool has fewer than k candidates | 0       |
| recall@k            | |P ∩ top_k| / |P| (VLM2Vec / MTEB)                                          | 1.0 (VLM2Vec convention) |
| uvrb_recall@k       | hit@k: what Embed-RL's UVRB script calls "recall@k"                          | 0       |
| f1@k                | 2·precision·recall / (precision + recall), 0 when both are 0                  | follows P/R |
| ndcg_linear@k       | DCG / IDCG, DCG = Σ_{i≤k} g(c_i) / log2(i+1), IDCG over the best possible ranking | 0  |
| ndcg_exponential@k  | as ndcg_linear with gain 2^g − 1                                              | 0       |
| mrr@k               | 1 / rank of the first relevant id within top_k, else 0                        | 0       |
| map@k               | (Σ_{i≤k, c_i∈P} hits_i / i) / min(|P|, k)  (VLM2Vec)                         | 0       |

Binary qrels are grades of 1, so the NDCG variants coincide for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

METRICS = ("hit", "precision", "recall", "uvrb_recall", "f1", "ndcg_linear", "ndcg_exponential", "mrr", "map")
DEFAULT_KS = (1, 5, 10)


def stable_ranking(scores: np.ndarray) -> np.ndarray:
    """Indices sorted by (−score, index): a stable sort, so tied candidates keep their upstream order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _dcg(gains: Sequence[float]) -> float:
    return float(sum(g / math.log2(i + 2) for i, g in enumerate(gains)))


def query_metrics(ranked: Sequence[str], relevance: Mapping[str, int], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Every metric at every k for one query. `ranked` holds at least the top max(ks) ids (fewer when the
    pool is smaller); `relevance` maps relevant ids to grades ≥ 1."""
    positives = {cid for cid, g in relevance.items() if g >= 1}
    n_pos = len(positives)
    grades_sorted = sorted((g for g in relevance.values() if g >= 1), reverse=True)
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        top = list(ranked[:k])
        flags = [cid in positives for cid in top]
        found = sum(flags)
        hit = 1.0 if found else 0.0
        precision = found / k
        recall = found / n_pos if n_pos else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        gains = [float(relevance.get(cid, 0)) if cid in positives else 0.0 for cid in top]
        ideal_linear = _dcg(grades_sorted[:k])
        ideal_exp = _dcg([2.0**g - 1 for g in grades_sorted[:k]])
        ndcg_linear = _dcg(gains) / ideal_linear if ideal_linear > 0 else 0.0
        ndcg_exp = _dcg([2.0**g - 1 if g > 0 else 0.0 for g in gains]) / ideal_exp if ideal_exp > 0 else 0.0
        first = next((i for i, f in enumerate(flags) if f), None)
        mrr = 1.0 / (first + 1) if first is not None else 0.0
        hits_so_far, ap = 0, 0.0
        for i, flag in enumerate(flags):
            if flag:
                hits_so_far += 1
                ap += hits_so_far / (i + 1)
        map_k = ap / min(n_pos, k) if n_pos else 0.0
        out.update({
            f"hit@{k}": hit, f"precision@{k}": precision, f"recall@{k}": recall, f"uvrb_recall@{k}": hit,
            f"f1@{k}": f1, f"ndcg_linear@{k}": ndcg_linear, f"ndcg_exponential@{k}": ndcg_exp,
            f"mrr@{k}": mrr, f"map@{k}": map_k,
        })
    return out


def mean_metrics(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Task score of each metric: the plain mean over queries."""
    if not per_query:
        return {}
    keys = per_query[0].keys()
    return {key: float(np.mean([q[key] for q in per_query])) for key in keys}


def top1_tied(top_scores: Sequence[float]) -> bool:
    """Whether the best score is shared by another candidate (exact float equality)."""
    return len(top_scores) > 1 and float(top_scores[0]) == float(top_scores[1])


def pessimistic_hit1(ranked: Sequence[str], top_scores: Sequence[float], relevance: Mapping[str, int]) -> float:
    """Hit@1 that counts a miss when any candidate tied with the best score is not relevant: the result an
    unlucky tie order would give. Ties are seen within the ranked window only."""
    best = float(top_scores[0]) if len(top_scores) else None
    tied = [cid for cid, s in zip(ranked, top_scores) if float(s) == best]
    return 1.0 if tied and all(relevance.get(cid, 0) >= 1 for cid in tied) else 0.0
