import math

import numpy as np
import pytest
import torch

from erq.quantizers import (WEIGHT_PERCENTILES, LogSqrt2Quantizer, UniformQuantizer,
                            WeightQuantizer, calibrate_weights, dual_groups, log2_fake_quant,
                            tail_quantiles, uniform_fake_quant)
from erq_kernels.reference import fake_quant, fake_quant_log2


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_uniform_on_grid_values_round_trip_exactly(bits):
    qmax = 2 ** bits - 1
    s, z = torch.tensor(0.125), torch.tensor(float(qmax // 3))
    grid = (torch.arange(qmax + 1, dtype=torch.float32) - z) * s
    assert torch.equal(fake_quant(grid, s, z, qmax), grid)
    assert torch.equal(uniform_fake_quant(grid, s, z, qmax), grid)


def test_uniform_clamps_to_the_range():
    s, z, qmax = torch.tensor(0.5), torch.tensor(3.0), 15
    x = torch.tensor([-100.0, 100.0, 0.26])
    out = fake_quant(x, s, z, qmax)
    assert out.tolist() == [-1.5, 6.0, 0.5]
    assert torch.equal(uniform_fake_quant(x, s, z, qmax), out)


def test_fast_paths_match_the_reference():
    x = torch.randn(10000) * 4
    for dtype in (torch.float32, torch.bfloat16):  # bit for bit, also for a fractional zero
        for z in (5.0, 5.37, 7.635416507720947):
            s, zt, xd = torch.tensor(0.3, dtype=dtype), torch.tensor(z, dtype=dtype), x.to(dtype)
            assert torch.equal(uniform_fake_quant(xd, s, zt, 15), fake_quant(xd, s, zt, 15))
    p = torch.rand(10000) ** 6
    p[::5] = 0
    for bits in (3, 4, 6):
        assert torch.equal(log2_fake_quant(p, torch.tensor(0.7), bits), fake_quant_log2(p, torch.tensor(0.7), bits))


@pytest.mark.parametrize("bits", [3, 4])
def test_log_sqrt2_levels(bits):
    s = torch.tensor(0.8)
    k = torch.arange(2 ** bits, dtype=torch.float32)
    expected = torch.tensor([0.8 * 2 ** (-math.ceil(i / 2)) * (math.sqrt(2) if i % 2 else 1) for i in range(2 ** bits)])
    levels = s * torch.exp2(-k / 2)  # exactly representable as level k
    assert torch.allclose(fake_quant_log2(levels, s, bits), expected, rtol=1e-6, atol=0)
    below = s * 2.0 ** (-(2 ** bits) / 2 - 1)  # level >= 2^b maps to zero
    assert fake_quant_log2(torch.stack([below, torch.tensor(0.0)]), s, bits).tolist() == [0.0, 0.0]
    assert fake_quant_log2(torch.tensor([5.0]), s, bits).item() == pytest.approx(0.8)  # clamped to level 0


@pytest.mark.parametrize("shape,dim", [((1,), 0), ((2, 3), 0), ((1001,), 0), ((517, 6), 0), ((6, 517), 1), ((20000,), 0)])
def test_tail_quantiles_equal_torch_quantile(shape, dim):
    x = torch.randn(*shape)
    ps = (0.999, 0.9999, 0.99999, 0.97)
    lo, hi = tail_quantiles(x, ps, dim)
    for i, p in enumerate(ps):  # bit for bit, as the authors' code computes them
        assert torch.equal(hi[i], torch.quantile(x, p, dim=dim))
        assert torch.equal(lo[i], torch.quantile(x, 1.0 - p, dim=dim))


def test_activation_calibration_picks_least_mse_range():
    x = torch.randn(50000)
    x[:10] = 80.0  # outliers: clipping them must win
    q = UniformQuantizer(4)
    q.calibrate(x)
    errs = []
    for p in (0.999, 0.9999, 0.99999):
        lo, hi = torch.quantile(x, 1 - p), torch.quantile(x, p)
        s = (hi - lo) / 15
        errs.append(((fake_quant(x, s, torch.round(-lo / s), 15) - x) ** 2).mean())
    best = int(torch.stack(errs).argmin())
    p = (0.999, 0.9999, 0.99999)[best]
    lo, hi = torch.quantile(x, 1 - p), torch.quantile(x, p)
    assert q.scale.item() == pytest.approx(((hi - lo) / 15).item(), rel=1e-5)


def test_activation_quantiles_can_be_widened_and_are_validated():
    from erq.pipeline import QuantConfig
    x = torch.randn(20000)
    x[:3] = 50.0
    q = UniformQuantizer(8)
    q.quantiles = (1.0,)  # the full range only: min and max
    q.calibrate(x)
    assert q.scale.item() == pytest.approx(((x.max() - x.min()) / 255).item(), rel=1e-6)
    for bad in ((), (0.3,), (0.99, 1.5)):
        with pytest.raises(ValueError, match="act_quantiles"):
            QuantConfig(act_quantiles=bad).validate()
    assert QuantConfig(act_quantiles=(0.99, 1.0)).validate().act_quantiles == (0.99, 1.0)


def test_per_channel_activation_quantizer_has_one_range_per_channel():
    x = torch.randn(4000, 5) * torch.tensor([0.1, 1.0, 10.0, 3.0, 0.5])
    q = UniformQuantizer(4, per_channel=True, channels=5)
    q.calibrate(x)
    assert q.scale.shape == (5,)
    assert torch.all(q.scale[2] > q.scale[1]) and torch.all(q.scale[1] > q.scale[0])


def test_weight_quantizer_search_and_codes():
    torch.manual_seed(1)
    w = torch.randn(12, 40)
    wq = WeightQuantizer(3, 12, 40)
    wq.calibrate(w)
    q = wq.quantize(w)
    codes = wq.codes(w)
    assert codes.max() <= 7 and torch.equal(wq.dequantize(codes), q)
    assert torch.equal(wq.quantize(q), q)  # on the grid stays put
    # the chosen range is at least as good as plain min/max for every row
    s = (w.max(1).values - w.min(1).values) / 7
    mm = fake_quant(w, s[:, None], torch.round(-w.min(1).values / s)[:, None], 7)
    assert torch.all(((q - w) ** 2).mean(1) <= ((mm - w) ** 2).mean(1) + 1e-7)


def test_dual_uniform_groups():
    torch.manual_seed(2)
    o, d = 200, 30
    w = torch.randn(o, d) * 0.1
    outliers = [3, 17, 25]
    w[:, outliers] *= 30
    group = dual_groups(w)
    assert int(group.sum()) == o // 20  # 10 columns in the second group
    assert all(group[c] == 1 for c in outliers)
    wq = WeightQuantizer(4, o, d, dual=True)
    wq.calibrate(w)
    assert torch.equal(wq.group, group)
    s, _ = wq.maps()
    assert torch.all(s[:, outliers].mean() > 5 * s[:, group == 0].mean())  # separate grids
    err_dual = ((wq.quantize(w) - w) ** 2).mean()
    single = WeightQuantizer(4, o, d)
    single.calibrate(w)
    assert err_dual < ((single.quantize(w) - w) ** 2).mean()


def _row_by_row(w, bits):
    """The per-row percentile search written out one row at a time."""
    qmax = 2 ** bits - 1
    out = []
    for row in w:
        best = None
        for p in WEIGHT_PERCENTILES:
            lo, hi = torch.quantile(row, 1 - p), torch.quantile(row, p)
            s = ((hi - lo) / qmax).clamp_min(1e-8)
            z = torch.round(-lo / s)
            err = ((fake_quant(row, s, z, qmax) - row) ** 2).mean()
            if best is None or err < best[0]:
                best = (err, s, z)
        out.append(best[1:])
    return torch.stack([s for s, _ in out]), torch.stack([z for _, z in out])


@pytest.mark.parametrize("dual", [False, True])
def test_batched_weight_calibration_equals_one_layer_at_a_time(dual):
    torch.manual_seed(3)
    ws = torch.randn(3, 40, 24)
    ws[:, :, [2, 11]] *= 20
    one = [WeightQuantizer(4, 40, 24, dual=dual) for _ in range(3)]
    for q, w in zip(one, ws):
        q.calibrate(w)
    many = [WeightQuantizer(4, 40, 24, dual=dual) for _ in range(3)]
    calibrate_weights(many, ws)
    for a, b, w in zip(one, many, ws):
        assert torch.equal(a.scale, b.scale) and torch.equal(a.zero, b.zero)
        assert torch.equal(a.group, b.group) and bool(b.calibrated)
        for g in range(a.scale.shape[0]):
            cols = a.group == g
            s, z = _row_by_row(w[:, cols], 4)
            torch.testing.assert_close(a.scale[g], s, rtol=1e-6, atol=0)
            torch.testing.assert_close(a.zero[g], z, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one configuration"):
        calibrate_weights([WeightQuantizer(4, 40, 24), WeightQuantizer(3, 40, 24)], ws[:2])


def test_bit_width_is_checked():
    with pytest.raises(ValueError, match="2 to 8"):
        UniformQuantizer(9)
    with pytest.raises(ValueError, match="2 to 8"):
        WeightQuantizer(1, 3, 3)
    with pytest.raises(ValueError):
        LogSqrt2Quantizer(0)


def test_dual_groups_break_ties_as_a_counter_updated_row_by_row():
    """The authors' rule: marks counted with collections.Counter, row by row, most_common."""
    from collections import Counter
    g = torch.Generator().manual_seed(5)
    for o, d in ((100, 12), (61, 9), (40, 30)):
        w = torch.randn(3, o, d, generator=g)
        groups = dual_groups(w)
        for b in range(3):
            counter = Counter()
            for row in w[b].numpy():
                pos, neg = row[row > 0], row[row < 0]  # a row without one sign marks none of it
                hi = np.percentile(pos, 99) if pos.size else np.inf
                lo = np.percentile(neg, 1) if neg.size else -np.inf
                counter.update(np.nonzero((row > hi) | (row < lo))[0].tolist())
            top = [c for c, _ in counter.most_common(o // 20)]
            assert sorted(top) == torch.nonzero(groups[b]).flatten().tolist()
