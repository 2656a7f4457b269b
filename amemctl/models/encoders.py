"""Encoders phi: torchvision ResNets (and a small ResNet) as image -> embedding functions.

An encoder carries its *identity*: architecture, stem, weights and their sha256, and
preprocessing. Stored keys are labelled with it, so a memory embedded by one encoder is
never queried through another (Salvatori et al., "Associative Memories in the Feature Space",
score in the space of a contrastively trained ResNet; SimCLR uses the CIFAR stem, a 3x3
first convolution without max-pooling, for 32x32 images).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from amemctl.atomic import replacing
from amemctl.core import random
from amemctl.errors import DataError, StageError
from amemctl.models.tensor_files import load_tensors

#: architecture -> embedding width
ARCHITECTURES = {
    "small": 256,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "wide_resnet50_2": 2048,
    "wide_resnet101_2": 2048,
}

NORMALIZATIONS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

ENCODER_FORMAT = "amemctl-encoder"


@dataclass(frozen=True)
class Preprocessing:
    """What happens to images before the network: resize, then per-channel normalisation."""

    normalize: str = "cifar10"
    resize: int | None = None

    def __call__(self, images: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as F

        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.resize is not None and tuple(images.shape[-2:]) != (self.resize, self.resize):
            images = F.resize(images, [self.resize, self.resize], antialias=True)
        # torchvision's F.normalize, to the bit, with its mean and std sent from pinned memory: its
        # own torch.as_tensor(..., device=) is a blocking copy that waits for the GPU on every call
        # (every view of every SimCLR step, every embedded batch)
        mean, std = (random.moved(torch.tensor(v, dtype=images.dtype), images.device).view(-1, 1, 1) for v in NORMALIZATIONS[self.normalize])
        return images.sub(mean).div_(std)

    def as_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "resize": self.resize}


def build(arch: str, cifar_stem: bool) -> nn.Module:
    """The backbone with its classifier removed: images -> embedding of ARCHITECTURES[arch] values."""
    if arch not in ARCHITECTURES:
        from amemctl.suggest import did_you_mean

        raise StageError(f"unknown encoder architecture {arch!r}", hint=did_you_mean(arch, ARCHITECTURES) or f"choose one of {', '.join(ARCHITECTURES)}")
    if arch == "small":
        return _small_resnet(cifar_stem)
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def _small_resnet(cifar_stem: bool) -> nn.Module:
    """Four torchvision BasicBlocks of 32, 64, 128 and 256 channels, each halving the resolution.

    About 16M multiply-adds for a 32x32 image, 35 times fewer than ResNet18 with the CIFAR
    stem: small enough to train with SimCLR on two CPU cores in minutes.
    """
    from torchvision.models.resnet import BasicBlock

    def stage(inp: int, out: int, stride: int) -> nn.Module:
        down = None if stride == 1 and inp == out else nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        return BasicBlock(inp, out, stride, down)

    stem = (
        [nn.Conv2d(3, 32, 3, 1, 1, bias=False)]
        if cifar_stem
        else [nn.Conv2d(3, 32, 7, 2, 3, bias=False)]
    )
    pool = [] if cifar_stem else [nn.MaxPool2d(3, 2, 1)]
    return nn.Sequential(
        *stem,
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        *pool,
        stage(32, 32, 2),
        stage(32, 64, 2),
        stage(64, 128, 2),
        stage(128, 256, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def min_size(arch: str, cifar_stem: bool) -> int:
    """The smallest image side the backbone still reduces to at least one pixel."""
    factor = 16 if arch == "small" else 8
    return factor if cifar_stem else factor * 4


@dataclass
class Encoder:
    """phi with its identity; `embed` maps images (N x C x H x W in [0, 1]) to N x dim embeddings."""

    module: nn.Module
    arch: str
    cifar_stem: bool
    preprocessing: Preprocessing
    weights: str  #: random(seed=...), torchvision:<enum>, checkpoint:<path>, simclr:<path>
    weights_sha256: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: the embedding width of an architecture that is not built in (a plugin's)
    width: int | None = None

    @property
    def dim(self) -> int:
        return self.width if self.width is not None else ARCHITECTURES[self.arch]

    def identity(self) -> dict[str, Any]:
        """What makes two embedding spaces the same: compared field by field against stored keys."""
        return {
            "architecture": self.arch,
            "cifar_stem": self.cifar_stem,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing.as_dict(),
            "dim": self.dim,
        }

    def space(self) -> str:
        """A key-space name: architecture and the first hex digits of the weights' sha256."""
        return f"{self.arch}-{self.weights_sha256[:8]}"

    @torch.no_grad()
    def embed(
        self,
        images: Any,
        device: torch.device,
        batch_size: int = 256,
        amp: bool | None = None,
        track: Callable[[Iterable, int, str], Iterable] | None = None,
    ) -> Tensor:
        """Embeddings of every image, in batches, on `device` (bfloat16 autocast on GPUs unless amp=False)."""
        from amemctl.core.rows import row_shape, take

        shape = row_shape(images)
        if len(shape) != 3:
            raise StageError(f"the encoder takes images N x C x H x W, got rows shaped {shape}", hint="embed images, not flattened patterns")
        side = min(shape[-2:]) if self.preprocessing.resize is None else self.preprocessing.resize
        if side < min_size(self.arch, self.cifar_stem):
            raise StageError(
                f"images of {shape[-2]}x{shape[-1]} are smaller than {self.arch} with the {'CIFAR' if self.cifar_stem else 'ImageNet'} stem accepts ({min_size(self.arch, self.cifar_stem)} px)",
                hint="use cifar_stem: true, or resize: 32 (or more)",
            )
        if shape[0] not in (1, 3):
            raise StageError(f"the encoder takes 1 or 3 channels, got {shape[0]}")
        module = self.module.to(device).eval()
        if device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        amp = device.type == "cuda" if amp is None else amp
        n = len(images)
        starts = range(0, n, batch_size)
        steps = track(starts, len(starts), f"embed {self.arch}") if track else starts
        out = torch.empty(n, self.dim, device=device)
        for start in steps:
            index = torch.arange(start, min(start + batch_size, n), device=images.device if isinstance(images, Tensor) else None)  # no H2D copy (a sync) per batch
            batch = self.preprocessing(take(images, index).to(device, torch.float32))
            if device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out[start : start + len(index)] = module(batch).float()
        return out


