"""Atomic writes and line-numbered JSONL reading.

Everything that runs long writes through these helpers: a crash leaves either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, Problem


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[io.IOBase]:
    """Open a temporary file next to `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    current = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(current)
    return current


# Read once, at import (single-threaded), so that threads writing files never race on the stand-in value.
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def file_sha256(path: str | Path, digest: Any = None) -> bytes:
    """SHA-256 of a file's bytes, read in 1 MiB chunks; with `digest`, the bytes are fed into it instead."""
    target = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            target.update(chunk)
    return target.digest()


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent, ensure_ascii=False, sort_keys=False)
        handle.write("\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Windows editors) is skipped
    except FileNotFoundError:
        raise DataError(Problem(str(path), "file not found")) from None
    except UnicodeDecodeError as exc:
        raise DataError(Problem(str(path), f"not UTF-8 text ({exc.reason})")) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            Problem(str(path), f"malformed JSON: {exc.msg} (column {exc.colno})", line=exc.lineno)
        ) from None


def iter_jsonl(path: str | Path, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; append a Problem for each bad line and go on.

    Reading continues after a bad line so that one run reports every defect of a file.
    """
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8-sig")  # -sig: a byte-order mark (Windows editors) is skipped
    except FileNotFoundError:
        problems.append(Problem(str(path), "file not found"))
        return
    with handle:
        lineno = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as exc:
                problems.append(Problem(str(path), f"not UTF-8 text ({exc.reason})", line=lineno + 1))
                return
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                problems.append(
                    Problem(str(path), f"malformed JSON: {exc.msg} (column {exc.colno})", line=lineno)
                )
                continue
            if not isinstance(obj, dict):
                problems.append(
                    Problem(str(path), f"expected a JSON object, got {type(obj).__name__}", line=lineno)
                )
                continue
            yield lineno, obj


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a whole JSONL file; raise DataError listing every malformed line."""
    problems: list[Problem] = []
    records = [obj for _, obj in iter_jsonl(path, problems)]
    if problems:
        raise DataError(problems)
    return records
