"""Device hygiene: nothing made on the wrong device, no GPU synchronisation in the retrieval's chunk loop.

The 'meta' device stands in for a GPU on machines without one: a meta tensor has a shape and
a device but no data, so an operation that mixes it with a CPU tensor fails, and so does
anything that reads a value back to the host (`.item()`, `bool(t)`, `nonzero()`), which on
a GPU is a synchronisation. The tests marked "needs a CUDA device" check the same on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from amemctl.core.retrieval import _recall_block, recall
from amemctl.core.rows import TensorRows
from amemctl.core.separation import make_separation
from amemctl.core.similarity import SIMILARITIES
from tests.peak import Peak

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STREAMING = [("softmax", {"beta": 2.0}), ("max", {}), ("topk", {"k": 3}), ("topk", {"k": 2, "weighting": "softmax"}), ("identity", {}), ("polynomial", {"n": 3})]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("separation", STREAMING + [("sparsemax", {})], ids=lambda s: s[0] + str(s[1].get("k", "")))
def test_the_chunk_loop_stays_on_the_queries_device_and_never_reads_back(separation, normalize):
    """Every similarity x separation over several chunks, on meta tensors: no CPU tensor, no host read."""
    meta = torch.device("meta")
    q = torch.empty(5, 8, device=meta)
    keys, values = TensorRows(torch.empty(40, 8, device=meta)), TensorRows(torch.empty(40, 3, device=meta))
    sep = make_separation(separation[0], **separation[1])
    for sim in SIMILARITIES.values():
        out, index, score, _ = _recall_block(q, keys, values, sim, sep, "negative", normalize, 16, 3)
        assert out.shape == (5, 3) and index.shape == score.shape == (5,)
        assert out.device == index.device == score.device == meta, sim.name


@CUDA
@pytest.mark.parametrize("separation", STREAMING)
def test_the_chunk_loop_never_synchronises_on_the_gpu(separation):
    sep = make_separation(separation[0], **separation[1])
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.rand(shape, generator=g, device="cuda") for shape in ((50, 16), (5000, 16), (5000, 7)))
    for sim in ("dot", "cosine", "euclidean", "manhattan", "jensen_shannon"):
        args = (q, TensorRows(k), TensorRows(v), SIMILARITIES[sim], sep, "negative", False, 1024, 7)
        _recall_block(*args)  # the first call may autotune the L1 kernel, which synchronises on purpose
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _recall_block(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@CUDA
@pytest.mark.parametrize("separation", STREAMING + [("sparsemax", {"beta": 5.0}), ("entmax15", {})], ids=lambda s: s[0] + str(s[1].get("k", "")))
def test_the_gpu_retrieves_what_the_cpu_retrieves(separation):
    """Every similarity, keys on the GPU and on the CPU (copied per chunk), against the CPU's answer."""
    sep = make_separation(separation[0], **separation[1])
    g = torch.Generator().manual_seed(0)
    k, v = torch.rand(3000, 24, generator=g), torch.rand(3000, 5, generator=g)
    q = k[:40] + 0.05 * torch.randn(40, 24, generator=g)
    for name, sim in SIMILARITIES.items():
        want = recall(q, k, v, similarity=sim, separation=sep, budget=40 * 1024 * 64)
        for keys in (k.cuda(), k):
            got = recall(q.cuda(), keys, v.cuda(), similarity=sim, separation=sep, budget=40 * 1024 * 64)
            assert got.output.device.type == "cuda" and got.index.device.type == "cuda"
            torch.testing.assert_close(got.output.cpu(), want.output, rtol=2e-4, atol=2e-4, msg=f"{name}")
            assert (got.index.cpu() == want.index).float().mean() > 0.97, name


def test_a_rank_without_a_gpu_of_its_own_is_told_so(monkeypatch):
    """Two ranks on a one-GPU machine: a clear error, not NCCL's duplicate-GPU failure or an invalid ordinal."""
    from amemctl import launch
    from amemctl.errors import AmemctlError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device reached"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(AmemctlError, match="rank 1 has no GPU of its own") as info:
        launch.start_worker("auto")
    assert "--nproc 1" in info.value.hint


