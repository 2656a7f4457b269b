"""Pipeline checking: every kind of mistake is reported at its file:line:column with a fix."""

from __future__ import annotations

import pytest

from amemctl.dsl.pipeline import apply_overrides, load_pipeline, parse_size, parse_text
from amemctl.dsl.source import load_yaml
from amemctl.errors import AmemctlError, PipelineError
from tests.conftest import error_of

GOOD = """\
name: t
data: {dataset: digits, limit: 50}
sweep:
  beta: [1, 10]
stages:
  - corrupt: {kind: gaussian, variance: 0.05}
  - score: {similarity: cosine}
  - separate: {function: softmax, beta: "${beta}"}
  - project: {}
  - evaluate: {}
"""


def test_a_good_pipeline_plans_one_point_per_sweep_value():
    pipeline = parse_text(GOOD)
    assert [plan.point.values for plan in pipeline.plans] == [{"beta": 1}, {"beta": 10}]
    separate = pipeline.plans[1].stages[3].stage
    assert separate.beta == 10.0 and isinstance(separate.beta, float)
    assert pipeline.plans[0].stages[0].stage.name == "load"  # `data:` is a load stage in front


def test_source_map_remembers_lines_and_columns():
    data, source = load_yaml(GOOD, "p.yaml")
    assert str(source.value(("stages", 1, "score", "similarity"))) == "p.yaml:7:25"
    assert str(source.key(("sweep", "beta"))) == "p.yaml:4:3"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("name: [unclosed\n", "bad.yaml:2:1: invalid YAML"),
        ("- load: {}\n", "bad.yaml:1:1: a pipeline is a mapping of keys (name, stages, ...), not a list"),
        ("", "bad.yaml: the pipeline is empty"),
        ("# only a comment\n", "bad.yaml: the pipeline is empty"),
        ("stagess: []\n", "bad.yaml:1:1: unknown key 'stagess'\n  hint: did you mean 'stages'?"),
        ("stages: []\n", "bad.yaml:1:9: `stages:` must be a non-empty list"),
        ("stages:\n  - lod: {dataset: digits}\n", "bad.yaml:2:5: unknown stage 'lod'\n  hint: did you mean 'load'?"),
        ("stages:\n  - load: {dataset: digits, limt: 3}\n", "bad.yaml:2:29: stage 'load' has no parameter 'limt'\n  hint: did you mean 'limit'?"),
        ("stages:\n  - load: {dataset: digit}\n", "bad.yaml:2:21: unknown dataset 'digit'\n  hint: did you mean 'digits'?"),
        ("stages:\n  - load: {}\n", "bad.yaml:2:5: stage 'load' needs parameter 'dataset'"),
        ("stages:\n  - load: {dataset: digits, limit: -3}\n", "bad.yaml:2:36: parameter 'limit' is -3, out of range\n  hint: limit takes an integer >= 1"),
        ("stages:\n  - load: {dataset: digits}\n  - corrupt: {count: 2.5}\n", "bad.yaml:3:22: parameter 'count' must be an integer, got 2.5"),
        (
            "stages:\n  - load: {dataset: digits}\n  - corrupt: {}\n  - score: {}\n  - separate: {beta: high}\n",
            "bad.yaml:5:22: parameter 'beta' must be a number, got 'high'",
        ),
        (
            "stages:\n  - load: {dataset: digits}\n  - corrupt: {}\n  - score: {}\n  - separate: {function: max, beta: 3}\n",
            "bad.yaml:5:31: separation 'max' takes no parameter 'beta'",
        ),
        (
            "stages:\n  - load: {dataset: digits}\n  - corrupt: {kind: gaussian, p: 0.2}\n",
            "bad.yaml:3:31: corruption 'gaussian' takes no parameter 'p'\n  hint: gaussian accepts mean, variance",
        ),
        (
            "stages:\n  - load: {dataset: digits}\n  - corrupt: {kind: compose, steps: [{kind: crop, scale: [0.5, 2]}]}\n",
            "bad.yaml:3:37: step 1 of compose: scale = [0.5, 2.0] is out of range",
        ),
        ("stages:\n  - load: {dataset: digits}\n  - corrupt: {kind: compose}\n", "corruption 'compose' needs `steps:`"),
        ("stages:\n  - load: {dataset: folder}\n", "bad.yaml:2:11: dataset 'folder' needs `root:`"),
        (
            "sweep:\n  c: [{name: a, variance: 0.1}, {name: b}]\nstages:\n  - load: {dataset: digits}\n  - corrupt: {variance: '${c.variance}'}\n",
            "bad.yaml:2:33: ${c.variance}: the sweep value 'b' of 'c' has no such field",
        ),
        ("sweep:\n  m: [{name: x, beta: 2}, {name: y}]\nstages:\n  - load: {dataset: digits}\n  - corrupt: {}\n  - model: {name: mchn, beta: '${m.beta}'}\n", "bad.yaml:2:27: ${m.beta}: the sweep value 'y'"),
        ("stages:\n  - load: {dataset: digits}\n  - score: {}\n", "bad.yaml:3:5: stage 'score' reads tensor 'queries' (queries), which no earlier stage writes"),
        (
            "stages:\n  - load: {dataset: digits}\n  - corrupt: {}\n  - score: {memory: pattern}\n",
            "bad.yaml:4:21: stage 'score' reads tensor 'pattern' (memory), which no earlier stage writes\n  hint: did you mean 'patterns'?",
        ),
        ("stages:\n  - score:\n    similarity: dot\n", "bad.yaml:2:5: a stage entry has one key, the stage's name; this one has 2 (score, similarity)\n  hint: indent similarity under `score:`"),
        ("sweep: {beta: [1]}\nstages:\n  - load: {dataset: digits}\n", "bad.yaml:1:9: sweep variable 'beta' is never used"),
        ("sweep: {beta: 3}\nstages:\n  - load: {dataset: digits, limit: '${beta}'}\n", "bad.yaml:1:15: sweep variable 'beta' needs a non-empty list of values"),
        ("stages:\n  - load: {dataset: digits, limit: '${limitt}'}\n", "bad.yaml:2:36: ${limitt} is not a sweep variable"),
        ("device: gpu\nstages:\n  - load: {dataset: digits}\n", "bad.yaml:1:9: unknown device 'gpu'"),
        ("budget: lots\nstages:\n  - load: {dataset: digits}\n", "bad.yaml:1:9: `budget` must be a positive size"),
        ("seed: 1.5\nstages:\n  - load: {dataset: digits}\n", "bad.yaml:1:7: `seed` must be an integer"),
        ("seed: -1\nstages:\n  - load: {dataset: digits}\n", "bad.yaml:1:7: `seed` must be at least 0, got -1"),  # it ran, then crashed in numpy
        ("stages:\n  - load: {dataset: digits}\n  - load: {dataset: digits, dataset: digits}\n", "bad.yaml:3:29: key 'dataset' appears twice"),
        (
            "sweep: {n: [10, -1]}\nstages:\n  - load: {dataset: digits, limit: '${n}'}\n",
            "bad.yaml:1:17: parameter 'limit' is -1, out of range (from sweep variable 'n', value 2)",
        ),
        ("stages:\n  - load: {dataset: digits}\nreport: {tables: [{metric: error_index}]}\n", "bad.yaml:3:28: no stage records the metric 'error_index'"),
        (
            "stages:\n  - load: {dataset: digits}\n  - corrupt: {}\n  - score: {}\n  - separate: {}\n  - project: {}\n  - evaluate: {}\n"
            "report: {tables: [{metric: error_idx, rows: beta}]}\n",
            "bad.yaml:8:28: no stage records the metric 'error_idx'\n  hint: did you mean 'error_index'?",
        ),
    ],
)
def test_mistakes_are_reported_where_they_are(text, expected):
    assert expected in error_of(text)


