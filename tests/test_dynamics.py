"""Classical models, presets, iterated retrieval and its energy."""

from __future__ import annotations

import pytest
import torch

from amemctl.core.dynamics import energy, flip_update, hopfield_asynchronous, iterate
from amemctl.core.retrieval import recall
from amemctl.core.separation import make_separation
from amemctl.dsl import presets
from amemctl.errors import PipelineError, StageError
from tests.conftest import error_of


def _bipolar(p, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (p, n), generator=g).float() * 2 - 1


def _flip(x, fraction, seed=1):
    g = torch.Generator().manual_seed(seed)
    flips = torch.rand(x.shape, generator=g) < fraction
    return torch.where(flips, -x, x)


def _recalled(out, patterns):
    return (out == patterns).all(1).float().mean().item()


def test_classical_capacity_collapses_near_0_14_n_and_the_modern_network_goes_far_beyond():
    n = 200
    low, high = _bipolar(10, n), _bipolar(60, n)  # 0.05 N and 0.3 N patterns
    hn_low = _recalled(hopfield_asynchronous(_flip(low, 0.05), low, steps=10, generator=torch.Generator().manual_seed(0)).state, low)
    hn_high = _recalled(hopfield_asynchronous(_flip(high, 0.05), high, steps=10, generator=torch.Generator().manual_seed(0)).state, high)
    assert hn_low == 1.0 and hn_high < 0.2
    many = _bipolar(1000, n)  # 5 N patterns
    mchn = recall(_flip(many, 0.05), many, similarity="dot", separation=make_separation("softmax", beta=1.0)).output
    assert _recalled(torch.sign(mchn), many) == 1.0


def test_the_classical_energy_never_increases_under_asynchronous_updates():
    patterns = _bipolar(30, 100)
    result = hopfield_asynchronous(_flip(patterns, 0.2), patterns, steps=8, generator=torch.Generator().manual_seed(3), track_energy=True)
    assert result.guaranteed and result.increases(slack=0) == 0 and len(result.energies) >= 2


@pytest.mark.parametrize("name,params", [("softmax", {"beta": 2.0}), ("rectified_polynomial", {"n": 3, "normalize": False}), ("identity", {"normalize": False}), ("polynomial", {"n": 3, "normalize": False})])
def test_the_energy_never_increases_where_theory_says_so(name, params):
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(40, 16, generator=g) / 8  # small enough that polynomial updates do not overflow
    queries = keys[:10] + 0.1 * torch.randn(10, 16, generator=g)
    result = iterate(queries, keys, similarity="dot", separation=make_separation(name, **params), steps=15, track_energy=True)
    assert result.guaranteed and len(result.energies) == 16
    assert result.increases() == 0


def test_where_theory_is_silent_the_energy_is_reported_not_promised():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(40, 16, generator=g) / 8
    result = iterate(keys[:10], keys, similarity="dot", separation=make_separation("polynomial", n=2, normalize=False), steps=6, track_energy=True)
    assert not result.guaranteed and len(result.energies) == 7
    none = iterate(keys[:4], keys, similarity="manhattan", separation=make_separation("softmax"), steps=3, track_energy=True)
    assert none.energies == [] and not none.guaranteed


def test_energy_matches_its_formula():
    keys = torch.randn(7, 5, dtype=torch.float64)
    z = torch.randn(3, 5, dtype=torch.float64)
    beta = 3.0
    expected = 0.5 * (z * z).sum(1) - torch.logsumexp(beta * z @ keys.T, 1) / beta
    torch.testing.assert_close(energy(z, keys, make_separation("softmax", beta=beta)).double(), expected, rtol=1e-5, atol=1e-5)


def test_iteration_stops_at_a_fixed_point():
    keys = _bipolar(5, 64)
    result = iterate(_flip(keys, 0.1), keys, similarity="dot", separation=make_separation("softmax", beta=1.0), activation="sign", steps=10, tolerance=0.0)
    assert torch.equal(result.state, keys) and result.converged.all() and (result.steps <= 3).all()


