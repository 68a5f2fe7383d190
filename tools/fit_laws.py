#!/usr/bin/env python3
"""Fit compression scaling laws to finished runs; see docs/fitting.md."""
import sys

from megatron_csl.scaling.fit_cli import main

if __name__ == "__main__":
    sys.exit(main())
