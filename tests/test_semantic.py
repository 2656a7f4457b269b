"""phi: encoders, checkpoints and their identities, embedding reuse, SimCLR training."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from amemctl.errors import DataError, StageError, StoreError
from amemctl.models.encoders import Preprocessing, build, checkpoint_encoder, file_sha256, random_encoder, save_encoder
from amemctl.store.memory import MemoryStore
from amemctl.training.simclr import SimCLRConfig, nt_xent, train_simclr

CPU = torch.device("cpu")


class Gadget:
    """An arbitrary object: unpickling it would run code, so weights_only refuses it."""


def _images(n=24, side=16, seed=0):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_checkpoint_round_trip_keeps_outputs_and_names_the_file(tmp_path):
    phi = random_encoder("small", True, Preprocessing("cifar10"), seed=3)
    path = tmp_path / "enc.pt"
    sha = save_encoder(phi.module, path, "small", True, phi.preprocessing)
    again = checkpoint_encoder(path, None, None, None)
    x = _images()
    torch.testing.assert_close(again.embed(x, CPU), phi.embed(x, CPU))
    assert again.weights_sha256 == sha == file_sha256(path)
    assert again.identity()["architecture"] == "small" and again.identity()["dim"] == 256


def test_plain_torchvision_state_dicts_load_with_their_architecture(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "tv.pt")  # includes fc.*, as torchvision saves it
    phi = checkpoint_encoder(tmp_path / "tv.pt", "resnet18", None, Preprocessing("imagenet"))
    assert phi.cifar_stem is False and phi.dim == 512
    out = phi.embed(_images(2, 32), CPU)
    assert out.shape == (2, 512)
    with pytest.raises(DataError, match="plain state dict: say which architecture"):
        checkpoint_encoder(tmp_path / "tv.pt", None, None, None)


def test_a_checkpoint_for_another_architecture_lists_the_keys(tmp_path):
    phi = random_encoder("small", True, Preprocessing())
    torch.save(phi.module.state_dict(), tmp_path / "small.pt")
    with pytest.raises(DataError, match=r"does not fit this architecture: missing \d+ key\(s\): conv1.weight.*unexpected"):
        checkpoint_encoder(tmp_path / "small.pt", "resnet18", True, None)


def test_files_that_are_not_safe_tensor_files_are_refused(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(DataError, match="not a PyTorch tensor file"):
        checkpoint_encoder(tmp_path / "notes.pt", "small", True, None)

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Gadget()}, f)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(DataError, match="weights_only=True"):
        warnings.simplefilter("always")
        checkpoint_encoder(tmp_path / "evil.pt", "small", True, None)
    assert not caught, "the refusal is the message: torch's pickle-protocol warning is not shown beside it"
    with pytest.raises(DataError, match="no checkpoint at"):
        checkpoint_encoder(tmp_path / "missing.pt", "small", True, None)


def test_images_smaller_than_the_encoder_accepts():
    phi = random_encoder("resnet18", False, Preprocessing("imagenet"))
    with pytest.raises(StageError, match=r"8x8 are smaller than resnet18 with the ImageNet stem accepts \(32 px\)"):
        phi.embed(torch.rand(2, 3, 8, 8), CPU)
    grey = random_encoder("small", True, Preprocessing())
    assert grey.embed(torch.rand(2, 1, 16, 16), CPU).shape == (2, 256)  # one channel is repeated to three


def test_the_cifar_stem_keeps_resolution():
    stem = build("resnet18", cifar_stem=True)
    assert stem.conv1.kernel_size == (3, 3) and stem.conv1.stride == (1, 1) and isinstance(stem.maxpool, torch.nn.Identity)
    assert stem(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_nt_xent_prefers_matching_views():
    z = torch.randn(8, 16)
    assert nt_xent(z, z, 0.5) < nt_xent(z, torch.randn(8, 16), 0.5)
    # with orthogonal, perfectly matched views the loss is the analytic floor
    eye = torch.eye(4)
    floor = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 6))
    torch.testing.assert_close(nt_xent(eye, eye, 0.5), floor)


def test_simclr_loss_decreases_and_training_resumes_exactly(tmp_path):
    images = _images(32)
    config = SimCLRConfig(arch="small", epochs=6, batch_size=32, lr=2e-3, crop_scale=(0.5, 1.0))
    whole = train_simclr(images, config, tmp_path / "whole", CPU)
    assert whole.losses[-1] < whole.losses[0]
    part = train_simclr(images, SimCLRConfig(**{**config.__dict__, "epochs": 3}), tmp_path / "parts", CPU)
    rest = train_simclr(images, config, tmp_path / "parts", CPU)
    assert part.resumed_from == 0 and rest.resumed_from == 3 and len(rest.losses) == 6
    assert rest.losses == pytest.approx(whole.losses, rel=1e-5)
    for key, value in whole.encoder.module.state_dict().items():
        torch.testing.assert_close(rest.encoder.module.state_dict()[key], value, rtol=1e-4, atol=1e-5)
    again = train_simclr(images, config, tmp_path / "whole", CPU)  # finished: reused, nothing trained
    assert again.resumed_from == 6 and again.encoder.weights_sha256 == whole.encoder.weights_sha256


def test_checkpoints_written_before_erase_and_noise_existed_still_resume(tmp_path):
    from amemctl.training.simclr import ADDED_LATER

    images = _images(32)
    config = SimCLRConfig(arch="small", epochs=2, batch_size=32, crop_scale=(0.5, 1.0))
    train_simclr(images, SimCLRConfig(**{**config.__dict__, "epochs": 1}), tmp_path / "first", CPU)
    path = next((tmp_path / "first").glob("epoch-*.pt"))
    payload = torch.load(path, weights_only=True)
    payload["config"] = {k: v for k, v in payload["config"].items() if k not in ADDED_LATER}  # as the older code saved it
    for name, later, resumed in (("same", {}, 1), ("noisy", {"noise": 0.1}, 0)):  # with noise it is another training
        (tmp_path / name).mkdir()
        torch.save(payload, tmp_path / name / path.name)
        assert train_simclr(images, SimCLRConfig(**{**config.__dict__, **later}), tmp_path / name, CPU).resumed_from == resumed, name


def test_embeddings_are_kept_in_the_store_and_reused(tmp_path, run_text):
    path = tmp_path / "s.zarr"
    MemoryStore.create(path).append(patterns=_images(20))
    text = f"stages:\n  - embed: {{store: {path}, arch: small, seed: SEED}}\n"
    first = run_text(text.replace("SEED", "1")).points[0].metrics
    second = run_text(text.replace("SEED", "1")).points[0].metrics
    third = run_text(text.replace("SEED", "2")).points[0].metrics
    assert (first["embeddings_reused"], second["embeddings_reused"], third["embeddings_reused"]) == (0, 1, 0)
    store = MemoryStore.open(path)
    assert len(store.spaces) == 2
    space, identity = next(iter(store.spaces.items()))
    phi = random_encoder("small", True, Preprocessing(), seed=2)
    with pytest.raises(StoreError, match="made by another encoder"):
        store.check_space(space, {**phi.identity(), "inputs_sha256": identity["inputs_sha256"]})


def test_a_pipeline_trains_phi_and_scores_in_its_space(run_text):
    text = """\
