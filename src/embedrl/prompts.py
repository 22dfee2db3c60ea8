"""Prompts of the Reasoner, the process-reward judge and the relevance filter.

The seven Reasoner prompt kinds are those of the paper (App. F) and the released code, chosen per item as the
released RL code chooses them: one per side (query or candidate) and input modality, plus a separate kind for
text queries whose targets are videos. Each kind knows the cue its T-CoT must carry (`PromptKind.cue`). The
reasoner, the teacher annotator and the RL dataset all pick prompts with `select_prompt_kind`, so they cannot
disagree.

All texts are written for this project from the published descriptions of the prompts (paper App. C and F);
none is copied from the official repository. Every Reasoner prompt holds one worked example in the exact
output format, rendered by `embedrl.tcot.render`, because small or untrained models follow examples more than
rules.

`reasoner_prompt` returns the user-turn text only; the caller places the image or the frames before it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, Literal

from .tcot import CUE_FOR_MODALITY, DEFAULT_NUM_FRAMES, TCoT, render

Side = Literal["query", "candidate"]


class PromptKind(str, Enum):
    """The seven Reasoner prompt kinds: the released code's `PROMPT_*` templates, per side and modality."""

    QUERY_TEXT_TO_IMAGE = "query_text_to_image"
    """A text-only query whose targets are not videos (text→image, or a generic text query)."""
    QUERY_IMAGE = "query_image"
    """A query with an image (retrieval, classification, QA, grounding, document pages)."""
    QUERY_VIDEO = "query_video"
    """A query with a video."""
    QUERY_TEXT_TO_VIDEO = "query_text_to_video"
    """A text-only query whose targets are videos."""
    CANDIDATE_TEXT = "candidate_text"
    CANDIDATE_IMAGE = "candidate_image"
    CANDIDATE_VIDEO = "candidate_video"

    @property
    def side(self) -> Side:
        return "query" if self.value.startswith("query") else "candidate"

    @property
    def input_modality(self) -> str:
        return _INPUT_MODALITY[self]

    @property
    def cue(self) -> str:
        """The cue key the T-CoT must carry: text_keywords, bbox_2d or key_frames."""
        return CUE_FOR_MODALITY[self.input_modality]

    @property
    def needs_text(self) -> bool:
        """Text-only kinds have nothing to reason about without text."""
        return self.input_modality == "text"


_INPUT_MODALITY: dict[PromptKind, str] = {
    PromptKind.QUERY_TEXT_TO_IMAGE: "text",
    PromptKind.QUERY_IMAGE: "image",
    PromptKind.QUERY_VIDEO: "video",
    PromptKind.QUERY_TEXT_TO_VIDEO: "text",
    PromptKind.CANDIDATE_TEXT: "text",
    PromptKind.CANDIDATE_IMAGE: "image",
    PromptKind.CANDIDATE_VIDEO: "video",
}

_SIDE_ALIASES = {
    "query": "query",
    "qry": "query",
    "candidate": "candidate",
    "cand": "candidate",
    "pos": "candidate",
    "positive": "candidate",
    "target": "candidate",
}


def select_prompt_kind(side: str, modality: str, target_modality: str | None = None) -> PromptKind:
    """The prompt kind for an item, chosen as the released RL code chooses it.

    `side` is "query" or "candidate" ("pos", "positive" and "target" are accepted for the candidate side).
    `modality` is the item's input modality ("text", "image" or "video", as `Item.modality` gives it).
    `target_modality` matters only for text queries: one that mentions "video" selects QUERY_TEXT_TO_VIDEO,
    anything else QUERY_TEXT_TO_IMAGE.
    """
    canonical_side = _SIDE_ALIASES.get(str(side).lower())
    if canonical_side is None:
        raise ValueError(f"side must be 'query' or 'candidate', got {side!r}")
    if modality not in CUE_FOR_MODALITY:
        raise ValueError(f"modality must be one of {sorted(CUE_FOR_MODALITY)}, got {modality!r}")
    if canonical_side == "candidate":
        return {
            "text": PromptKind.CANDIDATE_TEXT,
            "image": PromptKind.CANDIDATE_IMAGE,
            "video": PromptKind.CANDIDATE_VIDEO,
        }[modality]
    if modality == "image":
        return PromptKind.QUERY_IMAGE
    if modality == "video":
        return PromptKind.QUERY_VIDEO
    if target_modality is not None and "video" in str(target_modality).lower():
        return PromptKind.QUERY_TEXT_TO_VIDEO
    return PromptKind.QUERY_TEXT_TO_IMAGE


