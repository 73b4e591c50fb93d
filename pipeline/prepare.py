"""`pipeline run prepare`: a dataset from its definition to PNG folders and Parquet shards.

    pipeline run prepare --dataset taichi --manifest taichi-metadata.csv --out data/taichi
    pipeline run prepare --dataset sample --out data/sample

Reads top to bottom: resolve the dataset's jobs (one per video, or one per clip for
`sample`), skip clips already done (row says done and every frame is on disk), run the
rest as Ray tasks (each writes its clip folders whole and records a row per clip the
moment it finishes), then write the shards, `clips.parquet` and `summary.json`, in that
order. A killed run rerun does only what is missing; a finished run rerun does nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import clips as clips_mod
from pipeline.errors import UserError

log = logging.getLogger(__name__)


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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class Job:
    """One Ray task: a video and the clips it serves, or one sample clip."""
    key: str
    clips: list = field(default_factory=list)
    video_path: str | None = None   # custom / source_dir: the file itself


# --------------------------------------------------------------------------- jobs
def _manifest_jobs(definition, args) -> list[Job]:
    from pipeline import datasets
    if args.manifest:
        path = datasets.check_local(Path(args.manifest), definition.manifest)
    else:
        path = datasets.fetch(definition.manifest, Path(args.out) / "downloads" / "manifests")
    clips = clips_mod.read_manifest(path)
    return [Job(video_id, group) for video_id, group in clips_mod.group_by_video(clips).items()]


def _url_list_jobs(definition, args) -> list[Job]:
    """One whole-video clip per URL. With --manifest, the one local list's split comes from
    --split or from 'train'/'test' in its file name."""
    from pipeline import datasets, download
    if args.manifest:
        path = datasets.check_local(Path(args.manifest), None)
        split = args.split or next((s for s in clips_mod.SPLITS if s in path.name), None)
        if split is None:
            raise UserError(f"cannot tell the split of URL list {str(path)!r}: pass --split "
                            f"train|test or name the file *train* / *test*")
        lists = [(split, path)]
    else:
        cache = Path(args.out) / "downloads" / "manifests"
        lists = [(split, datasets.fetch(remote, cache)) for split, remote in definition.url_lists.items()]
    jobs = []
    for split, path in lists:
        for url in Path(path).read_text().split():
            video_id = download.video_id_of_url(url)
            jobs.append(Job(video_id, [clips_mod.Clip(video_id, video_id, None, split)],
                            video_path=url))
    return jobs


def _source_dir_jobs(definition, args) -> list[Job]:
    from pipeline import download
    if not args.source_dir:
        raise UserError(f"dataset {definition.name!r} is not downloadable: pass --source-dir DIR "
                        f"holding {{train,test}}/<name>.(mp4|gif|...) or frame folders")
    jobs = []
    for split, path in download.list_source_files(Path(args.source_dir)):
        name = path.stem if path.is_file() else path.name
        jobs.append(Job(name, [clips_mod.Clip(name, name, None, split)], video_path=str(path)))
    return jobs


def _custom_jobs(definition, args) -> list[Job]:
    from pipeline import download
    if not args.source_dir:
        raise UserError("dataset 'custom' needs --source-dir DIR: a folder of your videos")
    return [Job(path.stem, [], video_path=str(path))
            for path in download.list_videos(Path(args.source_dir))]


def _sample_jobs(definition, args) -> list[Job]:
    from pipeline import sample
    policy = definition.sample
    return [Job(clip.name, [clip]) for clip in
            sample.sample_clips(policy.num_train, policy.num_test, policy.num_frames,
                                args.size or definition.size)]


JOB_BUILDERS = {"manifest": _manifest_jobs, "url_list": _url_list_jobs,
                "source_dir": _source_dir_jobs, "custom": _custom_jobs, "sample": _sample_jobs}


def _select(jobs: list[Job], split: str | None, limit: int | None) -> list[Job]:
    if split:  # custom jobs have no clips before their task finds them: they stay
        jobs = [Job(j.key, [c for c in j.clips if c.split == split], j.video_path) for j in jobs
                if not j.clips or any(c.split == split for c in j.clips)]
    if limit is not None:
        if limit <= 0:
            raise UserError(f"--limit must be a positive number of videos, got {limit}")
        jobs = jobs[:limit]
    return jobs


def _pending(jobs: list[Job], out: Path, kind: str) -> list[Job]:
    """Jobs with at least one clip not yet done; done clips are dropped from the job."""
    pending = []
    for job in jobs:
        if kind == "custom":  # clips are found in the task; a marker says the video is finished
            if not (out / ".rows" / ".custom" / f"{job.key}.done").is_file():
                pending.append(job)
            continue
        todo = [c for c in job.clips if not _clip_done(out, c.name, kind)]
        if todo:
            pending.append(Job(job.key, todo, job.video_path))
    return pending


def _remove_stale_staging(out: Path) -> None:
    """Half-written clip folders of a killed run: never published, safe to drop."""
    import shutil
    for staging in (out / "png").glob("*/.tmp-*"):
        log.info("removing %s left by an interrupted run", staging)
        shutil.rmtree(staging, ignore_errors=True)


def _clip_done(out: Path, name: str, kind: str) -> bool:
    row = clips_mod.read_row(out, name)
    if not clips_mod.is_done(out, row):
        return False
    return kind != "sample" or (out / "truth" / row["split"] / f"{name}.npz").is_file()


def _mark_unreachable(jobs: list[Job], url_template: str | None, kind: str,
                      out: Path) -> tuple[list[Job], list[dict]]:
    """Offline or mirror down: every video is unavailable now, without starting Ray."""
    from pipeline import download
    if kind == "url_list":  # one host per URL list; check the first URL's host
        url_template = jobs[0].video_path
    reason = download.unreachable_reason(url_template)
    if reason is None:
        return jobs, []
    log.warning("download source unreachable: %s", reason)
    rows = []
    for job in jobs:
        for clip in job.clips:
            row = clips_mod.result_row(clip, status="unavailable", error=reason)
            clips_mod.write_row(out, row)
            rows.append(row)
    return [], rows


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Settings:
    """What every task needs besides its job; picklable."""
    out: str
    kind: str
    size: int
    cache_dir: str
    url_template: str | None
    source_dir: str | None
    custom: object = None
    pad_square: bool = False


def run_job(job: Job, settings: Settings) -> list[dict]:
    """Body of one Ray task; every clip's row is also written to disk as it finishes."""
    out = Path(settings.out)
    if settings.kind == "sample":
        from pipeline import sample
        return [sample.prepare_clip(clip, out) for clip in job.clips]
    if settings.kind == "custom":
        from pipeline import custom
        return custom.prepare_video(Path(job.video_path), out, settings.size, settings.custom)
    from pipeline import crop
    return crop.prepare_video(job, settings)


