"""Benchmark harness: lazymoe against llama.cpp CPU-MoE and baselines."""
