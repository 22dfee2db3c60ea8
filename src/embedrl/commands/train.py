"""`embedrl train embedder | reasoner | check-data`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import Problem
from ._checks import (
    checkpoint,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    writing,
)
from ._config import build_config, check_out

EMBEDDER_HELP = """\
Stage 1: contrastive training of the Embedder on T-CoT-conditioned pairs.

Settings come from, in increasing priority: --preset, --config YAML (any field of EmbedderTrainingConfig,
including every HF TrainingArguments field), then the flags below. Checkpoints go to OUT/checkpoint-N; rerun
with --resume to continue exactly where a run stopped. The final Embedder (LoRA merged) is OUT/final, with
OUT/training_curve.png and OUT/log_history.json.

Multi-GPU: launch the same command with accelerate, e.g.
  accelerate launch --config_file configs/accelerate/ddp.yaml -m embedrl train embedder ...
  accelerate launch --config_file configs/accelerate/zero2.yaml -m embedrl train embedder ... \\
      --config configs/train/embedder-2b.yaml
"""


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="stage 1 (embedder) and stage 2 (reasoner) training")
    tsub = train.add_subparsers(dest="train_command", metavar="STAGE", required=True)

    emb = tsub.add_parser(
        "embedder",
        help="stage 1: contrastive Embedder training",
        description=EMBEDDER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    emb.add_argument(
        "--model", required=True, type=checkpoint, help="starting checkpoint (Qwen-VL or an embedrl Embedder)"
    )
    emb.add_argument("--pairs", required=True, help="training pairs JSONL (see `embedrl train check-data`)")
    emb.add_argument("--out", required=True, help="output folder")
    emb.add_argument(
        "--preset", choices=["2b", "4b", "tiny"], help="paper batch/LoRA settings (tiny: CPU tests)"
    )
    emb.add_argument("--config", help="YAML with any EmbedderTrainingConfig / TrainingArguments fields")
    emb.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    emb.add_argument(
        "--max-steps", type=positive_int, dest="max_steps", help="optimizer steps (overrides --epochs)"
    )
    emb.add_argument(
        "--epochs", type=positive_float, dest="num_train_epochs", help="passes over the pairs (default 2)"
    )
    emb.add_argument(
        "--lr", type=non_negative_float, dest="learning_rate", help="peak learning rate (default 1e-4)"
    )
    emb.add_argument(
        "--sub-batch-size",
        type=positive_int,
        dest="sub_batch_size",
        help="pairs per single-dataset sub-batch: the in-batch negatives come from here",
    )
    emb.add_argument(
        "--sub-batches-per-batch",
        type=positive_int,
        dest="sub_batches_per_batch",
        help="sub-batches per optimizer step (global batch = the product)",
    )
    emb.add_argument(
        "--grad-cache-chunk",
        type=positive_int,
        dest="grad_cache_chunk",
        help="GradCache chunk size: large batches in bounded memory",
    )
    emb.add_argument("--mixture", help="dataset weights YAML")
    emb.add_argument(
        "--tcot",
        action=argparse.BooleanOptionalAction,
        dest="use_tcot",
        default=None,
        help="condition on the teacher T-CoTs (default); --no-tcot: raw inputs, the paper's baseline",
    )
    emb.add_argument(
        "--hard-negatives",
        action=argparse.BooleanOptionalAction,
        dest="use_hard_negatives",
        default=None,
        help="add the pairs' explicit hard negatives to the in-batch ones (default); "
        "--no-hard-negatives: in-batch negatives only, the paper's stage-1 loss",
    )
    emb.add_argument("--lora", help="LoRA preset (2b, 4b, tiny) or none for full fine-tuning")
    emb.add_argument("--lora-r", type=positive_int, dest="lora_r", help="LoRA rank (overrides the preset's)")
    emb.add_argument(
        "--lora-alpha", type=positive_int, dest="lora_alpha", help="LoRA alpha (overrides the preset's)"
    )
    emb.add_argument(
        "--vision-lora",
        action=argparse.BooleanOptionalAction,
        dest="lora_include_vision",
        default=None,
        help="put LoRA on the vision tower's linear layers too (default: yes)",
    )
    emb.add_argument("--temperature", type=positive_float, help="InfoNCE temperature tau (default 0.02)")
    emb.add_argument(
        "--learn-temperature",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learn log(1/tau) along with the weights",
    )
    emb.add_argument(
        "--save-steps", type=positive_int, dest="save_steps", help="checkpoint every N steps (for --resume)"
    )
    emb.add_argument("--seed", type=non_negative_int, help="data order and LoRA initialisation seed")
    emb.add_argument(
        "--cpu",
        action="store_true",
        dest="use_cpu",
        default=None,
        help="train on the CPU even if a GPU is present",
    )
    emb.add_argument(
        "--gradient-checkpointing",
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        dest="activation_checkpointing",
        default=None,
        help="recompute activations in the backward pass: less memory, about 30%% slower",
    )
    emb.set_defaults(func=_train_embedder)

    check = tsub.add_parser(
        "check-data",
        help="validate a training pairs file; one line per defect",
        description="Checks every line of a pairs JSONL file (see embedrl.train.pairs) and "
        "prints a per-dataset summary. Exit 1 if any defect was found.",
    )
    check.add_argument("pairs")
    media = check.add_mutually_exclusive_group()
    media.add_argument("--no-media", action="store_true", help="skip checking that media files exist")
    media.add_argument(
        "--decode",
        action="store_true",
        help="also decode every image, frame and video of the valid pairs the way training loads "
        "them (slower: reads all media), so a corrupt file is found before it stops a run",
    )
    check.set_defaults(func=_check_data)

    try:
        from .train_reasoner import register_reasoner
    except ImportError:  # stage 2 not available
        return
    register_reasoner(tsub)


FLAG_FIELDS = (
    "max_steps",
    "num_train_epochs",
    "learning_rate",
    "sub_batch_size",
    "sub_batches_per_batch",
    "grad_cache_chunk",
    "mixture",
    "use_tcot",
    "lora",
    "lora_r",
    "lora_alpha",
    "lora_include_vision",
    "temperature",
    "learn_temperature",
    "save_steps",
    "seed",
    "use_cpu",
    "activation_checkpointing",
    "use_hard_negatives",
)


def _train_embedder(args: argparse.Namespace) -> int:
    from ..train.pairs import dataset_summary, read_pairs
    from ..train.stage1 import EmbedderTrainingConfig, train_embedder

    check_out(
        args,
        ("--model", args.model),
        ("--pairs", args.pairs),
        ("--config", args.config),
        ("--mixture", args.mixture),
    )
    config = build_config(EmbedderTrainingConfig, args, FLAG_FIELDS, EmbedderTrainingConfig.PRESETS)
    pairs = read_pairs(args.pairs)
    print(json.dumps(dataset_summary(pairs), indent=1))
    with writing(args.out):
        final = train_embedder(args.model, pairs, config, resume=args.resume)
    print(f"final embedder: {final}")
    return 0


def _undecodable_pairs(file: str, pairs: list) -> list[Problem]:
    from tqdm.auto import tqdm

    from ..data.media import decode_problems

    seen: dict[str, str | None] = {}
    problems = []
    for pair in tqdm(pairs, desc="decode", unit="pair", leave=False):
        sides = [("query", pair.query), ("positive", pair.positive)]
        sides += [(f"negatives[{i}]", item) for i, item in enumerate(pair.negatives)]
        for side, item in sides:
            for field, message in decode_problems(item, seen=seen):
                problems.append(Problem(file, message, line=pair.line, field=f"{side}.{field}"))
    return problems


def _check_data(args: argparse.Namespace) -> int:
    from ..train.pairs import dataset_summary, load_pairs

    pairs, problems = load_pairs(Path(args.pairs), check_media=not args.no_media)
    if not pairs and not problems:  # training refuses such a file, so the check must too
        problems.append(Problem(args.pairs, "no training pairs"))
    if args.decode:
        problems += _undecodable_pairs(args.pairs, pairs)
    for problem in problems:
        print(problem)
    print(json.dumps(dataset_summary(pairs), indent=1))
    return 1 if problems else 0
