"""The context a stage runs in: named tensors on one device, metrics, figures, randomness.

It lives beside `amemctl.stage` rather than in the engine, because every stage (built-in or
a plugin's) needs it: stages import it; the engine makes one per sweep point.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import torch

from amemctl.core.random import derived_seed
from amemctl.errors import StageError

T = TypeVar("T")
LOG_SECONDS = 15.0  #: least time between two progress lines in a log


@dataclass
class Context:
    """What stages share within one sweep point.

    `ctx["name"]` reads and writes tensors (or other values a stage passes on); `device`
    is where new tensors belong; `rng()` gives this stage's own seeded random streams (CPU
    generators), so a stage draws the same numbers whatever ran before it and on any device;
    `metric()` records numbers for the report; `figure_path()` says where a figure of this
    point goes.
    """

    device: torch.device
    seed: int
    budget: int
    run_dir: Path
    point_label: str = "run"
    point_slug: str = "run"
    values: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    #: example images for the run's overview figures: figure name -> [(row label, images[, wrong])]
    examples: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    stage_seed: int = 0  #: set by `begin_stage` before each stage, from the seed and the stage's position
    #: set by `begin_stage`: the identity of the running stage's work in this run (the run, its seed, the resolved
    #: configuration of this stage and of every one before it), the same when a resumed run does that work again,
    #: so that a stage whose effect outlives the run (`persist`) can tell that it did it before the run stopped;
    #: empty outside a run
    work_id: str = ""
    progress: Any = None  #: the engine's rich Progress, or None when quiet
    #: where track() writes a progress line now and then when there are no bars (a log, not a terminal)
    log: Any = None
    #: where the data came from and which run made it, written into stores by `persist`
    provenance: dict[str, Any] = field(default_factory=dict)
    #: tensor name -> identity of the encoder that made it (embeddings), for `persist`
    identities: dict[str, dict] = field(default_factory=dict)
    #: (title, markdown) sections this point adds to report.md
    notes: list[tuple[str, str]] = field(default_factory=list)
    #: the torch.distributed group when the run spans several ranks (None: one process)
    group: Any = None
    #: the registry the pipeline was checked with: where stages look up what they dispatch to
    registry: Any = None
    _bars: list = field(default_factory=list, repr=False)  #: (task, description) of the open track() bars
    _loss: float | None = field(default=None, repr=False)  #: the last epoch's loss, for log lines
    _streams: int = field(default=0, repr=False)  #: how many generators rng() has given this stage

    @property
    def distributed(self) -> bool:
        import torch.distributed as dist

        return self.group is not None and dist.is_initialized() and dist.get_world_size(self.group) > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes stores and reports: always, except ranks other than 0."""
        import torch.distributed as dist

        return not self.distributed or dist.get_rank(self.group) == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op in one process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(self.group)

    #: what a stage may add to; a snapshot copies these (not the tensors themselves, which
    #: stages never modify in place), so a later sweep point can start from it
    _GROWING = ("values", "metrics", "figures", "examples", "provenance", "identities", "notes")

    def snapshot(self) -> dict[str, Any]:
        """The state after a stage, for `restore` in a later sweep point that shares the prefix."""
        return {name: _copy(getattr(self, name)) for name in self._GROWING}

    def restore(self, snapshot: dict[str, Any]) -> None:
        for name in self._GROWING:
            setattr(self, name, _copy(snapshot[name]))

    def __getitem__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.values), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"available: {', '.join(self.values) or 'nothing yet'}"
            raise StageError(f"no tensor named {name!r} in the context", hint=hint) from None

    def __setitem__(self, name: str, value: Any) -> None:
        self.values[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def begin_stage(self, seed: int, work_id: str = "") -> None:
        """Start a stage: its seed, its work's identity (`work_id`), and its random streams from the first again."""
        self.stage_seed = seed
        self.work_id = work_id
        self._streams = 0

    def rng(self, device: "torch.device | str | None" = None) -> torch.Generator:
        """A new seeded random stream of this stage: a CPU generator unless `device` names another.

        The k-th call in a stage gives the stage's k-th stream: independent of the others and
        the same in every run at this seed, whatever ran before the stage. So two draws from
        two calls (a row choice and the noise, two noise masks) are never the same numbers,
        and a stage that calls it in the same order draws the same numbers again.

        CPU by default so that a run draws the same numbers on every device and so that
        `torch.randn(shape, generator=ctx.rng())` never meets a generator of another device
        (it gives CPU tensors: move them with `.to(ctx.device)`). `amemctl.random.randn(shape,
        ctx.rng(), device=ctx.device)` and its siblings draw and move in one call, with a
        generator on any device.
        """
        generator = torch.Generator(device=device or "cpu")
        generator.manual_seed(stream_seed(self.stage_seed, self._streams))
        self._streams += 1
        return generator

    def metric(self, name: str, value: float) -> None:
        """Record a number of this sweep point (a float, a 0-d tensor is converted)."""
        self.metrics[name] = float(value)

    def show(self, figure: str, label: str, images: Any, wrong: Any = None) -> None:
        """Add a row of example images to the run's figure `figure` (figures/<figure>.png).

        Rows that several sweep points share (the same originals, the same queries) are
        drawn once, labelled with the sweep values they have in common. `wrong` (a boolean
        per image) frames those images in red.
        """
        # copies, not views: a view of the first rows keeps (and saves with the point) the whole batch
        shown = images.detach().to("cpu", copy=True)
        row = (label, shown) if wrong is None else (label, shown, wrong.detach().to("cpu", torch.bool, copy=True))
        self.examples.setdefault(figure, []).append(row)

    def note(self, title: str, markdown: str) -> None:
        """Add a section to report.md under this sweep point (lists, small tables, findings)."""
        self.notes.append((title, markdown))

    def figure_path(self, name: str) -> Path:
        """Path for a PNG of this point: figures/<point>-<name>.png (registered for the report)."""
        folder = self.run_dir / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.point_slug}-{name}.png"
        self.figures.append(path)
        return path

    def figure_title(self, title: str) -> str:
        """`title` with the sweep point's condition under it, for a figure of this point alone.

        A figure in figures/ must say which condition it shows without its file name.
        """
        return title if self.point_label == "run" else f"{title}\n({self.point_label})"

    def track(self, items: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
        """Iterate with a progress bar under the pipeline's bars; in a log, a line now and then.

        Without a terminal a training of many minutes would otherwise print nothing until its
        sweep point ends: a line (count, rate, ETA, the last epoch's loss) every `LOG_SECONDS`.
        """
        if self.progress is None:
            yield from (items if self.log is None else self._logged(items, total, description or "working"))
            return
        task = self.progress.add_task(description or "working", total=total)
        self._bars.append((task, description or "working"))
        try:
            for item in items:
                yield item
                self.progress.advance(task)
        finally:
            self._bars.remove((task, description or "working"))
            self.progress.remove_task(task)

    def _logged(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        start = last = time.perf_counter()
        self._loss = None
        for done, item in enumerate(items, 1):
            yield item
            now = time.perf_counter()
            if now - last >= LOG_SECONDS or done == total:
                last = now
                each = (now - start) / done
                left = f", ETA {clock(each * (total - done))}" if total else ""
                loss = f", loss {self._loss:.4g}" if self._loss is not None else ""
                self.log(f"    {description}: {done}/{total or '?'}{loss}; {each:.2f} s each{left}")

    def epoch_done(self, epoch: int, loss: float) -> None:
        """A training loop's report after an epoch: the loss shows in its progress bar (or log line)."""
        self._loss = loss
        if self.progress is not None and self._bars:
            task, description = self._bars[-1]
            self.progress.update(task, description=f"{description} (epoch {epoch}, loss {loss:.4g})")


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss, for progress lines."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _copy(container: Any) -> Any:
    """One level deeper than a shallow copy: lists inside dicts are copied too (the examples)."""
    if isinstance(container, dict):
        return {k: list(v) if isinstance(v, list) else v for k, v in container.items()}
    return list(container)


def stream_seed(stage_seed: int, k: int) -> int:
    """The seed of a stage's k-th random stream: the stage's own seed first, then derived ones."""
    return stage_seed if k == 0 else derived_seed(stage_seed, k)
