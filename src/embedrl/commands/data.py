"""`embedrl data annotate | filter | split`: T-CoT training data from a teacher, a relevance judge and a split."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._checks import (
    Output,
    check_outputs,
    checkpoint,
    device,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    writing,
)

DATA_HELP = """\
Build stage-1 and RL training pairs with teacher-written T-CoTs:

  embedrl data annotate --teacher-url http://host:8000 --pairs pairs.jsonl --out annotated.jsonl
  embedrl data filter   --judge-url http://host:8000 --in annotated.jsonl --out kept.jsonl
  embedrl data split    --in kept.jsonl --rl-fraction 0.1 --out-stage1 stage1.jsonl --out-rl rl.jsonl

Every file is in the training-pairs format (`embedrl train check-data`). annotate and filter resume: rerun
the same command after a crash or Ctrl-C and only the missing pairs are done. See docs/annotate.md.
"""

ANNOTATE_HELP = """\
Writes "query_tcot" and "positive_tcot" for every pair of --pairs, asking the teacher with the prompt kind the
Reasoner uses for that side and modality (images as data URLs, video frames as several images). Decoding is
greedy (--temperature 0) and the seed is sent with every request, so a rerun gives the same T-CoTs on a server
that is deterministic. --answer-rate F shows the teacher the positive (its text, or else the answer of its own
T-CoT) while it writes the query's T-CoT, for a share F of the pairs picked by a hash of --seed and the pair.

Each T-CoT is parsed as it arrives; its problem codes (embedrl.tcot), whether its cue is valid and whether it
passes the format check are stored in the pair's "meta": {"tcot_annotation": ...}. Malformed T-CoTs are kept
(and counted), not dropped: `embedrl data filter` and your own checks decide.

