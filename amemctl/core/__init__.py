"""The retrieval math: plain torch, usable in a notebook without YAML, click or stores."""

from amemctl.core.modules import SparseDistributedMemory, UniversalHopfield
from amemctl.core.retrieval import DEFAULT_BUDGET, Recall, recall, retrieve
from amemctl.core.rows import Rows, TensorRows
from amemctl.core.separation import SEPARATIONS, Separation, Softmax, TopK, make_separation
from amemctl.core.similarity import SIMILARITIES, Similarity, get_similarity

__all__ = [
    "DEFAULT_BUDGET",
    "Recall",
    "Rows",
    "SEPARATIONS",
    "SIMILARITIES",
    "Separation",
    "Similarity",
    "Softmax",
    "SparseDistributedMemory",
    "TensorRows",
    "TopK",
    "UniversalHopfield",
    "get_similarity",
    "make_separation",
    "recall",
    "retrieve",
]