def test_all_problems_are_reported_together():
    message = error_of("stagess: []\nseed: x\nstages:\n  - lod: {}\n")
    assert "1:1: unknown key 'stagess'" in message and "2:7: `seed`" in message


def test_problems_are_listed_in_the_order_of_the_file():
    """Errors are found point by point: one only the second sweep value makes must still come in file order."""
    text = "data: {dataset: digits, limit: 50}\nsweep:\n  sim: [cosine, cosin]\nstages:\n  - corrupt: {kind: gausian}\n  - score: {similarity: '${sim}'}\n  - separate: {function: softmax, bogus: 1}\n  - project: {}\n"
    lines = [int(line.split(":")[1]) for line in error_of(text).splitlines() if line.startswith("bad.yaml:")]
    assert lines == [3, 5, 7]


def test_a_mistake_only_one_sweep_point_makes_is_found_before_running():
    text = GOOD.replace("beta: [1, 10]", "beta: [1, high]")
    assert "bad.yaml:4:13: parameter 'beta' must be a number, got 'high'" in error_of(text)


def test_yaml_1e4_reads_as_a_number():
    pipeline = parse_text(GOOD.replace("beta: [1, 10]", "beta: [1e4]"))
    assert pipeline.plans[0].stages[3].stage.beta == 1e4


