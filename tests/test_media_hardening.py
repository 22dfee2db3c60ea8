"""Media are read only from regular files, and only in the image formats embedrl means to read.

Pillow left to itself hands PostScript to Ghostscript and opening a FIFO blocks forever; every test that
could hang carries a timeout.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from PIL import EpsImagePlugin, Image

from embedrl.cli import main
from embedrl.data.items import Item, Query, VideoRef
from embedrl.data.media import ALLOWED_IMAGE_FORMATS, load_image, load_video
from embedrl.data.taskdir import Qrel, Task, TaskMeta, validate_task, write_task
from embedrl.data.upstream import image_suffix, source_file
from embedrl.errors import MediaError

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
READABLE = "not an image format embedrl reads (PNG, JPEG, WebP, GIF, BMP, TIFF)"


@pytest.fixture
def no_ghostscript(monkeypatch):
    """Fails the test if Pillow ever tries to run Ghostscript (installed here or not)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("Ghostscript was invoked")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    yield calls
    assert calls == []


def make_global_task(root: Path) -> Task:
    for rel in ("media/images/a.png", *(f"media/frames/v1/{i:06d}.jpg" for i in range(3))):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / rel)
    meta = TaskMeta(
        benchmark="TEST", task="t2x", modality="image", eval_type="global", primary_metric="hit@1"
    )
    frames = [f"media/frames/v1/{i:06d}.jpg" for i in range(3)]
    candidates = [Item(id="c1", images=["media/images/a.png"]), Item(id="c2", video=VideoRef(frames=frames))]
    return Task(meta, [Query(id="q1", text="a square")], candidates, [Qrel("q1", "c1")])


def _image_bytes(fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (200, 10, 10)).save(buf, fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (EPS, "PostScript data"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF document"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "SVG/XML document"),
    ],
)
def test_other_formats_named_png_are_refused_with_their_real_format(
    tmp_path: Path, no_ghostscript, head: bytes, kind: str
) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(head)
    with pytest.raises(MediaError) as info:
        load_image(path)
    assert str(info.value) == f"{path}: {kind}, {READABLE}"


def test_an_unknown_format_outside_the_list_is_refused(tmp_path: Path, no_ghostscript) -> None:
    path = tmp_path / "x.ico"
    Image.new("RGB", (16, 16)).save(path, "ICO")  # Pillow reads ICO, but embedrl does not promise to
    with pytest.raises(MediaError, match=r"x\.ico: .*not an image format embedrl reads"):
        load_image(path)


@pytest.mark.parametrize("fmt", ALLOWED_IMAGE_FORMATS)
def test_every_allowed_format_still_decodes(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_image_bytes(fmt))
    image = load_image(path)
    assert image.size == (6, 4) and image.mode == "RGB"


def test_converters_do_not_take_postscript_for_an_image(tmp_path: Path, no_ghostscript) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(EPS)
    assert image_suffix(EPS) == "" and image_suffix(path) == ""
    assert image_suffix(_image_bytes("PNG")) == ".png"


# ------------------------------------------------------------------------------------- special files


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "p.png"
    os.mkfifo(fifo)
    with pytest.raises(MediaError) as info:
        load_image(fifo)
    assert str(info.value) == f"{fifo}: is a FIFO (named pipe), not a regular file"


@pytest.mark.timeout(20)
def test_a_device_a_directory_and_a_socket_are_each_named(tmp_path: Path, monkeypatch) -> None:
    if os.path.exists("/dev/zero"):
        with pytest.raises(MediaError, match=r"^/dev/zero: is a character device, not a regular file$"):
            load_image("/dev/zero")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(MediaError, match=r"d\.png: is a directory, not a regular file$"):
        load_image(tmp_path / "d.png")
    monkeypatch.chdir(tmp_path)  # a socket path must be short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("s.png")
        with pytest.raises(MediaError, match=r"^s\.png: is a socket, not a regular file$"):
            load_image("s.png")


