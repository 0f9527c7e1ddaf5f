"""The one way this project writes to disk: folders built aside and renamed into place, atomic files, and one
ownership rule, so that nothing half-written ever looks finished and no folder of the user's is ever replaced.

Ownership: a folder is this project's when it holds the marker file `.rlhf-recipes` (written into every folder this
project creates), or was written by an earlier version (`lineage.json`, `eval.json`, `pipeline_manifest.json`,
`publish.json`, a data report). Only such a folder, or an empty one, is ever written into or replaced.
Permissions: folders come out as `mkdir` makes them (0o777 minus the umask), never `mkdtemp`'s owner-only 0o700.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .cli import UserError

MARKER = ".rlhf-recipes"
_LEGACY_MARKERS = ("lineage.json", "eval.json", "pipeline_manifest.json", "publish.json")


def _umask_mode(mode: int = 0o777) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def is_ours(folder: str | Path) -> bool:
    """Whether this project made `folder` (see the module docstring)."""
    folder = Path(folder)
    if (folder / MARKER).is_file() or any((folder / name).is_file() for name in _LEGACY_MARKERS):
        return True
    try:  # prepare_data.py's report of an earlier version
        return json.loads((folder / "report.json").read_text()).get("generator") == "rlhf_recipes.prepare_data"
    except (OSError, ValueError, AttributeError):
        return False


def mark(folder: str | Path, what: str) -> None:
    """Write the ownership marker into a folder this project made."""
    atomic_write_text(Path(folder) / MARKER, json.dumps({"written_by": what}) + "\n")


def check_output_folder(
    folder: str | Path, key: str, where: str, *, what: str, replace: bool | None = None, flag: str = "overwrite"
) -> Path:
    """Refuse an output folder the run must not write into, before any work starts; returns it as a Path.

    Allowed: a new path, an empty folder, or one this project made. `replace=None` (training stages, which resume in
    their own folder) allows such a folder as it is; `replace=False` refuses it too unless `flag` is set, `True`
    allows it to be replaced. Its nearest existing parent must be writable.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key}={folder} {where} is a file; give a folder path for the {what} output.")
    if folder.is_dir() and any(folder.iterdir()) and not is_ours(folder):
        raise UserError(
            f"{key}={folder} {where} is a folder this project did not write ({next(folder.iterdir()).name} is in it); "
            "choose a new or empty output folder, or move that one away."
        )
    if replace is False and folder.is_dir() and any(p.name != MARKER for p in folder.iterdir()):
        raise UserError(
            f"{key}={folder} {where} already holds an earlier {what} output; set {flag}: true to replace it, or choose "
            "another folder."
        )
    parent = folder if folder.is_dir() else next((p for p in folder.parents if p.exists()), Path("."))
    if not writable(parent):
        raise UserError(f"{key}={folder} {where} cannot be written ({parent} is read-only); choose a writable folder.")
    return folder


def writable(folder: Path) -> bool:
    """Whether a file can be created in `folder`: tried, not guessed from permission bits (root passes those, but not
    a read-only file system or an immutable folder)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def claim(folder: str | Path, what: str) -> Path:
    """Create (or reuse) an output folder that `check_output_folder` allowed, and mark it as this project's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        mark(folder, what)
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

    An existing `target` is replaced only when it is empty or (with `replace`) this project's; the check runs again
    at the rename, so a folder that appeared meanwhile is never touched (the result is then kept aside and named).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    tmp.chmod(_umask_mode())
    try:
        yield tmp
        mark(tmp, what)
        publish_folder(tmp, target, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, target: Path, *, replace: bool) -> None:
    """Rename a finished folder into place (see `build_aside`)."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.replace(tmp, target)
        return
    if not (replace and target.is_dir() and is_ours(target)):
        kept = target.with_name(f"{target.name}.new-{os.getpid()}")
        os.replace(tmp, kept)
        raise UserError(f"{target} exists and may not be replaced; the new result is kept in {kept}.")
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
