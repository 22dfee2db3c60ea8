"""Stage 2: Embedder-Guided RL (EG-RL) — GRPO on the Reasoner with rewards from a frozen Embedder.

Wiring on TRL's `GRPOTrainer` (we do not write a GRPO implementation):
- each step takes B query–positive pairs of ONE dataset (`PairRolloutSampler`); both sides become prompts
  (query-side and candidate-side prompt kinds, `prompts.select_prompt_kind`), each sampled G times; a pair's
  2·G rollouts stay on one rank, so in-batch negatives are the other pairs on that rank;
- every rollout is embedded by the frozen Embedder through the same input builder as inference (crops and
  keyframes of the rollout's own T-CoT included) — in-process or over `/v1/embeddings`;
- rewards (`embedrl.rewards`): format, symmetric in-batch outcome, and the listwise judge's process reward;
  TRL sums them with `reward_weights` and normalises advantages per prompt group.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler
from trl import GRPOConfig, GRPOTrainer

from ..data.items import Item
from ..data.media import load_item_media
from ..errors import ConfigError
from ..prompts import (
    PromptFn,
    format_judge_anchor,
    item_prompt,
    judge_prompt,
    parse_judge_answer,
)
from ..rewards import (
    REWARD_PRESETS,
    completion_text,
    format_reward,
    judge_candidates,
    outcome_rewards,
    process_reward_from_answer,
)
from .pairs import TrainingPair
from .plots import write_run_outputs
from .sampler import SubBatchSampler

log = logging.getLogger(__name__)

# (items, T-CoTs, frames per video) -> vectors: the frame count is the rollout prompts' own, so a keyframe
# number means the same frame to the Reasoner and to the reward Embedder.
EmbedFn = Callable[[Sequence[Item], Sequence[str | None], int], np.ndarray]


# --------------------------------------------------------------------------------------------- config


@dataclass
class EGRLConfig(GRPOConfig):
    """Stage-2 settings (paper App. B.2 defaults). Every field is a flag of `embedrl train reasoner`.

    A step samples `pairs_per_step` pairs per rank; with G = `num_generations` that is 2·B·G rollouts per rank,
    which sets `per_device_train_batch_size` (divided by `steps_per_generation` for smaller micro-batches).
    """

    pairs_per_step: int = field(default=4, metadata={"help": "B: query-positive pairs per step and rank"})
    reward_preset: str = field(default="paper", metadata={"help": "paper (0.05/0.8/0.2) or official-code"})
    format_weight: float | None = field(
        default=None, metadata={"help": "override the preset's format weight"}
    )
    process_weight: float | None = field(default=None, metadata={"help": "override the process weight"})
    outcome_weight: float | None = field(default=None, metadata={"help": "override the outcome weight"})
    acc_mode: str = field(default="all", metadata={"help": "Acc_k: all (paper) or fraction (official code)"})
    outcome_tau: float = field(
        default=0.5, metadata={"help": "softmax temperature of the weighted negatives"}
    )
    weighted_negatives: bool = field(default=True, metadata={"help": "False: plain mean (ablation)"})
    process_top_k: int = field(default=4, metadata={"help": "hardest other pairs shown to the judge"})
    process_mode: str = field(default="binary", metadata={"help": "binary (paper) or margin (official code)"})
    judge_shuffle: bool = field(default=True, metadata={"help": "shuffle judge candidates (False: official)"})
    judge_max_new_tokens: int = field(default=10, metadata={"help": "judge answer length"})
    strict_format: bool = field(default=False, metadata={"help": "tags-only format check (official code)"})
    num_frames: int | None = field(
        default=None,
        metadata={
            "help": "frames sampled per video, for the rollout prompts and the reward Embedder alike (default: the "
            "frozen Embedder's saved setting; another value overrides it for both)"
        },
    )
    lora: str = field(
        default="none", metadata={"help": "none (full fine-tune, paper) or r,alpha e.g. 64,128"}
    )
    freeze_vision: bool = field(
        default=False,
        metadata={"help": "train the language model only (the vision tower and merger stay fixed)"},
    )
    plot: bool = field(default=True, metadata={"help": "write rl_curves.png at the end"})
    # Paper values instead of the generic defaults.
    num_generations: int | None = field(default=8, metadata={"help": "G: rollouts per prompt"})
    learning_rate: float = field(default=3e-6, metadata={"help": "learning rate (constant in the paper)"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "learning-rate schedule"})
    beta: float = field(default=0.01, metadata={"help": "KL coefficient (k3 estimator, as a loss)"})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip range"})
    loss_type: str = field(default="grpo", metadata={"help": "TRL loss type; grpo matches the paper"})
    max_completion_length: int | None = field(default=512, metadata={"help": "max T-CoT tokens"})
    temperature: float = field(default=1.0, metadata={"help": "rollout temperature"})
    logging_steps: float = field(default=1, metadata={"help": "log every N steps"})
    save_steps: float = field(default=100, metadata={"help": "checkpoint every N steps"})
    remove_unused_columns: bool | None = field(default=False, metadata={"help": "must stay False"})

    def __post_init__(self) -> None:
        if self.reward_preset not in REWARD_PRESETS:
            raise ConfigError(f"reward_preset must be one of {sorted(REWARD_PRESETS)}")
        if self.acc_mode not in ("all", "fraction"):
            raise ConfigError("acc_mode must be 'all' or 'fraction'")
        if self.process_mode not in ("binary", "margin"):
            raise ConfigError("process_mode must be 'binary' or 'margin'")
        if self.pairs_per_step < 2:
            # with one pair there is nothing in the batch to retrieve against: every outcome reward is 0
            raise ConfigError(f"pairs_per_step must be >= 2 (in-batch retrieval), got {self.pairs_per_step}")
        if self.outcome_tau <= 0:
            raise ConfigError(f"outcome_tau must be > 0, got {self.outcome_tau}")
        if self.process_top_k < 1:
            raise ConfigError(f"process_top_k must be >= 1, got {self.process_top_k}")
        if self.learning_rate < 0:
            raise ConfigError(f"learning_rate must be >= 0, got {self.learning_rate}")
        steps_per_generation = self.steps_per_generation or 1
        rollouts = 2 * self.pairs_per_step * int(self.num_generations or 8)
        if rollouts % steps_per_generation:
            raise ConfigError(
                f"2·B·G = {rollouts} rollouts must divide into {steps_per_generation} micro-batches"
            )
        self.steps_per_generation = steps_per_generation
        self.per_device_train_batch_size = rollouts // steps_per_generation
        self.gradient_accumulation_steps = steps_per_generation
        self.remove_unused_columns = False
        if self.use_vllm:
            try:
                import vllm  # noqa: F401, PLC0415
            except ImportError:
                raise ConfigError("use_vllm needs the GPU extra: pip install 'embedrl[gpu]'") from None
        super().__post_init__()

    def reward_weights_dict(self) -> dict[str, float]:
        weights = dict(REWARD_PRESETS[self.reward_preset])
        for key, value in (
            ("format", self.format_weight),
            ("process", self.process_weight),
            ("outcome", self.outcome_weight),
        ):
            if value is not None:
                weights[key] = value
        return weights

    PRESETS = {
        # paper App. B.2: G 8, clip 0.2, KL 0.01, lr 3e-6; 32 pairs per step on 8 GPUs = 4 per rank
        "paper": {"pairs_per_step": 4, "num_generations": 8, "max_completion_length": 2048},
        "tiny": {
            "pairs_per_step": 2,
            "num_generations": 4,
            "max_completion_length": 24,
            "learning_rate": 1e-4,
            "beta": 0.0,
            "save_steps": 1000,
        },
    }


# -------------------------------------------------------------------------------------------- dataset


class RLPromptDataset(Dataset):
    """Row 2k is pair k's query prompt, row 2k+1 its positive prompt (TRL conversational rows + images)."""

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        num_frames: int = 8,
        fps: float = 2.0,
        prompt_fn: PromptFn | None = None,
    ):
        self.pairs = list(pairs)
        self.num_frames = num_frames
        self.fps = fps
        self.prompt_fn = prompt_fn

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def item(self, pair_index: int, side: str) -> Item:
        pair = self.pairs[pair_index]
        return pair.query if side == "query" else pair.positive

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair_index, side = divmod(index, 2)
        side_name = "query" if side == 0 else "positive"
        pair = self.pairs[pair_index]
        item = pair.query if side == 0 else pair.positive
        images, frames = load_item_media(item, self.num_frames)
        if side == 0:
            text = item_prompt(
                item,
                "query",
                pair.positive.modality,
                num_frames=len(frames),
                fps=self.fps,
                prompt_fn=self.prompt_fn,
            )
        else:
            text = item_prompt(
                item, "candidate", num_frames=len(frames), fps=self.fps, prompt_fn=self.prompt_fn
            )
        return {
            "prompt": [{"role": "user", "content": text}],
            "images": images + frames,
            "pair_index": pair_index,
            "side": side_name,
            "modality": item.modality,
            "num_frames": len(frames) or self.num_frames,
            "dataset": pair.dataset,
        }

    def groups(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for k, pair in enumerate(self.pairs):
            out.setdefault(pair.dataset, []).append(k)
        return out

    def to_hf(self):
        """A `datasets.Dataset` view for TRL; media are loaded lazily, row by row, when TRL indexes it."""
        return lazy_hf_dataset(len(self), self.__getitem__)


class PairRolloutSampler(Sampler[int]):
    """Dataset-row indices for TRL: per step, B pairs of one dataset per rank, each pair as G copies of its
    query row then G copies of its positive row; rank r's rows form the r-th contiguous block (accelerate hands
    block r to rank r), and each step's rows repeat `repeat_count` times as TRL's own sampler does."""

    def __init__(
        self,
        dataset: RLPromptDataset,
        pairs_per_step: int,
        num_generations: int,
        world_size: int = 1,
        repeat_count: int = 1,
        seed: int = 0,
    ):
        self.pairs = SubBatchSampler(dataset.groups(), pairs_per_step * world_size, 1, seed=seed)
        self.pairs_per_step, self.G, self.world = pairs_per_step, num_generations, world_size
        self.repeat_count = repeat_count

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.pairs) * self.world * 2 * self.pairs_per_step * self.G * self.repeat_count

    def __iter__(self):
        for pair_ids in self.pairs.global_batches():
            step: list[int] = []
            for k in pair_ids:  # consecutive blocks of B pairs = consecutive ranks
                step += [2 * k] * self.G + [2 * k + 1] * self.G
            for _ in range(self.repeat_count):
                yield from step


