"""Offline tiny Qwen-VL checkpoints: real transformers classes, random weights, a tokenizer trained on the spot.

Nothing is downloaded. The result is an ordinary checkpoint folder (config.json, model.safetensors,
tokenizer files, chat_template.jinja, preprocessor_config.json) that `models.backbone.load_backbone` reads
exactly like a real Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint. Building is deterministic given the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from .families import FAMILIES, Family, family_by_name

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen3 adds the think tags as ordinary (non-special) added tokens; so do we.
ADDED_TOKENS = ["<think>", "</think>"]

# The Qwen3-VL-Instruct layout, reduced to what embedrl uses: no default system prompt, images and videos
# rendered as vision placeholders inside the user turn, plain-text assistant turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'video' or 'video' in item %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Written last: a folder holding it is a finished make_tiny build, which `models make-tiny` may replace.
MARKER = "embedrl_tiny.json"


@dataclass(frozen=True)
class TinySize:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vocab_size: int = 4096
    max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        # A size of 0 or less either fails deep inside transformers or, worse, builds a model without layers
        # that gives every input the same vector.
        for name, value in self.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"tiny model size {name} must be a positive integer, got {value!r}")
        # rotary embeddings rotate pairs of dimensions, so each head's width must be even
        for hidden, heads, what in (
            (self.hidden_size, self.num_heads, "hidden_size"),
            (self.vision_hidden, self.vision_heads, "vision_hidden"),
        ):
            if hidden % (2 * heads):
                raise ConfigError(
                    f"tiny model {what} must be a multiple of {2 * heads} (2 x {heads} heads), got {hidden}"
                )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"tiny model num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )


# ------------------------------------------------------------------------------------------ tokenizer


_WORDS = (
    "a an the of in on at to with and or is are was be this that these those it its there which what where "
    "when who how find retrieve represent given image video clip frame frames document page text caption "
    "question answer query candidate describe description summary summarize above content one word "
    "red green blue yellow orange purple black white gray brown pink cyan small large big tiny huge "
    "circle square triangle star cross ring bar dot box shape object objects scene left right top bottom "
    "center middle corner moving moves static fast slow up down across towards away from first last "
    "person man woman child dog cat car bus bird horse tree house street table chair cup book phone "
    "red-colored picture photo drawing chart plot table diagram slide screenshot news article wikipedia "
    "classification retrieval grounding select identify recognize category label action activity sport "
    "keywords key evidence step reasoning focus relevant important detail details region regions area "
    "thinking rethink answer bbox_2d key_frames text_keywords sampled fps seconds time temporal spatial "
    "visual reasoning assistant concise grounded rephrase meaning emit json format tags stage stages "
    "shows contains includes appears depicts near next behind over under inside outside between two three "
    "four five six seven eight nine ten many several some all none both each every other same different"
).split()


def _corpus(seed: int, num_sentences: int = 6000) -> list[str]:
    """Deterministic training text for the BPE: caption-like sentences, T-CoT shapes, numbers and JSON."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_sentences):
        n = rng.randint(4, 16)
        words = [rng.choice(_WORDS) for _ in range(n)]
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", ":", "!"])
        lines.append(sentence)
        kind = rng.random()
        if kind < 0.15:
            box = sorted(rng.sample(range(1001), 2)) + sorted(rng.sample(range(1001), 2))
            lines.append(
                f'<thinking>{sentence} {{"bbox_2d": [[{box[0]}, {box[2]}, {box[1]}, {box[3]}]]}}'
                f"</thinking><rethink>{sentence}</rethink><answer>{sentence}</answer>"
            )
        elif kind < 0.3:
            frames = sorted(rng.sample(range(1, 9), rng.randint(1, 4)))
            lines.append(
                f'<thinking>{sentence} {{"key_frames": {frames}}}</thinking>'
                f"<rethink>{sentence}</rethink><answer>{sentence}</answer>"
            )
        elif kind < 0.45:
            kws = json.dumps(rng.sample(_WORDS, 3))
            lines.append(
                f'<thinking>{sentence} {{"text_keywords": {kws}}}</thinking>'
                f"<rethink>{sentence}</rethink><answer>{sentence}</answer>"
            )
        elif kind < 0.55:
            lines.append(" ".join(str(rng.randint(0, 1000)) for _ in range(8)))
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 4096):
    """A byte-level BPE tokenizer with the Qwen special tokens, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(ADDED_TOKENS),
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens(ADDED_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ----------------------------------------------------------------------------------------------- config


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def build_config(family: Family, tokenizer, size: TinySize):
    """A small config of the family's real config class, with token ids taken from `tokenizer`."""
    import transformers

    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    # Qwen pads its vocabulary to a multiple of 128, leaving spare rows; an added <emb> lands on one of them.
    vocab = _round_up(len(tokenizer) + 1, 128)
    head_dim = size.hidden_size // size.num_heads  # even: TinySize checks it
    half = head_dim // 2
    # M-RoPE splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = {
        "vocab_size": vocab,
        "hidden_size": size.hidden_size,
        "intermediate_size": size.intermediate_size,
        "num_hidden_layers": size.num_layers,
        "num_attention_heads": size.num_heads,
        "num_key_value_heads": size.num_kv_heads,
        "max_position_embeddings": size.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }
    if family.model_type == "qwen3_vl":
        text.update(
            head_dim=head_dim,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope,
                "mrope_interleaved": True,
            },
        )
        vision = {
            "depth": size.vision_depth,
            "hidden_size": size.vision_hidden,
            "intermediate_size": 2 * size.vision_hidden,
            "num_heads": size.vision_heads,
            "patch_size": family.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": size.hidden_size,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        }
        return transformers.Qwen3VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=True, **ids
        )
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}
    text.update(rope_parameters=rope)
    if family.model_type == "qwen2_vl":
        vision = {
            "depth": size.vision_depth,
            "embed_dim": size.vision_hidden,
            "hidden_size": size.hidden_size,
            "mlp_ratio": 2,
            "num_heads": size.vision_heads,
            "patch_size": family.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        return transformers.Qwen2VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=True, **ids
        )
    vision = {
        "depth": size.vision_depth,
        "hidden_size": size.vision_hidden,
        "intermediate_size": 2 * size.vision_hidden,
        "num_heads": size.vision_heads,
        "patch_size": family.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": size.hidden_size,
        "window_size": family.patch_size * 2 * 4,
        "fullatt_block_indexes": [size.vision_depth - 1],
        "tokens_per_second": 2,
    }
    return transformers.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True, **ids
    )


