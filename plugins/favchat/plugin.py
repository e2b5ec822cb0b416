"""Registers favchat's face pipeline, its mixture-of-experts connector, data, evaluators and commands.
Registration only: nothing heavy is imported here."""

from __future__ import annotations

from typing import Any

from omnimm.hookspecs import hookimpl
from omnimm.registry import Registries

_PACKAGE = "omnimm_plugins.favchat"
_FACE = f"{_PACKAGE}.face"


@hookimpl
def omnimm_register(registries: Registries) -> None:
    detectors = registries.new(
        "face detector", "face_detectors", description="Face detectors giving boxes, scores and five landmarks."
    )
    for name, detector, config in [
        ("favchat/yunet", "YuNetDetector", "YuNetConfig"),
        ("favchat/retinaface", "RetinaFaceDetector", "RetinaFaceConfig"),
        ("favchat/mtcnn", "MTCNNDetector", "MTCNNConfig"),
        ("favchat/scrfd", "SCRFDDetector", "SCRFDConfig"),
    ]:
        detectors.register_lazy(name, f"{_FACE}.detectors:{detector}", config=f"{_FACE}.configs:{config}")
    registries.encoders.register_lazy(
        "favchat/face", f"{_FACE}.encoder:FaceEncoder", config=f"{_FACE}.configs:FaceEncoderConfig"
    )
    registries.connectors.register_lazy(
        "favchat/moe-adapter", f"{_PACKAGE}.moe:MoEAdapter", config=f"{_PACKAGE}.configs:MoEAdapterConfig"
    )
    for name, dataset, config in [
        ("favchat/videos", "FaceVideoDataset", "FaceVideoDataConfig"),
        ("favchat/celebvhq", "CelebVHQDataset", "CelebVHQDataConfig"),
    ]:
        registries.datasets.register_lazy(
            name, f"{_PACKAGE}.data:{dataset}", config=f"{_PACKAGE}.data_configs:{config}"
        )
    for name, evaluator, config in [
        ("favchat/emotion", "EmotionEvaluator", "EmotionEvalConfig"),
        ("favchat/attributes", "AttributeEvaluator", "AttributeEvalConfig"),
        ("favchat/captions", "CaptionEvaluator", "CaptionEvalConfig"),
    ]:
        registries.evaluators.register_lazy(
            name, f"{_PACKAGE}.evaluate:{evaluator}", config=f"{_PACKAGE}.data_configs:{config}"
        )


@hookimpl
def omnimm_cli(app: Any) -> None:
    from omnimm.cli import demo_app
    from omnimm_plugins.favchat.cli import demo_favchat, favchat_app

    app.add_typer(favchat_app, name="favchat")
    demo_app.command("favchat")(demo_favchat)
