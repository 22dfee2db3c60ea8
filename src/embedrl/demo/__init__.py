"""The embedded default job: Embed-RL's whole loop on a synthetic benchmark where the evidence matters, offline.

Per seed (seeds run in parallel worker processes, one CPU thread each on a small machine):

1. data: the evidence benchmark (embedrl.data.synthetic, synthetic v2) with train / RL / test splits: SynCrop
   (image -> label, bbox cue), SynEvent (video -> label, keyframes cue), SynClause (text -> label, keywords
   cue), and a noisy synthetic teacher's T-CoTs (half of them loose, a tenth wrong);
2. stage 1: a tiny Qwen3-VL Embedder trained contrastively on the teacher's T-CoTs, and a second one trained on
   the raw inputs (the no-T-CoT baseline);
3. SFT cold start: the Reasoner learns the teacher's T-CoTs (vision tower frozen). It starts from a shipped
   tiny base Reasoner (embedrl/resources/demo-reasoner, made by `python -m embedrl.demo.base` on a separate
   split) that stands in for a pretrained VLM: it can answer grounding questions in JSON but has never written
   a T-CoT;
4. EG-RL: GRPO on the Reasoner with the paper's rewards (0.05 format, 0.2 in-batch outcome from the frozen
   Embedder, 0.8 process from a judge); the judge is a ground-truth synthetic judge (it reads each T-CoT's
   evidence with the benchmark's ground truth; a tiny random language model cannot judge);
5. evaluation on the test split: (a) no T-CoT, (b) teacher T-CoTs, (c) SFT Reasoner, (d) SFT + EG-RL
   Reasoner, (e) oracle T-CoTs, and with --ablations EG-RL without the outcome / process reward.

Then report.md, report.json and PNGs (curves, gallery) in --out. Tiny models and drawn tiles: the numbers
show whether the loop works on a task built for it; they say nothing about Embed-RL on real benchmarks.
Every phase is skipped when its output exists, so an interrupted demo resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import read_json, write_json
from .stages import (
    ABLATION_ROWS,
    COST,
    ROW_LABELS,
    ROWS,
    Progress,
    _base_embedder,
    _data,
    _egrl,
    _finished,
    _Phase,
    _render,
    _say,
    _sft,
    _stage1,
    base_reasoner,
    demo_prompt,
    greedy_training_reward,
    rl_config,
    seed_dir,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ settings


@dataclass
class DemoSettings:
    """What the demo runs. `DemoSettings.quick_preset(out)` is the `--quick` preset."""

    out: Path
    seeds: int = 3
    first_seed: int = 0
    quick: bool = False
    workers: int = 0  # parallel seed processes; 0: min(seeds, 2 x CPU cores)
    ablations: bool = False
    split: str = "test"  # "dev": a separate split for tuning; reported numbers use "test"
    # data (groups of 4 labels; x4 items)
    train_groups: int = 24
    rl_groups: int = 16
    test_groups: int = 12
    noise_loose: float = 0.5
    noise_wrong: float = 0.1
    # budgets
    stage1_steps: int = 300
    raw_steps: int = 300
    sft_steps: int = 600
    sft_lr: float = 2e-3
    rl_steps: int = 60
    rl_lr: float = 2e-4  # chosen on the dev split: 1e-4 left one seed's loose boxes loose
    rl_generations: int = 4
    max_new_tokens: int = 96
    judge: str = "ground-truth"  # or "none" (process weight 0)

    @classmethod
    def quick_preset(cls, out: Path, **overrides: Any) -> DemoSettings:
        # The SFT Reasoner keeps the default's training data: with less (16 groups, 300 steps) its boxes were
        # wrong for half of the SynCrop items of some seeds and 30 EG-RL steps could not move its reward; with
        # these settings (and the default's RL learning rate) the greedy training reward rose in each of seeds 0-2.
        values = dict(
            out=out,
            seeds=1,
            quick=True,
            rl_groups=8,
            test_groups=6,
            stage1_steps=150,
            raw_steps=100,
            sft_steps=450,
            rl_steps=30,
        )
        values.update(overrides)
        return cls(**values)

    def record(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _score(
    tasks: list[Path],
    embedder_path: Path,
    reasoner_path: Path | None,
    reasoning: str,
    settings: DemoSettings,
    out: Path,
) -> dict[str, Any]:
    """Scores of one configuration on the test tasks, with every query's T-CoT and its grade (cached in `out`)."""
    if out.is_file():
        return read_json(out)
    from ..data.synthetic import grade_tcot
    from ..data.taskdir import read_task
    from ..eval.runner import encode_task, task_frames
    from ..eval.scoring import score_task
    from ..models.embedder import Embedder
    from ..models.reasoner import GenerationSettings, Reasoner
    from ..pipeline import EncodeSettings

    embedder = Embedder.from_pretrained(embedder_path)
    reasoner = None
    if reasoner_path is not None:
        reasoner = Reasoner.from_pretrained(
            reasoner_path,
            batch_size=16,
            prompt_fn=demo_prompt,
            settings=GenerationSettings(max_new_tokens=settings.max_new_tokens),
        )
    result: dict[str, Any] = {"tasks": {}}
    for folder in tasks:
        task = read_task(folder)
        common = EncodeSettings(
            reasoning=reasoning, batch_size=16, progress=False, num_frames=task_frames(task)
        )
        cands, queries = encode_task(task, embedder, reasoner, common)
        failures = cands.failures + queries.failures
        if failures:
            raise RuntimeError(f"{task.meta.task}: {len(failures)} item(s) failed: {failures[0]}")
        scored = score_task(task, query_emb=queries.vectors, cand_emb=cands.vectors)
        grades = [
            grade_tcot(q.meta["gt"], t) if reasoning != "off" else None
            for q, t in zip(task.queries, queries.tcots)
        ]
        result["tasks"][task.meta.task] = {
            "score": 100 * scored["main_score"],
            "metric": scored["primary_metric"],
            "queries": [
                {"qid": q.id, "tcot": t, "grade": g} for q, t, g in zip(task.queries, queries.tcots, grades)
            ],
            "candidate_tcots_parsed": sum(
                1
                for g in (grade_tcot(c.meta["gt"], t) for c, t in zip(task.candidates, cands.tcots))
                if g != "unparsable"
            )
            if reasoning != "off"
            else None,
        }
    scores = [t["score"] for t in result["tasks"].values()]
    result["mean"] = sum(scores) / len(scores)
    write_json(out, result)
    return result


