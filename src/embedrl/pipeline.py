"""`encode()`: item → Reasoner (T-CoT) → evidence (crops, keyframes) → Embedder → vector.

This is the one path from input to vector. Evaluation and the EG-RL reward call it too (the reward with
T-CoTs given, via `embed_items`), so inference, evaluation and reward cannot drift apart.

What it adds on top of the models:
- identical items are computed once (content hash of text, instruction and media bytes);
- on-disk caches of T-CoTs (append-only JSONL) and vectors (atomic shards) make a crashed run resume where it
  stopped, with identical results;
- batches are formed from items sorted by estimated length (less padding), output keeps input order;
- per-item failures (unreadable media, no cached T-CoT) are collected with the item id instead of aborting
  the run: everything else is still computed and cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.items import Item, content_key
from .errors import EmbedRLError, MediaError
from .fileio import atomic_open
from .models.identity import weights_fixed, weights_identity

log = logging.getLogger(__name__)

REASONING_MODES = ("generate", "cached", "off")


@dataclass
class EncodeFailure:
    index: int
    id: str
    stage: str  # "media", "reasoning", "embedding"
    message: str

    def __str__(self) -> str:
        return f"item {self.id!r} (#{self.index}): {self.stage}: {self.message}"


class EncodeError(EmbedRLError):
    """Some items failed; `result` holds everything that was computed (failed rows are NaN)."""

    def __init__(self, result: EncodeResult):
        self.result = result
        lines = "\n".join(str(f) for f in result.failures[:20])
        more = f"\n… and {len(result.failures) - 20} more" if len(result.failures) > 20 else ""
        super().__init__(f"{len(result.failures)} of {len(result.vectors)} item(s) failed:\n{lines}{more}")


@dataclass
class EncodeResult:
    vectors: np.ndarray                       # (n, dim) float32, NaN rows for failures
    tcots: list[str | None]                   # raw T-CoT text per item (None: reasoning off or failed)
    failures: list[EncodeFailure] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # item id -> evidence notes (dropped boxes…)
    computed: int = 0                         # vectors computed in this call (the rest came from caches)


# ---------------------------------------------------------------------------------------------- caches


class TCoTCache:
    """Append-only JSONL of raw T-CoTs; survives a crash mid-write.

    Each record holds `key` (item content, side and the Reasoner's identity: weights, generation settings) and
    `content` (item content and side only). A run with a Reasoner looks T-CoTs up by `key`; a
    reasoning='cached' run without one takes the latest T-CoT written for the content by any Reasoner.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, str] = {}
        self.latest_by_content: dict[str, str] = {}
        self.legacy_warned = False
        # A crash mid-write leaves a last line without its newline; the next record must not be glued to it.
        self._starts_mid_line = path.is_file() and _ends_mid_line(path)
        if path.is_file():
            # errors="replace": a crash can cut the last line inside a multi-byte character; that line then
            # fails to parse and is skipped like any other torn line.
            with path.open("r", encoding="utf-8", errors="replace") as handle:
                for lineno, line in enumerate(handle, 1):
                    try:
                        rec = json.loads(line)
                        self._remember(rec["key"], rec.get("content"), rec["text"])
                    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                        log.warning("%s:%d: skipping an unreadable cache line (interrupted write?)", path, lineno)

    def _remember(self, key: str, content: str | None, text: str) -> None:
        if not isinstance(key, str) or not isinstance(text, str):
            raise TypeError("key and text must be strings")
        self.entries[key] = text
        if isinstance(content, str):
            self.latest_by_content[content] = text

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def latest_for_content(self, content: str) -> str | None:
        return self.latest_by_content.get(content)

    def add_many(self, records: Sequence[tuple[str, str, str]]) -> None:
        """Append (key, content, text) records and flush them to disk."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            if self._starts_mid_line:
                handle.write("\n")
                self._starts_mid_line = False
            for key, content, text in records:
                handle.write(json.dumps({"key": key, "content": content, "text": text}, ensure_ascii=False) + "\n")
                self._remember(key, content, text)
            handle.flush()
            os.fsync(handle.fileno())


def _ends_mid_line(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


class VectorCache:
    """Vectors in atomically written .npz shards, one per computed batch."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.vectors: dict[str, np.ndarray] = {}
        self._next = 0
        if folder.is_dir():
            for shard in sorted(folder.glob("shard-*.npz")):
                try:
                    with np.load(shard, allow_pickle=False) as data:
                        for key, vec in zip(data["keys"], data["vectors"]):
                            self.vectors[str(key)] = vec
                except Exception as exc:  # a shard is written atomically; this is disk damage
                    log.warning("%s: unreadable vector shard skipped (%s)", shard, exc)
                self._next = max(self._next, int(shard.stem.split("-")[1]) + 1)

    def get(self, key: str) -> np.ndarray | None:
        return self.vectors.get(key)

    def add_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"shard-{self._next:06d}.npz"
        self._next += 1
        with atomic_open(path, "wb") as handle:
            np.savez(handle, keys=np.array(list(keys)), vectors=vectors.astype(np.float32))
        for key, vec in zip(keys, vectors):
            self.vectors[key] = vec


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def embedder_fingerprint(embedder: Any) -> str:
    """Identity of an Embedder for cache keys: its weights (`weights_identity`: the checkpoint and LoRA folders,
    or a parameter hash once the weights changed in memory), its input settings and `<emb>` id."""
    path = None if getattr(embedder, "changed_in_memory", False) else getattr(embedder, "name_or_path", None)
    weights = weights_identity(embedder.model, path, getattr(embedder, "adapters", ()))
    return _digest(weights, asdict(embedder.config), int(embedder.emb_token_id))[:24]


