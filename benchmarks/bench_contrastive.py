"""Stage-1 step speed and memory, with and without GradCache, on the tiny Qwen3-VL Embedder (CPU).

Each configuration runs in a fresh subprocess: a few optimizer steps of the real stage-1 step (PairCollator ->
Embedder inputs with teacher T-CoT crops -> symmetric InfoNCE, plain or GradCache) on synthetic image-text
pairs. Peak memory is the process's peak RSS minus its RSS once the model is loaded and the batch's inputs are built
(≈ activations + gradients + optimizer state).

    python benchmarks/bench_contrastive.py                # batch 64 plain vs GradCache(8), and 8 -> 256 sweep
    python benchmarks/bench_contrastive.py --quick        # smaller sweep
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import psutil
    import torch

    from embedrl.models.embedder import Embedder, LoraSettings
    from embedrl.train.contrastive import ContrastiveLoss, grad_cache_step
    from embedrl.train.pairs import read_pairs
    from embedrl.train.stage1 import PairCollator

    torch.manual_seed(0)
    pairs = read_pairs(Path(args.pairs))[: args.batch]
    emb = Embedder.from_pretrained(args.model)
    emb.add_lora(LoraSettings.preset("tiny"))
    emb.model.train()
    opt = torch.optim.AdamW([p for p in emb.model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = ContrastiveLoss(0.02)
    batch = PairCollator(emb)(pairs)
    groups = [batch["queries"], batch["positives"]]

    def encode(chunk):
        return emb.forward_batch(emb.collate(chunk))

    def step():
        opt.zero_grad(set_to_none=True)
        if args.chunk:
            grad_cache_step(encode, groups, loss_fn, args.chunk)
        else:
            loss_fn(*[encode(g) for g in groups]).loss.backward()
        opt.step()

    base_rss = psutil.Process().memory_info().rss  # model, optimizer state not yet allocated, inputs built
    step()  # warm-up (allocator, lazy init)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {"s_per_step": seconds, "peak_rss_mb": peak / 2**20, "delta_mb": max(0, peak - base_rss) / 2**20}
        )
    )


def run(model: str, pairs: str, batch: int, chunk: int | None, steps: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--model",
        model,
        "--pairs",
        pairs,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
    ] + (["--chunk", str(chunk)] if chunk else [])
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model")
    parser.add_argument("--pairs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from embedrl.data.synthetic import write_training_pairs
    from embedrl.models.embedder import Embedder
    from embedrl.models.tiny import make_tiny

    sweep = [8, 32, 64] if args.quick else [8, 32, 64, 128, 256]
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny("qwen3-vl", Path(tmp) / "tiny")
        Embedder.from_pretrained(model).save_pretrained(model)
        pairs = write_training_pairs(Path(tmp) / "pairs" / "pairs.jsonl", n=max(sweep), datasets=("syn_t2i",))
        print("| batch (pairs) | mode | s/step | pairs/s | peak RSS (MB) | peak - set-up RSS (MB) |")
        print("|---:|---|---:|---:|---:|---:|")
        rows = (
            [(64, None), (64, 8)] + [(b, 8) for b in sweep if b != 64] + [(b, None) for b in sweep if b != 64]
        )
        for batch, chunk in rows:
            r = run(str(model), str(pairs), batch, chunk, args.steps)
            mode = f"GradCache chunk {chunk}" if chunk else "plain"
            print(
                f"| {batch} | {mode} | {r['s_per_step']:.2f} | {batch / r['s_per_step']:.1f} | "
                f"{r['peak_rss_mb']:.0f} | {r['delta_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
