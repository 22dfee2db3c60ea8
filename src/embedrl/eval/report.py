"""Benchmark tables from per-task results: MMEB-V2 and UVRB, averaged as their leaderboards and papers do.

Inputs, mixed freely (folders are searched recursively for `*.json`):
- embedrl per-task results (`score_task` / `embedrl score` / `embedrl eval`);
- the VLM2Vec / Embed-RL leaderboard layout `{"metadata": ..., "metrics": {"image": {task: {"hit@1": ...}}}}`
  (MMEB-V2 only), and VLM2Vec's own `<task>_score.json` files (flat metric dicts, task from the file name);
- a plain `{"task or dataset": score}` mapping, e.g. a paper's table. Scores are percentages unless every value
  is ≤ 1 (then fractions, scaled by 100); `{"scale": "percent" | "fraction", "scores": {...}}` says so
  explicitly.

Scores are read from the metric the benchmark defines (data/benchmarks.py), never from whatever a result file calls
its main score, and shown ×100. A task that is missing is listed, and every mean that should include it is
marked partial with n/N; nothing is averaged over a silently smaller set.

MMEB-V2: meta-task, modality (Image 36, Video 18, VisDoc 24) and overall (78) means are flat means over tasks.
UVRB: the 16 dataset scores, their mean, and ability columns in two schemes, both labelled: hierarchical (GVE:
S, T, PR -> FG; CG, FG, LC -> TXT) and flat (Embed-RL Table 13: each column a plain mean of its datasets);
AVG = mean(TXT, CMP, VIS, CG, FG, LC) in both.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from ..data import benchmarks as reg
from ..data.taskdir import parse_metric_name
from ..errors import DataError, Problem
from ..fileio import atomic_open, read_json

FORMATS = ("md", "json", "csv")
SCHEME_LABELS = {
    "abilities_hier": "hierarchical (GVE; FG = mean(S, T, PR), TXT = mean(CG, FG, LC))",
    "abilities_flat": "flat (Embed-RL Table 13; each column a plain mean of its datasets)",
}


def fmt(value: float, digits: int = 2) -> str:
    """Round half up on the shortest decimal form, as papers print (70.25 -> "70.3", not banker's "70.2")."""
    quantum = Decimal(1).scaleb(-digits)
    return str(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class TaskScore:
    task: str  # registry name
    score: float  # percent
    metric: str  # metric the score was read from ("given" for plain mappings)
    source: str  # file it came from


@dataclass(frozen=True)
class Mean:
    """A mean over the tasks (datasets) present; `n`/`total` count them, `missing` names the absent ones."""

    name: str
    value: float | None
    n: int
    total: int
    missing: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return self.n < self.total

    def text(self, digits: int = 2) -> str:
        if self.value is None:
            return f"n/a (0/{self.total})"
        shown = fmt(self.value, digits)
        return f"{shown} (partial {self.n}/{self.total})" if self.partial else shown

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.value,
            "n": self.n,
            "total": self.total,
            "partial": self.partial,
            "missing": list(self.missing),
        }


@dataclass
class Report:
    benchmark: str
    tasks: list[dict[str, Any]]  # one row per registry task, in registry order
    sections: dict[str, dict[str, Mean]]  # section -> label -> mean
    missing: list[str]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"benchmark": self.benchmark, "tasks": self.tasks}
        for section, means in self.sections.items():
            entry: dict[str, Any] = {label: m.to_json() for label, m in means.items()}
            if section in SCHEME_LABELS:
                entry = {"scheme": SCHEME_LABELS[section], **entry}
            out[section] = entry
        out["missing"] = self.missing
        out["notes"] = self.notes
        return out


# -------------------------------------------------------------------------------------------- collecting


