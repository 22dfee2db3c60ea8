"""Converters from the upstream MMEB-V2 video layouts into task folders (docs/task-format.md): the 18 video
tasks, each read as its official loader (VLM2Vec's `src/data/eval_dataset/*`) reads it, with the frame
folders of the MMEB-V2 release. Frames are the `.jpg`/`.jpeg`/`.png` files of a folder in natural name order,
sampled with `linspace` (all of them when there are fewer); only the sampled frames are placed in the task.

- **Video retrieval tasks (5: MSR-VTT, MSVD, DiDeMo, VATEX, YouCook2)**: the rows of each task's hub dataset
  with the frame folders of the MMEB-V2 release (`video-tasks/frames/video_ret/<task>/<video>/`). Text-to-video,
  global pool of the tasks' videos.
- **Video classification tasks (5: K700, SmthSmthV2, HMDB51, UCF101, Breakfast)**: rows (`video_id`,
  `pos_text`, `neg_text[]`) with the frame folders of `video-tasks/frames/video_cls/<task>/`. Video queries over
  label candidates: the whole label list (given by the user) or, for SmthSmthV2, each row's own options.
- **Video QA tasks (5: Video-MME, NExTQA, EgoSchema, MVBench, ActivityNetQA)**: rows with the question, its
  options and answer, and the frame folders of `video-tasks/frames/video_qa/<task>/`. Local: each question
  ranked against its own options, built and named as each official loader does.
- **Video moment retrieval (3: QVHighlight, Charades-STA, MomentSeeker)**: rows with the query and its clips,
  with `video-tasks/frames/video_mret/<task>/`. Local: each query over its own positive and negative clips.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DataError, Problem
from .benchmarks import MMEB_V2, mmeb_task
from .items import Item, Query, VideoRef
from .media import natural_key
from .mmeb_v2 import task_name
from .taskdir import Qrel, Task, TaskMeta
from .upstream import (
    ConversionError,
    Record,
    dedupe_in_order,
    field_defect,
    finish,
    frames_folder,
    place_frames,
    place_media,
    require,
    safe_relative,
    start_conversion,
)

# ----------------------------------------------------------------------------------- video retrieval

VIDEO_CANDIDATE_INSTRUCTION = "Understand the content of the provided video."


@dataclass(frozen=True)
class VideoRetrievalLayout:
    """How one video-retrieval task's rows name their video and caption (VLM2Vec's loader of that task)."""

    hub: str
    instruction: str
    video_field: str  # the row field that names the video
    caption_field: str
    caption_is_list: bool = False  # the first caption is the query
    name_from_path: bool = False  # the video name is the file name of `video_field` without its suffix
    split: str = "test"  # the split the official evaluation reads

    def video_name(self, value: str) -> str:
        return PurePosixPath(value).stem if self.name_from_path else value


VIDEO_RETRIEVAL = {
    "MSR-VTT": VideoRetrievalLayout(
        "VLM2Vec/MSR-VTT", "Find a video that contains the following visual content:", "video_id", "caption"
    ),
    "MSVD": VideoRetrievalLayout(
        "VLM2Vec/MSVD",
        "Find the video snippet that corresponds to the given summary:",
        "video_id",
        "caption",
        caption_is_list=True,
    ),
    "DiDeMo": VideoRetrievalLayout(
        "VLM2Vec/DiDeMo",
        "Find a video that includes the following described scenes:",
        "video",
        "caption",
        name_from_path=True,
    ),
    "VATEX": VideoRetrievalLayout(
        "VLM2Vec/VATEX",
        "Select a video that fits the description provided:",
        "videoID",
        "enCap",
        caption_is_list=True,
    ),
    "YouCook2": VideoRetrievalLayout(
        "lmms-lab/YouCook2",
        "Find a video that demonstrates the following action while making a recipe:",
        "id",
        "sentence",
        split="val",
    ),
}


def convert_video_retrieval_task(
    records: str | Path | Iterable[Record],
    task: str,
    frames: str | Path,
    out_dir: str | Path,
    *,
    num_frames: int = 8,
    split: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `OUT/<task>/` from the rows of one MMEB-V2 video-retrieval task and its frame folders
    (`frames/<video name>/`, e.g. `video-tasks/frames/video_ret/MSR-VTT`). Each row is a caption query whose
    positive is its own video; the pool holds every video once."""
    name = task_name(task, "video")
    layout = VIDEO_RETRIEVAL.get(name)
    if layout is None:
        raise ConversionError(
            f"{name}: not a video retrieval task ({', '.join(VIDEO_RETRIEVAL)}); the video "
            "classification, QA and moment-retrieval tasks have their own converters"
        )
    frame_root = frames_folder(frames, num_frames)
    spec = mmeb_task(name)
    split = split or layout.split
    problems: list[Problem] = []
    run = start_conversion(
        records, out_dir, name, overwrite, problems, split=split, media_sources=[frame_root]
    )

    queries: list[Query] = []
    videos: dict[str, Item | None] = {}
    qrels: list[Qrel] = []
    for position, record in enumerate(run.rows):
        qid = f"q{position:05d}"
        value = require(record, layout.video_field, (str, int), problems, qid)
        caption = require(
            record, layout.caption_field, list if layout.caption_is_list else str, problems, qid
        )
        if value is None or caption is None:
            continue
        if layout.caption_is_list:
            if not caption or not isinstance(caption[0], str):
                problems.append(
                    record.problem(
                        "must be a list that starts with a caption string", layout.caption_field, qid
                    )
                )
                continue
            caption = caption[0]
        if not caption.strip():
            problems.append(record.problem("an empty caption", layout.caption_field, qid))
            continue
        video = layout.video_name(str(value))
        if video not in videos:
            ref = _sampled_video(
                record, layout.video_field, video, frame_root, run.building, num_frames, problems, qid
            )
            videos[video] = Item(id=video, video=ref) if ref is not None else None
        if videos[video] is None:
            continue
        queries.append(Query(id=qid, text=caption, meta={"upstream_row": record.row, "video": video}))
        qrels.append(Qrel(qid, video, 1))
    if problems:
        raise DataError(problems)
    if not queries:
        raise ConversionError(f"{name}: the source holds no usable rows")
    meta = TaskMeta(
        benchmark=MMEB_V2,
        task=name,
        modality="video",
        meta_task=spec.meta_task,
        eval_type=spec.eval_type,
        primary_metric=spec.main_metric,
        query_instruction=layout.instruction,
        candidate_instruction=VIDEO_CANDIDATE_INSTRUCTION,
        num_frames=num_frames,
        source={
            "hf": layout.hub,
            "split": run.split,
            "revision": revision,
            "converter": f"{__name__}.convert_video_retrieval_task",
        },
    )
    pool = [item for item in videos.values() if item is not None]
    return finish(Task(meta, queries, pool, qrels), run.building, run.final)


