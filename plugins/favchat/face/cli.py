"""`faces_command`: list the faces of an image or a video, save aligned crops, write identity embeddings.

```
faces SOURCE [--out DIR] [--embed] [--detector yunet|retinaface|mtcnn|scrfd] [--num-frames 8] [--min-score S]
```

One line per face: `frame <i> t=<seconds>s box=<x>,<y>,<w>,<h> score=<s>`. With `--out`, the aligned 112 x 112
crops are written as `frame<i>_face<j>.png`; with `--embed` too, `embeddings.safetensors` holds `embeddings`
`[N, d]` (SFace, ported to torch), `frames` `[N]`, `boxes` `[N, 4]` (x1, y1, x2, y2), `scores` `[N]` and
`landmarks` `[N, 5, 2]`. A missing, unreadable or corrupt input prints one line on stderr and exits with code 2.

Run it directly with `python -m omnimm_plugins.favchat.face.cli SOURCE ...`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

BAD_INPUT = 2


def _fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def face_model_config(config: str) -> tuple[Any, str]:
    """The model config of `--config` (a run file, a model file or `plugin:name`) and the key of its face encoder."""
    from omnimm.config import load_config
    from omnimm.run import RunConfig

    loaded = load_config(config)
    model_config = loaded.model if isinstance(loaded, RunConfig) else loaded
    keys = [key for key, encoder in getattr(model_config, "encoders", {}).items() if encoder.name == "favchat/face"]
    if not keys:
        raise ValueError(f"{config}: the model has no favchat/face encoder")
    return model_config, keys[0]


def encode_with_config(model_config: Any, face_key: str, crops: Any) -> None:
    """`--config`: the aligned crops, as the frames of one clip, through the face encoder and the connector of a video
    LLM config (the model is built without pretrained weights). Other encoders' groups are zeros of their declared
    shapes. Prints every group's shape."""
    import torch

    from omnimm.registry import models

    if len(crops) == 0:
        raise ValueError("no face was found, so nothing goes through the encoder")
    model = models.build(model_config.without_weights()).eval()
    encoder = model.encoders[face_key]
    count = len(crops)
    with torch.no_grad():
        pixels = encoder.preprocess.normalise(crops)
        out = encoder({"pixels": pixels, "mask": torch.ones(count, dtype=torch.bool)})
        groups = {f"{face_key}.{name}": tokens[None] for name, tokens in out.items() if name != "mask"}
        for ref, group in model.encoder_groups.items():
            groups.setdefault(ref, torch.zeros(1, count, group.tokens, group.dim))
        for ref, tokens in groups.items():
            source = "aligned crops" if ref.startswith(f"{face_key}.") else "zeros (not a face encoder)"
            print(f"{ref}: {list(tokens.shape)} from {source}")
        result = model.connector(groups, {face_key: torch.ones(1, count, dtype=torch.bool)})
    for name, tokens in result.tokens.items():
        print(f"connector ({model_config.connector.name}) -> {name}: {list(tokens.shape)}")
    describe = getattr(model.connector, "describe", None)
    for line in describe() if callable(describe) else []:
        print(f"connector: {line}")


