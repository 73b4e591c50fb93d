"""`animate --smooth`: the jitter metric with and without the One-Euro filter, and its AKD cost;
writes the `smoothing` section of RESULTS.md.

    python -m benchmarks.smoothing --train-steps 100         # the three clips, 100 frames each, + a tiny FOMM
    python -m benchmarks.smoothing --frames 40 --clips 04 --no-write   # a quick check
    python -m benchmarks.smoothing --config vox-256 --checkpoint vox-cpk.pth.tar   # + your trained FOMM

Protocol: self-reenactment of real talking-face clips (faces/fomm-demo/{04,08,10}.mp4, 256 px):
the source is the clip's first frame and every frame drives it (relative motion from that
frame, which is then absolute motion: the reconstruction protocol), so the real clip is both
the driving video and the ground truth. Each generated clip is scored against the real one
at 256x256 with metrics/jitter.py (`jitter`: keypoint acceleration error, px/frame^2, and
`flicker`: static-region temporal error, /255) and AKD (mean |diff| of the landmarks, px), all
with dlib68 (HOG + 68-point predictor, offline), frames without a face on either side left
out, and with the model's own keypoints (jitter and AKD; what a model without faces in its
output can be scored with). Rows: no filter, then `--smooth-strength` 0.5, 1 (the default),
2 and 4. The filter's own time per frame is measured inside the same runs.

Models: `landmark-warp` (below) always; a checkpoint with `--config/--checkpoint`; or, with
`--train-steps N`, a tiny FOMM (64 px) trained here on three clips that are not scored. No
trained vox-256 checkpoint is available offline and training one on a shared 2-core CPU
takes days, so the face-landmark figures come from `landmark-warp`: a model without weights in the family
contract whose motion is dlib's 5 face landmarks of each frame (normalised to [-1, 1] like
FOMM's keypoints, the filter's units) and whose generator warps the source by the affine
map that best carries the driving landmarks onto the source's (least squares). Its jitter is
the one the filter is for: a landmark detector run frame by frame trembles, and the warp
turns the tremble into a shaking picture. A FOMM's keypoint detector trembles the same way;
its numbers depend on its training, so rerun with your checkpoint. The scorer (dlib68) is
another detector than the motion's, so its own errors do not hide the tremble; they do set
a floor: the real clip's landmarks accelerate by about 1.3 px/frame^2 on their own.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._results import markdown_table, write_section
from fomm.api import Motion, MotionTransferModel

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CLIPS = ("04", "08", "10")
STRENGTHS = (0.5, 1.0, 2.0, 4.0)
SIZE = 256


# --------------------------------------------------------------------------- the stand-in model
class LandmarkWarp(MotionTransferModel):
    """Animation only: motion = dlib's 5 landmarks (eye corners and nose base, its
    `shape_predictor_5_face_landmarks` on the HOG box found without upsampling) as (B, 5, 2) in
    [-1, 1] (x, y; pixel centres, the align_corners=False convention); the prediction is the
    source warped by the affine map from the driving landmarks to the source's, fitted by least
    squares. No weights. Its landmark detector is not the scorer's (dlib68 on the box found at
    twice the size): a scorer that shared the motion's detector would share its errors and be
    blind to the tremble they cause."""

    name = "landmark-warp"

    def __init__(self):
        super().__init__()
        import dlib

        from core import faces
        self._predictor = dlib.shape_predictor(str(faces.models_dir() / "shape_predictor_5_face_landmarks.dat"))

    def detect(self, frames: torch.Tensor) -> Motion:
        from core import faces
        from core.frames import to_uint8
        points = []
        for index, image in enumerate(to_uint8(frames)):
            box = faces.largest_face(image, upsample=0)
            if box is None:
                raise ValueError(f"landmark-warp: no face in frame {index} of the batch")
            shape = self._predictor(np.ascontiguousarray(image), faces._rect(box))
            points.append([[part.x, part.y] for part in shape.parts()])
        size = np.array([frames.shape[3], frames.shape[2]], np.float64)  # (W, H)
        value = (2 * np.asarray(points, np.float64) + 1) / size - 1
        return {"value": torch.from_numpy(value).to(torch.float32).to(frames.device)}

    def transfer(self, motion_source, motion_driving, motion_initial, relative=True, relative_jacobian=True,
                 adapt_movement_scale=False, avd=False) -> Motion:
        if avd:
            self.refuse_avd()
        if not relative:
            return dict(motion_driving)
        return {"value": motion_source["value"] + motion_driving["value"] - motion_initial["value"]}

    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion) -> dict:
        batch, _, height, width = source.shape
        driving, target = motion_driving["value"].double(), motion_source["value"].double()  # (B, K, 2)
        ones = torch.ones_like(driving[..., :1])
        design = torch.cat([driving, ones], dim=-1)                          # (B, K, 3)
        affine = torch.linalg.lstsq(design, target).solution.transpose(1, 2)  # (B, 2, 3): driving -> source
        grid = F.affine_grid(affine.float(), [batch, 3, height, width], align_corners=False)
        prediction = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return {"prediction": prediction}

    def generator_losses(self, source, driving, kit):
        raise NotImplementedError("landmark-warp animates only; it has nothing to train")

    def optimizer_groups(self):
        raise NotImplementedError("landmark-warp animates only; it has nothing to train")


# --------------------------------------------------------------------------- one run
def clip_frames(name: str, count: int) -> tuple[np.ndarray, float]:
    """The first `count` frames of faces/fomm-demo/NAME.mp4 at 256x256, and its fps."""
    from core.media import probe, read_frames
    from metrics.evaluate import resize_frames
    path = SHARED / "faces" / "fomm-demo" / f"{name}.mp4"
    return resize_frames(read_frames(path, 0, count), SIZE), probe(path).fps


def model_size(model, frames: np.ndarray) -> tuple[int, int]:
    """The frame size the model takes: its config's (`model.frame_shape`), else the frames'."""
    return tuple(getattr(model, "frame_shape", frames.shape[1:3]))


def animate_clip(model, frames: np.ndarray, fps: float, strength: float | None, batch: int = 8
                 ) -> tuple[np.ndarray, float]:
    """Self-reenactment: (T, 256, 256, 3) uint8 generated from frames[0] driven by `frames` at
    the model's size, and the seconds the filter took (0 without it)."""
    from fomm import source_crop
    from fomm.animation import AnimateOptions, Animator
    from metrics.evaluate import resize_frames
    inputs = [source_crop.prepare(frame, None, model_size(model, frames)) for frame in frames]
    options = AnimateOptions(batch_size=batch, smooth=strength is not None, smooth_strength=strength or 1.0,
                             precision="fp32")
    animator = Animator.from_frames(model, inputs[0], inputs[0], options, fps=fps)
    filter_seconds = 0.0
    if animator.smoother is not None:  # time the filter alone, inside the run
        smoother = animator.smoother

        def timed(motion, valid=None):
            nonlocal filter_seconds
            start = time.perf_counter()
            out = smoother(motion, valid)
            filter_seconds += time.perf_counter() - start
            return out
        animator.smoother = timed
    out = []
    for start in range(0, len(inputs), batch):
        results, _ = animator.predict(inputs[start:start + batch])
        out.extend(results)
    return resize_frames(np.stack(out), SIZE), filter_seconds