data: {dataset: patches32, limit: 64}
stages:
  - train-simclr: {arch: small, epochs: 1, batch_size: 32, checkpoints: CKPT}
  - embed: {encoder: encoder, input: patterns, output: keys}
  - corrupt: {kind: rotate}
  - embed: {encoder: encoder, input: queries, output: query_keys}
  - score: {memory: keys, queries: query_keys, similarity: cosine}
  - separate: {function: max}
  - project: {values: patterns}
  - evaluate: {}
"""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        metrics = run_text(text.replace("CKPT", folder)).points[0].metrics
    assert 0 <= metrics["error_index"] <= 1 and metrics["simclr_loss"] > 0


def test_the_optional_rotation_and_filter_augmentations_keep_views_valid():
    from amemctl.training.augment import views
    from amemctl.training.simclr import view_spec

    out = views(_images(20), view_spec(16, SimCLRConfig(rotations=1.0, filters=0.5, blur=True)), torch.Generator().manual_seed(0))
    assert out.shape == (20, 3, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_unit_embeddings_are_phis_directions_and_the_store_keeps_phis_own(tmp_path):
    from amemctl.context import Context
    from amemctl.core.rows import materialize, shard
    from amemctl.plugins import build_registry
    from amemctl.stages.embed import Embed

    registry = build_registry(entry_points=False)
    path = tmp_path / "s.zarr"
    x = _images(12)
    MemoryStore.create(path).append(patterns=x)
    outputs = {}
    for source in ({"input": "patterns"}, {"store": str(path)}):
        for unit in (False, True):
            ctx = Context(CPU, 0, 2**20, None)
            ctx["patterns"] = x
            Embed(registry, arch="small", seed=4, unit=unit, **source).run(ctx)
            outputs[next(iter(source)), unit] = (ctx["embeddings"], ctx.identities["embeddings"])
    raw, raw_identity = outputs["input", False]
    unit, unit_identity = outputs["input", True]
    torch.testing.assert_close(unit, raw / raw.norm(dim=1, keepdim=True))
    assert not torch.allclose(raw.norm(dim=1), torch.ones(12))  # the test would pass for an encoder that already normalises
    assert unit_identity == {**raw_identity, "unit": True}
    stored, _ = outputs["store", True]
    assert not isinstance(stored, torch.Tensor)  # stored keys stay streamed: scaled chunk by chunk as read
    torch.testing.assert_close(materialize(stored), unit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([c for _, c in stored.chunks(5)]), unit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stored.take(torch.tensor([7, 2, 7])), unit[[7, 2, 7]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(materialize(shard(stored, 3, 9)), unit[3:9], rtol=1e-5, atol=1e-6)  # one rank's share
    keys = MemoryStore.open(path).read(f"keys/{next(iter(MemoryStore.open(path).spaces))}")
    torch.testing.assert_close(keys, raw, rtol=1e-5, atol=1e-6)  # phi's own embeddings stay in the store
