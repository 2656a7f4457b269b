"""Stages `embed` (phi) and `train-simclr`: the feature space of semantic memories."""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path

import torch

from amemctl.context import Context
from amemctl.errors import StageError
from amemctl.functions import EncoderArchitecture
from amemctl.models import pretrained as shipped_encoders
from amemctl.models.encoders import (
    ARCHITECTURES,
    NORMALIZATIONS,
    Encoder,
    Preprocessing,
    build,
    checkpoint_encoder,
    random_encoder,
    torchvision_encoder,
)
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Metric, Output, Param, ParamError, Stage
from amemctl.training.checkpoints import Progress, default_folder
from amemctl.training.simclr import SimCLRConfig, data_sha256, train_simclr


def pretrained_names() -> list[str]:
    return shipped_encoders.names()


class Embed(Stage):
    """Embed images with an encoder phi: a trained one from the pipeline, a shipped one, a checkpoint, torchvision weights, or random.

    With `store:`, the stored patterns of that store are embedded instead of a context tensor,
    and the embeddings are kept in the store under the encoder's key space: a later run with
    the same encoder and the same stored patterns reads them back instead of recomputing.
    """

    name = "embed"
    encoder = Input(None, "an encoder made earlier in the pipeline (train-simclr's, or train-autoencoder's phi)", optional=True)
    pretrained = Param(str, None, "an encoder shipped with amemctl, by name (no download; its file is checked against its sha256)", choices=pretrained_names)
    checkpoint = Param(str, None, "a local checkpoint: an amemctl encoder, or a plain state dict (then give arch)", reads="file")
    weights = Param(str, None, "torchvision weights of arch, e.g. IMAGENET1K_V1 (downloaded once, then cached)")
    arch = Param(str, None, "architecture: a built-in one or a plugin's encoder (default resnet18; amemctl checkpoints know their own)")
    seed = Param(int, 0, "seed of a random encoder (used when no encoder, checkpoint or weights is given)")
    cifar_stem = Param(bool, None, "3x3 first convolution, no max-pool, as SimCLR for 32x32 images (default: true, false for torchvision weights)")
    normalize = Param(str, None, "per-channel normalisation (default cifar10; imagenet for torchvision weights)", choices=list(NORMALIZATIONS))
    resize = Param(int, None, "resize images to this square size first", min=1)
    batch_size = Param(int, 256, "images per forward pass", min=1)
    amp = Param(bool, None, "bfloat16 autocast (default: on GPUs)")
    unit = Param(bool, False, "scale each embedding to unit length: SimCLR trains directions only, so a view's length (shorter for zoomed crops) otherwise sways L1 and L2 scores")
    store = Param(str, None, "embed this store's patterns, keeping the keys in it for reuse", reads="store")
    input = Input("patterns", "the images to embed (ignored with `store:`)", optional=True)
    output = Output("embeddings", "the embeddings, N x dim")

    dispatch = {"arch": "encoders"}

    def inputs(self) -> list[str]:
        names = [n for n in super().inputs() if not (self.store and n == self.input)]
        return names

    def check(self) -> None:
        sources = [k for k in ("encoder", "pretrained", "checkpoint", "weights") if self.settings[k] is not None]
        if len(sources) > 1:
            raise ParamError(f"embed takes one encoder source, got {' and '.join(sources)}", hint="give encoder, pretrained, checkpoint or weights, not several", param=sources[1], about="key")
        if self.weights is not None and self._plugin_architecture() is not None:
            raise ParamError(f"torchvision weights exist only for the built-in architectures, not {self.arch!r}", hint="give a checkpoint, or leave weights out for a seeded random encoder", param="weights", about="key")

    def _plugin_architecture(self):
        """The chosen encoder architecture when it is not one of models/encoders.py's (a plugin's), else None."""
        if self.arch is None or self.arch in ARCHITECTURES:
            return None
        chosen, options = self.chosen("arch"), self.options["arch"]
        build = lambda cifar_stem: chosen(cifar_stem, **options)  # noqa: E731
        build.width = chosen.width
        return build

    def describe(self) -> str:
        return f"embed {self.input if not self.store else self.store}"

    def phi(self, ctx: Context) -> Encoder:
        if self.encoder is not None:
            encoder = ctx[self.encoder]
            if not (hasattr(encoder, "embed") and hasattr(encoder, "identity")):
                raise StageError(f"{self.encoder!r} is not an encoder (it is a {type(encoder).__name__})", hint="wire `encoder:` to the output of train-simclr or train-autoencoder")
            return encoder
        if self.pretrained is not None:
            phi = shipped_encoders.load(self.pretrained)
            if self.normalize or self.resize:
                phi.preprocessing = Preprocessing(self.normalize or phi.preprocessing.normalize, self.resize)
            return phi
        preprocessing = Preprocessing(self.normalize or ("imagenet" if self.weights else "cifar10"), self.resize)
        if self.checkpoint is not None:
            explicit = Preprocessing(self.normalize, self.resize) if self.normalize else None
            return checkpoint_encoder(self.checkpoint, self.arch, self.cifar_stem, explicit, self._plugin_architecture())
        arch = self.arch or "resnet18"
        if self.weights is not None:
            return torchvision_encoder(arch, self.weights, preprocessing)
        return random_encoder(arch, True if self.cifar_stem is None else self.cifar_stem, preprocessing, self.seed, self._plugin_architecture())

    def run(self, ctx: Context) -> None:
        phi = self.phi(ctx)
        if self.store is None:
            self._keep(ctx, self._embed(phi, ctx[self.input], ctx), phi.identity())
            return
        from amemctl.store.memory import MemoryStore

        store = MemoryStore.open(self.store, mode="a" if ctx.writer else "r")
        patterns = store.read("patterns")
        identity = {**phi.identity(), "inputs_sha256": hashlib.sha256(patterns.numpy().tobytes()).hexdigest()}
        space = phi.space()
        if store.spaces.get(space) == identity:
            ctx.metric("embeddings_reused", 1)
        else:
            keys = self._embed(phi, patterns, ctx)  # every rank embeds its shard; rank 0 writes them all
            if ctx.writer:
                store.add_space(space, keys, identity)
            ctx.barrier()  # other ranks read the keys rank 0 wrote
            store = MemoryStore.open(self.store)
            ctx.metric("embeddings_reused", 0)
        self._keep(ctx, store.rows(f"keys/{space}", ctx.device), identity)

    def _keep(self, ctx: Context, embeddings, identity: dict) -> None:
        """The output and its identity; with `unit`, each row scaled to length 1 as it is read (the store keeps phi's own)."""
        if self.unit:
            from amemctl.core.rows import RowwiseRows

            if isinstance(embeddings, torch.Tensor):
                embeddings = _unit_length(embeddings)
            else:  # stored keys stay streamed
                embeddings = RowwiseRows(embeddings, _unit_length)
            identity = {**identity, "unit": True}
        ctx[self.output] = embeddings
        ctx.identities[self.output] = identity

    def metrics(self) -> list[Metric]:
        return [Metric("embeddings_reused", "embeddings read from the store (1) rather than computed (0)", "reused", 0.0, 1.0)] if self.store else []

    def _embed(self, phi: Encoder, images, ctx: Context):
        def run(part):
            return phi.embed(part, ctx.device, self.batch_size, self.amp, ctx.track)

        if ctx.distributed:  # each rank embeds its own rows, then every rank gathers all of them
            from amemctl.core.distributed import embed_sharded

            return embed_sharded(run, images, ctx.group)
        return run(images)


