"""Retrieval metrics: pure functions over ranked relevance, per query and averaged per task.

docs/task-format.md ("Metrics") gives the definitions for users.

A query's ranking sorts candidates by (−score, candidate position) with a stable sort, so tied candidates keep
their upstream order (`stable_order`). For metrics only the relevance grade at each rank matters, so every
function takes a `Judged` batch: row q holds the grades g(c_1), g(c_2), ... of query q's ranked candidates
(0 = not relevant) and the grades of its relevant set P sorted best first.

Notation for one query: top_k = the first k ranked candidates, P = relevant candidates (grade g ≥ 1),
hits_k = |P ∩ top_k|, c_i = the candidate at rank i (1-based).

Conventions, chosen to match VLM2Vec (`src/utils/eval_utils/metrics.py`) because MMEB-V2 numbers are
computed with it:
- precision@k divides by k even when the pool has fewer than k candidates (P@5 is 0.2 on 2-option QA).
- A query with an empty P scores 0 on every metric except recall@k, which is 1.0 ("all of nothing was
  found", as VLM2Vec's `metrics.py` has it). f1@k is then 0 because precision is 0. Some VLM2Vec
  revisions return recall 0.0 instead; MMEB-V2 and UVRB tasks where every query has a positive are unaffected.
  `embedrl score` reports `queries_without_positives` so such queries never go unnoticed.
- Grades are used as-is for NDCG (graded qrels, VisDoc); binary qrels are grades of 1, where the linear and
  exponential NDCG coincide.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.taskdir import METRIC_NAMES  # one list for the task format and the scorer (result JSON order)

DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class Judged:
    """Ranked relevance of a batch of queries, cut at a fixed depth.

    gains[q, i]  grade of query q's candidate at rank i+1; 0 when it is not relevant or the pool has no
                 candidate at that rank.
    ideal[q, i]  query q's relevant grades sorted in decreasing order, 0-padded (the best possible ranking).
    num_relevant |P| per query (not capped at the depth).
    """

    gains: np.ndarray
    ideal: np.ndarray
    num_relevant: np.ndarray

    @property
    def depth(self) -> int:
        return int(self.gains.shape[1])

    def __len__(self) -> int:
        return int(self.gains.shape[0])


def judge(
    rankings: Sequence[Sequence[Hashable]], relevance: Sequence[Mapping[Hashable, int]], depth: int
) -> Judged:
    """Build a `Judged` batch from ranked id lists (best first) and per-query {id: grade} maps.

    Rankings may be shorter than `depth` (small pools) or longer (cut at `depth`). Grades < 1 count as not
    relevant, as in qrels where only positive grades are kept.
    """
    if len(rankings) != len(relevance):
        raise ValueError(f"{len(rankings)} rankings but {len(relevance)} relevance maps")
    if depth < 1:
        raise ValueError("depth must be >= 1")
    n = len(rankings)
    gains = np.zeros((n, depth), dtype=np.float64)
    ideal = np.zeros((n, depth), dtype=np.float64)
    num_relevant = np.zeros(n, dtype=np.int64)
    for q, (ranked, rel) in enumerate(zip(rankings, relevance)):
        positive = {cid: float(g) for cid, g in rel.items() if g >= 1}
        num_relevant[q] = len(positive)
        best = sorted(positive.values(), reverse=True)[:depth]
        ideal[q, : len(best)] = best
        for i, cid in enumerate(list(ranked)[:depth]):
            gains[q, i] = positive.get(cid, 0.0)
    return Judged(gains, ideal, num_relevant)


# ---------------------------------------------------------------------------------------- per-query metrics


def _check_k(judged: Judged, k: int) -> None:
    if not 1 <= k <= judged.depth:
        raise ValueError(f"k={k} is outside 1..{judged.depth} (the depth the rankings were cut at)")


def hits_at_k(judged: Judged, k: int) -> np.ndarray:
    """hits_k = |P ∩ top_k| per query."""
    _check_k(judged, k)
    return (judged.gains[:, :k] > 0).sum(axis=1)


def hit_at_k(judged: Judged, k: int) -> np.ndarray:
    """hit@k = 1[hits_k ≥ 1]; 0 for an empty P."""
    return (hits_at_k(judged, k) > 0).astype(np.float64)


def uvrb_recall_at_k(judged: Judged, k: int) -> np.ndarray:
    """What Embed-RL's UVRB script calls recall@k: hit@k (1 if any positive is in top_k)."""
    return hit_at_k(judged, k)


def precision_at_k(judged: Judged, k: int) -> np.ndarray:
    """precision@k = hits_k / k, dividing by k even if the pool holds fewer than k candidates."""
    return hits_at_k(judged, k) / float(k)


def recall_at_k(judged: Judged, k: int) -> np.ndarray:
    """recall@k = hits_k / |P| (VLM2Vec / MTEB); 1.0 for an empty P (VLM2Vec convention)."""
    hits = hits_at_k(judged, k).astype(np.float64)
    size = judged.num_relevant
    return np.divide(hits, size, out=np.ones_like(hits), where=size > 0)


