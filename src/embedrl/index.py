"""A searchable index of embedded items, with the evidence each item's T-CoT pointed at.

An index folder holds:

    INDEX/index.json          the manifest: format, embedrl version, model fingerprints, count, search kind, and
                              which data folder is current (written last, atomically: the commit point)
    INDEX/data-NNNNNN/        one generation of the data, never changed once the manifest names it:
        vectors.npy           float32 (count x dim), L2-normalised, row i for ids[i]
        ids.json              the item ids, in row order
        records.jsonl         per item: id, the item (media as absolute paths), its T-CoT and its evidence
                              (keywords, crop boxes in pixels of the first image or frame, 0-based keyframes)
        faiss.index           a serialised FAISS index (flat or HNSW), when faiss-cpu was importable
    INDEX/cache/              the encode caches (T-CoTs, vector shards): a killed build or add resumes from them
    INDEX/.embedrl-index      marks the folder as one `embedrl index build` made

`add` writes the next generation (old rows + new rows) and then the manifest, so an interrupted add leaves the
previous index intact; a later write removes generations the manifest no longer names.

Vectors are comparable only within one Embedder: an index remembers the fingerprint of the Embedder that built
it (`pipeline.embedder_fingerprint`: its weights, input settings and `<emb>` token) and refuses to add or search
with another.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.items import Item
from .errors import ConfigError, DataError, EmbedRLError, MediaError, Problem
from .fileio import atomic_open, read_json, write_json
from .models.protocols import EmbedderLike, ReasonerLike

log = logging.getLogger(__name__)

FORMAT = "embedrl-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"
MARKER = ".embedrl-index"
SEARCH_KINDS = ("flat", "hnsw", "exact")


# ------------------------------------------------------------------------------------------- evidence


def evidence_record(embedder: EmbedderLike, item: Item, tcot: str | None, media: Any = None) -> dict:
    """What a T-CoT made the Embedder look at, as JSON: its keywords, the crop boxes it cut (pixels of the item's
    first image, or first frame), the keyframes it re-inserted (0-based positions in the sampled frames) and the
    notes on what was dropped. Read from `Embedder.build_input`, so it is exactly what was embedded."""
    from .models.embedder_input import load_item_media
    from .models.evidence import read_evidence

    out: dict[str, Any] = {
        "keywords": [],
        "crop_boxes": [],
        "keyframes": [],
        "num_frames": 0,
        "image_size": None,
        "notes": [],
    }
    if tcot is None or not tcot.strip():
        return out
    cue_only = read_evidence(tcot, crop_source=None, num_frames=0, rules=embedder.config.evidence_rules)
    if cue_only is None:
        return out
    out["keywords"] = cue_only.keywords
    cue = cue_only.cue or {}
    if "bbox_2d" not in cue and "key_frames" not in cue:
        out["notes"] = list(cue_only.notes)
        return out
    # Boxes and keyframes depend on the media (image size, frame count): build the input as embedding did.
    try:
        media = media if media is not None else load_item_media(item, embedder.config)
        built = embedder.build_input(item, tcot, media=media)
    except MediaError as exc:
        out["notes"] = [f"evidence not read: {exc}"]
        return out
    images, frames = media
    source = images[0] if images else (frames[0] if frames else None)
    out["image_size"] = [source.width, source.height] if source is not None else None
    out["num_frames"] = len(frames)
    out["crop_boxes"] = [list(p.crop_box) for p in built.placements if p.role == "crop" and p.crop_box]
    out["keyframes"] = [p.frame_index for p in built.placements if p.role == "keyframe"]
    out["notes"] = list(built.notes)
    return out


def describe_evidence(evidence: dict) -> str:
    """One line for a table: keywords, crop boxes, keyframes (1-based, as the Reasoner numbers frames)."""
    parts = []
    if evidence.get("keywords"):
        parts.append("keywords: " + ", ".join(evidence["keywords"]))
    if evidence.get("crop_boxes"):
        parts.append(
            "crops: " + " ".join(f"({x1},{y1})-({x2},{y2})" for x1, y1, x2, y2 in evidence["crop_boxes"])
        )
    if evidence.get("keyframes"):
        parts.append(
            f"keyframes: {', '.join(str(i + 1) for i in evidence['keyframes'])} of "
            f"{evidence.get('num_frames') or '?'}"
        )
    return "; ".join(parts) or "-"


# ------------------------------------------------------------------------------------------- building


class IndexFailures(EmbedRLError):
    """Some items could not be embedded; nothing was committed (their vectors are cached for the rerun)."""

    def __init__(self, failures: list[Any]):
        self.failures = failures
        lines = "\n".join(str(f) for f in failures[:20])
        more = f"\n… and {len(failures) - 20} more" if len(failures) > 20 else ""
        super().__init__(
            f"{len(failures)} item(s) could not be embedded, so the index was not written:\n{lines}"
            f"{more}\nFix them and rerun (everything else comes from the cache), or pass "
            "--skip-failed to index the rest"
        )


@dataclass
class IndexUpdate:
    root: Path
    added: int
    computed: int
    total: int
    skipped: list[Any] = field(default_factory=list)
    search: str = "exact"


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _data_dir(root: Path, generation: int) -> Path:
    return root / f"data-{generation:06d}"


def _fingerprints(embedder: EmbedderLike, reasoner: ReasonerLike | None) -> tuple[str, str | None]:
    from .pipeline import embedder_fingerprint, reasoner_fingerprint

    return embedder_fingerprint(embedder), reasoner_fingerprint(reasoner) if reasoner is not None else None


def _item_json(item: Item) -> dict:
    try:
        record = item.to_json()
    except TypeError:  # media held in memory (a Python caller): the record keeps what can be written
        return {"id": item.id, "instruction": item.instruction, "text": item.text}
    if isinstance(record.get("meta"), dict) and "tcot" in record["meta"]:  # kept once, as the record's tcot
        record["meta"] = {k: v for k, v in record["meta"].items() if k != "tcot"} or None
        if record["meta"] is None:
            del record["meta"]
    return record


def _encode(
    items: Sequence[Item],
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None,
    root: Path,
    *,
    reasoning: str | None,
    side: str,
    target_modality: str | None,
    batch_size: int,
    progress: bool,
    skip_failed: bool,
):
    from .pipeline import encode_detailed

    result = encode_detailed(
        items,
        embedder,
        reasoner,
        reasoning=reasoning,
        side=side,
        target_modality=target_modality,
        cache_dir=root / "cache",
        batch_size=batch_size,
        progress=progress,
    )
    if result.failures and not skip_failed:
        raise IndexFailures(result.failures)
    failed = {f.index for f in result.failures}
    keep = [i for i in range(len(items)) if i not in failed]
    records = [
        {
            "id": items[i].id,
            "item": _item_json(items[i]),
            "tcot": result.tcots[i],
            "evidence": evidence_record(embedder, items[i], result.tcots[i]),
        }
        for i in keep
    ]
    return result, keep, records


def _faiss_index(vectors: np.ndarray, kind: str, hnsw_m: int, previous: Any = None):
    faiss = _faiss()
    if faiss is None or kind == "exact":
        return None
    if previous is not None:
        previous.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return previous
    dim = vectors.shape[1]
    index = (
        faiss.IndexFlatIP(dim)
        if kind == "flat"
        else faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    )
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _write_generation(
    root: Path, generation: int, vectors: np.ndarray, ids: list[str], records: list[dict], faiss_index: Any
) -> str:
    folder = _data_dir(root, generation)
    if folder.exists():  # left by an interrupted write that the manifest never named
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with atomic_open(folder / "vectors.npy", "wb") as handle:
        np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    write_json(folder / "ids.json", ids, indent=None)
    with atomic_open(folder / "records.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    if faiss_index is not None:
        data = _faiss().serialize_index(faiss_index)
        with atomic_open(folder / "faiss.index", "wb") as handle:
            handle.write(np.asarray(data, dtype=np.uint8).tobytes())
    return folder.name


def _drop_old_generations(root: Path, keep: str) -> None:
    for folder in root.glob("data-*"):
        if folder.is_dir() and folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    from .eval.rank import normalize_rows

    return normalize_rows(vectors)


def build_index(
    root: str | Path,
    items: Sequence[Item],
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None = None,
    *,
    models: dict | None = None,
    reasoning: str | None = None,
    side: str = "candidate",
    target_modality: str | None = None,
    search: str = "flat",
    hnsw_m: int = 32,
    batch_size: int = 8,
    progress: bool = True,
    skip_failed: bool = False,
    overwrite: bool = False,
) -> IndexUpdate:
    """Embed `items` (with T-CoTs when a Reasoner is given) into a new index at `root`.

    `reasoning` as in `encode`: 'generate' (the Reasoner writes T-CoTs), 'cached' (the T-CoTs the items carry in
    `meta["tcot"]`, e.g. oracle ones) or 'off'. Resumable: a rerun after a crash takes T-CoTs and vectors from
    `root/cache`. `models` records how the
    models were given (paths, generation settings), so that `add` and `search` can load them again.
    `search`: 'flat' (exact FAISS), 'hnsw' (approximate FAISS) or 'exact' (no FAISS); without faiss-cpu the
    index is searched exactly whatever was asked.
    """
    from . import __version__

    root = Path(root)
    if search not in SEARCH_KINDS:
        raise ConfigError(f"unknown search kind {search!r}; choose {', '.join(SEARCH_KINDS)}")
    if (root / MANIFEST).is_file() and not overwrite:
        raise ConfigError(
            f"{root} is already an index ({len(Index.load(root).ids)} items); add items with "
            "`embedrl index add`, or pass --overwrite to rebuild it (its cache is reused)"
        )
    ids = [item.id for item in items]
    _refuse_duplicates(ids, [], "the input")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).touch()
    result, keep, records = _encode(
        items,
        embedder,
        reasoner,
        root,
        reasoning=reasoning,
        side=side,
        target_modality=target_modality,
        batch_size=batch_size,
        progress=progress,
        skip_failed=skip_failed,
    )
    if not keep:
        raise EmbedRLError("no item could be embedded; nothing to index")
    vectors = _normalised(result.vectors[keep])
    faiss_index = _faiss_index(vectors, search, hnsw_m)
    actual = search if faiss_index is not None else "exact"
    if actual != search:
        log.warning(
            "faiss-cpu is not importable: %s is searched exactly (pip install 'embedrl[index]')", root
        )
    previous = read_json(root / MANIFEST) if (root / MANIFEST).is_file() else {}
    generation = int(previous.get("generation", 0)) + 1
    data = _write_generation(root, generation, vectors, [ids[i] for i in keep], records, faiss_index)
    embedder_fp, reasoner_fp = _fingerprints(embedder, reasoner)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "embedrl_version": __version__,
        "created": now,
        "updated": now,
        "generation": generation,
        "data": data,
        "count": len(keep),
        "dim": int(vectors.shape[1]),
        "similarity": "cosine",
        "search": actual,
        "hnsw_m": hnsw_m,
        "embedder": {
            "fingerprint": embedder_fp,
            "path": getattr(embedder, "name_or_path", None),
            "config": asdict(embedder.config),
        },
        "reasoner": None
        if reasoner is None
        else {"fingerprint": reasoner_fp, "name": getattr(reasoner, "name", None)},
        "reasoning": reasoning or ("generate" if reasoner is not None else "off"),
        "side": side,
        "target_modality": target_modality,
        "modalities": dict(Counter(items[i].modality for i in keep)),
        "models": models or {},
    }
    write_json(root / MANIFEST, manifest)
    _drop_old_generations(root, data)
    return IndexUpdate(root, len(keep), result.computed, len(keep), list(result.failures), actual)


def add_to_index(
    root: str | Path,
    items: Sequence[Item],
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
    skip_failed: bool = False,
) -> IndexUpdate:
    """Append `items` to the index at `root`, embedded as its items were (same side, reasoning and Embedder).
    Refuses ids the index already holds, and an Embedder other than the one that built it."""
    root = Path(root)
    index = Index.load(root, mmap=False)
    index.check_embedder(embedder)
    manifest = index.manifest
    ids = [item.id for item in items]
    _refuse_duplicates(ids, index.ids, str(root))
    if manifest.get("reasoning") == "generate":
        if reasoner is None:
            raise ConfigError(
                f"{root} was built with T-CoTs from {manifest['reasoner'].get('name')}; give a Reasoner "
                "(--reasoner or --reasoner-url) so that the new items are embedded the same way"
            )
        _, reasoner_fp = _fingerprints(embedder, reasoner)
        if reasoner_fp != manifest["reasoner"].get("fingerprint"):
            log.warning(
                "%s: the Reasoner differs from the one that built the index (%s); the new items' T-CoTs "
                "come from %s",
                root,
                manifest["reasoner"].get("name"),
                getattr(reasoner, "name", "?"),
            )
    result, keep, records = _encode(
        items,
        embedder,
        reasoner if manifest.get("reasoning") == "generate" else None,
        root,
        reasoning=manifest.get("reasoning"),
        side=manifest.get("side", "candidate"),
        target_modality=manifest.get("target_modality"),
        batch_size=batch_size,
        progress=progress,
        skip_failed=skip_failed,
    )
    if not keep:
        raise EmbedRLError("no new item could be embedded; the index is unchanged")
    new_vectors = _normalised(result.vectors[keep])
    vectors = np.concatenate([np.asarray(index.vectors, dtype=np.float32), new_vectors])
    kind = manifest.get("search", "exact")
    faiss_index = (
        _faiss_index(new_vectors, kind, int(manifest.get("hnsw_m", 32)), previous=index.faiss_index)
        if index.faiss_index is not None
        else _faiss_index(vectors, kind, int(manifest.get("hnsw_m", 32)))
    )
    generation = int(manifest.get("generation", 1)) + 1
    data = _write_generation(
        root, generation, vectors, index.ids + [ids[i] for i in keep], index.records + records, faiss_index
    )
    modalities = Counter(manifest.get("modalities") or {})
    modalities.update(items[i].modality for i in keep)
    manifest.update(
        generation=generation,
        data=data,
        count=len(vectors),
        updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        modalities=dict(modalities),
        search=kind if faiss_index is not None else "exact",
    )
    write_json(root / MANIFEST, manifest)
    _drop_old_generations(root, data)
    return IndexUpdate(
        root, len(keep), result.computed, len(vectors), list(result.failures), manifest["search"]
    )


def _refuse_duplicates(new: list[str], existing: list[str], where: str) -> None:
    have = set(existing)
    seen: set[str] = set()
    repeated = []
    for item_id in new:
        if item_id in have or item_id in seen:
            repeated.append(item_id)
        seen.add(item_id)
    if repeated:
        shown = ", ".join(repr(i) for i in repeated[:10]) + (
            f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
        )
        raise DataError(
            Problem(
                where, f"{len(repeated)} id(s) already in the index: {shown}; ids must be unique", field="id"
            )
        )


# ------------------------------------------------------------------------------------------- loading


@dataclass
class Index:
    """A loaded index: manifest, vectors (memory-mapped by default), ids, records and the FAISS index."""

    root: Path
    manifest: dict
    vectors: np.ndarray
    ids: list[str]
    records: list[dict]
    faiss_index: Any = None

    @classmethod
    def load(cls, root: str | Path, mmap: bool = True) -> Index:
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            hint = (
                " (a build that did not finish: rerun `embedrl index build`, it resumes from the cache)"
                if (root / MARKER).exists()
                else "; build one with `embedrl index build`"
            )
            raise ConfigError(f"{root}: not an embedrl index, no {MANIFEST}{hint}")
        manifest = read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ConfigError(f"{manifest_path}: not an embedrl index manifest")
        if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
            raise ConfigError(
                f"{manifest_path}: written by a newer embedrl (index format "
                f"{manifest.get('format_version')}); upgrade embedrl to read it"
            )
        data = root / str(manifest.get("data"))
        try:
            vectors = np.load(data / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{data / 'vectors.npy'}: cannot read the index vectors ({exc})") from None
        ids = read_json(data / "ids.json")
        records = [
            json.loads(line)
            for line in (data / "records.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        count = int(manifest.get("count", -1))
        if not (vectors.ndim == 2 and vectors.shape[0] == len(ids) == len(records) == count):
            raise ConfigError(
                f"{root}: damaged index ({vectors.shape[0]} vectors, {len(ids)} ids, {len(records)} "
                f"records, manifest says {count}); rebuild it"
            )
        faiss_index = None
        if manifest.get("search") in ("flat", "hnsw"):
            faiss = _faiss()
            if faiss is None:
                log.warning("%s: faiss-cpu is not importable; searching exactly instead", root)
            else:
                faiss_index = faiss.deserialize_index(np.fromfile(data / "faiss.index", dtype=np.uint8))
        return cls(root, manifest, vectors, list(ids), records, faiss_index)

    @property
    def search_kind(self) -> str:
        return self.manifest.get("search", "exact") if self.faiss_index is not None else "exact"

    @property
    def target_modality(self) -> str | None:
        """What the index holds most of: picks the query prompt (text queries over videos reason differently)."""
        counts = self.manifest.get("modalities") or {}
        return max(counts, key=counts.get) if counts else None

    def default_query_reasoning(self, have_reasoner: bool) -> str:
        return "generate" if have_reasoner and self.manifest.get("reasoning") == "generate" else "off"

    def check_embedder(self, embedder: EmbedderLike) -> None:
        """Refuse, saying why, an Embedder whose vectors are not comparable with this index's."""
        from .pipeline import embedder_fingerprint

        recorded = self.manifest["embedder"]
        fingerprint = embedder_fingerprint(embedder)
        if fingerprint == recorded.get("fingerprint"):
            return
        path = getattr(embedder, "name_or_path", None)
        if str(path) != str(recorded.get("path")):
            why = f"it is another checkpoint ({path}; the index was built with {recorded.get('path')})"
        else:
            old = recorded.get("config") or {}
            new = asdict(embedder.config)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            why = (
                f"its input settings differ ({', '.join(changed)}; e.g. another --evidence-style)"
                if changed
                else f"the checkpoint files in {path} changed since the index was built (retrained, rewritten "
                "or a different --dtype)"
            )
        raise ConfigError(
            f"{self.root}: built with Embedder fingerprint {recorded.get('fingerprint')}, but the "
            f"Embedder given has {fingerprint}: {why}. Vectors of two Embedders are not comparable; "
            "use the index's Embedder or rebuild the index with `embedrl index build`"
        )

    def topk(self, queries: np.ndarray, k: int):
        """(indices, scores) of the k best rows per query (cosine), through FAISS when the index has it."""
        from .eval.rank import exact_topk

        queries = _normalised(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        k = max(1, min(k, len(self.ids)))
        if self.faiss_index is None:
            # The stored rows are unit vectors (normalised when written): the dot product is the cosine, without
            # normalising the whole pool again for every query.
            top = exact_topk(queries, self.vectors, k, similarity="dot")
            return top.indices, top.scores
        if self.search_kind == "hnsw":
            self.faiss_index.hnsw.efSearch = max(64, 2 * k)
        scores, indices = self.faiss_index.search(np.ascontiguousarray(queries), k)
        return indices, scores

    def search(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        """Hits per query: rank, id, score, the hit's T-CoT, evidence and item record."""
        indices, scores = self.topk(queries, k)
        out = []
        for row_indices, row_scores in zip(indices, scores):
            hits = []
            for rank, (i, score) in enumerate(zip(row_indices, row_scores), 1):
                if i < 0:
                    continue
                record = self.records[int(i)]
                hits.append(
                    {
                        "rank": rank,
                        "id": self.ids[int(i)],
                        "score": float(score),
                        "tcot": record.get("tcot"),
                        "evidence": record.get("evidence") or {},
                        "item": record.get("item"),
                    }
                )
            out.append(hits)
        return out


# ------------------------------------------------------------------------------------------- explain


def _item_media(item: dict, num_frames: int):
    """(first image or None, sampled frames) of an item record, loaded as the Embedder loads them."""
    from .data.media import load_image, load_video

    images = item.get("images") or []
    video = item.get("video") or {}
    first = load_image(images[0]) if images else None
    frames = []
    if video.get("frames") or video.get("path"):
        frames = load_video(video.get("frames") or video["path"], num_frames=max(1, num_frames))
    return first, frames


def _shown(image: Any, longest: int) -> tuple[Any, float]:
    """The image at display size (small images enlarged, pixels kept sharp) and the scale applied."""
    from PIL import Image

    scale = longest / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC
    return image.resize(size, resample), scale


def _draw_boxes(image: Any, boxes: list, longest: int = 480) -> Any:
    """The image at display size with each crop box outlined in red and numbered."""
    from PIL import ImageDraw

    image, scale = _shown(image, longest)
    draw = ImageDraw.Draw(image)
    for number, box in enumerate(boxes, 1):
        x1, y1, x2, y2 = (round(v * scale) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=(255, 40, 40), width=3)
        draw.rectangle((x1, y1, x1 + 12, y1 + 13), fill=(255, 40, 40))
        draw.text((x1 + 3, y1 + 1), str(number), fill=(255, 255, 255))
    return image


def _contact_sheet(frames: list, keyframes: list[int], boxes: list) -> Any:
    """Frames side by side (8 a row); keyframes framed in red and labelled, boxes drawn on the first frame."""
    from PIL import Image, ImageDraw

    height = 120
    thumbs = []
    for i, frame in enumerate(frames):
        thumb = _draw_boxes(frame, boxes, longest=max(frame.size)) if i == 0 and boxes else frame
        thumbs.append(thumb.resize((max(1, round(thumb.width * height / thumb.height)), height)))
    per_row = 8
    rows = [thumbs[i : i + per_row] for i in range(0, len(thumbs), per_row)]
    pad = 8
    width = max(sum(t.width + pad for t in row) for row in rows) + pad
    sheet = Image.new("RGB", (width, len(rows) * (height + pad + 14) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        x, y = pad, pad + r * (height + pad + 14)
        for c, thumb in enumerate(row):
            index = r * per_row + c
            sheet.paste(thumb, (x, y))
            key = index in keyframes
            outline, line = ((255, 40, 40), 4) if key else ((180, 180, 180), 1)
            draw.rectangle(
                (x - line, y - line, x + thumb.width + line - 1, y + height + line - 1),
                outline=outline,
                width=line,
            )
            label = f"frame {index + 1}" + (" (keyframe)" if key else "")
            draw.text((x, y + height + 3), label, fill=(200, 0, 0) if key else (0, 0, 0))
            x += thumb.width + pad
    return sheet


def explain_picture(item: dict, evidence: dict, num_frames: int) -> Any:
    """The picture of one item with its evidence drawn: crop boxes on its first image (or frame) and, for a
    video, its sampled frames with the keyframes marked. None for a text-only item or unreadable media."""
    try:
        first, frames = _item_media(item, evidence.get("num_frames") or num_frames)
    except (MediaError, OSError, ValueError) as exc:
        log.warning("explain: media of %r not shown (%s)", item.get("id"), exc)
        return None
    boxes = evidence.get("crop_boxes") or []
    if frames and first is None:
        return _contact_sheet(frames, evidence.get("keyframes") or [], boxes)
    if first is not None:
        return _draw_boxes(first, boxes)
    return None


def write_explain(
    folder: str | Path, query: dict, hits: list[dict], *, num_frames: int = 8, title: str = "embedrl search"
) -> Path:
    """A small HTML page (plus PNGs) showing the query and the hits with what each T-CoT pointed at. `query` is
    {"item": item JSON, "tcot", "evidence"}; hits as `Index.search` returns them. Returns the page's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def section(name: str, heading: str, entry: dict) -> str:
        item = entry.get("item") or {}
        evidence = entry.get("evidence") or {}
        picture = explain_picture(item, evidence, num_frames)
        image_html = ""
        if picture is not None:
            with atomic_open(folder / f"{name}.png", "wb") as handle:
                picture.save(handle, format="PNG")
            image_html = f'<img src="{name}.png" alt="{html.escape(heading)}">'
        text = " ".join(p for p in (item.get("instruction"), item.get("text")) if p)
        rows = [("text", text or "-"), ("evidence", describe_evidence(evidence))]
        if evidence.get("notes"):
            rows.append(("notes", "; ".join(evidence["notes"])))
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        tcot = entry.get("tcot")
        tcot_html = (
            f"<details><summary>T-CoT</summary><pre>{html.escape(tcot)}</pre></details>"
            if tcot
            else "<p class=muted>no T-CoT</p>"
        )
        return (
            f'<section id="{name}"><h2>{html.escape(heading)}</h2>{image_html}<table>{table}</table>'
            f"{tcot_html}</section>"
        )

    parts = [section("query", "Query", query)]
    for hit in hits:
        parts.append(
            section(f"hit-{hit['rank']:02d}", f"#{hit['rank']} {hit['id']} (score {hit['score']:.4f})", hit)
        )
    listing = "".join(
        f'<li><a href="#hit-{h["rank"]:02d}">{html.escape(str(h["id"]))}</a> {h["score"]:.4f}</li>'
        for h in hits
    )
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:980px;margin:1em auto}section{border-top:1px solid #ccc;"
        "padding:.5em 0}img{max-width:100%;display:block;margin:.4em 0}th{text-align:left;padding-right:1em;"
        "vertical-align:top}pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em}.muted{color:#888}"
        f"</style></head><body><h1>{html.escape(title)}</h1><p>Red boxes: the crops the T-CoT asked for (pixels "
        "of the first image or frame); red frames: keyframes.</p>"
        f"<ol>{listing}</ol>{''.join(parts)}</body></html>\n"
    )
    page_path = folder / "index.html"
    with atomic_open(page_path, "w") as handle:
        handle.write(page)
    return page_path


def format_table(query: dict, hits: list[dict]) -> str:
    """Hits as an aligned text table, with the query's own evidence on top."""
    lines = [f"query evidence: {describe_evidence(query.get('evidence') or {})}"]
    width = max([len(str(h["id"])) for h in hits] + [2])
    lines.append(f"{'rank':>4}  {'score':>7}  {'id':<{width}}  evidence")
    for hit in hits:
        lines.append(
            f"{hit['rank']:>4}  {hit['score']:>7.4f}  {str(hit['id']):<{width}}  "
            f"{describe_evidence(hit.get('evidence') or {})}"
        )
    return "\n".join(lines)
