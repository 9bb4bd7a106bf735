"""Writers of small (or large, for benchmarks) source datasets in the FORMATS.md layouts.

Content comes from the built-in eye simulator, so conversions give sensible eyes and the true
labels are known. Each writer returns those labels in the order the converter emits images:

- ``write_kaggle_h5(path, n)``: ``gaze.h5`` / ``real_gaze.h5``.
- ``write_unityeyes_dir(directory, n)``: UnityEyes ``N.jpg`` + ``N.json`` pairs, 640x480.
- ``write_mpiigaze_root(root, people, days, per_day)``: ``Data/Normalized/pXX/dayYY.mat`` and
  ``Evaluation Subset/sample list for eye image/pXX.txt``.
- ``write_nyu_dir(directory, frames, views)``: an NYU ``train``/``test`` folder,
  ``depth_K_NNNNNNN.png``, ``synthdepth_K_NNNNNNN.png`` and ``joint_data.mat``, with a disc
  "hand" at known joints.

Gaze is written in each source's own convention with the sign rules of FORMATS.md spelled out
here, independently of ``shards.gaze``: UnityEyes look_vec = (x, -y, -z, 0) of an MPIIGaze
gaze (x, y, z).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from shards.sim import eyes

UNITY_SIZE = (640, 480)  # (W, H)
UNITY_CROP = (84, 140)  # (H, W) the converter crops around the eye opening


def to_unity(gaze: np.ndarray) -> np.ndarray:
    """(N, 3) MPIIGaze gaze -> (N, 4) UnityEyes look_vec (x, -y, -z, 0)."""
    return np.concatenate([gaze * np.array([1.0, -1.0, -1.0]), np.zeros((len(gaze), 1))], axis=1)


def write_kaggle_h5(
    path: str | Path,
    n: int,
    labelled: bool = True,
    seed: int = 0,
    *,
    dtype: str = "uint8",
    look_vec_columns: int = 4,
    name: str = "{}",
    scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Kaggle eye-gaze h5: Group ``image`` of n (35, 55) datasets, ``look_vec``, ``path``;
    image i is named ``name.format(i)`` and stored as its pixels times ``scale``.

    Returns the simulator sample ({"image", "gaze", "pitchyaw", "pupil"}) in index order.
    """
    sample = eyes.generate("synthetic" if labelled else "real", n, seed)
    with h5py.File(path, "w") as f:
        group = f.create_group("image")
        images = (sample["image"] * scale).astype(dtype) if scale != 1.0 else (
            sample["image"].astype(dtype))  # fmt: skip
        for i in range(n):
            group.create_dataset(name.format(i), data=images[i])
        if labelled:
            f.create_dataset("look_vec", data=to_unity(sample["gaze"])[:, :look_vec_columns])
            f.create_dataset("path", data=np.array([f"{i + 1}.jpg".encode() for i in range(n)]))
    return sample


def _unity_points(xy: np.ndarray, height: int) -> list[str]:
    """(K, 2) continuous (x right, y down) -> UnityEyes "(x, y, z)" strings, y from the bottom."""
    return [f"({x:.4f}, {height - y:.4f}, 10.0000)" for x, y in xy]


def unityeyes_json(
    centre: tuple[float, float],
    pupil: tuple[float, float],
    look_vec: np.ndarray,
    head_pose: tuple[float, float, float] = (0.0, 0.0, 0.0),
    iris_radius: float = 15.0,
    height: int = UNITY_SIZE[1],
) -> dict:
    """A UnityEyes JSON record, every value a string. ``centre`` is the centre of the eye
    opening and ``pupil`` the iris centre, both continuous image coordinates (y down)."""
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    # Angles include 0, pi/2, pi, 3pi/2: the bounding box centre is exactly ``centre``.
    margin = np.stack([centre[0] + 55 * np.cos(t), centre[1] + 20 * np.sin(t)], axis=1)
    s = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    iris = np.stack([pupil[0] + iris_radius * np.cos(s), pupil[1] + iris_radius * np.sin(s)], 1)
    caruncle = np.stack([centre[0] - 60 + np.arange(7), np.full(7, centre[1])], axis=1)
    return {
        "interior_margin_2d": _unity_points(margin, height),
        "caruncle_2d": _unity_points(caruncle, height),
        "iris_2d": _unity_points(iris, height),
        "eye_details": {
            "look_vec": "({:.4f}, {:.4f}, {:.4f}, {:.4f})".format(*look_vec),
            "pupil_size": "0.1234",
            "iris_size": "0.9876",
            "iris_texture": "eyeball_brown",
        },
        "head_pose": "({:.4f}, {:.4f}, {:.4f})".format(*head_pose),
        "lighting_details": {"skybox_exposure": "1.0"},
    }


