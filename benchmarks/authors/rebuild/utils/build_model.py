# Written anew for this run (the ERQ repository ships only .pyc for utils/).
# RepQ-ViT style: q@k^T and attn@v become MatMul modules (matmul1, matmul2), scale applied
# after matmul1; timm vit_tiny_patch16_224 loaded from the local safetensors checkpoint;
# attention forward adapted to timm 1.0.31's signature forward(x, attn_mask=None, is_causal=False).
import os
from types import MethodType
import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.models.vision_transformer import Attention

WEIGHTS = os.environ.get(
    'ERQ_WEIGHTS',
    '/work/shared/data/vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors')


def attention_forward(self, x, attn_mask=None, is_causal=False):
    assert attn_mask is None and not is_causal
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)

    # attn = (q @ k.transpose(-2, -1)) * self.scale
    attn = self.matmul1(q, k.transpose(-2, -1)) * self.scale
    attn = attn.softmax(dim=-1)
    attn = self.attn_drop(attn)

    # x = (attn @ v).transpose(1, 2).reshape(B, N, C)
    x = self.matmul2(attn, v).transpose(1, 2).reshape(B, N, self.attn_dim)
    x = self.norm(x)
    x = self.proj(x)
    x = self.proj_drop(x)
    return x


class MatMul(nn.Module):
    def forward(self, A, B):
        return A @ B


def build_model(name):
    assert name == 'vit_tiny_patch16_224', name
    model = timm.create_model(name, pretrained=True,
                              pretrained_cfg_overlay=dict(file=WEIGHTS))

    for _, module in model.named_modules():
        if isinstance(module, Attention):
            assert getattr(module, 'gate', None) is None
            setattr(module, "matmul1", MatMul())
            setattr(module, "matmul2", MatMul())
            module.forward = MethodType(attention_forward, module)

    return model
