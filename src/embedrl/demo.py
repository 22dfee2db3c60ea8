"""The embedded default job: the whole Embed-RL pipeline on the synthetic benchmark with tiny models, offline.

1. build tiny Qwen3-VL checkpoints (Reasoner, Embedder, judge) — random weights, nothing downloaded;
2. write the synthetic benchmark (5 tasks) and training pairs with oracle teacher T-CoTs;
3. stage 1: train the Embedder contrastively on T-CoT-conditioned pairs;
4. stage 2: a few EG-RL steps on the Reasoner, rewarded by the frozen trained Embedder and a listwise judge;
5. evaluate four configurations on the five tasks and print one table.

What the numbers mean: the models are tiny and random at start, the data are drawn shapes. The table shows
that the machinery works end to end and how much evidence the T-CoT carries (oracle T-CoTs vs none); it says
nothing about Embed-RL's quality on real benchmarks, which needs real checkpoints and a GPU.
Every stage is skipped when its output exists, so an interrupted demo resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .fileio import write_json, write_text

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    out: Path
    n_eval: int = 24
    n_train: int = 96
    stage1_steps: int = 40
    stage2_steps: int = 4
    max_new_tokens: int = 48
    seed: int = 0


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _models(s: DemoSettings) -> dict[str, Path]:
    from .models.embedder import Embedder
    from .models.tiny import make_tiny

    root = s.out / "models"
    paths = {"embedder": root / "embedder", "reasoner": root / "reasoner", "judge": root / "judge"}
    for role, path in paths.items():
        if (path / "config.json").is_file():
            continue
        seed = {"embedder": s.seed, "reasoner": s.seed + 1, "judge": s.seed + 2}[role]
        make_tiny("qwen3-vl", path, seed=seed)
        if role == "embedder":
            Embedder.from_pretrained(path).save_pretrained(path)
    return paths


def _data(s: DemoSettings) -> tuple[list[Path], Path]:
    from .data.synthetic import write_benchmark, write_training_pairs

    bench = s.out / "data" / "benchmark"
    tasks = sorted((bench / "synthetic").glob("*/task.json"))
    if len(tasks) < 5:
        write_benchmark(bench, seed=s.seed, n=s.n_eval)
        tasks = sorted((bench / "synthetic").glob("*/task.json"))
    pairs = s.out / "data" / "train" / "pairs.jsonl"
    if not pairs.is_file():
        write_training_pairs(pairs, seed=s.seed + 1, n=s.n_train)
    return [t.parent for t in tasks], pairs


def _stage1(s: DemoSettings, embedder: Path, pairs_file: Path) -> Path:
    from .train.pairs import read_pairs
    from .train.stage1 import EmbedderTrainingConfig, train_embedder

    out = s.out / "stage1"
    if (out / "final" / "config.json").is_file():
        return out / "final"
    values = dict(EmbedderTrainingConfig.PRESETS["tiny"])
    values.update(output_dir=str(out), max_steps=s.stage1_steps, use_cpu=True, report_to="none", seed=s.seed,
                  disable_tqdm=True, logging_steps=10)
    return train_embedder(embedder, read_pairs(pairs_file), EmbedderTrainingConfig(**values))


def _stage2(s: DemoSettings, reasoner: Path, embedder: Path, judge_path: Path, pairs_file: Path) -> Path:
    from .models.embedder import Embedder
    from .models.reasoner import TransformersBackend
    from .train.egrl import EGRLConfig, Judge, local_embed_fn, train_reasoner
    from .train.pairs import read_pairs

    out = s.out / "stage2"
    if (out / "final" / "config.json").is_file():
        return out / "final"
    values = dict(EGRLConfig.PRESETS["tiny"])
    values.update(output_dir=str(out), max_steps=s.stage2_steps, use_cpu=True, report_to="none", seed=s.seed,
                  max_completion_length=s.max_new_tokens, save_strategy="no", logging_steps=1,
                  disable_tqdm=True)
    frozen = local_embed_fn(Embedder.from_pretrained(embedder))
    judge = Judge(TransformersBackend.from_pretrained(judge_path))
    final, _ = train_reasoner(reasoner, read_pairs(pairs_file), EGRLConfig(**values), frozen, judge)
    return final


def _evaluate(s: DemoSettings, tasks: list[Path], runs: dict[str, tuple]) -> dict[str, dict[str, dict]]:
    from .eval.runner import EvalSettings, evaluate_tasks
    from .models.embedder import Embedder
    from .models.reasoner import GenerationSettings, Reasoner

    table: dict[str, dict[str, dict]] = {}
    for label, (embedder_path, reasoner_path, reasoning) in runs.items():
        _say(f"evaluating '{label}'")
        embedder = Embedder.from_pretrained(embedder_path)
        reasoner = None
        if reasoner_path is not None:
            reasoner = Reasoner.from_pretrained(reasoner_path, batch_size=8,
                                                settings=GenerationSettings(max_new_tokens=s.max_new_tokens))
        settings = EvalSettings(reasoning=reasoning, batch_size=8, label=label, progress=False)
        results, errors = evaluate_tasks(tasks, embedder, reasoner, out_dir=s.out / "results" / _slug(label),
                                         settings=settings)
        if errors:
            raise RuntimeError("; ".join(errors))
        table[label] = {r["task"]: r for r in results}
        if reasoner is not None:
            bad = sum(r["run"]["unparsed_tcots"] for r in results)
            total = sum(r["num_queries"] + r["num_candidates"] for r in results)
            _say(f"  the reasoner's T-CoTs: {total - bad} of {total} parse as a T-CoT")
    return table


def _last_log(run: Path, keys: tuple[str, ...]) -> str:
    """First and last logged values of `keys` in a run's log_history.json."""
    try:
        history = [h for h in json.loads((run / "log_history.json").read_text()) if keys[0] in h]
    except (OSError, json.JSONDecodeError):
        return "(no log)"
    if not history:
        return "(no log)"
    first, last = history[0], history[-1]
    return ", ".join(f"{k}: {first.get(k, float('nan')):.3f} -> {last.get(k, float('nan')):.3f}" for k in keys)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def render_table(table: dict[str, dict[str, dict]]) -> str:
    tasks = sorted({t for runs in table.values() for t in runs})
    metric = {t: next(r[t]["primary_metric"] for r in table.values() if t in r) for t in tasks}
    head = "| configuration | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " | mean |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 1)]
    for label, runs in table.items():
        scores = [100 * runs[t]["main_score"] for t in tasks]
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in scores) + f" | {sum(scores) / len(scores):.1f} |")
    return "\n".join(lines)


