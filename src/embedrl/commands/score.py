"""`embedrl score`: score a task folder from embeddings or a score matrix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import DataError, Problem

HELP = """\
Rows follow queries.jsonl, columns candidates.jsonl. Local tasks score each query only against its own
candidate_ids. Writes every metric at k = 1, 5, 10 (and the task's k_list), main_score (the task's
primary_metric), num_queries, tie_rate (share of queries whose best score is tied) and the task's version note.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score a task from embeddings or a score matrix", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, metavar="DIR", help="task folder (unified format)")
    p.add_argument("--scores", metavar="S.npy", help="(num_queries x num_candidates) score matrix")
    p.add_argument("--query-emb", metavar="Q.npy", help="query embeddings, one row per query")
    p.add_argument("--cand-emb", metavar="C.npy", help="candidate embeddings, one row per candidate")
    p.add_argument("--similarity", choices=["cosine", "dot"], default="cosine")
    p.add_argument("--pessimistic", action="store_true", help="also report hit@1 counting top ties as misses")
    p.add_argument("--out", metavar="R.json", help="write the result here (default: print it)")
    p.set_defaults(func=_score)


def _load(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(Problem(path, "file not found")) from None
    except (ValueError, OSError) as exc:
        raise DataError(Problem(path, f"not a readable .npy array ({exc})")) from None


def _score(args: argparse.Namespace) -> int:
    from ..data.taskdir import read_task
    from ..eval.scoring import score_task
    from ..fileio import write_json

    if bool(args.scores) == bool(args.query_emb or args.cand_emb):
        raise DataError(Problem("arguments", "give --scores, or --query-emb together with --cand-emb"))
    if not args.scores and not (args.query_emb and args.cand_emb):
        raise DataError(Problem("arguments", "--query-emb and --cand-emb go together"))
    task = read_task(args.task)
    if args.scores:
        result = score_task(task, scores=_load(args.scores), pessimistic=args.pessimistic,
                            names=(args.scores, "", ""))
    else:
        result = score_task(task, query_emb=_load(args.query_emb), cand_emb=_load(args.cand_emb),
                            similarity=args.similarity, pessimistic=args.pessimistic,
                            names=("", args.query_emb, args.cand_emb))
    if args.out:
        write_json(Path(args.out), result)
        print(f"{result['task']}: {result['primary_metric']} = {result['main_score']:.4f} -> {args.out}")
    else:
        print(json.dumps(result, indent=2))
    return 0
