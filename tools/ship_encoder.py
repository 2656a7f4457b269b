"""Ship a trained encoder inside the package: bfloat16 weights, model card, index entry.

    python tools/ship_encoder.py RUN_DIR NAME --data "the 10,000 CIFAR-10 test images (JPEG, q=75)"

RUN_DIR is the run folder of a pipeline such as pipelines/phi_small_cifar10.yaml: its
metrics.json gives the kNN accuracy and the training loss, its resolved.yaml the
checkpoints folder of train-simclr, whose encoder.pt is shipped as amemctl/weights/NAME.pt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from amemctl.models import pretrained
from amemctl.models.encoders import ARCHITECTURES

CARD = """# {name}

A phi for semantic memories that ships with amemctl: `embed: {{pretrained: {name}}}`.

| | |
| --- | --- |
| architecture | {arch} ({dim}-d embedding), CIFAR stem: {cifar_stem} |
| trained with | SimCLR (NT-Xent), {epochs} epochs, batch {batch_size}, {optimizer} lr {lr}, temperature {temperature} |
| augmentations | random resized crop {crop_scale}, flip, colour jitter {jitter} (p=0.8), grey p={grayscale}, rotations p={rotations}, colour filters {filters}, random erasing p={erase}, Gaussian noise std up to {noise} (p=0.5) |
| data | {data}; no labels were used in training |
| final loss | {loss:.4f} (first epoch {first_loss:.4f}) |
| kNN accuracy | {knn} (weighted kNN, k=200, tau=0.1, on the CIFAR-10 labels of the training images, leave-one-out) |
| trained on | {device}, {seconds} ({per_epoch}) |
| preprocessing | normalisation {normalize} |
| weights | bfloat16, sha256 `{{sha256}}` (checked every time the encoder is loaded) |

Made by `{command}` (amemctl commit {commit}), then
`python tools/ship_encoder.py`. The kNN accuracy is measured on the images the encoder was trained on
(without their labels), so it says how well phi separates classes it has seen, not how it
transfers.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--data", required=True, help="what the encoder was trained on, for the card")
    parser.add_argument("--summary", default=None)
    parser.add_argument("--folder", type=Path, default=None, help="ship into this folder instead of amemctl/weights (a trial)")
    parser.add_argument("--trained-on", default=None, help="the machine in words for the card (default: the torch device recorded)")
    args = parser.parse_args()
    metrics = json.loads((args.run / "metrics.json").read_text())
    point = metrics["points"][0]["metrics"] if "points" in metrics else metrics
    resolved = yaml.safe_load((args.run / "resolved.yaml").read_text())
    simclr = next(s["train-simclr"] for s in resolved["stages"] if "train-simclr" in s)
    checkpoint = Path(simclr["checkpoints"]) / "encoder.pt"
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config, losses = payload["simclr"], payload["losses"]
    timing = json.loads((checkpoint.parent / "loss.json").read_text())
    seconds = sum(timing.get("epoch_seconds") or [0.0])
    record = json.loads((args.run / "run.json").read_text())
    command = " ".join(["amemctl run", record.get("file", "?"), *(f"--set {o}" for o in record.get("overrides", []) if "checkpoints=" not in o)])
    fields = {"erase": 0.0, "noise": 0.0, **config}  # configurations from before erase and noise existed
    fields.update(
        name=args.name,
        arch=payload["arch"],
        dim=ARCHITECTURES[payload["arch"]],
        cifar_stem=payload["cifar_stem"],
        data=args.data,
        loss=losses[-1],
        first_loss=losses[0],
        knn=f"{100 * point['knn_accuracy']:.1f} %" if "knn_accuracy" in point else "not measured",
        device=args.trained_on or timing.get("device", "?"),
        seconds=f"{seconds / 60:.1f} min of training" if seconds else "time not recorded",
        per_epoch=f"{seconds / max(len(timing.get('epoch_seconds') or [1]), 1):.1f} s per epoch, {timing.get('images_per_second') or 0:,.0f} images/s",
        command=command,
        commit=(record.get("git") or {}).get("commit", "?")[:12] + (" plus uncommitted changes" if (record.get("git") or {}).get("dirty") else ""),
        normalize=payload["preprocessing"]["normalize"],
    )
    card = CARD.format(**fields)
    summary = args.summary or f"{payload['arch']} SimCLR phi, {config['epochs']} epochs on {args.data}"
    entry = pretrained.ship(checkpoint, args.name, summary, card, args.folder)
    print(f"shipped {entry.name}: {(args.folder or pretrained.WEIGHTS) / entry.file} sha256 {entry.sha256}")


if __name__ == "__main__":
    main()
