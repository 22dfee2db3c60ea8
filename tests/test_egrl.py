"""EG-RL on TRL's GRPOTrainer with tiny Qwen3-VL models: a planted task that must be learned, a real end-to-end
run with a frozen Embedder and a judge served over loopback HTTP, the rollout sampler, the reward wiring."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from embedrl.cli import main
from embedrl.data.items import Item
from embedrl.data.synthetic import write_training_pairs
from embedrl.models.backbone import load_processor
from embedrl.models.embedder import Embedder
from embedrl.models.reasoner import OpenAIChatBackend, TransformersBackend
from embedrl.serve import EmbedRLServer
from embedrl.train.egrl import (
    EGRLConfig,
    EGRLReward,
    Judge,
    PairRolloutSampler,
    RLPromptDataset,
    local_embed_fn,
    sft_cold_start,
    train_reasoner,
)
from embedrl.train.pairs import TrainingPair, read_pairs


def _config(out: Path, **kw) -> EGRLConfig:
    values = dict(EGRLConfig.PRESETS["tiny"])
    values.update(
        output_dir=str(out),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        save_strategy="no",
        logging_steps=1,
    )
    values.update(kw)
    return EGRLConfig(**values)


def test_planted_token_is_learned(tiny_qwen3_reasoner, tmp_path: Path) -> None:
    """A query rollout's embedding matches its pair only when the rollout starts with one planted token
    (positive rollouts always match). GRPO on the outcome reward alone must find that token."""
    tokenizer = load_processor(tiny_qwen3_reasoner).tokenizer
    good, other = tokenizer.convert_tokens_to_ids(["Ġred", "Ġblue"])
    suppress = [i for i in range(len(tokenizer)) if i not in (good, other)]  # a two-way choice per token
    pairs = [
        TrainingPair(
            "planted",
            Item(id=f"q{k}", text=f"query number {k}"),
            Item(id=f"p{k}", text=f"positive number {k}"),
        )
        for k in range(8)
    ]

    def planted_embedding(items, tcots, num_frames=None):
        vectors = np.zeros((len(items), 16))
        for row, (item, text) in enumerate(zip(items, tcots)):
            ids = tokenizer(text or "", add_special_tokens=False)["input_ids"]
            matches = item.id.startswith("p") or (ids and ids[0] == good)
            vectors[row, int(item.id[1:]) if matches else 15] = 1.0
        return vectors

    config = _config(
        tmp_path / "planted",
        max_steps=50,
        max_completion_length=2,
        learning_rate=1e-3,
        format_weight=0.0,
        process_weight=0.0,
        outcome_weight=1.0,
        plot=False,
        generation_kwargs={"suppress_tokens": suppress},
    )
    train_reasoner(
        tiny_qwen3_reasoner, pairs, config, planted_embedding, prompt_fn=lambda kind, item, frames: item.text
    )
    history = json.loads((tmp_path / "planted" / "log_history.json").read_text())
    outcome = [h["rewards/outcome/mean"] for h in history if "rewards/outcome/mean" in h]
    acc = [h["acc"] for h in history if "acc" in h]
    assert len(outcome) == 50
    print("outcome per step:", [round(x, 2) for x in outcome])
    assert np.mean(outcome[:3]) < 0.4
    assert np.mean(outcome[-10:]) > 0.8 and np.mean(outcome[-10:]) > np.mean(outcome[:3]) + 0.5
    assert np.mean(acc[-10:]) > np.mean(acc[:5])


def test_rollout_sampler_keeps_pairs_together() -> None:
    pairs = [
        TrainingPair("a" if k < 6 else "b", Item(id=f"q{k}", text="q"), Item(id=f"p{k}", text="p"))
        for k in range(12)
    ]
    dataset = RLPromptDataset(pairs)
    sampler = PairRolloutSampler(
        dataset, pairs_per_step=2, num_generations=3, world_size=2, repeat_count=2, seed=0
    )
    rows = list(sampler)
    per_step = 2 * 2 * 2 * 3  # ranks x pairs x sides x G
    assert len(rows) == len(sampler) and len(rows) % (per_step * 2) == 0
    for start in range(0, len(rows), per_step * 2):
        step = rows[start : start + per_step]
        assert rows[start + per_step : start + 2 * per_step] == step  # repeated for TRL's buffered steps
        datasets = {pairs[r // 2].dataset for r in step}
        assert len(datasets) == 1  # one dataset per step
        for rank in range(2):
            block = step[rank * 12 : (rank + 1) * 12]
            for b in range(2):
                pair_rows = block[b * 6 : (b + 1) * 6]
                k = pair_rows[0] // 2
                assert pair_rows == [2 * k] * 3 + [2 * k + 1] * 3  # G query rows, then G positive rows


class _OracleJudge:
    """A deterministic judge: picks the candidate whose text names the anchor's pair (a stand-in for a strong
    discriminator, so that the process reward can be checked exactly)."""

    name = "oracle"

    def generate(self, conversations, settings):
        answers = []
        for conv in conversations:
            prompt = conv[0]["content"][0]["text"]
            anchor_pair = re.search(r"pair (\d+)", prompt).group(1)
            numbers = re.findall(r"\[(\d+)\][^\[]*?pair (\d+)", prompt)
            pick = next((n for n, pair in numbers if pair == anchor_pair), "?")
            answers.append(pick)
        return answers


def test_reward_terms_on_a_batch() -> None:
    pairs = [
        TrainingPair("d", Item(id=f"q{k}", text=f"pair {k} query"), Item(id=f"p{k}", text=f"pair {k} item"))
        for k in range(3)
    ]
    dataset = RLPromptDataset(pairs)
    config = _config(Path("/tmp/unused"), num_generations=2, pairs_per_step=3, judge_shuffle=True)

    def embed(items, tcots, num_frames=None):  # rollouts of pair k point to e_k, except those that say "lost"
        out = np.zeros((len(items), 4))
        for row, (item, text) in enumerate(zip(items, tcots)):
            out[row, 3 if "lost" in text else int(item.id[1:])] = 1.0
        return out

    judge = Judge(_OracleJudge())
    reward = EGRLReward(dataset, embed, config, judge)
    good = '<thinking>ok {"text_keywords": ["x"]}</thinking><rethink>r</rethink><answer>a</answer>'
    completions, pair_index, side = [], [], []
    for k in range(3):
        for s in ("query", "positive"):
            for g in range(2):
                completions.append("lost" if (k, s, g) == (1, "positive", 1) else good)
                pair_index.append(k)
                side.append(s)
    logged = {}
    scores = reward.score(
        completions,
        pair_index,
        side,
        ["text"] * 12,
        [8] * 12,
        log_metric=lambda n, v: logged.__setitem__(n, v),
    )
    assert scores.format.tolist() == [0.0 if c == "lost" else 1.0 for c in completions]
    # pair 1's query rollouts have one positive that is lost: margin 0.5 - 0 and Acc 0 under "all"
    assert scores.outcome[4] == 0.0 and scores.outcome[0] > 0.9
    assert scores.process.tolist() == [1.0] * 12  # the oracle judge always finds the positive
    assert logged["judge_parse_failures"] == 0.0 and 0 < logged["acc"] < 1
    assert reward.score(completions, pair_index, side, ["text"] * 12, [8] * 12) is scores  # computed once
    funcs, weights = reward.funcs()
    assert [f.__name__ for f in funcs] == ["format", "process", "outcome"] and weights == [0.05, 0.8, 0.2]


class _RecordingJudge(_OracleJudge):
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, conversations, settings):
        self.prompts.extend(conv[0]["content"][0]["text"] for conv in conversations)
        return super().generate(conversations, settings)


def test_judge_candidate_order_does_not_depend_on_earlier_batches() -> None:
    """A resumed run scores the same rollouts as the uninterrupted one: the judge must see the same orders."""
    pairs = [
        TrainingPair("d", Item(id=f"q{k}", text=f"pair {k} query"), Item(id=f"p{k}", text=f"pair {k} item"))
        for k in range(4)
    ]
    config = _config(Path("/tmp/unused"), num_generations=2, pairs_per_step=4, judge_shuffle=True)

    def embed(items, tcots, num_frames=None):
        return np.stack([np.cos(np.arange(6) * (1 + int(it.id[1:])) + len(t)) for it, t in zip(items, tcots)])

    def batch(tag: str):
        completions, pair_index, side = [], [], []
        for k in range(4):
            for s in ("query", "positive"):
                for g in range(2):
                    completions.append(f"{tag} {k} {s} {g}")
                    pair_index.append(k)
                    side.append(s)
        return completions, pair_index, side, ["text"] * 16, [8] * 16

    straight, resumed = _RecordingJudge(), _RecordingJudge()
    first = EGRLReward(RLPromptDataset(pairs), embed, config, Judge(straight))
    first.score(*batch("a"))
    first.score(*batch("b"))
    EGRLReward(RLPromptDataset(pairs), embed, config, Judge(resumed)).score(*batch("b"))
    assert straight.prompts[len(straight.prompts) // 2 :] == resumed.prompts


class _ItemJudge:
    """A judge that reads the items (reads_items = True): it picks the candidate of the anchor's own pair."""

    reads_items = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str]]] = []

    def choose(self, anchors, candidate_lists, *, anchor_items=None, candidate_items=None):
        choices = []
        for _anchor, cands, item, others in zip(anchors, candidate_lists, anchor_items, candidate_items):
            assert len(cands) == len(others)
            self.seen.append((item.id, [o.id for o in others]))
            choices.append(next(i + 1 for i, o in enumerate(others) if o.id[1:] == item.id[1:]))
        return choices


