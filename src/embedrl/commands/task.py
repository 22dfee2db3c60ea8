"""`embedrl task validate DIR`, `embedrl task info DIR` and `embedrl task convert {mmeb-image,mmeb-video,mmeb-visdoc,
uvrb}`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.taskdir import CANDIDATES_FILE, QUERIES_FILE, read_task, summarize, validate_task
from ..errors import EmbedRLError, Problem
from ._checks import INTO, Output, check_outputs, positive_int, writing


def register(sub: argparse._SubParsersAction) -> None:
    task = sub.add_parser(
        "task",
        help="validate, inspect and convert task folders (unified format)",
        description="Tools for task folders in the unified format (task.json, "
        "queries.jsonl, candidates.jsonl, qrels.jsonl, media/).",
    )
    tsub = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    val = tsub.add_parser(
        "validate",
        help="check a task folder; print one line per defect",
        description="Checks JSON syntax, required fields, duplicate ids, qrels that name "
        "unknown ids, local queries without candidates, and media paths that are missing "
        "or escape the folder. Prints one line per defect (file:line: field: message) "
        "and exits 1 if any were found.",
    )
    val.add_argument("dirs", nargs="+", metavar="DIR", help="task folder(s)")
    media = val.add_mutually_exclusive_group()
    media.add_argument("--no-media", action="store_true", help="skip checking that media files exist")
    media.add_argument(
        "--decode",
        action="store_true",
        help="also decode every image, frame and video the way encoding loads them (slower: reads "
        "all media), so a corrupt file is found before a long evaluation; runs once a folder has "
        "no other defect",
    )
    val.set_defaults(func=_validate)
    info = tsub.add_parser("info", help="print a summary of a task folder as JSON")
    info.add_argument("dir", metavar="DIR")
    info.set_defaults(func=_info)
    _register_convert(tsub)


CONVERT_EPILOG = """\
Each converter writes OUT/<task>/ (the registry's task name) and prints a summary. It builds the folder as
OUT/<task>.partial/ and renames it only once it validates: an interrupted run leaves no folder that looks
finished, and a rerun reuses the media already placed. Media are hard-linked when the source is on the same
file system, copied otherwise; a symlink that leads out of the source folder is refused. When the record names
tell splits (test-00000-of-00001.parquet, val.jsonl, test/0000.parquet), only one split is read: --split, by
default the one the official evaluation reads; a folder that holds only another split is refused. --overwrite
replaces only a task folder, and never one that holds the source. Every defect of the
source (a missing image, an unknown id, a wrong field type, a malformed line) is reported together, one line
each with file, row and field.

examples:
  embedrl task convert mmeb-image --task ImageNet-1K \\
      --records MMEB_Test_Instruct/ImageNet-1K --images MMEB-V2/image-tasks --out tasks/MMEB-V2
  embedrl task convert mmeb-video --task MSR-VTT --records MSR-VTT/test_1k \\
      --frames MMEB-V2/video-tasks/frames/video_ret/MSR-VTT --out tasks/MMEB-V2
  embedrl task convert mmeb-visdoc --task ViDoRe_arxivqa --source arxivqa_test_subsampled_beir --out tasks/MMEB-V2
  embedrl task convert uvrb --dataset CRB_G --root UVRB/CRB_G --out tasks/UVRB
"""


def _register_convert(tsub: argparse._SubParsersAction) -> None:
    convert = tsub.add_parser(
        "convert",
        help="turn a downloaded MMEB-V2 or UVRB task into a task folder",
        description="Convert upstream benchmark files (downloaded beforehand: embedrl never fetches data) into "
        "the unified task format, ready for `embedrl eval`: all 78 MMEB-V2 tasks (36 image, 18 video, 24 VisDoc) "
        "and the 16 UVRB datasets.",
        epilog=CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = convert.add_subparsers(dest="source_kind", metavar="SOURCE", required=True)

    image = csub.add_parser(
        "mmeb-image",
        help="one of the 36 MMEB-V2 image tasks (ziyjiang/MMEB_Test_Instruct)",
        description="Rows with qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text[] and "
        "tgt_img_path[] (the V1 TIGER-Lab/MMEB-eval rows without *_inst work too). Each "
        "query keeps its own candidate list; element 0 is the positive.",
    )
    image.add_argument("--task", required=True, help="task name, e.g. ImageNet-1K or MSCOCO_t2i")
    image.add_argument(
        "--records",
        required=True,
        type=Path,
        metavar="PATH",
        help="the task's test split: a .parquet/.jsonl/.json file or a folder of them",
    )
    image.add_argument(
        "--images",
        required=True,
        type=Path,
        metavar="DIR",
        help="the unpacked image-tasks/ folder that qry_img_path and tgt_img_path are relative to",
    )
    image.add_argument(
        "--split",
        help="the split to read when the record names tell splits (default: test, the "
        "one the official evaluation reads)",
    )
    image.set_defaults(func=_convert_image)

    video = csub.add_parser(
        "mmeb-video",
        help="one of the 18 MMEB-V2 video tasks",
        description="Rows of the task's hub dataset and the frame folders of the MMEB-V2 release, "
        "one per video; frames are sampled to --num-frames in natural name order. Retrieval "
        "(MSR-VTT: video_id, caption; MSVD: video_id, caption[]; DiDeMo: video, caption; VATEX: "
        "videoID, enCap[]; YouCook2: id, sentence): each caption is a query whose positive is "
        "its video. Classification (K700, HMDB51, UCF101, Breakfast: video_id, pos_text; "
        "SmthSmthV2: also neg_text[]): each video is a query over label candidates; give the "
        "official label list with --labels (SmthSmthV2 uses each row's options and, as the "
        "official run, its first 1,000 rows). QA (Video-MME: videoID, question, options[], "
        "answer letter; NExTQA: video, question, a0-a4, answer index; EgoSchema: video_idx, "
        "question, option[], answer index; MVBench: subset, video, question, candidates[], "
        "answer; ActivityNetQA: video_name, question, yes/no answer): each question is ranked "
        "against its own options. Moment retrieval (QVHighlight, Charades-STA: query, video_path, "
        "with <video>/query/ and one sub-folder per clip, positive* the positives; MomentSeeker: "
        "query, input_frames, positive_frames[], negative_frames[]): each query is ranked "
        "against its own clips.",
    )
    video.add_argument(
        "--task", required=True, help="task name, e.g. MSR-VTT, K700, Video-MME or QVHighlight"
    )
    video.add_argument(
        "--records",
        required=True,
        type=Path,
        metavar="PATH",
        help="the task's split: a .parquet/.jsonl/.json file or a folder of them",
    )
    video.add_argument(
        "--frames",
        required=True,
        type=Path,
        metavar="DIR",
        help="the task's frame folders, e.g. MMEB-V2/video-tasks/frames/video_ret/MSR-VTT",
    )
    video.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="classification: the task's full label list in the official order (one label per line, "
        "or a JSON list), e.g. from VLM2Vec's video_classification_utils.py; required for K700, "
        "HMDB51, UCF101 and Breakfast unless --labels-from-rows",
    )
    video.add_argument(
        "--labels-from-rows",
        action="store_true",
        help="classification: rank against only the labels the rows use (a smaller pool than the "
        "official one, so higher scores; task.json says so)",
    )
    video.add_argument(
        "--max-rows",
        type=positive_int,
        metavar="N",
        help="classification: convert only the first N rows (default: all; 1000 for SmthSmthV2, as "
        "the official run)",
    )
    video.add_argument(
        "--split",
        help="the split to read when the record names tell splits (default: the one the "
        "official evaluation reads: val for YouCook2, train for MVBench, test otherwise)",
    )
    video.set_defaults(func=_convert_video)

    visdoc = csub.add_parser(
        "mmeb-visdoc",
        help="one of the 24 MMEB-V2 VisDoc tasks (BEIR-style splits)",
        description="queries (query-id, query, language?), corpus (corpus-id, image) and "
        "qrels (query-id, corpus-id, score). Pairs with score 0 are dropped; a repeated pair "
        "keeps its highest score.",
    )
    visdoc.add_argument(
        "--task", required=True, help="task name, e.g. ViDoRe_arxivqa or MMLongBench-page-fixed"
    )
    visdoc.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="a download holding queries, corpus and qrels (folders or files of those names)",
    )
    for split in ("queries", "corpus", "qrels"):
        visdoc.add_argument(
            f"--{split}",
            type=Path,
            metavar="PATH",
            help=f"the {split} records: a file or a folder of shards (overrides --source)",
        )
    visdoc.add_argument(
        "--split",
        help="the split to read when the record names tell splits (default: train for "
        "VisRAG, test otherwise, as the official evaluation)",
    )
    visdoc.set_defaults(func=_convert_visdoc)

    uvrb = csub.add_parser(
        "uvrb",
        help="one of the 16 UVRB datasets (Alibaba-NLP/UVRB, extracted)",
        description="A dataset folder with jsonl/{queries,corpus,instances}.jsonl, "
        "videos_frames/<video>/ and images/. Videos are sampled to --num-frames frames in "
        "file-name order; only those frames are placed in the task folder.",
    )
    uvrb.add_argument("--dataset", required=True, help="dataset name, e.g. CRB_G, MSRVTT or LoVR-TH")
    uvrb.add_argument("--root", required=True, type=Path, metavar="DIR", help="the extracted dataset folder")
    uvrb.set_defaults(func=_convert_uvrb)

    for sub in (video, uvrb):
        sub.add_argument(
            "--num-frames",
            type=positive_int,
            default=8,
            metavar="N",
            help="frames per video (default: 8, the benchmark's setting)",
        )
    for sub, example in (
        (image, "tasks/MMEB-V2"),
        (video, "tasks/MMEB-V2"),
        (visdoc, "tasks/MMEB-V2"),
        (uvrb, "tasks/UVRB"),
    ):
        sub.add_argument(
            "--out",
            required=True,
            type=Path,
            metavar="DIR",
            help=f"where OUT/<task>/ is written, e.g. {example}",
        )
        sub.add_argument(
            "--revision",
            metavar="REV",
            help="the upstream revision you downloaded, recorded in task.json as the data pin",
        )
        sub.add_argument("--overwrite", action="store_true", help="replace an existing OUT/<task>/")


def _check_out(args: argparse.Namespace, *inputs: tuple[str, Path | None]) -> None:
    """--out holds OUT/<task>/ beside other tasks, so only the task folder is the converter's own (and it
    never replaces one that holds the source); --out itself must not be a source or lie inside one."""
    check_outputs([Output("--out", args.out, INTO)], inputs)


def _report(folder: Path) -> int:
    summary = summarize(read_task(folder))
    print(
        f"wrote {folder}: {summary['queries']} queries, {summary['candidates']} candidates, "
        f"{summary['qrels']} qrels ({summary['queries_without_positives']} queries without a positive)"
    )
    return 0


def _convert_image(args: argparse.Namespace) -> int:
    from ..data.mmeb_v2 import convert_image_task

    _check_out(args, ("--records", args.records), ("--images", args.images))
    with writing(args.out):
        folder = convert_image_task(
            args.records,
            args.task,
            args.images,
            args.out,
            split=args.split,
            revision=args.revision,
            overwrite=args.overwrite,
        )
    return _report(folder)


def _convert_video(args: argparse.Namespace) -> int:
    from ..data.mmeb_v2_video import convert_video_task, read_labels

    _check_out(args, ("--records", args.records), ("--frames", args.frames), ("--labels", args.labels))
    labels = read_labels(args.labels) if args.labels is not None else None
    with writing(args.out):
        folder = convert_video_task(
            args.records,
            args.task,
            args.frames,
            args.out,
            labels=labels,
            labels_from_rows=args.labels_from_rows,
            max_rows=args.max_rows,
            split=args.split,
            num_frames=args.num_frames,
            revision=args.revision,
            overwrite=args.overwrite,
        )
    return _report(folder)


def _split_path(args: argparse.Namespace, name: str) -> Path:
    given = getattr(args, name)
    if given is not None:
        return given
    if args.source is None:
        raise EmbedRLError(f"give --source or --{name}")
    for path in (args.source / name, *(args.source / f"{name}{s}" for s in (".parquet", ".jsonl", ".json"))):
        if path.exists():
            return path
    raise EmbedRLError(f"{args.source}: no {name} folder or file; give --{name} PATH")


def _convert_visdoc(args: argparse.Namespace) -> int:
    from ..data.mmeb_v2 import convert_visdoc_task

    _check_out(
        args,
        ("--source", args.source),
        ("--queries", args.queries),
        ("--corpus", args.corpus),
        ("--qrels", args.qrels),
    )
    paths = [_split_path(args, name) for name in ("queries", "corpus", "qrels")]
    with writing(args.out):
        folder = convert_visdoc_task(
            *paths, args.task, args.out, split=args.split, revision=args.revision, overwrite=args.overwrite
        )
    return _report(folder)


def _convert_uvrb(args: argparse.Namespace) -> int:
    from ..data.uvrb import convert_uvrb_dataset

    _check_out(args, ("--root", args.root))
    with writing(args.out):
        folder = convert_uvrb_dataset(
            args.root,
            args.dataset,
            args.out,
            num_frames=args.num_frames,
            revision=args.revision,
            overwrite=args.overwrite,
        )
    return _report(folder)


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for directory in args.dirs:
        problems = validate_task(directory, check_media=not args.no_media)
        if args.decode and not problems:
            problems = _undecodable(Path(directory))
        for problem in problems:
            print(problem)
        if problems:
            failed += 1
            print(f"{directory}: {len(problems)} problem(s)", file=sys.stderr)
        else:
            print(f"{directory}: OK")
    return 1 if failed else 0


def _undecodable(folder: Path) -> list[Problem]:
    from tqdm.auto import tqdm

    from ..data.media import decode_problems

    task = read_task(folder)
    seen: dict[str, str | None] = {}
    problems = []
    for name, items in (
        (QUERIES_FILE, task.queries_for_encoding()),
        (CANDIDATES_FILE, task.candidates_for_encoding()),
    ):
        for item in tqdm(items, desc=f"decode {name}", unit="item", leave=False):
            for field, message in decode_problems(item, task.meta.num_frames, seen):
                problems.append(Problem(str(folder / name), message, field=field, record=item.id))
    return problems


def _info(args: argparse.Namespace) -> int:
    print(json.dumps(summarize(read_task(args.dir)), indent=2))
    return 0
