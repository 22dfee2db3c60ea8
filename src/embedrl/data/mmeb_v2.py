"""Converters from the upstream MMEB-V2 layouts into task folders (benchmarks.md §1.1-1.3, §3.2).

- **Image tasks (36)**: rows of `ziyjiang/MMEB_Test_Instruct` (config = task, split `test`; fields `qry_inst`,
  `qry_text`, `qry_img_path`, `tgt_inst`, `tgt_text[]`, `tgt_img_path[]`) or of the V1 `TIGER-Lab/MMEB-eval`
  (no `*_inst` fields: the instruction is inside the text), with images from the unpacked `image-tasks/` folder.
  Local tasks: each query keeps its own candidate list in upstream order, and element 0 is the positive.
  Candidates are shared by their upstream name (VLM2Vec's `cand_name`: the text, the image path, or
  `path:text`), so identical candidates are embedded once, as in the official evaluation.
- **VisDoc tasks (24)**: BEIR-style `queries` / `corpus` / `qrels` splits (ViDoRe, VisRAG, ViDoSeek,
  MMLongBench). Global tasks with graded qrels (`score > 0` kept; a repeated pair keeps its highest score);
  corpus images are written from the inline bytes into `media/corpus/`.

The 18 video tasks are not converted here: their upstream layouts differ per task (benchmarks.md §3.1) and
could not be checked against real data from this project's machines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..errors import DataError, Problem
from ..eval.registry import MMEB_V2, mmeb_task, resolve_task
from .items import Item, Query
from .taskdir import Qrel, Task, TaskMeta
from .upstream import (
    ConversionError,
    Record,
    dedupe_in_order,
    finish,
    image_suffix,
    partial_folder,
    place_bytes,
    place_file,
    read_records,
    require,
    safe_relative,
)

IMAGE_TASKS_HF = "ziyjiang/MMEB_Test_Instruct"
VISDOC_QUERY_INSTRUCTION = "Find a document image that matches the given query:"
VISDOC_CANDIDATE_INSTRUCTION = "Understand the content of the provided document image."

# Hub datasets of the VisDoc tasks (benchmarks.md §1.2), recorded in task.json as the source to pin.
VISDOC_SOURCES = {
    **{f"ViDoRe_{n}": f"vidore/{n}_test_subsampled_beir" for n in ("arxivqa", "docvqa", "infovqa", "tabfquad")},
    "ViDoRe_tatdqa": "vidore/tatdqa_test_beir",
    "ViDoRe_shiftproject": "vidore/shiftproject_test_beir",
    **{f"ViDoRe_syntheticDocQA_{n}": f"vidore/syntheticDocQA_{n}_test_beir"
       for n in ("artificial_intelligence", "energy", "government_reports", "healthcare_industry")},
    "ViDoRe_esg_reports_human_labeled_v2": "vidore/esg_reports_human_labeled_v2",
    **{f"ViDoRe_{n}_v2_multilingual": f"vidore/{n}_v2"
       for n in ("biomedical_lectures", "economics_reports", "esg_reports")},
    **{f"VisRAG_{n}": f"openbmb/VisRAG-Ret-Test-{n}"
       for n in ("ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA")},
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


def candidate_name(text: str | None, image: str | None) -> str:
    """VLM2Vec's dedup key of a candidate: its text, its image path, or `path:text` when it has both."""
    if image and text:
        return f"{image}:{text}"
    return image or text or ""


def _task_name(name: str, modality: str) -> str:
    resolved = resolve_task(MMEB_V2, name)
    if resolved is None or mmeb_task(resolved).modality != modality:
        from ..eval.registry import MMEB_TASKS

        names = ", ".join(t.name for t in MMEB_TASKS if t.modality == modality)
        raise ConversionError(f"{name!r} is not an MMEB-V2 {modality} task; expected one of: {names}")
    return resolved


# --------------------------------------------------------------------------------------------- images


