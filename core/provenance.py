"""Marks on every generated file: it says it is generated (EU AI Act, Art. 50).

Three marks, each readable by `pipeline run verify`:
1. an invisible watermark in every frame, embedded before encoding (core/watermark.py);
2. a C2PA manifest (mp4, gif, png) with a `c2pa.created` action whose digitalSourceType is
   IPTC's trainedAlgorithmicMedia, naming the tool and the model (family, config hash) and
   nothing about the user, signed with the configured or self-signed key
   (core/credentials.py);
3. a plain metadata tag: `comment` and `description` in an mp4, a comment block in a gif,
   tEXt chunks in a png.

Writers take a frame marker (`marking(writer, marker)`); once the file is complete,
`finalize(path, generation)` adds the tag and the manifest, in place and atomically. (The
original first-order-model, Monkey-Net and X2Face code marks nothing.)
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import watermark
from core.errors import UserError

logger = logging.getLogger(__name__)

TOOL = "motion-transfer"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
TAG_TEXT = ("AI-generated: this media was made by {tool} {version} (model {model}) and does not show "
            "real events; see its C2PA manifest")
TAG_KEYWORD = "AI-generated"
WATERMARK_LABEL = "org.motion-transfer.watermark"
MIME_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".m4v": "video/mp4",
              ".gif": "image/gif", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
OPT_OUT_HELP = ("write unmarked files: no invisible watermark in the frames, no signed C2PA manifest "
                "and no 'AI-generated' metadata tag (the marks that let anyone tell the video is "
                "generated; on by default)")
OPT_OUT_WARNING = ("warning: --no-provenance: the output carries no watermark, no C2PA manifest and no "
                   "AI-generated tag; nothing in it says it is generated. Label it yourself before "
                   "sharing it (EU AI Act, Art. 50).")


def tool_version() -> str:
    try:
        return importlib.metadata.version(TOOL)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Generation:
    """What made a file: the model family and config hash, and the run's watermark id."""
    model: str
    config_hash: str
    run: int

    @classmethod
    def of(cls, config, *run_parts: object) -> "Generation":
        from core.config import config_hash
        digest = config_hash(config)
        name = config.model_params.name
        return cls(name, digest[:16], watermark.run_id(name, digest, *run_parts))

    def marker(self) -> watermark.FrameMarker:
        return watermark.FrameMarker(self.run)

    def tag(self) -> str:
        return TAG_TEXT.format(tool=TOOL, version=tool_version(), model=self.model)


# --------------------------------------------------------------------------- frames
class MarkingWriter:
    """A frame writer whose frames are watermarked first; everything else is the writer's."""

    def __init__(self, writer, marker):
        self._writer, self._marker = writer, marker

    def write(self, frame: np.ndarray) -> None:
        self._writer.write(self._marker(frame))

    def __getattr__(self, name):
        return getattr(self._writer, name)


def marking(writer, generation: Generation | None):
    """`writer` itself when `generation` is None (opt-out), else a watermarking wrapper."""
    return writer if generation is None else MarkingWriter(writer, generation.marker())


# --------------------------------------------------------------------------- files
def finalize(path: str | Path, generation: Generation | None) -> Path:
    """Add the metadata tag and a signed C2PA manifest to the complete file at `path`, in place
    (the file is replaced whole). Does nothing for `generation=None` (opt-out)."""
    path = Path(path)
    if generation is None:
        return path
    suffix = path.suffix.lower()
    if suffix not in MIME_TYPES:
        raise ValueError(f"{path}: cannot mark a {suffix!r} file (expected one of {sorted(MIME_TYPES)})")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".mark{suffix}", dir=path.parent)
    os.close(fd)
    tagged, signed = Path(tmp), Path(tmp).with_suffix(f".signed{suffix}")
    try:
        add_tag(path, tagged, generation.tag())
        sign(tagged, signed, generation)
        os.replace(signed, path)
    finally:
        tagged.unlink(missing_ok=True)
        signed.unlink(missing_ok=True)
    return path


