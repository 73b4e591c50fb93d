"""Training and reconstruction data from every layout the project meets.

Layouts, detected under `root` for a split (`train` or `test`):
- the prepared Parquet shards `<root>/shards/{split}-*.parquet` (one row per frame: clip,
  frame_index, png), indexed once by their (clip, frame_index) columns and read one row
  group at a time, so memory stays bounded whatever the dataset size; clips that
  `<root>/clips.parquet` marks other than `done` are left out;
- the prepared PNG folders `<root>/png/{split}/<clip>.mp4/<frame>.png` (earlier versions
  wrote `<root>/png/{split}/<clip>/`: read the same);
- the original repository's layout `<root>/{split}/<clip>/<frame>.png` (or a folder named
  `<clip>.mp4`, as load_videos.py writes it), `<clip>.mp4`, or `<clip>.png|.jpg` frame
  strips (frames side by side, as MGIF and Monkey-Net's sets).

Frames are sorted by the number in their name (`frame10.png` after `frame9.png`), clips
by name: splits come from the folders or shards, never from directory listing order.
Training items are two random frames of one clip (`FramePairs`); reconstruction reads
whole clips in bounded batches (`ReconstructionClips`).
"""
from __future__ import annotations

import io
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from core.config import DatasetParams
from core.errors import UserError
from core.frames import resize, to_tensor
from core.media import load_image
from fomm.augment import Augmentation

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".avi", ".webm", ".mkv")
SPLITS = ("train", "test")


def frame_sort_key(path: Path) -> tuple:
    """Numeric order of frame files named with or without zero padding (`frame10` > `frame9`)."""
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def identity_of(clip: str) -> str:
    """The identity a clip belongs to: its name before the first '#' (`id10001#vid#000010#000200`)."""
    return clip.split("#", 1)[0]


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    from core.media import rgb8
    with Image.open(io.BytesIO(data)) as image:
        return rgb8(image, "a shard frame")


# --------------------------------------------------------------------------- stores
class ClipStore:
    """A split's clips: names in a fixed order, frame counts, frames by index."""

    root: Path
    split: str
    clips: list[str]

    def num_frames(self, clip: str) -> int:
        raise NotImplementedError

    def read(self, clip: str, indices: Sequence[int]) -> np.ndarray:
        """Frames `indices` of `clip` as (N, H, W, 3) uint8."""
        raise NotImplementedError

    def iter_batches(self, clip: str, batch_size: int) -> Iterator[np.ndarray]:
        """All frames of `clip` in order, `batch_size` at a time, (n, H, W, 3) uint8."""
        total = self.num_frames(clip)
        for start in range(0, total, batch_size):
            yield self.read(clip, range(start, min(total, start + batch_size)))

    def fps(self, clip: str) -> float:
        return 25.0

    def __len__(self) -> int:
        return len(self.clips)


