"""Fused fake-quant matmuls (erq_kernels.fakequant) against the reference, in the interpreter.

The quantized operand is checked bit for bit (an identity right operand makes the product
return it unchanged) on inputs whose ``x / scale`` stays away from rounding ties, plus exact
ties where the division is exact (power-of-two scale). Products are checked elementwise
against an fp64 product of the identical quantized operands:
``|out - ref| <= tol * (|A~| @ |B~| + |bias|)``.
"""
import math

import pytest
import torch

import erq_kernels
from erq_kernels import fakequant as fq
from erq_kernels import reference as ref

EPS32 = 2.0 ** -24


def _tie_free_uniform(shape, scale, zero, qmax, dtype=torch.float32):
    """Values whose ``x / scale`` sits at least 0.05 from a half-integer, covering the clamp
    range and beyond (plus exact zeros and huge values)."""
    k = torch.randint(-int(zero) - 6, int(qmax - zero) + 7, shape).double()
    u = torch.rand(shape, dtype=torch.float64) * 0.9 - 0.45
    x = ((k + u) * scale).to(dtype)
    flat = x.view(-1)
    flat[::53] = 0.0
    flat[7::97] = 1e30
    flat[11::89] = -3e29
    return x


def _tie_free_log2(shape, scale, n_bits):
    """Probabilities whose ``-2 log2(p / s)`` sits at least 0.1 from a half-integer, from
    above ``s`` (level 0) to below the last level (maps to 0), plus exact zeros."""
    t = torch.randint(-3, 2 ** n_bits + 3, shape).double() + torch.rand(shape, dtype=torch.float64) * 0.8 - 0.4
    p = (scale * torch.exp2(-t / 2)).float()
    p.view(-1)[::31] = 0.0
    return p


def _bound_check(out, a_q, b_q, bias=None, tol=4 * EPS32, label=""):
    """Elementwise error of ``out`` against the fp64 product of the quantized operands."""
    a64, b64 = a_q.double(), b_q.double()
    exact = a64 @ b64
    mag = a64.abs() @ b64.abs()
    if bias is not None:
        exact = exact + bias.double()
        mag = mag + bias.double().abs()
    k = a_q.shape[-1]
    err = (out.double() - exact).abs()
    limit = tol * k * mag + 1e-30
    assert torch.isfinite(out).all(), label
    worst = (err / limit).max().item()
    assert worst <= 1.0, f"{label}: error {worst:.3g} x the bound"
    normwise = (torch.linalg.norm(out.double() - exact) / torch.linalg.norm(exact)).item()
    return normwise


SCALAR_PARAMS = dict(scale=0.37, zero=7.3, qmax=15)


STRATEGIES = fq.STRATEGIES


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("params", ["float", "tensor", "per_channel"])
def test_linear_quantized_operand_bit_exact(params, strategy):
    m, k = 197 * 2, 65
    s, z, qmax = SCALAR_PARAMS["scale"], SCALAR_PARAMS["zero"], SCALAR_PARAMS["qmax"]
    x = _tie_free_uniform((m, k), s, z, qmax)
    if params == "tensor":
        s, z = torch.tensor(s), torch.tensor(z)
    elif params == "per_channel":
        s = torch.rand(k) * 0.5 + 0.1
        z = torch.rand(k) * 15
        x = torch.cat([_tie_free_uniform((m, 1), float(s[j]), float(z[j]), qmax) for j in range(k)], 1)
    eye = torch.eye(k)
    out = fq.fake_quant_linear(x, eye, None, s, z, qmax, strategy=strategy)
    expected = ref.fake_quant(x, s, z, qmax)
    mism = (out != expected).sum().item()
    assert mism == 0, f"{mism} quantized values differ from the reference"


