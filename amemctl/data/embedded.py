"""Real data that ships inside installed packages, for offline runs and tests.

- `digits`: scikit-learn's 1,797 handwritten digits, 8x8.
- `patches32` / `patches96`: natural-image patches cut from scikit-image's bundled colour
  photographs, shaped like CIFAR-10 (3x32x32) and STL-10 (3x96x96) images, labelled by the
  photograph they come from. The patch list is deterministic: see `patch_grid`.
- `random`: random binary patterns (each pixel 0 or 1 with probability 1/2), the patterns the
  capacity theories of the classical memories assume; generated, not shipped.
"""

from __future__ import annotations

import numpy as np
import torch

from amemctl.core import random
from amemctl.data.datasets import Loaded, Request

#: The bundled colour photographs, in label order.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left")
#: patch size -> (stride, most patches kept per photograph)
GRIDS = {32: (32, 256), 96: (48, 48)}
#: Patches whose pixel standard deviation is below this are flat (sky, black background) and dropped.
MIN_STD = 0.05


#: The digits have no official split; these are the first 1,200 and the last 597.
DIGITS_TRAIN = 1200


def read_digits(request: Request) -> Loaded:
    """scikit-learn's 1,797 handwritten digits, 8 x 8 grey levels 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    part = {"all": slice(None), "train": slice(0, DIGITS_TRAIN), "test": slice(DIGITS_TRAIN, None)}[request.split]
    return Loaded(images[part].contiguous(), labels[part])


def photo(name: str) -> np.ndarray:
    """One bundled photograph as H x W x 3 uint8."""
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()[..., :3]


def patch_grid(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the candidate patches: a raster grid with the size's stride."""
    stride = GRIDS[size][0]
    return [(top, left) for top in range(0, height - size + 1, stride) for left in range(0, width - size + 1, stride)]


def read_patches(size: int) -> Loaded:
    """Patches of every photograph: grid corners, flat ones dropped, at most N per photo evenly spaced."""
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        img = torch.from_numpy(photo(name)).permute(2, 0, 1).float().div_(255)
        patches = [img[:, t : t + size, l : l + size] for t, l in patch_grid(img.shape[1], img.shape[2], size)]
        patches = [p for p in patches if p.std() >= MIN_STD]
        keep = GRIDS[size][1]
        if len(patches) > keep:
            picks = np.round(np.linspace(0, len(patches) - 1, keep)).astype(int)
            patches = [patches[i] for i in picks]
        images += patches
        labels += [label] * len(patches)
    return Loaded(torch.stack(images).contiguous(), torch.tensor(labels, dtype=torch.long))


#: How many patterns `random` holds, and the seed they are drawn with (the same set in every run).
RANDOM_COUNT = 4096
RANDOM_SEED = 0


def read_random(request: Request) -> Loaded:
    """4,096 random binary patterns, 1 x size x size (size 16 unless the request gives one), labelled by their row.

    A fixed set: a pipeline's `subset` draws its seeded choice of them, so repeats store
    different patterns (independent ones while they take a small part of the set).
    """
    side = request.size or 16
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    images = random.randint(0, 2, (RANDOM_COUNT, 1, side, side), generator).float()
    return Loaded(images, torch.arange(RANDOM_COUNT))
