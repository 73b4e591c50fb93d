"""Evaluating detectors on a fakes dataset's test split (identities no detector trained on).

Every test clip is scored once (`frames_per_clip` evenly spaced frames, their mean the
video's probability); then each group of clips is scored as detect/scores.py says, generated
clips of the group against the real clips of the same transform:
- all families, unmarked, as generated (the headline);
- each family alone;
- the marked copies (the same generated clips with the watermark in every frame): a detector
  trained on unmarked frames that scores these like the unmarked ones does not lean on the mark;
- each re-encoding in the dataset.
`cross_family` puts several detectors side by side: trained on some families' fakes (rows),
tested on each family's (columns), video-level AUC.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from detect.dataset import LABELS, clip_frames, families_of, read_manifest, select
from detect.detector import Detector
from detect.scores import Scored, report

log = logging.getLogger(__name__)


def score_clips(detector: Detector, data: str | Path, rows: pd.DataFrame, frames_per_clip: int | None
                ) -> dict[str, np.ndarray]:
    """clip id -> its frames' probabilities."""
    scores = {}
    for index, (_, row) in enumerate(rows.iterrows()):
        scores[row["id"]] = detector.frame_probabilities(clip_frames(data, row, frames_per_clip, detector.size))
        if (index + 1) % 50 == 0:
            log.info("scored %d/%d clips", index + 1, len(rows))
    return scores


def group_report(rows: pd.DataFrame, scores: dict[str, np.ndarray], threshold: float, resamples: int,
                 seed: int) -> dict:
    labels = rows["label"].map(LABELS).to_numpy()
    return report(Scored(labels, [scores[i] for i in rows["id"]]), threshold, resamples, seed)


def groups(test: pd.DataFrame) -> list[tuple[str, pd.DataFrame, dict]]:
    """(name, rows, what) of every group the module docstring lists that has both classes."""
    families = families_of(test)
    found = [("all families, unmarked", select(test, families=None, marked=False, transforms=["none"]),
              {"families": families, "marked": False, "transform": "none"})]
    found += [(f"{family}, unmarked", select(test, families=[family], marked=False, transforms=["none"]),
               {"families": [family], "marked": False, "transform": "none"}) for family in families]
    if test["marked"].any():
        found.append(("all families, marked", select(test, families=None, marked=True, transforms=["none"]),
                      {"families": families, "marked": True, "transform": "none"}))
        found += [(f"{family}, marked", select(test, families=[family], marked=True, transforms=["none"]),
                   {"families": [family], "marked": True, "transform": "none"}) for family in families]
    for transform in sorted(set(test["transform"]) - {"none"}):
        rows = select(test, families=None, marked=False, transforms=[transform])
        found.append((f"all families, unmarked, {transform}", rows,
                      {"families": families, "marked": False, "transform": transform}))
    return [(name, rows, what) for name, rows, what in found
            if (rows["label"] == "real").any() and (rows["label"] == "generated").any()]


def evaluate(detector: Detector, data: str | Path, frames_per_clip: int | None = 16, resamples: int = 1000,
             seed: int = 0, threshold: float | None = None) -> dict:
    """The detector on the test split: every group's report, and a row per clip."""
    test = select(read_manifest(data), "test", families=None, marked=None, transforms=None)
    threshold = detector.threshold if threshold is None else threshold
    scores = score_clips(detector, data, test, frames_per_clip)
    results = {name: {**what, **group_report(rows, scores, threshold, resamples, seed)}
               for name, rows, what in groups(test)}
    per_clip = [{"id": row["id"], "label": row["label"], "family": row["family"], "kind": row.get("kind"),
                 "marked": bool(row["marked"]), "transform": row["transform"],
                 "probability": float(scores[row["id"]].mean()), "frames": int(len(scores[row["id"]]))}
                for _, row in test.iterrows()]
    return {"detector": describe(detector), "data": str(Path(data).resolve()), "threshold": threshold,
            "frames_per_clip": frames_per_clip, "bootstrap": resamples, "seed": seed,
            "groups": results, "per_clip": per_clip}


def describe(detector: Detector) -> dict:
    return {"architecture": "xception", "width": detector.net.width, "size": detector.size,
            "threshold": detector.threshold, "trained_on": detector.trained_on,
            "steps": detector.settings.get("steps"), "weights": detector.settings.get("weights")}


