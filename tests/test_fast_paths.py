"""The encode speed-ups must compute exactly what the stock transformers code computes.

- `FastQwen2VLImageProcessorPil` against `Qwen2VLImageProcessorPil` (bit-identical pixel values);
- `packed_sdpa_attention` against one SDPA call per segment, and whole models with and without it;
- `image_rope_positions` against each family's own `get_rope_index`, `vision_rotary_positions` against
  `get_vision_position_ids`, the batched `create_mm_token_type_ids` against the processor's per-row one;
- `pipeline._prepared_batches` with and without the prefetch thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from embedrl.data.items import Item
from embedrl.models.backbone import load_processor
from embedrl.models.imageprep import FastQwen2VLImageProcessorPil, normalisation_table
from embedrl.models.speedups import (
    PACKED_VISION_ATTENTION,
    _equal_length_runs,
    image_rope_positions,
    packed_sdpa_attention,
    vision_rotary_positions,
)

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]


def _random_image(rng: np.random.Generator, height: int, width: int, mode: str = "RGB") -> Image.Image:
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def _stock_twin(fast: FastQwen2VLImageProcessorPil) -> Qwen2VLImageProcessorPil:
    settings = {k: v for k, v in fast.to_dict().items() if k != "image_processor_type"}
    return Qwen2VLImageProcessorPil(**settings)


# ------------------------------------------------------------------------------------------ image processor


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_image_processor_is_bit_identical(tiny_factory, family: str) -> None:
    fast = load_processor(tiny_factory(family)).image_processor
    assert isinstance(fast, FastQwen2VLImageProcessorPil)
    stock = _stock_twin(fast)
    rng = np.random.default_rng(0)
    # square, wide, tall, upscaled (below min pixels), downscaled (above max pixels), not divisible by the patch
    sizes = [(128, 128), (37, 300), (500, 41), (20, 20), (1000, 900), (65, 97)]
    images = [_random_image(rng, h, w) for h, w in sizes]
    for kwargs in ({}, {"size": {"shortest_edge": 32 * 32, "longest_edge": 96 * 96}}):
        expected = stock(images, return_tensors="pt", **kwargs)
        got = fast(images, return_tensors="pt", **kwargs)
        assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"])
        assert got["pixel_values"].dtype == expected["pixel_values"].dtype == torch.float32
        assert torch.equal(got["pixel_values"], expected["pixel_values"])
    one = fast(images[0], return_tensors="np")  # a single image and numpy output
    assert isinstance(one["pixel_values"], np.ndarray)
    assert np.array_equal(one["pixel_values"], stock(images[0], return_tensors="np")["pixel_values"])


def test_fast_image_processor_falls_back_for_other_inputs(tiny_qwen3_embedder) -> None:
    fast = load_processor(tiny_qwen3_embedder).image_processor
    stock = _stock_twin(fast)
    rng = np.random.default_rng(1)
    gray = _random_image(rng, 64, 80, mode="L")
    rgba = _random_image(rng, 64, 64, mode="RGBA")
    array = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    for batch in ([gray], [rgba, _random_image(rng, 64, 64)], [array]):
        expected = stock(batch, return_tensors="pt")
        got = fast(batch, return_tensors="pt")
        assert torch.equal(got["pixel_values"], expected["pixel_values"])
        assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"])


def test_fast_image_processor_composites_a_transparency_key_like_stock(tiny_qwen3_embedder) -> None:
    fast = load_processor(tiny_qwen3_embedder).image_processor
    stock = _stock_twin(fast)
    keyed = _random_image(np.random.default_rng(2), 40, 56)
    keyed.putpixel((0, 0), (10, 20, 30))
    keyed.info["transparency"] = (10, 20, 30)
    expected = stock([keyed], return_tensors="pt")["pixel_values"]
    assert torch.equal(fast([keyed], return_tensors="pt")["pixel_values"], expected)
    keyed.info.pop("transparency")
    assert not torch.equal(fast([keyed], return_tensors="pt")["pixel_values"], expected)


def test_fast_image_processor_rejects_a_bad_mean_like_stock(tiny_qwen3_embedder) -> None:
    fast = load_processor(tiny_qwen3_embedder).image_processor
    stock = _stock_twin(fast)
    img = _random_image(np.random.default_rng(3), 32, 32)
    bad = {"image_mean": [0.5, 0.5], "image_std": [0.5, 0.5]}
    with pytest.raises(ValueError) as stock_error:
        stock([img], return_tensors="pt", **bad)
    with pytest.raises(ValueError) as fast_error:
        fast([img], return_tensors="pt", **bad)
    assert type(fast_error.value) is type(stock_error.value)


def test_normalisation_table_matches_the_processor_arithmetic() -> None:
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    table = normalisation_table(1 / 255, mean, std)
    values = np.arange(256, dtype=np.uint8)
    rescaled = (values.astype(np.float64) * (1 / 255)).astype(np.float32)
    for channel in range(3):
        expected = (rescaled - np.float32(mean[channel])) / np.float32(std[channel])
        assert np.array_equal(table[channel], expected)


def test_fast_image_processor_saves_as_the_stock_class(tiny_qwen3_embedder, tmp_path) -> None:
    from transformers import AutoImageProcessor

    fast = load_processor(tiny_qwen3_embedder).image_processor
    fast.save_pretrained(tmp_path)
    assert (
        '"image_processor_type": "Qwen2VLImageProcessor"'
        in (tmp_path / "preprocessor_config.json").read_text()
    )
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded).__name__.startswith("Qwen2VLImageProcessor")
    assert reloaded.patch_size == fast.patch_size


# -------------------------------------------------------------------------------------- packed attention


def test_equal_length_runs() -> None:
    assert _equal_length_runs([4, 4, 9, 4]) == [(4, 2), (9, 1), (4, 1)]
    assert _equal_length_runs([]) == []


def test_packed_attention_equals_one_call_per_segment() -> None:
    torch.manual_seed(0)
    lengths = [16, 16, 16, 9, 25, 25, 16]
    total, heads, dim = sum(lengths), 4, 8
    query, key, value = (torch.randn(1, heads, total, dim) for _ in range(3))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    got, _ = packed_sdpa_attention(None, query, key, value, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert got.shape == (1, total, heads, dim)
    expected, start = [], 0
    for length in lengths:
        span = slice(start, start + length)
        out = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, span], key[:, :, span], value[:, :, span], scale=0.3
        )
        expected.append(out.transpose(1, 2))
        start += length
    assert torch.allclose(got, torch.cat(expected, dim=1), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_vision_attention_gives_the_same_embeddings(tiny_factory, family: str, tmp_path) -> None:
    from embedrl.models.embedder import Embedder

    embedder = Embedder.from_pretrained(tiny_factory(family, "embedder"))
    vision_config = embedder.model.config.vision_config
    assert vision_config._attn_implementation == PACKED_VISION_ATTENTION
    rng = np.random.default_rng(2)
    paths = []
    for i, (h, w) in enumerate([(64, 64), (64, 64), (96, 40), (64, 64)]):
        paths.append(tmp_path / f"{i}.png")
        _random_image(rng, h, w).save(paths[-1])
    items = [
        Item(id="a", images=[str(paths[0]), str(paths[1])], text="two"),
        Item(id="b", images=[str(paths[2])], text="one"),
        Item(id="c", images=[str(paths[3])]),
        Item(id="d", text="text only"),
    ]
    batch = embedder.collate([embedder.build_input(item) for item in items])
    from transformers import AttentionInterface

    calls: list[bool] = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q") is not None)
        return packed_sdpa_attention(*args, **kwargs)

    AttentionInterface.register(PACKED_VISION_ATTENTION, spy)
    try:
        packed = embedder.embed_collated(batch)
    finally:
        AttentionInterface.register(PACKED_VISION_ATTENTION, packed_sdpa_attention)
    # one packed call per vision layer (not one per image), so the speed-up is really in use
    assert calls == [True] * vision_config.depth
    vision_config._attn_implementation = "sdpa"
    try:
        per_image = embedder.embed_collated(batch)
    finally:
        vision_config._attn_implementation = PACKED_VISION_ATTENTION
    assert np.abs(packed - per_image).max() < 1e-5


def test_model_with_every_fast_path_pickles(tiny_qwen3_embedder, tmp_path) -> None:
    """torch.save(model) and process pools pickle whole models: the switched modules and hooks must survive."""
    import pickle

    from embedrl.models.embedder import Embedder

    embedder = Embedder.from_pretrained(tiny_qwen3_embedder)
    path = tmp_path / "0.png"
    _random_image(np.random.default_rng(5), 64, 48).save(path)
    batch = embedder.collate([embedder.build_input(Item(id="a", images=[str(path)], text="a picture"))])
    before = embedder.embed_collated(batch)
    embedder.model = pickle.loads(pickle.dumps(embedder.model))
    visual = embedder.model.model.visual
    assert type(visual.patch_embed.proj).__name__ == "PatchConv3dAsLinear"
    assert len(visual._forward_pre_hooks) == 1  # the cached-positions hook came along
    assert visual.config._attn_implementation == PACKED_VISION_ATTENTION
    assert np.array_equal(embedder.embed_collated(batch), before)


def test_eager_vision_attention_is_left_alone(tiny_qwen3_embedder) -> None:
    from embedrl.models.backbone import LoadOptions, load_model

    model = load_model(tiny_qwen3_embedder, options=LoadOptions(attn_implementation="eager"))
    assert model.config.vision_config._attn_implementation == "eager"


# -------------------------------------------------------------------------------- vision positions, token types


def test_vision_rotary_positions_equal_transformers() -> None:
    from transformers.vision_utils import get_vision_position_ids

    rng = np.random.default_rng(4)
    for merge in (1, 2):
        grids = [
            [int(rng.integers(1, 4)), merge * int(rng.integers(1, 9)), merge * int(rng.integers(1, 9))]
            for _ in range(40)
        ] + [[1, 2 * merge, 2 * merge]] * 3  # repeated sizes hit the cache
        grid_thw = torch.tensor(grids)
        expected = get_vision_position_ids(grid_thw, merge)
        got = vision_rotary_positions(grid_thw, merge)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    with torch.device("meta"):  # a dry run first must not leave meta tensors in the cache
        vision_rotary_positions(torch.tensor([[1, 10, 6]], device="cpu"), 2)
    assert torch.equal(
        vision_rotary_positions(torch.tensor([[1, 10, 6]]), 2),
        get_vision_position_ids(torch.tensor([[1, 10, 6]]), 2),
    )
    again = vision_rotary_positions(torch.tensor([[1, 4, 4]]), 2)
    again += 100  # a caller writing into the result must not corrupt the cache
    assert torch.equal(
        vision_rotary_positions(torch.tensor([[1, 4, 4]]), 2),
        get_vision_position_ids(torch.tensor([[1, 4, 4]]), 2),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_tower_uses_the_cached_positions(tiny_factory, family: str, monkeypatch) -> None:
    from transformers.vision_utils import get_vision_position_ids

    from embedrl.models import speedups
    from embedrl.models.backbone import LoadOptions, load_model

    model = load_model(tiny_factory(family), options=LoadOptions(dtype="float32", device="cpu"))
    visual = model.model.visual
    calls: list[int] = []

    def spy(grid_thw, merge):
        calls.append(len(grid_thw))
        return vision_rotary_positions(grid_thw, merge)

    monkeypatch.setattr(speedups, "vision_rotary_positions", spy)
    grid = torch.tensor([[1, 4, 4], [1, 4, 6], [2, 4, 4]])
    patches = int(grid.prod(dim=1).sum())
    width = visual.config.in_channels * visual.config.temporal_patch_size * visual.config.patch_size**2
    pixels = torch.randn(patches, width)
    with torch.no_grad():
        hooked = visual(pixels, grid_thw=grid).pooler_output
        explicit = visual(
            pixels, grid_thw=grid, position_ids=get_vision_position_ids(grid, visual.spatial_merge_size)
        ).pooler_output
    assert calls == [3]  # the hook ran for the first call and left the explicit positions alone
    assert torch.equal(hooked, explicit)


def test_batched_token_types_equal_the_processor_per_row(tiny_qwen3_embedder) -> None:
    processor = load_processor(tiny_qwen3_embedder)
    # ProcessorMixin's own per-row implementation, which the mixin overrides
    stock = next(
        cls for cls in type(processor).__mro__ if cls.__module__.startswith("transformers.processing")
    )
    image, video = processor.image_token_id, processor.video_token_id
    ragged = [[1, image, image, 2], [], [video, 5, image], [7]]
    padded = torch.tensor([[0, 0, image, 3], [video, image, 4, 4]])
    for input_ids in (ragged, padded, [torch.tensor(row) for row in ragged if row]):
        expected = stock.create_mm_token_type_ids(processor, input_ids)
        got = processor.create_mm_token_type_ids(input_ids)
        assert got == expected
    assert processor.create_mm_token_type_ids([]) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_image_placeholders_equal_the_family_processor(tiny_factory, family: str) -> None:
    processor = load_processor(tiny_factory(family))
    family_cls = next(
        cls for cls in type(processor).__mro__ if cls.__module__.startswith("transformers.models")
    )
    grids = {"image_grid_thw": torch.tensor([[1, 4, 4], [1, 6, 2], [2, 4, 8]])}
    for index in range(3):
        expected = family_cls.replace_image_token(processor, grids, image_idx=index)
        assert processor.replace_image_token(grids, image_idx=index) == expected
    numpy_grids = {"image_grid_thw": grids["image_grid_thw"].numpy()}
    assert processor.replace_image_token(numpy_grids, image_idx=2) == processor.image_token * 16


# ------------------------------------------------------------------------------------------ rope positions


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_image_rope_positions_equal_the_model_own(tiny_factory, family: str, side: str, tmp_path) -> None:
    from embedrl.models.embedder import Embedder

    embedder = Embedder.from_pretrained(tiny_factory(family, "embedder"))
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(64, 64), (40, 100), (128, 70), (33, 33)]):
        paths.append(tmp_path / f"{i}.png")
        _random_image(rng, h, w).save(paths[-1])
    items = [
        Item(id="a", text="hello there world, a longer text row"),
        Item(id="b", text="x", images=[str(paths[0])]),
        Item(id="c", images=[str(paths[1]), str(paths[2])], text="two images and some words"),
        Item(id="d", images=[str(paths[3])]),
    ]
    batch = embedder.collate([embedder.build_input(item) for item in items], padding_side=side)
    expected, _ = embedder.model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    got = image_rope_positions(batch, embedder.model.config.vision_config.spatial_merge_size)
    assert got is not None
    valid = batch["attention_mask"].bool()
    assert torch.equal(got[:, valid], expected[:, valid])
    # and the vectors are those of the model computing positions itself
    with torch.inference_mode():
        ours = embedder.embed_collated(batch)
        batch_with_model_positions = dict(batch, position_ids=expected)
        theirs = embedder.embed_collated(batch_with_model_positions)
    assert np.abs(ours - theirs).max() < 1e-6


def test_image_rope_positions_defer_to_the_model_when_not_all_still_images() -> None:
    ids = torch.tensor([[1, 2, 3]])
    text_only = {"input_ids": ids, "mm_token_type_ids": torch.zeros_like(ids), "image_grid_thw": None}
    assert image_rope_positions(text_only, 2) is None
    video = {
        "input_ids": ids,
        "mm_token_type_ids": torch.tensor([[0, 2, 2]]),
        "image_grid_thw": torch.tensor([[1, 2, 2]]),
    }
    assert image_rope_positions(video, 2) is None
    frames = {
        "input_ids": ids,
        "mm_token_type_ids": torch.tensor([[0, 1, 1]]),
        "image_grid_thw": torch.tensor([[2, 2, 2]]),
    }
    assert image_rope_positions(frames, 2) is None
    mismatch = {
        "input_ids": ids,
        "mm_token_type_ids": torch.tensor([[0, 1, 1]]),
        "image_grid_thw": torch.tensor([[1, 4, 4]]),
    }
    assert image_rope_positions(mismatch, 2) is None


# ------------------------------------------------------------------------------------------ batch prefetch


@pytest.mark.parametrize("overlap", [False, True])
def test_prepared_batches_keep_order_and_raise(overlap: bool) -> None:
    from embedrl.pipeline import _prepared_batches

    chunks = [["a"], ["b", "c"], ["d"]]
    assert list(_prepared_batches(lambda chunk: "".join(chunk), chunks, overlap)) == ["a", "bc", "d"]

    def fail_on_d(chunk):
        if "d" in chunk:
            raise ValueError("bad d")
        return chunk

    seen = []
    with pytest.raises(ValueError, match="bad d"):
        for batch in _prepared_batches(fail_on_d, chunks, overlap):
            seen.append(batch)
    assert seen == [["a"], ["b", "c"]]
