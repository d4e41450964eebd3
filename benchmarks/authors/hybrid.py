"""This package's Aqer and Wqer, end to end, from the authors' activation calibration (issue 3:
where does this package's seed-0 figure part from the authors'?).

The authors' code, run with ``dump_hooks.py`` (``CHANGES_TO_AUTHORS_CODE.md``), leaves its state
right after the scale reparameterization in the dump: LayerNorms, every layer's weights, every
activation quantizer. This script loads that state into this package's quantized ViT instead of
calibrating and reparameterizing, then runs this package's pipeline from the statistics on
(independent mode, the 32 calibration images of ``--seed``), and evaluates on the val images.
The same top-1 as the authors' means the two pipelines agree from Aqer on, and the difference
of this package's own run lies in the activation calibration.

    python benchmarks/authors/hybrid.py --dump dump_w4a4_s0.pt [--authors-lambdas]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import erq_kernels
from erq.cli import load_model
from erq.data import DEFAULT_DATA, ImageFolderDataset, make_loader, model_transform, \
    select_calibration
from erq.evaluate import evaluate
from erq.modules import set_quant_state, weighted_layers
from erq.pipeline import QuantConfig, Report, _reduce
from erq.stats import collect_stats
from erq.wrap import wrap_model


@torch.no_grad()
def load_authors_state(model, dump: dict, stage: str = "after_reparam") -> None:
    """The authors' LayerNorms, weights and activation quantizers into a wrapped model: the
    weights right after their reparameterization (``stage="after_reparam"``) or their final
    dequantized ones (``"final"``, what ``stagewise.py`` evaluates)."""
    for n, v in dump["ln"].items():
        mod = model.get_submodule(n)
        mod.weight.copy_(v["weight"])
        mod.bias.copy_(v["bias"])
    for n, m in weighted_layers(model):
        w = dump["w_after_reparam"][n] if stage == "after_reparam" else \
            {"weight": dump["final"][n]["weight_dequant"], "bias": dump["final"][n]["bias"]}
        m.weight.copy_(w["weight"].reshape(m.weight.shape))
        if m.bias is not None:
            m.bias.copy_(w["bias"])
        if m.input_quant is not None:
            q = dump["act_quant"][n]
            m.input_quant.set_per_tensor(q["delta"].float(), q["zero_point"].float())
    for i, blk in enumerate(model.blocks):
        qk = dump["matmul_quant"][f"blocks.{i}.attn.matmul1"]
        pv = dump["matmul_quant"][f"blocks.{i}.attn.matmul2"]
        for mine, theirs in ((blk.attn.matmul_qk.a_quant, qk["A"]),
                             (blk.attn.matmul_qk.b_quant, qk["B"]),
                             (blk.attn.matmul_pv.b_quant, pv["B"])):
            mine.set_per_tensor(theirs["delta"].float(), theirs["zero_point"].float())
        blk.attn.matmul_pv.a_quant.scale = pv["A"]["delta"].float().reshape(())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--authors-lambdas", action="store_true",
                    help="head Aqer lambda 0.1 and patch-embedding Wqer lambda x10, as their code")
    args = ap.parse_args(argv)
    dump = torch.load(args.dump, weights_only=False)
    wb = next(iter(dump["wquant"].values()))["n_bits"]
    ab = next(iter(dump["act_quant"].values()))["n_bits"]
    config = QuantConfig(method="erq", w_bits=wb, a_bits=ab, lam=1000.0,
                         lam_head_aqer=0.1 if args.authors_lambdas else None,
                         lam_embed_factor=10.0 if args.authors_lambdas else 1.0).validate()
    model = load_model("vit_tiny_patch16_224", None)
    wrap_model(model, wb, ab, dual=True, post_gelu="tensor")
    load_authors_state(model, dump)
    set_quant_state(model, act=False)  # independent mode: statistics from the FP forward
    data = Path(args.data)
    tf = model_transform(model)
    calib = ImageFolderDataset(data / "imagenet-calib", tf, num_classes=model.num_classes,
                               files=select_calibration(data / "imagenet-calib", 32, args.seed))
    images = torch.stack([calib[i][0] for i in range(len(calib))])
    layers = dict(weighted_layers(model))
    report = Report(config={})
    pins = {op: "reference" for op in erq_kernels.LINALG_OPS}
    with erq_kernels.prefer(pins):
        stats = collect_stats(model, layers, [images], torch.device("cpu"))
        _reduce(model, layers, list(layers), stats, config, report, torch.device("cpu"))
    set_quant_state(model, act=True)
    val = make_loader(ImageFolderDataset(data / "imagenet-val", tf,
                                         num_classes=model.num_classes), 50)
    r = evaluate(model, val, torch.device("cpu"), progress=False)
    print(f"this package's Aqer + Wqer from the authors' calibration "
          f"(W{wb}A{ab}, {'authors lambdas' if args.authors_lambdas else 'uniform lambda'}): "
          f"top-1 {r['top1']:.1f}, top-5 {r['top5']:.1f}; the authors' own run: "
          f"{dump['metrics']['top1']:.1f} / {dump['metrics']['top5']:.1f}", flush=True)


if __name__ == "__main__":
    main()
