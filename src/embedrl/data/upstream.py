"""What every converter from an upstream benchmark layout needs: records read from the files a hub download
leaves (Parquet shards or JSON Lines), media placed inside the task folder, and a task folder that appears only
once it is complete.

Task folders must hold their media (docs/task-format.md, "Media paths"), so media are hard-linked when the
source is on the same file system (no extra space) and copied otherwise. A conversion builds `<task>.partial/`
and renames it when the folder validates, so an interrupted run never leaves a folder that looks finished;
rerunning reuses the media already placed there.
"""

from __future__ import annotations

import contextlib
import filecmp
import io
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DataError, EmbedRLError, Problem
from ..fileio import iter_jsonl, read_json
from .media import ALLOWED_IMAGE_FORMATS, sample_indices, special_file_problem
from .taskdir import TASK_FILE, Task, read_task, write_task

RECORD_SUFFIXES = (".parquet", ".jsonl", ".json")


class ConversionError(EmbedRLError):
    pass


@dataclass(frozen=True)
class Record:
    """One upstream row and where it came from (for error messages)."""

    data: dict
    file: str
    row: int  # 1-based: the line of a JSONL file, the row of a Parquet file

    def problem(self, message: str, field: str | None = None, record: str | None = None) -> Problem:
        return Problem(self.file, message, line=self.row, field=field, record=record)


_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")


SPLIT_NAMES = frozenset({"train", "test", "val", "validation", "dev"})


def split_of(path: Path) -> str | None:
    """The split a record file belongs to when its name tells: a hub shard's prefix
    (`val-00000-of-00001.parquet`), a file named after a split (`test.jsonl`) or a folder named after one
    (`test/0000.parquet`, the hub's converted layout); None otherwise."""
    match = _SHARD.match(path.stem)
    if match:
        return match.group("split")
    if path.stem in SPLIT_NAMES:
        return path.stem
    return path.parent.name if path.parent.name in SPLIT_NAMES else None


def record_files(source: str | Path, split: str | None = None, several_folders: bool = False) -> list[Path]:
    """The record files of `source`: the file itself, or every .parquet / .jsonl / .json file under a folder in
    name order. Files in several sub-folders are refused (they are several tasks) unless `several_folders` (one
    task kept in parts, as MVBench's subsets); a folder named after a split does not count as one. When the
    names tell the split, only `split`'s files are read: never two splits merged, and never another split than
    the one asked for."""
    source = Path(source)
    if source.is_file():
        if source.suffix not in RECORD_SUFFIXES:
            raise ConversionError(f"{source}: not a record file (expected {', '.join(RECORD_SUFFIXES)})")
        return [source]
    if not source.is_dir():
        raise ConversionError(f"{source}: no such file or folder")
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file()
        and p.suffix in RECORD_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )
    if not files:
        raise ConversionError(f"{source}: holds no {', '.join(RECORD_SUFFIXES)} files")

    def task_folder(path: Path) -> str:
        folder = (
            path.parent.parent if path.parent != source and path.parent.name in SPLIT_NAMES else path.parent
        )
        return str(folder.relative_to(source))

    folders = sorted({task_folder(p) for p in files})
    if (
        len(folders) > 1 and not several_folders
    ):  # e.g. a hub snapshot's root, one folder per task: never merge
        shown = ", ".join(folders[:5]) + (", ..." if len(folders) > 5 else "")
        raise ConversionError(
            f"{source}: record files in {len(folders)} folders ({shown}); give the folder of "
            "the one task to convert"
        )
    splits = {split_of(p) for p in files}
    named = sorted(x for x in splits if x is not None)
    if split is not None and split in splits:
        return [p for p in files if split_of(p) == split]
    if named and (split is not None or len(splits) > 1):
        listed = ", ".join(named) + (" and files of no split" if None in splits else "")
        wanted = (
            f"not {split} (the split to convert; pass --split to choose another)"
            if split
            else "pick one with --split"
        )
        raise ConversionError(f"{source}: holds {listed}, {wanted}")
    return files


