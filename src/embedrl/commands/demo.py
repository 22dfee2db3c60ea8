"""`embedrl demo`: Embed-RL's whole loop on the synthetic evidence benchmark with tiny models, offline, on CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._checks import FOLDER, Output, check_outputs, non_negative_int, positive_int, writing


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from ..demo import __doc__ as demo_doc

    p = sub.add_parser(
        "demo",
        help="run Embed-RL's whole loop on a synthetic benchmark with tiny models",
        description=demo_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", default="demo-output", help="output folder (default: demo-output); a rerun resumes"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one seed, small data and budgets (about 2.5 minutes on 2 cores): a check of the machinery",
    )
    p.add_argument("--seeds", type=positive_int, help="seeds to run (default 3; 1 with --quick)")
    p.add_argument("--first-seed", type=non_negative_int, default=0, help="first seed (default 0)")
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="seeds run in parallel processes (default: all seeds, up to twice the CPU cores; each "
        "gets cores / workers threads, at least one)",
    )
    p.add_argument(
        "--ablations",
        action="store_true",
        help="also train and evaluate EG-RL without the outcome and without the process reward",
    )
    p.add_argument(
        "--judge",
        choices=["ground-truth", "none"],
        default="ground-truth",
        help="process-reward judge: the ground-truth synthetic judge (default) or none (process weight 0)",
    )
    p.add_argument(
        "--split",
        choices=["test", "dev"],
        default="test",
        help="evaluation split: test (reported numbers) or dev (a separate split for tuning)",
    )
    budgets = p.add_argument_group("budgets (defaults: the preset's)")
    budgets.add_argument("--stage1-steps", type=positive_int, help="T-CoT Embedder steps")
    budgets.add_argument("--raw-steps", type=positive_int, help="raw-input Embedder steps")
    budgets.add_argument("--sft-steps", type=positive_int, help="SFT cold-start steps")
    budgets.add_argument("--rl-steps", type=positive_int, help="EG-RL steps")
    budgets.add_argument("--noise-loose", type=_rate, help="teacher: share of loose T-CoTs (default 0.5)")
    budgets.add_argument("--noise-wrong", type=_rate, help="teacher: share of wrong T-CoTs (default 0.1)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, run_demo
    from ..errors import ConfigError

    check_outputs([Output("--out", args.out, FOLDER)])
    overrides = {
        k: v
        for k, v in {
            "seeds": args.seeds,
            "first_seed": args.first_seed,
            "workers": args.workers,
            "ablations": args.ablations,
            "judge": args.judge,
            "split": args.split,
            "stage1_steps": args.stage1_steps,
            "raw_steps": args.raw_steps,
            "sft_steps": args.sft_steps,
            "rl_steps": args.rl_steps,
            "noise_loose": args.noise_loose,
            "noise_wrong": args.noise_wrong,
        }.items()
        if v is not None
    }
    out = Path(args.out)
    settings = (
        DemoSettings.quick_preset(out, **overrides) if args.quick else DemoSettings(out=out, **overrides)
    )
    if settings.noise_loose + settings.noise_wrong > 1:
        raise ConfigError("--noise-loose plus --noise-wrong must not exceed 1")
    with writing(args.out):
        run_demo(settings)
    return 0
