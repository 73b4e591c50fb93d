"""The detectability column of the benchmark table: each model family's video-level AUC for a
detector that never saw that family (leave one family out), read from the detectability.json
that `pipeline run detect detectability` writes (detect/detectability.py; metrics/ reads the
file and never imports detect/). Lower is harder to detect.

The column goes beside L1 / AKD / AED as "value [95 % CI]"; its note names the detector (its
architecture, width, input size, steps, that it trained on unmarked frames) and the data
(the fakes dataset and its manifest hash), and gives the AUC on the marked copies.
"""
from __future__ import annotations

import json
from pathlib import Path

from core.errors import UserError

FORMAT = "motion-transfer-detectability/1"
FILE = "detectability.json"
COLUMN = "detectability AUC ↓ (held-out family)"


def read_detectability(path: str | Path) -> dict:
    """A detectability.json (or a folder holding one); UserError when it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise UserError(f"--detectability {str(path)!r} does not exist; expected the {FILE} of "
                        "`pipeline run detect detectability`")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"--detectability {str(path)!r} is not JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT \
            or not isinstance(record.get("families"), dict):
        raise UserError(f"--detectability {str(path)!r} is not a detectability file (expected format {FORMAT!r})")
    return record


def _interval(value, interval) -> str:
    if value is None or interval is None or value != value:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def detector_text(record: dict) -> str:
    """One line naming the detector and the data behind the column."""
    detector, data = record.get("detector", {}), record.get("data", {})
    weights = detector.get("weights") or "random initialisation"
    return (f"detector: {detector.get('architecture', '?')} width {detector.get('width', '?')} at "
            f"{detector.get('size', '?')} px, {detector.get('steps', '?')} steps from {weights}, trained on "
            f"unmarked frames of the other families' fakes and real clips (train identities); data: "
            f"{data.get('path', '?')} (manifest sha256 {str(data.get('manifest_sha256', '?'))[:12]}), "
            f"test identities disjoint from the train ones")


def family_rows(record: dict) -> list[dict]:
    """A row per family: AUC unmarked and marked with intervals, what the detector trained on."""
    return [{"family": family, "video AUC (unmarked)": _interval(entry.get("video_auc"), entry.get("video_auc_ci")),
             "video AUC (marked copies)": _interval(entry.get("marked_video_auc"), entry.get("marked_video_auc_ci")),
             "frame AUC (unmarked)": _interval(entry.get("frame_auc"), entry.get("frame_auc_ci")),
             "detector trained on": ", ".join(entry.get("trained_on", [])),
             "test videos (generated / real)": f"{entry.get('generated_videos', '?')} / {entry.get('real_videos', '?')}"}
            for family, entry in record["families"].items()]


def column(record: dict):
    """The detectability column (metrics.tables.ExtraColumn) of a detectability file: our rows
    get their family's value and interval, the published rows a dash; the records keep the
    AUC, its interval and the marked copies' AUC."""
    from metrics.tables import ExtraColumn
    families = record["families"]
    cells = {family: _interval(e.get("video_auc"), e.get("video_auc_ci")) for family, e in families.items()}
    values = {family: e.get("video_auc") for family, e in families.items()}
    details = {family: {"detectability_auc_lo": e["video_auc_ci"][0], "detectability_auc_hi": e["video_auc_ci"][1],
                        "detectability_marked_auc": e.get("marked_video_auc")}
               for family, e in families.items() if e.get("video_auc_ci")}
    marked = "; ".join(f"{family} {_interval(e.get('marked_video_auc'), e.get('marked_video_auc_ci'))}"
                       for family, e in families.items())
    note = (f"{COLUMN}: video-level ROC AUC of a detector that never saw that family, its frame "
            f"probabilities averaged per video, [95 % bootstrap interval over videos]; "
            f"{detector_text(record)}. On the marked copies: {marked}.")
    return ExtraColumn(COLUMN, cells, values, note=note, record_key="detectability_auc", details=details)
