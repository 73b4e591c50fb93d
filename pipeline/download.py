"""Getting a video onto local disk: yt-dlp into a cache keyed by video id, from YouTube
(default), a mirror (`--url-template 'http://host/{video_id}.mp4'`) or a direct URL, or a
file the user already has (`--source-dir DIR`, files named by video id).

A video that cannot be had raises `Unavailable` with yt-dlp's reason; the caller turns it
into `status=unavailable` rows for every clip of that video, never a crash. Timeouts and
retries are kept low so an offline machine learns it within a second, not minutes, and a
download that stalls (a server trickling bytes) is stopped after `--stall-timeout`.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from core.errors import UserError
from pipeline.clips import PLAIN_NAME

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif", ".m4v", ".flv")
YOUTUBE_URL = "https://www.youtube.com/watch?v={video_id}"
SOCKET_TIMEOUT_S = 10


class Unavailable(Exception):
    """The video cannot be obtained (removed, private, 404, no network, not in --source-dir)."""


def video_id_of_url(url: str) -> str:
    """A cache key for a direct URL: its file name without extension."""
    stem = Path(urllib.parse.urlparse(url).path).stem
    return stem or re.sub(r"[^A-Za-z0-9_.\-]", "_", url)


def _check_id(video_id: str) -> None:
    if not PLAIN_NAME.fullmatch(video_id):  # ids become file names: no slashes, no '..' tricks (nor a newline)
        raise Unavailable(f"video id {video_id!r} is not a plain name")


def cached_file(cache_dir: Path, video_id: str) -> Path | None:
    """A finished download of `video_id` in the cache (yt-dlp renames .part files when done)."""
    for path in sorted(Path(cache_dir).glob(f"{video_id}.*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            return path
    return None


def discard(path: Path, cache_dir: Path) -> None:
    """Remove a downloaded file that does not decode (truncated, corrupt) from the cache, so
    the next run fetches it again instead of failing on it forever; only a file directly in
    `cache_dir`, never one the user gave."""
    path, cache_dir = Path(path), Path(cache_dir)
    if path.parent.resolve() == cache_dir.resolve() and path.is_file():
        log.warning("%s does not decode: removed from the download cache, a rerun fetches it again", path)
        path.unlink()


def find_in_source_dir(source_dir: Path, video_id: str) -> Path:
    _check_id(video_id)
    for path in sorted(Path(source_dir).rglob(f"{video_id}.*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            return path
    raise Unavailable(f"no video named {video_id}.<{'|'.join(e[1:] for e in VIDEO_EXTENSIONS)}> "
                      f"under --source-dir {str(source_dir)!r}")


FORMAT = "bestvideo[ext=mp4][height<=1080]/best[ext=mp4][height<=1080]/bestvideo/best"
STALL_TIMEOUT_S = 60.0
STALL_BYTES = 16 * 1024  # a download that gains less than this in the stall timeout is given up


def _downloaded_bytes(cache_dir: Path, video_id: str) -> int:
    total = 0
    for path in cache_dir.glob(f"{video_id}.*"):
        try:
            total += path.stat().st_size
        except OSError:  # renamed between the listing and the stat
            pass
    return total


def _yt_dlp_command(url: str, video_id: str, cache_dir: Path) -> list[str]:
    # video only (the crops have no sound); mp4 up to 1080p where there is a choice
    return [sys.executable, "-m", "yt_dlp", "--ignore-config", "--no-warnings", "--no-progress",
            "--no-playlist", "--no-cache-dir", "--socket-timeout", str(SOCKET_TIMEOUT_S),
            "--retries", "1", "--fragment-retries", "1", "--extractor-retries", "0",
            "-f", FORMAT, "-o", str(cache_dir / f"{video_id}.%(ext)s"), "--", url]


def download(url: str, video_id: str, cache_dir: Path,
             stall_timeout: float = STALL_TIMEOUT_S) -> Path:
    """Download `url` with yt-dlp to `<cache_dir>/<video_id>.<ext>` unless already cached.

    yt-dlp runs as a child process so that it can be stopped: every socket read has
    yt-dlp's socket timeout, and the whole download is given up (Unavailable) when it
    gains less than STALL_BYTES in `stall_timeout` seconds, as a server that trickles a
    few bytes at a time never trips a socket timeout."""
    from core.media import dies_with_parent
    _check_id(video_id)
    cache_dir = Path(cache_dir)
    cached = cached_file(cache_dir, video_id)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(_yt_dlp_command(url, video_id, cache_dir), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=dies_with_parent)
    mark_bytes, mark_time = _downloaded_bytes(cache_dir, video_id), time.monotonic()
    while True:
        try:
            _, stderr = proc.communicate(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            size = _downloaded_bytes(cache_dir, video_id)
            if size >= mark_bytes + STALL_BYTES:
                mark_bytes, mark_time = size, time.monotonic()
            elif time.monotonic() - mark_time > stall_timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise Unavailable(f"download of {url} stalled: less than {STALL_BYTES // 1024} "
                                  f"KiB in {stall_timeout:g} s (--stall-timeout)") from None
    if proc.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        errors = [line for line in lines if line.startswith("ERROR:")] or lines[-1:] or \
            [f"yt-dlp exited with status {proc.returncode}"]
        raise Unavailable(_short_reason(errors[-1]))
    found = cached_file(cache_dir, video_id)
    if found is None:
        raise Unavailable(f"yt-dlp reported success for {url} but wrote no video file")
    return found


def _short_reason(message: str) -> str:
    """yt-dlp's error without the 'ERROR: ' prefix and the nested 'caused by' chain."""
    message = message.replace("ERROR: ", "", 1)
    return message.split(" (caused by", 1)[0].strip()[:500]


