"""The hetero-encoder of the stories article: image -> dense code -> the associated image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from amemctl.errors import StageError


class HeteroEncoderNet(nn.Module):
    """Small conv encoder -> dense code (1024) -> dense -> transposed-conv decoder to the input's shape."""

    def __init__(self, shape: tuple[int, int, int], code: int = 1024, width: int = 32) -> None:
        super().__init__()
        channels, h, w = shape
        if h % 4 or w % 4:
            raise StageError(f"the hetero-encoder needs sides divisible by 4, got {h}x{w}", hint="resize the images (load: {size: 32})")
        flat = 2 * width * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(flat, code), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.Linear(code, flat),
            nn.ReLU(),
            nn.Unflatten(1, (2 * width, h // 4, w // 4)),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


@dataclass
class HeteroEncoder:
    """A trained recall model: recall(images) -> the images it associates with them."""

    net: HeteroEncoderNet
    shape: tuple[int, int, int]

    @torch.no_grad()
    def recall(self, images: Tensor, batch_size: int = 512) -> Tensor:
        if tuple(images.shape[1:]) != tuple(self.shape):
            raise StageError(f"the hetero-encoder takes images shaped {self.shape}, got {tuple(images.shape[1:])}")
        net = self.net.to(images.device).eval()
        return torch.cat([net(images[s : s + batch_size].float()) for s in range(0, len(images), batch_size)])