@dataclass
class _Collector:
    benchmark: str
    scores: dict[str, TaskScore] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # JSON files in folders that hold no results

    def unknown(self, name: str, source: str) -> None:
        hint = reg.MMEB_NOT_LEADERBOARD.get(name) if self.benchmark == reg.MMEB_V2 else None
        what = (
            "one of the 78 MMEB-V2 tasks" if self.benchmark == reg.MMEB_V2 else "one of the 16 UVRB datasets"
        )
        self.notes.append(f"{source}: {name!r} is not {what}" + (f" ({hint})" if hint else "") + "; ignored")

    def add(self, name: str, value: float, metric: str, source: str) -> None:
        task = reg.resolve_task(self.benchmark, name)
        if task is None:
            self.unknown(name, source)
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise DataError(Problem(source, f"score of {name!r} is not a finite number: {value!r}"))
        if task in self.scores:
            first = self.scores[task].source
            raise DataError(
                Problem(source, f"{task!r} is given twice (also in {first}); pass one result per task")
            )
        self.scores[task] = TaskScore(task, float(value), metric, source)


def _registry_metric(benchmark: str, task: str) -> str:
    if benchmark == reg.MMEB_V2:
        return reg.mmeb_task(task).main_metric
    return reg.uvrb_dataset(task).metric


def _is_metric_key(key: str) -> bool:
    try:
        parse_metric_name(key)
        return True
    except ValueError:
        return key in ("num_pred", "num_data")


def _read_embedrl_result(obj: dict, source: str, out: _Collector) -> None:
    benchmark = reg.canonical_benchmark(str(obj.get("benchmark", "")))
    if benchmark != out.benchmark:
        out.notes.append(f"{source}: a {obj.get('benchmark')!r} result; skipped")
        return
    name = str(obj.get("task"))
    task = reg.resolve_task(out.benchmark, name)
    if task is None:
        out.unknown(name, source)
        return
    metric = _registry_metric(out.benchmark, task)
    metrics = obj["metrics"]
    if metric not in metrics:
        raise DataError(
            Problem(
                source,
                f"{name!r} has no {metric!r}, the metric {out.benchmark} reports for it "
                f"(it has: {', '.join(sorted(metrics)[:12])})",
            )
        )
    if obj.get("primary_metric") not in (None, metric):
        out.notes.append(
            f"{source}: {name!r} lists primary_metric {obj['primary_metric']!r}; the report uses "
            f"{metric!r} as {out.benchmark} defines"
        )
    out.add(name, 100.0 * metrics[metric], metric, source)


def _read_leaderboard(obj: dict, source: str, out: _Collector) -> None:
    """VLM2Vec / Embed-RL layout: metrics.{image,video,visdoc}.{task}.{metric}."""
    if out.benchmark != reg.MMEB_V2:
        out.notes.append(f"{source}: MMEB-V2 leaderboard layout; skipped")
        return
    for modality, tasks in obj["metrics"].items():
        if not isinstance(tasks, dict):
            raise DataError(Problem(source, f"metrics.{modality} is not an object of tasks"))
        for name, metrics in tasks.items():
            _read_metric_dict(name, metrics, f"{source}: metrics.{modality}", out)


def _read_metric_dict(name: str, metrics: Any, source: str, out: _Collector) -> None:
    task = reg.resolve_task(out.benchmark, name)
    if task is None:
        out.unknown(name, source)
        return
    metric = _registry_metric(out.benchmark, task)
    if not isinstance(metrics, dict) or metric not in metrics:
        raise DataError(Problem(source, f"task {name!r} has no {metric!r}"))
    out.add(name, 100.0 * metrics[metric], metric, source)


def _read_mapping(obj: dict, source: str, out: _Collector) -> None:
    scale = obj.get("scale") if isinstance(obj.get("scores"), dict) else None
    scores = obj["scores"] if scale is not None else obj
    values = list(scores.values())
    if scale is None:
        scale = "fraction" if values and all(abs(v) <= 1.0 for v in values) else "percent"
        out.notes.append(
            f"{source}: plain score mapping read as {scale}s"
            + (" (every value ≤ 1)" if scale == "fraction" else "")
        )
    if scale not in ("percent", "fraction"):
        raise DataError(
            Problem(source, f"scale must be 'percent' or 'fraction', got {scale!r}", field="scale")
        )
    factor = 100.0 if scale == "fraction" else 1.0
    for name, value in scores.items():
        out.add(name, factor * value, "given", source)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _classify(obj: Any) -> str | None:
    """Which input layout a parsed JSON file is, or None for anything else."""
    if not isinstance(obj, dict) or not obj:
        return None
    if isinstance(obj.get("metrics"), dict) and "task" in obj and "benchmark" in obj:
        return "embedrl"
    if (
        isinstance(obj.get("metrics"), dict)
        and obj["metrics"]
        and all(
            isinstance(v, dict) and all(isinstance(m, dict) for m in v.values())
            for v in obj["metrics"].values()
        )
    ):
        return "leaderboard"
    if (
        isinstance(obj.get("scores"), dict)
        and set(obj) <= {"scale", "scores"}
        and all(_is_number(v) for v in obj["scores"].values())
    ):
        return "mapping"
    if all(_is_number(v) for v in obj.values()):
        return "vlm2vec_task" if all(_is_metric_key(k) for k in obj) else "mapping"
    return None


