"""The paper's published numbers, as data, for side-by-side rendering with our reproduction.

Source: Fleshman & Van Durme (2024), "RE-AdaptIR: Improving Information Retrieval through Reverse
Engineered Adaptation", Tables 1–3, transcribed from the paper. All values are nDCG@10 × 100 with
one decimal, exactly as printed (deltas keep their sign; the paper prints "0.0" unsigned).

Why data and not prose: :mod:`readaptir.report.tables` renders every table with the paper's column beside
ours, and ``tests/test_tables.py`` checks the paper's internal consistency (its stated averages follow
from its per-dataset numbers; Table 2's "both" column and Table 3's second column agree with Table 1).

How the averages are defined (checked in the tests, all agree to the printed rounding):

- Table 1 "Average": plain mean over the 14 datasets of Base and of RA.
- Table 1 "Average zero-shot": per model, mean over the datasets that model did *not* see in training
  (``seen_by`` in ``conf/dataset/*.yaml``): RepLLaMA drops MS-MARCO (13 sets); e5-Mistral drops
  MS-MARCO, FEVER, HotpotQA, NQ and Quora (9 sets).
- Table 3 "Average": plain mean over its 13 BeIR sets.

    from readaptir import paper
    paper.TABLE1["repllama"]["scifact"]          # (74.5, 76.3) = (Base, RA)
    paper.TABLE2["e5-mistral"]["arguana"]["with"]  # +5.1
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

MODELS: Final = ("repllama", "e5-mistral")
# Base-model baselines rendered beside the retrievers in Table 1 when the store has their results.
BASELINES: Final = ("bm25", "minilm")
DISPLAY_NAMES: Final = MappingProxyType(
    {"repllama": "RepLLaMA", "e5-mistral": "e5-Mistral", "bm25": "BM25", "minilm": "MiniLM"}
)
# BeIR's own spelling of each dataset (Thakur et al., 2021), for rendered tables and figures.
DATASET_NAMES: Final = MappingProxyType({
    "msmarco": "MS MARCO", "fever": "FEVER", "hotpotqa": "HotpotQA", "nq": "NQ", "quora": "Quora",
    "arguana": "ArguAna", "climate-fever": "Climate-FEVER", "dbpedia-entity": "DBPedia", "fiqa": "FiQA",
    "nfcorpus": "NFCorpus", "scidocs": "SCIDOCS", "scifact": "SciFact", "trec-covid": "TREC-COVID",
    "webis-touche2020": "Touché-2020",
})  # fmt: skip

# Table 1's row order (docs/method.md §4): MS-MARCO, the four big Wikipedia/QA sets, then BeIR alphabetically.
DATASETS: Final = (
    "msmarco",
    "fever",
    "hotpotqa",
    "nq",
    "quora",
    "arguana",
    "climate-fever",
    "dbpedia-entity",
    "fiqa",
    "nfcorpus",
    "scidocs",
    "scifact",
    "trec-covid",
    "webis-touche2020",
)
BEIR_DATASETS: Final = tuple(d for d in DATASETS if d != "msmarco")  # Table 3's 13 sets
TABLE2_DATASETS: Final = ("arguana", "fiqa", "nfcorpus", "scifact")
ABLATIONS: Final = ("without", "with", "both")  # Table 2's column order

# Table 1 (adapter=in-domain, ablation=both): dataset -> (RepLLaMA Base, RA, e5-Mistral Base, RA).
_T1: Final = {
    "msmarco": (46.5, 46.1, 36.5, 40.1),
    "fever": (84.0, 83.8, 85.1, 87.7),
    "hotpotqa": (67.2, 67.6, 72.5, 73.4),
    "nq": (61.8, 62.1, 53.3, 52.4),
    "quora": (80.1, 82.8, 85.6, 88.0),
    "arguana": (52.3, 52.6, 52.0, 59.0),
    "climate-fever": (30.8, 30.4, 24.9, 31.4),
    "dbpedia-entity": (43.4, 43.5, 47.2, 47.1),
    "fiqa": (44.2, 45.5, 49.9, 52.3),
    "nfcorpus": (38.0, 38.6, 39.6, 40.8),
    "scidocs": (17.7, 18.3, 18.6, 18.7),
    "scifact": (74.5, 76.3, 71.4, 73.3),
    "trec-covid": (84.0, 85.6, 83.9, 81.0),
    "webis-touche2020": (27.5, 27.0, 29.0, 30.1),
}

#: model -> dataset -> (Base, RA)
TABLE1: Final[dict[str, dict[str, tuple[float, float]]]] = {
    "repllama": {d: (v[0], v[1]) for d, v in _T1.items()},
    "e5-mistral": {d: (v[2], v[3]) for d, v in _T1.items()},
}
#: The averages as printed in Table 1: model -> (Base, RA).
TABLE1_AVERAGE: Final = {"repllama": (53.7, 54.3), "e5-mistral": (53.5, 55.4)}
TABLE1_AVERAGE_ZERO_SHOT: Final = {"repllama": (54.3, 54.9), "e5-mistral": (46.3, 48.2)}

#: Table 2, RA − Base with adapter=in-domain: model -> dataset -> ablation -> delta.
TABLE2: Final[dict[str, dict[str, dict[str, float]]]] = {
    "repllama": {
        "arguana": {"without": 0.5, "with": 0.2, "both": 0.3},
        "fiqa": {"without": 1.0, "with": 1.2, "both": 1.3},
        "nfcorpus": {"without": 0.3, "with": 0.5, "both": 0.6},
        "scifact": {"without": 0.1, "with": 0.5, "both": 1.8},
    },
    "e5-mistral": {
        "arguana": {"without": 3.9, "with": 5.1, "both": 7.0},
        "fiqa": {"without": 2.0, "with": 2.8, "both": 2.4},
        "nfcorpus": {"without": 0.6, "with": 1.1, "both": 1.2},
        "scifact": {"without": 2.3, "with": 1.0, "both": 1.9},
    },
}

# Table 3 (adapter=msmarco, ablation=both): dataset -> (RepLLaMA: RA_ms − Base, RA_ms − RA_in,
# e5-Mistral: RA_ms − Base, RA_ms − RA_in).
_T3: Final = {
    "fever": (0.1, 0.3, -0.1, -2.7),
    "hotpotqa": (-0.4, -0.8, 0.5, -0.4),
    "nq": (-0.1, -0.4, 7.0, 7.9),
    "quora": (2.0, -0.7, 2.4, 0.0),
    "arguana": (0.8, 0.5, 10.1, 3.1),
    "climate-fever": (1.0, 1.4, -1.1, -7.6),
    "dbpedia-entity": (0.1, 0.0, 0.5, 0.6),
    "fiqa": (0.2, -1.1, 1.7, -0.7),
    "nfcorpus": (0.0, -0.6, 0.7, -0.5),
    "scidocs": (0.1, -0.5, 0.6, 0.5),
    "scifact": (-0.9, -2.7, 2.1, 0.2),
    "trec-covid": (-0.4, -2.0, 2.6, 5.5),
    "webis-touche2020": (-0.1, 0.4, -0.5, -1.6),
}

#: model -> dataset -> (RA_msmarco − Base, RA_msmarco − RA_in-domain)
TABLE3: Final[dict[str, dict[str, tuple[float, float]]]] = {
    "repllama": {d: (v[0], v[1]) for d, v in _T3.items()},
    "e5-mistral": {d: (v[2], v[3]) for d, v in _T3.items()},
}
#: Table 3's printed Average row: model -> (RA_ms − Base, RA_ms − RA_in).
TABLE3_AVERAGE: Final = {"repllama": (0.2, -0.5), "e5-mistral": (2.0, 0.3)}


def display_name(model: str) -> str:
    """The paper's spelling of a model name (``repllama`` → RepLLaMA); other names as they are."""
    return DISPLAY_NAMES.get(model, model)


def dataset_name(dataset: str) -> str:
    """BeIR's spelling of a dataset id (``webis-touche2020`` → Touché-2020); other names as they are."""
    return DATASET_NAMES.get(dataset, dataset)
