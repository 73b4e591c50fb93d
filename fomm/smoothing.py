"""Steady motion (`animate --smooth`): the driving motion filtered over time before transfer.

A keypoint detector run frame by frame gives keypoints that tremble by a fraction of a pixel
from frame to frame even on a still head, and the generator turns that tremble into a face
that jitters and a background that wobbles. `--smooth` runs each smoothable entry of the
driving motion (`MotionTransferModel.smoothable`: FOMM's keypoints and jacobians, Monkey-Net's
means and variances, MRAA's shifts, covariances and affines, TPSMM's keypoints; never a
dense map such as X2Face's driving frame) through a One-Euro filter along time, element by
element, before the family's `transfer()`.

The One-Euro filter (Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based
Low-pass Filter for Noisy Input in Interactive Systems", CHI 2012) is a first-order low-pass
filter whose cutoff rises with the signal's speed, so a still head is smoothed hard and a
fast turn is followed with little lag. With sampling rate r (the driving video's fps) and
the smoothing factor of a cutoff f, alpha(f) = 1 / (1 + r / (2 pi f)), each new sample x_i
gives, for every element independently:

    dx_i     = (x_i - xhat_{i-1}) * r                        the speed (units per second)
    dxhat_i  = alpha(d_cutoff) dx_i + (1 - alpha(d_cutoff)) dxhat_{i-1}
    f_i      = min_cutoff + beta |dxhat_i|                    the adaptive cutoff (Hz)
    xhat_i   = alpha(f_i) x_i + (1 - alpha(f_i)) xhat_{i-1}

with xhat_0 = x_0 and dxhat_0 = 0 (the paper's pseudo-code). `--smooth-strength s` divides
both `min_cutoff` and `beta` by s: 2 smooths harder (more lag), 0.5 lighter. The defaults
(MIN_CUTOFF, BETA, D_CUTOFF) were chosen with benchmarks/smoothing.py (its RESULTS.md
section): the jitter metric falls by about half at an AKD cost under a tenth of a pixel.

The filter is deterministic (element-wise float32 arithmetic, one frame after another) and
keeps its state between calls, so a video fed in batches of 1 or of 8 gives the same output.
Because of that state, frames must be fed in time order when smoothing is on (the Animator
otherwise accepts any order, fomm/animation.py).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from core.errors import UserError

Motion = dict[str, torch.Tensor]

MIN_CUTOFF = 1.0   # Hz: the cutoff of a still signal
BETA = 5.0         # Hz per (unit / s): how fast the cutoff rises with speed
D_CUTOFF = 1.0     # Hz: the cutoff of the speed estimate (the paper's value)
DEFAULT_RATE = 25.0  # fps assumed where the caller knows none


def check_strength(strength: float) -> float:
    """`--smooth-strength`: a finite number above 0."""
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength > 0):
        raise UserError(f"--smooth-strength {strength}: expected a number above 0 (1 is the default; "
                        "2 smooths harder, 0.5 lighter)")
    return float(strength)


def alpha(rate: float, cutoff: torch.Tensor | float) -> torch.Tensor | float:
    """The smoothing factor of a first-order low-pass at `cutoff` Hz sampled at `rate` Hz:
    1 / (1 + tau / T_e) with tau = 1 / (2 pi cutoff) and T_e = 1 / rate."""
    return 1.0 / (1.0 + rate / (2 * math.pi * cutoff))


class OneEuroFilter:
    """The One-Euro filter of one signal: tensors of a fixed shape, filtered element-wise,
    in float32, with its state carried from call to call."""

    def __init__(self, rate: float, min_cutoff: float = MIN_CUTOFF, beta: float = BETA,
                 d_cutoff: float = D_CUTOFF):
        if not rate > 0:
            raise UserError(f"smoothing: frame rate {rate}: expected a positive number of frames per second")
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = float(rate), float(min_cutoff), float(beta), float(d_cutoff)
        self.value: torch.Tensor | None = None   # xhat_{i-1}
        self.speed: torch.Tensor | None = None   # dxhat_{i-1}

    def reset(self) -> None:
        self.value = self.speed = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Filter one sample (any shape, the same at every step); returns xhat_i (float32)."""
        x = x.detach().to(torch.float32)
        if self.value is None:
            self.value, self.speed = x.clone(), torch.zeros_like(x)
            return self.value.clone()
        # a x + (1 - a) xhat written as xhat + a (x - xhat): the same low-pass, and a constant
        # signal comes out bit for bit (x - xhat is exactly 0)
        change = x - self.value
        self.speed = self.speed + alpha(self.rate, self.d_cutoff) * (change * self.rate - self.speed)
        a = alpha(self.rate, self.min_cutoff + self.beta * self.speed.abs())
        self.value = self.value + a * change
        return self.value.clone()

    def state(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.value, self.speed

    def restore(self, state: tuple[torch.Tensor | None, torch.Tensor | None]) -> None:
        self.value, self.speed = state

    def __call__(self, sequence: torch.Tensor, valid: int | None = None) -> torch.Tensor:
        """Filter the samples of `sequence` (T, ...) in order; returns (T, ...) in its dtype.
        With `valid`, only the first `valid` samples advance the state (the rest, padding,
        are filtered from it and forgotten; 0: a look that changes nothing)."""
        count = len(sequence) if valid is None else valid
        out, kept = [], self.state()
        for index, sample in enumerate(sequence):
            if index == count:
                kept = self.state()
            out.append(self.step(sample))
        if count < len(sequence):
            self.restore(kept)
        return torch.stack(out).to(sequence.dtype) if out else sequence


def smoothable_keys(model, motion: Motion) -> tuple[str, ...]:
    """The entries of `motion` the model's family lets `--smooth` filter (its `smoothable`;
    a model outside the contract, such as the ONNX runner, gets the contract's default)."""
    from fomm.api import parameter_entries
    method = getattr(model, "smoothable", None)
    return tuple(method(motion)) if method is not None else parameter_entries(motion)


def for_model(model, motion: Motion, rate: float | None, strength: float) -> "MotionSmoother":
    """The smoother of `model`'s motion dicts shaped like `motion`; UserError for a family
    whose motion has nothing to smooth (X2Face drives with the frame itself)."""
    keys = smoothable_keys(model, motion)
    if not keys:
        raise UserError(f"--smooth: {getattr(model, 'name', type(model).__name__)} drives its generator with "
                        f"{sorted(motion)} (a dense map, no keypoints), which has nothing to smooth; drop --smooth")
    return MotionSmoother(keys, DEFAULT_RATE if rate is None else rate, strength)


class MotionSmoother:
    """One-Euro filters for the entries `keys` of a family's motion dicts (B, ...), B
    consecutive frames; other entries pass through unchanged."""

    def __init__(self, keys: Iterable[str], rate: float = DEFAULT_RATE, strength: float = 1.0,
                 min_cutoff: float = MIN_CUTOFF, beta: float = BETA, d_cutoff: float = D_CUTOFF):
        strength = check_strength(strength)
        self.keys = tuple(keys)
        self.filters = {key: OneEuroFilter(rate, min_cutoff / strength, beta / strength, d_cutoff)
                        for key in self.keys}

    def reset(self) -> None:
        for filt in self.filters.values():
            filt.reset()

    def __call__(self, motion: Motion, valid: int | None = None) -> Motion:
        """The motion of B frames in time order with its smoothable entries filtered; `valid`:
        only the first `valid` frames are real (the rest pad a batch: they do not advance the state)."""
        return {key: self.filters[key](value, valid) if key in self.filters else value
                for key, value in motion.items()}