def _read_file(path: Path, out: _Collector, explicit: bool) -> None:
    source = str(path)
    try:
        obj = read_json(path)
    except DataError:
        if explicit:
            raise
        out.skipped.append(source)  # a half-written or foreign .json in a results folder is not a result
        return
    kind = _classify(obj)
    if kind is None:
        if explicit:
            raise DataError(
                Problem(
                    source,
                    "not a result file: expected an embedrl task result, the VLM2Vec / "
                    "Embed-RL score layout or a {name: score} mapping",
                )
            )
        out.skipped.append(source)
    elif kind == "embedrl":
        _read_embedrl_result(obj, source, out)
    elif kind == "leaderboard":
        _read_leaderboard(obj, source, out)
    elif kind == "vlm2vec_task":
        if out.benchmark != reg.MMEB_V2:
            out.notes.append(f"{source}: VLM2Vec per-task score file; skipped")
            return
        name = path.stem.removesuffix("_score")
        _read_metric_dict(name, obj, source, out)
    else:
        _read_mapping(obj, source, out)


def collect(paths: Sequence[str | Path], benchmark: str) -> tuple[dict[str, TaskScore], list[str]]:
    """Task scores (percent, keyed by registry name) from files and folders, plus notes on what was skipped."""
    canonical = reg.canonical_benchmark(benchmark)
    if canonical is None:
        raise DataError(Problem("--benchmark", f"unknown benchmark {benchmark!r}; expected mmeb-v2 or uvrb"))
    out = _Collector(canonical)
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.json") if p.is_file())
            if not files:
                out.notes.append(f"{path}: no .json files")
            for file in files:
                _read_file(file, out, explicit=False)
        elif path.is_file():
            _read_file(path, out, explicit=True)
        else:
            raise DataError(Problem(str(path), "no such file or folder"))
    if out.skipped:
        shown = ", ".join(out.skipped[:5]) + (", ..." if len(out.skipped) > 5 else "")
        out.notes.append(
            f"{len(out.skipped)} JSON file(s) in the folders are not result files, skipped: {shown}"
        )
    return out.scores, out.notes


# ------------------------------------------------------------------------------------------- aggregation


def mean_over(name: str, names: Iterable[str], scores: dict[str, float]) -> Mean:
    """Flat mean of the named tasks' scores over those present."""
    names = list(names)
    present = [scores[n] for n in names if n in scores]
    missing = tuple(n for n in names if n not in scores)
    value = sum(present) / len(present) if present else None
    return Mean(name, value, len(present), len(names), missing)


def mmeb_report(scores: dict[str, TaskScore], notes: Sequence[str] = ()) -> Report:
    values = {t: s.score for t, s in scores.items()}
    rows = [
        {
            "task": t.name,
            "modality": t.modality,
            "meta_task": t.meta_task,
            "metric": t.main_metric,
            "score": values.get(t.name),
            "source": scores[t.name].source if t.name in scores else None,
        }
        for t in reg.MMEB_TASKS
    ]
    meta = {
        m: mean_over(m, [t.name for t in reg.MMEB_TASKS if t.meta_task == m], values)
        for m in reg.MMEB_META_TASKS
    }
    modalities = {
        reg.MMEB_MODALITY_LABELS[mod]: mean_over(
            reg.MMEB_MODALITY_LABELS[mod], [t.name for t in reg.MMEB_TASKS if t.modality == mod], values
        )
        for mod in reg.MMEB_MODALITIES
    }
    overall = {"All": mean_over("All", [t.name for t in reg.MMEB_TASKS], values)}
    missing = [t.name for t in reg.MMEB_TASKS if t.name not in values]
    return Report(
        reg.MMEB_V2,
        rows,
        {"meta_tasks": meta, "modalities": modalities, "overall": overall},
        missing,
        list(notes),
    )


