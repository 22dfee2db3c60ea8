"""The unified task folder (docs/task-format.md): one directory per retrieval task.

```
<task>/
  task.json         metadata and scoring config (TaskMeta)
  queries.jsonl     {"qid", "instruction", "text", "images", "video", "candidate_ids"?, "meta"}
  candidates.jsonl  {"cid", "instruction", "text", "images", "video", "meta"}
  qrels.jsonl       {"qid", "cid", "rel"}   rel: int >= 1, graded allowed
  media/            images and frames referenced by relative paths
```

`read_task` validates everything and raises one DataError listing every defect; `validate_task` returns
the list instead. Media paths must stay inside the task folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, Problem
from ..fileio import iter_jsonl, read_json, write_json, write_jsonl
from .items import Item, Query, parse_item, resolve_item_media
from .media import special_file_problem

TASK_FILE = "task.json"
QUERIES_FILE = "queries.jsonl"
CANDIDATES_FILE = "candidates.jsonl"
QRELS_FILE = "qrels.jsonl"

EVAL_TYPES = ("local", "global")
METRIC_NAMES = (
    "hit",
    "precision",
    "recall",
    "uvrb_recall",
    "ndcg_linear",
    "ndcg_exponential",
    "mrr",
    "map",
    "f1",
)
_METRIC_RE = re.compile(r"^(" + "|".join(METRIC_NAMES) + r")@([1-9][0-9]*)$")


def parse_metric_name(name: str) -> tuple[str, int]:
    """'ndcg_linear@5' -> ('ndcg_linear', 5). Raises ValueError for anything else."""
    match = _METRIC_RE.match(name)
    if not match:
        raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)} followed by @k")
    return match.group(1), int(match.group(2))


@dataclass
class TaskMeta:
    benchmark: str
    task: str
    modality: str
    eval_type: str
    primary_metric: str
    meta_task: str | None = None
    k_list: list[int] = field(default_factory=lambda: [1, 5, 10])
    query_instruction: str | None = None
    candidate_instruction: str | None = None
    num_frames: int = 8
    frame_sampling: str = "linspace_int"
    text_template: str = "vlm2vec"
    source: dict = field(default_factory=dict)
    version_note: str | None = None

    REQUIRED = ("benchmark", "task", "modality", "eval_type", "primary_metric")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Qrel:
    qid: str
    cid: str
    rel: int = 1


@dataclass
class Task:
    meta: TaskMeta
    queries: list[Query]
    candidates: list[Item]
    qrels: list[Qrel]
    root: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.meta.eval_type == "local"

    def relevance(self) -> dict[str, dict[str, int]]:
        """qid -> {cid: grade}."""
        out: dict[str, dict[str, int]] = {q.id: {} for q in self.queries}
        for qrel in self.qrels:
            out.setdefault(qrel.qid, {})[qrel.cid] = qrel.rel
        return out

    def candidate_index(self) -> dict[str, int]:
        return {c.id: i for i, c in enumerate(self.candidates)}

    def queries_for_encoding(self) -> list[Item]:
        """Queries with the task's default instruction filled in and media paths made absolute."""
        return [_absolute(q, self.root).with_instruction(self.meta.query_instruction) for q in self.queries]

    def candidates_for_encoding(self) -> list[Item]:
        return [
            _absolute(c, self.root).with_instruction(self.meta.candidate_instruction) for c in self.candidates
        ]


def _absolute(item: Item, root: Path | None) -> Item:
    if root is None:
        return item
    problems: list[Problem] = []
    resolved = resolve_item_media(
        item, root, confine=True, file=str(root), line=None, problems=problems, must_exist=False
    )
    return resolved


# ------------------------------------------------------------------------------------------------- read


def _usable_as_file_name(name: str) -> bool:
    return not (name.startswith(".") or "/" in name or "\\" in name or any(ord(ch) < 32 for ch in name))