def check_url_template(template: str) -> str:
    """UserError unless `template` is an http(s) URL with one `{video_id}` field."""
    try:
        url = template.format(video_id="x")
    except (IndexError, KeyError, ValueError) as err:
        raise UserError(f"--url-template {template!r} has a field other than {{video_id}} "
                        f"({type(err).__name__}: {err}); expected e.g. "
                        f"'http://host/{{video_id}}.mp4'") from None
    if "{video_id}" not in template:
        raise UserError(f"--url-template {template!r} must contain '{{video_id}}'")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--url-template {template!r} is not an http:// or https:// URL; "
                        f"for local files use --source-dir")
    return template


def fetch_video(video_id: str, cache_dir: Path, url_template: str | None = None,
                source_dir: str | Path | None = None, url: str | None = None,
                stall_timeout: float = STALL_TIMEOUT_S) -> Path:
    """Local path of `video_id`: from --source-dir, else downloaded from `url`, the
    --url-template mirror or YouTube. Raises Unavailable."""
    if source_dir:
        return find_in_source_dir(Path(source_dir), video_id)
    if url is None:
        template = url_template or YOUTUBE_URL
        url = template.format(video_id=urllib.parse.quote(video_id, safe=""))
    return download(url, video_id, Path(cache_dir), stall_timeout)


def list_videos(folder: Path) -> list[Path]:
    """Video files directly inside `folder` (custom dataset), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--source-dir {str(folder)!r} is not a folder")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise UserError(f"--source-dir {str(folder)!r} holds no video "
                        f"({', '.join(VIDEO_EXTENSIONS)})")
    return videos


def list_source_files(folder: Path) -> list[tuple[str, Path]]:
    """(split, path) of every video file or frame folder under `folder`/{train,test}/."""
    folder = Path(folder)
    entries = []
    for split in ("train", "test"):
        root = folder / split
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS:
                entries.append((split, path))
    if not entries:
        raise UserError(f"--source-dir {str(folder)!r} has no train/ or test/ folder of videos "
                        f"or frame folders")
    return entries


def unreachable_reason(url_template: str | None, timeout: float = 3.0) -> str | None:
    """Why the host of the download source cannot be reached (DNS or TCP), or None.

    Checked once by the driver, so an offline machine reports every video unavailable at
    once instead of starting workers that each wait for a timeout."""
    import socket
    url = (url_template or YOUTUBE_URL).format(video_id="x")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return None  # file:// or an extractor-specific form: let yt-dlp decide per video
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{parsed.hostname}:{port} is unreachable ({err})"
