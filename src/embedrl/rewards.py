"""Rewards of Embedder-Guided RL (paper Eqs. 3-5 and 7), weighted as the paper does by default.

Pure functions over completions, vectors and judge answers: the format reward, the in-batch outcome reward,
the listwise-judge process reward, and their weighting. The training wiring is in `train/egrl.py`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .tcot import CUE_FOR_MODALITY, DEFAULT_NUM_FRAMES, format_ok

# ==================================================================================== format reward


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or a TRL conversational completion (a list of messages).

    For messages, the last one's content is used; a content list contributes its text parts.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else ""
        if isinstance(content, str):
            return content
        if isinstance(content, (list, tuple)):
            return "".join(
                part.get("text", "")
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
    return ""


def format_reward(
    completions: Sequence[Any],
    modalities: Sequence[str],
    *,
    num_frames: int | Sequence[int] = DEFAULT_NUM_FRAMES,
    strict_tags_only: bool = False,
) -> list[float]:
    """1.0 per completion whose three tags come in order and whose cue fits its input modality, else 0.0.

    This is the paper's R_format: the cue that `modalities[i]` needs (text_keywords, bbox_2d or key_frames) must
    be present and valid as written (`embedrl.tcot.format_ok`). ``strict_tags_only=True`` checks only the tag
    pattern, as the official code does. `num_frames` is the number of sampled frames of each video input (one
    value for all, or one per completion).
    """
    if len(completions) != len(modalities):
        raise ValueError(f"{len(completions)} completions but {len(modalities)} modalities")
    if isinstance(num_frames, numbers.Integral):  # numpy integers too
        num_frames = int(num_frames)
        frames_per_item: Sequence[int] = [num_frames] * len(completions)
    else:
        frames_per_item = list(num_frames)
        if len(frames_per_item) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(frames_per_item)} num_frames values")
    unknown = sorted({m for m in modalities if m not in CUE_FOR_MODALITY})
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; expected {sorted(CUE_FOR_MODALITY)}")
    return [
        1.0 if format_ok(completion_text(c), m, n, strict_tags_only=strict_tags_only) else 0.0
        for c, m, n in zip(completions, modalities, frames_per_item)
    ]


# =================================================================================== outcome reward


def softmax_weighted_mean(values: np.ndarray, tau: float) -> float:
    """E_τ[x] = Σ softmax(x/τ)·x: a soft maximum that leans on the hardest negatives (τ → 0: max; τ → ∞: mean)."""
    if values.size == 0:
        return 0.0
    z = values / tau
    w = np.exp(z - z.max())
    return float((w * values).sum() / w.sum())


def _object_array(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array of group ids, whatever they are: np.asarray would turn tuple ids into a 2-D array."""
    values = list(values)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def outcome_rewards(
    similarity: np.ndarray,
    row_groups: Sequence[Any],
    col_groups: Sequence[Any],
    *,
    tau: float = 0.5,
    acc_mode: str = "all",
    weighted_negatives: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcome reward of every row rollout against the column rollouts (paper Eq. 3).

    For row i of pair k: positives P = the columns of pair k, negatives N = all other columns;
    `R(i) = Acc(i) · (mean_{j∈P} S_ij − E_τ[S_{i,N}])` (`weighted_negatives=False`: a plain mean over N, the
    "w/o weighted negative" ablation). Acc ranks row i's columns by (−score, column index), a stable order:
    `acc_mode='all'` (paper) is 1 only if every positive is in the top |P|; `'fraction'` (official code) is the
    fraction of positives in the top |P|.

    Degenerate batches stay defined: with no negatives (one pair) there is no retrieval to reward, so R = 0
    and Acc = 1; a row with no positive column gets R = 0 and Acc = 0.
    Returns (rewards, acc, margin) per row. Call with `similarity.T` and swapped groups for the columns.
    """
    if acc_mode not in ("all", "fraction"):
        raise ValueError(f"acc_mode must be 'all' or 'fraction', got {acc_mode!r}")
    if tau <= 0:
        raise ValueError("tau must be > 0")
    sim = np.asarray(similarity, dtype=np.float64)
    rows, cols = _object_array(row_groups), _object_array(col_groups)
    if sim.shape != (len(rows), len(cols)):
        raise ValueError(f"similarity is {sim.shape} but there are {len(rows)} rows and {len(cols)} columns")
    if not np.isfinite(sim).all():
        raise ValueError("similarity contains NaN or inf (a failed embedding must not be scored)")
    rewards, accs, margins = np.zeros(len(rows)), np.zeros(len(rows)), np.zeros(len(rows))
    for i, group in enumerate(rows):
        positive = np.fromiter((c == group for c in cols), dtype=bool, count=len(cols))
        n_pos = int(positive.sum())
        if n_pos == 0:
            continue
        if n_pos == len(cols):
            accs[i] = 1.0
            continue
        negatives = sim[i, ~positive]
        negative_term = (
            softmax_weighted_mean(negatives, tau) if weighted_negatives else float(negatives.mean())
        )
        margins[i] = float(sim[i, positive].mean()) - negative_term
        order = np.lexsort((np.arange(len(cols)), -sim[i]))  # by score desc, then column index
        hits = int(positive[order[:n_pos]].sum())
        accs[i] = float(hits == n_pos) if acc_mode == "all" else hits / n_pos
        rewards[i] = accs[i] * margins[i]
    return rewards, accs, margins


# =================================================================================== process reward


def judge_candidates(
    similarity_row: np.ndarray,
    col_groups: Sequence[Any],
    anchor_group: Any,
    *,
    top_k: int = 4,
    shuffle: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[list[int], set[int]]:
    """Columns shown to the listwise judge for one anchor rollout, and which display positions are positive.

    Candidates: every positive column (the anchor pair's rollouts of the other side) and, for each of the
    `top_k` hardest other pairs (ranked by their best similarity to the anchor), that pair's most similar
    column. Shuffled (positions of positives are then random) unless `shuffle=False`, which lists positives
    first as the official code does. Returns (column index per display position, 0-based positive positions).
    """
    groups = _object_array(col_groups)
    positives = [j for j, g in enumerate(groups) if g == anchor_group]
    best_by_group: dict[Any, int] = {}
    for j in np.argsort(-similarity_row, kind="stable"):
        g = groups[j]
        if g != anchor_group and g not in best_by_group:
            best_by_group[g] = int(j)
    hardest = list(best_by_group.values())[:top_k]
    columns = positives + hardest
    if shuffle:
        rng = rng or np.random.default_rng()
        columns = [columns[i] for i in rng.permutation(len(columns))]
    positive_positions = {pos for pos, j in enumerate(columns) if j in set(positives)}
    return columns, positive_positions


def process_reward_from_answer(choice: int | None, positive_positions: set[int]) -> float:
    """1.0 when the judge's 1-based `choice` is a positive candidate; 0.0 when wrong or unparsable (None)."""
    if choice is None:
        return 0.0
    return 1.0 if (choice - 1) in positive_positions else 0.0


# =================================================================================== weighting


REWARD_PRESETS: dict[str, dict[str, float]] = {
    # Paper App. B.2: R = 0.05·format + 0.8·process + 0.2·outcome.
    "paper": {"format": 0.05, "process": 0.8, "outcome": 0.2, "outcome_scale": 1.0},
    # The released code swaps the roles and halves the outcome term.
    "official-code": {"format": 0.05, "process": 0.2, "outcome": 0.8, "outcome_scale": 0.5},
}


def total_reward(
    format_r: Sequence[float],
    process_r: Sequence[float],
    outcome_r: Sequence[float],
    weights: dict[str, float],
) -> np.ndarray:
    """Weighted sum of the three terms, per rollout."""
    return (
        weights["format"] * np.asarray(format_r, dtype=float)
        + weights["process"] * np.asarray(process_r, dtype=float)
        + weights["outcome"] * weights.get("outcome_scale", 1.0) * np.asarray(outcome_r, dtype=float)
    )
