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
from .speedups import use_fast_paths

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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
        raise ModelError(
            f"{path}: cannot read the model config ({exc}). Give a local checkpoint folder, "
            "or make the hub reachable."
        ) from None


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
        return self.image_token * (t * h * w // self.image_processor.merge_size**2)


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
    pixel_kwargs = {
        k: v
        for k, v in (("min_pixels", options.min_pixels), ("max_pixels", options.max_pixels))
        if v is not None
    }
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


def image_only_processor(
    family: Family, tokenizer: Any, image_processor: Any, chat_template: str | None = None
):
    """The family's processor class assembled from a tokenizer and an image processor, without video processor."""
    cls = _image_only_processor_class(family)
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=chat_template or tokenizer.chat_template,
    )


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
