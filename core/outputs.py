"""Where a stage may write: one output policy for every stage.

Every stage that writes calls `claim` (a folder: train, reconstruct, benchmark, evaluate,
export, prepare, ...) or `check_out_file` (one file: animate) at the top of its entry point,
naming its inputs, before any work:

- **usable**: `--out` is not a file where a folder is expected, not a symbolic link, not
  under /proc, /sys or /dev, on a writable file system with room left
  (core.writer_lock.check_out_dir); one line and exit 2 otherwise;
- **apart from the inputs**: `--out` is not an input, not inside one and does not contain
  one. Paths are compared by device and inode of the path and each of its ancestors, so
  `..`, symbolic links, bind mounts and hard links are seen through;
- **owned**: a stage writes into, replaces or deletes in a folder only when the folder is
  new, empty, or marked as its own. The mark is `.motion-transfer.json`, naming the stage,
  written atomically when the stage creates or first takes the folder. A folder an earlier
  version of the same stage wrote (no mark yet) is recognised by the files the stage names
  (`earlier`) and marked; anything else is refused, so a user's folder is never written into;
- **one writer**: the folder's writer lock (core.writer_lock) is held while the stage runs;
- **no leftovers**: with the lock held, the temporary files a killed run left are removed
  (core.media.remove_partial_files), and a folder this run created is removed again when the
  run fails before it wrote anything but its bookkeeping (`scaffolding`, e.g. config.yaml).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Mapping, Union

from core.errors import UserError
from core.writer_lock import FORBIDDEN_ROOTS, LOCK_NAME, check_out_dir, check_room, writer_lock

log = logging.getLogger(__name__)

MARKER = ".motion-transfer.json"
MARKER_FORMAT = 1
# What a folder may hold besides a stage's own files without counting as holding anything.
BOOKKEEPING = (LOCK_NAME, MARKER)

Inputs = Mapping[str, "str | os.PathLike | None"]
# How a stage recognises a folder an earlier version of it wrote (no mark yet): names or glob
# patterns of which one must be there, or a function of the folder.
Earlier = Union[Iterable[str], Callable[[Path], bool]]


# --------------------------------------------------------------------------- apart from the inputs
def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stats = os.stat(path)  # follows links: a link is the thing it names
    except OSError:
        return None
    return stats.st_dev, stats.st_ino


def _chain(path: Path) -> list[tuple[int, int]]:
    """Identities of `path` (when it exists) and of every existing ancestor, innermost first,
    along both the path as written and the path with its links resolved."""
    found = []
    for spelling in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        for candidate in (spelling, *spelling.parents):
            identity = _identity(candidate)
            if identity is not None and identity not in found:
                found.append(identity)
    return found


def check_apart(out: str | os.PathLike, inputs: Inputs, flag: str = "--out") -> None:
    """UserError when `out` is one of `inputs` (name -> path; None and paths that do not
    exist are skipped), lies inside one, or contains one."""
    out_path = Path(out)
    out_self = _identity(out_path)
    out_chain = _chain(out_path)
    for name, value in inputs.items():
        if value is None or str(value) in ("", "-"):
            continue
        given = Path(value)
        given_self = _identity(given)
        if given_self is None:
            continue
        if out_self is not None and out_self == given_self:
            raise UserError(f"{flag} {str(out)!r} is the {name} {str(value)!r}: writing it would destroy "
                            f"the input; expected another output path")
        if given_self in out_chain:
            raise UserError(f"{flag} {str(out)!r} is inside the {name} {str(value)!r}: writing there "
                            f"would change the input; expected another output path, outside it")
        if out_self is not None and out_self in [i for i in _chain(given) if i != given_self]:
            raise UserError(f"{flag} {str(out)!r} contains the {name} {str(value)!r}: writing there "
                            f"could replace or delete the input; expected another output path")


# --------------------------------------------------------------------------- usable
def check_out_file(out: str | os.PathLike, inputs: Inputs = {}, flag: str = "--out") -> Path:
    """UserError unless `out` can be written as one file: not a folder, not a symbolic link,
    not under /proc, /sys or /dev, its nearest existing folder writable with room left, and
    apart from `inputs` (check_apart). Creates nothing; returns the absolute path."""
    path = Path(os.path.abspath(out))
    real = Path(os.path.realpath(out))
    for root in FORBIDDEN_ROOTS:
        if any(p == root or root in p.parents for p in (path, real)):
            raise UserError(f"{flag} {str(out)!r} is under {root}; expected a file on a normal file system")
    check_apart(out, inputs, flag)
    if path.is_symlink():
        raise UserError(f"{flag} {str(out)!r} is a symbolic link (to {os.readlink(path)!r}); expected a "
                        "file path, not a link")
    if path.is_dir():
        raise UserError(f"{flag} {str(out)!r} is a folder; expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {str(out)!r}: {str(path)!r} is not writable")
    check_room(out, flag, path.parent)
    return path


# --------------------------------------------------------------------------- owned
def read_marker(folder: Path) -> dict | None:
    """The mark of a folder a stage owns, or None; UserError when it is unreadable."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
        raise UserError(f"{str(path)!r} is not a readable stage mark; expected the JSON a stage writes "
                        "(delete it only if you know which stage owns the folder)")
    return data


def write_marker(folder: Path, stage: str) -> None:
    """Mark `folder` as `stage`'s, atomically (a temporary file renamed into place)."""
    from core.media import temp_file
    tmp = temp_file(folder, f"{MARKER}.", ".part")
    try:
        tmp.write_text(json.dumps({"stage": stage, "format": MARKER_FORMAT}) + "\n")
        os.replace(tmp, folder / MARKER)
    finally:
        tmp.unlink(missing_ok=True)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in BOOKKEEPING)


