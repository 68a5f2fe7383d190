#!/usr/bin/env python
"""Convert a megatron-csl checkpoint to another TP/PP layout, a Hugging Face Llama, or a packed
low-bit artefact. See docs/convert.md.

    python tools/convert_checkpoint.py --load runs/demo --to hf --output exports/demo-hf
    python tools/convert_checkpoint.py --load runs/demo --to packed --output exports/demo-packed
    python tools/convert_checkpoint.py --load runs/demo --to megatron --target-tp 2 --output runs/demo-tp2

Exit codes: 0 written, 2 bad input (nothing written), 1 unexpected failure.
"""
import sys

# The __main__ guard is required: megatron's checkpoint saving and the conversion ranks start
# spawn-mode processes, which re-import this file.
if __name__ == "__main__":
    from megatron_csl.convert.cli import main

    sys.exit(main(sys.argv[1:]))
