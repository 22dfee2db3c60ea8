"""`embedrl report`: MMEB-V2 / UVRB tables from per-task results."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from ..eval.report import __doc__ as report_doc

    p = sub.add_parser("report", help="aggregate per-task results into the MMEB-V2 or UVRB table",
                       description=report_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", choices=["mmeb-v2", "uvrb"], required=True)
    p.add_argument("inputs", nargs="+", metavar="RESULTS_DIR_OR_JSON")
    p.add_argument("--format", choices=["md", "json", "csv"], default="md")
    p.add_argument("--out", help="write the table here instead of printing it")
    p.add_argument("--plot", metavar="FILE", help="bar chart PNG of modality / ability scores")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ..eval.report import build_report, plot_report, render_csv, render_markdown
    from ..fileio import write_text

    report = build_report(args.benchmark, args.inputs)
    if args.format == "md":
        text = render_markdown(report)
    elif args.format == "csv":
        text = render_csv(report)
    else:
        text = json.dumps(report.to_json(), indent=2) + "\n"
    if args.out:
        write_text(args.out, text)
    else:
        print(text, end="")
    if args.plot:
        plot_report(report, args.plot)
    return 0
