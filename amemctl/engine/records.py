"""The record of a run: run.json in its folder, and error.txt when it stops on an error.

run.json says who started the run (command line, `--set` overrides, git commit and whether
the checkout was dirty), when it started and ended, and how it stands: running, finished,
failed or interrupted. It is rewritten atomically (a temporary file renamed over it) at
every change, so a reader never sees half of one. A run killed outright (SIGKILL, a lost
node) cannot write its end: its record still says `running`, with the pid and host that
ran it, which is how `status_of` recognises it as dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import reprlib
import signal
import socket
import subprocess
import sys
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from amemctl.atomic import write_atomically
from amemctl.errors import RunFolderError

RECORD = "run.json"
TRACEBACK = "error.txt"
#: the lock file of a run folder, held by the process that runs it (RunLock)
LOCK = ".run.lock"
#: run.json's marker: a folder is a run folder when its run.json says this
RUN_FORMAT = "amemctl-run"


def now() -> str:
    """The current time, ISO 8601 with the local offset (what a reader compares by eye)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


#: names the commit of a copy of a checkout that has no .git (the GPU machine's copy of the
#: working tree, a CI artifact): the commit, with "-dirty" appended when the copy held changes
GIT_COMMIT_ENV = "AMEMCTL_GIT_COMMIT"


def git_state(path: "str | Path") -> dict[str, Any] | None:
    """The commit of the git checkout holding `path` and whether it has uncommitted changes.

    Outside git, what AMEMCTL_GIT_COMMIT says (so a run on a copy of the tree still records
    the code it ran); None when neither says.
    """
    folder = Path(path).resolve()
    folder = folder if folder.is_dir() else folder.parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return _declared_commit()
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hangs
        return _declared_commit()
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def _declared_commit() -> dict[str, Any] | None:
    """The commit AMEMCTL_GIT_COMMIT names ("<sha>" or "<sha>-dirty"); None when unset or not a commit."""
    declared = os.environ.get(GIT_COMMIT_ENV, "").strip()
    sha, dirty = (declared[: -len("-dirty")], True) if declared.endswith("-dirty") else (declared, False)
    if not re.fullmatch(r"[0-9a-f]{7,64}", sha):
        return None
    return {"commit": sha, "dirty": dirty}


