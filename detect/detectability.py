"""Each family's detectability: the video-level AUC of a detector that never saw that family.

Leave one family out: for every family of a fakes dataset, a detector is trained (detect/
train.py, on unmarked frames) on the train split's real clips against the other families'
generated clips, then scores the test split's clips of the held-out family against its real
clips, unmarked and marked copies alike. Lower AUC is harder to detect; the marked AUC beside
the unmarked one shows the detector does not lean on the watermark. The benchmark table and the
report read the `detectability.json` this writes (metrics/detectability.py reads it; metrics/
never imports this module):

    {"format": "motion-transfer-detectability/1",
     "detector": {"architecture", "width", "size", "steps", "frames_per_clip", "weights", ...},
     "data": {"path", "manifest_sha256", "families", "test_real_videos"},
     "families": {family: {"video_auc", "video_auc_ci", "marked_video_auc", "marked_video_auc_ci",
                           "frame_auc", "frame_auc_ci", "trained_on", "generated_videos",
                           "real_videos", "model"}}}
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

from core.errors import UserError
from detect.dataset import families_of, read_manifest, select
from detect.evaluate import group_report, score_clips
from detect.train import TrainOptions, manifest_sha256, train_detector
from metrics.detectability import FILE, FORMAT, read_detectability  # noqa: F401 - the file's one reader

log = logging.getLogger(__name__)


def leave_one_family_out(data: str | Path, out: str | Path, options: TrainOptions,
                         frames_per_clip: int | None = 16, resamples: int = 1000, seed: int = 0) -> dict:
    """Train and test one detector per held-out family; write `<out>/detectability.json` and
    each detector under `<out>/models/`."""
    from core.media import atomic_path
    manifest = read_manifest(data)
    families = families_of(manifest)
    if len(families) < 2:
        raise UserError(f"--data {str(data)!r} holds the fakes of {len(families)} family "
                        f"({', '.join(families)}); leaving one out needs at least 2")
    out = Path(out)
    test = select(manifest, "test", families=None, marked=None, transforms=["none"])
    real_test = int((test["label"] == "real").sum())
    record = {"format": FORMAT,
              "detector": {"architecture": "xception", **{k: v for k, v in asdict(options).items()
                                                          if k not in ("families", "device", "log_every")},
                           "frames_per_clip_scored": frames_per_clip, "threshold": 0.5,
                           "trained": "on unmarked frames of the other families' train-split fakes and the "
                                      "train split's real clips"},
              "data": {"path": str(Path(data).resolve()), "manifest_sha256": manifest_sha256(data),
                       "families": families, "test_real_videos": real_test,
                       "identities": "train and test identities are disjoint (pipeline run fakes)"},
              "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "over": "videos"},
              "families": {}}
    for held in families:
        others = tuple(f for f in families if f != held)
        log.info("detectability of %s: training on %s", held, ", ".join(others))
        detector = train_detector(data, replace(options, families=others))
        model_path = detector.save(out / "models" / f"without-{held}.pt")
        rows = select(test, families=[held], marked=None, transforms=["none"])
        scores = score_clips(detector, data, rows, frames_per_clip)
        unmarked_rows = select(rows, families=[held], marked=False, transforms=["none"])
        unmarked = group_report(unmarked_rows, scores, detector.threshold, resamples, seed)
        entry = {"video_auc": unmarked["video"]["auc"], "video_auc_ci": unmarked["video"]["auc_ci"],
                 "frame_auc": unmarked["frame"]["auc"], "frame_auc_ci": unmarked["frame"]["auc_ci"],
                 "video_accuracy": unmarked["video"]["accuracy"], "trained_on": list(others),
                 "generated_videos": unmarked["videos"]["generated"], "real_videos": unmarked["videos"]["real"],
                 "model": str(model_path), "marked_video_auc": None, "marked_video_auc_ci": None}
        marked_rows = select(rows, families=[held], marked=True, transforms=["none"])
        if (marked_rows["label"] == "generated").any():
            marked = group_report(marked_rows, scores, detector.threshold, resamples, seed)
            entry.update(marked_video_auc=marked["video"]["auc"], marked_video_auc_ci=marked["video"]["auc_ci"])
        record["families"][held] = entry
        log.info("detectability of %s: video AUC %.3f [%.3f, %.3f]", held, entry["video_auc"],
                 *entry["video_auc_ci"])
    with atomic_path(out / FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def detectability_into(data: str | Path, out: str | Path, options: TrainOptions,
                       frames_per_clip: int | None = 16, resamples: int = 1000, seed: int = 0) -> dict:
    """leave_one_family_out into the folder `out`, claimed for the `detectability` stage."""
    from core import outputs
    with outputs.claim(out, "detectability", {"--data": data, "--weights": options.weights},
                       earlier=(FILE,)) as folder:
        return leave_one_family_out(data, folder, options, frames_per_clip, resamples, seed)