# ========================================================================================= reasoner

_ROLE = {
    "query": (
        "You are a visual reasoning assistant working for a multimodal search engine. You receive a search "
        "query and write a short, evidence-based analysis of it, which the engine uses to find the best match."
    ),
    "candidate": (
        "You are a visual reasoning assistant working for a multimodal search engine. You receive one item of "
        "the collection being searched and write a short, evidence-based analysis of it, which the engine uses "
        "to match it with the queries it answers."
    ),
}

_CUE_RULE = {
    "text_keywords": (
        'a JSON object {"text_keywords": ["...", "..."]} listing the words or short phrases that a match '
        "must reflect"
    ),
    "bbox_2d": (
        'a JSON object {"bbox_2d": [[x1, y1, x2, y2], ...]} with one box per region that carries the evidence. '
        "Coordinates are relative to the image on a 0 to 1000 scale: (0, 0) is the top-left corner and "
        "(1000, 1000) the bottom-right one, with x1 < x2 and y1 < y2. Box specific regions; never use the "
        "whole image as a box"
    ),
    "key_frames": (
        'a JSON object {"key_frames": [i, ...]} with the numbers of the frames that show the decisive moments. '
        "Frames are numbered from 1 to {n} in the order shown; use no other numbers"
    ),
}

_ANSWER_RULE = {
    "query": "restate what the query is looking for in your own words: short, with its meaning unchanged",
    "candidate": "describe the item briefly in your own words, keeping what it actually shows or says",
}

_HINTS: dict[PromptKind, tuple[str, ...]] = {
    PromptKind.QUERY_TEXT_TO_IMAGE: (
        "Caption retrieval: name the objects, attributes and scene the image must show.",
        "News retrieval: name the event, the people, the place and the time the picture should cover.",
        "Dialogue retrieval: merge the turns of the conversation into what the user finally wants to see.",
        "Question-based retrieval: state what a correct answer or a relevant picture has to contain.",
    ),
    PromptKind.QUERY_IMAGE: (
        "Retrieval: find the main subject and what sets this image apart from similar ones.",
        "Classification: look for the visual features that decide the category.",
        "Question answering: locate the region that holds the answer and read it carefully.",
        "Object identification or grounding: find the object named in the instruction and where it is.",
        "Document pages: box the title, table, chart or paragraph that matters for the instruction.",
    ),
    PromptKind.QUERY_VIDEO: (
        "Video captioning: describe the main actors, actions and setting in the order they happen.",
        "Video question answering: pick the frames that hold the answer and say what happens in them.",
        "Video retrieval: name the events and the scene that make this video distinctive.",
    ),
    PromptKind.QUERY_TEXT_TO_VIDEO: (
        "Video retrieval: name the visual content a matching video must show.",
        "Scene retrieval: describe the setting, the lighting and the atmosphere.",
        "Action retrieval: say who does what and in which order; mind how the scene changes over time.",
    ),
    PromptKind.CANDIDATE_TEXT: (
        "A label or a short answer: spell out what it denotes, so it can meet queries that describe it.",
        "A caption or a passage: keep its concrete content (objects, actions, names, numbers).",
    ),
    PromptKind.CANDIDATE_IMAGE: (
        "Box the key or most important element of the image, and any other region a query might ask about.",
        "Read visible text (signs, titles, labels) when it identifies the image.",
    ),
    PromptKind.CANDIDATE_VIDEO: (
        "Pick the few frames that summarise the video best; fewer, well-chosen frames are better.",
        "Describe the actions in the order they happen.",
    ),
}