def _plain_name(name: str) -> bool:
    """A name usable as one folder name: not empty, no separators, not `.` or `..`."""
    return (
        bool(name) and "/" not in name and "\\" not in name and "\0" not in name and name not in (".", "..")
    )


def _sampled_video(
    record: Record,
    field: str,
    video: str,
    frame_root: Path,
    building: Path,
    num_frames: int,
    problems: list[Problem],
    qid: str,
) -> VideoRef | None:
    """A video of the MMEB-V2 frame release (`video`: its folder below `frame_root`, one name or, for MVBench,
    `subset/name`): its sampled frames placed under media/frames/<video>/."""
    if not all(_plain_name(part) for part in video.split("/")):
        problems.append(record.problem(f"{video!r} is not a usable video name", field, qid))
        return None
    placed = place_frames(
        record,
        field,
        frame_root,
        PurePosixPath(video),
        building,
        PurePosixPath("media", "frames", *video.split("/")),
        num_frames,
        problems,
        qid,
        sort_key=natural_key,
    )
    if placed is None:
        return None
    return VideoRef(id=video, frames=placed)


# ------------------------------------------------------------------------------- video classification

# The query instruction of each task in the official harness (video_classification_utils.DATASET_INSTRUCTION).
VIDEO_CLASSIFICATION_INSTRUCTIONS = {
    "K700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}
VIDEO_CLASSIFICATION_SOURCES = {
    "K700": "VLM2Vec/Kinetics-700",
    "SmthSmthV2": "VLM2Vec/SmthSmthV2",
    "HMDB51": "VLM2Vec/HMDB51",
    "UCF101": "VLM2Vec/UCF101",
    "Breakfast": "VLM2Vec/Breakfast",
}
# The official run scores only the first rows of some tasks (`num_sample_per_subset` in its video.yaml).
VIDEO_CLASSIFICATION_ROWS = {"SmthSmthV2": 1000}
# Sizes of the official label lists of the globally ranked tasks (for messages).
VIDEO_CLASSIFICATION_LABELS = {"K700": 700, "HMDB51": 51, "UCF101": 101, "Breakfast": 10}


def check_labels(labels: Iterable[object], where: str = "the label list") -> list[str]:
    """A label list as the pool: non-empty strings, each once, in the given order."""
    labels = list(labels)
    if not labels or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ConversionError(f"{where}: expected a non-empty list of non-empty label strings")
    return dedupe_in_order(labels)


def read_labels(path: str | Path) -> list[str]:
    """A label list: a JSON list of strings, or a text file with one label per line (blank lines skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read the label list ({exc})") from None
    if path.suffix == ".json":
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{path}: not JSON ({exc})") from None
        if not isinstance(labels, list):
            raise ConversionError(f"{path}: expected a JSON list of label strings")
    else:
        labels = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    return check_labels(labels, str(path))


def convert_video_classification_task(
    records: str | Path | Iterable[Record],
    task: str,
    frames: str | Path,
    out_dir: str | Path,
    *,
    labels: Iterable[str] | None = None,
    labels_from_rows: bool = False,
    num_frames: int = 8,
    max_rows: int | None = None,
    split: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `OUT/<task>/` from the rows of one MMEB-V2 video classification task (`video_id`, `pos_text`, and
    `neg_text[]` for SmthSmthV2) and its frame folders (`frames/<video_id>/`). The query is the video; the
    candidates are label texts.

    K700, HMDB51, UCF101 and Breakfast rank every query against the task's whole label list: give it as
    `labels`, in the official order. `labels_from_rows` uses the labels the rows use instead, a smaller pool
    when a class has no test video, so scores come out higher than the official ones (noted in
    `version_note`); one of the two is required. SmthSmthV2 ranks each video against its own `neg_text` list,
    over the first 1,000 rows as the official run (`max_rows` overrides)."""
    name = task_name(task, "video")
    if name not in VIDEO_CLASSIFICATION_INSTRUCTIONS:
        raise ConversionError(
            f"{name} is not a video classification task ({', '.join(VIDEO_CLASSIFICATION_INSTRUCTIONS)})"
        )
    frame_root = frames_folder(frames, num_frames)
    spec = mmeb_task(name)
    split = split or "test"
    local = spec.eval_type == "local"
    if local and (labels is not None or labels_from_rows):
        raise ConversionError(
            f"{name} ranks each video against its own neg_text options: --labels and "
            "--labels-from-rows do not apply"
        )
    label_list = check_labels(labels, "labels") if labels is not None else None
    if not local and label_list is None and not labels_from_rows:
        raise ConversionError(
            f"{name} ranks every video against its full label list ({VIDEO_CLASSIFICATION_LABELS[name]} labels): give "
            "it with --labels FILE, in the official order (VLM2Vec's "
            "video_classification_utils.py), or pass --labels-from-rows to use only the labels "
            "the rows use (a smaller pool: higher scores than the official ones)"
        )
    known = set(label_list or ())
    limit = max_rows if max_rows is not None else VIDEO_CLASSIFICATION_ROWS.get(name)
    problems: list[Problem] = []
    run = start_conversion(
        records, out_dir, name, overwrite, problems, split=split, media_sources=[frame_root]
    )

    queries: list[Query] = []
    qrels: list[Qrel] = []
    seen_labels: dict[str, None] = {}
    for position, record in enumerate(run.rows):
        if limit is not None and position >= limit:
            break
        qid = f"q{position:05d}"
        video = require(record, "video_id", (str, int), problems, qid)
        label = require(record, "pos_text", str, problems, qid)
        options = require(record, "neg_text", list, problems, qid) if local else None
        if video is None or label is None or (local and options is None):
            continue
        if local:
            if not options or not all(isinstance(o, str) and o for o in options):
                problems.append(record.problem("must be a non-empty list of label strings", "neg_text", qid))
                continue
            options = dedupe_in_order(options)
            if label not in options:
                problems.append(
                    record.problem(f"{label!r} is not among the row's neg_text options", "pos_text", qid)
                )
                continue
        elif label_list is not None and label not in known:
            problems.append(record.problem(f"{label!r} is not in the label list", "pos_text", qid))
            continue
        ref = _sampled_video(
            record, "video_id", str(video), frame_root, run.building, num_frames, problems, qid
        )
        if ref is None:
            continue
        for text in options or [label]:
            seen_labels.setdefault(text)
        queries.append(Query(id=qid, video=ref, candidate_ids=options, meta={"upstream_row": record.row}))
        qrels.append(Qrel(qid, label, 1))
    if problems:
        raise DataError(problems)
    if not queries:
        raise ConversionError(f"{name}: the source holds no usable rows")
    pool = label_list if label_list is not None and not local else list(seen_labels)
    note = None
    if not local and label_list is None:
        note = (
            f"pool: the {len(pool)} labels the rows use, not the official full label list (give it with "
            "--labels)"
        )
    meta = TaskMeta(
        benchmark=MMEB_V2,
        task=name,
        modality="video",
        meta_task=spec.meta_task,
        eval_type=spec.eval_type,
        primary_metric=spec.main_metric,
        query_instruction=VIDEO_CLASSIFICATION_INSTRUCTIONS[name],
        num_frames=num_frames,
        source={
            "hf": VIDEO_CLASSIFICATION_SOURCES[name],
            "split": run.split,
            "revision": revision,
            "rows": limit,
            "converter": f"{__name__}.convert_video_classification_task",
        },
        version_note=note,
    )
    candidates = [Item(id=text, text=text) for text in pool]
    return finish(Task(meta, queries, candidates, qrels), run.building, run.final)


# ------------------------------------------------------------------------------------------- video QA

VIDEO_QA_PROMPT = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question:"
)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class _RowDefect(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class QARow:
    """One multiple-choice question as the official loader builds it."""

    video: str  # frame folder below the task's frames folder
    video_field: str  # the row field that names the video (for messages)
    question: str  # the query text after the prompt
    names: list[str]  # candidate names: what is shared and what a hit is matched on
    texts: list[str]  # candidate texts: what is embedded
    answer: str  # the positive's name


def _get(data: dict, key: str, kinds: type | tuple[type, ...]) -> Any:
    defect = field_defect(data, key, kinds)
    if defect is not None:
        raise _RowDefect(key, defect)
    return data[key]


def _strings(data: dict, key: str) -> list[str]:
    values = _get(data, key, list)
    if not values or not all(isinstance(v, str) for v in values):
        raise _RowDefect(key, "must be a non-empty list of strings")
    return values


def _lettered(options: list[str]) -> list[str]:
    return [f"({_LETTERS[i]}) {option}" for i, option in enumerate(options)]


def _strip_letter(option: str) -> str:
    """'A. red car' -> 'red car' (the official loaders' `o[o.find('. '):].strip('. ')`)."""
    return option[option.find(". ") :].strip(". ")


def _video_mme(data: dict) -> QARow:
    options = _strings(data, "options")
    answer = _get(data, "answer", str)
    if len(answer) != 1 or answer not in _LETTERS[: len(options)]:
        raise _RowDefect("answer", f"{answer!r} is not the letter of one of the {len(options)} options")
    return QARow(
        str(_get(data, "videoID", (str, int))),
        "videoID",
        _get(data, "question", str) + "\n" + "\n".join(options),
        options,
        [_strip_letter(o) for o in options],
        options[_LETTERS.index(answer)],
    )


def _nextqa(data: dict) -> QARow:
    options = [_get(data, f"a{i}", str) for i in range(5)]
    answer = _get(data, "answer", int)
    if not 0 <= answer < len(options):
        raise _RowDefect("answer", f"{answer} is not an option index (0-4)")
    question = _get(data, "question", str) + "\nOptions:\n" + "\n".join(_lettered(options))
    return QARow(str(_get(data, "video", (str, int))), "video", question, options, options, options[answer])


def _egoschema(data: dict) -> QARow:
    options = _strings(data, "option")
    try:
        answer = int(_get(data, "answer", (str, int)))
    except ValueError:
        raise _RowDefect("answer", "must be an option index") from None
    if not 0 <= answer < len(options):
        raise _RowDefect("answer", f"{answer} is not an option index")
    # the official query joins the question and the options without a separator
    return QARow(
        str(_get(data, "video_idx", (str, int))),
        "video_idx",
        _get(data, "question", str) + " ".join(options),
        options,
        [_strip_letter(o) for o in options],
        options[answer],
    )


# MVBench's 20 subsets (the official loader's `subset_meta`); the hub keeps each as its own folder or file.
MVBENCH_SUBSETS = frozenset(
    {
        "episodic_reasoning",
        "action_sequence",
        "action_prediction",
        "action_antonym",
        "fine_grained_action",
        "unexpected_action",
        "object_existence",
        "object_interaction",
        "object_shuffle",
        "moving_direction",
        "action_localization",
        "scene_transition",
        "action_count",
        "moving_count",
        "moving_attribute",
        "state_change",
        "fine_grained_pose",
        "character_order",
        "egocentric_navigation",
        "counterfactual_inference",
    }
)


def _mvbench_subset(data: dict, file: str) -> str:
    """The row's `subset`, else the nearest folder or file named after one (upstream adds the column itself when
    it loads one hub config per subset)."""
    given = data.get("subset")
    if isinstance(given, str) and given:
        return given
    for part in reversed(Path(file).with_suffix("").parts):
        if part in MVBENCH_SUBSETS:
            return part
    raise _RowDefect("subset", "missing, and no folder or file of the row is named after an MVBench subset")


def _mvbench(data: dict, file: str) -> QARow:
    subset = _mvbench_subset(data, file)
    candidates = _strings(data, "candidates")
    answer = _get(data, "answer", str)
    if answer not in candidates:
        raise _RowDefect("answer", f"{answer!r} is not among the candidates")
    options = _lettered(candidates)  # upstream embeds and names the lettered options
    question = _get(data, "question", str) + "\nOptions:\n" + "\n".join(options)
    last = len(candidates) - 1 - candidates[::-1].index(answer)  # qa_template keeps the last match
    return QARow(f"{subset}/{_get(data, 'video', str)}", "video", question, options, options, options[last])


def _activitynetqa(data: dict) -> QARow:
    answer = _get(data, "answer", str)
    if answer not in ("yes", "no"):
        raise _RowDefect(
            "answer", f"{answer!r} is not yes or no (the official set keeps yes/no questions only)"
        )
    return QARow(
        f"v_{_get(data, 'video_name', (str, int))}",
        "video_name",
        _get(data, "question", str) + "? (A) yes; (B) no.",
        ["yes", "no"],
        ["yes", "no"],
        answer,
    )


# task -> (hub dataset, its config, the split the official run reads, row parser)
VIDEO_QA = {
    "Video-MME": ("VLM2Vec/Video-MME", None, "test", lambda data, file: _video_mme(data)),
    "NExTQA": ("VLM2Vec/NExTQA", "MC", "test", lambda data, file: _nextqa(data)),
    "EgoSchema": ("VLM2Vec/EgoSchema", "Subset", "test", lambda data, file: _egoschema(data)),
    "MVBench": ("VLM2Vec/MVBench", None, "train", _mvbench),
    "ActivityNetQA": ("VLM2Vec/ActivityNetQA", None, "test", lambda data, file: _activitynetqa(data)),
}


def convert_video_qa_task(
    records: str | Path | Iterable[Record],
    task: str,
    frames: str | Path,
    out_dir: str | Path,
    *,
    num_frames: int = 8,
    split: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `OUT/<task>/` from the rows of one MMEB-V2 video QA task and its frame folders. Each question is a
    local query (the video, the shared QA prompt, the question with its options) ranked against its own
    options, built and named as the official loader of the task does (Video-MME and EgoSchema embed the options
    without their "A. " prefix but name them with it; MVBench embeds and names "(A) ..." options)."""
    name = task_name(task, "video")
    if name not in VIDEO_QA:
        raise ConversionError(f"{name} is not a video QA task ({', '.join(VIDEO_QA)})")
    frame_root = frames_folder(frames, num_frames)
    hub, config, default_split, parse_row = VIDEO_QA[name]
    split = split or default_split
    spec = mmeb_task(name)
    parts = name == "MVBench"  # one folder per subset
    problems: list[Problem] = []
    run = start_conversion(
        records,
        out_dir,
        name,
        overwrite,
        problems,
        split=split,
        media_sources=[frame_root],
        several_folders=parts,
    )

    queries: list[Query] = []
    candidates: dict[str, Item] = {}
    qrels: list[Qrel] = []
    videos: dict[str, VideoRef | None] = {}
    for position, record in enumerate(run.rows):
        qid = f"q{position:05d}"
        try:
            row = parse_row(record.data, record.file)
        except _RowDefect as defect:
            problems.append(record.problem(str(defect), defect.field, qid))
            continue
        if row.video not in videos:
            videos[row.video] = _sampled_video(
                record, row.video_field, row.video, frame_root, run.building, num_frames, problems, qid
            )
        if videos[row.video] is None:
            continue
        for cid, text in zip(row.names, row.texts):
            candidates.setdefault(
                cid, Item(id=cid, text=text)
            )  # the first text of a name is the one embedded
        queries.append(
            Query(
                id=qid,
                text=row.question,
                video=videos[row.video],
                candidate_ids=dedupe_in_order(row.names),
                meta={"upstream_row": record.row},
            )
        )
        qrels.append(Qrel(qid, row.answer, 1))
    if problems:
        raise DataError(problems)
    if not queries:
        raise ConversionError(f"{name}: the source holds no usable rows")
    meta = TaskMeta(
        benchmark=MMEB_V2,
        task=name,
        modality="video",
        meta_task=spec.meta_task,
        eval_type=spec.eval_type,
        primary_metric=spec.main_metric,
        query_instruction=VIDEO_QA_PROMPT,
        num_frames=num_frames,
        source={
            "hf": hub,
            "config": config,
            "split": run.split,
            "revision": revision,
            "converter": f"{__name__}.convert_video_qa_task",
        },
    )
    return finish(Task(meta, queries, list(candidates.values()), qrels), run.building, run.final)


# ------------------------------------------------------------------------------- moment retrieval

MOMENT_INSTRUCTION = "Find the clip that corresponds to the described scene in the given video:"
MOMENTSEEKER_INSTRUCTIONS = {
    "text": "Find the clip that corresponds to the given text:",
    "image": "Select the video clip that aligns with the given text and image:",
    "video": "Find the clip that corresponds to the given sentence and video segment:",
}
MOMENTSEEKER_CANDIDATE_INSTRUCTION = "Understand the content of the provided video clip."
MOMENT_SOURCES = {
    "QVHighlight": "VLM2Vec/QVHighlight",
    "Charades-STA": "VLM2Vec/Charades-STA",
    "MomentSeeker": "VLM2Vec/MomentSeeker",
}


def convert_moment_retrieval_task(
    records: str | Path | Iterable[Record],
    task: str,
    frames: str | Path,
    out_dir: str | Path,
    *,
    num_frames: int = 8,
    split: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `OUT/<task>/` from the rows of one MMEB-V2 moment-retrieval task and its frame folders. Local:
    each query is ranked against its own clips; every positive clip is relevant.

    - QVHighlight, Charades-STA: rows with `query` and `video_path`; `frames/<video>/query/` holds the query
      video's frames and every other sub-folder of `frames/<video>/` is a candidate clip, positive when its name
      starts with "positive" (clips in name order);
    - MomentSeeker: rows with `query`, `input_frames` (a `.mp4` clip: a video query from
      `frames/video_frames/<clip>/`; a `.jpg`: an image query `frames/query_<name>`; else text only),
      `positive_frames` and `negative_frames` (lists of `{"output_path"}`, clips at
      `frames/video_frames/<path with / as _, without .mp4>/`), each query type with its own instruction."""
    name = task_name(task, "video")
    if name not in MOMENT_SOURCES:
        raise ConversionError(f"{name} is not a moment-retrieval task ({', '.join(MOMENT_SOURCES)})")
    frame_root = frames_folder(frames, num_frames)
    spec = mmeb_task(name)
    split = split or "test"
    seeker = name == "MomentSeeker"
    problems: list[Problem] = []
    run = start_conversion(
        records, out_dir, name, overwrite, problems, split=split, media_sources=[frame_root]
    )
    clip_instruction = MOMENTSEEKER_CANDIDATE_INSTRUCTION if seeker else VIDEO_CANDIDATE_INSTRUCTION

    queries: list[Query] = []
    clips: dict[str, Item | None] = {}
    qrels: list[Qrel] = []
    for position, record in enumerate(run.rows):
        qid = f"q{position:05d}"
        before = len(problems)
        text = require(record, "query", str, problems, qid)
        parsed = (_seeker_row if seeker else _highlight_row)(record, frame_root, problems, qid)
        if text is None or parsed is None or len(problems) > before:
            continue
        kind, query_media, positives, negatives = parsed
        query = Query(
            id=qid,
            text=text,
            instruction=MOMENTSEEKER_INSTRUCTIONS[kind] if seeker else None,
            candidate_ids=dedupe_in_order(positives + negatives),
            meta={"upstream_row": record.row},
        )
        if kind == "video":
            query.video = _sampled_video(
                record,
                "input_frames" if seeker else "video_path",
                query_media,
                frame_root,
                run.building,
                num_frames,
                problems,
                qid,
            )
        elif kind == "image":
            rel = safe_relative(query_media)
            placed = (
                place_media(
                    record,
                    "input_frames",
                    frame_root,
                    query_media,
                    run.building,
                    PurePosixPath("media", "images", *rel.parts),
                    problems,
                    qid,
                )
                if rel
                else None
            )
            if rel is None:
                problems.append(
                    record.problem(f"{query_media!r} must be a relative path", "input_frames", qid)
                )
            query.images = [placed] if placed else []
        if kind == "text" and not text.strip():  # upstream would embed its instruction alone
            problems.append(record.problem("an empty text-only query", "query", qid))
            continue
        for clip in query.candidate_ids:
            if clip not in clips:
                field = (
                    ("positive_frames" if clip in positives else "negative_frames")
                    if seeker
                    else "video_path"
                )
                ref = _sampled_video(record, field, clip, frame_root, run.building, num_frames, problems, qid)
                clips[clip] = (
                    Item(id=clip, instruction=clip_instruction, video=ref) if ref is not None else None
                )
        if len(problems) > before or any(clips[c] is None for c in query.candidate_ids):
            continue
        queries.append(query)
        qrels.extend(Qrel(qid, clip, 1) for clip in dedupe_in_order(positives))
    if problems:
        raise DataError(problems)
    if not queries:
        raise ConversionError(f"{name}: the source holds no usable rows")
    meta = TaskMeta(
        benchmark=MMEB_V2,
        task=name,
        modality="video",
        meta_task=spec.meta_task,
        eval_type=spec.eval_type,
        primary_metric=spec.main_metric,
        query_instruction=None if seeker else MOMENT_INSTRUCTION,
        num_frames=num_frames,
        source={
            "hf": MOMENT_SOURCES[name],
            "split": run.split,
            "revision": revision,
            "converter": f"{__name__}.convert_moment_retrieval_task",
        },
    )
    pool = [item for item in clips.values() if item is not None]
    return finish(Task(meta, queries, pool, qrels), run.building, run.final)


def _highlight_row(record: Record, frame_root: Path, problems: list[Problem], qid: str):
    """QVHighlight / Charades-STA: (kind, query frames folder, positive clips, negative clips), folders relative
    to the frames folder."""
    path = require(record, "video_path", str, problems, qid)
    if path is None:
        return None
    video = PurePosixPath(path.replace("\\", "/")).stem
    if not _plain_name(video):
        problems.append(record.problem(f"{path!r} does not name a video", "video_path", qid))
        return None
    try:
        clips = sorted(p.name for p in (frame_root / video).iterdir() if p.is_dir() and p.name != "query")
    except OSError as exc:
        problems.append(
            record.problem(
                f"{frame_root / video}: no frame folder ({exc.strerror or exc})", "video_path", qid
            )
        )
        return None
    positives = [f"{video}/{c}" for c in clips if c.startswith("positive")]
    if not positives:
        problems.append(
            record.problem(f"{frame_root / video} has no clip folder named positive*", "video_path", qid)
        )
        return None
    negatives = [f"{video}/{c}" for c in clips if not c.startswith("positive")]
    return "video", f"{video}/query", positives, negatives


def _seeker_clip(entry: object) -> str | None:
    path = entry.get("output_path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or not path:
        return None
    return "video_frames/" + path.replace("/", "_").split(".mp4")[0]


def _seeker_row(record: Record, frame_root: Path, problems: list[Problem], qid: str):
    """MomentSeeker: (kind, query media, positive clips, negative clips), paths relative to the frames folder."""
    given = require(record, "input_frames", str, problems, qid, optional=True) or ""
    sides = {}
    for field in ("positive_frames", "negative_frames"):
        entries = require(record, field, list, problems, qid)
        if entries is None:
            return None
        sides[field] = [_seeker_clip(e) for e in entries]
        if None in sides[field]:
            problems.append(record.problem('every entry must be {"output_path": "<clip>.mp4"}', field, qid))
            return None
    if not sides["positive_frames"]:
        problems.append(record.problem("no positive clip", "positive_frames", qid))
        return None
    if given.endswith(".mp4"):
        kind, media = "video", "video_frames/" + given.split(".mp4")[0].replace("/", "_")
    elif given.endswith(".jpg"):
        kind, media = "image", f"query_{given}"
    else:
        kind, media = "text", None
    return kind, media, sides["positive_frames"], sides["negative_frames"]


# ------------------------------------------------------------------------------------------- any task


def convert_video_task(
    records: str | Path | Iterable[Record],
    task: str,
    frames: str | Path,
    out_dir: str | Path,
    *,
    labels: Iterable[str] | None = None,
    labels_from_rows: bool = False,
    max_rows: int | None = None,
    split: str | None = None,
    **common: Any,
) -> Path:
    """Any of the 18 video tasks, by its family. `labels`, `labels_from_rows` and `max_rows` are for the
    classification tasks only; `common`: num_frames, revision, overwrite."""
    name = task_name(task, "video")
    if name in VIDEO_CLASSIFICATION_INSTRUCTIONS:
        return convert_video_classification_task(
            records,
            name,
            frames,
            out_dir,
            labels=labels,
            labels_from_rows=labels_from_rows,
            max_rows=max_rows,
            split=split,
            **common,
        )
    if labels is not None or labels_from_rows or max_rows is not None:
        raise ConversionError(
            "--labels, --labels-from-rows and --max-rows apply to the video classification tasks only"
        )
    if name in VIDEO_QA:
        return convert_video_qa_task(records, name, frames, out_dir, split=split, **common)
    if name in MOMENT_SOURCES:
        return convert_moment_retrieval_task(records, name, frames, out_dir, split=split, **common)
    return convert_video_retrieval_task(records, name, frames, out_dir, split=split, **common)
