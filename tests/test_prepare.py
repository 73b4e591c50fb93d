"""`pipeline run prepare` on real clips served by a local HTTP mirror: yt-dlp download,
ffmpeg crop + resize checked against an independent crop, failures as rows, resume after
SIGKILL, and the offline taichi run."""
from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage.transform import resize

from core.media import read_frames
from stages import cli
from pipeline.clips import clip_dir, is_done, read_row

SIZE = 64
REPO = Path(__file__).resolve().parents[1]
MIRROR = {  # video id on the mirror -> real clip in ../shared/data
    "face08": "faces/fomm-demo/08.mp4",          # 256x256, 35 fps
    "d0": "faces/liveportrait/d0.mp4",           # 512x512, 25 fps
    "wda": "faces/sadtalker/WDA_AlexandriaOcasioCortez_000.mp4",  # mpeg4 part 2
    "face04": "faces/fomm-demo/04.mp4",
    "d11": "faces/liveportrait/d11.mp4",
    "talk3": "faces/animateanyone/talkinghead_3.mp4",  # 578x578 at 29.97 fps
    "s13": "bodies/liveportrait/s13.mp4",             # 720x1080 portrait, for fashion
}
HEADER = "video_id,start,end,bbox,fps,width,height,partition,person_id"
ROWS = [
    "face08,10,40,102-82-402-382,35,512,512,train,id001",   # manifest 512x512, real 256x256
    "face08,5,20,0-0-256-256,17.5,256,256,test,id001",      # manifest at half the real fps
    "d0,0,24,202-100-802-698,25,1024,1024,train,id002",     # manifest 1024, real 512
    "wda,3,19,100-100-400-400,25,512,512,test,id003",
    "face08,0,10,600-600-700-700,35,256,256,train,id001",   # bbox outside the frame
    "broken,0,10,0-0-100-100,25,256,256,train,id004",       # corrupt file
    "missing404,0,10,0-0-100-100,25,256,256,train,id005",   # the mirror answers 404
    "face04,20,44,0-0-256-256,30,256,256,train,id006",       # more videos: a kill lands
    "d11,30,54,0-0-512-512,25,512,512,train,id007",          # half way through the run
    "talk3,0,30,0-0-1156-1156,29.97,1156,1156,test,id008",
]
GOOD = ["id001#face08#000010#000040", "id001#face08#000005#000020",
        "id002#d0#000000#000024", "id003#wda#000003#000019", "id006#face04#000020#000044",
        "id007#d11#000030#000054", "id008#talk3#000000#000030"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # yt-dlp closing a probe connection early is not an error of the test


@pytest.fixture(scope="module")
def mirror(shared_data, tmp_path_factory):
    """http://127.0.0.1:PORT/{video_id}.mp4 serving real clips, a corrupt one, and 404s."""
    root = tmp_path_factory.mktemp("mirror")
    for video_id, relative in MIRROR.items():
        (root / f"{video_id}.mp4").symlink_to(shared_data / relative)
    head = (shared_data / MIRROR["face08"]).read_bytes()[:4000]
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18garbage" + head[2000:])
    server = _QuietServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{{video_id}}.mp4"
    server.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "vox-like.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    return path


def _prepare(out: Path, manifest: Path, mirror: str, *extra: str) -> int:
    return cli.main(["run", "prepare", "--dataset", "vox", "--manifest", str(manifest),
                     "--url-template", mirror, "--size", str(SIZE), "--out", str(out),
                     "--no-progress", *extra])


# face08's second clip is listed in test, but its video's first row says train: as
# load_videos.py (the default split rule), every clip of the video goes to train.
SPLIT_OF = {name: split for name, split in zip(GOOD, ["train", "train", "train", "test", "train",
                                                     "train", "test"])}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, manifest, mirror, ray_local) -> Path:
    """The manifest above prepared once; 2 clips fail, so the exit status is 1."""
    out = tmp_path_factory.mktemp("prepared")
    assert _prepare(out, manifest, mirror) == 1
    return out


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "clips.parquet").set_index("clip")


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255


