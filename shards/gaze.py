"""The gaze label convention, in one place.

Gaze is stored as a unit 3-vector ``(x, y, z)`` in MPIIGaze's normalised camera coordinates:
x points right in the image, y points down in the image, z points from the camera into the
scene. The vector points from the eye towards where it looks, so an eye looking straight into
the camera has gaze ``(0, 0, -1)``.

Angles, in radians::

    pitch = arcsin(-y)        yaw = atan2(-x, -z)
    x = -cos(pitch) sin(yaw)  y = -sin(pitch)  z = -cos(pitch) cos(yaw)

``(0, 0, -1)`` is pitch 0, yaw 0. Positive pitch means looking up (y < 0), which moves the
pupil **up** in the image (towards row 0). Positive yaw means x < 0, which moves the pupil
**left** in the image (towards column 0). The built-in eye simulator (``shards.sim.eyes``)
places the pupil at ``eyeball_centre + R * (x, y)`` in pixels, consistent with this.

UnityEyes writes ``look_vec = (x_u, y_u, z_u, 0)``; public loaders flip x_u and use
pitch = arcsin(y), yaw = atan2(x, z). Equating the two conventions gives
MPIIGaze = ``(x_u, -y_u, -z_u)``, so UnityEyes' straight-ahead ``(0, 0, 1, 0)`` becomes
``(0, 0, -1)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "angular_error_deg",
    "mirror_gaze",
    "mirror_rotation_vector",
    "pitchyaw_from_vector",
    "unit_gaze",
    "unityeyes_to_mpiigaze",
    "vector_from_pitchyaw",
]

# Norms below this are treated as "no direction" rather than silently amplified noise.
_MIN_NORM = 1e-8


def _as_rows(a: np.ndarray, name: str, widths: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[1] not in widths:
        want = " or ".join(f"(N, {w})" for w in widths)
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _normalise(v: np.ndarray, name: str) -> np.ndarray:
    norm = np.linalg.norm(v, axis=1, keepdims=True)  # (N, 1)
    bad = ~(norm[:, 0] > _MIN_NORM)  # also catches NaN
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"{name} has zero-length or non-finite vectors at rows {rows}")
    return v / norm


def pitchyaw_from_vector(v: np.ndarray) -> np.ndarray:
    """(N, 3) gaze vectors (any length > 0) -> (N, 2) float32 (pitch, yaw) in radians."""
    u = _normalise(_as_rows(v, "v", (3,)), "v")  # (N, 3)
    pitch = np.arcsin(np.clip(-u[:, 1], -1.0, 1.0))
    yaw = np.arctan2(-u[:, 0], -u[:, 2])
    return np.stack([pitch, yaw], axis=1).astype(np.float32)


def vector_from_pitchyaw(py: np.ndarray) -> np.ndarray:
    """(N, 2) (pitch, yaw) in radians -> (N, 3) float32 unit gaze vectors."""
    a = _as_rows(py, "py", (2,))  # (N, 2)
    pitch, yaw = a[:, 0], a[:, 1]
    cp = np.cos(pitch)
    v = np.stack([-cp * np.sin(yaw), -np.sin(pitch), -cp * np.cos(yaw)], axis=1)
    return v.astype(np.float32)


def unityeyes_to_mpiigaze(look_vec: np.ndarray) -> np.ndarray:
    """(N, 3) or (N, 4) UnityEyes look_vec -> (N, 3) float32 unit vectors, MPIIGaze convention.

    The 4th (homogeneous, always 0) column is dropped.
    """
    lv = _as_rows(look_vec, "look_vec", (3, 4))[:, :3]  # (N, 3)
    v = lv * np.array([1.0, -1.0, -1.0])
    return _normalise(v, "look_vec").astype(np.float32)


def unit_gaze(v: np.ndarray) -> np.ndarray:
    """(N, 3) gaze vectors already in this convention (e.g. MPIIGaze) -> (N, 3) float32 unit."""
    return _normalise(_as_rows(v, "gaze", (3,)), "gaze").astype(np.float32)


def mirror_gaze(v: np.ndarray) -> np.ndarray:
    """(N, 3) gaze of an eye image flipped left-right -> (N, 3) float32 unit gaze of the flip.

    Flipping columns negates x, so yaw changes sign and pitch is kept (MPIIGaze's right eyes
    are flipped this way to look like left eyes).
    """
    u = _normalise(_as_rows(v, "gaze", (3,)), "gaze")  # (N, 3)
    return (u * np.array([-1.0, 1.0, 1.0])).astype(np.float32)


def mirror_rotation_vector(r: np.ndarray) -> np.ndarray:
    """(N, 3) head-pose rotation vectors (axis * angle) -> (N, 3) float32 for a left-right flip.

    A rotation conjugated by the reflection M = diag(-1, 1, 1) is a rotation about the
    reflected axis by the opposite angle: r -> -M r = (r_x, -r_y, -r_z). Pitch (about x) is
    kept; yaw and roll change sign.
    """
    a = _as_rows(r, "head pose", (3,))
    return (a * np.array([1.0, -1.0, -1.0])).astype(np.float32)


def angular_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 3), (N, 3) gaze vectors (any length > 0) -> (N,) float32 angle between them, degrees."""
    ua = _normalise(_as_rows(a, "a", (3,)), "a")
    ub = _normalise(_as_rows(b, "b", (3,)), "b")
    if ua.shape != ub.shape:
        raise ValueError(f"a and b must have the same shape, got {ua.shape} and {ub.shape}")
    # atan2 of |cross| and dot stays accurate near 0 and 180 degrees, unlike arccos(dot).
    cross = np.linalg.norm(np.cross(ua, ub), axis=1)
    dot = np.sum(ua * ub, axis=1)
    return np.degrees(np.arctan2(cross, dot)).astype(np.float32)
