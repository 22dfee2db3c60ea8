"""Benchmarks as data: the 78 MMEB-V2 tasks and the 16 UVRB datasets with their groupings and metrics.

Task names are the keys of the official per-task score files (VLM2Vec / Embed-RL layout, e.g.
`VisualNews_t2i`, `K700`); UVRB dataset names are the abbreviations of the GVE and Embed-RL papers (GVE
Tables 4 and 5). Aggregation code reads only these tables, so a change of benchmark definition is a change of
data here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------- MMEB-V2

MMEB_V2 = "MMEB-V2"
MMEB_MODALITIES = ("image", "video", "visdoc")
MMEB_MODALITY_LABELS = {"image": "Image", "video": "Video", "visdoc": "VisDoc"}

# Main score per modality, as the leaderboard script (VLM2Vec's `report_score_v2.py`) takes it: Hit@1 for
# image and video, linear NDCG@5 with graded qrels for VisDoc. The report multiplies it by 100.
MMEB_MAIN_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}


@dataclass(frozen=True)
class MMEBTask:
    name: str  # key in the official score JSON
    modality: str  # image | video | visdoc
    meta_task: str  # display label of the meta-task (CLS, V-RET, VDRv1, ...)
    eval_type: str  # local (each query's own candidates) | global (the whole pool)

    @property
    def main_metric(self) -> str:
        return MMEB_MAIN_METRIC[self.modality]


# (meta-task label, modality, eval type, task names in the official JSON order)
_MMEB_GROUPS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "CLS",
        "image",
        "local",
        (
            "ImageNet-1K",
            "N24News",
            "HatefulMemes",
            "VOC2007",
            "SUN397",
            "Place365",
            "ImageNet-A",
            "ImageNet-R",
            "ObjectNet",
            "Country211",
        ),
    ),
    (
        "QA",
        "image",
        "local",
        (
            "OK-VQA",
            "A-OKVQA",
            "DocVQA",
            "InfographicsVQA",
            "ChartQA",
            "Visual7W",
            "ScienceQA",
            "VizWiz",
            "GQA",
            "TextVQA",
        ),
    ),
    (
        "RET",
        "image",
        "local",
        (
            "VisDial",
            "CIRR",
            "VisualNews_t2i",
            "VisualNews_i2t",
            "MSCOCO_t2i",
            "MSCOCO_i2t",
            "NIGHTS",
            "WebQA",
            "FashionIQ",
            "Wiki-SS-NQ",
            "OVEN",
            "EDIS",
        ),
    ),
    ("GD", "image", "local", ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")),
    ("V-CLS", "video", "global", ("K700", "SmthSmthV2", "HMDB51", "UCF101", "Breakfast")),
    ("V-QA", "video", "local", ("MVBench", "Video-MME", "NExTQA", "EgoSchema", "ActivityNetQA")),
    ("V-RET", "video", "global", ("DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2")),
    ("V-MRET", "video", "local", ("QVHighlight", "Charades-STA", "MomentSeeker")),
    (
        "VDRv1",
        "visdoc",
        "global",
        (
            "ViDoRe_arxivqa",
            "ViDoRe_docvqa",
            "ViDoRe_infovqa",
            "ViDoRe_tabfquad",
            "ViDoRe_tatdqa",
            "ViDoRe_shiftproject",
            "ViDoRe_syntheticDocQA_artificial_intelligence",
            "ViDoRe_syntheticDocQA_energy",
            "ViDoRe_syntheticDocQA_government_reports",
            "ViDoRe_syntheticDocQA_healthcare_industry",
        ),
    ),
    (
        "VDRv2",
        "visdoc",
        "global",
        (
            "ViDoRe_esg_reports_human_labeled_v2",
            "ViDoRe_biomedical_lectures_v2_multilingual",
            "ViDoRe_economics_reports_v2_multilingual",
            "ViDoRe_esg_reports_v2_multilingual",
        ),
    ),
    (
        "VR",
        "visdoc",
        "global",
        (
            "VisRAG_ArxivQA",
            "VisRAG_ChartQA",
            "VisRAG_MP-DocVQA",
            "VisRAG_SlideVQA",
            "VisRAG_InfoVQA",
            "VisRAG_PlotQA",
        ),
    ),
    (
        "OOD",
        "visdoc",
        "global",
        ("ViDoSeek-page-fixed", "ViDoSeek-doc", "MMLongBench-page-fixed", "MMLongBench-doc"),
    ),
)

# SmthSmthV2 ranks each query against its row's own negatives (`neg_text`), unlike the other video CLS tasks.
_EVAL_TYPE_EXCEPTIONS = {"SmthSmthV2": "local"}

MMEB_TASKS: tuple[MMEBTask, ...] = tuple(
    MMEBTask(name, modality, meta, _EVAL_TYPE_EXCEPTIONS.get(name, eval_type))
    for meta, modality, eval_type, names in _MMEB_GROUPS
    for name in names
)
MMEB_META_TASKS: tuple[str, ...] = tuple(group[0] for group in _MMEB_GROUPS)

# Names that look like a leaderboard task but are a different data version: reported as unknown, with a hint,
# never averaged in (the page sets before VLM2Vec's 2025-11-03 fix score very differently).
MMEB_NOT_LEADERBOARD = {
    "ViDoSeek-page": "the unfixed page set; the leaderboard uses ViDoSeek-page-fixed",
    "MMLongBench-page": "the unfixed page set; the leaderboard uses MMLongBench-page-fixed",
}

# ------------------------------------------------------------------------------------------------- UVRB

UVRB = "UVRB"
UVRB_ABILITIES = ("TXT", "CMP", "VIS", "CG", "FG", "LC")
UVRB_FG_SUBDOMAINS = ("S", "T", "PR")


@dataclass(frozen=True)
class UVRBDataset:
    name: str  # paper abbreviation
    metric: str  # embedrl metric name the score is read from
    paper_metric: str  # how the papers label the column
    aliases: tuple[str, ...] = ()


# R@k in Embed-RL's UVRB script is hit@k (`uvrb_recall`); MTEB-style recall differs when a query has several
# positives (CMRB, LoVR-TH). P@1 equals hit@1 for MS-TI and MS-TV.
UVRB_DATASETS: tuple[UVRBDataset, ...] = (
    UVRBDataset("MSRVTT", "uvrb_recall@1", "R@1", ("MSR-VTT",)),
    UVRBDataset("DiDeMo", "uvrb_recall@1", "R@1"),
    UVRBDataset("CRB-G", "uvrb_recall@1", "R@1"),
    UVRBDataset("CRB-S", "uvrb_recall@1", "R@1"),
    UVRBDataset("VDC-O", "uvrb_recall@1", "R@1"),
    UVRBDataset("CRB-T", "uvrb_recall@1", "R@1"),
    UVRBDataset("CMRB", "uvrb_recall@10", "R@10"),
    UVRBDataset("DREAM-E", "uvrb_recall@1", "R@1"),
    UVRBDataset("LoVR-TH", "uvrb_recall@10", "R@10"),
    UVRBDataset("PEV-K", "uvrb_recall@1", "R@1"),
    UVRBDataset("LoVR-V", "uvrb_recall@1", "R@1"),
    UVRBDataset("VDC-D", "uvrb_recall@1", "R@1"),
    UVRBDataset("MS-TI", "precision@1", "P@1"),
    UVRBDataset("MS-TV", "precision@1", "P@1"),
    UVRBDataset("MSRVTT-I2V", "uvrb_recall@1", "R@1"),
    UVRBDataset("LoVR-C2V", "uvrb_recall@1", "R@1"),
)

# The ability tree (Embed-RL Table 11 = GVE Table 4). A child is a dataset name or another
# node. The hierarchical (GVE) scheme averages children; the flat (Embed-RL) scheme averages the leaf datasets.
UVRB_TREE: dict[str, tuple[str, ...]] = {
    "S": ("CRB-S", "VDC-O"),
    "T": ("CRB-T", "CMRB"),
    "PR": ("DREAM-E", "LoVR-TH", "PEV-K"),
    "CG": ("MSRVTT", "DiDeMo", "CRB-G"),
    "FG": ("S", "T", "PR"),
    "LC": ("LoVR-V", "VDC-D"),
    "TXT": ("CG", "FG", "LC"),
    "CMP": ("MS-TI", "MS-TV"),
    "VIS": ("MSRVTT-I2V", "LoVR-C2V"),
}
UVRB_COLUMNS = ("TXT", "CMP", "VIS", "CG", "FG", "LC", "S", "T", "PR")  # Table 13 column order after AVG


def uvrb_leaves(node: str) -> list[str]:
    """The datasets under an ability node (a dataset is its own leaf)."""
    if node not in UVRB_TREE:
        return [node]
    return [leaf for child in UVRB_TREE[node] for leaf in uvrb_leaves(child)]


# ------------------------------------------------------------------------------------------------ names


def canonical_name(name: str) -> str:
    """Matching key for task names: case and punctuation ignored ("CRB_G" = "CRB-G" = "crb-g")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_benchmark(name: str) -> str | None:
    """'mmeb-v2', 'MMEB_V2', 'MMEB-V2' -> 'MMEB-V2'; 'uvrb' -> 'UVRB'; anything else -> None."""
    key = canonical_name(name)
    return {"mmebv2": MMEB_V2, "uvrb": UVRB}.get(key)