# --------------------------------------------------------------------------------------------- judge


class Judge:
    """The listwise discriminator D: any generation backend (local model or OpenAI-compatible endpoint).

    `choose(anchors, candidate_lists)` returns, per anchor, the 1-based candidate the judge picked (None: no
    readable verdict). A judge class with `reads_items = True` is also handed the `Item` behind every anchor and
    candidate (`anchor_items=`, `candidate_items=`), for judges that know the data (the demo's ground-truth judge).
    """

    reads_items = False

    def __init__(self, backend: Any, max_new_tokens: int = 10):
        from ..models.reasoner import GenerationSettings

        self.backend = backend
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)

    def choose(self, anchors: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> list[int | None]:
        conversations = [
            [{"role": "user", "content": [{"type": "text", "text": judge_prompt(a, c)}]}]
            for a, c in zip(anchors, candidate_lists)
        ]
        answers = self.backend.generate(conversations, self.settings)
        return [parse_judge_answer(ans, len(c)) for ans, c in zip(answers, candidate_lists)]


def local_embed_fn(embedder: Any, batch_size: int = 16) -> EmbedFn:
    """The frozen in-process Embedder through `pipeline.embed_items` (the inference input builder)."""
    from ..pipeline import embed_items

    def embed(items: Sequence[Item], tcots: Sequence[str | None], num_frames: int) -> np.ndarray:
        vectors, _ = embed_items(embedder, items, tcots, batch_size=batch_size, num_frames=num_frames)
        return vectors

    embed.num_frames = embedder.config.num_frames  # the default frame count of a run that sets none

    return embed


# ------------------------------------------------------------------------------------------- rewards


@dataclass
class BatchScores:
    format: np.ndarray
    process: np.ndarray
    outcome: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)


