"""The animation pipeline as a library: a model, the transfer options, frames in and frames out,
and a whole file animated (the library of `pipeline run animate`, whose front door is
stages/animate.py).

    model = load_animation_model(config, "vox-cpk.pth.tar", resolve_device("auto"))
    animate(model, config, "photo.jpg", "video.mp4", "result.mp4", AnimateOptions(crop="auto"))

    animator = Animator.from_frames(model, source, initial, AnimateOptions(layout="side-by-side"))
    for batch in batched(driving_frames, animator.batch_size):
        for frame in animator.animate(batch):   # (H, W', 3) uint8
            ...

Motion transfer is the model family's `transfer()` (FOMM Eq. 8 for relative motion, with
the adapt-scale factor of the original demo). Frames stream from the driving video through
the model in batches and straight into the encoder, so memory does not grow with the
video's length. The output has the driving video's fps and frame count and, for mp4, its
audio cut to the video's length; it appears at the output path only when complete
(core/media.VideoWriter), whatever fails on the way. (GIF stores frame delays in 1/100 s,
so a gif's rate is rounded: 30 fps plays at 33.3.) `--stream` is fomm/stream.py, which sits
on this module, as do fomm/jobs.py (one request, as the front door builds it),
benchmarks/animate.py and benchmarks/gpu.py.

`AnimateOptions.precision` is a `core.devices.Precision`, resolved once by the front door
(stages/animate.py) for the device; library callers may give a name (auto, fp32, bf16,
int8), which the Animator resolves once for the model's device.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from core import devices as precision
from core import media, quantize
from core.config import config_to_yaml
from core.errors import UserError
from core.frames import to_tensor, to_uint8
from fomm import smoothing, source_crop
from fomm.api import Motion, MotionTransferModel
from fomm.config import Config

logger = logging.getLogger(__name__)

LAYOUTS = ("result", "side-by-side")
OUTPUT_SUFFIXES = (".mp4", ".gif")
# The animation modes of MRAA's and TPSMM's demos (standard = absolute motion).
MODES = ("standard", "relative", "avd")
# Driving frames an int8 calibration sees, spread over the clip (every other one sets the
# activation ranges, the frames between them measure the error budget); as many as a batch
# saw before, so the first run costs what it did (a 1.6x larger sample moved the tiny
# trained model's worst p99 from 2.4 to 2.3/255: core/quantize.py).
CALIBRATION_FRAMES = 8
# Driving frames a stored calibration is checked on in each run (Animator.verify), from those.
VERIFY_FRAMES = 2


@dataclass(frozen=True)
class AnimateOptions:
    relative: bool = True              # Eq. 8 relative motion (False: absolute keypoints)
    avd: bool = False                  # MRAA's / TPSMM's animation-via-disentanglement (--mode avd)
    relative_jacobian: bool = True
    adapt_scale: bool = False          # scale motion by sqrt(source hull area / driving hull area)
    find_best_frame: bool = False
    landmarks: str = "auto"            # best-frame landmark backend: auto, dlib, face-alignment
    crop: str = "none"                 # auto | center | none (see fomm/source_crop.py)
    crop_increase: float = 0.4
    layout: str = "result"             # result | side-by-side
    show_keypoints: bool = False
    audio: bool = True
    batch_size: int | None = None      # None: the measured default for the device (core/devices.py)
    max_frames: int | None = None
    # the resolved path (core/devices.Precision; the front door resolves it once), or a name
    # (auto | fp32 | bf16 | int8) the Animator resolves for the model's device
    precision: precision.Precision | str = "auto"
    compile: bool = False              # torch.compile the float paths' inference copy (core/devices.py)
    provenance: bool = True            # watermark, C2PA manifest, AI-generated tag (core/provenance.py)
    # issue 22: the whole photo and steady motion
    paste_back: bool | None = None     # None: on with crop="auto" on a photo larger than the model's input
    smooth: bool = False               # One-Euro filter on the driving motion (fomm/smoothing.py)
    smooth_strength: float = 1.0       # > 0: 2 smooths harder, 0.5 lighter


# --------------------------------------------------------------------------- checks
def check_options(options: AnimateOptions, out_path: Path | str, live_target: bool = False) -> None:
    """UserError for options that cannot work; `live_target` (--stream to '-' or a URL)
    skips the file-name check."""
    if not live_target and Path(out_path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {str(out_path)!r}: expected a .mp4 or .gif file name"
                        " (with --stream also '-' for stdout or a udp://, rtmp://, srt:// URL)")
    if options.layout not in LAYOUTS:
        raise UserError(f"--layout {options.layout!r}: expected one of {list(LAYOUTS)}")
    if options.crop not in source_crop.CROP_MODES:
        raise UserError(f"--crop {options.crop!r}: expected one of {list(source_crop.CROP_MODES)}")
    if options.batch_size is not None and options.batch_size < 1:
        raise UserError(f"--batch-size {options.batch_size}: expected 1 or more")
    if options.max_frames is not None and options.max_frames < 1:
        raise UserError(f"--max-frames {options.max_frames}: expected 1 or more")
    if not isinstance(options.precision, precision.Precision) and options.precision not in precision.PRECISIONS:
        raise UserError(f"--precision {options.precision!r}: expected one of {list(precision.PRECISIONS)}")
    smoothing.check_strength(options.smooth_strength)


def check_out_is_not_an_input(out_path: str | Path, **inputs: str | Path) -> None:
    """UserError when `--out` names one of the input files (`source=..., driving=...`), lies
    inside or contains one: the same path once symlinks and `..` are resolved, or the same
    file (a hard link); core.outputs.check_apart."""
    from core.outputs import check_apart
    check_apart(out_path, {f"--{name}": value for name, value in inputs.items()})


# --------------------------------------------------------------------------- devices and the model
def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def model_device(model) -> torch.device:
    """The device a model's parameters live on (CPU for a parameterless ONNX runner)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def precision_of(options: AnimateOptions, device: torch.device) -> precision.Precision:
    """The path `options.precision` names: a resolved Precision as it is (the front door's),
    a name resolved for `device` (library callers)."""
    if isinstance(options.precision, precision.Precision):
        return options.precision
    return precision.resolve(options.precision, device, options.compile)


