"""Video input: decoding, sampling, clear errors on bad files, and the encoders' preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omnimm.errors import MediaError
from omnimm.video import read_image, read_video, read_visual, uniform_indices
from omnimm.vision.preprocess import CLIP_MEAN, CLIP_STD, ImageTransform

from .conftest import SHARED, requires_shared, write_test_video


@pytest.fixture
def video(tmp_path):
    return write_test_video(tmp_path / "grey.mkv", frames=12, fps=6)


def grey_levels(clip) -> list[int]:
    return [round(frame.mean() / 10) for frame in clip.frames]


def test_uniform_indices_include_both_ends():
    assert uniform_indices(12, 4) == [0, 3, 7, 11]  # linspace(0, 11, 4) = 0, 3.67, 7.33, 11, rounded down as Valley
    assert uniform_indices(5, 5) == [0, 1, 2, 3, 4]
    assert uniform_indices(0, 4) == []


def test_uniform_sampling_returns_the_right_frames(video):
    clip = read_video(video, num_frames=4)
    assert clip.frames.shape == (4, 48, 48, 3) and clip.frames.dtype == np.uint8
    assert clip.indices == [0, 3, 7, 11]
    assert grey_levels(clip) == clip.indices  # the decoded pixels are those frames
    assert clip.timestamps == pytest.approx([i / 6 for i in clip.indices], abs=1e-3)  # Matroska: 1 ms ticks
    assert (clip.fps, clip.total_frames) == (6.0, 12)


def test_rate_sampling_and_its_cap(video):
    clip = read_video(video, fps=2)
    assert clip.indices == [0, 3, 6, 9]
    assert read_video(video, fps=6, max_frames=3).indices == [0, 5, 11]


def test_every_frame_when_no_rule_is_given(video):
    clip = read_video(video)
    assert clip.indices == list(range(12)) and grey_levels(clip) == list(range(12))


def test_more_samples_than_frames_repeat_frames_and_say_so(video):
    clip = read_video(video, num_frames=20)
    assert clip.num_frames == 20 and clip.indices[-1] == 11
    assert len(clip.repeated) == 20 - 12 and all(clip.indices[i] == clip.indices[i - 1] for i in clip.repeated)
    assert read_video(video, num_frames=12).repeated == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        read_video("x.mp4", num_frames=2, fps=1)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        read_video("x.mp4", num_frames=0)


def test_missing_empty_and_garbage_files_name_the_file(tmp_path):
    with pytest.raises(MediaError, match=r"absent\.mp4: file not found"):
        read_video(tmp_path / "absent.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty\.mp4: file is empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 50)
    with pytest.raises(MediaError, match=r"junk\.mp4: cannot decode video") as caught:
        read_video(tmp_path / "junk.mp4")
    assert caught.value.path.endswith("junk.mp4") and isinstance(caught.value, ValueError)


@requires_shared
def test_the_shared_corrupted_mp4_is_reported_not_crashed():
    with pytest.raises(MediaError, match=r"corrupted\.mp4: cannot decode video \(Invalid data"):
        read_visual(SHARED / "data" / "video" / "corrupted.mp4", num_frames=8)


@requires_shared
def test_a_real_video():
    clip = read_visual(SHARED / "data" / "video" / "flipping_a_pancake.mkv", num_frames=8)
    assert clip.frames.shape == (8, 240, 426, 3)
    assert clip.indices[0] == 0 and clip.indices == sorted(clip.indices)
    assert clip.timestamps[-1] == pytest.approx(clip.duration, abs=0.2)


def test_an_image_is_a_one_frame_video(tmp_path):
    path = tmp_path / "dot.png"
    Image.fromarray(np.full((10, 20, 3), 200, dtype=np.uint8)).save(path)
    clip = read_visual(path, num_frames=8)
    assert clip.frames.shape == (1, 10, 20, 3) and clip.indices == [0]
    (tmp_path / "bad.jpg").write_bytes(b"no image here")
    with pytest.raises(MediaError, match=r"bad\.jpg: cannot decode image"):
        read_image(tmp_path / "bad.jpg")


def test_transform_matches_a_pil_reference():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    ours = ImageTransform(32)(frame[None])[0]
    image = Image.fromarray(frame).resize((48, 32), Image.BICUBIC)  # shorter side to 32
    cropped = np.asarray(image)[:, 8:40].astype(np.float32) / 255
    reference = (torch.from_numpy(cropped).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(
        CLIP_STD
    )[:, None, None]
    assert ours.shape == (3, 32, 32)
    assert (ours - reference).abs().mean() < 0.05  # antialiased bicubic ~ PIL's bicubic


def test_transform_squash_and_shape_errors():
    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    assert ImageTransform(16, resize="squash")(frames).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\[frames, height, width, 3\]"):
        ImageTransform(16)(np.zeros((2, 3, 40, 40), dtype=np.uint8))
