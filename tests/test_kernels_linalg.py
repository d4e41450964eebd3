"""Triton linear algebra (erq_kernels/cholesky.py, cholesky_rec.py) against fp64 references.

Runs the kernels through TRITON_INTERPRET=1 on the CPU (set by conftest.py); the module's
functions are called directly, so the Triton backend is what is tested.
"""
import importlib
import math

import pytest
import torch

import erq_kernels
from erq_kernels import _dispatch, reference

C = importlib.import_module("erq_kernels.cholesky")
R = importlib.import_module("erq_kernels.cholesky_rec")
# the two Triton algorithms of the factorization-based ops: blocked (triton), recursive
# (triton_rec)
BOTH = pytest.mark.parametrize("K", [C, R], ids=["triton", "triton_rec"])
F64 = torch.float64


def spd(batch, n, cond=10.0):
    """Random SPD matrices with eigenvalues log-spaced from 1 to 1/cond (fp64)."""
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, dtype=F64))
    ev = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=F64)
    ev = ev[torch.randperm(n)]
    return (q * ev) @ q.mT


def rel(x, ref):
    """Normwise relative error over the whole batch, ``||x - ref||_F / ||ref||_F``."""
    return float((x.to(F64) - ref).norm() / ref.norm())


def residual(L, a):
    """``||L L^T - A|| / ||A||`` in fp64."""
    Ld = L.to(F64)
    return rel(Ld @ Ld.mT, a)


def eye(n):
    return torch.eye(n, dtype=F64)


@pytest.mark.parametrize("n", [17, 33, 65, 193])
@pytest.mark.parametrize("batch", [1, 5])
@BOTH
def test_cholesky_residual(K, n, batch):
    a = spd(batch, n)
    L, info = K.cholesky(a.float())
    assert L.dtype == torch.float32 and L.shape == a.shape
    assert info.dtype == torch.int32 and info.shape == (batch,) and int(info.abs().sum()) == 0
    assert float(L.triu(1).abs().max()) == 0.0
    assert residual(L, a) < 1e-6


def test_cholesky_ill_conditioned_and_block_128(monkeypatch):
    a = spd(1, 150, cond=1e6)
    ref_res = residual(torch.linalg.cholesky(a.float()), a)
    for nb in (64, 128):
        monkeypatch.setattr(C, "CHOL_NB", nb)
        L, info = C.cholesky(a.float())
        assert int(info.abs().sum()) == 0
        res = residual(L, a)
        assert res < 1e-6 and res <= 2 * ref_res + 1e-7, (nb, res, ref_res)


@BOTH
def test_cholesky_lam_scalar_and_per_matrix(K):
    a = spd(5, 33)
    lam_t = torch.rand(5, dtype=F64)
    for lam, lam_ref in ((0.3, 0.3), (lam_t.float(), lam_t[:, None, None])):
        L, info = K.cholesky(a.float(), lam)
        ad = a + lam_ref * eye(33)
        assert int(info.abs().sum()) == 0
        assert residual(L, ad) < 1e-6


