"""The OpenAI-compatible server on loopback, driven by our own HTTP clients and the `openai` package (no mocks):
in-process for the request shapes, and as a real `embedrl serve` process for vectors, limits, concurrency,
slow clients, auth and shutdown."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedrl.data.items import Item, VideoRef
from embedrl.errors import BackendError
from embedrl.models.embedder import Embedder
from embedrl.models.reasoner import GenerationSettings, OpenAIChatBackend, TransformersBackend, post_json
from embedrl.models.remote import RemoteEmbedder
from embedrl.pipeline import embed_items, encode_detailed
from embedrl.serve import EmbedRLServer


@pytest.fixture(scope="module")
def models(tiny_qwen3_embedder, tiny_qwen3_reasoner):
    return TransformersBackend.from_pretrained(tiny_qwen3_reasoner), Embedder.from_pretrained(
        tiny_qwen3_embedder
    )


@pytest.fixture(scope="module")
def server(models):
    generator, embedder = models
    with EmbedRLServer(generator, embedder) as srv:
        yield srv


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_health_and_models(server) -> None:
    health = _get(server.url + "/health")
    assert health["status"] == "ok" and {"queue", "batches"} <= set(health)
    ids = [m["id"] for m in _get(server.url + "/v1/models")["data"]]
    assert ids == ["reasoner", "embedder"]


def test_chat_over_http_equals_local_generation(server, models) -> None:
    generator, _ = models
    image = Image.new("RGB", (64, 48), (250, 0, 0))
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "Describe the picture."}],
        }
    ]
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
    items = [
        Item(id="a", text="blue thing", instruction="Find:"),
        Item(id="b", images=[str(img)]),
        Item(id="c", video=VideoRef(frames=frames)),
    ]
    tcots = [None, "free text that is not a T-CoT", None]
    remote = RemoteEmbedder(server.url).embed(items, tcots)
    local, _ = embed_items(embedder, items, tcots)
    assert remote.shape == local.shape
    assert np.abs(remote - local).max() < 1e-5
    # plain OpenAI-style string input also works
    reply = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(
                server.url + "/v1/embeddings",
                data=json.dumps({"input": "blue thing"}).encode(),
                headers={"Content-Type": "application/json"},
            ),
            timeout=30,
        ).read()
    )
    assert len(reply["data"][0]["embedding"]) == embedder.dim


def test_bad_requests_get_clear_errors(server) -> None:
    with pytest.raises(BackendError, match="HTTP 400.*only base64 data: URLs"):
        post_json(
            server.url + "/v1/embeddings", {"input": [{"text": "x", "images": ["/etc/passwd"]}]}, None, 10
        )
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

    host, port = server.address
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
    post = (
        b"POST /v1/nothing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    health = b"GET /health?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    (first, _), (second, reply) = _raw_exchange(server, [post, health])
    assert first == 404 and second == 200 and json.loads(reply)["status"] == "ok"
    # a chunked body (no Content-Length) is read like any other, and the connection carries the next request
    chunked = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'6\r\n{"inpu\r\n8\r\nt": "a"}\r\n0\r\n\r\n'
    )
    (first, reply), (second, _) = _raw_exchange(server, [chunked, health])
    assert first == 200 and len(json.loads(reply)["data"]) == 1 and second == 200


def test_client_mistakes_are_400_not_500(server) -> None:
    cases = [
        ("/v1/embeddings", {"input": [{"text": 123}]}, "input\\[0\\].text: must be a string"),
        ("/v1/embeddings", {"input": [{"instruction": ["x"], "text": "a"}]}, "instruction: must be a string"),
        ("/v1/embeddings", {"input": [{"text": "a", "images": "data:x"}]}, "images: must be a list"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "abc"},
            "'max_tokens' must be an integer",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5},
            "'max_tokens' must be in",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
            "'temperature' must be a finite number",
        ),
        ("/v1/chat/completions", {"messages": [{"role": 5, "content": "hi"}]}, "role: must be"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "stream": True},
            "streaming",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "only n = 1"),
        ("/v1/embeddings", {"input": ""}, "input\\[0\\]: is empty"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "temperature": float("nan")},
            "'temperature' must be a finite number",
        ),
        (
            "/v1/embeddings",
            {"input": [{"images": ["data:image/png;base64,iVBORw0KGgo="]}]},
            "not a decodable",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "seed": 10**400},
            "'seed' must",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**400},
            "'max_tokens' must",
        ),
    ]
    for route, body, message in cases:
        with pytest.raises(BackendError, match="HTTP 400.*" + message):
            post_json(server.url + route, body, None, 10, retries=0)
    replies = _raw_exchange(
        server, [b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n\xff\xfe"]
    )
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


# ---------------------------------------------------------------------- a real `embedrl serve` process

API_KEY = "test-key-1234"
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
BODY_TIMEOUT = HEADER_TIMEOUT = 1.5
LIMITS = [
    "--max-body-bytes",
    "300000",
    "--max-items",
    "8",
    "--max-text-chars",
    "500",
    "--max-images",
    "2",
    "--max-frames",
    "4",
    "--max-image-pixels",
    "20000",
    "--max-request-pixels",
    "30000",
    "--max-tcot-chars",
    "400",
    "--max-boxes",
    "2",
    "--max-header-bytes",
    "4096",
    "--max-queue",
    "64",
    "--body-timeout",
    str(BODY_TIMEOUT),
    "--header-timeout",
    str(HEADER_TIMEOUT),
    "--timeout-keep-alive",
    "2",
    "--max-batch",
    "16",
    "--max-wait-ms",
    "20",
    "--max-new-tokens",
    "8",
]


@dataclass
class Served:
    url: str
    host: str
    port: int
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def served(tiny_qwen3_embedder, tiny_qwen3_reasoner, tmp_path_factory):
    """`embedrl serve --port 0` with small limits; the API key comes from EMBEDRL_API_KEY."""
    log = tmp_path_factory.mktemp("served") / "server.log"
    env = {**os.environ, "EMBEDRL_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "embedrl",
        "serve",
        "--embedder",
        str(tiny_qwen3_embedder),
        "--reasoner",
        str(tiny_qwen3_reasoner),
        "--port",
        "0",
        *LIMITS,
    ]
    with log.open("w") as err:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"serving on (http://([\d.]+):(\d+))", line)
        assert match, f"no URL printed: {line!r}\n{log.read_text()}"
        srv = Served(match.group(1), match.group(2), int(match.group(3)), process, log)
        deadline = time.monotonic() + 60
        while True:  # listening already; uvicorn answers once its startup ran
            try:
                _get(srv.url + "/health")
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.05)
        yield srv
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        process.stdout.close()


def _request(
    srv: Served, route: str, body: dict | bytes, headers: dict | None = None, timeout: float = 60
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", route, body=raw, headers=AUTH if headers is None else headers)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except json.JSONDecodeError:
            return response.status, {"raw": data.decode(errors="replace")}
    finally:
        conn.close()


def _png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def local(tiny_qwen3_embedder):
    return Embedder.from_pretrained(tiny_qwen3_embedder)


def test_served_vectors_equal_encode(served, local, tiny_qwen3_reasoner, tmp_path) -> None:
    from embedrl.models.reasoner import Reasoner
    from embedrl.pipeline import encode

    picture = Image.new("RGB", (80, 60), (0, 120, 240))
    picture.paste((250, 250, 0), (10, 10, 40, 30))
    picture.save(tmp_path / "picture.png")
    frames = [Image.new("RGB", (40, 40), (i * 70, 30, 200 - i * 60)) for i in range(3)]
    for i, frame in enumerate(frames):
        frame.save(tmp_path / f"frame{i}.png")
    boxed = (
        '<thinking>The yellow patch. {"bbox_2d": [[100, 150, 500, 520]]}</thinking>\n<answer>yellow</answer>'
    )
    entries = [
        {"text": "a blue picture", "instruction": "Find an image:"},
        {"images": [_png_url(picture)], "text": "what is yellow?"},
        {"frames": [_png_url(f) for f in frames]},
        {"images": [_png_url(picture)], "tcot": boxed},
    ]
    items = [
        Item(id="0", text="a blue picture", instruction="Find an image:"),
        Item(id="1", images=[str(tmp_path / "picture.png")], text="what is yellow?"),
        Item(id="2", video=VideoRef(frames=[str(tmp_path / f"frame{i}.png") for i in range(3)])),
        Item(id="3", images=[str(tmp_path / "picture.png")]),
    ]
    status, reply = _request(served, "/v1/embeddings", {"input": entries})
    assert status == 200, reply
    remote = np.asarray([d["embedding"] for d in reply["data"]])
    expected = encode(items, local, tcots=[None, None, None, boxed], progress=False)
    np.testing.assert_allclose(remote, expected, atol=1e-5)
    # reasoning on: the server's Reasoner writes the T-CoTs (returned with each vector), as encode() does
    status, reply = _request(served, "/v1/embeddings", {"input": entries[:3], "reasoning": "generate"})
    assert status == 200, reply
    reasoner = Reasoner.from_pretrained(
        tiny_qwen3_reasoner, settings=GenerationSettings(max_new_tokens=8), num_frames=local.config.num_frames
    )
    result = encode_detailed(items[:3], local, reasoner, side="query", progress=False)
    assert [d["tcot"] for d in reply["data"]] == result.tcots
    np.testing.assert_allclose(np.asarray([d["embedding"] for d in reply["data"]]), result.vectors, atol=1e-5)


def test_every_limit_answers_its_code_quickly(served) -> None:
    def picture(width: int, height: int) -> str:
        return _png_url(Image.new("RGB", (width, height), (9, 9, 9)))

    small = picture(10, 10)
    three_boxes = '<thinking>{"bbox_2d": [[0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 30, 30]]}</thinking>'
    cases = [
        ({"input": ["a"] * 9}, "input: 9 items, over the limit of 8 per request (--max-items)"),
        ({"input": "x" * 501}, "input[0]: 501 characters, over the limit of 500 (--max-text-chars)"),
        ({"input": [{"text": "a", "instruction": "y" * 501}]}, "input[0].instruction: 501 characters"),
        (
            {"input": [{"images": [small] * 3}]},
            "input[0].images: 3 images, over the limit of 2 per item (--max-images)",
        ),
        (
            {"input": [{"frames": [small] * 5}]},
            "input[0].frames: 5 frames, over the limit of 4 per item (--max-frames)",
        ),
        (
            {"input": [{"images": [picture(200, 150)]}]},
            "input[0].images[0]: image is 200x150 = 30,000 pixels, over the limit of 20,000 per image "
            "(--max-image-pixels)",
        ),
        (
            {"input": [{"images": [picture(130, 130)]}, {"images": [picture(130, 130)]}]},
            "input[1].images[0]: the request's images add up to 33,800 pixels, over the limit of 30,000 per request "
            "(--max-request-pixels)",
        ),
        (
            {"input": [{"text": "a", "tcot": "z" * 401}]},
            "input[0].tcot: 401 characters, over the limit of 400",
        ),
        (
            {"input": [{"text": "a", "tcot": three_boxes}]},
            "input[0].tcot: 3 boxes in bbox_2d, over the limit of 2",
        ),
    ]
    for body, message in cases:
        started = time.monotonic()
        status, reply = _request(served, "/v1/embeddings", body)
        assert (status, message) == (400, message) and message in reply["error"]["message"], reply
        assert time.monotonic() - started < 2
    status, reply = _request(
        served, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 9}
    )
    assert (
        status == 400
        and "messages: 9 messages, over the limit of 8 (--max-items)" in reply["error"]["message"]
    )
    # a body over --max-body-bytes is refused from its Content-Length, before it is sent
    started = time.monotonic()
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + API_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 400000\r\n\r\n"
        )
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 413 and b"--max-body-bytes" in response.read()
    # unfinished headers beyond --max-header-bytes are not buffered further
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 400
    assert time.monotonic() - started < 4


def test_fifty_concurrent_requests_share_batches(served, local) -> None:
    from embedrl.pipeline import encode

    texts = [f"concurrent request number {i}" for i in range(50)]
    barrier = threading.Barrier(50)
    results: dict[int, tuple] = {}

    def one(i: int) -> None:
        barrier.wait(30)
        try:
            results[i] = _request(served, "/v1/embeddings", {"input": texts[i]})
        except OSError as exc:  # a reset or refused connection is a failure of the server
            results[i] = (type(exc).__name__, {})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = Counter(status for status, _ in results.values())
    assert statuses == {200: 50}, statuses
    vectors = np.asarray([results[i][1]["data"][0]["embedding"] for i in range(50)])
    np.testing.assert_allclose(
        vectors,
        encode([Item(id=str(i), text=t) for i, t in enumerate(texts)], local, progress=False),
        atol=1e-5,
    )  # each caller got its own vector
    batches = _get(served.url + "/health")["batches"]
    assert batches["max_size"] > 1 and batches["items"] >= 50


def _closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """(seconds until the server closed the connection, what it sent before)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


