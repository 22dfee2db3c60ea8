"""Single-dataset sub-batches: proportions ∝ weight × size, the video cap, rank splits, determinism."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from embedrl.errors import ConfigError
from embedrl.train.sampler import Mixture, PairGroupSampler, SubBatchSampler


def _datasets() -> dict[str, list[int]]:
    sizes = {"a": 100, "b": 300, "c": 200, "vid": 400}
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = list(range(start, start + n))
        start += n
    return out


def test_proportions_follow_weight_times_size() -> None:
    data = _datasets()
    weights = {"a": 2.0, "b": 1.0, "c": 0.5, "vid": 1.0}
    sampler = SubBatchSampler(
        data, sub_batch_size=10, sub_batches_per_batch=1, weights=weights, seed=3, steps_per_epoch=20000
    )
    counts = Counter()
    owner = {i: name for name, idx in data.items() for i in idx}
    for batch in sampler:
        names = {owner[i] for i in batch}
        assert len(names) == 1  # a sub-batch comes from one dataset
        counts[names.pop()] += 1
    expected = {k: weights[k] * len(v) for k, v in data.items()}
    total = sum(expected.values())
    for name in data:
        assert counts[name] / 20000 == pytest.approx(expected[name] / total, abs=0.015)


def test_video_cap_redraws_among_others() -> None:
    data = _datasets()
    sampler = SubBatchSampler(
        data,
        10,
        sub_batches_per_batch=4,
        weights={"vid": 50.0},
        video_datasets={"vid"},
        max_video_sub_batches=1,
        seed=0,
        steps_per_epoch=3000,
    )
    owner = {i: name for name, idx in data.items() for i in idx}
    video_per_batch = []
    for batch in sampler:
        subs = [owner[batch[k * 10]] for k in range(4)]
        assert all(len({owner[i] for i in batch[k * 10 : (k + 1) * 10]}) == 1 for k in range(4))
        video_per_batch.append(subs.count("vid"))
    assert max(video_per_batch) == 1
    assert np.mean(video_per_batch) > 0.95  # vid dominates the draw, the cap keeps exactly one


def test_sub_batches_have_no_repeats_and_cycle_the_data() -> None:
    data = {"small": list(range(25))}
    sampler = SubBatchSampler(data, 10, seed=1, steps_per_epoch=50)
    seen = Counter()
    for batch in sampler:
        assert len(set(batch)) == 10
        seen.update(batch)
    assert set(seen) == set(range(25)) and max(seen.values()) - min(seen.values()) <= 2


def test_ranks_split_the_global_batch_contiguously() -> None:
    data = _datasets()
    kwargs = dict(sub_batch_size=8, sub_batches_per_batch=2, seed=5, steps_per_epoch=10)
    whole = list(SubBatchSampler(data, **kwargs).global_batches())
    parts = [list(SubBatchSampler(data, world_size=4, rank=r, **kwargs)) for r in range(4)]
    for step in range(10):
        assert sum((parts[r][step] for r in range(4)), []) == whole[step]
        assert all(len(parts[r][step]) == 4 for r in range(4))


def test_deterministic_per_epoch() -> None:
    data = _datasets()
    s1, s2 = SubBatchSampler(data, 10, seed=7), SubBatchSampler(data, 10, seed=7)
    assert list(s1) == list(s2)
    s2.set_epoch(1)
    assert list(s1) != list(s2)
    assert len(s1) == sum(len(v) for v in data.values()) // 10


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="smaller than the sub-batch size 50: a \\(10\\)"):
        SubBatchSampler({"a": list(range(10)), "b": list(range(100))}, 50)
    with pytest.raises(ConfigError, match="no mixture weight names a dataset"):
        SubBatchSampler({"a": list(range(100))}, 10, weights={"zzz": 1.0})
    partial = SubBatchSampler(
        {"a": list(range(100)), "b": list(range(100, 200))}, 10, weights={"a": 3.0, "zzz": 1.0}
    )  # absent datasets are ignored
    assert partial.weights == {"a": 3.0, "b": 1.0}
    with pytest.raises(ConfigError, match="not divisible"):
        SubBatchSampler({"a": list(range(100))}, 10, world_size=3)


def test_mixture_yaml_both_layouts(tmp_path: Path) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text("MSCOCO_t2i: 2.32\nVisDial: 3.75\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text(
        "datasets:\n  llavahound_caption: {weight: 5.27, video: true}\n  ViDoRe: {weight: 5.0}\n"
    )
    assert Mixture.from_yaml(flat).weights == {"MSCOCO_t2i": 2.32, "VisDial": 3.75}
    m = Mixture.from_yaml(nested)
    assert m.weights == {"llavahound_caption": 5.27, "ViDoRe": 5.0} and m.video == {"llavahound_caption"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: -1\n")
    with pytest.raises(ConfigError, match="bad.yaml: dataset 'a': weight must be"):
        Mixture.from_yaml(bad)


def test_pair_group_sampler_one_dataset_per_step() -> None:
    data = _datasets()
    owner = {i: name for name, idx in data.items() for i in idx}
    for batch in PairGroupSampler(data, pairs_per_step=4, seed=0, steps_per_epoch=50):
        assert len(batch) == 4 and len({owner[i] for i in batch}) == 1 and len(set(batch)) == 4
