"""Separation functions against their formulas, and their streaming forms against the full-row form."""

from __future__ import annotations

import pytest
import torch

from amemctl.core.rows import TensorRows
from amemctl.core.separation import SEPARATIONS, Softmax, TopK, make_separation, parameters, top_k
from amemctl.errors import StageError


def _scores(q=6, n=40, seed=0):
    return torch.randn(q, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _normalised(w):
    return w / w.sum(1, keepdim=True)


FORMULAS = {
    ("identity", ()): lambda s: _normalised(s),
    ("square", ()): lambda s: _normalised(s**2),
    ("polynomial", (("n", 3),)): lambda s: _normalised(s**3),
    ("rectified_polynomial", (("n", 3),)): lambda s: _normalised(torch.relu(s) ** 3),
    ("log", ()): lambda s: _normalised(torch.log(s.clamp_min(torch.finfo(s.dtype).tiny))),
    ("threshold", (("t", 0.5),)): lambda s: _normalised((s >= 0.5).double()),
    ("softmax", (("beta", 3.0),)): lambda s: torch.exp(3 * s) / torch.exp(3 * s).sum(1, keepdim=True),
    ("max", ()): lambda s: torch.nn.functional.one_hot(s.argmax(1), s.shape[1]).double(),
}


@pytest.mark.parametrize("key", list(FORMULAS), ids=lambda k: k[0])
def test_weights_follow_the_formula(key):
    name, params = key
    s = _scores().abs() if name == "log" else _scores()
    torch.testing.assert_close(make_separation(name, **dict(params)).weights(s), FORMULAS[key](s))


def test_unnormalised_elementwise_weights_are_the_raw_function():
    s = _scores()
    torch.testing.assert_close(make_separation("polynomial", n=2, normalize=False).weights(s), s**2)


def test_sparsemax_is_the_projection_onto_the_simplex():
    s = _scores(q=5, n=30)
    w = make_separation("sparsemax", beta=2.0).weights(s)
    assert torch.allclose(w.sum(1), torch.ones(5, dtype=w.dtype))
    assert (w >= 0).all() and (w == 0).any()
    # the projection is the closest point of the simplex: no random simplex point is closer
    z = 2.0 * s
    for _ in range(200):
        p = torch.distributions.Dirichlet(torch.ones(30, dtype=torch.float64)).sample((5,))
        assert ((p - z) ** 2).sum(1).ge(((w - z) ** 2).sum(1) - 1e-9).all()


def test_entmax15_is_normalised_sparse_and_between_softmax_and_sparsemax():
    s = _scores(q=4, n=50)
    w = make_separation("entmax15", beta=4.0).weights(s)
    torch.testing.assert_close(w.sum(1), torch.ones(4, dtype=w.dtype))
    sparse = make_separation("sparsemax", beta=4.0).weights(s)
    assert ((w > 0).sum(1) >= (sparse > 0).sum(1)).all() and ((w > 0).sum(1) < 50).all()
    # 1.5-entmax's defining fixed point: w = [(z/2 - tau)_+]^2 for the z it was given
    z = 4.0 * s / 2
    tau = (z - w.sqrt()).where(w > 0, torch.full_like(z, float("nan"))).nanmean(1, keepdim=True)
    torch.testing.assert_close(w, (z - tau).clamp_min(0) ** 2)



def _sparsemax_plain(z):
    """sparsemax as amemctl computed it before its temporaries were made in place: the reference."""
    zs, _ = torch.sort(z, dim=1, descending=True)
    cs = zs.cumsum(1) - 1
    rho = torch.arange(1, z.shape[1] + 1, dtype=z.dtype)
    support = (zs * rho > cs).sum(1, keepdim=True)
    return (z - cs.gather(1, support - 1) / support.to(z.dtype)).clamp_min(0)


def _entmax15_plain(z):
    """1.5-entmax as amemctl computed it before its temporaries were made in place: the reference."""
    z = (z - z.amax(1, keepdim=True)) / 2
    zs, _ = torch.sort(z, dim=1, descending=True)
    rho = torch.arange(1, z.shape[1] + 1, dtype=z.dtype)
    mean = zs.cumsum(1) / rho
    mean_sq = (zs * zs).cumsum(1) / rho
    tau = mean - ((1 - rho * (mean_sq - mean * mean)) / rho).clamp_min(0).sqrt()
    support = (tau <= zs).sum(1, keepdim=True)
    return (z - tau.gather(1, support - 1)).clamp_min(0).square()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparsemax_and_entmax_give_the_plain_formulas_numbers_to_the_bit(dtype):
    """Their temporaries are made in place, and retrieval weighs a few rows at a time: neither changes a weight."""
    s = torch.randn(23, 300, generator=torch.Generator().manual_seed(5)).to(dtype)
    s[3, :50] = s[3, 0]  # ties
    s[4] = 0.0
    v = torch.randn(300, 9, generator=torch.Generator().manual_seed(6)).to(dtype)
    for name, plain in (("sparsemax", _sparsemax_plain), ("entmax15", _entmax15_plain)):
        sep = make_separation(name, beta=3.0)
        given = s.clone()
        want = plain(3.0 * s)
        assert torch.equal(sep.weights(s), want) and torch.equal(s, given), name  # and the scores are left alone
        for chunk in (7, 300):
            torch.testing.assert_close(_stream(sep, s, v, chunk), want @ v, rtol=0, atol=0)


def test_top_k_keeps_the_lowest_index_among_ties():
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    vals, idx = top_k(s, 2)
    assert idx.tolist() == [[1, 2]] and vals.tolist() == [[3.0, 3.0]]
    vals, idx = top_k(s, 4)
    assert idx.tolist() == [[1, 2, 4, 3]]


def _stream(sep, scores, values, chunk):
    reducer = sep.reducer(scores.shape[0], values.shape[1], scores)
    for offset in range(0, scores.shape[1], chunk):
        part = scores[:, offset : offset + chunk]
        reducer.update(part, offset, values[offset : offset + part.shape[1]] if reducer.reads_values else None)
    return reducer.finish(TensorRows(values))


ALL = [
    ("identity", {}),
    ("square", {"normalize": False}),
    ("polynomial", {"n": 5}),
    ("rectified_polynomial", {"n": 2}),
    ("threshold", {"t": 0.0}),
    ("softmax", {"beta": 10.0}),
    ("max", {}),
    ("topk", {"k": 4}),
    ("topk", {"k": 3, "weighting": "softmax", "beta": 2.0}),
    ("sparsemax", {"beta": 3.0}),
    ("entmax15", {"beta": 3.0}),
]


def test_every_separation_is_covered():
    assert {name for name, _ in ALL} | {"log"} == set(SEPARATIONS)


def test_the_separate_stage_registers_the_core_separations_with_their_defaults():
    from amemctl.plugins import build_registry

    registry = build_registry(entry_points=False)
    assert list(registry.separations) == list(SEPARATIONS)
    for name, function in registry.separations.items():
        assert function.make is SEPARATIONS[name]
        assert {key: param.default for key, param in function.params.items()} == parameters(name)
        assert function().describe() == make_separation(name).describe()


@pytest.mark.parametrize("name,params", ALL, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL)])
@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_streaming_equals_the_full_row(name, params, chunk):
    sep = make_separation(name, **params)
    s = _scores(q=5, n=40, seed=3)
    v = torch.randn(40, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(_stream(sep, s, v, chunk), sep.weights(s) @ v)


def test_a_full_row_separation_defines_weights_only_and_still_streams():
    # docs/plugins.md: one with `needs_full_rows = True` gets each query's full row of scores;
    # reducer() was abstract, so a plugin's such class could not even be made.
    from amemctl import Separation

    class Floored(Separation):
        name = "floored"
        needs_full_rows = True

        def weights(self, scores):
            w = torch.softmax(scores, dim=1)
            w = torch.where(w >= 0.5 * w.amax(1, keepdim=True), w, torch.zeros_like(w))
            return w / w.sum(1, keepdim=True)

    s = _scores(q=5, n=40, seed=3)
    v = torch.randn(40, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for chunk in (1, 7, 40):
        torch.testing.assert_close(_stream(Floored(), s, v, chunk), Floored().weights(s) @ v)

    class Unstreamed(Separation):
        name = "unstreamed"

        def weights(self, scores):
            return scores

    with pytest.raises(TypeError, match="separation 'unstreamed' \\(Unstreamed\\) defines no reducer\\(\\): set needs_full_rows = True"):
        Unstreamed().reducer(5, 9, s)


def test_online_softmax_survives_huge_beta():
    s = _scores() * 10
    v = torch.randn(40, 3, dtype=torch.float64)
    out = _stream(Softmax(beta=1e4), s, v, 8)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, v[s.argmax(1)])


def test_bad_parameters_name_what_is_accepted():
    with pytest.raises(StageError, match="softmax accepts beta"):
        make_separation("softmax", k=3)
    with pytest.raises(StageError, match="did you mean 'softmax'"):
        make_separation("sofmax")
    with pytest.raises(StageError):
        TopK(k=0)
