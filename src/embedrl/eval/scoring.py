"""Score one task from embeddings or a score matrix: the per-task result that `embedrl score` writes.

Rows follow `queries.jsonl` order and columns `candidates.jsonl` order. Global tasks rank the whole pool
(blockwise exact top-k, ties to the lower candidate index); local tasks rank each query's own `candidate_ids`
in their listed order, which is the tie-break order (docs/task-format.md, "Ties"). Scores are cut at
max(k) + 1 ranks: the extra rank shows whether the best score is tied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data.taskdir import Task, parse_metric_name
from ..errors import ConfigError, DataError, Problem
from . import rank
from .metrics import (
    DEFAULT_KS,
    METRIC_NAMES,
    judge,
    pessimistic_hit_at_1,
    stable_order,
    task_metrics,
    top1_tied,
)

log = logging.getLogger(__name__)

ArraySource = np.ndarray | str | Path
SEARCH_METHODS = ("exact", "faiss-flat", "faiss-hnsw")
_CHECK_CHUNK_BYTES = 64 << 20
_MAX_LISTED_ROWS = 10


@dataclass(frozen=True)
class Ranked:
    """Best-first candidates of every query, cut at `depth` and padded with index -1 / score -inf."""

    indices: np.ndarray  # (num_queries, depth) positions in candidates.jsonl
    scores: np.ndarray  # (num_queries, depth)
    complete: np.ndarray  # (num_queries,) True when the row holds the query's whole pool

    @property
    def valid(self) -> np.ndarray:
        return self.indices >= 0


# ------------------------------------------------------------------------------------------------- inputs


def load_array(source: ArraySource, label: str) -> tuple[np.ndarray, str]:
    """(array, label for messages). A path is memory-mapped, so a large pool is read block by block."""
    if isinstance(source, np.ndarray):
        return source, label
    path = str(source)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(Problem(path, "file not found")) from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(Problem(path, f"not a readable .npy array ({exc})")) from None
    if not isinstance(array, np.ndarray):
        raise DataError(Problem(path, "expected one array (.npy), got an archive"))
    return array, path


def _check_numeric_matrix(array: np.ndarray, label: str) -> None:
    if array.ndim != 2:
        raise DataError(Problem(label, f"expected a 2-D array, got shape {array.shape}"))
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise DataError(Problem(label, f"has dtype {array.dtype}; expected real numbers"))


def _check_rows(
    array: np.ndarray, label: str, ids: Sequence[str], id_name: str, *, zero_is_error: bool
) -> None:
    """Every row finite (and nonzero for embeddings), checked in row chunks; lists the offending rows."""
    problems: list[Problem] = []
    bad_rows = 0
    rows_per_chunk = max(1, _CHECK_CHUNK_BYTES // max(1, array.shape[1] * array.itemsize))
    for start in range(0, array.shape[0], rows_per_chunk):
        chunk = np.asarray(array[start : start + rows_per_chunk])
        nonfinite = ~np.isfinite(chunk).all(axis=1)
        zero = ~np.any(chunk != 0, axis=1) if zero_is_error else np.zeros(len(chunk), dtype=bool)
        for offset in np.flatnonzero(nonfinite | zero):
            bad_rows += 1
            if len(problems) < _MAX_LISTED_ROWS:
                row = start + int(offset)
                what = "contains NaN or inf" if nonfinite[offset] else "is a zero vector"
                problems.append(Problem(label, f"row {row} ({id_name} {ids[row]!r}) {what}"))
    if bad_rows > len(problems):
        problems.append(Problem(label, f"{bad_rows - len(problems)} more bad row(s) not listed"))
    if problems:
        raise DataError(problems)


def _check_embeddings(
    query_emb: np.ndarray, q_label: str, cand_emb: np.ndarray, c_label: str, task: Task
) -> None:
    nq, nc = len(task.queries), len(task.candidates)
    for array, label, count, what in (
        (query_emb, q_label, nq, "queries"),
        (cand_emb, c_label, nc, "candidates"),
    ):
        _check_numeric_matrix(array, label)
        if array.shape[0] != count:
            raise DataError(
                Problem(
                    label,
                    f"has {array.shape[0]} rows but the task has {count} {what} "
                    f"(rows must follow {what}.jsonl order)",
                )
            )
    if query_emb.shape[1] != cand_emb.shape[1]:
        raise DataError(
            Problem(q_label, f"has dimension {query_emb.shape[1]} but {c_label} has {cand_emb.shape[1]}")
        )
    # A zero vector is a failed encoding for dot product too, so it is an error for both similarities.
    _check_rows(query_emb, q_label, [q.id for q in task.queries], "qid", zero_is_error=True)
    _check_rows(cand_emb, c_label, [c.id for c in task.candidates], "cid", zero_is_error=True)


def _check_scores(scores: np.ndarray, label: str, task: Task) -> None:
    _check_numeric_matrix(scores, label)
    nq, nc = len(task.queries), len(task.candidates)
    if scores.shape != (nq, nc):
        raise DataError(
            Problem(
                label,
                f"has shape {scores.shape} but the task has {nq} queries × {nc} candidates "
                "(rows: queries.jsonl order, columns: candidates.jsonl order)",
            )
        )
    _check_rows(scores, label, [q.id for q in task.queries], "qid", zero_is_error=False)


# ------------------------------------------------------------------------------------------------ ranking


def _pad(order: np.ndarray, values: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.full(depth, -1, dtype=np.int64)
    sc = np.full(depth, -np.inf, dtype=np.float64)
    n = min(depth, order.size)
    idx[:n], sc[:n] = order[:n], values[:n]
    return idx, sc


def _rank_local(
    task: Task,
    depth: int,
    scores: np.ndarray | None,
    query_emb: np.ndarray | None,
    cand_emb: np.ndarray | None,
    similarity: str,
) -> Ranked:
    """Each query against its own candidate_ids; the listed order breaks ties."""
    position = task.candidate_index()
    nq = len(task.queries)
    indices = np.full((nq, depth), -1, dtype=np.int64)
    ranked_scores = np.full((nq, depth), -np.inf, dtype=np.float64)
    complete = np.zeros(nq, dtype=bool)
    # Queries sharing one candidate list (e.g. a label set) are scored together with one matmul.
    groups: dict[tuple[str, ...], list[int]] = {}
    for row, query in enumerate(task.queries):
        groups.setdefault(tuple(query.candidate_ids or ()), []).append(row)
    for cand_ids, rows in groups.items():
        cols = np.array([position[cid] for cid in cand_ids], dtype=np.int64)
        # Bound what one block reads: whole rows of a given score matrix, or the gathered candidate scores.
        width = scores.shape[1] if scores is not None else cols.size
        rows_per_block = max(1, rank.DEFAULT_BLOCK_BYTES // (8 * max(width, 1)))
        for start in range(0, len(rows), rows_per_block):
            block_rows = np.array(rows[start : start + rows_per_block])
            if scores is not None:
                block = np.asarray(scores[block_rows][:, cols])
            else:
                block = rank.similarity_block(
                    np.asarray(query_emb[block_rows]), np.asarray(cand_emb[cols]), similarity
                )
            for row, values in zip(block_rows, block):
                order = stable_order(values)
                indices[row], ranked_scores[row] = _pad(cols[order], values[order], depth)
                complete[row] = cols.size <= depth
    return Ranked(indices, ranked_scores, complete)


def _rank_global(
    task: Task,
    depth: int,
    scores: np.ndarray | None,
    query_emb: np.ndarray | None,
    cand_emb: np.ndarray | None,
    similarity: str,
    search: str,
) -> Ranked:
    if scores is not None:
        top = rank.topk_from_scores(scores, depth)
    elif search == "exact":
        top = rank.exact_topk(query_emb, cand_emb, depth, similarity=similarity)
    else:
        top = rank.faiss_topk(
            query_emb, cand_emb, depth, similarity=similarity, index=search.removeprefix("faiss-")
        )
    complete = np.full(len(task.queries), len(task.candidates) <= depth)
    return Ranked(top.indices, top.scores.astype(np.float64), complete)


# ------------------------------------------------------------------------------------------------ scoring


def metric_ks(task: Task) -> list[int]:
    """Cut-offs reported for a task: 1, 5, 10, the task's k_list and its primary metric's k."""
    _, primary_k = _primary(task)
    return sorted(set(DEFAULT_KS) | set(task.meta.k_list) | {primary_k})


def _primary(task: Task) -> tuple[str, int]:
    try:
        return parse_metric_name(task.meta.primary_metric)
    except ValueError as exc:
        raise ConfigError(f"task {task.meta.task!r}: {exc}") from None


def score_task(
    task: Task,
    *,
    scores: ArraySource | None = None,
    query_emb: ArraySource | None = None,
    cand_emb: ArraySource | None = None,
    similarity: str = "cosine",
    pessimistic: bool = False,
    search: str = "exact",
) -> dict[str, Any]:
    """The per-task result dict (what `embedrl score` writes).

    Give either `scores` (num_queries × num_candidates, rows in queries.jsonl order, columns in candidates.jsonl
    order; for local tasks each query's columns are picked from it) or both `query_emb` and `cand_emb` (one row
    per query / candidate). Arrays or .npy paths (memory-mapped). `similarity` is "cosine" or "dot";
    `search` picks exact blockwise ranking or FAISS for global tasks ("faiss-flat" is exact too,
    "faiss-hnsw" approximate). `pessimistic` adds `pessimistic_hit@1` (top ties counted against the model).

    `main_score` is the task's primary metric as a fraction in [0, 1], like VLM2Vec's score files.
    """
    if similarity not in rank.SIMILARITIES:
        raise ConfigError(
            f"unknown similarity {similarity!r}; expected one of {', '.join(rank.SIMILARITIES)}"
        )
    if search not in SEARCH_METHODS:
        raise ConfigError(f"unknown search {search!r}; expected one of {', '.join(SEARCH_METHODS)}")
    primary_name, primary_k = _primary(task)
    ks = metric_ks(task)
    depth = max(ks) + 1
    given_scores = scores is not None
    if given_scores == (query_emb is not None or cand_emb is not None) or (
        not given_scores and (query_emb is None or cand_emb is None)
    ):
        raise ConfigError("give either a score matrix, or query and candidate embeddings (both)")

    if given_scores:
        scores, s_label = load_array(scores, "scores")
        _check_scores(scores, s_label, task)
    else:
        query_emb, q_label = load_array(query_emb, "query_emb")
        cand_emb, c_label = load_array(cand_emb, "cand_emb")
        _check_embeddings(query_emb, q_label, cand_emb, c_label, task)

    if task.is_local:
        if search != "exact":
            log.info(
                "%s: local task, ranked exactly (search=%s applies to global tasks)", task.meta.task, search
            )
        ranked = _rank_local(task, depth, scores, query_emb, cand_emb, similarity)
    else:
        ranked = _rank_global(task, depth, scores, query_emb, cand_emb, similarity, search)

    relevance = task.relevance()
    position = task.candidate_index()
    per_query_rel = [
        {position[cid]: grade for cid, grade in relevance.get(q.id, {}).items()} for q in task.queries
    ]
    judged = judge(ranked.indices, per_query_rel, depth)
    metrics = task_metrics(judged, ks, METRIC_NAMES)
    if pessimistic:
        metrics["pessimistic_hit@1"] = float(
            pessimistic_hit_at_1(judged, ranked.scores, ranked.valid, ranked.complete).mean()
        )
    tied = top1_tied(ranked.scores, ranked.valid)
    without_positives = sum(1 for rel in per_query_rel if not rel)
    if without_positives:
        log.warning(
            "%s: %d queries have no relevant candidate (hit/ndcg/mrr/map 0, recall 1.0 for them)",
            task.meta.task,
            without_positives,
        )
    return {
        "benchmark": task.meta.benchmark,
        "task": task.meta.task,
        "modality": task.meta.modality,
        "meta_task": task.meta.meta_task,
        "eval_type": task.meta.eval_type,
        "primary_metric": task.meta.primary_metric,
        "main_score": metrics[f"{primary_name}@{primary_k}"],
        "metrics": metrics,
        "k_list": ks,
        "num_queries": len(task.queries),
        "num_candidates": len(task.candidates),
        "queries_without_positives": without_positives,
        "tie_rate": float(tied.mean()) if tied.size else 0.0,
        "similarity": "given scores" if given_scores else similarity,
        "search": "exact" if given_scores or task.is_local else search,
        "version_note": task.meta.version_note,
        "source": task.meta.source,
        "embedrl_version": __version__,
    }