def split_label(source: str | Path | None, split: str | None, several_folders: bool = False) -> str | None:
    """The split the records of `source` belong to, as recorded in task.json: the one their names tell, else the
    split asked for."""
    if source is None:
        return split
    names = {split_of(p) for p in record_files(source, split, several_folders)}
    return names.pop() if len(names) == 1 and None not in names else split


@dataclass
class Conversion:
    """What a converter writes into and reads from, opened by `start_conversion`."""

    final: Path  # OUT/<task>
    building: Path  # OUT/<task>.partial
    rows: Iterable[Record]
    split: str | None  # the split the rows belong to, as recorded in task.json


def start_conversion(
    records: str | Path | Iterable[Record],
    out_dir: str | Path,
    name: str,
    overwrite: bool,
    problems: list[Problem],
    *,
    split: str | None,
    media_sources: Iterable[str | Path] = (),
    several_folders: bool = False,
) -> Conversion:
    """The common opening of a converter: the rows (`records`: a record file or folder, or rows already read)
    and the folder to build in, which may not hold any source."""
    if isinstance(records, (str, Path)):
        label = split_label(records, split, several_folders)  # fails before any folder is made
        final, building = partial_folder(out_dir, name, overwrite, [*media_sources, records])
        return Conversion(final, building, read_records(records, problems, split, several_folders), label)
    final, building = partial_folder(out_dir, name, overwrite, media_sources)
    return Conversion(final, building, records, split)


def frames_folder(frames: str | Path, num_frames: int) -> Path:
    """The folder of a task's frame folders, checked with the frame count before any work."""
    if num_frames < 1:
        raise ConversionError(f"num_frames must be >= 1, got {num_frames}")
    root = Path(frames)
    if not root.is_dir():
        raise ConversionError(f"{root}: the frames folder does not exist")
    return root


def read_records(
    source: str | Path, problems: list[Problem], split: str | None = None, several_folders: bool = False
) -> Iterator[Record]:
    """Rows of every record file of `source` (of `split`, when the folder holds several), in order. A line or
    file that cannot be read is added to `problems` and skipped, so that the caller still reports every other
    defect. Parquet is read in batches, so memory stays bounded when a split carries its images inline."""
    for path in record_files(source, split, several_folders):
        if path.suffix == ".parquet":
            yield from _parquet_records(path, problems)
        elif path.suffix == ".jsonl":
            for line, obj in iter_jsonl(path, problems):
                yield Record(obj, str(path), line)
        else:
            try:
                rows = read_json(path)
            except DataError as exc:
                problems.extend(exc.problems)
                continue
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                problems.append(Problem(str(path), "expected a JSON list of objects"))
                continue
            for i, row in enumerate(rows, 1):
                yield Record(row, str(path), i)


def _parquet_records(path: Path, problems: list[Problem]) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        problems.append(Problem(str(path), f"not a readable Parquet file ({exc})"))
        return
    row = 0
    try:
        for batch in handle.iter_batches(batch_size=256):
            for obj in batch.to_pylist():
                row += 1
                yield Record(obj, str(path), row)
    except Exception as exc:  # a damaged page part-way through the file
        problems.append(Problem(str(path), f"unreadable Parquet data after row {row} ({exc})"))


def field_defect(data: dict, key: str, kinds: type | tuple[type, ...]) -> str | None:
    """What is wrong with `data[key]` for a field of type `kinds` (a bool is never a number), or None."""
    value = data.get(key)
    if value is not None and isinstance(value, kinds) and not isinstance(value, bool):
        return None
    names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
    return "missing" if key not in data else f"must be {names}, got {type(value).__name__}"


def require(
    record: Record,
    key: str,
    kinds: type | tuple[type, ...],
    problems: list[Problem],
    record_id: str | None = None,
    optional: bool = False,
) -> Any:
    """`record.data[key]` when it has one of `kinds`; otherwise a problem is added and None returned."""
    if record.data.get(key) is None and optional:
        return None
    defect = field_defect(record.data, key, kinds)
    if defect is not None:
        problems.append(record.problem(defect, key, record_id))
        return None
    return record.data[key]


