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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data.items import Item, content_key
from .data.media import load_item_media
from .errors import EmbedRLError, MediaError
from .fileio import atomic_open
from .models.identity import weights_fixed, weights_identity
from .models.protocols import EmbedderLike, ReasonerLike

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
    vectors: np.ndarray  # (n, dim) float32, NaN rows for failures
    tcots: list[Any]  # T-CoT per item: the Reasoner's raw text, or as given (None: none)
    failures: list[EncodeFailure] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # item id -> evidence notes (dropped boxes…)
    computed: int = 0  # vectors computed in this call (the rest came from caches)
    settings: dict[str, Any] = field(default_factory=dict)  # EncodeSettings.record() of the run


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
        # A crash mid-write leaves a last line without its newline; the next record must not be glued to it.
        self._starts_mid_line = path.is_file() and _ends_mid_line(path)
        if path.is_file():
            # Each line is decoded on its own: a crash can cut the last line inside a multi-byte character, and
            # a damaged byte must not turn into a replacement character inside a T-CoT that is then reused.
            with path.open("rb") as handle:
                for lineno, raw in enumerate(handle, 1):
                    try:
                        rec = json.loads(raw.decode("utf-8"))
                        self._remember(rec["key"], rec.get("content"), rec["text"])
                    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
                        log.warning(
                            "%s:%d: skipping an unreadable cache line (interrupted write?)", path, lineno
                        )

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
                handle.write(
                    json.dumps({"key": key, "content": content, "text": text}, ensure_ascii=False) + "\n"
                )
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


def embedder_fingerprint(embedder: EmbedderLike) -> str:
    """Identity of an Embedder for cache keys: its weights (`weights_identity`: the checkpoint and LoRA folders,
    or a parameter hash once the weights changed in memory), its input settings and `<emb>` id."""
    path = None if getattr(embedder, "changed_in_memory", False) else getattr(embedder, "name_or_path", None)
    weights = weights_identity(embedder.model, path, getattr(embedder, "adapters", ()))
    return _digest(weights, asdict(embedder.config), int(embedder.emb_token_id))[:24]


def reasoner_fingerprint(reasoner: ReasonerLike, num_frames: int | None = None) -> str:
    """Identity of a Reasoner for cache keys: its backend and weights, generation settings and prompt; with
    `num_frames`, that frame count replaces the Reasoner's own (the run's setting is what it sees)."""
    identity = reasoner.cache_identity() if hasattr(reasoner, "cache_identity") else reasoner.name
    if num_frames is not None and isinstance(identity, dict):
        identity = {**identity, "num_frames": num_frames}
    return _digest(identity)[:24]


# ------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EncodeSettings:
    """The settings of one road from items to vectors, owned here and nowhere else.

    Every caller (the `encode` command, `eval`, the server, the RL reward) passes these to `encode_detailed`;
    the frame count reaches the media loader (once per item), the Reasoner's prompt and the Embedder alike, and
    is part of every T-CoT and vector cache key. Input-building settings that belong to a trained Embedder (pixel
    bounds, evidence rules, layout) live in its saved `EmbedderConfig` and reach the keys through its fingerprint.
    """

    reasoning: str | None = None
    """'generate' (the Reasoner writes T-CoTs), 'cached' (T-CoTs from item.meta["tcot"] or the cache only; an
    item without one fails), 'off' (no T-CoT). None: 'generate' with a Reasoner, else 'off'."""
    side: str = "query"
    """'query' or 'candidate': picks the Reasoner's prompt kind."""
    target_modality: str | None = None
    """What a query retrieves (text, image, video); picks the text-to-video prompt for text queries."""
    num_frames: int | None = None
    """Frames sampled per video. None: the Embedder's saved setting (the count it was trained with); any other
    value overrides it for this run, for both models, and is logged."""
    batch_size: int = 8
    reasoner_batch_size: int | None = None
    """Items per Reasoner batch (None: batch_size)."""
    cache_dir: Path | None = None
    """Folder of the T-CoT and vector caches; a rerun resumes from them. None: no caches."""
    progress: bool = True
    window: int | None = None
    """Unique items per window: each item's media are loaded once and handed to both models, and a window's
    items wait in memory between the Reasoner and the Embedder. None: four Reasoner batches."""

    def __post_init__(self) -> None:
        if self.reasoning is not None and self.reasoning not in REASONING_MODES:
            raise EmbedRLError(f"reasoning must be one of {REASONING_MODES}, got {self.reasoning!r}")
        if self.side not in ("query", "candidate"):
            raise EmbedRLError(f"side must be 'query' or 'candidate', got {self.side!r}")
        for name in ("batch_size", "reasoner_batch_size", "num_frames", "window"):
            value = getattr(self, name)
            if value is not None:
                _check_batch_size(name, value)
        if self.cache_dir is not None and not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def resolved(self, embedder: EmbedderLike, reasoner: ReasonerLike | None) -> EncodeSettings:
        """These settings with the defaults filled in from the models."""
        reasoning = self.reasoning or ("generate" if reasoner is not None else "off")
        frames = self.num_frames or int(embedder.config.num_frames)
        if frames != embedder.config.num_frames:
            log.info(
                "sampling %d frames per video for both models instead of the Embedder's saved %d "
                "(EncodeSettings.num_frames)",
                frames,
                embedder.config.num_frames,
            )
        reasoner_batch = self.reasoner_batch_size or self.batch_size
        return replace(
            self,
            reasoning=reasoning,
            num_frames=frames,
            reasoner_batch_size=reasoner_batch,
            window=self.window or 4 * max(reasoner_batch, self.batch_size),
        )

    def record(self) -> dict[str, Any]:
        """What a result stores about the run."""
        return {
            "reasoning": self.reasoning,
            "side": self.side,
            "target_modality": self.target_modality,
            "frames_per_video": self.num_frames,
        }


