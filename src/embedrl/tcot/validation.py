"""Is a T-CoT fit for its input? `validate` checks a parsed T-CoT's cue; `format_ok` checks raw text for the
format reward."""

from __future__ import annotations

import math
import re
from typing import Any

from .cue_values import is_number
from .parsing import parse
from .types import (
    COORDINATE_MAX,
    CUE_FOR_MODALITY,
    DEFAULT_NUM_FRAMES,
    FORMAT_BREAKING_CODES,
    Modality,
    TCoT,
    TCoTProblem,
)


def validate(tcot: TCoT, modality: Modality, num_frames: int | None = None) -> list[TCoTProblem]:
    """Check that `tcot` carries the cue `modality` needs and that every cue entry is valid.

    text → a non-empty list of non-empty ``text_keywords``; image → a non-empty list of ``bbox_2d`` boxes, each
    inside 0–1000, ordered and with positive area; video → ``key_frames`` within 1..num_frames (default 8),
    without repeats. Returns an empty list when the T-CoT is valid for the modality.
    """
    if modality not in CUE_FOR_MODALITY:
        raise ValueError(f"modality must be one of {sorted(CUE_FOR_MODALITY)}, got {modality!r}")
    expected = CUE_FOR_MODALITY[modality]
    kind = tcot.cue_kind
    if kind is None:
        return [TCoTProblem("no_cue", f"a {modality} input needs a {expected} cue")]
    if kind != expected:
        return [TCoTProblem("wrong_cue", f"a {modality} input needs {expected}, got {kind}")]
    values = tcot.cue_value or ()
    if not values:
        return [TCoTProblem("cue_empty", f"{kind} is empty")]
    if kind == "text_keywords":
        return [
            TCoTProblem("keywords_malformed", f"keyword {i + 1} is not a non-empty string")
            for i, kw in enumerate(values)
            if not isinstance(kw, str) or not kw.strip()
        ]
    if kind == "bbox_2d":
        return [p for i, box in enumerate(values) for p in _box_problems(i, box)]
    limit = DEFAULT_NUM_FRAMES if num_frames is None else num_frames
    problems: list[TCoTProblem] = []
    seen: set[int] = set()
    for index in values:
        if not isinstance(index, int) or isinstance(index, bool):
            problems.append(TCoTProblem("frame_not_int", f"frame {index!r} is not an integer"))
        elif not 1 <= index <= limit:
            problems.append(TCoTProblem("frame_out_of_range", f"frame {index} is outside 1..{limit}"))
        elif index in seen:
            problems.append(TCoTProblem("frame_duplicate", f"frame {index} is repeated"))
        else:
            seen.add(index)
    return problems


def _box_problems(i: int, box: Any) -> list[TCoTProblem]:
    if not isinstance(box, tuple) or len(box) != 4 or not all(is_number(c) and math.isfinite(c) for c in box):
        return [TCoTProblem("bbox_malformed", f"box {i + 1} is not four finite numbers")]
    x1, y1, x2, y2 = box
    if any(c < 0 or c > COORDINATE_MAX for c in box):
        return [TCoTProblem("bbox_out_of_range", f"box {i + 1} {list(box)} leaves 0-{COORDINATE_MAX}")]
    if x1 > x2 or y1 > y2:
        return [TCoTProblem("bbox_swapped", f"box {i + 1} {list(box)} has x1 > x2 or y1 > y2")]
    if x1 == x2 or y1 == y2:
        return [TCoTProblem("bbox_degenerate", f"box {i + 1} {list(box)} has zero width or height")]
    return []


# The released code's format check: the three tag pairs in order anywhere in the text (DOTALL).
OFFICIAL_TAG_PATTERN = re.compile(
    r"<thinking>.*?</thinking>.*?<rethink>.*?</rethink>.*?<answer>.*?</answer>", re.DOTALL
)


def format_ok(
    text: str, modality: Modality, num_frames: int = DEFAULT_NUM_FRAMES, strict_tags_only: bool = False
) -> bool:
    """The format check behind the format reward.

    Paper version (default): the official tag pattern matches, the tag structure has no defect, and the cue the
    modality needs is present and valid as written (nothing clamped, reordered, dropped or merged; see
    `FORMAT_BREAKING_CODES`). With ``strict_tags_only=True`` only the official tag pattern is checked, as
    in the released code.
    """
    if not isinstance(text, str) or not OFFICIAL_TAG_PATTERN.search(text):
        return False
    if strict_tags_only:
        return True
    result = parse(text, num_frames=num_frames)
    if result.tcot is None or not result.tags_in_order:
        return False
    if any(code in FORMAT_BREAKING_CODES for code in result.codes):
        return False
    return not validate(result.tcot, modality, num_frames)
