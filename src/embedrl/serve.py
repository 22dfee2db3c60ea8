"""An OpenAI-compatible HTTP server for an Embedder (embeddings, search) and a Reasoner (chat): Starlette on uvicorn.

Endpoints:
- `GET  /health` (never needs the API key; also reports the queue and the batch sizes), `GET /v1/models`,
  `GET /openapi.json`
- `POST /v1/chat/completions` — OpenAI chat format; images as `image_url` items with base64 `data:` URLs.
  Served by a local generation backend (a Reasoner, a teacher or the process-reward judge). A backend with
  `generate_with_usage` (replies with token counts) gives OpenAI's `usage` and `finish_reason: "length"`.
- `POST /v1/embeddings` — `input` is a string, a list of strings, or a list of embedrl item objects
  `{"text", "instruction", "images": [data URLs], "frames": [data URLs], "tcot"}`. Items go through
  `pipeline.encode_detailed`, the same path as local inference: `build_input` places crops and keyframes exactly
  as evaluation does, and `"reasoning": "generate"` lets the server's Reasoner write the T-CoTs. Remote clients
  never name server-side files.
- `POST /v1/search` — a query (string or item object) against the index loaded with `--index`: ranked ids with
  scores and the evidence (keywords, crop boxes, keyframes) each T-CoT pointed at.

Requests for embeddings from many clients are gathered into one model batch (`max_batch` items, waiting at most
`max_wait_ms` for company) by one asyncio task that hands each batch to a single model thread; chat generation
runs on that thread too, so one model call runs at a time and the event loop never blocks. Every input size has
a limit (`ServeSettings`), answered with 413 (body) or a 400 naming the field; docs/serving.md lists them.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import contextvars
import hmac
import io
import json
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .data.items import Item, VideoRef
from .data.media import ALLOWED_IMAGE_FORMATS, decode_image_file
from .errors import ConfigError, EmbedRLError, MediaError
from .models.protocols import EmbedderLike, ReasonerLike

if TYPE_CHECKING:
    from .models.reasoner import GenerationSettings

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 1_000_000
REASONING = ("off", "generate")
OPEN_PATHS = frozenset({"/health", "/v1/health", "/openapi.json"})  # answered without the API key
# The request's "still arriving" mark, seen by the handler task that asyncio.wait_for runs it in.
_ARRIVING: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "embedrl_arriving", default=None
)


# ------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServeSettings:
    """Limits, batching and timeouts of the server. Each field is a `embedrl serve` flag of the same name
    (`max_body_bytes` is `--max-body-bytes`); docs/serving.md explains each one."""

    max_body_bytes: int = 32 * 1024 * 1024
    """Request body size; larger bodies get 413 before they are read."""
    max_items: int = 64
    """Inputs per /v1/embeddings request (and messages per chat request)."""
    max_text_chars: int = 32_768
    """Characters per text field: an input's text or instruction, a chat message part."""
    max_images: int = 8
    """Images per item (and image parts per chat request)."""
    max_frames: int = 64
    """Video frames per item."""
    max_image_pixels: int = 16_000_000
    """Decoded width x height per image, read from the image header before any pixel is decoded."""
    max_request_pixels: int = 256_000_000
    """Decoded pixels of all images of one request together."""
    max_tcot_chars: int = 16_384
    """Characters per client-given T-CoT."""
    max_boxes: int = 16
    """Boxes (bbox_2d entries) per client-given T-CoT."""
    max_k: int = 1000
    """Hits per /v1/search request."""
    max_batch: int = 32
    """Items per model batch, gathered across concurrent requests."""
    max_wait_ms: float = 5.0
    """How long the first request of a batch waits for others to join it."""
    max_queue: int = 1024
    """Items accepted and not yet answered (chat requests count one each); beyond it, 503 with Retry-After."""
    request_timeout: float = 300.0
    """Seconds from a complete body to the reply; beyond it, 504."""
    body_timeout: float = 30.0
    """Seconds for the whole body to arrive once the headers have; beyond it, 408 and the connection closes."""
    header_timeout: float = 10.0
    """Seconds for a request line and headers to arrive on a connection; beyond it, the connection closes."""
    timeout_keep_alive: float = 5.0
    """Seconds an idle keep-alive connection is kept open between requests."""
    max_header_bytes: int = 16_384
    """Bytes of a request line plus headers (h11's max incomplete event size); beyond it, 400."""
    max_connections: int = 1024
    """Open connections plus running requests (uvicorn's limit_concurrency); beyond it, 503."""
    backlog: int = 2048
    """Listen backlog: connections the kernel holds while the server is busy accepting."""
    timeout_graceful_shutdown: float = 30.0
    """On SIGTERM / Ctrl-C: seconds to finish in-flight requests before they are cancelled."""
    reasoning: str = "off"
    """Default for /v1/embeddings requests that do not say: 'off' (embed as given) or 'generate'."""

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "reasoning":
                if value not in REASONING:
                    raise ConfigError(f"reasoning must be one of {', '.join(REASONING)}, got {value!r}")
            elif (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not value > 0
                or not math.isfinite(value)
            ):
                if not (spec.name == "max_wait_ms" and value == 0):
                    raise ConfigError(f"{spec.name} must be a positive number, got {value!r}")


# ---------------------------------------------------------------------------------------- request errors


