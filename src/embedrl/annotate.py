"""T-CoT data synthesis: annotate training pairs with a teacher, filter them with a relevance judge, and split
them into the stage-1 and RL sets.

- `annotate` asks a teacher (any generation backend: a local checkpoint, vLLM, or an OpenAI-compatible
  endpoint) for the `query_tcot` and `positive_tcot` of every pair, with the prompt kind of
  `prompts.select_prompt_kind` (the same choice the Reasoner and the RL data make). A seeded share of the pairs
  is answer-conditioned: the teacher sees the positive while it writes the query's T-CoT.
- `judge_pairs` / `apply_verdicts` run the relevance judge on each annotated pair and keep or drop it.
- `split_pairs` samples the RL subset per dataset and leaves the rest for stage 1.

Resuming. Long runs write a journal next to their output (`OUT.journal.jsonl`, or the verdicts file of the
filter): a header line with the settings that decide the result, then one JSON line per finished pair, appended
and fsynced as it finishes. A pair is named by a key made from its content (not its line number), so a rerun
skips every pair already in the journal, whatever order the work finished in, and re-queues the pairs whose
record is an error. A torn last line (a kill during the write) is cut off on reopening. The output file itself
is written once, atomically, in input order, from the journal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BackendError, ConfigError, DataError, Problem
from .fileio import iter_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1
ANNOTATE_JOURNAL = "embedrl data annotate"
FILTER_JOURNAL = "embedrl data filter"
SAMPLING_MODES = ("equidistant", "random")
CUE_KINDS = ("text_keywords", "bbox_2d", "key_frames")
# The fields that are the pair itself; T-CoTs and meta are what annotate and filter add to it.
_TCOT_FIELDS = ("query_tcot", "positive_tcot", "negative_tcots")


# ============================================================================================== configs


@dataclass
class RetryPolicy:
    """Retries of one backend call on 5xx replies, time-outs and lost connections (never on other 4xx)."""

    retries: int = 4
    backoff: float = 2.0
    """Seconds before the first retry; doubled for each further one (with +-20 % jitter)."""
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if not (self.backoff >= 0 and self.max_backoff >= 0):
            raise ConfigError("backoff and max_backoff must be >= 0")


@dataclass
class AnnotateConfig:
    """What `annotate` does. The fields of `identity()` decide the T-CoTs; a journal written with other values
    is refused (pass `restart=True` to discard it)."""

    teacher: str
    """The teacher's name as recorded (checkpoint path or served model name); part of the identity."""
    answer_rate: float = 0.0
    """Share of pairs whose query T-CoT is answer-conditioned, picked per pair by a hash of (seed, pair key)."""
    seed: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    num_frames: int = 8
    fps: float = 2.0
    concurrency: int = 8
    """Units of work in flight at once (threads); use 1 for an in-process model."""
    batch_size: int = 1
    """Pairs per backend call: 1 for an endpoint, more for an in-process model that batches."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    restart: bool = False
    progress: bool = True
    fsync: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.answer_rate <= 1.0:
            raise ConfigError(f"answer_rate must be in [0, 1], got {self.answer_rate}")
        if self.concurrency < 1 or self.batch_size < 1 or self.max_new_tokens < 1 or self.num_frames < 1:
            raise ConfigError("concurrency, batch_size, max_new_tokens and num_frames must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or not self.fps > 0:
            raise ConfigError("temperature must be >= 0, top_p in (0, 1] and fps > 0")

    def identity(self) -> dict:
        return {
            "teacher": self.teacher,
            "answer_rate": self.answer_rate,
            "seed": self.seed,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "num_frames": self.num_frames,
            "fps": self.fps,
        }


@dataclass
class FilterConfig:
    """What `judge_pairs` does; `identity()` must match an existing verdicts journal."""

    judge: str
    max_new_tokens: int = 16
    seed: int = 0
    concurrency: int = 8
    batch_size: int = 1
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    restart: bool = False
    progress: bool = True
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("concurrency, batch_size and max_new_tokens must be >= 1")

    def identity(self) -> dict:
        return {
            "judge": self.judge,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "temperature": 0.0,
        }


@dataclass
class SplitConfig:
    """Exactly one of `rl_size` (pairs in all) or `rl_fraction` (of each dataset) is set."""

    rl_size: int | None = None
    rl_fraction: float | None = None
    seed: int = 0
    sampling: str = "equidistant"

    def __post_init__(self) -> None:
        if (self.rl_size is None) == (self.rl_fraction is None):
            raise ConfigError("give exactly one of rl_size and rl_fraction")
        if self.rl_size is not None and self.rl_size < 1:
            raise ConfigError(f"rl_size must be >= 1, got {self.rl_size}")
        if self.rl_fraction is not None and not 0.0 < self.rl_fraction < 1.0:
            raise ConfigError(f"rl_fraction must be in (0, 1), got {self.rl_fraction}")
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")


# ================================================================================================ pairs


@dataclass
class PairRecord:
    """One input line: the raw JSON object (written back as it came), the parsed pair, and its key."""

    line: int
    raw: dict
    pair: Any  # train.pairs.TrainingPair
    key: str


def _canonical_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _keyed(
    records: list[tuple[int, dict, Any]], content: Callable[[dict], Any], path: Path
) -> list[PairRecord]:
    """Content keys; the n-th copy of an identical pair gets '#n' so that every line has its own key. Media
    count by the files they name, so a pair keeps its key in a file written to another folder."""
    seen: Counter = Counter()
    out = []
    for line, raw, pair in records:
        base = _canonical_hash(content(rebase_media(raw, path, None)))
        seen[base] += 1
        out.append(PairRecord(line, raw, pair, base if seen[base] == 1 else f"{base}#{seen[base]}"))
    return out


def pair_content(raw: dict) -> dict:
    """What a pair is, for annotation: everything but T-CoTs and meta."""
    return {k: v for k, v in raw.items() if k not in _TCOT_FIELDS and k != "meta"}


def judged_content(raw: dict) -> dict:
    """What a verdict is about: the pair with its two T-CoTs (a re-annotated pair is judged again)."""
    return {k: v for k, v in raw.items() if k != "meta" and k != "negative_tcots"}


def read_pair_records(
    path: str | Path, content: Callable[[dict], Any] = pair_content, check_media: bool = True
) -> list[PairRecord]:
    """Every pair of a training-pairs file with its raw line and content key. Raises DataError listing every
    defect of the file (the format of `embedrl train check-data`)."""
    from .train.pairs import load_pairs

    path = Path(path)
    pairs, problems = load_pairs(path, check_media=check_media)
    if problems:
        raise DataError(problems)
    if not pairs:
        raise DataError(Problem(str(path), "no training pairs"))
    raw_problems: list[Problem] = []
    raws = dict(iter_jsonl(path, raw_problems))
    if raw_problems:  # load_pairs read the same file a moment ago; only a concurrent edit gets here
        raise DataError(raw_problems)
    return _keyed([(p.line, raws[p.line], p) for p in pairs], content, path)


def _rebase_path(value: Any, src: Path, dst: Path | None) -> Any:
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    if dst is None:
        return os.path.normpath(os.path.join(src, value))
    try:
        return os.path.relpath(os.path.join(src, value), dst)
    except ValueError:  # another drive on Windows: no relative path exists
        return os.path.abspath(os.path.join(src, value))


def _rebase_item(item: Any, src: Path, dst: Path | None) -> Any:
    if not isinstance(item, dict):
        return item
    item = dict(item)
    if isinstance(item.get("images"), list):
        item["images"] = [_rebase_path(p, src, dst) for p in item["images"]]
    video = item.get("video")
    if isinstance(video, str):
        item["video"] = _rebase_path(video, src, dst)
    elif isinstance(video, dict):
        video = dict(video)
        if isinstance(video.get("frames"), list):
            video["frames"] = [_rebase_path(p, src, dst) for p in video["frames"]]
        if "path" in video:
            video["path"] = _rebase_path(video["path"], src, dst)
        item["video"] = video
    return item


def rebase_media(raw: dict, src_file: str | Path, dst_file: str | Path | None) -> dict:
    """The pair with relative media paths rewritten so that they still name the same files when the pair is
    read from `dst_file` instead of `src_file` (paths are relative to the folder of the pairs file); with
    `dst_file` None, as absolute paths."""
    src = Path(os.path.abspath(Path(src_file).parent))
    dst = None if dst_file is None else Path(os.path.abspath(Path(dst_file).parent))
    if src == dst:
        return raw
    out = dict(raw)
    for side in ("query", "positive"):
        if side in out:
            out[side] = _rebase_item(out[side], src, dst)
    if isinstance(out.get("negatives"), list):
        out["negatives"] = [_rebase_item(n, src, dst) for n in out["negatives"]]
    return out


# ============================================================================================== journal


class Journal:
    """An append-only JSONL file of finished work: a header line, then one record per pair with its "key".

    Each record is written with one write() and, with `fsync`, forced to disk before the next one, so a kill
    loses at most the line being written; that torn line is cut off when the journal is opened again. An
    exclusive lock keeps two runs from writing the same journal.
    """

    def __init__(
        self, path: str | Path, kind: str, settings: dict, *, restart: bool = False, fsync: bool = True
    ):
        self.path = Path(path)
        self.kind = kind
        self.settings = json.loads(json.dumps(settings))  # what reading it back gives
        self.restart = restart
        self.fsync = fsync
        self._fd: int | None = None
        self.torn_line_dropped = False
        self.records: dict[str, dict] = {}
        """The last record of every key: what was read on opening, updated by each append."""

    def open(self) -> dict[str, dict]:
        """Open for appending (creating it with its header) and return the last record of every key."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            _lock(fd, self.path)  # before anything is read or cut: another run may be writing it
            if self.restart:
                os.ftruncate(fd, 0)
            data = _read_fd(fd)
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                os.ftruncate(fd, cut)
                data = data[:cut]
                self.torn_line_dropped = True
                log.warning("%s: dropped a torn last line (the run was killed while writing it)", self.path)
            header, records = _parse_journal(
                data, self.path, self.kind, "; remove it, pass --restart, or choose another output path"
            )
            if header is None:
                os.ftruncate(fd, 0)
                self._fd = fd
                self._write({"journal": self.kind, "version": JOURNAL_VERSION, "settings": self.settings})
                return {}
            if header.get("settings") != self.settings:
                raise ConfigError(_settings_mismatch(self.path, header.get("settings"), self.settings))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.records = dict(records)
        return records

    def append(self, record: dict) -> None:
        self._write(record)
        self.records[record["key"]] = record

    def _write(self, record: dict) -> None:
        assert self._fd is not None, "open() the journal first"
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _lock(fd: int, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as the rest of the platform gives none either
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"{path}: another run is writing this journal; wait for it or use another --out"
        ) from None


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_journal(
    data: bytes, path: Path, kind: str, advice: str = ""
) -> tuple[dict | None, dict[str, dict]]:
    header: dict | None = None
    records: dict[str, dict] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            # only damage from outside (a crash cannot tear a line that is followed by another one): the pairs
            # on it are simply done again
            log.warning("%s:%d: unreadable journal line ignored", path, number)
            continue
        if header is None:
            if not isinstance(obj, dict) or obj.get("journal") != kind:
                raise ConfigError(
                    f"{path} is not a journal of `{kind}` (its first line is not the header one "
                    f"starts with){advice}"
                )
            if obj.get("version") != JOURNAL_VERSION:
                raise ConfigError(
                    f"{path}: journal version {obj.get('version')} is not {JOURNAL_VERSION} (written "
                    f"by another embedrl version){advice}"
                )
            header = obj
            continue
        if isinstance(obj, dict) and isinstance(obj.get("key"), str):
            records[obj["key"]] = obj
    return header, records


