"""Converter from the UVRB layout (HF `Alibaba-NLP/UVRB`, one extracted folder per dataset) into task folders
(the format is docs/task-format.md).

```
<dataset root>/
  jsonl/queries.jsonl     {"id", "text"?, "image"?, "video"?}   (also accepted directly under the root)
  jsonl/corpus.jsonl      {"id", "video"}
  jsonl/instances.jsonl   {"qid", "pos": [corpus ids]}          lines with the same qid are merged
  videos_frames/<video stem>/*.jpg|jpeg|png                     "sub/x.mp4" -> videos_frames/sub/x/
  images/<path>                                                 image queries (MS-TI, MSRVTT-I2V)
```

Each video is sampled to `num_frames` (8, the benchmark's setting) over its frames in file-name order, and only
those frames are placed in the task folder. The query prompt is the dataset's prompt from GVE Table 5. Every
corpus is one global pool: whether MS-TI / MS-TV rank per-query pools upstream could not be checked without
the real data, so their scores may differ from the published ones until that is verified on it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import DataError, Problem
from .benchmarks import UVRB, UVRB_DATASETS, resolve_task, uvrb_dataset
from .items import Item, Query, VideoRef
from .taskdir import Qrel, Task, TaskMeta
from .upstream import (
    ConversionError,
    Record,
    finish,
    identifier,
    partial_folder,
    place_frames,
    place_media,
    read_records,
    require,
    safe_relative,
)

# Embed-RL's UVRB loader cuts "{prompt} {text}" to this many characters (`max_text_length`).
MAX_TEXT_CHARS = 8192

# Query prompts (GVE Table 5), by registry name.
UVRB_QUERY_PROMPTS = {
    "MSRVTT": "Find the clip that corresponds to the described scene in the given video.",
    "DiDeMo": "Find a video that includes the following described scenes.",
    "CRB-G": "Find the video according to the general text description.",
    "CRB-S": "Find the video according to the spatial description.",
    "VDC-O": "Find the video according to the object description.",
    "CRB-T": "Find the video according to the temporal description.",
    "CMRB": "Find the video according to the camera motion description.",
    "DREAM-E": "Find the video according to the text description.",
    "LoVR-TH": "Find the video according to text description about video theme information.",
    "PEV-K": "Find the video according to the text description of a series of keywords.",
    "LoVR-V": "Find the long video according to the long text description.",
    "VDC-D": "Find the video according to the detailed text description.",
    "MS-TI": "Find the video clip that corresponds to the given text and the given image.",
    "MS-TV": "Find the video clip that corresponds to the given text and the given video.",
    "MSRVTT-I2V": "Find the video according to the image.",
    "LoVR-C2V": "Find the original long video according to the short video clip.",
}


def _dataset_name(name: str) -> str:
    resolved = resolve_task(UVRB, name)
    if resolved is None:
        raise ConversionError(
            f"{name!r} is not a UVRB dataset; expected one of: {', '.join(d.name for d in UVRB_DATASETS)}"
        )
    return resolved


def _split_file(root: Path, stem: str) -> Path:
    for candidate in (root / "jsonl" / f"{stem}.jsonl", root / f"{stem}.jsonl"):
        if candidate.is_file():
            return candidate
    raise ConversionError(f"{root}: no {stem}.jsonl (looked in {root / 'jsonl'} and {root})")


def convert_uvrb_dataset(
    root: str | Path,
    dataset: str,
    out_dir: str | Path,
    *,
    num_frames: int = 8,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `OUT/<dataset>/` from one extracted UVRB dataset folder. Every defect (a missing frame folder or
    image, an unknown id) is collected and raised together, naming file, line and field; media already placed
    stay in `OUT/<dataset>.partial/` for the rerun."""
    name = _dataset_name(dataset)
    spec = uvrb_dataset(name)
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(f"{root}: the dataset folder does not exist")
    if num_frames < 1:
        raise ConversionError(f"num_frames must be >= 1, got {num_frames}")
    files = {stem: _split_file(root, stem) for stem in ("queries", "corpus", "instances")}
    final, building = partial_folder(out_dir, name, overwrite, [root])
    problems: list[Problem] = []
    videos: dict[str, VideoRef | None] = {}

    def video_of(record: Record, record_id: str) -> VideoRef | None:
        value = record.data["video"]
        if value not in videos:
            videos[value] = _place_video(record, value, root, building, num_frames, problems, record_id)
        return videos[value]

    candidates: dict[str, Item] = {}
    for record in read_records(files["corpus"], problems):
        cid = identifier(record, "id", problems)
        video = require(record, "video", str, problems, cid)
        if cid is None or video is None:
            continue
        if cid in candidates:
            problems.append(record.problem("repeated corpus id", "id", cid))
            continue
        ref = video_of(record, cid)
        if ref is not None:
            candidates[cid] = Item(id=cid, video=ref)

    queries: dict[str, Query] = {}
    text_limit = MAX_TEXT_CHARS - len(UVRB_QUERY_PROMPTS[name]) - 1
    truncated = video_dropped = 0
    for record in read_records(files["queries"], problems):
        qid = identifier(record, "id", problems)
        if qid is None:
            continue
        if qid in queries:
            problems.append(record.problem("repeated query id", "id", qid))
            continue
        # Empty strings mean "absent", and an image query ignores a video, as Embed-RL's loader reads them.
        text = (require(record, "text", str, problems, qid, optional=True) or "").strip()
        image = require(record, "image", str, problems, qid, optional=True)
        has_video = bool(require(record, "video", str, problems, qid, optional=True)) and not image
        video_dropped += bool(image and record.data.get("video"))
        if not (text or image or has_video):
            problems.append(record.problem("a query needs text, an image or a video", "text", qid))
            continue
        if len(text) > text_limit:
            text, truncated = text[:text_limit], truncated + 1
        images = []
        if image:
            placed = _place_image(record, image, root, building, problems, qid)
            if placed is None:
                continue
            images = [placed]
        ref = video_of(record, qid) if has_video else None
        if has_video and ref is None:
            continue
        queries[qid] = Query(id=qid, text=text or None, images=images, video=ref)

    positives: dict[str, list[str]] = {}
    for record in read_records(files["instances"], problems):
        qid = identifier(record, "qid", problems)
        pos = require(record, "pos", list, problems, qid)
        if qid is None or pos is None:
            continue
        if qid not in queries:
            problems.append(record.problem(f"unknown query id {qid!r}", "qid", qid))
            continue
        for cid in map(str, pos):
            if cid not in candidates:
                problems.append(record.problem(f"unknown corpus id {cid!r}", "pos", qid))
            elif cid not in positives.setdefault(qid, []):
                positives[qid].append(cid)
    if problems:
        raise DataError(problems)
    if not queries or not candidates:
        raise ConversionError(f"{name}: {files['queries' if not queries else 'corpus']} holds no records")
    without = sum(1 for qid in queries if not positives.get(qid))
    notes = [
        f"{without} queries have no positive (they score 0)" if without else "",
        f"{truncated} query texts cut to {MAX_TEXT_CHARS} characters with the prompt, as upstream"
        if truncated
        else "",
        f"{video_dropped} queries with an image and a video keep the image only, as upstream"
        if video_dropped
        else "",
    ]
    meta = TaskMeta(
        benchmark=UVRB,
        task=name,
        modality="video",
        eval_type="global",
        primary_metric=spec.metric,
        k_list=[1, 5, 10, 50],
        query_instruction=UVRB_QUERY_PROMPTS[name],
        num_frames=num_frames,
        frame_sampling="linspace_int",
        source={
            "hf": "Alibaba-NLP/UVRB",
            "dataset": name,
            "revision": revision,
            "converter": f"{__name__}.convert_uvrb_dataset",
        },
        version_note="; ".join(n for n in notes if n) or None,
    )
    qrels = [Qrel(qid, cid, 1) for qid, cids in positives.items() for cid in cids]
    return finish(Task(meta, list(queries.values()), list(candidates.values()), qrels), building, final)


