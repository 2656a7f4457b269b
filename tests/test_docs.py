"""The documentation says what the code does."""

from __future__ import annotations

import pytest

from amemctl.dsl.pipeline import TOP_LEVEL
from amemctl.plugins import build_registry
from amemctl.stage_docs import stage_reference
from tests.conftest import ROOT


def test_the_stage_reference_is_regenerated_from_the_code():
    expected = stage_reference(build_registry(entry_points=False))
    assert (ROOT / "docs" / "stages.md").read_text() == expected, "run: amemctl stages --markdown > docs/stages.md"


def test_every_top_level_key_is_documented():
    text = (ROOT / "docs" / "pipelines.md").read_text()
    for key in TOP_LEVEL:
        assert f"| `{key}` |" in text, key


def test_the_readme_names_the_two_commands_ci_uses():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make demo" in readme and "make test" in readme and "make test" in ci


def test_the_plugin_guides_say_that_each_ctx_rng_call_gives_the_next_stream():
    # A plugin author calling ctx.rng() per draw gets independent streams (two noise masks
    # that differ), reproduced when the stage starts again; both guides must say so, as long
    # as the code does it.
    from pathlib import Path

    import torch

    from amemctl.context import Context

    ctx = Context(torch.device("cpu"), 0, 2**20, Path("."))
    ctx.begin_stage(7)
    first, second = (torch.rand(5, generator=ctx.rng()) for _ in range(2))
    assert not torch.equal(first, second)
    assert torch.equal(first, torch.rand(5, generator=torch.Generator().manual_seed(7)))  # the stage's seed first: documented numbers stand
    ctx.begin_stage(7)
    assert torch.equal(torch.rand(5, generator=ctx.rng()), first) and torch.equal(torch.rand(5, generator=ctx.rng()), second)
    for guide in ("docs/plugins.md", "plugins/amemctl-example/README.md"):
        text = " ".join((ROOT / guide).read_text().split())
        assert "two calls never draw the same numbers" in text, guide




