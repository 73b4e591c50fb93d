"""TPSMM's relative motion transfer (demo.py's relative_kp), shared by the torch model and the
onnxruntime runner (fomm/tpsmm/onnx.py) so both animate with the very same code."""
from __future__ import annotations

import math

from fomm.api import Motion
from fomm.blocks import at_least_fp32, full_precision
from fomm.model import convex_hull_area


def relative_motion(kp_source: Motion, kp_driving: Motion, kp_initial: Motion, adapt_movement_scale: bool) -> Motion:
    """demo.py's relative_kp: kp_source + (kp_driving - kp_initial) * scale, scale =
    sqrt(hull area of the first source's keypoints) / sqrt(that of the initial frame's)."""
    scale = 1.0
    if adapt_movement_scale:
        source_area = convex_hull_area(kp_source["fg_kp"][0].detach().double().cpu().numpy())
        initial_area = convex_hull_area(kp_initial["fg_kp"][0].detach().double().cpu().numpy())
        scale = math.sqrt(source_area) / math.sqrt(initial_area) if initial_area > 0 else 1.0
    with full_precision(kp_driving["fg_kp"]):
        driving, initial = at_least_fp32(kp_driving["fg_kp"]), at_least_fp32(kp_initial["fg_kp"])
        return {"fg_kp": (driving - initial) * scale + at_least_fp32(kp_source["fg_kp"])}
