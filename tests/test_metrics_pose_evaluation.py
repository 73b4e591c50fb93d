"""The paper's metric networks against pose-evaluation's own outputs (float64 golden vectors,
../shared/reference/pose-evaluation-golden.pt; reference/README.md gives what was run).

Body pose: the network inputs of every frame and its mirror, the rtpose forward of frame 0
with every stage, and from the network's stored outputs every intermediate of the decode of
each real frame down to the stored 18x2 joints; body identity (reid ft_net, per-frame
BatchNorm statistics) and face identity (OpenFace, scikit-image 0.14's resize) from the uint8
frames; the comparison scripts' numbers. Weights are rebuilt by the file's recipe and checked
against its digests. rtpose in float64 takes about 25 s a frame on two cores, so the network
runs here on frame 0 only; the whole backend on the real and the generated frames is the slow
variant (the float32 backend runs end to end by default in tests/test_metrics_paper_weights.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from golden_recipe import rebuild, state_sha256

from metrics import protocol
from metrics.backends import body_pose, openface, reid

TOLERANCE = dict(atol=1e-9, rtol=1e-9)  # reference/README.md: maps and embeddings


@pytest.fixture(scope="module")
def golden(shared_reference) -> dict:
    return torch.load(shared_reference / "pose-evaluation-golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def states(golden) -> dict[str, dict[str, torch.Tensor]]:
    """The three networks' float64 weights, rebuilt from the file's recipe."""
    out = {}
    for part in ("body_pose", "body_id", "face_id"):
        recipe = golden[part]["recipe"]
        out[part] = rebuild(recipe, golden[part]["layout"])[recipe["modules"][0]]
    return out


@pytest.fixture(scope="module")
def rtpose(states) -> body_pose.RtposeNet:
    return body_pose.load_rtpose(states["body_pose"], torch.float64).eval()


def _assert_maps(ours: np.ndarray, expected: torch.Tensor, what: str) -> None:
    np.testing.assert_allclose(ours, expected.numpy(), **TOLERANCE, err_msg=what)


def _assert_rows(ours: np.ndarray, expected: torch.Tensor, exact: list[int], what: str) -> None:
    """Peaks, limbs, joints or people: the same rows in the same order, the `exact` columns
    (pixels, ids, counts) equal, the scores within the tolerance."""
    expected = expected.numpy()
    assert ours.shape == expected.shape, (what, ours.shape, expected.shape)
    assert np.array_equal(ours[:, exact], expected[:, exact]), what
    np.testing.assert_allclose(ours, expected, **TOLERANCE, err_msg=what)


PEAK_EXACT, LIMB_EXACT, JOINT_EXACT = [0, 1, 3], [0, 1, 3, 4], [0, 1, 3, 4]
PERSON_EXACT = list(range(18)) + [19]  # joint ids and the joint count (column 18 is the score)


def _assert_trace(trace: body_pose.PoseTrace, frame: dict, what: str) -> None:
    for index, side in enumerate(("orig", "flipped")):
        _assert_maps(trace.pafs[index][3::8, 3::8], frame[side]["paf_sampled"], f"{what} {side} PAFs")
        _assert_maps(trace.heats[index][3::8, 3::8], frame[side]["heat_sampled"], f"{what} {side} heat maps")
    _assert_maps(trace.averaged_paf[3::8, 3::8], frame["averaged_paf_sampled"], f"{what} averaged PAFs")
    _assert_maps(trace.averaged_heat[3::8, 3::8], frame["averaged_heat_sampled"], f"{what} averaged heat")
    if "averaged_paf" in frame:  # frame 0 keeps them at full resolution
        _assert_maps(trace.averaged_paf, frame["averaged_paf"], f"{what} averaged PAFs (256x256)")
        _assert_maps(trace.averaged_heat, frame["averaged_heat"], f"{what} averaged heat (256x256)")
    assert len(trace.peaks) == 18 and len(trace.limbs) == 19
    for joint, (ours, expected) in enumerate(zip(trace.peaks, frame["peaks"])):
        _assert_rows(ours, expected, PEAK_EXACT, f"{what} peaks of joint {joint}")
    for limb, (ours, expected) in enumerate(zip(trace.limbs, frame["connected_limbs"])):
        _assert_rows(ours, expected, LIMB_EXACT, f"{what} limbs of type {limb}")
    _assert_rows(trace.joint_list, frame["joint_list"], JOINT_EXACT, f"{what} joint_list")
    _assert_rows(trace.people, frame["person_to_joint_assoc"], PERSON_EXACT, f"{what} person_to_joint_assoc")
    assert np.array_equal(trace.joints, frame["final"].numpy()), what


# --------------------------------------------------------------------------- weights
def test_recipe_weights_match_the_digests_and_the_originals_layouts(golden, states):
    for part in ("body_pose", "body_id", "face_id"):
        assert state_sha256(states[part]) == golden[part]["state_dict_sha256"], part
    with torch.device("meta"):  # names, shapes and order only
        networks = {"body_pose": body_pose.RtposeNet(), "body_id": reid.FtNet(), "face_id": openface.OpenFaceNet()}
    for part, net in networks.items():
        ours = [(key, tuple(value.shape)) for key, value in net.state_dict().items()]
        assert ours == [(key, tuple(shape)) for _, key, shape, _ in golden[part]["layout"]], part


# --------------------------------------------------------------------------- body pose
def test_network_inputs_are_the_frame_and_its_mirror_resized_by_cv2(golden):
    for index, frame in enumerate(golden["body_pose"]["frames"]):
        bgr = golden["body_pose"]["input_frames_rgb"][index].numpy()[..., ::-1]
        assert float(frame["multiplier"][0]) == body_pose.BOX_SIZE / 256  # one scale: 368 / height
        for side, image in (("orig", bgr), ("flipped", bgr[:, ::-1])):
            padded, resized = body_pose.network_input(image)
            assert np.array_equal(padded, frame[side]["im_croped"].numpy()), (index, side)
            assert list(resized) + [3] == frame[side]["real_shape"]
    # rtpose_preprocess is exact in float32: the network sees k / 256 - 0.5
    crop = golden["body_pose"]["frames"][0]["orig"]["im_croped"].numpy()
    assert np.array_equal(body_pose.preprocess(crop), crop.transpose(2, 0, 1) / 256 - 0.5)


def test_rtpose_forward_of_frame_0_matches_every_stage(golden, rtpose):
    frame = golden["body_pose"]["frames"][0]["orig"]
    batch = torch.from_numpy(body_pose.preprocess(frame["im_croped"].numpy()))[None].double()
    with torch.no_grad():
        pafs, heats, kept = rtpose(batch, keep=True)
    torch.testing.assert_close(kept["model0"], frame["model0"], **TOLERANCE)
    for index, (ours, expected) in enumerate(zip(kept["stages"], frame["stages"], strict=True)):
        torch.testing.assert_close(ours, expected, **TOLERANCE, msg=f"stage output {index}")
    torch.testing.assert_close(pafs, frame["net_paf"], **TOLERANCE)
    torch.testing.assert_close(heats, frame["net_heat"], **TOLERANCE)


def _decode_stored(frame: dict) -> body_pose.PoseTrace:
    crops = [frame[side]["im_croped"].numpy() for side in ("orig", "flipped")]
    outputs = {name: [frame[side][name][0].numpy().transpose(1, 2, 0) for side in ("orig", "flipped")]
               for name in ("net_paf", "net_heat")}
    return body_pose.decode(outputs["net_paf"], outputs["net_heat"], crops, (368, 368), (256, 256))


def test_decode_of_the_networks_outputs_reproduces_every_intermediate(golden):
    """Resizes, flip averaging, NMS with the 5x5 snap, limbs, people and the 18x2 value of
    the three real frames (20 / 21 / 39 peaks, 1 / 1 / 3 people), from the stored outputs."""
    traces = [_decode_stored(frame) for frame in golden["body_pose"]["frames"]]
    for index, (trace, frame) in enumerate(zip(traces, golden["body_pose"]["frames"])):
        _assert_trace(trace, frame, f"real frame {index}")
    assert [(len(trace.joint_list), len(trace.people)) for trace in traces] == [(20, 1), (21, 1), (39, 3)]
    assert np.array_equal(np.stack([trace.joints for trace in traces]), golden["body_pose"]["final"].numpy())


def test_decode_details_that_decide_the_joints(golden):
    """The 5x5 snap puts frame 0's two left knees on one pixel; without the flip averaging
    or the snap the peaks would differ (the decode checked above is not vacuous)."""
    frame = golden["body_pose"]["frames"][0]
    trace = _decode_stored(frame)
    knees = trace.peaks[12][:, :2]
    assert len(knees) == 2 and np.array_equal(knees[0], knees[1]) and knees[0].tolist() == [146, 88]
    unaveraged = body_pose.find_peaks(trace.heats[0])
    assert [len(p) for p in unaveraged] != [len(p) for p in trace.peaks]
    assert body_pose.stored_joints(np.array([[1, 2, .5, 0, 3], [7, 8, .4, 1, 3]]))[3].tolist() == [7, 8]


def test_a_frame_without_peaks_stores_every_joint_missing():
    trace = body_pose.decode([np.zeros((46, 46, 38))] * 2, [np.zeros((46, 46, 19))] * 2,
                             [np.zeros((368, 368, 3), np.uint8)] * 2, (368, 368), (256, 256))
    assert trace.joint_list.shape == (0, 5) and trace.people.shape == (0, 20)
    assert (trace.joints == -1).all()


@pytest.mark.slow
def test_body_pose_backend_on_the_real_and_generated_frames(golden, rtpose):
    """extract_body_pose end to end in float64 (12 forward passes, about 5 minutes)."""
    expected = golden["body_pose"]
    real = body_pose.trace_frames(rtpose, expected["input_frames_rgb"].numpy(), torch.float64)
    for index, (trace, frame) in enumerate(zip(real, expected["frames"])):
        for side, paf, heat in zip(("orig", "flipped"), trace.net_pafs, trace.net_heats):
            _assert_maps(paf, frame[side]["net_paf"][0].permute(1, 2, 0), f"frame {index} {side} PAFs")
            _assert_maps(heat, frame[side]["net_heat"][0].permute(1, 2, 0), f"frame {index} {side} heat")
        _assert_trace(trace, frame, f"real frame {index}")
    generated = body_pose.trace_frames(rtpose, expected["generated"]["input_frames_rgb"].numpy(), torch.float64)
    for index, trace in enumerate(generated):
        _assert_rows(trace.joint_list, expected["generated"]["joint_list"][index], JOINT_EXACT,
                     f"generated frame {index} joint_list")
        _assert_rows(trace.people, expected["generated"]["person_to_joint_assoc"][index], PERSON_EXACT,
                     f"generated frame {index} person_to_joint_assoc")
        assert np.array_equal(trace.joints, expected["generated"]["final"][index].numpy())


# --------------------------------------------------------------------------- identities
def test_reid_embeds_with_double_normalisation_and_per_frame_batchnorm(golden, states):
    expected = golden["body_id"]
    inputs = reid.preprocess(expected["input_frames_rgb"].numpy(), torch.float64)
    torch.testing.assert_close(inputs, expected["inputs"], **TOLERANCE)
    assert -2.12 < inputs.min() and inputs.max() < -1.78  # /255 twice, then ImageNet's normalisation
    net = reid.load_ft_net(states["body_id"], torch.float64).eval()  # eval() changes nothing here
    generated = reid.preprocess(golden["body_pose"]["generated"]["input_frames_rgb"].numpy(), torch.float64)
    with torch.no_grad():
        outputs = net(torch.cat([inputs, generated]))
        single = net(inputs[1:2])  # statistics are per frame: batching changes nothing
    torch.testing.assert_close(outputs[:3], expected["outputs"], **TOLERANCE)
    torch.testing.assert_close(outputs[3:], expected["generated"]["outputs"], **TOLERANCE)
    torch.testing.assert_close(single, expected["outputs"][1:2], **TOLERANCE)
    eval_mode = reid.load_ft_net(states["body_id"], torch.float64, frame_statistics=False).eval()
    with torch.no_grad():
        running = eval_mode(inputs[:1])
    torch.testing.assert_close(running, expected["outputs_eval_mode"][:1], **TOLERANCE)  # not the reference
    assert (running - outputs[:1]).abs().max() > 100
    assert net.model.bn1.running_mean.equal(states["body_id"]["model.bn1.running_mean"])  # left as loaded


def test_openface_from_the_uint8_frames_with_scikit_image_0_14_defaults(golden, states):
    expected = golden["face_id"]
    assert expected["resize_kwargs"] == openface.RESIZE_0_14
    resized = openface.resize_bgr(expected["inputs_raw_256"].numpy())
    _assert_maps(resized, expected["resized_bgr_96"], "resized BGR frames")
    inputs = openface.preprocess(expected["inputs_raw_256"].numpy())
    _assert_maps(inputs, expected["inputs"], "network inputs")
    generated = openface.preprocess(expected["generated"]["inputs_raw_256"].numpy())
    _assert_maps(generated, expected["generated"]["inputs"], "generated network inputs")
    net = openface.load_openface_state(openface.OpenFaceNet().double(), states["face_id"]).eval()
    with torch.no_grad():
        embedding, features = net(torch.from_numpy(np.concatenate([inputs, generated])))
    torch.testing.assert_close(embedding[:4], expected["outputs"], **TOLERANCE)
    torch.testing.assert_close(features[:4], expected["features_736"], **TOLERANCE)
    torch.testing.assert_close(embedding[4:], expected["generated"]["outputs"], **TOLERANCE)


# --------------------------------------------------------------------------- cmp scripts
def test_protocol_gives_the_comparison_scripts_numbers(golden):
    """cmp_with_missing.py (AKD, MKR) and cmp.py (AED, the squared sum) on the extracted values."""
    frames = golden["cmp"]["dataframes"]
    cmp = golden["cmp"]
    mkr, akd = protocol.body_mkr_akd(frames["body_pose_real"]["value"].numpy(),
                                     frames["body_pose_generated"]["value"].numpy())
    np.testing.assert_allclose(akd.values, cmp["body_pose"]["scores"].numpy(), **TOLERANCE)
    np.testing.assert_allclose(mkr.values, cmp["body_pose"]["missing"].numpy(), **TOLERANCE)
    assert protocol.pooled([akd])["value"] == pytest.approx(cmp["body_pose"]["average_difference"], rel=1e-12)
    assert protocol.pooled([mkr])["value"] == pytest.approx(cmp["body_pose"]["missing_count"], rel=1e-12)
    assert cmp["body_pose"]["average_difference"] == pytest.approx(17.864918414918417, rel=1e-15)
    for part in ("body_id", "face_id"):
        real, fake = (frames[f"{part}_{side}"]["value"].numpy()[:, 0] for side in ("real", "generated"))
        scores = protocol.aed(real, fake)
        np.testing.assert_allclose(scores.values, cmp[part]["scores"].numpy(), **TOLERANCE)
        assert protocol.pooled([scores])["value"] == pytest.approx(cmp[part]["average_difference"], rel=1e-12)
    # the extracted values are this file's network outputs
    np.testing.assert_array_equal(frames["body_pose_real"]["value"].numpy(), golden["body_pose"]["final"].numpy())
    np.testing.assert_array_equal(frames["body_id_real"]["value"].numpy()[:, 0], golden["body_id"]["outputs"].numpy())
    np.testing.assert_array_equal(frames["face_id_generated"]["value"].numpy()[:, 0],
                                  golden["face_id"]["generated"]["outputs"].numpy())
