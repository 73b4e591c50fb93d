"""The built-in `sample` dataset: real photographs from `skimage.data`, each moved by a
smooth random affine plus thin-plate-spline motion, with the ground-truth motion saved.

No network, fully deterministic (seeded per clip). Every frame t is rendered as

    frame_t(z) = photo(T_t(z)),   T_t(z) = A_t z + b_t + sum_k w_k(t) U(|z - c_k|),

with U(r) = r^2 log r^2 the thin-plate kernel on a 5x5 grid of control points c_k (the
same random transform family as FOMM's equivariance loss, Sec. 3.3) and T_0 = identity,
so frame 0 is the photo itself. `T_t` is the backward map the models predict: for each
pixel z of frame t (normalised (x, y) in [-1, 1], pixel centres, align_corners=False), the
point of frame 0 it came from. It is stored, sampled on a 64x64 grid whatever the frame
size, as `truth/{split}/<clip>.npz: backward_grid (T, 64, 64, 2) float32`, so that
`frame_t ~= grid_sample(frame_0, backward_grid[t])` where the grid stays inside [-1, 1];
outside frame 0's field of view the frames show more of the real photograph.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TRUTH_GRID = 64          # the ground-truth grid is always 64x64 (dense-motion resolution)
VIEW_FRACTION = 0.8      # frame 0 shows the central 80 % of the photo's square region
SUPERSAMPLE = 2          # render at 2x and average 2x2 blocks: anti-aliased frames
FPS = 25.0               # nominal frame rate, for whoever writes the clips as videos


@dataclass(frozen=True)
class Photo:
    """A skimage.data photograph and the square region (left, top, side) a clip is cut from."""
    name: str
    kind: str            # "face" or "object"
    region: tuple[int, int, int]


# Faces first: identity metrics downstream want faces in the test split.
PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "face", (70, 0, 320)),
    Photo("camera", "face", (120, 0, 300)),
    Photo("chelsea", "face", (110, 0, 300)),
    Photo("coffee", "object", (100, 0, 400)),
    Photo("rocket", "object", (110, 0, 427)),
    Photo("coins", "object", (40, 0, 303)),
    Photo("clock", "object", (50, 0, 300)),
    Photo("immunohistochemistry", "object", (0, 0, 512)),
)


@dataclass(frozen=True)
class SampleClip:
    """One clip of the sample dataset: which photo, which motion seed, which split."""
    name: str
    photo: Photo
    seed: int
    split: str
    num_frames: int
    size: int


def sample_clips(num_train: int = 8, num_test: int = 4, num_frames: int = 32,
                 size: int = 64) -> list[SampleClip]:
    """The fixed clip list: train clips cycle over all photos, test clips over the faces
    first, each with its own motion seed (test motions are never seen in training)."""
    clips = []
    for split, count, offset in (("train", num_train, 0), ("test", num_test, 1000)):
        for index in range(count):
            photo = PHOTOS[index % len(PHOTOS)]
            seed = offset + index
            video_id = f"{photo.name}-m{seed:04d}"
            name = f"{photo.name}#{video_id}#{0:06d}#{num_frames:06d}"
            clips.append(SampleClip(name, photo, seed, split, num_frames, size))
    return clips


def _photo_canvas(photo: Photo, pixels: int) -> np.ndarray:
    """The photo's square region as float RGB in [0, 1], resized (anti-aliased) to `pixels`."""
    import skimage.data
    from skimage.color import gray2rgb
    from skimage.transform import resize
    image = getattr(skimage.data, photo.name)()
    if image.ndim == 2:
        image = gray2rgb(image)
    left, top, side = photo.region
    square = image[top:top + side, left:left + side, :3]
    if square.shape[0] != side or square.shape[1] != side:
        raise ValueError(f"region {photo.region} of {photo.name} {image.shape} is not a full square")
    return resize(square.astype(np.float32) / 255.0, (pixels, pixels), order=1,
                  anti_aliasing=True, preserve_range=True)  # (P, P, 3)


def _pixel_centres(size: int) -> np.ndarray:
    """Normalised pixel-centre coordinates (align_corners=False): (size, size, 2) as (x, y)."""
    axis = (2 * np.arange(size) + 1) / size - 1
    x, y = np.meshgrid(axis, axis)
    return np.stack([x, y], axis=-1)


def _smooth_curves(rng: np.random.Generator, count: int, num_frames: int) -> np.ndarray:
    """`count` smooth curves over time, zero at t=0, roughly in [-1, 1]: (T, count)."""
    t = np.arange(num_frames)[:, None] / max(num_frames - 1, 1)
    curves = np.zeros((num_frames, count))
    for _ in range(2):  # two random sinusoids per curve
        freq = rng.uniform(0.3, 1.2, count)
        phase = rng.uniform(0, 2 * np.pi, count)
        amp = rng.uniform(0.4, 0.7, count)
        curves += amp * (np.sin(2 * np.pi * freq * t + phase) - np.sin(phase))
    return curves / 1.4