def own_keypoints(model, frames: np.ndarray) -> np.ndarray | None:
    """The model's own keypoints (T, K, 2) of 256 px frames, in pixels at 256x256 (None for a
    family without keypoints)."""
    from core.frames import to_tensor
    from fomm import source_crop
    inputs = np.stack([source_crop.prepare(frame, None, model_size(model, frames)) for frame in frames])
    with torch.no_grad():
        points = model.keypoints(model.detect(to_tensor(inputs)))
    return None if points is None else (points.double().numpy() + 1) / 2 * SIZE


def scores(real: np.ndarray, fake: np.ndarray, pose, real_kp: np.ndarray | None = None) -> dict:
    """jitter, flicker and AKD of `fake` against `real` (both 256 px), with `pose`'s landmarks."""
    from metrics import jitter
    real_kp = pose.detect(real) if real_kp is None else real_kp
    fake_kp = pose.detect(fake)
    accel = jitter.acceleration_error(real_kp, fake_kp)
    flicker = jitter.static_flicker(real, fake)
    both = np.isfinite(real_kp).all(axis=(1, 2)) & np.isfinite(fake_kp).all(axis=(1, 2))
    akd = np.abs(real_kp[both] - fake_kp[both]).mean(axis=(1, 2))
    scored = np.isfinite(accel.values)
    return {"jitter": float(accel.values[scored].mean()) if scored.any() else float("nan"),
            "jitter_frames": int(scored.sum()), "flicker": float(np.nanmean(flicker.values)),
            "akd": float(akd.mean()) if len(akd) else float("nan"), "akd_frames": int(both.sum()),
            "frames": len(real)}


