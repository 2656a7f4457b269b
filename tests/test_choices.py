"""Choosing a similarity or a separation with its parameters: one rule for pipelines and notebooks.

A parameter belongs to whoever declares it: the stage, or the function its dispatching
parameter chose. A name both declare is refused beside the choice and taken inside it,
`similarity: {name: NAME, ...}`; eps and smoothing (the divergences') may stand beside any
similarity, so one score stage sweeps divergences and distances alike (amemctl/choices.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import amemctl
from amemctl import Param, ParamError, Similarity, SimilarityFunction
from amemctl.cli import main
from amemctl.core.similarity import SIMILARITIES
from amemctl.dsl.pipeline import parse_text
from tests.conftest import error_of

LOADED = "data: {dataset: digits, limit: 40}\nstages:\n  - corrupt: {kind: gaussian, variance: 0.1}\n"


def _lines(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.startswith("bad.yaml:")]


def _stage(text: str, name: str, registry=None, point: int = 0):
    """The configured stage `name` of a sweep point of a pipeline text."""
    plan = parse_text(text, "test.yaml", registry=registry).plans[point]
    return next(planned.stage for planned in plan.stages if planned.stage.name == name)


def _scores(similarity: Similarity) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return similarity(torch.rand(3, 5, generator=g), torch.rand(4, 5, generator=g))


def _scaled(**given):
    """A plugin's similarity whose parameters are named like score's own (eps, normalize) and not (gain)."""
    return SimilarityFunction(
        "scaled",
        lambda eps, normalize, gain: Similarity("scaled", lambda q, k: (q @ k.T) * eps * gain + (100.0 if normalize else 0.0)),
        {
            "eps": Param(float, 1.0, "scale of the scores", above=0),
            "normalize": Param(bool, False, "add 100 to every score"),
            "gain": Param(float, 1.0, "another scale"),
        },
        doc="dot product times eps",
    )


@pytest.fixture
def registry():
    from amemctl.plugins import build_registry

    registry = build_registry(entry_points=False)
    registry.similarities["scaled"] = _scaled()
    return registry


# ---------------------------------------------------------------------------------------
# a similarity that takes no parameter is named when given one


def test_a_plain_similarity_given_a_parameter_is_named_with_what_it_takes():
    message = error_of(LOADED + "  - score: {similarity: cosine, p: 3}\n")
    assert _lines(message) == ["bad.yaml:4:33: similarity 'cosine' takes no parameter 'p'"], message
    assert "hint: cosine takes no parameters" in message
    assert "stage 'score' has no parameter" not in message


def test_a_misspelt_parameter_of_a_chosen_similarity_gets_a_did_you_mean():
    message = error_of(LOADED + "  - score: {similarity: kl, esp: 1.0e-4}\n")
    assert _lines(message) == ["bad.yaml:4:29: similarity 'kl' takes no parameter 'esp'"], message
    assert "hint: did you mean 'eps'?" in message
    assert "hint: did you mean 'normalize'?" in error_of(LOADED + "  - score: {similarity: cosine, normalise: true}\n")  # the stage's own too


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_cli_names_the_similarity_at_the_file_and_line(tmp_path, command):
    path = tmp_path / "bad.yaml"
    path.write_text(LOADED + "  - score: {similarity: chebyshev, p: 3}\n  - separate: {}\n  - project: {}\n")
    args = [command, str(path)] + (["--out", str(tmp_path / "runs")] if command == "run" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "bad.yaml:4:36: similarity 'chebyshev' takes no parameter 'p'" in result.output
    assert "hint: chebyshev takes no parameters" in result.output


@pytest.mark.parametrize(
    "similarity",
    [{"similarity": "cosine", "p": 3}, {"similarity": "chebyshev", "p": 3}, {"similarity": "kl", "esp": 1e-4}, {"similarity": "minkowski", "q": 2}],
)
def test_a_notebook_is_refused_with_the_pipelines_words(similarity):
    queries, keys = torch.rand(5, 4), torch.rand(9, 4)
    with pytest.raises(ParamError) as info:
        amemctl.recall(queries, keys, similarity=similarity)
    yaml = error_of(LOADED + f"  - score: {json.dumps(similarity)}\n")
    assert info.value.render() in yaml  # the same message and hint; the YAML's at its line
    with pytest.raises(ParamError, match="takes no parameter"):
        amemctl.UniversalHopfield(keys, similarity=similarity)


# ---------------------------------------------------------------------------------------
# a similarity's parameter named like the score stage's own


def test_eps_beside_a_similarity_that_declares_it_reaches_the_similarity(registry):
    """Before, score took eps as its own: a plugin similarity's eps kept its default, silently."""
    score = _stage(LOADED + "  - score: {similarity: scaled, eps: 3, gain: 2}\n", "score", registry)
    assert torch.allclose(_scores(score.similarity_fn()), _scores(Similarity("x", lambda q, k: (q @ k.T) * 6)))


