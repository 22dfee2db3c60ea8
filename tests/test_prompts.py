"""Reasoner prompt kinds and texts, the judge prompt and the relevance-filter prompt."""

from __future__ import annotations

import re

import pytest

from embedrl.prompts import (
    PromptKind,
    example_tcot,
    format_judge_anchor,
    judge_prompt,
    parse_judge_answer,
    parse_relevance_answer,
    reasoner_prompt,
    relevance_filter_prompt,
    select_prompt_kind,
)
from embedrl.tcot import format_ok, parse, render

ALL_KINDS = list(PromptKind)


def prompt_for(kind: PromptKind, **kwargs) -> str:
    kwargs.setdefault("text", "A man riding a red bicycle.")
    return reasoner_prompt(kind, **kwargs)


# ============================================================================================ selection


@pytest.mark.parametrize(
    "side,modality,target,kind",
    [
        ("query", "text", None, PromptKind.QUERY_TEXT_TO_IMAGE),
        ("query", "text", "image", PromptKind.QUERY_TEXT_TO_IMAGE),
        ("query", "text", "text", PromptKind.QUERY_TEXT_TO_IMAGE),
        ("query", "text", "video", PromptKind.QUERY_TEXT_TO_VIDEO),
        ("query", "text", "Video", PromptKind.QUERY_TEXT_TO_VIDEO),
        ("query", "image", None, PromptKind.QUERY_IMAGE),
        ("query", "image", "video", PromptKind.QUERY_IMAGE),
        ("query", "video", "text", PromptKind.QUERY_VIDEO),
        ("candidate", "text", None, PromptKind.CANDIDATE_TEXT),
        ("candidate", "text", "video", PromptKind.CANDIDATE_TEXT),
        ("candidate", "image", None, PromptKind.CANDIDATE_IMAGE),
        ("candidate", "video", None, PromptKind.CANDIDATE_VIDEO),
        ("pos", "image", None, PromptKind.CANDIDATE_IMAGE),
        ("positive", "video", None, PromptKind.CANDIDATE_VIDEO),
    ],
)
def test_select_prompt_kind(side: str, modality: str, target: str | None, kind: PromptKind) -> None:
    assert select_prompt_kind(side, modality, target) is kind


@pytest.mark.parametrize("side,modality", [("negative", "text"), ("query", "audio"), ("candidate", "")])
def test_select_prompt_kind_rejects_unknown_values(side: str, modality: str) -> None:
    with pytest.raises(ValueError):
        select_prompt_kind(side, modality)


@pytest.mark.parametrize(
    "kind,cue,side",
    [
        (PromptKind.QUERY_TEXT_TO_IMAGE, "text_keywords", "query"),
        (PromptKind.QUERY_IMAGE, "bbox_2d", "query"),
        (PromptKind.QUERY_VIDEO, "key_frames", "query"),
        (PromptKind.QUERY_TEXT_TO_VIDEO, "text_keywords", "query"),
        (PromptKind.CANDIDATE_TEXT, "text_keywords", "candidate"),
        (PromptKind.CANDIDATE_IMAGE, "bbox_2d", "candidate"),
        (PromptKind.CANDIDATE_VIDEO, "key_frames", "candidate"),
    ],
)
def test_each_kind_knows_its_cue_and_side(kind: PromptKind, cue: str, side: str) -> None:
    assert kind.cue == cue and kind.side == side
    assert PromptKind(kind.value) is kind


def test_there_are_seven_kinds() -> None:
    assert len(ALL_KINDS) == 7


# ============================================================================================ reasoner


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_prompt_example_is_a_valid_tcot_for_its_modality(kind: PromptKind) -> None:
    example = example_tcot(kind)
    assert example.cue_kind == kind.cue
    prompt = prompt_for(kind)
    assert render(example) in prompt
    # The example in the prompt is exactly what the format reward pays for.
    assert format_ok(render(example), kind.input_modality)
    assert parse(render(example)).problems == []


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_prompt_names_tags_cue_and_hints(kind: PromptKind) -> None:
    prompt = prompt_for(kind)
    for tag in ("<thinking>", "</thinking>", "<rethink>", "</rethink>", "<answer>", "</answer>"):
        assert tag in prompt
    assert f'{{"{kind.cue}"' in prompt
    assert "Hints by task type:" in prompt
    assert "one or two sentences" in prompt
    assert "Reference answer" not in prompt


def test_prompts_differ_between_kinds() -> None:
    prompts = {prompt_for(kind) for kind in ALL_KINDS}
    assert len(prompts) == 7


def test_task_type_hints() -> None:
    assert "News retrieval" in prompt_for(PromptKind.QUERY_TEXT_TO_IMAGE)
    assert "Dialogue retrieval" in prompt_for(PromptKind.QUERY_TEXT_TO_IMAGE)
    assert "Classification" in prompt_for(PromptKind.QUERY_IMAGE)
    assert "Video question answering" in prompt_for(PromptKind.QUERY_VIDEO)
    assert "Action retrieval" in prompt_for(PromptKind.QUERY_TEXT_TO_VIDEO)


def test_image_prompts_explain_relative_boxes() -> None:
    for kind in (PromptKind.QUERY_IMAGE, PromptKind.CANDIDATE_IMAGE):
        prompt = prompt_for(kind)
        assert "0 to 1000" in prompt
        assert "never use the whole image as a box" in prompt
        assert prompt.endswith("Now analyse the image above and write your response.")


