"""Images in folders: one sub-folder per class (torchvision's ImageFolder), and Tiny ImageNet."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from amemctl.data.datasets import Loaded, Request
from amemctl.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: most pixels one image may have (8192 x 4096, a large photograph): a few kilobytes of PNG can
#: declare far more, and an image decodes in full before `size:` can shrink it
MAX_PIXELS = 1 << 25


def read_folder(request: Request) -> Loaded:
    """Every image under `folder` (default: the root), labelled by its class sub-folder, in sorted order.

    All images must share one size unless `size` resizes them (shorter side, then centre crop).
    """
    from torchvision.datasets import ImageFolder

    folder = Path(request.root)
    if not folder.is_dir():
        raise DataError(f"no image folder at {folder}", hint="give `root:` the folder whose sub-folders are the classes")
    try:
        dataset = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{folder} holds no class sub-folders with images: {exc}", hint="lay it out as <root>/<class>/<image>.png") from None
    return _stack([path for path, _ in dataset.samples], [label for _, label in dataset.samples], request.size, folder)


def read_tinyimagenet(request: Request) -> Loaded:
    """Tiny ImageNet (64x64, 200 classes) as distributed: train/<wnid>/images/*, val/ with val_annotations.txt."""
    base = request.root / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(
            f"Tiny ImageNet is not in {request.root}: missing tiny-imagenet-200/wnids.txt",
            hint=f"unzip tiny-imagenet-200.zip (from http://cs231n.stanford.edu/tiny-imagenet-200.zip) into {request.root}",
        )
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    if request.split == "train":
        paths, labels = [], []
        for w in wnids:
            for p in sorted((base / "train" / w / "images").glob("*")):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(str(p))
                    labels.append(index[w])
    else:
        annotations = base / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise DataError(f"missing {annotations}", hint="the val split needs val/val_annotations.txt from the original archive")
        rows = [line.split("\t") for line in annotations.read_text().splitlines() if line.strip()]
        paths = [str(base / "val" / "images" / r[0]) for r in rows]
        labels = [index[r[1]] for r in rows]
    return _stack(paths, labels, request.size, base)


def _stack(paths: list[str], labels: list[int], size: int | None, where: Path) -> Loaded:
    """The images as one N x 3 x H x W tensor, refused from their headers, before any decoding,
    when one is too large, their sizes differ without `size:`, or all of them would not fit in memory."""
    from torchvision.transforms.v2 import functional as F

    if not paths:
        raise DataError(f"no images found under {where}", hint=f"images need one of the suffixes {', '.join(IMAGE_SUFFIXES)}")
    sizes = [_size(path) for path in paths]
    if size is None and len(set(sizes)) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(set(sizes))[:3])
        raise DataError(f"images under {where} differ in size ({shown})", hint="set `size:` to resize them to one square size")
    needed = len(paths) * 3 * 4 * (size * size if size is not None else sizes[0][0] * sizes[0][1])
    if needed > _memory() // 2:
        raise DataError(
            f"the {len(paths):,} images under {where} take {needed / 2**30:.1f} GiB as float32, more than half of this machine's memory ({_memory() / 2**30:.1f} GiB)",
            hint="set `size:` smaller, or load fewer images (a sub-folder)",
        )
    images = torch.empty(len(paths), 3, *((size, size) if size is not None else sizes[0][::-1]))
    for i, path in enumerate(paths):
        t = read_image(path)
        images[i] = t if size is None else F.center_crop(F.resize(t, [size], antialias=True), [size, size]).clamp_(0, 1)
    return Loaded(images, torch.as_tensor(np.asarray(labels), dtype=torch.long))


def _size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header; more than MAX_PIXELS is a DataError naming the file."""
    try:
        width, height = _header_size(path)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports damaged files as these
        raise DataError(f"{path} is not a readable image: {exc}", hint="replace or remove the damaged file") from None
    if width * height > MAX_PIXELS:
        raise DataError(
            f"{path} is too large to load safely ({width}x{height} pixels, over the limit of {MAX_PIXELS:,})",
            hint="resize the image, or remove it from the folder",
        )
    return width, height


def _header_size(path: "str | Path") -> tuple[int, int]:
    """(width, height) as the file's header says, whatever PIL's decompression-bomb limit: nothing is decoded."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as img:
            return img.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def read_image(path: "str | Path") -> torch.Tensor:
    """One image file as a 3 x H x W float tensor in [0, 1].

    8-bit images keep their exact values (k/255); 16- and 32-bit greyscale ones are scaled by
    their bit depth rather than clipped to white. An image larger than PIL's decompression-bomb
    limit (Image.MAX_IMAGE_PIXELS), or one that does not decode, is a DataError naming the file.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                    grey = np.asarray(img)
                    depth = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and grey.max(initial=0) <= 65535) else max(1.0, float(grey.max(initial=1)))
                    scaled = torch.from_numpy(np.clip(grey / depth, 0, 1).astype(np.float32, copy=False))
                    return scaled.expand(3, *scaled.shape).clone()
                rgb = np.asarray(img.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"{path} is too large to load safely ({_pixels(path)}, over PIL's limit of {Image.MAX_IMAGE_PIXELS:,})",
            hint="resize the image, or remove it from the folder",
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports damaged files as these
        raise DataError(f"{path} is not a readable image: {exc}", hint="replace or remove the damaged file") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)


def _pixels(path: "str | Path") -> str:
    try:
        width, height = _header_size(path)
    except Exception:  # the size is only a courtesy
        return "too many pixels"
    return f"{width}x{height} pixels"