def test_an_unreadable_file_says_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file: test_permission_denied_when_open_refuses covers this")
    path = tmp_path / "x.png"
    path.write_bytes(_image_bytes("PNG"))
    path.chmod(0)
    try:
        with pytest.raises(MediaError, match=r"x\.png: permission denied$"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_permission_denied_when_open_refuses(tmp_path: Path, monkeypatch) -> None:
    import embedrl.data.media as media

    path = tmp_path / "x.png"
    path.write_bytes(_image_bytes("PNG"))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(media, "open", denied, raising=False)
    with pytest.raises(MediaError, match=r"x\.png: permission denied$"):
        load_image(path)


@pytest.mark.timeout(20)
def test_a_fifo_in_a_frame_folder_is_reported(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "0.png")
    os.mkfifo(tmp_path / "1.png")
    with pytest.raises(MediaError) as info:
        load_video(tmp_path, num_frames=2)
    assert str(info.value) == f"{tmp_path / '1.png'}: is a FIFO (named pipe), not a regular file"


@pytest.mark.timeout(20)
def test_a_fifo_as_video_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with pytest.raises(MediaError) as info:
        load_video(fifo)
    assert str(info.value) == f"{fifo}: is a FIFO (named pipe), not a regular file"


@pytest.mark.timeout(20)
def test_task_validation_names_what_a_special_file_is(tmp_path: Path, capsys) -> None:
    root = tmp_path / "task"
    write_task(make_global_task(root), root)
    (root / "media" / "images" / "a.png").unlink()
    os.mkfifo(root / "media" / "images" / "a.png")
    (root / "media" / "frames" / "v1" / "000001.jpg").unlink()
    (root / "media" / "frames" / "v1" / "000001.jpg").mkdir()
    problems = [str(p) for p in validate_task(root)]
    assert len(problems) == 2, problems
    assert problems[0].endswith(
        "field 'images[0]': media file 'media/images/a.png' is a FIFO (named pipe), not a regular file"
    )
    assert problems[1].endswith(
        "field 'video.frames[1]': media file 'media/frames/v1/000001.jpg' is a directory, not a regular file"
    )
    assert main(["task", "validate", str(root)]) == 1
    assert "is a FIFO (named pipe), not a regular file" in capsys.readouterr().out


def test_task_validation_still_reports_missing_and_escaping_media(tmp_path: Path) -> None:
    root = tmp_path / "task"
    write_task(make_global_task(root), root)
    with open(root / "candidates.jsonl", "a") as f:
        f.write(json.dumps({"cid": "c9", "images": ["media/nope.png", "../x.png"]}) + "\n")
    problems = [str(p) for p in validate_task(root)]
    assert len(problems) == 2, problems
    assert problems[0].endswith("field 'images[0]': media file 'media/nope.png' does not exist")
    assert problems[1].endswith("field 'images[1]': path '../x.png' escapes the task folder")


@pytest.mark.timeout(20)
def test_converters_name_a_fifo_in_the_download(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p.jpg")
    real, why = source_file(tmp_path, "p.jpg")
    assert real is None and why == f"{tmp_path / 'p.jpg'} is a FIFO (named pipe), not a regular file"


@pytest.mark.timeout(20)
def test_a_fifo_never_blocks_the_content_hash_or_encode(tmp_path, tiny_qwen3_embedder) -> None:
    """Caches key items by media content; hashing a FIFO used to block on open before any loader ran."""
    from embedrl.data.items import content_key
    from embedrl.models.embedder import Embedder
    from embedrl.pipeline import encode_detailed

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    item = Item(id="a", images=[str(fifo)])
    assert content_key(item) != content_key(Item(id="a", images=[str(tmp_path / "other.png")]))
    result = encode_detailed(
        [item, Item(id="b", text="fine")],
        Embedder.from_pretrained(tiny_qwen3_embedder),
        reasoning="off",
        cache_dir=tmp_path / "cache",
    )
    assert [f.id for f in result.failures] == ["a"] and "FIFO" in result.failures[0].message


@pytest.mark.timeout(20)
def test_training_pairs_name_a_fifo_instead_of_calling_it_missing(tmp_path) -> None:
    from embedrl.train.pairs import load_pairs

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps(
            {"dataset": "d", "query": {"id": "q", "text": "t"}, "positive": {"id": "p", "images": ["x.png"]}}
        )
        + "\n"
    )
    problems = load_pairs(path)[1]
    assert any("FIFO" in str(p) for p in problems), problems
