"""Stages `train-autoencoder` and `generate` (psi): fully semantic memories store only embeddings."""

from __future__ import annotations

from pathlib import Path

from amemctl.context import Context
from amemctl.core.rows import materialize
from amemctl.errors import StageError
from amemctl.models.autoencoders import Autoencoder, load_autoencoder
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Metric, Output, Param, Stage
from amemctl.training.autoencoder import train_autoencoder
from amemctl.training.checkpoints import Checkpointing, default_folder


class TrainAutoencoder(Stage):
    """Train an autoencoder whose encoder is phi and decoder psi (saved together as one checkpoint).

    The defaults are the paper's MLP for 28x28 images: 784-64-32-16-12 and its mirror, ReLU,
    Adam with learning rate 1e-3, batches of 250 (it trains 300 epochs). `kind: conv` is a
    small convolutional autoencoder for colour images. Training saves its state beside the
    checkpoint (<checkpoint stem>-training-<hash>.pt) as it goes and resumes from there when
    run again with the same settings and data.
    """

    name = "train-autoencoder"
    kind = Param(str, "mlp", "mlp (the paper's) or conv (colour images)", choices=["mlp", "conv"])
    hidden = Param(list, [64, 32, 16], "hidden widths (mlp) or the two channel counts (conv)", items=int)
    code = Param(int, 12, "width of the embedding", min=1)
    epochs = Param(int, 300, "passes over the images", min=0)
    batch_size = Param(int, 250, "images per step", min=1)
    lr = Param(float, 1e-3, "Adam learning rate", min=0)
    checkpoint = Param(str, None, "where to save phi and psi (default: <pipeline>-autoencoder.pt in $AMEMCTL_CHECKPOINTS, else in checkpoints/)", writes="file")
    input = Input("patterns", "the training images")
    output = Output("autoencoder", "phi and psi, for `embed` (encoder:) and `generate` (decoder:)")

    def describe(self) -> str:
        return f"train-autoencoder {self.kind} x{self.epochs}"

    def run(self, ctx: Context) -> None:
        images = materialize(ctx[self.input])
        path = Path(self.checkpoint) if self.checkpoint else default_folder() / f"{ctx.provenance.get('pipeline', 'run')}-autoencoder.pt"
        seed = ctx.stage_seed % 2**31
        config = {k: self.settings[k] for k in ("kind", "hidden", "code", "epochs", "batch_size", "lr")}
        checkpointing = Checkpointing.for_stage(ctx, path.parent, f"{path.stem}-training", {**config, "seed": seed}, images)
        model, losses = train_autoencoder(
            images, kind=self.kind, hidden=list(self.hidden), code=self.code, epochs=self.epochs, batch_size=self.batch_size,
            lr=self.lr, seed=seed, path=path, device=ctx.device, checkpointing=checkpointing,
        )
        ctx[self.output] = model
        ctx.identities[self.output] = model.identity()
        if losses:
            ctx.metric("reconstruction_mse", losses[-1])
            from amemctl.figures import curves  # matplotlib loads only when a figure is drawn
            curves({"reconstruction": (list(range(1, len(losses) + 1)), losses)}, ctx.figure_path("autoencoder-loss"), title=f"autoencoder ({self.kind}): training loss", xlabel="epoch", ylabel="mean squared error")

    def metrics(self) -> list[Metric]:
        return [Metric("reconstruction_mse", "reconstruction error (mean squared)", "reconstruction MSE", 0.0)]


class Generate(Stage):
    """Decode embeddings into images with psi, the autoencoder's decoder."""

    name = "generate"
    decoder = Input("autoencoder", "an autoencoder (train-autoencoder's output)", optional=True)
    checkpoint = Param(str, None, "an autoencoder checkpoint instead of `decoder`", reads="file")
    input = Input("retrieved", "the embeddings to decode, N x code")
    output = Output("generated", "the decoded images")

    def inputs(self) -> list[str]:
        names = super().inputs()  # with a checkpoint, no decoder is wired from the context
        return [n for n in names if n != self.decoder] if self.checkpoint is not None else names

    def run(self, ctx: Context) -> None:
        if self.checkpoint is not None:
            model = load_autoencoder(self.checkpoint)
        elif self.decoder is not None:
            model = ctx[self.decoder]
        else:
            raise StageError("generate needs a decoder", hint="wire `decoder:` to an autoencoder, or give `checkpoint:`")
        if not isinstance(model, Autoencoder):
            raise StageError(f"{self.decoder!r} is not an autoencoder (it is a {type(model).__name__})", hint="wire `decoder:` to train-autoencoder's output")
        ctx[self.output] = model.decode(materialize(ctx[self.input]), ctx.device)


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [TrainAutoencoder, Generate]
