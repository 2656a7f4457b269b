"""Model presets: one line (`- model: mchn`) for the score, separate and project of a classic model.

| preset | similarity | separation | projection |
|---|---|---|---|
| hn   | dot       | identity (raw sum)                     | sign of lower energy: the classical Hopfield network (Hopfield 1982: W = M^T M, zero diagonal; bipolar patterns) |
| sdm  | hamming   | threshold at -radius, or the k nearest | majority vote: sparse distributed memory, the UHN paper's form (the stored patterns are the hard locations) |
| dam  | dot       | polynomial of order n-1 (or rectified) | sign of lower energy: dense associative memory (Krotov & Hopfield 2016, F(x) = x^n) |
| mchn | dot       | softmax(beta)                          | the modern continuous Hopfield network (Ramsauer et al. 2020) |
| uhn  | manhattan | softmax(beta)                          | the UHN paper's best combination |

`hn` and `dam` take `form: uhn` for the UHN paper's single-shot writing of them (Millidge et
al. 2022, section 2): sign(M^T sep(M q)), each neuron's coupling to itself kept, with sep the
identity (hn) or x^n (dam). `amemctl validate --explain` shows what a preset becomes. In a
sweep, `{name: "hn async", preset: hn, update: asynchronous}` labels a variant by `name` and
picks the model by `preset`.
"""

from __future__ import annotations

from typing import Any

from amemctl.errors import PipelineError
from amemctl.suggest import did_you_mean

PRESETS: dict[str, str] = {
    "hn": "classical Hopfield network (Hopfield 1982): zero-diagonal Hebbian weights, sign updates (bipolar patterns); form: uhn for sign(M^T M q)",
    "sdm": "sparse distributed memory, the UHN paper's form (patterns as hard locations): hamming, threshold radius or k nearest, majority",
    "dam": "dense associative memory (Krotov & Hopfield 2016): F(x) = x^n energy, sign of lower energy; form: uhn for sign(M^T (M q)^n)",
    "mchn": "modern continuous Hopfield network: dot, softmax(beta)",
    "uhn": "the UHN paper's best: manhattan, softmax(beta)",
}

#: parameters a model entry may carry, passed to the stage that owns them
WIRING = {"memory": "score", "queries": "score", "values": "project", "output": "project"}
DYNAMICS = ("steps", "tolerance", "energy", "update", "activation")
OWN = {"name", "preset", "form", "beta", "n", "rectified", "radius", "k", "bipolar", *WIRING, *DYNAMICS}
#: the forms `hn` and `dam` take: the original paper's (first, the default) and the UHN paper's
FORMS = {"hn": ("classical", "uhn"), "dam": ("krotov", "uhn")}


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
    form = _form(name, spec)
    if name == "hn":
        score["similarity"] = "dot"
        separate.update(function="identity", normalize=False)
        project.update(activation="sign", **({} if form == "uhn" else {"flip": True}))
    elif name == "sdm":
        score["similarity"] = "hamming"
        if spec.get("radius") is not None:
            separate.update(function="threshold", t=-float(spec["radius"]), normalize=True)
        else:
            separate.update(function="topk", k=int(spec.get("k", 5)))
        project["activation"] = "sign" if spec.get("bipolar") else "binary"
    elif name == "dam":
        score["similarity"] = "dot"
        separate.update(function="rectified_polynomial" if spec.get("rectified") else "polynomial", n=_dam_order(spec, form), normalize=False)
        project.update(activation="sign", **({} if form == "uhn" else {"flip": True}))
    else:
        score["similarity"] = "dot" if name == "mchn" else "manhattan"
        separate.update(function="softmax", beta=spec.get("beta", 1.0 if name == "mchn" else 1000.0))
    for key, stage in WIRING.items():
        if key in spec:
            (score if stage == "score" else project)[key] = spec[key]
    for key in DYNAMICS:
        if key in spec:
            project[key] = spec[key]
    if form == "uhn" and spec.get("update") == "asynchronous":
        raise PipelineError(f"{name} form: uhn is the UHN paper's single-shot update; asynchronous updates are the original model's", hint="drop form: uhn, or update: asynchronous")
    return [("score", score), ("separate", separate), ("project", project)]


def _form(name: str, spec: dict[str, Any]) -> str | None:
    """The form a preset was asked for: hn and dam take one of FORMS, the others none."""
    if name not in FORMS:
        if "form" in spec:
            raise PipelineError(f"preset {name} takes no form", hint="form is for hn and dam (classical/krotov or uhn)")
        return None
    form = spec.get("form", FORMS[name][0])
    if form not in FORMS[name]:
        raise PipelineError(f"{name} has no form {form!r}", hint=f"forms: {', '.join(FORMS[name])}")
    return form


def _dam_order(spec: dict[str, Any], form: str | None) -> Any:
    """The separation's power: n - 1 for Krotov & Hopfield's F(x) = x^n (F' ~ x^(n-1)), n in the UHN form."""
    n = spec.get("n", 3)
    if form == "uhn" or not isinstance(n, (int, float)) or isinstance(n, bool):
        return n
    if n < 2:
        raise PipelineError(f"dam n = {n}: Krotov & Hopfield's F(x) = x^n needs n >= 2 (n = 2 is the classical Hopfield network)", hint="use n: 2 or more, or form: uhn")
    return n - 1
