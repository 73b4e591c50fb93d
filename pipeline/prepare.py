"""A dataset from its definition to PNG folders and Parquet shards (`pipeline run prepare`,
whose flags stages/prepare.py turns into the `PrepareOptions` that `prepare` takes).

    pipeline run prepare --dataset taichi --manifest taichi-metadata.csv --out data/taichi
    pipeline run prepare --dataset sample --out data/sample

Reads top to bottom: take the writer lock of `--out` (one prepare at a
time), resolve the dataset's jobs (one per video, or one per clip for `sample`; ids must be
plain names), skip clips already done with the same settings (row says done, its settings
digest matches, every frame is on disk at the recorded size), run the rest as Ray tasks
(each writes its clip folders whole and records a row per clip the moment it finishes),
then write the shards (a new set switched in by one rename), `clips.parquet` and
`summary.json`, in that order. A killed run rerun does only what is missing; a finished
run rerun does nothing; a rerun with another size or bbox redoes the clips it changes.
Exit status 1 when any clip failed (unless --allow-failures) or none is done.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import UserError
from pipeline import clips as clips_mod

if TYPE_CHECKING:
    from pipeline.datasets import DatasetDef

log = logging.getLogger(__name__)


# The smallest shard target: a shard holds at least one group of frames, so a smaller target
# only makes one shard per group.
MIN_SHARD_BYTES = 1024
# What an earlier version's prepare left in a folder it wrote (no stage mark yet).
PREPARE_EARLIER = (".rows", "clips.parquet", "summary.json", "shards", "png")


@dataclass(frozen=True)
class PrepareOptions:
    """Everything a prepare run needs, resolved and checked (stages.prepare.options builds it
    from the flags): the dataset's definition loaded, its defaults (size, split policy,
    resize) applied, paths as Paths, counts checked."""
    definition: DatasetDef
    out: Path
    size: int                            # output frame size (the dataset's unless --size)
    split_conflicts: str                 # clips.SPLIT_POLICIES
    resize: str                          # "original" | "ffmpeg"
    definition_file: Path | None = None  # --dataset when it is a yaml path (an input of the claim)
    manifest: Path | None = None         # local copy of the upstream manifest
    url_template: str | None = None
    source_dir: Path | None = None
    limit: int | None = None             # first N videos (N clips for sample)
    split: str | None = None             # one split only
    workers: int | None = None           # parallel tasks (None: the CPUs)
    ray_address: str | None = None
    cache_dir: Path | None = None        # None: <out>/downloads
    shard_bytes: int = 256 * 2**20
    stall_timeout: float = 60.0
    allow_failures: bool = False
    progress: bool = True


@dataclass
class Job:
    """One Ray task: a video and the clips it serves, or one sample clip."""
    key: str
    clips: list = field(default_factory=list)
    video_path: str | None = None   # custom / source_dir: the file itself


# --------------------------------------------------------------------------- jobs
def _manifest_jobs(options: PrepareOptions) -> list[Job]:
    from pipeline import datasets
    definition = options.definition
    if options.manifest:
        path = datasets.check_local(options.manifest, definition.manifest)
    else:
        path = datasets.fetch(definition.manifest, options.out / "downloads" / "manifests")
    clips = clips_mod.read_manifest(path, options.split_conflicts,
                                    definition.id_range_bbox_size)
    _forget_other_split(options.out, clips)
    return [Job(video_id, group) for video_id, group in clips_mod.group_by_video(clips).items()]


def _forget_other_split(out: Path, clips: list) -> None:
    """A clip now assigned to one split but recorded in the other (prepared under another
    --split-conflicts policy) is removed there, so no clip sits in both splits' shards."""
    listed = {(clip.split, clip.name) for clip in clips}
    stale = []
    for split, name in listed:
        other = "test" if split == "train" else "train"
        if (other, name) not in listed:
            row = clips_mod.read_row(out, other, name)
            if row is not None:
                stale.append(row)
    for row in stale:
        log.warning("%s moved out of %s by the split policy: its %s copy is removed",
                    row["clip"], row["split"], row["split"])
    _forget(out, stale)


