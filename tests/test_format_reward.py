"""rewards.format_reward: paper version (tags and cue) and the official tags-only variant."""

from __future__ import annotations

import pytest

from embedrl.rewards import completion_text, format_reward

GOOD_TEXT = '<thinking>x {"text_keywords": ["dog"]}</thinking><rethink>r</rethink><answer>a</answer>'
GOOD_IMAGE = '<thinking>x {"bbox_2d": [[10, 20, 300, 400]]}</thinking><rethink>r</rethink><answer>a</answer>'
GOOD_VIDEO = '<thinking>x {"key_frames": [1, 8]}</thinking><rethink>r</rethink><answer>a</answer>'
TAGS_ONLY = "<thinking>x</thinking><rethink>r</rethink><answer>a</answer>"
NO_TAGS = "A dog."


def test_paper_format_reward_needs_the_right_cue() -> None:
    completions = [GOOD_TEXT, GOOD_IMAGE, GOOD_VIDEO, GOOD_TEXT, TAGS_ONLY, NO_TAGS]
    modalities = ["text", "image", "video", "image", "text", "text"]
    assert format_reward(completions, modalities) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_strict_tags_only_variant() -> None:
    completions = [GOOD_TEXT, GOOD_TEXT, TAGS_ONLY, NO_TAGS]
    modalities = ["text", "image", "video", "text"]
    assert format_reward(completions, modalities, strict_tags_only=True) == [1.0, 1.0, 1.0, 0.0]


def test_num_frames_per_completion() -> None:
    late = '<thinking>x {"key_frames": [12]}</thinking><rethink>r</rethink><answer>a</answer>'
    assert format_reward([late, late], ["video", "video"], num_frames=[8, 16]) == [0.0, 1.0]
    assert format_reward([late], ["video"], num_frames=16) == [1.0]
    assert format_reward([GOOD_VIDEO], ["video"], num_frames=4) == [0.0]


def test_conversational_completions() -> None:
    conversational = [
        [{"role": "assistant", "content": GOOD_TEXT}],
        [{"role": "assistant", "content": [{"type": "text", "text": GOOD_IMAGE}]}],
        {"role": "assistant", "content": NO_TAGS},
    ]
    assert format_reward(conversational, ["text", "image", "text"]) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "completion,text",
    [
        ("a", "a"),
        ([], ""),
        (None, ""),
        ([{"content": None}], ""),
        ([{"role": "user", "content": "q"}, {"content": "ans"}], "ans"),
    ],
)
def test_completion_text(completion: object, text: str) -> None:
    assert completion_text(completion) == text


def test_garbage_completions_score_zero() -> None:
    assert format_reward(["", "\x00", "<thinking>", "{" * 1000], ["text"] * 4) == [0.0] * 4


def test_mismatched_lengths_and_unknown_modalities_raise() -> None:
    with pytest.raises(ValueError, match="modalities"):
        format_reward([GOOD_TEXT], ["text", "image"])
    with pytest.raises(ValueError, match="num_frames"):
        format_reward([GOOD_TEXT], ["text"], num_frames=[8, 8])
    with pytest.raises(ValueError, match="unknown modalities"):
        format_reward([GOOD_TEXT], ["audio"])


def test_empty_batch() -> None:
    assert format_reward([], []) == []
