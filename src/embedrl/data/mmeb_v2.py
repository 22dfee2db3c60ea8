"""Converters from the upstream MMEB-V2 layouts into task folders (the format is docs/task-format.md).

- **Image tasks (36)**: rows of `ziyjiang/MMEB_Test_Instruct` (config = task, split `test`; fields `qry_inst`,
  `qry_text`, `qry_img_path`, `tgt_inst`, `tgt_text[]`, `tgt_img_path[]`) or of the V1 `TIGER-Lab/MMEB-eval`
  (no `*_inst` fields: the instruction is inside the text), with images from the unpacked `image-tasks/` folder.
  Local tasks: each query keeps its own candidate list in upstream order, and element 0 is the positive.
  Candidates are built and named as each task's official loader does (`image_task_kind`), so identical
  candidates are embedded once, as in the official evaluation.
- **VisDoc tasks (24)**: BEIR-style `queries` / `corpus` / `qrels` splits (ViDoRe, VisRAG, ViDoSeek,
  MMLongBench). Global tasks with graded qrels (`score > 0` kept; a repeated pair keeps its highest score);
  corpus images are written from the inline bytes into `media/corpus/`.

The 18 video tasks are in `mmeb_v2_video`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..errors import DataError, Problem
from .benchmarks import MMEB_V2, mmeb_task, resolve_task
from .items import Item, Query
from .taskdir import Qrel, Task, TaskMeta
from .upstream import (
    ConversionError,
    Record,
    dedupe_in_order,
    finish,
    identifier,
    image_suffix,
    partial_folder,
    place_bytes,
    place_file,
    place_media,
    read_records,
    require,
    safe_relative,
    source_file,
    split_label,
    start_conversion,
)

IMAGE_TASKS_HF = "ziyjiang/MMEB_Test_Instruct"
VISDOC_QUERY_INSTRUCTION = "Find a document image that matches the given query:"
VISDOC_CANDIDATE_INSTRUCTION = "Understand the content of the provided document image."

# Hub datasets of the VisDoc tasks (BEIR layout), recorded in task.json as the source to pin.
VISDOC_SOURCES = {
    **{
        f"ViDoRe_{n}": f"vidore/{n}_test_subsampled_beir"
        for n in ("arxivqa", "docvqa", "infovqa", "tabfquad")
    },
    "ViDoRe_tatdqa": "vidore/tatdqa_test_beir",
    "ViDoRe_shiftproject": "vidore/shiftproject_test_beir",
    **{
        f"ViDoRe_syntheticDocQA_{n}": f"vidore/syntheticDocQA_{n}_test_beir"
        for n in ("artificial_intelligence", "energy", "government_reports", "healthcare_industry")
    },
    "ViDoRe_esg_reports_human_labeled_v2": "vidore/esg_reports_human_labeled_v2",
    **{
        f"ViDoRe_{n}_v2_multilingual": f"vidore/{n}_v2"
        for n in ("biomedical_lectures", "economics_reports", "esg_reports")
    },
    **{
        f"VisRAG_{n}": f"openbmb/VisRAG-Ret-Test-{n}"
        for n in ("ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA")
    },
    "ViDoSeek-page-fixed": "VLM2Vec/ViDoSeek-page-fixed",
    "ViDoSeek-doc": "VLM2Vec/ViDoSeek",
    "MMLongBench-page-fixed": "VLM2Vec/MMLongBench-page-fixed",
    "MMLongBench-doc": "VLM2Vec/MMLongBench-doc",
}

_IMAGE_TOKEN = re.compile(r"<\|image_\d+\|>|<\|image_pad\|>")


def strip_image_tokens(text: str | None) -> str | None:
    """Upstream text without its image placeholders (the Embedder places images itself); None when empty."""
    if text is None:
        return None
    cleaned = _IMAGE_TOKEN.sub("", text).strip()
    return cleaned or None


def task_name(name: str, modality: str) -> str:
    """The registry name of an MMEB-V2 task of `modality` given under any spelling; a clear error otherwise."""
    resolved = resolve_task(MMEB_V2, name)
    if resolved is None or mmeb_task(resolved).modality != modality:
        from .benchmarks import MMEB_TASKS

        names = ", ".join(t.name for t in MMEB_TASKS if t.modality == modality)
        raise ConversionError(f"{name!r} is not an MMEB-V2 {modality} task; expected one of: {names}")
    return resolved


# --------------------------------------------------------------------------------------------- images

# How the official evaluation reads each image task (VLM2Vec's `dataset_parser` per task in
# experiments/public/eval/image.yaml):
# - TEXT_CANDIDATES (image_cls, image_qa, image_i2t): the query is image + instruction + text; a candidate is
#   its `tgt_text` exactly, without `tgt_inst`, and is named by that text;
# - TEXT_TO_IMAGE (image_t2i): the query is instruction + text and never carries an image; a candidate is its
#   image with `tgt_inst` (plus its caption when the row's first caption is not blank: WebQA, EDIS), named by
#   its image path;
# - IMAGE_TO_IMAGE (image_i2i_vg, retrieval and grounding): the query is image + instruction + text; a
#   candidate is its image with `tgt_inst` (plus its caption as above: RefCOCO-Matching), named
#   `path:caption` with the caption's double quotes stripped (several objects of one picture are targets).
TEXT_CANDIDATES, TEXT_TO_IMAGE, IMAGE_TO_IMAGE = "text_candidates", "text_to_image", "image_to_image"
_IMAGE_T2I = ("VisDial", "MSCOCO_t2i", "VisualNews_t2i", "WebQA", "EDIS", "Wiki-SS-NQ")
_IMAGE_I2I = (
    "CIRR",
    "NIGHTS",
    "OVEN",
    "FashionIQ",
    "MSCOCO",
    "RefCOCO",
    "RefCOCO-Matching",
    "Visual7W-Pointing",
)


def image_task_kind(task: str) -> str:
    if task in _IMAGE_T2I:
        return TEXT_TO_IMAGE
    return IMAGE_TO_IMAGE if task in _IMAGE_I2I else TEXT_CANDIDATES


def candidate_name(kind: str, text: str, image: str) -> str:
    """VLM2Vec's dedup key of a candidate: candidates with the same name share one embedding, and a hit is a
    match of names."""
    if kind == TEXT_CANDIDATES:
        return text
    if kind == TEXT_TO_IMAGE:
        return image
    return f"{image}:{text.strip(chr(34))}"


def convert_image_task(
    records: str | Path | Iterable[Record],
    task: str,
    images: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `OUT/<task>/` from the rows of one MMEB-V2 image task. `images` is the unpacked `image-tasks/`
    folder the rows' paths are relative to. Returns the task folder.

    Every defect of every row is collected and raised together as a DataError naming file, row and field;
    images already placed stay in `OUT/<task>.partial/` for the rerun."""
    name = task_name(task, "image")
    spec = mmeb_task(name)
    split = split or "test"  # the split the official evaluation reads
    kind = image_task_kind(name)
    image_root = Path(images)
    if not image_root.is_dir():
        raise ConversionError(f"{image_root}: the images folder does not exist")
    problems: list[Problem] = []
    run = start_conversion(
        records, out_dir, name, overwrite, problems, split=split, media_sources=[image_root]
    )

    queries: list[Query] = []
    candidates: dict[str, Item] = {}
    qrels: list[Qrel] = []
    repeated = 0
    v1_rows = False
    for position, record in enumerate(run.rows):
        qid = f"q{position:05d}"  # by upstream position, so a row's id does not depend on others' defects
        before = len(problems)
        texts = require(record, "tgt_text", list, problems, qid)
        paths = require(record, "tgt_img_path", list, problems, qid)
        query_text = require(record, "qry_text", str, problems, qid, optional=True)
        query_instruction = require(record, "qry_inst", str, problems, qid, optional=True)
        target_instruction = require(record, "tgt_inst", str, problems, qid, optional=True)
        query_image = require(record, "qry_img_path", str, problems, qid, optional=True)
        v1_rows = v1_rows or "qry_inst" not in record.data
        if texts is None or paths is None:
            continue
        if len(texts) != len(paths) or not texts:
            problems.append(
                record.problem(
                    f"tgt_text has {len(texts)} entries and tgt_img_path {len(paths)}; "
                    "they must be equally long and not empty",
                    "tgt_img_path",
                    qid,
                )
            )
            continue
        for field, values in (("tgt_text", texts), ("tgt_img_path", paths)):
            for index, value in enumerate(values):
                if not isinstance(value, str):
                    problems.append(
                        record.problem(
                            f"must be a string, got {type(value).__name__}", f"{field}[{index}]", qid
                        )
                    )
        if len(problems) > before:
            continue
        placed_query = None
        if query_image and kind != TEXT_TO_IMAGE:  # text-to-image queries are text only upstream
            placed_query = _place_image(
                record, "qry_img_path", query_image, image_root, run.building, problems, qid
            )
        with_captions = bool(texts[0].strip())
        names = []
        for index, (text, path) in enumerate(zip(texts, paths)):
            cid = candidate_name(kind, text, path)
            if not cid.strip():
                field = f"tgt_text[{index}]" if kind == TEXT_CANDIDATES else f"tgt_img_path[{index}]"
                problems.append(record.problem("an empty candidate", field, qid))
                continue
            names.append(cid)
            if cid in candidates:  # the first occurrence is the one embedded, as upstream
                continue
            if kind == TEXT_CANDIDATES:
                candidates[cid] = Item(id=cid, text=text)
                continue
            placed = _place_image(
                record, f"tgt_img_path[{index}]", path, image_root, run.building, problems, qid
            )
            if placed is not None:
                candidates[cid] = Item(
                    id=cid,
                    text=strip_image_tokens(text) if with_captions else None,
                    instruction=strip_image_tokens(target_instruction),
                    images=[placed],
                )
        if len(problems) > before:
            continue
        unique = dedupe_in_order(names)
        repeated += len(names) != len(unique)
        queries.append(
            Query(
                id=qid,
                instruction=strip_image_tokens(query_instruction),
                text=strip_image_tokens(query_text),
                images=[placed_query] if placed_query else [],
                candidate_ids=unique,
                meta={"upstream_row": record.row},
            )
        )
        qrels.append(Qrel(qid, names[0], 1))
    if problems:
        raise DataError(problems)
    if not queries:
        raise ConversionError(f"{name}: the source holds no rows")
    hub = "TIGER-Lab/MMEB-eval" if v1_rows else IMAGE_TASKS_HF
    meta = TaskMeta(
        benchmark=MMEB_V2,
        task=name,
        modality="image",
        meta_task=spec.meta_task,
        eval_type=spec.eval_type,
        primary_metric=spec.main_metric,
        source={
            "hf": hub,
            "config": name,
            "split": run.split,
            "revision": revision,
            "converter": f"{__name__}.convert_image_task",
        },
        version_note=(
            f"{repeated} queries listed a candidate twice; kept once, first position" if repeated else None
        ),
    )
    return finish(Task(meta, queries, list(candidates.values()), qrels), run.building, run.final)