def read_journal(path: str | Path, kind: str) -> tuple[dict, dict[str, dict]]:
    """(header, last record per key) of a journal, read only; a torn last line is ignored."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(Problem(str(path), "file not found")) from None
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    header, records = _parse_journal(data, path, kind)
    if header is None:
        raise DataError(Problem(str(path), f"empty: not a journal of `{kind}`"))
    return header, records


def _settings_mismatch(path: Path, old: Any, new: dict) -> str:
    old = old if isinstance(old, dict) else {}
    changed = [
        f"{k}: {old.get(k)!r} then, {new.get(k)!r} now"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return (
        f"{path} was written with other settings ({'; '.join(changed)}). Rerun with the same settings to "
        "resume, pass --restart to discard it, or choose another --out"
    )


# ============================================================================================ execution


class _Failed(Exception):
    def __init__(self, cause: BaseException, attempts: int):
        super().__init__(str(cause))
        self.cause = cause
        self.attempts = attempts


_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")


def is_retryable(exc: BaseException) -> bool:
    """Time-outs, lost connections and 5xx (and 408 / 429) are worth another try; other errors would fail
    again the same way."""
    import http.client

    if isinstance(exc, BackendError):
        match = _HTTP_STATUS.search(str(exc))
        if match is None:
            return True  # cannot reach the server, a time-out, a reply cut short
        status = int(match.group(1))
        return status >= 500 or status in (408, 429)
    return isinstance(exc, (TimeoutError, ConnectionError, http.client.HTTPException))


def call_with_retry(
    call: Callable[[], Any], policy: RetryPolicy, stop: threading.Event | None = None
) -> tuple[Any, int]:
    """(result, attempts) of `call`, retried with exponential back-off; raises `_Failed` once it gives up."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call(), attempt
        except Exception as exc:  # noqa: BLE001 - every failure becomes a per-pair record, never a crash
            if attempt > policy.retries or not is_retryable(exc) or (stop is not None and stop.is_set()):
                raise _Failed(exc, attempt) from exc
            delay = min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            log.info("retry %d of %d in %.2fs after: %s", attempt, policy.retries, delay, exc)
            if stop is not None:
                stop.wait(delay)  # a Ctrl-C in the main thread ends the wait at once
            else:
                time.sleep(delay)


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, BackendError) else f"{type(exc).__name__}: {text}"


