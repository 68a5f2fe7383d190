#!/usr/bin/env python3
"""Bits, Gaussian MSE and predicted EPM of compression formats; see docs/fitting.md."""
import sys

from megatron_csl.scaling.capacity_cli import main

if __name__ == "__main__":
    sys.exit(main())
