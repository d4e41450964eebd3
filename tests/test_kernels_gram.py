"""Quantize-and-accumulate Gram kernel (erq_kernels.gram) against fp64 references.

Runs under TRITON_INTERPRET=1 on the CPU (tests/conftest.py), small awkward shapes.
"""
import pytest
import torch

import erq_kernels
from erq_kernels import reference
from helpers import gram_ref64 as _ref64, rel_err as _rel

gram = pytest.importorskip("erq_kernels.gram")


def _quantizer(mode, d, gen):
    if mode == "none":
        return None, None, None
    if mode == "tensor":
        return 0.05 + 0.1 * torch.rand(1, generator=gen).item(), 7.3, 15
    if mode == "tensor0d":
        return torch.tensor(0.0731), torch.tensor(3.25), 15
    if mode == "zero_out_of_range":  # quantizes 0 to a nonzero level: padding must stay out
        return 0.1, 20.5, 15
    return 0.02 + 0.1 * torch.rand(d, generator=gen), 15 * torch.rand(d, generator=gen), 15


def _buffers(d, gen, zero=False):
    mk = (lambda *s: torch.zeros(*s)) if zero else (lambda *s: torch.randn(*s, generator=gen))
    return mk(d + 1, d + 1), mk(d + 1, d + 1), mk(d + 1)


CASES = [
    (77, 31, "none"), (77, 31, "tensor"), (77, 31, "channel"), (50, 31, "tensor0d"),
    (45, 33, "zero_out_of_range"), (203, 191, "channel"), (131, 191, "none"),
    (70, 383, "tensor"),
]


@pytest.mark.parametrize("n,d,mode", CASES)
def test_matches_fp64_reference(n, d, mode):
    gen = torch.Generator().manual_seed(n * 1000 + d)
    x = 2.0 * torch.randn(n, d, generator=gen) + 0.3
    scale, zero, qmax = _quantizer(mode, d, gen)
    ata, atx, cs = _buffers(d, gen, zero=True)
    gram.gram_update(x, ata, atx, cs, scale, zero, qmax)
    ra, rx, rc = _ref64(x, scale, zero, qmax)
    assert _rel(ata, ra) < 1e-6
    assert _rel(atx, rx) < 1e-6
    assert _rel(cs, rc) < 1e-6
    assert cs[d].item() == n and ata[d, d].item() == n and atx[d, d].item() == n


@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("mode", ["tensor", "channel", "none"])
def test_accumulates_across_calls(split, mode):
    gen = torch.Generator().manual_seed(17)
    d = 45
    xs = [torch.randn(n, d, generator=gen) - 0.5 for n in (100, 37)]
    scale, zero, qmax = _quantizer(mode, d, gen)
    ata, atx, cs = _buffers(d, gen)
    want = [t.double() for t in (ata, atx, cs)]
    for x in xs:
        gram.gram_update(x, ata, atx, cs, scale, zero, qmax, split=split, bk=16)
        for w, r in zip(want, _ref64(x, scale, zero, qmax)):
            w += r
    for got, w in zip((ata, atx, cs), want):
        assert _rel(got, w) < 1e-6


@pytest.mark.parametrize("mode", ["tensor", "tensor0d", "channel", "zero_out_of_range"])
def test_quantization_bit_exact(mode):
    # one row per call: the column sums are then the quantized row itself, with no rounding
    gen = torch.Generator().manual_seed(23)
    d = 37
    scale, zero, qmax = _quantizer(mode, d, gen)
    s = scale if isinstance(scale, torch.Tensor) else torch.tensor(scale)
    for trial in range(4):
        # a half-integer multiple of the scale hits round-half-to-even; the rest random
        k = torch.randint(-30, 30, (d,), generator=gen).float()
        x = (k + 0.5) * s if trial % 2 == 0 else 3.0 * torch.randn(d, generator=gen)
        x = x.reshape(1, d).float()
        ata, atx, cs = _buffers(d, gen, zero=True)
        gram.gram_update(x, ata, atx, cs, scale, zero, qmax)
        q = reference.fake_quant(x, scale, zero, qmax)[0]
        assert torch.equal(cs[:d], q)
        assert torch.equal(ata[d, :d], q) and torch.equal(atx[:d, d], q)
        assert torch.equal(atx[d, :d], x[0])


def test_quantized_ties_many_rows():
    gen = torch.Generator().manual_seed(29)
    n, d, scale = 150, 40, 0.125
    k = torch.randint(-40, 40, (n, d), generator=gen).float()
    x = (k + 0.5) * scale  # every entry a tie, exactly representable
    ata, atx, cs = _buffers(d, gen, zero=True)
    gram.gram_update(x, ata, atx, cs, scale, 8.0, 15)
    ra, rx, rc = _ref64(x, scale, 8.0, 15)
    assert _rel(ata, ra) < 1e-6 and _rel(atx, rx) < 1e-6
    assert torch.equal(cs.double(), rc)  # multiples of 1/8 with small sums add exactly


def test_ill_conditioned_inputs():
    # large common offset and nearly collinear columns: A^T A has condition number ~1e10
    gen = torch.Generator().manual_seed(31)
    n, d = 160, 63
    base = torch.randn(n, 8, generator=gen)
    x = 100.0 + base @ torch.randn(8, d, generator=gen) + 1e-3 * torch.randn(n, d, generator=gen)
    for scale, zero, qmax in ((None, None, None), (0.5, 3.0, 255)):
        ata, atx, cs = _buffers(d, gen, zero=True)
        gram.gram_update(x, ata, atx, cs, scale, zero, qmax, precision="ieee")
        ra, rx, rc = _ref64(x, scale, zero, qmax)
        assert _rel(ata, ra) < 1e-6 and _rel(atx, rx) < 1e-6 and _rel(cs, rc) < 1e-6


def test_half_precision_input_and_determinism():
    gen = torch.Generator().manual_seed(37)
    x = torch.randn(90, 29, generator=gen).to(torch.bfloat16)
    scale, zero, qmax = _quantizer("channel", 29, gen)
    runs = []
    for _ in range(2):
        ata, atx, cs = _buffers(29, gen, zero=True)
        gram.gram_update(x, ata, atx, cs, scale, zero, qmax, split=3, bk=16)
        runs.append((ata, atx, cs))
    ra, rx, rc = _ref64(x, scale, zero, qmax)
    assert _rel(runs[0][0], ra) < 1e-6 and _rel(runs[0][1], rx) < 1e-6
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_public_wrapper_uses_triton_when_forced(monkeypatch):
    monkeypatch.setenv("ERQ_KERNELS_BACKEND", "triton")
    gen = torch.Generator().manual_seed(41)
    x = torch.randn(33, 20, generator=gen)
    assert erq_kernels.backend_for("gram_update", x.device) == "triton"
    ata, atx, cs = _buffers(20, gen, zero=True)
    erq_kernels.gram_update(x, ata, atx, cs, 0.1, 2.0, 15)
    ra, rx, rc = _ref64(x, 0.1, 2.0, 15)
    assert _rel(ata, ra) < 1e-6 and _rel(atx, rx) < 1e-6 and _rel(cs, rc) < 1e-6
