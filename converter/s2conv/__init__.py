"""s2conv: turn an ONNX model into an s2l bundle (frozen segment + Skip2-LoRA head).

    from s2conv import convert, ConvertOptions
    bundle = convert("model.onnx", ConvertOptions(rank=4))

The pipeline, one module per stage: load ▸ analyse (graph, analyse) ▸ split ▸ head ▸
layout (s2rt's `plan_cache_layout`) ▸ emit.
"""

from s2conv.convert import ConvertOptions, convert
from s2conv.version import __version__

__all__ = ["ConvertOptions", "__version__", "convert"]
