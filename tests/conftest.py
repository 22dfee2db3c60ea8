"""Shared fixtures: tiny offline Qwen-VL checkpoints, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


def _build(root: Path, family: str, role: str, seed: int = 0) -> Path:
    from embedrl.models.tiny import make_tiny

    out = root / f"{family}-{role}-{seed}"
    if not (out / "config.json").exists():
        make_tiny(family, out, seed=seed)
        if role == "embedder":
            from embedrl.models.embedder import Embedder

            Embedder.from_pretrained(out).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen3_embedder(tiny_dir) -> Path:
    return _build(tiny_dir, "qwen3-vl", "embedder")


@pytest.fixture(scope="session")
def tiny_qwen3_reasoner(tiny_dir) -> Path:
    return _build(tiny_dir, "qwen3-vl", "base", seed=1)


@pytest.fixture(scope="session")
def tiny_factory(tiny_dir):
    """Build (or reuse) a tiny checkpoint: tiny_factory(family, role='base'|'embedder', seed=0)."""
    return lambda family, role="base", seed=0: _build(tiny_dir, family, role, seed)
