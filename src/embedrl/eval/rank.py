"""Top-k search over a candidate pool: exact and blockwise in bounded memory, or through FAISS.

Order everywhere is (−score, candidate index): ties go to the lower index, as a stable full sort would give.

`exact_topk` never holds the queries × candidates score matrix. It walks the pool in candidate chunks and the
queries in blocks, so one score block, and one float32 copy of a pool chunk, are each at most `block_bytes`
(256 MiB by default): 1,000 queries against a 1,000,000 × 2048 float32 pool need about 0.5 GB beyond the
pool instead of a 4 GB score matrix, and a memory-mapped pool is read once. Each block's top-k comes from `torch.topk` (fast, but with unspecified tie order); one extra column
shows whether the cut falls inside a tie, and only those rows are redone exactly. For cosine, rows are
normalised chunk by chunk before the product, the arithmetic of `normalize(Q) @ normalize(C).T`, so the
scores equal those of the full matrix (bit for bit wherever BLAS uses the same kernel).

`faiss_topk` (the `index` extra) searches a FAISS index: "flat" is exact and gives the same top-k as
`exact_topk`; "hnsw" is approximate, for pools too large to scan.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

SIMILARITIES = ("cosine", "dot")
FAISS_INDEXES = ("flat", "hnsw")
DEFAULT_BLOCK_BYTES = 256 << 20
_MAX_QUERY_BLOCK = 1024


@dataclass(frozen=True)
class TopK:
    """Best-first candidates per query. Rows of pools smaller than k are padded with index -1, score -inf."""

    indices: np.ndarray  # (num_queries, k) int64
    scores: np.ndarray  # (num_queries, k) float32 (float64 when ranking a float64 score matrix)

    @property
    def valid(self) -> np.ndarray:
        return self.indices >= 0


def _check_similarity(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise ConfigError(f"unknown similarity {similarity!r}; expected one of {', '.join(SIMILARITIES)}")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float32 (a new array). Raises ValueError naming the first zero row:
    cosine similarity is undefined for it."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"row {int(zero[0])} is a zero vector; cosine similarity is undefined")
    return x / norms


def _prepare(x: np.ndarray, similarity: str) -> np.ndarray:
    return normalize_rows(x) if similarity == "cosine" else np.asarray(x, dtype=np.float32)


def similarity_block(
    queries: np.ndarray, candidates: np.ndarray, similarity: str, out: np.ndarray | None = None
) -> np.ndarray:
    """Scores of a query block against a candidate block in float32: rows are normalised first for cosine,
    the same arithmetic as `normalize(Q) @ normalize(C).T` on the whole matrices."""
    return np.matmul(_prepare(queries, similarity), _prepare(candidates, similarity).T, out=out)


def full_similarity(queries: np.ndarray, candidates: np.ndarray, similarity: str = "cosine") -> np.ndarray:
    """The whole score matrix (for small inputs and tests); the same arithmetic as `exact_topk`."""
    _check_similarity(similarity)
    return similarity_block(queries, candidates, similarity)


# --------------------------------------------------------------------------------------- block top-k


def _lowest_index_topk(row: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k best entries of one row, ties at the cut going to the lowest columns: everything above
    the k-th largest value, then the lowest-index columns equal to it. Unordered."""
    kth_value = np.partition(row, row.size - k)[row.size - k]
    above = np.flatnonzero(row > kth_value)
    equal = np.flatnonzero(row == kth_value)
    return np.concatenate([above, equal[: k - above.size]])


