"""The demo's building blocks, shared by the demo (`embedrl.demo`) and the base Reasoner's builder
(`embedrl.demo.base`): the Reasoner prompt, progress reporting, and one function per training phase."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from ..fileio import write_json, write_text

# Seconds per unit on one CPU thread of the development machine (2 shared cores): the printed budgets.
COST = {
    "data": 0.01,
    "stage1": 0.25,
    "raw": 0.13,
    "sft": 0.25,
    "rl": 2.7,
    "eval_cached": 2.0,
    "eval_reasoner": 10.0,
}
SHIPPED_BASE = Path(__file__).resolve().parent.parent / "resources" / "demo-reasoner"

ROWS = ("no_tcot", "teacher", "sft", "egrl", "oracle")
ABLATION_ROWS = ("egrl_wo_outcome", "egrl_wo_process")
ROW_LABELS = {
    "no_tcot": "(a) no T-CoT (raw-input Embedder)",
    "teacher": "(b) teacher T-CoTs (noisy synthetic teacher)",
    "sft": "(c) SFT Reasoner",
    "egrl": "(d) SFT + EG-RL Reasoner",
    "oracle": "(e) oracle T-CoTs (ground truth)",
    "egrl_wo_outcome": "(d') EG-RL w/o outcome reward",
    "egrl_wo_process": "(d'') EG-RL w/o process reward",
}


def seed_dir(settings: Any, seed: int) -> Path:
    return settings.out / f"seed-{seed}"


# ------------------------------------------------------------------------------------------ prompts


def demo_prompt(kind: Any, item: Any, num_frames: int) -> str:
    """The demo Reasoner's user text: the item's instruction and text and the cue to write (about 20 tokens). One
    function for SFT, EG-RL rollouts and inference (`prompts.item_prompt(..., prompt_fn=demo_prompt)`): a tiny
    model cannot learn from the built-in prompts' rules and worked examples."""
    head = " ".join(p.strip() for p in (item.instruction, item.text) if p and p.strip())
    cue = {
        "bbox_2d": "bbox_2d (0-1000)",
        "key_frames": f"key_frames (1-{num_frames})",
        "text_keywords": "text_keywords",
    }[kind.cue]
    return f"{head}\nT-CoT with {cue}:"


# --------------------------------------------------------------------------------------- progress


class Progress:
    """Phase and step messages from a seed's worker to the main process (a queue), or printed directly."""

    def __init__(self, seed: int, queue: Any = None):
        self.seed, self.queue = seed, queue

    def send(self, kind: str, **payload: Any) -> None:
        message = {"kind": kind, "seed": self.seed, **payload}
        if self.queue is not None:
            self.queue.put(message)
        else:
            _render(message, {})

    def phase(self, name: str, units: int, budget_s: float) -> None:
        self.send("phase", name=name, units=units, budget=budget_s)

    def advance(self, units: int = 1) -> None:
        self.send("advance", units=units)

    def done(self, name: str, seconds: float, note: str = "") -> None:
        self.send("done", name=name, seconds=seconds, note=note)