class EGRLReward:
    """Scores one TRL generation batch once and serves the three reward terms from that single computation."""

    def __init__(
        self, dataset: RLPromptDataset, embed_fn: EmbedFn, config: EGRLConfig, judge: Judge | None = None
    ):
        self.dataset, self.embed_fn, self.config, self.judge = dataset, embed_fn, config, judge
        self.weights = config.reward_weights_dict()
        if self.weights["process"] > 0 and judge is None:
            raise ConfigError(
                "the process reward has weight > 0 but no judge was given (--judge / --judge-url), "
                "or set --process-weight 0"
            )
        self._key: tuple | None = None
        self._scores: BatchScores | None = None
        self._rng = np.random.default_rng(config.seed)
        self.history: list[dict[str, float]] = []

    def funcs(self) -> tuple[list[Callable], list[float]]:
        """TRL reward functions and their weights."""

        def make(term: str) -> Callable:
            def reward(prompts, completions, **kwargs) -> list[float]:
                scores = self.score(
                    completions,
                    kwargs["pair_index"],
                    kwargs["side"],
                    kwargs["modality"],
                    kwargs["num_frames"],
                    kwargs.get("log_metric"),
                )
                return getattr(scores, term).tolist()

            reward.__name__ = term
            return reward

        w = self.weights
        return [make("format"), make("process"), make("outcome")], [
            w["format"],
            w["process"],
            w["outcome"] * w.get("outcome_scale", 1.0),
        ]

    def score(self, completions, pair_index, side, modality, num_frames, log_metric=None) -> BatchScores:
        texts = [completion_text(c) for c in completions]
        key = (tuple(texts), tuple(pair_index), tuple(side))
        if key == self._key and self._scores is not None:
            return self._scores
        # The judge's candidate order is drawn from the seed and the batch itself, not from a generator that
        # advances over the run: a resumed run (same rollouts) shows the judge the same orders.
        digest = hashlib.sha256(
            json.dumps([texts, [str(p) for p in pair_index], list(side)]).encode()
        ).digest()
        self._rng = np.random.default_rng([self.config.seed, int.from_bytes(digest[:8], "little")])
        scores = self._compute(texts, list(pair_index), list(side), list(modality), list(num_frames))
        self._key, self._scores = key, scores
        w = self.weights
        total = (
            w["format"] * scores.format
            + w["process"] * scores.process
            + w["outcome"] * w.get("outcome_scale", 1.0) * scores.outcome
        )
        datasets = sorted({self.dataset.pairs[k].dataset for k in pair_index})
        # `history` (not logged to TRL): the batch's metrics, its datasets and its mean weighted reward
        self.history.append(
            {**scores.metrics, "reward": float(total.mean()) if len(total) else 0.0, "datasets": datasets}
        )
        if log_metric is not None:
            for name, value in scores.metrics.items():
                log_metric(name, value)
        return scores

    def _compute(self, texts, pair_index, side, modality, num_frames) -> BatchScores:
        cfg = self.config
        n = len(texts)
        fmt = np.asarray(
            format_reward(texts, modality, num_frames=num_frames, strict_tags_only=cfg.strict_format)
        )
        rows = [i for i in range(n) if side[i] == "query"]
        cols = [i for i in range(n) if side[i] == "positive"]
        items = [self.dataset.item(pair_index[i], side[i]) for i in range(n)]
        outcome, process = np.zeros(n), np.zeros(n)
        metrics: dict[str, float] = {"format_valid_rate": float(fmt.mean())} if n else {}
        if not rows or not cols:
            return BatchScores(fmt, process, outcome, metrics)
        vectors = np.asarray(self.embed_fn(items, texts, self.dataset.num_frames), dtype=np.float64)
        if not np.isfinite(vectors).all():
            raise RuntimeError("the frozen Embedder returned non-finite vectors; refusing to score rollouts")
        sim = vectors[rows] @ vectors[cols].T
        row_groups, col_groups = [pair_index[i] for i in rows], [pair_index[i] for i in cols]
        kwargs = dict(tau=cfg.outcome_tau, acc_mode=cfg.acc_mode, weighted_negatives=cfg.weighted_negatives)
        r_q, acc_q, margin_q = outcome_rewards(sim, row_groups, col_groups, **kwargs)
        r_p, acc_p, margin_p = outcome_rewards(sim.T, col_groups, row_groups, **kwargs)
        outcome[rows], outcome[cols] = r_q, r_p
        metrics.update(
            acc=float(np.concatenate([acc_q, acc_p]).mean()),
            margin=float(np.concatenate([margin_q, margin_p]).mean()),
        )
        if self.weights["process"] > 0 and self.judge is not None:
            margins = np.zeros(n)
            margins[rows], margins[cols] = margin_q, margin_p
            process, failures, correct = self._process(
                texts, items, rows, cols, sim, row_groups, col_groups, margins
            )
            metrics["judge_parse_failures"] = float(failures)
            metrics["judge_correct_rate"] = correct
        return BatchScores(fmt, process, outcome, metrics)

    def _process(self, texts, items, rows, cols, sim, row_groups, col_groups, margins):
        cfg = self.config
        anchors, candidate_texts, positives, owners = [], [], [], []
        anchor_items: list[Item] = []
        candidate_items: list[list[Item]] = []
        for direction in ("forward", "reverse"):
            anchor_idx, other_idx = (rows, cols) if direction == "forward" else (cols, rows)
            matrix = sim if direction == "forward" else sim.T
            groups_a, groups_o = (
                (row_groups, col_groups) if direction == "forward" else (col_groups, row_groups)
            )
            anchor_side = "query" if direction == "forward" else "candidate"
            other_side = "candidate" if direction == "forward" else "query"
            for a, i in enumerate(anchor_idx):
                columns, pos = judge_candidates(
                    matrix[a],
                    groups_o,
                    groups_a[a],
                    top_k=cfg.process_top_k,
                    shuffle=cfg.judge_shuffle,
                    rng=self._rng,
                )
                anchors.append(format_judge_anchor(_item_text(items[i]), texts[i], anchor_side))
                candidate_texts.append(
                    [
                        format_judge_anchor(_item_text(items[other_idx[j]]), texts[other_idx[j]], other_side)
                        for j in columns
                    ]
                )
                anchor_items.append(items[i])
                candidate_items.append([items[other_idx[j]] for j in columns])
                positives.append(pos)
                owners.append(i)
        if getattr(self.judge, "reads_items", False):
            # a judge that also reads the items (the demo's ground-truth judge): same prompts, plus the items
            choices = self.judge.choose(
                anchors, candidate_texts, anchor_items=anchor_items, candidate_items=candidate_items
            )
        else:
            choices = self.judge.choose(anchors, candidate_texts)
        process = np.zeros(len(texts))
        failures, correct_total = 0, 0.0
        for owner, choice, pos in zip(owners, choices, positives):
            failures += choice is None
            correct = process_reward_from_answer(choice, pos)
            correct_total += correct
            process[owner] = correct * (margins[owner] if cfg.process_mode == "margin" else 1.0)
        return process, failures, correct_total / max(1, len(owners))


