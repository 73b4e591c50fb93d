"""Manifests into clips: the upstream vox/taichi csv files, clip names, frame ranges at
the manifest's fps, bbox rescaling, dataset definitions and their checksums."""
from __future__ import annotations

import pytest

from core.errors import UserError
from pipeline import datasets
from pipeline.clips import clip_name, group_by_video, read_manifest
from pipeline.crop import CropError, frame_range, scaled_bbox


def test_upstream_manifests_parse(shared_data):
    """vox lists about 300 rows twice (kept once) and 3 clips in both splits: by default each
    goes to its video's first row's split (train), as load_videos.py does; 'test' keeps them
    in test only and 'error' refuses them. taichi lists every clip once."""
    import pandas as pd
    path = shared_data / "manifests" / "vox-metadata.csv"
    with pytest.raises(UserError, match=r"3 clip\(s\) are listed in both train and test "
                                        r"\(id10282#hgB5ziAudzU#008753#008850"):
        read_manifest(path, split_conflicts="error")
    assert datasets.load_dataset("vox").split_conflicts == "first"
    assert datasets.load_dataset("taichi").split_conflicts == "first"
    vox = read_manifest(path)
    in_test = read_manifest(path, split_conflicts="test")
    taichi = read_manifest(shared_data / "manifests" / "taichi-metadata.csv")
    table = pd.read_csv(path, dtype=str).drop_duplicates(["person_id", "video_id", "start", "end",
                                                          "partition"])
    assert len(vox) == len(in_test) == len(table) - 3 and len(taichi) == 3334
    assert len({c.name for c in vox}) == len(vox)
    conflicting = {"id10282#hgB5ziAudzU#008753#008850", "id10282#hgB5ziAudzU#008914#009055",
                   "id10306#ST2JZXcyYkE#018239#018675"}
    assert {c.split for c in vox if c.name in conflicting} == {"train"}
    assert {c.split for c in in_test if c.name in conflicting} == {"test"}
    assert [c for c in vox if c.name not in conflicting] == [c for c in in_test
                                                             if c.name not in conflicting]
    first = vox[0]
    assert first.name == "id10005#WMh3ye5tBsE#003657#003994"
    assert (first.bbox, first.width, first.height, first.fps) == ((624, 48, 1018, 553), 1280, 720, 25.0)
    assert taichi[0].name == "u6rJiF-gPx8#000080#000300" and taichi[0].person_id is None
    assert {c.split for c in vox} == {"train", "test"} == {c.split for c in taichi}
    assert len({c.name for c in taichi}) == len(taichi)
    groups = group_by_video(taichi)
    assert sum(len(g) for g in groups.values()) == len(taichi)
    assert list(groups)[0] == "u6rJiF-gPx8"


def test_upstream_checksums_match_the_definitions(shared_data):
    for name, file in (("vox", "vox-metadata.csv"), ("taichi", "taichi-metadata.csv"),
                       ("ted", "ted-metadata.csv")):
        remote = datasets.load_dataset(name).manifest
        assert datasets.sha256_of(shared_data / "manifests" / file) == remote.sha256
        assert remote.url.endswith(file)
    fashion = datasets.load_dataset("fashion")
    for split in ("train", "test"):
        assert datasets.sha256_of(shared_data / "manifests" / f"fashion_{split}.txt") == \
            fashion.url_lists[split].sha256


def test_every_definition_loads():
    kinds = {name: datasets.load_dataset(name).kind for name in datasets.available()}
    assert kinds == {"bair": "source_dir", "custom": "custom", "fashion": "url_list",
                     "mgif": "source_dir", "nemo": "source_dir", "sample": "sample",
                     "taichi": "manifest", "ted": "manifest", "vox": "manifest"}
    resizes = {name: datasets.load_dataset(name).resize for name in datasets.available()}
    assert {name for name, resize in resizes.items() if resize == "original"} == {
        "taichi", "ted", "vox"}
    with pytest.raises(UserError, match="unknown dataset 'voxx'"):
        datasets.load_dataset("voxx")


def test_ted_rows_take_their_range_from_the_id(tmp_path):
    """MRAA's rows `video#start#end` with 0 in the columns; a row with real columns keeps
    them (and only the id's video part names the download); a bad id part is refused."""
    path = tmp_path / "ted.csv"
    path.write_text("video_id,start,end,bbox,fps,width,height,partition\n"
                    "abc#000010#000200,0,0,1-2-3-4,10.0,944,944,train\n"
                    "abc#000010#000200,30,90,1-2-3-4,25.0,1280,720,test\n")
    clip, other = read_manifest(path, id_range_bbox_size=(1280, 720))
    assert (clip.name, clip.video_id, clip.start, clip.end, clip.fps) == (
        "abc#000010#000200", "abc", 10, 200, None)
    assert (clip.width, clip.height, clip.split) == (1280, 720, "train")
    assert (other.name, other.start, other.end, other.fps, other.width) == (
        "abc#000030#000090", 30, 90, 25.0, 1280)
    assert other.split == "train"  # the same video id: its first row's split
    clip, _ = read_manifest(path)
    assert (clip.width, clip.height) == (944, 944)  # no bbox size given: the columns'
    path.write_text("video_id,start,end,bbox,fps,width,height,partition\n"
                    "..#000010#000200,0,0,1-2-3-4,10.0,944,944,train\n")
    with pytest.raises(UserError, match="is not a plain name"):
        read_manifest(path)
    path.write_text("video_id,start,end,bbox,fps,width,height,partition\n"
                    "abc#000200#000010,0,0,1-2-3-4,10.0,944,944,train\n")
    with pytest.raises(UserError, match="expected 0 <= start < end"):
        read_manifest(path)


