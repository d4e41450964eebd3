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
               "--workers", "0", "--json", str(out), "--save", str(saved), "--post-gelu", "channel",
               "--authors-lambdas", "--lambda-embed-factor", "5"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["post_gelu"] == "channel"  # and below: the saved folded model loads, same top-1
    assert r["lambda_head_aqer"] == 0.1 and r["lambda_embed_factor"] == 5.0  # explicit flag wins
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


def test_bench_table_reports_speed_up_and_growth():
    from erq.bench import table

    def rec(model, n, backend, total):
        return {"model": model, "calib_images": n, "backend": backend, "total_s": total,
                "peak_gb": 1.0, "phases": {"statistics": total / 2}}
    recs = [rec("a", 32, "reference", 4.0), rec("a", 32, "default", 1.0),
            rec("a", 512, "reference", 8.0), rec("a", 512, "default", 2.0),
            rec("b", 32, "reference", 12.0), rec("b", 32, "default", 3.0),
            rec("b", 512, "reference", 24.0), rec("b", 512, "default", 9.0)]
    out = table(recs)
    assert "| b | 512 | default |" in out and "| 9.00 | 1.00 | 2.7x |" in out
    assert "b: 32 img 3.00 s (3.0x), 512 img 9.00 s (4.5x); 512/32 images: 3.0x" in out
    assert "a: 32 img 4.00 s (1.0x), 512 img 8.00 s (1.0x); 512/32 images: 2.0x" in out


def test_bad_activation_quantiles_are_refused(tmp_path, capsys):
    rc = main(["quantize", "--calib", str(tmp_path), "--val", str(tmp_path), "--quiet",
               "--act-quantiles", "0.999", "0.3"])
    assert rc != 0
    captured = capsys.readouterr()
    assert "act_quantiles" in captured.err + captured.out
