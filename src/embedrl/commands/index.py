"""`embedrl index build|add|info`: a searchable index of embedded items (see `embedrl.index`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._checks import (
    FOLDER,
    Output,
    check_outputs,
    checkpoint,
    device,
    non_negative_float,
    positive_int,
    require_empty_or,
    writing,
)
from ._models import add_model_arguments

BUILD_HELP = """\
Embeds a corpus into an index folder that `embedrl search` and `embedrl serve --index` read.

The corpus is an items file (JSONL, one item a line, as `embedrl encode` reads it) or the candidates of a task
folder. With a Reasoner (--reasoner or --reasoner-url) every item first gets a T-CoT, and the index keeps, per
item, the T-CoT and its evidence: keywords, crop boxes (pixels of the first image or frame) and keyframes.

INDEX/ holds index.json (manifest: models' fingerprints, embedrl version, count, search kind), a data folder
(vectors.npy float32, ids.json, records.jsonl, faiss.index) and cache/. A killed build resumes where it
stopped when rerun with the same arguments: T-CoTs and vectors come from INDEX/cache.

examples:
  embedrl index build --embedder ckpt/embedder --items corpus.jsonl --out my-index
  embedrl index build --embedder ckpt/embedder --reasoner ckpt/reasoner --task tasks/MSCOCO_t2i \\
      --search hnsw --out coco-index
"""

ADD_HELP = """\
Embeds more items into an existing index, the way its items were embedded (same side, same reasoning), with
the models the index recorded unless flags name others. Ids already in the index are refused, and so is an
Embedder other than the one that built it (its vectors would not be comparable). The new data is written
beside the old and committed by rewriting index.json last, so an interrupted add leaves the index as it was;
rerunning resumes from INDEX/cache.

example:
  embedrl index add my-index --items more.jsonl
"""


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser(
        "index",
        help="build, grow and inspect a searchable index of embedded items",
        description="Build an index of embedded items with their T-CoT evidence, add to it, "
        "or print what it holds. Search it with `embedrl search` or `embedrl serve --index`.",
    )
    isub = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    build = isub.add_parser(
        "build",
        help="embed a corpus into a new index folder",
        description=BUILD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(build)
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--items", help="items.jsonl (the format of `embedrl encode --input`)")
    source.add_argument("--task", help="a task folder: its candidates are indexed (side=candidate)")
    build.add_argument("--out", required=True, metavar="INDEX", help="the index folder to create")
    build.add_argument(
        "--side",
        choices=["candidate", "query"],
        default="candidate",
        help="which reasoner prompts the items get (default: candidate, as a corpus)",
    )
    build.add_argument(
        "--reasoning",
        choices=["generate", "cached", "off"],
        help="generate: the Reasoner writes each item's T-CoT (the default with a reasoner); "
        "cached: use the T-CoT each item carries in meta.tcot (oracle or precomputed); off: embed "
        "the items alone (the default without a reasoner)",
    )
    build.add_argument(
        "--search",
        choices=["flat", "hnsw", "exact"],
        default="flat",
        help="flat: exact FAISS inner product (default); hnsw: approximate FAISS graph, for "
        "millions of items; exact: no FAISS, blockwise numpy. Without faiss-cpu installed every "
        "index is searched exactly",
    )
    build.add_argument("--hnsw-m", type=positive_int, default=32, help="HNSW graph degree (default 32)")
    build.add_argument("--batch-size", type=positive_int, default=8, help="items per model batch")
    build.add_argument(
        "--skip-failed",
        action="store_true",
        help="index the items that embed and list the others (default: write nothing while any item fails)",
    )
    build.add_argument(
        "--overwrite", action="store_true", help="rebuild an existing index folder (its cache is reused)"
    )
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=_build)

    add = isub.add_parser(
        "add",
        help="embed more items into an existing index",
        description=ADD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("index", metavar="INDEX")
    add.add_argument("--items", required=True, help="items.jsonl with the new items")
    add_model_overrides(add)
    add.add_argument("--batch-size", type=positive_int, default=8, help="items per model batch")
    add.add_argument(
        "--skip-failed", action="store_true", help="add the items that embed and list the others"
    )
    add.add_argument("--no-progress", action="store_true")
    add.set_defaults(func=_add)

    info = isub.add_parser("info", help="print an index's manifest (models, count, search kind) as JSON")
    info.add_argument("index", metavar="INDEX")
    info.set_defaults(func=_info)


# ------------------------------------------------------------------------------------- model flags


def add_model_overrides(parser: argparse.ArgumentParser) -> None:
    """Model flags for commands on an existing index: each defaults to what the index recorded at build time."""
    from ..models.evidence import EVIDENCE_STYLES

    group = parser.add_argument_group("models (default: those the index was built with)")
    group.add_argument(
        "--embedder", type=checkpoint, help="Embedder checkpoint; must be the index's Embedder"
    )
    group.add_argument("--reasoner", type=checkpoint, help="Reasoner checkpoint (transformers backend)")
    group.add_argument("--reasoner-url", help="OpenAI-compatible endpoint serving the Reasoner instead")
    group.add_argument("--reasoner-model", help="model name sent to --reasoner-url")
    group.add_argument("--max-new-tokens", type=positive_int, help="T-CoT length limit")
    group.add_argument("--temperature", type=non_negative_float, help="0 = greedy")
    group.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    group.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    group.add_argument(
        "--evidence-style",
        choices=sorted(EVIDENCE_STYLES),
        help="how the Embedder reads a T-CoT (part of its fingerprint: keep the index's)",
    )


def _absolute(path: str | None) -> str | None:
    """A local checkpoint folder as an absolute path (the index may be used from another folder); a hub id as
    given."""
    if path and Path(path).expanduser().exists():
        return str(Path(path).expanduser().resolve())
    return path


def recorded_models(args: argparse.Namespace) -> dict:
    """How the models were given at build time, for `add` and `search` to load them again."""
    return {
        "embedder": _absolute(args.embedder),
        "reasoner": _absolute(args.reasoner),
        "reasoner_url": args.reasoner_url,
        "reasoner_model": args.reasoner_model,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "dtype": args.dtype,
        "evidence_style": args.evidence_style,
    }


def model_args(
    manifest: dict, args: argparse.Namespace, batch_size: int, with_reasoner: bool = True
) -> argparse.Namespace:
    """The flags of `_models.load_models`: the command line's where given, else the index's record."""
    recorded = manifest.get("models") or {}
    defaults = {
        "embedder": None,
        "reasoner": None,
        "reasoner_url": None,
        "reasoner_model": "reasoner",
        "max_new_tokens": 512,
        "temperature": 0.0,
        "dtype": "auto",
        "evidence_style": None,
    }
    merged: dict[str, Any] = {}
    for key, default in defaults.items():
        given = getattr(args, key, None)
        merged[key] = given if given is not None else recorded.get(key, default)
        if merged[key] is None:
            merged[key] = default
    if args.reasoner or args.reasoner_url:  # a reasoner named now replaces the recorded one, of either kind
        merged["reasoner"], merged["reasoner_url"] = args.reasoner, args.reasoner_url
    if not merged["embedder"]:
        raise ConfigError("the index does not record its Embedder's location; give --embedder")
    if not with_reasoner:
        merged["reasoner"] = merged["reasoner_url"] = None
    return argparse.Namespace(**merged, device=args.device, batch_size=batch_size)


def _report_failures(update_failures: list, verb: str) -> None:
    for failure in update_failures[:20]:
        print(f"not {verb}: {failure}", file=sys.stderr)
    if update_failures:
        print(f"{len(update_failures)} item(s) were not {verb}; fix them and rerun", file=sys.stderr)


def _corpus(args: argparse.Namespace) -> tuple[list, str | None, str]:
    """(items, target modality, flag that named them)."""
    if args.items:
        from .encode import read_items

        return read_items(Path(args.items)), None, "--items"
    from ..data.taskdir import read_task

    task = read_task(args.task)
    return task.candidates_for_encoding(), None, "--task"


# ------------------------------------------------------------------------------------------- actions


def _build(args: argparse.Namespace) -> int:
    from ..index import MARKER, IndexFailures, build_index
    from ._models import load_models, model_inputs

    out = Path(args.out)
    check_outputs(
        [Output("--out", out, FOLDER)], [("--items", args.items), ("--task", args.task), *model_inputs(args)]
    )
    require_empty_or(out, "--out", MARKER, "embedrl index build")
    if args.reasoning == "generate" and not (args.reasoner or args.reasoner_url):
        raise ConfigError("--reasoning generate needs --reasoner or --reasoner-url")
    items, target, _flag = _corpus(args)
    embedder, reasoner = load_models(args)
    if args.reasoning in ("off", "cached"):
        reasoner = None
    try:
        with writing(out):
            update = build_index(
                out,
                items,
                embedder,
                reasoner,
                models=recorded_models(args),
                reasoning=args.reasoning,
                side=args.side,
                target_modality=target,
                search=args.search,
                hnsw_m=args.hnsw_m,
                batch_size=args.batch_size,
                progress=not args.no_progress,
                skip_failed=args.skip_failed,
                overwrite=args.overwrite,
            )
    except IndexFailures as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _report_failures(update.skipped, "indexed")
    print(
        f"indexed {update.added} item(s) into {out} ({update.computed} computed, "
        f"{update.added - update.computed} from the cache or duplicates; search: {update.search})"
    )
    return 1 if update.skipped else 0


def _add(args: argparse.Namespace) -> int:
    from ..index import Index, IndexFailures, add_to_index
    from ._models import load_models
    from .encode import read_items

    root = Path(args.index)
    manifest = Index.load(root).manifest
    items = read_items(Path(args.items))
    wants_reasoner = manifest.get("reasoning") == "generate"
    embedder, reasoner = load_models(
        model_args(manifest, args, args.batch_size, with_reasoner=wants_reasoner)
    )
    try:
        with writing(root):
            update = add_to_index(
                root,
                items,
                embedder,
                reasoner,
                batch_size=args.batch_size,
                progress=not args.no_progress,
                skip_failed=args.skip_failed,
            )
    except IndexFailures as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _report_failures(update.skipped, "added")
    print(f"added {update.added} item(s) to {root}: {update.total} in all ({update.computed} computed)")
    return 1 if update.skipped else 0


def _info(args: argparse.Namespace) -> int:
    from ..index import Index

    index = Index.load(args.index)
    manifest = dict(index.manifest)
    manifest.get("embedder", {}).pop("config", None)
    print(json.dumps(manifest, indent=2, ensure_ascii=False))
    return 0