def run_demo(settings: DemoSettings) -> str:
    start = time.perf_counter()
    settings.out.mkdir(parents=True, exist_ok=True)
    _say(f"output folder: {settings.out}")
    paths = _models(settings)
    _say("tiny Qwen3-VL checkpoints ready (random weights, built offline)")
    tasks, pairs = _data(settings)
    _say(f"synthetic benchmark: {', '.join(t.name for t in tasks)}; training pairs: {pairs}")
    _say(f"stage 1: contrastive Embedder training ({settings.stage1_steps} steps, teacher T-CoTs)")
    trained = _stage1(settings, paths["embedder"], pairs)
    _say(f"  {_last_log(settings.out / 'stage1', ('loss', 'accuracy'))}")
    _say(f"stage 2: EG-RL on the Reasoner ({settings.stage2_steps} GRPO steps, frozen Embedder, judge)")
    rl_reasoner = _stage2(settings, paths["reasoner"], trained, paths["judge"], pairs)
    _say(f"  {_last_log(settings.out / 'stage2', ('reward', 'rewards/outcome/mean', 'acc', 'format_valid_rate'))}")
    runs = {
        "untrained embedder, no T-CoT": (paths["embedder"], None, "off"),
        "stage-1 embedder, no T-CoT": (trained, None, "off"),
        "stage-1 embedder + oracle T-CoTs": (trained, None, "cached"),
        "stage-1 embedder + EG-RL reasoner": (trained, rl_reasoner, "generate"),
    }
    table = _evaluate(settings, tasks, runs)
    text = render_table(table)
    note = ("Tiny random models on synthetic shapes: this checks the machinery and shows how much evidence the "
            "T-CoT carries (oracle T-CoTs vs none). A tiny reasoner trained for a few steps writes poor T-CoTs; "
            "real quality needs real checkpoints (see README, 'Real models on a GPU').")
    report = f"# embedrl demo\n\n{text}\n\n{note}\n\nTotal time: {time.perf_counter() - start:.0f} s\n"
    write_text(settings.out / "report.md", report)
    write_json(settings.out / "report.json", {label: {t: r["main_score"] for t, r in runs_.items()}
                                              for label, runs_ in table.items()})
    print()
    print(text)
    print()
    print(note)
    _say(f"done in {time.perf_counter() - start:.0f} s; report: {settings.out / 'report.md'}")
    return text

