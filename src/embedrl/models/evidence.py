"""How a T-CoT becomes Embedder input: the text pieces, the crops and the keyframes.

This is the reading of the official Embed-RL evaluation code, which the released checkpoints were trained and
evaluated with:

1. The first ``<thinking>…</thinking>`` block is kept **verbatim** (line breaks and JSON spacing included) and
   written as ``<thinking>…</thinking>\\n``; everything after ``</thinking>`` is stripped and appended right
   after the evidence images; text before ``<thinking>`` is dropped.
2. The cue is the first flat JSON object (``{…}`` without nested braces) inside the thinking block, read with a
   strict JSON parser. With no thinking block, no object, or an object that does not parse, the whole T-CoT is
   appended as one plain text piece, with no crops and no keyframes.
3. ``bbox_2d`` boxes are 0–1000 coordinates of the item's first image: scaled as ``int(v·W/1000)`` and
   ``int(v·H/1000)`` (truncated), clamped to the image, kept when both sides are at least 10 px and the aspect
   ratio is at most 50, and cut from the original image. ``key_frames`` (only when there is no ``bbox_2d``)
   select frames of a multi-frame item.

`EvidenceRules` holds what this project deliberately reads differently; the presets name the combinations:

- ``official``: the official code exactly, bugs included: ``key_frames`` values are 0-based positions although
  the Reasoner prompts ask for 1-based numbers, so each value selects the *next* frame and the last frame can
  never be chosen. Use it to reproduce the published numbers.
- ``paper`` (the default): as ``official``, but ``key_frames`` are 1-based, as the prompts (and the paper) say.
- ``embedrl``: 1-based keyframes, a cue JSON that the strict parser refuses is repaired by the lenient T-CoT
  reader (single quotes, trailing commas, …), at most 4 crops and 8 keyframes, repeated boxes and frames dropped.

In every preset a single flat box ``[x1, y1, x2, y2]`` is read as one box (the official code raises a
``TypeError`` on it, so there is no official behaviour to keep), and an entry that the official code would crash
on (a coordinate or frame index that is not a number) is dropped with a note.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import ConfigError
from ..tcot import ParseResult, TCoT, parse, render, strip_special_tokens

COORDINATE_MAX = 1000
MIN_CROP_SIDE = 10
MAX_CROP_ASPECT = 50.0

_THINKING = re.compile(r"<thinking>(.*?)</thinking>", re.DOTALL)
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")


@dataclass(frozen=True)
class EvidenceRules:
    """The settings of the T-CoT reading that differ between the presets (see the module docstring)."""

    keyframe_base: int = 1
    """1: ``key_frames`` value i selects frame i-1 (the prompts' numbering); 0: value i selects frame i."""
    repair_cue_json: bool = False
    """Read a cue the strict JSON parser refuses with the lenient T-CoT reader instead of falling back."""
    max_crops: int | None = None
    """At most this many crops (None: all, as the official code)."""
    max_keyframes: int | None = None
    """At most this many keyframes (None: all)."""
    drop_repeats: bool = False
    """Drop a crop box or keyframe that repeats an earlier one (the official code keeps repeats)."""

    def __post_init__(self) -> None:
        if self.keyframe_base not in (0, 1):
            raise ConfigError(f"keyframe_base must be 0 or 1, got {self.keyframe_base!r}")
        for name in ("max_crops", "max_keyframes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{name} must be a whole number >= 0 or None, got {value!r}")

    @classmethod
    def preset(cls, style: str) -> EvidenceRules:
        try:
            return EVIDENCE_STYLES[style]
        except KeyError:
            raise ConfigError(
                f"unknown evidence style {style!r}; choose {', '.join(EVIDENCE_STYLES)}"
            ) from None

    @property
    def style(self) -> str:
        """The preset these rules equal, or 'custom'."""
        return next((name for name, rules in EVIDENCE_STYLES.items() if rules == self), "custom")


EVIDENCE_STYLES: dict[str, EvidenceRules] = {
    "official": EvidenceRules(keyframe_base=0),
    "paper": EvidenceRules(keyframe_base=1),
    "embedrl": EvidenceRules(
        keyframe_base=1, repair_cue_json=True, max_crops=4, max_keyframes=8, drop_repeats=True
    ),
}
DEFAULT_EVIDENCE_STYLE = "paper"


@dataclass
class Evidence:
    """What one T-CoT adds to the Embedder input.

    Either `fallback_text` is set (the T-CoT is appended as plain text) or the input gets `thinking_text`, then
    the crops (`crop_boxes`, pixels of the source image) or keyframes (`keyframe_indices`, 0-based positions in
    the item's frames), then `tail_text`. `notes` say what was dropped or read leniently.
    """

    thinking_text: str = ""
    tail_text: str = ""
    fallback_text: str | None = None
    cue: dict | None = None
    crops: list[Image.Image] = field(default_factory=list)
    crop_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    keyframe_indices: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def keywords(self) -> list[str]:
        value = (self.cue or {}).get("text_keywords")
        return [str(k) for k in value] if isinstance(value, list) else []


def tcot_text(tcot: str | TCoT | ParseResult | None) -> str | None:
    """The T-CoT as the text the Embedder reads: a string as written, a parsed value rendered canonically."""
    if tcot is None or isinstance(tcot, str):
        return tcot
    if isinstance(tcot, ParseResult):
        return tcot.raw
    if isinstance(tcot, TCoT):
        return render(tcot)
    raise TypeError(f"a T-CoT must be a str, TCoT or ParseResult, got {type(tcot).__name__}")


def read_evidence(
    tcot: str | TCoT | ParseResult | None,
    *,
    crop_source: Image.Image | None,
    num_frames: int,
    rules: EvidenceRules,
) -> Evidence | None:
    """Read a T-CoT into `Evidence`; None when there is no T-CoT (None or blank), which adds nothing.

    `crop_source` is the image that boxes refer to (None: boxes give no crops); `num_frames` the number of frames
    keyframes may select from (0: keyframes give nothing).
    """
    text = tcot_text(tcot)
    if text is None or not text.strip():
        return None
    notes: list[str] = []
    clean = strip_special_tokens(text)
    if clean != text:
        # Vision placeholders inside the T-CoT would desynchronise the text from the images.
        notes.append("special tokens (<|...|>, <emb>) were removed from the T-CoT text")
    match = _THINKING.search(clean)
    if match is None:
        return Evidence(
            fallback_text=clean,
            notes=[*notes, "no <thinking>…</thinking> block: the T-CoT is appended as plain text"],
        )
    cue = _strict_cue(match.group(1))
    if cue is None and rules.repair_cue_json:
        cue = _lenient_cue(clean)
        if cue is not None:
            notes.append("the cue JSON was read leniently (repair_cue_json)")
    if cue is None:
        return Evidence(
            fallback_text=clean,
            notes=[*notes, "no readable cue JSON in <thinking>: the T-CoT is appended as plain text"],
        )
    out = Evidence(
        thinking_text=f"<thinking>{match.group(1)}</thinking>\n",
        tail_text=clean[match.end() :].strip(),
        cue=cue,
        notes=notes,
    )
    if "bbox_2d" in cue:
        _add_crops(out, cue["bbox_2d"], crop_source, rules)
    elif "key_frames" in cue:
        _add_keyframes(out, cue["key_frames"], num_frames, rules)
    return out


def _strict_cue(thinking: str) -> dict | None:
    found = _FLAT_OBJECT.search(thinking)
    if found is None:
        return None
    try:
        value = json.loads(found.group(0))
    except ValueError:  # json.JSONDecodeError, and RecursionError cannot happen on a flat object
        return None
    return value if isinstance(value, dict) else None


def _lenient_cue(text: str) -> dict | None:
    result = parse(text)
    if result.tcot is None or result.tcot.cue_kind is None:
        return None
    kind = result.tcot.cue_kind
    value = result.tcot.cue_value or ()
    return {kind: [list(v) for v in value] if kind == "bbox_2d" else list(value)}


# Far outside any image: coordinates beyond it are clamped to the image anyway, and scaling a larger one (a
# 400-digit integer a degenerate rollout can write) would overflow.
_COORDINATE_LIMIT = 1e9


def _is_number(value: Any) -> bool:
    # JSON allows NaN and Infinity; they cannot be scaled to a pixel (the official code raises on them).
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float: clamped by pixel_box
        return True


def _boxes(value: Any, notes: list[str]) -> list[list]:
    if not isinstance(value, list) or not value:
        if value:
            notes.append("bbox_2d is not a list: no crops")
        return []
    if len(value) >= 4 and all(_is_number(v) for v in value):
        if len(value) > 4:
            notes.append(f"a flat bbox_2d of {len(value)} numbers: only the first four are one box")
        return [value]  # one flat box
    boxes = []
    for number, box in enumerate(value, start=1):
        if isinstance(box, list) and len(box) >= 4 and all(_is_number(v) for v in box[:4]):
            boxes.append(box)
        else:
            notes.append(f"box {number} is not a list of four numbers; dropped")
    return boxes


def pixel_box(box: list, width: int, height: int) -> tuple[int, int, int, int]:
    """A 0–1000 box in pixels: each coordinate scaled and truncated toward zero, then clamped to the image."""
    x1, y1, x2, y2 = (
        int(max(-_COORDINATE_LIMIT, min(v, _COORDINATE_LIMIT)) * size / COORDINATE_MAX)
        for v, size in zip(box[:4], (width, height, width, height))
    )
    return (max(0, min(x1, width)), max(0, min(y1, height)), max(0, min(x2, width)), max(0, min(y2, height)))


def _add_crops(out: Evidence, value: Any, source: Image.Image | None, rules: EvidenceRules) -> None:
    boxes = _boxes(value, out.notes)
    if not boxes:
        return
    if source is None:
        out.notes.append("bbox_2d given but the item has no image to crop")
        return
    width, height = source.size
    for number, box in enumerate(boxes, start=1):
        if rules.max_crops is not None and len(out.crop_boxes) >= rules.max_crops:
            out.notes.append(f"crops after the first {rules.max_crops} were dropped (max_crops)")
            break
        pixels = pixel_box(box, width, height)
        crop_w, crop_h = pixels[2] - pixels[0], pixels[3] - pixels[1]
        if min(crop_w, crop_h) < MIN_CROP_SIDE:
            out.notes.append(f"box {number} is {crop_w}x{crop_h} px, below {MIN_CROP_SIDE} px; dropped")
            continue
        if max(crop_w, crop_h) / min(crop_w, crop_h) > MAX_CROP_ASPECT:
            out.notes.append(f"box {number} has an aspect ratio above {MAX_CROP_ASPECT:g}; dropped")
            continue
        if rules.drop_repeats and pixels in out.crop_boxes:
            out.notes.append(f"box {number} repeats an earlier crop; dropped")
            continue
        out.crop_boxes.append(pixels)
        out.crops.append(source.crop(pixels))


def _add_keyframes(out: Evidence, value: Any, num_frames: int, rules: EvidenceRules) -> None:
    if not isinstance(value, list) or not value:
        if value:
            out.notes.append("key_frames is not a list: no keyframes")
        return
    if num_frames < 2:
        out.notes.append("key_frames given but the item has no frame sequence")
        return
    low, high = rules.keyframe_base, num_frames - 1 + rules.keyframe_base
    for frame in value:
        if rules.max_keyframes is not None and len(out.keyframe_indices) >= rules.max_keyframes:
            out.notes.append(f"keyframes after the first {rules.max_keyframes} were dropped (max_keyframes)")
            break
        if not isinstance(frame, int) or isinstance(frame, bool):
            out.notes.append(f"key frame {frame!r} is not a whole number; dropped")
            continue
        if not low <= frame <= high:
            out.notes.append(f"key frame {frame} is outside {low}..{high}; dropped")
            continue
        index = frame - rules.keyframe_base
        if rules.drop_repeats and index in out.keyframe_indices:
            out.notes.append(f"key frame {frame} is repeated; dropped")
            continue
        out.keyframe_indices.append(index)
