"""`embedrl train reasoner`: stage 2, EG-RL (GRPO with embedder-guided rewards) on TRL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._checks import checkpoint, non_negative_float, non_negative_int, positive_float, positive_int, writing

HELP = """\
Stage 2: Embedder-Guided RL. Each step takes B query-positive pairs of one dataset; the Reasoner writes G T-CoTs
for every query and positive; the frozen Embedder embeds each rollout with its crops/keyframes; rewards are
format + in-batch outcome (symmetric) + a listwise judge's process reward (0.05 / 0.8 / 0.2, --reward-preset).

The Embedder runs in-process (--embedder DIR) or remotely (--embedder-url of `embedrl serve --embedder`); the
judge likewise (--judge DIR or --judge-url of any OpenAI-compatible chat server). Without a judge, pass
--process-weight 0. --sft-steps N first fine-tunes on the pairs' teacher T-CoTs (cold start for small models).
Settings: --preset, then --config YAML (any EGRLConfig / GRPOConfig field), then flags. OUT/final is the
Reasoner; OUT/rl_curves.png and OUT/log_history.json hold the per-step rewards, Acc, margin and lengths.
"""

FIELDS = (
    "max_steps",
    "num_train_epochs",
    "learning_rate",
    "pairs_per_step",
    "num_generations",
    "max_completion_length",
    "reward_preset",
    "format_weight",
    "process_weight",
    "outcome_weight",
    "acc_mode",
    "beta",
    "epsilon",
    "temperature",
    "lora",
    "save_steps",
    "seed",
    "use_cpu",
    "use_vllm",
    "steps_per_generation",
)


def register_reasoner(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "reasoner",
        help="stage 2: EG-RL (GRPO) on the Reasoner",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=checkpoint, help="Reasoner checkpoint to start from")
    p.add_argument("--pairs", required=True, help="training pairs JSONL (same format as stage 1)")
    p.add_argument("--out", required=True, help="output folder (checkpoint-N, final/, training curve)")
    emb = p.add_mutually_exclusive_group(required=True)
    emb.add_argument("--embedder", type=checkpoint, help="frozen Embedder checkpoint (in-process)")
    emb.add_argument("--embedder-url", help="OpenAI-compatible /v1/embeddings server (embedrl serve)")
    p.add_argument("--judge", type=checkpoint, help="judge checkpoint (in-process transformers backend)")
    p.add_argument("--judge-url", help="OpenAI-compatible chat endpoint of the judge")
    p.add_argument("--judge-model", default="judge", help="model name sent to --judge-url")
    p.add_argument(
        "--preset", choices=["paper", "tiny"], help="paper: B=4, G=8, 2048-token rollouts; tiny: CPU tests"
    )
    p.add_argument("--config", help="YAML with any EGRLConfig / GRPOConfig field")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument(
        "--sft-steps", type=non_negative_int, default=0, help="SFT cold start on teacher T-CoTs first"
    )
    p.add_argument(
        "--max-steps", type=positive_int, dest="max_steps", help="optimizer steps (overrides --epochs)"
    )
    p.add_argument(
        "--epochs", type=positive_float, dest="num_train_epochs", help="passes over the pairs (default 3)"
    )
    p.add_argument("--lr", type=non_negative_float, dest="learning_rate", help="learning rate (default 3e-6)")
    p.add_argument("--pairs-per-step", type=positive_int, dest="pairs_per_step", help="B per rank")
    p.add_argument("--generations", type=positive_int, dest="num_generations", help="G rollouts per prompt")
    p.add_argument(
        "--max-completion-length",
        type=positive_int,
        dest="max_completion_length",
        help="longest T-CoT rollout in tokens (default 512)",
    )
    p.add_argument(
        "--reward-preset",
        choices=["paper", "official-code"],
        dest="reward_preset",
        help="reward weights: the paper's (default) or the official code's",
    )
    p.add_argument(
        "--format-weight",
        type=non_negative_float,
        dest="format_weight",
        help="overrides the preset's format weight",
    )
    p.add_argument(
        "--process-weight",
        type=non_negative_float,
        dest="process_weight",
        help="overrides the preset's process (judge) weight; 0 runs without a judge",
    )
    p.add_argument(
        "--outcome-weight",
        type=non_negative_float,
        dest="outcome_weight",
        help="overrides the preset's outcome weight",
    )
    p.add_argument(
        "--acc-mode",
        choices=["all", "fraction"],
        dest="acc_mode",
        help="outcome accuracy: all positives in the top (paper, default) or their fraction (code)",
    )
    p.add_argument("--beta", type=non_negative_float, help="KL coefficient")
    p.add_argument("--epsilon", type=positive_float, help="clip range")
    p.add_argument("--temperature", type=positive_float, help="rollout sampling temperature (default 1.0)")
    p.add_argument("--lora", help="none (full fine-tune) or r,alpha")
    p.add_argument(
        "--steps-per-generation",
        type=positive_int,
        dest="steps_per_generation",
        help="micro-batches the 2*B*G rollouts of a step are split into (default 1)",
    )
    p.add_argument(
        "--save-steps", type=positive_int, dest="save_steps", help="checkpoint every N steps (default 100)"
    )
    p.add_argument("--seed", type=non_negative_int, help="data order, sampling and judge-order seed")
    p.add_argument(
        "--cpu",
        action="store_true",
        dest="use_cpu",
        default=None,
        help="train on the CPU even if a GPU is present",
    )
    p.add_argument(
        "--vllm", action="store_true", dest="use_vllm", default=None, help="vLLM rollouts (GPU extra)"
    )
    p.set_defaults(func=_train_reasoner)


def _train_reasoner(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..models.backbone import LoadOptions
    from ..train.egrl import EGRLConfig, Judge, local_embed_fn, sft_cold_start, train_reasoner
    from ..train.pairs import dataset_summary, read_pairs
    from ._config import build_config, check_out

    check_out(
        args,
        ("--model", args.model),
        ("--pairs", args.pairs),
        ("--embedder", args.embedder),
        ("--judge", args.judge),
        ("--config", args.config),
    )
    config = build_config(EGRLConfig, args, FIELDS, EGRLConfig.PRESETS)
    pairs = read_pairs(args.pairs)
    print(json.dumps(dataset_summary(pairs), indent=1))
    options = LoadOptions(device="cpu" if config.use_cpu else "auto")
    if args.embedder_url:
        from ..models.remote import RemoteEmbedder

        if config.num_frames is None:
            config.num_frames = 8  # a remote Embedder's saved setting is not known here; 8 is the paper's
        embed_fn = RemoteEmbedder(args.embedder_url).embed
    else:
        from ..models.embedder import Embedder, is_embedder_checkpoint

        if Path(args.embedder).is_dir() and not is_embedder_checkpoint(
            args.embedder
        ):  # hub ids: not checkable
            raise ConfigError(
                f"{args.embedder} is not an Embedder checkpoint (no embedrl_embedder.json, no "
                "emb_token_ids in config.json): its <emb> pooling is untrained, so the outcome "
                "reward would be noise. Use the output of `embedrl train embedder` or an official "
                "Embed-RL checkpoint."
            )
        embedder = Embedder.from_pretrained(args.embedder, options)
        if config.num_frames is None:
            config.num_frames = embedder.config.num_frames  # one owner: the frames it was trained with
        embed_fn = local_embed_fn(embedder)
    judge = None
    if args.judge_url:
        from ..models.reasoner import OpenAIChatBackend

        judge = Judge(OpenAIChatBackend(args.judge_url, args.judge_model), config.judge_max_new_tokens)
    elif args.judge:
        from ..models.reasoner import TransformersBackend

        judge = Judge(TransformersBackend.from_pretrained(args.judge, options), config.judge_max_new_tokens)
    model = args.model
    with writing(args.out):
        if args.sft_steps > 0:
            model = str(
                sft_cold_start(
                    model,
                    pairs,
                    f"{args.out}/sft",
                    max_steps=args.sft_steps,
                    use_cpu=bool(config.use_cpu),
                    num_frames=config.num_frames,
                    seed=config.seed,
                )
            )
            print(f"SFT cold start: {model}")
        final, _ = train_reasoner(model, pairs, config, embed_fn, judge, resume=args.resume)
    print(f"final reasoner: {final}")
    return 0
