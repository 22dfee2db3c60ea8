"""Image modes and formats to RGB, EXIF orientation, bombs, corrupt files, frame sampling, video decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedrl.data.media import (
    list_frames,
    load_image,
    load_video,
    natural_key,
    sample_indices,
)
from embedrl.errors import MediaError


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "fmt,suffix", [("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif"), ("WEBP", ".webp")]
)
def test_lossless_formats_round_trip_rgb(tmp_path: Path, fmt: str, suffix: str) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    path = _save(Image.fromarray(arr), tmp_path / f"x{suffix}", format=fmt, **kw)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (17, 12)
    assert np.array_equal(np.asarray(img), arr)


def test_jpeg_is_close(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (16, 16), (200, 40, 90)), tmp_path / "x.jpg", quality=95)
    arr = np.asarray(load_image(path)).astype(int)
    assert np.abs(arr - [200, 40, 90]).max() <= 3


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("P", (10, 10), i) for i in range(3)]
    pal = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)
    for f in frames:
        f.putpalette(pal)
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [0, 0, 0]  # frame 0 uses palette index 0 = black


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = [255, 0, 0, 255]  # opaque red
    arr[0, 1] = [255, 0, 0, 0]  # fully transparent -> white
    arr[1, 0] = [0, 0, 0, 128]  # half black on white
    arr[1, 1] = [0, 0, 255, 255]
    path = _save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png")
    out = np.asarray(load_image(path)).astype(int)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert np.abs(out[1, 0] - 127).max() <= 1
    assert out[1, 1].tolist() == [0, 0, 255]


def test_la_and_palette_with_transparency(tmp_path: Path) -> None:
    la = Image.fromarray(np.array([[[0, 0], [50, 255]]], dtype=np.uint8), "LA")
    out = np.asarray(load_image(_save(la, tmp_path / "la.png")))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [50, 50, 50]

    p = Image.new("P", (2, 1))
    p.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 1
    out = np.asarray(load_image(_save(p, tmp_path / "p.png", transparency=1)))
    assert out[0, 0].tolist() == [0, 255, 0] and out[0, 1].tolist() == [255, 255, 255]


def test_rgb_and_gray_with_a_transparency_key(tmp_path: Path) -> None:
    rgb = Image.fromarray(np.array([[[10, 20, 30], [200, 100, 0]]], dtype=np.uint8))
    img = load_image(_save(rgb, tmp_path / "k.png", transparency=(10, 20, 30)))
    assert img.info.get("transparency") is None  # the key is applied, not carried along
    assert np.asarray(img)[0].tolist() == [[255, 255, 255], [200, 100, 0]]

    gray = Image.fromarray(np.array([[7, 90]], dtype=np.uint8), "L")
    out = np.asarray(load_image(_save(gray, tmp_path / "kg.png", transparency=7)))
    assert out[0].tolist() == [[255, 255, 255], [90, 90, 90]]

    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8), "L").convert("1")
    out = np.asarray(load_image(_save(bilevel, tmp_path / "k1.png", transparency=0)))
    assert out[0].tolist() == [[255, 255, 255], [255, 255, 255]]  # black is the key: composited on white
    out = np.asarray(load_image(_save(bilevel, tmp_path / "n1.png")))
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_grayscale_and_16_bit(tmp_path: Path) -> None:
    gray = Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8), "L")
    out = np.asarray(load_image(_save(gray, tmp_path / "g.png")))
    assert out[0].tolist() == [[0, 0, 0], [100, 100, 100], [255, 255, 255]]

    raw = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    img16 = Image.fromarray(raw)
    assert img16.mode == "I;16"
    path = _save(img16, tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]
    assert out.shape == (1, 4, 3)


def test_cmyk_to_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_image(_save(cmyk, tmp_path / "c.jpg", quality=100))).astype(int)
    assert np.abs(out[0, 0] - [255, 0, 0]).max() <= 3
    out_tif = np.asarray(load_image(_save(cmyk, tmp_path / "c.tif")))
    assert out_tif[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 5, 10))  # white strip on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    path = tmp_path / "o.jpg"
    img.save(path, exif=exif.tobytes(), quality=100)
    out = load_image(path)
    assert out.size == (10, 30)
    arr = np.asarray(out).astype(int)
    assert arr[:5, :, 0].mean() > 200 and arr[-5:, :, 0].mean() < 50  # left strip moved to the top


# EXIF blocks that Pillow's exif_transpose cannot parse (found by fuzzing): struct.error and TypeError.
BROKEN_EXIF = (
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02\x01\x11\x00\x02\x00\x00\x00\x04cam\x00\x01\x12\x00\x03\x00"
    b"\x00\x00\x01\x00\x06\x00\x00\x00\xb2\x00\x00",
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02\x01\x1a\x00\x02\x00\x00\x00\x04cam\x00\x01\x12\x00\x03\x00"
    b"\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00",
)


@pytest.mark.parametrize("exif", BROKEN_EXIF)
def test_a_malformed_exif_block_does_not_cost_the_picture(tmp_path: Path, exif: bytes) -> None:
    from PIL import ImageOps

    path = tmp_path / "broken-exif.jpg"
    Image.new("RGB", (16, 8), (200, 10, 10)).save(path, "JPEG", exif=exif)
    with Image.open(path) as img, pytest.raises(Exception):  # noqa: B017 - Pillow's own parser fails
        ImageOps.exif_transpose(img)
    loaded = load_image(path)
    assert loaded.size == (16, 8) and loaded.mode == "RGB"


def test_decompression_bomb_refused(tmp_path: Path) -> None:
    path = _save(Image.new("L", (300, 300)), tmp_path / "big.png")
    with pytest.raises(MediaError) as info:
        load_image(path, max_pixels=50_000)
    assert str(path) in str(info.value) and "decompression bomb" in str(info.value)


def test_truncated_and_corrupt_files_name_the_path(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(MediaError, match=r"trunc\.png: corrupt or truncated"):
        load_image(truncated)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match=r"garbage\.jpg: not a readable image"):
        load_image(garbage)
    with pytest.raises(MediaError, match="file not found"):
        load_image(tmp_path / "missing.png")


def test_sample_indices() -> None:
    assert sample_indices(3, 8) == [0, 1, 2]  # n < N: every frame once, no padding
    assert sample_indices(8, 8) == list(range(8))  # n = N
    assert sample_indices(20, 8) == np.linspace(0, 19, 8).astype(int).tolist()
    assert sample_indices(20, 8) == [0, 2, 5, 8, 10, 13, 16, 19]
    assert sample_indices(1, 8) == [0]
    with pytest.raises(ValueError):
        sample_indices(0, 8)


def test_frame_folder_natural_sort_and_sampling(tmp_path: Path) -> None:
    for i in range(12):
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    names = [p.name for p in list_frames(tmp_path)]
    assert names[:3] == ["frame_0.png", "frame_1.png", "frame_2.png"] and names[-1] == "frame_11.png"
    assert sorted(["frame_10", "frame_2"], key=natural_key) == ["frame_2", "frame_10"]
    frames = load_video(tmp_path, num_frames=4)
    reds = [np.asarray(f)[0, 0, 0] for f in frames]
    assert reds == [i * 20 for i in np.linspace(0, 11, 4).astype(int)]
    assert len(load_video(tmp_path, num_frames=20)) == 12


def test_corrupt_frame_in_folder_names_it(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "0.png")
    (tmp_path / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(MediaError, match=r"1\.png"):
        load_video(tmp_path, num_frames=2)


def _write_h264(path: Path, n: int) -> None:
    av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            arr = np.zeros((48, 64, 3), dtype=np.uint8)
            arr[..., 0] = i * 10  # frame index encoded in red
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_h264_video_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_h264(path, 20)
    frames = load_video(path, num_frames=8)
    assert len(frames) == 8 and frames[0].size == (64, 48)
    reds = [int(np.asarray(f)[:, :, 0].mean()) for f in frames]
    expected = [i * 10 for i in np.linspace(0, 19, 8).astype(int)]
    assert all(abs(r - e) <= 6 for r, e in zip(reds, expected)), (reds, expected)
    short = tmp_path / "short.mp4"
    _write_h264(short, 3)
    assert len(load_video(short, num_frames=8)) == 3


def test_corrupt_video_names_path(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(MediaError, match=r"bad\.mp4"):
        load_video(bad)
