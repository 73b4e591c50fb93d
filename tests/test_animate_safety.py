"""Issue 10 for `animate`: --out naming an input is refused before anything is written;
oversized and undersized source images are one-line errors (exit 2)."""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest

from stages import cli


@pytest.fixture
def inputs(shared_data, tmp_path):
    """Copies of a real portrait and a real 256 px clip in their own folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = shutil.copy(shared_data / "faces/sadtalker/happy.png", folder / "happy.png")
    driving = shutil.copy(shared_data / "faces/fomm-demo/08.mp4", folder / "08.mp4")
    return Path(source), Path(driving)


def run(checkpoint, source, driving, out, *extra) -> int:
    return cli.main(["run", "animate", "--config", "tiny", "--checkpoint", str(checkpoint),
                     "--source", str(source), "--driving", str(driving), "--out", str(out),
                     "--device", "cpu", "--max-frames", "2", *extra])


def one_line_error(capsys, code: int, *words: str) -> str:
    message = capsys.readouterr().err.strip()
    assert code == 2, message
    assert message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("how", ["same path", "dotted path", "symlink", "hard link"])
@pytest.mark.parametrize("which", ["driving", "source"])
def test_out_naming_an_input_is_refused(checkpoint, inputs, capsys, how, which):
    source, driving = inputs
    target = driving if which == "driving" else source
    if which == "source":  # a source that is a valid output name: a GIF photo
        from PIL import Image
        Image.open(source).convert("RGB").save(source.with_suffix(".gif"))
        source = target = source.with_suffix(".gif")
    folder = target.parent
    if how == "same path":
        out = target
    elif how == "dotted path":
        (folder / "sub").mkdir()
        out = folder / "sub" / ".." / target.name
    elif how == "symlink":
        out = folder / ("link" + target.suffix)
        out.symlink_to(target)
    else:
        out = folder / ("hard" + target.suffix)
        out.hardlink_to(target)
    before = snapshot(folder)
    code = run(checkpoint, source, driving, out)
    one_line_error(capsys, code, f"--{which}", "another output path")
    assert snapshot(folder) == before  # input intact, nothing written beside it


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (RGB) with a one-row body: enough for PIL to
    read the size, without holding gigabytes of pixels anywhere."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" + b"\0" * 3 * width)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_source(checkpoint, inputs, tmp_path, capsys):
    _, driving = inputs
    out = tmp_path / "out" / "x.mp4"
    code = run(checkpoint, png_header_only(tmp_path / "bomb.png", 20000, 20000), driving, out)
    one_line_error(capsys, code, "bomb.png", "too large", "179 million pixels")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_one_pixel_source(checkpoint, inputs, tmp_path, capsys):
    from PIL import Image
    _, driving = inputs
    Image.new("RGB", (1, 1), (200, 150, 120)).save(tmp_path / "dot.png")
    out = tmp_path / "out" / "x.mp4"
    code = run(checkpoint, tmp_path / "dot.png", driving, out)
    one_line_error(capsys, code, "dot.png", "1x1", "at least 32x32")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
