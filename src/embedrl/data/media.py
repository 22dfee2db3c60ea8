"""Image and video loading with the conversions real datasets need.

Images: JPEG, PNG, WebP, BMP, GIF (first frame), TIFF; every mode becomes RGB (transparency composited on
white, 16-bit scaled to 8-bit, CMYK converted); EXIF orientation applied; a pixel limit refuses
decompression bombs before any pixel is decoded.

Video: a folder of frame images (natural sort) or a video file (PyAV, the `video` extra). Frames are sampled
uniformly as `np.linspace(0, n - 1, N).astype(int)`. When a video has fewer frames than asked for (n < N),
every frame is returned once, in order, without padding or repetition (the VLM2Vec behaviour), so callers
must not assume exactly N frames.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MediaError

# 1e8 pixels is ~10k x 10k: far above any benchmark image, far below what exhausts memory.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpeg", ".mpg")

# Pillow left to choose tries every plugin it has, and some run other programs (EPS runs Ghostscript, a full
# PostScript interpreter) on whatever bytes a dataset or a client sends: only these are ever decoded.
ALLOWED_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_READ_FORMATS = "PNG, JPEG, WebP, GIF, BMP, TIFF"
# Leading bytes of formats people mistake for images, so that a refusal can say what the file really is.
_SIGNATURES = (
    (b"%!PS", "PostScript data"),
    (b"\xc5\xd0\xd3\xc6", "PostScript data (DOS EPS binary)"),
    (b"%PDF", "PDF document"),
    (b"<?xml", "SVG/XML document"),
    (b"<svg", "SVG/XML document"),
    (b"8BPS", "Photoshop document"),
    (b"\x00\x00\x01\x00", "Windows icon"),
    (b"icns", "macOS icon"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"DDS ", "DirectDraw surface"),
    (b"\x76\x2f\x31\x01", "OpenEXR image"),
    (b"PK\x03\x04", "ZIP archive"),
)


def sniff_format(head: bytes) -> str | None:
    """What the first bytes of a file say it is, for formats that must not be decoded; None if unknown."""
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":  # ISO media: HEIC/AVIF stills and MP4/MOV video share the box layout
        brand = head[8:12].decode("ascii", "replace").strip()
        return f"ISO media file (brand {brand!r})"
    return None


def not_readable_format(head: bytes) -> str:
    """Why bytes that no allowed format accepts were refused."""
    kind = sniff_format(head)
    if kind is None:
        return "not a readable image (unknown format or corrupt header)"
    return f"{kind}, not an image format embedrl reads ({_READ_FORMATS})"


def special_file_problem(path: str | Path) -> str | None:
    """None for a regular file (symlinks followed), else what the path is instead. Checked before any open:
    opening a FIFO blocks until a writer appears, and reading a device never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a symlink to a missing file" if os.path.islink(path) else "file not found"
    except PermissionError:
        return "permission denied"
    except NotADirectoryError:
        return "file not found (a parent in the path is a file, not a folder)"
    except (OSError, ValueError) as exc:  # a name too long, a symlink loop, a NUL byte
        return f"cannot be read ({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})"
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return f"is {kind}, not a regular file"
    return "is not a regular file"


def load_image(source: str | Path | Image.Image, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Load any supported image as an RGB PIL image with EXIF orientation applied."""
    if isinstance(source, Image.Image):
        return to_rgb(_upright(source))
    path = Path(source)
    problem = special_file_problem(path)
    if problem is not None:
        raise MediaError(path, problem)
    try:
        with open(path, "rb") as handle:
            return decode_image_file(handle, max_pixels, path)
    except MediaError:
        raise
    except PermissionError:
        raise MediaError(path, "permission denied") from None
    except FileNotFoundError:  # removed since the check above
        raise MediaError(path, "file not found") from None
    except OSError as exc:
        raise MediaError(path, f"cannot be read ({exc.strerror or exc})") from None


def decode_image_file(handle: Any, max_pixels: int, where: str | Path) -> Image.Image:
    """An open binary file in an allowed format, decoded as RGB; MediaError names `where` (path or field)."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check only warns below 2x its limit; ours is an error, checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle, formats=ALLOWED_IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise MediaError(
                        where,
                        f"image is {width}x{height} = {width * height:,} pixels, above "
                        f"the limit of {max_pixels:,} (possible decompression bomb)",
                    )
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                return to_rgb(_upright(img))
    except MediaError:
        raise
    except UnidentifiedImageError:
        handle.seek(0)
        raise MediaError(where, not_readable_format(handle.read(16))) from None
    except Image.DecompressionBombError as exc:
        raise MediaError(where, f"refused as a decompression bomb: {exc}") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        TypeError,
    ) as exc:  # TypeError: e.g. a malformed transparency key
        raise MediaError(where, f"corrupt or truncated image: {exc}") from None


