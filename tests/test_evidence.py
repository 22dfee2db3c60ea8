"""How the Embedder reads a T-CoT (embedrl.models.evidence): one case per rule, per preset where they differ."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from embedrl.errors import ConfigError
from embedrl.models.evidence import EvidenceRules, pixel_box, read_evidence
from embedrl.tcot import TCoT, parse, render

OFFICIAL, PAPER, EMBEDRL = (EvidenceRules.preset(s) for s in ("official", "paper", "embedrl"))


def wrap(thinking: str, rest: str = "<rethink>r</rethink>\n<answer>a</answer>") -> str:
    return f"<thinking>{thinking}</thinking>\n{rest}"


def gradient(width: int, height: int) -> Image.Image:
    """Pixel (x, y) is (x % 256, y % 256, 0), so a crop shows where it was cut."""
    img = Image.new("RGB", (width, height))
    img.putdata([(x % 256, y % 256, 0) for y in range(height) for x in range(width)])
    return img


def test_thinking_is_kept_verbatim_and_the_rest_is_stripped() -> None:
    text = 'Sure. <thinking>\n A dog.\n{"text_keywords": ["dog"]}\n</thinking>\n\n<rethink>r</rethink>\n<answer>a</answer>\n'
    ev = read_evidence(text, crop_source=None, num_frames=0, rules=PAPER)
    assert ev.thinking_text == '<thinking>\n A dog.\n{"text_keywords": ["dog"]}\n</thinking>\n'
    assert ev.tail_text == "<rethink>r</rethink>\n<answer>a</answer>"
    assert ev.keywords == ["dog"] and ev.fallback_text is None


def test_crops_truncate_clamp_and_come_from_the_original() -> None:
    image = gradient(200, 100)
    ev = read_evidence(
        wrap('x {"bbox_2d": [[100, 200, 307, 409], [-50, -50, 2000, 2000]]}'),
        crop_source=image,
        num_frames=0,
        rules=OFFICIAL,
    )
    assert ev.crop_boxes == [(20, 20, 61, 40), (0, 0, 200, 100)]
    assert ev.crops[0].size == (41, 20) and ev.crops[0].getpixel((0, 0)) == (20, 20, 0)


def test_pixel_box_truncates_toward_zero() -> None:
    assert pixel_box([503, 777, 999, 1000], 800, 600) == (402, 466, 799, 600)
    assert pixel_box([-5, -5, 10, 10], 100, 100) == (0, 0, 1, 1)


def test_small_and_thin_crops_are_dropped_in_every_style() -> None:
    boxes = [[0, 0, 10, 10], [0, 0, 9, 100], [0, 0, 1000, 15]]
    for rules in (OFFICIAL, PAPER, EMBEDRL):
        ev = read_evidence(
            wrap(f"x {json.dumps({'bbox_2d': boxes})}"),
            crop_source=Image.new("RGB", (1000, 1000)),
            num_frames=0,
            rules=rules,
        )
        assert ev.crop_boxes == [(0, 0, 10, 10)]
        assert any("below 10 px" in n for n in ev.notes) and any("aspect ratio" in n for n in ev.notes)


def test_a_flat_box_is_one_box() -> None:
    ev = read_evidence(
        wrap('x {"bbox_2d": [500, 333, 750, 667]}'),
        crop_source=Image.new("RGB", (800, 600)),
        num_frames=0,
        rules=OFFICIAL,
    )
    assert ev.crop_boxes == [(400, 199, 600, 400)]


def test_entries_the_official_code_crashes_on_are_dropped_with_a_note() -> None:
    text = wrap('x {"bbox_2d": [[1, 2, "3", 4], [0, 0, 500, 500], 7]}')
    ev = read_evidence(text, crop_source=Image.new("RGB", (100, 100)), num_frames=0, rules=OFFICIAL)
    assert ev.crop_boxes == [(0, 0, 50, 50)]
    assert sum("dropped" in n for n in ev.notes) == 2
    frames = read_evidence(
        wrap('x {"key_frames": [1.0, "2", true, 3]}'), crop_source=None, num_frames=4, rules=PAPER
    )
    assert frames.keyframe_indices == [2] and sum("whole number" in n for n in frames.notes) == 3
    nan = read_evidence(
        wrap('x {"bbox_2d": [[NaN, 0, 500, 500]]}'),
        crop_source=Image.new("RGB", (100, 100)),
        num_frames=0,
        rules=OFFICIAL,
    )
    assert nan.crop_boxes == []


def test_keyframes_by_style() -> None:
    text = wrap('x {"key_frames": [1, 3, 4, 3, 0]}')
    official = read_evidence(text, crop_source=None, num_frames=4, rules=OFFICIAL)
    paper = read_evidence(text, crop_source=None, num_frames=4, rules=PAPER)
    embedrl = read_evidence(text, crop_source=None, num_frames=4, rules=EMBEDRL)
    assert official.keyframe_indices == [1, 3, 3, 0]  # 0-based, 4 dropped, repeats kept
    assert paper.keyframe_indices == [0, 2, 3, 2]  # 1-based, 0 dropped, repeats kept
    assert embedrl.keyframe_indices == [0, 2, 3]  # 1-based, repeats dropped


def test_keyframes_need_a_frame_sequence_and_boxes_an_image() -> None:
    assert (
        read_evidence(
            wrap('x {"key_frames": [1]}'), crop_source=None, num_frames=1, rules=PAPER
        ).keyframe_indices
        == []
    )
    ev = read_evidence(wrap('x {"bbox_2d": [[0, 0, 500, 500]]}'), crop_source=None, num_frames=0, rules=PAPER)
    assert ev.crop_boxes == [] and any("no image" in n for n in ev.notes)


def test_bbox_wins_over_key_frames() -> None:
    ev = read_evidence(
        wrap('x {"bbox_2d": [[0, 0, 500, 500]], "key_frames": [1]}'),
        crop_source=Image.new("RGB", (100, 100)),
        num_frames=4,
        rules=PAPER,
    )
    assert ev.crop_boxes and ev.keyframe_indices == []


@pytest.mark.parametrize(
    "text",
    [
        "A dog on grass, no tags at all.",  # no <thinking>
        wrap("The circle is red."),  # no JSON object
        wrap("x {'bbox_2d': [[0, 0, 500, 500]]}"),  # JSON the strict parser refuses
    ],
)
def test_unreadable_cues_fall_back_to_plain_text(text: str) -> None:
    ev = read_evidence(text, crop_source=Image.new("RGB", (100, 100)), num_frames=0, rules=OFFICIAL)
    assert ev.fallback_text == text and not ev.crops and ev.thinking_text == ""


def test_embedrl_style_repairs_the_json_instead() -> None:
    ev = read_evidence(
        wrap("x {'bbox_2d': [[0, 0, 500, 500]]}"),
        crop_source=Image.new("RGB", (100, 100)),
        num_frames=0,
        rules=EMBEDRL,
    )
    assert ev.fallback_text is None and ev.crop_boxes == [(0, 0, 50, 50)]


@pytest.mark.parametrize("cue", ['{"label": "dog"}', '{"bbox_2d": {"nested": [1]}}'])
def test_a_flat_object_without_a_cue_keeps_the_layout_and_adds_nothing(cue: str) -> None:
    # The first object without braces inside it is the cue: for a nested object, that is the inner one.
    ev = read_evidence(
        wrap(f"x {cue}"), crop_source=Image.new("RGB", (100, 100)), num_frames=0, rules=OFFICIAL
    )
    assert ev.fallback_text is None and ev.crops == [] and ev.thinking_text.startswith("<thinking>")


def test_no_tcot_adds_nothing() -> None:
    for text in (None, "", "  \n"):
        assert read_evidence(text, crop_source=None, num_frames=0, rules=PAPER) is None


def test_special_tokens_are_removed_from_every_piece() -> None:
    text = wrap(
        '<|vision_start|><|image_pad|> x {"text_keywords": ["a"]}',
        "<rethink>r <|video_pad|></rethink><answer>a<emb></answer>",
    )
    ev = read_evidence(text, crop_source=None, num_frames=0, rules=PAPER)
    joined = ev.thinking_text + ev.tail_text
    assert not any(t in joined for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<emb>"))
    assert any("special tokens" in n for n in ev.notes)
    assert (
        read_evidence("no tags <|image_pad|> here", crop_source=None, num_frames=0, rules=PAPER).fallback_text
        == "no tags  here"
    )


def test_parsed_values_are_read_through_their_text() -> None:
    value = TCoT("A dog.", bbox_2d=((0, 0, 500, 500),), rethink="r", answer="a")
    from_value = read_evidence(value, crop_source=Image.new("RGB", (100, 100)), num_frames=0, rules=PAPER)
    from_text = read_evidence(
        render(value), crop_source=Image.new("RGB", (100, 100)), num_frames=0, rules=PAPER
    )
    assert from_value.thinking_text == from_text.thinking_text and from_value.crop_boxes == [(0, 0, 50, 50)]
    raw = wrap('x\n{"text_keywords": ["a"]}')
    assert read_evidence(parse(raw), crop_source=None, num_frames=0, rules=PAPER).thinking_text == (
        '<thinking>x\n{"text_keywords": ["a"]}</thinking>\n'
    )
    with pytest.raises(TypeError):
        read_evidence(42, crop_source=None, num_frames=0, rules=PAPER)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"keyframe_base": 2}, {"max_crops": -1}, {"max_keyframes": 1.5}])
def test_rules_are_validated(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        EvidenceRules(**kwargs)


def test_presets_and_style_names() -> None:
    assert OFFICIAL.style == "official" and PAPER.style == "paper" and EMBEDRL.style == "embedrl"
    assert EvidenceRules(keyframe_base=0, max_crops=2).style == "custom"
    with pytest.raises(ConfigError, match="unknown evidence style"):
        EvidenceRules.preset("vlm2vec")


@pytest.mark.parametrize("coordinate", ["1e308", "1" + "0" * 400, "-1e308"])
def test_coordinates_too_large_to_scale_are_clamped(coordinate: str) -> None:
    ev = read_evidence(
        wrap(f'x {{"bbox_2d": [[0, 0, 500, {coordinate}]]}}'),
        crop_source=Image.new("RGB", (100, 100)),
        num_frames=0,
        rules=OFFICIAL,
    )
    expected = [(0, 0, 50, 100)] if not coordinate.startswith("-") else []
    assert ev.crop_boxes == expected


def test_a_flat_list_of_more_than_four_numbers_is_noted() -> None:
    ev = read_evidence(
        wrap('x {"bbox_2d": [100, 100, 500, 500, 600, 600, 900, 900]}'),
        crop_source=Image.new("RGB", (100, 100)),
        num_frames=0,
        rules=PAPER,
    )
    assert ev.crop_boxes == [(10, 10, 50, 50)] and any("first four" in n for n in ev.notes)
