"""`embedrl search INDEX --text ...`: the best hits of an index for one query, with why they matched."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ._checks import FOLDER, Output, check_outputs, positive_int, writing

HELP = """\
Embeds one query (text, images, a video or a frame folder, with an optional instruction) the way the index's
items were embedded, and prints the k best items by cosine similarity.

For the query and each hit it shows the evidence its T-CoT pointed at: the keywords, the crop boxes (pixels of
the first image or frame) and the keyframes (numbered from 1, as the Reasoner numbers frames). With a Reasoner
(the one the index was built with, by default) the query gets a T-CoT too; --reasoning off skips it.

--explain DIR writes DIR/index.html with the query and the hits, their crops drawn as red boxes on the images
and their keyframes framed, to see why an item matched.

examples:
  embedrl search my-index --text "a dog catching a frisbee" -k 5
  embedrl search my-index --image photo.jpg --instruction "Find a caption for the image:" --format json
  embedrl search my-index --video clip.mp4 --explain why/
"""


def register(sub: argparse._SubParsersAction) -> None:
    from .index import add_model_overrides

    p = sub.add_parser(
        "search",
        help="search an index for one query and show why each hit matched",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("index", metavar="INDEX", help="an index folder made by `embedrl index build`")
    query = p.add_argument_group("query (at least one of --text, --image, --video)")
    query.add_argument("--text", help="query text")
    query.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="query image (repeatable)"
    )
    query.add_argument("--video", metavar="PATH", help="query video: a video file or a folder of frames")
    query.add_argument(
        "--instruction",
        help="task instruction put before the text, e.g. 'Find an image that matches the caption:'",
    )
    query.add_argument(
        "--tcot",
        help="the query's T-CoT as text (written by hand or elsewhere): used as it is, with no Reasoner",
    )
    p.add_argument("-k", type=positive_int, default=10, help="number of hits (default 10)")
    p.add_argument(
        "--format", choices=["table", "json"], default="table", help="output format (default table)"
    )
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="write an HTML page with the query, the hits and their evidence drawn on the images",
    )
    p.add_argument(
        "--reasoning",
        choices=["generate", "off"],
        help="write a T-CoT for the query (default: generate when the index was built with a Reasoner)",
    )
    add_model_overrides(p)
    p.set_defaults(func=_search)


def _query_item(args: argparse.Namespace):
    from ..data.items import Item, VideoRef

    if not (args.text and args.text.strip()) and not args.image and not args.video:
        raise ConfigError("give the query: --text, --image or --video")
    for flag, path in [("--image", p) for p in args.image] + [("--video", args.video)]:
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{flag} {path}: no such file or folder")
    video = VideoRef(path=str(Path(args.video).resolve())) if args.video else None
    return Item(
        id="query",
        text=args.text,
        instruction=args.instruction,
        images=[str(Path(p).resolve()) for p in args.image],
        video=video,
    )


def _search(args: argparse.Namespace) -> int:
    from ..index import Index, evidence_record, format_table, write_explain
    from ..pipeline import encode_detailed
    from ._models import load_models
    from .index import model_args

    query = _query_item(args)
    if args.explain:
        check_outputs([Output("--explain", Path(args.explain), FOLDER)], [("INDEX", args.index)])
    index = Index.load(args.index)
    reasoning = "off" if args.tcot else args.reasoning or index.default_query_reasoning(True)
    embedder, reasoner = load_models(
        model_args(index.manifest, args, 1, with_reasoner=reasoning == "generate")
    )
    if reasoning == "generate" and reasoner is None:
        raise ConfigError(
            "--reasoning generate needs a Reasoner: the index records none; give --reasoner or --reasoner-url"
        )
    index.check_embedder(embedder)
    result = encode_detailed(
        [query],
        embedder,
        reasoner,
        reasoning=reasoning,
        side="query",
        target_modality=index.target_modality,
        progress=False,
        tcots=[args.tcot] if args.tcot else None,
    )
    if result.failures:
        raise ConfigError(f"the query could not be embedded: {result.failures[0].message}")
    tcot = result.tcots[0]
    hits = index.search(result.vectors, args.k)[0]
    query_record = {"item": query.to_json(), "tcot": tcot, "evidence": evidence_record(embedder, query, tcot)}
    if args.format == "json":
        print(
            json.dumps(
                {"index": str(args.index), "search": index.search_kind, "query": query_record, "hits": hits},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(format_table(query_record, hits))
    if args.explain:
        with writing(args.explain):
            page = write_explain(
                args.explain,
                query_record,
                hits,
                num_frames=embedder.config.num_frames,
                title=f"embedrl search: {args.text or 'query'}",
            )
        print(f"explanation written to {page}", file=sys.stderr)
    return 0
