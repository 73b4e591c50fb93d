"""`prepare` as the original video-preprocessing scripts: frames resized with load_videos.py's
scikit-image 0.14 arithmetic (checked against the old library's formulas written out here, on
real clips served by a local mirror), `<clip>.mp4` folders and the migration of an earlier
layout, the original's split rule, and MRAA's TED manifest (`prepare --dataset ted`)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_prepare import HEADER, MIRROR, mirror  # noqa: F401  (mirror is a fixture)

from core.media import ffmpeg_exe, probe
from stages import cli

SIZE = 64
ROWS = [  # (row, real frames [first, stop), real crop ltrb) of the 512x512 d0.mp4 / 578 px talk3
    ("d0,3,11,202-100-802-698,25,1024,1024,train,id002", (3, 11), (101, 50, 401, 349)),  # 4.7x down
    ("d0,0,6,100-300-140-340,25,512,512,test,id002", (0, 6), (100, 300, 140, 340)),      # 1.6x up
    ("d0,20,26,0-0-512-300,25,512,512,train,id002", (20, 26), (0, 0, 512, 300)),        # 8 x 4.7
    ("talk3,0,5,0-0-1156-1156,29.97,1156,1156,test,id008", (0, 5), (0, 0, 578, 578)),   # 9x down
]
NAMES = ["id002#d0#000003#000011", "id002#d0#000000#000006", "id002#d0#000020#000026",
         "id008#talk3#000000#000005"]


# --------------------------------------------------------------------------- the old formulas
def old_gaussian_pass(image: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """scipy's gaussian_filter1d as scikit-image 0.14 called it on a uint8 crop: weights
    exp(-x^2 / 2 sigma^2) / sum over |x| <= int(4 sigma + 0.5), zeros beyond the border
    (mode 'constant', cval 0), the sum stored into uint8 by truncation."""
    if sigma <= 1e-15:
        return image
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * np.arange(-radius, radius + 1) ** 2 / sigma ** 2)
    taps /= taps.sum()
    moved = np.moveaxis(image.astype(np.float64), axis, 0)
    zeros = np.zeros((radius,) + moved.shape[1:])
    padded = np.concatenate([zeros, moved, zeros])
    total = sum(taps[j] * padded[j:j + len(moved)] for j in range(2 * radius + 1))
    return np.moveaxis(np.trunc(total), 0, axis)


def old_resize(crop: np.ndarray, size: int) -> np.ndarray:
    """img_as_ubyte(resize(crop, (size, size), anti_aliasing=True)) of scikit-image 0.14.2:
    sigma = max(0, (factor - 1) / 2) per axis, rows filtered then columns; bilinear sampling
    of (filtered / 255) at factor * (x + 0.5) - 0.5 with 0 outside; clipped to the filtered
    image's range; times 255 in float32, rounded half to even."""
    height, width = crop.shape[:2]
    image = crop
    for axis, factor in ((0, height / size), (1, width / size)):
        image = old_gaussian_pass(image, max(0.0, (factor - 1) / 2), axis)
    image = image / 255.0
    rows = (height / size) * (np.arange(size) + 0.5) - 0.5
    cols = (width / size) * (np.arange(size) + 0.5) - 0.5
    r, c = np.meshgrid(rows, cols, indexing="ij")
    r0, r1, c0, c1 = np.floor(r), np.ceil(r), np.floor(c), np.ceil(c)
    dr, dc = (r - r0)[..., None], (c - c0)[..., None]

    def pixel(rr, cc):
        inside = ((rr >= 0) & (rr < height) & (cc >= 0) & (cc < width))[..., None]
        rr = np.clip(rr, 0, height - 1).astype(int)
        cc = np.clip(cc, 0, width - 1).astype(int)
        return np.where(inside, image[rr, cc], 0.0)
    top = (1 - dc) * pixel(r0, c0) + dc * pixel(r0, c1)
    bottom = (1 - dc) * pixel(r1, c0) + dc * pixel(r1, c1)
    out = (1 - dr) * top + dr * bottom
    low, high = image.min(), image.max()
    keep_zero = (out == 0) & (low > 0)
    out = np.where(keep_zero, 0.0, np.clip(out, low, high))
    return np.clip(np.rint((out * 255).astype(np.float32)), 0, 255).astype(np.uint8)


