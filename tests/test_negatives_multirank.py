"""Hard negatives held unevenly across ranks: two real gloo processes on loopback against a single-process
oracle over the global batch, with GradCache on and off, and the switch that ignores hard negatives."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from embedrl.train.contrastive import ContrastiveLoss, grad_cache_step

WORLD = 2
PER_RANK = 3
DIM = 8
IN_DIM = 6
TEMPERATURE = 0.1
# Negatives held by (rank 0, rank 1): a rank with none on either side, unequal non-zero counts, none at all.
COUNTS = [(3, 0), (0, 2), (1, 4), (0, 0)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(fn, args: tuple, timeout: float = 90.0) -> None:
    """Spawn WORLD ranks and wait; a rank stuck in a collective fails the test instead of hanging it."""
    context = mp.spawn(fn, args=args, nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"ranks still running after {timeout:.0f} s: a collective not matched on every rank"
                )
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


@contextlib.contextmanager
def _process_group(rank: int, port: int):
    """One rank's gloo group for the body of the `with`. On success every rank is done before any tears down: a
    rank that closes its connections while its peer is still finishing the last collective makes that peer abort
    (SIGABRT, "connection closed by peer")."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    # A short collective timeout so that a mismatched collective errors out well before the test's deadline.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=30))
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _case_data(seed: int, counts: tuple[int, int], dim: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    n = WORLD * PER_RANK
    q = torch.randn(n, dim, generator=generator)
    return {
        "q": q,
        "p": q + 0.7 * torch.randn(n, dim, generator=generator),
        "neg": [torch.randn(c, dim, generator=generator) for c in counts],
    }


def _oracle_loss(q: torch.Tensor, p: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE over the whole global batch in one process, written out row by row: query i
    against every positive and every hard negative of every rank, positive i against every query."""
    scale = 1.0 / TEMPERATURE
    terms = []
    for i in range(q.shape[0]):
        candidates = torch.cat([p, negatives])
        q_logits = scale * (candidates @ q[i])
        p_logits = scale * (q @ p[i])
        q_term = torch.logsumexp(q_logits, 0) - q_logits[i]
        p_term = torch.logsumexp(p_logits, 0) - p_logits[i]
        terms.append(0.5 * (q_term + p_term))
    return torch.stack(terms).mean()


# ------------------------------------------------------------------------------------ loss on features


def _loss_worker(rank: int, port: int, cases: list[dict], variants: list[dict], out_dir: str) -> None:
    """Each case under each variant (ContrastiveLoss keyword arguments), results in case-major order."""
    with _process_group(rank, port):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results = []
        for case in cases:
            for kwargs in variants:
                q = F.normalize(case["q"][rows], dim=-1).clone().requires_grad_(True)
                p = F.normalize(case["p"][rows], dim=-1).clone().requires_grad_(True)
                neg = F.normalize(case["neg"][rank], dim=-1).clone().requires_grad_(True)
                out = ContrastiveLoss(temperature=TEMPERATURE, **kwargs)(q, p, neg)
                out.loss.backward()
                grad_neg = neg.grad if neg.grad is not None else torch.zeros_like(neg)
                results.append({"loss": out.loss.item(), "gq": q.grad, "gp": p.grad, "gneg": grad_neg})
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.timeout(120)
def test_uneven_negatives_across_ranks_equal_the_global_batch(tmp_path: Path) -> None:
    cases = [_case_data(seed, counts, DIM) for seed, counts in enumerate(COUNTS)]
    # Gathering without gradients must make the same collectives too (its loss is the same, its gradient not).
    variants = [{}, {"gather_with_grad": False}]
    _run_ranks(_loss_worker, (_free_port(), cases, variants, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for index, (case, counts) in enumerate(zip(cases, COUNTS)):
        q = F.normalize(case["q"], dim=-1).requires_grad_(True)
        p = F.normalize(case["p"], dim=-1).requires_grad_(True)
        negs = [F.normalize(n, dim=-1).requires_grad_(True) for n in case["neg"]]
        loss = _oracle_loss(q, p, torch.cat(negs))
        loss.backward()
        got = [r[len(variants) * index] for r in ranks]
        without_grad = [r[len(variants) * index + 1] for r in ranks]
        assert sum(g["loss"] for g in without_grad) / WORLD == pytest.approx(loss.item(), abs=1e-5), counts
        # Each rank averages over its own queries (equal numbers): the global mean is the mean of the ranks'.
        assert sum(g["loss"] for g in got) / WORLD == pytest.approx(loss.item(), abs=1e-5), counts
        # The gather sums every rank's contribution to a feature; data parallelism then averages the ranks.
        assert torch.allclose(torch.cat([g["gq"] for g in got]) / WORLD, q.grad, atol=1e-5), counts
        assert torch.allclose(torch.cat([g["gp"] for g in got]) / WORLD, p.grad, atol=1e-5), counts
        for rank in range(WORLD):
            expected = negs[rank].grad if negs[rank].grad is not None else torch.zeros(0, DIM)
            assert torch.allclose(got[rank]["gneg"] / WORLD, expected, atol=1e-5), (counts, rank)
            assert torch.isfinite(got[rank]["gq"]).all()


@pytest.mark.timeout(120)
def test_switched_off_hard_negatives_give_the_in_batch_loss_on_two_ranks(tmp_path: Path) -> None:
    cases = [_case_data(10, (3, 0), DIM), _case_data(11, (2, 5), DIM)]
    _run_ranks(_loss_worker, (_free_port(), cases, [{"use_hard_negatives": False}], str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for index, case in enumerate(cases):
        q = F.normalize(case["q"], dim=-1).requires_grad_(True)
        p = F.normalize(case["p"], dim=-1).requires_grad_(True)
        loss = _oracle_loss(q, p, torch.zeros(0, DIM))
        loss.backward()
        got = [r[index] for r in ranks]
        assert sum(g["loss"] for g in got) / WORLD == pytest.approx(loss.item(), abs=1e-5)
        assert torch.allclose(torch.cat([g["gq"] for g in got]) / WORLD, q.grad, atol=1e-5)
        assert all(float(g["gneg"].abs().sum()) == 0.0 for g in got)


def test_switched_off_hard_negatives_give_the_in_batch_loss() -> None:
    case = _case_data(3, (4, 0), DIM)
    q, p = F.normalize(case["q"], dim=-1).requires_grad_(True), F.normalize(case["p"], dim=-1)
    neg = F.normalize(case["neg"][0], dim=-1).requires_grad_(True)
    off = ContrastiveLoss(temperature=TEMPERATURE, use_hard_negatives=False)(q, p, neg)
    in_batch = ContrastiveLoss(temperature=TEMPERATURE)(q, p)
    with_negatives = ContrastiveLoss(temperature=TEMPERATURE)(q, p, neg)
    assert off.loss.item() == pytest.approx(in_batch.loss.item(), abs=1e-7)
    assert off.loss.item() == pytest.approx(_oracle_loss(q, p, torch.zeros(0, DIM)).item(), abs=1e-5)
    assert with_negatives.loss.item() > off.loss.item()  # the negatives were really there to be ignored
    off.loss.backward()
    assert neg.grad is None


def test_single_process_takes_empty_or_missing_negatives() -> None:
    case = _case_data(4, (0, 0), DIM)
    q, p = F.normalize(case["q"], dim=-1), F.normalize(case["p"], dim=-1)
    reference = ContrastiveLoss(temperature=TEMPERATURE)(q, p).loss.item()
    for empty in (torch.zeros(0, DIM), torch.empty(0)):  # GradCache hands an empty group over as empty(0)
        assert ContrastiveLoss(temperature=TEMPERATURE)(q, p, empty).loss.item() == pytest.approx(reference)


# ------------------------------------------------------------------------------- GradCache with an encoder


def _encoder() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(IN_DIM, DIM)


def _encode_with(model: torch.nn.Module):
    def encode(chunk) -> torch.Tensor:
        return F.normalize(model(torch.stack(list(chunk))), dim=-1)

    return encode


def _grad_cache_worker(rank: int, port: int, cases: list[dict], out_dir: str) -> None:
    with _process_group(rank, port):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results = []
        for case in cases:
            model = _encoder()
            groups = [list(case["q"][rows]), list(case["p"][rows]), list(case["neg"][rank])]
            out = grad_cache_step(
                _encode_with(model), groups, ContrastiveLoss(temperature=TEMPERATURE), chunk_size=2
            )
            results.append(
                {"loss": out.loss.item(), "w": model.weight.grad.clone(), "b": model.bias.grad.clone()}
            )
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.timeout(120)
def test_grad_cache_with_uneven_negatives_across_ranks_equals_the_global_batch(tmp_path: Path) -> None:
    cases = [_case_data(20 + seed, counts, IN_DIM) for seed, counts in enumerate(COUNTS)]
    _run_ranks(_grad_cache_worker, (_free_port(), cases, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for index, (case, counts) in enumerate(zip(cases, COUNTS)):
        model = _encoder()
        encode = _encode_with(model)
        negatives = torch.cat(case["neg"])
        loss = _oracle_loss(
            encode(case["q"]), encode(case["p"]), encode(negatives) if len(negatives) else torch.zeros(0, DIM)
        )
        loss.backward()
        got = [r[index] for r in ranks]
        assert sum(g["loss"] for g in got) / WORLD == pytest.approx(loss.item(), abs=1e-5), counts
        # What DDP's all-reduce would leave on every rank: the mean of the ranks' parameter gradients.
        assert torch.allclose(sum(g["w"] for g in got) / WORLD, model.weight.grad, atol=1e-5), counts
        assert torch.allclose(sum(g["b"] for g in got) / WORLD, model.bias.grad, atol=1e-5), counts