def _run_units(
    units: Sequence[list[PairRecord]],
    work: Callable[[list[PairRecord]], list[dict]],
    journal: Journal,
    concurrency: int,
    bar: Any,
    stop: threading.Event,
) -> Counter:
    """Run `work` on each unit with at most `concurrency` in flight; journal each record as its unit ends."""
    counts: Counter = Counter()
    pending = iter(units)
    in_flight: dict[Future, list[PairRecord]] = {}

    def fill(pool: ThreadPoolExecutor) -> None:
        while len(in_flight) < 2 * concurrency:  # a little queued work keeps every thread busy
            unit = next(pending, None)
            if unit is None:
                return
            in_flight[pool.submit(work, unit)] = unit

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="embedrl-data")
    try:
        fill(pool)
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                unit = in_flight.pop(future)
                try:
                    records = future.result()
                except Exception as exc:  # noqa: BLE001 - a bug in one unit must not lose the others' work
                    log.exception("unit failed")
                    records = [_error_record(p, "internal", _error_text(exc), 1) for p in unit]
                for record in records:
                    journal.append(record)
                    counts[record["status"]] += 1
                    if bar is not None:
                        bar.update(1)
                if bar is not None:
                    bar.set_postfix(errors=counts["error"], refresh=False)
            fill(pool)
    except BaseException:
        stop.set()  # waiting retries give up at once
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return counts


def _error_record(rec: PairRecord, stage: str, message: str, attempts: int) -> dict:
    return {
        "key": rec.key,
        "line": rec.line,
        "dataset": rec.pair.dataset,
        "status": "error",
        "stage": stage,
        "error": message[:2000],
        "attempts": attempts,
    }


