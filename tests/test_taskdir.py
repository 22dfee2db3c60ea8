"""Unified task format: round trips, and every validation defect reported with file, line and field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from embedrl.cli import main
from embedrl.data.items import Item, Query, VideoRef
from embedrl.data.taskdir import Qrel, Task, TaskMeta, read_task, validate_task, write_task
from embedrl.errors import DataError


def _media(root: Path, rel: str) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return rel


def make_global_task(root: Path) -> Task:
    img = _media(root, "media/images/a.png")
    frames = [_media(root, f"media/frames/v1/{i:06d}.jpg") for i in range(3)]
    meta = TaskMeta(
        benchmark="TEST",
        task="t2x",
        modality="image",
        eval_type="global",
        primary_metric="ndcg_linear@5",
        meta_task="RET",
        query_instruction="Find it:",
        version_note="synthetic v1",
    )
    queries = [Query(id="q1", text="a red square"), Query(id="q2", text="a video", instruction="Custom:")]
    candidates = [
        Item(id="c1", images=[img]),
        Item(id="c2", video=VideoRef(id="v1", frames=frames)),
        Item(id="c3", text="plain text"),
    ]
    qrels = [Qrel("q1", "c1", 2), Qrel("q1", "c3", 1), Qrel("q2", "c2", 1)]
    return Task(meta, queries, candidates, qrels)


def make_local_task(root: Path) -> Task:
    img = _media(root, "media/images/q.png")
    meta = TaskMeta(benchmark="TEST", task="cls", modality="image", eval_type="local", primary_metric="hit@1")
    queries = [
        Query(id="q1", images=[img], text="what is it", candidate_ids=["cat", "dog"]),
        Query(id="q2", images=[img], candidate_ids=["dog", "cat"]),
    ]
    candidates = [Item(id="cat", text="cat"), Item(id="dog", text="dog")]
    return Task(meta, queries, candidates, [Qrel("q1", "cat"), Qrel("q2", "dog")])


@pytest.mark.parametrize("maker", [make_global_task, make_local_task])
def test_round_trip(tmp_path: Path, maker) -> None:
    task = maker(tmp_path)
    write_task(task, tmp_path)
    assert validate_task(tmp_path) == []
    back = read_task(tmp_path)
    assert back.meta == task.meta
    assert [q.to_json() for q in back.queries] == [q.to_json() for q in task.queries]
    assert [c.to_json() for c in back.candidates] == [c.to_json() for c in task.candidates]
    assert back.qrels == task.qrels
    assert back.relevance()["q1"] == {r.cid: r.rel for r in task.qrels if r.qid == "q1"}


def test_encoding_views_fill_instruction_and_absolute_paths(tmp_path: Path) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    task = read_task(tmp_path)
    queries = task.queries_for_encoding()
    assert queries[0].instruction == "Find it:"
    assert queries[1].instruction == "Custom:"  # explicit instruction wins
    cands = task.candidates_for_encoding()
    assert Path(cands[0].images[0]).is_absolute() and Path(cands[0].images[0]).is_file()
    assert all(Path(f).is_file() for f in cands[1].video.frames)


def _problems(root: Path) -> list[str]:
    return [str(p) for p in validate_task(root)]


def _write_lines(path: Path, lines: list) -> None:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    qf = tmp_path / "queries.jsonl"
    lines = qf.read_text().splitlines()
    lines.insert(1, '{"qid": "q9", "text": ')
    qf.write_text("\n".join(lines) + "\n")
    probs = _problems(tmp_path)
    assert len(probs) == 1
    assert probs[0].startswith(f"{qf}:2: malformed JSON")


def test_missing_required_fields(tmp_path: Path) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    meta = json.loads((tmp_path / "task.json").read_text())
    del meta["primary_metric"]
    (tmp_path / "task.json").write_text(json.dumps(meta))
    _write_lines(
        tmp_path / "queries.jsonl",
        [{"text": "no id"}, {"qid": "q1", "text": "ok"}, {"qid": "q2", "text": "x"}],
    )
    probs = _problems(tmp_path)
    assert any("task.json: field 'primary_metric': missing required field" in p for p in probs)
    assert any(p.endswith("queries.jsonl:1: field 'qid': missing required field") for p in probs)


def test_duplicate_ids(tmp_path: Path) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    with (tmp_path / "candidates.jsonl").open("a") as f:
        f.write(json.dumps({"cid": "c1", "text": "again"}) + "\n")
    with (tmp_path / "queries.jsonl").open("a") as f:
        f.write(json.dumps({"qid": "q2", "text": "again"}) + "\n")
    probs = _problems(tmp_path)
    assert any(
        "candidates.jsonl:4: record 'c1': field 'cid': duplicate cid (first on line 1)" in p for p in probs
    )
    assert any(
        "queries.jsonl:3: record 'q2': field 'qid': duplicate qid (first on line 2)" in p for p in probs
    )


def test_qrel_with_unknown_ids(tmp_path: Path) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    with (tmp_path / "qrels.jsonl").open("a") as f:
        f.write(json.dumps({"qid": "nope", "cid": "c1", "rel": 1}) + "\n")
        f.write(json.dumps({"qid": "q1", "cid": "ghost", "rel": 1}) + "\n")
        f.write(json.dumps({"qid": "q1", "cid": "c2", "rel": 0}) + "\n")
    probs = _problems(tmp_path)
    assert any("qrels.jsonl:4: field 'qid': unknown qid 'nope'" in p for p in probs)
    assert any("qrels.jsonl:5: field 'cid': unknown cid 'ghost'" in p for p in probs)
    assert any("qrels.jsonl:6: field 'rel': must be an integer >= 1" in p for p in probs)


def test_local_query_without_candidates(tmp_path: Path) -> None:
    write_task(make_local_task(tmp_path), tmp_path)
    _write_lines(
        tmp_path / "queries.jsonl",
        [
            {"qid": "q1", "text": "x", "candidate_ids": ["cat", "dog"]},
            {"qid": "q2", "text": "no list"},
            {"qid": "q3", "text": "empty list", "candidate_ids": []},
            {"qid": "q4", "text": "unknown", "candidate_ids": ["cow"]},
        ],
    )
    _write_lines(tmp_path / "qrels.jsonl", [{"qid": "q1", "cid": "cat", "rel": 1}])
    probs = _problems(tmp_path)
    assert any("queries.jsonl:2: record 'q2': field 'candidate_ids': a local task needs" in p for p in probs)
    assert any("queries.jsonl:3: record 'q3': field 'candidate_ids': a local task needs" in p for p in probs)
    assert any(
        "queries.jsonl:4: record 'q4': field 'candidate_ids': unknown candidate id(s) ['cow']" in p
        for p in probs
    )
    assert len(probs) == 3


def test_media_path_defects(tmp_path: Path) -> None:
    root = tmp_path / "task"
    write_task(make_global_task(root), root)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    os.symlink(outside, root / "media" / "link.png")
    _write_lines(
        root / "candidates.jsonl",
        [
            {"cid": "c1", "images": ["media/images/a.png"]},
            {"cid": "c2", "images": ["media/images/missing.png"]},
            {"cid": "c3", "images": ["../secret.png"]},
            {"cid": "c4", "images": [str(outside)]},
            {"cid": "c5", "images": ["media/link.png"]},
            {"cid": "c6", "video": {"frames": ["media/frames/v1/000000.jpg", "media/nope.jpg"]}},
        ],
    )
    _write_lines(root / "qrels.jsonl", [{"qid": "q1", "cid": "c1", "rel": 1}])
    probs = _problems(root)
    assert any(
        ":2: record 'c2': field 'images[0]': media file 'media/images/missing.png' does not exist" in p
        for p in probs
    )
    assert any(
        ":3: record 'c3': field 'images[0]': path '../secret.png' escapes the task folder" in p for p in probs
    )
    assert any(":4: record 'c4': field 'images[0]': absolute path" in p for p in probs)
    assert any(
        ":5: record 'c5': field 'images[0]': symlink 'media/link.png' escapes the task folder" in p
        for p in probs
    )
    assert any(
        ":6: record 'c6': field 'video.frames[1]': media file 'media/nope.jpg' does not exist" in p
        for p in probs
    )
    assert len(probs) == 5


def test_wrong_types_and_empty_items(tmp_path: Path) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    _write_lines(
        tmp_path / "candidates.jsonl",
        [
            {"cid": "c1", "text": 5},
            {"cid": "c2", "images": "media/images/a.png"},
            {"cid": "c3"},
            [1, 2],
        ],
    )
    _write_lines(tmp_path / "qrels.jsonl", [])
    probs = _problems(tmp_path)
    assert any(":1: record 'c1': field 'text': expected str, got int" in p for p in probs)
    assert any(":2: record 'c2': field 'images': expected list, got str" in p for p in probs)
    assert any(":3: record 'c3': has no content" in p for p in probs)
    assert any(":4: expected a JSON object, got list" in p for p in probs)


def test_read_task_raises_with_every_problem(tmp_path: Path) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    (tmp_path / "qrels.jsonl").write_text('{"qid": "x", "cid": "c1"}\n{"qid": "q1", "cid": "y"}\n')
    with pytest.raises(DataError) as info:
        read_task(tmp_path)
    assert len(info.value.problems) == 2
    assert "unknown qid 'x'" in info.value.report()


def test_cli_validate_prints_one_line_per_defect(tmp_path: Path, capsys) -> None:
    root = tmp_path / "bad"
    write_task(make_local_task(root), root)
    _write_lines(
        root / "queries.jsonl",
        [
            '{"qid": "q1", ',  # malformed JSON
            {"text": "no id", "candidate_ids": ["cat"]},  # missing field
            {"qid": "q2", "text": "a", "candidate_ids": ["cat"]},
            {"qid": "q2", "text": "b", "candidate_ids": ["cat"]},  # duplicate qid
            {"qid": "q3", "text": "c"},  # local query without candidates
            {"qid": "q4", "images": ["../x.png"], "candidate_ids": ["cat"]},  # escapes
            {"qid": "q5", "images": ["media/none.png"], "candidate_ids": ["cat"]},  # missing media
        ],
    )
    _write_lines(root / "qrels.jsonl", [{"qid": "q2", "cid": "cat"}, {"qid": "zz", "cid": "cat"}])
    code = main(["task", "validate", str(root)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert len(out) == 7, out
    assert all(line.startswith(str(root)) for line in out)

    good = tmp_path / "good"
    write_task(make_global_task(good), good)
    assert main(["task", "validate", str(good)]) == 0


def test_names_that_would_leave_the_results_folder_are_rejected(tmp_path: Path) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    meta = json.loads((tmp_path / "task.json").read_text())
    for field, value in (
        ("task", "../../outside"),
        ("benchmark", "a/b"),
        ("task", ".hidden"),
        ("task", "x\\y"),
    ):
        (tmp_path / "task.json").write_text(json.dumps({**meta, field: value}))
        assert any(
            f"field '{field}': {value!r} cannot be used as a file name" in p for p in _problems(tmp_path)
        )
    (tmp_path / "task.json").write_text(json.dumps({**meta, "task": "Wiki-SS-NQ_v2 (test)"}))
    assert _problems(tmp_path) == []


def test_integer_candidate_ids_like_integer_cids(tmp_path: Path) -> None:
    write_task(make_local_task(tmp_path), tmp_path)
    candidates = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    _write_lines(tmp_path / "candidates.jsonl", [{**c, "cid": i} for i, c in enumerate(candidates)])
    _write_lines(tmp_path / "queries.jsonl", [{"qid": 1, "text": "x", "candidate_ids": [0, 1]}])
    _write_lines(tmp_path / "qrels.jsonl", [{"qid": 1, "cid": 0, "rel": 1}])
    assert _problems(tmp_path) == []
    assert read_task(tmp_path).queries[0].candidate_ids == ["0", "1"]


def test_decode_finds_files_that_exist_but_do_not_decode(tmp_path: Path, capsys) -> None:
    write_task(make_global_task(tmp_path), tmp_path)
    assert main(["task", "validate", "--decode", str(tmp_path)]) == 0
    (tmp_path / "media" / "frames" / "v1" / "000001.jpg").write_bytes(b"\xff\xd8 cut short")
    assert main(["task", "validate", str(tmp_path)]) == 0  # the file exists: the cheap check passes
    capsys.readouterr()
    assert main(["task", "validate", "--decode", str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "field 'video.frames[1]'" in out[0] and "000001.jpg" in out[0]
    assert out[0].startswith(f"{tmp_path / 'candidates.jsonl'}: record ")
