"""Speed-ups of the stock Qwen-VL models that compute what the stock code computes (each checks it applies).

`load_model` switches them on for every model it loads:
- the patch-embedding Conv3d as one matrix product (`PatchConv3dAsLinear`);
- the vision tower's attention over all images of a batch in one SDPA call per run of equal-length images
  (`use_packed_vision_attention`);
- the vision rotary positions built once per grid size (`use_cached_vision_positions`);
- the text M-RoPE positions of a still-image batch computed vectorised (`image_rope_positions`).
Each is tested against the transformers code it replaces.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


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
        if (
            proj.kernel_size != proj.stride
            or proj.padding != (0, 0, 0)
            or proj.dilation != (1, 1, 1)
            or proj.groups != 1
        ):
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


def packed_sdpa_attention(
    module,
    query,
    key,
    value,
    attention_mask=None,
    scaling=None,
    dropout=0.0,
    cu_seq_lens_q=None,
    cu_seq_lens_k=None,
    is_causal=False,
    **kwargs,
):
    """Attention over a packed (1, heads, total, dim) sequence of independent segments given by cu_seqlens.

    Consecutive segments of equal length (the images of a batch usually share a size) go through one batched
    `scaled_dot_product_attention` call instead of one call each. Returns (1, total, heads, dim) like the
    flash-attention functions. Anything else (a mask, unequal q/k segments) is handled by plain SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = (
        cu_seq_lens_q is not None
        and attention_mask is None
        and query.shape[0] == 1
        and query.shape == key.shape == value.shape
        and (cu_seq_lens_k is None or torch.equal(cu_seq_lens_q, cu_seq_lens_k))
    )
    if not packed:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, is_causal=is_causal
        )
    _, heads, _, dim = query.shape
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    outputs, start = [], 0
    for length, count in _equal_length_runs(lengths):
        span = slice(start, start + length * count)
        q, k, v = (t[0, :, span].unflatten(1, (count, length)).transpose(0, 1) for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=is_causal
        )
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
    rows = (
        torch.arange(height, device="cpu")
        .view(height // merge, merge, 1, 1)
        .expand(-1, -1, width // merge, merge)
    )
    cols = (
        torch.arange(width, device="cpu")
        .view(1, 1, width // merge, merge)
        .expand(height // merge, merge, -1, -1)
    )
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