def _execute(jobs: list[Job], settings: Settings, workers: int | None, progress: bool) -> list[dict]:
    import ray
    from tqdm import tqdm
    task = ray.remote(num_cpus=1, max_retries=2)(run_job)
    settings_ref = ray.put(settings)
    pending_refs = {}
    total_clips = sum(max(len(j.clips), 1) for j in jobs)
    limit = workers or int(ray.available_resources().get("CPU", 1))
    queue = list(jobs)
    rows: list[dict] = []
    bar = tqdm(total=total_clips, unit="clip", disable=not progress, dynamic_ncols=True)
    # At most 2 tasks per worker in flight: a million-clip manifest is not one big submit.
    while queue or pending_refs:
        while queue and len(pending_refs) < 2 * limit:
            job = queue.pop(0)
            pending_refs[task.remote(job, settings_ref)] = job
        done, _ = ray.wait(list(pending_refs), num_returns=1)
        job = pending_refs.pop(done[0])
        try:
            job_rows = ray.get(done[0])
        except Exception as err:  # the task itself died (after Ray's retries): rows say so
            log.error("task for %s failed: %s", job.key, err)
            job_rows = [clips_mod.result_row(clip, status="failed",
                                             error=f"task failed: {type(err).__name__}: {err}")
                        for clip in job.clips]
            for row in job_rows:
                clips_mod.write_row(settings.out, row)
        rows.extend(job_rows)
        bar.update(max(len(job.clips), 1))
        bar.set_postfix(done=sum(r["status"] == "done" for r in rows),
                        failed=sum(r["status"] == "failed" for r in rows),
                        unavailable=sum(r["status"] == "unavailable" for r in rows))
    bar.close()
    return rows


# --------------------------------------------------------------------------- outputs
def _all_rows(out: Path) -> list[dict]:
    folder = out / ".rows"
    if not folder.is_dir():
        return []
    return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")),
                  key=lambda row: row["clip"])


def _write_clips_table(out: Path, rows: list[dict]) -> Path:
    import pandas as pd
    from pipeline.media import atomic_path
    table = pd.DataFrame(rows, columns=list(clips_mod.result_row(status="done")))
    for column in ("start", "num_frames"):
        table[column] = table[column].astype("Int64")
    path = out / "clips.parquet"
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    return path


