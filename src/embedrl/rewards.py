"""Rewards of Embedder-Guided RL (method.md §4.2, decisions §11a).

Pure functions over completions, vectors and judge answers. This file starts with the format reward; the
outcome and process rewards live further down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
                part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
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
    if isinstance(num_frames, int):
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
