"""The quantizers of ERQ / RepQ-ViT (``../shared/docs/ERQ.md`` section 1).

All quantizers are *fake* quantizers: they map a float tensor to the float values of its
quantization grid. Calibration picks the clipping range by MSE among fixed quantiles.
"""
from __future__ import annotations

import torch
from torch import nn

from erq_kernels.reference import fake_quant, fake_quant_log2

ACT_QUANTILES = (0.999, 0.9999, 0.99999)
WEIGHT_PERCENTILES = (0.97, 0.98, 0.99, 0.995, 0.9995, 0.9997, 0.9999, 0.99995, 0.99999, 1.0)
_EPS = 1e-8


def uniform_fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int):
    """:func:`erq_kernels.reference.fake_quant` in in-place passes after one division: the same
    operations in the same order, so the same bits, without the temporaries (on the CPU the
    element-wise passes, not the matmuls, dominate a quantized forward).

    The shorter ``clamp(round(x/s), -z, qmax - z) * s`` is not used: for a fractional ``z``
    (after reparameterization) it skips the rounding of ``+ z - z``, and that ulp-level
    difference alone moved the authors' own W3A4 ViT-Ti from 18.6 to 19.8 % top-1
    (benchmarks/RESULTS.md, section 1).
    """
    if x.requires_grad or scale.dim() > 0:
        return fake_quant(x, scale, zero, qmax)
    y = torch.div(x, scale).round_()
    return y.add_(zero).clamp_(0, qmax).sub_(zero).mul_(scale)


def log2_fake_quant(x: torch.Tensor, scale: torch.Tensor, n_bits: int):
    """:func:`erq_kernels.reference.fake_quant_log2` through a table of its ``2^b + 1`` values
    (same level computation, same values, far fewer passes)."""
    if x.requires_grad:
        return fake_quant_log2(x, scale, n_bits)
    n_levels = 2 ** n_bits
    k = torch.arange(n_levels + 1, dtype=x.dtype, device=x.device)
    table = fake_quant_log2(scale * torch.exp2(-k / 2), scale, n_bits)  # value of each level
    table[n_levels:].zero_()  # (an item assignment would copy from the host and synchronize)
    lvl = torch.div(x, scale).log2_().mul_(-2.0).round_().clamp_(0, n_levels)
    return torch.index_select(table, 0, lvl.to(torch.int32).flatten()).view_as(x)


def check_bits(n_bits: int, what: str) -> int:
    if not isinstance(n_bits, int) or not 2 <= n_bits <= 8:
        raise ValueError(f"{what} bit-width must be an integer from 2 to 8, got {n_bits!r}")
    return n_bits


