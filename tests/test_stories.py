"""Fully semantic memories (phi, psi) and hetero-associative stories."""

from __future__ import annotations

import torch

from amemctl.core.chains import canonical, distinct_cycles, follow, permutation_cycles
from amemctl.core.retrieval import recall
from amemctl.models.autoencoders import build_autoencoder, load_autoencoder
from amemctl.training.autoencoder import train_autoencoder
from amemctl.training.hetero import train_hetero

CPU = torch.device("cpu")


def test_psi_of_phi_keeps_shapes_and_the_checkpoint_keeps_the_identity(tmp_path):
    images = torch.rand(40, 1, 8, 8)
    model, losses = train_autoencoder(images, kind="mlp", hidden=[32, 16], code=6, epochs=30, batch_size=16, lr=3e-3, seed=0, path=tmp_path / "ae.pt", device=CPU)
    assert losses[-1] < losses[0]
    codes = model.embed(images, CPU)
    assert codes.shape == (40, 6) and model.decode(codes, CPU).shape == (40, 1, 8, 8)
    again = load_autoencoder(tmp_path / "ae.pt")
    assert again.identity() == model.identity() and again.space() == model.space()
    torch.testing.assert_close(again.decode(again.embed(images, CPU), CPU), model.decode(codes, CPU))


def test_the_papers_mlp_has_the_papers_layers():
    net = build_autoencoder("mlp", (1, 28, 28), [64, 32, 16], 12)
    widths = [m.out_features for m in net.encoder if isinstance(m, torch.nn.Linear)]
    back = [m.out_features for m in net.decoder if isinstance(m, torch.nn.Linear)]
    assert widths == [64, 32, 16, 12] and back == [16, 32, 64, 784]
    conv = build_autoencoder("conv", (3, 32, 32), [], 64)
    assert conv(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_permutation_cycles():
    perm = torch.tensor([1, 2, 0, 4, 3, 5])
    assert permutation_cycles(perm) == [(0, 1, 2), (3, 4), (5,)]
    assert canonical([4, 2, 9]) == (2, 9, 4)


def test_exact_hetero_memory_runs_around_the_permutations_cycles():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(50, 3, 8, 8, generator=g)
    perm = torch.randperm(50, generator=g)
    successors = images[perm]

    def nearest(x):
        return recall(x, images, similarity="squared_euclidean", separation="max").index

    def step(x):
        return recall(x, images, successors, similarity="euclidean", separation="max").output

    chains, outputs = follow(images, list(range(50)), step, nearest, steps=60)
    cycle_of = {m: c for c in permutation_cycles(perm) for m in c}
    for chain in chains:
        assert chain.period == len(cycle_of[chain.start]) and chain.cycle == cycle_of[chain.start]
        assert chain.visits[:3] == [chain.start, int(perm[chain.start]), int(perm[perm[chain.start]])]
    assert set(distinct_cycles(chains)) == set(permutation_cycles(perm))
    assert len(outputs) == 60 and torch.equal(outputs[0], successors)


def test_a_trained_hetero_encoder_recalls_the_right_successor():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 16, 16, generator=g)
    perm = torch.randperm(8, generator=g)
    model, losses = train_hetero(images, images[perm], code=128, epochs=150, batch_size=8, lr=2e-3, decay=0.99, sparsity=1e-4, noise=0.0, seed=0, device=CPU)
    assert losses[-1] < losses[0] / 5
    out = model.recall(images)
    assert torch.equal(recall(out, images, similarity="squared_euclidean", separation="max").index, perm)


def test_offline_fully_semantic_and_stories_pipelines(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from amemctl import figures
    from amemctl.dsl.pipeline import load_pipeline
    from amemctl.engine.runner import run_pipeline
    from tests.conftest import ROOT

    semantic = load_pipeline(
        ROOT / "pipelines" / "digits_fully_semantic.yaml",
        ["stages.0.epochs=20", "sweep.beta=[1, 1000]", f"stages.2.store={tmp_path / 'c.zarr'}", f"stages.3.store={tmp_path / 'p.zarr'}", f"stages.0.checkpoint={tmp_path / 'ae.pt'}"],
    )
    run = run_pipeline(semantic, out_root=tmp_path, device="cpu", progress=False)
    cosine = {p.point.values["beta"]: p.metrics["error_label"] for p in run.points if p.point.values["similarity"] == "cosine"}
    assert cosine[1000] < cosine[1]  # sharper separation, better recalls
    assert (run.run_dir / "figures" / "recalls.png").exists() and "codes_store_bytes" in run.points[0].metrics

    titles = {}
    draw = figures.image_grid

    def spy(rows, path, title=""):
        titles[path.name] = title
        return draw(rows, path, title)

    monkeypatch.setattr(figures, "image_grid", spy)
    stories = load_pipeline(ROOT / "pipelines" / "patches_stories.yaml", ["stages.2.epochs=5", "sweep.start_noise=[0.0]"])
    run = run_pipeline(stories, out_root=tmp_path, device="cpu", progress=False)
    strips = {name: title for name, title in titles.items() if "-story-" in name}
    assert strips and all("recall=" in title and "start_noise=0" in title for title in strips.values()), strips  # which condition
    assert any("recall=network, snapped" in title for title in strips.values())
    for name in strips:
        height, width = plt.imread(run.run_dir / "figures" / name).shape[:2]
        assert width <= 1600 and height <= 1000, (name, width, height)  # one screen at 100 %
    exact = next(p for p in run.points if p.point.values["recall"]["name"] == "exact")
    assert exact.metrics["periods_match"] == 1.0 and exact.metrics["cycles_match"] == 1.0 and exact.metrics["step_accuracy"] == 1.0
    assert any(f.name.startswith(exact.point.slug() + "-story-exact") for f in exact.figures)
    report = (run.run_dir / "report.md").read_text()
    assert "## stories (exact recall)" in report and "| yes |" in report
