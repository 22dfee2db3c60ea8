"""JSONL files are read line by line: a line that is not UTF-8 (or holds a NUL byte) is one problem on its own
line, and every line after it is still read, by `task validate`, `train check-data`, `encode` and conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedrl.cli import main
from embedrl.data.items import Item, Query
from embedrl.data.taskdir import Qrel, Task, TaskMeta, write_task
from embedrl.data.upstream import read_records
from embedrl.errors import Problem
from embedrl.fileio import iter_jsonl

BAD_UTF8 = '{"qid": "q4", "text": "caf\xe9"}'.encode("latin-1")  # a Latin-1 file line: 0xe9 is not UTF-8


def _line(obj) -> bytes:
    return json.dumps(obj).encode()


def _read(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    problems: list[Problem] = []
    return list(iter_jsonl(path, problems)), problems


def _text_task(root: Path) -> None:
    meta = TaskMeta(benchmark="TEST", task="t2t", modality="text", eval_type="global", primary_metric="hit@1")
    queries = [Query(id=f"q{i}", text=f"query {i}") for i in range(1, 7)]
    candidates = [Item(id="c1", text="one"), Item(id="c2", text="two")]
    write_task(Task(meta, queries, candidates, [Qrel(q.id, "c1") for q in queries]), root)


# ------------------------------------------------------------------------------------------- the CLI


def test_task_validate_names_the_undecodable_line_and_checks_the_lines_after_it(
    tmp_path: Path, capsys
) -> None:
    _text_task(tmp_path)
    queries = tmp_path / "queries.jsonl"
    lines = queries.read_bytes().splitlines()
    lines[3] = BAD_UTF8
    lines[4] = _line({"qid": "q5", "text": 5})  # a defect after the bad line must still be found
    queries.write_bytes(b"\n".join(lines) + b"\n")
    capsys.readouterr()

    assert main(["task", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"{queries}:4: not UTF-8 text"), out
    assert "column 27" in out[0]  # the 0xe9 of "caf\xe9"
    assert out[1] == f"{queries}:5: record 'q5': field 'text': expected str, got int"
    # q6 (line 6) was read: only the qrels of the two rejected queries point at unknown ones
    qrels = tmp_path / "qrels.jsonl"
    assert out[2:] == [
        f"{qrels}:4: field 'qid': unknown qid 'q4'",
        f"{qrels}:5: field 'qid': unknown qid 'q5'",
    ]


def test_check_data_names_the_undecodable_line_and_counts_the_pairs_after_it(tmp_path: Path, capsys) -> None:
    pairs = tmp_path / "pairs.jsonl"

    def pair(i: int) -> bytes:
        return _line({"dataset": "D", "query": {"text": f"q{i}"}, "positive": {"text": f"p{i}"}})

    pairs.write_bytes(
        b"\n".join(
            [
                pair(1),
                pair(2),
                pair(3),
                b'{"dataset": "D", "query": {"text": "\xff"}, "positive": {"text": "p"}}',
                pair(5),
                _line({"query": {"text": "q"}, "positive": {"text": "p"}}),
                pair(7),
            ]
        )
        + b"\n"
    )
    capsys.readouterr()

    assert main(["train", "check-data", str(pairs)]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith(str(pairs))]
    assert problems[0].startswith(f"{pairs}:4: not UTF-8 text"), out
    assert problems[1:] == [f"{pairs}:6: field 'dataset': missing required field"]
    summary = json.loads(out[out.index("{") :])
    assert summary["D"]["pairs"] == 5  # lines 1-3, 5 and 7


def test_encode_names_every_undecodable_line_before_loading_a_model(tmp_path: Path, capsys) -> None:
    items = tmp_path / "items.jsonl"
    items.write_bytes(
        b"\n".join(
            [
                _line({"id": "a", "text": "x"}),
                b'{"id": "b", "text": "\xe9"}',
                _line({"id": "c", "text": "y"}),
                b'{"id": "d", "text": "\xc3"}',
                _line({"id": "e", "text": 3}),
            ]
        )
        + b"\n"
    )
    capsys.readouterr()
    code = main(
        [
            "encode",
            "--embedder",
            str(tmp_path / "no-such-model"),
            "--input",
            str(items),
            "--out",
            str(tmp_path / "v.npy"),
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert [line.split(": ")[0] for line in err[:3]] == [f"{items}:2", f"{items}:4", f"{items}:5"], err
    assert "not UTF-8 text" in err[0] and "not UTF-8 text" in err[1]
    assert not any("blank line" in line for line in err)  # the undecodable lines are not mistaken for blanks


def test_conversion_reads_the_records_after_an_undecodable_line(tmp_path: Path) -> None:
    source = tmp_path / "test.jsonl"
    source.write_bytes(b'{"id": 1}\n{"id": "\xe9"}\n{"id": 3}\n')
    problems: list[Problem] = []
    records = list(read_records(source, problems))
    assert [(r.row, r.data) for r in records] == [(1, {"id": 1}), (3, {"id": 3})]
    assert [(p.file, p.line) for p in problems] == [(str(source), 2)]


# --------------------------------------------------------------------------------------- iter_jsonl


def test_undecodable_lines_far_into_a_file_keep_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    lines = [_line({"i": i, "pad": "x" * 100}) for i in range(1, 301)]
    lines[149] = b'{"i": 150, "pad": "\x80"}'  # a lone continuation byte
    lines[249] = b'{"i": 250, "pad": "\xe2\x82"}'  # a multi-byte character cut short
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, problems = _read(path)
    assert [p.line for p in problems] == [150, 250]
    assert all(p.file == str(path) and p.message.startswith("not UTF-8 text") for p in problems)
    assert [line for line, _ in records] == [i for i in range(1, 301) if i not in (150, 250)]
    assert all(obj["i"] == line for line, obj in records)


def test_a_byte_order_mark_is_skipped_on_the_first_line_only(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + _line({"i": 1})
        + b"\n\xef\xbb\xbf"
        + _line({"i": 2})
        + b"\n"
        + _line({"i": 3})
        + b"\n"
    )
    records, problems = _read(path)
    assert records == [(1, {"i": 1}), (3, {"i": 3})]
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [(2, "byte-order mark inside the file")]


def test_line_endings_blank_lines_and_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        _line({"i": 1})
        + b"\r\n\r\n"
        + _line({"i": 3})
        + b"\n  \t\n"
        + _line({"i": 5})
        + b"\r\n"
        + b"\n"
        + _line({"i": 7})
    )
    records, problems = _read(path)
    assert problems == []
    assert records == [(1, {"i": 1}), (3, {"i": 3}), (5, {"i": 5}), (7, {"i": 7})]


def test_a_lone_carriage_return_ends_a_line_as_it_does_in_text_mode(tmp_path: Path) -> None:
    path = tmp_path / "cr.jsonl"
    path.write_bytes(_line({"i": 1}) + b"\r" + _line({"i": 2}) + b"\r\r\n" + _line({"i": 4}) + b"\r")
    records, problems = _read(path)
    assert problems == []
    assert records == [(1, {"i": 1}), (2, {"i": 2}), (4, {"i": 4})]


def test_a_nul_byte_is_a_problem_of_its_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.jsonl"
    path.write_bytes(
        _line({"i": 1}) + b"\n\x00\x00\x00\x00\n" + b'{"i": 3, "s": "a\x00b"}\n' + _line({"i": 4}) + b"\n"
    )
    records, problems = _read(path)
    assert records == [(1, {"i": 1}), (4, {"i": 4})]
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [
        (2, "NUL byte at column 1"),
        (3, "NUL byte at column 17"),
    ]


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n\n", b"\xef\xbb\xbf\r\n"])
def test_files_without_records_give_no_records_and_no_problems(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert _read(path) == ([], [])


def test_a_missing_or_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    assert [(p.file, p.message) for p in _read(tmp_path / "nope.jsonl")[1]] == [
        (str(tmp_path / "nope.jsonl"), "file not found")
    ]
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    problems = _read(folder)[1]
    assert len(problems) == 1 and problems[0].message.startswith("cannot read")
