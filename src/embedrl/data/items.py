"""The unit of everything embedrl encodes: an Item (a query, a candidate, a training side).

An Item holds text, still images and an optional video. Media are either paths (as written in a file) or
already-loaded PIL images; `resolve_media` turns the former into absolute paths after checking them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import Problem
from ..fileio import file_sha256
from .media import special_file_problem


@dataclass
class VideoRef:
    """A video: a list of frame images (paths or PIL images) or one video file."""

    id: str | None = None
    frames: list[Any] | None = None
    path: str | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.frames is not None:
            out["frames"] = [_path_only(f) for f in self.frames]
        if self.path is not None:
            out["path"] = self.path
        return out


@dataclass
class Item:
    """One thing to embed. `instruction=None` means "use the task's default instruction"."""

    id: str
    text: str | None = None
    instruction: str | None = None
    images: list[Any] = field(default_factory=list)
    video: VideoRef | None = None
    meta: dict = field(default_factory=dict)

    @property
    def modality(self) -> str:
        """The item's input modality for prompt choice: 'video' > 'image' > 'text'."""
        if self.video is not None:
            return "video"
        if self.images:
            return "image"
        return "text"

    def has_content(self) -> bool:
        return bool((self.text and self.text.strip()) or self.images or self.video is not None)

    def to_json(self, id_key: str = "id") -> dict:
        out: dict[str, Any] = {id_key: self.id, "instruction": self.instruction, "text": self.text}
        out["images"] = [_path_only(i) for i in self.images]
        out["video"] = self.video.to_json() if self.video is not None else None
        if self.meta:
            out["meta"] = self.meta
        return out

    def with_instruction(self, default: str | None) -> Item:
        if self.instruction is not None or default is None:
            return self
        return replace(self, instruction=default)


@dataclass
class Query(Item):
    """A query of a task; `candidate_ids` is set only for local tasks, in upstream (tie-break) order."""

    candidate_ids: list[str] | None = None

    def to_json(self, id_key: str = "qid") -> dict:
        out = super().to_json(id_key)
        if self.candidate_ids is not None:
            out["candidate_ids"] = list(self.candidate_ids)
        return out


def _path_only(media: Any) -> str:
    if isinstance(media, (str, os.PathLike)):
        return str(media)
    raise TypeError("only items whose media are file paths can be written to JSON")


# ---------------------------------------------------------------------------------------------- parsing


def _expect(obj: dict, key: str, kinds: tuple, problems: list[Problem], where: dict, required=False):
    if key not in obj or obj[key] is None:
        if required:
            problems.append(Problem(message="missing required field", field=key, **where))
        return None
    value = obj[key]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = " or ".join(k.__name__ for k in kinds)
        problems.append(Problem(message=f"expected {names}, got {type(value).__name__}", field=key, **where))
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON's "\ud800" escapes decode to text no tokenizer can encode
            problems.append(
                Problem(
                    message=f"contains a lone surrogate {value[exc.start]!r} at character "
                    f"{exc.start + 1}; fix the text's encoding",
                    field=key,
                    **where,
                )
            )
            return None
    return value


def _string_list(obj: dict, key: str, problems: list[Problem], where: dict) -> list[str] | None:
    value = _expect(obj, key, (list,), problems, where)
    if value is None:
        return None
    bad = [i for i, v in enumerate(value) if not isinstance(v, str) or not v]
    if bad:
        problems.append(Problem(message=f"entries {bad} are not non-empty strings", field=key, **where))
        return None
    return list(value)


# The fields of an item object (a task query or candidate has its id under qid / cid instead of id).
ITEM_FIELDS = frozenset({"id", "instruction", "text", "images", "video", "meta"})


