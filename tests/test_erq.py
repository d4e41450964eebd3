"""ERQ's two steps and the GPTQ baseline against direct fp64 implementations."""
import logging

import pytest
import torch

import erq_kernels
from erq.aqer import aqer
from erq.gptq import gptq
from erq.pipeline import QuantConfig, quantize
from erq.quantizers import WeightQuantizer
from erq.stats import LayerStats, OutputError, collect_stats
from erq.wqer import grid_errors, proxy_matrix, wqer
from erq_kernels.reference import fake_quant, rounding_refine

from helpers import images, tiny_model


def _layer(d, o, n_tok, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tok, d, generator=g) * (1 + torch.rand(d, generator=g)) + 0.3 * torch.randn(d, generator=g)
    w = torch.randn(o, d, generator=g) / d ** 0.5
    b = torch.randn(o, generator=g) * 0.1
    return x, w, b


def _stats(x, scale, zero, qmax):
    st = LayerStats.empty(x.shape[1], "cpu")
    erq_kernels.gram_update(x, st.ata, st.atx, st.colsum, scale, zero, qmax)
    st.tokens = x.shape[0]
    return st


def test_aqer_from_statistics_equals_least_squares_on_activations():
    d, o, lam = 47, 30, 3.0
    x, w, b = _layer(d, o, 900, 0)
    s, z, qmax = torch.tensor(0.4), torch.tensor(8.0), 15
    st = _stats(x, s, z, qmax)
    theta = torch.cat([w, b[:, None]], 1)[None]
    got, _ = aqer(st.ata[None], st.atx[None], theta, torch.tensor([lam]), ["l"])
    # direct fp64 ridge regression from the activations themselves
    a = torch.cat([fake_quant(x, s, z, qmax), torch.ones(900, 1)], 1).double()
    y = (x.double() @ w.double().T + b.double())
    t = theta[0].T.double()
    ref = torch.linalg.solve(a.T @ a + lam * torch.eye(d + 1, dtype=torch.float64), a.T @ y + lam * t)
    assert float((got[0].T.double() - ref).norm() / ref.norm()) < 1e-5


def _direct_wqer(theta, h, c, scale, zero, qmax, lam, steps=100):
    """Section 4 verbatim in fp64: explicit (H_RR + lam I)^-1 in every pass."""
    theta = theta.double().clone()
    h, c = h.double(), c.double()
    remaining = list(range(theta.shape[1]))
    while len(remaining) > 1:
        half = len(remaining) // 2
        s_idx, r_idx = remaining[:half], remaining[half:]
        er, ef, ec = grid_errors(theta[:, s_idx], scale[:, s_idx].double(), zero[:, s_idx].double(), qmax)
        delta = rounding_refine(er, ef, ec, c[s_idx][:, s_idx], steps)
        h_rr = h[r_idx][:, r_idx] + lam * torch.eye(len(r_idx), dtype=torch.float64)
        theta[:, r_idx] += -delta @ h[s_idx][:, r_idx] @ torch.linalg.inv(h_rr)
        theta[:, s_idx] += delta
        remaining = r_idx
    return theta


@pytest.mark.parametrize("n", [65, 193])
def test_one_factorization_wqer_equals_direct_loop(n):
    d, o = n - 1, 24
    x, w, b = _layer(d, o, 3000, n)
    s, z, qmax = torch.tensor(0.3), torch.tensor(7.0), 15
    st = _stats(x, s, z, qmax)
    wq = WeightQuantizer(3, o, d)
    wq.calibrate(w)
    scale, zero = wq.maps()
    theta = torch.cat([w, b[:, None]], 1)
    lam = 0.01 * float(st.ata.diagonal().mean())
    got = wqer(theta[None], st.ata[None], st.colsum[None], st.tokens, scale[None], zero[None],
               wq.qmax, torch.tensor([lam]), ["l"])[0]
    c = proxy_matrix(st.ata[None], st.colsum[None], st.tokens)[0]
    ref = _direct_wqer(theta, st.ata, c, scale, zero, wq.qmax, lam)
    codes_got = torch.round(got[:, :d] / scale) + zero
    codes_ref = torch.round(ref[:, :d].float() / scale) + zero
    assert torch.equal(codes_got, codes_ref)  # same rounding decisions
    assert float((got.double() - ref).abs().max()) < 1e-5
    assert torch.equal(got[:, :d], wq.quantize(got[:, :d]))  # weights on the grid, bias FP


