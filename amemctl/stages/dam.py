"""Stage `train-dam`: dense associative memories trained to classify (Krotov & Hopfield 2016)."""

from __future__ import annotations

from amemctl.context import Context
from amemctl.core.rows import materialize
from amemctl.errors import StageError
from amemctl.models.dam import accuracy
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Metric, Output, Param, Stage
from amemctl.training.checkpoints import Checkpointing, default_folder
from amemctl.training.dam import train_dam


class TrainDAM(Stage):
    """Train K memories of a dense associative memory (rectified polynomial energy of order n) to classify images.

    Records train and test accuracy, and shows the learned memories (their visible parts)
    in figures/memories.png: features at low n, prototypes at high n. Training saves its
    state to checkpoints/<pipeline>-dam-<hash>.pt as it goes and resumes from there when run
    again with the same settings and data.
    """

    name = "train-dam"
    n = Param(float, 3, "order of the energy F(x) = max(x, 0)^n", min=1)
    memories = Param(int, 100, "number of memories K (hidden units)", min=1)
    rectified = Param(bool, True, "F = max(x, 0)^n; false gives x^n")
    temperature = Param(float, None, "T of F(b / T), beta = 1/T^n (default: the 99th percentile of the initial inputs)", above=0)
    temperature_final = Param(float, None, "T reached after `ramp` epochs, linearly (default: no ramp)", above=0)
    ramp = Param(int, 0, "epochs of the linear temperature ramp (the authors' thresh_pret)", min=0)
    power = Param(int, 1, "m of the loss sum (c - t)^(2m); larger focuses on misclassified images (the authors: 30)", min=1)
    epochs = Param(int, 100, "passes over the training images", min=0)
    batch_size = Param(int, 100, "images per step; each epoch takes only full minibatches, like the authors' code", min=1)
    lr = Param(float, 2e-2, "initial learning rate eps0: the largest change of a memory's entry in one step", min=0)
    decay = Param(float, 0.998, "the learning rate's factor per epoch (the authors' f)", min=0)
    momentum = Param(float, 0.6, "momentum p of the velocity that each step normalises per memory", min=0)
    double = Param(bool, False, "compute in float64, the authors' numpy precision (slower; m = 30 underflows float32)")
    shown = Param(int, 24, "memories drawn in figures/memories.png", min=0)
    input = Input("patterns", "training images")
    labels = Input("labels", "their labels, 0 .. C-1")
    test = Input(None, "test images", optional=True)
    test_labels = Input(None, "their labels", optional=True)
    output = Output("dam", "the trained model")

    def metrics(self) -> list[Metric]:
        return [
            Metric("dam_train_accuracy", "training accuracy", "training accuracy", 0.0, 1.0),
            Metric("dam_test_accuracy", "test accuracy", "test accuracy", 0.0, 1.0),
            Metric("dam_loss", "training loss at the last epoch", "loss", 0.0),
        ]

    def describe(self) -> str:
        return f"train-dam n={self.n:g}"

    def run(self, ctx: Context) -> None:
        images, labels = materialize(ctx[self.input]), ctx[self.labels].long()
        if len(images) != len(labels):
            raise StageError(f"{len(images)} images but {len(labels)} labels")
        classes = int(labels.max()) + 1
        seed = ctx.stage_seed % 2**31
        config = {k: self.settings[k] for k in ("n", "memories", "rectified", "temperature", "temperature_final", "ramp", "power", "epochs", "batch_size", "lr", "decay", "momentum", "double")}
        checkpointing = Checkpointing.for_stage(ctx, default_folder(), f"{ctx.provenance.get('pipeline', 'run')}-dam", {**config, "seed": seed}, images, labels)
        model, losses = train_dam(
            images, labels, classes, memories=self.memories, n=self.n, temperature=self.temperature, temperature_final=self.temperature_final,
            ramp=self.ramp, rectified=self.rectified, power=self.power, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            decay=self.decay, momentum=self.momentum, double=self.double, seed=seed, device=ctx.device, checkpointing=checkpointing,
        )
        ctx[self.output] = model
        ctx.metric("dam_train_accuracy", accuracy(model, images, labels))
        if losses:
            ctx.metric("dam_loss", losses[-1])
        if self.test is not None and self.test_labels is not None:
            ctx.metric("dam_test_accuracy", accuracy(model, materialize(ctx[self.test]), ctx[self.test_labels].long()))
        if self.shown:
            pictures = model.memories()[: self.shown].reshape(-1, *images.shape[1:])
            ctx.show("memories", f"n={self.n:g}", (pictures + 1) / 2)


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [TrainDAM]