def write_unityeyes_dir(directory: str | Path, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n UnityEyes pairs 1.jpg/1.json ... : a simulator eye scaled up 84x140 into a 640x480 face.

    Returns {"image": (n, 35, 55) the rendered eyes, "gaze", "pitchyaw", "pupil" (in the 35x55
    crop the converter should produce), "head_pose" (n, 3) degrees}.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sample = eyes.generate("synthetic", n, seed)
    rng = np.random.default_rng(seed)
    w, h = UNITY_SIZE
    ch, cw = UNITY_CROP
    # A skin-coloured face with some texture, shared by all images (only the eye changes).
    yy, xx = np.mgrid[0:h, 0:w]
    shade = 0.85 + 0.15 * np.sin(xx / 53.0) * np.cos(yy / 41.0)  # (h, w)
    face = np.stack([200 * shade, 160 * shade, 140 * shade], axis=2)
    heads = rng.uniform(-20, 20, (n, 3))
    looks = to_unity(sample["gaze"])
    for i in range(n):
        # The eye opening's centre, at a whole pixel so the crop lands on the pasted eye.
        left = 320 - cw // 2 + int(rng.integers(-40, 41))
        top = 240 - ch // 2 + int(rng.integers(-30, 31))
        eye = Image.fromarray(sample["image"][i]).resize((cw, ch), Image.Resampling.BICUBIC)
        grey = np.asarray(eye, dtype=np.float64) / 255.0  # (84, 140)
        img = face.copy()
        img[top : top + ch, left : left + cw] = grey[..., None] * np.array([255.0, 235.0, 220.0])
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            out / f"{i + 1}.jpg", quality=92
        )
        px, py = sample["pupil"][i] + 0.5  # continuous coordinates in the 35x55 eye
        pupil = (left + px * cw / 55, top + py * ch / 35)
        record = unityeyes_json((left + cw / 2, top + ch / 2), pupil, looks[i], tuple(heads[i]))
        (out / f"{i + 1}.json").write_text(json.dumps(record, indent=1))
    return {**sample, "head_pose": heads.astype(np.float32)}


