"""Built-in procedural depth-hand simulator: NYU-style depth crops with exact 36-joint labels.

A right hand is built from capsules and ellipsoids (palm, five digits of three segments each,
a thenar bulk, a wrist and a forearm that leaves the crop), posed with random joint angles and
a random global rotation, placed with its palm centre 500-900 mm from a Kinect with NYU's
intrinsics (``shards.depth.FOCAL``, a 640x480 frame) and ray-cast per pixel (vectorised NumPy,
each primitive only over its projected bounding box). Crops follow ``shards.depth``: uint16
codes over a ``CUBE_MM`` cube centred on the palm centre (NYU joint 32), 0 = invalid.

Two domains share the hand model, the camera and the crop:

- ``"synthetic"``: clean depth with sharp silhouettes and nothing behind the hand (background
  at the far plane, code 65535, and no invalid pixels), like NYU's ``synthdepth`` renders as
  ``convert nyu`` stores them: a render never fails to measure. Poses: every angle independent
  and uniform over its range (below); hand scale U(0.88, 1.06).
- ``"real"``: the same kind of hand in a room, seen through a model of a structured-light
  Kinect, with its own pose distribution. Labels exist for evaluation only.

  Scene: a wall 250-1200 mm behind the palm centre (tilted), a torso behind the elbow (p=0.75)
  and a table below the hand (p=0.3). Sensor, on the 640x480 pixel grid of the frame (the box
  is rendered at native resolution, artifacts applied there, then resized):

  - depth via disparity d = f * b / z (b = 75 mm): Gaussian noise in disparity, white plus
    spatially correlated (sigma 1.5 px), then quantised to 1/8 px, so both the noise and the
    quantisation step grow with z^2 (about 1.4 mm per step at 700 mm, 2.3 mm at 900 mm);
  - projector shadows: a pixel is invalid where a nearer surface to its right occludes the
    projector (disparity difference > pixel distance), so a band of missing pixels follows
    the left edge of the hand and of each finger lying over the palm;
  - depth discontinuities (3x3 true disparity range > 1 px): some edge pixels dropped, some
    become flying pixels (a random mix of the nearest and farthest depth around them);
  - random blob holes (thresholded smooth noise) and isolated dropouts.

Poses (degrees). Flexion per finger segment (MCP, PIP, DIP), abduction per finger, thumb
opposition (swing across the palm with palmar tilt), thumb MCP and IP flexion, wrist flexion
and deviation, global roll (image plane), pitch (fingers towards / away from the camera) and
yaw (about the hand's long axis; |yaw| > 90 shows the back of the hand):

- synthetic: MCP U(-15, 90), PIP U(0, 100), DIP U(0, 70), abduction U(-15, 15), opposition
  U(0, 1), thumb MCP U(-10, 55), IP U(-15, 80), wrist flexion U(-20, 50) (positive: forearm
  away from the camera), deviation U(-20, 20); roll U(-60, 60), pitch U(-40, 40), yaw
  U(-120, 120), palm centre z U(500, 900).
- real: a shared curl c ~ Beta(0.7, 1.1) drives all fingers together (MCP 80c, PIP 95c,
  each + N(0, 10), DIP 0.7 PIP + N(0, 6)), abduction N(0, 6) shrinking as the hand closes,
  opposition Beta(1.2, 1.6), thumb MCP 20 + 30c and IP 45c (+ noise), wrist N(15, 15) and
  N(0, 8); roll N(10, 20), pitch N(10, 15), yaw N(-15, 40), z N(700, 90); hand scale
  N(0.97, 0.04). Every real value is clipped to the synthetic range, so the synthetic domain
  covers the real one.

Both domains also vary each digit's length by U(0.95, 1.05) and the thickness by U(0.92, 1.08).

Joints, in NYU's order (``JOINT_NAMES``). NYU's rig (Tompson et al. 2014) puts two spheres on
each phalanx: ``KNU3`` on the distal, ``KNU2`` on the middle and ``KNU1`` on the proximal
phalanx, ``_A`` distal and ``_B`` proximal. Ours, per finger (F1 pinky, F2 ring, F3 middle,
F4 index, then the thumb TH), from tip to base:

====  =========  ==========================================  ============================
k     NYU name   fingers (joint 6f + k)                      thumb (joint 24 + k)
====  =========  ==========================================  ============================
0     KNU3_A     fingertip: centre of the tip's round end    thumb tip (same)
1     KNU3_B     DIP joint                                   IP joint
2     KNU2_A     middle of the middle phalanx                middle of the proximal phalanx
3     KNU2_B     PIP joint                                   MCP joint
4     KNU1_A     middle of the proximal phalanx              middle of the metacarpal
5     KNU1_B     MCP joint (the finger's base, a knuckle)    CMC joint (base, near wrist)
====  =========  ==========================================  ============================

Palm: 30 PALM_1 wrist, thumb (radial) side; 31 PALM_2 wrist, little-finger (ulnar) side;
32 PALM_3 palm centre, midway between the wrist centre and the middle finger's MCP, in the
palm's mid-plane (the crop's cube centre); 33 PALM_4 wrist centre; 34 PALM_5 radial edge of
the palm; 35 PALM_6 ulnar edge of the palm. The 14 evaluated joints (``EVAL_JOINTS``) are then
the five tips, four PIPs, the thumb's IP and MCP, both wrist sides and the palm centre. Joint
points lie on the bone axes, inside the flesh: the skin seen at a fingertip's pixel is about
one tip radius (6.5-7.5 mm at scale 1) nearer than the joint. Coordinates follow
``shards.depth``: xyz in camera mm (x right, y up, z away), uvd in crop pixels + mm.

Crop: the cube's centre is joint 32; the box is the square of B = round(CUBE_MM * fx / z)
source pixels around its projection (integer pixel indices, inside the frame by
construction), resized to ``size`` x ``size`` by nearest neighbour: crop pixel j takes source
pixel u0 + floor((j + 0.5) * B / size), so invalid pixels never blend into valid ones and a
crop pixel's depth is a real measurement. Joint crop coordinates are u_c = (u - u0 + 0.5) *
size / B - 0.5 (pixel centres at integers in both frames); joint 32 lands within half a source
pixel of the crop centre. Poses whose joints would leave the crop are redrawn.

Every sample depends only on ``(domain, seed, index)``: sample i draws from
``SeedSequence(seed, spawn_key=(domain, i))`` (``domain`` = index in ``DOMAINS``), the i-th
child of the domain's child of ``SeedSequence(seed)``, so any batching, chunking or worker
count gives the same crops.

Run ``python -m shards.sim.hands OUT.png`` to write a contact sheet to look at.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from shards.depth import CUBE_MM, EVAL_JOINTS, FAR_CODE, FOCAL, NUM_JOINTS, encode_depth

__all__ = [
    "DEFAULT_SIZE",
    "DOMAINS",
    "FRAME_SHAPE",
    "JOINT_NAMES",
    "PALM_CENTRE",
    "REAL_DOMAINS",
    "SIM_VERSION",
    "generate",
    "render",
]

DOMAINS = ("synthetic", "real")
REAL_DOMAINS = DOMAINS[1:]
# Bumped whenever rendering or sampling changes, so caches of built-in shards are rebuilt.
SIM_VERSION = 1
DEFAULT_SIZE = 224
FRAME_SHAPE = (480, 640)  # (H, W) of the simulated Kinect frame
PALM_CENTRE = 32  # the joint the crop's cube is centred on

_FINGERS = ("F1", "F2", "F3", "F4", "TH")  # NYU's order: pinky, ring, middle, index, thumb
_KNUCKLES = ("KNU3_A", "KNU3_B", "KNU2_A", "KNU2_B", "KNU1_A", "KNU1_B")
JOINT_NAMES = tuple(f"{f}_{k}" for f in _FINGERS for k in _KNUCKLES) + tuple(
    f"PALM_{i}" for i in range(1, 7)
)
assert len(JOINT_NAMES) == NUM_JOINTS

_FX, _FY, _CX, _CY = FOCAL
_RAD = np.pi / 180.0

# --- the hand model, at scale 1, in millimetres ----------------------------------------------
# Local frame of a right hand in the base pose (palm facing the camera, fingers up): x towards
# the thumb (image right), y towards the fingertips (up), z dorsal (away from the camera); the
# wrist centre is the origin and the palm's mid-plane is z = 0. Finger rows in NYU order.
_MCP = np.array([[-31.0, 77.0], [-14.0, 86.0], [5.0, 90.0], [25.0, 86.0]])  # (4, 2) x, y
_SPLAY = np.array([-14.0, -6.0, 0.0, 6.0]) * _RAD  # rest direction, + towards the thumb
_SEG_LEN = np.array(
    [[32.0, 20.0, 17.0], [41.0, 27.0, 19.0], [44.0, 28.0, 19.0], [40.0, 24.0, 18.0]]
)
_SEG_RAD = np.array([[7.8, 7.1, 6.5], [8.6, 7.9, 7.2], [9.0, 8.3, 7.5], [8.8, 8.0, 7.3]])
# Metacarpals: capsules from near the wrist to each MCP make the palm's body and knuckles.
_META_BASE = np.array([[-19.0, 13.0], [-8.0, 10.0], [4.0, 10.0], [15.0, 12.0]])
_META_RAD = np.array([11.0, 11.5, 12.0, 12.0])
_CMC = np.array([20.0, 14.0, -6.0])  # thumb base, on the volar side
_THUMB_LEN = np.array([42.0, 32.0, 25.0])  # metacarpal, proximal, distal
_THUMB_RAD = np.array([13.0, 10.0, 8.5])  # the metacarpal's capsule is the thenar bulk
_PALM_ELLIPSOID = (np.array([-3.0, 48.0, 0.0]), np.array([33.0, 40.0, 12.5]))
_PALM_POINTS = np.array(  # joints 30, 31, 33, 34, 35 (32 is computed: it depends on the MCP)
    [[18.0, 2.0, 0.0], [-18.0, 2.0, 0.0], [0.0, 0.0, 0.0], [29.0, 52.0, 0.0], [-33.0, 48.0, 0.0]]
)
_FOREARM_LEN = 280.0  # wrist to elbow: far outside the 300 mm cube

# Kinect v1: focal length (px) times projector baseline (mm); disparity in px = _FB / z.
_FB = _FX * 75.0
_MAX_RANGE = 4000.0  # mm; beyond it the sensor returns nothing
_SYNTHETIC, _REAL = 0, 1


@dataclass
class _Scene:
    """One sample before rendering, in camera millimetres (x right, y up, z away)."""

    capsules: np.ndarray  # (K, 7): endpoint a (3), endpoint b (3), radius
    ellipsoids: np.ndarray  # (E, 13): centre (3), M (9, row-major), bounding radius
    joints: np.ndarray  # (36, 3) xyz
    box: tuple[int, int, int]  # u0, v0, B: source pixels [u0, u0 + B) x [v0, v0 + B)
    center: np.ndarray  # (3,) u, v (source frame) and z of joint 32
    walls: list[tuple[float, float, float]]  # planes z = c + gx x + gy y: (c, gx, gy)
    tables: list[tuple[float, float]]  # planes y = c + k z: (c, k)


# --- public API ---------------------------------------------------------------------------------


def generate(
    domain: str,
    count: int,
    seed: int,
    start: int = 0,
    size: int = DEFAULT_SIZE,
    look: str | None = None,
) -> dict[str, np.ndarray]:
    """Samples start .. start+count-1 of the stream (domain, seed); see ``render``."""
    for name, value in (("count", count), ("start", start)):
        _check_int(name, value)
    return render(domain, range(start, start + count), seed, size, look)


def render(
    domain: str,
    indices: Sequence[int] | np.ndarray,
    seed: int,
    size: int = DEFAULT_SIZE,
    look: str | None = None,
) -> dict[str, np.ndarray]:
    """Crops for the given sample indices of the stream (domain, seed), in the given order.

    `look` (a domain; default `domain`) renders the stream's hands as that domain shows
    them: ``render("synthetic", i, s, look="real")`` gives the same hands, poses and crop
    boxes as ``render("synthetic", i, s)`` in a room through the sensor model, which is what
    a perfect refiner would make of them: the ceiling of what refinement can reach.

    Returns {"image": uint16 (N, 1, size, size) depth codes (``shards.depth``, 0 invalid),
    "joints_uvd": float32 (N, 36, 3) crop pixels + mm, "joints_xyz": float32 (N, 36, 3) camera
    mm, "center": float32 (N, 3) joint 32 as source-frame (u, v) + z mm, "box": float32 (N, 4)
    (u0, v0, u1, v1) source-frame pixels, u1/v1 exclusive, "view": int64 (N, 1) all 1,
    "frame": int64 (N, 1) the sample indices}.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    _check_int("seed", seed)
    _check_int("size", size)
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    indices = [int(i) for i in indices]
    for i in indices:
        _check_int("index", i)
    dom = DOMAINS.index(domain)
    if look is not None and look not in DOMAINS:
        raise ValueError(f"unknown look {look!r}; expected one of {DOMAINS}")
    room = sensor = dom if look is None else DOMAINS.index(look)
    n = len(indices)
    out = {
        "image": np.zeros((n, 1, size, size), np.uint16),
        "joints_uvd": np.zeros((n, NUM_JOINTS, 3), np.float32),
        "joints_xyz": np.zeros((n, NUM_JOINTS, 3), np.float32),
        "center": np.zeros((n, 3), np.float32),
        "box": np.zeros((n, 4), np.float32),
        "view": np.ones((n, 1), np.int64),
        "frame": np.array(indices, np.int64).reshape(n, 1),
    }
    for row, index in enumerate(indices):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(dom, index)))
        scene = _sample_scene(rng, dom, room)
        depth = _crop_depth(scene, rng, sensor, size)  # (size, size) mm, NaN invalid
        out["image"][row, 0] = encode_depth(depth, float(scene.center[2]))
        u0, v0, b = scene.box
        out["joints_xyz"][row] = scene.joints
        out["joints_uvd"][row] = _to_crop(_project(scene.joints), u0, v0, b, size)
        out["center"][row] = scene.center
        out["box"][row] = (u0, v0, u0 + b, v0 + b)
    return out


