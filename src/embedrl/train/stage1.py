"""Stage 1: contrastive training of the Embedder on T-CoT-conditioned pairs (`embedrl train embedder`).

Built on HF `Trainer`: we supply the batch sampler (single-dataset sub-batches), the collator (the same
`build_input` as inference, teacher T-CoT crops and keyframes included), the loss (symmetric InfoNCE with
gathered features) and GradCache; `Trainer` does the optimisation loop, schedules, mixed precision,
checkpoints with exact resume, and multi-GPU through accelerate (DDP or DeepSpeed ZeRO-2).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from ..errors import ConfigError
from ..models.backbone import save_processor
from ..models.embedder import Embedder, LoraSettings, pooled_embeddings
from .contrastive import ContrastiveLoss, LossOutput, grad_cache_step
from .pairs import TrainingPair
from .plots import write_run_outputs
from .sampler import Mixture, SubBatchSampler

log = logging.getLogger(__name__)


@dataclass
class EmbedderTrainingConfig(TrainingArguments):
    """Stage-1 settings. Every field is a CLI flag of `embedrl train embedder`; YAML files load into it too.

    Batch geometry: a global batch is `sub_batches_per_batch` sub-batches of `sub_batch_size` pairs, each from
    one dataset, split evenly across ranks (`per_device_train_batch_size` is derived from it).
    """

    lora: str = field(
        default="2b",
        metadata={"help": "LoRA preset: 2b (r64/a128), 4b (r96/a192), tiny, or none for full fine-tuning"},
    )
    lora_r: int | None = field(default=None, metadata={"help": "override the preset's rank"})
    lora_alpha: int | None = field(default=None, metadata={"help": "override the preset's alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_include_vision: bool = field(default=True, metadata={"help": "LoRA on the vision tower too"})
    temperature: float = field(default=0.02, metadata={"help": "InfoNCE temperature tau (scale 1/tau)"})
    learn_temperature: bool = field(default=False, metadata={"help": "learn log(1/tau)"})
    sub_batch_size: int = field(default=32, metadata={"help": "pairs per single-dataset sub-batch"})
    sub_batches_per_batch: int = field(default=1, metadata={"help": "sub-batches per global batch"})
    max_video_sub_batches: int = field(default=1, metadata={"help": "video sub-batches allowed per batch"})
    mixture: str | None = field(default=None, metadata={"help": "YAML of dataset weights (Table 5 style)"})
    grad_cache_chunk: int | None = field(default=None, metadata={"help": "GradCache chunk size (None: off)"})
    use_tcot: bool = field(default=True, metadata={"help": "condition on teacher T-CoTs (False: raw input)"})
    gather_with_grad: bool = field(default=True, metadata={"help": "all-gather features with gradients"})
    use_hard_negatives: bool = field(
        default=True,
        metadata={"help": "add the pairs' hard negatives to the in-batch ones (False: in-batch only)"},
    )
    max_text_tokens: int | None = field(default=480, metadata={"help": "truncate item text (tokens)"})
    merge_lora: bool = field(default=True, metadata={"help": "save a merged checkpoint at the end"})
    plot: bool = field(default=True, metadata={"help": "write training_curve.png at the end"})
    # Paper defaults (App. B.1: lr 1e-4, cosine, 10 warm-up steps, wd 0.01) instead of TrainingArguments' generic ones.
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "learning-rate schedule"})
    warmup_steps: float = field(default=10, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    num_train_epochs: float = field(default=2.0, metadata={"help": "epochs"})
    logging_steps: float = field(default=1, metadata={"help": "log every N steps"})
    save_steps: float = field(default=50, metadata={"help": "checkpoint every N steps"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay False"})

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ConfigError("output_dir is required")
        self.remove_unused_columns = False
        if (
            not self.use_cpu
            and torch.cuda.is_available()
            and torch.cuda.is_bf16_supported()
            and not self.fp16
        ):
            self.bf16 = True
        for name in ("sub_batch_size", "sub_batches_per_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.learning_rate < 0:
            raise ConfigError(f"learning_rate must be >= 0, got {self.learning_rate}")
        deepspeed = self.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
        if self.grad_cache_chunk is not None and deepspeed:
            raise ConfigError(
                "GradCache replays several backward passes per step, which DeepSpeed's engine "
                "does not support; use DDP with GradCache, or DeepSpeed without it"
            )
        super().__post_init__()
        if self.grad_cache_chunk is not None and self.grad_cache_chunk < 1:
            raise ConfigError("grad_cache_chunk must be >= 1")
        global_batch = self.sub_batch_size * self.sub_batches_per_batch
        if global_batch % self.world_size:
            raise ConfigError(f"global batch {global_batch} is not divisible by {self.world_size} ranks")
        self.per_device_train_batch_size = global_batch // self.world_size

    def lora_settings(self) -> LoraSettings | None:
        if self.lora.lower() == "none":
            return None
        settings = LoraSettings.preset(self.lora)
        if self.lora_r is not None:
            settings.r = self.lora_r
        if self.lora_alpha is not None:
            settings.alpha = self.lora_alpha
        settings.dropout = self.lora_dropout
        settings.include_vision = self.lora_include_vision
        return settings

    PRESETS = {
        # paper App. B.1: batch 512 = 2 sub-batches of 256 (2B), 256 = 2 x 128 (4B)
        "2b": {
            "lora": "2b",
            "sub_batch_size": 256,
            "sub_batches_per_batch": 2,
            "activation_checkpointing": True,
        },
        "4b": {
            "lora": "4b",
            "sub_batch_size": 128,
            "sub_batches_per_batch": 2,
            "activation_checkpointing": True,
        },
        "tiny": {
            "lora": "tiny",
            "sub_batch_size": 8,
            "sub_batches_per_batch": 1,
            "learning_rate": 2e-3,
            "warmup_steps": 2,
            "save_steps": 1000,
            "max_text_tokens": 128,
        },
    }


class PairDataset(Dataset):
    def __init__(self, pairs: list[TrainingPair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> TrainingPair:
        return self.pairs[index]

    def groups(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, pair in enumerate(self.pairs):
            out.setdefault(pair.dataset, []).append(i)
        return out

    def video_datasets(self) -> set[str]:
        return {p.dataset for p in self.pairs if p.is_video}


class PairCollator:
    """Pairs -> Embedder inputs (media loaded, teacher T-CoT evidence inserted). Tokenisation happens later,
    per chunk, so GradCache can cut the batch anywhere."""

    def __init__(self, embedder: Embedder, use_tcot: bool = True, use_negatives: bool = True):
        self.embedder = embedder
        self.use_tcot = use_tcot
        self.use_negatives = use_negatives  # False: their media are not even loaded

    def __call__(self, pairs: list[TrainingPair]) -> dict[str, Any]:
        def build(item, tcot):
            return self.embedder.build_input(item, tcot if self.use_tcot else None)

        negatives = [
            build(n, t)
            for p in pairs
            if self.use_negatives
            for n, t in zip(p.negatives, p.negative_tcots or [None] * len(p.negatives))
        ]
        return {
            "queries": [build(p.query, p.query_tcot) for p in pairs],
            "positives": [build(p.positive, p.positive_tcot) for p in pairs],
            "negatives": negatives,
            "datasets": [p.dataset for p in pairs],
        }


class EpochDataLoader(DataLoader):
    """Forwards `Trainer`'s `set_epoch` to the batch sampler, so that every epoch (and a resumed one, which
    accelerate re-wraps) draws the batches of its own epoch number."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


