"""A JSON reader for what language models write instead of JSON.

Strict JSON is tried first. The lenient reader then also accepts single and curly quotes, unquoted keys,
``=`` for ``:``, trailing and missing commas, ``True/False/None``, a leading ``+`` on numbers, and brackets left
open at the end of the text, and it names every repair it made. Nesting depth is bounded, and so is length
when the caller passes `max_chars` or `limit`, so adversarial text costs linear time and cannot exhaust the
stack. Nothing here knows about T-CoTs.
"""

from __future__ import annotations

import json
import re
from typing import Any

_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u201d": "\u201d"}
_TOKEN_STARTS = frozenset("{[,:")


class UnreadableJSON(ValueError):
    """The text is not JSON, not even by the lenient reader's rules."""


def read_lenient_json(text: str, *, max_chars: int | None = None) -> tuple[Any, set[str]]:
    """Read `text` as one JSON value: strict JSON first, then leniently.

    Returns the value and the repairs made (empty for strict JSON). Raises `UnreadableJSON` when the text
    cannot be read, when anything but white space follows the value, or when it is longer than `max_chars`.
    """
    if max_chars is not None and len(text) > max_chars:
        raise UnreadableJSON(f"longer than {max_chars} characters")
    try:
        return json.loads(text), set()
    except (ValueError, RecursionError):
        pass
    reader = _LenientReader(text)
    value = reader.read_value(0)
    reader.skip_space()
    if reader.pos != len(text):
        raise UnreadableJSON("text follows the value")
    return value, reader.repairs or {"lenient JSON"}


def read_lenient_value(text: str, start: int = 0, *, limit: int | None = None) -> tuple[Any, int, set[str]]:
    """Read the one value that starts at `start` (after white space), leniently; the text may go on after it.

    Nothing past `limit` is read. Returns the value, the position just after it and the repairs made. Raises
    `UnreadableJSON` when no value can be read there.
    """
    reader = _LenientReader(text, start, limit)
    value = reader.read_value(0)
    return value, reader.pos, reader.repairs


def object_spans(text: str, *, max_spans: int | None = None) -> list[tuple[int, int]]:
    """Top-level ``{…}`` spans, aware of quoted strings; an unterminated one runs to the end of the text.

    A quote only opens a string where a JSON token may start (after ``{ [ , :``), so apostrophes in prose do
    not swallow the rest of the text. At most `max_spans` spans are returned.
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
                if max_spans is not None and len(spans) >= max_spans:
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


class _LenientReader:
    """A recursive-descent reader over ``text[pos:limit]`` that records its repairs in `repairs`."""

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
            raise UnreadableJSON("too deep")
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
        raise UnreadableJSON(f"unexpected {char!r}")

    def _read_number(self, match: re.Match) -> int | float:
        token = match.group(0)
        if len(token) > 64:
            raise UnreadableJSON("number too long")
        self.pos = match.end()
        if token.startswith("+"):
            self.repairs.add("leading plus")
        try:
            if any(c in token for c in ".eE"):
                return float(token)
            return int(token)
        except ValueError as exc:
            raise UnreadableJSON(str(exc)) from None

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
        raise UnreadableJSON("unterminated string")

    def _read_escape(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
        if char in simple:
            return simple[char]
        if char == "u":
            digits = self.text[self.pos : self.pos + 4]
            if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
                self.pos += 4
                return chr(int(digits, 16))
        return char

    def _read_key(self) -> str:
        if self.peek() in _QUOTE_PAIRS:
            return self._read_string()
        word = self.IDENTIFIER.match(self.text, self.pos, self.end)
        if not word:
            raise UnreadableJSON("expected a key")
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
        raise UnreadableJSON(f"unexpected {char!r}")

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
                raise UnreadableJSON("expected ':'")
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
