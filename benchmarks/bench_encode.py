"""encode() against a naive one-item-at-a-time loop, same tiny Qwen3-VL Embedder, 500 mixed items (CPU).

The naive loop builds and embeds each item alone (batch 1, no dedup, input order). encode() deduplicates by
content, sorts by length and batches. Each method runs in a fresh subprocess so peak RSS is its own.
Each method runs in `--rounds` fresh workers (the order alternates between rounds). Each worker times one cold pass (the first in a fresh process: allocator growth, template compilation, first-shape
costs) and then `--repeats` warm passes; the table gives the cold pass and the median warm pass, and the
speed-up for both. A long encode or evaluation run is in the warm regime after its first few hundred items.
Items: 200 texts (label-like: 60 distinct strings, repeated as in classification tasks), 250 one-image items
(128 px drawn scenes), 50 videos of 8 frames. Reasoning is off (the Embedder path is what is compared).

    python benchmarks/bench_encode.py [--n 500] [--batch-size 32] [--rounds 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_items(root: Path, n: int) -> list[dict]:
    from embedrl.data.synthetic import caption, draw_scene, moving_frames, random_scene

    rng = random.Random(0)
    labels = [f"{c} {s}" for c in ("red", "green", "blue", "yellow", "purple", "orange") for s in
              ("circle", "square", "triangle", "star", "ring", "cross", "bar", "dot", "box", "shape")]
    n_text, n_video = int(n * 0.4), int(n * 0.1)
    n_image = n - n_text - n_video
    items = [{"id": f"t{i}", "text": rng.choice(labels), "instruction": "Represent the given label."}
             for i in range(n_text)]
    for i in range(n_image):
        shapes = random_scene(rng, 128)
        path = root / f"img{i}.png"
        draw_scene(shapes, 128).save(path)
        items.append({"id": f"i{i}", "images": [str(path)], "text": caption(shapes)})
    for i in range(n_video):
        frames, phrase, direction = moving_frames(rng, 96, 8)
        paths = []
        for t, f in enumerate(frames):
            p = root / f"v{i}_{t}.png"
            f.save(p)
            paths.append(str(p))
        items.append({"id": f"v{i}", "video": {"frames": paths}})
    rng.shuffle(items)
    return items


def worker(args: argparse.Namespace) -> None:
    import torch

    from embedrl.data.items import Item, VideoRef
    from embedrl.models.embedder import Embedder
    from embedrl.pipeline import encode

    torch.set_num_threads(2)
    raw = json.loads(Path(args.items).read_text())
    items = [Item(id=r["id"], text=r.get("text"), instruction=r.get("instruction"), images=r.get("images", []),
                  video=VideoRef(frames=r["video"]["frames"]) if r.get("video") else None) for r in raw]
    emb = Embedder.from_pretrained(args.model)

    def run_once() -> None:
        if args.method == "naive":
            for item in items:
                emb.embed_inputs([emb.build_input(item)])
        else:
            encode(items, emb, reasoning="off", batch_size=args.batch_size, progress=False)

    times = []
    for _ in range(1 + args.repeats):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"cold": times[0], "warm": statistics.median(times[1:]), "warm_passes": times[1:],
                      "peak_rss_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=["naive", "encode"])
    parser.add_argument("--model")
    parser.add_argument("--items", default=None)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2,
                        help="fresh worker pairs per method, alternating which runs first")
    parser.add_argument("--repeats", type=int, default=5,
                        help="warm passes per method after the cold one; their median is reported")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from embedrl.models.embedder import Embedder
    from embedrl.models.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_tiny("qwen3-vl", root / "tiny")
        Embedder.from_pretrained(model).save_pretrained(model)
        items_file = root / "items.json"
        items_file.write_text(json.dumps(make_items(root, args.n)))
        runs: dict[str, list[dict]] = {"naive": [], "encode": []}
        # Rounds alternate the order (naive first, then encode first): on a shared or thermally limited machine
        # whichever method runs second is measurably slower, so a fixed order would bias the ratio.
        for round_index in range(args.rounds):
            order = ("naive", "encode") if round_index % 2 == 0 else ("encode", "naive")
            for method in order:
                cmd = [sys.executable, __file__, "--worker", "--method", method, "--model", str(model), "--items",
                       str(items_file), "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows = {method: {"cold": statistics.median(r["cold"] for r in results),
                         "warm_passes": [t for r in results for t in r["warm_passes"]],
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
                for method, results in runs.items()}
        for row in rows.values():
            row["warm"] = statistics.median(row["warm_passes"])
        print("| method | items | cold pass (s, median) | warm passes (s) | warm median (s) | items/s (warm) | "
              "peak RSS (MB) | speed-up cold | speed-up warm |")
        print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        naive = rows["naive"]
        for method, label in (("naive", "naive loop (batch 1)"), ("encode", f"encode() (batch {args.batch_size})")):
            r = rows[method]
            passes = " / ".join(f"{t:.2f}" for t in r["warm_passes"])
            print(f"| {label} | {args.n} | {r['cold']:.2f} | {passes} | {r['warm']:.2f} | {args.n / r['warm']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {naive['cold'] / r['cold']:.2f}x | {naive['warm'] / r['warm']:.2f}x |")


if __name__ == "__main__":
    main()
