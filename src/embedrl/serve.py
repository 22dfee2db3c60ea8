"""An OpenAI-compatible HTTP server for a Reasoner (chat) and an Embedder (embeddings), standard library only.

Endpoints:
- `GET  /health`, `GET /v1/models`
- `POST /v1/chat/completions` — OpenAI chat format; images as `image_url` items with base64 `data:` URLs.
  Served by a local generation backend (a Reasoner, a teacher or the process-reward judge). A backend with
  `generate_with_usage` (replies with token counts) gives OpenAI's `usage` and `finish_reason: "length"`.
- `POST /v1/embeddings` — `input` is a string, a list of strings, or a list of embedrl item objects
  `{"text", "instruction", "images": [data URLs], "frames": [data URLs], "tcot"}`: the server builds the
  Embedder input with the same `build_input` as local inference, so a remote reward sees crops and keyframes
  exactly as evaluation does. Remote clients never name server-side files.

One model call runs at a time (a lock); the HTTP layer is threaded so health checks stay responsive.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from .data.items import Item, VideoRef
from .data.media import DEFAULT_MAX_IMAGE_PIXELS, decode_image_file, to_rgb
from .errors import EmbedRLError, MediaError
from .models.reasoner import GenerationSettings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_NEW_TOKENS = 1_000_000


class RequestError(Exception):
    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


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


def _text(value: Any, where: str) -> str:
    """A string field as the tokenizers will take it: JSON escapes can make lone UTF-16 surrogates, which
    no UTF-8 encoder accepts."""
    if not isinstance(value, str):
        raise RequestError(f"{where}: must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"{where}: contains a lone surrogate \\u{ord(value[exc.start]):04x} at character "
                           f"{exc.start} (not valid Unicode text)") from None
    return value


def decode_image(url: Any, where: str) -> Image.Image:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError(f"{where}: only base64 data: URLs are accepted for images")
    try:
        _header, payload = url.split(",", 1)
        raw = base64.b64decode(payload, validate=True)
    except ValueError as exc:  # no comma, or not base64 (binascii.Error is a ValueError)
        raise RequestError(f"{where}: not a base64 data: URL ({exc})") from None
    try:
        # the allowed formats, pixel limit, EXIF orientation and RGB conversion exactly as for local files
        return decode_image_file(io.BytesIO(raw), DEFAULT_MAX_IMAGE_PIXELS, where)
    except MediaError as exc:
        raise RequestError(f"{where}: not a decodable image: {str(exc).removeprefix(where + ': ')}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the client's bytes make Pillow raise is a bad request
        raise RequestError(f"{where}: not a decodable image ({type(exc).__name__}: {exc})") from None


def _parse_body(raw: bytes) -> dict:
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


def chat_messages_to_conversation(messages: Any) -> list[dict]:
    """OpenAI chat messages -> our conversation format (PIL images inline)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    conversation = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise RequestError(f"messages[{i}]: needs 'role' and 'content'")
        if message["role"] not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}].role: must be 'system', 'user' or 'assistant'")
        content = message.get("content", "")
        if isinstance(content, str):
            content = _text(content, f"messages[{i}].content")
            conversation.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise RequestError(f"messages[{i}].content: must be a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = _text(part.get("text", ""), f"messages[{i}].content[{j}].text")
                parts.append({"type": "text", "text": text})
            elif kind == "image_url":
                url = part.get("image_url", {})
                url = url.get("url") if isinstance(url, dict) else url
                parts.append({"type": "image", "image": decode_image(url, f"messages[{i}].content[{j}]")})
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
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int))
            or (isinstance(value, float) and not math.isfinite(value))):  # JSON readers accept NaN and Infinity
        raise RequestError(f"'{key}' must be {'an integer' if kind is int else 'a finite number'}")
    if value < low or (high is not None and value > high):
        raise RequestError(f"'{key}' must be in [{low}, {high if high is not None else 'inf'}]")
    return kind(value)


