"""The watermark decided per video (core/watermark.py): its code, its null distribution, its
PSNR, and the sharing step the previous scheme lost (a 256 px animation scaled to 75 % and
re-encoded at CRF 28: 0 of 60 frames decoded); no real video of ../shared/data reads as marked."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core import watermark
from core.media import ffmpeg_exe, read_frames
from stages import cli
from pipeline.verify import IMAGE_SUFFIXES, frames_of, verify_file

FACES = ["faces/fomm-demo/00.mp4", "faces/fomm-demo/04.mp4", "faces/fomm-demo/08.mp4"]


def test_codewords_are_reed_muller_and_decode_by_their_walsh_hadamard_peak():
    words = np.stack([watermark.codeword(run) for run in range(256)])        # (256, 128) +-1
    distances = (words[:, None, :] != words[None, :, :]).sum(-1)
    off_diagonal = distances[~np.eye(256, dtype=bool)]
    assert off_diagonal.min() == 64  # RM(1, 7): any two codewords differ in at least 64 chips
    spectrum = watermark.walsh_hadamard(words)                                 # (256, 128)
    assert np.array_equal(np.abs(spectrum).argmax(1) | ((spectrum[np.arange(256), np.abs(spectrum).argmax(1)] < 0)
                                                        << 7), np.arange(256))
    signs, chips = watermark.key()
    assert np.bincount(chips.reshape(-1)).tolist() == [8] * 128  # every chip spread over 8 cells
    assert abs(signs.mean()) < 0.1


def test_unmarked_frames_score_as_the_null_distribution_says(shared_data):
    """Without the mark a codeword's z is a sum of independent fair signs: mean 0, spread 1
    over the 128 Hadamard rows of every frame; none comes near the threshold."""
    for clip in FACES:
        for frame in read_frames(shared_data / clip, 0, 20)[::4]:
            scores = watermark.codeword_scores(watermark.frame_evidence(frame))
            assert abs(scores.mean()) < 0.35 and 0.7 < scores.std() < 1.3
            assert np.abs(scores).max() < watermark.THRESHOLD - 1.5


def test_marking_keeps_psnr_above_40_db_and_reads_back_every_run(shared_data):
    frames = [read_frames(shared_data / clip, 0, 1)[0] for clip in FACES]
    for run in (0, 0x5A, 0x80, 0xFF):
        marker = watermark.FrameMarker(run)
        for frame in frames:
            marked = marker(frame)
            mse = np.mean((marked.astype(np.float64) - frame) ** 2)
            assert 40.0 <= 10 * np.log10(255 ** 2 / mse) < 41.5
            np.testing.assert_array_equal(marker(frame), marked)  # the same frame, the same mark
            reading = watermark.decode(watermark.frame_evidence(marked))
            assert reading.detected and reading.run == run


def test_cropped_copy_is_found_by_the_search(shared_data):
    frames = read_frames(shared_data / "faces/fomm-demo/04.mp4", 0, 4)
    marker = watermark.FrameMarker(0x21)
    cropped = np.stack([marker(f)[26:230, 26:230] for f in frames])           # 10 % off each side
    evidence = sum(watermark.frame_evidence(f) for f in cropped)
    assert not watermark.decode(evidence).detected                             # cells no longer line up
    crop, found = watermark.find_crop(np.mean([watermark.v_plane(f) for f in cropped], axis=0))
    assert found.threshold == pytest.approx(watermark.crop_threshold()) and found.threshold > watermark.THRESHOLD
    assert found.detected and found.run == 0x21
    # within a quarter cell the scores of neighbouring hypotheses differ by less than their noise
    assert crop.scale == pytest.approx(0.8, abs=0.025) and crop.left == pytest.approx(0.1, abs=0.02)


def test_animation_scaled_to_75_percent_at_crf_28_verifies_as_marked(shared_data, tmp_path, capsys):
    """The sharing step of issue 21: 60 animated 256 px frames (X2Face's tiny config is 256 px
    and fast), scaled to 192 px and re-encoded at CRF 28 with the metadata dropped: no C2PA, no
    tag, the watermark alone decides, from the evidence of all 60 frames."""
    animated = tmp_path / "animated.mp4"
    assert cli.main(["run", "animate", "--config", "x2face-tiny", "--model", "x2face", "--random-weights",
                     "--source", str(shared_data / "faces/fomm-demo/01.png"),
                     "--driving", str(shared_data / "faces/fomm-demo/04.mp4"), "--out", str(animated),
                     "--max-frames", "60", "--device", "cpu", "--precision", "fp32"]) == 0
    original = verify_file(animated)
    assert original.marked and original.watermark.frames == 60 and original.watermark.detected
    shared = tmp_path / "shared.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(animated), "-map_metadata", "-1",
                    "-vf", "scale=trunc(iw*3/8)*2:trunc(ih*3/8)*2", "-c:v", "libx264", "-crf", "28",
                    "-pix_fmt", "yuv420p", str(shared)], check=True)
    assert read_frames(shared, 0, 1).shape[1:3] == (192, 192)
    capsys.readouterr()
    assert cli.main(["run", "verify", str(shared), "--json"]) == 0
    out = capsys.readouterr().out
    record = json.loads(out[out.index("{"):])["files"][0]
    assert record["marked"] and record["c2pa"]["state"] == "absent" and record["tag"] is None
    mark = record["watermark"]
    assert mark["scheme"] == "current" and mark["detected"] and mark["crop"] is None
    assert mark["score"] >= mark["threshold"] == watermark.THRESHOLD and mark["frames"] == 60
    assert mark["run"] == original.watermark.run and mark["payload"] == f"{watermark.TAG:06x}{mark['run']:02x}"


def _real_media(shared_data: Path) -> list[Path]:
    """Every video and image of ../shared/data; of a folder of frames, its first frame."""
    files = []
    for path in sorted(p for p in shared_data.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in (".mp4", ".gif"):
            files.append(path)
        elif suffix in IMAGE_SUFFIXES:
            siblings = sorted(p for p in path.parent.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if len(siblings) < 10 or path == siblings[0]:  # frame folders: their first frame
                files.append(path)
    return files


def test_no_real_video_or_image_in_shared_data_reads_as_marked(shared_data):
    """The current scheme's video-level decision on every real file (first 30 frames of a
    video), directly and by the crop search; the previous scheme's readings are covered by
    tests/test_provenance.py and benchmarks/provenance.py (all frames)."""
    files = _real_media(shared_data)
    assert len(files) >= 40 and sum(p.suffix.lower() in (".mp4", ".gif") for p in files) >= 12
    for path in files:
        reader = watermark.VideoEvidence()
        for frame in frames_of(path, "image" if path.suffix.lower() in IMAGE_SUFFIXES else "video", 30):
            reader.add(frame)
        direct = reader.detection()
        assert not direct.detected and reader.frame_hits == 0, (path, direct)
        _, cropped = watermark.find_crop(reader.mean_plane())
        assert not cropped.detected, (path, cropped)
