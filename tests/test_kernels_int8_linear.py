"""The int8 linear layer (erq_kernels.int8_linear) in the interpreter: its int8 activation
values bit for bit against their torch definition, the GEMM against its fp64 definition, and
the whole against the fake-quant product ``fake_quant(x) @ W^T + b`` it stands for (exact up
to fp32 rounding where the zero point is an integer; within ``s / (2 mult)`` per clamped
activation where it is fractional)."""
import pytest
import torch

import erq_kernels
from erq_kernels import int8_linear as il
from erq_kernels import reference as ref

pytest.importorskip("triton")


def _layer(n, k, bits=4, dual=True, seed=0):
    """Random integer levels, per-row scales (two groups when ``dual``), the dequantized W."""
    g = torch.Generator().manual_seed(seed)
    qmax = 2 ** bits - 1
    zero = torch.randint(0, qmax + 1, (2, n), generator=g).float()
    codes = torch.randint(0, qmax + 1, (n, k), generator=g).float()
    group = torch.zeros(k, dtype=torch.long)
    if dual:
        group[torch.randperm(k, generator=g)[:max(1, k // 7)]] = 1
    scale = torch.rand(2, n, generator=g) * 0.05 + 0.01
    if not dual:
        scale, zero = scale[:1], zero[:1]
    levels = codes - zero[group].T
    w = scale[group].T * levels
    return il.pack_weight(levels, scale, group if dual else None), w


def _x(m, k, s, z, qmax, dtype, seed=1):
    """Activations whose ``x / s`` stays 0.05 from a rounding tie, covering the clamp range."""
    g = torch.Generator().manual_seed(seed)
    lvl = torch.randint(-int(z) - 3, int(qmax - z) + 4, (m, k), generator=g).double()
    u = torch.rand(m, k, generator=g, dtype=torch.float64) * 0.9 - 0.45
    return ((lvl + u) * s).to(dtype)


@pytest.mark.parametrize("m,k,n", [(197, 193, 45), (64, 96, 33), (5, 385, 70)])
@pytest.mark.parametrize("dual", [True, False])
@pytest.mark.parametrize("z", [7.0, 6.37, 0.0, 15.0])
def test_values_and_gemm(m, k, n, dual, z):
    w, wd = _layer(n, k, dual=dual)
    s, qmax, mult = 0.23, 15, 8
    st, zt = torch.tensor(s), torch.tensor(z)
    x = _x(m, k, s, z, qmax, torch.float32)
    v_ref = il.act_values_reference(x, w, st, zt, qmax, mult)
    v = il.act_values(x, w, st.reshape(1), zt.reshape(1), qmax, mult)
    assert torch.equal(v, v_ref)
    assert v.abs().max() <= 64  # the offset centres any zero point
    bias = torch.randn(n)
    y = il.int8_linear(x, w, bias, st, zt, qmax)
    y_def = il.int8_linear_reference(x, w, bias, st, zt, qmax)
    assert torch.linalg.norm(y.double() - y_def.double()) <= 1e-6 * torch.linalg.norm(y_def.double())
    # against the fake-quant product in fp64
    xq = ref.fake_quant(x.double(), st.double(), zt.double(), qmax)
    exact = xq @ wd.double().T + bias.double()
    mag = xq.abs() @ wd.double().abs().T + bias.double().abs()
    err = (y.double() - exact).abs()
    if z == round(z):
        assert (err <= 8 * k * 2.0 ** -24 * mag + 1e-30).all()
    else:  # clamped activations rounded to 1/mult of a step
        q = torch.clamp(torch.round(x.double() / s) + z, 0, qmax)
        clamped = ((q == 0) | (q == qmax)).double()
        bound = s / (2 * mult) * (clamped @ wd.double().abs().T) + 8 * k * 2.0 ** -24 * mag
        assert (err <= bound * 1.001 + 1e-12).all()
        assert (err > 8 * k * 2.0 ** -24 * mag).any()  # the test did exercise the rounding


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_matches_definition(dtype):
    w, wd = _layer(40, 131, bits=3)
    s, z = torch.tensor(0.1), torch.tensor(3.0)
    x = _x(3 * 37, 131, 0.1, 3.0, 7, torch.float32).to(dtype).reshape(3, 37, 131)
    bias = torch.randn(40).to(dtype)
    y = il.int8_linear(x, w, bias, s, z, 7)
    assert y.dtype == dtype and y.shape == (3, 37, 40)
    y_def = il.int8_linear_reference(x, w, bias, s, z, 7)
    # the same fp32 value up to the epilogue's rounding, then one rounding to 16 bits
    rel = (y.double() - y_def.double()).abs() / y_def.double().abs().clamp_min(1e-3)
    assert rel.max() <= 2 * 2.0 ** -8
    exact = ref.fake_quant(x.double(), s.double(), z.double(), 7) @ wd.double().T + bias.double()
    assert torch.linalg.norm(y.double() - exact) <= 2.0 ** -8 * torch.linalg.norm(exact)


@pytest.mark.parametrize("bits", [1, 5, 7])
def test_bit_widths(bits):
    qmax = 2 ** bits - 1
    mult = il.act_mult(qmax)
    assert mult == 128 // (qmax + 1)
    w, wd = _layer(24, 70, bits=min(bits, 7), dual=False)
    s = torch.tensor(0.05)
    for z in (0.0, qmax * 0.37):
        zt = torch.tensor(float(z))
        x = _x(50, 70, 0.05, z, qmax, torch.float32)
        y = il.int8_linear(x, w, None, s, zt, qmax)
        y_def = il.int8_linear_reference(x, w, None, s, zt, qmax)
        assert torch.linalg.norm(y.double() - y_def.double()) <= 1e-6 * torch.linalg.norm(y_def.double())


def test_pack_weight_layout():
    w, wd = _layer(30, 100, dual=True)
    assert w.levels.dtype == torch.int8 and w.levels.shape[1] % il.PAD == 0
    assert w.k0 % il.PAD == 0 and w.perm.shape == (w.levels.shape[1],)
    ok = w.perm >= 0
    assert sorted(w.perm[ok].tolist()) == list(range(100))  # every column once
    # the packed weight dequantizes to W
    back = torch.zeros(30, 100)
    seg = torch.zeros(w.levels.shape[1], dtype=torch.long)
    seg[w.k0:] = 1
    back[:, w.perm[ok].long()] = (w.levels.float() * w.scale[:, seg])[:, ok]
    assert torch.equal(back, wd)
    assert torch.equal(w.rowsum[:, 0] + w.rowsum[:, 1], w.levels.sum(1, dtype=torch.int32))


def test_pack_weight_errors():
    s = torch.ones(4)
    with pytest.raises(ValueError, match="integers"):
        il.pack_weight(torch.full((4, 8), 0.5), s)
    with pytest.raises(ValueError, match="integers"):
        il.pack_weight(torch.full((4, 8), 128.0), s)
    with pytest.raises(ValueError, match="positive"):
        il.pack_weight(torch.ones(4, 8), -s)
    with pytest.raises(ValueError, match="rows"):
        il.pack_weight(torch.ones(4, 8), torch.ones(3))
    with pytest.raises(ValueError, match="two column groups"):
        il.pack_weight(torch.ones(4, 8), s, torch.tensor([0, 1] * 4))
    with pytest.raises(ValueError, match="entries"):
        il.pack_weight(torch.ones(4, 8), torch.ones(2, 4), torch.tensor([0, 1]))


def test_int8_linear_errors():
    w, _ = _layer(8, 16, dual=False)
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="int8 form"):
        il.int8_linear(x, w, None, 0.1, 128.0, 255)  # 8-bit activations
    with pytest.raises(ValueError, match="per-tensor"):
        il.int8_linear(x, w, None, torch.ones(16), torch.zeros(16), 15)
    with pytest.raises(ValueError, match="columns"):
        il.int8_linear(torch.randn(4, 17), w, None, 0.1, 7.0, 15)
    assert il.act_mult(255) is None and il.act_mult(14) is None and il.act_mult(15.5) is None


def test_backend_falls_back_without_int8_form(monkeypatch):
    """The int8 backend of fake_quant_linear runs the Triton fake-quant path for fp32, without
    a packed weight, or for an 8-bit quantizer; with them it runs int8_linear."""
    w, wd = _layer(20, 48, dual=False)
    bias = torch.randn(20)
    x = _x(30, 48, 0.1, 7.0, 15, torch.float32)
    monkeypatch.setenv("ERQ_KERNELS_BACKEND_FAKE_QUANT_LINEAR", "int8")
    s, z = torch.tensor(0.1), torch.tensor(7.0)
    xb, wb = x.bfloat16(), wd.bfloat16()
    from erq_kernels import fakequant as fq
    via_fq = fq.fake_quant_linear(xb, wb, bias.bfloat16(), s, z, 15)
    assert torch.equal(erq_kernels.fake_quant_linear(xb, wb, bias.bfloat16(), s, z, 15), via_fq)
    y32 = erq_kernels.fake_quant_linear(x, wd, bias, s, z, 15, packed=w)
    assert torch.equal(y32, fq.fake_quant_linear(x, wd, bias, s, z, 15))
    y8 = erq_kernels.fake_quant_linear(xb, wb, bias.bfloat16(), s, z, 255, packed=w)
    assert torch.equal(y8, fq.fake_quant_linear(xb, wb, bias.bfloat16(), s, z, 255))
    y = erq_kernels.fake_quant_linear(xb, wb, bias.bfloat16(), s, z, 15, packed=w)
    assert torch.equal(y, il.int8_linear(xb, w, bias.bfloat16(), s, z, 15))
    # a function returning the packed weight (what QuantLinear passes) is called when needed
    assert torch.equal(erq_kernels.fake_quant_linear(xb, wb, bias.bfloat16(), s, z, 15,
                                                     packed=lambda: w), y)
    assert torch.equal(erq_kernels.fake_quant_linear(xb, wb, bias.bfloat16(), s, z, 15,
                                                     packed=lambda: None), via_fq)


def test_quant_linear_packs_its_grid():
    """QuantLinear.int8_weight: the packed weight dequantizes to the module's weight; a weight
    off its grid gets none; an in-place change of the weight re-packs."""
    from erq.modules import make_quant_linear
    torch.manual_seed(3)
    lin = make_quant_linear(torch.nn.Linear(64, 40), 4, 4, per_channel_input=False, dual=True)
    assert lin.int8_weight() is None  # not calibrated
    with torch.no_grad():
        lin.weight_quant.calibrate(lin.weight)
        lin.weight.copy_(lin.weight_quant.quantize(lin.weight))
    p = lin.int8_weight()
    assert p is not None and p.perm is not None
    ok = p.perm >= 0
    back = torch.zeros_like(lin.weight)
    seg = torch.zeros(p.levels.shape[1], dtype=torch.long)
    seg[p.k0:] = 1
    back[:, p.perm[ok].long()] = (p.levels.float() * p.scale[:, seg])[:, ok]
    assert torch.equal(back, lin.weight)
    assert lin.int8_weight() is p  # cached
    with torch.no_grad():
        lin.weight[0, 0] += 1e-3  # off the grid
    assert lin.int8_weight() is None
    lin.weight.data = lin.weight.data.bfloat16()
    with torch.no_grad():
        lin.weight.copy_(lin.weight_quant.quantize(lin.weight.float()).bfloat16())
    p16 = lin.int8_weight()  # bf16 weights: the grid rounded to bf16
    assert p16 is not None


@pytest.mark.gpu
def test_gpu_int8_linear():
    """On the GPU (autotuned GEMM, cached launches): the definition to the epilogue's rounding."""
    for dual in (True, False):
        w, wd = _layer(385, 769, dual=dual)
        w = il.Int8Weight(*(t.cuda() if torch.is_tensor(t) else t for t in w))
        s, z = torch.tensor(0.2, device="cuda"), torch.tensor(6.4, device="cuda")
        x = _x(197 * 3, 769, 0.2, 6.4, 15, torch.float32).cuda()
        bias = torch.randn(385, device="cuda")
        for dtype in (torch.bfloat16, torch.float32):
            xd = x.to(dtype)
            y = il.int8_linear(xd, w, bias, s, z, 15)
            y_def = il.int8_linear_reference(xd, w, bias, s, z, 15)
            tol = 1e-6 if dtype == torch.float32 else 2.0 ** -8
            assert torch.linalg.norm(y.double() - y_def.double()) <= tol * torch.linalg.norm(y_def.double())
