"""Does each video or image say it is generated? (`pipeline run verify FILE... [--json]`,
whose flags stages/verify.py reads.)

For each file: the C2PA manifest (valid, tampered or absent; valid also says whether it
declares trainedAlgorithmicMedia and whether its signer is on a trust list), the metadata tag
(core/provenance.py), and the invisible watermark (core/watermark.py), decided once for the
whole video from the evidence of all its frames: its score z against the threshold whose
false-positive bound is 1.7e-7 (a cropped copy: searched, at a higher threshold), the run it
names, and how many frames carry it on their own. A file is *marked* when its manifest is valid
or its watermark is detected. One line per file; with `--json` also a JSON report on stdout.
Exit 0 when every file is marked, 1 when any is not, 2 when a file is missing or unreadable.

The watermark is read on the frame's relative grid, so a scaled copy reads as it is; when that
finds nothing, the video's mean chroma plane is searched for a crop, and then the frames are
read again with the previous scheme (core/legacy_watermark.py: files marked before issue 21),
whose resized copies are scaled back to the models' sizes (256, 512 px short side) and cropped
ones read on a shifted block grid, the reading that works best on the first frames used for
all of them; that scheme marks a file when at least half of its frames carry its tag.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core import legacy_watermark, watermark
from core.errors import UserError
from core.provenance import TAG_KEYWORD, TRAINED_ALGORITHMIC_MEDIA

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PROBE_FRAMES = 8          # legacy scheme: frames used to pick the reading size
CROP_SEARCH_FRAMES = 2    # of those, frames searched for a cropped block grid (legacy find_crop)
CURRENT, LEGACY = "current", "legacy"
# Codes that do not mean the content changed: the signer is not on a trust list (every
# self-signed credential), or revocation was not checked offline.
BENIGN_FAILURES = ("signingCredential.untrusted", "signingCredential.ocsp")


@dataclass
class C2paReading:
    state: str                       # valid | tampered | absent
    trained_algorithmic: bool = False
    trusted: bool = False
    signer: str | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class WatermarkReading:
    frames: int = 0
    frames_with_tag: int = 0         # frames whose own evidence carries the mark
    payload: str | None = None       # 8 hex digits: the tag and the run, when detected
    run: int | None = None
    scheme: str = CURRENT            # current (core/watermark.py) | legacy (core/legacy_watermark.py)
    score: float = 0.0               # the video's z (current scheme); the legacy scheme's is 0
    threshold: float = watermark.THRESHOLD
    detected: bool = False
    crop: dict | None = None         # the crop found (scale, left, top), when read as a cropped copy
    crop_score: float | None = None  # the crop search's best z, when it ran

    @property
    def fraction(self) -> float:
        return self.frames_with_tag / self.frames if self.frames else 0.0


@dataclass
class Verdict:
    path: str
    kind: str                        # video | image
    c2pa: C2paReading
    tag: str | None
    watermark: WatermarkReading

    @property
    def marked(self) -> bool:
        return self.c2pa.state == "valid" or self.watermark.detected

    def line(self) -> str:
        c2pa = self.c2pa.state
        if self.c2pa.state == "valid":
            c2pa += (" (trainedAlgorithmicMedia" if self.c2pa.trained_algorithmic else " (no AI source type")
            c2pa += ", trusted signer)" if self.c2pa.trusted else ", untrusted signer)"
        mark = self.watermark
        payload = f" payload {mark.payload}" if mark.payload else ""
        if mark.scheme == LEGACY:
            decision = "detected (previous scheme)" if mark.detected else "not detected"
        else:
            decision = (f"{'detected' if mark.detected else 'not detected'} (score {mark.score:.1f}, "
                        f"threshold {mark.threshold:.1f}{', cropped copy' if mark.crop else ''})")
        return (f"{self.path}: {'MARKED' if self.marked else 'unmarked'}: c2pa {c2pa}; "
                f"tag {'present' if self.tag else 'absent'}; watermark {decision}, in "
                f"{mark.frames_with_tag}/{mark.frames} frames ({100 * mark.fraction:.0f} %){payload}")

    def to_dict(self) -> dict:
        record = asdict(self)
        record["marked"] = self.marked
        record["watermark"]["fraction"] = self.watermark.fraction
        return record


# --------------------------------------------------------------------------- C2PA
def read_c2pa(path: Path) -> C2paReading:
    import c2pa
    try:
        reader = c2pa.Reader.try_create(str(path))
    except c2pa.C2paError.NotSupported:
        return C2paReading("absent")
    except c2pa.C2paError as err:  # a manifest is there but cannot be parsed: edited bytes
        return C2paReading("tampered", failures=[f"{type(err).__name__}: {err}"])
    if reader is None:
        return C2paReading("absent")
    with reader:
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
        active = reader.get_active_manifest() or {}
    failures = [item["code"] for item in (results.get("activeManifest") or {}).get("failure", [])]
    tampered = state not in ("Valid", "Trusted") and any(
        not code.startswith(BENIGN_FAILURES) for code in failures)
    actions = [action for assertion in active.get("assertions", [])
               if assertion.get("label", "").startswith("c2pa.actions")
               for action in assertion.get("data", {}).get("actions", [])]
    return C2paReading(
        "tampered" if tampered else "valid",
        trained_algorithmic=any(a.get("action") == "c2pa.created"
                                and a.get("digitalSourceType") == TRAINED_ALGORITHMIC_MEDIA for a in actions),
        trusted=state == "Trusted",
        signer=(active.get("signature_info") or {}).get("common_name"),
        failures=failures)


# --------------------------------------------------------------------------- tag
def read_tag(path: Path, kind: str) -> str | None:
    """The comment/description that says the file is AI-generated, if any."""
    texts: list[str] = []
    if kind == "image" or path.suffix.lower() == ".gif":
        from PIL import Image
        with Image.open(path) as image:
            texts += [value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                      for key, value in image.info.items() if key.lower() in ("comment", "description")]
    else:
        import av
        with av.open(str(path)) as container:
            metadata = dict(container.metadata)
            for stream in container.streams:
                metadata.update(stream.metadata)
        texts += [value for key, value in metadata.items() if key.lower() in ("comment", "description")]
    return next((text for text in texts if TAG_KEYWORD in text), None)


# --------------------------------------------------------------------------- watermark
def frames_of(path: Path, kind: str, max_frames: int | None):
    from core.media import iter_frames, load_image
    if kind == "image":
        yield load_image(path)
        return
    yield from iter_frames(path, 0, max_frames)


def _readable_frames(path: Path, kind: str, max_frames: int | None):
    """The frames, stopping quietly where edited bytes break decoding part way."""
    try:
        yield from frames_of(path, kind, max_frames)
    except UserError as err:
        logger.warning("%s", err)


def read_watermark(path: Path, kind: str, max_frames: int | None = None) -> WatermarkReading:
    """The current scheme on the relative grid; else a crop search; else the legacy scheme."""
    reader = watermark.VideoEvidence()
    for frame in _readable_frames(path, kind, max_frames):
        reader.add(frame)
    result = _current(reader.detection(), reader.frames, reader.frame_hits)
    if result.detected or reader.mean_plane() is None:
        return result
    crop, found = watermark.find_crop(reader.mean_plane())
    result.crop_score = round(found.score, 3)
    if found.detected:
        hits = sum(watermark.decode(watermark.frame_evidence_at(frame, crop), found.threshold).detected
                   for frame in _readable_frames(path, kind, max_frames))
        cropped = _current(found, reader.frames, hits)
        cropped.crop = {"scale": round(crop.scale, 4), "left": crop.left, "top": crop.top}
        cropped.crop_score = result.crop_score
        return cropped
    legacy = read_legacy_watermark(path, kind, max_frames)
    return legacy if legacy.detected or legacy.frames_with_tag > result.frames_with_tag else result


def _current(detection: watermark.Detection, frames: int, hits: int) -> WatermarkReading:
    reading = WatermarkReading(frames, hits, score=round(detection.score, 3),
                               threshold=round(detection.threshold, 3), detected=detection.detected)
    if detection.detected:
        reading.run = detection.run
        reading.payload = f"{watermark.TAG:06x}{detection.run:02x}"
    return reading


def tag_hits(frames: list[np.ndarray], read) -> int:
    readings = [read(frame) for frame in frames]
    return sum(r is not None and r.has_tag for r in readings)


def choose_reader(frames: list[np.ndarray]):
    """How to read a file marked by the legacy scheme, picked on its first frames: at its own
    size or scaled back to a model's size (the one where most frames carry the tag), else,
    when that finds the tag in fewer than half of them, on a cropped copy's shifted block grid
    (legacy_watermark.find_crop), where only exact tags count."""
    def at(size):
        return lambda frame: legacy_watermark.read_frame(legacy_watermark.resize(frame, size))
    readers = [at(size) for size in legacy_watermark.candidate_sizes(*frames[0].shape[:2])]
    hits = [tag_hits(frames, read) for read in readers]
    best = int(np.argmax(hits))
    if 2 * hits[best] >= len(frames):
        return readers[best]
    searched = frames[:CROP_SEARCH_FRAMES]
    offset, shift, crop_hits = legacy_watermark.find_crop(searched)
    if crop_hits * len(frames) <= hits[best] * len(searched):  # compare shares of frames
        return readers[best]

    def cropped(frame):
        reading = legacy_watermark.read_frame(frame, offset, shift)
        return reading if reading is not None and reading.tag_errors == 0 else None
    return cropped


def read_legacy_watermark(path: Path, kind: str, max_frames: int | None = None) -> WatermarkReading:
    """The legacy scheme, frame by frame: marked when at least half of the frames carry its tag."""
    result = WatermarkReading(scheme=LEGACY, threshold=0.5)
    reader, probe, payloads = None, [], Counter()

    def read(frame):
        reading = reader(frame)
        result.frames += 1
        if reading is not None and reading.has_tag:
            result.frames_with_tag += 1
            payloads["".join(map(str, reading.bits))] += 1

    for frame in _readable_frames(path, kind, max_frames):
        if reader is None:
            probe.append(frame)
            if len(probe) < PROBE_FRAMES:
                continue
            reader = choose_reader(probe)
            for waiting in probe:
                read(waiting)
            continue
        read(frame)
    if reader is None and probe:
        reader = choose_reader(probe)
        for waiting in probe:
            read(waiting)
    if payloads:
        bits = payloads.most_common(1)[0][0]
        result.payload = f"{int(bits, 2):08x}"
        result.run = int(bits[legacy_watermark.TAG_BITS:], 2)
    result.detected = result.fraction >= 0.5
    return result


# --------------------------------------------------------------------------- stage
def verify_file(path: str | Path, max_frames: int | None = None) -> Verdict:
    """Read all three marks of one file. UserError when it is missing or not media."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{str(path)!r} does not exist (expected a video or image file)")
    kind = "image" if path.suffix.lower() in IMAGE_SUFFIXES else "video"
    if kind == "video":
        from core.media import probe
        probe(path)  # UserError when it is not a readable video
    try:
        tag = read_tag(path, kind)
    except Exception as err:  # noqa: BLE001 - PIL and PyAV raise many types for broken files
        raise UserError(f"{str(path)!r} is not a readable {kind} ({err})") from None
    return Verdict(str(path), kind, read_c2pa(path), tag, read_watermark(path, kind, max_frames))


def verify_files(paths, max_frames: int | None = None) -> list[Verdict]:
    """The verdict of every file, in order (verify_file on each)."""
    return [verify_file(path, max_frames) for path in paths]