class RunRecord:
    """run.json of one run folder, kept up to date while the run goes on."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.data = data

    @classmethod
    def start(
        cls,
        run_dir: Path,
        *,
        pipeline: str,
        file: str,
        overrides: list[str],
        command: list[str] | None,
        points: int,
        headline: dict[str, str] | None,
        previous: dict[str, Any] | None = None,
        repeats: int = 1,
        inputs: dict[str, Any] | None = None,
    ) -> "RunRecord":
        """Record a run (or the resumption of one, keeping its history) as running, now.

        `inputs`: the identity of each file, folder and store the run reads from outside
        (engine.files.inputs), which a resumption compares with what they hold then.
        """
        data: dict[str, Any] = dict(previous or {})
        if previous:
            attempts = list(previous.get("attempts", []))
            attempts.append({k: previous.get(k) for k in ("started", "ended", "status", "command", "pid", "host")})
            data["attempts"] = attempts
        data.update(
            format=RUN_FORMAT,
            pipeline=pipeline,
            file=file,
            overrides=list(overrides),
            command=list(command if command is not None else sys.argv),
            cwd=os.getcwd(),
            git=git_state(file) if Path(file).exists() else None,
            started=now(),
            ended=None,
            status="running",
            pid=os.getpid(),
            host=socket.gethostname(),
            points_total=points,
            repeats=repeats,
            points_done=0,
            points_reused=0,
            headline=headline,
            error=None,
            inputs=dict(inputs or {}),
        )
        if not data.get("id"):  # the run's identity, kept by every resumption (a record from before ids gets one)
            data["id"] = uuid.uuid4().hex
        record = cls(run_dir, data)
        record.save()
        return record

    def save(self) -> None:
        write_atomically(self.run_dir / RECORD, json.dumps(self.data, indent=2) + "\n")

    def progress(self, done: int, reused: int) -> None:
        self.data.update(points_done=done, points_reused=reused)
        self.save()

    def finish(self, error: BaseException | None = None) -> None:
        """End the record: finished, or failed/interrupted with the error's message and traceback."""
        self.data["ended"] = now()
        if error is None:
            self.data["status"] = "finished"
        else:
            stop = stop_signal(error)
            self.data["status"] = ended_by(error)
            render = getattr(error, "render", None)
            message = render() if callable(render) else (str(error) or type(error).__name__)
            if stop is not None:
                message = f"stopped by signal {signal.Signals(stop).name}"
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            self.data["error"] = {"type": type(error).__name__, "message": message}
            try:
                write_atomically(self.run_dir / TRACEBACK, f"{message}\n\n{text}")
                self.data["error"]["traceback"] = TRACEBACK
            except OSError:  # the disk the run filled: run.json (smaller, rewritten in place of itself) may still fit
                pass
        self.save()

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        """The record of an existing run folder, checked (load_record): a RunFolderError when it is not amemctl's or is damaged."""
        return cls(run_dir, load_record(run_dir))

    def fail_elsewhere(self, message: str, details: str) -> bool:
        """Record the run as failed by an error another process saw (an `--nproc` rank); False, and nothing written, once finished.

        The process that wrote the record may have ended it as interrupted (the launcher
        stopped it after another rank failed), left it running (stopped while ending it),
        or failed with an echo of the other rank's failure (a collective whose peer is gone).
        Only the process that wrote the record can say the run finished, so a finished
        record is never touched. error.txt gets `message` and `details` (a traceback, or empty);
        what that process wrote there is kept below them.
        """
        return self._settle("failed", "RankFailed", message, details)

    def interrupt_elsewhere(self, message: str) -> bool:
        """Record the run as interrupted by a stop signal another process got (an `--nproc` rank); False, and nothing written, once finished.

        A user who stops one rank (its pid, not the launcher's) stops the run: the record's
        own process may have recorded a crash of its collective, whose peer left, or been
        killed before it ended the record. As fail_elsewhere, error.txt keeps what it wrote.
        """
        return self._settle("interrupted", "Interrupted", message, "")

    def _settle(self, status: str, kind: str, message: str, details: str) -> bool:
        if self.data.get("status") == "finished":
            return False
        own = self.run_dir / TRACEBACK
        before = own.read_text(errors="replace") if own.is_file() else ""
        kept = f"\nWhat the run's own process recorded before this:\n\n{before}" if before else ""
        write_atomically(own, "\n\n".join(part for part in (message, details) if part) + "\n" + kept)
        self.data.update(status=status, ended=self.data.get("ended") or now(), error={"type": kind, "message": message, "traceback": TRACEBACK})
        self.save()
        return True


def started_in(record: dict[str, Any], run_dir: Path) -> Path | None:
    """The directory the run was started in (run.json's `cwd`), where its pipeline's relative paths point; None when the record does not say.

    A resumption runs there, so that it reads and writes the same data, stores and
    checkpoints as the run it continues, from wherever it is started. A directory that no
    longer exists is refused: the paths would mean other files, or none.
    """
    cwd = record.get("cwd")
    if not cwd:
        return None
    start = Path(cwd)
    if not start.is_dir():
        raise RunFolderError(
            f"run {run_dir} was started in {start}, which no longer exists: its pipeline's relative paths (data, stores, checkpoints) are read from there",
            hint=f"make {start} again (or a link of that name to where those files are now), then resume; or start a new run of the pipeline",
        )
    return start