def block_topk(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of a score block, ordered by (−score, column). Returns (columns, scores);
    k is capped at the number of columns."""
    import torch

    n = block.shape[1]
    k = min(k, n)
    if n <= k + 1:
        cols = np.argsort(-block, axis=1, kind="stable")[:, :k]
        return cols, np.take_along_axis(block, cols, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only input (a memmap): torch only reads it
        values, cols = torch.topk(torch.from_numpy(block), k + 1, dim=1, largest=True, sorted=True)
    values, cols = values.numpy(), cols.numpy()
    # With the (k+1)-th value equal to the k-th, torch may have kept a higher column than a stable sort would.
    cut_in_tie = np.flatnonzero(values[:, k] == values[:, k - 1])
    cols = np.ascontiguousarray(cols[:, :k])
    for r in cut_in_tie:
        cols[r] = _lowest_index_topk(block[r], k)
    scores = np.take_along_axis(block, cols, axis=1)
    order = np.lexsort((cols, -scores), axis=1)
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _merge(best: TopK, rows: slice, cols: np.ndarray, scores: np.ndarray) -> None:
    """Fold a chunk's top-k (global column indices) into the running top-k of `rows`, in place."""
    k = best.indices.shape[1]
    all_idx = np.concatenate([best.indices[rows], cols], axis=1)
    all_scores = np.concatenate([best.scores[rows], scores.astype(best.scores.dtype)], axis=1)
    # Padding (-1, -inf) sorts last because its score is lowest.
    order = np.lexsort((all_idx, -all_scores), axis=1)[:, :k]
    best.indices[rows] = np.take_along_axis(all_idx, order, axis=1)
    best.scores[rows] = np.take_along_axis(all_scores, order, axis=1)


def _empty(num_queries: int, k: int, dtype=np.float32) -> TopK:
    return TopK(
        np.full((num_queries, k), -1, dtype=np.int64), np.full((num_queries, k), -np.inf, dtype=dtype)
    )


def plan_blocks(
    num_queries: int,
    num_candidates: int,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    dim: int = 1,
    itemsize: int = 4,
) -> tuple[int, int]:
    """(query block, candidate chunk) sizes such that the score block, and the float32 copy of a candidate
    chunk (normalised for cosine), each fit in `block_bytes`."""
    query_block = max(1, min(num_queries, _MAX_QUERY_BLOCK))
    cand_chunk = max(
        1, min(num_candidates, block_bytes // (itemsize * query_block), block_bytes // (itemsize * dim))
    )
    if cand_chunk < 1024 and num_candidates > cand_chunk:
        # A tiny budget: trade query rows for candidate columns so that each matmul stays efficient.
        cand_chunk = min(num_candidates, 1024)
        query_block = max(1, block_bytes // (itemsize * cand_chunk))
    return query_block, cand_chunk


def exact_topk(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    similarity: str = "cosine",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> TopK:
    """Exact top-k candidates per query by cosine or dot product, in bounded memory (see module doc).

    `queries` (nq × d) and `candidates` (nc × d) may be memory-mapped and of any real dtype; blocks are
    scored in float32. Zero vectors raise ValueError for cosine."""
    _check_similarity(similarity)
    if k < 1:
        raise ValueError("k must be >= 1")
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"shapes {queries.shape} and {candidates.shape} do not make a query × candidate product"
        )
    nq, nc = queries.shape[0], candidates.shape[0]
    best = _empty(nq, k)
    query_block, cand_chunk = plan_blocks(nq, nc, block_bytes, dim=queries.shape[1])
    buffer = np.empty((query_block, cand_chunk), dtype=np.float32)
    # Candidates outside, queries inside: each pool chunk (maybe read from disk) is read and normalised once.
    for c0 in range(0, nc, cand_chunk):
        try:
            chunk = _prepare(candidates[c0 : c0 + cand_chunk], similarity)
        except ValueError as exc:
            raise ValueError(f"candidates: {_shift_row(exc, c0)}") from None
        for q0 in range(0, nq, query_block):
            rows = slice(q0, min(q0 + query_block, nq))
            try:
                q = _prepare(queries[rows], similarity)
            except ValueError as exc:
                raise ValueError(f"queries: {_shift_row(exc, q0)}") from None
            block = np.matmul(q, chunk.T, out=buffer[: q.shape[0], : chunk.shape[0]])
            cols, scores = block_topk(block, k)
            _merge(best, rows, cols + c0, scores)
    return best


def _shift_row(exc: ValueError, offset: int) -> str:
    """Re-number 'row i' in a block's error message to the row of the whole matrix."""
    text = str(exc)
    if text.startswith("row "):
        row, rest = text[4:].split(" ", 1)
        return f"row {int(row) + offset} {rest}"
    return text


def topk_from_scores(scores: np.ndarray, k: int, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> TopK:
    """Exact top-k of each row of a given score matrix (maybe memory-mapped), a block of rows at a time.
    float64 scores stay float64, so no ties are created by rounding."""
    if scores.ndim != 2:
        raise ValueError(f"expected a 2-D score matrix, got shape {scores.shape}")
    dtype = np.float64 if scores.dtype == np.float64 else np.float32
    nq, nc = scores.shape
    best = _empty(nq, k, dtype)
    rows_per_block = max(1, block_bytes // (np.dtype(dtype).itemsize * max(nc, 1)))
    for q0 in range(0, nq, rows_per_block):
        rows = slice(q0, min(q0 + rows_per_block, nq))
        block = np.ascontiguousarray(scores[rows], dtype=dtype)
        cols, values = block_topk(block, k)
        _merge(best, rows, cols, values)
    return best


# -------------------------------------------------------------------------------------------------- FAISS


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "FAISS search needs the `index` extra: pip install 'embedrl[index]' (faiss-cpu)"
        ) from None
    return faiss


def faiss_topk(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    similarity: str = "cosine",
    index: str = "flat",
    hnsw_m: int = 32,
    ef_search: int | None = None,
) -> TopK:
    """Top-k through FAISS. index="flat" is exact (IndexFlatIP) and, after re-sorting FAISS's output by
    (−score, index) and redoing rows whose cut falls in a tie, equals `exact_topk` whenever both compute the same
    float32 scores. index="hnsw" is approximate (IndexHNSWFlat, inner product)."""
    _check_similarity(similarity)
    if index not in FAISS_INDEXES:
        raise ConfigError(f"unknown FAISS index {index!r}; expected one of {', '.join(FAISS_INDEXES)}")
    faiss = _import_faiss()
    q = np.ascontiguousarray(_prepare(queries, similarity))
    c = np.ascontiguousarray(_prepare(candidates, similarity))
    nc, dim = c.shape
    if index == "flat":
        searcher = faiss.IndexFlatIP(dim)
    else:
        searcher = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        searcher.hnsw.efSearch = ef_search or max(64, 2 * k)
    searcher.add(c)
    depth = min(k + 1, nc)
    values, cols = searcher.search(q, depth)
    best = _empty(q.shape[0], k)
    valid = cols >= 0
    values = np.where(valid, values, -np.inf).astype(np.float32)
    if index == "flat" and depth > k:
        for r in np.flatnonzero(values[:, k] == values[:, k - 1]):
            row = c @ q[r]
            cols[r, :k] = _lowest_index_topk(row, k)
            values[r, :k] = row[cols[r, :k]]
    cols, values = cols[:, :k], values[:, :k]
    order = np.lexsort((np.where(cols >= 0, cols, np.iinfo(np.int64).max), -values), axis=1)
    best.indices[:, : cols.shape[1]] = np.take_along_axis(cols, order, axis=1)
    best.scores[:, : cols.shape[1]] = np.take_along_axis(values, order, axis=1)
    return best
