#!/usr/bin/env python
"""Regenerate the Megatron-LM flag table in docs/pretrain.md from the configuration schema.

    python tools/flags_table.py            # rewrite docs/pretrain.md's table
    python tools/flags_table.py --check    # exit 1 if the committed table is out of date
    python tools/flags_table.py --yaml-schema   # print the configuration's JSON schema
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_csl.training.flags_table import counts, render_table, table_in_doc, update_doc  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "pretrain.md"

if __name__ == "__main__":
    if "--yaml-schema" in sys.argv[1:]:
        import json

        from megatron_csl.training.config import yaml_schema

        print(json.dumps(yaml_schema(), indent=2))
        sys.exit(0)
    if "--check" in sys.argv[1:]:
        current = table_in_doc(DOC) == render_table()
        print("docs/pretrain.md flag table is " + ("current" if current else
              "out of date: run python tools/flags_table.py"))
        sys.exit(0 if current else 1)
    changed = update_doc(DOC)
    print(f"{'updated' if changed else 'unchanged'} {DOC}: {counts()}")
