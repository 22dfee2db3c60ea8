"""encode() against a naive one-item-at-a-time loop, same tiny Qwen3-VL Embedder, 500 mixed items (CPU).

The naive loop builds and embeds each item alone (batch 1, no dedup, input order). encode() deduplicates by
content, sorts by length and batches. Each method runs in its own fresh subprocess, so peak RSS is its own.
The two workers run in lockstep, `--rounds` times: pass i of one method is timed right next to pass i of the
other (alternating which goes first), and each speed-up is the median of these paired ratios. (This machine's
speed drifts by up to 25 % within minutes; ratios of medians taken minutes apart inherited that drift.) Each
worker's first pass is its cold pass (allocator growth, template compilation, first-shape costs), the
`--repeats` after it are warm; a long encode or evaluation run is in the warm regime after its first few
hundred items. Both workers keep freed memory for reuse as `embedrl` commands do (`--malloc keep`,
embedrl.runtime); `--malloc default` leaves glibc's settings alone.
Items: 200 texts (label-like: 60 distinct strings, repeated as in classification tasks), 250 one-image items
(128 px drawn scenes), 50 videos of 8 frames. Reasoning is off (the Embedder path is what is compared).

    python benchmarks/bench_encode.py [--n 500] [--batch-size 32] [--rounds 2] [--repeats 5] [--malloc keep]

Model-shaped throughput (a GPU run): `--shape 2b` builds a randomly initialised Qwen3-VL model with
Qwen3-VL-2B's shape (text 2048 x 28 layers, 16 / 8 heads, head_dim 128, MLP 6144, vocabulary 151,936; vision
1024 x 24, MLP 4096, deepstack [5, 11, 17]) directly on the device in bf16 (random init; nothing is downloaded or written),
and times `encode()` on text items and on one-image items (448 x 448, the paper's pixel bounds). It reports
items/s, tokens/s and the achieved matrix throughput (2 x linear-layer parameters x tokens, plus attention
score/value products) as a fraction of the card's dense bf16 peak, looked up from the device name or given
with `--peak-tflops`. `--shape small --device cpu` runs the same code on a small model (a smoke test).

    python benchmarks/bench_encode.py --shape 2b --device cuda [--text-items 512 --image-items 256]
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
    labels = [
        f"{c} {s}"
        for c in ("red", "green", "blue", "yellow", "purple", "orange")
        for s in ("circle", "square", "triangle", "star", "ring", "cross", "bar", "dot", "box", "shape")
    ]
    n_text, n_video = int(n * 0.4), int(n * 0.1)
    n_image = n - n_text - n_video
    items = [
        {"id": f"t{i}", "text": rng.choice(labels), "instruction": "Represent the given label."}
        for i in range(n_text)
    ]
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


# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) by device-name fragment; the first match wins.
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("A6000", 155.0),
)

SHAPES = {
    # Qwen3-VL-2B-Instruct's published configuration
    "2b": {
        "text": {
            "hidden_size": 2048,
            "num_layers": 28,
            "num_heads": 16,
            "num_kv_heads": 8,
            "intermediate_size": 6144,
            "vision_hidden": 1024,
            "vision_depth": 24,
            "vision_heads": 16,
        },
        "vocab_size": 151936,
        "vision_intermediate": 4096,
        "deepstack": [5, 11, 17],
        "position_embeddings": 2304,
        "mrope_section": [24, 20, 20],
        "rope_theta": 5_000_000.0,
    },
    # the same code path at a size a CPU runs in seconds
    "small": {
        "text": {
            "hidden_size": 256,
            "num_layers": 4,
            "num_heads": 4,
            "num_kv_heads": 2,
            "intermediate_size": 512,
            "vision_hidden": 128,
            "vision_depth": 4,
            "vision_heads": 4,
        },
        "vocab_size": 8192,
        "vision_intermediate": 256,
        "deepstack": [1, 2],
        "position_embeddings": 256,
        "mrope_section": [12, 10, 10],
        "rope_theta": 5_000_000.0,
    },
}


def build_shaped_embedder(shape: str, device: str, dtype_name: str):
    """A randomly initialised Qwen3-VL Embedder of the given shape, built directly on `device`."""
    import torch
    import transformers

    from embedrl.models.backbone import image_only_processor, use_fast_paths
    from embedrl.models.embedder import Embedder, EmbedderConfig
    from embedrl.models.families import family_by_name
    from embedrl.models.imageprep import FastQwen2VLImageProcessorPil
    from embedrl.models.tiny import TinySize, build_config, build_tokenizer

    spec = SHAPES[shape]
    family = family_by_name("qwen3-vl")
    tokenizer = build_tokenizer(seed=0)
    config = build_config(family, tokenizer, TinySize(**spec["text"]))
    config.text_config.vocab_size = spec["vocab_size"]
    config.text_config.rope_parameters.update(
        mrope_section=spec["mrope_section"], rope_theta=spec["rope_theta"]
    )
    config.vision_config.intermediate_size = spec["vision_intermediate"]
    config.vision_config.deepstack_visual_indexes = spec["deepstack"]
    config.vision_config.num_position_embeddings = spec["position_embeddings"]
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no 4 GB host copy, rotary buffers computed there
        model = transformers.Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    use_fast_paths(model)  # as load_model does
    image_processor = FastQwen2VLImageProcessorPil(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = image_only_processor(family, tokenizer, image_processor)
    return Embedder(model, processor, family, EmbedderConfig.official())


def matmul_flops(model, batch) -> float:
    """Matrix FLOPs of one Embedder forward: 2 x weights x tokens for every linear layer that runs, plus the
    attention score and value products (4 x length^2 x width per layer and sequence, padding included)."""
    import torch

    text_tokens = batch["input_ids"].numel()
    patches = batch["pixel_values"].shape[0] if "pixel_values" in batch else 0
    total = 0.0
    lm = model.model.language_model
    for module in lm.modules():
        if isinstance(module, torch.nn.Linear):
            total += 2.0 * module.weight.numel() * text_tokens
    text_config = model.config.text_config
    length = batch["input_ids"].shape[1]
    width = text_config.num_attention_heads * text_config.head_dim
    total += 4.0 * batch["input_ids"].shape[0] * length * length * width * text_config.num_hidden_layers
    if patches:
        visual = model.model.visual
        merge = visual.config.spatial_merge_size**2
        for name, module in visual.named_modules():
            if isinstance(module, torch.nn.Linear):
                tokens = patches // merge if "merger" in name else patches
                total += 2.0 * module.weight.numel() * tokens
            elif name.endswith("patch_embed"):
                total += 2.0 * module.proj.weight.numel() * patches
        sizes = batch["image_grid_thw"].prod(dim=1).tolist()
        total += 4.0 * sum(n * n for n in sizes) * visual.config.hidden_size * visual.config.depth
    return total


def shaped_items(root: Path, n_text: int, n_image: int, side: int) -> tuple[list, list]:
    from embedrl.data.items import Item
    from embedrl.data.synthetic import caption, draw_scene, random_scene

    rng = random.Random(0)
    words = (
        "red",
        "green",
        "blue",
        "circle",
        "square",
        "left",
        "right",
        "above",
        "below",
        "small",
        "large",
        "photo",
        "scene",
        "object",
        "near",
        "far",
        "bright",
        "dark",
        "striped",
        "dotted",
    )
    texts = [
        Item(
            id=f"t{i}",
            instruction="Represent the given sentence for retrieval.",
            text=" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))),
        )
        for i in range(n_text)
    ]
    images = []
    for i in range(n_image):
        shapes = random_scene(rng, side)
        path = root / f"big{i}.png"
        draw_scene(shapes, side).save(path)
        images.append(Item(id=f"i{i}", images=[str(path)], text=caption(shapes)))
    return texts, images


def shaped_main(args: argparse.Namespace) -> None:
    import torch

    from embedrl.pipeline import encode

    device = args.device
    start = time.perf_counter()
    embedder = build_shaped_embedder(args.shape, device, args.dtype)
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in embedder.model.parameters())
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or next((tf for key, tf in BF16_PEAK_TFLOPS if key in name), None)

    flops = [0.0]
    tokens = [0]
    forward = embedder.embed_collated

    def counting(batch):
        flops[0] += matmul_flops(embedder.model, batch)
        tokens[0] += int(batch["attention_mask"].sum())
        return forward(batch)

    embedder.embed_collated = counting
    with tempfile.TemporaryDirectory() as tmp:
        texts, images = shaped_items(Path(tmp), args.text_items, args.image_items, args.image_side)
        print(
            f"device: {name}; shape {args.shape} ({params / 1e9:.2f} B parameters, {args.dtype}), built in "
            f"{build_s:.1f} s; peak used: {peak or 'unknown'} TFLOP/s"
        )
        print(
            "| items | count | batch | seconds | items/s | tokens/s | achieved TFLOP/s | fraction of peak |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for label, items, batch in (
            ("text", texts, args.text_batch),
            ("one image", images, args.image_batch),
        ):
            encode(items[:batch], embedder, reasoning="off", batch_size=batch, progress=False)  # warm-up
            flops[0], tokens[0] = 0.0, 0
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            begin = time.perf_counter()
            encode(items, embedder, reasoning="off", batch_size=batch, progress=False)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - begin
            achieved = flops[0] / seconds / 1e12
            fraction = f"{achieved / peak:.1%}" if peak else "-"
            print(
                f"| {label} | {len(items)} | {batch} | {seconds:.2f} | {len(items) / seconds:.1f} | "
                f"{tokens[0] / seconds:.0f} | {achieved:.3g} | {fraction} |"
            )
        if device.startswith("cuda"):
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def worker(args: argparse.Namespace) -> None:
    """One method in its own process (so its peak RSS is its own), driven pass by pass by the parent: it
    answers `ready` once the model is loaded, one timing per `pass` line, and its peak RSS on `stop`."""
    import torch

    from embedrl.data.items import Item, VideoRef
    from embedrl.models.embedder import Embedder
    from embedrl.pipeline import encode

    torch.set_num_threads(2)
    if args.malloc == "keep":
        from embedrl.runtime import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("--malloc keep: mallopt is not available here (needs glibc on Linux)")
    raw = json.loads(Path(args.items).read_text())
    items = [
        Item(
            id=r["id"],
            text=r.get("text"),
            instruction=r.get("instruction"),
            images=r.get("images", []),
            video=VideoRef(frames=r["video"]["frames"]) if r.get("video") else None,
        )
        for r in raw
    ]
    emb = Embedder.from_pretrained(args.model)

    def run_once() -> None:
        if args.method == "naive":
            for item in items:
                emb.embed_inputs([emb.build_input(item)])
        else:
            encode(items, emb, reasoning="off", batch_size=args.batch_size, progress=False)

    def reply(message: dict) -> None:
        print(json.dumps(message), flush=True)

    reply({"ready": True})
    for line in sys.stdin:
        if line.strip() == "pass":
            start = time.perf_counter()
            run_once()
            reply({"seconds": time.perf_counter() - start})
        else:
            break
    reply({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(
        self, method: str, args: argparse.Namespace, model: Path, items_file: Path, log: Path
    ) -> None:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--method",
            method,
            "--model",
            str(model),
            "--items",
            str(items_file),
            "--batch-size",
            str(args.batch_size),
            "--malloc",
            args.malloc,
        ]
        self.method, self.log = method, log
        self._log_file = log.open("w")  # stderr to a file: a full pipe would block the worker
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file, text=True
        )

    def receive(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                self._log_file.close()
                raise SystemExit(
                    f"{self.method} worker exited with {self.proc.returncode}:\n"
                    f"{self.log.read_text()[-3000:]}"
                )
            if line.startswith("{"):
                return json.loads(line)

    def send(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def close(self) -> float:
        peak = self.send("stop")["peak_rss_mb"]
        self.proc.wait()
        self._log_file.close()
        return peak


def paired_runs(args: argparse.Namespace, model: Path, items_file: Path, root: Path) -> dict[str, dict]:
    """Per round, one fresh worker per method, run in lockstep: pass i of one method is timed right next to
    pass i of the other (alternating which goes first), so each ratio compares the two under the same machine
    conditions. This machine's speed drifts by up to 25 % within minutes, and ratios of unpaired medians
    inherited that drift."""
    seconds: dict[str, list[list[float]]] = {"naive": [], "encode": []}
    peak: dict[str, float] = {"naive": 0.0, "encode": 0.0}
    for round_index in range(args.rounds):
        workers = {m: _Worker(m, args, model, items_file, root / f"{m}{round_index}.log") for m in seconds}
        try:
            for w in workers.values():
                w.receive()  # both models loaded before any pass is timed
            passes: dict[str, list[float]] = {"naive": [], "encode": []}
            for pass_index in range(1 + args.repeats):
                first_naive = (round_index + pass_index) % 2 == 0
                for method in ("naive", "encode") if first_naive else ("encode", "naive"):
                    passes[method].append(workers[method].send("pass")["seconds"])
            for method, w in workers.items():
                seconds[method].append(passes[method])
                peak[method] = max(peak[method], w.close())
        finally:
            for w in workers.values():
                if w.proc.poll() is None:
                    w.proc.kill()
    rows = {}
    for method in seconds:
        cold = [r[0] for r in seconds[method]]
        warm = [t for r in seconds[method] for t in r[1:]]
        rows[method] = {"cold": cold, "warm": warm, "peak_rss_mb": peak[method]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=["naive", "encode"])
    parser.add_argument("--model")
    parser.add_argument("--items", default=None)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="fresh worker pairs, each run in lockstep for 1 cold + --repeats warm passes",
    )
    parser.add_argument("--repeats", type=int, default=5, help="warm passes per worker after the cold one")
    parser.add_argument(
        "--malloc",
        choices=["keep", "default"],
        default="keep",
        help="keep: both workers keep freed memory for reuse, as `embedrl` commands do "
        "(embedrl.runtime.keep_freed_memory); default: glibc's own settings",
    )
    shaped = parser.add_argument_group("model-shaped run (GPU)")
    shaped.add_argument(
        "--shape", choices=sorted(SHAPES), help="time a randomly initialised model of this shape"
    )
    shaped.add_argument("--device", default="cuda")
    shaped.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    shaped.add_argument("--text-items", type=int, default=512)
    shaped.add_argument("--image-items", type=int, default=256)
    shaped.add_argument("--image-side", type=int, default=448)
    shaped.add_argument("--text-batch", type=int, default=64)
    shaped.add_argument("--image-batch", type=int, default=32)
    shaped.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not in the table")
    args = parser.parse_args()
    if args.shape:
        shaped_main(args)
        return
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
        rows = paired_runs(args, model, items_file, root)
        naive = rows["naive"]

        def paired(method: str, regime: str) -> list[float]:
            return [n / t for n, t in zip(naive[regime], rows[method][regime])]

        print(f"allocator: {args.malloc}")
        print(
            "| method | items | cold pass (s, median) | warm passes (s) | warm median (s) | items/s (warm) | "
            "peak RSS (MB) | speed-up cold | speed-up warm |"
        )
        print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for method, label in (
            ("naive", "naive loop (batch 1)"),
            ("encode", f"encode() (batch {args.batch_size})"),
        ):
            r = rows[method]
            passes = " / ".join(f"{t:.2f}" for t in r["warm"])
            warm = statistics.median(r["warm"])
            print(
                f"| {label} | {args.n} | {statistics.median(r['cold']):.2f} | {passes} | {warm:.2f} | "
                f"{args.n / warm:.0f} | {r['peak_rss_mb']:.0f} | {statistics.median(paired(method, 'cold')):.2f}x | "
                f"{statistics.median(paired(method, 'warm')):.2f}x |"
            )
        for regime in ("cold", "warm"):
            ratios = paired("encode", regime)
            print(
                f"paired {regime} speed-ups (naive pass / encode() pass timed next to it): "
                + ", ".join(f"{x:.2f}" for x in ratios)
                + f"; median {statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x"
            )


if __name__ == "__main__":
    main()
