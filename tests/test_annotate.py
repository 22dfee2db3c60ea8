"""T-CoT data synthesis (`embedrl data annotate | filter | split`) against real loopback servers: a tiny
Reasoner served by `embedrl serve` in its own process, and small scripted OpenAI-compatible servers."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from crash import embedrl_executable, sigkill_when
from embedrl.annotate import (
    ANNOTATE_JOURNAL,
    AnnotateConfig,
    FilterConfig,
    Journal,
    RetryPolicy,
    SplitConfig,
    annotate,
    apply_verdicts,
    decision,
    filter_pairs,
    is_answer_conditioned,
    is_retryable,
    read_journal,
    read_pair_records,
    rl_allocation,
    sample_positions,
    split_pairs,
)
from embedrl.cli import main
from embedrl.errors import BackendError, ConfigError
from embedrl.models.reasoner import OpenAIChatBackend
from embedrl.tcot import CUE_KEYS

FAST_RETRY = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.05)


# ------------------------------------------------------------------------------------------------ data


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return str(path.relative_to(path.parents[2]))  # media/<dataset>/<file>, relative to the pairs file


def write_pairs(folder: Path, counts: dict[str, int], duplicate_first: bool = False) -> Path:
    """Pairs of three kinds, named by dataset: txt (text -> text), t2i (text -> image), v2t (video -> text)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for dataset, n in counts.items():
        for i in range(n):
            colour = ((37 * i) % 256, (91 * i) % 256, 120)
            words = f"{dataset} sample {i} end" + " word" * (i % 5)
            if dataset.startswith("t2i"):
                pair = {
                    "query": {"text": f"a picture of {words}", "instruction": "Find an image:"},
                    "positive": {"images": [_png(folder / "media" / dataset / f"{i}.png", colour)]},
                }
            elif dataset.startswith("v2t"):
                frames = [_png(folder / "media" / dataset / f"{i}-{t}.png", colour[::-1]) for t in range(2)]
                pair = {
                    "query": {"video": {"frames": frames}, "instruction": "Find a caption:"},
                    "positive": {"text": f"a clip of {words}"},
                }
            else:
                pair = {
                    "query": {"text": f"question about {words}", "instruction": "Find the answer:"},
                    "positive": {"text": f"answer about {words}"},
                }
            lines.append({"dataset": dataset, **pair})
    if duplicate_first:
        lines.append(dict(lines[0]))
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------- scripted chat server


