"""`embedrl` command line: one subcommand per job; each lives in `embedrl.commands.<name>`."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import warnings

from . import __version__
from .errors import DataError, EmbedRLError
from .runtime import keep_freed_memory

# Order is the order of `embedrl --help`. Each module defines `register(subparsers)`.
COMMAND_MODULES = (
    "demo",
    "task",
    "encode",
    "eval",
    "score",
    "report",
    "models",
    "train",
    "data",
    "serve",
    "index",
    "search",
)

DESCRIPTION = """\
embedrl: reasoning-driven multimodal embeddings (Embed-RL).

A Reasoner writes a Traceability CoT (T-CoT) for each query and candidate; an Embedder reads the input plus
its T-CoT (with boxed crops and keyframes re-inserted) and returns an L2-normalised vector.

Typical flow:
  embedrl demo                          run the whole pipeline on the bundled synthetic benchmark
  embedrl models make-tiny --out DIR    build an offline tiny Qwen-VL checkpoint (tests, demos)
  embedrl task validate DIR             check a task folder (unified format) and list every defect
  embedrl encode ...                    input items -> vectors (with T-CoT generation and caches)
  embedrl eval --task DIR ...           encode + score task folders end to end (resumable)
  embedrl score --task DIR ...          score a task from embeddings or a score matrix
  embedrl report --benchmark mmeb-v2 R  aggregate per-task results into the benchmark table
  embedrl data annotate|filter|split    teacher T-CoTs for training pairs, relevance filter, RL/stage-1 split
  embedrl train embedder|reasoner ...   stage 1 (contrastive) and stage 2 (EG-RL) training
  embedrl serve --embedder DIR ...      OpenAI-compatible /v1/embeddings, /v1/chat/completions, /v1/search
  embedrl index build|add ...           embed a corpus into a searchable index (T-CoT evidence kept)
  embedrl search INDEX --text ...       ranked hits with the evidence each T-CoT pointed at
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedrl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"embedrl {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.verbose == 0:
        # Deprecation notices from inside transformers / TRL are not actionable for users of the CLI.
        warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    keep_freed_memory()  # batch after batch reuses the same buffers: see embedrl.runtime
    try:
        return int(args.func(args) or 0)
    except DataError as exc:
        print(exc.report(), file=sys.stderr)
        print(f"error: {len(exc.problems)} problem(s) found", file=sys.stderr)
        return 2
    except EmbedRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything written so far is kept and a rerun resumes", file=sys.stderr)
        return 130
    except OSError as exc:
        # A full disk, a lost mount or a refused connection is the machine's state, not a bug: one line
        # (the traceback with -vv).
        logging.getLogger("embedrl").debug("traceback", exc_info=True)
        print(f"error: {_os_error(exc)}", file=sys.stderr)
        return 1


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space and rerun)"
    if exc.filename is None:
        return reason
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{where}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
