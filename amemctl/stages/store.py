"""Stages `persist` and `open_store`: memories that outlive a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amemctl.context import Context
from amemctl.core.rows import materialize
from amemctl.errors import StoreError
from amemctl.plugins import hookimpl
from amemctl.stage import REQUIRED, Input, Metric, Output, Param, ParamError, Stage
from amemctl.store.memory import DEFAULT_CHUNK_BYTES, MemoryStore, is_store, store_root, writer_lock

MODES = ("create", "append", "replace")


class Persist(Stage):
    """Write context tensors into a memory store on disk: patterns, values, labels and keys."""

    name = "persist"
    store = Param(str, REQUIRED, "path of the store, a folder such as stores/digits.zarr", writes="store")
    mode = Param(str, "create", "create (an existing store is an error), append, or replace (the old store stays until the new one is complete)", choices=list(MODES))
    dtype = Param(str, "float32", "storage of patterns and values", choices=["float32", "float16", "bfloat16", "uint8"])
    keys = Param(dict, None, "key spaces to store: {space: tensor}, e.g. {pca: pca_patterns}")
    chunk_mib = Param(float, DEFAULT_CHUNK_BYTES / 2**20, "size of a chunk of rows, in MiB (retrieval streams chunk by chunk)", min=0.001)
    compression = Param(str, "zstd", "chunk compression", choices=["zstd", "none"])
    checksum = Param(bool, True, "record a CRC32C checksum per chunk, checked on every read and by `amemctl store verify`")
    prefix = Param(str, "", "put before the metric names (persisted, store_bytes), to tell several stores apart")
    patterns = Input("patterns", "the patterns to store", optional=True)
    values = Input(None, "hetero-associated values, one row per pattern", optional=True)
    labels = Input("labels", "integer labels", optional=True)

    def inputs(self) -> list[str]:
        return [*super().inputs(), *(self.keys or {}).values()]

    def check(self) -> None:
        for space, tensor in (self.keys or {}).items():
            if not isinstance(tensor, str) or not str(space).replace("-", "").replace("_", "").isalnum():
                raise ParamError(f"keys maps a space name to a context tensor; got {space!r}: {tensor!r}", hint="e.g. keys: {pca: pca_patterns}", param="keys")
        if isinstance(self.store, str):
            try:
                store_root(self.store)
            except StoreError as exc:
                raise ParamError(exc.message, hint=exc.hint, param="store") from None

    def describe(self) -> str:
        return f"persist {self.store}"

    def run(self, ctx: Context) -> None:
        path = Path(self.store)
        tensors: dict[str, Any] = {}
        for field in ("patterns", "values", "labels"):
            name = self.settings[field]
            if name is not None:
                tensors[field] = materialize(ctx[name])
        keys = {space: materialize(ctx[tensor]) for space, tensor in (self.keys or {}).items()}
        storage = {"patterns": self.dtype, "values": self.dtype}
        options = dict(chunk_bytes=int(self.chunk_mib * 2**20), compression=self.compression, checksum=self.checksum, description=ctx.provenance.get("pipeline", ""))
        provenance = {k: v for k, v in ctx.provenance.items() if k != "data"} | ctx.provenance.get("data", {})
        if ctx.work_id:  # which work of which run wrote these rows: a resumed run does not write them twice
            provenance["work"] = ctx.work_id
        identities = {space: ctx.identities.get(tensor, {"encoder": "context tensor", "tensor": tensor}) for space, tensor in (self.keys or {}).items()}
        if not ctx.writer:  # with several ranks, rank 0 writes and the others wait for it
            ctx.barrier()
            return
        path = store_root(path)

        def fill(store: MemoryStore) -> None:
            store.append(**tensors, keys=keys, identities=identities, storage=storage, provenance=provenance)

        with writer_lock(path):  # held from the first check to the last rename: no other writer interleaves
            written = self._written_before(path, ctx.work_id)
            if written is None and self.mode == "append" and path.exists():
                fill(MemoryStore.open(path, mode="a"))
            elif written is None:  # a whole new store, written aside and renamed into place once complete
                MemoryStore.write_new(path, fill, replace=self.mode == "replace", **options)
        ctx.barrier()
        ctx.metric(f"{self.prefix}persisted", len(next(iter({**tensors, **keys}.values()))) if written is None else written)
        ctx.metric(f"{self.prefix}store_bytes", sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))

    def metrics(self) -> list[Metric]:
        return [Metric("persisted", "rows written to the store", "rows written", 0.0).prefixed(self.prefix), Metric("store_bytes", "bytes the store takes on disk", "bytes", 0.0).prefixed(self.prefix)]

    def _written_before(self, path: Path, work: str) -> int | None:
        """The rows this very work of this run wrote into the store before the run stopped (then resumed), or None.

        A run stopped after its persist but before its sweep points finished runs the persist
        again when resumed: `create` found the store it had made and failed, `append` wrote its
        rows a second time. `replace` writes the same store again, as it would in any run.
        """
        if not work or self.mode == "replace" or not is_store(path):
            return None
        try:
            entries = MemoryStore.open(path).attrs.get("provenance", [])
        except StoreError:  # damaged, or another schema: the write below tells it
            return None
        rows = [e.get("rows") for e in entries if isinstance(e, dict) and e.get("work") == work]
        if not rows or not isinstance(rows[-1], list) or len(rows[-1]) != 2 or not all(isinstance(n, int) for n in rows[-1]):
            return None
        return rows[-1][1] - rows[-1][0]


class OpenStore(Stage):
    """Use a persisted memory: score and project read its rows from disk, chunk by chunk."""

    name = "open_store"
    store = Param(str, REQUIRED, "path of the store", reads="store")
    space = Param(str, None, "key space to score in (keys/<space>); written to `keys`")
    prefetch = Param(int, 1, "chunks read ahead while the current one is scored", min=0)
    patterns = Output("patterns", "the stored patterns (read lazily)")
    values = Output(None, "the stored hetero values (read lazily), if the store has them", optional=True)
    keys = Output("keys", "the keys of `space` (read lazily), when a space is given", optional=True)
    labels = Output("labels", "the stored labels, if any", optional=True)

    def outputs(self) -> list[str]:
        names = super().outputs()
        return names if self.space is not None else [n for n in names if n != self.keys]

    def describe(self) -> str:
        return f"open_store {self.store}"

    def run(self, ctx: Context) -> None:
        store = MemoryStore.open(self.store)
        if len(store) == 0:
            raise StoreError(f"{self.store} holds no rows", hint="fill it with a `persist` stage first")
        ctx[self.patterns] = store.rows("patterns", ctx.device, self.prefetch)
        if self.values is not None:
            ctx[self.values] = store.rows("values", ctx.device, self.prefetch)
        if self.space is not None and self.keys is not None:
            store.space_identity(self.space)
            ctx[self.keys] = store.rows(f"keys/{self.space}", ctx.device, self.prefetch)
        if self.labels is not None and "labels" in store.arrays:
            ctx[self.labels] = store.to_tensor("labels", ctx.device)
        ctx.metric("stored", len(store))

    def metrics(self) -> list[Metric]:
        return [Metric("stored", "rows in the store opened", "rows", 0.0)]


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Persist, OpenStore]
