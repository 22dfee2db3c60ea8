"""Where one EG-RL (GRPO) step spends its time: generation, reward (embedding + judge), update.

Tiny Qwen3-VL Reasoner, frozen tiny Embedder and tiny judge, all in-process on CPU; B pairs x G rollouts per
side (default B=4, G=4: 32 rollouts per step) on synthetic image-text pairs with the real reasoner prompts.
The first step is a warm-up and is not counted.

    python benchmarks/bench_egrl.py [--pairs-per-step 4 --generations 4 --steps 6 --max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs-per-step", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from trl import GRPOTrainer

    from embedrl.data.synthetic import write_training_pairs
    from embedrl.models.embedder import Embedder
    from embedrl.models.reasoner import TransformersBackend
    from embedrl.models.tiny import make_tiny
    from embedrl.train import egrl
    from embedrl.train.pairs import read_pairs

    timings: dict[str, list[float]] = defaultdict(list)

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[name].append(time.perf_counter() - start)

        return wrapper

    GRPOTrainer._generate = timed("generation", GRPOTrainer._generate)
    GRPOTrainer._calculate_rewards = timed("reward", GRPOTrainer._calculate_rewards)
    GRPOTrainer.training_step = timed("step", GRPOTrainer.training_step)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reasoner = make_tiny("qwen3-vl", root / "reasoner", seed=1)
        embedder_path = make_tiny("qwen3-vl", root / "embedder", seed=0)
        Embedder.from_pretrained(embedder_path).save_pretrained(embedder_path)
        judge_path = make_tiny("qwen3-vl", root / "judge", seed=2)
        pairs = read_pairs(
            write_training_pairs(
                root / "pairs" / "pairs.jsonl", n=8 * args.pairs_per_step, datasets=("syn_i2t", "syn_t2i")
            )
        )
        frozen = egrl.local_embed_fn(Embedder.from_pretrained(embedder_path))
        embed_time: list[float] = []
        judge_tokens: list[int] = []

        def embed(items, tcots):
            start = time.perf_counter()
            try:
                return frozen(items, tcots)
            finally:
                embed_time.append(time.perf_counter() - start)

        judge = egrl.Judge(TransformersBackend.from_pretrained(judge_path))
        judge.choose = timed("judge", judge.choose)
        original_generate = judge.backend.generate

        def counting_generate(conversations, settings):
            tokenizer = judge.backend.processor.tokenizer
            judge_tokens.extend(
                len(tokenizer(c[0]["content"][0]["text"])["input_ids"]) for c in conversations
            )
            return original_generate(conversations, settings)

        judge.backend.generate = counting_generate
        config = egrl.EGRLConfig(
            output_dir=str(root / "out"),
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            max_steps=args.steps,
            pairs_per_step=args.pairs_per_step,
            num_generations=args.generations,
            max_completion_length=args.max_new_tokens,
            learning_rate=1e-4,
            beta=0.0,
            save_strategy="no",
            logging_steps=1,
            plot=False,
        )
        egrl.train_reasoner(reasoner, pairs, config, embed, judge)

    def mean_after_warmup(values):
        values = values[1:] if len(values) > 1 else values
        return sum(values) / len(values)

    step = mean_after_warmup(timings["step"])
    gen = mean_after_warmup(timings["generation"])
    reward = mean_after_warmup(timings["reward"])
    judge_t = mean_after_warmup(timings["judge"])
    emb = mean_after_warmup(embed_time)
    update = step - gen - reward
    rollouts = 2 * args.pairs_per_step * args.generations
    print(
        f"B={args.pairs_per_step}, G={args.generations}: {rollouts} rollouts/step, "
        f"max {args.max_new_tokens} new tokens, mean of steps 2..{args.steps}"
    )
    print("| part | seconds/step | share |")
    print("|---|---:|---:|")
    for name, value in (
        ("generation", gen),
        ("reward: embedding", emb),
        ("reward: judge", judge_t),
        ("reward: other (format, outcome math)", reward - emb - judge_t),
        ("update (GRPO loss, backward, optimizer)", update),
        ("whole step", step),
    ):
        print(f"| {name} | {value:.2f} | {100 * value / step:.0f}% |")
    print(
        f"\njudge prompts per step: {rollouts}, mean length {sum(judge_tokens) // len(judge_tokens)} tokens"
    )
    print(json.dumps({"reward_less_than_generation": reward < gen}))


if __name__ == "__main__":
    main()
