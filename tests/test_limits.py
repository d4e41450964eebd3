"""Problems past the Triton kernels' indexing go to the torch reference, not to a kernel whose
32-bit offsets would wrap (erq_kernels/_limits.py). The limits are lowered here so that small
inputs cross them; the routing is what is tested."""
import importlib

import pytest
import torch

from erq_kernels import _limits, reference
from erq_kernels import fakequant as fq

C = importlib.import_module("erq_kernels.cholesky")
R = importlib.import_module("erq_kernels.cholesky_rec")
G = importlib.import_module("erq_kernels.gram")
RO = importlib.import_module("erq_kernels.rounding")


def spd(batch, n):
    a = torch.randn(batch, n, n, dtype=torch.float64)
    return (a @ a.mT / n + torch.eye(n, dtype=torch.float64)).float()


class Spy:
    """Wraps a reference function and counts its calls."""

    def __init__(self, monkeypatch, name):
        self.fn, self.calls = getattr(reference, name), 0
        monkeypatch.setattr(reference, name, self)

    def __call__(self, *a, **k):
        self.calls += 1
        return self.fn(*a, **k)


def test_linalg_fits():
    assert _limits.linalg_fits(36, 5121, 15363)  # the largest shape of issue 4
    assert not _limits.linalg_fits(1, 46400)  # an order whose n^2 passes 2^31
    assert not _limits.linalg_fits(1, 5121, 500_000)  # right-hand sides past it
    assert not _limits.linalg_fits(65536, 10)  # a batch past the grid axis
    t = torch.zeros(4, 3)
    assert _limits.matrix_span(t) == 3 * 3 + 2 and _limits.matrix_span(t.mT) == 11
    assert _limits.matrix_span(torch.zeros(5, 0, 3)) == 2


@pytest.mark.parametrize("K", [C, R], ids=["triton", "triton_rec"])
@pytest.mark.parametrize("limit", ["int32", "grid"])
def test_linalg_past_the_limits_runs_the_reference(monkeypatch, K, limit):
    if limit == "int32":
        monkeypatch.setattr(_limits, "INT32", 40_000)  # (n + pad)^2 for n = 30 passes it
    else:
        monkeypatch.setattr(_limits, "MAX_GRID_YZ", 2)
    g = spd(3, 30)
    b = torch.randn(3, 30, 90)
    cases = [("cholesky", lambda: K.cholesky(g, 0.1)),
             ("ridge_solve", lambda: K.ridge_solve(g, b, 0.1)),
             ("inverse_cholesky_upper", lambda: K.inverse_cholesky_upper(g, 0.1))]
    if K is C:
        lower = torch.linalg.cholesky(g)
        cases += [("solve_triangular", lambda: K.solve_triangular(lower, b)),
                  ("triangular_inverse", lambda: K.triangular_inverse(lower))]
    for name, run in cases:
        spy = Spy(monkeypatch, name)
        got = run()
        monkeypatch.setattr(reference, name, spy.fn)
        assert spy.calls == 1, name
        want = {"cholesky": lambda: reference.cholesky(g, 0.1),
                "ridge_solve": lambda: reference.ridge_solve(g, b, 0.1),
                "inverse_cholesky_upper": lambda: reference.inverse_cholesky_upper(g, 0.1),
                "solve_triangular": lambda: reference.solve_triangular(lower, b),
                "triangular_inverse": lambda: reference.triangular_inverse(lower)}[name]()
        for x, y in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            assert torch.equal(x, y), name


def test_linalg_within_the_limits_runs_triton(monkeypatch):
    spy = Spy(monkeypatch, "ridge_solve")
    R.ridge_solve(spd(2, 30), torch.randn(2, 30, 90), 0.1)
    assert spy.calls == 0


