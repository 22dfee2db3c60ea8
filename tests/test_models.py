"""Backbones, the Embedder and the tiny checkpoints, through the real transformers classes on CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embedrl.data.items import Item, VideoRef
from embedrl.models.backbone import final_norm, language_model
from embedrl.models.embedder import Embedder, LoraSettings, emb_positions, lora_target_modules
from embedrl.models.tiny import make_tiny


def _items(tmp_path: Path) -> list[Item]:
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(96, 64), (64, 128), (50, 50)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    frames = []
    for i in range(5):
        p = tmp_path / f"frame_{i}.png"
        Image.new("RGB", (64, 64), (i * 40, 100, 200 - i * 30)).save(p)
        frames.append(str(p))
    return [
        Item(id="t1", text="a small red circle next to a large blue square", instruction="Find an image:"),
        Item(id="i1", images=[paths[0]]),
        Item(id="t2", text="hello"),
        Item(id="i2", images=[paths[1]], text="what is in this picture, described at some length?"),
        Item(id="v1", video=VideoRef(frames=frames), instruction="Understand the video."),
        Item(id="i3", images=[paths[2], paths[0]], text="two images"),
    ]


@pytest.fixture(scope="module")
def embedder(tiny_qwen3_embedder) -> Embedder:
    return Embedder.from_pretrained(tiny_qwen3_embedder)


def test_emb_token_and_layout(embedder: Embedder, tmp_path: Path) -> None:
    assert embedder.tokenizer.convert_ids_to_tokens(embedder.emb_token_id) == "<emb>"
    assert embedder.model.config.emb_token_ids == [embedder.emb_token_id]
    inp = embedder.build_input(_items(tmp_path)[3])
    text = embedder.processor.apply_chat_template(inp.messages, tokenize=False)
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what is in")
    assert text.endswith(
        "Summarize the above content in one word:<|im_end|>\n<|im_start|>assistant\n<emb><|im_end|>\n"
    )
    assert len(inp.images) == 1


def test_vectors_are_normalised_and_batch_invariant(embedder: Embedder, tmp_path: Path) -> None:
    inputs = [embedder.build_input(it) for it in _items(tmp_path)]
    singles = np.stack([embedder.embed_inputs([x])[0] for x in inputs])
    assert np.allclose(np.linalg.norm(singles, axis=1), 1.0, atol=1e-5)
    for side in ("left", "right"):
        embedder.config.padding_side = side
        batched = embedder.embed_inputs(inputs)
        assert np.abs(batched - singles).max() < 1e-5, side
        # a different batch composition and order gives the same vector per item
        mixed = embedder.embed_inputs([inputs[4], inputs[0], inputs[2]])
        assert np.abs(mixed - singles[[4, 0, 2]]).max() < 1e-5, side
    embedder.config.padding_side = "left"
    assert len({tuple(np.round(v, 4)) for v in singles}) == len(singles)  # different items, different vectors


def test_pooling_is_after_the_final_norm(embedder: Embedder, tmp_path: Path) -> None:
    """Reference: the last decoder layer's output (pre-norm), through the model's final RMSNorm, at the last
    <emb>. Guards the VLM2Vec PR #213 trap of pooling the pre-norm state."""
    inputs = [embedder.build_input(it) for it in _items(tmp_path)[:3]]
    batch = embedder.collate(inputs)
    captured = {}
    last_layer = language_model(embedder.model).layers[-1]
    hook = last_layer.register_forward_hook(
        lambda m, a, out: captured.__setitem__("pre", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            full = embedder.model(**batch, output_hidden_states=True)
    finally:
        hook.remove()
    pre = captured["pre"]
    with torch.no_grad():
        normed = final_norm(embedder.model)(pre)
    rows = torch.arange(pre.shape[0])
    pos = emb_positions(batch["input_ids"], batch["attention_mask"], embedder.emb_token_id)
    assert (batch["input_ids"][rows, pos] == embedder.emb_token_id).all()
    reference = torch.nn.functional.normalize(normed[rows, pos].float(), dim=-1).numpy()
    ours = embedder.embed_inputs(inputs)
    assert np.abs(ours - reference).max() < 1e-5
    # hidden_states[-1] from output_hidden_states agrees with the post-norm state in this transformers
    assert torch.allclose(full.hidden_states[-1], normed, atol=1e-5)
    pre_pooled = torch.nn.functional.normalize(pre[rows, pos].float(), dim=-1).numpy()
    assert np.abs(ours - pre_pooled).max() > 1e-3  # pooling before the norm would be a different vector


def test_emb_positions_last_occurrence_and_fallback() -> None:
    ids = torch.tensor([[0, 7, 5, 7, 1], [0, 0, 5, 5, 9], [7, 3, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert emb_positions(ids, mask, 7).tolist() == [3, 4, 0]


def test_save_reload_identical(embedder: Embedder, tmp_path: Path) -> None:
    inputs = [embedder.build_input(it) for it in _items(tmp_path)]
    before = embedder.embed_inputs(inputs)
    out = embedder.save_pretrained(tmp_path / "saved")
    again = Embedder.from_pretrained(out)
    assert again.emb_token_id == embedder.emb_token_id
    assert np.array_equal(again.embed_inputs([again.build_input(it) for it in _items(tmp_path)]), before)


def test_emb_token_read_from_official_config(tiny_factory, tmp_path: Path) -> None:
    """Official Embed-RL checkpoints name the pooling token through config.emb_token_ids."""
    base = tiny_factory("qwen3-vl", "base")
    plain = Embedder.from_pretrained(base)  # adds <emb>: it is missing from a plain model
    added_id = plain.emb_token_id
    assert plain.tokenizer.convert_ids_to_tokens(added_id) == "<emb>"
    assert added_id < plain.model.get_input_embeddings().weight.shape[0]  # landed on a spare padded row
    plain.save_pretrained(tmp_path / "official")
    (tmp_path / "official" / "embedrl_embedder.json").unlink()  # as released: emb_token_ids, no embedrl file
    reloaded = Embedder.from_pretrained(tmp_path / "official")
    assert reloaded.emb_token_id == added_id and len(reloaded.tokenizer) == len(plain.tokenizer)
    assert reloaded.config.image_max_pixels == 768 * 32 * 32  # the paper's vision bounds for official weights
    assert (
        Embedder.from_pretrained(base).config.image_max_pixels is None
    )  # a plain model keeps its processor's


def test_lora_target_modules_and_vision_switch(embedder: Embedder) -> None:
    with_vision = lora_target_modules(embedder.model, include_vision=True)
    without = lora_target_modules(embedder.model, include_vision=False)
    assert any(".visual." in n for n in with_vision)
    assert not any(".visual." in n for n in without)
    assert not any("lm_head" in n for n in with_vision)
    assert set(without) < set(with_vision)
    assert any(n.endswith("self_attn.q_proj") for n in without)


def test_lora_save_load_merge(tiny_qwen3_embedder: Path, tmp_path: Path) -> None:
    emb = Embedder.from_pretrained(tiny_qwen3_embedder)
    emb.add_lora(LoraSettings.preset("tiny"))
    # give the adapter non-zero weights so that it changes the output
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in emb.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    inputs = [emb.build_input(it) for it in _items(tmp_path)[:3]]
    with_adapter = emb.embed_inputs(inputs)
    base = Embedder.from_pretrained(tiny_qwen3_embedder).embed_inputs(inputs)
    assert np.abs(with_adapter - base).max() > 1e-3
    emb.model.save_pretrained(tmp_path / "adapter")
    loaded = Embedder.from_pretrained(tiny_qwen3_embedder, adapter=tmp_path / "adapter")
    assert np.abs(loaded.embed_inputs(inputs) - with_adapter).max() < 1e-5
    merged_dir = emb.save_pretrained(tmp_path / "merged")  # merges a copy
    merged = Embedder.from_pretrained(merged_dir)
    assert not hasattr(merged.model, "peft_config")
    assert np.abs(merged.embed_inputs(inputs) - with_adapter).max() < 1e-4
    assert hasattr(emb.model, "peft_config")  # the in-memory model keeps its adapter


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_each_family_embeds_image_text_and_frames(tiny_factory, family: str, tmp_path: Path) -> None:
    emb = Embedder.from_pretrained(tiny_factory(family, "embedder"))
    assert emb.family.name == family
    items = _items(tmp_path)
    vectors = emb.embed_inputs([emb.build_input(items[i]) for i in (0, 1, 4)])
    assert vectors.shape == (3, emb.dim) and np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    frames_input = emb.build_input(items[4])
    assert len(frames_input.images) == 5  # 5 frames (< 8 requested) fed as five images


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_make_tiny_is_deterministic(tmp_path: Path) -> None:
    a = make_tiny("qwen2-vl", tmp_path / "a", seed=3)
    b = make_tiny("qwen2-vl", tmp_path / "b", seed=3)
    c = make_tiny("qwen2-vl", tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "preprocessor_config.json"):
        assert _file_hash(a / name) == _file_hash(b / name), name
    assert _file_hash(a / "model.safetensors") != _file_hash(c / "model.safetensors")


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_linear_patch_embedding_equals_the_convolution(tiny_factory, family: str) -> None:
    import copy
    import pickle

    import transformers

    from embedrl.models.families import FAMILIES
    from embedrl.models.speedups import use_linear_patch_embedding

    path = tiny_factory(family, "base")
    model = getattr(transformers, FAMILIES[family].model_class).from_pretrained(path).eval()
    patch_embed = model.model.visual.patch_embed
    pixels = torch.randn(40, patch_embed.proj.weight[0].numel())
    stock_keys = list(model.state_dict())
    with torch.no_grad():
        reference = patch_embed(pixels)
        assert use_linear_patch_embedding(model) == 1
        fast = patch_embed(pixels)
        copied = copy.deepcopy(model).model.visual.patch_embed(
            pixels
        )  # survives the copy save_pretrained makes
        unpickled = pickle.loads(pickle.dumps(model)).model.visual.patch_embed(
            pixels
        )  # torch.save(model) works
        assert use_linear_patch_embedding(model) == 0  # already switched
    assert torch.allclose(fast, reference, atol=1e-5)
    assert torch.allclose(copied, reference, atol=1e-5)
    assert torch.equal(unpickled, fast)
    assert set(model.state_dict()) == set(
        stock_keys
    )  # same parameter names: checkpoints and LoRA targets unchanged


def test_an_adapter_only_folder_loads_like_base_plus_adapter(tiny_qwen3_embedder, tmp_path) -> None:
    from embedrl.data.items import Item
    from embedrl.models.embedder import Embedder, LoraSettings

    tuned = Embedder.from_pretrained(tiny_qwen3_embedder)
    tuned.add_lora(LoraSettings.preset("tiny"))
    with torch.no_grad():
        for name, param in tuned.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    folder = tuned.save_pretrained(tmp_path / "adapter-only", merge=False)
    assert not (folder / "config.json").exists()
    items = [Item(id="a", text="a red circle")]
    direct = Embedder.from_pretrained(folder)
    explicit = Embedder.from_pretrained(tiny_qwen3_embedder, adapter=folder)
    base = Embedder.from_pretrained(tiny_qwen3_embedder)
    embed = lambda e: e.embed_inputs([e.build_input(it) for it in items])  # noqa: E731
    assert np.array_equal(embed(direct), embed(explicit))
    assert np.abs(embed(direct) - embed(base)).max() > 1e-3  # the adapter really is applied
    assert direct.adapters == [str(folder)]


def test_an_adapter_names_its_base_so_that_it_loads_from_anywhere(
    tiny_qwen3_embedder, tmp_path, monkeypatch
) -> None:
    import json

    from embedrl.models.embedder import Embedder, LoraSettings

    monkeypatch.chdir(tiny_qwen3_embedder.parent)
    tuned = Embedder.from_pretrained(tiny_qwen3_embedder.name)  # a path relative to the working directory
    tuned.add_lora(LoraSettings.preset("tiny"))
    folder = tuned.save_pretrained(tmp_path / "adapter-only", merge=False)
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_qwen3_embedder.resolve())
    monkeypatch.chdir(tmp_path)
    assert Embedder.from_pretrained(folder).adapters == [str(folder)]


def test_a_missing_local_checkpoint_is_named_as_such(tmp_path) -> None:
    from embedrl.errors import ModelError
    from embedrl.models.backbone import read_config

    with pytest.raises(ModelError, match="no such checkpoint folder"):
        read_config(tmp_path / "typo")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="a file, not a checkpoint folder"):
        read_config(tmp_path / "file")


def test_a_leading_tilde_is_the_home_folder(tiny_qwen3_embedder, monkeypatch) -> None:
    from embedrl.models.backbone import read_config

    monkeypatch.setenv("HOME", str(tiny_qwen3_embedder.parent))
    assert (
        read_config(f"~/{tiny_qwen3_embedder.name}")["model_type"]
        == read_config(tiny_qwen3_embedder)["model_type"]
    )
