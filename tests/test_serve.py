"""The OpenAI-compatible server on loopback, driven by our own HTTP clients (no mocks)."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from embedrl.data.items import Item, VideoRef
from embedrl.errors import BackendError
from embedrl.models.embedder import Embedder
from embedrl.models.reasoner import GenerationSettings, OpenAIChatBackend, TransformersBackend, post_json
from embedrl.models.remote import RemoteEmbedder
from embedrl.pipeline import embed_items
from embedrl.serve import EmbedRLServer


@pytest.fixture(scope="module")
def models(tiny_qwen3_embedder, tiny_qwen3_reasoner):
    return TransformersBackend.from_pretrained(tiny_qwen3_reasoner), Embedder.from_pretrained(tiny_qwen3_embedder)


@pytest.fixture(scope="module")
def server(models):
    generator, embedder = models
    with EmbedRLServer(generator, embedder) as srv:
        yield srv


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_health_and_models(server) -> None:
    assert _get(server.url + "/health") == {"status": "ok"}
    ids = [m["id"] for m in _get(server.url + "/v1/models")["data"]]
    assert ids == ["reasoner", "embedder"]


def test_chat_over_http_equals_local_generation(server, models) -> None:
    generator, _ = models
    image = Image.new("RGB", (64, 48), (250, 0, 0))
    conversation = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": "Describe the picture."}]}]
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0)
    remote = OpenAIChatBackend(server.url, "reasoner").generate([conversation, conversation], settings)
    local = generator.generate([conversation], settings)
    assert remote == [local[0], local[0]]


def test_embeddings_over_http_equal_local(server, models, tmp_path) -> None:
    _, embedder = models
    img = tmp_path / "a.png"
    Image.new("RGB", (80, 60), (0, 120, 240)).save(img)
    frames = []
    for i in range(3):
        p = tmp_path / f"f{i}.png"
        Image.new("RGB", (40, 40), (i * 80, 0, 0)).save(p)
        frames.append(str(p))
    items = [Item(id="a", text="blue thing", instruction="Find:"), Item(id="b", images=[str(img)]),
             Item(id="c", video=VideoRef(frames=frames))]
    tcots = [None, "free text that is not a T-CoT", None]
    remote = RemoteEmbedder(server.url).embed(items, tcots)
    local, _ = embed_items(embedder, items, tcots)
    assert remote.shape == local.shape
    assert np.abs(remote - local).max() < 1e-5
    # plain OpenAI-style string input also works
    reply = json.loads(urllib.request.urlopen(urllib.request.Request(
        server.url + "/v1/embeddings", data=json.dumps({"input": "blue thing"}).encode(),
        headers={"Content-Type": "application/json"}), timeout=30).read())
    assert len(reply["data"][0]["embedding"]) == embedder.dim


def test_bad_requests_get_clear_errors(server) -> None:
    with pytest.raises(BackendError, match="HTTP 400.*only base64 data: URLs"):
        post_json(server.url + "/v1/embeddings", {"input": [{"text": "x", "images": ["/etc/passwd"]}]}, None, 10)
    with pytest.raises(BackendError, match="HTTP 404"):
        post_json(server.url + "/v1/nothing", {"a": 1}, None, 10)
    with pytest.raises(BackendError, match="HTTP 400.*'input' must be"):
        post_json(server.url + "/v1/embeddings", {"input": []}, None, 10)
    with pytest.raises(BackendError, match="HTTP 400.*messages"):
        post_json(server.url + "/v1/chat/completions", {"messages": "hi"}, None, 10)


def test_unreachable_server_is_named() -> None:
    backend = OpenAIChatBackend("http://127.0.0.1:9", "r", timeout=2, retries=0)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9.*cannot reach"):
        backend.generate([[{"role": "user", "content": "hi"}]], GenerationSettings(max_new_tokens=2))


def _raw_exchange(server, requests: list[bytes]) -> list[tuple[int, bytes]]:
    """Send raw HTTP requests on one keep-alive connection; (status, body) of each reply."""
    import http.client
    import socket

    host, port = server.httpd.server_address[:2]
    replies = []
    with socket.create_connection((host, port), timeout=30) as sock:
        for request in requests:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()
            replies.append((response.status, response.read()))
            if response.getheader("Connection", "").lower() == "close":
                break
    return replies


def test_keep_alive_connection_survives_rejected_requests(server) -> None:
    body = b'{"input": "a"}'
    post = (b"POST /v1/nothing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)
    health = b"GET /health?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    (first, _), (second, reply) = _raw_exchange(server, [post, health])
    assert first == 404 and second == 200 and json.loads(reply) == {"status": "ok"}
    chunked = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    replies = _raw_exchange(server, [chunked, health])
    assert replies[0][0] == 411 and len(replies) == 1  # told to close: the unread body is not taken as a request


def test_client_mistakes_are_400_not_500(server) -> None:
    cases = [
        ("/v1/embeddings", {"input": [{"text": 123}]}, "input\\[0\\].text: must be a string"),
        ("/v1/embeddings", {"input": [{"instruction": ["x"], "text": "a"}]}, "instruction: must be a string"),
        ("/v1/embeddings", {"input": [{"text": "a", "images": "data:x"}]}, "images: must be a list"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "abc"},
         "'max_tokens' must be an integer"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5},
         "'max_tokens' must be in"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
         "'temperature' must be a finite number"),
        ("/v1/chat/completions", {"messages": [{"role": 5, "content": "hi"}]}, "role: must be"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}, "streaming"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "only n = 1"),
        ("/v1/embeddings", {"input": ""}, "input\\[0\\]: is empty"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": float("nan")},
         "'temperature' must be a finite number"),
        ("/v1/embeddings", {"input": [{"images": ["data:image/png;base64,iVBORw0KGgo="]}]}, "not a decodable"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "seed": 10**400}, "'seed' must"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**400},
         "'max_tokens' must"),
    ]
    for route, body, message in cases:
        with pytest.raises(BackendError, match="HTTP 400.*" + message):
            post_json(server.url + route, body, None, 10, retries=0)
    replies = _raw_exchange(server, [b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n\xff\xfe"])
    assert replies[0][0] == 400 and b"not UTF-8" in replies[0][1]


def test_served_images_get_their_exif_orientation(server, models, tmp_path) -> None:
    import base64

    from embedrl.data.media import load_image

    _, embedder = models
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 16, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    remote = post_json(server.url + "/v1/embeddings", {"input": [{"images": [url]}]}, None, 30)
    local, _ = embed_items(embedder, [Item(id="a", images=[str(path)])])
    assert load_image(path).size == (32, 64)  # the local loader turns it upright
    assert np.abs(np.asarray(remote["data"][0]["embedding"]) - local[0]).max() < 1e-5


def test_serve_cli_names_a_busy_port_before_loading(tmp_path, capsys) -> None:
    import socket

    from embedrl.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--embedder", str(tmp_path / "not-a-model"), "--port", str(port)])
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
