"""Converters from upstream MMEB-V2 / UVRB files into task folders: field mapping, shared candidates, graded
qrels, frame sampling, every defect reported together, and an interrupted conversion resumed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedrl.cli import main
from embedrl.data.mmeb_v2 import (
    IMAGE_TO_IMAGE,
    TEXT_CANDIDATES,
    TEXT_TO_IMAGE,
    candidate_name,
    convert_image_task,
    convert_visdoc_task,
    strip_image_tokens,
)
from embedrl.data.mmeb_v2_video import (
    convert_moment_retrieval_task,
    convert_video_classification_task,
    convert_video_qa_task,
    convert_video_retrieval_task,
)
from embedrl.data.taskdir import read_task
from embedrl.data.upstream import ConversionError
from embedrl.data.uvrb import UVRB_QUERY_PROMPTS, convert_uvrb_dataset, frame_folder
from embedrl.errors import DataError


def _picture(path: Path, color: tuple[int, int, int], size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def _png_bytes(color: tuple[int, int, int], kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buffer, format=kind)
    return buffer.getvalue()


def _parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ----------------------------------------------------------------------------------------------- images


CLS_INST = "<|image_1|> Represent the given image for classification"


def _cls_rows(images: Path) -> list[dict]:
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        _picture(images / "ImageNet-1K" / f"{i}.jpg", color)
    labels = ["red", "green", "blue"]
    return [
        {
            "qry_inst": CLS_INST,
            "qry_text": "",
            "qry_img_path": f"ImageNet-1K/{i}.jpg",
            "tgt_inst": "Represent the class label: ",
            "tgt_text": [labels[i]] + [x for x in labels if x != labels[i]],
            "tgt_img_path": ["", "", ""],
        }
        for i in range(3)
    ]


def test_image_task_maps_fields_and_shares_candidates(tmp_path: Path) -> None:
    images = tmp_path / "image-tasks"
    rows = _cls_rows(images)
    source = _parquet(tmp_path / "MMEB_Test_Instruct" / "ImageNet-1K" / "test-00000-of-00001.parquet", rows)
    folder = convert_image_task(source.parent, "imagenet_1k", images, tmp_path / "tasks", revision="abc123")
    assert (
        folder == tmp_path / "tasks" / "ImageNet-1K"
        and not (tmp_path / "tasks" / "ImageNet-1K.partial").exists()
    )
    task = read_task(folder)
    assert (task.meta.benchmark, task.meta.task, task.meta.eval_type, task.meta.meta_task) == (
        "MMEB-V2",
        "ImageNet-1K",
        "local",
        "CLS",
    )
    assert task.meta.primary_metric == "hit@1" and task.meta.source["revision"] == "abc123"
    assert [c.id for c in task.candidates] == ["red", "green", "blue"]  # shared by name: embedded once
    second = task.queries[1]
    assert second.instruction == "Represent the given image for classification"  # placeholder stripped
    assert second.text is None and second.candidate_ids == ["green", "red", "blue"]
    assert second.images == ["media/ImageNet-1K/1.jpg"]
    assert [(r.qid, r.cid, r.rel) for r in task.qrels] == [
        ("q00000", "red", 1),
        ("q00001", "green", 1),
        ("q00002", "blue", 1),
    ]
    assert (
        task.candidates[0].instruction is None and task.candidates[0].text == "red"
    )  # tgt_inst unused upstream
    placed, original = folder / "media" / "ImageNet-1K" / "1.jpg", images / "ImageNet-1K" / "1.jpg"
    assert placed.stat().st_ino == original.stat().st_ino  # hard-linked, not copied


def test_text_to_image_rows_of_v1(tmp_path: Path) -> None:
    images = tmp_path / "image-tasks"
    for name in ("a", "b", "c"):
        _picture(images / "coco" / f"{name}.jpg", (len(name) * 40, 10, 10))
    # V1 layout (no *_inst; the instruction is inside qry_text); a text-to-image query never carries an image
    rows = [
        {
            "qry_text": "Find me an everyday image that matches the given caption: a dog",
            "qry_img_path": "coco/c.jpg",
            "tgt_text": ["<|image_1|>", "<|image_1|>", "<|image_1|>"],
            "tgt_img_path": ["coco/a.jpg", "coco/b.jpg", "coco/a.jpg"],
        }
    ]
    task = read_task(convert_image_task(_records(rows), "MSCOCO_t2i", images, tmp_path / "tasks"))
    query = task.queries[0]
    assert (
        query.instruction is None
        and query.text.startswith("Find me an everyday image")
        and query.images == []
    )
    assert query.candidate_ids == ["coco/a.jpg", "coco/b.jpg"]  # named by image path; a repeat is kept once
    assert "1 queries listed a candidate twice" in task.meta.version_note
    assert task.meta.source["hf"] == "TIGER-Lab/MMEB-eval"
    assert task.candidates[0].text is None and task.candidates[0].images == ["media/coco/a.jpg"]
    assert strip_image_tokens("<|image_1|>\n") is None


def test_grounding_candidates_are_named_by_path_and_caption(tmp_path: Path) -> None:
    images = tmp_path / "image-tasks"
    _picture(images / "ref" / "scene.jpg", (9, 9, 9))
    _picture(images / "ref" / "crop.jpg", (90, 9, 9))
    rows = [
        {
            "qry_inst": "<|image_1|> Select the portion of the image that follows the language expressions.",
            "qry_text": "",
            "qry_img_path": "ref/scene.jpg",
            "tgt_inst": "<|image_1|> Select the portion of the image that follows the language expressions:",
            "tgt_text": ['"man in red"', "man in red", "dog"],
            "tgt_img_path": ["ref/crop.jpg", "ref/crop.jpg", "ref/crop.jpg"],
        }
    ]
    task = read_task(convert_image_task(_records(rows), "RefCOCO-Matching", images, tmp_path / "tasks"))
    # the quotes are stripped from the name, so the first two are one candidate, as upstream
    assert task.queries[0].candidate_ids == ["ref/crop.jpg:man in red", "ref/crop.jpg:dog"]
    first = task.candidates[0]
    assert first.text == '"man in red"' and first.images == ["media/ref/crop.jpg"]
    assert first.instruction == "Select the portion of the image that follows the language expressions:"
    assert task.queries[0].images == ["media/ref/scene.jpg"]
    assert candidate_name(IMAGE_TO_IMAGE, '"x"', "p.jpg") == "p.jpg:x"
    assert (
        candidate_name(TEXT_TO_IMAGE, "cap", "p.jpg") == "p.jpg"
        and candidate_name(TEXT_CANDIDATES, "y", "") == "y"
    )


def _records(rows: list[dict]):
    from embedrl.data.upstream import Record

    return [Record(row, "rows.jsonl", i) for i, row in enumerate(rows, 1)]


def test_image_defects_are_reported_together_and_the_rerun_resumes(tmp_path: Path, capsys) -> None:
    images = tmp_path / "image-tasks"
    rows = _cls_rows(images)
    rows[1]["qry_img_path"] = "ImageNet-1K/missing.jpg"
    rows[2]["tgt_text"] = "blue"  # not a list
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "tasks"
    args = [
        "task",
        "convert",
        "mmeb-image",
        "--task",
        "ImageNet-1K",
        "--records",
        str(source),
        "--images",
        str(images),
        "--out",
        str(out),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        f"{source}:2: record 'q00001': field 'qry_img_path':" in err and "missing.jpg does not exist" in err
    )
    assert f"{source}:3: record 'q00002': field 'tgt_text': must be list, got str" in err
    assert not (out / "ImageNet-1K").exists()
    assert (out / "ImageNet-1K.partial" / "media" / "ImageNet-1K" / "0.jpg").is_file()  # kept for the rerun

    rows[1]["qry_img_path"], rows[2]["tgt_text"] = "ImageNet-1K/1.jpg", ["blue", "red", "green"]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out and len(read_task(out / "ImageNet-1K").queries) == 3
    assert main(args) == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_unknown_task_names_list_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="not an MMEB-V2 image task; expected one of: ImageNet-1K"):
        convert_image_task(tmp_path, "MSR-VTT", tmp_path, tmp_path / "out")
    with pytest.raises(ConversionError, match="not a UVRB dataset"):
        convert_uvrb_dataset(tmp_path, "ImageNet-1K", tmp_path / "out")


# ----------------------------------------------------------------------------------------------- visdoc


def test_visdoc_task_keeps_graded_relevance(tmp_path: Path) -> None:
    source = tmp_path / "arxivqa_test_subsampled_beir"
    _parquet(
        source / "corpus" / "test-00000-of-00001.parquet",
        [
            {"corpus-id": i, "image": {"bytes": _png_bytes((i * 60, 0, 0)), "path": f"page{i}.png"}}
            for i in range(3)
        ],
    )
    _parquet(
        source / "queries" / "test-00000-of-00001.parquet",
        [
            {"query-id": "a", "query": "what is shown?", "language": "english"},
            {"query-id": "b", "query": "which year?", "language": "english"},
            {"query-id": "c", "query": "no page answers this", "language": None},
        ],
    )
    _parquet(
        source / "qrels" / "test-00000-of-00001.parquet",
        [
            {"query-id": "a", "corpus-id": 0, "score": 1},
            {"query-id": "a", "corpus-id": 2, "score": 0},
            {"query-id": "b", "corpus-id": 1, "score": 2},
            {"query-id": "b", "corpus-id": 1, "score": 3},
        ],
    )
    assert (
        main(
            [
                "task",
                "convert",
                "mmeb-visdoc",
                "--task",
                "vidore_arxivqa",
                "--source",
                str(source),
                "--out",
                str(tmp_path / "tasks"),
            ]
        )
        == 0
    )
    task = read_task(tmp_path / "tasks" / "ViDoRe_arxivqa")
    assert (task.meta.eval_type, task.meta.primary_metric, task.meta.meta_task) == (
        "global",
        "ndcg_linear@5",
        "VDRv1",
    )
    assert task.meta.query_instruction == "Find a document image that matches the given query:"
    assert task.meta.source["hf"] == "vidore/arxivqa_test_subsampled_beir"
    assert [(r.qid, r.cid, r.rel) for r in task.qrels] == [
        ("a", "0", 1),
        ("b", "1", 3),
    ]  # 0 dropped, max kept
    assert "1 queries have no relevant page" in task.meta.version_note
    assert task.candidates[1].images == ["media/corpus/000001.png"]
    assert Image.open(task.root / "media" / "corpus" / "000001.png").getpixel((0, 0)) == (60, 0, 0)
    assert task.queries[0].meta == {"language": "english"} and task.queries[2].meta == {}


def test_visdoc_defects_name_row_and_field(tmp_path: Path) -> None:
    corpus = _parquet(
        tmp_path / "corpus.parquet", [{"corpus-id": "p1", "image": {"bytes": b"not an image", "path": None}}]
    )
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query-id": "q1", "query": "x"}) + "\n")
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text(
        json.dumps({"query-id": "q1", "corpus-id": "p9", "score": 1.5})
        + "\n"
        + json.dumps({"query-id": "q2", "corpus-id": "p1", "score": 1})
        + "\n"
    )
    with pytest.raises(DataError) as caught:
        convert_visdoc_task(queries, corpus, qrels, "ViDoRe_docvqa", tmp_path / "tasks")
    report = caught.value.report()
    assert f"{corpus}:1: record 'p1': field 'image': the inline bytes are not an image" in report
    assert f"{qrels}:1: record 'q1': field 'score': graded relevance must be a whole number" in report
    assert f"{qrels}:1: record 'q1': field 'corpus-id'" not in report  # the score is wrong first
    assert "q2" not in report  # qrels of other queries are never read upstream: ignored, and counted


# ------------------------------------------------------------------------------------------------- UVRB


def _uvrb_fixture(root: Path, frames_per_video: int = 12) -> Path:
    for video in ("v1", "v2", "sub/v3"):
        for t in range(frames_per_video):
            _picture(root / "videos_frames" / video / f"frame_{t:04d}.jpg", (t * 20, 0, 0), size=16)
    _picture(root / "images" / "stills" / "s1.png", (0, 200, 0))
    jsonl = root / "jsonl"
    jsonl.mkdir(parents=True)
    (jsonl / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"id": cid, "video": v}) + "\n"
            for cid, v in (("c1", "v1.mp4"), ("c2", "v2.mp4"), ("c3", "sub/v3.mp4"))
        )
    )
    (jsonl / "queries.jsonl").write_text(
        json.dumps({"id": "t1", "text": "a red square fades in"})
        + "\n"
        + json.dumps({"id": 7, "image": "stills/s1.png"})
        + "\n"
        + json.dumps({"id": "tv", "text": "the same scene", "video": "v2.mp4"})
        + "\n"
    )
    (jsonl / "instances.jsonl").write_text(
        json.dumps({"qid": "t1", "pos": ["c1"]})
        + "\n"
        + json.dumps({"qid": "t1", "pos": ["c3", "c1"]})
        + "\n"
        + json.dumps({"qid": 7, "pos": ["c2"]})
        + "\n"
    )
    return root


def test_uvrb_dataset_samples_frames_and_merges_positives(tmp_path: Path) -> None:
    root = _uvrb_fixture(tmp_path / "UVRB" / "CMRB")
    folder = convert_uvrb_dataset(root, "cmrb", tmp_path / "tasks")
    task = read_task(folder)
    assert (task.meta.benchmark, task.meta.task, task.meta.primary_metric) == (
        "UVRB",
        "CMRB",
        "uvrb_recall@10",
    )
    assert task.meta.query_instruction == UVRB_QUERY_PROMPTS["CMRB"] and task.meta.num_frames == 8
    assert task.meta.eval_type == "global" and "1 queries have no positive" in task.meta.version_note
    c3 = next(c for c in task.candidates if c.id == "c3")
    # 12 frames -> linspace(0, 11, 8) as integers, over the file names in order
    assert [Path(f).name for f in c3.video.frames] == [
        f"frame_{t:04d}.jpg" for t in (0, 1, 3, 4, 6, 7, 9, 11)
    ]
    assert c3.video.frames[0] == "media/frames/sub/v3/frame_0000.jpg" and c3.video.id == "sub/v3.mp4"
    assert (
        len(list((folder / "media" / "frames" / "v1").iterdir())) == 8
    )  # only the sampled frames are placed
    by_id = {q.id: q for q in task.queries}
    assert by_id["7"].images == ["media/images/stills/s1.png"] and by_id["7"].text is None
    assert (
        by_id["tv"].video.frames[0] == "media/frames/v2/frame_0000.jpg"
        and by_id["tv"].text == "the same scene"
    )
    assert sorted((r.qid, r.cid) for r in task.qrels) == [("7", "c2"), ("t1", "c1"), ("t1", "c3")]
    assert frame_folder("x.mp4").as_posix() == "x" and frame_folder("../x.mp4") is None


def test_uvrb_defects_are_reported_together(tmp_path: Path, capsys) -> None:
    root = _uvrb_fixture(tmp_path / "CRB_G")
    corpus = root / "jsonl" / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + json.dumps({"id": "c4", "video": "gone.mp4"}) + "\n")
    instances = root / "jsonl" / "instances.jsonl"
    instances.write_text(instances.read_text() + json.dumps({"qid": "t1", "pos": ["c9"]}) + "\n")
    assert (
        main(
            [
                "task",
                "convert",
                "uvrb",
                "--dataset",
                "CRB_G",
                "--root",
                str(root),
                "--out",
                str(tmp_path / "tasks"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{corpus}:4: record 'c4': field 'video':" in err and "gone: no frame folder" in err
    assert f"{instances}:4: record 't1': field 'pos': unknown corpus id 'c9'" in err


def test_a_converted_task_evaluates_end_to_end(tiny_qwen3_embedder, tmp_path: Path) -> None:
    root = _uvrb_fixture(tmp_path / "MSRVTT", frames_per_video=4)
    folder = convert_uvrb_dataset(root, "MSR-VTT", tmp_path / "tasks", num_frames=3)
    out = tmp_path / "results"
    assert (
        main(
            [
                "eval",
                "--task",
                str(folder),
                "--embedder",
                str(tiny_qwen3_embedder),
                "--reasoning",
                "off",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((out / "UVRB" / "MSRVTT.json").read_text())
    assert result["num_queries"] == 3 and result["run"]["frames_per_video"] == 3
    assert (
        result["main_score"] == result["metrics"]["uvrb_recall@1"] and "uvrb_recall@50" in result["metrics"]
    )


# ---------------------------------------------------------------------------------- safety and reruns


def test_symlinks_may_not_lead_out_of_the_source(tmp_path: Path) -> None:
    secret = tmp_path / "home" / "secret.jpg"
    _picture(secret, (1, 2, 3))
    images = tmp_path / "image-tasks"
    rows = _cls_rows(images)
    (images / "leak").symlink_to(secret.parent, target_is_directory=True)
    (images / "ImageNet-1K" / "inside.jpg").symlink_to(
        images / "ImageNet-1K" / "0.jpg"
    )  # a link inside: fine
    rows[0]["qry_img_path"] = "ImageNet-1K/inside.jpg"
    rows[1]["qry_img_path"] = "leak/secret.jpg"
    with pytest.raises(DataError) as caught:
        convert_image_task(_records(rows), "ImageNet-1K", images, tmp_path / "tasks")
    assert len(caught.value.problems) == 1
    assert "leak/secret.jpg leads outside" in str(caught.value) and "refused" in str(caught.value)
    assert not any(p.name == "secret.jpg" for p in (tmp_path / "tasks").rglob("*"))
    rows[1]["qry_img_path"] = "ImageNet-1K/1.jpg"
    task = read_task(convert_image_task(_records(rows), "ImageNet-1K", images, tmp_path / "tasks"))
    placed = task.root / task.queries[0].images[0]
    assert not placed.is_symlink() and placed.read_bytes() == (images / "ImageNet-1K" / "0.jpg").read_bytes()


def test_a_rerun_replaces_media_that_changed_at_the_source(tmp_path: Path) -> None:
    source = tmp_path / "beir"
    _parquet(source / "queries.parquet", [{"query-id": "a", "query": "q"}])
    _parquet(source / "qrels.parquet", [{"query-id": "a", "corpus-id": "p", "score": 1}])
    red, blue = _png_bytes((255, 0, 0), "BMP"), _png_bytes((0, 0, 255), "BMP")
    _parquet(source / "corpus.parquet", [{"corpus-id": "p", "image": {"bytes": red}}])
    partial = tmp_path / "tasks" / "ViDoRe_docvqa.partial" / "media" / "corpus" / "000000.bmp"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(blue)  # what an earlier run from other data left: the same size, other pixels
    assert len(red) == len(blue)
    folder = convert_visdoc_task(
        source / "queries.parquet",
        source / "corpus.parquet",
        source / "qrels.parquet",
        "ViDoRe_docvqa",
        tmp_path / "tasks",
    )
    assert Image.open(folder / "media" / "corpus" / "000000.bmp").getpixel((0, 0)) == (255, 0, 0)


def test_a_snapshot_root_with_several_tasks_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "image-tasks"
    rows = _cls_rows(images)
    for task in ("ImageNet-1K", "N24News"):
        _parquet(tmp_path / "snapshot" / task / "test-00000-of-00001.parquet", rows)
    with pytest.raises(ConversionError, match="record files in 2 folders .*give the folder of the one task"):
        convert_image_task(tmp_path / "snapshot", "ImageNet-1K", images, tmp_path / "tasks")


def test_a_syntax_error_does_not_hide_the_other_defects(tmp_path: Path) -> None:
    images = tmp_path / "image-tasks"
    rows = _cls_rows(images)
    rows[0]["qry_text"] = 5
    rows[2]["tgt_text"] = ["blue", None, "red"]
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps(rows[0]) + "\n{broken\n" + json.dumps(rows[2]) + "\n")
    with pytest.raises(DataError) as caught:
        convert_image_task(source, "ImageNet-1K", images, tmp_path / "tasks")
    report = caught.value.report()
    assert f"{source}:1: record 'q00000': field 'qry_text': must be str, got int" in report
    assert f"{source}:2:" in report and "malformed JSON" in report
    assert f"{source}:3: record 'q00001': field 'tgt_text[1]': must be a string, got NoneType" in report


def test_visdoc_edge_cases_follow_upstream(tmp_path: Path) -> None:
    corpus = _parquet(
        tmp_path / "corpus.parquet",
        [
            {"corpus-id": "p", "image": {"bytes": _png_bytes((1, 1, 1))}},
            {"corpus-id": "p", "image": {"bytes": _png_bytes((2, 2, 2))}},
        ],
    )
    queries = _parquet(tmp_path / "queries.parquet", [{"query-id": "a", "query": "q"}])
    qrels = _parquet(
        tmp_path / "qrels.parquet",
        [
            {"query-id": "a", "corpus-id": "p", "score": 1.0},
            {"query-id": "a", "corpus-id": "gone", "score": 0.0},
            {"query-id": "not-a-query", "corpus-id": "p", "score": 1.0},
        ],
    )
    task = read_task(convert_visdoc_task(queries, corpus, qrels, "ViDoRe_docvqa", tmp_path / "tasks"))
    assert [c.id for c in task.candidates] == ["p"] and "1 repeated corpus-ids" in task.meta.version_note
    assert "1 qrels of queries not in the queries split ignored" in task.meta.version_note
    assert Image.open(task.root / task.candidates[0].images[0]).getpixel((0, 0)) == (
        1,
        1,
        1,
    )  # the first kept
    _parquet(tmp_path / "nan.parquet", [{"query-id": "a", "corpus-id": "p", "score": float("nan")}])
    with pytest.raises(DataError, match="graded relevance must be a whole number, got nan"):
        convert_visdoc_task(queries, corpus, tmp_path / "nan.parquet", "ViDoRe_docvqa", tmp_path / "t2")
    _parquet(tmp_path / "none.parquet", [{"query-id": "a", "corpus-id": "p", "score": 0}])
    with pytest.raises(ConversionError, match="no relevant pairs"):
        convert_visdoc_task(queries, corpus, tmp_path / "none.parquet", "ViDoRe_docvqa", tmp_path / "t3")


def test_uvrb_queries_are_read_as_upstream_reads_them(tmp_path: Path) -> None:
    root = _uvrb_fixture(tmp_path / "LoVR-V", frames_per_video=2)
    long_text = "word " * 3000
    (root / "jsonl" / "queries.jsonl").write_text(
        json.dumps({"id": "long", "text": long_text, "video": ""})
        + "\n"
        + json.dumps({"id": 7, "image": "stills/s1.png", "video": "v1.mp4"})
        + "\n"
    )
    (root / "jsonl" / "instances.jsonl").write_text(json.dumps({"qid": "long", "pos": ["c1"]}) + "\n")
    task = read_task(convert_uvrb_dataset(root, "LoVR-V", tmp_path / "tasks"))
    by_id = {q.id: q for q in task.queries}
    prompt = UVRB_QUERY_PROMPTS["LoVR-V"]
    assert by_id["long"].video is None  # "" is no video
    assert len(prompt) + 1 + len(by_id["long"].text) == 8192 and long_text.startswith(by_id["long"].text)
    assert by_id["7"].video is None and by_id["7"].images == ["media/images/stills/s1.png"]
    assert (
        "1 query texts cut to 8192" in task.meta.version_note
        and "keep the image only" in task.meta.version_note
    )


# -------------------------------------------------------------------------------------- video retrieval


def _frames(folder: Path, count: int) -> None:
    for t in range(count):
        _picture(folder / f"frame_{t + 1}.jpg", (t * 10, 5, 5), size=16)  # natural order: 1, 2, ..., 10, 11


def test_video_retrieval_rows_become_caption_queries_over_a_video_pool(tmp_path: Path) -> None:
    frames = tmp_path / "frames" / "video_ret" / "DiDeMo"
    _frames(frames / "v1", 11)
    _frames(frames / "v2", 3)
    rows = [
        {"video": "raw/v1.mp4", "caption": "a dog runs"},
        {"video": "raw/v2.mp4", "caption": "a cat sits"},
        {"video": "raw/v1.mp4", "caption": "the dog again"},
    ]
    assert (
        main(
            [
                "task",
                "convert",
                "mmeb-video",
                "--task",
                "didemo",
                "--records",
                str(_parquet(tmp_path / "DiDeMo" / "test.parquet", rows).parent),
                "--frames",
                str(frames),
                "--out",
                str(tmp_path / "tasks"),
            ]
        )
        == 0
    )
    task = read_task(tmp_path / "tasks" / "DiDeMo")
    assert (task.meta.eval_type, task.meta.meta_task, task.meta.num_frames) == ("global", "V-RET", 8)
    assert task.meta.query_instruction == "Find a video that includes the following described scenes:"
    assert task.meta.candidate_instruction == "Understand the content of the provided video."
    assert [c.id for c in task.candidates] == ["v1", "v2"]  # the pool holds each video once
    v1 = task.candidates[0].video.frames
    # 11 frames in natural order, linspace(0, 10, 8) -> 0, 1, 2, 4, 5, 7, 8, 10
    assert [Path(f).name for f in v1] == [f"frame_{i + 1}.jpg" for i in (0, 1, 2, 4, 5, 7, 8, 10)]
    assert len(task.candidates[1].video.frames) == 3  # fewer frames than 8: all of them
    assert [(q.text, r.cid) for q, r in zip(task.queries, task.qrels)] == [
        ("a dog runs", "v1"),
        ("a cat sits", "v2"),
        ("the dog again", "v1"),
    ]


def test_video_retrieval_defects_name_the_row(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "vid1", 2)
    (frames / "vid1" / "thumb.webp").write_bytes(
        b"not a frame"
    )  # the official loader reads .jpg/.jpeg/.png only
    rows = [
        {"video_id": "vid1", "caption": ["first caption", "second"]},
        {"video_id": "gone", "caption": ["lost"]},
        {"video_id": "../vid1", "caption": ["sneaky"]},
        {"video_id": "vid1", "caption": ["  "]},
    ]
    with pytest.raises(DataError) as caught:
        convert_video_retrieval_task(_records(rows), "MSVD", frames, tmp_path / "tasks")
    report = caught.value.report()
    assert "rows.jsonl:2: record 'q00001': field 'video_id':" in report and "no frame folder" in report
    assert "rows.jsonl:3: record 'q00002': field 'video_id': '../vid1' is not a usable video name" in report
    assert "rows.jsonl:4: record 'q00003': field 'caption': an empty caption" in report
    task = read_task(convert_video_retrieval_task(_records(rows[:1]), "MSVD", frames, tmp_path / "tasks"))
    assert [Path(f).name for f in task.candidates[0].video.frames] == ["frame_1.jpg", "frame_2.jpg"]
    with pytest.raises(ConversionError, match="not a video retrieval task"):
        convert_video_retrieval_task(_records(rows), "K700", frames, tmp_path / "tasks")


def test_one_split_is_converted_never_several(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "a", 2)
    _frames(frames / "b", 2)
    data = tmp_path / "YouCook2" / "data"
    _parquet(
        data / "test-00000-of-00001.parquet", [{"id": "a", "video_path": "a.mp4", "sentence": "from test"}]
    )
    _parquet(
        data / "val-00000-of-00001.parquet", [{"id": "b", "video_path": "b.mp4", "sentence": "from val"}]
    )
    task = read_task(convert_video_retrieval_task(data, "YouCook2", frames, tmp_path / "tasks"))
    assert [q.text for q in task.queries] == ["from val"] and task.meta.source[
        "split"
    ] == "val"  # as upstream
    with pytest.raises(ConversionError, match="holds test, val, not train"):
        convert_video_retrieval_task(data, "MSR-VTT", frames, tmp_path / "tasks", split="train")


def test_the_output_never_replaces_the_source_or_a_foreign_folder(tmp_path: Path, capsys) -> None:
    root = _uvrb_fixture(tmp_path / "UVRB" / "MSRVTT")
    args = [
        "task",
        "convert",
        "uvrb",
        "--dataset",
        "MSRVTT",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "UVRB"),
    ]
    assert main([*args, "--overwrite"]) == 2
    assert "the source" in capsys.readouterr().err and (root / "jsonl" / "queries.jsonl").is_file()
    foreign = tmp_path / "out" / "MSRVTT"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    assert main([*args[:-1], str(tmp_path / "out"), "--overwrite"]) == 2
    assert "is not a task folder" in capsys.readouterr().err and (foreign / "notes.txt").is_file()
    (tmp_path / "file").write_text("x")
    assert main([*args[:-1], str(tmp_path / "file")]) == 2
    assert "cannot prepare the output folder" in capsys.readouterr().err


def test_visdoc_pages_given_as_files_are_checked_and_named_by_content(tmp_path: Path) -> None:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "p1").write_bytes(_png_bytes((5, 5, 5), "JPEG"))  # no suffix: the content names it
    (tmp_path / "pages" / "p2.png").write_text("not an image")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"corpus-id": "p1", "image": "pages/p1"})
        + "\n"
        + json.dumps({"corpus-id": "p2", "image": {"bytes": None, "path": "pages/p2.png"}})
        + "\n"
    )
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query-id": "q", "query": "what"}) + "\n")
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text(json.dumps({"query-id": "q", "corpus-id": "p1", "score": 1}) + "\n")
    with pytest.raises(
        DataError, match=r"corpus.jsonl:2: record 'p2': field 'image': .*p2.png is not an image"
    ):
        convert_visdoc_task(queries, corpus, qrels, "ViDoRe_docvqa", tmp_path / "tasks")
    corpus.write_text(corpus.read_text().splitlines()[0] + "\n")
    task = read_task(convert_visdoc_task(queries, corpus, qrels, "ViDoRe_docvqa", tmp_path / "tasks"))
    assert task.candidates[0].images == ["media/corpus/000000.jpg"]


# -------------------------------------------------------------------------------- video classification


def test_video_classification_ranks_videos_over_the_label_list(tmp_path: Path, capsys) -> None:
    frames = tmp_path / "frames" / "video_cls" / "HMDB51"
    for video in ("v1", "v2"):
        _frames(frames / video, 3)
    records = _parquet(
        tmp_path / "HMDB51" / "test-00000-of-00001.parquet",
        [{"video_id": "v1", "pos_text": "wave"}, {"video_id": "v2", "pos_text": "smile"}],
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("ride_bike\nwave\n\nsmile\ndive\n")
    args = [
        "task",
        "convert",
        "mmeb-video",
        "--task",
        "HMDB51",
        "--records",
        str(records),
        "--frames",
        str(frames),
        "--out",
        str(tmp_path / "tasks"),
    ]
    assert main([*args, "--labels", str(labels)]) == 0
    task = read_task(tmp_path / "tasks" / "HMDB51")
    assert (task.meta.eval_type, task.meta.meta_task, task.meta.version_note) == ("global", "V-CLS", None)
    assert [c.id for c in task.candidates] == ["ride_bike", "wave", "smile", "dive"]  # the official order
    assert task.candidates[1].text == "wave" and task.queries[0].text is None
    assert (
        task.meta.query_instruction
        == "What actions or objects interactions are the person in the video doing?"
    )
    assert len(task.queries[0].video.frames) == 3 and [r.cid for r in task.qrels] == ["wave", "smile"]
    # without the list the conversion is refused, unless the smaller pool is asked for; task.json then says so
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    assert "HMDB51 ranks every video against its full label list (51 labels)" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--labels-from-rows"]) == 0
    task = read_task(tmp_path / "tasks" / "HMDB51")
    assert [c.id for c in task.candidates] == [
        "wave",
        "smile",
    ] and "not the official full label list" in task.meta.version_note
    labels.write_text("ride_bike\n")
    capsys.readouterr()
    assert main([*args, "--labels", str(labels), "--overwrite"]) == 2
    assert "'wave' is not in the label list" in capsys.readouterr().err


def test_smthsmthv2_ranks_each_video_against_its_own_options(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "11", 2)
    rows = [
        {
            "video_id": 11,
            "pos_text": "Opening something",
            "neg_text": ["Closing something", "Opening something"],
        },
        {"video_id": 11, "pos_text": "Folding something", "neg_text": ["Closing something"]},
    ]
    with pytest.raises(DataError, match="'Folding something' is not among the row's neg_text options"):
        convert_video_classification_task(_records(rows), "SmthSmthV2", frames, tmp_path / "tasks")
    task = read_task(
        convert_video_classification_task(
            _records(rows), "SmthSmthV2", frames, tmp_path / "tasks", max_rows=1
        )
    )
    assert task.meta.eval_type == "local" and len(task.queries) == 1 and task.meta.source["rows"] == 1
    assert task.queries[0].candidate_ids == ["Closing something", "Opening something"]
    assert [(r.qid, r.cid) for r in task.qrels] == [("q00000", "Opening something")]


# ------------------------------------------------------------------------------------------- video QA


def test_video_qa_options_are_built_and_named_as_each_official_loader(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    for folder in ("vm1", "4001", "v_act1", "action_antonym/clip.mp4", "ego7"):
        _frames(frames / folder, 2)
    out = tmp_path / "tasks"
    # Video-MME: options "A. ..." named as given, embedded without the letter
    mme = [
        {
            "videoID": "vm1",
            "question": "What color?",
            "options": ["A. red car.", "B. blue"],
            "answer": "B",
            "question_id": "1",
            "domain": "x",
            "sub_category": "y",
        }
    ]
    task = read_task(convert_video_qa_task(_records(mme), "Video-MME", frames, out))
    query = task.queries[0]
    assert (task.meta.eval_type, task.meta.meta_task) == ("local", "V-QA")
    assert task.meta.query_instruction.startswith(
        "Given a video and a question, select the most accurate answer"
    )
    assert query.text == "What color?\nA. red car.\nB. blue" and query.candidate_ids == [
        "A. red car.",
        "B. blue",
    ]
    assert [c.text for c in task.candidates] == ["red car", "blue"] and task.qrels[0].cid == "B. blue"
    assert len(query.video.frames) == 2
    # NExTQA: a0-a4 with an answer index, lettered in the query only
    nextqa = [
        {
            "video": 4001,
            "question": "why?",
            "answer": 2,
            "qid": 1,
            "type": "CW",
            **{f"a{i}": f"opt{i}" for i in range(5)},
        }
    ]
    task = read_task(convert_video_qa_task(_records(nextqa), "NExTQA", frames, out))
    assert task.queries[0].text == "why?\nOptions:\n(A) opt0\n(B) opt1\n(C) opt2\n(D) opt3\n(E) opt4"
    assert task.queries[0].candidate_ids == [f"opt{i}" for i in range(5)] and task.qrels[0].cid == "opt2"
    # MVBench: lettered options are both embedded and named; the subset names the frame folder
    mvbench = [
        {
            "subset": "action_antonym",
            "video": "clip.mp4",
            "question": "What?",
            "candidates": ["up", "down"],
            "answer": "down",
        }
    ]
    task = read_task(convert_video_qa_task(_records(mvbench), "MVBench", frames, out))
    assert task.queries[0].candidate_ids == ["(A) up", "(B) down"] and task.qrels[0].cid == "(B) down"
    assert task.candidates[0].text == "(A) up"
    assert task.queries[0].video.frames[0].startswith("media/frames/action_antonym/clip.mp4/")
    # ActivityNetQA: yes / no
    act = [{"video_name": "act1", "question": "is it raining", "answer": "no", "question_id": "q"}]
    task = read_task(convert_video_qa_task(_records(act), "ActivityNetQA", frames, out))
    assert task.queries[0].text == "is it raining? (A) yes; (B) no." and task.qrels[0].cid == "no"
    # EgoSchema: the question and the options are joined without a separator, as upstream
    ego = [
        {
            "video_idx": "ego7",
            "question": "What did C do?",
            "answer": "1",
            "question_idx": "e",
            "option": ["A. cook.", "B. read"],
        }
    ]
    task = read_task(convert_video_qa_task(_records(ego), "EgoSchema", frames, out))
    assert task.queries[0].text == "What did C do?A. cook. B. read" and task.qrels[0].cid == "B. read"
    assert [c.text for c in task.candidates] == ["cook", "read"]


def test_video_qa_defects_name_row_and_field(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "vm1", 2)
    rows = [
        {"videoID": "vm1", "question": "q", "options": ["A. x", "B. y"], "answer": "C"},
        {"videoID": "vm1", "question": 5, "options": ["A. x"], "answer": "A"},
        {"videoID": "nope", "question": "q", "options": ["A. x"], "answer": "A"},
    ]
    with pytest.raises(DataError) as caught:
        convert_video_qa_task(_records(rows), "Video-MME", frames, tmp_path / "tasks")
    report = caught.value.report()
    assert (
        "rows.jsonl:1: record 'q00000': field 'answer': 'C' is not the letter of one of the 2 options"
        in report
    )
    assert "rows.jsonl:2: record 'q00001': field 'question': must be str, got int" in report
    assert "rows.jsonl:3: record 'q00002': field 'videoID':" in report and "no frame folder" in report
    rows[0]["answer"] = "AB"  # a substring of the letters is not a letter
    with pytest.raises(DataError, match="'AB' is not the letter of one of the 2 options"):
        convert_video_qa_task(_records(rows[:1]), "Video-MME", frames, tmp_path / "tasks")


# ------------------------------------------------------------------------------------ moment retrieval


def test_highlight_clips_are_the_sub_folders_and_positive_ones_are_relevant(tmp_path: Path) -> None:
    frames = tmp_path / "frames" / "video_mret" / "QVHighlight"
    for clip in ("query", "negative_1", "positive_0", "negative_2"):
        _frames(frames / "vidA" / clip, 3)
    rows = [{"query": "a man cooks", "video_path": "videos/vidA.mp4"}]
    task = read_task(convert_moment_retrieval_task(_records(rows), "QVHighlight", frames, tmp_path / "tasks"))
    query = task.queries[0]
    assert (task.meta.eval_type, task.meta.meta_task) == ("local", "V-MRET")
    assert (
        task.meta.query_instruction
        == "Find the clip that corresponds to the described scene in the given video:"
    )
    assert query.text == "a man cooks" and query.video.frames[0] == "media/frames/vidA/query/frame_1.jpg"
    assert query.candidate_ids == ["vidA/positive_0", "vidA/negative_1", "vidA/negative_2"]
    assert [r.cid for r in task.qrels] == ["vidA/positive_0"]
    assert task.candidates[0].instruction == "Understand the content of the provided video."
    (frames / "vidA" / "positive_0").rename(frames / "vidA" / "other_0")
    with pytest.raises(DataError, match="has no clip folder named positive"):
        convert_moment_retrieval_task(_records(rows), "QVHighlight", frames, tmp_path / "t2")


def test_momentseeker_queries_by_input_type_with_several_positives(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    for clip in ("movie_1_q", "movie_1_p1", "movie_1_p2", "movie_1_n1"):
        _frames(frames / "video_frames" / clip, 2)
    _picture(frames / "query_still_3.jpg", (1, 2, 3))
    clip = lambda p: {"output_path": p}  # noqa: E731
    rows = [
        {
            "query": "the dog jumps",
            "input_frames": "movie/1_q.mp4",
            "positive_frames": [clip("movie/1_p1.mp4"), clip("movie/1_p2.mp4")],
            "negative_frames": [clip("movie/1_n1.mp4")],
        },
        {
            "query": "a red ball",
            "input_frames": "still_3.jpg",
            "positive_frames": [clip("movie/1_p1.mp4")],
            "negative_frames": [clip("movie/1_n1.mp4")],
        },
        {
            "query": "just text",
            "input_frames": "",
            "positive_frames": [clip("movie/1_p2.mp4")],
            "negative_frames": [],
        },
    ]
    task = read_task(
        convert_moment_retrieval_task(_records(rows), "MomentSeeker", frames, tmp_path / "tasks")
    )
    video_q, image_q, text_q = task.queries
    assert video_q.instruction == "Find the clip that corresponds to the given sentence and video segment:"
    assert video_q.video.frames[0] == "media/frames/video_frames/movie_1_q/frame_1.jpg"
    assert image_q.instruction == "Select the video clip that aligns with the given text and image:"
    assert image_q.images == ["media/images/query_still_3.jpg"] and text_q.video is None and not text_q.images
    assert text_q.instruction == "Find the clip that corresponds to the given text:"
    assert [(r.qid, r.cid) for r in task.qrels if r.qid == video_q.id] == [
        (video_q.id, "video_frames/movie_1_p1"),
        (video_q.id, "video_frames/movie_1_p2"),
    ]
    assert task.candidates[0].instruction == "Understand the content of the provided video clip."
    rows[2]["query"] = " "
    with pytest.raises(DataError, match="record 'q00002': field 'query': an empty text-only query"):
        convert_moment_retrieval_task(_records(rows), "MomentSeeker", frames, tmp_path / "t2")


def test_mvbench_reads_one_folder_per_subset(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "action_antonym" / "a.mp4", 2)
    _frames(frames / "action_count" / "b.mp4", 2)
    root = tmp_path / "MVBench"
    _parquet(
        root / "action_antonym" / "train" / "0000.parquet",  # the hub layout: no subset column
        [{"video": "a.mp4", "question": "which?", "candidates": ["2", "3", "2"], "answer": "2"}],
    )
    _parquet(
        root / "action_count" / "train" / "0000.parquet",
        [{"video": "b.mp4", "question": "how many?", "candidates": ["1", "4"], "answer": "4"}],
    )
    task = read_task(convert_video_qa_task(root, "MVBench", frames, tmp_path / "tasks"))
    assert task.meta.source["hf"] == "VLM2Vec/MVBench"
    first, second = task.queries
    assert first.video.frames[0].startswith("media/frames/action_antonym/a.mp4/")
    assert second.video.frames[0].startswith("media/frames/action_count/b.mp4/")
    # a repeated candidate: the official qa_template keeps the last match as the answer
    assert first.candidate_ids == ["(A) 2", "(B) 3", "(C) 2"] and task.qrels[0].cid == "(C) 2"
    bad = tmp_path / "loose.parquet"
    _parquet(bad, [{"video": "a.mp4", "question": "?", "candidates": ["x"], "answer": "x"}])
    with pytest.raises(DataError, match="field 'subset': missing, and no folder or file"):
        convert_video_qa_task(bad, "MVBench", frames, tmp_path / "t2")


def test_labels_given_through_the_api_are_checked(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "v1", 2)
    rows = [{"video_id": "v1", "pos_text": "run"}]
    task = read_task(
        convert_video_classification_task(
            _records(rows), "HMDB51", frames, tmp_path / "tasks", labels=["run", "walk", "run"]
        )
    )
    assert [c.id for c in task.candidates] == ["run", "walk"]
    with pytest.raises(ConversionError, match="non-empty label strings"):
        convert_video_classification_task(
            _records(rows), "HMDB51", frames, tmp_path / "t2", labels=["run", ""]
        )


def test_convert_video_task_picks_the_family(tmp_path: Path, capsys) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "v_act1", 2)
    records = tmp_path / "rows.jsonl"
    records.write_text(json.dumps({"video_name": "act1", "question": "is it", "answer": "yes"}) + "\n")
    args = [
        "task",
        "convert",
        "mmeb-video",
        "--task",
        "activitynet-qa",
        "--records",
        str(records),
        "--frames",
        str(frames),
        "--out",
        str(tmp_path / "tasks"),
    ]
    assert main([*args, "--labels-from-rows"]) == 2
    assert "apply to the video classification tasks only" in capsys.readouterr().err
    assert main(args) == 0
    assert read_task(tmp_path / "tasks" / "ActivityNetQA").meta.meta_task == "V-QA"


# ------------------------------------------------------------------------------------- final review


def test_split_names_come_from_shards_files_or_folders(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "a", 2)
    _frames(frames / "b", 2)
    converted = tmp_path / "MSR-VTT"  # the hub's converted layout: <split>/0000.parquet, 0001.parquet
    _parquet(converted / "test" / "0000.parquet", [{"video_id": "a", "caption": "first"}])
    _parquet(converted / "test" / "0001.parquet", [{"video_id": "b", "caption": "second"}])
    _parquet(converted / "train" / "0000.parquet", [{"video_id": "a", "caption": "training"}])
    task = read_task(convert_video_retrieval_task(converted, "MSR-VTT", frames, tmp_path / "tasks"))
    assert [q.text for q in task.queries] == ["first", "second"] and task.meta.source["split"] == "test"
    only_test = tmp_path / "YouCook2"
    _parquet(only_test / "test-00000-of-00001.parquet", [{"id": "a", "video_path": "a.mp4", "sentence": "x"}])
    with pytest.raises(ConversionError, match="holds test, not val"):  # the official run reads val
        convert_video_retrieval_task(only_test, "YouCook2", frames, tmp_path / "t2")
    task = read_task(
        convert_video_retrieval_task(only_test, "YouCook2", frames, tmp_path / "t3", split="test")
    )
    assert task.meta.source["split"] == "test"


def test_a_damaged_parquet_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _frames(frames / "a", 2)
    good = tmp_path / "rows.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"video_id": "a", "caption": "x" * 5000}] * 50), good, compression="none"
    )
    data = bytearray(good.read_bytes())
    data[len(data) // 4 : len(data) // 4 + 64] = b"\xff" * 64  # damage the data, keep the footer
    good.write_bytes(bytes(data))
    with pytest.raises(DataError, match="rows.parquet: unreadable Parquet data after row"):
        convert_video_retrieval_task(good, "MSR-VTT", frames, tmp_path / "tasks")


def test_a_rerun_drops_media_the_task_no_longer_uses(tmp_path: Path) -> None:
    root = _uvrb_fixture(tmp_path / "MSRVTT", frames_per_video=12)
    instances = root / "jsonl" / "instances.jsonl"
    good = instances.read_text()
    instances.write_text(good + json.dumps({"qid": "t1", "pos": ["nope"]}) + "\n")
    with pytest.raises(DataError):
        convert_uvrb_dataset(root, "MSRVTT", tmp_path / "tasks", num_frames=8)
    assert len(list((tmp_path / "tasks" / "MSRVTT.partial" / "media" / "frames" / "v1").iterdir())) == 8
    instances.write_text(good)
    folder = convert_uvrb_dataset(root, "MSRVTT", tmp_path / "tasks", num_frames=4)
    assert len(list((folder / "media" / "frames" / "v1").iterdir())) == 4  # the 8-frame attempt left nothing


def test_smthsmthv2_refuses_a_label_list(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="own neg_text options: --labels and --labels-from-rows do not"):
        convert_video_classification_task([], "SmthSmthV2", tmp_path, tmp_path / "tasks", labels=["x"])
