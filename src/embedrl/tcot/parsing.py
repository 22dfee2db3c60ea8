"""Parse a Reasoner output into a T-CoT: recover the three sections, find the cue JSON, clean its value.

`parse` never raises. Missing, repeated, misspelled or misplaced tags and broken cue JSON are recovered as far
as possible, and each defect becomes a `TCoTProblem` in the `ParseResult`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .cue_values import looks_like_box, normalise_cue
from .lenient_json import UnreadableJSON, object_spans, read_lenient_json, read_lenient_value
from .types import CUE_KEYS, ParseResult, TCoT, TCoTProblem

_SECTIONS = ("thinking", "rethink", "answer")
_TAG_PATTERN = re.compile(r"<\s*(/?)\s*(thinking|rethinking|rethink|answer)\s*>", re.IGNORECASE)
_CODE_FENCE = re.compile(r"```[A-Za-z0-9_+-]*")
_CUE_KEY_MENTION = re.compile(
    r"""["'\u201c\u2018]?\b(text_keywords|bbox_2d|key_frames)\b["'\u201d\u2019]?\s*[:=]"""
)
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
            problems.append(
                TCoTProblem("repeated_tag", f"<{block.section}> appears again; the first is used")
            )
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
            where = (
                "before the first section"
                if start == 0
                else ("after the last section" if end == len(text) else "between sections")
            )
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
        cue_fields[key] = normalise_cue(key, value, num_frames, problems)
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
        elif open_name is None and word not in seen and text[boundary : match.start()].strip():
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
    return _TAG_PATTERN.sub("", text[block.start : block.end]).strip()


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
    for where, place_text in (
        ("rethink", contents["rethink"]),
        ("answer", contents["answer"]),
        ("text outside the tags", outside_text),
    ):
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
    for start, end in object_spans(unfenced, max_spans=_MAX_SPANS):
        try:
            value, span_repairs = read_lenient_json(unfenced[start:end], max_chars=_MAX_CUE_CHARS)
        except UnreadableJSON:
            continue
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
                TCoTProblem(
                    "cue_json_invalid", f"{mention.group(1)} is mentioned but its JSON cannot be read"
                )
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
            if isinstance(part, list) and not (first_kind == "bbox_2d" and looks_like_box(part)):
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


def _read_bare_cues(text: str) -> list[tuple[int, int, dict]]:
    """Read ``"bbox_2d": [...]`` written without (or inside a broken) JSON object."""
    found: list[tuple[int, int, dict]] = []
    for number, mention in enumerate(_CUE_KEY_MENTION.finditer(text)):
        if number >= _MAX_SPANS:
            break
        if found and mention.start() < found[-1][1]:
            continue  # inside the value just read; spans must not overlap to be removed cleanly
        try:
            value, end, _ = read_lenient_value(text, mention.end(), limit=mention.end() + _MAX_CUE_CHARS)
        except UnreadableJSON:
            continue
        start = mention.start()
        # Take a directly enclosing brace pair along, so no "{ }" residue stays in the prose.
        before = text[:start].rstrip()
        after_pos = len(text) - len(text[end:].lstrip())
        if before.endswith("{") and text[after_pos : after_pos + 1] == "}":
            start, end = len(before) - 1, after_pos + 1
        found.append((start, end, {mention.group(1): value}))
    return found
