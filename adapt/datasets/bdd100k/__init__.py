"""BDD100K detection as the TFDS builder `bdd100k` (manual download; see `MANUAL_DOWNLOAD_INSTRUCTIONS`).

Relative imports only, so `tfds build adapt/datasets/bdd100k` can load this package without `adapt` installed.
"""
from .bdd100k import Bdd100k, MANUAL_DOWNLOAD_INSTRUCTIONS, scan_split
from .labels import CLASS_NAMES, KINDS, TIMES_OF_DAY, Problems, scan_labels
