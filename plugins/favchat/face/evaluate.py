"""The identity check on real photos: are two captures of one person closer than photos of two people?

Only one real photo per person ships with the packages this plugin can rely on (obama.jpg and biden.jpg in the
project's shared data, scikit-image's `astronaut()`, matplotlib's `grace_hopper.jpg`), so the "second capture" of a
person is a strongly transformed version of the photo: a tight crop downscaled until the face is 48 px wide, JPEG
at quality 20, a brighter and lower-contrast exposure, a mirror image, a 12 degree rotation, and all of these at
once.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]

FACE_WIDTH = 48
"""Face width in pixels after the "low-res crop" transform (the aligned crop's face is about 65 px wide)."""


def _crop_scale(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    import cv2

    x1, y1, x2, y2 = box
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, 1.8 * max(x2 - x1, y2 - y1)
    h, w = image.shape[:2]
    left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    right, bottom = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    crop = image[top:bottom, left:right]
    factor = FACE_WIDTH / max(x2 - x1, 1.0)  # the face ends up FACE_WIDTH pixels wide
    size = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)


def _jpeg(image: np.ndarray, _: np.ndarray, quality: int = 20) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _exposure(image: np.ndarray, _: np.ndarray) -> np.ndarray:
    values = image.astype(np.float32) * 0.7 + 90.0  # brighter, 30 % less contrast
    return np.clip(values, 0, 255).astype(np.uint8)


def _mirror(image: np.ndarray, _: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def _rotate(image: np.ndarray, box: np.ndarray, degrees: float = 12.0) -> np.ndarray:
    import cv2

    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


def _everything(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    rotated = _rotate(_mirror(image, box), _mirrored_box(box, image.shape[1]))
    return _jpeg(_exposure(_crop_scale(rotated, _mirrored_box(box, image.shape[1])), box), box)


def _mirrored_box(box: np.ndarray, width: int) -> np.ndarray:
    return np.array([width - 1 - box[2], box[1], width - 1 - box[0], box[3]], dtype=np.float32)


TRANSFORMS: dict[str, Transform] = {
    "low-res crop": _crop_scale,
    "jpeg q20": _jpeg,
    "exposure": _exposure,
    "mirror": _mirror,
    "rotate 12°": _rotate,
    "all at once": _everything,
}
"""Name -> `transform(image, face_box) -> image`."""


@dataclass
class IdentityReport:
    """Cosine similarities of identity embeddings."""

    same: dict[str, dict[str, float]] = field(default_factory=dict)
    """person -> transform -> cosine(original photo, transformed photo)."""
    different: dict[str, float] = field(default_factory=dict)
    """`"a / b"` -> the highest cosine between any image of person a and any of person b."""
    boxes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    """person -> boxes `(x, y, w, h)` found in the original photo."""

    @property
    def lowest_same(self) -> float:
        return min(value for row in self.same.values() for value in row.values())

    @property
    def highest_different(self) -> float:
        return max(self.different.values())

    def holds(self) -> bool:
        """Every same-person pair is closer than every two-person pair."""
        return self.lowest_same > self.highest_different


def _downscaled(image: np.ndarray, max_side: int | None) -> np.ndarray:
    import cv2

    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    factor = max_side / max(image.shape[:2])
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def identity_report(
    photos: Mapping[str, np.ndarray],
    detector: Any,
    embed: Callable[[np.ndarray], Any],
    *,
    max_side: int | None = 640,
) -> IdentityReport:
    """Detect the largest face of each photo and of each transformed version, align, embed, compare.

    `embed(crops uint8 [N, 112, 112, 3]) -> [N, d]` (a tensor or array) is called once with every crop; cosines
    are of L2-normalised rows. Photos are first downscaled to `max_side` (their faces stay above 150 px).
    """
    from omnimm_plugins.favchat.face.align import align_face
    from omnimm_plugins.favchat.face.encoder import choose_face

    report = IdentityReport()
    crops: list[np.ndarray] = []
    labels: list[tuple[str, str]] = []
    for person, photo in photos.items():
        image = _downscaled(photo, max_side)
        faces = detector.detect(image)
        if not faces:
            raise ValueError(f"no face found in the photo of {person}")
        report.boxes[person] = [face.xywh() for face in detector.detect(photo)]
        main = choose_face(faces)
        assert main is not None
        versions = {"original": image, **{name: t(image, main.box) for name, t in TRANSFORMS.items()}}
        for name, version in versions.items():
            found = choose_face(detector.detect(version))
            if found is None:
                raise ValueError(f"no face found in the '{name}' version of {person}")
            crops.append(align_face(version, found.landmarks))
            labels.append((person, name))
    rows = np.asarray(embed(np.stack(crops)), dtype=np.float64)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for (person, name), row in zip(labels, rows, strict=True):
        vectors.setdefault(person, {})[name] = row
    for person, versions in vectors.items():
        original = versions["original"]
        report.same[person] = {name: float(original @ row) for name, row in versions.items() if name != "original"}
    for a, b in combinations(vectors, 2):
        report.different[f"{a} / {b}"] = max(float(u @ v) for u in vectors[a].values() for v in vectors[b].values())
    return report


def real_photos() -> dict[str, np.ndarray]:
    """The real face photos at hand: obama.jpg and biden.jpg (the project's shared data, when present), scikit-image's
    astronaut (Eileen Collins) and matplotlib's Grace Hopper (when matplotlib is installed)."""
    from pathlib import Path

    from PIL import Image
    from skimage import data

    photos: dict[str, np.ndarray] = {}
    shared = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "faces"
    for name in ("obama", "biden"):
        if (shared / f"{name}.jpg").is_file():
            with Image.open(shared / f"{name}.jpg") as image:
                photos[name] = np.asarray(image.convert("RGB"))
    photos["astronaut"] = data.astronaut()
    try:
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
            photos["hopper"] = np.asarray(image.convert("RGB"))
    except (ImportError, OSError, ValueError):
        pass
    return photos


def main(detectors: tuple[str, ...] = ("yunet", "retinaface")) -> None:
    """Print the identity check (SFace, torch port) for each detector.

    `python -m omnimm_plugins.favchat.face.evaluate`
    """
    import torch

    from omnimm_plugins.favchat.face.detectors import build_detector
    from omnimm_plugins.favchat.face.sface import load_sface, preprocess_crops

    photos = real_photos()
    sface = load_sface()
    for name in detectors:
        try:
            detector = build_detector(name)
        except ImportError as error:
            print(f"{name}: skipped ({error})")
            continue
        with torch.no_grad():
            report = identity_report(photos, detector, lambda crops: sface(preprocess_crops(crops)))
        print(f"detector {name}: faces found {', '.join(f'{p} {len(b)} {b[0]}' for p, b in report.boxes.items())}")
        print("  same person, cosine(original, version): " + ", ".join(TRANSFORMS))
        for person, row in report.same.items():
            print(f"    {person:10s} " + "  ".join(f"{value:.3f}" for value in row.values()))
        print("  two people, highest cosine over all their images:")
        for pair, value in report.different.items():
            print(f"    {pair:22s} {value:.3f}")
        verdict = "holds" if report.holds() else "FAILS"
        lowest, highest = report.lowest_same, report.highest_different
        print(f"  lowest same-person {lowest:.3f} > highest two-person {highest:.3f}: {verdict}")


if __name__ == "__main__":
    main()