def run_seed(settings: DemoSettings, seed: int, queue: Any = None) -> dict[str, Any]:
    """Every phase of one seed; returns (and writes to seed-N/summary.json) the seed's rows and timings."""
    _configure_threads()
    progress = Progress(seed, queue)
    root = seed_dir(settings, seed)
    root.mkdir(parents=True, exist_ok=True)
    timings_file = root / "timings.json"
    # the times of the runs that made the phases this run reuses
    timings: dict[str, Any] = read_json(timings_file) if timings_file.is_file() else {}

    def phase(name: str, units: int, cost: float, reused: bool) -> _Phase:
        return _Phase(progress, timings, name, units, cost, reused=reused, timings_file=timings_file)

    data_items = 3 * 4 * (settings.train_groups + settings.rl_groups + settings.test_groups)
    with phase("data", data_items, COST["data"], (root / "data" / f"{settings.split}.done").is_file()):
        data = _data(settings, seed, root)
        base = _base_embedder(root / "models" / "embedder-base", seed)
    with phase(
        "stage 1: T-CoT Embedder", settings.stage1_steps, COST["stage1"], _finished(root / "stage1-tcot")
    ):
        embedder = _stage1(
            base, data["train"], root / "stage1-tcot", settings.stage1_steps, True, seed, progress
        )
    with phase("stage 1: raw Embedder", settings.raw_steps, COST["raw"], _finished(root / "stage1-raw")):
        raw = _stage1(base, data["train"], root / "stage1-raw", settings.raw_steps, False, seed, progress)
    with phase("SFT cold start", settings.sft_steps, COST["sft"], _finished(root / "sft")):
        sft = _sft(settings, base_reasoner(), data["train"], root / "sft", seed, progress)
    with phase("EG-RL", settings.rl_steps, COST["rl"], _finished(root / "egrl")):
        rl = _egrl(settings, sft, embedder, data["rl"], root / "egrl", seed, progress)
    ablations = {}
    if settings.ablations:
        for variant in ("wo_outcome", "wo_process"):
            name = f"EG-RL {variant.replace('_', ' ')}"
            with phase(name, settings.rl_steps, COST["rl"], _finished(root / f"egrl-{variant}")):
                ablations[f"egrl_{variant}"] = _egrl(
                    settings, sft, embedder, data["rl"], root / f"egrl-{variant}", seed, progress, variant
                )
    runs: dict[str, tuple] = {
        "no_tcot": (data["oracle"], raw, None, "off"),
        "teacher": (data["teacher"], embedder, None, "cached"),
        "sft": (data["oracle"], embedder, sft, "generate"),
        "egrl": (data["oracle"], embedder, rl, "generate"),
        "oracle": (data["oracle"], embedder, None, "cached"),
        **{key: (data["oracle"], embedder, path, "generate") for key, path in ablations.items()},
    }
    units = sum(COST["eval_reasoner"] if r[2] is not None else COST["eval_cached"] for r in runs.values())
    units += COST["eval_reasoner"] * (2 + len(ablations))
    rows: dict[str, Any] = {}
    scores = [root / "scores" / f"{key}.json" for key in runs]
    with phase("evaluation", len(runs), units / len(runs), all(f.is_file() for f in scores)):
        for key, (tasks, emb, reasoner, mode) in runs.items():
            rows[key] = _score(tasks, emb, reasoner, mode, settings, root / "scores" / f"{key}.json")
            progress.advance(1)
        # the reward EG-RL was trained on, for the SFT and the EG-RL Reasoners' greedy T-CoTs on the RL pairs
        training_reward = {
            name: greedy_training_reward(
                settings, path, embedder, data["rl"], seed, root / "scores" / f"training-reward-{name}.json"
            )
            for name, path in (("sft", sft), ("egrl", rl), *ablations.items())
        }
    summary = {
        "seed": seed,
        "rows": rows,
        "timings": timings,
        "training_reward": training_reward,
        "egrl_weights_changed": _weights_changed(sft, rl),
        "reward_history": {
            name: _read_list(root / folder / "reward_history.json")
            for name, folder in (("egrl", "egrl"), *((k, f"egrl-{k[5:]}") for k in ablations))
        },
        "logs": {
            name: _log_history(root / folder)
            for name, folder in (
                ("stage1_tcot", "stage1-tcot"),
                ("stage1_raw", "stage1-raw"),
                ("sft", "sft"),
                ("egrl", "egrl"),
                *((k, f"egrl-{k[5:]}") for k in ablations),
            )
        },
    }
    write_json(root / "summary.json", summary, indent=1)
    progress.send("finished")
    return summary