@contextlib.contextmanager
def working_directory(path: "Path | None") -> Iterator[None]:
    """Run the block in `path` (the current directory when None), and come back to where it was after."""
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class RunLock:
    """One process runs a run folder at a time: an OS lock (flock, through `filelock`) on its .run.lock.

    The process running a run holds it from its start (or resumption) to its end. `--resume`
    refuses a run whose record says it is running, but two resumptions started together (a
    scheduler's retry beside a user's, two terminals) both read the record before either
    rewrote it, and both ran the run into the same folder: the later one's record lost the
    earlier one's attempt. The kernel releases the lock when its holder dies, so a killed run
    leaves nothing to take over, and a live holder's lock cannot be taken.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock: Any = None

    def acquire(self) -> None:
        """Take the lock, or refuse at once (a RunFolderError naming the holder) while another process holds it."""
        import filelock

        path = self.run_dir / LOCK
        lock = filelock.FileLock(path, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            record = read_record(self.run_dir) or {}  # the holder's own once it has recorded its start; the lock file holds nothing
            who = f" (pid {record.get('pid')} on {record.get('host')})" if record.get("status") == "running" else ""
            raise RunFolderError(f"run {self.run_dir} is being run by another process{who}", hint="wait for it to end, or stop that process first") from None
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class Interrupted(BaseException):
    """The process was asked to stop (SIGTERM, as cluster schedulers send before a kill).

    A BaseException, as KeyboardInterrupt is: a request to stop is not an error of the code
    that happened to be running, so it passes through every `except Exception` (a stage's
    own, the runner's crash report) and the run ends `interrupted`, not failed.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")


def stop_signal(error: BaseException) -> int | None:
    """The signal that stopped a run: SIGINT for Ctrl-C, the signal of an Interrupted; None for an error."""
    if isinstance(error, KeyboardInterrupt):
        return int(signal.SIGINT)
    if isinstance(error, Interrupted):
        return error.signum
    return None


def ended_by(error: BaseException) -> str:
    """How an error ended a run, as its record and its report both say: "interrupted" by a stop signal, else "failed"."""
    return "interrupted" if stop_signal(error) is not None else "failed"


#: the signals that stop a run as interrupted (Ctrl-C, a scheduler's stop); the exit status is 128 + the signal
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_once(on_stop: "Callable[[int], None] | None" = None) -> None:
    """From now on in this rank, the first SIGINT or SIGTERM raises Interrupted; any later one is ignored.

    A rank is stopped by its launcher, which forwards the signal it got (Ctrl-C reaches the
    launcher alone: torch starts each rank in a session of its own), and a scheduler may
    signal every process as well, so a rank can get the same signal twice. The second must
    not cut short rank 0's record of the interrupted run (run.json, the report), nor end the
    rank with a traceback; the launcher kills a rank that takes longer than its shutdown
    timeout. Installed for the rank's whole life, from its start (amemctl.launch.run_worker) until it
    ends through amemctl.launch.exit_worker, which is why the runner leaves these handlers in
    place (stopping_once). `on_stop` is told the signal first, before anything unwinds
    (amemctl.launch.note_stop: when this rank was stopped, which the launcher compares with
    when the others failed).
    """
    global _on_stop
    _on_stop = on_stop
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_once)


_on_stop: "Callable[[int], None] | None" = None


def stopping_once() -> bool:
    """Whether stop_once's handlers are installed (or, once stopped, ignoring repeats): they already end this rank's run as interrupted."""
    return signal.getsignal(signal.SIGTERM) in (_stop_once, _ignored)


def _stop_once(signum: int, frame: Any) -> None:
    """The first stop signal: ignore the next ones, tell on_stop, and end the run as interrupted."""
    ignore_stops()
    if _on_stop is not None:
        try:
            _on_stop(signum)
        except Exception:  # best effort: telling must not keep the rank from stopping
            pass
    raise Interrupted(signum)