def test_gram_and_rounding_past_the_limits(monkeypatch):
    monkeypatch.setattr(_limits, "INT32", 10_000)
    x = torch.randn(50, 20)
    acc = [torch.zeros(21, 21), torch.zeros(21, 21), torch.zeros(21)]
    spy = Spy(monkeypatch, "gram_update")
    G.gram_update(x, *acc)
    assert spy.calls == 1
    # (D + 1 + pad)^2 fits, 64 splits' workspace (64 x 2 (D + 1)^2) does not
    monkeypatch.setattr(_limits, "INT32", 50_000)
    x = torch.randn(64 * 32, 20)
    G.gram_update(x, *acc)
    assert spy.calls == 1
    G.gram_update(x, *acc, split=64)
    assert spy.calls == 2
    monkeypatch.setattr(_limits, "MAX_GRID_YZ", 1)
    e = torch.rand(2, 4, 8) - 0.5
    c = torch.eye(8).expand(2, 8, 8).contiguous()
    spy = Spy(monkeypatch, "rounding_refine")
    got = RO.rounding_refine(e, e - 0.5, e + 0.5, c)
    assert spy.calls == 1 and got.shape == e.shape


def test_fake_quant_past_the_limits(monkeypatch):
    """The one-pass quantizer falls back to the reference on its fp32 values (no error), and
    the Triton GEMM strategies to the one whose GEMM is torch's."""
    x = torch.randn(40, 24) * 2
    s, z = torch.tensor([0.05]), torch.tensor([7.3])
    quant = ("uniform", s, z, 15)
    want_q = fq.fake_quant_tensor(x, quant)
    w = torch.randn(16, 24)
    want_fused = fq.fake_quant_linear(x, w, None, s, z, 15, strategy="prequant")
    monkeypatch.setattr(_limits, "INT32", 500)
    spy = Spy(monkeypatch, "fake_quant")
    for t in (x, x.mT, x.bfloat16()):
        got = fq.fake_quant_tensor(t, quant)
        assert got.is_contiguous() and got.dtype == t.dtype
        assert torch.equal(got, spy.fn(t.float(), s, z, 15).to(t.dtype))
    assert spy.calls == 3  # every case went to the reference, the flat kernel's inputs too
    monkeypatch.setattr(reference, "fake_quant", spy.fn)
    with pytest.raises(ValueError, match="log2 quantizer supports"):  # still validated
        fq.fake_quant_tensor(x.abs(), ("log2", torch.tensor(1.0), 12))
    log2 = ("log2", torch.tensor(1.0), 4)
    assert torch.equal(fq.fake_quant_tensor(x.abs(), log2),
                       reference.fake_quant_log2(x.abs(), log2[1], 4))
    assert torch.equal(fq.fake_quant_tensor(x, quant), want_q)
    for strategy in ("fused", "prequant_triton"):
        got = fq.fake_quant_linear(x, w, None, s, z, 15, strategy=strategy)
        assert torch.equal(got, want_fused), strategy
    a, b = torch.randn(2, 3, 20, 12), torch.randn(2, 3, 12, 20)
    want = fq.fake_quant_matmul(a, b, quant, quant, strategy="prequant")
    assert torch.equal(fq.fake_quant_matmul(a, b, quant, quant, strategy="fused"), want)


def test_bmm_chunks_the_batch_and_refuses_wide_matrices(monkeypatch):
    """cholesky_rec.bmm, public on its own: a batch past the grid axis runs in chunks, a matrix
    past 32-bit offsets is refused."""
    a, b = torch.randn(5, 70, 40), torch.randn(5, 40, 30)
    want = torch.zeros(5, 70, 30)
    R.bmm(a, b, want)
    monkeypatch.setattr(_limits, "MAX_GRID_YZ", 2)
    got = torch.zeros(5, 70, 30)
    R.bmm(a, b, got)
    assert torch.equal(got, want)
    monkeypatch.setattr(_limits, "INT32", 2000)
    with pytest.raises(ValueError, match="32-bit"):
        R.bmm(a, b, got)
