"""Quantized layers: linear and patch-embedding convolution (class swaps of the torch
modules, so parameter names and values stay those of the timm model) and the attention
matmul with its two operand quantizers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import erq_kernels
from .quantizers import LogSqrt2Quantizer, UniformQuantizer, WeightQuantizer


class QuantLinear(nn.Linear):
    """``nn.Linear`` with an input quantizer and a weight quantizer.

    Made by :func:`make_quant_linear` from an existing ``nn.Linear`` (its class is swapped,
    its parameters are kept). ``weight`` always holds what the forward uses: FP weights before
    weight quantization, their dequantized grid values after.
    """

    input_quant: UniformQuantizer | None
    weight_quant: WeightQuantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        iq = self.input_quant
        if iq is None or iq.calibrating or not iq.enabled or iq.per_channel or not x.is_cuda:
            return F.linear(iq(x) if iq is not None else x, self.weight, self.bias)
        # the bound method: the weight is packed only if the dispatcher picks the int8 backend
        packed = self.int8_weight if x.dtype != torch.float32 and iq.n_bits <= 7 else None
        return erq_kernels.fake_quant_linear(
            x, self.weight, self.bias, iq.scale.to(x.dtype), iq.zero.to(x.dtype), iq.qmax,
            packed=packed)

    @torch.no_grad()
    def int8_weight(self):
        """The weight packed for the int8 backend of ``erq_kernels.fake_quant_linear``
        (:func:`erq_kernels.pack_int8_weight`), or ``None`` where it has no int8 form: the
        weight is not its quantizer's grid values (rounded to its dtype), or a level needs more
        than int8. Rebuilt, with one host synchronization, when the weight or the quantizer's
        tensors change (by version counter; an edit through ``.data`` is not seen)."""
        wq = self.weight_quant
        tensors = (self.weight, wq.scale, wq.zero, wq.group)
        key = tuple((t.data_ptr(), t.dtype, _version(t)) for t in tensors)
        hit = self.__dict__.get("_int8_cache")
        if hit is not None and hit[0] == key and None not in (k[2] for k in key):
            return hit[1]
        w = self.weight.detach()
        w32 = w.flatten(1).float()
        codes = wq.codes(w32)
        packed = None
        if bool(wq.calibrated) and torch.equal(wq.dequantize(codes).to(w.dtype), w.flatten(1)):
            levels = codes.float() - wq.maps()[1]
            if bool((levels.abs() <= 127).all()):
                packed = erq_kernels.pack_int8_weight(levels, wq.scale,
                                                      wq.group if wq.dual else None)
        self.__dict__["_int8_cache"] = (key, packed)
        return packed


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter: never cached
        return None


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` (patch embedding) with a weight quantizer; its input stays FP."""

    input_quant = None
    weight_quant: WeightQuantizer

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """im2col rows ``(N, C*kh*kw)`` in the column order of ``weight.flatten(1)``."""
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding,
                        stride=self.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class ChannelScale(nn.Module):
    """``x * inv`` per channel (last dimension): the relative per-channel scales ``r_c`` of a
    post-GELU input quantizer divided out before ``fc2`` (:func:`erq.reparam.fold_post_gelu`),
    so that the quantizer needs one scale and ``fc2``'s weights carry the ``r_c``.

    It replaces the ``nn.Identity`` that timm's ``Mlp`` keeps between activation and ``fc2``;
    in an integer deployment it is the per-channel multiplier of the activation's requantization.
    """

    def __init__(self, inv: torch.Tensor):
        super().__init__()
        self.register_buffer("inv", inv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.inv.to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.inv.numel()}"


def make_quant_linear(m: nn.Linear, w_bits: int, a_bits: int, *, per_channel_input: bool,
                      dual: bool, quant_input: bool = True) -> QuantLinear:
    m.__class__ = QuantLinear
    m.input_quant = (UniformQuantizer(a_bits, per_channel=per_channel_input,
                                      channels=m.in_features) if quant_input else None)
    m.weight_quant = WeightQuantizer(w_bits, m.out_features, m.in_features, dual=dual)
    return m


def make_quant_conv(m: nn.Conv2d, w_bits: int) -> QuantConv2d:
    if m.groups != 1:
        raise ValueError("grouped convolutions are not supported")
    m.__class__ = QuantConv2d
    m.weight_quant = WeightQuantizer(w_bits, m.out_channels, m.weight[0].numel())
    return m


class QuantMatMul(nn.Module):
    """``a @ b`` with both operands fake-quantized (attention's two matmuls)."""

    def __init__(self, a_quant: nn.Module, b_quant: nn.Module):
        super().__init__()
        self.a_quant = a_quant
        self.b_quant = b_quant

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        qa, qb = self.a_quant, self.b_quant
        if a.is_cuda and qa.enabled and qb.enabled and not (qa.calibrating or qb.calibrating):
            return erq_kernels.fake_quant_matmul(a, b, _spec(qa), _spec(qb))
        return qa(a) @ qb(b)


def _spec(q):
    """The quantizer as :func:`erq_kernels.fake_quant_matmul` takes it."""
    if isinstance(q, LogSqrt2Quantizer):
        return ("log2", q.scale, q.n_bits)
    return ("uniform", q.scale, q.zero, q.qmax)


def attention_matmuls(a_bits: int) -> tuple[QuantMatMul, QuantMatMul]:
    """``q @ k^T`` (both uniform) and ``probs @ v`` (log-sqrt(2) probabilities, uniform v)."""
    qk = QuantMatMul(UniformQuantizer(a_bits), UniformQuantizer(a_bits))
    pv = QuantMatMul(LogSqrt2Quantizer(a_bits), UniformQuantizer(a_bits))
    return qk, pv


def weighted_layers(model: nn.Module):
    """``(name, module)`` of every quantized linear / conv layer, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))]


def activation_quantizers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (UniformQuantizer, LogSqrt2Quantizer))]


def set_quant_state(model: nn.Module, act: bool) -> None:
    """Turn activation fake-quantization on or off everywhere (weights hold their own state)."""
    for q in activation_quantizers(model):
        q.enabled = act
        q.calibrating = False