def ignore_stops() -> None:
    """From now on SIGINT and SIGTERM do nothing.

    A handler that returns, not SIG_IGN: a signal that arrived before this one was handled
    (two during one long torch call) still runs its Python handler afterwards, and finding
    SIG_IGN there, Python prints "Signal 15 ignored due to race condition".
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, _ignored)


def _ignored(signum: int, frame: Any) -> None:
    """A repeated stop signal: the rank is already stopping."""


def count_text(done: int, total: int, repeats: int = 1) -> str:
    """How far a run got, in point runs (one repeat of one sweep point), as every message says it.

    `17 of 102 points`, or with repeats `85 of 510 point runs (102 points x 5 repeats)`: the
    stop message, `runs ls` and `runs show` count the same unit, the one run.json records.
    """
    if repeats <= 1 or total % repeats:
        return f"{done} of {total} point{'s' if total != 1 else ''}"
    return f"{done} of {total} point runs ({total // repeats} points x {repeats} repeats)"


def closing_line(status: str, progress: str, run_dir: "str | Path", cause: str = "") -> str:
    """The last line of a run that did not finish: how far it got and, interrupted, how to go on; `cause` says what stopped it.

    `amemctl run` prints it (results.write_outputs), and for an `--nproc` run the launcher,
    which alone knows how every rank ended.
    """
    because = f": {cause}" if cause else ""
    if status == "interrupted":
        return f"run interrupted after {progress}{because}; continue it with `amemctl run --resume {run_dir}`"
    return f"run stopped after {progress}{because}; what finished is in {run_dir}"


def unstarted_line(signum: int, cause: str = "", resuming: "str | Path | None" = None) -> str:
    """What `amemctl run` says when a stop signal came before the run was recorded: nothing to resume, or (`resuming`) the run as it was."""
    because = f" ({cause})" if cause else ""
    if resuming is not None:
        return f"run stopped by {signal.Signals(signum).name} before it resumed{because}: {resuming} is as it was; continue it with `amemctl run --resume {resuming}`"
    return f"run stopped by {signal.Signals(signum).name} before it started{because}: no run was recorded, so there is nothing to resume"


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """run.json of a run folder as it reads, unchecked; None when absent or unreadable (see load_record)."""
    return read_json(run_dir / RECORD)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file of a run folder; None when absent, unreadable or not an object."""
    try:
        return json_object(path)
    except ValueError:
        return None


