"""Face-aware cropping of the source photo and the driving video (`--crop`).

The released face models (vox-256) were trained on square crops around the head with
margin (the original `crop-video.py` enlarges the detected box), so an uncropped photo or
a 16:9 video puts the face at the wrong scale. Modes:

- `auto`:   find the largest face (dlib HOG, core/faces.py) and crop a square around
            it, enlarged by `increase` on each side; a face must be found.
- `center`: the largest centred square of the frame (no detection).
- `none`:   the whole frame, resized to the model's input (aspect not kept), as the
            original demo does.

The driving video is cropped with ONE box for every frame: the union of the face boxes
detected on evenly sampled frames (outliers far from the median centre dropped), so the
crop does not jitter and the motion the model sees is the head's own.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import core.frames
from core.errors import UserError

logger = logging.getLogger(__name__)

CROP_MODES = ("auto", "center", "none")
MIN_SOURCE_SIDE = 32  # px: below this a photo holds no face to animate (and resizing only blurs)


def load_source(path: str | Path) -> np.ndarray:
    """The source photo as RGB uint8 (H, W, 3); UserError for a decompression bomb (PIL's
    pixel limit, about 179 Mpx) and for an image under MIN_SOURCE_SIDE px on a side."""
    from PIL import Image
    from core.media import load_image
    try:
        image = load_image(path)
    except Image.DecompressionBombError as err:
        raise UserError(f"--source {str(path)!r} is too large to decode safely ({err}); "
                        "expected a photo under 179 million pixels") from None
    height, width = image.shape[:2]
    if min(height, width) < MIN_SOURCE_SIDE:
        raise UserError(f"--source {str(path)!r} is {width}x{height} px; expected at least "
                        f"{MIN_SOURCE_SIDE}x{MIN_SOURCE_SIDE}")
    return image


@dataclass(frozen=True)
class CropBox:
    """Square crop (left, top, side) in the pixel coordinates of the frame it came from."""
    left: int
    top: int
    side: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) -> (side, side, 3); parts outside the frame are filled by edge pixels."""
        height, width = image.shape[:2]
        pad_l, pad_t = max(0, -self.left), max(0, -self.top)
        pad_r = max(0, self.left + self.side - width)
        pad_b = max(0, self.top + self.side - height)
        if pad_l or pad_t or pad_r or pad_b:
            image = np.pad(image, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)), mode="edge")
        top, left = self.top + pad_t, self.left + pad_l
        return image[top:top + self.side, left:left + self.side]


def square_around(box: np.ndarray, image_shape: tuple[int, ...], increase: float = 0.4) -> CropBox:
    """Square of side max(w, h) * (1 + 2 * increase) centred on `box` (l, t, r, b), shifted to
    stay inside the frame where it fits, and never larger than the frame's short side."""
    height, width = image_shape[:2]
    left, top, right, bottom = (float(v) for v in box)
    side = max(right - left, bottom - top) * (1 + 2 * increase)
    side = int(round(min(side, height, width)))
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    crop_left = int(round(centre_x - side / 2))
    crop_top = int(round(centre_y - side / 2))
    crop_left = min(max(crop_left, 0), width - side)
    crop_top = min(max(crop_top, 0), height - side)
    return CropBox(crop_left, crop_top, max(side, 1))


def center_box(image_shape: tuple[int, ...]) -> CropBox:
    height, width = image_shape[:2]
    side = min(height, width)
    return CropBox((width - side) // 2, (height - side) // 2, side)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (size[0], size[1], 3) uint8 with the animation pipeline's filter
    (core.frames.resize "bicubic-reduced": anti-aliased, fast on large photos and frames)."""
    return core.frames.resize(image, size, "bicubic-reduced")


def source_box(image: np.ndarray, mode: str, increase: float = 0.4, what: str = "source image"
               ) -> CropBox | None:
    """The crop of a still image for `mode`; None means the whole image."""
    if mode not in CROP_MODES:
        raise UserError(f"--crop {mode!r}: expected one of {list(CROP_MODES)}")
    if mode == "none":
        return None
    if mode == "center":
        return center_box(image.shape)
    from core import faces
    face = _largest_face_any_scale(image, faces)
    if face is None:
        raise UserError(f"no face found in the {what} with --crop auto; "
                        "use --crop center or --crop none for images without a face")
    return square_around(face, image.shape, increase)


def _largest_face_any_scale(image: np.ndarray, faces, max_side: int = 640) -> np.ndarray | None:
    """dlib's HOG detector on a copy at most `max_side` px (fast on 2048 px photos), with one
    upsampling pass when the face is small; the box is returned in `image`'s pixels."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    small = image if scale == 1.0 else resize(
        image, (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))))
    for upsample in (0, 1):
        box = faces.largest_face(small, upsample=upsample)
        if box is not None:
            return np.asarray(box, dtype=np.float64) / scale
    return None


