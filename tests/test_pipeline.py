"""encode(): reasoning generate / cached / off, dedup, caches that survive a crash, per-item failures, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedrl.cli import main
from embedrl.data.items import Item, VideoRef
from embedrl.data.synthetic import draw_scene, random_scene, teacher_image_tcot
from embedrl.models.embedder import Embedder
from embedrl.models.reasoner import GenerationSettings, Reasoner, TransformersBackend
from embedrl.pipeline import EncodeError, embed_items, encode, encode_detailed


@pytest.fixture(scope="module")
def embedder(tiny_qwen3_embedder) -> Embedder:
    return Embedder.from_pretrained(tiny_qwen3_embedder)


@pytest.fixture(scope="module")
def reasoner(tiny_qwen3_reasoner) -> Reasoner:
    return Reasoner(
        TransformersBackend.from_pretrained(tiny_qwen3_reasoner), GenerationSettings(max_new_tokens=24)
    )


def _scene_items(root: Path, n: int = 6) -> list[Item]:
    import random

    rng = random.Random(0)
    items = []
    for i in range(n):
        shapes = random_scene(rng)
        path = root / f"s{i}.png"
        draw_scene(shapes, 128).save(path)
        items.append(Item(id=f"img{i}", images=[str(path)], meta={"tcot": teacher_image_tcot(shapes, 128)}))
    items.append(Item(id="txt", text="a small red circle", instruction="Find an image:"))
    frames = []
    for t in range(4):
        p = root / f"f{t}.png"
        Image.new("RGB", (64, 64), (40 * t, 0, 0)).save(p)
        frames.append(str(p))
    items.append(Item(id="vid", video=VideoRef(frames=frames)))
    return items


def test_reasoning_off_equals_direct_embedding(embedder, tmp_path: Path) -> None:
    items = _scene_items(tmp_path)
    vectors = encode(items, embedder, reasoning="off", progress=False)
    direct = embedder.embed_inputs([embedder.build_input(it) for it in items])
    assert vectors.shape == (len(items), embedder.dim)
    assert np.abs(vectors - direct).max() < 1e-5


def test_cached_uses_given_tcots_with_crops(embedder, tmp_path: Path) -> None:
    items = _scene_items(tmp_path)[:3]
    result = encode_detailed(items, embedder, reasoning="cached", progress=False)
    assert result.failures == []
    assert result.tcots == [it.meta["tcot"] for it in items]
    built = embedder.build_input(items[0], items[0].meta["tcot"])
    assert len(built.images) >= 2  # the original image plus at least one crop from the boxes
    assert np.abs(result.vectors[0] - embedder.embed_inputs([built])[0]).max() < 1e-5
    off = encode(items, embedder, reasoning="off", progress=False)
    assert np.abs(off - result.vectors).max() > 1e-3  # the T-CoT changes the vector


def test_cached_without_tcot_is_a_per_item_failure(embedder, tmp_path: Path) -> None:
    items = _scene_items(tmp_path)
    result = encode_detailed(items, embedder, reasoning="cached", progress=False)
    failed = {f.id for f in result.failures}
    assert failed == {"txt", "vid"}  # the only items without meta["tcot"]
    assert all(f.stage == "reasoning" for f in result.failures)
    assert np.isnan(result.vectors[-1]).all() and np.isfinite(result.vectors[0]).all()
    with pytest.raises(EncodeError, match="2 of 8 item"):
        encode(items, embedder, reasoning="cached", progress=False)


def test_generate_with_reasoner_and_dedup(embedder, reasoner, tmp_path: Path) -> None:
    items = _scene_items(tmp_path)[:2] + [Item(id="txt", text="a small red circle")]
    dup = Item(id="dup", text="a small red circle")  # same content as "txt": computed once
    result = encode_detailed(items + [dup], embedder, reasoner, side="query", progress=False)
    assert result.failures == []
    assert all(isinstance(t, str) for t in result.tcots)
    assert result.tcots[2] == result.tcots[3]
    assert np.array_equal(result.vectors[2], result.vectors[3])
    assert result.computed == 3
    direct = reasoner.reason(items[:1], side="query")
    assert result.tcots[0] == direct[0]  # greedy decoding: the pipeline gives the reasoner's own text
    expected = embedder.embed_inputs([embedder.build_input(items[0], direct[0])])[0]
    assert np.abs(result.vectors[0] - expected).max() < 1e-5


def test_crash_then_resume_gives_identical_vectors(embedder, reasoner, tmp_path: Path, monkeypatch) -> None:
    items = _scene_items(tmp_path)
    cache = tmp_path / "cache"
    reference = encode(items, embedder, reasoner, batch_size=2, progress=False)

    calls = {"n": 0}
    original = Embedder.embed_collated

    def crash_after_two(self, batch):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("injected crash")
        return original(self, batch)

    monkeypatch.setattr(Embedder, "embed_collated", crash_after_two)
    with pytest.raises(RuntimeError, match="injected crash"):
        encode(items, embedder, reasoner, batch_size=2, cache_dir=cache, progress=False)
    monkeypatch.setattr(Embedder, "embed_collated", original)
    assert len(list((cache / "vectors").rglob("shard-*.npz"))) == 2  # two batches made it to disk
    assert (cache / "tcots.jsonl").read_text().count("\n") == len(items)  # every T-CoT was generated first

    resumed = encode_detailed(items, embedder, reasoner, batch_size=2, cache_dir=cache, progress=False)
    assert resumed.computed == len(items) - 4  # only the batches lost in the crash are recomputed
    assert np.abs(resumed.vectors - reference).max() < 1e-6
    third = encode_detailed(items, embedder, reasoner, batch_size=2, cache_dir=cache, progress=False)
    assert third.computed == 0 and np.array_equal(third.vectors, resumed.vectors)


def test_unreadable_media_reported_and_rest_kept(embedder, tmp_path: Path) -> None:
    items = _scene_items(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    items.insert(2, Item(id="bad", images=[str(broken)]))
    result = encode_detailed(items, embedder, reasoning="off", progress=False, cache_dir=tmp_path / "c")
    assert [(f.id, f.stage) for f in result.failures] == [("bad", "media")]
    assert "broken.png" in result.failures[0].message
    assert np.isnan(result.vectors[2]).all()
    assert np.isfinite(np.delete(result.vectors, 2, axis=0)).all()


def test_torch_output_and_embed_items_match(embedder, tmp_path: Path) -> None:
    items = _scene_items(tmp_path)[:3]
    as_torch = encode(items, embedder, reasoning="off", return_tensors="torch", progress=False)
    vectors, computed = embed_items(embedder, items)
    assert computed == 3
    assert np.abs(as_torch.numpy() - vectors).max() < 1e-6


def test_cli_encode_reports_and_resumes(tiny_qwen3_embedder, tmp_path: Path, capsys) -> None:
    img = tmp_path / "media" / "a.png"
    img.parent.mkdir()
    Image.new("RGB", (64, 64), (0, 200, 0)).save(img)
    lines = [
        {"id": "x1", "text": "a green square", "instruction": "Find:"},
        {"id": "x2", "images": ["media/a.png"]},
        {"id": "x3", "images": ["media/missing.png"]},
        {"id": "x4", "video": {"frames": ["media/a.png", "media/a.png"]}},
    ]
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "vec.npy"
    code = main(
        [
            "encode",
            "--embedder",
            str(tiny_qwen3_embedder),
            "--input",
            str(items_file),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "x3" in err and "missing.png" in err
    vectors = np.load(out)
    assert vectors.shape[0] == 4 and np.isnan(vectors[2]).all() and np.isfinite(vectors[[0, 1, 3]]).all()
    failures = [json.loads(x) for x in (tmp_path / "vec.npy.failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["x3"]

    Image.new("RGB", (64, 64), (0, 0, 200)).save(tmp_path / "media" / "missing.png")
    code = main(
        [
            "encode",
            "--embedder",
            str(tiny_qwen3_embedder),
            "--input",
            str(items_file),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0 and "(1 computed" in stdout  # the three others came from the cache
    again = np.load(out)
    assert np.isfinite(again).all() and np.array_equal(again[[0, 1, 3]], vectors[[0, 1, 3]])
    assert not (tmp_path / "vec.npy.failures.jsonl").exists()


def test_cli_encode_rejects_malformed_items(tiny_qwen3_embedder, tmp_path: Path, capsys) -> None:
    items_file = tmp_path / "items.jsonl"
    items_file.write_text('{"id": "a", "text": "ok"}\n{"id": "a", "text": "dup"}\n{"text": 3}\n')
    code = main(
        [
            "encode",
            "--embedder",
            str(tiny_qwen3_embedder),
            "--input",
            str(items_file),
            "--out",
            str(tmp_path / "v.npy"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{items_file}:2: record 'a': field 'id': duplicate id" in err
    assert f"{items_file}:3: field 'id': missing required field" in err
    assert not (tmp_path / "v.npy").exists()


def test_directory_media_fail_per_item_and_frame_folders_embed(embedder, tmp_path: Path) -> None:
    from embedrl.data.items import content_key

    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(3):
        Image.new("RGB", (64, 64), (0, 60 * t, 0)).save(frames / f"f{t}.png")
    (tmp_path / "adir").mkdir()
    items = [
        Item(id="txt", text="a green square"),
        Item(id="folder", video=VideoRef(path=str(frames))),  # a video given as a folder of frames
        Item(id="dir-as-image", images=[str(tmp_path / "adir")]),
    ]
    result = encode_detailed(items, embedder, reasoning="off", progress=False, cache_dir=tmp_path / "c")
    assert [(f.id, f.stage) for f in result.failures] == [("dir-as-image", "media")]
    assert "is a directory" in result.failures[0].message
    assert np.isfinite(result.vectors[:2]).all() and np.isnan(result.vectors[2]).all()
    # the folder's key follows its frames' content, so an edited frame is not served from the cache
    before = content_key(items[1])
    Image.new("RGB", (64, 64), (255, 0, 0)).save(frames / "f1.png")
    assert content_key(items[1]) != before
    again = encode_detailed(items[:2], embedder, reasoning="off", progress=False, cache_dir=tmp_path / "c")
    assert again.computed == 1 and np.array_equal(again.vectors[0], result.vectors[0])


def test_cli_encode_rejects_an_empty_video_path(tiny_qwen3_embedder, tmp_path: Path, capsys) -> None:
    items_file = tmp_path / "items.jsonl"
    items_file.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "video": ""}\n')
    code = main(
        [
            "encode",
            "--embedder",
            str(tiny_qwen3_embedder),
            "--input",
            str(items_file),
            "--out",
            str(tmp_path / "v.npy"),
        ]
    )
    assert code == 2
    assert f"{items_file}:2: record 'b': field 'video': an empty video path" in capsys.readouterr().err


def test_cli_encode_input_checks_before_any_work(tiny_qwen3_embedder, tmp_path: Path, capsys) -> None:
    items_file = tmp_path / "items.jsonl"
    items_file.write_text('{"id": "a", "text": "one"}\n\n{"id": "b", "text": "two"}\n\n')
    base = ["encode", "--embedder", str(tiny_qwen3_embedder), "--input", str(items_file), "--no-progress"]
    # a blank line inside the file would shift every later row; blank lines at the end are fine
    assert main(base + ["--out", str(tmp_path / "v.npy")]) == 2
    assert f"{items_file}:2: blank line" in capsys.readouterr().err
    items_file.write_text(
        '\ufeff{"id": "a", "text": "one"}\r\n{"id": "b", "text": "two"}\r\n\r\n'
    )  # BOM, CRLF
    (tmp_path / "outdir").mkdir()
    assert main(base + ["--out", str(tmp_path / "outdir")]) == 2
    assert "--out is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--out", str(tmp_path / "v.npy"), "--batch-size", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "v.npy")]) == 0
    assert np.load(tmp_path / "v.npy").shape[0] == 2
    items_file.write_text('{"id": "a", "text": "one", "image": "a.png"}\n')  # "image" for "images"
    assert main(base + ["--out", str(tmp_path / "w.npy")]) == 0
    assert f"warning: {items_file}:1: field 'image' is not an item field" in capsys.readouterr().err


def test_encode_rejects_bad_settings_before_work(embedder) -> None:
    from embedrl.errors import EmbedRLError

    items = [Item(id="a", text="x")]
    for kwargs, message in (
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": -1}, "batch_size must be a positive integer"),
        ({"reasoner_batch_size": 0}, "reasoner_batch_size"),
        ({"on_error": "skip"}, "on_error must be"),
        ({"return_tensors": "jax"}, "return_tensors must be"),
    ):
        with pytest.raises(EmbedRLError, match=message):
            encode(items, embedder, progress=False, **kwargs)
    with pytest.raises(EmbedRLError, match="batch_size"):
        embed_items(embedder, items, batch_size=-2)


def test_evidence_notes_reach_every_duplicate_id(embedder, tmp_path: Path) -> None:
    items = _scene_items(tmp_path)[:1]
    twin = Item(id="twin", images=items[0].images, meta=items[0].meta)
    bad_box = '<thinking>{"bbox_2d": [[900, 900, 901, 901]]}</thinking><rethink>r</rethink><answer>a</answer>'
    result = encode_detailed([items[0], twin], embedder, tcots=[bad_box, bad_box], progress=False)
    assert result.computed == 1
    assert result.notes.get("twin") and result.notes["twin"] == result.notes[items[0].id]


def test_tcot_cache_survives_a_torn_last_line(tmp_path: Path) -> None:
    from embedrl.pipeline import TCoTCache

    path = tmp_path / "tcots.jsonl"
    TCoTCache(path).add_many([("k1", "c1", "first")])
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "k2", "te')  # a crash in the middle of a write
    resumed = TCoTCache(path)
    assert resumed.entries == {"k1": "first"}
    resumed.add_many([("k3", "c3", "third")])
    assert TCoTCache(path).entries == {"k1": "first", "k3": "third"}  # not glued to the fragment


def test_tcot_cache_follows_generation_settings_and_serves_cached_mode(
    embedder, tiny_qwen3_reasoner, tmp_path: Path
) -> None:
    items = [Item(id="t", text="a small red circle"), Item(id="u", text="two blue squares")]
    cache = tmp_path / "cache"
    short = Reasoner(
        TransformersBackend.from_pretrained(tiny_qwen3_reasoner), GenerationSettings(max_new_tokens=3)
    )
    first = encode_detailed(items, embedder, short, cache_dir=cache, progress=False)
    again = encode_detailed(items, embedder, short, cache_dir=cache, progress=False)
    assert again.tcots == first.tcots and again.computed == 0  # same Reasoner and settings: all cached
    longer = Reasoner(short.backend, GenerationSettings(max_new_tokens=12))
    other = encode_detailed(items, embedder, longer, cache_dir=cache, progress=False)
    assert other.tcots == longer.reason(items, side="query")  # not the 3-token T-CoTs of the first run
    assert other.tcots != first.tcots and other.computed == 2
    # reasoning='cached' without a Reasoner reads what the generate runs wrote (the latest per item)
    cached = encode_detailed(items, embedder, reasoning="cached", cache_dir=cache, progress=False)
    assert cached.failures == [] and cached.tcots == other.tcots and cached.computed == 0


def test_vector_cache_tells_an_adapter_and_a_dtype_apart(tiny_qwen3_embedder, tmp_path: Path) -> None:
    import torch

    from embedrl.models.backbone import LoadOptions
    from embedrl.models.embedder import LoraSettings
    from embedrl.pipeline import embedder_fingerprint

    base = Embedder.from_pretrained(tiny_qwen3_embedder)
    tuned = Embedder.from_pretrained(tiny_qwen3_embedder)
    tuned.add_lora(LoraSettings.preset("tiny"))
    assert tuned.changed_in_memory
    with torch.no_grad():
        for name, param in tuned.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    in_memory = embedder_fingerprint(tuned)
    assert in_memory != embedder_fingerprint(base)
    with torch.no_grad():
        next(p for n, p in tuned.model.named_parameters() if "lora_B" in n).add_(1.0)
    assert embedder_fingerprint(tuned) != in_memory  # in memory, the parameters themselves are the identity
    adapter = tuned.save_pretrained(tmp_path / "adapter", merge=False)
    loaded = Embedder.from_pretrained(tiny_qwen3_embedder, adapter=adapter)
    assert not loaded.changed_in_memory
    assert embedder_fingerprint(loaded) != embedder_fingerprint(base)
    items = [Item(id="a", text="a red circle")]
    cache = tmp_path / "cache"
    from_base = encode(items, base, progress=False, cache_dir=cache)
    with_adapter = encode_detailed(items, loaded, progress=False, cache_dir=cache)
    assert with_adapter.computed == 1 and not np.array_equal(with_adapter.vectors, from_base)
    half = Embedder.from_pretrained(tiny_qwen3_embedder, LoadOptions(dtype="bfloat16"))
    assert embedder_fingerprint(half) != embedder_fingerprint(base)


def test_tcot_cache_survives_a_line_torn_inside_a_character(tmp_path: Path) -> None:
    from embedrl.pipeline import TCoTCache

    path = tmp_path / "tcots.jsonl"
    TCoTCache(path).add_many([("k1", "c1", "un caf\u00e9 \u2615")])
    record = json.dumps({"key": "k2", "content": "c2", "text": "\u2615\u2615"}, ensure_ascii=False).encode()
    with path.open("ab") as handle:
        handle.write(record[:-4])  # ends inside the three-byte encoding of the second cup
    resumed = TCoTCache(path)
    assert resumed.entries == {"k1": "un caf\u00e9 \u2615"}


def test_parameter_digest_is_computed_once_inside_weights_fixed() -> None:
    import torch

    from embedrl.models.identity import parameter_digest, weights_fixed

    model = torch.nn.Linear(3, 2)
    before = parameter_digest(model)
    with weights_fixed():
        for _ in range(20):  # a model freed inside the block must not hand its digest to one at the same id
            other = torch.nn.Linear(3, 2)
            other_digest = parameter_digest(other)
            del other
            assert parameter_digest(torch.nn.Linear(3, 2)) != other_digest
        first = parameter_digest(model)
        with torch.no_grad():
            model.weight.add_(1.0)
        with weights_fixed():  # nested blocks share the memo
            assert parameter_digest(model) == first == before
    assert parameter_digest(model) != before  # outside the block the change is seen