def build_image_processor(family: Family, min_pixels: int | None = None, max_pixels: int | None = None):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    factor = family.patch_size * 2
    return Qwen2VLImageProcessorPil(
        patch_size=family.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=min_pixels or 4 * factor * factor,  # at least 4 merged tokens
        max_pixels=max_pixels or 16 * factor * factor,  # at most 16: tiny models, fast tests
    )


# ------------------------------------------------------------------------------------------------- build


@torch.no_grad()
def _randomise_norm_scales(model: torch.nn.Module) -> None:
    """Fresh norms have unit scales, which makes a norm invisible after L2 normalisation. Trained models
    have uneven scales; so do ours, so that tests can tell pre-norm from post-norm pooling."""
    for name, param in model.named_parameters():
        if "norm" in name and name.endswith("weight") and param.dim() == 1:
            param.copy_(1.0 + 0.3 * torch.randn_like(param))


def make_tiny(
    family: str | Family,
    out_dir: str | Path,
    *,
    seed: int = 0,
    size: TinySize | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Build and save a tiny random checkpoint of `family` in `out_dir`; return the folder."""
    import transformers

    fam = family if isinstance(family, Family) else family_by_name(family)
    size = size or TinySize()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed=seed, vocab_size=size.vocab_size)
    config = build_config(fam, tokenizer, size)
    torch.manual_seed(seed)
    model_cls = getattr(transformers, fam.model_class)
    model = model_cls(config).eval()
    _randomise_norm_scales(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    build_image_processor(fam, min_pixels, max_pixels).save_pretrained(out)
    (out / MARKER).write_text(
        json.dumps(
            {
                "family": fam.name,
                "seed": seed,
                "size": size.__dict__,
                "note": "random weights; tests and demos only",
            },
            indent=2,
        )
    )
    return out


__all__ = ["FAMILIES", "MARKER", "TinySize", "build_tokenizer", "make_tiny"]
