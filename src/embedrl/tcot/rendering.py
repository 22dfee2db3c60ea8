"""Write a T-CoT as text: the canonical form, which `parse` reads back unchanged, and text safe for the
Embedder."""

from __future__ import annotations

import json
import re
from typing import Any

from .types import TCoT


def cue_json(tcot: TCoT) -> str:
    """The cue as one JSON object (``""`` when there is none). Boxes are always a list of boxes.

    ``<`` and backticks are escaped (``\\u003c``, ``\\u0060``) so that a keyword can never close the ``<thinking>``
    tag it sits in or look like a code fence, which the parser removes.
    """
    kind = tcot.cue_kind
    if kind is None:
        return ""
    value: Any = (
        [list(box) for box in tcot.bbox_2d or ()] if kind == "bbox_2d" else list(tcot.cue_value or ())
    )
    return json.dumps({kind: value}, ensure_ascii=False).replace("<", "\\u003c").replace("`", "\\u0060")


def render_thinking(tcot: TCoT) -> str:
    """The canonical ``<thinking>…</thinking>`` block: prose, one space, then the cue JSON."""
    body = " ".join(part for part in (tcot.thinking, cue_json(tcot)) if part)
    return f"<thinking>{body}</thinking>"


def render(tcot: TCoT) -> str:
    """Canonical text: ``<thinking>{prose} {json}</thinking>\\n<rethink>…</rethink>\\n<answer>…</answer>``."""
    return f"{render_thinking(tcot)}\n<rethink>{tcot.rethink}</rethink>\n<answer>{tcot.answer}</answer>"


# Qwen-style special tokens (<|image_pad|>, <|vision_start|>, <|im_end|>, …) and our pooling token. A reasoner
# must not be able to inject vision placeholders or break the chat template of the Embedder; the official
# evaluation likewise strips any <|image_pad|> / <|video_pad|> left in a T-CoT.
_SPECIAL_TOKENS = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|<emb>")


def strip_special_tokens(text: str) -> str:
    """`text` without chat-template special tokens or ``<emb>``, ready to go into the Embedder's prompt."""
    return _SPECIAL_TOKENS.sub("", text)
