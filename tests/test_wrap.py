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


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_post_gelu_per_channel_folds_into_fc2_without_changing_fp_logits(kind):
    from erq.modules import ChannelScale
    from erq.wrap import post_gelu_mlps
    model = wrap_model(tiny_model(kind), 4, 4, post_gelu="channel")
    mlps = post_gelu_mlps(model)
    assert mlps and all(m.fc2.input_quant.per_channel and m.fc2.weight_quant.dual for m in mlps)
    x = images(model, 4)
    _calibrate(model, x)
    scales = [m.fc2.input_quant.scale.clone() for m in mlps]
    w_before = [m.fc2.weight.detach().clone() for m in mlps]
    with torch.no_grad():
        before = model(x)
        assert reparameterize(model) == len(post_norm_pairs(model)) + len(mlps)
        after = model(x)
    assert rel(after, before) < 1e-5
    for m, s, w in zip(mlps, scales, w_before):
        r = s / s.mean()
        assert isinstance(m.norm, ChannelScale)
        assert torch.equal(m.fc2.weight, w * r)  # fc2 carries the relative scales
        assert torch.equal(m.fc2.input_quant.scale, torch.full_like(s, float(s.mean())))
        assert m.fc2.input_quant.per_channel  # zero points stay per channel
    with torch.no_grad():
        assert reparameterize(model) == 0  # a second call changes nothing
        assert rel(model(x), before) < 1e-5


def test_post_gelu_fold_refuses_a_norm_before_changing_anything():
    model = wrap_model(tiny_model("vit"), 4, 4, post_gelu="channel")
    x = images(model, 4)
    _calibrate(model, x)
    mlp = model.blocks[1].mlp
    mlp.norm = torch.nn.LayerNorm(mlp.fc2.in_features)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="blocks.1.mlp.*LayerNorm"):
        reparameterize(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert isinstance(model.blocks[0].mlp.norm, torch.nn.Identity)  # not folded either


def test_post_gelu_quantizer_codes_match_the_unfolded_per_channel_quantizer():
    """Folded: the fc2 input codes are those of the per-channel quantizer (no rounding ties)."""
    from erq.wrap import post_gelu_mlps
    model = wrap_model(tiny_model("vit"), 4, 4, post_gelu="channel")
    x = images(model, 4)
    _calibrate(model, x)
    mlp = post_gelu_mlps(model)[0]
    iq = mlp.fc2.input_quant
    s, z = iq.scale.clone(), iq.zero.clone()
    assert torch.equal(z, z.round())
    steps = torch.randint(-12, 24, (50, s.numel())) + torch.rand(50, s.numel()) * 0.8 - 0.4
    h = steps * s  # at least 0.1 step from a rounding tie
    iq.enabled = True
    expected = iq(h) / s  # per-channel quantizer, in its steps
    assert float((expected - steps.round().clamp(-z, iq.qmax - z)).abs().max()) < 1e-4
    reparameterize(model)
    got = iq(mlp.norm(h)) / iq.scale
    assert torch.allclose(got, got.round(), atol=1e-4)  # one scale: whole steps
    assert torch.allclose(got, expected, atol=1e-4)


def test_unknown_post_gelu_mode_is_refused():
    with pytest.raises(ValueError, match="post_gelu"):
        wrap_model(tiny_model("vit"), post_gelu="token")
