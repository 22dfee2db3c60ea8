"""`score_task` and `embedrl score`: row/column order, local candidate lists, result fields, input errors."""

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
from embedrl.errors import ConfigError, DataError
from embedrl.eval.scoring import score_task

VENV_EMBEDRL = Path(sys.executable).parent / "embedrl"


def make_global_task(root: Path, *, graded: bool = False) -> Path:
    """4 queries, 6 candidates; q_i's positive is c_i (q0 also has c5 with grade 2 when graded)."""
    meta = TaskMeta(
        benchmark="MMEB-V2",
        task="ViDoRe_arxivqa" if graded else "MSR-VTT",
        modality="visdoc" if graded else "video",
        eval_type="global",
        primary_metric="ndcg_linear@5" if graded else "hit@1",
        meta_task="RET",
        version_note="test data v1",
    )
    queries = [Query(id=f"q{i}", text=f"query {i}") for i in range(4)]
    candidates = [Item(id=f"c{i}", text=f"cand {i}") for i in range(6)]
    qrels = [Qrel(f"q{i}", f"c{i}", 1) for i in range(4)]
    if graded:
        qrels.append(Qrel("q0", "c5", 2))
    return write_task(Task(meta, queries, candidates, qrels), root)


def make_local_task(root: Path) -> Path:
    """3 queries over their own candidate lists; the union pool has 5 candidates."""
    meta = TaskMeta(
        benchmark="MMEB-V2",
        task="HatefulMemes",
        modality="image",
        eval_type="local",
        primary_metric="hit@1",
        meta_task="CLS",
    )
    queries = [
        Query(id="q0", text="a", candidate_ids=["c3", "c1"]),
        Query(id="q1", text="b", candidate_ids=["c0", "c2", "c4"]),
        Query(id="q2", text="c", candidate_ids=["c4", "c2"]),
    ]
    candidates = [Item(id=f"c{i}", text=f"cand {i}") for i in range(5)]
    qrels = [Qrel("q0", "c1"), Qrel("q1", "c4"), Qrel("q2", "c4")]
    return write_task(Task(meta, queries, candidates, qrels), root)


def test_global_scores_follow_file_order(tmp_path):
    task = read_task(make_global_task(tmp_path / "t"))
    s = np.full((4, 6), 0.1)
    s[0, 0] = s[1, 1] = s[2, 3] = s[3, 3] = 0.9  # q0, q1, q3 right; q2 ranks c3 first
    r = score_task(task, scores=s)
    assert r["main_score"] == pytest.approx(0.75)
    assert r["metrics"]["hit@1"] == pytest.approx(0.75)
    assert r["num_queries"] == 4 and r["num_candidates"] == 6
    assert r["version_note"] == "test data v1" and r["benchmark"] == "MMEB-V2"
    assert r["queries_without_positives"] == 0
    expected_keys = {
        f"{m}@{k}"
        for m in (
            "hit",
            "precision",
            "recall",
            "uvrb_recall",
            "ndcg_linear",
            "ndcg_exponential",
            "mrr",
            "map",
            "f1",
        )
        for k in (1, 5, 10)
    }
    assert set(r["metrics"]) == expected_keys
    # q2's positive c2 ties at 0.1 with c0, c1, c4, c5 behind c3: stable order puts c0, c1 first, c2 third.
    assert r["metrics"]["mrr@10"] == pytest.approx((1 + 1 + 1 / 4 + 1) / 4)
    assert r["tie_rate"] == 0.0


def test_embeddings_cosine_and_dot(tmp_path):
    task = read_task(make_global_task(tmp_path / "t"))
    c = np.eye(6, dtype=np.float32)
    q = np.eye(6, dtype=np.float32)[:4] * np.array([[1], [2], [3], [4]], dtype=np.float32)
    assert score_task(task, query_emb=q, cand_emb=c)["main_score"] == 1.0
    # A long candidate c5 = 10·e5 + 2·e0: by dot product q0 (= e0) scores it 2 > 1 and misses; by cosine
    # it scores 2/√104 < 1 and still hits.
    c_long = c.copy()
    c_long[5] = 10 * c[5] + 2 * c[0]
    dot = score_task(task, query_emb=q, cand_emb=c_long, similarity="dot")
    cos = score_task(task, query_emb=q, cand_emb=c_long, similarity="cosine")
    assert dot["metrics"]["hit@1"] == pytest.approx(0.75)
    assert cos["metrics"]["hit@1"] == pytest.approx(1.0)


def test_graded_visdoc_task(tmp_path):
    task = read_task(make_global_task(tmp_path / "t", graded=True))
    s = np.zeros((4, 6))
    s[0, 0], s[0, 5] = 0.9, 0.5  # q0: c0 (grade 1) before c5 (grade 2)
    for i in (1, 2, 3):
        s[i, i] = 1.0
    r = score_task(task, scores=s)
    ndcg_q0 = (1 + 2 / np.log2(3)) / (2 + 1 / np.log2(3))
    assert r["main_score"] == pytest.approx((ndcg_q0 + 3) / 4)
    assert r["primary_metric"] == "ndcg_linear@5"