def reasoner_fingerprint(reasoner: Any) -> str:
    """Identity of a Reasoner for cache keys: its backend and weights, generation settings and frame sampling."""
    return _digest(reasoner.cache_identity() if hasattr(reasoner, "cache_identity") else reasoner.name)[:24]


# ------------------------------------------------------------------------------------------- embedding


def _check_batch_size(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EmbedRLError(f"{name} must be a positive integer, got {value!r}")


def _estimated_cost(item: Item, tcot: str | None) -> int:
    visual = 256 * len(item.images) + (8 * 128 if item.video is not None else 0)
    return visual + (len(item.text or "") + len(item.instruction or "") + len(tcot or "")) // 4


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled or total == 0, leave=False)


def _model_leaves_cpu_free(embedder: Any) -> bool:
    device = getattr(embedder, "device", None)
    return getattr(device, "type", "cpu") != "cpu"


def _prepared_batches(prepare: Callable[[list[str]], Any], chunks: list[list[str]], overlap: bool):
    """Prepared batches in order. With `overlap`, the next batch is prepared in a thread while the caller runs
    the model on the current one: worth it when the model runs on an accelerator. On CPU the model's threads
    already use every core and preparation holds the GIL, so a thread measured slower (bench_encode: 1.4-1.6 s
    against 1.0-1.3 s inline on 2 cores) and batches are prepared inline."""
    if not overlap:
        for chunk in chunks:
            yield prepare(chunk)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, chunks[0]) if chunks else None
        for index in range(len(chunks)):
            result = pending.result()
            pending = pool.submit(prepare, chunks[index + 1]) if index + 1 < len(chunks) else None
            yield result


def embed_items(
    embedder: Any,
    items: Sequence[Item],
    tcots: Sequence[Any] | None = None,
    *,
    batch_size: int = 8,
    cache: VectorCache | None = None,
    progress: bool = False,
    failures: list[EncodeFailure] | None = None,
    notes: dict[str, list[str]] | None = None,
    skip: set[int] | None = None,
    media_loader: Callable[[Item], Any] | None = None,
) -> tuple[np.ndarray, int]:
    """Embed items with optional given T-CoTs (str / TCoT / None per item).

    Returns (vectors with NaN rows for failed or skipped items, number computed). Failures are appended to
    `failures` when given, else raised as EncodeError.
    """
    from .models.embedder import load_item_media

    _check_batch_size("batch_size", batch_size)
    n = len(items)
    tcots = list(tcots) if tcots is not None else [None] * n
    if len(tcots) != n:
        raise EmbedRLError(f"got {len(tcots)} T-CoTs for {n} items")
    own_failures = failures is None
    failures = [] if failures is None else failures
    fingerprint = embedder_fingerprint(embedder) if cache is not None else ""
    keys: list[str | None] = []
    for i, (item, tcot) in enumerate(zip(items, tcots)):
        if skip and i in skip:
            keys.append(None)
            continue
        tcot_id = tcot if isinstance(tcot, str) or tcot is None else repr(tcot)
        keys.append(_digest(content_key(item), tcot_id, fingerprint))
    dim = embedder.dim
    out = np.full((n, dim), np.nan, dtype=np.float32)
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            by_key.setdefault(key, []).append(i)
    todo: list[str] = []
    for key, rows in by_key.items():
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            out[rows] = cached
        else:
            todo.append(key)
    # Longest first: the slowest batch shows up early in the progress bar and padding stays small.
    todo.sort(key=lambda k: -_estimated_cost(items[by_key[k][0]], tcots[by_key[k][0]]
                                             if isinstance(tcots[by_key[k][0]], str) else None))
    computed = 0
    loader = media_loader or (lambda it: load_item_media(it, embedder.config))

    def prepare(chunk: list[str]) -> tuple[list[str], Any, list[EncodeFailure], dict[str, list[str]]]:
        """Load media, build and collate one batch."""
        ready_keys, inputs, batch_failures, batch_notes = [], [], [], {}
        for key in chunk:
            first = by_key[key][0]
            item = items[first]
            try:
                built = embedder.build_input(item, tcots[first], media=loader(item))
            except MediaError as exc:
                batch_failures.extend(EncodeFailure(row, items[row].id, "media", str(exc)) for row in by_key[key])
                continue
            if built.notes:
                for row in by_key[key]:  # every id that shares this computation gets the notes
                    batch_notes.setdefault(items[row].id, []).extend(built.notes)
            ready_keys.append(key)
            inputs.append(built)
        return ready_keys, embedder.collate(inputs) if inputs else None, batch_failures, batch_notes

    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = _progress(len(todo), "embed", progress)
    batches = _prepared_batches(prepare, chunks, overlap=_model_leaves_cpu_free(embedder))
    try:
        for chunk, (ready_keys, batch, batch_failures, batch_notes) in zip(chunks, batches):
            failures.extend(batch_failures)
            if notes is not None:
                for item_id, item_notes in batch_notes.items():
                    notes.setdefault(item_id, []).extend(item_notes)
            if batch is not None:
                vectors = embedder.embed_collated(batch)
                computed += len(ready_keys)
                for key, vec in zip(ready_keys, vectors):
                    out[by_key[key]] = vec
                if cache is not None:
                    cache.add_many(ready_keys, vectors)
            bar.update(len(chunk))
    finally:
        batches.close()
        bar.close()
    if own_failures and failures:
        raise EncodeError(EncodeResult(out, [None] * n, failures, {}, computed))
    return out, computed