Resuming: every finished pair is appended to OUT.journal.jsonl (fsynced) under a key made from its content.
A rerun skips the pairs in the journal and retries those that failed; a journal written with other settings
(teacher, seed, rate, sampling, lengths) is refused unless --restart. Requests that fail with a 5xx, a
time-out or a lost connection are retried with exponential back-off (--retries, --backoff); a pair that still
fails is recorded as an error, left out of --out, listed in OUT.errors.jsonl, and the exit code is 1.
OUT is written atomically in input order at the end; OUT.run.json records the settings and the counts.
"""

FILTER_HELP = """\
Asks the relevance judge, for each annotated pair, whether the query's and the positive's T-CoTs are clearly
unrelated to each other or to the task, or contradict each other. "Yes" drops the pair, "No" keeps it; any other
answer sets the pair aside in OUT.aside.jsonl (counted, not kept). Pairs without both T-CoTs are dropped
unjudged. Every verdict, with the judge's raw answer, is appended to the verdicts journal (--verdicts, default
OUT.verdicts.jsonl), which makes the filter resumable and its decisions reproducible: --from-verdicts FILE
redoes the kept/dropped decision from stored verdicts without calling a judge. Pairs whose judging failed
after the retries are listed in OUT.errors.jsonl (exit code 1) and retried by a rerun.
"""

SPLIT_HELP = """\
Samples the RL subset per dataset and writes the rest for stage 1. --rl-fraction F takes F of every dataset;
--rl-size N takes N pairs in all, shared between datasets in proportion to their sizes. equidistant sampling
(default) takes evenly spaced pairs in file order, starting at a point drawn from --seed; random draws a
seeded sample. Identical pairs go to the same side, so no pair is in both files. Prints per-dataset
statistics (counts, kept ratio when --verdicts is given, cue validity per cue type, mean T-CoT length) and
saves them as JSON (--stats, default OUT_RL.stats.json).
"""


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="T-CoT data synthesis: annotate pairs with a teacher, filter, split",
        description=DATA_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    ann = dsub.add_parser(
        "annotate",
        help="write teacher T-CoTs for every training pair (resumable)",
        description=ANNOTATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_flags(ann, "teacher", required=True)
    ann.add_argument("--pairs", required=True, help="training pairs JSONL to annotate")
    ann.add_argument(
        "--out", required=True, help="annotated pairs JSONL (written at the end, in input order)"
    )
    ann.add_argument("--journal", help="resume journal (default: OUT.journal.jsonl)")
    ann.add_argument(
        "--answer-rate",
        type=_rate,
        default=0.0,
        help="share of pairs whose query T-CoT is answer-conditioned, in [0, 1] (default 0)",
    )
    ann.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="sent with every request; also picks the answer-conditioned pairs (default 0)",
    )
    ann.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    ann.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus sampling when --temperature > 0")
    ann.add_argument(
        "--max-new-tokens", type=positive_int, default=1024, help="T-CoT length limit (default 1024)"
    )
    ann.add_argument(
        "--num-frames",
        type=positive_int,
        default=8,
        help="frames sampled per video, shown as images and indexed by key_frames (default 8)",
    )
    ann.add_argument("--fps", type=positive_float, default=2.0, help="frame rate named in video prompts")
    _add_run_flags(ann)
    ann.set_defaults(func=_annotate)

    flt = dsub.add_parser(
        "filter",
        help="drop pairs whose T-CoTs a relevance judge finds unrelated",
        description=FILTER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = _add_model_flags(flt, "judge", required=False)
    source.add_argument(
        "--from-verdicts",
        metavar="FILE",
        help="decide from a verdicts journal of an earlier filter run; no judge is called",
    )
    flt.add_argument("--in", dest="input", required=True, help="annotated pairs JSONL")
    flt.add_argument("--out", required=True, help="kept pairs JSONL")
    flt.add_argument("--verdicts", help="verdicts journal to write (default: OUT.verdicts.jsonl)")
    flt.add_argument("--dropped", help="also write the dropped pairs to this JSONL")
    flt.add_argument("--seed", type=non_negative_int, default=0, help="sent with every request (default 0)")
    flt.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=16,
        help="verdict length limit; raise it for a judge that thinks aloud first (default 16)",
    )
    _add_run_flags(flt)
    flt.set_defaults(func=_filter)

    spl = dsub.add_parser(
        "split",
        help="RL subset per dataset, the rest for stage 1; statistics table",
        description=SPLIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    spl.add_argument("--in", dest="input", required=True, help="pairs JSONL (e.g. the output of filter)")
    size = spl.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--rl-size", type=positive_int, help="RL pairs in all, shared in proportion to datasets"
    )
    size.add_argument("--rl-fraction", type=_fraction, help="share of every dataset for RL, in (0, 1)")
    spl.add_argument("--out-stage1", required=True, help="stage-1 pairs JSONL (`embedrl train embedder`)")
    spl.add_argument("--out-rl", required=True, help="RL pairs JSONL (`embedrl train reasoner`)")
    spl.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    spl.add_argument(
        "--sampling",
        choices=["equidistant", "random"],
        default="equidistant",
        help="evenly spaced in file order (default) or a seeded random sample",
    )
    spl.add_argument("--verdicts", help="the filter's verdicts journal, for the kept ratio per dataset")
    spl.add_argument("--stats", help="statistics JSON (default: OUT_RL.stats.json)")
    spl.set_defaults(func=_split)


def _add_model_flags(parser: argparse.ArgumentParser, role: str, required: bool) -> Any:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        f"--{role}",
        type=checkpoint,
        metavar="DIR",
        help=f"{role} checkpoint run in this process (folder or hub id)",
    )
    group.add_argument(
        f"--{role}-url",
        metavar="URL",
        help=f"OpenAI-compatible endpoint serving the {role} (`embedrl serve`, `vllm serve`, ...)",
    )
    parser.add_argument(
        f"--{role}-model",
        metavar="NAME",
        help=f"model name sent to --{role}-url (default: the one model the server lists)",
    )
    parser.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help=f"how --{role} runs in this process: transformers (default) or vLLM (GPU extra)",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the endpoint's API key (sent as a Bearer token)",
    )
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (in-process)")
    parser.add_argument(
        "--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N | mps (in-process)"
    )
    return group


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=8,
        help="requests in flight against an endpoint (default 8; in-process models: 1)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="pairs per generate call of an in-process model (default 8; endpoints: 1)",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=4,
        help="retries of a request after a 5xx, a time-out or a lost connection (default 4)",
    )
    parser.add_argument(
        "--backoff",
        type=non_negative_float,
        default=2.0,
        help="seconds before the first retry, doubled for each next one (default 2)",
    )
    parser.add_argument(
        "--max-backoff", type=non_negative_float, default=60.0, help="longest wait (default 60)"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=300.0, help="seconds per request (default 300)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard the journal of an earlier run instead of resuming it"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _rate(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _top_p(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------ models


def served_model(url: str, api_key: str | None = None, timeout: float = 30.0) -> str:
    """The one model an OpenAI-compatible server lists under /v1/models."""
    import urllib.error
    import urllib.request

    from ..models.reasoner import api_base

    request = urllib.request.Request(
        api_base(url) + "/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listed = json.loads(response.read().decode())
        names = [m["id"] for m in listed["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{url}: cannot list the served models ({exc}); name one with --*-model") from None
    if len(names) != 1:
        raise ConfigError(
            f"{url} serves {len(names)} models ({', '.join(names) or 'none'}); name the one to use "
            "with --teacher-model / --judge-model"
        )
    return names[0]


def _backend(args: argparse.Namespace, role: str) -> tuple[Any, str, bool]:
    """(generation backend, its recorded name, whether it is an endpoint)."""
    url = getattr(args, f"{role}_url")
    if url:
        from ..models.reasoner import OpenAIChatBackend

        api_key = None
        if args.api_key_env:
            api_key = os.environ.get(args.api_key_env)
            if not api_key:
                raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        model = getattr(args, f"{role}_model") or served_model(url, api_key)
        # our back-off (--retries, --backoff) replaces the backend's own, so the two do not multiply
        return (
            OpenAIChatBackend(
                url, model, api_key=api_key, timeout=args.timeout, max_concurrency=1, retries=0
            ),
            model,
            True,
        )
    path = getattr(args, role)
    if args.engine == "vllm":
        from ..models.reasoner import VLLMBackend

        return VLLMBackend(path), str(path), False
    from ..models.backbone import LoadOptions
    from ..models.reasoner import TransformersBackend

    backend = TransformersBackend.from_pretrained(
        path, LoadOptions(dtype=args.dtype, device=args.device), batch_size=args.batch_size
    )
    return backend, str(path), False


def _retry(args: argparse.Namespace) -> Any:
    from ..annotate import RetryPolicy

    return RetryPolicy(retries=args.retries, backoff=args.backoff, max_backoff=args.max_backoff)


def _sidecar(path: str | Path, suffix: str) -> Path:
    path = Path(path)
    return path.with_name(path.name + suffix)


# -------------------------------------------------------------------------------------------------- runs


def _annotate(args: argparse.Namespace) -> int:
    from ..annotate import AnnotateConfig, annotate

    out = Path(args.out)
    journal = Path(args.journal) if args.journal else _sidecar(out, ".journal.jsonl")
    check_outputs(
        [
            Output("--out", out),
            Output("--journal" if args.journal else "--out (its journal)", journal),
            Output("--out (its run record)", _sidecar(out, ".run.json")),
            Output("--out (its errors file)", _sidecar(out, ".errors.jsonl")),
        ],
        [("--pairs", args.pairs), ("--teacher", args.teacher)],
    )
    backend, name, remote = _backend(args, "teacher")
    config = AnnotateConfig(
        teacher=name,
        answer_rate=args.answer_rate,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        num_frames=args.num_frames,
        fps=args.fps,
        concurrency=args.concurrency if remote else 1,
        batch_size=1 if remote else args.batch_size,
        retry=_retry(args),
        restart=args.restart,
        progress=not args.no_progress,
    )
    with writing(out):
        summary = annotate(args.pairs, out, backend, config, journal)
    tcots = sum(total for _, total in summary.cue_valid.values())
    print(
        f"annotated {summary.total - summary.errors} of {summary.total} pair(s): {summary.annotated} now, "
        f"{summary.from_journal} from the journal; {summary.answer_conditioned} answer-conditioned"
    )
    for cue, (valid, total) in summary.cue_valid.items():
        print(f"  {cue}: {valid} of {total} T-CoT(s) with a valid cue")
    if summary.problems:
        listed = ", ".join(f"{code} x{count}" for code, count in summary.problems.items())
        print(f"  T-CoT problems (of {tcots} T-CoTs; stored per pair in meta.tcot_annotation): {listed}")
    print(f"wrote {out}")
    if summary.errors:
        print(
            f"{summary.errors} pair(s) failed; see {_sidecar(out, '.errors.jsonl')}. Rerun the same command to "
            "retry them (the others come from the journal).",
            file=sys.stderr,
        )
        return 1
    return 0


def _filter(args: argparse.Namespace) -> int:
    from ..annotate import FilterConfig, apply_verdicts, judge_pairs

    out = Path(args.out)
    if args.from_verdicts and args.verdicts:
        raise ConfigError(
            "--from-verdicts reads a verdicts journal; --verdicts names the one a judge writes. "
            "Give one of them"
        )
    if not (args.judge or args.judge_url or args.from_verdicts):
        raise ConfigError("give --judge DIR, --judge-url URL or --from-verdicts FILE")
    verdicts = Path(args.from_verdicts or args.verdicts or _sidecar(out, ".verdicts.jsonl"))
    outputs = [
        Output("--out", out),
        Output("--out (its aside file)", _sidecar(out, ".aside.jsonl")),
        Output("--out (its errors file)", _sidecar(out, ".errors.jsonl")),
    ]
    if not args.from_verdicts:
        outputs.append(Output("--verdicts" if args.verdicts else "--out (its verdicts journal)", verdicts))
    if args.dropped:
        outputs.append(Output("--dropped", Path(args.dropped)))
    check_outputs(
        outputs, [("--in", args.input), ("--judge", args.judge), ("--from-verdicts", args.from_verdicts)]
    )
    records, stored, judged = None, None, 0
    if not args.from_verdicts:
        backend, name, remote = _backend(args, "judge")
        config = FilterConfig(
            judge=name,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            concurrency=args.concurrency if remote else 1,
            batch_size=1 if remote else args.batch_size,
            retry=_retry(args),
            restart=args.restart,
            progress=not args.no_progress,
        )
        with writing(verdicts):
            records, stored, judged = judge_pairs(args.input, verdicts, backend, config)
    with writing(out):
        summary = apply_verdicts(args.input, verdicts, out, args.dropped, records, stored, judged)
    print(
        f"kept {summary.kept} of {summary.total} pair(s); dropped {summary.dropped} ({summary.without_tcot} "
        f"without both T-CoTs); {summary.aside} set aside (verdict neither yes nor no); {summary.errors} "
        f"without a verdict; {summary.judged_now} judged now"
    )
    for name, counts in summary.per_dataset.items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"wrote {out}; verdicts in {verdicts}")
    if summary.aside:
        print(f"{summary.aside} pair(s) set aside in {_sidecar(out, '.aside.jsonl')}", file=sys.stderr)
    if summary.errors:
        print(
            f"{summary.errors} pair(s) have no verdict; see {_sidecar(out, '.errors.jsonl')}. "
            + (
                "Rerun the same command to retry them."
                if not args.from_verdicts
                else "They were not judged in that verdicts file (annotated again since?)."
            ),
            file=sys.stderr,
        )
        return 1
    return 0


def _split(args: argparse.Namespace) -> int:
    from ..annotate import SplitConfig, format_statistics, split_pairs

    stats = Path(args.stats) if args.stats else _sidecar(args.out_rl, ".stats.json")
    check_outputs(
        [
            Output("--out-stage1", Path(args.out_stage1)),
            Output("--out-rl", Path(args.out_rl)),
            Output("--stats" if args.stats else "--out-rl (its statistics)", stats),
        ],
        [("--in", args.input), ("--verdicts", args.verdicts)],
    )
    config = SplitConfig(
        rl_size=args.rl_size, rl_fraction=args.rl_fraction, seed=args.seed, sampling=args.sampling
    )
    with writing(args.out_stage1):
        result = split_pairs(args.input, args.out_stage1, args.out_rl, config, args.verdicts, stats)
    print(format_statistics(result.statistics))
    dup = f"; {result.duplicates} repeated pair(s) kept on one side" if result.duplicates else ""
    print(
        f"wrote {result.stage1_pairs} stage-1 pair(s) to {args.out_stage1} and {result.rl_pairs} RL pair(s) "
        f"to {args.out_rl}{dup}; statistics in {stats}"
    )
    return 0
