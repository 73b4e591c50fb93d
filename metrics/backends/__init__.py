"""Pose and identity backends behind AKD, MKR and AED, picked by name from one registry.

A pose backend turns frames into keypoints, an identity backend turns frames into
embeddings (REFERENCE §2). Each declares its `scheme` (which keypoints / which embedding
space), because numbers computed with different schemes do not compare: every table that
reports AKD, MKR or AED must name the backends behind it.

    PoseBackend.detect(frames)     (T, H, W, 3) uint8 -> (T, J, 2) float64 pixel (x, y), NaN where not found
    IdentityBackend.embed(frames)  (T, H, W, 3) uint8 -> (T, D) float64, NaN rows where not found

Optional backends whose package or weights are missing raise `BackendUnavailable` (a
`UserError` naming what to install) when constructed, never later. The paper's networks
(openface, body-pose, reid) find their weights the same way (`find_weights`): the path
given, else the file named by their environment variable, else their file name in
~/.cache/motion-transfer; they are read with fomm.checkpoint's restricted loader.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import numpy as np

from core.errors import UserError

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path.home() / ".cache" / "motion-transfer"


class BackendUnavailable(UserError):
    """An optional backend cannot run here: its package or its weights are missing."""


def find_weights(path: str | os.PathLike | None, env: str, folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first file that exists of: `path`, $`env`, `folder`/name for each of `names`."""
    candidates = [Path(path).expanduser()] if path else []
    if os.environ.get(env):
        candidates.append(Path(os.environ[env]).expanduser())
    candidates += [Path(folder) / name for name in names]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def load_weights(path: Path) -> dict:
    """A state dict from a weights file (restricted unpickler; a DataParallel `module.`
    prefix on every key is dropped)."""
    from fomm.checkpoint import load_checkpoint_file
    state = load_checkpoint_file(path)
    if state and all(isinstance(key, str) and key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Validate a clip (T, H, W, 3) uint8 (a single (H, W, 3) frame is promoted to T=1)."""
    given = np.asarray(frames)
    frames = given[None] if given.ndim == 3 else given
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"frames of shape {given.shape} and dtype {given.dtype}; "
                        "expected (T, H, W, 3) uint8 RGB")
    return frames


class PoseBackend:
    """Keypoints of the (largest) subject in each frame."""

    name: str = ""
    scheme: str = ""
    num_joints: int = 0
    # True only where a test reproduces pose-evaluation's golden vectors with this backend,
    # from the uint8 frame to the stored value (its numbers may sit beside the paper's)
    paper_equivalent: bool = False

    def detect(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, J, 2) float64 pixel (x, y); NaN for joints not found."""
        frames = check_frames(frames)
        out = np.full((len(frames), self.num_joints, 2), np.nan)  # (T, J, 2)
        for index, frame in enumerate(frames):
            points = self.detect_one(frame)
            if points is not None:
                out[index] = points
        return out

    def detect_one(self, frame: np.ndarray) -> np.ndarray | None:
        """One frame (H, W, 3) -> (J, 2) with NaN joints, or None when nothing is found."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, scheme={self.scheme!r})"


class IdentityBackend:
    """An identity embedding of the (largest) subject in each frame."""

    name: str = ""
    scheme: str = ""
    dim: int = 0
    paper_equivalent: bool = False

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, D) float64; NaN rows where no subject is found."""
        frames = check_frames(frames)
        out = np.full((len(frames), self.dim), np.nan)  # (T, D)
        for index, frame in enumerate(frames):
            vector = self.embed_one(frame)
            if vector is not None:
                out[index] = vector
        return out

    def embed_one(self, frame: np.ndarray) -> np.ndarray | None:
        """One frame (H, W, 3) -> (D,), or None when no subject is found."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, scheme={self.scheme!r})"


# name -> "module:Class"; imported on use so that optional packages load only when asked for.
POSE_BACKENDS = {
    "dlib68": "metrics.backends.dlib68:Dlib68Pose",
    "face-alignment": "metrics.backends.face_alignment:FaceAlignmentPose",
    "mediapipe-pose": "metrics.backends.mediapipe_pose:MediapipePose",
    "mediapipe-openpose-18": "metrics.backends.mediapipe_pose:MediapipeOpenPose18",
    "body-pose": "metrics.backends.body_pose:RtposeBodyPose",
}
IDENTITY_BACKENDS = {
    "openface": "metrics.backends.openface:OpenFaceIdentity",
    "dlib-face": "metrics.backends.dlib_face:DlibFaceIdentity",
    "reid": "metrics.backends.reid:ReidIdentity",
    "body-appearance": "metrics.backends.body_appearance:BodyAppearanceIdentity",
}

# Dataset kind -> (pose backends, identity backends), first available wins: the network
# pose-evaluation ran where the user has its weights, else the documented offline substitute.
# Bodies are scored in OpenPose's 18-joint scheme (the paper's MKR counts those joints).
DEFAULTS = {
    "faces": (["face-alignment", "dlib68"], ["openface", "dlib-face"]),
    "bodies": (["body-pose", "mediapipe-openpose-18"], ["reid", "body-appearance"]),
}
# Dataset names of the paper and of this project, by kind; anything else has no pose/identity metric.
DATASET_KINDS = {
    "vox": "faces", "voxceleb": "faces", "vox-256": "faces", "nemo": "faces", "faces": "faces",
    "taichi": "bodies", "taichi-hd": "bodies", "taichi-256": "bodies", "fashion": "bodies",
    "bodies": "bodies",
}


def _class(registry: dict, kind: str, name: str) -> type:
    if name not in registry:
        raise UserError(f"unknown {kind} backend {name!r}; expected one of {sorted(registry)}")
    module_name, class_name = registry[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def _build(registry: dict, kind: str, name: str, kwargs: dict):
    return _class(registry, kind, name)(**kwargs)


def get_pose_backend(name: str, **kwargs) -> PoseBackend:
    """Construct the pose backend `name` (raises BackendUnavailable if it cannot run here)."""
    return _build(POSE_BACKENDS, "pose", name, kwargs)


def get_identity_backend(name: str, **kwargs) -> IdentityBackend:
    """Construct the identity backend `name` (raises BackendUnavailable if it cannot run here)."""
    return _build(IDENTITY_BACKENDS, "identity", name, kwargs)


def available_backends() -> list[dict]:
    """Every registered backend with its scheme, whether it runs here, and why not.

    Rows: {kind: "pose"|"identity", name, scheme, available: bool, reason: str}.
    Constructing a backend may load its model (a second or so for dlib).
    """
    rows = []
    for kind, registry, build in (("pose", POSE_BACKENDS, get_pose_backend),
                                  ("identity", IDENTITY_BACKENDS, get_identity_backend)):
        for name in registry:
            try:
                backend = build(name)
                rows.append(dict(kind=kind, name=name, scheme=backend.scheme, available=True, reason=""))
            except BackendUnavailable as error:
                scheme = _class(registry, kind, name).scheme
                rows.append(dict(kind=kind, name=name, scheme=scheme, available=False, reason=str(error)))
    return rows


def dataset_kind(dataset: str) -> str:
    """'faces', 'bodies' or 'other' for a dataset name (e.g. vox -> faces, taichi -> bodies)."""
    return DATASET_KINDS.get(dataset.lower(), "other")


def default_backends(kind: str) -> tuple[PoseBackend | None, IdentityBackend | None]:
    """The default (pose, identity) backends for a dataset kind, None where none can run.

    faces -> face-alignment (first face, as pose-evaluation) or dlib68, openface or dlib-face;
    bodies -> body-pose (rtpose, with pose_model.pth) or mediapipe mapped to OpenPose's 18
    joints, reid (ft_net, with reid_model.pth) or body-appearance; other (e.g. the synthetic
    `sample` dataset) -> (None, None).
    A kind may also be a dataset name.
    """
    kind = kind if kind in DEFAULTS or kind == "other" else dataset_kind(kind)
    if kind == "other":
        return None, None
    pose_names, identity_names = DEFAULTS[kind]
    return (_first_available(pose_names, get_pose_backend),
            _first_available(identity_names, get_identity_backend))


def _first_available(names: list[str], build):
    for index, name in enumerate(names):
        try:
            return build(name)
        except BackendUnavailable as error:
            fallback = f"; falling back to {names[index + 1]} (not comparable with the paper)" \
                if index + 1 < len(names) else ""
            log.warning("backend %s unavailable: %s%s", name, error, fallback)
    return None
