"""Gram statistics from int8 products (erq_kernels.gram_int8) against fp64 references.

The code-writing pass runs under TRITON_INTERPRET=1 (tests/conftest.py); ``torch._int_mm``
runs on the CPU. Shapes are small and awkward (D and N not multiples of 8 or 16).
"""
import pytest
import torch

import erq_kernels
from erq_kernels import reference
from helpers import gram_quantizer as _quantizer, gram_ref64 as _ref64, rel_err as _rel

gram_int8 = pytest.importorskip("erq_kernels.gram_int8")
gram = pytest.importorskip("erq_kernels.gram")


def _zeros(d):
    return torch.zeros(d + 1, d + 1), torch.zeros(d + 1, d + 1), torch.zeros(d + 1)


CASES = [(5, 20, "tensor"), (77, 31, "tensor"), (77, 31, "tensor_int"), (203, 191, "channel"),
         (45, 33, "zero_out_of_range"), (300, 24, "eight_bit"), (61, 19, "three_bit"),
         (70, 383, "tensor")]


@pytest.mark.parametrize("n,d,mode", CASES)
def test_matches_fp64_reference(n, d, mode):
    gen = torch.Generator().manual_seed(n * 1000 + d)
    x = 2.0 * torch.randn(n, d, generator=gen) + 0.3
    x[::7, ::5] *= 40.0  # outliers: the slices are relative to each column's maximum
    scale, zero, qmax = _quantizer(mode, d, gen)
    ata, atx, cs = _zeros(d)
    gram_int8.gram_update(x, ata, atx, cs, scale, zero, qmax)
    ra, rx, rc = _ref64(x, scale, zero, qmax)
    assert _rel(ata, ra) < 1e-6
    assert _rel(atx, rx) < 1e-6
    assert _rel(cs, rc) < 1e-6
    assert cs[d].item() == n and ata[d, d].item() == n and atx[d, d].item() == n


def test_exact_on_grid():
    # inputs on the quantization grid, scale a power of two, integer zero point: the reference's
    # fp32 fake quantization is exact, and so is every int8 product: A^T A must equal the fp64
    # product rounded to fp32, element for element
    gen = torch.Generator().manual_seed(5)
    n, d, s = 257, 45, 0.125
    x = torch.randint(-9, 9, (n, d), generator=gen).float() * s
    ata, atx, cs = _zeros(d)
    gram_int8.gram_update(x, ata, atx, cs, s, 8.0, 15)
    ra, rx, rc = _ref64(x, s, 8.0, 15)
    assert torch.equal(ata, ra.float())
    assert torch.equal(atx, rx.float())
    assert torch.equal(cs, rc.float())


@pytest.mark.parametrize("mode", ["tensor", "channel"])
def test_chunks_and_accumulation(mode):
    gen = torch.Generator().manual_seed(11)
    d = 29
    xs = [torch.randn(n, d, generator=gen) - 0.5 for n in (100, 37)]
    scale, zero, qmax = _quantizer(mode, d, gen)
    ata, atx, cs = (torch.randn(d + 1, d + 1, generator=gen), torch.randn(d + 1, d + 1, generator=gen),
                    torch.randn(d + 1, generator=gen))
    want = [t.double() for t in (ata, atx, cs)]
    one = [t.clone() for t in (ata, atx, cs)]
    for x in xs:
        gram_int8.gram_update(x, ata, atx, cs, scale, zero, qmax, chunk_rows=32)
        gram_int8.gram_update(x, *one, scale, zero, qmax)
        for w, r in zip(want, _ref64(x, scale, zero, qmax)):
            w += r
    for got, single, w in zip((ata, atx, cs), one, want):
        assert _rel(got, w) < 1e-6
        # integer partial sums add exactly in fp64: chunking changes nothing but roundings
        assert torch.allclose(got, single, rtol=1e-6, atol=1e-6)


