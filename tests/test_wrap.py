import copy

import pytest
import timm
import torch

from erq.modules import QuantConv2d, QuantLinear, activation_quantizers, set_quant_state, weighted_layers
from erq.reparam import reparameterize
from erq.wrap import post_norm_pairs, wrap_model

from helpers import images, tiny_model


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["vit", "deit", "swin"])
def test_wrapped_model_with_quantization_off_matches_timm(kind):
    model = tiny_model(kind)
    x = images(model, 3)
    with torch.no_grad():
        ref = model(x)
        out = wrap_model(copy.deepcopy(model))(x)
    assert rel(out, ref) < 1e-5


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_wrapping_covers_every_layer_and_matmul(kind):
    model = wrap_model(tiny_model(kind))
    n_linear = sum(isinstance(m, QuantLinear) for m in model.modules())
    assert n_linear == sum(1 for m in tiny_model(kind).modules() if type(m) is torch.nn.Linear)
    assert sum(isinstance(m, QuantConv2d) for m in model.modules()) == 1
    attn = [m for m in model.modules() if hasattr(m, "matmul_qk")]
    assert len(attn) == 2 * (1 if kind == "vit" else 2)
    for norm, lin in post_norm_pairs(model):
        assert lin.input_quant.per_channel and lin.weight_quant.dual


def test_unsupported_architecture_names_the_unknown_modules():
    model = timm.create_model("resnet10t", pretrained=False)
    with pytest.raises(ValueError) as exc:
        wrap_model(model)
    msg = str(exc.value)
    assert "ResNet" in msg and "BatchNorm2d" in msg and "BasicBlock" in msg


def test_double_wrapping_is_refused():
    model = wrap_model(tiny_model("vit"))
    with pytest.raises(ValueError, match="already wrapped"):
        wrap_model(model)


def _calibrate(model, x):
    with torch.no_grad():
        for q in activation_quantizers(model):
            q.enabled, q.calibrating = True, True
        model(x)
        set_quant_state(model, act=False)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_reparameterization_leaves_fp_logits_unchanged(kind):
    model = wrap_model(tiny_model(kind), 4, 4)
    x = images(model, 4)
    _calibrate(model, x)
    with torch.no_grad():
        before = model(x)
        assert reparameterize(model) == len(post_norm_pairs(model)) > 0
        after = model(x)
    assert rel(after, before) < 1e-5
    for _, lin in post_norm_pairs(model):
        assert not lin.input_quant.per_channel and lin.input_quant.scale.dim() == 0


def test_weighted_layers_in_execution_order():
    names = [n for n, _ in weighted_layers(wrap_model(tiny_model("vit")))]
    assert names[0] == "patch_embed.proj" and names[-1] == "head"
    assert names[1:5] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
