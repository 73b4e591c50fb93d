"""Custom dataset: faces found by dlib, linked into tubes and cropped for real; on every
talking-face clip in ../shared/data/faces the crop holds the face (dlib landmarks)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import faces
from stages import cli
from pipeline.clips import clip_dir
from pipeline.custom import enlarge, iou, link_tubes

SIZE = 128


@pytest.fixture(scope="module")
def face_videos(shared_data, tmp_path_factory):
    videos = sorted((shared_data / "faces").glob("*/*.mp4"))
    assert len(videos) >= 9, videos
    folder = tmp_path_factory.mktemp("own-videos")
    for video in videos:  # unique names: fomm-demo-00.mp4, liveportrait-d0.mp4, ...
        (folder / f"{video.parent.name}-{video.name}").symlink_to(video)
    return folder


@pytest.fixture(scope="module")
def prepared(face_videos, tmp_path_factory):
    from core.ray_runner import init_ray, shutdown_ray
    root = tmp_path_factory.mktemp("custom")
    definition = root / "custom-fast.yaml"
    definition.write_text("name: custom\nkind: custom\nsize: 256\n"
                          "custom: {iou_threshold: 0.25, enlarge: 0.1, min_frames: 64, "
                          "detect_every: 10, split: test}\n")
    init_ray(num_cpus=2)
    try:
        assert cli.main(["run", "prepare", "--dataset", str(definition), "--source-dir",
                         str(face_videos), "--size", str(SIZE), "--out", str(root / "out"),
                         "--no-progress"]) == 0
    finally:
        shutdown_ray()
    return root / "out"


def test_every_face_clip_gives_a_tube_whose_crop_holds_the_face(prepared, face_videos):
    table = pd.read_parquet(prepared / "clips.parquet")
    done = table[table.status == "done"]
    assert set(done.video_id) == {p.stem for p in face_videos.iterdir()}
    for row in done.itertuples():
        frames = sorted(clip_dir(prepared, "test", row.clip).glob("*.png"))
        assert len(frames) == row.num_frames == row.end - row.start >= 64
        for path in (frames[0], frames[len(frames) // 2], frames[-1]):
            image = np.asarray(Image.open(path).convert("RGB"))
            assert image.shape == (SIZE, SIZE, 3)
            box = faces.largest_face(image, upsample=1)
            assert box is not None, f"no face in {row.clip}/{path.name}"
            points = faces.landmarks(image, box)
            inside = ((points >= 0) & (points < SIZE)).all(axis=1).mean()
            assert inside > 0.95, (row.clip, path.name, inside)
            span = points.max(axis=0) - points.min(axis=0)
            assert (span > 0.25 * SIZE).all(), (row.clip, path.name, span)   # not a speck
            centre = points.mean(axis=0)
            assert (np.abs(centre - SIZE / 2) < 0.3 * SIZE).all(), (row.clip, centre)


def test_rerun_skips_finished_videos(prepared, face_videos):
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["done"] >= len(list(face_videos.iterdir()))
    # the same definition: another policy (the stock custom.yaml) would redo every video
    assert cli.main(["run", "prepare", "--dataset", str(prepared.parent / "custom-fast.yaml"),
                     "--source-dir", str(face_videos), "--size", str(SIZE), "--out",
                     str(prepared), "--no-progress"]) == 0
    assert json.loads((prepared / "summary.json").read_text())["processed_this_run"] == 0


def test_tubes_split_on_low_iou_with_the_first_box():
    near = np.array([10.0, 10, 110, 110])
    moved = np.array([200.0, 10, 300, 110])           # IoU 0 with the first box
    drift = np.array([30.0, 10, 130, 110])            # IoU 0.67 with the first box
    detections = [(0, near[None]), (5, drift[None]), (10, moved[None]), (15, moved[None])]
    tubes = link_tubes(detections, 0.25, last_frame=19)
    spans = sorted((t.start, t.end) for t in tubes)
    assert spans == [(0, 5), (10, 19)]
    first = min(tubes, key=lambda t: t.start)
    assert first.union_box.tolist() == [10, 10, 130, 110]
    assert iou(near, near) == 1.0 and iou(near, moved) == 0.0


def test_enlarge_grows_ten_percent_towards_square_and_clamps():
    x, y, w, h = enlarge(np.array([100.0, 100, 200, 200]), 0.1, 1000, 1000)
    assert (x, y, w, h) == (90, 90, 120, 120)
    x, y, w, h = enlarge(np.array([100.0, 100, 200, 300]), 0.1, 1000, 1000)  # tall: widen more
    assert h == 240 and w == 240
    assert enlarge(np.array([0.0, 0, 50, 50]), 0.1, 52, 52) == (0, 0, 52, 52)


def test_video_without_faces_is_one_failed_row(shared_data, tmp_path):
    from pipeline.custom import prepare_video
    from pipeline.datasets import CustomPolicy
    rows = prepare_video(shared_data / "other" / "mgif" / "mgif-tes.gif", tmp_path, 64,
                         CustomPolicy(min_frames=8, detect_every=4))
    assert len(rows) == 1 and rows[0]["status"] == "failed"
    assert "no face tube of at least 8 frames" in rows[0]["error"]
    assert not (tmp_path / "png" / "test").exists() or not any((tmp_path / "png" / "test").iterdir())
