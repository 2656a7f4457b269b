"""The command line: exit codes, one-line errors without tracebacks, help everywhere."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from amemctl import __version__
from amemctl.cli import main

GOOD = """\
name: cli
data: {dataset: digits, limit: 100}
stages:
  - corrupt: {kind: gaussian, variance: 0.05, count: 20}
  - score: {similarity: cosine}
  - separate: {function: max}
  - project: {}
  - evaluate: {}
report:
  tables: [{metric: error_index}]
"""


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_version_and_help():
    assert _invoke("--version").output.strip() == f"amemctl, version {__version__}"
    for command in ([], ["run"], ["validate"], ["stages"]):
        result = _invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_the_command_fixes_mkl_threads_before_torch_loads_unless_the_user_chose():
    """MKL_DYNAMIC=FALSE, for resumed points equal to uninterrupted ones (see docs/pipelines.md)."""
    import os
    import subprocess
    import sys

    script = "import sys, os, amemctl.cli; print(os.environ.get('MKL_DYNAMIC'), 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "MKL_DYNAMIC"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["FALSE", "False"], out
    out = subprocess.run([sys.executable, "-c", script], env={**env, "MKL_DYNAMIC": "TRUE"}, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["TRUE", "False"], out


def test_validate_accepts_good_and_rejects_bad_pipelines(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("similarity: cosine", "similarity: cosin"))
    result = _invoke("validate", str(good))
    assert result.exit_code == 0 and "ok:" in result.output
    result = _invoke("validate", str(good), str(bad))
    assert result.exit_code == 2
    assert f"{bad}:5:25: unknown similarity 'cosin'" in result.output and "did you mean 'cosine'?" in result.output
    assert "Traceback" not in result.output


def test_run_writes_the_table_and_the_folder(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    result = _invoke("run", str(path), "--out", str(tmp_path / "runs"), "--quiet", "--device", "cpu", "--set", "seed=2")
    assert result.exit_code == 0, result.output
    assert "error_index" in result.output and "run folder:" in result.output
    (folder,) = (tmp_path / "runs" / "cli").iterdir()
    assert "seed: 2" in (folder / "resolved.yaml").read_text()


def test_an_out_folder_that_cannot_be_made_is_one_message_naming_it(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder\n")
    result = _invoke("run", str(path), "--out", str(blocker / "runs"), "--quiet", "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output and not isinstance(result.exception, Exception), result.output
    assert f"cannot create a run folder under {blocker / 'runs' / 'cli'}: {blocker} is a file, not a folder" in result.output
    assert "give --out a folder you can write to" in result.output and blocker.read_text() == "not a folder\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_an_out_folder_without_write_permission_is_one_message_naming_it(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = _invoke("run", str(path), "--out", str(locked), "--quiet", "--device", "cpu")
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2 and f"cannot create a run folder under {locked / 'cli'}: {locked} cannot be written to" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_missing_gpu_is_a_clear_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    result = _invoke("run", str(path), "--device", "cuda", "--out", str(tmp_path))
    assert result.exit_code == 2 and "no CUDA device" in result.output and "Traceback" not in result.output
    assert _invoke("run", str(path), "--device", "tpu").exit_code == 2


def test_stages_lists_and_describes():
    listing = _invoke("stages")
    assert listing.exit_code == 0
    for name in ("load", "corrupt", "score", "separate", "project", "evaluate", "report", "pca"):
        assert name in listing.output
    detail = _invoke("stages", "separate")
    assert detail.exit_code == 0 and "weights" in detail.output and "softmax, max, topk" in detail.output
    # any kind of name: a separation's parameters, a similarity's doc
    softmax = _invoke("stages", "softmax")
    assert softmax.exit_code == 0 and "separation, amemctl" in softmax.output and "beta" in softmax.output
    chebyshev = _invoke("stages", "chebyshev")
    assert chebyshev.exit_code == 0 and "similarity, amemctl-example" in chebyshev.output and "L-infinity distance max |q-k|" in chebyshev.output
    unknown = _invoke("stages", "scor")
    assert unknown.exit_code == 2 and "did you mean 'score'?" in unknown.output
    assert "did you mean 'softmax'?" in _invoke("stages", "softmx").output  # among every kind, not the stages only
    preset = _invoke("stages", "mchn")  # `- model: mchn` is a preset, not a stage
    assert preset.exit_code == 0 and "| mchn | dot       | softmax(beta)" in preset.output
    evaluate = _invoke("stages", "evaluate")  # the metric names a `report:` table needs
    assert "records (with its defaults), for `report:` tables and curves:\n  error_index: wrongly retrieved (nearest stored pattern is not the original)\n  error_pixels: " in evaluate.output
    assert evaluate.output.splitlines()[-1] == "  mse: mean squared error per value"  # what each metric is, as its stage declares it
    assert "records" not in _invoke("stages", "score").output.splitlines()[-1]
    persist = _invoke("stages", "persist")  # required parameters (path): asked unconfigured
    assert persist.output.splitlines()[-2:] == ["  persisted: rows written to the store", "  store_bytes: bytes the store takes on disk"]


def test_a_missing_file_is_exit_2(tmp_path):
    result = _invoke("run", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "no such pipeline file" in result.output


def test_corrupt_preview_writes_the_grid(tmp_path):
    out = tmp_path / "corruptions.png"
    result = _invoke("corrupt", "preview", "--dataset", "patches32", "--count", "4", "-o", str(out))
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(out) as img:
        assert img.height > img.width  # one row per corruption: taller than wide
    assert _invoke("corrupt", "preview", "--kinds", "gausian", "-o", str(out)).exit_code == 2


def test_corrupt_preview_shows_plugin_corruptions_and_skips_what_grey_images_cannot_take(tmp_path):
    # It knew the built-in corruptions only ("unknown corruption 'dropout_rows'"), and `all`
    # on the digits stopped at color, which needs RGB images.
    out = tmp_path / "corruptions.png"
    result = _invoke("corrupt", "preview", "--dataset", "digits", "--kinds", "dropout_rows,gaussian", "--count", "4", "-o", str(out))
    assert result.exit_code == 0 and out.is_file(), result.output
    result = _invoke("corrupt", "preview", "--dataset", "digits", "--count", "4", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "skipped what does not apply to digits: color (color needs RGB images (3 channels), got 1)" in result.output
    result = _invoke("corrupt", "preview", "--dataset", "digits", "--kinds", "color", "-o", str(out))
    assert result.exit_code == 2 and "color needs RGB images" in result.output  # named on purpose: an error


def test_data_ls_and_download_errors(tmp_path):
    listing = _invoke("data", "ls", "--root", str(tmp_path))
    assert listing.exit_code == 0 and "patches32" in listing.output and "cifar10" in listing.output
    result = _invoke("data", "download", "cifar-10", "--root", str(tmp_path))
    assert result.exit_code == 2 and "did you mean 'cifar10'?" in result.output
    bundled = _invoke("data", "download", "digits", "--root", str(tmp_path))
    assert bundled.exit_code == 2 and "'digits' is not downloaded by amemctl: scikit-learn's" in bundled.output


def test_bench_measures_side_by_side(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    result = _invoke("bench", "--device", "cpu", "--n", "500", "--q", "8", "--d", "16", "--repeats", "1", "--similarity", "manhattan", "--dtype", "float32", "--no-cifar", "-o", str(out))
    assert result.exit_code == 0, result.output
    table = out.read_text()
    assert "| random | manhattan | float32 | 500 | 16 | 8 |" in table and "plain PyTorch (ms)" in table
    assert "| 500 | 16 | 8 | 32 |" in table  # the streaming table: a store against the same keys in memory


def test_plain_reference_of_the_bench_is_the_formula():
    from amemctl.bench import plain_retrieve

    g = torch.Generator().manual_seed(0)
    keys, q = torch.rand(300, 7, generator=g), torch.rand(5, 7, generator=g)
    expected = torch.softmax(-3.0 * torch.cdist(q, keys, p=1), 1) @ keys
    torch.testing.assert_close(plain_retrieve(q, keys, keys, "manhattan", 3.0), expected)
