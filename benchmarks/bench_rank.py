"""Exact top-k ranking: embedrl's blockwise search against a naive full score matrix + argsort.

    .venv/bin/python benchmarks/bench_rank.py                      # 10,000 x 100,000 x 512, top-10
    .venv/bin/python benchmarks/bench_rank.py --queries 1000 --candidates 20000 --methods blockwise,naive

Each method runs in a fresh subprocess, so its peak RSS is its own. Every child builds the same seeded random
float32 embeddings (not timed), then ranks by cosine similarity:
- naive:       normalise, materialise the full queries x candidates float32 score matrix, np.argsort each row
               (numpy's default sort, as VLM2Vec does) and keep the first k;
- blockwise:   `embedrl.eval.rank.exact_topk` (bounded score blocks, torch.topk, exact tie handling);
- faiss-flat:  `embedrl.eval.rank.faiss_topk(index="flat")` (exact; needs faiss-cpu).
Prints a markdown table: seconds, peak RSS, RSS right after the data was built, speedup over naive, and whether
the top-k equals the naive one.
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

import numpy as np

METHODS = ("naive", "blockwise", "faiss-flat")


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(args.seed)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    candidates = rng.standard_normal((args.candidates, args.dim), dtype=np.float32)
    return queries, candidates


def _naive(queries: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    scores = q @ c.T  # the full matrix: queries x candidates float32
    top = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), 256):  # argsort per row chunk, so only `scores` is full-size
        top[start : start + 256] = np.argsort(-scores[start : start + 256], axis=1)[:, :k]
    return top


def run_child(args: argparse.Namespace) -> None:
    queries, candidates = _data(args)
    if args.method == "blockwise":
        import torch  # noqa: F401  (import cost kept out of the timing)

        from embedrl.eval.rank import exact_topk
    elif args.method == "faiss-flat":
        import faiss  # noqa: F401

        from embedrl.eval.rank import faiss_topk
    rss_data = _rss_mb()
    start = time.perf_counter()
    if args.method == "naive":
        top = _naive(queries, candidates, args.k)
    elif args.method == "blockwise":
        top = exact_topk(queries, candidates, args.k, similarity="cosine").indices
    else:
        top = faiss_topk(queries, candidates, args.k, similarity="cosine", index="flat").indices
    seconds = time.perf_counter() - start
    np.save(args.result, top)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "rss_data_mb": rss_data}))


def run_parent(args: argparse.Namespace) -> None:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        sys.exit(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    rows, tops = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            result = Path(tmp) / f"{method}.npy"
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--method",
                method,
                "--result",
                str(result),
                "--queries",
                str(args.queries),
                "--candidates",
                str(args.candidates),
                "--dim",
                str(args.dim),
                "--k",
                str(args.k),
                "--seed",
                str(args.seed),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{method} failed:\n{proc.stderr}", file=sys.stderr)
                continue
            rows[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            tops[method] = np.load(result)
            print(f"{method}: {rows[method]['seconds']:.2f} s", file=sys.stderr)
    base = rows.get("naive", {}).get("seconds")
    print(
        f"Exact top-{args.k}, cosine: {args.queries:,} queries x {args.candidates:,} candidates x {args.dim} "
        f"dims, float32, {os.cpu_count()} CPU cores\n"
    )
    print(
        "| method | seconds | peak RSS (MB) | RSS after data (MB) | speedup vs naive | same top-k as naive |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for method, row in rows.items():
        speedup = f"{base / row['seconds']:.1f}x" if base else "-"
        same = (
            "-"
            if "naive" not in tops or method == "naive"
            else (
                "yes"
                if np.array_equal(tops[method], tops["naive"])
                else f"no ({np.mean(tops[method] != tops['naive']):.2e} of entries differ)"
            )
        )
        print(
            f"| {method} | {row['seconds']:.2f} | {row['peak_rss_mb']:.0f} | {row['rss_data_mb']:.0f} | "
            f"{speedup} | {same} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