def batch_size(options: AnimateOptions, device: torch.device,
               chosen: precision.Precision | None = None) -> int:
    """`options.batch_size`, or the measured default for the device and precision (`chosen`,
    else `precision_of`)."""
    if options.batch_size is not None:
        return options.batch_size
    return precision.default_batch_size(chosen or precision_of(options, device))


def load_animation_model(config: Config, checkpoint: str | Path | None, device: torch.device,
                         name: str | None = None) -> MotionTransferModel:
    """The config's (or `name`'s) model in eval mode on `device`, weights from `checkpoint`
    (fomm/checkpoint.load_model: released or project format; a checkpoint that does not match
    the config raises UserError). `checkpoint=None` keeps the random initialisation."""
    from core.config import replace
    from fomm.checkpoint import load_model
    from fomm.registry import build_model
    if name is not None and name != config.model_params.name:
        config = replace(config, model_params=replace(config.model_params, name=name))
    if checkpoint is None:
        return build_model(config).to(device).eval()
    try:
        model = load_model(config, checkpoint, device)
    except UserError as err:  # torch's unpickling messages span lines; the CLI prints one
        raise UserError(" ".join(str(err).split())) from None
    # where an int8 calibration of these weights is kept (core/quantize.py)
    model.calibration_store = quantize.CalibrationStore.for_checkpoint(checkpoint, config_to_yaml(config))
    return model


# --------------------------------------------------------------------------- int8 calibration
# scikit-image's stock photographs (shipped in its wheel) that join each run's source in
# setting the int8 activation ranges (Animator._calibrate): a portrait, a still life, an
# animal, centre-cropped to the model's aspect.
CALIBRATION_PHOTOS = ("astronaut", "coffee", "chelsea")