def test_a_judge_that_reads_items_gets_them() -> None:
    pairs = [
        TrainingPair("d", Item(id=f"q{k}", text=f"pair {k} query"), Item(id=f"p{k}", text=f"pair {k} item"))
        for k in range(3)
    ]
    config = _config(Path("/tmp/unused"), num_generations=2, pairs_per_step=3)

    def embed(items, tcots, num_frames=None):
        return np.stack([np.eye(4)[int(it.id[1:])] for it in items])

    judge = _ItemJudge()
    reward = EGRLReward(RLPromptDataset(pairs), embed, config, judge)
    completions, pair_index, side = [], [], []
    for k in range(3):
        for s in ("query", "positive"):
            for _ in range(2):
                completions.append("t")
                pair_index.append(k)
                side.append(s)
    scores = reward.score(completions, pair_index, side, ["text"] * 12, [8] * 12)
    assert scores.process.tolist() == [1.0] * 12
    assert len(judge.seen) == 12 and {a for a, _ in judge.seen} == {"q0", "q1", "q2", "p0", "p1", "p2"}
    assert reward.history[-1]["datasets"] == ["d"] and "reward" in reward.history[-1]


@pytest.fixture(scope="module")
def image_pairs(tmp_path_factory) -> list[TrainingPair]:
    root = tmp_path_factory.mktemp("rlpairs")
    return read_pairs(write_training_pairs(root / "pairs.jsonl", n=8, datasets=("syn_i2t", "syn_t2i")))