def _item_text(item: Item) -> str:
    parts = [p for p in (item.instruction, item.text) if p]
    return " ".join(parts) if parts else f"({item.modality} input)"


# --------------------------------------------------------------------------------------------- trainer


class _SavesProcessor:
    """Trainer mixin: checkpoints save our processor with `save_processor`. A Qwen-VL processor built without a
    video processor (torchvision-free) is one `ProcessorMixin.save_pretrained` cannot save, so the trainer's own
    save runs without it."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from ..models.backbone import save_processor

        processor, self.processing_class = self.processing_class, None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.processing_class = processor
        if self.args.should_save:
            save_processor(processor, output_dir or self.args.output_dir)


class EGRLTrainer(_SavesProcessor, GRPOTrainer):
    """`GRPOTrainer` with pair-grouped rollouts and checkpoints that save our processor."""

    def __init__(self, *args: Any, egrl_dataset: RLPromptDataset, **kwargs: Any):
        self.egrl_dataset = egrl_dataset
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset=None) -> Sampler:
        return PairRolloutSampler(
            self.egrl_dataset,
            self.args.pairs_per_step,
            self.num_generations,
            world_size=self.accelerator.num_processes,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            seed=self.args.seed,
        )


def _lora_config(spec: str):
    if spec.lower() == "none":
        return None
    from peft import LoraConfig

    try:
        r, alpha = (int(x) for x in spec.split(","))
    except ValueError:
        raise ConfigError(f"lora must be 'none' or 'r,alpha' (e.g. 64,128), got {spec!r}") from None
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def train_reasoner(
    model_path: str | Path,
    pairs: Sequence[TrainingPair],
    config: EGRLConfig,
    embed_fn: EmbedFn,
    judge: Judge | None = None,
    resume: bool | str = False,
    callbacks: list | None = None,
    prompt_fn: PromptFn | None = None,
) -> tuple[Path, EGRLReward]:
    """Run EG-RL; returns the final Reasoner folder and the reward object (its per-step history)."""
    from transformers import set_seed

    from ..models.backbone import LoadOptions, detect_family, load_model, load_processor, save_processor

    set_seed(config.seed)
    if config.num_frames is None:
        config.num_frames = getattr(embed_fn, "num_frames", None)
        if config.num_frames is None:
            if any(pair.is_video for pair in pairs):
                raise ConfigError(
                    "set EGRLConfig.num_frames: this embed_fn does not say how many frames its "
                    "Embedder was trained with, and the pairs have videos"
                )
            config.num_frames = 8  # no video among the pairs: the count is never used
    dataset = RLPromptDataset(pairs, num_frames=config.num_frames, prompt_fn=prompt_fn)
    if any(len(v) < config.pairs_per_step for v in dataset.groups().values()):
        small = {k: len(v) for k, v in dataset.groups().items() if len(v) < config.pairs_per_step}
        raise ConfigError(f"datasets with fewer pairs than pairs_per_step={config.pairs_per_step}: {small}")
    reward = EGRLReward(dataset, embed_fn, config, judge)
    funcs, weights = reward.funcs()
    config.reward_weights = weights
    family = detect_family(model_path)
    options = LoadOptions(
        dtype="float32" if not (config.bf16 or config.fp16) else "auto",
        device="cpu" if config.use_cpu else "auto",
    )
    processor = load_processor(model_path, family, options)
    processor.tokenizer.padding_side = "left"
    model = load_model(model_path, family, options)
    if config.freeze_vision:
        freeze_vision_tower(model)
    trainer = EGRLTrainer(
        model=model,
        reward_funcs=funcs,
        args=config,
        train_dataset=dataset.to_hf(),
        processing_class=processor,
        peft_config=_lora_config(config.lora),
        callbacks=callbacks,
        egrl_dataset=dataset,
    )
    checkpoint = None
    if resume:
        from .stage1 import latest_checkpoint

        checkpoint = resume if isinstance(resume, str) else latest_checkpoint(config.output_dir)
    trainer.train(resume_from_checkpoint=checkpoint)
    out = Path(config.output_dir)
    final = out / "final"
    if trainer.is_world_process_zero():
        model_out = trainer.model
        if hasattr(model_out, "merge_and_unload"):
            model_out = model_out.merge_and_unload()
        model_out.save_pretrained(final)
        save_processor(processor, final)
        write_run_outputs(
            out,
            trainer.state.log_history,
            {
                "stage": 2,
                "model": str(model_path),
                "pairs": len(pairs),
                "reward_weights": reward.weights,
                "acc_mode": config.acc_mode,
            },
            config,
            "rl_curves.png" if config.plot else None,
            (
                "reward",
                "rewards/format/mean",
                "rewards/process/mean",
                "rewards/outcome/mean",
                "format_valid_rate",
                "acc",
                "margin",
                "judge_parse_failures",
                "completions/mean_length",
            ),
            "Stage 2: EG-RL",
        )
    return final, reward


# ------------------------------------------------------------------------------------------ SFT cold start


def _sft_trainer_class():
    from trl import SFTTrainer

    class _Trainer(_SavesProcessor, SFTTrainer):
        """`SFTTrainer` whose checkpoints save our processor (`_SavesProcessor`), and whose loss is the plain
        token cross-entropy on the completion: TRL's fused chunked log-prob kernel computes the same loss but took
        half of each step on CPU with tiny models."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            labels = inputs["labels"]
            kwargs = {
                k: v for k, v in inputs.items() if k not in ("labels", "completion_mask", "assistant_masks")
            }
            kwargs["use_cache"] = False
            logits = model(**kwargs).logits[:, :-1].float()
            target = labels[:, 1:].to(logits.device)
            mask = target != -100
            count = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            ) / count.clamp(min=1)
            if model.training:
                with torch.no_grad():
                    correct = ((logits.argmax(-1) == target) & mask).sum()
                self._metrics["train"]["mean_token_accuracy"].append(float(correct) / max(1, int(mask.sum())))
            return (loss, None) if return_outputs else loss

    return _Trainer


