"""`embedrl serve` throughput and latency, with and without dynamic batching; index search latency.

    .venv/bin/python benchmarks/bench_serve.py                    # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_serve.py --seconds 3 --concurrency 1,8,32 --search-kinds exact,flat

Serving: a tiny Qwen3-VL Embedder (built offline, as the tests build it) is served by a real `embedrl serve`
process on 127.0.0.1 with `--max-batch 1` (one request per model call: the old server's behaviour) and another
with dynamic batching (`--max-batch 32 --max-wait-ms 5`); both run at once and take turns, cell by cell
(`--repeats` times, median), so that a shared machine's varying load hits both alike. Client threads (each with its own keep-alive
connection) send one-item /v1/embeddings requests for `--seconds` per cell: text-only ("text") or one 96x96 PNG
image with a caption ("image"). The table gives requests/s and p50 / p99 latency per concurrency, and the
speed-up of batching at the same concurrency. Clients run on the same machine and share its cores.

Search: `embedrl.index.Index.topk` over a random L2-normalised 100,000 x 512 float32 index, one query at a time
(top-10): exact (blockwise numpy/torch), FAISS flat (exact inner product) and, with `--search-kinds
exact,flat,hnsw`, FAISS HNSW (M=32; build time reported). p50 / p99 over `--queries` queries.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _tiny_embedder(root: Path) -> Path:
    """Built in a child process: the client process never imports torch, whose idle worker threads would
    compete with the server for the cores."""
    out = root / "embedder"
    code = (
        "import sys; from embedrl.models.tiny import make_tiny; from embedrl.models.embedder import Embedder; "
        "make_tiny('qwen3-vl', sys.argv[1], seed=0); Embedder.from_pretrained(sys.argv[1]).save_pretrained("
        "sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True)
    return out


def _start(embedder: Path, max_batch: int, log: Path) -> tuple[subprocess.Popen, str, int]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "embedrl",
        "serve",
        "--embedder",
        str(embedder),
        "--port",
        "0",
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        "5",
        "--max-queue",
        "100000",
    ]
    with log.open("w") as err:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    match = re.search(r"http://([\d.]+):(\d+)", process.stdout.readline())
    if match is None:
        raise SystemExit(f"the server did not start:\n{log.read_text()}")
    host, port = match.group(1), int(match.group(2))
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/health")
            conn.getresponse().read()
            conn.close()
            return process, host, port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _bodies(kind: str, count: int = 64) -> list[bytes]:
    from PIL import Image, ImageDraw

    bodies = []
    for i in range(count):
        if kind == "text":
            entry: object = f"request {i}: a photo of a {['red', 'green', 'blue'][i % 3]} thing number {i}"
        else:
            image = Image.new("RGB", (96, 96), (255, 255, 255))
            ImageDraw.Draw(image).rectangle((i % 40, 10, i % 40 + 40, 60), fill=(200, 30 + i, 30))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            entry = {
                "text": f"image {i}",
                "images": ["data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()],
            }
        bodies.append(json.dumps({"input": [entry]}).encode())
    return bodies


def _load(host: str, port: int, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(offset: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        i = offset
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    "/v1/embeddings",
                    body=bodies[i % len(bodies)],
                    headers={"Content-Type": "application/json"},
                )
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=120)
            if ok:
                mine.append(time.perf_counter() - started)
            else:
                with lock:
                    errors[0] += 1
            i += concurrency
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ms = np.asarray(latencies) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "errors": errors[0],
        "requests": len(latencies),
    }


def _health(host: str, port: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/health")
    reply = json.loads(conn.getresponse().read())
    conn.close()
    return reply


def bench_serving(args: argparse.Namespace, root: Path) -> None:
    embedder = _tiny_embedder(root)
    kinds = args.kinds.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    bodies = {kind: _bodies(kind) for kind in kinds}
    configs = (1, args.max_batch)
    servers = {}
    try:
        for max_batch in configs:
            servers[max_batch] = _start(embedder, max_batch, root / f"server-{max_batch}.log")
        runs: dict[tuple, list[dict]] = {}
        for kind in kinds:
            for max_batch in configs:  # warm-up: the first calls build caches and buffers
                _load(*servers[max_batch][1:], bodies[kind], 4, 1.0)
            for level in levels:
                # The two servers take turns, cell by cell, so that load from elsewhere on a shared machine
                # hits both alike; the median of the repeats is reported.
                for _ in range(args.repeats):
                    for max_batch in configs:
                        runs.setdefault((max_batch, kind, level), []).append(
                            _load(*servers[max_batch][1:], bodies[kind], level, args.seconds)
                        )
        for max_batch in configs:
            batches = _health(*servers[max_batch][1:])["batches"]
            print(
                f"# --max-batch {max_batch}: {batches['count']} model batches, largest {batches['max_size']} "
                "items",
                file=sys.stderr,
            )
    finally:
        for process, _host, _port in servers.values():
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            process.stdout.close()
    results = {key: sorted(cells, key=lambda r: r["rps"])[len(cells) // 2] for key, cells in runs.items()}
    print(
        f"| request | concurrency | max batch 1: req/s | p50 ms | p99 ms | max batch {args.max_batch}: req/s | "
        "p50 ms | p99 ms | speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        for level in levels:
            one, many = results[(1, kind, level)], results[(args.max_batch, kind, level)]
            print(
                f"| {kind} | {level} | {one['rps']:.1f} | {one['p50']:.0f} | {one['p99']:.0f} | "
                f"{many['rps']:.1f} | {many['p50']:.0f} | {many['p99']:.0f} | {many['rps'] / one['rps']:.2f}x |"
            )
    for kind in kinds:
        base = results[(1, kind, levels[0])]["rps"]
        top = results[(args.max_batch, kind, levels[-1])]["rps"]
        print(
            f"{kind}: batched throughput at concurrency {levels[-1]} is {top / base:.2f}x the one-at-a-time "
            f"throughput at concurrency {levels[0]}"
        )
    failed = sum(r["errors"] for cells in runs.values() for r in cells)
    print(f"failed requests: {failed}")


def bench_search(args: argparse.Namespace) -> None:
    from embedrl.eval.rank import normalize_rows
    from embedrl.index import Index

    rng = np.random.default_rng(0)
    vectors = normalize_rows(rng.standard_normal((args.pool, args.dim), dtype=np.float32))
    queries = normalize_rows(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    print(
        f"\n| search ({args.pool:,} x {args.dim}, top-{args.k}, one query at a time) | build s | p50 ms | p99 ms |"
    )
    print("|---|---:|---:|---:|")
    for kind in args.search_kinds.split(","):
        started = time.perf_counter()
        faiss_index = None
        if kind != "exact":
            import faiss

            faiss_index = (
                faiss.IndexFlatIP(args.dim)
                if kind == "flat"
                else faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
            )
            faiss_index.add(vectors)
        build = time.perf_counter() - started
        index = Index(
            Path("."),
            {"search": kind},
            vectors,
            [str(i) for i in range(args.pool)],
            [{}] * args.pool,
            faiss_index,
        )
        index.topk(queries[:5], args.k)  # warm-up
        times = []
        for query in queries:
            started = time.perf_counter()
            index.topk(query[None], args.k)
            times.append((time.perf_counter() - started) * 1000)
        print(
            f"| {kind if kind == 'exact' else 'faiss ' + kind} | {build:.1f} | {np.percentile(times, 50):.2f} | "
            f"{np.percentile(times, 99):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="load per table cell")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--kinds", default="text,image")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument(
        "--search-kinds",
        default="exact,flat",
        help="exact, flat, hnsw (building HNSW over 100k x 512 takes about 1.5 min on 2 cores)",
    )
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per cell, alternating the servers (median)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if not args.skip_serving:
            bench_serving(args, Path(tmp))
    if not args.skip_search:
        bench_search(args)


if __name__ == "__main__":
    main()