def _check_int(name: str, value: object) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _project(xyz: np.ndarray) -> np.ndarray:
    """(..., 3) camera mm -> (..., 3) source-frame u, v and z (``shards.depth.xyz_to_uvd``)."""
    z = xyz[..., 2]
    return np.stack([_CX + _FX * xyz[..., 0] / z, _CY - _FY * xyz[..., 1] / z, z], axis=-1)


def _to_crop(uvd: np.ndarray, u0: int, v0: int, b: int, size: int) -> np.ndarray:
    """Source-frame (u, v, d) -> crop (u, v, d); pixel centres at integers in both."""
    scale = size / b
    return np.stack(
        [
            (uvd[..., 0] - u0 + 0.5) * scale - 0.5,
            (uvd[..., 1] - v0 + 0.5) * scale - 0.5,
            uvd[..., 2],
        ],
        axis=-1,
    )


# --- sampling -----------------------------------------------------------------------------------


def _sample_scene(rng: np.random.Generator, dom: int, shown: int | None = None) -> _Scene:
    """Draw a pose of domain `dom` that keeps every joint inside the crop (redrawn until it
    does), in the surroundings of domain `shown` (default `dom`; drawn after everything of
    the hand's)."""
    shown = dom if shown is None else shown
    for _ in range(100):
        pose = _sample_pose(rng, dom)
        capsules, ellipsoids, joints, elbow = _build_hand(pose)
        # Global pose: rotate about the palm centre, then put it at the sampled point.
        rot = _rotation(pose["roll"], pose["pitch"], pose["yaw"])
        pivot = joints[PALM_CENTRE]
        z = pose["z"]
        b = int(round(CUBE_MM * _FX / z))
        h, w = FRAME_SHAPE
        cu = rng.uniform(b / 2, w - b / 2 - 1)
        cv = rng.uniform(b / 2, h - b / 2 - 1)
        centre = np.array([(cu - _CX) * z / _FX, (_CY - cv) * z / _FY, z])

        move = (rot, pivot, centre)
        joints = _place(joints, *move)
        u0 = min(max(int(np.floor(cu + 1.0 - b / 2)), 0), w - b)
        v0 = min(max(int(np.floor(cv + 1.0 - b / 2)), 0), h - b)
        crop = _to_crop(_project(joints), u0, v0, b, b)  # in source pixels of the box
        margin = 0.02 * b
        if crop[:, :2].min() < margin or crop[:, :2].max() > b - 1 - margin:
            continue
        capsules = np.concatenate(
            [_place(capsules[:, :3], *move), _place(capsules[:, 3:6], *move), capsules[:, 6:]], 1
        )
        ellipsoids = np.concatenate(
            [
                _place(ellipsoids[:, :3], *move),
                # M maps a camera offset to the unit sphere: M_new = M_local @ rot.T.
                (ellipsoids[:, 3:12].reshape(-1, 3, 3) @ rot.T).reshape(-1, 9),
                ellipsoids[:, 12:],
            ],
            1,
        )
        walls: list[tuple[float, float, float]] = []
        tables: list[tuple[float, float]] = []
        if shown == _REAL:
            # The wall is beyond the cube, but the sensor's shadows fall on it.
            ellipsoids, walls, tables = _sample_background(
                rng, ellipsoids, _place(elbow, *move), centre
            )
        return _Scene(
            capsules, ellipsoids, joints, (u0, v0, b), np.array([cu, cv, z]), walls, tables
        )
    raise AssertionError("no pose kept the hand inside its crop in 100 draws")


