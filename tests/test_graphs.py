"""The capture helper shared by the CUDA-graph modules (erq_kernels/_graphs.py): a failed
capture or preparation must leave the caller's stream current and the device usable, and
surface its own error."""
import pytest
import torch

from erq_kernels import _graphs


def _check_device_usable(dev, caller):
    assert torch.cuda.current_stream(dev) == caller
    y = torch.arange(4.0, device=dev) * 3
    torch.cuda.synchronize(dev)
    assert y.tolist() == [0.0, 3.0, 6.0, 9.0]


@pytest.mark.gpu
def test_gpu_capture_replays_body():
    dev = torch.device("cuda")
    x = torch.ones(1000, device=dev)

    def prepare():
        x.fill_(2.0)

    graph, out = _graphs.capture(dev, prepare, lambda: x * 5)  # recorded, not run
    graph.replay()
    torch.cuda.synchronize(dev)
    assert torch.equal(out, torch.full_like(x, 10.0))
    x.fill_(3.0)
    graph.replay()
    torch.cuda.synchronize(dev)
    assert torch.equal(out, torch.full_like(x, 15.0))


@pytest.mark.gpu
def test_gpu_capture_failure_in_body_restores_stream():
    dev = torch.device("cuda")
    caller = torch.cuda.current_stream(dev)
    x = torch.ones(1000, device=dev)

    def body():  # a host synchronization cannot be captured
        return (x * 2).sum().item()

    with pytest.raises(RuntimeError):
        _graphs.capture(dev, lambda: x.add_(1.0), body)
    _check_device_usable(dev, caller)
    assert torch.equal(x, torch.full_like(x, 2.0))  # prepare() ran, once


@pytest.mark.gpu
def test_gpu_capture_failure_in_prepare_keeps_its_error():
    dev = torch.device("cuda")
    caller = torch.cuda.current_stream(dev)
    x = torch.zeros(1 << 20, device=dev)

    def prepare():
        torch.cuda._sleep(100_000_000)  # keeps the adds below queued when the error comes
        for _ in range(20):
            x.add_(1.0)
        raise ValueError("prepare failed")

    with pytest.raises(ValueError, match="prepare failed"):
        _graphs.capture(dev, prepare, lambda: x * 2)
    # the caller's stream was ordered after the side stream's queued work
    assert torch.equal(x, torch.full_like(x, 20.0))
    _check_device_usable(dev, caller)
