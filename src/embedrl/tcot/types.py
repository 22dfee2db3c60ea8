"""The T-CoT's value types, its constants and the catalogue of problem codes.

The codes are explained one by one in the `embedrl.tcot` package docstring; `PROBLEM_CODES` holds the short
form that tools print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CueKind = Literal["text_keywords", "bbox_2d", "key_frames"]
Modality = Literal["text", "image", "video"]

CUE_KEYS: tuple[str, ...] = ("text_keywords", "bbox_2d", "key_frames")
CUE_FOR_MODALITY: dict[str, str] = {"text": "text_keywords", "image": "bbox_2d", "video": "key_frames"}
DEFAULT_NUM_FRAMES = 8
COORDINATE_MAX = 1000

PROBLEM_CODES: dict[str, str] = {
    "empty_input": "the text is empty or blank",
    "no_tags": "none of <thinking>, <rethink>, <answer> appears",
    "internal_error": "an unexpected error inside the parser",
    "missing_tag": "an opening or closing tag, or a whole section, is missing",
    "repeated_tag": "a section appears more than once; the first one is used",
    "misspelled_tag": "<rethinking> was written for <rethink>; accepted",
    "tags_out_of_order": "the sections are not in the order thinking, rethink, answer",
    "unmatched_tag": "a closing tag that closes no open section was ignored",
    "text_outside_tags": "non-blank text outside the sections was ignored",
    "empty_section": "a section is present but blank",
    "no_cue": "the T-CoT carries no cue",
    "cue_json_invalid": "the cue JSON cannot be read even after repair",
    "cue_json_repaired": "the cue JSON was read after repair",
    "cue_outside_thinking": "the cue was found outside <thinking>",
    "cue_merged": "the same cue key appeared in several JSON objects; merged",
    "multiple_cues": "more than one cue kind was given; the first is kept",
    "cue_not_list": "a scalar cue value was wrapped in a list",
    "wrong_cue": "the cue kind does not match the input modality",
    "cue_empty": "the cue list is empty",
    "keywords_malformed": "a keyword that is not a non-empty string was converted or dropped",
    "bbox_malformed": "a box entry that is not four finite numbers was dropped or converted",
    "bbox_swapped": "a box with x1 > x2 or y1 > y2",
    "bbox_clamped": "a coordinate outside 0-1000 was clamped",
    "bbox_out_of_range": "a coordinate outside 0-1000",
    "bbox_degenerate": "a box with zero width or height",
    "frame_not_int": "a frame index that is not an integer was converted or dropped",
    "frame_out_of_range": "a frame index outside 1..N",
    "frame_duplicate": "a repeated frame index",
}

FATAL_CODES = frozenset({"empty_input", "no_tags", "internal_error"})
TAG_DEFECT_CODES = frozenset(
    {"missing_tag", "repeated_tag", "misspelled_tag", "tags_out_of_order", "unmatched_tag"}
)
# A cue that had to be repaired value-wise means the model wrote it wrong; the reward must not pay for it.
# JSON *syntax* repairs (code fences, quotes) are tolerated: the evidence builder reads them the same way.
CUE_DEFECT_CODES = frozenset(
    {
        "cue_json_invalid",
        "cue_outside_thinking",
        "cue_merged",
        "multiple_cues",
        "cue_not_list",
        "keywords_malformed",
        "bbox_malformed",
        "bbox_swapped",
        "bbox_clamped",
        "frame_not_int",
        "frame_out_of_range",
        "frame_duplicate",
    }
)
FORMAT_BREAKING_CODES = TAG_DEFECT_CODES | CUE_DEFECT_CODES


@dataclass(frozen=True)
class TCoTProblem:
    """One defect found in a T-CoT: a stable `code` (one of `PROBLEM_CODES`) and a human `detail`."""

    code: str
    detail: str

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TCoT:
    """A parsed T-CoT. At most one cue field is set; an empty tuple is an empty cue, distinct from `None`.

    `thinking` is the prose of the ``<thinking>`` section without the cue JSON. Lists given to the constructor
    are turned into tuples so that the value is hashable; no other normalisation happens here (see `parse`).
    """

    thinking: str = ""
    text_keywords: tuple[str, ...] | None = None
    bbox_2d: tuple[Box, ...] | None = None
    key_frames: tuple[int, ...] | None = None
    rethink: str = ""
    answer: str = ""

    def __post_init__(self) -> None:
        if self.text_keywords is not None:
            object.__setattr__(self, "text_keywords", tuple(self.text_keywords))
        if self.bbox_2d is not None:
            object.__setattr__(self, "bbox_2d", tuple(tuple(box) for box in self.bbox_2d))
        if self.key_frames is not None:
            object.__setattr__(self, "key_frames", tuple(self.key_frames))
        set_cues = [key for key in CUE_KEYS if getattr(self, key) is not None]
        if len(set_cues) > 1:
            raise ValueError(f"a T-CoT carries at most one cue, got {set_cues}")

    @property
    def cue_kind(self) -> CueKind | None:
        for key in CUE_KEYS:
            if getattr(self, key) is not None:
                return key  # type: ignore[return-value]
        return None

    @property
    def cue_value(self) -> tuple | None:
        kind = self.cue_kind
        return None if kind is None else getattr(self, kind)


@dataclass
class ParseResult:
    """What `parse` found: the T-CoT (possibly partial), every problem, and the raw text."""

    tcot: TCoT | None
    problems: list[TCoTProblem] = field(default_factory=list)
    raw: str = ""
    tags_in_order: bool = False
    """True when all three sections have explicit opening and closing tags and come in order."""

    @property
    def ok(self) -> bool:
        """Tags complete and in order, a cue JSON was read, and no fatal problem."""
        return (
            self.tcot is not None
            and self.tags_in_order
            and self.tcot.cue_kind is not None
            and not any(p.fatal for p in self.problems)
        )

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.problems]

    def has(self, code: str) -> bool:
        return any(p.code == code for p in self.problems)
