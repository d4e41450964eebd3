import json

import timm
import torch
from safetensors.torch import save_file

from erq.cli import main

from helpers import write_folder


def test_quantize_then_eval_from_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    ckpt = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(ckpt))
    calib = write_folder(tmp_path / "calib", 6, num_classes=1000, seed=1)
    val = write_folder(tmp_path / "val", 5, num_classes=1000, seed=2)
    out, saved = tmp_path / "r.json", tmp_path / "q.safetensors"
    # depth-2 model: timm's registry name with a matching state dict is refused (strict load)
    rc = main(["quantize", "--model", "vit_tiny_patch16_224", "--checkpoint", str(ckpt), "--calib", str(calib),
               "--val", str(val), "--num-calib", "4", "--quiet", "--workers", "0", "--json", str(out)])
    assert rc != 0  # missing blocks.2..11 in the checkpoint: a clear error, not a silent load
    full = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    save_file(full.state_dict(), str(ckpt))
    rc = main(["quantize", "--model", "vit_tiny_patch16_224", "--checkpoint", str(ckpt), "--calib", str(calib),
               "--val", str(val), "--num-calib", "4", "--seed", "3", "--method", "rtn", "--quiet",
               "--workers", "0", "--json", str(out), "--save", str(saved)])
    assert rc == 0
    r = json.loads(out.read_text())
    for k in ("model", "method", "w_bits", "a_bits", "num_calib", "seed", "num_val", "top1", "top5",
              "fp_top1", "seconds", "device", "versions", "calib_files"):
        assert k in r
    assert r["num_val"] == 5 and len(r["calib_files"]) == 4 and r["seconds"]["quantize"] > 0
    assert "quantized top-1" in capsys.readouterr().out
    rc = main(["eval", "--quantized", str(saved), "--val", str(val), "--quiet", "--workers", "0",
               "--json", str(tmp_path / "e.json")])
    assert rc == 0
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == r["top1"]


def test_missing_calibration_folder_is_a_clear_error(tmp_path, capsys):
    rc = main(["quantize", "--calib", str(tmp_path / "nope"), "--val", str(tmp_path), "--quiet",
               "--checkpoint", str(tmp_path / "missing.safetensors")])
    assert rc != 0
