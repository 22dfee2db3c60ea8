"""The Embedder: a Qwen-VL model that reads an item plus its T-CoT and pools one vector at `<emb>`.

The input layout (the official Embed-RL evaluation's, token for token) is built by
`embedrl.models.embedder_input.build_input`; `encode()` (pipeline.py), stage-1 training and the EG-RL reward all
go through `Embedder.build_input` and `Embedder.collate`, so the three cannot disagree.

The embedding is the last-layer hidden state *after the final norm* at the last `<emb>` token, L2-normalised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.items import Item
from ..errors import ConfigError, ModelError
from .backbone import (
    LoadOptions,
    checkpoint_path,
    detect_family,
    language_model,
    load_model,
    load_processor,
    save_processor,
)
from .embedder_input import (  # noqa: F401 - the input names are part of this module's API
    EMB_TOKEN,
    EMBEDDER_CONFIG_FILE,
    INPUT_LAYOUT,
    SUMMARY_PROMPT,
    EmbedderConfig,
    EmbedderInput,
    ImagePlacement,
    VisionBounds,
    build_input,
    item_text,
    load_item_media,
)
from .families import Family
from .speedups import image_rope_positions

log = logging.getLogger(__name__)


@dataclass
class LoraSettings:
    """LoRA on every Linear inside the backbone, as in the released code; the vision tower is an explicit
    choice."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    include_vision: bool = True
    target_modules: list[str] | None = None  # None: every nn.Linear under `model.`, lm_head excluded

    @classmethod
    def preset(cls, name: str) -> LoraSettings:
        presets = {"2b": cls(r=64, alpha=128), "4b": cls(r=96, alpha=192), "tiny": cls(r=8, alpha=16)}
        try:
            return presets[name.lower()]
        except KeyError:
            raise ConfigError(f"unknown LoRA preset {name!r}; choose {', '.join(presets)}") from None


