"""``quantize(model, calib, config)``: the whole ERQ / GPTQ / RTN pipeline on a timm model."""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

import erq_kernels
from .aqer import aqer
from .gptq import gptq
from .modules import QuantConv2d, QuantLinear, activation_quantizers, set_quant_state, weighted_layers
from .quantizers import ACT_QUANTILES, calibrate_weights
from .reparam import reparameterize
from .solve import damping, group_by_shape
from .stats import OutputError, all_finite, collect_stats
from .wqer import wqer
from .wrap import POST_GELU, wrap_model

log = logging.getLogger("erq")
METHODS = ("rtn", "gptq", "erq")
CALIB_MODES = ("independent", "sequential")


@dataclass
class QuantConfig:
    """Settings of one quantization run (see ``erq quantize --help``)."""
    method: str = "erq"
    w_bits: int = 4
    a_bits: int = 4
    calib_mode: str = "independent"
    lam: float | None = 1000.0      # absolute ridge lambda (authors: 1000 = 0.1 * coe; measured best)
    lam_rel: float | None = None    # or: lambda relative to the mean diagonal of A^T A
    # The authors' code departs from the uniform lambda in two layers: Aqer of the classifier
    # head (2-D input) uses 0.1, and Wqer of the patch embedding 10x lambda (test_quant_expand.py).
    lam_head_aqer: float | None = None  # Aqer lambda of the head; None: the same as the others
    lam_embed_factor: float = 1.0       # Wqer lambda of the patch embedding = factor x lambda
    dual: bool = True               # dual uniform quantization of qkv / fc1 weights
    post_gelu: str = "tensor"       # fc2 input quantizer: "tensor" (spec) or "channel" (folded)
    reparam: bool = True
    aqer: bool = True
    wqer: bool = True
    rounding_steps: int = 100
    act_calib_images: int = 32      # images for activation calibration (one batch)
    act_quantiles: tuple | None = None  # candidate clipping quantiles; None: the spec's
    batch_size: int = 32
    gptq_blocksize: int = 128
    gptq_percdamp: float = 0.01
    gptq_act_order: bool = False
    # Triton linear algebra where the dispatch table says it wins. Off by default: its sums run
    # in another order than torch.linalg's, and ulp differences change ~3e-5 of the rounding
    # decisions and a W4A4 ViT-Ti's top-1 by points (benchmarks/RESULTS.md section 2); with it
    # off, every backend gives the reference's quantized weights bit for bit.
    fast_linalg: bool = False
    progress: bool = True

    def validate(self) -> "QuantConfig":
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.post_gelu not in POST_GELU:
            raise ValueError(f"post_gelu must be one of {POST_GELU}, got {self.post_gelu!r}")
        if self.calib_mode not in CALIB_MODES:
            raise ValueError(f"calib_mode must be one of {CALIB_MODES}, got {self.calib_mode!r}")
        if self.lam is not None and self.lam_rel is not None:
            raise ValueError("give either lam (absolute) or lam_rel (relative), not both")
        if self.lam is None and self.lam_rel is None:
            raise ValueError("a ridge lambda is needed: set lam or lam_rel")
        for v, what in ((self.lam, "lam (--lambda)"), (self.lam_rel, "lam_rel (--lambda-rel)"),
                        (self.lam_head_aqer, "lam_head_aqer (--lambda-head-aqer)")):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{what} must be a finite number >= 0, got {v}")
        if not (math.isfinite(self.lam_embed_factor) and self.lam_embed_factor > 0):
            raise ValueError("lam_embed_factor (--lambda-embed-factor) must be a finite number "
                             f"> 0, got {self.lam_embed_factor}")
        if self.batch_size < 1 or self.act_calib_images < 1:
            raise ValueError("batch_size and act_calib_images must be positive")
        if self.act_quantiles is not None and (
                not self.act_quantiles or not all(0.5 < float(p) <= 1.0 for p in self.act_quantiles)):
            raise ValueError(f"act_quantiles must be values in (0.5, 1], got {self.act_quantiles!r}")
        return self


@dataclass
class Report:
    config: dict
    phases: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    calib_images: int = 0

    @contextmanager
    def phase(self, name: str, device=None):
        t0 = time.perf_counter()
        yield
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0


def _theta(m: nn.Module) -> torch.Tensor:
    """``[W, b]`` as ``(O, D + 1)`` fp32 (a zero bias where the layer has none)."""
    w = m.weight.detach().flatten(1).float()
    b = m.bias.detach().float() if m.bias is not None else torch.zeros(w.shape[0], device=w.device)
    return torch.cat([w, b[:, None]], dim=1)


