"""Property tests and a fuzz target for embedrl.tcot.

The fuzz test is marked ``fuzz``; its example budget comes from the FUZZ_EXAMPLES environment variable
(default 250, so that this file runs in a few seconds). A long run::

    FUZZ_EXAMPLES=200000 .venv/bin/pytest tests/test_tcot_properties.py -m fuzz -p no:cacheprovider
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from embedrl.models.evidence import EVIDENCE_STYLES, EvidenceRules, pixel_box, read_evidence
from embedrl.tcot import (
    PROBLEM_CODES,
    ParseResult,
    TCoT,
    parse,
    render,
)

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ============================================================================================ strategies

# Prose never holds what the parser treats as structure: tags ("<"), cue JSON ("{", ":"), code fences ("`").
_PROSE_CHARS = st.characters(blacklist_characters="<{}`:=", blacklist_categories=("Cs",))
prose = st.text(_PROSE_CHARS, max_size=40).map(str.strip)
keywords = st.text(min_size=1, max_size=15).filter(lambda s: s.strip() == s and s != "")
coordinate_ints = st.integers(0, 1000)
coordinate_floats = st.floats(0, 1000, allow_nan=False, allow_infinity=False)


@st.composite
def valid_boxes(draw: st.DrawFn) -> tuple:
    # Integer and float coordinates must both survive the round trip with their type.
    number = coordinate_floats if draw(st.booleans()) else coordinate_ints
    boxes = []
    for _ in range(draw(st.integers(0, 4))):
        x1, x2 = sorted(draw(st.tuples(number, number)))
        y1, y2 = sorted(draw(st.tuples(number, number)))
        boxes.append((x1, y1, x2, y2))
    return tuple(boxes)


@st.composite
def valid_tcots(draw: st.DrawFn) -> TCoT:
    cue = draw(st.sampled_from(["text_keywords", "bbox_2d", "key_frames", None]))
    fields: dict = {}
    if cue == "text_keywords":
        fields[cue] = tuple(draw(st.lists(keywords, max_size=5)))
    elif cue == "bbox_2d":
        fields[cue] = draw(valid_boxes())
    elif cue == "key_frames":
        fields[cue] = tuple(draw(st.lists(st.integers(1, 64), unique=True, max_size=8)))
    return TCoT(thinking=draw(prose), rethink=draw(prose), answer=draw(prose), **fields)


any_coordinate = st.one_of(
    st.integers(-2000, 3000),
    st.floats(-2000, 3000, allow_nan=False, allow_infinity=False),
    st.sampled_from([float("nan"), float("inf"), -0.0]),
)
image_sizes = st.tuples(st.integers(1, 120), st.integers(1, 120))


# ============================================================================================ properties


@PROPERTY
@given(st.text())
def test_parse_never_raises_on_arbitrary_unicode(text: str) -> None:
    result = parse(text)
    assert isinstance(result, ParseResult) and result.raw == text
    assert "internal_error" not in result.codes
    assert set(result.codes) <= set(PROBLEM_CODES)


@PROPERTY
@given(valid_tcots())
def test_parse_of_render_is_identity(tcot: TCoT) -> None:
    result = parse(render(tcot))
    assert result.tcot == tcot
    assert result.tags_in_order
    allowed = {"no_cue", "empty_section"}
    assert set(result.codes) <= allowed
    # Rendering is canonical: a second round changes nothing.
    assert render(result.tcot) == render(tcot)


def _boxed(boxes: list) -> str:
    import json

    return f"<thinking>t {json.dumps({'bbox_2d': [list(b) for b in boxes]})}</thinking><rethink>r</rethink>"


@PROPERTY
@given(
    st.lists(st.tuples(any_coordinate, any_coordinate, any_coordinate, any_coordinate), max_size=8),
    image_sizes,
    st.one_of(st.none(), st.integers(0, 5)),
    st.booleans(),
)
def test_crops_lie_inside_the_image_and_respect_the_limits(
    boxes: list, size: tuple[int, int], max_crops: int | None, drop_repeats: bool
) -> None:
    image = Image.new("RGB", size)
    rules = EvidenceRules(max_crops=max_crops, drop_repeats=drop_repeats)
    ev = read_evidence(_boxed(boxes), crop_source=image, num_frames=0, rules=rules)
    width, height = size
    assert ev is not None and ev.fallback_text is None
    assert len(ev.crops) == len(ev.crop_boxes) <= (len(boxes) if max_crops is None else max_crops)
    if drop_repeats:
        assert len(set(ev.crop_boxes)) == len(ev.crop_boxes)
    for (left, top, right, bottom), crop in zip(ev.crop_boxes, ev.crops):
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        crop_w, crop_h = right - left, bottom - top
        assert min(crop_w, crop_h) >= 10
        assert max(crop_w / crop_h, crop_h / crop_w) <= 50
        assert crop.size == (crop_w, crop_h)


@PROPERTY
@given(st.tuples(coordinate_floats, coordinate_floats, coordinate_floats, coordinate_floats), image_sizes)
def test_pixel_box_truncates_the_scaled_box_and_clamps(box: tuple, size: tuple[int, int]) -> None:
    width, height = size
    left, top, right, bottom = pixel_box(list(box), width, height)
    # Each coordinate is the scaled value truncated toward zero (so at most one pixel below it), in the image.
    for value, scale, got in zip(box, (width, height, width, height), (left, top, right, bottom)):
        exact = min(value * scale / 1000, scale)
        assert exact - 1 < got <= exact + 1e-9 and 0 <= got <= scale


@PROPERTY
@given(
    st.lists(st.integers(-3, 20), max_size=12), st.integers(2, 10), st.sampled_from(sorted(EVIDENCE_STYLES))
)
def test_keyframe_indices_map_to_existing_frames(indices: list[int], num_frames: int, style: str) -> None:
    import json

    rules = EvidenceRules.preset(style)
    text = f"<thinking>t {json.dumps({'key_frames': indices})}</thinking><rethink>r</rethink>"
    ev = read_evidence(text, crop_source=None, num_frames=num_frames, rules=rules)
    base = rules.keyframe_base
    valid = [i - base for i in indices if base <= i < num_frames + base]
    if rules.drop_repeats:
        valid = list(dict.fromkeys(valid))
    if rules.max_keyframes is not None:
        valid = valid[: rules.max_keyframes]
    assert ev is not None and ev.keyframe_indices == valid
    assert all(0 <= i < num_frames for i in ev.keyframe_indices)


# ================================================================================================= fuzz

# Fragments that real model outputs are made of, so the fuzzer reaches the deep paths of the parser rather
# than only "no tags".
_FRAGMENTS = [
    "<thinking>",
    "</thinking>",
    "<rethink>",
    "</rethink>",
    "<answer>",
    "</answer>",
    "<rethinking>",
    "</rethinking>",
    "< thinking >",
    "</ANSWER>",
    "<think>",
    "```json",
    "```",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    '"',
    "'",
    "\u201c",
    "\u201d",
    "\\",
    '"bbox_2d"',
    '"key_frames"',
    '"text_keywords"',
    "bbox_2d",
    "key_frames",
    "text_keywords",
    "'bbox_2d'",
    "null",
    "None",
    "true",
    "NaN",
    "Infinity",
    "-1",
    "0",
    "3",
    "7",
    "1000",
    "1001",
    "-250.5",
    "1e309",
    "99999999999999999999",
    '"3"',
    '"frame 2"',
    "[1, 2, 3, 4]",
    "[[10, 20, 300, 400]]",
    "[900, 900, 100, 100]",
    '["dog", "red car"]',
    "label",
    "<|image_pad|>",
    "<|vision_start|>",
    "<emb>",
    " ",
    "\n",
    "A dog runs.",
    "it's",
    "\x00",
    "\ud800",
]
fuzz_text = st.one_of(
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=6)), max_size=40).map("".join),
    st.text(max_size=200),
)


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(fuzz_text, st.lists(image_sizes, max_size=2), st.integers(0, 9))
def test_fuzz_parse_and_evidence(text: str, sizes: list[tuple[int, int]], num_frames: int) -> None:
    result = parse(text)
    assert "internal_error" not in result.codes, result.problems
    assert set(result.codes) <= set(PROBLEM_CODES)
    if result.tcot is not None:
        # The parsed value is canonical: rendering and parsing it again gives it back.
        again = parse(render(result.tcot)).tcot
        assert again == result.tcot, (render(result.tcot), again)
        for box in result.tcot.bbox_2d or ():
            assert all(math.isfinite(c) and 0 <= c <= 1000 for c in box)
            assert box[0] <= box[2] and box[1] <= box[3]
        assert all(k >= 1 for k in result.tcot.key_frames or ())

    images = [Image.new("RGB", size) for size in sizes]
    for rules in EVIDENCE_STYLES.values():
        ev = read_evidence(
            result, crop_source=images[0] if images else None, num_frames=num_frames, rules=rules
        )
        if ev is None:
            assert not text.strip()
            continue
        pieces = [ev.fallback_text or "", ev.thinking_text, ev.tail_text]
        assert not any(token in t for t in pieces for token in ("<|image_pad|>", "<|vision_start|>", "<emb>"))
        if ev.fallback_text is not None:
            assert not ev.crops and not ev.keyframe_indices and not ev.thinking_text
        else:
            assert ev.thinking_text.startswith("<thinking>") and ev.thinking_text.endswith("</thinking>\n")
            for left, top, right, bottom in ev.crop_boxes:
                width, height = images[0].size
                assert 0 <= left < right <= width and 0 <= top < bottom <= height
            assert all(0 <= i < num_frames for i in ev.keyframe_indices)
