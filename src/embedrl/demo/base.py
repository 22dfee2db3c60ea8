"""The demo's base Reasoner: a tiny Qwen3-VL with perception pretraining, built once offline and shipped.

A real Embed-RL Reasoner starts from a pretrained VLM that can already find objects and moments; a tiny random
model cannot learn that from a few hundred SFT steps on noisy teacher T-CoTs (the SFT loss stays at the
marginal of the cue tokens: the model writes the same box and frames for every input). This script stands in for
the pretraining: on a separate split of the evidence benchmark ("pretrain", never the demo's train / RL / test
data) it

1. trains a tiny Qwen3-VL contrastively (stage 1, oracle T-CoTs), which gives it a vision tower that tells
   colours, stripes and the timeline apart;
2. teaches the language model, vision frozen, generic skills as question -> JSON answers, the way Qwen-VL
   models answer grounding questions, NOT in the T-CoT format: grounding ("Where is the coloured tile?" ->
   `{"bbox_2d": [[x1, y1, x2, y2]]}` in 0-1000 coordinates), temporal grounding ("Which frames show the striped
   object?" -> `{"key_frames": [3, 4]}`), phrase extraction ("Which object does the sentence ask for?" ->
   `{"text_keywords": ["red", "circle"]}`), and a label's words.

The result (about 2 MB, bf16) is `embedrl/resources/demo-reasoner`. The demo's SFT cold start then has to learn
the T-CoT format, the cue syntax and the teacher's habits from the teacher's T-CoTs.

    python -m embedrl.demo.base --out src/embedrl/resources/demo-reasoner

Deterministic given --seed (on one machine; thread counts can change float results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from ..data.items import Item
from ..fileio import write_json
from .stages import SHIPPED_BASE

PRETRAIN_SEED = 10_000
QUESTIONS = {
    "crop": "Where is the coloured tile? Answer in JSON with its bbox_2d (0-1000).",
    "event": "Which frames show the striped object? Answer in JSON with their key_frames.",
    "clause": "Which object does the sentence ask for? Answer in JSON with its text_keywords.",
    "label": "Answer in JSON with the label's text_keywords.",
}


def pretrain_prompt(kind: Any, item: Item, num_frames: int) -> str:
    gt = (item.meta or {}).get("gt", {})
    question = QUESTIONS[gt.get("kind", "label")]
    return f"{item.text}\n{question}" if item.text else question


def answer(gt: dict) -> str:
    """The exact answer as the JSON object a Qwen-VL grounding answer is (`{"bbox_2d": ...}`), not a T-CoT."""
    if gt["kind"] == "crop":
        return json.dumps({"bbox_2d": [gt["box"]]})
    if gt["kind"] == "event":
        return json.dumps({"key_frames": gt["event_frames"]})
    if gt["kind"] == "clause":
        return json.dumps({"text_keywords": gt["keywords"]})
    return json.dumps({"text_keywords": gt["label"].split()})


def _qa_pairs(pairs: list) -> list:
    """Each pair's query and label as question-answer rows (the pair's T-CoT fields hold the answers)."""
    return [
        dataclasses.replace(
            p, query_tcot=answer(p.query.meta["gt"]), positive_tcot=answer(p.positive.meta["gt"])
        )
        for p in pairs
    ]


def grounding_accuracy(model_path: Path, pairs: list) -> dict[str, float]:
    from ..models.reasoner import GenerationSettings, Reasoner

    reasoner = Reasoner.from_pretrained(
        model_path, batch_size=16, prompt_fn=pretrain_prompt, settings=GenerationSettings(max_new_tokens=40)
    )
    out: dict[str, list[bool]] = {}
    items = [p.query for p in pairs]
    texts = reasoner.reason(items, side="query", target_modality="text")
    for item, text in zip(items, texts):
        gt = item.meta["gt"]
        out.setdefault(gt["kind"], []).append(text.strip() == answer(gt))
    return {k: sum(v) / len(v) for k, v in out.items()}


def make_base_reasoner(
    out: str | Path,
    seed: int = PRETRAIN_SEED,
    stage1_steps: int = 300,
    steps: int = 3000,
    learning_rate: float = 3e-3,
    groups: int = 32,
) -> Path:
    from ..data.synthetic import write_evidence_pairs
    from ..models.backbone import LoadOptions, detect_family, load_model, load_processor, save_processor
    from ..train.egrl import sft_cold_start
    from ..train.pairs import read_pairs
    from .stages import Progress, _base_embedder, _stage1

    out = Path(out)
    work = out.parent / (out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train = work / "data" / "pairs.jsonl"
    held_out = work / "data-eval" / "pairs.jsonl"
    if not train.is_file():
        write_evidence_pairs(train, seed, groups, group_pairs=8, split="pretrain")
    if not held_out.is_file():
        write_evidence_pairs(held_out, seed + 1, 4, group_pairs=4, split="pretrain")
    pairs = read_pairs(train)
    # 1. a vision tower: stage 1 on the oracle T-CoTs of the pretraining split
    oracle = [dataclasses.replace(p, query_tcot=p.query.meta["oracle_tcot"]) for p in pairs]
    oracle_file = work / "data" / "oracle-pairs.jsonl"
    if not oracle_file.is_file():
        from ..fileio import write_jsonl

        rows = [json.loads(line) for line in train.read_text().splitlines()]
        for row, pair in zip(rows, oracle):
            row["query_tcot"] = pair.query_tcot
        write_jsonl(oracle_file, rows)
    base = _base_embedder(work / "embedder-base", seed)
    embedder = _stage1(base, oracle_file, work / "stage1", stage1_steps, True, seed, Progress(seed))
    init = work / "reasoner-init"
    if not (init / "config.json").is_file():
        shutil.copytree(embedder, init, ignore=shutil.ignore_patterns("embedrl_embedder.json"))
    # 2. the skills, in question-answer form, vision frozen
    final = work / "skills" / "final"
    if not (final / "config.json").is_file():
        final = sft_cold_start(
            init,
            _qa_pairs(pairs),
            work / "skills",
            max_steps=steps,
            learning_rate=learning_rate,
            batch_size=8,
            use_cpu=True,
            seed=seed,
            prompt_fn=pretrain_prompt,
            logging_steps=50,
            disable_tqdm=True,
            gradient_checkpointing=False,
            freeze_vision=True,
            lr_scheduler_type="constant",
            plot=False,
        )
    accuracy = grounding_accuracy(final, read_pairs(held_out))
    # 3. ship it in bf16
    family = detect_family(final)
    model = load_model(final, family, LoadOptions(dtype="bfloat16", device="cpu"))
    processor = load_processor(final, family)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    save_processor(processor, out)
    write_json(
        out / "embedrl_demo_base.json",
        {
            "what": "tiny Qwen3-VL base Reasoner with perception pretraining for `embedrl demo` (see embedrl.demo.base)",
            "seed": seed,
            "stage1_steps": stage1_steps,
            "steps": steps,
            "learning_rate": learning_rate,
            "pretraining_pairs": len(pairs),
            "held_out_accuracy": accuracy,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    return out


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=str(SHIPPED_BASE), help=f"where to write the model (default: {SHIPPED_BASE})"
    )
    parser.add_argument(
        "--seed", type=int, default=PRETRAIN_SEED, help=f"pretraining split's seed (default {PRETRAIN_SEED})"
    )
    parser.add_argument(
        "--steps", type=int, default=3000, help="question-answer training steps (default 3000)"
    )
    parser.add_argument(
        "--stage1-steps", type=int, default=300, help="contrastive vision-tower steps (default 300)"
    )
    parser.add_argument(
        "--groups",
        type=_at_least_two,
        default=32,
        help="label groups per task in the pretraining split (default 32; at least 2: stage 1 batches 8 pairs of "
        "one task, and a group holds 4)",
    )
    args = parser.parse_args(argv)
    path = make_base_reasoner(
        args.out, seed=args.seed, steps=args.steps, stage1_steps=args.stage1_steps, groups=args.groups
    )
    print(json.loads((path / "embedrl_demo_base.json").read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
