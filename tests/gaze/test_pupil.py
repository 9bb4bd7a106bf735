import pytest
import torch

from distsim.gaze.pupil import locate_pupil, pupil_shift
from shards.sim.eyes import generate


@pytest.fixture(scope="module")
def eyes():
    d = generate("synthetic", 400, seed=11)
    return torch.from_numpy(d["image"]).unsqueeze(1), torch.from_numpy(d["pupil"])


def test_locator_agrees_with_simulator_labels(eyes):
    images, labels = eyes
    err = (locate_pupil(images) - labels).norm(dim=1)
    assert err.median() < 0.8, err.median()
    assert err.mean() < 1.0, err.mean()


def test_shift_measures_a_known_translation(eyes):
    images, _ = eyes
    # Move every image 2 px right (replicating the left column): the pupil moves 2 px.
    moved = torch.cat([images[..., :1].expand(-1, -1, -1, 2), images[..., :-2]], dim=-1)
    shift = pupil_shift(images, moved)
    assert 1.6 < shift.median() < 2.4, shift.median()
    assert pupil_shift(images, images).max() == 0


def test_rejects_colour_images():
    with pytest.raises(ValueError, match="grey"):
        locate_pupil(torch.zeros(2, 3, 35, 55))