def add_tag(source: Path, dest: Path, text: str) -> None:
    """Copy `source` to `dest` with `text` as its comment/description."""
    suffix = source.suffix.lower()
    if suffix in (".mp4", ".mov", ".m4v"):
        from core.media import ffmpeg_exe
        command = [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(source), "-map", "0", "-c", "copy",
                   "-metadata", f"comment={text}", "-metadata", f"description={text}",
                   "-movflags", "+faststart", "-f", "mp4" if suffix != ".mov" else "mov", str(dest)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed tagging {source}: {result.stderr.strip()[-500:]}")
    elif suffix == ".gif":
        dest.write_bytes(gif_with_comment(source.read_bytes(), text))
    elif suffix == ".png":
        from PIL import Image, PngImagePlugin
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", text)
        info.add_text("Description", text)
        with Image.open(source) as image:
            image.save(dest, format="PNG", pnginfo=info)
    else:  # jpeg: the manifest only (we never write jpegs)
        dest.write_bytes(source.read_bytes())


def gif_with_comment(data: bytes, text: str) -> bytes:
    """The gif `data` with a Comment Extension block after its global colour table."""
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ValueError("not a GIF file")
    flags = data[10]
    end = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    payload = text.encode("utf-8")
    blocks = b"".join(bytes([len(chunk)]) + chunk
                      for chunk in (payload[i:i + 255] for i in range(0, len(payload), 255)))
    return b"GIF89a" + data[6:end] + b"\x21\xfe" + blocks + b"\x00" + data[end:]


def manifest(generation: Generation, title: str, mime: str) -> dict:
    """The C2PA manifest definition: one `c2pa.created` action by trained algorithmic media."""
    import c2pa
    agent = {"name": TOOL, "version": tool_version()}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": mime,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": agent,
                "parameters": {"model": generation.model, "model_config_sha256": generation.config_hash,
                               "c2pa_library": f"c2pa-python {c2pa.__version__}"},
            }]}},
            {"label": WATERMARK_LABEL, "data": {
                "method": watermark.METHOD, "channel": "V", "amplitude": watermark.AMPLITUDE,
                "layout": f"{watermark.GRID}x{watermark.GRID} cells in relative coordinates",
                "code": f"RM(1,7), {watermark.CHIPS} chips", "run_bits": watermark.RUN_BITS,
                "tag": f"{watermark.TAG:06x}", "run": generation.run}},
        ],
    }


def sign(source: Path, dest: Path, generation: Generation) -> None:
    """Write `source` with an embedded, signed C2PA manifest to `dest`."""
    import c2pa
    from core.credentials import load_credential
    credential = load_credential()
    mime = MIME_TYPES[source.suffix.lower()]
    definition = manifest(generation, source.name.split(".part")[0].lstrip("."), mime)
    info = c2pa.C2paSignerInfo(credential.algorithm, credential.chain, credential.key,
                               credential.timestamp_url)
    try:
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(definition) as builder, \
                open(source, "rb") as reader, open(dest, "w+b") as writer:
            builder.sign(signer, mime, reader, writer)
    except c2pa.C2paError as err:
        raise UserError(f"C2PA signing of {source.name} with {credential.origin} failed: {err}") from None


def save_marked_png(path: str | Path, frame: np.ndarray, generation: Generation | None) -> Path:
    """Save a generated RGB frame as png, watermarked, tagged and signed (unmarked for None)."""
    from PIL import Image
    path = Path(path)
    image = frame if generation is None else generation.marker()(frame)
    Image.fromarray(image).save(path, format="PNG")
    return finalize(path, generation)


# --------------------------------------------------------------------------- opting out
def warn_opt_out() -> None:
    """The warning line of --no-provenance, on stderr (stdout may carry the video)."""
    print(OPT_OUT_WARNING, file=sys.stderr)


def generation_or_warn(enabled: bool, config, *run_parts: object) -> Generation | None:
    """The run's Generation, or None after the opt-out warning line."""
    if not enabled:
        return warn_opt_out()
    from core.credentials import load_credential
    load_credential()  # a signing key that cannot be read or made is one line now, before any output
    return Generation.of(config, *run_parts)
