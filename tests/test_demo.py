"""`embedrl demo --quick`: the whole loop end to end (slow: about 2.5 minutes on 2 cores), checking the report's
structure, that every cell is a finite number, and that EG-RL changed the Reasoner's weights and raised its mean
training reward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from embedrl.cli import main

KEYS = ("no_tcot", "teacher", "sft", "egrl", "oracle")
TASKS = ("SynCrop", "SynEvent", "SynClause")


@pytest.mark.slow
def test_quick_demo(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(KEYS) <= set(report["rows"])
    for key in KEYS:
        row = report["rows"][key]
        assert len(row["seed_means"]) == 1
        assert all(math.isfinite(v) and 0 <= v <= 100 for v in row["seed_means"])
        assert math.isfinite(row["mean"]) and math.isfinite(row["std"])
        for task in TASKS:
            cell = row["tasks"][task]
            assert math.isfinite(cell["mean"]) and 0 <= cell["mean"] <= 100
    # the oracle's evidence is what the benchmark is built around: it beats raw inputs
    assert report["rows"]["oracle"]["mean"] > report["rows"]["no_tcot"]["mean"]
    changed = report["training"]["egrl_weights_changed"][0]
    assert changed["max_abs_change"] > 0 and changed["tensors_changed"] > 0
    # EG-RL raised its mean training reward over its first steps: the reward it is trained on (same rewards,
    # frozen Embedder, judge), for the greedy T-CoTs of every RL pair, before (the SFT Reasoner) and after the
    # quick run's 30 steps. The sampled rollouts' logged reward is reported, not asserted: each step draws other
    # label groups, so over 30 steps its trend is noise (it fell in two of seeds 0-2 while the greedy reward rose).
    greedy = report["training"]["greedy_training_reward"][0]
    assert greedy["egrl"]["mean"] > greedy["sft"]["mean"], greedy
    trend = report["training"]["egrl_reward_by_task"][0]
    assert set(trend["tasks"]) == {"syn_crop", "syn_event", "syn_clause"}
    assert math.isfinite(trend["first"]) and math.isfinite(trend["last"])
    assert "checks" in report and "shape_reached" in report["checks"]
    text = (out / "report.md").read_text()
    assert "| configuration |" in text and "(d) SFT + EG-RL Reasoner" in text
    for name in report.get("figures", []):
        assert (out / name).stat().st_size > 1000
    assert "the paper's shape (d) > (c) > (a)" in capsys.readouterr().out

    # A rerun into the same folder resumes: every phase's output is reused, the rows are the same, and the time
    # table keeps the times of the run that did the work (marked as reused) instead of this run's near-zero ones.
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert {k: r["seed_means"] for k, r in again["rows"].items()} == {
        k: r["seed_means"] for k, r in report["rows"].items()
    }
    first, second = report["timings"]["0"], again["timings"]["0"]
    for name in ("stage 1: T-CoT Embedder", "SFT cold start", "EG-RL", "evaluation"):
        assert second[name]["reused"] and second[name]["seconds"] == first[name]["seconds"] > 0
    assert "reused the finished output" in capsys.readouterr().out


@pytest.mark.slow
def test_base_reasoner_builder_runs_and_loads(tmp_path: Path) -> None:
    """`python -m embedrl.demo.base`, the script that made the shipped base Reasoner, on a minimal budget: it
    writes a loadable model and its record (held-out accuracy per skill)."""
    from embedrl.demo.base import main as build
    from embedrl.models.reasoner import Reasoner

    out = tmp_path / "base"
    assert build(["--out", str(out), "--steps", "2", "--stage1-steps", "2", "--groups", "2"]) == 0
    record = json.loads((out / "embedrl_demo_base.json").read_text())
    assert record["steps"] == 2 and set(record["held_out_accuracy"]) == {"crop", "event", "clause"}
    assert all(0 <= v <= 1 for v in record["held_out_accuracy"].values())
    assert Reasoner.from_pretrained(out).backend is not None


def test_a_folder_of_other_settings_is_not_resumed(tmp_path: Path, capsys) -> None:
    """A rerun into a folder written with other settings would reuse its finished phases as they are: refused,
    naming the setting, before anything runs. Settings that only pick seeds or add rows may differ."""
    out = tmp_path / "demo"
    out.mkdir()
    from embedrl.demo import DemoSettings

    saved = DemoSettings.quick_preset(out).record()
    (out / "settings.json").write_text(json.dumps(saved))
    assert main(["demo", "--quick", "--out", str(out), "--sft-steps", "7"]) != 0
    err = capsys.readouterr().err
    assert "sft_steps: 450 there, 7 now" in err and "another --out" in err
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]  # nothing ran, nothing was overwritten
    assert json.loads((out / "settings.json").read_text()) == saved
    assert main(["demo", "--out", str(out), "--split", "dev"]) != 0
    assert "split: 'test' there, 'dev' now" in capsys.readouterr().err


def test_rates_and_foreign_folders_are_checked(tmp_path: Path, capsys) -> None:
    for bad in ("1.5", "-0.1", "nan", "half"):
        with pytest.raises(SystemExit):
            main(["demo", "--quick", "--out", str(tmp_path / "x"), "--noise-loose", bad])
        assert "expected a rate between 0 and 1" in capsys.readouterr().err
    foreign = tmp_path / "old"
    (foreign / "seed-0").mkdir(parents=True)
    assert main(["demo", "--quick", "--out", str(foreign)]) != 0
    assert "no settings.json" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["seed-0"]
