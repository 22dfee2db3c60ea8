"""Benchmark definitions as data: the 78 MMEB-V2 tasks and the 16 UVRB datasets (benchmarks.md §1.2, §2.1).

Task names are the keys of the official per-task score files (VLM2Vec / Embed-RL `detailed_scores` layout).
"""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------- MMEB-V2

MMEB_META_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    # meta-task: (modality, tasks)
    "I-CLS": ("image", ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                        "ImageNet-R", "ObjectNet", "Country211")),
    "I-QA": ("image", ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA",
                       "VizWiz", "GQA", "TextVQA")),
    "I-RET": ("image", ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS",
                        "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS")),
    "I-GD": ("image", ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")),
    "V-CLS": ("video", ("K700", "SmthSmthV2", "HMDB51", "UCF101", "Breakfast")),
    "V-QA": ("video", ("MVBench", "Video-MME", "NExTQA", "EgoSchema", "ActivityNetQA")),
    "V-RET": ("video", ("MSR-VTT", "MSVD", "DiDeMo", "VATEX", "YouCook2")),
    "V-MRET": ("video", ("QVHighlight", "Charades-STA", "MomentSeeker")),
    "VDRv1": ("visdoc", ("ViDoRe_arxivqa", "ViDoRe_docvqa", "ViDoRe_infovqa", "ViDoRe_tabfquad", "ViDoRe_tatdqa",
                         "ViDoRe_shiftproject", "ViDoRe_syntheticDocQA_artificial_intelligence",
                         "ViDoRe_syntheticDocQA_energy", "ViDoRe_syntheticDocQA_government_reports",
                         "ViDoRe_syntheticDocQA_healthcare_industry")),
    "VDRv2": ("visdoc", ("ViDoRe_esg_reports_human_labeled_v2", "ViDoRe_biomedical_lectures_v2_multilingual",
                         "ViDoRe_economics_reports_v2_multilingual", "ViDoRe_esg_reports_v2_multilingual")),
    "VR": ("visdoc", ("VisRAG_ArxivQA", "VisRAG_ChartQA", "VisRAG_MP-DocVQA", "VisRAG_SlideVQA", "VisRAG_InfoVQA",
                      "VisRAG_PlotQA")),
    "OOD": ("visdoc", ("ViDoSeek-page-fixed", "ViDoSeek-doc", "MMLongBench-page-fixed", "MMLongBench-doc")),
}
MMEB_MODALITIES = ("image", "video", "visdoc")
# Main metric per modality (benchmarks.md §1.6): Hit@1 for image and video, NDCG@5 (linear, graded) for VisDoc.
MMEB_MAIN_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}
# Old (pre-Nov-2025) names of the two fixed page tasks, accepted on input and mapped to the fixed ones.
MMEB_ALIASES = {"ViDoSeek-page": "ViDoSeek-page-fixed", "MMLongBench-page": "MMLongBench-page-fixed"}


@dataclass(frozen=True)
class MMEBTask:
    name: str
    modality: str
    meta_task: str

    @property
    def main_metric(self) -> str:
        return MMEB_MAIN_METRIC[self.modality]


MMEB_TASKS: dict[str, MMEBTask] = {
    name: MMEBTask(name, modality, meta)
    for meta, (modality, names) in MMEB_META_TASKS.items() for name in names
}
assert len(MMEB_TASKS) == 78

# ------------------------------------------------------------------------------------------------- UVRB


@dataclass(frozen=True)
class UVRBDataset:
    name: str
    metric: str          # metric name in embedrl's metric set
    paper_metric: str    # how the papers label it
    task: str            # TXT | CMP | VIS
    domain: str | None   # CG | FG | LC (TXT datasets only)
    sub: str | None      # S | T | PR (FG datasets only)


UVRB_DATASETS: dict[str, UVRBDataset] = {d.name: d for d in (
    UVRBDataset("MSRVTT", "uvrb_recall@1", "R@1", "TXT", "CG", None),
    UVRBDataset("DiDeMo", "uvrb_recall@1", "R@1", "TXT", "CG", None),
    UVRBDataset("CRB-G", "uvrb_recall@1", "R@1", "TXT", "CG", None),
    UVRBDataset("CRB-S", "uvrb_recall@1", "R@1", "TXT", "FG", "S"),
    UVRBDataset("VDC-O", "uvrb_recall@1", "R@1", "TXT", "FG", "S"),
    UVRBDataset("CRB-T", "uvrb_recall@1", "R@1", "TXT", "FG", "T"),
    UVRBDataset("CMRB", "uvrb_recall@10", "R@10", "TXT", "FG", "T"),
    UVRBDataset("DREAM-E", "uvrb_recall@1", "R@1", "TXT", "FG", "PR"),
    UVRBDataset("LoVR-TH", "uvrb_recall@10", "R@10", "TXT", "FG", "PR"),
    UVRBDataset("PEV-K", "uvrb_recall@1", "R@1", "TXT", "FG", "PR"),
    UVRBDataset("LoVR-V", "uvrb_recall@1", "R@1", "TXT", "LC", None),
    UVRBDataset("VDC-D", "uvrb_recall@1", "R@1", "TXT", "LC", None),
    UVRBDataset("MS-TI", "precision@1", "P@1", "CMP", None, None),
    UVRBDataset("MS-TV", "precision@1", "P@1", "CMP", None, None),
    UVRBDataset("MSRVTT-I2V", "uvrb_recall@1", "R@1", "VIS", None, None),
    UVRBDataset("LoVR-C2V", "uvrb_recall@1", "R@1", "VIS", None, None),
)}
assert len(UVRB_DATASETS) == 16
# Names used by upstream configs (underscores) mapped to the paper's names.
UVRB_ALIASES = {"CRB_G": "CRB-G", "CRB_S": "CRB-S", "CRB_T": "CRB-T", "VDC_O": "VDC-O", "VDC_D": "VDC-D",
                "DREAM_E": "DREAM-E", "LoVR_TH": "LoVR-TH", "PEV_K": "PEV-K", "LoVR_V": "LoVR-V",
                "MS_TI": "MS-TI", "MS_TV": "MS-TV", "MSRVTT_I2V": "MSRVTT-I2V", "LoVR_C2V": "LoVR-C2V",
                "MSR-VTT": "MSRVTT"}
UVRB_ABILITIES = ("TXT", "CMP", "VIS", "CG", "FG", "LC")