def parse_item(
    obj: dict,
    *,
    file: str,
    line: int | None,
    id_key: str = "id",
    problems: list[Problem],
    cls: type[Item] = Item,
    allow_video_string: bool = False,
) -> Item | None:
    """Build an Item (or Query) from a JSON object, appending a Problem for every defect found."""
    where = {"file": file, "line": line}
    before = len(problems)
    raw_id = obj.get(id_key)
    if raw_id is None:
        problems.append(Problem(message="missing required field", field=id_key, **where))
        item_id = None
    elif not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or str(raw_id) == "":
        problems.append(Problem(message="must be a non-empty string", field=id_key, **where))
        item_id = None
    else:
        item_id = str(raw_id)
    where_rec = dict(where, record=item_id) if item_id is not None else where
    text = _expect(obj, "text", (str,), problems, where_rec)
    instruction = _expect(obj, "instruction", (str,), problems, where_rec)
    images = _string_list(obj, "images", problems, where_rec) or []
    meta = _expect(obj, "meta", (dict,), problems, where_rec) or {}
    video = None
    raw_video = obj.get("video")
    if isinstance(raw_video, str) and allow_video_string:
        if raw_video.strip():
            video = VideoRef(path=raw_video)
        else:  # "" would resolve to the items file's own folder
            problems.append(Problem(message="an empty video path", field="video", **where_rec))
    elif raw_video is not None:
        if not isinstance(raw_video, dict):
            problems.append(
                Problem(message="expected an object with 'frames' or 'path'", field="video", **where_rec)
            )
        else:
            frames = _string_list(raw_video, "frames", problems, dict(where_rec))
            path = _expect(raw_video, "path", (str,), problems, where_rec)
            if path is not None and not path.strip():
                problems.append(Problem(message="'path' is empty", field="video", **where_rec))
            vid = raw_video.get("id")
            if frames is None and path is None and len(problems) == before:
                problems.append(
                    Problem(message="needs 'frames' (a non-empty list) or 'path'", field="video", **where_rec)
                )
            elif frames is not None and not frames:
                problems.append(Problem(message="'frames' is empty", field="video", **where_rec))
            else:
                video = VideoRef(id=None if vid is None else str(vid), frames=frames, path=path)
    kwargs: dict[str, Any] = {}
    if cls is Query:
        cands = obj.get("candidate_ids")
        if cands is not None:
            if isinstance(cands, list):  # ids may be integers, as qid and cid may
                obj = {
                    **obj,
                    "candidate_ids": [
                        str(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in cands
                    ],
                }
            kwargs["candidate_ids"] = _string_list(obj, "candidate_ids", problems, where_rec)
    if len(problems) > before or item_id is None:
        return None
    item = cls(
        id=item_id, text=text, instruction=instruction, images=images, video=video, meta=meta, **kwargs
    )
    if not item.has_content():
        problems.append(
            Problem(message="has no content: give text, images or video", record=item_id, **where)
        )
        return None
    return item


# --------------------------------------------------------------------------------------------- media paths


def check_media_path(
    raw: str,
    base: Path,
    *,
    confine: bool,
    where: dict,
    field_name: str,
    problems: list[Problem],
    must_exist: bool = True,
    folder_ok: bool = False,
) -> Path | None:
    """Resolve a media path against `base`. `folder_ok`: a folder is valid too (a video given as its frames).

    With `confine=True` (task folders) absolute paths, `..` escapes and symlinks that leave `base` are
    refused, so that a downloaded task cannot make us read arbitrary files.
    """
    candidate = Path(raw)
    if candidate.is_absolute():
        if confine:
            problems.append(
                Problem(
                    message=f"absolute path {raw!r} is not allowed; use a path inside the task folder",
                    field=field_name,
                    **where,
                )
            )
            return None
        resolved = candidate
    else:
        resolved = base / candidate
    if confine:
        root = os.path.realpath(base)
        real = os.path.realpath(resolved)
        if os.path.commonpath([root, real]) != root:
            kind = "symlink" if _has_symlink(base, candidate) else "path"
            problems.append(
                Problem(message=f"{kind} {raw!r} escapes the task folder", field=field_name, **where)
            )
            return None
    if must_exist and not (folder_ok and resolved.is_dir()):
        problem = special_file_problem(resolved)
        if problem is not None:
            message = "does not exist" if problem == "file not found" else problem
            problems.append(Problem(message=f"media file {raw!r} {message}", field=field_name, **where))
            return None
    return resolved


def _has_symlink(base: Path, rel: Path) -> bool:
    current = base
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            return True
    return False


def resolve_item_media(
    item: Item,
    base: Path,
    *,
    confine: bool,
    file: str,
    line: int | None,
    problems: list[Problem],
    must_exist: bool = True,
) -> Item:
    """Return a copy of `item` whose media paths are absolute, recording a Problem per bad path."""
    where = {"file": file, "line": line, "record": item.id}
    images = []
    for i, raw in enumerate(item.images):
        if not isinstance(raw, str):
            images.append(raw)
            continue
        path = check_media_path(
            raw,
            base,
            confine=confine,
            where=where,
            field_name=f"images[{i}]",
            problems=problems,
            must_exist=must_exist,
        )
        images.append(str(path) if path is not None else raw)
    video = item.video
    if video is not None:
        frames = None
        if video.frames is not None:
            frames = []
            for i, raw in enumerate(video.frames):
                if not isinstance(raw, str):
                    frames.append(raw)
                    continue
                path = check_media_path(
                    raw,
                    base,
                    confine=confine,
                    where=where,
                    field_name=f"video.frames[{i}]",
                    problems=problems,
                    must_exist=must_exist,
                )
                frames.append(str(path) if path is not None else raw)
        vpath = video.path
        if vpath is not None:
            resolved = check_media_path(
                vpath,
                base,
                confine=confine,
                where=where,
                field_name="video.path",
                problems=problems,
                must_exist=must_exist,
                folder_ok=True,
            )
            vpath = str(resolved) if resolved is not None else vpath
        video = VideoRef(id=video.id, frames=frames, path=vpath)
    return replace(item, images=images, video=video)


# --------------------------------------------------------------------------------------------- hashing


def content_key(item: Item, extra: str = "") -> str:
    """A stable hash of what the model would see: instruction, text and media *content*.

    Two items with the same content share one computation, whatever their ids. File media are hashed by
    bytes, so editing an image in place invalidates caches.
    """
    h = hashlib.sha256()
    # ensure_ascii: a lone surrogate (valid in JSON, not in UTF-8) must not stop the hash of the whole run
    h.update(json.dumps([item.instruction, item.text, extra]).encode())
    for img in item.images:
        h.update(b"\x00img")
        _hash_media(h, img)
    if item.video is not None:
        h.update(b"\x00vid")
        if item.video.path is not None:
            _hash_media(h, item.video.path)
        for frame in item.video.frames or []:
            _hash_media(h, frame)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], bytes] = {}