def faces_command(
    source: Annotated[Path, typer.Argument(help="An image (jpg, png, ...) or a video file.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for the aligned 112 x 112 crops (PNG).")
    ] = None,
    embed: Annotated[
        bool, typer.Option("--embed", help="Also write identity embeddings (SFace) to OUT/embeddings.safetensors.")
    ] = False,
    config: Annotated[
        str | None,
        typer.Option("--config", help="A model config whose face encoder and connector the crops go through."),
    ] = None,
    detector: Annotated[
        str, typer.Option("--detector", "-d", help="yunet, retinaface, mtcnn or scrfd (scrfd needs --model).")
    ] = "yunet",
    num_frames: Annotated[int, typer.Option("--num-frames", "-n", min=1, help="Frames sampled from a video.")] = 8,
    min_score: Annotated[
        float | None, typer.Option("--min-score", min=0.0, max=1.0, help="Detector score threshold.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="A detector ONNX file on disk (required for scrfd).")
    ] = None,
) -> None:
    """Detect faces (5 landmarks) in an image or sampled video frames; print one line per face."""
    from pydantic import ValidationError

    from omnimm.errors import MediaError, MissingDependencyError
    from omnimm.video import read_visual

    if embed and out is None:
        raise _fail("--embed needs --out (the folder where embeddings.safetensors is written)")
    if detector in ("scrfd", "favchat/scrfd") and model is None:
        raise _fail("detector 'scrfd' needs --model: the path to an SCRFD .onnx of an insightface model pack")
    options: dict[str, Any] = {"name": detector}
    if min_score is not None:
        options["score_threshold"] = min_score
    if model is not None:
        options["model"] = str(model)
    try:
        from omnimm_plugins.favchat.face.configs import detector_config
        from omnimm_plugins.favchat.face.detectors import build_detector

        face_detector = build_detector(detector_config(options))
    except (ValidationError, ValueError, FileNotFoundError) as error:
        raise _fail(f"detector {detector!r}: {_one_line(error)}") from None
    except MissingDependencyError as error:
        raise _fail(str(error), code=1) from None
    if not source.exists():
        raise _fail(f"{source}: file not found")
    face_model = None
    if config is not None:  # checked before any detection runs
        try:
            face_model = face_model_config(config)
        except (ValueError, OSError, KeyError) as error:
            raise _fail(_one_line(error)) from None
    try:
        clip = read_visual(source, num_frames=num_frames)
    except MediaError as error:
        raise _fail(str(error)) from None
    except (OSError, ValueError) as error:
        raise _fail(f"{source}: cannot read ({_one_line(error)})") from None
    if out is not None:  # made once the source has been read: a bad source leaves no empty folder
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _fail(f"--out {out}: cannot create the folder ({error.strerror or error})") from None

    import numpy as np

    from omnimm_plugins.favchat.face.align import align_face

    per_frame = face_detector.detect_many(clip.frames)
    records: list[tuple[int, Any]] = []
    crops = []
    for index, faces in enumerate(per_frame):
        frame_index, stamp = clip.indices[index], clip.timestamps[index]
        for number, face in enumerate(faces):
            x, y, w, h = face.xywh()
            print(f"frame {frame_index} t={stamp:.2f}s box={x},{y},{w},{h} score={face.score:.3f}")
            records.append((frame_index, face))
            crop = align_face(clip.frames[index], face.landmarks)
            crops.append(crop)
            if out is not None:
                _save_png(out / f"frame{frame_index:05d}_face{number}.png", crop)
    print(f"{len(records)} face(s) in {clip.num_frames} frame(s) of {source}")
    if face_model is not None:
        try:
            encode_with_config(*face_model, np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8))
        except (ValueError, OSError, KeyError) as error:
            raise _fail(_one_line(error)) from None
    if embed and out is not None:
        path = _write_embeddings(out, crops, records)
        print(f"wrote {path}")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _save_png(path: Path, crop: Any) -> None:
    from PIL import Image

    Image.fromarray(crop).save(path)


def _write_embeddings(out: Path, crops: list[Any], records: list[tuple[int, Any]]) -> Path:
    import numpy as np
    import torch
    from safetensors.torch import save

    from omnimm.files import atomic_write_bytes
    from omnimm_plugins.favchat.face.sface import load_sface, preprocess_crops

    if crops:
        with torch.no_grad():
            embeddings = load_sface()(preprocess_crops(np.stack(crops)))
    else:
        embeddings = torch.zeros(0, 128)
    tensors = {
        "embeddings": embeddings.contiguous(),
        "frames": torch.tensor([frame for frame, _ in records], dtype=torch.long),
        "boxes": torch.from_numpy(np.stack([f.box for _, f in records]) if records else np.zeros((0, 4), np.float32)),
        "scores": torch.tensor([f.score for _, f in records], dtype=torch.float32),
        "landmarks": torch.from_numpy(
            np.stack([f.landmarks for _, f in records]) if records else np.zeros((0, 5, 2), np.float32)
        ),
    }
    return atomic_write_bytes(out / "embeddings.safetensors", save(tensors, metadata={"encoder": "sface"}))


def main() -> None:
    """Run `faces_command` as a program of its own."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(faces_command)
    app()


if __name__ == "__main__":
    main()
