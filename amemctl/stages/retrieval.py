"""Stages `score`, `separate` and `project`: the universal Hopfield network, step by step.

When the three follow each other and nothing else reads the scores or weights, the engine
runs them as one streaming retrieval (`run_fused`), which never forms the Q x N matrix.
Run apart, `score` and `separate` materialise Q x N tensors, which must fit the
pipeline's `budget`; they are made a block at a time, so that their temporaries fit it too
(`amemctl.core.matrices`).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Sequence

import torch

from amemctl.context import Context
from amemctl.core import separation as sep
from amemctl.core.dynamics import ACTIVATIONS, flip_update, has_integral, iterate
from amemctl.core.matrices import score_matrix, weight_matrix
from amemctl.core.retrieval import recall
from amemctl.core.rows import materialize
from amemctl.core.separation import Separation
from amemctl.core.similarity import SIMILARITIES, SMOOTHINGS, Similarity
from amemctl.errors import StageError, blaming
from amemctl.functions import SeparationFunction, SimilarityFunction
from amemctl.plugins import hookimpl
from amemctl.stage import Fusion, Input, Metric, Output, Param, Stage

log = logging.getLogger(__name__)


class Score(Stage):
    """Score every query against every stored key with a similarity function."""

    name = "score"
    similarity = Param(
        str,
        "dot",
        "dot, normalized_dot, cosine, euclidean, squared_euclidean, manhattan, kl, reverse_kl, jensen_shannon, hamming (L1, L2 too), or a plugin's;"
        " its parameters go beside it, or inside it: {name: kl, eps: 1e-4}",
    )
    distance_form = Param(str, "negative", "how distances become scores: negative (-d) or inverse (1/d, the UHN code's)", choices=["negative", "inverse"])
    normalize = Param(bool, False, "divide each query's scores by their sum (UHN paper, appendix E)")
    memory = Input("patterns", "the stored keys (N x ...)")
    queries = Input("queries", "the queries, shaped like the keys")
    output = Output("scores", "Q x N scores; only formed when a later stage reads them")

    dispatch = {"similarity": "similarities"}
    #: the divergences' eps and smoothing may stand beside any similarity (one that does not
    #: take them ignores them), so one score stage sweeps divergences and distances alike
    lenient = {"similarity": ("eps", "smoothing")}

    def fuse(self, following: Sequence[Stage]) -> Fusion | None:
        """score -> separate -> project, wired to each other, run as one streaming retrieval."""
        if len(following) < 2:
            return None
        separate, project = following[0], following[1]
        if not (isinstance(separate, Separate) and isinstance(project, Project)):
            return None
        if separate.input != self.output or project.weights != separate.output:
            return None
        return Fusion(3, lambda ctx: run_fused(self, separate, project, ctx), (self.output, separate.output), "retrieve")

    def similarity_fn(self) -> Similarity:
        """The chosen similarity, made with its parameters (kl's eps, minkowski's p)."""
        return self.made("similarity")

    def describe(self) -> str:
        return f"score {self.similarity}"

    def run(self, ctx: Context) -> None:
        queries, keys = ctx[self.queries], ctx[self.memory]
        _fits_budget(len(queries), len(keys), ctx.budget, "score")
        ctx[self.output] = score_matrix(queries, keys, self.similarity_fn(), self.distance_form, self.normalize, ctx.budget)


class Separate(Stage):
    """Sharpen scores into projection weights with a separation function."""

    name = "separate"
    function = Param(str, "softmax", "the separation function: a built-in one or a plugin's; its parameters (`amemctl stages softmax`) go beside it")
    input = Input("scores", "the scores to separate")
    output = Output("weights", "Q x N weights; only formed when a later stage reads them")

    dispatch = {"function": "separations"}

    def separation(self) -> Separation:
        """The chosen separation, made with its parameters as `amemctl.recall` makes one it is given by name."""
        return self.made("function")

    def check(self) -> None:
        self.separation()  # made once before anything runs: one that cannot be made (or stream) is refused by `validate`, not at the sweep point that reaches it

    def describe(self) -> str:
        separation = self.separation()
        with blaming("separation", self.function):  # run for a fused retrieval's progress line too: a bug in it is at this stage's line
            return separation.describe()

    def run(self, ctx: Context) -> None:
        separation, scores = self.separation(), ctx[self.input]
        if scores.dim() == 2:  # weight_matrix refuses any other shape
            _fits_budget(*scores.shape, ctx.budget, "separate")
        with blaming("separation", self.function):
            ctx[self.output] = weight_matrix(scores, separation, ctx.budget)


class Project(Stage):
    """Project weights onto stored values: the keys (auto-association) or other rows (hetero).

    `activation` is the neurons' output nonlinearity (sign for the classical Hopfield network).
    `flip` (and `update: asynchronous`) replace the projection by the energy-difference update
    of bipolar neurons (Krotov & Hopfield 2016; the classical network with the identity).
    With `steps` > 1 the output is fed back as the next query (auto-association), until it
    moves less than `tolerance`; `energy: true` records the energy at every step.
    """

    name = "project"
    activation = Param(str, "none", "applied to the projection: none, sign (+1/-1), binary (> 0.5), clip ([0, 1])", choices=list(ACTIVATIONS))
    steps = Param(int, 1, "retrieval steps, each output the next query (auto-association)", min=1)
    tolerance = Param(float, None, "stop a query once its state moves less than this (max absolute change)", min=0)
    energy = Param(bool, False, "record the energy at every step (defined for the dot similarity)")
    update = Param(str, "synchronous", "synchronous, or asynchronous: neuron by neuron in a random order, each taking the sign of lower energy (implies flip)", choices=["synchronous", "asynchronous"])
    flip = Param(bool, False, "bipolar neurons take the sign of lower energy -sum F(m . s), F the separation's integral: Krotov & Hopfield 2016's update; with identity the classical network's zero-diagonal rule (dot, sign, unnormalised separation)")
    weights = Input("weights", "Q x N weights")
    values = Input("patterns", "the stored values (N x ...): the keys themselves, or their hetero partners")
    output = Output("retrieved", "the retrieved values, Q x (value shape)")

    def iterative(self) -> bool:
        return self.steps > 1 or self.energy or self.flips()

    def flips(self) -> bool:
        """Whether neurons take the sign of lower energy instead of the projection's sign."""
        return self.flip or self.update == "asynchronous"

    def metrics(self) -> list[Metric]:
        if not self.iterative():
            return []
        return [
            Metric("iterations", "update steps taken (mean over queries)", "steps", 0.0),
            Metric("converged", "queries that reached a fixed point within the steps", "converged", 0.0, 1.0),
            Metric("energy_increases", "updates that raised the energy (0 for a Lyapunov function)", "energy increases", 0.0),
        ]

    def run(self, ctx: Context) -> None:
        if self.iterative():
            raise StageError("iterating (steps, energy, asynchronous updates) needs score, separate and project together", hint="keep the three stages consecutive, with nothing else reading scores or weights")
        weights, values = ctx[self.weights], materialize(ctx[self.values])
        if weights.shape[1] != len(values):
            raise StageError(f"weights cover {weights.shape[1]} memories but there are {len(values)} values", hint="project onto values stored beside the scored keys")
        out = weights @ values.reshape(len(values), -1).to(weights.device, weights.dtype)
        ctx[self.output] = ACTIVATIONS[self.activation](out.reshape(len(weights), *values.shape[1:]))