def test_exact_ties_round_half_to_even():
    # scale 0.25 makes x / scale exact, so x = (k + 0.5) * scale is a true tie.
    m, k, s, qmax = 64, 40, 0.25, 255
    levels = torch.randint(-20, 20, (m, k)).float()
    x = (levels + 0.5) * s
    for z, strategy in ((128.0, "fused"), (100.5, "fused"), (100.5, "prequant")):
        out = fq.fake_quant_linear(x, torch.eye(k), None, s, z, qmax, strategy=strategy)
        expected = ref.fake_quant(x, s, z, qmax)
        assert torch.equal(out, expected)
    # The inputs are ties, and half-to-even differs from half-up on them.
    assert (x / s - torch.round(x / s)).abs().min().item() == 0.5
    assert (torch.round(x / s) != torch.floor(x / s + 0.5)).any()


@pytest.mark.parametrize("k,n,with_bias,quant,strategy", [
    (65, 33, True, "per_tensor", "fused"),
    (40, 70, False, "per_tensor", "fused"),
    (65, 70, True, None, "fused"),
    (65, 33, True, "per_tensor", "prequant"),
    (40, 70, True, "per_tensor", "prequant_triton"),
    (65, 33, "strided", "per_tensor", "fused"),  # a bias view with stride 2
])
def test_linear_matches_reference(k, n, with_bias, quant, strategy):
    x = torch.randn(2, 197, k) * 2
    # Columns over six orders of magnitude: cancellation in the output exercises the bound.
    w = torch.randn(n, k) * torch.logspace(-3, 3, k)[None, :]
    w = ref.fake_quant(w, w.abs().amax(1, keepdim=True) / 7, 8.0, 15)  # on a 4-bit grid
    bias = torch.randn(n) if with_bias else None
    if with_bias == "strided":
        bias = torch.randn(2 * n)[::2]
    qargs = (0.21, 6.5, 15) if quant else (None, None, None)
    out = fq.fake_quant_linear(x, w, bias, *qargs, strategy=strategy)
    assert out.shape == (2, 197, n) and out.dtype == torch.float32
    xq = ref.fake_quant(x, *qargs) if quant else x
    res = _bound_check(out.reshape(-1, n), xq.reshape(-1, k), w.T, bias, label="linear")
    assert res < 1e-6
    eager = ref.fake_quant_linear(x, w, bias, *qargs)
    assert torch.allclose(out, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())


@pytest.mark.parametrize("config", [
    {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 16, "SWAP": True},
    {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64, "SWAP": False, "GROUP_M": 3},
])
def test_linear_other_tiles(config):
    m, k, n = 197 * 2, 40, 33
    x = _tie_free_uniform((m, k), 0.3, 3.25, 7)
    w = torch.randn(n, k)
    bias = torch.randn(n)
    out = fq.fake_quant_linear(x, w, bias, 0.3, 3.25, 7, config=config)
    xq = ref.fake_quant(x, 0.3, 3.25, 7)
    _bound_check(out, xq, w.T, bias, label=str(config))
    same = fq.fake_quant_linear(x, torch.eye(k), None, 0.3, 3.25, 7, config=config)
    assert torch.equal(same, xq)


