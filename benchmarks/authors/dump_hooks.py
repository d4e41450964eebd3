# [DUMP] helper added for the comparison; read-only w.r.t. the algorithm (clones only).
import torch
from quant.quant_modules import QuantLinear, QuantConv2d, QuantMatMul
from quant.quantizer import UniformQuantizer, LogSqrt2Quantizer

DUMP = {'meta': {}, 'pre_reparam': {}, 'act_quant': {}, 'ln': {}, 'matmul_quant': {},
        'w_after_reparam': {}, 'aqer': {}, 'wquant': {}, 'final': {}, 'metrics': {}}


def _c(t):
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.detach().clone().cpu()
    return torch.tensor(t)


def _uq(q):
    d = {'delta': _c(q.delta), 'zero_point': _c(q.zero_point),
         'channel_wise': q.channel_wise, 'two_part': q.two_part, 'n_bits': q.n_bits}
    if q.two_part and hasattr(q, 'unique_top_indices'):
        d.update(delta_2=_c(q.delta_2), zero_point_2=_c(q.zero_point_2),
                 top_indices=_c(q.unique_top_indices), nottop_indices=_c(q.unique_nottop_indices))
    return d


def _quant_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))]


def _wb(m):
    return {'weight': _c(m.weight), 'bias': _c(m.bias)}


def dump_pre_reparam(model):
    for n, m in _quant_layers(model):
        if isinstance(m, QuantLinear):
            DUMP['pre_reparam'][n] = {'input_quantizer': _uq(m.input_quantizer), **_wb(m)}


def dump_after_reparam(model):
    for n, m in model.named_modules():
        if isinstance(m, QuantLinear):
            DUMP['act_quant'][n] = _uq(m.input_quantizer)
        if isinstance(m, (QuantLinear, QuantConv2d)):
            DUMP['w_after_reparam'][n] = _wb(m)
        if isinstance(m, QuantMatMul):
            e = {}
            for k, q in (('A', m.quantizer_A), ('B', m.quantizer_B)):
                if isinstance(q, LogSqrt2Quantizer):
                    e[k] = {'delta': _c(q.delta), 'log_sqrt2': True, 'n_bits': q.n_bits}
                else:
                    e[k] = _uq(q)
            # matmul1: A = q, B = k^T ; matmul2: A = softmax (log-sqrt2), B = v
            DUMP['matmul_quant'][n] = e
        if n.endswith('norm1') or n.endswith('norm2'):
            DUMP['ln'][n] = _wb(m)


def dump_aqer(model):
    for n, m in _quant_layers(model):
        DUMP['aqer'][n] = _wb(m)


def dump_wquant(model):
    for n, m in _quant_layers(model):
        DUMP['wquant'][n] = _uq(m.weight_quantizer)


def dump_final(model):
    with torch.no_grad():
        for n, m in _quant_layers(model):
            DUMP['final'][n] = {'weight_raw': _c(m.weight), 'bias': _c(m.bias),
                                'weight_dequant': _c(m.weight_quantizer(m.weight))}


def save(path):
    torch.save(DUMP, path)
    print('saved dump to', path)
