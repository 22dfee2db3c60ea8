"""The Embedder's input: one chat conversation per item, laid out as the official Embed-RL evaluation lays it out.

A released Embed-RL checkpoint was trained and evaluated on exactly this layout, so any other layout (an extra
newline, frames before the text, a different resize) shifts its vectors. The user turn is a run of pieces joined
with no separator:

    one image:        [image] [instruction + " " + text] [T-CoT pieces] "Summarize the above content in one word:"
    several frames:   [instruction + " " + text] [frame 1] … [frame N] [T-CoT pieces] "Summarize …"
    text only:        [instruction + " " + text] [T-CoT pieces] "Summarize …"

and the assistant turn is the single text ``<emb>``. The T-CoT pieces are ``<thinking>…</thinking>\\n`` (verbatim),
one image per crop or keyframe, then the rest of the T-CoT (see `embedrl.models.evidence`). An item whose visuals
are a single picture (an image, or a one-frame video) takes the image layout; more than one takes the frame layout.

Every image is resized once, from the original, to a multiple of the vision factor (patch size × merge size; 32
for Qwen3-VL) within its own pixel bounds: images and crops between `image_min_pixels` and `image_max_pixels`;
frames, keyframes and the crops of a frame item between `frame_min_pixels` and `frame_max_pixels` (the
qwen-vl-utils `smart_resize` rule, then a bicubic PIL resize). The processor then leaves the size unchanged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.items import Item
from ..data.media import load_item_media as load_media_files
from ..errors import ConfigError, MediaError
from ..tcot import ParseResult, TCoT, strip_special_tokens
from .backbone import torchvision_available
from .evidence import DEFAULT_EVIDENCE_STYLE, EVIDENCE_STYLES, EvidenceRules, read_evidence

log = logging.getLogger(__name__)

EMBEDDER_CONFIG_FILE = "embedrl_embedder.json"
SUMMARY_PROMPT = "Summarize the above content in one word:"
EMB_TOKEN = "<emb>"
# Version of the layout above. Version 1 (embedrl 0.1) put a newline after the text and after </answer>, frames
# before the text, re-rendered <thinking>, and shrank images before the processor resized them again.
INPUT_LAYOUT = 2
# qwen-vl-utils refuses images more elongated than this; so does the official evaluation.
MAX_ASPECT_RATIO = 200
# The pixel bounds of the official evaluation (Qwen3-VL, 32 px per visual token).
OFFICIAL_IMAGE_PIXELS = (128 * 32 * 32, 768 * 32 * 32)
OFFICIAL_FRAME_PIXELS = (128 * 32 * 32, 300 * 32 * 32)


@dataclass
class EmbedderConfig:
    """Input-building settings, saved with the checkpoint (`embedrl_embedder.json`) so that training,
    evaluation and the RL reward build the same input.

    `video_mode` is 'frames' (sampled frames as separate images: works without torchvision, the official
    evaluation's representation) or 'video' (one native video item; needs torchvision). Pixel bounds of None
    take the checkpoint processor's own bounds. The evidence fields are those of `EvidenceRules`; `for_style`
    sets them from a preset name.
    """

    summary_prompt: str = SUMMARY_PROMPT
    emb_token: str = EMB_TOKEN
    video_mode: str = "frames"
    num_frames: int = 8
    image_min_pixels: int | None = None
    image_max_pixels: int | None = None
    frame_min_pixels: int | None = None
    frame_max_pixels: int | None = None
    max_text_tokens: int | None = None
    padding_side: str = "left"
    keyframe_base: int = EVIDENCE_STYLES[DEFAULT_EVIDENCE_STYLE].keyframe_base
    repair_cue_json: bool = EVIDENCE_STYLES[DEFAULT_EVIDENCE_STYLE].repair_cue_json
    max_crops: int | None = EVIDENCE_STYLES[DEFAULT_EVIDENCE_STYLE].max_crops
    max_keyframes: int | None = EVIDENCE_STYLES[DEFAULT_EVIDENCE_STYLE].max_keyframes
    drop_repeated_evidence: bool = EVIDENCE_STYLES[DEFAULT_EVIDENCE_STYLE].drop_repeats
    input_layout: int = INPUT_LAYOUT

    @classmethod
    def official(cls, style: str = DEFAULT_EVIDENCE_STYLE) -> EmbedderConfig:
        """The official evaluation's pixel bounds, with the evidence rules of `style`."""
        return cls(
            image_min_pixels=OFFICIAL_IMAGE_PIXELS[0],
            image_max_pixels=OFFICIAL_IMAGE_PIXELS[1],
            frame_min_pixels=OFFICIAL_FRAME_PIXELS[0],
            frame_max_pixels=OFFICIAL_FRAME_PIXELS[1],
        ).with_style(style)

    def with_style(self, style: str) -> EmbedderConfig:
        """A copy with the evidence rules of the named preset ('official', 'paper' or 'embedrl')."""
        rules = EvidenceRules.preset(style)
        return EmbedderConfig(
            **{
                **asdict(self),
                "keyframe_base": rules.keyframe_base,
                "repair_cue_json": rules.repair_cue_json,
                "max_crops": rules.max_crops,
                "max_keyframes": rules.max_keyframes,
                "drop_repeated_evidence": rules.drop_repeats,
            }
        )

    @property
    def evidence_rules(self) -> EvidenceRules:
        return EvidenceRules(
            keyframe_base=self.keyframe_base,
            repair_cue_json=self.repair_cue_json,
            max_crops=self.max_crops,
            max_keyframes=self.max_keyframes,
            drop_repeats=self.drop_repeated_evidence,
        )

    @property
    def evidence_style(self) -> str:
        return self.evidence_rules.style

    def validate(self) -> None:
        if self.video_mode not in ("frames", "video"):
            raise ConfigError(f"video_mode must be 'frames' or 'video', got {self.video_mode!r}")
        if self.video_mode == "video" and not torchvision_available():
            raise ConfigError(
                "video_mode='video' needs torchvision; this environment has none that imports. "
                "Use video_mode='frames' (the default)."
            )
        if self.padding_side not in ("left", "right"):
            raise ConfigError("padding_side must be 'left' or 'right'")
        if self.num_frames < 1:
            raise ConfigError("num_frames must be >= 1")
        for low, high in (("image_min_pixels", "image_max_pixels"), ("frame_min_pixels", "frame_max_pixels")):
            lo, hi = getattr(self, low), getattr(self, high)
            for name, value in ((low, lo), (high, hi)):
                if value is not None and (not isinstance(value, int) or value < 1):
                    raise ConfigError(f"{name} must be a positive whole number or None, got {value!r}")
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"{low} ({lo}) is above {high} ({hi})")
        if self.input_layout != INPUT_LAYOUT:
            raise ConfigError(
                f"input_layout {self.input_layout} is not built by this version of embedrl "
                f"(it builds layout {INPUT_LAYOUT})"
            )
        self.evidence_rules  # noqa: B018 - validates the evidence fields

    @classmethod
    def load(cls, path: str | Path) -> EmbedderConfig:
        file = Path(path) / EMBEDDER_CONFIG_FILE
        if not file.is_file():
            return cls()
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{file}: not a readable Embedder config: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: an Embedder config must be a JSON object")
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        if "input_layout" not in raw:
            # Saved by embedrl 0.1 (layout 1). Its evidence settings are those of the 'embedrl' preset; the text
            # layout of version 1 is gone, so its vectors move a little: say so instead of hiding it.
            log.warning(
                "%s was saved with embedrl's input layout 1 (a newline after the text and after "
                "</answer>, frames before the text); it is now read with layout %d, the official one. "
                "Retrain it for exact vectors.",
                file,
                INPUT_LAYOUT,
            )
            legacy = EvidenceRules.preset("embedrl")
            if known.get("image_min_pixels") and "frame_min_pixels" not in raw:
                known["frame_min_pixels"] = known["image_min_pixels"]  # layout 1 applied it to frames too
            known.pop("max_crops", None)
            known.pop("max_keyframes", None)
            known.update(
                keyframe_base=legacy.keyframe_base,
                repair_cue_json=legacy.repair_cue_json,
                max_crops=legacy.max_crops,
                max_keyframes=legacy.max_keyframes,
                drop_repeated_evidence=legacy.drop_repeats,
                input_layout=INPUT_LAYOUT,
            )
        return cls(**known)

    def save(self, path: str | Path) -> None:
        (Path(path) / EMBEDDER_CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class VisionBounds:
    """Pixel bounds per image role and the size factor, resolved from an `EmbedderConfig` and its processor."""

    factor: int
    image: tuple[int, int]
    frame: tuple[int, int]

    @classmethod
    def resolve(cls, config: EmbedderConfig, processor: Any) -> VisionBounds:
        image_processor = getattr(processor, "image_processor", processor)
        patch = int(getattr(image_processor, "patch_size", 14))
        merge = int(getattr(image_processor, "merge_size", 2))
        size = getattr(image_processor, "size", None)
        own_min = (
            _size_field(size, "shortest_edge") or getattr(image_processor, "min_pixels", None) or 4 * 28 * 28
        )
        own_max = (
            _size_field(size, "longest_edge")
            or getattr(image_processor, "max_pixels", None)
            or 16384 * 28 * 28
        )
        image = (config.image_min_pixels or own_min, config.image_max_pixels or own_max)
        frame = (config.frame_min_pixels or own_min, config.frame_max_pixels or own_max)
        for name, (low, high) in (("image", image), ("frame", frame)):
            if low > high:
                raise ConfigError(f"{name} pixel bounds are empty: min {low} > max {high}")
        return cls(
            factor=patch * merge, image=(int(image[0]), int(image[1])), frame=(int(frame[0]), int(frame[1]))
        )


def _size_field(size: Any, key: str) -> int | None:
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with the area inside [min_pixels, max_pixels], keeping the
    aspect ratio as well as possible: the rule of qwen-vl-utils (Python's round, then floor or ceil by factor)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio {max(height, width) / min(height, width):.1f} is above {MAX_ASPECT_RATIO}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImagePlacement:
    """One image placed in the Embedder input, in placeholder order, with how it was made."""

    role: str
    """'image' (an item image), 'frame' (an item frame), 'crop' or 'keyframe'."""
    source_hw: tuple[int, int]
    min_pixels: int
    max_pixels: int
    resized_hw: tuple[int, int]
    frame_index: int | None = None
    """For frames and keyframes: the 0-based position in the item's sampled frames."""
    crop_box: tuple[int, int, int, int] | None = None
    """For crops: (x1, y1, x2, y2) in pixels of the source image."""


@dataclass
class EmbedderInput:
    """One item as a chat conversation plus the (resized) images it references, in placeholder order."""

    messages: list[dict]
    images: list[Image.Image]
    videos: list[list[Image.Image]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    placements: list[ImagePlacement] = field(default_factory=list)


def load_item_media(item: Item, config: EmbedderConfig) -> tuple[list[Image.Image], list[Image.Image]]:
    """(images, sampled video frames) of an item, sampled with the Embedder's frame count."""
    return load_media_files(item, config.num_frames)


def item_text(item: Item) -> str:
    """Instruction and text joined by one space, as the official evaluation reads them."""
    joined = " ".join(p for p in (item.instruction, item.text) if p and p.strip()).strip()
    # Control tokens in user text (<|image_pad|>, <emb>, ...) would desynchronise text and pixels or pooling.
    return strip_special_tokens(joined).strip()


def _placed(
    image: Image.Image, role: str, bounds: tuple[int, int], factor: int, item: Item, **where: Any
) -> tuple[Image.Image, ImagePlacement]:
    try:
        height, width = smart_resize(image.height, image.width, factor, *bounds)
    except ValueError as exc:
        raise MediaError(
            item.id, f"{role} of {image.width}x{image.height} px cannot be resized: {exc}"
        ) from None
    resized = (
        image if (width, height) == image.size else image.resize((width, height), Image.Resampling.BICUBIC)
    )
    return resized, ImagePlacement(
        role=role,
        source_hw=(image.height, image.width),
        min_pixels=bounds[0],
        max_pixels=bounds[1],
        resized_hw=(height, width),
        **where,
    )


def build_input(
    item: Item,
    config: EmbedderConfig,
    bounds: VisionBounds,
    tcot: str | TCoT | ParseResult | None = None,
    *,
    media: tuple[list[Image.Image], list[Image.Image]] | None = None,
    truncate: Callable[[str], str] | None = None,
) -> EmbedderInput:
    """The single Embedder input builder (layout in the module docstring).

    `tcot` is None (no reasoning), the Reasoner's text (used verbatim), or a parsed `TCoT` / `ParseResult`
    (rendered canonically / its raw text). Crops are cut from the item's first image (the first frame for a
    frame item); keyframes are taken from the sampled frames. `media` passes already-loaded (images, frames).
    """
    images, frames = media if media is not None else load_item_media(item, config)
    text = item_text(item)
    if truncate is not None and text:
        text = truncate(text)
    visuals = len(images) + len(frames)
    # Keyframes index the item's visual sequence: its frames, or (as the official code reads any list of more
    # than one picture as frames) its images when it has several and no video.
    sequence_pictures = list(frames) if frames else (list(images) if len(images) > 1 else [])
    if config.video_mode == "video" and frames:
        sequence_pictures = []
    content: list[dict] = []
    placed: list[Image.Image] = []
    placements: list[ImagePlacement] = []
    videos: list[list[Image.Image]] = []

    def place(image: Image.Image, role: str, own: tuple[int, int], **where: Any) -> None:
        resized, placement = _placed(image, role, own, bounds.factor, item, **where)
        content.append({"type": "image", "image": resized})
        placed.append(resized)
        placements.append(placement)

    sequence = visuals > 1
    if sequence and text:
        content.append({"type": "text", "text": text})
    for image in images:
        place(image, "image", bounds.frame if sequence else bounds.image)
    if frames and config.video_mode == "video":
        content.append({"type": "video", "video": list(frames)})
        videos.append(list(frames))
    else:
        for index, frame in enumerate(frames):
            place(
                frame,
                "frame" if sequence else "image",
                bounds.frame if sequence else bounds.image,
                frame_index=index if sequence else None,
            )
    if not sequence and text:
        content.append({"type": "text", "text": text})

    notes: list[str] = []
    crop_source = images[0] if images else (frames[0] if frames else None)
    evidence = read_evidence(
        tcot, crop_source=crop_source, num_frames=len(sequence_pictures), rules=config.evidence_rules
    )
    if evidence is not None:
        notes.extend(evidence.notes)
        if evidence.fallback_text is not None:
            content.append({"type": "text", "text": evidence.fallback_text})
        else:
            content.append({"type": "text", "text": evidence.thinking_text})
            crop_bounds = bounds.frame if sequence else bounds.image
            for box, crop in zip(evidence.crop_boxes, evidence.crops):
                place(crop, "crop", crop_bounds, crop_box=box)
            for index in evidence.keyframe_indices:
                place(sequence_pictures[index], "keyframe", bounds.frame, frame_index=index)
            if evidence.tail_text:
                content.append({"type": "text", "text": evidence.tail_text})
    content.append({"type": "text", "text": config.summary_prompt})
    messages = [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": config.emb_token}]},
    ]
    return EmbedderInput(messages=messages, images=placed, videos=videos, notes=notes, placements=placements)
