"""One writer per output folder: `<out>/.lock`, held with flock by the running stage.

The kernel drops an flock when its process dies, however it dies, so a lock left by a
killed run is stale by construction and the next run simply takes it; the file only
records who holds it (pid, host, command), for the message a second writer gets.

The lock is re-entrant within a process: a stage's command line takes it, and the library
function it calls (which takes it too, for callers from Python) finds it held by its own
process and goes on. An flock belongs to an open file, so without this the second `open`
of the same process would be refused as a second writer.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from core.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# Folders whose lock this process holds (resolved path -> depth of nesting).
_HELD: dict[str, int] = {}
# Kernel pseudo file systems: a stage writing there would change the machine, not a folder.
FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


# Below this much free space an output folder is refused up front: a stage that starts
# would only fail part way with "No space left on device".
MIN_FREE_BYTES = 16 * 2**20


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on `folder`'s file system."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def check_out_dir(out: Path, flag: str = "--out") -> Path:
    """UserError unless `out` can be an output folder: not a file, not a symbolic link, not
    under /proc, /sys or /dev, its nearest existing ancestor a writable folder on a file
    system with MIN_FREE_BYTES free. Creates nothing."""
    resolved = Path(os.path.abspath(out))
    real = Path(os.path.realpath(out))
    if resolved.is_symlink():
        raise UserError(f"{flag} {str(out)!r} is a symbolic link (to {os.readlink(resolved)!r}); "
                        f"expected a folder path, not a link (pass the folder it names)")
    for root in FORBIDDEN_ROOTS:
        if any(p == root or root in p.parents for p in (resolved, real)):
            raise UserError(f"{flag} {str(out)!r} is under {root}; expected a folder on a "
                            f"normal file system")
    if resolved.exists() and not resolved.is_dir():
        raise UserError(f"{flag} {str(out)!r} is a file; expected a folder (new or existing)")
    check_room(out, flag, resolved)
    return resolved


def check_room(out, flag: str, place: Path) -> None:
    """UserError unless the nearest existing path at or above `place` is a writable folder on a
    file system with MIN_FREE_BYTES free (what a stage writing at `place` needs)."""
    ancestor = place
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {str(out)!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {str(out)!r}: {str(ancestor)!r} is not writable")
    free = free_bytes(ancestor)
    if free < MIN_FREE_BYTES:
        raise UserError(f"{flag} {str(out)!r}: its file system has {free / 2**20:.1f} MiB free; "
                        f"expected at least {MIN_FREE_BYTES // 2**20} MiB")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} (started "
            f"{time.strftime('%H:%M:%S', time.localtime(info.get('time', 0)))}: "
            f"{info.get('command', '?')})")


def held_here(out: Path) -> bool:
    """Whether this process holds the writer lock of `out`."""
    return bool(_HELD.get(os.path.realpath(out)))


@contextlib.contextmanager
def writer_lock(out: Path, flag: str = "--out") -> Iterator[Path]:
    """Hold `<out>/.lock` for the block; UserError naming the holder when another live
    process holds it. `out` is created if needed; when this call created it and the block
    fails, it is removed again (if nothing but the lock was written), so bad input leaves
    nothing behind. Nested in a block of this process that holds the same lock, it only
    checks `out` and yields."""
    out = check_out_dir(out, flag)
    key = os.path.realpath(out)
    if _HELD.get(key):  # this process holds it already (see the module docstring)
        _HELD[key] += 1
        try:
            yield out
        finally:
            _HELD[key] -= 1
        return
    created = [p for p in (out, *out.parents) if not p.exists()]  # innermost first
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_NAME, "a+")
    except OSError as err:
        raise UserError(f"{flag} {str(out)!r} cannot be written: {err.strerror}") from None
    ok = False
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{flag} {str(out)!r} is being written by {_holder(out / LOCK_NAME)}; "
                            f"wait for it to finish or use another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "time": time.time(), "command": " ".join(sys.argv[:8])}))
        handle.flush()
        _HELD[key] = 1
        try:
            yield out
        finally:
            _HELD.pop(key, None)
        ok = True
    finally:
        if not ok and created and [p.name for p in out.iterdir()] == [LOCK_NAME]:
            (out / LOCK_NAME).unlink()
            for folder in created:
                folder.rmdir()
        handle.close()  # releases the flock; the file stays (unlinking it would race)
