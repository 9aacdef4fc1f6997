"""Procedural day/dusk/night driving scenes: scene sampler, NumPy renderer and the TFDS builder."""
from adapt.datasets.daynight_synth.daynight_synth import DaynightSynth, DaynightSynthConfig
from adapt.datasets.daynight_synth.scene import CLASS_NAMES, DOMAINS
