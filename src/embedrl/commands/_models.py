"""Model flags shared by the commands that encode (`encode`, `eval`), and loading from them."""

from __future__ import annotations

import argparse
from typing import Any

from ..models.protocols import EmbedderLike
from ._checks import checkpoint, device, non_negative_float, positive_int


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedder", required=True, type=checkpoint, help="Embedder checkpoint (folder or hub id)"
    )
    parser.add_argument("--reasoner", type=checkpoint, help="Reasoner checkpoint (transformers backend)")
    parser.add_argument("--reasoner-url", help="OpenAI-compatible endpoint serving the Reasoner instead")
    parser.add_argument("--reasoner-model", default="reasoner", help="model name sent to --reasoner-url")
    parser.add_argument("--max-new-tokens", type=positive_int, default=512, help="T-CoT length limit")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument(
        "--device",
        type=device,
        default="auto",
        help="auto | cpu | cuda | cuda:N | mps (checked against this machine)",
    )
    add_evidence_style_argument(parser)


def add_evidence_style_argument(parser: argparse.ArgumentParser) -> None:
    from ..models.evidence import EVIDENCE_STYLES

    parser.add_argument(
        "--evidence-style",
        choices=sorted(EVIDENCE_STYLES),
        default=None,
        help="how the Embedder reads a T-CoT's cue (default: the checkpoint's saved setting; 'paper' for a "
        "released Embed-RL checkpoint). official: as the official evaluation, 0-based key_frames included, "
        "for reproducing published numbers; paper: official with 1-based key_frames; embedrl: also repairs "
        "broken cue JSON, keeps at most 4 crops and drops repeats. See docs/embedder-input.md",
    )


def apply_evidence_style(embedder: EmbedderLike, args: argparse.Namespace) -> None:
    """Set the Embedder's evidence rules from --evidence-style, when given."""
    style = getattr(args, "evidence_style", None)
    if style:
        embedder.config = embedder.config.with_style(style)


def model_inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The checkpoints of `add_model_arguments` as inputs that no output may replace."""
    return [("--embedder", args.embedder), ("--reasoner", args.reasoner)]


def load_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Embedder, Reasoner or None) from the flags of `add_model_arguments`."""
    from ..models.backbone import LoadOptions
    from ..models.embedder import Embedder
    from ..models.reasoner import GenerationSettings, OpenAIChatBackend, Reasoner

    options = LoadOptions(dtype=args.dtype, device=args.device)
    embedder = Embedder.from_pretrained(args.embedder, options)
    apply_evidence_style(embedder, args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    frames = embedder.config.num_frames
    if args.reasoner_url:
        return embedder, Reasoner(
            OpenAIChatBackend(args.reasoner_url, args.reasoner_model), settings, num_frames=frames
        )
    if args.reasoner:
        return embedder, Reasoner.from_pretrained(
            args.reasoner, options, batch_size=args.batch_size, settings=settings, num_frames=frames
        )
    return embedder, None