@pytest.mark.parametrize("strategy", ["fused", "prequant"])
def test_linear_bf16(strategy):
    m, k, n = 197 * 2, 65, 70
    s, z, qmax = 0.4, 7.5, 15
    x = _tie_free_uniform((m, k), s, z, qmax, dtype=torch.bfloat16)
    # Quantized operand: fp32 quantization of the bf16 input, rounded once to bf16.
    xq = ref.fake_quant(x.float(), s, z, qmax).bfloat16()
    eye = torch.eye(k, dtype=torch.bfloat16)
    same = fq.fake_quant_linear(x, eye, None, s, z, qmax, strategy=strategy)
    assert same.dtype == torch.bfloat16
    assert torch.equal(same, xq)

    x = torch.randn(m, k).bfloat16() * 3
    w = torch.randn(n, k).bfloat16()
    bias = torch.randn(n).bfloat16()
    out = fq.fake_quant_linear(x, w, bias, s, z, qmax, strategy=strategy)
    assert out.dtype == torch.bfloat16
    xq = ref.fake_quant(x.float(), s, z, qmax).bfloat16()
    # fp32 accumulation, one rounding of the output to bf16 (relative 2^-9).
    exact = xq.double() @ w.double().T + bias.double()
    err = (out.double() - exact).abs()
    mag = xq.double().abs() @ w.double().abs().T + bias.double().abs()
    assert (err <= 2.0 ** -8 * exact.abs() + 4 * EPS32 * k * mag).all()
    # Eager bf16 rounds x / scale to bf16 first: a few elements move by one level.
    eager = ref.fake_quant_linear(x, w, bias, s, z, qmax).double()
    rel = (torch.linalg.norm(out.double() - eager) / torch.linalg.norm(eager)).item()
    assert rel < 3e-2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matmul_uniform_qk(strategy):
    b_, h, t, d = 2, 3, 37, 33
    # Zero points outside [0, qmax]: zero itself then dequantizes to non-zero, so the K
    # padding of both operands would pollute the product if it were not masked.
    sq, zq, sk, zk, qmax = 0.15, -0.75, 0.2, 16.5, 15
    q = _tie_free_uniform((b_, h, t, d), sq, zq, qmax)
    k = _tie_free_uniform((b_, h, 41, d), sk, zk, qmax).clamp(-10, 10)
    q = q.clamp(-10, 10)
    kt = k.transpose(-2, -1)  # non-contiguous view, no copy
    out = fq.fake_quant_matmul(q, kt, ("uniform", sq, zq, qmax),
                               ("uniform", torch.tensor(sk), torch.tensor(zk), qmax), strategy=strategy)
    assert out.shape == (b_, h, t, 41)
    qq = ref.fake_quant(q, sq, zq, qmax)
    kq = ref.fake_quant(kt, sk, zk, qmax)
    _bound_check(out, qq, kq, label="qk")
    expected = ref.fake_quant_matmul(q, kt, ("uniform", sq, zq, qmax), ("uniform", sk, zk, qmax))
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    # The quantized operands themselves, bit for bit.
    eye_d = torch.eye(d).expand(b_, h, d, d)
    got = fq.fake_quant_matmul(q, eye_d, ("uniform", sq, zq, qmax), None, strategy=strategy)
    assert torch.equal(got, qq)
    eye_t = torch.eye(41).expand(b_, h, 41, 41)
    got = fq.fake_quant_matmul(eye_t, k, None, ("uniform", sk, zk, qmax), strategy=strategy)
    assert torch.equal(got, ref.fake_quant(k, sk, zk, qmax))


@pytest.mark.parametrize("n_bits,strategy", [(4, "fused"), (3, "fused"), (4, "prequant"),
                                             (8, "prequant_triton")])
def test_matmul_log2_pv(n_bits, strategy):
    b_, h, t, d = 2, 2, 40, 20
    s = 0.6
    p = _tie_free_log2((b_, h, t, t), s, n_bits)
    pq = ref.fake_quant_log2(p, s, n_bits)
    assert (pq == 0).any() and (pq == s).any()  # both ends of the level range are exercised
    eye = torch.eye(t).expand(b_, h, t, t)
    same = fq.fake_quant_matmul(p, eye, ("log2", s, n_bits), None, strategy=strategy)
    mism = (same != pq).sum().item()
    assert mism == 0, f"{mism} log2 levels differ from the reference"
    v = torch.randn(b_, h, t, d)
    vq_args = ("uniform", 0.1, 7.0, 15)
    out = fq.fake_quant_matmul(p, v, ("log2", torch.tensor(s), n_bits), vq_args, strategy=strategy)
    _bound_check(out, pq, ref.fake_quant(v, 0.1, 7.0, 15), label="pv")


