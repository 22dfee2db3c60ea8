"""Batch samplers.

`SubBatchSampler` (stage 1, the VLM2Vec sub-batch scheme of the released `InterleavedSubBatchSampler`): a global batch is made of sub-batches, each drawn from ONE dataset
(in-batch negatives from the same dataset are harder), the dataset picked with probability ∝ weight × size,
each dataset an endless reshuffled cycle, at most `max_video_sub_batches` video sub-batches per global batch
(an extra video draw is redrawn among the others), and the global batch split contiguously across ranks.

`PairGroupSampler` (stage 2): each RL step takes B pairs from one dataset.

Both are deterministic in (seed, epoch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Mixture:
    """Dataset weights (Table 5 of the paper) and which datasets are video."""

    weights: dict[str, float]
    video: set[str]

    @classmethod
    def from_yaml(cls, path: str | Path) -> Mixture:
        """Either `{name: weight}` or `{"datasets": {name: {"weight": w, "video": bool}}}`."""
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: mixture file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        raw = raw.get("datasets", raw) if isinstance(raw, dict) else raw
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{path}: expected a mapping of dataset name to weight")
        weights, video = {}, set()
        for name, spec in raw.items():
            if isinstance(spec, dict):
                weight = spec.get("weight", 1.0)
                if spec.get("video"):
                    video.add(str(name))
            else:
                weight = spec
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise ConfigError(f"{path}: dataset {name!r}: weight must be a number >= 0, got {weight!r}")
            weights[str(name)] = float(weight)
        return cls(weights, video)


class SubBatchSampler:
    """Yields this rank's list of dataset indices per step; `len()` is the number of steps per epoch."""

    def __init__(
        self,
        datasets: Mapping[str, Sequence[int]],
        sub_batch_size: int,
        sub_batches_per_batch: int = 1,
        weights: Mapping[str, float] | None = None,
        video_datasets: set[str] | None = None,
        max_video_sub_batches: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        steps_per_epoch: int | None = None,
    ):
        self.datasets = {k: list(v) for k, v in datasets.items() if len(v) > 0}
        if not self.datasets:
            raise ConfigError("no non-empty dataset to sample from")
        weights = dict(weights or {})
        unknown = set(weights) - set(self.datasets)
        if weights and unknown == set(weights):
            raise ConfigError(
                f"no mixture weight names a dataset of the data (typo?): weights for "
                f"{sorted(weights)[:5]}, data has {sorted(self.datasets)[:5]}"
            )
        if unknown:
            log.warning("mixture weights for datasets absent from the data are ignored: %s", sorted(unknown))
        self.weights = {k: float(weights.get(k, 1.0)) for k in self.datasets}
        self.names = sorted(n for n in self.datasets if self.weights[n] > 0)
        if not self.names:
            raise ConfigError("every dataset has weight 0")
        small = [
            f"{n} ({len(self.datasets[n])})" for n in self.names if len(self.datasets[n]) < sub_batch_size
        ]
        if small:
            # A sub-batch larger than its dataset would repeat pairs: a pair would be its own negative.
            raise ConfigError(
                f"datasets smaller than the sub-batch size {sub_batch_size}: {', '.join(small)}; "
                "lower the sub-batch size or give them weight 0"
            )
        self.video = set(video_datasets or ()) & set(self.names)
        self.sub_batch_size = sub_batch_size
        self.sub_batches_per_batch = sub_batches_per_batch
        self.max_video = max_video_sub_batches
        if (
            self.video
            and not (set(self.names) - self.video)
            and sub_batches_per_batch > max_video_sub_batches
        ):
            raise ConfigError(
                "only video datasets are left but a batch may hold at most "
                f"{max_video_sub_batches} video sub-batch(es)"
            )
        self.global_batch = sub_batch_size * sub_batches_per_batch
        if self.global_batch % world_size:
            raise ConfigError(f"global batch {self.global_batch} is not divisible by {world_size} ranks")
        self.world_size, self.rank, self.seed = world_size, rank, seed
        total = sum(len(self.datasets[n]) for n in self.names)
        self.steps_per_epoch = steps_per_epoch or max(1, total // self.global_batch)
        self.epoch = 0
        sizes = np.array([len(self.datasets[n]) for n in self.names], dtype=float)
        w = np.array([self.weights[n] for n in self.names]) * sizes
        self.probabilities = w / w.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def draw_datasets(self, rng: np.random.Generator) -> list[str]:
        """Dataset names of one global batch's sub-batches, with the video cap applied."""
        chosen: list[str] = []
        video_used = 0
        non_video = [i for i, n in enumerate(self.names) if n not in self.video]
        for _ in range(self.sub_batches_per_batch):
            idx = int(rng.choice(len(self.names), p=self.probabilities))
            if self.names[idx] in self.video:
                if video_used >= self.max_video:
                    p = self.probabilities[non_video] / self.probabilities[non_video].sum()
                    idx = non_video[int(rng.choice(len(non_video), p=p))]
                else:
                    video_used += 1
            chosen.append(self.names[idx])
        return chosen

    def global_batches(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        cycles = {n: _Cycle(self.datasets[n], rng) for n in self.names}
        for _ in range(self.steps_per_epoch):
            batch: list[int] = []
            for name in self.draw_datasets(rng):
                batch.extend(cycles[name].take(self.sub_batch_size))
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.global_batch // self.world_size
        start = self.rank * per_rank
        for batch in self.global_batches():
            yield batch[start : start + per_rank]


class _Cycle:
    """An endless, reshuffled pass over a dataset's indices."""

    def __init__(self, indices: list[int], rng: np.random.Generator):
        self.indices, self.rng = indices, rng
        self.order: list[int] = []

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        taken: set[int] = set()
        deferred: list[int] = []
        while len(out) < n:
            if not self.order:
                self.order = [self.indices[i] for i in self.rng.permutation(len(self.indices))]
            index = self.order.pop(0)
            if index in taken:
                # A sub-batch straddling a reshuffle must not hold a pair twice (it would be its own
                # negative); the repeat waits for the next sub-batch instead of being dropped.
                deferred.append(index)
                continue
            taken.add(index)
            out.append(index)
        self.order = deferred + self.order
        return out


class PairGroupSampler:
    """EG-RL batches: B distinct pairs from one dataset per step (dataset ∝ weight × size)."""

    def __init__(
        self,
        datasets: Mapping[str, Sequence[int]],
        pairs_per_step: int,
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        steps_per_epoch: int | None = None,
    ):
        self.inner = SubBatchSampler(
            datasets, pairs_per_step, 1, weights, None, seed=seed, steps_per_epoch=steps_per_epoch
        )

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.inner)
