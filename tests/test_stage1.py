"""Stage 1 end to end on a tiny Qwen3-VL: learning, exact resume after a crash, the CLI, data validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from embedrl.cli import main
from embedrl.data.synthetic import write_training_pairs
from embedrl.models.embedder import Embedder
from embedrl.train.pairs import read_pairs, validate_pairs
from embedrl.train.stage1 import EmbedderTrainingConfig, train_embedder


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    return write_training_pairs(root / "pairs.jsonl", n=48, datasets=("syn_t2i", "syn_i2t"))


def _config(out: Path, **overrides) -> EmbedderTrainingConfig:
    values = dict(EmbedderTrainingConfig.PRESETS["tiny"])
    values.update(
        output_dir=str(out), use_cpu=True, report_to="none", disable_tqdm=True, seed=0, max_text_tokens=64
    )
    values.update(overrides)
    return EmbedderTrainingConfig(**values)


def _losses(out: Path) -> tuple[list[float], list[float]]:
    history = json.loads((out / "log_history.json").read_text())
    steps = [h for h in history if "loss" in h and "accuracy" in h]
    return [h["loss"] for h in steps], [h["accuracy"] for h in steps]


def test_thirty_steps_lower_the_loss_and_raise_accuracy(tiny_qwen3_embedder, pairs_file, tmp_path) -> None:
    out = tmp_path / "run"
    final = train_embedder(tiny_qwen3_embedder, read_pairs(pairs_file), _config(out, max_steps=30))
    losses, accuracy = _losses(out)
    assert len(losses) == 30
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8])
    assert np.mean(accuracy[-8:]) > np.mean(accuracy[:8]) + 0.2
    assert (out / "training_curve.png").stat().st_size > 1000
    trained = Embedder.from_pretrained(final)  # a merged, ordinary checkpoint
    assert not hasattr(trained.model, "peft_config")
    assert trained.emb_token_id == Embedder.from_pretrained(tiny_qwen3_embedder).emb_token_id


class _CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_kill_and_resume_gives_the_same_weights(tiny_qwen3_embedder, pairs_file, tmp_path) -> None:
    pairs = read_pairs(pairs_file)
    settings = dict(
        max_steps=20, save_steps=10, sub_batch_size=4, lora_dropout=0.1, merge_lora=False, plot=False
    )
    straight = tmp_path / "straight"
    train_embedder(tiny_qwen3_embedder, pairs, _config(straight, **settings))

    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="killed at step 13"):
        train_embedder(tiny_qwen3_embedder, pairs, _config(crashed, **settings), callbacks=[_CrashAt(13)])
    assert (crashed / "checkpoint-10").is_dir() and not (crashed / "checkpoint-20").exists()
    train_embedder(tiny_qwen3_embedder, pairs, _config(crashed, **settings), resume=True)

    a, b = _adapter(straight / "checkpoint-20"), _adapter(crashed / "checkpoint-20")
    assert a.keys() == b.keys() and a
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    base = _adapter(straight / "checkpoint-10")
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-4  # steps 11-20 did change the weights
    # merge_lora off: the final folder and every checkpoint load directly (base model named by the adapter)
    for folder in (straight / "final", straight / "checkpoint-10"):
        assert Embedder.from_pretrained(folder).adapters == [str(folder)]


def test_cli_train_embedder_and_check_data(tiny_qwen3_embedder, pairs_file, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "train",
            "embedder",
            "--model",
            str(tiny_qwen3_embedder),
            "--pairs",
            str(pairs_file),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--cpu",
            "--no-tcot",
            "--grad-cache-chunk",
            "4",
        ]
    )
    assert code == 0
    assert (out / "final" / "config.json").is_file()
    saved = json.loads((out / "embedrl_training.json").read_text())["config"]
    assert saved["use_tcot"] is False and saved["grad_cache_chunk"] == 4 and saved["max_steps"] == 2
    assert main(["train", "check-data", str(pairs_file)]) == 0
    assert '"syn_t2i"' in capsys.readouterr().out


def test_pairs_validation_names_line_and_field(tmp_path: Path) -> None:
    good = {"dataset": "d", "query": {"text": "a"}, "positive": {"text": "b"}}
    lines = [
        json.dumps(good),
        json.dumps({"query": {"text": "a"}, "positive": {"text": "b"}}),
        json.dumps({"dataset": "d", "query": {"text": "a"}, "positive": {"images": ["nope.png"]}}),
        json.dumps({"dataset": "d", "query": {"text": "a"}}),
        json.dumps({**good, "negatives": [{"text": "n"}], "negative_tcots": ["x", "y"]}),
        json.dumps({**good, "query_tcot": 5, "extra": 1}),
        "{broken",
        json.dumps({**good, "negatives": 0, "meta": 5}),
        json.dumps({**good, "query": {"text": "a", "imagess": ["x.png"]}}),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    problems = [str(p) for p in validate_pairs(path)]
    expected = [
        f"{path}:2: field 'dataset': missing required field",
        f"{path}:3: record '3:positive': field 'positive.images[0]': media file 'nope.png' does not exist",
        f"{path}:4: field 'positive': missing required field",
        f"{path}:5: field 'negative_tcots': must be a list of strings (or nulls), one per negative",
        f"{path}:6: field 'extra': unknown field (typo?)",
        f"{path}:6: field 'query_tcot': expected a string, got int",
    ]
    for line in expected:
        assert line in problems, (line, problems)
    assert any(p.startswith(f"{path}:7: malformed JSON") for p in problems)
    assert f"{path}:8: field 'meta': must be an object" in problems
    assert f"{path}:8: field 'negatives': expected a list of items" in problems
    assert f"{path}:9: field 'query.imagess': unknown field (typo?)" in problems
    assert len(problems) == 10


def test_hard_negatives_flow_through_training(tiny_qwen3_embedder, tmp_path: Path) -> None:
    records = []
    for i in range(8):
        records.append(
            {
                "dataset": "d",
                "query": {"text": f"a red circle number {i}"},
                "positive": {"text": f"red circle {i}"},
                "negatives": [{"text": f"blue square {i}"}],
                "query_tcot": None,
                "positive_tcot": None,
            }
        )
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs = read_pairs(path)
    assert all(len(p.negatives) == 1 for p in pairs)
    from embedrl.train.stage1 import PairCollator

    emb = Embedder.from_pretrained(tiny_qwen3_embedder)
    batch = PairCollator(emb)(pairs[:4])
    assert len(batch["negatives"]) == 4 and len(batch["queries"]) == 4
    out = tmp_path / "run"
    train_embedder(tiny_qwen3_embedder, pairs, _config(out, max_steps=2, sub_batch_size=4, plot=False))
    assert len(_losses(out)[0]) == 2


def test_gradient_checkpointing_trains_the_same_weights(tiny_qwen3_embedder, pairs_file, tmp_path) -> None:
    """The 2b/4b presets turn checkpointing on: it must run (transformers 5 calls it with extra arguments) and
    change only memory, not the result."""
    pairs = read_pairs(pairs_file)
    probes = [_CheckpointingProbe(), _CheckpointingProbe()]
    finals = [
        train_embedder(
            tiny_qwen3_embedder,
            pairs,
            _config(tmp_path / f"gc{flag}", max_steps=2, plot=False, activation_checkpointing=flag),
            callbacks=[probe],
        )
        for flag, probe in zip((False, True), probes)
    ]
    assert [p.enabled for p in probes] == [False, True]  # it really was on (and off)
    plain, checkpointed = (load_file(str(f / "model.safetensors")) for f in finals)
    assert plain.keys() == checkpointed.keys()
    assert max((plain[k] - checkpointed[k]).abs().max().item() for k in plain) < 1e-5


class _CheckpointingProbe(TrainerCallback):
    enabled: bool | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.enabled = bool(model.backbone.is_activation_checkpointing)


class _TemperatureGradientAtStepStart(TrainerCallback):
    def __init__(self) -> None:
        self.seen: list[object] = []
        self.values: list[float] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        log_scale = optimizer.param_groups[-1]["params"][0]
        assert log_scale.numel() == 1
        self.seen.append(None if log_scale.grad is None else float(log_scale.grad))
        self.values.append(float(log_scale.detach()))


def test_learned_temperature_gets_a_fresh_gradient_every_step(
    tiny_qwen3_embedder, pairs_file, tmp_path
) -> None:
    probe = _TemperatureGradientAtStepStart()
    train_embedder(
        tiny_qwen3_embedder,
        read_pairs(pairs_file),
        _config(tmp_path / "lt", max_steps=3, plot=False, learn_temperature=True),
        callbacks=[probe],
    )
    assert probe.seen == [None, None, None]  # not a running sum of every earlier step's gradient
    assert probe.values[-1] != probe.values[0]  # and the temperature is still learned


def test_resume_passes_over_an_incomplete_checkpoint(tmp_path) -> None:
    from embedrl.train.stage1 import latest_checkpoint

    for name, complete in (("checkpoint-5", True), ("checkpoint-10", False), ("checkpoint-7-backup", True)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")
    assert latest_checkpoint(tmp_path / "missing") is None


def test_yaml_values_are_typed_before_anything_loads(tmp_path) -> None:
    import argparse

    from embedrl.commands.train import FLAG_FIELDS, build_config
    from embedrl.errors import ConfigError
    from embedrl.train.egrl import EGRLConfig

    def config(text: str, cls=EmbedderTrainingConfig):
        path = tmp_path / "c.yaml"
        path.write_text("use_cpu: true\n" + text)
        args = argparse.Namespace(preset="tiny", config=str(path), out=str(tmp_path / "o"), use_cpu=True)
        return build_config(cls, args, FLAG_FIELDS if cls is EmbedderTrainingConfig else (), cls.PRESETS)

    parsed = config("learning_rate: 1e-4\nsub_batch_size: '8'\n")  # PyYAML reads 1e-4 as a string
    assert (
        parsed.learning_rate == 1e-4
        and isinstance(parsed.learning_rate, float)
        and parsed.sub_batch_size == 8
    )
    for text, message in (
        ("use_tcot: 'no'\n", "'use_tcot' must be bool \\(write true or false\\)"),
        ("learning_rate: fast\n", "'learning_rate' must be a number"),
        ("sub_batch_size: 0\n", "sub_batch_size must be >= 1"),
        ("temperature: 0\n", "temperature must be > 0"),
        ("seed: 1.5\n", "'seed' must be int"),
        ("learning_rate: .nan\n", "'learning_rate' must be a finite number"),
        ("temperature: 'nan'\n", "'temperature' must be a finite number"),
    ):
        with pytest.raises(ConfigError, match=message):
            config(text)
    assert config("learning_rate: 3e-6\n", EGRLConfig).learning_rate == 3e-6
    # a config written for transformers 4's name still beats the preset (2b turns checkpointing on)
    args = argparse.Namespace(
        preset="2b", config=str(tmp_path / "old.yaml"), out=str(tmp_path / "o"), use_cpu=True
    )
    (tmp_path / "old.yaml").write_text("use_cpu: true\ngradient_checkpointing: false\n")
    assert (
        build_config(
            EmbedderTrainingConfig, args, FLAG_FIELDS, EmbedderTrainingConfig.PRESETS
        ).activation_checkpointing
        is False
    )
    (tmp_path / "old.yaml").write_text("gradient_checkpointing: false\nactivation_checkpointing: true\n")
    with pytest.raises(ConfigError, match="disagree"):
        build_config(EmbedderTrainingConfig, args, FLAG_FIELDS, EmbedderTrainingConfig.PRESETS)
    flags = argparse.Namespace(
        preset="tiny", config=None, out=str(tmp_path / "o"), use_cpu=True, learning_rate=float("nan")
    )
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        build_config(EmbedderTrainingConfig, flags, FLAG_FIELDS, EmbedderTrainingConfig.PRESETS)
    for text, message in (
        ("outcome_tau: 0\n", "outcome_tau must be > 0"),
        ("pairs_per_step: 1\n", "pairs_per_step must be >= 2"),
        ("process_top_k: -1\n", "process_top_k must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            config(text, EGRLConfig)


def test_shipped_configs_load_from_any_directory(tmp_path, monkeypatch) -> None:
    import argparse

    from embedrl.commands.train import FLAG_FIELDS, build_config
    from embedrl.train.sampler import Mixture

    configs = Path(__file__).resolve().parents[1] / "configs" / "train"
    monkeypatch.chdir(tmp_path)
    for name in ("embedder-2b.yaml", "embedder-4b.yaml"):
        args = argparse.Namespace(
            preset=None, config=str(configs / name), out=str(tmp_path / "o"), use_cpu=True
        )
        config = build_config(EmbedderTrainingConfig, args, FLAG_FIELDS, EmbedderTrainingConfig.PRESETS)
        assert config.activation_checkpointing is True
        assert Mixture.from_yaml(config.mixture).weights  # the mixture file is found next to the config


def test_boolean_flags_switch_both_ways_and_gradcache_refuses_deepspeed(tmp_path, monkeypatch) -> None:
    from embedrl.cli import build_parser
    from embedrl.commands.train import FLAG_FIELDS, build_config
    from embedrl.errors import ConfigError

    parser = build_parser()
    base = ["train", "embedder", "--model", "m", "--pairs", "p", "--out", str(tmp_path / "o"), "--cpu"]
    yaml_on = tmp_path / "on.yaml"
    yaml_on.write_text("use_tcot: true\nactivation_checkpointing: true\n")
    args = parser.parse_args(base + ["--config", str(yaml_on), "--no-tcot", "--no-gradient-checkpointing"])
    config = build_config(EmbedderTrainingConfig, args, FLAG_FIELDS, EmbedderTrainingConfig.PRESETS)
    assert config.use_tcot is False and config.activation_checkpointing is False  # flags beat the YAML
    monkeypatch.setenv(
        "ACCELERATE_USE_DEEPSPEED", "true"
    )  # what `accelerate launch` with a DeepSpeed config sets
    with pytest.raises(ConfigError, match="GradCache"):
        build_config(
            EmbedderTrainingConfig,
            parser.parse_args(base + ["--grad-cache-chunk", "4"]),
            FLAG_FIELDS,
            EmbedderTrainingConfig.PRESETS,
        )


def test_check_data_fails_an_empty_file(tmp_path, capsys) -> None:
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("\n")
    assert main(["train", "check-data", str(empty), "--no-media"]) == 1
    assert "no training pairs" in capsys.readouterr().out


def test_check_data_decode_names_the_pair_and_side(tmp_path, capsys) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    lines = [
        {"dataset": "d", "query": {"text": "a"}, "positive": {"images": ["ok.png"]}},
        {
            "dataset": "d",
            "query": {"text": "b"},
            "positive": {"images": ["ok.png"]},
            "negatives": [{"images": ["bad.png"]}],
        },
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["train", "check-data", str(pairs)]) == 0
    capsys.readouterr()
    assert main(["train", "check-data", "--decode", str(pairs)]) == 1
    out = capsys.readouterr().out
    assert f"{pairs}:2: field 'negatives[0].images[0]':" in out and "bad.png" in out


# ------------------------------------------------------------------------------ hard negatives across ranks


def _uneven_negative_pairs(path: Path) -> Path:
    """Eight image-to-text pairs whose hard negatives land unevenly on two ranks: (2, 0) negatives in step 1 and
    (1, 2) in step 2. The sampler is asked where each pair will go, so the layout does not hang on its internals.
    Image queries with text targets also make the groups use different parameters (the vision tower's), which
    DDP's unused-parameter search must see in one forward."""
    from PIL import Image

    from embedrl.train.sampler import SubBatchSampler

    sampler = SubBatchSampler({"d": list(range(8))}, 4, 1, seed=0)
    sampler.set_epoch(0)
    first, second = list(sampler)[:2]
    negatives = {first[0]: 2, second[0]: 1, second[2]: 1, second[3]: 1}
    records = []
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 90)).save(path.parent / f"q{i}.png")
        record = {
            "dataset": "d",
            "query": {"text": f"a circle number {i}", "images": [f"q{i}.png"]},
            "positive": {"text": f"red circle {i}"},
        }
        if negatives.get(i):
            record["negatives"] = [{"text": f"blue square {i} {k}"} for k in range(negatives[i])]
        records.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _uneven_config(out: Path, **overrides) -> EmbedderTrainingConfig:
    # Full fine-tuning with plain SGD keeps the update linear in the gradient, so two ranks compare with one
    # process to float precision (Adam's first steps amplify rounding in near-zero gradients).
    settings = dict(
        max_steps=2, sub_batch_size=4, lora="none", optim="sgd", warmup_steps=0, plot=False, ddp_timeout=60
    )
    settings.update(overrides)
    return _config(out, **settings)