def _upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. A malformed EXIF block (Pillow raises struct.error,
    TypeError, ...) must not cost a picture that decodes fine: it is then used as stored."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - any EXIF parsing failure
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB. Transparent pixels are composited on white."""
    mode = img.mode
    # A transparency key (P, 1, L or RGB with info["transparency"]) marks see-through pixels like an alpha band.
    keyed = img.info.get("transparency") is not None
    if mode == "RGB" and not keyed:
        return img.copy()
    if mode == "P" and not keyed:
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (keyed and mode in ("P", "1", "L", "RGB")):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            # Full 16-bit range -> 8 bits, rounding: 65535 -> 255, 257 -> 1.
            arr8 = np.round(arr.astype(np.float64) / 257.0)
        else:
            # 32-bit int and float images carry no range convention; values are clipped to 0..255.
            arr8 = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).round()
        gray = Image.fromarray(arr8.astype(np.uint8), mode="L")
        return gray.convert("RGB")
    return img.convert("RGB")


# ------------------------------------------------------------------------------------------------- video


def natural_key(name: str) -> list[Any]:
    """Sort key that orders 'frame_2' before 'frame_10'."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_frames(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(folder, "frame folder does not exist")
    frames = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    for frame in frames:
        # A frame that is not a regular file would hang or fail its loader later; silently skipping it
        # would shift which frames the sampling picks.
        problem = special_file_problem(frame)
        if problem is not None:
            raise MediaError(frame, problem)
    if not frames:
        raise MediaError(folder, "frame folder holds no image files")
    return sorted(frames, key=lambda p: natural_key(p.name))


def sample_indices(num_available: int, num_frames: int) -> list[int]:
    """Uniform frame indices: `np.linspace(0, n-1, N)` cast to int when n >= N, else all n frames."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_available < 1:
        raise ValueError("a video needs at least one frame")
    if num_available <= num_frames:
        return list(range(num_available))
    return np.linspace(0, num_available - 1, num_frames).astype(int).tolist()


def sample_frames(frames: Sequence[Any], num_frames: int) -> list[Any]:
    return [frames[i] for i in sample_indices(len(frames), num_frames)]


def load_video(
    source: str | Path | Sequence[Any],
    num_frames: int = 8,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[Image.Image]:
    """Sampled RGB frames of a frame folder, a frame list (paths or images) or a video file."""
    if isinstance(source, (list, tuple)):
        return [load_image(f, max_pixels) for f in sample_frames(list(source), num_frames)]
    path = Path(source)
    if path.is_dir():
        return [load_image(f, max_pixels) for f in sample_frames(list_frames(path), num_frames)]
    return _decode_video_file(path, num_frames)


def load_item_media(item: Any, num_frames: int = 8) -> tuple[list[Image.Image], list[Image.Image]]:
    """(images, sampled video frames) of an `Item` as RGB PIL images. Raises MediaError naming the file."""
    images = [load_image(img) for img in item.images]
    frames: list[Image.Image] = []
    if item.video is not None:
        source = item.video.frames if item.video.frames is not None else item.video.path
        frames = load_video(source, num_frames=num_frames)
    return images, frames


def decode_problems(
    item: Any, num_frames: int = 8, seen: dict[str, str | None] | None = None
) -> list[tuple[str, str]]:
    """(field, message) for every image, frame or video of an `Item` that does not decode the way encoding
    would load it. Each file is tried once per `seen` (shared across items: candidates often share media)."""
    seen = {} if seen is None else seen
    found: list[tuple[str, str]] = []

    def attempt(source: Any, field: str, load: Any) -> None:
        key = str(source) if not isinstance(source, Image.Image) else f"<image {id(source)}>"
        if key not in seen:
            try:
                load()
                seen[key] = None
            except MediaError as exc:
                seen[key] = str(exc)
        if seen[key] is not None:
            found.append((field, seen[key]))

    for i, image in enumerate(item.images):
        attempt(image, f"images[{i}]", lambda image=image: load_image(image))
    video = item.video
    if video is not None and video.frames is not None:
        for i, frame in enumerate(video.frames):
            attempt(frame, f"video.frames[{i}]", lambda frame=frame: load_image(frame))
    elif video is not None:
        attempt(video.path, "video.path", lambda: load_video(video.path, num_frames))
    return found


def _decode_video_file(path: Path, num_frames: int) -> list[Image.Image]:
    problem = special_file_problem(path)
    if problem is not None:
        raise MediaError(path, "video " + problem if problem == "file not found" else problem)
    try:
        import av  # noqa: PLC0415 - optional extra
    except ImportError:
        raise MediaError(
            path,
            "reading video files needs PyAV: pip install 'embedrl[video]' "
            "(or give the video as a folder of frames)",
        ) from None
    try:
        # Pass 1 counts frames by demuxing (no decoding); stream.frames is 0 for many containers.
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "file has no video stream")
            stream = container.streams.video[0]
            total = sum(1 for packet in container.demux(stream) if packet.size > 0)
        if total == 0:
            raise MediaError(path, "video has no frames")
        wanted = set(sample_indices(total, num_frames))
        frames: list[Image.Image] = []
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames.append(frame.to_image().convert("RGB"))
                if len(frames) == len(wanted):
                    break
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises a family of its own (av.error.*) plus OSError
        raise MediaError(path, f"corrupt or unreadable video: {exc}") from None
    if not frames:
        raise MediaError(path, "no frame could be decoded")
    return frames