def _hash_media(h: Any, media: Any) -> None:
    """Feed one media reference's content into `h`. Never raises: a path that cannot be read is hashed by name,
    and the loader then reports that item as failed (stage "media") instead of the whole run stopping here."""
    if isinstance(media, Image.Image):
        h.update(f"{media.mode}{media.size}".encode())
        h.update(hashlib.sha256(media.tobytes()).digest())
        return
    path = str(media)
    try:
        st = os.stat(path)
    except OSError:
        h.update(("missing:" + path).encode())
        return
    if stat.S_ISDIR(st.st_mode):
        _hash_frame_folder(h, path)
        return
    if not stat.S_ISREG(st.st_mode):  # opening a FIFO blocks and a device never ends: the loader names it
        h.update(f"special:{path}:{stat.S_IFMT(st.st_mode)}".encode())
        return
    key = (path, st.st_size, st.st_mtime_ns)
    digest = _FILE_HASHES.get(key)
    if digest is None:
        try:
            digest = file_sha256(path)
        except OSError as exc:  # unreadable (permissions, a device, ...)
            h.update(f"unreadable:{path}:{type(exc).__name__}".encode())
            return
        _FILE_HASHES[key] = digest
    h.update(digest)


def _hash_frame_folder(h: Any, path: str) -> None:
    """A folder of frames (a video given as a folder): the frames the loader would list, in its order."""
    from ..errors import MediaError
    from .media import list_frames

    h.update(("folder:" + path).encode())
    try:
        frames = list_frames(path)
    except (MediaError, OSError):
        h.update(b"unreadable")
        return
    for frame in frames:
        h.update(b"\x00" + frame.name.encode())
        _hash_media(h, frame)
