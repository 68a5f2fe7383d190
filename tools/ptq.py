#!/usr/bin/env python
"""Post-training quantization baseline: quantize a finished dense run's weights without training
and write a run directory that tools/fit_laws.py fits beside the QAT runs. See docs/ptq.md.

    python tools/ptq.py --load runs/dense-m --compression w4 --method rtn  --output runs/dense-m-w4-rtn
    python tools/ptq.py --load runs/dense-m --compression w4 --method gptq --output runs/dense-m-w4-gptq

Exit codes: 0 written, 2 bad input (nothing written), 1 unexpected failure.
"""
import sys

if __name__ == "__main__":
    from megatron_csl.ptq.cli import main

    sys.exit(main(sys.argv[1:]))
