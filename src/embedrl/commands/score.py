"""`embedrl score`: score a task folder from embeddings or a score matrix."""

from __future__ import annotations

import argparse
import json

HELP = """\
Scores one task folder (unified format) and writes its result JSON: every metric (hit, precision, recall,
uvrb_recall, ndcg_linear, ndcg_exponential, mrr, map, f1) at k = 1, 5, 10 and the task's k_list, main_score
(the task's primary_metric, a fraction), num_queries, tie_rate and the task's version note.

Inputs are .npy files:
  --scores S.npy                      (num_queries x num_candidates) similarity matrix, or
  --query-emb Q.npy --cand-emb C.npy  one embedding per row (cosine by default, --similarity dot)
Rows follow queries.jsonl order, columns / candidate rows follow candidates.jsonl order. Local tasks score each
query only against its own candidate_ids (their listed order breaks ties); for them S holds the full matrix
and each query's columns are picked from it. Ranking is a stable sort on (-score, candidate position).

Aggregate result files with `embedrl report`.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a task from embeddings or a score matrix",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, metavar="DIR", help="task folder (unified format)")
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--scores", metavar="S.npy", help="score matrix, queries x candidates")
    inputs.add_argument("--query-emb", metavar="Q.npy", help="query embeddings (needs --cand-emb)")
    p.add_argument("--cand-emb", metavar="C.npy", help="candidate embeddings (with --query-emb)")
    p.add_argument(
        "--similarity", choices=["cosine", "dot"], default="cosine", help="for embeddings (default: cosine)"
    )
    p.add_argument(
        "--search",
        choices=["exact", "faiss-flat", "faiss-hnsw"],
        default="exact",
        help="global tasks: exact blockwise top-k (default), exact FAISS flat index, or approximate "
        "FAISS HNSW (needs the `index` extra)",
    )
    p.add_argument(
        "--pessimistic",
        action="store_true",
        help="also report pessimistic_hit@1 (a tie at the top counts against the model)",
    )
    p.add_argument("--out", metavar="R.json", help="write the result JSON here (default: print it)")
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    from ..data.taskdir import read_task
    from ..errors import ConfigError
    from ..eval.scoring import score_task
    from ..fileio import write_json
    from ._checks import Output, check_outputs, writing

    if args.query_emb and not args.cand_emb:
        raise ConfigError("--query-emb needs --cand-emb")
    if args.scores and args.cand_emb:
        raise ConfigError("--cand-emb goes with --query-emb, not with --scores")
    if args.out:
        check_outputs(
            [Output("--out", args.out)],
            [
                ("--task", args.task),
                ("--scores", args.scores),
                ("--query-emb", args.query_emb),
                ("--cand-emb", args.cand_emb),
            ],
        )
    task = read_task(args.task, check_media=False)  # scoring never opens media
    if args.scores:
        result = score_task(task, scores=args.scores, pessimistic=args.pessimistic)
    else:
        result = score_task(
            task,
            query_emb=args.query_emb,
            cand_emb=args.cand_emb,
            similarity=args.similarity,
            pessimistic=args.pessimistic,
            search=args.search,
        )
    if args.out:
        with writing(args.out):
            write_json(args.out, result)
        print(
            f"{result['benchmark']}/{result['task']}: {result['primary_metric']} = "
            f"{100 * result['main_score']:.2f} ({result['num_queries']} queries, tie rate "
            f"{result['tie_rate']:.3f}) -> {args.out}"
        )
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
