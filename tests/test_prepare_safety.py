"""`pipeline run prepare` against hostile and broken input, on real clips from ../shared/data
served by a local HTTP mirror: traversal ids, reruns with other settings, two writers,
truncated media, a trickling server, bad flags, file modes, and the shard layout's reads."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_prepare import HEADER, MIRROR, REPO, _QuietHandler, _QuietServer

from core.errors import UserError
from stages import cli
from pipeline.clips import clip_dir


class _Handler(_QuietHandler):
    """Serves the mirror folder; /slow/<name> trickles 64 bytes every 0.5 s, as the server
    of the issue did (every 5 s), claiming a 10 MB mp4."""

    def do_GET(self) -> None:
        if not self.path.startswith("/slow/"):
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(10 * 2**20))
        self.end_headers()
        try:
            for _ in range(240):
                self.wfile.write(b"\0" * 64)
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:  # the client gave up
            pass


@pytest.fixture(scope="module")
def mirror(shared_data, tmp_path_factory):
    """http://127.0.0.1:PORT/{video_id}.mp4: real clips, a faststart copy cut in half."""
    from core.media import ffmpeg_exe
    root = tmp_path_factory.mktemp("mirror")
    for video_id, relative in MIRROR.items():
        (root / f"{video_id}.mp4").symlink_to(shared_data / relative)
    whole = root / "faststart.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(shared_data / MIRROR["face08"]),
                    "-c", "copy", "-movflags", "+faststart", str(whole)], check=True)
    data = whole.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index comes first: 150 frames promised
    (root / "halfcut.mp4").write_bytes(data[:len(data) // 2])
    server = _QuietServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _manifest(folder: Path, rows: list[str], name: str = "m.csv") -> Path:
    path = folder / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def _prepare(out: Path, manifest: Path, base: str, *extra: str) -> int:
    return cli.main(["run", "prepare", "--dataset", "vox", "--manifest", str(manifest),
                     "--url-template", base + "/{video_id}.mp4", "--out", str(out),
                     "--no-progress", *extra])


def _tree(folder: Path) -> dict[str, tuple]:
    """Every path under `folder` with its kind, size and mtime: a snapshot to compare."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*")}


def _png_sizes(out: Path) -> set[tuple[int, int]]:
    return {Image.open(p).size for p in (out / "png").rglob("*.png")}


# --------------------------------------------------------------------------- paths from data
@pytest.mark.parametrize("field,value", [("person_id", "../../escape"), ("person_id", "/abs/victim"),
                                         ("video_id", "../../x"), ("video_id", ".."),
                                         ("video_id", "a/../../escape")])
def test_traversal_ids_write_and_delete_nothing(tmp_path, mirror, capsys, field, value):
    """An id that is not a plain name stops the run at manifest load: one line naming the
    value, exit 2; nothing appears, changes or disappears outside (or inside) --out."""
    victim = tmp_path / "escape"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep" / "data.txt").write_text("precious")
    row = {"video_id": "face08", "person_id": "id001"}
    row[field] = value.replace("/abs/victim", str(victim))
    manifest = _manifest(tmp_path, [f"{row['video_id']},0,10,0-0-256-256,35,256,256,train,"
                                    f"{row['person_id']}"])
    before = _tree(tmp_path)
    out = tmp_path / "a" / "b" / "out"
    assert _prepare(out, manifest, mirror) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{field} {row[field]!r} is not a plain name" in err
    assert _tree(tmp_path) == before and not (tmp_path / "a").exists()


def test_url_list_and_source_dir_names_are_checked(tmp_path, capsys):
    urls = tmp_path / "fashion_test.txt"
    urls.write_text("http://127.0.0.1:9/videos/..\n")
    source = tmp_path / "source" / "train"
    source.mkdir(parents=True)
    (source / ".hidden.mp4").write_bytes(b"")
    for extra, expected in ((["--dataset", "fashion", "--manifest", str(urls)], "'..' is not a plain name"),
                            (["--dataset", "mgif", "--source-dir", str(source.parent)],
                             "'.hidden' is not a plain name")):
        out = tmp_path / "out"
        assert cli.main(["run", "prepare", *extra, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
        assert not out.exists()


def test_clip_paths_refuse_unsafe_parts(tmp_path):
    """The path builders themselves refuse what validation should have caught."""
    from pipeline.clips import row_path
    for split, name in (("train", "../x"), ("train", ".."), ("../train", "x"), ("train", "a/b")):
        with pytest.raises(ValueError, match="unsafe clip path part"):
            clip_dir(tmp_path, split, name)
        with pytest.raises(ValueError, match="unsafe clip path part"):
            row_path(tmp_path, split, name)


# --------------------------------------------------------------------------- stale settings
ROWS = ["face08,10,30,102-82-402-382,35,512,512,train,id001",
        "face08,40,60,0-0-256-256,35,256,256,train,id001",
        "face04,20,40,0-0-256-256,30,256,256,train,id006",
        "d11,30,50,0-0-512-512,25,512,512,train,id007",
        "wda,3,19,100-100-400-400,25,512,512,test,id003"]


@pytest.fixture(scope="module")
def sized(tmp_path_factory, mirror, ray_local):
    """The manifest above at 32 px, then rerun at 48 px."""
    folder = tmp_path_factory.mktemp("sized")
    manifest = _manifest(folder, ROWS)
    out = folder / "out"
    assert _prepare(out, manifest, mirror, "--size", "32") == 0
    first = (_png_sizes(out), json.loads((out / "summary.json").read_text()))
    assert _prepare(out, manifest, mirror, "--size", "48", "--shard-mb", "0.25") == 0
    return out, manifest, first


def test_rerun_with_another_size_redoes_every_clip(sized):
    out, _, (sizes_before, summary_before) = sized
    assert sizes_before == {(32, 32)} and summary_before["size"] == 32
    assert _png_sizes(out) == {(48, 48)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["size"] == 48 and summary["sizes"] == {"48": 5}
    assert summary["processed_this_run"] == 5 and summary["settings"]["size"] == 48
    import pyarrow.parquet as pq
    for path in (out / "shards").glob("*.parquet"):
        for png in pq.read_table(path, columns=["png"]).column("png").to_pylist()[:3]:
            assert Image.open(__import__("io").BytesIO(png)).size == (48, 48)


def test_corrected_bbox_redoes_that_clip_only(sized, mirror, tmp_path):
    out, manifest, _ = sized
    mtimes = {p.parent.name: p.stat().st_mtime_ns for p in (out / "png").rglob("0000000.png")}
    fixed = _manifest(tmp_path, [ROWS[0].replace("102-82-402-382", "0-0-512-512"), *ROWS[1:]])
    assert _prepare(out, fixed, mirror, "--size", "48", "--shard-mb", "0.25") == 0
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "png").rglob("0000000.png")}
    changed = {name for name in after if after[name] != mtimes[name]}
    assert changed == {"id001#face08#000010#000030.mp4"}
    table = pd.read_parquet(out / "clips.parquet").set_index("clip")
    assert table.loc["id001#face08#000010#000030", "bbox"] == "0-0-512-512"
    assert json.loads((out / "summary.json").read_text())["processed_this_run"] == 1


def test_outputs_honour_the_umask(sized):
    """Files 0666 and folders 0777 less the umask (mkstemp/mkdtemp alone give 0600/0700)."""
    from core.media import current_umask
    out, mask = sized[0], current_umask()
    checked = 0
    for path in out.rglob("*"):
        if path.is_symlink() or path.name == ".lock":
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666) & ~mask, (path, oct(mode))
        checked += 1
    assert checked > 100


def test_atomic_outputs_follow_a_changed_umask(tmp_path):
    from core.media import atomic_path
    from pipeline.clips import staging_dir
    old = os.umask(0o007)
    try:
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("{}")
        folder = staging_dir(tmp_path, "train", "clip")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o660
    assert stat.S_IMODE(folder.stat().st_mode) == 0o770


# --------------------------------------------------------------------------- shards
def test_training_pairs_from_prepared_shards_read_two_small_groups(sized):
    """Shards as prepare wrote them (several clips per shard): each training item touches
    at most 2 row groups of one clip, and the bytes the process reads per item (/proc
    rchar) stay under those two groups plus the PNG headers, far below a shard."""
    import pyarrow.parquet as pq
    from core.config import DatasetParams
    from fomm.data import EpochSampler, FramePairs, open_clips
    out = sized[0]
    shards = sorted((out / "shards").glob("train-*.parquet"))
    clips_per_shard = [len(set(pq.read_table(p, columns=["clip"]).column("clip").to_pylist()))
                       for p in shards]
    assert max(clips_per_shard) >= 2, clips_per_shard
    group_bytes = max(pq.ParquetFile(p).metadata.row_group(g).total_byte_size
                      for p in shards for g in range(pq.ParquetFile(p).num_row_groups))
    store = open_clips(out, "train")
    store.CACHE_GROUPS = 0  # every item reads from disk: the worst case
    pairs = FramePairs(store, DatasetParams(frame_shape=(48, 48, 3)), num_repeats=10)

    def rchar() -> int:  # bytes this process got from read() calls, page cache or not
        return int(Path("/proc/self/io").read_text().split()[1])
    sampler = EpochSampler(len(pairs), seed=0)
    pairs[next(iter(sampler))]  # imports out of the way
    for shard in range(len(shards)):  # footers (the last 64 KiB of each file) read once
        store._file(shard)
    worst_bytes = worst_groups = 0
    for key in sampler:  # what a DataLoader with num_workers=0 does, item by item
        groups, before = store.groups_read, rchar()
        item = pairs[key]
        worst_bytes = max(worst_bytes, rchar() - before)
        worst_groups = max(worst_groups, store.groups_read - groups)
        assert item["source"].shape == (3, 48, 48)
    assert worst_groups <= 2
    bound = 2 * group_bytes + 16 * 1024
    assert worst_bytes <= bound, (worst_bytes, bound)
    assert bound < shards[0].stat().st_size / 2  # reading a whole shard would break the bound
    print(f"worst item: {worst_groups} groups, {worst_bytes} bytes read "
          f"(group <= {group_bytes} B, shards {[p.stat().st_size for p in shards]} B)")


def test_killed_reshard_leaves_the_old_set_whole(sized, monkeypatch):
    """A rebuild killed after its first shard leaves the live set as it was; the half set
    is removed by the next run."""
    from pipeline import clips as clips_mod
    from pipeline import prepare, shards
    out = sized[0]
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    calls = []

    def dies(self, clip, frames):
        calls.append(clip)
        if len(calls) > 1:
            raise KeyboardInterrupt  # as a SIGINT in the middle of the rebuild
        original(self, clip, frames)
    original = shards._ShardWriter.add_clip
    monkeypatch.setattr(shards._ShardWriter, "add_clip", dies)
    with pytest.raises(KeyboardInterrupt):
        prepare._write_shards(out, clips_mod.all_rows(out), 2**20)
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before
    assert len(list((out / shards.SETS_DIR).iterdir())) == 2
    prepare._remove_stale_staging(out)
    assert [os.path.realpath(p) for p in (out / shards.SETS_DIR).iterdir()] == \
        [os.path.realpath(out / "shards")]


# --------------------------------------------------------------------------- media
def test_half_cut_faststart_mp4_is_a_failed_row_and_bad_clips_fail_alone(tmp_path, mirror,
                                                                          ray_local, capsys):
    manifest = _manifest(tmp_path, ["halfcut,0,150,0-0-256-256,35,256,256,train,id1",
                                    "halfcut,0,10,0-0-256-256,35,256,256,train,id1",
                                    "face08,400,420,0-0-256-256,35,256,256,train,id2",
                                    "face08,0,12,0-0-256-256,35,256,256,train,id2"])
    out = tmp_path / "out"
    assert _prepare(out, manifest, mirror, "--size", "32") == 1
    assert "2 clip(s) failed: exit status 1" in capsys.readouterr().out
    table = pd.read_parquet(out / "clips.parquet").set_index("clip")
    whole = table.loc["id1#halfcut#000000#000150"]
    assert whole.status == "failed" and "truncated" in whole.error, whole.error
    assert not clip_dir(out, "train", "id1#halfcut#000000#000150").exists()
    assert table.loc["id1#halfcut#000000#000010", "status"] == "done"
    assert table.loc["id2#face08#000400#000420", "status"] == "failed"
    assert table.loc["id2#face08#000000#000012", "num_frames"] == 12
    assert _prepare(out, manifest, mirror, "--size", "32", "--allow-failures") == 0


@pytest.mark.parametrize("resize", ["ffmpeg", "original"])
def test_a_clip_ffmpeg_cannot_cut_fails_alone(shared_data, tmp_path, monkeypatch, resize):
    """When the one ffmpeg run of a batch fails, each clip is cut alone: only the clip
    that ffmpeg cannot cut fails (with either resize)."""
    from core.media import probe
    from pipeline import crop
    from pipeline.clips import Clip
    video = shared_data / MIRROR["face08"]
    clips = [Clip(f"c{i}#000000#000005", f"c{i}", None, "train", 5 * i, 5 * i + 5, 35.0,
                  (0, 0, 256, 256), 256, 256) for i in range(3)]
    real = crop.cut_clips

    def flaky(path, cuts, size, *args):
        if len(cuts) > 1 or cuts[0][0] == 5:  # the batch, and clip c1 alone, "crash" ffmpeg
            raise crop.CropError("ffmpeg exited with 1: simulated")
        return real(path, cuts, size, *args)
    monkeypatch.setattr(crop, "cut_clips", flaky)
    rows = crop.cut_video_clips(clips, video, probe(video), 16, tmp_path, resize=resize)
    assert {r["clip"]: r["status"] for r in rows} == {
        "c0#000000#000005": "done", "c1#000000#000005": "failed", "c2#000000#000005": "done"}
    assert [r["num_frames"] for r in rows if r["status"] == "done"] == [5, 5]


def test_trickling_server_is_given_up_within_the_stall_timeout(tmp_path, mirror, ray_local):
    manifest = _manifest(tmp_path, ["slowvid,0,10,0-0-256-256,25,256,256,train,id1"])
    out = tmp_path / "out"
    began = time.perf_counter()
    code = cli.main(["run", "prepare", "--dataset", "vox", "--manifest", str(manifest),
                     "--url-template", mirror + "/slow/{video_id}.mp4", "--out", str(out),
                     "--size", "32", "--stall-timeout", "2", "--no-progress"])
    elapsed = time.perf_counter() - began
    table = pd.read_parquet(out / "clips.parquet").set_index("clip")
    slow = table.loc["id1#slowvid#000000#000010"]
    assert code == 1 and slow.status == "unavailable" and "stalled" in slow.error
    assert slow.download_s < 2 + 6, slow.download_s  # the timeout plus yt-dlp's start
    assert elapsed < 60, elapsed


def test_manifest_download_from_a_trickling_server_gives_up(mirror, tmp_path):
    from core.errors import UserError
    from pipeline import datasets
    began = time.perf_counter()
    with pytest.raises(UserError, match="stalled: less than 16 KiB in 1 s"):
        datasets.fetch(datasets.RemoteFile(mirror + "/slow/m.csv", "0" * 64), tmp_path, timeout=1)
    assert time.perf_counter() - began < 5
    assert not list(tmp_path.iterdir())  # the partial download is not kept


# --------------------------------------------------------------------------- one writer
def test_second_writer_is_refused_and_a_killed_holder_is_no_obstacle(tmp_path, mirror,
                                                                    ray_local, capsys):
    import ray
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, ROWS[:3])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from core.writer_lock import writer_lock\n"
         "with writer_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
         str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    assert _prepare(out, manifest, mirror, "--size", "32") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {holder.pid} on {socket.gethostname()}" in err
    assert [p.name for p in out.iterdir()] == [".lock"]  # the refused run wrote nothing
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # two at once, started together: one does all the work, the other refuses
    command = [sys.executable, "-m", "stages.cli", "run", "prepare", "--dataset", "vox",
               "--manifest", str(manifest), "--url-template", mirror + "/{video_id}.mp4",
               "--size", "32", "--out", str(out), "--no-progress",
               "--ray-address", ray.get_runtime_context().gcs_address]
    runs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            for _ in range(2)]
    codes = sorted(run.wait(timeout=300) for run in runs)
    errors = [run.stderr.read() for run in runs]
    # the later one refuses (or, had the first finished before it looked, finds all done)
    assert codes in ([0, 2], [0, 0]), (codes, errors)
    assert codes == [0, 0] or any("is being written by pid" in e for e in errors)
    print(f"exit codes of two prepares started together: {codes}")
    table = pd.read_parquet(out / "clips.parquet")
    assert len(table) == 3 and set(table.status) == {"done"}


def test_workers_exit_when_their_driver_dies(tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time; from pipeline.prepare import _watch_driver\n"
         "_watch_driver((int(sys.argv[1]), socket.gethostname())); time.sleep(60)", str(driver.pid)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(1.5)
    assert worker.poll() is None
    driver.kill()
    driver.wait()
    began = time.perf_counter()
    assert worker.wait(timeout=10) == 1
    assert time.perf_counter() - began < 5


# --------------------------------------------------------------------------- bad input
GOOD_ROW = "face08,0,10,0-0-256-256,35,256,256,train,id001"
BAD_MANIFESTS = {
    "bbox inf": (f"{HEADER}\nface08,0,10,0-0-inf-256,35,256,256,train,id001\n".encode(),
                 "bbox '0-0-inf-256'"),
    "fps nan": (f"{HEADER}\nface08,0,10,0-0-256-256,nan,256,256,train,id001\n".encode(),
                "fps=nan"),
    "not utf-8": (f"{HEADER}\n".encode() + b"face08\xff\xfe,0,10,0-0-256-256,35,256,256,train,x\n",
                  "is not UTF-8"),
    "empty": (b"", "is empty"),
    "header only": (f"{HEADER}\n".encode(), "no rows"),
    # vox keeps its upstream conflicts in test by default (manifests/vox.yaml): refuse explicitly
    "two splits": (f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW.replace('train', 'test')}\n".encode(),
                   "listed in both train and test", "--split-conflicts", "error"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_is_one_line_exit_2_nothing_written(tmp_path, mirror, capsys, case):
    content, expected, *extra = BAD_MANIFESTS[case]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    out = tmp_path / "out"
    assert _prepare(out, manifest, mirror, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


BAD_FLAGS = {
    "--shard-mb 0": (["--shard-mb", "0"], "--shard-mb must be a positive number of MiB, got 0.0"),
    "--workers -1": (["--workers", "-1"], "--workers must be a positive number of tasks, got -1"),
    "file url": (["--url-template", "file:///tmp/{video_id}.mp4"], "is not an http:// or https://"),
    "positional url field": (["--url-template", "http://127.0.0.1/{0}.mp4"],
                             "has a field other than {video_id}"),
    "--stall-timeout 0": (["--stall-timeout", "0"], "--stall-timeout must be a positive"),
    "--limit 0": (["--limit", "0"], "--limit must be a positive number of videos, got 0"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flag_is_one_line_exit_2_before_any_work(tmp_path, capsys, case):
    extra, expected = BAD_FLAGS[case]
    manifest = _manifest(tmp_path, [GOOD_ROW])
    out = tmp_path / "out"
    args = ["run", "prepare", "--dataset", "vox", "--manifest", str(manifest), "--out", str(out),
            "--no-progress", *extra]
    began = time.perf_counter()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists() and time.perf_counter() - began < 5


def test_bad_out_folders_are_refused(tmp_path, capsys):
    manifest = _manifest(tmp_path, [GOOD_ROW])
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    for out, expected in ((a_file, "is a file; expected a folder"),
                          (a_file / "below", "is a file, not a folder"),
                          (Path("/proc/self/fomm-out"), "is under /proc")):
        assert cli.main(["run", "prepare", "--dataset", "vox", "--manifest", str(manifest),
                         "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and str(out) in err, err
    assert a_file.read_text() == "mine"


def test_num_videos_zero_is_refused_not_all(tmp_path, capsys, taichi_root):
    from core.errors import UserError
    from fomm.data import ReconstructionClips, open_clips
    out = tmp_path / "rec"
    assert cli.main(["run", "reconstruct", "--checkpoint", str(tmp_path / "none.pt"),
                     "--data", str(taichi_root), "--out", str(out), "--num-videos", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-videos must be a positive number of clips, got 0" in err
    assert not out.exists()
    with pytest.raises(UserError, match="got 0"):
        ReconstructionClips(open_clips(taichi_root, "train"), (64, 64, 3), num_videos=0)


# --------------------------------------------------------------------------- errors are not swallowed
def test_a_failed_custom_task_writes_its_row_and_logs_the_traceback(tmp_path, caplog):
    from pipeline.clips import read_row
    from pipeline.datasets import CustomPolicy
    from pipeline.prepare import Job, Settings, _task_failed
    settings = Settings(str(tmp_path), "custom", 64, str(tmp_path), None, None, CustomPolicy())
    try:
        raise ZeroDivisionError("a bug in the tube linker")
    except ZeroDivisionError as err:
        rows = _task_failed(Job("myvideo", [], "/videos/myvideo.mp4"), settings, err)
    row = read_row(tmp_path, "test", "myvideo")
    assert rows == [row] and row["status"] == "failed" and "ZeroDivisionError" in row["error"]
    assert "Traceback" in caplog.text and "a bug in the tube linker" in caplog.text
    from pipeline.sample import sample_clips
    clip = sample_clips(1, 0, 4, 16)[0]
    sample_settings = Settings(str(tmp_path), "sample", 16, str(tmp_path), None, None)
    [row] = _task_failed(Job(clip.name, [clip]), sample_settings, RuntimeError("render bug"))
    assert read_row(tmp_path, "train", clip.name) == row and "render bug" in row["error"]


def test_sample_bugs_raise_instead_of_becoming_rows(tmp_path, monkeypatch):
    from pipeline import sample

    def broken(clip):
        raise ValueError("bug")
    monkeypatch.setattr(sample, "render_clip", broken)
    with pytest.raises(ValueError, match="bug"):
        sample.prepare_clip(sample.sample_clips(1, 0, 4, 16)[0], tmp_path)
    assert not (tmp_path / ".rows").exists()


def test_run_all_logs_the_traceback_of_a_failing_stage(tmp_path, monkeypatch, caplog):
    from core.errors import UserError
    from stages import run_all

    def fake(stage, argv):
        if stage == "train":
            raise RuntimeError("bug in train")
    monkeypatch.setattr(run_all, "run_stage", fake)
    args = cli.build_parser("all").parse_args(["run", "all", "--out", str(tmp_path),
                                               "--budget", "tiny", "--models", "x2face"])
    with pytest.raises(UserError, match="no model trained"):
        run_all.run(run_all.options(args))
    failed = [r for r in caplog.records if "train-x2face failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None and "Traceback" in caplog.text


def _prepare_args(*argv: str):
    return cli.build_parser("prepare").parse_args(["run", "prepare", *argv])


def test_options_resolve_the_definition_and_its_defaults(tmp_path):
    """`stages.prepare.options`: the definition loaded, its size, split policy and resize
    applied where no flag says otherwise, paths as Paths, the shard target in bytes; the
    flags win where given."""
    from pipeline.datasets import DatasetDef
    from pipeline.prepare import PrepareOptions
    from stages import prepare
    chosen = prepare.options(_prepare_args("--dataset", "vox", "--out", str(tmp_path / "out"),
                                           "--manifest", str(tmp_path / "m.csv"), "--shard-mb", "2",
                                           "--no-progress", "--limit", "3"))
    assert isinstance(chosen, PrepareOptions) and isinstance(chosen.definition, DatasetDef)
    assert chosen.definition.name == "vox" and chosen.size == chosen.definition.size == 256
    assert chosen.resize == chosen.definition.resize == "original"
    assert chosen.split_conflicts == chosen.definition.split_conflicts
    assert chosen.out == tmp_path / "out" and chosen.manifest == tmp_path / "m.csv"
    assert chosen.source_dir is None and chosen.cache_dir is None and chosen.definition_file is None
    assert chosen.shard_bytes == 2 * 2**20 and chosen.limit == 3 and chosen.progress is False
    definition = tmp_path / "mine.yaml"
    definition.write_text("name: mine\nkind: sample\nsize: 32\n")
    chosen = prepare.options(_prepare_args("--dataset", str(definition), "--out", str(tmp_path / "o"),
                                           "--size", "64", "--resize", "ffmpeg", "--split-conflicts", "error"))
    assert chosen.definition.name == "mine" and chosen.definition_file == definition
    assert (chosen.size, chosen.resize, chosen.split_conflicts, chosen.progress) == (64, "ffmpeg", "error", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chosen.size = 8


@pytest.mark.parametrize("flags,expect", [
    (["--size", "4"], "--size must be between 8 and 4096"),
    (["--shard-mb", "nan"], "--shard-mb must be a positive"),
    (["--workers", "0"], "--workers must be a positive"),
    (["--stall-timeout", "-1"], "--stall-timeout must be a positive"),
    (["--url-template", "http://host/video.mp4"], "{video_id}"),
    (["--dataset", "no-such-dataset"], "unknown dataset 'no-such-dataset'"),
])
def test_options_refuse_a_bad_value_before_any_file_is_written(tmp_path, flags, expect):
    from stages import prepare
    argv = ["--dataset", "sample", "--out", str(tmp_path / "out"), *flags]
    with pytest.raises(UserError, match=re.escape(expect)):
        prepare.options(_prepare_args(*argv))
    assert list(tmp_path.iterdir()) == []
