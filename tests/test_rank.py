"""Blockwise exact top-k equals the full stable sort (ties included); FAISS flat agrees without ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedrl.errors import ConfigError
from embedrl.eval.rank import exact_topk, faiss_topk, topk_from_scores


def _reference(q: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ c.astype(np.float64).T), axis=1, kind="stable")[:, :k]


def test_blockwise_equals_full_sort_with_exact_ties() -> None:
    # small integer vectors and dot products: exact in float32, so ties are real ties
    rng = np.random.default_rng(1)
    for _ in range(150):
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 150))
        q = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)
        c = rng.integers(-2, 3, size=(m, 4)).astype(np.float32)
        k = int(rng.integers(1, 15))
        got = exact_topk(q, c, k, similarity="dot", query_block=int(rng.integers(1, 9)),
                         candidate_block=int(rng.integers(1, 40)))
        assert np.array_equal(got.indices, _reference(q, c, k))
        from_scores = topk_from_scores((q @ c.T).astype(np.float32), k, row_block=5)
        assert np.array_equal(from_scores.indices, got.indices)


def test_blockwise_equals_full_matrix_on_random_cosine() -> None:
    rng = np.random.default_rng(2)
    q = rng.normal(size=(300, 64)).astype(np.float32)
    c = rng.normal(size=(5000, 64)).astype(np.float32)
    got = exact_topk(q, c, 10, query_block=64, candidate_block=700)
    qn = torch.nn.functional.normalize(torch.from_numpy(q), dim=-1)
    cn = torch.nn.functional.normalize(torch.from_numpy(c), dim=-1)
    full = (qn @ cn.T).numpy()
    ref = np.argsort(-full, axis=1, kind="stable")[:, :10]
    agree = got.indices == ref
    if not agree.all():  # only float rounding between matmul shapes may flip a near-tie
        rows, cols = np.nonzero(~agree)
        gaps = np.abs(full[rows, got.indices[rows, cols]] - full[rows, ref[rows, cols]])
        assert gaps.max() < 1e-6
    assert np.allclose(got.scores, np.take_along_axis(full, got.indices, 1), atol=1e-5)


def test_faiss_flat_matches_exact() -> None:
    pytest.importorskip("faiss", reason="faiss-cpu (the 'index' extra) is not installed")
    rng = np.random.default_rng(3)
    q = rng.normal(size=(200, 32)).astype(np.float32)
    c = rng.normal(size=(3000, 32)).astype(np.float32)
    for similarity in ("cosine", "dot"):
        a = exact_topk(q, c, 10, similarity=similarity)
        b = faiss_topk(q, c, 10, similarity=similarity)
        assert np.array_equal(a.indices, b.indices)
        assert np.allclose(a.scores, b.scores, atol=1e-4)
    approx = faiss_topk(q, c, 10, index="ivf", nprobe=64)
    assert (approx.indices[:, 0] == exact_topk(q, c, 1).indices[:, 0]).mean() > 0.9


def test_memory_stays_bounded_for_a_large_pool() -> None:
    """A 200,000 x 256 pool against 100 queries: the score matrix is never materialised."""
    import resource

    rng = np.random.default_rng(4)
    c = rng.normal(size=(200_000, 256)).astype(np.float32)
    q = c[rng.choice(200_000, 100, replace=False)] + 0.01
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    top = exact_topk(q, c, 5, query_block=100, candidate_block=20_000)
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert growth_mb < 150  # blocks are ~8 MB of scores plus one normalised candidate block (~20 MB)
    assert top.indices.shape == (100, 5)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="similarity"):
        exact_topk(np.ones((1, 2)), np.ones((2, 2)), 1, similarity="l2")
    with pytest.raises(ConfigError, match="equal dims"):
        exact_topk(np.ones((1, 3)), np.ones((2, 2)), 1)
