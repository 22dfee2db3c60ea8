"""bench_encode.py runs end to end (small sizes), so the script a GPU session relies on does not rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_encode.py"


def _table_rows(output: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in output.splitlines()
        if line.startswith("| ") and not line.startswith("| method") and not line.startswith("| items")
    ]


def test_cpu_comparison_prints_both_methods() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "20", "--rounds", "1", "--repeats", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _table_rows(out.stdout)
    assert [r[0] for r in rows] == ["naive loop (batch 1)", "encode() (batch 32)"]
    assert rows[0][-1] == "1.00x"
    assert len(rows[1][3].split(" / ")) == 2  # both warm passes listed
    # one paired ratio per pass (1 cold, 2 warm); the table's speed-ups are their medians
    paired = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("paired ")}
    assert set(paired) == {"cold", "warm"}
    for regime, column, count in (("cold", -2, 1), ("warm", -1, 2)):
        ratios = paired[regime].split(": ", 1)[1].split(";")[0].split(", ")
        assert len(ratios) == count and all(float(r) > 0 for r in ratios)
        assert f"median {rows[1][column]}" in paired[regime]


def test_model_shaped_run_on_cpu() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--shape",
            "small",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--text-items",
            "6",
            "--image-items",
            "3",
            "--text-batch",
            "4",
            "--image-batch",
            "2",
            "--image-side",
            "96",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _table_rows(out.stdout)
    assert [r[0] for r in rows] == ["text", "one image"]
    for row in rows:
        assert float(row[4]) > 0 and float(row[6]) > 0  # items/s, achieved TFLOP/s
