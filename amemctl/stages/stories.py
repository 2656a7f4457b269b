"""Stages `associate`, `train-hetero-encoder` and `chain-recall`: hetero-associative stories."""

from __future__ import annotations

import math

import torch

from amemctl.context import Context
from amemctl.core import random
from amemctl.core.chains import distinct_cycles, follow, permutation_cycles
from amemctl.core.retrieval import nearest_index, recall
from amemctl.core.rows import materialize
from amemctl.errors import StageError
from amemctl.models.hetero import HeteroEncoder
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Metric, Output, Param, ParamError, Stage
from amemctl.training.checkpoints import Checkpointing, default_folder
from amemctl.training.hetero import train_hetero


class Associate(Stage):
    """Pair each stored pattern with another: its successor under a seeded permutation (or the next one)."""

    name = "associate"
    mode = Param(str, "permutation", "permutation (seeded, random cycles) or shift (i -> i+1: one cycle)", choices=["permutation", "shift"])
    input = Input("patterns", "the stored patterns")
    output = Output("successors", "each pattern's associate: input[permutation]")
    permutation = Output("permutation", "the successor index of each pattern")

    def metrics(self) -> list[Metric]:
        return [Metric("permutation_cycles", "cycles of the pairing, the stories a chain can close into", "cycles", 1.0)]

    def run(self, ctx: Context) -> None:
        patterns = materialize(ctx[self.input])
        n = len(patterns)
        if self.mode == "shift":
            perm = (torch.arange(n) + 1) % n
        else:
            perm = random.randperm(n, ctx.rng())
        ctx[self.output] = patterns[perm.to(patterns.device)]
        ctx[self.permutation] = perm
        cycles = permutation_cycles(perm)
        ctx.metric("permutation_cycles", len(cycles))


class TrainHeteroEncoder(Stage):
    """Train the stories article's hetero-encoder to map each image to its associate (L2 loss).

    Training saves its state to checkpoints/<pipeline>-hetero-<hash>.pt as it goes and
    resumes from there when run again with the same settings and data.
    """

    name = "train-hetero-encoder"
    code = Param(int, 1024, "width of the dense code", min=1)
    epochs = Param(int, 200, "passes over the pairs", min=0)
    batch_size = Param(int, 16, "pairs per step", min=1)
    lr = Param(float, 2.5e-4, "initial Adam learning rate", min=0)
    decay = Param(float, 0.99, "learning-rate factor per epoch (exponential decay)", min=0, max=1)
    sparsity = Param(float, 0.0, "weight of the L1 penalty on the code", min=0)
    noise = Param(float, 0.0, "variance of Gaussian noise added to inputs while training (robust recall)", min=0)
    input = Input("patterns", "the images")
    targets = Input("successors", "their associates")
    output = Output("hetero_encoder", "the trained recall model, for chain-recall")

    def run(self, ctx: Context) -> None:
        x, y = materialize(ctx[self.input]), materialize(ctx[self.targets])
        if x.shape != y.shape:
            raise StageError(f"images {tuple(x.shape)} and associates {tuple(y.shape)} differ in shape")
        seed = ctx.stage_seed % 2**31
        config = {k: self.settings[k] for k in ("code", "epochs", "batch_size", "lr", "decay", "sparsity", "noise")}
        checkpointing = Checkpointing.for_stage(ctx, default_folder(), f"{ctx.provenance.get('pipeline', 'run')}-hetero", {**config, "seed": seed}, x, y)
        model, losses = train_hetero(
            x, y, code=self.code, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, decay=self.decay,
            sparsity=self.sparsity, noise=self.noise, seed=seed, device=ctx.device, checkpointing=checkpointing,
        )
        ctx[self.output] = model
        if losses:
            ctx.metric("hetero_loss", losses[-1])

    def metrics(self) -> list[Metric]:
        return [Metric("hetero_loss", "the hetero-encoder's training loss at the last epoch", "loss", 0.0)]