@BOTH
def test_cholesky_info_planted_pivot(K):
    """``A = M diag(d) M^T`` with ``M`` unit lower triangular has pivots exactly ``d``, so the
    first negative ``d_p`` is the first failing pivot: ``info = p + 1``."""
    n = 130
    pivots = [None, 0, 40, 64, 129]
    mats = []
    for p in pivots:
        m = torch.eye(n, dtype=F64) + torch.tril(torch.randn(n, n, dtype=F64), -1) * 0.3 / n ** 0.5
        d = torch.rand(n, dtype=F64) + 0.5
        if p is not None:
            d[p] = -1.0
            d[min(p + 3, n - 1)] = -2.0  # later failures must not overwrite the first
        mats.append((m * d) @ m.mT)
    a = torch.stack(mats).float()
    _, info = K.cholesky(a)
    expected = [0 if p is None else p + 1 for p in pivots]
    assert info.tolist() == expected
    assert info.tolist() == torch.linalg.cholesky_ex(a)[1].tolist()
    _, info_r = K.ridge_solve(a[:, :40, :40], torch.randn(len(pivots), 40, 4))
    assert info_r.tolist() == [0 if p is None or p >= 40 else p + 1 for p in pivots]


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("left", [True, False])
def test_solve_triangular(upper, left):
    n, k = 130, 150  # three 64-row blocks (the last of 2 rows), two strips of columns
    L = torch.linalg.cholesky(spd(2, n, cond=1e6))
    t = L.mT if upper else L
    b = torch.randn(2, n, k, dtype=F64) if left else torch.randn(2, k, n, dtype=F64)
    x = C.solve_triangular(t.float(), b.float(), upper=upper, left=left)
    ref = torch.linalg.solve_triangular(t, b, upper=upper, left=left)
    err_torch = rel(torch.linalg.solve_triangular(t.float(), b.float(), upper=upper, left=left),
                    ref)
    assert x.shape == b.shape
    assert rel(x, ref) <= 2 * err_torch, (rel(x, ref), err_torch)


def test_solve_triangular_unit_and_broadcast():
    n = 33
    t = torch.tril(torch.randn(n, n, dtype=F64), -1) / n ** 0.5 + 5 * eye(n)  # diagonal ignored
    b = torch.randn(3, n, 7, dtype=F64)
    x = C.solve_triangular(t.float(), b.float(), unitriangular=True)
    ref = torch.linalg.solve_triangular(t, b, upper=False, unitriangular=True)
    err_torch = rel(torch.linalg.solve_triangular(t.float(), b.float(), upper=False,
                                                  unitriangular=True), ref)
    assert rel(x, ref) <= 2 * err_torch + 1e-7


@pytest.mark.parametrize("upper", [False, True])
def test_triangular_inverse(upper):
    n = 97
    L = torch.linalg.cholesky(spd(3, n, cond=1e6))
    t = L.mT if upper else L
    x = C.triangular_inverse(t.float(), upper=upper)
    ref = torch.linalg.inv(t)
    err_torch = rel(reference.triangular_inverse(t.float(), upper=upper), ref)
    assert rel(x, ref) <= 2 * err_torch
    zero = x.tril(-1) if upper else x.triu(1)
    assert float(zero.abs().max()) == 0.0


@pytest.mark.parametrize("n,batch,cond,lam", [
    (17, 1, 1e6, None), (65, 5, 1e6, 0.0), (193, 1, 1e6, "per-matrix"), (33, 5, 10.0, 0.5)])
@BOTH
def test_ridge_solve(K, n, batch, cond, lam):
    g = spd(batch, n, cond)
    b = torch.randn(batch, n, 3 * n, dtype=F64)
    if lam == "per-matrix":
        lam_t = torch.rand(batch, dtype=F64) * 1e-5
        lam_k, lam_ref = lam_t.float(), lam_t[:, None, None]
    else:
        lam_k, lam_ref = lam, (lam or 0.0)
    x, info = K.ridge_solve(g.float(), b.float(), lam_k)
    ref = torch.linalg.solve(g + lam_ref * eye(n), b)
    x_torch, _ = reference.ridge_solve(g.float(), b.float(), lam_k)
    assert int(info.abs().sum()) == 0 and x.shape == b.shape
    assert rel(x, ref) <= 2 * rel(x_torch, ref), (rel(x, ref), rel(x_torch, ref))


