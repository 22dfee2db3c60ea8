"""The encode road's seams: one frame count for both models (encode, eval, RL reward), media loaded once per
unique item, one Reasoner prompt builder for inference and RL, and an import graph without circles or
upward imports."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import embedrl
from embedrl import pipeline
from embedrl.data.items import Item, VideoRef
from embedrl.models.embedder import Embedder
from embedrl.models.protocols import EmbedderLike, ReasonerLike
from embedrl.models.reasoner import Reasoner
from embedrl.pipeline import EncodeSettings, encode_detailed

NUM_SOURCE_FRAMES = 12
FRAMES = 4  # not the Embedder's saved 8


def _video(tmp_path: Path, name: str = "v") -> Item:
    """A video whose frame i is filled with the value 10 * i, so a frame tells which source frame it is."""
    folder = tmp_path / name
    folder.mkdir()
    for i in range(NUM_SOURCE_FRAMES):
        Image.new("RGB", (64, 48), (10 * i, 0, 0)).save(folder / f"{i:03d}.png")
    return Item(id=name, text="a ball", video=VideoRef(path=str(folder)))


def _source_index(frame: Image.Image) -> int:
    return frame.getpixel((0, 0))[0] // 10


EXPECTED = [0, 3, 7, 11]  # np.linspace(0, 11, 4).astype(int)


class SpyReasoner:
    """A Reasoner double (the ReasonerLike protocol) that records the frames it is shown."""

    name = "spy"

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def cache_identity(self) -> dict:
        return {"backend": "spy", "num_frames": 8}

    def reason(self, items, side, target_modality=None, media=None):
        self.seen.extend([_source_index(f) for f in frames] for _, frames in media)
        return [
            '<thinking>x {"key_frames": [2, 3]}</thinking>\n<rethink>r</rethink>\n<answer>a</answer>'
        ] * len(items)


@pytest.fixture()
def embedder(tiny_qwen3_embedder) -> Embedder:
    return Embedder.from_pretrained(tiny_qwen3_embedder)


def _spy_embedder(embedder: Embedder, monkeypatch) -> list[list[int]]:
    seen: list[list[int]] = []
    real = embedder.build_input

    def build_input(item, tcot=None, media=None):
        built = real(item, tcot, media=media)
        if media is not None:
            seen.append([_source_index(f) for f in media[1]])
        # keyframes point into the same frames: #2 and #3 (1-based) are source frames 3 and 7
        keyframes = [p.frame_index for p in built.placements if p.role == "keyframe"]
        if keyframes:
            seen.append([EXPECTED[i] for i in keyframes])
        return built

    monkeypatch.setattr(embedder, "build_input", build_input)
    return seen


def test_protocols_describe_the_real_models(embedder) -> None:
    assert isinstance(embedder, EmbedderLike)
    assert isinstance(SpyReasoner(), ReasonerLike)


def test_encode_shows_both_models_the_same_frames(embedder, tmp_path: Path, monkeypatch) -> None:
    reasoner = SpyReasoner()
    seen = _spy_embedder(embedder, monkeypatch)
    result = encode_detailed([_video(tmp_path)], embedder, reasoner, num_frames=FRAMES, progress=False)
    assert not result.failures and result.settings["frames_per_video"] == FRAMES
    assert reasoner.seen == [EXPECTED]
    assert seen == [EXPECTED, [3, 7]]


def test_eval_shows_both_models_the_tasks_frames(embedder, tmp_path: Path, monkeypatch) -> None:
    from embedrl.data.items import Query
    from embedrl.data.taskdir import Qrel, Task, TaskMeta, write_task
    from embedrl.eval.runner import EvalSettings, evaluate_task

    root = tmp_path / "task"
    (root / "media").mkdir(parents=True)
    _video(root / "media")
    meta = TaskMeta(
        benchmark="test",
        task="T2V",
        modality="video",
        eval_type="global",
        primary_metric="hit@1",
        num_frames=FRAMES,
    )
    task = Task(
        meta, [Query(id="q", text="a ball")], [Item(id="c", video=VideoRef(path="media/v"))], [Qrel("q", "c")]
    )
    write_task(task, root)
    reasoner = SpyReasoner()
    seen = _spy_embedder(embedder, monkeypatch)
    result = evaluate_task(
        root, embedder, reasoner, out_dir=tmp_path / "out", settings=EvalSettings(progress=False)
    )
    assert result["run"]["frames_per_video"] == FRAMES
    assert [EXPECTED] == [s for s in reasoner.seen if s]
    assert EXPECTED in seen and [3, 7] in seen


def test_the_rl_reward_embeds_the_frames_the_rollout_prompt_showed(
    embedder, tmp_path: Path, monkeypatch
) -> None:
    from embedrl.train.egrl import EGRLConfig, EGRLReward, RLPromptDataset, local_embed_fn
    from embedrl.train.pairs import TrainingPair

    pairs = [
        TrainingPair("d", _video(tmp_path, f"v{k}"), Item(id=f"p{k}", text=f"caption {k}")) for k in range(2)
    ]
    dataset = RLPromptDataset(pairs, num_frames=FRAMES)
    row = dataset[0]
    assert [_source_index(f) for f in row["images"]] == EXPECTED
    seen = _spy_embedder(embedder, monkeypatch)
    config = EGRLConfig(
        output_dir=str(tmp_path / "rl"),
        pairs_per_step=2,
        num_generations=2,
        process_weight=0.0,
        use_cpu=True,
        report_to="none",
        num_frames=FRAMES,
    )
    reward = EGRLReward(dataset, local_embed_fn(embedder), config)
    tcot = '<thinking>x {"key_frames": [2, 3]}</thinking>\n<rethink>r</rethink>\n<answer>a</answer>'
    reward.score(
        [tcot, "<thinking>y</thinking>", tcot, "z"],
        [0, 0, 1, 1],
        ["query", "positive"] * 2,
        ["video", "text"] * 2,
        [FRAMES] * 4,
    )
    assert seen.count(EXPECTED) == 2 and seen.count([3, 7]) == 2


def test_media_are_loaded_once_per_unique_item(embedder, tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    real = pipeline.load_item_media

    def counting(item, num_frames):
        calls.append(item.id)
        return real(item, num_frames)

    monkeypatch.setattr(pipeline, "load_item_media", counting)
    video = _video(tmp_path)
    image = tmp_path / "i.png"
    Image.new("RGB", (40, 30), "blue").save(image)
    items = [
        video,
        Item(id="img", images=[str(image)]),
        Item(id="img-again", images=[str(image)]),
        Item(id="text", text="no media"),
    ]
    result = encode_detailed(items, embedder, SpyReasoner(), num_frames=FRAMES, progress=False)
    assert not result.failures
    # once each: the second image item has the same content, so it shares the first one's computation
    assert sorted(calls) == ["img", "text", "v"]


def test_encode_settings_are_checked_and_recorded() -> None:
    with pytest.raises(embedrl.errors.EmbedRLError, match="num_frames"):
        EncodeSettings(num_frames=0)
    with pytest.raises(embedrl.errors.EmbedRLError, match="reasoning"):
        EncodeSettings(reasoning="sometimes")
    with pytest.raises(TypeError, match="unknown encode setting"):
        pipeline.settings_from(None, {"frames": 4})


def test_inference_and_rl_build_the_same_reasoner_prompt(tmp_path: Path) -> None:
    from embedrl.train.egrl import RLPromptDataset
    from embedrl.train.pairs import TrainingPair

    video = _video(tmp_path)
    caption = Item(id="c", text="a ball rolling", instruction="Find the video:")
    dataset = RLPromptDataset([TrainingPair("d", caption, video)], num_frames=FRAMES)
    reasoner = Reasoner(backend=None, num_frames=FRAMES)  # type: ignore[arg-type] - only the prompt is built
    for row, (item, side, target) in zip(
        (dataset[0], dataset[1]), ((caption, "query", "video"), (video, "candidate", None))
    ):
        images, frames = pipeline.load_item_media(item, FRAMES)
        conversation = reasoner.conversation(item, side, target, (images, frames))
        text = [c["text"] for c in conversation[0]["content"] if c["type"] == "text"]
        assert text == [row["prompt"][0]["content"]]
        assert len(row["images"]) == len(images) + len(frames)


def _imports() -> dict[str, set[str]]:
    root = Path(embedrl.__file__).parent
    modules = {}
    for file in root.rglob("*.py"):
        parts = list(file.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom):
                base = (
                    ".".join(
                        package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                    )
                    if node.level
                    else (node.module or "")
                )
                candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets.update(c for c in candidates if c in modules and c != name)
        graph[name] = targets
    return graph


# Lower layers never import higher ones. A package's modules share its layer.
LAYERS = [
    {"embedrl.errors", "embedrl.fileio", "embedrl.runtime", "embedrl.tcot", "embedrl"},
    {"embedrl.data", "embedrl.prompts", "embedrl.rewards"},
    {"embedrl.models"},
    {"embedrl.pipeline"},
    {"embedrl.eval", "embedrl.train", "embedrl.serve", "embedrl.index", "embedrl.annotate"},
    {"embedrl.demo", "embedrl.commands", "embedrl.cli", "embedrl.__main__"},
]


def _layer(module: str) -> int:
    for depth, layer in enumerate(LAYERS):
        if (
            any(module == p or module.startswith(p + ".") for p in layer if p != "embedrl")
            or module == "embedrl"
        ):
            return depth
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_no_import_circles() -> None:
    graph = _imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_upward_imports() -> None:
    upward = [f"{m} -> {t}" for m, targets in _imports().items() for t in targets if _layer(t) > _layer(m)]
    assert not upward, upward


def test_settings_objects_are_plain_values() -> None:
    settings = EncodeSettings(num_frames=4, cache_dir="c")
    assert settings.cache_dir == Path("c") and np.isscalar(settings.num_frames)


def test_one_bad_tcot_fails_its_item_only(embedder) -> None:
    huge = '<thinking>x {"bbox_2d": [[0, 0, 500, 1e308]]}</thinking><rethink>r</rethink><answer>a</answer>'
    items = [Item(id="fine", text="a ball"), Item(id="odd", text="a cube")]
    result = encode_detailed(items, embedder, tcots=[None, huge], progress=False)
    assert not result.failures and np.isfinite(result.vectors).all()

    def broken(item, tcot=None, media=None):
        if item.id == "odd":
            raise ValueError("cannot build")
        return Embedder.build_input(embedder, item, tcot, media)

    embedder.build_input = broken  # an input error of one item
    result = encode_detailed(items, embedder, reasoning="off", progress=False)
    assert [(f.id, f.stage) for f in result.failures] == [("odd", "input")]
    assert np.isfinite(result.vectors[0]).all()


def test_a_window_lets_go_of_media_after_their_last_use(embedder, tmp_path: Path, monkeypatch) -> None:
    held: list[int] = []
    real_get = pipeline._MediaWindow.get

    def spying_get(self, item):
        value = real_get(self, item)
        held.append(len(self.loaded))
        return value

    monkeypatch.setattr(pipeline._MediaWindow, "get", spying_get)
    items = [_video(tmp_path, f"v{k}") for k in range(6)]
    encode_detailed(items, embedder, SpyReasoner(), num_frames=FRAMES, batch_size=2, window=2, progress=False)
    # a window's items wait between the Reasoner and the Embedder, then go: never more than a window at once
    assert held and max(held) <= 2
    held.clear()
    encode_detailed(
        items,
        embedder,
        reasoning="off",
        num_frames=FRAMES,
        batch_size=2,
        progress=False,
        cache_dir=tmp_path / "c",
    )
    assert max(held) == 0  # without a Reasoner each item's media is used once and dropped at once


def test_a_lone_surrogate_is_an_item_problem_not_a_crash(tmp_path: Path) -> None:
    from embedrl.data.items import content_key, parse_item

    problems: list = []
    assert (
        parse_item({"id": "a", "text": "broken \ud800 text"}, file="items.jsonl", line=3, problems=problems)
        is None
    )
    assert "lone surrogate" in str(problems[0]) and "items.jsonl:3" in str(problems[0])
    assert content_key(Item(id="a", text="broken \ud800 text"))  # hashing never raises


def test_several_images_take_keyframes_as_the_official_code_does(embedder, tmp_path: Path) -> None:
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (64, 48), (10 * k, 0, 0)).save(paths[-1])
    tcot = '<thinking>x {"key_frames": [3, 1]}</thinking>\n<rethink>r</rethink>\n<answer>a</answer>'
    built = embedder.build_input(Item(id="album", text="t", images=[str(p) for p in paths]), tcot)
    assert [(p.role, p.frame_index) for p in built.placements if p.role == "keyframe"] == [
        ("keyframe", 2),
        ("keyframe", 0),
    ]


def test_a_legacy_config_keeps_its_frame_minimum(tmp_path: Path) -> None:
    import json

    from embedrl.models.embedder_input import EMBEDDER_CONFIG_FILE, EmbedderConfig

    (tmp_path / EMBEDDER_CONFIG_FILE).write_text(json.dumps({"image_min_pixels": 131072, "num_frames": 8}))
    config = EmbedderConfig.load(tmp_path)
    assert config.frame_min_pixels == 131072 and config.evidence_style == "embedrl"


def test_a_stale_tcot_cache_is_named_and_the_other_side_is_not(embedder, tmp_path: Path, caplog) -> None:
    items = [Item(id="t", text="a ball")]
    cache = tmp_path / "cache"
    encode_detailed(items, embedder, SpyReasoner(), side="candidate", cache_dir=cache, progress=False)
    with caplog.at_level("WARNING", logger="embedrl.pipeline"):
        encode_detailed(items, embedder, SpyReasoner(), side="query", cache_dir=cache, progress=False)
    assert not caplog.records  # the candidate-side records are not stale, only other

    class OtherSettings(SpyReasoner):
        def cache_identity(self) -> dict:
            return {"backend": "spy", "temperature": 0.7}

    with caplog.at_level("WARNING", logger="embedrl.pipeline"):
        encode_detailed(items, embedder, OtherSettings(), side="query", cache_dir=cache, progress=False)
    assert any("another Reasoner" in r.getMessage() for r in caplog.records)
