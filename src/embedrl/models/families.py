"""The Qwen-VL families embedrl supports, and what differs between them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str  # CLI name: qwen3-vl
    model_type: str  # config.model_type: qwen3_vl
    model_class: str  # transformers class name
    processor_class: str
    patch_size: int  # vision patch size; one merged visual token covers (patch*merge)^2 px


FAMILIES: dict[str, Family] = {
    "qwen2-vl": Family("qwen2-vl", "qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", 14),
    "qwen2.5-vl": Family(
        "qwen2.5-vl", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", 14
    ),
    "qwen3-vl": Family("qwen3-vl", "qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", 16),
}
BY_MODEL_TYPE = {f.model_type: f for f in FAMILIES.values()}


def family_for_model_type(model_type: str) -> Family:
    from ..errors import ModelError

    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        supported = ", ".join(sorted(BY_MODEL_TYPE))
        raise ModelError(
            f"model_type {model_type!r} is not a supported Qwen-VL family ({supported})"
        ) from None


def family_by_name(name: str) -> Family:
    from ..errors import ConfigError

    key = name.lower().replace("_", "-")
    if key == "qwen25-vl":
        key = "qwen2.5-vl"
    try:
        return FAMILIES[key]
    except KeyError:
        raise ConfigError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}") from None
