"""The public retrieval API names similarities and separations as a pipeline does, plugins' too."""

from __future__ import annotations

import json

import pytest
import torch

import amemctl
from amemctl.core.separation import make_separation
from tests.conftest import error_of


def _memory(n=200, d=16, q=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(q, d, generator=g), torch.rand(n, d, generator=g), torch.rand(n, 3, generator=g)


def test_a_plugins_similarity_and_separation_by_name_give_the_objects_numbers():
    """The example plugin's `chebyshev` and `cubic`, named as a pipeline names them, are its objects."""
    from amemctl_example.plugin import chebyshev, cubic

    queries, keys, values = _memory()
    by_object = amemctl.recall(queries, keys, values, similarity=amemctl.Similarity("chebyshev", chebyshev, distance=True), separation=cubic(normalize=True), distance_form="inverse")
    by_name = amemctl.recall(queries, keys, values, similarity="chebyshev", separation={"function": "cubic", "normalize": True}, distance_form="inverse")
    assert torch.equal(by_name.output, by_object.output) and torch.equal(by_name.index, by_object.index)
    assert torch.equal(amemctl.retrieve(queries, keys, similarity="chebyshev", separation="cubic"), amemctl.retrieve(queries, keys, similarity=amemctl.Similarity("chebyshev", chebyshev, distance=True), separation=cubic()))

    net = amemctl.UniversalHopfield(keys, similarity="chebyshev", separation={"function": "softmax", "beta": 50})
    assert isinstance(net, amemctl.core.modules.UniversalHopfield)
    assert torch.equal(net(queries), amemctl.retrieve(queries, keys, similarity="chebyshev", separation=amemctl.Softmax(beta=50)))
    assert torch.equal(net.nearest(queries), by_object.index)


@pytest.mark.parametrize(
    "mapping",
    [
        {"function": "sparsemax", "beta": 10},
        {"function": "topk", "k": 5},
        {"function": "topk", "k": 5, "weighting": "softmax", "beta": 3},
        {"function": "softmax", "beta": 1000},
        {"function": "polynomial", "n": 3, "normalize": False},
    ],
)
def test_a_separation_written_as_the_yaml_writes_it_is_the_object(mapping):
    queries, keys, values = _memory()
    params = {k: v for k, v in mapping.items() if k != "function"}
    expected = amemctl.retrieve(queries, keys, values, similarity="cosine", separation=make_separation(mapping["function"], **params))
    assert torch.equal(amemctl.retrieve(queries, keys, values, similarity="cosine", separation=mapping), expected)
    net = amemctl.UniversalHopfield(keys, values, similarity="cosine", separation=mapping)
    assert net.separation.describe() == make_separation(mapping["function"], **params).describe()
    assert torch.equal(net(queries), expected)


YAML = "data: {dataset: digits, limit: 20}\nstages:\n  - corrupt: {kind: gaussian, variance: 0.1}\n  - score: {}\n  - separate: %s\n  - project: {}\n"


@pytest.mark.parametrize(
    "separation, said",
    [
        ({"function": "sparsemax", "beta": -1.0}, "parameter 'beta' is -1.0, out of range\n  hint: beta takes a number >= 0"),
        ({"function": "topk", "k": 0}, "parameter 'k' is 0, out of range\n  hint: k takes an integer >= 1"),
        ({"function": "sparsemax", "bta": 10}, "separation 'sparsemax' takes no parameter 'bta'\n  hint: did you mean 'beta'?"),
        ({"function": "sprsemax", "beta": 10}, "unknown separation 'sprsemax'"),
    ],
)
def test_a_bad_separation_is_refused_with_the_pipelines_message(separation, said):
    queries, keys, _ = _memory()
    with pytest.raises(amemctl.ParamError) as info:
        amemctl.recall(queries, keys, separation=separation)
    assert said in info.value.render()
    yaml = error_of(YAML % json.dumps(separation))  # JSON is YAML
    assert info.value.render() in yaml  # the same words, the YAML's at its line
    with pytest.raises(amemctl.ParamError, match=said.splitlines()[0].replace("(", r"\(").replace(")", r"\)")):
        amemctl.UniversalHopfield(keys, separation=separation)


def test_a_misnamed_similarity_or_a_mapping_without_a_function_is_told_what_to_write():
    queries, keys, _ = _memory()
    with pytest.raises(amemctl.ParamError, match="unknown similarity 'chebyshv'(.|\n)*did you mean 'chebyshev'"):
        amemctl.retrieve(queries, keys, similarity="chebyshv")
    with pytest.raises(amemctl.ParamError, match="separation must be a name, a mapping"):
        amemctl.retrieve(queries, keys, separation=3)
    with pytest.raises(amemctl.ParamError, match="parameter 'function' must be a string, got 3"):  # as `separate: {function: 3}` is told
        amemctl.retrieve(queries, keys, separation={"function": 3})


def test_a_mapping_naming_no_function_chooses_the_default_as_a_stage_does():
    """`separate: {beta: 3}` is softmax with beta 3; the notebook's `{"beta": 3}` was refused, as naming no function."""
    queries, keys, _ = _memory()
    assert torch.equal(amemctl.retrieve(queries, keys, separation={"beta": 3}), amemctl.retrieve(queries, keys, separation=amemctl.Softmax(beta=3)))
    with pytest.raises(amemctl.ParamError, match="similarity 'dot' takes no parameter 'p'"):
        amemctl.retrieve(queries, keys, similarity={"p": 3})


def test_core_recall_knows_no_plugins():
    """amemctl.core is the math: a plugin's name is unknown there, and known at the top level."""
    from amemctl.core.retrieval import recall

    queries, keys, _ = _memory()
    with pytest.raises(amemctl.StageError, match="unknown similarity 'chebyshev'"):
        recall(queries, keys, similarity="chebyshev")
    assert amemctl.recall(queries, keys, similarity="chebyshev").output.shape == (7, 16)


def test_what_a_notebook_catches_or_passes_is_exported_and_documented():
    from amemctl import errors
    from amemctl.core import retrieval
    from tests.test_docs import _api_entries

    assert amemctl.Shard is retrieval.Shard
    assert (amemctl.DamagedStore, amemctl.RunFolderError, amemctl.FileSystemError) == (errors.DamagedStore, errors.RunFolderError, errors.FileSystemError)
    assert issubclass(amemctl.DamagedStore, amemctl.StoreError)
    assert {"Shard", "DamagedStore", "RunFolderError", "FileSystemError"} <= set(amemctl.__all__) & _api_entries()


def test_what_run_file_returns_and_sharded_recall_are_public_and_documented():
    """`run_file` returned a RunResult that `import amemctl` did not offer; `sharded_recall` was the engine's alone."""
    from amemctl.engine import runner
    from tests.test_docs import _api_entries

    assert amemctl.RunResult is runner.RunResult
    assert {"RunResult", "sharded_recall"} <= set(amemctl.__all__) & _api_entries()


def test_results_of_a_folder_that_is_no_run_is_a_run_folder_error(tmp_path):
    with pytest.raises(amemctl.RunFolderError, match="no metrics.json"):
        amemctl.results(tmp_path)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(amemctl.RunFolderError, match="cannot read"):
        amemctl.results(tmp_path)


def test_a_one_rank_shard_gives_the_whole_memorys_answer(tmp_path):
    """`Shard` as a notebook passes it: this process the only rank, holding rows 0..n of n."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    queries, keys, values = _memory()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sharded = amemctl.recall(queries, keys, values, separation={"function": "topk", "k": 3}, shard=amemctl.Shard(None, 0, len(keys)))
        # the whole memory given, a plugin's similarity and a separation by name, as `recall` takes them
        split = amemctl.sharded_recall(queries, keys, values, similarity="chebyshev", separation={"function": "topk", "k": 3})
    finally:
        dist.destroy_process_group()
    whole = amemctl.recall(queries, keys, values, separation={"function": "topk", "k": 3})
    assert torch.equal(sharded.output, whole.output) and torch.equal(sharded.index, whole.index)
    by_chebyshev = amemctl.recall(queries, keys, values, similarity="chebyshev", separation={"function": "topk", "k": 3})
    assert torch.equal(split.output, by_chebyshev.output) and torch.equal(split.index, by_chebyshev.index)


def test_a_plugins_corruption_by_name_and_in_a_compose_is_its_own():
    """`amemctl.corrupt` knew the built-in kinds only: the example plugin's dropout_rows was an unknown corruption."""
    from amemctl_example.plugin import dropout_rows

    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    got = amemctl.corrupt(images, "dropout_rows", torch.Generator().manual_seed(3), p=0.5)
    assert torch.equal(got, dropout_rows(images, torch.Generator().manual_seed(3), p=0.5))
    composed = amemctl.corrupt(images, "compose", torch.Generator().manual_seed(3), steps=[{"kind": "dropout_rows", "p": 0.5}, {"kind": "mask_zero", "fraction": 0.5}])
    assert torch.equal(composed, amemctl.corrupt(got, "mask_zero", fraction=0.5))
    with pytest.raises(amemctl.ParamError, match="parameter 'p' is 2.0, out of range"):
        amemctl.corrupt(images, "dropout_rows", p=2.0)
    with pytest.raises(amemctl.ParamError, match="did you mean 'dropout_rows'"):
        amemctl.corrupt(images, "dropout_row")
