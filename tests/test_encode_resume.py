"""`embedrl encode` killed with SIGKILL half-way and run again gives the vectors of an uninterrupted run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from crash import embedrl_executable, sigkill_when

NUM_ITEMS = 60
BATCH = 2  # 30 batches, one cache shard each: the kill lands well before the last one
# encode() works in windows of 4 x the batch size (4 batches here): killing after 5 shards lands mid-window, the
# case where a rerun that re-cut its windows from the missing items alone would batch them differently.
KILL_AFTER_SHARDS = 5


def _command(embedder: Path, folder: Path) -> list[str]:
    return [
        embedrl_executable(),
        "encode",
        "--embedder",
        str(embedder),
        "--input",
        str(folder / "items.jsonl"),
        "--out",
        str(folder / "v.npy"),
        "--batch-size",
        str(BATCH),
        "--device",
        "cpu",
        "--no-progress",
    ]


def _write_items(folder: Path) -> None:
    folder.mkdir()
    with (folder / "items.jsonl").open("w") as handle:
        for i in range(NUM_ITEMS):
            # varied lengths: batches are built longest first, so the rerun must batch the rest the same way
            words = " ".join(["word"] * (1 + (i * 7) % 23))
            handle.write(json.dumps({"id": f"item{i}", "text": f"{words} number {i}"}) + "\n")


def _shards(folder: Path) -> list[Path]:
    return sorted((folder / "v.npy.cache").glob("vectors/*/shard-*.npz"))


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_vectors_of_an_uninterrupted_run(tiny_qwen3_embedder, tmp_path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _write_items(whole)
    _write_items(killed)
    _run(_command(tiny_qwen3_embedder, whole))
    expected = np.load(whole / "v.npy")
    assert expected.shape[0] == NUM_ITEMS and np.isfinite(expected).all()

    sigkill_when(
        _command(tiny_qwen3_embedder, killed), lambda: len(_shards(killed)) >= KILL_AFTER_SHARDS, "encode"
    )

    # Nothing half-written: no output (it is written once, at the end) and every cache shard readable.
    leftovers = [p.name for p in killed.iterdir() if p.name.startswith((".v.npy", "v.npy")) and p.is_file()]
    assert leftovers == []
    shards = _shards(killed)
    assert KILL_AFTER_SHARDS <= len(shards) < NUM_ITEMS // BATCH
    for shard in shards:
        with np.load(shard, allow_pickle=False) as data:
            assert data["vectors"].shape[0] == len(data["keys"])

    done = _run(_command(tiny_qwen3_embedder, killed))
    counts = re.search(r"\((\d+) computed, (\d+) from cache", done.stdout)
    assert counts, done.stdout
    computed, cached = int(counts[1]), int(counts[2])
    assert computed > 0 and cached >= KILL_AFTER_SHARDS * BATCH and computed + cached == NUM_ITEMS
    # Bit-identical, not merely close: the rerun embeds the missing items in the very batches the uninterrupted
    # run used (same windows, same longest-first order; each shard is one whole batch), on the same device and
    # thread count, and cached vectors are the float32 rows first computed. A mismatch means a cache key or row
    # mix-up, or batches re-cut on the rerun.
    assert np.array_equal(np.load(killed / "v.npy"), expected)


@pytest.mark.parametrize("lost", [[2], [1, 4, 5], [0, 3, 6, 7, 9]])
def test_any_lost_shards_are_recomputed_in_their_original_batches(
    tiny_qwen3_embedder, tmp_path, lost
) -> None:
    """Shards lost anywhere (mid-window, several windows, non-adjacent) come back bit-identical: the rerun cuts
    the same windows from all items, cached ones included, and batches each window's rest longest first."""
    from embedrl.data.items import Item
    from embedrl.models.embedder import Embedder
    from embedrl.pipeline import encode_detailed

    embedder = Embedder.from_pretrained(tiny_qwen3_embedder)
    items = [
        Item(id=f"item{i}", text=" ".join(["word"] * (1 + (i * 7) % 23)) + f" number {i}") for i in range(24)
    ]
    cache = tmp_path / "cache"
    first = encode_detailed(items, embedder, batch_size=BATCH, cache_dir=cache, progress=False)
    shards = sorted((cache / "vectors").glob("*/shard-*.npz"))
    assert len(shards) == len(items) // BATCH
    for index in lost:
        shards[index].unlink()
    again = encode_detailed(items, embedder, batch_size=BATCH, cache_dir=cache, progress=False)
    assert again.computed == len(lost) * BATCH
    assert np.array_equal(again.vectors, first.vectors)