def _write_shards(out: Path, rows: list[dict], target_bytes: int) -> None:
    """Rebuild a split's shards only when its set of done clips (or the target) changed."""
    from pipeline import shards
    from pipeline.media import atomic_path
    index_path = out / "shards" / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    for split in clips_mod.SPLITS:
        done = sorted((r["clip"], r["num_frames"], r["bytes"]) for r in rows
                      if r["status"] == "done" and r["split"] == split)
        signature = json.dumps([target_bytes, done])
        files = index.get(split, {}).get("files", [])
        if index.get(split, {}).get("signature") == signature and \
                all((out / "shards" / f).is_file() for f in files):
            continue
        written = shards.write_shards(out, split, [(c, clips_mod.clip_dir(out, split, c))
                                                   for c, _, _ in done], target_bytes)
        index[split] = {"signature": signature, "files": [p.name for p in written]}
        with atomic_path(index_path) as tmp:
            tmp.write_text(json.dumps(index))


def summarize(rows: list[dict], this_run: list[dict], seconds: float, jobs: list[Job]) -> dict:
    count = {status: sum(r["status"] == status for r in rows) for status in clips_mod.STATUSES}
    unavailable_videos = sorted({r["video_id"] for r in this_run if r["status"] == "unavailable"})
    errors, seen = [], set()
    for r in rows:  # an unavailable video is one line, not one per clip
        key = r["video_id"] if r["status"] == "unavailable" else r["clip"]
        if r["status"] != "done" and key not in seen:
            seen.add(key)
            errors.append(f"{r['status']} {key}: {r['error']}")
    return {
        "clips": len(rows), **count,
        "processed_this_run": len(this_run),
        "videos": len(jobs), "videos_unavailable": len(unavailable_videos),
        "frames": int(sum(r["num_frames"] or 0 for r in rows if r["status"] == "done")),
        "bytes": int(sum(r["bytes"] or 0 for r in rows if r["status"] == "done")),
        "time_s": round(seconds, 3),
        "errors": errors[:50],
    }


def _print_summary(summary: dict) -> None:
    print(f"clips: {summary['done']} done, {summary['failed']} failed, "
          f"{summary['unavailable']} unavailable ({summary['videos_unavailable']} video(s) "
          f"unavailable this run); frames: {summary['frames']}; "
          f"bytes: {summary['bytes'] / 2**20:.1f} MiB; time: {summary['time_s']:.1f} s")
    for line in summary["errors"][:10]:
        print(f"  {line}")


def main(args: argparse.Namespace) -> int:
    from pipeline import datasets
    from pipeline.ray_runner import init_ray, shutdown_ray
    began = time.perf_counter()
    definition = datasets.load_dataset(args.dataset)
    out = Path(args.out)
    if args.size is not None and not 8 <= args.size <= 4096:
        raise UserError(f"--size must be between 8 and 4096 pixels, got {args.size}")
    if args.url_template and "{video_id}" not in args.url_template:
        raise UserError(f"--url-template {args.url_template!r} must contain '{{video_id}}'")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    jobs = _select(JOB_BUILDERS[definition.kind](definition, args), args.split, args.limit)
    pending = _pending(jobs, out, definition.kind)
    log.info("%s: %d job(s), %d with work to do", definition.name, len(jobs), len(pending))
    settings = Settings(str(out), definition.kind, args.size or definition.size,
                        args.cache_dir or str(out / "downloads"), args.url_template,
                        args.source_dir, definition.custom, definition.pad_square)
    this_run: list[dict] = []
    if pending and definition.kind in ("manifest", "url_list") and not args.source_dir:
        pending, this_run = _mark_unreachable(pending, args.url_template, definition.kind, out)
    if pending:
        import ray
        started_here = not ray.is_initialized()  # a caller's Ray (tests, run-all) stays up
        init_ray(args.ray_address, num_cpus=args.workers)
        try:
            this_run = _execute(pending, settings, args.workers, not args.no_progress)
        finally:
            if started_here:
                shutdown_ray()
    rows = _all_rows(out)
    _write_shards(out, rows, int(args.shard_mb * 2**20))
    _write_clips_table(out, rows)
    summary = summarize(rows, this_run, time.perf_counter() - began, jobs)
    summary.update(dataset=definition.name, size=settings.size, out=str(out))
    from pipeline.media import atomic_path
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary)
    return 0 if summary["done"] > 0 else 1
