"""MRAA, Motion Representations for Articulated Animation (Siarohin, Woodford, Ren, Chai and
Tulyakov, CVPR 2021; github.com/snap-research/articulated-animation), re-implemented with the
original's maths and parameter names: regions (heat maps -> shift, covariance and a PCA affine),
a background motion, a pixelwise flow predictor, a generator with occlusion-blended skips, and
the animation-via-disentanglement network of its second training stage.

Layer: a model family (fomm/), on core/. Importing this package imports no torch module:
config.py is plain dataclasses, model.py and the module files are imported on use.
"""