def convert_image_task(records: str | Path | Iterable[Record], task: str, images: str | Path, out_dir: str | Path,
                       *, revision: str | None = None, overwrite: bool = False) -> Path:
    """Write `OUT/<task>/` from the rows of one MMEB-V2 image task. `images` is the unpacked `image-tasks/`
    folder the rows' paths are relative to. Returns the task folder.

    Every defect of every row is collected and raised together as a DataError naming file, row and field;
    images already placed stay in `OUT/<task>.partial/` for the rerun."""
    name = _task_name(task, "image")
    spec = mmeb_task(name)
    image_root = Path(images)
    if not image_root.is_dir():
        raise ConversionError(f"{image_root}: the images folder does not exist")
    final, building = partial_folder(out_dir, name, overwrite)
    rows = read_records(records) if isinstance(records, (str, Path)) else records

    problems: list[Problem] = []
    queries: list[Query] = []
    candidates: dict[str, Item] = {}
    qrels: list[Qrel] = []
    repeated = 0
    for position, record in enumerate(rows):
        qid = f"q{position:05d}"  # by upstream position, so a row's id does not depend on others' defects
        texts = require(record, "tgt_text", list, problems, qid)
        paths = require(record, "tgt_img_path", list, problems, qid)
        if texts is None or paths is None:
            continue
        if len(texts) != len(paths) or not texts:
            problems.append(record.problem(f"tgt_text has {len(texts)} entries and tgt_img_path {len(paths)}; "
                                           "they must be equally long and not empty", "tgt_img_path", qid))
            continue
        query_image = _place_image(record, "qry_img_path", record.data.get("qry_img_path"), image_root, building,
                                   problems, qid)
        target_instruction = strip_image_tokens(record.data.get("tgt_inst"))
        names = []
        for index, (text, path) in enumerate(zip(texts, paths)):
            field = f"tgt_img_path[{index}]"
            placed = _place_image(record, field, path, image_root, building, problems, qid)
            if placed is False:
                continue
            text = strip_image_tokens(text) if isinstance(text, str) else None
            cid = candidate_name(text, path or None)
            if not cid:
                problems.append(record.problem("a candidate with neither text nor image", f"tgt_text[{index}]",
                                               qid))
                continue
            names.append(cid)
            if cid not in candidates:  # the first occurrence's text is the one embedded, as upstream
                candidates[cid] = Item(id=cid, text=text, instruction=target_instruction,
                                       images=[placed] if placed else [])
        if query_image is False or len(names) != len(texts):
            continue
        unique = dedupe_in_order(names)
        repeated += len(names) != len(unique)
        instruction = record.data.get("qry_inst")
        queries.append(Query(id=qid, instruction=strip_image_tokens(instruction) if isinstance(instruction, str)
                             else None, text=strip_image_tokens(record.data.get("qry_text")),
                             images=[query_image] if query_image else [], candidate_ids=unique,
                             meta={"upstream_row": record.row}))
        qrels.append(Qrel(qid, names[0], 1))
    if problems:
        raise DataError(problems)
    if not queries:
        raise ConversionError(f"{name}: the source holds no rows")
    meta = TaskMeta(benchmark=MMEB_V2, task=name, modality="image", meta_task=spec.meta_task,
                    eval_type=spec.eval_type, primary_metric=spec.main_metric,
                    source={"hf": IMAGE_TASKS_HF, "config": name, "split": "test", "revision": revision,
                            "converter": "embedrl.data.mmeb_v2.convert_image_task"},
                    version_note=(f"{repeated} queries listed a candidate twice; kept once, first position"
                                  if repeated else None))
    return finish(Task(meta, queries, list(candidates.values()), qrels), building, final)


def _place_image(record: Record, field: str, path: object, image_root: Path, building: Path,
                 problems: list[Problem], qid: str) -> str | None | bool:
    """The task-relative path of an upstream image, None when the row has none, False after a problem."""
    if path is None or path == "":
        return None
    if not isinstance(path, str):
        problems.append(record.problem(f"must be a path string, got {type(path).__name__}", field, qid))
        return False
    rel = safe_relative(path)
    if rel is None:
        problems.append(record.problem(f"{path!r} must be relative to the images folder", field, qid))
        return False
    source = image_root / rel
    if not source.is_file():
        problems.append(record.problem(f"{source} does not exist", field, qid))
        return False
    return place_file(source, building, PurePosixPath("media") / rel)


# --------------------------------------------------------------------------------------------- visdoc


