"""The core's own components: real torch modules, shapes, gradients, and a smoke test over every registry."""

from __future__ import annotations

import pytest
import torch

from omnimm import ConfigError, adapters, encoders, fusers, models
from omnimm.registry import all_registries


def vit(**options):
    return encoders.build({"name": "omnimm/tiny-vit", **options})


def test_tiny_vit_returns_cls_plus_patch_tokens():
    encoder = vit(image_size=32, patch_size=8, dim=48, heads=3)
    tokens = encoder(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 16, 48)
    assert encoder.out_dim == 48 and encoder.num_patches == 16


def test_tiny_vit_rejects_a_wrong_image_shape():
    with pytest.raises(ValueError, match=r"expects images of shape \[batch, 3, 32, 32\], got \[2, 3, 16, 16\]"):
        vit()(torch.randn(2, 3, 16, 16))


def test_tiny_vit_config_rules():
    with pytest.raises(ConfigError, match="patch_size: must divide image_size"):
        vit(patch_size=5)
    with pytest.raises(ConfigError, match=r"heads: must divide dim \(64\)"):
        vit(heads=5)


@pytest.mark.parametrize(("depth", "linear_layers"), [(1, 1), (2, 2), (3, 3)])
def test_mlp_depth(depth, linear_layers):
    projector = adapters.build({"name": "omnimm/mlp", "in_dim": 10, "out_dim": 6, "depth": depth})
    assert sum(isinstance(m, torch.nn.Linear) for m in projector.modules()) == linear_layers
    assert projector(torch.randn(4, 5, 10)).shape == (4, 5, 6)


def test_mlp_takes_its_width_from_the_caller_and_checks_it():
    assert adapters.build({"name": "omnimm/mlp", "out_dim": 6}, in_dim=12).in_dim == 12
    with pytest.raises(ValueError, match="in_dim is not set"):
        adapters.build({"name": "omnimm/mlp", "out_dim": 6})
    with pytest.raises(ValueError, match="in_dim is 8 but its input has 12 features"):
        adapters.build({"name": "omnimm/mlp", "in_dim": 8, "out_dim": 6}, in_dim=12)
    with pytest.raises(ValueError, match=r"width 12 in the last axis, got shape \[2, 5\]"):
        adapters.build({"name": "omnimm/mlp", "out_dim": 6}, in_dim=12)(torch.randn(2, 5))


def test_concat_along_tokens_and_features():
    a, b = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    assert fusers.build("omnimm/concat", in_dims=[8, 8])([a, b]).shape == (2, 8, 8)
    features = fusers.build({"name": "omnimm/concat", "axis": "features"}, in_dims=[8, 4])
    assert features.out_dim == 12
    assert features([torch.randn(2, 3, 8), torch.randn(2, 3, 4)]).shape == (2, 3, 12)
    with pytest.raises(ValueError, match="needs inputs of one width"):
        fusers.build("omnimm/concat", in_dims=[8, 4])
    with pytest.raises(ValueError, match=r"equal width, got shapes \[\[2, 3, 8\], \[2, 5, 4\]\]"):
        fusers.build("omnimm/concat")([a, torch.randn(2, 5, 4)])


def demo_model(**overrides):
    config = {
        "name": "omnimm/multimodal-encoder",
        "encoders": {
            "image": {"name": "omnimm/tiny-vit", "dim": 32, "heads": 2},
            "thumb": {"name": "omnimm/tiny-vit", "image_size": 16, "patch_size": 4, "dim": 32, "heads": 2},
        },
        "fuser": "omnimm/concat",
        "adapter": {"name": "omnimm/mlp", "out_dim": 24},
        **overrides,
    }
    return models.build(config)


def test_multimodal_encoder_composes_and_infers_widths():
    model = demo_model()
    out = model({"image": torch.randn(2, 3, 32, 32), "thumb": torch.randn(2, 3, 16, 16)})
    assert out.shape == (2, 17 + 17, 24)
    assert model.adapter.in_dim == 32 and model.out_dim == 24


def test_multimodal_encoder_names_missing_inputs():
    with pytest.raises(ValueError, match=r"missing input\(s\) \['thumb'\]; it takes \['image', 'thumb'\]"):
        demo_model()({"image": torch.randn(1, 3, 32, 32)})


def test_frozen_parts_get_no_gradient_and_the_rest_does():
    model = demo_model(freeze=["encoders.thumb"])
    out = model({"image": torch.randn(2, 3, 32, 32), "thumb": torch.randn(2, 3, 16, 16)})
    out.square().mean().backward()
    for name, parameter in model.named_parameters():
        if name.startswith("encoders.thumb."):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, name
    assert any(p.grad.abs().sum() > 0 for p in model.encoders["image"].parameters())


def test_freeze_wildcards_cover_several_parts():
    model = demo_model(freeze=["encoders.*", "fuser"])
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter"}


# timm's lesson: every registered component, whatever plugin it comes from, passes the same smoke test.
ENTRIES = [(plural, name) for plural, reg in all_registries().items() for name in reg.names()]


@pytest.mark.parametrize(("plural", "name"), ENTRIES, ids=[f"{p}:{n}" for p, n in ENTRIES])
def test_every_registered_component_imports_and_describes_itself(plural, name):
    registry = all_registries()[plural]
    entry = registry.entry(name)
    config_class = entry.config_class()
    assert config_class.model_json_schema()["type"] == "object"
    assert entry.load() is not None
    assert entry.summary(), f"{plural} '{name}' has no description or docstring"
