"""The built-in eye simulator: determinism, labels that match the pixels, and a real domain gap."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from shards.gaze import pitchyaw_from_vector
from shards.sim import eyes


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, np.ndarray]]:
    return {d: eyes.generate(d, 1024, 3) for d in eyes.DOMAINS}


def _dark_centroid(images: np.ndarray, delta: int = 10) -> np.ndarray:
    """(N, H, W) uint8 -> (N, 2) centroid (x, y) of the pixels within delta of the darkest."""
    img = images.astype(np.int32)
    mask = img <= img.min(axis=(1, 2), keepdims=True) + delta  # (N, H, W)
    ys, xs = np.mgrid[: img.shape[1], : img.shape[2]]
    count = mask.sum(axis=(1, 2))
    return (
        np.stack([(mask * xs).sum(axis=(1, 2)), (mask * ys).sum(axis=(1, 2))], 1) / count[:, None]
    )


@pytest.mark.parametrize("domain", eyes.DOMAINS)
def test_shapes_dtypes_ranges(domain: str, samples: dict) -> None:
    s = samples[domain]
    assert set(s) == {"image", "gaze", "pitchyaw", "pupil"}
    assert s["image"].dtype == np.uint8 and s["image"].shape == (1024, *eyes.IMAGE_SHAPE)
    for key, width in (("gaze", 3), ("pitchyaw", 2), ("pupil", 2)):
        assert s[key].dtype == np.float32 and s[key].shape == (1024, width), key
        assert np.isfinite(s[key]).all()
    np.testing.assert_allclose(np.linalg.norm(s["gaze"], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(pitchyaw_from_vector(s["gaze"]), s["pitchyaw"], atol=1e-5)
    pitch, yaw = np.degrees(s["pitchyaw"]).T
    assert np.abs(pitch).max() <= 25.0 + 1e-4 and np.abs(yaw).max() <= 35.0 + 1e-4
    h, w = eyes.IMAGE_SHAPE
    x, y = s["pupil"].T
    assert (x > 10).all() and (x < w - 11).all() and (y > 5).all() and (y < h - 6).all()
    # Images use the dynamic range without being blown out.
    assert 60 < s["image"].mean() < 200
    assert s["image"].std() > 20


@pytest.mark.parametrize("domain", eyes.DOMAINS)
def test_deterministic_and_seeded(domain: str) -> None:
    a, b = eyes.generate(domain, 300, 11), eyes.generate(domain, 300, 11)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = eyes.generate(domain, 300, 12)
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["gaze"], c["gaze"])


@pytest.mark.parametrize("domain", eyes.DOMAINS)
def test_chunks_equal_one_call(domain: str) -> None:
    whole = eyes.generate(domain, 700, 5)
    # Chunk edges that fall inside, on and across the 256-sample blocks.
    edges = [0, 5, 255, 256, 257, 600, 700]
    for k in whole:
        parts = [eyes.generate(domain, b - a, 5, start=a)[k] for a, b in pairwise(edges)]
        np.testing.assert_array_equal(np.concatenate(parts), whole[k])
    np.testing.assert_array_equal(
        eyes.generate(domain, 10, 5, start=5)["image"], whole["image"][5:15]
    )


def test_domains_are_different_streams() -> None:
    s, r = eyes.generate("synthetic", 64, 0), eyes.generate("real", 64, 0)
    assert not np.array_equal(s["gaze"], r["gaze"])


def test_zero_count_and_bad_arguments() -> None:
    empty = eyes.generate("real", 0, 0, start=100)
    assert empty["image"].shape == (0, 35, 55) and empty["gaze"].shape == (0, 3)
    with pytest.raises(ValueError, match="domain"):
        eyes.generate("unity", 4, 0)
    with pytest.raises(ValueError, match="count"):
        eyes.generate("real", -1, 0)
    with pytest.raises(ValueError, match="start"):
        eyes.generate("real", 1, 0, start=-3)
    with pytest.raises(ValueError, match="seed"):
        eyes.generate("real", 1, -1)


def test_pupil_label_is_where_the_pupil_is(samples: dict) -> None:
    # On clean synthetic images the pupil is the darkest blob. Eyelids sometimes hide part of
    # it (the label stays the geometric centre), so most, not all, must match within a pixel.
    s = samples["synthetic"]
    err = np.linalg.norm(_dark_centroid(s["image"]) - s["pupil"], axis=1)
    assert np.median(err) < 0.6
    assert (err < 1.0).mean() > 0.85
    assert (err < 2.0).mean() > 0.97


def test_pupil_moves_with_gaze_as_documented(samples: dict) -> None:
    # shards/gaze.py: positive yaw moves the pupil left (smaller x), positive pitch moves it up.
    s = samples["synthetic"]
    dark = _dark_centroid(s["image"])
    pitch, yaw = s["pitchyaw"].T
    for pos in (s["pupil"], dark):
        assert np.corrcoef(yaw, pos[:, 0])[0, 1] < -0.9
        assert np.corrcoef(pitch, pos[:, 1])[0, 1] < -0.8
    assert np.median(dark[yaw > 0.3, 0]) < np.median(dark[yaw < -0.3, 0]) - 6


@pytest.mark.parametrize("domain", eyes.REAL_DOMAINS)
def test_real_pupil_label_roughly_matches(domain: str, samples: dict) -> None:
    # Noise and blur make the darkest pixels scattered; a blurred image still puts them nearby.
    s = samples[domain]
    smooth = gaussian_filter(s["image"].astype(np.float32), sigma=(0, 1.5, 1.5))
    err = np.linalg.norm(_dark_centroid(smooth, delta=8) - s["pupil"], axis=1)
    assert np.median(err) < 1.5


def _noise_level(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N,) median |Laplacian|: pixel-level noise and texture, blind to edges."""
    x = images.astype(np.float32)
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return np.median(np.abs(lap), axis=(1, 2))