def _hier_mean(node: str, values: dict[str, float]) -> Mean:
    """GVE scheme: a node is the mean of its children's means (a dataset is its own score)."""
    leaves = reg.uvrb_leaves(node)
    if node not in reg.UVRB_TREE:
        return mean_over(node, leaves, values)
    children = [_hier_mean(child, values) for child in reg.UVRB_TREE[node]]
    present = [c.value for c in children if c.value is not None]
    missing = tuple(leaf for leaf in leaves if leaf not in values)
    value = sum(present) / len(present) if present else None
    return Mean(node, value, len(leaves) - len(missing), len(leaves), missing)


def _flat_mean(node: str, values: dict[str, float]) -> Mean:
    """Embed-RL scheme: a node is the plain mean of all datasets under it."""
    return mean_over(node, reg.uvrb_leaves(node), values)


def _ability_average(columns: dict[str, Mean], values: dict[str, float]) -> Mean:
    """AVG = mean(TXT, CMP, VIS, CG, FG, LC); partial when any of the 16 datasets is missing."""
    present = [columns[a].value for a in reg.UVRB_ABILITIES if columns[a].value is not None]
    all_datasets = [d.name for d in reg.UVRB_DATASETS]
    missing = tuple(n for n in all_datasets if n not in values)
    value = sum(present) / len(present) if present else None
    return Mean("AVG", value, len(all_datasets) - len(missing), len(all_datasets), missing)


def uvrb_report(scores: dict[str, TaskScore], notes: Sequence[str] = ()) -> Report:
    values = {t: s.score for t, s in scores.items()}
    rows = [
        {
            "task": d.name,
            "metric": d.paper_metric,
            "metric_name": d.metric,
            "score": values.get(d.name),
            "source": scores[d.name].source if d.name in scores else None,
        }
        for d in reg.UVRB_DATASETS
    ]
    sections: dict[str, dict[str, Mean]] = {
        "avg_datasets": {
            "AVG_datasets": mean_over("AVG_datasets", [d.name for d in reg.UVRB_DATASETS], values)
        },
    }
    for section, node_mean in (("abilities_hier", _hier_mean), ("abilities_flat", _flat_mean)):
        columns = {c: node_mean(c, values) for c in reg.UVRB_COLUMNS}
        sections[section] = {"AVG": _ability_average(columns, values), **columns}
    missing = [d.name for d in reg.UVRB_DATASETS if d.name not in values]
    return Report(reg.UVRB, rows, sections, missing, list(notes))


def build_report(benchmark: str, paths: Sequence[str | Path]) -> Report:
    """Collect results from files and folders and aggregate them for `benchmark` ("mmeb-v2" or "uvrb")."""
    scores, notes = collect(paths, benchmark)
    if not scores:
        raise DataError(
            Problem(
                ", ".join(map(str, paths)),
                f"no {reg.canonical_benchmark(benchmark)} results found"
                + (f" ({len(notes)} note(s): {notes[0]})" if notes else ""),
            )
        )
    if reg.canonical_benchmark(benchmark) == reg.MMEB_V2:
        return mmeb_report(scores, notes)
    return uvrb_report(scores, notes)


# ---------------------------------------------------------------------------------------------- rendering


def _score_text(value: float | None) -> str:
    return "missing" if value is None else fmt(value)


