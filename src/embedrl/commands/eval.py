"""`embedrl eval`: encode and score task folders end to end (resumable), one result JSON per task."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._checks import FOLDER, Output, check_outputs, positive_int, writing
from ._models import add_model_arguments, load_models, model_inputs

HELP = """\
For each task folder: the Reasoner writes T-CoTs for candidates (candidate prompts) and queries (query prompts),
the Embedder embeds input + evidence, and the task is scored (every metric at k = 1, 5, 10 and the task's main
score). Results go to OUT/<benchmark>/<task>.json; aggregate them with `embedrl report`.

Resuming: finished tasks are skipped (--overwrite recomputes), and T-CoTs and vectors of an interrupted task
are cached under OUT/cache, so rerunning the same command continues where it stopped.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="run retrieval tasks end to end (encode + score)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--task", nargs="+", required=True, metavar="DIR", help="task folder(s) in the unified format"
    )
    add_model_arguments(p)
    p.add_argument(
        "--reasoning",
        choices=["generate", "cached", "off"],
        help="default: generate with a reasoner, else off; cached uses T-CoTs given in item meta",
    )
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument(
        "--batch-size", type=positive_int, default=8, help="items per Embedder (and Reasoner) batch"
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--label", help="run name stored in every result")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from ..eval.runner import EvalSettings, evaluate_tasks

    check_outputs([Output("--out", Path(args.out), FOLDER)], [("--task", args.task), *model_inputs(args)])
    embedder, reasoner = load_models(args)
    settings = EvalSettings(
        reasoning=args.reasoning,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        label=args.label,
    )
    with writing(args.out):
        results, errors = evaluate_tasks(
            args.task, embedder, reasoner, out_dir=Path(args.out), settings=settings
        )
    for r in results:
        kept = " (kept: an identical earlier run's result)" if r.get("run", {}).get("reused") else ""
        print(f"{r['benchmark']}/{r['task']}: {r['primary_metric']} = {100 * r['main_score']:.2f}{kept}")
    for e in errors:
        print(f"failed: {e}", file=sys.stderr)
    return 1 if errors else 0