class RequestError(Exception):
    """What the client got wrong: answered with `status` and the message. `close` drops the connection after
    the reply (the body was not read, so the connection cannot carry another request)."""

    def __init__(
        self,
        message: str,
        status: int = HTTPStatus.BAD_REQUEST,
        *,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.close = close
        self.headers = headers or {}


class _HugeInt:
    """A JSON integer with more digits than Python converts (sys.get_int_max_str_digits): kept as a marker so
    that the field it sits in, not json.loads, reports it."""

    def __init__(self, text: str):
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(text: str) -> int | _HugeInt:
    try:
        return int(text)
    except ValueError:
        return _HugeInt(text)


_JSON_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?|[\[\]{}]')


def _too_deep(text: str, limit: int = 100) -> str:
    """Where a body that json.loads could not nest that deep goes past `limit` levels: the top-level key as
    'key', or 'body' when the body itself is the deep array."""
    depth, key = 0, None
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return key or "body"
        elif token in "]}":
            depth -= 1
        elif depth == 1 and match.group(2):
            key = "'" + json.loads(f'"{match.group(1)}"')[:80] + "'"
    return "body"


def parse_body(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"body is not UTF-8 JSON ({exc.reason})") from None
    try:
        body = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise RequestError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise RequestError(f"{_too_deep(text)}: JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    return body


# ------------------------------------------------------------------------------------------ parsing


class _Budget:
    """The limits one request is checked against, with its running pixel total."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.pixels = 0

    def text(self, value: Any, where: str) -> str:
        """A string field as the tokenizers will take it: JSON escapes can make lone UTF-16 surrogates, which
        no UTF-8 encoder accepts."""
        if not isinstance(value, str):
            raise RequestError(f"{where}: must be a string")
        limit = self.settings.max_text_chars
        if len(value) > limit:
            raise RequestError(
                f"{where}: {len(value)} characters, over the limit of {limit} (--max-text-chars)"
            )
        return _valid_unicode(value, where)

    def image(self, url: Any, where: str) -> Image.Image:
        if not isinstance(url, str) or not url.startswith("data:"):
            raise RequestError(f"{where}: only base64 data: URLs are accepted for images")
        try:
            _header, payload = url.split(",", 1)
            raw = base64.b64decode(payload, validate=True)
        except ValueError as exc:  # no comma, or not base64 (binascii.Error is a ValueError)
            raise RequestError(f"{where}: not a base64 data: URL ({exc})") from None
        self._check_size(raw, where)
        try:
            # the allowed formats, EXIF orientation and RGB conversion exactly as for local files
            return decode_image_file(io.BytesIO(raw), self.settings.max_image_pixels, where)
        except MediaError as exc:
            raise RequestError(
                f"{where}: not a decodable image: {str(exc).removeprefix(where + ': ')}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - whatever the client's bytes make Pillow raise is a bad request
            raise RequestError(f"{where}: not a decodable image ({type(exc).__name__}: {exc})") from None

    def _check_size(self, raw: bytes, where: str) -> None:
        """Refuse an image by the size its header declares, before a pixel is decoded. Bytes Pillow cannot open
        are left to decode_image_file, which says what they are."""
        try:
            with Image.open(io.BytesIO(raw), formats=ALLOWED_IMAGE_FORMATS) as img:
                width, height = img.size
        except Exception:  # noqa: BLE001 - reported, with its reason, by the decoder
            return
        pixels = width * height
        if pixels > self.settings.max_image_pixels:
            raise RequestError(
                f"{where}: image is {width}x{height} = {pixels:,} pixels, over the limit of "
                f"{self.settings.max_image_pixels:,} per image (--max-image-pixels)"
            )
        self.pixels += pixels
        if self.pixels > self.settings.max_request_pixels:
            raise RequestError(
                f"{where}: the request's images add up to {self.pixels:,} pixels, over the limit "
                f"of {self.settings.max_request_pixels:,} per request (--max-request-pixels)"
            )

    def tcot(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise RequestError(f"{where}: must be a string")
        limit = self.settings.max_tcot_chars
        if len(value) > limit:
            raise RequestError(
                f"{where}: {len(value)} characters, over the limit of {limit} (--max-tcot-chars)"
            )
        value = _valid_unicode(value, where)
        boxes = count_boxes(value)
        if boxes > self.settings.max_boxes:
            raise RequestError(
                f"{where}: {boxes} boxes in bbox_2d, over the limit of {self.settings.max_boxes} "
                "(--max-boxes)"
            )
        return value


def _valid_unicode(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"{where}: contains a lone surrogate \\u{ord(value[exc.start]):04x} at character "
            f"{exc.start} (not valid Unicode text)"
        ) from None
    return value


def count_boxes(tcot: str) -> int:
    """Boxes a T-CoT's cue asks to crop, as any evidence style could read them (strict or repaired JSON)."""
    from .models.evidence import EVIDENCE_STYLES, read_evidence

    evidence = read_evidence(tcot, crop_source=None, num_frames=0, rules=EVIDENCE_STYLES["embedrl"])
    boxes = (evidence.cue or {}).get("bbox_2d") if evidence is not None else None
    if not isinstance(boxes, list):
        return 0
    flat = len(boxes) >= 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in boxes)
    return 1 if flat else len(boxes)


def chat_messages_to_conversation(messages: Any, budget: _Budget) -> list[dict]:
    """OpenAI chat messages -> our conversation format (PIL images inline)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    if len(messages) > budget.settings.max_items:
        raise RequestError(
            f"messages: {len(messages)} messages, over the limit of {budget.settings.max_items} (--max-items)"
        )
    conversation, images = [], 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise RequestError(f"messages[{i}]: needs 'role' and 'content'")
        if message["role"] not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}].role: must be 'system', 'user' or 'assistant'")
        content = message.get("content", "")
        if isinstance(content, str):
            content = budget.text(content, f"messages[{i}].content")
            conversation.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise RequestError(f"messages[{i}].content: must be a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = budget.text(part.get("text", ""), f"messages[{i}].content[{j}].text")
                parts.append({"type": "text", "text": text})
            elif kind == "image_url":
                images += 1
                if images > budget.settings.max_images:
                    raise RequestError(
                        f"messages[{i}].content[{j}]: more than {budget.settings.max_images} images "
                        "in one request (--max-images)"
                    )
                url = part.get("image_url", {})
                url = url.get("url") if isinstance(url, dict) else url
                parts.append({"type": "image", "image": budget.image(url, f"messages[{i}].content[{j}]")})
            else:
                raise RequestError(f"messages[{i}].content[{j}]: unsupported part type {kind!r}")
        conversation.append({"role": message["role"], "content": parts})
    return conversation


def _number(body: dict, key: str, kind: type, default: Any, low: float, high: float | None = None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, _HugeInt):
        upper = high if high is not None else "inf"
        raise RequestError(f"'{key}' must be in [{low}, {upper}], not an integer of {value.digits} digits")
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
        or (isinstance(value, float) and not math.isfinite(value))
    ):  # JSON readers accept NaN and Infinity
        raise RequestError(f"'{key}' must be {'an integer' if kind is int else 'a finite number'}")
    if value < low or (high is not None and value > high):
        raise RequestError(f"'{key}' must be in [{low}, {high if high is not None else 'inf'}]")
    return kind(value)


def chat_settings(body: dict) -> GenerationSettings:
    """OpenAI sampling fields -> GenerationSettings; wrong types or ranges are the client's error (400)."""
    from .models.reasoner import GenerationSettings

    max_tokens = _number(body, "max_tokens", int, None, 1, MAX_NEW_TOKENS) or _number(
        body, "max_completion_tokens", int, 512, 1, MAX_NEW_TOKENS
    )
    return GenerationSettings(
        max_new_tokens=max_tokens,
        temperature=_number(body, "temperature", float, 0.0, 0.0, 100.0),
        top_p=_number(body, "top_p", float, 1.0, 0.0, 1.0),
        seed=_number(body, "seed", int, None, 0, 2**63 - 1),
    )


def _item_entry(entry: Any, where: str, index: int, budget: _Budget) -> tuple[Item, str | None]:
    """One input entry (a string or an item object) -> (Item with in-memory media, client-given T-CoT)."""
    if isinstance(entry, str):
        entry = budget.text(entry, where)
        if not entry.strip():
            raise RequestError(f"{where}: is empty")
        return Item(id=str(index), text=entry), None
    if not isinstance(entry, dict):
        raise RequestError(f"{where}: must be a string or an object")
    for key in ("text", "instruction"):
        if entry.get(key) is not None:
            budget.text(entry[key], f"{where}.{key}")
    tcot = budget.tcot(entry["tcot"], f"{where}.tcot") if entry.get("tcot") is not None else None
    entry_id = entry.get("id", index)
    if isinstance(entry_id, bool) or not isinstance(entry_id, (str, int)):
        raise RequestError(f"{where}.id: must be a string or an integer")
    if isinstance(entry_id, str):
        budget.text(entry_id, f"{where}.id")
    media: dict[str, list[Image.Image]] = {}
    for key, limit, flag in (
        ("images", budget.settings.max_images, "--max-images"),
        ("frames", budget.settings.max_frames, "--max-frames"),
    ):
        urls = entry.get(key)
        if urls is None:
            media[key] = []
            continue
        if not isinstance(urls, list):
            raise RequestError(f"{where}.{key}: must be a list of data: URLs")
        if len(urls) > limit:
            raise RequestError(
                f"{where}.{key}: {len(urls)} {key}, over the limit of {limit} per item ({flag})"
            )
        media[key] = [budget.image(u, f"{where}.{key}[{k}]") for k, u in enumerate(urls)]
    item = Item(
        id=str(entry_id),
        text=entry.get("text"),
        instruction=entry.get("instruction"),
        images=media["images"],
        video=VideoRef(frames=media["frames"]) if media["frames"] else None,
    )
    if not item.has_content():
        raise RequestError(f"{where}: has no text, images or frames")
    return item, tcot


def embedding_inputs_to_items(inputs: Any, budget: _Budget) -> tuple[list[Item], list[str | None]]:
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'input' must be a string or a non-empty list")
    if len(inputs) > budget.settings.max_items:
        raise RequestError(
            f"input: {len(inputs)} items, over the limit of {budget.settings.max_items} per "
            "request (--max-items)"
        )
    parsed = [_item_entry(entry, f"input[{i}]", i, budget) for i, entry in enumerate(inputs)]
    return [item for item, _ in parsed], [tcot for _, tcot in parsed]


def _reasoning_field(body: dict, default: str) -> str:
    value = body.get("reasoning", default)
    if value not in REASONING:
        raise RequestError(f"'reasoning' must be one of {', '.join(REASONING)}")
    return value


def _choice(body: dict, key: str, choices: tuple, default: Any) -> Any:
    value = body.get(key, default)
    if value not in choices:
        raise RequestError(f"'{key}' must be one of {', '.join(str(c) for c in choices if c is not None)}")
    return value


def _model_name(body: dict, default: str) -> str:
    """The client's model name echoed back, when it is one: anything else in that field (a list nested
    hundreds deep, an integer too long to print) must not break writing the reply."""
    model = body.get("model")
    return model if isinstance(model, str) else default


# ------------------------------------------------------------------------------------------- batching


@dataclass
class EmbedJob:
    """Items of one request waiting for the model, and the future its handler awaits."""

    items: list[Item]
    tcots: list[str | None]
    reasoning: str
    side: str
    target_modality: str | None
    future: asyncio.Future
    want_evidence: bool = False

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass
class EmbedOutcome:
    vectors: np.ndarray
    tcots: list[str | None]
    failures: list[tuple[int, str, str]]  # (row, stage, message)
    evidence: list[dict] | None = None


@dataclass
class BatchStats:
    """What /health reports about batching: how many batches of which size the model has run."""

    batches: int = 0
    items: int = 0
    requests: int = 0
    max_size: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)
    rejected_queue_full: int = 0
    timeouts: int = 0
    seconds_per_item: float = 0.0  # running mean, for Retry-After

    def record(self, size: int, requests: int, seconds: float) -> None:
        self.batches += 1
        self.items += size
        self.requests += requests
        self.max_size = max(self.max_size, size)
        self.sizes[size] += 1
        per_item = seconds / max(size, 1)
        self.seconds_per_item = (
            per_item if self.batches == 1 else 0.8 * self.seconds_per_item + 0.2 * per_item
        )

    def to_json(self) -> dict:
        return {
            "count": self.batches,
            "items": self.items,
            "requests": self.requests,
            "max_size": self.max_size,
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
            "rejected_queue_full": self.rejected_queue_full,
            "timeouts": self.timeouts,
        }


