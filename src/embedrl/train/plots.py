"""What a training run leaves beside its checkpoints: the log history, a run record and curve PNGs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..fileio import write_json


def plot_training_curves(
    history: Sequence[dict], out: str | Path, keys: Sequence[str], title: str = ""
) -> Path | None:
    """One panel per logged key that appears in `history` (HF Trainer `log_history` entries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [(h["step"], h[k]) for h in history if k in h and "step" in h] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 60 else None, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def write_run_outputs(
    out: Path,
    history: list[dict],
    record: dict[str, Any],
    config: Any,
    plot_file: str | None,
    plot_keys: Sequence[str],
    title: str,
) -> None:
    """log_history.json, embedrl_training.json (the record plus every JSON-able config field) and a curve PNG."""
    write_json(out / "log_history.json", history, indent=1)
    settings = {k: v for k, v in asdict(config).items() if _jsonable(v)}
    write_json(out / "embedrl_training.json", {**record, "config": settings}, indent=1)
    if plot_file:
        plot_training_curves(history, out / plot_file, plot_keys, title=title)
