"""Small random timm models and image folders for the CPU tests."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

TINY_MODELS = {
    "vit": ("vit_tiny_patch16_224", dict(depth=2, img_size=64)),
    "deit": ("deit_tiny_distilled_patch16_224", dict(depth=2, img_size=64)),
    "swin": ("swin_tiny_patch4_window7_224", dict(depths=(2, 2), num_heads=(1, 2), embed_dim=24)),
}


def tiny_model(kind: str = "vit", seed: int = 0):
    name, kw = TINY_MODELS[kind]
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kw).eval()


def input_size(model) -> int:
    return model.pretrained_cfg.get("input_size", (3, 224, 224))[-1] if not hasattr(model, "patch_embed") \
        else model.patch_embed.img_size[0]


def images(model, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = input_size(model)
    return torch.randn(n, 3, s, s, generator=g)


def write_folder(root: Path, n: int, num_classes: int = 10, size: int = 40, seed: int = 0) -> Path:
    """``root/images/*.png`` with a ``labels.csv``; returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "synset"])
        for i in range(n):
            name = f"img_{i:03d}.png"
            Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)).save(root / "images" / name)
            w.writerow([name, i % num_classes, f"n{i:08d}"])
    return root


def gram_ref64(x, scale, zero, qmax):
    """fp64 ``A^T A``, ``A^T X~`` and ``sum A`` of the reference-quantized (fp32) input."""
    from erq_kernels import reference
    x = x.float()
    xq = x if scale is None else reference.fake_quant(x, scale, zero, qmax)
    one = torch.ones(x.shape[0], 1, dtype=torch.float64)
    a = torch.cat([xq.double(), one], 1)
    xt = torch.cat([x.double(), one], 1)
    return a.T @ a, a.T @ xt, a.sum(0)


def rel_err(got, want) -> float:
    """Normwise relative error of ``got`` against the fp64 ``want``."""
    return ((got.double() - want).norm() / want.norm()).item()


def gram_quantizer(mode: str, d: int, gen: torch.Generator, device="cpu"):
    """``(scale, zero, qmax)`` of one input-quantizer form for the Gram tests (random values
    drawn from ``gen`` on the CPU, tensors moved to ``device``)."""
    if mode == "tensor":  # fractional zero point (after reparameterization): the m planes
        return 0.05 + 0.1 * torch.rand(1, generator=gen).item(), 7.3, 15
    if mode == "tensor_int":  # integer zero point: no m planes
        return torch.tensor(0.0731, device=device), torch.tensor(6.0, device=device), 15
    if mode == "channel":
        return ((0.02 + 0.1 * torch.rand(d, generator=gen)).to(device),
                (15 * torch.rand(d, generator=gen)).to(device), 15)
    if mode == "zero_out_of_range":
        return 0.1, 20.5, 15
    if mode == "eight_bit":
        return 0.02, 127.6, 255
    if mode == "three_bit":
        return 0.4, 3.0, 7
    raise ValueError(mode)
