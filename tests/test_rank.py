"""Blockwise exact top-k equals a stable full sort (ties included); FAISS flat agrees; memory stays bounded."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from embedrl.errors import ConfigError
from embedrl.eval import rank


def stable_full_topk(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_blockwise_equals_full_sort_on_random_data(similarity):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((37, 16)).astype(np.float32)
    c = rng.standard_normal((3000, 16)).astype(np.float32)
    full = rank.full_similarity(q, c, similarity)
    # A tiny budget forces many query blocks and candidate chunks (here 4 x 3 of them).
    assert rank.plan_blocks(37, 3000, 40_000, dim=16) == (9, 1024)
    top = rank.exact_topk(q, c, 11, similarity=similarity, block_bytes=40_000)
    assert top.indices.tolist() == stable_full_topk(full, 11).tolist()
    np.testing.assert_allclose(top.scores, np.take_along_axis(full, top.indices, axis=1), rtol=1e-6)


def test_ties_go_to_the_lower_index_across_chunks():
    # Small integers: every product is exact in float32, and many scores tie exactly.
    rng = np.random.default_rng(1)
    q = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)
    c = rng.integers(-2, 3, size=(3000, 4)).astype(np.float32)
    full = q @ c.T
    expected = stable_full_topk(full, 11)
    for budget in (8_000, 100_000, rank.DEFAULT_BLOCK_BYTES):
        top = rank.exact_topk(q, c, 11, similarity="dot", block_bytes=budget)
        assert top.indices.tolist() == expected.tolist(), budget


def test_block_topk_fixes_a_cut_inside_a_tie():
    block = np.array([[1.0, 5.0, 3.0, 3.0, 3.0, 3.0, 0.0, 3.0]], dtype=np.float32)
    cols, scores = rank.block_topk(block, 3)
    assert cols.tolist() == [[1, 2, 3]]
    assert scores.tolist() == [[5.0, 3.0, 3.0]]


def test_topk_from_scores_and_small_pools():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 4, size=(20, 30)).astype(np.float64)
    top = rank.topk_from_scores(s, 6, block_bytes=500)
    assert top.indices.tolist() == stable_full_topk(s, 6).tolist()
    assert top.scores.dtype == np.float64
    small = rank.topk_from_scores(s[:, :3], 6)  # pool smaller than k: padded
    assert small.indices[:, 3:].tolist() == [[-1, -1, -1]] * 20
    assert np.isneginf(small.scores[:, 3:]).all()
    assert small.valid[:, :3].all() and not small.valid[:, 3:].any()


def test_memmapped_pool(tmp_path):
    rng = np.random.default_rng(3)
    c = rng.standard_normal((5000, 8)).astype(np.float32)
    np.save(tmp_path / "c.npy", c)
    pool = np.load(tmp_path / "c.npy", mmap_mode="r")
    q = rng.standard_normal((9, 8)).astype(np.float32)
    top = rank.exact_topk(q, pool, 5, block_bytes=20_000)
    assert top.indices.tolist() == stable_full_topk(rank.full_similarity(q, c), 5).tolist()


def test_block_plan_bounds_memory_for_a_million_candidate_pool():
    # 1,000 queries x 1,000,000 candidates: the full float32 matrix would be 4 GB.
    q_block, c_chunk = rank.plan_blocks(1000, 1_000_000, dim=2048)
    assert q_block * c_chunk * 4 <= rank.DEFAULT_BLOCK_BYTES  # one score block
    assert c_chunk * 2048 * 4 <= rank.DEFAULT_BLOCK_BYTES  # one normalised pool chunk
    assert c_chunk < 1_000_000
    q_block, c_chunk = rank.plan_blocks(10, 50, block_bytes=1 << 30)
    assert (q_block, c_chunk) == (10, 50)


def test_zero_vector_and_bad_arguments():
    q = np.ones((2, 3), dtype=np.float32)
    c = np.ones((4, 3), dtype=np.float32)
    c[2] = 0
    with pytest.raises(ValueError, match="candidates: row 2 is a zero vector"):
        rank.exact_topk(q, c, 2)
    big = np.ones((3000, 3), dtype=np.float32)
    big[2500] = 0
    with pytest.raises(ValueError, match="candidates: row 2500 is a zero vector"):  # in a later chunk
        rank.exact_topk(q, big, 2, block_bytes=8192)
    with pytest.raises(ConfigError, match="similarity"):
        rank.exact_topk(q, np.ones((4, 3)), 2, similarity="l2")
    with pytest.raises(ValueError, match="shapes"):
        rank.exact_topk(q, np.ones((4, 5)), 2)


def test_faiss_flat_equals_blockwise():
    pytest.importorskip("faiss", reason="faiss-cpu (the `index` extra) is not installed")
    rng = np.random.default_rng(4)
    q = rng.standard_normal((25, 32)).astype(np.float32)
    c = rng.standard_normal((2000, 32)).astype(np.float32)
    exact = rank.exact_topk(q, c, 10)
    via_faiss = rank.faiss_topk(q, c, 10, index="flat")
    assert via_faiss.indices.tolist() == exact.indices.tolist()
    np.testing.assert_allclose(via_faiss.scores, exact.scores, rtol=1e-5, atol=1e-6)
    # Exact ties (integer data, dot product): FAISS's tie order is normalised to the lower index.
    qi = rng.integers(-2, 3, size=(30, 4)).astype(np.float32)
    ci = rng.integers(-2, 3, size=(500, 4)).astype(np.float32)
    tied = rank.faiss_topk(qi, ci, 7, similarity="dot", index="flat")
    assert tied.indices.tolist() == stable_full_topk(qi @ ci.T, 7).tolist()


def test_faiss_hnsw_is_close_to_exact():
    pytest.importorskip("faiss", reason="faiss-cpu (the `index` extra) is not installed")
    rng = np.random.default_rng(5)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    c = rng.standard_normal((3000, 16)).astype(np.float32)
    exact = rank.exact_topk(q, c, 10)
    approx = rank.faiss_topk(q, c, 10, index="hnsw", ef_search=200)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.indices, approx.indices)])
    assert overlap > 0.9


def test_peak_allocation_stays_within_the_block_budget(tmp_path):
    """100 queries x 200,000 candidates: the full score matrix would be 80 MB; numpy allocations stay near the
    4 MB budget (tracemalloc sees numpy buffers; the memory-mapped pool itself is not allocated)."""
    import tracemalloc

    import torch  # noqa: F401  (imported before tracing: its import allocates tens of MB)

    rng = np.random.default_rng(6)
    np.save(tmp_path / "pool.npy", rng.standard_normal((200_000, 64), dtype=np.float32))
    pool = np.load(tmp_path / "pool.npy", mmap_mode="r")
    q = rng.standard_normal((100, 64), dtype=np.float32)
    budget = 4 << 20
    tracemalloc.start()
    try:
        top = rank.exact_topk(q, pool, 10, block_bytes=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert top.indices.shape == (100, 10)
    assert peak < 4 * budget, f"peak {peak / 2**20:.1f} MB"
    assert peak < 100 * 200_000 * 4 / 4  # far below the full matrix


def test_missing_faiss_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ConfigError, match=r"embedrl\[index\]"):
        rank.faiss_topk(np.ones((1, 2)), np.ones((3, 2)), 1)
