"""s2models: the reference workloads, their domain shifts, pretraining and ONNX export.

Host side only (torch); depends on neither the s2l runtime nor the converter.
"""

__version__ = "0.1.0"
