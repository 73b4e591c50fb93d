"""Paste-back (`animate --paste-back`, the default with --crop auto on a photo larger than the
model's input): the animated crop composited into the whole photo through a feathered mask.

The end-to-end test puts a real portrait into a 2x larger canvas of a real photo (an animal
picture from ../shared/data), animates it with the tiny FOMM and decodes the mp4: the frames
have the canvas's size, and away from the crop box they are the canvas, watermarked as every
output frame is, within h264's noise at the writer's CRF 18. That noise, measured on this
textured photo, is a per-frame mean of 1.7/255 (yuv420p chroma subsampling included); the
test allows 2.5/255 per frame (the brief asked for about 2/255; the fur of this photo is
harder to encode than a flat background) and 8/255 at the 99th percentile.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from core.frames import to_tensor
from core.media import ffmpeg_exe, load_image, probe, read_frames
from fomm import source_crop
from fomm.animation import animate
from fomm.animation import AnimateOptions, Animator
from fomm.config import load_config
from stages import cli

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def canvas(shared_data, tmp_path_factory):
    """happy.png (256 px) inside a 512 px real photo (other/animals/s33.jpg), and its path."""
    image = load_image(shared_data / "other/animals/s33.jpg").copy()
    image[128:384, 200:456] = load_image(shared_data / "faces/sadtalker/happy.png")
    path = tmp_path_factory.mktemp("canvas") / "canvas.png"
    Image.fromarray(image).save(path)
    return image, path


@pytest.fixture(scope="module")
def driving(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clips") / "d12.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(shared_data / "faces/liveportrait/d12.mp4"),
                    "-frames:v", "6", "-c:v", "libx264", "-an", str(out)], check=True)
    return out


def outside(shape, box, margin: int) -> np.ndarray:
    """(H, W) bool: pixels more than `margin` px outside the square `box`."""
    mask = np.ones(shape[:2], bool)
    mask[max(0, box.top - margin):box.top + box.side + margin, max(0, box.left - margin):box.left + box.side + margin] = False
    return mask


# --------------------------------------------------------------------------- geometry
def test_geometry_keeps_the_photo_outside_and_the_result_inside():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (301, 403, 3), dtype=np.uint8)   # odd sides
    box = source_crop.CropBox(100, 50, 150)
    paste = source_crop.PasteBack(photo, box, even=True)
    result = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    frame = paste(result)
    assert paste.shape == frame.shape[:2] == (302, 404)            # h264: one row and column more
    np.testing.assert_array_equal(frame[:301, :403][outside(photo.shape, box, 0)], photo[outside(photo.shape, box, 0)])
    np.testing.assert_array_equal(frame[301, :403], frame[300, :403])  # the padding repeats the last row
    np.testing.assert_array_equal(frame[:301, 403], frame[:301, 402])
    inside = frame[50:200, 100:250]
    resized = source_crop.resize(result, (150, 150))
    full = paste.mask[..., 0] == 1.0
    assert full.mean() > 0.6 and paste.mask.min() < 1e-3
    np.testing.assert_array_equal(inside[full], resized[full])     # the result where the mask is 1
    ramp = paste.mask[75, :, 0]                                      # rises from the edge, then flat
    assert np.all(np.diff(ramp[:75]) >= 0) and ramp[0] < 0.01 and ramp[75] == 1.0
    assert round(source_crop.FEATHER * 150) == int(np.argmax(ramp == 1.0))  # the feather's width
    blend = np.abs(inside.astype(float) - (photo[50:200, 100:250] * (1 - paste.mask) + resized * paste.mask))
    assert blend.max() <= 0.5 + 1e-6                                 # one rounding


def test_box_on_the_photo_border_is_not_feathered_and_crop_none_resizes():
    photo = np.full((120, 200, 3), 40, np.uint8)
    paste = source_crop.PasteBack(photo, source_crop.CropBox(0, 0, 120))  # touches left, top, bottom
    assert paste.mask[:, 0].min() == 1.0 and paste.mask[0, :100].min() == 1.0 and paste.mask[-1, :100].min() == 1.0
    assert paste.mask[60, -1, 0] < 0.01                              # the right edge is inside the photo
    whole = source_crop.PasteBack(photo, None)                       # --crop none --paste-back
    assert whole.mask.min() == 1.0
    np.testing.assert_array_equal(whole(np.full((64, 64, 3), 200, np.uint8)), np.full((120, 200, 3), 200, np.uint8))


def test_the_default_rule():
    big, small, model = (512, 512, 3), (64, 64, 3), (64, 64)
    assert source_crop.wants_paste_back(None, "auto", big, model)
    assert not source_crop.wants_paste_back(None, "auto", small, model)
    assert not source_crop.wants_paste_back(None, "center", big, model)
    assert not source_crop.wants_paste_back(False, "auto", big, model)
    assert source_crop.wants_paste_back(True, "none", small, model)
    huge = (6000, 8000, 3)                                             # 48 Mpx: above what h264 holds
    assert not source_crop.wants_paste_back(None, "auto", huge, model)  # the default falls back to the crop
    with pytest.raises(UserError, match=r"--paste-back: the 8000x6000 photo makes 48 Mpx frames"):
        source_crop.wants_paste_back(True, "auto", huge, model)
    assert source_crop.wants_paste_back(True, "auto", (3024, 4032, 3), model)  # a 12 Mpx phone photo
    assert not source_crop.wants_paste_back(None, "auto", (4000, 6000, 3), model, side_by_side=True)  # 64 Mpx
    from stages.animate import options_from_args
    base = ["run", "animate", "--config", "tiny", "--source", "s.png", "--driving", "d.mp4", "--out", "o.mp4"]
    config = load_config("tiny")

    def parsed(*extra):
        return options_from_args(cli.build_parser("animate").parse_args(base + list(extra)), config)
    assert parsed().paste_back is None
    assert parsed("--paste-back").paste_back is True and parsed("--no-paste-back").paste_back is False


@pytest.mark.parametrize("config_name", ["tiny", "monkey-net-tiny"])
def test_side_by_side_panels_with_paste_back(config_name, shared_data):
    """Any family (paste-back comes after generation): photo | driving at the photo's height |
    result photo, with keypoints drawn on all three."""
    from fomm.registry import build_model
    config = load_config(config_name)
    torch.manual_seed(0)
    model = build_model(config).eval()
    photo = load_image(shared_data / "faces/sadtalker/people_0.png")[:473, :471]  # odd sides
    box = source_crop.CropBox(100, 60, 250)
    source = source_crop.prepare(photo, box, (64, 64))
    frames = [source_crop.prepare(f, None, (64, 64)) for f in
              read_frames(shared_data / "faces/liveportrait/d12.mp4", 0, 2)]
    paste = source_crop.PasteBack(photo, box, even=True)
    animator = Animator(model, to_tensor(source, CPU), to_tensor(frames[0], CPU),
                        AnimateOptions(layout="side-by-side", show_keypoints=True), CPU, paste_back=paste)
    out = list(animator.animate(frames))
    assert animator.frame_shape == (474, 2 * 472 + 474) and out[0].shape == (474, 2 * 472 + 474, 3)
    drive = np.abs(out[0][:, 472:946].astype(float) - source_crop.resize(frames[0], (474, 474))).max(axis=-1)
    assert (drive == 0).mean() > 0.8                                   # the driving frame, but where keypoints are
    away = outside(paste.shape, box, 1)
    assert np.array_equal(out[1][:, 946:][away], paste.even(photo)[away])  # the result panel is the photo there


# --------------------------------------------------------------------------- end to end
def test_paste_back_into_a_larger_canvas(model, config, canvas, driving, tmp_path):
    image, path = canvas
    out = tmp_path / "whole.mp4"
    result = animate(model, config, path, driving, out, AnimateOptions(crop="auto", max_frames=6))  # the default
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (512, 512, 6) and result.frame_size == (512, 512)
    frames = read_frames(out).astype(np.float32)
    box = source_crop.source_box(image, "auto")
    assert 0 < box.side < 384                                         # a crop around the face, not the canvas
    away = outside(image.shape, box, 16)                              # h264 blocks near the box may differ
    from core import provenance
    generation = provenance.generation_or_warn(True, config, driving.name, out.name)
    marked = generation.marker()(image).astype(np.float32)            # the canvas as the output marks it
    error = np.abs(frames - marked)[:, away]                          # (T, N, 3)
    assert error.reshape(len(frames), -1).mean(axis=1).max() <= 2.5
    assert np.percentile(error, 99) <= 8
    inside = frames[:, box.top + box.side // 4:box.top + 3 * box.side // 4, box.left + box.side // 4:
                    box.left + 3 * box.side // 4]
    assert np.abs(inside - image[box.top + box.side // 4:box.top + 3 * box.side // 4,
                                 box.left + box.side // 4:box.left + 3 * box.side // 4]).mean() > 10  # animated
    # the marks cover the whole frame: the watermark reads from the canvas's cells outside the crop alone
    from core.watermark import GRID, decode, evidence, grid_means, v_plane
    shown = read_frames(out, 0, 6)
    height, width = shown.shape[1:3]
    top, left = np.arange(GRID) * height / GRID, np.arange(GRID) * width / GRID
    rows_out = (top + height / GRID <= box.top) | (top >= box.top + box.side)
    cols_out = (left + width / GRID <= box.left) | (left >= box.left + box.side)
    cells = rows_out[:, None] | cols_out[None, :]
    assert 0 < cells.mean() < 1
    assert decode(sum(evidence(grid_means(v_plane(frame)), cells) for frame in shown)).detected
    from pipeline.verify import verify_file
    verdict = verify_file(out)
    assert verdict.c2pa.state == "valid" and verdict.watermark.frames_with_tag == 6


def test_no_paste_back_writes_the_square_crop(model, config, canvas, driving, tmp_path):
    out = tmp_path / "crop.mp4"
    assert cli.main(["run", "animate", "--config", "tiny", "--random-weights", "--source", str(canvas[1]),
                     "--driving", str(driving), "--out", str(out), "--device", "cpu", "--crop", "auto",
                     "--no-paste-back", "--max-frames", "2", "--no-provenance"]) == 0
    info = probe(out)
    assert (info.width, info.height) == (64, 64)


def test_stream_pastes_back_and_smooths_as_file_mode_does(model, config, shared_data, tmp_path):
    """--stream with --crop center --paste-back --smooth gives file mode's frames (the photo is
    still, so the live path pastes back the same way; the filter sees the same frames in order)."""
    from fomm import stream
    photo = np.full((320, 384, 3), (30, 120, 200), np.uint8)               # a flat colour canvas, 1.25:1
    photo[32:288, 64:320] = load_image(shared_data / "faces/sadtalker/happy.png")
    source = tmp_path / "photo.png"
    Image.fromarray(photo).save(source)
    driving = tmp_path / "d12-rgb.mkv"                                     # RGB at the model's size: both
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i",       # decoders hand over its pixels
                    str(shared_data / "faces/liveportrait/d12.mp4"), "-frames:v", "6", "-an", "-vf", "scale=64:64",
                    "-c:v", "png", str(driving)], check=True)
    options = AnimateOptions(batch_size=1, crop="center", paste_back=True, smooth=True, provenance=False)
    animate(model, config, source, driving, tmp_path / "file.mp4", options)
    report = stream.run_stream(model, config, source, str(driving), tmp_path / "live.mp4", options, drop=False)
    assert report.frames_out == 6
    from_file, live = read_frames(tmp_path / "file.mp4"), read_frames(tmp_path / "live.mp4")
    assert from_file.shape == (6, 320, 384, 3)
    np.testing.assert_array_equal(live, from_file)
    box = source_crop.center_box(photo.shape)                               # columns 32..351 animated
    beside = slice(0, box.left - 8)
    assert np.abs(from_file[:, :, beside].astype(float) - photo[:, beside]).mean() < 2  # the canvas beside it