def test_presets_expand_to_the_classic_models():
    assert presets.expand("hn") == [("score", {"similarity": "dot"}), ("separate", {"function": "identity", "normalize": False}), ("project", {"activation": "sign", "flip": True})]
    assert presets.expand({"name": "hn", "form": "uhn"})[2] == ("project", {"activation": "sign"})
    assert presets.expand({"name": "dam", "n": 10, "rectified": True})[1] == ("separate", {"function": "rectified_polynomial", "n": 9, "normalize": False})
    assert presets.expand({"name": "dam", "n": 10, "form": "uhn"})[1:] == [("separate", {"function": "polynomial", "n": 10, "normalize": False}), ("project", {"activation": "sign"})]
    for bad, message in [({"name": "dam", "n": 1}, "needs n >= 2"), ({"name": "hn", "form": "krotov"}, "hn has no form 'krotov'"),
                         ({"name": "mchn", "form": "uhn"}, "takes no form"), ({"name": "hn", "form": "uhn", "update": "asynchronous"}, "single-shot")]:
        with pytest.raises(PipelineError, match=message):
            presets.expand(bad)
    assert presets.expand({"name": "sdm", "radius": 5})[1] == ("separate", {"function": "threshold", "t": -5.0, "normalize": True})
    assert presets.expand({"name": "uhn", "memory": "keys", "output": "out"}) == [
        ("score", {"similarity": "manhattan", "memory": "keys"}),
        ("separate", {"function": "softmax", "beta": 1000.0}),
        ("project", {"output": "out"}),
    ]
    with pytest.raises(PipelineError, match="did you mean 'mchn'"):
        presets.expand("mhcn")


def test_presets_in_pipelines(run_text):
    text = """\
data: {dataset: digits, limit: 60}
sweep:
  model: [mchn, {name: dam, n: 8}, {name: sdm, k: 1, bipolar: true}, {name: hn-async, preset: hn, update: asynchronous, steps: 3}]
stages:
  - corrupt: {kind: salt_pepper, p: 0.05}
  - binarize: {bipolar: true}
  - model: ${model}
  - evaluate: {}
"""
    assert "unknown model preset 'hn-sync'" in error_of(text.replace("preset: hn,", "preset: hn-sync,"))
    run = run_text(text)
    errors = {p.point.values["model"] if isinstance(p.point.values["model"], str) else p.point.values["model"]["name"]: p.metrics["error_index"] for p in run.points}
    assert errors["mchn"] < 0.2 and errors["sdm"] < 0.2 and set(errors) == {"mchn", "dam", "sdm", "hn-async"}
    assert "iterations" in run.points[3].metrics
    message = error_of("data: {dataset: digits}\nstages:\n  - corrupt: {}\n  - model: {name: mchn, temperature: 2}\n")
    assert "bad.yaml:4:12: model presets take no parameter 'temperature'" in message


def test_asynchronous_updates_only_for_the_classical_network(run_text):
    base = "data: {dataset: digits, limit: 40}\nstages:\n  - corrupt: {kind: salt_pepper, p: 0.02}\n  - binarize: {}\n  - model: MODEL\n  - evaluate: {}\n"
    metrics = run_text(base.replace("MODEL", "{name: hn, update: asynchronous, steps: 5, energy: true}")).points[0].metrics
    assert metrics["energy_increases"] == 0 and 1 <= metrics["iterations"] <= 5
    with pytest.raises(Exception, match="energy-flip updates .* are the classical Hopfield network's"):
        run_text(base.replace("MODEL", "{name: mchn, update: asynchronous}"))