@pytest.mark.parametrize("n,batch,cond,lam", [(65, 5, 1e6, 0.0), (193, 1, 1e3, "per-matrix")])
@BOTH
def test_inverse_cholesky_upper(K, n, batch, cond, lam):
    g = spd(batch, n, cond)
    if lam == "per-matrix":
        lam_t = torch.rand(batch, dtype=F64) * 0.1
        lam_k, lam_ref = lam_t.float(), lam_t[:, None, None]
    else:
        lam_k, lam_ref = lam, lam
    h = g + lam_ref * eye(n)
    u, info = K.inverse_cholesky_upper(g.float(), lam_k)
    assert int(info.abs().sum()) == 0
    assert float(u.tril(-1).abs().max()) == 0.0
    u_ref, _ = reference.inverse_cholesky_upper(h, None)
    u_torch, _ = reference.inverse_cholesky_upper(g.float(), lam_k)
    assert rel(u, u_ref) <= 2 * rel(u_torch, u_ref), (rel(u, u_ref), rel(u_torch, u_ref))
    hinv = torch.linalg.inv(h)
    ud = u.to(F64)
    assert rel(ud.mT @ ud, hinv) <= 2 * rel(u_torch.to(F64).mT @ u_torch.to(F64), hinv) + 1e-7
    for t0 in (n // 3, n - 20):  # trailing blocks: (H_TT)^-1 = U_TT^T U_TT
        ut = ud[..., t0:, t0:]
        assert rel(ut.mT @ ut, torch.linalg.inv(h[..., t0:, t0:])) < 1e-4 * cond / 1e3


def test_dispatch_forced_triton(monkeypatch):
    monkeypatch.setenv("ERQ_KERNELS_BACKEND", "triton")
    a = spd(2, 20).float()
    for op in ("cholesky", "solve_triangular", "triangular_inverse", "ridge_solve",
               "inverse_cholesky_upper"):
        assert erq_kernels.backend_for(op, a.device) == "triton"
    L, info = erq_kernels.cholesky(a, 0.1)
    Lr, _ = reference.cholesky(a.to(F64), 0.1)
    assert rel(L, Lr) < 1e-6 and int(info.abs().sum()) == 0


def test_torch_loop_backends_match_reference():
    g = spd(3, 20).float()
    b = torch.randn(3, 20, 6)
    impl = _dispatch._IMPLS
    for op, args in (("cholesky", (g, 0.2)), ("ridge_solve", (g, b, 0.2)),
                     ("inverse_cholesky_upper", (g, 0.2))):
        out, info = impl[op]["torch_loop"](*args)
        ref, info_r = impl[op]["reference"](*args)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6) and torch.equal(info, info_r)


def test_recursive_cholesky_ill_conditioned_and_forced_backend(monkeypatch):
    """n = 385 (D + 1 of DeiT-S): seven leaves, three levels of recursion; cond 1e6."""
    a = spd(2, 385, cond=1e6)
    ref_res = residual(torch.linalg.cholesky(a.float()), a)
    monkeypatch.setenv("ERQ_KERNELS_BACKEND", "triton_rec")
    assert erq_kernels.backend_for("cholesky", a.device) == "triton_rec"
    L, info = erq_kernels.cholesky(a.float())
    assert int(info.abs().sum()) == 0 and float(L.triu(1).abs().max()) == 0.0
    res = residual(L, a)
    assert res < 1e-6 and res <= 2 * ref_res + 1e-7, (res, ref_res)


@pytest.mark.parametrize("strip", [1, 2])
def test_recursive_panels_halved_down_to_strips(monkeypatch, strip):
    """Panels wider than STRIP_BLOCKS leaves are halved before the strip kernel (with the
    default 4 only from n > 512): the same factor to rounding, and torch's residual at cond 1e6."""
    a = spd(2, 385)
    L0, _ = R.cholesky(a.float())
    ill = spd(2, 385, cond=1e6)
    ref_res = residual(torch.linalg.cholesky(ill.float()), ill)
    monkeypatch.setattr(R, "STRIP_BLOCKS", strip)
    L, info = R.cholesky(a.float())
    assert int(info.abs().sum()) == 0 and rel(L, L0.to(F64)) < 1e-5
    L, info = R.cholesky(ill.float())
    res = residual(L, ill)
    assert int(info.abs().sum()) == 0 and res <= 2 * ref_res + 1e-7, (res, ref_res)


