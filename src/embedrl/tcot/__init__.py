"""The Traceability CoT (T-CoT) as a value: parse, validate, render, and turn into Embedder evidence.

A T-CoT is what the Reasoner writes for one item, in the format of the Embed-RL paper and its released code::

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

Modules, one job each: `types` (the values, constants and problem codes), `parsing` (text → `ParseResult`),
`cue_values` (a raw cue value → clean tuples), `lenient_json` (JSON as language models write it), `rendering`
(`TCoT` → text) and `validation` (`validate`, and `format_ok` for the format reward). Import from the package.

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

from .parsing import parse
from .rendering import cue_json, render, render_thinking, strip_special_tokens
from .types import (
    COORDINATE_MAX,
    CUE_DEFECT_CODES,
    CUE_FOR_MODALITY,
    CUE_KEYS,
    DEFAULT_NUM_FRAMES,
    FATAL_CODES,
    FORMAT_BREAKING_CODES,
    PROBLEM_CODES,
    TAG_DEFECT_CODES,
    Box,
    CueKind,
    Modality,
    ParseResult,
    TCoT,
    TCoTProblem,
)
from .validation import OFFICIAL_TAG_PATTERN, format_ok, validate

__all__ = [
    "COORDINATE_MAX",
    "CUE_DEFECT_CODES",
    "CUE_FOR_MODALITY",
    "CUE_KEYS",
    "DEFAULT_NUM_FRAMES",
    "FATAL_CODES",
    "FORMAT_BREAKING_CODES",
    "OFFICIAL_TAG_PATTERN",
    "PROBLEM_CODES",
    "TAG_DEFECT_CODES",
    "Box",
    "CueKind",
    "Modality",
    "ParseResult",
    "TCoT",
    "TCoTProblem",
    "cue_json",
    "format_ok",
    "parse",
    "render",
    "render_thinking",
    "strip_special_tokens",
    "validate",
]