def _url_list_jobs(options: PrepareOptions) -> list[Job]:
    """One whole-video clip per URL. With --manifest, the one local list's split comes from
    --split or from 'train'/'test' in its file name."""
    from pipeline import datasets, download
    if options.manifest:
        path = datasets.check_local(options.manifest, None)
        split = options.split or next((s for s in clips_mod.SPLITS if s in path.name), None)
        if split is None:
            raise UserError(f"cannot tell the split of URL list {str(path)!r}: pass --split "
                            f"train|test or name the file *train* / *test*")
        lists = [(split, path)]
    else:
        cache = options.out / "downloads" / "manifests"
        lists = [(split, datasets.fetch(remote, cache))
                 for split, remote in options.definition.url_lists.items()]
    jobs, seen = [], {}
    for split, path in lists:
        for url in _read_url_list(Path(path)):
            video_id = clips_mod.check_name(download.video_id_of_url(url),
                                            f"URL list {str(path)!r}: the file name of {url!r}")
            if video_id in seen:
                raise UserError(f"URL list {str(path)!r}: video {video_id} is listed twice "
                                f"({seen[video_id]} and {url}); expected each video once")
            seen[video_id] = url
            jobs.append(Job(video_id, [clips_mod.Clip(video_id, video_id, None, split)],
                            video_path=url))
    return jobs


def _read_url_list(path: Path) -> list[str]:
    """The URLs of a list file: UTF-8, one http(s) URL a line, at least one."""
    import urllib.parse
    try:
        urls = path.read_bytes().decode("utf-8").split()
    except UnicodeDecodeError as err:
        raise UserError(f"URL list {str(path)!r} is not UTF-8 text (byte {err.start}); "
                        f"expected one URL a line") from None
    if not urls:
        raise UserError(f"URL list {str(path)!r} is empty; expected one URL a line")
    for url in urls:
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            raise UserError(f"URL list {str(path)!r}: {url!r} is not an http:// or https:// URL")
    return urls


def _source_dir_jobs(options: PrepareOptions) -> list[Job]:
    from pipeline import download
    if not options.source_dir:
        raise UserError(f"dataset {options.definition.name!r} is not downloadable: pass --source-dir DIR "
                        f"holding {{train,test}}/<name>.(mp4|gif|...) or frame folders")
    jobs, seen = [], {}
    for split, path in download.list_source_files(options.source_dir):
        name = clips_mod.check_name(path.stem if path.is_file() else path.name,
                                    f"--source-dir entry {str(path)!r}: clip name")
        if name in seen:
            raise UserError(f"--source-dir: {str(seen[name])!r} and {str(path)!r} are both "
                            f"clip {name}; expected one file or folder per name")
        seen[name] = path
        jobs.append(Job(name, [clips_mod.Clip(name, name, None, split)], video_path=str(path)))
    return jobs


def _custom_jobs(options: PrepareOptions) -> list[Job]:
    from pipeline import download
    from pipeline.custom import video_id_of
    if not options.source_dir:
        raise UserError("dataset 'custom' needs --source-dir DIR: a folder of your videos")
    jobs, seen = [], {}
    for path in download.list_videos(options.source_dir):
        video_id = video_id_of(path)
        if video_id in seen:
            raise UserError(f"--source-dir: {seen[video_id].name!r} and {path.name!r} both "
                            f"become video id {video_id}; rename one")
        seen[video_id] = path
        jobs.append(Job(video_id, [], video_path=str(path)))
    return jobs


def _sample_jobs(options: PrepareOptions) -> list[Job]:
    from pipeline import sample
    policy = options.definition.sample
    return [Job(clip.name, [clip]) for clip in
            sample.sample_clips(policy.num_train, policy.num_test, policy.num_frames,
                                options.size)]


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


