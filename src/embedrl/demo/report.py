"""The demo's report: report.json (machine-readable), report.md (the table, the checks, the reading) and PNGs
(training curves, a gallery of test items before and after EG-RL)."""

from __future__ import annotations

import datetime
import math
import os
import platform
from pathlib import Path
from typing import Any

from ..fileio import write_json, write_text

TASKS = ("SynCrop", "SynEvent", "SynClause")
TASK_CUES = {"SynCrop": "bbox_2d", "SynEvent": "key_frames", "SynClause": "text_keywords"}
GRADES = ("exact", "loose", "wrong", "no_cue", "unparsable")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _std(values: list[float]) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _reward_trend(history: list[dict], key: str = "reward", k: int = 5) -> dict[str, float]:
    values = [h[key] for h in history if key in h]
    if not values:
        return {}
    k = max(1, min(k, len(values) // 2 or 1))
    return {"first": _mean(values[:k]), "last": _mean(values[-k:]), "steps": len(values), "window": k}


def reward_trend_by_task(history: list[dict]) -> dict[str, Any]:
    """EG-RL's mean weighted training reward over the first and the last third of its steps, per task (a step's
    pairs come from one task, whose rewards have their own level), and the mean over tasks."""
    by_task: dict[str, list[float]] = {}
    for entry in history:
        names = {d.split("#")[0] for d in entry.get("datasets", [])}
        if len(names) == 1 and "reward" in entry:
            by_task.setdefault(names.pop(), []).append(entry["reward"])
    out: dict[str, Any] = {"tasks": {}}
    for name, values in sorted(by_task.items()):
        k = max(1, len(values) // 3)
        out["tasks"][name] = {"first": _mean(values[:k]), "last": _mean(values[-k:]), "steps": len(values)}
    if out["tasks"]:
        out["first"] = _mean([t["first"] for t in out["tasks"].values()])
        out["last"] = _mean([t["last"] for t in out["tasks"].values()])
    return out


def build_report(settings: Any, summaries: list[dict], seconds: float) -> dict[str, Any]:
    from .stages import ROW_LABELS

    keys = [k for k in ROW_LABELS if all(k in s["rows"] for s in summaries)]
    rows: dict[str, Any] = {}
    for key in keys:
        seed_means = [s["rows"][key]["mean"] for s in summaries]
        tasks = {}
        for task in TASKS:
            scores = [s["rows"][key]["tasks"][task]["score"] for s in summaries]
            grades: dict[str, float] = {}
            queries = [q for s in summaries for q in s["rows"][key]["tasks"][task]["queries"]]
            if queries and queries[0]["grade"] is not None:
                grades = {g: sum(q["grade"] == g for q in queries) / len(queries) for g in GRADES}
            tasks[task] = {
                "seed_scores": scores,
                "mean": _mean(scores),
                "std": _std(scores),
                "cue_grades": grades,
            }
        rows[key] = {
            "label": ROW_LABELS[key],
            "seed_means": seed_means,
            "mean": _mean(seed_means),
            "std": _std(seed_means),
            "tasks": tasks,
        }
    checks = _checks(rows)
    training = {
        "egrl_reward": [_reward_trend(s["logs"].get("egrl", [])) for s in summaries],
        "egrl_reward_by_task": [
            reward_trend_by_task(s.get("reward_history", {}).get("egrl", [])) for s in summaries
        ],
        "greedy_training_reward": [s.get("training_reward", {}) for s in summaries],
        "egrl_weights_changed": [s.get("egrl_weights_changed") for s in summaries],
        "stage1_tcot_loss": [_reward_trend(s["logs"].get("stage1_tcot", []), "loss") for s in summaries],
        "stage1_raw_loss": [_reward_trend(s["logs"].get("stage1_raw", []), "loss") for s in summaries],
        "sft_loss": [_reward_trend(s["logs"].get("sft", []), "loss") for s in summaries],
    }
    report = {
        "produced": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "seconds": round(seconds, 1),
        "seeds": [s["seed"] for s in summaries],
        "settings": settings.record(),
        "judge": (
            "ground-truth synthetic judge (reads each T-CoT's evidence with the benchmark's ground truth; "
            "not a model)"
        )
        if settings.judge == "ground-truth"
        else "none (process weight 0)",
        "reward_weights": _reward_weights(settings),
        "tasks": list(TASKS),
        "rows": rows,
        "checks": checks,
        "training": training,
        "timings": {str(s["seed"]): s["timings"] for s in summaries},
    }
    report["table_md"] = render_table(report)
    report["verdict"] = _verdict(report)
    return report


def _reward_weights(settings: Any) -> str:
    """The EG-RL reward weights the run used, as text."""
    from .stages import rl_config

    w = rl_config(settings, settings.out / "unused", 0).reward_weights_dict()
    return " + ".join(f"{w[k]:g} {k}" for k in ("format", "outcome", "process"))


def _checks(rows: dict[str, Any]) -> dict[str, Any]:
    """Each step of the shape: the difference of the means against the larger of the two rows' standard
    deviations over seeds. With one seed there is no spread, so nothing is claimed (`holds` is None)."""

    def beats(a: str, b: str) -> dict[str, Any]:
        if a not in rows or b not in rows:
            return {}
        diff = rows[a]["mean"] - rows[b]["mean"]
        spread = max(rows[a]["std"], rows[b]["std"])
        seeds = min(len(rows[a]["seed_means"]), len(rows[b]["seed_means"]))
        return {"difference": diff, "spread": spread, "holds": bool(diff > spread) if seeds >= 2 else None}

    out = {"egrl_over_sft": beats("egrl", "sft"), "sft_over_no_tcot": beats("sft", "no_tcot")}
    per_task = {}
    if "sft" in rows and "no_tcot" in rows:
        for task in ("SynCrop", "SynEvent"):
            per_task[task] = bool(rows["sft"]["tasks"][task]["mean"] > rows["no_tcot"]["tasks"][task]["mean"])
    out["sft_over_no_tcot_on_crop_and_keyframe_tasks"] = per_task
    steps = (out["egrl_over_sft"].get("holds"), out["sft_over_no_tcot"].get("holds"))
    if None in steps:
        out["shape_reached"] = None
    else:
        out["shape_reached"] = bool(all(steps) and per_task and all(per_task.values()))
    return out


def render_table(report: dict[str, Any]) -> str:
    head = "| configuration | " + " | ".join(f"{t} ({TASK_CUES[t]})" for t in TASKS) + " | mean ± std |"
    lines = [head, "|---|" + "---:|" * (len(TASKS) + 1)]
    for row in report["rows"].values():
        cells = [f"{row['tasks'][t]['mean']:.1f} ± {row['tasks'][t]['std']:.1f}" for t in TASKS]
        lines.append(
            f"| {row['label']} | " + " | ".join(cells) + f" | **{row['mean']:.1f} ± {row['std']:.1f}** |"
        )
    return "\n".join(lines)


def _verdict(report: dict[str, Any]) -> list[str]:
    c = report["checks"]
    lines = []
    for name, label in (
        ("egrl_over_sft", "(d) SFT + EG-RL over (c) SFT"),
        ("sft_over_no_tcot", "(c) SFT over (a) no T-CoT"),
    ):
        check = c.get(name) or {}
        if check:
            verdict = (
                "n/a (one seed: no spread to compare with)"
                if check["holds"] is None
                else "holds"
                if check["holds"]
                else "does NOT hold"
            )
            lines.append(
                f"{label}: {check['difference']:+.1f} points, seed spread {check['spread']:.1f} -> {verdict}"
            )
    per_task = c.get("sft_over_no_tcot_on_crop_and_keyframe_tasks") or {}
    if per_task:
        lines.append(
            "(c) above (a) on " + ", ".join(f"{t}: {'yes' if v else 'no'}" for t, v in per_task.items())
        )
    reached = c.get("shape_reached")
    lines.append(
        "the paper's shape (d) > (c) > (a), each step larger than the seed spread: "
        + (
            "n/a with one seed (run 2 or more)"
            if reached is None
            else "REACHED"
            if reached
            else "NOT reached"
        )
    )
    return lines


# ------------------------------------------------------------------------------------------- writing


def write_report(settings: Any, report: dict[str, Any], summaries: list[dict]) -> None:
    out = Path(settings.out)
    figures = []
    try:
        plot_curves(summaries, out / "curves.png")
        figures.append(("Training curves", "curves.png"))
        plot_gallery(settings, summaries[0], out / "gallery.png")
        figures.append((f"Gallery (seed {summaries[0]['seed']}, {settings.split} split)", "gallery.png"))
    except ImportError:  # matplotlib missing: the report without pictures
        pass
    report["figures"] = [f for _, f in figures]
    write_json(out / "report.json", {k: v for k, v in report.items() if k not in ("table_md",)}, indent=1)
    write_text(out / "report.md", render_markdown(report, figures))


def render_markdown(report: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    s = report["settings"]
    rows = report["rows"]
    lines = [
        "# embedrl demo: Embed-RL's loop on the synthetic evidence benchmark",
        "",
        f"Produced {report['produced']} on {report['machine']['platform']} ({report['machine']['cpu_count']} CPU "
        f"cores), seeds {', '.join(map(str, report['seeds']))}, {report['seconds']:.0f} s in all"
        f"{' (--quick)' if s['quick'] else ''}. Scores are hit@1 (%) on the {s['split']} split, mean ± standard "
        "deviation over seeds (each seed: its own data, models, training).",
        "",
        report["table_md"],
        "",
        "## Checks",
        "",
        *[f"- {line}" for line in report["verdict"]],
        "",
        "## What the rows are",
        "",
        "- **(a)** a stage-1 Embedder trained on the raw inputs, read without T-CoTs.",
        "- **(b)** the T-CoT Embedder (stage 1 on the teacher's T-CoTs) reading the noisy teacher's T-CoTs of the "
        f"test items (loose evidence for {100 * s['noise_loose']:.0f} % of queries, wrong for "
        f"{100 * s['noise_wrong']:.0f} %).",
        "- **(c)** the same Embedder reading T-CoTs that the SFT Reasoner writes (greedy).",
        f"- **(d)** the same, after EG-RL (frozen Embedder; rewards {report['reward_weights']}; judge: "
        f"{report['judge']}).",
        "- **(e)** the same Embedder reading oracle T-CoTs written from the ground truth: the ceiling of the "
        "evidence.",
    ]
    if "egrl_wo_outcome" in rows:
        lines.append("- **(d')/(d'')** EG-RL without the outcome reward / without the process reward.")
    lines += [
        "",
        "## What the Reasoner's cues are",
        "",
        "Share of test queries whose cue is exact (the target's cell, the event's frames, the target's words), "
        "loose (that and more), wrong, absent, or not a parsable T-CoT (all seeds):",
        "",
        "| configuration | task | exact | loose | wrong | no cue | unparsable |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        for task in TASKS:
            g = row["tasks"][task]["cue_grades"]
            if g:
                lines.append(
                    f"| {row['label']} | {task} | " + " | ".join(f"{100 * g[k]:.0f} %" for k in GRADES) + " |"
                )
    lines += ["", "## Training", ""]
    tr = report["training"]
    for seed, trend, changed in zip(report["seeds"], tr["egrl_reward_by_task"], tr["egrl_weights_changed"]):
        if trend.get("tasks"):
            per_task = ", ".join(
                f"{name} {t['first']:.2f} -> {t['last']:.2f}" for name, t in trend["tasks"].items()
            )
            lines.append(
                f"- seed {seed}: EG-RL mean weighted training reward, first third of its steps -> last third: "
                f"{trend['first']:.3f} -> {trend['last']:.3f} (per task: {per_task}); weights: max |change| "
                f"{changed['max_abs_change']:.2e} in {changed['tensors_changed']} of {changed['tensors']} "
                "tensors (the vision tower is frozen)"
            )
    for seed, greedy in zip(report["seeds"], tr["greedy_training_reward"]):
        if "sft" in greedy and "egrl" in greedy:
            per_task = ", ".join(
                f"{t} {greedy['sft']['by_task'][t]:.2f} -> {greedy['egrl']['by_task'][t]:.2f}"
                for t in greedy["sft"]["by_task"]
            )
            lines.append(
                f"- seed {seed}: the training reward of greedy T-CoTs on the RL pairs, SFT -> EG-RL Reasoner: "
                f"{greedy['sft']['mean']:.3f} -> {greedy['egrl']['mean']:.3f} ({per_task})"
            )
    lines += ["", "## Time per phase (seconds; budget in brackets, one CPU thread per seed)", ""]
    phases = list(next(iter(report["timings"].values())).keys())
    lines.append("| seed | " + " | ".join(phases) + " |")
    lines.append("|---|" + "---:|" * len(phases))
    for seed, timing in report["timings"].items():
        lines.append(
            f"| {seed} | "
            + " | ".join(
                (
                    f"{timing[p]['seconds']:.0f} ({timing[p]['budget']:.0f})"
                    + (" reused" if timing[p].get("reused") else "")
                )
                if p in timing
                else "-"
                for p in phases
            )
            + " |"
        )
    for title, name in figures:
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    lines += ["", "## Reading", "", *_reading(report), ""]
    return "\n".join(lines)


def _reading(report: dict[str, Any]) -> list[str]:
    rows = report["rows"]
    out = []

    def m(key: str, task: str | None = None) -> float:
        return rows[key]["mean"] if task is None else rows[key]["tasks"][task]["mean"]

    if {"no_tcot", "oracle"} <= set(rows):
        out.append(
            f"- Room for the Reasoner: oracle evidence lifts the mean from {m('no_tcot'):.1f} (raw inputs) "
            f"to {m('oracle'):.1f}; per task "
            + ", ".join(f"{t} {m('no_tcot', t):.1f} -> {m('oracle', t):.1f}" for t in TASKS)
            + "."
        )
    if {"teacher", "sft"} <= set(rows):
        out.append(
            f"- The SFT Reasoner learns the noisy teacher: {m('sft'):.1f} against the teacher's own "
            f"{m('teacher'):.1f}."
        )
    if {"sft", "egrl"} <= set(rows):
        out.append(
            f"- EG-RL moves the mean from {m('sft'):.1f} to {m('egrl'):.1f} "
            f"({m('egrl') - m('sft'):+.1f}); per task "
            + ", ".join(f"{t} {m('egrl', t) - m('sft', t):+.1f}" for t in TASKS)
            + "; per seed (same data and Embedder for both rows) "
            + ", ".join(
                f"{d - s:+.1f}" for d, s in zip(rows["egrl"]["seed_means"], rows["sft"]["seed_means"])
            )
            + "."
        )
        exact = {
            key: {t: rows[key]["tasks"][t]["cue_grades"].get("exact") for t in TASKS}
            for key in ("sft", "egrl")
        }
        if all(v is not None for per_task in exact.values() for v in per_task.values()):
            out.append(
                "- What EG-RL changed in the cues (share of exact cues, SFT -> EG-RL, all seeds): "
                + ", ".join(
                    f"{t} {100 * exact['sft'][t]:.0f} % -> {100 * exact['egrl'][t]:.0f} %" for t in TASKS
                )
                + "."
            )
    for key, what in (
        ("egrl_wo_outcome", "without the outcome reward"),
        ("egrl_wo_process", "without the process reward"),
    ):
        if key in rows:
            out.append(f"- EG-RL {what}: {m(key):.1f}.")
    out.append(
        "- Tiny random-initialised models on drawn tiles: the table shows that the loop (teacher T-CoTs -> "
        "SFT -> embedder-guided RL) does what it is built to do on a task built for it, not how Embed-RL "
        "performs on real data."
    )
    return out


# ------------------------------------------------------------------------------------------- figures


def plot_curves(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))

    def series(history: list[dict], key: str) -> tuple[list, list]:
        pts = [(h["step"], h[key]) for h in history if key in h and "step" in h]
        return [p[0] for p in pts], [p[1] for p in pts]

    for s in summaries:
        for name, style in (("stage1_tcot", "-"), ("stage1_raw", "--")):
            x, y = series(s["logs"].get(name, []), "loss")
            axes[0].plot(
                x, y, style, label=f"{'T-CoT' if 'tcot' in name else 'raw'} Embedder, seed {s['seed']}"
            )
        x, y = series(s["logs"].get("sft", []), "loss")
        axes[1].plot(x, y, label=f"seed {s['seed']}")
        hist = s["logs"].get("egrl", [])
        for key, color in (
            ("rewards/format/mean", "tab:gray"),
            ("rewards/outcome/mean", "tab:blue"),
            ("rewards/process/mean", "tab:orange"),
        ):
            x, y = series(hist, key)
            axes[2].plot(
                x, _smooth(y), color=color, alpha=0.8, label=key.split("/")[1] if s is summaries[0] else None
            )
        for key, color in (("format_valid_rate", "tab:green"), ("acc", "tab:purple")):
            x, y = series(hist, key)
            axes[3].plot(
                x,
                _smooth(y),
                color=color,
                alpha=0.8,
                label={"format_valid_rate": "parsable (format ok)", "acc": "in-batch Acc"}[key]
                if s is summaries[0]
                else None,
            )
    titles = (
        "Stage 1: contrastive loss",
        "SFT cold start: loss",
        "EG-RL: rewards (smoothed, per seed)",
        "EG-RL: parsable rate and Acc",
    )
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _smooth(values: list[float], k: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1) : i + 1]
        out.append(sum(window) / len(window))
    return out


def plot_gallery(settings: Any, summary: dict, path: Path, per_task: int = 2) -> None:
    """Test items of one seed: the ground truth, the SFT Reasoner's cue and the EG-RL Reasoner's cue. The first
    `per_task` queries of each task, whatever they show (no selection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt
    from PIL import Image

    from ..data.taskdir import read_task
    from ..tcot import parse
    from .stages import seed_dir

    bench = seed_dir(settings, summary["seed"]) / "data" / settings.split / "oracle"
    columns = [("ground truth (oracle)", None), ("SFT Reasoner", "sft"), ("SFT + EG-RL Reasoner", "egrl")]
    items = []
    for task in TASKS:
        t = read_task(bench / task)
        for q in t.queries[:per_task]:
            items.append((task, t, q))
    fig, axes = plt.subplots(len(items), len(columns), figsize=(15, 2.6 * len(items)))
    for r, (task, t, q) in enumerate(items):
        gt = q.meta["gt"]
        for c, (title, key) in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if key is None:
                tcot = q.meta["oracle_tcot"]
                grade = "exact"
            else:
                entry = next(e for e in summary["rows"][key]["tasks"][task]["queries"] if e["qid"] == q.id)
                tcot, grade = entry["tcot"], entry["grade"]
            parsed = parse(tcot or "").tcot
            caption = f"{task} {q.id}: label '{gt['label']}'" if c == 0 else f"cue: {grade}"
            if task == "SynCrop":
                img = Image.open(t.root / q.images[0]).convert("RGB")
                ax.imshow(img)
                for box in (parsed.bbox_2d or ()) if parsed else ():
                    x1, y1, x2, y2 = (v * img.width / 1000 for v in box)
                    ax.add_patch(
                        patches.Rectangle(
                            (x1, y1),
                            x2 - x1,
                            y2 - y1,
                            fill=False,
                            lw=3,
                            edgecolor="lime" if key is None else "magenta",
                        )
                    )
            elif task == "SynEvent":
                frames = [Image.open(t.root / f).convert("RGB").resize((96, 96)) for f in q.video.frames]
                strip = Image.new("RGB", (96 * len(frames) + 4 * (len(frames) - 1), 110), (255, 255, 255))
                for i, f in enumerate(frames):
                    strip.paste(f, (i * 100, 0))
                ax.imshow(strip)
                chosen = set((parsed.key_frames or ()) if parsed else ())
                for k in chosen:
                    if 1 <= k <= len(frames):
                        ax.add_patch(
                            patches.Rectangle(
                                ((k - 1) * 100, 0),
                                95,
                                95,
                                fill=False,
                                lw=3,
                                edgecolor="lime" if key is None else "magenta",
                            )
                        )
                for k in gt["event_frames"]:
                    ax.add_patch(patches.Rectangle(((k - 1) * 100, 100), 95, 6, color="lime"))
            else:
                words = ", ".join(parsed.text_keywords or ()) if parsed else "(no T-CoT)"
                ax.text(0.02, 0.6, q.text, fontsize=9, wrap=True, transform=ax.transAxes)
                ax.text(
                    0.02,
                    0.25,
                    f"keywords: {words}",
                    fontsize=10,
                    color="green" if key is None else "purple",
                    transform=ax.transAxes,
                )
            ax.set_title(f"{title}\n{caption}" if r == 0 else caption, fontsize=9)
    fig.suptitle(
        "Green: ground truth (oracle cue; bars under the event's frames). Magenta: the Reasoner's cue.",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