def json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; a ValueError saying why not (absent, not JSON, nested too deep, not an object)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError("it does not exist") from None
    except OSError as exc:
        raise ValueError(f"it cannot be read ({exc.strerror or exc})") from None
    except RecursionError:  # "[[[[..." a hundred thousand deep
        raise ValueError("it nests too deep to be amemctl's") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ValueError(f"it is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
    return data


def _nullable(kind: Any) -> tuple:
    return (kind, type(None))


_LIST_OF_STR = "a list of strings"
#: run.json's fields, each with the types amemctl writes it as (a field may be absent: runs of older versions)
FIELDS: dict[str, tuple[Any, str]] = {
    "format": (str, "a string"),
    "id": (str, "a string"),
    "pipeline": (str, "a string"),
    "file": (str, "a string"),
    "overrides": (_LIST_OF_STR, _LIST_OF_STR),
    "command": (_LIST_OF_STR, _LIST_OF_STR),
    "cwd": (str, "a string"),
    "git": (_nullable(dict), "an object or null"),
    "started": (str, "a string"),
    "ended": (_nullable(str), "a string or null"),
    "status": (str, "a string"),
    "pid": (int, "an integer"),
    "host": (str, "a string"),
    "points_total": (int, "an integer"),
    "repeats": (int, "an integer"),
    "points_done": (int, "an integer"),
    "points_reused": (int, "an integer"),
    "headline": (_nullable(dict), "an object or null"),
    "error": (_nullable(dict), "an object or null"),
    "attempts": (list, "a list"),
    "inputs": (dict, "an object"),
}
#: fields inside the objects above, all strings (git's `dirty` apart)
_INNER = {"git": ("commit",), "headline": ("metric", "format"), "error": ("type", "message", "traceback")}
#: what a run.json from before the format marker holds: amemctl wrote all of these from the first
_LEGACY = ("pipeline", "started", "status", "pid", "host", "points_total")


def load_record(run_dir: Path) -> dict[str, Any]:
    """run.json of a run folder, checked: amemctl's marker and every field's type.

    What --resume and `runs show`/`compare` read: a folder without it is not a run folder
    (resuming one would write over files that are not amemctl's), and a field of the wrong
    type is one error naming run.json rather than a traceback wherever it is first used.
    """
    path = run_dir / RECORD
    try:
        data = json_object(path)
    except ValueError as exc:
        if not path.exists():
            raise RunFolderError(
                f"{run_dir} is not an amemctl run folder: it has no {RECORD}",
                hint=f"give a run folder that `amemctl run` made (`amemctl runs ls` lists them){_own_pipeline(run_dir)}",
            ) from None
        raise RunFolderError(f"{path} is damaged: {exc}", hint=_DAMAGED) from None
    marker = data.get("format")
    if not _amemctls(data):
        raise RunFolderError(
            f"{path} was not written by amemctl (its `format` is {marker!r}, not {RUN_FORMAT!r}), so {run_dir} is not a run folder",
            hint=f"give a run folder that `amemctl run` made (`amemctl runs ls` lists them){_own_pipeline(run_dir)}",
        )
    problem = record_problem(data)
    if problem:
        raise RunFolderError(f"{path} is damaged: {problem}", hint=_DAMAGED)
    return data


def _amemctls(data: dict[str, Any]) -> bool:
    """Whether a run.json is amemctl's: its format marker, or (written before the marker) every field amemctl always wrote."""
    if "format" in data:
        return data["format"] == RUN_FORMAT
    return all(k in data for k in _LEGACY)


_DAMAGED = "run.json is amemctl's own record of the run: put it back as amemctl wrote it, or start the run afresh with `amemctl run PIPELINE`"


def _own_pipeline(run_dir: Path) -> str:
    pipeline = run_dir / "pipeline.yaml"
    return f"; to run {pipeline}, `amemctl run {pipeline}` makes a new run folder under runs/" if pipeline.is_file() else ""


def record_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a run.json's fields (the first thing found), or None when each has its type."""
    for key, (kind, noun) in FIELDS.items():
        if key not in data:
            continue
        value = data[key]
        if not _is(value, kind):
            return f"field {key!r} should be {noun}, not {short_repr(value)}"
        for inner in _INNER.get(key, ()) if isinstance(value, dict) else ():
            if inner in value and not isinstance(value[inner], str):
                return f"field {key}.{inner} should be a string, not {short_repr(value[inner])}"
    for n, attempt in enumerate(data.get("attempts") or []):
        if not isinstance(attempt, dict):
            return f"attempts[{n}] should be an object, not {short_repr(attempt)}"
    return None


def _is(value: Any, kind: Any) -> bool:
    if kind == _LIST_OF_STR:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is int:
        return is_int(value)
    return isinstance(value, kind)


def is_int(value: Any) -> bool:
    """An integer as JSON and torch.save keep one (a bool is not one, though Python says it is)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An integer or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def short_repr(value: Any) -> str:
    """A short repr of a bad value (reprlib: bounded in depth and length, however nested)."""
    return reprlib.repr(value)


def status_of(record: dict[str, Any]) -> str:
    """The record's status, with a `running` run whose process is gone on this host read as `dead`."""
    status = str(record.get("status", "unknown"))
    if status == "running" and record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        return "dead"
    return status


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # someone else's process
        return True
    except (OSError, OverflowError):  # gone, or no pid at all (an edited run.json)
        return False
    return True