def frame_folder(video: str) -> PurePosixPath | None:
    """`videos_frames/`-relative folder of a video value: "x.mp4" -> "x", "sub/x.mp4" -> "sub/x"."""
    rel = safe_relative(video)
    return None if rel is None else rel.parent / PurePosixPath(rel.name).stem


def _place_video(
    record: Record,
    video: str,
    root: Path,
    building: Path,
    num_frames: int,
    problems: list[Problem],
    record_id: str,
) -> VideoRef | None:
    rel = frame_folder(video)
    if rel is None:
        problems.append(record.problem(f"{video!r} must be a relative path", "video", record_id))
        return None
    placed = place_frames(
        record,
        "video",
        root,
        PurePosixPath("videos_frames") / rel,
        building,
        PurePosixPath("media", "frames", *rel.parts),
        num_frames,
        problems,
        record_id,
    )
    return VideoRef(id=video, frames=placed) if placed is not None else None


def _place_image(
    record: Record, image: str, root: Path, building: Path, problems: list[Problem], record_id: str
) -> str | None:
    rel = safe_relative(image)
    if rel is None:
        problems.append(record.problem(f"{image!r} must be a relative path", "image", record_id))
        return None
    return place_media(
        record,
        "image",
        root,
        f"images/{rel.as_posix()}",
        building,
        PurePosixPath("media", "images", *rel.parts),
        problems,
        record_id,
    )