def _index(names_with_aliases: list[tuple[str, tuple[str, ...]]]) -> dict[str, str]:
    index: dict[str, str] = {}
    for name, aliases in names_with_aliases:
        for spelling in (name, *aliases):
            key = canonical_name(spelling)
            if key in index and index[key] != name:
                raise AssertionError(f"task names {index[key]!r} and {name!r} collide as {key!r}")
            index[key] = name
    return index


MMEB_NAME_INDEX = _index([(t.name, ()) for t in MMEB_TASKS])
UVRB_NAME_INDEX = _index([(d.name, d.aliases) for d in UVRB_DATASETS])


def resolve_task(benchmark: str, name: str) -> str | None:
    """The registry name of a task given under any spelling, or None when it is not part of the benchmark."""
    index = MMEB_NAME_INDEX if benchmark == MMEB_V2 else UVRB_NAME_INDEX
    return index.get(canonical_name(name))


def mmeb_task(name: str) -> MMEBTask:
    return _MMEB_BY_NAME[name]


def uvrb_dataset(name: str) -> UVRBDataset:
    return _UVRB_BY_NAME[name]


_MMEB_BY_NAME = {t.name: t for t in MMEB_TASKS}
_UVRB_BY_NAME = {d.name: d for d in UVRB_DATASETS}