def convert_visdoc_task(queries: str | Path, corpus: str | Path, qrels: str | Path, task: str,
                        out_dir: str | Path, *, revision: str | None = None, overwrite: bool = False) -> Path:
    """Write `OUT/<task>/` from the BEIR-style splits of one MMEB-V2 VisDoc task: `queries` (`query-id`,
    `query`, optional `language`), `corpus` (`corpus-id`, `image` as inline bytes or a path next to the record
    file) and `qrels` (`query-id`, `corpus-id`, `score`). Each argument is a record file or a folder of them."""
    name = _task_name(task, "visdoc")
    spec = mmeb_task(name)
    final, building = partial_folder(out_dir, name, overwrite)
    problems: list[Problem] = []

    candidates: dict[str, Item] = {}
    for record in read_records(corpus):
        cid = _identifier(record, "corpus-id", problems)
        if cid is None:
            continue
        if cid in candidates:
            problems.append(record.problem("repeated corpus-id", "corpus-id", cid))
            continue
        placed = _place_page(record, len(candidates), building, problems, cid)
        if placed is not None:
            candidates[cid] = Item(id=cid, images=[placed])

    query_items: dict[str, Query] = {}
    for record in read_records(queries):
        qid = _identifier(record, "query-id", problems)
        text = require(record, "query", str, problems, qid)
        if qid is None or text is None:
            continue
        if qid in query_items:
            problems.append(record.problem("repeated query-id", "query-id", qid))
            continue
        language = record.data.get("language")
        query_items[qid] = Query(id=qid, text=text, meta={"language": language} if language else {})

    grades: dict[tuple[str, str], int] = {}
    for record in read_records(qrels):
        qid = _identifier(record, "query-id", problems)
        cid = _identifier(record, "corpus-id", problems)
        score = require(record, "score", (int, float), problems, qid)
        if qid is None or cid is None or score is None:
            continue
        if score != int(score):
            problems.append(record.problem(f"graded relevance must be a whole number, got {score!r}", "score",
                                           qid))
            continue
        if qid not in query_items or cid not in candidates:
            unknown = ("query-id", qid) if qid not in query_items else ("corpus-id", cid)
            problems.append(record.problem(f"unknown {unknown[0]} {unknown[1]!r}", unknown[0], qid))
            continue
        if score > 0:  # BEIR lists non-relevant pairs with score 0; the task format lists relevant pairs only
            grades[(qid, cid)] = max(grades.get((qid, cid), 0), int(score))
    if problems:
        raise DataError(problems)
    if not query_items or not candidates:
        raise ConversionError(f"{name}: the source holds no {'queries' if not query_items else 'corpus pages'}")
    unjudged = len(set(query_items) - {qid for qid, _ in grades})
    meta = TaskMeta(benchmark=MMEB_V2, task=name, modality="visdoc", meta_task=spec.meta_task,
                    eval_type=spec.eval_type, primary_metric=spec.main_metric,
                    query_instruction=VISDOC_QUERY_INSTRUCTION, candidate_instruction=VISDOC_CANDIDATE_INSTRUCTION,
                    source={"hf": VISDOC_SOURCES.get(name), "revision": revision,
                            "converter": "embedrl.data.mmeb_v2.convert_visdoc_task"},
                    version_note=(f"{unjudged} queries have no relevant page (they score 0)" if unjudged else None))
    rels = [Qrel(qid, cid, grade) for (qid, cid), grade in grades.items()]
    return finish(Task(meta, list(query_items.values()), list(candidates.values()), rels), building, final)


def _identifier(record: Record, key: str, problems: list[Problem]) -> str | None:
    value = require(record, key, (str, int), problems)
    if value is None:
        return None
    if str(value) == "":
        problems.append(record.problem("must not be empty", key))
        return None
    return str(value)


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
    if data:
        suffix = image_suffix(data)
        if not suffix:
            problems.append(record.problem("the inline bytes are not an image", "image", cid))
            return None
        return place_bytes(data, building, PurePosixPath("media", "corpus", f"{index:06d}{suffix}"))
    rel = safe_relative(path) if isinstance(path, str) else None
    source = Path(record.file).parent / rel if rel is not None else None
    if source is None or not source.is_file():
        what = "missing" if image is None else f"neither image bytes nor an existing file next to it ({path!r})"
        problems.append(record.problem(what, "image", cid))
        return None
    return place_file(source, building, PurePosixPath("media", "corpus", f"{index:06d}{source.suffix.lower()}"))