def _train_rank(
    rank: int, world: int, port: int, model: str, pairs: str, out: str, chunk: int | None
) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    train_embedder(model, read_pairs(Path(pairs)), _uneven_config(Path(out), grad_cache_chunk=chunk))


def _run_two_ranks(model: Path, pairs: Path, out: Path, chunk: int | None, timeout: float = 150.0) -> None:
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.spawn(
        _train_rank, args=(2, port, str(model), str(pairs), str(out), chunk), nprocs=2, join=False
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"two-rank training still running after {timeout:.0f} s: the ranks deadlocked")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


@pytest.mark.timeout(400)
def test_two_ranks_with_uneven_hard_negatives_train_like_one_process(
    tiny_qwen3_embedder, tmp_path, caplog
) -> None:
    """2 gloo ranks through the real Trainer (DDP), one holding no hard negatives in a step, GradCache off and
    on: the run completes and its weights equal one process training on the same global batches."""
    import logging

    pairs = _uneven_negative_pairs(tmp_path / "pairs.jsonl")
    with caplog.at_level(logging.INFO, logger="embedrl.train.stage1"):
        single = train_embedder(tiny_qwen3_embedder, read_pairs(pairs), _uneven_config(tmp_path / "single"))
    assert "hard negatives: used; 4 of 8 pairs carry them (5 in all)" in caplog.text
    initial = load_file(str(tiny_qwen3_embedder / "model.safetensors"))
    reference = load_file(str(single / "model.safetensors"))
    update = sum(float((reference[k] - initial[k]).norm() ** 2) for k in reference) ** 0.5
    assert update > 1e-4
    for chunk in (None, 1):
        out = tmp_path / f"ranks-chunk{chunk}"
        _run_two_ranks(tiny_qwen3_embedder, pairs, out, chunk)
        assert _losses(out)[0] == pytest.approx(_losses(tmp_path / "single")[0], rel=1e-5)
        trained = load_file(str(out / "final" / "model.safetensors"))
        assert trained.keys() == reference.keys()
        error = sum(float((trained[k] - reference[k]).norm() ** 2) for k in reference) ** 0.5
        assert error < 1e-3 * update, (chunk, error, update)


