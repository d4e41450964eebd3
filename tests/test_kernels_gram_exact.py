"""Exact Gram statistics (erq_kernels.gram_exact) and their fast backends: the same bits.

The definition is accurate (fp64 references), and the int8 tensor-core path, also replayed from
a CUDA graph (``gram_graph``), reproduces it
bit for bit (codes under TRITON_INTERPRET=1 on the CPU, ``torch._int_mm`` on the CPU), for
every quantizer form, chunked or not; the pipeline therefore gives the same quantized model
in every backend.
"""
import warnings

import pytest
import torch

import erq_kernels
from erq_kernels import _dispatch, gram_exact
from helpers import gram_quantizer as _quantizer, gram_ref64, images, rel_err, tiny_model

gram_int8 = pytest.importorskip("erq_kernels.gram_int8")
gram_graph = pytest.importorskip("erq_kernels.gram_graph")
# on the CPU the graph backend runs the int8 path (no CUDA graphs); the GPU tests replay graphs
FAST = {"int8": lambda: gram_int8.gram_update_exact, "graph": lambda: gram_graph.gram_update_exact}


def _same_bits(a, b):
    """Element for element the same bits (``torch.equal`` would take -0.0 for 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    view = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


def _bufs(d, dtype=torch.float32, device="cpu"):
    return [torch.zeros(d + 1, d + 1, dtype=dtype, device=device),
            torch.zeros(d + 1, d + 1, dtype=dtype, device=device),
            torch.zeros(d + 1, dtype=dtype, device=device)]


def _input(n, d, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, d, generator=gen) + 0.3
    x[::7, ::5] *= 40.0  # outliers: the digits are relative to each column's maximum
    return x.to(device), gen


CASES = [(5, 20, "tensor"), (77, 31, "tensor"), (77, 31, "tensor_int"), (203, 191, "channel"),
         (45, 33, "zero_out_of_range"), (300, 24, "eight_bit"), (61, 19, "three_bit")]


@pytest.mark.parametrize("n,d,mode", CASES)
def test_definition_matches_fp64(n, d, mode):
    x, gen = _input(n, d, n + d)
    s, z, qmax = _quantizer(mode, d, gen)
    bufs = _bufs(d)
    gram_exact.gram_update(x, *bufs, s, z, qmax)
    for got, ref in zip(bufs, gram_ref64(x, s, z, qmax)):
        assert rel_err(got, ref) < 1e-6
    assert bufs[2][d].item() == n


@pytest.mark.parametrize("n,d,mode", CASES)
@pytest.mark.parametrize("chunk", [None, 32])
@pytest.mark.parametrize("backend", sorted(FAST))
def test_fast_paths_give_the_same_bits(n, d, mode, chunk, backend):
    x, gen = _input(n, d, 7 * n + d)
    s, z, qmax = _quantizer(mode, d, gen)
    ref, got = _bufs(d), _bufs(d)
    for b in ref + got:  # accumulate onto earlier statistics, as a calibration pass does
        b += 0.25
    gram_exact.gram_update(x, *ref, s, z, qmax, chunk_rows=chunk)
    FAST[backend]()(x, *got, s, z, qmax, chunk_rows=chunk)
    for a, b in zip(got, ref):
        assert _same_bits(a, b)


@pytest.mark.parametrize("backend", sorted(FAST))
def test_fast_paths_same_bits_for_bf16_input_and_through_the_dispatcher(monkeypatch, backend):
    x, gen = _input(90, 40, 3)
    x = x.bfloat16()
    s, z, qmax = _quantizer("tensor", 40, gen)
    ref, got = _bufs(40), _bufs(40)
    gram_exact.gram_update(x, *ref, s, z, qmax)
    monkeypatch.setenv("ERQ_KERNELS_BACKEND_GRAM_UPDATE_EXACT", backend)
    assert erq_kernels.backend_for("gram_update_exact", torch.device("cpu")) == backend
    erq_kernels.gram_update(x, *got, s, z, qmax, exact=True)
    for a, b in zip(got, ref):
        assert _same_bits(a, b)


@pytest.mark.parametrize("case", ["no_quantizer", "ten_bit", "fp64_buffers"])
@pytest.mark.parametrize("backend", sorted(FAST))
def test_forms_without_int8_products_run_the_definition(case, backend):
    x, _ = _input(50, 17, 11)
    s, z, qmax = (None, None, None) if case == "no_quantizer" else (0.05, 3.5, 1023 if case == "ten_bit" else 15)
    dtype = torch.float64 if case == "fp64_buffers" else torch.float32
    ref, got = _bufs(17, dtype), _bufs(17, dtype)
    gram_exact.gram_update(x, *ref, s, z, qmax)
    FAST[backend]()(x, *got, s, z, qmax)
    for a, b in zip(got, ref):
        assert _same_bits(a, b)
    for a, r in zip(ref, gram_ref64(x, s, z, qmax)):
        assert rel_err(a, r) < 1e-6


def test_row_order_does_not_change_a_bit():
    # the products are exact integers, so any order of the rows (within one chunk) gives the
    # same statistics; fp32 sums (the eager path) would not
    x, gen = _input(400, 29, 5)
    s, z, qmax = _quantizer("tensor", 29, gen)
    a, b = _bufs(29), _bufs(29)
    gram_exact.gram_update(x, *a, s, z, qmax)
    gram_exact.gram_update(x[torch.randperm(400, generator=gen)], *b, s, z, qmax)
    for u, v in zip(a, b):
        assert _same_bits(u, v)
    e, f = _bufs(29), _bufs(29)
    erq_kernels.reference.gram_update(x, *e, s, z, qmax)
    erq_kernels.reference.gram_update(x.flip(0), *f, s, z, qmax)
    assert not torch.equal(e[0], f[0])  # the check above is not vacuous


def test_non_finite_input_poisons_the_exact_statistics():
    x, gen = _input(40, 9, 2)
    x[3, 4] = float("inf")
    bufs = _bufs(9)
    gram_exact.gram_update(x, *bufs, 0.1, 7.5, 15)
    assert not bool(torch.isfinite(bufs[0]).all()) and not bool(torch.isfinite(bufs[1]).all())


@pytest.mark.parametrize("backend", sorted(FAST))
def test_fast_paths_poison_the_same_entries(backend):
    x, gen = _input(40, 9, 2)
    x[3, 4] = float("inf")
    x[10, 7] = float("nan")
    ref, got = _bufs(9), _bufs(9)
    gram_exact.gram_update(x, *ref, 0.1, 7.5, 15)
    FAST[backend]()(x, *got, 0.1, 7.5, 15)
    for a, b in zip(got, ref):
        nan = torch.isnan(b)
        assert nan.any() and torch.equal(torch.isnan(a), nan)
        assert _same_bits(a[~nan], b[~nan])


def test_prefer_sits_between_the_environment_and_the_table(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("ERQ_KERNELS_BACKEND", raising=False)
    monkeypatch.delenv("ERQ_KERNELS_BACKEND_RIDGE_SOLVE", raising=False)
    assert erq_kernels.backend_for("ridge_solve", cpu) == "reference"
    with erq_kernels.prefer({"ridge_solve": "triton"}):
        assert erq_kernels.backend_for("ridge_solve", cpu) == "triton"
        monkeypatch.setenv("ERQ_KERNELS_BACKEND_RIDGE_SOLVE", "reference")
        assert erq_kernels.backend_for("ridge_solve", cpu) == "reference"
        monkeypatch.delenv("ERQ_KERNELS_BACKEND_RIDGE_SOLVE")
        with erq_kernels.prefer({"ridge_solve": "reference"}):
            assert erq_kernels.backend_for("ridge_solve", cpu) == "reference"
        assert erq_kernels.backend_for("ridge_solve", cpu) == "triton"
    assert erq_kernels.backend_for("ridge_solve", cpu) == "reference"
    assert not _dispatch._PREFERRED


def _quantized_weights(monkeypatch, gram_backend, fast_linalg=False):
    from erq.pipeline import QuantConfig, quantize
    monkeypatch.setenv("ERQ_KERNELS_BACKEND_GRAM_UPDATE_EXACT", gram_backend)
    model = tiny_model("vit", seed=3)
    cfg = QuantConfig(w_bits=4, a_bits=4, progress=False, rounding_steps=20,
                      fast_linalg=fast_linalg)
    model, _ = quantize(model, [images(model, 4, seed=1)], cfg, "cpu")
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("backend", sorted(FAST))
def test_pipeline_gives_the_same_model_with_the_fast_statistics(monkeypatch, backend):
    ref = _quantized_weights(monkeypatch, "reference")
    got = _quantized_weights(monkeypatch, backend)
    assert ref.keys() == got.keys()
    for k in ref:
        assert _same_bits(ref[k], got[k]), k


@pytest.mark.gpu
@pytest.mark.parametrize("n,d,mode,chunk", [
    (6304, 192, "tensor", None), (6304, 768, "tensor_int", None), (6304, 384, "channel", None),
    (20000, 768, "tensor", 4096), (8224, 1280, "eight_bit", None), (1000, 5120, "tensor", None),
    (6304, 193, "channel", None), (100864, 192, "tensor", None), (6304, 192, "tensor_int", None)])
@pytest.mark.parametrize("backend", sorted(FAST))
def test_gpu_fast_paths_give_the_same_bits(n, d, mode, chunk, backend):
    x, gen = _input(n, d, n + d, "cuda")
    s, z, qmax = _quantizer(mode, d, gen, "cuda")
    ref, got = _bufs(d, device="cuda"), _bufs(d, device="cuda")
    gram_exact.gram_update(x, *ref, s, z, qmax, chunk_rows=chunk)
    FAST[backend]()(x, *got, s, z, qmax, chunk_rows=chunk)
    for a, b in zip(got, ref):
        assert _same_bits(a, b)
    if d > 2000:
        return
    # and the CPU computes the same bits as the GPU
    cpu = _bufs(d)
    gram_exact.gram_update(x.cpu(), *cpu, s.cpu() if torch.is_tensor(s) else s,
                           z.cpu() if torch.is_tensor(z) else z, qmax, chunk_rows=chunk)
    for a, b in zip(cpu, ref):
        assert _same_bits(a, b.cpu())


@pytest.mark.parametrize("fast", [False, True])
def test_pipeline_pins_its_linear_algebra_unless_asked(monkeypatch, fast):
    seen = []
    original = erq_kernels.ridge_solve

    def spy(*a, **kw):
        seen.append(dict(_dispatch._PREFERRED))
        return original(*a, **kw)
    monkeypatch.setattr(erq_kernels, "ridge_solve", spy)
    _quantized_weights(monkeypatch, "reference", fast_linalg=fast)
    assert seen, "Aqer did not reach erq_kernels.ridge_solve"
    want = {} if fast else {op: "reference" for op in erq_kernels.LINALG_OPS}
    assert all(s == want for s in seen)
    assert not _dispatch._PREFERRED  # restored after quantize()


@pytest.mark.gpu
def test_gpu_graph_replays_stay_exact_across_inputs_quantizers_and_streams():
    # the graph's buffers are reused: new inputs, changed quantizers (numbers and tensors
    # edited in place) and calls from another stream must each give the definition's bits
    gram_graph.clear()
    n, d = 1000, 96
    side = torch.cuda.Stream()
    s_tensor = torch.tensor([0.07], device="cuda")
    z_tensor = torch.tensor([5.5], device="cuda")
    ref, got = _bufs(d, device="cuda"), _bufs(d, device="cuda")
    for step, (s, z) in enumerate([(0.05, 7.3), (0.05, 7.3), (0.09, 3.25), (s_tensor, z_tensor),
                                   (s_tensor, z_tensor), (0.05, 7.3)]):
        if step == 4:
            s_tensor.fill_(0.11)  # the same tensor, new values
        x, _ = _input(n, d, 100 + step, "cuda")
        gram_exact.gram_update(x, *ref, s, z, 15)
        if step % 2:
            with torch.cuda.stream(side):
                side.wait_stream(torch.cuda.current_stream())
                gram_graph.gram_update_exact(x, *got, s, z, 15)
            torch.cuda.current_stream().wait_stream(side)
        else:
            gram_graph.gram_update_exact(x, *got, s, z, 15)
        for a, b in zip(got, ref):
            assert _same_bits(a, b), step
    assert len(gram_graph._GRAPHS) == 1  # one shape, one graph


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["tensor", "channel", "eight_bit"])
@pytest.mark.parametrize("chunk", [None, 256])
def test_gpu_graph_onto_earlier_statistics(mode, chunk):
    # accumulators that already hold statistics, one chunk (a graph) or several (the int8
    # path: the graph's summed chunks would round differently)
    gram_graph.clear()
    n, d = 1000, 96
    x, gen = _input(n, d, 31, "cuda")
    s, z, qmax = _quantizer(mode, d, gen, "cuda")
    if torch.is_tensor(z):
        gram_int8.prime([z])
    ref, got = _bufs(d, device="cuda"), _bufs(d, device="cuda")
    for b in ref + got:
        b += 1000.0
    gram_exact.gram_update(x, *ref, s, z, qmax, chunk_rows=chunk)
    gram_graph.gram_update_exact(x, *got, s, z, qmax, chunk_rows=chunk)
    for a, b in zip(got, ref):
        assert _same_bits(a, b)
    assert len(gram_graph._GRAPHS) == (0 if chunk else 1)
    gram_graph.clear()


@pytest.mark.gpu
def test_gpu_graph_capture_failure_falls_back_once(monkeypatch):
    gram_graph.clear()

    def broken(*a, **kw):
        raise RuntimeError("capture not possible here")
    monkeypatch.setattr(torch.cuda, "graph", broken)
    x, gen = _input(500, 40, 9, "cuda")
    ref, got = _bufs(40, device="cuda"), _bufs(40, device="cuda")
    with pytest.warns(RuntimeWarning, match="capture failed"):
        gram_graph.gram_update_exact(x, *got, 0.05, 7.3, 15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning (a second try) would raise here
        gram_graph.gram_update_exact(x, *got, 0.05, 7.3, 15)
    for _ in range(2):
        gram_exact.gram_update(x, *ref, 0.05, 7.3, 15)
    for a, b in zip(got, ref):
        assert _same_bits(a, b)
    assert not gram_graph._GRAPHS
    gram_graph.clear()