def _read_meta(root: Path, problems: list[Problem]) -> TaskMeta | None:
    path = root / TASK_FILE
    try:
        raw = read_json(path)
    except DataError as exc:
        problems.extend(exc.problems)
        return None
    if not isinstance(raw, dict):
        problems.append(Problem(str(path), "expected a JSON object"))
        return None
    where = {"file": str(path)}
    before = len(problems)
    for key in TaskMeta.REQUIRED:
        if not isinstance(raw.get(key), str) or not raw.get(key):
            msg = "missing required field" if key not in raw else "must be a non-empty string"
            problems.append(Problem(message=msg, field=key, **where))
    known = set(TaskMeta.__dataclass_fields__)
    for key in raw:
        if key not in known:
            problems.append(Problem(message="unknown field (typo?)", field=key, **where))
    for key in ("benchmark", "task"):
        value = raw.get(key)
        if isinstance(value, str) and value and not _usable_as_file_name(value):
            # results are written to OUT/<benchmark>/<task>.json: a name must not lead out of OUT
            problems.append(
                Problem(
                    message=f"{value!r} cannot be used as a file name (no '/', '\\', "
                    "leading '.' or control characters)",
                    field=key,
                    **where,
                )
            )
    if isinstance(raw.get("eval_type"), str) and raw["eval_type"] not in EVAL_TYPES:
        problems.append(
            Problem(
                message=f"must be 'local' or 'global', got {raw['eval_type']!r}", field="eval_type", **where
            )
        )
    if isinstance(raw.get("primary_metric"), str):
        try:
            parse_metric_name(raw["primary_metric"])
        except ValueError as exc:
            problems.append(Problem(message=str(exc), field="primary_metric", **where))
    k_list = raw.get("k_list", [1, 5, 10])
    if (
        not isinstance(k_list, list)
        or not k_list
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in k_list)
    ):
        problems.append(Problem(message="must be a non-empty list of integers >= 1", field="k_list", **where))
    num_frames = raw.get("num_frames", 8)
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        problems.append(Problem(message="must be an integer >= 1", field="num_frames", **where))
    for key in ("query_instruction", "candidate_instruction", "version_note", "meta_task"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            problems.append(Problem(message="must be a string or null", field=key, **where))
    if raw.get("source") is not None and not isinstance(raw["source"], dict):
        problems.append(Problem(message="must be an object", field="source", **where))
    if len(problems) > before:
        return None
    return TaskMeta(
        **{k: v for k, v in raw.items() if k in known and v is not None or k in TaskMeta.REQUIRED}
    )


def _check_media(item: Item, root: Path, file: str, line: int, problems: list[Problem]) -> None:
    """Media paths stay inside the task folder and name regular files. A FIFO or a device must be named for
    what it is: the loader would block on it or read it forever, and "does not exist" sends users looking for
    a file that is there."""
    before = len(problems)
    resolved = resolve_item_media(
        item, root, confine=True, file=file, line=line, problems=problems, must_exist=False
    )
    refused = {p.field for p in problems[before:]}
    media = [(f"images[{i}]", raw, path) for i, (raw, path) in enumerate(zip(item.images, resolved.images))]
    if item.video is not None and resolved.video is not None:
        media += [
            (f"video.frames[{i}]", raw, path)
            for i, (raw, path) in enumerate(zip(item.video.frames or (), resolved.video.frames or ()))
        ]
        if item.video.path is not None:
            media.append(("video.path", item.video.path, resolved.video.path))
    for field_name, raw, path in media:
        if field_name in refused or not isinstance(path, str):
            continue
        if field_name == "video.path" and os.path.isdir(path):
            continue  # a video given as its folder of frames
        why = special_file_problem(path)
        if why is not None:
            why = "does not exist" if why == "file not found" else why
            problems.append(
                Problem(file, f"media file {raw!r} {why}", line=line, field=field_name, record=item.id)
            )
    order = {field_name: i for i, (field_name, _, _) in enumerate(media)}
    problems[before:] = sorted(problems[before:], key=lambda p: order.get(p.field, -1))  # in field order


def validate_task(root: str | Path, check_media: bool = True) -> list[Problem]:
    """Every defect of a task folder, in file order. An empty list means the task is valid."""
    problems: list[Problem] = []
    _load(Path(root), problems, check_media)
    return problems


def read_task(root: str | Path, check_media: bool = True) -> Task:
    problems: list[Problem] = []
    task = _load(Path(root), problems, check_media)
    if problems or task is None:
        raise DataError(problems or [Problem(str(root), "not a task folder")])
    return task


def _load(root: Path, problems: list[Problem], check_media: bool) -> Task | None:
    if not root.is_dir():
        problems.append(Problem(str(root), "is not a directory"))
        return None
    meta = _read_meta(root, problems)
    local = meta is not None and meta.eval_type == "local"

    candidates: list[Item] = []
    cid_line: dict[str, int] = {}
    cand_file = root / CANDIDATES_FILE
    for line, obj in iter_jsonl(cand_file, problems):
        item = parse_item(obj, file=str(cand_file), line=line, id_key="cid", problems=problems)
        if item is None:
            continue
        if item.id in cid_line:
            problems.append(
                Problem(
                    str(cand_file),
                    f"duplicate cid (first on line {cid_line[item.id]})",
                    line=line,
                    field="cid",
                    record=item.id,
                )
            )
            continue
        cid_line[item.id] = line
        if check_media:
            _check_media(item, root, str(cand_file), line, problems)
        candidates.append(item)

    queries: list[Query] = []
    qid_line: dict[str, int] = {}
    query_file = root / QUERIES_FILE
    for line, obj in iter_jsonl(query_file, problems):
        query = parse_item(obj, file=str(query_file), line=line, id_key="qid", problems=problems, cls=Query)
        if query is None:
            continue
        assert isinstance(query, Query)
        where = {"file": str(query_file), "line": line, "record": query.id}
        if query.id in qid_line:
            problems.append(
                Problem(message=f"duplicate qid (first on line {qid_line[query.id]})", field="qid", **where)
            )
            continue
        qid_line[query.id] = line
        if meta is not None:
            if local:
                if not query.candidate_ids:
                    problems.append(
                        Problem(
                            message="a local task needs a non-empty candidate list",
                            field="candidate_ids",
                            **where,
                        )
                    )
                else:
                    unknown = [c for c in query.candidate_ids if c not in cid_line]
                    if unknown:
                        problems.append(
                            Problem(
                                message=f"unknown candidate id(s) {unknown[:5]}",
                                field="candidate_ids",
                                **where,
                            )
                        )
                    dups = sorted({c for c in query.candidate_ids if query.candidate_ids.count(c) > 1})
                    if dups:
                        problems.append(
                            Problem(
                                message=f"candidate id(s) listed twice: {dups[:5]}",
                                field="candidate_ids",
                                **where,
                            )
                        )
            elif query.candidate_ids is not None:
                problems.append(
                    Problem(
                        message="only local tasks take per-query candidate lists "
                        "(set eval_type to 'local' or remove the field)",
                        field="candidate_ids",
                        **where,
                    )
                )
        if check_media:
            _check_media(query, root, str(query_file), line, problems)
        queries.append(query)

    qrels: list[Qrel] = []
    seen_pairs: dict[tuple[str, str], int] = {}
    qrel_file = root / QRELS_FILE
    local_sets = {q.id: set(q.candidate_ids or ()) for q in queries} if local else {}
    for line, obj in iter_jsonl(qrel_file, problems):
        where = {"file": str(qrel_file), "line": line}
        bad = False
        for key in ("qid", "cid"):
            if (
                not isinstance(obj.get(key), (str, int))
                or isinstance(obj.get(key), bool)
                or obj.get(key) == ""
            ):
                msg = "missing required field" if key not in obj else "must be a non-empty string"
                problems.append(Problem(message=msg, field=key, **where))
                bad = True
        rel = obj.get("rel", 1)
        if not isinstance(rel, int) or isinstance(rel, bool) or rel < 1:
            problems.append(
                Problem(
                    message=f"must be an integer >= 1, got {rel!r} (leave non-relevant pairs out)",
                    field="rel",
                    **where,
                )
            )
            bad = True
        if bad:
            continue
        qid, cid = str(obj["qid"]), str(obj["cid"])
        if qid not in qid_line:
            problems.append(Problem(message=f"unknown qid {qid!r}", field="qid", **where))
            continue
        if cid not in cid_line:
            problems.append(Problem(message=f"unknown cid {cid!r}", field="cid", **where))
            continue
        if local and cid not in local_sets.get(qid, ()):
            problems.append(
                Problem(message=f"cid {cid!r} is not in query {qid!r}'s candidate_ids", field="cid", **where)
            )
            continue
        if (qid, cid) in seen_pairs:
            problems.append(
                Problem(
                    message=f"duplicate qrel ({qid!r}, {cid!r}), first on line {seen_pairs[(qid, cid)]}",
                    **where,
                )
            )
            continue
        seen_pairs[(qid, cid)] = line
        qrels.append(Qrel(qid, cid, rel))

    if meta is None:
        return None
    if not queries and not any(p.file == str(query_file) for p in problems):
        problems.append(Problem(str(query_file), "no queries"))
    if not candidates and not any(p.file == str(cand_file) for p in problems):
        problems.append(Problem(str(cand_file), "no candidates"))
    return Task(meta=meta, queries=queries, candidates=candidates, qrels=qrels, root=root)


# ------------------------------------------------------------------------------------------------ write


def write_task(task: Task, root: str | Path) -> Path:
    """Write the four files of a task folder atomically. Media files must already be under `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / TASK_FILE, task.meta.to_json())
    write_jsonl(root / QUERIES_FILE, (q.to_json("qid") for q in task.queries))
    write_jsonl(root / CANDIDATES_FILE, (c.to_json("cid") for c in task.candidates))
    write_jsonl(root / QRELS_FILE, ({"qid": r.qid, "cid": r.cid, "rel": r.rel} for r in task.qrels))
    task.root = root
    return root


def summarize(task: Task) -> dict[str, Any]:
    qrel_counts: dict[str, int] = {}
    for r in task.qrels:
        qrel_counts[r.qid] = qrel_counts.get(r.qid, 0) + 1
    return {
        "task": task.meta.task,
        "benchmark": task.meta.benchmark,
        "eval_type": task.meta.eval_type,
        "queries": len(task.queries),
        "candidates": len(task.candidates),
        "qrels": len(task.qrels),
        "queries_without_positives": sum(1 for q in task.queries if q.id not in qrel_counts),
        "max_positives_per_query": max(qrel_counts.values(), default=0),
    }