def test_three_step_run_with_served_embedder_and_judge(
    tiny_qwen3_reasoner, tiny_qwen3_embedder, tiny_factory, image_pairs, tmp_path: Path
) -> None:
    judge_model = TransformersBackend.from_pretrained(tiny_factory("qwen3-vl", "base", seed=2))
    embedder = Embedder.from_pretrained(tiny_qwen3_embedder)
    with EmbedRLServer(judge_model, embedder) as server:
        from embedrl.models.remote import RemoteEmbedder

        config = _config(
            tmp_path / "rl", max_steps=3, max_completion_length=16, save_strategy="steps", save_steps=2
        )
        final, reward = train_reasoner(
            tiny_qwen3_reasoner,
            image_pairs,
            config,
            RemoteEmbedder(server.url).embed,
            Judge(OpenAIChatBackend(server.url, "reasoner")),
        )
    history = json.loads((tmp_path / "rl" / "log_history.json").read_text())
    steps = [h for h in history if "reward" in h]
    assert len(steps) == 3
    for key in (
        "rewards/format/mean",
        "rewards/process/mean",
        "rewards/outcome/mean",
        "acc",
        "margin",
        "judge_parse_failures",
        "format_valid_rate",
        "completions/mean_length",
    ):
        assert all(key in h and np.isfinite(h[key]) for h in steps), key
    assert (tmp_path / "rl" / "rl_curves.png").stat().st_size > 1000
    assert (tmp_path / "rl" / "checkpoint-2").is_dir()
    meta = json.loads((tmp_path / "rl" / "embedrl_training.json").read_text())
    assert meta["reward_weights"]["process"] == 0.8 and meta["acc_mode"] == "all"
    TransformersBackend.from_pretrained(final)  # the final reasoner loads like any checkpoint
    # the reward saw image prompts: query rollouts of syn_i2t are judged against the image modality
    assert len(reward.history) == 3 and all("acc" in m for m in reward.history)


def test_local_embed_fn_matches_pipeline(tiny_qwen3_embedder, image_pairs) -> None:
    embedder = Embedder.from_pretrained(tiny_qwen3_embedder)
    items = [image_pairs[0].query, image_pairs[0].positive]
    tcots = [image_pairs[0].query_tcot, "not a t-cot"]
    vectors = local_embed_fn(embedder)(items, tcots, embedder.config.num_frames)
    expected = embedder.embed_inputs([embedder.build_input(i, t) for i, t in zip(items, tcots)])
    assert np.abs(vectors - expected).max() < 1e-5


