"""The built-in depth-hand simulator: determinism, labels that match the pixels, a designed
domain gap, and the ``sim-hands`` converter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distsim.data import make_epoch_loader
from shards.cli import main
from shards.depth import (
    CUBE_MM,
    FOCAL,
    NUM_JOINTS,
    decode_depth,
    encode_depth,
    xyz_to_uvd,
)
from shards.format import read_manifest
from shards.sim import hands
from tests.fixtures_sources import read_shard_set, shard_digests

COUNT = 120
TIPS = (0, 6, 12, 18, 24)
_FB = FOCAL[0] * 75.0  # the simulated Kinect's focal length x baseline (px mm)


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, np.ndarray]]:
    return {d: hands.generate(d, COUNT, 3) for d in hands.DOMAINS}


def _mm(s: dict[str, np.ndarray]) -> np.ndarray:
    """(N, S, S) decoded depth in mm, NaN where invalid."""
    return np.stack(
        [decode_depth(i[0], c) for i, c in zip(s["image"], s["center"][:, 2], strict=True)]
    )


@pytest.mark.parametrize("domain", hands.DOMAINS)
def test_shapes_dtypes_and_crop_geometry(domain: str, samples: dict) -> None:
    s = samples[domain]
    size = hands.DEFAULT_SIZE
    want = {
        "image": ((COUNT, 1, size, size), np.uint16),
        "joints_uvd": ((COUNT, NUM_JOINTS, 3), np.float32),
        "joints_xyz": ((COUNT, NUM_JOINTS, 3), np.float32),
        "center": ((COUNT, 3), np.float32),
        "box": ((COUNT, 4), np.float32),
        "view": ((COUNT, 1), np.int64),
        "frame": ((COUNT, 1), np.int64),
    }
    assert {k: (v.shape, v.dtype) for k, v in s.items()} == want
    assert (s["view"] == 1).all() and (s["frame"][:, 0] == np.arange(COUNT)).all()
    z = s["center"][:, 2]
    assert z.min() >= 500 and z.max() <= 900
    u0, v0, u1, v1 = s["box"].T
    assert (u1 - u0 == v1 - v0).all()  # square
    np.testing.assert_allclose(u1 - u0, CUBE_MM * FOCAL[0] / z, atol=0.5)  # the cube's width
    h, w = hands.FRAME_SHAPE
    assert (u0 >= 0).all() and (v0 >= 0).all() and (u1 <= w).all() and (v1 <= h).all()
    assert len(hands.JOINT_NAMES) == NUM_JOINTS and hands.JOINT_NAMES[32] == "PALM_3"


@pytest.mark.parametrize("domain", hands.DOMAINS)
def test_sample_depends_only_on_domain_seed_and_index(domain: str) -> None:
    whole = hands.generate(domain, 7, 11, size=32)
    picked = hands.render(domain, [5, 2, 6], 11, size=32)
    part = hands.generate(domain, 3, 11, start=2, size=32)
    for k in whole:
        np.testing.assert_array_equal(picked[k], whole[k][[5, 2, 6]])
        np.testing.assert_array_equal(part[k], whole[k][2:5])
    # Sample i is the i-th child of the domain's child of SeedSequence(seed), as documented.
    dom = hands.DOMAINS.index(domain)
    child = np.random.SeedSequence(11).spawn(dom + 1)[dom].spawn(6)[5]
    scene = hands._sample_scene(np.random.default_rng(child), dom)
    np.testing.assert_array_equal(scene.joints.astype(np.float32), whole["joints_xyz"][5])
    other = hands.generate(domain, 7, 12, size=32)
    assert not np.array_equal(other["joints_xyz"], whole["joints_xyz"])
    # The size changes the crop's sampling, never the scene.
    big = hands.generate(domain, 2, 11, size=64)
    np.testing.assert_array_equal(big["joints_xyz"], whole["joints_xyz"][:2])


def test_domains_are_different_streams() -> None:
    s, r = hands.generate("synthetic", 4, 0, size=16), hands.generate("real", 4, 0, size=16)
    assert not np.array_equal(s["joints_xyz"], r["joints_xyz"])


@pytest.mark.parametrize("domain", hands.DOMAINS)
def test_labels_agree_with_each_other_and_with_the_crop(domain: str, samples: dict) -> None:
    s = samples[domain]
    size = s["image"].shape[-1]
    uvd = xyz_to_uvd(s["joints_xyz"].astype(np.float64))  # (N, 36, 3) source frame
    u0, v0, u1, _ = (c[:, None] for c in s["box"].T.astype(np.float64))
    scale = size / (u1 - u0)
    np.testing.assert_allclose(
        s["joints_uvd"][..., 0], (uvd[..., 0] - u0 + 0.5) * scale - 0.5, atol=1e-3
    )
    np.testing.assert_allclose(
        s["joints_uvd"][..., 1], (uvd[..., 1] - v0 + 0.5) * scale - 0.5, atol=1e-3
    )
    np.testing.assert_allclose(s["joints_uvd"][..., 2], s["joints_xyz"][..., 2])
    np.testing.assert_allclose(s["center"], uvd[:, hands.PALM_CENTRE], rtol=1e-6, atol=1e-3)
    # The cube is centred on the palm centre: it lands within half a source pixel of the middle.
    palm = s["joints_uvd"][:, hands.PALM_CENTRE, :2]
    assert np.abs(palm - (size - 1) / 2).max() <= 0.5 * scale.max() + 1e-3
    # Every joint is inside the crop and inside the cube.
    assert s["joints_uvd"][..., :2].min() >= 0 and s["joints_uvd"][..., :2].max() <= size - 1
    offset = s["joints_xyz"] - s["joints_xyz"][:, hands.PALM_CENTRE : hands.PALM_CENTRE + 1]
    assert np.linalg.norm(offset, axis=2).max() < CUBE_MM / 2


def test_synthetic_fingertips_sit_one_tip_radius_behind_the_skin(samples: dict) -> None:
    # Fingertip joints are the centres of the tips' round ends (radius 5.3-8.6 mm over the
    # hand's scale and thickness range): at the crop pixel nearest a tip, the depth is that
    # tip's skin, or something in front of it (another finger); never background.
    s = samples["synthetic"]
    mm, uvd = _mm(s), s["joints_uvd"]
    gaps = []
    for k in range(COUNT):
        for t in TIPS:
            u, v, z = uvd[k, t]
            gaps.append(z - mm[k, int(round(v)), int(round(u))])
    gaps = np.array(gaps)  # joint depth - measured depth, mm
    assert np.isfinite(gaps).all() and gaps.min() > 4.5
    skin = (gaps > 4.5) & (gaps < 9.5)
    assert skin.mean() > 0.7  # the rest are hidden behind other fingers
    assert 5.5 < np.median(gaps[skin]) < 8.6


def test_renderer_matches_the_geometry() -> None:
    # A horizontal capsule (radius 10 mm, axis at z = 600 through the optical axis) and a
    # sphere-shaped ellipsoid: depth on the axis, silhouette widths from the tangent rays.
    cap = np.array([[-30.0, 0.0, 600.0, 30.0, 0.0, 600.0, 10.0]])
    ball = np.array([hands._ellipsoid(np.array([0.0, 0.0, 600.0]), np.eye(3), np.full(3, 10.0))])
    us, vs = np.arange(300, 370), np.arange(220, 261)
    for caps, ells in ((cap, np.zeros((0, 13))), (np.zeros((0, 7)), ball)):
        scene = hands._Scene(caps, ells, np.zeros((36, 3)), (0, 0, 1), np.zeros(3), [], [])
        depth = hands._raycast(scene, us, vs)
        assert depth[240 - 220, 320 - 300] == pytest.approx(590.0, abs=1e-9)
        column = np.isfinite(depth[:, 320 - 300])  # half-height 587.07 * 10 / 600 = 9.8 px
        assert column[240 - 220 - 9 : 240 - 220 + 10].all() and column.sum() == 19
    # The capsule's right end: tangent at u = 320 + fx tan(atan(30/600) + asin(10/|c|)) = 359.2.
    scene = hands._Scene(cap, np.zeros((0, 13)), np.zeros((36, 3)), (0, 0, 1), np.zeros(3), [], [])
    row = np.isfinite(hands._raycast(scene, us, vs)[240 - 220])
    assert row[359 - 300] and not row[360 - 300]


@pytest.mark.parametrize("domain", hands.DOMAINS)
def test_bounding_boxes_never_cut_a_primitive(domain: str) -> None:
    # The renderer evaluates each primitive only inside its projected box: brute force over
    # the whole grid must give the same depth, bit for bit.
    rng = np.random.default_rng(
        np.random.SeedSequence(5, spawn_key=(hands.DOMAINS.index(domain), 1))
    )
    scene = hands._sample_scene(rng, hands.DOMAINS.index(domain))
    u0, v0, b = scene.box
    us, vs = u0 + np.arange(b), v0 + np.arange(b)
    fast = hands._raycast(scene, us, vs)
    brute = hands._raycast(
        hands._Scene(
            np.zeros((0, 7)),
            np.zeros((0, 13)),
            scene.joints,
            scene.box,
            scene.center,
            scene.walls,
            scene.tables,
        ),
        us,
        vs,
    )
    rx, ry = hands._rays(us, vs)
    with np.errstate(invalid="ignore", divide="ignore"):
        for cap in scene.capsules:
            brute = np.minimum(brute, hands._hit_capsule(rx, ry, cap))
        for ell in scene.ellipsoids:
            brute = np.minimum(brute, hands._hit_ellipsoid(rx, ry, ell))
    np.testing.assert_array_equal(fast, brute)
    assert np.isfinite(fast).mean() > 0.1


def test_encode_decode_round_trip(samples: dict) -> None:
    for s in samples.values():
        for image, centre in zip(s["image"][:8, 0], s["center"][:8, 2], strict=True):
            mm = decode_depth(image, centre)
            np.testing.assert_array_equal(encode_depth(mm, centre), image)
            inside = mm[(image > 1) & (image < 65535)]
            assert inside.size and np.abs(inside - centre).max() <= CUBE_MM / 2


def test_domains_differ_in_background_and_invalid_pixels(samples: dict) -> None:
    syn, real = samples["synthetic"]["image"][:, 0], samples["real"]["image"][:, 0]
    # Synthetic: nothing behind the hand, so most of the crop is the far plane and nothing is
    # invalid; real: a wall and a body behind it fill the crop with measurements (mostly
    # beyond the cube's far plane), with sensor holes among them.
    assert np.median((syn == 65535).mean((1, 2))) > 0.6 and (syn == 0).sum() == 0
    assert np.median((real == 0).mean((1, 2))) < 0.3
    assert np.median((real == 65535).mean((1, 2))) > 0.3
    assert ((syn > 0) & (syn < 65535)).mean() < ((real > 0) & (real < 65535)).mean()

    # Holes: isolated invalid pixels (4 valid neighbours): every real crop has sensor holes.
    def isolated(img: np.ndarray) -> np.ndarray:
        v = img > 0
        c = ~v[:, 1:-1, 1:-1] & v[:, :-2, 1:-1] & v[:, 2:, 1:-1] & v[:, 1:-1, :-2] & v[:, 1:-1, 2:]
        return c.mean((1, 2))

    assert isolated(real).min() > 0.001 and isolated(syn).mean() == 0


def test_domains_differ_in_noise_and_quantisation(samples: dict) -> None:
    def stats(s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        mm = _mm(s)
        inside = (s["image"][:, 0] > 1) & (s["image"][:, 0] < 65535)
        c = mm[:, 1:-1, 1:-1]
        lap = 4 * c - mm[:, :-2, 1:-1] - mm[:, 2:, 1:-1] - mm[:, 1:-1, :-2] - mm[:, 1:-1, 2:]
        smooth = np.isfinite(lap) & inside[:, 1:-1, 1:-1] & (np.abs(lap) < 20)  # no edges
        rough = np.array([np.median(np.abs(x[m])) for x, m in zip(lap, smooth, strict=True)])
        # Disparity 8 * f * b / z is an integer for a structured-light Kinect (1/8 px steps).
        lattice = 8 * _FB / mm
        on = np.abs(lattice - np.round(lattice)) < 0.02
        frac = np.array([x[m].mean() for x, m in zip(on, inside, strict=True)])
        return rough, frac

    rough_syn, lattice_syn = stats(samples["synthetic"])
    rough_real, lattice_real = stats(samples["real"])
    assert np.percentile(rough_syn, 95) < np.percentile(rough_real, 5)
    assert np.median(rough_real) > 3 * np.median(rough_syn)
    assert lattice_syn.max() < 0.1 and lattice_real.min() > 0.85  # flying pixels are off it


def test_real_noise_on_a_flat_wall_grows_with_depth_squared() -> None:
    sigma = {}
    for z in (600.0, 900.0):
        depth = np.full((120, 120), z)
        measured = hands._kinect(depth, np.random.default_rng(0))
        assert np.isnan(measured).mean() < 0.05  # holes only: a flat wall has no edges
        sigma[z] = np.nanstd(measured)
    assert 0.4 < sigma[600.0] < 3.0
    assert 1.6 < sigma[900.0] / sigma[600.0] < 3.2  # (900 / 600)^2 = 2.25


def test_domains_differ_in_pose(samples: dict) -> None:
    # Real fingers curl together (one shared curl), synthetic ones independently.
    def curl_corr(s: dict[str, np.ndarray]) -> float:
        j = s["joints_xyz"]
        reach = np.linalg.norm(j[:, [0, 18]] - j[:, [5, 23]], axis=2)  # pinky, index tip-MCP
        return float(np.corrcoef(reach.T)[0, 1])

    assert abs(curl_corr(samples["synthetic"])) < 0.35 < 0.6 < curl_corr(samples["real"])
    z_syn, z_real = samples["synthetic"]["center"][:, 2], samples["real"]["center"][:, 2]
    assert z_real.std() < 0.8 * z_syn.std()  # N(700, 90) against U(500, 900)


def test_look_shows_the_same_hands_as_the_other_domain_does() -> None:
    """look="real": the synthetic stream's hands, poses and boxes exactly, through the room and
    the sensor (invalid pixels, surfaces behind the hand); look=domain is the plain stream."""
    clean = hands.generate("synthetic", 6, 3, size=32)
    seen = hands.generate("synthetic", 6, 3, size=32, look="real")
    same = hands.generate("synthetic", 6, 3, size=32, look="synthetic")
    for key in clean:
        np.testing.assert_array_equal(same[key], clean[key])
        if key != "image":
            np.testing.assert_array_equal(seen[key], clean[key])
    assert (clean["image"] == 0).sum() == 0 and (seen["image"] == 0).mean() > 0.01
    assert not np.array_equal(seen["image"], clean["image"])
    # The hand is where it was: most pixels the clean render puts on the hand are still nearer
    # than the far plane (shadows, drop-outs and holes take a few).
    on_hand = clean["image"] < 65535
    assert ((seen["image"] < 65535) & (seen["image"] > 0))[on_hand].mean() > 0.8
    real = hands.generate("real", 3, 3, size=32)
    np.testing.assert_array_equal(hands.generate("real", 3, 3, size=32, look="real")["image"],
                                  real["image"])  # fmt: skip
    with pytest.raises(ValueError, match="look"):
        hands.generate("synthetic", 1, 0, look="kinect")
    with pytest.raises(ValueError, match="look"):
        hands.generate("synthetic", 1, 0, look="real-room")  # a study's, no longer here


def test_convert_records_the_look(tmp_path: Path) -> None:
    from shards.sources.sim_hands import convert_sim_hands

    m = convert_sim_hands(tmp_path / "s", "synthetic", 5, 3, size=16, look="real", progress=False)
    assert m.source["look"] == "real" and m.labelled
    images, _ = read_shard_set(tmp_path / "s")
    np.testing.assert_array_equal(images, hands.generate("synthetic", 5, 3, 0, 16, "real")["image"])
    with pytest.raises(ValueError, match="look"):
        convert_sim_hands(tmp_path / "t", "synthetic", 5, 3, size=16, look="x", progress=False)
    assert not (tmp_path / "t").exists()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="domain"):
        hands.generate("unity", 1, 0)
    with pytest.raises(ValueError, match="seed"):
        hands.generate("real", 1, -1)
    with pytest.raises(ValueError, match="size"):
        hands.generate("real", 1, 0, size=4)
    with pytest.raises(ValueError, match="start"):
        hands.generate("real", 1, 0, start=True)
    assert hands.generate("real", 0, 0)["image"].shape == (0, 1, 224, 224)


def test_shards_source_lists_every_domain() -> None:
    from shards.sources import sim_hands

    assert sim_hands._DOMAINS == hands.DOMAINS


def test_convert_cli_is_byte_identical_for_any_workers_and_readable(tmp_path: Path) -> None:
    args = ["convert", "sim-hands", "--domain", "real", "--count", "70", "--seed", "4"]
    args += ["--size", "32", "--shard-size", "32", "--block-size", "16"]
    assert main([*args, "--out", str(tmp_path / "w1")]) == 0
    assert main([*args, "--out", str(tmp_path / "w2"), "--workers", "2"]) == 0
    assert len(shard_digests(tmp_path / "w1")) == 3
    assert shard_digests(tmp_path / "w1") == shard_digests(tmp_path / "w2")

    m = read_manifest(tmp_path / "w1")
    assert (m.count, m.image_shape, m.image_dtype) == (70, (1, 32, 32), "uint16")
    assert not m.labelled and m.labels_for_evaluation_only  # real labels: evaluation only
    assert m.source == {
        "name": "sim-hands",
        "domain": "real",
        "seed": 4,
        "size": 32,
        "sim_version": hands.SIM_VERSION,
    }
    ref = hands.generate("real", 70, 4, size=32)
    images, labels = read_shard_set(tmp_path / "w1")
    np.testing.assert_array_equal(images, ref["image"])
    for k, v in labels.items():
        np.testing.assert_array_equal(v, ref[k])

    # The training side reads it: uint16 images, labels in stored order.
    loader = make_epoch_loader(
        tmp_path / "w1", 32, 0, 1, 0, num_workers=0, labels=("joints_uvd", "frame"), shuffle=False
    )
    with loader:
        batches = list(loader)
    image = torch.cat([b["image"] for b in batches])
    assert image.dtype == torch.uint16 and image.shape == (70, 1, 32, 32)
    np.testing.assert_array_equal(image.to(torch.int32).numpy(), ref["image"].astype(np.int32))
    frames = torch.cat([b["frame"] for b in batches]).numpy()
    np.testing.assert_array_equal(frames, ref["frame"])


def test_convert_synthetic_is_labelled_and_limit_takes_the_first(tmp_path: Path) -> None:
    args = ["convert", "sim-hands", "--domain", "synthetic", "--count", "40", "--size", "16"]
    assert main([*args, "--limit", "25", "--out", str(tmp_path / "s")]) == 0
    m = read_manifest(tmp_path / "s")
    assert m.count == 25 and m.labelled and not m.labels_for_evaluation_only
    images, labels = read_shard_set(tmp_path / "s")
    np.testing.assert_array_equal(images, hands.generate("synthetic", 25, 0, size=16)["image"])
    assert set(labels) == {"joints_uvd", "joints_xyz", "center", "box", "view", "frame"}


def test_convert_refuses_bad_sizes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "convert",
                "sim-hands",
                "--domain",
                "real",
                "--count",
                "5",
                "--size",
                "4",
                "--out",
                "x",
            ]
        )
    assert exit_info.value.code == 2
    assert "--size: must be >= 8" in capsys.readouterr().err