def _place_image(
    record: Record, field: str, path: str, image_root: Path, building: Path, problems: list[Problem], qid: str
) -> str | None:
    """The task-relative path of an upstream image (kept at its upstream path under media/), or None after
    adding a problem."""
    rel = safe_relative(path)
    if rel is None:
        problems.append(record.problem(f"{path!r} must be a relative path inside {image_root}", field, qid))
        return None
    return place_media(record, field, image_root, path, building, PurePosixPath("media") / rel, problems, qid)


# --------------------------------------------------------------------------------------------- visdoc


def convert_visdoc_task(
    queries: str | Path,
    corpus: str | Path,
    qrels: str | Path,
    task: str,
    out_dir: str | Path,
    *,
    split: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `OUT/<task>/` from the BEIR-style splits of one MMEB-V2 VisDoc task: `queries` (`query-id`,
    `query`, optional `language`), `corpus` (`corpus-id`, `image` as inline bytes or a path next to the record
    file) and `qrels` (`query-id`, `corpus-id`, `score`). Each argument is a record file or a folder of them."""
    name = task_name(task, "visdoc")
    spec = mmeb_task(name)
    split = split or ("train" if name.startswith("VisRAG_") else "test")  # the split the official run reads
    final, building = partial_folder(out_dir, name, overwrite, [queries, corpus, qrels])
    problems: list[Problem] = []

    candidates: dict[str, Item] = {}
    repeated_pages = 0
    for record in read_records(corpus, problems, split):
        cid = identifier(record, "corpus-id", problems)
        if cid is None:
            continue
        if cid in candidates:  # upstream dedups the pool by corpus-id: the first page is the one embedded
            repeated_pages += 1
            continue
        placed = _place_page(record, len(candidates), building, problems, cid)
        if placed is not None:
            candidates[cid] = Item(id=cid, images=[placed])

    query_items: dict[str, Query] = {}
    for record in read_records(queries, problems, split):
        qid = identifier(record, "query-id", problems)
        text = require(record, "query", str, problems, qid)
        if qid is None or text is None:
            continue
        if qid in query_items:
            problems.append(record.problem("repeated query-id", "query-id", qid))
            continue
        if not text.strip():
            problems.append(record.problem("an empty query", "query", qid))
            continue
        language = record.data.get("language")
        query_items[qid] = Query(id=qid, text=text, meta={"language": language} if language else {})

    grades: dict[tuple[str, str], int] = {}
    extra_qrels = 0
    for record in read_records(qrels, problems, split):
        qid = identifier(record, "query-id", problems)
        cid = identifier(record, "corpus-id", problems)
        score = require(record, "score", (int, float), problems, qid)
        if qid is None or cid is None or score is None:
            continue
        if not math.isfinite(score) or score != int(score):
            problems.append(
                record.problem(f"graded relevance must be a whole number, got {score!r}", "score", qid)
            )
            continue
        if score <= 0:  # BEIR lists non-relevant pairs with score 0; upstream drops them before anything else
            continue
        if qid not in query_items:  # upstream looks qrels up per query: rows of other queries are never read
            extra_qrels += 1
            continue
        if cid not in candidates:
            problems.append(record.problem(f"unknown corpus-id {cid!r}", "corpus-id", qid))
            continue
        grades[(qid, cid)] = max(grades.get((qid, cid), 0), int(score))
    if problems:
        raise DataError(problems)
    if not query_items or not candidates or not grades:
        missing = "queries" if not query_items else "corpus pages" if not candidates else "relevant pairs"
        raise ConversionError(f"{name}: the source holds no {missing}")
    unjudged = len(set(query_items) - {qid for qid, _ in grades})
    notes = [
        f"{unjudged} queries have no relevant page (they score 0)" if unjudged else "",
        f"{repeated_pages} repeated corpus-ids; the first page of each kept" if repeated_pages else "",
        f"{extra_qrels} qrels of queries not in the queries split ignored" if extra_qrels else "",
    ]
    meta = TaskMeta(
        benchmark=MMEB_V2,
        task=name,
        modality="visdoc",
        meta_task=spec.meta_task,
        eval_type=spec.eval_type,
        primary_metric=spec.main_metric,
        query_instruction=VISDOC_QUERY_INSTRUCTION,
        candidate_instruction=VISDOC_CANDIDATE_INSTRUCTION,
        source={
            "hf": VISDOC_SOURCES.get(name),
            "split": split_label(queries, split),
            "revision": revision,
            "converter": f"{__name__}.convert_visdoc_task",
        },
        version_note="; ".join(n for n in notes if n) or None,
    )
    rels = [Qrel(qid, cid, grade) for (qid, cid), grade in grades.items()]
    return finish(Task(meta, list(query_items.values()), list(candidates.values()), rels), building, final)


def _place_page(record: Record, index: int, building: Path, problems: list[Problem], cid: str) -> str | None:
    """Write a corpus page image into media/corpus/. Hub Parquet stores an image as {"bytes", "path"}."""
    image = record.data.get("image")
    data = path = None
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, str):
        path = image
    if data is not None and not isinstance(data, (bytes, bytearray)):
        problems.append(
            record.problem(f"image bytes must be binary, got {type(data).__name__}", "image", cid)
        )
        return None
    if data:
        suffix = image_suffix(data)
        if not suffix:
            problems.append(record.problem("the inline bytes are not an image", "image", cid))
            return None
        return place_bytes(data, building, PurePosixPath("media", "corpus", f"{index:06d}{suffix}"))
    if not isinstance(path, str) or not path:
        problems.append(
            record.problem(
                "missing" if image is None else "neither image bytes nor a file path", "image", cid
            )
        )
        return None
    source, why = source_file(Path(record.file).parent, path)
    if source is None:
        problems.append(record.problem(why, "image", cid))
        return None
    suffix = image_suffix(source)
    if not suffix:
        problems.append(record.problem(f"{source} is not an image", "image", cid))
        return None
    return place_file(source, building, PurePosixPath("media", "corpus", f"{index:06d}{suffix}"))