def _chunks(records: list[PairRecord], done: set[str], size: int) -> list[list[PairRecord]]:
    """Units of the pending pairs. Boundaries are fixed by input position, not by what is pending, so a batch
    of an in-process model holds the same pairs after a resume as in an uninterrupted run (padding in a batch
    can change a greedy output)."""
    units = []
    for start in range(0, len(records), size):
        unit = [r for r in records[start : start + size] if r.key not in done]
        if unit:
            units.append(unit)
    return units


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="pair", dynamic_ncols=True, smoothing=0.05)


# ============================================================================================== annotate


def unit_interval(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key): per-pair choices that a rerun repeats exactly."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_answer_conditioned(seed: int, key: str, rate: float) -> bool:
    return rate > 0 and unit_interval(seed, key) < rate


def tcot_report(text: str, modality: str, num_frames: int | None = None) -> dict:
    """How a T-CoT reads: the cue its input needs, every parse and validation problem code (in order, each
    once), whether the cue is valid, and whether it passes the format check of the format reward."""
    from .tcot import CUE_FOR_MODALITY, DEFAULT_NUM_FRAMES, format_ok, parse, validate

    result = parse(text, num_frames=num_frames)
    codes = list(result.codes)
    cue_valid = False
    if result.tcot is not None:
        checks = validate(result.tcot, modality, num_frames)
        codes += [p.code for p in checks]
        cue_valid = not checks
    return {
        "cue": CUE_FOR_MODALITY[modality],
        "problems": list(dict.fromkeys(codes)),
        "cue_valid": cue_valid,
        "format_ok": format_ok(text, modality, num_frames or DEFAULT_NUM_FRAMES),
    }


def _answer_for(positive: Any, positive_tcot: str) -> tuple[str | None, str | None]:
    """The reference answer shown to the teacher: the positive's text, else the answer its own T-CoT gives
    (an image or a video cannot go into the prompt's text)."""
    from .tcot import parse

    if isinstance(positive.text, str) and positive.text.strip():
        return positive.text.strip(), "positive_text"
    parsed = parse(positive_tcot)
    if parsed.tcot is not None and parsed.tcot.answer.strip():
        return parsed.tcot.answer.strip(), "positive_tcot"
    return None, None


