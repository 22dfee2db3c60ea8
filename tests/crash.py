"""Killing a real `embedrl` process half-way, for the crash-and-resume tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def embedrl_executable() -> str:
    """The venv's `embedrl` console script, as a user runs it."""
    beside = Path(sys.executable).parent / "embedrl"
    return str(beside) if beside.exists() else shutil.which("embedrl") or "embedrl"


def sigkill_when(command: Sequence[str], ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Start `command`, SIGKILL it as soon as `ready()` holds, and check that it was still running then (so the
    kill really landed half-way). Its stderr goes to a file (a pipe nobody reads could fill and stall it) and
    is shown if it ends early."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL, stderr=stderr)

    def said() -> str:
        stderr.seek(0)
        return stderr.read()[-4000:]

    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"{what} ended before it could be killed half-way: {said()}"
            assert time.monotonic() < deadline, f"{what}: not ready to be killed after {timeout:.0f} s"
            time.sleep(0.01)
        assert proc.poll() is None, f"{what} ended before it could be killed half-way"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()
