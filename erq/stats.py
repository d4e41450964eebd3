"""Streaming per-layer calibration statistics.

For every linear layer (and the patch embedding, on its im2col rows) one pass accumulates
``A^T A``, ``A^T X~``, the column sums of ``A`` and ``sum ||Y||^2`` (``A = [Q_a(X), 1]``,
``X~ = [X, 1]``, ``Y`` the layer's FP output) through :func:`erq_kernels.gram_update` with
``exact=True``: exact integer products of the quantization codes, which every backend gives to
the same bits (a W4A4 model is chaotic at the ulp level; see :mod:`erq_kernels.gram_exact`).
Nothing else is kept: memory is ``O((D+1)^2)`` per layer, whatever the number of images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

import erq_kernels
from .modules import QuantConv2d


@dataclass
class LayerStats:
    """Sufficient statistics of one layer (``n = D + 1``)."""
    ata: torch.Tensor      # (n, n) A^T A
    atx: torch.Tensor      # (n, n) A^T X~
    colsum: torch.Tensor   # (n,) column sums of A
    tokens: int = 0        # N, rows of A
    yy: torch.Tensor = field(default=None)  # () float64, sum of squared FP outputs

    @classmethod
    def empty(cls, d: int, device) -> "LayerStats":
        z = lambda *s: torch.zeros(*s, dtype=torch.float32, device=device)  # noqa: E731
        return cls(z(d + 1, d + 1), z(d + 1, d + 1), z(d + 1), 0,
                   torch.zeros((), dtype=torch.float64, device=device))


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite: one fused norm over the list and one
    host synchronization (a norm is NaN / Inf where an element is, or where it overflows,
    which the exact per-tensor check that follows then clears)."""
    tensors = [t.detach() for t in tensors if t.numel()]
    if not tensors:
        return True
    if bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class _Stop(Exception):
    pass


def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the rows ``X`` ``(N, D)`` its weight multiplies."""
    if isinstance(module, QuantConv2d):
        return module.unfold(x)
    return x.reshape(-1, x.shape[-1])


def input_quant_params(module: nn.Module):
    iq = getattr(module, "input_quant", None)
    if iq is None:
        return None, None, None
    return iq.scale, iq.zero, iq.qmax


@torch.no_grad()
def collect_stats(model: nn.Module, layers: dict[str, nn.Module], batches, device,
                  stop_after: str | None = None, progress=None) -> dict[str, LayerStats]:
    """Run ``batches`` of images through ``model`` and return the statistics of ``layers``.

    The quantization state of ``model`` is left as the caller set it (all off for the
    authors' independent mode; earlier blocks quantized for sequential mode). With
    ``stop_after`` the forward pass stops once that layer has run.
    """
    stats = {}
    handles = []
    # one host sync for every input quantizer's zero point instead of one per layer
    erq_kernels.gram_prepare([input_quant_params(m)[1] for m in layers.values()])
    for name, m in layers.items():
        d = m.weight[0].numel()
        stats[name] = st = LayerStats.empty(d, device)

        def hook(mod, inputs, output, name=name, st=st):
            x = layer_rows(mod, inputs[0])
            s, z, qmax = input_quant_params(mod)
            erq_kernels.gram_update(x, st.ata, st.atx, st.colsum, s, z, qmax, exact=True)
            st.tokens += x.shape[0]
            st.yy += output.float().pow(2).sum(dtype=torch.float64)  # squares in fp32, sum in fp64
            if name == stop_after:
                raise _Stop
        handles.append(m.register_forward_hook(hook))
    try:
        for images in batches:
            try:
                model(images.to(device, non_blocking=True))
            except _Stop:
                pass
            if progress is not None:
                progress.update(images.shape[0])
    finally:
        for h in handles:
            h.remove()
        erq_kernels.gram_prepare(())
    if all_finite([t for st in stats.values() for t in (st.ata, st.atx)]):
        return stats
    for name, st in stats.items():
        if not bool(torch.isfinite(st.ata).all() & torch.isfinite(st.atx).all()):
            raise FloatingPointError(
                f"layer {name}: calibration statistics contain NaN or Inf "
                "(non-finite activations reached this layer)")
    return stats


_REPORT_CHUNK_BYTES = 1 << 30  # fp64 Gram matrices stacked at once by the report


class OutputError:
    """``||A theta - X~ target||^2 / ||X~ target||^2`` of each layer of a batch, from its
    statistics alone (the per-layer report).

    ``target`` ``(B, O, n)`` (``[W, b]``) must be the weights the statistics were gathered
    with, so that ``sum ||Y||^2`` is its output energy. With ``d = theta - target``, ``H = A^T A``
    and ``G = A^T X~`` the error energy is ``d^T H d + 2 d^T (H - G) target + e0``: the
    ``target`` terms are formed once (fp64: they nearly cancel), each call costs one batched
    fp64 product per chunk of layers (at most ``_REPORT_CHUNK_BYTES`` of fp64 Gram matrices)
    and one host synchronization.
    """

    def __init__(self, stats: list[LayerStats], target: torch.Tensor):
        self.stats, self.target = stats, target
        n = target.shape[-1]
        per = max(1, _REPORT_CHUNK_BYTES // (8 * n * n))
        self.chunks = [slice(i, i + per) for i in range(0, len(stats), per)]
        self.yy = torch.stack([st.yy for st in stats]).double()
        self.v, e0 = [], []
        for c in self.chunks:
            t = target[c].double().transpose(1, 2)
            h_t, g_t = self._gram(c, "ata") @ t, self._gram(c, "atx") @ t
            e0.append((t * h_t).sum((1, 2)) - 2 * (t * g_t).sum((1, 2)))
            self.v.append((h_t - g_t).float())  # small (the input-quantization residual): fp32
        self.e0 = torch.cat(e0) + self.yy

    def _gram(self, c: slice, which: str) -> torch.Tensor:
        return torch.stack([getattr(st, which) for st in self.stats[c]]).double()

    def _ratio(self, energy: torch.Tensor) -> list[float]:
        return (energy.clamp_min(0) / self.yy.clamp_min(1e-30)).tolist()

    def initial(self) -> list[float]:
        """The error of ``target`` itself (input quantization only)."""
        return self._ratio(self.e0)

    def __call__(self, theta: torch.Tensor) -> list[float]:
        energy = []
        for c, v in zip(self.chunks, self.v):
            d = (theta[c].double() - self.target[c].double()).transpose(1, 2)
            energy.append((d * (self._gram(c, "ata") @ d)).sum((1, 2)) + 2 * (d * v).sum((1, 2)))
        return self._ratio(torch.cat(energy) + self.e0)
