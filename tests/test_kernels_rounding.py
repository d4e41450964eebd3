"""Rounding refinement kernel (erq_kernels.rounding) against reference.rounding_refine.

Runs under TRITON_INTERPRET=1 on the CPU (tests/conftest.py), tiny shapes.
"""
import pytest
import torch

import erq_kernels
from erq_kernels import reference

rounding = pytest.importorskip("erq_kernels.rounding")


def _problem(b, o, s, seed, rank=None, on_grid=True):
    """Rounding errors of random weights on per-row grids, and a covariance-like proxy C.

    ``b=None`` gives unbatched ``(O, S)`` / ``(S, S)`` tensors. ``rank`` < S makes C nearly
    singular (a few samples plus a tiny ridge). ``on_grid=False`` draws ``e_round`` off the
    floor/ceil candidates (the reference's contract allows any value).
    """
    g = torch.Generator().manual_seed(seed)
    bb = 1 if b is None else b
    w = torch.randn(bb, o, s, generator=g)
    step = 0.2 + 0.3 * torch.rand(bb, o, 1, generator=g)
    e_floor = torch.floor(w / step) * step - w
    e_ceil = e_floor + step
    if on_grid:
        e_round = torch.where(e_floor.abs() <= e_ceil.abs(), e_floor, e_ceil)
    else:
        e_round = e_floor + step * torch.rand(bb, o, s, generator=g)
    n = 64 if rank is None else rank
    mix = torch.eye(s) + 0.4 * torch.randn(bb, s, s, generator=g)
    x = torch.randn(bb, n, s, generator=g) @ mix + 0.5 * torch.randn(bb, 1, s, generator=g)
    mu = x.mean(1, keepdim=True)
    c = (x - mu).transpose(1, 2) @ (x - mu) / n + mu.transpose(1, 2) @ mu
    if rank is not None:
        c = c + 1e-6 * torch.eye(s)
    c = 0.5 * (c + c.transpose(1, 2))
    out = (e_round, e_floor, e_ceil, c)
    return tuple(t.squeeze(0) for t in out) if b is None else out


def _proxy(delta, c):
    d = delta.double()
    return torch.einsum("...os,...st,...ot->...o", d, c.double(), d)


SHAPES = [(None, 7, 1), (1, 20, 3), (3, 13, 17), (None, 40, 48), (3, 33, 48), (1, 9, 5)]


@pytest.mark.parametrize("b,o,s", SHAPES)
@pytest.mark.parametrize("block_o", [None, 1, 8])
def test_same_delta_as_reference(b, o, s, block_o):
    er, ef, ec, c = _problem(b, o, s, seed=o * 100 + s)
    got = rounding.rounding_refine(er, ef, ec, c, 100, block_o=block_o)
    want = reference.rounding_refine(er, ef, ec, c, 100)
    assert got.shape == er.shape and got.dtype == torch.float32
    assert torch.equal(got, want)


def test_problems_are_not_trivial():
    # the comparisons above mean something only if rows take several accepted flips
    er, ef, ec, c = _problem(3, 33, 48, seed=33 * 100 + 48)
    flips = (reference.rounding_refine(er, ef, ec, c, 100) != er).sum(-1)
    assert flips.max() >= 3 and (flips > 0).float().mean() > 0.5


@pytest.mark.parametrize("b,o,s", [(3, 13, 17), (None, 40, 48), (1, 20, 3)])
def test_off_grid_start_and_ill_conditioned(b, o, s):
    for kw in ({"on_grid": False}, {"rank": max(1, s // 3)}):
        er, ef, ec, c = _problem(b, o, s, seed=7 + s, **kw)
        got = rounding.rounding_refine(er, ef, ec, c, 100, block_o=4)
        assert torch.equal(got, reference.rounding_refine(er, ef, ec, c, 100)), kw


@pytest.mark.parametrize("b,o,s", [(3, 33, 48), (None, 40, 17), (1, 20, 3)])
def test_proxy_never_increases_and_stays_on_grid(b, o, s):
    er, ef, ec, c = _problem(b, o, s, seed=11 + o)
    delta = rounding.rounding_refine(er, ef, ec, c, 100)
    before, after = _proxy(er, c), _proxy(delta, c)
    # each accepted flip has a non-positive change in fp32; allow fp32 rounding of the sum
    scale = torch.einsum("...os,...st,...ot->...o", er.double().abs(), c.double().abs(),
                         er.double().abs())
    assert bool((after <= before + 1e-5 * scale).all())
    assert bool((after < before).any())
    assert bool(((delta == er) | (delta == ef) | (delta == ec)).all())


def test_max_steps_respected():
    er, ef, ec, c = _problem(3, 13, 17, seed=5)
    assert torch.equal(rounding.rounding_refine(er, ef, ec, c, 0), er)
    one = rounding.rounding_refine(er, ef, ec, c, 1, block_o=2)
    assert int((one != er).sum(-1).max()) <= 1
    assert int((one != er).sum()) > 0
    assert torch.equal(one, reference.rounding_refine(er, ef, ec, c, 1))
    three = rounding.rounding_refine(er, ef, ec, c, 3)
    assert int((three != er).sum(-1).max()) <= 3
    assert torch.equal(three, reference.rounding_refine(er, ef, ec, c, 3))


def test_public_wrapper_uses_triton_when_forced(monkeypatch):
    monkeypatch.setenv("ERQ_KERNELS_BACKEND", "triton")
    er, ef, ec, c = _problem(1, 20, 17, seed=3)
    assert erq_kernels.backend_for("rounding_refine", er.device) == "triton"
    got = erq_kernels.rounding_refine(er, ef, ec, c)
    assert torch.equal(got, reference.rounding_refine(er, ef, ec, c))


def test_inputs_not_modified():
    er, ef, ec, c = _problem(1, 9, 5, seed=9)
    copies = [t.clone() for t in (er, ef, ec, c)]
    rounding.rounding_refine(er, ef, ec, c)
    assert all(torch.equal(a, b) for a, b in zip(copies, (er, ef, ec, c)))
