"""Vision encoders: per-frame CLS + patch tokens from the chosen layer, random or from local weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnimm import encoders

TINY = {
    "openclip/vit": {"overrides": {"width": 64, "layers": 3, "head_width": 32, "image_size": 32, "patch_size": 8}},
    "hf/clip-vision": {
        "config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        }
    },
    "timm/vit": {"arch": "vit_tiny_patch16_224", "overrides": {"img_size": 32, "patch_size": 8, "depth": 3}},
}


def build(name, **options):
    torch.manual_seed(0)
    return encoders.build({"name": name, **TINY[name], **options}).eval()


@pytest.mark.parametrize("name", sorted(TINY))
def test_frames_in_cls_plus_patches_out(name):
    encoder = build(name)
    frames = np.random.default_rng(0).integers(0, 256, (5, 40, 50, 3), dtype=np.uint8)
    pixels = encoder.preprocess(frames)
    assert pixels.shape == (5, 3, 32, 32)
    tokens = encoder(pixels)
    assert list(tokens) == ["cls", "patches"] == list(encoder.token_groups)
    assert tokens["cls"].shape == (5, 1, encoder.out_dim) and tokens["patches"].shape == (5, 16, encoder.out_dim)
    assert [(g.tokens, g.dim) for g in encoder.token_groups.values()] == [(1, encoder.out_dim), (16, encoder.out_dim)]
    assert encoder.num_patches == 16
    with pytest.raises(ValueError, match=r"expects frames of shape \[frames, 3, 32, 32\]"):
        encoder(torch.zeros(5, 3, 64, 64))


def test_select_layer_matches_hf_hidden_states():
    encoder = build("hf/clip-vision")
    pixels = torch.randn(2, 3, 32, 32)
    hidden = encoder.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.equal(joined(encoder(pixels)), hidden[-2])  # the default: penultimate layer
    last = build("hf/clip-vision", select_layer=-1)
    assert torch.equal(joined(last(pixels)), hidden[-1])
    several = build("hf/clip-vision", select_layers=[-1, 1])(pixels)
    assert list(several) == ["cls_0", "patches_0", "cls_1", "patches_1"]
    assert torch.equal(torch.cat([several["cls_1"], several["patches_1"]], dim=1), hidden[2])  # block 1 (from 0)
    with pytest.raises(ValueError, match="layer 3 is out of range for a 3-block model"):
        build("hf/clip-vision", select_layer=3)


def joined(groups):
    return torch.cat([groups["cls"], groups["patches"]], dim=1)


@pytest.mark.parametrize("name", sorted(TINY))
def test_several_layers_come_in_the_order_listed(name):
    pixels = torch.randn(2, 3, 32, 32)
    several = build(name, select_layers=[-1, 0])(pixels)
    assert torch.allclose(several["patches_0"], build(name, select_layer=-1)(pixels)["patches"])
    assert torch.allclose(several["cls_1"], build(name, select_layer=0)(pixels)["cls"])
    assert not torch.allclose(several["patches_0"], several["patches_1"])
    with pytest.raises(ValueError, match="layer 3 is out of range for a 3-block model"):
        build(name, select_layers=[3])


@pytest.mark.parametrize("name", ["openclip/vit", "timm/vit"])
def test_penultimate_layer_differs_from_the_last(name):
    pixels = torch.randn(2, 3, 32, 32)
    penultimate, last = joined(build(name)(pixels)), joined(build(name, select_layer=-1)(pixels))
    assert penultimate.shape == last.shape and not torch.allclose(penultimate, last)


def test_hf_pretrained_from_a_local_folder(tmp_path):
    encoder = build("hf/clip-vision")
    encoder.model.save_pretrained(tmp_path / "clip")
    loaded = encoders.build({"name": "hf/clip-vision", "pretrained": str(tmp_path / "clip")}).eval()
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(joined(encoder(pixels)), joined(loaded(pixels)))


def test_timm_pretrained_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    encoder = build("timm/vit")
    save_file(encoder.model.state_dict(), tmp_path / "vit.safetensors")
    loaded = encoders.build({"name": "timm/vit", **TINY["timm/vit"], "pretrained": str(tmp_path / "vit.safetensors")})
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.allclose(joined(encoder(pixels)), joined(loaded.eval()(pixels)))


def test_open_clip_pretrained_from_a_local_checkpoint(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(1)
    vision_cfg = {**open_clip.get_model_config("ViT-B-32")["vision_cfg"], **TINY["openclip/vit"]["overrides"]}
    full = open_clip.create_model("ViT-B-32", vision_cfg=vision_cfg)
    save_file(full.state_dict(), tmp_path / "clip.safetensors")
    loaded = encoders.build(
        {"name": "openclip/vit", **TINY["openclip/vit"], "pretrained": str(tmp_path / "clip.safetensors")}
    )
    assert torch.equal(loaded.visual.conv1.weight, full.visual.conv1.weight)
    assert not torch.equal(build("openclip/vit").visual.conv1.weight, full.visual.conv1.weight)


def test_without_weights_drops_the_path():
    from omnimm.vision.configs import HFCLIPVisionConfig

    config = HFCLIPVisionConfig(name="hf/clip-vision", pretrained="/models/clip")
    assert config.without_weights().pretrained is None and config.pretrained == "/models/clip"


def test_resize_to_scales_the_short_side_then_crops_as_torchvision_does():
    from torchvision.transforms import v2

    from omnimm.vision.preprocess import ImageTransform

    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    ours = ImageTransform(224, mean=(0, 0, 0), std=(1, 1, 1), resize_to=256)(frames)
    reference = (
        v2.Compose([v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(224)])(
            torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        )
        / 255
    )
    assert ours.shape == (2, 3, 224, 224)
    assert torch.allclose(ours, reference.clamp(0, 1), atol=1e-4)
    plain = ImageTransform(224, mean=(0, 0, 0), std=(1, 1, 1))(frames)  # CLIP: short side straight to 224
    assert not torch.allclose(plain, ours, atol=1e-2)
