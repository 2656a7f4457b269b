"""Model presets: one line (`- model: mchn`) for the score, separate and project of a classic model.

| preset | similarity | separation | projection |
|---|---|---|---|
| hn   | dot       | identity (raw sum)                     | sign: the classical Hopfield network (bipolar patterns) |
| sdm  | hamming   | threshold at -radius, or the k nearest | majority vote: sparse distributed memory (binary patterns; bipolar: true for +-1) |
| dam  | dot       | polynomial of order n (or rectified)   | sign: dense associative memory (Krotov & Hopfield 2016) |
| mchn | dot       | softmax(beta)                          | the modern continuous Hopfield network (Ramsauer et al.) |
| uhn  | manhattan | softmax(beta)                          | the UHN paper's best combination |

`amemctl validate --explain` shows what a preset becomes. In a sweep, `{name: "hn async",
preset: hn, update: asynchronous}` labels a variant by `name` and picks the model by `preset`.
"""

from __future__ import annotations

from typing import Any

from amemctl.errors import PipelineError
from amemctl.suggest import did_you_mean

PRESETS: dict[str, str] = {
    "hn": "classical Hopfield network: dot, identity, sign (bipolar patterns)",
    "sdm": "sparse distributed memory: hamming, threshold radius or k nearest, binary majority",
    "dam": "dense associative memory: dot, polynomial of order n, sign",
    "mchn": "modern continuous Hopfield network: dot, softmax(beta)",
    "uhn": "the UHN paper's best: manhattan, softmax(beta)",
}

#: parameters a model entry may carry, passed to the stage that owns them
WIRING = {"memory": "score", "queries": "score", "values": "project", "output": "project"}
DYNAMICS = ("steps", "tolerance", "energy", "update", "activation")
OWN = {"name", "preset", "beta", "n", "rectified", "radius", "k", "bipolar", *WIRING, *DYNAMICS}


def expand(params: Any) -> list[tuple[str, dict[str, Any]]]:
    """The (stage, parameters) a `model:` entry stands for."""
    spec = {"name": params} if isinstance(params, str) else dict(params or {})
    name = spec.get("preset", spec.get("name"))  # `preset` picks the model when `name` is a label
    if name not in PRESETS:
        hint = did_you_mean(str(name), PRESETS) or "presets: " + ", ".join(f"{k} ({v})" for k, v in PRESETS.items())
        raise PipelineError(f"unknown model preset {name!r}", hint=hint)
    unknown = sorted(set(spec) - OWN)
    if unknown:
        raise PipelineError(f"model presets take no parameter {unknown[0]!r}", hint=did_you_mean(unknown[0], OWN) or f"they take {', '.join(sorted(OWN))}")
    score: dict[str, Any] = {}
    separate: dict[str, Any] = {}
    project: dict[str, Any] = {}
    if name == "hn":
        score["similarity"] = "dot"
        separate.update(function="identity", normalize=False)
        project["activation"] = "sign"
    elif name == "sdm":
        score["similarity"] = "hamming"
        if spec.get("radius") is not None:
            separate.update(function="threshold", t=-float(spec["radius"]), normalize=True)
        else:
            separate.update(function="topk", k=int(spec.get("k", 5)))
        project["activation"] = "sign" if spec.get("bipolar") else "binary"
    elif name == "dam":
        score["similarity"] = "dot"
        separate.update(function="rectified_polynomial" if spec.get("rectified") else "polynomial", n=spec.get("n", 3), normalize=False)
        project["activation"] = "sign"
    else:
        score["similarity"] = "dot" if name == "mchn" else "manhattan"
        separate.update(function="softmax", beta=spec.get("beta", 1.0 if name == "mchn" else 1000.0))
    for key, stage in WIRING.items():
        if key in spec:
            (score if stage == "score" else project)[key] = spec[key]
    for key in DYNAMICS:
        if key in spec:
            project[key] = spec[key]
    return [("score", score), ("separate", separate), ("project", project)]
