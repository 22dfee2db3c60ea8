"""Checks every command runs before it does any work: argument types, and output paths that must neither
replace an input nor be unwritable. A long encode or training run must not find these out at its end."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# ------------------------------------------------------------------------------------ argparse types


def _number(text: str, kind: type, wanted: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):  # float() reads nan and inf
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type of a batch size, a step count, a model size and the like."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def port(text: str) -> int:
    """argparse type of a TCP port; 0 lets the system pick a free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {value}")
    return value


def device(text: str) -> str:
    """argparse type of --device: auto, cpu, cuda, cuda:N or mps, and only one this machine has."""
    if text in ("auto", "cpu"):
        return text
    kind, _, index = text.partition(":")
    if kind not in ("cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    import torch  # only here: `--help` and the other flags stay fast

    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("mps: this machine has no Apple GPU (MPS); use cpu or auto")
        return text
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here ({why}); use cpu or auto")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise argparse.ArgumentTypeError(
            f"{text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return text


def checkpoint(text: str) -> str:
    """argparse type of a checkpoint (local folder or hub id). A local folder's config.json must be a JSON
    object: found now rather than as a parser traceback once the other inputs have been read. A path that does
    not exist is left to the loader, which also knows hub ids."""
    folder = Path(text).expanduser() if text.startswith("~") else Path(text)
    config = folder / "config.json"
    if not (folder.is_dir() and config.is_file()):
        return text
    try:
        loaded = json.loads(config.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{config}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{config}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(loaded, dict):
        raise argparse.ArgumentTypeError(f"{config}: expected a JSON object, got {type(loaded).__name__}")
    return text


# ------------------------------------------------------------------------------------------ outputs

FILE = "file"
FOLDER = "folder"  # the command's own folder: it may replace what is in it, so it must hold no input
INTO = "into"  # a folder the command adds its own named entries to (a cache, OUT/<task>/ of convert)


@dataclass(frozen=True)
class Output:
    flag: str  # as the user knows it: "--out", or "--out (its failures file)"
    path: Path
    kind: str = FILE


# (flag, path or paths or None); the flag is "" for a positional argument
Inputs = Iterable[tuple[str, str | Path | Iterable[str | Path] | None]]


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _inside(child: str, parent: str) -> bool:
    return child != parent and os.path.commonpath([child, parent]) == parent


def _existing_inputs(inputs: Inputs) -> list[tuple[str, Path]]:
    """(flag, path) of every input that exists: one that does not cannot be overwritten (and a hub id such as
    Qwen/Qwen3-VL-2B-Instruct is not a local path)."""
    found = []
    for flag, value in inputs:
        if value is None:
            continue
        for path in [value] if isinstance(value, (str, Path)) else value:
            if os.path.lexists(os.path.expanduser(str(path))):
                found.append((flag, Path(path)))
    return found


def check_outputs(outputs: Iterable[Output], inputs: Inputs = ()) -> None:
    """Refuse, with a ConfigError naming both flags, an output that is an input (resolved: symlinks, `./x`
    and `x` alike), lies inside an input folder (a task, a checkpoint), or is the command's own folder and
    holds an input; then refuse an output location that cannot be written."""
    outputs = list(outputs)
    existing = _existing_inputs(inputs)
    for out in outputs:
        target = _real(out.path)
        for flag, path in existing:
            source = _real(path)
            named = f"{flag} {path}" if flag else str(path)
            if target == source or (os.path.exists(target) and os.path.samefile(target, source)):
                raise ConfigError(
                    f"{out.flag} {out.path} is the input {named}: writing it would destroy the "
                    "input; choose another output path"
                )
            if os.path.isdir(source) and _inside(target, source):
                raise ConfigError(
                    f"{out.flag} {out.path} lies inside the input folder {named}; write outside it"
                )
            if out.kind == FOLDER and _inside(source, target):
                raise ConfigError(
                    f"{out.flag} {out.path} holds the input {named}; give an output folder that "
                    "holds none of the inputs"
                )
    for i, a in enumerate(outputs):
        for b in outputs[i + 1 :]:
            if _real(a.path) == _real(b.path):
                raise ConfigError(
                    f"{a.flag} and {b.flag} are the same path {a.path}; give two different paths"
                )
    checked: set[str] = set()
    for out in outputs:
        _check_writable(out, checked)


def _check_writable(out: Output, checked: set[str]) -> None:
    """The output can be created: its nearest existing folder is a folder and writable. Nothing is created
    here, so a refused command leaves no empty folders behind."""
    path = Path(os.path.expanduser(str(out.path)))
    if out.kind == FILE and path.is_dir():
        raise ConfigError(f"{out.flag} is a directory: {out.path}; give a file path")
    if out.kind != FILE and path.exists() and not path.is_dir():
        raise ConfigError(f"{out.flag} {out.path}: cannot prepare the output folder: a file is in the way")
    folder = path if out.kind != FILE else path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    real = _real(folder)
    if real in checked:
        return
    if not os.path.isdir(real):
        raise ConfigError(
            f"{out.flag} {out.path}: cannot prepare the output folder: {folder} is not a folder"
        )
    if not os.access(real, os.W_OK | os.X_OK):
        raise ConfigError(f"{out.flag} {out.path}: folder {folder} is not writable")
    try:  # access() trusts mode bits; a read-only mount or a full quota only shows when a file is made
        with tempfile.TemporaryFile(dir=real, prefix=".embedrl-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{out.flag} {out.path}: cannot write in folder {folder} ({exc.strerror or exc})"
        ) from None
    checked.add(real)


def require_empty_or(folder: str | Path, flag: str, marker: str, what: str) -> None:
    """Refuse an existing folder that is neither empty nor holds `marker` (the file that says an earlier run
    of this command built it and may replace it)."""
    path = Path(folder)
    if not path.is_dir() or (path / marker).exists() or not any(path.iterdir()):
        return
    if (path / "config.json").is_file():
        raise ConfigError(
            f"{flag} {folder} is a checkpoint that {what} did not build (no {marker}); refusing "
            "to replace it, give an empty or new folder"
        )
    raise ConfigError(
        f"{flag} {folder} is not empty and is not a checkpoint {what} built; give an empty or new folder"
    )


# --------------------------------------------------------------------------------- at write time

# Errors of the file system the output is on, not of what is being written: named with the output.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A full disk (or quota, or a read-only remount) met while writing under `path` is reported with
    `path`: OSErrors from write() and fsync() carry no file name of their own."""
    try:
        yield
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS and not exc.filename:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise
