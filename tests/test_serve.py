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
