"""The Traceability CoT (T-CoT) as a value: parse, validate, render, and turn into Embedder evidence.

A T-CoT is what the Reasoner writes for one item (method.md §2.1)::

    <thinking> evidence steps … {"bbox_2d": [[x1, y1, x2, y2], …]} </thinking>
    <rethink> refinement focused on what matters for retrieval </rethink>
    <answer> concise restatement </answer>

The JSON inside ``<thinking>`` carries exactly one *cue*, chosen by the input modality:

=========  ================  ==========================================================================
modality   cue key           value
=========  ================  ==========================================================================
text       ``text_keywords``  list of strings
image      ``bbox_2d``        list of boxes ``[x1, y1, x2, y2]`` in 0–1000 relative coordinates of the
                              first input image (a single flat box is accepted as one box)
video      ``key_frames``     list of **1-based** indices into the sampled frames (``i`` → ``frames[i-1]``)
=========  ================  ==========================================================================

`parse` never raises on any string: it returns a `ParseResult` holding the T-CoT (or a best-effort partial)
and a list of `TCoTProblem`, each with a stable machine-readable ``code``. `render` writes the canonical text,
and ``parse(render(t)).tcot == t`` for every valid T-CoT. `format_ok` is the check behind the format reward.
How the Embedder reads a T-CoT (crops, keyframes, its text pieces) is `embedrl.models.evidence`.

Problem codes
-------------
Fatal (``ParseResult.tcot`` is ``None``; `evidence` falls back to the raw text):

- ``empty_input``: the text is empty or blank.
- ``no_tags``: none of ``<thinking>``, ``<rethink>``, ``<answer>`` appears.
- ``internal_error``: an unexpected error inside the parser (a bug; please report it).

Tag structure (the T-CoT is still recovered as far as possible):

- ``missing_tag``: an opening or closing tag, or a whole section, is missing. A section without its closing
  tag runs to the next tag or the end of the text; one without its opening tag starts after the previous
  section (or at the start of the text).
- ``repeated_tag``: a section appears more than once; the first one is used.
- ``misspelled_tag``: ``<rethinking>`` was written for ``<rethink>``; accepted as ``<rethink>``.
- ``tags_out_of_order``: the sections are not in the order thinking, rethink, answer.
- ``unmatched_tag``: a closing tag that closes no open section; ignored.
- ``text_outside_tags``: non-blank text before, between or after the sections; ignored.
- ``empty_section``: a section is present but blank.

Cue JSON:

- ``no_cue``: the T-CoT carries no cue (no JSON object with ``text_keywords``, ``bbox_2d`` or ``key_frames``).
- ``cue_json_invalid``: a cue key is mentioned but its JSON cannot be read even after repair; the text is
  kept in ``thinking`` and `evidence` falls back to the raw text, as the official code does.
- ``cue_json_repaired``: the cue was read after repair (code fence, single or curly quotes, trailing or
  missing commas, unquoted keys, Python literals, a missing closing bracket, a cue written without braces).
- ``cue_outside_thinking``: the cue was found in ``<rethink>``, ``<answer>`` or outside the tags, not in
  ``<thinking>``; it is used anyway.
- ``cue_merged``: the same cue key appeared in several JSON objects (Qwen's grounding style
  ``[{"bbox_2d": …, "label": …}, …]``); their values were merged.
- ``multiple_cues``: more than one cue kind was given; the first one is kept.
- ``cue_not_list``: a scalar was given where a list is expected (``"key_frames": 3``); wrapped in a list.
- ``wrong_cue``: (validate) the cue kind does not match the input modality.
- ``cue_empty``: (validate) the cue list is empty (``"bbox_2d": []`` appears in the paper's Fig. 1).

Cue values:

- ``keywords_malformed``: a keyword that is not a non-empty string was converted (numbers) or dropped.
- ``bbox_malformed``: an entry that is not four finite numbers was dropped, a coordinate written as a string
  was converted, or an over-nested box was unwrapped.
- ``bbox_swapped``: a box with ``x1 > x2`` or ``y1 > y2``; its corners were reordered (in validate: the value
  is not ordered).
- ``bbox_clamped``: a coordinate outside 0–1000 was clamped into range.
- ``bbox_out_of_range``: (validate) a coordinate outside 0–1000.
- ``bbox_degenerate``: (validate) a box with zero width or height.
- ``frame_not_int``: a frame index that is not an integer: ``"3"``, ``"frame 3"`` or ``3.0`` were converted,
  anything else was dropped.
- ``frame_out_of_range``: a frame index below 1 (or above the number of frames, when known) was dropped.
- ``frame_duplicate``: a repeated frame index was dropped.

`FORMAT_BREAKING_CODES` lists the codes that make the format reward 0.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

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
        "cue_json_invalid", "cue_outside_thinking", "cue_merged", "multiple_cues", "cue_not_list",
        "keywords_malformed", "bbox_malformed", "bbox_swapped", "bbox_clamped",
        "frame_not_int", "frame_out_of_range", "frame_duplicate",
    }
)
FORMAT_BREAKING_CODES = TAG_DEFECT_CODES | CUE_DEFECT_CODES


@dataclass(frozen=True)
class TCoTProblem:
    """One defect found in a T-CoT: a stable `code` (see the module docstring) and a human `detail`."""

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


# ============================================================================================ parsing

_SECTIONS = ("thinking", "rethink", "answer")
_TAG_PATTERN = re.compile(r"<\s*(/?)\s*(thinking|rethinking|rethink|answer)\s*>", re.IGNORECASE)
_CODE_FENCE = re.compile(r"```[A-Za-z0-9_+-]*")
_CUE_KEY_MENTION = re.compile(r"""["'\u201c\u2018]?\b(text_keywords|bbox_2d|key_frames)\b["'\u201d\u2019]?\s*[:=]""")
_EMPTY_BRACKETS = re.compile(r"\[\s*(?:,\s*)*\]")
# Longer than any sensible cue; bounds the parser's work on adversarial text.
_MAX_CUE_CHARS = 20_000
_MAX_SPANS = 64


@dataclass
class _Block:
    section: str
    start: int
    end: int
    explicit_open: bool
    explicit_close: bool


def parse(text: str, *, num_frames: int | None = None) -> ParseResult:
    """Parse a Reasoner output into a `ParseResult`. Never raises.

    `num_frames`, when given, also drops keyframe indices above it (they are always dropped below 1).
    """
    try:
        return _parse(text, num_frames)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; a bug becomes a fatal problem
        raw = text if isinstance(text, str) else ""
        return ParseResult(None, [TCoTProblem("internal_error", f"{type(exc).__name__}: {exc}")], raw)


def _parse(text: Any, num_frames: int | None) -> ParseResult:
    if text is None:
        text = ""
    elif isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    if not text.strip():
        return ParseResult(None, [TCoTProblem("empty_input", "the text is empty or blank")], text)

    problems: list[TCoTProblem] = []
    blocks, outside = _scan_sections(text, problems)
    if not blocks:
        problems.append(TCoTProblem("no_tags", "none of <thinking>, <rethink>, <answer> was found"))
        return ParseResult(None, problems, text)

    first: dict[str, _Block] = {}
    for block in blocks:
        if block.section in first:
            problems.append(TCoTProblem("repeated_tag", f"<{block.section}> appears again; the first is used"))
        else:
            first[block.section] = block
    for name in _SECTIONS:
        block = first.get(name)
        if block is None:
            problems.append(TCoTProblem("missing_tag", f"the <{name}> section is missing"))
            continue
        if not block.explicit_open:
            problems.append(TCoTProblem("missing_tag", f"<{name}> has no opening tag"))
        if not block.explicit_close:
            problems.append(TCoTProblem("missing_tag", f"<{name}> has no closing tag </{name}>"))
    present = [first[name] for name in _SECTIONS if name in first]
    in_order = all(a.start < b.start for a, b in zip(present, present[1:]))
    if not in_order:
        problems.append(TCoTProblem("tags_out_of_order", "sections must come as thinking, rethink, answer"))
    complete = len(present) == 3 and all(b.explicit_open and b.explicit_close for b in present)

    for start, end in outside:
        chunk = _TAG_PATTERN.sub("", text[start:end]).strip()  # stray tags are reported on their own
        if chunk:
            where = "before the first section" if start == 0 else (
                "after the last section" if end == len(text) else "between sections")
            problems.append(TCoTProblem("text_outside_tags", f"{len(chunk)} characters {where} were ignored"))

    contents = {name: _section_text(text, first[name]) if name in first else "" for name in _SECTIONS}
    for name in _SECTIONS:
        if name in first and not contents[name]:
            problems.append(TCoTProblem("empty_section", f"<{name}> is blank"))

    outside_text = " ".join(text[a:b] for a, b in outside)
    contents, cue, where = _extract_cue(contents, outside_text, problems)
    cue_fields: dict[str, Any] = {}
    if cue is not None:
        key, value = cue
        if where != "thinking":
            problems.append(TCoTProblem("cue_outside_thinking", f"the {key} cue was found in {where}"))
        cue_fields[key] = _normalise_cue(key, value, num_frames, problems)
    tcot = TCoT(
        thinking=contents["thinking"], rethink=contents["rethink"], answer=contents["answer"], **cue_fields
    )
    return ParseResult(tcot, problems, text, tags_in_order=complete and in_order)


def _scan_sections(text: str, problems: list[TCoTProblem]) -> tuple[list[_Block], list[tuple[int, int]]]:
    """Walk the tags once, recovering sections whose opening or closing tag is missing."""
    blocks: list[_Block] = []
    outside: list[tuple[int, int]] = []
    open_name: str | None = None
    open_start = 0
    boundary = 0
    misspelled = False
    seen: set[str] = set()
    for match in _TAG_PATTERN.finditer(text):
        word = match.group(2).lower()
        if word == "rethinking":
            misspelled = True
            word = "rethink"
        closing = bool(match.group(1))
        if not closing:
            if open_name is not None:
                # An unclosed section ends where the next one opens.
                blocks.append(_Block(open_name, open_start, match.start(), True, False))
                seen.add(open_name)
            else:
                outside.append((boundary, match.start()))
            open_name, open_start = word, match.end()
        elif open_name == word:
            blocks.append(_Block(word, open_start, match.start(), True, True))
            seen.add(word)
            open_name, boundary = None, match.end()
        elif open_name is None and word not in seen and text[boundary:match.start()].strip():
            # A closing tag without its opening tag: the section started after the previous one. This is what a
            # chat template that pre-fills "<thinking>" produces.
            blocks.append(_Block(word, boundary, match.start(), False, True))
            seen.add(word)
            boundary = match.end()
        else:
            problems.append(TCoTProblem("unmatched_tag", f"{match.group(0)!r} closes nothing open; ignored"))
    if open_name is not None:
        blocks.append(_Block(open_name, open_start, len(text), True, False))
    else:
        outside.append((boundary, len(text)))
    if misspelled:
        problems.append(TCoTProblem("misspelled_tag", "<rethinking> was accepted as <rethink>"))
    return blocks, outside


def _section_text(text: str, block: _Block) -> str:
    # Any tag still inside a block is a stray one; keeping it would corrupt a later render.
    return _TAG_PATTERN.sub("", text[block.start:block.end]).strip()


# ------------------------------------------------------------------------------------- cue extraction


def _extract_cue(
    contents: dict[str, str], outside_text: str, problems: list[TCoTProblem]
) -> tuple[dict[str, str], tuple[str, Any] | None, str]:
    """Find the cue, in <thinking> first, then elsewhere as a best effort.

    Returns the section texts with the cue removed from the section it was found in, the cue as
    ``(key, raw value)`` (or None), and where it was found.
    """
    found = _find_cue(contents["thinking"], problems)
    if found.cue is not None:
        return {**contents, "thinking": found.remaining}, found.cue, "thinking"
    if found.invalid:
        return contents, None, "thinking"
    for where, place_text in (("rethink", contents["rethink"]), ("answer", contents["answer"]),
                              ("text outside the tags", outside_text)):
        scratch: list[TCoTProblem] = []
        elsewhere = _find_cue(place_text, scratch)
        if elsewhere.cue is not None:
            problems.extend(scratch)
            updated = {**contents, where: elsewhere.remaining} if where in contents else contents
            return updated, elsewhere.cue, where
    problems.append(TCoTProblem("no_cue", found.no_cue_detail))
    return contents, None, "thinking"


@dataclass
class _CueSearch:
    cue: tuple[str, Any] | None = None
    remaining: str = ""
    invalid: bool = False
    no_cue_detail: str = "no JSON object with text_keywords, bbox_2d or key_frames"


def _find_cue(section: str, problems: list[TCoTProblem]) -> _CueSearch:
    result = _CueSearch(remaining=section)
    if not section:
        return result
    repairs: set[str] = set()
    unfenced = _CODE_FENCE.sub(" ", section)
    if unfenced != section:
        repairs.add("code fence removed")
    # Pass 1: whole JSON objects. Pass 2: "key": value written without a parseable object around it.
    found: list[tuple[int, int, dict]] = []
    other_keys: list[str] = []
    for start, end in _object_spans(unfenced):
        value, span_repairs = _read_json(unfenced[start:end])
        if isinstance(value, dict):
            if any(k in value for k in CUE_KEYS):
                found.append((start, end, value))
                repairs |= span_repairs
            else:
                other_keys.extend(str(k) for k in value)
    if not found:
        found = _read_bare_cues(unfenced)
        if found:
            repairs.add("cue written without a JSON object around it")
    if not found:
        mention = _CUE_KEY_MENTION.search(unfenced)
        if mention:
            problems.append(
                TCoTProblem("cue_json_invalid", f"{mention.group(1)} is mentioned but its JSON cannot be read")
            )
            result.invalid = True
        elif other_keys:
            result.no_cue_detail = f"a JSON object with keys {other_keys[:5]} but no cue key"
        return result

    merged: dict[str, list] = {}
    for _, _, obj in found:
        for key in CUE_KEYS:
            if key in obj:
                merged.setdefault(key, []).append(obj[key])
    kinds = list(merged)
    first_kind = next(k for k in found[0][2] if k in CUE_KEYS)
    if len(kinds) > 1:
        problems.append(TCoTProblem("multiple_cues", f"cues {kinds} were given; {first_kind} is kept"))
    values = merged[first_kind]
    if len(values) > 1:
        problems.append(TCoTProblem("cue_merged", f"{first_kind} appeared in {len(values)} JSON objects"))
        value: Any = []
        for part in values:
            # One object may hold a single flat box, a list of boxes, a list of entries or a scalar.
            if isinstance(part, list) and not (first_kind == "bbox_2d" and _looks_like_box(part)):
                value.extend(part)
            else:
                value.append(part)
    else:
        value = values[0]
    if repairs:
        problems.append(TCoTProblem("cue_json_repaired", "; ".join(sorted(repairs))))
    result.cue = (first_kind, value)
    result.remaining = _remove_spans(unfenced, [(s, e) for s, e, _ in found])
    return result


def _remove_spans(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in sorted(spans, reverse=True):
        left, right = text[:start].rstrip(), text[end:].lstrip()
        text = left + (" " if left and right else "") + right
    if len(spans) > 1:
        text = _EMPTY_BRACKETS.sub("", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip() if len(spans) > 1 else text.strip()


_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u201d": "\u201d"}
_TOKEN_STARTS = frozenset("{[,:")


def _object_spans(text: str) -> list[tuple[int, int]]:
    """Top-level ``{…}`` spans, aware of quoted strings; an unterminated one runs to the end of the text.

    A quote only opens a string where a JSON token may start (after ``{ [ , :``), so apostrophes in prose do
    not swallow the rest of the text.
    """
    spans: list[tuple[int, int]] = []
    depth = 0
    start = 0
    closing_quote: str | None = None
    escaped = False
    last_token = ""
    for index, char in enumerate(text):
        if depth == 0:
            if char == "{":
                if len(spans) >= _MAX_SPANS:
                    return spans
                depth, start, last_token = 1, index, "{"
            continue
        if closing_quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == closing_quote:
                closing_quote, last_token = None, "string"
            continue
        if char.isspace():
            continue
        if char in _QUOTE_PAIRS and last_token in _TOKEN_STARTS:
            closing_quote = _QUOTE_PAIRS[char]
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                spans.append((start, index + 1))
        last_token = char
    if depth > 0:
        spans.append((start, len(text)))
    return spans


def _read_json(span: str) -> tuple[Any, set[str]]:
    """Strict JSON first, then the lenient reader. Returns (value or None, repairs made)."""
    if len(span) > _MAX_CUE_CHARS:
        return None, set()
    try:
        return json.loads(span), set()
    except (ValueError, RecursionError):
        pass
    reader = _LenientReader(span)
    try:
        value = reader.read_value(0)
        reader.skip_space()
        if reader.pos != len(span):
            return None, set()
    except _Unreadable:
        return None, set()
    return value, reader.repairs or {"lenient JSON"}


def _read_bare_cues(text: str) -> list[tuple[int, int, dict]]:
    """Read ``"bbox_2d": [...]`` written without (or inside a broken) JSON object."""
    found: list[tuple[int, int, dict]] = []
    for number, mention in enumerate(_CUE_KEY_MENTION.finditer(text)):
        if number >= _MAX_SPANS:
            break
        if found and mention.start() < found[-1][1]:
            continue  # inside the value just read; spans must not overlap to be removed cleanly
        reader = _LenientReader(text, mention.end(), limit=mention.end() + _MAX_CUE_CHARS)
        try:
            value = reader.read_value(0)
        except _Unreadable:
            continue
        start, end = mention.start(), reader.pos
        # Take a directly enclosing brace pair along, so no "{ }" residue stays in the prose.
        before = text[:start].rstrip()
        after_pos = len(text) - len(text[end:].lstrip())
        if before.endswith("{") and text[after_pos:after_pos + 1] == "}":
            start, end = len(before) - 1, after_pos + 1
        found.append((start, end, {mention.group(1): value}))
    return found


class _Unreadable(Exception):
    """The lenient reader gave up; internal to this module."""


class _LenientReader:
    """A small JSON reader that accepts what language models write instead of JSON.

    Accepted on top of JSON: single and curly quotes, unquoted keys, trailing and missing commas,
    ``True/False/None``, a leading ``+`` on numbers, and brackets left open at the end of the text.
    Recursion depth and input length are bounded, so it is linear and cannot exhaust the stack.
    """

    MAX_DEPTH = 16
    LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
    NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
    IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

    def __init__(self, text: str, pos: int = 0, limit: int | None = None):
        self.text = text
        self.pos = pos
        self.end = len(text) if limit is None else min(limit, len(text))
        self.repairs: set[str] = set()

    def skip_space(self) -> None:
        while self.pos < self.end and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < self.end else ""

    def read_value(self, depth: int) -> Any:
        if depth > self.MAX_DEPTH:
            raise _Unreadable("too deep")
        self.skip_space()
        char = self.peek()
        if char == "{":
            return self._read_object(depth)
        if char == "[":
            return self._read_array(depth)
        if char in _QUOTE_PAIRS:
            return self._read_string()
        number = self.NUMBER.match(self.text, self.pos, self.end)
        if number:
            return self._read_number(number)
        word = self.IDENTIFIER.match(self.text, self.pos, self.end)
        if word and word.group(0) in self.LITERALS:
            if word.group(0)[0].isupper():
                self.repairs.add("Python literal")
            self.pos = word.end()
            return self.LITERALS[word.group(0)]
        raise _Unreadable(f"unexpected {char!r}")

    def _read_number(self, match: re.Match) -> int | float:
        token = match.group(0)
        if len(token) > 64:
            raise _Unreadable("number too long")
        self.pos = match.end()
        if token.startswith("+"):
            self.repairs.add("leading plus")
        try:
            if any(c in token for c in ".eE"):
                return float(token)
            return int(token)
        except ValueError as exc:
            raise _Unreadable(str(exc)) from None

    def _read_string(self) -> str:
        opening = self.peek()
        closing = _QUOTE_PAIRS[opening]
        if opening != '"':
            self.repairs.add("non-JSON quotes")
        self.pos += 1
        pieces: list[str] = []
        while self.pos < self.end:
            char = self.text[self.pos]
            if char == closing:
                self.pos += 1
                return "".join(pieces)
            if char == "\\" and self.pos + 1 < self.end:
                self.pos += 1
                pieces.append(self._read_escape())
                continue
            pieces.append(char)
            self.pos += 1
        raise _Unreadable("unterminated string")

    def _read_escape(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
        if char in simple:
            return simple[char]
        if char == "u":
            digits = self.text[self.pos:self.pos + 4]
            if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
                self.pos += 4
                return chr(int(digits, 16))
        return char

    def _read_key(self) -> str:
        if self.peek() in _QUOTE_PAIRS:
            return self._read_string()
        word = self.IDENTIFIER.match(self.text, self.pos, self.end)
        if not word:
            raise _Unreadable("expected a key")
        self.repairs.add("unquoted key")
        self.pos = word.end()
        return word.group(0)

    def _after_item(self, closer: str) -> bool:
        """Consume a separator; True when the container is finished."""
        self.skip_space()
        char = self.peek()
        if char == ",":
            self.pos += 1
            self.skip_space()
            if self.peek() == closer:
                self.repairs.add("trailing comma")
                self.pos += 1
                return True
            return False
        if char == closer:
            self.pos += 1
            return True
        if char == "":
            self.repairs.add("missing closing bracket")
            return True
        if char in _QUOTE_PAIRS or char in "{[" or self.NUMBER.match(char):
            self.repairs.add("missing comma")
            return False
        raise _Unreadable(f"unexpected {char!r}")

    def _read_object(self, depth: int) -> dict:
        self.pos += 1
        out: dict[str, Any] = {}
        self.skip_space()
        if self.peek() == "}":
            self.pos += 1
            return out
        while True:
            self.skip_space()
            if self.peek() == "":
                self.repairs.add("missing closing bracket")
                return out
            key = self._read_key()
            self.skip_space()
            if self.peek() not in (":", "="):
                raise _Unreadable("expected ':'")
            self.pos += 1
            out[key] = self.read_value(depth + 1)
            if self._after_item("}"):
                return out

    def _read_array(self, depth: int) -> list:
        self.pos += 1
        out: list[Any] = []
        self.skip_space()
        if self.peek() == "]":
            self.pos += 1
            return out
        while True:
            self.skip_space()
            if self.peek() == "":
                self.repairs.add("missing closing bracket")
                return out
            out.append(self.read_value(depth + 1))
            if self._after_item("]"):
                return out


# ------------------------------------------------------------------------------------ cue values


def _normalise_cue(key: str, value: Any, num_frames: int | None, problems: list[TCoTProblem]) -> tuple:
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


def _is_number(value: Any) -> bool:
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
    if not _is_number(value) or not math.isfinite(value):
        return None
    return value


def _looks_like_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(
        _is_number(v) or isinstance(v, str) for v in value
    )


def _collect_boxes(value: Any, depth: int, out: list, problems: list[TCoTProblem]) -> None:
    if _looks_like_box(value):
        if depth > 1:
            problems.append(TCoTProblem("bbox_malformed", "an over-nested box was unwrapped"))
        out.append(value)
    elif isinstance(value, dict) and "bbox_2d" in value and depth < 4:
        _collect_boxes(value["bbox_2d"], depth, out, problems)
    elif isinstance(value, list) and depth < 4 and value and not any(_is_number(v) for v in value):
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
    if _looks_like_box(value):
        raw_boxes.append(value)  # a single flat box, which the prompts allow
    else:
        for entry in value:
            _collect_boxes(entry, 1, raw_boxes, problems)
    boxes: list[Box] = []
    for raw in raw_boxes:
        coords = [_coordinate(v, problems) for v in raw]
        if any(c is None for c in coords):
            problems.append(TCoTProblem("bbox_malformed", f"box {raw!r} has a non-finite or non-numeric value"))
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


# ========================================================================================= validation


def validate(tcot: TCoT, modality: Modality, num_frames: int | None = None) -> list[TCoTProblem]:
    """Check that `tcot` carries the cue `modality` needs and that every cue entry is valid.

    text → a non-empty list of non-empty ``text_keywords``; image → a non-empty list of ``bbox_2d`` boxes, each
    inside 0–1000, ordered and with positive area; video → ``key_frames`` within 1..num_frames (default 8),
    without repeats. Returns an empty list when the T-CoT is valid for the modality.
    """
    if modality not in CUE_FOR_MODALITY:
        raise ValueError(f"modality must be one of {sorted(CUE_FOR_MODALITY)}, got {modality!r}")
    expected = CUE_FOR_MODALITY[modality]
    kind = tcot.cue_kind
    if kind is None:
        return [TCoTProblem("no_cue", f"a {modality} input needs a {expected} cue")]
    if kind != expected:
        return [TCoTProblem("wrong_cue", f"a {modality} input needs {expected}, got {kind}")]
    values = tcot.cue_value or ()
    if not values:
        return [TCoTProblem("cue_empty", f"{kind} is empty")]
    if kind == "text_keywords":
        return [
            TCoTProblem("keywords_malformed", f"keyword {i + 1} is not a non-empty string")
            for i, kw in enumerate(values) if not isinstance(kw, str) or not kw.strip()
        ]
    if kind == "bbox_2d":
        return [p for i, box in enumerate(values) for p in _box_problems(i, box)]
    limit = DEFAULT_NUM_FRAMES if num_frames is None else num_frames
    problems: list[TCoTProblem] = []
    seen: set[int] = set()
    for index in values:
        if not isinstance(index, int) or isinstance(index, bool):
            problems.append(TCoTProblem("frame_not_int", f"frame {index!r} is not an integer"))
        elif not 1 <= index <= limit:
            problems.append(TCoTProblem("frame_out_of_range", f"frame {index} is outside 1..{limit}"))
        elif index in seen:
            problems.append(TCoTProblem("frame_duplicate", f"frame {index} is repeated"))
        else:
            seen.add(index)
    return problems


def _box_problems(i: int, box: Any) -> list[TCoTProblem]:
    if not isinstance(box, tuple) or len(box) != 4 or not all(
        _is_number(c) and math.isfinite(c) for c in box
    ):
        return [TCoTProblem("bbox_malformed", f"box {i + 1} is not four finite numbers")]
    x1, y1, x2, y2 = box
    if any(c < 0 or c > COORDINATE_MAX for c in box):
        return [TCoTProblem("bbox_out_of_range", f"box {i + 1} {list(box)} leaves 0-{COORDINATE_MAX}")]
    if x1 > x2 or y1 > y2:
        return [TCoTProblem("bbox_swapped", f"box {i + 1} {list(box)} has x1 > x2 or y1 > y2")]
    if x1 == x2 or y1 == y2:
        return [TCoTProblem("bbox_degenerate", f"box {i + 1} {list(box)} has zero width or height")]
    return []


# ========================================================================================= rendering


def cue_json(tcot: TCoT) -> str:
    """The cue as one JSON object (``""`` when there is none). Boxes are always a list of boxes.

    ``<`` and backticks are escaped (``\\u003c``, ``\\u0060``) so that a keyword can never close the ``<thinking>``
    tag it sits in or look like a code fence, which the parser removes.
    """
    kind = tcot.cue_kind
    if kind is None:
        return ""
    value: Any = [list(box) for box in tcot.bbox_2d or ()] if kind == "bbox_2d" else list(tcot.cue_value or ())
    return json.dumps({kind: value}, ensure_ascii=False).replace("<", "\\u003c").replace("`", "\\u0060")


def render_thinking(tcot: TCoT) -> str:
    """The canonical ``<thinking>…</thinking>`` block: prose, one space, then the cue JSON."""
    body = " ".join(part for part in (tcot.thinking, cue_json(tcot)) if part)
    return f"<thinking>{body}</thinking>"


def render(tcot: TCoT) -> str:
    """Canonical text: ``<thinking>{prose} {json}</thinking>\\n<rethink>…</rethink>\\n<answer>…</answer>``."""
    return f"{render_thinking(tcot)}\n<rethink>{tcot.rethink}</rethink>\n<answer>{tcot.answer}</answer>"


# ========================================================================================== evidence

# Qwen-style special tokens (<|image_pad|>, <|vision_start|>, <|im_end|>, …) and our pooling token. A reasoner
# must not be able to inject vision placeholders or break the chat template of the Embedder (method.md §1.4).
_SPECIAL_TOKENS = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|<emb>")


def strip_special_tokens(text: str) -> str:
    return _SPECIAL_TOKENS.sub("", text)


# ====================================================================================== format check

# The official tag check (method.md §2.1): three tags in order anywhere in the text.
OFFICIAL_TAG_PATTERN = re.compile(
    r"<thinking>.*?</thinking>.*?<rethink>.*?</rethink>.*?<answer>.*?</answer>", re.DOTALL
)


def format_ok(text: str, modality: Modality, num_frames: int = DEFAULT_NUM_FRAMES,
              strict_tags_only: bool = False) -> bool:
    """The format check behind the format reward.

    Paper version (default): the official tag pattern matches, the tag structure has no defect, and the cue the
    modality needs is present and valid as written (nothing clamped, reordered, dropped or merged; see
    `FORMAT_BREAKING_CODES`). With ``strict_tags_only=True`` only the official tag pattern is checked, as
    in the released code.
    """
    if not isinstance(text, str) or not OFFICIAL_TAG_PATTERN.search(text):
        return False
    if strict_tags_only:
        return True
    result = parse(text, num_frames=num_frames)
    if result.tcot is None or not result.tags_in_order:
        return False
    if any(code in FORMAT_BREAKING_CODES for code in result.codes):
        return False
    return not validate(result.tcot, modality, num_frames)
