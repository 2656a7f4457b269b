"""The `amemctl` command: run, validate and describe pipelines and stages.

Exit codes: 0 success, 2 a user mistake (bad pipeline, missing data, unknown device; one
clear message, no traceback), 1 anything else (a bug, shown with its traceback), and for a
run stopped by Ctrl-C or SIGTERM 130 or 143 (128 + the signal, as shells report it), after
one line saying how far it got and how to resume it.
"""

from __future__ import annotations

import os

# Reproducible numbers: MKL may use fewer threads than asked when the machine is busy, and a
# matrix product summed by fewer threads rounds differently, so a point recomputed on resume
# could differ from the uninterrupted run in its last float32 digits. Fixed thread counts cost
# a little speed on busy machines. MKL reads this once, before torch's first product; a value
# the user set is kept.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, NoReturn

import click
from rich.console import Console
from rich.table import Table

from amemctl import __version__
from amemctl.console import console as make_console
from amemctl.console import plain
from amemctl.errors import AmemctlError, refusal, refused

err_console = make_console(stderr=True, highlight=False)


class _Group(click.Group):
    """A click group that turns amemctl errors, and the file system's refusals (errors.refused), into one message and exit code 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any) -> click.Context:
        with _told():  # --help and --version print while the arguments are parsed, before invoke
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _told():
            return super().invoke(ctx)


@contextlib.contextmanager
def _told() -> Iterator[None]:
    """amemctl errors, and the file system's refusals (a full disk or a permission, wherever a command met them: the user's to fix), as one message and their exit code."""
    try:
        yield
    except AmemctlError as exc:
        print_error(exc)
        raise click.exceptions.Exit(exc.exit_code) from None
    except OSError as exc:
        if not refused(exc):  # anything else escaping is a bug, and keeps its traceback
            raise
        error = refusal(exc)
        print_error(error)
        raise click.exceptions.Exit(error.exit_code) from None


def print_error(exc: AmemctlError) -> None:
    err_console.print("error: " + exc.render(), markup=False, soft_wrap=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="amemctl")
@click.option("--no-plugin", "no_plugin", multiple=True, metavar="NAME", help="Do not load this plugin (entry-point or package name; repeatable). Same as AMEMCTL_DISABLE_PLUGINS=NAME,...")
def main(no_plugin: tuple[str, ...]) -> None:
    """Associative memories as declared experiments: run YAML pipelines of pluggable stages."""
    if no_plugin:
        from amemctl.plugins import DISABLE_ENV, installed_plugins
        from amemctl.suggest import did_you_mean

        installed = installed_plugins()
        for name in no_plugin:
            if name not in installed:
                hint = did_you_mean(name, installed) or f"installed: {', '.join(sorted(installed)) or 'none'}"
                raise click.UsageError(f"--no-plugin {name}: no plugin of that name is installed ({hint})")

        # through the environment, so worker processes (--nproc) skip the same plugins
        names = [n for n in os.environ.get(DISABLE_ENV, "").split(",") if n]
        os.environ[DISABLE_ENV] = ",".join([*names, *no_plugin])


@main.command()
@click.argument("pipeline", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a value of the pipeline, e.g. --set seed=3 or --set stages.score.similarity=cosine.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides the pipeline's device).")
@click.option("--out", "out_root", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path), help="Folder under which the run folder is made.")
@click.option("--quiet", is_flag=True, help="No progress: no bars in a terminal, no progress lines in a log (epochs, points, ETA).")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(1), help="Processes (torch.distributed ranks) to split retrieval over.")
@click.option("--resume", "resume", default=None, metavar="RUN", help="Continue the run folder RUN (interrupted or failed), in the directory it was started in: finished points are reused unless what they read has changed, training resumes from its checkpoints.")
def run(pipeline: Path | None, overrides: tuple[str, ...], device: str | None, out_root: Path, quiet: bool, nproc: int, resume: str | None) -> None:
    """Run PIPELINE: every sweep point, then the tables and figures of its report."""
    from amemctl import launch

    if launch.in_worker():  # a rank takes stop signals from its start (launch.run_worker) and ends in _run_rank
        _run(pipeline, overrides, device, out_root, quiet, nproc, resume, _Stop())
        return
    with _exit_when_interrupted() as stop:
        _run(pipeline, overrides, device, out_root, quiet, nproc, resume, stop)


def _run(pipeline: Path | None, overrides: tuple[str, ...], device: str | None, out_root: Path, quiet: bool, nproc: int, resume: str | None, stop: "_Stop") -> None:
    """`amemctl run`: check the pipeline, then run it in this process, launch its ranks (`--nproc`), or be one rank.

    `--resume` loads and runs the pipeline in the directory its run was started in, so that
    its relative paths name the same files however the resumption is started.
    """
    from amemctl.engine.records import load_record, started_in, working_directory

    if device is not None:
        from amemctl.dsl.pipeline import DEVICE

        if not DEVICE.match(device):
            raise AmemctlError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
    if resume is None:
        if pipeline is None:
            raise click.UsageError("give a PIPELINE file, or --resume RUN")
        _start(pipeline, overrides, device, out_root, quiet, nproc, None, None, [], stop)
        return
    from amemctl.engine.runs import resume_source

    if pipeline is not None or overrides:
        raise AmemctlError("--resume continues a run with its own pipeline and overrides", hint=f"run `amemctl run --resume {resume}` alone")
    resume_dir, pipeline, recorded, extra = resume_source(resume, out_root)
    stop.resuming = resume_dir
    with working_directory(started_in(load_record(resume_dir), resume_dir)):
        _start(pipeline, tuple(recorded), device, out_root, quiet, nproc, resume_dir, str(resume_dir), extra, stop)


def _start(pipeline: Path, overrides: tuple[str, ...], device: str | None, out_root: Path, quiet: bool, nproc: int, resume_dir: Path | None, resume: str | None, extra: list[str], stop: "_Stop") -> None:
    """Check the pipeline (with `extra` overrides, unrecorded) and run it: here, as `--nproc` ranks, or as this rank."""
    from amemctl import launch
    from amemctl.dsl.pipeline import load_pipeline
    from amemctl.engine.runner import run_pipeline

    checked = load_pipeline(pipeline, [*overrides, *extra])  # checked once before any worker starts
    if resume_dir is not None:
        err_console.print(f"resuming {resume_dir}", markup=False)
    _warn_failed_plugins()
    arguments = _run_arguments(pipeline, overrides, device, out_root, quiet, resume)
    # Each rank runs `arguments` without --nproc (launch.launch); the record keeps how many
    # ranks split the retrieval, as the command that repeats the run needs it.
    ranks = launch.world_size() if launch.in_worker() else nproc
    command = ["amemctl", *arguments, *(["--nproc", str(ranks)] if ranks > 1 else [])]
    record = {"overrides": list(overrides), "command": command, "resume": resume_dir}
    if nproc > 1 and not launch.in_worker():
        if resume_dir is not None:
            raise AmemctlError("--resume runs in one process", hint="leave out --nproc")
        from amemctl.engine.files import check_files

        check_files(checked)  # before any rank starts: told once, not by every rank
        stop.told = True  # the launcher tells how the run ended, however it ends
        launch.launch(nproc, arguments)  # each rank runs this command without --nproc
        return
    if not launch.in_worker():
        run_pipeline(checked, out_root=out_root, device=device, console=make_console(), progress=not quiet, announce=stop.recorded, **record)
        return
    _run_rank(checked, out_root, device, quiet, record)


def _run_rank(checked: Any, out_root: Path, device: str | None, quiet: bool, record: dict[str, Any]) -> NoReturn:
    """One rank of an `--nproc` or torchrun run; ends the process: 0, 128 + the signal that stopped it, or its error's exit code.

    A stopped rank exits as a stopped one-process run does, without a traceback, so that the
    launcher can tell an interrupted run from a failed one (launch.decisive). A failing rank
    prints its error, naming the rank, unless it is most likely an echo (its collective broke:
    a peer had left, runner.lost_peer) and the `--nproc` launcher, which tells how every rank
    ended, is there to tell it. Under `--nproc` rank 0 leaves the run's last line (how far it
    got, how to resume) to the launcher; under torchrun it prints it.
    """
    from amemctl import launch
    from amemctl.engine.records import Interrupted, stop_once
    from amemctl.engine.runner import lost_peer

    code = 0
    try:
        stop_once(launch.note_stop)
        _rank_work(checked, out_root, device, quiet, record)
    except (KeyboardInterrupt, Interrupted) as exc:
        code = _stopped_status(exc)
    except AmemctlError as exc:  # reported to the launcher (_rank_work)
        if not (launch.launched() and lost_peer(exc)):
            print_error(exc)
        code = exc.exit_code
    launch.exit_worker(code)


def _rank_work(checked: Any, out_root: Path, device: str | None, quiet: bool, record: dict[str, Any]) -> None:
    """Join the group and run the pipeline: rank 0 writes the run folder, the others compute their shards in a scratch folder.

    A failing rank reports its error to the launcher (launch.report_failure) before it leaves
    the group, so its report is older than the errors its peers then get from a broken
    collective: the launcher records the first failure in rank 0's run folder.
    """
    from amemctl import launch
    from amemctl.engine.records import ignore_stops
    from amemctl.engine.runner import run_pipeline

    # the pipeline's own `device:` when --device is not given, as a one-process run takes it: a
    # `device: cpu` pipeline stays on gloo and the CPU on a GPU machine, not NCCL on cuda:<rank>
    group, rank, device = launch.start_worker(device if device is not None else checked.device)
    finished = False
    try:
        if rank == 0:  # the launcher learns where the run folder is, to say how the run ended and correct its record
            run_pipeline(checked, out_root=out_root, device=device, console=make_console(), progress=not quiet, group=group, announce=launch.announce_run_folder, stop_line=not launch.launched(), **record)
        else:  # the other ranks compute their shards; rank 0 alone reports
            import io
            import tempfile

            with tempfile.TemporaryDirectory() as scratch:
                run_pipeline(checked, out_root=scratch, device=device, console=make_console(file=io.StringIO()), progress=False, group=group, elsewhere=launch.elsewhere())
        finished = True
    except Exception as exc:  # not a stop signal: the launcher needs this rank's message and when it failed
        ignore_stops()  # the rank ends with its own error: the launcher's SIGTERM must not cut that short with an Interrupted traceback
        error = refusal(exc) if refused(exc) else exc  # the file system's (its scratch folder on a full /tmp, say): the user's to fix
        if isinstance(error, AmemctlError):
            error.message = f"(rank {rank}) {error.message}"
        launch.report_failure(error)
        if error is exc:
            raise
        raise error from None
    finally:
        launch.stop_worker(finished)


class _Stop:
    """Whether a stop of `amemctl run` is told by the run (its closing line: run_pipeline's, or the `--nproc` launcher's), or here: it stopped before it started."""

    told = False
    resuming: Path | None = None  #: the run folder `--resume` continues, once known: a stop before it is recorded leaves it as it was

    def recorded(self, run_dir: Path) -> None:
        """The run is recorded (runner.run_pipeline's announce): a stop from now on ends it with its own closing line."""
        self.told = True


@contextlib.contextmanager
def _exit_when_interrupted() -> Iterator[_Stop]:
    """Ctrl-C or SIGTERM during `amemctl run`: exit 128 + the signal's number (130, 143), as a shell reports it.

    The handlers are in place from the command's start, so a stop while the pipeline is
    checked or torch imported is one too (SIGTERM would otherwise kill the process without a
    word). Once the run is recorded, a stopped run records itself `interrupted` and prints
    its last line, how far it got and the `--resume` command that continues it (for `--nproc`,
    the launcher prints it); before that, the line says it stopped before it started, with
    nothing to resume (or, for `--resume`, that the run is as it was, with the command that
    continues it). Click would print "Aborted!" and exit 1.
    """
    from amemctl.engine.records import STOP_SIGNALS, Interrupted, unstarted_line

    stop = _Stop()

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    main_thread = threading.current_thread() is threading.main_thread()
    before = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS} if main_thread else {}
    try:
        yield stop
    except (KeyboardInterrupt, Interrupted) as exc:
        status = _stopped_status(exc)
        if not stop.told:
            make_console().print(unstarted_line(status - 128, resuming=stop.resuming), style="yellow", markup=False, highlight=False, soft_wrap=True)
        raise click.exceptions.Exit(status) from None
    finally:
        for signum, handler in before.items():
            if handler is not None:
                signal.signal(signum, handler)


