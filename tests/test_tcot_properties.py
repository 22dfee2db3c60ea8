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

from embedrl.tcot import (
    PROBLEM_CODES,
    EvidenceConfig,
    ParseResult,
    TCoT,
    evidence,
    parse,
    render,
    to_pixel_box,
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
    st.integers(-2000, 3000), st.floats(-2000, 3000, allow_nan=False, allow_infinity=False),
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


@PROPERTY
@given(
    st.lists(st.tuples(any_coordinate, any_coordinate, any_coordinate, any_coordinate), max_size=8),
    image_sizes,
    st.integers(0, 5),
    st.integers(1, 30),
    st.floats(1, 80),
)
def test_crops_lie_inside_the_image_and_respect_the_limits(
    boxes: list, size: tuple[int, int], max_crops: int, min_side: int, max_aspect: float
) -> None:
    image = Image.new("RGB", size)
    config = EvidenceConfig(max_crops=max_crops, min_crop_side=min_side, max_aspect_ratio=max_aspect)
    ev = evidence(TCoT("t", bbox_2d=tuple(boxes)), images=[image], config=config)
    width, height = size
    assert len(ev.crops) == len(ev.crop_boxes) <= max_crops
    assert len(set(ev.crop_boxes)) == len(ev.crop_boxes)
    for (left, top, right, bottom), crop in zip(ev.crop_boxes, ev.crops):
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        crop_w, crop_h = right - left, bottom - top
        assert min(crop_w, crop_h) >= min_side
        assert max(crop_w / crop_h, crop_h / crop_w) <= max_aspect
        assert crop.size == (crop_w, crop_h)
    assert len(ev.content()) == 3 + len(ev.crops)


@PROPERTY
@given(st.tuples(coordinate_floats, coordinate_floats, coordinate_floats, coordinate_floats), image_sizes)
def test_pixel_box_covers_the_relative_box(box: tuple, size: tuple[int, int]) -> None:
    x1, y1, x2, y2 = box
    width, height = size
    left, top, right, bottom = to_pixel_box(box, width, height)
    # Covering: the pixel box contains the exact scaled box (up to float rounding), and stays in the image.
    assert left <= x1 * width / 1000 + 1e-9 and top <= y1 * height / 1000 + 1e-9
    assert right >= min(x2 * width / 1000, width) - 1e-9 and bottom >= min(y2 * height / 1000, height) - 1e-9
    assert 0 <= left <= width and 0 <= right <= width and 0 <= top <= height and 0 <= bottom <= height


@PROPERTY
@given(st.lists(st.integers(-3, 20), max_size=12), st.integers(0, 10), st.integers(0, 10))
def test_keyframe_indices_map_to_existing_frames(indices: list[int], num_frames: int, max_keyframes: int) -> None:
    frames = [Image.new("L", (4, 4), i) for i in range(num_frames)]
    ev = evidence(TCoT("t", key_frames=tuple(indices)), frames=frames,
                  config=EvidenceConfig(max_keyframes=max_keyframes))
    assert len(ev.keyframes) == len(ev.keyframe_indices) <= max_keyframes
    assert len(set(ev.keyframe_indices)) == len(ev.keyframe_indices)
    for index, frame in zip(ev.keyframe_indices, ev.keyframes):
        assert 1 <= index <= num_frames
        assert frame is frames[index - 1]
    kept_in_order = [i for i in dict.fromkeys(indices) if 1 <= i <= num_frames][:max_keyframes]
    assert ev.keyframe_indices == kept_in_order


# ================================================================================================= fuzz

# Fragments that real model outputs are made of, so the fuzzer reaches the deep paths of the parser rather
# than only "no tags".
_FRAGMENTS = [
    "<thinking>", "</thinking>", "<rethink>", "</rethink>", "<answer>", "</answer>", "<rethinking>",
    "</rethinking>", "< thinking >", "</ANSWER>", "<think>", "```json", "```", "{", "}", "[", "]", ",", ":",
    '"', "'", "\u201c", "\u201d", "\\", '"bbox_2d"', '"key_frames"', '"text_keywords"', "bbox_2d", "key_frames",
    "text_keywords", "'bbox_2d'", "null", "None", "true", "NaN", "Infinity", "-1", "0", "3", "7", "1000", "1001",
    "-250.5", "1e309", "99999999999999999999", '"3"', '"frame 2"', "[1, 2, 3, 4]", "[[10, 20, 300, 400]]",
    "[900, 900, 100, 100]", '["dog", "red car"]', "label", "<|image_pad|>", "<|vision_start|>", "<emb>", " ",
    "\n", "A dog runs.", "it's", "\x00", "\ud800",
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
    frames = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(num_frames)]
    ev = evidence(result, images=images, frames=frames)
    content = ev.content()
    assert content[-1] == {"type": "text", "text": EvidenceConfig().summary_prompt}
    texts = [c["text"] for c in content if c["type"] == "text"]
    assert not any(token in t for t in texts for token in ("<|image_pad|>", "<|vision_start|>", "<emb>"))
    if ev.fallback_text is not None:
        assert not ev.crops and not ev.keyframes
        assert len(content) <= 2
    else:
        assert content[0]["text"].startswith("<thinking>")
        assert [c["type"] for c in content].count("image") == len(ev.crops) + len(ev.keyframes)
        for (left, top, right, bottom) in ev.crop_boxes:
            width, height = images[0].size
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert all(1 <= i <= num_frames for i in ev.keyframe_indices)