def test_simclr_never_pins_images(monkeypatch):
    """Images too large for the GPU stay where they are: pinning them bought nothing and fails on GPU tensors."""
    from amemctl.training import simclr

    images = torch.rand(4, 3, 8, 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 0))
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pytest.fail("pinned"))
    assert simclr._resident(images, torch.device("cuda")) is images
    assert simclr._resident(images, torch.device("cpu")) is images


def test_float64_manhattan_does_not_go_through_the_float32_kernel(monkeypatch):
    from amemctl.core.kernels import l1
    from amemctl.core.similarity import manhattan

    monkeypatch.setattr(l1, "available", lambda x: True)
    monkeypatch.setattr(l1, "l1_distances", lambda q, k: pytest.fail("float64 sent to the float32 kernel"))
    q, k = torch.rand(3, 5, dtype=torch.float64), torch.rand(7, 5, dtype=torch.float64)
    got = manhattan(q, k)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, (q[:, None] - k[None]).abs().sum(-1))


@CUDA
def test_draws_from_a_cpu_generator_reach_the_gpu_without_a_sync():
    from amemctl.core import random

    want = random.rand((1000, 3), torch.Generator().manual_seed(4))
    random.rand((8,), torch.Generator(), device="cuda")  # the first pinned block may be allocated here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = random.rand((1000, 3), torch.Generator().manual_seed(4), device="cuda", dtype=torch.float64)
        perm = random.randperm(50, torch.Generator().manual_seed(1), device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert got.device.type == "cuda" and got.dtype == torch.float64
    assert torch.equal(got.cpu(), want.double()) and torch.equal(perm.cpu(), torch.randperm(50, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("separation", [("max", {}), ("topk", {"k": 2})])
def test_a_nan_key_under_max_or_topk_is_named_not_hidden(separation):
    """top-k picks exactly k per row without reading back; a NaN key still ends in the usual message."""
    from amemctl.errors import StageError

    keys = torch.rand(50, 4)
    keys[7, 2] = float("nan")
    with pytest.raises(StageError, match=r"stored keys contain NaN or infinite values \(rows 7\)"):
        recall(torch.rand(3, 4), keys, separation=make_separation(separation[0], **separation[1]))


# ---------------------------------------------------------------------------------------
# what a CPU can tell of a GPU's memory and waits: meta tensors watched by a dispatch mode


def test_jensen_shannon_off_the_cpu_holds_no_more_than_the_workspace_retrieval_plans_for():
    """Off the CPU the mixture was one Q x n x d block and its logarithm another: twice the workspace
    `plan_blocks` sizes chunks by (one element per feature and pair), so a GPU retrieval held twice its budget."""
    from amemctl.core.similarity import jensen_shannon

    meta = torch.device("meta")
    for n_q, n, d in ((29, 1024, 32), (1, 3000, 64), (64, 200, 300)):
        q, k = torch.empty(n_q, d, device=meta), torch.empty(n, d, device=meta)
        with Peak() as peak:
            jensen_shannon(q, k)
        planned = n_q * n * (3 + SIMILARITIES["jensen_shannon"].workspace(d)) * 4  # what plan_blocks allots these pairs
        inputs = 2 * (n_q + n) * d * 4  # the rows as distributions and their logarithms: chunk-sized, not score-sized
        assert peak.bytes <= planned + inputs, (n_q, n, d, peak.bytes / planned)



@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("similarity", ["dot", "jensen_shannon"])
@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sparsemax_and_entmax_off_the_cpu_hold_no_more_than_the_budget_retrieval_plans_for(name, similarity, normalize):
    """A block of queries as `recall` plans it, on meta tensors: every Q x N buffer at once within the budget.

    Were 9 (sparsemax) and 13 (entmax) score-sized buffers per score where `plan_blocks` allotted 8:
    the gathered chunks and their concatenation, beta * s, the sorted copy with its int64 indices,
    cumulative sums, the last chunk's scores; a GPU retrieval held 13% and 63% over its budget.
    """
    from amemctl.core.retrieval import plan_blocks

    meta = torch.device("meta")
    sep, sim = make_separation(name, beta=2.0), SIMILARITIES[similarity]
    # (queries, memories, features, value width, budget): many queries at once, few, and one row that barely fits
    for n_q, n, d, width, budget in ((64, 10000, 32, 32, 2**22), (500, 3000, 16, 5, 2**22), (1000, 1000, 8, 8, 2**20), (8, 50000, 64, 64, 2**24), (3, 60000, 8, 8, 2**21)):
        block_q, block_n = plan_blocks(n_q, n, 4 * (3 + sim.workspace(d)), budget, sep.row_workspace, 4)  # as recall plans
        q = torch.empty(block_q, d, device=meta)
        keys, values = TensorRows(torch.empty(n, d, device=meta)), TensorRows(torch.empty(n, width, device=meta))
        with Peak() as peak:
            _recall_block(q, keys, values, sim, sep, "negative", normalize, block_n, width, budget=budget)
        # not score-sized: per query the output and a few numbers, per memory the ranks 1..N, per chunk
        # Jensen-Shannon's rows as distributions and their logarithms (see the test above)
        small = 4 * (2 * block_q * width + 16 * block_q + 2 * n + 2 * (block_q + block_n) * d)
        assert peak.bytes <= budget + small, (n_q, n, budget, block_q, block_n, peak.bytes / budget)


@pytest.mark.parametrize("similarity", ["dot", "manhattan", "jensen_shannon"])
@pytest.mark.parametrize("separation", STREAMING, ids=lambda s: s[0] + str(s[1].get("k", "")))
def test_normalised_scores_kept_for_reuse_stay_within_the_budget(separation, similarity):
    """Normalising keeps a block's scores (up to a quarter of the budget) beside chunks that were
    planned for all of it: Jensen-Shannon with softmax held 5.5% over its budget."""
    from amemctl.core.retrieval import plan_recall

    meta = torch.device("meta")
    sep, sim = make_separation(separation[0], **separation[1]), SIMILARITIES[similarity]
    for n_q, n, d, width, budget in ((64, 2000, 32, 32, 2**22), (512, 2000, 16, 5, 2**23), (8, 50000, 64, 64, 2**24)):
        q = torch.empty(n_q, d, device=meta)
        block_q, block_n = plan_recall(q, n, sim, sep, True, budget)
        keys, values = TensorRows(torch.empty(n, d, device=meta)), TensorRows(torch.empty(n, width, device=meta))
        with Peak() as peak:
            _recall_block(q[:block_q], keys, values, sim, sep, "negative", True, block_n, width, budget=budget)
        small = 4 * (4 * block_q * width + 16 * block_q + 2 * (block_q + block_n) * d)  # the reducer's state, per-query numbers, rows as distributions
        assert peak.bytes <= budget + small, (n_q, n, budget, block_q, block_n, peak.bytes / budget)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sparsemax_and_entmax_weigh_rows_within_the_workspace_they_state(name):
    """`row_workspace` is what retrieval plans with: the weights of some rows hold no more than that many rows' worth at once."""
    sep = make_separation(name, beta=2.0)
    for rows, n in ((1, 5000), (7, 3000), (64, 1000)):
        scores = torch.empty(rows, n, device="meta")
        with Peak() as peak:
            sep.weights(scores)
        assert peak.bytes <= (sep.row_workspace * rows * n + n + 16 * rows) * 4, (rows, n, peak.bytes / (rows * n * 4))


def _blocking_copies_to_meta(monkeypatch) -> tuple[list[str], TorchDispatchMode]:
    """Record every copy of host data to the meta device that would wait for a GPU there.

    A `.to()` or `copy_` from the CPU without non_blocking, and `torch.tensor` / `torch.as_tensor`
    of Python data with a device (a blocking copy inside): each is a stream synchronisation on a
    GPU. `random.moved`, which on a GPU copies from pinned memory without blocking, copies so here.
    """
    from amemctl.core import random

    seen: list[str] = []
    aten = torch.ops.aten

    def watch(name: str):
        real = getattr(torch, name)

        def made(data, *args, **kwargs):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu" and not isinstance(data, torch.Tensor):
                seen.append(f"torch.{name}(..., device={device})")
            return real(data, *args, **kwargs)

        monkeypatch.setattr(torch, name, made)

    watch("tensor")
    watch("as_tensor")
    monkeypatch.setattr(random, "moved", lambda x, device, dtype=None: x.to(device if device is not None else x.device, non_blocking=True).to(dtype=dtype or x.dtype))

    class Copies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is aten._to_copy.default and args[0].device.type == "cpu" and kwargs.get("device") is not None and kwargs["device"].type == "meta" and not kwargs.get("non_blocking"):
                seen.append(f"a blocking .to() of a CPU tensor {tuple(args[0].shape)}")
            if func is aten.copy_.default and args[0].device.type == "meta" and args[1].device.type == "cpu" and not (args[2:] and args[2]):
                seen.append(f"a blocking copy_ of a CPU tensor {tuple(args[1].shape)}")
            return func(*args, **kwargs)

    return seen, Copies()


def test_a_simclr_step_copies_nothing_to_the_gpu_that_would_wait_for_it(monkeypatch):
    """Views, their normalisation and the loss, on meta tensors: every host-to-device copy is a pinned, non-blocking one.

    Were: hsv_to_rgb's table (torch.tensor(..., device=), per hue jitter of every view), torchvision's
    normalize (torch.as_tensor(mean, device=), per view) and nt_xent's targets (.to(device), per
    step), each a stream synchronisation that let the CPU queue nothing while the GPU worked.
    """
    from amemctl.core import colour
    from amemctl.models.encoders import Preprocessing
    from amemctl.training.augment import ViewSpec, views
    from amemctl.training.simclr import nt_xent

    meta = torch.device("meta")
    images = torch.empty(16, 3, 16, 16, device=meta)
    spec = ViewSpec(16, blur=True, filters=0.5, rotations=0.5, erase=0.5, noise=0.1)
    seen, copies = _blocking_copies_to_meta(monkeypatch)
    with copies:
        x = Preprocessing()(views(images, spec, torch.Generator().manual_seed(0)))
        hue = colour.adjust_hue(images, torch.full((16,), 0.1))  # jitter's hue, whichever images its draws chose
        loss = nt_xent(torch.empty(16, 8, device=meta), torch.empty(16, 8, device=meta), 0.5)
    assert x.device == hue.device == loss.device == meta
    assert seen == [], seen


@CUDA
def test_a_simclr_training_step_never_synchronises_on_the_gpu():
    """A whole step (views, normalisation, bf16 autocast, channels_last, loss, backward, Adam) under sync debug mode "error"."""
    from amemctl.models.encoders import Preprocessing
    from amemctl.training.augment import ViewSpec
    from amemctl.training.simclr import SimCLR, train_step

    device = torch.device("cuda")
    model = SimCLR("small", True, 32).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(64, 3, 32, 32, device=device)
    spec = ViewSpec(32, blur=True, filters=0.5, rotations=0.5, erase=0.5, noise=0.1)
    train_step(model, optimizer, images, spec, Preprocessing(), torch.Generator().manual_seed(0), 0.5, True)  # first calls: cuDNN, allocators
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train_step(model, optimizer, images, spec, Preprocessing(), torch.Generator().manual_seed(1), 0.5, True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.device.type == "cuda" and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_the_simclr_loss_is_computed_outside_bfloat16_autocast(tmp_path, monkeypatch):
    """Under autocast the loss's z @ z.T ran in bfloat16 although z had been made float32: logits up to
    1 / temperature to 8 bits. amp is on by default on GPUs only; the CPU's autocast shows the same."""
    from amemctl.training import simclr

    states = []
    loss = simclr.nt_xent
    monkeypatch.setattr(simclr, "nt_xent", lambda z1, z2, t: states.append((torch.is_autocast_enabled("cpu"), z1.dtype)) or loss(z1, z2, t))
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    simclr.train_simclr(images, simclr.SimCLRConfig(arch="small", epochs=1, batch_size=8), tmp_path, torch.device("cpu"), amp=True)
    assert states == [(False, torch.float32)]


def test_the_benchmarks_plain_distances_never_ask_cdist_for_half_precision(monkeypatch):
    """torch.cdist has no bfloat16 or float16 kernel on CUDA either ("cdist_cuda" not implemented for
    'BFloat16'): `amemctl bench --device cuda`, whose default dtypes include bfloat16, stopped at its
    first bfloat16 manhattan row, before writing any table. Upcast on every device, not the CPU only."""
    from amemctl import bench

    given = []
    monkeypatch.setattr(torch, "cdist", lambda a, b, p: given.append((a.dtype, b.dtype)) or torch.empty(len(a), len(b), device=a.device))
    for dtype in (torch.bfloat16, torch.float16):
        q, k = torch.empty(4, 8, device="meta", dtype=dtype), torch.empty(6, 8, device="meta", dtype=dtype)
        for similarity in ("euclidean", "manhattan"):
            bench.plain_scores(similarity, q, k)
    assert given == [(torch.float32, torch.float32)] * 4


@CUDA
def test_the_benchmark_measures_bfloat16_distances_on_the_gpu():
    from amemctl import bench

    for similarity, queries in (("manhattan", 64), ("euclidean", 8)):  # 8 queries: cdist's direct kernel, not its matrix product
        row = bench.measure("random", similarity, torch.bfloat16, 3000, 32, queries, torch.device("cuda"), 1)
        assert row.ours_s > 0 and row.plain_s > 0 and row.peak_mib is not None


def test_the_benchmarks_peak_memory_leaves_out_what_a_first_call_allocates(monkeypatch):
    """The peak was read over the first call: for L1 that one autotunes, and Triton benchmarks each
    configuration beside a 256 MiB cache-flush buffer, so the table showed 256 MiB that retrieval never holds."""
    from amemctl import bench

    gpu = {"allocated": 0, "peak": 0, "calls": 0}

    def retrieval():
        gpu["calls"] += 1
        autotuning = 256 * 2**20 if gpu["calls"] == 1 else 0
        gpu["peak"] = max(gpu["peak"], gpu["allocated"] + autotuning + 10 * 2**20)

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: gpu.update(peak=gpu["allocated"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: gpu["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: gpu["peak"])
    assert bench.peak_mib(retrieval, torch.device("cuda")) == 10


def test_ranks_take_the_pipelines_own_device_when_none_is_given(tmp_path, monkeypatch):
    """`device: cpu` in the pipeline and `--nproc 2` on a GPU machine: the ranks joined with NCCL on
    cuda:<rank> (with one GPU, rank 1 failed "has no GPU of its own"), as if the pipeline said auto."""
    from amemctl import cli, launch
    from amemctl.dsl.pipeline import parse_text

    asked = []

    class Joined(Exception):
        pass

    def start_worker(device):
        asked.append(device)
        raise Joined

    monkeypatch.setattr(launch, "start_worker", start_worker)
    for text, given, want in (("device: cpu\n", None, "cpu"), ("", None, "auto"), ("device: cpu\n", "cuda", "cuda")):
        pipeline = parse_text(text + "data: {dataset: digits, limit: 4}\nstages:\n  - corrupt: {}\n", "p.yaml")
        with pytest.raises(Joined):
            cli._rank_work(pipeline, tmp_path, given, True, {})
        assert asked.pop() == want


def test_asynchronous_flips_bring_the_patterns_to_the_queries_device(monkeypatch):
    """The synchronous update moved the patterns per step (flip_field); the asynchronous sweep multiplied CPU patterns with GPU states."""
    from amemctl.core import dynamics

    met = []

    class Swept(Exception):
        pass

    def sweep(s, m, integral, order):
        met.append((s.device, m.device))
        raise Swept

    monkeypatch.setattr(dynamics, "_sweep", sweep)
    with pytest.raises(Swept):
        dynamics.hopfield_asynchronous(torch.empty(2, 6, device="meta"), torch.ones(3, 6), steps=1)
    assert met == [(torch.device("meta"), torch.device("meta"))]


@CUDA
def test_the_classical_network_runs_asynchronously_on_the_gpu_with_patterns_on_the_cpu():
    from amemctl.core.dynamics import hopfield_asynchronous

    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 2, (5, 64), generator=g).float() * 2 - 1
    queries = patterns.clone()
    queries[:, :8] *= -1
    want = hopfield_asynchronous(queries, patterns, steps=5, generator=torch.Generator().manual_seed(1))
    got = hopfield_asynchronous(queries.cuda(), patterns, steps=5, generator=torch.Generator().manual_seed(1))
    assert got.state.device.type == "cuda" and torch.equal(got.state.cpu(), want.state)


def _stores(tmp_path):
    """A store per storage type, of 8-bit images (exact in every storage), in chunks of 16 rows, with forgotten rows."""
    from amemctl.store.memory import MemoryStore

    images = torch.randint(0, 256, (100, 3, 4, 4), generator=torch.Generator().manual_seed(0)).float() / 255
    for storage in ("float32", "float16", "bfloat16", "uint8"):
        store = MemoryStore.create(tmp_path / f"{storage}.zarr", chunk_bytes=16 * 48 * 4, checksum=False)
        store.append(patterns=images, storage={"patterns": storage})
        store.forget(ids=[3, 40, 41])
        yield storage, MemoryStore.open(tmp_path / f"{storage}.zarr")


def test_store_rows_for_a_gpu_cross_as_stored_and_decode_to_the_same_numbers(tmp_path):
    """float16, bfloat16 and uint8 rows were decoded to float32 by the reading thread before the copy:
    twice (four times) the bytes over PCIe, and the conversion on one CPU thread. On a GPU they now
    cross as stored and are decoded there (`decode_on_device`, switched on here on the CPU)."""
    for storage, store in _stores(tmp_path):
        want = [(offset, chunk) for offset, chunk in store.rows("patterns", "cpu").chunks(20)]
        rows = store.rows("patterns", "cpu")
        rows.decode_on_device = True
        crossed = []
        to_device = rows._to_device
        rows._to_device = lambda block, crossed=crossed, to_device=to_device: crossed.append(block.dtype) or to_device(block)
        got = list(rows.chunks(20))
        assert [o for o, _ in got] == [o for o, _ in want] and all(torch.equal(a, b) and a.dtype == torch.float32 for (_, a), (_, b) in zip(got, want)), storage
        stored = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.int16, "uint8": torch.uint8}[storage]
        assert set(crossed) == {stored}, (storage, crossed)


@CUDA
def test_store_rows_stream_to_the_gpu_as_stored_and_retrieve_what_the_cpu_retrieves(tmp_path):
    for storage, store in _stores(tmp_path):
        on_gpu = store.rows("patterns", "cuda")
        assert on_gpu.decode_on_device
        for (o1, a), (o2, b) in zip(on_gpu.chunks(20), store.rows("patterns", "cpu").chunks(20)):
            assert o1 == o2 and a.device.type == "cuda" and a.dtype == torch.float32 and torch.equal(a.cpu(), b), storage
        q = store.to_tensor("patterns")[:10] + 0.01
        want = recall(q, store.rows("patterns", "cpu"), separation="max")
        got = recall(q.cuda(), on_gpu, separation="max")
        assert torch.equal(got.index.cpu(), want.index) and torch.equal(got.output.cpu(), want.output), storage