def decode_rgb(video: Path) -> np.ndarray:
    """Every decoded frame as ffmpeg's rgb24, as imageio's ffmpeg reader handed frames to
    load_videos.py (one per decoded frame: talk3's timestamps would make a constant-rate
    output repeat frames)."""
    info = probe(video)
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(video), "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True,
                         capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width, 3)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _prepare(out: Path, manifest: Path, mirror: str, *extra: str, dataset: str = "vox") -> int:
    return cli.main(["run", "prepare", "--dataset", dataset, "--manifest", str(manifest),
                     "--url-template", mirror, "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "vox-like.csv"
    path.write_text("\n".join([HEADER, *(row for row, _, _ in ROWS)]) + "\n")
    return path


@pytest.fixture(scope="module")
def both(tmp_path_factory, manifest, mirror, ray_local) -> dict[str, Path]:
    """The manifest prepared with each resize (vox's default is the original's)."""
    outs = {}
    for resize, extra in (("original", []), ("ffmpeg", ["--resize", "ffmpeg"])):
        outs[resize] = tmp_path_factory.mktemp(resize)
        assert _prepare(outs[resize], manifest, mirror, "--size", str(SIZE), *extra) == 0
    return outs


# --------------------------------------------------------------------------- resize
def test_prepared_clips_equal_the_old_scikit_image_arithmetic(both, shared_data):
    """Every frame of every prepared clip is within 1/255 of the old formulas applied to
    ffmpeg's RGB frames (down by 1.6x to 9x, up, and non-square crops); most are exact.
    The ffmpeg path is measurably further off (its README figure)."""
    out = both["original"]
    table = pd.read_parquet(out / "clips.parquet").set_index("clip")
    decoded = {video: decode_rgb(shared_data / MIRROR[video]) for video in ("d0", "talk3")}
    worst, exact, ffmpeg_error, ours_error = 0, [], [], []
    for name, (row, (first, stop), (left, top, right, bottom)) in zip(NAMES, ROWS):
        split = table.loc[name, "split"]
        assert table.loc[name, "status"] == "done" and table.loc[name, "num_frames"] == stop - first
        folder = out / "png" / split / f"{name}.mp4"  # the original loaders' folder name
        for index in range(stop - first):
            crop = decoded[row.split(",")[0]][first + index, top:bottom, left:right]
            expected = old_resize(crop, SIZE).astype(int)
            ours = _png(folder / f"{index:07d}.png").astype(int)
            fast = _png(both["ffmpeg"] / "png" / split / f"{name}.mp4" / f"{index:07d}.png")
            worst = max(worst, np.abs(ours - expected).max())
            exact.append((ours == expected).mean())
            ours_error.append(np.abs(ours - expected).mean())
            ffmpeg_error.append(np.abs(fast.astype(int) - expected).mean())
    assert worst <= 1, worst
    assert np.mean(exact) > 0.99, np.mean(exact)
    assert np.mean(ffmpeg_error) > 0.5 > 10 * np.mean(ours_error), (ffmpeg_error, ours_error)


def test_the_formula_sees_what_differs(shared_data):
    """The formula is not blind to the two details of the old code: zero padding darkens the
    border (reflect padding does not), and the resize is exact to it while a variant that
    rounds the gaussian passes instead of truncating them is not."""
    from skimage.transform import resize

    from core import skimage014
    frame = decode_rgb(shared_data / MIRROR["d0"])[0, :300, :420]
    reflect = np.rint(resize(frame, (SIZE, SIZE), anti_aliasing=True, mode="reflect") * 255)
    old = old_resize(frame, SIZE).astype(float)
    assert np.abs(old - reflect)[0].mean() > 3 * np.abs(old - reflect)[SIZE // 2].mean()
    ours = skimage014.resize(frame, (SIZE, SIZE))
    global old_gaussian_pass
    truncating = old_gaussian_pass
    try:
        old_gaussian_pass = lambda image, sigma, axis: np.rint(  # noqa: E731
            truncating(image.astype(np.float64) + 0.5, sigma, axis) - 0.5 + 1e-9)
        rounding = old_resize(frame, SIZE)
    finally:
        old_gaussian_pass = truncating
    assert (ours == old).mean() > 0.99 > 0.9 > (ours == rounding).mean()


def test_resize_choice_is_part_of_the_settings(both, manifest, mirror):
    """A rerun with the other resize redoes every clip; with the same, none."""
    out = both["ffmpeg"]
    summary = lambda: json.loads((out / "summary.json").read_text())  # noqa: E731
    assert summary()["settings"].get("resize") is None  # ffmpeg: the digest of earlier outputs
    assert _prepare(out, manifest, mirror, "--size", str(SIZE), "--resize", "ffmpeg") == 0
    assert summary()["processed_this_run"] == 0
    original = json.loads((both["original"] / "summary.json").read_text())
    assert original["settings"]["resize"] == "original"


# --------------------------------------------------------------------------- layout
def test_old_layout_reads_and_migrates_in_place(both, manifest, mirror, tmp_path):
    """An output of the earlier layout (`png/<split>/<clip>/`) is read as it is, and the next
    prepare renames its folders to `<clip>.mp4` without redoing a clip."""
    import shutil

    from fomm.data import open_clips
    out = tmp_path / "old"
    shutil.copytree(both["original"], out, symlinks=True)
    (out / "shards").unlink()  # the link to the shard set: read the folders, not the shards
    for folder in (out / "png").glob("*/*.mp4"):
        folder.rename(folder.with_name(folder.name[:-4]))
    store = open_clips(out, "train")
    assert type(store).__name__ == "FolderStore" and store.clips == sorted(
        n for n in NAMES if (out / "png" / "train" / n).is_dir())
    frames = {p.relative_to(out): p.read_bytes() for p in (out / "png").rglob("*.png")}
    assert _prepare(out, manifest, mirror, "--size", str(SIZE)) == 0
    assert json.loads((out / "summary.json").read_text())["processed_this_run"] == 0
    assert sorted(p.name for p in (out / "png").glob("*/*")) == sorted(f"{n}.mp4" for n in NAMES)
    moved = {Path(p.parts[0], p.parts[1], p.parts[2] + ".mp4", p.parts[3]): data
             for p, data in frames.items()}
    assert {p.relative_to(out): p.read_bytes() for p in (out / "png").rglob("*.png")} == moved
    assert open_clips(out, "train").clips == store.clips


def test_a_folder_and_its_mp4_twin_are_refused(tmp_path):
    from core.errors import UserError
    from fomm.data import open_clips
    for name in ("a#v#000000#000002", "a#v#000000#000002.mp4"):
        (tmp_path / "png" / "train" / name).mkdir(parents=True)
    with pytest.raises(UserError, match="are both clip a#v#000000#000002"):
        open_clips(tmp_path, "train")


# --------------------------------------------------------------------------- splits
def test_split_conflicts_follow_the_first_row_and_move_on_rerun(tmp_path, mirror, ray_local):
    """A clip listed in both splits goes to its video's first row's split (load_videos.py);
    prepared earlier under --split-conflicts test, a rerun moves it and drops the test copy."""
    rows = ["d0,0,4,202-100-802-698,25,1024,1024,train,id002",
            "d0,8,12,202-100-802-698,25,1024,1024,test,id002",
            "d0,0,4,202-100-802-698,25,1024,1024,test,id002"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([HEADER, *rows]) + "\n")
    out = tmp_path / "out"
    assert _prepare(out, manifest, mirror, "--size", "32", "--split-conflicts", "test") == 0
    table = pd.read_parquet(out / "clips.parquet")
    assert sorted(zip(table["split"], table["clip"])) == [("test", "id002#d0#000000#000004"),
                                                    ("test", "id002#d0#000008#000012")]
    assert _prepare(out, manifest, mirror, "--size", "32") == 0  # vox: first row's split
    table = pd.read_parquet(out / "clips.parquet")
    assert sorted(zip(table["split"], table["clip"])) == [("train", "id002#d0#000000#000004"),
                                                    ("train", "id002#d0#000008#000012")]
    assert sorted(p.name for p in (out / "png").glob("*/*")) == [
        "id002#d0#000000#000004.mp4", "id002#d0#000008#000012.mp4"]
    assert not (out / "png" / "test").exists() or not any((out / "png" / "test").iterdir())


# --------------------------------------------------------------------------- TED
def _ted_manifest(folder: Path) -> Path:
    """MRAA's row form: `youtube-id#start#end`, 0 in the columns, bbox in 1280x720 pixels."""
    path = folder / "ted-metadata.csv"
    path.write_text("video_id,start,end,bbox,fps,width,height,partition\n"
                    "d0#000005#000008,0,0,250-90-750-630,10.0,944,944,train\n"
                    "missing404#000100#000300,0,0,10-10-500-500,10.0,720,720,train\n")
    return path


def test_ted_from_mraa_manifest(tmp_path, mirror, shared_data, ray_local):
    """`prepare --dataset ted`: 384 px, frames [5, 8) of the file itself, the bbox rescaled
    from 1280x720 to the file's 512x512, the original's resize; a gone video is unavailable
    (exit 0 with the rest done); a rerun does nothing; a second writer is refused."""
    from core.writer_lock import LOCK_NAME
    manifest, out = _ted_manifest(tmp_path), tmp_path / "ted"
    assert _prepare(out, manifest, mirror, dataset="ted") == 0
    table = pd.read_parquet(out / "clips.parquet").set_index("clip")
    assert table.status.to_dict() == {"d0#000005#000008": "done",
                                      "missing404#000100#000300": "unavailable"}
    assert table.loc["d0#000005#000008", "num_frames"] == 3
    folder = out / "png" / "train" / "d0#000005#000008.mp4"
    frames = decode_rgb(shared_data / MIRROR["d0"])
    left, top, right, bottom = (int(v * s) for v, s in zip((250, 90, 750, 630),
                                                           (512 / 1280, 512 / 720) * 2))
    for index in range(3):
        ours = _png(folder / f"{index:07d}.png").astype(int)
        assert ours.shape == (384, 384, 3)
        expected = old_resize(frames[5 + index, top:bottom, left:right], 384).astype(int)
        assert np.abs(ours - expected).max() <= 1
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert _prepare(out, manifest, mirror, dataset="ted") == 0
    assert json.loads((out / "summary.json").read_text())["processed_this_run"] == 1  # the 404
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    # another writer holds the folder (its own open of the lock file: the lock is re-entrant
    # only within the process that holds it through writer_lock)
    import fcntl
    with open(out / LOCK_NAME, "a+") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _prepare(out, manifest, mirror, dataset="ted") == 2


def test_ted_definition_and_upstream_manifest(shared_data):
    """ted.yaml names MRAA's file by commit and checksum; all 1,320 rows parse, in 411 videos,
    every clip in train with its range from the id."""
    from core.media import sha256_of
    from pipeline import datasets
    from pipeline.clips import group_by_video, read_manifest
    ted = datasets.load_dataset("ted")
    path = shared_data / "manifests" / "ted-metadata.csv"
    assert (ted.size, ted.resize, ted.kind) == (384, "original", "manifest")
    assert sha256_of(path) == ted.manifest.sha256
    clips = read_manifest(path, ted.split_conflicts, ted.id_range_bbox_size)
    assert len(clips) == 1320 and len(group_by_video(clips)) == 411
    first = clips[0]
    assert (first.name, first.video_id, first.start, first.end, first.fps) == (
        "VM6HZqQKhok#016609#016737", "VM6HZqQKhok", 16609, 16737, None)
    assert (first.width, first.height, first.bbox) == (1280, 720, (104, 10, 665, 570))
    assert {c.split for c in clips} == {"train"}