@functools.lru_cache(maxsize=4)
def calibration_photos(size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """CALIBRATION_PHOTOS as (H, W, 3) uint8 frames of `size` (H, W)."""
    from skimage import data
    photos = []
    for name in CALIBRATION_PHOTOS:
        photo = getattr(data, name)()[..., :3]
        height, width = photo.shape[:2]
        keep_h, keep_w = (height, round(height * size[1] / size[0])) if width * size[0] > height * size[1] \
            else (round(width * size[0] / size[1]), width)
        top, left = (height - keep_h) // 2, (width - keep_w) // 2
        photos.append(source_crop.resize(np.ascontiguousarray(photo[top:top + keep_h, left:left + keep_w]), size))
    return tuple(photos)


# --------------------------------------------------------------------------- batches
def expand_motion(motion: Motion, batch: int) -> Motion:
    """Repeat a batch-1 motion dict along the batch axis (views, no copies)."""
    return {key: value.expand(batch, *value.shape[1:]) for key, value in motion.items()}


def batched(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Consecutive lists of `size` frames (the last one shorter), read lazily."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _even_width(height: int, shape: tuple[int, ...]) -> int:
    """The even width of a frame of `shape` (H, W, ...) enlarged to `height`."""
    return 2 * max(1, round(height * shape[1] / shape[0] / 2))


# --------------------------------------------------------------------------- the animator
class Animator:
    """Holds the source and the initial driving frame; turns driving batches into frames.

    The output for driving frame t depends only on the source, frame t and the initial
    frame (Eq. 8 compares frame t with the initial frame, never with t-1), so batches can
    be any size and frames can be fed in any order; except with `options.smooth`, whose
    filter (fomm/smoothing.py, its state held here) needs the frames in time order, once each,
    at `fps` frames per second (None: 25). `source` and `initial` are (1, 3, H, W)
    tensors in [0, 1] (`from_frames` takes uint8 frames); `kp_size` and `colormap` draw
    keypoints with `options.show_keypoints` (a config's `visualizer_params`); `paste_back`
    (fomm.source_crop.PasteBack) puts each result back into the whole photo.
    """

    def __init__(self, model: MotionTransferModel, source: torch.Tensor, initial: torch.Tensor,
                 options: AnimateOptions, device: torch.device, kp_size: int = 5,
                 colormap: str = "gist_rainbow", paste_back: source_crop.PasteBack | None = None,
                 fps: float | None = None):
        self.options, self.device = options, device
        self.kp_size, self.colormap = kp_size, colormap
        self.source_frame = to_uint8(source[:1])[0]              # (H, W, 3): the side-by-side panel
        self.precision = precision_of(options, device)
        # frames per model call, from the path asked for (int8 falling back keeps it)
        self.batch_size = batch_size(options, device, self.precision)
        self.weights_source = getattr(model, "weights_source", None)  # named if outputs are not finite
        # the path's inference model: a copy with BatchNorm folded (Precision.inference_model)
        self.model = model = self.precision.inference_model(model)
        self.source = self.precision.prepare_input(source)      # (1, 3, H, W)
        with self.precision.keypoint_context():
            self.motion_source = model.detect(self.source)
            self.motion_initial = model.detect(self.precision.prepare_input(initial))
        with self.precision.context():  # inference tensors: a network in transfer (AVD) needs inference mode
            self._transfer(self.motion_initial)  # a mode the family lacks (avd) fails before any frame
        self.paste_back = paste_back
        self.smoother = smoothing.for_model(model, self.motion_initial, fps, options.smooth_strength) \
            if options.smooth else None
        # int8: the stored calibration of the weights, else one on driving frames (`calibrate`:
        # frames spread over the clip; else the first driving batch)
        self.calibration = getattr(model, "calibration_store", None)  # set by load_animation_model
        self.float_model = model  # what a batch outside the calibrated ranges runs (auto's int8)
        self.frames_outside = 0   # frames that did
        self.stored: Path | None = None  # the stored calibration int8 runs (made on another run's inputs)
        self.calibrating = self.precision.int8 and not self._stored_int8()

    @classmethod
    def from_frames(cls, model: MotionTransferModel, source: np.ndarray, initial: np.ndarray,
                    options: AnimateOptions, device: torch.device | None = None,
                    config: Config | None = None, **extra) -> "Animator":
        """An animator from (H, W, 3) uint8 frames at the model's size, on the model's device
        unless `device` says otherwise; keypoints drawn as `config.visualizer_params` says;
        `extra`: paste_back, fps (see the class)."""
        device = model_device(model) if device is None else device
        drawing = {}
        if config is not None:
            drawing = {"kp_size": config.visualizer_params.kp_size,
                       "colormap": config.visualizer_params.colormap}
        return cls(model, to_tensor(source, device), to_tensor(initial, device), options, device, **drawing,
                   **extra)

    def motion(self, driving: torch.Tensor, valid: int | None = None) -> tuple[Motion, Motion]:
        """(detected driving motion, transferred motion) for a batch (B, 3, H, W); with
        `options.smooth` the detected motion is filtered, and `valid` says how many of the
        B frames are real (the rest pad the batch and leave the filter's state alone)."""
        with self.precision.keypoint_context():
            motion_driving = self.model.detect(self.precision.prepare_input(driving))
        if self.smoother is not None:
            motion_driving = self.smoother(motion_driving, valid)
        return motion_driving, self._transfer(motion_driving)

    def _transfer(self, motion_driving: Motion, motion_source: Motion | None = None) -> Motion:
        """The family's transfer (the options' mode) of a driving batch's motion onto the
        source's (or onto `motion_source`, one per frame: the int8 calibration's photographs)."""
        batch = next(iter(motion_driving.values())).shape[0]
        return self.model.transfer(
            expand_motion(self.motion_source, batch) if motion_source is None else motion_source, motion_driving,
            expand_motion(self.motion_initial, batch), relative=self.options.relative,
            relative_jacobian=self.options.relative_jacobian,
            adapt_movement_scale=self.options.adapt_scale, avd=self.options.avd)

    def _stored_int8(self) -> bool:
        """Put the stored int8 calibration in place (or the float fallback it measured); False
        when there is none to read."""
        found = self.calibration.find() if self.calibration is not None else None
        if found is None:
            return False
        try:
            stored = quantize.Calibration.read(found)
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("int8: calibration %s unreadable (%s); calibrating again", found, err)
            return False
        self._use_int8(stored.budget, lambda: stored.apply(precision.module_copy(self.model)))
        self.stored = found
        return True

    def _use_int8(self, budget: quantize.Budget, quantised) -> None:
        self.precision = self.precision.within_budget(budget.holds, str(budget))
        if self.precision.int8:
            self.model = quantised()

    @property
    def guarded(self) -> bool:
        """Whether batches outside the calibration's ranges run on the float path: auto's
        int8 (int8 asked for by name runs every batch in int8)."""
        return self.precision.int8 and self.precision.budget_decides

    def calibrate(self, frames: Sequence[np.ndarray]) -> None:
        """Calibrate int8 on these driving frames ((H, W, 3) uint8 at the model's size) before
        the first batch, when the path is int8 without a stored calibration: frames spread
        over the clip (`prepare` samples them) see the motion's whole range, where the first
        batch sees its start only."""
        if self.calibrating:
            self._calibrate(self.precision.prepare_input(to_tensor(np.stack(frames), self.device)))

    def verify(self, frames: Sequence[np.ndarray]) -> None:
        """Under auto with a stored calibration (measured on another run's source and clip):
        the int8 path's error against fp32 on this run's source and these driving frames
        ((H, W, 3) uint8 at the model's size); the float path for the run where it breaks the
        budget (a tiny FOMM trained on real faces, ranges inside their calibration, reached
        p99 4.2/255 on one portrait and clip of six tried). Costs the frames once in int8 and
        once in fp32 (`prepare`: VERIFY_FRAMES frames), the first time only: the verdict is
        kept beside the calibration, keyed by the source, the frames and the motion options."""
        if not (self.guarded and self.stored):
            return
        key = hashlib.sha256(np.ascontiguousarray(self.source_frame).tobytes() + np.stack(frames).tobytes() + repr(
            (self.options.relative, self.options.relative_jacobian, self.options.adapt_scale, self.options.avd,
             self.options.smooth, self.options.smooth_strength)).encode()).hexdigest()
        budget = quantize.remembered_budget(self.stored, key)
        if budget is None:
            budget = self._measure_budget(frames)
            if budget is None:
                return  # batches like these run the float path anyway
            quantize.remember_budget(self.stored, key, budget)
        self.precision = self.precision.within_budget(budget.holds, f"this run's source and {budget.frames} of its "
                                                                   f"driving frames: {budget}")
        if not self.precision.int8:
            self.model = self.float_model

    def _measure_budget(self, frames: Sequence[np.ndarray]) -> quantize.Budget | None:
        """int8 against fp32 on these driving frames with this source; None where the frames
        leave the calibrated ranges."""
        driving = self.precision.prepare_input(to_tensor(np.stack(frames), self.device))
        with self.precision.context():  # int8's: inference mode, no autocast (fp32 reference)
            transferred = self.motion(driving, valid=0)[1]
            batch = driving.shape[0]
            inputs = (self.source.expand(batch, -1, -1, -1), expand_motion(self.motion_source, batch), transferred)
            try:
                with quantize.range_guard():
                    fast = self.model.generate(*inputs)["prediction"]
            except quantize.OutOfRange:
                return None
            reference = self.float_model.generate(*inputs)["prediction"]
        return quantize.Budget.measure(fast, reference)

    def _calibrate(self, driving: torch.Tensor) -> None:
        """The int8 calibration on these driving frames (core/quantize.calibrate), stored for
        the next run when the weights came from a checkpoint.

        Every other frame (0, 2, ...) animates this run's source to set the activation
        ranges, and so does each stock photograph (`calibration_photos`) as the source of one
        of those frames: a stored calibration serves the next run's photo too (ranges from
        one portrait alone clipped others': p99 up to 49/255 on a tiny FOMM trained on real
        faces). The frames between them (1, 3, ...; frame 0 when it is the only one) measure
        the error budget with this run's source."""
        batch = driving.shape[0]
        photos = [self.precision.prepare_input(to_tensor(photo, self.device))
                  for photo in calibration_photos(tuple(self.source.shape[-2:]))]
        sources = [self.source] + photos
        shown = list(range(0, batch, 2))
        parts = {quantize.RANGES: [(0, j) for j in shown] + [(1 + k, shown[k % len(shown)]) for k in range(len(photos))],
                 quantize.BUDGET: [(0, j) for j in range(1, batch, 2)] or [(0, 0)]}
        inputs = {}

        def detect():
            detected = self.motion(driving, valid=0)[0]  # valid=0: --smooth's state stays
            with self.precision.keypoint_context():
                source_motions = [self.motion_source] + [self.model.detect(photo) for photo in photos]
            for part, pairs in parts.items():
                frames = torch.tensor([j for _, j in pairs])
                source_motion = {key: torch.cat([source_motions[i][key] for i, _ in pairs])
                                 for key in self.motion_source}
                inputs[part] = (torch.cat([sources[i] for i, _ in pairs]), source_motion,
                                self._transfer({key: value[frames] for key, value in detected.items()}, source_motion))

        def generate(model, part: str):
            from fomm.checkpoint import check_finite_output
            prediction = model.generate(*inputs[part])["prediction"]
            # broken weights stop before a calibration of them is stored beside the checkpoint
            check_finite_output(prediction, self, f"the int8 calibration's {prediction.shape[0]} frames")
            return prediction
        calibrated = quantize.calibrate(self.model, detect, generate, self.calibration)
        self.calibrating = False
        if calibrated is None:
            self.precision = self.precision.without_int8(f"{type(self.model).__name__} has no convolution block "
                                                         "outside motion estimation")
            return
        quantised, budget = calibrated
        self._use_int8(budget, lambda: quantised)

    def __call__(self, driving: torch.Tensor, valid: int | None = None) -> dict[str, torch.Tensor | Motion]:
        """Predictions (B, 3, H, W) and the motions behind them for a driving batch (`valid`:
        see `motion`)."""
        driving = self.precision.prepare_input(driving)
        if self.calibrating:
            self._calibrate(driving)
        with self.precision.context():
            motion_driving, transferred = self.motion(driving, valid)
            out = self._generate(transferred)
        from fomm.checkpoint import check_finite_output
        prediction = out["prediction"].float()
        check_finite_output(prediction, self, f"a batch of {driving.shape[0]} driving frames")
        return {"prediction": prediction, "motion_driving": motion_driving,
                "motion_transferred": transferred}

    def _generate(self, transferred: Motion) -> dict[str, torch.Tensor]:
        """The generator's outputs for a batch's transferred motion; under auto's int8 a batch
        whose int8 regions would see inputs beyond their calibrated ranges runs on the float
        path (quantize.range_guard), with a warning the first time."""
        batch = next(iter(transferred.values())).shape[0]
        inputs = (self.source.expand(batch, -1, -1, -1), expand_motion(self.motion_source, batch), transferred)
        if not self.guarded:
            return self.model.generate(*inputs)
        try:
            with quantize.range_guard():
                return self.model.generate(*inputs)
        except quantize.OutOfRange as err:
            fallback = self.precision.fallback
            if not self.frames_outside:
                logger.warning("int8: %s (driving frames unlike the calibration's); such batches run %s",
                               err, fallback)
            self.frames_outside += batch
            with fallback.autocast():
                return self.float_model.generate(*inputs)

    def predict(self, driving: Sequence[np.ndarray], valid: int | None = None) -> tuple[np.ndarray, dict]:
        """(B, H, W, 3) uint8 predictions for driving frames (H, W, 3) uint8, and the model's
        outputs (`__call__`); returns once the device is done."""
        outputs = self(to_tensor(driving, self.device), valid)
        return to_uint8(outputs["prediction"]), outputs

    def compose(self, results: np.ndarray, driving: Sequence[np.ndarray], outputs: dict
                ) -> Iterator[np.ndarray]:
        """Output frames (H, W', 3) uint8: the result alone, or source | driving | result panels
        (each the model's input size, no borders, so panel i is columns [i*W, (i+1)*W)).
        With paste-back the result is the whole photo (`paste_back_panels` for the layout)."""
        from fomm.visualize import draw_keypoints
        kp_result = kp_driving = kp_source = None
        if self.options.show_keypoints:
            kp_result = self.model.keypoints(outputs["motion_transferred"])
            kp_driving = self.model.keypoints(outputs["motion_driving"])
            kp_source = self.model.keypoints(self.motion_source)
        for i, result in enumerate(results):
            if kp_result is not None:
                result = draw_keypoints(result, kp_result[i], self.kp_size, self.colormap)
            if self.paste_back is not None:
                result = self.paste_back(result)
            if self.options.layout == "result":
                yield result
                continue
            drive, src = driving[i], self.source_frame
            if kp_driving is not None:
                drive = draw_keypoints(drive, kp_driving[i], self.kp_size, self.colormap)
            if kp_source is not None:
                src = draw_keypoints(src, kp_source[0], self.kp_size, self.colormap)
            if self.paste_back is not None:
                src, drive = self.paste_back_panels(src, drive, kp_source is not None)
            yield np.concatenate([src, drive, result], axis=1)

    def paste_back_panels(self, source: np.ndarray, driving: np.ndarray, keypoints: bool
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Side-by-side with paste-back: the photo as it is (with keypoints: the source crop
        the model saw, pasted back, so its keypoints show) and the driving frame the model saw,
        enlarged to the photo's height (its width rounded to even)."""
        height = self.paste_back.shape[0]
        photo = self.paste_back(source) if keypoints else self.paste_back.even(self.paste_back.photo)
        return photo, source_crop.resize(driving, (height, _even_width(height, driving.shape)))

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the frames `compose` yields."""
        height, width = self.source_frame.shape[:2]
        panels = 3 if self.options.layout == "side-by-side" else 1
        if self.paste_back is None:
            return height, width * panels
        photo_height, photo_width = self.paste_back.shape
        if panels == 1:
            return photo_height, photo_width
        return photo_height, 2 * photo_width + _even_width(photo_height, self.source_frame.shape)

    def animate(self, driving: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """The output frames for a batch of driving frames (H, W, 3) uint8 (predict, compose)."""
        results, outputs = self.predict(driving)
        return self.compose(results, driving, outputs)


# --------------------------------------------------------------------------- a whole file
@dataclass
class AnimationResult:
    path: Path
    num_frames: int
    fps: float
    best_frame: int
    seconds: float
    has_audio: bool
    frame_size: tuple[int, int] = field(default=(0, 0))

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / max(self.seconds, 1e-9)

    def summary(self) -> str:
        """The line `pipeline run animate` prints."""
        return (f"{self.path}: {self.num_frames} frames at {self.fps:.3f} fps, "
                f"{self.frame_size[1]}x{self.frame_size[0]}, audio={'yes' if self.has_audio else 'no'}, "
                f"{self.frames_per_second:.1f} frames/s")


@dataclass
class AnimationPlan:
    """Everything checked and loaded before the first frame is written (see `prepare`)."""
    model: MotionTransferModel
    config: Config
    driving_path: Path
    out_path: Path
    options: AnimateOptions
    fps: float
    num_frames: int                     # frames to animate: [0, num_frames)
    has_audio: bool
    driving_box: source_crop.CropBox | None
    best_frame: int
    animator: Animator                  # holds the cropped source (animator.source_frame)


# progress(done, total): frames written so far of the frames the run animates
Progress = Callable[[int, int], None]


def prepare(model: MotionTransferModel, config: Config, source_path: str | Path,
            driving_path: str | Path, out_path: str | Path,
            options: AnimateOptions = AnimateOptions()) -> AnimationPlan:
    """Check every input, crop the source, fix the driving crop and the initial frame.

    Everything that can be wrong with the inputs raises UserError here, before any file
    is opened for writing.
    """
    from core.outputs import check_out_file
    out_path, driving_path = Path(out_path), Path(driving_path)
    check_options(options, out_path)
    check_out_file(out_path, {"--source": source_path, "--driving": driving_path})
    size = tuple(config.dataset_params.frame_shape[:2])
    source_image = source_crop.load_source(source_path)
    info = media.probe(driving_path)
    end = info.num_frames if options.max_frames is None else min(info.num_frames, options.max_frames)
    if end <= 0:
        raise UserError(f"driving video {str(driving_path)!r} has zero frames")

    source_box = source_crop.source_box(source_image, options.crop, options.crop_increase)
    source = source_crop.prepare(source_image, source_box, size)  # (H, W, 3) uint8
    driving_box, sampled = None, None
    if options.crop != "none":
        sampled = source_crop.sample_frames(driving_path, info.num_frames, end=end)
        driving_box = source_crop.driving_box(sampled, options.crop, options.crop_increase)
    best = 0
    if options.find_best_frame:
        best = _best_frame(source_image, source_box, driving_path, driving_box, end, options)
    initial = source_crop.prepare(media.nth_frame(driving_path, best), driving_box, size)
    paste_back = None
    if source_crop.wants_paste_back(options.paste_back, options.crop, source_image.shape, size,
                                    options.layout == "side-by-side"):
        paste_back = source_crop.PasteBack(source_image, source_box, even=out_path.suffix.lower() == ".mp4")
    animator = Animator.from_frames(model, source, initial, options, model_device(model), config,
                                    paste_back=paste_back, fps=info.fps)
    if animator.calibrating or (animator.guarded and animator.stored):
        # int8: calibrated on frames spread over the clip, or a stored calibration verified on a few of them
        if sampled is None or len(sampled) < min(CALIBRATION_FRAMES, end):
            sampled = source_crop.sample_frames(driving_path, info.num_frames, CALIBRATION_FRAMES, end=end)
        chosen = np.linspace(0, len(sampled) - 1, min(CALIBRATION_FRAMES, len(sampled))).round().astype(int)
        spread = [source_crop.prepare(sampled[i], driving_box, size) for i in chosen]
        if spread and animator.calibrating:  # none decodable: the loop says so (or calibrates on what it reads)
            animator.calibrate(spread)
        elif spread:
            inner = sorted({round(i) for i in np.linspace(0, len(spread) - 1, VERIFY_FRAMES + 2)[1:-1]})
            animator.verify([spread[i] for i in inner])
    has_audio = options.audio and info.has_audio and out_path.suffix.lower() == ".mp4"
    return AnimationPlan(model, config, driving_path, out_path, options, info.fps, end, has_audio,
                         driving_box, best, animator)


def run_plan(plan: AnimationPlan, progress: Progress | None = None) -> AnimationResult:
    """Animate and write `plan.out_path`; it appears only when complete (video and audio).

    An error on the way aborts the writer and removes every temporary file.
    `progress(done, total)` is called after each batch.
    """
    from core import provenance
    start = time.perf_counter()
    size = tuple(plan.config.dataset_params.frame_shape[:2])
    generation = provenance.generation_or_warn(plan.options.provenance, plan.config,
                                               plan.driving_path.name, plan.out_path.name)
    with media.atomic_path(plan.out_path) as final:
        video_path = media.temp_file(plan.out_path.parent, f".{plan.out_path.stem}.", ".video.mp4") \
            if plan.has_audio else final
        try:
            with media.VideoWriter(video_path, plan.fps) as writer:
                done = _animate_frames(plan.animator, plan.driving_path, plan.driving_box, plan.num_frames,
                                       size, provenance.marking(writer, generation), progress)
            if plan.has_audio:
                media.mux_audio(video_path, plan.driving_path, final, done / plan.fps)
            provenance.finalize(final, generation)
        finally:
            if plan.has_audio:
                video_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    if plan.animator.frames_outside:
        logger.info("int8: %d of %d frames ran %s, outside the calibrated ranges", plan.animator.frames_outside,
                    done, plan.animator.precision.fallback)
    logger.info("animate: %d frames at %.2f fps -> %s in %.1f s (%.1f frames/s)",
                done, plan.fps, plan.out_path, seconds, done / max(seconds, 1e-9))
    return AnimationResult(plan.out_path, done, plan.fps, plan.best_frame, seconds, plan.has_audio,
                           plan.animator.frame_shape)


def animate(model: MotionTransferModel, config: Config, source_path: str | Path,
            driving_path: str | Path, out_path: str | Path,
            options: AnimateOptions = AnimateOptions(),
            progress: Progress | None = None) -> AnimationResult:
    """Write `out_path` (mp4/gif): `source_path` moved like `driving_path` (prepare + run_plan)."""
    return run_plan(prepare(model, config, source_path, driving_path, out_path, options), progress)


def _animate_frames(animator: Animator, driving_path, driving_box, end, size, writer, progress) -> int:
    """Stream driving frames [0, end) through the animator in batches into `writer`."""
    done = 0
    frames = (source_crop.prepare(f, driving_box, size) for f in media.iter_frames(driving_path, 0, end))
    for batch in batched(frames, animator.batch_size):
        for frame in animator.animate(batch):
            writer.write(frame)
        done += len(batch)
        if progress is not None:
            progress(done, end)
    if done == 0:
        raise UserError(f"driving video {str(driving_path)!r} has zero decodable frames")
    return done


def _best_frame(source_image, source_box, driving_path, driving_box, end, options) -> int:
    """Best-frame search on crops at 256 px (dlib's detector needs faces of ~80 px)."""
    from fomm.best_frame import find_best_frame
    side = (256, 256)
    source = source_crop.prepare(source_image, source_box, side) if source_box else source_image
    frames = (source_crop.prepare(f, driving_box, side) if driving_box else f
              for f in media.iter_frames(driving_path, 0, end))
    return find_best_frame(source, frames, options.landmarks)