def lora_target_modules(model: torch.nn.Module, include_vision: bool) -> list[str]:
    """Names of the Linear layers that get LoRA: all under `model.` except lm_head (and the vision tower
    unless `include_vision`). The official code's freeze switch matched nothing on Qwen3-VL; ours is tested."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "lm_head" in name or "model" not in name:
            continue
        if not include_vision and ".visual." in f".{name}.":
            continue
        names.append(name)
    return names


class Embedder:
    """A Qwen-VL backbone with `<emb>` pooling. Use `Embedder.from_pretrained(path)`."""

    def __init__(
        self,
        model,
        processor,
        family: Family,
        config: EmbedderConfig | None = None,
        emb_token_id: int | None = None,
    ):
        self.model = model
        self.processor = processor
        self.family = family
        self.config = config or EmbedderConfig()
        self.config.validate()
        self.tokenizer = processor.tokenizer
        self.emb_token_id = emb_token_id if emb_token_id is not None else self._ensure_emb_token()
        self.name_or_path: str | None = None
        # What the vector cache keys on: the folder, the LoRA folders loaded on top, and whether the weights
        # have been changed in memory since (then the parameters themselves are hashed).
        self.adapters: list[str] = []
        self.changed_in_memory = False

    # ----------------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        options: LoadOptions | None = None,
        config: EmbedderConfig | None = None,
        adapter: str | Path | None = None,
    ) -> Embedder:
        """Load an Embedder from a checkpoint: an official Embed-RL one (`emb_token_ids` in its config), one
        saved by embedrl, or a plain Qwen-VL model (then `<emb>` is added). `adapter`: a LoRA folder."""
        options = options or LoadOptions()
        path = checkpoint_path(path)
        folder = Path(path)
        if (
            adapter is None
            and (folder / "adapter_config.json").is_file()
            and not (folder / "config.json").is_file()
        ):
            # An adapter-only folder (`save_pretrained(merge=False)`, stage 1 with merge_lora off): load the base
            # model it names, then the adapter, with the settings saved beside the adapter.
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise ModelError(
                    f"{path}: a LoRA adapter that does not name its base model; load it with "
                    "Embedder.from_pretrained(BASE, adapter=...)"
                )
            if config is None and (folder / EMBEDDER_CONFIG_FILE).is_file():
                config = EmbedderConfig.load(folder)
            return cls.from_pretrained(base, options, config=config, adapter=folder)
        family = detect_family(path)
        processor = load_processor(path, family, options)
        model = load_model(path, family, options)
        emb_id = _emb_id_from_config(model.config)
        if config is None:
            saved = Path(path) / EMBEDDER_CONFIG_FILE
            # An official Embed-RL checkpoint (emb_token_ids, no embedrl settings) gets the paper's vision bounds.
            config = (
                EmbedderConfig.load(path) if saved.is_file() or emb_id is None else EmbedderConfig.official()
            )
        embedder = cls(model, processor, family, config, emb_id)
        embedder.name_or_path = str(path)
        if adapter is not None:
            embedder.load_adapter(adapter)
        return embedder

    def _ensure_emb_token(self) -> int:
        token = self.config.emb_token
        ids = self.tokenizer.convert_tokens_to_ids([token])
        unk = self.tokenizer.unk_token_id
        if (
            ids
            and ids[0] is not None
            and ids[0] != unk
            and self.tokenizer.convert_ids_to_tokens(ids[0]) == token
        ):
            emb_id = ids[0]
        else:
            self.tokenizer.add_tokens([token], special_tokens=True)
            emb_id = self.tokenizer.convert_tokens_to_ids(token)
            rows = self.model.get_input_embeddings().weight.shape[0]
            if len(self.tokenizer) > rows:
                # Qwen pads its vocabulary, so this only happens for unusual checkpoints.
                self.model.resize_token_embeddings(len(self.tokenizer))
            log.info("added %s to the tokenizer as id %d", token, emb_id)
        self.model.config.emb_token_ids = [int(emb_id)]
        return int(emb_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return int(language_model(self.model).norm.weight.shape[0])

    # -------------------------------------------------------------------------------------------- LoRA

    def add_lora(self, settings: LoraSettings) -> None:
        from peft import LoraConfig, get_peft_model

        targets = settings.target_modules or lora_target_modules(self.model, settings.include_vision)
        if not targets:
            raise ConfigError("no Linear layers matched for LoRA")
        lora = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(self.model, lora)
        self.changed_in_memory = True

    def load_adapter(self, path: str | Path, trainable: bool = False) -> None:
        from peft import PeftModel

        try:
            self.model = PeftModel.from_pretrained(self.model, str(path), is_trainable=trainable)
        except Exception as exc:
            raise ModelError(f"{path}: cannot load LoRA adapter: {exc}") from None
        self.adapters.append(str(path))
        self.changed_in_memory = self.changed_in_memory or trainable
        if not trainable:
            self.model.eval()

    def merge_lora(self) -> None:
        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()

    def save_pretrained(self, out_dir: str | Path, merge: bool = True) -> Path:
        """Save a complete checkpoint (LoRA merged by default) or, with merge=False, only the adapter."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload") and merge:
            # Merge a copy so that the in-memory model keeps training with its adapter.
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.config.emb_token_ids = [int(self.emb_token_id)]
        model.save_pretrained(out)
        save_processor(self.processor, out)
        self.config.save(out)
        return out

    # ------------------------------------------------------------------------------------------ inputs

    def truncate_text(self, text: str) -> str:
        limit = self.config.max_text_tokens
        if limit is None:
            return text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit])

    @property
    def vision_bounds(self) -> VisionBounds:
        """Pixel bounds per image role and the size factor (the config's, or the processor's own)."""
        return VisionBounds.resolve(self.config, self.processor)

    def build_input(self, item: Item, tcot: Any = None, media=None) -> EmbedderInput:
        return build_input(
            item, self.config, self.vision_bounds, tcot, media=media, truncate=self.truncate_text
        )

    def collate(
        self, inputs: Sequence[EmbedderInput], padding_side: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenise and pad a batch; images are flattened in placeholder order."""
        texts = self.processor.apply_chat_template(
            [inp.messages for inp in inputs], tokenize=False, add_generation_prompt=False
        )
        images = [img for inp in inputs for img in inp.images]
        videos = [v for inp in inputs for v in inp.videos]
        side = padding_side or self.config.padding_side
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = side
        try:
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if images:
                kwargs["images"] = images
                # build_input already resized every image within its own bounds to a multiple of the factor;
                # bounds that contain every area make the processor's resize leave them as they are.
                areas = [img.width * img.height for img in images]
                size = dict(self.processor.image_processor.size)
                size["shortest_edge"], size["longest_edge"] = min(areas), max(areas)
                kwargs["images_kwargs"] = {"size": size}
            if videos:
                kwargs["videos"] = videos
            batch = self.processor(**kwargs)
        finally:
            self.tokenizer.padding_side = old_side
        return dict(batch)

    # ---------------------------------------------------------------------------------------- forward

    def forward_batch(self, batch: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        """Pooled embeddings of a collated batch, with gradients if enabled by the caller."""
        return pooled_embeddings(self.model, batch, self.emb_token_id, normalize)

    def embed_inputs(self, inputs: Sequence[EmbedderInput]) -> np.ndarray:
        return self.embed_collated(self.collate(inputs))

    @torch.inference_mode()
    def embed_collated(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """Vectors of an already collated batch (lets callers tokenise the next batch meanwhile)."""
        if self.model.training:  # eval() walks every module: not on each call of a per-item loop
            self.model.eval()
        return self.forward_batch(batch).cpu().numpy()

    def embed(
        self, items: Sequence[Item], tcots: Sequence[Any] | None = None, batch_size: int = 8
    ) -> np.ndarray:
        """Vectors of items with optional T-CoTs (str / TCoT / None per item), batch by batch: no reasoning, no
        caches, no deduplication. `embedrl.pipeline.encode` is the full path; both build the same input."""
        tcots = list(tcots) if tcots is not None else [None] * len(items)
        if len(tcots) != len(items):
            raise ConfigError(f"got {len(tcots)} T-CoTs for {len(items)} items")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        parts = [
            self.embed_inputs(
                [
                    self.build_input(it, t)
                    for it, t in zip(items[i : i + batch_size], tcots[i : i + batch_size])
                ]
            )
            for i in range(0, len(items), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)


def pooled_embeddings(
    model: torch.nn.Module, batch: dict[str, Any], emb_token_id: int, normalize: bool = True
) -> torch.Tensor:
    """Hidden state after the final norm at the last `<emb>` of each row (float32, L2-normalised)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # `base.model` is the multimodal backbone without lm_head: its last_hidden_state is already normed,
    # and skipping lm_head avoids a (tokens x vocabulary) logits tensor.
    if "position_ids" not in batch:
        merge = getattr(getattr(base.config, "vision_config", None), "spatial_merge_size", None)
        positions = image_rope_positions(batch, merge) if merge else None
        if positions is not None:
            batch["position_ids"] = positions
    out = base.model(**batch, use_cache=False)
    hidden = out.last_hidden_state
    positions = emb_positions(batch["input_ids"], batch.get("attention_mask"), emb_token_id)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions].float()
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def emb_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, emb_id: int) -> torch.Tensor:
    """Index of the last `<emb>` per row; rows without one fall back to their last real token."""
    seq = input_ids.shape[1]
    idx = torch.arange(seq, device=input_ids.device).expand_as(input_ids)
    is_emb = input_ids == emb_id
    last_emb = torch.where(is_emb, idx, torch.full_like(idx, -1)).max(dim=1).values
    if attention_mask is not None:
        last_real = torch.where(attention_mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values
    else:
        last_real = torch.full_like(last_emb, seq - 1)
    missing = last_emb < 0
    if bool(missing.any()):
        log.warning(
            "%d input(s) have no <emb> token (truncated?); pooling at the last token", int(missing.sum())
        )
    return torch.where(missing, last_real, last_emb)


def is_embedder_checkpoint(path: str | Path) -> bool:
    """A folder saved by embedrl (`embedrl_embedder.json`) or an official Embed-RL checkpoint (`emb_token_ids`
    in config.json); a plain Qwen-VL folder is neither: its `<emb>` pooling has never been trained."""
    folder = Path(path)
    if (folder / EMBEDDER_CONFIG_FILE).is_file():
        return True
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(raw.get("emb_token_ids") or (raw.get("text_config") or {}).get("emb_token_ids"))


def _emb_id_from_config(config: Any) -> int | None:
    ids = getattr(config, "emb_token_ids", None)
    if ids is None and hasattr(config, "text_config"):
        ids = getattr(config.text_config, "emb_token_ids", None)
    if ids is None:
        return None
    if isinstance(ids, (list, tuple)):
        return int(ids[0]) if ids else None
    return int(ids)