def test_sft_cold_start_then_cli_rl(
    tiny_qwen3_reasoner, tiny_qwen3_embedder, image_pairs, tmp_path: Path
) -> None:
    warmed = sft_cold_start(
        tiny_qwen3_reasoner, image_pairs, tmp_path / "sft", max_steps=3, batch_size=2, use_cpu=True
    )
    assert (warmed / "config.json").is_file()
    assert any("train_loss" in h for h in json.loads((tmp_path / "sft" / "log_history.json").read_text()))
    pairs_file = tmp_path / "pairs.jsonl"
    write_training_pairs(pairs_file, n=8, datasets=("syn_t2i", "syn_i2t"))
    out = tmp_path / "cli"
    code = main(
        [
            "train",
            "reasoner",
            "--model",
            str(warmed),
            "--pairs",
            str(pairs_file),
            "--out",
            str(out),
            "--embedder",
            str(tiny_qwen3_embedder),
            "--preset",
            "tiny",
            "--process-weight",
            "0",
            "--max-steps",
            "2",
            "--max-completion-length",
            "8",
            "--cpu",
            "--acc-mode",
            "fraction",
        ]
    )
    assert code == 0
    meta = json.loads((out / "embedrl_training.json").read_text())
    assert meta["acc_mode"] == "fraction" and meta["reward_weights"]["process"] == 0.0
    assert (out / "final" / "config.json").is_file()
    # a plain Qwen-VL folder is not a frozen Embedder: refused before anything trains
    code = main(
        [
            "train",
            "reasoner",
            "--model",
            str(warmed),
            "--pairs",
            str(pairs_file),
            "--out",
            str(tmp_path / "cli2"),
            "--embedder",
            str(tiny_qwen3_reasoner),
            "--preset",
            "tiny",
            "--cpu",
        ]
    )
    assert code == 2 and not (tmp_path / "cli2" / "final").exists()


def test_process_weight_without_judge_is_refused(tiny_qwen3_reasoner, image_pairs, tmp_path: Path) -> None:
    from embedrl.errors import ConfigError

    with pytest.raises(ConfigError, match="no judge"):
        train_reasoner(tiny_qwen3_reasoner, image_pairs, _config(tmp_path, max_steps=1), lambda i, t, f: None)


def test_checkpoint_and_resume(tiny_qwen3_reasoner, image_pairs, tmp_path: Path) -> None:
    def embed(
        items, tcots, num_frames=None
    ):  # a cheap deterministic frozen embedder: pair identity plus the text length
        out = np.zeros((len(items), 8))
        for row, (item, text) in enumerate(zip(items, tcots)):
            out[row, hash(item.id.split("-")[1]) % 7] = 1.0
            out[row, 7] = len(text or "") / 100
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    out = tmp_path / "run"
    settings = dict(
        max_completion_length=8, process_weight=0.0, save_strategy="steps", save_steps=1, plot=False
    )
    train_reasoner(tiny_qwen3_reasoner, image_pairs, _config(out, max_steps=2, **settings), embed)
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    train_reasoner(
        tiny_qwen3_reasoner, image_pairs, _config(out, max_steps=3, **settings), embed, resume=True
    )
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    steps = [h["step"] for h in state["log_history"] if "reward" in h]
    assert steps == [1, 2, 3]  # the resumed run continued at step 3 instead of starting over


def test_sft_cold_start_checkpoints_prompt_and_transform(
    tiny_qwen3_reasoner, image_pairs, tmp_path: Path
) -> None:
    """Checkpoints save (the processor has no video processor), the prompt function and the teacher transform
    shape the examples, and the vision tower can stay frozen."""
    from embedrl.train.egrl import sft_examples

    def prompt_fn(kind, item, frames):
        return f"short {kind.cue}"

    def transform(pair, side, tcot):
        return None if side == "positive" else tcot.replace("<rethink>", "<rethink>checked ")

    rows = sft_examples(image_pairs, prompt_fn=prompt_fn, transform=transform)
    assert len(rows) == len(image_pairs)  # positives dropped
    assert rows[0]["prompt"][0]["content"].startswith("short ")
    assert "<rethink>checked " in rows[0]["completion"][0]["content"]
    out = tmp_path / "sft"
    final = sft_cold_start(
        tiny_qwen3_reasoner,
        image_pairs,
        out,
        max_steps=2,
        batch_size=2,
        use_cpu=True,
        prompt_fn=prompt_fn,
        transform=transform,
        save_steps=1,
        logging_steps=1,
        freeze_vision=True,
        gradient_checkpointing=False,
        plot=False,
    )
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert (out / "checkpoint-2" / "preprocessor_config.json").is_file()
    history = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    from safetensors.numpy import load_file

    before, after = (
        load_file(str(tiny_qwen3_reasoner / "model.safetensors")),
        load_file(str(final / "model.safetensors")),
    )
    visual = [k for k in before if ".visual." in f".{k}."]
    assert visual and all(np.array_equal(before[k], after[k]) for k in visual)
    assert any(not np.array_equal(before[k], after[k]) for k in before if k not in visual)