def _read_list(path: Path) -> list:
    return read_json(path) if path.is_file() else []


def _log_history(folder: Path) -> list[dict]:
    path = folder / "log_history.json"
    return read_json(path) if path.is_file() else []


def _weights_changed(before: Path, after: Path) -> dict[str, float]:
    """How far EG-RL moved the Reasoner's weights: the largest absolute change and how many tensors changed."""
    from safetensors.numpy import load_file

    a, b = load_file(str(before / "model.safetensors")), load_file(str(after / "model.safetensors"))
    import numpy as np

    diffs = {k: float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a if k in b}
    return {
        "max_abs_change": max(diffs.values(), default=0.0),
        "tensors_changed": sum(1 for d in diffs.values() if d > 0),
        "tensors": len(diffs),
    }


def _configure_threads() -> None:
    threads = int(os.environ.get("EMBEDRL_DEMO_THREADS", "0") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- orchestration


def _seed_worker(settings: DemoSettings, seed: int, queue: Any) -> None:
    try:
        run_seed(settings, seed, queue)
    except BaseException as exc:  # reported to the main process, which stops the demo
        import traceback

        queue.put(
            {
                "kind": "failed",
                "seed": seed,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        )
        raise


def _run_seeds(settings: DemoSettings) -> list[dict]:
    """Run the seeds, `workers` at a time in separate processes (one CPU thread each on a 2-core machine), and
    show their progress; returns their summaries."""
    seeds = list(range(settings.first_seed, settings.first_seed + settings.seeds))
    # Default: every seed at once, one thread each while there are fewer cores than seeds. The tiny models keep a
    # core's threads waiting on each other; on 2 cores three one-thread seeds finish before two, then one.
    workers = settings.workers or min(len(seeds), 2 * (os.cpu_count() or 1))
    workers = max(1, min(workers, len(seeds)))
    if workers == 1:
        return [run_seed(settings, s) for s in seeds]
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {
        "EMBEDRL_DEMO_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    state: dict = {}
    waiting, running = list(seeds), {}
    failure = None
    try:
        while (waiting or running) and failure is None:
            while waiting and len(running) < workers:
                seed = waiting.pop(0)
                proc = ctx.Process(target=_seed_worker, args=(settings, seed, queue), daemon=True)
                proc.start()
                running[seed] = proc
            time.sleep(0.2)
            while not queue.empty():
                message = queue.get()
                if message["kind"] == "failed":
                    failure = message
                    break
                _render(message, state)
            for seed in [s for s, p in running.items() if not p.is_alive()]:
                proc = running.pop(seed)
                if proc.exitcode != 0 and failure is None:
                    failure = {
                        "seed": seed,
                        "error": f"worker exited with code {proc.exitcode}",
                        "traceback": "",
                    }
    finally:
        for proc in running.values():
            proc.terminate()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if failure is not None:
        raise RuntimeError(f"seed {failure['seed']} failed: {failure['error']}\n{failure['traceback']}")
    return [read_json(seed_dir(settings, s) / "summary.json") for s in seeds]


# Settings that only choose which seeds run, how, and which extra rows: any other difference makes a folder's
# saved phases (skipped on a rerun) belong to another experiment.
_RESUME_FREE = {"out", "seeds", "first_seed", "workers", "ablations"}


def _check_resumable(settings: DemoSettings) -> None:
    """Refuse to resume into a folder written with other settings: its phases would be reused as they are."""
    from ..errors import ConfigError

    saved_file = settings.out / "settings.json"
    if not saved_file.is_file():
        if any(settings.out.glob("seed-*")):
            raise ConfigError(
                f"{settings.out} holds seed folders but no settings.json (not written by this version of "
                "`embedrl demo`): its finished phases cannot be checked. Choose another --out, or delete it."
            )
        return
    saved, now = read_json(saved_file), settings.record()
    changed = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    if changed:
        raise ConfigError(
            f"{saved_file}: this folder holds a demo run with other settings ("
            + ", ".join(f"{k}: {saved.get(k, '(not set)')!r} there, {now[k]!r} now" for k in changed)
            + "); its finished phases would be reused as they are. Choose another --out, or delete the folder."
        )


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run every seed (resuming what exists), then write report.json, report.md and the PNGs; returns the report."""
    from .report import build_report, write_report

    start = time.perf_counter()
    settings.out.mkdir(parents=True, exist_ok=True)
    _check_resumable(settings)
    write_json(settings.out / "settings.json", settings.record())
    _say(
        f"output folder: {settings.out}; seeds {settings.first_seed}..{settings.first_seed + settings.seeds - 1}"
        f"{' (quick)' if settings.quick else ''}; evaluating on the {settings.split} split"
    )
    summaries = _run_seeds(settings)
    report = build_report(settings, summaries, seconds=time.perf_counter() - start)
    write_report(settings, report, summaries)
    print()
    print(report["table_md"])
    print()
    for line in report["verdict"]:
        print(line)
    _say(f"done in {time.perf_counter() - start:.0f} s; report: {settings.out / 'report.md'}")
    return report


__all__ = [
    "ABLATION_ROWS",
    "ROW_LABELS",
    "ROWS",
    "DemoSettings",
    "demo_prompt",
    "rl_config",
    "run_demo",
    "run_seed",
]