# (pair, side "query" | "positive", teacher T-CoT) -> the T-CoT to learn, or None to skip that side.
TeacherTransform = Callable[[TrainingPair, str, str], "str | None"]


def sft_examples(
    pairs: Sequence[TrainingPair],
    *,
    num_frames: int = 8,
    prompt_fn: PromptFn | None = None,
    transform: TeacherTransform | None = None,
) -> list[dict[str, Any]]:
    """SFT rows (TRL prompt-completion with images): the EG-RL rollout prompt of each side of each pair (the
    same `item_prompt`, so SFT, RL and inference read one prompt) and the teacher T-CoT as the completion."""
    rows = RLPromptDataset(pairs, num_frames=num_frames, prompt_fn=prompt_fn)
    examples = []
    for k, pair in enumerate(pairs):
        for side, name, tcot in ((0, "query", pair.query_tcot), (1, "positive", pair.positive_tcot)):
            if tcot and transform is not None:
                tcot = transform(pair, name, tcot)
            if not tcot:
                continue
            examples.append({"row": 2 * k + side, "completion": tcot})
    if not examples:
        raise ConfigError("SFT cold start needs teacher T-CoTs (query_tcot / positive_tcot) in the pairs")

    def build(index: int) -> dict[str, Any]:
        example = examples[index]
        row = rows[example["row"]]
        return {
            "prompt": row["prompt"],
            "completion": [{"role": "assistant", "content": example["completion"]}],
            "images": row["images"],
        }

    return _LazyRows(len(examples), build)


