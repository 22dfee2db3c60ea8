"""fileio: atomic writes keep the permissions a plain write would have; JSON readers accept a byte-order mark."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from embedrl import fileio
from embedrl.fileio import read_json, write_json


def test_atomic_writes_honour_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    saved, fileio._UMASK = fileio._UMASK, 0o022  # read once per process at import; this test sets its own
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        plain = tmp_path / "b.json"
        plain.write_text("{}")
    finally:
        os.umask(previous)
        fileio._UMASK = saved
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_read_json_skips_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"task": "t"}).encode())
    assert read_json(path) == {"task": "t"}


def test_reading_the_umask_leaves_it_as_it_was() -> None:
    previous = os.umask(0o027)
    try:
        assert fileio._read_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still in force after the read
    finally:
        os.umask(previous)