def _is_earlier(out: Path, earlier: Earlier) -> bool:
    if callable(earlier):
        return bool(earlier(out))
    return any(next(out.glob(pattern), None) is not None for pattern in earlier)


def check_owned(out: Path, stage: str, flag: str = "--out", earlier: Earlier = (),
                accepts: Iterable[str] = ()) -> str:
    """How `stage` may use the folder `out`: "new" (absent), "empty", "ours" (marked by
    `stage` or one of `accepts`) or "earlier" (unmarked, but what an older version of the
    stage wrote: `earlier`). UserError for anything else."""
    if not out.exists():
        return "new"
    entries = _listing(out)
    marker = read_marker(out)
    if marker is not None:
        if marker["stage"] == stage or marker["stage"] in tuple(accepts):
            return "ours"
        raise UserError(f"{flag} {str(out)!r} holds the output of `pipeline run {marker['stage']}`; "
                        f"expected a new folder, an empty one or an earlier `{stage}` output")
    if not entries:
        return "empty"
    if _is_earlier(out, earlier):
        return "earlier"
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise UserError(f"{flag} {str(out)!r} holds files `pipeline run {stage}` did not write ({shown}); "
                    f"expected a new or empty folder, or an earlier {stage} output (nothing was changed)")


def check_out_folder(out: str | os.PathLike, stage: str, inputs: Inputs = {}, flag: str = "--out",
                     earlier: Earlier = (), accepts: Iterable[str] = ()) -> Path:
    """Every check of `claim`, with no side effect: usable, apart from `inputs`, owned."""
    check_apart(out, inputs, flag)
    path = check_out_dir(Path(out), flag)
    check_owned(path, stage, flag, earlier, accepts)
    return path


class claim:
    """The output folder of a stage: checked when made (check_out_folder), held while the
    `with` block runs (writer lock, mark, leftovers of a killed run removed), released after.

        with claim(args.out, "reconstruct", {"--data": data, "--checkpoint": ckpt}) as out:
            ...

    Made before any work, it fails fast; entered, it checks again with the lock held. When
    this run created the folder and the block fails, the folder goes again if it holds
    nothing but its bookkeeping and `scaffolding` (files that mean nothing without results).
    `partial_dirs`: subfolders whose temporary files are removed too. `mark=False` claims a
    folder another stage owns (`accepts`) without marking it (report writes its pages into a
    run folder).
    """

    def __init__(self, out: str | os.PathLike, stage: str, inputs: Inputs = {}, flag: str = "--out",
                 earlier: Earlier = (), accepts: Iterable[str] = (), scaffolding: Iterable[str] = (),
                 partial_dirs: Iterable[str] = (), mark: bool = True):
        self.stage, self.inputs, self.flag, self.mark = stage, dict(inputs), flag, mark
        self.earlier, self.accepts = earlier if callable(earlier) else tuple(earlier), tuple(accepts)
        self.scaffolding, self.partial_dirs = tuple(scaffolding), tuple(partial_dirs)
        self.out = check_out_folder(out, stage, self.inputs, flag, self.earlier, self.accepts)
        self._lock = None

    def __enter__(self) -> Path:
        from core.media import remove_partial_files
        from core.writer_lock import held_here
        self._created = not self.out.exists()
        self._lock_made = not (self.out / LOCK_NAME).exists()
        self._nested = held_here(self.out)
        self._lock = writer_lock(self.out, self.flag)
        out = self._lock.__enter__()
        self._marked, self._before = False, set()
        try:
            check_apart(out, self.inputs, self.flag)
            how = check_owned(out, self.stage, self.flag, self.earlier, self.accepts)
            self._before = set(_listing(out))
            if how != "ours" and self.mark:
                if how == "earlier":
                    log.info("%s: an earlier `%s` output without a stage mark; marked now", out, self.stage)
                write_marker(out, self.stage)
                self._marked = True
            for folder in (out, *(out / name for name in self.partial_dirs)):
                if folder.is_dir():
                    remove_partial_files(folder)
        except BaseException:
            self._lock.__exit__(*_exc_info())
            raise
        return out

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is not None and not self._nested and self.out.is_dir():
                self._undo()
        finally:
            self._lock.__exit__(exc_type, exc, tb)
        return False

    def _undo(self) -> None:
        """After a failed run: what this claim added (mark, lock file, the folder itself) goes
        again when the run wrote nothing else (its `scaffolding` aside), so a refused start
        leaves the folder as it found it."""
        now = set(_listing(self.out))
        if self._created:
            if now - set(self.scaffolding):
                return
            for name in self.scaffolding:
                target = self.out / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
            (self.out / MARKER).unlink(missing_ok=True)  # writer_lock then removes the folder
        elif now - set(self.scaffolding) == self._before - set(self.scaffolding):
            for name in (now & set(self.scaffolding)) - self._before:
                (self.out / name).unlink(missing_ok=True)
            if self._marked:
                (self.out / MARKER).unlink(missing_ok=True)
            if self._lock_made:
                (self.out / LOCK_NAME).unlink(missing_ok=True)


def _exc_info():
    import sys
    return sys.exc_info()


# --------------------------------------------------------------------------- replacing owned files
def check_only_own_files(folder: Path, own: Iterable[str], flag: str = "--out",
                         what: str = "replace") -> None:
    """UserError when `folder` holds anything besides `own` names and the bookkeeping: a
    stage that replaces a whole folder must not take a user's file with it."""
    own = set(own)
    foreign = [name for name in _listing(folder) if name not in own]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(f"{flag} {str(folder)!r} holds files this stage did not write ({shown}); "
                        f"expected only {sorted(own)} to {what} (move the others away or choose another folder)")