def run_fused(score: Score, separate: Separate, project: Project, ctx: Context) -> None:
    """score -> separate -> project as one streaming retrieval, within the context's budget."""
    keys = ctx[score.memory]
    values = None if project.values == score.memory else ctx[project.values]
    if project.iterative():
        _iterate(score, separate, project, ctx, keys, values)
        return
    options = dict(
        similarity=score.similarity_fn(),
        separation=separate.separation(),
        distance_form=score.distance_form,
        normalize_scores=score.normalize,
        budget=ctx.budget,
    )
    if ctx.distributed:  # each rank scores its shard of the memory; the partial states are merged
        from amemctl.core.distributed import sharded_recall

        result = sharded_recall(ctx[score.queries], keys, values, group=ctx.group, **options)
        import torch.distributed as dist

        ctx.metric("ranks", dist.get_world_size(ctx.group))
    else:
        result = recall(ctx[score.queries], keys, values, **options)
    if result.unweighted:
        _say_unweighted(ctx, result.unweighted, len(result.output), options["similarity"], options["separation"])
    ctx[project.output] = ACTIVATIONS[project.activation](result.output)


def _say_unweighted(ctx: Context, count: int, queries: int, similarity: Similarity, separation: Separation) -> None:
    """Warn (and note in the report) that some retrievals are zeros because no memory got any weight."""
    text = (
        f"{count} of {queries} queries got weight 0 from every memory under {separation.describe()} on {similarity.name} scores,"
        " so their retrievals are all zeros. A rectifier or a threshold at 0 does this to negative distances: score with"
        " `distance_form: inverse`, put the threshold below 0, or separate with softmax."
    )
    log.warning("%s: %s", ctx.point_label, text)
    ctx.note("queries no memory weighted", text)


