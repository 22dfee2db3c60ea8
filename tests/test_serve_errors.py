"""The server answers what a client gets wrong with a 400 naming the field, survives clients that go away, and
tells OpenAI clients why a reply ended and what it cost."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import struct
import threading
from dataclasses import dataclass

import pytest

from embedrl.models.embedder import Embedder
from embedrl.models.reasoner import TransformersBackend
from embedrl.serve import EmbedRLServer

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{ } loop\n"
EPS_URL = "data:image/png;base64," + base64.b64encode(EPS).decode()


@pytest.fixture(scope="module")
def server(tiny_qwen3_embedder, tiny_qwen3_reasoner):
    generator = TransformersBackend.from_pretrained(tiny_qwen3_reasoner)
    with EmbedRLServer(generator, Embedder.from_pretrained(tiny_qwen3_embedder)) as srv:
        yield srv


def _post(server, route: str, body: bytes | dict) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("POST", route, body=raw, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


CHAT = "/v1/chat/completions"
HI = '{"role": "user", "content": "hi"}'


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("route", "body", "message"), [
    ("/v1/embeddings", b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "'input': JSON nested too deeply"),
    ("/v1/embeddings", b"[" * 100_000 + b"]" * 100_000, "body: JSON nested too deeply"),
    (CHAT, ('{"messages": [' + HI + '], "max_tokens": ' + "9" * 5000 + "}").encode(),
     "'max_tokens' must be in [1, 1000000], not an integer of 5000 digits"),
    ("/v1/embeddings", ('{"input": [' + "7" * 5000 + "]}").encode(),
     "input[0]: must be a string or an object"),
    ("/v1/embeddings", b'{"input": "a \\ud800 b"}', "input[0]: contains a lone surrogate"),
    ("/v1/embeddings", b'{"input": [{"text": "x", "instruction": "\\udfff"}]}',
     "input[0].instruction: contains a lone surrogate"),
    (CHAT, b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content: contains a lone"),
    (CHAT, b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
     "messages[0].content[0].text: contains a lone surrogate"),
    ("/v1/embeddings", {"input": [{"text": "x", "images": [EPS_URL]}]},
     "input[0].images[0]: not a decodable image: PostScript data, not an image format embedrl reads "
     "(PNG, JPEG, WebP, GIF, BMP, TIFF)"),
    (CHAT, {"messages": [{"role": "user",
                          "content": [{"type": "image_url", "image_url": {"url": EPS_URL}}]}]},
     "messages[0].content[0]: not a decodable image: PostScript data"),
])
def test_client_mistakes_are_400_naming_the_field(server, route, body, message) -> None:
    status, reply = _post(server, route, body)
    assert status == 400, reply
    assert message in reply["error"]["message"]


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
    if not callable(getattr(server.generator, "generate_with_usage", None)):
        pytest.skip("TransformersBackend does not count tokens yet (no generate_with_usage in reasoner.py)")
    status, reply = _post(server, CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    usage = reply["usage"]
    assert status == 200 and reply["choices"][0]["finish_reason"] == "length"  # the tiny model never stops by 3
    assert usage["completion_tokens"] == 3 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.timeout(60)
def test_a_client_that_hangs_up_mid_reply_leaves_no_traceback(capsys, caplog) -> None:
    generator = StubGenerator()
    with EmbedRLServer(generator=generator) as srv:
        handled = threading.Event()
        shutdown_request = srv.httpd.shutdown_request

        def done(request) -> None:  # runs after the handler, and after any traceback it printed
            shutdown_request(request)
            handled.set()

        srv.httpd.shutdown_request = done
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        sock = socket.create_connection(srv.httpd.server_address[:2], timeout=30)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert generator.started.wait(30)
        # SO_LINGER 0: close with a reset, so the server's reply meets a dead connection at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with caplog.at_level(logging.DEBUG, logger="embedrl.serve"):
            sock.close()
            generator.release.set()
            assert handled.wait(30)
        status, reply = _post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert "Traceback" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