class TrainSimCLR(Stage):
    """Train a SimCLR encoder on images (NT-Xent, the SimCLR augmentations); checkpoints as it goes (every 30 s), resumes."""

    name = "train-simclr"
    arch = Param(str, "resnet18", "the encoder's architecture", choices=list(ARCHITECTURES))
    cifar_stem = Param(bool, True, "3x3 first convolution without max-pool (for 32x32 images)")
    epochs = Param(int, 100, "passes over the images", min=0)
    batch_size = Param(int, 256, "images per step (each gives two views)", min=2)
    lr = Param(float, 3e-4, "learning rate", min=0)
    weight_decay = Param(float, 1e-4, "weight decay", min=0)
    temperature = Param(float, 0.5, "NT-Xent temperature", above=0)
    projection_dim = Param(int, 128, "width of the projection head's output", min=1)
    optimizer = Param(str, "adam", "adam, or lars (layer-wise adaptive rates)", choices=["adam", "lars"])
    crop_scale = Param(list, [0.08, 1.0], "random resized crop: range of the area fraction kept", items=float)
    jitter = Param(float, 0.5, "colour jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s, p=0.8)", min=0, max=1)
    grayscale = Param(float, 0.2, "probability of a grey view", min=0, max=1)
    blur = Param(bool, False, "also blur views (p=0.5)")
    rotations = Param(float, 0.0, "probability of turning a view by a right angle (SimCLR's rotation augmentation; 0 = off)", min=0, max=1)
    filters = Param(float, 0.0, "strength of random per-channel gains on views (colour filters; 0 = off)", min=0, max=1)
    erase = Param(float, 0.0, "probability of replacing a random rectangle (2-50% of a view) by noise (random erasing; 0 = off)", min=0, max=1)
    noise = Param(float, 0.0, "largest std of Gaussian noise added to half the views (0 = off)", min=0, max=1)
    normalize = Param(str, "cifar10", "per-channel normalisation of the encoder's input", choices=list(NORMALIZATIONS))
    amp = Param(bool, None, "bfloat16 autocast (default: on GPUs)")
    checkpoints = Param(str, None, "folder of the epoch checkpoints (default: <pipeline>-simclr-<config hash> in $AMEMCTL_CHECKPOINTS, else in checkpoints/); training resumes from it", writes="folder")
    input = Input("patterns", "the training images")
    output = Output("encoder", "the trained encoder, for `embed`")

    def check(self) -> None:
        scale = self.crop_scale
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ParamError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {scale}", param="crop_scale")

    def config(self, seed: int) -> SimCLRConfig:
        return SimCLRConfig(
            arch=self.arch,
            cifar_stem=self.cifar_stem,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            temperature=self.temperature,
            projection_dim=self.projection_dim,
            optimizer=self.optimizer,
            crop_scale=(float(self.crop_scale[0]), float(self.crop_scale[1])),
            jitter=self.jitter,
            grayscale=self.grayscale,
            blur=self.blur,
            normalize=self.normalize,
            seed=seed,
            rotations=self.rotations,
            filters=self.filters,
            erase=self.erase,
            noise=self.noise,
        )

    def describe(self) -> str:
        return f"train-simclr {self.arch} x{self.epochs}"

    def run(self, ctx: Context) -> None:
        from amemctl.core.rows import materialize

        images = materialize(ctx[self.input])
        if images.dim() != 4:
            raise StageError(f"train-simclr needs images N x C x H x W, got {tuple(images.shape)}")
        config = self.config(ctx.stage_seed % 2**31)
        folder = Path(self.checkpoints) if self.checkpoints else default_folder() / f"{ctx.provenance.get('pipeline', 'run')}-simclr-{config.digest(data_sha256(images))}"
        trained = train_simclr(images, config, folder, ctx.device, amp=self.amp, progress=Progress.of(ctx))
        ctx[self.output] = trained.encoder
        ctx.identities[self.output] = trained.encoder.identity()
        if trained.losses:
            ctx.metric("simclr_loss", trained.losses[-1])
            ctx.metric("simclr_loss_first", trained.losses[0])
            from amemctl.figures import curves  # matplotlib loads only when a figure is drawn
            curves({"NT-Xent": (list(range(1, len(trained.losses) + 1)), trained.losses)}, ctx.figure_path("simclr-loss"), title=f"SimCLR {self.arch}: training loss", xlabel="epoch", ylabel="loss")
        ctx.metric("simclr_epochs_resumed", trained.resumed_from)
        if trained.images_per_second is not None:
            ctx.metric("simclr_images_per_second", trained.images_per_second)
            ctx.metric("simclr_seconds_per_epoch", statistics.median(trained.epoch_seconds))

    def metrics(self) -> list[Metric]:
        return [
            Metric("simclr_loss", "SimCLR loss (NT-Xent) at the last epoch", "NT-Xent loss", 0.0),
            Metric("simclr_loss_first", "SimCLR loss (NT-Xent) at the first epoch", "NT-Xent loss", 0.0),
            Metric("simclr_epochs_resumed", "epochs read from a checkpoint rather than trained", "epochs resumed", 0.0),
            Metric("simclr_images_per_second", "SimCLR training speed, augmentations included", "images per second", 0.0),
            Metric("simclr_seconds_per_epoch", "seconds per SimCLR epoch (median)", "seconds per epoch", 0.0),
        ]



