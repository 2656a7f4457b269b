"""Files, folders and stores the stages read (Param reads= / writes=, Stage.files): `validate` and `run` check
them before anything runs, at the line of the parameter that names them, with the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from amemctl import FileUse, MemoryStore, Param, Stage
from amemctl.cli import main
from amemctl.dsl.pipeline import parse_text
from amemctl.engine import files
from amemctl.engine.runner import run_pipeline
from amemctl.errors import AmemctlError, DataError, StoreError
from amemctl.plugins import build_registry


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _store(path: Path, rows: int = 20) -> MemoryStore:
    store = MemoryStore.create(path, chunk_bytes=256)
    store.append(patterns=torch.rand(rows, 1, 4, 4), labels=torch.arange(rows))
    return store


READS = """\
name: reads
sweep:
  store: [stores/absent.zarr, stores/there.zarr]
stages:
  - open_store: {store: "${store}"}
  - embed: {checkpoint: phi.pt, output: codes}
  - load: {dataset: folder, root: images, output: others, labels: null}
  - generate: {checkpoint: weights, input: codes}
  - persist: {store: stores/made.zarr, keys: {codes: codes}}
  - open_store: {store: stores/made.zarr, patterns: again}
"""


def test_validate_names_every_missing_path_at_its_line_with_the_fix(tmp_path, monkeypatch):
    """A pipeline validated, then failed minutes into its run on a mistyped store, checkpoint or image folder."""
    monkeypatch.chdir(tmp_path)
    Path("reads.yaml").write_text(READS)
    _store(Path("stores/there.zarr"))
    Path("weights").mkdir()
    result = _invoke("validate", "reads.yaml")
    assert result.exit_code == 2 and "Traceback" not in result.output
    told = result.output
    assert "reads.yaml:3:11: stage 'open_store' reads the amemctl store 'stores/absent.zarr' (store:), which does not exist" in told  # at the sweep value
    assert "hint: check the path, or make the store first (a `persist` stage before this one" in told
    assert f"relative paths are read from the directory amemctl runs in, {tmp_path}" in told
    assert "reads.yaml:6:25: stage 'embed' reads the file 'phi.pt' (checkpoint:), which does not exist" in told
    assert "reads.yaml:7:35: stage 'load' reads the folder 'images' (root:), which does not exist" in told
    assert f"reads.yaml:8:28: stage 'generate' reads the file 'weights' (checkpoint:), but {tmp_path / 'weights'} is a folder" in told
    assert "there.zarr" not in told and "made.zarr" not in told  # there; written by an earlier stage
    assert len(re.findall(r"reads\.yaml:\d+", told)) == 4
    quiet = _invoke("validate", "--no-files", "reads.yaml")  # for a pipeline meant for another machine
    assert quiet.exit_code == 0 and "ok: reads.yaml" in quiet.output


def test_a_store_that_does_not_open_is_told_with_the_stores_own_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store(Path("s.zarr"))
    chunk = next(p for p in Path("s.zarr/patterns").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.unlink()  # a chunk gone: zarr would read it as zeros
    Path("folder").mkdir()
    Path("p.yaml").write_text("stages:\n  - open_store: {store: s.zarr}\n  - open_store: {store: folder, patterns: other}\n")
    told = _invoke("validate", "p.yaml").output
    assert "p.yaml:2:25: stage 'open_store' reads the amemctl store 's.zarr' (store:), which does not open: " in told and "is damaged" in told
    assert "hint: run `amemctl store verify" in told
    assert "p.yaml:3:25: stage 'open_store' reads the amemctl store 'folder' (store:), which does not open:" in told and "no zarr.json" in told


def test_run_refuses_a_missing_input_before_it_makes_a_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("p.yaml").write_text("name: p\nstages:\n  - open_store: {store: stores/q.zarr}\n  - corrupt: {count: 5}\n")
    result = _invoke("run", "p.yaml", "--quiet")
    assert result.exit_code == 2 and "p.yaml:3:25: stage 'open_store' reads the amemctl store 'stores/q.zarr' (store:), which does not exist" in result.output
    assert not Path("runs").exists()  # nothing to resume, nothing to clean up


class Lookup(Stage):
    """A plugin's stage that reads a table from a file it names."""

    name = "lookup"
    table = Param(str, "table.csv", "the file of the table", reads="file")
    cache = Param(str, None, "where it keeps what it computed", writes="folder")


class Conditional(Stage):
    """A plugin's stage whose parameter is a path only in one mode (files() overridden)."""

    name = "conditional"
    mode = Param(str, "memory", "memory or disk", choices=["memory", "disk"])
    source = Param(str, "x.bin")

    def files(self) -> list[FileUse]:
        return [FileUse("source", self.source, "file")] if self.mode == "disk" else []


