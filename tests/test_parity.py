"""Official parity: embedrl builds the Embedder input exactly as the official Embed-RL evaluation does.

`fixtures/parity/official-eval-inputs.jsonl` records, per item kind, what the official evaluation code (Embed-RL
commit 87b52f7, run unmodified on CPU with transformers 5.24) builds: the chat text, the tokenised prompt
(detokenised, vision placeholders expanded), every image's source size, pixel bounds, resized size and grid,
the crop boxes and the chosen frames. Its `README.md` says how it was obtained; `make_media.py` regenerates the
images from integer formulas and checks their pixel hashes.

Each fixture line is built through the public path (`Embedder.from_pretrained` on a checkpoint shaped like a
released one: `emb_token_ids` in config.json and no embedrl settings, then `Embedder.build_input` and
`Embedder.collate`) and compared field by field.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from embedrl.data.items import Item, VideoRef
from embedrl.models.embedder import Embedder, EmbedderConfig
from embedrl.models.embedder_input import EMBEDDER_CONFIG_FILE, smart_resize

FIXTURE = Path(__file__).parent / "fixtures" / "parity"
LINES = [json.loads(line) for line in (FIXTURE / "official-eval-inputs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("parity_make_media", FIXTURE / "make_media.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = tmp_path_factory.mktemp("parity")
    module.make(str(root / "media"))  # raises if a pixel hash differs from the recorded one
    return root


@pytest.fixture(scope="module")
def released_like(tmp_path_factory) -> Path:
    """A tiny Qwen3-VL saved the way a released Embed-RL checkpoint is: merged weights, `emb_token_ids` in its
    config, no embedrl settings file."""
    from embedrl.models.tiny import make_tiny

    root = tmp_path_factory.mktemp("released")
    base = make_tiny("qwen3-vl", root / "base")
    out = Embedder.from_pretrained(base).save_pretrained(root / "released")
    (out / EMBEDDER_CONFIG_FILE).unlink()
    return out


@pytest.fixture(scope="module")
def embedders(released_like) -> dict[str, Embedder]:
    paper = Embedder.from_pretrained(released_like)
    official = Embedder.from_pretrained(released_like)
    official.config = official.config.with_style("official")
    return {"paper": paper, "official": official}


def _item(record: dict, root: Path) -> Item:
    video = record.get("video")
    return Item(
        id=record["id"],
        instruction=record.get("instruction"),
        text=record.get("text"),
        images=[str(root / p) for p in record.get("images") or []],
        video=VideoRef(frames=[str(root / p) for p in video["frames"]]) if video else None,
    )


def _expected(line: dict, style: str) -> dict:
    """The official record that `style` must reproduce.

    'official' reproduces the official code; where that code crashes (a flat bbox), embedrl reads the box as one
    box, which is the recorded `official_with_fix` outcome. 'paper' is official with 1-based keyframes, the
    recorded `keyframes_1based` fix."""
    fixed = line.get("official_with_fix")
    if line["official"]["crashes"]:
        assert fixed and fixed["fix"] == "flat_bbox", line["kind"]
        return fixed
    if style == "paper" and fixed and fixed["fix"] == "keyframes_1based":
        return fixed
    return line["official"]


def _built(embedder: Embedder, line: dict, root: Path):
    item = _item(line["item"], root)
    built = embedder.build_input(item, line["tcot"])
    batch = embedder.collate([built])
    return built, batch


def _compare(embedder: Embedder, line: dict, expected: dict, root: Path) -> list[str]:
    """Every difference between what embedrl builds and the official record, as readable lines."""
    built, batch = _built(embedder, line, root)
    diffs: list[str] = []
    chat = embedder.processor.apply_chat_template(
        [built.messages], tokenize=False, add_generation_prompt=False
    )[0]
    if chat != expected["chat_text"]:
        diffs.append(f"chat_text:\n  embedrl:  {chat!r}\n  official: {expected['chat_text']!r}")
    prompt = embedder.tokenizer.decode(batch["input_ids"][0].tolist(), skip_special_tokens=False)
    if prompt != expected["prompt"]:
        diffs.append(f"prompt differs (embedrl {len(prompt)} chars, official {len(expected['prompt'])})")
    grids = batch.get("image_grid_thw")
    grids = grids.tolist() if isinstance(grids, torch.Tensor) else []
    official_images = expected["images"]
    if len(built.placements) != len(official_images) or len(grids) != len(official_images):
        diffs.append(
            f"{len(built.placements)} images placed, {len(grids)} grids; official {len(official_images)}"
        )
    for n, (ours, grid, theirs) in enumerate(zip(built.placements, grids, official_images)):
        facts = {
            "role": ours.role,
            "source_hw": list(ours.source_hw),
            "min_pixels": ours.min_pixels,
            "max_pixels": ours.max_pixels,
            "resized_hw": list(ours.resized_hw),
            "image_grid_thw": grid,
            "image_pad_tokens": grid[0] * grid[1] * grid[2] // 4,
        }
        if "frame_index" in theirs:
            facts["frame_index"] = ours.frame_index
        if "crop_box" in theirs:
            facts["crop_box"] = list(ours.crop_box) if ours.crop_box else None
        for key, value in facts.items():
            if value != theirs[key]:
                diffs.append(f"image {n} {key}: embedrl {value}, official {theirs[key]}")
    crop_boxes = [list(p.crop_box) for p in built.placements if p.role == "crop"]
    frames = [p.frame_index for p in built.placements if p.role == "frame"]
    keyframes = [p.frame_index for p in built.placements if p.role == "keyframe"]
    for key, value in (
        ("crop_boxes", crop_boxes),
        ("frame_indices", frames),
        ("keyframe_indices", keyframes),
    ):
        if value != expected[key]:
            diffs.append(f"{key}: embedrl {value}, official {expected[key]}")
    return diffs


@pytest.mark.parametrize("line", LINES, ids=[line["kind"] for line in LINES])
@pytest.mark.parametrize("style", ["official", "paper"])
def test_embedder_input_equals_the_official_evaluation(embedders, media_dir, line, style) -> None:
    diffs = _compare(embedders[style], line, _expected(line, style), media_dir)
    assert not diffs, f"{line['kind']} ({style}):\n" + "\n".join(diffs)


def test_fixture_covers_every_kind_the_issue_names() -> None:
    kinds = {line["kind"] for line in LINES}
    assert len(LINES) == 18 and len(kinds) == 18
    assert {
        "tcot_keywords",
        "tcot_singlequote_json",
        "tcot_bbox",
        "tcot_keyframes",
        "video_640x360+text",
    } <= kinds


def test_released_checkpoint_gets_official_bounds_and_the_paper_reading(embedders) -> None:
    config = embedders["paper"].config
    assert (config.image_min_pixels, config.image_max_pixels) == (128 * 32 * 32, 768 * 32 * 32)
    assert (config.frame_min_pixels, config.frame_max_pixels) == (128 * 32 * 32, 300 * 32 * 32)
    assert config.evidence_style == "paper" and config.keyframe_base == 1
    assert embedders["official"].config.evidence_style == "official"


def test_old_behaviours_would_fail_the_parity_check(embedders, media_dir) -> None:
    """The comparison itself catches each of the earlier differences (so the parity test can fail)."""
    by_kind = {line["kind"]: line for line in LINES}
    embedder = embedders["official"]
    # A newline after the item text.
    line = by_kind["text"]
    expected = dict(
        line["official"], chat_text=line["official"]["chat_text"].replace("square", "square\n", 1)
    )
    assert _compare(embedder, line, expected, media_dir)
    # Crop boxes rounded outwards instead of truncated: [80, 120, 403, 467] for the first box.
    line = by_kind["tcot_bbox"]
    expected = json.loads(json.dumps(line["official"]))
    expected["crop_boxes"][0] = [80, 120, 403, 467]
    assert any("crop_boxes" in d for d in _compare(embedder, line, expected, media_dir))
    # Keyframes read 1-based by the 'official' style would select [0, 2, 3].
    line = by_kind["tcot_keyframes"]
    assert any("keyframe" in d for d in _compare(embedder, line, line["official_with_fix"], media_dir))


def test_embedrl_style_repairs_json_caps_crops_and_drops_repeats(released_like, media_dir) -> None:
    embedder = Embedder.from_pretrained(released_like, config=EmbedderConfig.official("embedrl"))
    line = next(line for line in LINES if line["kind"] == "tcot_singlequote_json")
    built, _ = _built(embedder, line, media_dir)
    assert [p.crop_box for p in built.placements if p.role == "crop"] == [(400, 199, 600, 400)]
    assert any("leniently" in note for note in built.notes)
    boxes = [[0, 0, 500, 500]] * 2 + [[100 * i, 0, 100 * i + 300, 300] for i in range(5)]
    tcot = (
        f"<thinking>x {json.dumps({'bbox_2d': boxes})}</thinking>\n<rethink>r</rethink>\n<answer>a</answer>"
    )
    item = Item(id="many", images=[str(media_dir / "media" / "mid_800x600.png")])
    capped = embedder.build_input(item, tcot)
    assert len([p for p in capped.placements if p.role == "crop"]) == 4
    assert any("repeats" in note for note in capped.notes)
    official = Embedder.from_pretrained(released_like, config=EmbedderConfig.official("official"))
    every = official.build_input(item, tcot)
    assert len([p for p in every.placements if p.role == "crop"]) == len(boxes)


@pytest.mark.parametrize(
    ("hw", "bounds", "expected"),
    [
        ((600, 800), (131072, 786432), (608, 800)),
        ((960, 1280), (131072, 786432), (768, 1024)),
        ((200, 300), (131072, 786432), (320, 448)),
        ((2414, 348), (131072, 786432), (2304, 320)),
        ((720, 1280), (131072, 307200), (384, 736)),  # round(22.5) is 22: Python rounds half to even
    ],
)
def test_smart_resize_follows_qwen_vl_utils(hw, bounds, expected) -> None:
    assert smart_resize(*hw, 32, *bounds) == expected


def test_an_image_too_elongated_for_the_resize_is_a_per_item_media_error(tmp_path, embedders) -> None:
    from embedrl.errors import MediaError

    path = tmp_path / "strip.png"
    Image.new("RGB", (4100, 20)).save(path)
    with pytest.raises(MediaError, match="aspect ratio"):
        embedders["paper"].build_input(Item(id="strip", images=[str(path)]))


def test_encode_and_the_stage1_collator_give_the_same_vector(released_like, media_dir, tmp_path) -> None:
    """One builder: `encode()` (which `embedrl eval` calls) and the stage-1 collator's batch through the model
    give the same vector for the same item and T-CoT."""
    from embedrl.pipeline import encode
    from embedrl.train.pairs import TrainingPair
    from embedrl.train.stage1 import PairCollator

    line = next(line for line in LINES if line["kind"] == "tcot_bbox")
    embedder = Embedder.from_pretrained(released_like)
    item = _item(line["item"], media_dir)
    item.meta["tcot"] = line["tcot"]
    vector = encode([item], embedder, reasoning="cached", side="query", cache_dir=tmp_path / "cache")[0]
    pair = TrainingPair(
        dataset="d",
        query=_item(line["item"], media_dir),
        positive=Item(id="p", text="x"),
        query_tcot=line["tcot"],
    )
    built = PairCollator(embedder)([pair])["queries"][0]
    assert [p.role for p in built.placements] == ["image", "crop", "crop"]
    with torch.no_grad():
        trained_on = embedder.forward_batch(embedder.collate([built]))[0].numpy()
    assert abs(vector - trained_on).max() < 1e-5
