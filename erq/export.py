"""Save / load a quantized model: integer weight codes with their scales, zero points and
column groups, the activation quantizer parameters, and every other (FP) tensor."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

from .modules import ChannelScale, weighted_layers
from .wrap import is_post_gelu_mlp, wrap_model

FORMAT = "erq-quantized-v1"


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte (low nibble first) along the last dimension."""
    flat = codes.flatten()
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)


def _unpack4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    out = torch.stack([packed & 0xF, packed >> 4], dim=1).flatten()
    return out[:numel]


def save_quantized(model, path, model_name: str, extra: dict | None = None,
                   model_kwargs: dict | None = None) -> None:
    """Write ``model`` (wrapped and quantized by :func:`erq.quantize`) to a safetensors file.

    Quantized weights are stored as uint8 codes (two per byte at 4 bits or fewer) with
    per-row scales / zero points per column group; nothing is stored as fake-quantized FP.
    """
    quant = dict(weighted_layers(model))
    tensors = {}
    for name, t in model.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if owner in quant and leaf == "weight":
            continue  # replaced by its codes below
        tensors[name] = t.detach().contiguous().cpu()
    for name, m in quant.items():
        wq = m.weight_quant
        w = m.weight.detach().flatten(1).float()
        codes = wq.codes(w)
        if not torch.equal(wq.dequantize(codes), w):
            raise ValueError(f"layer {name}: weights are not on their quantization grid; "
                             "quantize the model before saving")
        tensors[f"{name}.weight_codes"] = _pack4(codes) if wq.n_bits <= 4 else codes.flatten()
    meta = {"format": FORMAT, "model": model_name, "config": json.dumps(model.erq_config),
            "weight_shapes": json.dumps({n: list(m.weight.shape) for n, m in quant.items()}),
            "model_kwargs": json.dumps(model_kwargs or {}), "extra": json.dumps(extra or {})}
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)  # never leave a half-written file under the final name


def load_quantized(path, device="cpu"):
    """Rebuild the quantized model saved by :func:`save_quantized` (timm builds the
    architecture; every tensor comes from the file). Returns ``(model, metadata)``."""
    import timm
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an erq quantized model (format {meta.get('format')!r})")
    config = json.loads(meta["config"])
    shapes = json.loads(meta["weight_shapes"])
    tensors = load_file(str(path))
    kwargs = json.loads(meta.get("model_kwargs", "{}"))
    model = timm.create_model(meta["model"], pretrained=False, **kwargs).eval()
    wrap_model(model, config["w_bits"], config["a_bits"], dual=config["dual"],
               post_gelu=config.get("post_gelu", "tensor"))
    model.erq_config.update(config)
    for mlp_name, mlp in model.named_modules():  # folded post-GELU scales (reparam.fold_post_gelu)
        inv = tensors.get(f"{mlp_name}.norm.inv")
        if inv is not None and is_post_gelu_mlp(mlp):
            mlp.norm = ChannelScale(torch.empty_like(inv))
    for name, m in weighted_layers(model):
        if name not in shapes:
            raise ValueError(f"{path}: no weights for layer {name}")
        if m.bias is None and f"{name}.bias" in tensors:
            m.bias = torch.nn.Parameter(torch.zeros(m.weight.shape[0]))
    state = {}
    for name, m in weighted_layers(model):
        wq = m.weight_quant
        numel = int(torch.tensor(shapes[name]).prod())
        raw = tensors.pop(f"{name}.weight_codes")
        codes = _unpack4(raw, numel) if wq.n_bits <= 4 else raw
        for buf in ("scale", "zero", "group"):
            getattr(wq, buf).copy_(tensors[f"{name}.weight_quant.{buf}"])
        w = wq.dequantize(codes.reshape(shapes[name][0], -1).long())
        state[f"{name}.weight"] = w.reshape(shapes[name])
    # per-channel quantizers that were reparameterized are per-tensor in the file
    for name, mod in model.named_modules():
        if hasattr(mod, "per_channel") and f"{name}.scale" in tensors:
            if tensors[f"{name}.scale"].dim() == 0 and mod.per_channel:
                mod.set_per_tensor(tensors[f"{name}.scale"], tensors[f"{name}.zero"])
    state.update(tensors)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
    from .modules import set_quant_state
    set_quant_state(model, act=True)
    return model.to(device), meta
