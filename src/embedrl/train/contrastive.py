"""Stage-1 loss: symmetric InfoNCE on L2-normalised vectors with features gathered across ranks, and
GradCache for large contrastive batches in bounded memory.

Loss: L = ½ [CE(s·Q·Tᵀ, y) + CE(s·T·Qᵀ, y)], s = 1/τ = 50. With several ranks each rank scores its *local*
queries against *all gathered* targets (and its local targets against all queries), with labels
`arange(n_local) + n_local·rank` — `local_loss` semantics; gathering keeps gradients so every rank's features
receive the gradient of every rank's loss. Optional hard negatives are appended to the query side's targets.
Pairs carry hard negatives only sometimes, so ranks hold different numbers of them (none, often): each rank's
count is gathered first, every rank pads its negatives to the largest count, and the padding rows are dropped
after the gather. Every rank thus makes the same collectives in the same order whatever it holds.

GradCache (Gao et al., 2021): compute all representations without a graph in chunks, compute the loss on the
full batch from detached copies, then replay each chunk with a graph and back-propagate the cached
representation gradients. Dropout is replayed with the same RNG state, so the gradients equal the plain
full-batch gradients while peak activation memory is that of one chunk.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_features(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `x` from every rank in rank order. With grad, the backward sums each rank's gradient
    contributions (torch.distributed.nn semantics); without, only the local slice carries gradient."""
    size, rank = world()
    if size == 1:
        return x
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)
    parts = [torch.zeros_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def gather_counts(count: int, device: torch.device | str = "cpu") -> list[int]:
    """`count` of every rank, in rank order. A collective: every rank must call it, whatever its count."""
    size, _ = world()
    if size == 1:
        return [count]
    local = torch.tensor([count], dtype=torch.long, device=device)
    parts = [torch.zeros_like(local) for _ in range(size)]
    dist.all_gather(parts, local)
    return [int(p.item()) for p in parts]


def gather_ragged(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `x` (n_rank, d) from every rank in rank order when ranks hold different n_rank, some none.

    all_gather needs equal sizes, so each rank pads with zero rows to the largest count and the padding rows
    are dropped after the gather rather than masked in the logits: nothing is set to -inf, so no row can be
    masked entirely and turn into NaN. Only real rows receive gradient. Costs one extra (tiny) collective."""
    size, _ = world()
    if size == 1:
        return x
    counts = gather_counts(x.shape[0], x.device)
    most = max(counts)
    if most == 0:
        return x
    padded = F.pad(x, (0, 0, 0, most - x.shape[0]))
    gathered = gather_features(padded, with_grad)
    keep = torch.cat([torch.arange(r * most, r * most + c, device=x.device) for r, c in enumerate(counts)])
    return gathered.index_select(0, keep)


@dataclass
class LossOutput:
    loss: torch.Tensor
    accuracy: float  # fraction of local queries whose top target is their own positive
    scale: float  # the logit scale s = 1/τ used


class ContrastiveLoss(torch.nn.Module):
    """Symmetric InfoNCE with gathered features. `learn_temperature=True` makes log(s) a parameter;
    `use_hard_negatives=False` ignores any hard negatives passed in (in-batch negatives only)."""

    def __init__(
        self,
        temperature: float = 0.02,
        learn_temperature: bool = False,
        gather_with_grad: bool = True,
        max_scale: float = 100.0,
        use_hard_negatives: bool = True,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        init = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = torch.nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)
        self.gather_with_grad = gather_with_grad
        self.max_scale = max_scale
        self.use_hard_negatives = use_hard_negatives

    def forward(
        self, queries: torch.Tensor, positives: torch.Tensor, hard_negatives: torch.Tensor | None = None
    ) -> LossOutput:
        if queries.shape != positives.shape:
            raise ValueError(f"queries {tuple(queries.shape)} and positives {tuple(positives.shape)} differ")
        size, rank = world()
        scale = self.log_scale.exp().clamp(max=self.max_scale)
        all_q = gather_features(queries, self.gather_with_grad)
        all_p = gather_features(positives, self.gather_with_grad)
        targets = all_p
        if self.use_hard_negatives:
            # Gathered even when this rank holds none: the other ranks' negatives are its negatives too, and
            # skipping the collective here would leave the ranks that hold some waiting forever. The backward
            # of a gather with gradients is a collective as well, so the local part is tied to the queries'
            # graph: a rank without negatives (or with detached ones) must still run that backward.
            dim = queries.shape[1]
            local = queries[:0]
            if hard_negatives is not None and hard_negatives.numel():
                local = torch.cat([local, hard_negatives.reshape(-1, dim).to(queries.dtype)])
            negatives = gather_ragged(local, self.gather_with_grad)
            if negatives.shape[0]:
                targets = torch.cat([all_p, negatives.to(all_p.dtype)], dim=0)
        n = queries.shape[0]
        labels = torch.arange(n, device=queries.device) + n * rank
        logits_q = scale * queries @ targets.T
        logits_p = scale * positives @ all_q.T
        loss = 0.5 * (F.cross_entropy(logits_q, labels) + F.cross_entropy(logits_p, labels))
        accuracy = (logits_q.argmax(dim=1) == labels).float().mean().item() if n else 0.0
        return LossOutput(loss, accuracy, float(scale.detach()))


# ------------------------------------------------------------------------------------------------ GradCache


class RNGState:
    """CPU and CUDA RNG state, captured before a chunk's first forward and restored for its replay."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    @contextlib.contextmanager
    def replay(self):
        cpu_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        try:
            yield
        finally:
            torch.set_rng_state(cpu_now)
            if cuda_now is not None:
                torch.cuda.set_rng_state_all(cuda_now)


def chunked(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def grad_cache_step(
    encode: Callable[[Sequence[Any]], torch.Tensor],
    groups: Sequence[Sequence[Any]],
    loss_fn: Callable[..., LossOutput],
    chunk_size: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    loss_scale: float = 1.0,
) -> LossOutput:
    """One GradCache step over input groups (queries, positives[, negatives]).

    `encode(chunk) -> (n, d)` embeds a chunk of inputs; `loss_fn(*group_reps)` computes the batch loss.
    Parameter gradients are accumulated through `backward` (e.g. `accelerator.backward`); with DDP, pass
    `no_sync` so only the last replayed chunk triggers the gradient all-reduce. Returns the (unscaled) loss.
    """
    plans: list[list[tuple[Sequence[Any], RNGState]]] = []
    reps: list[torch.Tensor] = []
    with torch.no_grad():
        for group in groups:
            plan, parts = [], []
            for chunk in chunked(group, chunk_size):
                state = RNGState()
                parts.append(encode(chunk))
                plan.append((chunk, state))
            plans.append(plan)
            reps.append(torch.cat(parts, dim=0) if parts else torch.empty(0))
    detached = [r.detach().requires_grad_(r.numel() > 0) for r in reps]
    out = loss_fn(*detached)
    # Gradients w.r.t. the representations (and any loss parameters, e.g. a learned temperature).
    backward(out.loss * loss_scale)
    jobs = [(g, chunk, state) for g, plan in enumerate(plans) for chunk, state in plan]
    offsets = [0] * len(groups)
    for index, (g, chunk, state) in enumerate(jobs):
        last = index == len(jobs) - 1
        grad = detached[g].grad[offsets[g] : offsets[g] + len(chunk)]
        offsets[g] += len(chunk)
        context = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with context, state.replay():
            rep = encode(chunk)
            backward(torch.dot(rep.flatten(), grad.flatten()))
    return LossOutput(out.loss.detach(), out.accuracy, out.scale)
