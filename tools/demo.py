#!/usr/bin/env python
"""`make demo`: the whole compression-scaling-law study in miniature (megatron_csl/demo.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_csl.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
