"""`pipeline run prepare`: the flags of a prepare run, turned into one `PrepareOptions`
(pipeline/prepare.py), which `pipeline.prepare.prepare` runs.

    pipeline run prepare --dataset taichi --manifest taichi-metadata.csv --out data/taichi
    pipeline run prepare --dataset sample --out data/sample

Exit status 1 when any clip failed (unless --allow-failures) or none is done.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from core.errors import UserError
from pipeline import clips as clips_mod
from pipeline.prepare import MIN_SHARD_BYTES, PrepareOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="a definition in manifests/ (vox, taichi, fashion, mgif, nemo, bair, "
                             "custom, sample) or a path to a definition yaml")
    parser.add_argument("--out", required=True, help="output folder (png/, shards/, clips.parquet)")
    parser.add_argument("--manifest", help="local copy of the upstream manifest (else downloaded "
                                           "once and checked against its sha256)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url-template", help="mirror, e.g. 'http://host/{video_id}.mp4'")
    source.add_argument("--source-dir", help="folder of videos already downloaded, named by id "
                                             "(custom, mgif, nemo, bair: the dataset's files)")
    parser.add_argument("--limit", type=int, help="first N videos only (N clips for sample)")
    parser.add_argument("--split", choices=clips_mod.SPLITS, help="one split only")
    parser.add_argument("--size", type=int, help="output frame size (default: the dataset's)")
    parser.add_argument("--workers", type=int, default=None, help="parallel tasks (default: CPUs)")
    parser.add_argument("--ray-address", help="join this Ray cluster instead of starting one")
    parser.add_argument("--cache-dir", help="download cache keyed by video id "
                                            "(default: <out>/downloads)")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MiB")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="give a download up when it gains less than 16 KiB in this many "
                             "seconds (default 60)")
    parser.add_argument("--split-conflicts", choices=clips_mod.SPLIT_POLICIES, default=None,
                        help="a video whose manifest rows name both splits: 'first' gives all "
                             "its clips its first row's split (as load_videos.py; upstream "
                             "vox's 3 clips listed in both go to train), 'test' keeps a clip "
                             "listed in both in test only, 'error' refuses (default: the "
                             "dataset's, 'first' unless its yaml says otherwise)")
    parser.add_argument("--resize", choices=("original", "ffmpeg"), default=None,
                        help="'original': load_videos.py's scikit-image 0.14 resize (Gaussian "
                             "anti-aliasing with zero padding, then bilinear, in RGB); "
                             "'ffmpeg': ffmpeg's area filter in YUV, about 3x cheaper, about 1/255 off "
                             "(default: the dataset's; original for vox, taichi and ted)")
    parser.add_argument("--allow-failures", action="store_true",
                        help="exit 0 even when some clips failed (as long as one is done)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _path(value: str | None) -> Path | None:
    """A path flag as a Path; None when absent or empty (an empty flag means its default)."""
    return Path(value) if value else None


def options(args: argparse.Namespace) -> PrepareOptions:
    """Every numeric flag and the URL template checked (UserError on the first bad one), then
    the dataset's definition loaded and its defaults applied; nothing is read or written
    besides the definition."""
    from pipeline import datasets, download
    if args.size is not None and not 8 <= args.size <= 4096:
        raise UserError(f"--size must be between 8 and 4096 pixels, got {args.size}")
    if not (math.isfinite(args.shard_mb) and args.shard_mb > 0):
        raise UserError(f"--shard-mb must be a positive number of MiB, got {args.shard_mb}")
    if args.shard_mb * 2**20 < MIN_SHARD_BYTES:  # a shard target of no bytes cannot be cut
        raise UserError(f"--shard-mb {args.shard_mb:g} is below {MIN_SHARD_BYTES / 2**20:g} MiB "
                        f"({MIN_SHARD_BYTES} bytes); expected a shard size of at least that")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be a positive number of tasks, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be a positive number of videos, got {args.limit}")
    if not (math.isfinite(args.stall_timeout) and args.stall_timeout > 0):
        raise UserError(f"--stall-timeout must be a positive number of seconds, "
                        f"got {args.stall_timeout}")
    if args.url_template is not None:
        download.check_url_template(args.url_template)
    definition = datasets.load_dataset(args.dataset)
    named_by_path = Path(args.dataset).suffix in (".yaml", ".yml")
    return PrepareOptions(
        definition=definition, out=Path(args.out), size=args.size or definition.size,
        split_conflicts=args.split_conflicts or definition.split_conflicts,
        resize=args.resize or definition.resize,
        definition_file=Path(args.dataset) if named_by_path else None,
        manifest=_path(args.manifest), url_template=args.url_template,
        source_dir=_path(args.source_dir), limit=args.limit, split=args.split,
        workers=args.workers, ray_address=args.ray_address, cache_dir=_path(args.cache_dir),
        shard_bytes=int(args.shard_mb * 2**20), stall_timeout=float(args.stall_timeout),
        allow_failures=bool(args.allow_failures), progress=not args.no_progress)


def run(options: PrepareOptions) -> dict:
    """The prepare run; its summary (summary.json's content and `out`)."""
    from pipeline.prepare import prepare
    return prepare(options)


def print_summary(summary: dict) -> None:
    print(f"clips: {summary['done']} done, {summary['failed']} failed, "
          f"{summary['unavailable']} unavailable ({summary['videos_unavailable']} video(s) "
          f"unavailable this run); frames: {summary['frames']}; "
          f"bytes: {summary['bytes'] / 2**20:.1f} MiB; time: {summary['time_s']:.1f} s")
    for line in summary["errors"][:10]:
        print(f"  {line}")


def exit_status(summary: dict, allow_failures: bool) -> int:
    """1 when no clip is done, or when some clip failed and failures were not allowed
    (unavailable videos, common in YouTube datasets, do not count as failures)."""
    if summary["done"] == 0:
        return 1
    if summary["failed"] and not allow_failures:
        print(f"{summary['failed']} clip(s) failed: exit status 1 (--allow-failures accepts "
              f"a partial dataset)")
        return 1
    return 0


def main(args: argparse.Namespace) -> int:
    chosen = options(args)
    summary = run(chosen)
    print_summary(summary)
    return exit_status(summary, chosen.allow_failures)