def render_markdown(report: Report) -> str:
    lines = [f"# {report.benchmark} report", ""]
    if report.benchmark == reg.MMEB_V2:
        lines += ["| Modality | Meta-task | Task | Metric | Score |", "|---|---|---|---|---:|"]
        for row in report.tasks:
            lines.append(
                f"| {reg.MMEB_MODALITY_LABELS[row['modality']]} | {row['meta_task']} | {row['task']} | "
                f"{row['metric']} | {_score_text(row['score'])} |"
            )
        lines += ["", "| Group | Score | Tasks |", "|---|---:|---:|"]
        for section in ("meta_tasks", "modalities", "overall"):
            for label, mean in report.sections[section].items():
                shown = (
                    "**All**"
                    if section == "overall"
                    else (f"**{label}**" if section == "modalities" else label)
                )
                lines.append(f"| {shown} | {mean.text()} | {mean.n}/{mean.total} |")
        lines += [
            "",
            "Scores ×100: hit@1 for Image and Video, ndcg_linear@5 for VisDoc. Meta-task, modality and "
            "overall scores are flat means over their tasks, as in the official MMEB-V2 aggregation.",
        ]
    else:
        lines += ["| # | Dataset | Metric | Score |", "|---:|---|---|---:|"]
        for i, row in enumerate(report.tasks, 1):
            lines.append(f"| {i} | {row['task']} | {row['metric']} | {_score_text(row['score'])} |")
        avg = report.sections["avg_datasets"]["AVG_datasets"]
        columns = list(report.sections["abilities_hier"])
        lines += [
            "",
            f"16-dataset average: {avg.text()}",
            "",
            "| Scheme | " + " | ".join(columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for section, title in (
            ("abilities_hier", "hierarchical (GVE)"),
            ("abilities_flat", "flat (Embed-RL)"),
        ):
            lines.append(
                f"| {title} | " + " | ".join(m.text(1) for m in report.sections[section].values()) + " |"
            )
        lines += [
            "",
            "Scores ×100. R@k is hit@k (Embed-RL's UVRB script), P@1 is precision@1. "
            "AVG = mean(TXT, CMP, VIS, CG, FG, LC). "
            f"Hierarchical: {SCHEME_LABELS['abilities_hier']}. Flat: {SCHEME_LABELS['abilities_flat']}.",
        ]
    if report.missing:
        lines += [
            "",
            f"**Missing ({len(report.missing)}):** " + ", ".join(report.missing),
            "Means marked partial average only the tasks present.",
        ]
    if report.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def render_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["level", "name", "group", "metric", "score", "n", "total", "partial"])
    for row in report.tasks:
        score = "" if row["score"] is None else f"{row['score']:.4f}"
        level = "task" if report.benchmark == reg.MMEB_V2 else "dataset"
        group = row.get("meta_task", "")
        writer.writerow(
            [
                level,
                row["task"],
                group,
                row["metric"],
                score,
                int(row["score"] is not None),
                1,
                row["score"] is None,
            ]
        )
    for section, means in report.sections.items():
        for label, mean in means.items():
            score = "" if mean.value is None else f"{mean.value:.4f}"
            writer.writerow([section, label, "", "", score, mean.n, mean.total, mean.partial])
    return buffer.getvalue()


def render(report: Report, fmt: str) -> str:
    if fmt == "md":
        return render_markdown(report)
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return render_csv(report)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# -------------------------------------------------------------------------------------------------- plot


def plot_report(report: Report, path: str | Path) -> Path:
    """Bar chart PNG: MMEB-V2 modality and overall scores, or UVRB ability columns in both schemes.
    Partial means are hatched and labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if report.benchmark == reg.MMEB_V2:
        series = {"score": {**report.sections["modalities"], **report.sections["overall"]}}
        title = "MMEB-V2: modality and overall scores (flat means over tasks)"
    else:
        series = {
            "hierarchical (GVE)": report.sections["abilities_hier"],
            "flat (Embed-RL)": report.sections["abilities_flat"],
        }
        title = "UVRB ability scores"
    labels = list(next(iter(series.values())))
    width = 0.8 / len(series)
    for s, (name, means) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(labels))]
        heights = [means[label].value or 0.0 for label in labels]
        bars = ax.bar(xs, heights, width, label=name if len(series) > 1 else None)
        for bar, label in zip(bars, labels):
            mean = means[label]
            if mean.partial:
                bar.set_hatch("//")
            text = "n/a" if mean.value is None else fmt(mean.value, 1) + ("*" if mean.partial else "")
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("score (×100)")
    ax.set_ylim(0, 105)
    partial = any(m.partial for means in series.values() for m in means.values())
    ax.set_title(title + ("\n* hatched: partial mean (tasks missing)" if partial else ""), fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path