def _pending(jobs: list[Job], out: Path, settings: "Settings") -> list[Job]:
    """Jobs with at least one clip not yet done with these settings; done clips are dropped
    from the job. A clip done with other settings (size, bbox, ...) is forgotten first
    (row and folder), so a failed redo never leaves stale frames behind."""
    pending = []
    for job in jobs:
        if settings.kind == "custom":  # clips are found in the task; a marker says the video is finished
            marker = custom_marker(out, job.key)
            if marker.is_file() and marker.read_text() == settings.digest:
                continue
            if marker.is_file():
                log.info("%s was prepared with other settings: redone", job.key)
                _forget(out, [r for r in clips_mod.all_rows(out) if r["video_id"] == job.key])
                marker.unlink()
            pending.append(job)
            continue
        todo = []
        for clip in job.clips:
            row = clips_mod.read_row(out, clip.split, clip.name)
            key = clips_mod.settings_key(clip, settings.shaping)
            if _clip_done(out, row, key, settings.kind):
                continue
            if row is not None and row.get("status") == "done" and row.get("settings_key") != key:
                log.info("%s was prepared with other settings: redone", clip.name)
                _forget(out, [row])
            todo.append(clip)
        if todo:
            pending.append(Job(job.key, todo, job.video_path))
    return pending


def _forget(out: Path, rows: list[dict]) -> None:
    import shutil
    for row in rows:
        shutil.rmtree(clips_mod.clip_dir(out, row["split"], row["clip"]), ignore_errors=True)
        shutil.rmtree(clips_mod.legacy_clip_dir(out, row["split"], row["clip"]), ignore_errors=True)
        clips_mod.row_path(out, row["split"], row["clip"]).unlink(missing_ok=True)


def custom_marker(out: Path, video_id: str) -> Path:
    """Says that a custom video is finished, holding the digest of the settings it used."""
    return Path(out) / ".rows" / ".custom" / f"{clips_mod.check_name(video_id, 'video id')}.done"


def _remove_stale_staging(out: Path) -> None:
    """Half-written clip folders and shard sets of a killed run: never published, and
    (with the writer lock held) no other process is writing them."""
    import shutil
    from pipeline import shards
    for staging in (out / "png").glob("*/.tmp-*"):
        log.info("removing %s left by an interrupted run", staging)
        shutil.rmtree(staging, ignore_errors=True)
    shards.remove_stale_sets(out)


def _clip_done(out: Path, row: dict | None, key: str, kind: str) -> bool:
    if not clips_mod.is_done(out, row, key):
        return False
    return kind != "sample" or (out / "truth" / row["split"] / f"{row['clip']}.npz").is_file()


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
    """What every task needs besides its job; picklable. `shaping` holds every setting that
    changes the frames (recorded in each row as a digest, so a rerun with other settings
    redoes the clips); `driver` is (pid, host) of the process that started the run."""
    out: str
    kind: str
    size: int
    cache_dir: str
    url_template: str | None
    source_dir: str | None
    custom: object = None
    pad_square: bool = False
    stall_timeout: float = 60.0
    driver: tuple[int, str] = (0, "")
    resize: str = "ffmpeg"

    @property
    def shaping(self) -> dict:
        import dataclasses
        from pipeline import crop
        custom = dataclasses.asdict(self.custom) if self.kind == "custom" and self.custom else None
        shaping = {"kind": self.kind, "size": self.size, "pad_square": self.pad_square,
                   "custom": custom, "crop_version": crop.CROP_VERSION}
        if self.resize != "ffmpeg":  # absent for ffmpeg: outputs made before the choice stay done
            shaping["resize"] = self.resize
        return shaping

    @property
    def digest(self) -> str:
        return clips_mod.settings_key(clips_mod.Clip("-", "-", None, "train"), self.shaping)


_WATCHING: list[int] = []


