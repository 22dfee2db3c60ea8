"""`embedrl eval`: task folders encoded and scored end to end, skipped when done, failures isolated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from embedrl import pipeline as pipeline_module
from embedrl.cli import main
from embedrl.data.synthetic import write_benchmark
from embedrl.eval.runner import EvalSettings, TaskFailed, evaluate_task
from embedrl.models.embedder import Embedder


def test_eval_cli_scores_resumes_and_isolates_failures(tiny_qwen3_embedder, tmp_path: Path, capsys) -> None:
    tasks = write_benchmark(tmp_path / "bench", n=6)
    picked = [t for t in tasks if t.name in ("SynT2I", "SynCLS")]
    out = tmp_path / "results"
    args = [
        "eval",
        "--task",
        *map(str, picked),
        "--embedder",
        str(tiny_qwen3_embedder),
        "--reasoning",
        "cached",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    result = json.loads((out / "synthetic" / "SynT2I.json").read_text())
    assert result["num_queries"] == 6 and 0.0 <= result["main_score"] <= 1.0
    assert result["run"]["reasoning"] == "cached" and result["run"]["unparsed_tcots"] == 0
    stamp = (out / "synthetic" / "SynT2I.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished tasks are skipped
    assert (out / "synthetic" / "SynT2I.json").stat().st_mtime_ns == stamp
    assert "(kept: an identical earlier run's result)" in capsys.readouterr().out

    # another model (or the same task name from another folder) must not be shown the stored score
    other = main(
        [
            "eval",
            "--task",
            str(picked[0]),
            "--embedder",
            str(tiny_qwen3_embedder),
            "--reasoning",
            "off",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert (
        other == 1
        and "holds the result of a different run (its reasoning differs)" in capsys.readouterr().err
    )
    assert (out / "synthetic" / "SynT2I.json").stat().st_mtime_ns == stamp
    twin = tmp_path / "twin"
    shutil.copytree(picked[0], twin)  # same benchmark and task name, other content
    (twin / "qrels.jsonl").write_text(
        "\n".join(sorted((picked[0] / "qrels.jsonl").read_text().splitlines(), reverse=True)) + "\n"
    )
    args_twin = [*args[:2], str(twin), *args[2 + len(picked) :]]
    assert main(args_twin) == 1 and "its task differs" in capsys.readouterr().err

    broken = next(t for t in tasks if t.name == "SynI2T")
    first_image = sorted((broken / "media" / "images").iterdir())[0]
    first_image.write_bytes(b"not an image")
    code = main(
        [
            "eval",
            "--task",
            str(broken),
            str(next(t for t in tasks if t.name == "SynDoc")),
            "--embedder",
            str(tiny_qwen3_embedder),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "SynI2T: 1 item(s) could not be encoded" in err and first_image.name in err
    assert (out / "synthetic" / "SynDoc.json").is_file()  # the other task still ran
    assert not (out / "synthetic" / "SynI2T.json").exists()


def test_videos_are_sampled_with_the_tasks_frame_count(
    tiny_qwen3_embedder, tmp_path: Path, monkeypatch
) -> None:
    task = next(t for t in write_benchmark(tmp_path / "bench", n=3, num_frames=6) if t.name == "SynT2V")
    assert json.loads((task / "task.json").read_text())["num_frames"] == 6
    seen: list[int] = []
    real = pipeline_module.load_item_media
    monkeypatch.setattr(
        pipeline_module,
        "load_item_media",
        lambda item, num_frames: seen.append(num_frames) or real(item, num_frames),
    )
    embedder = Embedder.from_pretrained(tiny_qwen3_embedder)
    assert embedder.config.num_frames == 8
    out = tmp_path / "results"
    result = evaluate_task(
        task, embedder, out_dir=out, settings=EvalSettings(reasoning="cached", progress=False)
    )
    assert result["run"]["frames_per_video"] == 6
    assert seen and set(seen) == {6}
    assert embedder.config.num_frames == 8  # the model's own setting is back after the task
    first_identity = result["run"]["identity"]

    # a result computed with one frame count is not reused for another
    spec = json.loads((task / "task.json").read_text())
    (task / "task.json").write_text(json.dumps({**spec, "num_frames": 4}))
    with pytest.raises(TaskFailed, match="its task, frames_per_video differ"):
        evaluate_task(task, embedder, out_dir=out, settings=EvalSettings(reasoning="cached", progress=False))
    seen.clear()
    result = evaluate_task(
        task, embedder, out_dir=out, settings=EvalSettings(reasoning="cached", progress=False, overwrite=True)
    )
    assert result["run"]["frames_per_video"] == 4 and set(seen) == {4}
    # the frame count is its own part of the identity (and of every vector cache key): 6-frame vectors not reused
    assert result["run"]["identity"]["frames_per_video"] != first_identity["frames_per_video"]
    assert result["run"]["identity"]["embedder"] == first_identity["embedder"]


def test_text_and_image_tasks_leave_the_frame_count_alone(tiny_qwen3_embedder, tmp_path: Path) -> None:
    task = next(t for t in write_benchmark(tmp_path / "bench", n=3) if t.name == "SynT2I")
    embedder = Embedder.from_pretrained(tiny_qwen3_embedder)
    result = evaluate_task(
        task,
        embedder,
        out_dir=tmp_path / "results",
        settings=EvalSettings(reasoning="cached", progress=False),
    )
    assert result["run"]["frames_per_video"] is None


def test_a_media_file_edited_in_place_is_a_different_task(tiny_qwen3_embedder, tmp_path: Path) -> None:
    task = next(t for t in write_benchmark(tmp_path / "bench", n=3) if t.name == "SynT2I")
    embedder = Embedder.from_pretrained(tiny_qwen3_embedder)
    settings = EvalSettings(reasoning="cached", progress=False)
    out = tmp_path / "results"
    first = evaluate_task(task, embedder, out_dir=out, settings=settings)
    assert evaluate_task(task, embedder, out_dir=out, settings=settings)["run"]["reused"] is True
    images = sorted((task / "media").rglob("*.png"))
    images[0].write_bytes(images[1].read_bytes())  # still a valid picture, but another one
    with pytest.raises(TaskFailed, match="its task differs"):
        evaluate_task(task, embedder, out_dir=out, settings=settings)
    again = evaluate_task(
        task, embedder, out_dir=out, settings=EvalSettings(reasoning="cached", progress=False, overwrite=True)
    )
    assert again["run"]["identity"]["task"] != first["run"]["identity"]["task"]
