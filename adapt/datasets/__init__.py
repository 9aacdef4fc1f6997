"""TFDS builders of adapt; importing this package registers them with TFDS."""
from adapt.datasets import bdd100k
from adapt.datasets import daynight_synth
