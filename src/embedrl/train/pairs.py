"""Training pairs: the JSONL format shared by stage 1 (contrastive Embedder) and stage 2 (EG-RL Reasoner).

One line per pair, media paths relative to the file (or absolute):

```
{"dataset": "MSCOCO_t2i",
 "query":    {"id": "q1", "instruction": "...", "text": "...", "images": [...], "video": {"frames": [...]}},
 "positive": {"id": "p1", ...},
 "negatives": [{...}, ...],                       optional explicit hard negatives
 "query_tcot": "<thinking>…", "positive_tcot": "…", "negative_tcots": ["…", …]}   teacher T-CoTs, optional
```

Items have the fields of a task query; their "id" is optional (line-based ids are made up). `read_pairs`
reports every defect of the file at once, naming file, line and field.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data.items import ITEM_FIELDS, Item, parse_item, resolve_item_media
from ..errors import DataError, Problem
from ..fileio import iter_jsonl


@dataclass
class TrainingPair:
    dataset: str
    query: Item
    positive: Item
    negatives: list[Item] = field(default_factory=list)
    query_tcot: str | None = None
    positive_tcot: str | None = None
    negative_tcots: list[str | None] = field(default_factory=list)
    line: int | None = None

    @property
    def is_video(self) -> bool:
        return any(it.video is not None for it in (self.query, self.positive, *self.negatives))


KNOWN_KEYS = {
    "dataset",
    "query",
    "positive",
    "negatives",
    "query_tcot",
    "positive_tcot",
    "negative_tcots",
    "meta",
}


def _item(raw, where: dict, name: str, path: Path, problems: list[Problem], check_media: bool) -> Item | None:
    file, line = where["file"], where["line"]
    if not isinstance(raw, dict):
        problems.append(Problem(file, "expected an item object", line=line, field=name))
        return None
    for key in raw:
        if key not in ITEM_FIELDS:
            problems.append(Problem(file, "unknown field (typo?)", line=line, field=f"{name}.{key}"))
    raw = dict(raw)
    raw.setdefault("id", f"{line}:{name}")
    local: list[Problem] = []
    item = parse_item(raw, file=file, line=line, id_key="id", problems=local, allow_video_string=True)
    for p in local:  # qualify field names with the side ("positive.images[0]")
        problems.append(
            Problem(p.file, p.message, p.line, f"{name}.{p.field}" if p.field else name, p.record)
        )
    if item is None:
        return None
    local = []
    item = resolve_item_media(
        item, path.parent, confine=False, file=file, line=line, problems=local, must_exist=check_media
    )
    for p in local:
        problems.append(Problem(p.file, p.message, p.line, f"{name}.{p.field}", p.record))
    return item


def _tcot(obj: dict, key: str, where: dict, problems: list[Problem]) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(Problem(message=f"expected a string, got {type(value).__name__}", field=key, **where))
        return None
    return value


def read_pairs(path: str | Path, check_media: bool = True) -> list[TrainingPair]:
    pairs, problems = load_pairs(Path(path), check_media)
    if problems:
        raise DataError(problems)
    if not pairs:
        raise DataError(Problem(str(path), "no training pairs"))
    return pairs


def validate_pairs(path: str | Path, check_media: bool = True) -> list[Problem]:
    return load_pairs(Path(path), check_media)[1]


def load_pairs(path: str | Path, check_media: bool = True) -> tuple[list[TrainingPair], list[Problem]]:
    """(pairs that are valid, every problem found). `read_pairs` raises instead."""
    path = Path(path)
    problems: list[Problem] = []
    pairs: list[TrainingPair] = []
    for line, obj in iter_jsonl(path, problems):
        where = {"file": str(path), "line": line}
        before = len(problems)
        for key in obj:
            if key not in KNOWN_KEYS:
                problems.append(Problem(message="unknown field (typo?)", field=key, **where))
        dataset = obj.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            problems.append(
                Problem(
                    message="missing required field" if dataset is None else "must be a non-empty string",
                    field="dataset",
                    **where,
                )
            )
        sides = {}
        for side in ("query", "positive"):
            if side not in obj:
                problems.append(Problem(message="missing required field", field=side, **where))
                continue
            sides[side] = _item(obj[side], where, side, path, problems, check_media)
        negatives: list[Item] = []
        if obj.get("meta") is not None and not isinstance(obj["meta"], dict):
            problems.append(Problem(message="must be an object", field="meta", **where))
        raw_negs = obj.get("negatives")
        raw_negs = [] if raw_negs is None else raw_negs
        if not isinstance(raw_negs, list):
            problems.append(Problem(message="expected a list of items", field="negatives", **where))
            raw_negs = []
        for i, raw in enumerate(raw_negs):
            neg = _item(raw, where, f"negatives[{i}]", path, problems, check_media)
            if neg is not None:
                negatives.append(neg)
        query_tcot = _tcot(obj, "query_tcot", where, problems)
        positive_tcot = _tcot(obj, "positive_tcot", where, problems)
        neg_tcots = obj.get("negative_tcots")
        if neg_tcots is None:
            neg_tcots = [None] * len(raw_negs)
        elif (
            not isinstance(neg_tcots, list)
            or len(neg_tcots) != len(raw_negs)
            or not all(t is None or isinstance(t, str) for t in neg_tcots)
        ):
            problems.append(
                Problem(
                    message="must be a list of strings (or nulls), one per negative",
                    field="negative_tcots",
                    **where,
                )
            )
        if len(problems) > before or sides.get("query") is None or sides.get("positive") is None:
            continue
        pairs.append(
            TrainingPair(
                dataset,
                sides["query"],
                sides["positive"],
                negatives,
                query_tcot,
                positive_tcot,
                list(neg_tcots),
                line,
            )
        )
    return pairs, problems


def dataset_summary(pairs: list[TrainingPair]) -> dict[str, dict]:
    counts = Counter(p.dataset for p in pairs)
    video = {p.dataset for p in pairs if p.is_video}
    with_tcot = Counter(p.dataset for p in pairs if p.query_tcot and p.positive_tcot)
    return {
        name: {"pairs": n, "video": name in video, "with_teacher_tcots": with_tcot[name]}
        for name, n in sorted(counts.items())
    }
