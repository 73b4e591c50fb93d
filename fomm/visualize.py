"""Drawing for people: keypoints on frames and grids of images, as uint8 RGB arrays."""
from __future__ import annotations

import numpy as np

from core.frames import to_uint8


def keypoint_colors(num_kp: int, colormap: str = "gist_rainbow") -> np.ndarray:
    """(K, 3) uint8 colours, one per keypoint, spread along a matplotlib colormap."""
    from matplotlib import colormaps
    cmap = colormaps[colormap]
    return (np.array([cmap(i / max(num_kp, 1))[:3] for i in range(num_kp)]) * 255).astype(np.uint8)


def draw_keypoints(image: np.ndarray, kp, size: int = 5, colormap: str = "gist_rainbow") -> np.ndarray:
    """Filled discs at keypoints `kp` (K, 2), given as (x, y) in [-1, 1], on a copy of `image`."""
    from skimage.draw import disk
    image = to_uint8(image).copy()
    if hasattr(kp, "detach"):
        kp = kp.detach().float().cpu().numpy()
    height, width = image.shape[:2]
    colors = keypoint_colors(len(kp), colormap)
    for (x, y), color in zip(np.asarray(kp), colors):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        col = (x + 1) / 2 * width - 0.5
        row = (y + 1) / 2 * height - 0.5
        rr, cc = disk((row, col), size, shape=image.shape[:2])
        image[rr, cc] = color
    return image


def image_grid(rows: list[list[np.ndarray]], border: int = 2) -> np.ndarray:
    """Images (H, W, 3) uint8 of one size laid out row by row on a white canvas."""
    height, width = rows[0][0].shape[:2]
    num_cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + border) + border,
                      num_cols * (width + border) + border, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = border + i * (height + border), border + j * (width + border)
            canvas[top:top + height, left:left + width] = to_uint8(image)
    return canvas