def test_wqer_reduces_output_error_below_round_to_nearest():
    d, o = 64, 40
    x, w, b = _layer(d, o, 2000, 5)
    x = x @ torch.randn(d, d, generator=torch.Generator().manual_seed(6)) / d ** 0.5  # correlated inputs
    st = _stats(x, None, None, None)
    st.yy = (x.double() @ w.double().T + b.double()).pow(2).sum()
    wq = WeightQuantizer(3, o, d)
    wq.calibrate(w)
    scale, zero = wq.maps()
    theta = torch.cat([w, b[:, None]], 1)
    lam = torch.tensor([0.01 * float(st.ata.diagonal().mean())])
    q = wqer(theta[None], st.ata[None], st.colsum[None], st.tokens, scale[None], zero[None], 7, lam, ["l"])[0]
    rtn = torch.cat([wq.quantize(w), b[:, None]], 1)
    meter = OutputError([st, st], torch.stack([theta, theta]))
    e_q, e_rtn = meter(torch.stack([q, rtn]))
    assert max(meter.initial()) < 1e-6  # no input quantizer here: the FP weights are exact
    assert e_q < 0.7 * e_rtn, (e_q, e_rtn)
    # the error from the statistics equals the one computed from the activations
    xt = torch.cat([x, torch.ones(x.shape[0], 1)], 1).double()
    y = xt @ theta.double().T
    direct = float((xt @ q.double().T - y).pow(2).sum() / y.pow(2).sum())
    assert abs(e_q - direct) < 1e-6 * direct


def test_rounding_refinement_never_increases_the_proxy():
    g = torch.Generator().manual_seed(3)
    for s in (1, 5, 33):
        w = torch.randn(40, s, generator=g)
        a = torch.randn(200, s, generator=g)
        c = a.T @ a / 200 + torch.outer(a.mean(0), a.mean(0))
        sc = torch.full((40, s), 0.37)
        er, ef, ec = grid_errors(w, sc, torch.full_like(sc, 8.0), 15)
        delta = erq_kernels.rounding_refine(er, ef, ec, c)
        proxy = lambda t: ((t @ c) * t).sum(1)  # noqa: E731
        assert torch.all(proxy(delta) <= proxy(er) + 1e-6)
        assert torch.all((delta == ef) | (delta == ec))


def _plain_gptq(w, h, scale, zero, qmax, percdamp=0.01):
    """Per-column OBS updates with the explicit inverse of the remaining Hessian, fp64."""
    w, h = w.double().clone(), h.double().clone()
    h += percdamp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    q = torch.zeros_like(w)
    for i in range(w.shape[1]):
        hinv = torch.linalg.inv(h[i:, i:])
        col = w[:, i]
        q[:, i] = (torch.clamp(torch.round(col / scale[:, i]) + zero[:, i], 0, qmax) - zero[:, i]) * scale[:, i]
        err = (col - q[:, i]) / hinv[0, 0]
        w[:, i:] -= err[:, None] * hinv[0][None, :]
    return q


@pytest.mark.parametrize("blocksize", [128, 16])
def test_gptq_matches_plain_per_column_reference(blocksize):
    d, o = 70, 20
    x, w, _ = _layer(d, o, 500, 9)
    h = x.T @ x
    wq = WeightQuantizer(4, o, d)
    wq.calibrate(w)
    scale, zero = wq.maps()
    got = gptq(w[None], h[None], scale[None], zero[None], 15, ["l"], blocksize=blocksize)[0]
    ref = _plain_gptq(w, h, scale, zero, 15)
    assert (got.double() - ref).abs().max() < 1e-4
    assert torch.equal(got, wq.quantize(got))


def test_gptq_act_order_quantizes_onto_the_grid_and_beats_rtn():
    d, o = 48, 16
    x, w, _ = _layer(d, o, 400, 11)
    h = x.T @ x
    wq = WeightQuantizer(3, o, d)
    wq.calibrate(w)
    scale, zero = wq.maps()
    q = gptq(w[None], h[None], scale[None], zero[None], 7, ["l"], act_order=True)[0]
    assert torch.equal(q, wq.quantize(q))
    err = lambda v: float(((x @ (v - w).T) ** 2).sum())  # noqa: E731
    assert err(q) < err(wq.quantize(w))


