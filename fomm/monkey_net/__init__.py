"""Monkey-Net (Siarohin et al., "Animating Arbitrary Objects via Deep Motion Transfer", CVPR 2019):
config.py (its config section and the original yamls' translation), keypoints.py (the keypoint
maths), modules.py (the networks), model.py (the family: losses, transfer, checkpoints)."""
