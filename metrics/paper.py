"""The published reconstruction numbers as data: which paper, which table, which cells are
confirmed.

Three papers publish the reconstruction protocol's numbers (source = first frame of a test
video, driving = every frame of the same video; L1, AKD, MKR, AED from pose-evaluation):
FOMM (NeurIPS 2019, Table 3: X2Face, Monkey-Net and FOMM), MRAA (CVPR 2021) and TPSMM
(CVPR 2022), each on its own copy of the datasets. A table prints a published number only
where it is confirmed; every other cell stays empty, never quoted with a doubt mark:

- FOMM Table 3: the three cells the maintainers' own words confirm (VoxCeleb AKD 1.294 and
  AED 0.140, Nemo AKD 1.119 for FOMM; REFERENCE.md §1). The other Table 3 values come from
  secondary sources (marked (?) there) and are kept here as data, unconfirmed, unprinted.
- MRAA and TPSMM: no number of theirs is confirmed against the papers' text yet, nor which
  of their tables holds it, so their rows name the paper and hold no number. Confirming a
  value means adding its cell here with `confirmed=True` and the table it is in.
"""
from __future__ import annotations

from dataclasses import dataclass

# Our dataset names (`--dataset`) -> the published tables' dataset.
DATASET_ALIASES = {
    "taichi": "taichi", "taichi-256": "taichi", "tai-chi-hd": "taichi",
    "vox": "vox", "vox-256": "vox", "voxceleb": "vox",
    "nemo": "nemo", "bair": "bair", "bair-256": "bair",
    "ted": "ted", "ted-384": "ted", "ted-talks": "ted",
    "mgif": "mgif", "mgif-256": "mgif",
}

# What the published numbers were measured with (pose-evaluation's networks).
PAPER_BACKENDS = {
    "taichi": "pose: OpenPose (18 body joints); identity: person re-id ResNet-50",
    "ted": "pose: OpenPose (18 body joints); identity: person re-id ResNet-50",
    "vox": "pose: face-alignment (68 2D landmarks); identity: OpenFace",
    "nemo": "pose: face-alignment (68 2D landmarks); identity: OpenFace",
    "bair": "L1 only",
    "mgif": "the paper's own choice (not confirmed here)",
}


@dataclass(frozen=True)
class Publication:
    """A paper whose reconstruction table a benchmark table sets beside ours."""
    key: str
    citation: str                 # authors, title, venue
    short: str                    # the paper's name and venue, as a table cell says it
    table: str | None             # the table the numbers are in; None: not confirmed
    datasets: tuple[str, ...]     # the datasets it reports (MRAA, TPSMM: those of their released configs)
    methods: tuple[str, ...]      # its rows (registry names) that our tables print

    def cell_text(self) -> str:
        """What a table's "published in" column says for this paper's rows."""
        return f"{self.short}, {self.table}" if self.table else f"{self.short}, table not confirmed"


FOMM = Publication("fomm", "Siarohin, Lathuilière, Tulyakov, Ricci, Sebe: First Order Motion Model for "
                   "Image Animation, NeurIPS 2019", "FOMM (NeurIPS 2019)", "Table 3",
                   ("taichi", "vox", "nemo", "bair"), ("x2face", "monkey-net", "fomm"))
MRAA = Publication("mraa", "Siarohin, Woodford, Ren, Chai, Tulyakov: Motion Representations for Articulated "
                   "Animation, CVPR 2021", "MRAA (CVPR 2021)", None,
                   ("vox", "taichi", "ted", "mgif"), ("mraa",))
TPSMM = Publication("tpsmm", "Zhao, Zhang: Thin-Plate Spline Motion Model for Image Animation, CVPR 2022",
                    "TPSMM (CVPR 2022)", None, ("vox", "taichi", "ted", "mgif"), ("tpsmm",))
PUBLICATIONS = (FOMM, MRAA, TPSMM)

# FOMM Table 3's datasets and the metrics it reports for each (Tai-Chi-HD adds MKR; Bair only L1).
DATASET_METRICS: dict[str, tuple[str, ...]] = {
    "taichi": ("l1", "akd", "mkr", "aed"),
    "vox": ("l1", "akd", "aed"),
    "nemo": ("l1", "akd", "aed"),
    "bair": ("l1",),
}

# FOMM Table 3, method -> dataset -> values in DATASET_METRICS order (REFERENCE.md §1).
_TABLE3 = {
    "x2face": {"taichi": (0.080, 17.654, 0.109, 0.272), "vox": (0.078, 7.687, 0.405),
               "nemo": (0.031, 3.539, 0.221), "bair": (0.065,)},
    "monkey-net": {"taichi": (0.077, 10.798, 0.059, 0.228), "vox": (0.049, 1.878, 0.199),
                   "nemo": (0.018, 1.285, 0.077), "bair": (0.034,)},
    "fomm": {"taichi": (0.063, 6.862, 0.036, 0.179), "vox": (0.043, 1.294, 0.140),
             "nemo": (0.016, 1.119, 0.048), "bair": (0.027,)},
}

# (method, dataset, metric) cells of Table 3 confirmed by the maintainers' quotes.
_CONFIRMED = {("fomm", "vox", "akd"), ("fomm", "vox", "aed"), ("fomm", "nemo", "akd")}


@dataclass(frozen=True)
class PaperCell:
    method: str
    dataset: str
    metric: str
    value: float
    confirmed: bool
    publication: Publication = FOMM

    def text(self) -> str:
        """The value as a table prints it; an unconfirmed cell prints nothing."""
        return f"{self.value:.3f}" if self.confirmed else ""


def paper_dataset(dataset: str) -> str | None:
    """The published tables' name for one of our dataset names, or None (e.g. `sample`)."""
    return DATASET_ALIASES.get(dataset.lower())


def publications_for(dataset: str) -> list[Publication]:
    """The papers whose reconstruction table reports `dataset`, in PUBLICATIONS order."""
    group = paper_dataset(dataset)
    return [p for p in PUBLICATIONS if group in p.datasets]


def paper_cells(dataset: str) -> list[PaperCell]:
    """Every published cell recorded for `dataset`, confirmed or not (empty when none)."""
    group = paper_dataset(dataset)
    if group not in DATASET_METRICS:
        return []
    cells = []
    for method, per_dataset in _TABLE3.items():
        for metric, value in zip(DATASET_METRICS[group], per_dataset[group]):
            cells.append(PaperCell(method, group, metric, value, (method, group, metric) in _CONFIRMED))
    return cells


def paper_value(method: str, dataset: str, metric: str, publication: Publication = FOMM) -> PaperCell | None:
    """One recorded cell of `publication`, or None when it records none."""
    for cell in paper_cells(dataset):
        if cell.method == method and cell.metric == metric and cell.publication == publication:
            return cell
    return None
