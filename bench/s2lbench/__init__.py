"""s2lbench: the side-by-side fine-tuning benchmark (see bench/run.py and the README's Benchmark section)."""
