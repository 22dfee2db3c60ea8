"""`embedrl models make-tiny`: offline tiny Qwen-VL checkpoints for tests and demos."""

from __future__ import annotations

import argparse

from ..models.families import FAMILIES
from ._checks import FOLDER, Output, check_outputs, non_negative_int, positive_int, require_empty_or, writing


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="build and inspect model checkpoints")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    tiny = msub.add_parser(
        "make-tiny",
        help="build a tiny randomly initialised Qwen-VL checkpoint offline",
        description="Builds a tiny Qwen-VL checkpoint with random weights and a tokenizer trained on the spot "
        "(no download). The folder loads like any real checkpoint. --role embedder adds the <emb> token and "
        "writes emb_token_ids; the result is deterministic for a given --seed. --out must be new, empty, or "
        "an earlier make-tiny build (which is replaced).",
    )
    tiny.add_argument("--family", choices=sorted(FAMILIES), default="qwen3-vl")
    tiny.add_argument(
        "--out", required=True, help="output folder (new, empty, or an earlier make-tiny build)"
    )
    tiny.add_argument(
        "--role",
        choices=["base", "embedder"],
        default="base",
        help="base: a plain model (reasoner or starting point); embedder: with <emb> (default base)",
    )
    tiny.add_argument("--seed", type=non_negative_int, default=0)
    tiny.add_argument(
        "--hidden-size",
        type=positive_int,
        default=128,
        help="text hidden size, a multiple of 8 (default 128)",
    )
    tiny.add_argument("--layers", type=positive_int, default=2, help="text decoder layers (default 2)")
    tiny.set_defaults(func=_make_tiny)


def _make_tiny(args: argparse.Namespace) -> int:
    from ..models.tiny import MARKER, TinySize, make_tiny

    size = TinySize(
        hidden_size=args.hidden_size, num_layers=args.layers, intermediate_size=2 * args.hidden_size
    )
    check_outputs([Output("--out", args.out, FOLDER)])
    require_empty_or(args.out, "--out", MARKER, "make-tiny")
    with writing(args.out):
        out = make_tiny(args.family, args.out, seed=args.seed, size=size)
        if args.role == "embedder":
            from ..models.embedder import Embedder

            Embedder.from_pretrained(out).save_pretrained(out)
    print(f"wrote {args.family} ({args.role}) to {out}")
    return 0