def identifier(record: Record, key: str, problems: list[Problem]) -> str | None:
    """An id field (string or integer, as hub datasets store them) as a non-empty string, or None after adding a
    problem."""
    value = require(record, key, (str, int), problems)
    if value is None:
        return None
    if str(value) == "":
        problems.append(record.problem("must not be empty", key))
        return None
    return str(value)


# ------------------------------------------------------------------------------------------------ media


def safe_relative(path: str) -> PurePosixPath | None:
    """`path` as a relative path that stays below its base, or None (absolute, `..`, empty)."""
    rel = PurePosixPath(path.replace("\\", "/"))
    if not path or rel.is_absolute() or any(part == ".." for part in rel.parts) or not rel.parts:
        return None
    return rel


def source_file(root: Path, path: str) -> tuple[Path | None, str | None]:
    """(the real file that `path` names below `root`, None) or (None, why not). Symlinks are followed, but the
    file they lead to must still lie below `root`: a download must not make embedrl copy other files of this
    machine into a task folder."""
    rel = safe_relative(path)
    if rel is None:
        return None, f"{path!r} must be a relative path inside {root}"
    try:
        real = (root / rel).resolve(strict=True)
        inside = real.is_relative_to(root.resolve(strict=True))
        is_file = real.is_file()
    except FileNotFoundError:
        return None, f"{root / rel} does not exist"
    except (OSError, RuntimeError, ValueError) as exc:  # too long a name, a symlink loop, a NUL byte
        return (
            None,
            f"{root / rel}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else 'unreadable'}",
        )
    if not inside:
        return None, (
            f"{root / rel} leads outside {root} (a symlink to {real}); refused: place the files "
            "themselves in the folder (a hub download into --local-dir does)"
        )
    if not is_file:
        return None, f"{root / rel} {special_file_problem(real) or 'is not a regular file'}"
    return real, None


def place_file(source: Path, task_root: Path, rel: PurePosixPath) -> str:
    """Put the file `source` (a real file, see `source_file`) at `task_root/rel`, hard-linked or copied, and
    return `rel` as written in the task files. What a rerun of an interrupted conversion finds there is kept only
    if it is the same file or has the same bytes."""
    target = task_root / rel
    if (
        target.is_file()
        and not target.is_symlink()
        and (os.path.samefile(source, target) or filecmp.cmp(source, target, shallow=False))
    ):
        return rel.as_posix()
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return rel.as_posix()


def place_bytes(data: bytes, task_root: Path, rel: PurePosixPath) -> str:
    target = task_root / rel
    if (
        target.is_file()
        and not target.is_symlink()
        and target.stat().st_size == len(data)
        and target.read_bytes() == data
    ):
        return rel.as_posix()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return rel.as_posix()


# What the official loaders read as video frames.
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def place_media(
    record: Record,
    field: str,
    root: Path,
    path: str,
    building: Path,
    target: PurePosixPath,
    problems: list[Problem],
    record_id: str | None,
) -> str | None:
    """Place the file `path` (below `root`) at `target` in the task folder being built; None after adding a
    problem that names the row and field."""
    source, why = source_file(root, path)
    if source is None:
        problems.append(record.problem(why, field, record_id))
        return None
    return place_file(source, building, target)


