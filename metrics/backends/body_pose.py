"""OpenPose body joints as pose-evaluation's `extract_body_pose` finds them (REFERENCE §8).

The paper's body AKD and MKR come from the rtpose VGG19 network of
pytorch_Realtime_Multi-Person_Pose_Estimation (the submodule pose-evaluation pins, 257d8b4)
with the user's `pose_model.pth`, and from that repository's evaluation code. Per frame
(reference/README.md, `body_pose`), from the uint8 RGB frame:

1. BGR; one scale, 368 / height (the pinned `get_multiplier`).
2. For the frame and its mirror (`get_outputs`): `cv2.resize` by the scale (INTER_LINEAR,
   uint8), zero-padded at the bottom and right to a multiple of 8 (`crop_with_factor`);
   the network on `im / 256 - 0.5`; each of its maps (38 PAFs, 19 heat maps at stride 8)
   `cv2.resize`d x8 (INTER_CUBIC), cropped to the resized frame, `cv2.resize`d to the frame
   (INTER_CUBIC).
3. The mirror's maps flipped back, their left/right channels swapped and their PAF x
   components negated, then averaged with the frame's (`handle_paf_and_heat`).
4. `decode_pose`: peaks are heat map values > 0.1 equal to the maximum of their 4-neighbour
   cross; each moves to the arg-max of the 5x5 window around it (clipped at the border),
   its score that maximum. Limbs are scored along 10 points of the PAFs
   (`find_connected_joints`, thre2 0.05) and grouped into people
   (`group_limbs_of_same_person`).
5. The stored value ignores the people: every peak is written into an (18, 2) array of -1
   in peak order (by type, then y, then x of the unrefined peak), so for a joint type with
   several peaks the last one wins.

`RtposeNet` carries the original's module names (`model0.0.weight` ... `model6_2.12.bias`)
in its registration order, so `pose_model.pth` (the plain state dict extract.py loads before
wrapping the network in DataParallel) loads unchanged. The network runs in float32 as the
original (`model.float()`); `dtype=torch.float64` reproduces the golden file. Without the
weights the backend is unavailable and body tables fall back to mediapipe mapped to the same
18 joints (not comparable with the paper).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from metrics.backends import (WEIGHTS_DIR, BackendUnavailable, PoseBackend, check_frames, find_weights,
                              load_weights)

log = logging.getLogger(__name__)

WEIGHTS_ENV = "RTPOSE_WEIGHTS"
WEIGHTS_NAMES = ("pose_model.pth",)
BOX_SIZE, STRIDE = 368, 8
PEAK_THRESHOLD, PAF_THRESHOLD = 0.1, 0.05  # decode_pose's thre1 and thre2 (its thre3 is unused)
PAF_POINTS = 10  # points sampled along a candidate limb
PEAK_WINDOW = 2  # the peak snaps to the maximum of a (2 * 2 + 1)^2 window
NUM_JOINTS = 18
# Joint order: nose, neck, right shoulder, elbow, wrist, left shoulder, elbow, wrist, right hip,
# knee, ankle, left hip, knee, ankle, right eye, left eye, right ear, left ear (heat map 18: background).
SWAP_HEAT = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16, 18)
SWAP_PAF = (6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 20, 21, 22, 23, 24, 25, 26, 27, 12, 13, 14, 15, 16, 17, 18,
            19, 28, 29, 32, 33, 30, 31, 36, 37, 34, 35)
# Limb type -> (source joint, target joint) and -> its (x, y) PAF channels.
LIMB_JOINTS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
               (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17))
LIMB_PAFS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
             (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))

# VGG19 trunk as (in, out) 3x3 convs with 'pool' between groups.
TRUNK = [(3, 64), (64, 64), "pool", (64, 128), (128, 128), "pool", (128, 256), (256, 256), (256, 256),
         (256, 256), "pool", (256, 512), (512, 512), (512, 256), (256, 128)]


# --------------------------------------------------------------------------- the network
def _sequential(layers: list) -> nn.Sequential:
    return nn.Sequential(OrderedDict((str(index), layer) for index, layer in enumerate(layers)))


def trunk() -> nn.Sequential:
    """VGG19 to conv4_2 plus conv4_3_CPM and conv4_4_CPM, a ReLU after every conv."""
    layers = []
    for item in TRUNK:
        if item == "pool":
            layers.append(nn.MaxPool2d(2, 2, 0))
        else:
            layers += [nn.Conv2d(item[0], item[1], 3, 1, 1), nn.ReLU(inplace=True)]
    return _sequential(layers)


def stage(inputs: int, outputs: int, first: bool) -> nn.Sequential:
    """Stage 1: three 3x3 convs, 1x1 to 512, 1x1 out. Stages 2-6: five 7x7 convs, 1x1, 1x1 out.
    A ReLU follows every conv but the last."""
    if first:
        shapes = [(inputs, 128, 3), (128, 128, 3), (128, 128, 3), (128, 512, 1), (512, outputs, 1)]
    else:
        shapes = [(inputs, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (128, outputs, 1)]
    layers = []
    for index, (cin, cout, kernel) in enumerate(shapes):
        layers.append(nn.Conv2d(cin, cout, kernel, 1, kernel // 2))
        if index < len(shapes) - 1:
            layers.append(nn.ReLU(inplace=True))
    return _sequential(layers)


class RtposeNet(nn.Module):
    """(B, 3, H, W) BGR / 256 - 0.5 -> (PAFs (B, 38, H/8, W/8), heat maps (B, 19, H/8, W/8)).

    Branch 1 (PAFs) of every stage is registered before branch 2, as the original does, so
    the state dict lists its keys in the original's order.
    """

    def __init__(self):
        super().__init__()
        self.model0 = trunk()
        for branch, outputs in ((1, 38), (2, 19)):
            for index in range(1, 7):
                inputs = 128 if index == 1 else 128 + 38 + 19
                setattr(self, f"model{index}_{branch}", stage(inputs, outputs, index == 1))

    def forward(self, x: torch.Tensor, keep: bool = False):
        """(PAFs, heat maps) of stage 6; with `keep`, also {'model0': trunk features,
        'stages': [PAFs 1, heat 1, ..., PAFs 5, heat 5]}."""
        features = self.model0(x)  # (B, 128, H/8, W/8)
        pafs, heatmaps = self.model1_1(features), self.model1_2(features)
        stages = [pafs, heatmaps]
        for index in range(2, 7):
            joined = torch.cat([pafs, heatmaps, features], 1)  # (B, 185, H/8, W/8)
            pafs = getattr(self, f"model{index}_1")(joined)
            heatmaps = getattr(self, f"model{index}_2")(joined)
            stages += [pafs, heatmaps]
        if keep:
            return pafs, heatmaps, {"model0": features, "stages": stages[:-2]}
        return pafs, heatmaps


# --------------------------------------------------------------------------- get_outputs
def network_input(frame_bgr: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """`crop_with_factor` at the scale of `get_multiplier`: (padded (h8, w8, 3) uint8, the
    resized frame's (h, w)). Scaled so the shorter side is 368 / height * height px."""
    import cv2
    height, width = frame_bgr.shape[:2]
    target = BOX_SIZE / height * height  # the multiplier times the height, as the original
    scale = target / min(height, width)
    resized = cv2.resize(np.ascontiguousarray(frame_bgr), None, fx=scale, fy=scale)  # INTER_LINEAR
    rows, cols = resized.shape[:2]
    padded = np.zeros((-(-rows // STRIDE) * STRIDE, -(-cols // STRIDE) * STRIDE, 3), np.uint8)
    padded[:rows, :cols] = resized
    return padded, (rows, cols)


def preprocess(padded: np.ndarray) -> np.ndarray:
    """`rtpose_preprocess`: (h, w, 3) uint8 -> (3, h, w) float32 im / 256 - 0.5 (exact)."""
    return (padded.astype(np.float32) / 256 - 0.5).transpose(2, 0, 1)


def frame_maps(net_map: np.ndarray, resized: tuple[int, int], frame_shape: tuple[int, int]) -> np.ndarray:
    """A network map (h8, w8, C) -> the frame's (H, W, C) float64: x8 cubic, cropped to the
    resized frame, cubic to the frame size, in the network's dtype as cv2 gets it."""
    import cv2
    upsampled = cv2.resize(np.ascontiguousarray(net_map), None, fx=STRIDE, fy=STRIDE,
                           interpolation=cv2.INTER_CUBIC)
    cropped = np.ascontiguousarray(upsampled[:resized[0], :resized[1]])
    out = cv2.resize(cropped, (frame_shape[1], frame_shape[0]), interpolation=cv2.INTER_CUBIC)
    return out.astype(np.float64)  # get_outputs adds it to float64 zeros


def average_with_mirror(paf: np.ndarray, heat: np.ndarray, mirror_paf: np.ndarray,
                        mirror_heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`handle_paf_and_heat`: the mirror's maps flipped back, left and right swapped, PAF x
    components (the even channels) negated, then the mean with the frame's maps."""
    back_paf = mirror_paf[:, ::-1, :].copy()
    back_paf[:, :, 0::2] = -back_paf[:, :, 0::2]
    averaged_paf = (paf + back_paf[:, :, list(SWAP_PAF)]) / 2.0
    averaged_heat = (heat + mirror_heat[:, ::-1, :][:, :, list(SWAP_HEAT)]) / 2.0
    return averaged_paf, averaged_heat


# --------------------------------------------------------------------------- decode_pose
def find_peaks(heatmaps: np.ndarray, threshold: float = PEAK_THRESHOLD) -> list[np.ndarray]:
    """`NMS` at the frame's size: per joint type an (n, 4) array of (x, y, score, id).

    A peak is a value above `threshold` equal to the maximum of its 4-neighbour cross
    (scipy's maximum_filter, border reflected); it then moves to the first arg-max of the 5x5
    window around it and takes that value as its score. Ids count peaks over all types.
    """
    from scipy.ndimage import generate_binary_structure, maximum_filter
    footprint = generate_binary_structure(2, 1)
    height, width = heatmaps.shape[:2]
    out, count = [], 0
    for joint in range(NUM_JOINTS):
        plane = np.ascontiguousarray(heatmaps[:, :, joint])
        ys, xs = np.nonzero((maximum_filter(plane, footprint=footprint) == plane) & (plane > threshold))
        peaks = np.zeros((len(ys), 4))
        for index, (y, x) in enumerate(zip(ys, xs)):
            top, left = max(0, y - PEAK_WINDOW), max(0, x - PEAK_WINDOW)
            window = plane[top:min(height - 1, y + PEAK_WINDOW) + 1, left:min(width - 1, x + PEAK_WINDOW) + 1]
            row, col = np.unravel_index(window.argmax(), window.shape)
            peaks[index] = (left + col, top + row, window[row, col], count)
            count += 1
        out.append(peaks)
    return out


def connect_limbs(pafs: np.ndarray, peaks: list[np.ndarray], threshold: float = PAF_THRESHOLD) -> list[np.ndarray]:
    """`find_connected_joints`: per limb type a (k, 5) array of (source id, target id, score,
    source index, target index).

    A candidate pair is scored at 10 points along the segment (rounded to pixels) by the dot
    product of the PAF with the unit direction; it qualifies when more than 8 points exceed
    `threshold` and the mean, minus a penalty for limbs longer than half the frame height, is
    positive. Pairs are taken greedily by that score, each joint used once.
    """
    height = pafs.shape[0]
    limbs = []
    for limb, (source_type, target_type) in enumerate(LIMB_JOINTS):
        sources, targets = peaks[source_type], peaks[target_type]
        chosen = np.zeros((0, 5))
        if len(sources) and len(targets):
            x_channel, y_channel = LIMB_PAFS[limb]
            candidates = []
            for i, source in enumerate(sources):
                for j, target in enumerate(targets):
                    direction = target[:2] - source[:2]
                    length = np.sqrt(np.sum(direction ** 2)) + 1e-8
                    direction = direction / length
                    xs = np.round(np.linspace(source[0], target[0], num=PAF_POINTS)).astype(np.intp)
                    ys = np.round(np.linspace(source[1], target[1], num=PAF_POINTS)).astype(np.intp)
                    # (2, points) transposed, the layout the original's fancy index gives
                    along = np.stack([pafs[ys, xs, x_channel], pafs[ys, xs, y_channel]]).T  # (points, 2)
                    scores = along.dot(direction)  # (points,)
                    score = scores.mean() + min(0.5 * height / length - 1, 0)
                    if np.count_nonzero(scores > threshold) > 0.8 * PAF_POINTS and score > 0:
                        candidates.append((i, j, score))
            candidates.sort(key=lambda candidate: candidate[2], reverse=True)  # stable: ties keep order
            most = min(len(sources), len(targets))
            for i, j, score in candidates:
                if i not in chosen[:, 3] and j not in chosen[:, 4]:
                    chosen = np.vstack([chosen, [sources[i][3], targets[j][3], score, i, j]])
                    if len(chosen) >= most:
                        break
        limbs.append(chosen)
    return limbs


def group_people(limbs: list[np.ndarray], joint_list: np.ndarray) -> np.ndarray:
    """`group_limbs_of_same_person`: (P, 20) rows of 18 joint ids (-1 none), score, count.

    Limbs are visited by type; a limb sharing its source or target id with exactly one person
    extends that person by its target; with two people, they merge when they share no joint
    type (else the first is extended); otherwise (none, or more than two) it starts a person.
    People with fewer than 3 joints or a mean score under 0.2 are dropped.
    """
    people: list[np.ndarray] = []
    for limb, (source_type, target_type) in enumerate(LIMB_JOINTS):
        for source_id, target_id, score, _, _ in limbs[limb]:
            owners = [index for index, person in enumerate(people)
                      if person[source_type] == source_id or person[target_type] == target_id]
            if len(owners) == 1:
                person = people[owners[0]]
                if person[target_type] != target_id:
                    person[target_type] = target_id
                    person[-1] += 1
                    person[-2] += joint_list[int(target_id), 2] + score
            elif len(owners) == 2:
                first, second = people[owners[0]], people[owners[1]]
                if not ((first >= 0) & (second >= 0))[:-2].any():
                    first[:-2] += second[:-2] + 1
                    first[-2:] += second[-2:]
                    first[-2] += score
                    people.pop(owners[1])
                else:
                    first[target_type] = target_id
                    first[-1] += 1
                    first[-2] += joint_list[int(target_id), 2] + score
            else:
                person = -np.ones(NUM_JOINTS + 2)
                person[source_type], person[target_type] = source_id, target_id
                person[-1] = 2
                person[-2] = joint_list[[int(source_id), int(target_id)], 2].sum() + score
                people.append(person)
    kept = [person for person in people if not (person[-1] < 3 or person[-2] / person[-1] < 0.2)]
    return np.array(kept) if kept else np.zeros((0, NUM_JOINTS + 2))


def stored_joints(joint_list: np.ndarray) -> np.ndarray:
    """extract.py's value: (18, 2) (x, y) of each type's last peak in joint_list, -1 where none."""
    out = -np.ones((NUM_JOINTS, 2))
    for x, y, _, _, joint in joint_list:
        out[int(joint)] = x, y  # rows in order: the last peak of a type wins
    return out


@dataclass
class PoseTrace:
    """Every intermediate of one frame, named after the original's variables."""
    crops: list[np.ndarray]       # the frame's and the mirror's (h8, w8, 3) uint8 network inputs (BGR)
    net_pafs: list[np.ndarray]    # (h8/8, w8/8, 38) network outputs, frame then mirror
    net_heats: list[np.ndarray]   # (h8/8, w8/8, 19)
    pafs: list[np.ndarray]        # (H, W, 38) float64 at the frame's size, frame then mirror
    heats: list[np.ndarray]       # (H, W, 19)
    averaged_paf: np.ndarray      # (H, W, 38) handle_paf_and_heat
    averaged_heat: np.ndarray     # (H, W, 19)
    peaks: list[np.ndarray]       # 18 x (n, 4) x, y, score, id
    limbs: list[np.ndarray]       # 19 x (k, 5)
    joint_list: np.ndarray        # (N, 5) x, y, score, id, type
    people: np.ndarray            # (P, 20)
    joints: np.ndarray            # (18, 2), -1 where missing


def decode(net_pafs: list[np.ndarray], net_heats: list[np.ndarray], crops: list[np.ndarray],
           resized: tuple[int, int], frame_shape: tuple[int, int]) -> PoseTrace:
    """Steps 2-5 from the network's outputs for the frame and its mirror."""
    pafs = [frame_maps(net_map, resized, frame_shape) for net_map in net_pafs]
    heats = [frame_maps(net_map, resized, frame_shape) for net_map in net_heats]
    averaged_paf, averaged_heat = average_with_mirror(pafs[0], heats[0], pafs[1], heats[1])
    peaks = find_peaks(averaged_heat)
    joint_list = np.array([tuple(peak) + (joint,) for joint, rows in enumerate(peaks) for peak in rows])
    joint_list = joint_list.reshape(-1, 5)  # (N, 5), also when no peak is found
    limbs = connect_limbs(averaged_paf, peaks)
    return PoseTrace(crops, net_pafs, net_heats, pafs, heats, averaged_paf, averaged_heat, peaks, limbs,
                     joint_list, group_people(limbs, joint_list), stored_joints(joint_list))


def trace_frames(model: RtposeNet, frames: np.ndarray, dtype: torch.dtype = torch.float32,
                 device: str = "cpu") -> list[PoseTrace]:
    """extract_body_pose on (T, H, W, 3) uint8 RGB frames, every frame and its mirror in one batch."""
    inputs, shapes = [], []
    for frame in frames:
        bgr = frame[..., ::-1]
        for image in (bgr, bgr[:, ::-1, :]):
            padded, resized = network_input(image)
            inputs.append(padded)
        shapes.append(resized)
    batch = torch.from_numpy(np.stack([preprocess(padded) for padded in inputs])).to(device, dtype)
    with torch.no_grad():
        pafs, heats = model(batch)  # (2T, 38, h, w), (2T, 19, h, w)
    pafs = pafs.cpu().numpy().transpose(0, 2, 3, 1)
    heats = heats.cpu().numpy().transpose(0, 2, 3, 1)
    return [decode([pafs[2 * t], pafs[2 * t + 1]], [heats[2 * t], heats[2 * t + 1]], inputs[2 * t:2 * t + 2],
                   shapes[t], frames.shape[1:3]) for t in range(len(frames))]


def weights_path(path: str | os.PathLike | None = None):
    """`path`, else $RTPOSE_WEIGHTS, else ~/.cache/motion-transfer/pose_model.pth; None if none exists."""
    return find_weights(path, WEIGHTS_ENV, WEIGHTS_DIR, WEIGHTS_NAMES)


def load_rtpose(state: dict, dtype: torch.dtype = torch.float32) -> RtposeNet:
    """The network in `dtype` (built in it first, so float64 weights keep every bit)."""
    model = RtposeNet().to(dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0][:200]
        raise BackendUnavailable(f"rtpose weights do not match the VGG19 rtpose network ({first}); expected "
                                 "pose-evaluation's pose_model.pth") from None
    return model


class RtposeBodyPose(PoseBackend):
    """OpenPose's 18 joints as extract_body_pose stores them; a joint without a peak is NaN.

    `dtype`: the network's (float32, the original's; float64 for the golden tests).
    `batch_size`: frames per forward pass (each with its mirror).
    """

    name = "body-pose"
    scheme = "openpose-18"
    num_joints = NUM_JOINTS
    paper_equivalent = True  # tests/test_metrics_pose_evaluation.py against the original's golden file

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 4):
        path = weights_path(weights)
        if path is None:
            where = weights or f"${WEIGHTS_ENV} or {WEIGHTS_DIR / WEIGHTS_NAMES[0]}"
            raise BackendUnavailable(f"rtpose weights not found: put pose-evaluation's pose_model.pth at {where}")
        self.model = load_rtpose(load_weights(path), dtype).to(device).eval()
        self.device, self.dtype, self.batch_size, self.path = device, dtype, int(batch_size), path
        log.info("rtpose weights from %s", path)

    def detect(self, frames: np.ndarray) -> np.ndarray:
        frames = check_frames(frames)
        out = np.full((len(frames), NUM_JOINTS, 2), np.nan)  # (T, 18, 2)
        for start in range(0, len(frames), self.batch_size):
            traces = trace_frames(self.model, frames[start:start + self.batch_size], self.dtype, self.device)
            for index, trace in enumerate(traces):
                found = (trace.joints != -1).any(axis=1)
                out[start + index][found] = trace.joints[found]
        return out
