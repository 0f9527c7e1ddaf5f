"""The one way this project writes to disk: folders built aside and renamed into place, atomic files, and one
ownership rule, so that nothing half-written ever looks finished and no folder of the user's is ever replaced.

Ownership: every folder this project creates holds the marker file `.rlhf-recipes`, naming the stage that made it
(`{"written_by": "sft", "run": ...}`) and, for a stage the pipeline ran, the pipeline run (`run`, the id in the
pipeline folder's own marker, handed to its stages in $RLHF_RECIPES_PIPELINE_RUN). The one rule: a stage writes into,
resumes in or replaces only a new or empty folder, or one that the same stage made (with `run=`, in that pipeline
run), and never one that holds a store (a SQLite file such as feedback.sqlite) or another stage's output; anything
else is refused in one sentence before any work, and checked again at the rename. The pipeline's own folder holds its
stages' outputs and the store by design: it is only ever reused, never replaced.

Folders of earlier versions have no marker (or one without `run`): their stage is read from what they hold
(`publish.json`: publish, `pipeline_manifest.json`: pipeline, `eval.json`: eval, `lineage.json`: its `stage`, a data
report or a folder of nothing but data outputs: data), and a marker without `run` passes any run check (the
pipeline's manifest still says what it made).
Permissions: folders come out as `mkdir` makes them (0o777 minus the umask), never `mkdtemp`'s owner-only 0o700.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

MARKER = ".rlhf-recipes"
RUN_ENV = "RLHF_RECIPES_PIPELINE_RUN"  # the pipeline run a stage process belongs to (set by the pipeline)
# What earlier versions wrote as `written_by` (and some callers still say) -> the registry's stage name
_STAGE_NAMES = {"evaluation": "eval", "publish staging": "publish", "collected answers": "collect",
                "preference pairs": "label"}  # fmt: skip
# Earlier versions' finished-folder files, most specific first (a publish staging folder holds a lineage.json too)
_LEGACY_FILES = (("publish.json", "publish"), ("pipeline_manifest.json", "pipeline"), ("eval.json", "eval"))
_SQLITE_HEADER = b"SQLite format 3\x00"
_STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db", ".sqlite-wal", ".sqlite-shm")


def _umask_mode(mode: int = 0o777) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def stage_name(what: str) -> str:
    """The registry name of the stage a caller or an earlier marker describes ("evaluation" -> "eval")."""
    return _STAGE_NAMES.get(what, what)


@dataclass(frozen=True)
class Owner:
    """Who made a folder: the stage (None when this project's but unreadable), and the pipeline run if any."""

    stage: str | None
    run: str | None = None
    legacy: bool = False  # told from an earlier version's files, or a marker without `run`: no run to compare


def owner(folder: str | Path) -> Owner | None:
    """Who made `folder` (see the module docstring); None when this project did not."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        try:
            marker = json.loads((folder / MARKER).read_text())
        except (OSError, ValueError):
            marker = None
        if not isinstance(marker, dict) or not isinstance(marker.get("written_by"), str):
            return Owner(None, legacy=True)
        return Owner(stage_name(marker["written_by"]), marker.get("run"), legacy="run" not in marker)
    for name, stage in _LEGACY_FILES:
        if (folder / name).is_file():
            return Owner(stage, legacy=True)
    if (folder / "lineage.json").is_file():  # a stage output; unreadable: ours, but of no stage that can be told
        stage = _json_field(folder / "lineage.json", "stage")
        return Owner(stage if isinstance(stage, str) else None, legacy=True)
    if _json_field(folder / "report.json", "generator") == "rlhf_recipes.prepare_data":  # prepare_data.py's report
        return Owner("data", legacy=True)
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
    if entries and all(p.is_dir() and getattr(owner(p), "stage", None) == "data" for p in entries):
        return Owner("data", legacy=True)  # an earlier version's data output_root: only the data stage's folders
    return None


def _json_field(path: Path, key: str):
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def is_ours(folder: str | Path) -> bool:
    """Whether this project made `folder`."""
    return owner(folder) is not None


def stores(folder: Path) -> Iterator[Path]:
    """The stores in `folder` (at any depth): SQLite databases by name, and any top-level file that is one."""
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if path.name.endswith(_STORE_SUFFIXES):
            yield path
        elif path.parent == folder:
            try:
                with open(path, "rb") as handle:
                    if handle.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER:
                        yield path
            except OSError:
                continue


def refusal(folder: str | Path, stage: str, run: str | None = None) -> str | None:
    """Why the `stage` stage may not write into or replace the existing, non-empty `folder` (the rest of a sentence
    after the folder's name), or None when it may: it made the folder (in pipeline run `run`, when given), and the
    folder holds no store and no other stage's output."""
    folder, stage = Path(folder), stage_name(stage)
    found = owner(folder)
    if found is None:
        first = min(p.name for p in folder.iterdir())
        return f"is a folder this project did not write ({first} is in it)"
    if found.stage is None:
        return (
            "was written by this project, but which stage made it cannot be told (its marker or lineage.json is bad)"
        )
    if found.stage != stage and found.stage == "pipeline":
        return (
            f"is a pipeline's output folder (every stage's output and the comparison store are in it), which the "
            f"{stage} stage may not write into or replace"
        )
    if found.stage != stage:
        return f"holds the output of the {found.stage} stage, which the {stage} stage may not write into or replace"
    if run is not None and not found.legacy and found.run != run:
        return f"holds a {stage} output made outside this pipeline run, which this pipeline may not replace"
    if stage == "pipeline":  # the pipeline's folder holds its stages' outputs and the store: reused, never replaced
        return None
    store = next(stores(folder), None)
    if store is not None:
        return f"holds the store {store.relative_to(folder)}, which no stage may replace"
    for child in sorted(p for p in folder.iterdir() if (p / MARKER).is_file()):  # a copied report is no output
        inner = owner(child)
        if inner is not None and inner.stage not in (stage, "cache"):
            made_by = f"the {inner.stage} stage" if inner.stage else "another stage"
            return f"holds the output of {made_by} in {child.name}/, which the {stage} stage may not replace"
    return None


def mark(folder: str | Path, what: str, run: str | None = None) -> None:
    """Write the ownership marker into a folder this project made: the stage, and the pipeline run it belongs to."""
    marker = {"written_by": stage_name(what), "run": run or os.environ.get(RUN_ENV) or None}
    atomic_write_text(Path(folder) / MARKER, json.dumps(marker) + "\n")


def pipeline_run(folder: str | Path) -> str:
    """The run id a pipeline folder's marker holds, or a new one for a folder that has none yet."""
    found = owner(folder) if Path(folder).is_dir() else None
    return found.run if found is not None and found.stage == "pipeline" and found.run else uuid.uuid4().hex[:12]


def check_output_folder(
    folder: str | Path, key: str, where: str, *, what: str, replace: bool | None = None, flag: str = "overwrite",
    run: str | None = None,
) -> Path:  # fmt: skip
    """Refuse an output folder the run must not write into, before any work starts; returns it as a Path.

    Allowed: a new path, an empty folder, or one the same stage made that holds no store and no other stage's output
    (`refusal`; `run`: made in that pipeline run). `replace=None` (training stages, which resume in their own folder)
    allows such a folder as it is; `replace=False` refuses it too unless `flag` is set, `True` allows it to be
    replaced. Its nearest existing parent must be writable.
    """
    folder = Path(folder)
    named = " ".join(filter(None, (f"{key}={folder}", where)))
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{named} is a file; give a folder path for the {what} output.")
    if folder.is_dir() and any(folder.iterdir()):
        reason = refusal(folder, stage_name(what), run)
        if reason is not None and owner(folder) is None:
            raise UserError(f"{named} {reason}; choose a new or empty output folder, or move that one away.")
        if reason is not None:
            raise UserError(
                f"{named} {reason}; a stage writes only into a new or empty folder or one it made itself, so choose "
                f"another {key}."
            )
    if replace is False and folder.is_dir() and any(p.name != MARKER for p in folder.iterdir()):
        raise UserError(
            f"{named} already holds an earlier {what} output; set {flag}: true to replace it, or choose another "
            "folder."
        )
    parent = folder if folder.is_dir() else next((p for p in folder.parents if p.exists()), Path("."))
    if not writable(parent):
        raise UserError(f"{named} cannot be written ({parent} is read-only); choose a writable folder.")
    return folder


def writable(folder: Path) -> bool:
    """Whether a file can be created in `folder`: tried, not guessed from permission bits (root passes those, but not
    a read-only file system or an immutable folder)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def claim(folder: str | Path, what: str, run: str | None = None) -> Path:
    """Create (or reuse) an output folder that `check_output_folder` allowed, and mark it as the `what` stage's (an
    earlier version's folder gets its marker now, naming the stage its files told)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        mark(folder, what, run)
    return folder


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a file through a temporary sibling and a rename: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def build_aside(target: str | Path, *, what: str, replace: bool = False) -> Iterator[Path]:
    """A fresh hidden sibling of `target` to fill; renamed into place when the block succeeds, removed otherwise.

    An existing `target` is replaced only when it is empty or (with `replace`) the `what` stage's own (`refusal`); the
    check runs again at the rename, so a folder that appeared or changed meanwhile (a store created in it) is never
    touched: the result is then kept aside and named.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    tmp.chmod(_umask_mode())
    try:
        yield tmp
        mark(tmp, what)
        publish_folder(tmp, target, replace=replace, what=what)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, target: Path, *, replace: bool, what: str) -> None:
    """Rename a finished folder into place (see `build_aside`)."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.replace(tmp, target)
        return
    reason = refusal(target, what) if target.is_dir() else "is a file"
    if not replace or reason is not None:
        kept = target.with_name(f"{target.name}.new-{os.getpid()}")
        os.replace(tmp, kept)
        why = f" ({reason})" if reason else ""
        raise UserError(f"{target} exists{why} and may not be replaced; the new result is kept in {kept}.")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def build_cached(target: str | Path, build: Callable[[Path], None]) -> Path:
    """A cache folder built once: by one process at a time (a file lock; the others wait and reuse it), aside and
    renamed into place, so an interruption never leaves half a cache."""
    from filelock import FileLock

    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    try:
        with FileLock(lock):
            if target.is_dir():  # built by the process that held the lock before us
                return target
            with build_aside(target, what="cache") as tmp:
                build(tmp)
    finally:
        lock.unlink(missing_ok=True)  # safe once the target exists: a later process returns before locking
    return target


RERUN = "rerun the stage that made it (it resumes from its last checkpoint)"


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a file a stage wrote, or one sentence: missing, unreadable, not JSON, or not an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing, so {what} cannot be read; {RERUN}.") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path} is not valid JSON ({error}), so {what} cannot be read; {RERUN}.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not the object {what} is; {RERUN}.")
    return data
