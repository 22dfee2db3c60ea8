"""Load Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints (local folder or hub id) through the real classes.

The processor works with or without torchvision. transformers refuses to build any Qwen-VL processor when
torchvision is missing (its video processor needs it), so without torchvision we build the family's own
processor class from its parts with the video processor left out; video frames then go in as images.
With torchvision importable, `AutoProcessor` and the native video path are used. This is detected, not
configured (`torchvision_available()`).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .families import Family, family_for_model_type

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadOptions:
    """How to place a model: dtype ('auto' = bf16 on a GPU that supports it, else float32), device
    ('auto' = cuda if available), attention implementation (None = transformers' default, e.g. 'sdpa')."""

    dtype: str = "auto"
    device: str = "auto"
    attn_implementation: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return torch.float32
        try:
            return DTYPES[self.dtype]
        except KeyError:
            raise ModelError(f"unknown dtype {self.dtype!r}; choose auto, {', '.join(DTYPES)}") from None

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@functools.lru_cache(maxsize=1)
def torchvision_available() -> bool:
    """True only if torchvision really imports (a CPU torch beside a CUDA torchvision fails at import)."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        return False
    return True


def checkpoint_path(path: str | Path) -> str | Path:
    """`path` with a leading `~` expanded (a shell leaves `--embedder=~/ckpt` as it is); hub ids unchanged."""
    return Path(path).expanduser() if str(path).startswith("~") else path


def read_config(path: str | Path) -> dict:
    """config.json of a local folder or hub id (the latter needs a network or a filled HF cache)."""
    path = checkpoint_path(path)
    local = Path(path)
    if local.is_dir():
        cfg_file = local / "config.json"
        if not cfg_file.is_file():
            raise ModelError(f"{local}: not a checkpoint folder (no config.json)")
        try:
            return json.loads(cfg_file.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{cfg_file}: not valid JSON ({exc})") from None
    text = str(path)
    if local.exists():
        raise ModelError(f"{path}: a file, not a checkpoint folder")
    if text.startswith(("/", "./", "../", "~")) or text.count("/") > 1:
        # a hub id is "name" or "org/name": anything else can only be a local path
        raise ModelError(f"{path}: no such checkpoint folder")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(path)).to_dict()
    except Exception as exc:
        raise ModelError(f"{path}: cannot read the model config ({exc}). Give a local checkpoint folder, "
                         "or make the hub reachable.") from None


def detect_family(path: str | Path) -> Family:
    return family_for_model_type(read_config(path).get("model_type", "<missing>"))


def flatten_images(images: Any) -> Any:
    """Per-prompt image lists -> one flat list in placeholder order; prompts without images (None or []) add
    nothing. Batches that mix image and text-only prompts (both sides of an EG-RL pair) need this."""
    if not isinstance(images, (list, tuple)):
        return images
    flat: list[Any] = []
    for entry in images:
        if entry is None:
            continue
        if isinstance(entry, (list, tuple)):
            flat.extend(e for e in entry if e is not None)
        else:
            flat.append(entry)
    return flat or None


class MixedBatchImagesMixin:
    """Accept per-prompt image lists with empty entries (TRL passes None for a text-only prompt); compute the
    modality token types of a whole batch at once and image placeholders without per-image tensor work."""

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        return super().__call__(images=flatten_images(images), text=text, videos=videos, **kwargs)

    def create_mm_token_type_ids(self, input_ids: Any) -> list[list[int]]:
        """The processor's own result (0 text, 1 image, 2 video, 3 audio per token, as nested lists), from three
        membership tests over the concatenated batch instead of three per row."""
        import numpy as np

        rows = [row.tolist() if hasattr(row, "tolist") else list(row) for row in input_ids]
        flat = np.array([token for row in rows for token in row], dtype=np.int64)
        types = np.zeros_like(flat)
        for type_id, ids in ((1, "image_token_ids"), (2, "video_token_ids"), (3, "audio_token_ids")):
            types[np.isin(flat, list(getattr(self, ids, None) or []))] = type_id
        bounds = np.cumsum([len(row) for row in rows])[:-1]
        return [part.tolist() for part in np.split(types, bounds)] if rows else []

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The Qwen-VL placeholder run of one image (one token per merged patch), read from the grid as Python
        ints: the families' version does three tensor operations per image."""
        t, h, w = image_inputs["image_grid_thw"][image_idx].tolist()
        return self.image_token * (t * h * w // self.image_processor.merge_size ** 2)


def _with_mixed_batches(processor: Any) -> Any:
    cls = type(processor)
    if not issubclass(cls, MixedBatchImagesMixin):
        processor.__class__ = type(cls.__name__, (MixedBatchImagesMixin, cls), {})
    return processor


def _image_only_processor_class(family: Family) -> type:
    import transformers

    base = getattr(transformers, family.processor_class)

    class ImageOnlyProcessor(MixedBatchImagesMixin, base):  # type: ignore[misc, valid-type]
        """The family processor without a video processor (no torchvision): frames go in as images."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnlyProcessor.__name__ = f"ImageOnly{family.processor_class}"
    return ImageOnlyProcessor


def load_processor(path: str | Path, family: Family | None = None, options: LoadOptions | None = None):
    """The checkpoint's processor: tokenizer + image processor (+ video processor with torchvision)."""
    from transformers import AutoTokenizer

    from .imageprep import FastQwen2VLImageProcessorPil

    options = options or LoadOptions()
    path = checkpoint_path(path)
    family = family or detect_family(path)
    pixel_kwargs = {k: v for k, v in (("min_pixels", options.min_pixels), ("max_pixels", options.max_pixels))
                    if v is not None}
    if torchvision_available():
        try:
            from transformers import AutoProcessor

            return _with_mixed_batches(AutoProcessor.from_pretrained(str(path), **pixel_kwargs))
        except Exception as exc:  # e.g. a tiny checkpoint without a video processor config
            log.warning("AutoProcessor failed for %s (%s); using the image-only processor", path, exc)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        image_processor = FastQwen2VLImageProcessorPil.from_pretrained(str(path), **pixel_kwargs)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load tokenizer / image processor: {exc}") from None
    chat_template = tokenizer.chat_template or _read_chat_template(Path(path))
    if chat_template is None:
        raise ModelError(f"{path}: no chat template (chat_template.jinja / chat_template.json) found")
    return image_only_processor(family, tokenizer, image_processor, chat_template)


def image_only_processor(family: Family, tokenizer: Any, image_processor: Any, chat_template: str | None = None):
    """The family's processor class assembled from a tokenizer and an image processor, without video processor."""
    cls = _image_only_processor_class(family)
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
               chat_template=chat_template or tokenizer.chat_template)


def _read_chat_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None


def save_processor(processor: Any, out_dir: str | Path) -> None:
    """Save tokenizer, image processor and chat template as separate files.

    `ProcessorMixin.save_pretrained` fails for a processor without a video processor; separate files load
    back through `load_processor` and through `AutoProcessor` in a torchvision environment alike.
    """
    out = Path(out_dir)
    processor.tokenizer.chat_template = processor.chat_template or processor.tokenizer.chat_template
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is not None:
        video_processor.save_pretrained(out)


def load_model(path: str | Path, family: Family | None = None, options: LoadOptions | None = None):
    """The `*ForConditionalGeneration` model of the family, in eval mode on the requested device."""
    import transformers

    options = options or LoadOptions()
    family = family or detect_family(path)
    cls = getattr(transformers, family.model_class)
    kwargs: dict[str, Any] = {"dtype": options.torch_dtype()}
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    # A local folder is loaded by its absolute path: the model remembers it, and a LoRA adapter saved from it
    # names that as its base, which must still resolve when the adapter is loaded from another directory.
    path = checkpoint_path(path)
    source = Path(path).resolve() if Path(path).is_dir() else path
    try:
        model = cls.from_pretrained(str(source), **kwargs)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load {family.model_class}: {exc}") from None
    use_fast_paths(model)
    return model.to(options.torch_device()).eval()


class PatchConv3dAsLinear(torch.nn.Conv3d):
    """A Qwen-VL patch-embedding convolution computed as one matrix product.

    The families embed each flattened (channel x temporal x patch x patch) patch with a Conv3d whose kernel equals
    its stride and the whole input: the same linear map, but the convolution kernels are several times slower
    than a matmul on CPU. Same parameters under the same names, same result up to float rounding. A module-level
    subclass (not a class made at run time), so a switched model still pickles.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if tuple(hidden_states.shape[2:]) != tuple(self.kernel_size):
            return super().forward(hidden_states)
        weight = self.weight.reshape(self.out_channels, -1)
        out = torch.nn.functional.linear(hidden_states.reshape(-1, weight.shape[1]), weight, self.bias)
        return out.view(out.shape[0], self.out_channels, 1, 1, 1)


def use_linear_patch_embedding(model: torch.nn.Module) -> int:
    """Switch every Qwen-VL patch-embedding convolution in `model` to `PatchConv3dAsLinear`; returns how many."""
    switched = 0
    for name, module in model.named_modules():
        proj = getattr(module, "proj", None)
        if not (name.endswith("patch_embed") and type(proj) is torch.nn.Conv3d):
            continue
        if (proj.kernel_size != proj.stride or proj.padding != (0, 0, 0) or proj.dilation != (1, 1, 1)
                or proj.groups != 1):
            continue
        proj.__class__ = PatchConv3dAsLinear
        switched += 1
    return switched


def use_fast_paths(model: torch.nn.Module) -> None:
    """Every speed-up of this module that computes what the stock model computes (each checks it applies)."""
    use_linear_patch_embedding(model)
    use_packed_vision_attention(model)
    use_cached_vision_positions(model)


# transformers hands the vision tower's packed sequence (all images of a batch, with cu_seqlens) to an attention
# function in one call only when the implementation's name contains "flash"; any other implementation gets one
# call per image. The name below is ours (registered through the public AttentionInterface), not flash-attn.
PACKED_VISION_ATTENTION = "embedrl_packed_sdpa_flash_varlen"


def _equal_length_runs(lengths: list[int]) -> list[tuple[int, int]]:
    """[(length, count)] for consecutive equal lengths: [4, 4, 9, 4] -> [(4, 2), (9, 1), (4, 1)]."""
    runs: list[tuple[int, int]] = []
    for length in lengths:
        if runs and runs[-1][0] == length:
            runs[-1] = (length, runs[-1][1] + 1)
        else:
            runs.append((length, 1))
    return runs


def packed_sdpa_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                          cu_seq_lens_q=None, cu_seq_lens_k=None, is_causal=False, **kwargs):
    """Attention over a packed (1, heads, total, dim) sequence of independent segments given by cu_seqlens.

    Consecutive segments of equal length (the images of a batch usually share a size) go through one batched
    `scaled_dot_product_attention` call instead of one call each. Returns (1, total, heads, dim) like the
    flash-attention functions. Anything else (a mask, unequal q/k segments) is handled by plain SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = (cu_seq_lens_q is not None and attention_mask is None and query.shape[0] == 1
              and query.shape == key.shape == value.shape
              and (cu_seq_lens_k is None or torch.equal(cu_seq_lens_q, cu_seq_lens_k)))
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, is_causal=is_causal)
    _, heads, _, dim = query.shape
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    outputs, start = [], 0
    for length, count in _equal_length_runs(lengths):
        span = slice(start, start + length * count)
        q, k, v = (t[0, :, span].unflatten(1, (count, length)).transpose(0, 1) for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                               is_causal=is_causal)
        outputs.append(out.transpose(1, 2).reshape(length * count, heads, dim))
        start += length * count
    return torch.cat(outputs).unsqueeze(0), None