class _LazyRows(Sequence):
    def __init__(self, length: int, build: Callable[[int], dict]):
        self.length, self.build = length, build

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self.build(i) for i in range(*index.indices(self.length))]
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.build(index)


def sft_cold_start(
    model_path: str | Path,
    pairs: Sequence[TrainingPair],
    out_dir: str | Path,
    *,
    max_steps: int = 50,
    learning_rate: float = 1e-4,
    batch_size: int = 4,
    use_cpu: bool = False,
    num_frames: int = 8,
    seed: int = 0,
    prompt_fn: PromptFn | None = None,
    transform: TeacherTransform | None = None,
    logging_steps: int = 5,
    save_steps: int | None = None,
    lr_scheduler_type: str = "linear",
    warmup_steps: int = 0,
    disable_tqdm: bool | None = None,
    plot: bool = True,
    callbacks: list | None = None,
    gradient_checkpointing: bool = True,
    weight_decay: float = 0.0,
    freeze_vision: bool = False,
) -> Path:
    """Supervised warm-up on teacher T-CoTs (TRL `SFTTrainer`, completion-only loss) for reasoners that do not
    follow the T-CoT format yet. Returns the folder of the warmed-up Reasoner (`out_dir/final`).

    The prompts are the EG-RL rollout prompts (`prompt_fn`, default the built-in wording), so pass the same
    `prompt_fn` here, to `train_reasoner` and to the `Reasoner`. `transform(pair, side, tcot)` rewrites or drops
    (None) a teacher T-CoT before it is learned. `save_steps` writes resumable checkpoints; the loss history is
    kept in `out_dir/log_history.json` (and `sft_curve.png` with `plot`). `freeze_vision` trains the language
    model only: with tiny models, full-rate updates of a small vision tower collapse its features to a constant."""
    from trl import SFTConfig

    from ..models.backbone import LoadOptions, detect_family, load_model, load_processor, save_processor

    examples = sft_examples(pairs, num_frames=num_frames, prompt_fn=prompt_fn, transform=transform)
    family = detect_family(model_path)
    options = LoadOptions(dtype="float32", device="cpu" if use_cpu else "auto")
    processor = load_processor(model_path, family, options)
    model = load_model(model_path, family, options)
    if freeze_vision:
        freeze_vision_tower(model)
    config = SFTConfig(
        output_dir=str(out_dir),
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        use_cpu=use_cpu,
        report_to="none",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_steps=logging_steps,
        seed=seed,
        remove_unused_columns=False,
        max_length=None,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_steps,
        gradient_checkpointing=gradient_checkpointing,
        weight_decay=weight_decay,
        **({} if disable_tqdm is None else {"disable_tqdm": disable_tqdm}),
    )
    trainer = _sft_trainer_class()(
        model=model,
        args=config,
        train_dataset=lazy_hf_dataset(len(examples), examples.__getitem__),
        processing_class=processor,
        callbacks=callbacks,
    )
    trainer.train()
    out = Path(out_dir)
    final = out / "final"
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(final)
        save_processor(processor, final)
        write_run_outputs(
            out,
            trainer.state.log_history,
            {"stage": "sft", "model": str(model_path), "pairs": len(pairs), "examples": len(examples)},
            config,
            "sft_curve.png" if plot else None,
            ("loss", "mean_token_accuracy"),
            "SFT cold start on teacher T-CoTs",
        )
    return final


def freeze_vision_tower(model: Any) -> int:
    """Stop training the vision tower (and its merger) of a Qwen-VL model; returns how many tensors were frozen."""
    count = 0
    for name, param in model.named_parameters():
        if ".visual." in f".{name}.":
            param.requires_grad_(False)
            count += 1
    if not count:
        raise ConfigError("freeze_vision: this model has no parameters under a 'visual' module")
    return count


def lazy_hf_dataset(length: int, get_row: Callable[[int], dict]):
    """A `datasets.Dataset` (what TRL trainers require) whose rows are built on access by `get_row`, so PIL
    images are neither Arrow-encoded nor loaded before they are needed."""
    import datasets

    def materialise(batch: dict[str, list]) -> dict[str, list]:
        rows = [get_row(i) for i in batch["row"]]
        return {key: [r[key] for r in rows] for key in rows[0]}

    return datasets.Dataset.from_dict({"row": list(range(length))}).with_transform(materialise)