def test_clip_names():
    assert clip_name("abc", 5, 120) == "abc#000005#000120"
    assert clip_name("abc", 5, 120, "id1") == "id1#abc#000005#000120"


@pytest.mark.parametrize("header,missing", [
    ("video_id,start,end,fps,width,height,partition", "bbox"),
    ("video_id,start,end,bbox,width,height,partition", "fps"),
    ("start,end,bbox,fps,width,height,partition", "video_id"),
])
def test_missing_column_names_it(tmp_path, header, missing):
    path = tmp_path / "m.csv"
    path.write_text(header + "\n")
    with pytest.raises(UserError, match=rf"lacks column\(s\) \['{missing}'\]"):
        read_manifest(path)


def test_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("video_id,start,end,bbox,fps,width,height,partition\n"
                    "a,0,10,1-2-3-4,25,100,100,train\n"
                    "b,0,10,1-2-3,25,100,100,train\n")
    with pytest.raises(UserError, match=r"row 3: bbox '1-2-3'"):
        read_manifest(path)
    path.write_text("video_id,start,end,bbox,fps,width,height,partition\n"
                    "a,0,10,1-2-3-4,25,100,100,validation\n")
    with pytest.raises(UserError, match="partition 'validation'"):
        read_manifest(path)
    path.write_text("video_id,start,end,bbox,fps,width,height,partition\n"
                    "a,10,10,1-2-3-4,25,100,100,train\n")
    with pytest.raises(UserError, match="start < end"):
        read_manifest(path)


def test_frame_range_follows_the_manifest_fps():
    # upstream rule: real frame i is in the clip when start/fps_m <= i/fps_r < end/fps_m
    assert frame_range(80, 300, 29.97, 29.97, 10_000) == (80, 300)
    assert frame_range(10, 20, 25.0, 50.0, 10_000) == (20, 40)
    assert frame_range(10, 20, 30.0, 15.0, 10_000) == (5, 10)
    assert frame_range(100, 200, 25.0, 25.0, 150) == (100, 150)   # video ends early
    assert frame_range(3, None, None, 25.0, 40) == (3, 40)        # whole-video datasets
    assert frame_range(0, 30, 29.97, 30000 / 1001, 999) == (0, 30)  # rounded NTSC rate
    for start, end, fps_m, fps_r in ((7, 31, 29.97, 25.0), (5, 17, 24.0, 30.0)):
        first, stop = frame_range(start, end, fps_m, fps_r, 10_000)
        inside = [i for i in range(200) if start / fps_m <= i / fps_r < end / fps_m]
        assert (first, stop) == (inside[0], inside[-1] + 1)


def test_bbox_rescaled_to_the_real_resolution():
    # manifest 1280x720, file 640x360: everything halves
    assert scaled_bbox((624, 48, 1018, 553), (1280, 720), (640, 360)) == (312, 24, 197, 252)
    # partly outside: clamped like the original numpy slicing
    assert scaled_bbox((-10, -10, 50, 60), (100, 100), (100, 100)) == (0, 0, 50, 60)
    with pytest.raises(CropError, match="outside the 256x256 frame"):
        scaled_bbox((600, 600, 700, 700), (512, 512), (256, 256))


def test_split_and_limit_select_videos():
    from pipeline.clips import Clip
    from pipeline.prepare import Job, _select
    jobs = [Job("a", [Clip("a1", "a", None, "train"), Clip("a2", "a", None, "test")]),
            Job("b", [Clip("b1", "b", None, "train")]), Job("c", [Clip("c1", "c", None, "test")])]
    chosen = _select(jobs, "test", None)
    assert [(j.key, [c.name for c in j.clips]) for j in chosen] == [("a", ["a2"]), ("c", ["c1"])]
    assert [j.key for j in _select(jobs, None, 2)] == ["a", "b"]
    with pytest.raises(UserError, match="--limit must be a positive"):
        _select(jobs, None, 0)


def test_upstream_manifest_fetched_once_and_verified(shared_data, tmp_path):
    """`prepare` downloads a definition's manifest once into its cache, checks its sha256,
    and never trusts a file whose checksum differs (served here from 127.0.0.1)."""
    import functools
    import http.server
    import threading
    served = tmp_path / "served"
    served.mkdir()
    (served / "taichi-metadata.csv").symlink_to(shared_data / "manifests" / "taichi-metadata.csv")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/taichi-metadata.csv"
    good = datasets.RemoteFile(url, datasets.load_dataset("taichi").manifest.sha256)
    try:
        cached = datasets.fetch(good, tmp_path / "cache")
        assert datasets.sha256_of(cached) == good.sha256
        with pytest.raises(UserError, match="expected 0000"):
            datasets.fetch(datasets.RemoteFile(url, "0" * 64), tmp_path / "other-cache")
        assert not list((tmp_path / "other-cache").glob("*"))  # a bad download is not kept
    finally:
        server.shutdown()
    assert datasets.fetch(good, tmp_path / "cache") == cached  # served from the cache