def test_statistics_memory_does_not_depend_on_the_number_of_images():
    model = tiny_model("vit")
    from erq.modules import weighted_layers
    from erq.wrap import wrap_model
    wrap_model(model)
    layers = dict(weighted_layers(model))
    sizes = []
    for n in (8, 64):
        x = images(model, n)
        st = collect_stats(model, layers, [x[i:i + 8] for i in range(0, n, 8)], "cpu")
        sizes.append(sum(t.numel() * t.element_size() for s in st.values() for t in (s.ata, s.atx, s.colsum)))
        assert all(s.tokens == n * (17 if "patch" not in k else 16) for k, s in st.items() if "head" not in k)
    assert sizes[0] == sizes[1]


def test_non_positive_definite_gram_retries_with_more_damping_and_says_so(caplog):
    d, o = 20, 6
    x, w, b = _layer(d, o, 10, 1)  # 10 tokens < 21 columns: singular A^T A
    x[:, 3] = 0  # and a dead channel
    st = _stats(x, None, None, None)
    theta = torch.cat([w, b[:, None]], 1)[None]
    with caplog.at_level(logging.WARNING, logger="erq"):
        out, lam = aqer(st.ata[None], st.atx[None], theta, torch.tensor([0.0]), ["blocks.0.mlp.fc1"])
    assert torch.isfinite(out).all() and float(lam[0]) > 0
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "blocks.0.mlp.fc1" in msgs[0] and "not positive definite" in msgs[0]


def test_nan_in_activations_names_the_layer():
    model = tiny_model("vit")
    model.blocks[1].mlp.fc1.weight.data[0, 0] = float("inf")  # inf -> NaN after GELU
    x = images(model, 2)
    with pytest.raises(FloatingPointError, match="blocks.1.mlp.fc1"):
        quantize(model, [x], QuantConfig(method="erq", progress=False))


def test_nan_in_statistics_names_the_layer():
    model = tiny_model("vit")
    model.blocks[0].attn.proj.register_forward_pre_hook(lambda m, i: (i[0] * float("nan"),))
    from erq.modules import weighted_layers
    from erq.wrap import wrap_model
    wrap_model(model)
    with pytest.raises(FloatingPointError, match="blocks.0.attn.proj"):
        collect_stats(model, dict(weighted_layers(model)), [images(model, 2)], "cpu")


def test_report_chunks_and_finiteness_helper(monkeypatch):
    import erq.stats as stats_mod
    g = torch.Generator().manual_seed(9)
    sts, thetas, targets = [], [], []
    for _ in range(3):
        x = torch.randn(300, 12, generator=g)
        st = _stats(x, None, None, None)
        w = torch.randn(5, 13, generator=g)
        xt = torch.cat([x, torch.ones(300, 1)], 1).double()
        st.yy = (xt @ w.double().T).pow(2).sum()
        sts.append(st)
        targets.append(w)
        thetas.append(w + 0.01 * torch.randn(5, 13, generator=g))
    theta, target = torch.stack(thetas), torch.stack(targets)
    whole = OutputError(sts, target)(theta)
    monkeypatch.setattr(stats_mod, "_REPORT_CHUNK_BYTES", 8 * 13 * 13)  # one layer per chunk
    chunked = stats_mod.OutputError(sts, target)
    assert len(chunked.chunks) == 3
    assert chunked(theta) == pytest.approx(whole, rel=1e-12)
    assert stats_mod.all_finite([theta, torch.full((3,), 3e38)])  # a norm overflows, values finite
    assert not stats_mod.all_finite([theta, torch.tensor([0.0, float("nan")])])


def test_candidate_passes_do_not_change_the_choice(monkeypatch):
    import erq.quantizers as qz
    x = torch.nn.functional.gelu(torch.randn(4, 50, 24, generator=torch.Generator().manual_seed(2)) * 3)
    lo, hi = qz.tail_quantiles(x.reshape(-1), qz.ACT_QUANTILES)
    xc = x.reshape(-1, 24)
    loc, hic = qz.tail_quantiles(xc, qz.ACT_QUANTILES, dim=0)
    w = torch.randn(30, 40, generator=torch.Generator().manual_seed(3))
    lw, hw = torch.quantile(w, 1 - torch.tensor(qz.WEIGHT_PERCENTILES), dim=1), \
        torch.quantile(w, torch.tensor(qz.WEIGHT_PERCENTILES), dim=1)
    together = [qz.least_mse_range(x, lo, hi, 4, None), qz.least_mse_range(xc, loc, hic, 4, 0),
                qz.least_mse_range(w, lw, hw, 3, 1)]
    monkeypatch.setattr(qz, "_CANDIDATE_ELEMENTS", 1)  # one candidate per pass
    apart = [qz.least_mse_range(x, lo, hi, 4, None), qz.least_mse_range(xc, loc, hic, 4, 0),
             qz.least_mse_range(w, lw, hw, 3, 1)]
    for (s1, z1), (s2, z2) in zip(together, apart):
        assert torch.equal(s1, s2) and torch.equal(z1, z2)