def settings_from(settings: EncodeSettings | None, fields: dict[str, Any]) -> EncodeSettings:
    """`settings` with keyword fields replaced (`encode(..., side="candidate")` reads like the settings)."""
    unknown = set(fields) - set(EncodeSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown encode setting(s): {', '.join(sorted(unknown))}")
    return replace(settings or EncodeSettings(), **fields)


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


def _model_leaves_cpu_free(embedder: EmbedderLike) -> bool:
    device = getattr(embedder, "device", None)
    return getattr(device, "type", "cpu") != "cpu"


def _prepared_batches(prepare: Callable[[list[Any]], Any], chunks: list[list[Any]], overlap: bool):
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


def _tcot_id(tcot: Any) -> str | None:
    return tcot if isinstance(tcot, str) or tcot is None else repr(tcot)


def _media_key(item: Item) -> str:
    """Which media an item names (not their bytes: identical items are already merged by content)."""
    refs = [f"<image {id(m)}>" if isinstance(m, Image.Image) else str(m) for m in item.images]
    video = item.video
    if video is not None:
        refs.append(
            json.dumps([str(f) for f in video.frames] if video.frames is not None else str(video.path))
        )
    return json.dumps(refs)


class _MediaWindow:
    """Media of the items of one window, each loaded once, handed to both models, and let go after its last use
    (so a window holds at most the media still waiting for a model, not every item's frames)."""

    def __init__(self, num_frames: int):
        self.num_frames = num_frames
        self.loaded: dict[str, Any] = {}
        self.uses: dict[str, int] = {}

    def expect(self, item: Item, uses: int = 1) -> None:
        key = _media_key(item)
        self.uses[key] = self.uses.get(key, 0) + uses

    def get(self, item: Item) -> tuple[list, list]:
        key = _media_key(item)
        if key not in self.loaded:
            try:
                self.loaded[key] = load_item_media(item, self.num_frames)
            except MediaError as exc:
                self.loaded[key] = exc
        value = self.loaded[key]
        self.uses[key] = self.uses.get(key, 1) - 1
        if self.uses[key] <= 0:
            self.loaded.pop(key, None)
            self.uses.pop(key, None)
        if isinstance(value, MediaError):
            raise value
        return value

    def release(self, item: Item) -> None:
        """An expected use that will not happen (its vector came from the cache after all)."""
        key = _media_key(item)
        self.uses[key] = self.uses.get(key, 1) - 1
        if self.uses[key] <= 0:
            self.loaded.pop(key, None)
            self.uses.pop(key, None)


def _embed_groups(
    embedder: EmbedderLike,
    items: Sequence[Item],
    texts: Sequence[Any],
    groups: dict[str, list[int]],
    media: _MediaWindow,
    out: np.ndarray,
    cache: VectorCache | None,
    batch_size: int,
    bar: Any,
    failures: list[EncodeFailure],
    notes: dict[str, list[str]],
) -> int:
    """Embed one representative row per vector key in `groups`, write every row of the group; returns how many
    vectors were computed."""
    # ties broken by input row, not by how the groups were found, so that a rerun batches them the same way
    todo = sorted(
        groups,
        key=lambda k: (-_estimated_cost(items[groups[k][0]], _tcot_id(texts[groups[k][0]])), groups[k][0]),
    )

    def prepare(chunk: list[str]) -> tuple[list[str], Any]:
        ready, inputs = [], []
        for key in chunk:
            rows = groups[key]
            item = items[rows[0]]
            try:
                built = embedder.build_input(item, texts[rows[0]], media=media.get(item))
            except MediaError as exc:
                failures.extend(EncodeFailure(row, items[row].id, "media", str(exc)) for row in rows)
                continue
            except (ValueError, TypeError, OverflowError) as exc:  # one bad item must not stop the others
                failures.extend(
                    EncodeFailure(row, items[row].id, "input", f"{type(exc).__name__}: {exc}") for row in rows
                )
                continue
            for row in rows:  # every id that shares this computation gets the notes
                if built.notes:
                    notes.setdefault(items[row].id, []).extend(built.notes)
            ready.append(key)
            inputs.append(built)
        return ready, embedder.collate(inputs) if inputs else None

    computed = 0
    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    batches = _prepared_batches(prepare, chunks, overlap=_model_leaves_cpu_free(embedder))
    try:
        for chunk, (ready, batch) in zip(chunks, batches):
            if batch is not None:
                vectors = embedder.embed_collated(batch)
                computed += len(ready)
                for key, vec in zip(ready, vectors):
                    out[groups[key]] = vec
                if cache is not None:
                    cache.add_many(ready, vectors)
            bar.update(len(chunk))
    finally:
        batches.close()
    return computed


def embed_items(
    embedder: EmbedderLike,
    items: Sequence[Item],
    tcots: Sequence[Any] | None = None,
    *,
    batch_size: int = 8,
    num_frames: int | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, int]:
    """(vectors, number computed) of items with given T-CoTs (str / TCoT / None per item); raises `EncodeError`
    (holding everything computed) when any item fails. The RL reward and `Embedder.embed` use it: it is
    `encode_detailed` with the T-CoTs given."""
    result = encode_detailed(
        items,
        embedder,
        tcots=list(tcots) if tcots is not None else [None] * len(items),
        settings=EncodeSettings(
            batch_size=batch_size, num_frames=num_frames, progress=progress, cache_dir=cache_dir
        ),
    )
    if result.failures:
        raise EncodeError(result)
    return result.vectors, result.computed


# ---------------------------------------------------------------------------------------------- encode


def encode(
    items: Sequence[Item],
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None = None,
    settings: EncodeSettings | None = None,
    *,
    tcots: Sequence[str | None] | None = None,
    on_error: str = "raise",
    return_tensors: str = "numpy",
    **fields: Any,
):
    """Vectors for `items`, row i for item i: `encode_detailed(...).vectors`.

    `settings` (or the same fields as keywords: `reasoning`, `side`, `target_modality`, `num_frames`,
    `batch_size`, `cache_dir`, `progress`, …; see `EncodeSettings`) say how. `tcots` gives the T-CoT text per
    item directly and skips reasoning. on_error: 'raise' (EncodeError after computing and caching everything
    else) or 'nan' (NaN rows). return_tensors: 'numpy' or 'torch'.
    """
    if on_error not in ("raise", "nan"):
        raise EmbedRLError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
    if return_tensors not in ("numpy", "torch"):
        raise EmbedRLError(f"return_tensors must be 'numpy' or 'torch', got {return_tensors!r}")
    result = encode_detailed(items, embedder, reasoner, settings, tcots=tcots, **fields)
    if result.failures and on_error == "raise":
        raise EncodeError(result)
    if return_tensors == "torch":
        import torch

        return torch.from_numpy(result.vectors)
    return result.vectors


@weights_fixed()
def encode_detailed(
    items: Sequence[Item],
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None = None,
    settings: EncodeSettings | None = None,
    *,
    tcots: Sequence[Any] | None = None,
    **fields: Any,
) -> EncodeResult:
    """Vectors, T-CoTs, failures and evidence notes of `items`; never raises for an item.

    Works in windows of `settings.window` unique items: each item's media are loaded once and given to the
    Reasoner (if it writes a T-CoT) and then to the Embedder. Model identities for the cache keys are computed
    once per call (`weights_fixed`)."""
    settings = settings_from(settings, fields).resolved(embedder, reasoner)
    if settings.reasoning == "generate" and reasoner is None and tcots is None:
        raise EmbedRLError("reasoning='generate' needs a reasoner")
    n = len(items)
    frames = settings.num_frames
    failures: list[EncodeFailure] = []
    notes: dict[str, list[str]] = {}
    cache_root = settings.cache_dir

    # 1. T-CoTs known without the Reasoner, and the generations still to do.
    pending: dict[str, list[int]] = {}
    tcache: TCoTCache | None = None
    tcot_keys: dict[str, str] = {}
    if tcots is not None:
        if len(tcots) != n:
            raise EmbedRLError(f"got {len(tcots)} T-CoTs for {n} items")
        texts: list[Any] = list(tcots)
    elif settings.reasoning == "off":
        texts = [None] * n
    else:
        tcache = TCoTCache(cache_root / "tcots.jsonl") if cache_root is not None else None
        texts, pending, tcot_keys = _known_tcots(items, reasoner, settings, tcache, failures)

    # 2. Vectors known from the cache, and the groups of rows still to embed.
    fingerprint = embedder_fingerprint(embedder)
    vcache = VectorCache(cache_root / "vectors" / fingerprint) if cache_root is not None else None
    out = np.full((n, embedder.dim), np.nan, dtype=np.float32)
    waiting = {row for rows in pending.values() for row in rows} | {f.index for f in failures}

    def vector_key(row: int) -> str:
        # the frame count only changes what a video item is: other items keep their keys across settings
        seen_frames = frames if items[row].video is not None else None
        return _digest(content_key(items[row]), _tcot_id(texts[row]), fingerprint, seen_frames)

    to_embed: dict[str, list[int]] = {}
    for row in range(n):
        if row not in waiting:
            to_embed.setdefault(vector_key(row), []).append(row)
    # Windows are cut from every item in input order, those already cached included, so a rerun after a crash
    # sees the same windows and, within each, the same longest-first batches: the remaining vectors come out
    # of the very batches (hence the very padding and floats) an uninterrupted run would have used.
    row_unit: dict[int, tuple[str, str]] = {}
    for kind, keyed in (("reason", pending), ("embed", to_embed)):
        for key, rows in keyed.items():
            row_unit.update((row, (kind, key)) for row in rows)
    units = list(dict.fromkeys(row_unit[row] for row in sorted(row_unit)))
    for key in [k for k in to_embed if vcache is not None and vcache.get(k) is not None]:
        out[to_embed.pop(key)] = vcache.get(key)

    # 3. Windows: load media once, reason, embed.
    computed = 0
    reason_bar = _progress(len(pending), "reason", settings.progress)
    embed_bar = _progress(len(to_embed) + len(pending), "embed", settings.progress)
    try:
        for start in range(0, len(units), settings.window):
            window = units[start : start + settings.window]
            media = _MediaWindow(frames)
            groups = {key: to_embed[key] for kind, key in window if kind == "embed" and key in to_embed}
            generate = [key for kind, key in window if kind == "reason"]
            for key in generate:  # once for the Reasoner, once for the Embedder
                media.expect(items[pending[key][0]], uses=2)
            for rows in groups.values():
                media.expect(items[rows[0]])
            if generate:
                done = _generate(
                    items,
                    reasoner,
                    settings,
                    generate,
                    pending,
                    media,
                    texts,
                    tcache,
                    tcot_keys,
                    failures,
                    reason_bar,
                )
                for key in generate:
                    rows = pending[key]
                    if key not in done:
                        media.release(items[rows[0]])
                        embed_bar.update(1)
                        continue
                    vkey = vector_key(rows[0])
                    cached = vcache.get(vkey) if vcache is not None else None
                    if cached is not None:
                        out[rows] = cached
                        media.release(items[rows[0]])
                        embed_bar.update(1)
                    elif vkey in groups:  # the same vector is already to be computed in this window
                        groups[vkey].extend(rows)
                        media.release(items[rows[0]])
                    else:
                        groups[vkey] = list(rows)
            computed += _embed_groups(
                embedder,
                items,
                texts,
                groups,
                media,
                out,
                vcache,
                settings.batch_size,
                embed_bar,
                failures,
                notes,
            )
    finally:
        reason_bar.close()
        embed_bar.close()
    return EncodeResult(
        out, texts, sorted(failures, key=lambda f: f.index), notes, computed, settings.record()
    )


def _known_tcots(
    items: Sequence[Item],
    reasoner: ReasonerLike | None,
    settings: EncodeSettings,
    cache: TCoTCache | None,
    failures: list[EncodeFailure],
) -> tuple[list[str | None], dict[str, list[int]], dict[str, str]]:
    """(T-CoT per row or None, T-CoT key -> rows still to generate, T-CoT key -> content key)."""
    n = len(items)
    texts: list[str | None] = [None] * n
    extra = f"{settings.side}|{settings.target_modality}"
    contents = [
        _digest(content_key(it, extra=extra + (f"|frames={settings.num_frames}" if it.video else "")))
        for it in items
    ]
    if reasoner is not None:
        identity = reasoner_fingerprint(reasoner, settings.num_frames)
        keys = [_digest(content, identity) for content in contents]
    else:
        keys = contents  # 'cached' mode without a Reasoner: only the cache's latest T-CoT per content is used
    pending: dict[str, list[int]] = {}
    for i, (item, key) in enumerate(zip(items, keys)):
        # Given T-CoTs (item.meta["tcot"], e.g. released evaluation T-CoTs) only count in 'cached' mode:
        # 'generate' evaluates the Reasoner itself.
        given = (
            item.meta.get("tcot") if settings.reasoning == "cached" and isinstance(item.meta, dict) else None
        )
        cached = None
        if cache is not None:
            cached = cache.get(key) if reasoner is not None else cache.latest_for_content(contents[i])
        if isinstance(given, str):
            texts[i] = given
        elif cached is not None:
            texts[i] = cached
        elif settings.reasoning == "cached":
            failures.append(
                EncodeFailure(
                    i,
                    item.id,
                    "reasoning",
                    "no cached T-CoT (item.meta['tcot'] or the cache); use reasoning="
                    "'generate' with a reasoner",
                )
            )
        else:
            pending.setdefault(key, []).append(i)
    # Records for these very items (same content and side) that another Reasoner or other settings wrote: say
    # why nothing is reused. Records of other items or of the other side are no reason to warn.
    stale = (
        cache is not None
        and reasoner is not None
        and not any(t is not None for t in texts)
        and any(content in cache.latest_by_content for content in contents)
    )
    if stale:
        log.warning(
            "%s holds T-CoTs for these items written by another Reasoner or with other generation "
            "settings; they are not reused: %s",
            cache.path,
            "new ones are generated" if settings.reasoning == "generate" else "each item fails",
        )
    return texts, pending, dict(zip(keys, contents))


def _generate(
    items,
    reasoner,
    settings: EncodeSettings,
    keys: list[str],
    pending: dict[str, list[int]],
    media: _MediaWindow,
    texts: list,
    cache: TCoTCache | None,
    contents: dict[str, str],
    failures: list[EncodeFailure],
    bar: Any,
) -> set[str]:
    """Write the T-CoTs of `keys` (one generation per key) into `texts` and the cache; returns the keys done."""
    done: set[str] = set()
    for start in range(0, len(keys), settings.reasoner_batch_size):
        chunk = keys[start : start + settings.reasoner_batch_size]
        ready, batch_items, loaded = [], [], []
        for key in chunk:
            item = items[pending[key][0]]
            try:
                loaded.append(media.get(item))
            except MediaError as exc:
                failures.extend(EncodeFailure(row, items[row].id, "media", str(exc)) for row in pending[key])
                continue
            ready.append(key)
            batch_items.append(item)
        if batch_items:
            outputs = reasoner.reason(
                batch_items, side=settings.side, target_modality=settings.target_modality, media=loaded
            )
            for key, text in zip(ready, outputs):
                for row in pending[key]:
                    texts[row] = text
                done.add(key)
            if cache is not None:
                cache.add_many([(key, contents[key], text) for key, text in zip(ready, outputs)])
        bar.update(len(chunk))
    return done