class ChainRecall(Stage):
    """Follow stories: each recall becomes the next query; report where chains close into cycles.

    The recall model is either the exact hetero memory (score the stored patterns, project
    their associates) or a trained network (train-hetero-encoder). Each output is mapped to
    its nearest stored pattern to name the memory a chain is at.
    """

    name = "chain-recall"
    model = Param(str, "exact", "exact (a universal Hopfield hetero memory) or network", choices=["exact", "network"])
    steps = Param(int, 20, "recalls per chain (a chain closes only if its cycle is no longer)", min=1)
    starts = Param(int, None, "number of starting memories, the first ones (default: every stored pattern)", min=1)
    start_noise = Param(float, 0.0, "variance of Gaussian noise on the starting images", min=0)
    snap = Param(bool, False, "feed the nearest stored pattern back instead of the raw recall")
    similarity = Param(str, "euclidean", "exact model: the similarity (any registered one); its parameters go beside it, or inside it: {name: kl, eps: 1e-4}")
    separation = Param(str, "max", "exact model: the separation (any registered one); its parameters go beside it (softmax's beta), or inside it: {name: topk, k: 3}")
    stories = Param(int, 8, "how many distinct cycles to draw as 2 x 10 strips", min=0)
    memory = Input("patterns", "the stored patterns (keys)")
    values = Input("successors", "exact model: the associates (values)", optional=True)
    network = Input(None, "network model: the trained hetero-encoder", optional=True)
    permutation = Input(None, "the true permutation, to check the cycles against", optional=True)
    output = Output("chains", "memories visited: starts x (steps + 1) indices")

    dispatch = {"similarity": "similarities", "separation": "separations"}

    def check(self) -> None:
        if self.model == "network" and self.network is None:
            raise ParamError("the network model needs `network:`", hint="wire it to train-hetero-encoder's output", param="model")
        if self.model == "exact" and self.values is None:
            raise ParamError("the exact model needs `values:`, the associates", param="values", about="key")

    def describe(self) -> str:
        return f"chain-recall {self.model}"

    def metrics(self) -> list[Metric]:
        return [
            Metric("cycles_found", "distinct cycles the chains closed into", "cycles found", 0.0),
            Metric("closed_chains", "chains that close into a cycle", "closed chains", 0.0, 1.0),
            Metric("mean_period", "mean period of the closed chains", "mean period", 0.0),
            Metric("periods_match", "closed chains whose period is their true cycle's length", "periods match", 0.0, 1.0),
            Metric("cycles_match", "whether the cycles found are exactly the permutation's (1) or not (0)", "cycles match", 0.0, 1.0),
            Metric("step_accuracy", "recalls that reach the true associate", "right successor", 0.0, 1.0),
        ]

    def run(self, ctx: Context) -> None:
        memory = materialize(ctx[self.memory]).to(ctx.device)
        n = len(memory) if self.starts is None else min(self.starts, len(memory))
        starts = list(range(n))
        queries = memory[:n].clone()
        if self.start_noise > 0:
            noise = random.randn(queries.shape, ctx.rng(), device=queries.device)
            queries = (queries + math.sqrt(self.start_noise) * noise).clamp(0, 1)

        def nearest(x):
            return nearest_index(x, memory, ctx.budget)

        chains, outputs = follow(queries, starts, self._recall_fn(ctx, memory), nearest, self.steps, snap=(lambda i: memory[i]) if self.snap else None)
        ctx[self.output] = torch.tensor([c.visits for c in chains], device=ctx.device)
        cycles = distinct_cycles(chains)
        closed = [c for c in chains if c.period is not None]
        ctx.metric("cycles_found", len(cycles))
        ctx.metric("closed_chains", len(closed) / len(chains))
        ctx.metric("mean_period", sum(c.period for c in closed) / len(closed) if closed else float("nan"))
        truth = None
        if self.permutation is not None:
            permutation = ctx[self.permutation].cpu()
            truth = permutation_cycles(permutation)
            length = {m: len(c) for c in truth for m in c}
            closable = [c for c in chains if length[c.start] <= self.steps]
            ctx.metric("periods_match", sum(c.period == length[c.start] for c in closable) / max(len(closable), 1))
            reachable = {c for c in truth if any(m in set(starts) for m in c) and len(c) <= self.steps}
            ctx.metric("cycles_match", float(set(cycles) == reachable))
            ctx.metric("step_accuracy", sum(c.visits[1] == int(permutation[c.start]) for c in chains) / len(chains))
        ctx.note(f"stories ({self.model} recall)", _cycle_table(cycles, truth))
        self._draw(ctx, chains, cycles, outputs)

    def _recall_fn(self, ctx: Context, memory):
        if self.model == "network":
            network = ctx[self.network]
            if not isinstance(network, HeteroEncoder):
                raise StageError(f"{self.network!r} is not a hetero-encoder (it is a {type(network).__name__})")
            return network.recall
        values = materialize(ctx[self.values]).to(ctx.device)
        sim, separation = self.made("similarity"), self.made("separation")
        return lambda x: recall(x, memory, values, similarity=sim, separation=separation, budget=ctx.budget).output

    def _draw(self, ctx: Context, chains, cycles, outputs) -> None:
        drawn = 0
        for cycle, members in cycles.items():
            if drawn >= self.stories:
                break
            row = next(i for i, c in enumerate(chains) if c.start == members[0])
            frames = torch.stack([out[row] for out in outputs[:20]])
            halves = [(f"steps {1 + 10 * k}-{min(10 * (k + 1), len(frames))}", frames[10 * k : 10 * (k + 1)]) for k in range((len(frames) + 9) // 10)]
            from amemctl.figures import image_grid  # matplotlib loads only when a figure is drawn
            image_grid(halves[:2], ctx.figure_path(f"story-{self.model}-{drawn + 1}"), title=ctx.figure_title(f"story from memory {members[0]} ({self.model} recall): period {len(cycle)}"))
            drawn += 1


def _cycle_table(cycles: dict, truth: list | None) -> str:
    lines = ["| cycle | period | chains reaching it | in the permutation |", "|---|---:|---|---|"]
    expected = set(truth or [])
    for cycle, members in sorted(cycles.items(), key=lambda kv: (-len(kv[0]), kv[0])):
        shown = " -> ".join(map(str, cycle[:12])) + (" -> ..." if len(cycle) > 12 else "")
        starts = ", ".join(map(str, members[:10])) + (f" (+{len(members) - 10})" if len(members) > 10 else "")
        lines.append(f"| {shown} | {len(cycle)} | {starts} | {'yes' if cycle in expected else 'no' if truth else '-'} |")
    if not cycles:
        lines.append("| (no chain closed within the steps) | | | |")
    return "\n".join(lines)


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Associate, TrainHeteroEncoder, ChainRecall]