def test_half_precision_input_and_determinism():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(90, 29, generator=gen).to(torch.bfloat16)
    scale, zero, qmax = _quantizer("channel", 29, gen)
    runs = []
    for _ in range(2):
        bufs = _zeros(29)
        gram_int8.gram_update(x, *bufs, scale, zero, qmax)
        runs.append(bufs)
    ra, rx, _ = _ref64(x, scale, zero, qmax)
    assert _rel(runs[0][0], ra) < 1e-6 and _rel(runs[0][1], rx) < 1e-6
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_zero_point_changed_in_place():
    # the integer-zero-point shortcut is cached per tensor version: an in-place change to a
    # fractional zero point must bring the m planes back
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(64, 24, generator=gen) * 3
    s, z = torch.tensor(0.2), torch.tensor(7.0)
    for zv in (7.0, 7.4):
        z.fill_(zv)
        ata, atx, cs = _zeros(24)
        gram_int8.gram_update(x, ata, atx, cs, s, z, 15)
        ra, rx, rc = _ref64(x, s, z, 15)
        assert _rel(ata, ra) < 1e-6 and _rel(atx, rx) < 1e-6 and _rel(cs, rc) < 1e-6


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_poisons_the_statistics(bad):
    x = torch.randn(40, 16)
    x[3, 5] = bad
    ata, atx, cs = _zeros(16)
    gram_int8.gram_update(x, ata, atx, cs, 0.1, 7.5, 15)
    assert not torch.isfinite(ata).all() and not torch.isfinite(atx).all()
    assert torch.isfinite(atx[:5, :5]).all()  # features without a bad entry stay finite


def test_inference_mode_zero_point():
    with torch.inference_mode():
        x, z = torch.randn(30, 8), torch.tensor(3.0)
        ata, atx, cs = _zeros(8)
        gram_int8.prime([z])
        gram_int8.gram_update(x, ata, atx, cs, 0.2, z, 15)
    ra, rx, rc = _ref64(x, 0.2, z, 15)
    assert _rel(ata, ra) < 1e-6 and _rel(atx, rx) < 1e-6


def test_unsupported_cases_go_to_the_triton_kernel():
    gen = torch.Generator().manual_seed(19)
    x = torch.randn(50, 20, generator=gen)
    for scale, zero, qmax in ((None, None, None), (0.01, 300.0, 511)):
        got, want = _zeros(20), _zeros(20)
        gram_int8.gram_update(x, *got, scale, zero, qmax)
        gram.gram_update(x, *want, scale, zero, qmax)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_too_large_products_go_to_the_reference(monkeypatch):
    monkeypatch.setattr(gram_int8, "PRODUCT_BYTES", 1000)
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(40, 24, generator=gen)
    got, want = _zeros(24), _zeros(24)
    gram_int8.gram_update(x, *got, 0.1, 7.5, 15)
    reference.gram_update(x, *want, 0.1, 7.5, 15)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_public_wrapper_uses_int8_when_forced(monkeypatch):
    monkeypatch.setenv("ERQ_KERNELS_BACKEND_GRAM_UPDATE", "int8")
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(33, 20, generator=gen)
    assert erq_kernels.backend_for("gram_update", x.device) == "int8"
    ata, atx, cs = _zeros(20)
    erq_kernels.gram_update(x, ata, atx, cs, 0.1, 2.5, 15)
    ra, rx, rc = _ref64(x, 0.1, 2.5, 15)
    assert _rel(ata, ra) < 1e-6 and _rel(atx, rx) < 1e-6 and _rel(cs, rc) < 1e-6


