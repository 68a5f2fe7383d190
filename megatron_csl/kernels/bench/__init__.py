"""Benchmarks behind tools/bench_step.py (training step) and tools/bench_kernels.py (kernels)."""
