"""T-CoT parse / validate / render / format check: one hand-written case per robustness rule."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import embedrl.tcot as tcot_module
import embedrl.tcot.parsing as parsing_module
from embedrl.tcot import (
    PROBLEM_CODES,
    ParseResult,
    TCoT,
    format_ok,
    parse,
    render,
    validate,
)


def wrap(thinking: str, rethink: str = "Focus on the subject.", answer: str = "A dog.") -> str:
    return f"<thinking>{thinking}</thinking>\n<rethink>{rethink}</rethink>\n<answer>{answer}</answer>"


def gradient(width: int, height: int) -> Image.Image:
    """An image whose pixel (x, y) is (x % 256, y % 256, 0), so a crop reveals where it was cut."""
    img = Image.new("RGB", (width, height))
    img.putdata([(x % 256, y % 256, 0) for y in range(height) for x in range(width)])
    return img


def frames_of(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (16, 16), (10 * i, 0, 0)) for i in range(count)]


# ============================================================================================ TCoT value


def test_tcot_is_hashable_and_lists_become_tuples() -> None:
    t = TCoT("t", bbox_2d=[[1, 2, 3, 4]], rethink="r", answer="a")
    assert t.bbox_2d == ((1, 2, 3, 4),)
    assert hash(t) == hash(TCoT("t", bbox_2d=((1, 2, 3, 4),), rethink="r", answer="a"))
    assert TCoT("t", key_frames=[2, 1]).key_frames == (2, 1)
    assert TCoT("t", text_keywords=["a"]).text_keywords == ("a",)


def test_tcot_refuses_two_cues() -> None:
    with pytest.raises(ValueError, match="at most one cue"):
        TCoT("t", text_keywords=("a",), key_frames=(1,))


@pytest.mark.parametrize(
    "kwargs,kind",
    [
        ({}, None),
        ({"text_keywords": ()}, "text_keywords"),
        ({"bbox_2d": ()}, "bbox_2d"),
        ({"key_frames": (1,)}, "key_frames"),
    ],
)
def test_cue_kind(kwargs: dict, kind: str | None) -> None:
    assert TCoT("t", **kwargs).cue_kind == kind


def test_every_problem_code_is_documented_in_the_module_docstring() -> None:
    doc = tcot_module.__doc__ or ""
    for code in PROBLEM_CODES:
        assert f"``{code}``" in doc, code
    assert tcot_module.FORMAT_BREAKING_CODES <= set(PROBLEM_CODES)
    assert tcot_module.FATAL_CODES <= set(PROBLEM_CODES)


# ============================================================================================== parse


def test_clean_tcot_parses_without_problems() -> None:
    result = parse(wrap('A brown dog runs. {"bbox_2d": [[100, 200, 300, 400]]}'))
    assert result.problems == []
    assert result.ok and result.tags_in_order
    assert result.tcot == TCoT(
        "A brown dog runs.", bbox_2d=((100, 200, 300, 400),), rethink="Focus on the subject.", answer="A dog."
    )


def test_text_before_and_after_tags_is_ignored_and_reported() -> None:
    result = parse("Sure, here it is:\n" + wrap('x {"text_keywords": ["dog"]}') + "\nHope this helps!")
    assert result.tcot is not None and result.tcot.text_keywords == ("dog",)
    outside = [p for p in result.problems if p.code == "text_outside_tags"]
    assert len(outside) == 2
    assert "before" in outside[0].detail and "after" in outside[1].detail
    assert result.ok


def test_code_fence_around_json() -> None:
    result = parse(wrap('Dog.\n```json\n{"bbox_2d": [[1, 2, 30, 40]]}\n```'))
    assert result.tcot.bbox_2d == ((1, 2, 30, 40),)
    assert result.tcot.thinking == "Dog."
    assert result.codes == ["cue_json_repaired"]
    assert "code fence" in result.problems[0].detail


def test_single_quotes_and_trailing_commas() -> None:
    result = parse(wrap("x {'text_keywords': ['red car', 'street',],}"))
    assert result.tcot.text_keywords == ("red car", "street")
    assert result.codes == ["cue_json_repaired"]
    assert "trailing comma" in result.problems[0].detail and "quotes" in result.problems[0].detail


def test_apostrophes_in_prose_and_inside_single_quoted_keyword() -> None:
    result = parse(wrap("The dog's toy. {'text_keywords': ['dog\\'s toy']}"))
    assert result.tcot.text_keywords == ("dog's toy",)
    assert result.tcot.thinking == "The dog's toy."


def test_curly_quotes_and_unquoted_keys() -> None:
    result = parse(wrap("x {text_keywords: [\u201cred car\u201d, \u2018street\u2019]}"))
    assert result.tcot.text_keywords == ("red car", "street")
    assert "unquoted key" in result.problems[0].detail


def test_python_literals_and_missing_comma() -> None:
    result = parse(wrap("x {'key_frames': [1 2], 'extra': None}"))
    assert result.tcot.key_frames == (1, 2)
    assert "missing comma" in result.problems[0].detail


def test_truncated_json_is_closed() -> None:
    result = parse(wrap('x {"text_keywords": ["a", "b"'))
    assert result.tcot.text_keywords == ("a", "b")
    assert "missing closing bracket" in result.problems[0].detail


def test_cue_written_without_braces() -> None:
    result = parse(wrap('Look here "bbox_2d": [10, 10, 50, 50] then stop'))
    assert result.tcot.bbox_2d == ((10, 10, 50, 50),)
    assert result.tcot.thinking == "Look here then stop"
    assert result.codes == ["cue_json_repaired"]


def test_flat_single_box_is_one_box() -> None:
    result = parse(wrap('x {"bbox_2d": [10, 20, 30, 40]}'))
    assert result.tcot.bbox_2d == ((10, 20, 30, 40),)
    assert result.problems == []


def test_nested_boxes() -> None:
    result = parse(wrap('x {"bbox_2d": [[10, 20, 30, 40], [50, 60, 70, 80]]}'))
    assert result.tcot.bbox_2d == ((10, 20, 30, 40), (50, 60, 70, 80))
    assert result.problems == []


def test_over_nested_box_is_unwrapped_and_reported() -> None:
    result = parse(wrap('x {"bbox_2d": [[[10, 20, 30, 40]], [50, 60, 70, 80]]}'))
    assert result.tcot.bbox_2d == ((10, 20, 30, 40), (50, 60, 70, 80))
    assert result.codes == ["bbox_malformed"]


def test_swapped_box_is_normalised_and_reported() -> None:
    result = parse(wrap('x {"bbox_2d": [[300, 400, 100, 200]]}'))
    assert result.tcot.bbox_2d == ((100, 200, 300, 400),)
    assert result.codes == ["bbox_swapped"]


def test_out_of_range_coordinates_are_clamped_and_reported() -> None:
    result = parse(wrap('x {"bbox_2d": [[-10, 20, 1200, 40.5], [0, 0, 1000, 1000.0]]}'))
    assert result.tcot.bbox_2d == ((0, 20, 1000, 40.5), (0, 0, 1000, 1000.0))
    assert result.codes == ["bbox_clamped"]


def test_integer_coordinates_stay_integers_and_floats_stay_floats() -> None:
    box = parse(wrap('x {"bbox_2d": [[1, 2.5, 3, 4.0]]}')).tcot.bbox_2d[0]
    assert [type(c) for c in box] == [int, float, int, float]


@pytest.mark.parametrize(
    "value,expected",
    [
        ("[[1, 2, 3]]", ()),
        ('[["a", 2, 3, 4]]', ()),
        ('[[1, 2, 3, 4], "x", [5, 6, 7, 8]]', ((1, 2, 3, 4), (5, 6, 7, 8))),
        ("null", ()),
        ('{"x": 1}', ()),
        ("[[NaN, 1, 2, 3]]", ()),
    ],
)
def test_malformed_boxes_are_dropped(value: str, expected: tuple) -> None:
    result = parse(wrap(f'x {{"bbox_2d": {value}}}'))
    assert result.tcot.bbox_2d == expected
    assert "bbox_malformed" in result.codes


def test_numeric_string_coordinates_are_converted() -> None:
    result = parse(wrap('x {"bbox_2d": [["10", "20", 30, 40]]}'))
    assert result.tcot.bbox_2d == ((10, 20, 30, 40),)
    assert "bbox_malformed" in result.codes


def test_qwen_grounding_style_objects_are_merged() -> None:
    text = wrap(
        'x [{"bbox_2d": [10, 10, 50, 50], "label": "cat"}, {"bbox_2d": [60, 60, 90, 90], "label": "dog"}] y'
    )
    result = parse(text)
    assert result.tcot.bbox_2d == ((10, 10, 50, 50), (60, 60, 90, 90))
    assert result.tcot.thinking == "x y"
    assert result.codes == ["cue_merged"]


def test_empty_cue_is_distinct_from_no_cue() -> None:
    empty = parse(wrap('x {"bbox_2d": []}'))
    assert empty.tcot.bbox_2d == () and empty.tcot.cue_kind == "bbox_2d"
    assert empty.problems == [] and empty.ok
    none = parse(wrap("x"))
    assert none.tcot.bbox_2d is None and none.tcot.cue_kind is None
    assert none.codes == ["no_cue"] and not none.ok


def test_keyframes_as_strings_and_floats() -> None:
    result = parse(wrap('x {"key_frames": ["3", "frame 5", "#7", 2.0]}'))
    assert result.tcot.key_frames == (3, 5, 7, 2)
    assert result.codes == ["frame_not_int"] * 4


def test_non_integer_frames_are_dropped() -> None:
    result = parse(wrap('x {"key_frames": [2.5, "soon", true, null, [1], 4]}'))
    assert result.tcot.key_frames == (4,)
    assert result.codes == ["frame_not_int"] * 5


def test_duplicate_and_out_of_range_frames_are_dropped_and_reported() -> None:
    result = parse(wrap('x {"key_frames": [3, 3, 0, -1, 9, 2]}'), num_frames=8)
    assert result.tcot.key_frames == (3, 2)
    assert result.codes == [
        "frame_duplicate",
        "frame_out_of_range",
        "frame_out_of_range",
        "frame_out_of_range",
    ]
    # Without num_frames only indices below 1 are out of range.
    assert parse(wrap('x {"key_frames": [9, 0]}')).tcot.key_frames == (9,)


def test_scalar_cue_values_are_wrapped() -> None:
    frames = parse(wrap('x {"key_frames": 3}'))
    assert frames.tcot.key_frames == (3,) and frames.codes == ["cue_not_list"]
    words = parse(wrap('x {"text_keywords": "red car"}'))
    assert words.tcot.text_keywords == ("red car",) and words.codes == ["cue_not_list"]


def test_keywords_are_stripped_and_bad_entries_reported() -> None:
    result = parse(wrap('x {"text_keywords": [" dog ", "", 2024, null, "cat"]}'))
    assert result.tcot.text_keywords == ("dog", "2024", "cat")
    assert result.codes == ["keywords_malformed"] * 3


def test_missing_closing_tag_runs_to_next_section() -> None:
    result = parse('<thinking>x {"text_keywords": ["a"]}<rethink>r</rethink><answer>a</answer>')
    assert result.tcot == TCoT("x", text_keywords=("a",), rethink="r", answer="a")
    assert result.codes == ["missing_tag"]
    assert "</thinking>" in result.problems[0].detail
    assert not result.tags_in_order and not result.ok


def test_missing_opening_tag_starts_at_previous_boundary() -> None:
    # What a chat template that pre-fills "<thinking>" yields.
    result = parse('A dog. {"text_keywords": ["dog"]}</thinking><rethink>r</rethink><answer>a</answer>')
    assert result.tcot == TCoT("A dog.", text_keywords=("dog",), rethink="r", answer="a")
    assert result.codes == ["missing_tag"]


def test_truncated_answer_keeps_everything_written() -> None:
    result = parse('<thinking>x {"bbox_2d": [1, 2, 30, 40]}</thinking><rethink>r</rethink><answer>a dog on')
    assert result.tcot.answer == "a dog on" and result.tcot.bbox_2d == ((1, 2, 30, 40),)
    assert result.codes == ["missing_tag"]


def test_missing_section() -> None:
    result = parse('<thinking>x {"text_keywords": ["a"]}</thinking><answer>a</answer>')
    assert result.tcot.rethink == ""
    assert result.codes == ["missing_tag"]
    assert "<rethink> section is missing" in result.problems[0].detail


def test_repeated_tags_use_the_first_section() -> None:
    result = parse(wrap('one {"text_keywords": ["a"]}') + "<answer>second</answer>")
    assert result.tcot.answer == "A dog."
    assert result.codes == ["repeated_tag"]
    assert result.tags_in_order


def test_stray_closing_tag_is_ignored() -> None:
    result = parse(
        '<thinking>x {"text_keywords": ["a"]}</thinking></thinking><rethink>r</rethink><answer>a</answer>'
    )
    assert result.tcot.thinking == "x"
    assert result.codes == ["unmatched_tag"]


def test_stray_tag_inside_a_section_is_removed_from_its_text() -> None:
    result = parse(
        '<thinking>x </rethink>y {"text_keywords": ["a"]}</thinking><rethink>r</rethink><answer>a</answer>'
    )
    assert result.tcot.thinking == "x y"
    assert "unmatched_tag" in result.codes


def test_rethinking_misspelling_is_accepted_and_reported() -> None:
    result = parse(
        '<thinking>x {"text_keywords": ["a"]}</thinking><rethinking>r</rethinking><answer>a</answer>'
    )
    assert result.tcot.rethink == "r"
    assert result.codes == ["misspelled_tag"]
    assert result.tags_in_order and result.ok


def test_tags_are_case_and_space_tolerant() -> None:
    result = parse('<Thinking>x {"text_keywords": ["a"]}</ thinking ><RETHINK>r</RETHINK><answer>a</answer>')
    assert result.problems == [] and result.tcot.rethink == "r"


def test_out_of_order_sections() -> None:
    result = parse('<answer>a</answer><thinking>x {"text_keywords": ["a"]}</thinking><rethink>r</rethink>')
    assert result.tcot.answer == "a"
    assert result.codes == ["tags_out_of_order"]
    assert not result.tags_in_order


def test_empty_section_is_reported() -> None:
    result = parse(wrap('x {"text_keywords": ["a"]}', answer="  "))
    assert result.codes == ["empty_section"]


def test_cue_outside_thinking_is_used_and_reported() -> None:
    result = parse(wrap("x", rethink='Look at frames {"key_frames": [1, 2]}'))
    assert result.tcot.key_frames == (1, 2)
    assert result.tcot.rethink == "Look at frames"
    assert result.codes == ["cue_outside_thinking"]


def test_multiple_cue_kinds_keep_the_first() -> None:
    result = parse(wrap('x {"bbox_2d": [[1, 2, 30, 40]], "text_keywords": ["a"]}'))
    assert result.tcot.cue_kind == "bbox_2d"
    assert result.codes == ["multiple_cues"]


def test_unreadable_cue_json_keeps_the_text() -> None:
    result = parse(wrap('x {"bbox_2d": oops}'))
    assert result.tcot.cue_kind is None
    assert result.tcot.thinking == 'x {"bbox_2d": oops}'
    assert result.codes == ["cue_json_invalid"]
    assert not result.ok


def test_json_without_cue_key_is_named_in_no_cue_detail() -> None:
    result = parse(wrap('x {"keywords": ["a"]}'))
    assert result.codes == ["no_cue"]
    assert "keywords" in result.problems[0].detail


def test_prose_braces_do_not_hide_the_cue() -> None:
    result = parse(wrap('It looks like {a set} of toys. {"text_keywords": ["toys"]}'))
    assert result.tcot.text_keywords == ("toys",)
    assert result.tcot.thinking == "It looks like {a set} of toys."


@pytest.mark.parametrize(
    "text,code",
    [("", "empty_input"), ("   \n", "empty_input"), ('just prose {"bbox_2d": [1,2,3,4]}', "no_tags")],
)
def test_fatal_inputs(text: str, code: str) -> None:
    result = parse(text)
    assert result.tcot is None and result.codes == [code]
    assert result.problems[0].fatal and not result.ok
    assert result.raw == text


@pytest.mark.parametrize("value", [None, b"<thinking>x</thinking>", 42])
def test_non_string_input_does_not_raise(value: object) -> None:
    assert isinstance(parse(value), ParseResult)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "{" * 5000,
        "[" * 5000,
        '<thinking>{"bbox_2d": ' + "[" * 3000 + "</thinking>",
        '<thinking>{"key_frames": [' + "9" * 5000 + "]}</thinking>",
        "<thinking>" * 2000,
        '<thinking>{"text_keywords": ["\\ud800"]}</thinking>',
        "<thinking>\x00{'\x00':\x00}</thinking>",
    ],
)
def test_adversarial_inputs_do_not_raise(text: str) -> None:
    result = parse(text)
    assert "internal_error" not in result.codes


def test_internal_errors_become_a_fatal_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(parsing_module, "_parse", boom)
    result = parse("<thinking>x</thinking>")
    assert result.tcot is None and result.codes == ["internal_error"]
    assert "kaput" in result.problems[0].detail


# ============================================================================================ validate


@pytest.mark.parametrize(
    "tcot,modality,codes",
    [
        (TCoT("t", text_keywords=("a", "b")), "text", []),
        (TCoT("t", text_keywords=()), "text", ["cue_empty"]),
        (TCoT("t", text_keywords=("a", " ")), "text", ["keywords_malformed"]),
        (TCoT("t"), "text", ["no_cue"]),
        (TCoT("t", bbox_2d=((1, 2, 3, 4),)), "text", ["wrong_cue"]),
        (TCoT("t", bbox_2d=((1, 2, 3, 4), (0.5, 0, 1000, 999.5))), "image", []),
        (TCoT("t", bbox_2d=()), "image", ["cue_empty"]),
        (TCoT("t", bbox_2d=((1, 2, 1001, 4),)), "image", ["bbox_out_of_range"]),
        (TCoT("t", bbox_2d=((5, 2, 1, 4),)), "image", ["bbox_swapped"]),
        (TCoT("t", bbox_2d=((1, 2, 1, 4),)), "image", ["bbox_degenerate"]),
        (TCoT("t", bbox_2d=((1, 2, 3),)), "image", ["bbox_malformed"]),
        (TCoT("t", bbox_2d=((1, 2, float("nan"), 4),)), "image", ["bbox_malformed"]),
        (TCoT("t", key_frames=(1, 8)), "video", []),
        (TCoT("t", key_frames=(1, 9)), "video", ["frame_out_of_range"]),
        (TCoT("t", key_frames=(0,)), "video", ["frame_out_of_range"]),
        (TCoT("t", key_frames=(2, 2)), "video", ["frame_duplicate"]),
        (TCoT("t", key_frames=("2",)), "video", ["frame_not_int"]),  # type: ignore[arg-type]
        (TCoT("t", text_keywords=("a",)), "video", ["wrong_cue"]),
    ],
)
def test_validate(tcot: TCoT, modality: str, codes: list[str]) -> None:
    assert [p.code for p in validate(tcot, modality)] == codes  # type: ignore[arg-type]


def test_validate_uses_num_frames() -> None:
    assert validate(TCoT("t", key_frames=(4,)), "video", num_frames=4) == []
    assert [p.code for p in validate(TCoT("t", key_frames=(5,)), "video", num_frames=4)] == [
        "frame_out_of_range"
    ]
    assert validate(TCoT("t", key_frames=(16,)), "video", num_frames=16) == []


def test_validate_rejects_unknown_modality() -> None:
    with pytest.raises(ValueError, match="modality"):
        validate(TCoT("t"), "audio")  # type: ignore[arg-type]


# ============================================================================================== render


def test_render_is_canonical() -> None:
    t = TCoT("A dog.", bbox_2d=((1, 2, 3, 4.5),), rethink="Dog.", answer="A dog on grass.")
    assert render(t) == (
        '<thinking>A dog. {"bbox_2d": [[1, 2, 3, 4.5]]}</thinking>\n'
        "<rethink>Dog.</rethink>\n<answer>A dog on grass.</answer>"
    )
    assert (
        render(TCoT("", key_frames=(2,)))
        == '<thinking>{"key_frames": [2]}</thinking>\n<rethink></rethink>\n<answer></answer>'
    )
    assert (
        render(TCoT("only prose"))
        == "<thinking>only prose</thinking>\n<rethink></rethink>\n<answer></answer>"
    )


def test_render_escapes_tag_and_fence_characters_in_keywords() -> None:
    t = TCoT("t", text_keywords=("a<b", "</thinking>", "```json"), rethink="r", answer="a")
    text = render(t)
    assert text.count("</thinking>") == 1 and "```" not in text
    assert parse(text).tcot == t


@pytest.mark.parametrize(
    "t",
    [
        TCoT("t", text_keywords=("dog", "red car"), rethink="r", answer="a"),
        TCoT("t", bbox_2d=((0, 0, 1000, 1000), (1.5, 2.25, 3.0, 4.0)), rethink="r", answer="a"),
        TCoT("", key_frames=(8, 1, 3), rethink="", answer="a"),
        TCoT("t", bbox_2d=(), rethink="r", answer="a"),
        TCoT("t", rethink="r", answer="a"),
    ],
)
def test_round_trip(t: TCoT) -> None:
    assert parse(render(t)).tcot == t


# =========================================================================================== format_ok


@pytest.mark.parametrize(
    "text,modality,expected",
    [
        (wrap('x {"text_keywords": ["a"]}'), "text", True),
        (wrap('x {"bbox_2d": [1, 2, 30, 40]}'), "image", True),
        (wrap('x {"key_frames": [1, 8]}'), "video", True),
        (wrap('x ```json\n{"key_frames": [1]}\n```'), "video", True),  # JSON syntax repair tolerated
        ("Sure!\n" + wrap('x {"text_keywords": ["a"]}'), "text", True),  # outside text: official allows
        (wrap('x {"text_keywords": ["a"]}'), "image", False),  # wrong cue
        (wrap('x {"bbox_2d": []}'), "image", False),  # empty cue
        (wrap("x"), "text", False),  # no cue
        (wrap('x {"key_frames": [9]}'), "video", False),  # out of range
        (wrap('x {"key_frames": [1, 1]}'), "video", False),  # duplicate
        (wrap('x {"key_frames": ["1"]}'), "video", False),  # not int
        (wrap('x {"bbox_2d": [[300, 400, 100, 200]]}'), "image", False),  # swapped
        (wrap('x {"bbox_2d": [[0, 0, 1200, 40]]}'), "image", False),  # clamped
        (wrap('x {"bbox_2d": [[10, 0, 10, 40]]}'), "image", False),  # degenerate
        (wrap('x {"bbox_2d": oops}'), "image", False),  # invalid JSON
        (
            '<thinking>x {"text_keywords": ["a"]}</thinking><rethinking>r</rethinking><answer>a</answer>',
            "text",
            False,
        ),
        ('<thinking>x {"text_keywords": ["a"]}</thinking><answer>a</answer>', "text", False),
        (wrap('x {"text_keywords": ["a"]}') + "<answer>b</answer>", "text", False),  # repeated section
    ],
)
def test_format_ok(text: str, modality: str, expected: bool) -> None:
    assert format_ok(text, modality) is expected  # type: ignore[arg-type]


def test_format_ok_strict_tags_only_is_the_official_pattern() -> None:
    assert format_ok(wrap("no cue at all"), "image", strict_tags_only=True)
    assert format_ok(
        "pre <thinking></thinking>x<rethink></rethink><answer></answer>", "text", strict_tags_only=True
    )
    assert not format_ok(
        "<thinking>x</thinking><rethinking>r</rethinking><answer>a</answer>", "text", strict_tags_only=True
    )
    assert not format_ok(
        "<answer>a</answer><thinking>t</thinking><rethink>r</rethink>", "text", strict_tags_only=True
    )


def test_format_ok_num_frames() -> None:
    text = wrap('x {"key_frames": [12]}')
    assert not format_ok(text, "video")
    assert format_ok(text, "video", num_frames=16)


def test_problem_details_are_json_safe_strings() -> None:
    result = parse(wrap('x {"bbox_2d": [[1, 2, 3], [4, 5, 6, 7]], "key_frames": [1]}'))
    json.dumps([{"code": p.code, "detail": p.detail} for p in result.problems])
    assert all(str(p).startswith(p.code + ": ") for p in result.problems)