def _set_theta(m: nn.Module, theta: torch.Tensor) -> None:
    w, b = theta[:, :-1], theta[:, -1]
    m.weight.data.copy_(w.reshape(m.weight.shape))
    if m.bias is None:
        if bool((b != 0).any()):
            m.bias = nn.Parameter(b.to(m.weight.dtype).clone())
    else:
        m.bias.data.copy_(b)


def _check_finite(name: str, t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise FloatingPointError(f"layer {name}: {what} contain NaN or Inf")


def _stack_grid(mods):
    maps = [m.weight_quant.maps() for m in mods]
    return torch.stack([s for s, _ in maps]), torch.stack([z for _, z in maps])


def _layer_groups(model: nn.Module, names: list[str]) -> list[tuple[str, list[str]]]:
    """Layers grouped by transformer block (a module with ``attn`` and ``mlp``), in order;
    a layer outside any block is a group of its own."""
    blocks = [n for n, m in model.named_modules() if hasattr(m, "attn") and hasattr(m, "mlp")]
    groups: list[tuple[str, list[str]]] = []
    for name in names:
        root = next((b for b in blocks if name.startswith(b + ".")), name)
        if groups and groups[-1][0] == root:
            groups[-1][1].append(name)
        else:
            groups.append((root, [name]))
    return groups


class _Batches:
    """Calibration images preloaded once (input images, not activations), re-iterable."""

    def __init__(self, loader, batch_size: int):
        imgs = [b[0] if isinstance(b, (list, tuple)) else b for b in loader]
        if not imgs:
            raise ValueError("the calibration loader yielded no images")
        self.images = torch.cat(imgs)
        self.batch_size = batch_size

    def __len__(self):
        return self.images.shape[0]

    def __iter__(self):
        for i in range(0, len(self), self.batch_size):
            yield self.images[i:i + self.batch_size]


def quantize(model: nn.Module, calib_loader, config: QuantConfig | None = None, device=None):
    """Quantize a timm ViT / DeiT / Swin with ERQ, GPTQ or round-to-nearest.

    Args:
        model: a timm model in eval mode (modified in place and returned).
        calib_loader: an iterable of image batches ``(B, 3, H, W)`` (or ``(images, labels)``).
        config: :class:`QuantConfig`.
        device: where to run (default: the model's device).
    Returns:
        ``(quantized model, Report)``: weights on their grids, activation quantization on.
    """
    config = (config or QuantConfig()).validate()
    pins = {} if config.fast_linalg else {op: "reference" for op in erq_kernels.LINALG_OPS}
    with erq_kernels.prefer(pins):
        return _quantize(model, calib_loader, config, device)


def _quantize(model, calib_loader, config, device):
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    report = Report(config=asdict(config))
    params = dict(model.named_parameters())
    if not all_finite(list(params.values())):
        for name, p in params.items():
            _check_finite(name, p.detach(), "weights")
    batches = _Batches(calib_loader, config.batch_size)
    report.calib_images = len(batches)
    with report.phase("wrap", device), torch.device(device):  # quantizer buffers made in place
        wrap_model(model, config.w_bits, config.a_bits, dual=config.dual,
                   post_gelu=config.post_gelu)
        model.to(device)
    layers = dict(weighted_layers(model))
    if config.lam_head_aqer is not None and config.method == "erq":
        _classifier_names(model, layers)  # fail before the calibration passes, not after

    with report.phase("activation_calibration", device), torch.no_grad():
        for q in activation_quantizers(model):
            q.enabled, q.calibrating = True, True
            q.quantiles = (ACT_QUANTILES if config.act_quantiles is None
                           else tuple(float(p) for p in config.act_quantiles))
        model(batches.images[: config.act_calib_images].to(device))
        set_quant_state(model, act=False)
    if config.reparam:
        with report.phase("reparameterization", device):
            reparameterize(model)

    if config.method == "rtn":
        with report.phase("weight_quantization", device), torch.no_grad():
            for m in layers.values():
                m.weight_quant.calibrate(m.weight.flatten(1))
                m.weight.data.copy_(m.weight_quant.quantize(m.weight.flatten(1)).reshape(m.weight.shape))
    elif config.calib_mode == "independent":
        with report.phase("statistics", device):
            stats = collect_stats(model, layers, _progress(batches, config, "statistics"), device)
        _reduce(model, layers, list(layers), stats, config, report, device)
    else:
        done: list[str] = []
        groups = _layer_groups(model, list(layers))
        for root, names in tqdm(groups, desc="sequential", disable=not config.progress):
            _set_sequential_state(model, done)
            with report.phase("statistics", device):
                stats = collect_stats(model, {n: layers[n] for n in names}, batches, device,
                                      stop_after=names[-1])
            _reduce(model, layers, names, stats, config, report, device)
            done.append(root)
    set_quant_state(model, act=True)
    model.erq_config.update(method=config.method)
    return model, report


def _progress(batches, config, desc):
    bar = tqdm(total=len(batches), desc=desc, unit="img", disable=not config.progress)

    def gen():
        for b in batches:
            yield b
            bar.update(b.shape[0])
        bar.close()
    return gen()


def _set_sequential_state(model: nn.Module, done_roots: list[str]) -> None:
    """Activation quantization on inside the already quantized groups, off elsewhere."""
    set_quant_state(model, act=False)
    mods = dict(model.named_modules())
    for root in done_roots:
        for q in activation_quantizers(mods[root]):
            q.enabled = True


def _classifier_names(model: nn.Module, layers: dict) -> set[str]:
    """Names of the wrapped classifier heads (timm's ``get_classifier()``: one module, or a
    tuple such as a distilled DeiT's ``(head, head_dist)``) among ``layers``."""
    get = getattr(model, "get_classifier", None)
    heads = get() if callable(get) else ()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    names = {n for n, m in layers.items() if any(m is h for h in heads)}
    if not names:
        raise ValueError("lam_head_aqer is set but the model has no quantized linear classifier "
                         "head (timm get_classifier())")
    return names


@torch.no_grad()
def _reduce(model, layers, names, stats, config, report, device):
    """Aqer + weight-quantizer init + Wqer (or GPTQ) on ``names``, batched by shape."""
    by_shape = group_by_shape(names, lambda n: (type(layers[n]).__name__, tuple(_theta(layers[n]).shape)))
    for group in by_shape:
        mods = [layers[n] for n in group]
        st = [stats[n] for n in group]
        is_conv = isinstance(mods[0], QuantConv2d)
        theta0 = torch.stack([_theta(m) for m in mods])
        if not bool(torch.isfinite(theta0).all()):
            for n, t in zip(group, theta0):
                _check_finite(n, t, "weights")
        ata = torch.stack([s.ata for s in st])
        lam = damping(ata, config.lam, config.lam_rel)
        with report.phase("report_errors", device):
            out_err = OutputError(st, theta0)
            errs = out_err.initial()
        recs = [{"name": n, "shape": list(t.shape), "tokens": s.tokens, "err_input_quant": e}
                for n, t, s, e in zip(group, theta0, st, errs)]
        theta = theta0
        if config.method == "erq" and config.aqer and not is_conv:
            lam_aq = lam
            if config.lam_head_aqer is not None:
                heads = _classifier_names(model, layers)
                lam_aq = torch.where(torch.tensor([n in heads for n in group], device=lam.device),
                                     torch.full_like(lam, config.lam_head_aqer), lam)
            with report.phase("aqer", device):
                theta, lam_a = aqer(ata, torch.stack([s.atx for s in st]), theta, lam_aq, group)
            with report.phase("report_errors", device):
                errs = out_err(theta)
            for r, la, e in zip(recs, lam_a.tolist(), errs):
                r["lambda_aqer"] = la
                r["err_after_aqer"] = e
        with report.phase("weight_init", device):
            calibrate_weights([m.weight_quant for m in mods], theta[..., :-1])
        scale, zero = _stack_grid(mods)
        qmax = mods[0].weight_quant.qmax
        if config.method == "erq" and config.wqer:
            if is_conv:
                lam = lam * config.lam_embed_factor
            with report.phase("wqer", device):
                theta = wqer(theta, ata, torch.stack([s.colsum for s in st]), st[0].tokens,
                             scale, zero, qmax, lam, group, refine=not is_conv,
                             steps=config.rounding_steps)
        elif config.method == "gptq":
            with report.phase("gptq", device):
                wq = gptq(theta[..., :-1], ata[:, :-1, :-1], scale, zero, qmax, group,
                          blocksize=config.gptq_blocksize, percdamp=config.gptq_percdamp,
                          act_order=config.gptq_act_order)
                theta = torch.cat([wq, theta[..., -1:]], dim=-1)
        else:  # erq without Wqer: round to nearest
            theta = torch.cat([(torch.clamp(torch.round(theta[..., :-1] / scale) + zero, 0, qmax)
                                - zero) * scale, theta[..., -1:]], dim=-1)
        with report.phase("report_errors", device):
            errs = out_err(theta)
        for r, m, t, la, e in zip(recs, mods, theta, lam.tolist(), errs):
            _set_theta(m, t)
            r["lambda"] = la
            r["err_final"] = e
        report.layers.extend(recs)
