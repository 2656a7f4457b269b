"""SimCLR (Chen et al. 2020): a contrastively trained encoder, the phi of semantic memories.

Two augmented views of each image are pulled together and pushed from the other images of
the batch by the NT-Xent loss; the encoder (without its projection head) becomes phi.
Defaults follow Salvatori et al.'s setup: Adam, learning rate 3e-4, weight decay 1e-4, batch
256, temperature 0.5, the CIFAR augmentations (random resized crop, flip, colour jitter of
strength 0.5 with p=0.8, grayscale with p=0.2; blur optional). LARS is available.

Training writes a checkpoint (at most every 30 s, and after the last epoch) into its folder and resumes from the latest one
whose configuration and data match; an encoder that already finished is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amemctl.core import random
from amemctl.models.encoders import ARCHITECTURES, Encoder, Preprocessing, build, save_atomically, save_encoder
from amemctl.models.tensor_files import load_tensors
from amemctl.training.augment import ViewSpec, views
from amemctl.training.checkpoints import Progress, Throttle

#: version 2: views made per batch on the device (training/augment.py); version-1 checkpoints are not resumed
CHECKPOINT_FORMAT = "amemctl-simclr-2"


#: augmentations added after checkpoint format 2: they enter a configuration's digest only when used
ADDED_LATER = ("erase", "noise")


def settings(config: dict) -> dict:
    """A configuration's fields as the code before ADDED_LATER wrote them: those only when used.

    The digest (the checkpoint folder) and the comparison with a checkpoint's saved
    configuration both go by it, so older checkpoints still resume.
    """
    return {k: v for k, v in config.items() if not (k in ADDED_LATER and v == 0)}


@dataclass(frozen=True)
class SimCLRConfig:
    """Everything that determines a SimCLR training run (its hash names the checkpoint folder)."""

    arch: str = "resnet18"
    cifar_stem: bool = True
    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-4
    temperature: float = 0.5
    projection_dim: int = 128
    optimizer: str = "adam"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: float = 0.5
    grayscale: float = 0.2
    blur: bool = False
    normalize: str = "cifar10"
    seed: int = 0
    rotations: float = 0.0  #: probability of turning a view by a right angle (SimCLR's rotation augmentation)
    filters: float = 0.0  #: strength of random per-channel gains (colour filters), 0 for none
    erase: float = 0.0  #: probability of erasing a random rectangle of a view (0 for none)
    noise: float = 0.0  #: largest std of Gaussian noise added to a view (0 for none)

    def digest(self, data_sha256: str) -> str:
        text = json.dumps({**settings(asdict(self)), "epochs": None, "data": data_sha256}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Trained:
    """The outcome of train_simclr: phi, the loss per epoch, and where training started."""

    encoder: Encoder
    losses: list[float]
    resumed_from: int
    folder: Path
    step_losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  #: wall time of each epoch trained by this call
    images: int = 0  #: training images (each seen as two views per epoch)

    @property
    def images_per_second(self) -> float | None:
        """Training throughput of this call, augmentation included (None when nothing was trained)."""
        return None if not self.epoch_seconds else self.images * len(self.epoch_seconds) / sum(self.epoch_seconds)


class SimCLR(nn.Module):
    """Encoder plus the projection head g (dim -> dim -> projection_dim) the loss is computed on."""

    def __init__(self, arch: str, cifar_stem: bool, projection_dim: int) -> None:
        super().__init__()
        dim = ARCHITECTURES[arch]
        self.encoder = build(arch, cifar_stem)
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, projection_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """The normalised temperature-scaled cross entropy of SimCLR over 2B views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    n = z1.shape[0]
    logits.fill_diagonal_(float("-inf"))
    # made on z's device: a CPU tensor copied there would wait for the GPU at every step
    targets = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
    return F.cross_entropy(logits, targets)


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) over SGD with momentum.

    Biases and normalisation parameters (1-D tensors) get neither weight decay nor adaptation,
    as in SimCLR.
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 1e-6, momentum: float = 0.9, trust: float = 1e-3) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust=trust))

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> Any:  # noqa: D102
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w, g = p.norm(), grad.norm()
                    ratio = torch.where((w > 0) & (g > 0), group["trust"] * w / g, torch.ones_like(w))
                    grad = grad * ratio
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def view_spec(size: int, config: SimCLRConfig) -> ViewSpec:
    """The augmentations of a SimCLR configuration, for views of `size` x `size` pixels."""
    return ViewSpec(size, config.crop_scale, config.jitter, 0.8, config.grayscale, config.blur, config.filters, config.rotations, config.erase, config.noise)


