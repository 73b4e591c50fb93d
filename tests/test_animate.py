"""Animation end to end on real media (../shared/data) with the tiny FOMM (64x64).

The "small model" is configs/tiny.yaml built with a fixed seed and saved as a
checkpoint_state() dict, the layout of a released checkpoint; its outputs are not faces,
so the tests check what animate owns: timing, audio, layout, inputs and motion transfer.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from core.frames import to_tensor, to_uint8
from core.media import audio_offset, ffmpeg_exe, iter_frames, load_image, probe, read_frames
from fomm import source_crop
from fomm.animation import animate
from fomm.animation import AnimateOptions, Animator
from fomm.best_frame import find_best_frame
from fomm.config import load_config
from stages import cli

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- fixtures
def trim(src: Path, dst: Path, frames: int, *extra: str) -> Path:
    """First `frames` video frames of `src` (audio kept whole unless `extra` says otherwise)."""
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-frames:v", str(frames),
                    *extra, str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def talking(shared_data, tmp_path_factory):
    """24 frames of talkinghead_3: its video starts 7.3 s after its audio, which is longer."""
    return trim(shared_data / "faces/animateanyone/talkinghead_3.mp4",
                tmp_path_factory.mktemp("clips") / "talking.mp4", 24, "-c:v", "libx264", "-c:a", "aac")


@pytest.fixture(scope="module")
def d12_short(shared_data, tmp_path_factory):
    return trim(shared_data / "faces/liveportrait/d12.mp4",
                tmp_path_factory.mktemp("clips") / "d12.mp4", 30, "-c:v", "libx264", "-an")


def run_cli(config_name, checkpoint, source, driving, out, *extra) -> int:
    return cli.main(["run", "animate", "--config", config_name, "--checkpoint", str(checkpoint),
                     "--source", str(source), "--driving", str(driving), "--out", str(out),
                     "--device", "cpu", *extra])


def mono_audio(path: Path, rate: int = 16000) -> np.ndarray:
    """The first audio stream as mono float32 at `rate` Hz, from the file's time zero."""
    import av
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks)


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    """Max normalised correlation of equal-length `a` against `b` shifted by up to max_lag."""
    best = -1.0
    for lag in range(0, max_lag + 1):
        segment = b[lag:lag + len(a)]
        if len(segment) < len(a):
            break
        denominator = np.linalg.norm(a) * np.linalg.norm(segment) + 1e-9
        best = max(best, float(np.dot(a, segment) / denominator))
    return best


# --------------------------------------------------------------------------- timing and audio
@pytest.fixture(scope="module")
def talking_out(talking, checkpoint, tmp_path_factory, shared_data):
    """The CLI's output for the talking clip (shared by the timing and audio tests)."""
    out = tmp_path_factory.mktemp("talking") / "out.mp4"
    source = shared_data / "faces/sadtalker/happy.png"
    assert run_cli("tiny", checkpoint, source, talking, out, "--batch-size", "5") == 0
    return out


def test_output_has_driving_fps_frame_count_and_audio(talking, talking_out):
    driving, result = probe(talking), probe(talking_out)
    decoded = sum(1 for _ in iter_frames(talking))
    assert result.num_frames == driving.num_frames == decoded == 24
    assert result.fps == pytest.approx(driving.fps, abs=1e-3)  # 29.97 (30000/1001)
    # The driving's audio runs 8 s past its 24 frames and starts 7.3 s before them: the
    # audio that belongs with the output is the part played alongside those frames, so
    # "within 0.1 s of the driving's" compares with the driving's audio inside the video's
    # time span, min(audio left after the video's start, video duration).
    offset = audio_offset(talking)
    assert offset > 7.0 and driving.audio_duration > driving.duration + 1
    expected = min(driving.audio_duration - offset, driving.num_frames / driving.fps)
    assert result.has_audio
    assert abs(result.audio_duration - expected) < 0.1
    assert abs(result.audio_duration - result.duration) < 0.1


