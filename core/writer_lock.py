"""One writer per output folder: `<out>/.lock`, held with flock by the running stage.

The kernel drops an flock when its process dies, however it dies, so a lock left by a
killed run is stale by construction and the next run simply takes it; the file only
records who holds it (pid, host, command), for the message a second writer gets.
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
# Kernel pseudo file systems: a stage writing there would change the machine, not a folder.
FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_out_dir(out: Path, flag: str = "--out") -> Path:
    """UserError unless `out` can be an output folder: not a file, not under /proc, /sys
    or /dev, its nearest existing ancestor a writable folder. Creates nothing."""
    resolved = Path(os.path.abspath(out))
    real = Path(os.path.realpath(out))
    for root in FORBIDDEN_ROOTS:
        if any(p == root or root in p.parents for p in (resolved, real)):
            raise UserError(f"{flag} {str(out)!r} is under {root}; expected a folder on a "
                            f"normal file system")
    if resolved.exists() and not resolved.is_dir():
        raise UserError(f"{flag} {str(out)!r} is a file; expected a folder (new or existing)")
    ancestor = resolved
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {str(out)!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {str(out)!r}: {str(ancestor)!r} is not writable")
    return resolved


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} (started "
            f"{time.strftime('%H:%M:%S', time.localtime(info.get('time', 0)))}: "
            f"{info.get('command', '?')})")


@contextlib.contextmanager
def writer_lock(out: Path, flag: str = "--out") -> Iterator[Path]:
    """Hold `<out>/.lock` for the block; UserError naming the holder when another live
    process holds it. `out` is created if needed; when this call created it and the block
    fails, it is removed again (if nothing but the lock was written), so bad input leaves
    nothing behind."""
    out = check_out_dir(out, flag)
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
        yield out
        ok = True
    finally:
        if not ok and created and [p.name for p in out.iterdir()] == [LOCK_NAME]:
            (out / LOCK_NAME).unlink()
            for folder in created:
                folder.rmdir()
        handle.close()  # releases the flock; the file stays (unlinking it would race)
