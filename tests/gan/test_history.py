import pytest
import torch

from distsim.data.pixels import CODE_LEVELS, to_unit_range
from distsim.gan.history import HistoryBuffer, codes_fit, dequantize, quantize, state_images


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


def _refined(n: int, seed: int) -> torch.Tensor:
    # Like R's output: tanh, so in (-1, 1), and almost never on an 8-bit code.
    return torch.randn((n, 1, 5, 7), generator=torch.Generator().manual_seed(seed)).tanh()


def test_which_codes_fit_which_buffer():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert codes_fit(255, dtype)
    assert codes_fit(65534, torch.float32)
    assert not codes_fit(65534, torch.bfloat16) and not codes_fit(65534, torch.float16)
    with pytest.raises(ValueError, match="65535 codes do not fit"):
        HistoryBuffer(4, (1,), seed=0, dtype=torch.bfloat16, levels=65534)


def test_the_codes_are_the_datas_own_values():
    # uint8 eyes and uint16 depth crops: every value the loader makes is a code, kept exactly.
    eyes = to_unit_range(torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16))
    depth = to_unit_range(torch.arange(1, 65536, dtype=torch.int32).view(1, 1, 5, 13107))
    for images, dtype in ((eyes, "uint8"), (depth, "uint16")):
        buf = HistoryBuffer(1, tuple(images.shape[1:]), seed=0, levels=CODE_LEVELS[dtype])
        buf.push(images)
        torch.testing.assert_close(buf.images, images, rtol=0, atol=1e-6)
        assert quantize(images, CODE_LEVELS[dtype]).unique().numel() == images.numel()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_coded_buffer_holds_codes_and_round_trips_bitwise(dtype):
    a = HistoryBuffer(12, (1, 5, 7), seed=3, dtype=dtype, levels=255)
    for k in range(6):
        a.push(_refined(4, k))
    # Every pixel is one of the 8-bit codes k / 127.5 - 1, the nearest to what was pushed.
    codes = quantize(a.images, 255)
    assert torch.equal(dequantize(codes, 255).to(dtype), a.images)
    assert codes.min() >= 0 and codes.max() <= 255
    state = a.state_dict()
    assert "images" not in state and state["codes"].dtype == torch.uint8
    assert state["dtype"] == str(dtype).removeprefix("torch.")
    b = HistoryBuffer(12, (1, 5, 7), seed=99, dtype=dtype, levels=255)
    b.load_state_dict(state)
    assert torch.equal(a.images, b.images) and len(a) == len(b)
    for k in range(6, 9):  # and they go on alike: same slots, same contents
        a.push(_refined(4, k))
        b.push(_refined(4, k))
        assert torch.equal(a.images, b.images)


def test_coding_moves_a_pixel_by_at_most_half_a_code():
    buf = HistoryBuffer(8, (1, 5, 7), seed=0, levels=255)
    x = _refined(8, 0)
    buf.push(x)
    assert (buf.images - x).abs().max() <= 0.5 / 127.5 + 1e-6


def test_a_coded_buffer_is_one_byte_a_pixel_on_disk(tmp_path):
    buf = HistoryBuffer(640, (1, 35, 55), seed=0, levels=255)
    for k in range(10):
        buf.push(torch.randn(64, 1, 35, 55, generator=torch.Generator().manual_seed(k)).tanh())
    torch.save(buf.state_dict(), tmp_path / "h.pt")
    pixels = 640 * 35 * 55
    assert (tmp_path / "h.pt").stat().st_size < pixels + 20_000  # float32 was 4 x pixels


def test_full_precision_states_load_rounded_to_the_codes():
    # What checkpoints held before buffers were coded: float images, any values in [-1, 1].
    old = HistoryBuffer(8, (1, 5, 7), seed=4)
    old.push(_refined(6, 1))
    state = old.state_dict()
    assert "images" in state and "codes" not in state
    assert torch.equal(state_images(state), old.images[:6])
    same = HistoryBuffer(8, (1, 5, 7), seed=0)  # uncoded (float data): loads as it was
    same.load_state_dict(state)
    assert torch.equal(same.images, old.images)
    coded = HistoryBuffer(8, (1, 5, 7), seed=0, levels=255)
    coded.load_state_dict(state)
    assert len(coded) == 6
    assert torch.equal(coded.images[:6], dequantize(quantize(old.images[:6], 255), 255))
    assert torch.equal(coded.generator.get_state(), old.generator.get_state())
