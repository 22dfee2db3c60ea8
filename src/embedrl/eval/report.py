"""Aggregate per-task results into the MMEB-V2 and UVRB tables.

MMEB-V2 (benchmarks.md §1.6): task score = 100 × hit@1 (image, video) or 100 × ndcg_linear@5 (visdoc);
meta-task, modality and overall scores are FLAT means over their tasks (36 / 18 / 24 / 78), never means of
means. UVRB (§2.2): each dataset with its own metric, the 16-dataset mean, and the ability means in two
labelled schemes — hierarchical (GVE, the official numbers) and flat (Embed-RL's own rows).

Missing tasks are listed and every mean that lacks one of its tasks is marked partial (with n/N); nothing is
averaged silently over an incomplete set.

Inputs: folders (read recursively) or files holding embedrl per-task results (`score_task`), the VLM2Vec /
Embed-RL per-task layout (`{"metrics": {"image": {task: {metric: value}}, ...}}`), or, for UVRB, a plain
`{"dataset": score}` mapping (percentages, or fractions when every value is ≤ 1).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, Problem
from .registry import (
    MMEB_ALIASES,
    MMEB_META_TASKS,
    MMEB_MODALITIES,
    MMEB_TASKS,
    UVRB_ABILITIES,
    UVRB_ALIASES,
    UVRB_DATASETS,
)

log = logging.getLogger(__name__)


@dataclass
class Score:
    value: float | None          # percent
    n: int                       # tasks present
    total: int                   # tasks expected

    @property
    def partial(self) -> bool:
        return self.n < self.total

    def to_json(self) -> dict:
        return {"score": None if self.value is None else round(self.value, 4), "tasks": self.n, "of": self.total,
                "partial": self.partial}

    def text(self) -> str:
        if self.value is None:
            return "–"
        return f"{self.value:.2f}" + (f" (partial {self.n}/{self.total})" if self.partial else "")


def _mean(values: list[float | None], total: int) -> Score:
    present = [v for v in values if v is not None]
    return Score(float(np.mean(present)) if present else None, len(present), total)


@dataclass
class Report:
    benchmark: str
    tasks: dict[str, float]                      # task -> percent
    groups: dict[str, dict[str, Score]]          # section -> name -> score
    missing: list[str]
    sources: list[str]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "tasks": {k: round(v, 4) for k, v in self.tasks.items()},
            **{section: {k: s.to_json() for k, s in scores.items()} for section, scores in self.groups.items()},
            "missing": self.missing,
            "sources": self.sources,
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------- loading


def _records_from_json(obj: Any, source: str) -> list[dict]:
    if isinstance(obj, dict) and "task" in obj and isinstance(obj.get("metrics"), dict):
        return [dict(obj, _source=source)]
    if isinstance(obj, dict) and isinstance(obj.get("metrics"), dict) and set(obj["metrics"]) & set(MMEB_MODALITIES):
        out = []
        for modality, tasks in obj["metrics"].items():
            for task, metrics in (tasks or {}).items():
                out.append({"benchmark": "MMEB-V2", "task": task, "modality": modality, "metrics": metrics,
                            "_source": source})
        return out
    if isinstance(obj, dict) and obj and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in obj.values()):
        fraction = all(v <= 1.0 for v in obj.values())
        return [{"benchmark": "UVRB", "task": k, "percent": float(v) * (100 if fraction else 1), "_source": source}
                for k, v in obj.items()]
    return []


def load_results(paths: list[str | Path]) -> tuple[list[dict], list[str]]:
    """Result records from files and folders, and the list of files that held none."""
    records, skipped = [], []
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*.json") if "cache" not in p.parts) if path.is_dir() else [path]
        if not path.exists():
            raise DataError(Problem(str(path), "no such file or folder"))
        for file in files:
            try:
                obj = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(Problem(str(file), f"not a JSON file ({exc})")) from None
            found = _records_from_json(obj, str(file))
            if found:
                records.extend(found)
            else:
                skipped.append(str(file))
    return records, skipped


def _pick(records: list[dict], aliases: dict[str, str], known: dict, notes: list[str]) -> dict[str, dict]:
    chosen: dict[str, dict] = {}
    for rec in records:
        name = aliases.get(rec["task"], rec["task"])
        if name not in known:
            continue
        if name in chosen:
            notes.append(f"{name}: several results ({chosen[name]['_source']}, {rec['_source']}); the last is used")
        chosen[name] = rec
    return chosen


# ---------------------------------------------------------------------------------------------- MMEB-V2


def mmeb_report(records: list[dict]) -> Report:
    notes: list[str] = []
    chosen = _pick([r for r in records if "metrics" in r], MMEB_ALIASES, MMEB_TASKS, notes)
    tasks: dict[str, float] = {}
    for name, rec in chosen.items():
        metric = MMEB_TASKS[name].main_metric
        if metric not in rec["metrics"]:
            raise DataError(Problem(rec["_source"], f"task {name!r} has no {metric} (needed for its main score)"))
        tasks[name] = 100.0 * float(rec["metrics"][metric])
    meta = {m: _mean([tasks.get(t) for t in names], len(names)) for m, (_, names) in MMEB_META_TASKS.items()}
    modality = {}
    for mod in MMEB_MODALITIES:
        names = [t for t, spec in MMEB_TASKS.items() if spec.modality == mod]
        modality[mod] = _mean([tasks.get(t) for t in names], len(names))
    overall = {"All": _mean([tasks.get(t) for t in MMEB_TASKS], len(MMEB_TASKS))}
    missing = [t for t in MMEB_TASKS if t not in tasks]
    sources = sorted({r["_source"] for r in chosen.values()})
    return Report("MMEB-V2", tasks, {"meta_tasks": meta, "modalities": modality, "overall": overall}, missing,
                  sources, notes)


# ------------------------------------------------------------------------------------------------- UVRB


def uvrb_report(records: list[dict]) -> Report:
    notes: list[str] = []
    chosen = _pick(records, UVRB_ALIASES, UVRB_DATASETS, notes)
    data: dict[str, float] = {}
    for name, rec in chosen.items():
        if "percent" in rec:
            data[name] = rec["percent"]
            continue
        metric = UVRB_DATASETS[name].metric
        if metric not in rec["metrics"]:
            raise DataError(Problem(rec["_source"], f"dataset {name!r} has no {metric} (its UVRB metric)"))
        data[name] = 100.0 * float(rec["metrics"][metric])

    def of(names: list[str]) -> list[float | None]:
        return [data.get(n) for n in names]

    specs = list(UVRB_DATASETS.values())
    by = {
        "S": [d.name for d in specs if d.sub == "S"], "T": [d.name for d in specs if d.sub == "T"],
        "PR": [d.name for d in specs if d.sub == "PR"], "CG": [d.name for d in specs if d.domain == "CG"],
        "FG": [d.name for d in specs if d.domain == "FG"], "LC": [d.name for d in specs if d.domain == "LC"],
        "TXT": [d.name for d in specs if d.task == "TXT"], "CMP": [d.name for d in specs if d.task == "CMP"],
        "VIS": [d.name for d in specs if d.task == "VIS"],
    }
    flat = {k: _mean(of(v), len(v)) for k, v in by.items()}
    flat["AVG"] = _mean([flat[a].value for a in UVRB_ABILITIES], len(UVRB_ABILITIES))
    hier = {k: flat[k] for k in ("S", "T", "PR", "CG", "LC", "CMP", "VIS")}
    hier["FG"] = _counted_mean([hier["S"], hier["T"], hier["PR"]], len(by["FG"]))
    hier["TXT"] = _counted_mean([hier["CG"], hier["FG"], hier["LC"]], len(by["TXT"]))
    hier["AVG"] = _mean([hier[a].value for a in UVRB_ABILITIES], len(UVRB_ABILITIES))
    for scheme in (flat, hier):
        # an ability average is partial whenever an ability is partial
        if any(scheme[a].partial for a in UVRB_ABILITIES):
            scheme["AVG"] = Score(scheme["AVG"].value, min(scheme["AVG"].n, 5), 6)
    datasets = {"AVG_datasets": _mean(of(list(UVRB_DATASETS)), len(UVRB_DATASETS))}
    order = ("AVG", "TXT", "CMP", "VIS", "CG", "FG", "LC", "S", "T", "PR")
    missing = [d for d in UVRB_DATASETS if d not in data]
    return Report("UVRB", data, {
        "datasets_mean": datasets,
        "abilities_hier": {k: hier[k] for k in order},
        "abilities_flat": {k: flat[k] for k in order},
    }, missing, sorted({r["_source"] for r in chosen.values()}), notes + [
        "abilities_hier: GVE's hierarchical means (FG = mean of S, T, PR; TXT = mean of CG, FG, LC) — the "
        "official UVRB numbers; abilities_flat: plain dataset means (Embed-RL's own rows).",
        "R@k is hit@k (Embed-RL's UVRB script); P@1 = precision@1."])


def _counted_mean(parts: list[Score], total: int) -> Score:
    values = [p.value for p in parts if p.value is not None]
    return Score(float(np.mean(values)) if values else None, sum(p.n for p in parts), total)


def build_report(benchmark: str, paths: list[str | Path]) -> Report:
    records, skipped = load_results(paths)
    report = mmeb_report(records) if benchmark == "mmeb-v2" else uvrb_report(records)
    if skipped:
        report.notes.append(f"files without results skipped: {', '.join(skipped[:10])}")
    if not report.tasks:
        raise DataError(Problem(", ".join(map(str, paths)), f"no {report.benchmark} task results found"))
    return report


# ---------------------------------------------------------------------------------------------- output


def render_markdown(report: Report) -> str:
    lines = [f"# {report.benchmark}", ""]
    if report.benchmark == "MMEB-V2":
        lines += ["| modality | meta-task | task | score |", "|---|---|---|---:|"]
        for meta, (mod, names) in MMEB_META_TASKS.items():
            for t in names:
                value = f"{report.tasks[t]:.2f}" if t in report.tasks else "missing"
                lines.append(f"| {mod} | {meta} | {t} | {value} |")
        lines += ["", "| group | score |", "|---|---:|"]
        for section in ("meta_tasks", "modalities", "overall"):
            for name, score in report.groups[section].items():
                lines.append(f"| {name} | {score.text()} |")
    else:
        lines += ["| dataset | metric | score |", "|---|---|---:|"]
        for name, spec in UVRB_DATASETS.items():
            value = f"{report.tasks[name]:.2f}" if name in report.tasks else "missing"
            lines.append(f"| {name} | {spec.paper_metric} | {value} |")
        lines += ["", f"16-dataset mean: {report.groups['datasets_mean']['AVG_datasets'].text()}", "",
                  "| scheme | " + " | ".join(report.groups["abilities_hier"]) + " |",
                  "|---|" + "---:|" * len(report.groups["abilities_hier"])]
        for scheme in ("abilities_hier", "abilities_flat"):
            lines.append(f"| {scheme} | " + " | ".join(s.text() for s in report.groups[scheme].values()) + " |")
    if report.missing:
        lines += ["", f"Missing ({len(report.missing)}): {', '.join(report.missing)}"]
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def render_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["section", "name", "score", "tasks", "of", "partial"])
    for name, value in report.tasks.items():
        writer.writerow(["task", name, f"{value:.4f}", 1, 1, False])
    for section, scores in report.groups.items():
        for name, score in scores.items():
            writer.writerow([section, name, "" if score.value is None else f"{score.value:.4f}", score.n,
                             score.total, score.partial])
    return buf.getvalue()


def plot_report(report: Report, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report.benchmark == "MMEB-V2":
        panels = {"modalities + overall": {**report.groups["modalities"], **report.groups["overall"]},
                  "meta-tasks": report.groups["meta_tasks"]}
    else:
        panels = {"abilities (hierarchical, GVE)": report.groups["abilities_hier"],
                  "abilities (flat)": report.groups["abilities_flat"]}
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
    for ax, (title, scores) in zip(axes[0], panels.items()):
        names = list(scores)
        values = [scores[n].value or 0.0 for n in names]
        bars = ax.bar(names, values, color=["#999999" if scores[n].partial else "#3b6ea8" for n in names])
        for bar, name in zip(bars, names):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{scores[name].value or 0:.1f}",
                    ha="center", va="bottom", fontsize=7)
        ax.set_title(title + (" (grey: partial)" if any(s.partial for s in scores.values()) else ""))
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.suptitle(report.benchmark)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