def tail_quantiles(x: torch.Tensor, ps, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantiles ``1 - p`` and ``p`` of ``x`` along ``dim`` for every ``p`` in ``ps``.

    The values of ``torch.quantile(x, q, dim)`` (linear interpolation) for ``q`` the Python
    floats ``1 - p`` and ``p``, bit for bit: ``q`` rounded to ``x``'s dtype, its rank
    ``q (n - 1)`` in float64, ``torch.lerp`` between the two neighbours. (The authors' code calls
    ``torch.quantile``; with the same ranks this package's activation calibration gives their
    quantizers bit for bit, ``benchmarks/RESULTS.md`` section 1.) Computed from the two tails
    with ``topk``, so that tensors of tens of millions of elements cost a fraction of a sort
    (``torch.quantile`` also refuses inputs above 16M elements).

    Returns ``(lo, hi)``, each of shape ``(len(ps), *x.shape without dim)``.
    """
    x = x.movedim(dim, 0)
    n = x.shape[0]
    k, idx, frac = _interp_tables(n, tuple(ps), x.dtype, x.device)
    top = torch.topk(x, k, dim=0, largest=True, sorted=True).values  # top[i] = sorted[n-1-i]
    bot = torch.topk(x, k, dim=0, largest=False, sorted=True).values  # bot[i] = sorted[i]
    a = torch.index_select(torch.cat([bot, top]), 0, idx)  # (4P, ...): lo a, lo b, hi a, hi b
    p = len(ps)
    frac = frac.view(-1, *([1] * (a.dim() - 1)))
    lo = torch.lerp(a[:p], a[p:2 * p], frac[:p])
    hi = torch.lerp(a[2 * p:3 * p], a[3 * p:], frac[p:])
    return lo, hi


_INTERP: dict[tuple, tuple[int, torch.Tensor, torch.Tensor]] = {}


def _interp_tables(n: int, ps: tuple, dtype, device):
    """``k`` (values kept from each tail), gather indices into ``cat([bot, top])`` and weights
    of the linear interpolation for the quantiles ``1 - p`` and ``p`` of ``n`` values, kept on
    the device: shapes repeat across a model's blocks, and a tensor made from a host list
    costs a copy every time."""
    key = (n, ps, dtype, str(device))
    if key not in _INTERP:
        def rank(q):  # torch.quantile's: q in dtype, the product in float64
            return torch.tensor(q, dtype=dtype).item() * (n - 1)
        lo_pos = [rank(1.0 - p) for p in ps]
        hi_pos = [rank(p) for p in ps]
        lo_i = [int(v) for v in lo_pos]
        hi_i = [int(v) for v in hi_pos]
        k = min(n, max([n - i for i in hi_i] + [i + 2 for i in lo_i]))
        idx = (lo_i + [min(i + 1, n - 1) for i in lo_i]  # bot[i] = sorted[i]
               + [k + n - 1 - i for i in hi_i]  # top[j] = sorted[n - 1 - j], after bot
               + [k + n - 1 - min(i + 1, n - 1) for i in hi_i])
        frac = [v - i for v, i in zip(lo_pos + hi_pos, lo_i + hi_i)]
        if len(_INTERP) > 256:
            _INTERP.clear()
        _INTERP[key] = (k, torch.tensor(idx, device=device),
                        torch.tensor(frac, dtype=dtype, device=device))
    return _INTERP[key]


def range_to_params(lo: torch.Tensor, hi: torch.Tensor, n_bits: int):
    """``scale = (hi - lo) / (2^b - 1)``, ``zero = round(-lo / scale)``."""
    scale = ((hi - lo) / (2 ** n_bits - 1)).clamp_min(_EPS)
    zero = torch.round(-lo / scale)
    return scale, zero


_CANDIDATE_ELEMENTS = 1 << 26  # elements of one broadcast pass over several candidates


def least_mse_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n_bits: int,
                    dim: int | None):
    """``(scale, zero)`` of the candidate range ``[lo[i], hi[i]]`` whose fake quantization of
    ``x`` has the least mean squared error: per tensor (``dim=None``) or per slice along the
    other dimension of a 2-D ``x`` (``dim`` = the dimension averaged over). The earliest
    candidate wins ties.

    Several candidates are quantized in one broadcast pass (as many as fit in
    ``_CANDIDATE_ELEMENTS``): a few launches instead of a few per candidate, which is what the
    calibration of a ViT costs on a GPU. Every candidate's error is still its own reduction,
    so the values (and choices) are those of one candidate at a time.
    """
    qmax = 2 ** n_bits - 1
    scale, zero = range_to_params(lo, hi, n_bits)  # (P, ...)
    # candidate parameters broadcast against x with a leading candidate dimension
    shape = ((-1,) + (1,) * x.dim() if dim is None else
             (-1, 1, x.shape[1]) if dim == 0 else (-1, x.shape[0], 1))
    step = max(1, _CANDIDATE_ELEMENTS // max(x.numel(), 1))
    errs = []
    for i in range(0, scale.shape[0], step):
        sq = (fake_quant(x, scale[i:i + step].reshape(shape), zero[i:i + step].reshape(shape), qmax)
              - x).pow_(2)
        errs += [e.mean() if dim is None else e.mean(dim) for e in sq]
    best = torch.argmin(torch.stack(errs), dim=0, keepdim=True)  # first of equal errors
    return scale.gather(0, best).squeeze(0), zero.gather(0, best).squeeze(0)


class UniformQuantizer(nn.Module):
    """Asymmetric uniform activation quantizer, per tensor or per channel (last dimension).

    Calibration (:meth:`calibrate`) tries the ranges ``[q(1-p), q(p)]`` for ``p`` in
    ``self.quantiles`` (:data:`ACT_QUANTILES`, the specification's, unless
    ``QuantConfig.act_quantiles`` says otherwise) and keeps the one of least MSE (per channel
    when per-channel).
    """

    def __init__(self, n_bits: int, per_channel: bool = False, channels: int | None = None):
        super().__init__()
        self.n_bits = check_bits(n_bits, "activation")
        self.per_channel = per_channel
        shape = (channels,) if per_channel else ()
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero", torch.zeros(shape))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.enabled = False
        self.calibrating = False
        self.quantiles = ACT_QUANTILES  # candidate clipping quantiles (QuantConfig.act_quantiles)

    @property
    def qmax(self) -> int:
        return 2 ** self.n_bits - 1

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.per_channel:
            x = x.reshape(-1, x.shape[-1])
            lo, hi = tail_quantiles(x, self.quantiles, dim=0)  # (P, C)
        else:
            lo, hi = tail_quantiles(x.reshape(-1), self.quantiles)  # (P,)
        best = least_mse_range(x, lo, hi, self.n_bits, dim=0 if self.per_channel else None)
        self.scale = best[0].reshape(self.scale.shape).to(self.scale.device)
        self.zero = best[1].reshape(self.zero.shape).to(self.zero.device)
        self.calibrated.fill_(True)

    def set_per_tensor(self, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """Turn into a per-tensor quantizer with the given parameters (reparameterization)."""
        self.per_channel = False
        self.scale = scale.reshape(()).clone()
        self.zero = zero.reshape(()).clone()

    def params(self):
        """``(scale, zero, qmax)`` for the kernels."""
        return self.scale, self.zero, self.qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.calibrate(x)
        if not self.enabled:
            return x
        return uniform_fake_quant(x, self.scale.to(x.dtype), self.zero.to(x.dtype), self.qmax)

    def extra_repr(self) -> str:
        return f"bits={self.n_bits}, per_channel={self.per_channel}"


class LogSqrt2Quantizer(nn.Module):
    """Log-sqrt(2) quantizer for post-Softmax attention probabilities (RepQ-ViT)."""

    def __init__(self, n_bits: int):
        super().__init__()
        self.n_bits = check_bits(n_bits, "activation")
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.enabled = False
        self.calibrating = False
        self.quantiles = ACT_QUANTILES

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        _, hi = tail_quantiles(x, self.quantiles)
        # the table form gives the reference's values in a third of the passes; argmin takes
        # the first of equal errors, without a host synchronization
        errs = torch.stack([(log2_fake_quant(x, s.clamp_min(_EPS), self.n_bits) - x).pow(2).mean()
                            for s in hi])
        best = torch.index_select(hi, 0, torch.argmin(errs).view(1))
        self.scale = best.clamp_min(_EPS).reshape(()).to(self.scale.device)
        self.calibrated.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.calibrate(x)
        if not self.enabled:
            return x
        return log2_fake_quant(x, self.scale.to(x.dtype), self.n_bits)

    def extra_repr(self) -> str:
        return f"bits={self.n_bits}, log-sqrt2"


class WeightQuantizer(nn.Module):
    """Per-output-channel asymmetric uniform weight quantizer, optionally with two column groups.

    Each row ``o`` of a weight ``(O, D)`` has one ``(scale, zero)`` per column group; ``group``
    ``(D,)`` says which group every input column belongs to (all zeros without dual uniform
    quantization). Parameters come from the MSE search over :data:`WEIGHT_PERCENTILES`.
    """

    def __init__(self, n_bits: int, out_features: int, in_features: int, dual: bool = False):
        super().__init__()
        self.n_bits = check_bits(n_bits, "weight")
        self.dual = dual
        groups = 2 if dual else 1
        self.register_buffer("scale", torch.ones(groups, out_features))
        self.register_buffer("zero", torch.zeros(groups, out_features))
        self.register_buffer("group", torch.zeros(in_features, dtype=torch.long))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    @property
    def qmax(self) -> int:
        return 2 ** self.n_bits - 1

    def calibrate(self, w: torch.Tensor) -> None:
        """Choose the column groups (if dual) and the per-row ranges for ``w`` ``(O, D)``."""
        calibrate_weights([self], w[None])

    def maps(self, cols: slice | torch.Tensor | None = None):
        """Per-element ``(scale, zero)`` of shape ``(O, |cols|)``."""
        group = self.group if cols is None else self.group[cols]
        return self.scale[group].T, self.zero[group].T

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes ``clamp(round(w / s) + z, 0, qmax)`` as uint8."""
        s, z = self.maps()
        return torch.clamp(torch.round(w / s) + z, 0, self.qmax).to(torch.uint8)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        s, z = self.maps()
        return (codes.float() - z) * s

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest onto the grid."""
        s, z = self.maps()
        return fake_quant(w, s, z, self.qmax)

    def extra_repr(self) -> str:
        return f"bits={self.n_bits}, dual={self.dual}"


@torch.no_grad()
def calibrate_weights(quantizers: list["WeightQuantizer"], ws: torch.Tensor) -> None:
    """:meth:`WeightQuantizer.calibrate` of every quantizer at once, for layers of one shape.

    ``ws`` ``(B, O, D)``: the weights of the ``B`` layers. The percentile search runs on all
    ``B * O`` rows together (per-layer calls cost one launch series each, which dominates on
    the GPU); every row gets the parameters its own layer's call would give.
    """
    if len(quantizers) != ws.shape[0]:
        raise ValueError(f"{len(quantizers)} quantizers for {ws.shape[0]} weights")
    ws = ws.detach().float()
    b, o, d = ws.shape
    q0 = quantizers[0]
    if any(q.n_bits != q0.n_bits or q.dual != q0.dual or q.scale.shape != q0.scale.shape
           for q in quantizers) or q0.scale.shape[1] != o or q0.group.shape[0] != d:
        raise ValueError("calibrate_weights needs quantizers of one configuration and shape")
    groups, column_sets = None, [None]  # None: every column, one group
    if q0.dual:
        groups = dual_groups(ws)  # (B, D); the same number of columns per group in every layer
        # a stable sort lists each group's columns in index order, group 0 first: no host sync
        order = torch.argsort(groups, dim=-1, stable=True)
        k1 = dual_group_size(o, d)
        column_sets = [order[:, : d - k1], order[:, d - k1:]]
    for g, cols in enumerate(column_sets):
        if cols is not None and cols.shape[1] == 0:
            continue
        sub = ws if cols is None else torch.gather(ws, 2, cols[:, None].expand(b, o, cols.shape[1]))
        s, z = _row_search(sub.reshape(b * o, -1), q0.n_bits)
        for i, q in enumerate(quantizers):
            q.scale[g] = s[i * o:(i + 1) * o].to(q.scale.device)
            q.zero[g] = z[i * o:(i + 1) * o].to(q.zero.device)
    for i, q in enumerate(quantizers):
        if groups is not None:
            q.group = groups[i].to(q.group.device)
        q.calibrated.fill_(True)


def _row_search(w: torch.Tensor, n_bits: int):
    """Per-row MSE search over :data:`WEIGHT_PERCENTILES` for ``w`` ``(O, D)``."""
    ps = torch.tensor(WEIGHT_PERCENTILES, dtype=w.dtype, device=w.device)
    hi = torch.quantile(w, ps, dim=1)  # (P, O)
    lo = torch.quantile(w, 1.0 - ps, dim=1)
    return least_mse_range(w, lo, hi, n_bits, dim=1)


def dual_group_size(o: int, d: int) -> int:
    """Columns in the second (outlier) group of an ``(o, d)`` weight."""
    return max(0, min(o // 20, d - 1))


def dual_groups(w: torch.Tensor) -> torch.Tensor:
    """Column groups of dual uniform quantization for ``w`` ``(..., O, D)`` (0 = main,
    1 = outliers), ``(..., D)`` long.

    Per row, entries above the 99th percentile of its positive values or below the 1st
    percentile of its negative values are marked; the ``O // 20`` columns with most marks
    form group 1. Ties are common (1-12 columns per ViT-Ti layer are picked among equal
    counts) and are broken as in the authors' code, which counts with a ``Counter`` updated
    row by row and keeps first-seen order among equals: the column marked in an earlier row
    first, then the lower index. One difference remains: when fewer than ``O // 20`` columns
    carry a mark at all, the Counter returns fewer, and here group 1 is filled up with unmarked
    columns in index order, because :func:`calibrate_weights` batches layers with groups of
    equal size. It cannot happen on a ViT layer (every row marks about 2 % of its columns).
    """
    o, d = w.shape[-2:]
    nan = torch.tensor(float("nan"), dtype=w.dtype, device=w.device)
    hi = torch.nanquantile(torch.where(w > 0, w, nan), 0.99, dim=-1, keepdim=True)
    lo = torch.nanquantile(torch.where(w < 0, w, nan), 0.01, dim=-1, keepdim=True)
    marks = ((w > hi) & ~hi.isnan()) | ((w < lo) & ~lo.isnan())
    counts = marks.sum(-2)
    k = dual_group_size(o, d)
    group = torch.zeros(counts.shape, dtype=torch.long, device=w.device)
    if k > 0:
        first = torch.where(marks.any(-2), marks.to(torch.uint8).argmax(-2), o)  # first marked row
        seen = torch.argsort(first * d + torch.arange(d, device=w.device), dim=-1)
        by_count = torch.argsort(-counts.gather(-1, seen), dim=-1, stable=True)
        group.scatter_(-1, seen.gather(-1, by_count)[..., :k], 1)
    return group