def chat_settings(body: dict) -> GenerationSettings:
    """OpenAI sampling fields -> GenerationSettings; wrong types or ranges are the client's error (400)."""
    max_tokens = (_number(body, "max_tokens", int, None, 1, MAX_NEW_TOKENS)
                  or _number(body, "max_completion_tokens", int, 512, 1, MAX_NEW_TOKENS))
    return GenerationSettings(max_new_tokens=max_tokens,
                              temperature=_number(body, "temperature", float, 0.0, 0.0, 100.0),
                              top_p=_number(body, "top_p", float, 1.0, 0.0, 1.0),
                              seed=_number(body, "seed", int, None, 0, 2**63 - 1))


def embedding_inputs_to_items(inputs: Any) -> tuple[list[Item], list[str | None]]:
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'input' must be a string or a non-empty list")
    items, tcots = [], []
    for i, entry in enumerate(inputs):
        if isinstance(entry, str):
            entry = _text(entry, f"input[{i}]")
            if not entry.strip():
                raise RequestError(f"input[{i}]: is empty")
            items.append(Item(id=str(i), text=entry))
            tcots.append(None)
            continue
        if not isinstance(entry, dict):
            raise RequestError(f"input[{i}]: must be a string or an object")
        for key in ("text", "instruction", "tcot"):
            if entry.get(key) is not None:
                _text(entry[key], f"input[{i}].{key}")
        entry_id = entry.get("id", i)
        if isinstance(entry_id, bool) or not isinstance(entry_id, (str, int)):
            raise RequestError(f"input[{i}].id: must be a string or an integer")
        if isinstance(entry_id, str):
            _text(entry_id, f"input[{i}].id")
        for key in ("images", "frames"):
            if entry.get(key) is not None and not isinstance(entry[key], list):
                raise RequestError(f"input[{i}].{key}: must be a list of data: URLs")
        images = [decode_image(u, f"input[{i}].images[{k}]") for k, u in enumerate(entry.get("images") or [])]
        frames = [decode_image(u, f"input[{i}].frames[{k}]") for k, u in enumerate(entry.get("frames") or [])]
        item = Item(id=str(entry_id), text=entry.get("text"), instruction=entry.get("instruction"),
                    images=images, video=VideoRef(frames=frames) if frames else None)
        if not item.has_content():
            raise RequestError(f"input[{i}]: has no text, images or frames")
        items.append(item)
        tcots.append(entry.get("tcot"))
    return items, tcots