def _watch_driver(driver: tuple[int, str]) -> None:
    """In a Ray worker on the driver's host: exit when the driver is gone, so a killed
    `prepare` leaves no worker cutting clips into a folder it no longer owns. (Ray ends
    a dead job's workers too, but not while a task is blocked in a read.)"""
    import os
    import socket
    import threading
    pid, host = driver
    if not pid or host != socket.gethostname() or pid == os.getpid() or pid in _WATCHING:
        return
    _WATCHING.append(pid)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.warning("driver %d is gone: this worker exits", pid)
                os._exit(1)
            except PermissionError:
                pass  # alive, another user's process

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def run_job(job: Job, settings: Settings) -> list[dict]:
    """Body of one Ray task; every clip's row is also written to disk as it finishes."""
    _watch_driver(settings.driver)
    out = Path(settings.out)
    if settings.kind == "sample":
        from pipeline import sample
        return [sample.prepare_clip(clip, out, clips_mod.settings_key(clip, settings.shaping))
                for clip in job.clips]
    if settings.kind == "custom":
        from pipeline import custom
        return custom.prepare_video(Path(job.video_path), out, settings.size, settings.custom,
                                    (custom_marker(out, job.key), settings.digest))
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
        except Exception as err:  # a bug or a dead worker (after Ray's retries): rows say so
            job_rows = _task_failed(job, settings, err)
        rows.extend(job_rows)
        bar.update(max(len(job.clips), 1))
        bar.set_postfix(done=sum(r["status"] == "done" for r in rows),
                        failed=sum(r["status"] == "failed" for r in rows),
                        unavailable=sum(r["status"] == "unavailable" for r in rows))
    bar.close()
    return rows


def _task_failed(job: Job, settings: Settings, err: Exception) -> list[dict]:
    """Failed rows for every clip of a task that raised (a custom video, whose clips the
    task finds, gets one row named after it); the full traceback goes to the log, since
    an unexpected exception is a bug to report, not a property of the clip."""
    import traceback
    text = str(err)  # a RayTaskError carries the worker's traceback in its text
    if "Traceback" not in text:
        text = "".join(traceback.format_exception(err))
    log.error("task for %s failed:\n%s", job.key, text)
    last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), "")
    clips = [clip if isinstance(clip, clips_mod.Clip) else clips_mod.Clip(clip.name, job.key, None,
                                                                           clip.split)
             for clip in job.clips]  # sample jobs hold SampleClips
    clips = clips or [clips_mod.Clip(job.key, job.key, None, settings.custom.split)]
    rows = [clips_mod.result_row(clip, status="failed", error=f"task failed: {last.strip()}"[:500],
                                 source=job.video_path) for clip in clips]
    for row in rows:
        clips_mod.write_row(settings.out, row)
    return rows


# --------------------------------------------------------------------------- outputs


def _write_clips_table(out: Path, rows: list[dict]) -> Path:
    import pandas as pd
    from core.media import atomic_path
    table = pd.DataFrame(rows, columns=list(clips_mod.result_row(status="done")))
    for column in ("start", "num_frames"):
        table[column] = table[column].astype("Int64")
    path = out / "clips.parquet"
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    return path


def _write_shards(out: Path, rows: list[dict], target_bytes: int) -> None:
    """Rebuild a split's shards only when its set of done clips (or the target) changed;
    a rebuild writes a whole new set and switches to it with one rename (pipeline/shards)."""
    from pipeline import shards
    index = shards.live_index(out)
    wanted = {}
    for split in clips_mod.SPLITS:
        done = sorted((r["clip"], r["num_frames"], r["bytes"], r.get("settings_key"))
                      for r in rows if r["status"] == "done" and r["split"] == split)
        wanted[split] = (done, json.dumps([target_bytes, shards.GROUP_FRAMES, done]))
    live = shards.live_folder(out)
    unchanged = {split for split, (_, signature) in wanted.items()
                 if index.get(split, {}).get("signature") == signature
                 and all((live / f).is_file() for f in index[split]["files"])}
    if len(unchanged) == len(wanted) and live.is_symlink():
        return
    new_set = shards.new_shard_set(out)
    new_index = {}
    for split, (done, signature) in wanted.items():
        if split in unchanged:
            files = index[split]["files"]
            shards.reuse_split(out, new_set, files)
        else:
            folders = [(clip, clips_mod.clip_dir(out, split, clip)) for clip, *_ in done]
            files = [p.name for p in shards.write_shards(new_set, split, folders, target_bytes)]
        new_index[split] = {"signature": signature, "files": files}
    shards.switch_to(out, new_set, new_index)