class Batcher:
    """Gathers the items of concurrent requests into model batches: a batch holds at most `max_batch` items (a
    request is never split; one larger than `max_batch` runs alone), and each batch runs on the single model
    thread. The first waiting request waits at most `max_wait_ms` for others, and only while `expecting()` says
    more requests are on their way (being received or parsed): a lone client is never made to wait."""

    def __init__(
        self,
        run_batch: Callable[[list[EmbedJob]], list[Any]],
        executor: ThreadPoolExecutor,
        max_batch: int,
        max_wait_ms: float,
        stats: BatchStats,
        expecting: Callable[[], bool] = lambda: True,
    ):
        self.run_batch = run_batch
        self.expecting = expecting
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = stats
        self.pending: collections.deque[EmbedJob] = collections.deque()
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name="embedrl-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def submit(self, job: EmbedJob) -> None:
        self.pending.append(job)
        self.arrived.set()

    def _next_live(self) -> EmbedJob | None:
        while self.pending:
            if not self.pending[0].future.done():  # a caller that timed out or left is not computed
                return self.pending[0]
            self.pending.popleft()
        return None

    async def _gather(self) -> list[EmbedJob]:
        loop = asyncio.get_running_loop()
        while self._next_live() is None:
            self.arrived.clear()
            await self.arrived.wait()
        jobs = [self.pending.popleft()]
        size = jobs[0].size
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            job = self._next_live()
            if job is None:
                remaining = deadline - loop.time()
                if remaining <= 0 or not self.expecting():
                    break
                self.arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), remaining)
                continue
            if size + job.size > self.max_batch:
                break  # it leads the next batch
            jobs.append(self.pending.popleft())
            size += job.size
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            size = sum(job.size for job in jobs)
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self.executor, self.run_batch, jobs)
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets the reason
                log.exception("model batch failed")
                outcomes = [exc] * len(jobs)
            seconds = time.perf_counter() - started
            self.stats.record(size, len(jobs), seconds)
            log.info("batch of %d item(s) from %d request(s) in %.3f s", size, len(jobs), seconds)
            for job, outcome in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)