def _stopped_status(stop: BaseException) -> int:
    """The exit status of a run a signal stopped: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), as shells report it."""
    from amemctl.engine.records import stop_signal

    return 128 + (stop_signal(stop) or 0)


def _run_arguments(pipeline: Path, overrides: tuple[str, ...], device: str | None, out_root: Path, quiet: bool, resume: str | None) -> list[str]:
    """The `amemctl run` arguments that repeat this run: recorded in run.json, and given to each --nproc rank."""
    arguments = ["run", *([str(pipeline)] if resume is None else ["--resume", resume]), *[a for o in overrides if resume is None for a in ("--set", o)]]
    return arguments + [*(["--device", device] if device else []), *(["--out", str(out_root)] if str(out_root) != "runs" else []), *(["--quiet"] if quiet else [])]


@main.command()
@click.argument("pipelines", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Check with these overrides applied.")
@click.option("--explain", is_flag=True, help="Also print the stages each sweep point runs, with presets expanded.")
@click.option("--no-files", "no_files", is_flag=True, help="Do not check the files, folders and stores the stages read (to check a pipeline meant for another machine).")
def validate(pipelines: tuple[Path, ...], overrides: tuple[str, ...], explain: bool, no_files: bool) -> None:
    """Check PIPELINES without running them: syntax, stages, parameters, sweep, wiring, and that the files the stages read are there."""
    from amemctl.dsl.pipeline import explain as explain_plans
    from amemctl.dsl.pipeline import load_pipeline
    from amemctl.engine.files import check_files

    failed = 0
    for path in pipelines:
        try:
            checked = load_pipeline(path, list(overrides))
            if not no_files:
                check_files(checked)
        except AmemctlError as exc:
            failed += 1
            print_error(exc)
            continue
        stages = len(checked.plans[0].stages)
        click.echo(f"ok: {path} ({len(checked.plans)} sweep point(s), {stages} stage(s))")
        for warning in _missing_data(checked):
            err_console.print(f"warning: {path}: {warning}", markup=False, soft_wrap=True)
        if explain:
            click.echo(explain_plans(checked))
    _warn_failed_plugins()
    if failed:
        raise click.exceptions.Exit(2)


@main.command()
@click.argument("name", required=False)
@click.option("--markdown", is_flag=True, help="Print the reference of the built-in stages and functions as Markdown (docs/stages.md).")
def stages(name: str | None, markdown: bool) -> None:
    """List every stage, similarity, separation, corruption, encoder and dataset (built-in and
    from plugins), or describe the one called NAME."""
    from amemctl.plugins import KINDS, get_registry

    registry = get_registry()
    if markdown:
        from amemctl.stage_docs import stage_reference

        click.echo(stage_reference(registry), nl=False)
        return
    console = make_console()
    if name is None:
        for kind, (_, noun) in KINDS.items():
            table = Table(title=kind, title_justify="left")
            for column in (noun, "package", "summary"):
                table.add_column(column)
            for entry_name, entry in sorted(registry.table(kind).items()):
                table.add_row(plain(entry_name), plain(registry.package_of(kind, entry_name)), plain(_summary(entry)))
            console.print(table)
        if registry.disabled:
            console.print("disabled on request: " + ", ".join(registry.disabled), markup=False)
        _warn_failed_plugins()
        return
    found = registry.find(name)
    if not found:
        _describe_preset_or_refuse(console, registry, name)
        return
    for kind, entry in found:
        if kind == "stages":
            _describe_stage(console, registry, entry)
        else:
            _describe_function(console, registry, kind, entry)


def _describe_preset_or_refuse(console: Console, registry: Any, name: str) -> None:
    """`- model: NAME` presets are described by the preset table; any other unknown name is an error with a did-you-mean over every kind."""
    from amemctl.dsl import presets
    from amemctl.errors import PluginError
    from amemctl.plugins import KINDS
    from amemctl.suggest import did_you_mean

    if name == "model" or name in presets.PRESETS:
        click.echo(f"{name} (model preset, amemctl): one pipeline line (`- model: {'mchn' if name == 'model' else name}`) for a score, separate and project")
        click.echo(presets.__doc__.split("\n", 1)[1].strip())
        return
    known = [*presets.PRESETS, "model", *(n for kind in KINDS for n in registry.table(kind))]
    hint = registry.clash_hint(None, name) or did_you_mean(name, known) or "run `amemctl stages` to list them"
    raise PluginError(f"no stage, similarity, separation, corruption, encoder, dataset or model preset is called {name!r}{registry.failure_note(None, name)}", hint=hint)


def _summary(entry: Any) -> str:
    """The one-line summary of a stage class, function, similarity or dataset."""
    for attribute in ("summary", "doc"):
        text = getattr(entry, attribute, "") or ""
        if isinstance(text, str) and text.strip():
            return text.strip().splitlines()[0]
    return ""


def _params_table(title: str, params: "list[tuple[str, Any]]", role: str) -> Table:
    table = Table(title=plain(title), title_justify="left")
    for column in ("name", "type" if role == "param" else "default tensor", "default" if role == "param" else "", "doc"):
        if column:
            table.add_column(column)
    for key, p in params:
        default = p.default_text()
        cells = [key, p.type_text(), default, p.described()] if role == "param" else [key, str(p.default), p.described()]
        table.add_row(*map(plain, cells))
    return table


def _describe_stage(console: Console, registry: Any, cls: Any) -> None:
    from amemctl.plugins import KINDS
    from amemctl.stage_docs import choice_text, default_metrics, described

    console.print(f"[bold]{plain(cls.name)}[/] " + plain(f"(stage, {registry.package_of('stages', cls.name)}): {cls.summary}"), soft_wrap=True)
    doc = (cls.__doc__ or "").strip().splitlines()[1:]
    if any(line.strip() for line in doc):
        console.print("\n".join(line.strip() for line in doc).strip(), markup=False)
    for role, title in (("param", "parameters"), ("input", "reads (context tensors)"), ("output", "writes (context tensors)")):
        params = [(k, p) for k, p in cls.params.items() if p.role == role]
        if params:
            console.print(_params_table(title, params, role))
    for param, kind in cls.dispatch.items():
        names = ", ".join(registry.table(kind))
        console.print(f"`{param}` chooses a {KINDS[kind][1]} (`amemctl stages NAME` lists its parameters): {choice_text(cls, param)}. One of: {names}", soft_wrap=True, markup=False)
    recorded = default_metrics(cls)
    if recorded:
        console.print("records (with its defaults), for `report:` tables and curves:\n" + "\n".join(f"  {described(m)}" for m in recorded), soft_wrap=True, markup=False)


def _describe_function(console: Console, registry: Any, kind: str, entry: Any) -> None:
    from amemctl.plugins import KINDS

    noun = KINDS[kind][1]
    console.print(f"[bold]{plain(entry.name)}[/] " + plain(f"({noun}, {registry.package_of(kind, entry.name)}): {_summary(entry)}"), soft_wrap=True)
    if getattr(entry, "width", None):
        console.print(f"embedding width: {entry.width}")
    if getattr(entry, "distance", False):
        console.print("a distance: `score` turns it into a score by its distance_form (-d or 1/d)")
    params = list(getattr(entry, "params", {}).items())
    if params:
        console.print(_params_table(f"parameters (written beside the {noun}'s name)", params, "param"))
    elif kind in ("similarities", "separations", "corruptions", "encoders"):
        console.print("no parameters")


@main.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--n", "sizes", multiple=True, type=int, help="Stored patterns (repeatable; default 1e5 and 1e6 on a GPU, 1e4 and 5e4 on the CPU).")
@click.option("--d", "dim", default=512, show_default=True, help="Pattern width.")
@click.option("--q", "queries", default=None, type=int, help="Queries (default 1024 on a GPU, 256 on the CPU).")
@click.option("--similarity", "similarities", multiple=True, default=("dot", "cosine", "euclidean", "manhattan"), show_default=True)
@click.option("--dtype", "dtypes", multiple=True, default=("float32", "bfloat16"), show_default=True)
@click.option("--cifar/--no-cifar", default=True, help="Also the UHN paper's CIFAR-10 pixel workload (10,000 x 3,072, 10,000 queries; 1,000 on the CPU).")
@click.option("--streaming/--no-streaming", default=True, help="Also time retrieval streamed from a store against the same keys in memory.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Append the table to this file (e.g. docs/BENCHMARKS.md).")
@click.option("--peers", is_flag=True, help="On the CPU: max and softmax (beta 1000 and 1) beside the one-pass formula, two passes, FAISS and KeOps (default N = 1e5).")
def bench(device: str, sizes: tuple[int, ...], dim: int, queries: int | None, similarities: tuple[str, ...], dtypes: tuple[str, ...], cifar: bool, streaming: bool, repeats: int, output: Path | None, peers: bool) -> None:
    """Time retrieval against the plain PyTorch way, side by side, and print the table."""
    import torch

    from amemctl import bench as b
    from amemctl.engine.runner import resolve_device

    if peers:
        _bench_peers(sizes or (100_000,), dim, queries or 256, repeats, output, similarities)
        return
    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    sizes = sizes or ((100_000, 1_000_000) if gpu else (10_000, 50_000))
    queries = queries or (1024 if gpu else 256)
    rows = []
    for dtype in dtypes:
        for similarity in similarities:
            for n in sizes:
                rows.append(b.measure("random", similarity, getattr(torch, dtype), n, dim, queries, dev, repeats))
                click.echo(b.markdown(rows[-1:], dev).splitlines()[-1])
    if cifar:
        for similarity in ("cosine", "euclidean", "manhattan"):
            rows.append(b.measure("CIFAR-10 pixels", similarity, torch.float32, 10_000, 3072, 10_000 if gpu else 1_000, dev, repeats, beta=1000.0))
            click.echo(b.markdown(rows[-1:], dev).splitlines()[-1])
    click.echo(b.markdown(rows, dev))
    extra = ""
    if streaming:
        extra = b.streaming_markdown([b.measure_streaming(n, dim, queries, dev, repeats) for n in sizes])
        click.echo(extra)
    if output is not None:
        b.write(rows, dev, output, extra)
        click.echo(f"appended to {output}")


def _bench_peers(sizes: tuple[int, ...], dim: int, queries: int, repeats: int, output: Path | None, similarities: tuple[str, ...]) -> None:
    """`amemctl bench --peers`: the CPU peers table (amemctl.bench_peers), for the workloads of the given similarities."""
    from amemctl import bench_peers as bp

    workloads = [w for w in bp.WORKLOADS if w[2] in similarities]
    if not workloads:
        raise click.UsageError(f"--peers measures {', '.join(sorted({w[2] for w in bp.WORKLOADS}))}; none was asked for with --similarity")
    head = bp.header()
    click.echo(head)
    rows = []
    for n in sizes:
        for separation, beta, similarity in workloads:
            rows.append(bp.measure(separation, beta, similarity, n, dim, queries, repeats))
            click.echo(bp.markdown(rows[-1:]).splitlines()[2])
    click.echo(bp.markdown(rows))
    if output is not None:
        bp.write(rows, output, head)
        click.echo(f"appended to {output}")


def _register_command_groups() -> None:
    from amemctl.cli_data import corrupt, data
    from amemctl.cli_runs import runs
    from amemctl.cli_store import store

    for group in (store, data, corrupt, runs):
        main.add_command(group)


_register_command_groups()


#: approximate download size of the torchvision datasets, for `validate`'s warning
_DOWNLOAD_SIZES = {"mnist": "about 12 MB", "fashion-mnist": "about 30 MB", "cifar10": "about 170 MB", "cifar100": "about 170 MB", "stl10": "about 2.6 GB"}


def _missing_data(pipeline: Any) -> list[str]:
    """What the pipeline's `load` stages would read that is not on this machine, and how to get it."""
    from amemctl.data import torchvision_sets
    from amemctl.data.datasets import data_root

    warnings: list[str] = []
    for plan in pipeline.plans:
        for planned in plan.stages:
            settings = planned.stage.settings
            source = torchvision_sets.SOURCES.get(settings.get("dataset")) if planned.stage.name == "load" else None
            if source is None:
                continue
            root = data_root(settings.get("root"))
            split = settings.get("split") or ("test" if "test" in source.files else next(iter(source.files)))
            if torchvision_sets.missing_files(source, root, split):
                text = f"dataset {source.name!r} (split {split}) is not in {root}: `amemctl data download {source.name}` ({_DOWNLOAD_SIZES.get(source.name, 'size unknown')})"
                if text not in warnings:
                    warnings.append(text)
    return warnings


def _warn_failed_plugins() -> None:
    """One warning line per plugin that was disabled because it is broken."""
    from amemctl.plugins import get_registry

    for failure in get_registry().failures:
        err_console.print(f"warning: {failure.warning()}", markup=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