@pytest.mark.parametrize("qmax", [3, 7, 15, 127, 255])
@pytest.mark.parametrize("d", [24, 768, 5120])
def test_chunk_rows_keep_int32_sums_exact(qmax, d):
    rows = gram_int8.max_chunk_rows(qmax, d, 6)
    k_max = max((qmax + 1) // 2, qmax - (qmax + 1) // 2)
    assert rows % 16 == 0 and rows >= 16
    assert rows * k_max * 128 < 2 ** 31  # the largest |K| times the largest |S| or |K|, summed
    dp = (d + 15) // 16 * 16
    assert rows * (6 * dp + 16) <= gram_int8.WORKSPACE_BYTES


@pytest.mark.parametrize("m,n,k,config", [(17, 45, 100, None), (33, 70, 161, {"SPLIT": 3}),
                                          (64, 130, 48, {"BM": 32, "BN": 32, "BK": 32})])
def test_triton_int8_gemm_is_exact(m, n, k, config):
    gen = torch.Generator().manual_seed(m + n + k)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    want = (a.long() @ b.long().T).int()  # |sum| < 2^31 here
    assert torch.equal(gram_int8.int8_gemm(a, b, config), want)


@pytest.mark.parametrize("mode", ["tensor", "channel"])
def test_run_triton_gemm_and_fresh_outputs_give_the_same_bits(mode):
    # the choices the CUDA-graph backend makes: Triton GEMM, outputs overwritten by the first
    # chunk instead of added to (stale values in them must not leak into the result)
    from erq_kernels import gram_exact
    gen = torch.Generator().manual_seed(8)
    n, d = 150, 37
    x = 2.0 * torch.randn(n, d, generator=gen) + 0.3
    scale, zero, qmax = _quantizer(mode, d, gen)
    want = _zeros(d)
    gram_exact.gram_update(x, *want, scale, zero, qmax, chunk_rows=64)
    got = [t.fill_(float("nan")) for t in _zeros(d)]
    s_t, z_t, stride = gram_exact.quant_params(scale, zero, d, x.device)
    gram_int8.run(x, *got, s_t, z_t, stride, gram_exact.integer_zero(zero), qmax, 64,
                  gemm="triton", fresh=True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("n,d,mode", [(6304, 192, "tensor"), (1001, 383, "channel"),
                                      (8224, 1280, "tensor_int"), (333, 64, "eight_bit"),
                                      (70000, 96, "tensor"), (4000, 200, "bf16")])
def test_cuda_matches_fp64_reference(n, d, mode):
    # compiled kernels and cuBLASLt's int8 GEMM (run with TRITON_INTERPRET=0 on a GPU machine)
    gen = torch.Generator().manual_seed(n + d)
    x = (2.0 * torch.randn(n, d, generator=gen) + 0.3).cuda()
    if mode == "bf16":
        x, mode = x.bfloat16(), "channel"
    scale, zero, qmax = _quantizer(mode, d, gen)
    if isinstance(scale, torch.Tensor):
        scale, zero = scale.cuda(), zero.cuda()
    bufs = [torch.zeros(d + 1, d + 1, device="cuda"), torch.zeros(d + 1, d + 1, device="cuda"),
            torch.zeros(d + 1, device="cuda")]
    gram_int8.gram_update(x, *bufs, scale, zero, qmax)
    x64, s64 = x.float().cpu(), scale.cpu() if isinstance(scale, torch.Tensor) else scale
    z64 = zero.cpu() if isinstance(zero, torch.Tensor) else zero
    for got, want in zip(bufs, _ref64(x64, s64, z64, qmax)):
        assert _rel(got.cpu(), want) < 1e-6


def test_closer_to_the_exact_quantizer_than_fp32_evaluation():
    # the fp32 evaluation (q - z) * s rounds r + z and then subtracts z again; the int8 path
    # computes s (q - z) exactly, so against the quantizer's definition evaluated in fp64 it
    # is off by the final fp32 rounding only
    gen = torch.Generator().manual_seed(29)
    n, d = 1500, 64
    x = torch.randn(n, d, generator=gen) * 1.5 + 0.2
    s, z = torch.tensor(0.61), torch.tensor(5.37)
    s64, z64 = s.double(), z.double()
    exact = (torch.clamp(torch.round(x.double() / s64) + z64, 0, 15) - z64) * s64
    fp32 = reference.fake_quant(x, s, z, 15).double()
    one = torch.ones(n, 1, dtype=torch.float64)

    def gram64(a):
        a = torch.cat([a, one], 1)
        return a.T @ a, a.T @ torch.cat([x.double(), one], 1)

    (ea, ex), (fa, fx) = gram64(exact), gram64(fp32)
    ata, atx, _ = _zeros(d)
    gram_int8.gram_update(x, ata, atx, torch.zeros(d + 1), s, z, 15)
    assert _rel(ata, ea) < 1e-7 and _rel(atx, ex) < 1e-7
    assert _rel(ata, ea) < _rel(fa.float(), ea) and _rel(atx, ex) < _rel(fx.float(), ex)


def test_prime_decides_every_zero_point_at_once():
    zi, zf, zc = torch.tensor(7.0), torch.tensor(7.25), torch.tensor([1.0, 2.0, 3.5])
    gram_int8.prime([zi, zf, zc, None])
    assert [gram_int8._ZF_CACHE[id(z)][2] for z in (zi, zf, zc)] == [True, False, False]
    zf.fill_(8.0)  # changed in place after priming: decided again, not taken from the cache
    assert gram_int8._all_integer(zf) is True
    zi.data.fill_(7.5)  # no version bump through .data: only primed answers are ever reused
    gram_int8.prime(())
    assert gram_int8._all_integer(zi) is False
    zi.data.fill_(7.0)
    x = torch.randn(50, 3)
    for z in (zi, zc):
        ata, atx, cs = _zeros(3)
        gram_int8.gram_update(x, ata, atx, cs, torch.full_like(z, 0.1), z, 15)
        ra, rx, rc = _ref64(x, torch.full_like(z, 0.1), z, 15)
        assert _rel(ata, ra) < 1e-6 and _rel(atx, rx) < 1e-6 and _rel(cs, rc) < 1e-6