class ScriptedChat:
    """An OpenAI-compatible chat server on loopback whose replies come from `script(call_number, body)`,
    which returns (HTTP status, reply text)."""

    def __init__(self, script):
        self.script = script
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    number = len(outer.bodies)
                    outer.bodies.append(body)
                status, text = outer.script(number, body)
                reply = (
                    {
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ]
                    }
                    if status == 200
                    else {"error": {"message": text}}
                )
                try:
                    self._send(status, reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ScriptedChat:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def prompt_of(body: dict) -> str:
    return "\n".join(
        part["text"] for message in body["messages"] for part in message["content"] if part["type"] == "text"
    )


def images_of(body: dict) -> int:
    return sum(part["type"] == "image_url" for message in body["messages"] for part in message["content"])


def echo_teacher(number: int, body: dict) -> tuple[int, str]:
    """A well-formed T-CoT carrying the cue the prompt asks for and the item's own text as the answer."""
    prompt = prompt_of(body)
    time.sleep(random.uniform(0, 0.01))  # replies finish out of order
    cue = next(c for c in CUE_KEYS if f'{{"{c}"' in prompt)
    value = {"text_keywords": '["echo"]', "bbox_2d": "[[10, 20, 300, 400]]", "key_frames": "[1, 2]"}[cue]
    own = re.search(r"^- (?:Query text|Text): (.*)$", prompt, re.MULTILINE)
    answer = own.group(1) if own else "no text"
    return 200, (
        f'<thinking>Evidence. {{"{cue}": {value}}}</thinking><rethink>Focus.</rethink>'
        f"<answer>{answer}</answer>"
    )


def _annotate_config(**overrides) -> AnnotateConfig:
    values = dict(teacher="scripted", max_new_tokens=32, concurrency=4, retry=FAST_RETRY, progress=False)
    values.update(overrides)
    return AnnotateConfig(**values)


# ------------------------------------------------------------------------------------- annotate (fast)


def test_each_pair_gets_its_own_tcots_under_concurrency(tmp_path) -> None:
    pairs = write_pairs(tmp_path / "data", {"txt": 12, "t2i": 5, "v2t": 3})
    out = tmp_path / "out" / "annotated.jsonl"
    with ScriptedChat(echo_teacher) as server:
        summary = annotate(
            pairs,
            out,
            OpenAIChatBackend(server.url, "scripted", retries=0),
            _annotate_config(answer_rate=0.5, seed=3),
        )
    assert (summary.total, summary.annotated, summary.errors, summary.problems) == (20, 20, 0, {})
    assert summary.cue_valid == {"bbox_2d": [5, 5], "key_frames": [3, 3], "text_keywords": [32, 32]}
    rows, keys = _lines(out), [r.key for r in read_pair_records(pairs)]
    assert [r.key for r in read_pair_records(out)] == keys  # input order; media paths still name the files
    assert rows[-1]["query"]["video"]["frames"][0].startswith("../data/media/")
    for row, key in zip(rows, keys):
        query, positive = row["query"], row["positive"]
        if query.get("text"):
            assert row["query_tcot"].endswith(f"<answer>{query['text']}</answer>")
        if positive.get("text"):
            assert row["positive_tcot"].endswith(f"<answer>{positive['text']}</answer>")
        report = row["meta"]["tcot_annotation"]
        assert report["key"] == key and report["query"]["problems"] == [] and report["positive"]["cue_valid"]
        wanted = is_answer_conditioned(3, key, 0.5)
        assert report["query"]["answer_conditioned"] == wanted
        assert report["query"]["answer_source"] == (
            None if not wanted else "positive_text" if positive.get("text") else "positive_tcot"
        )
    assert 3 <= summary.answer_conditioned <= 17
    # what the teacher was sent: one image per picture, one per video frame, the reference answer only
    # for the chosen pairs, greedy decoding with the seed
    bodies = server.bodies
    assert len(bodies) == 40 and all(b["temperature"] == 0 and b["seed"] == 3 for b in bodies)
    assert Counter(images_of(b) for b in bodies) == Counter({0: 32, 1: 5, 2: 3})
    assert sum("Reference answer:" in prompt_of(b) for b in bodies) == summary.answer_conditioned
    assert main(["train", "check-data", str(out)]) == 0
    # a rerun finds everything in the journal and asks nothing
    with ScriptedChat(echo_teacher) as again:
        rerun = annotate(
            pairs,
            out,
            OpenAIChatBackend(again.url, "scripted", retries=0),
            _annotate_config(answer_rate=0.5, seed=3),
        )
    assert again.bodies == [] and (rerun.from_journal, rerun.annotated) == (20, 0)


def test_5xx_replies_are_retried_with_backoff_until_they_succeed(tmp_path) -> None:
    pairs = write_pairs(tmp_path / "data", {"txt": 1})
    out = tmp_path / "annotated.jsonl"

    def flaky(number: int, body: dict) -> tuple[int, str]:
        return (500, "overloaded") if number < 2 else echo_teacher(number, body)

    with ScriptedChat(flaky) as server:
        summary = annotate(
            pairs, out, OpenAIChatBackend(server.url, "scripted", retries=0), _annotate_config()
        )
    assert summary.errors == 0 and len(server.bodies) == 4  # 2 failures, then positive and query
    _, records = read_journal(out.with_name("annotated.jsonl.journal.jsonl"), ANNOTATE_JOURNAL)
    (record,) = records.values()
    assert record["status"] == "ok" and record["attempts"] == {"positive": 3, "query": 1}
    assert _lines(out)[0]["positive_tcot"].startswith("<thinking>")


def test_a_timed_out_request_is_retried(tmp_path) -> None:
    pairs = write_pairs(tmp_path / "data", {"txt": 1})

    def slow_first(number: int, body: dict) -> tuple[int, str]:
        if number == 0:
            time.sleep(1.0)
        return echo_teacher(number, body)

    with ScriptedChat(slow_first) as server:
        summary = annotate(
            pairs,
            tmp_path / "a.jsonl",
            OpenAIChatBackend(server.url, "s", timeout=0.3, retries=0),
            _annotate_config(teacher="s"),
        )
    assert summary.errors == 0 and len(server.bodies) == 3


def test_which_failures_are_retried() -> None:
    assert is_retryable(BackendError("http://h/v1/chat/completions: HTTP 503: busy"))
    assert is_retryable(BackendError("http://h/v1/chat/completions: HTTP 429: slow down"))
    assert is_retryable(BackendError("http://h/v1/chat/completions: cannot reach the server (timed out)"))
    assert is_retryable(TimeoutError()) and is_retryable(ConnectionResetError())
    assert not is_retryable(BackendError("http://h/v1/chat/completions: HTTP 400: bad image"))
    assert not is_retryable(ValueError("the query_text_to_image prompt needs a non-empty text"))


def test_a_pair_that_keeps_failing_is_an_error_record_that_a_rerun_retries(tmp_path) -> None:
    pairs = write_pairs(tmp_path / "data", {"txt": 3})
    out = tmp_path / "annotated.jsonl"
    status = {"now": 503}

    def fails_for_one(number: int, body: dict) -> tuple[int, str]:
        if "sample 1 " in prompt_of(body):
            return status["now"], "refused"
        return echo_teacher(number, body)

    command = [
        "data",
        "annotate",
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        "--retries",
        "2",
        "--backoff",
        "0.01",
        "--no-progress",
    ]
    with ScriptedChat(fails_for_one) as server:
        assert main([*command, "--teacher-url", server.url]) == 1
        assert sum("sample 1 " in prompt_of(b) for b in server.bodies) == 3  # the first try and two retries
        status["now"] = 400  # a client error is not retried
        assert main([*command, "--teacher-url", server.url]) == 1
        assert sum("sample 1 " in prompt_of(b) for b in server.bodies) == 4
    (error,) = _lines(out.with_name("annotated.jsonl.errors.jsonl"))
    assert error["status"] == "error" and error["stage"] == "positive" and "HTTP 400" in error["error"]
    assert error["attempts"] == 1 and len(_lines(out)) == 2
    with ScriptedChat(echo_teacher) as healthy:
        assert main([*command, "--teacher-url", healthy.url]) == 0
        assert len(healthy.bodies) == 2  # only the failed pair, both of its sides
    assert len(_lines(out)) == 3 and not out.with_name("annotated.jsonl.errors.jsonl").exists()


def test_malformed_teacher_output_is_kept_with_its_problems(tmp_path, capsys) -> None:
    pairs = write_pairs(tmp_path / "data", {"t2i": 2})
    out = tmp_path / "annotated.jsonl"
    with ScriptedChat(lambda n, b: (200, "Sure! Here is a description without any tags.")) as server:
        assert (
            main(
                [
                    "data",
                    "annotate",
                    "--teacher-url",
                    server.url,
                    "--pairs",
                    str(pairs),
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
    printed = capsys.readouterr().out
    assert "no_tags x4" in printed and "text_keywords: 0 of 2" in printed
    for row in _lines(out):
        assert row["query_tcot"] == "Sure! Here is a description without any tags."
        report = row["meta"]["tcot_annotation"]
        assert report["query"] == {
            **report["query"],
            "kind": "query_text_to_image",
            "cue": "text_keywords",
            "problems": ["no_tags"],
            "cue_valid": False,
            "format_ok": False,
        }
        assert report["positive"]["kind"] == "candidate_image" and report["positive"]["problems"] == [
            "no_tags"
        ]
    run = json.loads(out.with_name("annotated.jsonl.run.json").read_text())
    assert run["summary"]["problems"] == {"no_tags": 4} and run["settings"]["teacher"] == "scripted"


# ----------------------------------------------------------------------------------------- journal


def test_journal_cuts_a_torn_line_and_refuses_other_settings(tmp_path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path, ANNOTATE_JOURNAL, {"seed": 1}) as journal:
        assert journal.open() == {}
        journal.append({"key": "a", "status": "ok"})
        journal.append({"key": "b", "status": "error"})
    with path.open("ab") as handle:
        handle.write(b'{"key": "c", "sta')  # killed half-way through a write
    with Journal(path, ANNOTATE_JOURNAL, {"seed": 1}) as journal:
        assert set(journal.open()) == {"a", "b"} and journal.torn_line_dropped
        journal.append({"key": "c", "status": "ok"})
    assert set(read_journal(path, ANNOTATE_JOURNAL)[1]) == {"a", "b", "c"}
    with (
        pytest.raises(ConfigError, match=r"seed: 1 then, 2 now"),
        Journal(path, ANNOTATE_JOURNAL, {"seed": 2}) as j,
    ):
        j.open()
    with Journal(path, ANNOTATE_JOURNAL, {"seed": 2}, restart=True) as journal:
        assert journal.open() == {}
    with (
        Journal(path, ANNOTATE_JOURNAL, {"seed": 2}) as first,
        Journal(path, ANNOTATE_JOURNAL, {"seed": 2}) as second,
    ):
        first.open()
        with pytest.raises(ConfigError, match="another run"):
            second.open()


def test_keys_follow_content_and_answer_choice_is_seeded(tmp_path) -> None:
    pairs = write_pairs(tmp_path / "a", {"txt": 4}, duplicate_first=True)
    keys = [r.key for r in read_pair_records(pairs)]
    assert len(set(keys)) == 5 and keys[4] == keys[0] + "#2"
    shuffled = tmp_path / "b" / "pairs.jsonl"
    shuffled.parent.mkdir()
    shuffled.write_text("".join(reversed(pairs.read_text().splitlines(keepends=True))))
    assert sorted(r.key.split("#")[0] for r in read_pair_records(shuffled)) == sorted(
        k.split("#")[0] for k in keys
    )
    chosen = [is_answer_conditioned(7, f"k{i}", 0.3) for i in range(2000)]
    assert chosen == [is_answer_conditioned(7, f"k{i}", 0.3) for i in range(2000)]
    assert 0.26 < sum(chosen) / 2000 < 0.34
    assert not any(is_answer_conditioned(7, f"k{i}", 0.0) for i in range(100))


# -------------------------------------------------------------------------------------------- filter


def _annotated(tmp_path: Path, counts: dict[str, int]) -> Path:
    pairs = write_pairs(tmp_path / "data", counts)
    out = tmp_path / "ann" / "annotated.jsonl"
    with ScriptedChat(echo_teacher) as server:
        annotate(pairs, out, OpenAIChatBackend(server.url, "scripted", retries=0), _annotate_config())
    return out


def verdict_by_sample(number: int, body: dict) -> tuple[int, str]:
    """'Yes' (unrelated: drop) for samples 0 and 3, something unparsable for sample 4, 'No' otherwise."""
    prompt = prompt_of(body)
    if re.search(r"sample [03] ", prompt):
        return 200, "Yes."
    if "sample 4 " in prompt:
        return 200, "I cannot tell."
    return 200, "<think>they match</think> No"


def test_filter_drops_yes_keeps_no_sets_unparsable_aside_and_replays(tmp_path, capsys) -> None:
    annotated = _annotated(tmp_path, {"txt": 6, "t2i": 5})
    out = tmp_path / "kept" / "kept.jsonl"
    with ScriptedChat(verdict_by_sample) as judge:
        code = main(
            [
                "data",
                "filter",
                "--judge-url",
                judge.url,
                "--in",
                str(annotated),
                "--out",
                str(out),
                "--dropped",
                str(tmp_path / "dropped.jsonl"),
                "--no-progress",
            ]
        )
        assert code == 0 and len(judge.bodies) == 11
        assert "Reply with one word: Yes or No." in prompt_of(judge.bodies[0])
    assert "kept 5 of 11 pair(s); dropped 4" in capsys.readouterr().out
    kept, aside = _lines(out), _lines(out.with_name("kept.jsonl.aside.jsonl"))
    assert {re.search(r"sample (\d+)", r["positive"].get("text") or r["query"]["text"])[1] for r in kept} == {
        "1",
        "2",
        "5",
    }
    assert len(aside) == 2 and all(r["meta"]["relevance"]["raw"] == "I cannot tell." for r in aside)
    assert all(r["meta"]["relevance"]["verdict"] == "no" for r in kept)
    assert len(_lines(tmp_path / "dropped.jsonl")) == 4
    verdicts = out.with_name("kept.jsonl.verdicts.jsonl")
    header, records = read_journal(verdicts, "embedrl data filter")
    assert header["settings"]["judge"] == "scripted"
    assert Counter(decision(r) for r in records.values()) == {"keep": 5, "drop": 4, "aside": 2}
    # the decision again, from the stored verdicts alone: no judge is reachable, the same bytes come out
    replay = out.with_name("replay.jsonl")
    assert (
        main(
            ["data", "filter", "--from-verdicts", str(verdicts), "--in", str(annotated), "--out", str(replay)]
        )
        == 0
    )
    assert replay.read_text() == out.read_text()
    # resuming: nothing is judged twice
    with ScriptedChat(verdict_by_sample) as judge:
        summary = filter_pairs(
            annotated,
            out,
            OpenAIChatBackend(judge.url, "scripted", retries=0),
            FilterConfig(judge="scripted", retry=FAST_RETRY, progress=False),
        )
        assert judge.bodies == [] and summary.kept == 5 and summary.judged_now == 0


def test_filter_without_tcots_drops_unjudged_and_missing_verdicts_are_errors(tmp_path) -> None:
    pairs = write_pairs(tmp_path / "data", {"txt": 3})
    verdicts = tmp_path / "v.jsonl"
    with ScriptedChat(verdict_by_sample) as judge:
        summary = filter_pairs(
            pairs,
            tmp_path / "kept.jsonl",
            OpenAIChatBackend(judge.url, "s", retries=0),
            FilterConfig(judge="s", retry=FAST_RETRY, progress=False),
            verdicts,
        )
        assert judge.bodies == []
    assert (summary.kept, summary.dropped, summary.without_tcot) == (0, 3, 3)
    other = write_pairs(tmp_path / "other", {"txt": 4})  # sample 3 has no stored verdict
    summary = apply_verdicts(other, verdicts, tmp_path / "kept2.jsonl")
    assert summary.errors == 1 and _lines(tmp_path / "kept2.jsonl.errors.jsonl")[0]["status"] == "missing"


# --------------------------------------------------------------------------------------------- split


def test_rl_allocation_and_sampling() -> None:
    assert rl_allocation({"a": 20, "b": 12, "c": 8}, rl_fraction=0.25) == {"a": 5, "b": 3, "c": 2}
    assert rl_allocation({"a": 20, "b": 12, "c": 8}, rl_size=10) == {"a": 5, "b": 3, "c": 2}
    assert sum(rl_allocation({"a": 7, "b": 5, "c": 1}, rl_size=4).values()) == 4
    with pytest.raises(ConfigError, match="leaves no pair"):
        rl_allocation({"a": 3}, rl_size=3)
    picks = sample_positions(20, 5, seed=0, dataset="a")
    assert len(set(picks)) == 5 and all(b - a == 4 for a, b in zip(picks, picks[1:]))
    assert picks == sample_positions(20, 5, seed=0, dataset="a")
    assert {tuple(sample_positions(20, 5, seed=s, dataset="a")) for s in range(8)} != {tuple(picks)}
    assert len(set(sample_positions(20, 5, 1, "a", "random"))) == 5
    assert sample_positions(100, 100, 0, "a") == list(range(100))


def test_split_sizes_proportions_disjointness_and_statistics(tmp_path, capsys) -> None:
    annotated = _annotated(tmp_path, {"txt": 20, "t2i": 12, "v2t": 8})
    rows = _lines(annotated)
    rows[5]["query_tcot"] = "no tags at all"  # one invalid keyword cue
    rows.append(dict(rows[0]))  # a repeated pair
    annotated.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage1, rl = tmp_path / "s1" / "stage1.jsonl", tmp_path / "rl" / "rl.jsonl"
    assert (
        main(
            [
                "data",
                "split",
                "--in",
                str(annotated),
                "--rl-fraction",
                "0.25",
                "--out-stage1",
                str(stage1),
                "--out-rl",
                str(rl),
                "--seed",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| dataset" in printed and "keywords ok" in printed
    a, b = read_pair_records(stage1), read_pair_records(rl)
    distinct = {(r.pair.dataset, r.key.split("#")[0]) for r in b}
    assert Counter(dataset for dataset, _ in distinct) == {"txt": 5, "t2i": 3, "v2t": 2}
    assert len(a) + len(b) == 41 and not {r.key.split("#")[0] for r in a} & {r.key.split("#")[0] for r in b}
    stats = json.loads((tmp_path / "rl" / "rl.jsonl.stats.json").read_text())["statistics"]
    assert stats["txt"]["pairs"] == 21 and stats["txt"]["cue_valid"]["text_keywords"] == round(41 / 42, 4)
    assert stats["t2i"]["cue_valid"]["bbox_2d"] == 1.0 and stats["v2t"]["cue_valid"]["key_frames"] == 1.0
    assert stats["all"]["rl"] == len(b) and stats["all"]["mean_tcot_chars"] > 40
    again = split_pairs(
        annotated, tmp_path / "x1.jsonl", tmp_path / "x2.jsonl", SplitConfig(rl_fraction=0.25, seed=4)
    )
    assert [r.key for r in read_pair_records(tmp_path / "x2.jsonl")] == [r.key for r in b]
    other = split_pairs(
        annotated,
        tmp_path / "y1.jsonl",
        tmp_path / "y2.jsonl",
        SplitConfig(rl_size=10, seed=4, sampling="random"),
    )
    assert other.rl_pairs in (10, 11) and again.stage1_pairs + again.rl_pairs == 41


# -------------------------------------------------------------------------- served tiny Reasoner (slow)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served_teacher(tiny_qwen3_reasoner):
    port = _free_port()
    # One thread: a tiny model gains nothing from two, and OpenMP threads spinning against other test processes
    # on a 2-core machine made each request about 20 times slower.
    proc = subprocess.Popen(
        [
            embedrl_executable(),
            "serve",
            "--reasoner",
            str(tiny_qwen3_reasoner),
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "embedrl serve did not come up"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _annotate_command(url: str, pairs: Path, out: Path) -> list[str]:
    return [
        "data",
        "annotate",
        "--teacher-url",
        url,
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        "--max-new-tokens",
        "2",
        "--answer-rate",
        "0.5",
        "--concurrency",
        "2",
        "--no-progress",
    ]


def _ok_records(journal: Path) -> int:
    if not journal.exists():
        return 0
    return sum('"status": "ok"' in line for line in journal.read_text(errors="replace").splitlines())


@pytest.mark.slow
def test_sigkill_half_way_then_rerun_equals_an_uninterrupted_run(served_teacher, tmp_path, capsys) -> None:
    pairs = write_pairs(tmp_path, {"txt": 32, "t2i": 5, "v2t": 3})
    whole, killed = tmp_path / "whole" / "annotated.jsonl", tmp_path / "killed" / "annotated.jsonl"
    assert main(_annotate_command(served_teacher, pairs, whole)) == 0

    journal = killed.with_name("annotated.jsonl.journal.jsonl")
    sigkill_when(
        [embedrl_executable(), *_annotate_command(served_teacher, pairs, killed)],
        lambda: _ok_records(journal) >= 12,
        "annotate",
    )
    assert not killed.exists()  # written only at the end
    before = _ok_records(journal)
    assert 12 <= before < 40

    capsys.readouterr()
    assert main(_annotate_command(served_teacher, pairs, killed)) == 0
    printed = capsys.readouterr().out
    counts = re.search(r"annotated 40 of 40 pair\(s\): (\d+) now, (\d+) from the journal", printed)
    assert counts and int(counts[2]) == before and int(counts[1]) == 40 - before, printed
    _, records = read_journal(journal, ANNOTATE_JOURNAL)
    oks = [
        json.loads(line)["key"] for line in journal.read_text().splitlines()[1:] if '"status": "ok"' in line
    ]
    assert len(oks) == len(set(oks)) == 40 and set(records) == set(oks)  # each pair exactly once
    assert killed.read_text() == whole.read_text()  # identical to the uninterrupted run, line for line
    rows = _lines(whole)
    assert all(r["meta"]["tcot_annotation"]["teacher"] == "reasoner" for r in rows)
    assert sum(r["meta"]["tcot_annotation"]["query"]["answer_conditioned"] for r in rows) >= 5
    assert main(["train", "check-data", str(killed)]) == 0


@pytest.mark.slow
def test_served_judge_verdicts_are_recorded_and_the_split_trains(
    served_teacher, tiny_qwen3_embedder, tmp_path, capsys
) -> None:
    # teacher T-CoTs from the scripted teacher (the tiny model writes blank ones), judged by the served model
    annotated = _annotated(tmp_path, {"txt": 8, "t2i": 6, "v2t": 4})
    out = tmp_path / "kept.jsonl"
    code = main(
        [
            "data",
            "filter",
            "--judge-url",
            served_teacher,
            "--in",
            str(annotated),
            "--out",
            str(out),
            "--max-new-tokens",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    _, records = read_journal(out.with_name("kept.jsonl.verdicts.jsonl"), "embedrl data filter")
    assert len(records) == 18 and all(
        r["status"] == "ok" and isinstance(r["raw"], str) for r in records.values()
    )
    summary = capsys.readouterr().out
    assert re.search(r"kept (\d+) of 18", summary)
    # a random tiny judge answers neither yes nor no: split the annotated file itself, with the verdicts
    stage1, rl = tmp_path / "stage1.jsonl", tmp_path / "rl.jsonl"
    assert (
        main(
            [
                "data",
                "split",
                "--in",
                str(annotated),
                "--rl-size",
                "6",
                "--out-stage1",
                str(stage1),
                "--out-rl",
                str(rl),
                "--verdicts",
                str(out.with_name("kept.jsonl.verdicts.jsonl")),
            ]
        )
        == 0
    )
    stats = json.loads(rl.with_name("rl.jsonl.stats.json").read_text())["statistics"]
    assert stats["all"]["judged"] == 18 and stats["all"]["rl"] == 6
    assert main(["train", "check-data", str(stage1)]) == 0 and main(["train", "check-data", str(rl)]) == 0
    run = tmp_path / "stage1-run"
    assert (
        main(
            [
                "train",
                "embedder",
                "--model",
                str(tiny_qwen3_embedder),
                "--pairs",
                str(stage1),
                "--out",
                str(run),
                "--preset",
                "tiny",
                "--max-steps",
                "2",
                "--sub-batch-size",
                "2",
                "--cpu",
            ]
        )
        == 0
    )
    assert (run / "final" / "config.json").is_file()
