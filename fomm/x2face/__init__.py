"""X2Face (Wiles, Koepke and Zisserman, ECCV 2018): config.py (its config section), unet.py (the
two pix2pix U-Nets), model.py (the family: warping, the L1 loss, the released file's names)."""
