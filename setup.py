"""megatron-csl: compressed pretraining and compression scaling laws on megatron-core."""
from setuptools import find_packages, setup

setup(
    name="megatron_csl",
    version="0.1.0",
    description="Megatron-style training fork for compressed pretraining and compression scaling laws",
    packages=find_packages(include=["megatron_csl", "megatron_csl.*"]),
    # the reference corpus and the Chinchilla points the docs, tests and benchmarks use; the
    # Gaussian vector-quantization grids (megatron_csl/compression/vector.py)
    package_data={"megatron_csl.data": ["reference/README.md", "reference/*.json.gz", "reference/*.csv"],
                  "megatron_csl.compression": ["vq_grids.npz"]},
    python_requires=">=3.10",
    install_requires=[
        "megatron-core==0.16.1",
        "torch>=2.6",
        "numpy",
        "scipy",
        "sentencepiece",
        "orjson",  # fast JSON Lines decoding in tools/preprocess_c4.py (falls back to json)
        "isal",  # fast gzip reading of C4 shards (falls back to gzip)
        "psutil",
        "pyyaml",
        "matplotlib",
        "tqdm",
        "threadpoolctl",
        "tensorboard",
        "safetensors",
        "tabulate",
        "jinja2",
    ],
    extras_require={
        # triton: the kernel tests run the Triton kernels on CPU through its interpreter.
        "test": ["pytest", "hypothesis", "pytest-timeout", "transformers",
                 "triton; platform_system == 'Linux'"],
        "te": ["transformer-engine[pytorch]"],
        "triton": ["triton"],
        # --fused-kernels liger / bench_step --dense-options liger: Triton kernels, CUDA only.
        "gpu": ["liger-kernel==0.8.5", "triton; platform_system == 'Linux'"],
    },
)