_EXAMPLES: dict[PromptKind, TCoT] = {
    PromptKind.QUERY_TEXT_TO_IMAGE: TCoT(
        thinking="The query describes a street scene with a cyclist. The man, the red bicycle and the bakery "
        "behind him are the elements a matching image needs.",
        text_keywords=("man", "red bicycle", "riding", "bakery storefront"),
        rethink="The red bicycle in motion in front of a bakery is the most distinctive detail.",
        answer="A man rides a red bike past a bakery.",
    ),
    PromptKind.QUERY_IMAGE: TCoT(
        thinking="The image shows a kitchen. A grey cat sits on the counter next to a steel kettle below the "
        "window.",
        bbox_2d=((412, 305, 640, 598), (655, 280, 760, 470)),
        rethink="The cat on the counter is the subject; the kettle and the window only give context.",
        answer="A grey cat sitting on a kitchen counter beside a kettle.",
    ),
    PromptKind.QUERY_VIDEO: TCoT(
        thinking="Frames 1 to 3 show hands shaping dough on a tray. Frame 5 shows the tray going into an oven "
        "and frame 8 shows a baked loaf.",
        key_frames=(2, 5, 8),
        rethink="The video follows bread from shaping the dough to the finished loaf.",
        answer="Someone shapes dough, bakes it and takes out a loaf of bread.",
    ),
    PromptKind.QUERY_TEXT_TO_VIDEO: TCoT(
        thinking="The query asks for a dog catching a frisbee on a beach. The motion matters: the dog runs, "
        "jumps and catches.",
        text_keywords=("dog", "frisbee", "jumping catch", "sandy beach"),
        rethink="A matching video must show the jump and the catch in that order, on sand near the sea.",
        answer="A dog leaps and catches a frisbee on the beach.",
    ),
    PromptKind.CANDIDATE_TEXT: TCoT(
        thinking="The text is a class label naming a dog breed known for its long golden coat.",
        text_keywords=("golden retriever", "dog", "golden coat"),
        rethink="Queries showing a large dog with a golden coat should reach this label.",
        answer="A golden retriever, a dog breed with a long golden coat.",
    ),
    PromptKind.CANDIDATE_IMAGE: TCoT(
        thinking="The photo shows a white lighthouse with a red top standing on dark rocks by the sea.",
        bbox_2d=((430, 120, 565, 780),),
        rethink="The lighthouse is the key element; the rocks and the clear sky set the scene.",
        answer="A white lighthouse on a rocky shore under a clear sky.",
    ),
    PromptKind.CANDIDATE_VIDEO: TCoT(
        thinking="Frame 1 shows a chef chopping peppers, frame 4 shows them stirred in a wok and frame 7 shows "
        "the dish being served.",
        key_frames=(1, 4, 7),
        rethink="The video is a short cooking sequence ending with a served stir-fry.",
        answer="A chef chops vegetables, stir-fries them and serves the dish.",
    ),
}


def example_tcot(kind: PromptKind | str) -> TCoT:
    """The worked example shown in the prompt of `kind`."""
    return _EXAMPLES[PromptKind(kind)]