def _sample_pose(rng: np.random.Generator, dom: int) -> dict[str, np.ndarray]:
    """Joint angles (radians), global rotation, depth and shape of one hand."""
    u = rng.uniform
    if dom == _SYNTHETIC:
        flex = np.stack([u(-15, 90, 4), u(0, 100, 4), u(0, 70, 4)], axis=1)  # (4, 3)
        abduct = u(-15, 15, 4)
        opposition = u(0, 1)
        thumb_flex = np.array([u(-10, 55), u(-15, 80)])
        wrist = np.array([u(-20, 50), u(-20, 20)])
        roll, pitch, yaw = u(-60, 60), u(-40, 40), u(-120, 120)
        z = u(500, 900)
        scale = u(0.88, 1.06)
    else:
        curl = rng.beta(0.7, 1.1)
        mcp = 80 * curl + rng.normal(0, 10, 4)
        pip = 95 * curl + rng.normal(0, 10, 4)
        dip = 0.7 * pip + rng.normal(0, 6, 4)
        flex = np.stack([np.clip(mcp, -15, 90), np.clip(pip, 0, 100), np.clip(dip, 0, 70)], axis=1)
        abduct = np.clip(rng.normal(0, 6, 4) * (1.0 - 0.7 * curl), -15, 15)
        opposition = rng.beta(1.2, 1.6)
        thumb_flex = np.clip(
            [20 + 30 * curl + rng.normal(0, 10), 45 * curl + rng.normal(0, 12)],
            [-10, -15],
            [55, 80],
        )
        wrist = np.clip([rng.normal(15, 15), rng.normal(0, 8)], [-20, -20], [50, 20])
        roll = np.clip(rng.normal(10, 20), -60, 60)
        pitch = np.clip(rng.normal(10, 15), -40, 40)
        yaw = np.clip(rng.normal(-15, 40), -120, 120)
        z = np.clip(rng.normal(700, 90), 500, 900)
        scale = np.clip(rng.normal(0.97, 0.04), 0.88, 1.06)
    return {
        "flex": flex * _RAD,
        "abduct": abduct * _RAD,
        "opposition": np.float64(opposition),
        "thumb_flex": np.asarray(thumb_flex) * _RAD,
        "wrist": np.asarray(wrist) * _RAD,
        "roll": np.float64(roll * _RAD),
        "pitch": np.float64(pitch * _RAD),
        "yaw": np.float64(yaw * _RAD),
        "z": np.float64(z),
        "scale": np.float64(scale),
        "lengths": u(0.95, 1.05, 5),  # per digit, thumb last
        "thickness": u(0.92, 1.08),
    }


