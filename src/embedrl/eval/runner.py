"""Run retrieval tasks end to end: encode queries and candidates through `pipeline.encode`, score, write results.

Resumable at two levels: a finished task's result JSON is kept (rerun skips it), and an unfinished task's
T-CoTs and vectors are cached per task, so a crash mid-task recomputes only what was lost.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.items import content_key
from ..data.taskdir import CANDIDATES_FILE, QRELS_FILE, QUERIES_FILE, TASK_FILE, Task, read_task
from ..errors import EmbedRLError
from ..fileio import file_sha256, read_json, write_json
from ..models.identity import weights_fixed
from ..models.protocols import EmbedderLike, ReasonerLike
from ..pipeline import EncodeResult, EncodeSettings, encode_detailed

log = logging.getLogger(__name__)


class TaskFailed(EmbedRLError):
    pass


@dataclass
class EvalSettings:
    reasoning: str | None = None  # generate | cached | off (default: generate with a reasoner)
    batch_size: int = 8
    progress: bool = True
    overwrite: bool = False
    label: str | None = None  # free-form run name stored in every result


def candidate_modality(task: Task) -> str:
    """What the queries retrieve (picks the text->video prompt for text queries of video tasks)."""
    counts = Counter(c.modality for c in task.candidates)
    return counts.most_common(1)[0][0]


def has_video(task: Task) -> bool:
    return any(item.video is not None for item in (*task.queries, *task.candidates))


def task_frames(task: Task) -> int | None:
    """Frames per video for a task's items: the task's own count when it has videos (None: the Embedder's)."""
    return task.meta.num_frames if has_video(task) else None


def encode_task(
    task: Task, embedder: EmbedderLike, reasoner: ReasonerLike | None, settings: EncodeSettings
) -> tuple[EncodeResult, EncodeResult]:
    """(candidates, queries) of a task through `encode_detailed`: candidates on the candidate side, queries on
    the query side with the candidates' modality as the target (what the Reasoner's prompt is chosen by)."""
    cands = encode_detailed(task.candidates_for_encoding(), embedder, reasoner, settings, side="candidate")
    queries = encode_detailed(
        task.queries_for_encoding(),
        embedder,
        reasoner,
        settings,
        side="query",
        target_modality=candidate_modality(task),
    )
    return cands, queries


def result_path(out_dir: Path, task: Task) -> Path:
    return out_dir / task.meta.benchmark / f"{task.meta.task}.json"


@weights_fixed()
def evaluate_task(
    task_dir: str | Path,
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None = None,
    *,
    out_dir: str | Path,
    settings: EvalSettings | None = None,
) -> dict:
    """Score one task folder; returns the result dict (also written to OUT/<benchmark>/<task>.json). Model
    identities are computed once for the whole task (`weights_fixed`). Videos are sampled with the task's
    `num_frames`, whatever the models' own setting."""
    settings = settings or EvalSettings()
    task = read_task(task_dir)
    return _evaluate(task, embedder, reasoner, Path(out_dir), settings, task_frames(task))


def _evaluate(
    task: Task,
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None,
    out_dir: Path,
    settings: EvalSettings,
    frames: int | None,
) -> dict:
    from .scoring import score_task

    target = result_path(out_dir, task)
    identity = run_identity(task, embedder, reasoner, settings, frames)
    if target.is_file() and not settings.overwrite:
        existing = read_json(target)
        run = existing.get("run") if isinstance(existing, dict) else None
        recorded = run.get("identity") if isinstance(run, dict) else None
        if recorded == identity:
            log.info("%s: result of an identical earlier run kept (overwrite recomputes)", target)
            run["reused"] = True
            return existing
        if not isinstance(recorded, dict):
            raise TaskFailed(
                f"{target} was written by an older embedrl (no record of the model and settings "
                "behind it), so it cannot be checked against this run; pass --overwrite to recompute "
                "it, or use another --out"
            )
        differs = [k for k in identity if recorded.get(k) != identity[k]]
        raise TaskFailed(
            f"{target} holds the result of a different run (its {', '.join(differs)} differ"
            f"{'s' if len(differs) == 1 else ''}); pass --overwrite to replace it, or use another "
            "--out"
        )
    cache = out_dir / "cache" / task.meta.benchmark / task.meta.task
    start = time.perf_counter()
    # The task's frame count reaches both models through the one settings object (None: the Embedder's own).
    common = EncodeSettings(
        reasoning=settings.reasoning,
        cache_dir=cache,
        batch_size=settings.batch_size,
        progress=settings.progress,
        num_frames=frames,
    )
    cands, queries = encode_task(task, embedder, reasoner, common)
    failures = [("candidate", f) for f in cands.failures] + [("query", f) for f in queries.failures]
    if failures:
        lines = "; ".join(f"{side} {f}" for side, f in failures[:10])
        raise TaskFailed(
            f"{task.meta.task}: {len(failures)} item(s) could not be encoded ({lines}). Everything "
            f"else is cached in {cache}; fix the inputs and rerun."
        )
    result = score_task(task, query_emb=queries.vectors, cand_emb=cands.vectors)
    result["run"] = {
        "label": settings.label,
        "embedder": getattr(embedder, "name_or_path", None),
        "reasoner": getattr(reasoner, "name", None),
        "reasoning": identity["reasoning"],
        "frames_per_video": frames,
        "seconds": round(time.perf_counter() - start, 2),
        "identity": identity,
        "unparsed_tcots": _unparsed(queries.tcots) + _unparsed(cands.tcots),
    }
    write_json(target, result)
    return result


def run_identity(
    task: Task,
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None,
    settings: EvalSettings,
    frames: int | None = None,
) -> dict[str, str | None]:
    """What a task's result depends on: the task's files and the media they name (by content, as the encode
    caches hash them), the Embedder, the Reasoner (weights and generation settings) and the reasoning mode. A
    stored result is reused only when all of them are the same."""
    from ..pipeline import embedder_fingerprint, reasoner_fingerprint

    files = hashlib.sha256()
    for name in (TASK_FILE, QUERIES_FILE, CANDIDATES_FILE, QRELS_FILE):
        path = task.root / name if task.root is not None else None
        if path is not None and path.is_file():
            files.update(name.encode())
            file_sha256(path, files)
    for item in (*task.queries_for_encoding(), *task.candidates_for_encoding()):
        files.update(content_key(item).encode())
    reasoning = settings.reasoning or ("generate" if reasoner is not None else "off")
    frames = frames or embedder.config.num_frames
    reasoner_id = (
        reasoner_fingerprint(reasoner, frames) if reasoner is not None and reasoning != "off" else None
    )
    return {
        "task": files.hexdigest()[:24],
        "embedder": embedder_fingerprint(embedder),
        "reasoner": reasoner_id,
        "reasoning": reasoning,
        "frames_per_video": str(frames),
    }


def _unparsed(tcots: Sequence[str | None]) -> int:
    from ..tcot import parse

    return sum(1 for t in tcots if t is not None and not parse(t).ok)


def evaluate_tasks(
    task_dirs: Sequence[str | Path],
    embedder: EmbedderLike,
    reasoner: ReasonerLike | None = None,
    *,
    out_dir: str | Path,
    settings: EvalSettings | None = None,
) -> tuple[list[dict], list[str]]:
    """Every task in turn; a failing task is reported and the others still run. Returns (results, errors)."""
    results, errors = [], []
    for task_dir in task_dirs:
        try:
            results.append(evaluate_task(task_dir, embedder, reasoner, out_dir=out_dir, settings=settings))
        except EmbedRLError as exc:
            log.error("%s", exc)
            errors.append(str(exc))
    return results, errors
