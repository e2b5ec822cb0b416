"""Face alignment: a similarity transform of the 5 landmarks onto ArcFace's 112 x 112 template, then a warp.

The transform is the least-squares similarity (rotation, uniform scale, translation) of Umeyama (1991), in closed
form; `cv2.warpAffine` applies it. SFace, ArcFace/IResNet and most 112 x 112 recognisers are trained on crops made
this way.
"""

from __future__ import annotations

import numpy as np

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye (in the image)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)
"""Where the 5 landmarks land in a 112 x 112 aligned crop (insightface's `arcface_dst`)."""

CROP_SIZE = 112


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix `M` of the similarity that maps `source` points onto `target` points best (least squares).

    Umeyama's closed form: centre both sets, take the SVD of their covariance, correct a reflection if needed, then
    scale = trace(D S) / variance(source) and translation = mean(target) - scale R mean(source).
    """
    src = np.asarray(source, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need two matching sets of >= 2 points, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best orthogonal map is a reflection: take the rotation
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    variance = (src_c**2).sum() / len(src)
    if variance == 0:
        raise ValueError("the source points all coincide")
    scale = float((singular * sign).sum() / variance)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 affine matrix to `[N, 2]` points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The matrix taking a face's 5 landmarks (image coordinates) to the ArcFace template (scaled to `size`)."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if not np.isfinite(landmarks).all():
        raise ValueError("landmarks contain NaN or infinite values (no face)")
    return similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / CROP_SIZE))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The `size x size` aligned crop (same dtype and channels as `image`) of the face with these 5 landmarks."""
    import cv2

    matrix = alignment_matrix(landmarks, size)
    return cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def align_faces(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Aligned crops `[N, size, size, C]` for `[N, 5, 2]` landmarks of one image."""
    marks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    channels = image.shape[2:] if image.ndim == 3 else ()
    crops = np.zeros((len(marks), size, size, *channels), dtype=image.dtype)
    for index, points in enumerate(marks):
        crops[index] = align_face(image, points, size)
    return crops
