"""Model presets: one line (`- model: mchn`) for the score, separate and project of a classic model.

| preset | similarity | separation | projection |
|---|---|---|---|
| hn   | dot       | identity (raw sum)                     | sign of lower energy: the classical Hopfield network (Hopfield 1982: W = M^T M, zero diagonal; bipolar patterns) |
| sdm  | hamming   | threshold at -radius, or the k nearest | majority vote: sparse distributed memory, the UHN paper's form (the stored patterns are the hard locations); form: kanerva for Kanerva's random hard locations and counters |
| dam  | dot       | polynomial of order n-1 (or rectified) | sign of lower energy: dense associative memory (Krotov & Hopfield 2016, F(x) = x^n) |
| mchn | dot       | softmax(beta)                          | the modern continuous Hopfield network (Ramsauer et al. 2020) |
| uhn  | manhattan | softmax(beta)                          | the UHN paper's best combination |

`hn` and `dam` take `form: uhn` for the UHN paper's single-shot writing of them (Millidge et
al. 2022, section 2): sign(M^T sep(M q)), each neuron's coupling to itself kept, with sep the
identity (hn) or x^n (dam). `sdm` takes `form: kanerva` for Kanerva's (1988) memory: `locations`
random hard locations (drawn with the pipeline's seed), each written with every pattern within
`radius` of it (or the radius at which a location fires with probability `p`), read by summing
the counters of the locations within the radius of the query and thresholding at 0; it becomes
the stages `sdm-write` and `sdm-read` (`steps` for iterated reading). The UHN form stays
sdm's default. `amemctl validate --explain` shows what a preset becomes. In a
sweep, `{name: "hn async", preset: hn, update: asynchronous}` labels a variant by `name` and
picks the model by `preset`.
"""

from __future__ import annotations

from typing import Any

from amemctl.errors import PipelineError
from amemctl.suggest import did_you_mean

PRESETS: dict[str, str] = {
    "hn": "classical Hopfield network (Hopfield 1982): zero-diagonal Hebbian weights, sign updates (bipolar patterns); form: uhn for sign(M^T M q)",
    "sdm": "sparse distributed memory, the UHN paper's form (patterns as hard locations): hamming, threshold radius or k nearest, majority; form: kanerva for Kanerva's random hard locations",
    "dam": "dense associative memory (Krotov & Hopfield 2016): F(x) = x^n energy, sign of lower energy; form: uhn for sign(M^T (M q)^n)",
    "mchn": "modern continuous Hopfield network: dot, softmax(beta)",
    "uhn": "the UHN paper's best: manhattan, softmax(beta)",
}

#: parameters a model entry may carry, passed to the stage that owns them
WIRING = {"memory": "score", "queries": "score", "values": "project", "output": "project"}
DYNAMICS = ("steps", "tolerance", "energy", "update", "activation")
OWN = {"name", "preset", "form", "beta", "n", "rectified", "radius", "k", "bipolar", "locations", "p", *WIRING, *DYNAMICS}
#: the forms a preset takes, its default first: the original paper's and the UHN paper's for
#: `hn` and `dam`; for `sdm` the UHN paper's (what it always computed) and Kanerva's
FORMS = {"hn": ("classical", "uhn"), "dam": ("krotov", "uhn"), "sdm": ("uhn", "kanerva")}
#: what `sdm` with `form: kanerva` takes: its parameters, and the wiring of its write and read stages
KANERVA = {"name", "preset", "form", "locations", "radius", "p", "bipolar", "steps", *WIRING}


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
    elif name == "sdm" and form == "kanerva":
        return _kanerva(spec)
    elif name == "sdm":
        if "locations" in spec or "p" in spec:
            key = "locations" if "locations" in spec else "p"
            raise PipelineError(f"sdm's {key} belongs to Kanerva's random hard locations, which the UHN form (the default) has none of", hint="add form: kanerva")
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
    if name in ("hn", "dam") and form == "uhn" and spec.get("update") == "asynchronous":
        raise PipelineError(f"{name} form: uhn is the UHN paper's single-shot update; asynchronous updates are the original model's", hint="drop form: uhn, or update: asynchronous")
    return [("score", score), ("separate", separate), ("project", project)]


def _form(name: str, spec: dict[str, Any]) -> str | None:
    """The form a preset was asked for: hn, dam and sdm take one of FORMS, the others none."""
    if name not in FORMS:
        if "form" in spec:
            raise PipelineError(f"preset {name} takes no form", hint="form is for hn (classical, uhn), dam (krotov, uhn) and sdm (uhn, kanerva)")
        return None
    form = spec.get("form", FORMS[name][0])
    if form not in FORMS[name]:
        raise PipelineError(f"{name} has no form {form!r}", hint=f"forms: {', '.join(FORMS[name])}")
    return form


def _kanerva(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """sdm form: kanerva as the stages that write and read Kanerva's memory."""
    unknown = sorted(set(spec) - KANERVA)
    if unknown:
        raise PipelineError(f"sdm form: kanerva takes no parameter {unknown[0]!r}", hint=f"it takes {', '.join(sorted(KANERVA - {'name', 'preset', 'form'}))}")
    if "locations" not in spec:
        raise PipelineError("sdm form: kanerva needs locations: the number of random hard locations", hint="e.g. locations: 2000")
    if ("radius" in spec) == ("p" in spec):
        raise PipelineError("sdm form: kanerva needs the radius or the activation probability p, one of the two", hint="e.g. radius: 22, or p: 0.01")
    write: dict[str, Any] = {"locations": spec["locations"], **({"radius": spec["radius"]} if "radius" in spec else {"p": spec["p"]})}
    read: dict[str, Any] = {key: spec[key] for key in ("steps", "bipolar") if key in spec}
    for key, stage in (("memory", write), ("values", write), ("queries", read), ("output", read)):
        if key in spec:
            stage[key] = spec[key]
    return [("sdm-write", write), ("sdm-read", read)]


def _dam_order(spec: dict[str, Any], form: str | None) -> Any:
    """The separation's power: n - 1 for Krotov & Hopfield's F(x) = x^n (F' ~ x^(n-1)), n in the UHN form."""
    n = spec.get("n", 3)
    if form == "uhn" or not isinstance(n, (int, float)) or isinstance(n, bool):
        return n
    if n < 2:
        raise PipelineError(f"dam n = {n}: Krotov & Hopfield's F(x) = x^n needs n >= 2 (n = 2 is the classical Hopfield network)", hint="use n: 2 or more, or form: uhn")
    return n - 1