def test_local_task_uses_only_its_candidates_and_their_order(tmp_path):
    task = read_task(make_local_task(tmp_path / "t"))
    s = np.zeros((3, 5))
    s[0] = [9, 0.5, 9, 0.2, 9]  # only c3 (0.2) and c1 (0.5) count for q0 -> c1 wins
    s[1] = [0.3, 0.3, 0.3, 9, 0.3]  # c0, c2, c4 all 0.3: tie -> listed order c0 first -> miss
    s[2] = [0, 0, 0.7, 0, 0.7]  # c4 listed first in q2's list, tied with c2 -> hit
    r = score_task(task, scores=s, pessimistic=True)
    assert r["metrics"]["hit@1"] == pytest.approx(2 / 3)
    assert r["tie_rate"] == pytest.approx(2 / 3)
    assert r["metrics"]["pessimistic_hit@1"] == pytest.approx(1 / 3)  # q2's tie counts against it
    assert r["metrics"]["precision@5"] == pytest.approx(0.2)  # divided by k, pools of 2-3
    assert r["eval_type"] == "local" and r["num_candidates"] == 5


def test_local_task_from_embeddings_matches_scores(tmp_path):
    task = read_task(make_local_task(tmp_path / "t"))
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    c = rng.standard_normal((5, 8)).astype(np.float32)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    a = score_task(task, query_emb=q, cand_emb=c)
    b = score_task(task, scores=qn @ cn.T)
    assert a["metrics"] == pytest.approx(b["metrics"])


def test_input_errors_name_file_and_row(tmp_path):
    task = read_task(make_global_task(tmp_path / "t"))
    with pytest.raises(
        DataError, match=r"scores: has shape \(4, 5\) but the task has 4 queries × 6 candidates"
    ):
        score_task(task, scores=np.zeros((4, 5)))
    bad = np.zeros((4, 6))
    bad[2, 3] = np.nan
    with pytest.raises(DataError, match=r"row 2 \(qid 'q2'\) contains NaN or inf"):
        score_task(task, scores=bad)
    q = np.ones((4, 3), dtype=np.float32)
    q[1] = 0
    with pytest.raises(DataError, match=r"query_emb: row 1 \(qid 'q1'\) is a zero vector"):
        score_task(task, query_emb=q, cand_emb=np.ones((6, 3)))
    c = np.ones((6, 3))
    c[4, 0] = np.inf
    with pytest.raises(DataError, match=r"cand_emb: row 4 \(cid 'c4'\) contains NaN or inf"):
        score_task(task, query_emb=np.ones((4, 3)), cand_emb=c)
    with pytest.raises(DataError, match="has 3 rows but the task has 4 queries"):
        score_task(task, query_emb=np.ones((3, 3)), cand_emb=np.ones((6, 3)))
    with pytest.raises(DataError, match="dimension 3"):
        score_task(task, query_emb=np.ones((4, 3)), cand_emb=np.ones((6, 4)))
    with pytest.raises(ConfigError, match="either a score matrix"):
        score_task(task, scores=np.zeros((4, 6)), query_emb=np.ones((4, 3)))
    with pytest.raises(ConfigError, match="similarity"):
        score_task(task, query_emb=np.ones((4, 3)), cand_emb=np.ones((6, 3)), similarity="l1")


def test_cli_writes_result_json(tmp_path, capsys):
    root = make_global_task(tmp_path / "t")
    q = np.eye(6, dtype=np.float32)[:4]
    np.save(tmp_path / "Q.npy", q)
    np.save(tmp_path / "C.npy", np.eye(6, dtype=np.float32))
    out = tmp_path / "res" / "R.json"
    code = main(
        [
            "score",
            "--task",
            str(root),
            "--query-emb",
            str(tmp_path / "Q.npy"),
            "--cand-emb",
            str(tmp_path / "C.npy"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "hit@1 = 100.00" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["main_score"] == 1.0 and result["task"] == "MSR-VTT"
    # Without --out the JSON goes to stdout.
    assert (
        main(
            [
                "score",
                "--task",
                str(root),
                "--query-emb",
                str(tmp_path / "Q.npy"),
                "--cand-emb",
                str(tmp_path / "C.npy"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["metrics"]["mrr@10"] == 1.0


def test_cli_errors_are_clean(tmp_path, capsys):
    root = make_global_task(tmp_path / "t")
    np.save(tmp_path / "S.npy", np.zeros((4, 7), dtype=np.float32))
    assert main(["score", "--task", str(root), "--scores", str(tmp_path / "S.npy")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'S.npy'}: has shape (4, 7) but the task has 4 queries × 6 candidates" in err
    assert main(["score", "--task", str(root), "--scores", str(tmp_path / "missing.npy")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["score", "--task", str(root), "--query-emb", str(tmp_path / "S.npy")]) == 2
    assert "--query-emb needs --cand-emb" in capsys.readouterr().err


def test_cli_faiss_search_matches_exact(tmp_path):
    pytest.importorskip("faiss", reason="faiss-cpu (the `index` extra) is not installed")
    task = read_task(make_global_task(tmp_path / "t"))
    rng = np.random.default_rng(1)
    q, c = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    exact = score_task(task, query_emb=q, cand_emb=c)
    flat = score_task(task, query_emb=q, cand_emb=c, search="faiss-flat")
    assert flat["metrics"] == pytest.approx(exact["metrics"]) and flat["search"] == "faiss-flat"


@pytest.mark.skipif(not VENV_EMBEDRL.exists(), reason="no embedrl console script next to this interpreter")
def test_console_script(tmp_path):
    root = make_global_task(tmp_path / "t")
    np.save(tmp_path / "S.npy", np.eye(4, 6))
    proc = subprocess.run(
        [str(VENV_EMBEDRL), "score", "--task", str(root), "--scores", str(tmp_path / "S.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["main_score"] == 1.0