@pytest.mark.parametrize("mode", ["independent", "sequential"])
def test_erq_with_folded_post_gelu_quantizer_runs_in_both_modes(mode):
    from erq.modules import ChannelScale
    from erq.wrap import post_gelu_mlps
    model = tiny_model("vit")
    x = images(model, 4)
    q, report = quantize(model, [x], QuantConfig(method="erq", post_gelu="channel",
                                                 calib_mode=mode, progress=False))
    mlps = post_gelu_mlps(q)
    assert mlps and all(isinstance(m.norm, ChannelScale) for m in mlps)
    for m in mlps:
        wq, w = m.fc2.weight_quant, m.fc2.weight.detach()
        assert torch.equal(wq.dequantize(wq.codes(w)), w)  # the folded weights are on the grid
        sc = m.fc2.input_quant.scale
        assert torch.equal(sc, torch.full_like(sc, float(sc[0])))  # one scale left after the fold
    assert {r["name"] for r in report.layers} >= {"blocks.0.mlp.fc2", "blocks.1.mlp.fc2"}
    with torch.no_grad():
        assert torch.isfinite(q(x)).all()


def test_authors_per_layer_lambdas_reach_only_the_head_and_the_patch_embedding():
    x = images(tiny_model("vit"), 4)
    runs = {}
    for key, extra in (("uniform", {}), ("authors", dict(lam_head_aqer=0.1, lam_embed_factor=10.0))):
        cfg = QuantConfig(method="erq", lam=50.0, progress=False, **extra)
        q, report = quantize(tiny_model("vit"), [x], cfg)
        runs[key] = ({n: p.detach().clone() for n, p in q.named_parameters()},
                     {r["name"]: r for r in report.layers})
    (pu, ru), (pa, ra) = runs["uniform"], runs["authors"]
    assert ra["head"]["lambda_aqer"] == pytest.approx(0.1) and ra["head"]["lambda"] == 50.0
    assert ra["patch_embed.proj"]["lambda"] == 500.0
    assert "lambda_aqer" not in ra["patch_embed.proj"]  # no Aqer on the patch embedding
    rest = [n for n in ra if n not in ("head", "patch_embed.proj")]
    assert rest and all(ra[n]["lambda_aqer"] == 50.0 and ra[n]["lambda"] == 50.0 for n in rest)
    # independent mode: every other layer is computed from FP inputs and comes out identical
    for n in pu:
        changed = not torch.equal(pu[n], pa[n])
        assert changed == (n.startswith("head.") or n.startswith("patch_embed.proj.")), n
    assert not torch.equal(pu["head.weight"], pa["head.weight"])


def test_head_aqer_lambda_reaches_both_heads_of_a_distilled_deit():
    model = tiny_model("deit")  # get_classifier() is the tuple (head, head_dist)
    cfg = QuantConfig(method="erq", lam=50.0, lam_head_aqer=0.1, progress=False)
    _, report = quantize(model, [images(model, 2)], cfg)
    lam = {r["name"]: r.get("lambda_aqer") for r in report.layers}
    assert lam["head"] == pytest.approx(0.1) and lam["head_dist"] == pytest.approx(0.1)
    assert all(v == 50.0 for n, v in lam.items() if n not in ("head", "head_dist", "patch_embed.proj"))


def test_per_layer_lambda_settings_are_checked():
    with pytest.raises(ValueError, match="lam_head_aqer"):
        QuantConfig(lam_head_aqer=-1.0).validate()
    with pytest.raises(ValueError, match="lam_embed_factor"):
        QuantConfig(lam_embed_factor=0.0).validate()
    for bad in (float("nan"), float("inf")):  # would give non-finite weights, or fail late
        with pytest.raises(ValueError, match="finite"):
            QuantConfig(lam_head_aqer=bad).validate()
        with pytest.raises(ValueError, match="finite"):
            QuantConfig(lam_embed_factor=bad).validate()
        with pytest.raises(ValueError, match="finite"):
            QuantConfig(lam=bad).validate()
    model = tiny_model("vit")
    model.get_classifier = lambda: torch.nn.Identity()  # no quantized linear head to find
    with pytest.raises(ValueError, match="classifier head"):
        quantize(model, [images(model, 2)], QuantConfig(lam_head_aqer=0.1, progress=False))