def test_a_name_both_the_stage_and_the_similarity_declare_is_refused_beside_it(registry):
    message = error_of(LOADED + "  - score: {similarity: scaled, normalize: true}\n", registry)
    assert _lines(message) == ["bad.yaml:4:33: 'normalize' is both stage 'score''s parameter and similarity 'scaled''s"], message
    assert "similarity: {name: scaled, normalize: ...}" in message


def test_inside_the_choice_a_parameter_is_the_similaritys_and_beside_it_the_stages(registry):
    text = LOADED + "  - score: {similarity: {name: scaled, normalize: true, eps: 2}, normalize: %s}\n"
    for stage_normalizes in ("true", "false"):
        score = _stage(text % stage_normalizes, "score", registry)
        assert score.normalize is (stage_normalizes == "true") and score.similarity == "scaled"
        assert score.options["similarity"] == {"eps": 2.0, "normalize": True, "gain": 1.0}
        assert torch.allclose(_scores(score.similarity_fn()), _scores(Similarity("x", lambda q, k: (q @ k.T) * 2 + 100)))
    from amemctl.dsl.pipeline import explain

    shown = explain(parse_text(text % "false", registry=registry))
    assert "score: similarity='scaled' eps=2.0 similarity.normalize=True" in shown, shown  # the plan says whose normalize it is


def test_a_parameter_given_inside_and_beside_the_choice_is_refused(registry):
    message = error_of(LOADED + "  - score: {similarity: {name: kl, eps: 1.0e-4}, eps: 1.0e-3}\n")
    assert _lines(message) == ["bad.yaml:4:50: similarity 'kl' is given 'eps' twice, inside `similarity:` and beside it"], message


def test_mistakes_inside_the_choice_are_told_at_their_own_line():
    message = error_of(LOADED + "  - score:\n      similarity: {name: cosine, p: 3}\n  - separate:\n      function: {name: topk, k: 0}\n")
    assert _lines(message) == [
        "bad.yaml:5:34: similarity 'cosine' takes no parameter 'p'",
        "bad.yaml:7:33: parameter 'k' is 0, out of range",
    ], message
    message = error_of("stages:\n  - load: {dataset: {name: digits, limit: 3}}\n")  # a dataset takes no parameters: `limit` is load's
    assert _lines(message) == ["bad.yaml:2:36: dataset 'digits' takes no parameter 'limit'"] and "goes beside `dataset:`" in message, message
    # a choice naming no function chooses the default, as a stage given no `similarity:` does
    assert _lines(error_of(LOADED + "  - score: {similarity: {eps: 3}}\n")) == ["bad.yaml:4:26: similarity 'dot' takes no parameter 'eps'"]
    assert "bad.yaml:4:32: parameter 'similarity' must be a string, got 3" in error_of(LOADED + "  - score: {similarity: {name: 3}}\n")


def test_a_swept_choice_with_its_parameters_inside(tmp_path):
    text = "data: {dataset: digits, limit: 40}\nsweep:\n  similarity: [euclidean, {name: kl, eps: 1.0e-4, smoothing: log}]\nstages:\n  - corrupt: {}\n  - score: {similarity: '${similarity}'}\n"
    euclidean, kl = (_stage(text, "score", point=i) for i in range(2))
    assert euclidean.similarity_fn() is SIMILARITIES["euclidean"]  # the core's object itself: the fast routes recognise it so
    assert torch.equal(_scores(kl.similarity_fn()), _scores(SIMILARITIES["kl"].with_options(eps=1e-4, smoothing="log")))
    assert [plan.point.label() for plan in parse_text(text).plans] == ["similarity=euclidean", "similarity=kl"]
    bad = error_of(text.replace("eps: 1.0e-4", "eps: 0"))
    assert _lines(bad) == ["bad.yaml:3:43: parameter 'eps' is 0.0, out of range (from sweep variable 'similarity', value 2)"], bad