def test_matmul_no_quant_broadcast():
    a = torch.randn(3, 40, 33)
    b = torch.randn(33, 29)  # broadcast over the batch
    out = fq.fake_quant_matmul(a, b, strategy="fused")
    _bound_check(out, a, b.expand(3, 33, 29), label="plain")
    assert out.shape == (3, 40, 29)


def test_dispatch(monkeypatch):
    a = torch.randn(1, 2, 20, 16)
    b = torch.randn(1, 2, 16, 18)
    aq = ("uniform", 0.1, 8.0, 15)
    assert erq_kernels.backend_for("fake_quant_matmul", a.device) == "reference"
    expected = erq_kernels.fake_quant_matmul(a, b, aq, None)
    assert torch.equal(expected, ref.fake_quant_matmul(a, b, aq, None))
    monkeypatch.setenv("ERQ_KERNELS_BACKEND", "triton")
    assert erq_kernels.backend_for("fake_quant_matmul", a.device) == "triton"
    assert erq_kernels.backend_for("fake_quant_linear", a.device) == "triton"
    out = erq_kernels.fake_quant_matmul(a, b, aq, None)
    _bound_check(out, ref.fake_quant(a, 0.1, 8.0, 15), b, label="dispatch")
    lin = erq_kernels.fake_quant_linear(a[0, 0], b[0, 0].T, None, 0.1, 8.0, 15)
    _bound_check(lin, ref.fake_quant(a[0, 0], 0.1, 8.0, 15), b[0, 0], label="dispatch linear")


