"""CPU compatibility for megatron-core 0.16.1 (see cpu.py for what is patched and why)."""
from .cpu import PATCHES, TORCH_PROXY_MODULES, apply_cpu_compat, cpu_compat_applied, cuda_is_absent

__all__ = ["apply_cpu_compat", "cpu_compat_applied", "cuda_is_absent", "PATCHES", "TORCH_PROXY_MODULES"]
from .distributed import initialize_cpu_parallel, run_ranks, shutdown_cpu_parallel

__all__ += ["initialize_cpu_parallel", "shutdown_cpu_parallel", "run_ranks"]