def reasoner_prompt(
    kind: PromptKind | str,
    *,
    text: str | None = None,
    instruction: str | None = None,
    num_frames: int | None = None,
    fps: float = 2.0,
    answer: str | None = None,
) -> str:
    """The user-turn text of the Reasoner for one item. The caller puts the image or frames before it.

    `text` is the item's text (a query, a caption, a label); `instruction` the task instruction, when the
    dataset has one. For video kinds, `num_frames` (default 8) and `fps` describe the frames shown. With
    `answer`, the answer-conditioned variant for the teacher annotator is produced (the official pipeline uses
    such variants but publishes none, so this one is our own): the reference answer guides the evidence but
    must not be copied.
    """
    kind = PromptKind(kind)
    text = text.strip() if isinstance(text, str) else None
    instruction = instruction.strip() if isinstance(instruction, str) else None
    if kind.needs_text and not text:
        raise ValueError(f"the {kind.value} prompt needs a non-empty text")
    frames = DEFAULT_NUM_FRAMES if num_frames is None else int(num_frames)
    if frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")

    side = kind.side
    cue_rule = _CUE_RULE[kind.cue].replace("{n}", str(frames))
    lines = [
        _ROLE[side],
        "",
        "Rules:",
        "1. Be concise and stay grounded in what is given; each reasoning step is one or two sentences. Do not "
        "invent details.",
        "2. Write exactly three parts in this order: <thinking>...</thinking>, then <rethink>...</rethink>, then "
        "<answer>...</answer>. Write nothing before, between or after them.",
        f"3. In <thinking>, give your evidence steps and end with {cue_rule}.",
        "4. In <rethink>, review the reasoning and keep what matters for finding the right match.",
        f"5. In <answer>, {_ANSWER_RULE[side]}.",
        "",
        "Hints by task type:",
        *(f"- {hint}" for hint in _HINTS[kind]),
        "",
        "Example of the format (the content is only an illustration):",
        render(_EXAMPLES[kind]),
        "",
    ]
    lines.extend(_input_lines(kind, text, instruction, frames, fps))
    if answer is not None and answer.strip():
        lines += [
            "",
            f"Reference answer: {answer.strip()}",
            "The reference answer is the known correct match. Let it guide which evidence you select, but do "
            "not copy it and do not mention it; your <answer> must be your own restatement.",
        ]
    lines += ["", _CLOSING[kind.input_modality]]
    return "\n".join(lines)


_CLOSING = {
    "text": "Now write your response.",
    "image": "Now analyse the image above and write your response.",
    "video": "Now analyse the frames above and write your response.",
}


# (prompt kind, item, number of frames shown) -> the Reasoner's user text; replaces `reasoner_prompt`.
PromptFn = Callable[[PromptKind, Any, int], str]


def item_prompt(
    item: Any,
    side: str,
    target_modality: str | None = None,
    *,
    num_frames: int = 0,
    fps: float = 2.0,
    answer: str | None = None,
    prompt_fn: PromptFn | None = None,
) -> str:
    """The Reasoner's user text for one `Item` whose media show `num_frames` frames: the one builder behind
    inference (`Reasoner`), teacher annotation and the RL rollout prompts, so the three cannot disagree.
    `prompt_fn` replaces the built-in wording (a short prompt for a small model, say) everywhere at once."""
    kind = select_prompt_kind(side, item.modality, target_modality)
    if prompt_fn is not None:
        return prompt_fn(kind, item, num_frames)
    return reasoner_prompt(
        kind,
        text=item.text,
        instruction=item.instruction,
        num_frames=num_frames or None,
        fps=fps,
        answer=answer,
    )


def _input_lines(
    kind: PromptKind, text: str | None, instruction: str | None, frames: int, fps: float
) -> list[str]:
    what = "Query" if kind.side == "query" else "Item"
    lines = [f"{what}:"]
    if kind.input_modality == "image":
        lines.append("- Image: shown above.")
    elif kind.input_modality == "video":
        lines.append(
            f"- Video: {frames} frames sampled at {fps:g} FPS, shown above and numbered 1 to {frames}."
        )
    if instruction:
        lines.append(f"- Instruction: {instruction}")
    if text:
        label = "Text" if kind.side == "candidate" or kind.input_modality != "text" else "Query text"
        lines.append(f"- {label}: {text}")
    return lines


# ============================================================================================ judge