def driving_box(frames, mode: str, increase: float = 0.4, what: str = "driving video"
                ) -> CropBox | None:
    """One crop for every frame of the driving video, from sampled frames (H, W, 3).

    `frames` is an iterable of already sampled frames (see `sample_frames`).
    """
    if mode not in CROP_MODES:
        raise UserError(f"--crop {mode!r}: expected one of {list(CROP_MODES)}")
    if mode == "none":
        return None
    frames = list(frames)
    if not frames:
        raise UserError(f"the {what} has no frames to crop")
    if mode == "center":
        return center_box(frames[0].shape)
    from core import faces

    # Driving videos are mostly head-and-shoulders: 400 px finds their faces at a third of the cost.
    boxes = [b for b in (_largest_face_any_scale(f, faces, 400) for f in frames) if b is not None]
    if not boxes:
        raise UserError(f"no face found in {len(frames)} sampled frames of the {what} with "
                        "--crop auto; use --crop center or --crop none")
    return square_around(union_of_consistent(np.stack(boxes)), frames[0].shape, increase)


def union_of_consistent(boxes: np.ndarray) -> np.ndarray:
    """Union (l, t, r, b) of the boxes (N, 4) whose centre lies within one median face size
    of the median centre: a stray detection elsewhere in the frame does not widen the crop."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2)
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])  # (N,)
    distance = np.abs(centres - np.median(centres, axis=0)).max(axis=1)
    kept = boxes[distance <= np.median(sizes)]
    if len(kept) < len(boxes):
        logger.info("crop: ignored %d of %d face detections far from the others",
                    len(boxes) - len(kept), len(boxes))
    return np.concatenate([kept[:, :2].min(axis=0), kept[:, 2:].max(axis=0)])


def sample_frames(path: str | Path, num_frames: int, count: int = 12, end: int | None = None,
                  seek_above: int = 300) -> list[np.ndarray]:
    """Up to `count` frames spread evenly over [0, end) of a video.

    Short videos are decoded in one pass (keeping only the sampled frames); above
    `seek_above` frames each sample is reached by seeking to the keyframe before it, so a
    10-minute video is not decoded whole just to place the crop.
    """
    from core.media import iter_frames
    total = num_frames if end is None else min(num_frames, end)
    indices = sorted(set(np.linspace(0, max(total - 1, 0), num=min(count, max(total, 1))).round().astype(int)))
    if total > seek_above:
        try:
            return _seek_frames(path, indices)
        except Exception as err:  # a container without an index: fall back to one pass
            logger.info("crop: seeking in %s failed (%s); decoding it whole", path, err)
    wanted = set(indices)
    return [frame for index, frame in enumerate(iter_frames(path, 0, total)) if index in wanted]


def _seek_frames(path: str | Path, indices: list[int]) -> list[np.ndarray]:
    """Frames at `indices` (by the stream's average rate) via keyframe seeks."""
    import av
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for index in indices:
            target = start + index / rate  # seconds
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is not None and frame.time >= target - 0.5 / rate:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    break
    if len(frames) != len(indices):
        raise RuntimeError(f"found {len(frames)} of {len(indices)} frames")
    return frames


def prepare(image: np.ndarray, box: CropBox | None, size: tuple[int, int]) -> np.ndarray:
    """Crop with `box` (None: whole frame) and resize to the model's input `size` (H, W)."""
    if box is not None:
        image = box.apply(image)
    return resize(image, size)


# --------------------------------------------------------------------------- paste-back
FEATHER = 0.08  # the soft edge of the paste-back mask, as a fraction of the box's side
MAX_OUTPUT_PIXELS = 8192 * 4320  # H.264's largest frame (level 6.2: 139,264 macroblocks of 16x16)


def wants_paste_back(option: bool | None, crop: str, image_shape: tuple[int, ...],
                     size: tuple[int, int], side_by_side: bool = False) -> bool:
    """`--paste-back` (True), `--no-paste-back` (False), or neither (None): on with
    `--crop auto` when the photo is larger than the model's input `size` (H, W). An output
    frame above MAX_OUTPUT_PIXELS (the photo, or its three panels side by side) is a UserError
    when asked for, and falls back to the crop (with a warning) by default."""
    if option is False:
        return False
    if option is None and not (crop == "auto" and (image_shape[0] > size[0] or image_shape[1] > size[1])):
        return False
    height, width = image_shape[:2]
    pixels = height * (2 * width + height if side_by_side else width)
    if pixels > MAX_OUTPUT_PIXELS:
        what = f"the {width}x{height} photo" + (" three panels wide" if side_by_side else "")
        if option:
            raise UserError(f"--paste-back: {what} makes {pixels / 1e6:.0f} Mpx frames, above the "
                            f"{MAX_OUTPUT_PIXELS / 1e6:.1f} Mpx h264 holds; expected a smaller photo or "
                            "--no-paste-back")
        logger.warning("paste-back: %s makes %.0f Mpx frames, above the %.1f Mpx h264 holds; writing the "
                       "square crop (resize the photo to paste back)", what, pixels / 1e6, MAX_OUTPUT_PIXELS / 1e6)
        return False
    return True


def cosine_ramp(length: int, feather: int, soft_start: bool, soft_end: bool) -> np.ndarray:
    """(length,) float32 weights: 1 inside, rising as a raised cosine from 0 at a soft end
    over `feather` px (pixel centres at i + 0.5, so the outermost pixel is nearly 0)."""
    ramp = np.ones(length, np.float32)
    if feather <= 0:
        return ramp
    centre = np.arange(length, dtype=np.float64) + 0.5
    rise = np.clip(centre / feather, 0, 1)
    if soft_start:
        ramp *= (0.5 - 0.5 * np.cos(np.pi * rise)).astype(np.float32)
    if soft_end:
        ramp *= (0.5 - 0.5 * np.cos(np.pi * rise[::-1])).astype(np.float32)
    return ramp


class PasteBack:
    """The animated crop composited back into the whole photo (`animate --paste-back`).

    The source was `box.apply(photo)` (a side x side square, None: the whole photo) resized to
    the model's input; a result is resized back to the box (PIL bicubic, core.frames.resize
    "bicubic-reduced", the pipeline's filter: bicubic when enlarging) and blended into the
    photo through a mask that is 1 inside the box and falls to 0 at the box's edges over
    FEATHER of its side (a raised cosine, separable in x and y, so its corners are round).
    Box edges on the photo's own border are not feathered (nothing lies beyond them). Every
    pixel outside the box, and every pixel where the mask is 0, is the photo's own.

    `even` (mp4 and live h264, whose yuv420p needs even sides): an odd side of the photo is
    padded by repeating its last row / column on the composite, so the output is at most one
    pixel larger than the photo and no encoder-added black line appears.
    """

    def __init__(self, photo: np.ndarray, box: CropBox | None, even: bool = False, feather: float = FEATHER):
        self.photo = np.ascontiguousarray(photo)
        height, width = photo.shape[:2]
        if box is None:
            box_left, box_top, box_w, box_h = 0, 0, width, height
        else:
            box_left, box_top, box_w, box_h = box.left, box.top, box.side, box.side
        self.box = (box_left, box_top, box_w, box_h)        # in photo pixels, may pass the border
        # the part of the box inside the photo: rows [top, bottom), columns [left, right)
        self.left, self.top = max(box_left, 0), max(box_top, 0)
        self.right, self.bottom = min(box_left + box_w, width), min(box_top + box_h, height)
        if self.right <= self.left or self.bottom <= self.top:
            raise UserError(f"paste-back: the crop box {self.box} lies outside the {width}x{height} photo")
        side = int(round(feather * max(box_w, box_h)))
        rows = cosine_ramp(self.bottom - self.top, side, self.top > 0, self.bottom < height)
        cols = cosine_ramp(self.right - self.left, side, self.left > 0, self.right < width)
        self.mask = (rows[:, None] * cols[None, :])[..., None]  # (h, w, 1) float32
        self.pad = (height % 2, width % 2) if even else (0, 0)
        if any(self.pad):
            logger.info("paste-back: the photo is %dx%d; h264 needs even sides, so the output is %dx%d "
                        "(its last row/column repeated)", width, height, width + self.pad[1], height + self.pad[0])
        self._region = self.photo[self.top:self.bottom, self.left:self.right].astype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the frames `__call__` returns."""
        return self.photo.shape[0] + self.pad[0], self.photo.shape[1] + self.pad[1]

    def place(self, result: np.ndarray) -> np.ndarray:
        """A result (h, w, 3) uint8 at the model's size, resized to the box and cut to the
        part of the box inside the photo."""
        box_left, box_top, box_w, box_h = self.box
        resized = resize(result, (box_h, box_w))
        return resized[self.top - box_top:self.bottom - box_top, self.left - box_left:self.right - box_left]

    def __call__(self, result: np.ndarray) -> np.ndarray:
        """The photo (H', W', 3) uint8 with `result` pasted into the box through the mask."""
        placed = self.place(result).astype(np.float32)
        blend = self._region + self.mask * (placed - self._region)
        frame = self.photo.copy()
        frame[self.top:self.bottom, self.left:self.right] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
        return self.even(frame)

    def even(self, frame: np.ndarray) -> np.ndarray:
        """`frame` padded to the output's even sides (its last row / column repeated)."""
        if not any(self.pad):
            return frame
        return np.pad(frame, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
