"""Autoencoders: phi and psi of fully semantic memories, which store only embeddings.

mu = psi(project(separate(score(phi(M), phi(q))))): retrieval happens among the stored
embeddings and the decoder psi turns the retrieved embedding back into an image. The MLP is
the paper's for 28x28 images (784-64-32-16-12 and the mirrored decoder, ReLU); the
convolutional one is a small model for colour images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from amemctl.errors import DataError, StageError
from amemctl.models.encoders import file_sha256, save_atomically
from amemctl.models.tensor_files import load_tensors

AUTOENCODER_FORMAT = "amemctl-autoencoder"


def mlp(input_shape: tuple[int, ...], hidden: list[int], code: int) -> nn.Module:
    """Fully connected encoder and mirrored decoder with ReLUs; a sigmoid keeps outputs in [0, 1]."""
    width = math.prod(input_shape)
    sizes = [width, *hidden, code]
    encoder: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        encoder.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            encoder.append(nn.ReLU())
    decoder: list[nn.Module] = []
    back = sizes[::-1]
    for i, (a, b) in enumerate(zip(back, back[1:])):
        decoder.append(nn.Linear(a, b))
        decoder.append(nn.ReLU() if i < len(back) - 2 else nn.Sigmoid())
    decoder.append(nn.Unflatten(1, tuple(input_shape)))
    return _Pair(nn.Sequential(*encoder), nn.Sequential(*decoder))


def conv(input_shape: tuple[int, ...], hidden: list[int], code: int) -> nn.Module:
    """Two stride-2 convolutions (hidden[0], hidden[1] channels) to a dense code, and back."""
    channels, h, w = input_shape
    if h % 4 or w % 4:
        raise StageError(f"the convolutional autoencoder needs sides divisible by 4, got {h}x{w}", hint="resize the images (load: {size: ...}) or use kind: mlp")
    c1, c2 = (list(hidden) + [32, 64][len(hidden) :])[:2]
    flat = c2 * (h // 4) * (w // 4)
    encoder = nn.Sequential(
        nn.Conv2d(channels, c1, 4, 2, 1), nn.ReLU(), nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(flat, code)
    )
    decoder = nn.Sequential(
        nn.Linear(code, flat),
        nn.ReLU(),
        nn.Unflatten(1, (c2, h // 4, w // 4)),
        nn.ConvTranspose2d(c2, c1, 4, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(c1, channels, 4, 2, 1),
        nn.Sigmoid(),
    )
    return _Pair(encoder, decoder)


class _Pair(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


KINDS = {"mlp": mlp, "conv": conv}


@dataclass
class Autoencoder:
    """phi (embed) and psi (decode) with one identity: the checkpoint holding both."""

    module: nn.Module
    kind: str
    input_shape: tuple[int, ...]
    hidden: list[int]
    code: int
    weights_sha256: str

    @property
    def dim(self) -> int:
        return self.code

    def identity(self) -> dict[str, Any]:
        return {
            "architecture": f"autoencoder-{self.kind}",
            "layers": [math.prod(self.input_shape), *self.hidden, self.code],
            "input_shape": list(self.input_shape),
            "weights_sha256": self.weights_sha256,
            "dim": self.code,
        }

    def space(self) -> str:
        return f"ae-{self.kind}{self.code}-{self.weights_sha256[:8]}"

    @torch.no_grad()
    def embed(self, images: Any, device: torch.device, batch_size: int = 1024, amp: bool | None = None, track: Callable[[Iterable, int, str], Iterable] | None = None) -> Tensor:
        from amemctl.core.rows import row_shape, take

        if tuple(row_shape(images)) != tuple(self.input_shape):
            raise StageError(f"the autoencoder takes images shaped {tuple(self.input_shape)}, got {tuple(row_shape(images))}", hint="embed images like the ones it was trained on")
        encoder = self.module.encoder.to(device).eval()
        n = len(images)
        out = torch.empty(n, self.code, device=device)
        for start in range(0, n, batch_size):
            index = torch.arange(start, min(start + batch_size, n), device=images.device if isinstance(images, Tensor) else None)  # no H2D copy (a sync) per batch
            out[start : start + len(index)] = encoder(take(images, index).to(device, torch.float32))
        return out

    @torch.no_grad()
    def decode(self, codes: Tensor, device: torch.device, batch_size: int = 1024) -> Tensor:
        """psi: embeddings N x code -> images N x input_shape."""
        if codes.dim() != 2 or codes.shape[1] != self.code:
            raise StageError(f"the decoder takes N x {self.code} embeddings, got {tuple(codes.shape)}", hint="decode embeddings retrieved from this autoencoder's space")
        decoder = self.module.decoder.to(device).eval()
        return torch.cat([decoder(codes[s : s + batch_size].to(device, torch.float32)) for s in range(0, len(codes), batch_size)])


def build_autoencoder(kind: str, input_shape: tuple[int, ...], hidden: list[int], code: int, seed: int = 0) -> nn.Module:
    if kind not in KINDS:
        raise StageError(f"unknown autoencoder kind {kind!r}", hint="use mlp or conv")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return KINDS[kind](tuple(input_shape), list(hidden), code)


def save_autoencoder(module: nn.Module, path: "str | Path", kind: str, input_shape: tuple[int, ...], hidden: list[int], code: int, **extra: Any) -> str:
    """Write phi and psi into one checkpoint, atomically; returns its sha256."""
    payload = {
        "format": AUTOENCODER_FORMAT,
        "kind": kind,
        "input_shape": list(input_shape),
        "hidden": list(hidden),
        "code": code,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **extra,
    }
    return file_sha256(save_atomically(payload, path))


def load_autoencoder(path: "str | Path") -> Autoencoder:
    """The autoencoder in an amemctl checkpoint; its metadata is checked before anything is allocated."""
    from amemctl.models.encoders import _load_state

    path = Path(path)
    try:
        payload = load_tensors(path)
    except FileNotFoundError:
        raise DataError(f"no autoencoder checkpoint at {path}") from None
    except Exception as exc:
        raise DataError(f"{path} is not a tensor file that loads safely: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}", hint="write one with the train-autoencoder stage") from None
    if not isinstance(payload, dict) or payload.get("format") != AUTOENCODER_FORMAT:
        raise DataError(f"{path} is not an amemctl autoencoder checkpoint", hint="write one with the train-autoencoder stage")
    kind, input_shape, hidden, code = _metadata(payload, path)
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"{path} holds no state dict of tensors", hint="write one with the train-autoencoder stage")
    with torch.device("meta"):  # shapes only: metadata asking for a huge layer allocates nothing
        shapes = build_autoencoder(kind, input_shape, hidden, code)
    _load_state(shapes, state, str(path), assign=False)
    module = build_autoencoder(kind, input_shape, hidden, code)
    _load_state(module, state, str(path))
    return Autoencoder(module, kind, input_shape, hidden, code, file_sha256(path))


def _metadata(payload: dict, path: Path) -> tuple[str, tuple[int, ...], list[int], int]:
    """kind, input_shape, hidden and code from a checkpoint, each checked to be what it must be."""

    def positive_ints(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)

    kind, input_shape, hidden, code = (payload.get(k) for k in ("kind", "input_shape", "hidden", "code"))
    problems = []
    if kind not in KINDS:
        problems.append(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not positive_ints(input_shape) or not 1 <= len(input_shape) <= 4:
        problems.append(f"input_shape {input_shape!r} is not 1 to 4 positive integers")
    if not positive_ints(hidden):
        problems.append(f"hidden {hidden!r} is not a list of positive integers")
    if not (isinstance(code, int) and not isinstance(code, bool) and code > 0):
        problems.append(f"code {code!r} is not a positive integer")
    if problems:
        raise DataError(f"{path} has damaged metadata: {'; '.join(problems)}", hint="write the checkpoint again with the train-autoencoder stage")
    return kind, tuple(input_shape), list(hidden), code
