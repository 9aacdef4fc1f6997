"""YOLO's prediction layout: the grid of cells per level with its priors, and the box decoding against them.

A box is YOLOv2's: centre (cell + sigmoid(t_yx)) / S, size prior * exp(t_hw): the Faster R-CNN coder with unit
weights against the prior box at the cell centre (offset (sigmoid(t) - 0.5) / (S x prior), log-scale t_hw).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from adapt.anchors import cell_centres, level_boxes
from adapt.boxes import decode_boxes

UNIT_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # YOLO's codes against the prior boxes (see the module docstring)
MISSING_PRIORS = ('yolo.model.anchors is None: set one list of (width, height) per level, or let '
                  'adapt.trainers.detection.train derive them from the training boxes (adapt.models.families)')


@dataclasses.dataclass(frozen=True)
class Grid:
    """The prediction layout: level k is a `sizes[k]` (fh, fw) grid with the priors `priors[k]` ((w, h)
    pairs, normalised) at every cell; predictions run over levels, cells (location-major), priors.
    `priors` None (not derived yet: a preset checked before its run starts) builds, but cannot be used."""
    sizes: tuple
    priors: Optional[tuple]

    @property
    def level_priors(self) -> tuple:
        if self.priors is None:
            raise ValueError(MISSING_PRIORS)
        return self.priors

    @functools.cached_property
    def boxes(self):
        """Prior boxes [A, 4] (normalised yxyx) centred at their cells."""
        return np.concatenate([level_boxes(*cell_centres(s), p) for s, p in zip(self.sizes, self.level_priors)]
                              ).astype(np.float32)

    @functools.cached_property
    def cells(self):
        """(fh, fw) of each prediction's level [A, 2]."""
        return np.concatenate([np.tile(np.float32(s), (s[0] * s[1] * len(p), 1))
                               for s, p in zip(self.sizes, self.level_priors)])

    @functools.cached_property
    def prior_table(self):
        """Per prior (all levels in order) [P]: 'wh' [P, 2], its level's grid 'fh' / 'fw', the index of the
        level's first prediction 'first', the level's priors per cell 'count' and its position 'index'."""
        rows, first = [], 0
        for (fh, fw), priors in zip(self.sizes, self.level_priors):
            rows += [(w, h, fh, fw, first, len(priors), b) for b, (w, h) in enumerate(priors)]
            first += fh * fw * len(priors)
        cols = np.asarray(rows, np.float64).T
        return {'wh': cols[:2].T.astype(np.float32), **{key: cols[i].astype(np.int32) for i, key in enumerate(
            ('fh', 'fw', 'first', 'count', 'index'), start=2)}}

    def codes(self, box_codes):
        """YOLO's (t_y, t_x, t_h, t_w) [..., A, 4] -> Faster R-CNN codes (unit weights) against `boxes`."""
        prior_hw = self.boxes[:, 2:] - self.boxes[:, :2]
        offsets = (jax.nn.sigmoid(box_codes[..., :2]) - 0.5) / (self.cells * prior_hw)
        return jnp.concatenate([offsets, box_codes[..., 2:]], axis=-1)

    def decode(self, box_codes):
        """Boxes [..., A, 4] (normalised yxyx, not clipped): centre (cell + sigmoid(t_yx)) / S, size
        prior x exp(t_hw) (the exponent clamped as `decode_boxes` does)."""
        return decode_boxes(self.codes(box_codes), self.boxes, UNIT_WEIGHTS)