class EmbeddingModule(torch.nn.Module):
    """The backbone as an nn.Module whose forward returns pooled embeddings, so DDP wraps exactly the
    computation we back-propagate through."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.backbone = embedder.model
        self.emb_token_id = embedder.emb_token_id

    def forward(self, batches: list[dict[str, Any]] | None = None, **batch: Any) -> Any:
        """Embeddings of one collated batch, or a tuple of them for `batches` (each padded on its own)."""
        if batches is not None:
            return tuple(pooled_embeddings(self.backbone, b, self.emb_token_id) for b in batches)
        return pooled_embeddings(self.backbone, batch, self.emb_token_id)

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """What the Trainer calls for `gradient_checkpointing` / `activation_checkpointing`: checkpoint the
        backbone's layers (non-reentrant unless told otherwise), with inputs that require grad so that a frozen
        embedding layer under LoRA still lets gradients through."""
        kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        self.backbone.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
        )
        if hasattr(self.backbone, "enable_input_require_grads"):
            self.backbone.enable_input_require_grads()

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any
    ) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)


class _ClearGradientAfterStep(TrainerCallback):
    def __init__(self, parameter: torch.nn.Parameter):
        self.parameter = parameter

    def on_step_end(self, args, state, control, **kwargs):
        self.parameter.grad = None


class ContrastiveTrainer(Trainer):
    def __init__(
        self,
        embedder: Embedder,
        args: EmbedderTrainingConfig,
        train_dataset: PairDataset,
        mixture: Mixture | None = None,
        **kwargs: Any,
    ):
        self.embedder = embedder
        embedder.changed_in_memory = True  # training moves the weights away from any saved folder
        self.mixture = mixture
        self.loss_fn = ContrastiveLoss(
            args.temperature,
            args.learn_temperature,
            args.gather_with_grad,
            use_hard_negatives=args.use_hard_negatives,
        )
        self._accuracies: list[float] = []
        collator = PairCollator(embedder, args.use_tcot, args.use_hard_negatives)
        super().__init__(
            model=EmbeddingModule(embedder),
            args=args,
            train_dataset=train_dataset,
            data_collator=collator,
            **kwargs,
        )
        self.loss_fn.to(self.args.device)

    # ------------------------------------------------------------------------------------------------ data

    def get_train_dataloader(self) -> DataLoader:
        dataset: PairDataset = self.train_dataset  # type: ignore[assignment]
        video = dataset.video_datasets() | (self.mixture.video if self.mixture else set())
        sampler = SubBatchSampler(
            dataset.groups(),
            self.args.sub_batch_size,
            self.args.sub_batches_per_batch,
            weights=self.mixture.weights if self.mixture else None,
            video_datasets=video,
            max_video_sub_batches=self.args.max_video_sub_batches,
            world_size=self.args.world_size,
            rank=self.args.process_index,
            seed=self.args.seed,
        )
        # Not passed through accelerator.prepare: the sampler already yields this rank's slice.
        return EpochDataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )

    # ------------------------------------------------------------------------------------------- optimiser

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.args.learn_temperature and not any(
            self.loss_fn.log_scale is p for g in optimizer.param_groups for p in g["params"]
        ):
            optimizer.add_param_group({"params": [self.loss_fn.log_scale], "weight_decay": 0.0})
            # The Trainer zeroes the model's gradients after each step; the temperature lives outside the model.
            self.add_callback(_ClearGradientAfterStep(self.loss_fn.log_scale))
        return optimizer

    # ------------------------------------------------------------------------------------------------ step

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        scale = 1.0 / max(1, getattr(self, "current_gradient_accumulation_steps", 1))
        groups = self._groups(inputs)

        def encode(chunk):
            return model(**self.embedder.collate(chunk))

        if self.args.grad_cache_chunk:
            # Ranks replay different numbers of chunks when their negatives differ; that is safe because every
            # chunk but the last runs under no_sync, which makes no collective in DDP's forward or backward.
            distributed = self.args.world_size > 1
            out = grad_cache_step(
                encode,
                groups,
                self.loss_fn,
                self.args.grad_cache_chunk,
                backward=self.accelerator.backward,
                no_sync=(lambda: self.accelerator.no_sync(model)) if distributed else None,
                loss_scale=scale,
            )
        else:
            out = self.loss_fn(*self._encode_groups(model, groups))
            self.accelerator.backward(out.loss * scale)
        self._accuracies.append(out.accuracy)
        self._last_scale = out.scale
        return out.loss.detach() * scale

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out: LossOutput = self.loss_fn(*self._encode_groups(model, self._groups(inputs)))
        return (out.loss, out) if return_outputs else out.loss

    def _groups(self, inputs: dict[str, Any]) -> list[list]:
        """Queries, positives and (when used) this rank's hard negatives, which may be none: the loss gathers
        the other ranks' negatives all the same."""
        groups = [inputs["queries"], inputs["positives"]]
        if self.args.use_hard_negatives:
            groups.append(inputs["negatives"])
        return groups

    def _encode_groups(self, model, groups: list[list]) -> list[torch.Tensor | None]:
        """Every non-empty group in ONE call of the model (None for an empty one). DDP broadcasts buffers in
        each forward, so a rank without hard negatives making one call fewer than the others would pair its
        next collective with their broadcast and hang; one call also lets DDP's unused-parameter search see
        every group's graph, not only the last one's."""
        present = [g for g in groups if g]
        reps = iter(model(batches=[self.embedder.collate(g) for g in present]))
        return [next(reps) if g else None for g in groups]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._accuracies and "loss" in logs:
            logs["accuracy"] = round(sum(self._accuracies) / len(self._accuracies), 4)
            logs["logit_scale"] = round(getattr(self, "_last_scale", 0.0), 3)
            self._accuracies.clear()
        super().log(logs, start_time)

    # -------------------------------------------------------------------------------------- checkpoints

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        # The adapter only (LoRA) or the full backbone: not the wrapper's full state dict.
        self.embedder.model.save_pretrained(out)
        save_processor(self.embedder.processor, out)  # so a checkpoint loads like any Embedder folder
        self.embedder.config.save(out)
        torch.save({"log_scale": self.loss_fn.log_scale.detach().cpu()}, out / "embedrl_loss.pt")
        torch.save(self.args, out / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_file

        ckpt = Path(resume_from_checkpoint)
        backbone = self.embedder.model
        adapter = ckpt / "adapter_model.safetensors"
        if adapter.is_file():
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(backbone, load_file(str(adapter)))
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ConfigError(f"{adapter}: adapter does not match the model ({unexpected[:3]} ...)")
        else:
            weights = sorted(ckpt.glob("model*.safetensors"))
            if not weights:
                raise ConfigError(f"{ckpt}: no adapter or model weights to resume from")
            state: dict[str, torch.Tensor] = {}
            for w in weights:
                state.update(load_file(str(w)))
            backbone.load_state_dict(state, strict=False)
        loss_state = ckpt / "embedrl_loss.pt"
        if loss_state.is_file():
            with torch.no_grad():
                self.loss_fn.log_scale.copy_(torch.load(loss_state)["log_scale"])


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` folder. A save cut short by a kill has no `trainer_state.json` (the
    Trainer writes it last) and is passed over, as are folders whose names only start like a checkpoint."""
    complete = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and (folder / "trainer_state.json").is_file():
            complete.append((int(step), folder))
        elif step.isdigit():
            log.warning("%s: incomplete checkpoint (no trainer_state.json), not resumed from", folder)
    return str(max(complete)[1]) if complete else None


def log_hard_negatives(pairs: list[TrainingPair], used: bool) -> None:
    carrying = [p for p in pairs if p.negatives]
    count = sum(len(p.negatives) for p in carrying)
    if not carrying:
        log.info("hard negatives: none in the %d pairs; in-batch negatives only", len(pairs))
    elif used:
        log.info(
            "hard negatives: used; %d of %d pairs carry them (%d in all)", len(carrying), len(pairs), count
        )
    else:
        log.info(
            "hard negatives: ignored (use_hard_negatives=False), in-batch negatives only; "
            "%d of %d pairs carry them (%d in all)",
            len(carrying),
            len(pairs),
            count,
        )


def train_embedder(
    model_path: str | Path,
    pairs: list[TrainingPair],
    config: EmbedderTrainingConfig,
    resume: bool | str = False,
    callbacks: list | None = None,
) -> Path:
    """Run stage 1 and return the final Embedder checkpoint folder (merged LoRA by default)."""
    from ..models.backbone import LoadOptions
    from ..models.embedder import EmbedderConfig

    embedder_config = EmbedderConfig.load(model_path)
    embedder_config.max_text_tokens = config.max_text_tokens
    options = LoadOptions(
        dtype="float32" if not (config.bf16 or config.fp16) else "auto",
        device="cpu" if config.use_cpu else "auto",
    )
    embedder = Embedder.from_pretrained(model_path, options, config=embedder_config)
    lora = config.lora_settings()
    if lora is not None:
        set_seed(config.seed)  # LoRA A-matrices are drawn here: a rerun must draw the same ones
        embedder.add_lora(lora)
    mixture = Mixture.from_yaml(config.mixture) if config.mixture else None
    log_hard_negatives(pairs, config.use_hard_negatives)
    trainer = ContrastiveTrainer(embedder, config, PairDataset(pairs), mixture=mixture, callbacks=callbacks)
    checkpoint = None
    if resume:
        checkpoint = resume if isinstance(resume, str) else latest_checkpoint(config.output_dir)
        if checkpoint is None:
            log.warning("no checkpoint found in %s; starting from scratch", config.output_dir)
    trainer.train(resume_from_checkpoint=checkpoint)
    out = Path(config.output_dir)
    final = out / "final"
    if trainer.is_world_process_zero():
        embedder.name_or_path = str(model_path)
        embedder.save_pretrained(final, merge=config.merge_lora)
        write_run_outputs(
            out,
            trainer.state.log_history,
            {"stage": 1, "model": str(model_path), "pairs": len(pairs)},
            config,
            "training_curve.png" if config.plot else None,
            ("loss", "accuracy"),
            "Stage 1: Embedder contrastive training",
        )
    return final
