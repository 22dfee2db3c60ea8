"""`embedrl score` on local and global tasks, from embeddings and from scores, and its input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedrl.cli import main
from embedrl.data.items import Item, Query
from embedrl.data.taskdir import Qrel, Task, TaskMeta, read_task, write_task
from embedrl.errors import DataError
from embedrl.eval.scoring import score_task


def _global_task(root: Path) -> Path:
    meta = TaskMeta(benchmark="TEST", task="glob", modality="visdoc", eval_type="global",
                    primary_metric="ndcg_linear@5", k_list=[1, 3], version_note="v-fixed")
    queries = [Query(id=f"q{i}", text=f"query {i}") for i in range(3)]
    cands = [Item(id=f"c{i}", text=f"cand {i}") for i in range(4)]
    qrels = [Qrel("q0", "c0", 2), Qrel("q0", "c1", 1), Qrel("q1", "c2", 1)]  # q2 has no positive
    write_task(Task(meta, queries, cands, qrels), root)
    return root


def _local_task(root: Path) -> Path:
    meta = TaskMeta(benchmark="TEST", task="loc", modality="image", eval_type="local", primary_metric="hit@1")
    queries = [Query(id="q0", text="a", candidate_ids=["c2", "c0"]), Query(id="q1", text="b",
                                                                           candidate_ids=["c1", "c2", "c3"])]
    cands = [Item(id=f"c{i}", text=f"cand {i}") for i in range(4)]
    write_task(Task(meta, queries, cands, [Qrel("q0", "c0"), Qrel("q1", "c3")]), root)
    return root


def test_global_from_scores(tmp_path: Path) -> None:
    task = read_task(_global_task(tmp_path))
    scores = np.array([[0.9, 0.1, 0.8, 0.2],    # q0: c0 (2), c2, c3, c1 (1)
                       [0.5, 0.5, 0.4, 0.1],    # q1: c0/c1 tied, then c2 (relevant)
                       [0.3, 0.2, 0.1, 0.0]])
    r = score_task(task, scores=scores, pessimistic=True)
    assert r["num_queries"] == 3 and r["queries_without_positives"] == 1
    assert r["metrics"]["hit@1"] == pytest.approx(1 / 3)
    assert r["metrics"]["hit@3"] == pytest.approx(2 / 3)
    assert "ndcg_linear@3" in r["metrics"] and "precision@10" in r["metrics"]
    assert r["main_score"] == r["metrics"]["ndcg_linear@5"]
    assert r["tie_rate"] == pytest.approx(1 / 3)
    assert r["version_note"] == "v-fixed" and r["pessimistic_hit@1"] == pytest.approx(1 / 3)


def test_local_uses_own_candidates_in_listed_order(tmp_path: Path) -> None:
    task = read_task(_local_task(tmp_path))
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    r = score_task(task, query_emb=q, cand_emb=c)
    # q0: c2 and c0 are identical -> tie, listed order puts c2 first -> miss; q1: c3 wins over c1 and c2
    assert r["metrics"]["hit@1"] == 0.5 and r["tie_rate"] == 0.5
    scores = np.array([[0.0, 0.0, 0.1, 0.9], [0.0, 0.2, 0.1, 0.9]])  # c3 is not q0's candidate: ignored
    assert score_task(task, scores=scores)["metrics"]["hit@1"] == 0.5


def test_input_errors_name_the_problem(tmp_path: Path) -> None:
    task = read_task(_global_task(tmp_path))
    with pytest.raises(DataError, match=r"S\.npy: has shape \(3, 5\) but the task has 3 queries × 4 candidates"):
        score_task(task, scores=np.zeros((3, 5)), names=("S.npy", "", ""))
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match=r"row 1 \(query 'q1'\) contains NaN"):
        score_task(task, scores=bad)
    q = np.ones((3, 8))
    c = np.ones((4, 8))
    c[3] = 0
    with pytest.raises(DataError, match=r"C\.npy: row 3 \(candidate 'c3'\) is a zero vector"):
        score_task(task, query_emb=q, cand_emb=c, names=("", "Q.npy", "C.npy"))
    with pytest.raises(DataError, match="dimension 8 differs"):
        score_task(task, query_emb=q, cand_emb=np.ones((4, 6)))


def test_cli_score_writes_result(tmp_path: Path, capsys) -> None:
    root = _global_task(tmp_path / "task")
    np.save(tmp_path / "Q.npy", np.eye(3, 4, dtype=np.float32) + 0.01)
    np.save(tmp_path / "C.npy", np.eye(4, dtype=np.float32) + 0.01)
    out = tmp_path / "r.json"
    assert main(["score", "--task", str(root), "--query-emb", str(tmp_path / "Q.npy"), "--cand-emb",
                 str(tmp_path / "C.npy"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["hit@1"] == pytest.approx(1 / 3)  # q0 finds c0; q1 ranks c1 over c2; q2 has none
    assert main(["score", "--task", str(root), "--scores", str(tmp_path / "missing.npy")]) == 2
    assert "missing.npy: file not found" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "embedrl", "score", "--task", str(root), "--scores",
                           str(tmp_path / "C.npy")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "C.npy: has 4 rows but the task has 3 queries" in proc.stderr