def f1_at_k(judged: Judged, k: int) -> np.ndarray:
    """f1@k = 2·precision@k·recall@k / (precision@k + recall@k), 0 when both are 0."""
    p, r = precision_at_k(judged, k), recall_at_k(judged, k)
    total = p + r
    return np.divide(2 * p * r, total, out=np.zeros_like(total), where=total > 0)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # rank i -> 1 / log2(i + 1)


def _ndcg(judged: Judged, k: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    _check_k(judged, k)
    disc = _discounts(k)
    dcg = (gain(judged.gains[:, :k]) * disc).sum(axis=1)
    idcg = (gain(judged.ideal[:, :k]) * disc).sum(axis=1)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def ndcg_linear_at_k(judged: Judged, k: int) -> np.ndarray:
    """ndcg_linear@k = DCG/IDCG with DCG = Σ_{i≤k} g(c_i) / log2(i+1) and IDCG the DCG of P's grades sorted
    best first (cut at k). 0 for an empty P."""
    return _ndcg(judged, k, lambda g: g)


def ndcg_exponential_at_k(judged: Judged, k: int) -> np.ndarray:
    """As ndcg_linear@k with gain 2^g − 1 (equal to the linear form for binary grades)."""
    return _ndcg(judged, k, lambda g: np.exp2(g) - 1.0)


def mrr_at_k(judged: Judged, k: int) -> np.ndarray:
    """mrr@k = 1 / (rank of the first relevant candidate) if it is within top_k, else 0."""
    _check_k(judged, k)
    relevant = judged.gains[:, :k] > 0
    first = relevant.argmax(axis=1)
    return np.where(relevant.any(axis=1), 1.0 / (first + 1.0), 0.0)


def map_at_k(judged: Judged, k: int) -> np.ndarray:
    """map@k = (Σ_{i≤k, c_i ∈ P} hits_i / i) / min(|P|, k) (VLM2Vec's normalisation); 0 for an empty P."""
    _check_k(judged, k)
    relevant = judged.gains[:, :k] > 0
    precision_at_hits = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    total = (precision_at_hits * relevant).sum(axis=1)
    norm = np.minimum(judged.num_relevant, k).astype(np.float64)
    return np.divide(total, norm, out=np.zeros_like(total), where=norm > 0)


METRICS: dict[str, Callable[[Judged, int], np.ndarray]] = {
    "hit": hit_at_k,
    "precision": precision_at_k,
    "recall": recall_at_k,
    "uvrb_recall": uvrb_recall_at_k,
    "ndcg_linear": ndcg_linear_at_k,
    "ndcg_exponential": ndcg_exponential_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
    "f1": f1_at_k,
}
assert tuple(METRICS) == METRIC_NAMES


def per_query_metrics(
    judged: Judged, ks: Iterable[int] = DEFAULT_KS, names: Iterable[str] = METRIC_NAMES
) -> dict[str, np.ndarray]:
    """{"hit@1": array over queries, ...} for every metric name and k."""
    return {f"{name}@{k}": METRICS[name](judged, k) for name in names for k in sorted(set(ks))}


def task_metrics(
    judged: Judged, ks: Iterable[int] = DEFAULT_KS, names: Iterable[str] = METRIC_NAMES
) -> dict[str, float]:
    """Task score of every metric at every k: the plain mean over queries (0.0 for a task without queries)."""
    return {
        key: float(values.mean()) if values.size else 0.0
        for key, values in per_query_metrics(judged, ks, names).items()
    }


# ------------------------------------------------------------------------------------------------- ties


def stable_order(scores: np.ndarray) -> np.ndarray:
    """Candidate positions sorted by (−score, position): a stable sort, so ties keep upstream order."""
    return np.argsort(-np.asarray(scores), kind="stable")


def top1_tied(ranked_scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per query: whether the best score is shared by the runner-up (exact equality).

    `ranked_scores` is (queries, depth) sorted best first; `valid` marks real entries when pools are smaller
    than the depth (padding is never a tie)."""
    ranked_scores = np.asarray(ranked_scores)
    if ranked_scores.shape[1] < 2:
        return np.zeros(ranked_scores.shape[0], dtype=bool)
    tied = ranked_scores[:, 0] == ranked_scores[:, 1]
    if valid is not None:
        tied &= np.asarray(valid)[:, 1]
    return tied


def pessimistic_hit_at_1(
    judged: Judged, ranked_scores: np.ndarray, valid: np.ndarray, complete: np.ndarray
) -> np.ndarray:
    """Hit@1 under the worst order of the candidates tied at the top: 1 only if every candidate sharing the
    best score is relevant.

    `complete[q]` says whether row q holds the query's whole pool. When the top tie runs to the end of an
    incomplete row the rest of the tie is unseen, so the query counts as a miss (a lower bound)."""
    ranked_scores = np.asarray(ranked_scores)
    in_top_tie = (ranked_scores == ranked_scores[:, :1]) & valid
    all_relevant = np.all(~in_top_tie | (judged.gains > 0), axis=1)
    tie_runs_off_the_end = in_top_tie[:, -1] & ~np.asarray(complete)
    return (all_relevant & ~tie_runs_off_the_end & (judged.gains[:, 0] > 0)).astype(np.float64)
