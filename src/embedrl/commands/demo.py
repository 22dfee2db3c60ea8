"""`embedrl demo`: the whole pipeline on the bundled synthetic benchmark, offline, on CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._checks import FOLDER, Output, check_outputs, non_negative_int, positive_int, writing


def register(sub: argparse._SubParsersAction) -> None:
    from ..demo import __doc__ as demo_doc

    p = sub.add_parser("demo", help="run the whole pipeline on the synthetic benchmark with tiny models",
                       description=demo_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--eval-size", type=positive_int, default=24, help="queries per synthetic task")
    p.add_argument("--train-size", type=positive_int, default=96, help="training pairs")
    p.add_argument("--stage1-steps", type=positive_int, default=40)
    p.add_argument("--stage2-steps", type=positive_int, default=4)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, run_demo

    check_outputs([Output("--out", args.out, FOLDER)])
    with writing(args.out):
        run_demo(DemoSettings(out=Path(args.out), n_eval=args.eval_size, n_train=args.train_size,
                              stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, seed=args.seed))
    return 0
