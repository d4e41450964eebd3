"""Turn a timm ViT / DeiT / Swin into a fake-quantized model (all quantization off).

Linear and patch-embedding layers get their classes swapped (parameters untouched); the
attention modules get a subclass whose forward runs ``q @ k^T`` and ``probs @ v`` through
:class:`~erq.modules.QuantMatMul` instead of timm's fused kernel. Everything else keeps
timm's own code.
"""
from __future__ import annotations

import torch
from torch import nn

from .modules import QuantConv2d, QuantLinear, attention_matmuls, make_quant_conv, make_quant_linear

try:  # timm's classes; names looked up lazily so that erq imports without timm
    from timm.layers import Attention as _TimmAttention
except Exception:  # pragma: no cover
    _TimmAttention = None
try:
    from timm.models.swin_transformer import WindowAttention as _TimmWindowAttention
except Exception:  # pragma: no cover
    _TimmWindowAttention = None

# Module types whose forward is kept as timm wrote it: containers, norms, activations,
# dropouts and the model classes whose layers are all handled here.
KNOWN_TYPES = {
    "VisionTransformer", "VisionTransformerDistilled", "SwinTransformer", "SwinTransformerStage",
    "SwinTransformerBlock", "PatchMerging", "Block", "Mlp", "PatchEmbed", "LayerNorm", "GELU",
    "Dropout", "Identity", "DropPath", "LayerScale", "Sequential", "ModuleList", "Softmax",
    "ClassifierHead", "NormMlpClassifierHead", "SelectAdaptivePool2d", "Flatten", "Format",
    "AdaptiveAvgPool2d", "FastAdaptiveAvgPool", "Linear", "Conv2d", "Attention", "WindowAttention", "Tanh",
    "ChannelScale",
}
POST_GELU = ("tensor", "channel")  # input quantizer of the layer after the MLP's activation


class _QuantAttentionMixin:
    """Forward of timm's ``Attention`` with quantized matmuls (q and k quantized before the
    ``head_dim ** -0.5`` scale, as in RepQ-ViT)."""

    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.matmul_qk(q, k.transpose(-2, -1)) * self.scale
        if is_causal:
            mask = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1)
            attn = attn.masked_fill(mask, float("-inf"))
        if attn_mask is not None:
            attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else attn + attn_mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self.matmul_pv(attn, v)
        x = x.transpose(1, 2).reshape(B, N, -1)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        return self.proj_drop(x)


class _QuantWindowAttentionMixin:
    """Forward of timm's Swin ``WindowAttention`` with quantized matmuls."""

    def forward(self, x, mask=None):
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = self.matmul_qk(q, k.transpose(-2, -1)) * self.scale
        attn = attn + self._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = self.matmul_pv(attn, v)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


_SWAPPED: dict[type, type] = {}


def _swap_class(m: nn.Module, mixin: type) -> None:
    cls = type(m)
    if cls not in _SWAPPED:
        _SWAPPED[cls] = type(f"Quant{cls.__name__}", (mixin, cls), {})
    m.__class__ = _SWAPPED[cls]


def _attention_kind(m: nn.Module) -> type | None:
    if _TimmWindowAttention is not None and isinstance(m, _TimmWindowAttention):
        return _QuantWindowAttentionMixin
    if _TimmAttention is not None and isinstance(m, _TimmAttention):
        return _QuantAttentionMixin
    return None


def check_supported(model: nn.Module) -> None:
    """Raise ``ValueError`` naming every module type this package does not know."""
    unknown = sorted({type(m).__name__ for m in model.modules()
                      if type(m).__name__ not in KNOWN_TYPES and _attention_kind(m) is None})
    if unknown:
        raise ValueError(
            f"unsupported architecture {type(model).__name__}: module types not known to erq: "
            + ", ".join(unknown) + " (supported: timm vit_*, deit_*, swin_* models)")


def post_norm_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``(LayerNorm, Linear)`` pairs whose linear input is the norm's output per channel:
    ``norm1 -> attn.qkv`` and ``norm2 -> mlp.fc1`` of every transformer block."""
    pairs = []
    for m in model.modules():
        if hasattr(m, "norm1") and hasattr(m, "attn") and hasattr(m.attn, "qkv"):
            pairs.append((m.norm1, m.attn.qkv))
        if hasattr(m, "norm2") and hasattr(m, "mlp") and hasattr(m.mlp, "fc1"):
            pairs.append((m.norm2, m.mlp.fc1))
    return pairs


def is_post_gelu_mlp(m: nn.Module) -> bool:
    """A timm ``Mlp`` (``fc1 -> act -> norm -> fc2``): ``fc2``'s input is post-GELU."""
    return all(hasattr(m, a) for a in ("fc1", "act", "fc2", "norm")) and isinstance(m.fc2, nn.Linear)


def post_gelu_mlps(model: nn.Module) -> list[nn.Module]:
    """Every :func:`is_post_gelu_mlp` module of ``model``."""
    return [m for m in model.modules() if is_post_gelu_mlp(m)]


def wrap_model(model: nn.Module, w_bits: int = 4, a_bits: int = 4, dual: bool = True,
               post_gelu: str = "tensor") -> nn.Module:
    """Wrap ``model`` in place and return it; all quantization starts off.

    ``dual`` turns on dual uniform quantization of ``qkv`` and ``fc1`` weights. ``post_gelu``:
    ``"tensor"`` (the specification) quantizes ``fc2``'s input per tensor; ``"channel"`` per
    channel, to be folded into ``fc2`` by :func:`erq.reparam.reparameterize`, and (with
    ``dual``) quantizes ``fc2``'s weights with two column groups too (beyond the
    specification; ``benchmarks/RESULTS.md`` section 1 has what it does to accuracy).
    """
    if getattr(model, "erq_config", None) is not None:
        raise ValueError("model is already wrapped")
    if post_gelu not in POST_GELU:
        raise ValueError(f"post_gelu must be one of {POST_GELU}, got {post_gelu!r}")
    check_supported(model)
    post_norm = {id(lin) for _, lin in post_norm_pairs(model)}
    post_act = {id(mlp.fc2) for mlp in post_gelu_mlps(model)} if post_gelu == "channel" else set()
    for name, m in list(model.named_modules()):
        kind = _attention_kind(m)
        if kind is not None:
            _swap_class(m, kind)
            m.matmul_qk, m.matmul_pv = attention_matmuls(a_bits)
        elif type(m) is nn.Linear:
            pn = id(m) in post_norm
            pa = id(m) in post_act
            # the weights that absorb per-channel activation scales (reparameterization, the
            # post-GELU fold) get column outliers: dual uniform quantization is for them
            make_quant_linear(m, w_bits, a_bits, per_channel_input=pn or pa, dual=dual and (pn or pa))
        elif type(m) is nn.Conv2d:
            make_quant_conv(m, w_bits)
    model.erq_config = {"w_bits": w_bits, "a_bits": a_bits, "dual": dual, "post_gelu": post_gelu}
    return model
