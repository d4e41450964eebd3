"""ERQ post-training quantization of vision transformers (timm ViT, DeiT, Swin).

    >>> model, report = erq.quantize(model, calib_loader, erq.QuantConfig(method="erq"))
"""
__version__ = "0.1.0"

from .pipeline import QuantConfig, Report, quantize  # noqa: E402
from .wrap import wrap_model  # noqa: E402
from .export import load_quantized, save_quantized  # noqa: E402
from .evaluate import evaluate  # noqa: E402

__all__ = ["quantize", "QuantConfig", "Report", "wrap_model", "save_quantized", "load_quantized",
           "evaluate", "__version__"]