def cross_family(results: list[dict]) -> dict:
    """{"columns": test families, "rows": [{"trained_on": [...], "auc": {family: value}, ...}]}
    from `evaluate` results of several detectors (video AUC, unmarked, as generated)."""
    columns = sorted({what["families"][0] for result in results for name, what in result["groups"].items()
                      if name.endswith(", unmarked") and len(what["families"]) == 1})
    rows = []
    for result in results:
        cells, intervals = {}, {}
        for family in columns:
            group = result["groups"].get(f"{family}, unmarked")
            cells[family] = group["video"]["auc"] if group else float("nan")
            intervals[family] = group["video"]["auc_ci"] if group else [float("nan")] * 2
        rows.append({"trained_on": result["detector"]["trained_on"].get("families", []), "auc": cells,
                     "auc_ci": intervals})
    return {"columns": columns, "rows": rows}


def _cell(value: float, interval) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def markdown(result: dict, matrix: dict | None = None) -> str:
    """The evaluation as Markdown tables: a row per group, and the cross-family matrix."""
    detector = result["detector"]
    trained = detector["trained_on"]
    lines = [f"**Detector**: Xception width {detector['width']} at {detector['size']} px, trained on "
             f"{trained.get('clips', {}).get('real', '?')} real and {trained.get('clips', {}).get('generated', '?')} "
             f"generated clips of {', '.join(trained.get('families', [])) or '?'} ({trained.get('data', '?')}, "
             f"unmarked); threshold {result['threshold']:.3f}; {result['frames_per_clip']} frames per clip; "
             f"95 % bootstrap intervals over videos ({result['bootstrap']} resamples, seed {result['seed']}).", "",
             "| clips | generated / real videos | video AUC | video AP | video EER | video accuracy | "
             "frame AUC | frame AP | frame EER | frame accuracy |", "|" + "---|" * 10]
    for name, group in result["groups"].items():
        cells = [name, f"{group['videos']['generated']} / {group['videos']['real']}"]
        for level in ("video", "frame"):
            cells += [_cell(group[level][m], group[level][f"{m}_ci"]) for m in ("auc", "ap", "eer", "accuracy")]
        lines.append("| " + " | ".join(cells) + " |")
    if matrix and matrix["rows"]:
        lines += ["", "**Cross-family** (video AUC; rows: the families a detector trained on, columns: the "
                  "family it is tested on)", "",
                  "| trained on | " + " | ".join(matrix["columns"]) + " |", "|" + "---|" * (len(matrix["columns"]) + 1)]
        for row in matrix["rows"]:
            lines.append(f"| {', '.join(row['trained_on'])} | "
                         + " | ".join(_cell(row["auc"][c], row["auc_ci"][c]) for c in matrix["columns"]) + " |")
    return "\n".join(lines) + "\n"


def evaluate_into(models, data: str | Path, out: str | Path, frames_per_clip: int | None = 16,
                  resamples: int = 1000, seed: int = 0, threshold: float | None = None,
                  device: str = "cpu") -> dict:
    """Each detector (a folder or file, detector.model_path) evaluated on `data`'s test split,
    with the cross-family matrix when there are several; writes `out/eval.json`, `eval.md` and
    `per_clip.parquet`, returns eval.json's content with the Markdown as `markdown`."""
    import json
    from core.media import atomic_path
    from detect.detector import load_detector, model_path
    detectors = [load_detector(model_path(m), device) for m in models]
    results = [evaluate(d, data, frames_per_clip, resamples, seed, threshold) for d in detectors]
    matrix = cross_family(results) if len(results) > 1 else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(markdown(result, matrix if index == len(results) - 1 else None)
                     for index, result in enumerate(results))
    record = {"models": [str(m) for m in models], "results": results, "cross_family": matrix}
    with atomic_path(out / "eval.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    with atomic_path(out / "eval.md") as tmp:
        tmp.write_text(text)
    table = pd.DataFrame([{**row, "model": str(model)} for model, result in zip(models, results)
                          for row in result["per_clip"]])
    with atomic_path(out / "per_clip.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return {**record, "markdown": text}
