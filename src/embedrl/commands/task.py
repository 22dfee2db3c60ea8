"""`embedrl task validate DIR` and `embedrl task info DIR`."""

from __future__ import annotations

import argparse
import json
import sys

from ..data.taskdir import read_task, summarize, validate_task


def register(sub: argparse._SubParsersAction) -> None:
    task = sub.add_parser("task", help="inspect and validate task folders (unified format)",
                          description="Tools for task folders in the unified format (task.json, "
                          "queries.jsonl, candidates.jsonl, qrels.jsonl, media/).")
    tsub = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    val = tsub.add_parser("validate", help="check a task folder; print one line per defect",
                          description="Checks JSON syntax, required fields, duplicate ids, qrels that name "
                          "unknown ids, local queries without candidates, and media paths that are missing "
                          "or escape the folder. Prints one line per defect (file:line: field: message) "
                          "and exits 1 if any were found.")
    val.add_argument("dirs", nargs="+", metavar="DIR", help="task folder(s)")
    val.add_argument("--no-media", action="store_true", help="skip checking that media files exist")
    val.set_defaults(func=_validate)
    info = tsub.add_parser("info", help="print a summary of a task folder as JSON")
    info.add_argument("dir", metavar="DIR")
    info.set_defaults(func=_info)


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for directory in args.dirs:
        problems = validate_task(directory, check_media=not args.no_media)
        for problem in problems:
            print(problem)
        if problems:
            failed += 1
            print(f"{directory}: {len(problems)} problem(s)", file=sys.stderr)
        else:
            print(f"{directory}: OK")
    return 1 if failed else 0


def _info(args: argparse.Namespace) -> int:
    print(json.dumps(summarize(read_task(args.dir)), indent=2))
    return 0
