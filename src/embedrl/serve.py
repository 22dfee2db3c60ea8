"""An OpenAI-compatible HTTP server for a Reasoner (chat) and an Embedder (embeddings), standard library only.

Endpoints:
- `GET  /health`, `GET /v1/models`
- `POST /v1/chat/completions` — OpenAI chat format; images as `image_url` items with base64 `data:` URLs.
  Served by a local generation backend (a Reasoner, a teacher or the process-reward judge).
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
from .data.media import load_image, to_rgb
from .errors import EmbedRLError
from .models.reasoner import GenerationSettings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_NEW_TOKENS = 1_000_000


class RequestError(Exception):
    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def decode_image(url: Any, where: str) -> Image.Image:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError(f"{where}: only base64 data: URLs are accepted for images")
    try:
        header, payload = url.split(",", 1)
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > 100_000_000:
                raise RequestError(f"{where}: image too large ({img.width}x{img.height})")
            img.load()
            return load_image(img)  # EXIF orientation and RGB conversion exactly as for local files
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise RequestError(f"{where}: image too large ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - whatever the client's bytes make Pillow raise is a bad request
        raise RequestError(f"{where}: not a decodable image ({type(exc).__name__}: {exc})") from None


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
            conversation.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise RequestError(f"messages[{i}].content: must be a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text", ""), str):
                    raise RequestError(f"messages[{i}].content[{j}].text: must be a string")
                parts.append({"type": "text", "text": part.get("text", "")})
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
            if not entry.strip():
                raise RequestError(f"input[{i}]: is empty")
            items.append(Item(id=str(i), text=entry))
            tcots.append(None)
            continue
        if not isinstance(entry, dict):
            raise RequestError(f"input[{i}]: must be a string or an object")
        for key in ("text", "instruction"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise RequestError(f"input[{i}].{key}: must be a string")
        for key in ("images", "frames"):
            if entry.get(key) is not None and not isinstance(entry[key], list):
                raise RequestError(f"input[{i}].{key}: must be a list of data: URLs")
        images = [decode_image(u, f"input[{i}].images[{k}]") for k, u in enumerate(entry.get("images") or [])]
        frames = [decode_image(u, f"input[{i}].frames[{k}]") for k, u in enumerate(entry.get("frames") or [])]
        item = Item(id=str(entry.get("id", i)), text=entry.get("text"), instruction=entry.get("instruction"),
                    images=images, video=VideoRef(frames=frames) if frames else None)
        if not item.has_content():
            raise RequestError(f"input[{i}]: has no text, images or frames")
        tcot = entry.get("tcot")
        if tcot is not None and not isinstance(tcot, str):
            raise RequestError(f"input[{i}].tcot: must be a string")
        items.append(item)
        tcots.append(tcot)
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
        with self.lock:
            text = self.generator.generate([conversation], settings)[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.generator_name),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }

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
        return {"object": "list", "data": data, "model": body.get("model", self.embedder_name)}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.address_string(), *args)

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
                try:
                    try:
                        body = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError as exc:
                        raise RequestError(f"body is not UTF-8 JSON ({exc.reason})") from None
                    except json.JSONDecodeError as exc:
                        raise RequestError(f"body is not JSON: {exc}") from None
                    if not isinstance(body, dict):
                        raise RequestError("body must be a JSON object")
                    self._reply(HTTPStatus.OK, route(body))
                except RequestError as exc:
                    self._error(exc.status, str(exc))
                except EmbedRLError as exc:
                    self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc))
                except Exception as exc:  # keep serving; the client gets the reason
                    log.exception("request failed")
                    self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

        return Handler


def _in_memory_media(item: Item):
    frames = list(item.video.frames) if item.video is not None and item.video.frames else []
    return [to_rgb(i) for i in item.images], frames
