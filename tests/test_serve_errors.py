"""The server answers what a client gets wrong with a 400 naming the field, survives clients that go away, tells
OpenAI clients why a reply ended and what it cost, and answers overload (503), slowness (504) and a missing API
key (401) with a JSON error."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass

import pytest

from embedrl.models.embedder import Embedder
from embedrl.models.reasoner import TransformersBackend
from embedrl.serve import EmbedRLServer, ServeSettings

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{ } loop\n"
EPS_URL = "data:image/png;base64," + base64.b64encode(EPS).decode()


@pytest.fixture(scope="module")
def server(tiny_qwen3_embedder, tiny_qwen3_reasoner):
    generator = TransformersBackend.from_pretrained(tiny_qwen3_reasoner)
    with EmbedRLServer(generator, Embedder.from_pretrained(tiny_qwen3_embedder)) as srv:
        yield srv


def _post(server, route: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
    status, reply, _ = _exchange(server, "POST", route, body, headers)
    return status, reply


def _exchange(
    server, method: str, route: str, body: bytes | dict | None = None, headers: dict | None = None
) -> tuple[int, dict, http.client.HTTPResponse]:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, route, body=raw, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response
    finally:
        conn.close()


CHAT = "/v1/chat/completions"
HI = '{"role": "user", "content": "hi"}'


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        (
            "/v1/embeddings",
            b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "'input': JSON nested too deeply",
        ),
        ("/v1/embeddings", b"[" * 100_000 + b"]" * 100_000, "body: JSON nested too deeply"),
        (
            CHAT,
            ('{"messages": [' + HI + '], "max_tokens": ' + "9" * 5000 + "}").encode(),
            "'max_tokens' must be in [1, 1000000], not an integer of 5000 digits",
        ),
        (
            "/v1/embeddings",
            ('{"input": [' + "7" * 5000 + "]}").encode(),
            "input[0]: must be a string or an object",
        ),
        ("/v1/embeddings", b'{"input": "a \\ud800 b"}', "input[0]: contains a lone surrogate"),
        (
            "/v1/embeddings",
            b'{"input": [{"text": "x", "instruction": "\\udfff"}]}',
            "input[0].instruction: contains a lone surrogate",
        ),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
            "messages[0].content: contains a lone",
        ),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
            "messages[0].content[0].text: contains a lone surrogate",
        ),
        (
            "/v1/embeddings",
            {"input": [{"text": "x", "images": [EPS_URL]}]},
            "input[0].images[0]: not a decodable image: PostScript data, not an image format embedrl reads "
            "(PNG, JPEG, WebP, GIF, BMP, TIFF)",
        ),
        (
            CHAT,
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": EPS_URL}}]}
                ]
            },
            "messages[0].content[0]: not a decodable image: PostScript data",
        ),
    ],
)
def test_client_mistakes_are_400_naming_the_field(server, route, body, message) -> None:
    status, reply = _post(server, route, body)
    assert status == 400, reply
    assert message in reply["error"]["message"]


def test_an_item_the_embedder_cannot_take_fails_only_its_request(server) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (600, 2), (0, 0, 0)).save(buffer, format="PNG")  # 300:1 cannot be resized for the model
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    results: dict = {}
    bodies = {"bad": {"input": ["fine", {"images": [url]}]}, "good": {"input": ["also fine"]}}
    threads = [
        threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, _post(server, "/v1/embeddings", b)))
        for k, b in bodies.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    status, reply = results["bad"]
    assert status == 400 and reply["error"]["message"].startswith(
        "input[1]: media: image of 600x2 px cannot be"
    )
    assert results["good"][0] == 200


def test_a_reply_before_the_body_was_read_closes_the_connection_only_when_needed() -> None:
    with EmbedRLServer(generator=PlainGenerator(), api_key="k") as srv:
        # a small body arrives with its headers: the 401 keeps the connection for the next request
        # (the next request is sent after the reply: pipelined requests are not what this checks)
        with socket.create_connection(srv.address, timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            first = http.client.HTTPResponse(sock)
            first.begin()
            first.read()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            second = http.client.HTTPResponse(sock)
            second.begin()
            assert (first.status, second.status) == (401, 200)
        # a body that keeps coming is not read for nobody: the 401 closes the connection
        with socket.create_connection(srv.address, timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 401 and response.getheader("Connection") == "close"


def test_the_server_still_works_after_the_bad_requests(server) -> None:
    status, reply = _post(server, "/v1/embeddings", {"input": "a \u00e9 b"})
    assert status == 200 and len(reply["data"]) == 1


# ------------------------------------------------------------------------- stub generator, no model


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class StubGenerator:
    """Writes `max_new_tokens` words unless its reply (3 words) is shorter; counts one token per word."""

    name = "stub"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def generate(self, conversations, settings):
        return [g.text for g in self.generate_with_usage(conversations, settings)]

    def generate_with_usage(self, conversations, settings):
        self.started.set()
        self.release.wait(30)
        words = ["one", "two", "three"][: settings.max_new_tokens]
        finish = "length" if settings.max_new_tokens < 3 else "stop"
        return [Generation(" ".join(words), 7, len(words), finish) for _ in conversations]


class PlainGenerator:
    name = "plain"

    def generate(self, conversations, settings):
        return ["done"] * len(conversations)


def test_chat_reports_usage_and_why_the_reply_ended() -> None:
    generator = StubGenerator()
    generator.release.set()
    with EmbedRLServer(generator=generator) as srv:
        status, cut = _post(srv, CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert status == 200
        assert cut["choices"][0]["finish_reason"] == "length"
        assert cut["choices"][0]["message"]["content"] == "one two"
        assert cut["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
        status, full = _post(srv, CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50})
        assert full["choices"][0]["finish_reason"] == "stop"
        assert full["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_chat_with_a_backend_that_counts_nothing_still_answers() -> None:
    with EmbedRLServer(generator=PlainGenerator()) as srv:
        status, reply = _post(srv, CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and reply["choices"][0]["message"]["content"] == "done"
    assert reply["choices"][0]["finish_reason"] == "stop" and "usage" not in reply


def test_the_transformers_backend_reports_a_reply_cut_by_max_tokens(server) -> None:
    status, reply = _post(server, CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    usage = reply["usage"]
    assert (
        status == 200 and reply["choices"][0]["finish_reason"] == "length"
    )  # the tiny model never stops by 3
    assert usage["completion_tokens"] == 3 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.timeout(60)
def test_a_client_that_hangs_up_mid_reply_leaves_no_traceback(capsys, caplog) -> None:
    generator = StubGenerator()
    with EmbedRLServer(generator=generator) as srv:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        sock = socket.create_connection(srv.address, timeout=30)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        assert generator.started.wait(30)
        # SO_LINGER 0: close with a reset, so the server's reply meets a dead connection at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with caplog.at_level(logging.DEBUG):
            sock.close()
            generator.release.set()
            deadline = time.monotonic() + 30
            while srv.service.inflight and time.monotonic() < deadline:  # the reply is written right after
                time.sleep(0.01)
            status, reply = _post(
                srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
            )
    assert status == 200
    assert "Traceback" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


# ------------------------------------------------------------------------ overload, slowness, auth


@pytest.mark.timeout(60)
def test_a_slow_model_gives_504_and_a_full_queue_503_with_retry_after(tiny_qwen3_embedder) -> None:
    generator = StubGenerator()  # holds the one model thread until released
    settings = ServeSettings(request_timeout=0.5, max_queue=3)
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    with EmbedRLServer(generator, Embedder.from_pretrained(tiny_qwen3_embedder), settings=settings) as srv:
        results: list = []
        blocker = threading.Thread(target=lambda: results.append(_post(srv, CHAT, chat)))
        blocker.start()
        assert generator.started.wait(30)
        started = time.monotonic()
        status, reply = _post(srv, "/v1/embeddings", {"input": ["waits behind the chat"]})
        assert status == 504 and "--request-timeout" in reply["error"]["message"]
        assert time.monotonic() - started < 5
        status, reply, response = _exchange(srv, "POST", "/v1/embeddings", {"input": ["a", "b", "c"]})
        assert status == 503 and "--max-queue" in reply["error"]["message"]
        assert int(response.getheader("Retry-After")) >= 1
        status, reply = _post(srv, "/v1/embeddings", {"input": ["a"] * 4})
        assert status == 400 and "split it" in reply["error"]["message"]
        generator.release.set()
        blocker.join(30)
        assert results[0][0] == 504  # the chat itself also outlived the timeout
        status, reply = _post(srv, "/v1/embeddings", {"input": ["the model is free again"]})
        assert status == 200
        _, health, _ = _exchange(srv, "GET", "/health")
        assert health["batches"]["timeouts"] >= 2 and health["batches"]["rejected_queue_full"] == 1


def test_an_api_key_is_required_except_for_health() -> None:
    with EmbedRLServer(generator=PlainGenerator(), api_key="s3cret") as srv:
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        status, reply, response = _exchange(srv, "POST", CHAT, chat)
        assert status == 401 and "missing API key" in reply["error"]["message"]
        assert response.getheader("WWW-Authenticate") == "Bearer"
        status, reply = _post(srv, CHAT, chat, {"Authorization": "Bearer wrong"})
        assert status == 401 and "wrong API key" in reply["error"]["message"]
        assert _exchange(srv, "GET", "/v1/models")[0] == 401
        assert _post(srv, CHAT, chat, {"Authorization": "Bearer s3cret"})[0] == 200
        assert _exchange(srv, "GET", "/health")[0] == 200
        status, document, _ = _exchange(srv, "GET", "/openapi.json")
        assert status == 200 and document["security"] == [{"bearer": []}]


def test_the_openapi_document_describes_routes_and_limits() -> None:
    settings = ServeSettings(max_items=7, max_images=3)
    with EmbedRLServer(generator=PlainGenerator(), settings=settings) as srv:
        status, document, _ = _exchange(srv, "GET", "/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    assert {"/v1/embeddings", "/v1/chat/completions", "/v1/search", "/health"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert schemas["EmbeddingRequest"]["properties"]["input"]["oneOf"][1]["maxItems"] == 7
    assert schemas["Item"]["properties"]["images"]["maxItems"] == 3


def test_unknown_routes_and_methods_get_json_errors() -> None:
    with EmbedRLServer(generator=PlainGenerator()) as srv:
        status, reply, _ = _exchange(srv, "GET", "/v1/chat/completions")
        assert status == 405 and "GET is not allowed" in reply["error"]["message"]
        status, reply, _ = _exchange(srv, "GET", "/nowhere")
        assert status == 404 and reply["error"]["message"] == "no route /nowhere"
        status, reply = _post(srv, "/v1/embeddings", {"input": "x"})
        assert status == 404 and "no embedding model" in reply["error"]["message"]
