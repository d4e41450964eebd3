"""This package's stages on the authors' exact inputs, and the authors' final model evaluated by
this package (issue 3: is the difference to the authors' figures in the algorithm or in the
floating-point noise?).

Inputs come from a run of the authors' code (zysxmu/ERQ @ 361f76e4, `test_quant_expand.py`;
not part of this repository) with `benchmarks/authors/dump_hooks.py` called at five points of its
`main()` (before / after reparameterization, after Aqer, after the weight-quantizer
re-calibration, at the end), CPU placement, local weights and these image folders:

    ERQ_DUMP=dump_w3a4_s0.pt python test_quant_expand.py --model vit_tiny --dataset ../shared/data \
        --w_bits 3 --a_bits 4 --coe 10000 --calib-batchsize 32 --val-batchsize 100 --device cpu --seed 0

``--store`` is the folder where their code pickles every layer's FP input (``<layer>store_input``).

    python benchmarks/authors/stagewise.py --dump dump_w3a4_s0.pt --store fp_output/vit_tiny-calib32-W3A4

Per layer it feeds the authors' FP layer input, activation quantizer, weights and grid to this
package's Aqer (fp64 statistics), weight-quantizer initialization and Wqer, and compares with the
authors' result of the same stage; then it loads the authors' final model (LayerNorms, weights,
biases, activation quantizers) into this package's quantized ViT and evaluates it.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from erq.aqer import aqer
from erq.cli import load_model
from erq.data import DEFAULT_DATA, ImageFolderDataset, make_loader, model_transform
from erq.evaluate import evaluate
from erq.modules import set_quant_state
from erq.quantizers import WeightQuantizer, calibrate_weights
from erq.wqer import wqer
from erq.wrap import wrap_model
from erq_kernels.reference import fake_quant
from hybrid import load_authors_state  # (this folder: the script's directory is on the path)


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def grid(wq: dict, o: int, d: int):
    """Per-element (scale, zero) of the authors' weight quantizer; 'delta' is the outlier group."""
    s, z = torch.empty(o, d), torch.empty(o, d)
    if wq["two_part"]:
        for idx, ks, kz in ((wq["top_indices"], "delta", "zero_point"),
                            (wq["nottop_indices"], "delta_2", "zero_point_2")):
            s[:, idx.long()] = wq[ks].reshape(-1, 1).float()
            z[:, idx.long()] = wq[kz].reshape(-1, 1).float()
    else:
        s[:], z[:] = wq["delta"].reshape(-1, 1).float(), wq["zero_point"].reshape(-1, 1).float()
    return s, z


@torch.no_grad()
def stages(dump: dict, store: Path, name: str, coe: float) -> None:
    raw = pickle.load(open(store / f"{name}store_input", "rb"))[0].float()
    x = raw.reshape(-1, raw.shape[-1])
    aq = dump["act_quant"][name]
    xq = fake_quant(x, aq["delta"].float(), aq["zero_point"].float(), 2 ** aq["n_bits"] - 1)
    a = torch.cat([xq, torch.ones(len(xq), 1)], 1).double()
    xt = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    ata, atx, colsum = (a.T @ a)[None], (a.T @ xt)[None], a.sum(0)[None]
    w0 = dump["w_after_reparam"][name]
    theta0 = torch.cat([w0["weight"], w0["bias"][:, None]], 1)[None].double()
    lam_aq = 0.1 if raw.dim() == 2 else 0.1 * coe  # the authors: 0.1 for a 2-D input (the head)
    th, _ = aqer(ata, atx, theta0, torch.tensor([lam_aq], dtype=torch.float64), [name])
    wa = dump["aqer"][name]
    print(f"{name:20s} Aqer (lambda {lam_aq:g}): weights {rel(th[0, :, :-1], wa['weight']):.1e}, "
          f"bias {rel(th[0, :, -1], wa['bias']):.1e} from the authors' (Aqer moved them "
          f"{rel(w0['weight'], wa['weight']):.1e})")
    wq = dump["wquant"][name]
    o, d = wa["weight"].shape
    q = WeightQuantizer(wq["n_bits"], o, d, dual=wq["two_part"])
    calibrate_weights([q], wa["weight"].float()[None])
    s, z = grid(wq, o, d)
    ours_s, ours_z = q.maps()
    same_cols = (not wq["two_part"]) or set(wq["top_indices"].tolist()) == set(
        torch.nonzero(q.group).flatten().tolist())
    print(f"{'':20s} weight grid: outlier columns equal {same_cols}, scales {rel(ours_s, s):.1e}, "
          f"zero points differing {int((ours_z != z).sum())}")
    qmax = 2 ** wq["n_bits"] - 1
    theta = torch.cat([wa["weight"], wa["bias"][:, None]], 1)[None].double()
    out = wqer(theta, ata, colsum, len(a), s[None].double(), z[None].double(), qmax,
               torch.tensor([0.1 * coe], dtype=torch.float64), [name])[0]
    ours = torch.round(out[:, :-1].float() / s) + z
    theirs = torch.round(dump["final"][name]["weight_dequant"].float() / s) + z
    rtn = torch.clamp(torch.round(wa["weight"].float() / s) + z, 0, qmax)
    print(f"{'':20s} Wqer: codes differing from the authors' {float((ours != theirs).float().mean()):.5f} "
          f"(codes moved from round-to-nearest: ours {float((ours != rtn).float().mean()):.4f}, "
          f"theirs {float((theirs != rtn).float().mean()):.4f}); bias "
          f"{rel(out[:, -1], dump['final'][name]['bias']):.1e}")


@torch.no_grad()
def evaluate_their_model(dump: dict, w_bits: int, a_bits: int, data: Path) -> dict:
    model = load_model("vit_tiny_patch16_224", None)
    wrap_model(model, w_bits, a_bits, dual=True, post_gelu="tensor")
    load_authors_state(model, dump, "final")
    set_quant_state(model, act=True)
    val = make_loader(ImageFolderDataset(data / "imagenet-val", model_transform(model),
                                         num_classes=model.num_classes), 50)
    return evaluate(model, val, torch.device("cpu"), progress=False)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--layers", nargs="*", default=[
        "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2",
        "blocks.6.attn.qkv", "blocks.6.mlp.fc1", "blocks.11.mlp.fc2", "head"])
    ap.add_argument("--coe", type=float, default=10000.0)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    args = ap.parse_args(argv)
    dump = torch.load(args.dump, weights_only=False)
    for name in args.layers:
        stages(dump, Path(args.store), name, args.coe)
    wq = next(iter(dump["wquant"].values()))
    aq = next(iter(dump["act_quant"].values()))
    r = evaluate_their_model(dump, wq["n_bits"], aq["n_bits"], Path(args.data))
    print(f"the authors' final model evaluated by this package: top-1 {r['top1']:.1f}, top-5 "
          f"{r['top5']:.1f}; by the authors' code: top-1 {dump['metrics']['top1']:.1f}, "
          f"top-5 {dump['metrics']['top5']:.1f}")


if __name__ == "__main__":
    main()
