"""The reference data shipped inside the package (see reference/README.md for source and licence).

Installed with the package (setup.py ``package_data``), so tools, benchmarks and tests find them in
a clone and in a site-packages install alike.
"""
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().with_name("reference")

#: 10,033 English Wikipedia summaries in C4's shard format (CC BY-SA).
WIKI_CORPUS = REFERENCE_DIR / "wiki_vital_en.c4.json.gz"

#: Epoch AI's digitized Chinchilla runs (245 rows), for `tools/fit_laws.py --epoch-csv`.
CHINCHILLA_EPOCH_CSV = REFERENCE_DIR / "chinchilla_epoch_svg.csv"