def test_rejects_bad_arguments():
    x = torch.randn(8, 16)
    with pytest.raises(TypeError):
        fq.fake_quant_linear(x, torch.randn(4, 16).double(), None)
    with pytest.raises(ValueError):
        fq.fake_quant_matmul(x, torch.randn(16, 4), ("log2", 0.5, 9), None)
    with pytest.raises(ValueError):
        fq.fake_quant_matmul(x, torch.randn(16, 4), None, ("uniform", torch.ones(16), 0.0, 15))
    with pytest.raises(ValueError):
        fq.fake_quant_linear(x, torch.randn(4, 15), None)
    assert math.isclose(float(fq.fake_quant_linear(x, torch.zeros(4, 16), torch.ones(4)).mean()), 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_quant_tensor_strided(dtype):
    # q as timm's attention makes it: a non-contiguous view of the qkv tensor.
    s, z, qmax = 0.2, 6.75, 15
    qkv = _tie_free_uniform((2, 37, 3, 3, 24), s, z, qmax).permute(2, 0, 3, 1, 4)
    q = qkv[0].to(dtype) if dtype != torch.float32 else qkv[0]
    assert not q.is_contiguous()
    got = fq.fake_quant_tensor(q, ("uniform", s, z, qmax))
    assert got.is_contiguous() and got.dtype == dtype
    assert torch.equal(got, ref.fake_quant(q.float(), s, z, qmax).to(dtype))
    sv, zv = torch.rand(24) * 0.3 + 0.05, torch.rand(24) * 15
    x = _tie_free_uniform((5, 3, 24), 0.2, 6.75, 15)
    got = fq.fake_quant_tensor(x.transpose(0, 1), ("uniform", sv, zv, qmax))
    assert torch.equal(got, ref.fake_quant(x.transpose(0, 1), sv, zv, qmax))
    p = _tie_free_log2((3, 7, 50), 0.8, 4)
    assert torch.equal(fq.fake_quant_tensor(p, ("log2", 0.8, 4)), ref.fake_quant_log2(p, 0.8, 4))


def test_default_strategy_runs_and_matches():
    # The defaults measured on an H200; each must compute the same function.
    assert fq.default_strategy("linear", torch.bfloat16) == "prequant"
    assert fq.default_strategy("matmul", torch.bfloat16, ("log2", 1.0, 4)) == "prequant"
    assert fq.default_strategy("matmul", torch.bfloat16, ("uniform", 1.0, 0.0, 15)) == "fused"
    a = torch.randn(2, 30, 24).bfloat16()
    b = torch.randn(2, 24, 20).bfloat16()
    aq = ("uniform", 0.2, 7.5, 15)
    out = fq.fake_quant_matmul(a, b, aq, None)
    aq32 = ref.fake_quant(a.float(), 0.2, 7.5, 15).bfloat16()
    exact = aq32.double() @ b.double()
    err = (out.double() - exact).abs()
    assert (err <= 2.0 ** -8 * exact.abs() + 1e-5 * (aq32.double().abs() @ b.double().abs())).all()


def test_fp32_default_is_bit_identical_to_the_reference():
    # fp32 runs prequant on purpose: bit-exact quantization, then the reference's own GEMM,
    # so the Triton backend reproduces the eager forward bit for bit (no ulp-level drift).
    assert fq.default_strategy("linear", torch.float32) == "prequant"
    assert fq.default_strategy("matmul", torch.float32, ("uniform", 1.0, 0.0, 15)) == "prequant"
    s, z, qmax = 0.07, 6.4, 15
    x = _tie_free_uniform((3, 37, 40), s, z, qmax)
    x[x.abs() > 1e3] = 0.5  # finite products only
    w = torch.randn(23, 40)
    bias = torch.randn(23)
    assert torch.equal(fq.fake_quant_linear(x, w, bias, s, z, qmax),
                       ref.fake_quant_linear(x, w, bias, s, z, qmax))
    q = _tie_free_uniform((2, 3, 17, 8), s, z, qmax)
    k = _tie_free_uniform((2, 3, 8, 19), s, z, qmax)
    q[q.abs() > 1e3] = 0.5
    k[k.abs() > 1e3] = -0.5
    aq = bq = ("uniform", s, z, qmax)
    assert torch.equal(fq.fake_quant_matmul(q, k, aq, bq), ref.fake_quant_matmul(q, k, aq, bq))


def test_per_op_backend_override(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("ERQ_KERNELS_BACKEND", "reference")
    monkeypatch.setenv("ERQ_KERNELS_BACKEND_FAKE_QUANT_LINEAR", "triton")
    assert erq_kernels.backend_for("fake_quant_linear", cpu) == "triton"
    assert erq_kernels.backend_for("fake_quant_matmul", cpu) == "reference"
    monkeypatch.setenv("ERQ_KERNELS_BACKEND_FAKE_QUANT_LINEAR", "auto")  # the rules: CPU -> reference
    assert erq_kernels.backend_for("fake_quant_linear", cpu) == "reference"
    monkeypatch.setenv("ERQ_KERNELS_BACKEND_FAKE_QUANT_MATMUL", "cuda-please")
    with pytest.raises(ValueError, match="ERQ_KERNELS_BACKEND"):
        erq_kernels.backend_for("fake_quant_matmul", cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flat_quantizer_path_equals_general_path(dtype):
    # 0-d tensor parameters and a contiguous input take the few-argument kernel
    s, z = torch.tensor(0.07), torch.tensor(6.4)
    x = _tie_free_uniform((5, 33, 17), 0.07, 6.4, 15, dtype)
    assert fq._flat_args(x, ("uniform", s, z, 15)) is not None
    got = fq.fake_quant_tensor(x, ("uniform", s, z, 15))
    assert fq._flat_args(x, ("uniform", 0.07, 6.4, 15)) is None  # numbers: the general kernel
    assert torch.equal(got, fq.fake_quant_tensor(x, ("uniform", 0.07, 6.4, 15)))
    if dtype == torch.float32:
        assert torch.equal(got, ref.fake_quant(x, s, z, 15))
    assert fq._flat_args(x, ("log2", torch.tensor(0.8), 4)) is None  # log2: general kernel
    assert fq._flat_args(x.transpose(0, 2), ("uniform", s, z, 15)) is None  # strided: general