class KnnAccuracy(Stage):
    """How well embeddings separate classes: weighted kNN accuracy (Wu et al. 2018), leave-one-out without references."""

    name = "knn-accuracy"
    k = Param(int, 200, "neighbours that vote", min=1)
    tau = Param(float, 0.1, "temperature of the votes' weights exp(similarity / tau)", above=0)
    embeddings = Input("embeddings", "the embeddings to classify")
    labels = Input("labels", "their labels")
    references = Input(None, "embeddings of labelled references (default: the embeddings themselves, each leaving itself out)", optional=True)
    reference_labels = Input(None, "the references' labels", optional=True)

    def check(self) -> None:
        if (self.references is None) != (self.reference_labels is None):
            raise ParamError("references and reference_labels go together", hint="give both, or neither for leave-one-out", param="references", about="key")

    def metrics(self) -> list[Metric]:
        return [Metric("knn_accuracy", "weighted kNN accuracy of the embeddings' labels", "kNN accuracy", 0.0, 1.0)]

    def run(self, ctx: Context) -> None:
        from amemctl.core.knn import knn_accuracy
        from amemctl.core.rows import materialize

        embeddings, labels = materialize(ctx[self.embeddings]), materialize(ctx[self.labels])
        if len(embeddings) != len(labels):
            raise StageError(f"{len(embeddings)} embeddings but {len(labels)} labels", hint="embed the images the labels belong to")
        references = materialize(ctx[self.references]) if self.references else None
        reference_labels = materialize(ctx[self.reference_labels]) if self.reference_labels else None
        ctx.metric("knn_accuracy", knn_accuracy(embeddings.reshape(len(embeddings), -1), labels, references, reference_labels, self.k, self.tau, budget=ctx.budget))


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Embed, TrainSimCLR, KnnAccuracy]


_ENCODER_DOCS = {
    "small": "a small ResNet (4 stages of one block; fast on the CPU)",
    "wide_resnet50_2": "torchvision's wide ResNet-50-2",
    "wide_resnet101_2": "torchvision's wide ResNet-101-2",
}


def _builtin_encoder(arch: str, width: int) -> EncoderArchitecture:
    return EncoderArchitecture(arch, lambda cifar_stem: build(arch, cifar_stem), width, doc=_ENCODER_DOCS.get(arch, f"torchvision's {arch}") + f", without its classifier: {width} features")


@hookimpl
def amemctl_register_encoders() -> list[EncoderArchitecture]:
    return [_builtin_encoder(arch, width) for arch, width in ARCHITECTURES.items()]


def _unit_length(rows: torch.Tensor) -> torch.Tensor:
    """Each row (n x ...) scaled to length 1."""
    return torch.nn.functional.normalize(rows.reshape(len(rows), -1), dim=-1).reshape(rows.shape)
