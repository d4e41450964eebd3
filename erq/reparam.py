"""Scale reparameterization (RepQ-ViT): per-channel post-LayerNorm quantizers become
per-tensor ones by folding the channel scales into the LayerNorm and the next layer."""
from __future__ import annotations

import torch
from torch import nn

from .modules import ChannelScale
from .wrap import post_gelu_mlps, post_norm_pairs


@torch.no_grad()
def reparameterize(model: nn.Module) -> int:
    """Apply the reparameterization to every calibrated per-channel ``norm -> linear`` pair.

    With per-channel ``(s_c, z_c)``, ``s = mean(s_c)``, ``z = mean(z_c)``, ``r = s_c / s`` and
    ``b_c = (-z_c s_c) / r - (-z s)``: ``gamma <- gamma / r``, ``beta <- beta / r - b``,
    ``W[:, c] <- W[:, c] r_c``, ``bias <- bias + W_new b``; the quantizer becomes ``(s, z)``.
    The FP function is unchanged. The quantized function changes a little: ``z`` is a
    fractional mean (as in RepQ-ViT), and ``round(x / s) + z`` then rounds on multiples of
    ``s`` rather than on the images of the per-channel grids.
    Per-channel post-GELU quantizers (``post_gelu="channel"``) are folded by
    :func:`fold_post_gelu`. Returns the number of layers changed.
    """
    count = 0
    for norm, lin in post_norm_pairs(model):
        iq = getattr(lin, "input_quant", None)
        if iq is None or not iq.per_channel or not bool(iq.calibrated):
            continue
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None:
            raise ValueError(f"reparameterization needs an affine LayerNorm before {lin!r}")
        s_c, z_c = iq.scale.float(), iq.zero.float()
        s, z = s_c.mean(), z_c.mean()
        r = s_c / s
        b = (-z_c * s_c) / r - (-z * s)
        norm.weight.div_(r)
        norm.bias.copy_(norm.bias / r - b)
        lin.weight.mul_(r)
        extra = lin.weight @ b
        if lin.bias is None:
            lin.bias = nn.Parameter(extra)
        else:
            lin.bias.add_(extra)
        iq.set_per_tensor(s, z)
        count += 1
    return count + fold_post_gelu(model)


@torch.no_grad()
def fold_post_gelu(model: nn.Module) -> int:
    """Fold the scales of every calibrated per-channel ``fc2`` input quantizer into ``fc2``.

    GELU has no affine parameters to absorb them, so the ``nn.Identity`` between activation
    and ``fc2`` becomes :class:`~erq.modules.ChannelScale` (``x / s_c``), ``W[:, c] <- W[:, c]
    s_c`` and the quantizer keeps its zero points with unit scales. The FP function is
    unchanged up to the rounding of ``x * (1 / s_c)``; the codes are the per-channel
    quantizer's ``round(x / s_c) + z_c`` up to that rounding; the weights quantized afterwards
    are the folded ones, so an integer kernel needs no per-channel factor inside its dot
    products.
    Returns the number of layers folded.
    """
    count = 0
    for mlp in post_gelu_mlps(model):
        iq = getattr(mlp.fc2, "input_quant", None)
        if iq is None or not iq.per_channel or not bool(iq.calibrated):
            continue
        if isinstance(mlp.norm, ChannelScale):
            raise ValueError(f"{mlp!r}: post-GELU scales are already folded")
        if not isinstance(mlp.norm, nn.Identity):
            raise ValueError(f"cannot fold post-GELU scales: {type(mlp.norm).__name__} between "
                             "the activation and fc2 (only nn.Identity is supported)")
        s = iq.scale.float()
        mlp.norm = ChannelScale((1.0 / s).to(mlp.fc2.weight.dtype))
        mlp.fc2.weight.mul_(s.to(mlp.fc2.weight.dtype))
        iq.scale = torch.ones_like(iq.scale)
        count += 1
    return count