def _iterate(score: Score, separate: Separate, project: Project, ctx: Context, keys, values) -> None:
    if values is not None:
        raise StageError("iterated retrieval feeds outputs back as queries, so values must be the keys (auto-association)", hint="project onto the scored memory, or use steps: 1")
    sim, separation = score.similarity_fn(), separate.separation()
    if project.flips():
        if not (sim.name == "dot" and has_integral(separation) and project.activation == "sign"):
            raise StageError(
                "energy-flip updates (flip: true, update: asynchronous) are the classical Hopfield network's and the dense associative memory's:"
                " dot, sign and an unnormalised identity or polynomial separation",
                hint="use `- model: {name: hn, update: asynchronous}` or `- model: dam`",
            )
        if score.distance_form != "negative" or score.normalize:
            raise StageError("energy-flip updates use plain dot scores", hint="drop distance_form and normalize from the score stage")
        result = flip_update(ctx[score.queries], keys, separation, steps=project.steps, update=project.update, generator=ctx.rng("cpu"), track_energy=project.energy, budget=ctx.budget)
    else:
        if score.distance_form != "negative" or score.normalize:
            raise StageError("iterated retrieval uses plain scores", hint="drop distance_form and normalize from the score stage")
        result = iterate(ctx[score.queries], keys, similarity=sim, separation=separation, activation=project.activation, steps=project.steps,
                         tolerance=project.tolerance, track_energy=project.energy, budget=ctx.budget)
    ctx[project.output] = result.state
    ctx.metric("iterations", result.steps.float().mean())
    ctx.metric("converged", result.converged.float().mean())
    if result.energies:
        ctx.metric("energy_increases", result.increases())
        trace = torch.stack(result.energies).mean(1).tolist()
        from amemctl.figures import curves  # matplotlib loads only when a figure is drawn
        curves({"mean energy": (list(range(len(trace))), trace)}, ctx.figure_path("energy"), title=ctx.figure_title(f"energy per step ({'never increases in theory' if result.guaranteed else 'no guarantee'})"), xlabel="step", ylabel="E")
        ctx.note("energy", f"Mean energy per step: {', '.join(f'{e:.4g}' for e in trace)}. "
                 f"Increases: {result.increases()} (query, step) pairs; theory {'guarantees none' if result.guaranteed else 'gives no guarantee for this model'}.")
    elif project.energy:
        ctx.note("energy", f"No energy is defined for {sim.name} with {separation.describe()}; only the dot similarity with softmax or an unnormalised polynomial separation has one.")


def _fits_budget(queries: int, memories: int, budget: int, stage: str) -> None:
    need = queries * memories * 4
    if need > budget:
        raise StageError(
            f"stage {stage!r} would form a {queries} x {memories} matrix ({need / 2**20:.0f} MiB), over the budget of {budget / 2**20:.0f} MiB",
            hint="keep score, separate and project together so they run as one streaming retrieval, or raise `budget:`",
        )


def _param(type_: Any, doc: str, **limits: Any) -> Callable[[Any], Param]:
    """A separation parameter as users see it: its type, documentation and limits; it gets its
    default from the core factory, which declares it."""
    return lambda default: Param(type_, default, doc, **limits)


_NORMALIZE = _param(bool, "divide the weights by their sum")
_BETA = _param(float, "inverse temperature", min=0)