def test_slow_and_idle_connections_are_closed(served) -> None:
    # a half-sent body: 10 of 100 bytes, then nothing
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + API_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            + b'{"input": '
        )
        waited, reply = _closed_within(sock, 10)
    assert BODY_TIMEOUT - 0.2 < waited < BODY_TIMEOUT + 2
    assert reply.startswith(b"HTTP/1.1 408") and b"--body-timeout" in reply
    # headers trickled a line at a time never finish
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(20):
                time.sleep(0.25)
                sock.sendall(b"X-Slow: 1\r\n")
        waited, _ = _closed_within(sock, 10)
        assert time.monotonic() - started < HEADER_TIMEOUT + 2
    # a connection that never says anything
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        waited, reply = _closed_within(sock, 10)
    assert waited < HEADER_TIMEOUT + 2 and reply == b""


def test_the_openai_client_works_unchanged(served, local) -> None:
    openai = pytest.importorskip("openai")
    from embedrl.pipeline import encode

    client = openai.OpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    texts = ["a red square", "a blue circle"]
    expected = encode([Item(id=str(i), text=t) for i, t in enumerate(texts)], local, progress=False)
    reply = client.embeddings.create(
        model="embedder", input=texts
    )  # base64 on the wire, the client's default
    np.testing.assert_allclose(np.asarray([d.embedding for d in reply.data]), expected, atol=1e-5)
    reply = client.embeddings.create(model="embedder", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(reply.data[0].embedding, expected[0], atol=1e-5)
    chat = client.chat.completions.create(
        model="reasoner", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert isinstance(chat.choices[0].message.content, str) and chat.choices[0].finish_reason in (
        "length",
        "stop",
    )
    assert chat.usage is None or chat.usage.completion_tokens <= 4
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        client.chat.completions.create(
            model="reasoner", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    wrong = openai.OpenAI(base_url=served.url + "/v1", api_key="not-the-key", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model="embedder", input="x")
    status, reply = _request(
        served, "/v1/embeddings", {"input": "x"}, headers={"Content-Type": "application/json"}
    )
    assert status == 401 and "missing API key" in reply["error"]["message"]
    assert _get(served.url + "/health")["status"] == "ok"  # open without the key


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_finishes_the_request_in_flight(served) -> None:
    """Runs last: it stops the module's server."""
    result: list = []
    body = {"messages": [{"role": "user", "content": "count"}], "max_tokens": 40}
    thread = threading.Thread(target=lambda: result.append(_request(served, "/v1/chat/completions", body)))
    thread.start()
    deadline = time.monotonic() + 30
    while _get(served.url + "/health")["queue"]["items"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    served.process.send_signal(signal.SIGTERM)
    thread.join(60)
    status, reply = result[0]
    assert status == 200 and reply["usage"]["completion_tokens"] == 40
    served.process.wait(30)
    with pytest.raises(OSError):
        socket.create_connection((served.host, served.port), timeout=2).close()


def test_frames_a_client_sends_are_embedded_as_given(server, models, tmp_path) -> None:
    """A remote reward client samples its videos to its own frame count (the rollout prompts' count) and sends
    them; the server must not sample them again to its Embedder's saved count, or keyframe 12 of 12 would not
    exist on the server."""
    from embedrl.models.remote import RemoteEmbedder
    from embedrl.pipeline import encode

    _, embedder = models
    assert embedder.config.num_frames == 8
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (48, 32), (20 * i, 40, 90)).save(folder / f"{i:02d}.png")
    item = Item(id="v", text="a clip", video=VideoRef(path=str(folder)))
    tcot = '<thinking>x {"key_frames": [12, 1]}</thinking>\n<rethink>r</rethink>\n<answer>a</answer>'
    remote = RemoteEmbedder(server.url).embed([item], [tcot], num_frames=12)
    local = encode([item], embedder, tcots=[tcot], num_frames=12, progress=False)
    assert np.abs(remote - local).max() < 1e-5
    eight = encode([item], embedder, tcots=[tcot], progress=False)
    assert np.abs(remote - eight).max() > 1e-3
