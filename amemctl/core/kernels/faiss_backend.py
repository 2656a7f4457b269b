"""FAISS's SIMD distance kernels, where faiss-cpu is installed (the optional `faiss` extra).

torch has no vectorised CPU kernel for distances that are not a matrix product: torch.cdist
with p=1 runs at a few G elements/s, FAISS's pairwise L1 kernel (AVX2/AVX-512, OpenMP over
queries) several times faster. Only the distance block comes from FAISS; selection (max,
top-k with ties to the lowest index) and the streaming softmax stay ours, so the answer is
the same with or without it. Set AMEMCTL_NO_FAISS=1 to use torch.cdist instead.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import faiss
except ImportError:  # optional: `pip install amemctl[faiss]`
    faiss = None


def available(x: Tensor) -> bool:
    """Whether FAISS can compute distances for x: installed, not disabled, float32 on the CPU."""
    return faiss is not None and not os.environ.get("AMEMCTL_NO_FAISS") and x.device.type == "cpu" and x.dtype == torch.float32


def l1_distances(queries: Tensor, keys: Tensor, out: Tensor | None = None) -> Tensor:
    """||q - k||_1 for every query and key (float32, CPU), written into `out` (contiguous Q x n) if given.

    Reads and writes the tensors' memory in place through FAISS's pointer API: no copies.
    """
    q = queries.contiguous()
    k = keys.contiguous()
    if out is None:
        out = torch.empty(q.shape[0], k.shape[0], dtype=torch.float32)
    if q.shape[0] and k.shape[0]:
        faiss.omp_set_num_threads(torch.get_num_threads())
        faiss.pairwise_extra_distances(
            q.shape[1], q.shape[0], faiss.swig_ptr(q.numpy()), k.shape[0], faiss.swig_ptr(k.numpy()),
            faiss.METRIC_L1, 0.0, faiss.swig_ptr(out.numpy()),
        )
    return out
