"""Checks of benchmarks/gpu_acceptance.py, one module per area (see common.py)."""
