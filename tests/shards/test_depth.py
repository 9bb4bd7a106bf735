import numpy as np

from shards.depth import CUBE_MM, INVALID, decode_depth, encode_depth, uvd_to_xyz, xyz_to_uvd


def test_depth_codes_round_trip_within_the_cube_and_mark_invalid_pixels():
    rng = np.random.default_rng(0)
    center = 712.5
    mm = center + rng.uniform(-CUBE_MM / 2, CUBE_MM / 2, size=(64, 64))
    back = decode_depth(encode_depth(mm, center), center)
    assert np.abs(back - mm).max() <= CUBE_MM / 65534  # one code step
    codes = encode_depth(np.array([0.0, np.nan, -5.0, center - 400, center + 900]), center)
    assert codes.tolist() == [INVALID, INVALID, INVALID, 1, 65535]
    assert np.isnan(decode_depth(codes, center)[:3]).all()


def test_projection_round_trips_and_puts_the_optical_axis_at_the_principal_point():
    xyz = np.array([[0.0, 0.0, 600.0], [35.0, -80.0, 850.0]])
    uvd = xyz_to_uvd(xyz)
    assert np.allclose(uvd[0], [320.0, 240.0, 600.0])
    assert uvd[1, 1] > 240.0  # y up in camera space is v down in the image
    assert np.allclose(uvd_to_xyz(uvd), xyz)
