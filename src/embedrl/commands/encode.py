"""`embedrl encode`: items.jsonl -> vectors.npy through the full Reasoner -> Embedder pipeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DataError, Problem
from ..fileio import iter_jsonl, save_npy, write_jsonl
from ._checks import INTO, Output, check_outputs, positive_int, writing
from ._models import add_model_arguments, load_models, model_inputs

HELP = """\
Each line of --input is one item with the fields of a task query: "id", optional "instruction", "text",
"images" (paths relative to the items file, or absolute) and "video" ({"frames": [...]} or a video file path).
Row i of --out is line i of the input. Without --reasoner, items are embedded without T-CoT (or with T-CoTs
given in "meta": {"tcot": ...} under --reasoning cached).

Resuming: T-CoTs and vectors are cached in --cache-dir (default OUT.cache); rerunning the same command after a
crash or Ctrl-C recomputes only what is missing. Items that fail (unreadable media, no cached T-CoT) are listed
in OUT.failures.jsonl with their id, their rows are NaN, and the exit code is 1.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="embed items (with T-CoT reasoning) into a .npy matrix",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--input", required=True, help="items.jsonl")
    p.add_argument("--out", required=True, help="output .npy (float32, one row per input line)")
    p.add_argument(
        "--side",
        choices=["query", "candidate"],
        default="query",
        help="which reasoner prompt family to use (default: query)",
    )
    p.add_argument(
        "--target-modality",
        choices=["text", "image", "video"],
        help="for text queries: what they retrieve (picks the text->video prompt for 'video')",
    )
    p.add_argument(
        "--reasoning",
        choices=["generate", "cached", "off"],
        help="default: generate with a reasoner, else off",
    )
    p.add_argument("--cache-dir", help="T-CoT and vector cache (default: OUT.cache)")
    p.add_argument(
        "--batch-size", type=positive_int, default=8, help="items per Embedder (and Reasoner) batch"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_encode)


def read_items(path: Path):
    """Items of an items.jsonl file; media paths resolved against the file's folder. Raises DataError
    listing every malformed line before anything is computed."""
    from ..data.items import ITEM_FIELDS, Item, parse_item, resolve_item_media

    problems: list[Problem] = []
    items: list[Item] = []
    seen: dict[str, int] = {}
    record_lines: set[int] = set()
    unknown: dict[str, int] = {}  # field -> first line
    for line, obj in iter_jsonl(path, problems):
        record_lines.add(line)
        for key in obj.keys() - ITEM_FIELDS:
            unknown.setdefault(key, line)
        item = parse_item(
            obj, file=str(path), line=line, id_key="id", problems=problems, allow_video_string=True
        )
        if item is None:
            continue
        if item.id in seen:
            problems.append(
                Problem(
                    str(path),
                    f"duplicate id (first on line {seen[item.id]})",
                    line=line,
                    field="id",
                    record=item.id,
                )
            )
            continue
        seen[item.id] = line
        # Existence is checked when the item is loaded: a missing file fails that item only.
        items.append(
            resolve_item_media(
                item,
                path.parent,
                confine=False,
                file=str(path),
                line=line,
                problems=problems,
                must_exist=False,
            )
        )
    reported = {problem.line for problem in problems}
    last = max(record_lines, default=0)
    for line in range(1, last):
        if line not in record_lines and line not in reported:
            problems.append(
                Problem(
                    str(path),
                    "blank line: row i of --out is line i of the input, so blank "
                    "lines are only allowed at the end of the file",
                    line=line,
                )
            )
    if problems:
        raise DataError(sorted(problems, key=lambda problem: problem.line or 0))
    for key, line in sorted(unknown.items(), key=lambda kv: kv[1]):
        # a typo such as "image" for "images" would otherwise embed the item without its picture
        print(
            f"warning: {path}:{line}: field {key!r} is not an item field and is ignored (item fields: "
            f"{', '.join(sorted(ITEM_FIELDS))})",
            file=sys.stderr,
        )
    if not items:
        raise DataError(Problem(str(path), "no items"))
    return items


def _encode(args: argparse.Namespace) -> int:
    from ..pipeline import encode_detailed

    out = Path(args.out)
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.with_name(out.name + ".cache")
    tcots_file = out.with_name(out.name + ".tcots.jsonl")
    failures_file = out.with_name(out.name + ".failures.jsonl")
    # found now, not after every vector is computed
    check_outputs(
        [
            Output("--out", out),
            Output("--out (its T-CoT file)", tcots_file),
            Output("--out (its failures file)", failures_file),
            Output("--cache-dir" if args.cache_dir else "--out (its cache folder)", cache_dir, INTO),
        ],
        [("--input", args.input), *model_inputs(args)],
    )
    items = read_items(Path(args.input))
    embedder, reasoner = load_models(args)
    with writing(cache_dir):
        result = encode_detailed(
            items,
            embedder,
            reasoner,
            reasoning=args.reasoning,
            side=args.side,
            target_modality=args.target_modality,
            cache_dir=cache_dir,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    with writing(out):
        save_npy(out, result.vectors)
    if any(t is not None for t in result.tcots):
        with writing(tcots_file):
            write_jsonl(tcots_file, ({"id": it.id, "tcot": t} for it, t in zip(items, result.tcots)))
    if result.failures:
        with writing(failures_file):
            write_jsonl(
                failures_file,
                (
                    {"index": f.index, "id": f.id, "stage": f.stage, "error": f.message}
                    for f in result.failures
                ),
            )
        for failure in result.failures[:20]:
            print(f"failed: {failure}", file=sys.stderr)
        print(
            f"{len(result.failures)} of {len(items)} item(s) failed (rows are NaN); see {failures_file}. "
            f"Fix them and rerun: the other {len(items) - len(result.failures)} come from the cache.",
            file=sys.stderr,
        )
    elif failures_file.exists():
        failures_file.unlink()
    print(
        f"wrote {out} {result.vectors.shape} ({result.computed} computed, "
        f"{len(items) - result.computed - len(result.failures)} from cache or duplicates)"
    )
    return 1 if result.failures else 0