def format_judge_anchor(instruction_or_text: str | None, reasoning: str, side: Side | str) -> str:
    """One entry of the judge prompt, in the released reward code's layout, for an anchor or a candidate.

    Query side: ``"Instruction: …\\n\\nReasoning: …"``; candidate side: ``"Text: …\\n\\nReasoning: …"``. Without an
    instruction or text only the reasoning is given.
    """
    canonical = _SIDE_ALIASES.get(str(side).lower())
    if canonical is None:
        raise ValueError(f"side must be 'query' or 'candidate', got {side!r}")
    label = "Instruction" if canonical == "query" else "Text"
    head = (instruction_or_text or "").strip()
    body = f"Reasoning: {reasoning.strip()}"
    return f"{label}: {head}\n\n{body}" if head else body


def judge_prompt(anchor: str, candidates: Sequence[str]) -> str:
    """The listwise prompt of the process-reward judge: pick the candidate most relevant to the anchor.

    The caller shuffles `candidates` against the judge's position bias, as the paper does; the judge answers
    with a 1-based number.
    """
    if not candidates:
        raise ValueError("the judge needs at least one candidate")
    count = len(candidates)
    parts = [
        "You are judging reasoning written for a multimodal search engine.",
        "",
        "The anchor below is an instruction or a text together with the reasoning written about it. Each "
        "numbered candidate is the reasoning written about a possible match. Choose the candidate whose "
        "reasoning is most relevant to the anchor: it describes the same content or meets the same need. "
        "Judge the content only, not the length, the style or the position in the list.",
        "",
        "Anchor:",
        anchor.strip(),
        "",
        "Candidates:",
    ]
    for number, candidate in enumerate(candidates, start=1):
        parts += [f"[{number}]", candidate.strip(), ""]
    parts.append(
        f"Reply with the number of the most relevant candidate only, an integer from 1 to {count}, and "
        "nothing else."
    )
    return "\n".join(parts)


_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
}
_CHOICE = re.compile(r"(?<!\d)(\d{1,6})(?!\d)|\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)


def _strip_thinking(text: str) -> str:
    # A judge served as a thinking model writes its deliberation first; the verdict follows it.
    return _THINK_BLOCK.sub(" ", text)


def parse_judge_answer(text: str | None, num_candidates: int) -> int | None:
    """The 1-based candidate the judge chose, or None when no number in 1..num_candidates comes first."""
    if not isinstance(text, str):
        return None
    match = _CHOICE.search(_strip_thinking(text))
    if match is None:
        return None
    choice = int(match.group(1)) if match.group(1) else _NUMBER_WORDS[match.group(2).lower()]
    return choice if 1 <= choice <= num_candidates else None


# ================================================================================= relevance filter


def relevance_filter_prompt(task: str, query_cot: str, pos_cot: str) -> str:
    """The judgment prompt that filters teacher T-CoTs (paper App. C.2). "Yes" means drop the pair."""
    return "\n".join(
        [
            "You check training pairs for a multimodal search engine. Each pair has a task, the reasoning written "
            "about the query and the reasoning written about its correct match.",
            "",
            f"Task: {task.strip()}",
            "",
            "Reasoning about the query:",
            query_cot.strip(),
            "",
            "Reasoning about the correct match:",
            pos_cot.strip(),
            "",
            "Are the two reasonings clearly unrelated to each other or to the task, or do their main conclusions "
            "contradict each other?",
            'Answer "Yes" only when this is obvious. Answer "No" in every other case, including when you are '
            "unsure.",
            "Reply with one word: Yes or No.",
        ]
    )


_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_relevance_answer(text: str | None) -> bool | None:
    """True for "Yes" (irrelevant or contradicting: drop the pair), False for "No" (keep), None otherwise."""
    if not isinstance(text, str):
        return None
    match = _YES_NO.search(_strip_thinking(text))
    if match is None:
        return None
    return match.group(1).lower() == "yes"
