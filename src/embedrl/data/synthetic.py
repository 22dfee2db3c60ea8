"""A synthetic benchmark with ground truth for exactly what a T-CoT carries: keywords, boxes and keyframes.

Scenes are drawn with PIL (coloured shapes of two sizes on a plain background); videos are short frame
sequences of one shape moving in a direction; document "pages" are rendered word lists. Every item knows its
caption, its object boxes and its informative frames, so an *oracle teacher* T-CoT can be written for it
(`teacher_tcot`). This is a code-path and learning-signal benchmark, never a quality claim.

`write_benchmark` writes unified task folders (benchmarks.md §3.2); `write_training_pairs` writes stage-1 /
EG-RL pairs (`train/pairs.py` format) with teacher T-CoTs. Everything is deterministic given the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .items import Item, Query, VideoRef
from .taskdir import Qrel, Task, TaskMeta, write_task

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.42}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
DOC_WORDS = (
    "budget energy harvest museum protein rocket glacier harbor violin tractor lantern meadow falcon "
    "copper canyon orchard vaccine tunnel compass saddle marble comet thunder pepper"
).split()
BACKGROUND = (245, 245, 240)


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # pixels, x1 y1 x2 y2

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x1, y1, x2, y2 = shape.box
    fill = COLORS[shape.color]
    if shape.shape == "circle":
        draw.ellipse(shape.box, fill=fill)
    elif shape.shape == "square":
        draw.rectangle(shape.box, fill=fill)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)


def draw_scene(shapes: list[Shape], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for shape in shapes:
        draw_shape(draw, shape)
    return img


def _place(rng: random.Random, side: int, size: int, taken: list[tuple[int, int, int, int]]):
    for _ in range(50):
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        box = (x, y, x + side, y + side)
        if all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3] for t in taken):
            return box
    return None


def random_scene(rng: random.Random, size: int = 128, max_objects: int = 2) -> list[Shape]:
    shapes: list[Shape] = []
    for _ in range(rng.randint(1, max_objects)):
        name, color, size_word = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))
        side = int(SIZES[size_word] * size)
        box = _place(rng, side, size, [s.box for s in shapes])
        if box is not None:
            shapes.append(Shape(name, color, size_word, box))
    return shapes


def caption(shapes: list[Shape]) -> str:
    return " and ".join(f"a {s.phrase}" for s in shapes)


def to_relative(box: tuple[int, int, int, int], width: int, height: int) -> list[int]:
    x1, y1, x2, y2 = box
    return [
        round(x1 * 1000 / width),
        round(y1 * 1000 / height),
        round(x2 * 1000 / width),
        round(y2 * 1000 / height),
    ]


# ---------------------------------------------------------------------------------------- oracle T-CoTs


def _tcot(thinking: str, cue: dict, rethink: str, answer: str) -> str:
    return (
        f"<thinking>{thinking} {json.dumps(cue)}</thinking>"
        f"<rethink>{rethink}</rethink><answer>{answer}</answer>"
    )


def teacher_text_tcot(text: str, keywords: list[str]) -> str:
    return _tcot(
        f"The text asks for {text}.",
        {"text_keywords": keywords},
        "Colour, shape and size decide the match.",
        text,
    )


def teacher_image_tcot(shapes: list[Shape], size: int) -> str:
    boxes = [to_relative(s.box, size, size) for s in shapes]
    return _tcot(
        f"The image shows {caption(shapes)}.",
        {"bbox_2d": boxes},
        "The boxed shapes carry the colour and size.",
        caption(shapes),
    )


def teacher_video_tcot(phrase: str, direction: str, num_frames: int) -> str:
    frames = sorted({1, (num_frames + 1) // 2, num_frames})
    return _tcot(
        f"A {phrase} moves {direction} across the frames.",
        {"key_frames": frames},
        "The first and last frames show where the motion starts and ends.",
        f"a {phrase} moving {direction}",
    )


def keywords_of(shapes: list[Shape]) -> list[str]:
    words: list[str] = []
    for s in shapes:
        for w in (s.size, s.color, s.shape):
            if w not in words:
                words.append(w)
    return words


# --------------------------------------------------------------------------------------------- videos


def moving_frames(rng: random.Random, size: int = 96, num_frames: int = 8):
    name, color, size_word = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))
    direction = rng.choice(list(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    side = int(SIZES[size_word] * size * 0.8)
    travel = size - side
    fixed = rng.randint(0, travel)
    frames = []
    for t in range(num_frames):
        pos = round(travel * t / (num_frames - 1))
        if dx:
            x = pos if dx > 0 else travel - pos
            y = fixed
        else:
            y = pos if dy > 0 else travel - pos
            x = fixed
        frames.append(draw_scene([Shape(name, color, size_word, (x, y, x + side, y + side))], size))
    phrase = f"{size_word} {color} {name}"
    return frames, phrase, direction


# -------------------------------------------------------------------------------------------- writing


class _MediaWriter:
    def __init__(self, root: Path):
        self.root = root

    def image(self, img: Image.Image, rel: str) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        return rel


def _meta(task: str, modality: str, meta_task: str, eval_type: str, metric: str, q_inst: str, c_inst: str):
    return TaskMeta(
        benchmark="synthetic",
        task=task,
        modality=modality,
        meta_task=meta_task,
        eval_type=eval_type,
        primary_metric=metric,
        query_instruction=q_inst,
        candidate_instruction=c_inst,
        source={"generator": "embedrl.data.synthetic"},
        version_note="synthetic v1: PIL shapes, moving shapes, rendered word pages",
    )


def _unique_scenes(rng: random.Random, n: int, size: int) -> list[list[Shape]]:
    seen, scenes = set(), []
    while len(scenes) < n:
        shapes = random_scene(rng, size)
        key = caption(shapes)
        if key not in seen:
            seen.add(key)
            scenes.append(shapes)
    return scenes


def make_t2i(root: Path, rng: random.Random, n: int, size: int = 128) -> Task:
    media = _MediaWriter(root)
    queries, cands, qrels = [], [], []
    for i, shapes in enumerate(_unique_scenes(rng, n, size)):
        rel = media.image(draw_scene(shapes, size), f"media/images/{i:05d}.png")
        cap = caption(shapes)
        queries.append(
            Query(id=f"q{i:05d}", text=cap, meta={"tcot": teacher_text_tcot(cap, keywords_of(shapes))})
        )
        cands.append(Item(id=f"c{i:05d}", images=[rel], meta={"tcot": teacher_image_tcot(shapes, size)}))
        qrels.append(Qrel(f"q{i:05d}", f"c{i:05d}", 1))
    meta = _meta(
        "SynT2I",
        "image",
        "RET",
        "global",
        "hit@1",
        "Find me an everyday image that matches the given caption:",
        "Represent the given image.",
    )
    task = Task(meta, queries, cands, qrels)
    write_task(task, root)
    return task


def make_i2t(root: Path, rng: random.Random, n: int, size: int = 128) -> Task:
    media = _MediaWriter(root)
    queries, cands, qrels = [], [], []
    for i, shapes in enumerate(_unique_scenes(rng, n, size)):
        rel = media.image(draw_scene(shapes, size), f"media/images/{i:05d}.png")
        cap = caption(shapes)
        queries.append(Query(id=f"q{i:05d}", images=[rel], meta={"tcot": teacher_image_tcot(shapes, size)}))
        cands.append(
            Item(id=f"c{i:05d}", text=cap, meta={"tcot": teacher_text_tcot(cap, keywords_of(shapes))})
        )
        qrels.append(Qrel(f"q{i:05d}", f"c{i:05d}", 1))
    meta = _meta(
        "SynI2T",
        "image",
        "RET",
        "global",
        "hit@1",
        "Find an image caption describing the given everyday image.",
        "Represent the given text.",
    )
    task = Task(meta, queries, cands, qrels)
    write_task(task, root)
    return task


def make_cls(root: Path, rng: random.Random, n: int, size: int = 128) -> Task:
    """Local task: name the colour and shape of the single object among 6 labels (1 right, 5 wrong)."""
    media = _MediaWriter(root)
    labels = [f"{c} {s}" for c in COLORS for s in SHAPES]
    cands = [
        Item(id=lab.replace(" ", "_"), text=lab, meta={"tcot": teacher_text_tcot(lab, lab.split())})
        for lab in labels
    ]
    queries, qrels = [], []
    for i in range(n):
        shapes = random_scene(rng, size, max_objects=1)
        label = f"{shapes[0].color} {shapes[0].shape}"
        rel = media.image(draw_scene(shapes, size), f"media/images/{i:05d}.png")
        wrong = rng.sample([lab for lab in labels if lab != label], 5)
        options = wrong + [label]
        rng.shuffle(options)
        queries.append(
            Query(
                id=f"q{i:05d}",
                images=[rel],
                candidate_ids=[o.replace(" ", "_") for o in options],
                meta={"tcot": teacher_image_tcot(shapes, size)},
            )
        )
        qrels.append(Qrel(f"q{i:05d}", label.replace(" ", "_"), 1))
    meta = _meta(
        "SynCLS",
        "image",
        "CLS",
        "local",
        "hit@1",
        "Identify the colour and shape of the object in the image.",
        "Represent the given label.",
    )
    task = Task(meta, queries, cands, qrels)
    write_task(task, root)
    return task


def make_t2v(root: Path, rng: random.Random, n: int, num_frames: int = 8, size: int = 96) -> Task:
    media = _MediaWriter(root)
    queries, cands, qrels, seen = [], [], [], set()
    i = 0
    while len(queries) < n:
        frames, phrase, direction = moving_frames(rng, size, num_frames)
        text = f"a {phrase} moving {direction}"
        if text in seen:
            continue
        seen.add(text)
        rels = [media.image(f, f"media/frames/v{i:05d}/{t:06d}.png") for t, f in enumerate(frames)]
        queries.append(
            Query(
                id=f"q{i:05d}",
                text=text,
                meta={"tcot": teacher_text_tcot(text, phrase.split() + [direction])},
            )
        )
        cands.append(
            Item(
                id=f"c{i:05d}",
                video=VideoRef(id=f"v{i:05d}", frames=rels),
                meta={"tcot": teacher_video_tcot(phrase, direction, num_frames)},
            )
        )
        qrels.append(Qrel(f"q{i:05d}", f"c{i:05d}", 1))
        i += 1
    meta = _meta(
        "SynT2V",
        "video",
        "RET",
        "global",
        "hit@1",
        "Find a video that contains the following visual content:",
        "Understand the content of the provided video.",
    )
    meta.num_frames = (
        num_frames  # every clip has exactly this many frames, and the teacher cites them by index
    )
    task = Task(meta, queries, cands, qrels)
    write_task(task, root)
    return task


def _page(words: list[str], size: int = 128) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for row, word in enumerate(words):
        draw.text((8, 8 + 22 * row), word, fill=(0, 0, 0))
    return img


def make_doc(root: Path, rng: random.Random, n_docs: int, pages_per_doc: int = 3) -> Task:
    """Global, graded (VisDoc-like, ndcg_linear@5): the page holding both words scores 2, its sibling pages 1."""
    media = _MediaWriter(root)
    cands, queries, qrels = [], [], []
    for d in range(n_docs):
        doc_pages = []
        for p in range(pages_per_doc):
            words = rng.sample(DOC_WORDS, 4)
            cid = f"d{d:04d}p{p}"
            rel = media.image(_page(words), f"media/pages/{cid}.png")
            box = [40, 40, 600, 80 + 170 * 3]
            cands.append(
                Item(
                    id=cid,
                    images=[rel],
                    meta={
                        "tcot": _tcot(
                            f"The page lists {', '.join(words)}.",
                            {"bbox_2d": [box]},
                            "The words are the content.",
                            " ".join(words),
                        )
                    },
                )
            )
            doc_pages.append((cid, words))
        target_cid, words = doc_pages[rng.randrange(pages_per_doc)]
        pair = rng.sample(words, 2)
        qid = f"q{d:04d}"
        text = f"which page mentions {pair[0]} and {pair[1]}?"
        queries.append(Query(id=qid, text=text, meta={"tcot": teacher_text_tcot(text, pair)}))
        for cid, _ in doc_pages:
            qrels.append(Qrel(qid, cid, 2 if cid == target_cid else 1))
    meta = _meta(
        "SynDoc",
        "visdoc",
        "VDR",
        "global",
        "ndcg_linear@5",
        "Find a document image that matches the given query:",
        "Understand the content of the provided document image.",
    )
    task = Task(meta, queries, cands, qrels)
    write_task(task, root)
    return task


def write_benchmark(root: str | Path, seed: int = 0, n: int = 40, num_frames: int = 8) -> list[Path]:
    """Write the five synthetic tasks under `root/synthetic/<task>`; return their folders."""
    base = Path(root) / "synthetic"
    rng = random.Random(seed)
    makers = [
        ("SynT2I", lambda r: make_t2i(r, rng, n)),
        ("SynI2T", lambda r: make_i2t(r, rng, n)),
        ("SynCLS", lambda r: make_cls(r, rng, n)),
        ("SynT2V", lambda r: make_t2v(r, rng, n, num_frames)),
        ("SynDoc", lambda r: make_doc(r, rng, max(2, n // 3))),
    ]
    folders = []
    for name, make in makers:
        folder = base / name
        make(folder)
        folders.append(folder)
    return folders


# ------------------------------------------------------------------------------------- training pairs


def write_training_pairs(
    path: str | Path,
    seed: int = 1,
    n: int = 120,
    num_frames: int = 8,
    datasets: tuple[str, ...] = ("syn_t2i", "syn_i2t", "syn_t2v"),
) -> Path:
    """Pairs in the training format (query, positive, dataset, teacher T-CoTs), media next to the file."""
    from ..fileio import write_jsonl

    path = Path(path)
    media = _MediaWriter(path.parent)
    rng = random.Random(seed)
    records = []
    per = max(1, n // len(datasets))
    for dataset in datasets:
        for i in range(per):
            if dataset == "syn_t2v":
                frames, phrase, direction = moving_frames(rng, 96, num_frames)
                text = f"a {phrase} moving {direction}"
                rels = [media.image(f, f"media/{dataset}/{i:05d}/{t:06d}.png") for t, f in enumerate(frames)]
                query = {
                    "id": f"{dataset}-{i}-q",
                    "text": text,
                    "instruction": "Find a video that contains the following visual content:",
                }
                positive = {
                    "id": f"{dataset}-{i}-p",
                    "video": {"frames": rels},
                    "instruction": "Understand the content of the provided video.",
                }
                q_tcot = teacher_text_tcot(text, phrase.split() + [direction])
                p_tcot = teacher_video_tcot(phrase, direction, num_frames)
            else:
                shapes = random_scene(rng, 128)
                rel = media.image(draw_scene(shapes, 128), f"media/{dataset}/{i:05d}.png")
                cap = caption(shapes)
                text_item = {"text": cap}
                image_item = {"images": [rel]}
                if dataset == "syn_t2i":
                    query = {
                        "id": f"{dataset}-{i}-q",
                        **text_item,
                        "instruction": "Find me an everyday image that matches the given caption:",
                    }
                    positive = {
                        "id": f"{dataset}-{i}-p",
                        **image_item,
                        "instruction": "Represent the given image.",
                    }
                    q_tcot = teacher_text_tcot(cap, keywords_of(shapes))
                    p_tcot = teacher_image_tcot(shapes, 128)
                else:
                    query = {
                        "id": f"{dataset}-{i}-q",
                        **image_item,
                        "instruction": "Find an image caption describing the given everyday image.",
                    }
                    positive = {
                        "id": f"{dataset}-{i}-p",
                        **text_item,
                        "instruction": "Represent the given text.",
                    }
                    q_tcot = teacher_image_tcot(shapes, 128)
                    p_tcot = teacher_text_tcot(cap, keywords_of(shapes))
            records.append(
                {
                    "dataset": dataset,
                    "query": query,
                    "positive": positive,
                    "query_tcot": q_tcot,
                    "positive_tcot": p_tcot,
                }
            )
    write_jsonl(path, records)
    return path


# =====================================================================================================
# The evidence benchmark (synthetic v2, the demo's): tasks where the T-CoT's evidence genuinely matters.
#
# Each task is built so that the Embedder's pixel budget loses what decides the match, and the T-CoT's cue
# recovers it; the Reasoner can find the evidence within its own budget:
#
# - SynCrop (image -> label, bbox_2d): a 3x3 grid of 128 px cells; grey patterned tiles (clutter) and ONE
#   coloured tile whose fine stripe pattern (2 px stripes) names the label "<colour> <pattern>". The whole
#   384 px scene reaches the Embedder at 128 px (its 16-token budget): the colour survives, the pattern does
#   not. A crop of the tile's cell, cut from the original, reaches it at full resolution: the pattern is readable.
#   Locating the tile needs only its colour, which the Reasoner sees at any budget.
# - SynEvent (video -> label, key_frames): 8 frames of 192 px, four 2-frame segments, one object per segment;
#   the segment whose object is striped (the event) names the label "<colour> <shape>"; the other objects are
#   flat tints of the same mean colour. The Embedder's frame budget (4 tokens, 64 px) blurs the stripes away,
#   so it cannot tell the event from the distractors; the Reasoner sees frames at 128 px (16 tokens), where the
#   stripes show. Keyframes re-inserted after the thinking block point the Embedder at the event.
# - SynClause (text -> label, text_keywords): a sentence naming the target object and two distractor objects
#   in clauses ("Next to the blue square and the green diamond, find the red circle."); a bag of words cannot
#   tell them apart, the keywords name the target.
#
# Items come in groups of 4 labels that share what the raw input shows (SynCrop: one colour, four patterns;
# SynEvent / SynClause: each item's distractors are the other labels of its group), so in-batch negatives in
# training and RL are hard: only the evidence separates them.
# Every item keeps its ground truth in meta["gt"] (boxes, event frames, keywords) for the teacher, the
# ground-truth judge and the analysis, and its oracle T-CoT in meta["oracle_tcot"].
# =====================================================================================================

import numpy as _np  # noqa: E402

EV_COLORS = {"red": (205, 35, 35), "green": (25, 140, 55), "blue": (35, 75, 205), "yellow": (215, 170, 0)}
EV_PATTERNS = ("horizontal", "vertical", "checked", "diagonal")
# SynEvent labels are colours alone: at the Embedder's frame budget a colour is easy to read, a shape is not, and
# the task is about WHICH frames to look at.
EV_EVENT_COLORS = {
    **EV_COLORS,
    "purple": (130, 50, 170),
    "orange": (235, 110, 0),
    "cyan": (0, 160, 170),
    "pink": (215, 40, 150),
}
EV_SHAPES = ("circle", "square", "triangle", "diamond")
EV_GREY = (95, 95, 95)
EV_WHITE = (255, 255, 255)
EV_BACKGROUND = (236, 234, 228)
EV_TASKS = ("SynCrop", "SynEvent", "SynClause")
EV_DATASETS = {"SynCrop": "syn_crop", "SynEvent": "syn_event", "SynClause": "syn_clause"}
LABEL_INSTRUCTION = "Represent the given label."
EV_INSTRUCTIONS = {
    "SynCrop": "Name the colour and the stripe pattern of the coloured tile.",
    "SynEvent": "Name the colour of the object shown during the striped moment of the clip.",
    "SynClause": "Name the object that the sentence asks to find.",
}
_CLAUSE_TEMPLATES = (
    "Find the {t} next to the {a} and the {b}.",
    "Next to the {a} and the {b}, find the {t}.",
    "The {a} and the {b} are decoys; find the {t}.",
    "Find the {t}, not the {a} or the {b}.",
)


@dataclass(frozen=True)
class EvidenceGeometry:
    """Sizes of the evidence benchmark (defaults: the demo's)."""

    grid: int = 2  # SynCrop: grid x grid cells
    cell: int = 128  # px per cell; the scene is grid * cell px square
    margin: int = 8  # px between a cell's border and its tile
    stripe: int = 1  # SynCrop: px per stripe (pattern period 2 * stripe)
    event_stripe: int = 2  # SynEvent: px per stripe of the event object
    frame_size: int = 192  # SynEvent frame side, px
    segments: int = 4  # SynEvent: objects per clip
    segment_frames: int = 2  # frames per object

    @property
    def scene(self) -> int:
        return self.grid * self.cell

    @property
    def num_frames(self) -> int:
        return self.segments * self.segment_frames


def _pattern_mask(
    pattern: str, height: int, width: int, stripe: int, x0: int = 0, y0: int = 0
) -> _np.ndarray:
    """Where a pattern is 'on'; drawn in absolute image coordinates, half of the pixels on for every pattern (so
    that a blurred tile has the same mean colour whatever its pattern)."""
    y, x = _np.mgrid[y0 : y0 + height, x0 : x0 + width]
    if pattern == "horizontal":
        return (y // stripe) % 2 == 0
    if pattern == "vertical":
        return (x // stripe) % 2 == 0
    if pattern == "checked":
        return ((x // stripe) + (y // stripe)) % 2 == 0
    if pattern == "diagonal":
        return ((x + y) // stripe) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def _shape_mask(shape: str, size: int) -> _np.ndarray:
    y, x = _np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= (0.48 * size) ** 2
    if shape == "square":
        return (abs(x - c) <= 0.4 * size) & (abs(y - c) <= 0.4 * size)
    if shape == "diamond":
        return abs(x - c) + abs(y - c) <= 0.48 * size
    if shape == "triangle":
        top, bottom = 0.06 * size, 0.92 * size
        half = (y - top) / (bottom - top) * 0.46 * size
        return (y >= top) & (y <= bottom) & (abs(x - c) <= half)
    raise ValueError(f"unknown shape {shape!r}")


def _rel_box(box: tuple[int, int, int, int], side: int) -> list[int]:
    return [round(v * 1000 / side) for v in box]


def crop_scene(
    rng: random.Random, color: str, pattern: str, geo: EvidenceGeometry = EvidenceGeometry()
) -> tuple[Image.Image, dict]:
    """A SynCrop scene: grey patterned clutter tiles and one coloured tile; returns (image, ground truth)."""
    side, cell, m = geo.scene, geo.cell, geo.margin
    canvas = _np.empty((side, side, 3), dtype=_np.uint8)
    canvas[:] = EV_BACKGROUND
    cells = list(range(geo.grid * geo.grid))
    target = rng.choice(cells)
    others = [c for c in cells if c != target]
    clutter = rng.sample(others, rng.randint(max(1, len(others) - 3), len(others)))
    tiles = []
    for index in [target, *clutter]:
        row, col = divmod(index, geo.grid)
        x0, y0 = col * cell + m, row * cell + m
        size = cell - 2 * m
        tile_pattern = pattern if index == target else rng.choice(EV_PATTERNS)
        on = _pattern_mask(tile_pattern, size, size, geo.stripe, x0, y0)
        ink = _np.array(EV_COLORS[color] if index == target else EV_GREY, dtype=_np.uint8)
        canvas[y0 : y0 + size, x0 : x0 + size] = _np.where(
            on[..., None], ink, _np.array(EV_WHITE, dtype=_np.uint8)
        )
        cell_box = (col * cell, row * cell, (col + 1) * cell, (row + 1) * cell)
        tiles.append(
            {
                "cell": index,
                "box": _rel_box(cell_box, side),
                "colour": color if index == target else "grey",
                "pattern": tile_pattern,
            }
        )
    gt = {
        "kind": "crop",
        "label": f"{color} {pattern}",
        "colour": color,
        "pattern": pattern,
        "target_cell": target,
        "box": tiles[0]["box"],
        "tiles": sorted(tiles, key=lambda t: t["cell"]),
        "grid": geo.grid,
        "size": side,
    }
    return Image.fromarray(canvas), gt


def event_frames(
    rng: random.Random, label: str, distractors: list[str], geo: EvidenceGeometry = EvidenceGeometry()
) -> tuple[list[Image.Image], dict]:
    """A SynEvent clip: `geo.segments` objects of `geo.segment_frames` frames each, one colour per object (a
    random shape); the event object (colour `label`) is striped, the distractors are flat tints of the same mean
    colour. Returns (frames, ground truth)."""
    objects = [(c, rng.choice(EV_SHAPES)) for c in [label, *distractors[: geo.segments - 1]]]
    order = list(range(geo.segments))
    rng.shuffle(order)
    segments = [objects[k] for k in order]
    event_segment = order.index(0)
    side = geo.frame_size
    size = int(side * 0.66)
    frames, shown = [], []
    bar_top, bar_bottom = side - 18, side - 6
    edges = [round(8 + k * (side - 16) / geo.segments) for k in range(geo.segments + 1)]
    for seg, (color, shape) in enumerate(segments):
        for _ in range(geo.segment_frames):
            x0, y0 = rng.randint(8, side - size - 8), rng.randint(6, bar_top - size - 6)
            canvas = _np.empty((side, side, 3), dtype=_np.uint8)
            canvas[:] = EV_BACKGROUND
            # the timeline: a bar along the bottom whose dark quarter is this segment's place in the clip
            canvas[bar_top:bar_bottom, edges[0] : edges[-1]] = (200, 200, 200)
            canvas[bar_top:bar_bottom, edges[seg] : edges[seg + 1]] = (60, 60, 60)
            mask = _shape_mask(shape, size)
            ink = _np.array(EV_EVENT_COLORS[color], dtype=float)
            if seg == event_segment:
                on = _pattern_mask("horizontal", size, size, geo.event_stripe, x0, y0)
                fill = _np.where(on[..., None], ink, _np.array(EV_WHITE, dtype=float))
            else:
                fill = _np.broadcast_to((ink + _np.array(EV_WHITE)) / 2, (size, size, 3))
            region = canvas[y0 : y0 + size, x0 : x0 + size].astype(float)
            canvas[y0 : y0 + size, x0 : x0 + size] = (
                _np.where(mask[..., None], fill, region).round().astype(_np.uint8)
            )
            frames.append(Image.fromarray(canvas))
            shown.append({"colour": color, "shape": shape, "event": seg == event_segment})
    first = event_segment * geo.segment_frames + 1
    gt = {
        "kind": "event",
        "label": label,
        "colour": label,
        "shape": objects[0][1],
        "event_frames": list(range(first, first + geo.segment_frames)),
        "frames": shown,
        "segment_frames": geo.segment_frames,
    }
    return frames, gt


def clause_text(
    rng: random.Random, label: tuple[str, str], distractors: list[tuple[str, str]]
) -> tuple[str, dict]:
    """A SynClause query: the target and two distractors in clauses; returns (text, ground truth)."""
    a, b = (" ".join(d) for d in distractors[:2])
    template = rng.choice(_CLAUSE_TEMPLATES)
    text = template.format(t=" ".join(label), a=a, b=b)
    gt = {
        "kind": "clause",
        "label": " ".join(label),
        "keywords": list(label),
        "distractors": [list(d) for d in distractors[:2]],
        "template": _CLAUSE_TEMPLATES.index(template),
    }
    return text, gt


# ------------------------------------------------------------------------------- oracle and teacher T-CoTs


def _ev_tcot(thinking: str, cue: dict, rethink: str, answer: str) -> str:
    # The cue opens the thinking block (the format allows it anywhere in it): the demo's tiny base Reasoner answers
    # grounding questions with the same JSON, and carries that skill over when the JSON comes first.
    return (
        f"<thinking>{json.dumps(cue)} {thinking}</thinking>"
        f"<rethink>{rethink}</rethink><answer>{answer}</answer>"
    )


def crop_tcot(boxes: list[list[int]]) -> str:
    return _ev_tcot(
        "The coloured tile decides the match.",
        {"bbox_2d": boxes},
        "Its pattern shows in the crop.",
        "the coloured tile",
    )


def event_tcot(frames: list[int]) -> str:
    return _ev_tcot(
        "The striped frames show the moment.",
        {"key_frames": frames},
        "The object in them decides the match.",
        "the striped object",
    )


def keywords_tcot(
    keywords: list[str],
    thinking: str = "The sentence asks for one object.",
    rethink: str = "The other objects are distractors.",
) -> str:
    return _ev_tcot(thinking, {"text_keywords": keywords}, rethink, " ".join(keywords))


def label_tcot(label: str) -> str:
    return keywords_tcot(label.split(), "The label names the object.", "Its words must match.")


def oracle_tcot(gt: dict) -> str:
    """The T-CoT written from the ground truth, without noise."""
    if gt["kind"] == "crop":
        return crop_tcot([gt["box"]])
    if gt["kind"] == "event":
        return event_tcot(gt["event_frames"])
    if gt["kind"] == "clause":
        return keywords_tcot(gt["keywords"])
    if gt["kind"] == "label":
        return label_tcot(gt["label"])
    raise ValueError(f"unknown ground-truth kind {gt['kind']!r}")


@dataclass(frozen=True)
class TeacherNoise:
    """The synthetic teacher's controlled noise. Each query-side T-CoT is, independently:

    - with probability `loose` over-inclusive, always the same way (a teacher's habit): SynCrop's box overshoots
      the tile's cell by half a cell to the right and below (to the left / above at the image's edge), a crop that
      reaches the Embedder at reduced resolution with part of a clutter tile; SynEvent's keyframes run on into the
      next segment (the previous one for the last), two of four frames showing a distractor; SynClause's keywords
      add one distractor's two words after the target's;
    - with probability `wrong` wrong: SynCrop boxes a neighbouring cell, SynEvent cites another segment,
      SynClause names a distractor instead of the target;
    - otherwise the oracle T-CoT.

    Label (candidate-side) T-CoTs are copied from the label and kept clean.
    """

    loose: float = 0.5
    wrong: float = 0.1

    def __post_init__(self) -> None:
        if not (0 <= self.loose and 0 <= self.wrong and self.loose + self.wrong <= 1):
            raise ValueError(
                f"noise rates must be >= 0 and sum to <= 1, got loose={self.loose}, wrong={self.wrong}"
            )

    def draw(self, rng: random.Random) -> str:
        u = rng.random()
        return "loose" if u < self.loose else "wrong" if u < self.loose + self.wrong else "none"


def teacher_tcot(gt: dict, rng: random.Random, noise: TeacherNoise) -> tuple[str, str]:
    """(T-CoT, noise kind) of the noisy synthetic teacher for one item's ground truth."""
    if gt["kind"] == "label":
        return label_tcot(gt["label"]), "none"
    kind = noise.draw(rng)
    if kind == "none":
        return oracle_tcot(gt), kind
    if gt["kind"] == "crop":
        grid, target = gt["grid"], gt["target_cell"]
        row, col = divmod(target, grid)
        step = 1000 / grid
        if kind == "loose":
            # overshoot by half a cell to the right and below (to the left / above at the image's edge)
            x1, x2 = (col, col + 1.5) if col + 1 < grid else (col - 0.5, col + 1)
            y1, y2 = (row, row + 1.5) if row + 1 < grid else (row - 0.5, row + 1)
            box = [round(x1 * step), round(y1 * step), round(x2 * step), round(y2 * step)]
        else:
            neighbours = [
                (r, c)
                for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1))
                if 0 <= r < grid and 0 <= c < grid
            ]
            r, c = rng.choice(neighbours)
            box = [round(c * step), round(r * step), round((c + 1) * step), round((r + 1) * step)]
        return crop_tcot([box]), kind
    if gt["kind"] == "event":
        seg_len, first = gt["segment_frames"], gt["event_frames"][0]
        segments = len(gt["frames"]) // seg_len
        event = (first - 1) // seg_len
        if kind == "loose":
            # runs on into the next segment (into the previous one for the last segment)
            segs = sorted({event, event + 1 if event + 1 < segments else event - 1})
        else:
            segs = [rng.choice([s for s in range(segments) if s != event])]
        return event_tcot([s * seg_len + k + 1 for s in segs for k in range(seg_len)]), kind
    if gt["kind"] == "clause":
        extra = rng.choice(gt["distractors"])
        if kind == "loose":
            return keywords_tcot(gt["keywords"] + extra), kind
        return keywords_tcot(list(extra)), kind
    raise ValueError(f"unknown ground-truth kind {gt['kind']!r}")


# ------------------------------------------------------------------------------------------ splits


def ev_labels(task: str) -> list[tuple[str, ...]]:
    """The task's label pool: SynCrop colour x pattern (16), SynEvent colour (8), SynClause colour x shape (16)."""
    if task == "SynEvent":
        return [(c,) for c in EV_EVENT_COLORS]
    second = EV_PATTERNS if task == "SynCrop" else EV_SHAPES
    return [(c, s) for c in EV_COLORS for s in second]


def _label_groups(rng: random.Random, task: str, count: int) -> list[list[tuple[str, str]]]:
    """`count` groups of 4 distinct labels: SynCrop groups share a colour (four patterns); the other tasks' groups
    are 4 labels drawn at random."""
    groups = []
    while len(groups) < count:
        if task == "SynCrop":
            color = rng.choice(list(EV_COLORS))
            groups.append([(color, p) for p in rng.sample(EV_PATTERNS, len(EV_PATTERNS))])
        else:
            groups.append(rng.sample(ev_labels(task), 4))
    return groups


@dataclass
class EvidenceItem:
    """One generated query with its label, ground truth and T-CoTs (oracle and teacher)."""

    task: str
    group: int
    label: str
    text: str | None
    images: list[str]
    frames: list[str]
    gt: dict
    oracle: str
    teacher: str
    noise: str


def _make_items(
    root: Path,
    prefix: str,
    task: str,
    groups: int,
    rng: random.Random,
    noise: TeacherNoise,
    geo: EvidenceGeometry,
    teacher_rng: random.Random,
    exclude: Collection[str] = (),
) -> list[EvidenceItem]:
    """The items of `groups` label groups. `teacher_rng` draws the teacher's noise (its own stream: the rates never
    change the items); an item whose `evidence_signature` is in `exclude` is drawn again (test items that
    coincide with training items)."""
    media = _MediaWriter(root)
    items: list[EvidenceItem] = []
    for g, labels in enumerate(_label_groups(rng, task, groups)):
        for k, label in enumerate(labels):
            others = [lab for lab in labels if lab != label]
            rng.shuffle(others)
            name = f"{prefix}{g:04d}-{k}"
            text, images, frames = None, [], []
            for _attempt in range(1000):
                if task == "SynCrop":
                    image, gt = crop_scene(rng, *label, geo=geo)
                elif task == "SynEvent":
                    clip, gt = event_frames(rng, label[0], [o[0] for o in others], geo=geo)
                else:
                    text, gt = clause_text(rng, label, others)
                if evidence_signature(gt) not in exclude:
                    break
            else:
                raise ValueError(
                    f"{task}: no item for label {label} outside the excluded ones after 1000 draws"
                )
            if task == "SynCrop":
                images = [media.image(image, f"media/{name}.png")]
            elif task == "SynEvent":
                frames = [media.image(f, f"media/{name}/{t:03d}.png") for t, f in enumerate(clip)]
            teacher, kind = teacher_tcot(gt, teacher_rng, noise)
            items.append(
                EvidenceItem(task, g, gt["label"], text, images, frames, gt, oracle_tcot(gt), teacher, kind)
            )
    return items


def _query_json(item: EvidenceItem, id_key: str = "id") -> dict:
    out: dict = {id_key: None, "instruction": EV_INSTRUCTIONS[item.task]}
    if item.text is not None:
        out["text"] = item.text
    if item.images:
        out["images"] = item.images
    if item.frames:
        out["video"] = {"frames": item.frames}
    return out


def evidence_signature(gt: dict) -> str:
    """What makes two items the same input: the drawn content without the random placement noise (SynCrop: the
    tiles' cells, colours and patterns; SynEvent: the objects, frame by frame; SynClause: the sentence)."""
    if gt["kind"] == "crop":
        content: Any = [gt["tiles"]]
    elif gt["kind"] == "event":
        content = gt["frames"]
    elif gt["kind"] == "clause":
        content = gt.get("text") or [gt["template"], gt["keywords"], gt["distractors"]]
    else:
        content = gt["label"]
    return json.dumps([gt["kind"], content], sort_keys=True)


def evidence_signatures(pairs_file: str | Path) -> set[str]:
    """The signatures of the query items of an evidence pairs file (`write_evidence_pairs`)."""
    from ..fileio import read_jsonl

    return {evidence_signature(row["query"]["meta"]["gt"]) for row in read_jsonl(pairs_file)}


def write_evidence_pairs(
    path: str | Path,
    seed: int,
    groups_per_task: int,
    *,
    noise: TeacherNoise = TeacherNoise(),
    geo: EvidenceGeometry = EvidenceGeometry(),
    group_pairs: int = 4,
    split: str = "train",
    tasks: tuple[str, ...] = EV_TASKS,
) -> Path:
    """Training pairs (train/pairs.py format) of the evidence benchmark with the noisy teacher's T-CoTs.

    Each dataset name holds `group_pairs` pairs (4: one label group, the RL batch; 8: two groups, a stage-1
    sub-batch) with distinct labels, named `<dataset>#<k>`. Items keep their ground truth and oracle T-CoT in
    `meta`; the pair's `meta` records the teacher's noise kind.
    """
    from ..fileio import write_jsonl

    path = Path(path)
    records = []
    for task in tasks:
        rng = random.Random(f"evidence/{split}/{seed}/{task}")
        teacher_rng = random.Random(f"teacher/{split}/{seed}/{task}")
        items = _make_items(
            path.parent, f"{split}-{EV_DATASETS[task]}-", task, groups_per_task, rng, noise, geo, teacher_rng
        )
        per = max(1, group_pairs // 4)
        for i, item in enumerate(items):
            query = _query_json(item)
            query["id"] = f"{split}-{task}-{i}-q"
            query["meta"] = {"gt": item.gt, "oracle_tcot": item.oracle}
            positive = {
                "id": f"{split}-{task}-{i}-p",
                "instruction": LABEL_INSTRUCTION,
                "text": item.label,
                "meta": {"gt": {"kind": "label", "label": item.label}},
            }
            records.append(
                {
                    "dataset": f"{EV_DATASETS[task]}#{item.group // per}",
                    "query": query,
                    "positive": positive,
                    "query_tcot": item.teacher,
                    "positive_tcot": label_tcot(item.label),
                    "meta": {"noise": item.noise},
                }
            )
    write_jsonl(path, records)
    return path


def write_evidence_benchmark(
    root: str | Path,
    seed: int,
    groups_per_task: int,
    *,
    split: str = "test",
    noise: TeacherNoise = TeacherNoise(),
    geo: EvidenceGeometry = EvidenceGeometry(),
    tasks: tuple[str, ...] = EV_TASKS,
    exclude: Collection[str] = (),
) -> list[Path]:
    """Task folders `root/<task>` (benchmark 'synthetic-evidence'): queries of `groups_per_task` x 4 items over
    the task's label pool (16 labels, global retrieval, hit@1). Each query's meta holds `gt`, `oracle_tcot`,
    `teacher_tcot`, `noise`; meta['tcot'] is the oracle T-CoT (what reasoning='cached' reads; see
    `tcot_variant` for the teacher's). Items whose `evidence_signature` is in `exclude` (e.g. the training and RL
    items of the same seed, `evidence_signatures`) are drawn again, so no test input is a training input."""
    folders = []
    for task in tasks:
        folder = Path(root) / task
        rng = random.Random(f"evidence/{split}/{seed}/{task}")
        teacher_rng = random.Random(f"teacher/{split}/{seed}/{task}")
        items = _make_items(folder, "q", task, groups_per_task, rng, noise, geo, teacher_rng, exclude)
        labels = [" ".join(lab) for lab in ev_labels(task)]
        cands = [
            Item(
                id=lab.replace(" ", "_"),
                text=lab,
                meta={
                    "tcot": label_tcot(lab),
                    "oracle_tcot": label_tcot(lab),
                    "teacher_tcot": label_tcot(lab),
                    "gt": {"kind": "label", "label": lab},
                },
            )
            for lab in labels
        ]
        queries, qrels = [], []
        for i, item in enumerate(items):
            qid = f"q{i:05d}"
            video = VideoRef(id=f"v{i:05d}", frames=item.frames) if item.frames else None
            queries.append(
                Query(
                    id=qid,
                    text=item.text,
                    images=item.images,
                    video=video,
                    meta={
                        "tcot": item.oracle,
                        "oracle_tcot": item.oracle,
                        "teacher_tcot": item.teacher,
                        "noise": item.noise,
                        "gt": item.gt,
                    },
                )
            )
            qrels.append(Qrel(qid, item.label.replace(" ", "_"), 1))
        meta = TaskMeta(
            benchmark="synthetic-evidence",
            task=task,
            modality={"SynCrop": "image", "SynEvent": "video", "SynClause": "text"}[task],
            meta_task="CLS",
            eval_type="global",
            primary_metric="hit@1",
            query_instruction=EV_INSTRUCTIONS[task],
            candidate_instruction=LABEL_INSTRUCTION,
            source={
                "generator": "embedrl.data.synthetic.write_evidence_benchmark",
                "seed": seed,
                "split": split,
                "noise": {"loose": noise.loose, "wrong": noise.wrong},
            },
            version_note="synthetic v2: evidence benchmark (crops, keyframes, keywords)",
        )
        if task == "SynEvent":
            meta.num_frames = geo.num_frames
        write_task(Task(meta, queries, cands, qrels), folder)
        folders.append(folder)
    return folders


def tcot_variant(task_dir: str | Path, out_dir: str | Path, key: str) -> Path:
    """A copy of an evidence task folder whose meta['tcot'] is meta[key] ('teacher_tcot' or 'oracle_tcot'); the
    media are hard-linked (copied where links are impossible)."""
    import os
    import shutil

    from .taskdir import read_task

    task = read_task(task_dir)
    out = Path(out_dir)
    if (Path(task_dir) / "media").is_dir() and not (out / "media").exists():

        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(Path(task_dir) / "media", out / "media", copy_function=link)
    for item in (*task.queries, *task.candidates):
        item.meta = {**item.meta, "tcot": item.meta[key]}
    write_task(task, out)
    return out


def _box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


GRADES = ("exact", "loose", "wrong", "no_cue", "unparsable")


def grade_tcot(gt: dict, tcot: str | None) -> str:
    """How a T-CoT's cue compares with the ground truth: 'exact' (the box is the target's cell, IoU >= 0.7; the
    event frames; the target's words), 'loose' (it holds all of that and more: a larger box around the target,
    extra frames, extra words), 'wrong' (anything else), 'no_cue' (parsed, but no cue of the right kind) or
    'unparsable' (not a T-CoT: `tcot.parse(...).ok` is false)."""
    from ..tcot import parse

    if not tcot:
        return "unparsable"
    result = parse(tcot)
    if not result.ok:
        return "unparsable"
    t = result.tcot
    kind = gt["kind"]
    if kind == "crop":
        if not t.bbox_2d:
            return "no_cue"
        box = list(t.bbox_2d[0])
        target = gt["box"]
        if len(t.bbox_2d) == 1 and _box_iou(box, target) >= 0.7:
            return "exact"
        contains = any(
            b[0] <= target[0] + 20
            and b[1] <= target[1] + 20
            and b[2] >= target[2] - 20
            and b[3] >= target[3] - 20
            for b in t.bbox_2d
        )
        return "loose" if contains else "wrong"
    if kind == "event":
        if not t.key_frames:
            return "no_cue"
        # frames outside the clip show nothing (the Embedder drops them), so they neither help nor count
        chosen = {k for k in t.key_frames if 1 <= k <= len(gt["frames"])}
        if not chosen:
            return "wrong"
        event = set(gt["event_frames"])
        return "exact" if chosen == event else "loose" if event <= chosen else "wrong"
    if not t.text_keywords:
        return "no_cue"
    words = {w for k in t.text_keywords for w in k.lower().split()}
    target = set(gt["keywords"] if kind == "clause" else gt["label"].split())
    return "exact" if words == target else "loose" if target <= words else "wrong"


# ------------------------------------------------------------------------------------ ground-truth judge

_WORD_KIND = {
    **{c: "colour" for c in EV_EVENT_COLORS},
    **{p: "pattern" for p in EV_PATTERNS},
    **{s: "shape" for s in EV_SHAPES},
}


def evidence_facts(gt: dict, tcot: str | None) -> frozenset[str]:
    """What a perfect reader learns from a T-CoT's evidence, using the ground truth of what is drawn where:

    - a box: the colour of every coloured tile it covers (at least half of the tile's cell) and, when the box is
      no larger than 1.5 cells (a crop the Embedder gets at near full resolution), that tile's pattern. Each box
      is read on its own, as the Embedder gets each crop within its own pixel budget: several small boxes
      (e.g. one per cell) show the pattern too, at the price of more crops (graded 'loose');
    - keyframes: the colour of the object in each cited frame;
    - keywords: the colour, shape and pattern words among them.

    A T-CoT that does not parse, or has no cue, gives nothing."""
    from ..tcot import parse

    if not tcot:
        return frozenset()
    result = parse(tcot)
    if not result.ok:
        return frozenset()
    t = result.tcot
    facts: set[str] = set()
    if gt["kind"] == "crop":
        cell = 1000 / gt["grid"]
        for box in t.bbox_2d or ():
            readable = (box[2] - box[0]) * (box[3] - box[1]) <= 1.5 * cell * cell
            for tile in gt["tiles"]:
                tb = tile["box"]
                overlap = max(0.0, min(box[2], tb[2]) - max(box[0], tb[0])) * max(
                    0.0, min(box[3], tb[3]) - max(box[1], tb[1])
                )
                if overlap >= 0.5 * cell * cell and tile["colour"] != "grey":
                    facts.add(f"colour:{tile['colour']}")
                    if readable:
                        facts.add(f"pattern:{tile['pattern']}")
    elif gt["kind"] == "event":
        for k in t.key_frames or ():
            if 1 <= k <= len(gt["frames"]):
                facts.add(f"colour:{gt['frames'][k - 1]['colour']}")
    else:
        for keyword in t.text_keywords or ():
            for word in keyword.lower().split():
                if word in _WORD_KIND:
                    facts.add(f"{_WORD_KIND[word]}:{word}")
    return frozenset(facts)


def _reasoning_of(entry: str) -> str:
    """The reasoning part of a judge prompt entry (`prompts.format_judge_anchor`)."""
    if entry.startswith("Reasoning: "):
        return entry[len("Reasoning: ") :]
    head, sep, tail = entry.partition("\n\nReasoning: ")
    return tail if sep else entry


class GroundTruthJudge:
    """A SYNTHETIC judge for the evidence benchmark, behind the EG-RL judge interface (`Judge.choose`): instead of
    a language model reading the reasoning, it reads each reasoning's evidence with the ground truth
    (`evidence_facts`) and picks the candidate whose facts best match the anchor's (Jaccard overlap; ties broken
    at random, from a generator seeded with `seed` and the prompt itself, so the same prompt gets the same verdict
    in a resumed run). It is what a judge that could see the evidence perfectly would answer; it is not a model
    and is only defined for items that carry `meta['gt']` (the demo's data)."""

    reads_items = True
    name = "ground-truth synthetic judge"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.calls = 0

    def choose(
        self, anchors, candidate_lists, *, anchor_items=None, candidate_items=None
    ) -> list[int | None]:
        if anchor_items is None or candidate_items is None:
            raise ValueError("the ground-truth judge needs the items (anchor_items=, candidate_items=)")
        self.calls += 1
        choices: list[int | None] = []
        for anchor, candidates, item, others in zip(anchors, candidate_lists, anchor_items, candidate_items):
            gt = (item.meta or {}).get("gt")
            if gt is None or not candidates:
                choices.append(None)
                continue
            mine = evidence_facts(gt, _reasoning_of(anchor))
            scores = []
            for text, other in zip(candidates, others):
                theirs = evidence_facts(
                    (other.meta or {}).get("gt") or {"kind": "label"}, _reasoning_of(text)
                )
                union = mine | theirs
                scores.append(len(mine & theirs) / len(union) if union else 0.0)
            best = max(scores)
            tied = [i for i, v in enumerate(scores) if v == best]
            rng = random.Random("\x00".join([str(self.seed), anchor, *candidates]))
            choices.append(rng.choice(tied) + 1)
        return choices