@pytest.mark.parametrize("op", ["cholesky", "ridge_solve", "inverse_cholesky_upper"])
@pytest.mark.parametrize("refine", [False, True])
def test_recursive_panel_methods(monkeypatch, op, refine):
    """Both panel methods of cholesky_rec.REFINE (recursive strips, or the explicit inverse
    with one step of refinement) within 2x torch's fp32 error at cond 1e6."""
    monkeypatch.setitem(R.REFINE, op, refine)
    g = spd(2, 193, cond=1e6)
    if op == "cholesky":
        L, _ = R.cholesky(g.float())
        got, want = residual(L, g), residual(torch.linalg.cholesky(g.float()), g)
    elif op == "ridge_solve":
        b = torch.randn(2, 193, 579, dtype=F64)
        ref = torch.linalg.solve(g, b)
        got = rel(R.ridge_solve(g.float(), b.float(), 0.0)[0], ref)
        want = rel(reference.ridge_solve(g.float(), b.float(), 0.0)[0], ref)
    else:
        u_ref, _ = reference.inverse_cholesky_upper(g, None)
        got = rel(R.inverse_cholesky_upper(g.float(), 0.0)[0], u_ref)
        want = rel(reference.inverse_cholesky_upper(g.float(), 0.0)[0], u_ref)
    assert got <= 2 * want + 1e-7, (got, want)


def test_recursive_ridge_reads_b_with_its_strides():
    """The ridge solve of triton_rec reads B where it is (no aligned copy): B as a transposed
    view, with every other column, and with batch dimensions of a permuted tensor gives the
    result of a contiguous B, not an alias of B; ``solve_with_inverse`` gives the same with
    and without its copy."""
    n = 65
    g = spd(3, n, cond=1e3).float()
    base = torch.randn(3, 2 * 3 * n, n)
    views = {"transposed": base[:, :3 * n].mT, "strided": base.mT[..., ::2],
             "permuted": torch.randn(n, 3, 3 * n).transpose(0, 1)}
    for name, b in views.items():
        x, info = R.ridge_solve(g, b, 0.01)
        want, _ = R.ridge_solve(g, b.contiguous(), 0.01)
        assert torch.equal(x, want), name
        ptr = b.untyped_storage().data_ptr()
        assert x.is_contiguous() and x.untyped_storage().data_ptr() != ptr
        assert info.tolist() == [0, 0, 0]
    b = views["transposed"]
    linv = torch.zeros(3, 128, 128)
    linv[:, :n, :n] = torch.linalg.inv(torch.linalg.cholesky(g.double())).float().tril()
    ref = linv[:, :n, :n].double().mT @ (linv[:, :n, :n].double() @ b.double())
    for copy_b in (False, True):
        got = R.solve_with_inverse(linv[:, :n, :n], b, copy_b=copy_b)
        assert rel(got, ref) < 1e-6, (copy_b, rel(got, ref))


@BOTH
def test_empty_systems(K):
    """n = 0 (with a batch) and batch 0: empty results of the right shapes, info all zero."""
    for gs, bs in (((2, 0, 0), (2, 0, 5)), ((0, 4, 4), (0, 4, 3))):
        x, info = K.ridge_solve(torch.zeros(gs), torch.zeros(bs), 0.1)
        assert x.shape == bs and info.shape == gs[:1] and int(info.abs().sum()) == 0
        for fn in (K.cholesky, K.inverse_cholesky_upper):
            y, info = fn(torch.zeros(gs), 0.1)
            assert y.shape == gs and info.shape == gs[:1] and int(info.abs().sum()) == 0