def test_iteration_keeps_float64_queries_in_float64():
    g = torch.Generator().manual_seed(0)
    keys = torch.rand(30, 12, generator=g, dtype=torch.float64)
    queries = keys[:4] + 1e-3 * torch.randn(4, 12, generator=g, dtype=torch.float64)
    sep = make_separation("softmax", beta=20.0)
    result = iterate(queries, keys, separation=sep, steps=2, track_energy=True)
    assert result.state.dtype == torch.float64 and result.energies[-1].dtype == torch.float64
    # two steps of the plain formula, in float64: float32 would miss this by ~1e-8
    state = queries
    for _ in range(2):
        state = torch.softmax(20.0 * state @ keys.T, 1) @ keys
    torch.testing.assert_close(result.state, state, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Each preset against a plain reference written from its paper's equations, on tiny
# fabricated patterns: loops over neurons and memories, float64, no amemctl code.


def _preset(spec, patterns, queries, stage_seed=0):
    """The retrieval a `- model: SPEC` entry makes of `queries` against `patterns`, run as the engine runs it."""
    from amemctl.context import Context
    from amemctl.plugins import build_registry
    from amemctl.stages.retrieval import Project, Score, Separate, run_fused

    registry, stages = build_registry(), dict(presets.expand(spec))
    ctx = Context(torch.device("cpu"), 0, 2**28, run_dir=None, stage_seed=stage_seed)
    ctx["patterns"], ctx["queries"] = patterns, queries
    run_fused(Score(registry, **stages["score"]), Separate(registry, **stages["separate"]), Project(registry, **stages["project"]), ctx)
    return ctx["retrieved"], ctx


def _hopfield_1982_field(x, s, i):
    """sum_{j != i} T_ij s_j with T_ij = sum_mu x_mu,i x_mu,j (Hopfield 1982: T_ii = 0)."""
    return sum(float(x[mu, i] * x[mu, j] * s[j]) for mu in range(len(x)) for j in range(len(s)) if j != i)


def _krotov_field(x, s, i, F):
    """Krotov & Hopfield 2016 eq. 3, inside the Sign: sum_mu F(x_mu,i + a) - F(-x_mu,i + a), a = sum_{j != i} x_mu,j s_j."""
    total = 0.0
    for mu in range(len(x)):
        a = sum(float(x[mu, j] * s[j]) for j in range(len(s)) if j != i)
        total += F(float(x[mu, i]) + a) - F(-float(x[mu, i]) + a)
    return total


def _threshold_update(s, field):
    """+1 above 0, -1 below, unchanged at 0 (Hopfield 1982's threshold rule)."""
    return 1.0 if field > 0 else -1.0 if field < 0 else float(s)


def _synchronous(x, queries, field):
    return torch.tensor([[_threshold_update(q[i], field(x, q, i)) for i in range(len(q))] for q in queries.double()])


def _tiny(p=6, n=12, q=5, flips=2, seed=4):
    x = _bipolar(p, n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    queries = x[:q].clone()
    for row in queries:
        row[torch.randperm(n, generator=g)[:flips]] *= -1
    return x, queries


def test_hn_is_hopfield_1982_zero_diagonal_and_form_uhn_keeps_the_self_coupling():
    x, queries = _tiny()
    ours, _ = _preset("hn", x, queries)
    assert torch.equal(ours.double(), _synchronous(x, queries, _hopfield_1982_field))
    uhn, _ = _preset({"name": "hn", "form": "uhn"}, x, queries)
    assert torch.equal(uhn, torch.where(queries @ x.T @ x >= 0, 1.0, -1.0))  # UHN paper: sign(M^T M q)
    assert not torch.equal(ours, uhn)  # the self-coupling N q_i changes the answer here


def test_hn_asynchronous_follows_one_random_order_per_sweep_with_zero_diagonal():
    x, queries = _tiny(p=4, n=10, flips=3)
    ours, ctx = _preset({"name": "hn", "update": "asynchronous", "steps": 4}, x, queries, stage_seed=3)
    g, state, expected = ctx.rng("cpu"), queries.double().clone(), None
    for _ in range(4):
        order = torch.randperm(x.shape[1], generator=g).tolist()
        for s in state:
            for i in order:
                s[i] = _threshold_update(s[i], _hopfield_1982_field(x, s, i))
        expected = state.clone()
    assert torch.equal(ours.double(), expected)  # a fixed point stays put, so further sweeps change nothing


@pytest.mark.parametrize("n,rectified", [(2, False), (3, False), (4, False), (5, True)])
def test_dam_is_krotov_hopfield_2016_energy_difference(n, rectified):
    x, queries = _tiny(p=8, n=12, flips=3)
    F = (lambda v: max(v, 0.0) ** n) if rectified else (lambda v: v**n)
    ours, _ = _preset({"name": "dam", "n": n, "rectified": rectified}, x, queries)
    assert torch.equal(ours.double(), _synchronous(x, queries, lambda x_, s, i: _krotov_field(x_, s, i, F)))
    if n == 2 and not rectified:  # F(x) = x^2 is the classical network
        assert torch.equal(ours, _preset("hn", x, queries)[0])


def test_dam_form_uhn_is_the_polynomial_separation_of_dot_scores():
    x, queries = _tiny(p=8, n=12, flips=3)
    ours, _ = _preset({"name": "dam", "n": 3, "form": "uhn"}, x, queries)
    assert torch.equal(ours, torch.where((queries @ x.T).pow(3) @ x >= 0, 1.0, -1.0))


def test_dam_asynchronous_updates_never_raise_krotovs_energy():
    from amemctl.core.dynamics import flip_update

    x, queries = _tiny(p=30, n=16, q=10, flips=5)
    result = flip_update(queries, x, make_separation("polynomial", n=3, normalize=False), steps=6, update="asynchronous",
                         generator=torch.Generator().manual_seed(0), track_energy=True)
    assert result.guaranteed and result.increases(slack=0) == 0 and len(result.energies) >= 3
    krotov = -((result.state.double() @ x.T.double()) ** 4).sum(1) / 4  # E = -sum_mu F(x_mu . s), F = x^4 / 4
    torch.testing.assert_close(result.energies[-1], krotov + 16 / 2)  # ours adds |s|^2 / 2, constant for bipolar s


@pytest.mark.parametrize("update", ["synchronous", "asynchronous"])
def test_energy_flip_updates_in_blocks_of_queries_within_the_budget_answer_the_same(update):
    """Each query's Q x N overlaps (and the synchronous field's Q x N x D) stay within the budget by taking fewer queries at a time."""
    from amemctl.core.dynamics import flip_update

    x, queries = _tiny(p=30, n=16, q=10, flips=5)
    separation = make_separation("polynomial", n=3, normalize=False)

    def run(budget):
        return flip_update(queries, x, separation, steps=3, update=update, generator=torch.Generator().manual_seed(1), budget=budget).state

    assert torch.equal(run(8 * 4 * 30), run(2**28))  # one query at a time against all at once


def test_mchn_is_ramsauer_softmax_update():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    xi = x[:3] + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    ours, _ = _preset({"name": "mchn", "beta": 2.0}, x, xi)
    expected = torch.stack([x.T @ torch.softmax(2.0 * x @ q, 0) for q in xi])  # xi_new = X softmax(beta X^T xi)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-6, atol=1e-6)


def test_sdm_reads_the_majority_of_the_patterns_within_the_radius():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 2, (9, 16), generator=g).float()
    queries = x[:4].clone()
    queries[:, :3] = 1 - queries[:, :3]
    ours, _ = _preset({"name": "sdm", "radius": 6}, x, queries)
    for q, out in zip(queries, ours):
        near = [p for p in x if int((p != q).sum()) <= 6]  # the UHN form: each pattern its own hard location
        votes = torch.stack(near).mean(0)
        assert torch.equal(out, (votes > 0.5).float())


def test_the_energy_travels_with_the_separation_not_its_name():
    """A plugin's function called "square" (here sign-preserving, s|s|) was given the built-in
    square's F = s^3/3 and the claim that its energy never increases, by name alone."""
    from amemctl.core.dynamics import energy_defined, energy_guaranteed
    from amemctl.core.separation import Elementwise
    from amemctl.core.similarity import get_similarity

    dot = get_similarity("dot")
    impostor = Elementwise("square", lambda s: s * s.abs(), normalize=False)
    assert not energy_defined(dot, impostor) and not energy_guaranteed(dot, impostor, "none")
    with pytest.raises(StageError, match="known integral"):
        flip_update(torch.ones(2, 4), torch.ones(3, 4), impostor)
    # one that brings its own F gets the energy, and the guarantee only when it says F is convex
    signed = Elementwise("signed_square", lambda s: s * s.abs(), normalize=False, integral=lambda s: s.abs().pow(3) / 3, convex=True)
    assert energy_guaranteed(dot, signed, "none")
    g = torch.Generator().manual_seed(0)
    z, keys = torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g)
    s = z @ keys.T
    torch.testing.assert_close(energy(z, keys, signed), 0.5 * (z * z).sum(1) - (s.abs().pow(3) / 3).sum(1))
    # the built-ins keep theirs: odd polynomials are convex, even ones are not
    for name, params, convex in [("square", {}, True), ("polynomial", {"n": 3}, True), ("polynomial", {"n": 2}, False), ("rectified_polynomial", {"n": 2}, True)]:
        built_in = make_separation(name, normalize=False, **params)
        assert energy_defined(dot, built_in) and energy_guaranteed(dot, built_in, "none") == convex, name
        torch.testing.assert_close(energy(z, keys, built_in), 0.5 * (z * z).sum(1) - built_in.integral(s).sum(1))