class FolderStore(ClipStore):
    """`<dir>/<clip>/<frame>.png` folders, `<clip>.mp4` videos, or `<clip>.png` frame strips."""

    def __init__(self, split_dir: Path, split: str):
        self.root, self.split = split_dir, split
        self.paths: dict[str, Path] = {}
        for path in sorted(split_dir.iterdir()):
            if path.name.startswith("."):
                continue  # half-written outputs (atomic temp files) and hidden files
            if path.is_dir():  # `<clip>.mp4/` (load_videos.py's frame folders) is clip <clip>
                name = path.name[:-4] if path.name.lower().endswith(".mp4") else path.name
            elif path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
                name = path.stem
            else:
                continue
            if name in self.paths:
                raise UserError(f"{str(split_dir)!r}: {self.paths[name].name!r} and {path.name!r} "
                                f"are both clip {name}; expected one folder or file per clip")
            self.paths[name] = path
        self.clips = sorted(self.paths)
        self._frame_files: dict[str, list[Path]] = {}
        self._decoded: OrderedDict[str, np.ndarray] = OrderedDict()

    def _files(self, clip: str) -> list[Path]:
        if clip not in self._frame_files:
            files = [p for p in self.paths[clip].iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
            if not files:
                raise UserError(f"clip folder {str(self.paths[clip])!r} holds no .png/.jpg frames")
            self._frame_files[clip] = sorted(files, key=frame_sort_key)
        return self._frame_files[clip]

    def _whole(self, clip: str) -> np.ndarray:
        """Decoded frames of a video or strip file; the last two are kept (pairs reread them)."""
        if clip not in self._decoded:
            path = self.paths[clip]
            if path.suffix.lower() in VIDEO_SUFFIXES:
                from core.media import read_frames
                frames = read_frames(path)
            else:
                strip = load_image(path)  # (H, T * W, 3), square frames side by side
                height = strip.shape[0]
                if strip.shape[1] % height:
                    raise UserError(f"{str(path)!r}: a frame strip must be N square frames wide, "
                                    f"got {strip.shape[1]}x{height}")
                frames = np.stack(np.split(strip, strip.shape[1] // height, axis=1))
            self._decoded[clip] = frames
            while len(self._decoded) > 2:
                self._decoded.popitem(last=False)
        return self._decoded[clip]

    def num_frames(self, clip: str) -> int:
        if self.paths[clip].is_dir():
            return len(self._files(clip))
        return len(self._whole(clip))

    def read(self, clip: str, indices: Sequence[int]) -> np.ndarray:
        if self.paths[clip].is_dir():
            files = self._files(clip)
            return np.stack([load_image(files[i]) for i in indices])
        return self._whole(clip)[list(indices)]

    def iter_batches(self, clip: str, batch_size: int) -> Iterator[np.ndarray]:
        path = self.paths[clip]
        if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
            yield from super().iter_batches(clip, batch_size)
            return
        from core.media import iter_frames  # stream long videos instead of decoding whole
        batch = []
        for frame in iter_frames(path):
            batch.append(frame)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    def fps(self, clip: str) -> float:
        path = self.paths[clip]
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:  # not a `<clip>.mp4/` frame folder
            from core.media import probe
            return float(probe(path).fps)
        return 25.0

    def __getstate__(self):  # DataLoader workers start with empty caches
        state = dict(self.__dict__)
        state["_decoded"] = OrderedDict()
        return state


class ParquetStore(ClipStore):
    """`<root>/shards/{split}-*.parquet`: frames found through a (clip, frame) index built
    once from the two small columns, then read a row group at a time. pipeline/shards
    writes groups of at most 8 frames of one clip, so a training pair reads at most two
    small groups; the last `CACHE_GROUPS` decoded groups are kept. `groups_read` and
    `bytes_read` (the png column chunks read) count the I/O, for tests and benchmarks."""

    CACHE_GROUPS = 16

    def __init__(self, root: Path, split: str, shard_paths: list[Path]):
        import pyarrow.parquet as pq
        self.root, self.split, self.shard_paths = root, split, shard_paths
        allowed = self._done_clips(root, split)
        # clip -> list of (frame_index, shard, row_group, row) sorted by frame_index
        index: dict[str, list[tuple[int, int, int, int]]] = {}
        for shard_id, path in enumerate(shard_paths):
            parquet = pq.ParquetFile(path)
            missing = {"clip", "frame_index", "png"} - set(parquet.schema_arrow.names)
            if missing:
                raise UserError(f"{str(path)!r} lacks columns {sorted(missing)}; expected clip, frame_index, png")
            table = parquet.read(columns=["clip", "frame_index"])
            clips = table.column("clip").to_pylist()
            frames = table.column("frame_index").to_pylist()
            position = 0
            for group in range(parquet.num_row_groups):
                for row in range(parquet.metadata.row_group(group).num_rows):
                    clip, frame = clips[position], frames[position]
                    position += 1
                    if allowed is None or clip in allowed:
                        index.setdefault(clip, []).append((int(frame), shard_id, group, row))
        self.index = {clip: sorted(rows) for clip, rows in index.items()}
        self.clips = sorted(self.index)
        self._fps = self._clip_fps(root)
        self._groups: OrderedDict[tuple[int, int], list] = OrderedDict()
        self._files: dict[int, object] = {}
        self.groups_read = 0
        self.bytes_read = 0

    @staticmethod
    def _done_clips(root: Path, split: str) -> set[str] | None:
        manifest = root / "clips.parquet"
        if not manifest.is_file():
            return None
        import pandas as pd
        table = pd.read_parquet(manifest, columns=["clip", "split", "status"])
        return set(table.loc[(table["status"] == "done") & (table["split"] == split), "clip"])

    @staticmethod
    def _clip_fps(root: Path) -> dict[str, float]:
        manifest = root / "clips.parquet"
        if not manifest.is_file():
            return {}
        import pandas as pd
        table = pd.read_parquet(manifest)
        if "fps" not in table:
            return {}
        return {c: float(f) for c, f in zip(table["clip"], table["fps"]) if f == f and f}

    def _file(self, shard: int):
        """Each shard opened (its footer parsed) once per process."""
        if shard not in self._files:
            import pyarrow.parquet as pq
            self._files[shard] = pq.ParquetFile(self.shard_paths[shard])
        return self._files[shard]

    def _group(self, shard: int, group: int) -> list:
        key = (shard, group)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        parquet = self._file(shard)
        pngs = parquet.read_row_group(group, columns=["png"]).column("png").to_pylist()
        self.groups_read += 1
        column = parquet.schema_arrow.get_field_index("png")
        self.bytes_read += parquet.metadata.row_group(group).column(column).total_compressed_size
        self._groups[key] = pngs
        while len(self._groups) > self.CACHE_GROUPS:
            self._groups.popitem(last=False)
        return pngs

    def num_frames(self, clip: str) -> int:
        return len(self.index[clip])

    def read(self, clip: str, indices: Sequence[int]) -> np.ndarray:
        rows = self.index[clip]
        out = []
        for i in indices:
            _, shard, group, row = rows[i]
            out.append(_decode_png(self._group(shard, group)[row]))
        return np.stack(out)

    def fps(self, clip: str) -> float:
        return self._fps.get(clip, 25.0)

    def __getstate__(self):  # DataLoader workers open their own files, start with empty caches
        state = dict(self.__dict__)
        state["_groups"] = OrderedDict()
        state["_files"] = {}
        return state


def open_clips(root: str | Path, split: str) -> ClipStore:
    """The clips of `split` under `root`, in whichever layout `root` holds (module docstring)."""
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of {list(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory {str(root)!r} does not exist")
    shards = sorted((root / "shards").glob(f"{split}-*.parquet"))
    if shards:
        store: ClipStore = ParquetStore(root, split, shards)
    elif (root / "png" / split).is_dir():
        store = FolderStore(root / "png" / split, split)
    elif (root / split).is_dir():
        store = FolderStore(root / split, split)
    else:
        raise UserError(
            f"{str(root)!r} holds no {split!r} data; expected shards/{split}-*.parquet, "
            f"png/{split}/<clip>.mp4/ or {split}/<clip>/ (frames) or {split}/<clip>.mp4")
    if not store.clips:
        raise UserError(f"{str(root)!r}: the {split!r} split has no clips")
    log.info("%s %s: %d clips (%s)", root, split, len(store.clips), type(store).__name__)
    return store


# --------------------------------------------------------------------------- training pairs
class FramePairs(Dataset):
    """Two random frames of one clip, augmented together (the original FramesDataset with
    `DatasetRepeater`).

    With `id_sampling` an item is an identity (clip name before the first '#'), and the
    clip is drawn among that identity's clips, so identities with many clips are not
    over-represented. The dataset is `num_repeats` copies of the items. An item key is
    `(index, seed)`: all randomness of the item comes from `seed`, so the pair does not
    depend on which worker loads it or how many workers there are.
    """

    def __init__(self, store: ClipStore, params: DatasetParams, num_repeats: int = 1, augment: bool = True):
        self.store = store
        self.frame_size = tuple(params.frame_shape[:2])
        self.augmentation = Augmentation(params.augmentation_params if augment else None)
        if params.id_sampling:
            groups: dict[str, list[str]] = {}
            for clip in store.clips:
                groups.setdefault(identity_of(clip), []).append(clip)
            self.items = [groups[key] for key in sorted(groups)]
        else:
            self.items = [[clip] for clip in store.clips]
        if num_repeats < 1:
            raise UserError(f"num_repeats must be at least 1, got {num_repeats}")
        self.num_repeats = num_repeats

    def __len__(self) -> int:
        return self.num_repeats * len(self.items)

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng(seed)
        group = self.items[index % len(self.items)]
        clip = group[int(rng.integers(len(group)))]
        num_frames = self.store.num_frames(clip)
        # As the original: two frames drawn with replacement, in time order (time flip may swap).
        chosen = np.sort(rng.choice(num_frames, size=2, replace=True))
        frames = resize(self.store.read(clip, chosen.tolist()), self.frame_size)
        frames = self.augmentation(frames.astype(np.float32) / 255.0, rng)
        frames = resize(frames, self.frame_size)  # crop/resize augmentations may change size
        tensor = to_tensor(frames)  # (2, 3, H, W)
        return {"source": tensor[0], "driving": tensor[1], "name": clip}


class EpochSampler(Sampler):
    """Item keys `(index, seed)` for one epoch: a permutation and per-item seeds drawn from
    `(seed, epoch)` alone, this rank's share `rank::world_size`, from `start` on.

    Its whole state is (epoch, start): a resumed run rebuilds it exactly. The permutation
    and the seeds do not depend on `world_size`, so N workers see the same pairs as one
    process, split between them.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1):
        self.length, self.seed = length, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw, and how many of this rank's keys to skip (resuming mid-epoch)."""
        self.epoch, self.start = epoch, start

    def keys(self) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.length)
        seeds = rng.integers(0, 2**63 - 1, size=self.length)
        usable = self.length - self.length % self.world_size  # equal shares, as DistributedSampler drops
        mine = range(self.rank, usable, self.world_size)
        return [(int(order[i]), int(seeds[i])) for i in mine][self.start:]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return max(0, self.length // self.world_size - self.start)


def collate_pairs(items: list[dict]) -> dict:
    return {"source": torch.stack([i["source"] for i in items]),
            "driving": torch.stack([i["driving"] for i in items]),
            "name": [i["name"] for i in items]}


# --------------------------------------------------------------------------- reconstruction
class ReconstructionClips:
    """Whole clips of a split for the paper's reconstruction protocol, in name order.

    Iterating yields `(clip, batches)` where `batches` streams the clip's frames as
    (n, 3, H, W) float tensors at the config's frame size, `batch_size` at a time.
    """

    def __init__(self, store: ClipStore, frame_shape: Sequence[int], batch_size: int = 16,
                 num_videos: int | None = None):
        self.store = store
        self.frame_size = tuple(frame_shape[:2])
        self.batch_size = batch_size
        if num_videos is not None and num_videos < 1:  # 0 must not quietly mean "all"
            raise UserError(f"num_videos must be a positive number of clips or unset (all), "
                            f"got {num_videos}")
        self.clips = list(store.clips) if num_videos is None else store.clips[:num_videos]

    def __len__(self) -> int:
        return len(self.clips)

    def frames(self, clip: str) -> Iterator[torch.Tensor]:
        for batch in self.store.iter_batches(clip, self.batch_size):
            yield to_tensor(resize(batch, self.frame_size))

    def __iter__(self) -> Iterator[tuple[str, Iterator[torch.Tensor]]]:
        for clip in self.clips:
            yield clip, self.frames(clip)