def _upsize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) uint8 -> (N, H, W) uint8 with PIL bilinear, (H, W) = size."""
    return np.stack(
        [
            np.asarray(Image.fromarray(im).resize(size[::-1], Image.Resampling.BILINEAR))
            for im in images
        ]
    )


def write_mpiigaze_day(
    path: Path,
    left: tuple[np.ndarray, np.ndarray, np.ndarray],
    right: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """One dayYY.mat: left/right = ((N, 36, 60) uint8, (N, 3) gaze, (N, 3) pose) as stored."""
    n = len(left[0])
    data = {
        side: {"image": eye[0], "gaze": eye[1], "pose": eye[2]}
        for side, eye in (("left", left), ("right", right))
    }
    filenames = np.array([f"{i + 1:04d}.jpg" for i in range(n)], dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"data": data, "filenames": filenames})


def write_mpiigaze_root(
    root: str | Path,
    people: int = 2,
    days: int = 2,
    per_day: int | list[int] = 5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """MPIIGaze normalised data: ROOT/Data/Normalized/pXX/dayYY.mat plus evaluation lists.

    Each eye is a "real"-domain simulator eye resized to 36x60; right eyes are stored flipped
    (as the camera sees them) with their gaze x and head-pose yaw/roll negated, so after the
    converter mirrors them back they match the simulator's labels. ``per_day`` may be a list
    (frames of day 1, 2, ...) to make a 1-frame day.

    Returns, in the converter's ``--subset all`` order (per day: left eyes, then right eyes):
    {"image": (M, 35, 55) simulator eyes, "gaze", "pitchyaw", "head_pose"}, plus
    "evaluation": the same keys in evaluation-list order.
    """
    root = Path(root)
    counts = per_day if isinstance(per_day, list) else [per_day] * days
    rng = np.random.default_rng(seed)
    start = 0
    order: dict[str, list[np.ndarray]] = {"image": [], "gaze": [], "pitchyaw": [], "head_pose": []}
    evaluation: dict[str, list[np.ndarray]] = {k: [] for k in order}
    for p in range(people):
        lines = []
        for d, n in enumerate(counts, 1):
            s = eyes.generate("real", 2 * n, seed, start=start)
            start += 2 * n
            pose = rng.uniform(-0.3, 0.3, (2 * n, 3))
            big = _upsize(s["image"], (36, 60))  # (2n, 36, 60)
            left = (big[:n], s["gaze"][:n].astype(np.float64), pose[:n])
            # Stored right eyes are the mirror images of what the converter should produce.
            right = (
                big[n:, :, ::-1].copy(),
                s["gaze"][n:] * np.array([-1.0, 1.0, 1.0]),
                pose[n:] * np.array([1.0, -1.0, -1.0]),
            )
            write_mpiigaze_day(
                root / "Data" / "Normalized" / f"p{p:02d}" / f"day{d:02d}.mat", left, right
            )
            for key, values in (
                ("image", s["image"]),
                ("gaze", s["gaze"]),
                ("pitchyaw", s["pitchyaw"]),
                ("head_pose", pose.astype(np.float32)),
            ):
                order[key].append(values)
            # Evaluation list: every frame, alternating sides, newest day first.
            for i in range(n):
                side = "left" if (i + d) % 2 == 0 else "right"
                lines.append((d, i, side))
        lines.sort(key=lambda t: (-t[0], t[1]))
        listing = root / "Evaluation Subset" / "sample list for eye image" / f"p{p:02d}.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"day{d:02d}/{i + 1:04d}.jpg {side}\n" for d, i, side in lines))
        # Index of (day, frame, side) in this person's part of ``order``.
        person_base = sum(len(a) for a in order["image"][: -len(counts)])
        day_base = np.cumsum([0, *[2 * n for n in counts]])
        flat = {key: np.concatenate(order[key]) for key in evaluation}
        for d, i, side in lines:
            j = person_base + day_base[d - 1] + i + (counts[d - 1] if side == "right" else 0)
            for key in evaluation:
                evaluation[key].append(flat[key][j])
    result = {k: np.concatenate(v) for k, v in order.items()}
    result["evaluation"] = {k: np.stack(v) for k, v in evaluation.items()}  # type: ignore[assignment]
    return result


# --- NYU hand pose ------------------------------------------------------------------------------

NYU_FOCAL = (588.03, 587.07, 320.0, 240.0)  # FORMATS.md: fx, fy, cx, cy of 640x480 frames
NYU_NO_DEPTH = 32001
NYU_WALL_MM = 1400  # the real frames' background, beyond every crop's cube
NYU_HAND_MM = 60.0  # radius of the disc "hand" around the palm (joint 32)
NYU_OBJECT_MM = 100  # the object near the hand lies this far behind the palm


def write_nyu_png(path: Path, depth_mm: np.ndarray, seed: int = 0) -> None:
    """(480, 640) integer mm -> NYU's 640x480 RGB PNG: G = mm >> 8, B = mm & 255, R noise."""
    d = np.asarray(depth_mm).astype(np.uint16)
    r = np.random.default_rng(seed).integers(0, 256, d.shape, dtype=np.uint8)
    rgb = np.stack([r, (d >> 8).astype(np.uint8), (d & 255).astype(np.uint8)], axis=2)
    Image.fromarray(rgb).save(path, compress_level=1)