def _place(p: np.ndarray, rot: np.ndarray, pivot: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Local hand points (..., 3) -> camera mm: rotate about ``pivot``, move it to ``centre``."""
    return (p - pivot) @ rot.T + centre


def _rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(roll) Rx(pitch) Ry(yaw): yaw about the hand's long axis first."""
    cr, sr, cp, sp, cy, sy = (
        np.cos(roll),
        np.sin(roll),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(yaw),
        np.sin(yaw),
    )
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def _chain(
    start: np.ndarray, d: np.ndarray, n: np.ndarray, bends: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """Points of a planar chain: segment k bends by bends[k] from d towards n. (len + 1, 3)."""
    points = [start]
    for bend, length in zip(bends, lengths, strict=True):
        d, n = np.cos(bend) * d + np.sin(bend) * n, -np.sin(bend) * d + np.cos(bend) * n
        points.append(points[-1] + length * d)
    return np.stack(points)


def _digit_joints(p: np.ndarray) -> np.ndarray:
    """(4, 3) chain points base..tip -> (6, 3) NYU points tip..base (see the module table)."""
    return np.stack([p[3], p[2], (p[1] + p[2]) / 2, p[1], (p[0] + p[1]) / 2, p[0]])


def _build_hand(
    pose: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Primitives and joints in the local hand frame, scaled: capsules (K, 7), ellipsoids
    (E, 13), joints (36, 3), and the elbow point (3,)."""
    s, thick = pose["scale"], pose["thickness"]
    volar = np.array([0.0, 0.0, -1.0])
    capsules, ellipsoids, joints = [], [], []
    for f in range(4):
        mcp = np.array([*_MCP[f], 0.0])
        angle = _SPLAY[f] + pose["abduct"][f]
        direction = np.array([np.sin(angle), np.cos(angle), 0.0])
        pts = _chain(mcp, direction, volar, pose["flex"][f], _SEG_LEN[f] * pose["lengths"][f])
        for k in range(3):
            capsules.append([*pts[k], *pts[k + 1], _SEG_RAD[f, k] * thick])
        capsules.append([*_META_BASE[f], 0.0, *mcp, _META_RAD[f] * thick])
        joints.append(_digit_joints(pts))

    # Thumb: opposition swings the metacarpal from beside the index finger across the palm
    # and tilts it out of the palm's plane (palmar abduction).
    o = pose["opposition"]
    swing, tilt = (50.0 - 40.0 * o) * _RAD, (15.0 + 45.0 * o) * _RAD
    d = np.cos(tilt) * np.array([np.sin(swing), np.cos(swing), 0.0]) + np.sin(tilt) * volar
    pad = np.array([-1.0, 0.0, -0.5])  # the thumb flexes towards the little finger and palm
    pad -= (pad @ d) * d
    pad /= np.linalg.norm(pad)
    bends = np.array([0.0, *pose["thumb_flex"]])
    pts = _chain(_CMC, d, pad, bends, _THUMB_LEN * pose["lengths"][4])
    for k in range(3):
        capsules.append([*pts[k], *pts[k + 1], _THUMB_RAD[k] * thick])
    joints.append(_digit_joints(pts))

    palm_centre = np.array([*_MCP[2], 0.0]) / 2  # midway from the wrist centre to middle MCP
    palm = np.concatenate([_PALM_POINTS[:2], palm_centre[None], _PALM_POINTS[2:]])
    joints.append(palm)
    ellipsoids.append(_ellipsoid(_PALM_ELLIPSOID[0], np.eye(3), _PALM_ELLIPSOID[1] * [1, 1, thick]))

    # Wrist and forearm, bent at the wrist: flexion tilts the forearm away from the palm side.
    flex, dev = pose["wrist"]
    along = np.array([np.sin(dev), -np.cos(dev) * np.cos(flex), np.cos(dev) * np.sin(flex)])
    side = np.array([1.0, 0.0, 0.0]) - along[0] * along
    side /= np.linalg.norm(side)
    back = np.cross(side, along)
    elbow = _FOREARM_LEN * along
    for sign in (-1.0, 1.0):
        a = sign * 10.0 * side + 2.0 * back
        b = elbow + sign * 15.0 * side + 6.0 * back
        capsules.append([*a, *b, 17.0 * thick])
    axes = np.stack([side, along, back], axis=1)  # columns: the ellipsoid's axes
    ellipsoids.append(_ellipsoid(0.68 * elbow, axes, np.array([33.0, 130.0, 26.0]) * thick))

    caps = np.array(capsules) * s
    ells = np.array(ellipsoids)
    ells[:, :3] *= s
    ells[:, 3:12] /= s
    ells[:, 12] *= s
    return caps, ells, np.concatenate(joints) * s, elbow * s


def _ellipsoid(centre: np.ndarray, axes: np.ndarray, radii: np.ndarray) -> list[float]:
    """Centre, M = diag(1/radii) axes^T (camera offset -> unit sphere), bounding radius."""
    m = (axes / radii).T
    return [*centre, *m.ravel(), float(radii.max())]


def _sample_background(
    rng: np.random.Generator, ellipsoids: np.ndarray, elbow: np.ndarray, centre: np.ndarray
) -> tuple[np.ndarray, list[tuple[float, float, float]], list[tuple[float, float]]]:
    """What stands behind a real hand: a wall, often a torso, sometimes a table."""
    z = centre[2]
    walls = [(z + rng.uniform(250, 1200), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3))]
    body = rng.uniform() < 0.75
    torso_at = np.array(
        [
            elbow[0] + rng.uniform(-120, 120),
            elbow[1] + rng.uniform(-100, 150),
            max(elbow[2], z + 100.0) + rng.uniform(150, 350),
        ]
    )
    turn = rng.uniform(-0.4, 0.4)
    axes = np.array([[np.cos(turn), 0, np.sin(turn)], [0, 1, 0], [-np.sin(turn), 0, np.cos(turn)]])
    radii = np.array([rng.uniform(150, 200), rng.uniform(250, 320), rng.uniform(90, 130)])
    if body:
        ellipsoids = np.concatenate([ellipsoids, np.array([_ellipsoid(torso_at, axes, radii)])])
    table = rng.uniform() < 0.3
    level, slope = centre[1] - rng.uniform(180, 320), rng.uniform(-0.15, 0.15)
    return ellipsoids, walls, [(level, slope)] if table else []


# --- rendering ----------------------------------------------------------------------------------


_NOTHING_MM = 1e5  # a render's empty space: beyond any cube's far plane, so code 65535


def _crop_depth(scene: _Scene, rng: np.random.Generator, dom: int, size: int) -> np.ndarray:
    """(size, size) depth in mm, NaN where invalid (nothing there, or no measurement)."""
    u0, v0, b = scene.box
    pick = np.floor((np.arange(size) + 0.5) * b / size).astype(np.int64)  # nearest source px
    if dom == _SYNTHETIC:
        # Nearest-neighbour resizing keeps only these pixels: render just them.
        depth = _raycast(scene, u0 + pick, v0 + pick)
        # Nothing there is background, the far plane (shards.depth), not a missing reading.
        return np.where(np.isfinite(depth), depth, _NOTHING_MM).astype(np.float32)
    # The sensor works on its own pixel grid: render the box at native resolution first.
    depth = _raycast(scene, u0 + np.arange(b), v0 + np.arange(b))
    depth = _kinect(depth, rng)
    return depth[np.ix_(pick, pick)].astype(np.float32)


def _rays(us: np.ndarray, vs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray directions (rx, ry, 1) through pixel centres: rx (1, W), ry (H, 1)."""
    rx = ((np.asarray(us, np.float64) - _CX) / _FX).reshape(1, -1)
    ry = ((_CY - np.asarray(vs, np.float64)) / _FY).reshape(-1, 1)
    return rx, ry


def _raycast(scene: _Scene, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """(len(vs), len(us)) depth (z, mm) of the nearest surface along each pixel's ray; inf if
    none. ``us`` and ``vs`` are ascending source-frame pixel coordinates (repeats allowed)."""
    rx, ry = _rays(us, vs)
    depth = np.full((len(vs), len(us)), np.inf)
    for c, gx, gy in scene.walls:
        np.minimum(depth, c / (1.0 - gx * rx - gy * ry), out=depth)
    for c, k in scene.tables:
        with np.errstate(divide="ignore"):
            t = c / (ry - k)
        np.minimum(depth, np.where(t > 0, t, np.inf), out=depth)

    caps, ells = scene.capsules, scene.ellipsoids
    lo, hi = _bounds(
        np.concatenate([caps[:, :3], ells[:, :3]]),
        np.concatenate([caps[:, 3:6], ells[:, :3]]),
        np.concatenate([caps[:, 6], ells[:, 12]]),
    )
    j0 = np.searchsorted(us, lo[:, 0], "left")
    j1 = np.searchsorted(us, hi[:, 0], "right")
    i0 = np.searchsorted(vs, lo[:, 1], "left")
    i1 = np.searchsorted(vs, hi[:, 1], "right")
    with np.errstate(invalid="ignore", divide="ignore"):
        for p in range(len(caps) + len(ells)):
            if j0[p] >= j1[p] or i0[p] >= i1[p]:
                continue
            x, y = rx[:, j0[p] : j1[p]], ry[i0[p] : i1[p]]
            if p < len(caps):
                t = _hit_capsule(x, y, caps[p])
            else:
                t = _hit_ellipsoid(x, y, ells[p - len(caps)])
            view = depth[i0[p] : i1[p], j0[p] : j1[p]]
            np.minimum(view, t, out=view)
    return depth


def _bounds(a: np.ndarray, b: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel bounding boxes (lo (P, 2), hi (P, 2) as (u, v)) of capsules a-b of radius r.

    A capsule lies in the convex hull of its end spheres, and each sphere in the box
    [x +- r] x [y +- r] x [z +- r]; perspective maps that hull into the hull of the corners'
    projections, so the extreme projected corners bound the capsule.
    """
    corners = []
    for end in (a, b):
        for dz in (-1.0, 1.0):
            z = end[:, 2] + dz * r
            for dx in (-1.0, 1.0):
                corners.append(
                    (_CX + _FX * (end[:, 0] + dx * r) / z, _CY - _FY * (end[:, 1] + dx * r) / z)
                )
    u = np.stack([c[0] for c in corners], 1)
    v = np.stack([c[1] for c in corners], 1)
    return np.stack([u.min(1), v.min(1)], 1), np.stack([u.max(1), v.max(1)], 1)


def _hit_capsule(rx: np.ndarray, ry: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Depth of the first hit of rays (rx, ry, 1) from the origin with a capsule; inf if none.

    The standard ray-capsule test (infinite cylinder, clipped to the segment, else the end
    sphere on that side), with the unnormalised direction: the ray parameter is then z.
    """
    a, b, r = cap[:3], cap[3:6], cap[6]
    ba = b - a
    baba = ba @ ba
    bard = ba[0] * rx + ba[1] * ry + ba[2]  # (h, w)
    baoa = -(ba @ a)
    rdoa = -(a[0] * rx + a[1] * ry + a[2])
    rdrd = rx * rx + ry * ry + 1.0
    qa = baba * rdrd - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * (a @ a) - baoa * baoa - r * r * baba
    h = qb * qb - qa * qc
    t = (-qb - np.sqrt(h)) / qa
    y = baoa + t * bard
    body = (y > 0) & (y < baba)
    # The end sphere on the side the cylinder hit fell (or b if the ray is parallel).
    near_a = y <= 0
    ex = np.where(near_a, a[0], b[0])
    ey = np.where(near_a, a[1], b[1])
    ez = np.where(near_a, a[2], b[2])
    bc = -(ex * rx + ey * ry + ez)
    cc = ex * ex + ey * ey + ez * ez - r * r
    t_cap = (-bc - np.sqrt(bc * bc - rdrd * cc)) / rdrd
    t = np.where(body, t, t_cap)
    return np.where((h >= 0) & (t > 0), t, np.inf)


def _hit_ellipsoid(rx: np.ndarray, ry: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Depth of the first hit of rays (rx, ry, 1) with an ellipsoid; inf if none."""
    c, m = ell[:3], ell[3:12].reshape(3, 3)
    o = -(m @ c)  # the camera in the unit sphere's frame
    d0 = m[0, 0] * rx + m[0, 1] * ry + m[0, 2]
    d1 = m[1, 0] * rx + m[1, 1] * ry + m[1, 2]
    d2 = m[2, 0] * rx + m[2, 1] * ry + m[2, 2]
    qa = d0 * d0 + d1 * d1 + d2 * d2
    qb = o[0] * d0 + o[1] * d1 + o[2] * d2
    disc = qb * qb - qa * (o @ o - 1.0)
    t = (-qb - np.sqrt(disc)) / qa
    return np.where((disc >= 0) & (t > 0), t, np.inf)


# --- the real domain's sensor -------------------------------------------------------------------


def _kinect(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A structured-light depth sensor on its own pixel grid: (H, W) true depth in mm (inf =
    no surface) -> measured depth in mm, NaN where invalid. See the module docstring."""
    h, w = depth.shape
    f32 = np.float32
    surface = depth < _MAX_RANGE
    disparity = np.where(surface, _FB / np.where(surface, depth, 1.0), 0.0).astype(f32)  # px

    # Projector shadows: u is hidden from the projector when some pixel u + k to its right is
    # nearer by more than k px of disparity: reach(u) = max_k (d(u + k) - k) > d(u), computed
    # by doubling k up to the largest disparity difference in the box.
    reach = np.full((h, w), -np.inf, f32)
    reach[:, :-1] = disparity[:, 1:] - 1.0
    spread = float(disparity.max() - disparity[surface].min()) if surface.any() else 0.0
    step = 1
    while step < min(spread, w):
        np.maximum(reach[:, :-step], reach[:, step:] - step, out=reach[:, :-step])
        step *= 2
    shadow = reach > disparity + 0.5

    # Noise in disparity (white + correlated over the matching window), then 1/8 px steps.
    white, smooth = rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.15)
    field = ndimage.gaussian_filter(rng.standard_normal((h, w), f32), 1.5, truncate=3.0)
    field *= smooth / max(float(field.std()), 1e-6)
    measured = disparity + white * rng.standard_normal((h, w), f32) + field
    measured = np.round(measured * 8.0) / 8.0
    with np.errstate(divide="ignore"):
        z = np.where(surface & (measured > 0), _FB / measured, np.nan).astype(f32)

    # Depth discontinuities (the true disparity jumps by more than a pixel within 3x3, about
    # 11 mm at 700 mm): some pixels dropped, some flying between the nearest and farthest
    # measured depth around them.
    edge = ndimage.maximum_filter(disparity, 3) - ndimage.minimum_filter(disparity, 3) > 1.0
    roll = rng.random((h, w), f32)
    drop = edge & (roll < rng.uniform(0.25, 0.55))
    fly = np.nonzero(edge & ~drop & (roll > 1.0 - rng.uniform(0.15, 0.35)))
    padded = np.pad(np.where(np.isfinite(z), z, _MAX_RANGE), 1, mode="edge")
    around = np.stack([padded[fly[0] + dy, fly[1] + dx] for dy in range(3) for dx in range(3)])
    near, far = around.min(axis=0), around.max(axis=0)
    z[fly] = near + rng.random(len(near), f32) * (far - near)

    # Holes: blobs where a smooth random field is high, plus isolated dropouts.
    blobs = ndimage.gaussian_filter(rng.standard_normal((h, w), f32), rng.uniform(2.0, 4.0))
    level = float(blobs.std()) * ndtri(1.0 - rng.uniform(0.005, 0.03))
    holes = (blobs > level) | (rng.random((h, w), f32) < rng.uniform(0.002, 0.01))
    return np.where(shadow | drop | holes | ~surface, np.nan, z)


# --- looking at it ------------------------------------------------------------------------------

# Links drawn on the contact sheet: palm centre -> each PIP -> tip; the thumb's chain; wrist.
_LINKS = [(32, 3), (3, 0), (32, 9), (9, 6), (32, 15), (15, 12), (32, 21), (21, 18)]
_LINKS += [(32, 27), (27, 25), (25, 24), (32, 30), (32, 31)]


def depth_rgb(image: np.ndarray, invalid: tuple[int, int, int] = (255, 0, 255)) -> np.ndarray:
    """(S, S) uint16 crop codes -> (S, S, 3) uint8 through 'viridis', near dark and far
    yellow, stretched over the crop's valid depths short of the far plane (so the hand's relief
    shows); pixels at or beyond the far plane are yellow, invalid ones ``invalid``."""
    from matplotlib import colormaps

    codes = image.astype(np.float64)
    inside = (image > 0) & (image < FAR_CODE)
    lo, hi = (codes[inside].min(), codes[inside].max()) if inside.any() else (1.0, FAR_CODE)
    x = np.where(image == FAR_CODE, 1.0, (codes - lo) / max(hi - lo, 1.0))
    rgb = colormaps["viridis"](np.clip(x, 0.0, 1.0), bytes=True)[..., :3]
    rgb[image == 0] = invalid
    return rgb


def contact_sheet(path: str, per_domain: int = 6, seed: int = 0, size: int = DEFAULT_SIZE) -> None:
    """A PNG: for each domain a row of crops, then the same crops with the 14 evaluated joints
    (red) and a skeleton (white). Colours: ``depth_rgb`` (magenta = invalid)."""
    from PIL import Image, ImageDraw

    pad, label_w = 4, 120
    rows: list[tuple[str, list[Image.Image]]] = []
    for domain in DOMAINS:
        s = generate(domain, per_domain, seed, size=size)
        plain, marked = [], []
        for img, uvd in zip(s["image"][:, 0], s["joints_uvd"], strict=True):
            tile = Image.fromarray(depth_rgb(img))
            plain.append(tile)
            tile = tile.copy()
            draw = ImageDraw.Draw(tile)
            for i, j in _LINKS:
                draw.line([tuple(uvd[i, :2]), tuple(uvd[j, :2])], fill=(255, 255, 255), width=1)
            for k in EVAL_JOINTS:
                x, y = uvd[k, :2]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 40, 40))
            marked.append(tile)
        rows += [(domain, plain), (f"{domain}\n+ joints", marked)]
    width = label_w + per_domain * (size + pad) + pad
    sheet = Image.new("RGB", (width, len(rows) * (size + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (name, tiles) in enumerate(rows):
        top = pad + r * (size + pad)
        draw.multiline_text((8, top + size // 2 - 10), name, fill=(0, 0, 0))
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (label_w + c * (size + pad), top))
    sheet.save(path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m shards.sim.hands OUT.png")
    contact_sheet(sys.argv[1])