def test_video_prompt_states_frames_and_fps() -> None:
    prompt = reasoner_prompt(PromptKind.QUERY_VIDEO, text="What is baked?", num_frames=6, fps=1.5)
    assert "6 frames sampled at 1.5 FPS" in prompt
    assert "numbered from 1 to 6" in prompt
    assert "8 frames" in reasoner_prompt(PromptKind.CANDIDATE_VIDEO, text=None)


def test_text_and_instruction_are_included() -> None:
    prompt = reasoner_prompt(
        PromptKind.QUERY_IMAGE,
        text="What colour is the car?",
        instruction="Answer the question about the image.",
    )
    assert "- Instruction: Answer the question about the image." in prompt
    assert "- Text: What colour is the car?" in prompt
    assert "- Query text: A dog." in reasoner_prompt(PromptKind.QUERY_TEXT_TO_IMAGE, text=" A dog. ")


def test_image_and_video_kinds_work_without_text() -> None:
    prompt = reasoner_prompt(PromptKind.CANDIDATE_IMAGE, text=None)
    assert "- Image: shown above." in prompt and "- Text:" not in prompt


@pytest.mark.parametrize(
    "kind", [PromptKind.QUERY_TEXT_TO_IMAGE, PromptKind.QUERY_TEXT_TO_VIDEO, PromptKind.CANDIDATE_TEXT]
)
def test_text_kinds_need_text(kind: PromptKind) -> None:
    with pytest.raises(ValueError, match="non-empty text"):
        reasoner_prompt(kind, text="  ")


@pytest.mark.parametrize("kwargs", [{"num_frames": 0}, {"fps": 0}])
def test_bad_video_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        reasoner_prompt(PromptKind.QUERY_VIDEO, text="x", **kwargs)


def test_answer_conditioned_variant() -> None:
    plain = prompt_for(PromptKind.QUERY_IMAGE)
    with_answer = prompt_for(PromptKind.QUERY_IMAGE, answer="Text: a red bike | Image Path: img/1.jpg")
    assert "Reference answer: Text: a red bike | Image Path: img/1.jpg" in with_answer
    assert "do not copy it" in with_answer
    assert with_answer.startswith(plain.rsplit("\n", 1)[0])
    assert with_answer.endswith("Now analyse the image above and write your response.")
    assert prompt_for(PromptKind.QUERY_IMAGE, answer="  ") == plain


def test_prompt_accepts_kind_value_string() -> None:
    assert reasoner_prompt("candidate_text", text="dog") == reasoner_prompt(
        PromptKind.CANDIDATE_TEXT, text="dog"
    )


# =============================================================================================== judge


def test_format_judge_anchor() -> None:
    assert format_judge_anchor("Find the photo.", " It shows a dog. ", "query") == (
        "Instruction: Find the photo.\n\nReasoning: It shows a dog."
    )
    assert format_judge_anchor("a dog", "r", "candidate") == "Text: a dog\n\nReasoning: r"
    assert format_judge_anchor(None, "r", "pos") == "Reasoning: r"
    with pytest.raises(ValueError):
        format_judge_anchor("x", "r", "other")


def test_judge_prompt_lists_numbered_candidates() -> None:
    prompt = judge_prompt("Instruction: x\n\nReasoning: y", ["first cand", "second cand", "third cand"])
    assert "Instruction: x\n\nReasoning: y" in prompt
    positions = [
        prompt.index(f"[{i}]\n{word} cand") for i, word in enumerate(("first", "second", "third"), 1)
    ]
    assert positions == sorted(positions)
    assert "[4]" not in prompt
    assert "an integer from 1 to 3" in prompt
    assert "position" in prompt  # tells the judge to ignore list position (candidates are shuffled)
    with pytest.raises(ValueError):
        judge_prompt("a", [])


@pytest.mark.parametrize(
    "text,n,expected",
    [
        ("2", 4, 2),
        (" 3\n", 4, 3),
        ("Candidate [4]", 4, 4),
        ("The answer is 1.", 4, 1),
        ("5", 4, None),
        ("0", 4, None),
        ("none of them", 4, None),
        ("", 4, None),
        (None, 4, None),
        ("two", 4, 2),
        ("<think>Maybe 1 or 3.</think>\n2", 4, 2),
        ("<think>unfinished 3", 4, None),
        ("12", 12, 12),
        ("1234567", 9, None),
    ],
)
def test_parse_judge_answer(text: str | None, n: int, expected: int | None) -> None:
    assert parse_judge_answer(text, n) == expected


# ==================================================================================== relevance filter


def test_relevance_filter_prompt() -> None:
    prompt = relevance_filter_prompt("Find the caption of the image.", "query reasoning", "pos reasoning")
    assert "Task: Find the caption of the image." in prompt
    assert prompt.index("query reasoning") < prompt.index("pos reasoning")
    assert re.search(r'"Yes" only when', prompt) and "unsure" in prompt
    assert prompt.endswith("Reply with one word: Yes or No.")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Yes", True),
        ("yes.", True),
        ("No", False),
        ("NO", False),
        ("No, they match.", False),
        ("<think>yes or no?</think> No", False),
        ("Not sure", None),
        ("", None),
        (None, None),
        ("Eyes", None),
    ],
)
def test_parse_relevance_answer(text: str | None, expected: bool | None) -> None:
    assert parse_relevance_answer(text) is expected
