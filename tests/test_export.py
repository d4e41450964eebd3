import pytest
import torch

from erq.export import load_quantized, save_quantized
from erq.pipeline import QuantConfig, quantize

from helpers import TINY_MODELS, images, tiny_model


@pytest.mark.parametrize("w_bits,method,post_gelu", [(4, "rtn", "tensor"), (3, "erq", "tensor"),
                                                     (8, "rtn", "tensor"), (4, "erq", "channel")])
def test_save_load_round_trip_gives_the_same_logits(tmp_path, w_bits, method, post_gelu):
    model = tiny_model("vit")
    x = images(model, 6)
    q, _ = quantize(model, [x], QuantConfig(method=method, w_bits=w_bits, a_bits=4,
                                            post_gelu=post_gelu, progress=False))
    path = tmp_path / "q.safetensors"
    save_quantized(q, path, TINY_MODELS["vit"][0], model_kwargs=TINY_MODELS["vit"][1])
    loaded, meta = load_quantized(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert meta["model"] == TINY_MODELS["vit"][0]
    size = path.stat().st_size
    fp_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert size < fp_bytes  # codes, not FP weights


def test_saving_an_unquantized_model_is_refused(tmp_path):
    from erq.wrap import wrap_model
    model = wrap_model(tiny_model("vit"))
    with pytest.raises(ValueError, match="not on their quantization grid"):
        save_quantized(model, tmp_path / "x.safetensors", "vit_tiny_patch16_224")
    assert not (tmp_path / "x.safetensors").exists()


def test_loading_a_foreign_file_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(2)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(ValueError, match="not an erq quantized model"):
        load_quantized(tmp_path / "f.safetensors")
