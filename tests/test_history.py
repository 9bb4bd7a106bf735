import pytest
import torch

from distsim.history import HistoryBuffer


def _imgs(start: int, n: int) -> torch.Tensor:
    # Image k is filled with the value k, so slots can be read back as ids.
    return (
        torch.arange(start, start + n, dtype=torch.float32)
        .view(n, 1, 1, 1)
        .expand(n, 1, 2, 3)
        .clone()
    )


def _ids(buf: HistoryBuffer) -> list[int]:
    return buf.images[:, 0, 0, 0].long().tolist()


def test_fills_in_order_then_replaces_exactly_n_random_slots():
    buf = HistoryBuffer(10, (1, 2, 3), seed=0)
    assert len(buf) == 0
    buf.push(_imgs(0, 4))
    buf.push(_imgs(4, 4))
    assert len(buf) == 8
    assert _ids(buf)[:8] == list(range(8))
    buf.push(_imgs(8, 4))  # 2 fill the last free slots, 2 replace among the 8 old ones
    assert len(buf) == 10
    ids = _ids(buf)
    assert ids[8:] == [8, 9]
    assert sorted(set(ids) & {10, 11}) == [10, 11]
    assert sum(i < 8 for i in ids) == 6
    before = _ids(buf)
    for step in range(20):
        buf.push(_imgs(100 + 4 * step, 4))
        after = _ids(buf)
        changed = [i for i in range(10) if after[i] != before[i]]
        assert len(changed) == 4
        assert sorted(after[i] for i in changed) == list(range(100 + 4 * step, 104 + 4 * step))
        before = after
    assert len(buf) == 10


def test_replacement_is_uniform_over_slots():
    buf = HistoryBuffer(8, (1, 1, 1), seed=1)
    buf.push(torch.zeros(8, 1, 1, 1))
    hits = torch.zeros(8)
    for _ in range(2000):
        old = buf.images.clone()
        buf.push(torch.ones(2, 1, 1, 1) * 7)
        hits += (buf.images != old).flatten().float()
        buf.images.zero_()
    # Each slot is replaced with probability 2/8: 500 expected, sd about 19.
    assert ((hits > 420) & (hits < 580)).all(), hits


def test_sample_draws_distinct_filled_slots():
    buf = HistoryBuffer(100, (1, 2, 3), seed=0)
    buf.push(_imgs(0, 30))
    with pytest.raises(ValueError, match="cannot sample 31"):
        buf.sample(31)
    for _ in range(50):
        s = buf.sample(16)[:, 0, 0, 0].long().tolist()
        assert len(set(s)) == 16
        assert all(0 <= i < 30 for i in s)


def test_same_seed_same_choices_and_state_round_trip():
    a = HistoryBuffer(6, (1, 2, 3), seed=5)
    b = HistoryBuffer(6, (1, 2, 3), seed=5)
    for k in range(5):
        a.push(_imgs(10 * k, 3))
        b.push(_imgs(10 * k, 3))
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.sample_indices(4), b.sample_indices(4))
    c = HistoryBuffer(6, (1, 2, 3), seed=99)
    c.load_state_dict(a.state_dict())
    a.push(_imgs(500, 3))
    c.push(_imgs(500, 3))
    assert torch.equal(a.images, c.images) and len(c) == 6
    with pytest.raises(ValueError, match="history-size"):
        HistoryBuffer(4, (1, 2, 3), seed=0).load_state_dict(a.state_dict())


def test_bad_arguments():
    with pytest.raises(ValueError):
        HistoryBuffer(0, (1,), seed=0)
    with pytest.raises(ValueError, match="cannot push"):
        HistoryBuffer(2, (1, 2, 3), seed=0).push(_imgs(0, 3))
