"""Scale reparameterization (RepQ-ViT): per-channel post-LayerNorm quantizers become
per-tensor ones by folding the channel scales into the LayerNorm and the next layer."""
from __future__ import annotations

import torch
from torch import nn

from .modules import ChannelScale
from .wrap import is_post_gelu_mlp, post_norm_pairs


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
    fold = _foldable(model)  # checked before anything changes
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
    return count + fold_post_gelu(model, fold)


def _foldable(model: nn.Module) -> list[nn.Module]:
    """The Mlps whose per-channel post-GELU quantizer :func:`fold_post_gelu` will fold.
    Raises before anything is changed when one of them cannot be folded."""
    mlps = []
    for name, mlp in model.named_modules():
        if not is_post_gelu_mlp(mlp):
            continue
        iq = getattr(mlp.fc2, "input_quant", None)
        if (iq is None or not iq.per_channel or not bool(iq.calibrated)
                or isinstance(mlp.norm, ChannelScale)):  # nothing to fold, or folded already
            continue
        if not isinstance(mlp.norm, nn.Identity):
            raise ValueError(f"cannot fold the post-GELU scales of {name}: a "
                             f"{type(mlp.norm).__name__} sits between the activation and fc2 "
                             "(only nn.Identity is supported; use post_gelu='tensor' or no reparam)")
        mlps.append(mlp)
    return mlps


@torch.no_grad()
def fold_post_gelu(model: nn.Module, mlps: list[nn.Module] | None = None) -> int:
    """Fold the scales of every calibrated per-channel ``fc2`` input quantizer into ``fc2``.

    As the post-LayerNorm reparameterization does, with ``s = mean(s_c)`` and ``r = s_c / s``:
    GELU has no affine parameters to take ``r``, so the ``nn.Identity`` between activation and
    ``fc2`` becomes :class:`~erq.modules.ChannelScale` (``x / r_c``), ``W[:, c] <- W[:, c] r_c``,
    and the quantizer keeps its per-channel integer zero points with the one scale ``s``. The FP
    function is unchanged up to the rounding of ``x * (1 / r_c)``; the codes are the
    per-channel quantizer's ``round(x / s_c) + z_c`` up to that rounding. The weights are
    quantized afterwards on their folded values, so an integer kernel needs no per-channel
    factor inside its dot products; ``fc2`` keeps its magnitude (``r`` has mean 1), so an
    absolute ridge lambda means what it means for the other layers. Already folded layers are
    skipped. Returns the number of layers folded.
    """
    count = 0
    for mlp in _foldable(model) if mlps is None else mlps:
        iq = mlp.fc2.input_quant
        s_c = iq.scale.float()
        s = s_c.mean()
        r = s_c / s
        mlp.norm = ChannelScale((1.0 / r).to(mlp.fc2.weight.dtype))
        mlp.fc2.weight.mul_(r.to(mlp.fc2.weight.dtype))
        iq.scale = torch.full_like(iq.scale, float(s))
        count += 1
    return count
