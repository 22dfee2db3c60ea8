"""Turn the raw value a model wrote for a cue into the T-CoT's clean tuple, reporting every change made.

Keywords become non-empty strings; boxes become ordered ``(x1, y1, x2, y2)`` clamped into 0–1000, whatever
nesting they came in; key frames become unique 1-based integers. What cannot be converted is dropped.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .types import COORDINATE_MAX, Box, TCoTProblem


def normalise_cue(key: str, value: Any, num_frames: int | None, problems: list[TCoTProblem]) -> tuple:
    """The clean value of cue `key`; frames above `num_frames` (when given) are dropped."""
    if key == "text_keywords":
        return _normalise_keywords(value, problems)
    if key == "bbox_2d":
        return _normalise_boxes(value, problems)
    return _normalise_frames(value, num_frames, problems)


def _normalise_keywords(value: Any, problems: list[TCoTProblem]) -> tuple[str, ...]:
    if value is None:
        problems.append(TCoTProblem("keywords_malformed", "text_keywords is null"))
        return ()
    if not isinstance(value, list):
        problems.append(TCoTProblem("cue_not_list", "text_keywords is not a list; taken as one keyword"))
        value = [value]
    keywords: list[str] = []
    for entry in value:
        if isinstance(entry, str):
            if entry.strip():
                keywords.append(entry.strip())
            else:
                problems.append(TCoTProblem("keywords_malformed", "a blank keyword was dropped"))
        elif isinstance(entry, (int, float)) and not isinstance(entry, bool) and math.isfinite(entry):
            keywords.append(str(entry))
            problems.append(TCoTProblem("keywords_malformed", f"keyword {entry!r} is a number; converted"))
        else:
            problems.append(
                TCoTProblem("keywords_malformed", f"a {type(entry).__name__} keyword was dropped")
            )
    return tuple(keywords)


def is_number(value: Any) -> bool:
    """An int or a float, but not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coordinate(value: Any, problems: list[TCoTProblem]) -> int | float | None:
    if isinstance(value, str):
        try:
            converted: int | float = int(value.strip())
        except ValueError:
            try:
                converted = float(value.strip())
            except ValueError:
                return None
        problems.append(TCoTProblem("bbox_malformed", f"coordinate {value!r} was a string; converted"))
        value = converted
    if not is_number(value) or not math.isfinite(value):
        return None
    return value


def looks_like_box(value: Any) -> bool:
    """Four entries that are numbers or strings: one box, even if a coordinate still needs converting."""
    return (
        isinstance(value, list) and len(value) == 4 and all(is_number(v) or isinstance(v, str) for v in value)
    )


def _collect_boxes(value: Any, depth: int, out: list, problems: list[TCoTProblem]) -> None:
    if looks_like_box(value):
        if depth > 1:
            problems.append(TCoTProblem("bbox_malformed", "an over-nested box was unwrapped"))
        out.append(value)
    elif isinstance(value, dict) and "bbox_2d" in value and depth < 4:
        _collect_boxes(value["bbox_2d"], depth, out, problems)
    elif isinstance(value, list) and depth < 4 and value and not any(is_number(v) for v in value):
        for entry in value:
            _collect_boxes(entry, depth + 1, out, problems)
    else:
        shown = json.dumps(value, default=str)[:60]
        problems.append(TCoTProblem("bbox_malformed", f"{shown} is not a box of four numbers; dropped"))


def _normalise_boxes(value: Any, problems: list[TCoTProblem]) -> tuple[Box, ...]:
    if value is None:
        problems.append(TCoTProblem("bbox_malformed", "bbox_2d is null"))
        return ()
    if not isinstance(value, list):
        problems.append(TCoTProblem("bbox_malformed", f"bbox_2d is a {type(value).__name__}, not a list"))
        return ()
    if not value:
        return ()
    raw_boxes: list[list] = []
    if looks_like_box(value):
        raw_boxes.append(value)  # a single flat box, which the prompts allow
    else:
        for entry in value:
            _collect_boxes(entry, 1, raw_boxes, problems)
    boxes: list[Box] = []
    for raw in raw_boxes:
        coords = [_coordinate(v, problems) for v in raw]
        if any(c is None for c in coords):
            problems.append(
                TCoTProblem("bbox_malformed", f"box {raw!r} has a non-finite or non-numeric value")
            )
            continue
        x1, y1, x2, y2 = coords  # type: ignore[misc]
        if x1 > x2 or y1 > y2:
            problems.append(TCoTProblem("bbox_swapped", f"box {raw!r} had its corners reordered"))
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        clamped = tuple(_clamp(c) for c in (x1, y1, x2, y2))
        if clamped != (x1, y1, x2, y2):
            problems.append(TCoTProblem("bbox_clamped", f"box {raw!r} was clamped into 0-{COORDINATE_MAX}"))
        boxes.append(clamped)  # type: ignore[arg-type]
    return tuple(boxes)


def _clamp(value: int | float) -> int | float:
    if isinstance(value, int):
        return min(max(value, 0), COORDINATE_MAX)
    return min(max(value, 0.0), float(COORDINATE_MAX))


_FRAME_STRING = re.compile(r"\s*(?:(?:frame|f)\s*[_#-]?|#)?\s*(\d{1,9})\s*", re.IGNORECASE)


def _frame_index(value: Any, problems: list[TCoTProblem]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        problems.append(TCoTProblem("frame_not_int", f"frame {value!r} is a float; converted"))
        return int(value)
    if isinstance(value, str):
        match = _FRAME_STRING.fullmatch(value)
        if match:
            problems.append(TCoTProblem("frame_not_int", f"frame {value!r} is a string; converted"))
            return int(match.group(1))
    shown = json.dumps(value, default=str)[:40]
    problems.append(TCoTProblem("frame_not_int", f"frame {shown} is not an integer; dropped"))
    return None


def _normalise_frames(value: Any, num_frames: int | None, problems: list[TCoTProblem]) -> tuple[int, ...]:
    if value is None:
        problems.append(TCoTProblem("frame_not_int", "key_frames is null"))
        return ()
    if not isinstance(value, list):
        problems.append(TCoTProblem("cue_not_list", "key_frames is not a list; wrapped"))
        value = [value]
    frames: list[int] = []
    for entry in value:
        index = _frame_index(entry, problems)
        if index is None:
            continue
        if index < 1 or (num_frames is not None and index > num_frames):
            allowed = "below 1" if num_frames is None else f"outside 1..{num_frames}"
            problems.append(TCoTProblem("frame_out_of_range", f"frame {index} is {allowed}; dropped"))
        elif index in frames:
            problems.append(TCoTProblem("frame_duplicate", f"frame {index} is repeated; dropped"))
        else:
            frames.append(index)
    return tuple(frames)