def state_sha256(state: dict[str, Tensor]) -> str:
    """sha256 over a state dict's names and values (for weights that come from no file)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: "str | Path") -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_encoder(arch: str, cifar_stem: bool, preprocessing: Preprocessing, seed: int = 0, architecture: Any = None) -> Encoder:
    """A randomly initialised encoder (tests, baselines); the seed fixes its weights and identity.

    `architecture` builds an architecture that is not built in: `architecture(cifar_stem)` is
    the module, `architecture.width` its embedding width (a plugin's EncoderArchitecture).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = architecture(cifar_stem) if architecture is not None else build(arch, cifar_stem)
    width = architecture.width if architecture is not None else None
    return Encoder(module, arch, cifar_stem, preprocessing, f"random(seed={seed})", state_sha256(module.state_dict()), width=width)


def torchvision_encoder(arch: str, weights: str, preprocessing: Preprocessing) -> Encoder:
    """An encoder with torchvision's published weights (downloaded once, then cached by torch)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)[weights]
    except (KeyError, ValueError):
        raise StageError(f"torchvision has no weights {weights!r} for {arch}", hint="e.g. IMAGENET1K_V1") from None
    try:
        state = enum.get_state_dict(progress=True)
    except Exception as exc:  # offline, or the download broke
        raise DataError(f"cannot fetch torchvision's {arch} weights {weights}: {exc}", hint="download them where you are online (they are cached in ~/.cache/torch), or give a local checkpoint") from None
    module = build(arch, cifar_stem=False)
    _load_state(module, {k: v for k, v in state.items() if not k.startswith("fc.")}, f"torchvision {arch} {weights}")
    return Encoder(module, arch, False, preprocessing, f"torchvision:{weights}", state_sha256(state))


def checkpoint_encoder(path: "str | Path", arch: str | None, cifar_stem: bool | None, preprocessing: Preprocessing | None, architecture: Any = None) -> Encoder:
    """An encoder from a local checkpoint: amemctl's own format, or a plain (torchvision-style) state dict.

    amemctl checkpoints carry their architecture, stem and preprocessing; for plain state
    dicts they come from the arguments. The file's sha256 is the weights' identity.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}", hint="give the path of a .pt file, e.g. one written by train-simclr")
    try:
        payload = load_tensors(path)
    except Exception as exc:  # not a zip/pickle torch file, or one holding arbitrary objects
        raise DataError(f"{path} is not a PyTorch tensor file that can be loaded safely: {type(exc).__name__}: {(str(exc).splitlines() or ['(no detail)'])[0][:200]}", hint="checkpoints are loaded with weights_only=True: save plain state dicts") from None
    if isinstance(payload, dict) and payload.get("format") == ENCODER_FORMAT:
        try:
            saved, cifar_stem = payload["arch"], bool(payload["cifar_stem"])
            preprocessing = preprocessing or Preprocessing(**payload["preprocessing"])
            state = payload["state_dict"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path} is an amemctl encoder checkpoint with damaged metadata ({type(exc).__name__}: {exc})", hint="write it again with train-simclr") from None
        if not isinstance(saved, str) or saved not in ARCHITECTURES or not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise DataError(f"{path} is an amemctl encoder checkpoint with damaged metadata (arch {saved!r} or its state dict)", hint="write it again with train-simclr")
        if arch is not None and arch != saved:
            raise DataError(f"{path} holds a {saved} encoder, not {arch}", hint=f"set arch: {saved}, or leave arch out")
        arch = saved
    else:
        state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise DataError(f"{path} holds no state dict of tensors", hint="save model.state_dict(), or an amemctl encoder checkpoint")
        if arch is None:
            raise DataError(f"{path} is a plain state dict: say which architecture it is for", hint=f"set arch: one of {', '.join(ARCHITECTURES)}")
        state = {k.removeprefix("module.").removeprefix("encoder.").removeprefix("backbone."): v for k, v in state.items() if not k.startswith(("fc.", "module.fc."))}
        cifar_stem = bool(cifar_stem) if cifar_stem is not None else state.get("conv1.weight", torch.empty(0, 0, 7)).shape[-1] == 3
    module = architecture(bool(cifar_stem)) if architecture is not None else build(arch, bool(cifar_stem))
    _load_state(module, state, str(path))
    width = architecture.width if architecture is not None else None
    return Encoder(module, arch, bool(cifar_stem), preprocessing or Preprocessing(), f"checkpoint:{path.name}", file_sha256(path), width=width)


