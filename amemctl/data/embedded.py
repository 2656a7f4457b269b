"""Real data that ships inside installed packages, for offline runs and tests."""

from __future__ import annotations

import torch

from amemctl.data.datasets import Loaded, Request


def read_digits(request: Request) -> Loaded:
    """scikit-learn's 1,797 handwritten digits, 8 x 8 grey levels 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    return Loaded(images.contiguous(), labels)
