"""A `pca` stage: a cheap, linear phi.

Scoring in the leading principal components of the stored patterns instead of raw pixels
shrinks the keys a memory must scan: on the digits, 48 of 64 components retrieve as well as
all pixels under Gaussian noise (all 64 are a rotation, so euclidean retrieval is unchanged).
Wire `score` to the embeddings and `project` to the pixels to get a linear semantic memory:
scores in feature space, values in pixel space.
"""

from __future__ import annotations

import torch
from torch import Tensor

from amemctl import Context, Input, Metric, Output, Param, Stage, StageError


def fit_pca(patterns: Tensor, components: int, whiten: bool = False) -> tuple[Tensor, Tensor, float]:
    """The mean (d) and projection (d x components) of N x d patterns, largest variance first, and the fraction of the variance they keep."""
    x = patterns.reshape(len(patterns), -1).double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(len(x) - 1, 1)
    variances, vectors = torch.linalg.eigh(cov)  # ascending
    order = variances.argsort(descending=True)[:components]
    projection = vectors[:, order]
    kept = float(variances[order].sum() / variances.sum()) if variances.sum() > 0 else 1.0
    if whiten:
        projection = projection / variances[order].clamp_min(1e-12).sqrt()
    return mean, projection, kept


class PCA(Stage):
    """Embed stored patterns and queries in the principal components of the stored patterns."""

    name = "pca"
    components = Param(int, 16, "number of principal components kept", min=1)
    whiten = Param(bool, False, "scale every component to unit variance")
    memory = Input("patterns", "the stored patterns the components are fitted on")
    queries = Input("queries", "queries, embedded with the same components")
    memory_out = Output("pca_patterns", "the stored patterns' embeddings, N x components")
    queries_out = Output("pca_queries", "the queries' embeddings, Q x components")

    # Inputs may be lazy stored rows (after `open_store`); the engine reads these two into
    # tensors for `run`, within the pipeline's budget. A stage that streams its input would
    # instead iterate `amemctl.Rows.chunks()`.
    materialize = ("memory", "queries")

    def metrics(self) -> list[Metric]:
        # declared, so `report:` may name it and its curves read in words, bounded to 0..100%
        return [Metric("explained_variance", "variance of the stored patterns the kept components explain", "variance explained", 0.0, 1.0)]

    def run(self, ctx: Context) -> None:
        patterns, queries = ctx[self.memory], ctx[self.queries]
        width = patterns[0].numel()
        if self.components > width:
            raise StageError(f"pca asks for {self.components} components of {width}-feature patterns", hint=f"use components <= {width}")
        if queries[0].numel() != width:
            raise StageError(f"queries have {queries[0].numel()} features, stored patterns {width}", hint="embed queries shaped like the patterns")
        mean, projection, kept = fit_pca(patterns, self.components, self.whiten)
        ctx.metric("explained_variance", kept)
        dtype = patterns.dtype if patterns.is_floating_point() else torch.float32

        def embed(x: Tensor) -> Tensor:
            return ((x.reshape(len(x), -1).double() - mean) @ projection).to(dtype)

        ctx[self.memory_out] = embed(patterns)
        ctx[self.queries_out] = embed(queries)
