"""Dataset definitions: `manifests/<name>.yaml` loaded into a typed `DatasetDef`, and the
upstream manifest fetched once into a cache and checked against its sha256.

Kinds: `manifest` (vox, taichi, ted: upstream crop csv), `url_list` (fashion: one video URL a
line per split), `source_dir` (mgif, nemo, bair: files the user already has), `custom`
(own videos, faces found by dlib) and `sample` (built in, see pipeline/sample.py).
"""
from __future__ import annotations

import dataclasses
import logging
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.media import atomic_path, sha256_of

log = logging.getLogger(__name__)

MANIFEST_DIR = Path(__file__).resolve().parents[1] / "manifests"
KINDS = ("manifest", "url_list", "source_dir", "custom", "sample")


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str


@dataclass(frozen=True)
class CustomPolicy:
    iou_threshold: float = 0.25
    enlarge: float = 0.1
    min_frames: int = 64
    detect_every: int = 5
    split: str = "test"


@dataclass(frozen=True)
class SamplePolicy:
    num_train: int = 8
    num_test: int = 4
    num_frames: int = 32


@dataclass(frozen=True)
class DatasetDef:
    name: str
    kind: str
    description: str = ""
    size: int = 256
    source: str = "youtube"
    pad_square: bool = False   # whole-frame datasets: pad with white to a square, then resize
    # A video whose rows name both splits (clips.SPLIT_POLICIES): "first" (the original's
    # rule: its first row's split for all its clips), "test" or "error".
    split_conflicts: str = "first"
    # "original" (load_videos.py's scikit-image 0.14 resize) or "ffmpeg" (area filter)
    resize: str = "ffmpeg"
    # Rows `video#start#end` (MRAA's TED manifest): the (w, h) frame their bboxes refer to
    id_range_bbox_size: tuple[int, int] | None = None
    manifest: RemoteFile | None = None
    url_lists: dict[str, RemoteFile] = field(default_factory=dict)
    custom: CustomPolicy = CustomPolicy()
    sample: SamplePolicy = SamplePolicy()


def available() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.yaml"))


# The scalar fields' annotations and the values they take: ints count or size something
# (>= 1), floats are finite and >= 0.
_SCALARS = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _build(cls, data: dict | None, where: str):
    import dataclasses
    import math
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{where}: the {cls.__name__} section is a {type(data).__name__}; expected a mapping")
    names = set(cls.__dataclass_fields__)
    unknown = set(data) - names
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: the {cls.__name__} section lacks {missing}; expected them set")
    for f in dataclasses.fields(cls):
        if f.name not in data or f.type not in _SCALARS:
            continue
        value, kind = data[f.name], _SCALARS[f.type]
        bad = isinstance(value, bool) != (f.type == "bool") or not isinstance(value, kind)
        if not bad and f.type == "int":
            bad = value < 1
        if not bad and f.type == "float":
            bad = not math.isfinite(value) or value < 0
        if bad:
            expected = {"int": "an integer >= 1", "float": "a finite number >= 0", "str": "a string",
                        "bool": "true or false"}[f.type]
            raise UserError(f"{where}: {cls.__name__.lower()} {f.name} is {value!r}; expected {expected}")
    return cls(**data)


def load_dataset(name_or_path: str) -> DatasetDef:
    """The definition `manifests/<name>.yaml` (or a yaml path). UserError on unknown names/keys."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = MANIFEST_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"unknown dataset {name_or_path!r}; expected one of {available()} "
                        f"or a path to a definition yaml")
    where = str(path)
    from core.config import load_yaml
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), where) or {}
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{where} cannot be read as a utf-8 yaml file ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: the definition is a {type(data).__name__}; expected a mapping (name, kind, ...)")
    kind = data.get("kind")
    if kind not in KINDS:
        raise UserError(f"{where}: kind {kind!r} is not one of {KINDS}")
    data["manifest"] = _build(RemoteFile, data["manifest"], where) if data.get("manifest") else None
    url_lists = data.get("url_lists") or {}
    if not isinstance(url_lists, dict):
        raise UserError(f"{where}: url_lists is a {type(url_lists).__name__}; expected a mapping of split -> {{url, sha256}}")
    data["url_lists"] = {split: _build(RemoteFile, entry, where) for split, entry in url_lists.items()}
    data["custom"] = _build(CustomPolicy, data.get("custom"), where)
    data["sample"] = _build(SamplePolicy, data.get("sample"), where)
    definition = _build(DatasetDef, data, where)
    from pipeline.clips import SPLIT_POLICIES
    from pipeline.crop import RESIZES
    if definition.split_conflicts not in SPLIT_POLICIES:
        raise UserError(f"{where}: split_conflicts is {definition.split_conflicts!r}; "
                        f"expected one of {list(SPLIT_POLICIES)}")
    if definition.resize not in RESIZES:
        raise UserError(f"{where}: resize is {definition.resize!r}; expected one of {list(RESIZES)}")
    size = definition.id_range_bbox_size
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, int) and v > 0 for v in size)):
            raise UserError(f"{where}: id_range_bbox_size is {size!r}; expected [width, height] "
                            f"positive integers")
        definition = dataclasses.replace(definition, id_range_bbox_size=tuple(size))
    if kind == "manifest" and definition.manifest is None:
        raise UserError(f"{where}: a 'manifest' dataset needs manifest: {{url, sha256}}")
    return definition


def fetch(remote: RemoteFile, cache_dir: Path, timeout: float = 30) -> Path:
    """The file at `remote.url`, downloaded once into `cache_dir` (named by its sha256) and
    verified. UserError when it cannot be fetched or its checksum differs."""
    cached = Path(cache_dir) / f"{remote.sha256[:16]}-{Path(remote.url).name}"
    if cached.is_file() and sha256_of(cached) == remote.sha256:
        return cached
    log.info("downloading %s", remote.url)
    try:
        with atomic_path(cached) as tmp:
            _download(remote.url, tmp, timeout)
            actual = sha256_of(tmp)
            if actual != remote.sha256:
                raise UserError(f"{remote.url} has sha256 {actual}, expected {remote.sha256}")
    except OSError as err:
        raise UserError(f"cannot download {remote.url} ({err}); pass a local copy with "
                        f"--manifest PATH") from None
    return cached


def _download(url: str, path: Path, timeout: float, stall_bytes: int = 16 * 1024) -> None:
    """`url` into `path`; every read waits at most `timeout` s, and the whole download is
    given up (OSError) when it gains less than `stall_bytes` in `timeout` s, so a server
    trickling a few bytes at a time cannot hold the run forever."""
    import time
    with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as handle:
        mark_bytes, mark_time, total = 0, time.monotonic(), 0
        while block := response.read1(1 << 16):
            handle.write(block)
            total += len(block)
            if total >= mark_bytes + stall_bytes:
                mark_bytes, mark_time = total, time.monotonic()
            elif time.monotonic() - mark_time > timeout:
                raise OSError(f"stalled: less than {stall_bytes // 1024} KiB in {timeout:g} s")


def check_local(path: Path, remote: RemoteFile | None) -> Path:
    """A user-given manifest: it must exist; a checksum other than upstream's is only logged
    (users trim manifests on purpose)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {str(path)!r} does not exist")
    if remote is not None and sha256_of(path) != remote.sha256:
        log.warning("%s differs from the upstream manifest (sha256 %s)", path, remote.sha256)
    return path