def test_a_sweep_value_can_be_a_whole_parameter_mapping():
    text = GOOD.replace("beta: [1, 10]", "sep: [{function: max}, {function: topk, k: 3}]").replace(
        '{function: softmax, beta: "${beta}"}', "${sep}"
    )
    stages = [plan.stages[3].stage for plan in parse_text(text).plans]
    assert [s.describe() for s in stages] == ["max", "topk(k=3, uniform)"]


def test_overrides_reach_stages_by_name_or_index(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    pipeline = load_pipeline(path, ["seed=3", "stages.score.similarity=manhattan", "stages.0.variance=0.2", "sweep.beta=[5]"])
    assert pipeline.seed == 3 and len(pipeline.plans) == 1
    stages = pipeline.plans[0].stages
    assert stages[2].stage.similarity == "manhattan" and stages[1].stage.variance == 0.2
    with pytest.raises(PipelineError, match="--set stages.scor.x=1: no stage named 'scor'"):
        load_pipeline(path, ["stages.scor.x=1"])
    with pytest.raises(PipelineError, match="bad.yaml|key.path=value"):
        apply_overrides({}, ["seed"], load_yaml("", "bad.yaml")[1])


def _hinted(hint: str) -> list[list[str]]:
    """The `--set A=B` overrides a hint offers, each as the list of overrides one command gives (shell quoting removed)."""
    import shlex

    return [[word for word in shlex.split(part.split(": ", 1)[1]) if word != "--set"] for part in hint.split("; ")]


def test_setting_a_stage_entry_to_parameters_is_refused_with_overrides_that_work(tmp_path):
    """`--set stages.score={similarity: cosine}` replaced the entry `score: {...}` by a stage called `similarity`,
    told as "unknown stage 'similarity'; run `amemctl stages`". An override's value replaces what is at its path,
    and `stages.score` is the whole entry: the mapping is refused, and each override the hint offers works."""
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, ["stages.score={similarity: manhattan, distance_form: inverse}"])
    error = info.value
    assert str(error.location) == "--set stages.score={similarity: manhattan, distance_form: inverse}"
    assert "stages.score is the whole entry of stage 'score'" in error.message and "unknown stage" not in error.message
    each, whole = _hinted(error.hint)
    assert each == ["stages.score.similarity=manhattan", "stages.score.distance_form=inverse"]
    assert whole == ["stages.score={score: {similarity: manhattan, distance_form: inverse}}"]
    for overrides in (each, whole):
        score = load_pipeline(path, overrides).plans[0].stages[2].stage
        assert (score.name, score.similarity, score.distance_form) == ("score", "manhattan", "inverse")
    path.write_text(GOOD.replace("sweep:\n  beta: [1, 10]\n", "").replace(', beta: "${beta}"', ""))
    with pytest.raises(PipelineError) as info:  # a name where the entry is: the function it would choose
        load_pipeline(path, ["stages.separate=max"])
    (hinted, _) = _hinted(info.value.hint)
    assert hinted == ["stages.separate.function=max"] and load_pipeline(path, hinted).plans[0].stages[3].stage.describe() == "max"


def test_a_stage_entry_can_still_be_replaced_by_another_and_a_bare_stage_takes_parameters(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("  - project: {}\n", "  - project\n"))
    assert load_pipeline(path, ["stages.score={score: {similarity: manhattan}}"]).plans[0].stages[2].stage.similarity == "manhattan"
    assert load_pipeline(path, ["stages.evaluate=project", "stages.3.steps=2"]).plans[0].stages[-1].stage.name == "project"
    assert load_pipeline(path, ["stages.project.steps=3"]).plans[0].stages[4].stage.steps == 3  # `- project` alone was "not a mapping or list"
    with pytest.raises(AmemctlError, match="unknown stage 'scroe'"):  # an entry with a misspelt name: told as one
        load_pipeline(path, ["stages.score={scroe: {similarity: manhattan}}"])


