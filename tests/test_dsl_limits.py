"""Small hostile pipeline files are refused quickly and clearly, before they can exhaust memory or the stack."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from amemctl.cli import main
from amemctl.dsl.pipeline import apply_overrides, parse_text
from amemctl.dsl.source import MAX_BYTES, MAX_DEPTH, MAX_NODES, load_yaml, read_yaml
from amemctl.errors import PipelineError
from tests.conftest import error_of

GOOD = "stages:\n  - load: {dataset: digits, limit: 20}\n  - corrupt: {kind: gaussian, variance: 0.1, count: 5}\n  - score: {}\n  - separate: {function: softmax, beta: 1}\n  - project: {}\n  - evaluate: {}\n"


def test_an_alias_bomb_is_refused_before_it_expands():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values once expanded
    with pytest.raises(PipelineError, match=f"more than {MAX_NODES:,} values once its aliases"):
        load_yaml("\n".join(lines) + "\n", "bomb.yaml")
    data, _ = load_yaml("base: &b {beta: 1}\nuse: *b\n", "ok.yaml")  # ordinary aliases still work
    assert data["use"] == {"beta": 1}


def test_a_merge_key_bomb_is_refused_before_it_expands():
    def level(i: int) -> str:  # each level merges ten copies of the one below: 10^9 values at level 8
        if i == 0:
            return "&a0 {" + ", ".join(f"k{j}: 1" for j in range(10)) + "}"
        return f"&a{i} {{<<: [{level(i - 1)}, " + ", ".join([f"*a{i - 1}"] * 9) + "]}"

    with pytest.raises(PipelineError, match="values once its aliases .* and merges"):
        load_yaml("x: " + level(8) + "\n", "bomb.yaml")


def test_merge_keys_give_defaults_that_the_mapping_overrides():
    data, source = load_yaml("sep: &s {function: softmax, beta: 1}\nuse: {<<: *s, beta: 10}\nboth: {<<: [{a: 1}, {a: 2, b: 3}]}\n", "m.yaml")
    assert data["use"] == {"function": "softmax", "beta": 10} and data["both"] == {"a": 1, "b": 3}  # the first merged wins
    assert (source.value(("use", "beta")).line, source.value(("use", "function")).line) == (2, 1)  # each where it was written
    with pytest.raises(PipelineError, match="a merge key"):
        load_yaml("x: {<<: 3}\n", "m.yaml")


@pytest.mark.parametrize("what", ["folder", "device", "large"])
def test_files_that_are_not_pipelines_are_refused_before_they_are_read(tmp_path, what):
    path = {"folder": tmp_path, "device": "/dev/zero", "large": tmp_path / "big.yaml"}[what]
    if what == "large":
        path.write_text("# " + "x" * MAX_BYTES + "\nstages: []\n")
    with pytest.raises(PipelineError, match="is not a pipeline file|larger than 1 MiB") as info:
        read_yaml(path)
    assert str(path) in str(info.value)


def test_deep_nesting_is_refused_without_a_recursion_error():
    text = "x: " + "{a: " * 330 + "1" + "}" * 330 + "\n"
    with pytest.raises(PipelineError, match=f"nests more than {MAX_DEPTH}") as info:
        load_yaml(text, "deep.yaml")
    assert info.value.location.line == 1
    load_yaml("x: " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\n", "ok.yaml")


@pytest.mark.parametrize("tagged", ["!!python/object/apply:os.system ['true']", "!!python/object/apply:os.system {args: ['true']}", "!!set {a: null}"])
def test_tags_on_lists_and_mappings_are_refused_not_dropped(tagged):
    with pytest.raises(PipelineError, match="the YAML tag !!.* is not allowed") as info:
        load_yaml(f"seed: 1\nstages: {tagged}\n", "tags.yaml")
    assert info.value.location.line == 2
    doc, source = load_yaml(GOOD, "good.yaml")
    with pytest.raises(PipelineError, match="is not allowed"):
        apply_overrides(doc, [f"seed={tagged}"], source)


def test_a_huge_sweep_is_refused_by_its_size_before_expansion(monkeypatch):
    values = ", ".join(str(i) for i in range(1000))
    text = GOOD.replace("beta: 1", "beta: \"${a}\"") + f"sweep:\n  a: [{values}]\n  b: [{values}]\n  c: [{values}]\n"
    message = error_of(text)
    assert "the sweep has 1,000,000,000 points (1,000 a x 1,000 b x 1,000 c), more than the limit of 10,000" in message
    assert "AMEMCTL_MAX_POINTS=N" in message
    monkeypatch.setenv("AMEMCTL_MAX_POINTS", "100")
    assert "more than the limit of 100" in error_of(GOOD.replace("beta: 1", "beta: \"${a}\"") + "sweep:\n  a: [" + ", ".join(map(str, range(101))) + "]\n")


def test_repeats_count_against_the_sweep_limit(monkeypatch):
    """Each repeat is a run of its own: 102 points x 100,000,000 repeats is refused before anything is planned."""
    swept = GOOD.replace("beta: 1", "beta: \"${a}\"") + "sweep:\n  a: [" + ", ".join(map(str, range(102))) + "]\n"
    message = error_of(swept + "repeats: 100000000\n")
    assert "bad.yaml:10:10: 102 sweep point(s) x 100,000,000 repeats are 10,200,000,000 point runs, more than the limit of 10,000" in message
    assert "lower `repeats`" in message and "AMEMCTL_MAX_POINTS=N" in message
    monkeypatch.setenv("AMEMCTL_MAX_POINTS", "1000")
    assert "more than the limit of 1,000" in error_of(swept + "repeats: 10\n")
    assert parse_text(swept + "repeats: 9\n", "ok.yaml").repeats == 9


def test_repeats_set_on_the_command_line_are_refused_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AMEMCTL_MAX_POINTS", "50")  # small, so that without the check this test ends quickly too
    (tmp_path / "p.yaml").write_text(GOOD)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml"), "--set", "repeats=51", "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 2 and "--set repeats=51: 1 sweep point(s) x 51 repeats are 51 point runs, more than the limit of 50" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs_escape", "a/b", "..", ".", "with space", ""])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(name):
    message = error_of(f"name: {name!r}\n" + GOOD)
    assert f"bad.yaml:1:7: `name` must be a plain folder name (letters, digits, - _ .), got {name!r}" in message and "--out" in message


def test_a_name_set_on_the_command_line_cannot_put_the_run_outside_out(tmp_path):
    (tmp_path / "p.yaml").write_text(GOOD)
    escaped = tmp_path / "abs_escape"
    result = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml"), "--set", f"name={escaped}", "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 2 and f"--set name={escaped}: `name` must be a plain folder name" in result.output
    assert not escaped.exists() and not (tmp_path / "runs").exists()
    assert parse_text("name: my-run_2.b\n" + GOOD, "p.yaml").name == "my-run_2.b"
    assert parse_text(GOOD, "some file.yaml").name == "some file"  # the file's name, one path component, as before


def test_nan_parameters_are_refused_at_validation():
    assert "parameter 'beta' is NaN" in error_of(GOOD.replace("beta: 1", "beta: .nan"))


def test_infinite_parameters_are_refused_at_validation():
    """An infinite number where a finite one is meant (a chunk size, a threshold) would overflow later, in the run."""
    message = error_of("stages:\n  - load: {dataset: digits, limit: 20}\n  - persist: {store: s.zarr, chunk_mib: .inf}\n")
    assert message.startswith("bad.yaml:3:") and "parameter 'chunk_mib' is inf, not a finite number" in message
    assert "parameter 'beta' is inf, not a finite number" in error_of(GOOD.replace("beta: 1", "beta: inf"))
    assert "parameter 'threshold' is -inf" in error_of("stages:\n  - load: {dataset: digits, limit: 20}\n  - binarize: {threshold: -.inf}\n")
