"""The gaze label convention (FORMATS.md "Gaze label convention"), checked by hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shards.gaze import (
    angular_error_deg,
    pitchyaw_from_vector,
    unityeyes_to_mpiigaze,
    vector_from_pitchyaw,
)


def test_straight_at_camera_is_zero() -> None:
    np.testing.assert_allclose(pitchyaw_from_vector(np.array([[0.0, 0.0, -1.0]])), [[0, 0]])
    np.testing.assert_allclose(vector_from_pitchyaw(np.zeros((1, 2))), [[0, 0, -1]], atol=1e-7)


def test_signs() -> None:
    # Camera y points down, so looking up is y < 0 and positive pitch; x < 0 is positive yaw.
    up = pitchyaw_from_vector(np.array([[0.0, -1.0, -1.0]]))
    np.testing.assert_allclose(up, [[math.pi / 4, 0.0]], atol=1e-6)
    left = pitchyaw_from_vector(np.array([[-1.0, 0.0, -1.0]]))
    np.testing.assert_allclose(left, [[0.0, math.pi / 4]], atol=1e-6)


def test_round_trip() -> None:
    rng = np.random.default_rng(0)
    py = np.stack([rng.uniform(-1.4, 1.4, 1000), rng.uniform(-3.1, 3.1, 1000)], axis=1)
    v = vector_from_pitchyaw(py)
    assert v.dtype == np.float32 and v.shape == (1000, 3)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(pitchyaw_from_vector(v), py, atol=1e-5)
    # And the other way, from non-unit vectors (pitchyaw_from_vector normalises first).
    w = rng.normal(size=(1000, 3)) * rng.uniform(0.1, 10.0, (1000, 1))
    back = vector_from_pitchyaw(pitchyaw_from_vector(w))
    np.testing.assert_allclose(back, w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-6)


def test_unityeyes_straight_ahead() -> None:
    v = unityeyes_to_mpiigaze(np.array([[0.0, 0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(v, [[0, 0, -1]])
    np.testing.assert_allclose(pitchyaw_from_vector(v), [[0, 0]], atol=1e-7)


def test_unityeyes_known_vectors() -> None:
    # (x_u, y_u, z_u) -> (x_u, -y_u, -z_u) / |.|; |(0.3, 0.2, 0.93)| = 0.997447.
    # (0.3, -0.2, 0.93): MPIIGaze (0.3, 0.2, -0.93): looking down (pitch = asin(-0.2/n) =
    # -11.567 deg) and to image-right (yaw = atan2(-0.3, 0.93) = -17.879 deg).
    n = math.sqrt(0.3**2 + 0.2**2 + 0.93**2)
    v = unityeyes_to_mpiigaze(np.array([[0.3, -0.2, 0.93, 0.0], [0.3, -0.2, -0.93, 0.0]]))
    np.testing.assert_allclose(v[0], np.array([0.3, 0.2, -0.93]) / n, rtol=1e-6)
    np.testing.assert_allclose(v[1], np.array([0.3, 0.2, 0.93]) / n, rtol=1e-6)
    deg = np.degrees(pitchyaw_from_vector(v))
    # (0.3, -0.2, -0.93) looks away from the camera: yaw = atan2(-0.3, -0.93) = -162.121 deg.
    np.testing.assert_allclose(deg, [[-11.5669, -17.8787], [-11.5669, -162.1213]], atol=1e-3)
    # 3 columns give the same answer as 4.
    np.testing.assert_array_equal(unityeyes_to_mpiigaze(np.array([[0.3, -0.2, 0.93]])), v[:1])


@pytest.mark.parametrize(
    ("fn", "arg"),
    [
        (pitchyaw_from_vector, np.zeros((2, 2))),
        (pitchyaw_from_vector, np.zeros(3)),
        (pitchyaw_from_vector, np.array([[0.0, 0.0, 0.0]])),
        (vector_from_pitchyaw, np.zeros((2, 3))),
        (vector_from_pitchyaw, np.zeros(2)),
        (unityeyes_to_mpiigaze, np.zeros((2, 5))),
        (unityeyes_to_mpiigaze, np.zeros((1, 2, 4))),
        (unityeyes_to_mpiigaze, np.array([[0.0, 0.0, 0.0, 1.0]])),  # only the w column set
        (unityeyes_to_mpiigaze, np.array([[np.nan, 0.0, 1.0]])),
    ],
)
def test_bad_input_raises(fn, arg: np.ndarray) -> None:
    with pytest.raises(ValueError):
        fn(arg)


def test_angular_error() -> None:
    a = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -2.0]])
    b = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, -1.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(angular_error_deg(a, b), [0.0, 45.0, 180.0, 90.0], atol=1e-4)
    # Tiny angles are not lost to arccos rounding.
    tiny = vector_from_pitchyaw(np.array([[0.0, np.radians(0.01)]])).astype(np.float64)
    np.testing.assert_allclose(
        angular_error_deg(np.array([[0.0, 0.0, -1.0]]), tiny), 0.01, rtol=1e-2
    )
    with pytest.raises(ValueError):
        angular_error_deg(a, b[:2])
