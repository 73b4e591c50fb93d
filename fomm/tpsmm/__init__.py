"""TPSMM: the Thin-Plate Spline Motion Model (Zhao and Zhang, "Thin-Plate Spline Motion Model
for Image Animation", CVPR 2022; github.com/yoyo-nb/Thin-Plate-Spline-Motion-Model),
re-implemented with the original's maths and parameter names.

Files: `config.py` (the family's config section and the original yamls' translation),
`tps.py` (thin-plate-spline transformations, Eq. 1-2), `hourglass.py` (the InstanceNorm
blocks and hourglass), `keypoint_detector.py`, `bg_motion_predictor.py`, `dense_motion.py`
(Eq. 3-8), `inpainting.py`, `avd_network.py`, `losses.py` (Eq. 9-12) and `model.py` (the
`fomm.api` contract). Importing this package imports no torch module.
"""