def _step_callback(progress: Progress):
    from transformers import TrainerCallback

    class _Advance(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            progress.advance(1)

    return _Advance()


class _Phase:
    """Times one phase and reports its budget and its time. `reused`: the phase's output existed before (a
    resumed run), so the time of the run that made it (`timings` as loaded) is kept instead of this run's
    near-zero one; `timings` is written to `timings_file` after each phase, so a crash keeps them too."""

    def __init__(
        self,
        progress: Progress,
        timings: dict,
        name: str,
        units: int,
        cost: float,
        *,
        reused: bool = False,
        timings_file: Path | None = None,
    ):
        self.progress, self.timings, self.name = progress, timings, name
        self.units, self.budget = units, units * cost
        self.reused, self.timings_file = reused, timings_file

    def __enter__(self) -> _Phase:
        self.start = time.perf_counter()
        self.progress.phase(self.name, self.units, self.budget)
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            seconds = time.perf_counter() - self.start
            if self.reused and self.name in self.timings:
                self.timings[self.name] = {**self.timings[self.name], "reused": True}
            else:
                self.timings[self.name] = {
                    "seconds": round(seconds, 1),
                    "budget": round(self.budget, 1),
                    **({"reused": True} if self.reused else {}),
                }
            if self.timings_file is not None:
                write_json(self.timings_file, self.timings)
            self.progress.done(self.name, seconds, "reused" if self.reused else "")


# ------------------------------------------------------------------------------------------- phases


def _embedder_config():
    from ..models.embedder_input import EmbedderConfig

    # Frames (and keyframes) reach the Embedder at 64 x 64 px (4 visual tokens): its frame budget. Images and
    # crops keep the tiny processor's 4-16 tokens (at most 128 x 128 px).
    return EmbedderConfig(num_frames=8, frame_min_pixels=64 * 64, frame_max_pixels=64 * 64)


def _base_embedder(folder: Path, seed: int) -> Path:
    from ..models.embedder import Embedder
    from ..models.tiny import MARKER, make_tiny

    if not (folder / MARKER).is_file() or not (folder / "embedrl_embedder.json").is_file():
        make_tiny("qwen3-vl", folder, seed=seed)
        Embedder.from_pretrained(folder, config=_embedder_config()).save_pretrained(folder)
    return folder


def _data(settings: Any, seed: int, root: Path) -> dict[str, Any]:
    from ..data.synthetic import (
        EV_TASKS,
        TeacherNoise,
        evidence_signatures,
        tcot_variant,
        write_evidence_benchmark,
        write_evidence_pairs,
    )

    noise = TeacherNoise(settings.noise_loose, settings.noise_wrong)
    data = root / "data"
    train, rl = data / "train" / "pairs.jsonl", data / "rl" / "pairs.jsonl"
    bench = data / settings.split
    marker = data / f"{settings.split}.done"
    if not marker.is_file():
        shutil.rmtree(data, ignore_errors=True)
        write_evidence_pairs(train, seed, settings.train_groups, noise=noise, group_pairs=8, split="train")
        write_evidence_pairs(rl, seed, settings.rl_groups, noise=noise, group_pairs=4, split="rl")
        # no test (or dev) input is a training or RL input of the same seed
        seen = evidence_signatures(train) | evidence_signatures(rl)
        write_evidence_benchmark(
            bench / "oracle", seed, settings.test_groups, split=settings.split, noise=noise, exclude=seen
        )
        for task in EV_TASKS:
            tcot_variant(bench / "oracle" / task, bench / "teacher" / task, "teacher_tcot")
        marker.write_text("ok\n")
    return {
        "train": train,
        "rl": rl,
        "oracle": [bench / "oracle" / t for t in EV_TASKS],
        "teacher": [bench / "teacher" / t for t in EV_TASKS],
    }


def _finished(out: Path) -> bool:
    """Whether a training phase wrote everything (weights, settings, logs): its marker is written last, so a
    phase that crashed half-way is run again instead of being read as done."""
    return (out / "DONE").is_file()


def _mark_finished(out: Path, final: Path) -> Path:
    write_text(out / "DONE", f"{final.name}\n")
    return final


def _stage1(
    base: Path, pairs_file: Path, out: Path, steps: int, use_tcot: bool, seed: int, progress: Progress
) -> Path:
    from ..train.pairs import read_pairs
    from ..train.stage1 import EmbedderTrainingConfig, train_embedder

    if _finished(out):
        return out / "final"
    values = dict(EmbedderTrainingConfig.PRESETS["tiny"])
    values.update(
        output_dir=str(out),
        max_steps=steps,
        use_cpu=True,
        report_to="none",
        seed=seed,
        disable_tqdm=True,
        logging_steps=10,
        use_tcot=use_tcot,
        save_strategy="no",
        plot=False,
    )
    final = train_embedder(
        base, read_pairs(pairs_file), EmbedderTrainingConfig(**values), callbacks=[_step_callback(progress)]
    )
    return _mark_finished(out, final)


def base_reasoner() -> Path:
    """The shipped base Reasoner (`embedrl.demo.base`: perception pretraining on a separate split)."""
    from ..errors import ConfigError

    if not (SHIPPED_BASE / "config.json").is_file():
        raise ConfigError(
            f"the demo's base Reasoner is missing ({SHIPPED_BASE}); rebuild it with "
            "`python -m embedrl.demo.base` (about 12 minutes on one CPU core)"
        )
    return SHIPPED_BASE


def _sft(settings: Any, init: Path, pairs_file: Path, out: Path, seed: int, progress: Progress) -> Path:
    from ..train.egrl import sft_cold_start
    from ..train.pairs import read_pairs

    if _finished(out):
        return out / "final"
    final = sft_cold_start(
        init,
        read_pairs(pairs_file),
        out,
        max_steps=settings.sft_steps,
        learning_rate=settings.sft_lr,
        batch_size=8,
        use_cpu=True,
        seed=seed,
        prompt_fn=demo_prompt,
        logging_steps=10,
        disable_tqdm=True,
        plot=False,
        gradient_checkpointing=False,
        freeze_vision=True,
        lr_scheduler_type="constant",
        callbacks=[_step_callback(progress)],
    )
    return _mark_finished(out, final)


def rl_config(settings: Any, out: Path, seed: int, variant: str = "paper"):
    from ..train.egrl import EGRLConfig

    values = dict(EGRLConfig.PRESETS["tiny"])
    values.update(
        output_dir=str(out),
        max_steps=settings.rl_steps,
        use_cpu=True,
        report_to="none",
        seed=seed,
        pairs_per_step=4,
        num_generations=settings.rl_generations,
        max_completion_length=settings.max_new_tokens,
        learning_rate=settings.rl_lr,
        beta=0.0,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        plot=False,
        freeze_vision=True,
        num_frames=8,
        reward_preset="paper",
    )
    if settings.judge == "none" or variant == "wo_process":
        values["process_weight"] = 0.0
    if variant == "wo_outcome":
        values["outcome_weight"] = 0.0
    return EGRLConfig(**values)


def _egrl(
    settings: Any,
    sft: Path,
    embedder: Path,
    pairs_file: Path,
    out: Path,
    seed: int,
    progress: Progress,
    variant: str = "paper",
) -> Path:
    from ..data.synthetic import GroundTruthJudge
    from ..models.embedder import Embedder
    from ..train.egrl import local_embed_fn, train_reasoner
    from ..train.pairs import read_pairs

    if _finished(out):
        return out / "final"
    config = rl_config(settings, out, seed, variant)
    judge = GroundTruthJudge(seed) if config.reward_weights_dict()["process"] > 0 else None
    frozen = local_embed_fn(Embedder.from_pretrained(embedder), batch_size=32)
    final, reward = train_reasoner(
        sft,
        read_pairs(pairs_file),
        config,
        frozen,
        judge,
        prompt_fn=demo_prompt,
        callbacks=[_step_callback(progress)],
    )
    write_json(out / "reward_history.json", reward.history, indent=None)
    return _mark_finished(out, final)


def greedy_training_reward(
    settings: Any, reasoner_path: Path, embedder: Path, pairs_file: Path, seed: int, out: Path
) -> dict[str, Any]:
    """EG-RL's training reward (the same `EGRLReward`, weights and judge) of a Reasoner's greedy T-CoTs on the RL
    pairs, one rollout per side, batch by batch as the RL steps draw them (one label group each). Comparing the SFT
    Reasoner with the EG-RL one shows whether RL raised the reward it was trained on, without the noise of the
    sampled rollouts that the training curves log. Cached in `out`."""
    from ..data.synthetic import GroundTruthJudge
    from ..fileio import read_json
    from ..models.embedder import Embedder
    from ..models.reasoner import GenerationSettings, Reasoner
    from ..train.egrl import EGRLReward, RLPromptDataset, local_embed_fn
    from ..train.pairs import read_pairs

    if out.is_file():
        return read_json(out)
    pairs = read_pairs(pairs_file)
    config = rl_config(settings, out.parent / "unused", seed)
    judge = GroundTruthJudge(seed) if config.reward_weights_dict()["process"] > 0 else None
    reward = EGRLReward(
        RLPromptDataset(pairs, num_frames=8, prompt_fn=demo_prompt),
        local_embed_fn(Embedder.from_pretrained(embedder), batch_size=32),
        config,
        judge,
    )
    reasoner = Reasoner.from_pretrained(
        reasoner_path,
        batch_size=16,
        prompt_fn=demo_prompt,
        settings=GenerationSettings(max_new_tokens=settings.max_new_tokens),
    )
    queries = reasoner.reason([p.query for p in pairs], side="query", target_modality="text")
    positives = reasoner.reason([p.positive for p in pairs], side="candidate")
    groups: dict[str, list[int]] = {}
    for k, pair in enumerate(pairs):
        groups.setdefault(pair.dataset, []).append(k)
    by_task: dict[str, list[float]] = {}
    for name, members in groups.items():
        texts, index, side, modality = [], [], [], []
        for k in members:
            for text, s, item in (
                (queries[k], "query", pairs[k].query),
                (positives[k], "positive", pairs[k].positive),
            ):
                texts.append(text)
                index.append(k)
                side.append(s)
                modality.append(item.modality)
        reward.score(texts, index, side, modality, [8] * len(texts))
        by_task.setdefault(name.split("#")[0], []).append(reward.history[-1]["reward"])
    result = {"by_task": {k: sum(v) / len(v) for k, v in by_task.items()}}
    result["mean"] = sum(result["by_task"].values()) / len(result["by_task"])
    write_json(out, result)
    return result


def _render(message: dict, state: dict) -> None:
    seed = message["seed"]
    kind = message["kind"]
    bars = state.setdefault("bars", {})
    bar = bars.get(seed)
    if kind == "phase":
        if bar is not None:
            bar.close()
        from tqdm.auto import tqdm

        name = message["name"]
        unit = (
            "steps"
            if any(w in name for w in ("stage", "SFT", "RL"))
            else "items"
            if name == "data"
            else "rows"
        )
        _say(f"seed {seed}: {name}: {message['units']} {unit}, budget ~{message['budget']:.0f} s")
        bars[seed] = tqdm(
            total=message["units"],
            desc=f"seed {seed} {name}",
            leave=False,
            position=state.setdefault("positions", {}).setdefault(seed, len(state["positions"])),
            dynamic_ncols=True,
            mininterval=1.0,
        )
    elif kind == "advance" and bar is not None:
        bar.update(message["units"])
    elif kind == "done":
        if bar is not None:
            bar.close()
            bars.pop(seed, None)
        if message.get("note") == "reused":
            _say(f"seed {seed}: {message['name']}: reused the finished output of an earlier run")
        else:
            _say(f"seed {seed}: {message['name']} done in {message['seconds']:.0f} s")
    elif kind == "finished":
        _say(f"seed {seed}: all phases done")


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"[demo] {message}")
