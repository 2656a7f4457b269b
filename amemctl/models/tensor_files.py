"""Reading tensor files that torch.save wrote, without trusting their headers.

`torch.load(weights_only=True)` refuses pickled code but not size: a torch.save file is a zip,
and a 2 MB one whose entries are deflated can inflate to gigabytes before anything in it is
checked. torch.save stores its entries uncompressed, so the sizes the zip declares add up to
about the file's own size; a file whose entries declare much more is refused from its
directory, before anything is read.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

#: bytes the entries of a torch.save zip may declare beyond the file's own size (its headers)
SLACK = 1 << 20


class UnsafeTensorFile(ValueError):
    """A tensor file whose zip directory declares more data than the file holds."""


def load_tensors(path: "str | Path") -> Any:
    """torch.load(path) onto the CPU with weights_only=True, after checking the zip's declared sizes.

    Raises what torch.load raises for files it cannot read, and UnsafeTensorFile for one that
    would inflate; callers turn both into their own error naming the file. torch's warning
    about a plain pickle's protocol is silenced: such a file is loaded safely or refused, and
    the refusal is the caller's message, not a warning beside it.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            declared = sum(entry.file_size for entry in archive.infolist())
        size = path.stat().st_size
        if declared > 2 * size + SLACK:
            raise UnsafeTensorFile(f"its entries declare {declared:,} bytes in a file of {size:,} (torch.save stores them uncompressed)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)