def _load_state(module: nn.Module, state: dict[str, Tensor], what: str, assign: bool = True) -> None:
    """Load `state` into `module`, or (assign False) only check that every key and shape fits."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        if wrong:
            parts.append(f"wrong shapes: {', '.join(f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in wrong[:3])}")
        raise DataError(f"{what} does not fit this architecture: " + "; ".join(parts), hint="check arch and cifar_stem against how the checkpoint was trained")
    if assign:
        module.load_state_dict(state)


def save_atomically(payload: dict[str, Any], path: "str | Path") -> Path:
    """torch.save to a temporary name, then rename: a checkpoint is either whole or absent.

    A write the file system refuses (a full disk) is an OSError naming `path`, as any other
    write's, and a stop signal that arrives while it writes stops it as anywhere else: torch's
    writer would turn either into `RuntimeError: ... unexpected pos`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as file:
        sink = _Sink(file)
        try:
            torch.save(payload, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise
    return path


class _Sink:
    """A file torch.save writes to that keeps what stopped a write (an OSError, a stop signal's Interrupted), which torch's writer turns into a RuntimeError."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except BaseException as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def save_encoder(encoder_module: nn.Module, path: "str | Path", arch: str, cifar_stem: bool, preprocessing: Preprocessing, **extra: Any) -> str:
    """Write an amemctl encoder checkpoint atomically; returns its sha256 (the new identity)."""
    payload = {
        "format": ENCODER_FORMAT,
        "arch": arch,
        "cifar_stem": cifar_stem,
        "preprocessing": preprocessing.as_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in encoder_module.state_dict().items()},
        **extra,
    }
    return file_sha256(save_atomically(payload, path))