def data_sha256(images: Tensor) -> str:
    return hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def train_simclr(
    images: Tensor,
    config: SimCLRConfig,
    folder: "str | Path",
    device: torch.device,
    *,
    amp: bool | None = None,
    progress: Progress = Progress(),
) -> Trained:
    """Train (or resume, or reuse) a SimCLR encoder on images N x C x H x W in [0, 1].

    A checkpoint is written after an epoch at most every `checkpoints.CHECKPOINT_SECONDS` and after the
    last one (`Throttle`): a model and its optimiser copied to the CPU and written every epoch
    (135 MB for a ResNet18, each second or two on a GPU) would cost more than the epoch.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    digest = data_sha256(images)
    preprocessing = Preprocessing(config.normalize)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SimCLR(config.arch, config.cifar_stem, config.projection_dim)
    model.to(device)
    optimizer = _optimizer(model, config)
    losses: list[float] = []
    step_losses: list[float] = []
    seconds: list[float] = []
    start = 0
    latest = _latest(folder, config, digest)
    if latest is not None:
        model.load_state_dict(latest["model"])
        optimizer.load_state_dict(latest["optimizer"])
        losses, step_losses, start = list(latest["losses"]), list(latest.get("step_losses", [])), int(latest["epoch"])
    resumed_from = start
    amp = device.type == "cuda" if amp is None else amp
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    spec = view_spec(images.shape[-1], config)
    source = _resident(images, device)
    n = len(images)
    batch = max(2, min(config.batch_size, n))
    throttle = Throttle()
    for epoch in progress.over(range(start, config.epochs), f"simclr {config.arch}"):
        model.train()
        began = time.perf_counter()
        order = random.randperm(n, torch.Generator().manual_seed(config.seed * 100_003 + epoch), device=source.device)  # moved once per epoch, not per step
        epoch_losses: list[Tensor] = []  # kept on the device: one synchronisation per epoch, not per step
        sizes: list[int] = []
        for step, begin in enumerate(range(0, n, batch)):
            index = order[begin : begin + batch]
            if len(index) < 2:
                continue
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 10_007 + step)
            originals = source[index].to(device, torch.float32, non_blocking=True)
            epoch_losses.append(train_step(model, optimizer, originals, spec, preprocessing, generator, config.temperature, amp))
            sizes.append(len(index))
        values = torch.stack(epoch_losses).tolist() if epoch_losses else []
        step_losses.extend(values)
        losses.append(sum(v * k for v, k in zip(values, sizes)) / max(sum(sizes), 1))
        seconds.append(time.perf_counter() - began)
        throttle(partial(_save_epoch, folder, model, optimizer, config, digest, epoch + 1, losses, step_losses), last=epoch + 1 == config.epochs)
        progress.report(epoch + 1, losses[-1])
    sha = save_encoder(model.encoder, folder / "encoder.pt", config.arch, config.cifar_stem, preprocessing, simclr=asdict(config), losses=losses)
    module = model.encoder.cpu().to(memory_format=torch.contiguous_format)
    encoder = Encoder(module, config.arch, config.cifar_stem, preprocessing, f"simclr:{folder}", sha)
    trained = Trained(encoder, losses, resumed_from, folder, step_losses, seconds, n)
    timing = {"epoch_seconds": seconds, "images_per_second": trained.images_per_second, "device": str(device)}
    (folder / "loss.json").write_text(json.dumps({"epoch_losses": losses, "step_losses": step_losses, **timing}) + "\n")
    return trained


def train_step(model: SimCLR, optimizer: torch.optim.Optimizer, originals: Tensor, spec: ViewSpec, preprocessing: Preprocessing, generator: torch.Generator, temperature: float, amp: bool) -> Tensor:
    """One step on a batch (on the model's device): two views of each image, NT-Xent, backward, the optimiser's step; the loss, on the device.

    Nothing in it waits for a GPU: the views' random parameters come from the CPU `generator`
    through pinned memory, and the loss stays on the device (train_simclr reads an epoch's at once).
    """
    device = originals.device
    x1, x2 = (_network_input(preprocessing(views(originals, spec, generator)), device) for _ in range(2))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        z1, z2 = model(x1), model(x2)
    # the loss in float32: inside autocast its z @ z.T would be rounded to bfloat16 again
    loss = nt_xent(z1.float(), z2.float(), temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _resident(images: Tensor, device: torch.device) -> Tensor:
    """The training images where batches are cut from: on the GPU when they fit in an eighth of it.

    Otherwise where they are: not pinned, since a batch cut from pinned images by indexing is
    an ordinary (pageable) tensor anyway, and images already on the GPU cannot be pinned.
    """
    if device.type == "cuda" and images.device.type != "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() * images.element_size() < free // 8:
            return images.to(device)
    return images


def _network_input(x: Tensor, device: torch.device) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _optimizer(model: nn.Module, config: SimCLRConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "lars":
        return LARS(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def _save_epoch(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: SimCLRConfig, digest: str, epoch: int, losses: list[float], step_losses: list[float]) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(config),
        "data_sha256": digest,
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "losses": losses,
        "step_losses": step_losses,
    }
    save_atomically(payload, folder / f"epoch-{epoch:04d}.pt")
    for old in sorted(folder.glob("epoch-*.pt"))[:-2]:
        old.unlink()


def _latest(folder: Path, config: SimCLRConfig, digest: str) -> dict | None:
    """The newest checkpoint of this configuration and data, if training had started before."""
    for path in sorted(folder.glob("epoch-*.pt"), reverse=True):
        try:
            payload = load_tensors(path)
        except Exception:  # a damaged file: fall back to the one before it
            continue
        saved = dict(payload.get("config", {}))
        saved["crop_scale"] = tuple(saved.get("crop_scale", ()))
        same = {k: v for k, v in settings(saved).items() if k != "epochs"} == {k: v for k, v in settings(asdict(config)).items() if k != "epochs"}
        if payload.get("format") == CHECKPOINT_FORMAT and same and payload.get("data_sha256") == digest and payload["epoch"] <= config.epochs:
            return payload
    return None