class EmbedRLServer:
    """Holds the models; `start()` serves them on a background thread (tests), `serve_forever()` blocks."""

    def __init__(self, generator: Any = None, embedder: Any = None, host: str = "127.0.0.1", port: int = 0,
                 generator_name: str = "reasoner", embedder_name: str = "embedder", batch_size: int = 8):
        if generator is None and embedder is None:
            raise EmbedRLError("serve needs a generation backend, an embedder, or both")
        self.generator = generator
        self.embedder = embedder
        self.generator_name = generator_name
        self.embedder_name = embedder_name
        self.batch_size = batch_size
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> EmbedRLServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="embedrl-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> EmbedRLServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------- handlers

    def models(self) -> dict:
        names = [n for n, m in ((self.generator_name, self.generator), (self.embedder_name, self.embedder)) if m]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "embedrl"} for n in names]}

    def chat(self, body: dict) -> dict:
        if self.generator is None:
            raise RequestError("this server has no chat model", HTTPStatus.NOT_FOUND)
        if body.get("stream"):
            raise RequestError("streaming is not supported; send \"stream\": false")
        if body.get("n") not in (None, 1):
            raise RequestError("only n = 1 is supported")
        conversation = chat_messages_to_conversation(body.get("messages"))
        settings = chat_settings(body)
        # A backend that counts tokens says whether max_tokens cut the reply; OpenAI clients read both.
        detailed = getattr(self.generator, "generate_with_usage", None)
        with self.lock:
            if callable(detailed):
                generation = detailed([conversation], settings)[0]
                text = generation.text
            else:
                generation, text = None, self.generator.generate([conversation], settings)[0]
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
            "model": _model_name(body, self.generator_name),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": generation.finish_reason if generation is not None else "stop"}],
        }
        if generation is not None:
            reply["usage"] = {"prompt_tokens": generation.prompt_tokens,
                              "completion_tokens": generation.completion_tokens,
                              "total_tokens": generation.prompt_tokens + generation.completion_tokens}
        return reply

    def embeddings(self, body: dict) -> dict:
        if self.embedder is None:
            raise RequestError("this server has no embedding model", HTTPStatus.NOT_FOUND)
        from .pipeline import embed_items

        items, tcots = embedding_inputs_to_items(body.get("input"))
        with self.lock:
            vectors, _ = embed_items(self.embedder, items, tcots, batch_size=self.batch_size,
                                     media_loader=_in_memory_media)
        data = [{"object": "embedding", "index": i, "embedding": vec.astype(float).tolist()}
                for i, vec in enumerate(np.asarray(vectors))]
        return {"object": "list", "data": data, "model": _model_name(body, self.embedder_name)}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.address_string(), *args)

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError) as exc:
                    # the client went away (closed, timed out, reset): nobody is left to tell
                    log.debug("%s went away: %s", self.address_string(), exc)
                    self.close_connection = True

            def _reply(self, status: int, payload: dict, close: bool = False) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if close:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, close: bool = False) -> None:
                if close:  # the request body was not read: the connection cannot carry another request
                    self.close_connection = True
                self._reply(status, {"error": {"message": message, "type": HTTPStatus(status).phrase,
                                               "code": status}}, close=close)

            def _route(self) -> str:
                return urlsplit(self.path).path

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self._route()
                if path in ("/health", "/v1/health"):
                    self._reply(HTTPStatus.OK, {"status": "ok"})
                elif path == "/v1/models":
                    self._reply(HTTPStatus.OK, server.models())
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no route {path}")

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    raise RequestError("chunked request bodies are not supported; send Content-Length",
                                       HTTPStatus.LENGTH_REQUIRED)
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    raise RequestError("Content-Length is not a number") from None
                if length <= 0:
                    raise RequestError("the request needs a JSON body")
                if length > MAX_BODY_BYTES:
                    raise RequestError(f"body of {length} bytes is over the limit of {MAX_BODY_BYTES}",
                                       HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                return self.rfile.read(length)

            def do_POST(self) -> None:  # noqa: N802
                try:
                    raw = self._read_body()
                except RequestError as exc:
                    self._error(exc.status, str(exc), close=True)
                    return
                routes = {"/v1/chat/completions": server.chat, "/v1/embeddings": server.embeddings}
                route = routes.get(self._route())
                if route is None:
                    self._error(HTTPStatus.NOT_FOUND, f"no route {self._route()}")
                    return
                # Only the work is guarded: a client gone while the reply is written is handle()'s to drop,
                # not a failed request.
                try:
                    reply = route(_parse_body(raw))
                except RequestError as exc:
                    self._error(exc.status, str(exc))
                except EmbedRLError as exc:
                    self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc))
                except Exception as exc:  # keep serving; the client gets the reason
                    log.exception("request failed")
                    self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
                else:
                    self._reply(HTTPStatus.OK, reply)

        return Handler


def _model_name(body: dict, default: str) -> str:
    """The client's model name echoed back, when it is one: anything else in that field (a list nested
    hundreds deep, an integer too long to print) must not break writing the reply."""
    model = body.get("model")
    return model if isinstance(model, str) else default


def _in_memory_media(item: Item):
    frames = list(item.video.frames) if item.video is not None and item.video.frames else []
    return [to_rgb(i) for i in item.images], frames