def test_eps_and_smoothing_beside_a_swept_similarity_go_to_the_divergences_only():
    """The UHN pipelines sweep distances and divergences under one score stage with eps and smoothing."""
    text = "data: {dataset: digits, limit: 40}\nsweep:\n  similarity: [euclidean, kl, chebyshev]\nstages:\n  - corrupt: {}\n  - score: {similarity: '${similarity}', eps: 1.0e-4, smoothing: log}\n"
    euclidean, kl, chebyshev = (_stage(text, "score", point=i) for i in range(3))
    assert euclidean.similarity_fn() == SIMILARITIES["euclidean"] and "eps" not in euclidean.options["similarity"]
    assert torch.equal(_scores(kl.similarity_fn()), _scores(SIMILARITIES["kl"].with_options(eps=1e-4, smoothing="log")))
    assert chebyshev.similarity_fn().name == "chebyshev"
    refused = error_of(text.replace("smoothing: log", "smoothing: lgo"))
    assert "'lgo' is not a valid 'smoothing'" in refused and "did you mean 'log'?" in refused  # at the kl point, by kl's declaration


def test_the_divergences_declare_their_eps_and_smoothing():
    result = CliRunner().invoke(main, ["stages", "kl"], terminal_width=200)
    assert result.exit_code == 0 and "eps" in result.output and "number > 0" in result.output and "renormalize" in result.output, result.output
    assert "no parameters" in CliRunner().invoke(main, ["stages", "cosine"], terminal_width=200).output
    score = CliRunner().invoke(main, ["stages", "score"], terminal_width=200).output
    assert "eps and smoothing" in score


def test_a_similarity_named_in_a_notebook_mapping_takes_name_too():
    queries, keys = torch.rand(5, 4), torch.rand(9, 4)
    by_key = amemctl.recall(queries, keys, similarity={"similarity": "kl", "eps": 1e-3}, separation="max")
    by_name = amemctl.recall(queries, keys, similarity={"name": "kl", "eps": 1e-3}, separation="max")
    assert torch.equal(by_key.index, by_name.index) and torch.equal(by_key.score, by_name.score)
    with pytest.raises(ParamError, match="names it twice"):
        amemctl.recall(queries, keys, similarity={"name": "kl", "similarity": "kl"})


# ---------------------------------------------------------------------------------------
# separations: the separate stage and the notebook read them through one path


@pytest.mark.parametrize(
    "separation",
    [{"function": "max", "beta": 3}, {"function": "softmax", "bta": 3}, {"function": 3}, {"function": None}, {"function": "topk", "k": 0, "weighting": "x"}],
)
def test_separate_and_the_notebook_refuse_a_separation_alike(separation):
    queries, keys = torch.rand(5, 4), torch.rand(9, 4)
    with pytest.raises(ParamError) as info:
        amemctl.recall(queries, keys, separation=separation)
    yaml = error_of(LOADED + "  - score: {}\n  - separate: " + json.dumps(separation) + "\n  - project: {}\n")
    for problem in info.value.each():
        assert problem.render() in yaml, (problem.render(), yaml)


def test_a_separation_that_cannot_stream_is_refused_when_named_in_a_notebook_as_by_validate():
    from amemctl import Separation, SeparationFunction

    class Rowless(Separation):
        name = "rowless"

        def weights(self, scores):
            return scores

    from amemctl.plugins import build_registry

    registry = build_registry(entry_points=False)
    registry.separations["rowless"] = SeparationFunction("rowless", Rowless)
    from amemctl.retrieval import separation_of

    with pytest.raises(TypeError, match="defines no reducer"):
        separation_of("rowless", registry)
    with pytest.raises(Exception, match="defines no reducer"):
        parse_text(LOADED + "  - score: {}\n  - separate: {function: rowless}\n", registry=registry)


# ---------------------------------------------------------------------------------------
# chain-recall chooses both: each takes its own parameters


def test_chain_recall_gives_its_separation_every_parameter(run_text):
    """Before, chain-recall made its separation with beta alone: topk's k was checked and then ignored."""
    text = "seed: 0\ndata: {dataset: digits, limit: 30}\nstages:\n  - associate: {mode: shift}\n  - chain-recall: {separation: topk, k: %s, steps: 3, stories: 0, permutation: permutation}\n"
    (one,) = run_text(text % 1).points
    (every,) = run_text(text % 30).points
    assert one.metrics["step_accuracy"] == 1.0  # the best memory's successor: the shift itself
    assert every.metrics["step_accuracy"] < 0.5  # every memory weighed alike: one mean for every query


def test_chain_recall_refuses_a_parameter_its_separation_does_not_take_before_the_run():
    message = error_of("data: {dataset: digits, limit: 30}\nstages:\n  - associate: {}\n  - chain-recall: {separation: max, beta: 3}\n")
    assert _lines(message) == ["bad.yaml:4:37: neither similarity 'euclidean' nor separation 'max' takes a parameter 'beta'"], message
    softmax = _stage("data: {dataset: digits, limit: 30}\nstages:\n  - associate: {}\n  - chain-recall: {separation: softmax, beta: 3}\n", "chain-recall")
    assert softmax.made("separation").describe() == amemctl.Softmax(beta=3).describe()