def write_nyu_mat_v73(path: Path, uvd: np.ndarray, xyz: np.ndarray) -> None:
    """joint_data.mat as MATLAB's -v7.3 writes it: HDF5 after a 512-byte header, and arrays
    column-major, so h5py sees (3, N, 36, 3) as (3, 36, N, 3)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("joint_uvd", data=np.asarray(uvd).T)
        f.create_dataset("joint_xyz", data=np.asarray(xyz).T)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, written by the distsim tests".ljust(128))


def write_nyu_dir(
    directory: str | Path,
    frames: int = 6,
    views: tuple[int, ...] = (1, 2, 3),
    seed: int = 0,
    *,
    synth: bool = True,
) -> dict:
    """An NYU folder: for each view K in ``views`` and frame n (from 1), ``depth_K_n.png`` and,
    with ``synth``, ``synthdepth_K_n.png``; ``joint_data.mat`` labels all three views.

    Joint 32 (the palm) is at a random xyz 550-850 mm away, the other 35 joints within 70 mm
    of it; uvd is NYU's projection u = cx + fx x / z, v = cy - fy y / z. The real frame is a
    wall at NYU_WALL_MM with a disc "hand" of radius NYU_HAND_MM around the palm (a bowl, palm
    depth + 20 mm at the rim), a 4x4 object NYU_OBJECT_MM behind the palm just outside the disc
    (lower right, inside the hand's box) and two 2x2 holes on the disc beside the palm, one of
    0 and one of 32001. The render is the disc alone, 32001 elsewhere. View 1's frame 0 has its
    palm at u = 40, so a crop around it leaves the frame.

    Returns {"joint_uvd", "joint_xyz": (3, frames, 36, 3) float64, "depth", "synth":
    {(view, frame): (480, 640) uint16 mm}, "holes": {(view, frame): ((v, u) of the 0 hole,
    (v, u) of the 32001 hole)}, "object": {(view, frame): (v, u)}}, corners top-left, frames
    0-based.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fx, fy, cx, cy = NYU_FOCAL
    palm = np.stack(
        [
            rng.uniform(-120, 120, (3, frames)),
            rng.uniform(-90, 90, (3, frames)),
            rng.uniform(550, 850, (3, frames)),
        ],
        axis=-1,
    )  # (3, frames, 3) xyz mm
    palm[0, 0, 0] = (40 - cx) * palm[0, 0, 2] / fx
    xyz = palm[:, :, None] + rng.uniform(-1, 1, (3, frames, 36, 3)) * np.array([70, 70, 40])
    xyz[:, :, 32] = palm
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    uvd = np.stack([cx + fx * x / z, cy - fy * y / z, z], axis=-1)  # (3, frames, 36, 3)
    names = np.array([f"J{j:02d}" for j in range(36)], dtype=object)
    scipy.io.savemat(
        out / "joint_data.mat", {"joint_names": names, "joint_uvd": uvd, "joint_xyz": xyz}
    )

    vv, uu = np.mgrid[0:480, 0:640]
    result: dict = {"joint_uvd": uvd, "joint_xyz": xyz, "depth": {}, "synth": {}}
    result |= {"holes": {}, "object": {}}
    for f in range(frames):
        for k in views:
            pu, pv, pz = uvd[k - 1, f, 32]
            radius = NYU_HAND_MM * fx / pz  # pixels
            rr = ((uu - pu) ** 2 + (vv - pv) ** 2) / radius**2  # (480, 640)
            disc = rr <= 1
            hand = np.rint(pz + 20 * rr)
            render = np.where(disc, hand, NYU_NO_DEPTH).astype(np.uint16)
            real = np.where(disc, hand, NYU_WALL_MM).astype(np.uint16)
            ov, ou = round(pv + 0.8 * radius), round(pu + 0.8 * radius)
            real[ov : ov + 4, ou : ou + 4] = round(pz) + NYU_OBJECT_MM
            holes = ((round(pv), round(pu) + 3), (round(pv), round(pu) - 5))
            for (hv, hu), value in zip(holes, (0, NYU_NO_DEPTH), strict=True):
                real[hv : hv + 2, hu : hu + 2] = value
            write_nyu_png(out / f"depth_{k}_{f + 1:07d}.png", real, seed=3 * f + k)
            if synth:
                write_nyu_png(out / f"synthdepth_{k}_{f + 1:07d}.png", render, seed=100 + f)
            result["depth"][k, f], result["synth"][k, f] = real, render
            result["holes"][k, f], result["object"][k, f] = holes, (ov, ou)
    return result


# --- reading back -------------------------------------------------------------------------------


def read_shard_set(directory: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every image (N, C, H, W) and label of a shard set, in order."""
    from shards.format import decode_block, index_shard, read_block, read_manifest

    directory = Path(directory)
    m = read_manifest(directory)
    images, labels = [], {k: [] for k in m.labels}
    for i, info in enumerate(m.shards):
        with open(directory / info.name, "rb") as f:
            for ref in index_shard(directory / info.name, i, m):
                block_images, block_labels = decode_block(read_block(f, ref), m)
                images.append(block_images)
                for k, v in block_labels.items():
                    labels[k].append(v)
    return np.concatenate(images), {k: np.concatenate(v) for k, v in labels.items()}


def shard_digests(directory: str | Path) -> list[tuple[str, str]]:
    from shards.format import read_manifest

    return [(s.name, s.sha256) for s in read_manifest(directory).shards]


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("shards: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)
