"""Stage-1 loss: hand-computed values, two real gloo ranks on loopback, GradCache gradient equality."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from embedrl.data.synthetic import write_training_pairs
from embedrl.models.embedder import Embedder, LoraSettings
from embedrl.train.contrastive import ContrastiveLoss, grad_cache_step
from embedrl.train.pairs import read_pairs
from embedrl.train.stage1 import PairCollator


def test_loss_matches_hand_computation() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    out = ContrastiveLoss(temperature=0.5)(q, p)
    # logits q->p = 2*[[1, .6], [0, .8]]; p->q = 2*[[1, 0], [.6, .8]]
    q_side = (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(-1.6))) / 2
    p_side = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-0.4))) / 2
    assert out.loss.item() == pytest.approx(0.5 * (q_side + p_side), abs=1e-6)
    assert out.accuracy == 1.0 and out.scale == pytest.approx(2.0)


def test_hard_negatives_enter_the_query_side_only() -> None:
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0]])
    neg = torch.tensor([[1.0, 0.0]])
    out = ContrastiveLoss(temperature=1.0)(q, p, neg)
    # q side: CE over [q.p, q.neg] = [0, 1] with label 0; p side: a single candidate -> 0
    assert out.loss.item() == pytest.approx(0.5 * math.log(1 + math.e), abs=1e-6)
    assert out.accuracy == 0.0


def test_learned_temperature_is_a_parameter() -> None:
    loss = ContrastiveLoss(temperature=0.02, learn_temperature=True)
    assert isinstance(loss.log_scale, torch.nn.Parameter)
    out = loss(torch.eye(3), torch.eye(3))
    out.loss.backward()
    assert loss.log_scale.grad is not None
    assert not isinstance(ContrastiveLoss(0.02).log_scale, torch.nn.Parameter)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, q: torch.Tensor, p: torch.Tensor, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = q.shape[0] // world
        local_q = q[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        local_p = p[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        out = ContrastiveLoss(temperature=0.05)(local_q, local_p)
        out.loss.backward()
        torch.save(
            {"loss": out.loss.item(), "gq": local_q.grad, "gp": local_p.grad, "acc": out.accuracy},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        # every rank done before any closes its connections, else the peer may abort ("closed by peer")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_single_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    p = torch.nn.functional.normalize(q + 0.5 * torch.randn(8, 16), dim=-1)
    mp.spawn(_rank_worker, args=(2, _free_port(), q, p, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    full_q, full_p = q.clone().requires_grad_(True), p.clone().requires_grad_(True)
    single = ContrastiveLoss(temperature=0.05)(full_q, full_p)
    single.loss.backward()
    assert np.mean([r["loss"] for r in ranks]) == pytest.approx(single.loss.item(), abs=1e-6)
    # all_gather with grad sums every rank's contribution; DDP then averages over the 2 ranks
    rank_gq = torch.cat([r["gq"] for r in ranks]) / 2
    rank_gp = torch.cat([r["gp"] for r in ranks]) / 2
    assert torch.allclose(rank_gq, full_q.grad, atol=1e-6)
    assert torch.allclose(rank_gp, full_p.grad, atol=1e-6)


# ---------------------------------------------------------------------------------------------- GradCache


@pytest.fixture(scope="module")
def pair_batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    pairs = read_pairs(write_training_pairs(root / "pairs.jsonl", n=12, datasets=("syn_t2i",)))
    return pairs[:6]


def _lora_embedder(path: Path, dropout: float) -> Embedder:
    emb = Embedder.from_pretrained(path)
    torch.manual_seed(1)
    emb.add_lora(LoraSettings(r=4, alpha=8, dropout=dropout))
    with torch.no_grad():
        for name, param in emb.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    emb.model.train()
    return emb


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _relative_error(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    den = sum(float(b[k].norm() ** 2) for k in b) ** 0.5
    return num / den


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_grad_cache_gradients_equal_plain(tiny_qwen3_embedder, pair_batch, dropout: float) -> None:
    emb = _lora_embedder(tiny_qwen3_embedder, dropout)
    batch = PairCollator(emb)(pair_batch)
    groups = [batch["queries"], batch["positives"]]
    loss_fn = ContrastiveLoss(temperature=0.05)

    def encode(chunk):
        return emb.forward_batch(emb.collate(chunk))

    # Reference: everything kept in one graph. Without dropout the full batch is one forward; with dropout the
    # reference encodes in the same chunks so both consume the random stream in the same order.
    torch.manual_seed(123)
    if dropout == 0.0:
        reps = [encode(g) for g in groups]
    else:
        reps = [torch.cat([encode(g[i : i + 2]) for i in range(0, len(g), 2)]) for g in groups]
    plain = loss_fn(*reps)
    plain.loss.backward()
    reference = _grads(emb.model)
    emb.model.zero_grad(set_to_none=True)

    torch.manual_seed(123)
    cached = grad_cache_step(encode, groups, loss_fn, chunk_size=2)
    assert cached.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    assert _relative_error(_grads(emb.model), reference) < 1e-5
