"""Atomic writes and line-numbered JSONL reading.

Everything that runs long writes through these helpers: a crash leaves either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import codecs
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


def _lines(handle: io.BufferedReader) -> Iterator[bytes]:
    """The lines of a binary file without their endings, split where text mode splits them (LF, CR LF and a
    lone CR) so that line numbers stay those an editor shows. No byte of a UTF-8 multi-byte character is LF
    or CR, so splitting before decoding never cuts a valid character."""
    for raw in handle:
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if b"\r" in raw:
            yield from raw.split(b"\r")
        else:
            yield raw


def iter_jsonl(path: str | Path, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; append a Problem for each bad line and go on.

    Reading continues after a bad line so that one run reports every defect of a file. Lines are decoded one
    by one: a line that is not UTF-8 (a Latin-1 export, a damaged sector) is a problem of that line only.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        problems.append(Problem(str(path), "file not found"))
        return
    except OSError as exc:  # a folder or an unreadable file: one problem, not a traceback
        problems.append(Problem(str(path), f"cannot read ({exc.strerror or exc})"))
        return
    with handle:
        for lineno, raw in enumerate(_lines(handle), 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # Windows editors start files with one
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                # everything before the first bad byte decodes, so the column counts characters like JSON's
                column = len(raw[: exc.start].decode("utf-8")) + 1
                problems.append(
                    Problem(
                        str(path),
                        f"not UTF-8 text ({exc.reason} at column {column}); save the file as UTF-8",
                        line=lineno,
                    )
                )
                continue
            if not line.strip():
                continue
            if line.startswith("\ufeff"):  # json's own message ("decode using utf-8-sig") is for programmers
                problems.append(
                    Problem(
                        str(path),
                        "byte-order mark inside the file (were files pasted together?); remove it",
                        line=lineno,
                    )
                )
                continue
            nul = line.find("\0")
            if nul >= 0:  # JSON never holds a raw NUL; "Expecting value" would hide what is wrong
                problems.append(
                    Problem(
                        str(path),
                        f"NUL byte at column {nul + 1} (binary data, or a file damaged by a crash)",
                        line=lineno,
                    )
                )
                continue
            try:
                obj = json.loads(line)
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
