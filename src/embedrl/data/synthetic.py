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
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .items import Item, Query, VideoRef
from .taskdir import Qrel, Task, TaskMeta, write_task

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (230, 200, 40), "purple": (140, 60, 180), "orange": (240, 140, 30),
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
    return [round(x1 * 1000 / width), round(y1 * 1000 / height), round(x2 * 1000 / width),
            round(y2 * 1000 / height)]


# ---------------------------------------------------------------------------------------- oracle T-CoTs


def _tcot(thinking: str, cue: dict, rethink: str, answer: str) -> str:
    return (f"<thinking>{thinking} {json.dumps(cue)}</thinking>"
            f"<rethink>{rethink}</rethink><answer>{answer}</answer>")


def teacher_text_tcot(text: str, keywords: list[str]) -> str:
    return _tcot(f"The text asks for {text}.", {"text_keywords": keywords},
                 "Colour, shape and size decide the match.", text)


def teacher_image_tcot(shapes: list[Shape], size: int) -> str:
    boxes = [to_relative(s.box, size, size) for s in shapes]
    return _tcot(f"The image shows {caption(shapes)}.", {"bbox_2d": boxes},
                 "The boxed shapes carry the colour and size.", caption(shapes))


def teacher_video_tcot(phrase: str, direction: str, num_frames: int) -> str:
    frames = sorted({1, (num_frames + 1) // 2, num_frames})
    return _tcot(f"A {phrase} moves {direction} across the frames.", {"key_frames": frames},
                 "The first and last frames show where the motion starts and ends.",
                 f"a {phrase} moving {direction}")


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
    return TaskMeta(benchmark="synthetic", task=task, modality=modality, meta_task=meta_task,
                    eval_type=eval_type, primary_metric=metric, query_instruction=q_inst,
                    candidate_instruction=c_inst, source={"generator": "embedrl.data.synthetic"},
                    version_note="synthetic v1: PIL shapes, moving shapes, rendered word pages")


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
        queries.append(Query(id=f"q{i:05d}", text=cap, meta={"tcot": teacher_text_tcot(cap, keywords_of(shapes))}))
        cands.append(Item(id=f"c{i:05d}", images=[rel], meta={"tcot": teacher_image_tcot(shapes, size)}))
        qrels.append(Qrel(f"q{i:05d}", f"c{i:05d}", 1))
    meta = _meta("SynT2I", "image", "RET", "global", "hit@1",
                 "Find me an everyday image that matches the given caption:", "Represent the given image.")
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
        cands.append(Item(id=f"c{i:05d}", text=cap, meta={"tcot": teacher_text_tcot(cap, keywords_of(shapes))}))
        qrels.append(Qrel(f"q{i:05d}", f"c{i:05d}", 1))
    meta = _meta("SynI2T", "image", "RET", "global", "hit@1",
                 "Find an image caption describing the given everyday image.", "Represent the given text.")
    task = Task(meta, queries, cands, qrels)
    write_task(task, root)
    return task


def make_cls(root: Path, rng: random.Random, n: int, size: int = 128) -> Task:
    """Local task: name the colour and shape of the single object among 6 labels (1 right, 5 wrong)."""
    media = _MediaWriter(root)
    labels = [f"{c} {s}" for c in COLORS for s in SHAPES]
    cands = [Item(id=lab.replace(" ", "_"), text=lab,
                  meta={"tcot": teacher_text_tcot(lab, lab.split())}) for lab in labels]
    queries, qrels = [], []
    for i in range(n):
        shapes = random_scene(rng, size, max_objects=1)
        label = f"{shapes[0].color} {shapes[0].shape}"
        rel = media.image(draw_scene(shapes, size), f"media/images/{i:05d}.png")
        wrong = rng.sample([lab for lab in labels if lab != label], 5)
        options = wrong + [label]
        rng.shuffle(options)
        queries.append(Query(id=f"q{i:05d}", images=[rel], candidate_ids=[o.replace(" ", "_") for o in options],
                             meta={"tcot": teacher_image_tcot(shapes, size)}))
        qrels.append(Qrel(f"q{i:05d}", label.replace(" ", "_"), 1))
    meta = _meta("SynCLS", "image", "CLS", "local", "hit@1",
                 "Identify the colour and shape of the object in the image.", "Represent the given label.")
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
        queries.append(Query(id=f"q{i:05d}", text=text,
                             meta={"tcot": teacher_text_tcot(text, phrase.split() + [direction])}))
        cands.append(Item(id=f"c{i:05d}", video=VideoRef(id=f"v{i:05d}", frames=rels),
                          meta={"tcot": teacher_video_tcot(phrase, direction, num_frames)}))
        qrels.append(Qrel(f"q{i:05d}", f"c{i:05d}", 1))
        i += 1
    meta = _meta("SynT2V", "video", "RET", "global", "hit@1",
                 "Find a video that contains the following visual content:",
                 "Understand the content of the provided video.")
    meta.num_frames = num_frames  # every clip has exactly this many frames, and the teacher cites them by index
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
            cands.append(Item(id=cid, images=[rel], meta={"tcot": _tcot(
                f"The page lists {', '.join(words)}.", {"bbox_2d": [box]}, "The words are the content.",
                " ".join(words))}))
            doc_pages.append((cid, words))
        target_cid, words = doc_pages[rng.randrange(pages_per_doc)]
        pair = rng.sample(words, 2)
        qid = f"q{d:04d}"
        text = f"which page mentions {pair[0]} and {pair[1]}?"
        queries.append(Query(id=qid, text=text, meta={"tcot": teacher_text_tcot(text, pair)}))
        for cid, _ in doc_pages:
            qrels.append(Qrel(qid, cid, 2 if cid == target_cid else 1))
    meta = _meta("SynDoc", "visdoc", "VDR", "global", "ndcg_linear@5",
                 "Find a document image that matches the given query:",
                 "Understand the content of the provided document image.")
    task = Task(meta, queries, cands, qrels)
    write_task(task, root)
    return task


def write_benchmark(root: str | Path, seed: int = 0, n: int = 40, num_frames: int = 8) -> list[Path]:
    """Write the five synthetic tasks under `root/synthetic/<task>`; return their folders."""
    base = Path(root) / "synthetic"
    rng = random.Random(seed)
    makers = [("SynT2I", lambda r: make_t2i(r, rng, n)), ("SynI2T", lambda r: make_i2t(r, rng, n)),
              ("SynCLS", lambda r: make_cls(r, rng, n)), ("SynT2V", lambda r: make_t2v(r, rng, n, num_frames)),
              ("SynDoc", lambda r: make_doc(r, rng, max(2, n // 3)))]
    folders = []
    for name, make in makers:
        folder = base / name
        make(folder)
        folders.append(folder)
    return folders


# ------------------------------------------------------------------------------------- training pairs


def write_training_pairs(path: str | Path, seed: int = 1, n: int = 120, num_frames: int = 8,
                         datasets: tuple[str, ...] = ("syn_t2i", "syn_i2t", "syn_t2v")) -> Path:
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
                query = {"id": f"{dataset}-{i}-q", "text": text,
                         "instruction": "Find a video that contains the following visual content:"}
                positive = {"id": f"{dataset}-{i}-p", "video": {"frames": rels},
                            "instruction": "Understand the content of the provided video."}
                q_tcot = teacher_text_tcot(text, phrase.split() + [direction])
                p_tcot = teacher_video_tcot(phrase, direction, num_frames)
            else:
                shapes = random_scene(rng, 128)
                rel = media.image(draw_scene(shapes, 128), f"media/{dataset}/{i:05d}.png")
                cap = caption(shapes)
                text_item = {"text": cap}
                image_item = {"images": [rel]}
                if dataset == "syn_t2i":
                    query = {"id": f"{dataset}-{i}-q", **text_item,
                             "instruction": "Find me an everyday image that matches the given caption:"}
                    positive = {"id": f"{dataset}-{i}-p", **image_item, "instruction": "Represent the given image."}
                    q_tcot = teacher_text_tcot(cap, keywords_of(shapes))
                    p_tcot = teacher_image_tcot(shapes, 128)
                else:
                    query = {"id": f"{dataset}-{i}-q", **image_item,
                             "instruction": "Find an image caption describing the given everyday image."}
                    positive = {"id": f"{dataset}-{i}-p", **text_item, "instruction": "Represent the given text."}
                    q_tcot = teacher_image_tcot(shapes, 128)
                    p_tcot = teacher_text_tcot(cap, keywords_of(shapes))
            records.append({"dataset": dataset, "query": query, "positive": positive,
                            "query_tcot": q_tcot, "positive_tcot": p_tcot})
    write_jsonl(path, records)
    return path
