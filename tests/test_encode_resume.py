"""`embedrl encode` killed with SIGKILL half-way and run again gives the vectors of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

NUM_ITEMS = 60
BATCH = 2  # 30 batches, one cache shard each: the kill lands well before the last one


def _embedrl() -> str:
    beside = Path(sys.executable).parent / "embedrl"  # the venv's console script, as a user runs it
    return str(beside) if beside.exists() else shutil.which("embedrl") or "embedrl"


def _command(embedder: Path, folder: Path) -> list[str]:
    return [
        _embedrl(),
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

    proc = subprocess.Popen(
        _command(tiny_qwen3_embedder, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 90
        while len(_shards(killed)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "encode ended before it could be killed half-way"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Nothing half-written: no output (it is written once, at the end) and every cache shard readable.
    leftovers = [p.name for p in killed.iterdir() if p.name.startswith((".v.npy", "v.npy")) and p.is_file()]
    assert leftovers == []
    shards = _shards(killed)
    assert 4 <= len(shards) < NUM_ITEMS // BATCH
    for shard in shards:
        with np.load(shard, allow_pickle=False) as data:
            assert data["vectors"].shape[0] == len(data["keys"])

    done = _run(_command(tiny_qwen3_embedder, killed))
    counts = re.search(r"\((\d+) computed, (\d+) from cache", done.stdout)
    assert counts, done.stdout
    computed, cached = int(counts[1]), int(counts[2])
    assert computed > 0 and cached >= 4 * BATCH and computed + cached == NUM_ITEMS
    # Bit-identical, not merely close: the rerun embeds the missing items in the very batches the uninterrupted
    # run used (same longest-first order; each shard is one whole batch), on the same device and thread count,
    # and cached vectors are the float32 rows first computed. A mismatch means a cache key or row mix-up.
    assert np.array_equal(np.load(killed / "v.npy"), expected)