# -------------------------------------------------------------------------------------------- service


def _error_payload(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": HTTPStatus(status).phrase, "code": status}}


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    return Response(
        json.dumps(payload).encode(), status_code=status, media_type="application/json", headers=headers
    )


def _error_response(status: int, message: str, *, close: bool = False, headers: dict[str, str] | None = None):
    headers = dict(headers or {})
    if close:  # the body was not (fully) read: the connection cannot carry another request
        headers["Connection"] = "close"
    return _json_response(status, _error_payload(status, message), headers)


class EmbedRLService:
    """The models, the optional search index and the request handlers; `app()` is the ASGI application."""

    def __init__(
        self,
        generator: Any = None,
        embedder: EmbedderLike | None = None,
        *,
        reasoner: ReasonerLike | None = None,
        index: Any = None,
        settings: ServeSettings | None = None,
        api_key: str | None = None,
        generator_name: str = "reasoner",
        embedder_name: str = "embedder",
    ):
        if generator is None and embedder is None:
            raise EmbedRLError("serve needs a generation backend, an embedder, or both")
        if index is not None:
            if embedder is None:
                raise EmbedRLError("serving an index needs its embedder")
            index.check_embedder(embedder)
        self.generator = generator
        self.embedder = embedder
        self.reasoner = reasoner
        if reasoner is None and generator is not None and embedder is not None:
            from .models.reasoner import Reasoner

            # The chat model writes T-CoTs for "reasoning": "generate", sampling frames as the Embedder does.
            self.reasoner = Reasoner(generator, num_frames=embedder.config.num_frames)
        self.index = index
        self.settings = settings or ServeSettings()
        self.api_key = api_key or None
        self.generator_name = generator_name
        self.embedder_name = embedder_name
        self.stats = BatchStats()
        self.inflight = 0  # items accepted and not yet answered
        self.arriving = 0  # embedding requests being received or parsed, not yet queued
        self.executor: ThreadPoolExecutor | None = None
        self.batcher: Batcher | None = None
        self.parsing: asyncio.Semaphore | None = None

    # --------------------------------------------------------------------------------------- lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any):
        import os

        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedrl-model")
        self.batcher = Batcher(
            self._run_batch,
            self.executor,
            self.settings.max_batch,
            self.settings.max_wait_ms,
            self.stats,
            expecting=lambda: self.arriving > 0,
        )
        # Decoding images holds the GIL; more parallel decoders than cores only add memory.
        self.parsing = asyncio.Semaphore(max(2, os.cpu_count() or 2))
        self.batcher.start()
        try:
            yield
        finally:
            # uvicorn runs this after in-flight requests finished (or the graceful timeout cancelled them)
            await self.batcher.stop()
            self.executor.shutdown(wait=True, cancel_futures=True)

    def app(self):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.middleware import Middleware
        from starlette.routing import Route

        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/v1/embeddings", self._post(self.embeddings, batched=True), methods=["POST"]),
            Route("/v1/chat/completions", self._post(self.chat), methods=["POST"]),
            Route("/v1/search", self._post(self.search, batched=True), methods=["POST"]),
        ]

        async def http_error(request, exc: HTTPException):
            if exc.status_code == 404:
                message = f"no route {request.url.path}"
            elif exc.status_code == 405:
                message = f"{request.method} is not allowed on {request.url.path}"
            else:
                message = exc.detail or HTTPStatus(exc.status_code).phrase
            return _error_response(exc.status_code, message, headers=exc.headers)

        middleware = [Middleware(UnreadBodyGuard)]
        if self.api_key:
            middleware.append(Middleware(BearerAuth, api_key=self.api_key))
        return Starlette(
            routes=routes,
            middleware=middleware,
            lifespan=self.lifespan,
            exception_handlers={HTTPException: http_error},
        )

    # ---------------------------------------------------------------------------------------- GET routes

    async def health(self, _request):
        return _json_response(
            200,
            {
                "status": "ok",
                "queue": {"items": self.inflight, "limit": self.settings.max_queue},
                "batches": self.stats.to_json(),
            },
        )

    async def models(self, _request):
        names = [
            n for n, m in ((self.generator_name, self.generator), (self.embedder_name, self.embedder)) if m
        ]
        return _json_response(
            200,
            {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "embedrl"} for n in names]},
        )

    async def openapi(self, _request):
        return _json_response(200, openapi_document(self.settings, auth=self.api_key is not None))

    # ------------------------------------------------------------------------------------- POST plumbing

    def _post(self, handler: Callable[[bytes], Awaitable[dict]], batched: bool = False):
        async def endpoint(request):
            from starlette.requests import ClientDisconnect

            arriving = [batched]  # cleared by _embed once the request is queued
            self.arriving += batched
            _ARRIVING.set(arriving)
            try:
                raw = await self._read_body(request)
                reply = await asyncio.wait_for(handler(raw), self.settings.request_timeout)
            except RequestError as exc:
                return _error_response(exc.status, str(exc), close=exc.close, headers=exc.headers)
            except asyncio.TimeoutError:
                self.stats.timeouts += 1
                return _error_response(
                    HTTPStatus.GATEWAY_TIMEOUT,
                    f"no reply within {self.settings.request_timeout:g}"
                    " s (--request-timeout); the server is busy or the request is too large",
                )
            except asyncio.CancelledError:
                # uvicorn cancels what is still running once --timeout-graceful-shutdown has passed: the client
                # gets a reason instead of a dropped connection
                return _error_response(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "the server is shutting down and did not "
                    "finish this request in time (--timeout-graceful-shutdown)",
                    close=True,
                )
            except ClientDisconnect:  # nobody is left to read a reply
                return _error_response(HTTPStatus.BAD_REQUEST, "the client disconnected", close=True)
            except EmbedRLError as exc:
                return _error_response(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc))
            except Exception as exc:  # keep serving; the client gets the reason
                log.exception("request failed")
                return _error_response(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            finally:
                self._arrived(arriving)
            return _json_response(HTTPStatus.OK, reply)

        return endpoint

    async def _read_body(self, request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError("Content-Length is not a number", close=True)
            if int(declared) > limit:
                raise RequestError(
                    f"body of {int(declared)} bytes is over the limit of {limit} bytes (--max-body-bytes)",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    close=True,
                )

        async def read() -> bytes:
            chunks, total = [], 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:  # a chunked body declares no length
                    raise RequestError(
                        f"body is over the limit of {limit} bytes (--max-body-bytes)",
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        close=True,
                    )
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            raw = await asyncio.wait_for(read(), self.settings.body_timeout)
        except asyncio.TimeoutError:
            raise RequestError(
                f"the request body did not arrive within {self.settings.body_timeout:g} s (--body-timeout)",
                HTTPStatus.REQUEST_TIMEOUT,
                close=True,
            ) from None
        if not raw:
            raise RequestError("the request needs a JSON body")
        return raw

    async def _parse(self, parse: Callable[[], Any]) -> Any:
        """Run JSON decoding, validation and image decoding off the event loop, a few at a time."""
        from starlette.concurrency import run_in_threadpool

        assert self.parsing is not None
        async with self.parsing:
            return await run_in_threadpool(parse)

    def _admit(self, size: int) -> None:
        """Take `size` places in the bounded queue, or refuse with 503 and when to come back."""
        limit = self.settings.max_queue
        if self.inflight + size > limit:
            if size > limit:
                raise RequestError(
                    f"the request has {size} items, more than the whole queue holds ({limit}, "
                    "--max-queue); split it",
                    HTTPStatus.BAD_REQUEST,
                )
            self.stats.rejected_queue_full += 1
            wait = max(1, min(60, math.ceil(self.inflight * self.stats.seconds_per_item)))
            raise RequestError(
                f"the server is busy: {self.inflight} item(s) queued, limit {limit} (--max-queue); "
                f"retry in {wait} s",
                HTTPStatus.SERVICE_UNAVAILABLE,
                headers={"Retry-After": str(wait)},
            )
        self.inflight += size

    async def _embed(
        self,
        items: list[Item],
        tcots: list[str | None],
        reasoning: str,
        side: str = "query",
        target_modality: str | None = None,
        want_evidence: bool = False,
    ) -> EmbedOutcome:
        assert self.batcher is not None
        self._arrived(_ARRIVING.get())
        self._admit(len(items))
        try:
            future = asyncio.get_running_loop().create_future()
            self.batcher.submit(
                EmbedJob(items, tcots, reasoning, side, target_modality, future, want_evidence)
            )
            return await future
        finally:
            self.inflight -= len(items)

    def _arrived(self, arriving: list[bool] | None) -> None:
        if arriving and arriving[0]:
            arriving[0] = False
            self.arriving -= 1

    async def _on_model_thread(self, work: Callable[[], Any]) -> Any:
        """Run `work` on the model thread as one queue place. A caller that gives up (504) cancels work that has
        not started; work that has started keeps its place until it ends, since it still holds the model."""
        assert self.executor is not None
        self._admit(1)
        loop = asyncio.get_running_loop()
        try:
            future = self.executor.submit(work)
        except BaseException:
            self.inflight -= 1
            raise

        def release(_done: Any) -> None:
            loop.call_soon_threadsafe(self._release, 1)

        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def _release(self, size: int) -> None:
        self.inflight -= size

    # ------------------------------------------------------------------------------------------- chat

    async def chat(self, raw: bytes) -> dict:
        if self.generator is None:
            raise RequestError("this server has no chat model", HTTPStatus.NOT_FOUND)

        def parse() -> tuple[dict, list[dict], GenerationSettings]:
            body = parse_body(raw)
            if body.get("stream"):
                raise RequestError('streaming is not supported; send "stream": false')
            if body.get("n") not in (None, 1):
                raise RequestError("only n = 1 is supported")
            conversation = chat_messages_to_conversation(body.get("messages"), _Budget(self.settings))
            return body, conversation, chat_settings(body)

        body, conversation, settings = await self._parse(parse)
        # A backend that counts tokens says whether max_tokens cut the reply; OpenAI clients read both.
        detailed = getattr(self.generator, "generate_with_usage", None)

        def generate() -> tuple[Any, str]:
            if callable(detailed):
                generation = detailed([conversation], settings)[0]
                return generation, generation.text
            return None, self.generator.generate([conversation], settings)[0]

        generation, text = await self._on_model_thread(generate)
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": _model_name(body, self.generator_name),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": generation.finish_reason if generation is not None else "stop",
                }
            ],
        }
        if generation is not None:
            reply["usage"] = {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens + generation.completion_tokens,
            }
        return reply

    # ------------------------------------------------------------------------------------- embeddings

    def _reasoning_allowed(self, reasoning: str) -> None:
        if reasoning == "generate" and self.reasoner is None:
            raise RequestError("'reasoning': 'generate' needs a Reasoner; start the server with --reasoner")

    async def embeddings(self, raw: bytes) -> dict:
        if self.embedder is None:
            raise RequestError("this server has no embedding model", HTTPStatus.NOT_FOUND)

        def parse():
            body = parse_body(raw)
            encoding = _choice(body, "encoding_format", ("float", "base64"), "float")
            dimensions = body.get("dimensions")
            if dimensions is not None and dimensions != self.embedder.dim:
                raise RequestError(
                    f"'dimensions' must be {self.embedder.dim} (this Embedder's size) or absent"
                )
            reasoning = _reasoning_field(body, self.settings.reasoning)
            self._reasoning_allowed(reasoning)
            side = _choice(body, "side", ("query", "candidate"), "query")
            target = _choice(body, "target_modality", ("text", "image", "video", None), None)
            items, tcots = embedding_inputs_to_items(body.get("input"), _Budget(self.settings))
            return body, encoding, reasoning, side, target, items, tcots

        body, encoding, reasoning, side, target, items, tcots = await self._parse(parse)
        outcome = await self._embed(items, tcots, reasoning, side, target)
        _raise_failures(outcome, "input")
        data = []
        for i, (vec, tcot) in enumerate(zip(outcome.vectors, outcome.tcots)):
            vector = np.asarray(vec, dtype="<f4")
            entry: dict[str, Any] = {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(vector.tobytes()).decode()
                if encoding == "base64"
                else vector.astype(float).tolist(),
            }
            if reasoning == "generate" and tcots[i] is None:
                entry["tcot"] = tcot  # embedrl extension: what the Reasoner wrote (OpenAI clients ignore it)
            data.append(entry)
        # Tokens are not counted; the field is there because OpenAI clients expect it.
        return {
            "object": "list",
            "data": data,
            "model": _model_name(body, self.embedder_name),
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    # ------------------------------------------------------------------------------------------ search

    async def search(self, raw: bytes) -> dict:
        if self.index is None:
            raise RequestError("this server has no index; start it with --index INDEX", HTTPStatus.NOT_FOUND)
        index = self.index

        def parse():
            body = parse_body(raw)
            if "query" not in body:
                raise RequestError("'query' is required: a string or an item object")
            k = _number(body, "k", int, 10, 1, self.settings.max_k)
            reasoning = _reasoning_field(body, index.default_query_reasoning(self.reasoner is not None))
            self._reasoning_allowed(reasoning)
            item, tcot = _item_entry(body["query"], "query", 0, _Budget(self.settings))
            return body, k, reasoning, replace(item, id="query"), tcot

        body, k, reasoning, item, tcot = await self._parse(parse)
        outcome = await self._embed(
            [item], [tcot], reasoning, "query", index.target_modality, want_evidence=True
        )
        _raise_failures(outcome, "query", single=True)
        from starlette.concurrency import run_in_threadpool

        hits = await run_in_threadpool(index.search, outcome.vectors[:1], k)
        assert outcome.evidence is not None
        return {
            "object": "search.result",
            "model": _model_name(body, self.embedder_name),
            "query": {"tcot": outcome.tcots[0], "evidence": outcome.evidence[0]},
            "data": [{"object": "search.hit", **hit} for hit in hits[0]],
        }

    # --------------------------------------------------------------------------------- the model thread

    def _run_batch(self, jobs: list[EmbedJob]) -> list[EmbedOutcome | BaseException]:
        """One model batch (runs on the model thread): the jobs' items grouped by how their T-CoT is made, each
        group through `encode_detailed`, rows routed back to their jobs."""
        from .pipeline import encode_detailed

        outcomes: list[EmbedOutcome | BaseException] = [
            EmbedOutcome(
                np.full((job.size, self.embedder.dim), np.nan, dtype=np.float32), list(job.tcots), []
            )
            for job in jobs
        ]
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for j, job in enumerate(jobs):
            for row, given in enumerate(job.tcots):
                # A T-CoT the client sent is used as it is; the others are written by the Reasoner when asked.
                key = (
                    ("given",)
                    if given is not None or job.reasoning == "off"
                    else ("generate", job.side, job.target_modality)
                )
                # Frames a client sent are embedded as given (all of them, in its order: its keyframe numbers
                # index them), not sampled again to this Embedder's own count.
                video = job.items[row].video
                sent = len(video.frames) if video is not None and video.frames else None
                groups.setdefault((*key, sent), []).append((j, row))
        for key, members in groups.items():
            # Unique ids: the item ids of different requests collide, and notes and failures are keyed by id.
            items = [replace(jobs[j].items[row], id=f"{j}/{row}") for j, row in members]
            try:
                if key[0] == "given":
                    result = encode_detailed(
                        items,
                        self.embedder,
                        None,
                        reasoning="off",
                        tcots=[jobs[j].tcots[row] for j, row in members],
                        batch_size=self.settings.max_batch,
                        progress=False,
                        num_frames=key[-1],
                    )
                else:
                    result = encode_detailed(
                        items,
                        self.embedder,
                        self.reasoner,
                        reasoning="generate",
                        side=key[1],
                        target_modality=key[2],
                        num_frames=key[-1],
                        batch_size=self.settings.max_batch,
                        progress=False,
                    )
            except Exception as exc:  # noqa: BLE001 - the requests of this group fail, the others go on
                log.exception("encoding failed")
                for j, _row in members:
                    outcomes[j] = exc
                continue
            failed = {failure.index: failure for failure in result.failures}
            for position, (j, row) in enumerate(members):
                outcome = outcomes[j]
                if isinstance(outcome, BaseException):
                    continue
                outcome.vectors[row] = result.vectors[position]
                outcome.tcots[row] = result.tcots[position]
                if position in failed:
                    outcome.failures.append((row, failed[position].stage, failed[position].message))
        for job, outcome in zip(jobs, outcomes):
            if job.want_evidence and isinstance(outcome, EmbedOutcome):
                from .index import evidence_record

                outcome.evidence = [
                    evidence_record(self.embedder, item, tcot) for item, tcot in zip(job.items, outcome.tcots)
                ]
        return outcomes


def _raise_failures(outcome: EmbedOutcome, field_name: str, single: bool = False) -> None:
    if not outcome.failures:
        return
    row, stage, message = sorted(outcome.failures)[0]
    message = re.sub(r"^\d+/\d+: ", "", message)  # the internal id the batch gave the item
    where = field_name if single else f"{field_name}[{row}]"
    more = f" (and {len(outcome.failures) - 1} more item(s))" if len(outcome.failures) > 1 else ""
    status = HTTPStatus.BAD_REQUEST if stage == "media" else HTTPStatus.UNPROCESSABLE_ENTITY
    raise RequestError(f"{where}: {stage}: {message}{more}", status)


class UnreadBodyGuard:
    """ASGI middleware: a reply sent before the request body was read (a 401, a 404, a refused size) closes the
    connection unless the rest of the body is already there or arrives at once (`drain_bytes` within
    `drain_seconds`). Otherwise the server would go on reading, for nobody, whatever a client keeps sending."""

    def __init__(self, app: Any, drain_bytes: int = 65_536, drain_seconds: float = 0.05):
        self.app = app
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        state = {"done": headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers}

        async def tracked_receive() -> dict:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["done"] = True
            return message

        async def guarded_send(message: dict) -> None:
            if message["type"] == "http.response.start" and not state["done"]:
                sent = message.get("headers", [])
                closing = any(k.lower() == b"connection" and v.lower() == b"close" for k, v in sent)
                if not closing and not await self._drain(tracked_receive, state):
                    message = {**message, "headers": [*sent, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, tracked_receive, guarded_send)

    async def _drain(self, receive: Any, state: dict) -> bool:
        loop = asyncio.get_running_loop()
        deadline, size = loop.time() + self.drain_seconds, 0
        while not state["done"]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                return False
            size += len(message.get("body", b""))
            if size > self.drain_bytes:
                return False
        return True


class BearerAuth:
    """ASGI middleware: every route but the open ones needs `Authorization: Bearer <api key>`."""

    def __init__(self, app: Any, api_key: str):
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send 'Authorization: Bearer <key>'"
            if not header
            else "wrong API key (Authorization: Bearer <key>)"
        )
        response = _error_response(HTTPStatus.UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


# -------------------------------------------------------------------------------------------- OpenAPI


def openapi_document(settings: ServeSettings, auth: bool = False) -> dict:
    """The server's OpenAPI 3.1 description, with this server's limits in the schemas."""
    from . import __version__

    s = settings
    image = {
        "type": "string",
        "description": f"a base64 data: URL (PNG, JPEG, WebP, GIF, BMP, TIFF), at most "
        f"{s.max_image_pixels:,} pixels",
        "pattern": "^data:",
    }
    text = {"type": "string", "maxLength": s.max_text_chars}
    item = {
        "type": "object",
        "properties": {
            "id": {"type": ["string", "integer"]},
            "text": text,
            "instruction": text,
            "images": {"type": "array", "items": image, "maxItems": s.max_images},
            "frames": {
                "type": "array",
                "items": image,
                "maxItems": s.max_frames,
                "description": "video frames in order",
            },
            "tcot": {
                "type": "string",
                "maxLength": s.max_tcot_chars,
                "description": f"a T-CoT to embed with the item (at most {s.max_boxes} boxes)",
            },
        },
    }
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": "integer"},
                },
            }
        },
    }
    evidence = {
        "type": "object",
        "properties": {
            "keywords": {"type": "array", "items": {"type": "string"}},
            "crop_boxes": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "integer"}},
                "description": "(x1, y1, x2, y2) in pixels of the item's first image or frame",
            },
            "keyframes": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "0-based positions in the item's sampled frames",
            },
            "num_frames": {"type": "integer"},
            "image_size": {"type": ["array", "null"]},
            "notes": {"type": "array", "items": {"type": "string"}},
        },
    }
    errors = {
        str(code): {
            "description": HTTPStatus(code).phrase,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in (400, 401, 408, 413, 422, 503, 504)
    }

    def post(summary: str, request: str, response: str) -> dict:
        return {
            "post": {
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}},
                },
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}
                        },
                    },
                    **errors,
                },
            }
        }

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "embedrl serve",
            "version": __version__,
            "description": "OpenAI-compatible embeddings and chat for Embed-RL models, and search over an "
            f"embedrl index. Bodies up to {s.max_body_bytes:,} bytes (413 beyond).",
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "liveness, queue length and batch sizes",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/v1/models": {
                "get": {"summary": "the served models", "responses": {"200": {"description": "OK"}}}
            },
            "/v1/embeddings": post("embed strings or embedrl items", "EmbeddingRequest", "EmbeddingResponse"),
            "/v1/chat/completions": post(
                "chat with the Reasoner (no streaming, n = 1)", "ChatRequest", "ChatResponse"
            ),
            "/v1/search": post("search the loaded index", "SearchRequest", "SearchResponse"),
        },
        "components": {
            "schemas": {
                "Error": error,
                "Item": item,
                "Evidence": evidence,
                "EmbeddingRequest": {
                    "type": "object",
                    "required": ["input"],
                    "properties": {
                        "model": {"type": "string"},
                        "input": {
                            "oneOf": [
                                text,
                                {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": s.max_items,
                                    "items": {"oneOf": [text, {"$ref": "#/components/schemas/Item"}]},
                                },
                            ]
                        },
                        "encoding_format": {"enum": ["float", "base64"]},
                        "dimensions": {"type": "integer"},
                        "reasoning": {
                            "enum": list(REASONING),
                            "default": s.reasoning,
                            "description": "generate: the server's Reasoner writes a T-CoT for items without one",
                        },
                        "side": {"enum": ["query", "candidate"], "default": "query"},
                        "target_modality": {"enum": ["text", "image", "video"]},
                    },
                },
                "EmbeddingResponse": {
                    "type": "object",
                    "properties": {
                        "object": {"const": "list"},
                        "model": {"type": "string"},
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "object": {"const": "embedding"},
                                    "index": {"type": "integer"},
                                    "embedding": {
                                        "oneOf": [
                                            {"type": "array", "items": {"type": "number"}},
                                            {"type": "string", "description": "base64 float32 little-endian"},
                                        ]
                                    },
                                    "tcot": {"type": "string"},
                                },
                            },
                        },
                        "usage": {"type": "object"},
                    },
                },
                "ChatRequest": {
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        "model": {"type": "string"},
                        "messages": {"type": "array", "minItems": 1, "maxItems": s.max_items},
                        "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_NEW_TOKENS},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 100},
                        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                        "seed": {"type": "integer", "minimum": 0},
                        "stream": {"const": False},
                        "n": {"const": 1},
                    },
                },
                "ChatResponse": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "chat.completion"},
                        "created": {"type": "integer"},
                        "model": {"type": "string"},
                        "choices": {"type": "array"},
                        "usage": {"type": "object"},
                    },
                },
                "SearchRequest": {
                    "type": "object",
                    "required": ["query"],
                    "properties": {
                        "query": {"oneOf": [text, {"$ref": "#/components/schemas/Item"}]},
                        "k": {"type": "integer", "minimum": 1, "maximum": s.max_k, "default": 10},
                        "reasoning": {"enum": list(REASONING)},
                    },
                },
                "SearchResponse": {
                    "type": "object",
                    "properties": {
                        "object": {"const": "search.result"},
                        "query": {
                            "type": "object",
                            "properties": {
                                "tcot": {"type": ["string", "null"]},
                                "evidence": {"$ref": "#/components/schemas/Evidence"},
                            },
                        },
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "rank": {"type": "integer"},
                                    "id": {"type": "string"},
                                    "score": {"type": "number"},
                                    "tcot": {"type": ["string", "null"]},
                                    "evidence": {"$ref": "#/components/schemas/Evidence"},
                                    "item": {"type": "object"},
                                },
                            },
                        },
                    },
                },
            }
        },
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