def _guide_example(heading: str) -> dict:
    """Run the Python example in the section `heading` of docs/plugins.md; the names it defines."""
    section = (ROOT / "docs" / "plugins.md").read_text().split(heading + "\n", 1)[1].split("\n### ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    names: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), names)
    return names


def test_the_guides_separation_example_reuses_softmax_and_its_reducer(run_text):
    import torch

    from amemctl import Softmax, StageError
    from amemctl.core.rows import TensorRows
    from amemctl.core.separation import make_separation
    from tests.conftest import error_of

    functions = {f.name: f for f in _guide_example("### `amemctl_register_separations`")["amemctl_register_separations"]()}
    scores = torch.rand(5, 40, generator=torch.Generator().manual_seed(0)) * 9 + 1  # float32 in [1, 10]
    power = functions["stable_power"](n=100)
    expected = torch.softmax(100 * scores.double().log(), 1)  # s^100 / sum s^100, in float64 and log space
    torch.testing.assert_close(power.weights(scores).double(), expected, rtol=1e-4, atol=1e-6)
    assert make_separation("polynomial", n=100).weights(scores).isnan().any()  # what it is for: s^100 overflows float32
    # streamed chunk by chunk through the wrapped softmax reducer, it gives the full-row answer
    values = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    reducer = power.reducer(5, 3, scores)
    for offset in range(0, 40, 7):
        reducer.update(scores[:, offset : offset + 7], offset, values[offset : offset + 7] if reducer.reads_values else None)
    torch.testing.assert_close(reducer.finish(TensorRows(values)), power.weights(scores) @ values)
    # tempered makes a Softmax itself (what retrieval's fast routes recognise), its temperature bounded above 0
    tempered = functions["tempered"](temperature=0.01)
    assert type(tempered) is Softmax and tempered.beta == 100

    registry = build_registry(entry_points=False)
    registry.separations.update(functions)
    text = (
        "data: {dataset: digits, limit: 60}\nsweep:\n  sep: [{function: stable_power, n: 100}, OTHER]\nstages:\n"
        "  - corrupt: {kind: gaussian, variance: 0.01}\n  - score: {similarity: SIMILARITY}\n  - separate: ${sep}\n  - project: {}\n  - evaluate: {}\n"
    )
    # through a pipeline (the fused, streamed retrieval): where s^100 fits float32 (cosines <= 1) it is the polynomial's answer...
    cosine = [p.metrics for p in run_text(text.replace("SIMILARITY", "cosine").replace("OTHER", "{function: polynomial, n: 100}"), registry=registry).points]
    assert cosine[0]["mse"] == pytest.approx(cosine[1]["mse"], rel=1e-4)
    # ...and on dot products of digits (in the thousands), where the polynomial overflows, it still retrieves, as max does
    with pytest.raises(StageError, match="overflowed to NaN"):
        run_text(text.replace("SIMILARITY", "dot").replace("OTHER", "{function: polynomial, n: 100}"), registry=registry)
    dot = [p.metrics for p in run_text(text.replace("SIMILARITY", "dot").replace("OTHER", "{function: max}"), registry=registry).points]
    assert dot[0]["error_index"] == dot[1]["error_index"]
    bad = text.replace("SIMILARITY", "dot").replace("{function: stable_power, n: 100}, OTHER", "{function: tempered, temperature: 0}")
    assert "hint: temperature takes a number > 0" in error_of(bad, registry)


def test_what_the_plugin_guide_takes_from_amemctl_is_exported():
    """Everything a plugin needs is importable from amemctl itself: what the guide names must be there."""
    import re

    import amemctl

    text = (ROOT / "docs" / "plugins.md").read_text()
    named = set(re.findall(r"\bamemctl\.([A-Z]\w*)", text))
    for imported in re.findall(r"^from amemctl import (.+)$", text, flags=re.MULTILINE):
        named |= {name.strip() for name in imported.split(",")}
    assert {"Softmax", "Reducer", "Separation", "Elementwise", "ParamError"} <= named
    for name in sorted(named):
        assert name in amemctl.__all__ and getattr(amemctl, name) is not None, name


API = ROOT / "docs" / "api.md"


def _api_sections() -> list[tuple[str, str]]:
    """(heading, body) of each `##` and `###` section of docs/api.md, in order."""
    import re

    parts = re.split(r"^(#{2,3} .*)$", API.read_text(), flags=re.MULTILINE)
    return list(zip(parts[1::2], parts[2::2]))


def _api_entries() -> set[str]:
    """The names docs/api.md documents: the code in its `###` headings and in its tables' first cells."""
    import re

    names: set[str] = set()
    for heading, body in _api_sections():
        if heading.startswith("### "):
            names |= set(re.findall(r"`([^`]+)`", heading))
        for line in body.splitlines():
            if line.startswith("| `"):
                names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def _signature_block(body: str) -> str | None:
    """A section's signature block: the ```python block right under its heading, if there is one."""
    body = body.lstrip("\n")
    return body.split("```python\n", 1)[1].split("```", 1)[0] if body.startswith("```python\n") else None


def test_every_public_name_is_documented_in_the_api_page():
    import ast

    import amemctl

    # what amemctl/__init__.py offers: what it imports from amemctl, and what __getattr__ imports on first use
    module = ast.parse((ROOT / "amemctl" / "__init__.py").read_text())
    imported = {a.asname or a.name for node in module.body if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("amemctl") for a in node.names}
    unlisted = sorted((imported | set(amemctl._LAZY) | {"random"}) - set(amemctl.__all__))
    assert not unlisted, f"amemctl/__init__.py offers {', '.join(unlisted)} without listing them in __all__: add them (and document them in docs/api.md)"
    for name in amemctl.__all__:
        assert getattr(amemctl, name) is not None, name
    documented = _api_entries()
    missing = sorted(set(amemctl.__all__) - documented)
    assert not missing, (
        f"amemctl exports {', '.join(missing)}, which docs/api.md does not document. Give each a section there, "
        "'### `NAME`' with a ```python block of its signature right under the heading and a sentence on what it is for "
        "(what a notebook uses), or a row '| `NAME` | what it is for (link to where docs/plugins.md describes it) |' "
        "in the table 'The other plugin names' (what only a plugin uses); or, if it is not meant to be public, "
        "take it out of amemctl.__all__"
    )
    stale = sorted(documented - set(amemctl.__all__))
    assert not stale, f"docs/api.md documents {', '.join(stale)}, which amemctl does not export (amemctl.__all__): remove the entries, or export the names"


def _documented_parameters(signature: str) -> list[tuple[str, str, object]]:
    """(name, kind, default or inspect's empty) of each parameter of `name(...) -> ...` as written in the docs."""
    import ast
    import inspect

    args = ast.parse(f"def _{signature[signature.index('('):]}: ...").body[0].args
    positional = [*args.posonlyargs, *args.args]
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + list(args.defaults)
    written = [(a.arg, inspect.Parameter.POSITIONAL_ONLY, d) for a, d in zip(args.posonlyargs, defaults)]
    written += [(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, d) for a, d in zip(args.args, defaults[len(args.posonlyargs) :])]
    written += [(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty)] if args.vararg else []
    written += [(a.arg, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty if d is None else d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    written += [(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty)] if args.kwarg else []
    return [(name, kind, default if default is inspect.Parameter.empty else eval(ast.unparse(default), {})) for name, kind, default in written]


def _public(path: str) -> tuple[object, object]:
    """amemctl.`path` (`recall`, `random.randn`, `UniversalHopfield.forward`) and what holds it."""
    import amemctl

    owner, target = None, amemctl
    for part in path.split("."):
        owner, target = target, getattr(target, part)
    return owner, target


def _code_parameters(path: str) -> list[tuple[str, str, object]]:
    """(name, kind, default or inspect's empty) of each parameter of amemctl.`path` (a method's without self)."""
    import dataclasses
    import inspect

    owner, target = _public(path)
    parameters = list(inspect.signature(target).parameters.values())
    if isinstance(owner, type) and inspect.isfunction(target):
        parameters = parameters[1:]  # self
    factories = {f.name: f.default_factory for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
    return [
        (p.name, p.kind, factories[p.name]() if factories.get(p.name, dataclasses.MISSING) is not dataclasses.MISSING else p.default)
        for p in parameters
    ]


def test_the_signatures_in_the_api_page_are_the_codes():
    import inspect
    import re

    import amemctl

    checked = set()
    for heading, body in _api_sections():
        block = _signature_block(body)
        signatures = re.split(r"\n(?=\S)", block.strip()) if block else []
        for signature in signatures:
            path = signature.split("(", 1)[0]
            expected = _code_parameters(path)
            code = inspect.signature(_public(path)[1])
            code = code.replace(parameters=[p.replace(annotation=p.empty) for p in code.parameters.values()], return_annotation=code.empty)
            assert _documented_parameters(signature) == expected, (
                f"docs/api.md, {heading}: {' '.join(signature.split())} is not what the code takes, {path}{code} "
                "(the same names in the same order, keyword-only where the code's are, the same defaults)"
            )
            checked.add(path)
        for name in re.findall(r"`([^`]+)`", heading) if heading.startswith("### ") else []:
            if inspect.isfunction(getattr(amemctl, name)):
                assert name in checked, f"docs/api.md, {heading}: the function {name} needs its signature in the ```python block right under the heading"
    assert {"retrieve", "recall", "Recall", "UniversalHopfield", "TensorRows", "run_file", "results", "random.randn", "Context.rng"} <= checked


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_the_links_of_every_page_lead_somewhere(page):
    """Each link of the README and docs/ leads to a file that exists and, with an #anchor, to one of its headings
    (docs/stages.md is generated: its links to the kinds' sections are checked here too)."""
    import re

    source = ROOT / page
    for target, anchor in re.findall(r"\]\(([\w./-]*)(?:#([\w-]+))?\)", source.read_text()):
        linked = source.parent / target if target else source
        assert linked.exists(), f"{page} links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", linked.read_text(), flags=re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}  # GitHub's anchors
            assert anchor in slugs, f"{page} links to {target}#{anchor}, a heading {linked.name} does not have"


def _api_example(section: str) -> str:
    """The Python example of a `##` section of docs/api.md (its first block that is not a signature)."""
    body = dict(_api_sections())[section]
    return body.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_api_pages_retrieval_example_recalls_what_it_says():
    import torch

    names: dict = {}
    exec(compile(_api_example("## Retrieval"), "docs/api.md", "exec"), names)
    memories, found = names["memories"], names["found"]
    assert torch.equal(found.index, torch.arange(4)) and found.unweighted == 0  # as the comment says
    assert names["out"].shape == (4, 1, 8, 8)
    from amemctl.core.separation import TopK

    torch.testing.assert_close(names["top5"], names["retrieve"](names["queries"], memories, similarity="manhattan", separation=TopK(k=5)))  # the mapping is the object
    torch.testing.assert_close(names["out"], memories[:4])  # beta = 1000: the recalled images themselves
    assert torch.equal(names["completed"], names["bottoms"][:4])  # the bottom halves, from the top halves
    assert names["again"].shape == (4, 1, 8, 8)
    torch.testing.assert_close(names["net"].nearest(names["queries"]), found.index)


def test_the_api_pages_run_file_example_runs(tmp_path, monkeypatch):
    import amemctl

    monkeypatch.chdir(tmp_path)  # its run folder and store go here
    code = _api_example("## Running pipelines").replace('"pipelines/', f'"{ROOT}/pipelines/')
    names: dict = {}
    exec(compile(code, "docs/api.md", "exec"), names)
    run, rows = names["run"], names["rows"]
    assert isinstance(run, amemctl.RunResult)  # what the page says run_file returns, and `import amemctl` offers
    assert run.status == "ok" and (tmp_path / run.run_dir / "metrics.json").is_file()
    assert len(rows) == len(run.points) == 16 and rows[0]["stored"] == 300
    assert names["best"]["error_index"] == min(row["error_index"] for row in rows)