def summarize(rows: list[dict], this_run: list[dict], seconds: float, jobs: list[Job]) -> dict:
    """Counts over every row on disk (not only this run's), and the frame sizes of the
    done clips as found in their rows: the summary describes the files, not the flags."""
    count = {status: sum(r["status"] == status for r in rows) for status in clips_mod.STATUSES}
    unavailable_videos = sorted({r["video_id"] for r in this_run if r["status"] == "unavailable"})
    errors, seen = [], set()
    for r in rows:  # an unavailable video is one line, not one per clip
        key = r["video_id"] if r["status"] == "unavailable" else r["clip"]
        if r["status"] != "done" and key not in seen:
            seen.add(key)
            errors.append(f"{r['status']} {key}: {r['error']}")
    sizes: dict[str, int] = {}
    for r in rows:
        if r["status"] == "done":
            sizes[str(r.get("size"))] = sizes.get(str(r.get("size")), 0) + 1
    return {
        "clips": len(rows), **count,
        "processed_this_run": len(this_run),
        "videos": len(jobs), "videos_unavailable": len(unavailable_videos),
        "frames": int(sum(r["num_frames"] or 0 for r in rows if r["status"] == "done")),
        "bytes": int(sum(r["bytes"] or 0 for r in rows if r["status"] == "done")),
        "size": int(next(iter(sizes))) if len(sizes) == 1 and "None" not in sizes else None,
        "sizes": sizes,
        "time_s": round(seconds, 3),
        "errors": errors[:50],
    }


def prepare(options: PrepareOptions) -> dict:
    """The stage: take the writer lock of `options.out`, resolve the jobs, do what is not done
    yet, write shards, clips.parquet and summary.json; returns the summary (`out` added)."""
    import os
    import socket
    from core import outputs
    began = time.perf_counter()
    definition = options.definition
    inputs = {"--source-dir": options.source_dir, "--manifest": options.manifest,
              "--dataset": options.definition_file}
    with outputs.claim(options.out, "prepare", inputs, earlier=PREPARE_EARLIER) as out:
        clips_mod.adopt_legacy_folders(out)  # earlier versions' <clip>/ -> <clip>.mp4/
        settings = Settings(str(out), definition.kind, options.size,
                            str(options.cache_dir or out / "downloads"), options.url_template,
                            None if options.source_dir is None else str(options.source_dir),
                            definition.custom, definition.pad_square, options.stall_timeout,
                            (os.getpid(), socket.gethostname()), options.resize)
        jobs = _select(JOB_BUILDERS[definition.kind](options), options.split, options.limit)
        if not jobs:
            raise UserError(f"dataset {definition.name!r} has no video to prepare"
                            f"{' in split ' + options.split if options.split else ''}")
        summary = _run(options, settings, jobs, began)
    summary["out"] = str(out)
    return summary


def _run(options: PrepareOptions, settings: Settings, jobs: list[Job], began: float) -> dict:
    """Everything after the checks, with the writer lock held."""
    from core.media import atomic_path
    from core.ray_runner import init_ray, shutdown_ray
    out, definition = Path(settings.out), options.definition
    _remove_stale_staging(out)
    pending = _pending(jobs, out, settings)
    log.info("%s: %d job(s), %d with work to do", definition.name, len(jobs), len(pending))
    this_run: list[dict] = []
    if pending and definition.kind in ("manifest", "url_list") and not options.source_dir:
        pending, this_run = _mark_unreachable(pending, options.url_template, definition.kind, out)
    if pending:
        import ray
        started_here = not ray.is_initialized()  # a caller's Ray (tests, run-all) stays up
        init_ray(options.ray_address, num_cpus=options.workers)
        try:
            this_run = _execute(pending, settings, options.workers, options.progress)
        finally:
            if started_here:
                shutdown_ray()
    rows = clips_mod.all_rows(out)
    _write_shards(out, rows, options.shard_bytes)
    _write_clips_table(out, rows)
    summary = summarize(rows, this_run, time.perf_counter() - began, jobs)
    summary.update(dataset=definition.name, settings=settings.shaping, out=str(out))
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