def test_a_plugin_stage_declares_its_paths_and_gets_the_same_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    registry = build_registry()
    registry.stages.update(lookup=Lookup, conditional=Conditional)
    text = "stages:\n  - lookup: {}\n  - conditional: {}\n  - conditional: {mode: disk}\n  - lookup: {table: cache/t.csv, cache: cache}\n  - lookup: {table: cache/u.csv}\n"
    with pytest.raises(AmemctlError) as info:
        files.check_files(parse_text(text, "p.yaml", registry=registry))
    told = info.value.render()
    assert "p.yaml:2:13: stage 'lookup' reads the file 'table.csv' (table:), which does not exist" in told  # a default: at the stage's parameters
    assert "p.yaml:4:18: stage 'conditional' reads the file 'x.bin' (source:)" in told and told.count("conditional") == 1
    assert "cache/t.csv" in told  # its own `cache` folder is written by the stage, not before it
    assert "cache/u.csv" not in told  # in the folder an earlier stage writes
    Path("table.csv").write_text("a,b\n")
    Path("x.bin").write_bytes(b"1")
    Path("cache").mkdir()
    Path("cache/t.csv").write_text("c\n")
    files.check_files(parse_text(text, "p.yaml", registry=registry))
    assert "path of an existing file" in Lookup.params["table"].type_text()  # as `amemctl stages lookup` and docs show it


def test_a_path_parameter_is_declared_as_one():
    with pytest.raises(TypeError, match="reads= or writes=, not both"):
        Param(str, None, reads="file", writes="file")
    with pytest.raises(TypeError, match="take one of file, folder, store, not 'table'"):
        Param(str, None, reads="table")
    with pytest.raises(TypeError, match="has the type str"):
        Param(int, None, reads="file")


def test_the_built_in_stages_declare_the_paths_they_read_and_write():
    stages = build_registry(entry_points=False).stages
    declared = {(name, key): (p.reads, p.writes) for name, cls in stages.items() for key, p in cls.params.items() if p.path_kind}
    assert declared == {
        ("open_store", "store"): ("store", None),
        ("embed", "store"): ("store", None),
        ("embed", "checkpoint"): ("file", None),
        ("generate", "checkpoint"): ("file", None),
        ("persist", "store"): (None, "store"),
        ("train-autoencoder", "checkpoint"): (None, "file"),
        ("train-simclr", "checkpoints"): (None, "folder"),
    }
    load = stages["load"]
    assert load(dataset="folder", root="mine").files() == [FileUse("root", "mine", "folder")]
    assert load(dataset="digits", root="cache").files() == []  # a download root, made when missing


def test_an_input_is_identified_by_its_contents(tmp_path):
    """What a resumed run compares: a file's bytes (not its time), a folder's listing, a store's rows."""
    file = tmp_path / "w.pt"
    file.write_bytes(b"weights")
    before = files.identity(file, "file")
    file.write_bytes(b"weights")  # rewritten, the same bytes
    assert files.identity(file, "file") == before
    file.write_bytes(b"weightz")
    assert files.changes({str(file): before}, {str(file): files.identity(file, "file")})[str(file)].startswith("sha256 ")
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.png").write_bytes(b"1")
    listed = files.identity(folder, "folder")
    (folder / "a" / "2.png").write_bytes(b"2")
    assert files.identity(folder, "folder") != listed and files.identity(folder, "folder")["files"] == 2
    assert files.changes({"x": listed}, {}) == {}  # an input no longer read is no change


def test_a_run_records_the_identity_of_what_it_reads_from_outside(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store(Path("in.zarr"))
    text = "name: r\nstages:\n  - open_store: {store: in.zarr}\n  - persist: {store: out.zarr}\n  - open_store: {store: out.zarr}\n"
    run = run_pipeline(parse_text(text, "r.yaml"), out_root="runs", device="cpu", progress=False)
    import json

    inputs = json.loads((run.run_dir / "run.json").read_text())["inputs"]
    assert list(inputs) == [str(tmp_path / "in.zarr")]  # out.zarr is the run's own
    assert inputs[str(tmp_path / "in.zarr")] == {"kind": "store", **MemoryStore.open("in.zarr").content_id()}
    with pytest.raises(StoreError, match="g.yaml:2:25: stage 'open_store' reads the amemctl store 'gone.zarr'"):  # as the stage told it
        files.check_files(parse_text("stages:\n  - open_store: {store: gone.zarr}\n", "g.yaml"))
    with pytest.raises(DataError, match="reads the file 'phi.pt'"):
        files.check_files(parse_text("stages:\n  - load: {dataset: digits}\n  - embed: {checkpoint: phi.pt}\n", "g.yaml"))
