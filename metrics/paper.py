"""The paper's published reconstruction numbers (FOMM, NeurIPS 2019, Table 3) as data.

Every cell carries a `confirmed` flag: only three cells are confirmed by the maintainers'
own words (VoxCeleb AKD 1.294 and AED 0.140 and Nemo AKD 1.119 for FOMM); the others come
from secondary sources and are shown with a "(?)" mark wherever they are printed.
Protocol: source = first frame of a test video, driving = every frame of the same video.
"""
from __future__ import annotations

from dataclasses import dataclass

# Table 3's datasets and the metrics it reports for each (Tai-Chi-HD adds MKR; Bair only L1).
DATASET_METRICS: dict[str, tuple[str, ...]] = {
    "taichi": ("l1", "akd", "mkr", "aed"),
    "vox": ("l1", "akd", "aed"),
    "nemo": ("l1", "akd", "aed"),
    "bair": ("l1",),
}

# Our dataset names (`--dataset`) -> Table 3's column group.
DATASET_ALIASES = {
    "taichi": "taichi", "taichi-256": "taichi", "tai-chi-hd": "taichi",
    "vox": "vox", "vox-256": "vox", "voxceleb": "vox",
    "nemo": "nemo", "bair": "bair", "bair-256": "bair",
}

# Table 3, method -> dataset -> values in DATASET_METRICS order.
_TABLE3 = {
    "x2face": {"taichi": (0.080, 17.654, 0.109, 0.272), "vox": (0.078, 7.687, 0.405),
               "nemo": (0.031, 3.539, 0.221), "bair": (0.065,)},
    "monkey-net": {"taichi": (0.077, 10.798, 0.059, 0.228), "vox": (0.049, 1.878, 0.199),
                   "nemo": (0.018, 1.285, 0.077), "bair": (0.034,)},
    "fomm": {"taichi": (0.063, 6.862, 0.036, 0.179), "vox": (0.043, 1.294, 0.140),
             "nemo": (0.016, 1.119, 0.048), "bair": (0.027,)},
}

# (method, dataset, metric) cells confirmed by the maintainers' quotes (REFERENCE.md §1).
_CONFIRMED = {("fomm", "vox", "akd"), ("fomm", "vox", "aed"), ("fomm", "nemo", "akd")}

# What the paper's numbers were measured with: a table that prints them names these.
PAPER_BACKENDS = {
    "taichi": "pose: OpenPose (18 body joints); identity: person re-id ResNet-50",
    "vox": "pose: face-alignment (68 2D landmarks); identity: OpenFace",
    "nemo": "pose: face-alignment (68 2D landmarks); identity: OpenFace",
    "bair": "L1 only",
}


@dataclass(frozen=True)
class PaperCell:
    method: str
    dataset: str
    metric: str
    value: float
    confirmed: bool

    def text(self) -> str:
        """The value as printed in tables: unconfirmed cells carry a "(?)" mark."""
        return f"{self.value:.3f}" + ("" if self.confirmed else " (?)")


def paper_dataset(dataset: str) -> str | None:
    """Table 3's column group for one of our dataset names, or None (e.g. `sample`)."""
    return DATASET_ALIASES.get(dataset.lower())


def paper_cells(dataset: str) -> list[PaperCell]:
    """All Table 3 cells for `dataset` (empty when the paper has no numbers for it)."""
    group = paper_dataset(dataset)
    if group is None:
        return []
    cells = []
    for method, per_dataset in _TABLE3.items():
        for metric, value in zip(DATASET_METRICS[group], per_dataset[group]):
            cells.append(PaperCell(method, group, metric, value, (method, group, metric) in _CONFIRMED))
    return cells


def paper_value(method: str, dataset: str, metric: str) -> PaperCell | None:
    """One cell, or None when Table 3 does not report it."""
    for cell in paper_cells(dataset):
        if cell.method == method and cell.metric == metric:
            return cell
    return None