def use_packed_vision_attention(model: torch.nn.Module) -> bool:
    """Run the vision tower's SDPA attention as `packed_sdpa_attention`; returns whether it was switched.

    Only an `sdpa` vision tower is switched: eager (e.g. for attention outputs) and real flash attention stay.
    Same math as one SDPA call per image; on CPU the per-image calls cost more than the attention itself.
    """
    from transformers import AttentionInterface

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vision_config = getattr(getattr(base, "config", None), "vision_config", None)
    if vision_config is None or vision_config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(PACKED_VISION_ATTENTION, packed_sdpa_attention)
    vision_config._attn_implementation = PACKED_VISION_ATTENTION
    return True


@functools.lru_cache(maxsize=512)
def _block_major_positions(height: int, width: int, merge: int) -> torch.Tensor:
    """(height * width, 2) (row, column) of each patch, merge blocks first: the vision rotary positions of one
    frame. Cached: read-only, shared by every image of that grid size."""
    # An explicit device: under a `torch.device("meta")` context (a dry run) the cache must not keep meta tensors.
    rows = torch.arange(height, device="cpu").view(height // merge, merge, 1, 1).expand(-1, -1, width // merge, merge)
    cols = torch.arange(width, device="cpu").view(1, 1, width // merge, merge).expand(height // merge, merge, -1, -1)
    return torch.stack([rows.transpose(1, 2).reshape(-1), cols.transpose(1, 2).reshape(-1)], dim=-1)


def vision_rotary_positions(grid_thw: torch.Tensor, spatial_merge_size: int) -> torch.Tensor:
    """(patches, 2) long: what transformers' `get_vision_position_ids` computes for the Qwen-VL vision towers,
    from one cached tensor per grid size instead of a meshgrid, reshape and stack per image."""
    parts = []
    for t, h, w in grid_thw.tolist():
        frame = _block_major_positions(h, w, spatial_merge_size)
        parts.append(frame.repeat(t, 1) if t > 1 else frame)
    return torch.cat(parts).to(grid_thw.device)


def _vision_positions_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
    if grid_thw is not None and kwargs.get("position_ids") is None:
        kwargs["position_ids"] = vision_rotary_positions(grid_thw, module.spatial_merge_size)
    return args, kwargs


def use_cached_vision_positions(model: torch.nn.Module) -> bool:
    """Give the vision tower its rotary positions precomputed (the towers accept them as `position_ids`).

    transformers builds them with several small tensor operations per image; for a batch of many small
    images or frames on a CPU that costs more than the tower's patch embedding. Returns whether it was hooked.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    visual = getattr(getattr(base, "model", base), "visual", None)
    if visual is None or not isinstance(getattr(visual, "spatial_merge_size", None), int):
        return False
    if not getattr(visual, "_embedrl_cached_positions", False):
        visual.register_forward_pre_hook(_vision_positions_hook, with_kwargs=True)
        visual._embedrl_cached_positions = True
    return True


def image_rope_positions(batch: dict[str, Any], spatial_merge_size: int) -> torch.Tensor | None:
    """Multimodal RoPE position ids (3, batch, length) for a batch whose visual inputs are all still images.

    The values the Qwen-VL models compute themselves (`get_rope_index`), without their per-row Python loop:
    a text token at running position c gets (c, c, c) and advances c by 1; an image of (h, w) merged patches
    starting at c gives patch (i, j) the position (c, c + i, c + j) and advances c by max(h, w). Padding gets 0.
    Returns None (the model computes positions itself) for text-only batches, video tokens or multi-frame grids.
    """
    input_ids, grids = batch.get("input_ids"), batch.get("image_grid_thw")
    token_types = batch.get("mm_token_type_ids")
    if input_ids is None or grids is None or token_types is None or batch.get("video_grid_thw") is not None:
        return None
    if bool((token_types > 1).any()) or bool((grids[:, 0] != 1).any()):
        return None
    mask = batch.get("attention_mask")
    valid = mask.bool() if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    is_image = (token_types == 1) & valid
    grid_h, grid_w = grids[:, 1] // spatial_merge_size, grids[:, 2] // spatial_merge_size
    counts = grid_h * grid_w
    if int(is_image.sum()) != int(counts.sum()):
        return None  # token/grid mismatch: let the model raise its own error
    # Image tokens in row-major order belong to the images in grid order (the model reads them the same way).
    image_of_token = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first_token = torch.cumsum(counts, 0) - counts
    within = torch.arange(int(counts.sum()), device=counts.device) - first_token[image_of_token]
    token_index = is_image.reshape(-1).nonzero().squeeze(1)
    advance = (valid & ~is_image).long()
    last = within == counts[image_of_token] - 1
    advance.view(-1)[token_index[last]] = torch.maximum(grid_h, grid_w)
    start = torch.cumsum(advance, dim=1) - advance
    positions = start.unsqueeze(0).repeat(3, 1, 1)
    width = grid_w[image_of_token]
    positions[1].view(-1)[token_index] += within // width
    positions[2].view(-1)[token_index] += within % width
    positions[:, ~valid] = 0
    return positions.to(input_ids.dtype)


def final_norm(model) -> torch.nn.Module:
    """The last RMSNorm of the language model: the embedding is read after it."""
    lm = language_model(model)
    return lm.norm


def language_model(model):
    """The decoder stack (`*TextModel`) of any supported family, through a PEFT wrapper too."""
    base = model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    inner = getattr(base, "model", base)
    lm = getattr(inner, "language_model", None)
    if lm is None:
        raise ModelError(f"{type(base).__name__}: no language_model found")
    return lm
