"""Encoders phi that ship inside the package, loaded by name with no download.

Each shipped encoder is an amemctl encoder checkpoint in `amemctl/weights/` (weights in
bfloat16 to keep the package small), a model card beside it (`NAME.md`: data, training,
loss, a kNN accuracy, its sha256) and an entry in `weights/index.json`, which records the
file's sha256. Loading checks the file against that sha256 before anything else, so a
damaged or swapped file is refused rather than silently giving another embedding space,
and loads it with `weights_only=True`. The sha256 is the encoder's identity in stores, as for
any checkpoint.

`ship` turns a trained encoder checkpoint (train-simclr's `encoder.pt`) into such an entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amemctl.errors import DataError
from amemctl.models.encoders import ENCODER_FORMAT, Encoder, checkpoint_encoder, file_sha256, save_atomically
from amemctl.models.tensor_files import load_tensors

#: where shipped encoders live: the package's own folder
WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
INDEX = "index.json"


@dataclass(frozen=True)
class Shipped:
    """One shipped encoder: its file (in the weights folder), sha256 and a one-line summary."""

    name: str
    file: str
    sha256: str
    arch: str
    summary: str


def shipped(folder: Path | None = None) -> dict[str, Shipped]:
    """Every encoder shipped in `folder` (default: the package's), by name."""
    path = (folder or WEIGHTS) / INDEX
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {name: Shipped(name, **entry) for name, entry in entries.items()}
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a valid index of shipped encoders: {exc}", hint="reinstall amemctl") from None


def names(folder: Path | None = None) -> list[str]:
    """The names `embed: {pretrained: NAME}` accepts."""
    return sorted(shipped(folder))


def load(name: str, folder: Path | None = None) -> Encoder:
    """The shipped encoder `name`, its file checked against the recorded sha256 first."""
    folder = folder or WEIGHTS
    entries = shipped(folder)
    if name not in entries:
        from amemctl.suggest import did_you_mean

        listed = ", ".join(sorted(entries)) or "none in this installation"
        raise DataError(f"no shipped encoder named {name!r}", hint=did_you_mean(name, entries) or f"shipped encoders: {listed}")
    entry = entries[name]
    path = folder / entry.file
    if not path.is_file():
        raise DataError(f"the shipped encoder {name!r} is missing its weights file {path}", hint="reinstall amemctl")
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise DataError(
            f"the shipped encoder file {path} is damaged or replaced: sha256 {actual[:12]}... instead of {entry.sha256[:12]}...",
            hint="reinstall amemctl; a changed encoder would embed into another space than stores made with it",
        )
    encoder = checkpoint_encoder(path, entry.arch, None, None)
    encoder.weights = f"pretrained:{name}"
    return encoder


def ship(checkpoint: "str | Path", name: str, summary: str, card: str, folder: Path | None = None) -> Shipped:
    """Add a trained encoder checkpoint to `folder` as `name`: weights in bfloat16, its card, its index entry."""
    folder = folder or WEIGHTS
    payload = load_tensors(checkpoint)
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise DataError(f"{checkpoint} is not an amemctl encoder checkpoint", hint="ship the encoder.pt that train-simclr writes")
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    compact: dict[str, Any] = {k: v for k, v in payload.items() if k not in ("state_dict", "losses")}
    compact["state_dict"] = state
    file = f"{name}.pt"
    sha = file_sha256(save_atomically(compact, folder / file))
    (folder / f"{name}.md").write_text(card.replace("{sha256}", sha))
    entries = {n: {k: v for k, v in vars(e).items() if k != "name"} for n, e in shipped(folder).items()}
    entries[name] = {"file": file, "sha256": sha, "arch": payload["arch"], "summary": summary}
    (folder / INDEX).write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return Shipped(name, file, sha, payload["arch"], summary)