# (clip, video, real frames [first, stop), real crop ltrb)
EXPECTED = [
    (GOOD[0], "face08", 10, 40, (51, 41, 201, 191)),
    (GOOD[1], "face08", 10, 40, (0, 0, 256, 256)),
    (GOOD[2], "d0", 0, 24, (101, 50, 401, 349)),
    (GOOD[3], "wda", 3, 19, (100, 100, 400, 400)),
    (GOOD[6], "talk3", 0, 30, (0, 0, 578, 578)),
]


@pytest.mark.parametrize("clip,video,first,stop,box", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_crop_matches_independent_crop(prepared, shared_data, clip, video, first, stop, box):
    """Frames equal a PyAV decode + scikit-image crop/resize of the same real frames
    (bbox rescaled from the manifest's size, frame range converted from its fps)."""
    split = _table(prepared).loc[clip, "split"]
    frames = sorted(clip_dir(prepared, split, clip).glob("*.png"))
    assert [f.name for f in frames] == [f"{i:07d}.png" for i in range(stop - first)]
    left, top, right, bottom = box
    reference = read_frames(shared_data / MIRROR[video], first, stop + 1)[:, top:bottom, left:right]
    errors, shifted = [], []
    for index, path in enumerate(frames):
        ours = _png(path)
        assert ours.shape == (SIZE, SIZE, 3)
        errors.append(np.abs(ours - resize(reference[index], (SIZE, SIZE), anti_aliasing=True)).mean())
        shifted.append(np.abs(ours - resize(reference[index + 1], (SIZE, SIZE),
                                            anti_aliasing=True)).mean())
    assert np.mean(errors) < 0.012, np.mean(errors)
    assert np.mean(errors) < np.mean(shifted)  # one frame off would be worse


def test_failures_are_rows_and_the_rest_finish(prepared):
    table = _table(prepared)
    assert len(table) == len(ROWS)
    assert set(table.index[table.status == "done"]) == set(GOOD)
    outside = table.loc["id001#face08#000000#000010"]
    assert outside.status == "failed" and "outside" in outside.error and "600-600-700-700" in outside.error
    broken = table.loc["id004#broken#000000#000010"]
    assert broken.status == "failed" and "corrupt" in broken.error
    gone = table.loc["id005#missing404#000000#000010"]
    assert gone.status == "unavailable" and "404" in gone.error
    assert not clip_dir(prepared, "train", "id001#face08#000000#000010").exists()
    summary = json.loads((prepared / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["unavailable"]) == (7, 2, 1)
    assert summary["frames"] == 30 + 30 + 24 + 16 + 24 + 24 + 30
    assert summary["bytes"] == sum(p.stat().st_size for p in (prepared / "png").rglob("*.png"))


def test_one_download_per_video_and_shards(prepared):
    cached = sorted(p.name for p in (prepared / "downloads").glob("*.mp4"))
    # the damaged download is removed, so a rerun fetches it again; the others stay cached
    assert cached == ["d0.mp4", "d11.mp4", "face04.mp4", "face08.mp4", "talk3.mp4", "wda.mp4"]
    train = pq.read_table(prepared / "shards" / "train-00000.parquet").to_pandas()
    assert len(train) == 30 + 30 + 24 + 24 + 24
    assert set(train["clip"]) == {name for name, split in SPLIT_OF.items() if split == "train"}
    row = train.iloc[-1]
    path = clip_dir(prepared, "train", row["clip"]) / f"{row['frame_index']:07d}.png"
    assert path.read_bytes() == row["png"]


def test_small_shard_target_closes_shards_at_clip_boundaries(prepared, tmp_path):
    """A shard closes at the first clip boundary past the target; a clip never spans two
    shards and its row groups hold at most GROUP_FRAMES of its frames and nothing else."""
    from pipeline.shards import GROUP_FRAMES, iter_shard_frames, write_shards
    names = [n for n in GOOD if SPLIT_OF[n] == "train"]
    folders = [(c, clip_dir(prepared, "train", c)) for c in names]
    paths = write_shards(tmp_path / "shards", "train", folders, target_bytes=1)
    assert len(paths) == len(names)
    for path, name in zip(paths, sorted(names)):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            clips = parquet.read_row_group(group, columns=["clip"]).column("clip").to_pylist()
            assert set(clips) == {name} and len(clips) <= GROUP_FRAMES
    frames = list(iter_shard_frames(tmp_path, "train"))
    assert len(frames) == len({(c, i) for c, i, _ in frames}) == \
        sum(len(list(folder.glob("*.png"))) for _, folder in folders)


def test_missing_column_is_a_clear_error(prepared, tmp_path, mirror, capsys):
    bad = tmp_path / "no-bbox.csv"
    bad.write_text("video_id,start,end,fps,width,height,partition\nface08,0,10,25,256,256,train\n")
    before = (prepared / "clips.parquet").read_bytes()
    assert _prepare(prepared, bad, mirror) == 2
    err = capsys.readouterr().err
    assert "bbox" in err and "lacks column" in err and err.count("\n") == 1
    assert (prepared / "clips.parquet").read_bytes() == before  # earlier outputs intact


def test_rerun_retries_only_what_is_not_done(prepared, manifest, mirror):
    before = {p: p.stat().st_mtime_ns for p in (prepared / "png").rglob("*.png")}
    assert _prepare(prepared, manifest, mirror, "--allow-failures") == 0
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["processed_this_run"] == 3          # 2 failed + 1 unavailable retried
    assert {p: p.stat().st_mtime_ns for p in (prepared / "png").rglob("*.png")} == before


def test_sigkill_half_way_then_rerun_equals_clean_run(prepared, manifest, mirror, tmp_path):
    """Kill the driver with SIGKILL once the first clip is done; no partial clip is ever
    marked done, and the resumed run equals the clean one PNG for PNG."""
    import ray
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "stages.cli", "run", "prepare", "--dataset", "vox",
               "--manifest", str(manifest), "--url-template", mirror, "--size", str(SIZE),
               "--out", str(out), "--no-progress",
               "--ray-address", ray.get_runtime_context().gcs_address]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:
        rows = [read_row(out, SPLIT_OF[name], name) for name in GOOD]
        if any(r is not None and r["status"] == "done" for r in rows):
            break
        time.sleep(0.02)
    assert driver.poll() is None, "the driver finished before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (out / "clips.parquet").exists()  # written last: a killed run has none

    def snapshot() -> dict:
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    time.sleep(2.5)  # the driver's workers notice within a second and exit, ffmpeg with them
    settled = snapshot()
    time.sleep(2)
    assert snapshot() == settled, "workers went on writing after their driver died"
    done_after_kill = 0
    for name in GOOD:
        row = read_row(out, SPLIT_OF[name], name)
        if row is not None and row["status"] == "done":
            assert is_done(out, row)
            done_after_kill += 1
    for folder in (out / "png").glob("*/*"):
        if not folder.name.startswith(".tmp-"):  # every published folder is complete
            clean = prepared / "png" / folder.parent.name / folder.name
            assert len(list(folder.glob("*.png"))) == len(list(clean.glob("*.png")))
    assert 1 <= done_after_kill < len(GOOD), done_after_kill  # killed half way
    print(f"clips done when the driver was killed: {done_after_kill} of {len(GOOD)}")

    assert _prepare(out, manifest, mirror, "--allow-failures") == 0
    ours = sorted(p.relative_to(out) for p in (out / "png").rglob("*.png"))
    theirs = sorted(p.relative_to(prepared) for p in (prepared / "png").rglob("*.png"))
    assert ours == theirs and not list((out / "png").glob("*/.tmp-*"))
    for relative in ours:
        assert (out / relative).read_bytes() == (prepared / relative).read_bytes(), relative
    pd.testing.assert_series_equal(_table(out).status.sort_index(), _table(prepared).status.sort_index())
    for split in ("train", "test"):
        name = f"shards/{split}-00000.parquet"
        assert pq.read_table(out / name).equals(pq.read_table(prepared / name))


def test_offline_taichi_reports_unavailable_within_seconds(shared_data, tmp_path, capsys):
    """On this offline machine YouTube is unreachable: 5 videos, every clip unavailable,
    in seconds, exit status 1 (nothing succeeded) and no traceback. Where the machine is
    online, a closed local port stands in for the unreachable source."""
    from pipeline.download import unreachable_reason
    extra = [] if unreachable_reason(None) else ["--url-template", "http://127.0.0.1:9/{video_id}"]
    began = time.perf_counter()
    code = cli.main(["run", "prepare", "--dataset", "taichi", "--manifest",
                     str(shared_data / "manifests" / "taichi-metadata.csv"), "--limit", "5",
                     "--out", str(tmp_path), "--no-progress", *extra])
    elapsed = time.perf_counter() - began
    assert code == 1 and elapsed < 10, elapsed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["videos"] == 5 and summary["videos_unavailable"] == 5
    assert summary["done"] == 0 and summary["unavailable"] == summary["clips"] > 5
    assert "unavailable" in capsys.readouterr().out


def test_source_dir_dataset_from_folders_videos_and_gifs(shared_data, tmp_path, ray_local):
    """mgif/nemo/bair: {train,test}/ of frame folders, videos and gifs the user has."""
    source = tmp_path / "source"
    (source / "train").mkdir(parents=True)
    (source / "test").mkdir()
    (source / "train" / "taichi1").symlink_to(shared_data / "bodies" / "dwnet-taichi" / "1")
    (source / "test" / "face08.mp4").symlink_to(shared_data / MIRROR["face08"])
    (source / "test" / "montage.gif").symlink_to(shared_data / "other" / "mgif" / "mgif-tes.gif")
    out = tmp_path / "out"
    assert cli.main(["run", "prepare", "--dataset", "mgif", "--source-dir", str(source),
                     "--size", "32", "--out", str(out), "--no-progress"]) == 0
    table = _table(out)
    assert set(table.status) == {"done"}
    assert table.num_frames.to_dict() == {"taichi1": 64, "face08": 150, "montage": 12}
    frame = _png(clip_dir(out, "train", "taichi1") / "0000010.png")
    frames = sorted((shared_data / "bodies" / "dwnet-taichi" / "1").glob("*.png"))
    original = resize(_png(frames[10]), (32, 32), anti_aliasing=True)
    assert frame.shape == (32, 32, 3) and np.abs(frame - original).mean() < 0.03


def test_url_list_dataset_downloads_whole_videos(tmp_path, mirror, ray_local):
    """fashion: a list of video URLs, each a whole clip padded to a white square and
    resized to size x size."""
    urls = tmp_path / "fashion_test.txt"
    urls.write_text("".join(mirror.format(video_id=v) + "\n" for v in ("face08", "gone", "s13")))
    out = tmp_path / "out"
    assert cli.main(["run", "prepare", "--dataset", "fashion", "--manifest", str(urls),
                     "--size", "32", "--out", str(out), "--no-progress"]) == 0
    table = _table(out)
    assert table.loc["face08", "status"] == "done" and table.loc["face08", "num_frames"] == 150
    assert table.loc["face08", "split"] == "test"
    assert table.loc["gone", "status"] == "unavailable"
    assert table.loc["s13", "num_frames"] == 103
    portrait = _png(clip_dir(out, "test", "s13") / "0000050.png")  # padded white, not stretched
    assert portrait.shape == (32, 32, 3)
    assert portrait[:, :4].min() > 0.93 and portrait[:, -4:].min() > 0.93
    assert portrait[8:24, 12:20].mean() < 0.85