def place_frames(
    record: Record,
    field: str,
    root: Path,
    folder: PurePosixPath,
    building: Path,
    target: PurePosixPath,
    num_frames: int,
    problems: list[Problem],
    record_id: str | None,
    sort_key: Any = None,
) -> list[str] | None:
    """The frames of the folder `folder` (below `root`) as a video: its .jpg/.jpeg/.png files in name order
    (`sort_key`: natural order for MMEB-V2, plain for UVRB, as each official loader), sampled with `linspace` to
    `num_frames` (all of them when there are fewer) and placed under `target`. None after adding a problem."""
    path = root / folder
    try:
        names = sorted((p.name for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=sort_key)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        problems.append(record.problem(f"{path}: no frame folder ({reason})", field, record_id))
        return None
    if not names:
        problems.append(record.problem(f"{path}: no .jpg/.jpeg/.png frames", field, record_id))
        return None
    placed = []
    for name in (names[i] for i in sample_indices(len(names), num_frames)):
        rel = place_media(
            record, field, root, f"{folder.as_posix()}/{name}", building, target / name, problems, record_id
        )
        if rel is None:
            return None
        placed.append(rel)
    return placed


def image_suffix(data: bytes | Path) -> str:
    """File suffix for an encoded image (bytes or a file), from its content (an inline hub image has no
    trustworthy name); "" when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(
            io.BytesIO(data) if isinstance(data, bytes) else data, formats=ALLOWED_IMAGE_FORMATS
        ) as image:
            kind = (image.format or "").lower()
    except (UnidentifiedImageError, OSError):
        return ""
    return {"jpeg": ".jpg", "mpo": ".jpg", "tiff": ".tif"}.get(kind, f".{kind}" if kind else "")


# ------------------------------------------------------------------------------------------- the folder


def partial_folder(
    out_dir: str | Path, name: str, overwrite: bool, sources: Iterable[str | Path] = ()
) -> tuple[Path, Path]:
    """(final folder, folder to build in). A finished folder is replaced only with `overwrite`, and only when
    it is a task folder that holds none of the `sources` (the download being converted)."""
    final = Path(out_dir) / name
    building = final.with_name(final.name + ".partial")
    try:
        real_final = final.resolve()
        for source in sources:
            real = Path(source).resolve()
            if (
                real == real_final
                or real.is_relative_to(real_final)
                or real == building.resolve()
                or real.is_relative_to(building.resolve())
            ):
                raise ConversionError(
                    f"{final} would hold the converted task, but the source {source} is in it; "
                    "write to another --out"
                )
        if final.is_symlink() or (final.exists() and not final.is_dir()):
            raise ConversionError(f"{final} exists and is not a folder; remove it or use another --out")
        if final.exists():
            if not overwrite:
                raise ConversionError(f"{final} exists; pass --overwrite to replace it")
            if not (final / TASK_FILE).is_file():
                raise ConversionError(
                    f"{final} exists but is not a task folder (no {TASK_FILE}); --overwrite only "
                    "replaces task folders: remove it yourself or use another --out"
                )
        if building.is_symlink() or (building.exists() and not building.is_dir()):
            raise ConversionError(f"{building} exists and is not a folder; remove it")
        building.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConversionError(f"{final}: cannot prepare the output folder ({exc})") from None
    return final, building


def finish(task: Task, building: Path, final: Path) -> Path:
    """Write the task files into `building`, validate the whole folder (media included) and move it to
    `final`. A folder that does not validate stays at `building`, with every problem raised."""
    _drop_unused_media(task, building)
    write_task(task, building)
    read_task(building)  # raises DataError listing every problem
    try:
        if final.exists():
            shutil.rmtree(final)
        os.replace(building, final)
    except OSError as exc:
        raise ConversionError(
            f"{final}: cannot move the finished task folder into place ({exc}); it is complete in {building}"
        ) from None
    task.root = final
    return final


def _drop_unused_media(task: Task, building: Path) -> None:
    """Remove what an earlier attempt placed but this task does not use (other frames, another frame count)."""
    used = set()
    for item in (*task.queries, *task.candidates):
        used.update(str(m) for m in item.images)
        if item.video is not None:
            used.update(str(f) for f in item.video.frames or ())
            if item.video.path is not None:
                used.add(str(item.video.path))
    media = building / "media"
    if not media.is_dir():
        return
    for path in sorted(media.rglob("*"), reverse=True):  # files before the folders that hold them
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty
        elif path.relative_to(building).as_posix() not in used:
            path.unlink()


def dedupe_in_order(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
