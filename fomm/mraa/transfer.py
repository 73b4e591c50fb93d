"""MRAA's relative animation mode (animate.py get_animation_region_params, mode 'relative'), shared
by the torch model (fomm/mraa/model.py) and the onnxruntime runner (fomm/mraa/export.py)."""
from __future__ import annotations

from fomm.api import Motion
from fomm.blocks import at_least_fp32, full_precision, inverse_2x2
from fomm.model import movement_scale


def relative_motion(motion_source: Motion, motion_driving: Motion, motion_initial: Motion) -> Motion:
    """animate.py's relative mode: shift p_S + (p_D - p_D0) sqrt(area_S) / sqrt(area_D0) (convex
    hulls of the first sample's shifts; 1 when the initial frame's hull is degenerate, where the
    original's scipy ConvexHull raises), affine A_D A_D0^-1 A_S; the driving frame's covariances
    and heat maps unchanged. Float32 at least."""
    with full_precision(motion_driving["shift"]):
        out = dict(motion_driving)
        scale = movement_scale({"value": motion_source["shift"]}, {"value": motion_initial["shift"]})
        shift = at_least_fp32(motion_driving["shift"]) - at_least_fp32(motion_initial["shift"])
        out["shift"] = shift * scale + at_least_fp32(motion_source["shift"])
        if "affine" in motion_driving:
            change = at_least_fp32(motion_driving["affine"]) @ inverse_2x2(at_least_fp32(motion_initial["affine"]))
            out["affine"] = change @ at_least_fp32(motion_source["affine"])
    return out