def test_domains_differ_in_appearance(samples: dict) -> None:
    syn, real = samples["synthetic"]["image"], samples["real"]["image"]
    # Synthetic skin has only a faint texture: the corner patch (far from the eye) is nearly flat.
    corner_syn = syn[:, :5, :8].astype(np.float32).std(axis=(1, 2))
    corner_real = real[:, :5, :8].astype(np.float32).std(axis=(1, 2))
    assert np.median(corner_syn) < 4.0 < 6.0 < np.median(corner_real)
    # Pixel noise: synthetic images have a fine texture only, real ones sensor noise on top.
    noise_syn, noise_real = _noise_level(syn), _noise_level(real)
    assert np.percentile(noise_syn, 95) < np.percentile(noise_real, 5)
    assert 2 * np.median(noise_syn) < np.median(noise_real)
    # Real images are darker and duller.
    assert real.mean() < syn.mean() - 15


def test_domains_differ_in_gaze(samples: dict) -> None:
    py_syn = np.degrees(samples["synthetic"]["pitchyaw"])
    # Synthetic: U(+-25) / U(+-35) deg (std 14.4 / 20.2).
    np.testing.assert_allclose(py_syn.std(axis=0), [14.4, 20.2], rtol=0.1)
    assert abs(py_syn[:, 0].mean()) < 2.0
    # Real domains: normal (pitch, yaw), clipped to the synthetic range (which barely matters).
    want = {
        "real": ([-5.0, 0.0], [10.0, 15.0]),
        "real-lit": ([-10.0, 5.0], [8.0, 14.0]),
        "real-ir": ([0.0, -3.0], [12.0, 18.0]),
    }
    assert set(want) == set(eyes.REAL_DOMAINS)
    for domain, (mean, sd) in want.items():
        py = np.degrees(samples[domain]["pitchyaw"])
        np.testing.assert_allclose(py.mean(axis=0), mean, atol=1.5, err_msg=domain)
        np.testing.assert_allclose(py.std(axis=0), sd, rtol=0.12, err_msg=domain)


def _appearance(images: np.ndarray) -> dict[str, float]:
    x = images.astype(np.float32)
    return {
        "mean": float(x.mean()),
        "noise": float(np.median(_noise_level(images))),
        "corner": float(np.median(x[:, :5, :8].std(axis=(1, 2)))),
        # Left-right and top-bottom brightness differences: directional light.
        "tilt": float(np.median(np.abs(x[:, :, :10].mean((1, 2)) - x[:, :, -10:].mean((1, 2))))),
    }


def test_each_real_domain_is_made_differently(samples: dict) -> None:
    syn = _appearance(samples["synthetic"]["image"])
    lit = _appearance(samples["real-lit"]["image"])
    ir = _appearance(samples["real-ir"]["image"])
    real = _appearance(samples["real"]["image"])
    # real-lit: a low-light webcam, the noisiest domain, with strong directional light.
    assert lit["noise"] > real["noise"] > 2 * syn["noise"]
    assert lit["tilt"] > 20 * syn["tilt"]
    # real-ir: smooth skin and little sensor noise (JPEG removes fine detail), unlike both.
    assert ir["noise"] < syn["noise"] < real["noise"]
    # Pupils are black in the infrared: the darkest pixel near the label is near 0.
    img, pupil = samples["real-ir"]["image"], np.rint(samples["real-ir"]["pupil"]).astype(int)
    near = [im[y - 1 : y + 2, x - 1 : x + 2].min() for im, (x, y) in zip(img, pupil, strict=True)]
    assert np.median(near) < 25


def test_jpeg_compresses_at_the_quality_asked() -> None:
    img = eyes.generate("synthetic", 8, 0)["image"].astype(np.float32) / 255.0  # (8, 35, 55)
    phase = np.zeros((8, 2), np.int64)
    fine = eyes._jpeg(img, np.full(8, 95), phase)
    coarse = eyes._jpeg(img, np.full(8, 10), phase)
    assert fine.shape == img.shape and fine.dtype == np.float32
    assert np.abs(fine - img).mean() < 1.5 / 255
    assert np.abs(coarse - img).mean() > 2 * np.abs(fine - img).mean()


def test_shards_source_lists_every_domain() -> None:
    from shards.sources import sim_eyes

    assert sim_eyes._DOMAINS == eyes.DOMAINS
