"""Scale reparameterization (RepQ-ViT): per-channel post-LayerNorm quantizers become
per-tensor ones by folding the channel scales into the LayerNorm and the next layer."""
from __future__ import annotations

import torch
from torch import nn

from .wrap import post_norm_pairs


@torch.no_grad()
def reparameterize(model: nn.Module) -> int:
    """Apply the reparameterization to every calibrated per-channel ``norm -> linear`` pair.

    With per-channel ``(s_c, z_c)``, ``s = mean(s_c)``, ``z = mean(z_c)``, ``r = s_c / s`` and
    ``b_c = (-z_c s_c) / r - (-z s)``: ``gamma <- gamma / r``, ``beta <- beta / r - b``,
    ``W[:, c] <- W[:, c] r_c``, ``bias <- bias + W_new b``; the quantizer becomes ``(s, z)``.
    The FP function is unchanged. The quantized function changes a little: ``z`` is a
    fractional mean (as in RepQ-ViT), and ``round(x / s) + z`` then rounds on multiples of
    ``s`` rather than on the images of the per-channel grids.
    Returns the number of pairs changed.
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
    return count
