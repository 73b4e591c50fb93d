"""fomm/data.py and fomm/augment.py on real frames from ../shared/data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import AugmentationParams, CropParams, DatasetParams, FlipParams, JitterParams
from core.errors import UserError
from fomm.augment import Augmentation, color_jitter, random_crop
from fomm.data import EpochSampler, FramePairs, ReconstructionClips, frame_sort_key, open_clips

SIZE = (64, 64, 3)


def _png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _write_prepared(root: Path, shared_data: Path) -> None:
    """A prepared dataset as `pipeline run prepare` writes it: PNG folders, shards written by
    `pipeline.shards.write_shards` from them (its real row-group layout), the manifest."""
    from pipeline.shards import write_shards
    taichi = shared_data / "bodies" / "dwnet-taichi"
    clips = {"p1#taichiA#000000#000012": sorted((taichi / "1").glob("*.png"))[:12],
             "p2#taichiB#000000#000010": sorted((taichi / "2").glob("*.png"))[:10],
             "p3#broken#000000#000005": sorted((taichi / "2").glob("*.png"))[:5]}
    folders = []
    for clip, files in clips.items():
        folder = root / "png" / "train" / clip
        folder.mkdir(parents=True)
        for i, f in enumerate(files):
            (folder / f"{i:07d}.png").write_bytes(_png_bytes(f))
        folders.append((clip, folder))
    write_shards(root / "shards", "train", folders, target_bytes=1_500_000)
    import shutil
    shutil.rmtree(folders[2][1])  # the failed clip has no folder, only stale shard rows
    manifest = pd.DataFrame({"clip": list(clips), "split": ["train"] * 3,
                             "status": ["done", "done", "failed"], "fps": [25.0, 30.0, 25.0]})
    manifest.to_parquet(root / "clips.parquet")


def _original_layout(shared_data: Path, root: Path) -> Path:
    """`<root>/{train,test}/<clip>/<frame>.png`, `<clip>.mp4` and a frame strip, as symlinks."""
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    links = {"train/taichi1": shared_data / "bodies/dwnet-taichi/1",
             "train/fashion1": shared_data / "bodies/dwnet-fashion/1",
             "test/08.mp4": shared_data / "faces/fomm-demo/08.mp4",
             "test/horse.png": shared_data / "other/mgif/driving.png"}
    for name, target in links.items():
        if not (root / name).exists():
            (root / name).symlink_to(target)
    return root


@pytest.fixture
def original_root(shared_data, tmp_path) -> Path:
    return _original_layout(shared_data, tmp_path / "orig")


@pytest.fixture
def prepared_root(shared_data, tmp_path) -> Path:
    _write_prepared(tmp_path / "prep", shared_data)
    return tmp_path / "prep"


def test_frames_sort_numerically_without_zero_padding(shared_data, original_root):
    files = list((shared_data / "bodies" / "dwnet-fashion" / "1").glob("*.png"))
    ordered = [p.stem for p in sorted(files, key=frame_sort_key)]
    assert ordered[:12] == [f"frame{i}" for i in range(12)]
    store = open_clips(original_root, "train")
    assert [p.name for p in store._files("fashion1")][9:12] == ["frame9.png", "frame10.png", "frame11.png"]


def test_original_layout_folders_videos_and_strips(original_root, shared_data):
    train = open_clips(original_root, "train")
    test = open_clips(original_root, "test")
    assert train.clips == ["fashion1", "taichi1"]
    assert test.clips == ["08", "horse"]
    assert test.num_frames("08") == 150 and test.num_frames("horse") == 26
    strip = test.read("horse", [1])
    assert strip.shape == (1, 128, 128, 3)
    first = train.read("taichi1", [0])[0]
    from PIL import Image
    assert np.array_equal(first, np.asarray(Image.open(shared_data / "bodies/dwnet-taichi/1/0000000.png").convert("RGB")))


def test_parquet_shards_match_png_folders_and_skip_failed_clips(prepared_root):
    shards = open_clips(prepared_root, "train")
    assert type(shards).__name__ == "ParquetStore"
    assert shards.clips == ["p1#taichiA#000000#000012", "p2#taichiB#000000#000010"]  # failed clip left out
    assert shards.fps("p2#taichiB#000000#000010") == 30.0
    assert len(list((prepared_root / "shards").glob("train-*.parquet"))) == 2  # 1.5 MB target: p1 + p2, then p3
    (prepared_root / "shards").rename(prepared_root / "shards.bak")
    folders = open_clips(prepared_root, "train")
    assert type(folders).__name__ == "FolderStore"
    (prepared_root / "shards.bak").rename(prepared_root / "shards")
    for clip in folders.clips:
        assert shards.num_frames(clip) == folders.num_frames(clip)
        indices = [0, 7, 8, shards.num_frames(clip) - 1]  # across row groups of 8 rows
        assert np.array_equal(shards.read(clip, indices), folders.read(clip, indices))
        streamed = np.concatenate(list(shards.iter_batches(clip, 4)))
        assert np.array_equal(streamed, folders.read(clip, range(folders.num_frames(clip))))


def test_missing_split_names_the_path_and_layouts(tmp_path):
    with pytest.raises(UserError, match="holds no 'train' data; expected shards/train"):
        open_clips(tmp_path, "train")
    with pytest.raises(UserError, match="'valid' is not one of"):
        open_clips(tmp_path, "valid")


def test_pairs_come_from_one_clip_and_are_deterministic(original_root):
    store = open_clips(original_root, "train")
    params = DatasetParams(frame_shape=SIZE)
    pairs = FramePairs(store, params, num_repeats=5)
    assert len(pairs) == 10
    item = pairs[(3, 1234)]
    again = pairs[(3, 1234)]
    assert item["source"].shape == (3, 64, 64) and item["source"].dtype == torch.float32
    assert 0 <= item["source"].min() and item["source"].max() <= 1
    assert torch.equal(item["source"], again["source"]) and torch.equal(item["driving"], again["driving"])
    assert item["name"] == store.clips[3 % 2]
    # each frame of the pair is one of the clip's real frames (resized)
    from core.frames import resize, to_tensor
    clip_frames = to_tensor(resize(store.read(item["name"], range(store.num_frames(item["name"]))), (64, 64)))
    for key in ("source", "driving"):
        assert (clip_frames - item[key]).abs().flatten(1).max(1).values.min() == 0


def test_identity_sampling_balances_identities(tmp_path, shared_data):
    root = tmp_path / "ids"
    (root / "train").mkdir(parents=True)
    taichi = shared_data / "bodies/dwnet-taichi"
    for name, target in {"idA#v1#000000#000064": taichi / "1", "idA#v2#000000#000048": taichi / "2",
                         "idA#v3#000000#000064": taichi / "1", "idB#v1#000000#000064": shared_data / "bodies/dwnet-fashion/1"}.items():
        (root / "train" / name).symlink_to(target)
    store = open_clips(root, "train")
    by_id = FramePairs(store, DatasetParams(frame_shape=SIZE, id_sampling=True), num_repeats=2)
    by_clip = FramePairs(store, DatasetParams(frame_shape=SIZE, id_sampling=False))
    assert len(by_id) == 4 and len(by_clip) == 4
    sampler = EpochSampler(len(by_id) * 10, seed=0)
    names = [by_id.items[i % 2][0].split("#")[0] for i, _ in sampler.keys()]
    assert names.count("idA") == names.count("idB") == 20
    drawn = {by_id[(0, seed)]["name"] for seed in range(12)}
    assert drawn <= {"idA#v1#000000#000064", "idA#v2#000000#000048", "idA#v3#000000#000064"} and len(drawn) >= 2


def test_sampler_is_a_function_of_seed_and_epoch_and_shards_by_rank():
    full = EpochSampler(21, seed=3)
    full.set_epoch(2)
    keys = full.keys()
    assert sorted(k[0] for k in keys) == list(range(21))
    ranks = [EpochSampler(21, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    shares = [s.keys() for s in ranks]
    assert len(shares[0]) == len(shares[1]) == 10 == len(ranks[0])
    assert set(shares[0]).isdisjoint(shares[1]) and set(shares[0]) | set(shares[1]) <= set(keys)
    full.set_epoch(2, start=5)
    assert full.keys() == keys[5:] and len(full) == 16
    full.set_epoch(3)
    assert full.keys() != keys


def test_augmentation_moves_both_frames_together(original_root):
    """A pair of one frame twice stays identical under flips and jitter; flips do happen."""
    store = open_clips(original_root, "train")
    frame = store.read("taichi1", [5]).astype(np.float32)[..., :64, :64, :] / 255.0
    pair = np.concatenate([frame, frame])  # (2, 64, 64, 3)
    aug = Augmentation(AugmentationParams(flip_param=FlipParams(horizontal_flip=True, time_flip=True),
                                          jitter_param=JitterParams(0.1, 0.1, 0.1, 0.1),
                                          crop_param=CropParams(size=(48, 48))))
    mirrored = 0
    for seed in range(8):
        out = aug(pair, np.random.default_rng(seed))
        assert out.shape == (2, 48, 48, 3)
        assert np.array_equal(out[0], out[1])
        assert 0 <= out.min() and out.max() <= 1
    flip_only = Augmentation(AugmentationParams(flip_param=FlipParams(horizontal_flip=True)))
    for seed in range(8):
        out = flip_only(pair, np.random.default_rng(seed))
        mirrored += np.array_equal(out[0], frame[0, :, ::-1])
    assert 0 < mirrored < 8
    time_only = Augmentation(AugmentationParams(flip_param=FlipParams(time_flip=True)))
    seq = store.read("taichi1", [0, 30]).astype(np.float32) / 255.0
    flipped = [np.array_equal(time_only(seq, np.random.default_rng(s))[0], seq[1]) for s in range(8)]
    assert 0 < sum(flipped) < 8


def test_jitter_changes_colour_and_crop_pads_small_frames():
    rng = np.random.default_rng(0)
    frames = np.random.default_rng(1).random((2, 16, 16, 3), dtype=np.float32)
    jittered = color_jitter(frames, JitterParams(brightness=0.5), rng)
    ratio = jittered.mean() / frames.mean()
    assert 0.5 <= ratio <= 1.5 and abs(ratio - 1) > 1e-3
    padded = random_crop(frames, CropParams(size=(20, 20)), rng)
    assert padded.shape == (2, 20, 20, 3) and padded[:, 0, 0].sum() == 0


def test_reconstruction_clips_stream_whole_clips_in_bounded_batches(original_root):
    clips = ReconstructionClips(open_clips(original_root, "test"), SIZE, batch_size=32)
    seen = {}
    for clip, batches in clips:
        shapes = [b.shape for b in batches]
        assert all(s[0] <= 32 and s[1:] == (3, 64, 64) for s in shapes)
        seen[clip] = sum(s[0] for s in shapes)
    assert seen == {"08": 150, "horse": 26}
    assert len(ReconstructionClips(open_clips(original_root, "test"), SIZE, num_videos=1)) == 1


def test_frame_strips_and_frames_honour_exif_orientation(tmp_path):
    """Frames are read with core.media.load_image: a strip stored rotated with an EXIF
    orientation tag (6: shown rotated 90 degrees clockwise) is read as shown, two square frames."""
    from PIL import Image
    shown = np.random.default_rng(0).integers(0, 256, size=(8, 16, 3), dtype=np.uint8)  # 2 frames of 8x8
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(shown, 1)))  # 16 tall, 8 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "train").mkdir()
    stored.save(tmp_path / "train" / "strip.png", exif=exif)
    store = open_clips(tmp_path, "train")
    assert store.num_frames("strip") == 2
    frames = store.read("strip", [0, 1])
    assert np.array_equal(frames[0], shown[:, :8]) and np.array_equal(frames[1], shown[:, 8:])