def measure(model_name: str, model, clips, frames: int, strengths) -> list[dict]:
    """One row per clip and setting. A model smaller than 256 px is scored against the real clip
    at its own resolution (resized to its size and back), as `benchmark` scores it."""
    from metrics import jitter
    from metrics.backends.dlib68 import Dlib68Pose
    from metrics.evaluate import resize_frames
    pose = Dlib68Pose()  # upsample 1: the evaluate default
    rows = []
    for clip in clips:
        real, fps = clip_frames(clip, frames)
        reference = resize_frames(resize_frames(real, model_size(model, real)[0]), SIZE)
        real_kp, real_own = pose.detect(reference), own_keypoints(model, real)
        for strength in (None, *strengths):
            start = time.perf_counter()
            fake, filter_seconds = animate_clip(model, real, fps, strength)
            seconds = time.perf_counter() - start
            row = {"model": model_name, "clip": clip, "smooth": "off" if strength is None else f"{strength:g}",
                   **scores(reference, fake, pose, real_kp), "filter ms/frame": 1000 * filter_seconds / len(real),
                   "animate ms/frame": 1000 * seconds / len(real)}
            fake_own = own_keypoints(model, fake)
            row["own jitter"] = float(np.nanmean(jitter.acceleration_error(real_own, fake_own).values))
            row["own akd"] = float(np.abs(real_own - fake_own).mean())
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            rows.append(row)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per model and setting: the means over clips, and the change against no filter."""
    def mean(group, key):
        values = [r[key] for r in group if np.isfinite(r[key])]
        return float(np.mean(values)) if values else float("nan")

    def text(value, form):
        return "n/a" if not np.isfinite(value) else format(value, form)
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for setting in dict.fromkeys(r["smooth"] for r in rows if r["model"] == model):
            group = [r for r in rows if r["model"] == model and r["smooth"] == setting]
            base = [r for r in rows if r["model"] == model and r["smooth"] == "off"
                    and r["clip"] in {g["clip"] for g in group}]
            row = {"model": model, "--smooth-strength": setting}
            for key, label in (("jitter", "jitter dlib68"), ("own jitter", "jitter own kp")):
                value, before = mean(group, key), mean(base, key)
                row[f"{label} (px/frame^2)"] = text(value, ".3f")
                change = text(100 * (value / before - 1), "+.0f")
                row[f"{label} change"] = "" if setting == "off" else change + (" %" if change != "n/a" else "")
            row["flicker (/255)"] = text(mean(group, "flicker"), ".3f")
            for key, label in (("akd", "AKD dlib68"), ("own akd", "AKD own kp")):
                value, before = mean(group, key), mean(base, key)
                row[f"{label} (px)"] = text(value, ".3f") + ("" if setting == "off" else f" ({text(value - before, '+.3f')})")
            row["filter ms/frame"] = text(mean(group, "filter ms/frame"), ".2f")
            row["animate ms/frame"] = text(mean(group, "animate ms/frame"), ".1f")
            out.append(row)
    return out


# --------------------------------------------------------------------------- a tiny FOMM
TRAIN_CLIPS = (("fomm-demo", "00.mp4"), ("liveportrait", "d0.mp4"), ("liveportrait", "d11.mp4"))


def train_tiny(steps: int, folder: Path) -> Path:
    """A tiny FOMM (configs/tiny.yaml, 64 px) trained for `steps` on three clips that are not
    scored (fomm-demo/00 and LivePortrait's d0 and d11, 200 frames each at 64 px); its checkpoint."""
    import subprocess

    from core.media import ffmpeg_exe
    from fomm.train import resolve_run_config, train
    data = folder / "faces"
    for source, name in TRAIN_CLIPS:
        frames = data / "train" / f"{source}-{Path(name).stem}"
        if not frames.is_dir():
            frames.mkdir(parents=True)
            subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(SHARED / "faces" / source / name),
                            "-frames:v", "200", "-vf", "scale=64:64", str(frames / "%05d.png")], check=True)
    config = resolve_run_config("tiny", [f"train_params.max_steps={steps}", "train_params.num_repeats=1000",
                                         f"train_params.checkpoint_every={steps}",
                                         "train_params.image_every=1000000"], None)
    train(config, data, folder / "run")
    return folder / "run" / "checkpoints" / f"step-{steps:07d}.pt"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", default=",".join(CLIPS), help="fomm-demo clip names, comma separated")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--strengths", default=",".join(f"{s:g}" for s in STRENGTHS))
    parser.add_argument("--config", default="tiny", help="the config of --checkpoint (default tiny)")
    parser.add_argument("--checkpoint", help="a trained checkpoint to measure beside landmark-warp")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train a tiny FOMM for this many steps first (with no --checkpoint) and measure it")
    parser.add_argument("--work", default=None, help="folder for the training run (default: a temporary one)")
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    clips = [c for c in args.clips.split(",") if c]
    strengths = [float(s) for s in args.strengths.split(",") if s]
    checkpoint, trained = args.checkpoint, ""
    if checkpoint is None and args.train_steps > 0:
        import tempfile
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="smoothing-"))
        checkpoint = train_tiny(args.train_steps, work)
        trained = f", trained here for {args.train_steps} steps"
    rows = measure("landmark-warp", LandmarkWarp(), clips, args.frames, strengths)
    if checkpoint:
        from fomm.animation import load_animation_model
        from fomm.train import resolve_run_config
        config = resolve_run_config(args.config, [], None)
        model = load_animation_model(config, checkpoint, torch.device("cpu"))
        model.frame_shape = tuple(config.dataset_params.frame_shape[:2])
        rows += measure(f"{config.model_params.name} {args.config}{trained}", model, clips, args.frames, strengths)
    table = summary(rows)
    per_clip = [{"model": r["model"], "clip": r["clip"], "smooth": r["smooth"], "jitter dlib68": r["jitter"],
                 "jitter own kp": r["own jitter"], "flicker": r["flicker"], "AKD dlib68": r["akd"],
                 "AKD own kp": r["own akd"],
                 "frames (jitter/AKD)": f"{r['jitter_frames']}/{r['akd_frames']} of {r['frames']}"} for r in rows]
    print(markdown_table(table))
    if args.write:
        command = " ".join(["python -m benchmarks.smoothing", *(argv if argv is not None else __import__("sys").argv[1:])])
        body = (f"`{command}`: self-reenactment of real 256 px face clips (fomm-demo {', '.join(clips)}, first "
                f"{args.frames} frames; the source is a clip's first frame, every frame drives it), scored against "
                "the real clip at 256x256 (at the model's resolution for a smaller model, as `benchmark` does): "
                "`jitter` is the keypoint acceleration error and `flicker` the static-region temporal error of "
                "metrics/jitter.py (README, Metrics), with dlib68's landmarks and with the model's own keypoints "
                "(detected on the real and on the generated frames); AKD the mean keypoint distance. Means over "
                "the clips; `change` and the AKD in brackets against no filter. `landmark-warp` is the weightless "
                "stand-in of the script's docstring (dlib's 5 landmarks as the motion, an affine warp as the "
                "generator); its own keypoints are those 5, which share their errors with its motion. The tiny "
                "FOMM (configs/tiny.yaml, 64 px) is scored with its own keypoints only: dlib68 finds no face in "
                "its 64 px reconstructions. The filter's time is measured inside the same runs (a shared "
                "machine: read the ratio to the animation's time, not the absolute times).\n\n"
                + markdown_table(table) + "\n\nPer clip:\n\n" + markdown_table(per_clip))
        write_section("smoothing", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