# ---------------------------------------------------------------------------------------- the server


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening: binding first finds a busy port before the models
    load, and clients are refused (not left waiting) until the server can answer."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _protocol_class(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for the request line and headers: its keep-alive timer restarts
    with every byte, so a client trickling a header would otherwise hold its connection forever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._header_deadline)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _header_deadline(self) -> None:
            self._header_timer = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if self.conn.their_state is h11.IDLE and not busy and not self.transport.is_closing():
                log.debug("closing a connection whose request headers did not arrive in %g s", header_timeout)
                self.transport.close()

    return Protocol


class EmbedRLServer:
    """Holds the models; `start()` serves them on a background thread (tests), `serve_forever()` blocks in the
    main thread and stops gracefully on SIGINT / SIGTERM."""

    def __init__(
        self,
        generator: Any = None,
        embedder: EmbedderLike | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        generator_name: str = "reasoner",
        embedder_name: str = "embedder",
        *,
        reasoner: ReasonerLike | None = None,
        index: Any = None,
        settings: ServeSettings | None = None,
        api_key: str | None = None,
        sock: socket.socket | None = None,
    ):
        self.service = EmbedRLService(
            generator,
            embedder,
            reasoner=reasoner,
            index=index,
            settings=settings,
            api_key=api_key,
            generator_name=generator_name,
            embedder_name=embedder_name,
        )
        self.settings = self.service.settings
        self.socket = sock if sock is not None else bind_socket(host, port)
        self.socket.listen(self.settings.backlog)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def generator(self) -> Any:
        return self.service.generator

    @property
    def embedder(self) -> Any:
        return self.service.embedder

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _uvicorn(self):
        import uvicorn

        s = self.settings
        config = uvicorn.Config(
            self.service.app(),
            loop="asyncio",
            http=_protocol_class(s.header_timeout),
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=s.timeout_keep_alive,
            timeout_graceful_shutdown=s.timeout_graceful_shutdown,
            h11_max_incomplete_event_size=s.max_header_bytes,
            limit_concurrency=s.max_connections,
            backlog=s.backlog,
        )
        self._server = uvicorn.Server(config)
        return self._server

    def start(self, timeout: float = 60.0) -> EmbedRLServer:
        server = self._uvicorn()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[self.socket])), name="embedrl-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EmbedRLError("the server did not start (see the log above)")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        self._uvicorn().run(sockets=[self.socket])

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_graceful_shutdown + 10)
        self.socket.close()

    def __enter__(self) -> EmbedRLServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
