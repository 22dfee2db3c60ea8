"""`embedrl index build|add` and `embedrl search`: real tiny models, real files, the CLI as a user runs it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from crash import sigkill_when
from embedrl.cli import main
from embedrl.data.items import Item, VideoRef
from embedrl.index import Index, build_index
from embedrl.models.embedder import Embedder
from embedrl.pipeline import encode

RED_BOX_TCOT = (
    '<thinking>A red square sits top left. {"bbox_2d": [[50, 50, 500, 500]]}</thinking>\n'
    "<rethink>The red square.</rethink>\n<answer>red square</answer>"
)
KEYFRAME_TCOT = (
    '<thinking>The dot moves right. {"key_frames": [2, 5]}</thinking>\n'
    "<rethink>A moving dot.</rethink>\n<answer>dot moving right</answer>"
)
KEYWORD_TCOT = (
    '<thinking>A caption about colours. {"text_keywords": ["blue", "circle"]}</thinking>\n'
    "<rethink>Blue circle.</rethink>\n<answer>blue circle</answer>"
)


def _scene(path: Path, color: tuple[int, int, int], shape: str) -> str:
    image = Image.new("RGB", (120, 100), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    (draw.rectangle if shape == "square" else draw.ellipse)((10, 10, 55, 48), fill=color)
    image.save(path)
    return path.name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """items.jsonl: images with a boxed T-CoT, a frame video with keyframes, texts with keywords."""
    root = tmp_path_factory.mktemp("corpus")
    frames = root / "clip"
    frames.mkdir()
    for i in range(6):
        frame = Image.new("RGB", (64, 48), (255, 255, 255))
        ImageDraw.Draw(frame).ellipse((4 + 9 * i, 18, 16 + 9 * i, 30), fill=(0, 0, 0))
        frame.save(frames / f"frame_{i:02d}.png")
    records = [
        {
            "id": "red-square",
            "images": [_scene(root / "red.png", (230, 0, 0), "square")],
            "meta": {"tcot": RED_BOX_TCOT},
        },
        {
            "id": "green-circle",
            "images": [_scene(root / "green.png", (0, 190, 0), "circle")],
            "meta": {
                "tcot": RED_BOX_TCOT.replace(
                    "[[50, 50, 500, 500]]", "[[60, 80, 480, 520], [500, 0, 900, 400]]"
                )
            },
        },
        {
            "id": "moving-dot",
            "video": {"frames": [f"clip/frame_{i:02d}.png" for i in range(6)]},
            "meta": {"tcot": KEYFRAME_TCOT},
        },
        {"id": "caption-blue", "text": "a blue circle on white paper", "meta": {"tcot": KEYWORD_TCOT}},
        {"id": "caption-plain", "text": "an empty white page", "meta": {"tcot": "no structure at all"}},
    ]
    (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "more.jsonl").write_text(
        json.dumps({"id": "late-text", "text": "a late arrival", "meta": {"tcot": KEYWORD_TCOT}}) + "\n"
    )
    (root / "dup.jsonl").write_text(
        json.dumps({"id": "red-square", "text": "again", "meta": {"tcot": "x"}}) + "\n"
    )
    return root


@pytest.fixture(scope="module")
def built(corpus, tiny_qwen3_embedder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "index"
    code = main(
        [
            "index",
            "build",
            "--embedder",
            str(tiny_qwen3_embedder),
            "--items",
            str(corpus / "items.jsonl"),
            "--reasoning",
            "cached",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def embedder(tiny_qwen3_embedder):
    return Embedder.from_pretrained(tiny_qwen3_embedder)


def _items(path: Path) -> list[Item]:
    from embedrl.commands.encode import read_items

    return read_items(path)


def test_build_writes_vectors_ids_evidence_and_fingerprints(built, corpus, embedder) -> None:
    from embedrl import __version__
    from embedrl.pipeline import embedder_fingerprint

    index = Index.load(built)
    manifest = json.loads((built / "index.json").read_text())
    assert manifest["embedder"]["fingerprint"] == embedder_fingerprint(embedder)
    assert manifest["embedrl_version"] == __version__ and manifest["reasoner"] is None
    assert manifest["search"] in ("flat", "exact") and manifest["count"] == 5
    data = built / manifest["data"]
    vectors = np.load(data / "vectors.npy")
    assert vectors.dtype == np.float32 and vectors.shape == (5, embedder.dim)
    assert json.loads((data / "ids.json").read_text()) == index.ids
    items = _items(corpus / "items.jsonl")
    expected = encode(items, embedder, reasoning="cached", side="candidate", progress=False)
    assert index.ids == [item.id for item in items]
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    evidence = {r["id"]: r["evidence"] for r in index.records}
    # 0-1000 boxes scaled to the 120x100 image: (6, 5)-(60, 50); the second item's two boxes
    assert evidence["red-square"]["crop_boxes"] == [[6, 5, 60, 50]]
    assert evidence["red-square"]["image_size"] == [120, 100]
    assert len(evidence["green-circle"]["crop_boxes"]) == 2
    assert evidence["moving-dot"]["keyframes"] == [1, 4] and evidence["moving-dot"]["num_frames"] == 6
    assert evidence["caption-blue"]["keywords"] == ["blue", "circle"]
    assert evidence["caption-plain"] == {**evidence["caption-plain"], "crop_boxes": [], "keyframes": []}
    assert all(r["tcot"] for r in index.records)


def test_search_table_and_json_show_the_evidence(built, capsys) -> None:
    code = main(
        ["search", str(built), "--text", "a blue circle on white paper", "--tcot", KEYWORD_TCOT, "-k", "3"]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("query evidence:") and "rank" in lines[1]
    assert lines[2].split()[:3] == ["1", "1.0000", "caption-blue"]  # the same text embeds to the same vector
    assert "keywords: blue, circle" in lines[2]
    code = main(["search", str(built), "--text", "red", "-k", "5", "--format", "json"])
    reply = json.loads(capsys.readouterr().out)
    assert code == 0 and len(reply["hits"]) == 5
    assert [h["rank"] for h in reply["hits"]] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in reply["hits"]]
    assert scores == sorted(scores, reverse=True)
    by_id = {h["id"]: h for h in reply["hits"]}
    assert by_id["red-square"]["evidence"]["crop_boxes"] == [[6, 5, 60, 50]]
    assert by_id["moving-dot"]["evidence"]["keyframes"] == [1, 4]
    assert reply["query"]["item"]["text"] == "red"


def test_exact_and_faiss_search_agree(built, corpus, embedder, tmp_path) -> None:
    pytest.importorskip("faiss")
    items = _items(corpus / "items.jsonl")
    tops = {}
    for kind in ("exact", "flat", "hnsw"):
        root = tmp_path / kind
        build_index(root, items, embedder, reasoning="cached", search=kind, progress=False)
        index = Index.load(root)
        assert index.search_kind == kind
        tops[kind] = [h["id"] for h in index.search(np.asarray(index.vectors[:2]), 5)[0]]
    assert tops["exact"] == tops["flat"] == tops["hnsw"]


def test_explain_page_lists_the_hits_and_draws_boxes(built, corpus, tmp_path, capsys) -> None:
    explain = tmp_path / "why"
    code = main(
        [
            "search",
            str(built),
            "--image",
            str(corpus / "red.png"),
            "-k",
            "5",
            "--explain",
            str(explain),
            "--format",
            "json",
        ]
    )
    reply = json.loads(capsys.readouterr().out)
    assert code == 0
    page = (explain / "index.html").read_text()
    for hit in reply["hits"]:
        assert f">{hit['id']}</a>" in page
    rank = next(h["rank"] for h in reply["hits"] if h["id"] == "red-square")
    drawn = np.asarray(Image.open(explain / f"hit-{rank:02d}.png").convert("RGB"))
    assert ((drawn == (255, 40, 40)).all(axis=-1)).sum() > 50  # the crop box outline
    video_rank = next(h["rank"] for h in reply["hits"] if h["id"] == "moving-dot")
    assert (explain / f"hit-{video_rank:02d}.png").is_file()  # the frames, keyframes framed
    assert (explain / "query.png").is_file() and "keyframes: 2, 5 of 6" in page


def test_add_appends_and_refuses_duplicate_ids(built, corpus, capsys) -> None:
    before = Index.load(built)
    code = main(["index", "add", str(built), "--items", str(corpus / "dup.jsonl")])
    assert code == 2 and "'red-square'" in capsys.readouterr().err
    code = main(["index", "add", str(built), "--items", str(corpus / "more.jsonl"), "--no-progress"])
    assert code == 0 and "added 1 item(s)" in capsys.readouterr().out
    after = Index.load(built)
    assert after.ids == before.ids + ["late-text"] and len(after.vectors) == 6
    np.testing.assert_array_equal(np.asarray(after.vectors[:5]), np.asarray(before.vectors))
    assert [p.name for p in built.glob("data-*")] == [after.manifest["data"]]  # the old generation is gone
    main(
        [
            "search",
            str(built),
            "--text",
            "a late arrival",
            "--tcot",
            KEYWORD_TCOT,
            "-k",
            "1",
            "--format",
            "json",
        ]
    )
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == "late-text"


def test_another_embedder_is_refused_with_the_reason(
    built, corpus, tiny_factory, tiny_qwen3_embedder, capsys
) -> None:
    other = tiny_factory("qwen3-vl", "embedder", seed=3)
    code = main(["search", str(built), "--text", "x", "--embedder", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "fingerprint" in err and "another checkpoint" in err
    code = main(["index", "add", str(built), "--items", str(corpus / "more.jsonl"), "--embedder", str(other)])
    assert code == 2 and "not comparable" in capsys.readouterr().err
    code = main(["search", str(built), "--text", "x", "--evidence-style", "official"])
    assert code == 2 and "input settings differ (keyframe_base" in capsys.readouterr().err


def test_build_refuses_an_existing_index_and_a_foreign_folder(
    built, corpus, tiny_qwen3_embedder, tmp_path, capsys
) -> None:
    args = [
        "index",
        "build",
        "--embedder",
        str(tiny_qwen3_embedder),
        "--items",
        str(corpus / "items.jsonl"),
        "--reasoning",
        "cached",
        "--no-progress",
        "--out",
    ]
    assert main(args + [str(built)]) == 2 and "already an index" in capsys.readouterr().err
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    assert main(args + [str(foreign)]) == 2 and "not empty" in capsys.readouterr().err
    assert (foreign / "todo.txt").read_text() == "keep me"


def test_failed_items_write_nothing_until_fixed(corpus, tiny_qwen3_embedder, tmp_path, capsys) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"id": "a", "text": "fine"})
        + "\n"
        + json.dumps({"id": "b", "images": [str(corpus / "missing.png")]})
        + "\n"
    )
    out = tmp_path / "index"
    base = [
        "index",
        "build",
        "--embedder",
        str(tiny_qwen3_embedder),
        "--items",
        str(items),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "'b'" in err and "--skip-failed" in err and not (out / "index.json").exists()
    assert main(base + ["--skip-failed"]) == 1  # indexed what it could, and says what it left out
    assert Index.load(out).ids == ["a"]


def test_served_search_matches_the_cli(built, embedder, capsys) -> None:
    import urllib.error
    import urllib.request

    from embedrl.serve import EmbedRLServer

    main(["search", str(built), "--text", "blue", "-k", "3", "--format", "json"])
    cli = json.loads(capsys.readouterr().out)

    def post(srv, body):
        request = urllib.request.Request(
            srv.url + "/v1/search",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    with EmbedRLServer(embedder=embedder, index=Index.load(built)) as srv:
        status, reply = post(srv, {"query": "blue", "k": 3})
        assert status == 200
        assert [h["id"] for h in reply["data"]] == [h["id"] for h in cli["hits"]]
        np.testing.assert_allclose(
            [h["score"] for h in reply["data"]], [h["score"] for h in cli["hits"]], atol=1e-5
        )
        assert reply["data"][0]["evidence"] == cli["hits"][0]["evidence"]
        status, reply = post(srv, {"query": {"text": "red", "tcot": RED_BOX_TCOT}, "k": 1})
        assert status == 200 and reply["query"]["evidence"]["crop_boxes"] == []  # a text query crops nothing
        assert reply["query"]["evidence"]["keywords"] == []
        status, reply = post(srv, {"query": "x", "k": 100_000})
        assert status == 400 and "'k' must be in [1, 1000]" in reply["error"]["message"]
        status, reply = post(srv, {"k": 3})
        assert status == 400 and "'query' is required" in reply["error"]["message"]
    with EmbedRLServer(embedder=embedder) as srv:
        status, reply = post(srv, {"query": "x"})
        assert status == 404 and "--index" in reply["error"]["message"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_build_resumes_to_the_same_vectors(tiny_qwen3_embedder, embedder, tmp_path, capsys) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "text": f"item number {i} " + "word " * (i % 7)}) + "\n"
            for i in range(40)
        )
    )
    out = tmp_path / "index"
    command = [
        sys.executable,
        "-m",
        "embedrl",
        "index",
        "build",
        "--embedder",
        str(tiny_qwen3_embedder),
        "--items",
        str(items),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--no-progress",
    ]
    sigkill_when(command, lambda: bool(list(out.glob("cache/vectors/*/shard-*.npz"))), "index build")
    assert not (out / "index.json").exists()
    shards = len(list(out.glob("cache/vectors/*/shard-*.npz")))
    assert (
        main(
            [
                "index",
                "build",
                "--embedder",
                str(tiny_qwen3_embedder),
                "--items",
                str(items),
                "--out",
                str(out),
                "--batch-size",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    computed = int(re.search(r"\((\d+) computed", report).group(1))
    assert computed <= 40 - shards  # the killed run's vectors came from the cache
    index = Index.load(out)
    expected = encode(_items(items), embedder, progress=False)
    assert index.ids == [f"t{i}" for i in range(40)]
    np.testing.assert_allclose(np.asarray(index.vectors), expected, atol=1e-5)


def test_index_help_teaches(capsys) -> None:
    from embedrl.cli import build_parser

    parser = build_parser()
    for argv in (["index", "build", "--help"], ["index", "add", "--help"], ["search", "--help"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "example" in capsys.readouterr().out


def test_evidence_of_an_in_memory_item(embedder) -> None:
    from embedrl.index import evidence_record

    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(4)]
    record = evidence_record(embedder, Item(id="v", video=VideoRef(frames=frames)), KEYFRAME_TCOT)
    assert record["keyframes"] == [1] and record["num_frames"] == 4  # frame 5 of 4 is dropped
    assert any("outside" in note for note in record["notes"])


def test_a_task_folder_indexes_its_candidates(tiny_qwen3_embedder, tmp_path, capsys) -> None:
    import random

    from embedrl.data.synthetic import make_t2i

    task = make_t2i(tmp_path / "SynT2I", random.Random(0), n=4)
    out = tmp_path / "index"
    assert (
        main(
            [
                "index",
                "build",
                "--embedder",
                str(tiny_qwen3_embedder),
                "--task",
                str(tmp_path / "SynT2I"),
                "--reasoning",
                "cached",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    index = Index.load(out)
    assert index.ids == [c.id for c in task.candidates] and index.manifest["side"] == "candidate"
    assert index.manifest["modalities"] == {"image": 4}
    assert all(r["evidence"]["crop_boxes"] for r in index.records)  # the oracle T-CoTs box every shape
    assert all(r["item"]["instruction"] == "Represent the given image." for r in index.records)
    assert Path(index.records[0]["item"]["images"][0]).is_absolute()


def test_an_index_built_with_a_reasoner_reasons_for_queries_too(
    corpus, tiny_qwen3_embedder, tiny_qwen3_reasoner, tmp_path, capsys
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"t{i}", "text": f"text {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "index"
    assert (
        main(
            [
                "index",
                "build",
                "--embedder",
                str(tiny_qwen3_embedder),
                "--reasoner",
                str(tiny_qwen3_reasoner),
                "--max-new-tokens",
                "6",
                "--items",
                str(items),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    index = Index.load(out)
    assert index.manifest["reasoning"] == "generate" and index.manifest["reasoner"]["fingerprint"]
    assert all(isinstance(r["tcot"], str) for r in index.records)
    capsys.readouterr()
    assert main(["search", str(out), "--text", "text 1", "-k", "2", "--format", "json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert isinstance(reply["query"]["tcot"], str)  # the recorded Reasoner wrote the query's T-CoT
    assert (
        main(["search", str(out), "--text", "text 1", "-k", "2", "--format", "json", "--reasoning", "off"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["query"]["tcot"] is None
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "t9", "text": "text 9"}) + "\n")
    assert main(["index", "add", str(out), "--items", str(more), "--no-progress"]) == 0
    assert Index.load(out).records[-1]["tcot"] is not None