#: What `amemctl stages` tells of each separation of amemctl.core.separation.SEPARATIONS: a line
#: of documentation and, by parameter, its type, documentation and limits. Names, parameters
#: and defaults are the core's own (see _as_function).
_ABOUT: dict[str, tuple[str, dict[str, Callable[[Any], Param]]]] = {
    "identity": ("the scores themselves (the classical network's raw sum)", {"normalize": _NORMALIZE}),
    "square": ("scores squared", {"normalize": _NORMALIZE}),
    "polynomial": ("x^n (the dense associative memory's polynomial)", {"n": _param(float, "the order n of x^n"), "normalize": _NORMALIZE}),
    "rectified_polynomial": ("max(x, 0)^n (Krotov and Hopfield 2016)", {"n": _param(float, "the order n of max(x, 0)^n"), "normalize": _NORMALIZE}),
    "log": ("log of the scores", {"normalize": _NORMALIZE}),
    "threshold": ("1 where the score reaches t, else 0", {"t": _param(float, "the score a memory must reach"), "normalize": _NORMALIZE}),
    "softmax": ("softmax(beta * scores) (the modern continuous Hopfield network)", {"beta": _BETA}),
    "max": ("one-hot on the best score", {}),
    "topk": (
        "the k best scores, weighted uniformly or by a softmax",
        {
            "k": _param(int, "how many memories it keeps", min=1),
            "weighting": _param(str, "uniform (mean of the k) or softmax over them", choices=["uniform", "softmax"]),
            "beta": _param(float, "inverse temperature of the softmax weighting", min=0),
        },
    ),
    "sparsemax": ("sparsemax(beta * scores): sparse weights (sparse modern Hopfield models)", {"beta": _BETA}),
    "entmax15": ("1.5-entmax(beta * scores): between softmax and sparsemax", {"beta": _BETA}),
}


def _as_function(name: str) -> SeparationFunction:
    """The core separation `name` as a Function, its parameters described by _ABOUT.

    A parameter of the core factory that _ABOUT does not describe, or one it describes that the
    factory does not take, fails here, at import, rather than reaching users half declared.
    """
    doc, described = _ABOUT[name]
    defaults = sep.parameters(name)
    if list(described) != list(defaults):
        raise TypeError(f"separation {name!r} has the parameters {list(defaults)} but is described with {list(described)}")
    return SeparationFunction(name, sep.SEPARATIONS[name], {key: described[key](default) for key, default in defaults.items()}, doc=doc)


def _separation_functions() -> list[SeparationFunction]:
    """Every core separation as a Function, in the core's order; _ABOUT describing another
    set of separations than the core has fails at import."""
    if set(_ABOUT) != set(sep.SEPARATIONS):
        raise TypeError(f"the separations described {sorted(_ABOUT)} are not the core's {sorted(sep.SEPARATIONS)}")
    return [_as_function(name) for name in sep.SEPARATIONS]


#: The built-in separations, registered through amemctl_register_separations like a plugin's.
SEPARATION_FUNCTIONS: list[SeparationFunction] = _separation_functions()

#: What `amemctl stages` tells of the keyword options of the core's kernels (the divergences'),
#: which the similarities taking them declare as their parameters: type, documentation, limits.
_OPTIONS: dict[str, Callable[[Any], Param]] = {
    "eps": _param(float, "what keeps zeros finite (the UHN code: 1e-4)", above=0),
    "smoothing": _param(str, "renormalize (eps added, rows summed to 1 again) or log (log(p + eps), the UHN code's)", choices=list(SMOOTHINGS)),
}


def _similarity(similarity: Similarity) -> Similarity | SimilarityFunction:
    """A core similarity as registered: itself, or, when its kernel takes options (eps, smoothing), the
    SimilarityFunction declaring them as parameters, their defaults the kernel's own.

    A pipeline and `amemctl stages kl` then check and show them like any similarity's
    parameters; an option _OPTIONS does not describe fails here, at import.
    """
    if not similarity.options:
        return similarity
    defaults = {name: p.default for name, p in inspect.signature(similarity.kernel).parameters.items() if name in similarity.options}
    missing = [option for option in similarity.options if option not in _OPTIONS or option not in defaults]
    if missing:
        raise TypeError(f"similarity {similarity.name!r} has the options {missing}, which are not described or have no default")
    params = {option: _OPTIONS[option](defaults[option]) for option in similarity.options}
    return SimilarityFunction(similarity.name, similarity.with_options, params, doc=similarity.doc, distance=similarity.distance)


#: The built-in similarities, registered through amemctl_register_similarities like a plugin's.
SIMILARITY_FUNCTIONS: list[Similarity | SimilarityFunction] = [_similarity(similarity) for similarity in SIMILARITIES.values()]


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Score, Separate, Project]


@hookimpl
def amemctl_register_similarities() -> list[Similarity | SimilarityFunction]:
    return list(SIMILARITY_FUNCTIONS)


@hookimpl
def amemctl_register_separations() -> list[SeparationFunction]:
    return list(SEPARATION_FUNCTIONS)

