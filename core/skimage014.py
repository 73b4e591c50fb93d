"""scikit-image 0.14's `resize` arithmetic on uint8 RGB frames, reproduced with numpy/scipy.

The original preprocessing (video-preprocessing's load_videos.py and crop_*.py, pinned to
scikit-image 0.14.2 and scipy 1.2) saves `img_as_ubyte(resize(crop, shape, anti_aliasing=True))`
of each uint8 crop. In 0.14.2 that call does, in this order:

1. mode defaults to 'constant' (cval 0): the image is padded with zeros, not reflected;
2. anti-aliasing: `ndi.gaussian_filter(image, sigma, mode='constant', cval=0)` on the raw
   uint8 crop, sigma = max(0, (factor - 1) / 2) per axis (factor = input / output size; the
   channel axis has factor 1, so sigma 0 and no filtering). scipy filters one axis after the
   other (rows, then columns) into a uint8 output, and its C code stores each pass with a
   plain cast: every pass is truncated to an integer, not rounded;
3. `warp` with order 1: the filtered image times 1/255 (float64), sampled bilinearly at
   x_src = factor * (x + 0.5) - 0.5 per axis, zero outside the image (the Cython warp: floor
   and ceil of the coordinate, columns weighted first, then rows);
4. the result clipped to the [min, max] of the warp's input (a pixel that is exactly 0 stays
   0 when 0 lies outside that range);
5. `img_as_ubyte`: times 255 in float32, rounded half to even, clipped to [0, 255].

Downsampling never samples outside the image; upsampling does at the border (the zero padding
darkens the outer pixel, then step 4 lifts it back to the image's minimum).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def gaussian_sigmas(input_size: Sequence[int], output_size: Sequence[int]) -> tuple[float, float]:
    """The anti-aliasing standard deviation per spatial axis: max(0, (factor - 1) / 2)."""
    return tuple(max(0.0, (i / o - 1) / 2) for i, o in zip(input_size, output_size))


def _gaussian_pass(image: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """One gaussian pass with zero padding into uint8, as scipy stores it: truncated, not
    rounded (tests/test_prepare_original.py checks this against the formula written out)."""
    from scipy import ndimage
    if sigma <= 1e-15 or int(4.0 * sigma + 0.5) == 0:
        return image  # scipy skips sigma ~ 0; a radius of 0 is the one-tap kernel [1.0]
    return ndimage.gaussian_filter1d(image, sigma, axis=axis, mode="constant", cval=0.0,
                                     truncate=4.0, output=np.uint8)


def _bilinear_taps(input_size: int, output_size: int) -> tuple[np.ndarray, ...]:
    """Source indices (floor, ceil), their weights and in-image masks along one axis."""
    factor = input_size / output_size
    coord = factor * (np.arange(output_size, dtype=np.float64) + 0.5) - 0.5
    low, high = np.floor(coord), np.ceil(coord)
    weight = coord - low
    low, high = low.astype(np.int64), high.astype(np.int64)
    low_in, high_in = (low >= 0) & (low < input_size), (high >= 0) & (high < input_size)
    return np.clip(low, 0, input_size - 1), np.clip(high, 0, input_size - 1), weight, low_in, high_in


def _interpolate_axis(image: np.ndarray, output_size: int, axis: int,
                      scale: float = 1.0) -> np.ndarray:
    """Linear interpolation along `axis` with zeros outside, as bilinear_interpolation
    weighs one axis: (1 - w) * p[floor] + w * p[ceil], where p = image * scale (gathered
    first, then scaled: the same products, on fewer pixels)."""
    low, high, weight, low_in, high_in = _bilinear_taps(image.shape[axis], output_size)
    shape = [1] * image.ndim
    shape[axis] = output_size
    out = np.multiply(np.take(image, low, axis=axis), scale, dtype=np.float64)
    out *= low_in.reshape(shape)
    out *= (1 - weight).reshape(shape)
    high_values = np.multiply(np.take(image, high, axis=axis), scale, dtype=np.float64)
    high_values *= high_in.reshape(shape)
    high_values *= weight.reshape(shape)
    out += high_values
    return out


def resize(frame: np.ndarray, size: Sequence[int], anti_aliasing: bool = True) -> np.ndarray:
    """`img_as_ubyte(skimage.transform.resize(frame, size, anti_aliasing=...))` of scikit-image
    0.14.2 (module doc): (H, W, 3) uint8 -> (h, w, 3) uint8."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3:
        raise ValueError(f"frame of {frame.dtype} {frame.shape}: expected (H, W, C) uint8")
    height, width = int(size[0]), int(size[1])
    filtered = frame
    if anti_aliasing:
        for axis, sigma in enumerate(gaussian_sigmas(frame.shape[:2], (height, width))):
            filtered = _gaussian_pass(filtered, sigma, axis)
    scale = 1.0 / 255  # img_as_float of the filtered uint8 image multiplies by 1/255
    # The Cython warp weighs columns first, then rows: the same order keeps the same sums.
    out = _interpolate_axis(_interpolate_axis(filtered, width, axis=1, scale=scale), height, axis=0)
    low, high = filtered.min() * scale, filtered.max() * scale
    zeros = out == 0 if not low <= 0 <= high else None
    np.clip(out, low, high, out=out)
    if zeros is not None:
        out[zeros] = 0
    out = np.rint(np.multiply(out, 255, dtype=np.float32))
    return np.clip(out, 0, 255).astype(np.uint8)
