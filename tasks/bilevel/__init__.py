"""Kernels of the multi-block bilevel pipeline (BSVRB and baselines)."""