# ---------------------------------------------------------------------------------------------- encode


def encode(
    items: Sequence[Item],
    embedder: Any,
    reasoner: Any = None,
    *,
    reasoning: str | None = None,
    side: str = "query",
    target_modality: str | None = None,
    tcots: Sequence[str | None] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    reasoner_batch_size: int | None = None,
    progress: bool = True,
    on_error: str = "raise",
    return_tensors: str = "numpy",
):
    """Vectors for `items`, row i for item i.

    reasoning: 'generate' (the Reasoner writes T-CoTs; needs `reasoner`), 'cached' (T-CoTs from
    `item.meta["tcot"]` or the cache only; an item without one is a failure), 'off' (no T-CoT: the paper's
    raw-input baseline). Default: 'generate' when a reasoner is given, else 'off'.
    `tcots` gives the T-CoT text per item directly and skips reasoning.
    on_error: 'raise' (EncodeError after computing and caching everything else) or 'nan' (NaN rows).
    """
    if on_error not in ("raise", "nan"):
        raise EmbedRLError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
    if return_tensors not in ("numpy", "torch"):
        raise EmbedRLError(f"return_tensors must be 'numpy' or 'torch', got {return_tensors!r}")
    result = encode_detailed(
        items, embedder, reasoner, reasoning=reasoning, side=side, target_modality=target_modality,
        tcots=tcots, cache_dir=cache_dir, batch_size=batch_size, reasoner_batch_size=reasoner_batch_size,
        progress=progress,
    )
    if result.failures and on_error == "raise":
        raise EncodeError(result)
    if return_tensors == "torch":
        import torch

        return torch.from_numpy(result.vectors)
    return result.vectors


