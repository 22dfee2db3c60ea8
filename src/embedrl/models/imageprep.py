"""Qwen-VL image preprocessing as one patch-order copy per image and one table lookup per batch, identical to
the transformers processor.

The PIL image processor of transformers (`Qwen2VLImageProcessorPil`, used by all three families when
torchvision is absent) handles each image with several full-image numpy passes: PIL -> array -> PIL for the
resize, a float64 rescale, a float32 normalise, then a patch transpose. On a small CPU this costs about as much
as a tiny model's forward pass.

`FastQwen2VLImageProcessorPil` produces the same `pixel_values` and `image_grid_thw`, bit for bit, for the
common input (RGB `PIL.Image`s): the resize is the same PIL call on the original image, and rescale + normalise
of a uint8 value depend only on (channel, value), so they become a 3 x 256 lookup table computed with exactly
the processor's float operations, applied after the uint8 pixels are moved into patch order. Anything else
(arrays, tensors, other modes, disabled steps) goes through the unchanged transformers path.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

# Keys the fast path understands; any other truthy option (e.g. a crop or pad request) takes the slow path.
_HANDLED = {
    "do_resize",
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "patch_size",
    "temporal_patch_size",
    "merge_size",
    "return_tensors",
    "do_convert_rgb",
    "data_format",
    "input_data_format",
    "device",
    "min_pixels",
    "max_pixels",
    "default_to_square",
    "disable_grouping",
}


def normalisation_table(rescale_factor: float, mean, std) -> np.ndarray:
    """(3, 256) float32: the processor's rescale-then-normalise of every uint8 value, per channel.

    Same operations and dtypes as `transformers.image_transforms.rescale` (float64 multiply, cast to float32)
    followed by `normalize` (float32 subtract and divide), so every entry equals the processor's result.
    """
    values = (np.arange(256, dtype=np.uint8).astype(np.float64) * rescale_factor).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32).reshape(-1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(-1, 1)
    return (values[None, :] - mean32) / std32


def patch_codes_into(codes: torch.Tensor, pixels: np.ndarray, patch: int, merge: int) -> None:
    """Write one (H, W, C) uint8 image into `codes` ((grid_h * grid_w) x C x patch^2, int32) in patch order.

    Rows run over merge blocks, then positions inside a block; each row holds channel, patch row, column: the
    processor's layout with the temporal axis left out (a still image repeats the same frame there).
    """
    height, width, channels = pixels.shape
    gh, gw = height // patch, width // patch
    grid = torch.from_numpy(pixels).view(gh // merge, merge, patch, gw // merge, merge, patch, channels)
    # One strided copy moves the bytes into patch order and widens them to lookup indices.
    codes.view(gh // merge, gw // merge, merge, merge, channels, patch, patch).copy_(
        grid.permute(0, 3, 1, 4, 6, 2, 5)
    )


def normalise_codes(codes: torch.Tensor, table: torch.Tensor, temporal: int) -> torch.Tensor:
    """(rows, C * temporal * patch^2) float32 pixel values of patch-ordered `codes` (rows, C, patch^2; int32
    byte values, changed in place into table indices).

    `table` is `normalisation_table` flattened; each channel's values are looked up in its own 256-entry row.
    Done once for a whole batch: large tensor operations use every core, per-image ones pay per-call overhead.
    """
    rows, channels, area = codes.shape
    codes += torch.arange(0, 256 * channels, 256, dtype=codes.dtype).view(1, channels, 1)
    values = torch.index_select(table, 0, codes.view(-1)).view(rows, channels, 1, area)
    out = torch.empty(rows, channels, temporal, area, dtype=table.dtype)
    out.copy_(values.expand(rows, channels, temporal, area))
    return out.view(rows, channels * temporal * area)


class FastQwen2VLImageProcessorPil(Qwen2VLImageProcessorPil):
    """`Qwen2VLImageProcessorPil` with a vectorised path for RGB PIL images; identical output."""

    def _fast_path_applies(self, images: list, args: tuple, kwargs: dict) -> bool:
        if args or not images:
            return False
        # A transparency key on an RGB image means compositing on white (stock behaviour), not a plain read.
        if not all(
            isinstance(img, Image.Image) and img.mode == "RGB" and img.info.get("transparency") is None
            for img in images
        ):
            return False
        mean, std = kwargs.get("image_mean"), kwargs.get("image_std")
        if not (
            isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3
        ):
            return False
        if not (kwargs.get("do_resize") and kwargs.get("do_rescale") and kwargs.get("do_normalize")):
            return False
        if kwargs.get("return_tensors") not in ("pt", "np", None):
            return False
        size = kwargs.get("size")
        if size is None or not size.shortest_edge or not size.longest_edge:
            return False
        return not any(value for key, value in kwargs.items() if key not in _HANDLED)

    def _preprocess_image_like_inputs(self, images: Any, *args, **kwargs):
        flat = self._prepare_images_structure(images, expected_ndims=3)
        if flat and isinstance(flat[0], (list, tuple)):
            flat = [img for group in flat for img in group]
        if not self._fast_path_applies(flat, args, kwargs):
            return super()._preprocess_image_like_inputs(images, *args, **kwargs)
        from transformers.feature_extraction_utils import BatchFeature

        size = kwargs["size"]
        patch, merge, temporal = kwargs["patch_size"], kwargs["merge_size"], kwargs["temporal_patch_size"]
        table = torch.from_numpy(
            normalisation_table(kwargs["rescale_factor"], kwargs["image_mean"], kwargs["image_std"])
        ).reshape(-1)
        sizes = [
            smart_resize(
                img.height,
                img.width,
                factor=patch * merge,
                min_pixels=size.shortest_edge,
                max_pixels=size.longest_edge,
            )
            for img in flat
        ]
        rows = [(h // patch) * (w // patch) for h, w in sizes]
        codes = torch.empty(sum(rows), 3, patch * patch, dtype=torch.int32)
        start = 0
        with warnings.catch_warnings():
            # np.asarray(PIL image) is read-only; patch_codes_into only reads it.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for img, (height, width), count in zip(flat, sizes, rows):
                if (width, height) != img.size:
                    img = img.resize((width, height), resample=kwargs["resample"])
                patch_codes_into(codes[start : start + count], np.asarray(img), patch, merge)
                start += count
        pixel_values = normalise_codes(codes, table, temporal)
        grid_thw = torch.tensor([[1, h // patch, w // patch] for h, w in sizes], dtype=torch.long)
        if kwargs.get("return_tensors") != "pt":
            pixel_values, grid_thw = pixel_values.numpy(), grid_thw.numpy()
        return BatchFeature(
            data={"pixel_values": pixel_values, "image_grid_thw": grid_thw},
            tensor_type=kwargs.get("return_tensors"),
        )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        # Saved configs name the standard class, so any loader (AutoProcessor included) reads them.
        out["image_processor_type"] = "Qwen2VLImageProcessor"
        return out
