"""`embedrl report`: aggregate per-task results into the MMEB-V2 or UVRB table."""

from __future__ import annotations

import argparse

HELP = """\
Reads per-task results and prints the benchmark table.

Inputs (files or folders, folders searched recursively for *.json):
  - result JSONs of `embedrl score` / `embedrl eval`;
  - the VLM2Vec / Embed-RL leaderboard score layout (metrics.{image,video,visdoc}.{task}) and VLM2Vec
    <task>_score.json files (MMEB-V2);
  - a plain {"task or dataset": score} mapping (percent, or fractions when every value is <= 1).

MMEB-V2: per-task scores (x100; hit@1 for image/video, ndcg_linear@5 for visdoc), meta-task means, modality
means (Image 36, Video 18, VisDoc 24) and the overall mean of the 78 tasks: flat means over tasks.
UVRB: the 16 dataset scores (R@1; R@10 for CMRB and LoVR-TH; P@1 for MS-TI and MS-TV), their mean, and the
ability columns in the hierarchical (GVE) and the flat (Embed-RL) scheme.

Missing tasks are listed and every mean that lacks one is marked partial (n/N).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="aggregate per-task results into the MMEB-V2 / UVRB table",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--benchmark", required=True, choices=["mmeb-v2", "uvrb"])
    p.add_argument("inputs", nargs="+", metavar="RESULTS_DIR_OR_JSON")
    p.add_argument("--format", choices=["md", "json", "csv"], default="md")
    p.add_argument("--out", metavar="FILE", help="write the table here (default: print it)")
    p.add_argument("--plot", metavar="FILE.png", help="also write a bar chart of modality / ability scores")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    import sys

    from ..eval.report import build_report, plot_report, render
    from ..fileio import write_text
    from ._checks import Output, check_outputs, writing

    # an output inside a results folder would also be read as a result by the next report
    check_outputs(
        [Output(flag, path) for flag, path in (("--out", args.out), ("--plot", args.plot)) if path],
        [("", args.inputs)],
    )
    report = build_report(args.benchmark, args.inputs)
    text = render(report, args.format)
    if args.out:
        with writing(args.out):
            write_text(args.out, text)
        print(
            f"{report.benchmark}: {len(report.tasks) - len(report.missing)}/{len(report.tasks)} tasks -> "
            f"{args.out}"
        )
    else:
        sys.stdout.write(text)
    if args.plot:
        with writing(args.plot):
            plot_report(report, args.plot)
        print(f"plot -> {args.plot}", file=sys.stderr)
    if report.missing and args.format != "md":
        print(f"{len(report.missing)} task(s) missing; partial means are marked", file=sys.stderr)
    return 0