@pytest.mark.parametrize("quarters", [True, False])
@pytest.mark.parametrize("n", [65, 150, 193])
def test_recursive_leaf_forms(monkeypatch, n, quarters):
    """Both leaf kernels of cholesky_rec (LEAF_QUARTERS: four 16-column tiles, the default;
    or the two-tile kernel of cholesky.py): factor and inverse at torch's accuracy at cond 1e6,
    with the identity padding of n = 64k + 1 and of n = 150, and the first failing pivot where
    cuSOLVER reports it."""
    monkeypatch.setattr(R, "LEAF_QUARTERS", quarters)
    g = spd(2, n, cond=1e6)
    L, info = R.cholesky(g.float())
    assert int(info.abs().sum()) == 0 and float(L.triu(1).abs().max()) == 0.0
    want = residual(torch.linalg.cholesky(g.float()), g)
    assert residual(L, g) <= 2 * want + 1e-7, (residual(L, g), want)
    u_ref, _ = reference.inverse_cholesky_upper(g, None)
    got = rel(R.inverse_cholesky_upper(g.float(), 0.0)[0], u_ref)
    want = rel(reference.inverse_cholesky_upper(g.float(), 0.0)[0], u_ref)
    assert got <= 2 * want + 1e-7, (got, want)
    bad = spd(3, n)
    bad[1, n - 20, n - 20] = -1.0  # in the last leaf's second half for n = 150 and 193
    bad[2, 3, 3] = 0.0
    _, info = R.cholesky(bad.float())
    assert info.tolist() == torch.linalg.cholesky_ex(bad.float())[1].tolist()


def _triangle_used(a, b, tri):
    """``(a, b)`` with the half of the triangular operand named by ``tri`` zeroed."""
    fix = {R.K_A_LOWER: (torch.tril, None), R.K_A_UPPER: (torch.triu, None),
           R.K_B_LOWER: (None, torch.tril), R.K_B_UPPER: (None, torch.triu)}.get(tri, (None, None))
    return tuple(t if f is None else f(t) for t, f in zip((a, b), fix))


@pytest.mark.parametrize("tri", [R.K_FULL, R.K_A_LOWER, R.K_A_UPPER, R.K_B_LOWER, R.K_B_UPPER])
def test_bmm_triangles_odd_shapes(tri):
    """The GEMM of the recursive path on shapes that are not multiples of its tiles, reading
    only the named triangle of one operand (the other half holds garbage it must ignore)."""
    m, k, n = (130, 130, 70) if tri in (R.K_A_LOWER, R.K_A_UPPER) else (70, 130, 130)
    a = torch.randn(2, m, k, dtype=F64)
    b = torch.randn(2, k, n, dtype=F64)
    a_used, b_used = _triangle_used(a, b, tri)
    c0 = torch.randn(2, m, n, dtype=F64)
    out = c0.float().clone()
    R.bmm(a.float(), b.float().mT.contiguous().mT, out, alpha=-0.5, accumulate=True, tri=tri)
    ref = c0 - 0.5 * a_used @ b_used
    assert rel(out, ref) < 1e-6


@pytest.mark.parametrize("tri", [R.K_A_LOWER, R.K_A_UPPER, R.K_B_LOWER, R.K_B_UPPER])
def test_bmm_zero_half_skips_without_masking(tri):
    """With the other half of the triangular operand zero, skipping its K range without masking
    the diagonal tiles (zero_half) gives bit for bit the masked product."""
    m, k, n = (130, 130, 70) if tri in (R.K_A_LOWER, R.K_A_UPPER) else (70, 130, 130)
    a = torch.randn(2, m, k)
    a, b = _triangle_used(a, torch.randn(2, k, n), tri)
    b = b.mT.contiguous().mT
    masked = torch.zeros(2, m, n)
    R.bmm(a, b, masked, tri=tri)
    skipped = torch.zeros(2, m, n)
    R.bmm(a, b, skipped, tri=tri, zero_half=True)
    assert torch.equal(masked, skipped)
    assert rel(skipped, a.to(F64) @ b.to(F64)) < 1e-6


def test_bmm_lower_out_leaves_upper_tiles():
    a = torch.randn(1, 200, 40)
    out = torch.full((1, 200, 200), 7.0)
    R.bmm(a, a.mT, out, lower_out=True)
    ref = (a.to(F64) @ a.to(F64).mT)[0]
    full = out[0].to(F64)
    assert rel(full.tril(), ref.tril()) < 1e-6
    # tiles wholly above the diagonal (BM = 128 rows) are untouched
    assert bool((out[0, :128, 128:] == 7.0).all())