class Motion:
    """The random backward map T_t of one clip (see the module docstring)."""

    def __init__(self, seed: int, num_frames: int):
        rng = np.random.default_rng(seed)
        curves = _smooth_curves(rng, 6 + 2 * 25, num_frames)
        self.angle = np.deg2rad(12) * curves[:, 0]                 # (T,)
        self.scale = 1 + 0.10 * curves[:, 1:3]                     # (T, 2)
        self.shear = 0.05 * curves[:, 3]                           # (T,)
        self.shift = 0.12 * curves[:, 4:6]                         # (T, 2)
        self.tps_weights = 0.006 * curves[:, 6:].reshape(num_frames, 25, 2)  # (T, 25, 2)
        axis = np.linspace(-1, 1, 5)
        cx, cy = np.meshgrid(axis, axis)
        self.controls = np.stack([cx.ravel(), cy.ravel()], axis=-1)  # (25, 2)

    def __call__(self, t: int, points: np.ndarray) -> np.ndarray:
        """Frame-0 coordinates of frame-t points (..., 2) -> (..., 2)."""
        cos, sin = np.cos(self.angle[t]), np.sin(self.angle[t])
        rotation = np.array([[cos, -sin], [sin, cos]])
        shape = np.array([[self.scale[t, 0], self.shear[t]], [0.0, self.scale[t, 1]]])
        affine = points @ (rotation @ shape).T + self.shift[t]
        dist2 = ((points[..., None, :] - self.controls) ** 2).sum(-1)   # (..., 25)
        kernel = dist2 * np.log(dist2 + 1e-9)
        return affine + kernel @ self.tps_weights[t]


def _sample_bilinear(canvas: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear samples of `canvas` (P, P, 3) at normalised canvas coords (..., 2), edge-clamped."""
    from scipy.ndimage import map_coordinates
    pixels = canvas.shape[0]
    col = (coords[..., 0] + 1) * pixels / 2 - 0.5
    row = (coords[..., 1] + 1) * pixels / 2 - 0.5
    return np.stack([map_coordinates(canvas[..., c], [row, col], order=1, mode="nearest")
                     for c in range(3)], axis=-1)


def render_clip(clip: SampleClip) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, S, S, 3) uint8 and backward_grid (T, 64, 64, 2) float32 of one clip."""
    fine = clip.size * SUPERSAMPLE
    margin = 1 / VIEW_FRACTION                     # the canvas spans [-margin, margin]
    canvas = _photo_canvas(clip.photo, int(round(fine * margin)))
    motion = Motion(clip.seed, clip.num_frames)
    fine_grid, truth_grid = _pixel_centres(fine), _pixel_centres(TRUTH_GRID)
    frames = np.empty((clip.num_frames, clip.size, clip.size, 3), np.uint8)
    truth = np.empty((clip.num_frames, TRUTH_GRID, TRUTH_GRID, 2), np.float32)
    for t in range(clip.num_frames):
        source = motion(t, fine_grid) / margin    # frame-0 coords -> canvas coords
        image = _sample_bilinear(canvas, source)  # (2S, 2S, 3)
        image = image.reshape(clip.size, SUPERSAMPLE, clip.size, SUPERSAMPLE, 3).mean((1, 3))
        frames[t] = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
        truth[t] = motion(t, truth_grid)
    return frames, truth


def write_truth(path: Path, backward_grid: np.ndarray, clip: SampleClip) -> None:
    """Save the ground truth atomically (np.savez to a temp name, then rename)."""
    from core.media import atomic_path
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, backward_grid=backward_grid, seed=np.int64(clip.seed),
                     size=np.int64(clip.size), photo=np.array(clip.photo.name))


def prepare_clip(clip: SampleClip, out: Path, settings_key: str | None = None) -> dict:
    """Render one clip into the prepared layout: PNG folder published whole, truth saved
    first, then the clip's result row recorded (with `settings_key`, the digest of the
    settings it was made with). Same output when run twice. A disk error is a failed row;
    anything else is a bug and propagates (the driver logs its traceback)."""
    import time
    from PIL import Image
    from pipeline import clips as clips_mod
    began = time.perf_counter()
    facts = clips_mod.Clip(clip.name, clip.name.split("#")[1], clip.photo.name, clip.split,
                           0, clip.num_frames, FPS, None, clip.size, clip.size)
    staging = None
    try:
        frames, backward_grid = render_clip(clip)
        write_truth(Path(out) / "truth" / clip.split / f"{clip.name}.npz", backward_grid, clip)
        staging = clips_mod.staging_dir(out, clip.split, clip.name)
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(staging / clips_mod.frame_name(index), format="PNG",
                                        compress_level=6)
        final = clips_mod.clip_dir(out, clip.split, clip.name)
        clips_mod.publish_dir(staging, final)
        row = clips_mod.result_row(facts, status="done", num_frames=len(frames),
                                   bytes=clips_mod.folder_bytes(final), source="skimage.data",
                                   frames_fps=FPS, size=clip.size, settings_key=settings_key,
                                   crop_s=time.perf_counter() - began,
                                   total_s=time.perf_counter() - began)
    except OSError as err:  # disk full, permissions: this clip fails, the run goes on
        log.error("sample clip %s failed: %s", clip.name, err)
        row = clips_mod.result_row(facts, status="failed", error=f"{type(err).__name__}: {err}",
                                   settings_key=settings_key, total_s=time.perf_counter() - began)
    finally:
        if staging is not None and staging.exists():
            import shutil
            shutil.rmtree(staging, ignore_errors=True)
    clips_mod.write_row(out, row)
    return row
