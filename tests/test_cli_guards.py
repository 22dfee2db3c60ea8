"""The CLI refuses, before any work, an output that would replace one of its inputs, an output location it
cannot write, and argument values that cannot work; a full disk at write time is one line, not a traceback."""

from __future__ import annotations

import argparse
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from embedrl.cli import main
from embedrl.data.items import Item, Query
from embedrl.data.taskdir import Qrel, Task, TaskMeta, write_task

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of the in-process CLI; argparse errors exit through SystemExit."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def error_line(err: str, *needles: str) -> str:
    """The one `error:` line of stderr, which must name every needle; never a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


@pytest.fixture
def no_models(monkeypatch):
    """Loading or building a model fails the test: every refusal here must come first."""
    from embedrl.models import embedder, reasoner, tiny

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(embedder.Embedder, "from_pretrained", staticmethod(loaded))
    monkeypatch.setattr(reasoner.Reasoner, "from_pretrained", staticmethod(loaded))
    monkeypatch.setattr(reasoner.TransformersBackend, "from_pretrained", staticmethod(loaded))
    monkeypatch.setattr(tiny, "make_tiny", loaded)
    return loaded


@pytest.fixture
def no_training(monkeypatch, no_models):
    from embedrl.train import egrl, stage1

    monkeypatch.setattr(stage1, "train_embedder", no_models)
    monkeypatch.setattr(egrl, "train_reasoner", no_models)
    monkeypatch.setattr(egrl, "sft_cold_start", no_models)


def fake_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def items_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"id": "a", "text": "a red circle"}\n{"id": "b", "text": "a blue square"}\n')
    return path


def text_task(root: Path) -> Path:
    meta = TaskMeta(benchmark="TEST", task="t2t", modality="text", eval_type="global", primary_metric="hit@1")
    queries = [Query(id=f"q{i}", text=f"query {i}") for i in range(2)]
    candidates = [Item(id=f"c{i}", text=f"cand {i}") for i in range(3)]
    return write_task(Task(meta, queries, candidates, [Qrel(f"q{i}", f"c{i}") for i in range(2)]), root)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def deny_writes_to(monkeypatch, folder: Path) -> None:
    """Make `folder` unwritable: chmod where that binds, else (root ignores modes) os.access says no."""
    if AS_ROOT:
        real_access = os.access
        denied = os.path.realpath(folder)

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and os.path.realpath(path) == denied:
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    else:
        folder.chmod(0o555)


# ------------------------------------------------------------------------- A. outputs never replace inputs


@pytest.mark.parametrize(
    "case",
    ["same", "dot-slash", "symlink", "failures", "tcots", "cache-dir", "in-checkpoint", "is-checkpoint-file"],
)
def test_encode_refuses_an_output_that_is_an_input(case, tmp_path, monkeypatch, capsys, no_models) -> None:
    monkeypatch.chdir(tmp_path)
    items = items_file(tmp_path / "items.jsonl")
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    out, extra, flag = tmp_path / "v.npy", [], "--input"
    if case == "same":
        out = items
    elif case == "dot-slash":
        out = Path("./items.jsonl")
    elif case == "symlink":
        out = tmp_path / "link.npy"
        out.symlink_to(items)
    elif case == "failures":
        items = items_file(tmp_path / "v.npy.failures.jsonl")
    elif case == "tcots":
        items = items_file(tmp_path / "v.npy.tcots.jsonl")
    elif case == "cache-dir":
        extra = ["--cache-dir", "items.jsonl"]
    elif case == "in-checkpoint":
        out, flag = ckpt / "vectors.npy", "--embedder"
    else:
        out, flag = ckpt / "model.safetensors", "--embedder"
    before = snapshot(tmp_path)
    code, err = run(["encode", "--embedder", ckpt, "--input", items, "--out", out, *extra], capsys)
    assert code == 2
    error_line(err, flag)
    assert snapshot(tmp_path) == before


def test_score_refuses_to_write_into_the_task_or_over_its_inputs(tmp_path, capsys) -> None:
    task = text_task(tmp_path / "T")
    np.save(tmp_path / "s.npy", np.eye(2, 3, dtype=np.float32))
    before = snapshot(tmp_path)
    for out, flag in (
        (task / "qrels.jsonl", "--task"),
        (task / "result.json", "--task"),
        (tmp_path / "s.npy", "--scores"),
    ):
        code, err = run(["score", "--task", task, "--scores", tmp_path / "s.npy", "--out", out], capsys)
        assert code == 2
        error_line(err, "--out", flag)
    assert snapshot(tmp_path) == before
    np.save(tmp_path / "q.npy", np.eye(2, 4, dtype=np.float32))
    np.save(tmp_path / "c.npy", np.eye(3, 4, dtype=np.float32))
    before = snapshot(tmp_path)
    code, err = run(
        [
            "score",
            "--task",
            task,
            "--query-emb",
            tmp_path / "q.npy",
            "--cand-emb",
            tmp_path / "c.npy",
            "--out",
            tmp_path / "c.npy",
        ],
        capsys,
    )
    assert code == 2
    error_line(err, "--cand-emb")
    assert snapshot(tmp_path) == before


def test_report_refuses_an_output_among_its_inputs(tmp_path, capsys) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "scores.json").write_text(json.dumps({"ImageNet-1K": 50.0}))
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"ImageNet-1K": 50.0}))
    before = snapshot(tmp_path)
    for extra, needle in (
        (["--out", results / "table.json"], "results"),
        (["--plot", single], "single.json"),
        (["--out", tmp_path / "t.md", "--plot", tmp_path / "t.md"], "--plot"),
    ):
        code, err = run(["report", "--benchmark", "mmeb-v2", results, single, *extra], capsys)
        assert code == 2
        error_line(err, needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["is-task", "in-task", "holds-task", "in-checkpoint"])
def test_eval_refuses_a_results_folder_around_or_inside_an_input(where, tmp_path, capsys, no_models) -> None:
    task = text_task(tmp_path / "tasks" / "T")
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    out = {
        "is-task": task,
        "in-task": task / "results",
        "holds-task": tmp_path / "tasks",
        "in-checkpoint": ckpt / "results",
    }[where]
    before = snapshot(tmp_path)
    code, err = run(["eval", "--task", task, "--embedder", ckpt, "--reasoning", "off", "--out", out], capsys)
    assert code == 2
    error_line(err, "--out", "--embedder" if where == "in-checkpoint" else "--task")
    assert snapshot(tmp_path) == before


def test_convert_refuses_an_output_inside_its_source(tmp_path, capsys) -> None:
    root = tmp_path / "UVRB" / "CRB_G"
    (root / "jsonl").mkdir(parents=True)
    code, err = run(
        ["task", "convert", "uvrb", "--dataset", "CRB_G", "--root", root, "--out", root / "tasks"], capsys
    )
    assert code == 2
    error_line(err, "--out", "--root")
    assert not (root / "tasks").exists()
    records = tmp_path / "records.jsonl"
    records.write_text("{}\n")
    code, err = run(
        [
            "task",
            "convert",
            "mmeb-image",
            "--task",
            "ImageNet-1K",
            "--records",
            records,
            "--images",
            tmp_path,
            "--out",
            tmp_path / "tasks",
        ],
        capsys,
    )
    assert code == 2
    error_line(err, "--out", "--images")


def test_training_refuses_an_output_folder_around_or_inside_an_input(tmp_path, capsys, no_training) -> None:
    model = fake_checkpoint(tmp_path / "model")
    embedder = fake_checkpoint(tmp_path / "embedder")
    pairs = tmp_path / "data" / "pairs.jsonl"
    pairs.parent.mkdir()
    pairs.write_text(json.dumps({"dataset": "d", "query": {"text": "a"}, "positive": {"text": "b"}}) + "\n")
    before = snapshot(tmp_path)
    for out, flag in ((model, "--model"), (model / "run", "--model"), (tmp_path / "data", "--pairs")):
        code, err = run(
            [
                "train",
                "embedder",
                "--model",
                model,
                "--pairs",
                pairs,
                "--out",
                out,
                "--preset",
                "tiny",
                "--cpu",
            ],
            capsys,
        )
        assert code == 2
        error_line(err, "--out", flag)
    for out, flag in ((embedder / "rl", "--embedder"), (tmp_path, "--model")):
        code, err = run(
            [
                "train",
                "reasoner",
                "--model",
                model,
                "--pairs",
                pairs,
                "--out",
                out,
                "--embedder",
                embedder,
                "--preset",
                "tiny",
                "--cpu",
                "--process-weight",
                "0",
            ],
            capsys,
        )
        assert code == 2
        error_line(err, "--out", flag)
    assert snapshot(tmp_path) == before


def test_make_tiny_refuses_a_folder_that_is_not_its_own(tmp_path, monkeypatch, capsys, no_models) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    code, err = run(["models", "make-tiny", "--out", notes], capsys)
    assert code == 2
    error_line(err, "--out", "not empty")
    assert (notes / "todo.txt").read_text() == "keep me"
    real = fake_checkpoint(
        tmp_path / "real"
    )  # a checkpoint make-tiny did not build: random weights would replace it
    code, err = run(["models", "make-tiny", "--out", real], capsys)
    assert code == 2
    error_line(err, "--out")
    assert (real / "model.safetensors").read_bytes() == b"weights"

    built = []
    monkeypatch.setattr(
        "embedrl.models.tiny.make_tiny", lambda family, out, **kw: built.append(out) or Path(out)
    )
    (real / "embedrl_tiny.json").write_text("{}")  # an earlier make-tiny build is rebuilt in place
    assert run(["models", "make-tiny", "--out", real], capsys)[0] == 0
    assert run(["models", "make-tiny", "--out", tmp_path / "new"], capsys)[0] == 0
    assert [Path(p) for p in built] == [real, tmp_path / "new"]


# ----------------------------------------------------- B. unwritable outputs and full disks: one line, early


UNWRITABLE = "/proc/version/out"  # below a file of /proc: no one, root included, can create it


def test_encode_refuses_an_unwritable_out_before_the_model_loads(
    tmp_path, monkeypatch, capsys, no_models
) -> None:
    items = items_file(tmp_path / "items.jsonl")
    code, err = run(
        [
            "encode",
            "--embedder",
            tmp_path / "no-such-model",
            "--input",
            items,
            "--out",
            f"{UNWRITABLE}/v.npy",
        ],
        capsys,
    )
    assert code == 2
    error_line(err, "--out", "/proc/version")
    locked = tmp_path / "locked"
    locked.mkdir()
    deny_writes_to(monkeypatch, locked)
    code, err = run(
        ["encode", "--embedder", tmp_path / "no-such-model", "--input", items, "--out", locked / "v.npy"],
        capsys,
    )
    assert code == 2
    error_line(err, "--out", str(locked), "not writable")
    code, err = run(
        [
            "encode",
            "--embedder",
            tmp_path / "no-such-model",
            "--input",
            items,
            "--out",
            locked / "new" / "v.npy",
        ],
        capsys,
    )
    assert code == 2
    error_line(err, "--out", str(locked))


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--task", "TASK", "--embedder", "CKPT", "--out", "OUT"],
        ["score", "--task", "TASK", "--scores", "S", "--out", "OUT/r.json"],
        ["report", "--benchmark", "mmeb-v2", "S", "--out", "OUT/t.md"],
        ["report", "--benchmark", "mmeb-v2", "S", "--plot", "OUT/p.png"],
        ["task", "convert", "uvrb", "--dataset", "CRB_G", "--root", "TASK", "--out", "OUT"],
        ["train", "embedder", "--model", "CKPT", "--pairs", "S", "--out", "OUT", "--preset", "tiny", "--cpu"],
        [
            "train",
            "reasoner",
            "--model",
            "CKPT",
            "--pairs",
            "S",
            "--embedder",
            "CKPT",
            "--out",
            "OUT",
            "--cpu",
        ],
        ["models", "make-tiny", "--out", "OUT"],
        ["demo", "--out", "OUT"],
    ],
    ids=lambda argv: "-".join(argv[:2]),
)
def test_every_command_refuses_an_unwritable_out_up_front(
    argv, tmp_path, monkeypatch, capsys, no_training
) -> None:
    import embedrl.demo

    monkeypatch.setattr(embedrl.demo, "run_demo", no_training)
    task = text_task(tmp_path / "T")
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    np.save(tmp_path / "s.npy", np.eye(2, 3, dtype=np.float32))
    names = {"TASK": str(task), "CKPT": str(ckpt), "S": str(tmp_path / "s.npy")}
    for out in (UNWRITABLE, str(tmp_path / "locked" / "sub")):
        (tmp_path / "locked").mkdir(exist_ok=True)
        deny_writes_to(monkeypatch, tmp_path / "locked")
        args = [names.get(a, a.replace("OUT", out)) for a in argv]
        code, err = run(args, capsys)
        assert code == 2, err
        error_line(err, "--plot" if "--plot" in argv else "--out")


def _full_disk(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys) -> None:
    import embedrl.fileio

    task = text_task(tmp_path / "T")
    np.save(tmp_path / "s.npy", np.eye(2, 3, dtype=np.float32))
    monkeypatch.setattr(embedrl.fileio, "write_json", _full_disk)
    monkeypatch.setattr(embedrl.fileio, "write_text", _full_disk)
    out = tmp_path / "results" / "r.json"
    code, err = run(["score", "--task", task, "--scores", tmp_path / "s.npy", "--out", out], capsys)
    assert code not in (0, None)
    error_line(err, str(out), "No space left on device")
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"ImageNet-1K": 50.0}))
    code, err = run(["report", "--benchmark", "mmeb-v2", single, "--out", tmp_path / "t.md"], capsys)
    assert code not in (0, None)
    error_line(err, str(tmp_path / "t.md"), "No space left on device")


def test_a_full_disk_after_encoding_is_one_line(tiny_qwen3_embedder, tmp_path, monkeypatch, capsys) -> None:
    import embedrl.commands.encode
    import embedrl.fileio

    monkeypatch.setattr(embedrl.fileio, "save_npy", _full_disk)
    monkeypatch.setattr(embedrl.commands.encode, "save_npy", _full_disk, raising=False)
    items = items_file(tmp_path / "items.jsonl")
    out = tmp_path / "v.npy"
    code, err = run(
        [
            "encode",
            "--embedder",
            tiny_qwen3_embedder,
            "--input",
            items,
            "--out",
            out,
            "--reasoning",
            "off",
            "--no-progress",
        ],
        capsys,
    )
    assert code not in (0, None)
    error_line(err, str(out), "No space left on device")


# --------------------------------------------------------------------------- C. arguments checked up front


def test_a_garbage_config_json_is_an_argument_error(tmp_path, capsys, no_training) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    listed = fake_checkpoint(tmp_path / "listed")
    (listed / "config.json").write_text("[1, 2]")
    items = items_file(tmp_path / "items.jsonl")
    task = text_task(tmp_path / "T")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n")
    good = fake_checkpoint(tmp_path / "good")
    for argv, flag in (
        (["encode", "--embedder", broken, "--input", items, "--out", tmp_path / "v.npy"], "--embedder"),
        (
            [
                "encode",
                "--embedder",
                good,
                "--reasoner",
                listed,
                "--input",
                items,
                "--out",
                tmp_path / "v.npy",
            ],
            "--reasoner",
        ),
        (["eval", "--task", task, "--embedder", broken, "--out", tmp_path / "r"], "--embedder"),
        (["train", "embedder", "--model", broken, "--pairs", pairs, "--out", tmp_path / "o"], "--model"),
        (
            [
                "train",
                "reasoner",
                "--model",
                good,
                "--pairs",
                pairs,
                "--out",
                tmp_path / "o",
                "--embedder",
                listed,
            ],
            "--embedder",
        ),
        (
            [
                "train",
                "reasoner",
                "--model",
                good,
                "--pairs",
                pairs,
                "--out",
                tmp_path / "o",
                "--embedder",
                good,
                "--judge",
                broken,
            ],
            "--judge",
        ),
    ):
        code, err = run(argv, capsys)
        assert code == 2, argv
        error_line(err, flag, "config.json")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7", "gpu"])
def test_an_unavailable_device_is_an_argument_error(device, tmp_path, capsys, no_models) -> None:
    import torch

    if (
        device.startswith("cuda")
        and torch.cuda.is_available()
        and torch.cuda.device_count() > int((device + ":0").split(":")[1])
    ):
        pytest.skip("this machine has that CUDA device")
    items = items_file(tmp_path / "items.jsonl")
    code, err = run(
        [
            "encode",
            "--embedder",
            fake_checkpoint(tmp_path / "ckpt"),
            "--input",
            items,
            "--out",
            tmp_path / "v.npy",
            "--device",
            device,
        ],
        capsys,
    )
    assert code == 2
    error_line(err, "--device", device)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["encode", "--temperature", "nan"], "--temperature"),
        (["encode", "--temperature", "-1"], "--temperature"),
        (["encode", "--temperature", "inf"], "--temperature"),
        (["encode", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["eval", "--max-new-tokens", "-3"], "--max-new-tokens"),
        (["eval", "--temperature", "-0.5"], "--temperature"),
        (["train-reasoner", "--temperature", "-1"], "--temperature"),
        (["train-reasoner", "--generations", "0"], "--generations"),
        (["train-reasoner", "--max-completion-length", "0"], "--max-completion-length"),
        (["train-reasoner", "--sft-steps", "-1"], "--sft-steps"),
        (["train-reasoner", "--beta", "-1"], "--beta"),
        (["train-embedder", "--max-steps", "0"], "--max-steps"),
        (["train-embedder", "--lora-r", "0"], "--lora-r"),
        (["train-embedder", "--epochs", "nan"], "--epochs"),
        (["train-embedder", "--save-steps", "0"], "--save-steps"),
        (["demo", "--stage1-steps", "0"], "--stage1-steps"),
        (["demo", "--eval-size", "-1"], "--eval-size"),
        (["make-tiny", "--hidden-size", "0"], "--hidden-size"),
        (["make-tiny", "--layers", "-1"], "--layers"),
        (["make-tiny", "--layers", "0"], "--layers"),
    ],
)
def test_values_that_cannot_work_are_argument_errors(
    argv, flag, tmp_path, monkeypatch, capsys, no_training
) -> None:
    import embedrl.demo

    monkeypatch.setattr(embedrl.demo, "run_demo", no_training)
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    items = items_file(tmp_path / "items.jsonl")
    task = text_task(tmp_path / "T")
    command, rest = argv[0], argv[1:]
    base = {
        "encode": ["encode", "--embedder", ckpt, "--input", items, "--out", tmp_path / "v.npy"],
        "eval": ["eval", "--task", task, "--embedder", ckpt, "--out", tmp_path / "r"],
        "train-reasoner": [
            "train",
            "reasoner",
            "--model",
            ckpt,
            "--pairs",
            items,
            "--out",
            tmp_path / "o",
            "--embedder",
            ckpt,
            "--cpu",
            "--preset",
            "tiny",
            "--process-weight",
            "0",
        ],
        "train-embedder": [
            "train",
            "embedder",
            "--model",
            ckpt,
            "--pairs",
            items,
            "--out",
            tmp_path / "o",
            "--cpu",
            "--preset",
            "tiny",
        ],
        "demo": ["demo", "--out", tmp_path / "demo"],
        "make-tiny": ["models", "make-tiny", "--out", tmp_path / "tiny"],
    }[command]
    code, err = run([*base, *rest], capsys)
    assert code == 2
    error_line(err, flag)


def test_make_tiny_refuses_sizes_the_model_cannot_have(tmp_path, capsys, no_models) -> None:
    from embedrl.errors import ConfigError
    from embedrl.models.tiny import TinySize

    code, err = run(["models", "make-tiny", "--out", tmp_path / "tiny", "--hidden-size", "12"], capsys)
    assert code == 2
    error_line(err, "hidden")
    assert not (tmp_path / "tiny").exists()
    for bad in (
        {"num_heads": 0},
        {"vocab_size": -1},
        {"vision_depth": 0},
        {"num_kv_heads": 3},
        {"intermediate_size": 0},
        {"hidden_size": 20},
    ):
        with pytest.raises(ConfigError):
            TinySize(**bad)
    TinySize(hidden_size=8, num_layers=1, intermediate_size=16)  # the smallest model that still works


def test_port_type_takes_only_real_ports() -> None:
    from embedrl.commands._checks import port

    assert port("8000") == 8000 and port("65535") == 65535 and port("0") == 0  # 0: any free port
    for bad in ("70000", "65536", "-5", "http", "80.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="port"):
            port(bad)
    parser = argparse.ArgumentParser(prog="serve")
    parser.add_argument("--port", type=port)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--port", "70000"])
    assert exited.value.code == 2


@pytest.mark.parametrize("port_value", ["70000", "-5"])
def test_serve_refuses_a_port_that_cannot_exist(port_value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--embedder", ".", "--port", port_value])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "port" in err and "Traceback" not in err


def test_a_model_folder_with_a_garbage_config_is_one_model_error(tmp_path: Path) -> None:
    from embedrl.errors import ModelError
    from embedrl.models.backbone import read_config

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_config(tmp_path)


def test_evidence_style_flag_sets_the_embedders_reading(tiny_qwen3_embedder) -> None:
    from embedrl.commands._models import add_model_arguments, load_models

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=2)
    for flag, style in (
        ([], "paper"),
        (["--evidence-style", "official"], "official"),
        (["--evidence-style", "embedrl"], "embedrl"),
    ):
        embedder, _ = load_models(parser.parse_args(["--embedder", str(tiny_qwen3_embedder), *flag]))
        assert embedder.config.evidence_style == style
    with pytest.raises(SystemExit):
        parser.parse_args(["--embedder", str(tiny_qwen3_embedder), "--evidence-style", "vlm2vec"])