GRAPHED_OPS = ["cholesky", "ridge_solve", "inverse_cholesky_upper"]


def _graph_calls(op, device):
    g = spd(3, 70, 1e2).float().to(device)
    g2 = spd(3, 70, 1e3).float().to(device)
    b = torch.randn(3, 70, 20).to(device)
    lam_t = torch.rand(3).to(device)
    calls = [(g, 0.1), (g, 0.1), (g2, 0.3), (g, lam_t), (g2, 2 * lam_t), (g2, None),
             (g, lam_t)]
    return [(x, b, lam) if op == "ridge_solve" else (x, lam) for x, lam in calls]


@pytest.mark.parametrize("op", GRAPHED_OPS)
def test_graph_backends_registered_and_eager_on_cpu(op):
    """On CPU tensors the *_graph backends run their eager backend (no graph), same bits."""
    impls = erq_kernels._dispatch._IMPLS[op]
    for base in ("triton", "triton_rec"):
        for args in _graph_calls(op, "cpu")[:2]:
            want, got = impls[base](*args), impls[base + "_graph"](*args)
            assert all(torch.equal(x, y) for x, y in zip(got, want))


def test_graph_key_follows_the_launch_settings(monkeypatch):
    """A graph keeps the kernels it captured, so the settings the kernels read are in its key."""
    from erq_kernels import linalg_graph
    before = linalg_graph._settings()
    monkeypatch.setattr(R, "SOLVE_BIG", (64, 64, 32, 4, 3))
    assert linalg_graph._settings() != before


@pytest.mark.parametrize("op", GRAPHED_OPS)
def test_graph_backends_take_the_reference_call_forms(op):
    """lam optional and by keyword, as in the reference (CPU: the eager path)."""
    impls = erq_kernels._dispatch._IMPLS[op]
    g = spd(2, 33).float()
    args = (g, torch.randn(2, 33, 5)) if op == "ridge_solve" else (g,)
    for fn in (impls["triton_graph"], impls["triton_rec_graph"]):
        want = impls["reference"](*args, lam=None)
        for got in (fn(*args), fn(*args, lam=None)):
            assert all(float((x.double() - y.double()).abs().max()) < 1e-3
                       for x, y in zip(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("op", GRAPHED_OPS)
@pytest.mark.parametrize("shape", [(70, 70), (2, 2, 70, 70)])
def test_graph_backends_odd_batch_shapes_on_cuda(op, shape):
    """No batch dimension and two of them, lambda of the batch shape, B not contiguous: the
    eager backend's bits at the capture and at a replay with new inputs."""
    impls = erq_kernels._dispatch._IMPLS[op]
    bshape, n = shape[:-2], shape[-1]
    for base in ("triton", "triton_rec"):
        for step in range(3):
            g = spd(max(1, math.prod(bshape)), n, 10.0 ** (step + 1)).float().reshape(shape).cuda()
            lam = torch.rand(bshape).cuda()  # first call eager, second captured, third replayed
            b = torch.randn(*bshape, 9, n).cuda().mT
            args = (g, b, lam) if op == "ridge_solve" else (g, lam)
            want, got = impls[base](*args), impls[base + "_graph"](*args)
            assert all(torch.equal(x, y) for x, y in zip(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("op", GRAPHED_OPS)
@pytest.mark.parametrize("base", ["triton", "triton_rec"])
def test_graph_backends_give_eager_bits_on_cuda(op, base):
    """First call eager, second captured, later ones replayed with new inputs and lambdas: the
    eager backend's bits every time."""
    from erq_kernels import linalg_graph
    linalg_graph.clear()
    impls = erq_kernels._dispatch._IMPLS[op]
    for args in _graph_calls(op, "cuda"):
        want, got = impls[base](*args), impls[base + "_graph"](*args)
        assert all(torch.equal(x, y) for x, y in zip(got, want))
    assert len(linalg_graph._GRAPHS) == 2  # scalar and per-matrix lambda