def test_audio_is_the_segment_heard_with_the_video(talking, talking_out):
    rate = 16000
    heard = mono_audio(talking_out, rate)[: rate // 2]  # (8000,) the first half second
    driving_audio = mono_audio(talking, rate)
    start = int(round(audio_offset(talking) * rate))
    synced = best_correlation(heard, driving_audio[start - 800:], 1600)  # within +-50 ms
    unsynced = best_correlation(heard, driving_audio, 1600)  # the audio from time zero
    assert synced > 0.9 > unsynced + 0.3


def test_no_audio_flag_drops_audio(talking, checkpoint, tmp_path, shared_data):
    out = tmp_path / "silent.mp4"
    assert run_cli("tiny", checkpoint, shared_data / "faces/sadtalker/happy.png", talking, out,
                   "--no-audio", "--max-frames", "6") == 0
    info = probe(out)
    assert not info.has_audio and info.num_frames == 6


def test_gif_output(d12_short, checkpoint, tmp_path, shared_data):
    out = tmp_path / "out.gif"
    assert run_cli("tiny", checkpoint, shared_data / "faces/sadtalker/happy.png", d12_short, out,
                   "--max-frames", "7") == 0
    info = probe(out)
    assert info.codec == "gif" and info.num_frames == 7 and (info.width, info.height) == (64, 64)


# --------------------------------------------------------------------------- layout
def test_side_by_side_has_source_driving_result_panels(model, config, d12_short, tmp_path, shared_data):
    source_path = shared_data / "faces/sadtalker/happy.png"
    out = tmp_path / "sbs.mp4"
    animate(model, config, source_path, d12_short, out,
            AnimateOptions(layout="side-by-side", max_frames=4, batch_size=4))
    frames = read_frames(out).astype(np.float32)  # (4, 64, 192, 3)
    assert frames.shape == (4, 64, 192, 3)
    source = source_crop.prepare(load_image(source_path), None, (64, 64))
    driving = [source_crop.prepare(f, None, (64, 64)) for f in iter_frames(d12_short, 0, 4)]
    animator = Animator(model, to_tensor(source, CPU), to_tensor(driving[0], CPU), AnimateOptions(), CPU)
    results = to_uint8(animator(to_tensor(driving, CPU))["prediction"])
    panels = [frames[:, :, :64], frames[:, :, 64:128], frames[:, :, 128:]]

    def error(a, b):
        return float(np.abs(np.asarray(a, np.float32) - b).mean())

    assert error(np.broadcast_to(source, (4, 64, 64, 3)), panels[0]) < 6
    assert error(np.stack(driving), panels[1]) < 6
    assert error(results, panels[2]) < 6
    assert error(np.stack(driving), panels[0]) > 20  # the panels are told apart


def test_show_keypoints_draws_on_result(model, config, d12_short, tmp_path, shared_data):
    plain, marked = tmp_path / "plain.mp4", tmp_path / "marked.mp4"
    source = shared_data / "faces/sadtalker/happy.png"
    for out, show in ((plain, False), (marked, True)):
        animate(model, config, source, d12_short, out, AnimateOptions(max_frames=2, show_keypoints=show))
    difference = np.abs(read_frames(plain).astype(int) - read_frames(marked).astype(int)).max(axis=-1)
    changed = (difference > 60).mean()
    assert 0.005 < changed < 0.5  # discs at the keypoints, not the whole frame


# --------------------------------------------------------------------------- inputs
def _grayscale(shared_data, tmp_path):
    from PIL import Image
    path = tmp_path / "gray.png"
    Image.open(shared_data / "faces/sadtalker/happy.png").convert("L").save(path)
    return path


def _palette(shared_data, tmp_path):
    from PIL import Image
    path = tmp_path / "palette.png"
    Image.open(shared_data / "faces/sadtalker/people_0.png").convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    return path


@pytest.mark.parametrize("kind", ["rgba", "grayscale", "palette", "2048px", "256px", "portrait-aspect"])
def test_any_source_image_works(kind, model, config, d12_short, tmp_path, shared_data):
    paths = {
        "rgba": lambda: shared_data / "faces/fomm-demo/02.png",
        "grayscale": lambda: _grayscale(shared_data, tmp_path),
        "palette": lambda: _palette(shared_data, tmp_path),
        "2048px": lambda: shared_data / "faces/liveportrait/s2.jpg",
        "256px": lambda: shared_data / "faces/sadtalker/happy.png",
        "portrait-aspect": lambda: shared_data / "faces/liveportrait/s12.jpg",  # 375x500
    }
    source = paths[kind]()
    out = tmp_path / f"{kind}.mp4"
    crop = "auto" if kind in ("2048px", "portrait-aspect") else "none"  # face detection costs time
    # the square crop: paste-back (the default with --crop auto on these photos) is tests/test_paste_back.py's
    result = animate(model, config, source, d12_short, out,
                     AnimateOptions(crop=crop, layout="side-by-side", max_frames=3, paste_back=False))
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (192, 64, 3) and result.num_frames == 3
    assert result.frame_size == (64, 192)
    panel = read_frames(out, 0, 1)[0, :, :64].astype(np.float32)
    image = load_image(source)
    expected = source_crop.prepare(image, source_crop.source_box(image, crop), (64, 64))
    assert np.abs(panel - expected).mean() < 6


def test_exif_orientation_is_applied(model, config, d12_short, tmp_path):
    from PIL import Image
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = 255  # stored: left half black, right half white
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown rotated 90 degrees clockwise
    Image.fromarray(image).save(path, exif=exif)
    out = tmp_path / "exif.mp4"
    animate(model, config, path, d12_short, out, AnimateOptions(layout="side-by-side", max_frames=1))
    panel = read_frames(out)[0, :, :64].astype(np.float32).mean(axis=(1, 2))  # (64,) row brightness
    assert panel[:28].mean() < 40 and panel[36:].mean() > 215  # shown: top black, bottom white


def test_mpeg4_part2_driving(model, config, tmp_path, shared_data):
    driving = shared_data / "faces/sadtalker/WDA_AlexandriaOcasioCortez_000.mp4"
    assert probe(driving).codec == "mpeg4"
    out = tmp_path / "mpeg4.mp4"
    result = animate(model, config, shared_data / "faces/sadtalker/happy.png", driving, out,
                     AnimateOptions(max_frames=6, batch_size=3))
    info = probe(out)
    assert info.num_frames == result.num_frames == 6 and info.fps == pytest.approx(25.0)
    assert info.has_audio and abs(info.audio_duration - 6 / 25) < 0.1


# --------------------------------------------------------------------------- motion
def test_static_driving_gives_source_keypoints(model, d12_short, shared_data):
    source = source_crop.prepare(load_image(shared_data / "faces/sadtalker/happy.png"), None, (64, 64))
    first = source_crop.prepare(next(iter_frames(d12_short)), None, (64, 64))
    static = to_tensor([first] * 4, CPU)  # a driving video whose frames all equal its first
    # fp32: an identity of the motion math, on every CPU (auto would take bf16 where native)
    relative = Animator(model, to_tensor(source, CPU), to_tensor(first, CPU), AnimateOptions(precision="fp32"), CPU)
    with torch.inference_mode():
        detected, transferred = relative.motion(static)
    kp_source = model.keypoints(relative.motion_source).expand(4, -1, -1)
    torch.testing.assert_close(model.keypoints(transferred), kp_source, atol=1e-5, rtol=0)
    torch.testing.assert_close(transferred["jacobian"], relative.motion_source["jacobian"].expand(4, -1, -1, -1),
                               atol=1e-4, rtol=0)
    # Absolute motion gives the driving's own keypoints, which are not the source's.
    absolute = Animator(model, to_tensor(source, CPU), to_tensor(first, CPU),
                        AnimateOptions(relative=False, precision="fp32"), CPU)
    with torch.inference_mode():
        _, moved = absolute.motion(static)
    torch.testing.assert_close(model.keypoints(moved), model.keypoints(detected))
    assert (model.keypoints(moved) - kp_source).abs().max() > 1e-3


def test_adapt_scale_scales_the_displacement(model, d12_short, shared_data):
    source = source_crop.prepare(load_image(shared_data / "faces/sadtalker/happy.png"), None, (64, 64))
    frames = [source_crop.prepare(f, None, (64, 64)) for f in iter_frames(d12_short, 0, 30)]
    batch = to_tensor(frames[-4:], CPU)
    kp = {}
    for adapt in (False, True):
        animator = Animator(model, to_tensor(source, CPU), to_tensor(frames[0], CPU),
                            AnimateOptions(adapt_scale=adapt, precision="fp32"), CPU)
        with torch.inference_mode():
            kp[adapt] = model.keypoints(animator.motion(batch)[1]) - model.keypoints(animator.motion_source)
    from fomm.model import movement_scale
    scale = movement_scale(animator.motion_source, animator.motion_initial)
    assert abs(scale - 1) > 1e-3
    torch.testing.assert_close(kp[True], kp[False] * scale, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- best frame
def test_best_frame_finds_the_planted_pose(shared_data, d12_short):
    source = load_image(shared_data / "faces/liveportrait/d12.jpg")
    frames = [source_crop.resize(f, (256, 256)) for f in iter_frames(d12_short, 0, 12)]
    frames[7] = source_crop.resize(source, (256, 256))  # the source's own pose, planted at 7
    assert find_best_frame(source_crop.resize(source, (256, 256)), iter(frames), "dlib") == 7


def test_best_frame_animation_equals_backward_forward_stitch(model, config, d12_short, tmp_path, shared_data):
    """The original demo animates frames best..0 and best..end separately from the best
    frame and stitches them; per-frame independence lets us run in order: same frames."""
    source_path = shared_data / "faces/liveportrait/s2.jpg"
    out = tmp_path / "best.mp4"
    options = AnimateOptions(crop="auto", find_best_frame=True, max_frames=8, batch_size=3, paste_back=False)
    result = animate(model, config, source_path, d12_short, out, options)
    assert 0 <= result.best_frame < 8 and probe(out).num_frames == 8
    image = load_image(source_path)
    source = source_crop.prepare(image, source_crop.source_box(image, "auto"), (64, 64))
    box = source_crop.driving_box(source_crop.sample_frames(d12_short, 30, end=8), "auto")
    frames = [source_crop.prepare(f, box, (64, 64)) for f in iter_frames(d12_short, 0, 8)]
    best = result.best_frame
    animator = Animator(model, to_tensor(source, CPU), to_tensor(frames[best], CPU), options, CPU)
    in_order = animator(to_tensor(frames, CPU))["prediction"]
    forward = animator(to_tensor(frames[best:], CPU))["prediction"]
    backward = animator(to_tensor(frames[:best + 1][::-1], CPU))["prediction"]
    stitched = torch.cat([backward.flip(0), forward[1:]])
    torch.testing.assert_close(in_order, stitched, atol=1e-4, rtol=0)
    written = read_frames(out).astype(np.float32)
    assert written.shape == (8, 64, 64, 3)
    assert np.abs(written - to_uint8(stitched)).mean() < 4
# --------------------------------------------------------------------------- cropping
def test_auto_crop_boxes_contain_the_faces(shared_data, d12_short):
    from core import faces
    image = load_image(shared_data / "faces/liveportrait/s2.jpg")  # 2048 px
    box = source_crop.source_box(image, "auto")
    face = faces.largest_face(source_crop.resize(image, (512, 512))) * 4
    assert box.left <= face[0] and box.top <= face[1]
    assert box.left + box.side >= face[2] and box.top + box.side >= face[3]
    assert box.side < 2048  # a crop, not the whole photo
    sampled = source_crop.sample_frames(d12_short, 30)
    drive = source_crop.driving_box(sampled, "auto")
    for frame in sampled:  # one box holds the face of every sampled frame
        found = faces.largest_face(frame)
        centre = (found[:2] + found[2:]) / 2
        assert drive.left < centre[0] < drive.left + drive.side
        assert drive.top < centre[1] < drive.top + drive.side


# --------------------------------------------------------------------------- other families
@pytest.mark.parametrize("config_name", ["monkey-net-tiny", "x2face-tiny"])
def test_baselines_animate_through_the_same_contract(config_name, d12_short, tmp_path, shared_data):
    from fomm.registry import build_model
    baseline_config = load_config(config_name)
    torch.manual_seed(0)
    path = tmp_path / "baseline.pth"
    torch.save(build_model(baseline_config).checkpoint_state(), path)
    out = tmp_path / "baseline.mp4"
    assert run_cli(config_name, path, shared_data / "faces/sadtalker/happy.png", d12_short, out,
                   "--max-frames", "3", "--layout", "side-by-side", "--show-keypoints") == 0
    info = probe(out)
    size = baseline_config.dataset_params.frame_shape[0]  # 64; X2Face's U-Nets need 256
    assert (info.num_frames, info.width, info.height) == (3, 3 * size, size)


# --------------------------------------------------------------------------- memory
def test_frames_stream_through_with_bounded_memory(model, config, d12_short, tmp_path, shared_data,
                                                   monkeypatch):
    """Decoded driving frames are released batch by batch: at no time are more than about
    two batches alive, however long the video (here 14 frames, batch 2); before the loop,
    the frames sampled for an int8 calibration are a fixed number (CALIBRATION_FRAMES)."""
    import weakref

    import core.media as media
    from fomm.animation import CALIBRATION_FRAMES, prepare, run_plan
    alive, peak = set(), [0]
    original = media.iter_frames

    def tracked(*args, **kwargs):
        for frame in original(*args, **kwargs):
            key = id(frame)
            alive.add(key)
            weakref.finalize(frame, alive.discard, key)
            peak[0] = max(peak[0], len(alive))
            yield frame

    monkeypatch.setattr(media, "iter_frames", tracked)
    plan = prepare(model, config, shared_data / "faces/sadtalker/happy.png", d12_short, tmp_path / "out.mp4",
                   AnimateOptions(batch_size=2, max_frames=14))
    assert peak[0] <= CALIBRATION_FRAMES + 1, peak[0]
    peak[0] = len(alive)
    result = run_plan(plan)
    assert result.num_frames == 14
    assert peak[0] <= 2 * 2 + 2, peak[0]


@pytest.mark.parametrize("clip", ["faces/liveportrait/d12.mp4", "faces/animateanyone/talkinghead_3.mp4"])
def test_crop_sampling_by_seeking_equals_decoding(clip, shared_data):
    """Long videos place the crop from frames reached by seeking; they are the same frames
    a full decode gives (talkinghead_3's video starts 7.3 s into the file)."""
    path = shared_data / clip
    num_frames = sum(1 for _ in iter_frames(path))
    decoded = source_crop.sample_frames(path, num_frames, count=5)
    seeked = source_crop.sample_frames(path, num_frames, count=5, seek_above=0)
    assert len(decoded) == len(seeked) == 5
    for a, b in zip(decoded, seeked):
        np.testing.assert_array_equal(a, b)


def test_audio_starting_after_the_video_is_delayed(model, config, shared_data, tmp_path):
    """A driving clip whose audio starts 0.5 s after its first frame keeps that gap."""
    driving = tmp_path / "late_audio.mp4"
    source_clip = shared_data / "faces/liveportrait/d12.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(source_clip), "-itsoffset", "0.5",
                    "-i", str(source_clip), "-map", "0:v", "-map", "1:a", "-frames:v", "15",
                    "-c:v", "libx264", "-c:a", "aac", str(driving)], check=True)
    delay = -audio_offset(driving)
    assert 0.4 < delay < 0.55
    out = tmp_path / "out.mp4"
    animate(model, config, shared_data / "faces/sadtalker/happy.png", driving, out,
            AnimateOptions(batch_size=8))
    info = probe(out)
    assert info.num_frames == 15 and abs(info.audio_duration - 15 / 25) < 0.1
    rate = 16000
    heard, original = mono_audio(out, rate), mono_audio(driving, rate)
    gap = int(delay * rate)
    assert np.abs(heard[: gap - 800]).max() < 1e-3  # silence before the audio starts
    assert np.abs(original[: gap - 800]).max() > 1e-2  # (the original has sound there)
    assert best_correlation(original[: rate // 10], heard[gap - 800:], 1000) > 0.9


# --------------------------------------------------------------------------- command line
def test_cli_motion_flags_and_config_defaults(config):
    from stages.animate import options_from_args
    base = ["run", "animate", "--config", "tiny", "--source", "s.png", "--driving", "d.mp4", "--out", "o.mp4"]

    def options(*extra):
        return options_from_args(cli.build_parser("animate").parse_args(base + list(extra)), config)

    default = options()
    assert default.relative and not default.adapt_scale and default.audio and default.crop == "none"
    assert not options("--absolute").relative
    assert options("--adapt-scale").adapt_scale
    assert not options("--no-audio").audio
    chosen = options("--crop", "auto", "--find-best-frame", "--layout", "side-by-side", "--show-keypoints",
                     "--batch-size", "3", "--max-frames", "9", "--precision", "bf16")
    assert (chosen.crop, chosen.find_best_frame, chosen.layout, chosen.show_keypoints, chosen.batch_size,
            chosen.max_frames, chosen.precision.name) == ("auto", True, "side-by-side", True, 3, 9, "bf16")
    absolute_config = load_config("tiny", ["animate_params.normalization_params.use_relative_movement=false"])
    parsed = cli.build_parser("animate").parse_args(base)
    assert not options_from_args(parsed, absolute_config).relative  # the config's default