def test_an_override_with_a_bad_value_is_located_at_the_override(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    with pytest.raises(PipelineError, match=r"--set stages.score.similarity=manhatan: unknown similarity 'manhatan'"):
        load_pipeline(path, ["stages.score.similarity=manhatan"])


def test_an_override_of_a_swept_parameter_says_to_set_the_sweep(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    with pytest.raises(PipelineError, match=r"--set stages.separate.beta=2: stages.separate.beta is swept by \$\{beta\}") as info:
        load_pipeline(path, ["stages.separate.beta=2"])  # the sweep variable alone would be reported, not the override
    assert "--set 'sweep.beta=[...]'" in info.value.render()
    both = load_pipeline(path, ["stages.separate.beta=2", "sweep={}"])  # dropping the sweep too is a fixed value
    assert [s.stage.beta for p in both.plans for s in p.stages if s.stage.name == "separate"] == [2.0]


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(PipelineError, match="no such pipeline file"):
        load_pipeline(tmp_path / "nope.yaml")


def test_sizes():
    assert parse_size("256MiB") == 256 * 2**20 and parse_size("1.5GB") == 1_500_000_000 and parse_size(4096) == 4096
    for bad in ("-1", 0, "12 parsecs", True):
        with pytest.raises(ValueError):
            parse_size(bad)


DAM = """\
sweep:
  order: [{name: a, n: 2}, {name: b, n: 3}]
stages:
  - load: {dataset: digits, split: test, output: test_images, labels: test_labels}
  - load: {dataset: digits, split: train}
  - train-dam: {n: "${order.n}", epochs: 1, test: test_images, test_labels: test_labels}
report: {tables: [{metric: dam_test_accuracy, columns: order}]}
"""


@pytest.mark.parametrize(
    "typo,fixed,expected",
    [
        ("- load: {dataset: digits, split: test", "- lod: {dataset: digits, split: test", "bad.yaml:4:5: unknown stage 'lod'"),
        ("output: test_images", "outptu: test_images", "bad.yaml:4:42: stage 'load' has no parameter 'outptu'"),
        ("- train-dam:", "- train-dma:", "bad.yaml:6:5: unknown stage 'train-dma'"),
        ('{n: "${order.n}"', '{m: "${order.n}"', "bad.yaml:6:17: stage 'train-dam' has no parameter 'm'"),
        ("  order:", "  ordr:", "bad.yaml:6:20: ${order} is not a sweep variable\n  hint: the sweep defines 'ordr'"),
    ],
)
def test_one_typo_gives_one_error_not_a_cascade(typo, fixed, expected):
    assert parse_text(DAM).plans  # the pipeline as written is good
    message = error_of(DAM.replace(typo, fixed))
    assert expected in message
    assert message.count("bad.yaml:") == 1, message  # nothing follows from the one mistake


def test_a_reference_misspelt_in_several_places_is_reported_once():
    text = "sweep: {limit: [1]}\nstages:\n  - load: {dataset: digits, limit: '${limt}'}\n  - corrupt: {count: '${limt}'}\n"
    message = error_of(text)
    assert message.count("is not a sweep variable") == 1 and "(used 2 times)" in message and "never used" not in message


def test_an_evaluate_prefix_without_a_separator_is_refused_where_it_is_written():
    """`prefix: pass1` named the metrics pass1error_index, pass1mse...: reports read an evaluate prefix only
    where a word ends (a plugin's rmse is not "r: mean squared error"), so their titles, `runs show` and the
    figures showed the raw name where `pass1_` reads "pass1: wrongly retrieved"."""
    from amemctl.stages.evaluate import Evaluate

    text = "stages:\n  - load: {dataset: digits}\n  - corrupt: {}\n  - score: {}\n  - separate: {}\n  - project: {}\n  - evaluate: {prefix: %s}\n"
    message = error_of(text % "pass1")
    assert message.startswith("bad.yaml:7:24: evaluate's prefix 'pass1' does not end with a separator"), message
    assert "hint: end it with one: prefix: pass1_ (metrics pass1_error_index, pass1_error_pixels, pass1_mse, titled 'pass1: wrongly retrieved'" in message
    for fine in ("pass1_", "pass1.", "pass1-", "pass1/", "''"):
        parse_text(text % fine, "good.yaml")
    for prefixed in ("pass1_", "pass1.", "pass1-", "pass1/", "pass1 - "):
        declared = Evaluate(prefix=prefixed).metrics()[0]
        assert (declared.name, declared.title) == (f"{prefixed}error_index", "pass1: wrongly retrieved (nearest stored pattern is not the original)"), prefixed
