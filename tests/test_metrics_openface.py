"""The openface identity network against golden vectors of thnkim/OpenFacePytorch (float64),
and the rtpose body network against tensorboy's layout. extract_face_id's preprocessing and
the backends end to end are checked against pose-evaluation's own outputs in
tests/test_metrics_pose_evaluation.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.backends import BackendUnavailable, get_identity_backend
from metrics.backends.body_pose import RtposeNet
from metrics.backends.openface import CrossMapLRN, OpenFaceNet, load_openface_state, preprocess

TOLERANCE = dict(atol=1e-9, rtol=1e-9)


@pytest.fixture(scope="module")
def golden(shared_reference):
    return torch.load(shared_reference / "openface-golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def net64(golden):
    model = OpenFaceNet().double()
    return load_openface_state(model, golden["state_dict"]).eval()


def test_state_dict_layout_is_the_ports(golden):
    layout = [(key, tuple(shape)) for key, shape, _ in golden["layout"]]
    ours = [(key, tuple(value.shape)) for key, value in OpenFaceNet().state_dict().items()]
    assert ours == layout  # names, order and shapes: the user's openface.pth loads unchanged


def test_embedding_features_and_intermediates_match_the_original(golden, net64):
    with torch.no_grad():
        embedding, features, kept = net64(golden["inputs"], keep=tuple(golden["intermediates"]))
    torch.testing.assert_close(embedding, golden["outputs"]["embedding"], **TOLERANCE)
    torch.testing.assert_close(features, golden["outputs"]["features_736"], **TOLERANCE)
    for name, expected in golden["intermediates"].items():  # outputs of input 0
        torch.testing.assert_close(kept[name][:1], expected, **TOLERANCE, msg=name)
    # the port's epsilon under the root: norms just under 1, not exactly 1
    norms = embedding.norm(dim=1)
    assert (norms < 1 - 1e-8).all() and (norms > 1 - 1e-6).all()


def test_lrn_keeps_the_legacy_window(golden):
    check = golden["lrn_check"]
    ours = CrossMapLRN(5, 1e-4, 0.75, 1.0)(check["input"])
    torch.testing.assert_close(ours, check["output"], **TOLERANCE)
    symmetric = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(check["input"])
    assert not torch.allclose(symmetric[:, 4:], check["output"][:, 4:], **TOLERANCE)  # the window matters
    torch.testing.assert_close(symmetric[:, :3], check["output"][:, :3], **TOLERANCE)


def test_golden_inputs_are_not_the_resize_extract_face_id_ran(golden):
    """openface-golden.pt resized with scikit-image 0.26's defaults (anti-aliased);
    extract_face_id ran 0.14's (no anti-aliasing), which `preprocess` reproduces: the two
    differ by up to 0.16 (reference/README.md), so the network is checked on the file's own
    inputs above and the preprocessing against pose-evaluation-golden.pt."""
    ours = preprocess(golden["inputs_raw_256"].numpy())
    assert ours.shape == golden["inputs"].shape and 1e-2 < np.abs(ours - golden["inputs"].numpy()).max() < 0.2


def test_backend_loads_weights_without_batch_counters_and_embeds_whole_frames(golden, net64, tmp_path,
                                                                              monkeypatch):
    """Weights converted before torch 0.4.1 carry no num_batches_tracked; the backend runs in
    float32 on every frame (no detection) as the original did."""
    state = {k: v.float() for k, v in golden["state_dict"].items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "openface_nn4_small2_v1.pth")
    monkeypatch.setattr("metrics.backends.openface.WEIGHTS_DIR", tmp_path)
    monkeypatch.delenv("OPENFACE_WEIGHTS", raising=False)
    backend = get_identity_backend("openface")
    frames = golden["inputs_raw_256"].numpy()
    embedding = backend.embed(frames)
    assert embedding.shape == (4, 128) and np.isfinite(embedding).all()
    with torch.no_grad():  # the same pipeline in float64
        expected, _ = net64(torch.from_numpy(preprocess(frames)))
    np.testing.assert_allclose(embedding, expected.numpy(), atol=1e-5)
    blank = backend.embed(np.zeros((1, 256, 256, 3), np.uint8))  # no face, still an embedding
    assert np.isfinite(blank).all()


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr("metrics.backends.openface.WEIGHTS_DIR", tmp_path)
    monkeypatch.setenv("OPENFACE_WEIGHTS", str(tmp_path / "nowhere.pth"))
    with pytest.raises(BackendUnavailable,
                       match=r"put thnkim/OpenFacePytorch's openface.pth at \$OPENFACE_WEIGHTS"):
        get_identity_backend("openface")


def _rtpose_layout() -> list[tuple[str, tuple]]:
    """Conv names and shapes as tensorboy's get_model('vgg19') builds them: block0's conv at
    Sequential indices 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25 (ReLUs and pools between);
    stage 1 convs at 0, 2, 4, 6, 8; stages 2-6 at 0, 2, ..., 12."""
    trunk = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
             (14, 256, 256), (16, 256, 256), (19, 512, 256), (21, 512, 512), (23, 256, 512), (25, 128, 256)]
    layout = []
    for index, out, inp in trunk:
        layout += [(f"model0.{index}.weight", (out, inp, 3, 3)), (f"model0.{index}.bias", (out,))]
    for branch, outputs in ((1, 38), (2, 19)):
        first = [(128, 128, 3), (128, 128, 3), (128, 128, 3), (512, 128, 1), (outputs, 512, 1)]
        for position, (out, inp, k) in enumerate(first):
            layout += [(f"model1_{branch}.{2 * position}.weight", (out, inp, k, k)),
                       (f"model1_{branch}.{2 * position}.bias", (out,))]
        for stage in range(2, 7):
            later = [(128, 185, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (outputs, 128, 1)]
            for position, (out, inp, k) in enumerate(later):
                layout += [(f"model{stage}_{branch}.{2 * position}.weight", (out, inp, k, k)),
                           (f"model{stage}_{branch}.{2 * position}.bias", (out,))]
    return layout


def test_rtpose_layout_is_tensorboys():
    with torch.device("meta"):  # names and shapes only: no 52M weights to initialise
        net = RtposeNet()
        pafs, heatmaps = net(torch.zeros(1, 3, 64, 48))
    ours = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    assert ours == dict(_rtpose_layout())
    assert pafs.shape == (1, 38, 8, 6) and heatmaps.shape == (1, 19, 8, 6)