@weights_fixed()
def encode_detailed(
    items: Sequence[Item],
    embedder: Any,
    reasoner: Any = None,
    *,
    reasoning: str | None = None,
    side: str = "query",
    target_modality: str | None = None,
    tcots: Sequence[str | None] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    reasoner_batch_size: int | None = None,
    progress: bool = True,
) -> EncodeResult:
    """Like `encode`, but returns T-CoTs, failures and evidence notes too, and never raises for items.
    Model identities for the cache keys are computed once per call (`weights_fixed`)."""
    if reasoning is None:
        reasoning = "generate" if reasoner is not None else "off"
    if reasoning not in REASONING_MODES:
        raise EmbedRLError(f"reasoning must be one of {REASONING_MODES}, got {reasoning!r}")
    if reasoning == "generate" and reasoner is None and tcots is None:
        raise EmbedRLError("reasoning='generate' needs a reasoner")
    if side not in ("query", "candidate"):
        raise EmbedRLError(f"side must be 'query' or 'candidate', got {side!r}")
    _check_batch_size("batch_size", batch_size)
    if reasoner_batch_size is not None:
        _check_batch_size("reasoner_batch_size", reasoner_batch_size)
    cache_root = Path(cache_dir) if cache_dir is not None else None
    failures: list[EncodeFailure] = []
    notes: dict[str, list[str]] = {}
    n = len(items)

    if tcots is not None:
        if len(tcots) != n:
            raise EmbedRLError(f"got {len(tcots)} T-CoTs for {n} items")
        texts: list[str | None] = list(tcots)
    elif reasoning == "off":
        texts = [None] * n
    else:
        texts = _reasoning_stage(items, reasoner, reasoning, side, target_modality, cache_root,
                                 reasoner_batch_size or batch_size, progress, failures)

    failed_rows = {f.index for f in failures}
    vcache = None
    if cache_root is not None:
        vcache = VectorCache(cache_root / "vectors" / embedder_fingerprint(embedder))
    vectors, computed = embed_items(embedder, items, texts, batch_size=batch_size, cache=vcache,
                                    progress=progress, failures=failures, notes=notes, skip=failed_rows)
    return EncodeResult(vectors, texts, sorted(failures, key=lambda f: f.index), notes, computed)


def _legacy_tcot(cache: TCoTCache, raw_content: str, reasoner: Any) -> str | None:
    """A T-CoT cached by embedrl before the cache keyed on the Reasoner's weights and settings: those records are
    keyed by item content and the Reasoner's name only. Reused rather than regenerated (hours with real models)."""
    if getattr(getattr(reasoner, "backend", None), "path", "") is None:
        return None  # a local model that only exists in memory: its old name says nothing about its weights
    text = cache.get(_digest(raw_content, getattr(reasoner, "name", "none")))
    if text is not None and not cache.legacy_warned:
        cache.legacy_warned = True
        log.warning("%s: using T-CoTs cached by an older embedrl (keyed by the Reasoner's name only, not its "
                    "weights or generation settings); delete the file to regenerate them", cache.path)
    return text


def _reasoning_stage(items, reasoner, mode, side, target_modality, cache_root, batch_size, progress,
                     failures) -> list[str | None]:
    from .data.media import load_item_media

    n = len(items)
    texts: list[str | None] = [None] * n
    cache = TCoTCache(cache_root / "tcots.jsonl") if cache_root is not None else None
    raw_contents = [content_key(it, extra=f"{side}|{target_modality}") for it in items]
    contents = [_digest(raw) for raw in raw_contents]
    if reasoner is not None:
        identity = reasoner_fingerprint(reasoner)
        keys = [_digest(content, identity) for content in contents]
    else:
        keys = contents  # 'cached' mode without a Reasoner: only the cache's latest T-CoT per content is used
    content_of = dict(zip(keys, contents))
    pending: dict[str, list[int]] = {}
    for i, (item, key) in enumerate(zip(items, keys)):
        # Given T-CoTs (item.meta["tcot"], e.g. released evaluation T-CoTs) only count in 'cached' mode:
        # 'generate' evaluates the Reasoner itself.
        given = item.meta.get("tcot") if mode == "cached" and isinstance(item.meta, dict) else None
        cached = None
        if cache is not None:
            cached = cache.get(key) if reasoner is not None else cache.latest_for_content(contents[i])
            if cached is None and reasoner is not None:
                cached = _legacy_tcot(cache, raw_contents[i], reasoner)
        if isinstance(given, str):
            texts[i] = given
        elif cached is not None:
            texts[i] = cached
        elif mode == "cached":
            failures.append(EncodeFailure(i, item.id, "reasoning",
                                          "no cached T-CoT (item.meta['tcot'] or the cache); use reasoning="
                                          "'generate' with a reasoner"))
        else:
            pending.setdefault(key, []).append(i)
    if not pending:
        return texts
    num_frames = getattr(reasoner, "num_frames", 8)
    order = list(pending)
    bar = _progress(len(order), "reason", progress)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ready, batch_items, media = [], [], []
            for key in chunk:
                item = items[pending[key][0]]
                try:
                    loaded = load_item_media(item, num_frames)
                except MediaError as exc:
                    for row in pending[key]:
                        failures.append(EncodeFailure(row, items[row].id, "media", str(exc)))
                    continue
                ready.append(key)
                batch_items.append(item)
                media.append(loaded)
            if batch_items:
                outputs = reasoner.reason(batch_items, side=side, target_modality=target_modality, media=media)
                for key, text in zip(ready, outputs):
                    for row in pending[key]:
                        texts[row] = text
                if cache is not None:
                    cache.add_many([(key, content_of[key], text) for key, text in zip(ready, outputs)])
            bar.update(len(chunk))
    finally:
        bar.close()
    return texts
