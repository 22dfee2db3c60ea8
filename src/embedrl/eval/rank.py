"""Exact top-k over a candidate pool in bounded memory, plus optional FAISS search.

`exact_topk` scores queries against the pool block by block (a query block × a candidate block at a time,
candidates normalised per block for cosine), keeps a running top-k, and never holds the full
queries × candidates score matrix: a 1,000,000 × 2048 float32 pool against 1,000 queries uses a few hundred MB
beyond the pool itself. Order is (−score, candidate index) exactly — ties go to the lower index, as in the
stable full sort — so the result equals `np.argsort(-scores, kind="stable")[:, :k]`.

`faiss_topk` (the `index` extra) gives the same top-k with an exact flat index (when there are no exact
ties), or approximate results with an IVF index for very large pools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

SIMILARITIES = ("cosine", "dot")


@dataclass
class TopK:
    indices: np.ndarray   # (n_queries, k) int64, best first
    scores: np.ndarray    # (n_queries, k) float32


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _merge(best_s: torch.Tensor, best_i: torch.Tensor, new_s: torch.Tensor, new_i: torch.Tensor, k: int):
    """Top-k of the union, ordered by (−score, index)."""
    scores = torch.cat([best_s, new_s], dim=1)
    idx = torch.cat([best_i, new_i], dim=1)
    # Sort by index first, then stably by score: ties end up in increasing index order.
    by_index = torch.argsort(idx, dim=1, stable=True)
    scores, idx = torch.gather(scores, 1, by_index), torch.gather(idx, 1, by_index)
    order = torch.argsort(-scores, dim=1, stable=True)[:, :k]
    return torch.gather(scores, 1, order), torch.gather(idx, 1, order)


def _block_topk(block: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of one score block with exact tie handling at the k-th value."""
    kk = min(k, block.shape[1])
    values, _ = torch.topk(block, kk, dim=1, sorted=True)
    threshold = values[:, -1:]
    # Everything at or above the k-th value competes; usually exactly k columns, more only with ties.
    candidates = block >= threshold
    counts = candidates.sum(dim=1)
    width = int(counts.max())
    if width == kk:
        cols = torch.topk(candidates.to(torch.int8) * 2 - 1, kk, dim=1, sorted=False).indices
    else:
        # rank candidate columns first, lower column index first among them
        key = candidates.to(torch.int64) * (block.shape[1] + 1) - torch.arange(block.shape[1])
        cols = torch.topk(key, width, dim=1, sorted=False).indices
    scores = torch.gather(block, 1, cols)
    valid = torch.gather(candidates, 1, cols)
    scores = torch.where(valid, scores, torch.full_like(scores, -torch.inf))
    return scores, cols.to(torch.int64) + offset


def exact_topk(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    similarity: str = "cosine",
    query_block: int = 1024,
    candidate_block: int = 32768,
) -> TopK:
    """Exact top-k of each query over `candidates`, computed blockwise; see the module docstring."""
    if similarity not in SIMILARITIES:
        raise ConfigError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ConfigError(f"queries {queries.shape} and candidates {candidates.shape} must be 2-D with equal dims")
    n, m = queries.shape[0], candidates.shape[0]
    k = min(k, m)
    out_i = np.empty((n, k), dtype=np.int64)
    out_s = np.empty((n, k), dtype=np.float32)
    for q0 in range(0, n, query_block):
        q = _as_tensor(queries[q0:q0 + query_block])
        if similarity == "cosine":
            q = _normalise(q)
        best_s = torch.full((q.shape[0], 0), -torch.inf)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64)
        for c0 in range(0, m, candidate_block):
            c = _as_tensor(candidates[c0:c0 + candidate_block])
            if similarity == "cosine":
                c = _normalise(c)
            s, i = _block_topk(q @ c.T, c0, k)
            best_s, best_i = _merge(best_s, best_i, s, i, k)
        out_s[q0:q0 + q.shape[0]] = best_s.numpy()
        out_i[q0:q0 + q.shape[0]] = best_i.numpy()
    return TopK(out_i, out_s)


def topk_from_scores(scores: np.ndarray, k: int, row_block: int = 1024) -> TopK:
    """Top-k of a precomputed score matrix (rows: queries), same ordering rule, block of rows at a time."""
    n, m = scores.shape
    k = min(k, m)
    out_i = np.empty((n, k), dtype=np.int64)
    out_s = np.empty((n, k), dtype=np.float32)
    for r0 in range(0, n, row_block):
        block = _as_tensor(scores[r0:r0 + row_block])
        s, i = _block_topk(block, 0, k)
        s, i = _merge(torch.full((block.shape[0], 0), -torch.inf), torch.zeros((block.shape[0], 0), dtype=torch.int64),
                      s, i, k)
        out_s[r0:r0 + block.shape[0]] = s.numpy()
        out_i[r0:r0 + block.shape[0]] = i.numpy()
    return TopK(out_i, out_s)


def faiss_topk(queries: np.ndarray, candidates: np.ndarray, k: int, similarity: str = "cosine",
               index: str = "flat", nlist: int | None = None, nprobe: int = 16) -> TopK:
    """Top-k with FAISS: 'flat' is exact inner product; 'ivf' is approximate (nlist ≈ 4·sqrt(pool))."""
    try:
        import faiss  # noqa: PLC0415 - optional extra
    except ImportError:
        raise ConfigError("FAISS search needs the index extra: pip install 'embedrl[index]'") from None
    if similarity not in SIMILARITIES:
        raise ConfigError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    q = np.ascontiguousarray(queries, dtype=np.float32).copy()
    c = np.ascontiguousarray(candidates, dtype=np.float32).copy()
    if similarity == "cosine":
        faiss.normalize_L2(q)
        faiss.normalize_L2(c)
    d = c.shape[1]
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = nlist or max(1, int(4 * np.sqrt(len(c))))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(c)
        idx.nprobe = nprobe
    else:
        raise ConfigError(f"index must be 'flat' or 'ivf', got {index!r}")
    idx.add(c)
    scores, indices = idx.search(q, min(k, len(c)))
    return TopK(indices.astype(np.int64), scores.astype(np.float32))
