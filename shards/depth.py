"""The depth-hand crop convention, in one place (as ``gaze.py`` is for eyes).

Every hand source (the built-in simulator ``shards.sim.hands``, NYU's ``depth_*``/
``synthdepth_*`` frames) becomes square crops of one layout, so that training, refinement and
the pose estimator never ask where a crop came from.

Image: ``uint16`` (1, S, S). A crop covers a cube of ``CUBE_MM`` millimetres centred on the
hand (``center``); its depth range [near, far] = center_z -+ CUBE_MM / 2 maps linearly onto
1..65535, so 0.015 mm per step at the default cube, far below any sensor's noise. Depth beyond
the far plane (the background, a wall) is clipped to 65535, depth in front of the near plane to
1, so background (a wall far behind the hand, the empty space of a render) reads as the far
plane. **0 marks an invalid pixel** (no measurement: a real sensor's 0 or 32001, a simulated
hole, outside the frame), kept apart from every valid depth so that the trainer can decide
what D sees there. A render's empty space is background (65535), not invalid: a render never
fails to measure, and a synthetic crop's background must look like a segmented real one's.
Why 16-bit codes relative to the cube and not raw millimetres: the trainer's ``uint16 -> [-1,
1]`` normalisation is then one affine map for every crop (no per-image side input), and a crop
stays exact to well under a millimetre.

Labels (per crop):

- ``joints_uvd`` (36, 3) float32: the 36 NYU joints in crop pixels (u right, v down, pixel
  centres at integers) and depth in millimetres, in NYU's joint order.
- ``joints_xyz`` (36, 3) float32: the same joints in camera coordinates, millimetres (x right,
  y up, z away from the camera, NYU's convention).
- ``center`` (3,) float32: the cube's centre, (u, v) in source-frame pixels and z in mm.
- ``box`` (4,) float32: the crop in source-frame pixels, (u0, v0, u1, v1), u1/v1 exclusive.
- ``view`` (1,) int64 (NYU's Kinect 1, 2, 3; 1 for the simulator) and ``frame`` (1,) int64
  (the source frame index, 0-based).

``EVAL_JOINTS`` are the 14 joints the paper's metric uses (% of crops whose evaluated joints
are all within 5 px, or per-joint, see the estimator).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CODE_STEPS",
    "CUBE_MM",
    "EVAL_JOINTS",
    "FAR_CODE",
    "FOCAL",
    "INVALID",
    "NEAR_CODE",
    "NUM_JOINTS",
    "decode_depth",
    "encode_depth",
    "xyz_to_uvd",
    "uvd_to_xyz",
]

NUM_JOINTS = 36
EVAL_JOINTS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)
CUBE_MM = 300.0
INVALID = 0
# NYU's Kinect intrinsics (fx, fy, cx, cy) for 640x480 frames; the simulator uses them too.
FOCAL = (588.03, 587.07, 320.0, 240.0)
NEAR_CODE, FAR_CODE = 1, 65535  # the cube's near and far planes; INVALID (0) is neither
CODE_STEPS = FAR_CODE - NEAR_CODE  # 65534 steps between them


def encode_depth(depth_mm: np.ndarray, center_z: float, cube_mm: float = CUBE_MM) -> np.ndarray:
    """Millimetres -> uint16 crop codes; NaN and values <= 0 are invalid (code 0)."""
    near = center_z - cube_mm / 2
    d = np.asarray(depth_mm, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    codes = np.rint(NEAR_CODE + (np.where(valid, d, near) - near) / cube_mm * CODE_STEPS)
    codes = np.clip(codes, NEAR_CODE, FAR_CODE)
    return np.where(valid, codes, INVALID).astype(np.uint16)


def decode_depth(codes: np.ndarray, center_z: float, cube_mm: float = CUBE_MM) -> np.ndarray:
    """uint16 crop codes -> millimetres (float32), NaN where invalid."""
    near = center_z - cube_mm / 2
    c = np.asarray(codes).astype(np.float64)
    mm = near + (c - NEAR_CODE) / CODE_STEPS * cube_mm
    return np.where(c == INVALID, np.nan, mm).astype(np.float32)


def xyz_to_uvd(xyz: np.ndarray, focal: tuple[float, float, float, float] = FOCAL) -> np.ndarray:
    """(..., 3) camera millimetres (y up) -> (..., 3) frame pixels and depth (NYU's projection)."""
    fx, fy, cx, cy = focal
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.stack([cx + fx * x / z, cy - fy * y / z, z], axis=-1)


def uvd_to_xyz(uvd: np.ndarray, focal: tuple[float, float, float, float] = FOCAL) -> np.ndarray:
    """Inverse of ``xyz_to_uvd``."""
    fx, fy, cx, cy = focal
    u, v, z = uvd[..., 0], uvd[..., 1], uvd[..., 2]
    return np.stack([(u - cx) * z / fx, (cy - v) * z / fy, z], axis=-1)
