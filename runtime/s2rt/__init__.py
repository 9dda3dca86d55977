"""s2rt: the on-device runtime of s2l (read a bundle, run the frozen segment, train the Skip2-LoRA head)."""

__version__ = "0.1.0"