def test_hard_negatives_switched_off_train_like_pairs_without_them(
    tiny_qwen3_embedder, tmp_path, caplog
) -> None:
    import logging

    from embedrl.train.stage1 import PairCollator

    pairs = read_pairs(_uneven_negative_pairs(tmp_path / "pairs.jsonl"))
    stripped = [dataclasses.replace(p, negatives=[], negative_tcots=[]) for p in pairs]
    with caplog.at_level(logging.INFO, logger="embedrl.train.stage1"):
        off = train_embedder(
            tiny_qwen3_embedder, pairs, _uneven_config(tmp_path / "off", use_hard_negatives=False)
        )
    assert "hard negatives: ignored (use_hard_negatives=False)" in caplog.text
    assert "4 of 8 pairs carry them" in caplog.text
    without = train_embedder(tiny_qwen3_embedder, stripped, _uneven_config(tmp_path / "without"))
    with_them = train_embedder(tiny_qwen3_embedder, pairs, _uneven_config(tmp_path / "with"))
    a, b, c = (load_file(str(f / "model.safetensors")) for f in (off, without, with_them))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert max(float((c[k] - b[k]).abs().max()) for k in c) > 1e-6  # the negatives do change training
    emb = Embedder.from_pretrained(tiny_qwen3_embedder)
    assert PairCollator(emb, use_negatives=False)(pairs)["negatives"] == []  # their media are not even loaded


def test_hard_negatives_flag_sets_the_config_field(tmp_path) -> None:
    from embedrl.cli import build_parser
    from embedrl.commands.train import FLAG_FIELDS, build_config

    parser = build_parser()
    for flag, expected in (([], True), (["--no-hard-negatives"], False), (["--hard-negatives"], True)):
        args = parser.parse_args(
            [
                "train",
                "embedder",
                "--model",
                str(tmp_path),
                "--pairs",
                "p.jsonl",
                "--out",
                str(tmp_path / "o"),
                "--preset",
                "tiny",
                "--cpu",
                *flag,
            ]
        )
        assert (
            build_config(
                EmbedderTrainingConfig, args, FLAG_FIELDS, EmbedderTrainingConfig.PRESETS
            ).use_hard_negatives
            is expected
        )
