"""Score one task from embeddings or a score matrix: the per-task result that `embedrl score` writes.

Rows follow `queries.jsonl`, columns `candidates.jsonl`. Global tasks rank every candidate (blockwise exact
top-k); local tasks rank only each query's `candidate_ids`, in their listed order (the tie-break order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import __version__
from ..data.taskdir import Task, parse_metric_name
from ..errors import DataError, Problem
from .metrics import DEFAULT_KS, mean_metrics, pessimistic_hit1, query_metrics, stable_ranking, top1_tied
from .rank import exact_topk, topk_from_scores


def _check_matrix(array: np.ndarray, name: str, rows: list[str], what: str, cols: int | None = None,
                  zero_check: bool = False) -> np.ndarray:
    one = {"queries": "query", "candidates": "candidate"}[what]
    array = np.asarray(array)
    if array.ndim != 2:
        raise DataError(Problem(name, f"expected a 2-D array, got shape {array.shape}"))
    if array.shape[0] != len(rows):
        raise DataError(Problem(name, f"has {array.shape[0]} rows but the task has {len(rows)} {what}"))
    if cols is not None and array.shape[1] != cols:
        raise DataError(Problem(name, f"has shape {array.shape} but the task has {len(rows)} queries × "
                                      f"{cols} candidates"))
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise DataError(Problem(name, f"has dtype {array.dtype}; expected numbers"))
    finite = np.isfinite(array)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise DataError(Problem(name, f"row {row} ({one} {rows[row]!r}) contains NaN or inf"))
    if zero_check:
        zero = np.flatnonzero(~np.any(array != 0, axis=1))
        if zero.size:
            raise DataError(Problem(name, f"row {int(zero[0])} ({one} {rows[int(zero[0])]!r}) is a zero "
                                          "vector; cosine similarity is undefined"))
    return array


def score_task(
    task: Task,
    *,
    scores: np.ndarray | None = None,
    query_emb: np.ndarray | None = None,
    cand_emb: np.ndarray | None = None,
    similarity: str = "cosine",
    pessimistic: bool = False,
    names: tuple[str, str, str] = ("scores", "query embeddings", "candidate embeddings"),
) -> dict[str, Any]:
    """Per-task result dict: every metric at k ∈ {1, 5, 10} ∪ task k_list, main score, tie rate."""
    qids = [q.id for q in task.queries]
    cids = [c.id for c in task.candidates]
    primary_name, primary_k = parse_metric_name(task.meta.primary_metric)
    ks = sorted(set(DEFAULT_KS) | set(task.meta.k_list) | {primary_k})
    window = max(ks) + 1  # one more than needed, to see ties at the top
    relevance = task.relevance()
    if scores is not None:
        if query_emb is not None or cand_emb is not None:
            raise DataError(Problem(names[0], "give either a score matrix or both embedding matrices, not both"))
        scores = _check_matrix(scores, names[0], qids, "queries", cols=len(cids))
    elif query_emb is not None and cand_emb is not None:
        query_emb = _check_matrix(query_emb, names[1], qids, "queries", zero_check=similarity == "cosine")
        cand_emb = _check_matrix(cand_emb, names[2], cids, "candidates", zero_check=similarity == "cosine")
        if query_emb.shape[1] != cand_emb.shape[1]:
            raise DataError(Problem(names[1], f"dimension {query_emb.shape[1]} differs from the candidate "
                                              f"embeddings' {cand_emb.shape[1]}"))
    else:
        raise DataError(Problem(names[0], "nothing to score: give a score matrix or query and candidate embeddings"))

    rankings: list[tuple[list[str], np.ndarray]] = []
    if task.is_local:
        index = task.candidate_index()
        if scores is None:
            q = _unit(query_emb) if similarity == "cosine" else query_emb.astype(np.float32)
            c = _unit(cand_emb) if similarity == "cosine" else cand_emb.astype(np.float32)
        for row, query in enumerate(task.queries):
            cols = [index[cid] for cid in query.candidate_ids or []]
            s = scores[row, cols] if scores is not None else c[cols] @ q[row]
            order = stable_ranking(s)[:window]
            rankings.append(([query.candidate_ids[i] for i in order], np.asarray(s)[order]))
    else:
        top = (topk_from_scores(scores, window) if scores is not None
               else exact_topk(query_emb, cand_emb, window, similarity=similarity))
        rankings = [([cids[i] for i in idx], sc) for idx, sc in zip(top.indices, top.scores)]

    per_query = [query_metrics(ranked, relevance.get(qid, {}), ks) for qid, (ranked, _) in zip(qids, rankings)]
    metrics = mean_metrics(per_query)
    ties = [top1_tied(sc) for _, sc in rankings]
    result: dict[str, Any] = {
        "benchmark": task.meta.benchmark,
        "task": task.meta.task,
        "modality": task.meta.modality,
        "meta_task": task.meta.meta_task,
        "eval_type": task.meta.eval_type,
        "primary_metric": task.meta.primary_metric,
        "main_score": metrics[f"{primary_name}@{primary_k}"],
        "metrics": metrics,
        "num_queries": len(qids),
        "num_candidates": len(cids),
        "queries_without_positives": sum(1 for qid in qids if not relevance.get(qid)),
        "tie_rate": float(np.mean(ties)) if ties else 0.0,
        "similarity": similarity if scores is None else "given scores",
        "version_note": task.meta.version_note,
        "source": task.meta.source,
        "embedrl_version": __version__,
    }
    if pessimistic:
        result["pessimistic_hit@1"] = float(np.mean([
            pessimistic_hit1(ranked, sc, relevance.get(qid, {})) for qid, (ranked, sc) in zip(qids, rankings)]))
    return result


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