@dataclass
class AnnotateSummary:
    out: str
    total: int
    from_journal: int
    annotated: int
    errors: int
    problems: dict[str, int]
    cue_valid: dict[str, list[int]]
    """cue kind -> [valid, total] over the T-CoTs written."""
    answer_conditioned: int
    seconds: float
    torn_line_dropped: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def annotate(
    pairs_path: str | Path,
    out_path: str | Path,
    backend: Any,
    config: AnnotateConfig,
    journal_path: str | Path | None = None,
) -> AnnotateSummary:
    """Write `query_tcot` and `positive_tcot` for every pair of `pairs_path` into `out_path`.

    `backend` is any generation backend (`.generate(conversations, settings) -> texts`). Each finished pair is
    journaled in `journal_path` (default `OUT.journal.jsonl`); a rerun resumes from it and retries errors.
    `out_path` holds the pairs annotated so far, in input order, with the teacher's report of each T-CoT in
    `meta.tcot_annotation`; pairs whose annotation failed are left out and listed in `OUT.errors.jsonl`.
    """
    from .models.reasoner import GenerationSettings, Reasoner

    started = time.monotonic()
    out_path = Path(out_path)
    journal_path = (
        Path(journal_path) if journal_path else out_path.with_name(out_path.name + ".journal.jsonl")
    )
    records = read_pair_records(pairs_path)
    settings = GenerationSettings(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
    )
    reasoner = Reasoner(backend, settings, num_frames=config.num_frames, fps=config.fps)
    stop = threading.Event()

    def generate(conversations: list) -> tuple[list[str], int]:
        def call() -> list[str]:
            texts = backend.generate(conversations, settings)
            if len(texts) != len(conversations):
                raise BackendError(f"{backend.name}: {len(texts)} replies for {len(conversations)} prompts")
            return [t if isinstance(t, str) else "" for t in texts]

        return call_with_retry(call, config.retry, stop)

    def work(unit: list[PairRecord]) -> list[dict]:
        return _annotate_unit(unit, reasoner, generate, config)

    with Journal(
        journal_path, ANNOTATE_JOURNAL, config.identity(), restart=config.restart, fsync=config.fsync
    ) as journal:
        done_records = journal.open()
        done = {k for k, r in done_records.items() if r.get("status") == "ok"}
        wanted = {r.key for r in records}
        from_journal = len(done & wanted)
        bar = _progress(len(records), from_journal, "annotate", config.progress)
        try:
            _run_units(
                _chunks(records, done, config.batch_size), work, journal, config.concurrency, bar, stop
            )
        finally:
            if bar is not None:
                bar.close()
        torn, final = journal.torn_line_dropped, journal.records
    summary = _write_annotated(records, final, pairs_path, out_path, config.teacher)
    summary.from_journal = from_journal
    summary.annotated = sum(
        1 for r in records if r.key not in done and final.get(r.key, {}).get("status") == "ok"
    )
    summary.seconds = round(time.monotonic() - started, 3)
    summary.torn_line_dropped = torn
    write_json(
        out_path.with_name(out_path.name + ".run.json"),
        {
            "command": ANNOTATE_JOURNAL,
            "input": str(pairs_path),
            "journal": str(journal_path),
            "settings": config.identity(),
            "concurrency": config.concurrency,
            "batch_size": config.batch_size,
            "summary": summary.to_json(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return summary


def _annotate_unit(
    unit: list[PairRecord], reasoner: Any, generate: Callable, config: AnnotateConfig
) -> list[dict]:
    from .data.media import load_item_media
    from .prompts import select_prompt_kind

    results: dict[str, dict] = {}
    ready = []
    for rec in unit:
        try:
            media = (
                load_item_media(rec.pair.query, config.num_frames),
                load_item_media(rec.pair.positive, config.num_frames),
            )
        except Exception as exc:  # noqa: BLE001 - an unreadable file fails this pair only
            results[rec.key] = _error_record(rec, "media", _error_text(exc), 0)
            continue
        ready.append((rec, media))

    def conversations(side: str, build: Callable) -> tuple[list, list]:
        convs, kept = [], []
        for rec, media in ready:
            if rec.key in results:
                continue
            try:
                convs.append(build(rec, media))
                kept.append((rec, media))
            except Exception as exc:  # noqa: BLE001 - a prompt that cannot be built fails this pair only
                results[rec.key] = _error_record(rec, f"{side} prompt", _error_text(exc), 0)
        return convs, kept

    def run(side: str, convs: list, kept: list) -> tuple[list[str], int]:
        if not convs:
            return [], 0
        try:
            return generate(convs)
        except _Failed as failed:
            for rec, _ in kept:
                results[rec.key] = _error_record(rec, side, _error_text(failed.cause), failed.attempts)
            return [], failed.attempts

    # positives first: an answer-conditioned query may be shown the positive's own answer
    convs, kept = conversations(
        "positive", lambda rec, media: reasoner.conversation(rec.pair.positive, "candidate", None, media[1])
    )
    pos_texts, pos_attempts = run("positive", convs, kept)
    positive_tcots = {rec.key: text for (rec, _), text in zip(kept, pos_texts)}

    answers: dict[str, tuple[str | None, str | None]] = {}

    def query_conversation(rec: PairRecord, media: tuple) -> Any:
        answer, source = None, None
        if is_answer_conditioned(config.seed, rec.key, config.answer_rate):
            answer, source = _answer_for(rec.pair.positive, positive_tcots[rec.key])
        answers[rec.key] = (answer, source)
        return reasoner.conversation(
            rec.pair.query, "query", rec.pair.positive.modality, media[0], answer=answer
        )

    convs, kept = conversations("query", query_conversation)
    query_texts, query_attempts = run("query", convs, kept)

    for (rec, media), query_tcot in zip(kept, query_texts):
        pair = rec.pair
        q_frames, p_frames = len(media[0][1]) or None, len(media[1][1]) or None
        answer, source = answers[rec.key]
        query_report = {
            "kind": select_prompt_kind("query", pair.query.modality, pair.positive.modality).value,
            **tcot_report(query_tcot, pair.query.modality, q_frames),
            "frames": q_frames,
            "answer_conditioned": answer is not None,
            "answer_source": source,
        }
        positive_report = {
            "kind": select_prompt_kind("candidate", pair.positive.modality).value,
            **tcot_report(positive_tcots[rec.key], pair.positive.modality, p_frames),
            "frames": p_frames,
        }
        results[rec.key] = {
            "key": rec.key,
            "line": rec.line,
            "dataset": pair.dataset,
            "status": "ok",
            "query_tcot": query_tcot,
            "positive_tcot": positive_tcots[rec.key],
            "report": {"query": query_report, "positive": positive_report},
            "attempts": {"positive": pos_attempts, "query": query_attempts},
        }
    return [results[rec.key] for rec in unit]


def _write_annotated(
    records: list[PairRecord], final: dict[str, dict], pairs_path: str | Path, out_path: Path, teacher: str
) -> AnnotateSummary:
    lines, errors = [], []
    problems: Counter = Counter()
    cue_valid: dict[str, list[int]] = {}
    conditioned = 0
    for rec in records:
        entry = final.get(rec.key)
        if entry is None or entry.get("status") != "ok":
            errors.append(entry or {"key": rec.key, "line": rec.line, "status": "missing"})
            continue
        raw = rebase_media(rec.raw, pairs_path, out_path)
        raw["query_tcot"] = entry["query_tcot"]
        raw["positive_tcot"] = entry["positive_tcot"]
        meta = dict(raw.get("meta") or {})
        meta["tcot_annotation"] = {"teacher": teacher, "key": rec.key, **entry["report"]}
        raw["meta"] = meta
        lines.append(raw)
        for report in entry["report"].values():
            problems.update(report["problems"])
            counts = cue_valid.setdefault(report["cue"], [0, 0])
            counts[0] += bool(report["cue_valid"])
            counts[1] += 1
        conditioned += bool(entry["report"]["query"].get("answer_conditioned"))
    write_jsonl(out_path, lines)
    errors_path = out_path.with_name(out_path.name + ".errors.jsonl")
    if errors:
        write_jsonl(errors_path, errors)
    elif errors_path.exists():
        errors_path.unlink()
    return AnnotateSummary(
        out=str(out_path),
        total=len(records),
        from_journal=0,
        annotated=0,
        errors=len(errors),
        problems=dict(problems.most_common()),
        cue_valid=dict(sorted(cue_valid.items())),
        answer_conditioned=conditioned,
        seconds=0.0,
    )


# ================================================================================================ filter


def task_description(pair: Any) -> str:
    """The task line of the relevance prompt: the query's instruction (when it has one) and the dataset."""
    instruction = (pair.query.instruction or "").strip()
    return f"{instruction} (dataset: {pair.dataset})" if instruction else f"dataset {pair.dataset}"


def _has_tcots(raw: dict) -> bool:
    return all(isinstance(raw.get(k), str) and raw[k].strip() for k in ("query_tcot", "positive_tcot"))


def decision(record: dict | None) -> str:
    """keep, drop or aside, from a stored verdict record alone (so it can be redone without the judge).

    The judge is asked whether the two T-CoTs are unrelated or contradict each other: "Yes" drops the pair,
    "No" keeps it, an answer that is neither sets it aside; a pair without both T-CoTs is dropped unjudged.
    """
    if record is None or record.get("status") not in ("ok", "skipped"):
        return "missing"
    if record["status"] == "skipped":
        return "drop"
    verdict = record.get("verdict")
    return {"yes": "drop", "no": "keep"}.get(verdict, "aside")


@dataclass
class FilterSummary:
    out: str
    verdicts: str
    total: int
    kept: int
    dropped: int
    aside: int
    without_tcot: int
    errors: int
    judged_now: int
    per_dataset: dict[str, dict[str, int]]

    def to_json(self) -> dict:
        return asdict(self)


def judge_pairs(
    in_path: str | Path, verdicts_path: str | Path, backend: Any, config: FilterConfig
) -> tuple[list[PairRecord], dict[str, dict], int]:
    """Ask the relevance judge about every annotated pair not yet in the verdicts journal.

    Returns (pairs, last verdict record per key, pairs judged in this call).
    """
    from .models.reasoner import GenerationSettings
    from .prompts import parse_relevance_answer, relevance_filter_prompt

    records = read_pair_records(in_path, judged_content)
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=0.0, seed=config.seed)
    stop = threading.Event()

    def work(unit: list[PairRecord]) -> list[dict]:
        out: dict[str, dict] = {}
        asked = []
        for rec in unit:
            base = {"key": rec.key, "line": rec.line, "dataset": rec.pair.dataset}
            if not _has_tcots(rec.raw):
                out[rec.key] = {
                    **base,
                    "status": "skipped",
                    "reason": "missing or blank T-CoT",
                    "verdict": None,
                }
                continue
            prompt = relevance_filter_prompt(
                task_description(rec.pair), rec.raw["query_tcot"], rec.raw["positive_tcot"]
            )
            asked.append((rec, [{"role": "user", "content": [{"type": "text", "text": prompt}]}]))
        if asked:
            conversations = [c for _, c in asked]

            def call() -> list[str]:
                texts = backend.generate(conversations, settings)
                if len(texts) != len(conversations):
                    raise BackendError(
                        f"{backend.name}: {len(texts)} replies for {len(conversations)} prompts"
                    )
                return [t if isinstance(t, str) else "" for t in texts]

            try:
                answers, attempts = call_with_retry(call, config.retry, stop)
            except _Failed as failed:
                for rec, _ in asked:
                    out[rec.key] = _error_record(rec, "judge", _error_text(failed.cause), failed.attempts)
            else:
                for (rec, _), answer in zip(asked, answers):
                    yes = parse_relevance_answer(answer)
                    out[rec.key] = {
                        "key": rec.key,
                        "line": rec.line,
                        "dataset": rec.pair.dataset,
                        "status": "ok",
                        "verdict": None if yes is None else ("yes" if yes else "no"),
                        "raw": answer,
                        "attempts": attempts,
                    }
        return [out[rec.key] for rec in unit]

    with Journal(
        verdicts_path, FILTER_JOURNAL, config.identity(), restart=config.restart, fsync=config.fsync
    ) as journal:
        stored = journal.open()
        done = {k for k, r in stored.items() if r.get("status") in ("ok", "skipped")}
        bar = _progress(len(records), len({r.key for r in records} & done), "filter", config.progress)
        try:
            counts = _run_units(
                _chunks(records, done, config.batch_size), work, journal, config.concurrency, bar, stop
            )
        finally:
            if bar is not None:
                bar.close()
        final = journal.records
    return records, final, counts["ok"] + counts["skipped"]


def apply_verdicts(
    in_path: str | Path,
    verdicts_path: str | Path,
    out_path: str | Path,
    dropped_path: str | Path | None = None,
    records: list[PairRecord] | None = None,
    verdicts: dict[str, dict] | None = None,
    judged_now: int = 0,
) -> FilterSummary:
    """Write the kept pairs to `out_path` from stored verdicts alone (no judge is called).

    Pairs whose verdict is neither Yes nor No go to `OUT.aside.jsonl`; pairs without a verdict (the judge
    failed on them) are listed in `OUT.errors.jsonl`. With `dropped_path`, dropped pairs are written there.
    """
    out_path = Path(out_path)
    if records is None:
        records = read_pair_records(in_path, judged_content)
    if verdicts is None:
        _, verdicts = read_journal(verdicts_path, FILTER_JOURNAL)
    targets = {
        "keep": out_path,
        "aside": out_path.with_name(out_path.name + ".aside.jsonl"),
        "drop": Path(dropped_path) if dropped_path is not None else None,
    }
    groups: dict[str, list[dict]] = defaultdict(list)
    per_dataset: dict[str, Counter] = defaultdict(Counter)
    errors = []
    without_tcot = 0
    for rec in records:
        entry = verdicts.get(rec.key)
        outcome = decision(entry)
        per_dataset[rec.pair.dataset][outcome] += 1
        if outcome == "missing":
            errors.append(
                entry or {"key": rec.key, "line": rec.line, "dataset": rec.pair.dataset, "status": "missing"}
            )
            continue
        without_tcot += entry["status"] == "skipped"
        target = targets[outcome]
        raw = rebase_media(rec.raw, in_path, target) if target is not None else rec.raw
        meta = dict(raw.get("meta") or {})
        meta["relevance"] = {
            "verdict": entry.get("verdict"),
            "raw": entry.get("raw"),
            **({"reason": entry["reason"]} if entry.get("reason") else {}),
        }
        groups[outcome].append({**raw, "meta": meta})
    write_jsonl(out_path, groups["keep"])
    for path, rows in (
        (targets["aside"], groups["aside"]),
        (out_path.with_name(out_path.name + ".errors.jsonl"), errors),
    ):
        if rows:
            write_jsonl(path, rows)
        elif path.exists():
            path.unlink()
    if targets["drop"] is not None:
        write_jsonl(targets["drop"], groups["drop"])
    return FilterSummary(
        out=str(out_path),
        verdicts=str(verdicts_path),
        total=len(records),
        kept=len(groups["keep"]),
        dropped=len(groups["drop"]),
        aside=len(groups["aside"]),
        without_tcot=without_tcot,
        errors=len(errors),
        judged_now=judged_now,
        per_dataset={
            name: {k: c[k] for k in ("keep", "drop", "aside", "missing")}
            for name, c in sorted(per_dataset.items())
        },
    )


def filter_pairs(
    in_path: str | Path,
    out_path: str | Path,
    backend: Any,
    config: FilterConfig,
    verdicts_path: str | Path | None = None,
    dropped_path: str | Path | None = None,
) -> FilterSummary:
    """`judge_pairs` then `apply_verdicts`; verdicts default to `OUT.verdicts.jsonl`."""
    out_path = Path(out_path)
    verdicts_path = (
        Path(verdicts_path) if verdicts_path else out_path.with_name(out_path.name + ".verdicts.jsonl")
    )
    records, verdicts, judged = judge_pairs(in_path, verdicts_path, backend, config)
    return apply_verdicts(in_path, verdicts_path, out_path, dropped_path, records, verdicts, judged)


# ================================================================================================= split


def rl_allocation(
    sizes: dict[str, int], rl_size: int | None = None, rl_fraction: float | None = None
) -> dict[str, int]:
    """RL pairs per dataset: `rl_fraction` of each (rounded), or `rl_size` in all shared in proportion to the
    dataset sizes (largest remainders first, ties by name)."""
    total = sum(sizes.values())
    if rl_fraction is not None:
        return {name: min(n, int(math.floor(n * rl_fraction + 0.5))) for name, n in sizes.items()}
    assert rl_size is not None
    if rl_size >= total:
        raise ConfigError(f"--rl-size {rl_size} leaves no pair for stage 1 (the input has {total})")
    quotas = {name: rl_size * n / total for name, n in sizes.items()}
    out = {name: int(math.floor(q)) for name, q in quotas.items()}
    left = rl_size - sum(out.values())
    for name in sorted(quotas, key=lambda n: (-(quotas[n] - out[n]), n))[:left]:
        out[name] += 1
    return out


def sample_positions(n: int, k: int, seed: int, dataset: str, sampling: str = "equidistant") -> list[int]:
    """k of the positions 0..n-1. equidistant: evenly spaced over the dataset's order, with a phase drawn from
    (seed, dataset); random: a seeded sample. Both depend on nothing but their arguments."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot take {k} of {n}")
    if k == 0:
        return []
    if sampling == "random":
        return sorted(random.Random(f"{seed}:{dataset}").sample(range(n), k))
    phase = unit_interval(seed, f"equidistant:{dataset}")
    return [min(n - 1, int((i + phase) * n / k)) for i in range(k)]


def _side_stats(pair: Any, raw: dict, side: str) -> tuple[str, str | None, bool]:
    """(cue kind, T-CoT or None, cue valid) of one side, with the frame count annotate recorded."""
    from .tcot import CUE_FOR_MODALITY

    item = pair.query if side == "query" else pair.positive
    text = raw.get(f"{side}_tcot")
    cue = CUE_FOR_MODALITY[item.modality]
    if not isinstance(text, str) or not text.strip():
        return cue, None, False
    stored = ((raw.get("meta") or {}).get("tcot_annotation") or {}).get(side) or {}
    frames = stored.get("frames") if isinstance(stored.get("frames"), int) else None
    if frames is None and item.video is not None and item.video.frames:
        frames = min(len(item.video.frames), 8)
    return cue, text, tcot_report(text, item.modality, frames)["cue_valid"]


def dataset_statistics(
    records: list[PairRecord], rl_keys: set[str], verdicts: dict[str, dict] | None = None
) -> dict[str, dict]:
    """Per dataset: pairs, stage-1 and RL counts, kept ratio (with verdicts), cue validity per cue kind and the
    mean T-CoT length in characters; plus an "all" row."""
    rows: dict[str, dict] = {}
    groups: dict[str, list[PairRecord]] = defaultdict(list)
    for rec in records:
        groups[rec.pair.dataset].append(rec)
    judged: dict[str, Counter] = defaultdict(Counter)
    for entry in (verdicts or {}).values():
        judged[str(entry.get("dataset"))][decision(entry)] += 1
    for name, group in [*sorted(groups.items()), ("all", records)]:
        cue_counts = {cue: [0, 0] for cue in CUE_KINDS}
        lengths = []
        missing = 0
        for rec in group:
            for side in ("query", "positive"):
                cue, text, valid = _side_stats(rec.pair, rec.raw, side)
                if text is None:
                    missing += 1
                    continue
                cue_counts[cue][0] += valid
                cue_counts[cue][1] += 1
                lengths.append(len(text))
        row: dict[str, Any] = {
            "pairs": len(group),
            "stage1": sum(r.key not in rl_keys for r in group),
            "rl": sum(r.key in rl_keys for r in group),
            "cue_valid": {cue: (round(v / t, 4) if t else None) for cue, (v, t) in cue_counts.items()},
            "cue_counts": cue_counts,
            "mean_tcot_chars": round(sum(lengths) / len(lengths), 1) if lengths else None,
            "missing_tcots": missing,
        }
        if verdicts is not None:
            counts = sum(judged.values(), Counter()) if name == "all" else judged.get(name, Counter())
            decided = counts["keep"] + counts["drop"] + counts["aside"]
            row["judged"] = decided
            row["kept_ratio"] = round(counts["keep"] / decided, 4) if decided else None
        rows[name] = row
    return rows


def format_statistics(rows: dict[str, dict]) -> str:
    """The statistics as a Markdown table."""
    with_ratio = any("kept_ratio" in r for r in rows.values())
    head = (
        ["dataset", "pairs", "stage1", "rl"]
        + (["kept"] if with_ratio else [])
        + ["keywords ok", "boxes ok", "frames ok", "mean T-CoT chars"]
    )

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    table = [head]
    for name, r in rows.items():
        cells = [name, str(r["pairs"]), str(r["stage1"]), str(r["rl"])]
        if with_ratio:
            cells.append(pct(r.get("kept_ratio")))
        cells += [pct(r["cue_valid"][c]) for c in CUE_KINDS]
        cells.append("-" if r["mean_tcot_chars"] is None else f"{r['mean_tcot_chars']:.0f}")
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]

    def line(cells: Iterable[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(table[0]), rule, *(line(r) for r in table[1:])])


@dataclass
class SplitResult:
    stage1: str
    rl: str
    stage1_pairs: int
    rl_pairs: int
    duplicates: int
    statistics: dict[str, dict]
    settings: dict

    def to_json(self) -> dict:
        return asdict(self)


def split_pairs(
    in_path: str | Path,
    stage1_path: str | Path,
    rl_path: str | Path,
    config: SplitConfig,
    verdicts_path: str | Path | None = None,
    stats_path: str | Path | None = None,
) -> SplitResult:
    """Sample the RL subset per dataset; write it and the rest (for stage 1) as two pairs files.

    Identical pairs (same content, T-CoTs aside) are sampled as one, so that no pair lands in both files.
    Each file keeps the input order. The statistics go to `stats_path` (JSON) when given.
    """
    records = read_pair_records(in_path)
    groups: dict[str, list[str]] = defaultdict(list)  # dataset -> distinct content keys in input order
    seen: set[str] = set()
    for rec in records:
        base = rec.key.split("#", 1)[0]
        if base not in seen:
            seen.add(base)
            groups[rec.pair.dataset].append(base)
    duplicates = len(records) - len(seen)
    quota = rl_allocation(
        {name: len(keys) for name, keys in groups.items()}, config.rl_size, config.rl_fraction
    )
    rl_bases: set[str] = set()
    for name, keys in groups.items():
        rl_bases.update(
            keys[i] for i in sample_positions(len(keys), quota[name], config.seed, name, config.sampling)
        )
    rl_keys = {rec.key for rec in records if rec.key.split("#", 1)[0] in rl_bases}
    stage1 = [rebase_media(rec.raw, in_path, stage1_path) for rec in records if rec.key not in rl_keys]
    rl = [rebase_media(rec.raw, in_path, rl_path) for rec in records if rec.key in rl_keys]
    if not stage1:
        raise ConfigError("the split leaves no pair for stage 1; lower --rl-size or --rl-fraction")
    if not rl:
        raise ConfigError("the split puts no pair in the RL set; raise --rl-size or --rl-fraction")
    verdicts = read_journal(verdicts_path, FILTER_JOURNAL)[1] if verdicts_path else None
    stats = dataset_statistics(records, rl_keys, verdicts)
    write_jsonl(stage1_path, stage1)
    write_jsonl(rl_path, rl)
    result = SplitResult(
        stage1=str(stage1_path),
        rl=str(rl_path),
        stage1_pairs=len(stage1),
        rl_pairs=len(rl),
        duplicates=duplicates,
        statistics=stats,
        settings={
            "input": str(in_path),
            **asdict(config),
            "verdicts": None if verdicts_path is None else str(verdicts_path),
        },
    )
    if stats_path is not None:
        write_json(stats_path, result.to_json())
    return result
